//! The consumers of one connection, by slot. A queue's delivery names its
//! consumer by slot (`Delivery::slot`): the connection finds the consumer
//! and its queue here, on its own thread, instead of receiving counted
//! handles that the queue's thread took. An unacked delivery names its slot
//! too, and the slot counts them (`held`): a slot is reused only once none
//! is left.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use warren_core::{Consumer, Queue};

/// A queue and the consumer it delivered to (None for `basic.get`), as an
/// unacked delivery refers to them, by slot. Counted only on the
/// connection's thread, and without atomics: an unacked delivery holding
/// counts on the consumer and the queue themselves moved their cache lines
/// between the queue's and the connection's cores twice per message, and an
/// `Arc` on this handle cost a locked increment per delivery and a locked
/// decrement per ack (the increment alone was 30 % of `deliver`'s samples,
/// transient 16 B; docs/benchmarks.md).
pub struct Handle {
    pub queue: Arc<Queue>,
    pub consumer: Option<Arc<Consumer>>,
    /// Unacked deliveries that name this slot.
    held: Cell<u32>,
}

impl Handle {
    /// One more unacked delivery names this slot.
    pub fn hold(&self) {
        self.held.set(self.held.get() + 1);
    }
}

#[derive(Default)]
pub struct Slots {
    slots: Vec<Option<Handle>>,
    free: Vec<u32>,
    /// Slots in use after the last sweep (at least 16), doubled: when every
    /// slot is taken and there are this many, sweep before growing.
    sweep_at: usize,
}

impl Slots {
    /// Builds a consumer of `queue` with the slot it will occupy.
    pub fn add(&mut self, queue: &Arc<Queue>, make: impl FnOnce(u32) -> Arc<Consumer>) -> Arc<Consumer> {
        if self.free.is_empty() && self.slots.len() >= self.sweep_at.max(16) {
            self.sweep();
            self.sweep_at = 2 * (self.slots.len() - self.free.len());
        }
        let slot = self.empty_slot();
        let consumer = make(slot);
        debug_assert_eq!(consumer.slot, slot);
        self.slots[slot as usize] =
            Some(Handle { queue: queue.clone(), consumer: Some(consumer.clone()), held: Cell::new(0) });
        consumer
    }

    /// A slot for one unacked `basic.get` delivery from `queue`: freed when
    /// it is settled.
    pub fn add_get(&mut self, queue: Arc<Queue>) -> u32 {
        let slot = self.empty_slot();
        self.slots[slot as usize] = Some(Handle { queue, consumer: None, held: Cell::new(1) });
        slot
    }

