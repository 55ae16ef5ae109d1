//! Operator tools over a [`Store`]: what `wedsync doc list | export | import | compact | inspect`
//! run, plus the policy deciding when a room compacts.
//!
//! Why it exists: the store itself only moves bytes; these functions understand them as Yjs
//! updates (folding a log into a snapshot needs a `yrs::Doc`). They are synchronous like the
//! store: the CLI calls them directly, the server from `spawn_blocking`. Operator commands
//! flush before returning, since an operator expects a finished command to be durable.

use std::collections::BTreeMap;

use serde::Serialize;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use super::{DocStats, Store, StoreError, StoredDoc};

/// Errors of the operator tools.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("document {0:?} does not exist")]
    NotFound(String),
    /// Input given to `import` is not a Yjs v1 update; nothing was stored.
    #[error("not a valid Yjs v1 update: {0}")]
    InvalidUpdate(String),
    /// Stored bytes passed their checksums but yrs refuses them (written by a buggy client or
    /// an incompatible version).
    #[error("stored data of {doc:?} is not a valid Yjs update: {reason}")]
    Unreadable { doc: String, reason: String },
}

/// When a document's log should be folded into its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CompactionPolicy {
    pub max_log_entries: u64,
    pub max_log_bytes: u64,
}

impl Default for CompactionPolicy {
    /// 500 entries keeps a cold load to a few milliseconds of yrs work; 1 MiB bounds the
    /// disk used by a document that receives few but large updates (pasted notes, imports).
    fn default() -> Self {
        CompactionPolicy {
            max_log_entries: 500,
            max_log_bytes: 1024 * 1024,
        }
    }
}

impl CompactionPolicy {
    pub fn should_compact(&self, stats: &DocStats) -> bool {
        stats.log_entries > 0
            && (stats.log_entries >= self.max_log_entries || stats.log_bytes >= self.max_log_bytes)
    }
}

/// What `wedsync doc inspect` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocInfo {
    pub doc: String,
    pub snapshot_bytes: u64,
    pub log_entries: u64,
    pub log_bytes: u64,
    pub last_seq: u64,
    /// Client id -> clock: how many structs of each client the document has integrated.
    pub state_vector: BTreeMap<u64, u32>,
    /// Some stored update depends on one that was never stored (kept as pending structs).
    pub has_pending: bool,
}

/// Result of folding one document's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompactOutcome {
    pub doc: String,
    /// Log entries folded into the new snapshot (0: nothing to do, nothing written).
    pub folded_entries: u64,
    pub snapshot_bytes: u64,
}

/// Result of compacting every document: one failure does not stop the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    pub compacted: Vec<CompactOutcome>,
    /// (document, error message)
    pub failed: Vec<(String, String)>,
}

/// Applies a stored document to a fresh `yrs::Doc` (snapshot first, then the log in order).
/// This is also how a room materialises a document it lazily loads.
pub fn materialize(doc_name: &str, stored: &StoredDoc) -> Result<Doc, AdminError> {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for (i, bytes) in stored.snapshot.iter().chain(&stored.updates).enumerate() {
            let unreadable = |e: &dyn std::fmt::Display| AdminError::Unreadable {
                doc: doc_name.to_owned(),
                reason: format!("record {i}: {e}"),
            };
            let update = Update::decode_v1(bytes).map_err(|e| unreadable(&e))?;
            txn.apply_update(update).map_err(|e| unreadable(&e))?;
        }
    }
    Ok(doc)
}

/// Loads `doc` from the store into a `yrs::Doc`; `NotFound` if it was never stored.
pub fn load_doc(store: &dyn Store, doc: &str) -> Result<(Doc, StoredDoc), AdminError> {
    let stored = store.load(doc)?;
    if stored == StoredDoc::default() {
        return Err(AdminError::NotFound(doc.to_owned()));
    }
    let ydoc = materialize(doc, &stored)?;
    Ok((ydoc, stored))
}

/// Names of every stored document, sorted.
pub fn list(store: &dyn Store) -> Result<Vec<String>, AdminError> {
    let mut names = store.list()?;
    names.sort();
    Ok(names)
}

