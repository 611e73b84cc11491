//! Virtual hosts, their connections, channels and permissions, and vhost limits.

use super::connections::{channels, connections};
use super::users::{permissions, topic_permissions};
use super::*;

pub(super) fn route(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    match (seg, m.clone()) {
        (["vhosts", vh, "connections"], _) if get => {
            use_vhost(shared, call, vh)?;
            Ok(connections(shared, call, Some(vh)))
        }
        (["vhosts", vh, "channels"], _) if get => {
            use_vhost(shared, call, vh)?;
            Ok(channels(shared, call, Some(vh)))
        }
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
        _ => Ok(not_found()),
    }
}

pub(super) fn vhost_limits(shared: &Node, vh: Option<&str>) -> Value {
    let ac = shared.broker.access();
    Value::Array(
        ac.vhosts
            .iter()
            .filter(|(v, l)| vh.is_none_or(|n| n == v.as_str()) && **l != Default::default())
            .map(|(v, l)| json!({"vhost": v, "value": l}))
            .collect(),
    )
}
