//! [`Flusher`]: group commit for every room.
//!
//! Why it exists: a room may relay an update only after it is durable, and an fsync costs
//! milliseconds. If every room fsynced on its own, a busy server would spend its disk on
//! fsyncs; instead every caller that wants durability in the same window shares one.
//!
//! The rule that keeps this correct: a caller is answered by a flush that *started after it
//! called*. A flush already running when the caller arrives may have begun before the caller's
//! writes reached sled, so the caller waits for the next one. Flushes are numbered
//! (generations); a caller arriving while generation `n` runs (or after it finished) waits for
//! `n + 1`, and the driver task keeps starting flushes while anyone waits for a generation
//! that has not started yet. One fsync runs at a time and at most one more is pending,
//! whatever the number of callers.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use super::{SharedStore, StoreError};

/// Group-commit front of a [`Store`](super::Store); cheap to clone, share it with every room.
#[derive(Clone)]
pub struct Flusher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.shared.state);
        f.debug_struct("Flusher")
            .field("started", &state.started)
            .field("wanted", &state.wanted)
            .field("running", &state.running)
            .finish()
    }
}

struct Shared {
    store: SharedStore,
    state: Mutex<State>,
    /// The outcome of the most recent finished flush. A watch (latest value only) is enough:
    /// a caller waiting for generation `n` that sees `n + 1` is also covered by it, because
    /// `n + 1` started after `n` finished and so after the caller arrived.
    done: watch::Sender<Outcome>,
}

/// Bookkeeping of generations; a std mutex because it is held for a few instructions and
/// never across an `.await`.
#[derive(Default)]
struct State {
    /// Generations started so far (the running one included).
    started: u64,
    /// Highest generation any caller waits for.
    wanted: u64,
    /// A driver task is alive; it starts generations until `started == wanted`.
    running: bool,
}

#[derive(Clone)]
struct Outcome {
    generation: u64,
    result: Result<(), StoreError>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state is updated with single assignments, so it is consistent even after a panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Flusher {
    /// Wraps `store`; no task is started until the first [`Flusher::flush`].
    pub fn new(store: SharedStore) -> Flusher {
        let (done, _) = watch::channel(Outcome {
            generation: 0,
            result: Ok(()),
        });
        Flusher {
            shared: Arc::new(Shared {
                store,
                state: Mutex::new(State::default()),
                done,
            }),
        }
    }

    /// Returns once every write made before this call is durable (or the flush that should have
    /// made it so failed). Must be called inside a tokio runtime.
    ///
    /// Cancel-safe: dropping the future does not stop the flush other callers wait for, because
    /// the fsync is driven by a separate task.
    pub async fn flush(&self) -> Result<(), StoreError> {
        // Subscribe before registering, so the outcome cannot slip by unseen.
        let mut done = self.shared.done.subscribe();
        let target = {
            let mut state = lock(&self.shared.state);
            let target = state.started + 1;
            state.wanted = state.wanted.max(target);
            if !state.running {
                state.running = true;
                tokio::spawn(drive(Arc::clone(&self.shared)));
            }
            target
        };
        let result = match done.wait_for(|outcome| outcome.generation >= target).await {
            Ok(outcome) => outcome.result.clone(),
            // The sender lives in `Shared`, which `self` keeps alive: cannot happen.
            Err(_) => Err(StoreError::Backend("flusher stopped".into())),
        };
        result
    }
}

/// Starts flushes one after another while callers wait for a generation not yet started.
async fn drive(shared: Arc<Shared>) {
    loop {
        let generation = {
            let mut state = lock(&shared.state);
            if state.started >= state.wanted {
                state.running = false;
                return;
            }
            state.started += 1;
            state.started
        };
        let started_at = Instant::now();
        let store = Arc::clone(&shared.store);
        // fsync blocks for milliseconds: keep it off the runtime's worker threads.
        let result = match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Backend(format!("flush task failed: {e}"))),
        };
        metrics::histogram!("wedsync_store_flush_seconds").record(started_at.elapsed());
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("wedsync_store_flushes_total", "result" => label).increment(1);
        if let Err(e) = &result {
            tracing::error!(error = %e, generation, "store flush failed");
        }
        shared.done.send_replace(Outcome { generation, result });
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
}
