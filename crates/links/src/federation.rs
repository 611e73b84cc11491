//! Federation, as RabbitMQ's federation plugin configures it: upstreams
//! (`federation-upstream` parameters), upstream sets
//! (`federation-upstream-set`), and policies whose `federation-upstream` or
//! `federation-upstream-set` key selects the exchanges and queues to
//! federate. Each (upstream, exchange or queue) pair is one link:
//!
//! - An **exchange link** declares a queue on the upstream
//!   (`federation: X -> NODE`), binds it to the upstream exchange with the
//!   binding keys the local exchange's bindings need (kept in step as they
//!   change), consumes from it and republishes each message to the local
//!   exchange with an `x-received-from` hop added. A message that has made
//!   `max-hops` hops, or that passed through this node before, is dropped:
//!   Warren filters at the downstream, so the upstream needs no plugin.
//! - A **queue link** consumes from the upstream queue only while the local
//!   queue has consumers and nothing ready for them, and moves each message
//!   into the local queue.
//!
//! Acknowledgements at the upstream follow `ack-mode` as for shovels
//! (`on-confirm` by default: after the local confirm).

use std::collections::BTreeSet;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};
use warren_node::links::{LinkKey, LinkKind, LinkState};
use warren_node::Node;

use crate::shovel::{connect, ensure_queue, AckMode, Ended};
use crate::uri;
use crate::validate::{must, opt, proplist, Kind, Rule};

const ACK_MODES: &[&str] = &["no-ack", "on-publish", "on-confirm"];

/// The keys an upstream and an upstream set's members may set.
const SHARED: &[Rule] = &[
    opt("exchange", Kind::Str),
    opt("queue", Kind::Str),
    opt("consumer-tag", Kind::Str),
    opt("prefetch-count", Kind::Num),
    opt("reconnect-delay", Kind::Num),
    opt("max-hops", Kind::Num),
    opt("expires", Kind::Num),
    opt("message-ttl", Kind::Num),
    opt("trust-user-id", Kind::Bool),
    opt("ack-mode", Kind::Enum(ACK_MODES)),
    opt("ha-policy", Kind::Str),
    opt("bind-nowait", Kind::Bool),
    opt("queue-type", Kind::Str),
];

