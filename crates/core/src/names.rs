//! A message's exchange and routing key, kept inline when they are short.
//!
//! A publisher repeats the same two names, so a message used to share them
//! (`Arc<str>`) with the publisher's channel. The reference counts then
//! moved between cores for every message: incremented where it is
//! published, decremented where its consumer acks it, two cache lines
//! bouncing per message (about 3 % of the broker's samples in a 16 B
//! transient run). Names of up to `INLINE` bytes together are copied into
//! the message instead, in the 32 bytes two shared names took (more would
//! move a message into mimalloc's next size class: +31 MiB for a backlog
//! of a million); longer ones are still shared.

use std::sync::Arc;

/// Bytes of exchange and routing key together that are kept inline.
const INLINE: usize = 22;

/// A message's exchange and routing key.
#[derive(Clone)]
pub struct Names(Repr);

#[derive(Clone)]
enum Repr {
    /// `bytes[..split]` is the exchange, `bytes[split..len]` the routing key.
    Inline {
        split: u8,
        len: u8,
        bytes: [u8; INLINE],
    },
    Shared(Arc<str>, Arc<str>),
}

impl Names {
    pub fn new(exchange: Arc<str>, routing_key: Arc<str>) -> Names {
        Names::of(&exchange, &routing_key)
    }

    /// Names that share `exchange` and `routing_key` only if they are too
    /// long to copy (no reference count taken otherwise).
    pub fn of(exchange: &Arc<str>, routing_key: &Arc<str>) -> Names {
        let (e, r) = (exchange.as_bytes(), routing_key.as_bytes());
        let len = e.len() + r.len();
        if len > INLINE {
            return Names(Repr::Shared(exchange.clone(), routing_key.clone()));
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
            Repr::Shared(e, _) => e,
        }
    }

    pub fn routing_key(&self) -> &str {
        match &self.0 {
            // SAFETY: `new` copied a whole `str` into `bytes[split..len]`,
            // and `bytes` is never written after.
            Repr::Inline { split, len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[*split as usize..*len as usize])
            },
            Repr::Shared(_, r) => r,
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
            ("x".repeat(20).leak() as &str, "y".repeat(17).leak()),
            ("x".repeat(20).leak(), "y".repeat(18).leak()),
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
    fn two_names_take_no_more_than_two_shared_ones() {
        assert_eq!(std::mem::size_of::<Names>(), 2 * std::mem::size_of::<Arc<str>>());
    }
}
