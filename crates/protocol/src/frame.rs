//! Frame layer: splitting a byte stream into frames, and writing frames.
//!
//! A frame is `type:u8 channel:u16 size:u32 payload[size] 0xCE`. Parsing
//! never copies a payload: [`Frame::payload`] is a slice of the read buffer
//! (borrowed, or reference-counted for what outlives the read).
//! Writers append to a `BytesMut` so that a connection can batch many frames
//! into one socket write.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::body::Body;
use crate::error::AmqpError;
use crate::AMQPClass;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Bytes a frame adds around its payload: 7 of header, 1 of end marker.
pub const FRAME_OVERHEAD: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Method,
    Header,
    Body,
    Heartbeat,
}

/// One frame as it came off the wire: its payload owned ([`parse_frame`]),
/// borrowed from the read buffer ([`peek_frame`]) or either ([`Payload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<P = Bytes> {
    pub kind: FrameKind,
    pub channel: u16,
    pub payload: P,
}

/// A frame's payload as a connection hands it on: a slice of the read
/// buffer (the common case: small frames are parsed or copied where they
/// lie, with no reference count to take and drop), or a reference-counted
/// piece of it that a big body keeps.
#[derive(Debug)]
pub enum Payload<'a> {
    Borrowed(&'a [u8]),
    Shared(Bytes),
}

impl std::ops::Deref for Payload<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Shared(b) => b,
        }
    }
}

