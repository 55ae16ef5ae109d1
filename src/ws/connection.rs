//! One WebSocket session: one task per socket.
//!
//! Why it exists: reading and writing must not block each other, and an idle socket should cost
//! as little as possible. The session is one task holding the unsplit socket; each time it is
//! woken it (1) checks the connection's [`Outbox`] for a close request, (2) runs the one timer
//! (pings, token expiry), (3) writes what is queued (several frames, one flush), and (4) reads:
//! it frames and validates client messages and forwards them to the room. A frame that has to
//! wait (an offloaded decode, the in-flight budget, a full room queue) parks in the task's
//! `inbound` slot and stops reading — which pushes back on the client through TCP — while
//! steps 1-3 go on, so queued frames are still written and a close still wins. The outbox is
//! closed by the room (1013, 1011), the revocation map (4401), server shutdown (1001, through
//! [`crate::sessions::Sessions::close_all`]) or the session itself.
//!
//! (It was a reader task and a writer task over a split socket: a second task, a lock around
//! the socket, a tokio `mpsc` allocated at connection time, and a cancellation token and a
//! shutdown token polled — each locking a mutex — on every message.)

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{Semaphore, TryAcquireError};
use tokio::time::{Instant, Sleep};
use tracing::{debug, Instrument};
use yrs::sync::{Message, SyncMessage};

use crate::auth::Principal;
use crate::config::Config;
use crate::decode::{DecodeError, Decoder};
use crate::protocol::{self, close, decode_client_frame};
use crate::room::{ConnId, Incoming, Outbox, PeerInfo, PeerLink, RoomError, RoomHandle};
use crate::server::AppState;
use crate::ws::rate::TokenBucket;

/// How long the session tries to deliver a close frame before dropping the socket.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a session closed by shutdown (1001) waits for the client's close frame.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(300);
/// Messages read per wake-up before the task yields to the others on its worker.
const READS_PER_POLL: u32 = 16;

/// A client frame waiting for something (see the module documentation); the error is the
/// close code and reason.
type InboundWork = Pin<Box<dyn Future<Output = Result<(), (u16, String)>> + Send>>;

/// Runs a session until either side closes it, inside a span naming the connection.
///
/// Every idle connection keeps this future for the life of its socket, so its size is
/// per-connection memory. Hence a plain function returning the session's future, not an
/// `async fn` with `#[tracing::instrument]` (that pair stores every argument twice), and the
/// arguments go in a box, freed when the session has joined its room: an `async fn` keeps its
/// arguments, as moved from, for its whole life beside the locals they were moved into (the
/// socket alone is 368 bytes).
pub fn run(
    app: AppState,
    socket: WebSocket,
    doc: String,
    conn: ConnId,
    info: PeerInfo,
    principal: Principal,
) -> impl Future<Output = ()> + Send + 'static {
    // A debug-level span: every event of a session is at debug level, and an enabled span costs
    // each connection ~0.4 KiB (its slot and formatted fields in the subscriber) plus an enter
    // and an exit on every wake-up. At the default `info` filter it is disabled and free.
    let span = tracing::debug_span!("conn", id = conn, doc = %doc, user = %info.user);
    let start = Box::new(Start {
        app,
        socket,
        doc,
        conn,
        info,
        principal: Arc::new(principal),
    });
    session(start).instrument(span)
}

/// The arguments of [`session`].
struct Start {
    app: AppState,
    socket: WebSocket,
    doc: String,
    conn: ConnId,
    info: PeerInfo,
    principal: Arc<Principal>,
}

