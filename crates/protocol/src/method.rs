//! Method frames: decoding a payload into an [`AMQPClass`].

use amq_protocol::protocol::parse_class;

use crate::error::AmqpError;
use crate::AMQPClass;

/// Class and method ids at the head of a method payload, if there are four
/// bytes to read them from.
pub fn method_ids(payload: &[u8]) -> Option<(u16, u16)> {
    if payload.len() < 4 {
        return None;
    }
    Some((u16::from_be_bytes([payload[0], payload[1]]), u16::from_be_bytes([payload[2], payload[3]])))
}

/// Whether `class.method` exists in AMQP 0-9-1 as RabbitMQ implements it.
fn is_known(class: u16, method: u16) -> bool {
    match class {
        10 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71),
        20 => matches!(method, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method, 10 | 11),
        40 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 50 | 60 | 70 | 71 | 72 | 80 | 90 | 100 | 110 | 111 | 120
        ),
        85 => matches!(method, 10 | 11),
        90 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}

/// Decodes a method frame's payload.
///
/// An unknown class or method is a 540 NOT_IMPLEMENTED connection error
/// (RabbitMQ drops the connection without a word); a known method whose
/// arguments do not parse is 501 FRAME_ERROR "cannot decode <<…>>", as
/// RabbitMQ words it.
pub fn decode_method(payload: &[u8]) -> Result<AMQPClass, AmqpError> {
    let Some((class_id, method_id)) = method_ids(payload) else {
        return Err(AmqpError::syntax_error("method frame too short"));
    };
    if !is_known(class_id, method_id) {
        return Err(AmqpError::not_implemented(format_args!("unknown method {class_id}.{method_id}"))
            .during(class_id, method_id));
    }
    crate::table::check_method(payload)?;
    if (class_id, method_id) == (60, 10) {
        // basic.qos: amq-protocol drops prefetch-size; RabbitMQ refuses a
        // byte-based prefetch (540, a connection error).
        if let Some(size) = payload.get(4..8).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])) {
            if size != 0 {
                return Err(AmqpError::not_implemented(format_args!("prefetch_size!=0 ({size})")).during(60, 10));
            }
        }
    }
    match parse_class(payload) {
        Ok((_, class)) => Ok(class),
        Err(_) => {
            Err(AmqpError::frame_error(format_args!("cannot decode {}", crate::frame::erlang_binary(&payload[4..])))
                .during(class_id, method_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_method_is_not_implemented() {
        let e = decode_method(&[0, 60, 0, 99]).unwrap_err();
        assert_eq!(e.code(), 540);
    }

    #[test]
    fn byte_prefetch_is_not_implemented() {
        let e = decode_method(&[0, 60, 0, 10, 0, 0, 3, 232, 0, 1, 0]).unwrap_err();
        assert_eq!((e.code(), e.text.as_str()), (540, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)"));
        assert!(decode_method(&[0, 60, 0, 10, 0, 0, 0, 0, 0, 1, 0]).is_ok());
    }

    #[test]
    fn truncated_arguments_cannot_be_decoded() {
        // queue.declare with its arguments cut short.
        let e = decode_method(&[0, 50, 0, 10, 0, 0, 5, b'a', b'b']).unwrap_err();
        assert_eq!((e.code(), e.class_id, e.method_id), (501, 50, 10));
        assert_eq!(e.text, "FRAME_ERROR - cannot decode <<0,0,5,97,98>>");
    }
}

/// `basic.publish` arguments, parsed by hand: it arrives once per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishArgs<'a> {
    /// Borrowed from the frame, not yet checked to be UTF-8: the channel
    /// compares them with the names it used last (valid already) and
    /// checks only new ones ([`PublishArgs::names`]).
    pub exchange: &'a [u8],
    pub routing_key: &'a [u8],
    pub mandatory: bool,
    pub immediate: bool,
    /// The method payload, for the error text.
    payload: &'a [u8],
}

impl<'a> PublishArgs<'a> {
    /// The exchange and routing key as text; malformed UTF-8 is the frame
    /// error RabbitMQ's parser gives.
    pub fn names(&self) -> Result<(&'a str, &'a str), AmqpError> {
        match (std::str::from_utf8(self.exchange), std::str::from_utf8(self.routing_key)) {
            (Ok(e), Ok(k)) => Ok((e, k)),
            _ => Err(publish_error(self.payload)),
        }
    }
}

fn publish_error(payload: &[u8]) -> AmqpError {
    AmqpError::frame_error(format_args!("cannot decode {}", crate::frame::erlang_binary(&payload[4..]))).during(60, 40)
}

/// Parses a method payload if it is `basic.publish`; `None` for any other
/// method (decode those with [`decode_method`]). The names' UTF-8 is
/// checked by [`PublishArgs::names`].
pub fn parse_publish(payload: &[u8]) -> Option<Result<PublishArgs<'_>, AmqpError>> {
    if payload.len() < 4 || payload[..4] != [0, 60, 0, 40] {
        return None;
    }
    let bad = || publish_error(payload);
    let mut p = &payload[6..payload.len().max(6)];
    if payload.len() < 6 {
        return Some(Err(bad()));
    }
    fn short<'a>(p: &mut &'a [u8]) -> Option<&'a [u8]> {
        let (&len, rest) = p.split_first()?;
        let s = rest.get(..len as usize)?;
        *p = &rest[len as usize..];
        Some(s)
    }
    let Some(exchange) = short(&mut p) else { return Some(Err(bad())) };
    let Some(routing_key) = short(&mut p) else { return Some(Err(bad())) };
    let Some(&bits) = p.first() else { return Some(Err(bad())) };
    Some(Ok(PublishArgs { exchange, routing_key, mandatory: bits & 1 != 0, immediate: bits & 2 != 0, payload }))
}

#[cfg(test)]
mod publish_tests {
    use super::*;
    use crate::frame::{parse_frame, write_method};
    use amq_protocol::protocol::basic;
    use bytes::BytesMut;

    #[test]
    fn hand_parse_matches_generated() {
        let mut b = BytesMut::new();
        let m = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "ex".into(),
            routing_key: "a.b".into(),
            mandatory: true,
            immediate: false,
        }));
        write_method(&mut b, 1, &m);
        let f = parse_frame(&mut b, 0).unwrap().unwrap();
        let p = parse_publish(&f.payload).unwrap().unwrap();
        assert_eq!((p.names().unwrap(), p.mandatory, p.immediate), (("ex", "a.b"), true, false));
        assert!(parse_publish(&[0, 60, 0, 40, 0, 0, 5, b'a']).unwrap().is_err());
        // Malformed UTF-8 in a name: RabbitMQ's frame error, with the payload.
        let p = parse_publish(&[0, 60, 0, 40, 0, 0, 1, 0xff, 0, 0]).unwrap().unwrap();
        let e = p.names().unwrap_err();
        assert_eq!((e.code(), e.class_id, e.method_id), (501, 60, 40));
        assert_eq!(e.text, "FRAME_ERROR - cannot decode <<0,0,1,255,0,0>>");
        assert!(parse_publish(&[0, 60, 0, 41]).is_none());
    }
}
