//! One AMQP channel: its methods, publishing (content assembly, routing,
//! confirms, transactions), consumers, deliveries and acknowledgements.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use amq_protocol::protocol::{access, basic, channel as chan, confirm, exchange, queue, tx, AMQPClass};
use bytes::{Bytes, BytesMut};
use warren_core::auth::{Access, Resource};
use warren_core::publish::Publisher;
use warren_core::queue::AfterCancel;
use warren_core::stats::{self, Counters, Rates};
use warren_core::vhost::REPLY_TO;
use warren_core::{
    generated_name, Broker, ChannelCredit, Consumer, Delivery, ExchangeKind, Message, MessageRef, Outbox, Queue, VHost,
};
use warren_protocol::content::{Assembler, Content};
use warren_protocol::frame;
use warren_protocol::method::PublishArgs;
use warren_protocol::{AMQPValue, AmqpError};
use warren_store::Entry;

/// What a channel borrows from its connection while handling a frame.
pub struct Ctx<'a> {
    pub broker: &'a Broker,
    pub vhost: &'a Arc<VHost>,
    /// The authenticated user, and whether it may set any `user_id`.
    pub user: &'a str,
    pub impersonator: bool,
    pub connection: u64,
    pub out: &'a mut BytesMut,
    pub outbox: &'a Arc<dyn Outbox>,
    pub frame_max: u32,
    pub max_message_size: u64,
    pub to_wake: &'a mut Vec<Arc<Queue>>,
    /// Message-log position known to be on disk.
    pub synced: u64,
    /// Set when a queue just published to asks its publishers to pause.
    pub pressure: &'a mut bool,
}

impl Ctx<'_> {
    /// Checks the user's permission for an operation on a resource.
    fn check(&self, kind: Resource, name: &str, access: Access) -> Result<(), AmqpError> {
        self.broker.access().check(&self.vhost.name, self.user, kind, name, access)
    }
}

/// This channel's side of core's publish path (`warren_core::publish`).
fn publisher<'x>(ctx: &'x Ctx<'_>, topic_permissions: bool, stats: &'x Counters) -> Publisher<'x> {
    Publisher {
        broker: ctx.broker,
        vhost: ctx.vhost,
        user: ctx.user,
        impersonator: ctx.impersonator,
        topic_permissions,
        stats,
    }
}

/// A delivery awaiting its ack.
struct Unacked {
    queue: Arc<Queue>,
    entry: Entry<MessageRef>,
    /// None for `basic.get`: no consumer credit to give back.
    consumer: Option<Arc<Consumer>>,
    /// When its consumer's timeout starts counting (ms: its delivery, or a
    /// later celery ETA, `consumer_timeout.rs`); 0 without a timeout.
    at_ms: u64,
}

/// A reply that may only go out once the message log is synced.
enum Held {
    /// Publisher confirm for this publish sequence number.
    Confirm(u64),
    /// Publisher nack (a queue refused the message), kept in order.
    Nack(u64),
    CommitOk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Confirm,
    Tx,
}

/// An ack, reject or nack, as buffered by a transaction.
#[derive(Clone, Copy)]
struct Settle {
    tag: u64,
    multiple: bool,
    /// None = ack; Some(requeue) = reject/nack.
    requeue: Option<bool>,
}

struct Publish {
    exchange: Arc<str>,
    routing_key: Arc<str>,
    mandatory: bool,
}

/// Returns `s` as a shared string, reusing `last` when it is the same
/// (publishers repeat exchange and routing key: no allocation then).
fn intern(last: &mut Arc<str>, s: &str) -> Arc<str> {
    if &**last != s {
        *last = Arc::from(s);
    }
    last.clone()
}

/// What the management API sees of a channel: kept current by the
/// channel (its only writer), read by the API.
#[derive(Default)]
pub struct ChannelInfo {
    pub number: u16,
    pub stats: Counters,
    pub rates: Rates,
    /// `basic.qos` prefetch for new consumers, and the channel-wide one.
    pub prefetch: AtomicU32,
    pub global_prefetch: AtomicU32,
    pub unacked: AtomicU64,
    pub consumers: AtomicU32,
    /// 0 plain, 1 confirm, 2 transactional.
    pub mode: AtomicU8,
}

impl ChannelInfo {
    pub fn new(number: u16) -> Self {
        ChannelInfo { number, ..Default::default() }
    }

    fn store(a: &AtomicU64, v: u64) {
        a.store(v, Ordering::Relaxed);
    }
}

pub struct Channel {
    id: u16,
    /// Its statistics and settings, shared with the management API.
    pub info: Arc<ChannelInfo>,
    /// Deliveries awaiting their ack (`info.unacked`).
    outstanding: u64,
    /// Tags requeued because their consumer timed out: a late ack or
    /// reject of one is ignored rather than closing the channel.
    timed_out: Vec<u64>,
    /// We sent channel.close and wait for close-ok.
    closing: bool,
    /// Done: the connection drops it.
    closed: bool,
    assembler: Assembler,
    publish: Option<Publish>,
    consumers: HashMap<String, (Arc<Consumer>, Arc<Queue>)>,
    /// Prefetch given to consumers created from now on (qos global=false).
    consumer_prefetch: u32,
    /// Channel-wide prefetch (qos global=true), shared with its consumers.
    credit: Arc<ChannelCredit>,
    /// Tag the next delivery or get-ok will carry.
    next_tag: u64,
    /// Deliveries by tag: `unacked[i]` has tag `first_tag + i`; None where
    /// the delivery needed no ack or was settled out of order.
    unacked: VecDeque<Option<Unacked>>,
    first_tag: u64,
    mode: Mode,
    /// Confirm mode: sequence number of the last publish.
    publish_seq: u64,
    /// Confirms decided but not yet written: tags `confirm_from..=confirm_to`.
    confirm_from: u64,
    confirm_to: u64,
    tx_publishes: Vec<(Publish, MessageRef)>,
    tx_settles: Vec<Settle>,
    /// The queue named by an empty queue name (last one declared here).
    last_queue: Option<String>,
    /// Reused for every publish's routing result, to save an allocation.
    routed: Vec<Arc<Queue>>,
    /// The last exchange and routing key published with (see `intern`).
    last_exchange: Arc<str>,
    last_routing_key: Arc<str>,
    /// The exchange last found writable, and the access epoch of that check
    /// (saves a lock and a regex match per message).
    writable: Option<(u64, Arc<str>)>,
    /// Whether topic permissions apply to this user here, at an access epoch.
    topic_checks: Option<(u64, bool)>,
    /// Replies waiting for the message log to sync past their position,
    /// in the order they must be sent.
    held: VecDeque<(u64, Held)>,
    /// Direct reply-to: this channel's reply pseudo-queue and consumer tag.
    reply: Option<(Arc<Queue>, String)>,
}

