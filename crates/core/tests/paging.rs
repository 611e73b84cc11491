//! Disk-first queues: a durable queue's backlog lives in the message log,
//! not in memory, and comes back in order — across a restart too.

use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::Bytes;
use warren_core::{Broker, Message, Queue, VHost};
use warren_protocol::FieldTable;

/// A scratch directory, removed when the returned guard is dropped.
fn dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("warren-paging-{name}-")).tempdir().unwrap()
}

fn message(body: String, persistent: bool) -> Arc<Message> {
    let props = AMQPProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    let raw = warren_protocol::content::encode_properties(&props);
    Arc::new(Message::new("".into(), "q".into(), raw, props, Bytes::from(body)))
}

fn declare(vhost: &Arc<VHost>) -> Arc<Queue> {
    vhost.declare_queue(1, "q", false, true, false, false, FieldTable::default()).unwrap().queue
}

fn publish(vhost: &VHost, q: &Arc<Queue>, body: String, persistent: bool) -> u64 {
    vhost.enqueue(message(body, persistent), &mut vec![q.clone()]).0
}

/// Publishes `n` persistent messages named `{prefix}{i}`; returns the log
/// position to wait for.
fn fill(vhost: &VHost, q: &Arc<Queue>, prefix: &str, n: usize) -> u64 {
    (0..n).map(|i| publish(vhost, q, format!("{prefix}{i}"), true)).max().unwrap_or(0)
}

fn wait_synced(broker: &Broker, pos: u64) {
    let log = broker.log().unwrap();
    for _ in 0..5000 {
        if log.synced() >= pos {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("log never synced to {pos}");
}

fn drain(q: &Queue) -> Vec<String> {
    let mut out = Vec::new();
    while let Some((e, remaining)) = q.get(true) {
        out.push(String::from_utf8(e.message.body.contiguous().to_vec()).unwrap());
        assert_eq!(remaining as usize + out.len(), out.len() + q.message_count() as usize);
    }
    out
}

#[test]
fn backlog_is_paged_out_and_read_back_in_order() {
    let scratch = dir("order");
    let d = scratch.path().to_path_buf();
    let broker = Broker::open(&d).unwrap();
    let vhost = broker.vhost("/").unwrap();
    let q = declare(&vhost);
    let mut want = Vec::new();
    let mut pos = 0;
    for i in 0..20_000 {
        // Transient messages in between keep their place (held in memory).
        let persistent = i % 97 != 0;
        let body = format!("m{i}");
        pos = pos.max(publish(&vhost, &q, body.clone(), persistent));
        want.push(body);
    }
    wait_synced(&broker, pos);
    q.settle_paged();
    let (in_memory, paged) = q.paged_count();
    assert!(in_memory <= 4096, "{in_memory} in memory");
    assert_eq!(in_memory + paged, 20_000);
    assert_eq!(q.message_count(), 20_000);
    assert_eq!(drain(&q), want);
}

#[test]
fn paged_backlog_survives_a_restart_and_purge_leaves_nothing() {
    let scratch = dir("restart");
    let d = scratch.path().to_path_buf();
    {
        let broker = Broker::open(&d).unwrap();
        let vhost = broker.vhost("/").unwrap();
        let q = declare(&vhost);
        let pos = fill(&vhost, &q, "m", 12_000);
        // Take a few (acked with no_ack): they must not come back.
        for i in 0..10 {
            assert_eq!(&q.get(true).unwrap().0.message.body.contiguous()[..], format!("m{i}").as_bytes());
        }
        wait_synced(&broker, pos);
        broker.log().unwrap().close_and_join();
    }
    let broker = Broker::open(&d).unwrap();
    let q = broker.vhost("/").unwrap().queue("q").unwrap();
    let (in_memory, paged) = q.paged_count();
    assert!(in_memory <= 4096 && paged > 0, "{in_memory} in memory, {paged} paged");
    let got = drain(&q);
    assert_eq!(got.len(), 11_990);
    assert!(got.iter().enumerate().all(|(i, b)| *b == format!("m{}", i + 10)));
    // Purge of a paged queue acks everything: nothing returns after a restart.
    let vhost = broker.vhost("/").unwrap();
    let pos = fill(&vhost, &q, "p", 9000);
    wait_synced(&broker, pos);
    assert_eq!(q.purge(), 9000);
    let (_, end) = broker.log().unwrap().publish(&["other"], 0, "", "", &[0, 0], b"flush");
    wait_synced(&broker, end);
    broker.log().unwrap().close_and_join();
    drop(broker);
    let broker = Broker::open(&d).unwrap();
    assert_eq!(broker.vhost("/").unwrap().queue("q").unwrap().message_count(), 0);
}

#[test]
fn paged_messages_expire_and_count_against_length_limits() {
    let scratch = dir("ttl");
    let d = scratch.path().to_path_buf();
    let broker = Broker::open(&d).unwrap();
    let vhost = broker.vhost("/").unwrap();
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), warren_protocol::AMQPValue::LongInt(200));
    let q = vhost.declare_queue(1, "ttl", false, true, false, false, args).unwrap().queue;
    for i in 0..10_000 {
        publish(&vhost, &q, format!("t{i}"), true);
    }
    assert!(q.paged_count().1 > 0);
    std::thread::sleep(Duration::from_millis(300));
    q.expire();
    assert_eq!(q.message_count(), 0, "paged messages expire too");

    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), warren_protocol::AMQPValue::LongInt(6000));
    let q = vhost.declare_queue(1, "capped", false, true, false, false, args).unwrap().queue;
    for i in 0..10_000 {
        publish(&vhost, &q, format!("c{i}"), true);
    }
    assert_eq!(q.message_count(), 6000);
    let got = drain(&q);
    assert_eq!(got.first().map(String::as_str), Some("c4000"), "drop-head dropped the oldest");
    assert_eq!(got.last().map(String::as_str), Some("c9999"));
}

