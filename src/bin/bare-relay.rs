//! `bare-relay`: the practical ceiling for a y-websocket server on this machine.
//!
//! Rooms by URL path; a client's sync step 1 is answered with an empty step 2, every other
//! frame is forwarded unchanged to the room's other sockets. No CRDT, no store, no auth. The
//! benchmark compares wedsync against it (same generator, same run). Per socket it keeps what
//! a real server keeps: one reader, one writer task with a bounded queue, several queued frames
//! per flush, and a client that cannot keep up is closed (1013) rather than silently skipped.
//!
//! Usage: `bare-relay [LISTEN]` (default 127.0.0.1:1235).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 512;
/// Sync step 2 with the empty update.
const EMPTY_STEP2: [u8; 5] = [0, 1, 2, 0, 0];

/// Per socket: id, outgoing queue, and the "too slow, close" signal.
type Peer = (u64, mpsc::Sender<Bytes>, CancellationToken);
type Peers = RwLock<Vec<Peer>>;

#[derive(Default)]
struct Rooms {
    rooms: Mutex<HashMap<String, Arc<Peers>>>,
}

impl Rooms {
    fn join(&self, name: &str, peer: Peer) -> Arc<Peers> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = rooms.entry(name.to_owned()).or_default().clone();
        room.write().unwrap_or_else(|p| p.into_inner()).push(peer);
        room
    }

    fn leave(&self, name: &str, id: u64) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(room) = rooms.get(name) {
            let mut peers = room.write().unwrap_or_else(|p| p.into_inner());
            peers.retain(|(p, _, _)| *p != id);
            if peers.is_empty() {
                drop(peers);
                rooms.remove(name);
            }
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1235".into());
    let listener = TcpListener::bind(&listen).await?;
    eprintln!("bare-relay listening on {listen}");
    let rooms = Arc::new(Rooms::default());
    let ids = AtomicU64::new(0);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue; // e.g. out of file descriptors: keep serving the others
        };
        let _ = tcp.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(session(tcp, id, rooms.clone()));
    }
}

#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
async fn session(tcp: tokio::net::TcpStream, id: u64, rooms: Arc<Rooms>) {
    let mut path = String::new();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let cb = |req: &Request, resp: Response| {
        path = req.uri().path().trim_start_matches('/').to_owned();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, cb, Some(config)).await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let slow = CancellationToken::new();
    let room = rooms.join(&path, (id, tx.clone(), slow.clone()));
    let writer = tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                biased;
                _ = slow.cancelled() => {
                    let close = CloseFrame { code: CloseCode::Again, reason: "queue full".into() };
                    let _ = sink.send(Message::Close(Some(close))).await;
                    return;
                }
                frame = rx.recv() => match frame { Some(f) => f, None => return },
            };
            if sink.feed(Message::Binary(frame)).await.is_err() {
                return;
            }
            while let Ok(frame) = rx.try_recv() {
                if sink.feed(Message::Binary(frame)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Binary(data) = msg else {
            if msg.is_close() {
                break;
            }
            continue;
        };
        if data.starts_with(&[0, 0]) {
            let _ = tx.try_send(Bytes::from_static(&EMPTY_STEP2));
            continue;
        }
        let peers = room.read().unwrap_or_else(|p| p.into_inner());
        for (peer, ptx, pslow) in peers.iter() {
            if *peer != id {
                if let Err(mpsc::error::TrySendError::Full(_)) = ptx.try_send(data.clone()) {
                    pslow.cancel(); // slow consumer: closed, never silently skipped
                }
            }
        }
    }
    rooms.leave(&path, id);
    drop(tx);
    let _ = writer.await;
}
