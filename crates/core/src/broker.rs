//! The broker: its virtual hosts and users.

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use std::path::{Path, PathBuf};

use warren_store::log::MessageLog;
use warren_store::MessageStore;

use crate::auth::{AccessControl, Permission, TopicPermission, User, UserLimits, VHostLimits};
use crate::definitions;
use crate::message::Message;
use crate::queue::Restored;
use crate::vhost::VHost;

pub struct Broker {
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    /// The message log, when the broker stores data (`Broker::open`).
    log: Option<Arc<dyn MessageStore>>,
    /// Directory of the per-vhost definition snapshots.
    definitions_dir: Option<PathBuf>,
    /// Users, vhost names and limits, permissions.
    access: RwLock<AccessControl>,
    /// Bumped on every change to `access`, so that channels can cache checks.
    access_epoch: AtomicU64,
    next_connection: AtomicU64,
    /// Its callbacks, spilling and totals (`hooks.rs`), shared with its
    /// vhosts and queues.
    pub hooks: Arc<crate::hooks::Hooks>,
    /// Rates of the whole broker's `message_stats` and queue totals, and
    /// their samples over the last 10 minutes (the management overview),
    /// taken by the management API's timer.
    pub rates: crate::stats::LengthRates,
    pub history: crate::stats::History,
    /// Opened on a data directory that had no users and vhosts yet: the
    /// first start, when the default user and vhost are made.
    pub first_boot: bool,
}

/// An administrative change that could not be made, by what went wrong,
/// with the text rabbitmqctl gives for it. `warren ctl` maps each kind to
/// rabbitmqctl's exit code ([`AdminError::exit_code`]); the management API
/// answers with its own status for each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// A value is malformed or refused (EX_DATAERR, 65).
    #[error("{0}")]
    Invalid(String),
    /// The user does not exist (EX_NOUSER, 67).
    #[error("{0}")]
    NoSuchUser(String),
    /// The vhost, parameter or policy does not exist, or a policy failed
    /// validation, as rabbitmqctl reports them (EX_UNAVAILABLE, 69).
    #[error("{0}")]
    Unavailable(String),
    /// The object exists already (EX_SOFTWARE, 70).
    #[error("{0}")]
    Exists(String),
    /// The change could not be saved (EX_IOERR, 74).
    #[error("{0}")]
    Storage(String),
    /// The change was made but not confirmed in time; try again
    /// (EX_TEMPFAIL, 75).
    #[error("{0}")]
    TryAgain(String),
}

impl AdminError {
    /// rabbitmqctl's exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            AdminError::Invalid(_) => 65,
            AdminError::NoSuchUser(_) => 67,
            AdminError::Unavailable(_) => 69,
            AdminError::Exists(_) => 70,
            AdminError::Storage(_) => 74,
            AdminError::TryAgain(_) => 75,
        }
    }

    pub(crate) fn invalid(m: impl std::fmt::Display) -> Self {
        AdminError::Invalid(m.to_string())
    }
    pub(crate) fn no_such_user(m: impl std::fmt::Display) -> Self {
        AdminError::NoSuchUser(m.to_string())
    }
    pub(crate) fn unavailable(m: impl std::fmt::Display) -> Self {
        AdminError::Unavailable(m.to_string())
    }
    pub(crate) fn exists(m: impl std::fmt::Display) -> Self {
        AdminError::Exists(m.to_string())
    }
    pub(crate) fn storage(m: impl std::fmt::Display) -> Self {
        AdminError::Storage(m.to_string())
    }

    /// The text (without the kind).
    pub fn message(&self) -> &str {
        match self {
            AdminError::Invalid(m)
            | AdminError::NoSuchUser(m)
            | AdminError::Unavailable(m)
            | AdminError::Exists(m)
            | AdminError::Storage(m)
            | AdminError::TryAgain(m) => m,
        }
    }
}

fn no_user(name: &str) -> AdminError {
    AdminError::NoSuchUser(format!("User \"{name}\" does not exist"))
}

fn no_vhost(name: &str) -> AdminError {
    AdminError::Unavailable(format!("Virtual host {name} does not exist"))
}

