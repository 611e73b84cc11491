//! A guard in front of the field-table parser: how deeply tables and
//! arrays nest, measured without recursion.
//!
//! `amq-protocol` parses (and later drops, clones and compares) nested field
//! tables recursively. A 128 KiB frame holds ~18,000 levels of `F` inside
//! `F`, far more than a thread's stack survives: one such `queue.declare`
//! aborted the whole process. Every table a peer sends (method arguments,
//! `connection.start-ok` client properties, the `headers` property, an
//! AMQPLAIN response) is measured here first, with an explicit stack, and
//! refused beyond [`MAX_DEPTH`] levels. RabbitMQ has no such limit (Erlang
//! recursion is unbounded); no client nests anywhere near it.

use crate::error::AmqpError;

/// The deepest nesting of tables and arrays accepted, counting the outer
/// table as 1.
pub const MAX_DEPTH: usize = 64;
const _: () = assert!(MAX_DEPTH <= 64, "one bit of `tables` a level");

/// What the scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Well formed and within [`MAX_DEPTH`]; the table took this many octets.
    Fits(usize),
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Not a well-formed table: the real parser rejects it too, having
    /// recursed no deeper than the scan had got (both read in one order).
    /// (The parser also refuses names that are not UTF-8, which the scan
    /// accepts, as RabbitMQ does: see [`lossy`].)
    Malformed,
}

/// Measures the field table (length-prefixed) at the start of `bytes`.
pub fn scan(bytes: &[u8]) -> Scan {
    // Each open table or array: where it ends, and (bit i of `tables`)
    // whether it is a table, whose entries have a name before their value.
    // On the stack: every message's `headers` property is scanned.
    let mut ends = [0usize; MAX_DEPTH];
    let mut tables: u64 = 1;
    let Some(len) = read_u32(bytes, 0) else { return Scan::Malformed };
    let mut at = 4;
    ends[0] = at + len;
    let mut depth = 1;
    loop {
        if depth == 0 {
            return Scan::Fits(at);
        }
        let (end, is_table) = (ends[depth - 1], tables & (1 << (depth - 1)) != 0);
        if at == end {
            depth -= 1;
            continue;
        }
        if at > end || end > bytes.len() {
            return Scan::Malformed;
        }
        if is_table {
            // A name is a short string, of any octets (RabbitMQ takes names
            // that are not UTF-8 and passes them on unchanged).
            let Some(&n) = bytes.get(at) else { return Scan::Malformed };
            at += 1 + n as usize;
        }
        let Some(&kind) = bytes.get(at) else { return Scan::Malformed };
        at += 1;
        let fixed = match kind {
            b'S' | b'x' => {
                let Some(n) = read_u32(bytes, at) else { return Scan::Malformed };
                4 + n
            }
            b'F' | b'A' => {
                let Some(n) = read_u32(bytes, at) else { return Scan::Malformed };
                at += 4;
                if depth >= MAX_DEPTH {
                    return Scan::TooDeep;
                }
                ends[depth] = at + n;
                tables = (tables & !(1 << depth)) | (u64::from(kind == b'F') << depth);
                depth += 1;
                continue;
            }
            _ => match width(kind) {
                Some(w) => w,
                None => return Scan::Malformed,
            },
        };
        at += fixed;
    }
}

/// The value named `key` in the outermost level of a field table
/// (length-prefixed) that [`scan`] found to fit; only that value is
/// decoded. None if there is no such entry (or the table is malformed).
pub fn get(bytes: &[u8], key: &str) -> Option<crate::AMQPValue> {
    let end = read_u32(bytes, 0)?.checked_add(4)?;
    let bytes = bytes.get(..end)?;
    let mut at = 4;
    // A name given twice means its last value, as in a decoded table.
    let mut found = None;
    while at < end {
        let n = *bytes.get(at)? as usize;
        let name = bytes.get(at + 1..at + 1 + n)?;
        at += 1 + n;
        if name == key.as_bytes() {
            found = Some(at);
        }
        let kind = *bytes.get(at)?;
        at += 1 + value_len(bytes, kind, at + 1)?;
    }
    amq_protocol::types::parsing::parse_value(bytes.get(found?..)?).ok().map(|(_, v)| v)
}

