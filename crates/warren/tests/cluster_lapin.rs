//! Cluster failover with lapin: three Warren nodes on a real etcd (Debian's
//! etcd-server, started here on free ports; `scripts/etcd-env.sh` installs
//! it). Messages confirmed through a follower survive the leader's kill -9;
//! the client reconnects explicitly to another node and finds them all, in
//! order. Warren only (skipped when the suite targets another broker).

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestBroker;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A single-member etcd on free ports, killed (and its data removed) on drop.
struct Etcd {
    child: Child,
    data: std::path::PathBuf,
    url: String,
}

impl Etcd {
    fn start() -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let data = std::env::temp_dir().join(format!("warren-etcd-{}-{client}", std::process::id()));
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is missing: scripts/etcd-env.sh installs it");
        let etcd = Etcd { child, data, url };
        assert!(wait_until(Duration::from_secs(30), || etcd.healthy()), "etcd did not become healthy");
        etcd
    }

    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(self.url.trim_start_matches("http://")) else { return false };
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ok()
}

fn status(node: &TestBroker) -> Option<serde_json::Value> {
    let (code, out, _) = node.ctl(&["cluster_status"]);
    (code == 0).then(|| serde_json::from_str(&out[out.find('{')?..]).ok()).flatten()
}

/// The leader's index once every node is in its ISR.
fn leader_in_sync(nodes: &[TestBroker]) -> Option<usize> {
    let statuses: Vec<serde_json::Value> = nodes.iter().map(status).collect::<Option<_>>()?;
    let i = statuses.iter().position(|s| s["role"] == "leader")?;
    let isr = statuses[i]["isr"].as_array()?.len();
    let agreed = statuses.iter().all(|s| s["leader"] == statuses[i]["node"]);
    (agreed && isr == nodes.len()).then_some(i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_a_leader_kill_and_lapin_reconnects_to_another_node() {
    if std::env::var("WARREN_TEST_ADDR").is_ok() {
        return; // Warren's cluster mode: nothing to compare against
    }
    let etcd = Etcd::start();
    let cluster = common::unique("lapin");
    let nodes: Vec<TestBroker> = (0..3)
        .map(|i| {
            let (dir, port) = TestBroker::fresh();
            let name = format!("n{i}");
            TestBroker::spawn_env(
                dir,
                port,
                &[("WARREN_CLUSTER_ETCD", &etcd.url), ("WARREN_CLUSTER_NAME", &cluster), ("WARREN_NODE_NAME", &name)],
            )
        })
        .collect();
    let mut leader = None;
    assert!(wait_until(Duration::from_secs(30), || {
        leader = leader_in_sync(&nodes);
        leader.is_some()
    }));
    let leader = leader.unwrap();
    let follower = &nodes[(leader + 1) % 3];
    let other = &nodes[(leader + 2) % 3];

    // Through a follower (proxied to the leader), with confirms.
    let conn = follower.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("kept".into(), durable, FieldTable::default()).await.unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let mut confirmed = Vec::new();
    for i in 0..300u32 {
        let confirm = ch
            .basic_publish(
                "".into(),
                "kept".into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                persistent.clone(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        confirmed.push(i);
    }
    nodes[leader].signal(libc::SIGKILL);

    // Reconnect explicitly, to another node, until a new leader serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    let conn = loop {
        let attempt = Connection::connect(&other.url(), ConnectionProperties::default()).await;
        if let Ok(c) = attempt {
            if let Ok(ch) = c.create_channel().await {
                let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
                if ch.queue_declare("kept".into(), passive, FieldTable::default()).await.is_ok() {
                    break c;
                }
            }
        }
        assert!(Instant::now() < deadline, "no new leader served within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ch = conn.create_channel().await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = ch.basic_get("kept".into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        got.push(String::from_utf8(m.delivery.data).unwrap().parse::<u32>().unwrap());
    }
    assert_eq!(got, confirmed, "every confirmed message, in order");
    drop(etcd);
}
