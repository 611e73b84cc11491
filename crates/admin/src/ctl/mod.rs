//! `warren ctl`: administration of a running broker, after `rabbitmqctl`.
//!
//! The broker listens on a Unix socket, `warren.sock` in its data directory,
//! created with mode 0600: whoever can open it is the broker's owner (or
//! root), so no password is asked — the same trust rabbitmqctl places in the
//! Erlang cookie file. There is no TCP administration port.
//!
//! One request per connection: a JSON line `{"command", "vhost", "args"}`;
//! one JSON line back with the info line, an optional table, and the exit
//! code rabbitmqctl would use.

mod parameters;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tracing::{info, warn};
use warren_core::auth::{UserLimits, VHostLimits};
use warren_core::broker::AdminError;

use warren_node::Node;

pub const SOCKET_NAME: &str = "warren.sock";

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub command: String,
    pub vhost: String,
    pub args: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub exit: i32,
    /// The "Listing users ..." line (suppressed by `-q`).
    pub info: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Free text after the table (e.g. the limits JSON).
    pub text: String,
    pub error: String,
}

fn table(info: String, columns: &[&str], rows: Vec<Vec<String>>) -> Response {
    Response { info, columns: columns.iter().map(|c| c.to_string()).collect(), rows, ..Default::default() }
}

fn failed(info: String, e: AdminError) -> Response {
    Response { exit: e.exit_code(), info, error: e.message().to_owned(), ..Default::default() }
}

fn usage(info: String, text: &str) -> Response {
    Response { exit: 64, info, error: text.to_owned(), ..Default::default() }
}

/// Serves `warren ctl` on `<data_dir>/warren.sock` until the process ends.
pub async fn listen(shared: Arc<Node>, data_dir: &Path) -> std::io::Result<()> {
    let path = data_dir.join(SOCKET_NAME);
    // A socket left by a killed broker: nobody listens on it any more.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    info!(socket = %path.display(), "ctl socket ready");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let shared = shared.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut line = String::new();
                let mut rd = tokio::io::BufReader::new(rd);
                if rd.read_line(&mut line).await.is_err() {
                    return;
                }
                let response = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        let mut r = execute(&shared, &req);
                        // A cluster's leader answers a change once the followers have it.
                        if let Some(hub) = shared.cluster.as_ref().and_then(|c| c.gate()) {
                            if r.exit == 0 && !hub.defs_replicated(std::time::Duration::from_secs(10)).await {
                                r = failed(
                                    r.info,
                                    AdminError::TryAgain("the cluster's followers did not confirm the change".into()),
                                );
                            }
                        }
                        if r.exit == 0 && !req.command.starts_with("list_") {
                            info!(command = %req.command, vhost = %req.vhost, "ctl: {}", r.info);
                        }
                        r
                    }
                    Err(e) => usage(String::new(), &format!("bad request: {e}")),
                };
                let mut out = serde_json::to_vec(&response).unwrap_or_default();
                out.push(b'\n');
                let _ = wr.write_all(&out).await;
            });
        }
    });
    Ok(())
}

fn yes(b: bool) -> String {
    b.to_string()
}

