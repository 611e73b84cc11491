//! Queue arguments (`x-…`): reading them and validating them as RabbitMQ
//! does on `queue.declare`.

use crate::Invalid;
use warren_protocol::{AMQPValue, AmqpError, FieldTable};

/// An integer argument of any AMQP integer type.
pub fn int_arg(args: &FieldTable, key: &str) -> Option<i64> {
    as_int(args.inner().get(key)?)
}

pub fn as_int(v: &AMQPValue) -> Option<i64> {
    use AMQPValue::*;
    Some(match v {
        ShortShortInt(i) => *i as i64,
        ShortShortUInt(i) => *i as i64,
        ShortInt(i) => *i as i64,
        ShortUInt(i) => *i as i64,
        LongInt(i) => *i as i64,
        LongUInt(i) => *i as i64,
        LongLongInt(i) => *i,
        _ => return None,
    })
}

/// RabbitMQ's name for a field type, as its error texts use it.
pub fn type_name(v: &AMQPValue) -> &'static str {
    use AMQPValue::*;
    match v {
        Boolean(_) => "bool",
        ShortShortInt(_) => "byte",
        ShortShortUInt(_) => "unsignedbyte",
        ShortInt(_) => "short",
        ShortUInt(_) => "unsignedshort",
        LongInt(_) => "signedint",
        LongUInt(_) => "unsignedint",
        LongLongInt(_) => "long",
        Float(_) => "float",
        Double(_) => "double",
        DecimalValue(_) => "decimal",
        ShortString(_) => "shortstr",
        LongString(_) => "longstr",
        FieldArray(_) => "array",
        Timestamp(_) => "timestamp",
        FieldTable(_) => "table",
        ByteArray(_) => "binary",
        Void => "void",
    }
}

/// The longest TTL or expiry RabbitMQ accepts, in ms (ten years): for
/// `x-message-ttl`, `x-expires` and the `expiration` property.
pub const MAX_EXPIRY_MS: i64 = 315_360_000_000;

/// How an integer argument is bounded.
#[derive(Clone, Copy)]
enum Bound {
    NonNegative,
    Positive,
    Priority,
    /// A TTL: non-negative (positive if `positive`), at most `MAX_EXPIRY_MS`.
    Expiry {
        positive: bool,
    },
}

fn check_int(v: &AMQPValue, bound: Bound) -> Result<(), Invalid> {
    let Some(i) = as_int(v) else {
        return Err(Invalid(format!("\"expected integer, got {}\"", type_name(v))));
    };
    match bound {
        Bound::NonNegative | Bound::Positive if i < 0 => Err(Invalid(format!("{{value_negative,{i}}}"))),
        Bound::Positive if i == 0 => Err(Invalid("{value_zero,0}".to_owned())),
        Bound::Priority if i < 0 => Err(Invalid(format!("{{value_negative,{i}}}"))),
        Bound::Priority if i > 255 => Err(Invalid(format!("{{max_value_exceeded,{i}}}"))),
        Bound::Expiry { positive: true } if i == 0 => Err(Invalid("{value_zero,0}".to_owned())),
        Bound::Expiry { .. } if i < 0 => Err(Invalid(format!("{{value_negative,{i}}}"))),
        Bound::Expiry { .. } if i > MAX_EXPIRY_MS => Err(Invalid(format!("{{value_too_large,{i}}}"))),
        _ => Ok(()),
    }
}

fn string_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Checks of non-integer arguments: the detail after "invalid arg ...: ".
fn check_other(args: &FieldTable, key: &str, v: &AMQPValue) -> Result<(), Invalid> {
    match key {
        "x-overflow" => match string_value(v) {
            None => Err(Invalid(format!("{{unacceptable_type,{}}}", type_name(v)))),
            Some(m) if ["drop-head", "reject-publish", "reject-publish-dlx"].contains(&m.as_str()) => Ok(()),
            Some(_) => Err(Invalid("invalid_overflow".to_owned())),
        },
        "x-single-active-consumer" | "x-delivery-count-header" | "x-fair-dispatch" | "x-message-deduplication" => {
            match v {
                AMQPValue::Boolean(_) => Ok(()),
                _ => Err(Invalid(format!("{{unacceptable_type,{}}}", type_name(v)))),
            }
        }
        "x-dead-letter-routing-key" => {
            let key = string_value(v);
            if key.is_none() {
                Err(Invalid(format!("{{unacceptable_type,{}}}", type_name(v))))
            } else if let Some(n) = key.map(|k| k.len()).filter(|n| *n > warren_protocol::error::SHORT_MAX) {
                // RabbitMQ accepts it, then fails with 541 when it delivers a
                // message dead-lettered with it: no routing key is that long.
                Err(Invalid(format!("{{routing_key_too_long,{n}}}")))
            } else if !args.contains_key("x-dead-letter-exchange") {
                Err(Invalid("routing_key_but_no_dlx_defined".to_owned()))
            } else {
                Ok(())
            }
        }
        "x-deduplication-header" if string_value(v).is_none() => {
            Err(Invalid(format!("{{unacceptable_type,{}}}", type_name(v))))
        }
        "x-queue-type" => match string_value(v).as_deref() {
            // Streams are not implemented: refused with RabbitMQ's text for an unknown type.
            Some("classic" | "quorum") => Ok(()),
            Some(other) => Err(Invalid(format!("\"unsupported queue type '{other}'\""))),
            None => Err(Invalid(format!("{{unacceptable_type,{}}}", type_name(v)))),
        },
        _ => Ok(()),
    }
}

