//! Rooms: one task per document, and the registry that finds or starts them.
//!
//! Why it exists: a Yjs document must see its updates in one order, and fan-out should encode
//! each update once. So every document lives in exactly one task (`task`) that owns its `Doc`
//! and `Awareness` — never shared behind a lock with connection tasks — and talks to the rest
//! of the server through a bounded command channel ([`RoomHandle`]). The [`Registry`] maps
//! document names to running rooms, starts a room on first use (the room loads its state before
//! it serves anyone) and forgets it when the room unloads after its last client left.

mod peer;
mod task;

pub use peer::{ConnId, Outbox, PeerInfo, PeerLink, PushError};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use yrs::sync::{AwarenessUpdate, Message};
use yrs::StateVector;

use crate::config::{Config, Durability, Limits};
use crate::store::{Flusher, SharedStore};

/// Sleeps until `deadline`, or forever without one (an optional branch of `select!`).
pub(crate) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Capacity of a room's command channel. Connection readers wait when it is full, which pushes
/// back on the sending clients through TCP instead of buffering without bound.
const ROOM_CHANNEL: usize = 1024;

/// Why a room could not serve a request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RoomError {
    /// The room is unloading or shutting down; retry with a fresh handle.
    #[error("room closed")]
    Closed,
    /// The document could not be loaded (store error, corrupt data, timeout).
    #[error("document unavailable: {0}")]
    Unavailable(String),
    /// The update could not be stored (disk full, store error).
    #[error("update not stored: {0}")]
    NotStored(String),
    /// The update would push the document over its size quota (`max_doc_bytes`).
    #[error("{0}")]
    QuotaExceeded(String),
    /// The update did not decode or could not be applied.
    #[error("invalid update: {0}")]
    InvalidUpdate(String),
}

/// A client message after framing. Updates arrive decoded and validated by the connection, so
/// the room only integrates them.
pub enum Incoming {
    SyncStep1(StateVector),
    Update { raw: Vec<u8>, decoded: yrs::Update },
    Awareness(AwarenessUpdate),
    AwarenessQuery,
}

impl Incoming {
    /// Converts framed messages; `None` for messages the room does not act on (auth).
    pub fn from_message(msg: Message) -> Option<Result<Incoming, (Vec<u8>, String)>> {
        use yrs::sync::SyncMessage;
        match msg {
            Message::Sync(SyncMessage::SyncStep1(sv)) => Some(Ok(Incoming::SyncStep1(sv))),
            Message::Sync(SyncMessage::SyncStep2(raw))
            | Message::Sync(SyncMessage::Update(raw)) => {
                Some(match crate::protocol::decode_update_checked(&raw) {
                    Ok(decoded) => Ok(Incoming::Update { raw, decoded }),
                    Err(e) => Err((raw, e)),
                })
            }
            Message::Awareness(u) => Some(Ok(Incoming::Awareness(u))),
            Message::AwarenessQuery => Some(Ok(Incoming::AwarenessQuery)),
            Message::Auth(_) | Message::Custom(..) => None,
        }
    }
}

/// One person present in a room, for the presence API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PresenceEntry {
    pub user: String,
    pub name: Option<String>,
    pub role: Option<String>,
    pub can_edit: bool,
    /// Unix milliseconds.
    pub connected_since: u64,
    /// Awareness states this connection controls, by client id (parsed JSON).
    pub awareness: serde_json::Map<String, serde_json::Value>,
    /// Cluster mode: the node the person is connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