/// Carries out one command against the running broker.
pub fn execute(shared: &Node, req: &Request) -> Response {
    let broker = &shared.broker;
    let a = &req.args;
    let vh = req.vhost.as_str();
    let arg = |i: usize| a.get(i).map(String::as_str).unwrap_or("");
    let need = |n: usize, info: String, f: &dyn Fn() -> Result<Response, AdminError>| {
        if a.len() < n {
            return usage(info, &format!("{} needs {n} argument(s); see `warren ctl help`", req.command));
        }
        f().unwrap_or_else(|e| failed(info, e))
    };
    let done = |info: String| Response { info, ..Default::default() };
    // A cluster node that does not serve has only an empty placeholder
    // broker: what it would list is not the cluster's, and what it would
    // change would be lost.
    if let Some(c) = shared.cluster.as_ref().filter(|c| !c.is_serving()) {
        if !matches!(req.command.as_str(), "cluster_status" | "status" | "memory_breakdown") {
            let leader = c.leader_name().unwrap_or_else(|| "unknown".to_owned());
            return failed(
                String::new(),
                AdminError::Unavailable(format!(
                    "this node is not the cluster's leader (the leader is {leader}): run `warren ctl` there"
                )),
            );
        }
    }
    match req.command.as_str() {
        "add_user" => {
            let info = format!("Adding user \"{}\" ...", arg(0));
            need(2, info.clone(), &|| broker.add_user(arg(0), arg(1)).map(|()| done(info.clone())))
        }
        "delete_user" => {
            let info = format!("Deleting user \"{}\" ...", arg(0));
            need(1, info.clone(), &|| broker.delete_user(arg(0)).map(|()| done(info.clone())))
        }
        "change_password" => {
            let info = format!("Changing password for user \"{}\" ...", arg(0));
            need(2, info.clone(), &|| broker.change_password(arg(0), arg(1)).map(|()| done(info.clone())))
        }
        "authenticate_user" => {
            let info = format!("Authenticating user \"{}\" ...", arg(0));
            need(2, info.clone(), &|| match broker.authenticate(arg(0), arg(1)) {
                Some(_) => Ok(Response { text: "Success".into(), ..done(info.clone()) }),
                None => Err(AdminError::Invalid(format!("Error: failed to authenticate user \"{}\"", arg(0)))),
            })
        }
        "set_user_tags" => {
            let tags: Vec<String> = a.iter().skip(1).cloned().collect();
            let info = format!("Setting tags for user \"{}\" to [{}] ...", arg(0), tags.join(", "));
            need(1, info.clone(), &|| broker.set_user_tags(arg(0), &tags).map(|()| done(info.clone())))
        }
        "list_users" => {
            let rows = broker
                .access()
                .users
                .values()
                .map(|u| vec![u.name.clone(), format!("[{}]", u.tags.join(", "))])
                .collect();
            table("Listing users ...".into(), &["user", "tags"], rows)
        }
        "add_vhost" => {
            let info = format!("Adding vhost \"{}\" ...", arg(0));
            need(1, info.clone(), &|| broker.add_vhost(arg(0)).map(|()| done(info.clone())))
        }
        "delete_vhost" => {
            let info = format!("Deleting vhost \"{}\" ...", arg(0));
            need(1, info.clone(), &|| broker.delete_vhost(arg(0)).map(|()| done(info.clone())))
        }
        "list_vhosts" => {
            let rows = broker.access().vhosts.keys().map(|n| vec![n.clone()]).collect();
            table("Listing vhosts ...".into(), &["name"], rows)
        }
        "set_permissions" => {
            let info = format!("Setting permissions for user \"{}\" in vhost \"{vh}\" ...", arg(0));
            need(4, info.clone(), &|| {
                broker.set_permissions(vh, arg(0), arg(1), arg(2), arg(3)).map(|()| done(info.clone()))
            })
        }
        "clear_permissions" => {
            let info = format!("Clearing permissions for user \"{}\" in vhost \"{vh}\" ...", arg(0));
            need(1, info.clone(), &|| broker.clear_permissions(vh, arg(0)).map(|()| done(info.clone())))
        }
        "list_permissions" => {
            let info = format!("Listing permissions for vhost \"{vh}\" ...");
            let ac = broker.access();
            if !ac.vhosts.contains_key(vh) {
                return failed(info, AdminError::Unavailable(format!("Virtual host {vh} does not exist")));
            }
            let rows = ac
                .permissions
                .iter()
                .filter(|((v, _), _)| v == vh)
                .map(|((_, u), p)| vec![u.clone(), p.configure.clone(), p.write.clone(), p.read.clone()])
                .collect();
            table(info, &["user", "configure", "write", "read"], rows)
        }
        "list_user_permissions" => {
            let info = format!("Listing permissions for user \"{}\" ...", arg(0));
            let ac = broker.access();
            if !ac.users.contains_key(arg(0)) {
                return failed(info, AdminError::NoSuchUser(format!("User \"{}\" does not exist", arg(0))));
            }
            let rows = ac
                .permissions
                .iter()
                .filter(|((_, u), _)| u == arg(0))
                .map(|((v, _), p)| vec![v.clone(), p.configure.clone(), p.write.clone(), p.read.clone()])
                .collect();
            table(info, &["vhost", "configure", "write", "read"], rows)
        }
        "set_topic_permissions" => {
            let info =
                format!("Setting topic permissions on \"{}\" for user \"{}\" in vhost \"{vh}\" ...", arg(1), arg(0));
            need(4, info.clone(), &|| {
                broker.set_topic_permissions(vh, arg(0), arg(1), arg(2), arg(3)).map(|()| done(info.clone()))
            })
        }
        "clear_topic_permissions" => {
            let exchange = a.get(1).map(String::as_str);
            let info = match exchange {
                Some(x) => {
                    format!("Clearing topic permissions on \"{x}\" for user \"{}\" in vhost \"{vh}\" ...", arg(0))
                }
                None => format!("Clearing topic permissions for user \"{}\" in vhost \"{vh}\" ...", arg(0)),
            };
            need(1, info.clone(), &|| broker.clear_topic_permissions(vh, arg(0), exchange).map(|()| done(info.clone())))
        }
        "list_topic_permissions" => {
            let rows = broker
                .access()
                .topic_permissions
                .iter()
                .filter(|((v, _, _), _)| v == vh)
                .map(|((_, u, x), p)| vec![u.clone(), x.clone(), p.write.clone(), p.read.clone()])
                .collect();
            table(
                format!("Listing topic permissions for vhost \"{vh}\" ..."),
                &["user", "exchange", "write", "read"],
                rows,
            )
        }
        "list_user_topic_permissions" => {
            let rows = broker
                .access()
                .topic_permissions
                .iter()
                .filter(|((_, u, _), _)| u == arg(0))
                .map(|((v, _, x), p)| vec![v.clone(), x.clone(), p.write.clone(), p.read.clone()])
                .collect();
            // rabbitmqctl prints no header for this one.
            Response { rows, ..done(format!("Listing topic permissions for user \"{}\" ...", arg(0))) }
        }
        "set_user_limits" => {
            let info = format!("Setting user limits to \"{}\" for user \"{}\" ...", arg(1), arg(0));
            need(2, info.clone(), &|| {
                let current = broker.access().users.get(arg(0)).map(|u| u.limits).unwrap_or_default();
                let mut merged = serde_json::to_value(current).unwrap_or_default();
                let new: serde_json::Value = serde_json::from_str(arg(1))
                    .map_err(|e| AdminError::Invalid(format!("invalid limits '{}': {e}", arg(1))))?;
                if let (Some(m), Some(n)) = (merged.as_object_mut(), new.as_object()) {
                    m.extend(n.clone());
                }
                let limits: UserLimits = serde_json::from_value(merged).map_err(|e| {
                    AdminError::Invalid(format!(
                        "invalid limits '{}': {e} (known: max-connections, max-channels)",
                        arg(1)
                    ))
                })?;
                broker.set_user_limits(arg(0), limits).map(|()| done(info.clone()))
            })
        }
        "clear_user_limits" => {
            let which = a.get(1).map(String::as_str).unwrap_or("all");
            let info = if which == "all" {
                format!("Clearing all limits for user \"{}\" ...", arg(0))
            } else {
                format!("Clearing \"{which}\" limit for user \"{}\" ...", arg(0))
            };
            need(1, info.clone(), &|| {
                let mut limits = broker.access().users.get(arg(0)).map(|u| u.limits).unwrap_or_default();
                match which {
                    "all" => limits = UserLimits::default(),
                    "max-connections" => limits.max_connections = None,
                    "max-channels" => limits.max_channels = None,
                    other => return Err(AdminError::Invalid(format!("unknown limit '{other}'"))),
                }
                broker.set_user_limits(arg(0), limits).map(|()| done(info.clone()))
            })
        }
        "list_user_limits" => {
            let user = req.args.iter().position(|x| x == "--user").and_then(|i| req.args.get(i + 1)).cloned();
            let user = user.unwrap_or_else(|| "guest".to_owned());
            let info = format!("Listing limits for user \"{user}\" ...");
            match broker.access().users.get(&user) {
                Some(u) => Response { text: serde_json::to_string(&u.limits).unwrap_or_default(), ..done(info) },
                None => failed(info, AdminError::NoSuchUser(format!("User \"{user}\" does not exist"))),
            }
        }
        "set_vhost_limits" => {
            let info = format!("Setting vhost limits to \"{}\" for vhost \"{vh}\" ...", arg(0));
            need(1, info.clone(), &|| {
                let limits: VHostLimits = serde_json::from_str(arg(0)).map_err(|e| {
                    AdminError::Invalid(format!(
                        "invalid limits '{}': {e} (known: max-connections, max-queues)",
                        arg(0)
                    ))
                })?;
                broker.set_vhost_limits(vh, limits).map(|()| done(info.clone()))
            })
        }
        "clear_vhost_limits" => {
            let info = format!("Clearing vhost \"{vh}\" limits ...");
            broker
                .set_vhost_limits(vh, VHostLimits::default())
                .map(|()| done(info.clone()))
                .unwrap_or_else(|e| failed(info, e))
        }
        "list_vhost_limits" => {
            let info = format!("Listing limits for vhost \"{vh}\" ...");
            match broker.access().vhosts.get(vh) {
                Some(l) if *l != VHostLimits::default() => {
                    Response { text: serde_json::to_string(l).unwrap_or_default(), ..done(info) }
                }
                Some(_) => done(info),
                None => failed(info, AdminError::Unavailable(format!("Virtual host {vh} does not exist"))),
            }
        }
        "status" => status(shared),
        "memory_breakdown" => memory_breakdown(shared),
        "cluster_status" => match &shared.cluster {
            Some(c) => Response {
                text: serde_json::to_string_pretty(&c.status()).unwrap_or_default(),
                ..done("Cluster status of node ...".into())
            },
            None => failed(
                "Cluster status of node ...".into(),
                AdminError::Unavailable("this node is not in a cluster (no --cluster-etcd)".into()),
            ),
        },
        "set_disk_free_limit" => {
            let spec = match a.as_slice() {
                [kind, f] if kind == "mem_relative" => format!("mem_relative:{f}"),
                [limit] => limit.clone(),
                _ => return usage(String::new(), "set_disk_free_limit LIMIT | mem_relative FRACTION"),
            };
            match spec.parse::<warren_node::resources::DiskFreeLimit>() {
                Ok(limit) => {
                    let bytes = limit.bytes();
                    shared.alarms.disk_free_limit.store(bytes, Ordering::Relaxed);
                    info!(bytes, "disk free limit set");
                    done(format!("Setting disk free limit to {bytes} bytes ..."))
                }
                Err(e) => usage(String::new(), &e.0),
            }
        }
        "import_definitions" => {
            let info = "Importing definitions in JSON ...".to_owned();
            need(1, info.clone(), &|| {
                let doc: serde_json::Value = serde_json::from_str(arg(0))
                    .map_err(|e| AdminError::Invalid(format!("invalid definitions JSON: {e}")))?;
                let (x, q, b) = broker.import_definitions(&doc)?;
                Ok(Response {
                    text: format!("Imported users, vhosts and permissions, {x} exchanges, {q} queues, {b} bindings."),
                    ..done(info.clone())
                })
            })
        }
        "export_definitions" => Response {
            text: serde_json::to_string_pretty(&broker.export_definitions()).unwrap_or_default(),
            ..done("Exporting definitions in JSON ...".to_owned())
        },
        "set_policy" | "set_operator_policy" => set_policy(shared, req),
        "clear_policy" | "clear_operator_policy" => {
            let operator = req.command == "clear_operator_policy";
            let what = if operator { "operator policy" } else { "policy" };
            let info = format!("Clearing {what} \"{}\" on vhost \"{vh}\" ...", arg(0));
            need(1, info.clone(), &|| broker.clear_policy(vh, arg(0), operator).map(|()| done(info.clone())))
        }
        "list_policies" | "list_operator_policies" => {
            let operator = req.command == "list_operator_policies";
            let info = if operator {
                format!("Listing operator policy overrides for vhost \"{vh}\" ...")
            } else {
                format!("Listing policies for vhost \"{vh}\" ...")
            };
            let ac = broker.access();
            let map = if operator { &ac.operator_policies } else { &ac.policies };
            let rows = map
                .values()
                .filter(|p| p.vhost == vh)
                .map(|p| {
                    vec![
                        p.vhost.clone(),
                        p.name.clone(),
                        p.pattern.clone(),
                        p.apply_to.as_str().to_owned(),
                        serde_json::Value::Object(p.definition.clone()).to_string(),
                        p.priority.to_string(),
                    ]
                })
                .collect();
            table(info, &["vhost", "name", "pattern", "apply-to", "definition", "priority"], rows)
        }
        "set_parameter" | "clear_parameter" | "list_parameters" | "shovel_status" | "federation_status" => {
            parameters::execute(shared, req)
        }
        "list_queues" | "list_exchanges" | "list_bindings" | "list_consumers" => list_entities(shared, req),
        "list_connections" => list_connections(shared, a),
        other => usage(String::new(), &format!("unknown command '{other}'; see `warren ctl help`")),
    }
}

