//! Validation of parameter values as RabbitMQ's `rabbit_parameter_validation`
//! words it: each key's type, mandatory keys, and the keys nobody knows
//! ("Unrecognised terms … in NAME"), so that scripts written against
//! RabbitMQ see the same refusals.

use serde_json::{Map, Value};

/// What a key's value must be.
#[derive(Clone, Copy)]
pub enum Kind {
    Str,
    Num,
    Bool,
    /// A string or a list of strings (URIs; checked by the caller).
    StrOrList,
    /// `never`, `queue-length` or a number.
    DeleteAfter,
    Enum(&'static [&'static str]),
    Object,
}

pub struct Rule {
    pub key: &'static str,
    pub kind: Kind,
    pub mandatory: bool,
}

pub const fn opt(key: &'static str, kind: Kind) -> Rule {
    Rule { key, kind, mandatory: false }
}

pub const fn must(key: &'static str, kind: Kind) -> Rule {
    Rule { key, kind, mandatory: true }
}

/// A JSON value as Erlang's `~p` prints the term it decodes to, which is
/// what RabbitMQ's validation errors show.
pub fn erl(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        Value::Array(a) => format!("[{}]", a.iter().map(erl).collect::<Vec<_>>().join(",")),
        Value::Object(m) => {
            format!("[{}]", m.iter().map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erl(v))).collect::<Vec<_>>().join(","))
        }
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// Checks `value` against `rules`; the errors, in RabbitMQ's words.
pub fn proplist(name: &str, rules: &[Rule], value: &Map<String, Value>) -> Vec<String> {
    let mut errors = Vec::new();
    for r in rules {
        let Some(v) = value.get(r.key) else {
            if r.mandatory {
                errors.push(format!("Key \"{}\" not found in {name}", r.key));
            }
            continue;
        };
        let ok = match r.kind {
            Kind::Str => v.is_string(),
            Kind::Num => v.is_number(),
            Kind::Bool => v.is_boolean(),
            Kind::StrOrList => v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            Kind::DeleteAfter => matches!(v.as_str(), Some("never" | "queue-length")) || v.is_u64(),
            Kind::Enum(options) => v.as_str().is_some_and(|s| options.contains(&s)),
            Kind::Object => v.is_object(),
        };
        if !ok {
            let key = r.key;
            errors.push(match r.kind {
                Kind::Str => format!("{key} should be a string, actually was {}", erl(v)),
                Kind::Num => format!("{key} should be a number, actually was {}", erl(v)),
                Kind::Bool => format!("{key} should be boolean, actually was {}", erl(v)),
                Kind::StrOrList => format!("{key} should be a string or a list of strings, actually was {}", erl(v)),
                Kind::DeleteAfter => {
                    format!("{key} should be a number greater than or equal to 0, \"never\" or \"queue-length\", actually was {}", erl(v))
                }
                Kind::Enum(options) => {
                    format!("{key} should be one of [{}], actually was {}", options.join(","), erl(v))
                }
                Kind::Object => format!("{key} should be an object, actually was {}", erl(v)),
            });
        }
    }
    let unknown: Vec<String> = value
        .iter()
        .filter(|(k, _)| !rules.iter().any(|r| r.key == k.as_str()))
        .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erl(v)))
        .collect();
    if !unknown.is_empty() {
        errors.push(format!("Unrecognised terms [{}] in {name}", unknown.join(",")));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_errors_as_rabbitmq() {
        let rules = [
            must("src-uri", Kind::StrOrList),
            opt("src-queue", Kind::Str),
            opt("ack-mode", Kind::Enum(&["no-ack", "on-publish"])),
        ];
        let v = serde_json::json!({"src-queue": 5, "ack-mode": "x", "bogus": "y"});
        let e = proplist("s1", &rules, v.as_object().unwrap());
        assert_eq!(
            e,
            [
                "Key \"src-uri\" not found in s1",
                "src-queue should be a string, actually was 5",
                "ack-mode should be one of [no-ack,on-publish], actually was <<\"x\">>",
                "Unrecognised terms [{<<\"bogus\">>,<<\"y\">>}] in s1",
            ]
        );
    }
}
