//! `warren ctl`'s runtime parameter commands — `set_parameter`,
//! `clear_parameter`, `list_parameters` — and `shovel_status`, with
//! rabbitmqctl's texts and columns.

use super::{failed, table, usage, Request, Response};
use warren_core::broker::AdminError;
use warren_node::Node;

pub(super) fn execute(shared: &Node, req: &Request) -> Response {
    let broker = &shared.broker;
    let a = &req.args;
    let vh = req.vhost.as_str();
    let arg = |i: usize| a.get(i).map(String::as_str).unwrap_or("");
    let need = |n: usize, info: String, f: &dyn Fn() -> Result<Response, AdminError>| {
        if a.len() < n {
            return usage(info, &format!("{} needs {n} argument(s); see `warren ctl help`", req.command));
        }
        f().unwrap_or_else(|e| failed(info, e))
    };
    let done = |info: String| Response { info, ..Default::default() };
    match req.command.as_str() {
        "set_parameter" => {
            let info = format!(
                "Setting runtime parameter \"{}\" for component \"{}\" to \"{}\" in vhost \"{vh}\" ...",
                arg(1),
                arg(0),
                arg(2)
            );
            need(3, info.clone(), &|| {
                let (component, name) = (arg(0), arg(1));
                let value: serde_json::Value = serde_json::from_str(arg(2))
                    .map_err(|e| AdminError::Invalid(format!("the value is not JSON: {e}")))?;
                if !warren_core::auth::PARAMETER_COMPONENTS.contains(&component) {
                    return Err(AdminError::Unavailable(format!(
                        "Validation failed\n\ncomponent {component} not found\n"
                    )));
                }
                warren_links::validate(component, vh, name, &value, None)
                    .map_err(|e| AdminError::Unavailable(format!("Validation failed\n\n{}\n", e.join("\n"))))?;
                broker.set_parameter(component, vh, name, value)?;
                shared.links.wake.notify_one();
                Ok(done(info.clone()))
            })
        }
        "clear_parameter" => {
            let info =
                format!("Clearing runtime parameter \"{}\" for component \"{}\" on vhost \"{vh}\" ...", arg(1), arg(0));
            need(2, info.clone(), &|| {
                broker.clear_parameter(arg(0), vh, arg(1))?;
                shared.links.wake.notify_one();
                Ok(done(info.clone()))
            })
        }
        "list_parameters" => {
            let info = format!("Listing runtime parameters for vhost \"{vh}\" ...");
            let rows = broker
                .parameters(None, Some(vh))
                .into_iter()
                .map(|(component, _, name, value)| vec![component, name, value.to_string()])
                .collect();
            table(info, &["component", "name", "value"], rows)
        }
        "shovel_status" => {
            let info = format!("Shovel status on node {}", crate::views::node_name());
            let rows = shared
                .links
                .list(warren_node::links::LinkKind::Shovel)
                .into_iter()
                .map(|((_, vhost, name), s)| {
                    let d = |k: &str| s.details.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
                    let reason = match &s.state {
                        warren_node::links::LinkState::Terminated { reason } => reason.clone(),
                        _ => String::new(),
                    };
                    vec![
                        d("dest_uri"),
                        "amqp091".into(),
                        if d("dest_queue").is_empty() { d("dest_exchange") } else { d("dest_queue") },
                        crate::views::timestamp(s.since_ms),
                        name,
                        d("src_uri"),
                        "amqp091".into(),
                        if d("src_queue").is_empty() { d("src_exchange") } else { d("src_queue") },
                        s.state.as_str().into(),
                        reason,
                        "dynamic".into(),
                        vhost,
                    ]
                })
                .collect();
            table(
                info,
                &[
                    "destination",
                    "destination_protocol",
                    "destination_queue",
                    "last_changed",
                    "name",
                    "source",
                    "source_protocol",
                    "source_queue",
                    "state",
                    "termination_reason",
                    "type",
                    "vhost",
                ],
                rows,
            )
        }
        "federation_status" => {
            let info = "Listing federation links on node ...".to_owned();
            let columns = [
                "exchange",
                "id",
                "queue",
                "status",
                "timestamp",
                "type",
                "upstream",
                "upstream_exchange",
                "upstream_queue",
                "uri",
                "vhost",
                "error",
            ];
            let rows = shared
                .links
                .list(warren_node::links::LinkKind::Federation)
                .into_iter()
                .map(|((_, vhost, name), s)| {
                    let row = crate::http::federation_row(&vhost, &name, &s);
                    columns
                        .iter()
                        .map(|c| match row.get(*c) {
                            Some(serde_json::Value::String(v)) => v.clone(),
                            Some(v) => v.to_string(),
                            None => String::new(),
                        })
                        .collect()
                })
                .collect();
            table(info, &columns, rows)
        }
        _ => usage(String::new(), "unknown command"),
    }
}
