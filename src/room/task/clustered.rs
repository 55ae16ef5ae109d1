//! Cluster mode inside a room: joining the shared log in Redis, appending to it (or to this
//! node's outbox while Redis is unreachable), applying what other nodes appended, compacting
//! under a lease, and awareness/presence across nodes. The node-wide parts (connections,
//! reader, health loop) live in [`crate::cluster`].
//!
//! The rule that makes every failure case simple: a node's document is a CRDT state, so
//! whatever it holds that Redis lacks can always be computed (a diff against the state Redis
//! has) and appended again; duplicates merge away. Joining therefore is: read snapshot + tail
//! atomically, merge them in, append our diff if it adds anything, empty the outbox.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};
use yrs::sync::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, ReadTxn, StateVector, Transact};

use super::{guarded, Post, Room};
use crate::cluster::{Cluster, Compacted, Entry, Follow, Keys, RemoteBatch};
use crate::room::{ConnId, PresenceEntry, RoomCmd};
use crate::store::StoreError;

/// Keeps a room in its node's cluster table while the room task runs.
pub(super) struct Attached {
    cluster: Arc<Cluster>,
    doc: String,
    generation: u64,
}

impl Attached {
    pub fn new(
        cluster: Arc<Cluster>,
        doc: &str,
        generation: u64,
        me: mpsc::WeakSender<RoomCmd>,
    ) -> Attached {
        cluster.attach(doc, generation, me);
        Attached {
            cluster,
            doc: doc.to_owned(),
            generation,
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.cluster.detach(&self.doc, self.generation);
    }
}

/// Who controls an awareness client id on another node (from its awareness entries).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct RemoteClient {
    #[serde(default)]
    node: String,
    conn: u64,
    user: String,
    name: Option<String>,
    role: Option<String>,
    can_edit: bool,
    since: u64,
}

/// The room's cluster state.
pub(super) struct ClusterRoom {
    cluster: Arc<Cluster>,
    /// The room's Redis keys (made once, used by every append).
    keys: Arc<Keys>,
    generation: u64,
    me: mpsc::WeakSender<RoomCmd>,
    /// Following the shared log. `false` while Redis is unreachable: updates go to the outbox.
    joined: bool,
    /// Every update-stream entry up to this id is in the document (what a compaction covers).
    cursor: String,
    /// Stream entries/bytes seen since the last compaction attempt (its trigger).
    pending_entries: u64,
    pending_bytes: u64,
    /// Updates in the local log that Redis has not accepted yet.
    outbox_entries: u64,
    outbox_bytes: u64,
    /// Awareness client ids of other nodes' clients.
    remote: HashMap<ClientID, RemoteClient>,
    /// A join succeeded before (later ones count as re-joins).
    joined_once: bool,
}

/// Owner recorded for awareness ids of other nodes (no local connection has this id).
const REMOTE_OWNER: ConnId = ConnId::MAX;

impl ClusterRoom {
    pub fn new(
        cluster: Arc<Cluster>,
        doc: &str,
        generation: u64,
        me: mpsc::WeakSender<RoomCmd>,
    ) -> ClusterRoom {
        ClusterRoom {
            cluster,
            keys: Arc::new(Keys::new(doc)),
            generation,
            me,
            joined: false,
            cursor: "0-0".into(),
            pending_entries: 0,
            pending_bytes: 0,
            outbox_entries: 0,
            outbox_bytes: 0,
            remote: HashMap::new(),
            joined_once: false,
        }
    }

