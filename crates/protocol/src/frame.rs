//! Frame layer: splitting a byte stream into frames, and writing frames.
//!
//! A frame is `type:u8 channel:u16 size:u32 payload[size] 0xCE`. Parsing
//! never copies a payload: [`Frame::payload`] is a slice of the read buffer.
//! Writers append to a `BytesMut` so that a connection can batch many frames
//! into one socket write.

use bytes::{Buf, BufMut, Bytes, BytesMut};

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

/// One frame as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub channel: u16,
    pub payload: Bytes,
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
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
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
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    Ok(Some(Frame { kind, channel, payload }))
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

/// Content header and body frames. `properties` is the encoded property
/// flags and list exactly as the publisher sent them.
pub fn write_content(buf: &mut BytesMut, channel: u16, frame_max: u32, properties: &[u8], body: &[u8]) {
    let at = begin_frame(buf, FRAME_HEADER, channel);
    buf.put_u16(60);
    buf.put_u16(0);
    buf.put_u64(body.len() as u64);
    buf.put_slice(properties);
    finish_frame(buf, at);
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

pub fn write_heartbeat(buf: &mut BytesMut) {
    buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::decode_method;
    use amq_protocol::protocol::basic;

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
}
