//! What runs beside the listeners once a broker is open: the resource
//! alarms (memory and disk, as RabbitMQ raises them, with the heap trims
//! that let memory go back) and the broker's timers (message expiry,
//! delayed delivery).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};
use warren_core::Broker;

/// What runs once a broker is open: resource alarms and the timers.
pub struct Background {
    memory_limit: Option<u64>,
    paging_at: Option<u64>,
    disk: DiskWatch,
    alarm: watch::Sender<Option<String>>,
}

impl Background {
    /// The alarms and timers for a broker on `data_dir` (its filesystem is
    /// the one the disk free limit is measured on), raising the alarm on
    /// `alarm`; `disk_free_limit` may change while they run.
    pub fn new(
        config: &crate::Config,
        data_dir: std::path::PathBuf,
        disk_free_limit: Arc<AtomicU64>,
        alarm: watch::Sender<Option<String>>,
    ) -> Background {
        let memory_limit = config.memory_limit();
        let paging_at = memory_limit.map(|l| (l as f64 * config.memory_paging_ratio) as u64);
        let disk = DiskWatch { dir: data_dir, limit: disk_free_limit };
        Background { memory_limit, paging_at, disk, alarm }
    }

    /// Starts them, for `broker`.
    pub fn start(self, broker: Arc<Broker>) {
        tokio::spawn(alarms(broker.clone(), self.memory_limit, self.paging_at, self.disk, self.alarm));
        tokio::spawn(expiry_timer(broker.clone()));
        tokio::spawn(delay_timer(broker));
    }
}

/// How often queues drop expired messages at their head (so that a queue of
/// expired messages shrinks without a consumer, as RabbitMQ's TTL timers do)
/// and unused queues with `x-expires` are deleted.
const EXPIRY_INTERVAL: Duration = Duration::from_millis(100);

/// Releases delayed messages when due: one timer for every delayed message
/// of every vhost, asleep until the earliest is due (woken when a message
/// due earlier still is scheduled). While a logged message's content waits
/// for the log to sync, it looks every `SETTLE_POLL` to let go of it.
async fn delay_timer(broker: Arc<Broker>) {
    const SETTLE_POLL: Duration = Duration::from_millis(10);
    let earlier = Arc::new(tokio::sync::Notify::new());
    let wake = earlier.clone();
    // Without the wake-up (already taken in this process), poll instead.
    let woken = broker.hooks.on_earlier_due(Box::new(move || wake.notify_one()));
    loop {
        let now = warren_core::now_ms();
        let mut next = None::<u64>;
        let mut settling = false;
        for vhost in broker.vhosts() {
            vhost.release_delayed(now);
            next = next.into_iter().chain(vhost.delayed.next_due()).min();
            settling |= vhost.delayed.has_unsynced();
        }
        let mut wait = next.map(|due| Duration::from_millis(due.saturating_sub(warren_core::now_ms())));
        if settling || !woken {
            wait = Some(wait.map_or(SETTLE_POLL, |w| w.min(SETTLE_POLL)));
        }
        match wait {
            // More due now than one call releases: go on after a yield.
            Some(Duration::ZERO) => tokio::task::yield_now().await,
            Some(wait) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = earlier.notified() => {}
                }
            }
            None => earlier.notified().await,
        }
    }
}

async fn expiry_timer(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for vhost in broker.vhosts() {
            vhost.tick();
        }
    }
}

/// The free-space check behind the disk alarm.
struct DiskWatch {
    /// The data directory: its filesystem is the one measured.
    dir: std::path::PathBuf,
    limit: Arc<AtomicU64>,
}

/// How often the heap is trimmed (`heap::trim`) while the memory alarm
/// holds or queues are spilling (so that the alarm clears within a second
/// of a backlog going away, and read-back bodies do not pile up), and
/// otherwise (memory freed by closed connections goes back too). A trim of
/// a small heap takes well under a millisecond.
const TRIM_TICKS_ALARMED: u32 = 5;
const TRIM_TICKS: u32 = 100;

