//! Sans-IO AMQP 0-9-1 for Warren.
//!
//! This crate turns bytes into frames and methods and back, assembles message
//! content from header and body frames, and defines the one error type every
//! peer-visible failure goes through. It owns no socket, no clock and no task:
//! the server feeds it bytes and writes out what it returns, so everything here
//! is tested without a network.
//!
//! Method argument parsing and generation come from `amq-protocol` (the codec
//! lapin uses). The per-message hot path — content header and body frames and
//! `basic.deliver` / `basic.get-ok` — is encoded by hand in [`frame`], and
//! message properties are kept as the raw bytes the publisher sent, so they
//! reach consumers byte for byte.

pub mod body;
pub mod content;
pub mod error;
pub mod frame;
pub mod method;
pub mod table;

pub use amq_protocol::protocol::{self as spec, AMQPClass};
pub use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
pub use body::Body;
pub use error::{fit_short, short_string, AmqpError, ErrorKind};

/// The protocol header a 0-9-1 client opens with, and the one the server
/// answers with when a client sends anything else.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Server defaults, as RabbitMQ advertises them in `connection.tune`.
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
pub const DEFAULT_CHANNEL_MAX: u16 = 2047;
pub const DEFAULT_HEARTBEAT: u16 = 60;
/// The smallest frame_max a peer may negotiate (spec: frame-min-size).
pub const FRAME_MIN_SIZE: u32 = 4096;
