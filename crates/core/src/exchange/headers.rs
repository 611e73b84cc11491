//! Headers matching: `x-match` all / any (ignoring `x-` keys) and
//! all-with-x / any-with-x (including them). A binding value of type void
//! matches on the key's presence alone.

use warren_protocol::{AMQPValue, FieldTable};

#[derive(PartialEq)]
enum Norm<'a> {
    Bytes(&'a [u8]),
    Int(i128),
    Float(f64),
    Bool(bool),
    Other(&'a AMQPValue),
}

/// Compares values the way RabbitMQ (Erlang `==`) does: short and long
/// strings alike, integers of any width alike.
fn norm(v: &AMQPValue) -> Norm<'_> {
    use AMQPValue::*;
    match v {
        ShortString(s) => Norm::Bytes(s.as_str().as_bytes()),
        LongString(s) => Norm::Bytes(s.as_bytes()),
        ShortShortInt(i) => Norm::Int(*i as i128),
        ShortShortUInt(i) => Norm::Int(*i as i128),
        ShortInt(i) => Norm::Int(*i as i128),
        ShortUInt(i) => Norm::Int(*i as i128),
        LongInt(i) => Norm::Int(*i as i128),
        LongUInt(i) => Norm::Int(*i as i128),
        LongLongInt(i) => Norm::Int(*i as i128),
        Timestamp(i) => Norm::Int(*i as i128),
        Float(f) => Norm::Float(*f as f64),
        Double(f) => Norm::Float(*f),
        Boolean(b) => Norm::Bool(*b),
        other => Norm::Other(other),
    }
}

pub fn matches(binding: &FieldTable, headers: &FieldTable) -> bool {
    let mode = match binding.inner().get("x-match") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => "all".to_owned(),
    };
    let (any, with_x) = match mode.as_str() {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let mut considered = binding
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")))
        .map(|(k, v)| match headers.inner().get(k.as_str()) {
            None => false,
            Some(_) if matches!(v, AMQPValue::Void) => true,
            Some(h) => norm(h) == norm(v),
        });
    if any {
        considered.any(|m| m)
    } else {
        considered.all(|m| m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(kv: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in kv {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    #[test]
    fn all_and_any() {
        let h = table(&[("a", s("1")), ("b", AMQPValue::LongInt(2))]);
        assert!(matches(&table(&[("a", s("1")), ("b", AMQPValue::ShortShortInt(2))]), &h));
        assert!(!matches(&table(&[("a", s("1")), ("c", s("3"))]), &h));
        assert!(matches(&table(&[("x-match", s("any")), ("a", s("1")), ("c", s("3"))]), &h));
        assert!(!matches(&table(&[("x-match", s("any")), ("c", s("3"))]), &h));
        assert!(matches(&table(&[("a", AMQPValue::Void)]), &h));
    }

    #[test]
    fn with_x_considers_x_keys() {
        let h = table(&[("x-a", s("1"))]);
        assert!(matches(&table(&[("x-match", s("all")), ("x-a", s("2"))]), &h));
        assert!(!matches(&table(&[("x-match", s("all-with-x")), ("x-a", s("2"))]), &h));
        assert!(matches(&table(&[("x-match", s("any-with-x")), ("x-a", s("1"))]), &h));
    }
}
