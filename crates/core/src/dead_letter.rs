//! Dead-lettering: what happens to a message that leaves a queue rejected,
//! expired, pushed out by a length limit, or over its delivery limit, when
//! the queue has `x-dead-letter-exchange`.
//!
//! The message is republished to that exchange with the queue's
//! `x-dead-letter-routing-key` (or its own routing key), carrying an
//! `x-death` history and `x-first-death-*` headers exactly as RabbitMQ 3.10
//! writes them. Cycles are dropped as RabbitMQ drops them: a message that
//! would come back to a queue it already died in, with no rejection on the
//! way, is discarded.

use std::sync::Arc;

use warren_protocol::content::encode_properties;
use warren_protocol::{AMQPValue, FieldTable};

use crate::message::{Message, MessageRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    MaxLen,
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// The queue's dead-letter exchange and routing key, if it has one.
pub fn target(arguments: &FieldTable) -> Option<(String, Option<String>)> {
    let dlx = text(arguments.inner().get("x-dead-letter-exchange")?)?;
    let key = arguments.inner().get("x-dead-letter-routing-key").and_then(text);
    Some((dlx, key))
}

/// The message as it is republished to `exchange` (the dead-letter
/// exchange, which consumers then see as its exchange, as in RabbitMQ):
/// headers updated with this death, which keeps the original exchange.
pub fn dead_lettered(msg: &Message, reason: Reason, queue: &str, exchange: &str, routing_key: &str) -> MessageRef {
    let mut props = msg.full_properties();
    let mut headers = props.headers().clone().unwrap_or_default();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = |t: &FieldTable| {
        t.inner().get("queue").and_then(text).as_deref() == Some(queue)
            && t.inner().get("reason").and_then(text).as_deref() == Some(reason.as_str())
    };
    let existing = deaths.iter().position(|d| matches!(d, AMQPValue::FieldTable(t) if same(t)));
    let entry = match existing {
        Some(i) => {
            let AMQPValue::FieldTable(mut t) = deaths.remove(i) else { unreachable!() };
            let count = match t.inner().get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                _ => 0,
            };
            t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            t.insert("time".into(), AMQPValue::Timestamp(crate::now_ms() / 1000));
            t
        }
        None => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), long_str(reason.as_str()));
            t.insert("queue".into(), long_str(queue));
            t.insert("time".into(), AMQPValue::Timestamp(crate::now_ms() / 1000));
            t.insert("exchange".into(), long_str(msg.exchange()));
            let mut arr = amq_protocol::types::FieldArray::default();
            arr.push(long_str(msg.routing_key()));
            t.insert("routing-keys".into(), AMQPValue::FieldArray(arr));
            if let Some(exp) = msg.properties.expiration() {
                t.insert("original-expiration".into(), long_str(exp.as_str()));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    let mut arr = amq_protocol::types::FieldArray::default();
    for d in deaths {
        arr.push(d);
    }
    headers.insert("x-death".into(), AMQPValue::FieldArray(arr));
    for (k, v) in [
        ("x-first-death-reason", reason.as_str()),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", msg.exchange()),
    ] {
        if !headers.contains_key(k) {
            headers.insert(k.into(), long_str(v));
        }
    }
    props = props.with_headers(headers);
    // The per-message TTL does not follow it (kept as original-expiration).
    if msg.properties.expiration().is_some() {
        props = warren_protocol::content::without(&props, warren_protocol::content::Property::Expiration);
    }
    let raw = encode_properties(&props);
    Arc::new(Message::new(exchange.into(), routing_key.into(), raw, props, msg.body.clone()))
}

/// RabbitMQ's cycle rule: routing a dead-lettered message (headers already
/// updated) to `target` is a cycle if `target` appears in its `x-death`
/// history with no `rejected` death before it.
pub fn is_cycle(msg: &Message, target: &str) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = msg.header("x-death") else { return false };
    for d in deaths.as_slice() {
        let AMQPValue::FieldTable(t) = d else { continue };
        if t.inner().get("reason").and_then(text).as_deref() == Some("rejected") {
            return false;
        }
        if t.inner().get("queue").and_then(text).as_deref() == Some(target) {
            return true;
        }
    }
    false
}
