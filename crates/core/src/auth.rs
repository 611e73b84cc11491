//! Users, passwords, permissions and virtual-host limits, as RabbitMQ's
//! internal auth backend keeps them.
//!
//! Passwords are stored the way RabbitMQ stores them
//! (`rabbit_password_hashing_sha256`: a 4-byte random salt followed by
//! SHA-256(salt ++ password), base64), so a user exported from RabbitMQ logs in
//! unchanged. Permissions are three regular expressions per user and vhost,
//! matched unanchored against a resource name as RabbitMQ does (an empty
//! expression means `^$`: nothing).
//!
//! Everything here is plain data: the broker owns one [`AccessControl`] and
//! persists it (see `Broker`).

use crate::Invalid;
use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::AmqpError;

pub const SHA256: &str = "rabbit_password_hashing_sha256";
pub const SHA512: &str = "rabbit_password_hashing_sha512";

/// The tags RabbitMQ's management and tooling understand.
pub const KNOWN_TAGS: [&str; 5] = ["administrator", "monitoring", "management", "policymaker", "impersonator"];

/// RabbitMQ's salted hash of `password`, base64-encoded with its salt.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    B64.encode(salted(SHA256, &salt, password.as_bytes()).expect("sha256 is supported"))
}

fn salted(algorithm: &str, salt: &[u8], password: &[u8]) -> Option<Vec<u8>> {
    let mut out = salt.to_vec();
    match algorithm {
        SHA256 => out.extend_from_slice(&Sha256::new().chain_update(salt).chain_update(password).finalize()),
        SHA512 => out.extend_from_slice(&Sha512::new().chain_update(salt).chain_update(password).finalize()),
        _ => return None,
    }
    Some(out)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// base64(salt ++ hash); empty: the user cannot log in with a password.
    pub password_hash: String,
    pub hashing_algorithm: String,
    pub tags: Vec<String>,
    /// `set_user_limits`.
    #[serde(default)]
    pub limits: UserLimits,
}

/// Per-user limits (`set_user_limits`), over all of the user's connections;
/// None = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLimits {
    // Listed as rabbitmqctl lists them (keys sorted).
    #[serde(rename = "max-channels", skip_serializing_if = "Option::is_none", default)]
    pub max_channels: Option<u64>,
    #[serde(rename = "max-connections", skip_serializing_if = "Option::is_none", default)]
    pub max_connections: Option<u64>,
}

impl User {
    pub fn new(name: &str, password: &str) -> User {
        User {
            name: name.to_owned(),
            password_hash: hash_password(password),
            hashing_algorithm: SHA256.to_owned(),
            tags: Vec::new(),
            limits: UserLimits::default(),
        }
    }

    /// Whether `password` is this user's password. Compares in constant time.
    pub fn check_password(&self, password: &str) -> bool {
        let Ok(stored) = B64.decode(&self.password_hash) else { return false };
        if stored.len() < 4 {
            return false;
        }
        let Some(computed) = salted(&self.hashing_algorithm, &stored[..4], password.as_bytes()) else {
            return false;
        };
        computed.len() == stored.len() && computed.iter().zip(&stored).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// What an operation needs on a resource (RabbitMQ's permission kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

/// The kind of resource a permission is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Exchange,
    Queue,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Resource::Exchange => "exchange",
            Resource::Queue => "queue",
        }
    }
}

/// Compiles a permission expression as RabbitMQ reads it: an empty one is
/// "^$" (nothing matches); `expand` substitutes variables first.
fn compile_permission(re: &str, expand: impl Fn(&str) -> String) -> Result<Regex, Invalid> {
    let re = if re.is_empty() { "^$" } else { re };
    Regex::new(&expand(re)).map_err(|e| Invalid(format!("invalid regular expression '{re}': {e}")))
}

/// One user's permissions in one vhost.
#[derive(Debug, Clone)]
pub struct Permission {
    pub configure: String,
    pub write: String,
    pub read: String,
    compiled: [Regex; 3],
}

