//! A published message, shared by every queue it was routed to.

use std::sync::Arc;

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::Bytes;

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
}

pub type MessageRef = Arc<Message>;

impl Message {
    /// delivery_mode 2 asks for the message to survive a broker restart.
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode() == &Some(2)
    }
}
