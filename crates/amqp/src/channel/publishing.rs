//! A channel's publishing side: `basic.publish` and its content frames
//! assembled into a message, handed to core's publish path
//! (`warren_core::publish`), returns, publisher confirms (sent in publish
//! order once the message log is synced) and transactions.

use super::*;
use warren_core::message::Spare;
use warren_core::names::Names;
use warren_core::publish::{PublisherLocal, TopicPermissions};

/// This channel's side of core's publish path (`warren_core::publish`).
pub(super) fn publisher<'x>(
    ctx: &'x Ctx<'_>,
    topic_permissions: &'x TopicPermissions,
    stats: &'x Counters,
    local: &'x PublisherLocal,
) -> Publisher<'x> {
    Publisher {
        broker: ctx.broker,
        vhost: ctx.vhost,
        user: ctx.user,
        impersonator: ctx.impersonator,
        topic_permissions,
        stats,
        local: Some(local),
    }
}

/// A `basic.publish` whose content is coming. Its exchange and routing
/// key are the channel's `last_exchange` and `last_routing_key`.
pub(super) struct Publish {
    pub(super) mandatory: bool,
}

/// Makes `last` the shared string `s`, reusing it when it is the same
/// (publishers repeat exchange and routing key: no allocation then).
#[inline]
pub(super) fn intern(last: &mut Arc<str>, s: &str) {
    if &**last != s {
        *last = Arc::from(s);
    }
}

impl Channel {
    /// `basic.publish`: its content follows.
    pub fn on_publish(&mut self, ctx: &mut Ctx<'_>, p: PublishArgs<'_>) -> Result<(), AmqpError> {
        // The names this channel used last are valid UTF-8: only new ones
        // are checked (malformed ones are a frame error, closing or not).
        if p.exchange != self.last_exchange.as_bytes() || p.routing_key != self.last_routing_key.as_bytes() {
            let (exchange, routing_key) = p.names()?;
            intern(&mut self.last_exchange, exchange);
            intern(&mut self.last_routing_key, routing_key);
            self.last_names = Names::of(exchange, routing_key);
        }
        if self.closing {
            return Ok(());
        }
        if !self.assembler.is_idle() {
            return Err(self.assembler.expected());
        }
        if p.immediate {
            return Err(AmqpError::not_implemented("immediate=true").during(60, 40));
        }
        let exchange = &self.last_exchange;
        let epoch = ctx.broker.access_epoch();
        if !self.writable.as_ref().is_some_and(|(e, x)| *e == epoch && Arc::ptr_eq(x, exchange)) {
            ctx.check(Resource::Exchange, exchange, Access::Write).map_err(|e| e.during(60, 40))?;
            self.writable = Some((epoch, exchange.clone()));
        }
        self.publish = Some(Publish { mandatory: p.mandatory });
        self.assembler.start();
        Ok(())
    }

    pub fn on_header(&mut self, ctx: &mut Ctx<'_>, payload: &[u8]) -> Result<(), AmqpError> {
        if self.closing {
            return Ok(());
        }
        if let Some(content) = self.assembler.header(payload, ctx.max_message_size)? {
            self.published(ctx, content)?;
        }
        Ok(())
    }

    pub fn on_body(
        &mut self,
        ctx: &mut Ctx<'_>,
        payload: warren_protocol::frame::Payload<'_>,
    ) -> Result<(), AmqpError> {
        if self.closing {
            return Ok(());
        }
        if let Some(content) = self.assembler.body(payload)? {
            self.published(ctx, content)?;
        }
        Ok(())
    }