/// `set_policy [--priority N] [--apply-to all|queues|exchanges] NAME PATTERN DEFINITION`
/// (and `set_operator_policy`), with rabbitmqctl's texts.
fn set_policy(shared: &Node, req: &Request) -> Response {
    let operator = req.command == "set_operator_policy";
    let (mut priority, mut apply_to, mut rest) = ("0".to_owned(), "all".to_owned(), Vec::new());
    let mut it = req.args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--priority" => priority = it.next().cloned().unwrap_or_default(),
            "--apply-to" => apply_to = it.next().cloned().unwrap_or_default(),
            _ => rest.push(a.clone()),
        }
    }
    let [name, pattern, definition] = rest.as_slice() else {
        return usage(
            String::new(),
            &format!("{} [--priority N] [--apply-to all|queues|exchanges] NAME PATTERN DEFINITION", req.command),
        );
    };
    let what = if operator { "operator policy override" } else { "policy" };
    let info = format!(
        "Setting {what} \"{name}\" for pattern \"{pattern}\" to \"{definition}\" with priority \"{priority}\" for vhost \"{}\" ...",
        req.vhost
    );
    let Ok(priority) = priority.parse::<i64>() else {
        return failed(info, AdminError::Invalid(format!("priority should be a number, actually was {priority}")));
    };
    let definition = match serde_json::from_str::<serde_json::Value>(definition) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return failed(info, AdminError::Unavailable("JSON decoding error. Reason: badarg".into())),
    };
    match shared.broker.set_policy(&req.vhost, name, pattern, &apply_to, priority, definition, operator) {
        Ok(()) => Response { info, ..Default::default() },
        Err(e) => failed(info, e),
    }
}

