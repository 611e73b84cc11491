//! The broker's objects as the management API shows them, with RabbitMQ's
//! field names, and the timer that samples their counters into rates.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use warren_core::arguments::table_to_json;
use warren_core::queue::{RATE_MESSAGES, RATE_READY, RATE_UNACKED};
use warren_core::stats::{self, Counts, History};
use warren_core::{Exchange, Queue, VHost};

use warren_node::ChannelInfo;
use warren_node::ConnInfo;
use warren_node::Node;

use crate::views::{node_name, properties_key, BindingRow};

/// `msg_rates_age` / `msg_rates_incr` and `lengths_age` / `lengths_incr`
/// (seconds), as RabbitMQ takes them: with them, `*_details` carry samples.
#[derive(Clone, Copy, Default)]
pub struct Ages {
    pub msg: Option<(u64, u64)>,
    pub lengths: Option<(u64, u64)>,
}

impl Ages {
    pub fn from_call(call: &super::Call) -> Ages {
        let pair = |age: &str, incr: &str| {
            let a = call.param(age)?.parse::<u64>().ok()?;
            let i = call.param(incr).and_then(|v| v.parse::<u64>().ok()).unwrap_or(5);
            Some((a.min(600) * 1000, i.max(1) * 1000))
        };
        Ages { msg: pair("msg_rates_age", "msg_rates_incr"), lengths: pair("lengths_age", "lengths_incr") }
    }
}

/// Adds `samples`, `avg` and `avg_rate` to `obj[key_details]` from the sum
/// of values `idx` of `hist`.
fn add_samples(obj: &mut Value, key: &str, hist: &History, idx: &[usize], age: Option<(u64, u64)>) {
    let Some((age, incr)) = age else { return };
    let now = warren_core::now_ms();
    let mut samples = hist.samples(idx[0], now, age, incr);
    for &i in &idx[1..] {
        for (s, (_, v)) in samples.iter_mut().zip(hist.samples(i, now, age, incr)) {
            s.1 += v;
        }
    }
    let Some(d) = obj.get_mut(format!("{key}_details")).and_then(Value::as_object_mut) else { return };
    let avg =
        if samples.is_empty() { 0.0 } else { samples.iter().map(|s| s.1 as f64).sum::<f64>() / samples.len() as f64 };
    let avg_rate = match (samples.first(), samples.last()) {
        (Some(new), Some(old)) if new.0 > old.0 => (new.1 as f64 - old.1 as f64) * 1000.0 / (new.0 - old.0) as f64,
        _ => 0.0,
    };
    d.insert("avg".into(), avg.into());
    d.insert("avg_rate".into(), avg_rate.into());
    d.insert(
        "samples".into(),
        Value::Array(samples.iter().map(|(t, v)| json!({"sample": v, "timestamp": t})).collect()),
    );
}

/// Samples of `message_stats` and of the three lengths into a JSON object
/// holding `message_stats` and the lengths under `lengths_at` (None: the
/// object itself).
fn add_history(obj: &mut Value, lengths_at: Option<&str>, hist: &History, ages: Ages) {
    if let Some(ms) = obj.get_mut("message_stats") {
        for i in 0..stats::N {
            add_samples(ms, stats::NAMES[i], hist, &[i], ages.msg);
        }
        let parts = [stats::DELIVER, stats::DELIVER_NO_ACK, stats::GET, stats::GET_NO_ACK];
        add_samples(ms, "deliver_get", hist, &parts, ages.msg);
    }
    let target = match lengths_at {
        Some(k) => obj.get_mut(k),
        None => Some(obj),
    };
    if let Some(t) = target {
        for (j, k) in ["messages", "messages_ready", "messages_unacknowledged"].iter().enumerate() {
            add_samples(t, k, hist, &[stats::N + j], ages.lengths);
        }
    }
}

/// The `message_stats` of each kind of object, as RabbitMQ lists them.
const CHANNEL_STATS: &[usize] = &[
    stats::PUBLISH,
    stats::CONFIRM,
    stats::RETURN_UNROUTABLE,
    stats::DROP_UNROUTABLE,
    stats::DELIVER,
    stats::DELIVER_NO_ACK,
    stats::GET,
    stats::GET_NO_ACK,
    stats::GET_EMPTY,
    stats::ACK,
    stats::REDELIVER,
];
const QUEUE_STATS: &[usize] = &[
    stats::PUBLISH,
    stats::DELIVER,
    stats::DELIVER_NO_ACK,
    stats::GET,
    stats::GET_NO_ACK,
    stats::ACK,
    stats::REDELIVER,
];
const EXCHANGE_STATS: &[usize] = &[stats::PUBLISH_IN, stats::PUBLISH_OUT];

