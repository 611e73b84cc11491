//! A published message, shared by every queue it was routed to.

use std::sync::{Arc, OnceLock};

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::Bytes;
use warren_protocol::{AmqpError, FieldTable, ShortString};
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
    /// Reference-counted: routing to N queues never copies it.
    pub body: Bytes,
    /// Set when the message log holds it (persistent, in a durable queue).
    pub persisted: OnceLock<Persisted>,
}

pub type MessageRef = Arc<Message>;

/// The parsed properties a queued message keeps.
#[derive(Debug, Default, Clone)]
pub struct Props {
    priority: Option<u8>,
    delivery_mode: Option<u8>,
    expiration: Option<ShortString>,
    headers: Option<Box<FieldTable>>,
}

impl Props {
    pub fn priority(&self) -> Option<u8> {
        self.priority
    }
    pub fn delivery_mode(&self) -> Option<u8> {
        self.delivery_mode
    }
    pub fn expiration(&self) -> Option<&ShortString> {
        self.expiration.as_ref()
    }
    pub fn headers(&self) -> Option<&FieldTable> {
        self.headers.as_deref()
    }
}

impl From<warren_protocol::content::PropsView<'_>> for Props {
    fn from(v: warren_protocol::content::PropsView<'_>) -> Self {
        Props {
            priority: v.priority,
            delivery_mode: v.delivery_mode,
            expiration: v.expiration.map(ShortString::from),
            headers: v.headers.map(Box::new),
        }
    }
}

impl From<AMQPProperties> for Props {
    fn from(p: AMQPProperties) -> Self {
        Props {
            priority: *p.priority(),
            delivery_mode: *p.delivery_mode(),
            expiration: p.expiration().clone(),
            headers: p.headers().clone().map(Box::new),
        }
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
            stored.body.clone(),
        );
        let _ = m.persisted.set(persisted);
        m
    }

    /// A message whose kept properties are already extracted.
    pub fn with_props(
        exchange: Arc<str>,
        routing_key: Arc<str>,
        properties_raw: Bytes,
        properties: Props,
        body: Bytes,
    ) -> Self {
        Message::with_names(Names::new(exchange, routing_key), properties_raw, properties, body)
    }

    pub fn with_names(names: Names, properties_raw: Bytes, properties: Props, body: Bytes) -> Self {
        Message { names, properties_raw, properties, body, persisted: OnceLock::new() }
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
            persisted: OnceLock::new(),
        }
    }

    pub fn new(
        exchange: Arc<str>,
        routing_key: Arc<str>,
        properties_raw: Bytes,
        properties: AMQPProperties,
        body: Bytes,
    ) -> Self {
        Message::with_props(exchange, routing_key, properties_raw, properties.into(), body)
    }

    /// The exchange it was published to, as the publisher named it.
    pub fn exchange(&self) -> &str {
        self.names.exchange()
    }

    pub fn routing_key(&self) -> &str {
        self.names.routing_key()
    }

    /// Every property, parsed from the raw bytes (dead-lettering rewrites them).
    pub fn full_properties(&self) -> AMQPProperties {
        amq_protocol::protocol::basic::parse_properties(&self.properties_raw[..]).map(|(_, p)| p).unwrap_or_default()
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
