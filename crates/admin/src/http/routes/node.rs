//! The node: overview, whoami, nodes and their memory, health checks, the aliveness test.

use super::*;

pub(super) fn route(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    match (seg, m.clone()) {
        (["overview"], _) if get => Ok(ok(&objects::overview(shared, &call.user, objects::Ages::from_call(call)))),
        (["cluster-name"], _) if get => Ok(ok(&json!({"name": node_name()}))),
        (["whoami"], _) if get => Ok(ok(&json!({"name": call.user.name, "tags": call.user.tags}))),
        (["extensions"], _) if get => Ok(ok(&json!([]))),
        (["nodes"], _) if get => {
            call.user.require_monitor()?;
            Ok(ok(&json!([objects::node(shared)])))
        }
        (["nodes", name], _) if get => {
            call.user.require_monitor()?;
            if *name != node_name() {
                return Ok(not_found());
            }
            Ok(ok(&objects::node(shared)))
        }
        (["nodes", name, "memory"], _) if get => {
            call.user.require_monitor()?;
            if *name != node_name() {
                return Ok(not_found());
            }
            Ok(ok(&json!({"memory": objects::memory(shared)})))
        }

        // Connections and channels.
        (["aliveness-test", vh], _) if get => aliveness(shared, call, vh),
        (["health", "checks", "alarms" | "local-alarms"], _) if get => {
            call.user.require_monitor()?;
            match shared.alarms.current.borrow().clone() {
                None => Ok(ok(&json!({"status": "ok"}))),
                Some(reason) => {
                    let resource = if reason.contains("memory") { "memory" } else { "disk" };
                    Ok(json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({
                            "status": "failed",
                            "reason": "There are alarms in effect in the cluster",
                            "alarms": [{"node": node_name(), "resource": resource}],
                        }),
                    ))
                }
            }
        }
        (["health", "checks", "port-listener", port], _) if get => {
            call.user.require_monitor()?;
            let mut ports = vec![shared.config.amqp_addr().port()];
            ports.extend(shared.config.amqps_listen.map(|a| a.port()));
            ports.extend(shared.http_listen().map(|a| a.port()));
            let Ok(p) = port.parse::<u16>() else { return Err(bad_request(format!("invalid port '{port}'"))) };
            if ports.contains(&p) {
                Ok(ok(&json!({"status": "ok", "port": p})))
            } else {
                Ok(json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "failed", "reason": format!("No active listener on port {p}"), "missing": p, "ports": ports}),
                ))
            }
        }
        (["health", "checks", "virtual-hosts"], _) if get => {
            call.user.require_monitor()?;
            Ok(ok(&json!({"status": "ok"})))
        }
        (["health", "checks", "node-is-quorum-critical" | "node-is-mirror-sync-critical"], _) if get => {
            Ok(ok(&json!({"status": "ok"})))
        }
        (["health", "checks", "protocol-listener", proto], _) if get => {
            call.user.require_monitor()?;
            let on = match *proto {
                "amqp" | "amqp091" | "amqp0.9.1" | "amqp0-9-1" => true,
                "amqps" | "amqp/ssl" => shared.config.amqps_listen.is_some(),
                "http" => shared.http_listen().is_some(),
                _ => false,
            };
            if on {
                Ok(ok(&json!({"status": "ok", "protocol": proto})))
            } else {
                Ok(json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "failed", "reason": format!("No active listener for protocol {proto}"), "missing": proto}),
                ))
            }
        }
        _ => Ok(not_found()),
    }
}

pub(super) fn aliveness(shared: &Node, call: &Call, vh: &str) -> Result {
    let v = use_vhost(shared, call, vh)?;
    const NAME: &str = "aliveness-test";
    v.declare_queue(0, NAME, false, false, false, false, Default::default()).map_err(amqp_error)?;
    let q = v.queue(NAME).map_err(amqp_error)?;
    let props = amq_protocol::protocol::basic::AMQPProperties::default();
    let msg = Arc::new(warren_core::Message::new(
        Arc::from(""),
        Arc::from(NAME),
        warren_protocol::content::encode_properties(&props),
        props,
        Bytes::from_static(b"test_message"),
    ));
    let mut queues = vec![q.clone()];
    v.enqueue(msg, &mut queues);
    match q.get(true) {
        Some((e, _)) if e.message.body == b"test_message"[..] => Ok(ok(&json!({"status": "ok"}))),
        _ => Ok(json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "failed", "reason": "the test message did not come back"}),
        )),
    }
}
