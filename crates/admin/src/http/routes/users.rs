//! Users, permissions and topic permissions.

use super::*;

pub(super) fn route(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    match (seg, m.clone()) {
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
        _ => Ok(not_found()),
    }
}

pub(super) fn users(shared: &Node, keep: impl Fn(&str) -> bool) -> Value {
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

pub(super) fn put_user(shared: &Node, call: &Call, name: &str) -> Result {
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

pub(super) fn permissions(shared: &Node, keep: impl Fn(&str, &str) -> bool) -> Value {
    let ac = shared.broker.access();
    Value::Array(
        ac.permissions
            .iter()
            .filter(|((v, u), _)| keep(v, u))
            .map(|((v, u), p)| json!({"user": u, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read}))
            .collect(),
    )
}

pub(super) fn topic_permissions(shared: &Node, keep: impl Fn(&str, &str) -> bool) -> Value {
    let ac = shared.broker.access();
    Value::Array(
        ac.topic_permissions
            .iter()
            .filter(|((v, u, _), _)| keep(v, u))
            .map(|((v, u, x), p)| json!({"user": u, "vhost": v, "exchange": x, "write": p.write, "read": p.read}))
            .collect(),
    )
}
