//! Membership, leadership and the in-sync replica set, on etcd; routing a
//! client to the leader; the [`ClusterView`](warren_node::cluster::ClusterView)
//! the listeners see.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::error::{Error, Result};
use tracing::{debug, info, warn};
use warren_node::cluster::{BoxStream, ClusterStatus, Member, Protocol};

use crate::etcd::{self, Compare, Etcd};

/// What the election needs of the replication hub while this node leads
/// (the hub, `replication::Hub`, implements it: the election does not
/// depend on replication).
pub trait Leading: warren_node::cluster::ConfirmGate {
    /// The lease was renewed: confirms may go on for another `STEP_DOWN`.
    fn lease_renewed(&self);
    /// Leadership is lost: nothing more is confirmed.
    fn fence(&self);
    /// Each connected follower's state, for `cluster_status`.
    fn followers(&self) -> Vec<warren_node::cluster::FollowerStatus>;
}

/// Lease TTL (s); a leader gives up after `STEP_DOWN` without renewing.
const LEASE_TTL: i64 = 3;
const STEP_DOWN: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Settings {
    pub etcd: Vec<String>,
    pub name: String,
    pub node: String,
    /// Where this node's AMQP listener is reachable by the others.
    pub advertise: String,
    /// Where this node's replication listener is reachable by the others.
    pub listen: String,
    /// etcd's TLS and credentials.
    pub etcd_access: etcd::Access,
}

/// Milliseconds on a clock private to this process (monotonic).
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// No lease, or no leader known: clients are turned away.
    Unknown,
    Leader {
        epoch: u64,
    },
    Follower {
        leader: String,
        amqp: String,
        /// The leader's replication listener.
        repl: String,
        /// The leader's management API ("" if it has none).
        http: String,
        epoch: u64,
    },
}

pub struct Cluster {
    pub settings: Settings,
    etcd: Etcd,
    role: watch::Sender<Role>,
    /// Members seen in etcd: node name → its AMQP address.
    members: Mutex<Vec<(String, String)>>,
    /// Until when (`clock_ms`) the lease is surely held: the last renewal's
    /// start plus `STEP_DOWN`.
    pub lease_until: Arc<AtomicU64>,
    /// The ISR as last read from (or, on the leader, written to) etcd.
    isr: Mutex<Vec<String>>,
    /// One ISR change at a time (the leader's).
    isr_change: tokio::sync::Mutex<()>,
    /// The leader key's value while this node leads (the ISR writes'
    /// condition).
    leader_value: Mutex<String>,
    /// The leader's replication hub, once this node leads.
    pub hub: OnceLock<Arc<dyn Leading>>,
    /// This node serves clients (it leads and its broker is open).
    serving: AtomicBool,
    /// The lease held (0: none), and set once the node is leaving.
    lease: std::sync::atomic::AtomicI64,
    /// This node's management API address, as the others reach it.
    http: OnceLock<String>,
    leaving: AtomicBool,
    /// Mutual TLS between the nodes (`--cluster-tls-*`), if set.
    pub tls: Option<crate::tls::NodeTls>,
    /// While leading: where the client connections followers pass on go.
    pub tunnels: OnceLock<warren_node::cluster::TunnelHandler>,
}

impl Cluster {
    pub fn new(settings: Settings, tls: Option<crate::tls::NodeTls>) -> Result<Arc<Cluster>> {
        if settings.node.is_empty() {
            return Err(Error::Config("--node-name is required with --cluster-etcd".into()));
        }
        if tls.is_some() {
            // Its certificate must be able to name it.
            crate::tls::NodeTls::server_name(&settings.node)?;
        }
        let etcd = Etcd::new(&settings.etcd, &settings.etcd_access)?;
        let (role, _) = watch::channel(Role::Unknown);
        Ok(Arc::new(Cluster {
            settings,
            etcd,
            role,
            members: Mutex::new(Vec::new()),
            lease_until: Arc::new(AtomicU64::new(0)),
            isr: Mutex::new(Vec::new()),
            isr_change: tokio::sync::Mutex::new(()),
            leader_value: Mutex::new(String::new()),
            hub: OnceLock::new(),
            serving: AtomicBool::new(false),
            lease: Default::default(),
            http: OnceLock::new(),
            leaving: AtomicBool::new(false),
            tls,
            tunnels: OnceLock::new(),
        }))
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    fn key(&self, rest: &str) -> String {
        format!("/warren/{}/{rest}", self.settings.name)
    }

    /// `warren ctl cluster_status`.
    pub fn status(&self) -> ClusterStatus {
        let role = self.role();
        let (name, leader, epoch) = match &role {
            Role::Unknown => ("unknown", None, None),
            Role::Leader { epoch } => ("leader", Some(self.settings.node.clone()), Some(*epoch)),
            Role::Follower { leader, epoch, .. } => ("follower", Some(leader.clone()), Some(*epoch)),
        };
        let members =
            self.members.lock().iter().map(|(n, amqp)| Member { name: n.clone(), amqp: amqp.clone() }).collect();
        let followers = match role {
            Role::Leader { .. } => self.hub.get().map(|hub| hub.followers()),
            _ => None,
        };
        ClusterStatus {
            cluster_name: self.settings.name.clone(),
            node: self.settings.node.clone(),
            role: name,
            leader,
            epoch,
            members,
            isr: self.isr.lock().clone(),
            followers,
        }
    }

    /// A clean stop: gives up the lease (and with it leadership and
    /// membership) at once, so that another node takes over without
    /// waiting for it to lapse. Call once clients are closed.
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        let lease = self.lease.swap(0, Ordering::AcqRel);
        if lease != 0 {
            match self.etcd.revoke(lease).await {
                Ok(()) => info!(node = %self.settings.node, "left the cluster (lease revoked)"),
                Err(e) => warn!(error = %e, "cannot revoke the cluster lease; it lapses in 3 s"),
            }
        }
    }

