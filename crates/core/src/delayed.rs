//! Delayed delivery: the `x-delayed-message` exchange type, compatible with
//! RabbitMQ's delayed-message plugin. An exchange declared with type
//! `x-delayed-message` routes as its `x-delayed-type` (direct, fanout,
//! topic, headers); a message published to it with an `x-delay` header
//! (ms, > 0) is held in its vhost's index, ordered by due time (one timer
//! for all, no timer per message), and routed when due — to the bindings
//! that exist then, as the plugin does.
//!
//! A persistent message delayed by a durable exchange is written to the
//! message log first, under the pseudo-queue key of its exchange
//! ([`log_key`]), and confirmed once that is on disk; at startup such
//! records are put back in the index (due = published + x-delay). When
//! due, it is routed as a fresh message (its queues record it as usual)
//! and only then is the delayed record acked — after the new records in
//! the log's order, so a crash in between leaves it delayed or delivered,
//! never neither (at worst both: a redelivery). Other delayed messages are
//! written to the spill store (`spill.rs`: no fsync, emptied at startup —
//! transient stays transient). Either way the index keeps ~56 bytes per
//! message (due time, sequence, exchange id, where the content is), never
//! the body; a logged message's content stays in memory only until the log
//! has synced past it, so a message due at once never waits for the disk.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use foldhash::HashMap;
use parking_lot::Mutex;
use warren_protocol::{AMQPValue, AmqpError, FieldTable};
use warren_store::log::Persisted;

use crate::exchange::ExchangeKind;
use crate::message::{Message, MessageRef};

pub const TYPE: &str = "x-delayed-message";

/// The routing kind of an exchange declared as `kind` with `arguments`,
/// and whether it delays (`x-delayed-message` with `x-delayed-type`).
pub fn resolve_kind(kind: &str, arguments: &FieldTable) -> Result<(ExchangeKind, bool), AmqpError> {
    if kind != TYPE {
        return ExchangeKind::parse(kind).map(|k| (k, false));
    }
    let inner = match arguments.inner().get("x-delayed-type") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => String::new(),
    };
    match ExchangeKind::parse(&inner) {
        Ok(k) => Ok((k, true)),
        // The plugin's words.
        Err(_) => Err(AmqpError::precondition("Invalid argument, 'x-delayed-type' must be an existing exchange type")),
    }
}

/// The message's delay in ms (`x-delay` header), if positive.
pub fn delay_of(message: &Message) -> Option<u64> {
    let v = message.header("x-delay")?;
    let ms = match &v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok()?,
        v => crate::arguments::as_int(v)?,
    };
    (ms > 0).then_some(ms as u64)
}

/// The queue name delayed messages of `exchange` are logged under.
pub const LOG_PREFIX: &str = "\u{0}delayed\u{0}";

pub fn log_key(vhost: &str, exchange: &str) -> String {
    crate::queue::log_key(vhost, &format!("{LOG_PREFIX}{exchange}"))
}

/// Where a delayed message's content waits.
pub enum Held {
    /// In memory (no spill store: tests, or it could not be written).
    Memory(MessageRef),
    /// In the spill store (transient: gone after a restart).
    Spilled(u64),
    /// In the message log, under its exchange's pseudo-queue key.
    Logged(Persisted),
}

