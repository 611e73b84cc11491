//! The connection registry: what the admin surface reads of open
//! connections and channels. Each [`ConnInfo`] and [`ChannelInfo`] is kept
//! current by the connection task that owns the connection (the only
//! writer of its counters) and read by the management API, Prometheus and
//! `warren ctl`; they never see a connection's internals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use warren_core::stats::{Counters, Rates};

/// Open connections by id, and how many connections and channels have
/// opened and closed since the start.
#[derive(Default)]
pub struct Registry {
    pub connections: Mutex<HashMap<u64, Arc<ConnInfo>>>,
    pub totals: Totals,
}

impl Registry {
    /// Every open connection (a snapshot).
    pub fn all(&self) -> Vec<Arc<ConnInfo>> {
        self.connections.lock().values().cloned().collect()
    }
}

/// Connections and channels opened and closed since the start.
#[derive(Default)]
pub struct Totals {
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub channels_opened: AtomicU64,
    pub channels_closed: AtomicU64,
    /// Messages received on channels in confirm mode that have closed (the
    /// open ones count their own: `ChannelInfo::received_confirm`).
    pub received_confirm: AtomicU64,
}

/// One open connection, as `warren ctl list_connections` shows it.
pub struct ConnInfo {
    pub id: u64,
    pub user: String,
    pub vhost: String,
    pub peer: SocketAddr,
    pub tls: bool,
    /// Open channels, kept current by the connection task.
    pub channels: AtomicUsize,
    /// Bytes its read and write buffers hold (capacity, and what waits for
    /// the writer), refreshed every tick (0.5 s) for the memory breakdown.
    pub buffers: AtomicUsize,
    /// What the management API shows, fixed at connection.open.
    pub client_properties: Box<str>,
    pub auth_mechanism: &'static str,
    pub connected_at: u64,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    /// Bytes read and written (single writer: the connection task).
    pub recv_oct: AtomicU64,
    pub send_oct: AtomicU64,
    pub rates: warren_core::stats::Rates<2>,
    /// Its open channels.
    pub channel_list: parking_lot::Mutex<Vec<Arc<ChannelInfo>>>,
    /// Set with a reason (`DELETE /api/connections/NAME`): within a tick
    /// (0.5 s) the connection closes with 320 CONNECTION_FORCED, even one
    /// stalled on a client that does not read.
    pub kill_reason: parking_lot::Mutex<Option<String>>,
}

impl ConnInfo {
    /// RabbitMQ's connection name: "peer -> listener".
    pub fn name(&self, listen: SocketAddr) -> String {
        format!("{} -> {}", self.peer, listen)
    }

    /// Asks the connection to close with 320 and `reason`.
    pub fn force_close(&self, reason: String) {
        *self.kill_reason.lock() = Some(reason);
    }
}

/// What the management API sees of a channel: kept current by the
/// channel (its only writer), read by the API.
#[derive(Default)]
pub struct ChannelInfo {
    pub number: u16,
    pub stats: Counters,
    pub rates: Rates,
    /// `basic.qos` prefetch for new consumers, and the channel-wide one.
    pub prefetch: AtomicU32,
    pub global_prefetch: AtomicU32,
    pub unacked: AtomicU64,
    pub consumers: AtomicU32,
    /// 0 plain, 1 confirm, 2 transactional.
    pub mode: AtomicU8,
    /// Messages received in confirm mode (`rabbitmq_global_messages_received_confirm_total`):
    /// the channel's publish sequence number, stored on its tick and when
    /// it closes, so that a publish costs nothing more.
    pub received_confirm: AtomicU64,
}

impl ChannelInfo {
    pub fn new(number: u16) -> Self {
        ChannelInfo { number, ..Default::default() }
    }

    pub fn store(a: &AtomicU64, v: u64) {
        a.store(v, Ordering::Relaxed);
    }
}
