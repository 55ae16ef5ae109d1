//! [`Flusher`]: the store thread, with group commit for every room.
//!
//! Why it exists: a room may relay an update only after it is durable, and an fsync costs
//! milliseconds. If every room fsynced on its own, a busy server would spend its disk on
//! fsyncs; instead every caller that wants durability in the same window shares one. And a
//! commit should cost as few thread hand-offs as possible: with one writer per room every
//! update is its own commit, so the hand-offs, not the bytes, are the price of an update.
//!
//! How: one long-lived thread (`wedsync-store`) takes requests from every room over one
//! channel. Each round it takes everything queued, appends each batch of updates to the store
//! in arrival order, and then runs **one** fsync for every caller of that round that wants
//! durability: a *durable append* (strict mode: answered with its sequence number only after
//! the fsync) or a plain [`Flusher::flush`]. So a strict commit is one request and one answer,
//! whatever the number of rooms committing together. A *plain append* (relaxed mode) is
//! answered as soon as it is in the store.
//!
//! The rule that keeps this correct: a caller is answered by an fsync that *started after* its
//! writes reached the store (for a durable append: after its own append; for `flush`: after
//! the call). Requests that arrive while an fsync runs wait for the next round.
//!
//! Where the fsync runs: on the store thread itself while every append asks for durability
//! (strict mode), which saves a hand-off per commit. Once a plain append has been seen
//! (relaxed mode), fsyncs move to a second thread (`wedsync-fsync`), so a plain append is
//! never queued behind a running fsync (relaxed mode relays right after the append).
//!
//! Both threads end when the last handle (and the last request) is dropped, releasing the store.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{SharedStore, StoreError};

/// Handle to the store thread; cheap to clone, share it with every room.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").finish_non_exhaustive()
    }
}

