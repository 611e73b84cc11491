//! What the node knows of its links — shovels and federation links, run
//! by `warren-links` — that other parts read or ask for: each link's state
//! (the management API's `/api/shovels` and `/api/federation-links`,
//! `warren ctl shovel_status`), restart requests, and the internal
//! listener the links reach this node's own broker through.
//!
//! The internal listener is bound to a loopback port of the system's
//! choosing and accepts one login only: [`INTERNAL_USER`] with the secret
//! made here at start, which never leaves the process. A connection that
//! logs in so may do everything in every vhost, as a RabbitMQ plugin's
//! direct connection; the management API makes sure that whoever sets a
//! shovel or upstream on the local broker may use the vhost it names.
//!
//! [`INTERNAL_USER`]: warren_core::auth::INTERNAL_USER

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Which kind of link a status belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkKind {
    Shovel,
    Federation,
}

/// A link's name: its kind, vhost and name (a federation link's name is
/// its upstream and the exchange or queue it federates).
pub type LinkKey = (LinkKind, String, String);

/// How a link stands, as the management API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Connecting, declaring what it needs.
    Starting,
    Running,
    /// Stopped by an error; `reason` says which. It starts again after its
    /// reconnect delay.
    Terminated {
        reason: String,
    },
}

impl LinkState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Starting => "starting",
            LinkState::Running => "running",
            LinkState::Terminated { .. } => "terminated",
        }
    }
}

/// A link's status line.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    pub state: LinkState,
    /// When the state last changed (milliseconds since the epoch).
    pub since_ms: u64,
    /// Facts for the listing (`src_uri`, `dest_queue`, `exchange`, …),
    /// credentials removed from URIs.
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Messages moved since the link started (forwarded, for federation).
    pub moved: u64,
}

/// The node's links, as other parts see them.
pub struct Links {
    /// The internal listener's password (hex), made at start.
    pub secret: String,
    /// Where the internal listener is bound, once it is.
    pub internal: OnceLock<SocketAddr>,
    status: Mutex<BTreeMap<LinkKey, LinkStatus>>,
    restarts: Mutex<Vec<LinkKey>>,
    /// Woken when a restart is asked for or parameters changed.
    pub wake: Notify,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            secret: random_secret(),
            internal: OnceLock::new(),
            status: Default::default(),
            restarts: Default::default(),
            wake: Notify::new(),
        }
    }
}

/// 32 random bytes from the kernel, as hex.
fn random_secret() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("the kernel's random source (/dev/urandom) is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Links {
    /// Whether `password` is the internal listener's secret (compared in
    /// constant time).
    pub fn is_secret(&self, password: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), password.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }

    pub fn set_status(&self, key: LinkKey, status: LinkStatus) {
        self.status.lock().insert(key, status);
    }

    /// Changes a link's state (and its time), keeping its details.
    pub fn set_state(&self, key: &LinkKey, state: LinkState) {
        if let Some(s) = self.status.lock().get_mut(key) {
            if s.state != state {
                s.since_ms = warren_core::now_ms();
                s.state = state;
            }
        }
    }

    pub fn count_moved(&self, key: &LinkKey, n: u64) {
        if let Some(s) = self.status.lock().get_mut(key) {
            s.moved += n;
        }
    }

    pub fn remove(&self, key: &LinkKey) {
        self.status.lock().remove(key);
    }

    /// Every link's status, of one kind.
    pub fn list(&self, kind: LinkKind) -> Vec<(LinkKey, LinkStatus)> {
        self.status.lock().iter().filter(|(k, _)| k.0 == kind).map(|(k, s)| (k.clone(), s.clone())).collect()
    }

    /// Every link listed.
    pub fn keys(&self) -> Vec<LinkKey> {
        self.status.lock().keys().cloned().collect()
    }

    /// Asks the supervisor to restart a link; false if there is none.
    pub fn restart(&self, key: LinkKey) -> bool {
        if !self.status.lock().contains_key(&key) {
            return false;
        }
        self.restarts.lock().push(key);
        self.wake.notify_one();
        true
    }

    /// The restarts asked for since the last call.
    pub fn take_restarts(&self) -> Vec<LinkKey> {
        std::mem::take(&mut *self.restarts.lock())
    }
}