/// Ticks before each regular trim at which the runtime workers are asked to
/// give their own heaps' free pages back (`heap::release_thread_cache`):
/// the trim collects only the calling thread's heap and those of exited
/// threads.
const RELEASE_LEAD_TICKS: u32 = 5;

/// How often free disk space is measured (RabbitMQ: at least every 10 s);
/// a changed limit is measured against at once.
const DISK_CHECK_TICKS: u32 = 20;

/// Resource alarms, as RabbitMQ raises them. The disk alarm holds while the
/// message log fails to write (disk full or an I/O error) or free space on
/// the data directory's filesystem is below the disk free limit; the memory
/// alarm while the broker's RSS is above `memory_limit`. Connections send
/// `connection.blocked` ("low on disk" / "low on memory") and stop reading
/// from publishers meanwhile, then `connection.unblocked` when it clears;
/// consumers go on being served (which is what frees memory).
async fn alarms(
    broker: Arc<Broker>,
    memory_limit: Option<u64>,
    paging_at: Option<u64>,
    disk: DiskWatch,
    alarm: watch::Sender<Option<String>>,
) {
    let log = broker.log().cloned();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0;
    let mut checked_limit = None;
    let mut low_on_disk = false;
    loop {
        tick.tick().await;
        let limit = disk.limit.load(Ordering::Relaxed);
        if ticks % DISK_CHECK_TICKS == 0 || checked_limit != Some(limit) {
            let free = crate::resources::free_disk_bytes(&disk.dir);
            let low = free.is_some_and(|f| f < limit);
            if low != low_on_disk {
                match low {
                    true => warn!(free, limit, "free disk space is below the disk free limit"),
                    false => info!(free, limit, "free disk space is above the disk free limit again"),
                }
            }
            low_on_disk = low;
            checked_limit = Some(limit);
        }
        ticks = ticks.wrapping_add(1);
        let disk = low_on_disk || log.as_ref().is_some_and(|l| l.is_failed());
        // Above the paging threshold, queues spill transient messages.
        let mut rss = crate::resources::rss_bytes();
        let paging = paging_at.zip(rss).is_some_and(|(at, rss)| rss > at);
        let mut memory = memory_limit.zip(rss).is_some_and(|(limit, rss)| rss > limit);
        if ticks % TRIM_TICKS == TRIM_TICKS - RELEASE_LEAD_TICKS {
            // Workers release their caches as they park; a few spawned
            // tasks wake the ones parked now, so that they park again.
            crate::heap::request_release();
            for _ in 0..=tokio::runtime::Handle::current().metrics().num_workers() {
                tokio::spawn(async {});
            }
        }
        if ((memory || paging) && ticks % TRIM_TICKS_ALARMED == 0) || ticks % TRIM_TICKS == 0 {
            // Give the allocator's free pages back to the OS (see
            // `heap`), then measure again: under pressure, bodies read
            // back from spill files and freed leave holes in the heap.
            let t0 = std::time::Instant::now();
            crate::heap::trim();
            let took = t0.elapsed();
            if took > Duration::from_millis(5) {
                tracing::debug!(ms = took.as_millis() as u64, "heap trim was slow");
            }
            rss = crate::resources::rss_bytes();
            memory = memory_limit.zip(rss).is_some_and(|(limit, rss)| rss > limit);
        }
        broker.hooks.spill.set_pressure(paging_at.zip(rss).is_some_and(|(at, rss)| rss > at));
        let reason = if disk {
            Some("low on disk")
        } else if memory {
            Some("low on memory")
        } else {
            None
        };
        if reason != alarm.borrow().as_deref() {
            match reason {
                Some(r) => warn!(
                    rss = crate::resources::rss_bytes(),
                    limit = memory_limit,
                    "resource alarm ({r}): blocking publishers"
                ),
                None => info!("resource alarm cleared"),
            }
            alarm.send_replace(reason.map(str::to_owned));
        }
    }
}
