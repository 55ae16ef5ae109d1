//! What a room knows about one connected client, and how it talks to it.
//!
//! Why it exists: the room task must never wait on a client. It pushes encoded frames into the
//! connection's bounded [`Outbox`] without waiting; when the queue is full the client is closed
//! with 1013 instead of having a message silently dropped (a CRDT client resyncs everything it
//! missed on reconnect, so closing is lossless while dropping is not).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::SystemTime;

use bytes::Bytes;

use crate::protocol::close;

/// Process-unique connection id.
pub type ConnId = u64;

/// Why [`Outbox::push`] did not queue a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// `capacity` frames are waiting: the client does not read fast enough.
    Full,
    /// The session has ended; nothing is written any more.
    Gone,
}

/// One connection's outgoing frames and its "close with this code" signal, shared by the room,
/// the revocation map ([`crate::sessions`]) and the connection's task (the only consumer).
///
/// Why not a channel crate: tokio's bounded `mpsc` allocates its channel and a first 32-slot
/// block when it is made (~1.9 KiB per connection, measured with heaptrack, while the queue
/// is empty for almost the whole life of an idle socket) and wakes through a semaphore and an
/// `AtomicWaker` per push; flume's bounded channel queues into a lazily grown `VecDeque` but
/// allocates a hook per asynchronous wait and carries nothing for the close signal, which then
/// needs a second primitive (the `CancellationToken` this replaces locked a mutex on every
/// poll). This is the whole of what the session needs, in one allocation: a `VecDeque` that
/// holds no buffer while empty (it is released when the consumer takes the last frame), the
/// close frame, and the one waker of the connection's task, woken when a frame arrives in an
/// empty queue or when the connection is asked to close. Every operation is one uncontended
/// lock; a burst of pushes wakes the task once.
#[derive(Debug)]
pub struct Outbox {
    /// Set once by [`Outbox::close`]; read without the lock on hot paths.
    closed: AtomicBool,
    /// (`u32`: the allocation then fits a 128-byte malloc chunk, not a 144-byte one.)
    capacity: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    /// The first close code and reason given.
    frame: Option<(u16, String)>,
    /// The consumer's waker.
    waker: Option<Waker>,
    /// The consumer has finished: pushes are refused and nothing is kept.
    gone: bool,
}

impl Outbox {
    /// An outbox holding at most `capacity` frames (at least one).
    pub fn new(capacity: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            closed: AtomicBool::new(false),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without waiting. Frames queued before [`Outbox::close`] are still
    /// written if the close code is not 1013 (e.g. "permission denied" before a 4401); from
    /// the close on, pushes are refused ([`PushError::Gone`]): a revoked or expired client gets
    /// nothing sent after its cut-off, and a closing slow client is not counted again.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut s = self.lock();
        if s.gone || s.frame.is_some() {
            return Err(PushError::Gone);
        }
        if s.queue.len() >= self.capacity as usize {
            return Err(PushError::Full);
        }
        s.queue.push_back(frame);
        // The consumer only waits on an empty queue: one wake per burst.
        if s.queue.len() == 1 {
            if let Some(w) = &s.waker {
                w.wake_by_ref();
            }
        }
        Ok(())
    }

    /// Asks the connection to close with `code` and `reason` (ignored if already closing).
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        let mut s = self.lock();
        if s.frame.is_none() {
            if code == close::TRY_AGAIN {
                // Too slow: what is queued will not be written (the client resyncs on
                // reconnect), so it is not kept until the session ends either.
                s.queue = VecDeque::new();
            }
            s.frame = Some((code, reason.into()));
            self.closed.store(true, Ordering::Release);
            if let Some(w) = &s.waker {
                w.wake_by_ref();
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the connection is closing with `code` (a lock only once it is closing).
    pub fn is_closed_for(&self, code: u16) -> bool {
        self.is_closed() && self.lock().frame.as_ref().is_some_and(|(c, _)| *c == code)
    }

    /// The close code and reason, if closing.
    pub fn frame(&self) -> Option<(u16, String)> {
        self.lock().frame.clone()
    }

    /// Consumer side: the task to wake on a frame in an empty queue or on close. Returns
    /// whether the connection is closing (checked under the same lock, so no wake is lost).
    pub(crate) fn register(&self, waker: &Waker) -> bool {
        let mut s = self.lock();
        match &s.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => s.waker = Some(waker.clone()),
        }
        s.frame.is_some()
    }

    /// Consumer side: the oldest queued frame. The queue's buffer is released with its last
    /// frame, so an idle connection holds none.
    pub(crate) fn pop(&self) -> Option<Bytes> {
        let mut s = self.lock();
        let frame = s.queue.pop_front();
        if frame.is_some() && s.queue.is_empty() {
            s.queue = VecDeque::new();
        }
        frame
    }

    /// Consumer side: the session has ended. Later pushes fail with [`PushError::Gone`], and
    /// the queue and the waker are dropped even while the room or the revocation map still
    /// hold this outbox.
    pub(crate) fn finish(&self) {
        let mut s = self.lock();
        s.gone = true;
        s.queue = VecDeque::new();
        s.waker = None;
    }
}

/// Who a connection is, as proven by its token (or open development mode).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub user: String,
    pub name: Option<String>,
    pub role: Option<String>,
    pub can_edit: bool,
    /// Opted in to durable acknowledgements (`?ack=1`).
    pub ack: bool,
    pub connected_at: SystemTime,
}

