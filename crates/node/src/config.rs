//! Configuration: one typed struct, fed by defaults, environment variables
//! (`WARREN_*`) and command-line flags, in that order.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::resources::{DiskFreeLimit, InvalidSetting, Watermark};

/// Warren: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "warren",
    version,
    about,
    after_help = "Administration of a running broker: warren ctl [--data-dir DIR] COMMAND (see `warren ctl help`)."
)]
pub struct Config {
    /// A RabbitMQ configuration file (`rabbitmq.conf`, `key = value`) to
    /// read settings from: flags and environment variables override it.
    #[arg(long = "config", env = "WARREN_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,

    /// Print the effective settings, each with where it came from, and exit.
    #[arg(long)]
    pub print_config: bool,

    /// What to log: a level (`debug`, `info`, `warn`, `error`, `off`) or
    /// tracing directives (`info,warren_cluster=debug`).
    #[arg(long, env = "WARREN_LOG", default_value = "info")]
    pub log_level: String,

    /// Log to this file (appended to, reopened on SIGHUP for logrotate)
    /// instead of standard output.
    #[arg(long, env = "WARREN_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Log lines as `text`, or `json`: one object per line (time, level,
    /// target, message, fields) for log shippers.
    #[arg(long, env = "WARREN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Address the AMQP listener binds to; `none` turns it off (TLS only:
    /// RabbitMQ's `listeners.tcp = none`, with --amqps-listen).
    #[arg(long, env = "WARREN_AMQP_LISTEN", default_value = "127.0.0.1:5672")]
    pub amqp_listen: Listen,

    /// Address of the AMQP-over-TLS listener (amqps, usually port 5671);
    /// off unless set. Needs --tls-cert and --tls-key.
    #[arg(long, env = "WARREN_AMQPS_LISTEN")]
    pub amqps_listen: Option<SocketAddr>,

    /// PEM file with the server certificate chain (leaf first).
    #[arg(long, env = "WARREN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the server's private key.
    #[arg(long, env = "WARREN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM file with the CA certificates that client certificates are
    /// checked against; with it, clients may present a certificate.
    #[arg(long, env = "WARREN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// Require a valid client certificate (RabbitMQ's verify_peer with
    /// fail_if_no_peer_cert). Needs --tls-ca.
    #[arg(long, env = "WARREN_TLS_VERIFY_PEER", default_value_t = false)]
    pub tls_verify_peer: bool,

    /// SASL mechanisms offered to clients, comma-separated, as RabbitMQ's
    /// auth_mechanisms: PLAIN, AMQPLAIN, EXTERNAL. EXTERNAL logs in as the
    /// user its verified TLS client certificate names (see
    /// --ssl-cert-login-from) and is offered only to such clients.
    #[arg(long, env = "WARREN_AUTH_MECHANISMS", default_value = "PLAIN,AMQPLAIN", value_parser = auth_mechanisms)]
    pub auth_mechanisms: String,

