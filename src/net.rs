//! The accept loop: connection caps, header-read timeout, handshake deadline.
//!
//! Why it exists: `axum::serve` has no header-read timeout (a slowloris client that sends one
//! header byte now and then holds a connection forever) and no connection caps. This loop
//! serves each TCP connection with hyper-util's `auto::Builder` (HTTP/1 with a header-read
//! timer, upgrades for WebSockets), counts every open connection globally and per IP address in
//! a [`ConnLimiter`], and refuses connections over a cap with a short HTTP 503 written straight
//! to the socket before anything is read. A connection that has not completed its first request
//! (and, for a WebSocket, its upgrade) within `handshake_timeout` of accept is dropped.
//!
//! A WebSocket session keeps its [`ConnSlot`] until the session ends, so the caps count open
//! WebSockets as well as HTTP connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

use crate::config::Limits;

/// Refusals being written at once; past this, sockets over the cap are closed without a reply
/// (a flood must not turn the refusals themselves into the resource exhaustion).
const MAX_PENDING_REFUSALS: usize = 1024;
/// How long a refused socket is read (and discarded) after the 503, so the client's request
/// bytes do not turn the close into a reset that loses the reply.
const REFUSAL_LINGER: Duration = Duration::from_millis(200);
/// How long shutdown lets HTTP connections finish their current request.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts open connections, globally and per IP address.
#[derive(Debug)]
pub struct ConnLimiter {
    max: usize,
    per_ip: usize,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    Global,
    /// `max_connections_per_ip` reached for this address.
    PerIp,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::Global => "too many connections to this server; retry later",
            Refusal::PerIp => "too many connections from this address; retry later",
        }
    }
    fn code(self) -> &'static str {
        match self {
            Refusal::Global => "too_many_connections",
            Refusal::PerIp => "too_many_connections_per_ip",
        }
    }
}

/// One counted connection; released on drop. A WebSocket session holds a clone until it ends.
#[derive(Debug)]
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
    /// Cancelled once the connection completed its handshake (first request read; for a
    /// WebSocket, the upgrade done): the handshake deadline no longer applies. Taken (and
    /// dropped) when cancelled: a WebSocket session keeps its slot for its whole life, and the
    /// token (~0.1 KiB) is of no use after the handshake.
    handshake_done: Mutex<Option<CancellationToken>>,
}

impl ConnSlot {
    /// Marks the handshake complete.
    pub fn handshake_done(&self) {
        let token = self.handshake_done.lock().ok().and_then(|mut t| t.take());
        if let Some(token) = token {
            token.cancel();
        }
    }

    /// The handshake token, for the connection's own deadline (`None` once done).
    fn handshake_token(&self) -> Option<CancellationToken> {
        self.handshake_done.lock().ok().and_then(|t| t.clone())
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut s) = self.limiter.state.lock() {
            s.total = s.total.saturating_sub(1);
            if let Some(n) = s.by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    s.by_ip.remove(&self.ip);
                }
            }
        }
        metrics::gauge!("wedsync_open_connections").decrement(1.0);
    }
}

impl ConnLimiter {
    pub fn new(max: usize, per_ip: usize) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max,
            per_ip,
            state: Mutex::new(LimiterState::default()),
        })
    }

    /// Counts a new connection from `ip`, or says which cap it is over.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Arc<ConnSlot>, Refusal> {
        let mut s = self.state.lock().map_err(|_| Refusal::Global)?;
        if s.total >= self.max {
            return Err(Refusal::Global);
        }
        let n = s.by_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        s.total += 1;
        drop(s);
        metrics::gauge!("wedsync_open_connections").increment(1.0);
        Ok(Arc::new(ConnSlot {
            limiter: self.clone(),
            ip,
            handshake_done: Mutex::new(Some(CancellationToken::new())),
        }))
    }

    /// Open connections counted now.
    pub fn open(&self) -> usize {
        self.state.lock().map(|s| s.total).unwrap_or(0)
    }
}

/// Accepts connections until `stop` is cancelled, then lets the HTTP connections finish their
/// current request (WebSocket sessions are ended by the server's own shutdown).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    limiter: Arc<ConnLimiter>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let tasks = TaskTracker::new();
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Small y-protocols frames must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let slot = match limiter.try_acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                metrics::counter!("wedsync_connections_refused_total", "cap" => why.code())
                    .increment(1);
                debug!(%peer, cap = why.code(), "connection refused over the cap");
                if refusing.fetch_add(1, Ordering::AcqRel) < MAX_PENDING_REFUSALS {
                    let refusing = refusing.clone();
                    tokio::spawn(async move {
                        refuse(tcp, why).await;
                        refusing.fetch_sub(1, Ordering::AcqRel);
                    });
                } else {
                    refusing.fetch_sub(1, Ordering::AcqRel);
                    drop(tcp);
                }
                continue;
            }
        };
        tasks.spawn(serve_connection(
            tcp,
            peer,
            slot,
            router.clone(),
            builder.clone(),
            limits.handshake_timeout,
            stop.clone(),
        ));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Arc<ConnSlot>,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handshake_timeout: Duration,
    stop: CancellationToken,
) {
    let svc_slot = slot.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if !req.headers().contains_key(hyper::header::UPGRADE) {
            // A plain request has been read in full (headers): handshake done. An upgrade
            // counts as done when the WebSocket session starts (see `ws::upgrade`).
            svc_slot.handshake_done();
        }
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(svc_slot.clone());
        let mut router = router.clone();
        async move { Ok::<_, Infallible>(router.call(req).await.unwrap_or_else(|e| match e {})) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
    tokio::pin!(conn);
    let handshake = {
        let done = slot.handshake_token();
        async move {
            let Some(done) = done else {
                return std::future::pending::<()>().await;
            };
            tokio::select! {
                _ = tokio::time::sleep(handshake_timeout) => {}
                _ = done.cancelled() => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, error = %e, "http connection ended with an error");
            }
        }
        _ = handshake => {
            metrics::counter!("wedsync_handshake_timeouts_total").increment(1);
            debug!(%peer, "no completed request or upgrade within the handshake deadline; closing");
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HTTP_DRAIN_TIMEOUT, conn.as_mut()).await;
        }
    }
    drop(slot);
}

/// Writes a short HTTP 503 with a JSON error and closes, without reading the request first.
async fn refuse(mut tcp: TcpStream, why: Refusal) {
    let body =
        serde_json::json!({"error": {"code": why.code(), "message": why.message()}}).to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        tcp.write_all(reply.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_globally_and_per_ip() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.try_acquire(a).unwrap();
        let _a2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), Refusal::PerIp);
        let _b1 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err(), Refusal::Global);
        drop(a1);
        assert_eq!(l.open(), 2);
        assert!(l.try_acquire(b).is_ok());
    }
}
