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
    all.iter().map(|d| String::from_utf8(d.entry.message.body.contiguous().to_vec()).unwrap()).collect()
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
    assert_eq!(c.inflight(), 0, "and its window");
    // The next consumer gets them in the original order.
    let conn = Arc::new(Conn::default());
    q.add_consumer(consumer(100, conn.clone())).unwrap();
    assert_eq!(*conn.handoffs.lock().unwrap(), vec![names(0..25)]);
    assert_eq!(q.message_count(), 0);
}

fn unacked(c: &Consumer) -> u32 {
    c.unacked.load(std::sync::atomic::Ordering::Acquire)
}

#[test]
fn credit_taken_for_a_run_at_once_never_exceeds_either_prefetch_and_comes_back_unused() {
    // The channel's prefetch (4) is below the consumer's (10).
    let q = queue_with(25);
    let conn = Arc::new(Conn::default());
    let c = consumer(10, conn.clone());
    c.channel_credit.limit.store(4, std::sync::atomic::Ordering::Release);
    q.add_consumer(c.clone()).unwrap();
    assert_eq!(*conn.handoffs.lock().unwrap(), vec![names(0..4)]);
    assert_eq!((unacked(&c), c.channel_credit.unacked.load(std::sync::atomic::Ordering::Acquire)), (4, 4));
    // Each delivery counts its body and the per-delivery overhead.
    assert_eq!(c.inflight(), 4 * (2 + warren_core::consumer::DELIVERY_OVERHEAD));

    // Without a prefetch, fewer ready messages than credit: exactly those
    // are counted.
    let q = queue_with(3);
    let conn = Arc::new(Conn::default());
    let c = consumer(0, conn.clone());
    q.add_consumer(c.clone()).unwrap();
    assert_eq!(*conn.handoffs.lock().unwrap(), vec![names(0..3)]);
    assert_eq!(unacked(&c), 3);
    q.publish(message(3));
    assert_eq!(unacked(&c), 4);
}

#[test]
fn a_run_stops_where_the_outbound_window_fills() {
    // 1 MiB bodies to a no-ack consumer: its window holds 16 MiB.
    let q = Arc::new(Queue::new("q", "/", false, None, false, FieldTable::default()));
    let props = AMQPProperties::default();
    let raw = warren_protocol::content::encode_properties(&props);
    for _ in 0..40 {
        let body = Bytes::from(vec![b'x'; 1 << 20]);
        q.publish(Arc::new(Message::new("".into(), "q".into(), raw.clone(), props.clone(), body)));
    }
    let conn = Arc::new(Conn::default());
    let c = Arc::new(Consumer { channel: 1, no_ack: true, ..Consumer::new("c".into(), conn.clone(), 0) });
    q.add_consumer(c.clone()).unwrap();
    let sizes: Vec<usize> = conn.handoffs.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![16], "one run, up to the window");
    assert_eq!((unacked(&c), c.inflight()), (16, 16 << 20), "credit taken ahead and unused came back");
    assert_eq!(q.message_count(), 24);
}