enum Request {
    Append {
        doc: String,
        updates: Vec<Vec<u8>>,
        /// Answer only after an fsync that started after this append (strict mode).
        durable: bool,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A caller waiting for the next fsync.
enum Waiter {
    Append {
        seq: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

fn stopped() -> StoreError {
    StoreError::Backend("the store thread stopped".into())
}

/// Runs a store call, turning a panic into an error so the store thread survives it.
fn contained<T>(what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(StoreError::Backend(format!("{what} panicked"))))
}

impl Flusher {
    /// Starts the store thread on `store`.
    pub fn new(store: SharedStore) -> Flusher {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("wedsync-store".into())
            .spawn(move || store_thread(store, rx));
        if let Err(e) = spawned {
            // The receiver is gone with the closure: every request fails with "stopped".
            tracing::error!(error = %e, "cannot start the store thread");
        }
        Flusher { tx }
    }

    /// Appends `updates` to the log of `doc` on the store thread and returns the sequence
    /// number of the last one. With `durable`, answers only once an fsync that started after
    /// the append finished (group commit); without it, as soon as the updates are in the store
    /// (not yet durable: see [`Flusher::flush`]).
    ///
    /// The request is sent when the future is first polled; dropping the future afterwards does
    /// not cancel the append.
    pub fn append(
        &self,
        doc: String,
        updates: Vec<Vec<u8>>,
        durable: bool,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send + 'static {
        let tx = self.tx.clone();
        async move {
            let (reply, rx) = oneshot::channel();
            tx.send(Request::Append {
                doc,
                updates,
                durable,
                reply,
            })
            .map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())?
        }
    }

    /// Returns once every write made before this call is durable (or the fsync that should have
    /// made it so failed).
    ///
    /// Cancel-safe: dropping the future does not stop the fsync other callers wait for.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Flush { reply })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// The store thread: appends in arrival order, one fsync per round for everyone who waits.
fn store_thread(store: SharedStore, rx: mpsc::Receiver<Request>) {
    let mut generation = 0u64;
    // Set by the first plain append: from then on fsyncs run on the helper thread.
    let mut helper: Option<mpsc::Sender<Vec<Waiter>>> = None;
    let mut waiters = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut appends = 0u64;
        while let Some(request) = next.take().or_else(|| rx.try_recv().ok()) {
            match request {
                Request::Append {
                    doc,
                    updates,
                    durable,
                    reply,
                } => {
                    appends += 1;
                    let refs: Vec<&[u8]> = updates.iter().map(Vec::as_slice).collect();
                    let result = contained("append", || store.append(&doc, &refs));
                    match result {
                        Ok(seq) if durable => waiters.push(Waiter::Append { seq, reply }),
                        result => {
                            if !durable && helper.is_none() {
                                helper = Some(start_helper(Arc::clone(&store)));
                            }
                            let _ = reply.send(result);
                        }
                    }
                }
                Request::Flush { reply } => waiters.push(Waiter::Flush { reply }),
            }
        }
        if appends > 0 {
            metrics::histogram!("wedsync_store_appends_per_round").record(appends as f64);
        }
        if waiters.is_empty() {
            continue;
        }
        let round = std::mem::take(&mut waiters);
        match &helper {
            Some(helper) => {
                if let Err(mpsc::SendError(round)) = helper.send(round) {
                    answer(round, Err(stopped()));
                }
            }
            None => {
                generation += 1;
                fsync(&store, round, generation);
            }
        }
    }
}

/// Starts the fsync thread used once plain (relaxed) appends are seen.
fn start_helper(store: SharedStore) -> mpsc::Sender<Vec<Waiter>> {
    let (tx, rx) = mpsc::channel::<Vec<Waiter>>();
    let spawned = std::thread::Builder::new()
        .name("wedsync-fsync".into())
        .spawn(move || {
            let mut generation = 0u64;
            while let Ok(mut round) = rx.recv() {
                while let Ok(more) = rx.try_recv() {
                    round.extend(more);
                }
                generation += 1;
                fsync(&store, round, generation);
            }
        });
    if let Err(e) = spawned {
        // The sender's receiver is gone, so every round is answered with "stopped".
        tracing::error!(error = %e, "cannot start the fsync thread");
    }
    tx
}

/// One fsync for `round`, then every waiter of it is answered with the outcome.
fn fsync(store: &SharedStore, round: Vec<Waiter>, generation: u64) {
    let started_at = Instant::now();
    let result = contained("flush", || store.flush());
    metrics::histogram!("wedsync_store_flush_seconds").record(started_at.elapsed());
    metrics::histogram!("wedsync_store_flush_waiters").record(round.len() as f64);
    let label = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("wedsync_store_flushes_total", "result" => label).increment(1);
    if let Err(e) = &result {
        tracing::error!(error = %e, generation, waiters = round.len(), "store flush failed");
    }
    answer(round, result);
}

fn answer(round: Vec<Waiter>, result: Result<(), StoreError>) {
    for waiter in round {
        match waiter {
            Waiter::Append { seq, reply } => {
                let _ = reply.send(result.clone().map(|()| seq));
            }
            Waiter::Flush { reply } => {
                let _ = reply.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DocStats, Store, StoredDoc};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Counts writes and fsyncs; `durable` is the highest write number a finished flush covers
    /// (the write counter as it was when that flush *started*).
    #[derive(Default)]
    struct CountingStore {
        writes: AtomicU64,
        flushes: AtomicU64,
        durable: AtomicU64,
        fail: std::sync::atomic::AtomicBool,
        /// While set, a started flush does not finish (the test releases it).
        hold: std::sync::atomic::AtomicBool,
        /// Flushes finished so far.
        finished: AtomicU64,
    }

    impl Store for CountingStore {
        fn load(&self, _doc: &str) -> Result<StoredDoc, StoreError> {
            Ok(StoredDoc::default())
        }
        fn append(&self, _doc: &str, _updates: &[&[u8]]) -> Result<u64, StoreError> {
            Ok(self.writes.fetch_add(1, Ordering::SeqCst) + 1)
        }
        fn flush(&self) -> Result<(), StoreError> {
            let covered = self.writes.load(Ordering::SeqCst);
            self.flushes.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(15));
            while self.hold.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.finished.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Full("test".into()));
            }
            self.durable.fetch_max(covered, Ordering::SeqCst);
            Ok(())
        }
        fn compact(&self, _: &str, _: &[u8], _: u64) -> Result<(), StoreError> {
            Ok(())
        }
        fn stats(&self, _: &str) -> Result<Option<DocStats>, StoreError> {
            Ok(None)
        }
        fn list(&self) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_fsyncs_and_are_covered() {
        let store = Arc::new(CountingStore::default());
        let flusher = Flusher::new(store.clone());
        let mut tasks = Vec::new();
        for i in 0..100u64 {
            let store = store.clone();
            let flusher = flusher.clone();
            tasks.push(tokio::spawn(async move {
                // Stagger arrivals so callers land both before and during running flushes.
                tokio::time::sleep(Duration::from_millis(i % 7 * 3)).await;
                let mine = store.append("doc", &[b"x"]).unwrap();
                flusher.flush().await.unwrap();
                // A flush that started after this write finished before flush() returned.
                assert!(store.durable.load(Ordering::SeqCst) >= mine);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let fsyncs = store.flushes.load(Ordering::SeqCst);
        assert!(
            (1..=10).contains(&fsyncs),
            "{fsyncs} fsyncs for 100 callers"
        );
    }

    #[tokio::test]
    async fn a_caller_arriving_mid_flush_waits_for_the_next_one() {
        let store = Arc::new(CountingStore::default());
        let flusher = Flusher::new(store.clone());
        let first = tokio::spawn({
            let f = flusher.clone();
            async move { f.flush().await }
        });
        // Let the first flush start (it sleeps 15 ms in the blocking pool).
        while store.flushes.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mine = store.append("doc", &[b"late"]).unwrap();
        flusher.flush().await.unwrap();
        assert!(store.durable.load(Ordering::SeqCst) >= mine);
        assert_eq!(store.flushes.load(Ordering::SeqCst), 2);
        first.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn errors_reach_every_waiter_and_the_next_flush_retries() {
        let store = Arc::new(CountingStore::default());
        store.fail.store(true, Ordering::SeqCst);
        let flusher = Flusher::new(store.clone());
        let (a, b) = tokio::join!(flusher.flush(), flusher.flush());
        assert!(matches!(a, Err(StoreError::Full(_))));
        assert!(matches!(b, Err(StoreError::Full(_))));
        store.fail.store(false, Ordering::SeqCst);
        flusher.flush().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_appends_of_many_rooms_share_fsyncs_and_are_answered_after_them() {
        let store = Arc::new(CountingStore::default());
        let flusher = Flusher::new(store.clone());
        let mut tasks = Vec::new();
        for i in 0..100u64 {
            let store = store.clone();
            let flusher = flusher.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i % 7 * 3)).await;
                let mine = flusher
                    .append(format!("room-{i}"), vec![b"x".to_vec()], true)
                    .await
                    .unwrap();
                // Answered only after an fsync that started after this append.
                assert!(store.durable.load(Ordering::SeqCst) >= mine);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let fsyncs = store.flushes.load(Ordering::SeqCst);
        assert!(
            (1..=10).contains(&fsyncs),
            "{fsyncs} fsyncs for 100 durable appends"
        );
    }

    #[tokio::test]
    async fn a_failed_fsync_fails_the_durable_appends_it_should_have_covered() {
        let store = Arc::new(CountingStore::default());
        store.fail.store(true, Ordering::SeqCst);
        let flusher = Flusher::new(store.clone());
        let (a, b) = tokio::join!(
            flusher.append("a".into(), vec![b"1".to_vec()], true),
            flusher.append("b".into(), vec![b"2".to_vec()], true)
        );
        assert!(matches!(a, Err(StoreError::Full(_))));
        assert!(matches!(b, Err(StoreError::Full(_))));
        store.fail.store(false, Ordering::SeqCst);
        let seq = flusher
            .append("a".into(), vec![b"3".to_vec()], true)
            .await
            .unwrap();
        assert!(store.durable.load(Ordering::SeqCst) >= seq);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_appends_are_not_queued_behind_a_running_fsync() {
        let store = Arc::new(CountingStore::default());
        let flusher = Flusher::new(store.clone());
        // A plain append: relaxed mode, fsyncs move off the store thread.
        let first = flusher
            .append("doc".into(), vec![b"1".to_vec()], false)
            .await
            .unwrap();
        assert_eq!(
            store.flushes.load(Ordering::SeqCst),
            0,
            "a plain append does not fsync"
        );
        store.hold.store(true, Ordering::SeqCst);
        let flush = tokio::spawn({
            let f = flusher.clone();
            async move { f.flush().await }
        });
        while store.flushes.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The fsync is held open; the next plain append is answered all the same.
        let second = flusher
            .append("doc".into(), vec![b"2".to_vec()], false)
            .await
            .unwrap();
        assert!(second > first);
        assert_eq!(
            store.finished.load(Ordering::SeqCst),
            0,
            "the fsync is still running"
        );
        store.hold.store(false, Ordering::SeqCst);
        flush.await.unwrap().unwrap();
        // A flush after the second append covers it.
        flusher.flush().await.unwrap();
        assert!(store.durable.load(Ordering::SeqCst) >= second);
    }
}
