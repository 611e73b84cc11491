//! Durability across restarts: clean shutdown and kill -9. These restart
//! the broker, so they always run against a Warren process of their own.

mod common;

use std::time::Duration;

use common::{amqp_error, TestBroker};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f).await.expect("timed out")
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn get_all(ch: &lapin::Channel, q: &str) -> Vec<(String, bool)> {
    let mut v = vec![];
    while let Some(m) = ch.basic_get(q.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        v.push((String::from_utf8(m.delivery.data).unwrap(), m.delivery.redelivered));
    }
    v
}

async fn exists(conn: &lapin::Connection, queue: &str) -> bool {
    let ch = conn.create_channel().await.unwrap();
    match ch
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
    {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(amqp_error(&e).unwrap().0, 404);
            false
        }
    }
}

#[tokio::test]
async fn topology_survives_restart_and_transient_does_not() {
    let mut b = TestBroker::spawn();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(5));
        ch.exchange_declare(
            "dx".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare("dq".into(), QueueDeclareOptions { durable: true, ..Default::default() }, args.clone())
            .await
            .unwrap();
        ch.queue_bind("dq".into(), "dx".into(), "a.*".into(), QueueBindOptions::default(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare("tq".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
        ch.queue_declare(
            "xq".into(),
            QueueDeclareOptions { durable: true, exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            "tx".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    })
    .await;
    b.crash_and_restart();
    with_timeout(async {
        let conn = b.connect().await;
        assert!(exists(&conn, "dq").await);
        assert!(!exists(&conn, "tq").await, "transient queue survived");
        assert!(!exists(&conn, "xq").await, "exclusive queue survived");
        let ch = conn.create_channel().await.unwrap();
        let e = ch
            .exchange_declare(
                "tx".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(amqp_error(&e).unwrap().0, 404);
        // The binding survived, and the arguments too (a different one is 406).
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        ch.basic_publish(
            "dx".into(),
            "a.b".into(),
            BasicPublishOptions::default(),
            b"routed",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        assert_eq!(get_all(&ch, "dq").await, [("routed".to_string(), false)]);
        let mut other = FieldTable::default();
        other.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(6));
        let e = ch
            .queue_declare("dq".into(), QueueDeclareOptions { durable: true, ..Default::default() }, other)
            .await
            .unwrap_err();
        assert_eq!(amqp_error(&e).unwrap().0, 406);
    })
    .await;
}

#[tokio::test]
async fn confirmed_persistent_messages_survive_kill_9_in_order() {
    let mut b = TestBroker::spawn();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        for q in ["d1", "d2"] {
            ch.queue_declare(
                q.into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.queue_bind(q.into(), "amq.fanout".into(), "".into(), QueueBindOptions::default(), FieldTable::default())
                .await
                .unwrap();
        }
        for i in 0..200 {
            let props = if i % 10 == 9 { BasicProperties::default() } else { persistent() };
            ch.basic_publish(
                "amq.fanout".into(),
                "".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                props,
            )
            .await
            .unwrap();
        }
        ch.wait_for_confirms().await.unwrap();
    })
    .await;
    b.crash_and_restart();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let expect: Vec<(String, bool)> = (0..200).filter(|i| i % 10 != 9).map(|i| (format!("m{i}"), false)).collect();
        assert_eq!(get_all(&ch, "d1").await, expect);
        assert_eq!(get_all(&ch, "d2").await, expect);
    })
    .await;
}

#[tokio::test]
async fn acked_messages_stay_gone_and_unacked_come_back_redelivered() {
    let mut b = TestBroker::spawn();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        ch.queue_declare(
            "rq".into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        for i in 0..6 {
            ch.basic_publish(
                "".into(),
                "rq".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                persistent(),
            )
            .await
            .unwrap();
        }
        ch.wait_for_confirms().await.unwrap();
        // m0, m1 acked; m2, m3 delivered and left unacked; m4, m5 never delivered.
        let cch = conn.create_channel().await.unwrap();
        for _ in 0..4 {
            cch.basic_get("rq".into(), BasicGetOptions { no_ack: false }).await.unwrap().unwrap();
        }
        cch.basic_ack(2, BasicAckOptions { multiple: true }).await.unwrap();
        // Make sure the ack was processed before stopping.
        cch.queue_declare(
            "rq".into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    })
    .await;
    // A clean stop flushes the lazily written acks and deliveries.
    b.stop_and_restart();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let got = get_all(&ch, "rq").await;
        assert_eq!(
            got,
            [("m2".to_string(), true), ("m3".to_string(), true), ("m4".to_string(), false), ("m5".to_string(), false)]
        );
    })
    .await;
}

