//! Policies and operator policies, as RabbitMQ 3.10 applies them.
//!
//! A policy (vhost, name, pattern, apply-to, priority, definition) applies
//! to the queues or exchanges whose names its pattern matches; of those
//! that match, the one with the highest priority applies alone. Operator
//! policies are chosen the same way, separately, and cap the user policy.
//!
//! A queue's arguments, its policy and its operator policy resolve into one
//! [`QueueSettings`] value (re-resolved whenever a policy changes), by
//! RabbitMQ's rules: for limits and TTLs (`max-length`, `max-length-bytes`,
//! `message-ttl`, `expires`, `delivery-limit`) the lowest value wins; for
//! the others (`overflow`, `dead-letter-exchange`, `dead-letter-routing-key`)
//! a queue argument wins over the policy. An exchange's `alternate-exchange`
//! argument wins over its policy's.

use crate::Invalid;
use serde_json::{Map, Value};
use warren_protocol::{AMQPValue, FieldTable};

use crate::arguments::int_arg;
use crate::queue::Overflow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    All,
    Queues,
    Exchanges,
}

impl ApplyTo {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    regex: regex::Regex,
    pub apply_to: ApplyTo,
    pub priority: i64,
    pub definition: Map<String, Value>,
}

impl PartialEq for Policy {
    fn eq(&self, o: &Policy) -> bool {
        (&self.vhost, &self.name, &self.pattern, self.apply_to, self.priority, &self.definition)
            == (&o.vhost, &o.name, &o.pattern, o.apply_to, o.priority, &o.definition)
    }
}

/// Keys a policy may set, and what each takes.
const QUEUE_KEYS: &[&str] = &[
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "overflow",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "delivery-limit",
    "queue-mode",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "alternate-exchange",
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "queue-master-locator",
    "queue-version",
    "consumer-timeout",
    "federation-upstream",
    "federation-upstream-set",
    "federation-upstream-pattern",
];
/// Keys an operator policy may set (RabbitMQ's list).
const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// The Erlang-ish rendering RabbitMQ uses in its validation messages.
fn erl(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        other => other.to_string(),
    }
}

fn validate_value(key: &str, v: &Value) -> Result<(), Invalid> {
    let non_neg = |what: &str| match v.as_i64() {
        Some(n) if n >= 0 => Ok(()),
        _ => Err(Invalid(format!("{} is not a valid {what}", erl(v)))),
    };
    let text = |what: &str| match v {
        Value::String(_) => Ok(()),
        _ => Err(Invalid(format!("{what} must be binary"))),
    };
    match key {
        "message-ttl" => match v.as_i64() {
            Some(n) if (0..=crate::arguments::MAX_EXPIRY_MS).contains(&n) => Ok(()),
            _ => Err(Invalid(format!("{} is not a valid message TTL", erl(v)))),
        },
        "expires" => match v.as_i64() {
            Some(n) if (1..=crate::arguments::MAX_EXPIRY_MS).contains(&n) => Ok(()),
            _ => Err(Invalid(format!("{} is not a valid queue expiry", erl(v)))),
        },
        "max-length" | "max-length-bytes" | "max-in-memory-length" | "max-in-memory-bytes" => non_neg("maximum length"),
        "delivery-limit" => non_neg("delivery limit"),
        "consumer-timeout" => match v.as_i64() {
            Some(n) if n >= 1 => Ok(()),
            _ => Err(Invalid(format!("{} is not a valid consumer timeout", erl(v)))),
        },
        "overflow" => match v.as_str() {
            Some("drop-head" | "reject-publish" | "reject-publish-dlx") => Ok(()),
            _ => Err(Invalid(format!("{} is not a valid overflow value", erl(v)))),
        },
        "queue-mode" => match v.as_str() {
            Some("default" | "lazy") => Ok(()),
            _ => Err(Invalid(format!("{} is not a valid queue-mode value", erl(v)))),
        },
        "dead-letter-exchange" => text("dead-letter-exchange"),
        "dead-letter-routing-key" => text("dead-letter-routing-key"),
        "alternate-exchange" => text("alternate-exchange"),
        "federation-upstream" => match v {
            Value::String(_) => Ok(()),
            _ => Err(Invalid(format!("{} is not a valid federation upstream name", erl(v)))),
        },
        "federation-upstream-set" => match v {
            Value::String(_) => Ok(()),
            _ => Err(Invalid(format!("{} is not a valid federation upstream set name", erl(v)))),
        },
        "federation-upstream-pattern" => match v.as_str().map(regex::Regex::new) {
            Some(Ok(_)) => Ok(()),
            _ => Err(Invalid(format!("{} is not a valid federation upstream pattern", erl(v)))),
        },
        _ => Ok(()),
    }
}

