//! One WebSocket session: a reader (this task) and a writer task.
//!
//! Why it exists: reading and writing must not block each other. The reader frames and
//! validates client messages and forwards them to the room; the writer drains the bounded
//! outgoing queue (several queued frames go out with one flush), sends pings and the close
//! frame. Both stop on the connection's [`Closer`], which the room, the reader, the writer or
//! server shutdown can trigger with a close code.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::{debug, Instrument};

use crate::auth::Principal;
use crate::protocol::{self, close, decode_client_frame};
use crate::room::{sleep_until_opt, Closer, ConnId, Incoming, PeerInfo, PeerLink, RoomHandle};
use crate::server::AppState;
use crate::ws::rate::TokenBucket;

/// How long the writer tries to deliver a close frame before dropping the socket.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a session closed by shutdown (1001) waits for the client's close frame.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(300);

/// Runs a session until either side closes it, inside a span naming the connection.
///
/// A plain function returning the session's future, not an `async fn` with
/// `#[tracing::instrument]`: that pair stores every argument twice (once in the outer future,
/// once in the inner one) for the whole life of the socket, and the unsplit socket (368 bytes)
/// once more. Every idle connection keeps this future, so its size is per-connection memory.
pub fn run(
    app: AppState,
    socket: WebSocket,
    doc: String,
    conn: ConnId,
    info: PeerInfo,
    principal: Principal,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let span = tracing::info_span!("conn", id = conn, doc = %doc, user = %info.user);
    let (sink, stream) = socket.split();
    session(app, sink, stream, doc, conn, info, Arc::new(principal)).instrument(span)
}

