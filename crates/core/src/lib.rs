//! Warren's broker model: virtual hosts, exchanges and routing, queues,
//! consumers and deliveries.
//!
//! Nothing here touches a socket or a runtime. A connection hands deliveries
//! to its own task through the [`consumer::Outbox`] trait, so this crate is
//! tested with plain threads and in-memory outboxes.

pub mod arguments;
pub mod auth;
pub mod broker;
pub mod consumer;
pub mod consumer_timeout;
pub mod dead_letter;
pub mod dedup;
pub mod definitions;
pub mod delayed;
pub mod exchange;
pub mod hooks;
pub mod message;
pub mod names;
pub mod policy;
pub mod publish;
pub mod queue;
pub mod spill;
pub mod stats;
pub mod vhost;

pub use broker::Broker;
pub use consumer::{ChannelCredit, Consumer, Delivery, Outbox};
pub use exchange::{Exchange, ExchangeKind};
pub use message::{Message, MessageRef};
pub use queue::Queue;
pub use vhost::VHost;
pub use warren_protocol::AmqpError;

/// Short alias for results whose error a client sees.
pub type Result<T, E = AmqpError> = std::result::Result<T, E>;

/// A server-generated name such as `amq.gen-…` or `amq.ctag-…`: the prefix
/// followed by 22 URL-safe random characters, as RabbitMQ makes them.
pub fn generated_name(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(prefix.len() + 22);
    s.push_str(prefix);
    for _ in 0..22 {
        s.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    s
}

/// Wall-clock milliseconds since the Unix epoch (TTLs and expiry times).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A value refused by validation (a queue argument, a permission pattern,
/// a policy definition, an imported document), with the text RabbitMQ
/// gives for it: callers wrap it in the AMQP or HTTP error they answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);
