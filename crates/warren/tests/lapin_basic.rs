//! Behaviour tests with lapin. Each also runs against RabbitMQ when
//! `WARREN_TEST_ADDR` points at one.

mod common;

use std::time::Duration;

use common::{amqp_error, unique, TestBroker};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, ExchangeKind};

async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("timed out")
}

fn all_types_table() -> FieldTable {
    let mut inner = FieldTable::default();
    inner.insert("nested".into(), AMQPValue::LongString("yes".into()));
    let mut t = FieldTable::default();
    t.insert("bool".into(), AMQPValue::Boolean(true));
    t.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    t.insert("i16".into(), AMQPValue::ShortInt(-16));
    t.insert("i32".into(), AMQPValue::LongInt(-32));
    t.insert("i64".into(), AMQPValue::LongLongInt(-64));
    t.insert("f32".into(), AMQPValue::Float(1.5));
    t.insert("f64".into(), AMQPValue::Double(2.25));
    t.insert("str".into(), AMQPValue::LongString("héllo".into()));
    t.insert("ts".into(), AMQPValue::Timestamp(1_700_000_000));
    t.insert("table".into(), AMQPValue::FieldTable(inner));
    let mut arr = FieldArray::default();
    arr.push(AMQPValue::LongInt(1));
    arr.push(AMQPValue::LongString("two".into()));
    t.insert("array".into(), AMQPValue::FieldArray(arr));
    t.insert("void".into(), AMQPValue::Void);
    t.insert("bytes".into(), AMQPValue::ByteArray(vec![0u8, 1, 2, 255].into()));
    t
}

#[tokio::test]
async fn properties_and_field_tables_round_trip() {
    let b = TestBroker::start();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(all_types_table())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("corr".into())
            .with_reply_to("reply".into())
            .with_expiration("60000".into())
            .with_message_id("mid".into())
            .with_timestamp(1_600_000_000)
            .with_type("kind".into())
            .with_user_id("guest".into())
            .with_app_id("app".into());
        ch.basic_publish("".into(), q.name().clone(), BasicPublishOptions::default(), b"payload", props.clone())
            .await
            .unwrap();
        let got = loop {
            if let Some(m) = ch.basic_get(q.name().clone(), BasicGetOptions { no_ack: true }).await.unwrap() {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(got.delivery.data, b"payload");
        assert_eq!(got.delivery.properties, props);
        assert_eq!(got.delivery.routing_key.as_str(), q.name().as_str());
        assert_eq!(got.message_count, 0);
    })
    .await;
}

