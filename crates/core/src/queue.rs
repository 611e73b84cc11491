//! A queue: its ready messages (in a [`QueueStore`]), its consumers, and
//! dispatch to them round-robin as their prefetch allows.
//!
//! All state sits behind one mutex per queue. Every operation that can make
//! a delivery possible (publish, ack, requeue, new consumer) ends by calling
//! `dispatch` while still holding that lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;
use warren_protocol::{AmqpError, FieldTable};
use warren_store::log::MessageLog;
use warren_store::{Entry, MemoryStore, Meta, PriorityStore, QueueStore};

use crate::consumer::{Consumer, Delivery};
use crate::message::MessageRef;

pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    /// Connection that declared it exclusive, if it did.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// `x-message-ttl`, in milliseconds.
    pub message_ttl: Option<u64>,
    /// The message log, for durable queues when the broker has one.
    pub log: Option<MessageLog>,
    /// This queue's name in the message log (vhost and name).
    pub log_key: String,
    state: Mutex<QueueState>,
}

struct QueueState {
    ready: Box<dyn QueueStore<MessageRef>>,
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
}

/// What `remove_consumer` tells the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterCancel {
    Keep,
    /// Auto-delete queue lost its last consumer: delete it.
    AutoDelete,
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
        Queue {
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            durable,
            exclusive_owner,
            auto_delete,
            message_ttl: crate::arguments::int_arg(&arguments, "x-message-ttl").map(|v| v.max(0) as u64),
            log: None,
            log_key: log_key(vhost, name),
            state: Mutex::new(QueueState {
                ready: match crate::arguments::int_arg(&arguments, "x-max-priority") {
                    Some(p) if p > 0 => Box::new(PriorityStore::new(p.min(255) as u8)),
                    _ => Box::new(MemoryStore::default()),
                },
                consumers: Vec::new(),
                next_consumer: 0,
                unacked: 0,
                had_consumer: false,
                deleted: false,
                may_expire: false,
            }),
            arguments,
        }
    }

    /// 405 unless `connection` may use this queue.
    pub fn check_access(&self, connection: u64) -> Result<(), AmqpError> {
        match self.exclusive_owner {
            Some(owner) if owner != connection => Err(AmqpError::resource_locked(format_args!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
                 originally declared on another connection or the exclusive property value does \
                 not match that of the original declaration.",
                self.name, self.vhost
            ))),
            _ => Ok(()),
        }
    }

    pub fn message_count(&self) -> u32 {
        let mut st = self.state.lock();
        self.drop_expired(&mut st);
        st.ready.len() as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    pub fn unacked_count(&self) -> usize {
        self.state.lock().unacked
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Enqueues a routed message and delivers what it can.
    pub fn publish(self: &Arc<Self>, message: MessageRef) {
        let ttl = match (self.message_ttl, message.expiration_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let meta = Meta {
            priority: message.properties.priority().unwrap_or(0),
            expires_at: ttl.map(|t| crate::now_ms().saturating_add(t)),
            delivery_count: 0,
        };
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        if ttl == Some(0) {
            // TTL 0: delivered if a consumer can take it right now, else expired.
            if !st.ready.is_empty() {
                return;
            }
            st.ready.push(message, Meta { expires_at: None, ..meta });
            self.dispatch(&mut st);
            if let Some(e) = st.ready.pop() {
                self.discard(&e.message);
            }
            return;
        }
        st.may_expire |= meta.expires_at.is_some();
        st.ready.push(message, meta);
        self.dispatch(&mut st);
    }

    /// A message leaves this queue for good (acked, expired, purged,
    /// rejected, or its queue deleted). Every (queue, message) pair passes
    /// here exactly once: the log counts live pairs per segment.
    pub fn discard(&self, message: &MessageRef) {
        if let (Some(log), Some(p)) = (&self.log, message.persisted.get()) {
            log.ack(&self.log_key, *p);
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
        while st.ready.peek().is_some_and(|e| e.expires_at.is_some_and(|t| t <= now)) {
            if let Some(e) = st.ready.pop() {
                self.discard(&e.message);
            }
            n += 1;
        }
        n
    }

    /// Timer entry point: drops expired messages at the head. Returns how
    /// many were dropped.
    pub fn expire(&self) -> usize {
        self.drop_expired(&mut self.state.lock())
    }

    /// Puts recovered messages back (startup only), in log order.
    pub fn restore(&self, entries: impl IntoIterator<Item = (MessageRef, u32)>) {
        let mut st = self.state.lock();
        for (message, delivery_count) in entries {
            let meta = Meta { priority: message.properties.priority().unwrap_or(0), expires_at: None, delivery_count };
            st.ready.push(message, meta);
        }
    }

    /// Whether this queue has ever held a message with an expiry.
    pub fn may_expire(&self) -> bool {
        self.state.lock().may_expire
    }

    /// Delivers ready messages to consumers with credit, round-robin.
    fn dispatch(self: &Arc<Self>, st: &mut QueueState) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            if self.drop_expired(st) > 0 {
                continue;
            }
            let n = st.consumers.len();
            let Some(idx) = (0..n).map(|i| (st.next_consumer + i) % n).find(|&i| st.consumers[i].try_acquire()) else {
                break;
            };
            st.next_consumer = (idx + 1) % n;
            let consumer = st.consumers[idx].clone();
            let mut entry = st.ready.pop().expect("checked non-empty");
            entry.delivery_count += 1;
            self.log_delivery(&entry);
            if consumer.no_ack {
                // No ack will come: it leaves the queue now.
                self.discard(&entry.message);
            } else {
                st.unacked += 1;
            }
            let outbox = consumer.outbox.clone();
            if let Err(back) = outbox.deliver(Delivery { consumer, queue: self.clone(), entry }) {
                // The connection is gone; it will cancel this consumer.
                back.consumer.release(1);
                if !back.consumer.no_ack {
                    st.unacked -= 1;
                }
                let mut entry = back.entry;
                entry.delivery_count -= 1;
                st.ready.requeue(entry);
                st.consumers.retain(|c| !Arc::ptr_eq(c, &back.consumer));
                st.next_consumer = 0;
            }
        }
    }

    /// Asks the queue to deliver again (credit was freed).
    pub fn wake(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch(&mut st);
    }

    /// `basic.get`: the head message and how many remain after it.
    pub fn get(&self, no_ack: bool) -> Option<(Entry<MessageRef>, u32)> {
        let mut st = self.state.lock();
        self.drop_expired(&mut st);
        let mut entry = st.ready.pop()?;
        entry.delivery_count += 1;
        self.log_delivery(&entry);
        if no_ack {
            self.discard(&entry.message);
        } else {
            st.unacked += 1;
        }
        Some((entry, st.ready.len() as u32))
    }

    fn log_delivery(&self, entry: &Entry<MessageRef>) {
        if let (Some(log), Some(p)) = (&self.log, entry.message.persisted.get()) {
            log.delivered(&self.log_key, *p, entry.delivery_count);
        }
    }

    /// `n` delivered messages were acked (or rejected without requeue).
    pub fn settled(&self, n: usize) {
        let mut st = self.state.lock();
        debug_assert!(st.unacked >= n, "queue '{}': more acks than deliveries", self.name);
        st.unacked = st.unacked.saturating_sub(n);
    }

    /// Puts delivered-but-unacked messages back at their place, flagged
    /// redelivered, and delivers again.
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = Entry<MessageRef>>) {
        let mut st = self.state.lock();
        for mut e in entries {
            st.unacked = st.unacked.saturating_sub(1);
            if st.deleted {
                self.discard(&e.message);
            } else {
                e.redelivered = true;
                st.ready.requeue(e);
            }
        }
        self.dispatch(&mut st);
    }

    /// A delivery that never reached the client (its channel closed while it
    /// was in flight) goes back unchanged.
    pub fn undeliver(self: &Arc<Self>, mut entry: Entry<MessageRef>, was_acked_mode: bool) {
        let mut st = self.state.lock();
        if was_acked_mode {
            st.unacked = st.unacked.saturating_sub(1);
        }
        if st.deleted {
            self.discard(&entry.message);
        } else {
            entry.delivery_count = entry.delivery_count.saturating_sub(1);
            st.ready.requeue(entry);
        }
        self.dispatch(&mut st);
    }

    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> Result<(), AmqpError> {
        let mut st = self.state.lock();
        if st.deleted {
            return Err(AmqpError::not_found(format_args!("no queue '{}' in vhost '{}'", self.name, self.vhost)));
        }
        if !st.consumers.is_empty() && (consumer.exclusive || st.consumers.iter().any(|c| c.exclusive)) {
            return Err(AmqpError::access_refused(format_args!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        st.consumers.push(consumer);
        st.had_consumer = true;
        self.dispatch(&mut st);
        Ok(())
    }

    pub fn remove_consumer(&self, consumer: &Arc<Consumer>) -> AfterCancel {
        consumer.cancelled.store(true, Ordering::Release);
        let mut st = self.state.lock();
        let before = st.consumers.len();
        st.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        if st.consumers.len() != before {
            st.next_consumer = 0;
        }
        if self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted {
            AfterCancel::AutoDelete
        } else {
            AfterCancel::Keep
        }
    }

    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let mut n = 0;
        while let Some(e) = st.ready.pop() {
            self.discard(&e.message);
            n += 1;
        }
        n
    }

    /// Checks `queue.delete`'s if-unused / if-empty conditions.
    pub fn check_delete(&self, if_unused: bool, if_empty: bool) -> Result<(), AmqpError> {
        let st = self.state.lock();
        if if_unused && !st.consumers.is_empty() {
            return Err(AmqpError::precondition(format_args!(
                "queue '{}' in vhost '{}' in use",
                self.name, self.vhost
            )));
        }
        if if_empty && !st.ready.is_empty() {
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
            let mut st = self.state.lock();
            if st.deleted {
                return 0;
            }
            st.deleted = true;
            if let Some(log) = &self.log {
                log.queue_deleted(&self.log_key);
            }
            let mut count = 0;
            while let Some(e) = st.ready.pop() {
                self.discard(&e.message);
                count += 1;
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

impl Queue {
    /// The 405 RabbitMQ sends when a redeclaration's exclusive flag or
    /// owner does not match.
    pub fn check_access_strict(q: &Queue) -> AmqpError {
        AmqpError::resource_locked(format_args!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
             originally declared on another connection or the exclusive property value does \
             not match that of the original declaration.",
            q.name, q.vhost
        ))
    }
}

/// A queue's name in the message log: vhost and queue, NUL-separated.
pub fn log_key(vhost: &str, queue: &str) -> String {
    format!("{vhost}\0{queue}")
}
