//! Property-based fuzzing of the codec: arbitrary and mutated byte streams
//! go through frame parsing, method decoding and content assembly. Nothing
//! may panic; every failure must be an AMQP error with a hard (connection)
//! or soft (channel) code from the spec.
//!
//! Runs 256 cases per property by default; a long run:
//! `PROPTEST_CASES=1000000 cargo test -p warren-protocol --test fuzz_codec --release`

use amq_protocol::protocol::{basic, queue, AMQPClass};
use bytes::BytesMut;
use proptest::prelude::*;
use warren_protocol::content::Assembler;
use warren_protocol::frame::{parse_frame, write_content, write_method, FrameKind, Payload};
use warren_protocol::method::{decode_method, parse_publish};
use warren_protocol::{AmqpError, FieldTable};

const CODES: &[u16] = &[311, 312, 313, 320, 402, 403, 404, 405, 406, 501, 502, 503, 504, 505, 506, 530, 540, 541];

fn check(e: &AmqpError) {
    assert!(CODES.contains(&e.code()), "unexpected reply code {}", e.code());
    assert!(e.text.starts_with(e.kind.name()), "text {:?} does not start with its name", e.text);
}

/// Feeds a byte stream through everything a connection does with it.
fn feed(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    let mut assembler = Assembler::default();
    loop {
        match parse_frame(&mut buf, 131_072) {
            Ok(None) => return,
            Err(e) => return check(&e),
            Ok(Some(f)) => {
                let r = match f.kind {
                    FrameKind::Method => match parse_publish(&f.payload) {
                        Some(Ok(_)) => {
                            assembler.start();
                            Ok(None)
                        }
                        Some(Err(e)) => Err(e),
                        None => decode_method(&f.payload).map(|_| None),
                    },
                    FrameKind::Header => assembler.header(&f.payload, 1 << 20),
                    FrameKind::Body => assembler.body(Payload::Borrowed(&f.payload)),
                    FrameKind::Heartbeat => Ok(None),
                };
                if let Err(e) = r {
                    check(&e);
                    assembler = Assembler::default();
                }
            }
        }
    }
}

/// A valid stream: a queue.declare, then a publish with its content.
fn valid_stream(body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    let declare = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: "q".into(),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }));
    write_method(&mut b, 1, &declare);
    let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: "q".into(),
        mandatory: false,
        immediate: false,
    }));
    write_method(&mut b, 1, &publish);
    write_content(
        &mut b,
        1,
        4096,
        &[0x90, 0x00, 0x0a, b't', b'e', b'x', b't', b'/', b'p', b'l', b'a', b'i', b'n', 2],
        body,
    );
    b.to_vec()
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        feed(&bytes);
    }

    #[test]
    fn frames_with_arbitrary_payloads_never_panic(
        frames in proptest::collection::vec((1u8..=9, 0u16..4, proptest::collection::vec(any::<u8>(), 0..300)), 1..8)
    ) {
        let mut b = Vec::new();
        for (t, ch, payload) in frames {
            b.push(t);
            b.extend_from_slice(&ch.to_be_bytes());
            b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            b.extend_from_slice(&payload);
            b.push(0xCE);
        }
        feed(&b);
    }

    #[test]
    fn mutated_valid_streams_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..10_000),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut b = valid_stream(&body);
        feed(&b); // the unmutated stream parses
        for (at, byte) in flips {
            let i = at.index(b.len());
            b[i] = byte;
        }
        let end = cut.index(b.len() + 1);
        feed(&b[..end]);
    }
}

#[test]
fn the_valid_stream_is_valid() {
    let b = valid_stream(b"hello");
    let mut buf = BytesMut::from(&b[..]);
    let mut kinds = vec![];
    while let Some(f) = parse_frame(&mut buf, 131_072).unwrap() {
        kinds.push(f.kind);
    }
    assert_eq!(kinds, [FrameKind::Method, FrameKind::Method, FrameKind::Header, FrameKind::Body]);
}

