//! Runtime parameters (`/api/parameters/{component}/{vhost}/{name}`: shovels,
//! federation upstreams and upstream sets) and the shovels' status
//! (`/api/shovels`), as RabbitMQ's management and shovel-management
//! plugins serve them. Values are checked by `warren-links` before they
//! are set, and the links' supervisor is woken to act on them.

use super::*;
use warren_node::links::{LinkKind, LinkStatus};

pub(super) fn route(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    may_set(call)?;
    match seg {
        ["parameters"] if get => Ok(ok(&listed(shared, call, None, None))),
        ["parameters", component] if get => Ok(ok(&listed(shared, call, Some(component), None))),
        ["parameters", component, vh] if get => {
            use_vhost(shared, call, vh)?;
            Ok(ok(&listed(shared, call, Some(component), Some(vh))))
        }
        ["parameters", component, vh, name] => {
            use_vhost(shared, call, vh)?;
            let found = shared.broker.parameters(Some(component), Some(vh)).into_iter().find(|p| p.2 == *name);
            match *m {
                Method::GET | Method::HEAD => match found {
                    Some(p) => Ok(ok(&to_json(p))),
                    None => Ok(not_found()),
                },
                Method::PUT => {
                    let body = call.json_body()?;
                    let Some(value) = body.get("value") else {
                        return Err(bad_request("[{key_missing,value}]"));
                    };
                    short_name("parameter name", name)?;
                    if !warren_core::auth::PARAMETER_COMPONENTS.contains(component) {
                        return Err(bad_request(format!("Validation failed\n\ncomponent {component} not found\n")));
                    }
                    // A local URI may only name a vhost the caller may use
                    // (the links reach this broker with full access).
                    let may_use = |vhost: &str| -> Option<String> {
                        let ac = shared.broker.access();
                        (!ac.has_vhost_access(vhost, &call.user.name))
                            .then(|| format!("user \"{}\" may not connect to vhost \"{vhost}\"", call.user.name))
                    };
                    warren_links::validate(component, vh, name, value, Some(&may_use))
                        .map_err(|errors| bad_request(format!("Validation failed\n\n{}\n", errors.join("\n"))))?;
                    let existed =
                        shared.broker.set_parameter(component, vh, name, value.clone()).map_err(admin_error)?;
                    shared.links.wake.notify_one();
                    Ok(created(existed))
                }
                Method::DELETE => match shared.broker.clear_parameter(component, vh, name) {
                    Ok(()) => {
                        shared.links.wake.notify_one();
                        Ok(empty(StatusCode::NO_CONTENT))
                    }
                    Err(_) => Ok(not_found()),
                },
                _ => Ok(method_not_allowed()),
            }
        }
        _ => Ok(not_found()),
    }
}

/// Parameters need the `policymaker` tag (or `administrator`), as RabbitMQ's.
fn may_set(call: &Call) -> Result<()> {
    if call.user.policymaker || call.user.administrator {
        Ok(())
    } else {
        Err(not_authorised("Not policymaker"))
    }
}

fn to_json((component, vhost, name, value): (String, String, String, Value)) -> Value {
    json!({"value": value, "vhost": vhost, "component": component, "name": name})
}

fn listed(shared: &Node, call: &Call, component: Option<&str>, vh: Option<&str>) -> Value {
    let mut all: Vec<Value> = shared
        .broker
        .parameters(component, vh)
        .into_iter()
        .filter(|p| call.user.sees_vhost(shared, &p.1))
        .map(to_json)
        .collect();
    if component.is_none() && call.user.administrator {
        if let Some(ops) = operator_parameters(shared, vh).as_array() {
            all.extend(ops.iter().cloned());
        }
    }
    Value::Array(all)
}

fn operator_parameters(shared: &Node, vh: Option<&str>) -> Value {
    super::policies::operator_policy_parameters(shared, vh)
}

