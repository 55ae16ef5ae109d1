//! The room task: owns one document and its awareness, applies updates in one order, persists
//! them, and fans each one out as a single encoded frame shared by every subscriber.
//!
//! One iteration of the loop takes every command already queued (up to a bound), then commits
//! the batch: append the updates to the store, apply them, wait for the shared group-commit
//! flush (strict durability), and only then deliver replies, relays and acks. A client
//! therefore never sees state that a crash could take back. Awareness is not persisted and is
//! relayed at once.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info_span, warn, Instrument};
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{Awareness, AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{ClientID, Doc, ReadTxn, StateVector, Transact};

use super::{
    sleep_until_opt, ConnId, Incoming, PeerInfo, PeerLink, PresenceEntry, Registry, RoomCmd,
    RoomContext, RoomError, WriteJob,
};
mod clustered;

use crate::config::Durability;
use crate::protocol::{self, close};
use crate::store::{StoreError, StoredDoc};

/// Commands taken from the queue before one commit (bounds the latency of a batch).
const MAX_BATCH: usize = 256;
/// Awareness client ids one connection may control (a browser tab uses one).
const MAX_AWARENESS_IDS_PER_CONN: usize = 32;
/// Distinct awareness client ids a room tracks over its life (each costs a little memory
/// until the room unloads).
const MAX_AWARENESS_IDS_PER_ROOM: usize = 10_000;
/// Fold the log into a new snapshot once it holds this many entries or bytes.
const COMPACT_LOG_ENTRIES: u64 = 500;
const COMPACT_LOG_BYTES: u64 = 4 * 1024 * 1024;
/// Delay between a document change and republishing the conflict list.
const CONFLICTS_DEBOUNCE: Duration = Duration::from_millis(250);

struct Peer {
    info: PeerInfo,
    link: PeerLink,
    /// Update messages from this connection that are stored.
    stored_updates: u64,
    /// Stored count last sent in an ack.
    acked: u64,
    awareness_ids: HashSet<ClientID>,
    /// An update of this connection was refused by the document size quota: its later updates
    /// are refused too (they may depend on the refused one, and acks must stay a prefix).
    over_quota: bool,
    /// The room refused one of this connection's updates (not stored, or not applicable) and
    /// closed it: its frames still queued are dropped, as they may build on the refused one.
    refused: bool,
}

enum Origin {
    Conn(ConnId),
    Http(oneshot::Sender<Result<(), RoomError>>),
}

struct PendingUpdate {
    origin: Origin,
    raw: Vec<u8>,
    decoded: yrs::Update,
}

/// Splits a commit's updates, in order, into runs of at most `max_bytes` in all (a run always
/// holds at least one update, however large).
fn split_by_size(
    run: Vec<(Option<ConnId>, Vec<u8>)>,
    max_bytes: usize,
) -> Vec<Vec<(Option<ConnId>, Vec<u8>)>> {
    let mut out: Vec<Vec<(Option<ConnId>, Vec<u8>)>> = Vec::new();
    let mut size = 0;
    for item in run {
        match out.last_mut() {
            Some(last) if size + item.1.len() <= max_bytes => {
                size += item.1.len();
                last.push(item);
            }
            _ => {
                size = item.1.len();
                out.push(vec![item]);
            }
        }
    }
    out
}

/// A commit merges its updates into one frame per subscriber only up to this many writing
/// connections (one merge per writer; see [`Room::broadcast_run`]).
const MAX_WRITERS_MERGED: usize = 8;

/// Things to deliver after the batch is committed, in order.
enum Post {
    Step2 {
        conn: ConnId,
        sv: StateVector,
    },
    Broadcast {
        origin: Option<ConnId>,
        update: Vec<u8>,
    },
    GetUpdate {
        sv: StateVector,
        reply: oneshot::Sender<Result<Vec<u8>, RoomError>>,
    },
}

struct Room {
    name: String,
    awareness: Awareness,
    /// Origin of the awareness clock.
    created: Instant,
    peers: HashMap<ConnId, Peer>,
    /// Which connection controls which awareness client id.
    owners: HashMap<ClientID, ConnId>,
    /// Which user (token `sub`) first used each awareness client id.
    id_users: HashMap<ClientID, String>,
    ctx: RoomContext,
    log_entries: u64,
    log_bytes: u64,
    /// Size of the stored snapshot; with `log_bytes`, the document's stored size (the quota).
    snapshot_bytes: u64,
    last_seq: u64,
    batch: Vec<PendingUpdate>,
    writes: Vec<(WriteJob, oneshot::Sender<Result<(), RoomError>>)>,
    post: Vec<Post>,
    /// The document changed since conflicts were last published.
    conflicts_dirty: bool,
    /// The conflict list last published in the server's awareness state.
    published_conflicts: Option<String>,
    http_done: Vec<oneshot::Sender<Result<(), RoomError>>>,
    /// Some connection with `?ack=1` has a stored count it was not told yet.
    acks_due: bool,
    /// yrs panicked on this document: finish the batch, then unload and reload from disk.
    poisoned: Option<String>,
    /// The document was loaded from the store (so a later failure may retry with a reload).
    loaded: bool,
    /// Set when the store failed under us: the room refuses everyone and unloads.
    failed: Option<String>,
    /// Cluster mode: the room's part of the shared log (see [`clustered`]).
    cluster: Option<clustered::ClusterRoom>,
    /// Cluster mode: a re-join was asked for; it runs before the next commit.
    rejoin_due: bool,
}

/// Entry point of a room task.
pub(super) async fn run(
    name: String,
    generation: u64,
    rx: mpsc::Receiver<RoomCmd>,
    me: mpsc::WeakSender<RoomCmd>,
    ctx: RoomContext,
    registry: Weak<Registry>,
) {
    let span = info_span!("room", doc = %name);
    // Cluster mode: the node's table knows the room while its task runs (detached on every
    // way out, by the guard).
    let _attached = ctx
        .cluster
        .as_ref()
        .map(|c| clustered::Attached::new(c.clone(), &name, generation, me.clone()));
    run_inner(name, generation, rx, me, ctx, registry)
        .instrument(span)
        .await
}

async fn run_inner(
    name: String,
    generation: u64,
    mut rx: mpsc::Receiver<RoomCmd>,
    me: mpsc::WeakSender<RoomCmd>,
    ctx: RoomContext,
    registry: Weak<Registry>,
) {
    let started = Instant::now();
    let loaded = load(&name, &ctx).await;
    let mut room = Room::new(name.clone(), ctx.clone());
    if let Some(cluster) = &ctx.cluster {
        room.cluster = Some(clustered::ClusterRoom::new(
            cluster.clone(),
            &name,
            generation,
            me,
        ));
    }
    match loaded {
        Ok(stored) => {
            room.restore(stored);
            room.loaded = true;
            if room.cluster.is_some() {
                room.adopt_outbox();
                room.join_cluster().await;
            }
            debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "room loaded"
            );
        }
        Err(reason) => {
            error!(%reason, "document could not be loaded; refusing its clients");
            room.failed = Some(reason);
        }
    }

    let limits = ctx.limits.clone();
    let sweep_every = (limits.awareness_timeout / 10).max(Duration::from_millis(100));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_since = Some(Instant::now());
    // Conflicts are recomputed (whole-document read) at most once per debounce window.
    let mut conflicts_at: Option<Instant> = Some(Instant::now());

    loop {
        if room.failed.is_some() {
            // Refuse whatever is queued, then leave the registry so a later request reloads.
            if let Some(reg) = registry.upgrade() {
                reg.remove_if(&name, generation, || true);
            }
            // After a failed load, joins that raced are refused with the reason; after a
            // failure of a loaded room they retry, which reloads the document from disk.
            let joins = if room.loaded {
                RoomError::Closed
            } else {
                RoomError::Unavailable(room.failed.clone().unwrap_or_default())
            };
            room.close_queue(&mut rx, joins);
            return;
        }
        let idle_deadline = idle_since.map(|t| t + limits.room_idle_unload);
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                while let Ok(cmd) = rx.try_recv() {
                    room.handle(cmd);
                }
                room.commit().await;
                room.close_all(close::GOING_AWAY, "server shutting down");
                room.compact_before_unload().await;
                if let Err(e) = ctx.flusher.flush().await {
                    error!(error = %e, "final flush failed");
                }
                room.close_queue(&mut rx, RoomError::Closed);
                debug!("room stopped");
                return;
            }
            _ = sweep.tick() => room.sweep_awareness(),
            _ = sleep_until_opt(conflicts_at) => {
                room.publish_conflicts();
                conflicts_at = None;
            }
            _ = sleep_until_opt(idle_deadline) => {
                if room.holds_unsent_outbox() {
                    // Cluster mode, Redis unreachable: stay until the outbox reached Redis.
                    idle_since = Some(Instant::now());
                    continue;
                }
                room.compact_before_unload().await;
                if let Err(e) = ctx.flusher.flush().await {
                    warn!(error = %e, "flush before unload failed; staying loaded");
                    idle_since = Some(Instant::now());
                    continue;
                }
                let Some(reg) = registry.upgrade() else { return };
                if reg.remove_if(&name, generation, || rx.is_empty()) {
                    room.close_queue(&mut rx, RoomError::Closed);
                    debug!("idle room unloaded");
                    return;
                }
                idle_since = Some(Instant::now());
            }
            // Last in the biased order: timers (sweep, conflicts, unload) must not starve
            // behind a room that always has commands queued.
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                room.handle(cmd);
                let mut n = 1;
                while n < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(cmd) => { room.handle(cmd); n += 1; }
                        Err(_) => break,
                    }
                }
                if std::mem::take(&mut room.rejoin_due) {
                    room.join_cluster().await;
                }
                room.commit().await;
                idle_since = if room.peers.is_empty() { idle_since.or(Some(Instant::now())) } else { None };
                if room.conflicts_dirty && conflicts_at.is_none() {
                    conflicts_at = Some(Instant::now() + CONFLICTS_DEBOUNCE);
                }
            }
        }
    }
}