fn details(rate: f64) -> Value {
    // RabbitMQ rounds rates to one decimal.
    json!({ "rate": (rate * 10.0).round() / 10.0 })
}

fn rate(rates: &[f64], i: usize) -> f64 {
    rates.get(i).copied().unwrap_or(0.0)
}

/// `message_stats`: each counter and its `_details.rate`, plus `deliver_get`.
fn message_stats(counts: &Counts, rates: &[f64], fields: &[usize]) -> Value {
    let mut m = Map::new();
    for &i in fields {
        m.insert(stats::NAMES[i].to_owned(), counts[i].into());
        m.insert(format!("{}_details", stats::NAMES[i]), details(rate(rates, i)));
    }
    if fields.contains(&stats::DELIVER) {
        m.insert("deliver_get".into(), stats::deliver_get(counts).into());
        let r = [stats::DELIVER, stats::DELIVER_NO_ACK, stats::GET, stats::GET_NO_ACK]
            .iter()
            .map(|&i| rate(rates, i))
            .sum();
        m.insert("deliver_get_details".into(), details(r));
    }
    Value::Object(m)
}

pub fn queue(q: &Queue) -> Value {
    let s = q.status();
    let settings = q.settings();
    let rates = q.rates.all();
    let consumers: Vec<Value> = Vec::new();
    let single_active = q.arguments.inner().contains_key("x-single-active-consumer");
    let (exclusive_tag, first_tag) = {
        let cs = q.consumers();
        let exclusive = cs.iter().find(|(c, _)| c.exclusive).map(|(c, _)| c.tag.to_string());
        (exclusive, cs.first().map(|(c, _)| c.tag.to_string()))
    };
    json!({
        "name": q.name,
        "vhost": q.vhost,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner.is_some(),
        "arguments": table_to_json(&q.arguments),
        "node": node_name(),
        "state": "running",
        "type": if q.quorum { "quorum" } else { "classic" },
        "messages": s.ready + s.unacked,
        "messages_details": details(rate(&rates, RATE_MESSAGES)),
        "messages_ready": s.ready,
        "messages_ready_details": details(rate(&rates, RATE_READY)),
        "messages_unacknowledged": s.unacked,
        "messages_unacknowledged_details": details(rate(&rates, RATE_UNACKED)),
        "messages_ram": s.ready_in_memory + s.unacked,
        "messages_ready_ram": s.ready_in_memory,
        "messages_paged_out": s.ready - s.ready_in_memory.min(s.ready),
        "message_bytes": s.ready_bytes,
        "message_bytes_ready": s.ready_bytes,
        "message_bytes_ram": s.ready_bytes_in_memory,
        "message_bytes_paged_out": s.ready_bytes - s.ready_bytes_in_memory.min(s.ready_bytes),
        "consumers": s.consumers,
        "consumer_capacity": if s.consumers > 0 { 1.0 } else { 0.0 },
        "consumer_utilisation": if s.consumers > 0 { 1.0 } else { 0.0 },
        "consumer_details": consumers,
        "exclusive_consumer_tag": exclusive_tag,
        "single_active_consumer_tag": if single_active { first_tag } else { None },
        "policy": settings.policy,
        "operator_policy": settings.operator_policy,
        "effective_policy_definition": settings.effective_definition,
        "head_message_timestamp": Value::Null,
        "memory": s.ready_bytes_in_memory + 1024,
        "message_stats": message_stats(&s.counts, &rates, QUEUE_STATS),
    })
}

