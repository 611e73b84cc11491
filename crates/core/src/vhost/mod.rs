//! A virtual host: its exchanges and queues, declared, bound, deleted and
//! routed to with RabbitMQ's rules and error texts.

mod durable;
mod equivalence;
mod routing;
pub use routing::RouteCache;

use equivalence::{describe, equivalent, inequivalent, queue_arg, quoted, same_queue_arg, EQUIVALENT_QUEUE_ARGS};

use foldhash::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::RwLock;
use warren_protocol::{AMQPValue, AmqpError, FieldTable};

use std::path::PathBuf;

use warren_store::MessageStore;

use crate::arguments::type_name;
use crate::definitions::{self, BindingDef, Definitions, ExchangeDef, QueueDef};
use crate::delayed::Held;
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::message::{Message, MessageRef};
use crate::policy::{self, Policy};
use crate::queue::Queue;
use crate::stats;

/// Exchanges every vhost has from the start.
const PREDECLARED: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

pub struct VHost {
    pub name: String,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Moves on (under `queues`' write lock) whenever a queue is added or
    /// removed: a publisher's cached default-exchange route
    /// ([`RouteCache`]) holds while it has not.
    queues_gen: std::sync::atomic::AtomicU64,
    /// Message log given to durable queues (None: memory only).
    log: Option<Arc<dyn MessageStore>>,
    /// Where durable definitions are saved (None: not saved).
    definitions: Option<PathBuf>,
    /// Serializes snapshot writes so an older one never lands last.
    save_lock: parking_lot::Mutex<()>,
    /// Itself, handed to its queues for dead-lettering.
    me: Weak<VHost>,
    /// Direct reply-to pseudo-queues by their `amq.rabbitmq.reply-to.…` name.
    reply_queues: RwLock<HashMap<String, Weak<Queue>>>,
    /// The default exchange (also in `exchanges`), reached without a lookup.
    default_exchange: Option<Arc<Exchange>>,
    /// Open connections to it (the `max-connections` limit).
    pub connections: std::sync::atomic::AtomicU64,
    /// Set by `delete_vhost`: its connections close with 320.
    deleted: std::sync::atomic::AtomicBool,
    /// `message_stats` of its channels that have closed (the open ones
    /// count their own; the vhost's figures are the sum).
    pub retired: stats::Counters,
    pub rates: stats::LengthRates,
    /// Samples of its counters and lengths over the last 10 minutes
    /// (`msg_rates_age`), taken with `rates`.
    pub history: stats::History,
    /// Messages published to its `x-delayed-message` exchanges, until due.
    pub delayed: crate::delayed::DelayedIndex,
    /// Its policies and operator policies (`policy.rs`), set by the broker.
    policies: RwLock<(Vec<Policy>, Vec<Policy>)>,
    /// Its broker's callbacks, spilling and totals.
    pub(crate) hooks: Arc<crate::hooks::Hooks>,
}

/// The pseudo-queue a requester consumes replies from.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What `queue.declare` reports.
pub struct DeclaredQueue {
    pub queue: Arc<Queue>,
    pub message_count: u32,
    pub consumer_count: u32,
}

impl VHost {
    pub fn new(name: &str) -> Self {
        let exchanges: HashMap<String, Arc<Exchange>> = PREDECLARED
            .iter()
            .map(|(n, k)| (n.to_string(), Arc::new(Exchange::new(n, *k, true, false, false, FieldTable::default()))))
            .collect();
        let default_exchange = exchanges.get("").cloned();
        VHost {
            name: name.to_owned(),
            default_exchange,
            exchanges: RwLock::new(exchanges),
            queues: RwLock::new(HashMap::default()),
            queues_gen: Default::default(),
            log: None,
            definitions: None,
            save_lock: parking_lot::Mutex::new(()),
            me: Weak::new(),
            reply_queues: RwLock::new(HashMap::default()),
            connections: Default::default(),
            retired: Default::default(),
            rates: Default::default(),
            history: Default::default(),
            policies: Default::default(),
            delayed: Default::default(),
            deleted: Default::default(),
            hooks: Default::default(),
        }
    }