/// The whole document as one v1 update. It includes pending structs (updates whose
/// dependencies are missing), so nothing stored is lost by an export/import cycle.
pub fn export(store: &dyn Store, doc: &str) -> Result<Vec<u8>, AdminError> {
    let (ydoc, _) = load_doc(store, doc)?;
    let bytes = ydoc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    Ok(bytes)
}

/// Validates `bytes` as a v1 update, appends it to `doc` and flushes. Returns its sequence
/// number. Rooms holding `doc` open will not see it until they reload: run it with the server
/// stopped (the data directory lock enforces that), or use the HTTP API instead.
pub fn import(store: &dyn Store, doc: &str, bytes: &[u8]) -> Result<u64, AdminError> {
    Update::decode_v1(bytes).map_err(|e| AdminError::InvalidUpdate(e.to_string()))?;
    let seq = store.append(doc, &[bytes])?;
    store.flush()?;
    Ok(seq)
}

/// Folds `doc`'s log into a new snapshot, atomically, and flushes. Entries appended while this
/// runs have higher sequence numbers than the ones folded and are kept.
pub fn compact(store: &dyn Store, doc: &str) -> Result<CompactOutcome, AdminError> {
    let (ydoc, stored) = load_doc(store, doc)?;
    let folded_entries = stored.updates.len() as u64;
    if folded_entries == 0 {
        return Ok(CompactOutcome {
            doc: doc.to_owned(),
            folded_entries,
            snapshot_bytes: stored.snapshot.map_or(0, |s| s.len() as u64),
        });
    }
    // Full state including pending structs: a snapshot must not drop anything the log held.
    let snapshot = ydoc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    store.compact(doc, &snapshot, stored.last_seq)?;
    store.flush()?;
    tracing::info!(doc, folded_entries, bytes = snapshot.len(), "compacted");
    Ok(CompactOutcome {
        doc: doc.to_owned(),
        folded_entries,
        snapshot_bytes: snapshot.len() as u64,
    })
}

/// Compacts every document for which `policy` says so (every document with a log if `None`).
pub fn compact_all(
    store: &dyn Store,
    policy: Option<&CompactionPolicy>,
) -> Result<CompactReport, AdminError> {
    let mut report = CompactReport::default();
    for doc in list(store)? {
        let due = match policy {
            None => true,
            Some(policy) => match store.stats(&doc) {
                Ok(stats) => stats.is_some_and(|s| policy.should_compact(&s)),
                Err(e) => {
                    report.failed.push((doc, e.to_string()));
                    continue;
                }
            },
        };
        if !due {
            continue;
        }
        match compact(store, &doc) {
            Ok(outcome) if outcome.folded_entries > 0 => report.compacted.push(outcome),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(doc, error = %e, "compaction failed");
                report.failed.push((doc, e.to_string()));
            }
        }
    }
    Ok(report)
}