/// Picks the requested info items (or the defaults) from `all`.
fn select(info: String, requested: &[String], defaults: &[&str], all: &[&str], rows: Vec<Vec<String>>) -> Response {
    let wanted: Vec<&str> =
        if requested.is_empty() { defaults.to_vec() } else { requested.iter().map(String::as_str).collect() };
    let mut idx = Vec::new();
    for w in &wanted {
        match all.iter().position(|c| c == w) {
            Some(i) => idx.push(i),
            None => return usage(info, &format!("Info key '{w}' is not known; known: {}", all.join(", "))),
        }
    }
    let rows = rows.into_iter().map(|r| idx.iter().map(|&i| r[i].clone()).collect()).collect();
    table(info, &wanted, rows)
}

fn list_entities(shared: &Node, req: &Request) -> Response {
    let vh = req.vhost.as_str();
    let Some(vhost) = shared.broker.vhost(vh) else {
        return failed(String::new(), AdminError::Unavailable(format!("Virtual host {vh} does not exist")));
    };
    match req.command.as_str() {
        "list_queues" => {
            const ALL: [&str; 9] = [
                "name",
                "messages",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
                "durable",
                "auto_delete",
                "exclusive",
                "type",
            ];
            let mut queues = vhost.queues();
            queues.sort_by(|a, b| a.name.cmp(&b.name));
            let rows = queues
                .iter()
                .map(|q| {
                    let (ready, unacked) = (q.message_count(), q.unacked_count());
                    vec![
                        q.name.clone(),
                        (ready + unacked).to_string(),
                        ready.to_string(),
                        unacked.to_string(),
                        q.consumer_count().to_string(),
                        yes(q.durable),
                        yes(q.auto_delete),
                        yes(q.exclusive_owner.is_some()),
                        if q.quorum { "quorum" } else { "classic" }.to_owned(),
                    ]
                })
                .collect();
            select(format!("Listing queues for vhost {vh} ..."), &req.args, &["name", "messages"], &ALL, rows)
        }
        "list_consumers" => {
            const ALL: [&str; 6] =
                ["queue_name", "channel", "consumer_tag", "ack_required", "prefetch_count", "active"];
            let mut queues = vhost.queues();
            queues.sort_by(|a, b| a.name.cmp(&b.name));
            let mut rows = Vec::new();
            for q in &queues {
                for (c, active) in q.consumers() {
                    rows.push(vec![
                        q.name.clone(),
                        c.channel.to_string(),
                        c.tag.to_string(),
                        yes(!c.no_ack),
                        c.prefetch.load(std::sync::atomic::Ordering::Relaxed).to_string(),
                        yes(active),
                    ]);
                }
            }
            let defaults = ["queue_name", "channel", "consumer_tag", "ack_required", "prefetch_count", "active"];
            select(format!("Listing consumers in vhost {vh} ..."), &req.args, &defaults, &ALL, rows)
        }
        "list_exchanges" => {
            const ALL: [&str; 5] = ["name", "type", "durable", "auto_delete", "internal"];
            let mut xs = vhost.exchanges();
            xs.sort_by(|a, b| a.name.cmp(&b.name));
            let rows = xs
                .iter()
                .map(|x| {
                    vec![x.name.clone(), x.type_name().to_owned(), yes(x.durable), yes(x.auto_delete), yes(x.internal)]
                })
                .collect();
            select(format!("Listing exchanges for vhost {vh} ..."), &req.args, &["name", "type"], &ALL, rows)
        }
        _ => {
            const ALL: [&str; 5] =
                ["source_name", "source_kind", "destination_name", "destination_kind", "routing_key"];
            // The default exchange's implicit bindings come first, as RabbitMQ lists them.
            let rows = crate::views::bindings(&vhost)
                .into_iter()
                .map(|b| vec![b.source, "exchange".into(), b.destination, b.destination_type.into(), b.routing_key])
                .collect();
            select(format!("Listing bindings for vhost {vh}..."), &req.args, &ALL, &ALL, rows)
        }
    }
}

