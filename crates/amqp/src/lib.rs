//! Warren's AMQP 0-9-1 server side: one task per client connection
//! ([`connection`]), its channels (publishing — content assembly, routing,
//! confirms, transactions — and deliveries, acks and consumer timeouts;
//! `channel`), the TLS acceptor ([`tls`]) and panic containment
//! ([`panics`]: a panic costs one connection, closed with 541). It sees the
//! node (`warren-node`), the broker model (`warren-core`) and the codec
//! (`warren-protocol`); never the admin surface or the cluster.

mod channel;
pub mod connection;
pub mod panics;
pub mod tls;

pub use tokio_rustls::TlsAcceptor;
