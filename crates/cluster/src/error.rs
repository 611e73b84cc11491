//! Errors of cluster mode, typed by what went wrong: the settings, etcd,
//! leadership, a replication peer, or the I/O under them.

/// Something cluster mode could not do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster settings cannot work (a missing node name, an unusable
    /// etcd endpoint).
    #[error("{0}")]
    Config(String),
    /// etcd could not be reached, or answered with an error.
    #[error("{0}")]
    Etcd(String),
    /// What etcd holds did not parse.
    #[error("bad JSON from etcd: {0}")]
    Json(#[from] serde_json::Error),
    /// Only the leader may do this, and this node is not (or no longer) it.
    #[error("{0}")]
    NotLeader(&'static str),
    /// A replication peer broke the protocol or sent what may not be
    /// applied here (a malformed frame, a path outside the data directory,
    /// a diverged replica).
    #[error("{0}")]
    Protocol(String),
    /// A replication peer stopped keeping up: silent, too far behind,
    /// replaced by a newer session, or gone.
    #[error("{0}")]
    Peer(String),
    /// A socket or file operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
