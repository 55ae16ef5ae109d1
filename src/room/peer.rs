//! What a room knows about one connected client, and how it talks to it.
//!
//! Why it exists: the room task must never wait on a client. It pushes encoded frames into the
//! connection's bounded outgoing queue with `try_send`; when the queue is full the client is
//! closed with 1013 instead of having a message silently dropped (a CRDT client resyncs
//! everything it missed on reconnect, so closing is lossless while dropping is not).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::close;

/// Process-unique connection id.
pub type ConnId = u64;

/// A one-shot "close this connection with this code" signal, shared by the room and the
/// connection's reader and writer tasks. The first reason given wins.
#[derive(Debug, Default)]
pub struct Closer {
    token: CancellationToken,
    frame: Mutex<Option<(u16, String)>>,
}

impl Closer {
    pub fn new() -> Arc<Closer> {
        Arc::new(Closer::default())
    }

    /// Asks the connection to close with `code` and `reason` (ignored if already closing).
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        if let Ok(mut f) = self.frame.lock() {
            if f.is_none() {
                *f = Some((code, reason.into()));
            }
        }
        self.token.cancel();
    }

    /// Resolves once [`Closer::close`] was called.
    pub async fn closed(&self) {
        self.token.cancelled().await
    }

    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The close code and reason, if closing.
    pub fn frame(&self) -> Option<(u16, String)> {
        self.frame.lock().ok().and_then(|f| f.clone())
    }
}

/// Who a connection is, as proven by its token (or open development mode).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub user: String,
    pub name: Option<String>,
    pub role: Option<String>,
    pub can_edit: bool,
    /// Opted in to durable acknowledgements (`?ack=1`).
    pub ack: bool,
    pub connected_at: SystemTime,
}

/// The room's handle on one connection.
#[derive(Debug, Clone)]
pub struct PeerLink {
    pub tx: mpsc::Sender<Bytes>,
    pub closer: Arc<Closer>,
}

impl PeerLink {
    /// Queues a frame. Returns false (and closes the connection with 1013 if it was merely
    /// slow) when the frame could not be queued.
    pub fn send(&self, frame: Bytes) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("wedsync_slow_consumer_closed_total").increment(1);
                self.closer
                    .close(close::TRY_AGAIN, "client too slow: outgoing queue full, reconnect to resync");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