impl Permission {
    /// Compiles the three expressions; the error names the bad one.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Permission, Invalid> {
        let compile = |re: &str| compile_permission(re, |re| re.to_owned());
        Ok(Permission {
            configure: configure.to_owned(),
            write: write.to_owned(),
            read: read.to_owned(),
            compiled: [compile(configure)?, compile(write)?, compile(read)?],
        })
    }

    pub fn full() -> Permission {
        Permission::new(".*", ".*", ".*").expect("valid expressions")
    }

    pub fn allows(&self, access: Access, name: &str) -> bool {
        let i = match access {
            Access::Configure => 0,
            Access::Write => 1,
            Access::Read => 2,
        };
        self.compiled[i].is_match(name)
    }
}

/// One user's topic permissions on one topic exchange in one vhost:
/// regular expressions matched against routing keys (publish = write,
/// binding = read), with `{username}` and `{vhost}` expanded, as RabbitMQ.
#[derive(Debug, Clone)]
pub struct TopicPermission {
    pub write: String,
    pub read: String,
    compiled: [Regex; 2],
}

impl TopicPermission {
    pub fn new(write: &str, read: &str, user: &str, vhost: &str) -> Result<TopicPermission, Invalid> {
        let compile = |re: &str| compile_permission(re, |re| re.replace("{username}", user).replace("{vhost}", vhost));
        Ok(TopicPermission {
            write: write.to_owned(),
            read: read.to_owned(),
            compiled: [compile(write)?, compile(read)?],
        })
    }
}

/// Per-vhost limits (`set_vhost_limits`); None = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VHostLimits {
    #[serde(rename = "max-connections", skip_serializing_if = "Option::is_none", default)]
    pub max_connections: Option<u64>,
    #[serde(rename = "max-queues", skip_serializing_if = "Option::is_none", default)]
    pub max_queues: Option<u64>,
}

/// Users, vhost names, permissions and limits: everything `warren ctl` edits.
#[derive(Debug, Clone, Default)]
pub struct AccessControl {
    pub users: BTreeMap<String, User>,
    /// Vhost name → its limits. The broker keeps a `VHost` for each.
    pub vhosts: BTreeMap<String, VHostLimits>,
    /// (vhost, user) → permission.
    pub permissions: BTreeMap<(String, String), Permission>,
    /// (vhost, user, exchange) → topic permission.
    pub topic_permissions: BTreeMap<(String, String, String), TopicPermission>,
    /// (vhost, name) → policy, and the operator policies apart.
    pub policies: BTreeMap<(String, String), crate::policy::Policy>,
    pub operator_policies: BTreeMap<(String, String), crate::policy::Policy>,
    /// Runtime parameters other than operator policies — shovels,
    /// federation upstreams and upstream sets — as
    /// (component, vhost, name) → value, validated by whoever runs them
    /// before they are set.
    pub parameters: BTreeMap<(String, String, String), serde_json::Value>,
}

/// The identity of the broker's own links (shovels, federation) on its
/// internal listener, which only they can log in to (with a secret made at
/// start): it may do everything, as RabbitMQ's direct connections of a
/// plugin. No user of that name can be made or imported, so no client
/// can log in as it anywhere else.
pub const INTERNAL_USER: &str = "warren-internal";

/// The components of runtime parameters that the broker keeps (and
/// exports, imports and lists); operator policies are kept apart.
pub const PARAMETER_COMPONENTS: [&str; 3] = ["shovel", "federation-upstream", "federation-upstream-set"];

/// The 403 a denied operation gets, in RabbitMQ's words.
pub fn refused(kind: Resource, name: &str, vhost: &str, user: &str) -> AmqpError {
    let name = if kind == Resource::Exchange && name.is_empty() { "amq.default" } else { name };
    AmqpError::access_refused(format_args!(
        "access to {} '{name}' in vhost '{vhost}' refused for user '{user}'",
        kind.as_str()
    ))
}

impl AccessControl {
    /// RabbitMQ's first-boot state: vhost `/`, user guest/guest
    /// (administrator) with full permissions on it.
    pub fn initial() -> AccessControl {
        let mut ac = AccessControl::default();
        ac.vhosts.insert("/".into(), VHostLimits::default());
        let mut guest = User::new("guest", "guest");
        guest.tags = vec!["administrator".into()];
        ac.users.insert("guest".into(), guest);
        ac.permissions.insert(("/".into(), "guest".into()), Permission::full());
        ac
    }