/// The errors rabbitmqctl gives when a permission names an unknown user or vhost.
fn require_user_and_vhost(ac: &AccessControl, user: &str, vhost: &str) -> Result<(), AdminError> {
    if !ac.users.contains_key(user) {
        return Err(AdminError::no_such_user(format!("User {user} does not exist")));
    }
    if !ac.vhosts.contains_key(vhost) {
        return Err(no_vhost(vhost));
    }
    Ok(())
}

/// Name of the access-control file under the definitions directory.
const ACCESS_FILE: &str = "access.json";

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

impl Broker {
    /// A broker with vhost `/` and user guest/guest, as RabbitMQ starts.
    pub fn new() -> Self {
        let b = Broker {
            vhosts: RwLock::new(HashMap::default()),
            log: None,
            definitions_dir: None,
            access: RwLock::new(AccessControl::initial()),
            access_epoch: AtomicU64::new(1),
            next_connection: AtomicU64::new(1),
            hooks: Default::default(),
            rates: Default::default(),
            history: Default::default(),
            first_boot: false,
        };
        b.ensure_vhost("/");
        b
    }

    /// Creates the `VHost` for a name unless it exists.
    fn ensure_vhost(&self, name: &str) {
        self.vhosts.write().entry(name.to_owned()).or_insert_with(|| self.make_vhost(name).into_arc());
    }

    fn make_vhost(&self, name: &str) -> VHost {
        match (&self.log, &self.definitions_dir) {
            (Some(log), Some(dir)) => {
                VHost::with_storage(name, log.clone(), definitions::path_for(dir, name), self.hooks.clone())
            }
            _ => VHost::with_hooks(name, self.hooks.clone()),
        }
    }

    /// A broker that keeps durable definitions and persistent messages under
    /// `data_dir`, recovering what an earlier run left there.
    pub fn open(data_dir: &Path) -> std::io::Result<Broker> {
        let started = std::time::Instant::now();
        // For tests: small segments make deletion and compaction frequent.
        let segment_bytes = std::env::var("WARREN_LOG_SEGMENT_BYTES").ok().and_then(|v| v.parse().ok());
        let (log, recovered) = MessageLog::open_with(
            &data_dir.join("messages"),
            segment_bytes.unwrap_or(warren_store::log::SEGMENT_TARGET),
        )?;
        let log: Arc<dyn MessageStore> = Arc::new(log);
        let definitions_dir = data_dir.join("definitions");
        let mut b = Broker::new();
        // Scratch space for transient messages under memory pressure: what
        // an earlier run left there is removed (transient stays transient).
        b.hooks.spill.open(&data_dir.join("spill"))?;
        b.vhosts.write().clear();
        b.log = Some(log.clone());
        b.definitions_dir = Some(definitions_dir.clone());
        let access_path = definitions_dir.join(ACCESS_FILE);
        let saved = std::fs::read(&access_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|doc| {
                let mut ac = AccessControl::default();
                ac.merge_json(&doc).map(|()| ac).ok()
            });
        match saved {
            Some(ac) => *b.access.write() = ac,
            None if access_path.exists() => {
                // Never refuse to start: fall back to the first-boot state.
                tracing::error!(file = %access_path.display(), "cannot read users and vhosts; starting with guest only");
            }
            None => {}
        }
        if !access_path.exists() {
            b.first_boot = true;
            if let Err(e) = definitions::save(&b.hooks, &access_path, &b.access.read().to_json()) {
                tracing::error!(error = %e, "cannot save users and vhosts");
            }
        }
        let names: Vec<String> = b.access.read().vhosts.keys().cloned().collect();
        for name in names {
            b.ensure_vhost(&name);
        }
        for d in definitions::load_all(&definitions_dir) {
            if b.vhost(&d.vhost).is_none() {
                // Definitions of a vhost the access file does not list (a
                // data directory from before users and vhosts were stored).
                b.access.write().vhosts.entry(d.vhost.clone()).or_default();
                b.ensure_vhost(&d.vhost);
            }
            if let Some(v) = b.vhost(&d.vhost) {
                v.restore(&d);
            }
        }
        // One Message per stored message, shared by the queues holding it.
        let mut restored = 0usize;
        let mut orphaned = 0usize;
        let mut unreadable = 0usize;
        for (key, entries) in recovered.queues {
            // Delayed messages of a durable x-delayed-message exchange go
            // back in its vhost's index, due when they were due.
            if let Some((vh, x)) =
                key.split_once('\0').and_then(|(vh, q)| Some((vh, q.strip_prefix(crate::delayed::LOG_PREFIX)?)))
            {
                let vhost = b.vhost(vh).filter(|v| v.exchange(x).is_ok_and(|e| e.delayed));
                for e in entries {
                    let back = match (&vhost, log.read(e.persisted.location())) {
                        (Some(v), Ok(back)) => (v, back),
                        _ => {
                            log.ack(&key, e.persisted);
                            orphaned += 1;
                            continue;
                        }
                    };
                    // Only the due time is kept: the content stays on disk.
                    let message = Message::from_stored(&back.1.message, e.persisted);
                    let due = e.published_at.saturating_add(crate::delayed::delay_of(&message).unwrap_or(0));
                    back.0.delayed.schedule(x, crate::delayed::Held::Logged(e.persisted), due, None);
                    restored += 1;
                }
                continue;
            }
            let queue = key.split_once('\0').and_then(|(vh, q)| b.vhost(vh)?.queue(q).ok());
            let Some(queue) = queue else {
                // Its queue is gone: let the messages go so segments can be reclaimed.
                for e in entries {
                    log.ack(&key, e.persisted);
                    orphaned += 1;
                }
                continue;
            };
            // Bodies stay on disk until the queue pages them in; only messages
            // delivered before are read now (their delivery count matters).
            let mut items = Vec::with_capacity(entries.len());
            for e in entries {
                if e.delivery_count == 0 {
                    items.push(Restored::InLog { location: e.persisted.location(), body_len: e.body_len });
                    continue;
                }
                match log.read(e.persisted.location()) {
                    Ok(back) => items.push(Restored::Loaded {
                        message: Arc::new(Message::from_stored(&back.message, e.persisted)),
                        delivery_count: e.delivery_count,
                        published_at: e.published_at,
                    }),
                    Err(err) => {
                        tracing::error!(queue = %key, error = %err, "cannot read a recovered message back; dropping it");
                        log.ack(&key, e.persisted);
                        unreadable += 1;
                    }
                }
            }
            restored += items.len();
            queue.restore(items);
        }
        tracing::info!(
            messages = restored,
            orphaned,
            unreadable,
            dropped_records = recovered.dropped_records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered durable state"
        );
        if recovered.dropped_records > 0 {
            tracing::warn!("dropped {} corrupt records from the message log", recovered.dropped_records);
        }
        for v in b.vhosts() {
            b.push_policies(&v.name);
        }
        Ok(b)
    }

