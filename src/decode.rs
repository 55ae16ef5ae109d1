//! Bounded decoding of document updates sent by clients (WebSocket frames and HTTP bodies).
//!
//! Why it exists: checking an update means decoding it and applying it to a scratch document
//! ([`crate::protocol::decode_update_checked`]), which is the one step whose cost a client
//! controls. Small updates are checked inline (cheaper than a thread hop). Large ones run on
//! the blocking pool, and two limits keep that pool from being turned against the server:
//! - `decode_timeout`: the client waits at most this long for its update to be checked; over
//!   it, the update is refused (WebSocket close 1007, HTTP 400).
//! - `max_parallel_decodes`: a thread cannot be stopped, so a timed-out check keeps running
//!   to its end. Without a cap, a client that reconnects and sends another slow update every
//!   time it is refused would start thread after thread (tokio allows 512), each burning a
//!   core. Each offloaded check holds a permit until it has *finished*, not until its caller
//!   gave up, so at most this many run at once; the others wait their turn (and the
//!   connection that sent them reads nothing meanwhile, which pushes back through TCP).
//!
//! One [`Decoder`] serves the whole server, so the cap is global.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::Limits;

/// Why an update was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a well-formed v1 update (or yrs refuses it).
    #[error("{reason}")]
    Invalid { raw: Vec<u8>, reason: String },
    /// The check took longer than `decode_timeout`.
    #[error("decoding took longer than {0:?}")]
    TimedOut(Duration),
    /// The check could not run (its thread panicked or the runtime is shutting down).
    #[error("decoder failed: {0}")]
    Failed(String),
}

/// The server's update checker: inline for small updates, otherwise on the blocking pool under
/// a time limit and a global cap on concurrent checks.
#[derive(Debug)]
pub struct Decoder {
    inline_max: usize,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

impl Decoder {
    pub fn new(limits: &Limits) -> Decoder {
        Decoder {
            inline_max: limits.decode_inline_max_bytes,
            timeout: limits.decode_timeout,
            permits: Arc::new(Semaphore::new(limits.max_parallel_decodes.max(1))),
        }
    }

    /// Checks `raw` as a v1 update and returns it with its decoded form.
    pub async fn decode(&self, raw: Vec<u8>) -> Result<(Vec<u8>, yrs::Update), DecodeError> {
        if raw.len() <= self.inline_max {
            return match crate::protocol::decode_update_checked(&raw) {
                Ok(decoded) => Ok((raw, decoded)),
                Err(reason) => Err(DecodeError::Invalid { raw, reason }),
            };
        }
        let (raw, checked) = self
            .offload(move || {
                let checked = crate::protocol::decode_update_checked(&raw);
                (raw, checked)
            })
            .await?;
        match checked {
            Ok(decoded) => Ok((raw, decoded)),
            Err(reason) => Err(DecodeError::Invalid { raw, reason }),
        }
    }

    /// Runs `check` on the blocking pool once a permit is free; the permit is released when
    /// `check` returns, even if the caller stopped waiting at the time limit.
    async fn offload<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, DecodeError> {
        let waited_from = tokio::time::Instant::now();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| DecodeError::Failed(e.to_string()))?;
        metrics::histogram!("wedsync_decode_wait_seconds").record(waited_from.elapsed());
        let started = tokio::time::Instant::now();
        let job = tokio::task::spawn_blocking(move || {
            let out = check();
            drop(permit);
            out
        });
        match tokio::time::timeout(self.timeout, job).await {
            Err(_) => {
                metrics::counter!("wedsync_decode_timeouts_total").increment(1);
                Err(DecodeError::TimedOut(self.timeout))
            }
            Ok(Err(join)) => Err(DecodeError::Failed(join.to_string())),
            Ok(Ok(out)) => {
                metrics::histogram!("wedsync_offloaded_decode_seconds").record(started.elapsed());
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn decoder(cap: usize, timeout: Duration) -> Arc<Decoder> {
        Arc::new(Decoder::new(&Limits {
            decode_inline_max_bytes: 0,
            decode_timeout: timeout,
            max_parallel_decodes: cap,
            ..Limits::default()
        }))
    }

    /// Tracks how many checks run at once.
    #[derive(Default)]
    struct Gauge {
        now: AtomicUsize,
        max: AtomicUsize,
    }

    impl Gauge {
        fn run(&self, hold: Duration) {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(hold);
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_checks_run_at_once_than_the_cap() {
        let d = decoder(2, Duration::from_secs(30));
        let gauge = Arc::new(Gauge::default());
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                let (d, gauge) = (d.clone(), gauge.clone());
                tokio::spawn(async move {
                    d.offload(move || gauge.run(Duration::from_millis(30)))
                        .await
                        .unwrap()
                })
            })
            .collect();
        for j in jobs {
            j.await.unwrap();
        }
        assert_eq!(gauge.max.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timed_out_check_keeps_its_permit_until_it_has_finished() {
        let d = decoder(1, Duration::from_millis(50));
        let gauge = Arc::new(Gauge::default());
        let g = gauge.clone();
        let slow = d.offload(move || g.run(Duration::from_millis(400))).await;
        assert!(matches!(slow, Err(DecodeError::TimedOut(_))), "{slow:?}");
        // The slow check still runs: the next one waits for it instead of running beside it.
        let g = gauge.clone();
        let next = d
            .offload(move || g.now.load(Ordering::SeqCst))
            .await
            .expect("the next check runs once the slow one has finished");
        assert_eq!(
            next, 0,
            "the next check ran while the timed-out one was running"
        );
        assert_eq!(gauge.max.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn updates_are_checked_and_garbage_is_refused_with_its_bytes() {
        use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        t.push(&mut doc.transact_mut(), "hello");
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        for inline_max in [0, usize::MAX] {
            let d = Decoder::new(&Limits {
                decode_inline_max_bytes: inline_max,
                ..Limits::default()
            });
            let (raw, decoded) = d.decode(update.clone()).await.unwrap();
            assert_eq!(raw, update);
            let copy = Doc::new();
            copy.transact_mut().apply_update(decoded).unwrap();
            let text = copy.get_or_insert_text("t");
            assert_eq!(text.get_string(&copy.transact()), "hello");
            let garbage = vec![0xff; 6];
            match d.decode(garbage.clone()).await {
                Err(DecodeError::Invalid { raw, .. }) => assert_eq!(raw, garbage),
                other => panic!("garbage accepted: {other:?}"),
            }
        }
    }
}
