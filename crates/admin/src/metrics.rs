//! Prometheus metrics on `--prometheus-listen` (default 127.0.0.1:15692),
//! with rabbitmq_prometheus's metric names, help texts and labels, so the
//! Grafana dashboards made for RabbitMQ ("RabbitMQ-Overview") work:
//!
//! - `/metrics`: node-wide figures, objects aggregated (no per-queue labels),
//! - `/metrics/per-object`: the same plus one series per queue
//!   (`vhost`, `queue`), as RabbitMQ's per-object endpoint,
//! - `/metrics/detailed?family=F&vhost=V`: only the per-queue families asked
//!   for (`queue_coarse_metrics`, `queue_consumer_count`, `queue_metrics`),
//!   of the vhosts asked for (all when none is), named
//!   `rabbitmq_detailed_*`, as rabbitmq_prometheus's detailed endpoint.
//!
//! A scrape reads the broker's own counters (the ones the management API
//! shows) into a fresh registry of the `prometheus` crate and encodes it in
//! the text exposition format 0.0.4. Nothing is counted for the scrape's
//! sake. A scrape walks every queue, so it runs on a blocking thread, not a
//! runtime worker, one at a time (`SCRAPES`), and lists at most
//! `MAX_QUEUE_SERIES` queues (`warren_metrics_queues_omitted` counts the
//! rest; the node-wide figures include them).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use prometheus::core::Collector;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tracing::info;
use warren_core::stats;

use crate::http::{Body, Reply};
use warren_node::Node;

pub async fn listen(shared: Arc<Node>, at: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(at)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {at} (Prometheus): {e}")))?;
    let addr = listener.local_addr()?;
    crate::http::serve(listener, shared, |shared, _peer, req| Box::pin(handle(shared, req)), None);
    info!(%addr, "Prometheus metrics ready on http://{addr}/metrics");
    Ok(addr)
}

/// Most queues one scrape lists with their own series.
const MAX_QUEUE_SERIES: usize = 10_000;

/// Scrapes run one at a time: a second waits for the first.
static SCRAPES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// What a scrape lists.
enum View {
    /// Node-wide figures only.
    Aggregated,
    /// Node-wide figures and one series per queue.
    PerObject,
    /// The per-queue families asked for, of the vhosts asked for.
    Detailed { families: Vec<String>, vhosts: Vec<String> },
}

