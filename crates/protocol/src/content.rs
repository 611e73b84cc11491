//! Content assembly: `basic.publish` + content header + body frames → one
//! message.
//!
//! A body frame of 4 KiB or more is kept as the slice of the read buffer it
//! arrived in (no copy). A body of several frames of 16 KiB or more stays
//! in those slices ([`Body`]); one of smaller frames is gathered into one
//! buffer.

use std::borrow::Cow;

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::{Bytes, BytesMut};

use crate::body::Body;
use crate::error::AmqpError;
use crate::frame::{Payload, SHARE_BODY_FROM};

/// A content header as received.
#[derive(Debug, Clone)]
pub struct ContentHeader {
    pub body_size: u64,
    /// Property flags and list exactly as the publisher encoded them
    /// (checked to decode; read them again with [`scan_past_headers`]).
    pub properties_raw: Bytes,
}

/// Parses a content header frame's payload.
pub fn parse_header(payload: &[u8]) -> Result<ContentHeader, AmqpError> {
    if payload.len() < 14 {
        return Err(AmqpError::frame_error("content header frame too short"));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    if class_id != 60 {
        return Err(AmqpError::frame_error(format_args!("content header for class {class_id}, expected 60")));
    }
    let body_size = u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes"));
    // Copied out of the read buffer, as small bodies are (`COPY_BELOW`):
    // a slice would keep the whole buffer (the neighbouring messages'
    // frames too) alive for as long as the message stays queued: ~330
    // pinned bytes per queued 256 B message. No properties at all is the
    // common case and costs nothing.
    let raw = &payload[12..];
    let properties_raw = match raw {
        [0, 0] => Bytes::from_static(&[0, 0]),
        _ => Bytes::copy_from_slice(raw),
    };
    if scan_properties(&properties_raw).is_none() {
        return Err(AmqpError::frame_error("cannot decode content header properties"));
    }
    Ok(ContentHeader { body_size, properties_raw })
}

/// The basic properties the broker acts on, read straight from the raw
/// property list (borrowing its strings). A full `AMQPProperties` parse
/// costs a ~340-byte struct and a copy of every field per message; the
/// per-message path needs only these. The `headers` table stays encoded
/// (decoding a celery message's 18 entries cost more than everything
/// else the broker does with it): read it with [`crate::table::get`], or
/// decode it where a whole table is needed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PropsView<'a> {
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    /// The encoded table, its length first.
    pub headers: Option<&'a [u8]>,
    /// These three are [`NOT_UTF8`] when the publisher's octets are not
    /// UTF-8 (no such value means anything to the broker: it is not the
    /// direct reply-to queue, not a user, not a number).
    pub reply_to: Option<&'a str>,
    pub expiration: Option<&'a str>,
    pub user_id: Option<&'a str>,
}

/// What [`PropsView`] reads for a short string that is not UTF-8.
pub const NOT_UTF8: &str = "\u{FFFD}";

/// Reads a basic property list (flags, then the fields they announce, in
/// the spec's order). None if it does not decode. Short strings (and the
/// `headers` table's names) may hold any octets, as RabbitMQ takes them;
/// otherwise it accepts exactly what `amq_protocol`'s full parser accepts
/// (checked by a property test). Decode a list whole with
/// [`decode_properties`].
pub fn scan_properties(raw: &[u8]) -> Option<PropsView<'_>> {
    scan::<true>(raw)
}

/// As [`scan_properties`], but takes the `headers` table's length on
/// trust instead of walking the table: for a list [`parse_header`] has
/// checked (a celery message's table is most of its properties).
pub fn scan_past_headers(raw: &[u8]) -> Option<PropsView<'_>> {
    scan::<false>(raw)
}

