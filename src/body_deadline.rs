//! A deadline for reading an HTTP request's body.
//!
//! Why it exists: [`crate::net`] bounds the time a client may take to send a request's
//! *headers* (hyper's header-read timeout) and to complete its first request, but once the
//! headers are in, nothing bounds the body: a client that announces a large body and then sends
//! a byte now and then would hold its connection, and the handler waiting for the body, for as
//! long as it likes (a "slow POST"). tower-http's body timeout does not fit: it limits the
//! wait for each *frame*, which a dribbling client resets with every byte. Here the whole body
//! must arrive within `limits.body_read_timeout` of the request's headers.
//!
//! How: a middleware wraps the body of every request that has one (HTTP/1.1 with a length or
//! chunked, HTTP/2 with data frames to come) in [`DeadlineBody`], which fails once the deadline
//! passes. Extractors read the body before a handler runs, so a handler sees the failure as a
//! body error (and may then answer anything: 400, or 401 for a caller it would refuse anyway);
//! whenever the deadline fired during the request, the middleware answers `408 body_timeout`
//! instead. Over HTTP/1.1 it also closes the connection, whose unread remainder would otherwise
//! be taken for the next request; over HTTP/2 only that stream ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::api::ApiError;
use crate::server::AppState;

/// Middleware: gives the request's body until `limits.body_read_timeout` to arrive in full.
pub async fn enforce(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if !has_body(&req) {
        return next.run(req).await;
    }
    let limit = app.config.limits.body_read_timeout;
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| Body::new(DeadlineBody::new(inner, limit, expired.clone())));
    let response = next.run(req).await;
    if !expired.load(Ordering::Acquire) {
        return response;
    }
    metrics::counter!("wedsync_body_timeouts_total").increment(1);
    tracing::debug!(?limit, "request body not received within the deadline");
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive within {} s (body_read_timeout)",
            limit.as_secs_f64()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Whether the request may carry a body. Asked of the body itself, not of the headers: an
/// HTTP/2 request announces its body with neither `content-length` nor `transfer-encoding`,
/// and a body-less request (a WebSocket upgrade, any GET) is already at its end.
fn has_body(req: &Request) -> bool {
    !http_body::Body::is_end_stream(req.body())
}

/// A request body that fails (and says so through `expired`) once its deadline has passed.
pub struct DeadlineBody {
    inner: Body,
    deadline: Instant,
    /// Made on the first read that has to wait: a body that is already there costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl DeadlineBody {
    /// `inner` must be read in full within `limit` from now.
    pub fn new(inner: Body, limit: Duration, expired: Arc<AtomicBool>) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Instant::now() + limit,
            sleep: None,
            expired,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        // What has arrived is taken even at the deadline.
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(axum::Error::new("request body deadline passed"))));
        }
        Poll::Pending
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
    use http_body_util::BodyExt;

    #[test]
    fn only_a_request_with_a_body_gets_a_deadline() {
        let with = |body: Body| axum::http::Request::post("/x").body(body).unwrap();
        assert!(!has_body(&with(Body::empty())));
        assert!(has_body(&with(Body::from("x"))));
        let stream = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        assert!(has_body(&with(Body::from_stream(stream))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_fails_at_the_deadline_and_says_so() {
        use futures_util::StreamExt;
        // One frame, then nothing more (a client that stopped sending).
        let inner = Body::from_stream(
            futures_util::stream::once(async {
                Ok::<_, std::io::Error>(Bytes::from_static(b"part"))
            })
            .chain(futures_util::stream::pending()),
        );
        let expired = Arc::new(AtomicBool::new(false));
        let mut body = DeadlineBody::new(inner, Duration::from_secs(5), expired.clone());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"part"));
        let started = Instant::now();
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(expired.load(Ordering::Acquire));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_arrives_in_time_is_untouched() {
        let expired = Arc::new(AtomicBool::new(false));
        let body = DeadlineBody::new(Body::from("whole"), Duration::from_secs(5), expired.clone());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, Bytes::from_static(b"whole"));
        assert!(!expired.load(Ordering::Acquire));
    }
}