async fn handle(shared: Arc<Node>, req: Request<Incoming>) -> Reply {
    let view = match req.uri().path() {
        "/metrics" => View::Aggregated,
        "/metrics/per-object" => View::PerObject,
        "/metrics/detailed" => {
            let query = req.uri().query().map(crate::http::parse_query).unwrap_or_default();
            let all = |key: &str| query.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect();
            View::Detailed { families: all("family"), vhosts: all("vhost") }
        }
        _ => return text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    let Ok(_turn) = SCRAPES.acquire().await else { return text(StatusCode::SERVICE_UNAVAILABLE, String::new()) };
    match tokio::task::spawn_blocking(move || scrape(&shared, &view)).await {
        Ok(reply) => reply,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn scrape(shared: &Node, view: &View) -> Reply {
    let registry = Registry::new();
    let collected = match view {
        View::Detailed { families, vhosts } => collect_detailed(shared, &registry, families, vhosts),
        _ => collect(shared, &registry, matches!(view, View::PerObject)),
    };
    if let Err(e) = collected {
        return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
    }
    let mut out = Vec::with_capacity(64 * 1024);
    match TextEncoder::new().encode(&registry.gather(), &mut out) {
        Ok(()) => {
            let mut r = Response::new(Body::Full(Some(Bytes::from(out))));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Body::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    r
}

/// Adds gauges and counters to one registry.
struct Scrape<'a>(&'a Registry);

impl Scrape<'_> {
    fn add(&self, c: impl Collector + 'static) -> prometheus::Result<()> {
        self.0.register(Box::new(c))
    }

    fn gauge(&self, name: &str, help: &str, v: i64) -> prometheus::Result<()> {
        let g = IntGauge::new(name, help)?;
        g.set(v);
        self.add(g)
    }

    fn counter(&self, name: &str, help: &str, v: u64) -> prometheus::Result<()> {
        let c = IntCounter::new(name, help)?;
        c.inc_by(v);
        self.add(c)
    }

    /// A counter with the `protocol="amqp091"` label of the global metrics.
    fn global(&self, name: &str, help: &str, v: u64) -> prometheus::Result<()> {
        let c = IntCounterVec::new(Opts::new(name, help), &["protocol"])?;
        c.with_label_values(&["amqp091"]).inc_by(v);
        self.add(c)
    }

    /// A global counter RabbitMQ also splits by queue type: Warren has one
    /// kind of queue underneath, counted as classic.
    fn global_q(&self, name: &str, help: &str, v: u64) -> prometheus::Result<()> {
        let c = IntCounterVec::new(Opts::new(name, help), &["protocol", "queue_type"])?;
        c.with_label_values(&["amqp091", "rabbit_classic_queue"]).inc_by(v);
        self.add(c)
    }

    fn info(&self, name: &str, help: &str, labels: &[(&str, String)]) -> prometheus::Result<()> {
        let names: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
        let values: Vec<&str> = labels.iter().map(|(_, v)| v.as_str()).collect();
        let g = IntGaugeVec::new(Opts::new(name, help), &names)?;
        g.with_label_values(&values).set(1);
        self.add(g)
    }
}

/// Warren's cluster: this node's role and epoch, the ISR's size, and on
/// the leader each follower's lag (what to alert on when the ISR shrinks).
fn cluster_metrics(s: &Scrape, cluster: &dyn warren_node::cluster::ClusterView) -> prometheus::Result<()> {
    let status = cluster.status();
    s.gauge(
        "warren_cluster_leader",
        "1 while this node is the cluster's leader and serves",
        (status.role == "leader" && cluster.is_serving()) as i64,
    )?;
    s.gauge(
        "warren_cluster_epoch",
        "The cluster's leader epoch as this node sees it",
        status.epoch.unwrap_or(0) as i64,
    )?;
    let isr = status.isr.len();
    s.gauge(
        "warren_cluster_isr_members",
        "Members of the in-sync replica set (as this node last read it)",
        isr as i64,
    )?;
    if let Some(followers) = &status.followers {
        let lag = IntGaugeVec::new(
            Opts::new("warren_cluster_follower_lag_bytes", "How far each connected follower is behind (leader only)"),
            &["follower"],
        )?;
        let in_sync = IntGaugeVec::new(
            Opts::new(
                "warren_cluster_follower_in_sync",
                "1 while the follower is in the in-sync replica set (leader only)",
            ),
            &["follower"],
        )?;
        for f in followers {
            lag.with_label_values(&[f.name.as_str()]).set(f.lag_bytes as i64);
            in_sync.with_label_values(&[f.name.as_str()]).set(f.in_sync as i64);
        }
        s.add(lag)?;
        s.add(in_sync)?;
    }
    Ok(())
}

/// The node's identity and build, in every view.
fn identity(s: &Scrape) -> prometheus::Result<()> {
    let node = crate::views::node_name();
    s.info(
        "rabbitmq_identity_info",
        "RabbitMQ node & cluster identity info",
        &[
            ("rabbitmq_node", node.clone()),
            ("rabbitmq_cluster", node.clone()),
            ("rabbitmq_cluster_permanent_id", format!("warren-cluster-id-{node}")),
        ],
    )?;
    s.info(
        "rabbitmq_build_info",
        "RabbitMQ & Erlang/OTP version info",
        &[
            ("rabbitmq_version", "3.10.8".into()),
            ("prometheus_plugin_version", "3.10.8".into()),
            ("prometheus_client_version", "warren".into()),
            ("erlang_version", "none".into()),
            ("warren_version", env!("CARGO_PKG_VERSION").into()),
        ],
    )
}

/// The queues a scrape lists with their own series: at most
/// `MAX_QUEUE_SERIES` of those `wanted` (by vhost), and how many more there were.
struct Listed {
    left: usize,
    omitted: u64,
}

impl Listed {
    fn new() -> Listed {
        Listed { left: MAX_QUEUE_SERIES, omitted: 0 }
    }

    /// Whether the next queue gets series of its own.
    fn take(&mut self) -> bool {
        match self.left {
            0 => {
                self.omitted += 1;
                false
            }
            _ => {
                self.left -= 1;
                true
            }
        }
    }

    fn report(&self, s: &Scrape) -> prometheus::Result<()> {
        s.gauge(
            "warren_metrics_queues_omitted",
            "Queues left out of this scrape's per-queue series (at most 10000 are listed)",
            self.omitted as i64,
        )
    }
}

/// The per-queue gauges both per-queue views have, named `{prefix}queue_*`.
struct QueueGauges {
    ready: IntGaugeVec,
    unacked: IntGaugeVec,
    messages: IntGaugeVec,
    consumers: IntGaugeVec,
    ready_bytes: IntGaugeVec,
}

impl QueueGauges {
    fn new(prefix: &str) -> prometheus::Result<QueueGauges> {
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(format!("{prefix}queue_{name}"), help), &["vhost", "queue"])
        };
        Ok(QueueGauges {
            ready: gauge("messages_ready", "Messages ready to be delivered to consumers")?,
            unacked: gauge("messages_unacked", "Messages delivered to consumers but not yet acknowledged")?,
            messages: gauge("messages", "Sum of ready and unacknowledged messages - total queue depth")?,
            consumers: gauge("consumers", "Consumers on a queue")?,
            ready_bytes: gauge("messages_ready_bytes", "Size in bytes of ready messages")?,
        })
    }

    fn set(&self, labels: &[&str; 2], st: &warren_core::queue::QueueStatus) {
        self.ready.with_label_values(labels).set(st.ready as i64);
        self.unacked.with_label_values(labels).set(st.unacked as i64);
        self.messages.with_label_values(labels).set((st.ready + st.unacked) as i64);
        self.consumers.with_label_values(labels).set(st.consumers as i64);
        self.ready_bytes.with_label_values(labels).set(st.ready_bytes as i64);
    }
}

/// `/metrics/detailed`: the families asked for, per queue.
fn collect_detailed(
    shared: &Node,
    registry: &Registry,
    families: &[String],
    vhosts: &[String],
) -> prometheus::Result<()> {
    let s = Scrape(registry);
    identity(&s)?;
    let wants = |f: &str| families.iter().any(|x| x == f);
    let (coarse, consumers, detail) =
        (wants("queue_coarse_metrics"), wants("queue_consumer_count"), wants("queue_metrics"));
    if !(coarse || consumers || detail) {
        return Ok(());
    }
    let q = QueueGauges::new("rabbitmq_detailed_")?;
    let per_queue = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["vhost", "queue"]);
    let q_ram = per_queue("rabbitmq_detailed_queue_messages_ready_ram", "Ready messages stored in memory")?;
    let q_paged = per_queue("rabbitmq_detailed_queue_messages_paged_out", "Messages paged out to disk")?;
    let mut listed = Listed::new();
    for v in shared.broker.vhosts() {
        if !vhosts.is_empty() && !vhosts.iter().any(|x| *x == v.name) {
            continue;
        }
        for queue in v.queues() {
            if !listed.take() {
                continue;
            }
            let st = queue.status();
            let l = [v.name.as_str(), queue.name.as_str()];
            q.set(&l, &st);
            q_ram.with_label_values(&l).set(st.ready_in_memory as i64);
            q_paged.with_label_values(&l).set(st.ready.saturating_sub(st.ready_in_memory) as i64);
        }
    }
    if coarse {
        s.add(q.ready)?;
        s.add(q.unacked)?;
        s.add(q.messages)?;
    }
    if consumers || detail {
        s.add(q.consumers)?;
    }
    if detail {
        s.add(q.ready_bytes)?;
        s.add(q_ram)?;
        s.add(q_paged)?;
    }
    listed.report(&s)
}

