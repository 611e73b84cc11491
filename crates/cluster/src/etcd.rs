//! A small client for etcd's v3 API through its JSON gateway (`/v3/...`,
//! keys and values base64): the handful of calls the cluster needs — lease
//! grant and keep-alive, transactions, ranges, puts. HTTP/1.1 with one
//! connection per call, tried against each endpoint in turn; no gRPC stack
//! and no build-time protobuf compiler.
//!
//! `https://` endpoints are reached over rustls, checked against
//! `--cluster-etcd-ca` (and with a client certificate when given); with
//! `--cluster-etcd-user`, the client authenticates (`/v3/auth/authenticate`)
//! and sends etcd's token with every call, authenticating again when etcd
//! no longer knows it (a restart, an expiry). Answers are read up to
//! `MAX_ANSWER` octets.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read from etcd (the cluster's keys are small).
const MAX_ANSWER: u64 = 16 << 20;

/// How to reach etcd beyond its endpoints: TLS files and credentials.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// CA certificates etcd's server certificate must chain to.
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate and its key, for etcd's `--client-cert-auth`.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// An etcd user, and the file holding its password.
    pub user: String,
    pub password_file: Option<std::path::PathBuf>,
}

struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn unb64(v: &Value) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_str()?).ok()?;
    String::from_utf8(bytes).ok()
}

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xff {
            b.push(last + 1);
            return base64::engine::general_purpose::STANDARD.encode(&b);
        }
    }
    b64("\0")
}

/// An etcd value read back, with the revisions a transaction compares.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    pub lease: i64,
}

fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kvs(range: &Value) -> Vec<Kv> {
    let Some(list) = range.get("kvs").and_then(Value::as_array) else { return Vec::new() };
    list.iter()
        .filter_map(|kv| {
            Some(Kv {
                key: unb64(kv.get("key")?)?,
                value: kv.get("value").and_then(unb64).unwrap_or_default(),
                mod_revision: kv.get("mod_revision").map(num).unwrap_or(0),
                lease: kv.get("lease").map(num).unwrap_or(0),
            })
        })
        .collect()
}