/// The session: its start ([`join`]) and its end ([`End::run`]) run as futures of their own,
/// boxed while they run, so the task keeps only what the live session needs. An `async fn` is
/// as large as the locals alive at its largest await point, for the socket's whole life, and
/// keeps a moved-from local's room too: so the live phase is an `async` block that uses its
/// capture in place (measured with `size_of_val` on the task's future: 2,352 bytes with the
/// join and the close inline, 832 with them boxed in an `async fn`, 736 now).
fn session(start: Box<Start>) -> impl Future<Output = ()> + Send {
    Box::pin(join(start)).then(|joined| match joined {
        Ok(mut live) => Either::Left(async move {
            let mut timer = std::pin::pin!(tokio::time::sleep_until(live.next_timer()));
            std::future::poll_fn(|cx| live.poll(timer.as_mut(), cx)).await;
            Box::pin(live.into_end().run()).await
        }),
        Err(end) => Either::Right(Box::pin(end.run())),
    })
}

/// Registers the session (revocation, shutdown) and joins its room.
async fn join(start: Box<Start>) -> Result<Live, End> {
    let Start {
        app,
        socket,
        doc,
        conn,
        info,
        principal,
    } = *start;
    metrics::counter!("wedsync_connections_total").increment(1);
    metrics::gauge!("wedsync_connections").increment(1.0);
    let outbox = Outbox::new(app.config.limits.outgoing_queue);
    let can_edit = info.can_edit;
    let deadline = app.auth.session_deadline(&principal).map(unix_to_instant);
    app.sessions.insert(conn, principal.clone(), outbox.clone());
    if app.auth.is_revoked(&principal) {
        // A revocation that raced with this upgrade (token checked before it was revoked).
        let _ = outbox.push(protocol::encode_permission_denied(
            "permission denied: token revoked",
        ));
        outbox.close(close::UNAUTHORIZED, "permission denied: token revoked");
    } else if app.shutdown.is_cancelled() {
        // A shutdown whose sweep of the sessions ran before this one was registered.
        outbox.close(close::GOING_AWAY, "server shutting down");
    }
    let link = PeerLink {
        outbox: outbox.clone(),
    };
    // A session closed before it joined (revoked during the upgrade) never joins: it must not
    // receive the document or anyone's presence.
    let joined = if outbox.is_closed() {
        Err(RoomError::Closed)
    } else {
        app.registry.join(&doc, conn, info, link).await
    };
    let sessions = app.sessions.clone();
    match joined {
        Ok(room) => Ok(Live {
            socket,
            outbox,
            sessions,
            next_ping: Instant::now() + app.config.limits.ping_interval,
            deadline,
            missed_pongs: 0,
            ping_due: false,
            unflushed: false,
            write_failed: false,
            inbound: None,
            reader: Reader::new(
                app.config.clone(),
                app.decoder.clone(),
                room,
                conn,
                can_edit,
            ),
        }),
        Err(e) => {
            debug!(error = %e, "join refused");
            // (no-op when the session was already closed, e.g. revoked)
            outbox.close(close::INTERNAL, e.to_string());
            Err(End {
                sessions,
                socket,
                outbox,
                room: None,
                inbound: None,
                conn,
            })
        }
    }
}

/// What the end of a session needs.
struct End {
    sessions: Arc<crate::sessions::Sessions>,
    socket: WebSocket,
    outbox: Arc<Outbox>,
    /// The room joined, to leave.
    room: Option<RoomHandle>,
    /// A client frame read but not yet in the room when the session ended.
    inbound: Option<InboundWork>,
    conn: ConnId,
}

