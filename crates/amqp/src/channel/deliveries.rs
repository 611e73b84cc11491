//! A channel's consuming side: consumers and their deliveries (delivery
//! tags, prefetch credit, consumer timeouts), `basic.get`, and the acks,
//! rejects, nacks and recovers that settle what was delivered.

use super::*;

/// A delivery awaiting its ack.
pub(super) struct Unacked {
    /// The slot of its queue and consumer (`Slots`; a `basic.get`'s own
    /// slot has no consumer: no credit to give back).
    pub(super) slot: u32,
    pub(super) entry: Entry<MessageRef>,
    /// When its consumer's timeout starts counting (ms: its delivery, or a
    /// later celery ETA, `consumer_timeout.rs`); 0 without a timeout.
    pub(super) at_ms: u64,
}

/// An ack, reject or nack, as buffered by a transaction.
#[derive(Clone, Copy)]
pub(super) struct Settle {
    pub(super) tag: u64,
    pub(super) multiple: bool,
    /// None = ack; Some(requeue) = reject/nack.
    pub(super) requeue: Option<bool>,
}

/// Splits settled deliveries into runs by queue, keeping their order.
pub(super) fn group_by_queue(taken: Vec<Unacked>, slots: &Slots) -> Vec<(Arc<Queue>, Vec<Unacked>)> {
    let queue = |u: &Unacked| slots.handle(u.slot).map(|h| &h.queue);
    // Usually they all come from one slot, or one queue: no regrouping then.
    if let Some(first) = taken.first() {
        let Some(q) = queue(first) else {
            debug_assert!(false, "an unacked delivery names an empty slot");
            return Vec::new();
        };
        if taken.iter().all(|u| u.slot == first.slot || queue(u).is_some_and(|x| Arc::ptr_eq(x, q))) {
            return vec![(q.clone(), taken)];
        }
    }
    let mut groups: Vec<(Arc<Queue>, Vec<Unacked>)> = Vec::new();
    for u in taken {
        let Some(q) = queue(&u) else { continue };
        match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, q)) {
            Some((_, g)) => g.push(u),
            None => groups.push((q.clone(), vec![u])),
        }
    }
    groups
}

impl Channel {
    /// Writes one delivery from a queue to the client.
    pub fn deliver(
        &mut self,
        out: &mut frame::Out,
        frame_max: u32,
        (slot, to, consumer): (u32, &Handle, &Arc<Consumer>),
        entry: Entry<MessageRef>,
        turn: &mut Turn,
    ) {
        let queue = &to.queue;
        let tag = self.next_tag;
        self.next_tag += 1;
        let msg = &entry.message;
        let mut props = warren_core::queue::delivery_properties(queue, &entry);
        if self.for_link {
            props = for_link(props);
        }
        let names = (msg.exchange(), msg.routing_key());
        frame::write_delivery(out, self.id, frame_max, &consumer.tag, tag, entry.redelivered, names, &props, &msg.body);
        drop(props);
        self.info.stats.bump(if consumer.no_ack { stats::DELIVER_NO_ACK } else { stats::DELIVER }, 1);
        if entry.redelivered {
            self.info.stats.bump(stats::REDELIVER, 1);
        }
        if consumer.no_ack {
            consumer.finished(msg.body.len());
            if !turn.to_wake.last().is_some_and(|q| Arc::ptr_eq(q, queue)) {
                turn.to_wake.push(queue.clone());
            }
            self.push_unacked(tag, None);
        } else {
            turn.written(consumer, queue, consumer.window_cost(msg.body.len()));
            // Its timeout counts from now, or from a celery ETA it carries.
            let at_ms = match consumer.timeout_ms {
                Some(_) => warren_core::consumer_timeout::clock_start(msg, warren_core::now_ms()),
                None => 0,
            };
            to.hold();
            let u = Unacked { slot, entry, at_ms };
            self.push_unacked(tag, Some(u));
        }
    }

