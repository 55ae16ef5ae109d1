//! An in-memory [`Store`] for unit tests and property tests of code above the store.
//!
//! Why it exists: room and protocol logic should be testable without a disk; this keeps the
//! same semantics as the sled store (sequence numbers, atomic compaction) with none of the I/O.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{DocStats, Store, StoreError, StoredDoc};

#[derive(Debug, Default)]
struct MemDoc {
    snapshot: Option<Vec<u8>>,
    log: Vec<(u64, Vec<u8>)>,
    last_seq: u64,
}

/// A store that keeps everything in a mutex-protected map. Not durable.
#[derive(Debug, Default)]
pub struct MemoryStore {
    docs: Mutex<HashMap<String, MemDoc>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn docs(&self) -> std::sync::MutexGuard<'_, HashMap<String, MemDoc>> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn load(&self, doc: &str) -> Result<StoredDoc, StoreError> {
        Ok(self
            .docs()
            .get(doc)
            .map(|d| StoredDoc {
                snapshot: d.snapshot.clone(),
                updates: d.log.iter().map(|(_, u)| u.clone()).collect(),
                last_seq: d.last_seq,
            })
            .unwrap_or_default())
    }

    fn append(&self, doc: &str, updates: &[&[u8]]) -> Result<u64, StoreError> {
        let mut docs = self.docs();
        let d = docs.entry(doc.to_owned()).or_default();
        for u in updates {
            d.last_seq += 1;
            let seq = d.last_seq;
            d.log.push((seq, u.to_vec()));
        }
        Ok(d.last_seq)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn compact(&self, doc: &str, snapshot: &[u8], upto_seq: u64) -> Result<(), StoreError> {
        let mut docs = self.docs();
        let d = docs.entry(doc.to_owned()).or_default();
        d.snapshot = Some(snapshot.to_vec());
        d.log.retain(|(seq, _)| *seq > upto_seq);
        Ok(())
    }

    fn stats(&self, doc: &str) -> Result<Option<DocStats>, StoreError> {
        Ok(self.docs().get(doc).map(|d| DocStats {
            snapshot_bytes: d.snapshot.as_ref().map_or(0, |s| s.len() as u64),
            log_entries: d.log.len() as u64,
            log_bytes: d.log.iter().map(|(_, u)| u.len() as u64).sum(),
            last_seq: d.last_seq,
        }))
    }

    fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = self.docs().keys().cloned().collect();
        names.sort();
        Ok(names)
    }
}