    /// What EXTERNAL takes as the user name from a client certificate's
    /// subject, as RabbitMQ's ssl_cert_login_from: distinguished_name (the
    /// whole subject, RFC 4514, e.g. "CN=alice,O=Example,C=SE") or
    /// common_name (its CN).
    #[arg(long, env = "WARREN_SSL_CERT_LOGIN_FROM", default_value = "distinguished_name",
          value_parser = ["distinguished_name", "common_name"])]
    pub ssl_cert_login_from: String,

    /// Directory for the broker's data. Defaults to $XDG_DATA_HOME/warren,
    /// else ~/.local/share/warren, else ./warren-data.
    #[arg(long, env = "WARREN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Heartbeat interval (seconds) proposed in connection.tune; 0 disables.
    #[arg(long, env = "WARREN_HEARTBEAT", default_value_t = warren_protocol::DEFAULT_HEARTBEAT)]
    pub heartbeat: u16,

    /// Largest frame (bytes) proposed in connection.tune.
    #[arg(long, env = "WARREN_FRAME_MAX", default_value_t = warren_protocol::DEFAULT_FRAME_MAX)]
    pub frame_max: u32,

    /// Highest channel number proposed in connection.tune.
    #[arg(long, env = "WARREN_CHANNEL_MAX", default_value_t = warren_protocol::DEFAULT_CHANNEL_MAX)]
    pub channel_max: u16,

    /// Runtime worker threads; 0 = one per CPU core.
    #[arg(long, env = "WARREN_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Largest message body accepted (bytes), as RabbitMQ's max_message_size.
    #[arg(long, env = "WARREN_MAX_MESSAGE_SIZE", default_value_t = 134_217_728)]
    pub max_message_size: u64,

    /// Users that may connect only from a loopback address (comma-separated;
    /// empty for none), as RabbitMQ's loopback_users.
    #[arg(long, env = "WARREN_LOOPBACK_USERS", default_value = "guest")]
    pub loopback_users: String,

    /// Memory alarm threshold (RabbitMQ's vm_memory_high_watermark): below 1,
    /// a fraction of the machine's RAM; otherwise a size, in bytes or with
    /// RabbitMQ's units (`512MiB`, `1GB`, `2GiB`). Above it, publishers are
    /// blocked (`connection.blocked "low on memory"`).
    #[arg(long, env = "WARREN_MEMORY_HIGH_WATERMARK", default_value = "0.4")]
    pub memory_high_watermark: Watermark,

    /// Fraction of the memory high watermark above which queues write
    /// transient messages beyond their in-memory head to a spill file
    /// (RabbitMQ's vm_memory_high_watermark_paging_ratio); above 1, never.
    #[arg(long, env = "WARREN_MEMORY_PAGING_RATIO", default_value_t = 0.5)]
    pub memory_paging_ratio: f64,

    /// Free disk space below which the disk alarm blocks publishers ("low on
    /// disk"), on the data directory's filesystem: a size (`50MB`, `2GiB`)
    /// or `mem_relative:1.5` (times the machine's RAM), as RabbitMQ's
    /// disk_free_limit. `warren ctl set_disk_free_limit` changes it live.
    #[arg(long, env = "WARREN_DISK_FREE_LIMIT", default_value = "50MB")]
    pub disk_free_limit: DiskFreeLimit,

    /// Address of the management HTTP API (RabbitMQ's paths and JSON);
    /// an empty value turns it off.
    #[arg(long, env = "WARREN_HTTP_LISTEN", default_value = "127.0.0.1:15672")]
    pub http_listen: String,

    /// Address of the management API over HTTPS (off unless set); needs
    /// --https-cert and --https-key (RabbitMQ's management.ssl.*).
    #[arg(long, env = "WARREN_HTTPS_LISTEN")]
    pub https_listen: Option<SocketAddr>,

    /// PEM certificate chain of the HTTPS API (leaf first).
    #[arg(long, env = "WARREN_HTTPS_CERT")]
    pub https_cert: Option<PathBuf>,

    /// PEM private key of the HTTPS API.
    #[arg(long, env = "WARREN_HTTPS_KEY")]
    pub https_key: Option<PathBuf>,

    /// Address of the Prometheus metrics endpoint (`/metrics`,
    /// `/metrics/per-object`, rabbitmq_prometheus's names); an empty value
    /// turns it off.
    #[arg(long, env = "WARREN_PROMETHEUS_LISTEN", default_value = "127.0.0.1:15692")]
    pub prometheus_listen: String,

    /// Most HTTP connections the management API (and, apart, the metrics
    /// endpoint) serves at once; further ones wait to be accepted.
    #[arg(long, env = "WARREN_HTTP_MAX_CONNECTIONS", default_value_t = 256)]
    pub http_max_connections: usize,

    /// Seconds an HTTP client has to send a request's headers, and to wait
    /// idle between requests on a kept-alive connection; its body must
    /// arrive within six times as long. Then the connection is closed.
    #[arg(long, env = "WARREN_HTTP_REQUEST_TIMEOUT", default_value_t = 10)]
    pub http_request_timeout: u64,

    /// The user created on first start (RabbitMQ's default_user), an
    /// administrator with the default permissions on the default vhost.
    #[arg(long, env = "WARREN_DEFAULT_USER", default_value = "guest")]
    pub default_user: String,

    /// Its password (RabbitMQ's default_pass).
    #[arg(long, env = "WARREN_DEFAULT_PASS", default_value = "guest", hide_default_value = true)]
    pub default_pass: String,

    /// The vhost created on first start (RabbitMQ's default_vhost).
    #[arg(long, env = "WARREN_DEFAULT_VHOST", default_value = "/")]
    pub default_vhost: String,

    /// The default user's configure permission on it.
    #[arg(long, env = "WARREN_DEFAULT_PERMISSIONS_CONFIGURE", default_value = ".*")]
    pub default_permissions_configure: String,

    /// The default user's read permission on it.
    #[arg(long, env = "WARREN_DEFAULT_PERMISSIONS_READ", default_value = ".*")]
    pub default_permissions_read: String,

    /// The default user's write permission on it.
    #[arg(long, env = "WARREN_DEFAULT_PERMISSIONS_WRITE", default_value = ".*")]
    pub default_permissions_write: String,

    /// A definitions file (RabbitMQ's export format) imported at every
    /// start, as RabbitMQ's load_definitions: what it names is created or
    /// updated, nothing else is touched.
    #[arg(long, env = "WARREN_LOAD_DEFINITIONS")]
    pub load_definitions: Option<PathBuf>,

    /// On SIGTERM, how long (seconds) what was published before it may take
    /// to be confirmed before every client is closed (320).
    #[arg(long, env = "WARREN_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,

    /// Most client connections the node accepts at once; 0 = no limit.
    #[arg(long, env = "WARREN_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: u64,

    /// etcd endpoints (comma-separated URLs, e.g. http://127.0.0.1:2379):
    /// turns on cluster mode — one leader at a time serves clients, the
    /// other nodes proxy their connections to it (`docs/cluster.md`).
    #[arg(long, env = "WARREN_CLUSTER_ETCD", default_value = "")]
    pub cluster_etcd: String,

    /// The cluster's name: its nodes share the etcd keys under it.
    #[arg(long, env = "WARREN_CLUSTER_NAME", default_value = "warren")]
    pub cluster_name: String,

    /// This node's name in the cluster (required with --cluster-etcd).
    #[arg(long, env = "WARREN_NODE_NAME", default_value = "")]
    pub node_name: String,

    /// Address of this node's replication listener, which followers connect
    /// to while it leads (recorded with the node in etcd; default: an
    /// ephemeral port on the AMQP listen address).
    #[arg(long, env = "WARREN_CLUSTER_LISTEN", default_value = "")]
    pub cluster_listen: String,

    /// PEM certificate chain this node presents to the other nodes (mutual
    /// TLS on the cluster listener: replication and proxied clients). Its
    /// SAN names the node (`--node-name`) as a DNS name.
    #[arg(long, env = "WARREN_CLUSTER_TLS_CERT")]
    pub cluster_tls_cert: Option<PathBuf>,

    /// PEM private key of --cluster-tls-cert.
    #[arg(long, env = "WARREN_CLUSTER_TLS_KEY")]
    pub cluster_tls_key: Option<PathBuf>,

    /// PEM CA certificates the other nodes' certificates must chain to.
    #[arg(long, env = "WARREN_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,

    /// Allow the cluster listener without TLS on an address other than
    /// loopback (anyone who reaches it can then read every message).
    #[arg(long, env = "WARREN_CLUSTER_INSECURE", default_value_t = false)]
    pub cluster_insecure: bool,

    /// PEM CA certificates etcd's server certificate must chain to (for
    /// `https://` endpoints).
    #[arg(long, env = "WARREN_CLUSTER_ETCD_CA")]
    pub cluster_etcd_ca: Option<PathBuf>,

    /// PEM client certificate for etcd (with --cluster-etcd-key), when etcd
    /// asks for one (`--client-cert-auth`).
    #[arg(long, env = "WARREN_CLUSTER_ETCD_CERT")]
    pub cluster_etcd_cert: Option<PathBuf>,

    /// PEM private key of --cluster-etcd-cert.
    #[arg(long, env = "WARREN_CLUSTER_ETCD_KEY")]
    pub cluster_etcd_key: Option<PathBuf>,

    /// etcd user (etcd's `auth enable`); its password is read from
    /// --cluster-etcd-password-file.
    #[arg(long, env = "WARREN_CLUSTER_ETCD_USER", default_value = "")]
    pub cluster_etcd_user: String,

    /// File holding the etcd user's password (one line).
    #[arg(long, env = "WARREN_CLUSTER_ETCD_PASSWORD_FILE")]
    pub cluster_etcd_password_file: Option<PathBuf>,

    /// The AMQP address other nodes and proxied clients reach this node at,
    /// where the listen address is not reachable as is (default: the
    /// AMQP listen address).
    #[arg(long, env = "WARREN_CLUSTER_ADVERTISE", default_value = "")]
    pub cluster_advertise: String,
}

