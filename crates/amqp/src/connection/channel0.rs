//! Channel 0: the connection's own methods — the handshake (protocol
//! header, `start`/`start-ok` with PLAIN and AMQPLAIN, `tune`, `open`),
//! `close`, `blocked`/`unblocked` on resource alarms, `update-secret` — and
//! the checks that keep an open connection within what its user may do.

use super::*;
use warren_core::auth::INTERNAL_USER;

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let s = |v: &str| AMQPValue::LongString(v.into());
    let mut p = FieldTable::default();
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    p.insert("cluster_name".into(), s("warren"));
    // kombu and celery choose their prefetch semantics from product and
    // version (see README, "Compatibility"): advertise the RabbitMQ release
    // whose behaviour Warren reproduces.
    p.insert("product".into(), s("RabbitMQ"));
    p.insert("version".into(), s("3.10.0"));
    p.insert("platform".into(), s(concat!("Warren ", env!("CARGO_PKG_VERSION"))));
    p.insert("information".into(), s("Warren, an AMQP 0-9-1 broker compatible with RabbitMQ clients"));
    p.insert("copyright".into(), s("The Warren authors"));
    p
}

/// Whether a peer connects from this machine (`loopback_users`).
fn is_loopback(peer: std::net::SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Extracts (user, password) from a start-ok response.
fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = parts.next()?;
            let pass = parts.next()?;
            Some((String::from_utf8(user.to_vec()).ok()?, String::from_utf8(pass.to_vec()).ok()?))
        }
        "AMQPLAIN" => {
            // A field table without its length prefix.
            let mut framed = Vec::with_capacity(response.len() + 4);
            framed.extend_from_slice(&(response.len() as u32).to_be_bytes());
            framed.extend_from_slice(response);
            if warren_protocol::table::scan(&framed) == warren_protocol::table::Scan::TooDeep {
                return None;
            }
            let (_, table) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
            let get = |k: &str| match table.inner().get(k)? {
                AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
                AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                _ => None,
            };
            Some((get("LOGIN")?, get("PASSWORD")?))
        }
        _ => None,
    }
}

