//! The operator's side of a running server: the metrics endpoint (`/metrics` in the
//! Prometheus text format, `/varz` in JSON), the control socket `msgc-ctl` talks to,
//! systemd's readiness and watchdog notifications, and the import of a Spread configuration.
//!
//! Everything here runs on the server's own small tokio thread or in `msgc-ctl`, never on
//! a shard: it reads the shards' state only through [`crate::runtime::Inspector`] reports
//! and changes it only through `ServerHandle`. Never decides routing or membership.

pub mod control;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod spread;
