//! Routing a message from an exchange to queues: the exchange's own
//! bindings, exchange-to-exchange bindings (without loops) and alternate
//! exchanges.

use super::*;

/// A publisher's last route through the default exchange (its routing
/// key and the queue of that name), good while the vhost's set of queues
/// has not changed since (`queues_gen`): a publisher that repeats its
/// routing key skips the lookup and the read lock on the queue map (two
/// locked instructions and a hash a message). Direct reply-to names are
/// never cached. Used on one thread (a channel's).
#[derive(Default)]
pub struct RouteCache(std::cell::RefCell<Option<CachedRoute>>);

/// The vhost's `queues_gen` when looked up, the routing key, its queue.
type CachedRoute = (u64, Box<str>, Arc<Queue>);

impl VHost {
    /// The queue `cache` holds for `key`, if the vhost's queues have not
    /// changed since it was looked up. Borrowed: the caller enqueues into
    /// it without taking a reference count (two locked instructions a
    /// message).
    pub fn cached_default<'c>(&self, cache: &'c RouteCache, key: &str) -> Option<std::cell::Ref<'c, Arc<Queue>>> {
        let gen = self.queues_gen.load(std::sync::atomic::Ordering::Acquire);
        std::cell::Ref::filter_map(cache.0.borrow(), |c| match c {
            Some((g, k, q)) if *g == gen && **k == *key => Some(q),
            _ => None,
        })
        .ok()
    }

    /// Routes through the default exchange (to the queue named by the
    /// routing key, or a direct reply-to pseudo-queue), remembering a
    /// queue found in `cache` (see [`VHost::cached_default`]).
    pub fn route_default(&self, cache: &RouteCache, message: &Message, out: &mut Vec<Arc<Queue>>) {
        let key = message.routing_key();
        // Read before the lookup: a change after it makes the next
        // publish look again.
        let gen = self.queues_gen.load(std::sync::atomic::Ordering::Acquire);
        let found = self.queues.read().get(key).cloned();
        match found {
            Some(q) => {
                *cache.0.borrow_mut() = Some((gen, key.into(), q.clone()));
                out.push(q);
            }
            None => out.extend(self.reply_queue(key)),
        }
    }

    /// The direct reply-to pseudo-queue a routing key names, if any.
    fn reply_queue(&self, key: &str) -> Option<Arc<Queue>> {
        if !key.starts_with(REPLY_TO) {
            return None;
        }
        self.reply_queues.read().get(key).and_then(Weak::upgrade)
    }

    /// The queues a message published to `exchange` reaches: its bindings,
    /// exchange-to-exchange bindings followed once each, and the alternate
    /// exchange when nothing else matched. Each queue appears once.
    /// An exchange with deduplication routes a repeated message nowhere:
    /// returns false for such a duplicate (it is not "unroutable").
    pub fn route(&self, exchange: &Exchange, message: &Message, out: &mut Vec<Arc<Queue>>) -> bool {
        exchange.stats.add(stats::PUBLISH_IN, 1);
        let before = out.len();
        let fresh = self.route_uncounted(exchange, message, out);
        if out.len() > before {
            exchange.stats.add(stats::PUBLISH_OUT, 1);
        }
        fresh
    }

    /// [`VHost::route`] without counting into the exchange's shared
    /// counters: the caller tallies them (`publish::ExchangeTally`).
    pub fn route_uncounted(&self, exchange: &Exchange, message: &Message, out: &mut Vec<Arc<Queue>>) -> bool {
        if exchange.is_duplicate(message) {
            return false;
        }
        self.route_from(exchange, message, out);
        true
    }

    pub(super) fn route_from(&self, exchange: &Exchange, message: &Message, out: &mut Vec<Arc<Queue>>) {
        if exchange.name.is_empty() {
            let found = self.queues.read().get(message.routing_key()).cloned();
            out.extend(found.or_else(|| self.reply_queue(message.routing_key())));
            return;
        }
        let mut dests = Vec::new();
        exchange.route(message, &mut dests);
        if dests.is_empty() {
            if let Some(ae) = exchange.alternate_exchange() {
                if let Ok(x) = self.exchange(&ae) {
                    let mut visited = vec![exchange.name.clone()];
                    self.route_via(&x, message, out, &mut visited);
                }
            }
            return;
        }
        let mut visited = vec![exchange.name.clone()];
        self.collect(dests, message, out, &mut visited);
    }

    pub(super) fn route_via(
        &self,
        x: &Exchange,
        message: &Message,
        out: &mut Vec<Arc<Queue>>,
        visited: &mut Vec<String>,
    ) {
        if visited.contains(&x.name) {
            return;
        }
        visited.push(x.name.clone());
        if x.is_duplicate(message) {
            return;
        }
        let mut dests = Vec::new();
        x.route(message, &mut dests);
        if dests.is_empty() {
            if let Some(ae) = x.alternate_exchange() {
                if let Ok(ax) = self.exchange(&ae) {
                    self.route_via(&ax, message, out, visited);
                }
            }
            return;
        }
        self.collect(dests, message, out, visited);
    }

    pub(super) fn collect(
        &self,
        dests: Vec<Destination>,
        message: &Message,
        out: &mut Vec<Arc<Queue>>,
        visited: &mut Vec<String>,
    ) {
        for d in dests {
            match d {
                Destination::Queue(q) => {
                    if !out.iter().any(|o| Arc::ptr_eq(o, &q)) {
                        out.push(q);
                    }
                }
                Destination::Exchange(name) => {
                    if let Ok(x) = self.exchange(&name) {
                        self.route_via(&x, message, out, visited);
                    }
                }
            }
        }
    }
}