    pub fn log(&self) -> Option<&Arc<dyn MessageStore>> {
        self.log.as_ref()
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.read().values().cloned().collect()
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// The user, if `password` is theirs.
    pub fn authenticate(&self, user: &str, password: &str) -> Option<User> {
        self.access.read().authenticate(user, password).cloned()
    }

    /// `connection.update-secret`: whether a connection of `user` handed a
    /// new secret may go on. Users here are Warren's internal database,
    /// which (as RabbitMQ's internal backend) has no token to re-check: any
    /// new secret is accepted while the user still exists. Permissions are
    /// read afresh at every check anyway; the connection keeps the tags it
    /// logged in with (as RabbitMQ's does, checked against RabbitMQ 3.10).
    /// A token backend (OAuth 2) would validate the new token here and
    /// return when the connection's access expires.
    pub fn update_secret(&self, user: &str, _secret: &[u8]) -> bool {
        self.access.read().users.contains_key(user)
    }

    pub fn access(&self) -> parking_lot::RwLockReadGuard<'_, AccessControl> {
        self.access.read()
    }

    /// Changes whenever users, permissions or vhosts change.
    pub fn access_epoch(&self) -> u64 {
        self.access_epoch.load(Ordering::Acquire)
    }

    /// Applies a change to the access control and saves it.
    fn change_access<T>(&self, f: impl FnOnce(&mut AccessControl) -> Result<T, AdminError>) -> Result<T, AdminError> {
        let mut ac = self.access.write();
        let out = f(&mut ac)?;
        self.access_epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(dir) = &self.definitions_dir {
            if let Err(e) = definitions::save(&self.hooks, &dir.join(ACCESS_FILE), &ac.to_json()) {
                tracing::error!(error = %e, "cannot save users and vhosts");
                return Err(AdminError::storage(format!("cannot save users and vhosts: {e}")));
            }
        }
        Ok(out)
    }

