//! The running Warren node, as small typed parts that the listeners share:
//! its configuration ([`config`]), the broker it serves ([`BrokerCell`]),
//! the registry of open connections and channels ([`registry`], read
//! models for the admin surface), the gates confirms wait at, the resource
//! alarms, where its listeners are bound, and what the listeners may ask
//! of cluster mode ([`cluster::ClusterView`]). No listener lives here: the
//! AMQP server (`warren-amqp`), the admin surface (`warren-admin`) and the
//! cluster (`warren-cluster`) each take a [`Node`]; the `warren` binary
//! builds it.

pub mod background;
pub mod boot;
pub mod cluster;
pub mod conf;
pub mod config;
pub mod heap;
pub mod links;
pub mod pem;
pub mod registry;
pub mod resources;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::watch;
use warren_core::Broker;

pub use config::Config;
pub use registry::{ChannelInfo, ConnInfo, Registry};

/// The node: what every listener shares.
pub struct Node {
    pub broker: BrokerCell,
    pub config: Config,
    pub confirms: Confirms,
    pub alarms: Alarms,
    /// Open connections and channels; opened/closed totals.
    pub registry: Registry,
    pub listeners: Listeners,
    pub started: Instant,
    /// Cluster mode (`--cluster-etcd`): leadership, the leader's address,
    /// forwarding to it.
    pub cluster: Option<Arc<dyn cluster::ClusterView>>,
    /// Shovels and federation links: their states, restart requests, the
    /// internal listener they reach this broker through.
    pub links: links::Links,
}

impl Node {
    /// Whether this node serves its broker: a single node always, a
    /// cluster node while it leads. Links run only there.
    pub fn is_serving(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.is_serving())
    }

    /// Where the management API listens, once bound.
    pub fn http_listen(&self) -> Option<SocketAddr> {
        self.listeners.http.get().copied()
    }
}

/// This node's name as RabbitMQ's tools show one: `warren@HOST`.
pub fn node_name() -> String {
    static NAME: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = host.trim();
        format!("warren@{}", if host.is_empty() { "localhost" } else { host })
    });
    NAME.clone()
}

/// What confirms and replies wait for.
pub struct Confirms {
    /// Position up to which messages in the message log may be confirmed:
    /// on disk here (and on every in-sync follower, in a cluster).
    pub synced: watch::Receiver<u64>,
    /// In a cluster: how many definitions saves every in-sync follower has
    /// (a reply to a durable declaration waits for its save).
    pub defs_replicated: watch::Receiver<u64>,
}

/// The resource alarms.
pub struct Alarms {
    /// Some(reason) while a memory or disk alarm holds: publishers wait.
    pub current: watch::Receiver<Option<String>>,
    /// Free disk space (bytes) below which the disk alarm holds; set from
    /// `--disk-free-limit`, changed by `warren ctl set_disk_free_limit`.
    pub disk_free_limit: Arc<AtomicU64>,
}

/// Where the node's listeners are bound, once they are.
#[derive(Default)]
pub struct Listeners {
    pub amqp: OnceLock<SocketAddr>,
    pub amqps: OnceLock<SocketAddr>,
    pub http: OnceLock<SocketAddr>,
    pub prometheus: OnceLock<SocketAddr>,
}

/// The broker a node serves. A cluster node starts with an empty
/// placeholder (in memory, never served to clients: followers proxy them)
/// and gets its real broker when it becomes the leader.
pub struct BrokerCell {
    placeholder: Arc<Broker>,
    real: OnceLock<Arc<Broker>>,
}

impl BrokerCell {
    /// A single node's broker, open from the start.
    pub fn ready(broker: Arc<Broker>) -> BrokerCell {
        let real = OnceLock::new();
        let _ = real.set(broker.clone());
        BrokerCell { placeholder: broker, real }
    }

    /// A cluster node's, until it leads.
    pub fn pending() -> BrokerCell {
        BrokerCell { placeholder: Arc::new(Broker::new()), real: Default::default() }
    }

    /// The broker a new leader opened (once).
    pub fn set(&self, broker: Arc<Broker>) {
        let _ = self.real.set(broker);
    }
}

impl std::ops::Deref for BrokerCell {
    type Target = Arc<Broker>;
    fn deref(&self) -> &Arc<Broker> {
        self.real.get().unwrap_or(&self.placeholder)
    }
}