pub(crate) enum RoomCmd {
    Join {
        conn: ConnId,
        info: PeerInfo,
        link: PeerLink,
        reply: oneshot::Sender<Result<(), RoomError>>,
    },
    Frame {
        conn: ConnId,
        msgs: Vec<Incoming>,
        /// The sender's in-flight byte budget for this frame, returned when the room has
        /// taken the messages (see [`RoomHandle::frame`]).
        budget: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    Leave {
        conn: ConnId,
    },
    /// The document as one update (the diff against `sv`).
    GetUpdate {
        sv: StateVector,
        reply: oneshot::Sender<Result<Vec<u8>, RoomError>>,
    },
    /// Apply an update from HTTP; replies once it is durable and relayed.
    ApplyUpdate {
        raw: Vec<u8>,
        decoded: yrs::Update,
        reply: oneshot::Sender<Result<(), RoomError>>,
    },
    Presence {
        reply: oneshot::Sender<Vec<PresenceEntry>>,
    },
    /// Run a read-only job on the document (state as durable as clients have seen it).
    Read {
        job: ReadJob,
    },
    /// Run a server-side edit; its update is stored and relayed like a client's. `done`
    /// answers once it is durable.
    Write {
        job: WriteJob,
        done: oneshot::Sender<Result<(), RoomError>>,
    },
    /// Cluster mode: entries other nodes appended (from the node's stream reader).
    Remote(crate::cluster::RemoteBatch),
    /// Cluster mode: (re-)join the shared log (Redis is back, lost data, or we lagged).
    Rejoin,
}

/// A read job run inside the room task.
pub(crate) type ReadJob = Box<dyn FnOnce(&yrs::Doc) + Send>;
/// A write job run inside the room task, in its own transaction.
pub(crate) type WriteJob = Box<dyn FnOnce(&mut yrs::TransactionMut<'_>) + Send>;

/// A client frame the room's full queue could not take yet (see [`RoomHandle::try_frame`]).
pub struct WaitingFrame {
    room: RoomHandle,
    cmd: RoomCmd,
}

impl WaitingFrame {
    /// Waits for room in the room's queue.
    pub async fn send(self) -> Result<(), RoomError> {
        self.room
            .tx
            .send(self.cmd)
            .await
            .map_err(|_| RoomError::Closed)
    }
}

/// A cheap, cloneable handle to a running room.
#[derive(Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<RoomCmd>,
}

impl RoomHandle {
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> RoomCmd,
    ) -> Result<T, RoomError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| RoomError::Closed)?;
        rx.await.map_err(|_| RoomError::Closed)
    }

    /// Sends a client's messages to the room (waits while the room's queue is full).
    /// `budget` holds the frame's bytes against the connection's in-flight allowance, so one
    /// client cannot park more than that much in the room's queue.
    pub async fn frame(
        &self,
        conn: ConnId,
        msgs: Vec<Incoming>,
        budget: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(), RoomError> {
        self.tx
            .send(RoomCmd::Frame { conn, msgs, budget })
            .await
            .map_err(|_| RoomError::Closed)
    }

    /// Like [`RoomHandle::frame`], without waiting: `Ok(Some(_))` when the room's queue is
    /// full, to be sent with [`WaitingFrame::send`] (the connection reads nothing meanwhile).
    pub fn try_frame(
        &self,
        conn: ConnId,
        msgs: Vec<Incoming>,
        budget: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<Option<WaitingFrame>, RoomError> {
        match self.tx.try_send(RoomCmd::Frame { conn, msgs, budget }) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(cmd)) => Ok(Some(WaitingFrame {
                room: self.clone(),
                cmd,
            })),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(RoomError::Closed),
        }
    }

    /// Tells the room a connection is gone.
    pub async fn leave(&self, conn: ConnId) {
        let _ = self.tx.send(RoomCmd::Leave { conn }).await;
    }

    /// The document as one v1 update, minus what a peer with `sv` has.
    pub async fn get_update(&self, sv: StateVector) -> Result<Vec<u8>, RoomError> {
        self.request(|reply| RoomCmd::GetUpdate { sv, reply })
            .await?
    }

    /// Applies, stores and relays an update; resolves when it is durable.
    pub async fn apply_update(&self, raw: Vec<u8>, decoded: yrs::Update) -> Result<(), RoomError> {
        self.request(|reply| RoomCmd::ApplyUpdate {
            raw,
            decoded,
            reply,
        })
        .await?
    }

    /// Who is connected.
    pub async fn presence(&self) -> Result<Vec<PresenceEntry>, RoomError> {
        self.request(|reply| RoomCmd::Presence { reply }).await
    }

    /// Runs `f` on the document inside the room task and returns its result.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&yrs::Doc) -> T + Send + 'static,
    ) -> Result<T, RoomError> {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |doc| {
            let _ = tx.send(f(doc));
        });
        self.tx
            .send(RoomCmd::Read { job })
            .await
            .map_err(|_| RoomError::Closed)?;
        rx.await.map_err(|_| RoomError::Closed)
    }

    /// Runs a server-side edit in the room's document. The edit's update is stored, flushed and
    /// relayed to every client like any client update; this resolves after that (or with the
    /// closure's result alone when it changed nothing).
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut yrs::TransactionMut<'_>) -> T + Send + 'static,
    ) -> Result<T, RoomError> {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |txn| {
            let _ = tx.send(f(txn));
        });
        self.request(|done| RoomCmd::Write { job, done }).await??;
        rx.await.map_err(|_| RoomError::Closed)
    }
}

