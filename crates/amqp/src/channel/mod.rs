//! One AMQP channel: its methods, publishing (content assembly, routing,
//! confirms, transactions), consumers, deliveries and acknowledgements.

mod deliveries;
mod publishing;
mod slots;

use deliveries::{Settle, Unacked};
use publishing::Publish;
pub use slots::{Handle, Slots};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::protocol::{access, basic, channel as chan, confirm, exchange, queue, tx, AMQPClass};
use bytes::BytesMut;
use warren_core::auth::{Access, Resource};
use warren_core::publish::Publisher;
use warren_core::queue::AfterCancel;
use warren_core::stats::{self, Counters};
use warren_core::vhost::REPLY_TO;
use warren_core::{generated_name, Broker, ChannelCredit, Consumer, ExchangeKind, MessageRef, Outbox, Queue, VHost};
use warren_node::ChannelInfo;
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
    pub out: &'a mut frame::Out,
    pub outbox: &'a Arc<dyn Outbox>,
    /// The connection's consumers, by the slot deliveries name.
    pub slots: &'a mut Slots,
    pub frame_max: u32,
    pub max_message_size: u64,
    pub to_wake: &'a mut Vec<Arc<Queue>>,
    /// Message-log position known to be on disk (read when a confirm
    /// needs it: a lock).
    pub synced: Synced<'a>,
    /// Set when a queue just published to asks its publishers to pause.
    pub pressure: &'a mut bool,
}

/// Where the message log is known to be on disk, as the connection's
/// confirm gate says; everything, without a log.
#[derive(Clone, Copy)]
pub struct Synced<'a>(pub Option<&'a tokio::sync::watch::Receiver<u64>>);

impl Synced<'_> {
    pub fn get(&self) -> u64 {
        self.0.map_or(u64::MAX, |r| *r.borrow())
    }
}

impl Ctx<'_> {
    /// Checks the user's permission for an operation on a resource.
    fn check(&self, kind: Resource, name: &str, access: Access) -> Result<(), AmqpError> {
        self.broker.access().check(&self.vhost.name, self.user, kind, name, access)
    }
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

pub struct Channel {
    id: u16,
    /// On a connection of one of the broker's own links (shovels,
    /// federation), which read with lapin: it refuses properties that are
    /// not UTF-8, so they are sent to it made UTF-8
    /// ([`warren_protocol::content::utf8_properties`]).
    for_link: bool,
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
    /// The two as a message carries them.
    last_names: warren_core::names::Names,
    /// Where the next published message goes (see `Spare`).
    spare: Option<warren_core::message::Spare>,
    /// The exchange last found writable, and the access epoch of that check
    /// (saves a lock and a regex match per message).
    writable: Option<(u64, Arc<str>)>,
    /// Whether topic permissions apply to this user here, at an access epoch.
    topic_permissions: warren_core::publish::TopicPermissions,
    /// Its exchange counts (added to the exchanges on the tick) and its
    /// last default-exchange route.
    publishing: warren_core::publish::PublisherLocal,
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
    /// `for_link`: on a connection of one of the broker's own links.
    pub fn new(id: u16, for_link: bool) -> Self {
        Channel {
            id,
            for_link,
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
            last_names: warren_core::names::Names::of("", ""),
            spare: None,
            writable: None,
            topic_permissions: Default::default(),
            publishing: Default::default(),
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
        self.release_all(ctx.vhost, ctx.slots);
    }

    /// Cancels every consumer and requeues every unacked delivery, in order.
    pub fn release_all(&mut self, vhost: &Arc<VHost>, slots: &mut Slots) {
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
        Self::requeue(all, slots);
        self.tx_publishes.clear();
        self.tx_settles.clear();
    }

    fn queue_name(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue.clone().ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// Read permission on a binding key when binding from a topic exchange.
    fn check_topic_bind(&mut self, ctx: &Ctx<'_>, source: &str, key: &str) -> Result<(), AmqpError> {
        let topic = ctx.vhost.exchange(source).is_ok_and(|x| x.kind == ExchangeKind::Topic);
        if topic && self.topic_permissions.any(ctx.broker, &ctx.vhost.name, ctx.user) {
            ctx.broker.access().check_topic(&ctx.vhost.name, ctx.user, source, key, Access::Read)?;
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
                    self.release_all(ctx.vhost, ctx.slots);
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
}