fn collect(shared: &Node, registry: &Registry, per_object: bool) -> prometheus::Result<()> {
    let s = Scrape(registry);
    identity(&s)?;

    if let Some(cluster) = &shared.cluster {
        cluster_metrics(&s, &**cluster)?;
    }

    // Connections and channels.
    let conns: Vec<_> = shared.registry.connections.lock().values().cloned().collect();
    let mut channel_totals = [0u64; stats::N];
    let (mut channels, mut unacked, mut channel_consumers, mut publishers) = (0i64, 0u64, 0i64, 0i64);
    let mut received_confirm = shared.registry.totals.received_confirm.load(Ordering::Relaxed);
    for c in &conns {
        let list = c.channel_list.lock();
        channels += list.len() as i64;
        for ch in list.iter() {
            let counts = ch.stats.snapshot();
            publishers += (counts[stats::PUBLISH] > 0) as i64;
            stats::add(&mut channel_totals, &counts);
            unacked += ch.unacked.load(Ordering::Relaxed);
            received_confirm += ch.received_confirm.load(Ordering::Relaxed);
            channel_consumers += ch.consumers.load(Ordering::Relaxed) as i64;
        }
    }
    s.gauge("rabbitmq_connections", "Connections currently open", conns.len() as i64)?;
    s.gauge("rabbitmq_channels", "Channels currently open", channels)?;
    let t = &shared.registry.totals;
    for (name, help, n) in [
        ("rabbitmq_connections_opened_total", "Total number of connections opened", &t.connections_opened),
        (
            "rabbitmq_connections_closed_total",
            "Total number of connections closed or terminated",
            &t.connections_closed,
        ),
        ("rabbitmq_channels_opened_total", "Total number of channels opened", &t.channels_opened),
        ("rabbitmq_channels_closed_total", "Total number of channels closed", &t.channels_closed),
    ] {
        s.counter(name, help, n.load(Ordering::Relaxed))?;
    }
    s.gauge("rabbitmq_channel_consumers", "Consumers on a channel", channel_consumers)?;
    s.gauge("rabbitmq_channel_messages_unacked", "Delivered but not yet acknowledged messages", unacked as i64)?;
    let recv: u64 = conns.iter().map(|c| c.recv_oct.load(Ordering::Relaxed)).sum();
    let sent: u64 = conns.iter().map(|c| c.send_oct.load(Ordering::Relaxed)).sum();
    s.counter("rabbitmq_connection_incoming_bytes_total", "Total number of bytes received on a connection", recv)?;
    s.counter("rabbitmq_connection_outgoing_bytes_total", "Total number of bytes sent on a connection", sent)?;
    let ch = &channel_totals;
    s.counter(
        "rabbitmq_channel_messages_published_total",
        "Total number of messages published into an exchange on a channel",
        ch[stats::PUBLISH],
    )?;
    s.counter(
        "rabbitmq_channel_messages_confirmed_total",
        "Total number of messages published into an exchange and confirmed on the channel",
        ch[stats::CONFIRM],
    )?;
    s.counter(
        "rabbitmq_channel_messages_delivered_ack_total",
        "Total number of messages delivered to consumers in manual acknowledgement mode",
        ch[stats::DELIVER],
    )?;
    s.counter(
        "rabbitmq_channel_messages_delivered_total",
        "Total number of messages delivered to consumers in automatic acknowledgement mode",
        ch[stats::DELIVER_NO_ACK],
    )?;
    s.counter(
        "rabbitmq_channel_messages_acked_total",
        "Total number of messages acknowledged by consumers",
        ch[stats::ACK],
    )?;
    s.counter(
        "rabbitmq_channel_messages_redelivered_total",
        "Total number of messages redelivered to consumers",
        ch[stats::REDELIVER],
    )?;
    s.counter(
        "rabbitmq_channel_get_ack_total",
        "Total number of messages fetched with basic.get in manual acknowledgement mode",
        ch[stats::GET],
    )?;
    s.counter(
        "rabbitmq_channel_get_total",
        "Total number of messages fetched with basic.get in automatic acknowledgement mode",
        ch[stats::GET_NO_ACK],
    )?;
    s.counter(
        "rabbitmq_channel_get_empty_total",
        "Total number of times basic.get operations fetched no message",
        ch[stats::GET_EMPTY],
    )?;
    s.counter(
        "rabbitmq_channel_messages_unroutable_dropped_total",
        "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
        ch[stats::DROP_UNROUTABLE],
    )?;
    s.counter(
        "rabbitmq_channel_messages_unroutable_returned_total",
        "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
        ch[stats::RETURN_UNROUTABLE],
    )?;

    // Queues.
    let mut global = [0u64; stats::N];
    let (mut queues, mut ready, mut unacked_q, mut ready_bytes, mut consumers, mut published) =
        (0i64, 0u64, 0u64, 0u64, 0i64, 0u64);
    let q = QueueGauges::new("rabbitmq_")?;
    let q_published = IntCounterVec::new(
        Opts::new("rabbitmq_queue_messages_published_total", "Total number of messages published to queues"),
        &["vhost", "queue"],
    )?;
    let mut listed = Listed::new();
    for v in shared.broker.vhosts() {
        stats::add(&mut global, &v.retired.snapshot());
        for queue in v.queues() {
            let st = queue.status();
            queues += 1;
            ready += st.ready;
            unacked_q += st.unacked;
            ready_bytes += st.ready_bytes;
            consumers += st.consumers as i64;
            published += st.counts[stats::PUBLISH];
            if per_object && listed.take() {
                let l = [v.name.as_str(), queue.name.as_str()];
                q.set(&l, &st);
                q_published.with_label_values(&l).inc_by(st.counts[stats::PUBLISH]);
            }
        }
    }
    stats::add(&mut global, &channel_totals);
    s.gauge("rabbitmq_queues", "Queues available", queues)?;
    s.gauge("rabbitmq_consumers", "Consumers currently connected", consumers)?;
    let totals = shared.broker.hooks.queue_totals();
    s.counter("rabbitmq_queues_declared_total", "Total number of queues declared", totals.0)?;
    s.counter("rabbitmq_queues_created_total", "Total number of queues created", totals.1)?;
    s.counter("rabbitmq_queues_deleted_total", "Total number of queues deleted", totals.2)?;
    if per_object {
        s.add(q.ready)?;
        s.add(q.unacked)?;
        s.add(q.messages)?;
        s.add(q.ready_bytes)?;
        s.add(q.consumers)?;
        s.add(q_published)?;
        listed.report(&s)?;
    } else {
        s.gauge("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers", ready as i64)?;
        s.gauge(
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            unacked_q as i64,
        )?;
        s.gauge(
            "rabbitmq_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            (ready + unacked_q) as i64,
        )?;
        s.gauge("rabbitmq_queue_messages_ready_bytes", "Size in bytes of ready messages", ready_bytes as i64)?;
        s.gauge("rabbitmq_queue_consumers", "Consumers on a queue", consumers)?;
        s.counter(
            "rabbitmq_queue_messages_published_total",
            "Total number of messages published to queues",
            published,
        )?;
    }

    // Global counters (every channel, open or closed, of every vhost).
    let g = &global;
    let routed = g[stats::PUBLISH].saturating_sub(g[stats::DROP_UNROUTABLE] + g[stats::RETURN_UNROUTABLE]);
    s.global(
        "rabbitmq_global_messages_received_total",
        "Total number of messages received from publishers",
        g[stats::PUBLISH],
    )?;
    s.global("rabbitmq_global_messages_routed_total", "Total number of messages routed to queues or streams", routed)?;
    s.global(
        "rabbitmq_global_messages_unroutable_dropped_total",
        "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
        g[stats::DROP_UNROUTABLE],
    )?;
    s.global(
        "rabbitmq_global_messages_unroutable_returned_total",
        "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
        g[stats::RETURN_UNROUTABLE],
    )?;
    s.global(
        "rabbitmq_global_messages_confirmed_total",
        "Total number of messages confirmed to publishers",
        g[stats::CONFIRM],
    )?;
    s.global(
        "rabbitmq_global_messages_received_confirm_total",
        "Total number of messages received from publishers expecting confirmations",
        received_confirm,
    )?;
    s.global_q(
        "rabbitmq_global_messages_delivered_total",
        "Total number of messages delivered to consumers",
        stats::deliver_get(g),
    )?;
    s.global_q(
        "rabbitmq_global_messages_delivered_consume_manual_ack_total",
        "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
        g[stats::DELIVER],
    )?;
    s.global_q(
        "rabbitmq_global_messages_delivered_consume_auto_ack_total",
        "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
        g[stats::DELIVER_NO_ACK],
    )?;
    s.global_q(
        "rabbitmq_global_messages_delivered_get_manual_ack_total",
        "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
        g[stats::GET],
    )?;
    s.global_q(
        "rabbitmq_global_messages_delivered_get_auto_ack_total",
        "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
        g[stats::GET_NO_ACK],
    )?;
    s.global_q(
        "rabbitmq_global_messages_get_empty_total",
        "Total number of times basic.get operations fetched no message",
        g[stats::GET_EMPTY],
    )?;
    s.global_q(
        "rabbitmq_global_messages_redelivered_total",
        "Total number of messages redelivered to consumers",
        g[stats::REDELIVER],
    )?;
    s.global_q(
        "rabbitmq_global_messages_acknowledged_total",
        "Total number of messages acknowledged by consumers",
        g[stats::ACK],
    )?;
    dead_lettered(&s, &shared.broker.hooks)?;
    let gauge_amqp = |name: &str, help: &str, v: i64| -> prometheus::Result<()> {
        let g = IntGaugeVec::new(Opts::new(name, help), &["protocol"])?;
        g.with_label_values(&["amqp091"]).set(v);
        s.add(g)
    };
    gauge_amqp("rabbitmq_global_consumers", "Current number of consumers", consumers)?;
    gauge_amqp("rabbitmq_global_publishers", "Current number of publishers", publishers)?;

    // The process and its alarms.
    let rss = warren_node::resources::rss_bytes().unwrap_or(0);
    let (fds, max_fds) = warren_node::resources::file_descriptors();
    let alarm = shared.alarms.current.borrow().clone();
    s.gauge("rabbitmq_process_resident_memory_bytes", "Memory used in bytes", rss as i64)?;
    s.gauge(
        "rabbitmq_resident_memory_limit_bytes",
        "Memory high watermark in bytes",
        shared.config.memory_limit().unwrap_or(0) as i64,
    )?;
    s.gauge("rabbitmq_process_open_fds", "Open file descriptors", fds as i64)?;
    s.gauge("rabbitmq_process_max_fds", "Open file descriptors limit", max_fds as i64)?;
    s.gauge("rabbitmq_process_open_tcp_sockets", "Open TCP sockets", conns.len() as i64)?;
    s.gauge("rabbitmq_process_max_tcp_sockets", "Open TCP sockets limit", max_fds as i64)?;
    let disk = warren_node::resources::free_disk_bytes(&shared.config.data_dir()).unwrap_or(0);
    s.gauge("rabbitmq_disk_space_available_bytes", "Disk space available in bytes", disk as i64)?;
    s.gauge(
        "rabbitmq_disk_space_available_limit_bytes",
        "Free disk space low watermark in bytes",
        shared.alarms.disk_free_limit.load(Ordering::Relaxed) as i64,
    )?;
    let on = |what: &str| alarm.as_deref().is_some_and(|a| a.contains(what)) as i64;
    s.gauge("rabbitmq_alarms_memory_used_watermark", "is 1 if VM memory watermark alarm is in effect", on("memory"))?;
    s.gauge(
        "rabbitmq_alarms_free_disk_space_watermark",
        "is 1 if free disk space watermark alarm is in effect",
        on("disk"),
    )?;
    s.gauge("rabbitmq_alarms_file_descriptor_limit", "is 1 if file descriptor limit alarm is in effect", 0)?;
    s.gauge("rabbitmq_erlang_uptime_seconds", "Node uptime", shared.started.elapsed().as_secs() as i64)?;
    Ok(())
}