async fn load(name: &str, ctx: &crate::room::RoomContext) -> Result<StoredDoc, String> {
    let store = ctx.store.clone();
    let doc = name.to_owned();
    let job = tokio::task::spawn_blocking(move || store.load(&doc));
    match tokio::time::timeout(ctx.limits.load_timeout, job).await {
        Err(_) => Err(format!(
            "loading took longer than {:?}",
            ctx.limits.load_timeout
        )),
        Ok(Err(join)) => Err(format!("load task failed: {join}")),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Ok(Ok(stored))) => Ok(stored),
    }
}

/// Merges updates the room has applied (so they decode), with a yrs panic contained like every
/// other yrs call on client-derived data: an error makes the caller relay them one by one.
fn merge(updates: &[&[u8]]) -> Result<Vec<u8>, String> {
    guarded("merging updates", || yrs::merge_updates_v1(updates))?.map_err(|e| e.to_string())
}

/// Runs yrs code that client bytes can reach, containing a panic (yrs 0.28 has inputs that
/// panic while merging pending structs). The caller decides what a panic means for the room.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        error!(what, panic = %msg, "yrs panicked; contained");
        format!("{what} failed inside yrs: {msg}")
    })
}

impl Room {
    fn new(name: String, ctx: RoomContext) -> Room {
        // Awareness timestamps come from tokio's clock so paused-time tests can expire them.
        let origin = Instant::now();
        let clock = move || origin.elapsed().as_millis() as u64;
        Room {
            name,
            awareness: Awareness::with_clock(Doc::new(), clock),
            created: origin,
            peers: HashMap::new(),
            owners: HashMap::new(),
            id_users: HashMap::new(),
            ctx,
            log_entries: 0,
            log_bytes: 0,
            snapshot_bytes: 0,
            last_seq: 0,
            batch: Vec::new(),
            writes: Vec::new(),
            post: Vec::new(),
            conflicts_dirty: true,
            published_conflicts: None,
            http_done: Vec::new(),
            acks_due: false,
            poisoned: None,
            loaded: false,
            failed: None,
            cluster: None,
            rejoin_due: false,
        }
    }

