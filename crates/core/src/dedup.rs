//! Message deduplication, with the names LavinMQ and RabbitMQ's
//! message-deduplication plugin use. An exchange or a queue declared with
//! `x-message-deduplication: true` (or an exchange of the plugin's type
//! `x-message-deduplication`, which routes as fanout) remembers the value of
//! each message's `x-deduplication-header` header (another header if the
//! `x-deduplication-header` argument names one) and drops a later message
//! carrying a value it still remembers: an exchange routes it nowhere, a
//! queue does not enqueue it (other queues still get their copy).
//!
//! The cache is bounded: `x-cache-size` entries (default [`DEFAULT_SIZE`]),
//! the oldest forgotten first when it is full; with `x-cache-ttl` (ms, or the
//! message's own `x-cache-ttl` header) an entry is forgotten after that long.
//! Messages without the header are never dropped. The cache is in memory
//! only: after a restart every value is new again.

use std::collections::VecDeque;

use foldhash::HashMap;
use warren_protocol::{AMQPValue, FieldTable};

use crate::arguments::int_arg;
use crate::message::Message;

/// The plugin's exchange type (routes as fanout).
pub const TYPE: &str = "x-message-deduplication";
/// The header holding a message's deduplication value, by default.
pub const HEADER: &str = "x-deduplication-header";
/// Entries remembered when `x-cache-size` is not given.
pub const DEFAULT_SIZE: usize = 100_000;

/// Whether `arguments` ask for deduplication (`x-message-deduplication: true`).
pub fn wanted(arguments: &FieldTable) -> bool {
    matches!(arguments.inner().get("x-message-deduplication"), Some(AMQPValue::Boolean(true)))
}

/// A message's deduplication value as bytes that compare equal exactly when
/// the values do (type tag first: the string "1" and the integer 1 differ).
fn key_of(v: &AMQPValue) -> Vec<u8> {
    let mut key = Vec::new();
    match v {
        AMQPValue::LongString(s) => {
            key.push(b's');
            key.extend_from_slice(s.as_bytes());
        }
        AMQPValue::ShortString(s) => {
            key.push(b's');
            key.extend_from_slice(s.as_str().as_bytes());
        }
        AMQPValue::ByteArray(b) => {
            key.push(b'b');
            key.extend_from_slice(b.as_slice());
        }
        other => match crate::arguments::as_int(other) {
            Some(i) => {
                key.push(b'i');
                key.extend_from_slice(&i.to_le_bytes());
            }
            None => {
                key.push(b'?');
                key.extend_from_slice(format!("{other:?}").as_bytes());
            }
        },
    }
    key
}

/// One exchange's or queue's memory of the values it has seen.
pub struct Dedup {
    header: String,
    size: usize,
    ttl: Option<u64>,
    /// Value → (forgotten at, ms or `u64::MAX`; generation of its insert).
    seen: HashMap<Vec<u8>, (u64, u64)>,
    /// Insertion order, for forgetting the oldest; entries whose generation
    /// no longer matches `seen` are stale and skipped.
    order: VecDeque<(Vec<u8>, u64)>,
    generation: u64,
}

