//! A queue hands the deliveries it picks for one consumer in a row to that
//! consumer's connection in one hand-off, in order; and if the connection
//! is gone, every one of them goes back to the queue, in order.

use std::sync::{Arc, Mutex};

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::Bytes;
use warren_core::{Consumer, Delivery, Message, Outbox, Queue};
use warren_protocol::FieldTable;

/// A connection that records each hand-off (its bodies), or is gone.
#[derive(Default)]
struct Conn {
    gone: bool,
    handoffs: Mutex<Vec<Vec<String>>>,
}

fn bodies(all: &[Delivery]) -> Vec<String> {
    all.iter().map(|d| String::from_utf8(d.entry.message.body.to_vec()).unwrap()).collect()
}

impl Outbox for Conn {
    fn deliver(&self, d: Delivery) -> Result<(), Delivery> {
        if self.gone {
            return Err(d);
        }
        self.handoffs.lock().unwrap().push(bodies(std::slice::from_ref(&d)));
        Ok(())
    }
    fn deliver_all(&self, all: Vec<Delivery>) -> Result<(), Vec<Delivery>> {
        if self.gone {
            return Err(all);
        }
        self.handoffs.lock().unwrap().push(bodies(&all));
        Ok(())
    }
    fn cancelled(&self, _consumer: &Arc<Consumer>) {}
}

fn message(i: u32) -> Arc<Message> {
    let props = AMQPProperties::default();
    let raw = warren_protocol::content::encode_properties(&props);
    Arc::new(Message::new("".into(), "q".into(), raw, props, Bytes::from(format!("m{i}"))))
}

fn consumer(prefetch: u32, outbox: Arc<Conn>) -> Arc<Consumer> {
    Arc::new(Consumer { channel: 1, prefetch: prefetch.into(), ..Consumer::new("c".into(), outbox, 0) })
}

fn queue_with(n: u32) -> Arc<Queue> {
    let q = Arc::new(Queue::new("q", "/", false, None, false, FieldTable::default()));
    for i in 0..n {
        q.publish(message(i));
    }
    q
}

fn names(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[test]
fn deliveries_to_one_consumer_go_over_in_one_handoff_in_order() {
    let q = queue_with(25);
    let conn = Arc::new(Conn::default());
    let c = consumer(10, conn.clone());
    q.add_consumer(c.clone()).unwrap();
    assert_eq!(*conn.handoffs.lock().unwrap(), vec![names(0..10)], "its prefetch, at once");
    // Credit for three comes back: three more, again in one hand-off.
    c.release(3);
    q.wake();
    c.release(1);
    q.wake();
    let h = conn.handoffs.lock().unwrap();
    assert_eq!(h[1..], [names(10..13), names(13..14)]);
    assert_eq!(q.message_count(), 11);
}

#[test]
fn a_gone_connection_gives_every_delivery_of_the_run_back_in_order() {
    let q = queue_with(25);
    let gone = Arc::new(Conn { gone: true, ..Default::default() });
    let c = consumer(10, gone);
    q.add_consumer(c.clone()).unwrap();
    assert_eq!(q.message_count(), 25, "all ten went back");
    assert_eq!(q.consumer_count(), 0, "the consumer was dropped");
    assert_eq!(c.unacked.load(std::sync::atomic::Ordering::Acquire), 0, "its credit came back");
    // The next consumer gets them in the original order.
    let conn = Arc::new(Conn::default());
    q.add_consumer(consumer(100, conn.clone())).unwrap();
    assert_eq!(*conn.handoffs.lock().unwrap(), vec![names(0..25)]);
    assert_eq!(q.message_count(), 0);
}