/// The field table (length-prefixed) at the start of `bytes`, which
/// [`scan`] found to fit, with every name that is not UTF-8 made UTF-8
/// (each invalid sequence becomes U+FFFD, cut to 255 octets on a character
/// boundary), at any depth; borrowed if every name already is. For the
/// parser, which refuses such names: the broker passes a message's
/// properties on as they came, and decodes them whole only where it
/// changes them (dead-lettering, direct reply-to), shows them (the
/// management API) or matches on the whole table (headers exchanges).
/// None if the table does not fit.
pub fn lossy(bytes: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    let Scan::Fits(n) = scan(bytes) else { return None };
    let bytes = &bytes[..n];
    if names_are_utf8(bytes, 0, true) {
        return Some(std::borrow::Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(n + 16);
    rewrite(bytes, 0, true, &mut out);
    Some(std::borrow::Cow::Owned(out))
}

/// Whether every name in the table (`is_table`) or array at `at` (its
/// length first) is UTF-8, nested ones too. Only for bytes that [`scan`]
/// found to fit (it bounds the depth of this recursion).
fn names_are_utf8(bytes: &[u8], at: usize, is_table: bool) -> bool {
    each_entry(bytes, at, is_table, |name, kind, value_at| {
        name.is_none_or(|n| std::str::from_utf8(n).is_ok())
            && (!matches!(kind, b'F' | b'A') || names_are_utf8(bytes, value_at, kind == b'F'))
    })
}

/// Writes the table (`is_table`) or array at `at` into `out`, names made
/// UTF-8, its length prefix recomputed.
fn rewrite(bytes: &[u8], at: usize, is_table: bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    each_entry(bytes, at, is_table, |name, kind, value_at| {
        if let Some(name) = name {
            let name = String::from_utf8_lossy(name);
            let name = crate::error::prefix_within(&name, crate::error::SHORT_MAX);
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
        }
        out.push(kind);
        match kind {
            b'F' | b'A' => rewrite(bytes, value_at, kind == b'F', out),
            _ => out.extend_from_slice(&bytes[value_at..value_at + value_len(bytes, kind, value_at).expect("scanned")]),
        }
        true
    });
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Calls `each(name, kind, where the value starts)` for the entries of the
/// table (`is_table`: names first) or array at `at`, its length first,
/// while `each` returns true; returns whether it always did. Only for
/// bytes that [`scan`] found to fit.
fn each_entry(bytes: &[u8], at: usize, is_table: bool, mut each: impl FnMut(Option<&[u8]>, u8, usize) -> bool) -> bool {
    let end = at + 4 + read_u32(bytes, at).expect("scanned");
    let mut at = at + 4;
    while at < end {
        let name = is_table.then(|| {
            let n = bytes[at] as usize;
            at += 1 + n;
            &bytes[at - n..at]
        });
        let kind = bytes[at];
        if !each(name, kind, at + 1) {
            return false;
        }
        at += 1 + value_len(bytes, kind, at + 1).expect("scanned");
    }
    true
}

/// The length of a value of `kind` at `at` (after its kind octet); None
/// if its kind is unknown or its length field is cut off.
fn value_len(bytes: &[u8], kind: u8, at: usize) -> Option<usize> {
    match kind {
        b'S' | b'x' | b'F' | b'A' => Some(4 + read_u32(bytes, at)?),
        _ => width(kind),
    }
}

/// The size of a value of a fixed-size kind (after its kind octet).
fn width(kind: u8) -> Option<usize> {
    Some(match kind {
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => 0,
        _ => return None,
    })
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// The fields before a method's field table, in order.
#[derive(Clone, Copy)]
enum Field {
    Octet,
    Short,
    ShortStr,
}

/// Where the field table sits in a method's arguments, for the methods that
/// carry one (the spec's layouts).
fn layout(class: u16, method: u16) -> Option<&'static [Field]> {
    use Field::*;
    Some(match (class, method) {
        (10, 10) => &[Octet, Octet],                                          // connection.start
        (10, 11) => &[],                                                      // connection.start-ok
        (40, 10) => &[Short, ShortStr, ShortStr, Octet],                      // exchange.declare
        (40, 30) | (40, 40) => &[Short, ShortStr, ShortStr, ShortStr, Octet], // exchange.bind / unbind
        (50, 10) => &[Short, ShortStr, Octet],                                // queue.declare
        (50, 20) => &[Short, ShortStr, ShortStr, ShortStr, Octet],            // queue.bind
        (50, 50) => &[Short, ShortStr, ShortStr, ShortStr],                   // queue.unbind
        (60, 20) => &[Short, ShortStr, ShortStr, Octet],                      // basic.consume
        _ => return None,
    })
}

/// Refuses a method payload (class and method ids first) whose field table
/// nests deeper than [`MAX_DEPTH`]. Anything malformed is left for the
/// parser to report.
pub fn check_method(payload: &[u8]) -> Result<(), AmqpError> {
    let Some(ids) = payload.get(..4) else { return Ok(()) };
    let (class, method) = (u16::from_be_bytes([ids[0], ids[1]]), u16::from_be_bytes([ids[2], ids[3]]));
    let Some(fields) = layout(class, method) else { return Ok(()) };
    let mut at = 4;
    for f in fields {
        at += match f {
            Field::Octet => 1,
            Field::Short => 2,
            Field::ShortStr => match payload.get(at) {
                Some(&n) => 1 + n as usize,
                None => return Ok(()),
            },
        };
    }
    match payload.get(at..).map(scan) {
        Some(Scan::TooDeep) => Err(too_deep().during(class, method)),
        _ => Ok(()),
    }
}

/// The error for a table nested too deeply.
pub fn too_deep() -> AmqpError {
    AmqpError::frame_error(format_args!("field table nested deeper than {MAX_DEPTH} levels"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};

    fn encode(t: &FieldTable) -> Vec<u8> {
        cookie_factory::gen_simple(amq_protocol::types::generation::gen_field_table(t), Vec::new()).unwrap()
    }

    /// A table of `entries` (name, kind, value octets), its length first.
    fn raw_table(entries: &[(&[u8], u8, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, kind, value) in entries {
            body.push(name.len() as u8);
            body.extend_from_slice(name);
            body.push(*kind);
            body.extend_from_slice(value);
        }
        [(body.len() as u32).to_be_bytes().to_vec(), body].concat()
    }

    #[test]
    fn names_that_are_not_utf8_are_made_utf8_at_any_depth() {
        let inner = raw_table(&[(b"\xc3\x28", b'I', vec![0, 0, 0, 7])]);
        let array = [(inner.len() as u32 + 1).to_be_bytes().to_vec(), vec![b'F'], inner.clone()].concat();
        let raw = raw_table(&[
            (b"\xff", b'S', vec![0, 0, 0, 1, b'v']),
            (b"ok", b'F', inner),
            (b"list", b'A', array),
            (b"n", b'b', vec![5]),
        ]);
        assert_eq!(scan(&raw), Scan::Fits(raw.len()));
        assert!(amq_protocol::types::parsing::parse_field_table(&raw[..]).is_err());
        // Read by name, the bytes are compared: the other entries are found.
        assert_eq!(get(&raw, "n"), Some(AMQPValue::ShortShortInt(5)));
        let made = lossy(&raw).unwrap();
        assert!(matches!(made, std::borrow::Cow::Owned(_)));
        let t = amq_protocol::types::parsing::parse_field_table(&made[..]).unwrap().1;
        let mut inner = FieldTable::default();
        inner.insert("\u{FFFD}(".into(), AMQPValue::LongInt(7));
        let mut want = FieldTable::default();
        want.insert("\u{FFFD}".into(), AMQPValue::LongString("v".into()));
        want.insert("ok".into(), AMQPValue::FieldTable(inner.clone()));
        want.insert("list".into(), AMQPValue::FieldArray(vec![AMQPValue::FieldTable(inner)].into()));
        want.insert("n".into(), AMQPValue::ShortShortInt(5));
        assert_eq!(t, want);
        // UTF-8 throughout: borrowed, as it is (without what follows it).
        let fine = encode(&want);
        let with_more = [fine.clone(), vec![1, 2, 3]].concat();
        assert!(matches!(lossy(&with_more), Some(std::borrow::Cow::Borrowed(b)) if b == &fine[..]));
        assert_eq!(lossy(&raw[..raw.len() - 1]), None);
    }

    /// Raw bytes of `depth` tables, each holding the next under key "a".
    fn nested_raw(depth: usize) -> Vec<u8> {
        // Level i (0 = outermost) holds one 7-octet entry per level below it.
        let mut t = Vec::with_capacity(depth * 7);
        for i in 0..depth - 1 {
            t.extend_from_slice(&((7 * (depth - 1 - i)) as u32).to_be_bytes());
            t.extend_from_slice(&[1, b'a', b'F']);
        }
        t.extend_from_slice(&0u32.to_be_bytes());
        t
    }

    #[test]
    fn measures_nesting_without_recursion() {
        assert_eq!(scan(&nested_raw(MAX_DEPTH)), Scan::Fits(nested_raw(MAX_DEPTH).len()));
        assert_eq!(scan(&nested_raw(MAX_DEPTH + 1)), Scan::TooDeep);
        // Far deeper than any stack would survive in the real parser.
        assert_eq!(scan(&nested_raw(200_000)), Scan::TooDeep);
    }

    #[test]
    fn agrees_with_the_parser_on_every_type() {
        let mut inner = FieldTable::default();
        inner.insert("x".into(), AMQPValue::LongString(b"bytes".to_vec().into()));
        let mut arr = FieldArray::default();
        for v in [
            AMQPValue::Boolean(true),
            AMQPValue::ShortShortInt(-1),
            AMQPValue::ShortShortUInt(1),
            AMQPValue::ShortInt(-2),
            AMQPValue::ShortUInt(2),
            AMQPValue::LongInt(-3),
            AMQPValue::LongUInt(3),
            AMQPValue::LongLongInt(-4),
            AMQPValue::Float(1.5),
            AMQPValue::Double(2.5),
            AMQPValue::DecimalValue(amq_protocol::types::DecimalValue { scale: 2, value: 5 }),
            AMQPValue::Timestamp(7),
            AMQPValue::ByteArray(vec![1, 2, 3].into()),
            AMQPValue::Void,
            AMQPValue::FieldTable(inner.clone()),
        ] {
            arr.push(v);
        }
        let mut t = FieldTable::default();
        t.insert("arr".into(), AMQPValue::FieldArray(arr));
        t.insert("tbl".into(), AMQPValue::FieldTable(inner));
        let bytes = encode(&t);
        assert_eq!(scan(&bytes), Scan::Fits(bytes.len()));
        for cut in 0..bytes.len() {
            assert_eq!(scan(&bytes[..cut]), Scan::Malformed, "cut at {cut}");
        }
    }

    #[test]
    fn finds_the_table_in_every_method_that_has_one() {
        use crate::frame::write_method;
        use amq_protocol::protocol::{basic, exchange, queue, AMQPClass};
        let deep = |depth: usize| {
            let (_, t) = amq_protocol::types::parsing::parse_field_table(&nested_raw(depth)[..]).unwrap();
            t
        };
        let methods = |t: FieldTable| {
            vec![
                AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                    exchange: "x".into(),
                    kind: "direct".into(),
                    arguments: t.clone(),
                    ..Default::default()
                })),
                AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                    destination: "d".into(),
                    source: "s".into(),
                    routing_key: "k".into(),
                    nowait: false,
                    arguments: t.clone(),
                })),
                AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                    destination: "d".into(),
                    source: "s".into(),
                    routing_key: "k".into(),
                    nowait: false,
                    arguments: t.clone(),
                })),
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: "q".into(),
                    arguments: t.clone(),
                    ..Default::default()
                })),
                AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: "q".into(),
                    exchange: "x".into(),
                    routing_key: "k".into(),
                    nowait: false,
                    arguments: t.clone(),
                })),
                AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                    queue: "q".into(),
                    exchange: "x".into(),
                    routing_key: "k".into(),
                    arguments: t.clone(),
                })),
                AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue: "q".into(),
                    consumer_tag: "c".into(),
                    arguments: t.clone(),
                    ..Default::default()
                })),
                AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::StartOk(
                    amq_protocol::protocol::connection::StartOk {
                        client_properties: t.clone(),
                        mechanism: "PLAIN".into(),
                        response: "x".into(),
                        locale: "en_US".into(),
                    },
                )),
            ]
        };
        for (depth, ok) in [(MAX_DEPTH, true), (MAX_DEPTH + 1, false)] {
            for m in methods(deep(depth)) {
                let mut b = bytes::BytesMut::new();
                write_method(&mut b, 1, &m);
                let payload = &b[7..b.len() - 1];
                assert_eq!(check_method(payload).is_ok(), ok, "{m:?} at depth {depth}");
            }
        }
    }

    #[test]
    fn a_name_given_twice_reads_as_its_last_value_as_when_decoded() {
        // "k" = true, "n" = 7, "k" = false, written by hand: a table
        // encoder cannot repeat a name.
        let mut raw = vec![0, 0, 0, 0];
        raw.extend_from_slice(&[1, b'k', b't', 1, 1, b'n', b'I', 0, 0, 0, 7, 1, b'k', b't', 0]);
        let n = (raw.len() - 4) as u32;
        raw[..4].copy_from_slice(&n.to_be_bytes());
        assert_eq!(scan(&raw), Scan::Fits(raw.len()));
        let decoded = amq_protocol::types::parsing::parse_field_table(&raw[..]).unwrap().1;
        assert_eq!(decoded.inner().get("k"), Some(&AMQPValue::Boolean(false)));
        assert_eq!(get(&raw, "k"), Some(AMQPValue::Boolean(false)));
        assert_eq!(get(&raw, "n"), Some(AMQPValue::LongInt(7)));
        // A name that is not UTF-8 is taken (as RabbitMQ takes it), though
        // the parser refuses it; `get` still finds the others.
        raw[5] = 0xff;
        assert_eq!(scan(&raw), Scan::Fits(raw.len()));
        assert!(amq_protocol::types::parsing::parse_field_table(&raw[..]).is_err());
        assert_eq!(get(&raw, "n"), Some(AMQPValue::LongInt(7)));
    }
}