    /// A free slot, or a new one at the end of the table.
    fn empty_slot(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            (self.slots.len() - 1) as u32
        })
    }

    /// The consumer in `slot`, with its handle.
    pub fn get(&self, slot: u32) -> Option<(&Handle, &Arc<Consumer>)> {
        let h = self.handle(slot)?;
        Some((h, h.consumer.as_ref()?))
    }

    /// The handle in `slot`, a consumer's or a `basic.get`'s.
    pub fn handle(&self, slot: u32) -> Option<&Handle> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// `n` unacked deliveries that named `slot` are settled or requeued:
    /// their credit goes back to the consumer, and a `basic.get`'s slot is
    /// freed once none is left.
    pub fn release(&mut self, slot: u32, n: u32) {
        let Some(h) = self.handle(slot) else {
            debug_assert!(false, "an unacked delivery names an empty slot");
            return;
        };
        if let Some(c) = &h.consumer {
            c.release(n);
        }
        debug_assert!(h.held.get() >= n, "slot released more often than held");
        let held = h.held.get().saturating_sub(n);
        h.held.set(held);
        if held == 0 && h.consumer.is_none() {
            self.slots[slot as usize] = None;
            self.free.push(slot);
        }
    }

    /// Frees the slots of consumers that are cancelled (no queue sends to
    /// them any more), hold no credit (no delivery to them is on its way:
    /// a queue takes credit before it sends, and it comes back only once the
    /// connection has the delivery) and that no unacked delivery names.
    pub fn sweep(&mut self) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            let done = s.as_ref().is_some_and(|h| {
                h.held.get() == 0
                    && h.consumer
                        .as_ref()
                        .is_some_and(|c| c.cancelled.load(Ordering::Acquire) && c.unacked.load(Ordering::Acquire) == 0)
            });
            if done {
                *s = None;
                self.free.push(i as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_core::{Delivery, Outbox};
    use warren_protocol::FieldTable;

    struct Nowhere;

    impl Outbox for Nowhere {
        fn deliver(&self, d: Delivery) -> Result<(), Delivery> {
            Err(d)
        }
        fn deliver_all(&self, all: Vec<Delivery>) -> Result<(), Vec<Delivery>> {
            Err(all)
        }
        fn cancelled(&self, _: &Arc<Consumer>) {}
    }

    fn consumer(slot: u32) -> Arc<Consumer> {
        Arc::new(Consumer {
            connection: 1,
            channel: 1,
            ..Consumer::new(format!("c{slot}").into(), Arc::new(Nowhere), slot)
        })
    }

    #[test]
    fn a_slot_is_reused_only_once_its_consumer_is_cancelled_and_holds_no_credit() {
        let q = Arc::new(Queue::new("q", "/", false, None, false, FieldTable::default()));
        let mut slots = Slots::default();
        let all: Vec<_> = (0..16).map(|_| slots.add(&q, consumer)).collect();
        assert_eq!(all.iter().map(|c| c.slot).collect::<Vec<_>>(), (0..16).collect::<Vec<_>>());
        // Slot 3: cancelled, but a delivery to it may still be on its way.
        assert!(all[3].try_acquire());
        all[3].cancelled.store(true, Ordering::Release);
        // Slot 5: holds credit, not cancelled.
        assert!(all[5].try_acquire());
        // Slot 7: cancelled, no credit: free.
        all[7].cancelled.store(true, Ordering::Release);
        let next = slots.add(&q, consumer);
        assert_eq!(next.slot, 7, "the sweep before growing freed slot 7 only");
        assert!(Arc::ptr_eq(slots.get(7).unwrap().1, &next));
        assert!(Arc::ptr_eq(slots.get(3).unwrap().1, &all[3]), "slot 3 kept while it holds credit");
        assert_eq!(slots.add(&q, consumer).slot, 16, "nothing else to reuse: the table grows");
        all[3].release(1);
        slots.sweep();
        assert!(slots.get(3).is_none());
        assert_eq!(slots.add(&q, consumer).slot, 3);
        assert!(slots.get(99).is_none());
    }

    #[test]
    fn a_slot_is_kept_while_an_unacked_delivery_names_it() {
        let q = Arc::new(Queue::new("q", "/", false, None, false, FieldTable::default()));
        let mut slots = Slots::default();
        let all: Vec<_> = (0..16).map(|_| slots.add(&q, consumer)).collect();
        // Slot 2: cancelled, its credit is the one delivery still unacked.
        assert!(all[2].try_acquire());
        slots.get(2).unwrap().0.hold();
        all[2].cancelled.store(true, Ordering::Release);
        slots.sweep();
        assert!(slots.get(2).is_some(), "kept: an unacked delivery names it");
        slots.release(2, 1);
        assert_eq!(all[2].unacked.load(Ordering::Acquire), 0, "the credit came back");
        slots.sweep();
        assert!(slots.get(2).is_none());

        // A basic.get's slot lives as long as its one delivery is unacked,
        // and has no consumer to deliver to.
        let got = slots.add_get(q.clone());
        assert_eq!(got, 2, "the freed slot is reused");
        assert!(slots.get(got).is_none() && slots.handle(got).is_some_and(|h| Arc::ptr_eq(&h.queue, &q)));
        slots.sweep();
        assert!(slots.handle(got).is_some(), "a sweep leaves it");
        slots.release(got, 1);
        assert!(slots.handle(got).is_none(), "freed once settled");
        assert_eq!(slots.add_get(q.clone()), got);
        assert_eq!(slots.add_get(q), 16, "nothing else to reuse: the table grows");
    }
}