/// Renders bytes the way RabbitMQ's error texts show them (Erlang binary
/// syntax): `<<"text">>` when printable, else `<<0,10,0,50>>`.
pub fn erlang_binary(bytes: &[u8]) -> String {
    const MAX: usize = 128;
    let shown = &bytes[..bytes.len().min(MAX)];
    let more = if bytes.len() > MAX { ",..." } else { "" };
    if !shown.is_empty() && shown.iter().all(|b| (0x20..0x7f).contains(b) && *b != b'"' && *b != b'\\') {
        format!("<<\"{}\"{more}>>", String::from_utf8_lossy(shown))
    } else {
        let nums: Vec<String> = shown.iter().map(|b| b.to_string()).collect();
        format!("<<{}{more}>>", nums.join(","))
    }
}

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)`
/// when more bytes are needed. `frame_max` is the negotiated maximum size of
/// a whole frame (0 = no limit beyond the protocol's).
pub fn parse_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
    let Some((f, _)) = peek_frame(buf, frame_max)? else {
        if let Some(size) = buf.get(3..7) {
            let whole = u32::from_be_bytes(size.try_into().expect("4 bytes")) as usize + FRAME_OVERHEAD;
            buf.reserve(whole.saturating_sub(buf.len()));
        }
        return Ok(None);
    };
    let (kind, channel, size) = (f.kind, f.channel, f.payload.len());
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    Ok(Some(Frame { kind, channel, payload }))
}

/// A frame seen in place, and the bytes it spans.
pub type Peeked<'a> = (Frame<&'a [u8]>, usize);

/// The complete frame at the front of `buf`, its payload borrowed, and the
/// bytes it spans (to `advance` past once handled); `Ok(None)` when more
/// bytes are needed. Checks as [`parse_frame`].
pub fn peek_frame(buf: &[u8], frame_max: u32) -> Result<Option<Peeked<'_>>, AmqpError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let frame_type = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    // Checks in RabbitMQ's order, with its texts.
    if frame_max != 0 && size + FRAME_OVERHEAD > frame_max as usize {
        return Err(AmqpError::frame_error(format_args!(
            "type {frame_type}, all octets = <<>>: {{frame_too_large,{size},{}}}",
            frame_max as usize - FRAME_OVERHEAD
        )));
    }
    if buf.len() < size + FRAME_OVERHEAD {
        return Ok(None);
    }
    let octets = || erlang_binary(&buf[7..7 + size]);
    if buf[7 + size] != FRAME_END {
        return Err(AmqpError::frame_error(format_args!(
            "type {frame_type}, all octets = {}: {{invalid_frame_end_marker,{}}}",
            octets(),
            buf[7 + size]
        )));
    }
    let kind = match frame_type {
        FRAME_METHOD => FrameKind::Method,
        FRAME_HEADER => FrameKind::Header,
        FRAME_BODY => FrameKind::Body,
        FRAME_HEARTBEAT => FrameKind::Heartbeat,
        other => {
            return Err(AmqpError::frame_error(format_args!("type {other}, all octets = {}: unknown_frame", octets())))
        }
    };
    Ok(Some((Frame { kind, channel, payload: &buf[7..7 + size] }, size + FRAME_OVERHEAD)))
}

/// Writes the 7-byte frame header, reserving the size to be patched by
/// [`finish_frame`]. Returns the offset of the size field.
fn begin_frame(buf: &mut BytesMut, frame_type: u8, channel: u16) -> usize {
    buf.put_u8(frame_type);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    at
}

fn finish_frame(buf: &mut BytesMut, size_at: usize) {
    let size = (buf.len() - size_at - 4) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

fn put_short_str(buf: &mut BytesMut, s: &str) {
    // Names and keys arrive as short strings, and the one longer key a
    // client could set (`x-dead-letter-routing-key`, a long string) is
    // refused at declare: a cut (on a character boundary) is only a guard.
    let bytes = crate::error::prefix_within(s, crate::error::SHORT_MAX).as_bytes();
    buf.put_u8(bytes.len() as u8);
    buf.put_slice(bytes);
}

/// Any method, through amq-protocol's generator.
pub fn write_method(buf: &mut BytesMut, channel: u16, method: &AMQPClass) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    let payload = cookie_factory::gen_simple(amq_protocol::protocol::gen_class(method), Vec::new())
        .expect("writing a method to a Vec cannot fail");
    buf.put_slice(&payload);
    finish_frame(buf, at);
}

/// `basic.deliver`, by hand: it is on every message's path.
pub fn write_deliver(
    buf: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    buf.put_u16(60);
    buf.put_u16(60);
    put_short_str(buf, consumer_tag);
    buf.put_u64(delivery_tag);
    buf.put_u8(redelivered as u8);
    put_short_str(buf, exchange);
    put_short_str(buf, routing_key);
    finish_frame(buf, at);
}

/// `basic.get-ok`, by hand.
pub fn write_get_ok(
    buf: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    buf.put_u16(60);
    buf.put_u16(71);
    buf.put_u64(delivery_tag);
    buf.put_u8(redelivered as u8);
    put_short_str(buf, exchange);
    put_short_str(buf, routing_key);
    buf.put_u32(message_count);
    finish_frame(buf, at);
}

/// `basic.return`, by hand.
pub fn write_return(
    buf: &mut BytesMut,
    channel: u16,
    reply_code: u16,
    reply_text: &str,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    buf.put_u16(60);
    buf.put_u16(50);
    buf.put_u16(reply_code);
    put_short_str(buf, reply_text);
    put_short_str(buf, exchange);
    put_short_str(buf, routing_key);
    finish_frame(buf, at);
}

/// Publisher confirm (`basic.ack` / `basic.nack` from the server).
pub fn write_confirm(buf: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool, ack: bool) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    buf.put_u16(60);
    if ack {
        buf.put_u16(80);
        buf.put_u64(delivery_tag);
        buf.put_u8(multiple as u8);
    } else {
        buf.put_u16(120);
        buf.put_u64(delivery_tag);
        // bits: multiple (bit 0), requeue (bit 1) — a broker never asks to requeue.
        buf.put_u8(multiple as u8);
    }
    finish_frame(buf, at);
}

#[inline(always)]
fn write_header(buf: &mut BytesMut, channel: u16, body_size: usize, properties: &[u8]) {
    let at = begin_frame(buf, FRAME_HEADER, channel);
    buf.put_u16(60);
    buf.put_u16(0);
    buf.put_u64(body_size as u64);
    buf.put_slice(properties);
    finish_frame(buf, at);
}

/// Content header and body frames. `properties` is the encoded property
/// flags and list exactly as the publisher sent them.
pub fn write_content(buf: &mut BytesMut, channel: u16, frame_max: u32, properties: &[u8], body: &[u8]) {
    write_header(buf, channel, body.len(), properties);
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    buf.reserve(body.len() + body.len().div_ceil(chunk) * FRAME_OVERHEAD);
    for part in body.chunks(chunk) {
        buf.put_u8(FRAME_BODY);
        buf.put_u16(channel);
        buf.put_u32(part.len() as u32);
        buf.put_slice(part);
        buf.put_u8(FRAME_END);
    }
}

/// Bodies at least this big go out by reference: their frames' headers
/// and end markers are written into the output buffer and the body itself
/// is sent from the message's own bytes by a vectored write, never copied
/// per delivery. Smaller bodies are cheaper copied than referenced.
pub const SHARE_BODY_FROM: usize = 16 * 1024;

/// A connection's pending output: frames written into a buffer, with big
/// bodies kept by reference between them. In order, the bytes are `segs`
/// and then `buf`. Derefs to the buffer, so that the frame writers taking
/// a `BytesMut` append to it; the length, emptiness and clearing are
/// `Out`'s own (they count the segments too).
#[derive(Debug, Default)]
pub struct Out {
    buf: BytesMut,
    segs: Vec<Bytes>,
    seg_bytes: usize,
}

impl Out {
    pub fn with_capacity(n: usize) -> Out {
        Out { buf: BytesMut::with_capacity(n), segs: Vec::new(), seg_bytes: 0 }
    }

    /// All pending bytes.
    pub fn len(&self) -> usize {
        self.seg_bytes + self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seg_bytes == 0 && self.buf.is_empty()
    }

    /// The buffer's capacity (what the connection holds besides the
    /// messages the segments reference).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether anything is held by reference (then a write must be vectored).
    pub fn has_segments(&self) -> bool {
        !self.segs.is_empty()
    }

    pub fn clear(&mut self) {
        self.segs.clear();
        self.seg_bytes = 0;
        self.buf.clear();
    }

    /// Drops what was written after `len()` was `mark`.
    pub fn truncate(&mut self, mark: usize) {
        if mark >= self.seg_bytes {
            self.buf.truncate(mark - self.seg_bytes);
            return;
        }
        self.buf.clear();
        while let Some(last) = self.segs.pop() {
            self.seg_bytes -= last.len();
            if self.seg_bytes < mark {
                let keep = mark - self.seg_bytes;
                self.seg_bytes += keep;
                self.segs.push(last.slice(..keep));
                break;
            }
        }
    }

    /// Appends `bytes` by reference.
    pub fn push_shared(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if !self.buf.is_empty() {
            let head = self.buf.split().freeze();
            self.seg_bytes += head.len();
            self.segs.push(head);
        }
        self.seg_bytes += bytes.len();
        self.segs.push(bytes);
    }

    /// The first pending bytes as slices for a vectored write (as many
    /// as `dst` holds); returns how many it filled.
    pub fn io_slices<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let segs = self.segs.iter().map(|b| &b[..]);
        let all = segs.chain(std::iter::once(&self.buf[..]).filter(|b| !b.is_empty()));
        let mut n = 0;
        for (d, s) in dst.iter_mut().zip(all) {
            *d = std::io::IoSlice::new(s);
            n += 1;
        }
        n
    }

    /// Drops the first `n` pending bytes (written out).
    pub fn advance(&mut self, mut n: usize) {
        let mut done = 0;
        for s in &mut self.segs {
            if n == 0 {
                break;
            }
            if n >= s.len() {
                n -= s.len();
                self.seg_bytes -= s.len();
                done += 1;
            } else {
                s.advance(n);
                self.seg_bytes -= n;
                n = 0;
            }
        }
        self.segs.drain(..done);
        self.buf.advance(n.min(self.buf.len()));
    }

    /// Takes every pending byte, as chunks in order.
    pub fn take_chunks(&mut self, mut each: impl FnMut(Bytes)) {
        self.seg_bytes = 0;
        for s in self.segs.drain(..) {
            each(s);
        }
        if !self.buf.is_empty() {
            each(self.buf.split().freeze());
        }
    }
}

impl std::ops::Deref for Out {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.buf
    }
}

impl std::ops::DerefMut for Out {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }
}

/// Content header and body frames into a connection's output: as
/// [`write_content`], but a body of [`SHARE_BODY_FROM`] bytes or more is
/// referenced, not copied (a frame may take pieces of two of a body's
/// parts).
#[inline]
pub fn write_content_out(out: &mut Out, channel: u16, frame_max: u32, properties: &[u8], body: &Body) {
    if body.len() < SHARE_BODY_FROM {
        return write_content(&mut out.buf, channel, frame_max, properties, &body.contiguous());
    }
    write_header(&mut out.buf, channel, body.len(), properties);
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    let mut at = 0;
    // A body in parts is walked once: what is left of the current part.
    let mut parts = body.parts().iter();
    let mut part = Bytes::new();
    while at < body.len() {
        let end = (at + chunk).min(body.len());
        out.buf.put_u8(FRAME_BODY);
        out.buf.put_u16(channel);
        out.buf.put_u32((end - at) as u32);
        match body.single() {
            Some(one) => out.push_shared(one.slice(at..end)),
            None => {
                let mut need = end - at;
                while need > 0 {
                    if part.is_empty() {
                        part = parts.next().expect("the parts make up the body").clone();
                    }
                    let piece = part.split_to(need.min(part.len()));
                    need -= piece.len();
                    out.push_shared(piece);
                }
            }
        }
        out.buf.put_u8(FRAME_END);
        at = end;
    }
}

/// Bytes written in place into a region the caller sized (see
/// [`write_delivery`]): one capacity check for a whole delivery instead of
/// one per field.
struct Cursor<'a> {
    b: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.b[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
    fn short_str(&mut self, s: &str) {
        let bytes = crate::error::prefix_within(s, crate::error::SHORT_MAX).as_bytes();
        self.put(&[bytes.len() as u8]);
        self.put(bytes);
    }
}

/// A whole `basic.deliver`: the method, the content header and the body.
/// A body that fits one frame and is not sent by reference is written in
/// one go; others as [`write_deliver`] and [`write_content_out`] write them.
#[allow(clippy::too_many_arguments)]
pub fn write_delivery(
    out: &mut Out,
    channel: u16,
    frame_max: u32,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    (exchange, routing_key): (&str, &str),
    properties: &[u8],
    body: &Body,
) {
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    let body = match body.single() {
        Some(one) if one.len() < SHARE_BODY_FROM && one.len() <= chunk => one,
        _ => {
            write_deliver(out, channel, consumer_tag, delivery_tag, redelivered, exchange, routing_key);
            return write_content_out(out, channel, frame_max, properties, body);
        }
    };
    let name = |s: &str| 1 + s.len().min(crate::error::SHORT_MAX);
    let method = 4 + name(consumer_tag) + 8 + 1 + name(exchange) + name(routing_key);
    let header = 12 + properties.len();
    let body_frame = if body.is_empty() { 0 } else { FRAME_OVERHEAD + body.len() };
    let total = FRAME_OVERHEAD + method + FRAME_OVERHEAD + header + body_frame;
    let start = out.buf.len();
    out.buf.resize(start + total, 0);
    let mut w = Cursor { b: &mut out.buf[start..], at: 0 };
    let ch = channel.to_be_bytes();
    w.put(&[FRAME_METHOD, ch[0], ch[1]]);
    w.put(&(method as u32).to_be_bytes());
    w.put(&[0, 60, 0, 60]);
    w.short_str(consumer_tag);
    w.put(&delivery_tag.to_be_bytes());
    w.put(&[redelivered as u8]);
    w.short_str(exchange);
    w.short_str(routing_key);
    w.put(&[FRAME_END, FRAME_HEADER, ch[0], ch[1]]);
    w.put(&(header as u32).to_be_bytes());
    w.put(&[0, 60, 0, 0]);
    w.put(&(body.len() as u64).to_be_bytes());
    w.put(properties);
    w.put(&[FRAME_END]);
    if !body.is_empty() {
        w.put(&[FRAME_BODY, ch[0], ch[1]]);
        w.put(&(body.len() as u32).to_be_bytes());
        w.put(body);
        w.put(&[FRAME_END]);
    }
    debug_assert_eq!(w.at, total);
}

pub fn write_heartbeat(buf: &mut BytesMut) {
    buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::decode_method;
    use amq_protocol::protocol::basic;

    /// A delivery written in one go is byte for byte what the separate
    /// writers produce, for bodies of one frame, none, and several frames.
    #[test]
    fn delivery_in_one_go_matches_the_frame_writers() {
        let long = "k".repeat(300);
        for (body, frame_max) in [(vec![7u8; 16], 4096), (vec![], 4096), (vec![1u8; 5000], 4096), (vec![2u8; 100], 0)] {
            let body = Body::from(body);
            let props: &[u8] = &[0x10, 0, 2];
            let mut a = Out::default();
            write_delivery(&mut a, 3, frame_max, "ctag", 42, true, ("ex", &long), props, &body);
            let mut b = Out::default();
            write_deliver(&mut b, 3, "ctag", 42, true, "ex", &long);
            write_content_out(&mut b, 3, frame_max, props, &body);
            assert_eq!(&a[..], &b[..], "body {} frame_max {frame_max}", body.len());
        }
    }

    #[test]
    fn needs_whole_frame() {
        let mut out = BytesMut::new();
        write_heartbeat(&mut out);
        let mut partial = BytesMut::from(&out[..5]);
        assert_eq!(parse_frame(&mut partial, 0).unwrap(), None);
        let f = parse_frame(&mut out, 0).unwrap().unwrap();
        assert_eq!(f.kind, FrameKind::Heartbeat);
        assert!(out.is_empty());
    }

    #[test]
    fn bad_end_byte_is_frame_error() {
        let mut b = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xCD][..]);
        assert_eq!(parse_frame(&mut b, 0).unwrap_err().code(), 501);
    }

    #[test]
    fn octets_render_like_erlang() {
        assert_eq!(erlang_binary(b""), "<<>>");
        assert_eq!(erlang_binary(b"zz"), "<<\"zz\">>");
        assert_eq!(erlang_binary(&[0, 10, 0, 50]), "<<0,10,0,50>>");
    }

    #[test]
    fn unknown_type_is_frame_error() {
        let mut b = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(parse_frame(&mut b, 0).unwrap_err().code(), 501);
    }

    #[test]
    fn oversized_frame_is_rejected_before_it_arrives() {
        let mut b = BytesMut::from(&[3u8, 0, 1, 0, 1, 0, 0][..]);
        assert_eq!(parse_frame(&mut b, 4096).unwrap_err().code(), 501);
    }

    #[test]
    fn hand_written_deliver_matches_generated() {
        let mut mine = BytesMut::new();
        write_deliver(&mut mine, 3, "ctag", 42, true, "ex", "rk");
        let mut theirs = BytesMut::new();
        let m = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 42,
            redelivered: true,
            exchange: "ex".into(),
            routing_key: "rk".into(),
        }));
        write_method(&mut theirs, 3, &m);
        assert_eq!(mine, theirs);
        let f = parse_frame(&mut mine, 0).unwrap().unwrap();
        assert_eq!(decode_method(&f.payload).unwrap(), m);
    }

    #[test]
    fn hand_written_get_ok_and_return_match_generated() {
        let mut mine = BytesMut::new();
        write_get_ok(&mut mine, 1, 7, false, "", "q", 9);
        write_return(&mut mine, 1, 312, "NO_ROUTE", "x", "k");
        write_confirm(&mut mine, 1, 5, true, true);
        write_confirm(&mut mine, 1, 6, false, false);
        let mut theirs = BytesMut::new();
        for m in [
            basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: 7,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 9,
            }),
            basic::AMQPMethod::Return(basic::Return {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: "x".into(),
                routing_key: "k".into(),
            }),
            basic::AMQPMethod::Ack(basic::Ack { delivery_tag: 5, multiple: true }),
            basic::AMQPMethod::Nack(basic::Nack { delivery_tag: 6, multiple: false, requeue: false }),
        ] {
            write_method(&mut theirs, 1, &AMQPClass::Basic(m));
        }
        assert_eq!(mine, theirs);
    }

    #[test]
    fn body_is_split_by_frame_max() {
        let mut out = BytesMut::new();
        let body = vec![7u8; 10_000];
        write_content(&mut out, 1, 4096, &[0, 0], &body);
        let mut sizes = vec![];
        while let Some(f) = parse_frame(&mut out, 4096).unwrap() {
            sizes.push((f.kind, f.payload.len()));
        }
        assert_eq!(
            sizes,
            vec![(FrameKind::Header, 14), (FrameKind::Body, 4088), (FrameKind::Body, 4088), (FrameKind::Body, 1824)]
        );
    }

    fn flatten(out: &Out) -> Vec<u8> {
        let mut v = vec![std::io::IoSlice::new(&[]); 1024];
        let n = out.io_slices(&mut v);
        v[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn shared_bodies_write_the_same_bytes_as_copied_ones() {
        let cases =
            [(0, 4096), (100, 4096), (SHARE_BODY_FROM, 4096), (70_000, 131_072), (70_000, 4096), (300_000, 131_072)];
        for ((size, frame_max), split) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
            let whole = Bytes::from((0..size).map(|i| i as u8).collect::<Vec<u8>>());
            // In parts: cut at a third and at two thirds (a frame then
            // takes pieces of two parts), or at frame boundaries.
            let cuts = if size == 300_000 { [131_064, 262_128] } else { [size / 3, 2 * size / 3] };
            let body = if split {
                Body::from_parts(vec![whole.slice(..cuts[0]), whole.slice(cuts[0]..cuts[1]), whole.slice(cuts[1]..)])
            } else {
                Body::from(whole.clone())
            };
            let mut copied = BytesMut::new();
            write_deliver(&mut copied, 3, "ctag", 9, false, "ex", "rk");
            write_content(&mut copied, 3, frame_max, &[0, 0], &whole);
            write_heartbeat(&mut copied);
            let mut out = Out::with_capacity(16);
            write_deliver(&mut out, 3, "ctag", 9, false, "ex", "rk");
            write_content_out(&mut out, 3, frame_max, &[0, 0], &body);
            write_heartbeat(&mut out);
            assert_eq!(out.has_segments(), size >= SHARE_BODY_FROM);
            assert_eq!(out.len(), copied.len());
            assert_eq!(flatten(&out), &copied[..], "{size} / {frame_max}");
            // Written out in pieces, the rest is what was not written.
            for n in [0, 1, 40, out.len() / 2, out.len() - 1] {
                let mut o = Out::default();
                write_content_out(&mut o, 3, frame_max, &[0, 0], &body);
                write_heartbeat(&mut o);
                let whole = flatten(&o);
                let n = n.min(whole.len());
                o.advance(n);
                assert_eq!(o.len(), whole.len() - n);
                assert_eq!(flatten(&o), &whole[n..]);
                let mut chunks = vec![];
                o.take_chunks(|c| chunks.extend_from_slice(&c));
                assert_eq!(chunks, &whole[n..]);
                assert!(o.is_empty());
            }
        }
    }

    #[test]
    fn truncate_drops_what_came_after_the_mark() {
        let body = Body::from(vec![5u8; SHARE_BODY_FROM * 2]);
        for before in [0usize, 1] {
            let mut out = Out::default();
            if before == 1 {
                write_content_out(&mut out, 1, 131_072, &[0, 0], &body);
            }
            let expect = flatten(&out);
            let mark = out.len();
            write_content_out(&mut out, 2, 131_072, &[0, 0], &body);
            write_heartbeat(&mut out);
            out.truncate(mark);
            assert_eq!(flatten(&out), expect);
            // A mark inside the buffer part.
            write_heartbeat(&mut out);
            let mark = out.len();
            write_heartbeat(&mut out);
            out.truncate(mark);
            assert_eq!(out.len(), mark);
        }
    }
}