    /// The user, if the password is theirs. A blank password never logs
    /// in (as RabbitMQ's internal backend).
    pub fn authenticate(&self, user: &str, password: &str) -> Option<&User> {
        if password.is_empty() {
            return None;
        }
        self.users.get(user).filter(|u| u.check_password(password))
    }

    /// Whether `user` has any topic permission in `vhost` (if not, every
    /// routing key is allowed: the common case, checked once per channel).
    pub fn has_topic_permissions(&self, vhost: &str, user: &str) -> bool {
        self.topic_permissions.keys().any(|(v, u, _)| v == vhost && u == user)
    }

    /// Checks a routing key against the user's topic permission on a topic
    /// exchange (`Access::Write` to publish, `Access::Read` to bind).
    pub fn check_topic(
        &self,
        vhost: &str,
        user: &str,
        exchange: &str,
        routing_key: &str,
        access: Access,
    ) -> Result<(), AmqpError> {
        let key = (vhost.to_owned(), user.to_owned(), exchange.to_owned());
        let Some(p) = self.topic_permissions.get(&key) else { return Ok(()) };
        let re = if access == Access::Write { &p.compiled[0] } else { &p.compiled[1] };
        if re.is_match(routing_key) {
            return Ok(());
        }
        Err(AmqpError::access_refused(format_args!(
            "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'"
        )))
    }

    /// Checks `access` to a resource; the error is the channel exception.
    pub fn check(&self, vhost: &str, user: &str, kind: Resource, name: &str, access: Access) -> Result<(), AmqpError> {
        if user == INTERNAL_USER {
            return Ok(());
        }
        let checked = if kind == Resource::Exchange && name.is_empty() { "amq.default" } else { name };
        match self.permissions.get(&(vhost.to_owned(), user.to_owned())) {
            Some(p) if p.allows(access, checked) => Ok(()),
            _ => Err(refused(kind, name, vhost, user)),
        }
    }

    pub fn has_vhost_access(&self, vhost: &str, user: &str) -> bool {
        self.vhosts.contains_key(vhost)
            && (user == INTERNAL_USER || self.permissions.contains_key(&(vhost.to_owned(), user.to_owned())))
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        json!({
            "vhosts": self.vhosts.iter().map(|(name, limits)| json!({"name": name, "limits": limits})).collect::<Vec<_>>(),
            "users": self.users.values().collect::<Vec<_>>(),
            "permissions": self.permissions.iter().map(|((vhost, user), p)| json!({
                "user": user, "vhost": vhost, "configure": p.configure, "write": p.write, "read": p.read,
            })).collect::<Vec<_>>(),
            "topic_permissions": self.topic_permissions.iter().map(|((vhost, user, exchange), p)| json!({
                "user": user, "vhost": vhost, "exchange": exchange, "write": p.write, "read": p.read,
            })).collect::<Vec<_>>(),
            "policies": self.policies.values().map(|p| p.to_json()).collect::<Vec<_>>(),
            // RabbitMQ exports operator policies as runtime parameters.
            "parameters": self.parameters.iter().map(|((component, vhost, name), value)| json!({
                "vhost": vhost, "component": component, "name": name, "value": value,
            })).chain(self.operator_policies.values().map(|p| json!({
                "vhost": p.vhost, "component": "operator_policy", "name": p.name,
                "value": {"pattern": p.pattern, "definition": p.definition, "priority": p.priority,
                          "apply-to": p.apply_to.as_str()},
            }))).collect::<Vec<_>>(),
        })
    }