impl Conn {
    pub(super) fn send_start(&mut self) {
        let start = AMQPClass::Connection(conn::AMQPMethod::Start(conn::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: LongString::from(self.offered().collect::<Vec<_>>().join(" ")),
            locales: LongString::from("en_US"),
        }));
        frame::write_method(&mut self.out, 0, &start);
    }

    /// The SASL mechanisms this connection is offered: `--auth-mechanisms`,
    /// EXTERNAL only to a client with a verified certificate that names a
    /// user. The broker's own links always log in with PLAIN.
    fn offered(&self) -> impl Iterator<Item = &str> {
        let configured = (!self.internal).then(|| self.shared.config.auth_mechanisms()).into_iter().flatten();
        let links = self.internal.then_some(["PLAIN", "AMQPLAIN"]).into_iter().flatten();
        configured.filter(|m| *m != "EXTERNAL" || self.cert_login.is_some()).chain(links)
    }

    fn send_tune(&mut self) -> Result<(), AmqpError> {
        let tune = AMQPClass::Connection(conn::AMQPMethod::Tune(conn::Tune {
            channel_max: self.shared.config.channel_max,
            frame_max: self.shared.config.frame_max,
            heartbeat: self.shared.config.heartbeat,
        }));
        frame::write_method(&mut self.out, 0, &tune);
        self.stage = Stage::AwaitTuneOk;
        Ok(())
    }

    pub(super) fn on_connection_method(&mut self, m: AMQPClass) -> Result<(), AmqpError> {
        use conn::AMQPMethod as M;
        let AMQPClass::Connection(m) = m else {
            return Err(AmqpError::command_invalid("non-connection method on channel 0"));
        };
        match (self.stage, m) {
            (Stage::AwaitStartOk, M::StartOk(ok)) => {
                if let Some(AMQPValue::FieldTable(caps)) = ok.client_properties.inner().get("capabilities") {
                    self.cancel_notify =
                        matches!(caps.inner().get("consumer_cancel_notify"), Some(AMQPValue::Boolean(true)));
                    self.blocked_notify =
                        matches!(caps.inner().get("connection.blocked"), Some(AMQPValue::Boolean(true)));
                    self.failure_close =
                        matches!(caps.inner().get("authentication_failure_close"), Some(AMQPValue::Boolean(true)));
                }
                let mechanism = ok.mechanism.as_str();
                self.mechanism = match mechanism {
                    "PLAIN" => "PLAIN",
                    "AMQPLAIN" => "AMQPLAIN",
                    "EXTERNAL" => "EXTERNAL",
                    _ => "other",
                };
                self.client_properties =
                    warren_core::arguments::table_to_json(&ok.client_properties).to_string().into_boxed_str();
                let creds = credentials(mechanism, ok.response.as_bytes());
                let refused = || {
                    AmqpError::access_refused(format_args!(
                        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                    ))
                };
                let refuse = |this: &mut Self, why: &str| {
                    warn!(peer = %this.peer, mechanism, "login refused: {why}");
                    if this.failure_close {
                        Err(refused())
                    } else {
                        // As RabbitMQ: without the capability, just hang up.
                        this.stage = Stage::Done;
                        Ok(())
                    }
                };
                if !self.offered().any(|m| m == mechanism) {
                    return refuse(self, &format!("mechanism '{mechanism}' not offered"));
                }
                if mechanism == "EXTERNAL" {
                    // The certificate was verified in the TLS handshake; its
                    // user must exist (no password: the certificate is it).
                    let Some(user) = self.cert_login.clone() else {
                        return refuse(self, "no client certificate");
                    };
                    let impersonator = self
                        .shared
                        .broker
                        .access()
                        .users
                        .get(&user)
                        .map(|u| u.tags.iter().any(|t| t == "impersonator"));
                    let Some(impersonator) = impersonator else {
                        return refuse(self, &format!("user '{user}' (from the client certificate) does not exist"));
                    };
                    if !is_loopback(self.peer) && self.shared.config.loopback_users().any(|u| u == user) {
                        return refuse(self, &format!("user '{user}' can only connect via localhost"));
                    }
                    self.impersonator = impersonator;
                    self.user = user;
                    return self.send_tune();
                }
                let Some((user, pass)) = creds else {
                    return refuse(self, "unreadable credentials");
                };
                if self.internal {
                    // The broker's own links, and nobody else.
                    if user != INTERNAL_USER || !self.shared.links.is_secret(&pass) {
                        return refuse(self, "internal listener: not one of this broker's links");
                    }
                    self.impersonator = true;
                    self.user = user;
                    return self.send_tune();
                }
                let Some(found) = self.shared.broker.authenticate(&user, &pass) else {
                    return refuse(self, &format!("user '{user}': invalid credentials"));
                };
                if !is_loopback(self.peer) && self.shared.config.loopback_users().any(|u| u == user) {
                    return refuse(self, &format!("user '{user}' can only connect via localhost"));
                }
                self.impersonator = found.tags.iter().any(|t| t == "impersonator");
                self.user = user;
                self.send_tune()
            }
            (Stage::AwaitTuneOk, M::TuneOk(ok)) => {
                let server_max = self.shared.config.frame_max;
                let frame_max = if ok.frame_max == 0 { server_max } else { ok.frame_max };
                if frame_max > server_max {
                    return Err(AmqpError::not_allowed(format_args!("frame_max={frame_max} > {server_max} max size")));
                }
                if frame_max < warren_protocol::FRAME_MIN_SIZE {
                    return Err(AmqpError::not_allowed(format_args!(
                        "frame_max={frame_max} < {} min size",
                        warren_protocol::FRAME_MIN_SIZE
                    )));
                }
                let server_channels = self.shared.config.channel_max;
                let channel_max = if ok.channel_max == 0 { server_channels } else { ok.channel_max };
                if channel_max > server_channels {
                    return Err(AmqpError::not_allowed(format_args!(
                        "channel_max={channel_max} > {server_channels} max"
                    )));
                }
                self.frame_max = frame_max;
                self.channel_max = channel_max;
                self.heartbeat = ok.heartbeat;
                self.stage = Stage::AwaitOpen;
                Ok(())
            }
            (Stage::AwaitOpen, M::Open(open)) => {
                let name = open.virtual_host.as_str();
                let user = self.user.as_str();
                let refused = |why: std::fmt::Arguments<'_>| AmqpError::not_allowed(why).during(10, 40);
                let max = self.shared.config.max_connections;
                if max > 0 && self.shared.registry.connections.lock().len() as u64 >= max {
                    return Err(refused(format_args!("connection refused: node connection limit ({max}) is reached")));
                }
                let Some(vhost) = self.shared.broker.vhost(name) else {
                    return Err(refused(format_args!("vhost {name} not found")));
                };
                let limit = self.shared.broker.access().vhosts.get(name).and_then(|l| l.max_connections);
                if let Some(limit) = limit {
                    if vhost.connections.load(Ordering::Acquire) >= limit {
                        return Err(refused(format_args!(
                            "access to vhost '{name}' refused for user '{user}': connection limit ({limit}) is reached"
                        )));
                    }
                }
                let user_limits = self.shared.broker.access().users.get(user).map(|u| u.limits).unwrap_or_default();
                if let Some(limit) = user_limits.max_connections {
                    let open =
                        self.shared.registry.connections.lock().values().filter(|c| c.user == user).count() as u64;
                    if open >= limit {
                        return Err(refused(format_args!(
                            "connection refused for user '{user}': user connection limit ({limit}) is reached"
                        )));
                    }
                }
                if !self.shared.broker.access().has_vhost_access(name, user) {
                    return Err(refused(format_args!("access to vhost '{name}' refused for user '{user}'")));
                }
                vhost.connections.fetch_add(1, Ordering::AcqRel);
                let info = Arc::new(ConnInfo {
                    id: self.id,
                    user: self.user.clone(),
                    vhost: name.to_owned(),
                    peer: self.peer,
                    tls: self.tls,
                    channels: AtomicUsize::new(0),
                    buffers: AtomicUsize::new(0),
                    client_properties: std::mem::take(&mut self.client_properties),
                    auth_mechanism: self.mechanism,
                    connected_at: warren_core::now_ms(),
                    frame_max: self.frame_max,
                    channel_max: self.channel_max,
                    heartbeat: self.heartbeat,
                    recv_oct: Default::default(),
                    send_oct: Default::default(),
                    rates: Default::default(),
                    channel_list: Default::default(),
                    kill_reason: Default::default(),
                });
                self.shared.registry.connections.lock().insert(self.id, info.clone());
                self.shared.registry.totals.connections_opened.fetch_add(1, Ordering::Relaxed);
                self.registered = Some(info);
                self.vhost = Some(vhost);
                frame::write_method(&mut self.out, 0, &AMQPClass::Connection(M::OpenOk(conn::OpenOk {})));
                self.stage = Stage::Open;
                info!(peer = %self.peer, user = %self.user, vhost = name, "user authenticated and granted access to vhost");
                Ok(())
            }
            (_, M::Close(_)) => {
                // Everything the connection owned is gone before close-ok: a
                // client that saw it finds its exclusive queues deleted.
                self.close_all_channels();
                if let Some(vhost) = &self.vhost {
                    vhost.connection_closed(self.id);
                }
                frame::write_method(&mut self.out, 0, &AMQPClass::Connection(M::CloseOk(conn::CloseOk {})));
                self.stage = Stage::Done;
                Ok(())
            }
            (Stage::Open, M::Blocked(_) | M::Unblocked(_) | M::UpdateSecretOk(_)) => Ok(()),
            (Stage::Open, M::UpdateSecret(u)) => {
                // As RabbitMQ's internal backend: the user must still exist
                // (`Broker::update_secret`).
                if !self.shared.broker.update_secret(&self.user, u.new_secret.as_bytes()) {
                    warn!(peer = %self.peer, user = %self.user, "secret update refused: the user no longer exists");
                    return Err(AmqpError::not_allowed("New secret was refused by one of the backends").during(10, 70));
                }
                info!(peer = %self.peer, user = %self.user, reason = %u.reason, "user updated secret");
                frame::write_method(
                    &mut self.out,
                    0,
                    &AMQPClass::Connection(M::UpdateSecretOk(conn::UpdateSecretOk {})),
                );
                Ok(())
            }
            (_, m) => Err(AmqpError::command_invalid(format_args!("unexpected method {m:?} on channel 0"))),
        }
    }

    /// The user's `max-channels` limit, over all of their connections
    /// (530, as RabbitMQ).
    pub(super) fn check_user_channel_limit(&self) -> Result<(), AmqpError> {
        let limit = self.shared.broker.access().users.get(&self.user).and_then(|u| u.limits.max_channels);
        let Some(limit) = limit else { return Ok(()) };
        let open: usize = self
            .shared
            .registry
            .connections
            .lock()
            .values()
            .filter(|c| c.user == self.user)
            .map(|c| c.channels.load(Ordering::Relaxed))
            .sum();
        if open as u64 >= limit {
            return Err(AmqpError::not_allowed(format_args!(
                "number of channels opened for user '{}' has reached the maximum allowed user limit of ({limit})",
                self.user
            )));
        }
        Ok(())
    }

    /// Closes the connection if its vhost or user was deleted (320, as RabbitMQ).
    pub(super) fn check_still_allowed(&mut self) {
        if self.stage != Stage::Open {
            return;
        }
        let epoch = self.shared.broker.access_epoch();
        if epoch == self.access_epoch {
            return;
        }
        self.access_epoch = epoch;
        let forced = |why: String| AmqpError::new(ErrorKind::ConnectionForced, why);
        if let Some(v) = self.vhost.as_ref().filter(|v| v.is_deleted()) {
            // As RabbitMQ's connection tracker words it (its clients may also
            // see "is down" when the vhost's processes stop first).
            let e = forced(format!("vhost '{}' is deleted", v.name));
            self.close(e);
        } else if !self.internal && !self.shared.broker.access().users.contains_key(&self.user) {
            let e = forced(format!("user '{}' is deleted", self.user));
            self.close(e);
        }
    }

    /// The disk alarm changed. A publishing connection is blocked (and told
    /// so, if it understands connection.blocked) until the alarm clears.
    pub(super) fn on_alarm(&mut self, reason: Option<String>) {
        let notify = self.blocked_notify && self.stage == Stage::Open;
        match reason {
            Some(reason) if self.published && !self.blocked_sent => {
                self.blocked_sent = true;
                if notify {
                    let m = conn::Blocked { reason: warren_protocol::short_string(&reason) };
                    frame::write_method(&mut self.out, 0, &AMQPClass::Connection(conn::AMQPMethod::Blocked(m)));
                }
            }
            None if self.blocked_sent => {
                self.blocked_sent = false;
                if notify {
                    let m = AMQPClass::Connection(conn::AMQPMethod::Unblocked(conn::Unblocked {}));
                    frame::write_method(&mut self.out, 0, &m);
                }
            }
            _ => {}
        }
    }
}
