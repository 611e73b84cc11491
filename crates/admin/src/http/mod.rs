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
pub use query::parse_query;
pub(crate) use routes::federation_json as federation_row;
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
    /// The cluster leader's answer, passed on as it arrives.
    Proxied(Incoming),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let next = match self.get_mut() {
            Body::Full(b) => b.take(),
            Body::Stream(it) => it.next(),
            Body::Proxied(b) => return Pin::new(b).poll_frame(cx),
        };
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::Stream(_) => false,
            Body::Proxied(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(Some(b)) => hyper::body::SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => hyper::body::SizeHint::with_exact(0),
            Body::Stream(_) => hyper::body::SizeHint::default(),
            Body::Proxied(b) => b.size_hint(),
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
/// An error answer. As RabbitMQ's API, the reason's `<`, `>` and `&` are
/// HTML-escaped (its validation texts print Erlang binaries, `<<"x">>`).
pub fn error(status: StatusCode, error: &str, reason: impl Into<String>) -> Reply {
    let reason = reason.into().replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    json(status, &serde_json::json!({"error": error, "reason": reason}))
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
    serve(listener, shared, api, None);
    info!(%addr, "HTTP API ready on http://{addr}/api/");
    Ok(addr)
}

/// The API over HTTPS (`--https-listen`, `--https-cert`, `--https-key`):
/// the same routes, each connection's TLS handshake within the request
/// timeout. Returns the bound address.
pub async fn listen_tls(shared: Arc<Node>, at: SocketAddr) -> std::io::Result<SocketAddr> {
    let acceptor =
        tls_acceptor(&shared.config).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(at)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {at} (HTTPS): {e}")))?;
    let addr = listener.local_addr()?;
    serve(listener, shared, api, Some(acceptor));
    info!(%addr, "HTTPS API ready on https://{addr}/api/");
    Ok(addr)
}

fn tls_acceptor(config: &warren_node::Config) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls::{self, ServerConfig};
    let (Some(cert), Some(key)) = (&config.https_cert, &config.https_key) else {
        return Err("--https-listen needs --https-cert and --https-key".into());
    };
    let chain = warren_node::pem::certificates(cert).map_err(|e| e.to_string())?;
    let key = warren_node::pem::private_key(key).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("HTTPS certificate and key: {e}"))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

type Handler = fn(Arc<Node>, SocketAddr, Request<Incoming>) -> Pin<Box<dyn std::future::Future<Output = Reply> + Send>>;

/// The management API's handler.
fn api(
    shared: Arc<Node>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Pin<Box<dyn std::future::Future<Output = Reply> + Send>> {
    Box::pin(async move { handle(&shared, peer, req).await })
}

/// Serves HTTP/1.1 on `listener` from a task, one task per connection.
///
/// What a stranger can hold: at most `--http-max-connections` connections
/// (further ones wait in the listen backlog until one ends), each for at
/// most `--http-request-timeout` while its request's headers arrive or it
/// sits idle between requests (hyper's header-read timer, which also runs
/// on an idle kept-alive connection), and six times as long for a body
/// (`read_body`). With `tls`, each connection's TLS handshake must finish
/// within the request timeout.
pub fn serve(listener: TcpListener, shared: Arc<Node>, handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(shared.config.http_max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let (socket, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let Some(acceptor) = tls.clone() else {
                tokio::spawn(connection(shared.clone(), socket, peer, handler, Some(slot)));
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(request_timeout(&shared), acceptor.accept(socket)).await {
                    Ok(Ok(tls)) => connection(shared, tls, peer, handler, Some(slot)).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTPS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "HTTPS handshake timeout"),
                }
            });
        }
    });
}

/// Serves one API connection that a cluster follower passed on (`peer`:
/// the client's own address).
pub fn serve_passed_on(shared: Arc<Node>, io: warren_node::cluster::BoxStream, peer: SocketAddr) {
    tokio::spawn(connection(shared, io, peer, api, None));
}