    /// Whether `node` is registered in etcd (as last read).
    pub fn is_member(&self, node: &str) -> bool {
        self.members.lock().iter().any(|(n, _)| n == node)
    }

    /// Whether the node is stopping (`leave`).
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Whether this node leads and its broker is open.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Where this node's management API is reachable by the others, once
    /// it is bound (recorded in the leader key for operators; followers
    /// reach the leader's API through the cluster listener).
    pub fn set_http(&self, addr: String) {
        let _ = self.http.set(addr);
    }

    /// This node leads and its broker is open: clients are served here.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// Adds `node` to the ISR in etcd, or takes it out, provided this node
    /// still holds the leader key; the local view changes once etcd has.
    pub async fn isr_change(&self, node: &str, add: bool) -> Result<()> {
        let _one = self.isr_change.lock().await;
        let Role::Leader { epoch } = self.role() else { return Err(Error::NotLeader("not the leader")) };
        let mut members = self.isr.lock().clone();
        let present = members.iter().any(|m| m == node);
        if present == add {
            return Ok(());
        }
        match add {
            true => members.push(node.to_owned()),
            false => members.retain(|m| m != node),
        }
        members.sort();
        let value = json!({ "epoch": epoch, "members": members }).to_string();
        let leader = self.leader_value.lock().clone();
        let (leader_key, isr_key) = (self.key("leader"), self.key("isr"));
        let done = self.etcd.txn(&[etcd::Compare::Value(&leader_key, &leader)], &[(&isr_key, &value, 0)]).await?;
        if !done {
            return Err(Error::NotLeader("the leader key is not ours any more"));
        }
        info!(node, add, isr = ?members, "in-sync replica set changed");
        *self.isr.lock() = members;
        Ok(())
    }

    fn set_role(&self, new: Role) {
        self.role.send_if_modified(|r| {
            if *r == new {
                return false;
            }
            info!(from = ?r, to = ?new, node = %self.settings.node, "cluster role changed");
            *r = new;
            true
        });
    }