    pub fn node_id(&self) -> &str {
        self.cluster.node_id()
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Applies v1 updates to `doc` in one transaction; returns the transaction's own update if it
/// changed anything.
fn merge_into(doc: &Doc, records: &[&[u8]]) -> Option<Vec<u8>> {
    let mut txn = doc.transact_mut();
    for r in records {
        match yrs::Update::decode_v1(r) {
            Ok(u) => {
                if let Err(e) = txn.apply_update(u) {
                    warn!(error = %e, "shared-log update did not apply; skipped");
                }
            }
            Err(e) => warn!(error = %e, "shared-log update did not decode; skipped"),
        }
    }
    let changed = txn.before_state() != txn.after_state() || !txn.delete_set().is_empty();
    changed.then(|| txn.encode_update_v1())
}

impl Room {
    /// The local log holds updates Redis has not accepted, and Redis is not reachable.
    pub(super) fn holds_unsent_outbox(&self) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| !c.joined && c.outbox_entries > 0)
    }

    /// After the local store was loaded: in cluster mode its log is the outbox.
    pub(super) fn adopt_outbox(&mut self) {
        let (entries, bytes) = (self.log_entries, self.log_bytes);
        if let Some(cs) = self.cluster.as_mut() {
            cs.outbox_entries = entries;
            cs.outbox_bytes = bytes;
            cs.cluster.outbox_add(bytes);
            if entries > 0 {
                info!(entries, bytes, "outbox found in the local store");
            }
        }
        self.log_entries = 0;
        self.log_bytes = 0;
    }

