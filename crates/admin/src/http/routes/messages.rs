//! Publishing to an exchange and getting messages from a queue, through
//! core's publish and get paths (`warren_core::publish`), as RabbitMQ's
//! API does them over a channel of its own.

use super::*;

/// Most messages one `POST .../get` takes.
const MAX_GET: u64 = 10_000;

/// How long `POST .../publish` waits for its confirm, and for a resource
/// alarm to clear, before it answers 503.
pub(super) const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /api/exchanges/{vhost}/{name}/publish`: core's publish path, as
/// RabbitMQ's API takes it: over a one-shot channel in confirm mode with
/// `mandatory` set, answered once the message is confirmed; the channel's
/// statistics then join its vhost's as a closed channel's do. A refusal
/// the AMQP channel would get is a 400 naming its reply code and text.
/// While a resource alarm holds, the request waits as a blocked publisher
/// would (503 if it outlasts `PUBLISH_WAIT`).
pub(crate) async fn publish(shared: &Node, call: &Call, vh: &str, name: &str) -> Reply {
    let mut alarm = shared.alarms.current.clone();
    let clear = alarm.wait_for(Option::is_none);
    if !matches!(tokio::time::timeout(PUBLISH_WAIT, clear).await, Ok(Ok(_))) {
        let reason = shared.alarms.current.borrow().clone().unwrap_or_default();
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("resource alarm: {reason}"));
    }
    let v = match use_vhost(shared, call, vh) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let counters = warren_core::stats::Counters::default();
    let reply = match publish_now(shared, call, &v, name, &counters) {
        Ok((pos, routed)) => {
            // A confirm waits for the message log's sync (and, in a
            // cluster, the followers'), as an AMQP publisher's does.
            let mut synced = shared.confirms.synced.clone();
            let confirmed = pos == 0
                || shared.broker.log().is_none()
                || matches!(tokio::time::timeout(PUBLISH_WAIT, synced.wait_for(|s| *s >= pos)).await, Ok(Ok(_)));
            if confirmed {
                counters.bump(warren_core::stats::CONFIRM, 1);
                ok(&json!({ "routed": routed }))
            } else {
                error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the message was not confirmed in time")
            }
        }
        Err(reply) => reply,
    };
    v.retired.add_all(&counters.snapshot());
    reply
}

/// The publish itself: the message-log position to sync before the
/// confirm, and whether it was routed.
fn publish_now(
    shared: &Node,
    call: &Call,
    v: &VHost,
    name: &str,
    counters: &warren_core::stats::Counters,
) -> Result<(u64, bool)> {
    let refused = |e: AmqpError| bad_request(e.to_string());
    let body = call.json_body()?;
    let x_name = if name == "amq.default" { "" } else { name };
    for key in ["routing_key", "payload", "payload_encoding", "properties"] {
        if !body.contains_key(key) {
            return Err(bad_request(format!("[{{key_missing,{key}}}]")));
        }
    }
    let payload = text(&body, "payload");
    let payload: Bytes = match text(&body, "payload_encoding") {
        "string" => Bytes::copy_from_slice(payload.as_bytes()),
        "base64" => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|_| bad_request("invalid base64 payload"))?;
            Bytes::from(raw)
        }
        other => return Err(bad_request(format!("invalid payload_encoding '{other}'"))),
    };
    let props = properties_from_json(body.get("properties").and_then(Value::as_object))?;
    (shared.broker.access().check(&v.name, &call.user.name, Resource::Exchange, x_name, Access::Write))
        .map_err(refused)?;
    let publisher = warren_core::publish::Publisher {
        broker: &shared.broker,
        vhost: v,
        user: &call.user.name,
        impersonator: call.user.tags.iter().any(|t| t == "impersonator"),
        topic_permissions: &Default::default(),
        stats: counters,
        local: None,
    };
    publisher.check_user_id(props.user_id().as_ref().map(|u| u.as_str())).map_err(refused)?;
    let raw = warren_protocol::content::encode_properties(&props);
    let msg = Arc::new(warren_core::Message::new(
        Arc::from(x_name),
        Arc::from(text(&body, "routing_key")),
        raw,
        props,
        payload,
    ));
    let mut queues = Vec::new();
    let outcome = publisher.publish(msg, true, &mut queues).map_err(refused)?;
    if !outcome.accepted {
        return Err(bad_request("rejected Unable to publish message. Check queue limits."));
    }
    // A delayed exchange holds the message: not routed yet (as the plugin).
    Ok((outcome.pos, !outcome.unroutable && !outcome.delayed))
}

pub(super) fn properties_from_json(
    p: Option<&Map<String, Value>>,
) -> Result<amq_protocol::protocol::basic::AMQPProperties> {
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

pub(super) fn properties_to_json(p: &amq_protocol::protocol::basic::AMQPProperties) -> Value {
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

pub(super) fn get_messages(shared: &Node, call: &Call, vh: &str, name: &str) -> Result {
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
    // The answer is built whole: a bound on what one request can make the
    // node hold.
    if count > MAX_GET {
        return Err(bad_request(format!("count must be at most {MAX_GET}")));
    }
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
        let shown = truncate.map_or(msg.body.len(), |t| msg.body.len().min(t as usize));
        let head = msg.body.head(shown);
        let body_bytes: &[u8] = &head;
        let (payload, payload_encoding) = match (encoding, std::str::from_utf8(body_bytes)) {
            ("auto", Ok(s)) => (s.to_owned(), "string"),
            _ => {
                use base64::Engine;
                (base64::engine::general_purpose::STANDARD.encode(body_bytes), "base64")
            }
        };
        let props = warren_core::queue::delivery_properties(&q, &entry);
        let props = warren_protocol::content::decode_properties(&props).unwrap_or_default();
        out.push(json!({
            "payload_bytes": msg.body.len(),
            "redelivered": entry.redelivered,
            "exchange": msg.exchange(),
            "routing_key": msg.routing_key(),
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