/// Where the broker's memory is, in the spirit of `rabbitmq-diagnostics
/// memory_breakdown`: one row per category, bytes and share of RSS.
/// `status`: what the node runs and how it stands (rabbitmqctl status's
/// essentials): version, uptime, listeners, alarms, memory.
fn status(shared: &Node) -> Response {
    let l = &shared.listeners;
    let addr = |a: &std::sync::OnceLock<std::net::SocketAddr>| a.get().map_or("off".to_owned(), |a| a.to_string());
    let alarms = shared.alarms.current.borrow().clone().unwrap_or_else(|| "none".into());
    let rss = warren_node::resources::rss_bytes().unwrap_or(0);
    let role = match &shared.cluster {
        None => "single node".to_owned(),
        Some(c) => format!("cluster {}: {}", c.status().cluster_name, c.status().role),
    };
    let rows = [
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("uptime_seconds", shared.started.elapsed().as_secs().to_string()),
        ("role", role),
        ("amqp_listener", addr(&l.amqp)),
        ("amqps_listener", addr(&l.amqps)),
        ("http_listener", addr(&l.http)),
        ("prometheus_listener", addr(&l.prometheus)),
        ("data_dir", shared.config.data_dir().display().to_string()),
        ("alarms", alarms.clone()),
        ("memory_rss_bytes", rss.to_string()),
        ("memory_limit_bytes", shared.config.memory_limit().unwrap_or(0).to_string()),
        ("connections", shared.registry.connections.lock().len().to_string()),
    ];
    let mut r = table(
        format!("Status of node {} ...", crate::views::node_name()),
        &["key", "value"],
        rows.into_iter().map(|(k, v)| vec![k.to_owned(), v]).collect(),
    );
    r.text = format!("Alarms: {alarms}.");
    r
}