impl Dedup {
    /// The cache `arguments` describe, if they ask for one (`forced`: the
    /// plugin's exchange type, which always deduplicates).
    pub fn from_arguments(arguments: &FieldTable, forced: bool) -> Option<Dedup> {
        if !forced && !wanted(arguments) {
            return None;
        }
        let header = match arguments.inner().get(HEADER) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
            _ => HEADER.to_owned(),
        };
        Some(Dedup {
            header,
            size: int_arg(arguments, "x-cache-size").filter(|n| *n > 0).map_or(DEFAULT_SIZE, |n| n as usize),
            ttl: int_arg(arguments, "x-cache-ttl").filter(|n| *n > 0).map(|n| n as u64),
            seen: HashMap::default(),
            order: VecDeque::new(),
            generation: 0,
        })
    }

    /// Entries remembered now (expired ones included until they are met).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether `message` repeats a value still remembered; if not, its
    /// value (if it has one) is remembered from now on.
    pub fn is_duplicate(&mut self, message: &Message, now: u64) -> bool {
        let Some(value) = message.header(self.header.as_str()) else { return false };
        let key = key_of(&value);
        if let Some((until, _)) = self.seen.get(&key) {
            if *until > now {
                return true;
            }
        }
        let ttl = message.header("x-cache-ttl").as_ref().and_then(crate::arguments::as_int).filter(|t| *t > 0);
        let until = match ttl.map(|t| t as u64).or(self.ttl) {
            Some(t) => now.saturating_add(t),
            None => u64::MAX,
        };
        self.generation += 1;
        self.seen.insert(key.clone(), (until, self.generation));
        self.order.push_back((key, self.generation));
        self.trim(now);
        false
    }

    /// Forgets the oldest entries beyond the size, and expired or stale
    /// entries at the front; rebuilds the order when stale entries pile up.
    fn trim(&mut self, now: u64) {
        while let Some((key, generation)) = self.order.front() {
            let live = self.seen.get(key).filter(|(_, g)| g == generation).copied();
            match live {
                None => {
                    self.order.pop_front();
                }
                Some((until, _)) if until <= now || self.seen.len() > self.size => {
                    let (key, _) = self.order.pop_front().expect("front exists");
                    self.seen.remove(&key);
                }
                Some(_) => break,
            }
        }
        if self.order.len() > 2 * self.seen.len() + 64 {
            let seen = &self.seen;
            self.order.retain(|(k, g)| seen.get(k).is_some_and(|(_, live)| live == g));
        }
        debug_assert!(self.seen.len() <= self.size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic::AMQPProperties;
    use warren_protocol::{LongString, ShortString};

    fn msg(value: Option<&str>, ttl: Option<i64>) -> Message {
        let mut h = FieldTable::default();
        if let Some(v) = value {
            h.insert(ShortString::from(HEADER), AMQPValue::LongString(LongString::from(v)));
        }
        if let Some(t) = ttl {
            h.insert(ShortString::from("x-cache-ttl"), AMQPValue::LongLongInt(t));
        }
        let props = AMQPProperties::default().with_headers(h);
        let raw = warren_protocol::content::encode_properties(&props);
        Message::new("x".into(), "rk".into(), raw, props, bytes::Bytes::new())
    }

    fn cache(size: Option<i64>, ttl: Option<i64>) -> Dedup {
        let mut a = FieldTable::default();
        a.insert(ShortString::from("x-message-deduplication"), AMQPValue::Boolean(true));
        if let Some(s) = size {
            a.insert(ShortString::from("x-cache-size"), AMQPValue::LongLongInt(s));
        }
        if let Some(t) = ttl {
            a.insert(ShortString::from("x-cache-ttl"), AMQPValue::LongLongInt(t));
        }
        Dedup::from_arguments(&a, false).expect("asked for")
    }

    #[test]
    fn repeats_are_duplicates_until_forgotten() {
        let mut d = cache(Some(2), None);
        assert!(!d.is_duplicate(&msg(Some("a"), None), 0));
        assert!(d.is_duplicate(&msg(Some("a"), None), 1));
        assert!(!d.is_duplicate(&msg(None, None), 1));
        assert!(!d.is_duplicate(&msg(None, None), 1));
        assert!(!d.is_duplicate(&msg(Some("b"), None), 2));
        assert!(!d.is_duplicate(&msg(Some("c"), None), 3)); // "a" forgotten: size 2
        assert_eq!(d.len(), 2);
        assert!(!d.is_duplicate(&msg(Some("a"), None), 4));
        assert!(d.is_duplicate(&msg(Some("c"), None), 5));
    }

    #[test]
    fn ttl_from_arguments_and_from_the_message() {
        let mut d = cache(None, Some(100));
        assert!(!d.is_duplicate(&msg(Some("a"), None), 0));
        assert!(d.is_duplicate(&msg(Some("a"), None), 99));
        assert!(!d.is_duplicate(&msg(Some("a"), None), 100));
        assert!(!d.is_duplicate(&msg(Some("b"), Some(1000)), 100));
        assert!(d.is_duplicate(&msg(Some("b"), None), 900));
        // Many re-inserts of expiring values keep the order bounded.
        for i in 0..10_000u64 {
            d.is_duplicate(&msg(Some("c"), None), 2000 + i * 200);
        }
        assert!(d.order.len() <= 2 * d.seen.len() + 64);
    }
}