async fn session(
    app: AppState,
    sink: SplitSink<WebSocket, WsMessage>,
    mut stream: SplitStream<WebSocket>,
    doc: String,
    conn: ConnId,
    info: PeerInfo,
    principal: Arc<Principal>,
) {
    metrics::counter!("wedsync_connections_total").increment(1);
    metrics::gauge!("wedsync_connections").increment(1.0);
    let limits = &app.config.limits;
    let (tx, rx) = mpsc::channel::<Bytes>(limits.outgoing_queue);
    let closer = Closer::new();
    let missed_pongs = Arc::new(AtomicU32::new(0));
    let writer = tokio::spawn(
        write_loop(
            sink,
            rx,
            closer.clone(),
            missed_pongs.clone(),
            limits.ping_interval,
            limits.max_missed_pongs,
        )
        .in_current_span(),
    );

    let can_edit = info.can_edit;
    let deadline = app.auth.session_deadline(&principal).map(unix_to_instant);
    app.sessions
        .insert(conn, principal.clone(), closer.clone(), tx.clone());
    // A revocation that raced with this upgrade (token checked before it was revoked).
    if app.auth.is_revoked(&principal) {
        let _ = tx.try_send(protocol::encode_permission_denied(
            "permission denied: token revoked",
        ));
        closer.close(close::UNAUTHORIZED, "permission denied: token revoked");
    }
    let link = PeerLink {
        tx: tx.clone(),
        closer: closer.clone(),
    };
    // A session closed before it joined (revoked during the upgrade) never joins: it must not
    // receive the document or anyone's presence.
    let joined = if closer.is_closed() {
        Err(crate::room::RoomError::Closed)
    } else {
        app.registry.join(&doc, conn, info, link).await
    };
    match joined {
        Ok(room) => {
            let session = Session {
                conn,
                closer: &closer,
                tx: &tx,
                missed_pongs: &missed_pongs,
                can_edit,
                deadline,
            };
            read_loop(&app, &mut stream, &room, session).await;
            room.leave(conn).await;
        }
        Err(e) => {
            debug!(error = %e, "join refused");
            // (no-op when the session was already closed, e.g. revoked)
            closer.close(close::INTERNAL, e.to_string());
        }
    }
    app.sessions.remove(conn);
    // Normal end from the client side: stop the writer too.
    closer.close(1000, "");
    drop(tx);
    let _ = writer.await;
    // After a server-initiated close frame, read (and discard) until the client's close
    // frame, as RFC 6455 asks, so pongs and late frames in flight do not meet a reset socket.
    // At shutdown the wait is short: the process is going away and must not be held up.
    if let Some((code, _)) = closer.frame().filter(|(code, _)| *code != 1000) {
        let linger = if code == close::GOING_AWAY {
            SHUTDOWN_LINGER
        } else {
            CLOSE_SEND_TIMEOUT
        };
        let _ = tokio::time::timeout(linger, async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    if let Some((code, reason)) = closer.frame() {
        debug!(code, %reason, "closed");
        metrics::counter!("wedsync_closes_total", "code" => code.to_string()).increment(1);
    }
    metrics::gauge!("wedsync_connections").decrement(1.0);
}

/// What the reader needs to know about its session.
struct Session<'a> {
    conn: ConnId,
    closer: &'a Arc<Closer>,
    tx: &'a mpsc::Sender<Bytes>,
    missed_pongs: &'a AtomicU32,
    can_edit: bool,
    /// When the token stops being valid.
    deadline: Option<tokio::time::Instant>,
}

/// Converts a Unix time (seconds) into a tokio instant (so paused-time tests can reach it).
/// Measured against the system clock to the sub-second, not against whole seconds: a
/// whole-second `now` would end sessions up to a second after the token stopped verifying.
fn unix_to_instant(unix: u64) -> tokio::time::Instant {
    let at = UNIX_EPOCH + Duration::from_secs(unix);
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

async fn read_loop(
    app: &AppState,
    stream: &mut SplitStream<WebSocket>,
    room: &RoomHandle,
    session: Session<'_>,
) {
    let Session {
        conn,
        closer,
        tx,
        missed_pongs,
        can_edit,
        deadline,
    } = session;
    let mut denied_sent = false;
    let mut refused_updates = 0u64;
    let limits = &app.config.limits;
    // Bytes of this connection's frames queued in the room and not yet taken: at most two
    // maximum-size messages, so a fast writer waits instead of filling the room's queue.
    let budget_bytes = limits.max_message_bytes.saturating_mul(2);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(budget_bytes));
    let mut update_bucket = TokenBucket::new(limits.update_rate, limits.update_burst);
    let mut awareness_bucket = TokenBucket::new(limits.awareness_rate, limits.awareness_burst);
    loop {
        let msg = tokio::select! {
            biased;
            _ = closer.closed() => return,
            _ = app.shutdown.cancelled() => {
                closer.close(close::GOING_AWAY, "server shutting down");
                return;
            }
            _ = sleep_until_opt(deadline) => {
                let _ = tx.try_send(protocol::encode_permission_denied("permission denied: token expired"));
                closer.close(close::UNAUTHORIZED, "permission denied: token expired");
                return;
            }
            msg = stream.next() => msg,
        };
        let data = match msg {
            None => return,
            Some(Err(e)) => {
                let text = e.to_string();
                let (code, reason) = if text.contains("Space limit exceeded")
                    || text.contains("too long")
                    || text.contains("too big")
                {
                    (close::TOO_BIG, "message too big".to_string())
                } else {
                    (close::PROTOCOL_ERROR, format!("websocket error: {text}"))
                };
                debug!(error = %text, "read error");
                closer.close(code, reason);
                return;
            }
            Some(Ok(WsMessage::Binary(data))) => data,
            Some(Ok(WsMessage::Text(_))) => {
                closer.close(
                    close::UNSUPPORTED_DATA,
                    "text frames are not supported; send binary y-protocols messages",
                );
                return;
            }
            Some(Ok(WsMessage::Pong(_))) => {
                missed_pongs.store(0, Ordering::Relaxed);
                continue;
            }
            Some(Ok(WsMessage::Ping(_))) => continue,
            Some(Ok(WsMessage::Close(_))) => return,
        };
        metrics::counter!("wedsync_bytes_received_total").increment(data.len() as u64);
        let messages = match decode_client_frame(&data) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "malformed frame");
                closer.close(e.close_code(), e.to_string());
                return;
            }
        };
        // Rate limits, for the whole frame before any of it is applied.
        let (updates, awareness) = messages.iter().fold((0u32, 0u32), |(u, a), m| match m {
            yrs::sync::Message::Sync(
                yrs::sync::SyncMessage::SyncStep2(_) | yrs::sync::SyncMessage::Update(_),
            ) => (u + 1, a),
            yrs::sync::Message::Awareness(_) | yrs::sync::Message::AwarenessQuery => (u, a + 1),
            _ => (u, a),
        });
        let over = if updates > 0 && !update_bucket.take(f64::from(updates)) {
            Some(format!(
                "rate limit: more than {} document updates per second (burst {})",
                limits.update_rate, limits.update_burst
            ))
        } else if awareness > 0 && !awareness_bucket.take(f64::from(awareness)) {
            Some(format!(
                "rate limit: more than {} awareness messages per second (burst {})",
                limits.awareness_rate, limits.awareness_burst
            ))
        } else {
            None
        };
        if let Some(reason) = over {
            metrics::counter!("wedsync_rate_limited_total").increment(1);
            debug!(%reason, "rate limit exceeded; closing");
            closer.close(close::POLICY, reason);
            return;
        }
        let mut incoming = Vec::with_capacity(messages.len());
        for m in messages {
            let is_update = matches!(
                m,
                yrs::sync::Message::Sync(
                    yrs::sync::SyncMessage::SyncStep2(_) | yrs::sync::SyncMessage::Update(_)
                )
            );
            if is_update && !can_edit {
                // Every client answers the server's step 1 with its diff; from an up-to-date
                // viewer that is the empty update. Nothing to refuse there.
                if is_empty_update(&m) {
                    continue;
                }
                // Never decode what we will not apply.
                refused_updates += 1;
                metrics::counter!("wedsync_view_only_updates_refused_total").increment(1);
                debug!(
                    refused_updates,
                    "update from a view-only connection not applied"
                );
                if !denied_sent {
                    denied_sent = true;
                    let _ = tx.try_send(protocol::encode_permission_denied(
                        "permission denied: this connection may only view the document",
                    ));
                }
                continue;
            }
            let decoded = match m {
                yrs::sync::Message::Sync(
                    yrs::sync::SyncMessage::SyncStep2(raw) | yrs::sync::SyncMessage::Update(raw),
                ) => {
                    let decoding = decode_update(raw, limits);
                    tokio::select! {
                        biased;
                        _ = closer.closed() => return,
                        r = decoding => Some(r),
                    }
                }
                other => Incoming::from_message(other),
            };
            match decoded {
                None => {}
                Some(Ok(i)) => incoming.push(i),
                Some(Err((_, e))) => {
                    debug!(error = %e, "update does not decode");
                    closer.close(close::INVALID_PAYLOAD, format!("invalid update: {e}"));
                    return;
                }
            }
        }
        if incoming.is_empty() {
            continue;
        }
        let cost = u32::try_from(data.len().clamp(1, budget_bytes)).unwrap_or(u32::MAX);
        let permit = tokio::select! {
            biased;
            _ = closer.closed() => return,
            p = in_flight.clone().acquire_many_owned(cost) => p.ok(),
        };
        if room.frame(conn, incoming, permit).await.is_err() {
            closer.close(close::INTERNAL, "document closed");
            return;
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut rx: mpsc::Receiver<Bytes>,
    closer: Arc<Closer>,
    missed_pongs: Arc<AtomicU32>,
    ping_interval: Duration,
    max_missed: u32,
) {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            biased;
            _ = closer.closed() => break,
            frame = rx.recv() => match frame {
                None => break,
                Some(frame) => {
                    let send = async {
                        sink.feed(WsMessage::Binary(frame)).await?;
                        // Several queued frames, one flush (one syscall in the common case).
                        while let Ok(frame) = rx.try_recv() {
                            sink.feed(WsMessage::Binary(frame)).await?;
                        }
                        sink.flush().await
                    };
                    tokio::select! {
                        biased;
                        r = send => r,
                        // A client that stops reading blocks the send; closing must still win.
                        _ = closer.closed() => break,
                    }
                }
            },
            _ = ping.tick() => {
                if missed_pongs.fetch_add(1, Ordering::Relaxed) >= max_missed {
                    closer.close(close::PING_TIMEOUT, "no pong to the last pings");
                    break;
                }
                tokio::select! {
                    biased;
                    r = sink.send(WsMessage::Ping(Bytes::new())) => r,
                    _ = closer.closed() => break,
                }
            }
        };
        if result.is_err() {
            closer.close(1000, "");
            break;
        }
    }
    if let Some((code, reason)) = closer.frame() {
        if code != close::TRY_AGAIN {
            // Deliver what is already queued (e.g. the auth "permission denied" message that
            // precedes a 4401), within the close timeout.
            let drain = async {
                while let Ok(frame) = rx.try_recv() {
                    sink.feed(WsMessage::Binary(frame)).await?;
                }
                sink.flush().await
            };
            let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, drain).await;
        }
        if code != 1000 {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(truncate_reason(&reason)),
            };
            let _ =
                tokio::time::timeout(CLOSE_SEND_TIMEOUT, sink.send(WsMessage::Close(Some(frame))))
                    .await;
        } else {
            let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, sink.close()).await;
        }
    }
}

