//! The consumers of one connection, by slot. A queue's delivery names its
//! consumer by slot (`Delivery::slot`): the connection finds the consumer
//! and its queue here, on its own thread, instead of receiving counted
//! handles that the queue's thread took.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use warren_core::{Consumer, Queue};

/// A queue and the consumer it delivered to (None for `basic.get`), as an
/// unacked delivery refers to them. One per consumer, counted only on the
/// connection's thread: an unacked delivery holding counts on the consumer
/// and the queue themselves moved their cache lines between the queue's
/// and the connection's cores twice per message.
pub struct Handle {
    pub queue: Arc<Queue>,
    pub consumer: Option<Arc<Consumer>>,
}

#[derive(Default)]
pub struct Slots {
    slots: Vec<Option<Arc<Handle>>>,
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
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let consumer = make(slot);
        debug_assert_eq!(consumer.slot, slot);
        self.slots[slot as usize] = Some(Arc::new(Handle { queue: queue.clone(), consumer: Some(consumer.clone()) }));
        consumer
    }

    /// The consumer in `slot`, with its handle.
    pub fn get(&self, slot: u32) -> Option<(&Arc<Handle>, &Arc<Consumer>)> {
        let h = self.slots.get(slot as usize)?.as_ref()?;
        Some((h, h.consumer.as_ref()?))
    }

    /// Frees the slots of consumers that are cancelled (no queue sends to
    /// them any more) and hold no credit (no delivery to them is on its way:
    /// a queue takes credit before it sends, and it comes back only once the
    /// connection has the delivery).
    pub fn sweep(&mut self) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            let done = s
                .as_ref()
                .and_then(|h| h.consumer.as_ref())
                .is_some_and(|c| c.cancelled.load(Ordering::Acquire) && c.unacked.load(Ordering::Acquire) == 0);
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
}
