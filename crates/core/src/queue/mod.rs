//! A queue: its ready messages (in a [`QueueStore`]), its consumers, and
//! dispatch to them as their prefetch allows: highest consumer priority
//! first, round-robin among equals, or only the first consumer when the
//! queue has a single active consumer.
//!
//! All state sits behind one mutex per queue, taken through [`Queue::lock`].
//! Every operation that can make a delivery possible (publish, ack, requeue,
//! new consumer) ends by calling `dispatch` while still holding it. Messages
//! that die under the lock (expired, pushed out by a length limit, over
//! their delivery limit) are collected and dead-lettered only after the lock
//! is released, so one queue's lock is never held while another's is taken.

mod dispatch;
mod paging;

use paging::{paged_tails, Paged, HOT_BYTES, HOT_COUNT, PINNED, SPILLED};

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard};
use rustc_hash::FxHashMap;
use warren_protocol::{AMQPValue, AmqpError, FieldTable};
use warren_store::MessageStore;
use warren_store::{Entry, MemoryStore, Meta, PriorityStore, QueueStore};

use crate::arguments::int_arg;
use crate::consumer::{Consumer, Delivery};
use crate::dead_letter::Reason;
use crate::message::{Message, MessageRef};
use crate::policy::QueueSettings;
use crate::stats;
use crate::vhost::VHost;

/// What a queue does when a publish would exceed its length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    /// Connection that declared it exclusive, if it did.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// `x-single-active-consumer`.
    single_active: bool,
    /// `x-fair-dispatch: true` (Warren's): a ready message goes to the
    /// consumer with the fewest unacked deliveries (ties round-robin).
    fair: bool,
    /// `x-requeue-backoff` (ms, Warren's): a message rejected with requeue
    /// waits this long, doubled at each further delivery (at most an hour),
    /// before it is ready again, instead of coming straight back.
    pub requeue_backoff: Option<u64>,
    /// `x-queue-type: quorum`: deliveries carry `x-delivery-count`.
    pub quorum: bool,
    /// Deliveries carry `x-delivery-count` (quorum queues, and classic ones
    /// declared with `x-delivery-count-header: true`).
    pub delivery_count_header: bool,
    /// The message log, for durable queues when the broker has one.
    pub log: Option<Arc<dyn MessageStore>>,
    /// The broker's spilling of transient messages under memory pressure.
    spill: Arc<crate::spill::Spill>,
    /// This queue's name in the message log (vhost and name).
    pub log_key: String,
    /// Its vhost, for dead-lettering.
    pub(crate) owner: Weak<VHost>,
    state: Mutex<QueueState>,
    /// Set while the queue has consumers and yet more than `FLOW_HIGH`
    /// ready messages or `FLOW_HIGH_BYTES` of bodies (a paging queue: more
    /// than its hot head holds): its publishers are slowed (see
    /// `under_pressure`).
    pressure: std::sync::atomic::AtomicBool,
    /// Rates of `message_stats` and of the lengths, sampled by the
    /// management timer (see [`Queue::sample`]).
    pub rates: stats::LengthRates,
}

/// Ready messages above which a queue with consumers asks its publishers to
/// pause briefly: a publisher that outruns the consumers would otherwise take
/// the CPU they need to catch up (measured: with 1 publisher and 1 consumer
/// on 2 cores the consumer fell to ~0.6–0.8 M msg/s while the publisher ran
/// at 1.0–1.2 M). A queue that pages uses its hot head's size instead: with
/// 16,384, a persistent 1 KiB run kept ~12,000 messages paged out, each
/// written and read back (docs/benchmarks.md, "The backlog of a durable queue").
const FLOW_HIGH: usize = 16_384;
/// Ready body bytes held in memory at which a queue with consumers asks its
/// publishers to pause, whatever the count: 16,384 bodies of 64 KiB are a
/// gigabyte, which the consumer reaches only after a p99 of half a second
/// and with every body gone cold in the caches by the time it is sent
/// (docs/benchmarks.md, "A transient backlog bounded in bytes").
const FLOW_HIGH_BYTES: u64 = 8 << 20;

