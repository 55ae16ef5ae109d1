//! Durable storage of documents.
//!
//! Why it exists: a wedding plan must survive crashes and restarts. Every document is kept as a
//! compacted *snapshot* (one Yjs v1 update holding the whole state) plus an append-only *log*
//! of the updates applied since that snapshot. Rooms append to the log through the [`Flusher`]'s
//! store thread, which fsyncs once for every room that wrote in the same round (group commit),
//! and only then relay the updates to other clients.
//!
//! The [`Store`] trait is deliberately synchronous: sled's operations are short, CPU-bound or
//! blocking I/O, and callers run them on the store thread or tokio's blocking pool
//! (`spawn_blocking`), never on a runtime worker. It is object safe so the server holds an
//! `Arc<dyn Store>`.

use std::sync::Arc;

pub mod admin;
pub mod flusher;
mod memory;
pub mod sled_store;

pub use flusher::Flusher;
pub use sled_store::SledStore;

/// Errors from the document store.
///
/// `Clone` because one group-commit flush reports its outcome to every waiting caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The underlying database failed (I/O error, lock held by another process, ...).
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The disk (or the quota of the data directory) is full. Nothing already flushed is lost,
    /// but sled 0.34 keeps the error: every later call (reads too) fails with it until the
    /// store is reopened after space was freed (checked on a 4 MiB tmpfs, see
    /// `sled_store::experiments`).
    #[error("storage is full: {0}")]
    Full(String),
    /// A stored record of this document failed its checksum or could not be decoded; the
    /// document is quarantined (refused) until an operator repairs or removes it.
    #[error("document {doc:?} is quarantined: {reason}")]
    Corrupt { doc: String, reason: String },
    /// Another process holds the data directory (sled takes an exclusive lock).
    #[error("data directory {0} is locked by another process (is a wedsync server running?)")]
    Locked(String),
    /// The request itself is wrong (a stale compaction, a sequence number that was never
    /// written, an unusable document name); nothing was changed.
    #[error("invalid store request: {0}")]
    Invalid(String),
}

/// Everything stored for one document, in the order it must be applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredDoc {
    /// Compacted state (a v1 update), if the document was ever compacted.
    pub snapshot: Option<Vec<u8>>,
    /// Log entries written after the snapshot, oldest first (raw v1 updates).
    pub updates: Vec<Vec<u8>>,
    /// Sequence number of the last log entry (0 when the log is empty and never written).
    pub last_seq: u64,
}

/// Size information about one stored document (for `wedsync doc inspect` and compaction).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DocStats {
    pub snapshot_bytes: u64,
    pub log_entries: u64,
    pub log_bytes: u64,
    pub last_seq: u64,
}

/// Synchronous document store; call it from `spawn_blocking`.
pub trait Store: Send + Sync + 'static {
    /// Loads a document. A document never written loads as `StoredDoc::default()`.
    fn load(&self, doc: &str) -> Result<StoredDoc, StoreError>;
    /// Appends updates to the document's log and returns the sequence number of the last one.
    /// Not durable until [`Store::flush`] returns.
    fn append(&self, doc: &str, updates: &[&[u8]]) -> Result<u64, StoreError>;
    /// Makes every write so far durable (fsync).
    fn flush(&self) -> Result<(), StoreError>;
    /// Replaces the snapshot with `snapshot` (the whole state, including every log entry up to
    /// and including `upto_seq`) and removes those log entries, atomically.
    fn compact(&self, doc: &str, snapshot: &[u8], upto_seq: u64) -> Result<(), StoreError>;
    /// Size information; `None` if the document was never stored.
    fn stats(&self, doc: &str) -> Result<Option<DocStats>, StoreError>;
    /// Names of every stored document.
    fn list(&self) -> Result<Vec<String>, StoreError>;
}

/// Shared handle to a store.
pub type SharedStore = Arc<dyn Store>;

pub use memory::MemoryStore;