/// The fast property scanner must accept what the full parser accepts,
/// and besides only lists with short strings or `headers` names that are
/// not UTF-8 (which RabbitMQ takes and the parser refuses): made UTF-8,
/// those parse. Both read the same values.
fn scan_agrees(raw: &[u8]) {
    use amq_protocol::protocol::basic::parse_properties;
    use std::borrow::Cow;
    let full = parse_properties(raw);
    let fast = warren_protocol::content::scan_properties(raw);
    let utf8 = warren_protocol::content::utf8_properties(raw);
    assert_eq!(fast.is_some(), utf8.is_some(), "disagree on {raw:?}");
    assert_eq!(fast.is_some(), warren_protocol::content::decode_properties(raw).is_some(), "decode {raw:?}");
    if full.is_ok() {
        assert!(fast.is_some(), "the parser takes {raw:?}");
    }
    let (Some(v), Some(made)) = (fast, utf8) else { return };
    let (_, p) = parse_properties(&made[..]).expect("made UTF-8, it parses");
    // Nothing to make UTF-8: the parser took it as it came.
    assert_eq!(matches!(made, Cow::Borrowed(_)), full.is_ok(), "{raw:?}");
    assert_eq!(v.delivery_mode, *p.delivery_mode());
    assert_eq!(v.priority, *p.priority());
    let table = v.headers.map(|t| {
        let t = warren_protocol::table::lossy(t).expect("scanned");
        amq_protocol::types::parsing::parse_field_table(&t[..]).expect("made UTF-8").1
    });
    assert_eq!(table.as_ref(), p.headers().as_ref());
    // A value that is not UTF-8 reads as NOT_UTF8; the parser reads it
    // with U+FFFD in place of what is not.
    let same = |fast: Option<&str>, full: Option<&amq_protocol::types::ShortString>| match (fast, full) {
        (Some(warren_protocol::content::NOT_UTF8), Some(s)) => s.as_str().contains('\u{FFFD}'),
        (a, b) => a == b.map(|s| s.as_str()),
    };
    assert!(same(v.reply_to, p.reply_to().as_ref()));
    assert!(same(v.expiration, p.expiration().as_ref()));
    assert!(same(v.user_id, p.user_id().as_ref()));
    // A checked list reads the same when its table is stepped over.
    let past = warren_protocol::content::scan_past_headers(raw).expect("a checked list");
    assert_eq!(past, v);
}

fn short() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-z0-9.\u{e9}-]{0,12}")
}

proptest! {
    #[test]
    fn property_scanner_agrees_with_the_full_parser(
        ct in short(), reply in short(), exp in short(), user in short(), mid in short(), app in short(),
        mode in proptest::option::of(any::<u8>()), prio in proptest::option::of(any::<u8>()),
        ts in proptest::option::of(any::<u64>()), header in proptest::option::of(("[a-z]{1,6}", any::<i64>())),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        use amq_protocol::protocol::basic::AMQPProperties;
        let mut p = AMQPProperties::default();
        if let Some(v) = ct { p = p.with_content_type(v.as_str().into()); }
        if let Some(v) = reply { p = p.with_reply_to(v.as_str().into()); }
        if let Some(v) = exp { p = p.with_expiration(v.as_str().into()); }
        if let Some(v) = user { p = p.with_user_id(v.as_str().into()); }
        if let Some(v) = mid { p = p.with_message_id(v.as_str().into()); }
        if let Some(v) = app { p = p.with_app_id(v.as_str().into()); }
        if let Some(v) = mode { p = p.with_delivery_mode(v); }
        if let Some(v) = prio { p = p.with_priority(v); }
        if let Some(v) = ts { p = p.with_timestamp(v); }
        if let Some((k, v)) = header {
            let mut t = FieldTable::default();
            t.insert(k.as_str().into(), amq_protocol::types::AMQPValue::LongLongInt(v));
            p = p.with_headers(t);
        }
        let mut raw = warren_protocol::content::encode_properties(&p).to_vec();
        scan_agrees(&raw);
        for (at, byte) in flips {
            if raw.is_empty() { break; }
            let i = at.index(raw.len());
            raw[i] = byte;
        }
        if let Some(c) = cut {
            raw.truncate(c.index(raw.len() + 1));
        }
        scan_agrees(&raw);
    }

    #[test]
    fn property_scanner_agrees_on_arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        scan_agrees(&raw);
    }
}

/// A table's scan accepts what the parser accepts, and besides only
/// tables with names that are not UTF-8: made UTF-8 (`lossy`), those
/// parse. `get` reads each name's value as the decoded table holds it.
fn table_agrees(raw: &[u8]) {
    use std::borrow::Cow;
    use warren_protocol::table::{get, lossy, scan, Scan};
    let full = amq_protocol::types::parsing::parse_field_table(raw);
    let fast = scan(raw);
    let made = lossy(raw);
    assert_eq!(matches!(fast, Scan::Fits(_)), made.is_some(), "{raw:?}");
    if full.is_ok() {
        assert!(matches!(fast, Scan::Fits(_)), "the parser takes {raw:?}");
    }
    let (Scan::Fits(n), Some(made)) = (fast, made) else { return };
    // Nothing to make UTF-8: the parser took it as it came.
    assert_eq!(matches!(made, Cow::Borrowed(_)), full.is_ok(), "{raw:?}");
    let (rest, t) = amq_protocol::types::parsing::parse_field_table(&made[..]).expect("made UTF-8, it parses");
    assert!(rest.is_empty());
    if let Ok((rest, _)) = full {
        assert_eq!(n, raw.len() - rest.len());
        for (k, v) in t.inner() {
            assert_eq!(get(raw, k.as_str()).as_ref(), Some(v), "{k:?} in {raw:?}");
        }
    }
    assert_eq!(get(raw, "not-there"), None);
}

