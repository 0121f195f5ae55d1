//! What the server knows about each open connection, and when it closes one itself.
//!
//! A connection is *busy* from the moment hyper has parsed a request's head until that
//! request's response body has been sent (or dropped): busy connections are never closed here.
//! A connection that is not busy is closed
//! - when it began a request head more than `--header-timeout-seconds` ago and has not
//!   finished it (slow-loris clients),
//! - when it has begun nothing for `--idle-timeout-seconds` (fresh or keep-alive),
//! - when the server is at its connection cap and it is the oldest one that can go (see
//!   [`Registry::evict_oldest`]),
//! - at shutdown, if it never answered a request or is part-way through a head (hyper's own
//!   graceful shutdown closes the idle keep-alive ones and lets busy ones finish).
//!
//! A connection that answered a request less than [`GRACE`] ago is not evicted or drained:
//! its response may still be in hyper's write buffer, and closing it would cut the response.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
// tokio's clock, so that tests can run it paused.
use tokio::time::Instant;

/// How long after its last response a connection is spared from eviction and draining.
pub const GRACE: Duration = Duration::from_secs(1);

/// The server's per-connection timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From a head's first byte until it must be complete.
    pub header: Duration,
    /// With nothing begun, until the connection is closed.
    pub idle: Duration,
}

/// Why the server closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// A head took longer than the header timeout.
    HeaderTimeout,
    /// Nothing began within the idle timeout.
    IdleTimeout,
    /// Closed to make room for a new connection at the cap.
    Evicted,
    /// Closed at shutdown.
    Drained,
}

impl Close {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Close::HeaderTimeout => "header_timeout",
            Close::IdleTimeout => "idle_timeout",
            Close::Evicted => "evicted",
            Close::Drained => "drained",
        }
    }
}

#[derive(Debug)]
struct Phase {
    /// When it last stopped being busy (or was accepted).
    idle_since: Instant,
    /// When the first byte of the next head arrived, if one has.
    head_since: Option<Instant>,
    /// Whether it has answered a request.
    answered: bool,
}

/// One open connection.
#[derive(Debug)]
pub struct Conn {
    busy: AtomicUsize,
    phase: Mutex<Phase>,
    evicted: AtomicBool,
    draining: AtomicBool,
    wake: Notify,
}

impl Conn {
    fn new(now: Instant) -> Self {
        Self {
            busy: AtomicUsize::new(0),
            phase: Mutex::new(Phase {
                idle_since: now,
                head_since: None,
                answered: false,
            }),
            evicted: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        match self.phase.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst) > 0
    }

    /// Bytes arrived on the connection.
    fn received(&self, now: Instant) {
        if self.is_busy() {
            return;
        }
        let mut p = self.phase();
        if p.head_since.is_none() {
            p.head_since = Some(now);
            drop(p);
            self.wake.notify_one();
        }
    }

    /// A request's head was parsed: the connection is busy until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Whether it may be closed for another connection or at shutdown.
    fn closable(&self, now: Instant) -> bool {
        if self.is_busy() {
            return false;
        }
        let p = self.phase();
        p.head_since.is_some()
            || !p.answered
            || now.saturating_duration_since(p.idle_since) >= GRACE
    }

    /// Asks its task to close it; `false` if it is busy (or has just been busy).
    fn evict(&self, now: Instant) -> bool {
        if !self.closable(now) || self.evicted.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.wake.notify_one();
        true
    }

    fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Resolves when the server should close the connection, and why. Runs beside the
    /// connection's hyper future; while it is pending, hyper alone decides.
    pub async fn watch(&self, t: Timeouts) -> Close {
        loop {
            // Registered before the state is read, so a change made meanwhile still wakes it.
            let woken = self.wake.notified();
            let now = Instant::now();
            if self.evicted.load(Ordering::SeqCst) {
                return Close::Evicted;
            }
            // At shutdown only connections that owe nobody an answer are closed here; hyper's
            // graceful shutdown closes idle keep-alive ones itself after any last flush.
            if self.draining.load(Ordering::SeqCst) && self.closable(now) {
                return Close::Drained;
            }
            let deadline = if self.is_busy() {
                None
            } else {
                let p = self.phase();
                Some(match p.head_since {
                    Some(t0) => (t0 + t.header, Close::HeaderTimeout),
                    None => (p.idle_since + t.idle, Close::IdleTimeout),
                })
            };
            match deadline {
                Some((at, why)) if at <= now => return why,
                Some((at, _)) => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => woken.await,
            }
        }
    }
}

