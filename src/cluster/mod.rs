//! Cluster mode: several wedsync nodes share rooms through Redis.
//!
//! Why it exists: one node is a single point of failure on the wedding day and holds ~20k
//! sockets at most. With `--redis URL --node-id ID`, any number of nodes serve any room behind
//! any load balancer (no sticky routing), and Redis — a real, replicated engine — carries the
//! shared log. Without those flags nothing here runs and wedsync is the single-node server on
//! sled it always was.
//!
//! The model is y-redis: per room a Redis Stream of document updates (each validated by the
//! node that appends it, so a bad client cannot poison the shared log), a capped stream of
//! awareness, a snapshot hash with the stream id it covers, and an epoch key that changes when
//! Redis lost the room's data. See docs/architecture.md ("Cluster mode") for the whole design;
//! in short:
//! - a room opens with one atomic script (snapshot + tail), then one reader task per node
//!   (`XREAD BLOCK` on its own connection, `reader`) continues from where the tail ended and
//!   hands other nodes' entries to the room;
//! - an update is relayed and acked once Redis accepted it (`XADD` returned);
//! - while Redis is unreachable a room keeps serving its node's clients and writes to the
//!   node's sled log instead (the *outbox*, bounded); the health loop notices when Redis is
//!   back (or restarted, or emptied) and every room re-joins: catch up, then append whatever
//!   its document holds that Redis lacks (a CRDT diff, so duplicates are harmless);
//! - compaction runs under a lease, in a script that fences on the lease, only moves the
//!   snapshot forward, trims behind it minus a retention window and appends a `trim` marker;
//!   a reader that lagged past the trim sends its room to re-join.

mod reader;
pub(crate) mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::config::{ClusterSettings, ClusterTuning};
use crate::room::RoomCmd;
use scripts::JoinReply;

pub(crate) use scripts::{Entry, Keys};

/// Errors talking to Redis.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// Redis is unreachable, timed out or refused the command.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered something this version does not understand.
    #[error("{0}")]
    Protocol(String),
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        ClusterError::Unavailable(e.to_string())
    }
}

/// Entries of other nodes for one room, in stream order.
pub(crate) struct RemoteBatch {
    /// Document updates (v1) appended by other nodes.
    pub updates: Vec<Vec<u8>>,
    /// Awareness entries of other nodes.
    pub awareness: Vec<Entry>,
    /// Every update-stream entry up to this id has now been delivered to the room.
    pub cursor: Option<String>,
    /// A compaction marker was read: the stream before this id is gone.
    pub trimmed: bool,
    /// The reader was behind that trim: the room must re-join from the snapshot.
    pub lagged: bool,
}

/// A room's entry in the node's table (health checks and re-joins).
struct RoomEntry {
    generation: u64,
    tx: mpsc::WeakSender<RoomCmd>,
    /// Epoch the room joined under; `None` until joined.
    epoch: Option<String>,
    /// Its key (checked every health tick).
    epoch_key: String,
    /// The room is not joined (Redis was unreachable); it wants a re-join when Redis is up.
    degraded: bool,
}

/// What a reader needs to follow one room.
pub(crate) struct Follow {
    pub doc: String,
    pub generation: u64,
    pub tx: mpsc::WeakSender<RoomCmd>,
    pub updates_from: String,
    pub awareness_from: String,
}

pub(crate) enum ReaderCmd {
    Follow(Follow),
    Forget { doc: String, generation: u64 },
}

/// One awareness change to publish.
struct AwarenessOut {
    key: String,
    update: Vec<u8>,
    presence: String,
}

/// Outcome of a compaction attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compacted {
    /// The snapshot now covers the given id.
    Done,
    /// Another node holds the lease, or a newer snapshot exists.
    Skipped,
}

