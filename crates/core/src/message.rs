//! A published message, shared by every queue it was routed to.

use std::sync::Arc;

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::Bytes;
use once_cell::race::OnceBox;
use warren_protocol::{AMQPValue, AmqpError, Body, FieldTable, ShortString};
use warren_store::log::Persisted;

use crate::names::Names;

#[derive(Debug)]
pub struct Message {
    /// The exchange it was published to (as the publisher named it) and
    /// its routing key: see [`Message::exchange`], [`Message::routing_key`].
    pub names: Names,
    /// Property flags and list exactly as published: consumers get these bytes.
    pub properties_raw: Bytes,
    /// The properties routing and queue features read, parsed. The rest
    /// stay in `properties_raw` (see [`Message::full_properties`]): a full
    /// `AMQPProperties` costs ~340 bytes per queued message.
    pub properties: Props,
    /// Reference-counted: routing to N queues never copies it. A big body
    /// stays in the frames it arrived in ([`Body`]).
    pub body: Body,
    /// Set when the message log holds it (persistent, in a durable queue).
    /// Boxed: one word in every message, an allocation only in those.
    pub persisted: OnceBox<Persisted>,
}

pub type MessageRef = Arc<Message>;

/// The allocation the next message a publisher sends is built in, made
/// once the last one is routed. The allocator hands back memory last
/// written on another core, where a consumer freed a message; building the
/// message there made the core wait for those cache lines (5 % of a
/// transient run's samples). Made ahead, the allocator's read of the block
/// and the `Arc`'s counts are done between two messages, and the message's
/// lines are prefetched for writing.
pub struct Spare(Arc<std::mem::MaybeUninit<Message>>);

impl Spare {
    pub fn new() -> Spare {
        let spare = Arc::new_uninit();
        let at = Arc::as_ptr(&spare).cast::<u8>();
        // The first and last bytes of the message, and one a line after
        // the first: every line it spans, however it is aligned.
        for offset in [0, 64, std::mem::size_of::<Message>() - 1] {
            prefetch_for_write(at.wrapping_add(offset));
        }
        Spare(spare)
    }

    /// A message with these parts, in this allocation. Each part is
    /// written into it once: building a `Message` and then moving it in
    /// copied it through the stack, and loads of what had just been
    /// stored in narrower pieces stalled the core (store forwarding).
    pub fn fill(self, names: Names, properties_raw: Bytes, properties: Props, body: Body) -> MessageRef {
        // `MaybeUninit<Message>` is laid out as a `Message`.
        let at = Arc::as_ptr(&self.0).cast_mut().cast::<Message>();
        // SAFETY: the spare's `Arc` is never cloned (the field is private
        // and `Spare` is not `Clone`), so nothing else reads or writes
        // through it; every field is written before `assume_init`.
        unsafe {
            std::ptr::addr_of_mut!((*at).names).write(names);
            std::ptr::addr_of_mut!((*at).properties_raw).write(properties_raw);
            std::ptr::addr_of_mut!((*at).properties).write(properties);
            std::ptr::addr_of_mut!((*at).body).write(body);
            std::ptr::addr_of_mut!((*at).persisted).write(OnceBox::new());
            self.0.assume_init()
        }
    }
}

impl Default for Spare {
    fn default() -> Self {
        Spare::new()
    }
}