    pub(super) fn published(&mut self, ctx: &mut Ctx<'_>, content: Content) -> Result<(), AmqpError> {
        let p = self.publish.take().expect("content follows a basic.publish");
        let mut props_raw = content.header.properties_raw;
        let view = warren_protocol::content::scan_past_headers(&props_raw)
            .ok_or_else(|| AmqpError::frame_error("cannot decode content header properties"))?;
        warren_core::publish::check_user_id(view.user_id, ctx.user, ctx.impersonator)?;
        let direct_reply = view.reply_to == Some(REPLY_TO);
        let mut kept: warren_core::message::Props = view.into();
        if direct_reply {
            // Direct reply-to: name this channel's reply queue instead.
            let Some((q, _)) = &self.reply else {
                return Err(AmqpError::precondition("fast reply consumer does not exist").during(60, 40));
            };
            let props = warren_protocol::content::decode_properties(&props_raw)
                .unwrap_or_default()
                .with_reply_to(q.name.as_str().into());
            props_raw = warren_protocol::content::encode_properties(&props);
            kept = props.into();
        }
        // Short names are copied, long ones made once for a run of
        // messages (see `Names`).
        let spare = self.spare.take().unwrap_or_default();
        let msg = spare.fill(self.last_names.clone(), props_raw, kept, content.body);
        if self.mode == Mode::Tx {
            // Checked now, as RabbitMQ does; routed on commit.
            msg.check_expiration().map_err(|e| e.during(60, 40))?;
            publisher(ctx, &self.topic_permissions, &self.info.stats, &self.publishing).exchange(msg.exchange())?;
            self.tx_publishes.push((p, msg));
            return Ok(());
        }
        let (pos, accepted) = self.route(ctx, p.mandatory, msg)?;
        self.spare = Some(Spare::new());
        if self.mode == Mode::Confirm {
            self.publish_seq += 1;
            if accepted {
                self.confirm(self.publish_seq, pos, ctx.synced.get());
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
    pub(super) fn route(
        &mut self,
        ctx: &mut Ctx<'_>,
        mandatory: bool,
        msg: MessageRef,
    ) -> Result<(u64, bool), AmqpError> {
        let mut queues = std::mem::take(&mut self.routed);
        let returned = mandatory.then(|| msg.clone());
        let outcome = publisher(ctx, &self.topic_permissions, &self.info.stats, &self.publishing).publish(
            msg,
            mandatory,
            &mut queues,
        );
        self.routed = queues;
        let outcome = outcome?;
        if let Some(msg) = returned.filter(|_| outcome.unroutable) {
            frame::write_return(ctx.out, self.id, 312, "NO_ROUTE", msg.exchange(), msg.routing_key());
            frame::write_content_out(ctx.out, self.id, ctx.frame_max, &msg.properties_raw, &msg.body);
        }
        *ctx.pressure |= outcome.pressure;
        Ok((outcome.pos, outcome.accepted))
    }

    /// Adds this channel's tallied exchange counts to the exchanges, and
    /// shows how many messages it received in confirm mode.
    pub fn flush_stats(&self) {
        self.publishing.tally.flush();
        self.info.received_confirm.store(self.publish_seq, std::sync::atomic::Ordering::Relaxed);
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

    pub(super) fn write_pending_acks(&mut self, out: &mut BytesMut) {
        if self.confirm_to != 0 {
            frame::write_confirm(out, self.id, self.confirm_to, self.confirm_to > self.confirm_from, true);
            self.info.stats.bump(stats::CONFIRM, self.confirm_to - self.confirm_from + 1);
            self.confirm_from = 0;
            self.confirm_to = 0;
        }
    }

    /// Nacks publish `seq`, after every confirm before it.
    pub(super) fn nack(&mut self, out: &mut BytesMut, seq: u64) {
        if !self.held.is_empty() {
            self.held.push_back((0, Held::Nack(seq)));
            return;
        }
        self.write_pending_acks(out);
        frame::write_confirm(out, self.id, seq, false, false);
    }

    /// Confirms publish `seq` once the log is synced to `pos` (0: nothing
    /// to wait for). Confirms leave in publish order.
    pub(super) fn confirm(&mut self, seq: u64, pos: u64, synced: u64) {
        if pos > synced || !self.held.is_empty() {
            self.held.push_back((pos, Held::Confirm(seq)));
            return;
        }
        if self.confirm_to == 0 {
            self.confirm_from = seq;
        }
        self.confirm_to = seq;
    }

    pub(super) fn tx_method(&mut self, ctx: &mut Ctx<'_>, m: tx::AMQPMethod) -> Result<(), AmqpError> {
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
                    pos = pos.max(self.route(ctx, p.mandatory, msg)?.0);
                }
                for s in std::mem::take(&mut self.tx_settles) {
                    // A tag settled twice in one transaction is gone by now.
                    match self.settle(ctx, s) {
                        Ok(()) => {}
                        Err(e) if e.code() == 406 => {}
                        Err(e) => return Err(e),
                    }
                }
                if pos > ctx.synced.get() {
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
