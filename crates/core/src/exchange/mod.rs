//! Exchanges and their bindings. Routing for each exchange type lives in its
//! own file; this one holds what they share.

mod headers;
mod topic;

use foldhash::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use warren_protocol::{AmqpError, FieldTable};

use crate::message::Message;
use crate::queue::Queue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Result<Self, AmqpError> {
        match s {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            other => Err(AmqpError::command_invalid(format_args!("unknown exchange type '{other}'"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    /// Exchange-to-exchange binding, by name: resolved at routing time so
    /// that cycles of bindings cannot form reference cycles.
    Exchange(String),
}

impl Destination {
    fn same(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Default)]
struct Bindings {
    all: Vec<Binding>,
    /// Direct exchanges only: routing key → destinations, for O(1) routing.
    by_key: HashMap<String, Vec<Destination>>,
}

pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    bindings: RwLock<Bindings>,
    /// The policy that applies (its name, and its `alternate-exchange`).
    pub policy: RwLock<Option<(String, Option<String>)>>,
    /// Declared as `x-delayed-message` (`kind` is then its `x-delayed-type`):
    /// messages with an `x-delay` header wait in the vhost's index.
    pub delayed: bool,
    /// `x-message-deduplication` (`dedup.rs`): the values seen lately.
    pub dedup: Option<parking_lot::Mutex<crate::dedup::Dedup>>,
    /// Declared with the deduplication plugin's type (routes as fanout).
    dedup_type: bool,
    /// `publish_in` / `publish_out`, shared by every publisher.
    pub stats: crate::stats::Counters,
    pub rates: crate::stats::Rates,
}

impl Exchange {
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        Exchange {
            name: name.to_owned(),
            kind,
            durable,
            auto_delete,
            internal,
            dedup: crate::dedup::Dedup::from_arguments(&arguments, false).map(parking_lot::Mutex::new),
            arguments,
            bindings: RwLock::new(Bindings::default()),
            policy: Default::default(),
            delayed: false,
            dedup_type: false,
            stats: Default::default(),
            rates: Default::default(),
        }
    }

    /// An exchange declared with type `kind`: one of the four, or
    /// `x-delayed-message` (`delayed.rs`) or `x-message-deduplication`
    /// (`dedup.rs`). Checks the arguments those act on.
    pub fn declared(
        name: &str,
        kind: &str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
        vhost: &str,
    ) -> Result<Self, AmqpError> {
        crate::arguments::validate_exchange_args(&arguments, name, vhost)?;
        if kind == crate::dedup::TYPE {
            let mut x = Exchange::new(name, ExchangeKind::Fanout, durable, auto_delete, internal, arguments);
            x.dedup = crate::dedup::Dedup::from_arguments(&x.arguments, true).map(parking_lot::Mutex::new);
            x.dedup_type = true;
            return Ok(x);
        }
        let (kind, delayed) = crate::delayed::resolve_kind(kind, &arguments)?;
        let mut x = Exchange::new(name, kind, durable, auto_delete, internal, arguments);
        x.delayed = delayed;
        Ok(x)
    }

    /// The type a client declared: `x-delayed-message`,
    /// `x-message-deduplication` or the routing kind.
    pub fn type_name(&self) -> &'static str {
        if self.delayed {
            crate::delayed::TYPE
        } else if self.dedup_type {
            crate::dedup::TYPE
        } else {
            self.kind.as_str()
        }
    }

    /// Whether `message` repeats a deduplication value this exchange still
    /// remembers (then it is routed nowhere).
    pub fn is_duplicate(&self, message: &Message) -> bool {
        self.dedup.as_ref().is_some_and(|d| d.lock().is_duplicate(message, crate::now_ms()))
    }

    /// Name of the alternate exchange, if the `alternate-exchange` argument is set.
    /// The alternate exchange: the argument, else the policy's.
    pub fn alternate_exchange(&self) -> Option<String> {
        match self.arguments.inner().get("alternate-exchange") {
            Some(warren_protocol::AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            Some(warren_protocol::AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => self.policy.read().as_ref().and_then(|(_, ae)| ae.clone()),
        }
    }

    /// Adds a binding; binding twice is a no-op, as in RabbitMQ.
    pub fn bind(&self, binding: Binding) {
        let mut b = self.bindings.write();
        let exists = b.all.iter().any(|x| {
            x.destination.same(&binding.destination)
                && x.routing_key == binding.routing_key
                && x.arguments == binding.arguments
        });
        if exists {
            return;
        }
        if self.kind == ExchangeKind::Direct {
            let dests = b.by_key.entry(binding.routing_key.clone()).or_default();
            if !dests.iter().any(|d| d.same(&binding.destination)) {
                dests.push(binding.destination.clone());
            }
        }
        b.all.push(binding);
    }

    /// Removes a binding. Returns whether the exchange has no bindings left.
    pub fn unbind(&self, destination: &Destination, routing_key: &str, arguments: &FieldTable) -> bool {
        let mut b = self.bindings.write();
        b.all.retain(|x| {
            !(x.destination.same(destination) && x.routing_key == routing_key && &x.arguments == arguments)
        });
        Self::reindex(&mut b, self.kind);
        b.all.is_empty()
    }

    /// Removes every binding to `destination`. Returns (removed any, now empty).
    pub fn unbind_all(&self, destination: &Destination) -> (bool, bool) {
        let mut b = self.bindings.write();
        let before = b.all.len();
        b.all.retain(|x| !x.destination.same(destination));
        let removed = b.all.len() != before;
        if removed {
            Self::reindex(&mut b, self.kind);
        }
        (removed, b.all.is_empty())
    }

    fn reindex(b: &mut Bindings, kind: ExchangeKind) {
        if kind != ExchangeKind::Direct {
            return;
        }
        let mut by_key: HashMap<String, Vec<Destination>> = HashMap::default();
        for x in &b.all {
            let dests = by_key.entry(x.routing_key.clone()).or_default();
            if !dests.iter().any(|d| d.same(&x.destination)) {
                dests.push(x.destination.clone());
            }
        }
        b.by_key = by_key;
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().all.is_empty()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
    }

    /// Destinations this exchange's own bindings select for `message`.
    pub fn route(&self, message: &Message, out: &mut Vec<Destination>) {
        let b = self.bindings.read();
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(d) = b.by_key.get(message.routing_key()) {
                    out.extend(d.iter().cloned());
                }
            }
            ExchangeKind::Fanout => out.extend(b.all.iter().map(|x| x.destination.clone())),
            ExchangeKind::Topic => {
                for x in &b.all {
                    if topic::matches(&x.routing_key, message.routing_key()) {
                        out.push(x.destination.clone());
                    }
                }
            }
            ExchangeKind::Headers => {
                let headers = message.headers().unwrap_or_default();
                for x in &b.all {
                    if headers::matches(&x.arguments, &headers) {
                        out.push(x.destination.clone());
                    }
                }
            }
        }
    }
}
