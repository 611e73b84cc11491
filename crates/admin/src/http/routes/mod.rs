//! The API's paths, as RabbitMQ's management plugin serves them: `dispatch`
//! hands a request to the file of the resource its first segment names
//! (one file per resource), and what each method on them does is there.

mod bindings;
mod connections;
mod definitions;
mod exchanges;
mod messages;
mod node;
mod parameters;
mod policies;
mod queues;
mod users;
mod vhosts;

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Map, Value};
use warren_core::arguments::table_from_json;
use warren_core::auth::{Access, Resource};
use warren_core::broker::AdminError;
use warren_core::{AmqpError, VHost};

use super::auth::not_authorised;
use super::objects;
use super::query::{list, list_named};
use super::{bad_request, empty, error, json, not_found, ok, Call, Reply};
use crate::views::{node_name, BindingRow};
use warren_node::Node;

pub(crate) use messages::publish;
pub(crate) use parameters::federation_json;

type Result<T = Reply> = std::result::Result<T, Reply>;

pub fn route(shared: &Arc<Node>, call: &Call) -> Reply {
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

/// A refused administrative change, as the API answers it. RabbitMQ's API
/// answers 400 when a change names a user or vhost that does not exist
/// (404 is for the object in the path, checked before the change); a save
/// that failed is the server's fault (500).
fn admin_error(e: AdminError) -> Reply {
    match e {
        AdminError::Storage(m) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error", m),
        AdminError::TryAgain(m) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
        e => bad_request(e.message()),
    }
}

fn vhost(shared: &Node, name: &str) -> Result<Arc<VHost>> {
    shared.broker.vhost(name).ok_or_else(not_found)
}

/// The vhost named in the path, which the caller must be allowed to use.
fn use_vhost(shared: &Node, call: &Call, name: &str) -> Result<Arc<VHost>> {
    let v = vhost(shared, name)?;
    call.user.require_vhost(shared, name)?;
    Ok(v)
}

/// The caller's AMQP permission on a resource (administrators too, as RabbitMQ).
fn check(shared: &Node, call: &Call, vhost: &str, kind: Resource, name: &str, access: Access) -> Result<()> {
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

/// Routes a request to the handlers of the resource its first path segment names.
fn dispatch(shared: &Arc<Node>, call: &Call) -> Result {
    let seg: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    match seg.first().copied() {
        None => Ok(not_found()),
        Some("overview" | "cluster-name" | "whoami" | "extensions" | "nodes" | "health" | "aliveness-test") => {
            node::route(shared, call, &seg)
        }
        Some("connections" | "channels" | "consumers") => connections::route(shared, call, &seg),
        Some("vhosts" | "vhost-limits") => vhosts::route(shared, call, &seg),
        Some("exchanges") => exchanges::route(shared, call, &seg),
        Some("queues") => queues::route(shared, call, &seg),
        Some("bindings") => bindings::route(shared, call, &seg),
        Some("users" | "permissions" | "topic-permissions") => users::route(shared, call, &seg),
        Some("policies" | "operator-policies" | "parameters" | "global-parameters") => {
            policies::route(shared, call, &seg)
        }
        Some("definitions") => definitions::route(shared, call, &seg),
        Some("shovels") => parameters::shovels(shared, call, &seg),
        Some("federation-links") => parameters::federation_links(shared, call, &seg),
        Some(_) => Ok(not_found()),
    }
}

fn visible_vhosts(shared: &Node, call: &Call, vh: Option<&str>) -> Vec<Arc<VHost>> {
    objects::vhosts(shared)
        .into_iter()
        .filter(|v| vh.is_none_or(|n| v.name == n) && (vh.is_some() || call.user.sees_vhost(shared, &v.name)))
        .collect()
}