/// What every room needs from the server.
#[derive(Clone)]
pub(crate) struct RoomContext {
    pub store: SharedStore,
    pub flusher: Flusher,
    pub limits: Limits,
    pub durability: Durability,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    /// Cluster mode: the node's link to Redis.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

struct Entry {
    handle: RoomHandle,
    generation: u64,
}

/// Document name -> running room.
pub struct Registry {
    rooms: Mutex<HashMap<String, Entry>>,
    ctx: RoomContext,
    next_generation: AtomicU64,
}

impl Registry {
    pub(crate) fn new(
        config: &Config,
        store: SharedStore,
        flusher: Flusher,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            rooms: Mutex::new(HashMap::new()),
            ctx: RoomContext {
                store,
                flusher,
                limits: config.limits.clone(),
                durability: config.durability,
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                cluster,
            },
            next_generation: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned lock means a panic while holding it; the map itself is still consistent
        // (every mutation is a single insert/remove), so keep serving.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running room for `doc`, started (and loading) if there is none.
    pub fn get(self: &Arc<Self>, doc: &str) -> RoomHandle {
        let mut rooms = self.lock();
        if let Some(e) = rooms.get(doc) {
            if !e.handle.tx.is_closed() {
                return e.handle.clone();
            }
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(ROOM_CHANNEL);
        let weak = tx.downgrade();
        let handle = RoomHandle { tx };
        rooms.insert(
            doc.to_owned(),
            Entry {
                handle: handle.clone(),
                generation,
            },
        );
        metrics::gauge!("wedsync_rooms_loaded").set(rooms.len() as f64);
        let registry = Arc::downgrade(self);
        let ctx = self.ctx.clone();
        self.ctx.tracker.spawn(task::run(
            doc.to_owned(),
            generation,
            rx,
            weak,
            ctx,
            registry,
        ));
        handle
    }

    /// Joins a room, retrying if the room was unloading at that moment.
    pub async fn join(
        self: &Arc<Self>,
        doc: &str,
        conn: ConnId,
        info: PeerInfo,
        link: PeerLink,
    ) -> Result<RoomHandle, RoomError> {
        for _ in 0..16 {
            let handle = self.get(doc);
            let (reply, rx) = oneshot::channel();
            let cmd = RoomCmd::Join {
                conn,
                info: info.clone(),
                link: link.clone(),
                reply,
            };
            if handle.tx.send(cmd).await.is_err() {
                continue;
            }
            match rx.await {
                Ok(Ok(())) => return Ok(handle),
                Ok(Err(RoomError::Closed)) | Err(_) => continue,
                Ok(Err(e)) => return Err(e),
            }
        }
        Err(RoomError::Unavailable(
            "room kept closing while joining".into(),
        ))
    }

    /// A room that is loaded right now, without starting one.
    pub fn loaded(&self, doc: &str) -> Option<RoomHandle> {
        self.lock()
            .get(doc)
            .filter(|e| !e.handle.tx.is_closed())
            .map(|e| e.handle.clone())
    }

    /// Cluster mode: the node's link to Redis.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.ctx.cluster.as_ref()
    }

    /// Number of rooms in memory.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the entry for `doc` if it still belongs to the room of `generation`. Called by
    /// the room itself while unloading, under the registry lock, only when its queue is empty.
    fn remove_if(&self, doc: &str, generation: u64, still_idle: impl FnOnce() -> bool) -> bool {
        let mut rooms = self.lock();
        match rooms.get(doc) {
            Some(e) if e.generation == generation => {
                if !still_idle() {
                    return false;
                }
                rooms.remove(doc);
                metrics::gauge!("wedsync_rooms_loaded").set(rooms.len() as f64);
                true
            }
            _ => true,
        }
    }

    /// Stops every room: each flushes and compacts its document, then exits. Returns when all
    /// room tasks have ended.
    pub async fn shutdown(&self) {
        self.ctx.shutdown.cancel();
        self.ctx.tracker.close();
        self.ctx.tracker.wait().await;
    }
}
