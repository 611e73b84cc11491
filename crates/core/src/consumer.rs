//! What a queue knows about a consumer: where to send deliveries and how much
//! credit (prefetch) it has left.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use warren_store::Entry;

use crate::message::MessageRef;

/// How many deliveries a consumer may have in its connection's outbound
/// path (handed over, not yet written to the socket) before the queue
/// waits. Without it a no-ack consumer, or one with unlimited prefetch, on
/// a slow socket would drain the queue into memory — where it can be
/// neither paged nor spilled.
pub const NO_ACK_WINDOW: u32 = 4096;
/// The same window in body bytes: 4,096 deliveries of 1 MiB bodies must not
/// sit in front of a consumer that does not read. For acking consumers it is
/// the only window, with each delivery counted `DELIVERY_OVERHEAD` bytes
/// above its body (so at most ~65,000 tiny deliveries): one counter, one
/// atomic add per delivery on the queue's side (a second counter cost 7 %
/// of transient throughput).
pub const NO_ACK_BYTES: u64 = 16 << 20;
pub const DELIVERY_OVERHEAD: u64 = 256;

/// One message on its way to a consumer. It names the consumer by its
/// slot in the connection (`Consumer::slot`) rather than carrying counted
/// handles on the consumer and the queue: a count taken on the queue's
/// thread and dropped on the connection's moved two cache lines between
/// cores per message (about 4 % of the transient path's samples).
pub struct Delivery {
    pub slot: u32,
    pub entry: Entry<MessageRef>,
}

/// The consumer's connection, as the queue sees it. Implemented by the
/// server with a channel into the connection task.
pub trait Outbox: Send + Sync {
    /// Hands a delivery to the connection. Gives it back if the connection
    /// is gone, so the queue can keep the message.
    fn deliver(&self, delivery: Delivery) -> Result<(), Delivery>;
    /// Hands over several deliveries to one consumer, in order, at once.
    fn deliver_all(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<Delivery>>;
    /// The queue cancelled the consumer (it was deleted): the connection
    /// sends `basic.cancel` if the client asked for such notifications.
    fn cancelled(&self, consumer: &Arc<Consumer>);
}

/// Prefetch shared by every consumer of one channel (`basic.qos` with
/// global=true), plus the channel's flow switch.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    /// 0 = unlimited.
    pub limit: AtomicU32,
    pub unacked: AtomicU32,
}

pub struct Consumer {
    pub tag: Arc<str>,
    /// Its connection's id and channel number (the management API).
    pub connection: u64,
    pub channel: u16,
    pub no_ack: bool,
    pub exclusive: bool,
    /// `x-priority` from basic.consume: higher is served first.
    pub priority: i64,
    /// Per-consumer prefetch (`basic.qos` global=false); 0 = none. Atomic:
    /// a later `basic.qos` on its channel changes it live (Warren; RabbitMQ
    /// applies it to later consumers only).
    pub prefetch: AtomicU32,
    /// Deliveries not yet acked (or, for no-ack, not yet written out).
    pub unacked: AtomicU32,
    /// Bytes handed to the connection, not yet written out: bodies, plus
    /// `DELIVERY_OVERHEAD` each for acking consumers.
    pub inflight_bytes: std::sync::atomic::AtomicU64,
    pub channel_credit: Arc<ChannelCredit>,
    /// Set once the consumer is cancelled, so late deliveries are requeued.
    pub cancelled: AtomicBool,
    /// Consumer timeout (ms): a delivery unacked for longer cancels this
    /// consumer alone (`x-consumer-timeout`, Warren's; off when None).
    pub timeout_ms: Option<u64>,
    pub outbox: Arc<dyn Outbox>,
    /// Where its connection keeps it and its queue. The connection keeps
    /// the slot until the consumer is cancelled and holds no credit: every
    /// delivery takes credit before it is sent, so none can still be on its
    /// way when the slot is reused.
    pub slot: u32,
}

