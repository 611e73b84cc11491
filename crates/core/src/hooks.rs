//! What a broker's parts call back into or count, per broker rather than
//! per process: a cluster node holds a placeholder broker and later the
//! real one, and each has its own. The node sets the callbacks (the
//! replication of definitions saves, the delay timer's wake-up) and reads
//! the totals; the spilling state is shared with every queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::spill::Spill;

/// Called with a definitions file's path and bytes once it is saved.
pub type SaveObserver = Box<dyn Fn(&std::path::Path, &[u8]) + Send + Sync>;

#[derive(Default)]
pub struct Hooks {
    /// Spilling transient messages under memory pressure.
    pub spill: Arc<Spill>,
    /// Told of every definitions save (a cluster leader replicates them).
    pub(crate) on_save: RwLock<Option<SaveObserver>>,
    /// Wakes the delay timer when a message is due earlier than every
    /// other one of its vhost, or is the first whose content waits for the
    /// log to sync.
    on_earlier_due: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Queues declared (`queue.declare`, any outcome), created and deleted
    /// since the start, for `rabbitmq_queues_*_total`.
    pub queues_declared: AtomicU64,
    pub queues_created: AtomicU64,
    pub queues_deleted: AtomicU64,
}

impl Hooks {
    /// Reports every later definitions save to `observe`.
    pub fn on_save(&self, observe: SaveObserver) {
        *self.on_save.write().unwrap_or_else(|e| e.into_inner()) = Some(observe);
    }

    /// Sets the delay timer's wake-up; false if one was set already.
    pub fn on_earlier_due(&self, wake: Box<dyn Fn() + Send + Sync>) -> bool {
        self.on_earlier_due.set(wake).is_ok()
    }

    /// A delayed message became the earliest due (or waits for the log).
    pub(crate) fn earlier_due(&self) {
        if let Some(wake) = self.on_earlier_due.get() {
            wake();
        }
    }

    /// (declared, created, deleted) queues since the start.
    pub fn queue_totals(&self) -> (u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (l(&self.queues_declared), l(&self.queues_created), l(&self.queues_deleted))
    }
}