/// Sizes and state vector of `doc`.
pub fn inspect(store: &dyn Store, doc: &str) -> Result<DocInfo, AdminError> {
    let stats = store
        .stats(doc)?
        .ok_or_else(|| AdminError::NotFound(doc.to_owned()))?;
    let (ydoc, _) = load_doc(store, doc)?;
    let txn = ydoc.transact();
    let state_vector = txn
        .state_vector()
        .iter()
        .map(|(client, clock)| (client.get(), *clock))
        .collect();
    Ok(DocInfo {
        doc: doc.to_owned(),
        snapshot_bytes: stats.snapshot_bytes,
        log_entries: stats.log_entries,
        log_bytes: stats.log_bytes,
        last_seq: stats.last_seq,
        state_vector,
        has_pending: txn.has_missing_updates(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use std::time::Duration;
    use yrs::{GetString, Map, Text};

    fn store(dir: &tempfile::TempDir) -> SledStore {
        SledStore::open(dir.path(), Duration::from_secs(20)).unwrap()
    }

    fn edit(doc: &Doc, key: &str, value: &str) -> Vec<u8> {
        let guests = doc.get_or_insert_map("guests");
        let mut txn = doc.transact_mut();
        guests.insert(&mut txn, key, value);
        txn.encode_update_v1()
    }

    #[test]
    fn compaction_never_loses_an_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let (a, b) = (Doc::with_client_id(11), Doc::with_client_id(22));
        let reference = Doc::new();
        for i in 0..30 {
            let client = if i % 2 == 0 { &a } else { &b };
            let u = edit(client, &format!("g{i}"), "Ada");
            store.append("w", &[&u]).unwrap();
            reference
                .transact_mut()
                .apply_update(Update::decode_v1(&u).unwrap())
                .unwrap();
            if i % 7 == 6 {
                let outcome = compact(&store, "w").unwrap();
                assert!(outcome.folded_entries > 0);
            }
        }
        let info = inspect(&store, "w").unwrap();
        let expected: BTreeMap<u64, u32> = reference
            .transact()
            .state_vector()
            .iter()
            .map(|(c, k)| (c.get(), *k))
            .collect();
        assert_eq!(info.state_vector, expected);
        assert_eq!(info.last_seq, 30);
        assert_eq!(info.log_entries, 2);
        assert!(!info.has_pending);

        // Export -> import into another name reproduces the same state.
        let bytes = export(&store, "w").unwrap();
        import(&store, "copy", &bytes).unwrap();
        assert_eq!(inspect(&store, "copy").unwrap().state_vector, expected);
        let (copy, _) = load_doc(&store, "copy").unwrap();
        let guests = copy.get_or_insert_map("guests");
        assert_eq!(guests.len(&copy.transact()), 30);
        assert_eq!(list(&store).unwrap(), ["copy", "w"]);
    }

    #[test]
    fn pending_structs_survive_compaction_and_export() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let client = Doc::with_client_id(5);
        let text = client.get_or_insert_text("notes");
        let first = {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 0, "a");
            txn.encode_update_v1()
        };
        let second = {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 1, "b");
            txn.encode_update_v1()
        };
        // Only the second update reaches the store: it stays pending.
        store.append("p", &[&second]).unwrap();
        compact(&store, "p").unwrap();
        assert!(inspect(&store, "p").unwrap().has_pending);
        import(&store, "p", &first).unwrap();
        let (doc, _) = load_doc(&store, "p").unwrap();
        let text = doc.get_or_insert_text("notes");
        assert_eq!(text.get_string(&doc.transact()), "ab");
    }

    #[test]
    fn import_rejects_garbage_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        for garbage in [&b"\xff\xff\xff"[..], b"not a yjs update at all", b"\x01"] {
            assert!(matches!(
                import(&store, "g", garbage),
                Err(AdminError::InvalidUpdate(_))
            ));
        }
        assert!(list(&store).unwrap().is_empty());
        assert!(matches!(export(&store, "g"), Err(AdminError::NotFound(_))));
        assert!(matches!(inspect(&store, "g"), Err(AdminError::NotFound(_))));
    }

    #[test]
    fn compact_all_follows_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let client = Doc::with_client_id(3);
        for i in 0..5 {
            let u = edit(&client, &format!("k{i}"), "v");
            store.append("busy", &[&u]).unwrap();
        }
        let u = edit(&client, "k", "v");
        store.append("quiet", &[&u]).unwrap();
        let policy = CompactionPolicy {
            max_log_entries: 3,
            max_log_bytes: 1 << 20,
        };
        let report = compact_all(&store, Some(&policy)).unwrap();
        assert_eq!(report.compacted.len(), 1);
        assert_eq!(report.compacted[0].doc, "busy");
        assert!(report.failed.is_empty());
        assert!(!policy.should_compact(&store.stats("busy").unwrap().unwrap()));
        assert!(CompactionPolicy::default().should_compact(&DocStats {
            log_entries: 1,
            log_bytes: 2 << 20,
            ..Default::default()
        }));
        assert!(!CompactionPolicy::default().should_compact(&DocStats::default()));
    }
}
