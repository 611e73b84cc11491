//! Queues: list, declare, delete, purge, actions, their bindings; getting messages (`messages.rs`).

use super::messages::get_messages;
use super::*;

pub(super) fn route(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    match (seg, m.clone()) {
        (["queues"], _) if get => Ok(queues(shared, call, None)),
        (["queues", vh], _) if get => {
            use_vhost(shared, call, vh)?;
            Ok(queues(shared, call, Some(vh)))
        }
        (["queues", vh, name], _) => {
            let v = use_vhost(shared, call, vh)?;
            match *m {
                Method::GET => {
                    let q = v.queue(name).map_err(amqp_error)?;
                    let mut j = objects::queue(&q);
                    let consumers: Vec<Value> =
                        q.consumers().iter().map(|(c, active)| objects::consumer(shared, &q, c, *active)).collect();
                    j["consumer_details"] = Value::Array(consumers);
                    Ok(ok(&j))
                }
                Method::PUT => {
                    let body = call.json_body()?;
                    short_name("queue", name)?;
                    check(shared, call, vh, Resource::Queue, name, Access::Configure)?;
                    if name.is_empty() || name.starts_with("amq.") {
                        return Err(bad_request(format!("queue name '{name}' contains reserved prefix 'amq.'")));
                    }
                    let existed = v.queue(name).is_ok();
                    v.declare_queue(
                        0,
                        name,
                        false,
                        flag(&body, "durable", true),
                        false,
                        flag(&body, "auto_delete", false),
                        arguments(&body)?,
                    )
                    .map_err(amqp_error)?;
                    Ok(created(existed))
                }
                Method::DELETE => {
                    check(shared, call, vh, Resource::Queue, name, Access::Configure)?;
                    v.queue(name).map_err(amqp_error)?;
                    let if_unused = call.param("if-unused") == Some("true");
                    let if_empty = call.param("if-empty") == Some("true");
                    v.delete_queue(u64::MAX, name, if_unused, if_empty).map_err(amqp_error)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (["queues", vh, name, "contents"], Method::DELETE) => {
            let v = use_vhost(shared, call, vh)?;
            check(shared, call, vh, Resource::Queue, name, Access::Read)?;
            v.queue(name).map_err(amqp_error)?.purge();
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (["queues", vh, name, "get"], Method::POST) => get_messages(shared, call, vh, name),
        (["queues", vh, name, "actions"], Method::POST) => {
            let v = use_vhost(shared, call, vh)?;
            v.queue(name).map_err(amqp_error)?;
            match text(&call.json_body()?, "action") {
                "sync" | "cancel_sync" => Ok(empty(StatusCode::NO_CONTENT)),
                other => Err(bad_request(format!("unknown action '{other}'"))),
            }
        }
        (["queues", vh, name, "bindings"], _) if get => {
            let v = use_vhost(shared, call, vh)?;
            v.queue(name).map_err(amqp_error)?;
            let rows: Vec<BindingRow> = crate::views::bindings(&v)
                .into_iter()
                .filter(|b| b.destination_type == "queue" && b.destination == *name)
                .collect();
            Ok(list(call, rows, objects::binding))
        }

        // Bindings.
        _ => Ok(not_found()),
    }
}

pub(super) fn queues(shared: &Arc<Node>, call: &Call, vh: Option<&str>) -> Reply {
    let mut rows = Vec::new();
    for v in visible_vhosts(shared, call, vh) {
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        rows.extend(qs);
    }
    list_named(call, rows, |q| q.name.as_str(), |q| objects::queue(q))
}