fn priority_levels(arguments: &FieldTable) -> usize {
    match int_arg(arguments, "x-max-priority") {
        Some(p) if p > 0 => p.min(255) as usize + 1,
        _ => 1,
    }
}

/// The TTL a message has in a queue: the shorter of the queue's
/// `x-message-ttl` and the message's `expiration`.
fn effective_ttl(queue_ttl: Option<u64>, message: &Message) -> Option<u64> {
    match (queue_ttl, message.expiration_ms()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct QueueState {
    ready: Box<dyn QueueStore<MessageRef>>,
    /// Sum of the ready messages' body sizes (those in memory).
    ready_bytes: u64,
    /// Durable queues: the tail kept in the message log, one per priority
    /// level (one for a plain queue); empty when the queue has no log.
    paged: Vec<Paged>,
    /// Highest consumer priority first; registration order within a priority.
    consumers: Vec<Arc<Consumer>>,
    /// Where round-robin dispatch resumes.
    next_consumer: usize,
    /// Delivered to a consumer or `basic.get`, not yet acked.
    unacked: usize,
    /// Auto-delete queues go only after they have had a consumer.
    had_consumer: bool,
    deleted: bool,
    /// Set once any entry had an expiry: only then is the head checked.
    may_expire: bool,
    /// Last use (ms), for `x-expires`.
    last_used: u64,
    /// Messages that died under the lock, dead-lettered once it is released.
    dead: Vec<(MessageRef, Reason)>,
    /// `message_stats`, counted under the lock already held (no atomics).
    stats: stats::Counts,
    /// Limits, TTLs and dead-lettering: the arguments resolved with the
    /// policies that match (`policy.rs`), replaced when a policy changes.
    settings: QueueSettings,
    /// Rejected messages waiting out their requeue back-off: (due ms, entry).
    backed_off: Vec<(u64, Entry<MessageRef>)>,
    /// `x-message-deduplication` (`dedup.rs`): the values seen lately.
    dedup: Option<crate::dedup::Dedup>,
}

impl QueueState {
    fn push(&mut self, message: MessageRef, meta: Meta) {
        if !self.paged.is_empty() {
            let level = (meta.priority as usize).min(self.paged.len() - 1);
            let over = self.ready.len() >= HOT_COUNT || self.ready_bytes >= HOT_BYTES;
            let paged = &mut self.paged[level];
            paged.settle();
            // Without a log the tail is only for spilling: it takes messages
            // under memory pressure, and while it holds any (order).
            let takes = paged.log.is_some() || paged.spill.when_pressed().is_some();
            if !paged.order.is_empty() || (over && takes) {
                paged.push(message, meta);
                return;
            }
        }
        self.ready_bytes += message.body.len() as u64;
        self.ready.push(message, meta);
    }

    /// Ready messages, in memory and paged out.
    fn len(&self) -> usize {
        self.ready.len() + self.paged.iter().map(|p| p.order.len()).sum::<usize>()
    }

    /// Body bytes of the ready messages, in memory and paged out.
    fn bytes(&self) -> u64 {
        self.ready_bytes + self.paged.iter().map(|p| p.bytes).sum::<u64>()
    }

    fn peek(&mut self) -> Option<&Entry<MessageRef>> {
        self.page_in();
        self.ready.peek()
    }

    fn pop(&mut self) -> Option<Entry<MessageRef>> {
        self.page_in();
        let e = self.ready.pop()?;
        self.ready_bytes -= e.message.body.len() as u64;
        Some(e)
    }

    fn requeue(&mut self, e: Entry<MessageRef>) {
        self.ready_bytes += e.message.body.len() as u64;
        self.ready.requeue(e);
    }
}

/// The queue's state, locked. Dropping it releases the lock and then
/// dead-letters what died meanwhile.
struct Locked<'a> {
    queue: &'a Queue,
    guard: Option<MutexGuard<'a, QueueState>>,
}

impl Deref for Locked<'_> {
    type Target = QueueState;
    fn deref(&self) -> &QueueState {
        self.guard.as_ref().expect("held until drop")
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut QueueState {
        self.guard.as_mut().expect("held until drop")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let mut guard = self.guard.take().expect("held until drop");
        let dead = std::mem::take(&mut guard.dead);
        drop(guard);
        if !dead.is_empty() {
            self.queue.dead_letter(dead);
        }
    }
}

/// A queue's figures at one moment (see [`Queue::status`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStatus {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u32,
    /// Body bytes of the ready messages, in memory and paged out.
    pub ready_bytes: u64,
    pub ready_bytes_in_memory: u64,
    pub ready_in_memory: u64,
    pub counts: stats::Counts,
}

