//! The node's one stream reader: `XREAD BLOCK` over the update and awareness streams of every
//! room this node hosts, on a connection of its own with no response timeout (a blocking read
//! may legitimately wait). Entries of this process are skipped (the room applied them before
//! appending); the rest go to their room in stream order, with the cursor the room may
//! compact up to. A `trim` marker newer than a room's cursor means the reader fell behind a
//! compaction: the room re-joins from the snapshot. After a read that returned entries it waits
//! `read_coalesce` before the next, so more entries share one read (each read costs Redis work
//! per stream key).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::scripts::{self, Keys};
use super::{Cluster, Follow, ReaderCmd, RemoteBatch};
use crate::room::RoomCmd;

/// Longest a blocking read waits before it re-reads the room list anyway (a room that joined
/// just between the list being read and the XREAD being sent is picked up by then).
const BLOCK_MS: u64 = 1000;
/// Entries taken per stream per read.
const COUNT: usize = 512;

struct Followed {
    generation: u64,
    keys: Keys,
    tx: mpsc::WeakSender<RoomCmd>,
    updates_from: String,
    awareness_from: String,
    /// For each read of the update stream since the last trim marker: (cursor before the
    /// read, first id returned). Nothing between the two existed at read time, so an entry a
    /// compaction deleted whose id falls strictly inside such a gap was never read: the room
    /// lagged behind that trim.
    gaps: Vec<(String, String)>,
    /// More gaps than [`MAX_GAPS`] were seen: treat the next trim as lagged.
    gaps_overflow: bool,
}

/// Gaps remembered per room between two trim markers.
const MAX_GAPS: usize = 4096;