    /// A vhost of a broker: with the broker's hooks.
    pub fn with_hooks(name: &str, hooks: Arc<crate::hooks::Hooks>) -> Self {
        VHost { hooks, ..Self::new(name) }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Deletes everything in this vhost (its queues' messages leave the
    /// message log) and its saved definitions; marks it deleted so that its
    /// connections close.
    pub fn delete_all(&self) {
        self.deleted.store(true, std::sync::atomic::Ordering::Release);
        let queues: Vec<_> = self.queues.read().values().cloned().collect();
        for q in queues {
            self.remove_queue(&q);
        }
        let replies: Vec<_> = self.reply_queues.write().drain().filter_map(|(_, q)| q.upgrade()).collect();
        for q in replies {
            q.mark_deleted();
        }
        self.exchanges.write().clear();
        if let Some(path) = &self.definitions {
            let _guard = self.save_lock.lock();
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!(vhost = %self.name, error = %e, "cannot remove definitions");
                }
            }
        }
    }

    pub fn queue_count(&self) -> usize {
        self.queues.read().len()
    }

    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    /// Creates a direct reply-to pseudo-queue for one consumer: not listed,
    /// not bound, reachable only through the default exchange by its name.
    pub fn new_reply_queue(&self, connection: u64) -> Arc<Queue> {
        let name = crate::generated_name(&format!("{REPLY_TO}."));
        let mut q = Queue::new(&name, &self.name, false, Some(connection), true, FieldTable::default());
        q.owner = self.me.clone();
        let q = Arc::new(q);
        self.reply_queues.write().insert(name, Arc::downgrade(&q));
        q
    }

    /// Forgets a reply queue (its channel closed or its consumer was cancelled).
    pub fn drop_reply_queue(&self, q: &Arc<Queue>) {
        self.reply_queues.write().remove(&q.name);
        q.mark_deleted();
    }

    /// Wraps a vhost in an `Arc` that its queues can reach back to.
    pub fn into_arc(self) -> Arc<VHost> {
        // (Not `VHost { me, ..self }`: with the const-generic `Rates`
        // field, that form crashes rustc 1.95's borrow checker.)
        let mut v = self;
        Arc::new_cyclic(move |me| {
            v.me = me.clone();
            v
        })
    }

    fn new_queue(&self, name: &str, durable: bool, owner: Option<u64>, auto_delete: bool, args: FieldTable) -> Queue {
        let mut q = Queue::new(name, &self.name, durable, owner, auto_delete, args);
        q.set_spill(self.hooks.spill.clone());
        if let Some(log) = self.log.clone().filter(|_| durable) {
            q.set_log(log);
        }
        q.owner = self.me.clone();
        q.apply_settings(self.settings_for(&q));
        q
    }

    /// A queue's arguments resolved with the policies that match it.
    fn settings_for(&self, q: &Queue) -> crate::policy::QueueSettings {
        let p = self.policies.read();
        let (user, op) = (policy::select(&p.0, &q.name, true), policy::select(&p.1, &q.name, true));
        policy::resolve_queue(&q.arguments, q.quorum, user, op)
    }

    fn apply_exchange_policy(&self, x: &Exchange) {
        let p = self.policies.read();
        let now = policy::select(&p.0, &x.name, false).filter(|_| !x.name.is_empty() && !x.name.starts_with("amq."));
        let value = now.map(|p| (p.name.clone(), policy::alternate_exchange(&FieldTable::default(), Some(p))));
        *x.policy.write() = value;
    }

    /// The policies and operator policies, as listed.
    pub fn policies(&self) -> (Vec<Policy>, Vec<Policy>) {
        self.policies.read().clone()
    }

    /// Replaces the vhost's policies and applies them to every queue and
    /// exchange (RabbitMQ re-applies on every policy change).
    pub fn set_policies(&self, user: Vec<Policy>, operator: Vec<Policy>) {
        *self.policies.write() = (user, operator);
        for q in self.queues() {
            q.apply_settings(self.settings_for(&q));
        }
        for x in self.exchanges() {
            self.apply_exchange_policy(&x);
        }
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format_args!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format_args!("no queue '{name}' in vhost '{}'", self.name))
    }