    /// The election loop: keeps the lease, the member key and the view of
    /// the leader current, and campaigns when there is no leader.
    pub async fn run(self: Arc<Self>) {
        let mut lease = 0i64;
        let mut renewed = Instant::now();
        let member_key = self.key(&format!("members/{}", self.settings.node));
        let member = json!({ "amqp": self.settings.advertise, "repl": self.settings.listen }).to_string();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.leaving.load(Ordering::Acquire) {
                return;
            }
            self.lease.store(lease, Ordering::Release);
            if lease != 0 {
                let asked = (Instant::now(), clock_ms());
                match self.etcd.keepalive(lease).await {
                    Ok(ttl) if ttl > 0 => {
                        renewed = asked.0;
                        self.lease_until.store(asked.1 + STEP_DOWN.as_millis() as u64, Ordering::Release);
                        if let Some(hub) = self.hub.get() {
                            hub.lease_renewed();
                        }
                    }
                    Ok(_) => {
                        warn!(node = %self.settings.node, "cluster lease expired");
                        lease = 0;
                    }
                    Err(e) => warn!(node = %self.settings.node, error = %e, "cannot renew the cluster lease"),
                }
                if lease != 0 && renewed.elapsed() > STEP_DOWN {
                    // It may expire before we can renew it: act as if it had.
                    lease = 0;
                }
            }
            if lease == 0 {
                self.set_role(Role::Unknown);
                let asked = (Instant::now(), clock_ms());
                match self.etcd.grant(LEASE_TTL).await {
                    Ok(id) => {
                        lease = id;
                        self.lease.store(id, Ordering::Release);
                        renewed = asked.0;
                        self.lease_until.store(asked.1 + STEP_DOWN.as_millis() as u64, Ordering::Release);
                    }
                    Err(e) => {
                        warn!(node = %self.settings.node, error = %e, "cannot reach etcd");
                        continue;
                    }
                }
                if let Err(e) = self.etcd.put(&member_key, &member, lease).await {
                    warn!(error = %e, "cannot register in etcd");
                }
            }
            match self.elect(lease).await {
                Ok(role) => self.set_role(role),
                Err(e) => {
                    warn!(node = %self.settings.node, error = %e, "cluster election step failed");
                    if renewed.elapsed() > STEP_DOWN {
                        self.set_role(Role::Unknown);
                    }
                }
            }
            if let Ok(kvs) = self.etcd.get_prefix(&self.key("members/")).await {
                let prefix = self.key("members/");
                let mut seen: Vec<(String, String)> = kvs
                    .into_iter()
                    .map(|kv| {
                        let amqp = serde_json::from_str::<Value>(&kv.value)
                            .ok()
                            .and_then(|v| v["amqp"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        (kv.key.trim_start_matches(&prefix).to_owned(), amqp)
                    })
                    .collect();
                seen.sort();
                *self.members.lock() = seen;
            }
        }
    }

    /// One look at the leader key and the ISR; a campaign if there is no
    /// leader and this node is in the ISR (or there is none yet).
    async fn elect(&self, lease: i64) -> Result<Role> {
        let (leader_key, epoch_key, isr_key) = (self.key("leader"), self.key("epoch"), self.key("isr"));
        let isr = self.etcd.get(&isr_key).await?;
        let members: Option<Vec<String>> = isr.as_ref().map(|kv| {
            serde_json::from_str::<Value>(&kv.value)
                .ok()
                .and_then(|v| serde_json::from_value(v["members"].clone()).ok())
                .unwrap_or_default()
        });
        if let Some(kv) = self.etcd.get(&leader_key).await? {
            let v: Value = serde_json::from_str(&kv.value)?;
            let node = v["node"].as_str().unwrap_or_default().to_owned();
            let epoch = v["epoch"].as_u64().unwrap_or(0);
            if node == self.settings.node {
                if kv.lease != lease {
                    // An earlier run of this node led: wait for its lease to go.
                    return Ok(Role::Unknown);
                }
                *self.leader_value.lock() = kv.value.clone();
                if !matches!(self.role(), Role::Leader { .. }) {
                    *self.isr.lock() = members.unwrap_or_default();
                }
                return Ok(Role::Leader { epoch });
            }
            *self.isr.lock() = members.unwrap_or_default();
            let amqp = v["amqp"].as_str().unwrap_or_default().to_owned();
            let repl = v["repl"].as_str().unwrap_or_default().to_owned();
            let http = v["http"].as_str().unwrap_or_default().to_owned();
            return Ok(Role::Follower { leader: node, amqp, repl, http, epoch });
        }
        if let Some(m) = &members {
            *self.isr.lock() = m.clone();
            if !m.contains(&self.settings.node) {
                // Not known to hold every confirmed message: may not lead.
                return Ok(Role::Unknown);
            }
        }
        // No leader: take the next epoch, if nobody else did meanwhile.
        let (epoch, revision) = match self.etcd.get(&epoch_key).await? {
            Some(kv) => (kv.value.parse::<u64>().unwrap_or(0), kv.mod_revision),
            None => (0, 0),
        };
        let next = epoch + 1;
        let value = json!({
            "node": self.settings.node,
            "epoch": next,
            "amqp": self.settings.advertise,
            "repl": self.settings.listen,
            "http": self.http.get(),
        })
        .to_string();
        let new_isr = json!({ "epoch": next, "members": [self.settings.node] }).to_string();
        let isr_same = match &isr {
            Some(kv) => etcd::Compare::ModRevision(&isr_key, kv.mod_revision),
            None => etcd::Compare::Absent(&isr_key),
        };
        let won = self
            .etcd
            .txn(
                &[Compare::Absent(&leader_key), Compare::ModRevision(&epoch_key, revision), isr_same],
                &[(&leader_key, &value, lease), (&epoch_key, &next.to_string(), 0), (&isr_key, &new_isr, 0)],
            )
            .await?;
        if won {
            info!(node = %self.settings.node, epoch = next, "elected cluster leader");
            *self.leader_value.lock() = value;
            *self.isr.lock() = vec![self.settings.node.clone()];
            return Ok(Role::Leader { epoch: next });
        }
        Ok(Role::Unknown)
    }
}

/// Where a client's connection goes.
pub enum Route {
    /// This node is the leader: serve it here.
    Local,
    /// Spliced to the leader (the tunnel to it already made).
    Proxied(BoxStream),
}

/// How long a new connection waits for a leader to be known and reachable
/// (an election takes the old lease's TTL plus a tick).
const ROUTE_WAIT: Duration = Duration::from_secs(10);

impl Cluster {
    /// Finds where a new client connection goes: here if this node leads,
    /// else the leader's listener — waiting out an election, and a leader
    /// that cannot be reached, for up to `ROUTE_WAIT`. None: no leader.
    pub async fn route(&self, client: std::net::SocketAddr) -> Option<Route> {
        let deadline = tokio::time::Instant::now() + ROUTE_WAIT;
        let mut role = self.subscribe();
        loop {
            let current = role.borrow_and_update().clone();
            match current {
                Role::Leader { .. } if self.serving.load(Ordering::Acquire) => return Some(Route::Local),
                Role::Follower { leader, repl, .. } => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let attempt = Duration::from_secs(1).min(left);
                    let tunnel = self.tunnel_to(&leader, &repl, Protocol::Amqp, client);
                    match tokio::time::timeout(attempt, tunnel).await {
                        Ok(Ok(up)) => return Some(Route::Proxied(up)),
                        Ok(Err(e)) => debug!(%leader, error = %e, "cannot reach the leader for a client"),
                        Err(_) => {}
                    }
                }
                _ => {}
            }
            // Wait for the view to change (or a moment, to retry the leader).
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), role.changed()).await;
        }
    }
}