/// Serves one HTTP/1.1 connection, holding its slot (if counted) until it ends.
async fn connection(
    shared: Arc<Node>,
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    peer: SocketAddr,
    handler: Handler,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let _slot = slot;
    let timeout = request_timeout(&shared);
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move {
            let mut reply = handler(shared, peer, req).await;
            harden(reply.headers_mut());
            Ok::<_, Infallible>(reply)
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}

fn request_timeout(shared: &Node) -> std::time::Duration {
    std::time::Duration::from_secs(shared.config.http_request_timeout.max(1))
}

/// Headers on every answer: no content sniffing, never framed (the
/// dashboard cannot be clickjacked).
fn harden(headers: &mut hyper::HeaderMap) {
    use hyper::header::{CONTENT_SECURITY_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.entry(CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static("frame-ancestors 'none'"));
}

/// A request's whole body, up to `MAX_BODY`, within six request timeouts.
async fn read_body(shared: &Node, body: Incoming) -> Result<Bytes, Reply> {
    let limit = request_timeout(shared) * 6;
    match tokio::time::timeout(limit, http_body_util::Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, "bad_request", "request body too large"))
        }
        Ok(Err(_)) => Err(bad_request("the request body could not be read")),
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "bad_request", "the request body did not arrive in time")),
    }
}

/// Refuses a state-changing request a browser may have sent on another
/// site's behalf (with its cached Basic credentials): one that says it is
/// cross-site (`Sec-Fetch-Site`, or an `Origin` other than the API's own
/// host), or whose body is not JSON. A form can only send form or text
/// bodies, so the JSON rule alone stops a cross-site form post, as in
/// RabbitMQ (415 with no body); an empty body needs no Content-Type
/// (`curl -X PUT .../api/vhosts/v`).
fn refuse_cross_site(parts: &hyper::http::request::Parts) -> Option<Reply> {
    use hyper::header::{CONTENT_LENGTH, HOST, ORIGIN, TRANSFER_ENCODING};
    use hyper::Method;
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let h = &parts.headers;
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let forbidden = |why: &str| Some(error(StatusCode::FORBIDDEN, "forbidden", why));
    if text("sec-fetch-site").is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return forbidden("cross-site requests are refused");
    }
    if let Some(origin) = text(ORIGIN.as_str()) {
        let authority = origin.split_once("://").map(|(_, a)| a.trim_end_matches('/'));
        if authority.is_none() || authority != text(HOST.as_str()) {
            return forbidden("cross-site requests are refused");
        }
    }
    let json = match text(CONTENT_TYPE.as_str()) {
        Some(ct) => ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")),
        None => text(CONTENT_LENGTH.as_str()).is_none_or(|n| n.trim() == "0") && !h.contains_key(TRANSFER_ENCODING),
    };
    (!json).then(|| empty(StatusCode::UNSUPPORTED_MEDIA_TYPE))
}

/// Passes a management API request on to the cluster leader's API,
/// through the cluster listener (inside mutual TLS when the cluster has it,
/// and with the client's own address), and streams its answer back. The
/// body is streamed too: the leader authenticates the request before it
/// reads it.
async fn forward(
    cluster: &dyn warren_node::cluster::ClusterView,
    peer: SocketAddr,
    parts: hyper::http::request::Parts,
    body: Incoming,
) -> Reply {
    forward_parts(cluster, peer, parts, http_body_util::Limited::new(body, MAX_BODY)).await
}