/// Holds a connection busy; dropped with the response body.
#[derive(Debug)]
pub struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        let conn = &self.0;
        {
            let mut p = conn.phase();
            p.idle_since = Instant::now();
            p.head_since = None;
            p.answered = true;
        }
        conn.busy.fetch_sub(1, Ordering::SeqCst);
        conn.wake.notify_one();
    }
}

/// Every open connection, oldest first.
#[derive(Debug, Default)]
pub struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    draining: AtomicBool,
}

/// Removes its connection from the registry when dropped.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        match self.conns.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Adds a new connection.
    pub fn register(self: &Arc<Self>) -> (Arc<Conn>, Registered) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(Instant::now()));
        if self.draining.load(Ordering::SeqCst) {
            conn.drain();
        }
        self.lock().insert(id, conn.clone());
        (
            conn,
            Registered {
                registry: self.clone(),
                id,
            },
        )
    }

    /// Closes the oldest connection that is not busy; `false` when every one is busy.
    /// Oldest first so that a client that has just connected (a real one, about to send its
    /// request) is the last to go, and an attacker's held connections are the first.
    pub fn evict_oldest(&self) -> bool {
        let now = Instant::now();
        self.lock().values().any(|c| c.evict(now))
    }

    /// Shutdown: closes the connections that owe nobody an answer, now and as they come.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for c in self.lock().values() {
            c.drain();
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A socket that tells its [`Conn`] when bytes arrive (the header timeout's clock starts at a
/// head's first byte, so a keep-alive connection's idle time is not taken from its header
/// time).
pub struct Watched<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Watched<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, conn: Arc<Conn>) -> Self {
        Self { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.received(Instant::now());
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(2),
        idle: Duration::from_secs(5),
    };

    async fn closes_after(conn: &Conn) -> (Close, Duration) {
        let start = tokio::time::Instant::now();
        let why = conn.watch(T).await;
        (why, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_closes_after_the_idle_timeout() {
        let r = Arc::new(Registry::default());
        let (c, _g) = r.register();
        assert_eq!(closes_after(&c).await, (Close::IdleTimeout, T.idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_closes_after_the_header_timeout_from_its_first_byte() {
        let r = Arc::new(Registry::default());
        let (c, _g) = r.register();
        let watcher = c.clone();
        let task = tokio::spawn(async move { closes_after(&watcher).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.received(Instant::now());
        assert_eq!(
            task.await.expect("joins"),
            (Close::HeaderTimeout, Duration::from_secs(1) + T.header)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_never_closed_here() {
        let r = Arc::new(Registry::default());
        let (c, _g) = r.register();
        let busy = c.begin();
        assert!(!r.evict_oldest(), "nothing to evict");
        let watcher = c.clone();
        let task = tokio::spawn(async move { watcher.watch(T).await });
        tokio::time::sleep(T.idle * 10).await;
        assert!(!task.is_finished());
        drop(busy);
        assert_eq!(task.await.expect("joins"), Close::IdleTimeout);
    }

    #[tokio::test]
    async fn eviction_takes_the_oldest_closable_and_spares_a_fresh_answer() {
        let r = Arc::new(Registry::default());
        let (old, _g1) = r.register();
        let (answered, _g2) = r.register();
        let (fresh, _g3) = r.register();
        drop(answered.begin());
        let b = old.begin();
        assert!(r.evict_oldest());
        assert!(
            fresh.evicted.load(Ordering::SeqCst),
            "busy and just-answered are spared"
        );
        assert!(!old.evicted.load(Ordering::SeqCst));
        assert!(!answered.evicted.load(Ordering::SeqCst));
        assert!(!r.evict_oldest(), "the fresh one is already going");
        drop(b);
        assert_eq!(fresh.watch(T).await, Close::Evicted);
        assert_eq!(r.len(), 3);
        drop(_g3);
        assert_eq!(r.len(), 2);
    }

    #[tokio::test]
    async fn drain_closes_fresh_connections_but_not_busy_ones() {
        let r = Arc::new(Registry::default());
        let (fresh, _g1) = r.register();
        let (busy, _g2) = r.register();
        let b = busy.begin();
        r.drain();
        assert_eq!(fresh.watch(T).await, Close::Drained);
        let (late, _g3) = r.register();
        assert_eq!(
            late.watch(T).await,
            Close::Drained,
            "accepted after the drain"
        );
        let watcher = busy.clone();
        let task = tokio::spawn(async move { watcher.watch(T).await });
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        drop(b);
        task.abort();
    }
}
