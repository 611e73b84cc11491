//! What the listeners may ask of cluster mode, as traits that
//! `warren-cluster` implements: the AMQP server and the admin surface never
//! see the cluster's internals (etcd, replication), only this view.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A boxed future (the traits here are used as objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A byte stream both ways: TCP, TLS, or a client's connection tunnelled
/// from a follower to the leader.
pub trait Duplex: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Duplex for T {}
pub type BoxStream = Box<dyn Duplex>;

/// What a client connection passed from a follower to the leader speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Amqp = 1,
    Http = 2,
}

/// On the leader: serves a client connection a follower passed on, as if
/// it had come from `client` (its real address) to this node's listener.
pub type TunnelHandler = Arc<dyn Fn(Protocol, BoxStream, std::net::SocketAddr) + Send + Sync>;

/// The leader's gate for replies that follow a durable change: they wait
/// until every in-sync follower has the definitions saved so far.
pub trait ConfirmGate: Send + Sync {
    /// How many definitions saves this leader has made.
    fn defs_saved(&self) -> u64;
    /// Waits until every in-sync follower has every save made so far;
    /// false if that took longer than `limit`.
    fn defs_replicated(&self, limit: Duration) -> BoxFuture<'_, bool>;
}

/// This node's place in the cluster.
pub trait ClusterView: Send + Sync {
    /// Whether this node leads and serves (its data directory is open).
    fn is_serving(&self) -> bool;
    /// While following: the leader's node name.
    fn leader_name(&self) -> Option<String>;
    /// While leading: the gate replies to durable changes wait at.
    fn gate(&self) -> Option<Arc<dyn ConfirmGate>>;
    /// `warren ctl cluster_status` (and the API's node document).
    fn status(&self) -> ClusterStatus;
    /// While following: a connection to the leader that it serves as a
    /// `protocol` client connecting from `client` (through the cluster
    /// listener, inside mutual TLS when the cluster has it).
    fn tunnel(&self, protocol: Protocol, client: std::net::SocketAddr) -> BoxFuture<'_, std::io::Result<BoxStream>>;
}

/// A node's view of its cluster (`warren ctl cluster_status`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    pub cluster_name: String,
    pub node: String,
    /// "leader", "follower" or "unknown".
    pub role: &'static str,
    pub leader: Option<String>,
    pub epoch: Option<u64>,
    pub members: Vec<Member>,
    /// The in-sync replica set, as this node last read it.
    pub isr: Vec<String>,
    /// On the leader: each connected follower.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub followers: Option<Vec<FollowerStatus>>,
}

/// A registered member: its name and where its AMQP listener is reached.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    pub name: String,
    pub amqp: String,
}

/// A follower as the leader sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FollowerStatus {
    pub name: String,
    pub in_sync: bool,
    pub acked_position: u64,
    pub lag_bytes: u64,
}
