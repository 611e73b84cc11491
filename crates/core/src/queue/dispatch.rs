//! Dispatch: which consumer gets the next ready message (priorities,
//! round-robin, single active consumer, fair dispatch) and the delivery of
//! ready messages while consumers have credit.

use super::*;
use crate::consumer::NO_ACK_BYTES;

/// At most this many deliveries' credit taken ahead at once.
const RUN_AHEAD: usize = 1024;

impl Queue {
    /// Picks the consumer for the next delivery and takes its credit:
    /// the highest priority with credit, round-robin among equals; with a
    /// single active consumer, only the first.
    pub(super) fn pick(st: &mut QueueState, single_active: bool, fair: bool) -> Option<usize> {
        let n = st.consumers.len();
        if single_active {
            return (n > 0 && st.consumers[0].try_acquire()).then_some(0);
        }
        let mut start = 0;
        while start < n {
            let p = st.consumers[start].priority;
            let end = start + st.consumers[start..].iter().take_while(|c| c.priority == p).count();
            let len = end - start;
            if fair && len <= 64 {
                if let Some(idx) = Self::pick_fewest_unacked(st, start, len) {
                    return Some(idx);
                }
                start = end;
                continue;
            }
            for i in 0..len {
                let idx = start + (st.next_consumer + i) % len;
                if st.consumers[idx].try_acquire() {
                    st.next_consumer = idx + 1;
                    return Some(idx);
                }
            }
            start = end;
        }
        None
    }

    /// Fair dispatch within one priority group (`start..start + len`, at
    /// most 64): the consumer with the fewest unacked deliveries that has
    /// credit, the first in round-robin order among equals.
    pub(super) fn pick_fewest_unacked(st: &mut QueueState, start: usize, len: usize) -> Option<usize> {
        let mut tried = 0u64;
        for _ in 0..len {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..len {
                let idx = start + (st.next_consumer + i) % len;
                if tried & (1 << (idx - start)) != 0 {
                    continue;
                }
                let unacked = st.consumers[idx].unacked.load(Ordering::Acquire);
                if best.is_none_or(|(u, _)| unacked < u) {
                    best = Some((unacked, idx));
                }
            }
            let (_, idx) = best?;
            if st.consumers[idx].try_acquire() {
                st.next_consumer = idx + 1;
                return Some(idx);
            }
            tried |= 1 << (idx - start);
        }
        None
    }

    /// Delivers ready messages to consumers with credit. The deliveries
    /// picked for one consumer in a row reach its connection in one
    /// hand-off (after an ack of 100 frees credit, 100 of them). The
    /// queue's only consumer (or its single active one) takes credit for a
    /// run at once, and a run's bytes enter its window at once: a few
    /// locked instructions a run, not three a message.
    pub(super) fn dispatch(self: &Arc<Self>, st: &mut QueueState) {
        let mut run = Run::None;
        let mut run_of = 0;
        // Credit taken ahead for `run_of`, and the window cost of the run
        // not yet added to its `inflight_bytes` (both settled before the
        // next pick and before a hand-over).
        let mut ahead = 0u32;
        let mut cost = 0u64;
        // What the window of `run_of` had room for when it took `ahead`.
        let mut room = 0u64;
        while st.len() > 0 && !st.consumers.is_empty() {
            if self.drop_expired(st) > 0 {
                continue;
            }
            let idx = if ahead > 0 && cost < room {
                ahead -= 1;
                run_of
            } else {
                Self::settle_run(st, run_of, &mut ahead, &mut cost);
                let Some(mut idx) = Self::pick(st, self.single_active, self.fair) else { break };
                if idx != run_of && self.hand_over(st, run_of, std::mem::take(&mut run)) && run_of < idx {
                    idx -= 1;
                }
                if self.single_active || st.consumers.len() == 1 {
                    let more = (st.len() - 1).min(RUN_AHEAD) as u32;
                    if more > 0 {
                        let c = &st.consumers[idx];
                        room = NO_ACK_BYTES.saturating_sub(c.inflight());
                        ahead = c.try_acquire_many(more);
                    }
                }
                idx
            };
            let Some(mut entry) = st.pop() else {
                // Only paged-out messages that could not be read back were left.
                st.consumers[idx].release(1);
                run_of = idx;
                break;
            };
            entry.delivery_count += 1;
            self.log_delivery(&entry);
            let consumer = &st.consumers[idx];
            st.stats[if consumer.no_ack { stats::DELIVER_NO_ACK } else { stats::DELIVER }] += 1;
            st.stats[stats::REDELIVER] += entry.redelivered as u64;
            cost += consumer.window_cost(entry.message.body.len());
            if consumer.no_ack {
                // No ack will come: it leaves the queue now.
                self.discard(&entry.message);
            } else {
                st.unacked += 1;
            }
            // No reference count taken per delivery: the delivery names the
            // consumer's slot in its connection.
            run.push(Delivery { slot: consumer.slot, entry });
            run_of = idx;
        }
        Self::settle_run(st, run_of, &mut ahead, &mut cost);
        self.hand_over(st, run_of, run);
    }

    /// Gives back the credit consumer `i` took ahead and did not use, and
    /// adds the run's cost to its window.
    fn settle_run(st: &QueueState, i: usize, ahead: &mut u32, cost: &mut u64) {
        let Some(c) = st.consumers.get(i) else { return };
        if *ahead > 0 {
            c.release(std::mem::take(ahead));
        }
        if *cost > 0 {
            c.sent(std::mem::take(cost));
        }
    }

    /// Hands a run of deliveries to consumer `i`'s connection. If the
    /// connection is gone, takes them back and drops the consumer (the
    /// connection's end cancels it anyway); returns whether it did.
    fn hand_over(&self, st: &mut QueueState, i: usize, run: Run) -> bool {
        let back = match run {
            Run::None => return false,
            Run::One(d) => match st.consumers[i].outbox.deliver(d) {
                Ok(()) => return false,
                Err(d) => vec![d],
            },
            Run::Many(all) => match st.consumers[i].outbox.deliver_all(all) {
                Ok(()) => return false,
                Err(all) => all,
            },
        };
        let consumer = st.consumers.remove(i);
        for d in back {
            consumer.finished(d.entry.message.body.len());
            if !consumer.no_ack {
                st.unacked -= 1;
            }
            let mut entry = d.entry;
            entry.delivery_count -= 1;
            st.requeue(entry);
        }
        st.next_consumer = 0;
        true
    }

    /// Asks the queue to deliver again (credit was freed).
    pub fn wake(self: &Arc<Self>) {
        let mut st = self.lock();
        self.dispatch(&mut st);
    }
}

/// Deliveries for one consumer not yet handed over: a single one (the
/// usual case when a publish meets a waiting consumer) without allocating.
#[derive(Default)]
enum Run {
    #[default]
    None,
    One(Delivery),
    Many(Vec<Delivery>),
}

impl Run {
    fn push(&mut self, d: Delivery) {
        *self = match std::mem::take(self) {
            Run::None => Run::One(d),
            Run::One(first) => {
                let mut all = Vec::with_capacity(16);
                all.push(first);
                all.push(d);
                Run::Many(all)
            }
            Run::Many(mut all) => {
                all.push(d);
                Run::Many(all)
            }
        }
    }
}
