//! Policies, operator policies and the parameters RabbitMQ lists beside them.

use super::*;

pub(super) fn route(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    match (seg, m.clone()) {
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
        (["global-parameters"], _) if get => Ok(ok(&json!([]))),
        (["parameters", "operator_policy"], _) if get => {
            call.user.require_admin()?;
            Ok(ok(&operator_policy_parameters(shared, None)))
        }
        (["parameters", "operator_policy", vh], _) if get => {
            call.user.require_admin()?;
            Ok(ok(&operator_policy_parameters(shared, Some(vh))))
        }
        (["parameters", ..], _) => super::parameters::route(shared, call, seg),
        // Definitions.
        _ => Ok(not_found()),
    }
}

/// Policies need the `policymaker` tag; operator policies, `administrator`.
pub(super) fn may_set_policies(call: &Call, operator: bool) -> Result<()> {
    if operator {
        call.user.require_admin()
    } else if call.user.policymaker {
        Ok(())
    } else {
        Err(not_authorised("Not policymaker"))
    }
}

pub(super) fn policies(shared: &Node, operator: bool, keep: impl Fn(&warren_core::policy::Policy) -> bool) -> Value {
    let ac = shared.broker.access();
    let map = if operator { &ac.operator_policies } else { &ac.policies };
    Value::Array(map.values().filter(|p| keep(p)).map(|p| p.to_json()).collect())
}

pub(super) fn operator_policy_parameters(shared: &Node, vh: Option<&str>) -> Value {
    let doc = shared.broker.access().to_json();
    let all = doc.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
    Value::Array(
        all.into_iter().filter(|p| vh.is_none_or(|v| p.get("vhost").and_then(Value::as_str) == Some(v))).collect(),
    )
}
