//! Publisher flow control: a queue whose consumers are far behind asks its
//! publishers to pause; a queue without consumers (filling a backlog) never does.
//! A durable queue asks as soon as its backlog outgrows what it keeps in
//! memory (past that, each message would be written out and read back); any
//! queue asks once its ready bodies pass 8 MiB, however few they are.

use std::sync::{Arc, Mutex};

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::Bytes;
use warren_core::{Consumer, Delivery, Message, Outbox, Queue};
use warren_protocol::FieldTable;

/// A consumer connection that takes deliveries and never acks.
#[derive(Default)]
struct Slow(Mutex<Vec<Delivery>>);

impl Outbox for Slow {
    fn deliver(&self, delivery: Delivery) -> Result<(), Delivery> {
        self.0.lock().unwrap().push(delivery);
        Ok(())
    }
    fn deliver_all(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<Delivery>> {
        self.0.lock().unwrap().extend(deliveries);
        Ok(())
    }
    fn cancelled(&self, _consumer: &Arc<Consumer>) {}
}

fn message(i: u32) -> Arc<Message> {
    let props = AMQPProperties::default().with_delivery_mode(2);
    let raw = warren_protocol::content::encode_properties(&props);
    Arc::new(Message::new("".into(), "q".into(), raw, props, Bytes::from(i.to_string())))
}

#[test]
fn a_queue_far_ahead_of_its_consumers_asks_publishers_to_pause() {
    let q = Arc::new(Queue::new("q", "/", false, None, false, FieldTable::default()));
    for i in 0..20_000 {
        q.publish(message(i));
    }
    assert!(!q.under_pressure(), "no consumer: filling a backlog is not throttled");
    q.add_consumer(consumer()).unwrap();
    q.publish(message(20_000));
    assert!(q.under_pressure(), "a consumer that is 20,000 messages behind");
    q.purge();
    q.publish(message(20_001));
    assert!(!q.under_pressure(), "caught up");
}

fn big(len: usize) -> Arc<Message> {
    let props = AMQPProperties::default();
    let raw = warren_protocol::content::encode_properties(&props);
    Arc::new(Message::new("".into(), "q".into(), raw, props, Bytes::from(vec![7u8; len])))
}

#[test]
fn a_queue_asks_once_its_ready_bodies_pass_eight_mebibytes() {
    let q = Arc::new(Queue::new("q", "/", false, None, false, FieldTable::default()));
    q.add_consumer(consumer()).unwrap();
    // The consumer holds its 10; 100 bodies of 64 KiB wait: 6.25 MiB.
    for _ in 0..110 {
        q.publish(big(64 << 10));
    }
    assert_eq!(q.message_count(), 100);
    assert!(!q.under_pressure(), "6.25 MiB ready: under the limit");
    for _ in 0..28 {
        q.publish(big(64 << 10));
    }
    assert!(q.under_pressure(), "8.0 MiB ready, only {} messages", q.message_count());
    while q.message_count() > 100 {
        q.get(true).unwrap();
    }
    q.publish(big(1));
    assert!(!q.under_pressure(), "back under the limit");
}

fn consumer() -> Arc<Consumer> {
    Arc::new(Consumer { channel: 1, prefetch: 10.into(), ..Consumer::new("c".into(), Arc::new(Slow::default()), 0) })
}

#[test]
fn a_durable_queue_asks_once_its_backlog_outgrows_the_memory_it_keeps() {
    let d = std::env::temp_dir().join(format!("warren-flow-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let broker = warren_core::Broker::open(&d).unwrap();
    let vhost = broker.vhost("/").unwrap();
    let q = vhost.declare_queue(1, "q", false, true, false, false, FieldTable::default()).unwrap().queue;
    let publish = |i| vhost.enqueue(message(i), &mut vec![q.clone()]);
    for i in 0..5_000 {
        publish(i);
    }
    assert!(!q.under_pressure(), "no consumer: filling a backlog is not throttled");
    q.add_consumer(consumer()).unwrap();
    // The consumer holds its 10; 4,990 wait, more than the 4,096 kept in memory.
    publish(5_000);
    assert!(q.under_pressure(), "{} ready, past the hot head", q.message_count());
    while q.message_count() > 4_000 {
        q.get(true).unwrap();
    }
    publish(5_001);
    assert!(!q.under_pressure(), "{} ready: within the hot head", q.message_count());
    drop(broker);
    let _ = std::fs::remove_dir_all(&d);
}
