//! Cluster mode: leadership on etcd, replication, failover. With `--cluster-etcd`,
//! every node holds an etcd lease and registers itself under
//! `/warren/<cluster>/members/<node>`; one node at a time is the leader —
//! it holds `/warren/<cluster>/leader` under its lease, written in the same
//! transaction that bumps `/warren/<cluster>/epoch` (the fencing epoch). Only
//! the leader serves clients; a follower proxies each AMQP connection to
//! the leader byte for byte, so one address list serves the whole cluster.
//! A leader that cannot renew its lease for 2 s of its 3 s TTL stops being
//! leader before the lease can have expired anywhere: it closes its client
//! connections with 320 CONNECTION_FORCED and takes no more.
//!
//! Followers replicate the leader's data directory byte for byte
//! ([`replication`]); the in-sync replica set (ISR) is kept in etcd under
//! `/warren/<cluster>/isr`, written by the leader only while its leader key
//! holds; only an ISR member can win an election (checked in the same
//! transaction), and the winner starts a new ISR of itself.

mod election;
mod error;
pub mod etcd;
pub mod lifecycle;
pub mod replication;
pub mod tls;

pub use election::{clock_ms, proxy, reachable, Cluster, Leading, Role, Route, Settings};
pub use error::{Error, Result};
