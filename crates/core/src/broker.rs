//! The broker: its virtual hosts and users.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use std::path::{Path, PathBuf};

use amq_protocol::protocol::basic::parse_properties;
use warren_store::log::MessageLog;
use warren_store::MessageStore;

use crate::definitions;
use crate::message::{Message, MessageRef};
use crate::vhost::VHost;

pub struct Broker {
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    /// The message log, when the broker stores data (`Broker::open`).
    log: Option<Arc<dyn MessageStore>>,
    /// Directory of the per-vhost definition snapshots.
    definitions_dir: Option<PathBuf>,
    /// user → password. Hashed storage and permissions come with access control.
    users: RwLock<HashMap<String, String>>,
    next_connection: AtomicU64,
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

impl Broker {
    /// A broker with vhost `/` and user guest/guest, as RabbitMQ starts.
    pub fn new() -> Self {
        let b = Broker {
            vhosts: RwLock::new(HashMap::default()),
            log: None,
            definitions_dir: None,
            users: RwLock::new(HashMap::default()),
            next_connection: AtomicU64::new(1),
        };
        b.add_vhost("/");
        b.users.write().insert("guest".into(), "guest".into());
        b
    }

    pub fn add_vhost(&self, name: &str) {
        self.vhosts.write().entry(name.to_owned()).or_insert_with(|| self.make_vhost(name).into_arc());
    }

    fn make_vhost(&self, name: &str) -> VHost {
        match (&self.log, &self.definitions_dir) {
            (Some(log), Some(dir)) => VHost::with_storage(name, log.clone(), definitions::path_for(dir, name)),
            _ => VHost::new(name),
        }
    }

    /// A broker that keeps durable definitions and persistent messages under
    /// `data_dir`, recovering what an earlier run left there.
    pub fn open(data_dir: &Path) -> std::io::Result<Broker> {
        let started = std::time::Instant::now();
        let (log, recovered) = MessageLog::open(&data_dir.join("messages"))?;
        let log: Arc<dyn MessageStore> = Arc::new(log);
        let definitions_dir = data_dir.join("definitions");
        let mut b = Broker::new();
        b.vhosts.write().clear();
        b.log = Some(log.clone());
        b.definitions_dir = Some(definitions_dir.clone());
        b.add_vhost("/");
        for d in definitions::load_all(&definitions_dir) {
            b.add_vhost(&d.vhost);
            if let Some(v) = b.vhost(&d.vhost) {
                v.restore(&d);
            }
        }
        // One Message per stored message, shared by the queues holding it.
        let mut shared: HashMap<u64, MessageRef> = HashMap::default();
        let mut restored = 0usize;
        let mut orphaned = 0usize;
        for (key, entries) in recovered.queues {
            let queue = key.split_once('\0').and_then(|(vh, q)| b.vhost(vh)?.queue(q).ok());
            let Some(queue) = queue else {
                // Its queue is gone: let the messages go so segments can be reclaimed.
                for e in entries {
                    log.ack(&key, e.persisted);
                    orphaned += 1;
                }
                continue;
            };
            let mut items: Vec<(MessageRef, u32, u64)> = Vec::with_capacity(entries.len());
            for e in entries {
                let build = || {
                    let raw = &e.message.properties;
                    let props = if raw[..] == [0, 0] {
                        Default::default()
                    } else {
                        parse_properties(&raw[..]).map(|(_, p)| p).unwrap_or_default()
                    };
                    let m = Message::new(
                        e.message.exchange.as_str().into(),
                        e.message.routing_key.as_str().into(),
                        raw.clone(),
                        props,
                        e.message.body.clone(),
                    );
                    let _ = m.persisted.set(e.persisted);
                    Arc::new(m)
                };
                // Only a message held by several queues needs sharing.
                let m = if Arc::strong_count(&e.message) > 1 {
                    shared.entry(e.persisted.msg_id).or_insert_with(build).clone()
                } else {
                    build()
                };
                items.push((m, e.delivery_count, e.published_at));
            }
            restored += items.len();
            queue.restore(items);
        }
        tracing::info!(
            messages = restored,
            orphaned,
            dropped_records = recovered.dropped_records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered durable state"
        );
        if recovered.dropped_records > 0 {
            tracing::warn!("dropped {} corrupt records from the message log", recovered.dropped_records);
        }
        Ok(b)
    }

    pub fn log(&self) -> Option<&Arc<dyn MessageStore>> {
        self.log.as_ref()
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.read().values().cloned().collect()
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    pub fn authenticate(&self, user: &str, password: &str) -> bool {
        self.users.read().get(user).is_some_and(|p| p == password)
    }

    /// A fresh connection id (used for exclusive queue ownership).
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}