pub(super) async fn run(
    cluster: Arc<Cluster>,
    client: redis::Client,
    mut rx: mpsc::UnboundedReceiver<ReaderCmd>,
) {
    let mut rooms: HashMap<String, Followed> = HashMap::new();
    // key -> (doc, is_updates)
    'connect: loop {
        if cluster.shutdown.is_cancelled() {
            return;
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(cluster.tuning.redis_timeout));
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "reader cannot connect; retrying");
                cluster
                    .reader_client
                    .store(-1, std::sync::atomic::Ordering::Relaxed);
                tokio::select! {
                    _ = cluster.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                continue;
            }
        };
        match redis::cmd("CLIENT")
            .arg("ID")
            .query_async::<i64>(&mut conn)
            .await
        {
            Ok(id) => cluster.set_reader_client(id),
            Err(e) => {
                debug!(error = %e, "reader: CLIENT ID failed; retrying");
                continue 'connect;
            }
        }
        loop {
            if cluster.shutdown.is_cancelled() {
                return;
            }
            while let Ok(cmd) = rx.try_recv() {
                apply(&mut rooms, cmd);
            }
            if rooms.is_empty() {
                tokio::select! {
                    _ = cluster.shutdown.cancelled() => return,
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => { apply(&mut rooms, cmd); continue; }
                        None => return,
                    },
                }
            }
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(COUNT)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS");
            for r in rooms.values() {
                cmd.arg(&r.keys.updates).arg(&r.keys.awareness);
            }
            for r in rooms.values() {
                cmd.arg(&r.updates_from).arg(&r.awareness_from);
            }
            let reply: Result<redis::Value, _> = tokio::select! {
                _ = cluster.shutdown.cancelled() => return,
                r = cmd.query_async(&mut conn) => r,
            };
            let reply = match reply {
                Ok(v) => v,
                Err(e) => {
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                        && e.to_string().contains("UNBLOCKED")
                    {
                        continue;
                    }
                    warn!(error = %e, "stream reader lost redis; reconnecting");
                    cluster.note_error(&e);
                    tokio::select! {
                        _ = cluster.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                    continue 'connect;
                }
            };
            let streams = match scripts::xread_reply(&reply) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "unreadable XREAD reply");
                    continue;
                }
            };
            let mut batches: HashMap<String, RemoteBatch> = HashMap::new();
            for (key, entries) in streams {
                let Some((doc, is_updates)) = doc_of(&key) else {
                    continue;
                };
                let Some(room) = rooms.get_mut(doc) else {
                    continue;
                };
                let batch = batches
                    .entry(doc.to_owned())
                    .or_insert_with(|| RemoteBatch {
                        updates: Vec::new(),
                        awareness: Vec::new(),
                        cursor: None,
                        trimmed: false,
                        lagged: false,
                    });
                if is_updates {
                    if let Some(first) = entries.first() {
                        if room.gaps.len() < MAX_GAPS {
                            room.gaps
                                .push((room.updates_from.clone(), first.id.clone()));
                        } else {
                            room.gaps_overflow = true;
                        }
                    }
                }
                for e in entries {
                    if is_updates {
                        if let Some(deleted) = e.text("trim") {
                            batch.trimmed = true;
                            let lost = room.gaps_overflow
                                || room.gaps.iter().any(|(before, first)| {
                                    scripts::id_less(before, deleted)
                                        && scripts::id_less(deleted, first)
                                });
                            if lost {
                                batch.lagged = true;
                            }
                            room.gaps.clear();
                            room.gaps_overflow = false;
                        } else if e.text("n") != Some(cluster.instance.as_str()) {
                            if let Some(u) = e.field("u") {
                                batch.updates.push(u.to_vec());
                            }
                        }
                        room.updates_from = e.id.clone();
                        batch.cursor = Some(e.id);
                    } else {
                        room.awareness_from = e.id.clone();
                        if e.text("n") != Some(cluster.instance.as_str()) {
                            batch.awareness.push(e);
                        }
                    }
                }
            }
            let coalesce = cluster.tuning.read_coalesce;
            let got_entries = !batches.is_empty();
            for (doc, batch) in batches {
                let Some(room) = rooms.get(&doc) else {
                    continue;
                };
                let Some(tx) = room.tx.upgrade() else {
                    rooms.remove(&doc);
                    continue;
                };
                let n = batch.updates.len() as u64;
                // Waits when the room's queue is full: a busy room slows this node's reader
                // rather than losing entries.
                if tx.send(RoomCmd::Remote(batch)).await.is_err() {
                    rooms.remove(&doc);
                    continue;
                }
                metrics::counter!("wedsync_cluster_remote_updates_total").increment(n);
            }
            if got_entries && !coalesce.is_zero() {
                tokio::select! {
                    _ = cluster.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(coalesce) => {}
                }
            }
        }
    }
}

/// The document of a stream key, and whether it is the update stream (not awareness).
fn doc_of(key: &str) -> Option<(&str, bool)> {
    let rest = key.strip_prefix("wedsync:{")?;
    if let Some(doc) = rest.strip_suffix("}:updates") {
        return Some((doc, true));
    }
    rest.strip_suffix("}:awareness").map(|doc| (doc, false))
}

fn apply(rooms: &mut HashMap<String, Followed>, cmd: ReaderCmd) {
    match cmd {
        ReaderCmd::Follow(Follow {
            doc,
            generation,
            tx,
            updates_from,
            awareness_from,
        }) => {
            rooms.insert(
                doc.clone(),
                Followed {
                    generation,
                    keys: Keys::new(&doc),
                    tx,
                    updates_from,
                    awareness_from,
                    gaps: Vec::new(),
                    gaps_overflow: false,
                },
            );
        }
        ReaderCmd::Forget { doc, generation } => {
            if rooms.get(&doc).is_some_and(|r| r.generation == generation) {
                rooms.remove(&doc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_map_back_to_their_document() {
        let k = Keys::new("w:1{x}");
        assert_eq!(doc_of(&k.updates), Some(("w:1{x}", true)));
        assert_eq!(doc_of(&k.awareness), Some(("w:1{x}", false)));
        assert_eq!(doc_of(&k.snapshot), None);
        assert_eq!(doc_of("other"), None);
    }
}