/// A listener's address, or `none` (also an empty value): no listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Listen, Self::Err> {
        match s.trim() {
            "" | "none" => Ok(Listen(None)),
            a => a.parse().map(|a| Listen(Some(a))),
        }
    }
}

impl Config {
    /// The address clients reach the AMQP server at, for naming
    /// connections: the plain listener's, else the TLS one's.
    pub fn amqp_addr(&self) -> SocketAddr {
        self.amqp_listen.0.or(self.amqps_listen).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The memory alarm threshold in bytes (None: it cannot be determined).
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_high_watermark.bytes()
    }

    /// The SASL mechanisms to offer (`--auth-mechanisms`).
    pub fn auth_mechanisms(&self) -> impl Iterator<Item = &str> {
        self.auth_mechanisms.split(',')
    }

    pub fn loopback_users(&self) -> impl Iterator<Item = &str> {
        self.loopback_users.split(',').map(str::trim).filter(|u| !u.is_empty())
    }

    /// The management API's address, unless it is turned off.
    pub fn http_listen(&self) -> Result<Option<SocketAddr>, InvalidSetting> {
        let v = self.http_listen.trim();
        if v.is_empty() {
            return Ok(None);
        }
        v.parse().map(Some).map_err(|e| InvalidSetting(format!("invalid --http-listen '{v}': {e}")))
    }

    /// The Prometheus endpoint's address, unless it is turned off.
    pub fn prometheus_listen(&self) -> Result<Option<SocketAddr>, InvalidSetting> {
        let v = self.prometheus_listen.trim();
        if v.is_empty() {
            return Ok(None);
        }
        v.parse().map(Some).map_err(|e| InvalidSetting(format!("invalid --prometheus-listen '{v}': {e}")))
    }

    /// The data directory in effect.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

/// $XDG_DATA_HOME/warren, else ~/.local/share/warren, else ./warren-data.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("warren");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/warren");
    }
    PathBuf::from("warren-data")
}

/// Checks `--auth-mechanisms`: known mechanisms, at least one.
fn auth_mechanisms(v: &str) -> Result<String, String> {
    let names: Vec<&str> = v.split(',').map(str::trim).filter(|m| !m.is_empty()).collect();
    if names.is_empty() {
        return Err("no mechanism given".into());
    }
    match names.iter().find(|m| !matches!(**m, "PLAIN" | "AMQPLAIN" | "EXTERNAL")) {
        Some(m) => Err(format!("unknown mechanism '{m}' (PLAIN, AMQPLAIN, EXTERNAL)")),
        None => Ok(names.join(",")),
    }
}