/// Leaves the room, then closes the socket: what is still queued, the close frame, and after a
/// server-initiated close, the client's close frame.
impl End {
    async fn run(self) {
        let End {
            sessions,
            mut socket,
            outbox,
            room,
            inbound,
            conn,
        } = self;
        // Normal end from the client side. (From here on the outbox takes no more frames.)
        outbox.close(1000, "");
        let (code, reason) = outbox.frame().unwrap_or((1000, String::new()));
        // The close frame first, then the room: a busy room (a commit waiting for its flush, a
        // full queue) must not delay the close frame.
        send_close(&mut socket, &outbox, code, &reason).await;
        // A frame the client sent before it went away (or before the server closed for a
        // reason of its own) reaches the room before the leave, unless the close withdrew
        // the right to edit.
        if let Some(work) = inbound {
            if code != close::UNAUTHORIZED {
                if let Err((code, reason)) = work.await {
                    debug!(code, %reason, "last frame not applied");
                }
            }
        }
        if let Some(room) = room {
            room.leave(conn).await;
        }
        sessions.remove(conn);
        outbox.finish();
        // After a server-initiated close frame, read (and discard) until the client's close
        // frame, as RFC 6455 asks, so pongs and late frames in flight do not meet a reset socket.
        // At shutdown the wait is short: the process is going away and must not be held up.
        if code != 1000 {
            let linger = if code == close::GOING_AWAY {
                SHUTDOWN_LINGER
            } else {
                CLOSE_SEND_TIMEOUT
            };
            let _ = tokio::time::timeout(linger, async {
                while let Some(Ok(msg)) = socket.next().await {
                    if matches!(msg, WsMessage::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        debug!(code, %reason, "closed");
        metrics::counter!("wedsync_closes_total", "code" => code.to_string()).increment(1);
        metrics::gauge!("wedsync_connections").decrement(1.0);
    }
}

/// Writes what is still queued (except after 1013: the client is too slow for it) and the
/// close frame (none for 1000: the socket's own close), each within [`CLOSE_SEND_TIMEOUT`].
async fn send_close(socket: &mut WebSocket, outbox: &Outbox, code: u16, reason: &str) {
    if code != close::TRY_AGAIN {
        // E.g. the auth "permission denied" message that precedes a 4401.
        let drain = async {
            while let Some(frame) = outbox.pop() {
                socket.feed(WsMessage::Binary(frame)).await?;
            }
            socket.flush().await
        };
        let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, drain).await;
    }
    if code != 1000 {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(truncate_reason(reason)),
        };
        let _ = tokio::time::timeout(
            CLOSE_SEND_TIMEOUT,
            socket.send(WsMessage::Close(Some(frame))),
        )
        .await;
    } else {
        let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, SinkExt::close(socket)).await;
    }
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

/// The session between join and close: what one wake-up of the task looks at.
struct Live {
    socket: WebSocket,
    outbox: Arc<Outbox>,
    sessions: Arc<crate::sessions::Sessions>,
    /// When to ping next (the one timer, passed to [`Live::poll`], is set to the next ping or
    /// the token's expiry, whichever comes first).
    next_ping: Instant,
    /// When the token stops being valid.
    deadline: Option<Instant>,
    missed_pongs: u32,
    ping_due: bool,
    /// Frames were handed to the socket since its last completed flush.
    unflushed: bool,
    /// Writing failed (the client went away): what the client sent before is still read, up
    /// to the end of its stream.
    write_failed: bool,
    /// A client frame on its way to the room; no reads until it is there.
    inbound: Option<InboundWork>,
    reader: Reader,
}

impl Live {
    /// Ready when the session is over (the outbox says why, or the client left).
    fn poll(&mut self, timer: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<()> {
        if self.outbox.register(cx.waker()) {
            return Poll::Ready(());
        }
        if self.poll_timer(timer, cx).is_break() {
            return Poll::Ready(());
        }
        if !self.write_failed && self.poll_write(cx).is_err() {
            debug!("write failed; reading what the client sent before");
            self.write_failed = true;
        }
        self.poll_read(cx)
    }

    /// The next ping or the token's expiry, whichever comes first.
    fn next_timer(&self) -> Instant {
        self.deadline
            .map_or(self.next_ping, |d| d.min(self.next_ping))
    }

    /// What the end of the session needs.
    fn into_end(self) -> End {
        End {
            sessions: self.sessions,
            socket: self.socket,
            outbox: self.outbox,
            room: Some(self.reader.room),
            inbound: self.inbound,
            conn: self.reader.conn,
        }
    }

    fn poll_timer(&mut self, mut timer: Pin<&mut Sleep>, cx: &mut Context<'_>) -> ControlFlow<()> {
        let (max_missed, ping_interval) = {
            let limits = &self.reader.config.limits;
            (limits.max_missed_pongs, limits.ping_interval)
        };
        while timer.as_mut().poll(cx).is_ready() {
            let now = timer.deadline();
            if self.deadline.is_some_and(|d| d <= now) {
                let _ = self.outbox.push(protocol::encode_permission_denied(
                    "permission denied: token expired",
                ));
                self.outbox
                    .close(close::UNAUTHORIZED, "permission denied: token expired");
                return ControlFlow::Break(());
            }
            if self.next_ping <= now {
                if self.missed_pongs >= max_missed {
                    self.outbox
                        .close(close::PING_TIMEOUT, "no pong to the last pings");
                    return ControlFlow::Break(());
                }
                self.missed_pongs += 1;
                self.ping_due = true;
                self.next_ping = Instant::now() + ping_interval;
            }
            timer.as_mut().reset(self.next_timer());
        }
        ControlFlow::Continue(())
    }

    /// Hands queued frames (and a due ping) to the socket while it accepts them, then flushes
    /// once. `Err` when the socket failed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), ()> {
        let mut socket = Pin::new(&mut self.socket);
        loop {
            match socket.as_mut().poll_ready(cx) {
                // The socket wakes the task when it can take more.
                Poll::Pending => break,
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Ready(Ok(())) => {}
            }
            let msg = if std::mem::take(&mut self.ping_due) {
                WsMessage::Ping(Bytes::new())
            } else if let Some(frame) = self.outbox.pop() {
                WsMessage::Binary(frame)
            } else {
                break;
            };
            socket.as_mut().start_send(msg).map_err(drop)?;
            self.unflushed = true;
        }
        if self.unflushed {
            match socket.poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Reads and handles client messages until the socket has none, a frame has to wait, or
    /// [`READS_PER_POLL`] were read. Ready when the session is over.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..READS_PER_POLL {
            if let Some(work) = self.inbound.as_mut() {
                let Poll::Ready(done) = work.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                self.inbound = None;
                if let Err((code, reason)) = done {
                    self.outbox.close(code, reason);
                    return Poll::Ready(());
                }
            }
            if self.outbox.is_closed() {
                return Poll::Ready(());
            }
            let Poll::Ready(msg) = Pin::new(&mut self.socket).poll_next(cx) else {
                return Poll::Pending;
            };
            let flow = match msg {
                // The client closed, or went away.
                None | Some(Ok(WsMessage::Close(_))) => ControlFlow::Break(()),
                Some(Ok(WsMessage::Pong(_))) => {
                    self.missed_pongs = 0;
                    ControlFlow::Continue(())
                }
                Some(Ok(msg)) => self.reader.on_message(msg, &self.outbox, &mut self.inbound),
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
                    self.outbox.close(code, reason);
                    ControlFlow::Break(())
                }
            };
            if flow.is_break() {
                return Poll::Ready(());
            }
        }
        // Fair to the other sessions on this worker: continue on the next turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What the session needs to turn client frames into room commands.
struct Reader {
    config: Arc<Config>,
    decoder: Arc<Decoder>,
    room: RoomHandle,
    conn: ConnId,
    can_edit: bool,
    denied_sent: bool,
    refused_updates: u64,
    /// Bytes of this connection's frames queued in the room and not yet taken: at most two
    /// maximum-size messages, so a fast writer waits instead of filling the room's queue.
    in_flight: Arc<Semaphore>,
    update_bucket: TokenBucket,
    awareness_bucket: TokenBucket,
}

impl Reader {
    fn new(
        config: Arc<Config>,
        decoder: Arc<Decoder>,
        room: RoomHandle,
        conn: ConnId,
        can_edit: bool,
    ) -> Reader {
        let limits = &config.limits;
        Reader {
            decoder,
            room,
            conn,
            can_edit,
            denied_sent: false,
            refused_updates: 0,
            in_flight: Arc::new(Semaphore::new(budget_bytes(limits))),
            update_bucket: TokenBucket::new(limits.update_burst),
            awareness_bucket: TokenBucket::new(limits.awareness_burst),
            config,
        }
    }

    /// Handles one client message (not a close or a pong). Everything that can be done at once
    /// is; what has to wait goes to `inbound`. Break after closing `outbox`.
    fn on_message(
        &mut self,
        msg: WsMessage,
        outbox: &Outbox,
        inbound: &mut Option<InboundWork>,
    ) -> ControlFlow<()> {
        let data = match msg {
            WsMessage::Binary(data) => data,
            WsMessage::Text(_) => {
                outbox.close(
                    close::UNSUPPORTED_DATA,
                    "text frames are not supported; send binary y-protocols messages",
                );
                return ControlFlow::Break(());
            }
            // Pings are answered by tungstenite; pongs and closes are handled by the caller.
            _ => return ControlFlow::Continue(()),
        };
        let config = self.config.clone();
        let limits = &config.limits;
        metrics::counter!("wedsync_bytes_received_total").increment(data.len() as u64);
        let mut messages = match decode_client_frame(&data) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "malformed frame");
                outbox.close(e.close_code(), e.to_string());
                return ControlFlow::Break(());
            }
        };
        // Rate limits, for the whole frame before any of it is applied.
        let (updates, awareness) = messages.iter().fold((0u32, 0u32), |(u, a), m| match m {
            m if is_update(m) => (u + 1, a),
            Message::Awareness(_) | Message::AwarenessQuery => (u, a + 1),
            _ => (u, a),
        });
        let over = if updates > 0
            && !self
                .update_bucket
                .take(limits.update_rate, limits.update_burst, f64::from(updates))
        {
            Some(format!(
                "rate limit: more than {} document updates per second (burst {})",
                limits.update_rate, limits.update_burst
            ))
        } else if awareness > 0
            && !self.awareness_bucket.take(
                limits.awareness_rate,
                limits.awareness_burst,
                f64::from(awareness),
            )
        {
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
            outbox.close(close::POLICY, reason);
            return ControlFlow::Break(());
        }
        if !self.can_edit && updates > 0 {
            self.refuse_updates(&mut messages, outbox);
        }
        let cost = u32::try_from(data.len().clamp(1, budget_bytes(limits))).unwrap_or(u32::MAX);
        let inline_max = limits.decode_inline_max_bytes;
        if messages
            .iter()
            .any(|m| matches!(m, Message::Sync(SyncMessage::SyncStep2(raw) | SyncMessage::Update(raw)) if raw.len() > inline_max))
        {
            // A large update is decoded on the blocking pool: the whole frame waits for it.
            *inbound = Some(Box::pin(decode_then_send(
                self.decoder.clone(),
                self.room.clone(),
                self.conn,
                messages,
                self.in_flight.clone(),
                cost,
            )));
            return ControlFlow::Continue(());
        }
        let mut incoming = Vec::with_capacity(messages.len());
        for m in messages {
            match Incoming::from_message(m) {
                None => {}
                Some(Ok(i)) => incoming.push(i),
                Some(Err((_, e))) => {
                    debug!(error = %e, "update does not decode");
                    outbox.close(close::INVALID_PAYLOAD, format!("invalid update: {e}"));
                    return ControlFlow::Break(());
                }
            }
        }
        if incoming.is_empty() {
            return ControlFlow::Continue(());
        }
        let permit = match self.in_flight.clone().try_acquire_many_owned(cost) {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::Closed) => None,
            Err(TryAcquireError::NoPermits) => {
                *inbound = Some(Box::pin(send_when_allowed(
                    self.room.clone(),
                    self.conn,
                    incoming,
                    self.in_flight.clone(),
                    cost,
                )));
                return ControlFlow::Continue(());
            }
        };
        match self.room.try_frame(self.conn, incoming, permit) {
            Ok(None) => ControlFlow::Continue(()),
            // The room's queue is full: wait for it (and read nothing meanwhile).
            Ok(Some(waiting)) => {
                *inbound = Some(Box::pin(async move {
                    waiting.send().await.map_err(room_closed)
                }));
                ControlFlow::Continue(())
            }
            Err(e) => {
                let (code, reason) = room_closed(e);
                outbox.close(code, reason);
                ControlFlow::Break(())
            }
        }
    }

