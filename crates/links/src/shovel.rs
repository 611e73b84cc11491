//! Dynamic shovels: a `shovel` runtime parameter (RabbitMQ's value keys)
//! read into a [`Shovel`], and one run of it — connect both sides, declare
//! what is missing as RabbitMQ's shovel does, then consume from the source
//! and publish to the destination until stopped, failed, or done
//! (`src-delete-after`).
//!
//! With `ack-mode: on-confirm` (the default) a message is acknowledged at
//! the source only once the destination confirmed it, so a crash of
//! either side loses nothing (a message may arrive twice). `on-publish`
//! acknowledges once it is sent; `no-ack` consumes without acks.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, PublisherConfirm};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use warren_node::links::{LinkKey, LinkState};
use warren_node::Node;

use crate::uri;
use crate::validate::{must, opt, proplist, Kind, Rule};

/// Where a shovel takes messages from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Queue {
        name: String,
        args: FieldTable,
    },
    /// A server-named exclusive queue bound to the exchange.
    Exchange {
        name: String,
        key: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    OnConfirm,
    OnPublish,
    NoAck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteAfter {
    Never,
    /// As many messages as the source queue held when the shovel started.
    QueueLength,
    Count(u64),
}

/// A shovel's definition, read from its parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Shovel {
    pub vhost: String,
    pub name: String,
    pub src_uris: Vec<String>,
    pub dest_uris: Vec<String>,
    pub source: Source,
    pub dest_exchange: Option<String>,
    pub dest_exchange_key: Option<String>,
    pub dest_queue: Option<(String, FieldTable)>,
    pub prefetch: u16,
    pub ack_mode: AckMode,
    pub delete_after: DeleteAfter,
    pub reconnect_delay: Duration,
    pub add_forward_headers: bool,
    pub add_timestamp_header: bool,
    pub publish_properties: Map<String, Value>,
    pub consumer_args: FieldTable,
}

const ACK_MODES: &[&str] = &["no-ack", "on-publish", "on-confirm"];
const PROTOCOLS: &[&str] = &["amqp10", "amqp091"];

/// The keys RabbitMQ 3.10 accepts for an AMQP 0-9-1 to AMQP 0-9-1 shovel
/// (old names too), and `src-consumer-args`, which later UIs send.
const RULES: &[Rule] = &[
    opt("reconnect-delay", Kind::Num),
    opt("ack-mode", Kind::Enum(ACK_MODES)),
    opt("src-protocol", Kind::Enum(PROTOCOLS)),
    opt("dest-protocol", Kind::Enum(PROTOCOLS)),
    must("src-uri", Kind::StrOrList),
    opt("src-exchange", Kind::Str),
    opt("src-exchange-key", Kind::Str),
    opt("src-queue", Kind::Str),
    opt("src-queue-args", Kind::Object),
    opt("src-consumer-args", Kind::Object),
    opt("prefetch-count", Kind::Num),
    opt("src-prefetch-count", Kind::Num),
    opt("delete-after", Kind::DeleteAfter),
    opt("src-delete-after", Kind::DeleteAfter),
    must("dest-uri", Kind::StrOrList),
    opt("dest-exchange", Kind::Str),
    opt("dest-exchange-key", Kind::Str),
    opt("dest-queue", Kind::Str),
    opt("dest-queue-args", Kind::Object),
    opt("add-forward-headers", Kind::Bool),
    opt("add-timestamp-header", Kind::Bool),
    opt("dest-add-forward-headers", Kind::Bool),
    opt("dest-add-timestamp-header", Kind::Bool),
    opt("publish-properties", Kind::Object),
    opt("dest-publish-properties", Kind::Object),
];

