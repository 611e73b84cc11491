//! The broker: its virtual hosts and users.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::vhost::VHost;

pub struct Broker {
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
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
            users: RwLock::new(HashMap::default()),
            next_connection: AtomicU64::new(1),
        };
        b.add_vhost("/");
        b.users.write().insert("guest".into(), "guest".into());
        b
    }

    pub fn add_vhost(&self, name: &str) {
        self.vhosts.write().entry(name.to_owned()).or_insert_with(|| Arc::new(VHost::new(name)));
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
