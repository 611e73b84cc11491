//! A small client for etcd's v3 API through its JSON gateway (`/v3/...`,
//! keys and values base64): the handful of calls the cluster needs — lease
//! grant and keep-alive, transactions, ranges, puts. Plain HTTP/1.1 with
//! one connection per call, tried against each endpoint in turn; no gRPC
//! stack and no build-time protobuf compiler.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);

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
    endpoints: Vec<(String, u16)>,
    /// The endpoint that answered last: tried first (a member that is
    /// down costs each call a timeout only until another one answers).
    preferred: std::sync::atomic::AtomicUsize,
}

impl Etcd {
    /// Endpoints as `http://host:port` (the scheme is optional).
    pub fn new(endpoints: &[String]) -> Result<Etcd> {
        let mut parsed = Vec::new();
        for e in endpoints {
            let rest = e.trim().trim_start_matches("http://").trim_end_matches('/');
            if rest.starts_with("https://") {
                return Err(Error::Config(format!("etcd endpoint {e}: TLS is not supported yet")));
            }
            let (host, port) =
                rest.rsplit_once(':').ok_or_else(|| Error::Config(format!("etcd endpoint {e}: no port")))?;
            let port = port.parse().map_err(|_| Error::Config(format!("etcd endpoint {e}: bad port")))?;
            parsed.push((host.to_owned(), port));
        }
        if parsed.is_empty() {
            return Err(Error::Config("no etcd endpoint".into()));
        }
        Ok(Etcd { endpoints: parsed, preferred: Default::default() })
    }

    async fn post_to(host: &str, port: u16, path: &str, body: &str) -> Result<Value> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = exchange(&format!("{host}:{port}"), req.as_bytes()).await?;
        if answer.status != 200 {
            return Err(Error::Etcd(format!("etcd answered {}", answer.head.lines().next().unwrap_or(""))));
        }
        // Streaming calls (keep-alive) send one JSON object per message.
        let mut de = serde_json::Deserializer::from_slice(&answer.body).into_iter::<Value>();
        Ok(de.next().ok_or_else(|| Error::Etcd("etcd answered with an empty body".into()))??)
    }

    /// Posts to each endpoint in turn until one answers.
    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let body = body.to_string();
        let mut last = String::new();
        let first = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        for i in (0..self.endpoints.len()).map(|k| (first + k) % self.endpoints.len()) {
            let (host, port) = &self.endpoints[i];
            match tokio::time::timeout(CALL_TIMEOUT, Self::post_to(host, *port, path, &body)).await {
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

pub use warren_node::cluster::HttpAnswer as Answer;

/// Sends `request` (a whole HTTP/1.1 request with `Connection: close`) to
/// `addr` and reads the answer to the end of the connection.
pub async fn exchange(addr: &str, request: &[u8]) -> std::io::Result<Answer> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
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
