//! A vhost's durable definitions: the snapshot saved (crash-safely, by
//! `definitions.rs`) when a durable exchange, queue or binding changes, its
//! restore at start, and the export for the management API and `warren ctl`.

use super::*;

impl VHost {
    /// A vhost whose durable definitions and messages are stored.
    pub fn with_storage(
        name: &str,
        log: Arc<dyn MessageStore>,
        definitions: PathBuf,
        hooks: Arc<crate::hooks::Hooks>,
    ) -> Self {
        VHost { log: Some(log), definitions: Some(definitions), ..Self::with_hooks(name, hooks) }
    }

    /// The durable part of this vhost, as saved.
    pub fn snapshot(&self) -> Definitions {
        let exchanges = self.exchanges.read();
        let queues = self.queues.read();
        let durable_queue = |q: &Queue| q.durable && q.exclusive_owner.is_none();
        let mut d =
            Definitions { version: definitions::FORMAT_VERSION, vhost: self.name.clone(), ..Default::default() };
        for x in exchanges.values().filter(|x| x.durable) {
            if !PREDECLARED.iter().any(|(n, _)| *n == x.name) {
                d.exchanges.push(ExchangeDef {
                    name: x.name.clone(),
                    kind: x.type_name().to_owned(),
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: definitions::encode_table(&x.arguments),
                });
            }
            for b in x.bindings() {
                let (destination, destination_type) = match &b.destination {
                    Destination::Queue(q) if durable_queue(q) => (q.name.clone(), "queue"),
                    Destination::Exchange(n) if exchanges.get(n).is_some_and(|e| e.durable) => (n.clone(), "exchange"),
                    _ => continue,
                };
                d.bindings.push(BindingDef {
                    source: x.name.clone(),
                    destination,
                    destination_type: destination_type.to_owned(),
                    routing_key: b.routing_key.clone(),
                    arguments: definitions::encode_table(&b.arguments),
                });
            }
        }
        for q in queues.values().filter(|q| durable_queue(q)) {
            d.queues.push(QueueDef {
                name: q.name.clone(),
                auto_delete: q.auto_delete,
                arguments: definitions::encode_table(&q.arguments),
            });
        }
        d
    }

    /// This vhost's durable exchanges, queues and bindings in RabbitMQ's
    /// definitions-export shape (`export_definitions`).
    pub fn export(&self) -> (Vec<serde_json::Value>, Vec<serde_json::Value>, Vec<serde_json::Value>) {
        use serde_json::json;
        let d = self.snapshot();
        let args = |hex: &str| crate::arguments::table_to_json(&definitions::decode_table(hex).unwrap_or_default());
        let exchanges = d
            .exchanges
            .iter()
            .map(|x| {
                json!({"name": x.name, "vhost": self.name, "type": x.kind, "durable": true,
                "auto_delete": x.auto_delete, "internal": x.internal, "arguments": args(&x.arguments)})
            })
            .collect();
        let queues = d
            .queues
            .iter()
            .map(|q| {
                json!({"name": q.name, "vhost": self.name, "durable": true, "auto_delete": q.auto_delete,
                "arguments": args(&q.arguments)})
            })
            .collect();
        let bindings = d
            .bindings
            .iter()
            .filter(|b| !b.source.is_empty())
            .map(|b| {
                json!({"source": b.source, "vhost": self.name, "destination": b.destination,
                "destination_type": b.destination_type, "routing_key": b.routing_key, "arguments": args(&b.arguments)})
            })
            .collect();
        (exchanges, queues, bindings)
    }

    /// Saves the durable definitions if `touched_durable`. A failed save is
    /// logged; the change stays in effect in memory.
    pub(super) fn persist(&self, touched_durable: bool) {
        let Some(path) = &self.definitions else { return };
        if !touched_durable || self.is_deleted() {
            return;
        }
        let _guard = self.save_lock.lock();
        if let Err(e) = definitions::save(&self.hooks, path, &self.snapshot()) {
            tracing::error!(vhost = %self.name, error = %e, "cannot save definitions");
        }
    }

    /// Recreates saved definitions (startup only).
    pub fn restore(&self, d: &Definitions) {
        for x in &d.exchanges {
            let args = definitions::decode_table(&x.arguments).unwrap_or_default();
            if let Ok(ex) = Exchange::declared(&x.name, &x.kind, true, x.auto_delete, x.internal, args, &self.name) {
                let ex = Arc::new(ex);
                self.apply_exchange_policy(&ex);
                self.exchanges.write().insert(x.name.clone(), ex);
            }
        }
        for q in &d.queues {
            let args = definitions::decode_table(&q.arguments).unwrap_or_default();
            self.queues
                .write()
                .insert(q.name.clone(), Arc::new(self.new_queue(&q.name, true, None, q.auto_delete, args)));
        }
        for b in &d.bindings {
            let args = definitions::decode_table(&b.arguments).unwrap_or_default();
            let Ok(source) = self.exchange(&b.source) else { continue };
            let destination = match b.destination_type.as_str() {
                "queue" => match self.queue(&b.destination) {
                    Ok(q) => Destination::Queue(q),
                    Err(_) => continue,
                },
                _ => Destination::Exchange(b.destination.clone()),
            };
            source.bind(Binding { destination, routing_key: b.routing_key.clone(), arguments: args });
        }
    }
}