/// Validates the arguments Warren acts on; 406 with RabbitMQ's text.
pub fn validate_queue_args(args: &FieldTable, queue: &str, vhost: &str) -> Result<(), AmqpError> {
    if let Some(v) = args.inner().get("x-dead-letter-exchange") {
        if string_value(v).is_none() {
            return Err(AmqpError::precondition(format_args!(
                "invalid type '{}' for arg 'x-dead-letter-exchange' in queue '{queue}' in vhost '{vhost}'",
                type_name(v)
            )));
        }
    }
    for (key, v) in args.inner() {
        check_arg(args, key.as_str(), v).map_err(|why| invalid(key.as_str(), "queue", queue, vhost, why.0))?;
    }
    Ok(())
}

/// Validates the exchange arguments Warren acts on beyond
/// `alternate-exchange` — deduplication's (`dedup.rs`) — as for a queue.
pub fn validate_exchange_args(args: &FieldTable, exchange: &str, vhost: &str) -> Result<(), AmqpError> {
    const KEYS: [&str; 4] = ["x-message-deduplication", "x-deduplication-header", "x-cache-size", "x-cache-ttl"];
    for (key, v) in args.inner().iter().filter(|(k, _)| KEYS.contains(&k.as_str())) {
        check_arg(args, key.as_str(), v).map_err(|why| invalid(key.as_str(), "exchange", exchange, vhost, why.0))?;
    }
    Ok(())
}

/// One argument's checks: the detail after "invalid arg ...: ".
fn check_arg(args: &FieldTable, key: &str, v: &AMQPValue) -> Result<(), Invalid> {
    check_other(args, key, v)?;
    let bound = match key {
        "x-max-length" | "x-max-length-bytes" | "x-delivery-limit" | "x-cache-ttl" => Bound::NonNegative,
        "x-cache-size" => Bound::Positive,
        "x-consumer-timeout" | "x-requeue-backoff" => Bound::Expiry { positive: true },
        "x-message-ttl" => Bound::Expiry { positive: false },
        "x-expires" => Bound::Expiry { positive: true },
        "x-max-priority" => Bound::Priority,
        _ => return Ok(()),
    };
    check_int(v, bound)
}

fn invalid(key: &str, what: &str, name: &str, vhost: &str, why: String) -> AmqpError {
    AmqpError::precondition(format_args!("invalid arg '{key}' for {what} '{name}' in vhost '{vhost}': {why}"))
}

/// A JSON object as an AMQP field table, as RabbitMQ converts definitions
/// arguments: integers → long long, other numbers → double, strings →
/// long strings, booleans, arrays and objects nested, null → void.
pub fn table_from_json(m: &serde_json::Map<String, serde_json::Value>) -> FieldTable {
    fn value(v: &serde_json::Value) -> AMQPValue {
        use serde_json::Value as J;
        match v {
            J::Null => AMQPValue::Void,
            J::Bool(b) => AMQPValue::Boolean(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => AMQPValue::LongLongInt(i),
                None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
            },
            J::String(s) => AMQPValue::LongString(s.as_str().into()),
            J::Array(a) => {
                let mut arr = amq_protocol::types::FieldArray::default();
                for x in a {
                    arr.push(value(x));
                }
                AMQPValue::FieldArray(arr)
            }
            J::Object(o) => AMQPValue::FieldTable(table_from_json(o)),
        }
    }
    let mut t = FieldTable::default();
    for (k, v) in m {
        // A field name is a short string: a longer JSON key cannot be one.
        if let Ok(k) = warren_protocol::ShortString::try_new(k.as_str()) {
            t.insert(k, value(v));
        }
    }
    t
}

/// An AMQP field table as JSON, as RabbitMQ exports arguments.
pub fn table_to_json(t: &FieldTable) -> serde_json::Value {
    fn value(v: &AMQPValue) -> serde_json::Value {
        use serde_json::Value as J;
        match v {
            AMQPValue::Boolean(b) => J::Bool(*b),
            AMQPValue::ShortShortInt(i) => (*i).into(),
            AMQPValue::ShortShortUInt(i) => (*i).into(),
            AMQPValue::ShortInt(i) => (*i).into(),
            AMQPValue::ShortUInt(i) => (*i).into(),
            AMQPValue::LongInt(i) => (*i).into(),
            AMQPValue::LongUInt(i) => (*i).into(),
            AMQPValue::LongLongInt(i) => (*i).into(),
            AMQPValue::Timestamp(i) => (*i).into(),
            AMQPValue::Float(f) => (*f as f64).into(),
            AMQPValue::Double(f) => (*f).into(),
            AMQPValue::DecimalValue(d) => (d.value as f64 / 10f64.powi(d.scale as i32)).into(),
            AMQPValue::ShortString(s) => s.as_str().into(),
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into(),
            AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into(),
            AMQPValue::FieldArray(a) => J::Array(a.as_slice().iter().map(value).collect()),
            AMQPValue::FieldTable(t) => table_to_json(t),
            AMQPValue::Void => J::Null,
        }
    }
    serde_json::Value::Object(t.inner().iter().map(|(k, v)| (k.as_str().to_owned(), value(v))).collect())
}