/// `/api/shovels[/{vhost}]`, and `DELETE /api/shovels/vhost/{vhost}/{name}[/restart]`.
pub(super) fn shovels(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    call.user.require_monitor()?;
    match seg {
        ["shovels"] if get => Ok(ok(&shovel_list(shared, call, None))),
        ["shovels", vh] if get => {
            use_vhost(shared, call, vh)?;
            Ok(ok(&shovel_list(shared, call, Some(vh))))
        }
        ["shovels", "vhost", vh, name, rest @ ..] if *m == Method::DELETE && rest.len() <= 1 => {
            use_vhost(shared, call, vh)?;
            let key = (LinkKind::Shovel, vh.to_string(), name.to_string());
            match rest {
                ["restart"] => {
                    if !shared.links.restart(key) {
                        return Ok(not_found());
                    }
                }
                [] => {
                    if shared.broker.clear_parameter("shovel", vh, name).is_err() {
                        return Ok(not_found());
                    }
                    shared.links.wake.notify_one();
                }
                _ => return Ok(not_found()),
            }
            Ok(empty(StatusCode::NO_CONTENT))
        }
        ["shovels", ..] if !get => Ok(method_not_allowed()),
        _ => Ok(not_found()),
    }
}

fn shovel_list(shared: &Node, call: &Call, vh: Option<&str>) -> Value {
    let rows = shared.links.list(LinkKind::Shovel);
    Value::Array(
        rows.into_iter()
            .filter(|((_, v, _), _)| vh.is_none_or(|x| x == v) && call.user.sees_vhost(shared, v))
            .map(|((_, vhost, name), s)| shovel_json(&vhost, &name, &s))
            .collect(),
    )
}

/// `/api/federation-links[/{vhost}]`, as RabbitMQ's federation-management.
pub(super) fn federation_links(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    call.user.require_monitor()?;
    // RabbitMQ's restart path: /federation-links/vhost/{vhost}/{id}/{node}/restart.
    if let ["federation-links", "vhost", vh, id, _node, "restart"] = seg {
        if *m != Method::DELETE {
            return Ok(method_not_allowed());
        }
        use_vhost(shared, call, vh)?;
        if !shared.links.restart((LinkKind::Federation, vh.to_string(), id.to_string())) {
            return Ok(not_found());
        }
        return Ok(empty(StatusCode::NO_CONTENT));
    }
    if *m != Method::GET && *m != Method::HEAD {
        return Ok(method_not_allowed());
    }
    let vh = match seg {
        ["federation-links"] => None,
        ["federation-links", vh] => {
            use_vhost(shared, call, vh)?;
            Some(*vh)
        }
        _ => return Ok(not_found()),
    };
    let rows = shared.links.list(LinkKind::Federation);
    Ok(ok(&Value::Array(
        rows.into_iter()
            .filter(|((_, v, _), _)| vh.is_none_or(|x| x == v) && call.user.sees_vhost(shared, v))
            .map(|((_, vhost, name), s)| federation_json(&vhost, &name, &s))
            .collect(),
    )))
}

/// One federation link as RabbitMQ's federation-management lists it.
pub(crate) fn federation_json(vhost: &str, name: &str, s: &LinkStatus) -> Value {
    let mut row = s.details.clone();
    row.insert("node".into(), node_name().into());
    row.insert("vhost".into(), vhost.into());
    row.insert("id".into(), name.into());
    row.insert("status".into(), warren_links::federation::status_name(&s.state).into());
    row.insert("local_connection".into(), "".into());
    row.insert("timestamp".into(), crate::views::timestamp(s.since_ms).into());
    if let warren_node::links::LinkState::Terminated { reason } = &s.state {
        row.insert("error".into(), reason.clone().into());
    }
    row.insert("messages_transferred".into(), s.moved.into());
    Value::Object(row)
}

/// One shovel as RabbitMQ's shovel-management lists it.
pub(crate) fn shovel_json(vhost: &str, name: &str, s: &LinkStatus) -> Value {
    let mut row = s.details.clone();
    row.insert("node".into(), node_name().into());
    row.insert("name".into(), name.into());
    row.insert("vhost".into(), vhost.into());
    row.insert("type".into(), "dynamic".into());
    row.insert("state".into(), s.state.as_str().into());
    row.insert("timestamp".into(), crate::views::timestamp(s.since_ms).into());
    if let warren_node::links::LinkState::Terminated { reason } = &s.state {
        row.insert("reason".into(), reason.clone().into());
    }
    row.insert("messages_transferred".into(), s.moved.into());
    Value::Object(row)
}
