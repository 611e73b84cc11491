//! Definitions export and import, whole or per vhost.

use super::*;

pub(super) fn route(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    match (seg, m.clone()) {
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
        _ => Ok(not_found()),
    }
}

pub(super) fn vhost_definitions(shared: &Node, vh: &str) -> Value {
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

pub(super) fn import(shared: &Node, call: &Call, vh: Option<&str>) -> Result {
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
    shared.broker.import_definitions(&doc).map_err(admin_error)?;
    Ok(empty(StatusCode::NO_CONTENT))
}
