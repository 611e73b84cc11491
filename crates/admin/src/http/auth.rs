//! Who is calling, and what their tags let them do, by RabbitMQ's rules:
//! `management` sees and uses the vhosts it has permissions in (and only
//! its own connections), `policymaker` also sets policies there,
//! `monitoring` sees everything, `administrator` does everything. A user
//! without one of these tags gets 401, as does `guest` from a remote
//! address (the loopback users).

use std::net::SocketAddr;

use base64::Engine;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::StatusCode;

use super::{empty, error, Reply};
use warren_node::Node;

pub struct Caller {
    pub name: String,
    pub tags: Vec<String>,
    pub administrator: bool,
    pub monitoring: bool,
    pub policymaker: bool,
}

/// 401 with RabbitMQ's British spelling (used once logged in).
pub fn not_authorised(reason: &str) -> Reply {
    error(StatusCode::UNAUTHORIZED, "not_authorised", reason)
}

pub fn authenticate(shared: &Node, peer: SocketAddr, headers: &hyper::HeaderMap) -> Result<Caller, Reply> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        let mut r = empty(StatusCode::UNAUTHORIZED);
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""));
        return Err(r);
    };
    let login_failed = || error(StatusCode::UNAUTHORIZED, "not_authorized", "Login failed");
    let creds = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some((user, password)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
        return Err(login_failed());
    };
    let Some(found) = shared.broker.authenticate(user, password) else {
        return Err(login_failed());
    };
    let loopback = match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    };
    if !loopback && shared.config.loopback_users().any(|u| u == user) {
        return Err(not_authorised("User can only log in via localhost"));
    }
    Caller::with_tags(user, found.tags.clone())
}

impl Caller {
    /// A logged-in user with these tags: 401 unless one of them lets it
    /// use the API.
    pub fn with_tags(name: &str, tags: Vec<String>) -> Result<Caller, Reply> {
        let has = |t: &str| tags.iter().any(|x| x == t);
        let administrator = has("administrator");
        let monitoring = administrator || has("monitoring");
        let policymaker = administrator || has("policymaker");
        if !(monitoring || policymaker || has("management")) {
            return Err(not_authorised("Not management user"));
        }
        Ok(Caller { name: name.to_owned(), tags, administrator, monitoring, policymaker })
    }

    pub fn require_admin(&self) -> Result<(), Reply> {
        if self.administrator {
            Ok(())
        } else {
            Err(not_authorised("Not administrator user"))
        }
    }

    pub fn require_monitor(&self) -> Result<(), Reply> {
        if self.monitoring {
            Ok(())
        } else {
            Err(not_authorised("Not monitor user"))
        }
    }

    /// Whether lists show this vhost's objects to the caller.
    pub fn sees_vhost(&self, shared: &Node, vhost: &str) -> bool {
        self.monitoring || shared.broker.access().has_vhost_access(vhost, &self.name)
    }

    /// For paths naming a vhost: 401 unless the caller may use it.
    pub fn require_vhost(&self, shared: &Node, vhost: &str) -> Result<(), Reply> {
        if self.administrator || shared.broker.access().has_vhost_access(vhost, &self.name) {
            Ok(())
        } else if self.monitoring {
            // Monitoring users read every vhost.
            Ok(())
        } else {
            Err(not_authorised("User not authorised to access virtual host"))
        }
    }

    /// Whether the caller sees this user's connections and channels.
    pub fn sees_user(&self, user: &str) -> bool {
        self.monitoring || self.name == user
    }
}