    pub fn add_user(&self, name: &str, password: &str) -> Result<(), AdminError> {
        if name == crate::auth::INTERNAL_USER {
            return Err(AdminError::invalid(format!("user name '{name}' is reserved for the broker's own links")));
        }
        self.change_access(|ac| {
            if ac.users.contains_key(name) {
                return Err(AdminError::exists(format!("User \"{name}\" already exists")));
            }
            ac.users.insert(name.to_owned(), User::new(name, password));
            Ok(())
        })
    }

    pub fn delete_user(&self, name: &str) -> Result<(), AdminError> {
        self.change_access(|ac| {
            ac.users.remove(name).ok_or_else(|| no_user(name))?;
            ac.permissions.retain(|(_, u), _| u != name);
            ac.topic_permissions.retain(|(_, u, _), _| u != name);
            Ok(())
        })
    }

    pub fn change_password(&self, name: &str, password: &str) -> Result<(), AdminError> {
        self.change_access(|ac| {
            let user = ac.users.get_mut(name).ok_or_else(|| no_user(name))?;
            let fresh = User::new(name, password);
            user.password_hash = fresh.password_hash;
            user.hashing_algorithm = fresh.hashing_algorithm;
            Ok(())
        })
    }

    pub fn set_user_tags(&self, name: &str, tags: &[String]) -> Result<(), AdminError> {
        self.change_access(|ac| {
            ac.users.get_mut(name).ok_or_else(|| no_user(name))?.tags = tags.to_vec();
            Ok(())
        })
    }

    pub fn add_vhost(&self, name: &str) -> Result<(), AdminError> {
        if name.is_empty() {
            return Err(AdminError::invalid("Virtual host name must not be empty"));
        }
        self.change_access(|ac| {
            // Adding an existing vhost succeeds, as with rabbitmqctl.
            ac.vhosts.entry(name.to_owned()).or_default();
            Ok(())
        })?;
        self.ensure_vhost(name);
        Ok(())
    }

    /// Deletes a vhost with everything in it; its connections are closed.
    pub fn delete_vhost(&self, name: &str) -> Result<(), AdminError> {
        self.change_access(|ac| {
            ac.vhosts
                .remove(name)
                .ok_or_else(|| AdminError::invalid(format!("Virtual host '{name}' does not exist")))?;
            ac.permissions.retain(|(v, _), _| v != name);
            ac.topic_permissions.retain(|(v, _, _), _| v != name);
            ac.policies.retain(|(v, _), _| v != name);
            ac.operator_policies.retain(|(v, _), _| v != name);
            ac.parameters.retain(|(_, v, _), _| v != name);
            Ok(())
        })?;
        if let Some(v) = self.vhosts.write().remove(name) {
            v.delete_all();
        }
        Ok(())
    }

    pub fn set_permissions(
        &self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), AdminError> {
        let perm = Permission::new(configure, write, read).map_err(AdminError::invalid)?;
        self.change_access(|ac| {
            require_user_and_vhost(ac, user, vhost)?;
            ac.permissions.insert((vhost.to_owned(), user.to_owned()), perm);
            Ok(())
        })
    }

