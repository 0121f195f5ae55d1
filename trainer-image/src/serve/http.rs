//! The accept loop and its connections, in place of `axum::serve` (which has no header or idle
//! timeout and no connection cap, so clients that open connections and never finish a request
//! took every descriptor). HTTP/1.1 only, as `axum::serve` was built here.
//!
//! - At most `max_connections` connections are open. At the cap, a new connection closes the
//!   oldest one with no request in flight ([`Registry::evict_oldest`]), so held half-open
//!   connections cannot lock real clients out; when every connection has a request in flight
//!   the loop stops accepting and new clients wait in the kernel's listen backlog, which costs
//!   the server no descriptor.
//! - Each connection runs hyper beside its watchdog ([`Conn::watch`]: header and idle
//!   timeouts, eviction, shutdown). hyper's own header-read timeout is set to idle + header
//!   as a second line: it starts when hyper begins waiting for a head, so it cannot tell a
//!   quiet keep-alive connection from a slow head, which the watchdog can.
//! - Accept errors back off ([`Backoff`]).
//! - Shutdown: stop accepting, close what owes nobody an answer, let hyper finish the requests
//!   in flight (keep-alive off), and return once every connection has ended.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::accept::{self, Backoff};
use super::body::Tracked;
use super::conn::{Close, Conn, Registry, Timeouts, Watched};
use super::metrics::Metrics;

/// How often the accept loop, at the cap with every connection busy, looks again for one
/// that can be closed (a permit freed meanwhile wakes it at once).
const RECHECK: Duration = Duration::from_millis(100);

/// The listen backlog asked for (the kernel lowers it to `net.core.somaxconn`, 4096 by
/// default). tokio's and std's 128 overflow under a burst of connections, and each connection
/// the kernel then drops waits a second for its SYN to be sent again; the backlog costs the
/// server no descriptor, so it is also where clients wait when every connection is busy.
const BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`; the first address it resolves to) with [`BACKLOG`].
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As tokio's own bind: a restarted server can rebind while old connections linger.
        socket.set_reuseaddr(true)?;
        match socket.bind(a) {
            Ok(()) => return socket.listen(BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// The server's connection settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The most open connections.
    pub max_connections: usize,
    /// Header and idle timeouts.
    pub timeouts: Timeouts,
}

/// Serves `app` on `listener` until `stop` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: Config,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let registry = Arc::new(Registry::default());
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.timeouts.idle + config.timeouts.header);
    let app = TowerToHyperService::new(app);
    let mut backoff = Backoff::default();
    let mut at_cap_logged: Option<Instant> = None;
    let mut stop = pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.as_mut() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                if let Some(errors) = backoff.accepted() {
                    tracing::info!(errors, "accepting connections again");
                }
                stream
            }
            Err(e) if accept::is_per_connection(&e) => {
                tracing::debug!(error = %e, "a connection failed before it was accepted");
                continue;
            }
            Err(e) => {
                metrics.accept_error();
                let retry = backoff.failed(Instant::now());
                if let Some(unlogged) = retry.log {
                    tracing::warn!(
                        error = %e,
                        unlogged,
                        open = registry.len(),
                        "cannot accept connections; retrying with backoff (up to 1 s), logging this at most every {} s",
                        accept::LOG_EVERY.as_secs()
                    );
                }
                tokio::select! {
                    biased;
                    () = stop.as_mut() => break,
                    () = tokio::time::sleep(retry.delay) => continue,
                }
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if at_cap_logged.is_none_or(|t| t.elapsed() >= accept::LOG_EVERY) {
                    at_cap_logged = Some(Instant::now());
                    tracing::warn!(
                        max_connections = config.max_connections,
                        "at the connection cap: new connections close the oldest ones that have no request in flight (--max-connections)"
                    );
                }
                match admit(&permits, &registry, stop.as_mut()).await {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        spawn_connection(
            stream,
            permit,
            &registry,
            &builder,
            &app,
            &graceful,
            &metrics,
            config.timeouts,
        );
    }
    drop(listener);
    tracing::info!(
        open = registry.len(),
        "stopped accepting; waiting for the requests in flight"
    );
    registry.drain();
    graceful.shutdown().await;
}

/// At the cap: closes the oldest connection that has nothing in flight and waits for its
/// slot; `None` when the server is stopping.
async fn admit(
    permits: &Arc<Semaphore>,
    registry: &Registry,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        registry.evict_oldest();
        tokio::select! {
            biased;
            () = stop.as_mut() => return None,
            p = permits.clone().acquire_owned() => return p.ok(),
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_connection(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    registry: &Arc<Registry>,
    builder: &http1::Builder,
    app: &TowerToHyperService<Router>,
    graceful: &GracefulShutdown,
    metrics: &Arc<Metrics>,
    timeouts: Timeouts,
) {
    // Server-sent events are many small writes: do not hold them back for ACKs.
    let _ = stream.set_nodelay(true);
    let (conn, registered) = registry.register();
    let service = ConnService {
        app: app.clone(),
        conn: conn.clone(),
    };
    let http = graceful
        .watch(builder.serve_connection(TokioIo::new(Watched::new(stream, conn.clone())), service));
    let metrics = metrics.clone();
    tokio::spawn(async move {
        metrics.connection_opened();
        tokio::select! {
            r = http => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        metrics.connection_closed(Close::HeaderTimeout.label());
                    }
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            why = conn.watch(timeouts) => {
                metrics.connection_closed(why.label());
                tracing::debug!(reason = why.label(), "closing a connection");
            }
        }
        metrics.connection_ended();
        // The slot and the registry entry go last, after the socket has been closed.
        drop(registered);
        drop(permit);
    });
}

/// The router as a connection's hyper service: marks the connection busy from each request's
/// head until its response body has been sent.
struct ConnService {
    app: TowerToHyperService<Router>,
    conn: Arc<Conn>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<hyper::Request<Incoming>> for ConnService {
    type Response = hyper::Response<Tracked>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let busy = self.conn.begin();
        let response = self.app.call(req);
        Box::pin(async move {
            let resp = response.await?;
            Ok(resp.map(|body| Tracked::new(body, busy)))
        })
    }
}
