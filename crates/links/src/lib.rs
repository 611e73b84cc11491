//! Warren's links to other brokers: dynamic shovels ([`shovel`]), as
//! RabbitMQ's shovel plugin runs them from `shovel` runtime parameters, and
//! federation links ([`federation`]), from upstreams and policies.
//! docs/shovel-federation.md describes them for operators.
//!
//! One supervisor ([`run`]) keeps the running links in step with the
//! parameters: it starts a link for each, stops the ones whose parameter
//! is gone, restarts the ones whose value changed or that the management
//! API asked to restart, and restarts a failed link after its reconnect
//! delay. Links run only where the broker is served (a cluster's leader),
//! so after a failover the new leader picks them up from the replicated
//! definitions. Both sides are reached with a real AMQP 0-9-1 client
//! (lapin); this broker itself through its internal listener
//! (`warren_node::links`).

pub mod federation;
pub mod shovel;
pub mod uri;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};
use warren_node::links::{LinkKey, LinkKind, LinkState, LinkStatus};
use warren_node::Node;

pub use shovel::Shovel;

/// Answers whether the user setting a parameter may use a vhost of this
/// broker: `None` if so, else the refusal.
pub type MayUse<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Checks a runtime parameter's value before it is set; the errors in
/// RabbitMQ's words. `may_use` answers whether the user setting it may use
/// a vhost of this broker (`None` when the broker itself sets it).
pub fn validate(
    component: &str,
    vhost: &str,
    name: &str,
    value: &Value,
    may_use: Option<MayUse<'_>>,
) -> Result<(), Vec<String>> {
    match component {
        "shovel" => Shovel::parse(vhost, name, value, may_use).map(|_| ()),
        "federation-upstream" => federation::validate_upstream(vhost, name, value, may_use),
        "federation-upstream-set" => federation::validate_set(name, value),
        other => Err(vec![format!("component {other} not found")]),
    }
}

/// What a link runs.
enum Def {
    Shovel(Box<Shovel>),
    Federation(federation::FedLink),
}

/// A running link: what it was started from, and how to stop it.
struct Running {
    value: Value,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the node's links until `shutdown`.
pub async fn run(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut running: HashMap<LinkKey, Running> = HashMap::new();
    loop {
        // Each link the parameters and policies ask for: its key, what it
        // was made from (to notice a change), and its definition.
        let mut desired: HashMap<LinkKey, (Value, Option<Def>)> = HashMap::new();
        if node.is_serving() {
            for (_, vhost, name, value) in node.broker.parameters(Some("shovel"), None) {
                let def = Shovel::parse(&vhost, &name, &value, None).ok().map(|s| Def::Shovel(Box::new(s)));
                desired.insert((LinkKind::Shovel, vhost, name), (value, def));
            }
            for link in federation::desired(&node) {
                desired.insert(link.key(), (link.fingerprint(), Some(Def::Federation(link))));
            }
        }
        let restarts = node.links.take_restarts();
        let stale: Vec<LinkKey> = running
            .iter()
            .filter(|(k, r)| desired.get(*k).map(|d| &d.0) != Some(&r.value) || restarts.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(r) = running.remove(&k) {
                stop(r).await;
            }
            if !desired.contains_key(&k) {
                node.links.remove(&k);
            }
        }
        // Links listed without running (a definition that no longer reads).
        for k in node.links.keys() {
            if !desired.contains_key(&k) && !running.contains_key(&k) {
                node.links.remove(&k);
            }
        }
        for (k, (value, def)) in desired {
            if running.contains_key(&k) {
                continue;
            }
            let Some(def) = def else {
                // Set by an older version or imported unchecked: listed, not run.
                let reason = format!("invalid definition: {value}");
                node.links.set_status(k.clone(), status(LinkState::Terminated { reason }, Default::default()));
                continue;
            };
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(supervise(node.clone(), k.clone(), def, rx));
            running.insert(k, Running { value, stop: tx, task });
        }
        tokio::select! {
            _ = node.links.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, r) in running.drain() {
        stop(r).await;
    }
}

async fn stop(r: Running) {
    let _ = r.stop.send(true);
    let mut task = r.task;
    if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
        task.abort();
    }
}

fn status(state: LinkState, details: serde_json::Map<String, Value>) -> LinkStatus {
    LinkStatus { state, since_ms: warren_core::now_ms(), details, moved: 0 }
}

/// Runs one link, again after each failure, until it is stopped or done.
async fn supervise(node: Arc<Node>, key: LinkKey, def: Def, mut stop: watch::Receiver<bool>) {
    let (details, delay) = match &def {
        Def::Shovel(s) => (s.details(), s.reconnect_delay),
        Def::Federation(f) => (f.details(), f.reconnect_delay()),
    };
    node.links.set_status(key.clone(), status(LinkState::Starting, details));
    loop {
        node.links.set_state(&key, LinkState::Starting);
        let ended = match &def {
            Def::Shovel(s) => shovel::run(&node, &key, s, &mut stop).await,
            Def::Federation(f) => federation::run(&node, &key, f, &mut stop).await,
        };
        match ended {
            Ok(shovel::Ended::Stopped) => return,
            Ok(shovel::Ended::Done) => {
                info!(vhost = %key.1, name = %key.2, "shovel done (src-delete-after): removing its parameter");
                node.links.remove(&key);
                let _ = node.broker.clear_parameter("shovel", &key.1, &key.2);
                return;
            }
            Err(reason) => {
                warn!(vhost = %key.1, name = %key.2, %reason, "link failed");
                node.links.set_state(&key, LinkState::Terminated { reason });
                // As RabbitMQ: a reconnect delay of 0 means no restart.
                if delay.is_zero() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay.max(Duration::from_millis(100))) => {}
            _ = stop.changed() => return,
        }
    }
}