/// Checks a `federation-upstream` value.
pub fn validate_upstream(
    vhost: &str,
    name: &str,
    value: &Value,
    may_use: Option<crate::MayUse<'_>>,
) -> Result<(), Vec<String>> {
    let Some(m) = value.as_object() else {
        return Err(vec![format!("{name} should be an object, actually was {}", crate::validate::erl(value))]);
    };
    let mut rules = vec![must("uri", Kind::StrOrList)];
    rules.extend(SHARED.iter().map(|r| Rule { key: r.key, kind: r.kind, mandatory: false }));
    let mut errors = proplist(name, &rules, m);
    uri::check(&m.get("uri").map(crate::shovel::uris).unwrap_or_default(), vhost, may_use, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Checks a `federation-upstream-set` value: a list of upstreams by name,
/// each with overrides of the shared keys.
pub fn validate_set(name: &str, value: &Value) -> Result<(), Vec<String>> {
    let Some(list) = value.as_array() else {
        return Err(vec![format!("{name} should be a list, actually was {}", crate::validate::erl(value))]);
    };
    let mut rules = vec![must("upstream", Kind::Str)];
    rules.extend(SHARED.iter().map(|r| Rule { key: r.key, kind: r.kind, mandatory: false }));
    let mut errors = Vec::new();
    for member in list {
        match member.as_object() {
            Some(m) => errors.extend(proplist(name, &rules, m)),
            None => errors.push(format!("{name}: {} is not an upstream", crate::validate::erl(member))),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// What a link federates locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Exchange(String),
    Queue(String),
}

/// One federation link, resolved from an upstream (with its set's
/// overrides) and the exchange or queue a policy selects.
#[derive(Debug, Clone, PartialEq)]
pub struct FedLink {
    pub vhost: String,
    pub upstream: String,
    pub target: Target,
    /// The upstream's value with the set's overrides applied.
    pub value: Map<String, Value>,
}

impl FedLink {
    fn text(&self, key: &str) -> Option<String> {
        self.value.get(key).and_then(Value::as_str).map(str::to_owned)
    }
    fn num(&self, key: &str) -> Option<f64> {
        self.value.get(key).and_then(Value::as_f64)
    }
    pub fn uris(&self) -> Vec<String> {
        self.value.get("uri").map(crate::shovel::uris).unwrap_or_default()
    }
    fn prefetch(&self) -> u16 {
        self.num("prefetch-count").map_or(1000, |p| p.clamp(1.0, 65535.0) as u16)
    }
    pub fn reconnect_delay(&self) -> Duration {
        Duration::from_secs_f64(self.num("reconnect-delay").unwrap_or(5.0).clamp(0.0, 3600.0))
    }
    fn ack_mode(&self) -> AckMode {
        match self.text("ack-mode").as_deref() {
            Some("no-ack") => AckMode::NoAck,
            Some("on-publish") => AckMode::OnPublish,
            _ => AckMode::OnConfirm,
        }
    }
    fn name(&self) -> &str {
        match &self.target {
            Target::Exchange(n) | Target::Queue(n) => n,
        }
    }
    /// The upstream exchange or queue: `exchange` / `queue`, else the same name.
    fn upstream_name(&self) -> String {
        match &self.target {
            Target::Exchange(x) => self.text("exchange").unwrap_or_else(|| x.clone()),
            Target::Queue(q) => self.text("queue").unwrap_or_else(|| q.clone()),
        }
    }

    /// The link's key: its vhost, and "upstream exchange|queue NAME".
    pub fn key(&self) -> LinkKey {
        let kind = match self.target {
            Target::Exchange(_) => "exchange",
            Target::Queue(_) => "queue",
        };
        (LinkKind::Federation, self.vhost.clone(), format!("{} {kind} {}", self.upstream, self.name()))
    }

    /// What it was resolved from, to notice a change.
    pub fn fingerprint(&self) -> Value {
        json!({"upstream": self.upstream, "target": format!("{:?}", self.target), "value": self.value})
    }

    /// The facts `/api/federation-links` lists beside the status.
    pub fn details(&self) -> Map<String, Value> {
        let mut d = Map::new();
        d.insert("upstream".into(), self.upstream.clone().into());
        d.insert("uri".into(), self.uris().first().map(|u| uri::redacted(u)).unwrap_or_default().into());
        match &self.target {
            Target::Exchange(x) => {
                d.insert("type".into(), "exchange".into());
                d.insert("exchange".into(), x.clone().into());
                d.insert("upstream_exchange".into(), self.upstream_name().into());
            }
            Target::Queue(q) => {
                d.insert("type".into(), "queue".into());
                d.insert("queue".into(), q.clone().into());
                d.insert("upstream_queue".into(), self.upstream_name().into());
            }
        }
        d
    }
}

/// Every link the policies and parameters ask for now.
pub fn desired(node: &Node) -> Vec<FedLink> {
    let mut out = Vec::new();
    let upstreams = node.broker.parameters(Some("federation-upstream"), None);
    let sets = node.broker.parameters(Some("federation-upstream-set"), None);
    for vhost in node.broker.vhosts() {
        let (policies, _) = vhost.policies();
        if !policies.iter().any(|p| p.definition.keys().any(|k| k.starts_with("federation-upstream"))) {
            continue;
        }
        // (upstream name, overrides) for a policy definition.
        let members = |def: &Map<String, Value>| -> Vec<(String, Map<String, Value>)> {
            if let Some(u) = def.get("federation-upstream").and_then(Value::as_str) {
                return vec![(u.to_owned(), Map::new())];
            }
            if let Some(re) = def.get("federation-upstream-pattern").and_then(Value::as_str) {
                let Ok(re) = regex::Regex::new(re) else { return Vec::new() };
                return upstreams
                    .iter()
                    .filter(|p| p.1 == vhost.name && re.is_match(&p.2))
                    .map(|p| (p.2.clone(), Map::new()))
                    .collect();
            }
            match def.get("federation-upstream-set").and_then(Value::as_str) {
                Some("all") => {
                    upstreams.iter().filter(|p| p.1 == vhost.name).map(|p| (p.2.clone(), Map::new())).collect()
                }
                Some(set) => sets
                    .iter()
                    .find(|p| p.1 == vhost.name && p.2 == set)
                    .and_then(|p| p.3.as_array().cloned())
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|m| {
                        let mut m = m.as_object()?.clone();
                        let name = m.remove("upstream")?.as_str()?.to_owned();
                        Some((name, m))
                    })
                    .collect(),
                None => Vec::new(),
            }
        };
        let mut targets: Vec<(Target, Map<String, Value>)> = Vec::new();
        for x in vhost.exchanges() {
            if x.name.is_empty() || x.name.starts_with("amq.") {
                continue;
            }
            if let Some(p) = warren_core::policy::select(&policies, &x.name, false) {
                targets.push((Target::Exchange(x.name.clone()), p.definition.clone()));
            }
        }
        for q in vhost.queues() {
            if let Some(p) = warren_core::policy::select(&policies, &q.name, true) {
                targets.push((Target::Queue(q.name.to_string()), p.definition.clone()));
            }
        }
        for (target, def) in targets {
            for (upstream, overrides) in members(&def) {
                let Some(base) = upstreams.iter().find(|p| p.1 == vhost.name && p.2 == upstream) else { continue };
                let mut value = base.3.as_object().cloned().unwrap_or_default();
                value.extend(overrides);
                out.push(FedLink { vhost: vhost.name.clone(), upstream, target: target.clone(), value });
            }
        }
    }
    out
}

/// Runs a link until it is stopped (`Ok(Stopped)`) or fails.
pub(crate) async fn run(
    node: &Node,
    key: &LinkKey,
    link: &FedLink,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, String> {
    let (up, up_uri) = connect(node, &link.uris(), &link.vhost).await?;
    let local = match connect(node, &["amqp://".to_owned()], &link.vhost).await {
        Ok((c, _)) => c,
        Err(e) => {
            crate::shovel::close(&up).await;
            return Err(e);
        }
    };
    let conns = [&up, &local];
    let result = tokio::select! {
        r = async {
            match &link.target {
                Target::Exchange(x) => exchange_link(node, key, link, x, stop, &up, &local, &up_uri).await,
                Target::Queue(q) => queue_link(node, key, link, q, stop, &up, &local, &up_uri).await,
            }
        } => r,
        e = crate::shovel::lost(&conns) => Err(e),
    };
    crate::shovel::close(&up).await;
    crate::shovel::close(&local).await;
    result
}

fn err(what: &str, e: lapin::Error) -> String {
    format!("{what}: {e}")
}

/// The binding keys (and arguments) the local exchange's bindings need
/// from the upstream exchange.
fn wanted_bindings(node: &Node, vhost: &str, x: &str) -> BTreeSet<(String, String)> {
    let Some(v) = node.broker.vhost(vhost) else { return Default::default() };
    let Ok(x) = v.exchange(x) else { return Default::default() };
    if x.kind == warren_core::ExchangeKind::Fanout {
        return [(String::new(), "{}".to_owned())].into();
    }
    x.bindings()
        .into_iter()
        .map(|b| (b.routing_key, warren_core::arguments::table_to_json(&b.arguments).to_string()))
        .collect()
}

fn table(json: &str) -> FieldTable {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(m)) => warren_core::arguments::table_from_json(&m),
        _ => FieldTable::default(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn exchange_link(
    node: &Node,
    key: &LinkKey,
    link: &FedLink,
    x: &str,
    stop: &mut watch::Receiver<bool>,
    up: &Connection,
    local: &Connection,
    up_uri: &str,
) -> Result<Ended, String> {
    let upstream_x = link.upstream_name();
    let suffix = if link.vhost == "/" { String::new() } else { format!(" ({})", link.vhost) };
    let queue = format!("federation: {x} -> {}{suffix}", warren_node::node_name());
    let ch = up.create_channel().await.map_err(|e| err("upstream channel", e))?;
    let mut args = FieldTable::default();
    if let Some(ms) = link.num("expires") {
        args.insert("x-expires".into(), AMQPValue::LongLongInt(ms as i64));
    }
    if let Some(ms) = link.num("message-ttl") {
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms as i64));
    }
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(queue.as_str().into(), durable, args)
        .await
        .map_err(|e| err(&format!("declaring '{queue}' upstream"), e))?;
    let mut bound: BTreeSet<(String, String)> = BTreeSet::new();
    let sync = |bound: &mut BTreeSet<(String, String)>| {
        let wanted = wanted_bindings(node, &link.vhost, x);
        let add: Vec<_> = wanted.difference(bound).cloned().collect();
        let remove: Vec<_> = bound.difference(&wanted).cloned().collect();
        *bound = wanted;
        (add, remove)
    };
    let rebind = |ch: Channel, add: Vec<(String, String)>, remove: Vec<(String, String)>| {
        let (queue, upstream_x) = (queue.clone(), upstream_x.clone());
        async move {
            for (k, a) in add {
                ch.queue_bind(
                    queue.as_str().into(),
                    upstream_x.as_str().into(),
                    k.as_str().into(),
                    QueueBindOptions::default(),
                    table(&a),
                )
                .await
                .map_err(|e| err(&format!("binding to upstream exchange '{upstream_x}'"), e))?;
            }
            for (k, a) in remove {
                ch.queue_unbind(queue.as_str().into(), upstream_x.as_str().into(), k.as_str().into(), table(&a))
                    .await
                    .map_err(|e| err("unbinding upstream", e))?;
            }
            Ok::<(), String>(())
        }
    };
    let (add, remove) = sync(&mut bound);
    rebind(ch.clone(), add, remove).await?;
    let mut resync = tokio::time::interval(Duration::from_secs(1));
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let target = Dest { exchange: x.to_owned(), routing_key: None };
    let mut mover = Mover::start(link, up, local, up_uri, &queue, target).await?;
    node.links.set_state(key, LinkState::Running);
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(Ended::Stopped),
            _ = resync.tick() => {
                let (add, remove) = sync(&mut bound);
                if !add.is_empty() || !remove.is_empty() {
                    rebind(ch.clone(), add, remove).await?;
                }
            }
            r = mover.next() => {
                r?;
                node.links.count_moved(key, mover.take_moved());
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn queue_link(
    node: &Node,
    key: &LinkKey,
    link: &FedLink,
    q: &str,
    stop: &mut watch::Receiver<bool>,
    up: &Connection,
    local: &Connection,
    up_uri: &str,
) -> Result<Ended, String> {
    let upstream_q = link.upstream_name();
    ensure_queue(up, &upstream_q, &FieldTable::default()).await?;
    node.links.set_state(key, LinkState::Running);
    let mut check = tokio::time::interval(Duration::from_millis(100));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mover: Option<Mover> = None;
    loop {
        // Feed the local queue only while its consumers wait for messages.
        let (consumers, ready) = node
            .broker
            .vhost(&link.vhost)
            .and_then(|v| v.queue(q).ok())
            .map_or((0, 0), |q| (q.consumer_count(), q.message_count()));
        let wanted = consumers > 0 && ready < u32::from(link.prefetch().min(64));
        match (&mut mover, wanted) {
            (None, true) => {
                let target = Dest { exchange: String::new(), routing_key: Some(q.to_owned()) };
                mover = Some(Mover::start(link, up, local, up_uri, &upstream_q, target).await?);
            }
            (Some(_), false) => {
                if let Some(m) = mover.take() {
                    m.cancel().await?;
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = stop.changed() => return Ok(Ended::Stopped),
            _ = check.tick() => {}
            r = async { mover.as_mut().expect("checked").next().await }, if mover.is_some() => {
                r?;
                if let Some(m) = mover.as_mut() {
                    node.links.count_moved(key, m.take_moved());
                }
            }
        }
    }
}

/// Where a link republishes locally.
struct Dest {
    exchange: String,
    /// None: the message's own routing key.
    routing_key: Option<String>,
}

/// Consumes from an upstream queue and republishes locally, one message
/// per call of [`Mover::next`], acknowledging upstream as `ack-mode` asks
/// (through its own acker task, as shovels do).
struct Mover {
    consumer: lapin::Consumer,
    upstream: Channel,
    out: Channel,
    tx: Option<mpsc::Sender<(u64, Option<lapin::PublisherConfirm>)>>,
    acker: tokio::task::JoinHandle<Result<(), String>>,
    dest: Dest,
    hop: FieldTable,
    max_hops: usize,
    me: String,
    ack_mode: AckMode,
    trust_user_id: bool,
    /// Messages moved since the last look (`Mover::take_moved`).
    moved: u64,
}

impl Mover {
    #[allow(clippy::too_many_arguments)]
    async fn start(
        link: &FedLink,
        up: &Connection,
        local: &Connection,
        up_uri: &str,
        queue: &str,
        dest: Dest,
    ) -> Result<Mover, String> {
        let ack_mode = link.ack_mode();
        let out = local.create_channel().await.map_err(|e| err("local channel", e))?;
        if ack_mode == AckMode::OnConfirm {
            out.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| err("confirm.select", e))?;
        }
        let upstream = up.create_channel().await.map_err(|e| err("upstream channel", e))?;
        let no_ack = ack_mode == AckMode::NoAck;
        if !no_ack {
            upstream.basic_qos(link.prefetch(), BasicQosOptions::default()).await.map_err(|e| err("basic.qos", e))?;
        }
        let tag = link.text("consumer-tag").unwrap_or_default();
        let consumer = upstream
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions { no_ack, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| err(&format!("consuming from upstream '{queue}'"), e))?;
        let (tx, mut rx) = mpsc::channel::<(u64, Option<lapin::PublisherConfirm>)>(usize::from(link.prefetch()));
        let acking = upstream.clone();
        let acker = tokio::spawn(async move {
            while let Some((tag, confirm)) = rx.recv().await {
                if let Some(c) = confirm {
                    if let Confirmation::Nack(_) = c.await.map_err(|e| err("publisher confirm", e))? {
                        let requeue = lapin::options::BasicNackOptions { requeue: true, multiple: false };
                        acking.basic_nack(tag, requeue).await.map_err(|e| err("basic.nack", e))?;
                        continue;
                    }
                }
                acking.basic_ack(tag, BasicAckOptions::default()).await.map_err(|e| err("basic.ack", e))?;
            }
            Ok(())
        });
        let mut hop = FieldTable::default();
        hop.insert("uri".into(), AMQPValue::LongString(LongString::from(uri::redacted(up_uri))));
        let (kind, name) = match &link.target {
            Target::Exchange(_) => ("exchange", link.upstream_name()),
            Target::Queue(_) => ("queue", link.upstream_name()),
        };
        hop.insert(kind.into(), AMQPValue::LongString(LongString::from(name)));
        hop.insert("cluster-name".into(), AMQPValue::LongString(LongString::from(link.upstream.as_str())));
        Ok(Mover {
            consumer,
            upstream,
            out,
            tx: Some(tx),
            acker,
            dest,
            hop,
            max_hops: link.num("max-hops").map_or(1, |h| h.max(1.0) as usize),
            me: warren_node::node_name(),
            ack_mode,
            moved: 0,
            trust_user_id: link.value.get("trust-user-id").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// Moves the next message (or drops it: too many hops, or a loop).
    async fn next(&mut self) -> Result<(), String> {
        if self.acker.is_finished() {
            return Err("the acker stopped".into());
        }
        let d = match self.consumer.next().await {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(err("upstream", e)),
            None => return Err("the upstream cancelled the consumer".into()),
        };
        let mut headers = d.properties.headers().clone().unwrap_or_default();
        let hops: Vec<AMQPValue> = match headers.inner().get("x-received-from") {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
            _ => Vec::new(),
        };
        let looped = hops.iter().any(|h| match h {
            AMQPValue::FieldTable(t) => matches!(t.inner().get("cluster-name"),
                Some(AMQPValue::LongString(s)) if s.as_bytes() == self.me.as_bytes()),
            _ => false,
        });
        if hops.len() >= self.max_hops || looped {
            if self.ack_mode != AckMode::NoAck {
                self.upstream
                    .basic_ack(d.delivery_tag, BasicAckOptions::default())
                    .await
                    .map_err(|e| err("basic.ack", e))?;
            }
            return Ok(());
        }
        let mut hop = self.hop.clone();
        hop.insert("redelivered".into(), AMQPValue::Boolean(d.redelivered));
        let mut list = vec![AMQPValue::FieldTable(hop)];
        list.extend(hops);
        headers.insert("x-received-from".into(), AMQPValue::FieldArray(FieldArray::from(list)));
        let mut props: BasicProperties = d.properties.clone().with_headers(headers);
        if !self.trust_user_id && props.user_id().is_some() {
            // As RabbitMQ: without trust-user-id, the user_id is cleared.
            props = warren_protocol::content::without(&props, warren_protocol::content::Property::UserId);
        }
        let key = self.dest.routing_key.clone().unwrap_or_else(|| d.routing_key.as_str().to_owned());
        let confirm = self
            .out
            .basic_publish(
                self.dest.exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &d.data,
                props,
            )
            .await
            .map_err(|e| err("republishing locally", e))?;
        let taken = match self.ack_mode {
            AckMode::NoAck => None,
            AckMode::OnPublish => Some((d.delivery_tag, None)),
            AckMode::OnConfirm => Some((d.delivery_tag, Some(confirm))),
        };
        if let (Some(t), Some(tx)) = (taken, &self.tx) {
            tx.send(t).await.map_err(|_| "the acker stopped")?;
        }
        self.moved += 1;
        Ok(())
    }

    /// Stops consuming: what was moved is acknowledged upstream first, then
    /// the channel closes, which hands back what was delivered to it but
    /// not moved.
    async fn cancel(mut self) -> Result<(), String> {
        let tag = self.consumer.tag();
        self.upstream.basic_cancel(tag, BasicCancelOptions::default()).await.map_err(|e| err("basic.cancel", e))?;
        drop(self.tx.take());
        match tokio::time::timeout(Duration::from_secs(30), &mut self.acker).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err("the acker stopped".into()),
            Err(_) => return Err("the upstream did not take the acknowledgements in 30 s".into()),
        }
        let _ = self.upstream.close(200, "OK".into()).await;
        let _ = self.out.close(200, "OK".into()).await;
        Ok(())
    }

    fn take_moved(&mut self) -> u64 {
        std::mem::take(&mut self.moved)
    }
}

/// A link's state names as `/api/federation-links` gives them.
pub fn status_name(state: &LinkState) -> &'static str {
    match state {
        LinkState::Starting => "starting",
        LinkState::Running => "running",
        LinkState::Terminated { .. } => "error",
    }
}
