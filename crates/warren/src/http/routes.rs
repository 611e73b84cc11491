//! The API's paths, as RabbitMQ's management plugin serves them, and what
//! each method on them does.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Map, Value};
use warren_core::arguments::table_from_json;
use warren_core::auth::{Access, Resource};
use warren_core::broker::AdminError;
use warren_core::{AmqpError, VHost};

use super::auth::not_authorised;
use super::objects::{self, BindingRow};
use super::query::{list, list_named};
use super::{bad_request, empty, error, json, not_found, ok, Call, Reply};
use crate::server::Shared;

type Result<T = Reply> = std::result::Result<T, Reply>;

pub fn route(shared: &Arc<Shared>, call: &Call) -> Reply {
    dispatch(shared, call).unwrap_or_else(|r| r)
}

fn method_not_allowed() -> Reply {
    error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method Not Allowed")
}

/// An AMQP error from the broker, as the API reports it.
fn amqp_error(e: AmqpError) -> Reply {
    let text = e.text.to_string();
    match e.code() {
        404 => not_found(),
        // RabbitMQ does not say which permission is missing here.
        403 => not_authorised("Access refused."),
        _ => bad_request(text),
    }
}

fn admin_error(e: AdminError) -> Reply {
    bad_request(e.message)
}

fn vhost(shared: &Shared, name: &str) -> Result<Arc<VHost>> {
    shared.broker.vhost(name).ok_or_else(not_found)
}

/// The vhost named in the path, which the caller must be allowed to use.
fn use_vhost(shared: &Shared, call: &Call, name: &str) -> Result<Arc<VHost>> {
    let v = vhost(shared, name)?;
    call.user.require_vhost(shared, name)?;
    Ok(v)
}

/// The caller's AMQP permission on a resource (administrators too, as RabbitMQ).
fn check(shared: &Shared, call: &Call, vhost: &str, kind: Resource, name: &str, access: Access) -> Result<()> {
    shared.broker.access().check(vhost, &call.user.name, kind, name, access).map_err(amqp_error)
}

fn flag(m: &Map<String, Value>, key: &str, default: bool) -> bool {
    match m.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => default,
    }
}

fn text<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

fn arguments(m: &Map<String, Value>) -> Result<warren_protocol::FieldTable> {
    match m.get("arguments") {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(Value::Object(a)) => Ok(table_from_json(a)),
        Some(_) => Err(bad_request("arguments must be an object")),
    }
}

/// Names are AMQP short strings: RabbitMQ's check and text.
fn short_name(kind: &str, name: &str) -> Result<()> {
    if name.len() > 255 {
        return Err(bad_request(format!("{kind} should be less than 255 bytes, actually was {}\n", name.len())));
    }
    Ok(())
}

fn created(existed: bool) -> Reply {
    empty(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED })
}

