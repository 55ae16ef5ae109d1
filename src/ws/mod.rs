//! WebSocket manager: the `GET /{doc}` upgrade and the per-socket session.
//!
//! Why it exists: everything that must happen before a single client byte is decoded lives
//! here — document-name validation, authentication and access checks, socket limits (frame and
//! message size, buffer sizes) — and then [`connection`] runs the session.

pub mod connection;
pub mod rate;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::FutureExt;

use crate::api::{query_param, ApiError, DocName};
use crate::net::ConnSlot;
use crate::server::AppState;

/// Read buffer per socket, and the most tungstenite reads from the socket in one call. Small:
/// most y-protocols messages are tiny (a keystroke is ~30 bytes, an awareness state a few
/// hundred), and every idle connection keeps this buffer, zero-filled, for its whole life (it
/// was 4 KiB, then 1 KiB; 512 bytes is ~12 % of an idle connection's memory now). A larger
/// message gets a buffer of its own size (tungstenite reserves the declared length) and is read
/// in 512-byte steps: a 100 KB document sync costs 200 reads, small next to decoding it.
const READ_BUFFER: usize = 512;
/// Bytes tungstenite buffers before writing to the socket (a flush always writes).
const WRITE_BUFFER: usize = 8 * 1024;

/// `GET /{doc}`: upgrade to a y-websocket session.
pub async fn upgrade(
    State(app): State<AppState>,
    DocName(doc): DocName,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    slot: Option<Extension<Arc<ConnSlot>>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let (info, principal) = match app.peer_info(query.as_deref(), &headers, &doc) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::new(e.status(), "websocket_upgrade_required", e.body_text())
                .into_response()
        }
    };
    let ack = query_param(query.as_deref(), "ack").is_some_and(|v| v == "1" || v == "true");
    let info = crate::room::PeerInfo { ack, ..info };
    let limits = &app.config.limits;
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let tracker = app.connections.clone();
    ws.max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // No cap on one outgoing frame: the largest the server sends is a new client's step 2,
        // the whole document, which may pass any fixed figure (a quota lowered after the
        // document grew, an HTTP edit that overshoots it). A cap (it was 2 × max_message_bytes)
        // bounds no memory here — the connection's task writes a frame only when the socket
        // took the previous ones — and closed the sessions of big documents.
        .max_write_buffer_size(usize::MAX)
        .on_upgrade(move |socket| {
            // The upgrade is complete: the handshake deadline is met. The session keeps the
            // connection's slot, so the connection caps count open WebSockets.
            if let Some(Extension(slot)) = &slot {
                slot.handshake_done();
            }
            // The session runs as a task of its own and the upgrade task ends here: that task's
            // future (hyper's upgrade, axum's wrapper and this closure's captures) would
            // otherwise stay allocated, as large as the session itself, for the life of the
            // socket. Tracked from the start, so shutdown waits for it. The session future is
            // built here, so the task holds it and the slot, not the arguments it was built from.
            // (A combinator, not an `async` block: an async block awaiting `session` would keep
            // it twice, as its capture and as the awaited value.)
            let session = connection::run(app, socket, doc, conn, info, principal);
            tracker.spawn(session.map(move |()| drop(slot)));
            std::future::ready(())
        })
}
