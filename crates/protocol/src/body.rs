//! A message body as the broker keeps it.
//!
//! A body that came in one frame is one buffer. A body of several big
//! frames stays as their payloads, each still the slice of the read buffer
//! it was read into: gathering them into one buffer was a copy of the whole
//! body (about 200 µs of a 1 MiB message's CPU, from memory no cache
//! holds). Deliveries send the parts by reference; the few places that need
//! the bytes in one piece ask for [`Body::contiguous`].

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

/// Reference-counted: cloning it, or routing it to N queues, never copies
/// the bytes. 32 bytes, as a `Bytes` is.
#[derive(Clone, Debug)]
pub struct Body(Repr);

#[derive(Clone, Debug)]
enum Repr {
    One(Bytes),
    /// At least two parts, none empty; `len` is their sum.
    Many {
        len: usize,
        parts: Arc<[Bytes]>,
    },
}

impl Body {
    pub const fn new() -> Body {
        Body(Repr::One(Bytes::new()))
    }

    /// A body made of these parts, in order (empty ones are dropped).
    pub fn from_parts(parts: Vec<Bytes>) -> Body {
        let mut parts = parts;
        parts.retain(|p| !p.is_empty());
        match parts.len() {
            0 => Body::new(),
            1 => Body(Repr::One(parts.pop().expect("one part"))),
            _ => Body(Repr::Many { len: parts.iter().map(Bytes::len).sum(), parts: parts.into() }),
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::One(b) => b.len(),
            Repr::Many { len, .. } => *len,
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body's buffer, if it is one.
    #[inline]
    pub fn single(&self) -> Option<&Bytes> {
        match &self.0 {
            Repr::One(b) => Some(b),
            Repr::Many { .. } => None,
        }
    }

    /// The parts, in order (one for a body in one buffer).
    #[inline]
    pub fn parts(&self) -> &[Bytes] {
        match &self.0 {
            Repr::One(b) => std::slice::from_ref(b),
            Repr::Many { parts, .. } => parts,
        }
    }

    /// The bytes in one piece: borrowed for a body in one buffer, copied
    /// for one in parts.
    pub fn contiguous(&self) -> Cow<'_, [u8]> {
        match &self.0 {
            Repr::One(b) => Cow::Borrowed(b),
            Repr::Many { len, parts } => {
                let mut v = Vec::with_capacity(*len);
                for p in parts.iter() {
                    v.extend_from_slice(p);
                }
                Cow::Owned(v)
            }
        }
    }

    /// The first `n` bytes in one piece (only they are copied, for a body
    /// in parts). Panics if the body is shorter.
    pub fn head(&self, n: usize) -> Cow<'_, [u8]> {
        match &self.0 {
            Repr::One(b) => Cow::Borrowed(&b[..n]),
            Repr::Many { .. } => {
                let mut v = Vec::with_capacity(n);
                self.for_each_piece(0, n, |p| v.extend_from_slice(&p));
                Cow::Owned(v)
            }
        }
    }

    /// Calls `each` with the pieces (by reference) that make up
    /// `at..at + n` of the body, in order. Panics if that is out of range.
    fn for_each_piece(&self, at: usize, n: usize, mut each: impl FnMut(Bytes)) {
        let end = at.checked_add(n).filter(|&end| end <= self.len()).expect("a range within the body");
        if n == 0 {
            return;
        }
        let mut start = 0;
        for p in self.parts() {
            let stop = start + p.len();
            if stop > at && start < end {
                each(p.slice(at.max(start) - start..end.min(stop) - start));
            }
            if stop >= end {
                break;
            }
            start = stop;
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::new()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body(Repr::One(b))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body(Repr::One(v.into()))
    }
}

impl PartialEq<[u8]> for Body {
    fn eq(&self, other: &[u8]) -> bool {
        if self.len() != other.len() {
            return false;
        }
        let mut rest = other;
        self.parts().iter().all(|p| {
            let (head, tail) = rest.split_at(p.len());
            rest = tail;
            &p[..] == head
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_of(sizes: &[usize]) -> (Body, Vec<u8>) {
        let whole: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i * 7) as u8).collect();
        let mut at = 0;
        let parts = sizes
            .iter()
            .map(|&n| {
                at += n;
                Bytes::copy_from_slice(&whole[at - n..at])
            })
            .collect();
        (Body::from_parts(parts), whole)
    }

    #[test]
    fn one_buffer_and_parts_read_the_same() {
        let (b, whole) = parts_of(&[5, 0, 3, 9]);
        assert_eq!((b.len(), b.parts().len(), b.single().is_none()), (17, 3, true));
        assert_eq!(&b.contiguous()[..], &whole[..]);
        assert_eq!((&b.head(6)[..], &b.head(0)[..]), (&whole[..6], &[][..]));
        assert!(b == whole[..]);
        let (one, whole) = parts_of(&[0, 4, 0]);
        assert_eq!((one.single().map(|b| b.len()), &one.contiguous()[..]), (Some(4), &whole[..]));
        assert!(Body::from_parts(vec![]).is_empty());
        assert!(std::mem::size_of::<Body>() <= std::mem::size_of::<Bytes>());
    }

    #[test]
    fn pieces_cover_exactly_the_range_asked() {
        let (b, whole) = parts_of(&[4, 1, 6, 3]);
        for at in 0..=whole.len() {
            for n in 0..=whole.len() - at {
                let mut got = Vec::new();
                b.for_each_piece(at, n, |p| {
                    assert!(!p.is_empty());
                    got.extend_from_slice(&p);
                });
                assert_eq!(&got[..], &whole[at..at + n], "at {at} n {n}");
            }
        }
    }
}