/// Index in `Queue::rates` of the length rates, after the counters.
pub const RATE_MESSAGES: usize = stats::N;
pub const RATE_READY: usize = stats::N + 1;
pub const RATE_UNACKED: usize = stats::N + 2;

/// A message given back to a queue at startup (see [`Queue::restore`]).
pub enum Restored {
    /// Read back already: it was delivered before, and its count matters.
    Loaded { message: MessageRef, delivery_count: u32, published_at: u64 },
    /// Still only in the message log.
    InLog { location: u64, body_len: u32 },
}

/// What `remove_consumer` tells the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterCancel {
    Keep,
    /// Auto-delete queue lost its last consumer: delete it.
    AutoDelete,
}

fn is_quorum(args: &FieldTable) -> bool {
    matches!(args.inner().get("x-queue-type"), Some(AMQPValue::LongString(s)) if s.as_bytes() == b"quorum")
}

impl Queue {
    pub fn new(
        name: &str,
        vhost: &str,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> Self {
        let settings = crate::policy::resolve_queue(&arguments, is_quorum(&arguments), None, None);
        let spill = Arc::<crate::spill::Spill>::default();
        Queue {
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            durable,
            exclusive_owner,
            auto_delete,
            single_active: matches!(arguments.inner().get("x-single-active-consumer"), Some(AMQPValue::Boolean(true))),
            fair: matches!(arguments.inner().get("x-fair-dispatch"), Some(AMQPValue::Boolean(true))),
            requeue_backoff: int_arg(&arguments, "x-requeue-backoff").filter(|b| *b > 0).map(|b| b as u64),
            quorum: is_quorum(&arguments),
            delivery_count_header: is_quorum(&arguments)
                || matches!(arguments.inner().get("x-delivery-count-header"), Some(AMQPValue::Boolean(true))),
            log: None,
            spill: spill.clone(),
            log_key: log_key(vhost, name),
            owner: Weak::new(),
            state: Mutex::new(QueueState {
                ready: match int_arg(&arguments, "x-max-priority") {
                    Some(p) if p > 0 => Box::new(PriorityStore::new(p.min(255) as u8)),
                    _ => Box::new(MemoryStore::default()),
                },
                ready_bytes: 0,
                paged: paged_tails(priority_levels(&arguments), None, &spill, settings.message_ttl),
                consumers: Vec::new(),
                next_consumer: 0,
                unacked: 0,
                had_consumer: false,
                deleted: false,
                may_expire: false,
                last_used: crate::now_ms(),
                dead: Vec::new(),
                stats: [0; stats::N],
                settings,
                backed_off: Vec::new(),
                dedup: crate::dedup::Dedup::from_arguments(&arguments, false),
            }),
            arguments,
            pressure: Default::default(),
            rates: Default::default(),
        }
    }

    /// Whether publishers to this queue should pause for a moment: it has
    /// consumers, and they are far behind.
    pub fn under_pressure(&self) -> bool {
        self.pressure.load(Ordering::Relaxed)
    }

    /// Gives a durable queue the message log: its persistent messages are
    /// recorded there, and its backlog is kept there rather than in memory
    /// (one paged tail per priority level).
    pub fn set_log(&mut self, log: Arc<dyn MessageStore>) {
        let levels = priority_levels(&self.arguments);
        let st = self.state.get_mut();
        st.paged = paged_tails(levels, Some(log.clone()), &self.spill, st.settings.message_ttl);
        self.log = Some(log);
    }

    /// Spills with the broker's spilling (set before the queue is shared;
    /// a queue on its own never spills).
    pub fn set_spill(&mut self, spill: Arc<crate::spill::Spill>) {
        let levels = priority_levels(&self.arguments);
        let st = self.state.get_mut();
        st.paged = paged_tails(levels, self.log.clone(), &spill, st.settings.message_ttl);
        self.spill = spill;
    }

    /// Messages kept in memory and paged out to the log, for tests and stats.
    pub fn paged_count(&self) -> (usize, usize) {
        let st = self.lock();
        (st.ready.len(), st.paged.iter().map(|p| p.order.len()).sum())
    }

    /// Lets go of paged messages the log has synced since (timer).
    pub fn settle_paged(&self) {
        for p in &mut self.lock().paged {
            p.settle();
        }
    }

    fn lock(&self) -> Locked<'_> {
        Locked { queue: self, guard: Some(self.state.lock()) }
    }