/// Decodes a client's update. Small ones inline (cheaper than a thread hop); larger ones on
/// the blocking pool under `decode_timeout`, so a pathological update cannot stall a runtime
/// worker. The reader awaits each decode, so one connection runs at most one at a time, and a
/// timeout closes the connection (the abandoned decode finishes on its pool thread).
pub async fn decode_update(
    raw: Vec<u8>,
    limits: &crate::config::Limits,
) -> Result<Incoming, (Vec<u8>, String)> {
    if raw.len() <= limits.decode_inline_max_bytes {
        return match protocol::decode_update_checked(&raw) {
            Ok(decoded) => Ok(Incoming::Update { raw, decoded }),
            Err(e) => Err((raw, e)),
        };
    }
    let started = tokio::time::Instant::now();
    let job = tokio::task::spawn_blocking(move || {
        let r = protocol::decode_update_checked(&raw);
        (raw, r)
    });
    match tokio::time::timeout(limits.decode_timeout, job).await {
        Err(_) => {
            metrics::counter!("wedsync_decode_timeouts_total").increment(1);
            Err((
                Vec::new(),
                format!("decoding took longer than {:?}", limits.decode_timeout),
            ))
        }
        Ok(Err(join)) => Err((Vec::new(), format!("decoder failed: {join}"))),
        Ok(Ok((raw, Ok(decoded)))) => {
            metrics::histogram!("wedsync_offloaded_decode_seconds")
                .record(started.elapsed().as_secs_f64());
            Ok(Incoming::Update { raw, decoded })
        }
        Ok(Ok((raw, Err(e)))) => Err((raw, e)),
    }
}

/// An update with no new structs (its first varuint, the number of clients with structs, is
/// 0). A viewer's step 2 carries the document's delete set even when the viewer has nothing
/// new, so "no structs" is the test, not the exact bytes `[0, 0]`; a viewer's deletions
/// alone are ignored rather than answered with "permission denied" (neither is applied).
fn is_empty_update(m: &yrs::sync::Message) -> bool {
    use yrs::sync::{Message, SyncMessage};
    matches!(m, Message::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) if u.first() == Some(&0))
}

/// A close reason must fit in a control frame (123 bytes of UTF-8).
fn truncate_reason(reason: &str) -> String {
    if reason.len() <= 123 {
        return reason.to_owned();
    }
    let mut end = 120;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &reason[..end])
}

/// Builds the identity of a connection in open development mode.
pub fn open_mode_peer(ack: bool) -> PeerInfo {
    PeerInfo {
        user: "anonymous".into(),
        name: None,
        role: None,
        can_edit: true,
        ack,
        connected_at: SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn close_reason_fits_a_control_frame() {
        let long = "é".repeat(100);
        let r = super::truncate_reason(&long);
        assert!(r.len() <= 123);
        assert_eq!(super::truncate_reason("short"), "short");
    }
}
