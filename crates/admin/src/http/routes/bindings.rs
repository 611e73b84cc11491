//! Bindings between exchanges and queues or exchanges, by `properties_key`.

use super::*;

pub(super) fn route(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    match (seg, m.clone()) {
        (["bindings"], _) if get => {
            let rows: Vec<BindingRow> = objects::vhosts(shared)
                .iter()
                .filter(|v| call.user.sees_vhost(shared, &v.name))
                .flat_map(|v| crate::views::bindings(v))
                .collect();
            Ok(list(call, rows, objects::binding))
        }
        (["bindings", vh], _) if get => {
            let v = use_vhost(shared, call, vh)?;
            Ok(list(call, crate::views::bindings(&v), objects::binding))
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
                    let props = crate::views::properties_key(&key, &args_json);
                    if let Ok(loc) = hyper::header::HeaderValue::from_str(&crate::http::query::percent_encode(&props)) {
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
            let Some(b) =
                rows.into_iter().find(|b| crate::views::properties_key(&b.routing_key, &b.arguments) == *props)
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
        _ => Ok(not_found()),
    }
}

pub(super) fn matching_bindings(v: &VHost, src: &str, dest_type: &str, dst: &str) -> Result<Vec<BindingRow>> {
    let src = if src == "amq.default" { "" } else { src };
    v.exchange(src).map_err(amqp_error)?;
    if dest_type == "queue" {
        v.queue(dst).map_err(amqp_error)?;
    } else {
        v.exchange(dst).map_err(amqp_error)?;
    }
    Ok(crate::views::bindings(v)
        .into_iter()
        .filter(|b| b.source == src && b.destination_type == dest_type && b.destination == dst)
        .collect())
}