    pub fn set_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: &str,
        write: &str,
        read: &str,
    ) -> Result<(), AdminError> {
        let perm = TopicPermission::new(write, read, user, vhost).map_err(AdminError::invalid)?;
        self.change_access(|ac| {
            require_user_and_vhost(ac, user, vhost)?;
            ac.topic_permissions.insert((vhost.to_owned(), user.to_owned(), exchange.to_owned()), perm);
            Ok(())
        })
    }

    /// Clears a user's topic permissions in a vhost: on one exchange, or all.
    pub fn clear_topic_permissions(&self, vhost: &str, user: &str, exchange: Option<&str>) -> Result<(), AdminError> {
        self.change_access(|ac| {
            if !ac.users.contains_key(user) {
                return Err(AdminError::no_such_user(format!("User {user} does not exist")));
            }
            ac.topic_permissions.retain(|(v, u, x), _| !(v == vhost && u == user && exchange.is_none_or(|e| e == x)));
            Ok(())
        })
    }

    pub fn clear_permissions(&self, vhost: &str, user: &str) -> Result<(), AdminError> {
        self.change_access(|ac| {
            require_user_and_vhost(ac, user, vhost)?;
            ac.permissions.remove(&(vhost.to_owned(), user.to_owned()));
            Ok(())
        })
    }

    pub fn set_user_limits(&self, user: &str, limits: UserLimits) -> Result<(), AdminError> {
        self.change_access(|ac| {
            ac.users.get_mut(user).ok_or_else(|| no_user(user))?.limits = limits;
            Ok(())
        })
    }

    pub fn set_vhost_limits(&self, vhost: &str, limits: VHostLimits) -> Result<(), AdminError> {
        self.change_access(|ac| {
            *ac.vhosts.get_mut(vhost).ok_or_else(|| no_vhost(vhost))? = limits;
            Ok(())
        })
    }

    /// Everything `import_definitions` reads, as RabbitMQ's
    /// `export_definitions` writes it: users (password hashes), vhosts,
    /// permissions, topic permissions, durable exchanges, queues, bindings.
    pub fn export_definitions(&self) -> serde_json::Value {
        let mut doc = self.access().to_json();
        let (mut exchanges, mut queues, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
        let mut vhosts = self.vhosts();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for v in vhosts {
            let (x, q, b) = v.export();
            exchanges.extend(x);
            queues.extend(q);
            bindings.extend(b);
        }
        doc["rabbit_version"] = "3.10.0".into();
        doc["warren_version"] = env!("CARGO_PKG_VERSION").into();
        doc["exchanges"] = exchanges.into();
        doc["queues"] = queues.into();
        doc["bindings"] = bindings.into();
        doc["global_parameters"] = serde_json::json!([]);
        doc
    }

    /// Imports a definitions document — a RabbitMQ `export_definitions`
    /// file or Warren's own `access.json`: users, vhosts and permissions,
    /// then exchanges, queues and bindings (declared as a client would;
    /// what already exists must be equivalent). Returns how many exchanges,
    /// queues and bindings were declared.
    pub fn import_definitions(&self, doc: &serde_json::Value) -> Result<(usize, usize, usize), AdminError> {
        let names = self.change_access(|ac| {
            let mut merged = ac.clone();
            merged.merge_json(doc).map_err(AdminError::invalid)?;
            *ac = merged;
            Ok(ac.vhosts.keys().cloned().collect::<Vec<_>>())
        })?;
        for name in &names {
            self.ensure_vhost(name);
            self.push_policies(name);
        }
        let list = |key: &str| doc.get(key).and_then(|v| v.as_array()).cloned().unwrap_or_default();
        let text = |v: &serde_json::Value, key: &str| v.get(key).and_then(|s| s.as_str()).unwrap_or("").to_owned();
        let flag = |v: &serde_json::Value, key: &str| v.get(key).and_then(|b| b.as_bool()).unwrap_or(false);
        let args = |v: &serde_json::Value| match v.get("arguments") {
            Some(serde_json::Value::Object(m)) => crate::arguments::table_from_json(m),
            _ => Default::default(),
        };
        let vhost = |v: &serde_json::Value| {
            let name = v.get("vhost").and_then(|s| s.as_str()).unwrap_or("/");
            self.vhost(name).ok_or_else(|| no_vhost(name))
        };
        let failed = |what: String, e: crate::AmqpError| AdminError::invalid(format!("{what}: {}", e.text));
        let mut counts = (0, 0, 0);
        for x in list("exchanges") {
            let name = text(&x, "name");
            vhost(&x)?
                .declare_exchange(
                    &name,
                    &text(&x, "type"),
                    false,
                    x.get("durable").and_then(|b| b.as_bool()).unwrap_or(true),
                    flag(&x, "auto_delete"),
                    flag(&x, "internal"),
                    args(&x),
                )
                .map_err(|e| failed(format!("exchange '{name}'"), e))?;
            counts.0 += 1;
        }
        for q in list("queues") {
            let name = text(&q, "name");
            let durable = q.get("durable").and_then(|b| b.as_bool()).unwrap_or(true);
            vhost(&q)?
                .declare_queue(0, &name, false, durable, false, flag(&q, "auto_delete"), args(&q))
                .map_err(|e| failed(format!("queue '{name}'"), e))?;
            counts.1 += 1;
        }
        for b in list("bindings") {
            let (source, destination, key) = (text(&b, "source"), text(&b, "destination"), text(&b, "routing_key"));
            let v = vhost(&b)?;
            let what = format!("binding '{source}' -> '{destination}'");
            let result = if text(&b, "destination_type") == "exchange" {
                v.bind_exchange(&destination, &source, &key, args(&b))
            } else {
                v.bind_queue(0, &destination, &source, &key, args(&b))
            };
            result.map_err(|e| failed(what, e))?;
            counts.2 += 1;
        }
        Ok(counts)
    }

    /// Sets a policy (or an operator policy), as `rabbitmqctl set_policy`:
    /// validated with RabbitMQ's texts, applied at once to the vhost's
    /// queues and exchanges.
    #[allow(clippy::too_many_arguments)]
    pub fn set_policy(
        &self,
        vhost: &str,
        name: &str,
        pattern: &str,
        apply_to: &str,
        priority: i64,
        definition: serde_json::Map<String, serde_json::Value>,
        operator: bool,
    ) -> Result<(), AdminError> {
        let p = crate::policy::Policy::new(vhost, name, pattern, apply_to, priority, definition, operator)
            .map_err(|e| AdminError::unavailable(format!("Validation failed\n\n{e}\n")))?;
        self.change_access(|ac| {
            if !ac.vhosts.contains_key(vhost) {
                return Err(no_vhost(vhost));
            }
            let map = if operator { &mut ac.operator_policies } else { &mut ac.policies };
            map.insert((vhost.to_owned(), name.to_owned()), p);
            Ok(())
        })?;
        self.push_policies(vhost);
        Ok(())
    }

    pub fn clear_policy(&self, vhost: &str, name: &str, operator: bool) -> Result<(), AdminError> {
        self.change_access(|ac| {
            let map = if operator { &mut ac.operator_policies } else { &mut ac.policies };
            map.remove(&(vhost.to_owned(), name.to_owned()))
                .map(|_| ())
                .ok_or_else(|| AdminError::unavailable("Parameter does not exist"))
        })?;
        self.push_policies(vhost);
        Ok(())
    }

    /// Sets a runtime parameter (a shovel, a federation upstream or
    /// upstream set) whose value the caller has validated. Returns whether
    /// it replaced one.
    pub fn set_parameter(
        &self,
        component: &str,
        vhost: &str,
        name: &str,
        value: serde_json::Value,
    ) -> Result<bool, AdminError> {
        self.change_access(|ac| {
            if !ac.vhosts.contains_key(vhost) {
                return Err(no_vhost(vhost));
            }
            Ok(ac.parameters.insert((component.to_owned(), vhost.to_owned(), name.to_owned()), value).is_some())
        })
    }

    /// Clears a runtime parameter; rabbitmqctl's error when there is none.
    pub fn clear_parameter(&self, component: &str, vhost: &str, name: &str) -> Result<(), AdminError> {
        self.change_access(|ac| {
            ac.parameters
                .remove(&(component.to_owned(), vhost.to_owned(), name.to_owned()))
                .map(|_| ())
                .ok_or_else(|| AdminError::unavailable("Parameter does not exist"))
        })
    }

    /// The runtime parameters of a component (all if `None`), optionally of
    /// one vhost: (component, vhost, name, value), sorted.
    pub fn parameters(
        &self,
        component: Option<&str>,
        vhost: Option<&str>,
    ) -> Vec<(String, String, String, serde_json::Value)> {
        self.access()
            .parameters
            .iter()
            .filter(|((c, v, _), _)| component.is_none_or(|x| x == c) && vhost.is_none_or(|x| x == v))
            .map(|((c, v, n), value)| (c.clone(), v.clone(), n.clone(), value.clone()))
            .collect()
    }

    /// Hands a vhost its policies (after a change), which re-resolves
    /// the settings of its queues and exchanges.
    pub fn push_policies(&self, vhost: &str) {
        let Some(v) = self.vhost(vhost) else { return };
        let (user, op) = {
            let ac = self.access();
            let of = |m: &std::collections::BTreeMap<(String, String), crate::policy::Policy>| {
                m.iter().filter(|((vh, _), _)| vh == vhost).map(|(_, p)| p.clone()).collect::<Vec<_>>()
            };
            (of(&ac.policies), of(&ac.operator_policies))
        };
        v.set_policies(user, op);
    }

    /// A fresh connection id (used for exclusive queue ownership).
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}