/// What a batch of queue events leaves to do once it is handled: queues to
/// wake, and the run of deliveries of one acking consumer just written out,
/// which leaves its outbound window in one step (`Consumer::written`).
#[derive(Default)]
pub struct Turn {
    pub to_wake: Vec<Arc<Queue>>,
    run: Option<(Arc<Consumer>, Arc<Queue>, u64)>,
}

impl Turn {
    fn written(&mut self, consumer: &Arc<Consumer>, queue: &Arc<Queue>, cost: u64) {
        match &mut self.run {
            Some((c, _, total)) if Arc::ptr_eq(c, consumer) => *total += cost,
            _ => {
                self.flush();
                self.run = Some((consumer.clone(), queue.clone(), cost));
            }
        }
    }

    /// Ends the run: its window frees up, and its queue may hand over more.
    pub fn flush(&mut self) {
        if let Some((c, q, total)) = self.run.take() {
            c.written(total);
            self.to_wake.push(q);
        }
    }
}

fn reply(out: &mut BytesMut, channel: u16, m: AMQPClass) {
    frame::write_method(out, channel, &m);
}

impl Channel {
    pub fn new(id: u16) -> Self {
        Channel {
            id,
            info: Arc::new(ChannelInfo::new(id)),
            outstanding: 0,
            timed_out: Vec::new(),
            closing: false,
            closed: false,
            assembler: Assembler::default(),
            publish: None,
            consumers: HashMap::new(),
            consumer_prefetch: 0,
            credit: Arc::new(ChannelCredit::default()),
            next_tag: 1,
            unacked: VecDeque::new(),
            first_tag: 1,
            mode: Mode::Plain,
            publish_seq: 0,
            confirm_from: 0,
            confirm_to: 0,
            tx_publishes: Vec::new(),
            tx_settles: Vec::new(),
            last_queue: None,
            routed: Vec::new(),
            last_exchange: Arc::from(""),
            last_routing_key: Arc::from(""),
            writable: None,
            topic_checks: None,
            held: VecDeque::new(),
            reply: None,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a delivery for `consumer` still belongs here. Every path that
    /// drops a consumer from a channel (cancel, queue deletion, channel
    /// close) sets its `cancelled` flag first, so no map lookup is needed.
    pub fn owns(&self, consumer: &Consumer) -> bool {
        !self.closing && !consumer.cancelled.load(Ordering::Acquire)
    }

    /// A soft error: close the channel with it and give back its messages.
    pub fn fail(&mut self, ctx: &mut Ctx<'_>, e: AmqpError) {
        tracing::debug!(channel = self.id, code = e.code(), text = %e.text, "channel error");
        reply(
            ctx.out,
            self.id,
            AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
                reply_code: e.code(),
                reply_text: warren_protocol::short_string(&e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        self.closing = true;
        self.assembler = Assembler::Idle;
        self.release_all(ctx.vhost);
    }

    /// Cancels every consumer and requeues every unacked delivery, in order.
    pub fn release_all(&mut self, vhost: &Arc<VHost>) {
        if let Some((q, _)) = self.reply.take() {
            vhost.drop_reply_queue(&q);
        }
        for (_, (consumer, q)) in self.consumers.drain() {
            if q.remove_consumer(&consumer) == AfterCancel::AutoDelete {
                vhost.remove_queue(&q);
            }
        }
        let all: Vec<Unacked> = self.unacked.drain(..).flatten().collect();
        self.first_tag = self.next_tag;
        self.outstanding = 0;
        ChannelInfo::store(&self.info.unacked, 0);
        Self::requeue(all);
        self.tx_publishes.clear();
        self.tx_settles.clear();
    }

    fn requeue(taken: Vec<Unacked>) {
        Self::requeue_as(taken, false);
    }

    /// Gives deliveries back to their queues: `rejected` (nack/reject with
    /// requeue) lets a queue with a requeue back-off hold them for a while.
    fn requeue_as(taken: Vec<Unacked>, rejected: bool) {
        for (q, group) in group_by_queue(taken) {
            let entries: Vec<_> = group
                .into_iter()
                .map(|u| {
                    if let Some(c) = &u.consumer {
                        c.release(1);
                    }
                    u.entry
                })
                .collect();
            if rejected {
                q.reject_requeue(entries);
            } else {
                q.requeue(entries);
            }
        }
    }

    /// Writes one delivery from a queue to the client.
    pub fn deliver(&mut self, out: &mut BytesMut, frame_max: u32, d: Delivery, turn: &mut Turn) {
        let tag = self.next_tag;
        self.next_tag += 1;
        let msg = &d.entry.message;
        frame::write_deliver(out, self.id, &d.consumer.tag, tag, d.entry.redelivered, &msg.exchange, &msg.routing_key);
        let props = warren_core::queue::delivery_properties(&d.queue, &d.entry);
        frame::write_content(out, self.id, frame_max, &props, &msg.body);
        drop(props);
        self.info.stats.bump(if d.consumer.no_ack { stats::DELIVER_NO_ACK } else { stats::DELIVER }, 1);
        if d.entry.redelivered {
            self.info.stats.bump(stats::REDELIVER, 1);
        }
        if d.consumer.no_ack {
            d.consumer.finished(msg.body.len());
            turn.to_wake.push(d.queue);
            self.push_unacked(tag, None);
        } else {
            turn.written(&d.consumer, &d.queue, d.consumer.window_cost(msg.body.len()));
            // Its timeout counts from now, or from a celery ETA it carries.
            let at_ms = match d.consumer.timeout_ms {
                Some(_) => warren_core::consumer_timeout::clock_start(msg, warren_core::now_ms()),
                None => 0,
            };
            self.push_unacked(tag, Some(Unacked { queue: d.queue, entry: d.entry, consumer: Some(d.consumer), at_ms }));
        }
    }

    fn push_unacked(&mut self, tag: u64, u: Option<Unacked>) {
        if u.is_some() {
            self.outstanding += 1;
            ChannelInfo::store(&self.info.unacked, self.outstanding);
        }
        if self.unacked.is_empty() {
            if u.is_none() {
                self.first_tag = tag + 1;
                return;
            }
            self.first_tag = tag;
        }
        debug_assert_eq!(self.first_tag + self.unacked.len() as u64, tag, "delivery tags out of step");
        self.unacked.push_back(u);
    }

    /// The queue deleted this consumer: tell the client if it asked.
    pub fn server_cancel(&mut self, out: &mut BytesMut, consumer: &Arc<Consumer>, notify: bool) {
        let ours = self.consumers.get(&*consumer.tag).is_some_and(|(c, _)| Arc::ptr_eq(c, consumer));
        if !ours || self.closing {
            return;
        }
        self.consumers.remove(&*consumer.tag);
        if notify {
            self.write_cancel(out, &consumer.tag);
        }
    }

    /// A server-sent `basic.cancel` for consumer `tag`.
    fn write_cancel(&self, out: &mut BytesMut, tag: &str) {
        let cancel = basic::Cancel { consumer_tag: tag.into(), nowait: true };
        reply(out, self.id, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)));
    }

    /// Drops the settled slots at the front of `unacked`, keeping
    /// `first_tag` the tag of its first slot.
    fn trim_settled(&mut self) {
        while let Some(None) = self.unacked.front() {
            self.unacked.pop_front();
            self.first_tag += 1;
        }
        if self.unacked.is_empty() {
            self.first_tag = self.next_tag;
        }
    }

    /// Whether replies wait for a sync of the message log.
    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Consumer timeouts (every tick): a consumer holding a delivery unacked
    /// for longer than its timeout is cancelled alone — `basic.cancel` if
    /// the client takes it, its unacked deliveries requeued, the channel
    /// and its other consumers untouched (RabbitMQ closes the whole
    /// channel with 406 instead).
    pub fn expire_consumers(&mut self, out: &mut BytesMut, vhost: &Arc<VHost>, notify: bool, now_ms: u64) {
        if self.closing || !self.consumers.values().any(|(c, _)| c.timeout_ms.is_some()) {
            return;
        }
        let mut expired: Vec<Arc<Consumer>> = Vec::new();
        for u in self.unacked.iter().flatten() {
            let Some(c) = &u.consumer else { continue };
            let Some(t) = c.timeout_ms else { continue };
            if u.at_ms > 0 && now_ms.saturating_sub(u.at_ms) > t && !expired.iter().any(|e| Arc::ptr_eq(e, c)) {
                expired.push(c.clone());
            }
        }
        for c in expired {
            let queue = self.unacked.iter().flatten().find(|u| u.consumer.as_ref().is_some_and(|x| Arc::ptr_eq(x, &c)));
            let queue = queue.map(|u| u.queue.name.clone()).unwrap_or_default();
            tracing::warn!(channel = self.id, consumer = %c.tag, %queue, timeout_ms = c.timeout_ms, "consumer timed out: cancelled, its deliveries requeued");
            if self.consumers.get(&*c.tag).is_some_and(|(x, _)| Arc::ptr_eq(x, &c)) {
                if let Some((consumer, q)) = self.consumers.remove(&*c.tag) {
                    if q.remove_consumer(&consumer) == AfterCancel::AutoDelete {
                        vhost.remove_queue(&q);
                    }
                }
            }
            let mut taken = Vec::new();
            for (i, slot) in self.unacked.iter_mut().enumerate() {
                if slot.as_ref().is_some_and(|u| u.consumer.as_ref().is_some_and(|x| Arc::ptr_eq(x, &c))) {
                    taken.extend(slot.take());
                    self.timed_out.push(self.first_tag + i as u64);
                }
            }
            self.trim_settled();
            self.outstanding = self.outstanding.saturating_sub(taken.len() as u64);
            ChannelInfo::store(&self.info.unacked, self.outstanding);
            Self::requeue(taken);
            if notify {
                self.write_cancel(out, &c.tag);
            }
        }
    }

    /// Sends what the log's progress allows: held replies up to `synced`,
    /// then the pending confirms as one ack.
    pub fn flush_confirms(&mut self, out: &mut BytesMut, synced: u64) {
        while self.held.front().is_some_and(|(pos, _)| *pos <= synced) {
            match self.held.pop_front().expect("checked").1 {
                Held::Confirm(seq) => {
                    if self.confirm_to == 0 {
                        self.confirm_from = seq;
                    }
                    self.confirm_to = seq;
                }
                Held::Nack(seq) => {
                    self.write_pending_acks(out);
                    frame::write_confirm(out, self.id, seq, false, false);
                }
                Held::CommitOk => reply(out, self.id, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}))),
            }
        }
        self.write_pending_acks(out);
    }

    fn write_pending_acks(&mut self, out: &mut BytesMut) {
        if self.confirm_to != 0 {
            frame::write_confirm(out, self.id, self.confirm_to, self.confirm_to > self.confirm_from, true);
            self.info.stats.bump(stats::CONFIRM, self.confirm_to - self.confirm_from + 1);
            self.confirm_from = 0;
            self.confirm_to = 0;
        }
    }

    /// Nacks publish `seq`, after every confirm before it.
    fn nack(&mut self, out: &mut BytesMut, seq: u64) {
        if !self.held.is_empty() {
            self.held.push_back((0, Held::Nack(seq)));
            return;
        }
        self.write_pending_acks(out);
        frame::write_confirm(out, self.id, seq, false, false);
    }

    /// Confirms publish `seq` once the log is synced to `pos` (0: nothing
    /// to wait for). Confirms leave in publish order.
    fn confirm(&mut self, seq: u64, pos: u64, synced: u64) {
        if pos > synced || !self.held.is_empty() {
            self.held.push_back((pos, Held::Confirm(seq)));
            return;
        }
        if self.confirm_to == 0 {
            self.confirm_from = seq;
        }
        self.confirm_to = seq;
    }

    fn queue_name(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue.clone().ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// `basic.publish`: its content follows.
    pub fn on_publish(&mut self, ctx: &mut Ctx<'_>, p: PublishArgs<'_>) -> Result<(), AmqpError> {
        if self.closing {
            return Ok(());
        }
        if !self.assembler.is_idle() {
            return Err(self.assembler.expected());
        }
        if p.immediate {
            return Err(AmqpError::not_implemented("immediate=true").during(60, 40));
        }
        let exchange = intern(&mut self.last_exchange, p.exchange);
        let epoch = ctx.broker.access_epoch();
        if !self.writable.as_ref().is_some_and(|(e, x)| *e == epoch && Arc::ptr_eq(x, &exchange)) {
            ctx.check(Resource::Exchange, &exchange, Access::Write).map_err(|e| e.during(60, 40))?;
            self.writable = Some((epoch, exchange.clone()));
        }
        let routing_key = intern(&mut self.last_routing_key, p.routing_key);
        self.publish = Some(Publish { exchange, routing_key, mandatory: p.mandatory });
        self.assembler.start();
        Ok(())
    }

    pub fn on_header(&mut self, ctx: &mut Ctx<'_>, payload: &Bytes) -> Result<(), AmqpError> {
        if self.closing {
            return Ok(());
        }
        if let Some(content) = self.assembler.header(payload, ctx.max_message_size)? {
            self.published(ctx, content)?;
        }
        Ok(())
    }

    pub fn on_body(&mut self, ctx: &mut Ctx<'_>, payload: Bytes) -> Result<(), AmqpError> {
        if self.closing {
            return Ok(());
        }
        if let Some(content) = self.assembler.body(payload)? {
            self.published(ctx, content)?;
        }
        Ok(())
    }

    fn published(&mut self, ctx: &mut Ctx<'_>, content: Content) -> Result<(), AmqpError> {
        let p = self.publish.take().expect("content follows a basic.publish");
        let mut props_raw = content.header.properties_raw;
        let view = warren_protocol::content::scan_properties(&props_raw)
            .ok_or_else(|| AmqpError::frame_error("cannot decode content header properties"))?;
        let topic_permissions = self.has_topic_permissions(ctx);
        let publisher = publisher(ctx, topic_permissions, &self.info.stats);
        publisher.check_user_id(view.user_id)?;
        let direct_reply = view.reply_to == Some(REPLY_TO);
        let kept: warren_core::message::Props = view.into();
        let msg = if direct_reply {
            // Direct reply-to: name this channel's reply queue instead.
            let Some((q, _)) = &self.reply else {
                return Err(AmqpError::precondition("fast reply consumer does not exist").during(60, 40));
            };
            let props = amq_protocol::protocol::basic::parse_properties(&props_raw[..])
                .map(|(_, p)| p)
                .unwrap_or_default()
                .with_reply_to(q.name.as_str().into());
            props_raw = warren_protocol::content::encode_properties(&props);
            Message::new(p.exchange.clone(), p.routing_key.clone(), props_raw, props, content.body)
        } else {
            Message::with_props(p.exchange.clone(), p.routing_key.clone(), props_raw, kept, content.body)
        };
        let msg = Arc::new(msg);
        if self.mode == Mode::Tx {
            // Checked now, as RabbitMQ does; routed on commit.
            msg.check_expiration().map_err(|e| e.during(60, 40))?;
            publisher.exchange(&p.exchange)?;
            self.tx_publishes.push((p, msg));
            return Ok(());
        }
        let (pos, accepted) = self.route(ctx, &p, msg)?;
        if self.mode == Mode::Confirm {
            self.publish_seq += 1;
            if accepted {
                self.confirm(self.publish_seq, pos, ctx.synced);
            } else {
                self.nack(ctx.out, self.publish_seq);
            }
        }
        Ok(())
    }

    /// Routes and enqueues a message (returning it to a mandatory
    /// publisher if no queue takes it). Returns the message-log position
    /// that must be synced before it may be confirmed (0 if none), and
    /// whether every queue accepted it (a length limit may refuse it: nack).
    fn route(&mut self, ctx: &mut Ctx<'_>, p: &Publish, msg: MessageRef) -> Result<(u64, bool), AmqpError> {
        let mut queues = std::mem::take(&mut self.routed);
        let returned = p.mandatory.then(|| msg.clone());
        let topic_permissions = self.has_topic_permissions(ctx);
        let outcome =
            publisher(ctx, topic_permissions, &self.info.stats).publish(&p.exchange, msg, p.mandatory, &mut queues);
        self.routed = queues;
        let outcome = outcome?;
        if let Some(msg) = returned.filter(|_| outcome.unroutable) {
            frame::write_return(ctx.out, self.id, 312, "NO_ROUTE", &p.exchange, &p.routing_key);
            frame::write_content(ctx.out, self.id, ctx.frame_max, &msg.properties_raw, &msg.body);
        }
        *ctx.pressure |= outcome.pressure;
        Ok((outcome.pos, outcome.accepted))
    }

    /// Whether the user has topic permissions in this vhost (cached per
    /// access epoch: without any, topic publishes skip the check).
    fn has_topic_permissions(&mut self, ctx: &Ctx<'_>) -> bool {
        let epoch = ctx.broker.access_epoch();
        match self.topic_checks {
            Some((e, any)) if e == epoch => any,
            _ => {
                let any = ctx.broker.access().has_topic_permissions(&ctx.vhost.name, ctx.user);
                self.topic_checks = Some((epoch, any));
                any
            }
        }
    }

    /// Read permission on a binding key when binding from a topic exchange.
    fn check_topic_bind(&mut self, ctx: &Ctx<'_>, source: &str, key: &str) -> Result<(), AmqpError> {
        let topic = ctx.vhost.exchange(source).is_ok_and(|x| x.kind == ExchangeKind::Topic);
        if topic && self.has_topic_permissions(ctx) {
            ctx.broker.access().check_topic(&ctx.vhost.name, ctx.user, source, key, Access::Read)?;
        }
        Ok(())
    }

    /// Takes the deliveries an ack/reject/nack names (RabbitMQ's rules: the
    /// tag must be outstanding; multiple takes every one up to it; tag 0
    /// with multiple means all).
    fn take_unacked(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        let taken = self.take_unacked_inner(tag, multiple)?;
        self.outstanding = self.outstanding.saturating_sub(taken.len() as u64);
        ChannelInfo::store(&self.info.unacked, self.outstanding);
        Ok(taken)
    }

    fn take_unacked_inner(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        let unknown = || AmqpError::precondition(format_args!("unknown delivery tag {tag}"));
        if multiple && tag == 0 {
            let all = self.unacked.drain(..).flatten().collect();
            self.first_tag = self.next_tag;
            return Ok(all);
        }
        if let Some(i) = self.timed_out.iter().position(|t| *t == tag).filter(|_| !multiple) {
            // Requeued when its consumer timed out: the late ack is moot.
            self.timed_out.swap_remove(i);
            return Ok(Vec::new());
        }
        if tag < self.first_tag {
            return Err(unknown());
        }
        let idx = (tag - self.first_tag) as usize;
        if !self.unacked.get(idx).is_some_and(|u| u.is_some()) {
            return Err(unknown());
        }
        let taken = if multiple {
            let t: Vec<_> = self.unacked.drain(..=idx).flatten().collect();
            self.first_tag = tag + 1;
            t
        } else {
            vec![self.unacked[idx].take().expect("checked")]
        };
        self.trim_settled();
        Ok(taken)
    }

    fn settle(&mut self, ctx: &mut Ctx<'_>, s: Settle) -> Result<(), AmqpError> {
        let taken = self.take_unacked(s.tag, s.multiple)?;
        if s.requeue.is_none() {
            self.info.stats.bump(stats::ACK, taken.len() as u64);
        }
        match s.requeue {
            Some(true) => Self::requeue_as(taken, true),
            _ => {
                for (q, group) in group_by_queue(taken) {
                    let n = group.len();
                    // Credit goes back once per run of one consumer's
                    // deliveries, not once per message (two atomics each).
                    let mut run: Option<(Arc<Consumer>, u32)> = None;
                    for u in group {
                        if let Some(c) = u.consumer {
                            match &mut run {
                                Some((rc, k)) if Arc::ptr_eq(rc, &c) => *k += 1,
                                _ => {
                                    if let Some((rc, k)) = run.replace((c, 1)) {
                                        rc.release(k);
                                    }
                                }
                            }
                        }
                        if s.requeue.is_some() {
                            q.reject(u.entry.message);
                        } else {
                            q.discard(&u.entry.message);
                        }
                    }
                    if let Some((rc, k)) = run {
                        rc.release(k);
                    }
                    q.settled(n, s.requeue.is_none());
                    ctx.to_wake.push(q);
                }
            }
        }
        if self.credit.limit.load(Ordering::Acquire) > 0 {
            // Channel-wide credit was freed: any of our queues may deliver.
            ctx.to_wake.extend(self.consumers.values().map(|(_, q)| q.clone()));
        }
        Ok(())
    }

    pub fn on_method(&mut self, ctx: &mut Ctx<'_>, m: AMQPClass) -> Result<(), AmqpError> {
        if self.closing {
            match m {
                AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)) => self.closed = true,
                AMQPClass::Channel(chan::AMQPMethod::Close(_)) => {
                    reply(ctx.out, self.id, AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})));
                    self.closed = true;
                }
                _ => {}
            }
            return Ok(());
        }
        if !self.assembler.is_idle() {
            return Err(self.assembler.expected());
        }
        let ids = (m.get_amqp_class_id(), m.get_amqp_method_id());
        let r = self.method(ctx, m).map_err(|e| e.during(ids.0, ids.1));
        self.show_settings();
        r
    }

    /// Refreshes what the management API shows of the channel's settings
    /// (after every method but publish: they change only there).
    fn show_settings(&self) {
        let i = &self.info;
        i.prefetch.store(self.consumer_prefetch, Ordering::Relaxed);
        i.global_prefetch.store(self.credit.limit.load(Ordering::Relaxed), Ordering::Relaxed);
        i.consumers.store(self.consumers.len() as u32, Ordering::Relaxed);
        let mode = match self.mode {
            Mode::Plain => 0,
            Mode::Confirm => 1,
            Mode::Tx => 2,
        };
        i.mode.store(mode, Ordering::Relaxed);
    }

    fn method(&mut self, ctx: &mut Ctx<'_>, m: AMQPClass) -> Result<(), AmqpError> {
        let id = self.id;
        match m {
            AMQPClass::Channel(m) => match m {
                chan::AMQPMethod::Open(_) => Err(AmqpError::channel_error("second 'channel.open' seen")),
                chan::AMQPMethod::Close(_) => {
                    self.release_all(ctx.vhost);
                    reply(ctx.out, id, AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})));
                    self.closed = true;
                    Ok(())
                }
                chan::AMQPMethod::CloseOk(_) | chan::AMQPMethod::FlowOk(_) => Ok(()),
                chan::AMQPMethod::Flow(f) => {
                    if !f.active {
                        return Err(AmqpError::not_implemented("active=false"));
                    }
                    reply(ctx.out, id, AMQPClass::Channel(chan::AMQPMethod::FlowOk(chan::FlowOk { active: true })));
                    Ok(())
                }
                chan::AMQPMethod::OpenOk(_) => Err(AmqpError::command_invalid("unexpected channel.open-ok")),
            },
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                reply(ctx.out, id, AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})));
                Ok(())
            }
            AMQPClass::Access(_) => Err(AmqpError::command_invalid("unexpected access method")),
            AMQPClass::Exchange(m) => self.exchange_method(ctx, m),
            AMQPClass::Queue(m) => self.queue_method(ctx, m),
            AMQPClass::Basic(m) => self.basic_method(ctx, m),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if self.mode == Mode::Tx {
                    return Err(AmqpError::precondition("cannot switch from tx to confirm mode"));
                }
                self.mode = Mode::Confirm;
                if !s.nowait {
                    reply(ctx.out, id, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})));
                }
                Ok(())
            }
            AMQPClass::Confirm(_) => Err(AmqpError::command_invalid("unexpected confirm method")),
            AMQPClass::Tx(m) => self.tx_method(ctx, m),
            AMQPClass::Connection(_) => Err(AmqpError::command_invalid("connection method on a channel")),
        }
    }

    fn exchange_method(&mut self, ctx: &mut Ctx<'_>, m: exchange::AMQPMethod) -> Result<(), AmqpError> {
        use exchange::AMQPMethod as M;
        let id = self.id;
        let (nowait, ok) = match m {
            M::Declare(d) => {
                let name = d.exchange.as_str();
                if !d.passive && !name.is_empty() {
                    ctx.check(Resource::Exchange, name, Access::Configure)?;
                    if ctx.vhost.exchange(name).is_err() {
                        if let Some(AMQPValue::LongString(ae)) = d.arguments.inner().get("alternate-exchange") {
                            ctx.check(Resource::Exchange, name, Access::Read)?;
                            ctx.check(Resource::Exchange, &String::from_utf8_lossy(ae.as_bytes()), Access::Write)?;
                        }
                    }
                }
                ctx.vhost.declare_exchange(
                    d.exchange.as_str(),
                    d.kind.as_str(),
                    d.passive,
                    d.durable,
                    d.auto_delete,
                    d.internal,
                    d.arguments,
                )?;
                (d.nowait, M::DeclareOk(exchange::DeclareOk {}))
            }
            M::Delete(d) => {
                if !d.exchange.as_str().is_empty() {
                    ctx.check(Resource::Exchange, d.exchange.as_str(), Access::Configure)?;
                }
                ctx.vhost.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                (d.nowait, M::DeleteOk(exchange::DeleteOk {}))
            }
            M::Bind(b) => {
                ctx.check(Resource::Exchange, b.destination.as_str(), Access::Write)?;
                ctx.check(Resource::Exchange, b.source.as_str(), Access::Read)?;
                self.check_topic_bind(ctx, b.source.as_str(), b.routing_key.as_str())?;
                ctx.vhost.bind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                )?;
                (b.nowait, M::BindOk(exchange::BindOk {}))
            }
            M::Unbind(b) => {
                ctx.check(Resource::Exchange, b.destination.as_str(), Access::Write)?;
                ctx.check(Resource::Exchange, b.source.as_str(), Access::Read)?;
                self.check_topic_bind(ctx, b.source.as_str(), b.routing_key.as_str())?;
                ctx.vhost.unbind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                (b.nowait, M::UnbindOk(exchange::UnbindOk {}))
            }
            _ => return Err(AmqpError::command_invalid("unexpected exchange method")),
        };
        if !nowait {
            reply(ctx.out, id, AMQPClass::Exchange(ok));
        }
        Ok(())
    }

    fn queue_method(&mut self, ctx: &mut Ctx<'_>, m: queue::AMQPMethod) -> Result<(), AmqpError> {
        use queue::AMQPMethod as M;
        let id = self.id;
        let (nowait, ok) = match m {
            M::Declare(d) => {
                let mut name = d.queue.as_str().to_owned();
                // A passive declare of "" looks for a queue named "" (404),
                // as in RabbitMQ: only the other methods mean the last queue.
                if name.is_empty() && !d.passive {
                    name = generated_name("amq.gen-");
                }
                if crate::panics::fault_panic_queue() == Some(name.as_str()) {
                    panic!("fault injection: declaring queue '{name}' panics (WARREN_FAULT_PANIC_QUEUE)");
                }
                if !d.passive {
                    ctx.check(Resource::Queue, &name, Access::Configure)?;
                    if ctx.vhost.queue(&name).is_err() {
                        let limit = ctx.broker.access().vhosts.get(&ctx.vhost.name).and_then(|l| l.max_queues);
                        if let Some(limit) = limit {
                            if ctx.vhost.queue_count() as u64 >= limit {
                                return Err(AmqpError::precondition(format_args!(
                                    "cannot declare queue '{name}': queue limit in vhost '{}' ({limit}) is reached",
                                    ctx.vhost.name
                                )));
                            }
                        }
                        if let Some(AMQPValue::LongString(dlx)) = d.arguments.inner().get("x-dead-letter-exchange") {
                            ctx.check(Resource::Queue, &name, Access::Read)?;
                            ctx.check(Resource::Exchange, &String::from_utf8_lossy(dlx.as_bytes()), Access::Write)?;
                        }
                    }
                }
                let r = ctx.vhost.declare_queue(
                    ctx.connection,
                    &name,
                    d.passive,
                    d.durable,
                    d.exclusive,
                    d.auto_delete,
                    d.arguments,
                )?;
                self.last_queue = Some(name.clone());
                (
                    d.nowait,
                    M::DeclareOk(queue::DeclareOk {
                        queue: name.into(),
                        message_count: r.message_count,
                        consumer_count: r.consumer_count,
                    }),
                )
            }
            M::Bind(b) => {
                let q = self.queue_name(b.queue.as_str())?;
                let mut key = b.routing_key.as_str().to_owned();
                if b.queue.as_str().is_empty() && key.is_empty() {
                    key = q.clone();
                }
                ctx.check(Resource::Queue, &q, Access::Write)?;
                ctx.check(Resource::Exchange, b.exchange.as_str(), Access::Read)?;
                self.check_topic_bind(ctx, b.exchange.as_str(), &key)?;
                ctx.vhost.bind_queue(ctx.connection, &q, b.exchange.as_str(), &key, b.arguments)?;
                (b.nowait, M::BindOk(queue::BindOk {}))
            }
            M::Unbind(b) => {
                let q = self.queue_name(b.queue.as_str())?;
                ctx.check(Resource::Queue, &q, Access::Write)?;
                ctx.check(Resource::Exchange, b.exchange.as_str(), Access::Read)?;
                self.check_topic_bind(ctx, b.exchange.as_str(), b.routing_key.as_str())?;
                ctx.vhost.unbind_queue(
                    ctx.connection,
                    &q,
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                (false, M::UnbindOk(queue::UnbindOk {}))
            }
            M::Purge(p) => {
                let name = self.queue_name(p.queue.as_str())?;
                ctx.check(Resource::Queue, &name, Access::Read)?;
                let q = ctx.vhost.queue_for(ctx.connection, &name)?;
                let message_count = q.purge();
                (p.nowait, M::PurgeOk(queue::PurgeOk { message_count }))
            }
            M::Delete(d) => {
                let name = self.queue_name(d.queue.as_str())?;
                ctx.check(Resource::Queue, &name, Access::Configure)?;
                let message_count = ctx.vhost.delete_queue(ctx.connection, &name, d.if_unused, d.if_empty)?;
                (d.nowait, M::DeleteOk(queue::DeleteOk { message_count }))
            }
            _ => return Err(AmqpError::command_invalid("unexpected queue method")),
        };
        if !nowait {
            reply(ctx.out, id, AMQPClass::Queue(ok));
        }
        Ok(())
    }

    fn basic_method(&mut self, ctx: &mut Ctx<'_>, m: basic::AMQPMethod) -> Result<(), AmqpError> {
        use basic::AMQPMethod as M;
        let id = self.id;
        match m {
            M::Publish(_) => unreachable!("basic.publish is parsed by hand (on_publish)"),
            M::Qos(q) => {
                if q.global {
                    self.credit.limit.store(q.prefetch_count as u32, Ordering::Release);
                    ctx.to_wake.extend(self.consumers.values().map(|(_, q)| q.clone()));
                } else {
                    self.consumer_prefetch = q.prefetch_count as u32;
                    // Live, for the consumers already here too (a deliberate
                    // difference: RabbitMQ applies it to later consumers only).
                    for (c, queue) in self.consumers.values() {
                        c.prefetch.store(self.consumer_prefetch, Ordering::Relaxed);
                        ctx.to_wake.push(queue.clone());
                    }
                }
                reply(ctx.out, id, AMQPClass::Basic(M::QosOk(basic::QosOk {})));
                Ok(())
            }
            M::Consume(c) if c.queue.as_str() == REPLY_TO => {
                if !c.no_ack {
                    return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
                }
                if self.reply.is_some() {
                    return Err(AmqpError::precondition("reply consumer already set"));
                }
                let tag = if c.consumer_tag.as_str().is_empty() {
                    generated_name("amq.ctag-")
                } else {
                    c.consumer_tag.as_str().to_owned()
                };
                let q = ctx.vhost.new_reply_queue(ctx.connection);
                let consumer = self.new_consumer(ctx, &tag, true, false, 0, None);
                if !c.nowait {
                    reply(
                        ctx.out,
                        id,
                        AMQPClass::Basic(M::ConsumeOk(basic::ConsumeOk { consumer_tag: tag.as_str().into() })),
                    );
                }
                q.add_consumer(consumer.clone())?;
                self.consumers.insert(tag.clone(), (consumer, q.clone()));
                self.reply = Some((q, tag));
                Ok(())
            }
            M::Consume(c) => {
                let name = self.queue_name(c.queue.as_str())?;
                ctx.check(Resource::Queue, &name, Access::Read)?;
                let q = ctx.vhost.queue_for(ctx.connection, &name)?;
                let tag = if c.consumer_tag.as_str().is_empty() {
                    generated_name("amq.ctag-")
                } else {
                    c.consumer_tag.as_str().to_owned()
                };
                if self.consumers.contains_key(&tag) {
                    return Err(AmqpError::not_allowed(format_args!("attempt to reuse consumer tag '{tag}'")));
                }
                let priority = warren_core::arguments::int_arg(&c.arguments, "x-priority").unwrap_or(0);
                // Consumer timeout: the consumer's own argument, else the
                // queue's (argument or policy). Only acking consumers.
                let timeout_ms = match c.arguments.inner().get("x-consumer-timeout") {
                    None => q.settings().consumer_timeout,
                    Some(v) => match warren_core::arguments::int_arg(&c.arguments, "x-consumer-timeout") {
                        Some(t) if t > 0 => Some(t as u64),
                        _ => {
                            return Err(AmqpError::precondition(format_args!(
                                "invalid arg 'x-consumer-timeout' for consumer '{tag}': {}",
                                warren_core::arguments::type_name(v)
                            )))
                        }
                    },
                }
                .filter(|_| !c.no_ack);
                let consumer = self.new_consumer(ctx, &tag, c.no_ack, c.exclusive, priority, timeout_ms);
                // consume-ok must precede the first delivery: deliveries go
                // through the connection's event queue, handled after this.
                if !c.nowait {
                    reply(
                        ctx.out,
                        id,
                        AMQPClass::Basic(M::ConsumeOk(basic::ConsumeOk { consumer_tag: tag.as_str().into() })),
                    );
                }
                if let Err(e) = q.add_consumer(consumer.clone()) {
                    ctx.out.clear();
                    return Err(e);
                }
                self.consumers.insert(tag, (consumer, q));
                Ok(())
            }
            M::Cancel(c) => {
                if self.reply.as_ref().is_some_and(|(_, t)| t == c.consumer_tag.as_str()) {
                    if let Some((q, _)) = self.reply.take() {
                        ctx.vhost.drop_reply_queue(&q);
                    }
                }
                if let Some((consumer, q)) = self.consumers.remove(c.consumer_tag.as_str()) {
                    if q.remove_consumer(&consumer) == AfterCancel::AutoDelete {
                        ctx.vhost.remove_queue(&q);
                    }
                }
                if !c.nowait {
                    reply(ctx.out, id, AMQPClass::Basic(M::CancelOk(basic::CancelOk { consumer_tag: c.consumer_tag })));
                }
                Ok(())
            }
            M::Get(g) => {
                let name = self.queue_name(g.queue.as_str())?;
                ctx.check(Resource::Queue, &name, Access::Read)?;
                let q = ctx.vhost.queue_for(ctx.connection, &name)?;
                match warren_core::publish::get(&q, g.no_ack, &self.info.stats) {
                    None => reply(ctx.out, id, AMQPClass::Basic(M::GetEmpty(basic::GetEmpty {}))),
                    Some((entry, remaining)) => {
                        let tag = self.next_tag;
                        self.next_tag += 1;
                        let msg = &entry.message;
                        frame::write_get_ok(
                            ctx.out,
                            id,
                            tag,
                            entry.redelivered,
                            &msg.exchange,
                            &msg.routing_key,
                            remaining,
                        );
                        let props = warren_core::queue::delivery_properties(&q, &entry);
                        frame::write_content(ctx.out, id, ctx.frame_max, &props, &msg.body);
                        drop(props);
                        let u = (!g.no_ack).then_some(Unacked { queue: q, entry, consumer: None, at_ms: 0 });
                        self.push_unacked(tag, u);
                    }
                }
                Ok(())
            }
            M::Ack(a) => {
                self.settle_or_buffer(ctx, Settle { tag: a.delivery_tag, multiple: a.multiple, requeue: None })
            }
            M::Reject(r) => {
                self.settle_or_buffer(ctx, Settle { tag: r.delivery_tag, multiple: false, requeue: Some(r.requeue) })
            }
            M::Nack(n) => self
                .settle_or_buffer(ctx, Settle { tag: n.delivery_tag, multiple: n.multiple, requeue: Some(n.requeue) }),
            M::Recover(r) => {
                self.recover(r.requeue)?;
                reply(ctx.out, id, AMQPClass::Basic(M::RecoverOk(basic::RecoverOk {})));
                Ok(())
            }
            M::RecoverAsync(r) => self.recover(r.requeue),
            _ => Err(AmqpError::command_invalid("unexpected basic method")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_consumer(
        &self,
        ctx: &Ctx<'_>,
        tag: &str,
        no_ack: bool,
        exclusive: bool,
        priority: i64,
        timeout_ms: Option<u64>,
    ) -> Arc<Consumer> {
        Arc::new(Consumer {
            timeout_ms,
            tag: tag.into(),
            connection: ctx.connection,
            channel: self.id,
            no_ack,
            exclusive,
            priority,
            prefetch: self.consumer_prefetch.into(),
            unacked: Default::default(),
            inflight_bytes: Default::default(),
            channel_credit: self.credit.clone(),
            cancelled: Default::default(),
            outbox: ctx.outbox.clone(),
        })
    }

    fn recover(&mut self, requeue: bool) -> Result<(), AmqpError> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let all: Vec<Unacked> = self.unacked.drain(..).flatten().collect();
        self.first_tag = self.next_tag;
        self.outstanding = 0;
        ChannelInfo::store(&self.info.unacked, 0);
        Self::requeue(all);
        Ok(())
    }

    fn settle_or_buffer(&mut self, ctx: &mut Ctx<'_>, s: Settle) -> Result<(), AmqpError> {
        if self.mode == Mode::Tx {
            // Validate now so a bad tag fails where it was sent.
            if !(s.multiple && s.tag == 0) {
                let known = s.tag >= self.first_tag
                    && self.unacked.get((s.tag - self.first_tag) as usize).is_some_and(|u| u.is_some());
                if !known {
                    return Err(AmqpError::precondition(format_args!("unknown delivery tag {}", s.tag)));
                }
            }
            self.tx_settles.push(s);
            return Ok(());
        }
        self.settle(ctx, s)
    }

    fn tx_method(&mut self, ctx: &mut Ctx<'_>, m: tx::AMQPMethod) -> Result<(), AmqpError> {
        use tx::AMQPMethod as M;
        let id = self.id;
        let not_tx = || AmqpError::precondition("channel is not transactional");
        match m {
            M::Select(_) => {
                if self.mode == Mode::Confirm {
                    return Err(AmqpError::precondition("cannot switch from confirm to tx mode"));
                }
                self.mode = Mode::Tx;
                reply(ctx.out, id, AMQPClass::Tx(M::SelectOk(tx::SelectOk {})));
                Ok(())
            }
            M::Commit(_) => {
                if self.mode != Mode::Tx {
                    return Err(not_tx());
                }
                let mut pos = 0;
                for (p, msg) in std::mem::take(&mut self.tx_publishes) {
                    pos = pos.max(self.route(ctx, &p, msg)?.0);
                }
                for s in std::mem::take(&mut self.tx_settles) {
                    // A tag settled twice in one transaction is gone by now.
                    match self.settle(ctx, s) {
                        Ok(()) => {}
                        Err(e) if e.code() == 406 => {}
                        Err(e) => return Err(e),
                    }
                }
                if pos > ctx.synced {
                    // commit-ok only once the persistent messages are on disk.
                    self.held.push_back((pos, Held::CommitOk));
                } else {
                    reply(ctx.out, id, AMQPClass::Tx(M::CommitOk(tx::CommitOk {})));
                }
                Ok(())
            }
            M::Rollback(_) => {
                if self.mode != Mode::Tx {
                    return Err(not_tx());
                }
                self.tx_publishes.clear();
                self.tx_settles.clear();
                reply(ctx.out, id, AMQPClass::Tx(M::RollbackOk(tx::RollbackOk {})));
                Ok(())
            }
            _ => Err(AmqpError::command_invalid("unexpected tx method")),
        }
    }
}

/// Splits settled deliveries into runs by queue, keeping their order.
fn group_by_queue(taken: Vec<Unacked>) -> Vec<(Arc<Queue>, Vec<Unacked>)> {
    let mut groups: Vec<(Arc<Queue>, Vec<Unacked>)> = Vec::new();
    for u in taken {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, g)) => g.push(u),
            None => groups.push((u.queue.clone(), vec![u])),
        }
    }
    groups
}
