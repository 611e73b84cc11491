//! A message's exchange and routing key, kept inline when they are short.
//!
//! A publisher repeats the same two names, so a message used to share them
//! (`Arc<str>`) with the publisher's channel. The reference counts then
//! moved between cores for every message: incremented where it is
//! published, decremented where its consumer acks it, two cache lines
//! bouncing per message (about 3 % of the broker's samples in a 16 B
//! transient run). Names of up to `INLINE` bytes together are copied into
//! the message instead; longer ones are joined into one shared string,
//! which the publishing channel makes once for a run of messages with the
//! same names (one reference count per message, not two). Three words:
//! with the rest of a [`crate::message::Message`] that keeps a message and
//! its reference counts in mimalloc's 128-byte size class, two cache lines.

use std::sync::Arc;

/// Bytes of exchange and routing key together that are kept inline.
const INLINE: usize = 21;

/// A message's exchange and routing key.
#[derive(Clone)]
pub struct Names(Repr);

#[derive(Clone)]
enum Repr {
    /// `bytes[..split]` is the exchange, `bytes[split..len]` the routing key.
    Inline { split: u8, len: u8, bytes: [u8; INLINE] },
    /// `joined[..split]` is the exchange, the rest the routing key.
    Shared { split: u32, joined: Arc<str> },
}

impl Names {
    pub fn new(exchange: Arc<str>, routing_key: Arc<str>) -> Names {
        Names::of(&exchange, &routing_key)
    }

    /// Copies the names in, or joins them into one shared string if they
    /// are too long to copy.
    pub fn of(exchange: &str, routing_key: &str) -> Names {
        let (e, r) = (exchange.as_bytes(), routing_key.as_bytes());
        let len = e.len() + r.len();
        if len > INLINE {
            let mut joined = String::with_capacity(len);
            joined.push_str(exchange);
            joined.push_str(routing_key);
            // An exchange name is a short string (at most 255 bytes).
            let split = u32::try_from(e.len()).expect("an exchange name fits a u32");
            return Names(Repr::Shared { split, joined: joined.into() });
        }
        let mut bytes = [0u8; INLINE];
        bytes[..e.len()].copy_from_slice(e);
        bytes[e.len()..len].copy_from_slice(r);
        Names(Repr::Inline { split: e.len() as u8, len: len as u8, bytes })
    }

    pub fn exchange(&self) -> &str {
        match &self.0 {
            // SAFETY: `new` copied a whole `str` into `bytes[..split]`, and
            // `bytes` is never written after.
            Repr::Inline { split, bytes, .. } => unsafe { std::str::from_utf8_unchecked(&bytes[..*split as usize]) },
            // `of` split a whole exchange name off a `str`.
            Repr::Shared { split, joined } => &joined[..*split as usize],
        }
    }

    pub fn routing_key(&self) -> &str {
        match &self.0 {
            // SAFETY: `new` copied a whole `str` into `bytes[split..len]`,
            // and `bytes` is never written after.
            Repr::Inline { split, len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[*split as usize..*len as usize])
            },
            Repr::Shared { split, joined } => &joined[*split as usize..],
        }
    }
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names").field("exchange", &self.exchange()).field("routing_key", &self.routing_key()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_given_inline_and_shared() {
        let cases = [
            ("", ""),
            ("", "q"),
            ("amq.direct", ""),
            ("celery", "celery"),
            ("ëxchängé", "clé-ñ"),
            ("x".repeat(20).leak() as &str, "y"),
            ("x".repeat(20).leak(), "y".repeat(2).leak()),
            ("ë".repeat(10).leak(), ""),
            ("ë".repeat(10).leak(), "é"),
            ("", "z".repeat(255).leak()),
            ("e".repeat(255).leak(), "r".repeat(255).leak()),
        ];
        for (e, r) in cases {
            let n = Names::new(e.into(), r.into());
            assert_eq!((n.exchange(), n.routing_key()), (e, r));
            let inline = matches!(n.0, Repr::Inline { .. });
            assert_eq!(inline, e.len() + r.len() <= INLINE, "{e:?} {r:?}");
            let c = n.clone();
            assert_eq!((c.exchange(), c.routing_key()), (e, r));
        }
    }

    #[test]
    fn two_names_take_three_words() {
        assert_eq!(std::mem::size_of::<Names>(), 3 * std::mem::size_of::<usize>());
    }
}