/// A hint: `at` will be written soon. No effect on what the program does.
#[inline(always)]
fn prefetch_for_write(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    if *PREFETCHW {
        // SAFETY: a prefetch never faults and writes nothing, whatever `at`
        // is; the CPU has the instruction.
        unsafe {
            std::arch::asm!("prefetchw [{0}]", in(reg) at, options(nostack, preserves_flags, readonly));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Whether the CPU has `prefetchw` (CPUID 8000_0001h, ECX bit 8; that
/// leaf exists on every x86-64 CPU). Rust's `_mm_prefetch` with a write
/// hint becomes a read prefetch unless the build targets such a CPU, and
/// a line fetched for reading must still be taken from the other core to
/// be written: measured, that gained nothing.
#[cfg(target_arch = "x86_64")]
static PREFETCHW: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    #[allow(unused_unsafe)]
    // SAFETY: `cpuid` is available on every x86-64 CPU.
    let ecx = unsafe { std::arch::x86_64::__cpuid(0x8000_0001) }.ecx;
    ecx & (1 << 8) != 0
});

/// The parsed properties a queued message keeps: 16 bytes (the
/// expiration most messages lack is boxed). The `headers` table stays
/// encoded in `properties_raw` ([`Message::header`], [`Message::headers`]):
/// decoding a celery message's 18 entries cost more than everything else
/// the broker does with it, and kept the table's ~40 allocations alive for
/// as long as the message was queued.
#[derive(Debug, Default, Clone)]
pub struct Props {
    priority: Option<u8>,
    delivery_mode: Option<u8>,
    expiration: Option<Box<ShortString>>,
}

impl Props {
    fn new(priority: Option<u8>, delivery_mode: Option<u8>, expiration: Option<ShortString>) -> Props {
        Props { priority, delivery_mode, expiration: expiration.map(Box::new) }
    }
    pub fn priority(&self) -> Option<u8> {
        self.priority
    }
    pub fn delivery_mode(&self) -> Option<u8> {
        self.delivery_mode
    }
    pub fn expiration(&self) -> Option<&ShortString> {
        self.expiration.as_deref()
    }
}

impl From<warren_protocol::content::PropsView<'_>> for Props {
    fn from(v: warren_protocol::content::PropsView<'_>) -> Self {
        Props::new(v.priority, v.delivery_mode, v.expiration.map(ShortString::from))
    }
}

impl From<AMQPProperties> for Props {
    fn from(p: AMQPProperties) -> Self {
        Props::new(*p.priority(), *p.delivery_mode(), p.expiration().clone())
    }
}

impl Message {
    /// A message as the message log gave it back (recovery, paging).
    pub fn from_stored(stored: &warren_store::log::StoredMessage, persisted: Persisted) -> Message {
        let raw = &stored.properties;
        let props = warren_protocol::content::scan_properties(raw).map(Props::from).unwrap_or_default();
        let m = Message::with_props(
            stored.exchange.as_str().into(),
            stored.routing_key.as_str().into(),
            raw.clone(),
            props,
            stored.body.clone().into(),
        );
        let _ = m.persisted.set(Box::new(persisted));
        m
    }

    /// A message whose kept properties are already extracted.
    pub fn with_props(
        exchange: Arc<str>,
        routing_key: Arc<str>,
        properties_raw: Bytes,
        properties: Props,
        body: Body,
    ) -> Self {
        Message::with_names(Names::new(exchange, routing_key), properties_raw, properties, body)
    }

    pub fn with_names(names: Names, properties_raw: Bytes, properties: Props, body: Body) -> Self {
        Message { names, properties_raw, properties, body, persisted: OnceBox::new() }
    }

    /// The same message, not (yet) in the message log: what a stored
    /// delayed message is routed as when due, so that its destination
    /// queues record it afresh.
    pub fn unstored_copy(&self) -> Message {
        Message {
            names: self.names.clone(),
            properties_raw: self.properties_raw.clone(),
            properties: self.properties.clone(),
            body: self.body.clone(),
            persisted: OnceBox::new(),
        }
    }

    pub fn new(
        exchange: Arc<str>,
        routing_key: Arc<str>,
        properties_raw: Bytes,
        properties: AMQPProperties,
        body: impl Into<Body>,
    ) -> Self {
        Message::with_props(exchange, routing_key, properties_raw, properties.into(), body.into())
    }

    /// The exchange it was published to, as the publisher named it.
    pub fn exchange(&self) -> &str {
        self.names.exchange()
    }

    pub fn routing_key(&self) -> &str {
        self.names.routing_key()
    }

    /// The value named `key` in the `headers` property, decoded alone.
    pub fn header(&self, key: &str) -> Option<AMQPValue> {
        warren_protocol::table::get(self.headers_raw()?, key)
    }

    /// The whole `headers` property, decoded (names that are not UTF-8
    /// made UTF-8: see [`warren_protocol::table::lossy`]).
    pub fn headers(&self) -> Option<FieldTable> {
        use amq_protocol::types::parsing::parse_field_table;
        let raw = self.headers_raw()?;
        // Checked before the parser, which recurses once per level.
        let warren_protocol::table::Scan::Fits(_) = warren_protocol::table::scan(raw) else { return None };
        match parse_field_table(raw) {
            Ok((_, t)) => Some(t),
            Err(_) => parse_field_table(&warren_protocol::table::lossy(raw)?[..]).ok().map(|(_, t)| t),
        }
    }

    /// The encoded `headers` table, its length first (the list was checked
    /// when it was published).
    fn headers_raw(&self) -> Option<&[u8]> {
        warren_protocol::content::scan_past_headers(&self.properties_raw)?.headers
    }

    /// Every property, parsed from the raw bytes (dead-lettering rewrites
    /// them); short strings and `headers` names that are not UTF-8 come out
    /// made UTF-8 ([`warren_protocol::content::decode_properties`]).
    pub fn full_properties(&self) -> AMQPProperties {
        warren_protocol::content::decode_properties(&self.properties_raw).unwrap_or_default()
    }

    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode() == Some(2)
    }

    /// The per-message TTL from the `expiration` property, in milliseconds.
    /// Invalid values are refused at publish time ([`Message::check_expiration`]).
    pub fn expiration_ms(&self) -> Option<u64> {
        self.properties.expiration().and_then(|e| e.as_str().parse().ok())
    }

    /// 406 for an `expiration` that is not a non-negative integer, with
    /// RabbitMQ's text.
    pub fn check_expiration(&self) -> Result<(), AmqpError> {
        let Some(e) = self.properties.expiration() else { return Ok(()) };
        let s = e.as_str();
        // Wide enough that any string of digits that fits a short string's
        // worth of an integer compares, as RabbitMQ's bignums do.
        let invalid =
            |why: std::fmt::Arguments<'_>| AmqpError::precondition(format_args!("invalid expiration '{s}': {why}"));
        match s.parse::<i128>() {
            Ok(v) if v < 0 => Err(invalid(format_args!("{{value_negative,{v}}}"))),
            Ok(v) if v > crate::arguments::MAX_EXPIRY_MS as i128 => {
                Err(invalid(format_args!("{{value_too_large,{v}}}")))
            }
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) => {
                Err(invalid(format_args!("{{value_too_large,{s}}}")))
            }
            Err(_) => Err(invalid(format_args!("no_integer"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With an `Arc`'s two counts, 128 bytes: mimalloc's 128-byte size
    /// class, two cache lines to write where it is published and to read
    /// where it is delivered (168 bytes took the 192-byte class, up to four
    /// lines, and 64 MiB more for a backlog of a million).
    #[test]
    fn a_message_and_its_counts_fit_two_cache_lines() {
        assert!(std::mem::size_of::<Message>() <= 112, "{}", std::mem::size_of::<Message>());
    }

    #[test]
    fn a_spare_is_filled_with_the_parts_given() {
        let body = Bytes::from(vec![7u8; 100]);
        let props = Props::new(Some(1), Some(2), Some("5".into()));
        let m = Spare::new().fill(Names::of("x", "k"), Bytes::from_static(&[0, 0]), props, body.clone().into());
        assert_eq!((m.exchange(), m.routing_key(), &m.body.contiguous()[..]), ("x", "k", &body[..]));
        assert_eq!(
            (&m.properties_raw[..], m.properties.priority(), m.expiration_ms()),
            (&[0u8, 0][..], Some(1), Some(5))
        );
        assert!(
            m.persisted.get().is_none()
                && m.persisted.set(Box::new(Persisted { msg_id: 1, segment: 0, offset: 0, end: 0 })).is_ok()
        );
        assert_eq!(Arc::strong_count(&m), 1);
        // The message's parts are dropped with it (the body's count too);
        // a spare never filled frees only its memory.
        drop(m);
        assert!(body.is_unique());
        drop(Spare::new());
    }

    #[test]
    fn properties_read_back() {
        let none = Props::new(Some(3), Some(2), None);
        assert_eq!((none.priority(), none.delivery_mode(), none.expiration()), (Some(3), Some(2), None));
        let exp = Props::new(None, None, Some("60000".into()));
        assert_eq!(exp.expiration().map(|e| e.as_str()), Some("60000"));
        assert_eq!(std::mem::size_of::<Props>(), 16);
    }

    #[test]
    fn headers_read_from_the_encoded_table() {
        let mut t = FieldTable::default();
        t.insert("k".into(), AMQPValue::Boolean(true));
        t.insert("x-delay".into(), AMQPValue::LongInt(5));
        let p = AMQPProperties::default().with_content_type("a/b".into()).with_headers(t.clone()).with_priority(1);
        let raw = warren_protocol::content::encode_properties(&p);
        let m = Message::new("x".into(), "k".into(), raw, p, Bytes::new());
        assert_eq!((m.headers(), m.header("x-delay"), m.header("y")), (Some(t), Some(AMQPValue::LongInt(5)), None));
        assert_eq!(m.properties.priority(), Some(1));
        let bare = AMQPProperties::default();
        let m = Message::new(
            "x".into(),
            "k".into(),
            warren_protocol::content::encode_properties(&bare),
            bare,
            Bytes::new(),
        );
        assert_eq!((m.headers(), m.header("k")), (None, None));
    }
}