fn memory_breakdown(shared: &Node) -> Response {
    let rows = crate::views::memory_rows(shared);
    let rss = rows.iter().find(|(k, _, _)| *k == "total_rss").map_or(0, |r| r.1);
    let share = |bytes: u64| if rss > 0 { format!("{:.1}", 100.0 * bytes as f64 / rss as f64) } else { String::new() };
    let rows = rows
        .into_iter()
        .map(|(what, bytes, of_rss)| {
            vec![what.to_owned(), bytes.to_string(), if of_rss { share(bytes) } else { String::new() }]
        })
        .collect();
    let mut r = table("Memory breakdown (bytes, percent of RSS) ...".into(), &["category", "bytes", "percent"], rows);
    r.text = format!(
        "queue_bodies_* count a body once per queue holding it (a body routed to several queues is stored once); \
         queue_bodies_on_disk is the paged tail (in the message log, or spilled; spilled_on_disk is the spill files' live bytes); \
         allocator_committed (what the allocator holds from the OS, queue bodies and connection buffers included) may exceed RSS: pages it committed but nothing touched yet are not resident. Alarms: {}.",
        shared.alarms.current.borrow().clone().unwrap_or_else(|| "none".into())
    );
    r
}

fn list_connections(shared: &Node, requested: &[String]) -> Response {
    const ALL: [&str; 8] = ["user", "peer_host", "peer_port", "state", "vhost", "channels", "ssl", "name"];
    let mut conns: Vec<_> = shared.registry.connections.lock().values().cloned().collect();
    conns.sort_by_key(|c| c.id);
    let rows = conns
        .iter()
        .map(|c| {
            vec![
                c.user.clone(),
                c.peer.ip().to_string(),
                c.peer.port().to_string(),
                "running".into(),
                c.vhost.clone(),
                c.channels.load(Ordering::Relaxed).to_string(),
                yes(c.tls),
                format!("{} -> {}", c.peer, shared.config.amqp_addr()),
            ]
        })
        .collect();
    select("Listing connections ...".into(), requested, &["user", "peer_host", "peer_port", "state"], &ALL, rows)
}