/// The message properties `dest-publish-properties` may set.
const PROPERTIES: &[(&str, Kind)] = &[
    ("content_type", Kind::Str),
    ("content_encoding", Kind::Str),
    ("delivery_mode", Kind::Num),
    ("priority", Kind::Num),
    ("correlation_id", Kind::Str),
    ("reply_to", Kind::Str),
    ("expiration", Kind::Str),
    ("message_id", Kind::Str),
    ("timestamp", Kind::Num),
    ("type", Kind::Str),
    ("user_id", Kind::Str),
    ("app_id", Kind::Str),
    ("cluster_id", Kind::Str),
];

pub(crate) fn uris(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

fn text(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl Shovel {
    /// Reads and checks a `shovel` parameter's value; the errors are
    /// RabbitMQ's texts. `may_use` says whether the user setting it may use
    /// a vhost of this broker (a local URI names one); `None` when the
    /// broker itself sets it (definitions import, recovery).
    pub fn parse(
        vhost: &str,
        name: &str,
        value: &Value,
        may_use: Option<crate::MayUse<'_>>,
    ) -> Result<Shovel, Vec<String>> {
        let Some(m) = value.as_object() else {
            return Err(vec![format!(
                "shovel {name} should be an object, actually was {}",
                crate::validate::erl(value)
            )]);
        };
        let mut errors = Vec::new();
        match (m.get("src-exchange"), m.get("src-queue")) {
            (None, None) => errors.push("Must specify 'src-exchange' or 'src-queue'".to_owned()),
            (Some(_), Some(_)) => errors.push("Cannot specify 'src-exchange' and 'src-queue'".to_owned()),
            _ => {}
        }
        let delete_after = m.get("src-delete-after").or_else(|| m.get("delete-after"));
        if delete_after.is_some_and(Value::is_u64) && text(m, "ack-mode").as_deref() == Some("no-ack") {
            errors.push("Cannot specify 'no-ack' and numerical 'delete-after'".to_owned());
        }
        if m.get("dest-exchange").is_some() && m.get("dest-queue").is_some() {
            errors.push("Cannot specify 'dest-exchange' and 'dest-queue'".to_owned());
        }
        errors.extend(proplist(name, RULES, m));
        for key in ["publish-properties", "dest-publish-properties"] {
            if let Some(Value::Object(p)) = m.get(key) {
                let rules: Vec<Rule> = PROPERTIES.iter().map(|(k, kind)| opt(k, *kind)).collect();
                errors.extend(proplist(key, &rules, p));
            }
        }
        for key in ["src-protocol", "dest-protocol"] {
            if text(m, key).as_deref() == Some("amqp10") {
                errors.push(format!("{key}: Warren's shovels speak amqp091 only"));
            }
        }
        for key in ["src-uri", "dest-uri"] {
            let list = m.get(key).map(uris).unwrap_or_default();
            if m.get(key).is_some() && list.is_empty() {
                errors.push(format!("{key} should not be an empty list"));
            }
            uri::check(&list, vhost, may_use, &mut errors);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let flag = |new: &str, old: &str| m.get(new).or_else(|| m.get(old)).and_then(Value::as_bool).unwrap_or(false);
        let table = |key: &str| match m.get(key) {
            Some(Value::Object(o)) => warren_core::arguments::table_from_json(o),
            _ => FieldTable::default(),
        };
        let source = match text(m, "src-queue") {
            Some(q) => Source::Queue { name: q, args: table("src-queue-args") },
            None => Source::Exchange {
                name: text(m, "src-exchange").unwrap_or_default(),
                key: text(m, "src-exchange-key").unwrap_or_default(),
            },
        };
        let prefetch = m.get("src-prefetch-count").or_else(|| m.get("prefetch-count")).and_then(Value::as_f64);
        Ok(Shovel {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            src_uris: uris(&m["src-uri"]),
            dest_uris: uris(&m["dest-uri"]),
            source,
            dest_exchange: text(m, "dest-exchange"),
            dest_exchange_key: text(m, "dest-exchange-key"),
            dest_queue: text(m, "dest-queue").map(|q| (q, table("dest-queue-args"))),
            prefetch: prefetch.map_or(1000, |p| p.clamp(1.0, 65535.0) as u16),
            ack_mode: match text(m, "ack-mode").as_deref() {
                Some("no-ack") => AckMode::NoAck,
                Some("on-publish") => AckMode::OnPublish,
                _ => AckMode::OnConfirm,
            },
            delete_after: match delete_after {
                Some(Value::String(s)) if s == "queue-length" => DeleteAfter::QueueLength,
                Some(v) if v.is_u64() => DeleteAfter::Count(v.as_u64().unwrap_or(0)),
                _ => DeleteAfter::Never,
            },
            reconnect_delay: Duration::from_secs_f64(
                m.get("reconnect-delay").and_then(Value::as_f64).unwrap_or(5.0).clamp(0.0, 3600.0),
            ),
            add_forward_headers: flag("dest-add-forward-headers", "add-forward-headers"),
            add_timestamp_header: flag("dest-add-timestamp-header", "add-timestamp-header"),
            publish_properties: m
                .get("dest-publish-properties")
                .or_else(|| m.get("publish-properties"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            consumer_args: table("src-consumer-args"),
        })
    }

    /// The facts `/api/shovels` lists beside the state.
    pub fn details(&self) -> Map<String, Value> {
        let mut d = Map::new();
        let join = |l: &[String]| l.iter().map(|u| uri::redacted(u)).collect::<Vec<_>>().join(", ");
        d.insert("src_uri".into(), join(&self.src_uris).into());
        d.insert("dest_uri".into(), join(&self.dest_uris).into());
        d.insert("src_protocol".into(), "amqp091".into());
        d.insert("dest_protocol".into(), "amqp091".into());
        match &self.source {
            Source::Queue { name, .. } => {
                d.insert("src_queue".into(), name.clone().into());
            }
            Source::Exchange { name, key } => {
                d.insert("src_exchange".into(), name.clone().into());
                d.insert("src_exchange_key".into(), key.clone().into());
            }
        }
        if let Some((q, _)) = &self.dest_queue {
            d.insert("dest_queue".into(), q.clone().into());
        }
        if let Some(x) = &self.dest_exchange {
            d.insert("dest_exchange".into(), x.clone().into());
        }
        if let Some(k) = &self.dest_exchange_key {
            d.insert("dest_exchange_key".into(), k.clone().into());
        }
        d
    }
}

/// How a run ended without an error.
pub enum Ended {
    /// Asked to stop (parameter cleared or changed, restart, shutdown).
    Stopped,
    /// `src-delete-after` reached: the shovel removes its parameter.
    Done,
}

/// Connects to the first of `uris` that answers.
pub(crate) async fn connect(node: &Node, uris: &[String], vhost: &str) -> Result<(Connection, String), String> {
    let mut last = String::from("no URI");
    for u in uris {
        let e = uri::parse(u, vhost)?;
        let Some(internal) = node.links.internal.get() else {
            return Err("the internal listener is not up yet".into());
        };
        let props =
            lapin::ConnectionProperties::default().with_connection_name(format!("Shovel {}", uri::redacted(u)).into());
        let read = |f: &str| std::fs::read(f).map_err(|err| format!("cannot read {f}: {err}"));
        let tls = lapin::tcp::OwnedTLSConfig {
            // A client certificate: `certfile` (PEM chain) and `keyfile`.
            identity: match (&e.certfile, &e.keyfile) {
                (Some(c), Some(k)) => Some(lapin::tcp::OwnedIdentity::PKCS8 { pem: read(c)?, key: read(k)? }),
                (None, None) => None,
                _ => return Err(format!("{}: certfile and keyfile go together", uri::redacted(u))),
            },
            cert_chain: match &e.cacertfile {
                Some(f) => Some(String::from_utf8(read(f)?).map_err(|_| format!("{f} is not PEM"))?),
                None => None,
            },
        };
        let at = e.to_lapin((*internal, &node.links.secret));
        let attempt = tokio::time::timeout(
            Duration::from_secs(15),
            Connection::connect_uri_with_config(
                at,
                props,
                tls,
                lapin::runtime::default_runtime().map_err(|e| e.to_string())?,
            ),
        )
        .await;
        match attempt {
            Ok(Ok(c)) => return Ok((c, u.clone())),
            Ok(Err(err)) => last = format!("{}: {err}", uri::redacted(u)),
            Err(_) => last = format!("{}: connection timed out", uri::redacted(u)),
        }
    }
    Err(last)
}

/// Closes a link's connection, waiting at most 5 s for the peer's
/// close-ok: a connection whose peer died (kill -9 mid-shovel) may never
/// answer, and the link must go on to reconnect.
pub(crate) async fn close(conn: &Connection) {
    let closing = conn.close(200, "OK".into());
    if tokio::time::timeout(Duration::from_secs(5), closing).await.is_err() {
        tracing::info!("link: no close-ok in 5 s; the connection is dropped");
    }
}

/// Ends when one of the connections is no longer open, saying which. A
/// link awaits its connections in many places (a publish, an ack, a
/// confirm, the acker's queue); a peer that died does not fail all of them
/// (seen with a source killed with -9 mid-shovel: the shovel waited on),
/// so every run also watches the connections' state.
pub(crate) async fn lost(conns: &[&Connection]) -> String {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if let Some(c) = conns.iter().find(|c| !c.status().connected()) {
            let how = if c.status().errored() { "failed" } else { "closed" };
            return format!("a connection {how} (the peer went away)");
        }
    }
}

/// Declares a queue as RabbitMQ's shovel does: passively, and when it is
/// not there, durable. Returns its message count.
pub(crate) async fn ensure_queue(conn: &Connection, name: &str, args: &FieldTable) -> Result<u32, String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    match ch.queue_declare(name.into(), passive, FieldTable::default()).await {
        Ok(q) => {
            let _ = ch.close(200, "OK".into()).await;
            Ok(q.message_count())
        }
        Err(_) => {
            let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
            let durable = QueueDeclareOptions { durable: true, ..Default::default() };
            let q = ch
                .queue_declare(name.into(), durable, args.clone())
                .await
                .map_err(|e| format!("cannot declare queue '{name}': {e}"))?;
            let _ = ch.close(200, "OK".into()).await;
            Ok(q.message_count())
        }
    }
}

/// What the acker is told about each message taken from the source.
enum Taken {
    /// Published; acknowledge once the destination confirms.
    Confirm(u64, PublisherConfirm),
    /// Published (on-publish): acknowledge now.
    Sent(u64),
}

/// Runs the shovel until it is stopped (`stop` turns true), fails (the
/// error says why) or is done.
pub(crate) async fn run(
    node: &Node,
    key: &LinkKey,
    s: &Shovel,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, String> {
    let (src, src_uri) = connect(node, &s.src_uris, &s.vhost).await?;
    let (dest, dest_uri) = match connect(node, &s.dest_uris, &s.vhost).await {
        Ok(d) => d,
        Err(e) => {
            close(&src).await;
            return Err(e);
        }
    };
    let conns = [&src, &dest];
    let result = tokio::select! {
        r = shovel(node, key, s, stop, &src, &dest, &src_uri, &dest_uri) => r,
        e = lost(&conns) => Err(e),
    };
    close(&src).await;
    close(&dest).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn shovel(
    node: &Node,
    key: &LinkKey,
    s: &Shovel,
    stop: &mut watch::Receiver<bool>,
    src: &Connection,
    dest: &Connection,
    src_uri: &str,
    dest_uri: &str,
) -> Result<Ended, String> {
    let err = |what: &str, e: lapin::Error| format!("{what}: {e}");
    let (queue, length) = match &s.source {
        Source::Queue { name, args } => (name.clone(), ensure_queue(src, name, args).await?),
        Source::Exchange { name, key } => {
            let ch = src.create_channel().await.map_err(|e| err("source channel", e))?;
            let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
            let q = ch
                .queue_declare("".into(), exclusive, FieldTable::default())
                .await
                .map_err(|e| err("source queue", e))?;
            let q = q.name().as_str().to_owned();
            ch.queue_bind(
                q.as_str().into(),
                name.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| err(&format!("binding to exchange '{name}'"), e))?;
            (q, 0)
        }
    };
    if let Some((q, args)) = &s.dest_queue {
        ensure_queue(dest, q, args).await?;
    }
    let limit = match s.delete_after {
        DeleteAfter::Never => None,
        DeleteAfter::QueueLength => Some(u64::from(length)),
        DeleteAfter::Count(n) => Some(n),
    };
    if limit == Some(0) {
        return Ok(Ended::Done);
    }
    let out = dest.create_channel().await.map_err(|e| err("destination channel", e))?;
    if s.ack_mode == AckMode::OnConfirm {
        out.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| err("confirm.select", e))?;
    }
    let inp = src.create_channel().await.map_err(|e| err("source channel", e))?;
    let prefetch = limit.map_or(s.prefetch, |l| l.min(u64::from(s.prefetch)) as u16);
    if s.ack_mode != AckMode::NoAck {
        inp.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(|e| err("basic.qos", e))?;
    }
    let no_ack = s.ack_mode == AckMode::NoAck;
    let mut consumer = inp
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions { no_ack, ..Default::default() },
            s.consumer_args.clone(),
        )
        .await
        .map_err(|e| err(&format!("consuming from '{queue}'"), e))?;
    node.links.set_state(key, LinkState::Running);

    // The acker acknowledges at the source, in order, what the
    // destination confirmed (or, on-publish, what was sent).
    let (tx, mut rx) = mpsc::channel::<Taken>(usize::from(prefetch.max(1)));
    let acker = {
        let inp = inp.clone();
        async move {
            while let Some(t) = rx.recv().await {
                match t {
                    Taken::Sent(tag) => {
                        inp.basic_ack(tag, BasicAckOptions::default()).await.map_err(|e| err("basic.ack", e))?;
                    }
                    Taken::Confirm(tag, confirm) => match confirm.await.map_err(|e| err("publisher confirm", e))? {
                        Confirmation::Nack(_) => {
                            let requeue = BasicNackOptions { requeue: true, multiple: false };
                            inp.basic_nack(tag, requeue).await.map_err(|e| err("basic.nack", e))?;
                        }
                        _ => inp.basic_ack(tag, BasicAckOptions::default()).await.map_err(|e| err("basic.ack", e))?,
                    },
                }
            }
            Ok::<(), String>(())
        }
    };
    tokio::pin!(acker);
    let mut taken = 0u64;
    let tag = consumer.tag();
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(Ended::Stopped),
            // It ends only on an error while `tx` is held.
            r = &mut acker => return Err(r.err().unwrap_or_else(|| "the acker stopped".into())),
            d = consumer.next() => {
                let d = match d {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(err("source", e)),
                    None => return Err(format!("the source cancelled the consumer on '{queue}'")),
                };
                if limit.is_some_and(|l| taken >= l) {
                    // Prefetched after the limit was reached: back it goes.
                    if !no_ack {
                        let requeue = BasicNackOptions { requeue: true, multiple: false };
                        let _ = inp.basic_nack(d.delivery_tag, requeue).await;
                    }
                    continue;
                }
                let (exchange, routing_key) = match (&s.dest_queue, &s.dest_exchange) {
                    (Some((q, _)), _) => (String::new(), q.clone()),
                    (None, x) => (
                        x.clone().unwrap_or_else(|| d.exchange.as_str().to_owned()),
                        s.dest_exchange_key.clone().unwrap_or_else(|| d.routing_key.as_str().to_owned()),
                    ),
                };
                let props = properties(s, d.properties.clone(), src_uri, dest_uri);
                let confirm = out
                    .basic_publish(exchange.as_str().into(), routing_key.as_str().into(), BasicPublishOptions::default(), &d.data, props)
                    .await
                    .map_err(|e| err("publishing to the destination", e))?;
                taken += 1;
                node.links.count_moved(key, 1);
                let t = match s.ack_mode {
                    AckMode::NoAck => None,
                    AckMode::OnPublish => Some(Taken::Sent(d.delivery_tag)),
                    AckMode::OnConfirm => Some(Taken::Confirm(d.delivery_tag, confirm)),
                };
                if let Some(t) = t {
                    if tx.send(t).await.is_err() {
                        return Err("the acker stopped".into());
                    }
                }
                if limit == Some(taken) {
                    let _ = inp.basic_cancel(tag.clone(), BasicCancelOptions::default()).await;
                    break;
                }
            }
        }
    }
    // Done taking: wait until the destination confirmed the rest, and the
    // source has taken every acknowledgement (its close-ok comes after).
    drop(tx);
    tokio::select! {
        _ = stop.changed() => Ok(Ended::Stopped),
        r = &mut acker => {
            r?;
            inp.close(200, "OK".into()).await.map_err(|e| err("closing the source channel", e))?;
            Ok(Ended::Done)
        }
    }
}

/// The message's properties as the destination gets them: the source's,
/// `dest-publish-properties` over them, and the forward and timestamp
/// headers when asked for.
fn properties(s: &Shovel, mut p: BasicProperties, src_uri: &str, dest_uri: &str) -> BasicProperties {
    let text = |v: &Value| ShortString::from(v.as_str().unwrap_or_default());
    for (k, v) in &s.publish_properties {
        let n = v.as_f64().unwrap_or(0.0);
        p = match k.as_str() {
            "content_type" => p.with_content_type(text(v)),
            "content_encoding" => p.with_content_encoding(text(v)),
            "delivery_mode" => p.with_delivery_mode(n as u8),
            "priority" => p.with_priority(n as u8),
            "correlation_id" => p.with_correlation_id(text(v)),
            "reply_to" => p.with_reply_to(text(v)),
            "expiration" => p.with_expiration(text(v)),
            "message_id" => p.with_message_id(text(v)),
            "timestamp" => p.with_timestamp(n as u64),
            "type" => p.with_type(text(v)),
            "user_id" => p.with_user_id(text(v)),
            "app_id" => p.with_app_id(text(v)),
            "cluster_id" => p.with_cluster_id(text(v)),
            _ => p,
        };
    }
    if !s.add_forward_headers && !s.add_timestamp_header {
        return p;
    }
    let mut headers = p.headers().clone().unwrap_or_default();
    if s.add_forward_headers {
        let mut t = FieldTable::default();
        let mut put = |k: &str, v: &str| {
            t.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
        };
        put("shovelled-by", &warren_node::node_name());
        put("shovel-type", "dynamic");
        put("shovel-name", &s.name);
        put("shovel-vhost", &s.vhost);
        put("src-uri", &uri::redacted(src_uri));
        put("dest-uri", &uri::redacted(dest_uri));
        match &s.source {
            Source::Queue { name, .. } => put("src-queue", name),
            Source::Exchange { name, key } => {
                put("src-exchange", name);
                put("src-exchange-key", key);
            }
        }
        if let Some((q, _)) = &s.dest_queue {
            put("dest-queue", q);
        }
        if let Some(x) = &s.dest_exchange {
            put("dest-exchange", x);
        }
        if let Some(k) = &s.dest_exchange_key {
            put("dest-exchange-key", k);
        }
        // Prepended to what earlier shovels added.
        let mut list = vec![AMQPValue::FieldTable(t)];
        if let Some(AMQPValue::FieldArray(earlier)) = headers.inner().get("x-shovelled") {
            list.extend(earlier.as_slice().iter().cloned());
        }
        headers.insert("x-shovelled".into(), AMQPValue::FieldArray(FieldArray::from(list)));
    }
    if s.add_timestamp_header {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        headers.insert("x-shovelled-timestamp".into(), AMQPValue::LongLongInt(now as i64));
    }
    p.with_headers(headers)
}
