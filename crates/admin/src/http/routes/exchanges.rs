//! Exchanges: list, declare, delete, their bindings; publishing to one (`messages.rs`).

use super::*;

pub(super) fn route(shared: &Arc<Node>, call: &Call, seg: &[&str]) -> Result {
    let m = &call.method;
    let get = *m == Method::GET || *m == Method::HEAD;
    match (seg, m.clone()) {
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
            let rows: Vec<BindingRow> = crate::views::bindings(&v)
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
        _ => Ok(not_found()),
    }
}

pub(super) fn exchanges(shared: &Arc<Node>, call: &Call, vh: Option<&str>) -> Reply {
    let mut rows = Vec::new();
    for v in visible_vhosts(shared, call, vh) {
        let mut xs = v.exchanges();
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        rows.extend(xs.into_iter().map(|x| (v.name.clone(), x)));
    }
    list_named(call, rows, |(_, x)| x.name.as_str(), |(vh, x)| objects::exchange(x, vh))
}