/// `rabbitmq_global_messages_dead_lettered_*_total`, with the rows
/// RabbitMQ 3.10 exports (zeros too) by queue type and dead-letter
/// strategy: `at_most_once` for a queue with a dead-letter exchange,
/// `disabled` for one without (the message was dropped). Warren has no
/// `at_least_once` strategy: those rows stay 0. Its classic queues take
/// `x-delivery-limit` too; that row is shown once it counts.
fn dead_lettered(s: &Scrape, hooks: &warren_core::hooks::Hooks) -> prometheus::Result<()> {
    use warren_core::dead_letter::Reason;
    const CLASSIC: &str = "rabbit_classic_queue";
    const QUORUM: &str = "rabbit_quorum_queue";
    /// (queue type, dead-letter strategy) rows.
    type Rows = &'static [(&'static str, &'static str)];
    let series: [(&str, &str, Option<Reason>, Rows); 5] = [
        (
            "confirmed",
            "Total number of messages dead-lettered and confirmed by target queues",
            None,
            &[(QUORUM, "at_least_once")],
        ),
        (
            "delivery_limit",
            "Total number of messages dead-lettered due to delivery-limit exceeded",
            Some(Reason::DeliveryLimit),
            &[(QUORUM, "at_least_once"), (QUORUM, "at_most_once"), (QUORUM, "disabled")],
        ),
        (
            "expired",
            "Total number of messages dead-lettered due to message TTL exceeded",
            Some(Reason::Expired),
            &[
                (CLASSIC, "at_most_once"),
                (CLASSIC, "disabled"),
                (QUORUM, "at_least_once"),
                (QUORUM, "at_most_once"),
                (QUORUM, "disabled"),
            ],
        ),
        (
            "maxlen",
            "Total number of messages dead-lettered due to overflow drop-head or reject-publish-dlx",
            Some(Reason::MaxLen),
            &[(CLASSIC, "at_most_once"), (CLASSIC, "disabled"), (QUORUM, "at_most_once"), (QUORUM, "disabled")],
        ),
        (
            "rejected",
            "Total number of messages dead-lettered due to basic.reject or basic.nack",
            Some(Reason::Rejected),
            &[
                (CLASSIC, "at_most_once"),
                (CLASSIC, "disabled"),
                (QUORUM, "at_least_once"),
                (QUORUM, "at_most_once"),
                (QUORUM, "disabled"),
            ],
        ),
    ];
    for (what, help, reason, rows) in series {
        let name = format!("rabbitmq_global_messages_dead_lettered_{what}_total");
        let c = IntCounterVec::new(Opts::new(name, help), &["queue_type", "dead_letter_strategy"])?;
        let count = |queue_type: &str, strategy: &str| match (reason, strategy) {
            (Some(r), "at_most_once" | "disabled") => {
                hooks.dead_lettered(r, queue_type == QUORUM, strategy != "disabled")
            }
            _ => 0,
        };
        for (queue_type, strategy) in rows {
            c.with_label_values(&[queue_type, strategy]).inc_by(count(queue_type, strategy));
        }
        if reason == Some(Reason::DeliveryLimit) {
            for strategy in ["at_most_once", "disabled"] {
                let n = count(CLASSIC, strategy);
                if n > 0 {
                    c.with_label_values(&[CLASSIC, strategy]).inc_by(n);
                }
            }
        }
        s.add(c)?;
    }
    Ok(())
}