async fn forward_parts<B>(
    cluster: &dyn warren_node::cluster::ClusterView,
    peer: SocketAddr,
    parts: hyper::http::request::Parts,
    body: B,
) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let unreachable = |e: &dyn std::fmt::Display| {
        error(StatusCode::BAD_GATEWAY, "bad_gateway", format!("cannot reach the cluster leader: {e}"))
    };
    let wait = std::time::Duration::from_secs(30);
    let socket = match tokio::time::timeout(wait, cluster.tunnel(warren_node::cluster::Protocol::Http, peer)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return unreachable(&e),
        Err(_) => return unreachable(&"timed out"),
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(socket)).await {
            Ok(c) => c,
            Err(e) => return unreachable(&e),
        };
    tokio::spawn(connection);
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::builder().method(parts.method.clone()).uri(target);
    for name in [
        hyper::header::AUTHORIZATION,
        CONTENT_TYPE,
        hyper::header::CONTENT_LENGTH,
        hyper::header::ACCEPT,
        hyper::header::ORIGIN,
    ] {
        if let Some(v) = parts.headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let host = parts.headers.get(hyper::header::HOST).cloned().unwrap_or(HeaderValue::from_static("localhost"));
    let Ok(req) = req.header(hyper::header::HOST, host).body(body) else {
        return bad_request("invalid request");
    };
    match tokio::time::timeout(wait, sender.send_request(req)).await {
        Ok(Ok(answer)) => {
            let (head, body) = answer.into_parts();
            let mut r = Response::new(Body::Proxied(body));
            *r.status_mut() = head.status;
            for name in
                [CONTENT_TYPE, hyper::header::CONTENT_LENGTH, hyper::header::WWW_AUTHENTICATE, hyper::header::LOCATION]
            {
                if let Some(v) = head.headers.get(&name) {
                    r.headers_mut().insert(name, v.clone());
                }
            }
            r
        }
        Ok(Err(e)) => unreachable(&e),
        Err(_) => unreachable(&"timed out"),
    }
}

/// Who is calling, as the cluster leader authenticates them (its
/// `/api/whoami`, with the caller's credentials and address): a follower
/// has no users of its own.
async fn leader_says_who(
    cluster: &dyn warren_node::cluster::ClusterView,
    peer: SocketAddr,
    parts: &hyper::http::request::Parts,
) -> Result<auth::Caller, Reply> {
    if cluster.leader_name().is_none() {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "no cluster leader is known yet"));
    }
    let mut ask = Request::builder().method(hyper::Method::GET).uri("/api/whoami");
    for name in [hyper::header::AUTHORIZATION, hyper::header::HOST] {
        if let Some(v) = parts.headers.get(&name) {
            ask = ask.header(name, v);
        }
    }
    let Ok((ask, ())) = ask.body(()).map(|r| r.into_parts()) else { return Err(bad_request("invalid request")) };
    let answer = forward_parts(cluster, peer, ask, http_body_util::Empty::<Bytes>::new()).await;
    if answer.status() != StatusCode::OK {
        return Err(answer);
    }
    let Body::Proxied(incoming) = answer.into_body() else {
        return Err(error(StatusCode::BAD_GATEWAY, "bad_gateway", "no answer from the cluster leader"));
    };
    let bytes = match tokio::time::timeout(std::time::Duration::from_secs(30), incoming.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => return Err(error(StatusCode::BAD_GATEWAY, "bad_gateway", "no answer from the cluster leader")),
    };
    let who: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let name = who["name"].as_str().unwrap_or_default();
    let tags = match &who["tags"] {
        serde_json::Value::Array(list) => list.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect(),
        serde_json::Value::String(s) => s.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    auth::Caller::with_tags(name, tags)
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
    // A node of a cluster that does not serve has no broker of its own:
    // the API answers for the leader, which authenticates (but /api/nodes
    // answers for this node), or 503 while no leader is known.
    let follower = shared.cluster.as_ref().filter(|c| !c.is_serving());
    let about_this_node = rest == "/nodes" || rest.starts_with("/nodes/");
    if let Some(cluster) = follower.filter(|_| !about_this_node) {
        if let Some(r) = refuse_cross_site(&parts) {
            return r;
        }
        return match cluster.leader_name() {
            Some(_) => forward(&**cluster, peer, parts, body).await,
            None => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "no cluster leader is known yet"),
        };
    }
    // A follower's own answers (its view of the cluster) are for the
    // leader's users: the leader says who is calling.
    let user = match follower {
        Some(cluster) => leader_says_who(&**cluster, peer, &parts).await,
        None => auth::authenticate(shared, peer, &parts.headers),
    };
    let user = match user {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Some(r) = refuse_cross_site(&parts) {
        return r;
    }
    let body = match read_body(shared, body).await {
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