    /// Joins (or re-joins) the shared log: snapshot + tail in, our missing part out, outbox
    /// emptied, reader following from where the tail ended. On failure the room stays (or
    /// becomes) degraded and the health loop asks again later.
    pub(super) async fn join_cluster(&mut self) {
        let Some(cs) = self.cluster.as_ref() else {
            return;
        };
        if self.failed.is_some() {
            return;
        }
        let cluster = cs.cluster.clone();
        let keys = cs.keys.clone();
        let generation = cs.generation;
        let reply = match cluster.join(&keys).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot join the shared log; serving this node's clients from local state");
                self.set_degraded();
                return;
            }
        };
        if let Some(cs) = self.cluster.as_mut() {
            if std::mem::replace(&mut cs.joined_once, true) {
                metrics::counter!("wedsync_cluster_rejoins_total").increment(1);
            }
        }
        let mut records: Vec<&[u8]> = Vec::with_capacity(reply.tail.len() + 1);
        if !reply.snapshot.is_empty() {
            records.push(&reply.snapshot);
        }
        let mut tail_bytes = 0u64;
        for e in &reply.tail {
            if let Some(u) = e.field("u") {
                tail_bytes += u.len() as u64;
                records.push(u);
            }
        }

        let doc = self.awareness.doc().clone();
        // Anything local at all: the cache, the outbox (whose updates may still be pending in
        // yrs, waiting for the earlier ones that only Redis has), live edits.
        let had_state = !doc.transact().state_vector().is_empty()
            || self.cluster.as_ref().is_some_and(|c| c.outbox_entries > 0)
            || doc.transact().has_missing_updates();
        // 1. Redis' state on a scratch document (to know what Redis lacks afterwards).
        let scratch = if had_state {
            match guarded("reading the shared log", || {
                let scratch = Doc::new();
                merge_into(&scratch, &records);
                scratch
            }) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.poisoned.get_or_insert(e);
                    return;
                }
            }
        } else {
            None
        };
        // 2. Take in Redis' state (this also integrates outbox updates that waited for it);
        //    connected clients get what changed.
        match guarded("applying the shared log", || merge_into(&doc, &records)) {
            Ok(Some(update)) if !self.peers.is_empty() => self.post.push(Post::Broadcast {
                origin: None,
                update,
            }),
            Ok(_) => {}
            Err(e) => {
                self.poisoned.get_or_insert(e);
                return;
            }
        }
        // What our document now holds that Redis lacks (the outbox, state cached before Redis
        // lost it, edits of a degraded period), if it adds anything to Redis' state.
        let missing = scratch.and_then(|scratch| {
            guarded("comparing with the shared log", || {
                let theirs = scratch.transact().state_vector();
                let diff = doc.transact().encode_state_as_update_v1(&theirs);
                merge_into(&scratch, &[&diff]).map(|_| diff)
            })
            .unwrap_or_else(|e| {
                // Cannot tell: send the whole state (a CRDT merges duplicates away).
                warn!(error = %e, "sending the whole document instead of a diff");
                self.encode_state(&StateVector::default())
            })
        });
        // 3. Give Redis what it lacks.
        if let Some(diff) = missing {
            let bytes = diff.len();
            if let Err(e) = cluster.append(&keys, &[diff]).await {
                warn!(error = %e, "cannot hand our state to the shared log; staying degraded");
                self.set_degraded();
                return;
            }
            info!(bytes, "appended what the shared log lacked");
        }
        // 4. The outbox is in Redis now: the local log becomes a fresh cached snapshot.
        if self.cluster.as_ref().is_some_and(|c| c.outbox_entries > 0) {
            self.write_cache().await;
        }
        // 5. Follow the streams from where the tail ended.
        let Some(cs) = self.cluster.as_mut() else {
            return;
        };
        self.snapshot_bytes = reply.snapshot.len() as u64;
        self.log_entries = reply.tail.len() as u64;
        self.log_bytes = tail_bytes;
        cs.pending_entries = self.log_entries;
        cs.pending_bytes = tail_bytes;
        cs.cursor = reply.last_id.clone();
        cs.joined = true;
        cluster.joined(
            Follow {
                doc: self.name.clone(),
                generation,
                tx: cs.me.clone(),
                updates_from: reply.last_id,
                awareness_from: reply.awareness_last_id,
            },
            reply.epoch,
        );
        // 6. People on other nodes (newest entry first in the reply).
        let horizon =
            unix_ms().saturating_sub(self.ctx.limits.awareness_timeout.as_millis() as u64);
        for e in reply.awareness.iter().rev() {
            let fresh = e
                .text("t")
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| t >= horizon);
            if fresh {
                self.apply_remote_awareness(e);
            }
        }
    }

    fn set_degraded(&mut self) {
        if let Some(cs) = self.cluster.as_mut() {
            cs.joined = false;
            cs.cluster.degraded(&self.name, cs.generation);
        }
    }

    /// Cluster-mode [`Room::persist`]: Redis when joined, else the outbox (bounded).
    pub(super) async fn persist_clustered(
        &mut self,
        raws: Vec<Vec<u8>>,
        count: u64,
        bytes: u64,
    ) -> Result<bool, StoreError> {
        let Some(cs) = self.cluster.as_ref() else {
            return Ok(false);
        };
        let cluster = cs.cluster.clone();
        let keys = cs.keys.clone();
        if cs.joined {
            match cluster.append(&keys, &raws).await {
                Ok(()) => {
                    self.log_entries += count;
                    self.log_bytes += bytes;
                    if let Some(cs) = self.cluster.as_mut() {
                        cs.pending_entries += count;
                        cs.pending_bytes += bytes;
                    }
                    return Ok(false);
                }
                Err(e) => {
                    warn!(error = %e, updates = count, "redis did not take updates; keeping them in this node's outbox");
                    self.set_degraded();
                }
            }
        }
        if !cluster.outbox_reserve(bytes) {
            return Err(StoreError::Full(format!(
                "redis is unreachable and this node's outbox is full ({} bytes)",
                cluster.tuning.outbox_max_bytes
            )));
        }
        match self.append_local(raws).await {
            Ok(seq) => {
                self.last_seq = seq;
                self.log_entries += count;
                self.log_bytes += bytes;
                if let Some(cs) = self.cluster.as_mut() {
                    cs.outbox_entries += count;
                    cs.outbox_bytes += bytes;
                }
                Ok(true)
            }
            Err(e) => {
                cluster.outbox_release(bytes);
                Err(e)
            }
        }
    }

    /// Cluster-mode compaction of the room's Redis stream, under the room's lease.
    pub(super) async fn compact_clustered(&mut self, force: bool) {
        let Some(cs) = self.cluster.as_ref() else {
            return;
        };
        if !cs.joined
            || self.rejoin_due
            || self.failed.is_some()
            || cs.pending_entries == 0
            || cs.cursor == "0-0"
        {
            return;
        }
        let t = &cs.cluster.tuning;
        if !force && cs.pending_entries < t.compact_entries && cs.pending_bytes < t.compact_bytes {
            return;
        }
        let cluster = cs.cluster.clone();
        let keys = cs.keys.clone();
        let upto = cs.cursor.clone();
        let Some(snapshot) = self.encode_state(&StateVector::default()) else {
            return;
        };
        let outcome = cluster.compact(&keys, &snapshot, &upto).await;
        if let Some(cs) = self.cluster.as_mut() {
            // Whatever happened, wait for another threshold's worth before trying again.
            cs.pending_entries = 0;
            cs.pending_bytes = 0;
        }
        match outcome {
            Ok(Compacted::Done) => {
                metrics::counter!("wedsync_cluster_compactions_total").increment(1);
                self.snapshot_bytes = snapshot.len() as u64;
                self.log_entries = 0;
                self.log_bytes = 0;
                tracing::debug!(upto = %upto, bytes = snapshot.len(), "shared log compacted");
            }
            Ok(Compacted::Skipped) => {}
            Err(e) => warn!(error = %e, "compaction of the shared log failed"),
        }
    }

    /// Before the room stops (cluster mode): cache the whole state in the local store. Not
    /// while degraded: the outbox must stay as it is until Redis has it.
    pub(super) async fn refresh_cache(&mut self) {
        if self.cluster.as_ref().is_some_and(|c| c.joined) {
            self.write_cache().await;
        }
    }

    /// Replaces the local snapshot with the whole state and empties the local log (outbox).
    async fn write_cache(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let Some(snapshot) = self.encode_state(&StateVector::default()) else {
            return;
        };
        match self.store_snapshot(snapshot).await {
            Ok(()) => {
                if let Some(cs) = self.cluster.as_mut() {
                    cs.cluster.outbox_release(cs.outbox_bytes);
                    cs.outbox_entries = 0;
                    cs.outbox_bytes = 0;
                }
            }
            // The outbox stays; the next join sends its diff again (harmless duplicates).
            Err(e) => warn!(error = %e, "local snapshot cache not written"),
        }
    }

    /// Entries of other nodes, from the reader.
    pub(super) fn apply_remote(&mut self, batch: RemoteBatch) {
        if self.failed.is_some() {
            return;
        }
        let Some(cs) = self.cluster.as_mut() else {
            return;
        };
        // After a gap the document lacks entries before the cursor: a compaction covering
        // it would drop them from the snapshot. The cursor stays until the re-join (which
        // runs before the next commit, and so before any compaction) sets it.
        if !batch.lagged && !self.rejoin_due {
            if let Some(cursor) = batch.cursor {
                cs.cursor = cursor;
            }
        }
        let bytes: u64 = batch.updates.iter().map(|u| u.len() as u64).sum();
        cs.pending_entries += batch.updates.len() as u64;
        cs.pending_bytes += bytes;
        if batch.trimmed {
            // Someone compacted: no need for us to, until another threshold's worth.
            cs.pending_entries = 0;
            cs.pending_bytes = 0;
        }
        if batch.lagged {
            warn!("the reader fell behind a compaction; re-joining from the snapshot");
            self.rejoin_due = true;
        }
        if !batch.updates.is_empty() {
            self.log_entries += batch.updates.len() as u64;
            self.log_bytes += bytes;
            let doc = self.awareness.doc().clone();
            let records: Vec<&[u8]> = batch.updates.iter().map(|u| u.as_slice()).collect();
            match guarded("applying other nodes' updates", || {
                merge_into(&doc, &records)
            }) {
                Ok(Some(update)) => self.post.push(Post::Broadcast {
                    origin: None,
                    update,
                }),
                Ok(None) => {}
                Err(e) => {
                    self.poisoned.get_or_insert(e);
                }
            }
        }
        for e in &batch.awareness {
            self.apply_remote_awareness(e);
        }
    }

    /// An awareness entry of another node: apply it and relay it to this node's clients.
    fn apply_remote_awareness(&mut self, e: &Entry) {
        let Some(cs) = self.cluster.as_mut() else {
            return;
        };
        let Some(update) = e
            .field("a")
            .and_then(|a| AwarenessUpdate::decode_v1(a).ok())
        else {
            return;
        };
        let who: HashMap<String, RemoteClient> = e
            .field("p")
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or_default();
        let mut accepted = AwarenessUpdate {
            clients: HashMap::with_capacity(update.clients.len()),
        };
        for (id, entry) in update.clients {
            match self.owners.get(&id) {
                // a local client's id: the local connection owns it
                Some(owner) if *owner != REMOTE_OWNER => continue,
                _ => {}
            }
            if entry.json.as_ref() == "null" {
                self.owners.remove(&id);
                cs.remote.remove(&id);
            } else {
                self.owners.insert(id, REMOTE_OWNER);
                if let Some(client) = who.get(&id.get().to_string()) {
                    cs.remote.insert(id, client.clone());
                }
            }
            accepted.clients.insert(id, entry);
        }
        self.relay_awareness(accepted, None, false);
    }

    /// Awareness ids that timed out here: whoever had them on another node is gone from the
    /// presence list too (the map would otherwise keep every remote id until the room unloads).
    pub(super) fn forget_remote(&mut self, ids: &[ClientID]) {
        if let Some(cs) = self.cluster.as_mut() {
            for id in ids {
                cs.remote.remove(id);
            }
        }
    }

    /// Publishes an awareness change of this node's clients (ids other nodes own are left
    /// out), with who controls each id (for the presence API elsewhere).
    pub(super) fn publish_awareness(&self, update: &AwarenessUpdate) {
        let Some(cs) = self.cluster.as_ref() else {
            return;
        };
        let own = self.own_client_id();
        let mut local = AwarenessUpdate {
            clients: HashMap::new(),
        };
        let mut who: HashMap<String, RemoteClient> = HashMap::new();
        for (id, entry) in &update.clients {
            if *id == own || cs.remote.contains_key(id) {
                continue;
            }
            if let Some(peer) = self.owners.get(id).and_then(|c| self.peers.get(c)) {
                let (conn, info) = (self.owners[id], &peer.info);
                who.insert(
                    id.get().to_string(),
                    RemoteClient {
                        node: cs.node_id().to_owned(),
                        conn,
                        user: info.user.clone(),
                        name: info.name.clone(),
                        role: info.role.clone(),
                        can_edit: info.can_edit,
                        since: info
                            .connected_at
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis() as u64)
                            .unwrap_or(0),
                    },
                );
            }
            local.clients.insert(*id, entry.clone());
        }
        if local.clients.is_empty() {
            return;
        }
        let presence = serde_json::to_string(&who).unwrap_or_else(|_| "{}".into());
        cs.cluster
            .publish_awareness(&cs.keys, local.encode_v1(), presence);
    }

    /// Adds people connected to other nodes (one entry per remote connection).
    pub(super) fn remote_presence(&self, out: &mut Vec<PresenceEntry>) {
        let Some(cs) = self.cluster.as_ref() else {
            return;
        };
        let mut by_conn: HashMap<(String, u64), PresenceEntry> = HashMap::new();
        for (id, client) in &cs.remote {
            let Some(state) = self.awareness.state::<serde_json::Value>(*id) else {
                continue;
            };
            let entry = by_conn
                .entry((client.node.clone(), client.conn))
                .or_insert_with(|| PresenceEntry {
                    user: client.user.clone(),
                    name: client.name.clone(),
                    role: client.role.clone(),
                    can_edit: client.can_edit,
                    connected_since: client.since,
                    awareness: serde_json::Map::new(),
                    node: Some(client.node.clone()),
                });
            entry.awareness.insert(id.get().to_string(), state);
        }
        out.extend(by_conn.into_values());
    }
}
