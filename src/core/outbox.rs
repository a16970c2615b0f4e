//! The outbound queue of one connection: shared `Bytes` slices waiting for its writer.
//!
//! Owns per-connection backlog accounting (messages and bytes) and the batching of queued
//! slices into one vectored write. Never does I/O: the runtime's writer takes a batch and
//! writes it.

use bytes::Bytes;
use std::collections::VecDeque;

/// Most slices in one vectored write (the kernel's IOV_MAX).
pub const MAX_IOV: usize = 1024;

/// Queued slices of one connection, with counts of the messages and bytes they hold.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<(Bytes, u32)>,
    messages: usize,
    bytes: usize,
}

impl Outbox {
    /// Queues `frames`, a slice holding `messages` whole frames.
    pub fn push(&mut self, frames: Bytes, messages: u32) {
        self.messages += messages as usize;
        self.bytes += frames.len();
        self.queue.push_back((frames, messages));
    }

    /// Messages queued (a run of frames counts each of its frames).
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Moves up to `max_bytes` (at least one slice, at most [`MAX_IOV`]) into `batch`.
    /// Returns `(bytes, messages)` taken. A slice is never split: a frame larger than
    /// `max_bytes` goes out alone.
    pub fn take_batch(&mut self, max_bytes: usize, batch: &mut Vec<Bytes>) -> (usize, usize) {
        let (mut bytes, mut messages) = (0, 0);
        while let Some((front, _)) = self.queue.front() {
            if batch.len() >= MAX_IOV || (bytes > 0 && bytes + front.len() > max_bytes) {
                break;
            }
            // invariant: front() was Some just above.
            let (slice, count) = self.queue.pop_front().expect("front exists");
            bytes += slice.len();
            messages += count as usize;
            batch.push(slice);
        }
        self.bytes -= bytes;
        self.messages -= messages;
        (bytes, messages)
    }

    /// Drops everything queued (the connection is gone); returns `(bytes, messages)` dropped.
    pub fn clear(&mut self) -> (usize, usize) {
        let dropped = (self.bytes, self.messages);
        self.queue.clear();
        self.bytes = 0;
        self.messages = 0;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_byte_limit_and_never_split() {
        let mut o = Outbox::default();
        for _ in 0..10 {
            o.push(Bytes::from(vec![0u8; 100]), 2);
        }
        assert_eq!((o.bytes(), o.messages()), (1000, 20));
        let mut batch = Vec::new();
        assert_eq!(o.take_batch(350, &mut batch), (300, 6));
        assert_eq!(batch.len(), 3);
        assert_eq!((o.bytes(), o.messages()), (700, 14));
        // A slice bigger than the limit still goes out, alone.
        o.push(Bytes::from(vec![0u8; 5000]), 1);
        batch.clear();
        assert_eq!(o.take_batch(10_000, &mut batch), (5700, 15));
        assert!(o.is_empty());
    }

    #[test]
    fn batch_is_capped_at_iov_max() {
        let mut o = Outbox::default();
        for _ in 0..(MAX_IOV + 10) {
            o.push(Bytes::from_static(b"x"), 1);
        }
        let mut batch = Vec::new();
        o.take_batch(usize::MAX, &mut batch);
        assert_eq!(batch.len(), MAX_IOV);
        assert_eq!(o.messages(), 10);
    }
}