/// The node's link to Redis, shared by every room.
pub struct Cluster {
    pub(crate) node_id: String,
    /// `node_id` plus a random suffix, written into every entry this process appends: readers
    /// skip their own entries by it (a restarted node is a new instance).
    pub(crate) instance: String,
    pub(crate) tuning: ClusterTuning,
    conn: ConnectionManager,
    join: Script,
    compact: Script,
    release: Script,
    up: AtomicBool,
    outbox_bytes: AtomicI64,
    rooms: Mutex<HashMap<String, RoomEntry>>,
    reader_tx: mpsc::UnboundedSender<ReaderCmd>,
    /// `CLIENT ID` of the reader's connection (-1 while it has none), to unblock its XREAD.
    reader_client: AtomicI64,
    awareness_tx: mpsc::Sender<AwarenessOut>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.instance)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish()
    }
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl Cluster {
    /// Connects (lazily: a Redis that is down at start is retried, the node serves degraded
    /// meanwhile) and starts the reader, the health loop and the awareness publisher.
    pub async fn start(settings: &ClusterSettings) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis::Client::open(settings.redis_url.as_str())
            .map_err(|e| ClusterError::Unavailable(format!("bad redis url: {e}")))?;
        let t = &settings.tuning;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(t.redis_timeout))
            .set_connection_timeout(Some(t.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let (reader_tx, reader_rx) = mpsc::unbounded_channel();
        let (awareness_tx, awareness_rx) = mpsc::channel(4096);
        let cluster = Arc::new(Cluster {
            node_id: settings.node_id.clone(),
            instance: format!("{}:{}", settings.node_id, random_hex(4)),
            tuning: t.clone(),
            conn,
            join: Script::new(scripts::JOIN),
            compact: Script::new(scripts::COMPACT),
            release: Script::new(scripts::RELEASE),
            up: AtomicBool::new(false),
            outbox_bytes: AtomicI64::new(0),
            rooms: Mutex::new(HashMap::new()),
            reader_tx,
            reader_client: AtomicI64::new(-1),
            awareness_tx,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        metrics::gauge!("wedsync_cluster_redis_up").set(0.0);
        metrics::gauge!("wedsync_cluster_outbox_bytes").set(0.0);
        metrics::gauge!("wedsync_cluster_degraded_rooms").set(0.0);
        let span = tracing::info_span!("cluster", node = %cluster.instance);
        cluster
            .tasks
            .spawn(reader::run(cluster.clone(), client, reader_rx).instrument(span.clone()));
        cluster
            .tasks
            .spawn(health_loop(cluster.clone()).instrument(span.clone()));
        cluster
            .tasks
            .spawn(publish_awareness(cluster.clone(), awareness_rx).instrument(span));
        info!(node = %cluster.instance, "cluster mode: sharing rooms through redis");
        Ok(cluster)
    }

    /// Stops the background tasks (after every room stopped).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.unblock_reader();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }

    /// This node's configured id (presence entries carry it).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether the last health check reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomEntry>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_degraded(rooms: &HashMap<String, RoomEntry>) {
        let n = rooms.values().filter(|r| r.degraded).count();
        metrics::gauge!("wedsync_cluster_degraded_rooms").set(n as f64);
    }

    /// A room started on this node (joining now: not degraded unless that join fails, so the
    /// health loop does not ask it to join a second time).
    pub(crate) fn attach(&self, doc: &str, generation: u64, tx: mpsc::WeakSender<RoomCmd>) {
        let mut rooms = self.rooms();
        rooms.insert(
            doc.to_owned(),
            RoomEntry {
                generation,
                tx,
                epoch: None,
                epoch_key: Keys::new(doc).epoch,
                degraded: false,
            },
        );
        Self::count_degraded(&rooms);
    }

    /// A room stopped: forget it here and in the reader.
    pub(crate) fn detach(&self, doc: &str, generation: u64) {
        let mut rooms = self.rooms();
        if rooms.get(doc).is_some_and(|r| r.generation == generation) {
            rooms.remove(doc);
        }
        Self::count_degraded(&rooms);
        drop(rooms);
        let _ = self.reader_tx.send(ReaderCmd::Forget {
            doc: doc.to_owned(),
            generation,
        });
    }

    /// A room joined (or re-joined) under `epoch`: follow its streams from the given ids.
    pub(crate) fn joined(&self, follow: Follow, epoch: String) {
        {
            let mut rooms = self.rooms();
            if let Some(r) = rooms.get_mut(&follow.doc) {
                if r.generation == follow.generation {
                    r.epoch = Some(epoch);
                    r.degraded = false;
                }
            }
            Self::count_degraded(&rooms);
        }
        let _ = self.reader_tx.send(ReaderCmd::Follow(follow));
        self.unblock_reader();
    }

    /// A room could not reach Redis; the health loop re-joins it once Redis answers.
    pub(crate) fn degraded(&self, doc: &str, generation: u64) {
        let mut rooms = self.rooms();
        if let Some(r) = rooms.get_mut(doc) {
            if r.generation == generation {
                r.degraded = true;
            }
        }
        Self::count_degraded(&rooms);
    }

    /// Wakes the reader's blocking XREAD so it picks up a new room at once.
    fn unblock_reader(&self) {
        let id = self.reader_client.load(Ordering::Relaxed);
        if id < 0 {
            return;
        }
        let mut conn = self.conn.clone();
        tokio::spawn(async move {
            let _: Result<i64, _> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(id)
                .query_async(&mut conn)
                .await;
        });
    }

    /// Whether Redis holds anything of the document (its log or its snapshot).
    pub async fn document_exists(&self, doc: &str) -> Result<bool, ClusterError> {
        let keys = Keys::new(doc);
        let mut conn = self.conn.clone();
        let n: i64 = redis::cmd("EXISTS")
            .arg(&keys.updates)
            .arg(&keys.snapshot)
            .query_async(&mut conn)
            .await
            .inspect_err(|e| self.note_error(e))?;
        Ok(n > 0)
    }

    /// Reads the room's snapshot and tail atomically.
    pub(crate) async fn join(&self, keys: &Keys) -> Result<JoinReply, ClusterError> {
        let mut conn = self.conn.clone();
        let value: redis::Value = self
            .join
            .key(&keys.updates)
            .key(&keys.snapshot)
            .key(&keys.epoch)
            .key(&keys.awareness)
            .arg(random_hex(8))
            .invoke_async(&mut conn)
            .await?;
        scripts::join_reply(&value)
    }

    /// Appends validated updates to the room's stream; returns once Redis accepted them all.
    pub(crate) async fn append(
        &self,
        keys: &Keys,
        updates: &[Vec<u8>],
    ) -> Result<(), ClusterError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for u in updates {
            pipe.cmd("XADD")
                .arg(&keys.updates)
                .arg("*")
                .arg("n")
                .arg(&self.instance)
                .arg("u")
                .arg(u.as_slice())
                .ignore();
        }
        let mut conn = self.conn.clone();
        let res: Result<(), redis::RedisError> = pipe.query_async(&mut conn).await;
        match res {
            Ok(()) => Ok(()),
            Err(e) => {
                self.note_error(&e);
                Err(e.into())
            }
        }
    }

    fn note_error(&self, e: &redis::RedisError) {
        if self.up.swap(false, Ordering::Relaxed) {
            warn!(error = %e, "redis unreachable; rooms keep serving this node's clients");
            metrics::gauge!("wedsync_cluster_redis_up").set(0.0);
        }
    }

    /// Compacts the room's stream into `snapshot` (which holds every entry up to `upto`).
    pub(crate) async fn compact(
        &self,
        keys: &Keys,
        snapshot: &[u8],
        upto: &str,
    ) -> Result<Compacted, ClusterError> {
        let token = format!("{}:{}", self.instance, random_hex(8));
        let mut conn = self.conn.clone();
        let lease_ms = (self.tuning.redis_timeout.as_millis() as u64 * 10).max(10_000);
        let got: Option<String> = redis::cmd("SET")
            .arg(&keys.lease)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms)
            .query_async(&mut conn)
            .await?;
        if got.is_none() {
            return Ok(Compacted::Skipped);
        }
        let floor = scripts::retention_floor(upto, self.tuning.retention.as_millis() as u64);
        let outcome: Result<i64, redis::RedisError> = self
            .compact
            .key(&keys.updates)
            .key(&keys.snapshot)
            .key(&keys.lease)
            .arg(&token)
            .arg(snapshot)
            .arg(upto)
            .arg(&floor)
            .arg(&self.instance)
            .invoke_async(&mut conn)
            .await;
        let _: Result<i64, _> = self
            .release
            .key(&keys.lease)
            .arg(&token)
            .invoke_async(&mut conn)
            .await;
        match outcome? {
            2 => Ok(Compacted::Done),
            _ => Ok(Compacted::Skipped),
        }
    }

    /// Publishes an awareness change of this node's clients (best effort, in order: a lost
    /// change is repaired by the client's next renewal).
    pub(crate) fn publish_awareness(&self, keys: &Keys, update: Vec<u8>, presence: String) {
        let out = AwarenessOut {
            key: keys.awareness.clone(),
            update,
            presence,
        };
        if self.awareness_tx.try_send(out).is_err() {
            metrics::counter!("wedsync_cluster_awareness_dropped_total").increment(1);
        }
    }

    /// Reserves outbox space for updates written locally while Redis is unreachable.
    pub(crate) fn outbox_reserve(&self, bytes: u64) -> bool {
        let max = self.tuning.outbox_max_bytes as i64;
        let now = self.outbox_bytes.fetch_add(bytes as i64, Ordering::Relaxed) + bytes as i64;
        if now > max {
            self.outbox_bytes.fetch_sub(bytes as i64, Ordering::Relaxed);
            return false;
        }
        metrics::gauge!("wedsync_cluster_outbox_bytes").set(now as f64);
        true
    }

    /// Counts outbox bytes found in the store at load (always accepted: already written).
    pub(crate) fn outbox_add(&self, bytes: u64) {
        let now = self.outbox_bytes.fetch_add(bytes as i64, Ordering::Relaxed) + bytes as i64;
        metrics::gauge!("wedsync_cluster_outbox_bytes").set(now as f64);
    }

    /// Outbox bytes that reached Redis (or left with their room).
    pub(crate) fn outbox_release(&self, bytes: u64) {
        let now = self.outbox_bytes.fetch_sub(bytes as i64, Ordering::Relaxed) - bytes as i64;
        metrics::gauge!("wedsync_cluster_outbox_bytes").set(now.max(0) as f64);
    }
}

