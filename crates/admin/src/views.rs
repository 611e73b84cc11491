//! What the admin surface reads of the node and the broker, shared by the
//! management API, `warren ctl` and Prometheus: the node's name, its
//! memory breakdown, and a vhost's bindings as rows.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};
use warren_core::arguments::table_to_json;
use warren_core::exchange::Destination;
use warren_core::VHost;
use warren_node::Node;

/// This node's name, as RabbitMQ's `rabbit@host`.
pub fn node_name() -> String {
    warren_node::node_name()
}

/// Where the broker's memory is: (category, bytes, whether a share of RSS
/// makes sense), for `warren ctl status` and the management API.
pub fn memory_rows(shared: &Node) -> Vec<(&'static str, u64, bool)> {
    let (mut in_memory, mut paged) = (0u64, 0u64);
    for vhost in shared.broker.vhosts() {
        for q in vhost.queues() {
            let (m, p) = q.ready_bytes();
            in_memory += m;
            paged += p;
        }
    }
    let buffers: u64 =
        shared.registry.connections.lock().values().map(|c| c.buffers.load(Ordering::Relaxed) as u64).sum();
    let committed = warren_node::heap::committed();
    let rss = warren_node::resources::rss_bytes().unwrap_or(0);
    vec![
        ("queue_bodies_in_memory", in_memory, true),
        ("queue_bodies_on_disk", paged, false),
        ("spilled_on_disk", shared.broker.hooks.spill.store().map_or(0, |s| s.bytes()), false),
        ("connection_buffers", buffers, true),
        ("allocator_committed", committed, false),
        ("total_rss", rss, true),
        ("memory_high_watermark", shared.config.memory_limit().unwrap_or(0), false),
        ("disk_free_limit", shared.alarms.disk_free_limit.load(Ordering::Relaxed), false),
    ]
}

/// One binding, as the API lists it.
pub struct BindingRow {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub destination_type: &'static str,
    pub routing_key: String,
    pub arguments: Value,
}

/// RabbitMQ's `properties_key`: names one binding between a source and a
/// destination in a URL. The routing key (`~` when empty), plus a hash of
/// the arguments when there are any.
pub fn properties_key(routing_key: &str, arguments: &Value) -> String {
    let empty = arguments.as_object().is_none_or(|m| m.is_empty());
    let key = if routing_key.is_empty() { "~" } else { routing_key };
    if empty {
        return key.to_owned();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(arguments.to_string().as_bytes());
    use base64::Engine;
    format!("{key}~{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..12]))
}

/// Every binding of a vhost: the default exchange's implicit ones first,
/// as RabbitMQ lists them.
pub fn bindings(vhost: &VHost) -> Vec<BindingRow> {
    let mut queues = vhost.queues();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows: Vec<BindingRow> = queues
        .iter()
        .map(|q| BindingRow {
            vhost: vhost.name.clone(),
            source: String::new(),
            destination: q.name.clone(),
            destination_type: "queue",
            routing_key: q.name.clone(),
            arguments: json!({}),
        })
        .collect();
    let mut xs = vhost.exchanges();
    xs.sort_by(|a, b| a.name.cmp(&b.name));
    for x in xs.iter().filter(|x| !x.name.is_empty()) {
        for b in x.bindings() {
            let (destination, destination_type) = match &b.destination {
                Destination::Queue(q) => (q.name.clone(), "queue"),
                Destination::Exchange(e) => (e.clone(), "exchange"),
            };
            rows.push(BindingRow {
                vhost: vhost.name.clone(),
                source: x.name.clone(),
                destination,
                destination_type,
                routing_key: b.routing_key.clone(),
                arguments: table_to_json(&b.arguments),
            });
        }
    }
    rows
}

/// "YYYY-MM-DD HH:MM:SS" in UTC, as RabbitMQ's status timestamps.
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod timestamp_tests {
    #[test]
    fn timestamps_read_as_rabbitmq_writes_them() {
        assert_eq!(super::timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(super::timestamp(1_796_322_896_000), "2026-12-03 18:34:56");
    }
}