#[inline(always)]
fn scan<const TABLE: bool>(raw: &[u8]) -> Option<PropsView<'_>> {
    fn short_str(s: &[u8]) -> &str {
        if s.is_ascii() {
            // SAFETY: ASCII is UTF-8. (Checked inline: these strings are
            // short, and `from_utf8` is a call with set-up of its own.)
            return unsafe { std::str::from_utf8_unchecked(s) };
        }
        std::str::from_utf8(s).unwrap_or(NOT_UTF8)
    }
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    let mut at = 2;
    let mut v = PropsView::default();
    // The set flags only, highest (first in the list) first: most messages
    // carry none or a few of the fourteen.
    let mut pending = flags & !0b11;
    while pending != 0 {
        let bit = 15 - pending.leading_zeros() as u16;
        pending &= !(1 << bit);
        match bit {
            13 => {
                let n = if TABLE {
                    // Walked without recursion, and refused beyond
                    // `MAX_DEPTH` (the parser recurses once per level).
                    match crate::table::scan(&raw[at..]) {
                        crate::table::Scan::Fits(n) => n,
                        _ => return None,
                    }
                } else {
                    4 + u32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?) as usize
                };
                let end = at.checked_add(n).filter(|&end| end <= raw.len())?;
                v.headers = Some(&raw[at..end]);
                at = end;
            }
            12 | 11 => {
                let b = *raw.get(at)?;
                at += 1;
                if bit == 12 {
                    v.delivery_mode = Some(b);
                } else {
                    v.priority = Some(b);
                }
            }
            6 => {
                raw.get(at..at + 8)?;
                at += 8;
            }
            _ => {
                let n = *raw.get(at)? as usize;
                let s = raw.get(at + 1..at + 1 + n)?;
                at += 1 + n;
                match bit {
                    9 => v.reply_to = Some(short_str(s)),
                    8 => v.expiration = Some(short_str(s)),
                    4 => v.user_id = Some(short_str(s)),
                    _ => {}
                }
            }
        }
    }
    Some(v)
}

/// Every property, decoded: as the publisher sent them, or, if a short
/// string or a `headers` name is not UTF-8 (which the decoder refuses),
/// with those made UTF-8 (see [`utf8_properties`]). None if the list does
/// not decode at all.
pub fn decode_properties(raw: &[u8]) -> Option<AMQPProperties> {
    use amq_protocol::protocol::basic::parse_properties;
    match parse_properties(raw) {
        Ok((_, p)) => Some(p),
        Err(_) => parse_properties(&utf8_properties(raw)?[..]).ok().map(|(_, p)| p),
    }
}

