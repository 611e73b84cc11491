//! The management HTTP API, after RabbitMQ's management plugin: the same
//! paths, JSON field names, status codes and error bodies, so rabbitmqadmin,
//! Flower and operators' scripts work unchanged.
//!
//! One small HTTP/1.1 server (hyper) on `--http-listen`. Requests are
//! authenticated with HTTP basic auth and RabbitMQ's user-tag rules
//! (`auth.rs`), routed on their decoded path segments (`routes.rs`), and
//! answered from the live broker: there is no statistics database. Lists
//! are built from the objects themselves at request time (`objects.rs`);
//! pagination, filtering, sorting and column selection are in `query.rs`;
//! a long unpaginated list is streamed in chunks as it is serialized
//! (`Body::Stream`), never held twice. Rates come from a timer that samples
//! every object's counters every 5 s (`sampler`). The dashboard's files are
//! served from `/` (`ui.rs`).

// Handlers return whole HTTP responses as their errors: large, but off
// the per-message path (one per request).
#![allow(clippy::result_large_err)]

mod auth;
mod objects;
mod query;
mod routes;
mod ui;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tracing::{info, warn};

use warren_node::Node;

/// Largest request body read (definitions, publish): RabbitMQ's default
/// `management.http.max_body_size`.
const MAX_BODY: usize = 20 << 20;

/// A response body: all at once, or produced chunk by chunk as the client
/// reads (a long list).
pub enum Body {
    Full(Option<Bytes>),
    Stream(Box<dyn Iterator<Item = Bytes> + Send>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.get_mut() {
            Body::Full(b) => b.take(),
            Body::Stream(it) => it.next(),
        };
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(Some(b)) => hyper::body::SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => hyper::body::SizeHint::with_exact(0),
            Body::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

pub type Reply = Response<Body>;

/// A JSON response.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Reply {
    let mut r = Response::new(Body::Full(Some(Bytes::from(serde_json::to_vec(v).unwrap_or_default()))));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn ok(v: &serde_json::Value) -> Reply {
    json(StatusCode::OK, v)
}

/// A response without a body (201 Created, 204 No Content).
pub fn empty(status: StatusCode) -> Reply {
    let mut r = Response::new(Body::Full(None));
    *r.status_mut() = status;
    r
}

/// RabbitMQ's error body: `{"error": ..., "reason": ...}`.
pub fn error(status: StatusCode, error: &str, reason: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({"error": error, "reason": reason.into()}))
}

pub fn not_found() -> Reply {
    error(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
}

pub fn bad_request(reason: impl Into<String>) -> Reply {
    error(StatusCode::BAD_REQUEST, "bad_request", reason)
}

/// Binds the listener (before the broker says it is listening) and serves
/// it from a task. Returns the bound address.
pub async fn listen(shared: Arc<Node>, at: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(at)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {at} (HTTP): {e}")))?;
    let addr = listener.local_addr()?;
    tokio::spawn(sampler(shared.clone()));
    serve(listener, shared, |shared, peer, req| Box::pin(async move { handle(&shared, peer, req).await }));
    info!(%addr, "HTTP API ready on http://{addr}/api/");
    Ok(addr)
}

type Handler = fn(Arc<Node>, SocketAddr, Request<Incoming>) -> Pin<Box<dyn std::future::Future<Output = Reply> + Send>>;

/// Serves HTTP/1.1 on `listener` from a task, one task per connection.
pub fn serve(listener: TcpListener, shared: Arc<Node>, handler: Handler) {
    tokio::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handler(shared, peer, req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(socket);
                if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
            });
        }
    });
}

/// A request's whole body, up to `MAX_BODY`.
async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(error(StatusCode::PAYLOAD_TOO_LARGE, "bad_request", "request body too large")),
    }
}

/// Passes a management API request on to the cluster leader's API and
/// its answer back.
async fn forward(
    cluster: &dyn warren_node::cluster::ClusterView,
    leader: &str,
    parts: &hyper::http::request::Parts,
    body: &Bytes,
) -> Reply {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = format!("{} {target} HTTP/1.1\r\nHost: {leader}\r\nConnection: close\r\n", parts.method);
    for name in [hyper::header::AUTHORIZATION, CONTENT_TYPE, hyper::header::ACCEPT] {
        if let Some(v) = parts.headers.get(&name).and_then(|v| v.to_str().ok()) {
            req.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), cluster.forward(leader, raw))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")));
    match answer {
        Ok(a) => {
            let mut r = Response::new(Body::Full(None));
            *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
            for name in [CONTENT_TYPE, hyper::header::WWW_AUTHENTICATE, hyper::header::LOCATION] {
                if let Some(v) = a.header(name.as_str()).and_then(|v| HeaderValue::from_str(v).ok()) {
                    r.headers_mut().insert(name, v);
                }
            }
            *r.body_mut() = Body::Full(Some(Bytes::from(a.body)));
            r
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, "bad_gateway", format!("cannot reach the cluster leader: {e}")),
    }
}

/// A request, read whole and decoded: what the routes see.
pub struct Call {
    pub method: hyper::Method,
    /// Path segments after `/api`, percent-decoded (`%2F` is the vhost `/`).
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: Bytes,
    pub headers: hyper::HeaderMap,
    pub user: auth::Caller,
}

impl Call {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The body as a JSON object (an empty body is an empty object).
    pub fn json_body(&self) -> Result<serde_json::Map<String, serde_json::Value>, Reply> {
        if self.body.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Default::default());
        }
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => Err(bad_request("not_json")),
            Err(_) => Err(bad_request("not_json")),
        }
    }
}

async fn handle(shared: &Arc<Node>, peer: SocketAddr, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(query::parse_query).unwrap_or_default();
    let Some(rest) = path.strip_prefix("/api").filter(|r| r.is_empty() || r.starts_with('/')) else {
        // The dashboard's files need no login: the page asks for one.
        return ui::asset(&path).unwrap_or_else(not_found);
    };
    let segments: Vec<String> =
        rest.split('/').filter(|s| !s.is_empty()).map(|s| query::percent_decode(s, false)).collect();
    // A cluster follower has only an empty placeholder broker: the API
    // answers for the leader, which authenticates (but /api/nodes answers
    // for this node).
    let follows = shared.cluster.as_ref().and_then(|c| Some((c, c.leader_http()?)));
    if let Some((cluster, leader)) = follows.filter(|_| rest != "/nodes") {
        return match read_body(body).await {
            Ok(b) => forward(&**cluster, &leader, &parts, &b).await,
            Err(r) => r,
        };
    }
    let user = match auth::authenticate(shared, peer, &parts.headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let call = Call { method: parts.method, segments, query, body, headers: parts.headers, user };
    let reply = match (call.method.clone(), call.segments.as_slice()) {
        // Publishing waits for its confirm: the one asynchronous route.
        (hyper::Method::POST, [x, vh, name, p]) if x == "exchanges" && p == "publish" => {
            routes::publish(shared, &call, vh, name).await
        }
        _ => routes::route(shared, &call),
    };
    // A cluster's leader answers a change once the followers have it.
    if call.method != hyper::Method::GET {
        if let Some(hub) = shared.cluster.as_ref().and_then(|c| c.gate()) {
            if !hub.defs_replicated(std::time::Duration::from_secs(10)).await {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the cluster's followers did not confirm the change",
                );
            }
        }
    }
    reply
}

/// Samples every object's counters into rates every 5 s.
async fn sampler(shared: Arc<Node>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(warren_core::stats::SAMPLE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        objects::sample_all(&shared);
    }
}
