//! The management API through the Rust `rabbitmq_http_client` crate (the
//! library behind rabbitmqadmin v2): its typed responses must deserialize
//! from Warren's JSON, and its declarations must take effect over AMQP.
//! Runs against RabbitMQ too (WARREN_TEST_ADDR, WARREN_TEST_HTTP).

mod common;

use common::TestBroker;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use rabbitmq_http_client::blocking_api::Client;
use rabbitmq_http_client::requests::{ExchangeParams, QueueParams};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64
}

#[test]
fn lists_and_declares_with_rabbitmq_http_client() {
    let broker = TestBroker::start();
    let endpoint = format!("{}/api", broker.http);
    let rc = Client::new(&endpoint, "guest", "guest");
    let name = unique("rhc-q");
    let mut args = serde_json::Map::new();
    args.insert("x-max-length".into(), serde_json::json!(1000));
    rc.declare_queue("/", &QueueParams::new_durable_classic_queue(&name, Some(args))).expect("declare queue");
    let x = unique("rhc-x");
    rc.declare_exchange("/", &ExchangeParams::durable_fanout(&x, None)).expect("declare exchange");
    rc.bind_queue("/", &name, &x, None, None).expect("bind");

    // Over AMQP the queue is there, with its arguments (a passive declare
    // would fail otherwise; an inequivalent one would be refused).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut a = FieldTable::default();
        a.insert("x-max-length".into(), lapin::types::AMQPValue::LongLongInt(1000));
        ch.queue_declare(name.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, a)
            .await
            .expect("the queue declared over HTTP, seen over AMQP");
        conn.close(200, "bye".into()).await.unwrap();
    });

    let queues = rc.list_queues().expect("list queues");
    assert!(queues.iter().any(|q| q.name == name && q.durable), "{name} listed");
    let info = rc.get_queue_info("/", &name).expect("queue info");
    assert_eq!(info.name, name);
    assert!(rc.list_exchanges().expect("list exchanges").iter().any(|e| e.name == x));
    let bindings = rc.list_queue_bindings("/", &name).expect("bindings");
    assert!(bindings.iter().any(|b| b.source == x));
    assert!(!rc.list_vhosts().expect("vhosts").is_empty());
    assert!(rc.list_users().expect("users").iter().any(|u| u.name == "guest"));
    rc.list_connections().expect("connections");
    rc.list_channels().expect("channels");
    rc.list_consumers().expect("consumers");
    rc.overview().expect("overview");
    if broker.is_warren() {
        // This client reads fields RabbitMQ 4 added (`being_drained`):
        // RabbitMQ 3.10's own answer fails to decode here.
        rc.list_nodes().expect("nodes");
    }
    rc.list_policies().expect("policies");

    rc.delete_queue("/", &name, false).expect("delete queue");
    rc.delete_exchange("/", &x, false).expect("delete exchange");
    assert!(rc.get_queue_info("/", &name).is_err(), "gone");
}