#[tokio::test]
async fn deleted_durable_queue_stays_deleted() {
    let mut b = TestBroker::spawn();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        ch.queue_declare(
            "gone".into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.basic_publish("".into(), "gone".into(), BasicPublishOptions::default(), b"x", persistent())
            .await
            .unwrap()
            .await
            .unwrap();
        ch.queue_delete("gone".into(), QueueDeleteOptions::default()).await.unwrap();
        ch.queue_declare(
            "gone".into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    })
    .await;
    b.crash_and_restart();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        assert!(exists(&conn, "gone").await);
        assert_eq!(get_all(&ch, "gone").await, []);
    })
    .await;
}

/// Publishers with confirms and consumers with manual acks run while the
/// broker is killed with SIGKILL at random moments and restarted. After the
/// last restart, every message that was confirmed and not acked is there,
/// in publish order. `WARREN_CRASH_CYCLES` sets the number of cycles.
#[tokio::test]
async fn crash_loop_loses_no_confirmed_message() {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    let cycles: usize = std::env::var("WARREN_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // Small log segments, so that segment deletion and compaction run
    // (and get killed) all the time.
    let (dir, port) = TestBroker::fresh();
    let mut b = TestBroker::spawn_env(dir, port, &[("WARREN_LOG_SEGMENT_BYTES", "262144")]);
    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut next_id: u64 = 0;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for cycle in 0..cycles {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(
            "crash".into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        // Consumer: acks every message it gets.
        let cch = conn.create_channel().await.unwrap();
        cch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
        let mut consumer = cch
            .basic_consume("crash".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap();
        let acked2 = acked.clone();
        let consume = tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let id: u64 = String::from_utf8(d.data.clone()).unwrap().parse().unwrap();
                // Slower than the publisher, so a backlog builds up across crashes.
                tokio::time::sleep(Duration::from_micros(500)).await;
                if d.ack(BasicAckOptions::default()).await.is_err() {
                    break;
                }
                acked2.lock().unwrap().insert(id);
            }
        });
        // Publisher: confirms, a window of 100 outstanding.
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let confirmed2 = confirmed.clone();
        let published = Arc::new(std::sync::atomic::AtomicU64::new(next_id));
        let published2 = published.clone();
        let publish = tokio::spawn(async move {
            let mut id = published2.load(std::sync::atomic::Ordering::SeqCst);
            let mut window = std::collections::VecDeque::new();
            loop {
                let Ok(c) = ch
                    .basic_publish(
                        "".into(),
                        "crash".into(),
                        BasicPublishOptions::default(),
                        id.to_string().as_bytes(),
                        persistent(),
                    )
                    .await
                else {
                    break;
                };
                window.push_back((id, c));
                id += 1;
                published2.store(id, std::sync::atomic::Ordering::SeqCst);
                if window.len() >= 100 {
                    let (wid, c) = window.pop_front().unwrap();
                    match c.await {
                        Ok(conf) if conf.is_ack() => {
                            confirmed2.lock().unwrap().insert(wid);
                        }
                        _ => break,
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300 + rand(700))).await;
        b.crash_and_restart();
        // The client tasks may not notice the dead connection at once: stop them.
        tokio::time::sleep(Duration::from_millis(100)).await;
        publish.abort();
        consume.abort();
        let _ = publish.await;
        let _ = consume.await;
        next_id = published.load(std::sync::atomic::Ordering::SeqCst) + 1;
        eprintln!(
            "cycle {cycle}: {} confirmed, {} acked so far",
            confirmed.lock().unwrap().len(),
            acked.lock().unwrap().len()
        );
    }
    // Drain what is left.
    let conn = b.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut left = vec![];
    while let Some(m) = ch.basic_get("crash".into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        left.push(String::from_utf8(m.delivery.data).unwrap().parse::<u64>().unwrap());
    }
    let left_set: BTreeSet<u64> = left.iter().copied().collect();
    let confirmed = confirmed.lock().unwrap();
    let acked = acked.lock().unwrap();
    let missing: Vec<_> = confirmed.iter().filter(|id| !acked.contains(id) && !left_set.contains(id)).collect();
    eprintln!(
        "crash loop: {cycles} cycles, {} confirmed, {} acked, {} left, {} missing",
        confirmed.len(),
        acked.len(),
        left.len(),
        missing.len()
    );
    assert!(confirmed.len() > 100 * cycles, "too little traffic to mean anything");
    assert!(missing.is_empty(), "confirmed messages lost: {missing:?}");
    assert!(left.windows(2).all(|w| w[0] < w[1]), "messages out of publish order after restart");
}

#[tokio::test]
async fn message_ttl_keeps_running_across_a_restart() {
    let mut b = TestBroker::spawn();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(2000));
        ch.queue_declare("ttlq".into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
            .await
            .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        ch.basic_publish("".into(), "ttlq".into(), BasicPublishOptions::default(), b"short-lived", persistent())
            .await
            .unwrap()
            .await
            .unwrap();
    })
    .await;
    b.crash_and_restart();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let count = || async {
            ch.queue_declare(
                "ttlq".into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
        };
        assert_eq!(count().await, 1, "expired too early (or lost)");
        let mut left = 1;
        for _ in 0..100 {
            left = count().await;
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(left, 0, "recovered message never expired");
    })
    .await;
}

#[tokio::test]
async fn quorum_delivery_count_survives_kill_9() {
    let mut b = TestBroker::spawn();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare("qq".into(), QueueDeclareOptions { durable: true, ..Default::default() }, args.clone())
            .await
            .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        ch.basic_publish("".into(), "qq".into(), BasicPublishOptions::default(), b"counted", persistent())
            .await
            .unwrap()
            .await
            .unwrap();
        for _ in 0..2 {
            let m = ch.basic_get("qq".into(), BasicGetOptions { no_ack: false }).await.unwrap().unwrap();
            m.delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.unwrap();
        }
        // Let the lazily written delivery records reach the log (the next
        // sync carries them): one more confirmed publish forces one.
        ch.basic_publish("".into(), "qq".into(), BasicPublishOptions::default(), b"sync", persistent())
            .await
            .unwrap()
            .await
            .unwrap();
    })
    .await;
    b.crash_and_restart();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let m = ch.basic_get("qq".into(), BasicGetOptions { no_ack: true }).await.unwrap().unwrap();
        assert_eq!(m.delivery.data, b"counted");
        assert!(m.delivery.redelivered);
        let headers = m.delivery.properties.headers().clone().unwrap();
        assert_eq!(headers.inner().get("x-delivery-count"), Some(&AMQPValue::LongLongInt(2)));
    })
    .await;
}