impl Policy {
    /// A policy from its parts, validated as RabbitMQ validates them (its
    /// texts, after "Validation failed").
    pub fn new(
        vhost: &str,
        name: &str,
        pattern: &str,
        apply_to: &str,
        priority: i64,
        definition: Map<String, Value>,
        operator: bool,
    ) -> Result<Policy, Invalid> {
        let regex = regex::Regex::new(pattern)
            .map_err(|e| Invalid(format!("pattern should be regular expression but is invalid: {e}")))?;
        let apply_to = match apply_to {
            "" | "all" => ApplyTo::All,
            "queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            other => {
                return Err(Invalid(format!(
                    "apply-to '{other}' unrecognised; should be 'queues', 'exchanges' or 'all'"
                )))
            }
        };
        if definition.is_empty() {
            return Err(Invalid("no policy provided".into()));
        }
        let allowed = if operator { OPERATOR_KEYS } else { QUEUE_KEYS };
        let unknown: Vec<String> = definition
            .iter()
            .filter(|(k, _)| !allowed.contains(&k.as_str()))
            .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erl(v)))
            .collect();
        if !unknown.is_empty() {
            return Err(Invalid(format!("[{}] are not recognised policy settings", unknown.join(","))));
        }
        for (k, v) in &definition {
            validate_value(k, v)?;
        }
        let selectors = ["federation-upstream", "federation-upstream-set", "federation-upstream-pattern"];
        if selectors.iter().filter(|k| definition.contains_key(**k)).count() > 1 {
            return Err(Invalid(
                "cannot specify federation-upstream, federation-upstream-set or federation-upstream-pattern together"
                    .into(),
            ));
        }
        Ok(Policy {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            pattern: pattern.to_owned(),
            regex,
            apply_to,
            priority,
            definition,
        })
    }

    pub fn applies_to(&self, name: &str, queue: bool) -> bool {
        let kind = match self.apply_to {
            ApplyTo::All => true,
            ApplyTo::Queues => queue,
            ApplyTo::Exchanges => !queue,
        };
        kind && self.regex.is_match(name)
    }

    /// As RabbitMQ lists it (`/api/policies`, definitions).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "vhost": self.vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to.as_str(),
            "definition": self.definition,
            "priority": self.priority,
        })
    }

    fn text(&self, key: &str) -> Option<String> {
        self.definition.get(key).and_then(Value::as_str).map(str::to_owned)
    }
}

/// The policy that applies to a queue or exchange: the highest priority
/// among those matching (the first by name among equals).
pub fn select<'a>(policies: &'a [Policy], name: &str, queue: bool) -> Option<&'a Policy> {
    policies
        .iter()
        .filter(|p| p.applies_to(name, queue))
        .min_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.name.cmp(&b.name)))
}

/// What a queue runs with: its arguments resolved with its policies.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// In milliseconds.
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    /// Dead-letter exchange and routing key.
    pub dead_letter: Option<(String, Option<String>)>,
    pub delivery_limit: Option<u32>,
    /// Consumer timeout in ms (`x-consumer-timeout`, policy `consumer-timeout`).
    pub consumer_timeout: Option<u64>,
    pub policy: Option<String>,
    pub operator_policy: Option<String>,
    /// The policy's definition as the operator policy caps it.
    pub effective_definition: Map<String, Value>,
}