    /// Merges the users, vhosts and permissions of a definitions document —
    /// Warren's own file or a RabbitMQ `export_definitions` file.
    pub fn merge_json(&mut self, doc: &serde_json::Value) -> Result<(), Invalid> {
        let list = |key: &str| doc.get(key).and_then(|v| v.as_array()).cloned().unwrap_or_default();
        let text = |v: &serde_json::Value, key: &str| v.get(key).and_then(|s| s.as_str()).unwrap_or("").to_owned();
        for v in list("vhosts") {
            let name = text(&v, "name");
            if name.is_empty() {
                return Err(Invalid("a vhost without a name".into()));
            }
            let limits = v.get("limits").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default();
            self.vhosts.insert(name, limits);
        }
        for u in list("users") {
            let name = text(&u, "name");
            if name.is_empty() {
                return Err(Invalid("a user without a name".into()));
            }
            if name == INTERNAL_USER {
                return Err(Invalid(format!("user name '{INTERNAL_USER}' is reserved for the broker's own links")));
            }
            let mut algorithm = text(&u, "hashing_algorithm");
            if algorithm.is_empty() {
                algorithm = SHA256.into();
            }
            if algorithm != SHA256 && algorithm != SHA512 {
                return Err(Invalid(format!("user '{name}': unsupported hashing algorithm '{algorithm}'")));
            }
            // RabbitMQ exports tags as a list (3.10) or a comma-separated string (older).
            let tags = match u.get("tags") {
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect(),
                Some(serde_json::Value::String(s)) => {
                    s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect()
                }
                _ => Vec::new(),
            };
            let limits = u.get("limits").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default();
            let user = User {
                name: name.clone(),
                password_hash: text(&u, "password_hash"),
                hashing_algorithm: algorithm,
                tags,
                limits,
            };
            self.users.insert(name, user);
        }
        for p in list("permissions") {
            let (user, vhost) = (text(&p, "user"), text(&p, "vhost"));
            let perm = Permission::new(&text(&p, "configure"), &text(&p, "write"), &text(&p, "read"))?;
            self.permissions.insert((vhost, user), perm);
        }
        for p in list("topic_permissions") {
            let (user, vhost, exchange) = (text(&p, "user"), text(&p, "vhost"), text(&p, "exchange"));
            let perm = TopicPermission::new(&text(&p, "write"), &text(&p, "read"), &user, &vhost)?;
            self.topic_permissions.insert((vhost, user, exchange), perm);
        }
        let policy = |vhost: String, name: String, v: &serde_json::Value, operator: bool| {
            let definition = v.get("definition").and_then(|d| d.as_object()).cloned().unwrap_or_default();
            let priority = v.get("priority").and_then(|p| p.as_i64()).unwrap_or(0);
            let apply_to = v.get("apply-to").and_then(|a| a.as_str()).unwrap_or("all");
            let vhost = if vhost.is_empty() { "/".to_owned() } else { vhost };
            crate::policy::Policy::new(&vhost, &name, &text(v, "pattern"), apply_to, priority, definition, operator)
                .map_err(|e| Invalid(format!("policy '{name}' in vhost '{vhost}': {e}")))
        };
        for p in list("policies") {
            let pol = policy(text(&p, "vhost"), text(&p, "name"), &p, false)?;
            self.policies.insert((pol.vhost.clone(), pol.name.clone()), pol);
        }
        for p in list("parameters").iter().filter(|p| text(p, "component") == "operator_policy") {
            let value = p.get("value").cloned().unwrap_or_default();
            let pol = policy(text(p, "vhost"), text(p, "name"), &value, true)?;
            self.operator_policies.insert((pol.vhost.clone(), pol.name.clone()), pol);
        }
        for p in list("parameters") {
            let component = text(&p, "component");
            if !PARAMETER_COMPONENTS.contains(&component.as_str()) {
                continue;
            }
            let (vhost, name) = (text(&p, "vhost"), text(&p, "name"));
            let vhost = if vhost.is_empty() { "/".to_owned() } else { vhost };
            if name.is_empty() {
                return Err(Invalid(format!("a {component} parameter without a name")));
            }
            let value = p.get("value").cloned().unwrap_or_default();
            self.parameters.insert((component, vhost, name), value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_round_trips_and_is_salted() {
        let u = User::new("bob", "s3cret");
        assert!(u.check_password("s3cret"));
        assert!(!u.check_password("s3cret "));
        assert!(!u.check_password(""));
        assert_ne!(User::new("bob", "s3cret").password_hash, u.password_hash, "a fresh salt each time");
        assert_eq!(B64.decode(&u.password_hash).unwrap().len(), 4 + 32);
    }

    #[test]
    fn checks_a_hash_made_by_rabbitmq() {
        // `rabbitmqctl add_user fixture fixture-password` on RabbitMQ 3.10.8,
        // then `rabbitmqctl export_definitions`.
        let u = User {
            name: "fixture".into(),
            password_hash: RABBITMQ_FIXTURE_HASH.into(),
            hashing_algorithm: SHA256.into(),
            tags: vec![],
            limits: UserLimits::default(),
        };
        assert!(u.check_password("fixture-password"));
        assert!(!u.check_password("fixture"));
    }

    pub(crate) const RABBITMQ_FIXTURE_HASH: &str = "TFnnURhaI8D6lie5loWcpp7gh1pJ391s71ZovnK85Cr/d1er";

    #[test]
    fn permissions_match_unanchored_and_empty_means_nothing() {
        let p = Permission::new("^amq\\.gen", "", "q").unwrap();
        assert!(p.allows(Access::Configure, "amq.gen-abc"));
        assert!(!p.allows(Access::Configure, "x.amq.gen"));
        assert!(!p.allows(Access::Write, "anything"));
        assert!(p.allows(Access::Read, "my-queue"), "unanchored, as re:run");
        assert!(Permission::new("(", ".*", ".*").is_err());
    }

    #[test]
    fn default_exchange_is_checked_as_amq_default() {
        let mut ac = AccessControl::initial();
        ac.permissions.insert(("/".into(), "guest".into()), Permission::new("", "^amq\\.default$", "").unwrap());
        assert!(ac.check("/", "guest", Resource::Exchange, "", Access::Write).is_ok());
        let e = ac.check("/", "guest", Resource::Exchange, "", Access::Read).unwrap_err();
        assert_eq!(e.text, "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'guest'");
    }

    #[test]
    fn topic_permissions_expand_variables_and_default_to_allow() {
        let mut ac = AccessControl::initial();
        let p = TopicPermission::new("^{username}\\.", "", "guest", "/").unwrap();
        ac.topic_permissions.insert(("/".into(), "guest".into(), "amq.topic".into()), p);
        assert!(ac.check_topic("/", "guest", "amq.topic", "guest.orders", Access::Write).is_ok());
        let e = ac.check_topic("/", "guest", "amq.topic", "bob.orders", Access::Write).unwrap_err();
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - access to topic 'bob.orders' in exchange 'amq.topic' in vhost '/' refused for user 'guest'"
        );
        assert!(ac.check_topic("/", "guest", "amq.topic", "x", Access::Read).is_err(), "'' matches nothing");
        assert!(ac.check_topic("/", "guest", "other", "anything", Access::Write).is_ok(), "no permission: allowed");
        assert!(ac.authenticate("guest", "").is_none());
    }

    #[test]
    fn imports_a_rabbitmq_export() {
        let doc = serde_json::json!({
            "users": [{"name": "fixture", "password_hash": RABBITMQ_FIXTURE_HASH,
                       "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["monitoring"], "limits": {}}],
            "vhosts": [{"name": "/"}, {"name": "other"}],
            "permissions": [{"user": "fixture", "vhost": "other", "configure": ".*", "write": ".*", "read": ".*"}],
        });
        let mut ac = AccessControl::default();
        ac.merge_json(&doc).unwrap();
        assert!(ac.authenticate("fixture", "fixture-password").is_some());
        assert!(ac.has_vhost_access("other", "fixture"));
        assert!(!ac.has_vhost_access("/", "fixture"));
        assert_eq!(ac.users["fixture"].tags, vec!["monitoring".to_string()]);
        // And Warren's own file round-trips.
        let mut again = AccessControl::default();
        again.merge_json(&ac.to_json()).unwrap();
        assert_eq!(again.users, ac.users);
        assert_eq!(again.vhosts, ac.vhosts);
        assert_eq!(again.permissions.len(), 1);
    }
}
