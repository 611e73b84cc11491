//! Warren's admin surface: the management HTTP API with RabbitMQ's paths
//! and JSON, and the dashboard ([`http`]); Prometheus metrics
//! ([`metrics`]); `warren ctl`, its server on the node's Unix socket and
//! its client ([`ctl`]). It reads the node (`warren-node`: the registry's
//! read models, alarms, the cluster view) and the broker model; never a
//! connection's internals.

pub mod ctl;
pub mod http;
pub mod metrics;
mod views;
