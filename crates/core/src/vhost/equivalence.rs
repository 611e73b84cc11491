//! Whether a redeclaration is equivalent to what exists (RabbitMQ's
//! `inequivalent arg` rules and texts, numbers compared by value whatever
//! their AMQP type).

use super::*;

/// Queue arguments compared when a queue is declared again.
pub(super) const EQUIVALENT_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-count-header",
    "x-fair-dispatch",
    "x-consumer-timeout",
    "x-requeue-backoff",
    "x-delivery-limit",
];

pub(super) fn value_text(v: &AMQPValue) -> String {
    use AMQPValue::*;
    match v {
        Boolean(b) => b.to_string(),
        ShortShortInt(i) => i.to_string(),
        ShortShortUInt(i) => i.to_string(),
        ShortInt(i) => i.to_string(),
        ShortUInt(i) => i.to_string(),
        LongInt(i) => i.to_string(),
        LongUInt(i) => i.to_string(),
        LongLongInt(i) => i.to_string(),
        Timestamp(i) => i.to_string(),
        Float(f) => f.to_string(),
        Double(f) => f.to_string(),
        ShortString(s) => s.as_str().to_owned(),
        LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    }
}

pub(super) fn describe(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".to_owned(),
        Some(v) => format!("the value '{}' of type '{}'", value_text(v), type_name(v)),
    }
}

pub(super) fn inequivalent(
    what: &str,
    kind: &str,
    name: &str,
    vhost: &str,
    received: impl std::fmt::Display,
    current: impl std::fmt::Display,
) -> AmqpError {
    AmqpError::precondition(format_args!(
        "inequivalent arg '{what}' for {kind} '{name}' in vhost '{vhost}': received {received} but current is {current}"
    ))
}

pub(super) fn quoted(b: bool) -> String {
    format!("'{b}'")
}

/// `x-queue-type` absent means classic.
pub(super) fn queue_arg<'a>(args: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    args.inner().get(key)
}

pub(super) fn same_queue_arg(key: &str, a: Option<&AMQPValue>, b: Option<&AMQPValue>) -> bool {
    if key == "x-queue-type" {
        let t = |v: Option<&AMQPValue>| v.map(value_text).unwrap_or_else(|| "classic".to_owned());
        return t(a) == t(b);
    }
    equivalent(a, b)
}

/// Argument equality as RabbitMQ judges it (`rabbit_misc:type_class`): all
/// integer types are one class, so are both float types; a 5 declared as
/// `signedint` equals a 5 stored as `long` (what a definitions import makes).
pub(super) fn equivalent(a: Option<&AMQPValue>, b: Option<&AMQPValue>) -> bool {
    fn int(v: &AMQPValue) -> Option<i128> {
        Some(match *v {
            AMQPValue::ShortShortInt(x) => x as i128,
            AMQPValue::ShortShortUInt(x) => x as i128,
            AMQPValue::ShortInt(x) => x as i128,
            AMQPValue::ShortUInt(x) => x as i128,
            AMQPValue::LongInt(x) => x as i128,
            AMQPValue::LongUInt(x) => x as i128,
            AMQPValue::LongLongInt(x) => x as i128,
            _ => return None,
        })
    }
    fn float(v: &AMQPValue) -> Option<f64> {
        match *v {
            AMQPValue::Float(x) => Some(x as f64),
            AMQPValue::Double(x) => Some(x),
            _ => None,
        }
    }
    match (a, b) {
        (Some(x), Some(y)) => match (int(x), int(y), float(x), float(y)) {
            (Some(i), Some(j), _, _) => i == j,
            (_, _, Some(f), Some(g)) => f == g,
            _ => x == y,
        },
        _ => a == b,
    }
}
