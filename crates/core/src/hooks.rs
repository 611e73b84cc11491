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
    /// Messages that left a queue rejected, expired, over a length limit
    /// or over their delivery limit, by reason, queue type and whether the
    /// queue had a dead-letter exchange (else they were dropped), for
    /// `rabbitmq_global_messages_dead_lettered_*_total` ([`Hooks::dead_lettered`]).
    dead_lettered: [AtomicU64; 16],
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

    /// One message left a queue for `reason` (see `dead_lettered`).
    pub(crate) fn count_dead(&self, reason: crate::dead_letter::Reason, quorum: bool, has_dlx: bool) {
        self.dead_lettered[dead_index(reason, quorum, has_dlx)].fetch_add(1, Ordering::Relaxed);
    }

    /// Messages that left a queue of that type (quorum or classic) for
    /// `reason`, dead-lettered (`has_dlx`) or dropped, since the start.
    pub fn dead_lettered(&self, reason: crate::dead_letter::Reason, quorum: bool, has_dlx: bool) -> u64 {
        self.dead_lettered[dead_index(reason, quorum, has_dlx)].load(Ordering::Relaxed)
    }

    /// (declared, created, deleted) queues since the start.
    pub fn queue_totals(&self) -> (u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (l(&self.queues_declared), l(&self.queues_created), l(&self.queues_deleted))
    }
}

fn dead_index(reason: crate::dead_letter::Reason, quorum: bool, has_dlx: bool) -> usize {
    use crate::dead_letter::Reason;
    let r = match reason {
        Reason::Rejected => 0,
        Reason::Expired => 1,
        Reason::MaxLen => 2,
        Reason::DeliveryLimit => 3,
    };
    r * 4 + usize::from(quorum) * 2 + usize::from(has_dlx)
}