    pub(super) fn push_unacked(&mut self, tag: u64, u: Option<Unacked>) {
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
    pub(super) fn write_cancel(&self, out: &mut BytesMut, tag: &str) {
        let cancel = basic::Cancel { consumer_tag: tag.into(), nowait: true };
        reply(out, self.id, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)));
    }

    /// Drops the settled slots at the front of `unacked`, keeping
    /// `first_tag` the tag of its first slot.
    pub(super) fn trim_settled(&mut self) {
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
    pub fn expire_consumers(
        &mut self,
        out: &mut BytesMut,
        (vhost, slots): (&Arc<VHost>, &mut Slots),
        notify: bool,
        now_ms: u64,
    ) {
        if self.closing || !self.consumers.values().any(|(c, _)| c.timeout_ms.is_some()) {
            return;
        }
        let mut expired: Vec<(u32, Arc<Consumer>)> = Vec::new();
        for u in self.unacked.iter().flatten() {
            let Some((_, c)) = slots.get(u.slot) else { continue };
            let Some(t) = c.timeout_ms else { continue };
            if u.at_ms > 0 && now_ms.saturating_sub(u.at_ms) > t && !expired.iter().any(|(s, _)| *s == u.slot) {
                expired.push((u.slot, c.clone()));
            }
        }
        for (slot, c) in expired {
            let queue = slots.handle(slot).map(|h| h.queue.name.clone()).unwrap_or_default();
            tracing::warn!(channel = self.id, consumer = %c.tag, %queue, timeout_ms = c.timeout_ms, "consumer timed out: cancelled, its deliveries requeued");
            if self.consumers.get(&*c.tag).is_some_and(|(x, _)| Arc::ptr_eq(x, &c)) {
                if let Some((consumer, q)) = self.consumers.remove(&*c.tag) {
                    if q.remove_consumer(&consumer) == AfterCancel::AutoDelete {
                        vhost.remove_queue(&q);
                    }
                }
            }
            let mut taken = Vec::new();
            for (i, u) in self.unacked.iter_mut().enumerate() {
                if u.as_ref().is_some_and(|u| u.slot == slot) {
                    taken.extend(u.take());
                    self.timed_out.push(self.first_tag + i as u64);
                }
            }
            self.trim_settled();
            self.outstanding = self.outstanding.saturating_sub(taken.len() as u64);
            ChannelInfo::store(&self.info.unacked, self.outstanding);
            Self::requeue(taken, slots);
            if notify {
                self.write_cancel(out, &c.tag);
            }
        }
    }

    /// Takes the deliveries an ack/reject/nack names (RabbitMQ's rules: the
    /// tag must be outstanding; multiple takes every one up to it; tag 0
    /// with multiple means all).
    pub(super) fn take_unacked(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        let taken = self.take_unacked_inner(tag, multiple)?;
        self.outstanding = self.outstanding.saturating_sub(taken.len() as u64);
        ChannelInfo::store(&self.info.unacked, self.outstanding);
        Ok(taken)
    }

    pub(super) fn take_unacked_inner(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        let unknown = || AmqpError::precondition(format_args!("unknown delivery tag {tag}"));
        if multiple && tag == 0 {
            let mut all = Vec::with_capacity(self.unacked.len());
            all.extend(self.unacked.drain(..).flatten());
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
            let mut t = Vec::with_capacity(idx + 1);
            t.extend(self.unacked.drain(..=idx).flatten());
            self.first_tag = tag + 1;
            t
        } else {
            vec![self.unacked[idx].take().expect("checked")]
        };
        self.trim_settled();
        Ok(taken)
    }

    pub(super) fn settle(&mut self, ctx: &mut Ctx<'_>, s: Settle) -> Result<(), AmqpError> {
        let taken = self.take_unacked(s.tag, s.multiple)?;
        if s.requeue.is_none() {
            self.info.stats.bump(stats::ACK, taken.len() as u64);
        }
        match s.requeue {
            Some(true) => Self::requeue_as(taken, true, ctx.slots),
            _ => {
                for (q, group) in group_by_queue(taken, ctx.slots) {
                    let n = group.len();
                    // Credit goes back once per run of one slot's
                    // deliveries, not once per message (two atomics each).
                    let mut run: Option<(u32, u32)> = None;
                    for u in group {
                        match &mut run {
                            Some((slot, k)) if *slot == u.slot => *k += 1,
                            _ => {
                                if let Some((slot, k)) = run.replace((u.slot, 1)) {
                                    ctx.slots.release(slot, k);
                                }
                            }
                        }
                        if s.requeue.is_some() {
                            q.reject(u.entry.message);
                        } else {
                            q.discard(&u.entry.message);
                        }
                    }
                    if let Some((slot, k)) = run {
                        ctx.slots.release(slot, k);
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

    pub(super) fn settle_or_buffer(&mut self, ctx: &mut Ctx<'_>, s: Settle) -> Result<(), AmqpError> {
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

    pub(super) fn recover(&mut self, requeue: bool, slots: &mut Slots) -> Result<(), AmqpError> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let all: Vec<Unacked> = self.unacked.drain(..).flatten().collect();
        self.first_tag = self.next_tag;
        self.outstanding = 0;
        ChannelInfo::store(&self.info.unacked, 0);
        Self::requeue(all, slots);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_consumer(
        &self,
        ctx: &mut Ctx<'_>,
        queue: &Arc<Queue>,
        tag: &str,
        no_ack: bool,
        exclusive: bool,
        priority: i64,
        timeout_ms: Option<u64>,
    ) -> Arc<Consumer> {
        ctx.slots.add(queue, |slot| {
            Arc::new(Consumer {
                timeout_ms,
                connection: ctx.connection,
                channel: self.id,
                no_ack,
                exclusive,
                priority,
                prefetch: self.consumer_prefetch.into(),
                channel_credit: self.credit.clone(),
                ..Consumer::new(tag.into(), ctx.outbox.clone(), slot)
            })
        })
    }

    pub(super) fn requeue(taken: Vec<Unacked>, slots: &mut Slots) {
        Self::requeue_as(taken, false, slots);
    }

    /// Gives deliveries back to their queues: `rejected` (nack/reject with
    /// requeue) lets a queue with a requeue back-off hold them for a while.
    pub(super) fn requeue_as(taken: Vec<Unacked>, rejected: bool, slots: &mut Slots) {
        for (q, group) in group_by_queue(taken, slots) {
            let entries: Vec<_> = group
                .into_iter()
                .map(|u| {
                    slots.release(u.slot, 1);
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

    pub(super) fn basic_method(&mut self, ctx: &mut Ctx<'_>, m: basic::AMQPMethod) -> Result<(), AmqpError> {
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
                let consumer = self.new_consumer(ctx, &q, &tag, true, false, 0, None);
                if !c.nowait {
                    reply(
                        ctx.out,
                        id,
                        AMQPClass::Basic(M::ConsumeOk(basic::ConsumeOk { consumer_tag: tag.as_str().into() })),
                    );
                }
                q.add_consumer(consumer.clone()).inspect_err(|_| consumer.cancelled.store(true, Ordering::Release))?;
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
                let consumer = self.new_consumer(ctx, &q, &tag, c.no_ack, c.exclusive, priority, timeout_ms);
                // consume-ok must precede the first delivery: deliveries go
                // through the connection's event queue, handled after this.
                let mark = ctx.out.len();
                if !c.nowait {
                    reply(
                        ctx.out,
                        id,
                        AMQPClass::Basic(M::ConsumeOk(basic::ConsumeOk { consumer_tag: tag.as_str().into() })),
                    );
                }
                if let Err(e) = q.add_consumer(consumer.clone()) {
                    // Only the consume-ok: the rest of the turn's output stays.
                    ctx.out.truncate(mark);
                    // Its slot is freed at the next sweep.
                    consumer.cancelled.store(true, Ordering::Release);
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
                            msg.exchange(),
                            msg.routing_key(),
                            remaining,
                        );
                        let mut props = warren_core::queue::delivery_properties(&q, &entry);
                        if self.for_link {
                            props = for_link(props);
                        }
                        frame::write_content_out(ctx.out, id, ctx.frame_max, &props, &msg.body);
                        drop(props);
                        let u = (!g.no_ack).then(|| Unacked { slot: ctx.slots.add_get(q), entry, at_ms: 0 });
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
                self.recover(r.requeue, ctx.slots)?;
                reply(ctx.out, id, AMQPClass::Basic(M::RecoverOk(basic::RecoverOk {})));
                Ok(())
            }
            M::RecoverAsync(r) => self.recover(r.requeue, ctx.slots),
            _ => Err(AmqpError::command_invalid("unexpected basic method")),
        }
    }
}

/// A delivery's properties as a link can read them: made UTF-8 if they
/// are not (see [`Channel::for_link`]).
fn for_link(props: std::borrow::Cow<'_, [u8]>) -> std::borrow::Cow<'_, [u8]> {
    match warren_protocol::content::utf8_properties(&props) {
        Some(std::borrow::Cow::Owned(made)) => std::borrow::Cow::Owned(made),
        _ => props,
    }
}
