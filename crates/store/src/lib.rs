//! Message storage for Warren's queues.
//!
//! A queue keeps its ready messages in a [`QueueStore`]: an ordered log in
//! which every message carries the sequence number it was enqueued with.
//! Requeued messages go back to the place their sequence number gives them,
//! which is how RabbitMQ restores order after a consumer goes away.
//!
//! [`MemoryStore`] is the in-memory implementation; [`PriorityStore`] keeps
//! one per priority level for `x-max-priority` queues. Every implementation
//! passes the same [`conformance`] suite.

pub mod log;
pub mod memory_log;
pub mod replica;

use std::collections::VecDeque;

/// Where persistent messages are recorded: the on-disk [`log::MessageLog`]
/// or the in-memory [`memory_log::MemoryMessageStore`]. Both keep the same
/// records with the same meaning (see `docs/storage.md`) and pass the same
/// conformance suite (`memory_log::tests`).
pub trait MessageStore: Send + Sync {
    /// Records a message enqueued in `queues`; returns where it lives and the
    /// position that must be synced before it is confirmed. The body is
    /// given in parts (the frames a big one arrived in), written in order.
    fn publish_parts(
        &self,
        queues: &[&str],
        published_at: u64,
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[bytes::Bytes],
    ) -> (log::Persisted, u64);
    /// [`MessageStore::publish_parts`] with the body in one slice (copied
    /// once more: for tests and tools).
    fn publish(
        &self,
        queues: &[&str],
        published_at: u64,
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
    ) -> (log::Persisted, u64) {
        self.publish_parts(
            queues,
            published_at,
            exchange,
            routing_key,
            properties,
            &[bytes::Bytes::copy_from_slice(body)],
        )
    }
    /// The message left `queue` for good.
    fn ack(&self, queue: &str, m: log::Persisted);
    /// The message was delivered from `queue` for the `count`-th time.
    fn delivered(&self, queue: &str, m: log::Persisted, count: u32);
    /// Reads a message back by its [`log::Persisted::location`] (a queue
    /// paged it out of memory).
    fn read(&self, location: u64) -> std::io::Result<log::ReadBack>;
    /// A message at `location` left a queue that was deleted (its
    /// queue-deleted record already says so): only the segment's live count
    /// drops, nothing is written — a deleted queue's paged backlog goes
    /// without reading it back.
    fn forget(&self, location: u64);
    /// A queue was deleted; returns the position to sync.
    fn queue_deleted(&self, queue: &str) -> u64;
    /// Position known durable.
    fn synced(&self) -> u64;
    /// Position of everything recorded so far (durable once `synced`
    /// reaches it).
    fn appended(&self) -> u64 {
        self.synced()
    }
    /// Called with the new position after every sync.
    fn on_sync(&self, f: Box<dyn Fn(u64) + Send>);
    /// Makes everything recorded so far durable and stops.
    fn close(&self);
    /// [`MessageStore::close`], then waits until the store's own threads
    /// are done with its files (so they may be removed).
    fn close_and_join(&self) {
        self.close();
    }
    /// Whether the last write or sync failed (disk full, I/O error): the
    /// broker raises its disk alarm while this holds.
    fn is_failed(&self) -> bool;
    /// Reports every later change to the store's files, in order
    /// (replication); a store without files has none to report.
    fn on_file_op(&self, _observe: log::FileOpObserver) {}
}

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
    /// Priority level in a priority queue (0 elsewhere).
    pub priority: u8,
    /// When it expires, in milliseconds since the Unix epoch (TTL).
    pub expires_at: Option<u64>,
}

impl<M> Entry<M> {
    /// A new entry at `seq`; a recovered delivery count marks it redelivered.
    pub fn new(seq: u64, message: M, meta: Meta) -> Self {
        Entry {
            seq,
            message,
            redelivered: meta.delivery_count > 0,
            delivery_count: meta.delivery_count,
            priority: meta.priority,
            expires_at: meta.expires_at,
        }
    }
}

/// What a publish says about a new entry besides the message itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    pub priority: u8,
    pub expires_at: Option<u64>,
    /// Deliveries before this push (recovery after a restart); a non-zero
    /// count marks the entry redelivered.
    pub delivery_count: u32,
}

/// The ready messages of one queue, in order.
pub trait QueueStore<M>: Send {
    /// Appends a new message at the tail and returns its entry's sequence.
    fn push(&mut self, message: M, meta: Meta) -> u64;
    /// Takes the message at the head.
    fn pop(&mut self) -> Option<Entry<M>>;
    /// Looks at the message at the head.
    fn peek(&self) -> Option<&Entry<M>>;
    /// Puts a previously popped entry back at the place its sequence gives it.
    fn requeue(&mut self, entry: Entry<M>);
    /// Number of ready messages.
    fn len(&self) -> usize;
    /// Number of ready messages at one priority level (all of them in a
    /// store without levels).
    fn level_len(&self, level: u8) -> usize {
        let _ = level;
        self.len()
    }
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
    fn push(&mut self, message: M, meta: Meta) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready.push_back(Entry::new(seq, message, meta));
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

/// A priority queue (`x-max-priority`): one FIFO per level, highest first.
#[derive(Debug)]
pub struct PriorityStore<M> {
    /// `levels[p]` holds the entries of priority `p`.
    levels: Vec<MemoryStore<M>>,
    next_seq: u64,
    len: usize,
}

impl<M> PriorityStore<M> {
    /// Levels 0..=max_priority.
    pub fn new(max_priority: u8) -> Self {
        PriorityStore {
            levels: (0..=max_priority as usize).map(|_| MemoryStore::default()).collect(),
            next_seq: 1,
            len: 0,
        }
    }
}

impl<M: Send> QueueStore<M> for PriorityStore<M> {
    fn push(&mut self, message: M, mut meta: Meta) -> u64 {
        meta.priority = meta.priority.min((self.levels.len() - 1) as u8);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.len += 1;
        self.levels[meta.priority as usize].ready.push_back(Entry::new(seq, message, meta));
        seq
    }