    /// Drops the updates of a view-only connection from `messages` without decoding them, and
    /// tells the client once.
    fn refuse_updates(&mut self, messages: &mut Vec<Message>, outbox: &Outbox) {
        messages.retain(|m| {
            if !is_update(m) {
                return true;
            }
            // Every client answers the server's step 1 with its diff; from an up-to-date
            // viewer that is the empty update. Nothing to refuse there.
            if !is_empty_update(m) {
                self.refused_updates += 1;
                metrics::counter!("wedsync_view_only_updates_refused_total").increment(1);
                debug!(
                    refused_updates = self.refused_updates,
                    "update from a view-only connection not applied"
                );
                if !self.denied_sent {
                    self.denied_sent = true;
                    let _ = outbox.push(protocol::encode_permission_denied(
                        "permission denied: this connection may only view the document",
                    ));
                }
            }
            false
        });
    }
}

fn budget_bytes(limits: &crate::config::Limits) -> usize {
    limits.max_message_bytes.saturating_mul(2)
}

fn room_closed(_: RoomError) -> (u16, String) {
    (close::INTERNAL, "document closed".to_string())
}

fn is_update(m: &Message) -> bool {
    matches!(
        m,
        Message::Sync(SyncMessage::SyncStep2(_) | SyncMessage::Update(_))
    )
}