/// Where a listener bound at `bound` is reachable by the other nodes: as
/// bound, or, bound to every interface, on the advertised AMQP host.
pub fn reachable(bound: std::net::SocketAddr, advertise: &str) -> String {
    match bound.ip().is_unspecified() {
        true => {
            let host = advertise.rsplit_once(':').map_or(advertise, |(h, _)| h);
            format!("{host}:{}", bound.port())
        }
        false => bound.to_string(),
    }
}

/// Splices a client's connection to the leader.
pub async fn proxy(mut client: impl warren_node::cluster::Duplex, mut upstream: BoxStream) {
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

impl Cluster {
    /// A connection to the leader `leader`'s cluster listener at `repl`,
    /// which it serves as a `protocol` client connecting from `client`:
    /// with cluster TLS, only once the leader's certificate names it (a
    /// forged leader key gets no client's bytes).
    pub async fn tunnel_to(
        &self,
        leader: &str,
        repl: &str,
        protocol: Protocol,
        client: std::net::SocketAddr,
    ) -> std::io::Result<BoxStream> {
        let tcp = TcpStream::connect(repl).await?;
        let _ = tcp.set_nodelay(true);
        let mut up: BoxStream = match &self.tls {
            Some(tls) => {
                let name = crate::tls::NodeTls::server_name(leader).map_err(std::io::Error::other)?;
                Box::new(tokio_rustls::TlsConnector::from(tls.client.clone()).connect(name, tcp).await?)
            }
            None => Box::new(tcp),
        };
        let hello = crate::replication::client_frame(&self.settings.name, &self.settings.node, protocol, client);
        tokio::io::AsyncWriteExt::write_all(&mut up, &hello).await?;
        Ok(up)
    }
}

impl warren_node::cluster::ClusterView for Cluster {
    fn is_serving(&self) -> bool {
        Cluster::is_serving(self)
    }

    fn leader_name(&self) -> Option<String> {
        match self.role() {
            Role::Follower { leader, .. } => Some(leader),
            _ => None,
        }
    }

    fn gate(&self) -> Option<Arc<dyn warren_node::cluster::ConfirmGate>> {
        self.hub.get().map(|h| h.clone() as Arc<dyn warren_node::cluster::ConfirmGate>)
    }

    fn status(&self) -> ClusterStatus {
        Cluster::status(self)
    }

    fn tunnel(
        &self,
        protocol: Protocol,
        client: std::net::SocketAddr,
    ) -> warren_node::cluster::BoxFuture<'_, std::io::Result<BoxStream>> {
        Box::pin(async move {
            match self.role() {
                Role::Follower { leader, repl, .. } => self.tunnel_to(&leader, &repl, protocol, client).await,
                _ => Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "no cluster leader is known")),
            }
        })
    }
}