const HELP: &str = "\
Usage: warren ctl [--data-dir DIR] [-p VHOST] [-q] [-s] COMMAND [ARGS...]

Talks to the broker running on DIR (default: the default data directory)
through DIR/warren.sock. Commands, as rabbitmqctl's:

  add_user USER [PASSWORD]          delete_user USER
  change_password USER [PASSWORD]   authenticate_user USER PASSWORD
  set_user_tags USER [TAG...]       list_users
  add_vhost VHOST                   delete_vhost VHOST          list_vhosts
  set_permissions [-p VHOST] USER CONF WRITE READ
  clear_permissions [-p VHOST] USER
  list_permissions [-p VHOST]       list_user_permissions USER
  set_topic_permissions [-p VHOST] USER EXCHANGE WRITE READ
  clear_topic_permissions [-p VHOST] USER [EXCHANGE]
  list_topic_permissions [-p VHOST] list_user_topic_permissions USER
  set_vhost_limits [-p VHOST] '{\"max-connections\": N, \"max-queues\": N}'
  clear_vhost_limits [-p VHOST]     list_vhost_limits [-p VHOST]
  set_user_limits USER '{\"max-connections\": N, \"max-channels\": N}'
  clear_user_limits USER [max-connections|max-channels|all]
  list_user_limits [--user USER]
  list_queues [-p VHOST] [name messages messages_ready messages_unacknowledged
              consumers durable auto_delete exclusive type]
  list_exchanges [-p VHOST] [name type durable auto_delete internal]
  list_bindings [-p VHOST]
  list_connections [user peer_host peer_port state vhost channels ssl name]
  list_consumers [-p VHOST] [queue_name channel consumer_tag ack_required
              prefetch_count active]
  status                            version, uptime, listeners, alarms, memory
  await_startup [--timeout SECS]    wait until the broker answers (default 300 s)
  memory_breakdown                  where the memory is: queue bodies in memory
                                    and on disk, connection buffers, heap in use,
                                    allocator free space, RSS; alarms
  set_disk_free_limit LIMIT | mem_relative FRACTION
                                    (LIMIT: bytes or 50MB, 2GiB, ...)
  set_policy [-p VHOST] [--priority N] [--apply-to all|queues|exchanges]
             NAME PATTERN DEFINITION      (DEFINITION: JSON, e.g.
                                           '{\"max-length\":1000}')
  clear_policy [-p VHOST] NAME      list_policies [-p VHOST]
  set_parameter [-p VHOST] COMPONENT NAME JSON   clear_parameter [-p VHOST] COMPONENT NAME
  list_parameters [-p VHOST]        shovel_status      federation_status
  set_operator_policy / clear_operator_policy / list_operator_policies
                                    (the same, for operator policies, which
                                     cap message-ttl, expires, max-length,
                                     max-length-bytes, delivery-limit)
  export_definitions FILE|-         (everything import_definitions reads)
  import_definitions FILE           (users, vhosts, permissions, exchanges,
                                     queues, bindings; e.g. from
                                     rabbitmqctl export_definitions)

-q drops the informational line, -s also the table headers.
";