struct Delayed {
    due: u64,
    seq: u64,
    /// Index into the interned exchange names.
    exchange: u32,
    held: Held,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// A delayed message that is due.
pub struct Due {
    pub exchange: Arc<str>,
    pub held: Held,
    /// A logged message's content while the log may not have it on disk yet.
    pub unsynced: Option<MessageRef>,
}

#[derive(Default)]
struct Inner {
    heap: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
    /// Exchange names, interned (an entry keeps 4 bytes, not a String), with
    /// how many messages wait for each (`messages_delayed`).
    names: Vec<(Arc<str>, usize)>,
    by_name: HashMap<Arc<str>, u32>,
    /// Logged messages whose record may not be written yet: their content,
    /// by sequence number, until the log has synced past them (in log order).
    unsynced: HashMap<u64, MessageRef>,
    unsynced_order: VecDeque<(u64, u64)>,
}

/// A vhost's delayed messages, earliest due first. An entry is ~56 bytes:
/// the content waits in the message log (persistent on a durable exchange)
/// or in the spill store (the rest), not in memory.
#[derive(Default)]
pub struct DelayedIndex {
    inner: Mutex<Inner>,
}

impl DelayedIndex {
    /// Holds a message until `due`. A logged one (`log_end`: where its
    /// record ends in the log) keeps its content in memory until the log
    /// has synced that far.
    ///
    /// Returns true when the message is due before every other one (or is
    /// the first), or is the first whose content waits for the log: the
    /// broker's delay timer sleeps until the earliest due time (polling
    /// only while contents wait) and must look again
    /// ([`Hooks::on_earlier_due`](crate::hooks::Hooks::on_earlier_due)).
    pub fn schedule(&self, exchange: &str, held: Held, due: u64, unsynced: Option<(u64, MessageRef)>) -> bool {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let exchange = match inner.by_name.get(exchange) {
            Some(i) => *i,
            None => {
                let name: Arc<str> = exchange.into();
                inner.names.push((name.clone(), 0));
                let i = (inner.names.len() - 1) as u32;
                inner.by_name.insert(name, i);
                i
            }
        };
        inner.names[exchange as usize].1 += 1;
        inner.seq += 1;
        let seq = inner.seq;
        // The timer polls while contents wait for the log: wake it for the
        // first one.
        let mut wake = unsynced.is_some() && inner.unsynced_order.is_empty();
        if let Some((end, message)) = unsynced {
            inner.unsynced.insert(seq, message);
            inner.unsynced_order.push_back((end, seq));
        }
        wake |= inner.heap.peek().is_none_or(|Reverse(d)| due < d.due);
        inner.heap.push(Reverse(Delayed { due, seq, exchange, held }));
        drop(guard);
        wake
    }

    /// Lets go of the content of logged messages now on disk (`synced`).
    pub fn settle(&self, synced: u64) {
        let mut inner = self.inner.lock();
        while inner.unsynced_order.front().is_some_and(|(end, _)| *end <= synced) {
            let (_, seq) = inner.unsynced_order.pop_front().expect("front exists");
            inner.unsynced.remove(&seq);
        }
    }

    /// Up to `max` messages due by `now` (ms), in due order.
    pub fn take_due(&self, now: u64, max: usize) -> Vec<Due> {
        let mut inner = self.inner.lock();
        let mut out = Vec::new();
        while out.len() < max && inner.heap.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Reverse(d) = inner.heap.pop().expect("peeked");
            let (name, n) = &mut inner.names[d.exchange as usize];
            *n -= 1;
            let exchange = name.clone();
            let unsynced = inner.unsynced.remove(&d.seq);
            out.push(Due { exchange, held: d.held, unsynced });
        }
        out
    }

    /// When the next message is due, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.inner.lock().heap.peek().map(|Reverse(d)| d.due)
    }

    /// Whether some logged message's content is still held until the log
    /// syncs past it (`settle`).
    pub fn has_unsynced(&self) -> bool {
        !self.inner.lock().unsynced_order.is_empty()
    }

    /// How many wait for exchange `name` (the plugin's `messages_delayed`).
    pub fn count_for(&self, name: &str) -> usize {
        let inner = self.inner.lock();
        inner.by_name.get(name).map_or(0, |i| inner.names[*i as usize].1)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_in_order_counted_per_exchange_and_unsynced_content_kept() {
        let idx = DelayedIndex::default();
        idx.schedule("a", Held::Spilled(1), 30, None);
        idx.schedule("b", Held::Spilled(2), 10, None);
        let p = Persisted { msg_id: 1, segment: 0, offset: 0, end: 100 };
        let m: MessageRef = Arc::new(Message::with_props(
            "a".into(),
            "k".into(),
            Default::default(),
            Default::default(),
            Default::default(),
        ));
        idx.schedule("a", Held::Logged(p), 20, Some((100, m)));
        assert_eq!((idx.count_for("a"), idx.count_for("b"), idx.len()), (2, 1, 3));
        assert_eq!(idx.next_due(), Some(10));
        let first = idx.take_due(25, 1);
        assert_eq!(first.len(), 1);
        assert_eq!(&*first[0].exchange, "b");
        let second = idx.take_due(25, 10);
        assert!(matches!(second[0].held, Held::Logged(_)) && second[0].unsynced.is_some());
        assert_eq!(idx.count_for("a"), 1);
        idx.schedule("a", Held::Logged(p), 40, Some((200, second.into_iter().next().unwrap().unsynced.unwrap())));
        idx.settle(199);
        assert_eq!(idx.inner.lock().unsynced.len(), 1);
        idx.settle(200);
        assert_eq!(idx.inner.lock().unsynced.len(), 0);
        assert_eq!(idx.take_due(100, 10).len(), 2);
        assert!(idx.is_empty());
    }
}
