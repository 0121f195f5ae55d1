//! Body wrappers: a request body with a deadline (`--body-timeout-seconds`: a client that sends
//! its head and then trickles or withholds the body gets 408 instead of holding its handler
//! forever), and a response body that keeps its connection busy until it is sent, so a
//! streaming response is never taken for an idle connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use tokio::time::Sleep;

use super::conn::Busy;
use super::error::ApiError;

/// The request body took longer than the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (--body-timeout-seconds)")]
pub struct BodyTimedOut(Duration);

/// A request body that fails once its deadline has passed.
struct Deadline {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
    fired: Arc<AtomicBool>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.fired.load(Ordering::SeqCst) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {}
            ready => return ready,
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.fired.store(true, Ordering::SeqCst);
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: gives the request body `timeout` from now (the head has been parsed) to
/// arrive; a request whose body timed out is answered 408 and its connection closed (what is
/// left of the body is unknown, so the connection cannot carry another request).
pub async fn body_deadline(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let fired = Arc::new(AtomicBool::new(false));
    let flag = fired.clone();
    let req = req.map(|inner| {
        Body::new(Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            fired: flag,
        })
    });
    let resp = next.run(req).await;
    if !fired.load(Ordering::SeqCst) {
        return resp;
    }
    let mut resp = ApiError {
        status: StatusCode::REQUEST_TIMEOUT,
        kind: "invalid_request_error",
        message: format!(
            "the request body did not arrive within {} s (the server's --body-timeout-seconds); send the body with the request",
            timeout.as_secs()
        ),
        param: None,
        code: Some("request_timeout"),
    }
    .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A response body holding its connection busy until it has been sent or dropped.
pub struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl Tracked {
    /// Wraps a response body.
    pub fn new(inner: Body, busy: Busy) -> Self {
        Self { inner, _busy: busy }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use futures::StreamExt;

    async fn echo_len(body: Bytes) -> String {
        body.len().to_string()
    }

    fn app(timeout: Duration) -> axum::Router {
        axum::Router::new()
            .route("/", post(echo_len))
            .layer(axum::middleware::from_fn_with_state(timeout, body_deadline))
    }

    async fn call(app: axum::Router, body: Body) -> (StatusCode, String, Option<HeaderValue>) {
        let resp = tower_call(app, Request::post("/").body(body).expect("request")).await;
        let status = resp.status();
        let connection = resp.headers().get(header::CONNECTION).cloned();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            String::from_utf8_lossy(&bytes).into_owned(),
            connection,
        )
    }

    async fn tower_call(app: axum::Router, req: Request) -> Response {
        use hyper::service::Service as _;
        let svc = hyper_util::service::TowerToHyperService::new(app);
        match svc.call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_in_time_passes_and_a_withheld_one_gets_408() {
        let t = Duration::from_secs(5);
        let (status, text, _) = call(app(t), Body::from("hello")).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "5"));
        // Two chunks, the second after the deadline.
        let chunks = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from("he"))]).chain(
            futures::stream::once(async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Bytes::from("llo"))
            }),
        );
        let (status, text, connection) = call(app(t), Body::from_stream(chunks)).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{text}");
        assert!(text.contains("--body-timeout-seconds"), "{text}");
        assert_eq!(connection, Some(HeaderValue::from_static("close")));
    }
}
