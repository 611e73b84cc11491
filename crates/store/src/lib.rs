//! Message storage for Warren's queues.
//!
//! A queue keeps its ready messages in a [`QueueStore`]: an ordered log in
//! which every message carries the sequence number it was enqueued with.
//! Requeued messages go back to the place their sequence number gives them,
//! which is how RabbitMQ restores order after a consumer goes away.
//!
//! [`MemoryStore`] is the in-memory implementation. The on-disk segment log
//! implements the same trait and passes the same [`conformance`] suite.

use std::collections::VecDeque;

/// One message in a queue's store.
#[derive(Debug, Clone)]
pub struct Entry<M> {
    /// Position in the queue, unique and increasing per queue.
    pub seq: u64,
    pub message: M,
    /// Whether the message was delivered before (the `redelivered` flag).
    pub redelivered: bool,
    /// How many times it has been delivered.
    pub delivery_count: u32,
}

/// The ready messages of one queue, in order.
pub trait QueueStore<M>: Send {
    /// Appends a new message at the tail and returns its entry's sequence.
    fn push(&mut self, message: M) -> u64;
    /// Takes the message at the head.
    fn pop(&mut self) -> Option<Entry<M>>;
    /// Looks at the message at the head.
    fn peek(&self) -> Option<&Entry<M>>;
    /// Puts a previously popped entry back at the place its sequence gives it.
    fn requeue(&mut self, entry: Entry<M>);
    /// Number of ready messages.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Drops every ready message; returns how many there were.
    fn purge(&mut self) -> usize;
}

/// Ready messages held in memory, ordered by sequence.
#[derive(Debug)]
pub struct MemoryStore<M> {
    ready: VecDeque<Entry<M>>,
    /// Sequence given to the next pushed message.
    next_seq: u64,
}

impl<M> Default for MemoryStore<M> {
    fn default() -> Self {
        MemoryStore { ready: VecDeque::new(), next_seq: 1 }
    }
}

impl<M: Send> QueueStore<M> for MemoryStore<M> {
    fn push(&mut self, message: M) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready.push_back(Entry { seq, message, redelivered: false, delivery_count: 0 });
        seq
    }

    fn pop(&mut self) -> Option<Entry<M>> {
        self.ready.pop_front()
    }

    fn peek(&self) -> Option<&Entry<M>> {
        self.ready.front()
    }

    fn requeue(&mut self, entry: Entry<M>) {
        // Requeues usually belong at the head (the oldest unacked come back
        // first), so check the front before searching.
        match self.ready.front() {
            None => self.ready.push_front(entry),
            Some(f) if entry.seq < f.seq => self.ready.push_front(entry),
            _ => {
                let at = self.ready.partition_point(|e| e.seq < entry.seq);
                debug_assert!(
                    self.ready.get(at).is_none_or(|e| e.seq != entry.seq),
                    "sequence {} requeued while still ready",
                    entry.seq
                );
                self.ready.insert(at, entry);
            }
        }
    }

    fn len(&self) -> usize {
        self.ready.len()
    }

    fn purge(&mut self) -> usize {
        let n = self.ready.len();
        self.ready.clear();
        n
    }
}

/// The behaviour every [`QueueStore`] implementation must show. Each
/// implementation's tests call every function here.
pub mod conformance {
    use super::QueueStore;

    pub fn fifo<S: QueueStore<u32>>(mut s: S) {
        for i in 0..100 {
            s.push(i);
        }
        assert_eq!(s.len(), 100);
        for i in 0..100 {
            assert_eq!(s.pop().unwrap().message, i);
        }
        assert!(s.pop().is_none());
    }

    pub fn requeue_restores_order<S: QueueStore<u32>>(mut s: S) {
        for i in 0..10 {
            s.push(i);
        }
        let taken: Vec<_> = (0..6).map(|_| s.pop().unwrap()).collect();
        // Give back out of order; the store must restore sequence order.
        for mut e in taken.into_iter().rev().filter(|e| e.message % 2 == 0) {
            e.redelivered = true;
            s.requeue(e);
        }
        let order: Vec<_> = std::iter::from_fn(|| s.pop()).map(|e| (e.message, e.redelivered)).collect();
        assert_eq!(order, vec![(0, true), (2, true), (4, true), (6, false), (7, false), (8, false), (9, false)]);
    }

    pub fn requeue_into_middle<S: QueueStore<u32>>(mut s: S) {
        for i in 0..5 {
            s.push(i);
        }
        let a = s.pop().unwrap();
        let b = s.pop().unwrap();
        s.requeue(b);
        s.push(5);
        s.requeue(a);
        let order: Vec<_> = std::iter::from_fn(|| s.pop()).map(|e| e.message).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4, 5]);
    }

    pub fn purge_empties<S: QueueStore<u32>>(mut s: S) {
        for i in 0..7 {
            s.push(i);
        }
        assert_eq!(s.purge(), 7);
        assert!(s.is_empty());
        assert!(s.peek().is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_conforms() {
        conformance::fifo(MemoryStore::default());
        conformance::requeue_restores_order(MemoryStore::default());
        conformance::requeue_into_middle(MemoryStore::default());
        conformance::purge_empties(MemoryStore::default());
    }
}