/// `warren ctl ...`: returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    let mut data_dir: Option<PathBuf> = std::env::var_os("WARREN_DATA_DIR").map(PathBuf::from);
    let mut vhost = "/".to_owned();
    let (mut quiet, mut silent) = (false, false);
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data-dir" => data_dir = it.next().map(PathBuf::from),
            "-p" | "--vhost" => vhost = it.next().unwrap_or_default(),
            "-q" | "--quiet" => quiet = true,
            "-s" | "--silent" => (quiet, silent) = (true, true),
            "-h" | "--help" | "help" => {
                print!("{HELP}");
                return 0;
            }
            _ => match a.strip_prefix("--data-dir=").or_else(|| a.strip_prefix("--vhost=")) {
                Some(v) if a.starts_with("--data-dir=") => data_dir = Some(PathBuf::from(v)),
                Some(v) => vhost = v.to_owned(),
                None => rest.push(a),
            },
        }
    }
    if rest.is_empty() {
        eprint!("{HELP}");
        return 64;
    }
    let command = rest.remove(0);
    if command == "await_startup" {
        return await_startup(data_dir, &rest);
    }
    if command == "import_definitions" {
        // The file is read here, with the caller's permissions.
        let Some(path) = rest.first() else {
            eprintln!("Error:\nimport_definitions needs a file");
            return 64;
        };
        match std::fs::read_to_string(path) {
            Ok(text) => rest[0] = text,
            Err(e) => {
                eprintln!("Error:\ncannot read {path}: {e}");
                return 66;
            }
        }
    }
    // A password left out is read from standard input, as rabbitmqctl
    // does: it then stays out of the process list and shell history.
    if matches!(command.as_str(), "add_user" | "change_password") && rest.len() == 1 {
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(n) if n > 0 => rest.push(line.trim_end_matches(['\r', '\n']).to_owned()),
            _ => {
                eprintln!("Error:\n{command}: no password given, and none on standard input");
                return 64;
            }
        }
    }
    // export_definitions FILE writes the file here ("-" = standard output).
    let export_to = (command == "export_definitions").then(|| rest.first().cloned().unwrap_or_else(|| "-".into()));
    let data_dir = data_dir.unwrap_or_else(warren_node::config::default_data_dir);
    let socket = data_dir.join(SOCKET_NAME);
    let response = match call(&socket, &Request { command, vhost, args: rest }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "Error:\ncannot reach the broker at {}: {e}\nIs it running with this --data-dir?",
                socket.display()
            );
            return 69;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !quiet && !response.info.is_empty() {
        let _ = writeln!(out, "{}", response.info);
    }
    if response.exit != 0 {
        let _ = out.flush();
        eprintln!("Error:\n{}", response.error);
        return response.exit;
    }
    if let Some(path) = export_to.filter(|p| p != "-") {
        return match std::fs::write(&path, format!("{}\n", response.text)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("Error:\ncannot write {path}: {e}");
                73
            }
        };
    }
    if !response.columns.is_empty() && !silent {
        let _ = writeln!(out, "{}", response.columns.join("\t"));
    }
    for row in &response.rows {
        let _ = writeln!(out, "{}", row.join("\t"));
    }
    if !response.text.is_empty() {
        let _ = writeln!(out, "{}", response.text);
    }
    0
}

/// `await_startup [--timeout SECS]`: waits until the broker answers on its
/// ctl socket (it is created once the listeners are up), as rabbitmqctl's;
/// 0 once it does, 69 after the timeout (default 300 s).
fn await_startup(data_dir: Option<PathBuf>, args: &[String]) -> i32 {
    let timeout = match args {
        [] => 300,
        [flag, secs] if flag == "--timeout" || flag == "-t" => match secs.parse::<u64>() {
            Ok(s) => s,
            Err(_) => {
                eprintln!(
                    "Error:
await_startup --timeout takes a number of seconds"
                );
                return 64;
            }
        },
        _ => {
            eprintln!(
                "Error:
usage: warren ctl await_startup [--timeout SECS]"
            );
            return 64;
        }
    };
    let socket = data_dir.unwrap_or_else(warren_node::config::default_data_dir).join(SOCKET_NAME);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let ask = Request { command: "status".into(), vhost: "/".into(), args: Vec::new() };
    loop {
        if let Ok(r) = call(&socket, &ask) {
            if r.exit == 0 {
                return 0;
            }
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "Error:
the broker at {} did not start within {timeout} s",
                socket.display()
            );
            return 69;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn call(socket: &Path, req: &Request) -> std::io::Result<Response> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(|e| {
        warn!(error = %e, "bad reply");
        std::io::Error::other(format!("bad reply from the broker: {e}"))
    })
}