/// The property list with every short string and `headers` name made
/// UTF-8 (each invalid sequence becomes U+FFFD, cut to 255 octets on a
/// character boundary): borrowed if all of them already are. For a peer
/// whose decoder refuses anything else (the broker's own links, which read
/// with lapin). None if the list does not decode.
pub fn utf8_properties(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut utf8 = true;
    let end = each_field(raw, |bit, field| {
        utf8 &= match bit {
            13 => matches!(crate::table::lossy(field), Some(Cow::Borrowed(_))),
            12 | 11 | 6 => true,
            _ => std::str::from_utf8(&field[1..]).is_ok(),
        }
    })?;
    if utf8 {
        return Some(Cow::Borrowed(&raw[..end]));
    }
    let mut out = Vec::with_capacity(end + 16);
    out.extend_from_slice(&raw[..2]);
    each_field(raw, |bit, field| match bit {
        13 => out.extend_from_slice(&crate::table::lossy(field).expect("scanned")),
        12 | 11 | 6 => out.extend_from_slice(field),
        _ => {
            let s = String::from_utf8_lossy(&field[1..]);
            let s = crate::error::prefix_within(&s, crate::error::SHORT_MAX);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
    })?;
    Some(Cow::Owned(out))
}

/// Calls `each(flag bit, the field's octets)` for every field of a
/// property list, in order, as [`scan_properties`] reads it; returns where
/// the list ends. None if it does not decode (after calling `each` for
/// the fields before the fault).
fn each_field<'a>(raw: &'a [u8], mut each: impl FnMut(u16, &'a [u8])) -> Option<usize> {
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    let mut at = 2;
    let mut pending = flags & !0b11;
    while pending != 0 {
        let bit = 15 - pending.leading_zeros() as u16;
        pending &= !(1 << bit);
        let n = match bit {
            13 => match crate::table::scan(raw.get(at..)?) {
                crate::table::Scan::Fits(n) => n,
                _ => return None,
            },
            12 | 11 => 1,
            6 => 8,
            _ => 1 + *raw.get(at)? as usize,
        };
        each(bit, raw.get(at..at + n)?);
        at += n;
    }
    Some(at)
}

/// A complete message content.
#[derive(Debug, Clone)]
pub struct Content {
    pub header: ContentHeader,
    pub body: Body,
}

/// Where a channel is in receiving one message's content.
#[derive(Debug, Default)]
pub enum Assembler {
    #[default]
    Idle,
    /// `basic.publish` seen, waiting for its header.
    AwaitingHeader,
    /// Header seen, `received` of `header.body_size` bytes in.
    AwaitingBody { header: ContentHeader, sofar: Option<Box<Sofar>>, received: u64 },
}

/// What a channel holds of a body of several frames (boxed in the
/// assembler: most bodies come in one frame, and an assembler with less to
/// drop is cheaper to move between states).
#[derive(Debug)]
pub enum Sofar {
    /// The big frames' payloads, as they lie in the read buffer.
    Parts(Vec<Bytes>),
    /// The body so far in one buffer (once a small frame came).
    Gathered(BytesMut),
}

/// Bodies below this are copied out of the read buffer so that a small
/// message sitting in a queue does not pin a whole read buffer in memory.
pub const COPY_BELOW: usize = 4096;

impl Assembler {
    pub fn is_idle(&self) -> bool {
        matches!(self, Assembler::Idle)
    }

    /// The 505 for a frame that is not the content frame expected now.
    pub fn expected(&self) -> AmqpError {
        let what = match self {
            Assembler::AwaitingBody { .. } => "content body",
            _ => "content header for class 60",
        };
        let kind = if what == "content body" { "content body" } else { "content header" };
        AmqpError::unexpected_frame(format_args!("expected {what}, got non {kind} frame instead")).during(60, 40)
    }

    fn expected_method() -> AmqpError {
        AmqpError::unexpected_frame("expected method frame, got non method frame instead")
    }

    /// A `basic.publish` arrived; its content follows.
    pub fn start(&mut self) {
        *self = Assembler::AwaitingHeader;
    }

    /// Feeds the header. Returns the content when the body is empty.
    /// `max_size` is the largest body accepted (406, as RabbitMQ).
    pub fn header(&mut self, payload: &[u8], max_size: u64) -> Result<Option<Content>, AmqpError> {
        match self {
            Assembler::AwaitingHeader => {}
            Assembler::Idle => return Err(Self::expected_method()),
            Assembler::AwaitingBody { .. } => return Err(self.expected()),
        }
        let header = parse_header(payload)?;
        if header.body_size > max_size {
            *self = Assembler::Idle;
            return Err(AmqpError::precondition(format_args!(
                "message size {} is larger than configured max size {max_size}",
                header.body_size
            ))
            .during(60, 40));
        }
        if header.body_size == 0 {
            *self = Assembler::Idle;
            return Ok(Some(Content { header, body: Body::new() }));
        }
        *self = Assembler::AwaitingBody { header, sofar: None, received: 0 };
        Ok(None)
    }

    /// Feeds one body frame. Returns the content once it is complete.
    pub fn body(&mut self, payload: Payload<'_>) -> Result<Option<Content>, AmqpError> {
        if !matches!(self, Assembler::AwaitingBody { .. }) {
            return Err(match self {
                Assembler::Idle => Self::expected_method(),
                _ => self.expected(),
            });
        }
        let Assembler::AwaitingBody { header, sofar, received } = self else { unreachable!() };
        *received += payload.len() as u64;
        if *received > header.body_size {
            return Err(AmqpError::frame_error(format_args!(
                "content body of {} bytes exceeds the {} the header announced",
                received, header.body_size
            )));
        }
        if payload.is_empty() {
            // (The body is complete only once a byte makes it so.)
            return Ok(None);
        }
        let last = *received == header.body_size;
        let parts = match sofar.as_deref_mut() {
            None if last => {
                // One frame: a big one kept where it lies, a small one copied.
                let body = match payload {
                    Payload::Shared(b) if b.len() >= COPY_BELOW => b,
                    small => Bytes::copy_from_slice(&small),
                };
                let Assembler::AwaitingBody { header, .. } = std::mem::take(self) else { unreachable!() };
                return Ok(Some(Content { header, body: body.into() }));
            }
            None => &[][..],
            Some(Sofar::Parts(parts)) => &parts[..],
            Some(Sofar::Gathered(rest)) => {
                rest.extend_from_slice(&payload);
                return Ok(if last { self.finish() } else { None });
            }
        };
        // Several frames: kept as they came while each is big (the last
        // may be any size), so the body is never gathered.
        let keep = match &payload {
            Payload::Shared(b) => last || b.len() >= SHARE_BODY_FROM,
            Payload::Borrowed(_) => last && !parts.is_empty(),
        };
        if keep {
            let part = match payload {
                Payload::Shared(b) => b,
                Payload::Borrowed(small) => Bytes::copy_from_slice(small),
            };
            match sofar.as_deref_mut() {
                Some(Sofar::Parts(parts)) => parts.push(part),
                _ => *sofar = Some(Box::new(Sofar::Parts(vec![part]))),
            }
        } else {
            // Small frames (a client with a small frame_max): gathered into
            // one buffer from here on. Reserve what the header announced,
            // up to 1 MiB: a client that announces a huge body and trickles
            // it in must not make us allocate it all up front (per
            // channel, per connection).
            let mut rest = BytesMut::with_capacity((header.body_size as usize).min(1 << 20));
            for p in parts {
                rest.extend_from_slice(p);
            }
            rest.extend_from_slice(&payload);
            *sofar = Some(Box::new(Sofar::Gathered(rest)));
        }
        Ok(if last { self.finish() } else { None })
    }

    /// The content gathered so far, and the assembler idle again.
    fn finish(&mut self) -> Option<Content> {
        let Assembler::AwaitingBody { header, sofar, .. } = std::mem::take(self) else { unreachable!() };
        let body = match sofar.map(|b| *b) {
            None => Body::new(),
            Some(Sofar::Parts(parts)) => Body::from_parts(parts),
            Some(Sofar::Gathered(rest)) => rest.freeze().into(),
        };
        Some(Content { header, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{parse_frame, write_content};

    fn frames(body: &[u8], frame_max: u32) -> Vec<Bytes> {
        let mut out = BytesMut::new();
        write_content(&mut out, 1, frame_max, &[0, 0], body);
        let mut v = vec![];
        while let Some(f) = parse_frame(&mut out, 0).unwrap() {
            v.push(f.payload);
        }
        v
    }

    #[test]
    fn assembles_multi_frame_body() {
        let body: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let fs = frames(&body, 4096);
        let mut a = Assembler::default();
        a.start();
        assert!(a.header(&fs[0], u64::MAX).unwrap().is_none());
        let mut done = None;
        for f in &fs[1..] {
            done = a.body(Payload::Shared(f.clone())).unwrap();
        }
        let done = done.unwrap().body;
        // Frames under 16 KiB: gathered into one buffer.
        assert_eq!((done.single().is_some(), &done.contiguous()[..]), (true, &body[..]));
        assert!(a.is_idle());
    }

    /// Feeds `body` in frames of `frame_max`, each as `shared` says.
    fn assemble(body: &[u8], frame_max: u32, shared: impl Fn(usize) -> bool) -> Body {
        let fs = frames(body, frame_max);
        let mut a = Assembler::default();
        a.start();
        assert!(a.header(&fs[0], u64::MAX).unwrap().is_none());
        let mut done = None;
        for (i, f) in fs[1..].iter().enumerate() {
            assert!(done.is_none());
            let p = if shared(i) { Payload::Shared(f.clone()) } else { Payload::Borrowed(f) };
            done = a.body(p).unwrap();
        }
        assert!(a.is_idle());
        done.unwrap().body
    }

    #[test]
    fn a_body_of_big_frames_stays_in_them() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let b = assemble(&body, 131_072, |_| true);
        assert_eq!((b.parts().len(), b.len()), (3, body.len()));
        assert!(b == body[..]);
        // The last frame may be small, and borrowed: copied, still a part.
        let b = assemble(&body[..131_064 + 10], 131_072, |i| i == 0);
        assert_eq!((b.parts().len(), &b.contiguous()[..]), (2, &body[..131_074]));
        // A small frame before the last: everything gathered from there.
        let b = assemble(&body, 131_072, |i| i != 1);
        assert_eq!((b.parts().len(), &b.contiguous()[..]), (1, &body[..]));
        let b = assemble(&body, 131_072, |i| i != 0);
        assert_eq!((b.parts().len(), &b.contiguous()[..]), (1, &body[..]));
        // One big frame: itself.
        let b = assemble(&body[..100_000], 131_072, |_| true);
        assert_eq!((b.parts().len(), &b.contiguous()[..]), (1, &body[..100_000]));
    }

    #[test]
    fn empty_body_completes_on_header() {
        let fs = frames(b"", 4096);
        let mut a = Assembler::default();
        a.start();
        assert!(a.header(&fs[0], 10).unwrap().is_some());
    }

    #[test]
    fn body_without_header_is_unexpected() {
        let mut a = Assembler::default();
        assert_eq!(a.body(Payload::Borrowed(b"x")).unwrap_err().code(), 505);
    }

    #[test]
    fn oversize_message_is_refused() {
        let fs = frames(&[0u8; 100], 4096);
        let mut a = Assembler::default();
        a.start();
        assert_eq!(a.header(&fs[0], 10).unwrap_err().code(), 406);
    }
}

/// Encodes properties (flags and list) as a content header carries them.
/// Used when the broker changes a message (dead-lettering, direct reply-to).
pub fn encode_properties(p: &AMQPProperties) -> Bytes {
    let v = cookie_factory::gen_simple(amq_protocol::protocol::basic::gen_properties(p), Vec::new())
        .expect("writing to a Vec cannot fail");
    Bytes::from(v)
}

#[cfg(test)]
mod encode_tests {
    use super::*;

    #[test]
    fn encode_then_parse_round_trips() {
        let p = AMQPProperties::default().with_content_type("text/plain".into()).with_priority(4);
        let raw = encode_properties(&p);
        assert_eq!(amq_protocol::protocol::basic::parse_properties(&raw[..]).unwrap().1, p);
        assert_eq!(scan_properties(&raw).unwrap().priority, Some(4));
    }

    #[test]
    fn a_checked_list_reads_the_same_past_its_table() {
        use amq_protocol::types::AMQPValue;
        let mut t = crate::FieldTable::default();
        t.insert("task".into(), AMQPValue::LongString("tasks.add".into()));
        t.insert("retries".into(), AMQPValue::LongLongInt(2));
        let p = AMQPProperties::default().with_headers(t.clone()).with_priority(3).with_reply_to("r".into());
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        payload.extend_from_slice(&encode_properties(&p));
        let h = parse_header(&payload).unwrap();
        let (all, rest) = (scan_properties(&h.properties_raw).unwrap(), scan_past_headers(&h.properties_raw).unwrap());
        assert_eq!(all, rest);
        assert_eq!((rest.priority, rest.reply_to), (Some(3), Some("r")));
        let table = rest.headers.unwrap();
        assert_eq!(amq_protocol::types::parsing::parse_field_table(table).unwrap().1, t);
        assert_eq!(crate::table::get(table, "retries"), Some(AMQPValue::LongLongInt(2)));
        assert_eq!(crate::table::get(table, "eta"), None);
        // A table length past the end does not read past it.
        let cut = &h.properties_raw[..h.properties_raw.len() - 4];
        assert!(scan_past_headers(cut).is_none());
    }

    /// Flags, then a `headers` table of one entry named `name` (a long
    /// string "v"), then `content_type`, `reply_to`, `expiration` and
    /// `user_id`.
    fn list(name: &[u8], ct: &[u8], reply: &[u8], exp: &[u8], user: &[u8]) -> Vec<u8> {
        let flags: u16 = 1 << 15 | 1 << 13 | 1 << 9 | 1 << 8 | 1 << 4;
        let mut raw = flags.to_be_bytes().to_vec();
        raw.extend_from_slice(&[ct.len() as u8]);
        raw.extend_from_slice(ct);
        let entry = [&[name.len() as u8][..], name, b"S", &[0, 0, 0, 1], b"v"].concat();
        raw.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        raw.extend_from_slice(&entry);
        for s in [reply, exp, user] {
            raw.push(s.len() as u8);
            raw.extend_from_slice(s);
        }
        raw
    }

    #[test]
    fn strings_and_names_that_are_not_utf8_are_taken_and_decoded_made_utf8() {
        let raw = list(b"\xff\xfe", b"text/\xff", b"\xffq", b"\xff", b"\xffguest");
        let header = [&[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5][..], &raw].concat();
        let h = parse_header(&header).unwrap();
        assert_eq!(&h.properties_raw[..], &raw[..]);
        assert!(amq_protocol::protocol::basic::parse_properties(&raw[..]).is_err());
        let v = scan_properties(&raw).unwrap();
        assert_eq!((v.reply_to, v.expiration, v.user_id), (Some(NOT_UTF8), Some(NOT_UTF8), Some(NOT_UTF8)));
        let p = decode_properties(&raw).unwrap();
        assert_eq!(p.content_type().as_ref().unwrap().as_str(), "text/\u{FFFD}");
        assert_eq!(p.reply_to().as_ref().unwrap().as_str(), "\u{FFFD}q");
        let headers = p.headers().as_ref().unwrap();
        assert_eq!(headers.inner().keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["\u{FFFD}\u{FFFD}"]);
        assert!(matches!(utf8_properties(&raw), Some(Cow::Owned(_))));
        // All UTF-8: taken as it is.
        let fine = list("é".as_bytes(), b"text/plain", b"q", b"60000", b"guest");
        assert!(matches!(utf8_properties(&fine), Some(Cow::Borrowed(b)) if b == &fine[..]));
        assert_eq!(
            decode_properties(&fine),
            amq_protocol::protocol::basic::parse_properties(&fine[..]).ok().map(|x| x.1)
        );
        // Malformed is still malformed.
        assert!(utf8_properties(&raw[..raw.len() - 1]).is_none());
        assert!(decode_properties(&raw[..raw.len() - 1]).is_none());
    }

    #[test]
    fn a_string_made_utf8_stays_a_short_string() {
        // 255 invalid octets would be 765 octets of U+FFFD: cut to 85.
        let raw = list(&[0xff; 255], &[0xff; 255], b"q", b"1", b"u");
        let p = decode_properties(&raw).unwrap();
        assert_eq!(p.content_type().as_ref().unwrap().as_str(), "\u{FFFD}".repeat(85));
        let name = p.headers().as_ref().unwrap().inner().keys().next().unwrap().as_str().to_owned();
        assert_eq!(name, "\u{FFFD}".repeat(85));
    }
}

/// A property [`without`] can drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property {
    Expiration,
    UserId,
}

/// The same properties without one of them (`AMQPProperties` has no
/// unsetter): dead-lettering drops `expiration`, a federation link without
/// `trust-user-id` drops `user_id`.
pub fn without(p: &crate::spec::basic::AMQPProperties, drop: Property) -> crate::spec::basic::AMQPProperties {
    let mut q = crate::spec::basic::AMQPProperties::default();
    if let Some(v) = p.content_type() {
        q = q.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        q = q.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        q = q.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        q = q.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        q = q.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        q = q.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        q = q.with_reply_to(v.clone());
    }
    if let Some(v) = p.expiration().as_ref().filter(|_| drop != Property::Expiration) {
        q = q.with_expiration(v.clone());
    }
    if let Some(v) = p.message_id() {
        q = q.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        q = q.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        q = q.with_type(v.clone());
    }
    if let Some(v) = p.user_id().as_ref().filter(|_| drop != Property::UserId) {
        q = q.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        q = q.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        q = q.with_cluster_id(v.clone());
    }
    q
}