/// The room's handle on one connection.
#[derive(Debug, Clone)]
pub struct PeerLink {
    pub outbox: Arc<Outbox>,
}

impl PeerLink {
    /// Queues a frame. Returns false (and closes the connection with 1013 if it was merely
    /// slow) when the frame could not be queued.
    pub fn send(&self, frame: Bytes) -> bool {
        match self.outbox.push(frame) {
            Ok(()) => true,
            Err(PushError::Full) => {
                metrics::counter!("wedsync_slow_consumer_closed_total").increment(1);
                self.outbox.close(
                    close::TRY_AGAIN,
                    "client too slow: outgoing queue full, reconnect to resync",
                );
                false
            }
            Err(PushError::Gone) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_is_bounded_and_holds_no_buffer_when_empty() {
        let o = Outbox::new(2);
        assert_eq!(o.push(Bytes::from_static(b"a")), Ok(()));
        assert_eq!(o.push(Bytes::from_static(b"b")), Ok(()));
        assert_eq!(o.push(Bytes::from_static(b"c")), Err(PushError::Full));
        assert_eq!(o.pop().as_deref(), Some(&b"a"[..]));
        assert_eq!(o.push(Bytes::from_static(b"c")), Ok(()));
        assert_eq!(o.pop().as_deref(), Some(&b"b"[..]));
        assert_eq!(o.pop().as_deref(), Some(&b"c"[..]));
        assert_eq!(o.pop(), None);
        assert_eq!(o.lock().queue.capacity(), 0);
        o.finish();
        assert_eq!(o.push(Bytes::from_static(b"d")), Err(PushError::Gone));
    }

    #[test]
    fn outbox_fits_a_128_byte_chunk() {
        // Arc header (16) + Outbox: one 128-byte malloc chunk per connection.
        assert!(std::mem::size_of::<Outbox>() <= 104);
    }

    #[test]
    fn a_closed_outbox_takes_no_more_frames_and_a_slow_one_drops_its_queue() {
        let o = Outbox::new(4);
        assert_eq!(o.push(Bytes::from_static(b"denied")), Ok(()));
        o.close(4401, "revoked");
        // Queued before the close: still written; pushed after it: refused.
        assert_eq!(
            o.push(Bytes::from_static(b"late edit")),
            Err(PushError::Gone)
        );
        assert_eq!(o.pop().as_deref(), Some(&b"denied"[..]));
        assert_eq!(o.pop(), None);

        let slow = Outbox::new(2);
        let link = PeerLink {
            outbox: slow.clone(),
        };
        assert!(link.send(Bytes::from_static(b"a")));
        assert!(link.send(Bytes::from_static(b"b")));
        assert!(
            !link.send(Bytes::from_static(b"c")),
            "full: closed with 1013"
        );
        assert_eq!(slow.frame().map(|f| f.0), Some(close::TRY_AGAIN));
        assert_eq!(
            slow.lock().queue.capacity(),
            0,
            "the unwritable queue is freed"
        );
        assert_eq!(slow.push(Bytes::from_static(b"d")), Err(PushError::Gone));
    }

    #[test]
    fn first_close_wins() {
        let o = Outbox::new(1);
        assert!(!o.is_closed());
        o.close(4401, "revoked");
        o.close(1000, "");
        assert!(o.is_closed());
        assert_eq!(o.frame(), Some((4401, "revoked".to_string())));
    }
}
