//! What queues send to a connection — deliveries and server-side consumer
//! cancels — and how the connection takes them in.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::error;
use warren_core::{Consumer, Delivery, MessageRef, Outbox, Queue};
use warren_store::Entry;

use super::{Conn, FrameLabel, EVENT_BATCH};

/// What queues send to a connection.
pub enum Event {
    Deliver(Delivery),
    /// Deliveries to one consumer, in order.
    DeliverAll(Vec<Delivery>),
    Cancelled(Arc<Consumer>),
}

/// The [`Outbox`] queues use to reach this connection.
pub struct ConnOutbox {
    pub(super) tx: mpsc::UnboundedSender<Event>,
}

impl Outbox for ConnOutbox {
    fn deliver(&self, delivery: Delivery) -> Result<(), Delivery> {
        self.tx.send(Event::Deliver(delivery)).map_err(|e| match e.0 {
            Event::Deliver(d) => d,
            _ => unreachable!("sent a delivery"),
        })
    }

    fn deliver_all(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<Delivery>> {
        self.tx.send(Event::DeliverAll(deliveries)).map_err(|e| match e.0 {
            Event::DeliverAll(all) => all,
            _ => unreachable!("sent deliveries"),
        })
    }

    fn cancelled(&self, consumer: &Arc<Consumer>) {
        let _ = self.tx.send(Event::Cancelled(consumer.clone()));
    }
}

impl Conn {
    /// Queue events (up to `EVENT_BATCH` deliveries), then the turn's
    /// leftover work, panics contained.
    pub(super) fn on_events(&mut self, first: Event, events: &mut mpsc::UnboundedReceiver<Event>) {
        let r = crate::panics::contain(|| {
            let mut n = self.on_event(first);
            while n < EVENT_BATCH {
                match events.try_recv() {
                    Ok(ev) => n += self.on_event(ev),
                    Err(_) => break,
                }
            }
        });
        if let Err(panic) = r {
            self.on_panic(FrameLabel { channel: 0, method: None, kind: "a delivery" }, &panic);
        }
        self.after_turn_guarded();
    }

    /// Handles one event; returns how many deliveries it had (at least 1).
    fn on_event(&mut self, ev: Event) -> usize {
        match ev {
            Event::Deliver(d) => {
                self.on_deliveries(d.slot, std::iter::once(d.entry));
                1
            }
            Event::DeliverAll(all) => {
                let (Some(first), n) = (all.first(), all.len()) else { return 1 };
                self.on_deliveries(first.slot, all.into_iter().map(|d| d.entry));
                n
            }
            Event::Cancelled(consumer) => {
                if let Some(ch) = self.channels.get_mut(&consumer.channel) {
                    ch.server_cancel(&mut self.out, &consumer, self.cancel_notify);
                }
                1
            }
        }
    }

    /// Deliveries to the consumer in `slot`: written out, or back to their
    /// queue if the consumer is gone from its channel.
    fn on_deliveries(&mut self, slot: u32, entries: impl Iterator<Item = Entry<MessageRef>>) {
        let Some((to, consumer)) = self.slots.get(slot) else {
            // Cannot happen: a slot outlives the deliveries to it.
            error!(slot, "deliveries for an unknown consumer slot");
            return;
        };
        match self.channels.get_mut(&consumer.channel) {
            Some(ch) if ch.owns(consumer) => {
                for entry in entries {
                    self.delivered_logged |= entry.message.persisted.get().is_some();
                    ch.deliver(&mut self.out, self.frame_max, (slot, to, consumer), entry, &mut self.turn);
                }
            }
            _ => give_back(&to.queue, consumer, entries),
        }
    }

    /// The connection is over: deliveries still on their way go back to
    /// their queues.
    pub(super) fn drain_events(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        events.close();
        while let Ok(ev) = events.try_recv() {
            match ev {
                Event::Deliver(d) => self.give_back_to(d.slot, std::iter::once(d.entry)),
                Event::DeliverAll(all) => {
                    if let Some(slot) = all.first().map(|d| d.slot) {
                        self.give_back_to(slot, all.into_iter().map(|d| d.entry));
                    }
                }
                Event::Cancelled(_) => {}
            }
        }
    }

    fn give_back_to(&self, slot: u32, entries: impl Iterator<Item = Entry<MessageRef>>) {
        if let Some((to, consumer)) = self.slots.get(slot) {
            give_back(&to.queue, consumer, entries);
        }
    }
}

/// Deliveries that will not be written out: their credit comes back and
/// they return to their queue.
fn give_back(queue: &Arc<Queue>, consumer: &Consumer, entries: impl Iterator<Item = Entry<MessageRef>>) {
    for entry in entries {
        consumer.finished(entry.message.body.len());
        queue.undeliver(entry, !consumer.no_ack);
    }
}