#[tokio::test]
async fn consume_with_prefetch_and_requeue_on_close() {
    let b = TestBroker::start();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let name = unique("prefetch");
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions { auto_delete: false, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        for i in 0..10 {
            ch.basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        }
        ch.wait_for_confirms().await.unwrap();

        let cch = conn.create_channel().await.unwrap();
        cch.basic_qos(3, BasicQosOptions::default()).await.unwrap();
        let mut consumer = cch
            .basic_consume(name.as_str().into(), "c1".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap();
        let mut got = vec![];
        for _ in 0..3 {
            let d = consumer.next().await.unwrap().unwrap();
            assert!(!d.redelivered);
            got.push(d);
        }
        // Prefetch 3: nothing more arrives until an ack.
        assert!(tokio::time::timeout(Duration::from_millis(300), consumer.next()).await.is_err());
        got[0].ack(BasicAckOptions::default()).await.unwrap();
        let d4 = consumer.next().await.unwrap().unwrap();
        assert_eq!(d4.data, b"m3");
        // Close the channel with m1, m2, m3 unacked: they come back, in order, redelivered.
        cch.close(200, "bye".into()).await.unwrap();
        let ch2 = conn.create_channel().await.unwrap();
        let mut order = vec![];
        while let Some(m) = ch2.basic_get(name.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap() {
            order.push((String::from_utf8(m.delivery.data.clone()).unwrap(), m.delivery.redelivered));
        }
        let expect: Vec<(String, bool)> = (1..10).map(|i| (format!("m{i}"), i <= 3)).collect();
        assert_eq!(order, expect);
        ch2.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn round_robin_between_consumers() {
    let b = TestBroker::start();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let name = unique("rr");
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions { exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut c1 = ch
            .basic_consume(
                name.as_str().into(),
                "a".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut c2 = ch
            .basic_consume(
                name.as_str().into(),
                "b".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        for i in 0..10 {
            ch.basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        }
        let mut a = vec![];
        let mut bb = vec![];
        for _ in 0..5 {
            a.push(String::from_utf8(c1.next().await.unwrap().unwrap().data).unwrap());
            bb.push(String::from_utf8(c2.next().await.unwrap().unwrap().data).unwrap());
        }
        assert_eq!(a, ["0", "2", "4", "6", "8"]);
        assert_eq!(bb, ["1", "3", "5", "7", "9"]);
    })
    .await;
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_then_confirmed() {
    let b = TestBroker::start();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let confirm = ch
            .basic_publish(
                "".into(),
                unique("nowhere").as_str().into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                b"lost",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        let returned = confirm.take_message().expect("basic.return");
        assert_eq!(returned.reply_code, 312);
        assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
        assert_eq!(returned.delivery.data, b"lost");
    })
    .await;
}

async fn declare_bound(ch: &lapin::Channel, exchange: &str, key: &str, args: FieldTable) -> String {
    let q = ch
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(q.name().clone(), exchange.into(), key.into(), QueueBindOptions::default(), args).await.unwrap();
    q.name().to_string()
}

async fn drain(ch: &lapin::Channel, q: &str) -> Vec<String> {
    let mut v = vec![];
    while let Some(m) = ch.basic_get(q.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        v.push(String::from_utf8(m.delivery.data).unwrap());
    }
    v
}

#[tokio::test]
async fn exchange_types_route_as_rabbitmq() {
    let b = TestBroker::start();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let topic = unique("topic");
        ch.exchange_declare(
            topic.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let q_orange = declare_bound(&ch, &topic, "*.orange.*", FieldTable::default()).await;
        let q_lazy = declare_bound(&ch, &topic, "lazy.#", FieldTable::default()).await;
        for key in ["quick.orange.rabbit", "lazy.orange.elephant", "lazy", "quick.brown.fox", "lazy.pink.rabbit"] {
            ch.basic_publish(
                topic.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                key.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        }
        ch.wait_for_confirms().await.unwrap();
        assert_eq!(drain(&ch, &q_orange).await, ["quick.orange.rabbit", "lazy.orange.elephant"]);
        assert_eq!(drain(&ch, &q_lazy).await, ["lazy.orange.elephant", "lazy", "lazy.pink.rabbit"]);

        let headers = unique("headers");
        ch.exchange_declare(
            headers.as_str().into(),
            ExchangeKind::Headers,
            ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut all = FieldTable::default();
        all.insert("format".into(), AMQPValue::LongString("pdf".into()));
        all.insert("type".into(), AMQPValue::LongString("report".into()));
        let mut any = all.clone();
        any.insert("x-match".into(), AMQPValue::LongString("any".into()));
        let q_all = declare_bound(&ch, &headers, "", all).await;
        let q_any = declare_bound(&ch, &headers, "", any).await;
        for (body, fmt, ty) in [("both", "pdf", "report"), ("one", "pdf", "log"), ("none", "zip", "log")] {
            let mut h = FieldTable::default();
            h.insert("format".into(), AMQPValue::LongString(fmt.into()));
            h.insert("type".into(), AMQPValue::LongString(ty.into()));
            ch.basic_publish(
                headers.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_headers(h),
            )
            .await
            .unwrap();
        }
        ch.wait_for_confirms().await.unwrap();
        assert_eq!(drain(&ch, &q_all).await, ["both"]);
        assert_eq!(drain(&ch, &q_any).await, ["both", "one"]);

        // Exchange-to-exchange: fanout → direct → queue.
        let fan = unique("fan");
        let direct = unique("direct");
        ch.exchange_declare(
            fan.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            direct.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_bind(
            direct.as_str().into(),
            fan.as_str().into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let q_red = declare_bound(&ch, &direct, "red", FieldTable::default()).await;
        let q_fan = declare_bound(&ch, &fan, "ignored", FieldTable::default()).await;
        for key in ["red", "blue"] {
            ch.basic_publish(
                fan.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                key.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        }
        ch.wait_for_confirms().await.unwrap();
        assert_eq!(drain(&ch, &q_red).await, ["red"]);
        assert_eq!(drain(&ch, &q_fan).await, ["red", "blue"]);
    })
    .await;
}

#[tokio::test]
async fn channel_errors_carry_rabbitmq_codes_and_texts() {
    let b = TestBroker::start();
    with_timeout(async {
        let conn = b.connect().await;
        let missing = unique("missing");
        let ch = conn.create_channel().await.unwrap();
        let e = ch
            .queue_declare(missing.as_str().into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
            .await
            .unwrap_err();
        assert_eq!(amqp_error(&e), Some((404, format!("NOT_FOUND - no queue '{missing}' in vhost '/'"))));

        let ch = conn.create_channel().await.unwrap();
        let name = unique("durable");
        ch.queue_declare(name.as_str().into(), QueueDeclareOptions { durable: false, auto_delete: true, ..Default::default() }, FieldTable::default())
            .await
            .unwrap();
        let e = ch
            .queue_declare(name.as_str().into(), QueueDeclareOptions { durable: true, auto_delete: true, ..Default::default() }, FieldTable::default())
            .await
            .unwrap_err();
        assert_eq!(
            amqp_error(&e),
            Some((406, format!("PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in vhost '/': received 'true' but current is 'false'")))
        );

        let ch = conn.create_channel().await.unwrap();
        let e = ch
            .exchange_declare(unique("x").as_str().into(), ExchangeKind::Direct, ExchangeDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
            .await
            .unwrap_err();
        assert_eq!(amqp_error(&e).unwrap().0, 404);

        let ch = conn.create_channel().await.unwrap();
        let e = ch
            .exchange_declare("amq.custom".into(), ExchangeKind::Direct, ExchangeDeclareOptions::default(), FieldTable::default())
            .await
            .unwrap_err();
        assert_eq!(
            amqp_error(&e),
            Some((403, "ACCESS_REFUSED - exchange name 'amq.custom' contains reserved prefix 'amq.*'".to_string()))
        );

        // The connection survives all of that.
        let ch = conn.create_channel().await.unwrap();
        ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
        assert!(conn.status().connected());
    })
    .await;
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection() {
    let b = TestBroker::start();
    with_timeout(async {
        let owner = b.connect().await;
        let other = b.connect().await;
        let name = unique("excl");
        let ch = owner.create_channel().await.unwrap();
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions { exclusive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let och = other.create_channel().await.unwrap();
        let e = och
            .basic_consume(name.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap_err();
        let (code, text) = amqp_error(&e).unwrap();
        assert_eq!(code, 405);
        assert!(
            text.starts_with(&format!(
                "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost '/'"
            )),
            "{text}"
        );
        owner.close(200, "bye".into()).await.unwrap();
        // The queue died with its connection.
        let och = other.create_channel().await.unwrap();
        let e = och
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(amqp_error(&e).unwrap().0, 404);
    })
    .await;
}

#[tokio::test]
async fn unknown_delivery_tag_closes_the_channel_with_406() {
    let b = TestBroker::start();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.basic_ack(42, BasicAckOptions::default()).await.unwrap();
        // The error arrives asynchronously as channel.close; the next call sees it.
        let e = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        let _ = amqp_error(&e);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!ch.status().connected());
        assert!(conn.status().connected());
    })
    .await;
}

#[tokio::test]
async fn transactions_commit_and_roll_back() {
    let b = TestBroker::start();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let q = q.name().to_string();
        ch.tx_select().await.unwrap();
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"rolled back",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        ch.tx_rollback().await.unwrap();
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"committed",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        let check = conn.create_channel().await.unwrap();
        assert!(check.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap().is_none());
        ch.tx_commit().await.unwrap();
        assert_eq!(drain(&check, &q).await, ["committed"]);
    })
    .await;
}

#[tokio::test]
async fn large_body_round_trips() {
    let b = TestBroker::start();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        let body: Vec<u8> = (0..(128u32 << 20)).map(|i| (i % 251) as u8).collect();
        ch.basic_publish(
            "".into(),
            q.name().clone(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let got = ch.basic_get(q.name().clone(), BasicGetOptions { no_ack: true }).await.unwrap().unwrap();
        assert_eq!(got.delivery.data.len(), body.len());
        assert!(got.delivery.data == body);
    })
    .await;
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let b = TestBroker::start();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let name = unique("cancelled");
        ch.queue_declare(name.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
        let mut consumer = ch
            .basic_consume(name.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap();
        let other = conn.create_channel().await.unwrap();
        other.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
        // The stream ends when the server cancels the consumer.
        assert!(consumer.next().await.is_none());
        assert!(ch.status().connected());
    })
    .await;
}

#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let b = TestBroker::start();
    with_timeout(async {
        let conn = b.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let name = unique("autodel");
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions { auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let c = ch
            .basic_consume(name.as_str().into(), "only".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap();
        ch.basic_cancel(c.tag(), BasicCancelOptions::default()).await.unwrap();
        let e = ch
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(amqp_error(&e).unwrap().0, 404);
    })
    .await;
}

#[tokio::test]
async fn sigterm_closes_clients_with_320_and_exits_zero() {
    // About the Warren process itself: always a fresh one.
    let mut b = TestBroker::spawn();
    with_timeout(async {
        let conn = b.connect().await;
        let mut events = conn.events_listener();
        b.signal(libc::SIGTERM);
        let err = loop {
            match events.next().await.expect("an event") {
                lapin::Event::Error(e) => break amqp_error(&e).expect("an AMQP error"),
                _ => continue,
            }
        };
        assert_eq!(err.0, 320);
        assert!(err.1.starts_with("CONNECTION_FORCED"), "{}", err.1);
    })
    .await;
    let status = b.child.as_mut().unwrap().wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _ = (ShortString::from("x"), LongString::from("y"));
}