/// One side of a transaction: a comparison etcd checks atomically.
pub enum Compare<'a> {
    /// The key does not exist.
    Absent(&'a str),
    /// The key was last written at this revision (0: does not exist).
    ModRevision(&'a str, i64),
    /// The key holds exactly this value.
    Value(&'a str, &'a str),
}

pub struct Etcd {
    endpoints: Vec<Endpoint>,
    /// The endpoint that answered last: tried first (a member that is
    /// down costs each call a timeout only until another one answers).
    preferred: std::sync::atomic::AtomicUsize,
    tls: Option<tokio_rustls::TlsConnector>,
    /// The user and password, when etcd has auth enabled.
    credentials: Option<(String, String)>,
    /// etcd's token for them, once authenticated.
    token: parking_lot::Mutex<Option<String>>,
}

impl Etcd {
    /// Endpoints as `http://host:port` or `https://host:port` (no scheme:
    /// http).
    pub fn new(endpoints: &[String], access: &Access) -> Result<Etcd> {
        let mut parsed = Vec::new();
        for e in endpoints {
            let e = e.trim();
            let (tls, rest) = match e.strip_prefix("https://") {
                Some(rest) => (true, rest),
                None => (false, e.strip_prefix("http://").unwrap_or(e)),
            };
            let rest = rest.trim_end_matches('/');
            let (host, port) =
                rest.rsplit_once(':').ok_or_else(|| Error::Config(format!("etcd endpoint {e}: no port")))?;
            let port = port.parse().map_err(|_| Error::Config(format!("etcd endpoint {e}: bad port")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            parsed.push(Endpoint { host, port, tls });
        }
        if parsed.is_empty() {
            return Err(Error::Config("no etcd endpoint".into()));
        }
        let tls = match parsed.iter().any(|e| e.tls) {
            true => Some(connector(access)?),
            false => None,
        };
        let credentials = match (access.user.as_str(), &access.password_file) {
            ("", None) => None,
            ("", Some(_)) => {
                return Err(Error::Config("--cluster-etcd-password-file needs --cluster-etcd-user".into()))
            }
            (_, None) => return Err(Error::Config("--cluster-etcd-user needs --cluster-etcd-password-file".into())),
            (user, Some(file)) => {
                let password = std::fs::read_to_string(file).map_err(|e| {
                    Error::Config(format!("cannot read the etcd password from {}: {e}", file.display()))
                })?;
                let password = password.lines().next().unwrap_or("").to_owned();
                Some((user.to_owned(), password))
            }
        };
        Ok(Etcd { endpoints: parsed, preferred: Default::default(), tls, credentials, token: Default::default() })
    }

    async fn post_to(&self, at: &Endpoint, path: &str, body: &str) -> Result<Value> {
        let (host, port) = (&at.host, at.port);
        let token = self.token.lock().clone();
        let auth = match (&token, path) {
            (Some(t), p) if p != "/v3/auth/authenticate" => format!("Authorization: {t}\r\n"),
            _ => String::new(),
        };
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{auth}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let answer = match (&self.tls, at.tls) {
            (Some(tls), true) => {
                let name = rustls_pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| Error::Config(format!("etcd endpoint host {host} is not a TLS server name")))?;
                exchange(tls.connect(name, tcp).await?, req.as_bytes()).await?
            }
            _ => exchange(tcp, req.as_bytes()).await?,
        };
        if answer.status != 200 {
            let text = String::from_utf8_lossy(&answer.body);
            if text.contains("invalid auth token") || text.contains("user name is empty") {
                *self.token.lock() = None;
                return Err(Error::Etcd(format!("etcd refused the auth token: {}", text.trim())));
            }
            return Err(Error::Etcd(format!(
                "etcd answered {}: {}",
                answer.head.lines().next().unwrap_or(""),
                text.chars().take(200).collect::<String>()
            )));
        }
        // Streaming calls (keep-alive) send one JSON object per message.
        let mut de = serde_json::Deserializer::from_slice(&answer.body).into_iter::<Value>();
        Ok(de.next().ok_or_else(|| Error::Etcd("etcd answered with an empty body".into()))??)
    }

    /// A token for the configured user, if auth is configured and none is held.
    async fn authenticate(&self, at: &Endpoint) -> Result<()> {
        let Some((user, password)) = &self.credentials else { return Ok(()) };
        if self.token.lock().is_some() {
            return Ok(());
        }
        let body = json!({ "name": user, "password": password }).to_string();
        let v = self.post_to(at, "/v3/auth/authenticate", &body).await?;
        match v.get("token").and_then(Value::as_str) {
            Some(t) => {
                *self.token.lock() = Some(t.to_owned());
                Ok(())
            }
            None => Err(Error::Etcd(format!("etcd did not authenticate {user}: {v}"))),
        }
    }

    /// One call to one endpoint, authenticated when auth is configured.
    async fn call(&self, at: &Endpoint, path: &str, body: &str) -> Result<Value> {
        self.authenticate(at).await?;
        match self.post_to(at, path, body).await {
            // The token was dropped as refused (etcd restarted, or this
            // member did not issue it): once more with a new one.
            Err(_) if self.credentials.is_some() && self.token.lock().is_none() => {
                self.authenticate(at).await?;
                self.post_to(at, path, body).await
            }
            answer => answer,
        }
    }

    /// Posts to each endpoint in turn until one answers.
    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let body = body.to_string();
        let mut last = String::new();
        let first = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        for i in (0..self.endpoints.len()).map(|k| (first + k) % self.endpoints.len()) {
            let at = &self.endpoints[i];
            let (host, port) = (&at.host, at.port);
            match tokio::time::timeout(CALL_TIMEOUT, self.call(at, path, &body)).await {
                Ok(Ok(v)) => {
                    self.preferred.store(i, std::sync::atomic::Ordering::Relaxed);
                    if let Some(err) = v.get("error") {
                        return Err(Error::Etcd(format!("etcd: {err}")));
                    }
                    return Ok(v);
                }
                Ok(Err(e)) => last = format!("{host}:{port}: {e}"),
                Err(_) => last = format!("{host}:{port}: timed out"),
            }
        }
        Err(Error::Etcd(last))
    }

    /// A new lease of `ttl` seconds; its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64> {
        let v = self.post("/v3/lease/grant", json!({ "TTL": ttl })).await?;
        match num(&v["ID"]) {
            0 => Err(Error::Etcd("etcd granted no lease id".into())),
            id => Ok(id),
        }
    }

    /// Renews a lease; its remaining TTL (0: it has expired).
    pub async fn keepalive(&self, lease: i64) -> Result<i64> {
        let v = self.post("/v3/lease/keepalive", json!({ "ID": lease.to_string() })).await?;
        Ok(num(&v["result"]["TTL"]))
    }

    /// Ends a lease now: the keys under it go at once.
    pub async fn revoke(&self, lease: i64) -> Result<()> {
        self.post("/v3/lease/revoke", json!({ "ID": lease.to_string() })).await.map(|_| ())
    }

    pub async fn put(&self, key: &str, value: &str, lease: i64) -> Result<()> {
        let mut req = json!({ "key": b64(key), "value": b64(value) });
        if lease != 0 {
            req["lease"] = lease.to_string().into();
        }
        self.post("/v3/kv/put", req).await.map(|_| ())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Kv>> {
        let v = self.post("/v3/kv/range", json!({ "key": b64(key) })).await?;
        Ok(kvs(&v).into_iter().next())
    }

    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>> {
        let v = self.post("/v3/kv/range", json!({ "key": b64(prefix), "range_end": prefix_end(prefix) })).await?;
        Ok(kvs(&v))
    }

    /// Puts `puts` (key, value, lease) if every comparison holds; whether
    /// it did.
    pub async fn txn(&self, compare: &[Compare<'_>], puts: &[(&str, &str, i64)]) -> Result<bool> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::Absent(k) => {
                    json!({ "key": b64(k), "result": "EQUAL", "target": "CREATE", "create_revision": "0" })
                }
                Compare::ModRevision(k, r) => {
                    json!({ "key": b64(k), "result": "EQUAL", "target": "MOD", "mod_revision": r.to_string() })
                }
                Compare::Value(k, v) => json!({ "key": b64(k), "result": "EQUAL", "target": "VALUE", "value": b64(v) }),
            })
            .collect();
        let success: Vec<Value> = puts
            .iter()
            .map(|(k, v, lease)| {
                let mut p = json!({ "key": b64(k), "value": b64(v) });
                if *lease != 0 {
                    p["lease"] = lease.to_string().into();
                }
                json!({ "request_put": p })
            })
            .collect();
        let v = self.post("/v3/kv/txn", json!({ "compare": compare, "success": success })).await?;
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }
}