fn text_arg(args: &FieldTable, key: &str) -> Option<String> {
    match args.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn min(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Keys where the lower of policy and operator policy wins.
const MIN_KEYS: &[&str] = &["message-ttl", "expires", "max-length", "max-length-bytes", "delivery-limit"];

/// Resolves a queue's settings (`quorum`: policies' delivery limits apply).
pub fn resolve_queue(args: &FieldTable, quorum: bool, policy: Option<&Policy>, op: Option<&Policy>) -> QueueSettings {
    let nonneg = |k: &str| int_arg(args, k).map(|v| v.max(0) as u64);
    let mut effective = policy.map(|p| p.definition.clone()).unwrap_or_default();
    if let Some(op) = op {
        for (k, v) in &op.definition {
            let capped = match (effective.get(k).and_then(Value::as_i64), v.as_i64()) {
                (Some(a), Some(b)) if MIN_KEYS.contains(&k.as_str()) => Value::from(a.min(b)),
                _ => v.clone(),
            };
            effective.insert(k.clone(), capped);
        }
    }
    let pol_int = |k: &str| effective.get(k).and_then(Value::as_i64).map(|n| n.max(0) as u64);
    let pol_text = |k: &str| effective.get(k).and_then(Value::as_str).map(str::to_owned);
    let overflow = match text_arg(args, "x-overflow").or_else(|| pol_text("overflow")).as_deref() {
        Some("reject-publish") => Overflow::RejectPublish,
        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
        _ => Overflow::DropHead,
    };
    let dead_letter = match text_arg(args, "x-dead-letter-exchange") {
        Some(dlx) => Some((dlx, text_arg(args, "x-dead-letter-routing-key"))),
        None => pol_text("dead-letter-exchange").map(|dlx| {
            let key = text_arg(args, "x-dead-letter-routing-key").or_else(|| pol_text("dead-letter-routing-key"));
            (dlx, key)
        }),
    };
    // RabbitMQ 3.10 applies delivery limits to quorum queues only; Warren
    // to a classic queue too when its argument asks (a policy's
    // `delivery-limit` stays quorum-only, as there).
    let limit =
        if quorum { min(nonneg("x-delivery-limit"), pol_int("delivery-limit")) } else { nonneg("x-delivery-limit") };
    let delivery_limit = limit.map(|v| v.min(u32::MAX as u64) as u32);
    QueueSettings {
        message_ttl: min(nonneg("x-message-ttl"), pol_int("message-ttl")),
        expires: min(nonneg("x-expires"), pol_int("expires")),
        max_length: min(nonneg("x-max-length"), pol_int("max-length")),
        max_length_bytes: min(nonneg("x-max-length-bytes"), pol_int("max-length-bytes")),
        overflow,
        dead_letter,
        delivery_limit,
        consumer_timeout: min(nonneg("x-consumer-timeout").filter(|t| *t > 0), pol_int("consumer-timeout")),
        policy: policy.map(|p| p.name.clone()),
        operator_policy: op.map(|p| p.name.clone()),
        effective_definition: effective,
    }
}

/// An exchange's alternate exchange: its argument, else its policy's.
pub fn alternate_exchange(args: &FieldTable, policy: Option<&Policy>) -> Option<String> {
    text_arg(args, "alternate-exchange").or_else(|| policy.and_then(|p| p.text("alternate-exchange")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pol(name: &str, pattern: &str, priority: i64, def: Value, operator: bool) -> Policy {
        let Value::Object(m) = def else { panic!() };
        Policy::new("/", name, pattern, "queues", priority, m, operator).unwrap()
    }

    #[test]
    fn highest_priority_applies_and_lowest_limit_wins() {
        let a = pol("a", "^q", 1, serde_json::json!({"max-length": 10, "message-ttl": 5000}), false);
        let b = pol("b", "^q", 5, serde_json::json!({"max-length": 20, "dead-letter-exchange": "dlx"}), false);
        let op = pol("op", ".*", 0, serde_json::json!({"max-length": 15}), true);
        let all = [a, b];
        let p = select(&all, "queue", true).unwrap();
        assert_eq!(p.name, "b");
        assert!(select(&all, "other", true).is_none());
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(30));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("mine".into()));
        let s = resolve_queue(&args, false, Some(p), Some(&op));
        assert_eq!(s.max_length, Some(15), "argument 30, policy 20, operator policy 15");
        assert_eq!(s.dead_letter, Some(("mine".into(), None)), "the argument wins");
        assert_eq!(s.message_ttl, None, "policy a does not apply");
        assert_eq!(s.effective_definition["max-length"], 15);
        assert_eq!((s.policy.as_deref(), s.operator_policy.as_deref()), (Some("b"), Some("op")));
    }

    #[test]
    fn validation_texts() {
        let m = |v: Value| match v {
            Value::Object(m) => m,
            _ => panic!(),
        };
        let e = Policy::new("/", "p", "^x", "all", 0, m(serde_json::json!({"foo": 1})), false).unwrap_err().0;
        assert_eq!(e, "[{<<\"foo\">>,1}] are not recognised policy settings");
        let e = Policy::new("/", "p", "^x", "all", 0, m(serde_json::json!({"max-length": -1})), false).unwrap_err().0;
        assert_eq!(e, "-1 is not a valid maximum length");
        let e = Policy::new("/", "p", "^x", "bogus", 0, m(serde_json::json!({"max-length": 1})), false).unwrap_err().0;
        assert_eq!(e, "apply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'");
        assert_eq!(Policy::new("/", "p", "^x", "all", 0, Map::new(), false).unwrap_err().0, "no policy provided");
        let e = Policy::new("/", "p", "^x", "all", 0, m(serde_json::json!({"overflow": "x"})), true).unwrap_err().0;
        assert!(e.contains("are not recognised policy settings"), "{e}");
    }
}
