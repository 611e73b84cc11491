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
//! held in memory only: transient stays transient.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use parking_lot::Mutex;
use warren_protocol::{AMQPValue, AmqpError, FieldTable};

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
    let v = message.properties.headers()?.inner().get("x-delay")?;
    let ms = match v {
        AMQPValue::ShortShortInt(i) => *i as i64,
        AMQPValue::ShortShortUInt(i) => *i as i64,
        AMQPValue::ShortInt(i) => *i as i64,
        AMQPValue::ShortUInt(i) => *i as i64,
        AMQPValue::LongInt(i) => *i as i64,
        AMQPValue::LongUInt(i) => *i as i64,
        AMQPValue::LongLongInt(i) => *i,
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok()?,
        _ => return None,
    };
    (ms > 0).then_some(ms as u64)
}

/// The queue name delayed messages of `exchange` are logged under.
pub const LOG_PREFIX: &str = "\u{0}delayed\u{0}";

pub fn log_key(vhost: &str, exchange: &str) -> String {
    crate::queue::log_key(vhost, &format!("{LOG_PREFIX}{exchange}"))
}

/// Where a stored delayed message is in the log (its key and record).
pub type Stored = (String, warren_store::log::Persisted);

struct Delayed {
    due: u64,
    seq: u64,
    exchange: String,
    message: MessageRef,
    stored: Option<Stored>,
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

/// A vhost's delayed messages, earliest due first.
#[derive(Default)]
pub struct DelayedIndex {
    heap: Mutex<BinaryHeap<Reverse<Delayed>>>,
    seq: AtomicU64,
}

impl DelayedIndex {
    pub fn schedule(&self, exchange: &str, message: MessageRef, due: u64, stored: Option<Stored>) {
        let seq = self.seq.fetch_add(1, AtomicOrdering::Relaxed);
        self.heap.lock().push(Reverse(Delayed { due, seq, exchange: exchange.to_owned(), message, stored }));
    }

    /// The messages due by `now` (ms), in due order, with their exchange
    /// and their record in the log, if stored.
    pub fn take_due(&self, now: u64) -> Vec<(String, MessageRef, Option<Stored>)> {
        let mut heap = self.heap.lock();
        let mut out = Vec::new();
        while heap.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Reverse(d) = heap.pop().expect("peeked");
            out.push((d.exchange, d.message, d.stored));
        }
        out
    }

    /// How many wait for exchange `name` (the plugin's `messages_delayed`).
    pub fn count_for(&self, name: &str) -> usize {
        self.heap.lock().iter().filter(|Reverse(d)| d.exchange == name).count()
    }

    pub fn len(&self) -> usize {
        self.heap.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
