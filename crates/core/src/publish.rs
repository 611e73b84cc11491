//! The one way into a vhost for a message, and the one way out by `get`.
//!
//! AMQP's `basic.publish` (a channel, once the content is assembled) and the
//! management API's `POST /api/exchanges/{vhost}/{name}/publish` both come
//! through [`Publisher::publish`], so a message meets the same checks (its
//! `user_id`, internal exchanges, topic permissions), is routed and enqueued
//! the same way (delayed exchanges, returns, queue back-pressure) and is
//! counted in the same statistics whichever door it came in by. `basic.get`
//! and the API's `POST /api/queues/{vhost}/{name}/get` share [`get`] the
//! same way.
//!
//! Permission to write to the exchange is the caller's to check, before the
//! content arrives: a channel caches it per access epoch (a profile showed
//! the check on every publish). Counters go to the publishing channel's
//! [`Counters`]; the management API counts into a one-shot set that it adds
//! to the vhost's closed-channel totals afterwards, as RabbitMQ's API
//! publishes over a channel of its own that then closes.

use std::sync::Arc;

use crate::auth::Access;
use crate::stats::{self, Counters};
use crate::{AmqpError, Broker, Exchange, ExchangeKind, MessageRef, Queue, Result, VHost};
use warren_store::Entry;

/// Who publishes, where, and what it may do.
pub struct Publisher<'a> {
    pub broker: &'a Broker,
    pub vhost: &'a VHost,
    /// The authenticated user.
    pub user: &'a str,
    /// The user has the `impersonator` tag: it may set any `user_id`.
    pub impersonator: bool,
    /// Whether the user has topic permissions in this vhost (without any,
    /// topic publishes skip the check), looked up only for topic exchanges.
    pub topic_permissions: &'a TopicPermissions,
    /// The publishing channel's counters (it is their only writer).
    pub stats: &'a Counters,
    /// A long-lived publisher's (a channel's) own state; without it,
    /// every publish adds to the exchange's shared counters itself and
    /// looks its queues up.
    pub local: Option<&'a PublisherLocal>,
}

/// What a channel keeps between its publishes.
#[derive(Default)]
pub struct PublisherLocal {
    pub tally: ExchangeTally,
    pub route: crate::vhost::RouteCache,
}

/// A publisher's `publish_in` / `publish_out` counts for the exchange it
/// published to last, added to that exchange's shared counters when it
/// publishes to another, on [`ExchangeTally::flush`] (a channel's tick,
/// every 500 ms) and when dropped. The shared counters take a locked
/// add from every publisher: per message, that was 4 % of the broker's
/// samples on the transient path (the add waits for the core's pending
/// stores). The management API's figures lag by at most a tick.
#[derive(Default)]
pub struct ExchangeTally(std::cell::RefCell<Option<(Arc<Exchange>, u64, u64)>>);

impl ExchangeTally {
    /// One message published to `x`, routed to some queue or not.
    pub fn count(&self, x: &Arc<Exchange>, routed: bool) {
        let mut t = self.0.borrow_mut();
        match &mut *t {
            Some((last, n_in, n_out)) if Arc::ptr_eq(last, x) => {
                *n_in += 1;
                *n_out += routed as u64;
            }
            _ => {
                Self::add_to(t.replace((x.clone(), 1, routed as u64)));
            }
        }
    }

    /// Adds what is tallied to the exchange's shared counters.
    pub fn flush(&self) {
        if let Some((x, n_in, n_out)) = self.0.borrow_mut().as_mut() {
            Self::add_to(Some((x.clone(), std::mem::take(n_in), std::mem::take(n_out))));
        }
    }

    fn add_to(t: Option<(Arc<Exchange>, u64, u64)>) {
        if let Some((x, n_in, n_out)) = t {
            for (i, n) in [(stats::PUBLISH_IN, n_in), (stats::PUBLISH_OUT, n_out)] {
                if n > 0 {
                    x.stats.add(i, n);
                }
            }
        }
    }
}

impl Drop for ExchangeTally {
    fn drop(&mut self) {
        Self::add_to(self.0.get_mut().take());
    }
}

/// What became of a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Message-log position that must be synced before the message may be
    /// confirmed (0: nothing to wait for).
    pub pos: u64,
    /// Every queue took it (a length limit with `reject-publish` may not:
    /// the publisher gets a nack).
    pub accepted: bool,
    /// No queue was bound to take it: `mandatory` publishers get it back.
    pub unroutable: bool,
    /// A queue it went to asks its publishers to pause.
    pub pressure: bool,
    /// A delayed exchange holds it until due (routed then, never returned).
    pub delayed: bool,
}