/// The TLS client for `https://` endpoints.
fn connector(access: &Access) -> Result<tokio_rustls::TlsConnector> {
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    use warren_node::pem::{certificates, private_key};
    let config = |e: &dyn std::fmt::Display| Error::Config(format!("etcd TLS: {e}"));
    let Some(ca) = &access.ca else {
        return Err(Error::Config("https:// etcd endpoints need --cluster-etcd-ca".into()));
    };
    let mut roots = RootCertStore::empty();
    for c in certificates(ca).map_err(|e| config(&e))? {
        roots.add(c).map_err(|e| config(&format!("bad CA certificate in {}: {e}", ca.display())))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config(&e))?
        .with_root_certificates(roots);
    let client = match (&access.cert, &access.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                certificates(cert).map_err(|e| config(&e))?,
                private_key(key).map_err(|e| config(&e))?,
            )
            .map_err(|e| config(&e))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(Error::Config("--cluster-etcd-cert and --cluster-etcd-key go together".into())),
    };
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(client)))
}

/// An HTTP/1.1 response read to the end of its connection.
pub struct Answer {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// Sends `request` (a whole HTTP/1.1 request with `Connection: close`) on
/// `s` and reads the answer to the end of the connection (at most
/// `MAX_ANSWER` octets).
async fn exchange(mut s: impl AsyncRead + AsyncWrite + Unpin, request: &[u8]) -> std::io::Result<Answer> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    s.write_all(request).await?;
    let mut raw = Vec::new();
    (&mut s).take(MAX_ANSWER + 1).read_to_end(&mut raw).await?;
    if raw.len() as u64 > MAX_ANSWER {
        return Err(bad("etcd's answer is too large"));
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad("no HTTP status"))?;
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Answer { status, head, body })
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_and_prefix_ends() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(), Some(&b"abcde"[..]));
        assert_eq!(dechunk(b"3\r\nab"), None);
        assert_eq!(prefix_end("/a/"), b64("/a0"));
    }
}