    /// Rebuilds the document from its snapshot and log.
    fn restore(&mut self, stored: StoredDoc) {
        let doc = self.awareness.doc();
        for (i, bytes) in stored
            .snapshot
            .iter()
            .chain(stored.updates.iter())
            .enumerate()
        {
            // Every record passed its checksum in the store; an update that still fails here
            // failed the same way when it was first applied, so skipping it reproduces the
            // state clients saw. One that makes yrs panic is skipped, never fatal to the room.
            let applied = guarded(
                "restoring a stored update",
                || match yrs::Update::decode_v1(bytes) {
                    Ok(u) => doc
                        .transact_mut()
                        .apply_update(u)
                        .map_err(|e| format!("did not apply: {e}")),
                    Err(e) => Err(format!("did not decode: {e}")),
                },
            );
            match applied {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(record = i, error = %e, "stored update skipped"),
                Err(e) => error!(record = i, error = %e, "stored update skipped"),
            }
        }
        self.log_entries = stored.updates.len() as u64;
        self.log_bytes = stored.updates.iter().map(|u| u.len() as u64).sum();
        self.snapshot_bytes = stored.snapshot.as_ref().map_or(0, |s| s.len() as u64);
        self.last_seq = stored.last_seq;
    }

    fn own_client_id(&self) -> ClientID {
        self.awareness.client_id()
    }

    fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join {
                conn,
                info,
                link,
                reply,
            } => {
                if let Some(reason) = &self.failed {
                    let _ = reply.send(Err(RoomError::Unavailable(reason.clone())));
                    return;
                }
                let sv = self.awareness.doc().transact().state_vector();
                link.send(protocol::encode(&Message::Sync(SyncMessage::SyncStep1(sv))));
                if let Some(frame) = self.full_awareness() {
                    link.send(frame);
                }
                debug!(conn, user = %info.user, can_edit = info.can_edit, "joined");
                self.peers.insert(
                    conn,
                    Peer {
                        info,
                        link,
                        stored_updates: 0,
                        acked: 0,
                        awareness_ids: HashSet::new(),
                        over_quota: false,
                        refused: false,
                    },
                );
                metrics::gauge!("wedsync_room_peers").increment(1.0);
                let _ = reply.send(Ok(()));
            }
            RoomCmd::Frame {
                conn,
                msgs,
                budget: _budget,
            } => {
                for msg in msgs {
                    let Some(peer) = self.peers.get(&conn) else {
                        return;
                    };
                    // A closing connection's frames were read while it was open: they are
                    // applied (a client's last edit before it closes or drops the socket, the
                    // frames before the one over the rate limit). Not when the close withdrew
                    // the right to edit, or the room refused this connection's data.
                    if peer.refused || peer.link.outbox.is_closed_for(close::UNAUTHORIZED) {
                        return;
                    }
                    // Nothing is sent to a closing connection: its requests for data (a
                    // step 1 may cost a whole-document diff) are not answered.
                    let closing = peer.link.outbox.is_closed();
                    match msg {
                        Incoming::SyncStep1(_) | Incoming::AwarenessQuery if closing => {}
                        Incoming::SyncStep1(sv) => self.post.push(Post::Step2 { conn, sv }),
                        Incoming::Update { raw, decoded } => {
                            if peer.info.can_edit {
                                self.batch.push(PendingUpdate {
                                    origin: Origin::Conn(conn),
                                    raw,
                                    decoded,
                                });
                            }
                        }
                        Incoming::Awareness(update) => self.apply_awareness(conn, update),
                        Incoming::AwarenessQuery => {
                            if let Some(frame) = self.full_awareness() {
                                peer.link.send(frame);
                            }
                        }
                    }
                }
            }
            RoomCmd::Leave { conn } => {
                if let Some(peer) = self.peers.remove(&conn) {
                    metrics::gauge!("wedsync_room_peers").decrement(1.0);
                    debug!(conn, "left");
                    let ids: Vec<ClientID> = peer.awareness_ids.into_iter().collect();
                    for id in &ids {
                        if self.owners.get(id) == Some(&conn) {
                            self.owners.remove(id);
                        }
                    }
                    self.remove_awareness_states(&ids);
                }
            }
            RoomCmd::GetUpdate { sv, reply } => {
                if let Some(reason) = &self.failed {
                    let _ = reply.send(Err(RoomError::Unavailable(reason.clone())));
                } else {
                    self.post.push(Post::GetUpdate { sv, reply });
                }
            }
            RoomCmd::ApplyUpdate {
                raw,
                decoded,
                reply,
            } => {
                if let Some(reason) = &self.failed {
                    let _ = reply.send(Err(RoomError::Unavailable(reason.clone())));
                } else {
                    self.batch.push(PendingUpdate {
                        origin: Origin::Http(reply),
                        raw,
                        decoded,
                    });
                }
            }
            RoomCmd::Presence { reply } => {
                let _ = reply.send(self.presence());
            }
            RoomCmd::Read { job } => {
                // A failed room's document is empty (load failed) or may hold what the store
                // lost: drop the job, so the reader gets `Closed` instead of a wrong answer.
                if self.failed.is_some() {
                    return;
                }
                // The in-memory document only ever holds stored, flushed state between
                // commits, so a read here sees exactly what clients may see.
                job(self.awareness.doc());
            }
            RoomCmd::Write { job, done } => {
                if let Some(reason) = &self.failed {
                    let _ = done.send(Err(RoomError::Unavailable(reason.clone())));
                } else {
                    self.writes.push((job, done));
                }
            }
            RoomCmd::Remote(batch) => self.apply_remote(batch),
            RoomCmd::Rejoin => self.rejoin_due = true,
        }
    }

    /// Stores, applies, flushes and delivers everything gathered since the last commit.
    async fn commit(&mut self) {
        if self.batch.is_empty() && self.post.is_empty() && self.writes.is_empty() {
            // e.g. only empty step 2s: nothing to store, their acks are due at once
            self.send_acks();
            return;
        }
        let mut appended = self.store_and_apply().await;
        appended |= self.run_writes().await;
        if appended && self.ctx.durability == Durability::Strict && !self.flush().await {
            return;
        }
        self.deliver();
        if appended && self.ctx.durability == Durability::Relaxed && !self.flush().await {
            return;
        }
        self.send_acks();
        if let Some(e) = self.poisoned.take() {
            self.failed = Some(e);
            self.close_all(
                close::INTERNAL,
                "document reloading after an internal error; reconnect",
            );
            return;
        }
        self.compact(false).await;
    }

    /// Appends the batch to the store and applies what was stored. Returns whether anything
    /// was appended (and so needs the flush). Empty updates (`[0, 0]`, every client's step 2
    /// when it has nothing new) are not stored but are counted for acks in their place.
    async fn store_and_apply(&mut self) -> bool {
        if self.batch.is_empty() {
            return false;
        }
        let mut batch = self.enforce_quota().await;
        if batch.is_empty() {
            return false;
        }
        let raws: Vec<Vec<u8>> = batch
            .iter_mut()
            .filter(|p| p.raw.as_slice() != [0, 0])
            .map(|p| std::mem::take(&mut p.raw))
            .collect();
        let stored_count = raws.len() as u64;
        let bytes: u64 = raws.iter().map(|r| r.len() as u64).sum();
        let res = if raws.is_empty() {
            Ok(false)
        } else {
            self.persist(raws).await
        };
        let local = match res {
            Ok(local) => local,
            Err(e) => {
                let code = if matches!(e, StoreError::Full(_)) {
                    close::TRY_AGAIN
                } else {
                    close::INTERNAL
                };
                error!(error = %e, updates = batch.len(), "updates not stored; refusing their writers");
                for p in batch {
                    match p.origin {
                        Origin::Conn(c) => {
                            if let Some(peer) = self.peers.get_mut(&c) {
                                peer.refused = true;
                                peer.link
                                    .outbox
                                    .close(code, format!("update not stored: {e}"));
                            }
                        }
                        Origin::Http(reply) => {
                            let _ = reply.send(Err(RoomError::NotStored(e.to_string())));
                        }
                    }
                }
                return false;
            }
        };
        let _ = bytes;
        metrics::counter!("wedsync_updates_stored_total").increment(stored_count);

        let mut panicked = None;
        for p in batch {
            let doc = self.awareness.doc();
            let result = guarded("applying an update", || {
                let mut txn = doc.transact_mut();
                match txn.apply_update(p.decoded) {
                    Ok(()) => {
                        let changed =
                            txn.before_state() != txn.after_state() || !txn.delete_set().is_empty();
                        Ok(changed.then(|| txn.encode_update_v1()))
                    }
                    Err(e) => Err(e.to_string()),
                }
            })
            .unwrap_or_else(|e| {
                panicked = Some(e.clone());
                Err(e)
            });
            match (p.origin, result) {
                (Origin::Conn(c), Ok(effective)) => {
                    if let Some(peer) = self.peers.get_mut(&c) {
                        peer.stored_updates += 1;
                        self.acks_due |= peer.info.ack;
                    }
                    if let Some(update) = effective {
                        self.post.push(Post::Broadcast {
                            origin: Some(c),
                            update,
                        });
                    }
                }
                (Origin::Http(reply), Ok(effective)) => {
                    if let Some(update) = effective {
                        self.post.push(Post::Broadcast {
                            origin: None,
                            update,
                        });
                    }
                    self.http_done.push(reply);
                }
                (Origin::Conn(c), Err(e)) => {
                    warn!(conn = c, error = %e, "update could not be applied");
                    if let Some(peer) = self.peers.get_mut(&c) {
                        peer.refused = true;
                        peer.link
                            .outbox
                            .close(close::INVALID_PAYLOAD, format!("invalid update: {e}"));
                    }
                }
                (Origin::Http(reply), Err(e)) => {
                    let _ = reply.send(Err(RoomError::InvalidUpdate(e)));
                }
            }
        }
        if let Some(e) = panicked {
            // The in-memory document may be inconsistent: after this batch is flushed and
            // answered, the room unloads and the next client reloads it from the store
            // (whose replay skips what panics).
            self.poisoned = Some(e);
        }
        local
    }

    /// Takes the batch and removes the updates that would push the document over
    /// `max_doc_bytes`. The rule: an update is refused when the stored size (snapshot + log,
    /// raw bytes) plus the update's size exceeds the quota. The log overestimates the encoded
    /// state (updates overlap, deletions shrink it), so before refusing, a room with a log
    /// compacts once to measure exactly. A refused update is never stored or applied; its
    /// connection is told with an auth "permission denied" message and its later updates are
    /// refused too; an HTTP request gets `QuotaExceeded`.
    async fn enforce_quota(&mut self) -> Vec<PendingUpdate> {
        let max = self.ctx.limits.max_doc_bytes;
        let mut batch = std::mem::take(&mut self.batch);
        let incoming: u64 = batch.iter().map(|p| p.raw.len() as u64).sum();
        if self.snapshot_bytes + self.log_bytes + incoming > max && self.log_entries > 0 {
            self.compact(true).await;
        }
        let mut size = self.snapshot_bytes + self.log_bytes;
        let mut kept = Vec::with_capacity(batch.len());
        for p in batch.drain(..) {
            let len = p.raw.len() as u64;
            let peer = match &p.origin {
                Origin::Conn(c) => self.peers.get_mut(c),
                Origin::Http(_) => None,
            };
            if peer.as_ref().is_some_and(|peer| peer.over_quota) {
                metrics::counter!("wedsync_quota_refused_updates_total").increment(1);
                continue;
            }
            if size + len <= max {
                size += len;
                kept.push(p);
                continue;
            }
            metrics::counter!("wedsync_quota_refused_updates_total").increment(1);
            let reason = format!(
                "permission denied: document size quota exceeded ({size} of {max} bytes stored, update of {len} bytes refused)"
            );
            warn!(
                stored = size,
                max,
                update = len,
                "update refused: document size quota"
            );
            match p.origin {
                Origin::Conn(_) => {
                    if let Some(peer) = peer {
                        peer.over_quota = true;
                        peer.link.send(protocol::encode_permission_denied(&reason));
                    }
                }
                Origin::Http(reply) => {
                    let _ = reply.send(Err(RoomError::QuotaExceeded(reason)));
                }
            }
        }
        kept
    }

    /// Runs queued server-side edits, each in its own transaction, and stores their updates.
    /// An edit is applied before it is stored (it is generated here, not received), so a
    /// store failure fails the room: it unloads and reloads the stored truth.
    async fn run_writes(&mut self) -> bool {
        let mut appended = false;
        for (job, done) in std::mem::take(&mut self.writes) {
            if self.failed.is_some() {
                let _ = done.send(Err(RoomError::Unavailable("storage failure".into())));
                continue;
            }
            if self.snapshot_bytes + self.log_bytes >= self.ctx.limits.max_doc_bytes {
                let _ = done.send(Err(RoomError::QuotaExceeded(format!(
                    "document size quota exceeded ({} bytes)",
                    self.ctx.limits.max_doc_bytes
                ))));
                continue;
            }
            let update = {
                let mut txn = self.awareness.doc().transact_mut();
                job(&mut txn);
                let changed =
                    txn.before_state() != txn.after_state() || !txn.delete_set().is_empty();
                changed.then(|| txn.encode_update_v1())
            };
            let Some(update) = update else {
                let _ = done.send(Ok(()));
                continue;
            };
            let res = self.persist(vec![update.clone()]).await;
            match res {
                Ok(local) => {
                    appended |= local;
                    self.post.push(Post::Broadcast {
                        origin: None,
                        update,
                    });
                    self.http_done.push(done);
                }
                Err(e) => {
                    error!(error = %e, "server-side edit not stored; unloading the room");
                    let _ = done.send(Err(RoomError::NotStored(e.to_string())));
                    self.failed = Some(format!("store failed: {e}"));
                    self.close_all(close::TRY_AGAIN, "storage failure, reconnect to resync");
                    self.post.clear();
                }
            }
        }
        appended
    }

    /// Stores updates where this room keeps them: in single-node mode the local log; in
    /// cluster mode the room's Redis stream, or while Redis is unreachable the local log as
    /// the outbox. Returns whether the local log was written (so a flush is needed).
    async fn persist(&mut self, raws: Vec<Vec<u8>>) -> Result<bool, StoreError> {
        let count = raws.len() as u64;
        let bytes: u64 = raws.iter().map(|r| r.len() as u64).sum();
        if self.cluster.is_some() {
            return self.persist_clustered(raws, count, bytes).await;
        }
        let seq = self.append_local(raws).await?;
        self.last_seq = seq;
        self.log_entries += count;
        self.log_bytes += bytes;
        Ok(true)
    }

    /// Appends updates to this node's store on the store thread and returns the sequence
    /// number of the last one. In strict mode the answer comes only after the group-commit
    /// fsync that covers them (one hand-off for append and fsync, shared with every room
    /// committing at the same time), so a failed fsync fails the append; in relaxed mode it
    /// comes as soon as they are appended (not yet durable: see [`Room::flush`]).
    /// (A plain function returning a future: the future must not borrow the room.)
    fn append_local(
        &self,
        raws: Vec<Vec<u8>>,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send + 'static {
        let durable = self.ctx.durability == Durability::Strict;
        self.ctx.flusher.append(self.name.clone(), raws, durable)
    }

    /// Replaces the local snapshot with `snapshot` (the whole state) and drops the local log
    /// entries it covers (up to `last_seq`), on the blocking pool. Not durable until flushed.
    fn store_snapshot(
        &self,
        snapshot: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let store = self.ctx.store.clone();
        let name = self.name.clone();
        let upto = self.last_seq;
        async move {
            tokio::task::spawn_blocking(move || store.compact(&name, &snapshot, upto))
                .await
                .unwrap_or_else(|e| Err(StoreError::Backend(e.to_string())))
        }
    }

    /// Waits for the group-commit flush. On failure the room gives up its in-memory state
    /// (which may now hold updates the disk does not) and unloads; clients resync on reconnect.
    /// In strict mode every append of the commit was already answered after its fsync
    /// ([`Room::append_local`]): nothing is left to wait for.
    async fn flush(&mut self) -> bool {
        if self.ctx.durability == Durability::Strict {
            return true;
        }
        match self.ctx.flusher.flush().await {
            Ok(()) => true,
            Err(e) => {
                error!(error = %e, "flush failed; closing the room so it reloads from disk");
                self.failed = Some(format!("flush failed: {e}"));
                let code = if matches!(e, StoreError::Full(_)) {
                    close::TRY_AGAIN
                } else {
                    close::INTERNAL
                };
                self.close_all(code, "storage failure, reconnect to resync");
                self.post.clear();
                for reply in self.http_done.drain(..) {
                    let _ = reply.send(Err(RoomError::NotStored(e.to_string())));
                }
                false
            }
        }
    }

    /// The document's state minus what a peer with `sv` has. `None` (and the room marked for a
    /// reload) if yrs panics on it.
    fn encode_state(&mut self, sv: &StateVector) -> Option<Vec<u8>> {
        let doc = self.awareness.doc();
        match guarded("encoding the document", || {
            doc.transact().encode_state_as_update_v1(sv)
        }) {
            Ok(update) => Some(update),
            Err(e) => {
                self.poisoned.get_or_insert(e);
                None
            }
        }
    }

    fn deliver(&mut self) {
        let mut posts = std::mem::take(&mut self.post).into_iter().peekable();
        let mut deliveries = 0u64;
        while let Some(post) = posts.next() {
            match post {
                Post::Step2 { conn, sv } => {
                    if !self.peers.contains_key(&conn) {
                        continue;
                    }
                    let Some(update) = self.encode_state(&sv) else {
                        continue;
                    };
                    if let Some(peer) = self.peers.get(&conn) {
                        peer.link
                            .send(protocol::encode(&Message::Sync(SyncMessage::SyncStep2(
                                update,
                            ))));
                    }
                }
                Post::Broadcast { origin, update } => {
                    // Every update of this commit goes out as one merged update per subscriber:
                    // a burst from one origin (an offline phone replaying its edits, a batch of
                    // keystrokes) and the edits of several writers that arrived while the
                    // previous commit was being stored. One frame per subscriber instead of one
                    // per update keeps queues short and saves a socket write per update at
                    // every subscriber (and a Yjs transaction at every client).
                    let mut run = vec![(origin, update)];
                    while let Some(Post::Broadcast { .. }) = posts.peek() {
                        if let Some(Post::Broadcast { origin, update }) = posts.next() {
                            run.push((origin, update));
                        }
                    }
                    // A merged frame stays within the largest message a client may send, so
                    // it never meets the socket's write-buffer cap (src/ws/mod.rs).
                    for chunk in split_by_size(run, self.ctx.limits.max_message_bytes) {
                        deliveries += self.broadcast_run(chunk);
                    }
                }
                Post::GetUpdate { sv, reply } => {
                    let _ =
                        reply.send(self.encode_state(&sv).ok_or_else(|| {
                            RoomError::Unavailable("the document is reloading".into())
                        }));
                }
            }
        }
        if deliveries > 0 {
            metrics::counter!("wedsync_update_deliveries_total").increment(deliveries);
        }
    }

    /// Queues the updates of one commit to every subscriber, merged into one update each,
    /// without the subscriber's own updates: one merge for subscribers that wrote none of them
    /// and one per writing connection (so a writer never gets its own edits back). Merges run
    /// only on what this commit holds anyway; nothing waits for more. If yrs refuses a merge
    /// the updates go out one by one.
    fn broadcast_run(&mut self, run: Vec<(Option<ConnId>, Vec<u8>)>) -> u64 {
        if let [(origin, update)] = run.as_slice() {
            // The common case (one update in the commit): nothing to merge.
            return self.broadcast_update(*origin, update);
        }
        let mut writers: Vec<ConnId> = run.iter().filter_map(|(o, _)| *o).collect();
        writers.sort_unstable();
        writers.dedup();
        let single_origin = run.iter().all(|(o, _)| *o == run[0].0);
        if single_origin || writers.len() > MAX_WRITERS_MERGED {
            // One origin: its updates merged, to everyone else. Past a few writers, one merge
            // per writer, each over the whole commit, grows with writers × updates (45 ms of
            // the room's time for 200 writers, 0.5 s for 500, measured): each writer's
            // consecutive updates go out as one merged update instead.
            return self.broadcast_by_origin(run);
        }
        let merge_without = |skip: Option<ConnId>| {
            let updates: Vec<&[u8]> = run
                .iter()
                .filter(|(o, _)| skip.is_none() || *o != skip)
                .map(|(_, u)| u.as_slice())
                .collect();
            merge(&updates).map(|u| protocol::encode_update(&u))
        };
        let everything = match merge_without(None) {
            Ok(frame) => frame,
            Err(e) => return self.broadcast_each(&run, &e),
        };
        let mut for_writer = HashMap::with_capacity(writers.len());
        for w in writers {
            if !self.peers.contains_key(&w) {
                continue;
            }
            match merge_without(Some(w)) {
                Ok(frame) => {
                    for_writer.insert(w, frame);
                }
                Err(e) => return self.broadcast_each(&run, &e),
            }
        }
        self.conflicts_dirty = true;
        let mut delivered = 0;
        for (id, peer) in &self.peers {
            let frame = for_writer.get(id).unwrap_or(&everything);
            if peer.link.send(frame.clone()) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Each origin's consecutive updates merged, sent to everyone but that origin.
    fn broadcast_by_origin(&mut self, run: Vec<(Option<ConnId>, Vec<u8>)>) -> u64 {
        let mut delivered = 0;
        let mut rest = run.as_slice();
        while let Some((origin, _)) = rest.first() {
            let n = rest.iter().take_while(|(o, _)| o == origin).count();
            let (same, tail) = rest.split_at(n);
            rest = tail;
            if let [(_, update)] = same {
                delivered += self.broadcast_update(*origin, update);
                continue;
            }
            let updates: Vec<&[u8]> = same.iter().map(|(_, u)| u.as_slice()).collect();
            delivered += match merge(&updates) {
                Ok(merged) => self.broadcast_update(*origin, &merged),
                Err(e) => self.broadcast_each(same, &e),
            };
        }
        delivered
    }

    /// The fallback of [`Room::broadcast_run`]: one frame per update.
    fn broadcast_each(&mut self, run: &[(Option<ConnId>, Vec<u8>)], error: &str) -> u64 {
        warn!(
            error,
            "merging a commit's updates failed; relaying them one by one"
        );
        run.iter()
            .map(|(origin, u)| self.broadcast_update(*origin, u))
            .sum()
    }

    /// Encodes an update once and queues the same bytes to every subscriber but its origin.
    fn broadcast_update(&mut self, origin: Option<ConnId>, update: &[u8]) -> u64 {
        self.conflicts_dirty = true;
        let frame = protocol::encode_update(update);
        let mut delivered = 0;
        for (id, peer) in &self.peers {
            if Some(*id) != origin && peer.link.send(frame.clone()) {
                delivered += 1;
            }
        }
        delivered
    }

    fn send_acks(&mut self) {
        if std::mem::take(&mut self.acks_due) {
            self.send_due_acks();
        }
        for reply in self.http_done.drain(..) {
            let _ = reply.send(Ok(()));
        }
    }

    fn send_due_acks(&mut self) {
        for peer in self.peers.values_mut() {
            if peer.info.ack && peer.stored_updates > peer.acked && !peer.link.outbox.is_closed() {
                peer.acked = peer.stored_updates;
                peer.link.send(protocol::encode_ack(peer.stored_updates));
            }
        }
    }

    /// Folds the log into a new snapshot when it grew past the thresholds (or when `force`d
    /// and there is anything to fold).
    async fn compact(&mut self, force: bool) {
        if self.cluster.is_some() {
            return self.compact_clustered(force).await;
        }
        self.compact_local(force).await
    }

    /// Before the room stops: fold the log into the snapshot (single node), or refresh this
    /// node's cached snapshot (cluster mode, joined).
    async fn compact_before_unload(&mut self) {
        if self.cluster.is_some() {
            return self.refresh_cache().await;
        }
        self.compact_local(true).await
    }

    async fn compact_local(&mut self, force: bool) {
        if self.failed.is_some() || self.log_entries == 0 {
            return;
        }
        if !force && self.log_entries < COMPACT_LOG_ENTRIES && self.log_bytes < COMPACT_LOG_BYTES {
            return;
        }
        let Some(snapshot) = self.encode_state(&StateVector::default()) else {
            return;
        };
        let snapshot_bytes = snapshot.len() as u64;
        match self.store_snapshot(snapshot).await {
            Ok(()) => {
                debug!(
                    entries = self.log_entries,
                    bytes = self.log_bytes,
                    "compacted"
                );
                metrics::counter!("wedsync_compactions_total").increment(1);
                self.log_entries = 0;
                self.log_bytes = 0;
                self.snapshot_bytes = snapshot_bytes;
            }
            // The log and old snapshot are intact; try again later.
            Err(e) => warn!(error = %e, "compaction failed"),
        }
    }

    fn full_awareness(&self) -> Option<Bytes> {
        let update = self.awareness.update().ok()?;
        if update.clients.is_empty() {
            return None;
        }
        Some(protocol::encode(&Message::Awareness(update)))
    }

    fn broadcast_awareness(&self, except: Option<ConnId>, update: AwarenessUpdate) {
        let frame = protocol::encode(&Message::Awareness(update));
        for (id, peer) in &self.peers {
            if Some(*id) != except {
                peer.link.send(frame.clone());
            }
        }
    }

    fn apply_awareness(&mut self, conn: ConnId, update: AwarenessUpdate) {
        let own = self.own_client_id();
        let mut accepted = AwarenessUpdate {
            clients: HashMap::with_capacity(update.clients.len()),
        };
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        for (id, entry) in update.clients {
            if id == own {
                continue;
            }
            let is_null = entry.json.as_ref() == "null";
            match self.owners.get(&id).copied() {
                Some(owner) if owner != conn => {
                    debug!(
                        conn,
                        client = id.get(),
                        "awareness for another connection's client id; ignored"
                    );
                    continue;
                }
                Some(_) => {
                    if is_null {
                        peer.awareness_ids.remove(&id);
                        self.owners.remove(&id);
                    }
                }
                None => {
                    // Only a state's owner may remove it, and an id once used by one user is
                    // never taken over by another (a client coming back keeps its identity).
                    if is_null {
                        continue;
                    }
                    match self.id_users.get(&id) {
                        Some(user) if *user != peer.info.user => {
                            debug!(
                                conn,
                                client = id.get(),
                                "client id used by another user; ignored"
                            );
                            continue;
                        }
                        None if self.id_users.len() >= MAX_AWARENESS_IDS_PER_ROOM => {
                            debug!(conn, "room has too many awareness ids; ignored");
                            continue;
                        }
                        _ => {}
                    }
                    if peer.awareness_ids.len() >= MAX_AWARENESS_IDS_PER_CONN {
                        debug!(conn, "too many awareness ids for one connection; ignored");
                        continue;
                    }
                    // Claim the id only if the state will actually apply (a newer clock).
                    if let Some((known, _)) = self.awareness.meta(id) {
                        if entry.clock <= known {
                            continue;
                        }
                    }
                    peer.awareness_ids.insert(id);
                    self.owners.insert(id, conn);
                    self.id_users.insert(id, peer.info.user.clone());
                }
            }
            accepted.clients.insert(id, entry);
        }
        self.relay_awareness(accepted, Some(conn), true);
    }

    /// Applies accepted awareness entries and relays what changed to every local client but
    /// `except`; with `publish`, also to the other nodes (cluster mode: changes of this node's
    /// own clients).
    fn relay_awareness(
        &mut self,
        accepted: AwarenessUpdate,
        except: Option<ConnId>,
        publish: bool,
    ) {
        if accepted.clients.is_empty() {
            return;
        }
        match self.awareness.apply_update_summary(accepted) {
            Ok(Some(summary)) => {
                let changed = summary.all_changes();
                if let Ok(update) = self.awareness.update_with_clients(changed) {
                    if publish {
                        self.publish_awareness(&update);
                    }
                    self.broadcast_awareness(except, update);
                }
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, "awareness update not applied"),
        }
    }

    /// Removes awareness states the way y-protocols does: a null state at the *same* clock, so
    /// a client that is in fact alive reappears with its next renewal.
    fn remove_awareness_states(&mut self, ids: &[ClientID]) {
        let mut update = AwarenessUpdate {
            clients: HashMap::new(),
        };
        for (id, state) in self.awareness.iter() {
            if state.data.is_some() && ids.contains(&id) {
                update.clients.insert(
                    id,
                    AwarenessUpdateEntry {
                        clock: state.clock,
                        json: "null".into(),
                    },
                );
            }
        }
        if update.clients.is_empty() {
            return;
        }
        if let Err(e) = self.awareness.apply_update(update.clone()) {
            debug!(error = %e, "awareness removal failed");
            return;
        }
        self.publish_awareness(&update);
        self.broadcast_awareness(None, update);
    }

    /// Publishes the plan's conflict list in the server's own awareness state when it changed:
    /// `{"server": true, "conflicts": [...]}`. Clients see it with no protocol change.
    fn publish_conflicts(&mut self) {
        if !self.conflicts_dirty || self.failed.is_some() {
            return;
        }
        self.conflicts_dirty = false;
        let conflicts = {
            let txn = self.awareness.doc().transact();
            crate::wedding::conflicts(&txn)
        };
        // A plan that never had a conflict gets no server state: an empty list would be one
        // more awareness entry for every client of every room, renewed every 15 s (10,000
        // frames per 15 s at 10,000 connections) and saying nothing. Once a list was published,
        // its clearing is published too, so clients drop the conflicts they show.
        if conflicts.is_empty() && self.published_conflicts.is_none() {
            return;
        }
        let state = serde_json::json!({"server": true, "conflicts": conflicts});
        let json = state.to_string();
        if self.published_conflicts.as_deref() == Some(json.as_str()) {
            return;
        }
        self.published_conflicts = Some(json.clone());
        self.awareness.set_local_state_raw(json);
        self.broadcast_own_state();
    }

    fn broadcast_own_state(&self) {
        let own = self.own_client_id();
        if let Ok(update) = self.awareness.update_with_clients([own]) {
            self.broadcast_awareness(None, update);
        }
    }

    /// Drops awareness states that were not renewed within the timeout, and renews the
    /// server's own state (clients drop states older than 30 s, as y-protocols does).
    fn sweep_awareness(&mut self) {
        let timeout = self.ctx.limits.awareness_timeout.as_millis() as u64;
        let own = self.own_client_id();
        let now = self.awareness_now();
        if let (Some((_, last)), Some(json)) =
            (self.awareness.meta(own), self.awareness.local_state_raw())
        {
            if now.saturating_sub(last) >= timeout / 2 {
                self.awareness.set_local_state_raw(json);
                self.broadcast_own_state();
            }
        }
        let stale: Vec<ClientID> = self
            .awareness
            .iter()
            .filter(|(id, s)| {
                *id != own && s.data.is_some() && now.saturating_sub(s.last_updated) >= timeout
            })
            .map(|(id, _)| id)
            .collect();
        if stale.is_empty() {
            return;
        }
        debug!(count = stale.len(), "removing stale awareness states");
        for id in &stale {
            if let Some(conn) = self.owners.remove(id) {
                if let Some(peer) = self.peers.get_mut(&conn) {
                    peer.awareness_ids.remove(id);
                }
            }
        }
        // After the removal is relayed: publishing leaves out ids other nodes own.
        self.remove_awareness_states(&stale);
        self.forget_remote(&stale);
    }

    /// The awareness clock: milliseconds since `created` on tokio's clock (see [`Room::new`]).
    fn awareness_now(&self) -> u64 {
        self.created.elapsed().as_millis() as u64
    }

    fn presence(&self) -> Vec<PresenceEntry> {
        let mut out: Vec<PresenceEntry> = self
            .peers
            .values()
            .map(|p| {
                let mut awareness = serde_json::Map::new();
                for id in &p.awareness_ids {
                    if let Some(state) = self.awareness.state::<serde_json::Value>(*id) {
                        awareness.insert(id.get().to_string(), state);
                    }
                }
                PresenceEntry {
                    user: p.info.user.clone(),
                    name: p.info.name.clone(),
                    role: p.info.role.clone(),
                    can_edit: p.info.can_edit,
                    connected_since: p
                        .info
                        .connected_at
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                    awareness,
                    node: self.cluster.as_ref().map(|c| c.node_id().to_owned()),
                }
            })
            .collect();
        self.remote_presence(&mut out);
        out.sort_by(|a, b| (a.connected_since, &a.user).cmp(&(b.connected_since, &b.user)));
        out
    }

    fn close_all(&mut self, code: u16, reason: &str) {
        for peer in self.peers.values() {
            peer.link.outbox.close(code, reason);
        }
    }

    /// Stops accepting commands, takes what is still queued, and refuses every waiting request
    /// (joins that raced with the stop retry on a fresh room).
    fn close_queue(&mut self, rx: &mut mpsc::Receiver<RoomCmd>, joins: RoomError) {
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                // a join that raced with the stop: the registry retries on a fresh room
                RoomCmd::Join { reply, .. } => {
                    let _ = reply.send(Err(joins.clone()));
                }
                other => self.handle(other),
            }
        }
        self.refuse_all();
    }

    /// Answers every waiting request with "closed" (used when the room stops).
    fn refuse_all(&mut self) {
        let reason = self.failed.clone();
        for p in self.batch.drain(..) {
            if let Origin::Http(reply) = p.origin {
                let _ = reply.send(Err(RoomError::Closed));
            }
        }
        for post in self.post.drain(..) {
            if let Post::GetUpdate { reply, .. } = post {
                let _ = reply.send(Err(RoomError::Closed));
            }
        }
        if let Some(reason) = reason {
            for peer in self.peers.values() {
                peer.link
                    .outbox
                    .close(close::INTERNAL, format!("document unavailable: {reason}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_by_size;

    #[test]
    fn merged_runs_stay_within_the_size_cap_and_keep_order() {
        let run = |sizes: &[usize]| -> Vec<(Option<u64>, Vec<u8>)> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, n)| (Some(i as u64), vec![0; *n]))
                .collect()
        };
        let sizes = |chunks: Vec<Vec<(Option<u64>, Vec<u8>)>>| -> Vec<Vec<(u64, usize)>> {
            chunks
                .into_iter()
                .map(|c| c.into_iter().map(|(o, u)| (o.unwrap(), u.len())).collect())
                .collect()
        };
        assert_eq!(
            sizes(split_by_size(run(&[3, 4, 3, 5, 1]), 10)),
            vec![vec![(0, 3), (1, 4), (2, 3)], vec![(3, 5), (4, 1)]]
        );
        // An update larger than the cap travels alone.
        assert_eq!(
            sizes(split_by_size(run(&[2, 30, 2]), 10)),
            vec![vec![(0, 2)], vec![(1, 30)], vec![(2, 2)]]
        );
        assert!(split_by_size(Vec::new(), 10).is_empty());
    }
}