fn value() -> impl Strategy<Value = warren_protocol::AMQPValue> {
    use warren_protocol::AMQPValue;
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        "[a-z\u{e9}]{0,8}".prop_map(|s| AMQPValue::LongString(s.as_str().into())),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| AMQPValue::FieldArray(amq_protocol::types::FieldArray::from(v))),
            proptest::collection::vec(("[a-z\u{e9}]{0,5}", inner), 0..4).prop_map(|kv| {
                let mut t = FieldTable::default();
                for (k, v) in kv {
                    t.insert(k.as_str().into(), v);
                }
                AMQPValue::FieldTable(t)
            }),
        ]
    })
}

proptest! {
    #[test]
    fn table_scanner_agrees_with_the_full_parser(
        entries in proptest::collection::vec(("[a-z\u{e9}-]{0,6}", value()), 0..6),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(k.as_str().into(), v);
        }
        let mut raw =
            cookie_factory::gen_simple(amq_protocol::types::generation::gen_field_table(&t), Vec::new()).unwrap();
        table_agrees(&raw);
        for (at, byte) in flips {
            let i = at.index(raw.len());
            raw[i] = byte;
        }
        if let Some(c) = cut {
            raw.truncate(c.index(raw.len() + 1));
        }
        table_agrees(&raw);
    }
}

/// A body of `len` bytes that depend on `seed` and their position.
fn patterned(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// However a body is cut into frames, and whichever frames arrive as
    /// slices of the read buffer, it assembles to the bytes sent; kept in
    /// parts exactly when every frame but the last was a big shared one;
    /// and framed again for any frame_max, it reads back the same.
    #[test]
    fn bodies_in_any_frames_assemble_and_frame_exactly(
        seed in any::<u64>(),
        len in 1usize..80_000,
        cuts in proptest::collection::vec((1usize..40_000, any::<bool>()), 1..8),
        frame_max in 4096u32..140_000,
    ) {
        use bytes::Bytes;
        use warren_protocol::frame::{Out, write_content_out};
        let body = Bytes::from(patterned(seed, len));
        // Header: class 60, weight 0, the size, no properties.
        let mut header = vec![0, 60, 0, 0];
        header.extend_from_slice(&(len as u64).to_be_bytes());
        header.extend_from_slice(&[0, 0]);
        let mut a = Assembler::default();
        a.start();
        prop_assert!(a.header(&header, u64::MAX).unwrap().is_none());
        let (mut at, mut frames, mut all_big_shared) = (0, 0, true);
        let mut cuts = cuts.into_iter().cycle();
        let content = loop {
            let (size, shared) = cuts.next().unwrap();
            let end = (at + size).min(len);
            let last = end == len;
            let piece = body.slice(at..end);
            if !last && (!shared || piece.len() < warren_protocol::frame::SHARE_BODY_FROM) {
                all_big_shared = false;
            }
            let payload = if shared { Payload::Shared(piece.clone()) } else { Payload::Borrowed(&piece) };
            let done = a.body(payload).unwrap();
            frames += 1;
            at = end;
            if last {
                break done.expect("complete at the last byte");
            }
            prop_assert!(done.is_none());
        };
        prop_assert!(a.is_idle());
        let got = content.body;
        prop_assert_eq!(got.len(), len);
        prop_assert!(got == body[..]);
        let expect_parts = if frames > 1 && all_big_shared { frames } else { 1 };
        prop_assert_eq!(got.parts().len(), expect_parts);
        // Framed for a consumer, then parsed back.
        let mut out = Out::default();
        write_content_out(&mut out, 1, frame_max, &[0, 0], &got);
        let mut wire = BytesMut::new();
        out.take_chunks(|c| wire.extend_from_slice(&c));
        let mut back = Vec::new();
        while let Some(f) = parse_frame(&mut wire, frame_max).unwrap() {
            if f.kind == FrameKind::Body {
                back.extend_from_slice(&f.payload);
            }
        }
        prop_assert!(wire.is_empty());
        prop_assert!(back == body[..]);
    }
}