/// The slow path of a frame with a large update: decodes its updates (see [`crate::decode`]),
/// then sends it like any frame.
async fn decode_then_send(
    decoder: Arc<Decoder>,
    room: RoomHandle,
    conn: ConnId,
    messages: Vec<Message>,
    in_flight: Arc<Semaphore>,
    cost: u32,
) -> Result<(), (u16, String)> {
    let mut incoming = Vec::with_capacity(messages.len());
    for m in messages {
        let decoded = match m {
            Message::Sync(SyncMessage::SyncStep2(raw) | SyncMessage::Update(raw)) => Some(
                decoder
                    .decode(raw)
                    .await
                    .map(|(raw, decoded)| Incoming::Update { raw, decoded })
                    .map_err(|e| match e {
                        DecodeError::Invalid { raw, reason } => (raw, reason),
                        e => (Vec::new(), e.to_string()),
                    }),
            ),
            other => Incoming::from_message(other),
        };
        match decoded {
            None => {}
            Some(Ok(i)) => incoming.push(i),
            Some(Err((_, e))) => {
                debug!(error = %e, "update does not decode");
                return Err((close::INVALID_PAYLOAD, format!("invalid update: {e}")));
            }
        }
    }
    if incoming.is_empty() {
        return Ok(());
    }
    send_when_allowed(room, conn, incoming, in_flight, cost).await
}

/// Waits for the in-flight budget, then for room in the room's queue.
async fn send_when_allowed(
    room: RoomHandle,
    conn: ConnId,
    incoming: Vec<Incoming>,
    in_flight: Arc<Semaphore>,
    cost: u32,
) -> Result<(), (u16, String)> {
    let permit = in_flight.acquire_many_owned(cost).await.ok();
    room.frame(conn, incoming, permit)
        .await
        .map_err(room_closed)
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
