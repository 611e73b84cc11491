//! Message statistics for the management API: counters and sampled rates.
//!
//! Counters are touched on the per-message path, so they cost as little as
//! the owner allows: a queue counts under the lock it already holds (plain
//! integers in its state); a channel, the only writer of its counters, does
//! a relaxed load and store (no locked instruction, see [`Counters::bump`]);
//! an exchange, shared by publishers, a relaxed `fetch_add` of what each
//! channel tallied since its last tick (`publish::ExchangeTally`). Rates are
//! never computed per message: a timer samples every object's counters
//! ([`Rates::sample`], every [`SAMPLE_INTERVAL_MS`]) and the rate is the
//! change over the last interval, as RabbitMQ's `collect_statistics_interval`
//! (5 s by default) samples them.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// How often the management timer samples counters into rates.
pub const SAMPLE_INTERVAL_MS: u64 = 5000;

/// The `message_stats` fields, by index, with RabbitMQ's names.
pub const PUBLISH: usize = 0;
pub const PUBLISH_IN: usize = 1;
pub const PUBLISH_OUT: usize = 2;
pub const CONFIRM: usize = 3;
pub const DELIVER: usize = 4;
pub const DELIVER_NO_ACK: usize = 5;
pub const GET: usize = 6;
pub const GET_NO_ACK: usize = 7;
pub const GET_EMPTY: usize = 8;
pub const ACK: usize = 9;
pub const REDELIVER: usize = 10;
pub const RETURN_UNROUTABLE: usize = 11;
pub const DROP_UNROUTABLE: usize = 12;
pub const N: usize = 13;
/// The counters and the three lengths (messages, ready, unacked).
pub const NL: usize = N + 3;
/// Rates of the counters and the lengths (queues, vhosts, the node).
pub type LengthRates = Rates<NL>;

pub const NAMES: [&str; N] = [
    "publish",
    "publish_in",
    "publish_out",
    "confirm",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "ack",
    "redeliver",
    "return_unroutable",
    "drop_unroutable",
];

/// A snapshot of the counters.
pub type Counts = [u64; N];

/// `deliver_get`: every message handed out, by consume or get, either ack mode.
pub fn deliver_get(c: &Counts) -> u64 {
    c[DELIVER] + c[DELIVER_NO_ACK] + c[GET] + c[GET_NO_ACK]
}

/// The counters followed by the three lengths, as rates and histories
/// of queues, vhosts and the node keep them.
pub fn with_lengths(c: &Counts, ready: u64, unacked: u64) -> [u64; NL] {
    let mut v = [0; NL];
    v[..N].copy_from_slice(c);
    v[N..].copy_from_slice(&[ready + unacked, ready, unacked]);
    v
}

/// Adds `b` into `a`.
pub fn add(a: &mut Counts, b: &Counts) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

#[derive(Default)]
pub struct Counters([AtomicU64; N]);

impl Counters {
    /// For counters with several writers (an exchange).
    pub fn add(&self, i: usize, n: u64) {
        self.0[i].fetch_add(n, Ordering::Relaxed);
    }

