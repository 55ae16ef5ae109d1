//! Per-connection token buckets for document updates and awareness messages.
//!
//! Why it exists: every document update costs a store append and a share of an fsync, and
//! every awareness message a relay to every peer; one misbehaving client must not be able to
//! make the room do unbounded work. Over the limit the connection is closed with 1008: nothing
//! is lost, a y-websocket client resyncs on reconnect.

use tokio::time::Instant;

/// A token bucket: `burst` tokens at most, refilled at `rate` tokens per second. The rate and
/// the burst are the caller's (the configured limits), not stored: every connection keeps two
/// buckets for its whole life.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: f64) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens if there are enough; false (and nothing taken) otherwise.
    pub fn take(&mut self, rate: f64, burst: f64, n: f64) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let mut b = TokenBucket::new(5.0);
        let mut take = || b.take(10.0, 5.0, 1.0);
        for _ in 0..5 {
            assert!(take());
        }
        assert!(!take());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(take());
        assert!(!take());
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            assert!(take());
        }
        assert!(!take());
    }
}
