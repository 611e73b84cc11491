//! AMQP URIs as RabbitMQ's shovel and federation parameters write them
//! (<https://www.rabbitmq.com/uri-spec.html> and its query parameters):
//! `amqp://user:pass@host:port/vhost?heartbeat=10`, `amqps://…?cacertfile=…`,
//! and `amqp://` with no host — this broker itself, reached through the
//! internal listener (`warren_node::links`).

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};

/// One parsed URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// No host: this broker.
    pub local: bool,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    pub heartbeat: Option<u16>,
    pub connection_timeout: Option<u64>,
    /// `amqps` only: RabbitMQ's TLS query parameters.
    pub cacertfile: Option<String>,
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
}

fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("bad percent-encoding")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad percent-encoding")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after percent-decoding".into())
}

/// Parses `uri`; a URI without a vhost path means `default_vhost` (the
/// vhost of the parameter that names it, as RabbitMQ's plugins read it).
pub fn parse(uri: &str, default_vhost: &str) -> Result<Endpoint, String> {
    let (tls, rest) = if let Some(r) = uri.strip_prefix("amqps://") {
        (true, r)
    } else if let Some(r) = uri.strip_prefix("amqp://") {
        (false, r)
    } else {
        return Err("no amqp or amqps scheme".into());
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed IPv6 address")?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    let port = match port {
        None | Some("") => {
            if tls {
                5671
            } else {
                5672
            }
        }
        Some(p) => p.parse::<u16>().map_err(|_| format!("bad port {p}"))?,
    };
    let (user, password) = match userinfo {
        None => ("guest".to_owned(), "guest".to_owned()),
        Some(u) => match u.split_once(':') {
            Some((a, b)) => (decode(a)?, decode(b)?),
            None => (decode(u)?, String::new()),
        },
    };
    let vhost = match path {
        None => default_vhost.to_owned(),
        Some(p) if p.contains('/') => return Err("a vhost path with more than one segment".into()),
        Some(p) => decode(p)?,
    };
    let mut e = Endpoint {
        local: host.is_empty(),
        tls,
        host: decode(&host)?,
        port,
        user,
        password,
        vhost,
        heartbeat: None,
        connection_timeout: None,
        cacertfile: None,
        certfile: None,
        keyfile: None,
    };
    if e.local && tls {
        return Err("amqps needs a host".into());
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v)?;
        match k {
            "heartbeat" => e.heartbeat = Some(v.parse().map_err(|_| format!("bad heartbeat {v}"))?),
            "connection_timeout" => {
                e.connection_timeout = Some(v.parse().map_err(|_| format!("bad connection_timeout {v}"))?)
            }
            "cacertfile" => e.cacertfile = Some(v),
            "certfile" => e.certfile = Some(v),
            "keyfile" => e.keyfile = Some(v),
            // Warren always verifies the server (against cacertfile, else
            // the system's roots) and sends the host name as SNI.
            "verify" | "server_name_indication" | "fail_if_no_peer_cert" | "depth" | "password" => {}
            // Others (channel_max, frame_max, auth_mechanism…) are
            // negotiated as lapin does.
            _ => {}
        }
    }
    Ok(e)
}

/// Checks a parameter's URIs: each must parse, and a local one may only
/// name a vhost the user setting it may use (`may_use`).
pub fn check(uris: &[String], vhost: &str, may_use: Option<crate::MayUse<'_>>, errors: &mut Vec<String>) {
    for u in uris {
        match parse(u, vhost) {
            Err(e) => errors.push(format!("\"{u}\" not a valid URI: {e}")),
            Ok(e) if e.local => errors.extend(may_use.and_then(|f| f(&e.vhost))),
            Ok(_) => {}
        }
    }
}

/// The URI without its credentials, for status listings (as RabbitMQ's
/// `amqp_uri:remove_credentials`).
pub fn redacted(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else { return uri.to_owned() };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => uri.to_owned(),
    }
}

impl Endpoint {
    /// lapin's form of it; `internal` is where this broker's internal
    /// listener is and its secret, for a local endpoint.
    pub fn to_lapin(&self, internal: (std::net::SocketAddr, &str)) -> AMQPUri {
        let (host, port, username, password) = if self.local {
            let (at, secret) = internal;
            (at.ip().to_string(), at.port(), warren_core::auth::INTERNAL_USER.to_owned(), secret.to_owned())
        } else {
            (self.host.clone(), self.port, self.user.clone(), self.password.clone())
        };
        AMQPUri {
            scheme: if self.tls { AMQPScheme::AMQPS } else { AMQPScheme::AMQP },
            authority: AMQPAuthority { userinfo: AMQPUserInfo { username, password }, host, port },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: self.heartbeat,
                connection_timeout: Some(self.connection_timeout.unwrap_or(10_000)),
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_rabbitmq_accepts() {
        let e = parse("amqp://", "v1").unwrap();
        assert!(e.local);
        assert_eq!(e.vhost, "v1");
        let e = parse("amqp:///%2F", "v1").unwrap();
        assert!(e.local);
        assert_eq!(e.vhost, "/");
        let e = parse("amqp://bob:p%40ss@rabbit.example:5673/prod?heartbeat=5", "/").unwrap();
        assert!(!e.local);
        assert_eq!(
            (e.host.as_str(), e.port, e.user.as_str(), e.password.as_str()),
            ("rabbit.example", 5673, "bob", "p@ss")
        );
        assert_eq!((e.vhost.as_str(), e.heartbeat), ("prod", Some(5)));
        let e = parse("amqps://h?cacertfile=/etc/ca.pem&verify=verify_peer", "/").unwrap();
        assert_eq!((e.tls, e.port, e.cacertfile.as_deref()), (true, 5671, Some("/etc/ca.pem")));
        let e = parse("amqp://[::1]:5000", "/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 5000));
        let e = parse("amqp://h/", "/").unwrap();
        assert_eq!(e.vhost, "", "an empty path is the empty vhost, as the URI spec says");
    }

    #[test]
    fn refuses_what_is_not_an_amqp_uri() {
        for bad in ["http://h", "amqp://h:port", "amqp://h/a/b", "amqps://", "amqp://h?heartbeat=x", "amqp://h/%zz", ""]
        {
            assert!(parse(bad, "/").is_err(), "{bad}");
        }
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(redacted("amqp://u:p@h:1/v?x=1"), "amqp://h:1/v?x=1");
        assert_eq!(redacted("amqp://h/v"), "amqp://h/v");
        assert_eq!(redacted("amqp://"), "amqp://");
    }
}