#[tokio::test]
async fn users_vhosts_permissions_and_limits_survive_kill_9() {
    let mut b = TestBroker::spawn();
    for args in [
        &["add_user", "carol", "carol-pw"][..],
        &["set_user_tags", "carol", "monitoring"],
        &["add_vhost", "v2"],
        &["set_permissions", "-p", "v2", "carol", "^c-", ".*", ".*"],
        &["set_vhost_limits", "-p", "v2", r#"{"max-queues": 1}"#],
        &["delete_user", "guest"],
    ] {
        let (code, out, err) = b.ctl(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    b.crash_and_restart();
    let (_, users, _) = b.ctl(&["list_users", "-q"]);
    assert_eq!(users, "user\ttags\ncarol\t[monitoring]\n");
    let (_, perms, _) = b.ctl(&["list_permissions", "-q", "-p", "v2"]);
    assert_eq!(perms, "user\tconfigure\twrite\tread\ncarol\t^c-\t.*\t.*\n");
    let (_, limits, _) = b.ctl(&["list_vhost_limits", "-q", "-p", "v2"]);
    assert_eq!(limits, "{\"max-queues\":1}\n");
    with_timeout(async {
        let url = format!("amqp://carol:carol-pw@{}/v2", b.addr);
        let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare("c-1".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
        let e =
            ch.queue_declare("x-1".into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap_err();
        assert_eq!(amqp_error(&e).unwrap().0, 403, "configure permission kept");
        let guest = lapin::Connection::connect(&b.url(), lapin::ConnectionProperties::default()).await;
        assert!(guest.is_err(), "guest was deleted before the crash");
    })
    .await;
}

#[test]
fn a_second_broker_on_the_same_data_dir_refuses_to_start() {
    let b = TestBroker::spawn();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "--amqp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--prometheus-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(b.data_dir.as_ref().unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is in use by another running broker"), "{err}");
}