/// Takes up to `max` units of `counter` below `limit` (0 = no limit) in
/// one step; returns how many.
fn take_up_to(counter: &AtomicU32, limit: u32, max: u32) -> u32 {
    let mut got = 0;
    let taken = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        got = if limit == 0 { max } else { limit.saturating_sub(n).min(max) };
        (got > 0).then(|| n + got)
    });
    if taken.is_ok() {
        got
    } else {
        0
    }
}

impl Consumer {
    /// A consumer tagged `tag` in `slot` of its connection (`outbox`),
    /// acking, without prefetch, priority, timeout or channel-wide credit;
    /// callers set the rest with struct update syntax.
    pub fn new(tag: Arc<str>, outbox: Arc<dyn Outbox>, slot: u32) -> Consumer {
        Consumer {
            tag,
            connection: 0,
            channel: 0,
            no_ack: false,
            exclusive: false,
            priority: 0,
            prefetch: AtomicU32::new(0),
            unacked: AtomicU32::new(0),
            inflight_bytes: Default::default(),
            channel_credit: Default::default(),
            cancelled: AtomicBool::new(false),
            timeout_ms: None,
            outbox,
            slot,
        }
    }

    /// Takes one unit of credit for a delivery, if both the consumer's and
    /// the channel's prefetch allow it.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_many(1) == 1
    }

    /// Takes credit for up to `max` deliveries at once (as many as both
    /// the consumer's and the channel's prefetch allow), if the outbound
    /// window is open; returns how many. The caller gives back what it
    /// does not use ([`Consumer::release`]).
    pub fn try_acquire_many(&self, max: u32) -> u32 {
        if self.inflight_bytes.load(Ordering::Acquire) >= NO_ACK_BYTES {
            return 0;
        }
        if self.no_ack {
            return take_up_to(&self.unacked, NO_ACK_WINDOW, max);
        }
        let got = take_up_to(&self.unacked, self.prefetch.load(Ordering::Relaxed), max);
        if got == 0 {
            return 0;
        }
        let limit = self.channel_credit.limit.load(Ordering::Acquire);
        let shared = take_up_to(&self.channel_credit.unacked, limit, got);
        if shared < got {
            self.unacked.fetch_sub(got - shared, Ordering::AcqRel);
        }
        shared
    }

    /// Deliveries `cost` in all (see [`Consumer::window_cost`]) were handed
    /// to the connection. Called once per run, before the hand-over.
    pub fn sent(&self, cost: u64) {
        self.inflight_bytes.fetch_add(cost, Ordering::AcqRel);
    }

    /// Bytes handed to the connection and not yet written out.
    pub fn inflight(&self) -> u64 {
        self.inflight_bytes.load(Ordering::Acquire)
    }

    /// What one delivery of `body_len` bytes counts in the outbound window.
    pub fn window_cost(&self, body_len: usize) -> u64 {
        body_len as u64 + if self.no_ack { 0 } else { DELIVERY_OVERHEAD }
    }

    /// An acking consumer's deliveries, `cost` in all (`window_cost`), were
    /// written out: they leave the outbound window (their prefetch credit
    /// stays taken until the ack). Called once per run of deliveries.
    pub fn written(&self, cost: u64) {
        self.inflight_bytes.fetch_sub(cost, Ordering::AcqRel);
    }

    /// A delivery handed to the connection is done with there (written out,
    /// or given back): its credit returns, and for no-ack its bytes.
    pub fn finished(&self, body_len: usize) {
        self.inflight_bytes.fetch_sub(self.window_cost(body_len), Ordering::AcqRel);
        self.release(1);
    }

    /// Gives back credit for `n` deliveries that were acked, rejected or
    /// (no-ack) written out.
    pub fn release(&self, n: u32) {
        let before = self.unacked.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(before >= n, "consumer credit underflow");
        if !self.no_ack {
            self.channel_credit.unacked.fetch_sub(n, Ordering::AcqRel);
        }
    }
}