    /// 405 unless `connection` may use this queue.
    pub fn check_access(&self, connection: u64) -> Result<(), AmqpError> {
        match self.exclusive_owner {
            Some(owner) if owner != connection => Err(Self::check_access_strict(self)),
            _ => Ok(()),
        }
    }

    /// The 405 RabbitMQ sends when a queue is exclusive to another
    /// connection, or a redeclaration's exclusive flag does not match.
    pub fn check_access_strict(q: &Queue) -> AmqpError {
        AmqpError::resource_locked(format_args!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
             originally declared on another connection or the exclusive property value does \
             not match that of the original declaration.",
            q.name, q.vhost
        ))
    }

    pub fn message_count(&self) -> u32 {
        let mut st = self.lock();
        self.drop_expired(&mut st);
        st.len() as u32
    }

    /// Body bytes of the ready messages: (held in memory, paged out to the
    /// message log), for the memory breakdown.
    pub fn ready_bytes(&self) -> (u64, u64) {
        let st = self.lock();
        (st.ready_bytes, st.paged.iter().map(|p| p.bytes).sum())
    }

    /// The settings in effect (arguments resolved with policies).
    pub fn settings(&self) -> QueueSettings {
        self.lock().settings.clone()
    }

    /// The dead-letter exchange and routing key in effect.
    pub fn dead_letter_target(&self) -> Option<(String, Option<String>)> {
        self.lock().settings.dead_letter.clone()
    }

    /// A policy changed: the queue runs with `settings` from now on. A
    /// lower length limit applies at once (the head is dropped or
    /// dead-lettered), as in RabbitMQ.
    pub fn apply_settings(&self, settings: QueueSettings) {
        let mut st = self.lock();
        if st.settings == settings {
            return;
        }
        for p in &mut st.paged {
            p.message_ttl = settings.message_ttl;
        }
        st.settings = settings;
        self.enforce_drop_head(&mut st);
    }

    /// What the management API shows of the queue, under one lock.
    pub fn status(&self) -> QueueStatus {
        let mut st = self.lock();
        self.drop_expired(&mut st);
        QueueStatus {
            ready: st.len() as u64,
            unacked: st.unacked as u64,
            consumers: st.consumers.len() as u32,
            ready_bytes: st.bytes(),
            ready_bytes_in_memory: st.ready_bytes,
            ready_in_memory: st.ready.len() as u64,
            counts: st.stats,
        }
    }

    /// Management timer: samples the counters and lengths into `rates`.
    pub fn sample(&self) -> QueueStatus {
        let s = self.status();
        self.rates.sample(&stats::with_lengths(&s.counts, s.ready, s.unacked));
        s
    }

    /// Deliveries waiting for their ack.
    pub fn unacked_count(&self) -> u32 {
        self.lock().unacked as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.lock().consumers.len() as u32
    }

    /// The consumers, with whether each receives deliveries now (with a
    /// single active consumer, only the first does).
    pub fn consumers(&self) -> Vec<(Arc<Consumer>, bool)> {
        let st = self.lock();
        st.consumers.iter().enumerate().map(|(i, c)| (c.clone(), !self.single_active || i == 0)).collect()
    }

    /// Marks the queue used now (declare, get, consume), for `x-expires`.
    pub fn touch(&self) {
        self.lock().last_used = crate::now_ms();
    }

    /// Whether `x-expires` has run out: unused, without consumers, for that long.
    pub fn is_expired(&self, now: u64) -> bool {
        let st = self.lock();
        let Some(expires) = st.settings.expires else { return false };
        !st.deleted && st.consumers.is_empty() && now.saturating_sub(st.last_used) >= expires
    }

    /// Enqueues a routed message and delivers what it can. Returns false if
    /// the queue refused it (length limit with a reject-publish overflow).
    pub fn publish(self: &Arc<Self>, message: MessageRef) -> bool {
        let mut st = self.lock();
        if st.deleted {
            return true;
        }
        if st.dedup.as_mut().is_some_and(|d| d.is_duplicate(&message, crate::now_ms())) {
            // Accepted (confirmed) and dropped: the queue already had it.
            self.discard(&message);
            return true;
        }
        let ttl = effective_ttl(st.settings.message_ttl, &message);
        let meta = Meta {
            priority: message.properties.priority().unwrap_or(0),
            expires_at: ttl.map(|t| crate::now_ms().saturating_add(t)),
            delivery_count: 0,
        };
        let overflow = st.settings.overflow;
        if overflow != Overflow::DropHead {
            let full = st.settings.max_length.is_some_and(|m| st.len() as u64 >= m)
                || st.settings.max_length_bytes.is_some_and(|m| st.bytes() + message.body.len() as u64 > m);
            if full {
                self.discard(&message);
                if overflow == Overflow::RejectPublishDlx {
                    self.count_dead(&st, Reason::MaxLen);
                    st.dead.push((message, Reason::MaxLen));
                }
                return false;
            }
        }
        st.stats[stats::PUBLISH] += 1;
        if ttl == Some(0) {
            // TTL 0: delivered if a consumer can take it right now, else expired.
            if st.len() > 0 {
                self.remove(&mut st, message, Some(Reason::Expired));
                return true;
            }
            st.push(message, Meta { expires_at: None, ..meta });
            self.dispatch(&mut st);
            if let Some(e) = st.pop() {
                self.remove(&mut st, e.message, Some(Reason::Expired));
            }
            return true;
        }
        st.may_expire |= meta.expires_at.is_some();
        st.push(message, meta);
        self.dispatch(&mut st);
        self.enforce_drop_head(&mut st);
        // A queue that pages asks as soon as its backlog outgrows the hot
        // head: past it each message would be written out and read back.
        let behind = match self.log {
            Some(_) => st.len() >= HOT_COUNT || st.bytes() >= HOT_BYTES,
            None => st.len() > FLOW_HIGH || st.ready_bytes >= FLOW_HIGH_BYTES,
        };
        let pressure = !st.consumers.is_empty() && behind;
        if pressure != self.pressure.load(Ordering::Relaxed) {
            self.pressure.store(pressure, Ordering::Relaxed);
        }
        true
    }

    fn enforce_drop_head(&self, st: &mut QueueState) {
        if st.settings.overflow != Overflow::DropHead {
            return;
        }
        while st.settings.max_length.is_some_and(|m| st.len() as u64 > m)
            || st.settings.max_length_bytes.is_some_and(|m| st.bytes() > m)
        {
            let Some(e) = st.pop() else { break };
            self.remove(st, e.message, Some(Reason::MaxLen));
        }
    }

    /// A message leaves this queue for good. Every (queue, message) pair
    /// passes here (or through [`Queue::discard`]) exactly once: the log
    /// counts live pairs per segment. With a reason and a dead-letter
    /// exchange, the message is dead-lettered once the lock is released.
    fn remove(&self, st: &mut QueueState, message: MessageRef, reason: Option<Reason>) {
        self.discard(&message);
        if let Some(reason) = reason {
            self.count_dead(st, reason);
            if st.settings.dead_letter.is_some() {
                st.dead.push((message, reason));
            }
        }
    }

    /// Counts a message that left for `reason`, dead-lettered or dropped
    /// (the broker's totals, for its metrics).
    fn count_dead(&self, st: &QueueState, reason: Reason) {
        if let Some(vhost) = self.owner.upgrade() {
            vhost.hooks.count_dead(reason, self.quorum, st.settings.dead_letter.is_some());
        }
    }

    /// Logs that a message left this queue (acked, dropped).
    pub fn discard(&self, message: &MessageRef) {
        if let (Some(log), Some(p)) = (&self.log, message.persisted.get()) {
            log.ack(&self.log_key, *p);
        }
    }

    /// Rejected without requeue: logged, and dead-lettered if configured.
    pub fn reject(&self, message: MessageRef) {
        let mut st = self.lock();
        self.remove(&mut st, message, Some(Reason::Rejected));
    }

    fn dead_letter(&self, dead: Vec<(MessageRef, Reason)>) {
        if let Some(vhost) = self.owner.upgrade() {
            vhost.dead_letter(self, dead);
        }
    }

    /// Drops expired messages at the head, as RabbitMQ does: a message
    /// behind a longer-lived one waits until it reaches the head.
    fn drop_expired(&self, st: &mut QueueState) -> usize {
        if !st.may_expire {
            return 0;
        }
        let now = crate::now_ms();
        let mut n = 0;
        while st.peek().is_some_and(|e| e.expires_at.is_some_and(|t| t <= now)) {
            if let Some(e) = st.pop() {
                self.remove(st, e.message, Some(Reason::Expired));
            }
            n += 1;
        }
        n
    }

    /// Timer entry point: drops expired messages at the head. Returns how
    /// many were dropped.
    pub fn expire(&self) -> usize {
        let mut st = self.lock();
        self.drop_expired(&mut st)
    }

    /// Whether this queue has ever held a message with an expiry.
    pub fn may_expire(&self) -> bool {
        self.lock().may_expire
    }

    /// Puts recovered messages back (startup only), in log order, with
    /// their delivery counts and expiry times computed from when they were
    /// published. Already expired ones go at the next expiry pass. Messages
    /// still only in the log stay there (paged) until the head needs them.
    pub fn restore(&self, entries: impl IntoIterator<Item = Restored>) {
        let mut st = self.lock();
        for entry in entries {
            let (message, delivery_count, published_at) = match entry {
                Restored::InLog { location, body_len } => {
                    if st.paged.len() == 1 {
                        st.paged[0].push_location(location, body_len);
                        // Its expiry is known once read back: let the expiry pass look.
                        st.may_expire = true;
                        continue;
                    }
                    // A priority queue needs the message's priority: read it now
                    // (it is paged out again at its level).
                    let Some(log) = &self.log else { continue };
                    match log.read(location) {
                        Ok(back) => {
                            (Arc::new(Message::from_stored(&back.message, back.persisted)), 0, back.published_at)
                        }
                        Err(e) => {
                            tracing::error!(queue = %self.name, error = %e, "cannot read a recovered message back");
                            continue;
                        }
                    }
                }
                Restored::Loaded { message, delivery_count, published_at } => (message, delivery_count, published_at),
            };
            let ttl = effective_ttl(st.settings.message_ttl, &message);
            let expires_at = ttl.map(|t| published_at.saturating_add(t));
            st.may_expire |= expires_at.is_some();
            let meta = Meta { priority: message.properties.priority().unwrap_or(0), expires_at, delivery_count };
            st.push(message, meta);
        }
    }

    /// `basic.get`: the head message and how many remain after it.
    pub fn get(&self, no_ack: bool) -> Option<(Entry<MessageRef>, u32)> {
        let mut st = self.lock();
        st.last_used = crate::now_ms();
        self.drop_expired(&mut st);
        let mut entry = st.pop()?;
        entry.delivery_count += 1;
        self.log_delivery(&entry);
        st.stats[if no_ack { stats::GET_NO_ACK } else { stats::GET }] += 1;
        st.stats[stats::REDELIVER] += entry.redelivered as u64;
        if no_ack {
            self.discard(&entry.message);
        } else {
            st.unacked += 1;
        }
        let remaining = st.len() as u32;
        Some((entry, remaining))
    }

    fn log_delivery(&self, entry: &Entry<MessageRef>) {
        if let (Some(log), Some(p)) = (&self.log, entry.message.persisted.get()) {
            log.delivered(&self.log_key, *p, entry.delivery_count);
        }
    }

    /// `n` delivered messages were acked (`acked`) or rejected without requeue.
    pub fn settled(&self, n: usize, acked: bool) {
        let mut st = self.lock();
        if acked {
            st.stats[stats::ACK] += n as u64;
        }
        debug_assert!(st.unacked >= n, "queue '{}': more acks than deliveries", self.name);
        st.unacked = st.unacked.saturating_sub(n);
    }

    /// Puts delivered-but-unacked messages back at their place, flagged
    /// redelivered, and delivers again. Past `x-delivery-limit` they are
    /// dead-lettered (or dropped) instead.
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = Entry<MessageRef>>) {
        self.requeue_after(entries, None);
    }

    /// Rejected or nacked with requeue. With `x-requeue-backoff`, each waits
    /// base × 2^(deliveries − 1) ms (at most an hour) before it is ready
    /// again — the vhost's 100 ms tick releases it (`release_backed_off`) —
    /// so a poison message is not redelivered in a hot loop.
    pub fn reject_requeue(self: &Arc<Self>, entries: Vec<Entry<MessageRef>>) {
        self.requeue_after(entries, self.requeue_backoff);
    }

    fn requeue_after(self: &Arc<Self>, entries: impl IntoIterator<Item = Entry<MessageRef>>, backoff: Option<u64>) {
        let now = if backoff.is_some() { crate::now_ms() } else { 0 };
        let mut st = self.lock();
        for mut e in entries {
            st.unacked = st.unacked.saturating_sub(1);
            if st.deleted {
                self.discard(&e.message);
            } else if st.settings.delivery_limit.is_some_and(|l| e.delivery_count > l) {
                self.remove(&mut st, e.message, Some(Reason::DeliveryLimit));
            } else {
                e.redelivered = true;
                match backoff {
                    Some(base) => {
                        let shift = e.delivery_count.clamp(1, 32) - 1;
                        let wait = base.saturating_mul(1u64 << shift).min(3_600_000);
                        st.backed_off.push((now + wait, e));
                    }
                    None => st.requeue(e),
                }
            }
        }
        self.dispatch(&mut st);
    }

    /// Makes rejected messages whose back-off is over ready again (tick).
    pub fn release_backed_off(self: &Arc<Self>, now: u64) {
        let mut st = self.lock();
        if !st.backed_off.iter().any(|(due, _)| *due <= now) {
            return;
        }
        let (due, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut st.backed_off).into_iter().partition(|(d, _)| *d <= now);
        st.backed_off = waiting;
        for (_, e) in due {
            st.requeue(e);
        }
        self.dispatch(&mut st);
    }

    /// Messages waiting out a requeue back-off.
    pub fn backed_off_count(&self) -> usize {
        self.lock().backed_off.len()
    }

    /// A delivery that never reached the client (its channel closed while it
    /// was in flight) goes back unchanged.
    pub fn undeliver(self: &Arc<Self>, mut entry: Entry<MessageRef>, was_acked_mode: bool) {
        let mut st = self.lock();
        if was_acked_mode {
            st.unacked = st.unacked.saturating_sub(1);
        }
        if st.deleted {
            self.discard(&entry.message);
        } else {
            entry.delivery_count = entry.delivery_count.saturating_sub(1);
            st.requeue(entry);
        }
        self.dispatch(&mut st);
    }

    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> Result<(), AmqpError> {
        let mut st = self.lock();
        if st.deleted {
            return Err(AmqpError::not_found(format_args!("no queue '{}' in vhost '{}'", self.name, self.vhost)));
        }
        if !st.consumers.is_empty() && (consumer.exclusive || st.consumers.iter().any(|c| c.exclusive)) {
            return Err(AmqpError::access_refused(format_args!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        let at = st.consumers.iter().take_while(|c| c.priority >= consumer.priority).count();
        st.consumers.insert(at, consumer);
        st.had_consumer = true;
        st.last_used = crate::now_ms();
        self.dispatch(&mut st);
        Ok(())
    }

    pub fn remove_consumer(self: &Arc<Self>, consumer: &Arc<Consumer>) -> AfterCancel {
        consumer.cancelled.store(true, Ordering::Release);
        let mut st = self.lock();
        let before = st.consumers.len();
        st.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        st.last_used = crate::now_ms();
        if st.consumers.len() != before {
            st.next_consumer = 0;
            // With a single active consumer, the next one may take over.
            self.dispatch(&mut st);
        }
        if self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted {
            AfterCancel::AutoDelete
        } else {
            AfterCancel::Keep
        }
    }

    pub fn purge(&self) -> u32 {
        let mut st = self.lock();
        let mut n = 0;
        while let Some(e) = st.pop() {
            self.discard(&e.message);
            n += 1;
        }
        n
    }

    /// Checks `queue.delete`'s if-unused / if-empty conditions.
    pub fn check_delete(&self, if_unused: bool, if_empty: bool) -> Result<(), AmqpError> {
        let st = self.lock();
        if if_unused && !st.consumers.is_empty() {
            return Err(AmqpError::precondition(format_args!(
                "queue '{}' in vhost '{}' in use",
                self.name, self.vhost
            )));
        }
        if if_empty && st.len() > 0 {
            return Err(AmqpError::precondition(format_args!(
                "queue '{}' in vhost '{}' not empty",
                self.name, self.vhost
            )));
        }
        Ok(())
    }

    /// Marks the queue deleted, cancels its consumers and drops its
    /// messages. Returns how many ready messages it had.
    pub fn mark_deleted(&self) -> u32 {
        let (consumers, count) = {
            let mut st = self.lock();
            if st.deleted {
                return 0;
            }
            st.deleted = true;
            if let Some(log) = &self.log {
                log.queue_deleted(&self.log_key);
            }
            let mut count = 0;
            // The paged-out backlog goes without being read back.
            for paged in std::mem::take(&mut st.paged) {
                for v in paged.order {
                    if v & SPILLED != 0 && v != PINNED {
                        if let Some(spill) = paged.spill.store() {
                            spill.forget(v & !SPILLED);
                        }
                    } else if let Some(log) = paged.log.as_ref().filter(|_| v != PINNED) {
                        log.forget(v);
                    }
                    count += 1;
                }
                for (m, _) in paged.pinned.into_values() {
                    self.discard(&m);
                }
            }
            while let Some(e) = st.pop() {
                self.discard(&e.message);
                count += 1;
            }
            for (_, e) in std::mem::take(&mut st.backed_off) {
                self.discard(&e.message);
            }
            (std::mem::take(&mut st.consumers), count)
        };
        for c in consumers {
            c.cancelled.store(true, Ordering::Release);
            c.outbox.clone().cancelled(&c);
        }
        count
    }
}

/// The property bytes a delivery from `queue` carries: as published, except
/// that quorum queues add `x-delivery-count` (deliveries before this one),
/// as RabbitMQ's quorum queues do — and so do classic queues declared with
/// `x-delivery-count-header: true` (a Warren argument: the count is kept
/// for every queue, RabbitMQ's classic queues just do not send it).
pub fn delivery_properties<'a>(queue: &Queue, entry: &'a Entry<MessageRef>) -> std::borrow::Cow<'a, [u8]> {
    if !queue.delivery_count_header {
        return std::borrow::Cow::Borrowed(&entry.message.properties_raw[..]);
    }
    let mut props = entry.message.full_properties();
    let mut headers = props.headers().clone().unwrap_or_default();
    let previous = entry.delivery_count.saturating_sub(1) as i64;
    headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(previous));
    props = props.with_headers(headers);
    std::borrow::Cow::Owned(warren_protocol::content::encode_properties(&props).to_vec())
}

/// A queue's name in the message log: vhost and queue, NUL-separated.
pub fn log_key(vhost: &str, queue: &str) -> String {
    format!("{vhost}\0{queue}")
}
