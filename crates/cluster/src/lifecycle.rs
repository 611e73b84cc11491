//! A cluster node's lifecycle, from follower to leader and back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};
use warren_core::Broker;
use warren_node::background::Background;
use warren_node::Node;

use crate::{replication, Cluster, Role};

/// A cluster node's life: it follows (replicating the leader's data
/// directory) until it wins an election, then opens that directory and
/// serves as the leader; once it stops leading, it closes its clients (320
/// CONNECTION_FORCED: they reconnect, through a follower, to the new
/// leader) and restarts its process as a follower, which discards whatever
/// the new leader does not have.
pub struct Lifecycle {
    pub node: Arc<Node>,
    pub cluster: Arc<Cluster>,
    /// The replication listener (followers connect to it while this node leads).
    pub repl: TcpListener,
    /// Where the positions confirms may go up to are published.
    pub sync_tx: watch::Sender<u64>,
    /// Where the definitions saves every follower has are published.
    pub defs_tx: watch::Sender<u64>,
    /// What starts the broker's alarms and timers once it is open.
    pub background: Background,
    pub data_dir: std::path::PathBuf,
}

impl Lifecycle {
    pub async fn run(self) {
        let Lifecycle { node: shared, cluster, repl, sync_tx, defs_tx, background, data_dir } = self;
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
        let opened = tokio::task::spawn_blocking(move || Broker::open(&dir)).await;
        let broker = match opened {
            Ok(Ok(b)) => Arc::new(b),
            Ok(Err(e)) => {
                tracing::error!(error = %e, dir = %data_dir.display(), "cannot open the data directory to lead");
                std::process::exit(1);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot open the data directory to lead");
                std::process::exit(1);
            }
        };
        if let Err(e) = warren_node::boot::prepare(&broker, &shared.config) {
            tracing::error!(error = %e, "cannot prepare the broker to lead");
            std::process::exit(1);
        }
        let hub = replication::Hub::new(data_dir.clone(), sync_tx, defs_tx, &cluster);
        if let Some(log) = broker.log() {
            let h = hub.clone();
            log.on_file_op(Box::new(move |op| h.file_op(op)));
            let h = hub.clone();
            log.on_sync(Box::new(move |pos| h.synced(pos)));
        }
        let h = hub.clone();
        broker.hooks.on_save(Box::new(move |path, bytes| h.saved(path, bytes)));
        let _ = cluster.hub.set(hub.clone());
        shared.broker.set(broker.clone());
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
        let open: Vec<_> = shared.registry.connections.lock().values().cloned().collect();
        for c in open {
            c.force_close("not the cluster leader any more".into());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !shared.registry.connections.lock().is_empty() && std::time::Instant::now() < deadline {
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
