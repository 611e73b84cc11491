//! Routing a message from an exchange to queues: the exchange's own
//! bindings, exchange-to-exchange bindings (without loops) and alternate
//! exchanges.

use super::*;

impl VHost {
    /// The queues a message published to `exchange` reaches: its bindings,
    /// exchange-to-exchange bindings followed once each, and the alternate
    /// exchange when nothing else matched. Each queue appears once.
    /// An exchange with deduplication routes a repeated message nowhere:
    /// returns false for such a duplicate (it is not "unroutable").
    pub fn route(&self, exchange: &Exchange, message: &Message, out: &mut Vec<Arc<Queue>>) -> bool {
        exchange.stats.add(stats::PUBLISH_IN, 1);
        if exchange.is_duplicate(message) {
            return false;
        }
        let before = out.len();
        self.route_from(exchange, message, out);
        if out.len() > before {
            exchange.stats.add(stats::PUBLISH_OUT, 1);
        }
        true
    }

    pub(super) fn route_from(&self, exchange: &Exchange, message: &Message, out: &mut Vec<Arc<Queue>>) {
        if exchange.name.is_empty() {
            if let Some(q) = self.queues.read().get(message.routing_key()) {
                out.push(q.clone());
            } else if message.routing_key().starts_with(REPLY_TO) {
                if let Some(q) = self.reply_queues.read().get(message.routing_key()).and_then(Weak::upgrade) {
                    out.push(q);
                }
            }
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
