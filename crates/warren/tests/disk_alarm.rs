//! Resource alarms. The disk alarm: when the message log cannot write (here: a fault
//! injected with WARREN_FAULT_LOG_WRITE_LIMIT), publishers get
//! `connection.blocked`, unconfirmed messages stay unconfirmed, and the broker
//! keeps serving consumers. The memory alarm: above
//! `--memory-high-watermark`, the same with "low on memory". Free disk space
//! below `--disk-free-limit`: "low on disk" again. Warren-only: they need
//! the fault knobs or limits no real machine meets.

mod common;

use std::time::Duration;

use common::TestBroker;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

// Needs the WARREN_FAULT_LOG_WRITE_LIMIT knob: built with the `fault-injection`
// feature (scripts/test.sh), else left out.
#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn failing_disk_blocks_publishers_and_keeps_serving_consumers() {
    let (dir, port) = TestBroker::fresh();
    let b = TestBroker::spawn_env(dir, port, &[("WARREN_FAULT_LOG_WRITE_LIMIT", "200000")]);
    tokio::time::timeout(Duration::from_secs(60), async {
        let publisher = b.connect().await;
        let mut events = publisher.events_listener();
        let ch = publisher.create_channel().await.unwrap();
        ch.queue_declare(
            "full".into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare("free".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        // A transient message: memory only, unaffected by the disk.
        ch.basic_publish(
            "".into(),
            "free".into(),
            BasicPublishOptions::default(),
            b"still here",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        // Persistent messages until the log runs out of (injected) space.
        let ch2 = ch.clone();
        let flood = tokio::spawn(async move {
            let body = vec![7u8; 1024];
            for _ in 0..2000 {
                let props = BasicProperties::default().with_delivery_mode(2);
                if ch2
                    .basic_publish("".into(), "full".into(), BasicPublishOptions::default(), &body, props)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let reason = loop {
            match events.next().await.expect("connection events") {
                lapin::Event::ConnectionBlocked(reason) => break reason,
                _ => continue,
            }
        };
        assert_eq!(reason, "low on disk");
        // What could not be written is not confirmed.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), ch.wait_for_confirms()).await.is_err(),
            "confirms arrived for messages that are not on disk"
        );
        // Consumers are still served, on another connection.
        let consumer = b.connect().await;
        let cch = consumer.create_channel().await.unwrap();
        let got = cch.basic_get("free".into(), BasicGetOptions { no_ack: true }).await.unwrap().expect("a message");
        assert_eq!(got.delivery.data, b"still here");
        flood.abort();
    })
    .await
    .expect("timed out");
}

/// Declares `queue`, publishes "first" to it (only publishers are blocked,
/// after their first publish) and waits for `connection.blocked` among the
/// connection's `events`; returns the reason.
async fn publish_until_blocked(
    publisher: &lapin::Connection,
    events: &mut (impl futures_lite::Stream<Item = lapin::Event> + Unpin),
    queue: &str,
) -> String {
    let ch = publisher.create_channel().await.unwrap();
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), b"first", BasicProperties::default())
        .await
        .unwrap();
    loop {
        if let lapin::Event::ConnectionBlocked(reason) = events.next().await.expect("connection events") {
            return reason.to_string();
        }
    }
}

#[tokio::test]
async fn memory_alarm_blocks_publishers_and_keeps_serving_consumers() {
    // A watermark of 1 MiB (RabbitMQ's unit forms): the broker is over it from the start.
    let (dir, port) = TestBroker::fresh();
    let b = TestBroker::spawn_env(dir, port, &[("WARREN_MEMORY_HIGH_WATERMARK", "1MiB")]);
    tokio::time::timeout(Duration::from_secs(60), async {
        let publisher = b.connect().await;
        let mut events = publisher.events_listener();
        assert_eq!(publish_until_blocked(&publisher, &mut events, "mem").await, "low on memory");
        let consumer = b.connect().await;
        let cch = consumer.create_channel().await.unwrap();
        let got = cch.basic_get("mem".into(), BasicGetOptions { no_ack: true }).await.unwrap().expect("a message");
        assert_eq!(got.delivery.data, b"first");
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn free_space_below_the_disk_free_limit_blocks_publishers() {
    // More free space than any disk has: the alarm holds from the start.
    let (dir, port) = TestBroker::fresh();
    let b = TestBroker::spawn_env(dir, port, &[("WARREN_DISK_FREE_LIMIT", "1000000TB")]);
    tokio::time::timeout(Duration::from_secs(60), async {
        let publisher = b.connect().await;
        let mut events = publisher.events_listener();
        assert_eq!(publish_until_blocked(&publisher, &mut events, "d").await, "low on disk");
        // Lowered live, as with rabbitmqctl: the publisher is unblocked.
        let (code, out, err) = b.ctl(&["set_disk_free_limit", "50MB"]);
        assert_eq!(code, 0, "{out}{err}");
        loop {
            if let lapin::Event::ConnectionUnblocked = events.next().await.expect("connection events") {
                break;
            }
        }
    })
    .await
    .expect("timed out");
}
