//! The listener: accepts connections, spawns one task per connection, and
//! shuts down gracefully on SIGTERM/SIGINT (every client gets
//! 320 CONNECTION_FORCED, then the process exits 0).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use warren_core::Broker;

use crate::config::Config;
use crate::connection;

/// The broker a node serves. A cluster node starts with an empty
/// placeholder (in memory, never served to clients: followers proxy them)
/// and gets its real broker when it becomes the leader.
pub struct BrokerCell {
    placeholder: Arc<Broker>,
    real: std::sync::OnceLock<Arc<Broker>>,
}

impl BrokerCell {
    fn ready(broker: Arc<Broker>) -> BrokerCell {
        let real = std::sync::OnceLock::new();
        let _ = real.set(broker.clone());
        BrokerCell { placeholder: broker, real }
    }

    fn pending() -> BrokerCell {
        BrokerCell { placeholder: Arc::new(Broker::new()), real: Default::default() }
    }
}

impl std::ops::Deref for BrokerCell {
    type Target = Arc<Broker>;
    fn deref(&self) -> &Arc<Broker> {
        self.real.get().unwrap_or(&self.placeholder)
    }
}

/// Settings every connection reads.
pub struct Shared {
    pub broker: BrokerCell,
    pub config: Config,
    /// Position up to which messages in the message log may be confirmed:
    /// on disk here (and on every in-sync follower, in a cluster).
    pub synced: watch::Receiver<u64>,
    /// In a cluster: how many definitions saves every in-sync follower has
    /// (a reply to a durable declaration waits for its save).
    pub defs_replicated: watch::Receiver<u64>,
    /// The disk alarm: Some(reason) while the message log cannot write.
    pub alarm: watch::Receiver<Option<String>>,
    /// Open connections by id (`list_connections`, the node connection limit).
    pub connections: parking_lot::Mutex<std::collections::HashMap<u64, Arc<connection::ConnInfo>>>,
    /// Free disk space (bytes) below which the disk alarm holds; set from
    /// `--disk-free-limit`, changed by `warren ctl set_disk_free_limit`.
    pub disk_free_limit: Arc<AtomicU64>,
    /// Where the management API listens, once bound.
    pub http_addr: std::sync::OnceLock<std::net::SocketAddr>,
    pub started: std::time::Instant,
    /// Connections and channels opened and closed since the start.
    pub totals: Totals,
    /// Cluster mode (`--cluster-etcd`): leadership and the leader's address.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

#[derive(Default)]
pub struct Totals {
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub channels_opened: AtomicU64,
    pub channels_closed: AtomicU64,
}

impl Shared {
    pub fn http_listen(&self) -> Option<std::net::SocketAddr> {
        self.http_addr.get().copied()
    }
}

/// What runs once a broker is open: resource alarms and the timers.
struct Background {
    memory_limit: Option<u64>,
    paging_at: Option<u64>,
    disk: DiskWatch,
    alarm: watch::Sender<Option<String>>,
}

impl Background {
    fn start(self, broker: Arc<Broker>) {
        tokio::spawn(alarms(broker.clone(), self.memory_limit, self.paging_at, self.disk, self.alarm));
        tokio::spawn(expiry_timer(broker.clone()));
        tokio::spawn(delay_timer(broker));
    }
}

fn open_broker(data_dir: &std::path::Path) -> anyhow::Result<Broker> {
    Broker::open(data_dir).map_err(|e| anyhow::anyhow!("cannot open data dir {}: {e}", data_dir.display()))
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", data_dir.display()))?;
    // One broker per data directory: a second one would interleave writes
    // to the same message log. The lock goes with the process (kill -9 too).
    let lock = std::fs::File::create(data_dir.join("LOCK"))?;
    if lock.try_lock().is_err() {
        anyhow::bail!("data dir {} is in use by another running broker", data_dir.display());
    }
    let clustered = !config.cluster_etcd.trim().is_empty();
    let (sync_tx, synced) = watch::channel(0u64);
    let (defs_tx, defs_replicated) = watch::channel(0u64);
    // A single node opens its data directory now and listens once recovery
    // is done ('listening' means ready to serve); a cluster node opens it
    // only when it becomes the leader, and listens at once (to proxy).
    let (broker, sync_tx) = if clustered {
        (BrokerCell::pending(), Some(sync_tx))
    } else {
        let broker = Arc::new(open_broker(&data_dir)?);
        if let Some(log) = broker.log() {
            log.on_sync(Box::new(move |pos| {
                sync_tx.send_replace(pos);
            }));
        }
        (BrokerCell::ready(broker), None)
    };
    let listener = TcpListener::bind(config.amqp_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.amqp_listen))?;
    let addr = listener.local_addr()?;
    let tls = match config.amqps_listen {
        Some(at) => {
            let acceptor = crate::tls::acceptor(&config)?;
            let l = TcpListener::bind(at).await.map_err(|e| anyhow::anyhow!("cannot listen on {at}: {e}"))?;
            Some((l, acceptor))
        }
        None => None,
    };
    // Scratch space for transient messages under memory pressure: what an
    // earlier run left there is removed (transient stays transient).
    warren_core::spill::open(&data_dir.join("spill"))
        .map_err(|e| anyhow::anyhow!("cannot create the spill directory in {}: {e}", data_dir.display()))?;
    let (alarm_tx, alarm) = watch::channel(None);
    let disk_free_limit = Arc::new(AtomicU64::new(config.disk_free_limit.bytes()));
    let disk = DiskWatch { dir: data_dir.clone(), limit: disk_free_limit.clone() };
    info!(bytes = disk_free_limit.load(Ordering::Relaxed), "disk free limit set");
    let paging_at = config.memory_limit().map(|l| (l as f64 * config.memory_paging_ratio) as u64);
    let background = Background { memory_limit: config.memory_limit(), paging_at, disk, alarm: alarm_tx };
    let (cluster, repl_listener) = match config.cluster_etcd.trim() {
        "" => (None, None),
        endpoints => {
            let advertise = match config.cluster_advertise.trim() {
                "" => addr.to_string(),
                a => a.to_owned(),
            };
            let at = match config.cluster_listen.trim() {
                "" => format!("{}:0", addr.ip()),
                a => a.to_owned(),
            };
            let repl = TcpListener::bind(&at).await.map_err(|e| anyhow::anyhow!("cannot listen on {at}: {e}"))?;
            let bound = repl.local_addr()?;
            let listen = crate::cluster::reachable(bound, &advertise);
            info!(addr = %bound, "cluster replication listening");
            let settings = crate::cluster::Settings {
                etcd: endpoints.split(',').map(str::to_owned).collect(),
                name: config.cluster_name.clone(),
                node: config.node_name.clone(),
                advertise,
                listen,
            };
            (Some(crate::cluster::Cluster::new(settings).map_err(|e| anyhow::anyhow!(e))?), Some(repl))
        }
    };
    let http_at = config.http_listen().map_err(|e| anyhow::anyhow!(e))?;
    let prometheus_at = config.prometheus_listen().map_err(|e| anyhow::anyhow!(e))?;
    let shared = Arc::new(Shared {
        broker,
        config,
        synced,
        defs_replicated,
        alarm,
        connections: Default::default(),
        disk_free_limit,
        http_addr: Default::default(),
        started: std::time::Instant::now(),
        totals: Default::default(),
        cluster,
    });
    if let Some(at) = http_at {
        let bound = crate::http::listen(shared.clone(), at).await?;
        let _ = shared.http_addr.set(bound);
        if let Some(c) = &shared.cluster {
            c.set_http(crate::cluster::reachable(bound, &c.settings.advertise));
        }
    }
    match (shared.cluster.clone(), repl_listener, sync_tx) {
        (Some(cluster), Some(repl), Some(sync_tx)) => {
            tokio::spawn(cluster.clone().run());
            let node = ClusterNode {
                shared: shared.clone(),
                cluster,
                repl,
                sync_tx,
                defs_tx,
                background,
                data_dir: data_dir.clone(),
            };
            tokio::spawn(node.run());
        }
        _ => background.start(shared.broker.clone()),
    }
    if let Some(at) = prometheus_at {
        crate::metrics::listen(shared.clone(), at).await?;
    }
    crate::ctl::listen(shared.clone(), &data_dir)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the ctl socket in {}: {e}", data_dir.display()))?;
    if let Some((l, _)) = &tls {
        info!(addr = %l.local_addr()?, "AMQP over TLS listening");
    }
    info!(%addr, data_dir = %data_dir.display(), "AMQP listening on {addr}");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Each connection task holds a sender; when all are dropped, they are done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let shared = shared.clone();
                    let shutdown = shutdown_rx.clone();
                    let done = done_tx.clone();
                    // In a cluster, a follower hands the connection to the
                    // leader (waiting out an election); with no leader it is
                    // closed.
                    if let Some(cluster) = shared.cluster.clone() {
                        tokio::spawn(async move {
                            match cluster.route().await {
                                Some(crate::cluster::Route::Local) => {
                                    connection::serve(connection::Stream::Tcp(socket), peer, shared, shutdown).await;
                                }
                                Some(crate::cluster::Route::Proxied(up)) => crate::cluster::proxy(socket, up).await,
                                None => warn!(%peer, "no cluster leader: connection closed"),
                            }
                            drop(done);
                        });
                        continue;
                    }
                    tokio::spawn(async move {
                        connection::serve(connection::Stream::Tcp(socket), peer, shared, shutdown).await;
                        drop(done);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            accepted = accept_tls(&tls) => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let acceptor = tls.as_ref().map(|(_, a)| a.clone()).expect("TLS listener");
                    let shared = shared.clone();
                    let shutdown = shutdown_rx.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        // The TLS handshake counts against the AMQP handshake timeout.
                        match tokio::time::timeout(connection::HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                            Ok(Ok(stream)) => {
                                let stream = connection::Stream::Tls(Box::new(stream));
                                connection::serve(stream, peer, shared, shutdown).await;
                            }
                            Ok(Err(e)) => info!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => info!(%peer, "TLS handshake timeout"),
                        }
                        drop(done);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!("shutting down: closing client connections");
    drop(listener);
    let _ = shutdown_tx.send(true);
    drop(done_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await;
    if let Some(log) = shared.broker.log() {
        log.close();
    }
    if let Some(cluster) = &shared.cluster {
        if let Some(hub) = cluster.hub.get() {
            hub.fence();
        }
        cluster.leave().await;
    }
    info!("stopped");
    drop(lock);
    Ok(())
}

/// Accepts on the TLS listener, or never when there is none.
async fn accept_tls(
    tls: &Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match tls {
        Some((l, _)) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// How often queues drop expired messages at their head (so that a queue of
/// expired messages shrinks without a consumer, as RabbitMQ's TTL timers do)
/// and unused queues with `x-expires` are deleted.
const EXPIRY_INTERVAL: Duration = Duration::from_millis(100);

/// A cluster node's life: it follows (replicating the leader's data
/// directory) until it wins an election, then opens that directory and
/// serves as the leader; once it stops leading, it closes its clients (320
/// CONNECTION_FORCED: they reconnect, through a follower, to the new
/// leader) and restarts its process as a follower, which discards whatever
/// the new leader does not have.
struct ClusterNode {
    shared: Arc<Shared>,
    cluster: Arc<crate::cluster::Cluster>,
    repl: TcpListener,
    sync_tx: watch::Sender<u64>,
    defs_tx: watch::Sender<u64>,
    background: Background,
    data_dir: std::path::PathBuf,
}

impl ClusterNode {
    async fn run(self) {
        use crate::cluster::{replication, Role};
        let ClusterNode { shared, cluster, repl, sync_tx, defs_tx, background, data_dir } = self;
        let leads = |r: &Role| matches!(r, Role::Leader { .. });
        let mut role = cluster.subscribe();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let follower = {
            let (cluster, dir, stop) = (cluster.clone(), data_dir.clone(), stop.clone());
            std::thread::Builder::new()
                .name("replica".into())
                .spawn(move || replication::follow(cluster, dir, stop))
                .expect("spawn the replication thread")
        };
        while !leads(&role.borrow_and_update()) {
            if role.changed().await.is_err() {
                return;
            }
        }
        stop.store(true, Ordering::Release);
        let _ = tokio::task::spawn_blocking(move || follower.join()).await;
        info!("leading: opening the data directory");
        let dir = data_dir.clone();
        let opened = tokio::task::spawn_blocking(move || open_broker(&dir)).await;
        let broker = match opened.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot serve as the cluster leader");
                std::process::exit(1);
            }
        };
        let hub = replication::Hub::new(data_dir.clone(), sync_tx, defs_tx, &cluster);
        if let Some(log) = broker.log() {
            let h = hub.clone();
            log.on_file_op(Box::new(move |op| h.file_op(op)));
            let h = hub.clone();
            log.on_sync(Box::new(move |pos| h.synced(pos)));
        }
        let h = hub.clone();
        warren_core::definitions::on_save(Box::new(move |path, bytes| h.saved(path, bytes)));
        let _ = cluster.hub.set(hub.clone());
        let _ = shared.broker.real.set(broker.clone());
        background.start(broker.clone());
        tokio::spawn(replication::serve(repl, hub.clone(), cluster.clone()));
        cluster.set_serving();
        info!("serving as the cluster leader");
        while leads(&role.borrow_and_update()) {
            if role.changed().await.is_err() {
                return;
            }
        }
        hub.fence();
        if cluster.is_leaving() {
            return; // stopping: the shutdown closes the clients
        }
        warn!("not the cluster leader any more: closing clients and restarting as a follower");
        let open: Vec<_> = shared.connections.lock().values().cloned().collect();
        for c in open {
            c.force_close("not the cluster leader any more".into());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !shared.connections.lock().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(log) = broker.log() {
                log.close();
            }
        })
        .await;
        restart_process();
    }
}

/// Replaces this process with a fresh run of the same command line (same
/// pid; every socket and file closes, being close-on-exec).
fn restart_process() -> ! {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("/proc/self/exe").args(std::env::args_os().skip(1)).exec();
    tracing::error!(error = %err, "cannot restart; exiting");
    std::process::exit(1);
}

/// Releases delayed messages when due: one timer for every delayed message
/// of every vhost, asleep until the earliest is due (woken when a message
/// due earlier still is scheduled). While a logged message's content waits
/// for the log to sync, it looks every `SETTLE_POLL` to let go of it.
async fn delay_timer(broker: Arc<Broker>) {
    const SETTLE_POLL: Duration = Duration::from_millis(10);
    let earlier = Arc::new(tokio::sync::Notify::new());
    let wake = earlier.clone();
    // Without the wake-up (already taken in this process), poll instead.
    let woken = warren_core::delayed::on_earlier_due(Box::new(move || wake.notify_one()));
    loop {
        let now = warren_core::now_ms();
        let mut next = None::<u64>;
        let mut settling = false;
        for vhost in broker.vhosts() {
            vhost.release_delayed(now);
            next = next.into_iter().chain(vhost.delayed.next_due()).min();
            settling |= vhost.delayed.has_unsynced();
        }
        let mut wait = next.map(|due| Duration::from_millis(due.saturating_sub(warren_core::now_ms())));
        if settling || !woken {
            wait = Some(wait.map_or(SETTLE_POLL, |w| w.min(SETTLE_POLL)));
        }
        match wait {
            // More due now than one call releases: go on after a yield.
            Some(Duration::ZERO) => tokio::task::yield_now().await,
            Some(wait) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = earlier.notified() => {}
                }
            }
            None => earlier.notified().await,
        }
    }
}

