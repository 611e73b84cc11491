//! A published message, shared by every queue it was routed to.

use std::sync::{Arc, OnceLock};

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::Bytes;
use warren_protocol::AmqpError;
use warren_store::log::Persisted;

#[derive(Debug)]
pub struct Message {
    /// Exchange it was published to (as the publisher named it).
    pub exchange: String,
    pub routing_key: String,
    /// Property flags and list exactly as published: consumers get these bytes.
    pub properties_raw: Bytes,
    /// The same properties parsed, for routing and queue features.
    pub properties: AMQPProperties,
    /// Reference-counted: routing to N queues never copies it.
    pub body: Bytes,
    /// Set when the message log holds it (persistent, in a durable queue).
    pub persisted: OnceLock<Persisted>,
}

pub type MessageRef = Arc<Message>;

impl Message {
    pub fn new(
        exchange: String,
        routing_key: String,
        properties_raw: Bytes,
        properties: AMQPProperties,
        body: Bytes,
    ) -> Self {
        Message { exchange, routing_key, properties_raw, properties, body, persisted: OnceLock::new() }
    }

    /// delivery_mode 2 asks for the message to survive a broker restart.
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode() == &Some(2)
    }

    /// The per-message TTL from the `expiration` property, in milliseconds.
    /// Invalid values are refused at publish time ([`Message::check_expiration`]).
    pub fn expiration_ms(&self) -> Option<u64> {
        self.properties.expiration().as_ref().and_then(|e| e.as_str().parse().ok())
    }

    /// 406 for an `expiration` that is not a non-negative integer, with
    /// RabbitMQ's text.
    pub fn check_expiration(&self) -> Result<(), AmqpError> {
        let Some(e) = self.properties.expiration() else { return Ok(()) };
        let s = e.as_str();
        match s.parse::<i64>() {
            Ok(v) if v >= 0 => Ok(()),
            Ok(v) => Err(AmqpError::precondition(format_args!("invalid expiration '{s}': {{value_negative,{v}}}"))),
            Err(_) => Err(AmqpError::precondition(format_args!("invalid expiration '{s}': no_integer"))),
        }
    }
}