pub fn exchange(x: &Exchange, vhost: &str) -> Value {
    let counts = x.stats.snapshot();
    let rates = x.rates.all();
    let mut v = json!({
        "name": x.name,
        "vhost": vhost,
        "type": x.type_name(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_to_json(&x.arguments),
        "user_who_performed_action": "rmq-internal",
        "policy": x.policy.read().as_ref().map(|(name, _)| name.clone()),
    });
    if counts[stats::PUBLISH_IN] > 0 {
        v["message_stats"] = message_stats(&counts, &rates, EXCHANGE_STATS);
    }
    v
}

pub fn binding(b: &BindingRow) -> Value {
    json!({
        "source": b.source,
        "vhost": b.vhost,
        "destination": b.destination,
        "destination_type": b.destination_type,
        "routing_key": b.routing_key,
        "arguments": b.arguments,
        "properties_key": properties_key(&b.routing_key, &b.arguments),
    })
}

pub fn connection(shared: &Node, c: &ConnInfo) -> Value {
    let rates = c.rates.all();
    let client: Value = serde_json::from_str(&c.client_properties).unwrap_or_else(|_| json!({}));
    json!({
        "name": c.name(shared.config.amqp_addr()),
        "node": node_name(),
        "type": "network",
        "state": "running",
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": c.auth_mechanism,
        "host": shared.config.amqp_addr().ip().to_string(),
        "port": shared.config.amqp_addr().port(),
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "ssl": c.tls,
        "channels": c.channels.load(Ordering::Relaxed),
        "channel_max": c.channel_max,
        "frame_max": c.frame_max,
        "timeout": c.heartbeat,
        "connected_at": c.connected_at,
        "client_properties": client,
        "recv_oct": c.recv_oct.load(Ordering::Relaxed),
        "recv_oct_details": details(rate(&rates, 0)),
        "send_oct": c.send_oct.load(Ordering::Relaxed),
        "send_oct_details": details(rate(&rates, 1)),
        "send_pend": 0,
    })
}

pub fn channel_name(shared: &Node, c: &ConnInfo, ch: &ChannelInfo) -> String {
    format!("{} ({})", c.name(shared.config.amqp_addr()), ch.number)
}

pub fn channel(shared: &Node, c: &ConnInfo, ch: &ChannelInfo) -> Value {
    let counts = ch.stats.snapshot();
    let rates = ch.rates.all();
    let mode = ch.mode.load(Ordering::Relaxed);
    json!({
        "name": channel_name(shared, c, ch),
        "node": node_name(),
        "number": ch.number,
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "state": "running",
        "confirm": mode == 1,
        "transactional": mode == 2,
        "consumer_count": ch.consumers.load(Ordering::Relaxed),
        "prefetch_count": ch.prefetch.load(Ordering::Relaxed),
        "global_prefetch_count": ch.global_prefetch.load(Ordering::Relaxed),
        "messages_unacknowledged": ch.unacked.load(Ordering::Relaxed),
        "messages_unconfirmed": 0,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "connection_details": {
            "name": c.name(shared.config.amqp_addr()),
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
        },
        "message_stats": message_stats(&counts, &rates, CHANNEL_STATS),
    })
}

pub fn consumer(shared: &Node, q: &Queue, c: &warren_core::Consumer, active: bool) -> Value {
    let conn = shared.registry.connections.lock().get(&c.connection).cloned();
    let channel_details = match &conn {
        Some(ci) => json!({
            "name": format!("{} ({})", ci.name(shared.config.amqp_addr()), c.channel),
            "number": c.channel,
            "node": node_name(),
            "connection_name": ci.name(shared.config.amqp_addr()),
            "peer_host": ci.peer.ip().to_string(),
            "peer_port": ci.peer.port(),
            "user": ci.user,
        }),
        None => json!({}),
    };
    json!({
        "consumer_tag": &*c.tag,
        "queue": { "name": q.name, "vhost": q.vhost },
        "channel_details": channel_details,
        "ack_required": !c.no_ack,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch.load(Ordering::Relaxed),
        "active": active,
        "activity_status": if active { "up" } else { "waiting" },
        "arguments": {},
    })
}

/// Every open channel's counters, summed per vhost.
fn live_channel_counts(shared: &Node) -> HashMap<String, Counts> {
    let conns: Vec<Arc<ConnInfo>> = shared.registry.connections.lock().values().cloned().collect();
    let mut by_vhost: HashMap<String, Counts> = HashMap::new();
    for c in conns {
        let total = by_vhost.entry(c.vhost.clone()).or_insert([0; stats::N]);
        for ch in c.channel_list.lock().iter() {
            stats::add(total, &ch.stats.snapshot());
        }
    }
    by_vhost
}

/// A vhost's `message_stats`: its closed channels' plus its open ones'.
fn vhost_counts(vhost: &VHost, live: &HashMap<String, Counts>) -> Counts {
    let mut c = vhost.retired.snapshot();
    if let Some(l) = live.get(&vhost.name) {
        stats::add(&mut c, l);
    }
    c
}

/// Ready and unacked messages of a vhost's queues.
fn vhost_lengths(vhost: &VHost) -> (u64, u64) {
    vhost.queues().iter().map(|q| q.status()).fold((0, 0), |(r, u), s| (r + s.ready, u + s.unacked))
}

pub fn vhosts(shared: &Node) -> Vec<Arc<VHost>> {
    let mut v = shared.broker.vhosts();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn vhost(shared: &Node, vhost: &VHost, ages: Ages) -> Value {
    let live = live_channel_counts(shared);
    vhost_with(vhost, &live, ages)
}

fn vhost_with(vhost: &VHost, live: &HashMap<String, Counts>, ages: Ages) -> Value {
    let counts = vhost_counts(vhost, live);
    let rates = vhost.rates.all();
    let (ready, unacked) = vhost_lengths(vhost);
    let mut v = json!({
        "name": vhost.name,
        "description": if vhost.name == "/" { "Default virtual host" } else { "" },
        "tags": [],
        "metadata": { "description": if vhost.name == "/" { "Default virtual host" } else { "" }, "tags": [] },
        "default_queue_type": "undefined",
        "tracing": false,
        "cluster_state": { node_name(): "running" },
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "messages_details": details(rate(&rates, stats::N)),
        "messages_ready_details": details(rate(&rates, stats::N + 1)),
        "messages_unacknowledged_details": details(rate(&rates, stats::N + 2)),
        "message_stats": message_stats(&counts, &rates, CHANNEL_STATS),
    });
    if ages.msg.is_some() || ages.lengths.is_some() {
        add_history(&mut v, None, &vhost.history, ages);
    }
    v
}

pub fn vhosts_json(shared: &Node, list: Vec<Arc<VHost>>, ages: Ages) -> Vec<Value> {
    let live = live_channel_counts(shared);
    list.iter().map(|v| vhost_with(v, &live, ages)).collect()
}

pub fn overview(shared: &Node, caller: &super::auth::Caller, ages: Ages) -> Value {
    let live = live_channel_counts(shared);
    let mut counts = [0; stats::N];
    let (mut ready, mut unacked, mut queues, mut exchanges, mut consumers) = (0, 0, 0, 0, 0);
    for v in vhosts(shared).iter().filter(|v| caller.sees_vhost(shared, &v.name)) {
        stats::add(&mut counts, &vhost_counts(v, &live));
        for q in v.queues() {
            let s = q.status();
            ready += s.ready;
            unacked += s.unacked;
            consumers += s.consumers as u64;
            queues += 1;
        }
        exchanges += v.exchanges().len();
    }
    let conns: Vec<Arc<ConnInfo>> =
        shared.registry.connections.lock().values().filter(|c| caller.sees_user(&c.user)).cloned().collect();
    let channels: usize = conns.iter().map(|c| c.channels.load(Ordering::Relaxed)).sum();
    let rates = shared.broker.rates.all();
    let listen = shared.config.amqp_addr();
    let mut listeners = vec![json!({
        "node": node_name(), "protocol": "amqp", "ip_address": listen.ip().to_string(), "port": listen.port(),
    })];
    if let Some(at) = shared.http_listen() {
        listeners.push(
            json!({"node": node_name(), "protocol": "http", "ip_address": at.ip().to_string(), "port": at.port()}),
        );
    }
    if let Some(at) = shared.config.amqps_listen {
        listeners.push(
            json!({"node": node_name(), "protocol": "amqp/ssl", "ip_address": at.ip().to_string(), "port": at.port()}),
        );
    }
    let mut v = json!({
        "management_version": "3.10.8",
        "rates_mode": "basic",
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rabbitmq_version": "3.10.8",
        "warren_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": node_name(),
        "erlang_version": "none",
        "erlang_full_version": "none (Warren is written in Rust)",
        "disable_stats": false,
        "enable_queue_totals": true,
        "node": node_name(),
        "exchange_types": exchange_types(),
        "message_stats": message_stats(&counts, &rates, CHANNEL_STATS),
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": details(rate(&rates, stats::N)),
            "messages_ready": ready,
            "messages_ready_details": details(rate(&rates, stats::N + 1)),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": details(rate(&rates, stats::N + 2)),
        },
        "object_totals": {
            "connections": conns.len(),
            "channels": channels,
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "statistics_db_event_queue": 0,
        "listeners": listeners,
        "contexts": [],
        "memory": memory(shared),
    });
    if caller.monitoring {
        // Node-wide history: only for those who see every vhost.
        add_history(&mut v, Some("queue_totals"), &shared.broker.history, ages);
    }
    v
}

pub fn exchange_types() -> Value {
    json!([
        {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
        {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
        {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
        {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
        {"name": "x-delayed-message", "description": "Delayed Message Exchange", "enabled": true},
    ])
}

/// The memory breakdown (`warren ctl status`), by category.
pub fn memory(shared: &Node) -> Value {
    Value::Object(crate::views::memory_rows(shared).into_iter().map(|(k, v, _)| (k.to_owned(), v.into())).collect())
}

pub fn node(shared: &Node) -> Value {
    let rss = warren_node::resources::rss_bytes().unwrap_or(0);
    let limit = shared.config.memory_limit().unwrap_or(0);
    let alarm = shared.alarms.current.borrow().clone();
    let disk_free = warren_node::resources::free_disk_bytes(&shared.config.data_dir()).unwrap_or(0);
    let (fds, fd_total) = warren_node::resources::file_descriptors();
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "being_drained": false,
        "os_pid": std::process::id().to_string(),
        "mem_used": rss,
        "mem_limit": limit,
        "mem_alarm": alarm.as_deref().is_some_and(|a| a.contains("memory")),
        "disk_free": disk_free,
        "disk_free_limit": shared.alarms.disk_free_limit.load(Ordering::Relaxed),
        "disk_free_alarm": alarm.as_deref().is_some_and(|a| a.contains("disk")),
        "fd_used": fds,
        "fd_total": fd_total,
        "sockets_used": shared.registry.connections.lock().len(),
        "proc_used": 0,
        "proc_total": 0,
        "processors": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "uptime": shared.started.elapsed().as_millis() as u64,
        "run_queue": 0,
        "rates_mode": "basic",
        "exchange_types": exchange_types(),
        "auth_mechanisms": [{"name": "PLAIN", "enabled": true}, {"name": "AMQPLAIN", "enabled": true}],
        "applications": [{"name": "warren", "description": "Warren", "version": env!("CARGO_PKG_VERSION")}],
        "partitions": [],
        "cluster_links": [],
        "enabled_plugins": ["rabbitmq_management"],
        "db_dir": shared.config.data_dir().display().to_string(),
        "memory": memory(shared),
        // Cluster mode: this node's view (role, leader, epoch, members), as
        // `warren ctl cluster_status` prints it; null on a single node.
        "warren_cluster": shared.cluster.as_ref().map(|c| serde_json::to_value(c.status()).unwrap_or_default()),
    })
}

/// Samples every object's counters into rates (every 5 s).
pub fn sample_all(shared: &Node) {
    let live = live_channel_counts(shared);
    let mut total = [0u64; stats::N];
    let (mut ready, mut unacked) = (0u64, 0u64);
    for v in shared.broker.vhosts() {
        let (mut vr, mut vu) = (0, 0);
        for q in v.queues() {
            let s = q.sample();
            vr += s.ready;
            vu += s.unacked;
        }
        for x in v.exchanges() {
            x.rates.sample(&x.stats.snapshot());
        }
        let counts = vhost_counts(&v, &live);
        stats::add(&mut total, &counts);
        let values = stats::with_lengths(&counts, vr, vu);
        v.rates.sample(&values);
        v.history.push(warren_core::now_ms(), &values);
        ready += vr;
        unacked += vu;
    }
    let values = stats::with_lengths(&total, ready, unacked);
    shared.broker.rates.sample(&values);
    shared.broker.history.push(warren_core::now_ms(), &values);
    let conns: Vec<Arc<ConnInfo>> = shared.registry.connections.lock().values().cloned().collect();
    for c in conns {
        c.rates.sample(&[c.recv_oct.load(Ordering::Relaxed), c.send_oct.load(Ordering::Relaxed)]);
        for ch in c.channel_list.lock().iter() {
            ch.rates.sample(&ch.stats.snapshot());
        }
    }
}