async fn expiry_timer(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for vhost in broker.vhosts() {
            vhost.tick();
        }
    }
}

/// The free-space check behind the disk alarm.
struct DiskWatch {
    /// The data directory: its filesystem is the one measured.
    dir: std::path::PathBuf,
    limit: Arc<AtomicU64>,
}

/// How often the heap is trimmed (`heap::trim`) while the memory alarm
/// holds or queues are spilling (so that the alarm clears within a second
/// of a backlog going away, and read-back bodies do not pile up), and
/// otherwise (memory freed by closed connections goes back too). A trim of
/// a small heap takes well under a millisecond.
const TRIM_TICKS_ALARMED: u32 = 5;
const TRIM_TICKS: u32 = 100;

/// Ticks before each regular trim at which the runtime workers are asked to
/// release their per-thread allocation caches (`heap::release_thread_cache`),
/// so that the trim finds those chunks back in the arenas.
const RELEASE_LEAD_TICKS: u32 = 5;

/// How often free disk space is measured (RabbitMQ: at least every 10 s);
/// a changed limit is measured against at once.
const DISK_CHECK_TICKS: u32 = 20;

/// Resource alarms, as RabbitMQ raises them. The disk alarm holds while the
/// message log fails to write (disk full or an I/O error) or free space on
/// the data directory's filesystem is below the disk free limit; the memory
/// alarm while the broker's RSS is above `memory_limit`. Connections send
/// `connection.blocked` ("low on disk" / "low on memory") and stop reading
/// from publishers meanwhile, then `connection.unblocked` when it clears;
/// consumers go on being served (which is what frees memory).
async fn alarms(
    broker: Arc<Broker>,
    memory_limit: Option<u64>,
    paging_at: Option<u64>,
    disk: DiskWatch,
    alarm: watch::Sender<Option<String>>,
) {
    let log = broker.log().cloned();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0;
    let mut checked_limit = None;
    let mut low_on_disk = false;
    loop {
        tick.tick().await;
        let limit = disk.limit.load(Ordering::Relaxed);
        if ticks % DISK_CHECK_TICKS == 0 || checked_limit != Some(limit) {
            let free = crate::resources::free_disk_bytes(&disk.dir);
            let low = free.is_some_and(|f| f < limit);
            if low != low_on_disk {
                match low {
                    true => warn!(free, limit, "free disk space is below the disk free limit"),
                    false => info!(free, limit, "free disk space is above the disk free limit again"),
                }
            }
            low_on_disk = low;
            checked_limit = Some(limit);
        }
        ticks = ticks.wrapping_add(1);
        let disk = low_on_disk || log.as_ref().is_some_and(|l| l.is_failed());
        // Above the paging threshold, queues spill transient messages.
        let mut rss = crate::resources::rss_bytes();
        let paging = paging_at.zip(rss).is_some_and(|(at, rss)| rss > at);
        let mut memory = memory_limit.zip(rss).is_some_and(|(limit, rss)| rss > limit);
        if ticks % TRIM_TICKS == TRIM_TICKS - RELEASE_LEAD_TICKS {
            // Workers release their caches as they park; a few spawned
            // tasks wake the ones parked now, so that they park again.
            crate::heap::request_release();
            for _ in 0..=tokio::runtime::Handle::current().metrics().num_workers() {
                tokio::spawn(async {});
            }
        }
        if ((memory || paging) && ticks % TRIM_TICKS_ALARMED == 0) || ticks % TRIM_TICKS == 0 {
            // Give the allocator's free pages back to the OS (see
            // `heap`), then measure again: under pressure, bodies read
            // back from spill files and freed leave holes in the heap.
            let t0 = std::time::Instant::now();
            crate::heap::trim();
            let took = t0.elapsed();
            if took > Duration::from_millis(5) {
                tracing::debug!(ms = took.as_millis() as u64, "heap trim was slow");
            }
            rss = crate::resources::rss_bytes();
            memory = memory_limit.zip(rss).is_some_and(|(limit, rss)| rss > limit);
        }
        warren_core::spill::set_pressure(paging_at.zip(rss).is_some_and(|(at, rss)| rss > at));
        let reason = if disk {
            Some("low on disk")
        } else if memory {
            Some("low on memory")
        } else {
            None
        };
        if reason != alarm.borrow().as_deref() {
            match reason {
                Some(r) => warn!(
                    rss = crate::resources::rss_bytes(),
                    limit = memory_limit,
                    "resource alarm ({r}): blocking publishers"
                ),
                None => info!("resource alarm cleared"),
            }
            alarm.send_replace(reason.map(str::to_owned));
        }
    }
}