#[test]
fn priority_queues_page_out_per_level_and_serve_highest_first() {
    let scratch = dir("priority");
    let d = scratch.path().to_path_buf();
    let broker = Broker::open(&d).unwrap();
    let vhost = broker.vhost("/").unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), warren_protocol::AMQPValue::ShortShortUInt(5));
    let q = vhost.declare_queue(1, "prio", false, true, false, false, args).unwrap().queue;
    let mut want: Vec<(u8, String)> = Vec::new();
    let mut pos = 0;
    for i in 0..12_000u32 {
        let priority = ((i * 7) % 6) as u8;
        let props = AMQPProperties::default().with_delivery_mode(2).with_priority(priority);
        let raw = warren_protocol::content::encode_properties(&props);
        let body = format!("p{priority}-{i}");
        let m = Arc::new(Message::new("".into(), "prio".into(), raw, props, Bytes::from(body.clone())));
        pos = pos.max(vhost.enqueue(m, &mut vec![q.clone()]).0);
        want.push((priority, body));
    }
    wait_synced(&broker, pos);
    let (in_memory, paged) = q.paged_count();
    assert!(in_memory <= 4096 && paged > 0, "{in_memory} in memory, {paged} paged");
    // Highest priority first, publish order within a level.
    want.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
    let want: Vec<String> = want.into_iter().map(|(_, b)| b).collect();
    assert_eq!(drain(&q), want);
}

#[test]
fn deleting_a_paged_queue_needs_no_reads_and_nothing_comes_back() {
    let scratch = dir("delete");
    let d = scratch.path().to_path_buf();
    {
        let broker = Broker::open(&d).unwrap();
        let vhost = broker.vhost("/").unwrap();
        let q = declare(&vhost);
        let pos = fill(&vhost, &q, "d", 10_000);
        wait_synced(&broker, pos);
        assert!(q.paged_count().1 > 0);
        assert_eq!(vhost.delete_queue(1, "q", false, false).unwrap(), 10_000);
        let (_, end) = broker.log().unwrap().publish(&["other"], 0, "", "", &[0, 0], b"flush");
        wait_synced(&broker, end);
        broker.log().unwrap().close_and_join();
    }
    let broker = Broker::open(&d).unwrap();
    let vhost = broker.vhost("/").unwrap();
    assert!(vhost.queue("q").is_err(), "the queue stays deleted");
    // Declared again, it starts empty: the old messages do not come back.
    assert_eq!(declare(&vhost).message_count(), 0);
    // Its flusher is done with the files before the directory goes.
    broker.log().unwrap().close_and_join();
}