    fn pop(&mut self) -> Option<Entry<M>> {
        let e = self.levels.iter_mut().rev().find_map(|l| l.ready.pop_front())?;
        self.len -= 1;
        Some(e)
    }

    fn peek(&self) -> Option<&Entry<M>> {
        self.levels.iter().rev().find_map(|l| l.ready.front())
    }

    fn requeue(&mut self, entry: Entry<M>) {
        let level = (entry.priority as usize).min(self.levels.len() - 1);
        self.len += 1;
        self.levels[level].requeue(entry);
    }

    fn len(&self) -> usize {
        self.len
    }

    fn level_len(&self, level: u8) -> usize {
        self.levels.get(level as usize).map_or(0, |l| l.ready.len())
    }

    fn purge(&mut self) -> usize {
        let n = self.len;
        for l in &mut self.levels {
            l.purge();
        }
        self.len = 0;
        n
    }
}

/// The behaviour every [`QueueStore`] implementation must show. Each
/// implementation's tests call every function here.
pub mod conformance {
    use super::{Meta, QueueStore};

    pub fn fifo<S: QueueStore<u32>>(mut s: S) {
        for i in 0..100 {
            s.push(i, Meta::default());
        }
        assert_eq!(s.len(), 100);
        for i in 0..100 {
            assert_eq!(s.pop().unwrap().message, i);
        }
        assert!(s.pop().is_none());
    }

    pub fn requeue_restores_order<S: QueueStore<u32>>(mut s: S) {
        for i in 0..10 {
            s.push(i, Meta::default());
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
            s.push(i, Meta::default());
        }
        let a = s.pop().unwrap();
        let b = s.pop().unwrap();
        s.requeue(b);
        s.push(5, Meta::default());
        s.requeue(a);
        let order: Vec<_> = std::iter::from_fn(|| s.pop()).map(|e| e.message).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4, 5]);
    }

    pub fn keeps_meta<S: QueueStore<u32>>(mut s: S) {
        s.push(1, Meta { priority: 0, expires_at: Some(42), delivery_count: 0 });
        let e = s.pop().unwrap();
        assert_eq!((e.message, e.expires_at, e.delivery_count), (1, Some(42), 0));
        s.requeue(e);
        assert_eq!(s.peek().unwrap().expires_at, Some(42));
    }

    pub fn purge_empties<S: QueueStore<u32>>(mut s: S) {
        for i in 0..7 {
            s.push(i, Meta::default());
        }
        assert_eq!(s.purge(), 7);
        assert!(s.is_empty());
        assert!(s.peek().is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all<S: QueueStore<u32>>(new: impl Fn() -> S) {
        conformance::fifo(new());
        conformance::requeue_restores_order(new());
        conformance::requeue_into_middle(new());
        conformance::keeps_meta(new());
        conformance::purge_empties(new());
    }

    #[test]
    fn memory_store_conforms() {
        all(MemoryStore::default);
    }

    #[test]
    fn priority_store_conforms() {
        // With every message at one level it must behave as a plain FIFO.
        all(|| PriorityStore::new(5));
    }

    #[test]
    fn priority_store_serves_highest_first_fifo_within_level() {
        let mut s = PriorityStore::new(9);
        for (m, p) in [(1, 1), (2, 5), (3, 1), (4, 9), (5, 5), (6, 200)] {
            s.push(m, Meta { priority: p, expires_at: None, delivery_count: 0 });
        }
        let order: Vec<_> = std::iter::from_fn(|| s.pop()).map(|e| e.message).collect();
        // 200 is capped to the maximum, 9, and queued after 4.
        assert_eq!(order, vec![4, 6, 2, 5, 1, 3]);
    }

    #[test]
    fn priority_store_requeues_into_its_level() {
        let mut s = PriorityStore::new(3);
        s.push(1, Meta { priority: 3, expires_at: None, delivery_count: 0 });
        s.push(2, Meta { priority: 0, expires_at: None, delivery_count: 0 });
        let hi = s.pop().unwrap();
        s.push(3, Meta { priority: 3, expires_at: None, delivery_count: 0 });
        s.requeue(hi);
        let order: Vec<_> = std::iter::from_fn(|| s.pop()).map(|e| e.message).collect();
        assert_eq!(order, vec![1, 3, 2]);
        assert!(s.is_empty());
    }
}
