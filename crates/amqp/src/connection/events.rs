//! What queues send to a connection — deliveries and server-side consumer
//! cancels — and how the connection takes them in.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::error;
use warren_core::{Consumer, Delivery, Outbox};

use super::{Conn, FrameLabel, EVENT_BATCH};

/// What queues send to a connection.
pub enum Event {
    Deliver(Delivery),
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
            Event::Cancelled(_) => unreachable!("sent a delivery"),
        })
    }

    fn cancelled(&self, consumer: &Arc<Consumer>) {
        let _ = self.tx.send(Event::Cancelled(consumer.clone()));
    }
}

impl Conn {
    /// Queue events, then the turn's leftover work, panics contained.
    pub(super) fn on_events(&mut self, first: Event, events: &mut mpsc::UnboundedReceiver<Event>) {
        let r = crate::panics::contain(|| {
            self.on_event(first);
            for _ in 0..EVENT_BATCH {
                match events.try_recv() {
                    Ok(ev) => self.on_event(ev),
                    Err(_) => break,
                }
            }
        });
        if let Err(panic) = r {
            self.on_panic(FrameLabel { channel: 0, method: None, kind: "a delivery" }, &panic);
        }
        self.after_turn_guarded();
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Deliver(d) => {
                let Some((to, consumer)) = self.slots.get(d.slot) else {
                    // Cannot happen: a slot outlives the deliveries to it.
                    error!(slot = d.slot, "a delivery for an unknown consumer slot");
                    return;
                };
                match self.channels.get_mut(&consumer.channel) {
                    Some(ch) if ch.owns(consumer) => {
                        self.delivered_logged |= d.entry.message.persisted.get().is_some();
                        ch.deliver(&mut self.out, self.frame_max, (to, consumer), d.entry, &mut self.turn);
                    }
                    _ => {
                        consumer.finished(d.entry.message.body.len());
                        to.queue.undeliver(d.entry, !consumer.no_ack);
                    }
                }
            }
            Event::Cancelled(consumer) => {
                if let Some(ch) = self.channels.get_mut(&consumer.channel) {
                    ch.server_cancel(&mut self.out, &consumer, self.cancel_notify);
                }
            }
        }
    }

    /// The connection is over: deliveries still on their way go back to
    /// their queues.
    pub(super) fn drain_events(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        events.close();
        while let Ok(ev) = events.try_recv() {
            if let Event::Deliver(d) = ev {
                if let Some((to, consumer)) = self.slots.get(d.slot) {
                    consumer.finished(d.entry.message.body.len());
                    to.queue.undeliver(d.entry, !consumer.no_ack);
                }
            }
        }
    }
}