/// Every `health_interval`: is Redis up, is it the same Redis (`run_id`), does every joined
/// room's epoch still stand? Rooms that need it are sent a re-join.
async fn health_loop(cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(cluster.tuning.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut run_id: Option<String> = None;
    loop {
        tokio::select! {
            _ = cluster.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut conn = cluster.conn.clone();
        let info: Result<String, redis::RedisError> = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await;
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                cluster.note_error(&e);
                let mut rooms = cluster.rooms();
                for r in rooms.values_mut() {
                    r.degraded = true;
                }
                Cluster::count_degraded(&rooms);
                continue;
            }
        };
        let id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_owned());
        let restarted = run_id.is_some() && id.is_some() && run_id != id;
        run_id = id;
        if !cluster.up.swap(true, Ordering::Relaxed) {
            info!("redis reachable");
            metrics::gauge!("wedsync_cluster_redis_up").set(1.0);
        }
        // Epochs of joined rooms: a missing or different epoch means Redis lost the room.
        let joined: Vec<(String, String, String)> = cluster
            .rooms()
            .iter()
            .filter_map(|(doc, r)| Some((doc.clone(), r.epoch_key.clone(), r.epoch.clone()?)))
            .collect();
        let mut lost: Vec<String> = Vec::new();
        if !joined.is_empty() {
            let mut pipe = redis::pipe();
            for (_, key, _) in &joined {
                pipe.get(key);
            }
            match pipe.query_async::<Vec<Option<String>>>(&mut conn).await {
                Ok(epochs) => {
                    for ((doc, _, want), got) in joined.iter().zip(epochs) {
                        if got.as_deref() != Some(want.as_str()) {
                            lost.push(doc.clone());
                        }
                    }
                }
                Err(e) => {
                    cluster.note_error(&e);
                    continue;
                }
            }
        }
        let mut rooms = cluster.rooms();
        if restarted {
            warn!("redis restarted; every room re-joins");
        }
        for (doc, r) in rooms.iter_mut() {
            let epoch_lost = lost.contains(doc);
            if epoch_lost {
                warn!(doc = %doc, "redis lost this room's data (epoch changed); re-joining");
            }
            if restarted || epoch_lost {
                r.degraded = true;
            }
            if r.degraded {
                if let Some(tx) = r.tx.upgrade() {
                    // a full queue: the next tick asks again
                    let _ = tx.try_send(RoomCmd::Rejoin);
                }
            }
        }
        Cluster::count_degraded(&rooms);
    }
}

/// Appends this node's awareness changes to the rooms' capped awareness streams, in order.
async fn publish_awareness(cluster: Arc<Cluster>, mut rx: mpsc::Receiver<AwarenessOut>) {
    let mut batch = Vec::with_capacity(64);
    loop {
        batch.clear();
        tokio::select! {
            _ = cluster.shutdown.cancelled() => return,
            n = rx.recv_many(&mut batch, 64) => if n == 0 { return },
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut pipe = redis::pipe();
        for out in &batch {
            pipe.cmd("XADD")
                .arg(&out.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(1000)
                .arg("*")
                .arg("n")
                .arg(&cluster.instance)
                .arg("a")
                .arg(out.update.as_slice())
                .arg("p")
                .arg(&out.presence)
                .arg("t")
                .arg(now)
                .ignore();
        }
        let mut conn = cluster.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            debug!(error = %e, "awareness not published");
        }
    }
}

/// Helpers shared by the reader and the health loop.
impl Cluster {
    fn set_reader_client(&self, id: i64) {
        self.reader_client.store(id, Ordering::Relaxed);
    }
}