impl Publisher<'_> {
    /// RabbitMQ's `user_id` rule: the property must name the publisher,
    /// unless the publisher is an impersonator.
    pub fn check_user_id(&self, claimed: Option<&str>) -> Result<()> {
        check_user_id(claimed, self.user, self.impersonator)
    }

    /// The exchange named, if a client may publish to it (internal
    /// exchanges take messages only from other exchanges).
    pub fn exchange(&self, name: &str) -> Result<Arc<Exchange>> {
        let x = self.vhost.exchange(name).map_err(|e| e.during(60, 40))?;
        if x.internal {
            return Err(AmqpError::access_refused(format_args!(
                "cannot publish to internal exchange '{name}' in vhost '{}'",
                self.vhost.name
            ))
            .during(60, 40));
        }
        Ok(x)
    }

    /// Routes a message published to its exchange and enqueues it on every
    /// queue it reaches. `queues` is scratch space the caller may reuse
    /// (left empty). The message's `user_id` was checked by the caller
    /// (before any rewrite of its properties).
    pub fn publish(&self, msg: MessageRef, mandatory: bool, queues: &mut Vec<Arc<Queue>>) -> Result<Outcome> {
        let vhost = self.vhost;
        let exchange = msg.exchange();
        let named;
        let x = match vhost.default_exchange().filter(|_| exchange.is_empty()) {
            Some(x) => x,
            None => {
                named = self.exchange(exchange)?;
                &named
            }
        };
        if x.kind == ExchangeKind::Topic && self.topic_permissions.any(self.broker, &vhost.name, self.user) {
            self.broker
                .access()
                .check_topic(&vhost.name, self.user, &x.name, msg.routing_key(), Access::Write)
                .map_err(|e| e.during(60, 40))?;
        }
        msg.check_expiration().map_err(|e| e.during(60, 40))?;
        self.stats.bump(stats::PUBLISH, 1);
        if x.delayed {
            if let Some(delay) = crate::delayed::delay_of(&msg) {
                // Held until due, then routed (`delayed.rs`); like the
                // plugin, never returned.
                let pos = vhost.schedule_delayed(x, msg, delay);
                return Ok(Outcome { pos, accepted: true, unroutable: false, pressure: false, delayed: true });
            }
        }
        queues.clear();
        if let Some(local) = self.local.filter(|_| exchange.is_empty()) {
            if let Some(q) = vhost.cached_default(&local.route, msg.routing_key()) {
                // A publisher repeating its routing key: no reference
                // count taken on the queue.
                local.tally.count(x, true);
                let pressure = q.under_pressure();
                let (pos, accepted) = vhost.enqueue_one(msg, &q);
                return Ok(Outcome { pos, accepted, unroutable: false, pressure, delayed: false });
            }
        }
        let fresh = match self.local {
            Some(local) => {
                // The default exchange has no deduplication: always fresh.
                let fresh = if exchange.is_empty() {
                    vhost.route_default(&local.route, &msg, queues);
                    true
                } else {
                    vhost.route_uncounted(x, &msg, queues)
                };
                local.tally.count(x, !queues.is_empty());
                fresh
            }
            None => vhost.route(x, &msg, queues),
        };
        let unroutable = queues.is_empty() && fresh;
        if unroutable {
            self.stats.bump(if mandatory { stats::RETURN_UNROUTABLE } else { stats::DROP_UNROUTABLE }, 1);
        }
        let pressure = queues.iter().any(|q| q.under_pressure());
        let (pos, accepted) = vhost.enqueue(msg, queues);
        Ok(Outcome { pos, accepted, unroutable, pressure, delayed: false })
    }
}

/// RabbitMQ's `user_id` rule: the property must name the publisher (`user`),
/// unless the publisher is an impersonator.
pub fn check_user_id(claimed: Option<&str>, user: &str, impersonator: bool) -> Result<()> {
    match claimed {
        Some(claimed) if claimed != user && !impersonator => Err(AmqpError::precondition(format_args!(
            "user_id property set to '{claimed}' but authenticated user was '{user}'"
        ))
        .during(60, 40)),
        _ => Ok(()),
    }
}

/// Whether a user has topic permissions in a vhost, cached per access
/// epoch (a channel keeps one: the lookup takes the access lock).
#[derive(Default)]
pub struct TopicPermissions(std::cell::Cell<Option<(u64, bool)>>);

impl TopicPermissions {
    pub fn any(&self, broker: &Broker, vhost: &str, user: &str) -> bool {
        let epoch = broker.access_epoch();
        match self.0.get() {
            Some((e, any)) if e == epoch => any,
            _ => {
                let any = broker.access().has_topic_permissions(vhost, user);
                self.0.set(Some((epoch, any)));
                any
            }
        }
    }
}

/// `basic.get` on a queue, counted in the getting channel's statistics:
/// the message and how many remain, or None (`get-empty`).
pub fn get(queue: &Arc<Queue>, no_ack: bool, stats: &Counters) -> Option<(Entry<MessageRef>, u32)> {
    let got = queue.get(no_ack);
    match &got {
        None => stats.bump(stats::GET_EMPTY, 1),
        Some((entry, _)) => {
            stats.bump(if no_ack { stats::GET_NO_ACK } else { stats::GET }, 1);
            if entry.redelivered {
                stats.bump(stats::REDELIVER, 1);
            }
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::FieldTable;

    fn exchange(name: &str) -> Arc<Exchange> {
        Arc::new(Exchange::new(name, ExchangeKind::Direct, false, false, false, FieldTable::default()))
    }

    fn counts(x: &Exchange) -> (u64, u64) {
        let c = x.stats.snapshot();
        (c[stats::PUBLISH_IN], c[stats::PUBLISH_OUT])
    }

    #[test]
    fn a_tally_reaches_its_exchanges_on_a_change_a_flush_and_a_drop() {
        let (a, b) = (exchange("a"), exchange("b"));
        let tally = ExchangeTally::default();
        tally.count(&a, true);
        tally.count(&a, false);
        tally.count(&a, true);
        assert_eq!(counts(&a), (0, 0), "tallied, not yet added");
        tally.count(&b, false);
        assert_eq!(counts(&a), (3, 2), "added when the publisher moved on");
        tally.flush();
        assert_eq!(counts(&b), (1, 0));
        tally.flush();
        assert_eq!(counts(&b), (1, 0), "a flush adds only what came since");
        tally.count(&b, true);
        drop(tally);
        assert_eq!(counts(&b), (2, 1), "added when dropped");
        assert_eq!(counts(&a), (3, 2));
    }
}