fn dispatch(shared: &Arc<Shared>, call: &Call) -> Result {
    let seg: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    let m = &call.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    match (seg.as_slice(), m.clone()) {
        ([], _) => Ok(not_found()),
        (["overview"], _) if get => Ok(ok(&objects::overview(shared, &call.user, objects::Ages::from_call(call)))),
        (["cluster-name"], _) if get => Ok(ok(&json!({"name": objects::node_name()}))),
        (["whoami"], _) if get => Ok(ok(&json!({"name": call.user.name, "tags": call.user.tags}))),
        (["extensions"], _) if get => Ok(ok(&json!([]))),
        (["nodes"], _) if get => {
            call.user.require_monitor()?;
            Ok(ok(&json!([objects::node(shared)])))
        }
        (["nodes", name], _) if get => {
            call.user.require_monitor()?;
            if *name != objects::node_name() {
                return Ok(not_found());
            }
            Ok(ok(&objects::node(shared)))
        }
        (["nodes", name, "memory"], _) if get => {
            call.user.require_monitor()?;
            if *name != objects::node_name() {
                return Ok(not_found());
            }
            Ok(ok(&json!({"memory": objects::memory(shared)})))
        }

        // Connections and channels.
        (["connections"], _) if get => Ok(connections(shared, call, None)),
        (["vhosts", vh, "connections"], _) if get => {
            use_vhost(shared, call, vh)?;
            Ok(connections(shared, call, Some(vh)))
        }
        (["connections", name], _) => {
            let c = find_connection(shared, call, name)?;
            match *m {
                Method::GET => Ok(ok(&objects::connection(shared, &c))),
                Method::DELETE => {
                    let reason = call
                        .headers
                        .get("x-reason")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("Closed via management plugin")
                        .to_owned();
                    c.force_close(reason);
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (["connections", name, "channels"], _) if get => {
            let c = find_connection(shared, call, name)?;
            let chans: Vec<_> = c.channel_list.lock().iter().map(|ch| (c.clone(), ch.clone())).collect();
            let sh = shared.clone();
            Ok(list(call, chans, move |(c, ch)| objects::channel(&sh, c, ch)))
        }
        (["channels"], _) if get => Ok(channels(shared, call, None)),
        (["vhosts", vh, "channels"], _) if get => {
            use_vhost(shared, call, vh)?;
            Ok(channels(shared, call, Some(vh)))
        }
        (["channels", name], _) if get => {
            for (c, ch) in all_channels(shared, call, None) {
                if objects::channel_name(shared, &c, &ch) == *name {
                    return Ok(ok(&objects::channel(shared, &c, &ch)));
                }
            }
            Ok(not_found())
        }
        (["consumers"], _) if get => Ok(consumers(shared, call, None)),
        (["consumers", vh], _) if get => {
            use_vhost(shared, call, vh)?;
            Ok(consumers(shared, call, Some(vh)))
        }

        // Exchanges.
        (["exchanges"], _) if get => Ok(exchanges(shared, call, None)),
        (["exchanges", vh], _) if get => {
            use_vhost(shared, call, vh)?;
            Ok(exchanges(shared, call, Some(vh)))
        }
        (["exchanges", vh, name], _) => {
            let v = use_vhost(shared, call, vh)?;
            let name = if *name == "amq.default" { "" } else { *name };
            match *m {
                Method::GET => {
                    let x = v.exchange(name).map_err(amqp_error)?;
                    let mut j = objects::exchange(&x, vh);
                    if x.delayed {
                        j["messages_delayed"] = v.delayed.count_for(&x.name).into();
                    }
                    Ok(ok(&j))
                }
                Method::PUT => {
                    let body = call.json_body()?;
                    short_name("exchange", name)?;
                    check(shared, call, vh, Resource::Exchange, name, Access::Configure)?;
                    let existed = v.exchange(name).is_ok();
                    let kind = match text(&body, "type") {
                        "" => return Err(bad_request("[{key_missing,type}]")),
                        k => k,
                    };
                    v.declare_exchange(
                        name,
                        kind,
                        false,
                        flag(&body, "durable", true),
                        flag(&body, "auto_delete", false),
                        flag(&body, "internal", false),
                        arguments(&body)?,
                    )
                    .map_err(amqp_error)?;
                    Ok(created(existed))
                }
                Method::DELETE => {
                    check(shared, call, vh, Resource::Exchange, name, Access::Configure)?;
                    v.exchange(name).map_err(amqp_error)?;
                    v.delete_exchange(name, call.param("if-unused") == Some("true")).map_err(amqp_error)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (["exchanges", vh, name, "bindings", dir @ ("source" | "destination")], _) if get => {
            let v = use_vhost(shared, call, vh)?;
            let name = if *name == "amq.default" { "" } else { *name };
            v.exchange(name).map_err(amqp_error)?;
            let rows: Vec<BindingRow> = objects::bindings(&v)
                .into_iter()
                .filter(|b| {
                    if *dir == "source" {
                        b.source == name
                    } else {
                        b.destination_type == "exchange" && b.destination == name
                    }
                })
                .collect();
            Ok(list(call, rows, objects::binding))
        }

        // Queues.
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
            let rows: Vec<BindingRow> = objects::bindings(&v)
                .into_iter()
                .filter(|b| b.destination_type == "queue" && b.destination == *name)
                .collect();
            Ok(list(call, rows, objects::binding))
        }

        // Bindings.
        (["bindings"], _) if get => {
            let rows: Vec<BindingRow> = objects::vhosts(shared)
                .iter()
                .filter(|v| call.user.sees_vhost(shared, &v.name))
                .flat_map(|v| objects::bindings(v))
                .collect();
            Ok(list(call, rows, objects::binding))
        }
        (["bindings", vh], _) if get => {
            let v = use_vhost(shared, call, vh)?;
            Ok(list(call, objects::bindings(&v), objects::binding))
        }
        (["bindings", vh, "e", src, kind @ ("q" | "e"), dst], _) => {
            let v = use_vhost(shared, call, vh)?;
            let dest_type = if *kind == "q" { "queue" } else { "exchange" };
            let rows = matching_bindings(&v, src, dest_type, dst)?;
            match *m {
                Method::GET => Ok(list(call, rows, objects::binding)),
                Method::POST => {
                    let body = call.json_body()?;
                    let key = text(&body, "routing_key").to_owned();
                    let args = arguments(&body)?;
                    let args_json = warren_core::arguments::table_to_json(&args);
                    if *kind == "q" {
                        check(shared, call, vh, Resource::Queue, dst, Access::Write)?;
                        check(shared, call, vh, Resource::Exchange, src, Access::Read)?;
                        v.bind_queue(u64::MAX, dst, src, &key, args).map_err(amqp_error)?;
                    } else {
                        check(shared, call, vh, Resource::Exchange, dst, Access::Write)?;
                        check(shared, call, vh, Resource::Exchange, src, Access::Read)?;
                        v.bind_exchange(dst, src, &key, args).map_err(amqp_error)?;
                    }
                    let mut r = empty(StatusCode::CREATED);
                    let props = objects::properties_key(&key, &args_json);
                    if let Ok(loc) = hyper::header::HeaderValue::from_str(&super::query::percent_encode(&props)) {
                        r.headers_mut().insert(hyper::header::LOCATION, loc);
                    }
                    Ok(r)
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (["bindings", vh, "e", src, kind @ ("q" | "e"), dst, props], _) => {
            let v = use_vhost(shared, call, vh)?;
            let dest_type = if *kind == "q" { "queue" } else { "exchange" };
            let rows = matching_bindings(&v, src, dest_type, dst)?;
            let Some(b) = rows.into_iter().find(|b| objects::properties_key(&b.routing_key, &b.arguments) == *props)
            else {
                return Ok(not_found());
            };
            match *m {
                Method::GET => Ok(ok(&objects::binding(&b))),
                Method::DELETE => {
                    let args = match &b.arguments {
                        Value::Object(a) => table_from_json(a),
                        _ => Default::default(),
                    };
                    if *kind == "q" {
                        check(shared, call, vh, Resource::Queue, dst, Access::Write)?;
                        check(shared, call, vh, Resource::Exchange, src, Access::Read)?;
                        v.unbind_queue(u64::MAX, dst, src, &b.routing_key, &args).map_err(amqp_error)?;
                    } else {
                        check(shared, call, vh, Resource::Exchange, dst, Access::Write)?;
                        check(shared, call, vh, Resource::Exchange, src, Access::Read)?;
                        v.unbind_exchange(dst, src, &b.routing_key, &args).map_err(amqp_error)?;
                    }
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Ok(method_not_allowed()),
            }
        }

        // Vhosts, users, permissions, limits.
        (["vhosts"], _) if get => {
            let list_v: Vec<_> =
                objects::vhosts(shared).into_iter().filter(|v| call.user.sees_vhost(shared, &v.name)).collect();
            let rendered = objects::vhosts_json(shared, list_v, objects::Ages::from_call(call));
            Ok(list(call, rendered, |v| v.clone()))
        }
        (["vhosts", vh], _) => match *m {
            Method::GET | Method::HEAD => {
                call.user.require_admin()?;
                Ok(ok(&objects::vhost(shared, &*vhost(shared, vh)?, objects::Ages::from_call(call))))
            }
            Method::PUT => {
                call.user.require_admin()?;
                let existed = shared.broker.vhost(vh).is_some();
                shared.broker.add_vhost(vh).map_err(admin_error)?;
                Ok(created(existed))
            }
            Method::DELETE => {
                call.user.require_admin()?;
                vhost(shared, vh)?;
                shared.broker.delete_vhost(vh).map_err(admin_error)?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            _ => Ok(method_not_allowed()),
        },
        (["vhosts", vh, "permissions"], _) if get => {
            call.user.require_admin()?;
            vhost(shared, vh)?;
            Ok(ok(&permissions(shared, |v, _| v == *vh)))
        }
        (["vhosts", vh, "topic-permissions"], _) if get => {
            call.user.require_admin()?;
            vhost(shared, vh)?;
            Ok(ok(&topic_permissions(shared, |v, _| v == *vh)))
        }
        (["users"], _) if get => {
            call.user.require_admin()?;
            Ok(ok(&users(shared, |_| true)))
        }
        (["users", "without-permissions"], _) if get => {
            call.user.require_admin()?;
            let ac = shared.broker.access();
            let with: std::collections::HashSet<String> = ac.permissions.keys().map(|(_, u)| u.clone()).collect();
            drop(ac);
            Ok(ok(&users(shared, |u| !with.contains(u))))
        }
        (["users", "bulk-delete"], Method::POST) => {
            call.user.require_admin()?;
            let body = call.json_body()?;
            for u in body.get("users").and_then(Value::as_array).into_iter().flatten() {
                if let Some(u) = u.as_str() {
                    let _ = shared.broker.delete_user(u);
                }
            }
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (["users", name], _) => {
            call.user.require_admin()?;
            match *m {
                Method::GET | Method::HEAD => {
                    let found = users(shared, |u| u == *name);
                    match found.as_array().and_then(|a| a.first()) {
                        Some(u) => Ok(ok(u)),
                        None => Ok(not_found()),
                    }
                }
                Method::PUT => put_user(shared, call, name),
                Method::DELETE => {
                    if !shared.broker.access().users.contains_key(*name) {
                        return Ok(not_found());
                    }
                    shared.broker.delete_user(name).map_err(admin_error)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (["users", name, "permissions"], _) if get => {
            call.user.require_admin()?;
            Ok(ok(&permissions(shared, |_, u| u == *name)))
        }
        (["users", name, "topic-permissions"], _) if get => {
            call.user.require_admin()?;
            Ok(ok(&topic_permissions(shared, |_, u| u == *name)))
        }
        (["permissions"], _) if get => {
            call.user.require_admin()?;
            Ok(ok(&permissions(shared, |_, _| true)))
        }
        (["permissions", vh, user], _) => {
            call.user.require_admin()?;
            match *m {
                Method::GET | Method::HEAD => {
                    let p = permissions(shared, |v, u| v == *vh && u == *user);
                    match p.as_array().and_then(|a| a.first()) {
                        Some(p) => Ok(ok(p)),
                        None => Ok(not_found()),
                    }
                }
                Method::PUT => {
                    let body = call.json_body()?;
                    vhost(shared, vh)?;
                    let existed = shared.broker.access().permissions.contains_key(&(vh.to_string(), user.to_string()));
                    shared
                        .broker
                        .set_permissions(vh, user, text(&body, "configure"), text(&body, "write"), text(&body, "read"))
                        .map_err(admin_error)?;
                    Ok(created(existed))
                }
                Method::DELETE => {
                    if !shared.broker.access().permissions.contains_key(&(vh.to_string(), user.to_string())) {
                        return Ok(not_found());
                    }
                    shared.broker.clear_permissions(vh, user).map_err(admin_error)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (["topic-permissions"], _) if get => {
            call.user.require_admin()?;
            Ok(ok(&topic_permissions(shared, |_, _| true)))
        }
        (["topic-permissions", vh, user], _) => {
            call.user.require_admin()?;
            match *m {
                Method::GET | Method::HEAD => {
                    let p = topic_permissions(shared, |v, u| v == *vh && u == *user);
                    if p.as_array().is_some_and(|a| a.is_empty()) {
                        return Ok(not_found());
                    }
                    Ok(ok(&p))
                }
                Method::PUT => {
                    let body = call.json_body()?;
                    vhost(shared, vh)?;
                    let exchange = text(&body, "exchange");
                    shared
                        .broker
                        .set_topic_permissions(vh, user, exchange, text(&body, "write"), text(&body, "read"))
                        .map_err(admin_error)?;
                    Ok(empty(StatusCode::CREATED))
                }
                Method::DELETE => {
                    shared.broker.clear_topic_permissions(vh, user, None).map_err(admin_error)?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (["vhost-limits"], _) if get => {
            call.user.require_monitor()?;
            Ok(ok(&vhost_limits(shared, None)))
        }
        (["vhost-limits", vh], _) if get => {
            use_vhost(shared, call, vh)?;
            Ok(ok(&vhost_limits(shared, Some(vh))))
        }
        (["vhost-limits", vh, limit], _) => {
            call.user.require_admin()?;
            vhost(shared, vh)?;
            let current = shared.broker.access().vhosts.get(*vh).cloned().unwrap_or_default();
            let mut doc = serde_json::to_value(current).unwrap_or_else(|_| json!({}));
            let map = doc.as_object_mut().ok_or_else(|| bad_request("limits"))?;
            match *m {
                Method::PUT => {
                    let body = call.json_body()?;
                    let value = body.get("value").cloned().ok_or_else(|| bad_request("[{key_missing,value}]"))?;
                    map.insert(limit.to_string(), value);
                }
                Method::DELETE => {
                    map.remove(*limit);
                }
                _ => return Ok(method_not_allowed()),
            }
            let limits: warren_core::auth::VHostLimits = serde_json::from_value(doc)
                .map_err(|e| bad_request(format!("Validation failed: {e} (known: max-connections, max-queues)")))?;
            shared.broker.set_vhost_limits(vh, limits).map_err(admin_error)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }

        // Policies.
        ([kind @ ("policies" | "operator-policies")], _) if get => {
            let operator = *kind == "operator-policies";
            Ok(ok(&policies(shared, operator, |p| call.user.sees_vhost(shared, &p.vhost))))
        }
        ([kind @ ("policies" | "operator-policies"), vh], _) if get => {
            use_vhost(shared, call, vh)?;
            let operator = *kind == "operator-policies";
            Ok(ok(&policies(shared, operator, |p| p.vhost == *vh)))
        }
        ([kind @ ("policies" | "operator-policies"), vh, name], _) => {
            use_vhost(shared, call, vh)?;
            let operator = *kind == "operator-policies";
            match *m {
                Method::GET | Method::HEAD => {
                    let found = policies(shared, operator, |p| p.vhost == *vh && p.name == *name);
                    match found.as_array().and_then(|a| a.first()) {
                        Some(p) => Ok(ok(p)),
                        None => Ok(not_found()),
                    }
                }
                Method::PUT => {
                    may_set_policies(call, operator)?;
                    let body = call.json_body()?;
                    let Some(pattern) = body.get("pattern").and_then(Value::as_str) else {
                        return Err(bad_request("[{key_missing,pattern}]"));
                    };
                    let Some(definition) = body.get("definition") else {
                        return Err(bad_request("[{key_missing,definition}]"));
                    };
                    let definition = definition.as_object().cloned().unwrap_or_default();
                    let priority = match body.get("priority") {
                        None | Some(Value::Null) => 0,
                        Some(v) => match v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
                            Some(n) => n,
                            None => {
                                return Err(bad_request(format!(
                                    "Validation failed\n\npriority should be a number, actually was {v}\n"
                                )))
                            }
                        },
                    };
                    let apply_to = body.get("apply-to").and_then(Value::as_str).unwrap_or("all");
                    let existed = {
                        let ac = shared.broker.access();
                        let map = if operator { &ac.operator_policies } else { &ac.policies };
                        map.contains_key(&(vh.to_string(), name.to_string()))
                    };
                    shared
                        .broker
                        .set_policy(vh, name, pattern, apply_to, priority, definition, operator)
                        .map_err(admin_error)?;
                    Ok(created(existed))
                }
                Method::DELETE => {
                    may_set_policies(call, operator)?;
                    match shared.broker.clear_policy(vh, name, operator) {
                        Ok(()) => Ok(empty(StatusCode::NO_CONTENT)),
                        Err(_) => Ok(not_found()),
                    }
                }
                _ => Ok(method_not_allowed()),
            }
        }
        (["parameters"] | ["global-parameters"], _) if get => Ok(ok(&json!([]))),
        (["parameters", "operator_policy"], _) if get => {
            call.user.require_admin()?;
            Ok(ok(&operator_policy_parameters(shared, None)))
        }
        (["parameters", "operator_policy", vh], _) if get => {
            call.user.require_admin()?;
            Ok(ok(&operator_policy_parameters(shared, Some(vh))))
        }
        (["parameters", _component], _) if get => Ok(ok(&json!([]))),
        (["parameters", _component, vh], _) if get => {
            use_vhost(shared, call, vh)?;
            Ok(ok(&json!([])))
        }

        // Definitions.
        (["definitions"], _) => {
            call.user.require_admin()?;
            match *m {
                Method::GET | Method::HEAD => Ok(ok(&shared.broker.export_definitions())),
                Method::POST => import(shared, call, None),
                _ => Ok(method_not_allowed()),
            }
        }
        (["definitions", vh], _) => {
            call.user.require_admin()?;
            vhost(shared, vh)?;
            match *m {
                Method::GET | Method::HEAD => Ok(ok(&vhost_definitions(shared, vh))),
                Method::POST => import(shared, call, Some(vh)),
                _ => Ok(method_not_allowed()),
            }
        }

        // Health.
        (["aliveness-test", vh], _) if get => aliveness(shared, call, vh),
        (["health", "checks", "alarms" | "local-alarms"], _) if get => {
            call.user.require_monitor()?;
            match shared.alarm.borrow().clone() {
                None => Ok(ok(&json!({"status": "ok"}))),
                Some(reason) => {
                    let resource = if reason.contains("memory") { "memory" } else { "disk" };
                    Ok(json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({
                            "status": "failed",
                            "reason": "There are alarms in effect in the cluster",
                            "alarms": [{"node": objects::node_name(), "resource": resource}],
                        }),
                    ))
                }
            }
        }
        (["health", "checks", "port-listener", port], _) if get => {
            call.user.require_monitor()?;
            let mut ports = vec![shared.config.amqp_listen.port()];
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

/// Policies need the `policymaker` tag; operator policies, `administrator`.
fn may_set_policies(call: &Call, operator: bool) -> Result<()> {
    if operator {
        call.user.require_admin()
    } else if call.user.policymaker {
        Ok(())
    } else {
        Err(not_authorised("Not policymaker"))
    }
}

fn policies(shared: &Shared, operator: bool, keep: impl Fn(&warren_core::policy::Policy) -> bool) -> Value {
    let ac = shared.broker.access();
    let map = if operator { &ac.operator_policies } else { &ac.policies };
    Value::Array(map.values().filter(|p| keep(p)).map(|p| p.to_json()).collect())
}

fn operator_policy_parameters(shared: &Shared, vh: Option<&str>) -> Value {
    let doc = shared.broker.access().to_json();
    let all = doc.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
    Value::Array(
        all.into_iter().filter(|p| vh.is_none_or(|v| p.get("vhost").and_then(Value::as_str) == Some(v))).collect(),
    )
}

fn connections_of(shared: &Shared, call: &Call, vh: Option<&str>) -> Vec<Arc<crate::connection::ConnInfo>> {
    let mut conns: Vec<_> = shared
        .connections
        .lock()
        .values()
        .filter(|c| call.user.sees_user(&c.user) && vh.is_none_or(|v| c.vhost == v))
        .cloned()
        .collect();
    conns.sort_by_key(|c| c.id);
    conns
}

fn connections(shared: &Arc<Shared>, call: &Call, vh: Option<&str>) -> Reply {
    let sh = shared.clone();
    list(call, connections_of(shared, call, vh), move |c| objects::connection(&sh, c))
}

fn find_connection(shared: &Shared, call: &Call, name: &str) -> Result<Arc<crate::connection::ConnInfo>> {
    connections_of(shared, call, None)
        .into_iter()
        .find(|c| c.name(shared.config.amqp_listen) == name)
        .ok_or_else(not_found)
}

type ChannelPair = (Arc<crate::connection::ConnInfo>, Arc<crate::channel::ChannelInfo>);

fn all_channels(shared: &Shared, call: &Call, vh: Option<&str>) -> Vec<ChannelPair> {
    let mut out = Vec::new();
    for c in connections_of(shared, call, vh) {
        let mut chans: Vec<_> = c.channel_list.lock().clone();
        chans.sort_by_key(|ch| ch.number);
        out.extend(chans.into_iter().map(|ch| (c.clone(), ch)));
    }
    out
}

fn channels(shared: &Arc<Shared>, call: &Call, vh: Option<&str>) -> Reply {
    let sh = shared.clone();
    list(call, all_channels(shared, call, vh), move |(c, ch)| objects::channel(&sh, c, ch))
}

fn visible_vhosts(shared: &Shared, call: &Call, vh: Option<&str>) -> Vec<Arc<VHost>> {
    objects::vhosts(shared)
        .into_iter()
        .filter(|v| vh.is_none_or(|n| v.name == n) && (vh.is_some() || call.user.sees_vhost(shared, &v.name)))
        .collect()
}

fn consumers(shared: &Arc<Shared>, call: &Call, vh: Option<&str>) -> Reply {
    let mut rows = Vec::new();
    for v in visible_vhosts(shared, call, vh) {
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        for q in qs {
            for (c, active) in q.consumers() {
                rows.push((q.clone(), c, active));
            }
        }
    }
    let sh = shared.clone();
    list(call, rows, move |(q, c, active)| objects::consumer(&sh, q, c, *active))
}

fn exchanges(shared: &Arc<Shared>, call: &Call, vh: Option<&str>) -> Reply {
    let mut rows = Vec::new();
    for v in visible_vhosts(shared, call, vh) {
        let mut xs = v.exchanges();
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        rows.extend(xs.into_iter().map(|x| (v.name.clone(), x)));
    }
    list_named(call, rows, |(_, x)| x.name.as_str(), |(vh, x)| objects::exchange(x, vh))
}

fn queues(shared: &Arc<Shared>, call: &Call, vh: Option<&str>) -> Reply {
    let mut rows = Vec::new();
    for v in visible_vhosts(shared, call, vh) {
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        rows.extend(qs);
    }
    list_named(call, rows, |q| q.name.as_str(), |q| objects::queue(q))
}

fn matching_bindings(v: &VHost, src: &str, dest_type: &str, dst: &str) -> Result<Vec<BindingRow>> {
    let src = if src == "amq.default" { "" } else { src };
    v.exchange(src).map_err(amqp_error)?;
    if dest_type == "queue" {
        v.queue(dst).map_err(amqp_error)?;
    } else {
        v.exchange(dst).map_err(amqp_error)?;
    }
    Ok(objects::bindings(v)
        .into_iter()
        .filter(|b| b.source == src && b.destination_type == dest_type && b.destination == dst)
        .collect())
}

fn users(shared: &Shared, keep: impl Fn(&str) -> bool) -> Value {
    let ac = shared.broker.access();
    Value::Array(
        ac.users
            .values()
            .filter(|u| keep(&u.name))
            .map(|u| {
                json!({
                    "name": u.name,
                    "password_hash": u.password_hash,
                    "hashing_algorithm": u.hashing_algorithm,
                    "tags": u.tags,
                    "limits": serde_json::to_value(u.limits).unwrap_or_else(|_| json!({})),
                })
            })
            .collect(),
    )
}

fn put_user(shared: &Shared, call: &Call, name: &str) -> Result {
    let body = call.json_body()?;
    let tags: Vec<String> = match body.get("tags") {
        Some(Value::String(s)) => s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    let existed = shared.broker.access().users.contains_key(name);
    if let Some(hash) = body.get("password_hash").and_then(Value::as_str) {
        let algorithm =
            body.get("hashing_algorithm").and_then(Value::as_str).unwrap_or("rabbit_password_hashing_sha256");
        let doc =
            json!({"users": [{"name": name, "password_hash": hash, "hashing_algorithm": algorithm, "tags": tags}]});
        shared.broker.import_definitions(&doc).map_err(admin_error)?;
        return Ok(created(existed));
    }
    match body.get("password").and_then(Value::as_str) {
        Some(p) if existed => shared.broker.change_password(name, p).map_err(admin_error)?,
        Some(p) => shared.broker.add_user(name, p).map_err(admin_error)?,
        None if existed => {}
        None => return Err(bad_request("[{key_missing,password}]")),
    }
    shared.broker.set_user_tags(name, &tags).map_err(admin_error)?;
    Ok(created(existed))
}

fn permissions(shared: &Shared, keep: impl Fn(&str, &str) -> bool) -> Value {
    let ac = shared.broker.access();
    Value::Array(
        ac.permissions
            .iter()
            .filter(|((v, u), _)| keep(v, u))
            .map(|((v, u), p)| json!({"user": u, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read}))
            .collect(),
    )
}

fn topic_permissions(shared: &Shared, keep: impl Fn(&str, &str) -> bool) -> Value {
    let ac = shared.broker.access();
    Value::Array(
        ac.topic_permissions
            .iter()
            .filter(|((v, u, _), _)| keep(v, u))
            .map(|((v, u, x), p)| json!({"user": u, "vhost": v, "exchange": x, "write": p.write, "read": p.read}))
            .collect(),
    )
}

fn vhost_limits(shared: &Shared, vh: Option<&str>) -> Value {
    let ac = shared.broker.access();
    Value::Array(
        ac.vhosts
            .iter()
            .filter(|(v, l)| vh.is_none_or(|n| n == v.as_str()) && **l != Default::default())
            .map(|(v, l)| json!({"vhost": v, "value": l}))
            .collect(),
    )
}

fn vhost_definitions(shared: &Shared, vh: &str) -> Value {
    let all = shared.broker.export_definitions();
    let of_vhost = |key: &str| -> Value {
        let items = all.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
        Value::Array(
            items
                .into_iter()
                .filter(|i| i.get("vhost").and_then(Value::as_str) == Some(vh))
                .map(|mut i| {
                    if let Some(o) = i.as_object_mut() {
                        o.remove("vhost");
                    }
                    i
                })
                .collect(),
        )
    };
    json!({
        "rabbit_version": "3.10.0",
        "warren_version": env!("CARGO_PKG_VERSION"),
        "exchanges": of_vhost("exchanges"),
        "queues": of_vhost("queues"),
        "bindings": of_vhost("bindings"),
        "policies": of_vhost("policies"),
        "parameters": of_vhost("parameters"),
    })
}

fn import(shared: &Shared, call: &Call, vh: Option<&str>) -> Result {
    // rabbitmqadmin posts JSON; the UI posts a form with a file.
    let mut doc: Value = serde_json::from_slice(&call.body).map_err(|_| bad_request("not_json"))?;
    if let (Some(vh), Some(o)) = (vh, doc.as_object_mut()) {
        // A vhost's definitions name no vhost: everything goes into this one.
        for key in ["exchanges", "queues", "bindings", "policies", "parameters"] {
            if let Some(Value::Array(items)) = o.get_mut(key) {
                for i in items {
                    if let Some(io) = i.as_object_mut() {
                        io.insert("vhost".into(), vh.into());
                    }
                }
            }
        }
        for key in ["users", "vhosts", "permissions", "topic_permissions"] {
            o.remove(key);
        }
    }
    shared.broker.import_definitions(&doc).map_err(|e| bad_request(e.message))?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// How long `POST .../publish` waits for its confirm, and for a resource
/// alarm to clear, before it answers 503.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /api/exchanges/{vhost}/{name}/publish`: core's publish path, as
/// RabbitMQ's API takes it: over a one-shot channel in confirm mode with
/// `mandatory` set, answered once the message is confirmed; the channel's
/// statistics then join its vhost's as a closed channel's do. A refusal
/// the AMQP channel would get is a 400 naming its reply code and text.
/// While a resource alarm holds, the request waits as a blocked publisher
/// would (503 if it outlasts `PUBLISH_WAIT`).
pub async fn publish(shared: &Shared, call: &Call, vh: &str, name: &str) -> Reply {
    let mut alarm = shared.alarm.clone();
    let clear = alarm.wait_for(Option::is_none);
    if !matches!(tokio::time::timeout(PUBLISH_WAIT, clear).await, Ok(Ok(_))) {
        let reason = shared.alarm.borrow().clone().unwrap_or_default();
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("resource alarm: {reason}"));
    }
    let counters = warren_core::stats::Counters::default();
    let published = publish_now(shared, call, vh, name, &counters);
    if let Ok((v, pos, _)) = &published {
        // A confirm waits for the message log's sync (and, in a cluster,
        // the followers'), as an AMQP publisher's does.
        if *pos > 0 && shared.broker.log().is_some() {
            let mut synced = shared.synced.clone();
            let wait = synced.wait_for(|s| *s >= *pos);
            if !matches!(tokio::time::timeout(PUBLISH_WAIT, wait).await, Ok(Ok(_))) {
                v.retired.add_all(&counters.snapshot());
                return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the message was not confirmed in time");
            }
        }
        counters.bump(warren_core::stats::CONFIRM, 1);
    }
    match published {
        Ok((v, _, routed)) => {
            v.retired.add_all(&counters.snapshot());
            ok(&json!({ "routed": routed }))
        }
        Err((v, reply)) => {
            if let Some(v) = v {
                v.retired.add_all(&counters.snapshot());
            }
            reply
        }
    }
}

/// The publish itself: (vhost, message-log position to sync, routed).
#[allow(clippy::type_complexity)]
fn publish_now(
    shared: &Shared,
    call: &Call,
    vh: &str,
    name: &str,
    counters: &warren_core::stats::Counters,
) -> std::result::Result<(Arc<VHost>, u64, bool), (Option<Arc<VHost>>, Reply)> {
    let v = use_vhost(shared, call, vh).map_err(|r| (None, r))?;
    let refused = |e: AmqpError| bad_request(e.to_string());
    let fail = |r: Reply| (Some(v.clone()), r);
    let body = call.json_body().map_err(fail)?;
    let x_name = if name == "amq.default" { "" } else { name };
    for key in ["routing_key", "payload", "payload_encoding", "properties"] {
        if !body.contains_key(key) {
            return Err(fail(bad_request(format!("[{{key_missing,{key}}}]"))));
        }
    }
    let payload = text(&body, "payload");
    let payload: Bytes = match text(&body, "payload_encoding") {
        "string" => Bytes::copy_from_slice(payload.as_bytes()),
        "base64" => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|_| fail(bad_request("invalid base64 payload")))?;
            Bytes::from(raw)
        }
        other => return Err(fail(bad_request(format!("invalid payload_encoding '{other}'")))),
    };
    let props = properties_from_json(body.get("properties").and_then(Value::as_object)).map_err(fail)?;
    (shared.broker.access().check(vh, &call.user.name, Resource::Exchange, x_name, Access::Write))
        .map_err(|e| fail(refused(e)))?;
    let publisher = warren_core::publish::Publisher {
        broker: &shared.broker,
        vhost: &v,
        user: &call.user.name,
        impersonator: call.user.tags.iter().any(|t| t == "impersonator"),
        topic_permissions: shared.broker.access().has_topic_permissions(vh, &call.user.name),
        stats: counters,
    };
    publisher.check_user_id(props.user_id().as_ref().map(|u| u.as_str())).map_err(|e| fail(refused(e)))?;
    let raw = warren_protocol::content::encode_properties(&props);
    let msg = Arc::new(warren_core::Message::new(
        Arc::from(x_name),
        Arc::from(text(&body, "routing_key")),
        raw,
        props,
        payload,
    ));
    let mut queues = Vec::new();
    let outcome = publisher.publish(x_name, msg, true, &mut queues).map_err(|e| fail(refused(e)))?;
    if !outcome.accepted {
        return Err(fail(bad_request("rejected Unable to publish message. Check queue limits.")));
    }
    // A delayed exchange holds the message: not routed yet (as the plugin).
    let routed = !outcome.unroutable && !outcome.delayed;
    Ok((v.clone(), outcome.pos, routed))
}

fn properties_from_json(p: Option<&Map<String, Value>>) -> Result<amq_protocol::protocol::basic::AMQPProperties> {
    use amq_protocol::protocol::basic::AMQPProperties;
    let mut props = AMQPProperties::default();
    let Some(p) = p else { return Ok(props) };
    let s = |k: &str| p.get(k).and_then(Value::as_str).map(|v| v.into());
    let n = |k: &str| p.get(k).and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())));
    if let Some(v) = s("content_type") {
        props = props.with_content_type(v);
    }
    if let Some(v) = s("content_encoding") {
        props = props.with_content_encoding(v);
    }
    if let Some(Value::Object(h)) = p.get("headers") {
        props = props.with_headers(table_from_json(h));
    }
    if let Some(v) = n("delivery_mode") {
        props = props.with_delivery_mode(v as u8);
    }
    if let Some(v) = n("priority") {
        props = props.with_priority(v.min(255) as u8);
    }
    if let Some(v) = s("correlation_id") {
        props = props.with_correlation_id(v);
    }
    if let Some(v) = s("reply_to") {
        props = props.with_reply_to(v);
    }
    if let Some(v) =
        p.get("expiration").and_then(|e| e.as_str().map(str::to_owned).or_else(|| e.as_u64().map(|n| n.to_string())))
    {
        props = props.with_expiration(v.as_str().into());
    }
    if let Some(v) = s("message_id") {
        props = props.with_message_id(v);
    }
    if let Some(v) = n("timestamp") {
        props = props.with_timestamp(v);
    }
    if let Some(v) = s("type") {
        props = props.with_type(v);
    }
    if let Some(v) = s("user_id") {
        props = props.with_user_id(v);
    }
    if let Some(v) = s("app_id") {
        props = props.with_app_id(v);
    }
    Ok(props)
}

fn properties_to_json(p: &amq_protocol::protocol::basic::AMQPProperties) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    put("content_type", p.content_type().as_ref().map(|v| v.as_str().into()));
    put("content_encoding", p.content_encoding().as_ref().map(|v| v.as_str().into()));
    put("headers", p.headers().as_ref().map(warren_core::arguments::table_to_json));
    put("delivery_mode", p.delivery_mode().map(Value::from));
    put("priority", p.priority().map(Value::from));
    put("correlation_id", p.correlation_id().as_ref().map(|v| v.as_str().into()));
    put("reply_to", p.reply_to().as_ref().map(|v| v.as_str().into()));
    put("expiration", p.expiration().as_ref().map(|v| v.as_str().into()));
    put("message_id", p.message_id().as_ref().map(|v| v.as_str().into()));
    put("timestamp", p.timestamp().map(Value::from));
    put("type", p.kind().as_ref().map(|v| v.as_str().into()));
    put("user_id", p.user_id().as_ref().map(|v| v.as_str().into()));
    put("app_id", p.app_id().as_ref().map(|v| v.as_str().into()));
    Value::Object(m)
}

fn get_messages(shared: &Shared, call: &Call, vh: &str, name: &str) -> Result {
    let v = use_vhost(shared, call, vh)?;
    // Refused as the channel refuses basic.get: RabbitMQ's API passes the
    // AMQP text on (without the reply code).
    let channel_error = |e: AmqpError| match e.code() {
        404 => error(StatusCode::NOT_FOUND, "not_found", e.text),
        _ => not_authorised(&e.text),
    };
    (shared.broker.access().check(vh, &call.user.name, Resource::Queue, name, Access::Read)).map_err(channel_error)?;
    let q = v.queue(name).map_err(channel_error)?;
    let body = call.json_body()?;
    let count = body.get("count").and_then(|c| c.as_u64().or_else(|| c.as_str().and_then(|s| s.parse().ok())));
    let Some(count) = count else { return Err(bad_request("[{key_missing,count}]")) };
    let ackmode = match text(&body, "ackmode") {
        "" => match body.get("requeue") {
            // rabbitmqadmin before 3.7 sent "requeue".
            Some(r) if flag(&body, "requeue", true) || r.is_null() => "ack_requeue_true",
            Some(_) => "ack_requeue_false",
            None => return Err(bad_request("[{key_missing,ackmode}]")),
        },
        m @ ("ack_requeue_true" | "ack_requeue_false" | "reject_requeue_true" | "reject_requeue_false") => m,
        other => return Err(bad_request(format!("Invalid ackmode: {other}"))),
    };
    let encoding = match text(&body, "encoding") {
        "" | "auto" => "auto",
        "base64" => "base64",
        other => return Err(bad_request(format!("Unsupported encoding {other}"))),
    };
    let truncate = body.get("truncate").and_then(|t| t.as_u64().or_else(|| t.as_str().and_then(|s| s.parse().ok())));
    // As RabbitMQ's API: `basic.get`s over a one-shot channel (no_ack for
    // ack_requeue_false) whose statistics then join the vhost's.
    let no_ack = ackmode == "ack_requeue_false";
    let counters = warren_core::stats::Counters::default();
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count {
        let Some((entry, remaining)) = warren_core::publish::get(&q, no_ack, &counters) else { break };
        let msg = &entry.message;
        let mut body_bytes: &[u8] = &msg.body;
        if let Some(t) = truncate {
            body_bytes = &body_bytes[..body_bytes.len().min(t as usize)];
        }
        let (payload, payload_encoding) = match (encoding, std::str::from_utf8(body_bytes)) {
            ("auto", Ok(s)) => (s.to_owned(), "string"),
            _ => {
                use base64::Engine;
                (base64::engine::general_purpose::STANDARD.encode(body_bytes), "base64")
            }
        };
        let props = warren_core::queue::delivery_properties(&q, &entry);
        let props = amq_protocol::protocol::basic::parse_properties(&props[..]).map(|(_, p)| p).unwrap_or_default();
        out.push(json!({
            "payload_bytes": msg.body.len(),
            "redelivered": entry.redelivered,
            "exchange": &*msg.exchange,
            "routing_key": &*msg.routing_key,
            "message_count": remaining,
            "properties": properties_to_json(&props),
            "payload": payload,
            "payload_encoding": payload_encoding,
        }));
        if !no_ack {
            taken.push(entry);
        }
    }
    let n = taken.len();
    match ackmode {
        "ack_requeue_true" | "reject_requeue_true" => q.requeue(taken),
        "ack_requeue_false" => {}
        _ => {
            for e in taken {
                q.reject(e.message);
            }
            q.settled(n, false);
        }
    }
    v.retired.add_all(&counters.snapshot());
    Ok(ok(&Value::Array(out)))
}

fn aliveness(shared: &Shared, call: &Call, vh: &str) -> Result {
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
        Some((e, _)) if &e.message.body[..] == b"test_message" => Ok(ok(&json!({"status": "ok"}))),
        _ => Ok(json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "failed", "reason": "the test message did not come back"}),
        )),
    }
}