    fn default_exchange_refused() -> AmqpError {
        AmqpError::access_refused("operation not permitted on the default exchange")
    }

    /// The default exchange, borrowed (the publish path routes through it
    /// without touching its reference count).
    pub fn default_exchange(&self) -> Option<&Arc<Exchange>> {
        self.default_exchange.as_ref()
    }

    pub fn exchange(&self, name: &str) -> Result<Arc<Exchange>, AmqpError> {
        if name.is_empty() {
            // Most publishes go to the default exchange, which never goes away.
            // (Looking "" up in the map cost ~8 % of a transient publish in a
            // profile: its hash probes through many candidates.)
            if let Some(x) = &self.default_exchange {
                return Ok(x.clone());
            }
        }
        self.exchanges.read().get(name).cloned().ok_or_else(|| self.no_exchange(name))
    }

    pub fn queue(&self, name: &str) -> Result<Arc<Queue>, AmqpError> {
        self.queues.read().get(name).cloned().ok_or_else(|| self.no_queue(name))
    }

    /// A queue that `connection` may use (404 / 405 otherwise).
    pub fn queue_for(&self, connection: u64, name: &str) -> Result<Arc<Queue>, AmqpError> {
        let q = self.queue(name)?;
        q.check_access(connection)?;
        Ok(q)
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        if name.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        if passive {
            return self.exchange(name).map(|_| ());
        }
        let new = Exchange::declared(name, kind, durable, auto_delete, internal, arguments, &self.name)?;
        let mut exchanges = self.exchanges.write();
        if let Some(x) = exchanges.get(name) {
            let n = &self.name;
            if x.kind != new.kind || x.type_name() != new.type_name() {
                return Err(inequivalent(
                    "type",
                    "exchange",
                    name,
                    n,
                    format_args!("'{kind}'"),
                    format_args!("'{}'", x.type_name()),
                ));
            }
            if x.durable != durable {
                return Err(inequivalent("durable", "exchange", name, n, quoted(durable), quoted(x.durable)));
            }
            if x.auto_delete != auto_delete {
                return Err(inequivalent(
                    "auto_delete",
                    "exchange",
                    name,
                    n,
                    quoted(auto_delete),
                    quoted(x.auto_delete),
                ));
            }
            if x.internal != internal {
                return Err(inequivalent("internal", "exchange", name, n, quoted(internal), quoted(x.internal)));
            }
            let key = "alternate-exchange";
            let (new, cur) = (new.arguments.inner().get(key), x.arguments.inner().get(key));
            if !equivalent(new, cur) {
                return Err(inequivalent(key, "exchange", name, n, describe(new), describe(cur)));
            }
            return Ok(());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format_args!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let x = Arc::new(new);
        self.apply_exchange_policy(&x);
        exchanges.insert(name.to_owned(), x);
        drop(exchanges);
        self.persist(durable);
        Ok(())
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        if name.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format_args!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let mut exchanges = self.exchanges.write();
        let Some(x) = exchanges.get(name).cloned() else {
            // Deleting what is not there succeeds, as in RabbitMQ 3.x.
            return Ok(());
        };
        if if_unused && x.has_bindings() {
            return Err(AmqpError::precondition(format_args!("exchange '{name}' in vhost '{}' in use", self.name)));
        }
        exchanges.remove(name);
        let dest = Destination::Exchange(name.to_owned());
        let mut emptied = vec![];
        for other in exchanges.values() {
            let (removed, empty) = other.unbind_all(&dest);
            if removed && empty && other.auto_delete {
                emptied.push(other.name.clone());
            }
        }
        for n in emptied {
            exchanges.remove(&n);
        }
        drop(exchanges);
        self.persist(x.durable);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn declare_queue(
        &self,
        connection: u64,
        name: &str,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> Result<DeclaredQueue, AmqpError> {
        self.hooks.queues_declared.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let report = |q: &Arc<Queue>| DeclaredQueue {
            queue: q.clone(),
            message_count: q.message_count(),
            consumer_count: q.consumer_count(),
        };
        if passive {
            let q = self.queue_for(connection, name)?;
            return Ok(report(&q));
        }
        let mut queues = self.queues.write();
        if let Some(q) = queues.get(name) {
            let owner = exclusive.then_some(connection);
            if q.exclusive_owner != owner {
                // RabbitMQ's strict check: the exclusive flag must match too.
                return Err(Queue::check_access_strict(q));
            }
            let n = &self.name;
            if q.durable != durable {
                return Err(inequivalent("durable", "queue", name, n, quoted(durable), quoted(q.durable)));
            }
            if q.auto_delete != auto_delete {
                return Err(inequivalent("auto_delete", "queue", name, n, quoted(auto_delete), quoted(q.auto_delete)));
            }
            for key in EQUIVALENT_QUEUE_ARGS {
                let (new, cur) = (queue_arg(&arguments, key), queue_arg(&q.arguments, key));
                if !same_queue_arg(key, new, cur) {
                    return Err(inequivalent(key, "queue", name, n, describe(new), describe(cur)));
                }
            }
            q.touch();
            return Ok(report(q));
        }
        if name.starts_with("amq.") && !name.starts_with("amq.gen-") {
            return Err(AmqpError::access_refused(format_args!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        crate::arguments::validate_queue_args(&arguments, name, &self.name)?;
        let q = Arc::new(self.new_queue(name, durable, exclusive.then_some(connection), auto_delete, arguments));
        queues.insert(name.to_owned(), q.clone());
        self.queues_gen.fetch_add(1, std::sync::atomic::Ordering::Release);
        self.hooks.queues_created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(queues);
        self.persist(durable && !exclusive);
        // Every queue is bound to the default exchange by its name; that
        // binding is implicit (see `route`).
        Ok(report(&q))
    }

    /// Deletes a queue by name for `queue.delete`. Returns its message count.
    pub fn delete_queue(&self, connection: u64, name: &str, if_unused: bool, if_empty: bool) -> Result<u32, AmqpError> {
        let q = match self.queue(name) {
            Ok(q) => q,
            // Deleting what is not there succeeds, as in RabbitMQ 3.x.
            Err(_) => return Ok(0),
        };
        q.check_access(connection)?;
        q.check_delete(if_unused, if_empty)?;
        Ok(self.remove_queue(&q))
    }

    /// Removes a queue and all bindings to it; cancels its consumers.
    pub fn remove_queue(&self, q: &Arc<Queue>) -> u32 {
        {
            let mut queues = self.queues.write();
            match queues.get(&q.name) {
                Some(existing) if Arc::ptr_eq(existing, q) => {
                    queues.remove(&q.name);
                    self.queues_gen.fetch_add(1, std::sync::atomic::Ordering::Release);
                    self.hooks.queues_deleted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => return 0,
            }
        }
        let dest = Destination::Queue(q.clone());
        let mut exchanges = self.exchanges.write();
        let mut emptied = vec![];
        for x in exchanges.values() {
            let (removed, empty) = x.unbind_all(&dest);
            if removed && empty && x.auto_delete {
                emptied.push(x.name.clone());
            }
        }
        for n in emptied {
            exchanges.remove(&n);
        }
        drop(exchanges);
        let count = q.mark_deleted();
        self.persist(q.durable && q.exclusive_owner.is_none());
        count
    }

    /// Deletes the exclusive queues of a closed connection.
    pub fn connection_closed(&self, connection: u64) {
        let owned: Vec<_> =
            self.queues.read().values().filter(|q| q.exclusive_owner == Some(connection)).cloned().collect();
        for q in owned {
            self.remove_queue(&q);
        }
    }

    pub fn bind_queue(
        &self,
        connection: u64,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        let q = self.queue_for(connection, queue)?;
        let x = self.exchange(exchange)?;
        let durable = q.durable && x.durable;
        x.bind(Binding { destination: Destination::Queue(q), routing_key: routing_key.to_owned(), arguments });
        self.persist(durable);
        Ok(())
    }

    pub fn unbind_queue(
        &self,
        connection: u64,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        let q = self.queue_for(connection, queue)?;
        let x = self.exchange(exchange)?;
        let durable = q.durable && x.durable;
        let empty = x.unbind(&Destination::Queue(q), routing_key, arguments);
        if empty && x.auto_delete {
            self.exchanges.write().remove(exchange);
        }
        self.persist(durable);
        Ok(())
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        if destination.is_empty() || source.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        let d = self.exchange(destination)?;
        let x = self.exchange(source)?;
        x.bind(Binding {
            destination: Destination::Exchange(destination.to_owned()),
            routing_key: routing_key.to_owned(),
            arguments,
        });
        self.persist(d.durable && x.durable);
        Ok(())
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        if destination.is_empty() || source.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        let d = self.exchange(destination)?;
        let x = self.exchange(source)?;
        let empty = x.unbind(&Destination::Exchange(destination.to_owned()), routing_key, arguments);
        if empty && x.auto_delete {
            self.exchanges.write().remove(source);
        }
        self.persist(d.durable && x.durable);
        Ok(())
    }
}

impl VHost {
    /// Enqueues a routed message in `queues`. A persistent message is first
    /// written to the message log once for all its durable queues (before
    /// any of them can deliver it, so no ack record can precede it). Returns
    /// the log position to sync before confirming (0 if none) and whether
    /// every queue took it (false: a length limit refused it).
    pub fn enqueue(&self, msg: MessageRef, queues: &mut Vec<Arc<Queue>>) -> (u64, bool) {
        let pos = self.log_publish(&msg, queues.iter().map(|q| &**q));
        let mut accepted = true;
        // The last queue takes the caller's reference: one count less.
        let last = queues.pop();
        for q in queues.drain(..) {
            accepted &= q.publish(msg.clone());
        }
        if let Some(q) = last {
            accepted &= q.publish(msg);
        }
        (pos, accepted)
    }

    /// [`VHost::enqueue`] for a message routed to one queue.
    pub fn enqueue_one(&self, msg: MessageRef, queue: &Arc<Queue>) -> (u64, bool) {
        let pos = self.log_publish(&msg, std::iter::once(&**queue));
        (pos, queue.publish(msg))
    }

    /// Writes a persistent message to the message log once for all the
    /// durable queues among `queues`; returns the position to sync (0: not
    /// logged).
    fn log_publish<'q>(&self, msg: &Message, queues: impl Iterator<Item = &'q Queue> + Clone) -> u64 {
        if !msg.is_persistent() {
            return 0;
        }
        let Some(log) = queues.clone().find_map(|q| q.log.as_ref()) else { return 0 };
        let durable: Vec<&str> = queues.filter(|q| q.log.is_some()).map(|q| q.log_key.as_str()).collect();
        let (persisted, at) = log.publish_parts(
            &durable,
            crate::now_ms(),
            msg.exchange(),
            msg.routing_key(),
            &msg.properties_raw,
            msg.body.parts(),
        );
        let _ = msg.persisted.set(Box::new(persisted));
        at
    }

    /// Republishes messages that died in `from` to its dead-letter exchange.
    pub fn dead_letter(&self, from: &Queue, dead: Vec<(MessageRef, crate::dead_letter::Reason)>) {
        let Some((dlx, key)) = from.dead_letter_target() else { return };
        // A missing dead-letter exchange drops the message, as in RabbitMQ.
        let Ok(x) = self.exchange(&dlx) else { return };
        let mut queues = Vec::new();
        for (msg, reason) in dead {
            let rk = key.clone().unwrap_or_else(|| msg.routing_key().to_string());
            let new = crate::dead_letter::dead_lettered(&msg, reason, &from.name, &x.name, &rk);
            self.route(&x, &new, &mut queues);
            queues.retain(|q| !crate::dead_letter::is_cycle(&new, &q.name));
            self.enqueue(new, &mut queues);
        }
    }

    /// Routes the delayed messages now due, to the bindings their exchange
    /// has now (a deleted exchange drops them, as the plugin does). At most
    /// `DUE_BATCH` per call, so one turn never holds the timer task long.
    pub fn release_delayed(&self, now: u64) {
        const DUE_BATCH: usize = 4096;
        if let Some(log) = &self.log {
            self.delayed.settle(log.synced());
        }
        if self.delayed.next_due().is_none_or(|due| due > now) {
            return;
        }
        let mut queues = Vec::new();
        for due in self.delayed.take_due(now, DUE_BATCH) {
            let exchange = self.exchange(&due.exchange).ok();
            let msg = match (&due.held, due.unsynced) {
                (Held::Memory(m), _) => Some(m.clone()),
                // Routed as a fresh message: its queues record it afresh.
                (Held::Logged(_), Some(m)) => Some(Arc::new(m.unstored_copy())),
                (Held::Logged(p), None) => self.log.as_ref().and_then(|log| match log.read(p.location()) {
                    Ok(back) => Some(Arc::new(Message::from_stored(&back.message, *p).unstored_copy())),
                    Err(e) => {
                        tracing::error!(exchange = %due.exchange, error = %e, "cannot read a delayed message back; dropping it");
                        None
                    }
                }),
                (Held::Spilled(at), _) => match self.hooks.spill.store().map(|s| s.take(*at)) {
                    Some(Ok((m, _))) => Some(m),
                    other => {
                        if let Some(Err(e)) = other {
                            tracing::error!(exchange = %due.exchange, error = %e, "cannot read a delayed message back; dropping it");
                        }
                        None
                    }
                },
            };
            if let (Some(x), Some(msg)) = (exchange, msg) {
                queues.clear();
                self.route(&x, &msg, &mut queues);
                self.enqueue(msg, &mut queues);
            }
            // After the routed copies, in the log's order (`delayed.rs`).
            if let (Held::Logged(p), Some(log)) = (due.held, &self.log) {
                log.ack(&crate::delayed::log_key(&self.name, &due.exchange), p);
            }
        }
    }

    /// Holds a message published to a delayed exchange until `delay` ms
    /// from now. A persistent one on a durable exchange is logged first:
    /// returns the log position to sync before confirming it (0 if none).
    /// Others wait in the spill store.
    pub fn schedule_delayed(&self, x: &Exchange, msg: MessageRef, delay: u64) -> u64 {
        let now = crate::now_ms();
        let due = now.saturating_add(delay);
        match self.log.as_ref().filter(|_| x.durable && msg.is_persistent()) {
            Some(log) => {
                let key = crate::delayed::log_key(&self.name, &x.name);
                let (persisted, pos) = log.publish_parts(
                    &[key.as_str()],
                    now,
                    msg.exchange(),
                    msg.routing_key(),
                    &msg.properties_raw,
                    msg.body.parts(),
                );
                if self.delayed.schedule(&x.name, Held::Logged(persisted), due, Some((pos, msg))) {
                    self.hooks.earlier_due();
                }
                pos
            }
            None => {
                let meta = warren_store::Meta { priority: 0, expires_at: None, delivery_count: 0 };
                let held = match self.hooks.spill.store().map(|s| s.append(&msg, &meta)) {
                    Some(Ok(at)) => Held::Spilled(at),
                    _ => Held::Memory(msg),
                };
                if self.delayed.schedule(&x.name, held, due, None) {
                    self.hooks.earlier_due();
                }
                0
            }
        }
    }

    /// Timer work: expired messages at queue heads, and queues whose
    /// `x-expires` ran out.
    pub fn tick(&self) {
        let now = crate::now_ms();
        for q in self.queues() {
            q.settle_paged();
            if q.requeue_backoff.is_some() {
                q.release_backed_off(now);
            }
            if q.may_expire() {
                q.expire();
            }
            if q.is_expired(now) {
                self.remove_queue(&q);
            }
        }
    }
}
