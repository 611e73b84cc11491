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

use warren_amqp::connection;
use warren_node::background::Background;
use warren_node::{Alarms, BrokerCell, Config, Confirms, Listeners, Node};

fn open_broker(data_dir: &std::path::Path) -> anyhow::Result<Broker> {
    Broker::open(data_dir).map_err(|e| anyhow::anyhow!("cannot open data dir {}: {e}", data_dir.display()))
}

pub async fn run(config: Config, log_file: Option<crate::logging::LogFile>) -> anyhow::Result<()> {
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", data_dir.display()))?;
    // Private even if it existed before (the umask covers what we create).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow::anyhow!("cannot make data dir {} private: {e}", data_dir.display()))?;
    }
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
        warren_node::boot::prepare(&broker, &config).map_err(|e| anyhow::anyhow!(e))?;
        if let Some(log) = broker.log() {
            log.on_sync(Box::new(move |pos| {
                sync_tx.send_replace(pos);
            }));
        }
        (BrokerCell::ready(broker), None)
    };
    let listener = match config.amqp_listen.0 {
        Some(at) => Some(TcpListener::bind(at).await.map_err(|e| anyhow::anyhow!("cannot listen on {at}: {e}"))?),
        None if config.amqps_listen.is_none() => {
            anyhow::bail!("--amqp-listen none turns off the only AMQP listener: give --amqps-listen")
        }
        None => None,
    };
    let tls = match config.amqps_listen {
        Some(at) => {
            let acceptor = warren_amqp::tls::acceptor(&config)?;
            let l = TcpListener::bind(at).await.map_err(|e| anyhow::anyhow!("cannot listen on {at}: {e}"))?;
            Some((l, acceptor))
        }
        None => None,
    };
    // Where clients reach the AMQP server: the plain listener, else TLS.
    let addr = match (&listener, &tls) {
        (Some(l), _) | (None, Some((l, _))) => l.local_addr()?,
        (None, None) => unreachable!("checked above"),
    };
    let (alarm_tx, alarm) = watch::channel(None);
    let disk_free_limit = Arc::new(AtomicU64::new(config.disk_free_limit.bytes()));
    info!(bytes = disk_free_limit.load(Ordering::Relaxed), "disk free limit set");
    let background = Background::new(&config, data_dir.clone(), disk_free_limit.clone(), alarm_tx);
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
            let node_tls = warren_cluster::tls::NodeTls::load(
                config.cluster_tls_cert.as_ref(),
                config.cluster_tls_key.as_ref(),
                config.cluster_tls_ca.as_ref(),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let repl = TcpListener::bind(&at).await.map_err(|e| anyhow::anyhow!("cannot listen on {at}: {e}"))?;
            let bound = repl.local_addr()?;
            // Secure by default: without TLS, whoever reaches the cluster
            // listener could pose as a member and be sent every message.
            if node_tls.is_none() && !bound.ip().is_loopback() {
                if !config.cluster_insecure {
                    anyhow::bail!(
                        "the cluster listener would bind {bound}, which other machines can reach, without TLS: \
                         anyone reaching it could read every message. Give --cluster-tls-cert, --cluster-tls-key and \
                         --cluster-tls-ca (docs/cluster.md, \"Security\"), bind --cluster-listen to a loopback \
                         address, or accept the risk with --cluster-insecure"
                    );
                }
                warn!(
                    addr = %bound,
                    "--cluster-insecure: the cluster listener has no TLS; anyone who reaches it can read every message"
                );
            }
            let listen = warren_cluster::reachable(bound, &advertise);
            info!(addr = %bound, "cluster replication listening");
            let settings = warren_cluster::Settings {
                etcd: endpoints.split(',').map(str::to_owned).collect(),
                name: config.cluster_name.clone(),
                node: config.node_name.clone(),
                advertise,
                listen,
                etcd_access: warren_cluster::etcd::Access {
                    ca: config.cluster_etcd_ca.clone(),
                    cert: config.cluster_etcd_cert.clone(),
                    key: config.cluster_etcd_key.clone(),
                    user: config.cluster_etcd_user.clone(),
                    password_file: config.cluster_etcd_password_file.clone(),
                },
            };
            (Some(warren_cluster::Cluster::new(settings, node_tls).map_err(|e| anyhow::anyhow!(e))?), Some(repl))
        }
    };
    let http_at = config.http_listen().map_err(|e| anyhow::anyhow!(e))?;
    let prometheus_at = config.prometheus_listen().map_err(|e| anyhow::anyhow!(e))?;
    let shared = Arc::new(Node {
        broker,
        config,
        confirms: Confirms { synced, defs_replicated },
        alarms: Alarms { current: alarm, disk_free_limit },
        registry: Default::default(),
        listeners: Listeners::default(),
        started: std::time::Instant::now(),
        cluster: cluster.clone().map(|c| c as Arc<dyn warren_node::cluster::ClusterView>),
        links: Default::default(),
    });
    if let Some(at) = http_at {
        let bound = warren_admin::http::listen(shared.clone(), at).await?;
        let _ = shared.listeners.http.set(bound);
        if let Some(c) = &cluster {
            c.set_http(warren_cluster::reachable(bound, &c.settings.advertise));
        }
    }
    if let Some(at) = shared.config.https_listen {
        warren_admin::http::listen_tls(shared.clone(), at).await?;
    }
    match (cluster.clone(), repl_listener, sync_tx) {
        (Some(cluster), Some(repl), Some(sync_tx)) => {
            tokio::spawn(cluster.clone().run());
            let node = warren_cluster::lifecycle::Lifecycle {
                node: shared.clone(),
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
        let bound = warren_admin::metrics::listen(shared.clone(), at).await?;
        let _ = shared.listeners.prometheus.set(bound);
    }
    if let Some(l) = &listener {
        let _ = shared.listeners.amqp.set(l.local_addr()?);
    }
    if let Some((l, _)) = &tls {
        let _ = shared.listeners.amqps.set(l.local_addr()?);
    }
    warren_admin::ctl::listen(shared.clone(), &data_dir)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the ctl socket in {}: {e}", data_dir.display()))?;
    if let Some((l, _)) = &tls {
        info!(addr = %l.local_addr()?, "AMQP over TLS listening");
    }
    match &listener {
        Some(_) => info!(%addr, data_dir = %data_dir.display(), "AMQP listening on {addr}"),
        None => info!(%addr, data_dir = %data_dir.display(), "AMQP listening on {addr} (TLS only)"),
    }
    notify_systemd("READY=1");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Each connection task holds a sender; when all are dropped, they are done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);

    // While leading: the clients followers pass on are served here as if
    // they had connected to this node's listeners from their own address.
    if let Some(cluster) = &cluster {
        let (shared, shutdown, done) = (shared.clone(), shutdown_rx.clone(), done_tx.downgrade());
        let handler: warren_node::cluster::TunnelHandler = Arc::new(move |protocol, stream, peer| match protocol {
            warren_node::cluster::Protocol::Amqp => {
                let (shared, shutdown, done) = (shared.clone(), shutdown.clone(), done.upgrade());
                tokio::spawn(async move {
                    connection::serve(connection::Stream::PassedOn(stream), peer, shared, shutdown).await;
                    drop(done);
                });
            }
            warren_node::cluster::Protocol::Http => warren_admin::http::serve_passed_on(shared.clone(), stream, peer),
        });
        let _ = cluster.tunnels.set(handler);
    }
    // The internal listener: the broker's own links (shovels, federation)
    // reach its broker here, with a secret only they know.
    {
        let internal = TcpListener::bind("127.0.0.1:0").await?;
        let _ = shared.links.internal.set(internal.local_addr()?);
        tokio::spawn(warren_links::run(shared.clone(), shutdown_rx.clone()));
        let (shared, shutdown, done) = (shared.clone(), shutdown_rx.clone(), done_tx.downgrade());
        tokio::spawn(async move {
            loop {
                let Ok((socket, peer)) = internal.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let (shared, shutdown, done) = (shared.clone(), shutdown.clone(), done.upgrade());
                tokio::spawn(async move {
                    connection::serve_internal(socket, peer, shared, shutdown).await;
                    drop(done);
                });
            }
        });
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            accepted = accept_plain(&listener) => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let shared = shared.clone();
                    let shutdown = shutdown_rx.clone();
                    let done = done_tx.clone();
                    // In a cluster, a follower hands the connection to the
                    // leader (waiting out an election); with no leader it is
                    // closed.
                    if let Some(cluster) = cluster.clone() {
                        tokio::spawn(async move {
                            match cluster.route(peer).await {
                                Some(warren_cluster::Route::Local) => {
                                    connection::serve(connection::Stream::Tcp(socket), peer, shared, shutdown).await;
                                }
                                Some(warren_cluster::Route::Proxied(up)) => warren_cluster::proxy(socket, up).await,
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
                    let cluster = cluster.clone();
                    tokio::spawn(async move {
                        // The TLS handshake counts against the AMQP handshake timeout.
                        match tokio::time::timeout(connection::HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                            // A follower passes the client on, decrypted
                            // here, as it does a plain one.
                            Ok(Ok(stream)) if cluster.is_some() => {
                                match cluster.as_ref().expect("checked").route(peer).await {
                                    Some(warren_cluster::Route::Local) => {
                                        let stream = connection::Stream::Tls(Box::new(stream));
                                        connection::serve(stream, peer, shared, shutdown).await;
                                    }
                                    Some(warren_cluster::Route::Proxied(up)) => warren_cluster::proxy(stream, up).await,
                                    None => warn!(%peer, "no cluster leader: connection closed"),
                                }
                            }
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
            _ = sighup.recv() => {
                // logrotate moved the log file away: write to a new one.
                if let Some(f) = &log_file {
                    f.reopen();
                    info!("log file reopened");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    // No new connections; what was published before the signal is
    // confirmed (fsync'd, and in a cluster replicated) if that happens
    // within --shutdown-timeout; then every client gets 320.
    notify_systemd("STOPPING=1");
    drop(listener);
    drop(tls);
    if let Some(log) = shared.broker.log() {
        let target = log.appended();
        let limit = Duration::from_secs(shared.config.shutdown_timeout);
        info!(timeout_s = limit.as_secs(), "shutting down: waiting for in-flight confirms");
        let mut synced = shared.confirms.synced.clone();
        let caught_up = tokio::time::timeout(limit, synced.wait_for(|p| *p >= target)).await;
        if !matches!(caught_up, Ok(Ok(_))) {
            warn!("shutting down: in-flight confirms did not finish within --shutdown-timeout");
        }
    }
    info!("shutting down: closing client connections");
    let _ = shutdown_tx.send(true);
    drop(done_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await;
    if let Some(log) = shared.broker.log() {
        log.close();
    }
    if let Some(cluster) = &cluster {
        if let Some(hub) = cluster.hub.get() {
            hub.fence();
        }
        cluster.leave().await;
    }
    info!("stopped");
    drop(lock);
    Ok(())
}

/// Accepts on the plain listener, or never when it is off.
async fn accept_plain(
    listener: &Option<TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Accepts on the TLS listener, or never when there is none.
async fn accept_tls(
    tls: &Option<(TcpListener, warren_amqp::TlsAcceptor)>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match tls {
        Some((l, _)) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Tells systemd (`Type=notify`) how the service stands, when it runs us.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return warn!(error = %e, "cannot notify systemd"),
    };
    let sent = match path.as_encoded_bytes().strip_prefix(b"@") {
        // An abstract socket name.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| socket.send_to_addr(state.as_bytes(), &a))
        }
        None => socket.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        warn!(error = %e, "cannot notify systemd");
    }
}