    /// For counters with a single writer (a channel, on its connection's
    /// task): a plain load and store, no locked read-modify-write. Readers
    /// see a value at most one update behind.
    pub fn bump(&self, i: usize, n: u64) {
        let a = &self.0[i];
        a.store(a.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// Adds a whole snapshot (a closed channel's totals into its vhost's).
    pub fn add_all(&self, c: &Counts) {
        for (a, n) in self.0.iter().zip(c) {
            if *n > 0 {
                a.fetch_add(*n, Ordering::Relaxed);
            }
        }
    }

    pub fn snapshot(&self) -> Counts {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// Per-second rates of `K` values over the last sample interval. Kept
/// inline (no allocation): every channel and connection has one, and an
/// idle connection should cost little (`docs/benchmarks.md`).
pub struct Rates<const K: usize = N>(Mutex<Option<RateState<K>>>);

struct RateState<const K: usize> {
    at: std::time::Instant,
    last: [u64; K],
    rate: [f32; K],
}

impl<const K: usize> Default for Rates<K> {
    fn default() -> Self {
        Rates(Mutex::new(None))
    }
}

impl<const K: usize> Rates<K> {
    /// Records the values now: the rate becomes their change since the
    /// previous sample, per second.
    pub fn sample(&self, values: &[u64; K]) {
        let now = std::time::Instant::now();
        let mut st = self.0.lock();
        match st.as_mut() {
            Some(s) => {
                let dt = now.duration_since(s.at).as_secs_f64();
                if dt < 0.001 {
                    return;
                }
                for (i, v) in values.iter().enumerate() {
                    // Lengths may fall: the rate is signed.
                    s.rate[i] = ((*v as f64 - s.last[i] as f64) / dt) as f32;
                }
                s.last = *values;
                s.at = now;
            }
            None => *st = Some(RateState { at: now, last: *values, rate: [0.0; K] }),
        }
    }

    /// The rate of value `i` (0 until two samples were taken).
    pub fn get(&self, i: usize) -> f64 {
        self.0.lock().as_ref().and_then(|s| s.rate.get(i).copied()).unwrap_or(0.0) as f64
    }

    /// All rates (empty until sampled).
    pub fn all(&self) -> Vec<f64> {
        self.0.lock().as_ref().map(|s| s.rate.iter().map(|r| *r as f64).collect()).unwrap_or_default()
    }
}

/// The last samples of a set of values (the overview's and each vhost's),
/// for `msg_rates_age` / `lengths_age`: RabbitMQ's basic retention, 10
/// minutes at one sample per interval.
#[derive(Default)]
pub struct History(Mutex<std::collections::VecDeque<(u64, Vec<u64>)>>);

/// Samples kept: 600 s / 5 s.
const HISTORY_LEN: usize = 120;

impl History {
    pub fn push(&self, at_ms: u64, values: &[u64]) {
        let mut h = self.0.lock();
        if h.len() == HISTORY_LEN {
            h.pop_front();
        }
        h.push_back((at_ms, values.to_vec()));
    }

    /// Value `i` at every `incr_ms` over the last `age_ms` (newest first):
    /// the latest sample at or before each point.
    pub fn samples(&self, i: usize, now_ms: u64, age_ms: u64, incr_ms: u64) -> Vec<(u64, u64)> {
        let h = self.0.lock();
        let incr = incr_ms.max(1);
        let mut out = Vec::new();
        let mut t = now_ms - now_ms % incr;
        let oldest = now_ms.saturating_sub(age_ms);
        while t >= oldest && out.len() < 10_000 {
            match h.iter().rev().find(|(at, _)| *at <= t) {
                Some((_, v)) => out.push((t, v.get(i).copied().unwrap_or(0))),
                None => break,
            }
            if t < incr {
                break;
            }
            t -= incr;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_rates() {
        let c = Counters::default();
        c.bump(PUBLISH, 3);
        c.add(ACK, 2);
        c.add_all(&[1; N]);
        let s = c.snapshot();
        assert_eq!(s[PUBLISH], 4);
        assert_eq!(s[ACK], 3);
        assert_eq!(deliver_get(&s), 4);
        let r = Rates::<2>::default();
        r.sample(&[10, 5]);
        assert_eq!(r.get(0), 0.0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        r.sample(&[20, 0]);
        assert!(r.get(0) > 0.0 && r.get(1) < 0.0, "{:?}", r.all());
        let h = History::default();
        for k in 0..200u64 {
            h.push(k * 5000, &[k]);
        }
        let s = h.samples(0, 999_000, 60_000, 5000);
        assert_eq!(s.len(), 12);
        assert_eq!(s[0], (995_000, 199), "newest first, latest sample at or before");
        assert_eq!(s[11], (940_000, 188));
    }
}
