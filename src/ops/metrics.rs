//! What `/metrics` and `/varz` show, from one [`ServerReport`]: every metric family in the
//! Prometheus text format (0.0.4, encoded by `prometheus-client`), and a JSON status in the
//! spirit of NATS's `/varz`.
//!
//! Pure functions of a report: reading the shards is the caller's. Every metric is listed
//! in docs/operations.md; keep the two in step.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::config::{Config, ServerConfig};
use crate::core::LinkState;
use crate::runtime::ServerReport;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every metric of `report`, in the Prometheus text format.
pub fn render(report: &ServerReport) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ReportCollector(report.clone())));
    let mut out = String::new();
    // invariant: writing to a String cannot fail, and the collector only writes.
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("encode to a String");
    out
}

#[derive(Debug)]
struct ReportCollector(ServerReport);

/// Writes one family: `kind` is a counter or a gauge, `samples` its label sets and values.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[(Vec<(&str, String)>, f64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            encode_value(kind, *value, m.encode_family(&Vec::<(&str, String)>::new())?)?;
        } else {
            encode_value(kind, *value, m.encode_family(labels)?)?;
        }
    }
    Ok(())
}

fn encode_value(
    kind: MetricType,
    value: f64,
    enc: prometheus_client::encoding::MetricEncoder,
) -> fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(enc),
        _ => ConstGauge::new(value).encode(enc),
    }
}

fn one(v: impl Into<f64>) -> Vec<(Vec<(&'static str, String)>, f64)> {
    vec![(Vec::new(), v.into())]
}

impl Collector for ReportCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let r = &self.0;
        let t = &r.totals;
        let c = |v: u64| one(v as f64);
        let g = |v: usize| one(v as f64);
        let info = vec![(
            vec![("node", r.node.clone()), ("tag", r.tag.clone()), ("version", r.version.clone())],
            1.0,
        )];
        family(&mut enc, "msgc_info", "This server: node name, node tag of this run, version", Gauge, &info)?;
        family(
            &mut enc,
            "msgc_start_time_seconds",
            "Start time, seconds since the epoch",
            Gauge,
            &one(r.started),
        )?;
        family(&mut enc, "msgc_uptime_seconds", "Seconds since start", Gauge, &one(r.uptime_seconds))?;
        family(&mut enc, "msgc_shards", "Shard threads", Gauge, &g(r.shards.len()))?;
        family(
            &mut enc,
            "msgc_draining",
            "1 while an operator's drain is in progress",
            Gauge,
            &one(u8::from(r.draining)),
        )?;
        let roles = [
            ("client", r.clients),
            ("peer", r.peers),
            ("handshake", r.handshaking),
            ("dialing", r.dialing),
            ("closing", r.closing),
        ];
        let by_role: Vec<_> =
            roles.iter().map(|(role, n)| (vec![("role", role.to_string())], *n as f64)).collect();
        family(&mut enc, "msgc_connections", "Open connections by role", Gauge, &by_role)?;
        family(
            &mut enc,
            "msgc_connections_accepted",
            "Connections accepted or dialed",
            Counter,
            &c(t.accepted),
        )?;
        family(&mut enc, "msgc_connections_closed", "Connections closed", Counter, &c(t.closed))?;
        let groups = r.groups.len();
        let members: usize = r.groups.iter().map(|g| g.members).sum();
        family(
            &mut enc,
            "msgc_groups",
            "Groups with at least one member anywhere in the mesh",
            Gauge,
            &g(groups),
        )?;
        family(
            &mut enc,
            "msgc_group_members",
            "Memberships of all groups, on every server",
            Gauge,
            &g(members),
        )?;
        family(
            &mut enc,
            "msgc_local_members",
            "Memberships held by this server's sessions",
            Gauge,
            &g(r.local_members),
        )?;
        family(
            &mut enc,
            "msgc_messages_in",
            "MCAST frames received from clients and peers",
            Counter,
            &c(t.msgs_in),
        )?;
        family(&mut enc, "msgc_runs_in", "Runs of MCAST frames routed as one slice", Counter, &c(t.runs_in))?;
        family(&mut enc, "msgc_bytes_in", "Bytes of frames received", Counter, &c(t.bytes_in))?;
        family(
            &mut enc,
            "msgc_deliveries",
            "Frames queued to connections (deliveries to members and peers, views, gaps, keepalives)",
            Counter,
            &c(t.deliveries),
        )?;
        family(&mut enc, "msgc_bytes_out", "Bytes written to connections", Counter, &c(t.bytes_out))?;
        family(&mut enc, "msgc_views", "Membership views installed", Counter, &c(t.views))?;
        family(
            &mut enc,
            "msgc_protocol_errors",
            "Connections closed for a protocol error",
            Counter,
            &c(t.protocol_errors),
        )?;
        family(
            &mut enc,
            "msgc_stuck_kills",
            "Connections killed as stuck (max_backlog, stall, memory)",
            Counter,
            &c(t.killed_stuck),
        )?;
        family(
            &mut enc,
            "msgc_idle_kills",
            "Connections closed by idle_timeout",
            Counter,
            &c(t.killed_idle),
        )?;
        family(
            &mut enc,
            "msgc_publisher_pauses",
            "Times a shard started holding publishers back",
            Counter,
            &c(t.pauses),
        )?;
        family(
            &mut enc,
            "msgc_gaps_sent",
            "Gap notices issued for a lost link (per group and sender)",
            Counter,
            &c(t.gaps),
        )?;
        family(
            &mut enc,
            "msgc_config_digest_mismatches",
            "Links that came up with a peer whose msgc_server config differs",
            Counter,
            &c(t.digest_mismatches),
        )?;
        family(&mut enc, "msgc_link_ups", "Peer links that came up", Counter, &c(t.links_up))?;
        family(
            &mut enc,
            "msgc_link_timeouts",
            "Peer links lost because nothing arrived for link_timeout",
            Counter,
            &c(t.links_timed_out),
        )?;
        family(
            &mut enc,
            "msgc_resent",
            "Multicasts sent again by another path after a link was lost",
            Counter,
            &c(t.resent),
        )?;
        family(
            &mut enc,
            "msgc_resend_evicted",
            "Multicasts dropped from a full resend buffer before they were acknowledged",
            Counter,
            &c(t.resend_evicted),
        )?;
        // Shard 0 speaks for the server's membership (every shard holds the same).
        let first = r.shards.first().cloned().unwrap_or_default();
        family(
            &mut enc,
            "msgc_config_epoch",
            "Epoch of the installed server configuration (grows at every change)",
            Gauge,
            &one(first.epoch as f64),
        )?;
        family(
            &mut enc,
            "msgc_config_servers",
            "Servers in the installed configuration",
            Gauge,
            &g(first.config_servers),
        )?;
        family(
            &mut enc,
            "msgc_orders_views",
            "1 if this server orders group views in its configuration",
            Gauge,
            &one(u8::from(first.orders_views)),
        )?;
        family(
            &mut enc,
            "msgc_servers_reachable",
            "Servers reachable over links, directly or through others (this one included)",
            Gauge,
            &g(first.reachable),
        )?;
        family(&mut enc, "msgc_link_downs", "Peer links that went down", Counter, &c(t.links_down))?;
        let link = |f: &dyn Fn(&crate::core::LinkReport) -> f64| -> Vec<(Vec<(&str, String)>, f64)> {
            r.links.iter().map(|l| (vec![("peer", l.peer.clone())], f(l))).collect()
        };
        let states: Vec<_> = r
            .links
            .iter()
            .flat_map(|l| {
                [LinkState::Up, LinkState::Dialing, LinkState::Down].map(|s| {
                    (
                        vec![("peer", l.peer.clone()), ("state", s.as_str().to_string())],
                        f64::from(u8::from(l.state == s)),
                    )
                })
            })
            .collect();
        family(
            &mut enc,
            "msgc_link_state",
            "Per configured peer: 1 for its link's current state",
            Gauge,
            &states,
        )?;
        family(
            &mut enc,
            "msgc_link_up",
            "Per configured peer: 1 if the link is up",
            Gauge,
            &link(&|l| f64::from(u8::from(l.state == LinkState::Up))),
        )?;
        family(
            &mut enc,
            "msgc_link_queued_messages",
            "Messages queued on the link",
            Gauge,
            &link(&|l| l.queued_messages as f64),
        )?;
        family(
            &mut enc,
            "msgc_link_queued_bytes",
            "Bytes queued on the link",
            Gauge,
            &link(&|l| l.queued_bytes as f64),
        )?;
        family(
            &mut enc,
            "msgc_client_backlog_max",
            "The longest client queue, in messages",
            Gauge,
            &g(r.max_client_backlog),
        )?;
        let shard = |f: &dyn Fn(&crate::core::ShardReport) -> f64| -> Vec<(Vec<(&str, String)>, f64)> {
            r.shards.iter().map(|s| (vec![("shard", s.shard.to_string())], f(s))).collect()
        };
        family(
            &mut enc,
            "msgc_memory_queued_bytes",
            "Outbound bytes queued, per shard",
            Gauge,
            &shard(&|s| s.queued_bytes as f64),
        )?;
        family(
            &mut enc,
            "msgc_memory_budget_bytes",
            "memory_budget, per shard",
            Gauge,
            &shard(&|s| s.memory_budget as f64),
        )?;
        family(
            &mut enc,
            "msgc_memory_budget_ratio",
            "Queued bytes over memory_budget, per shard (publishers pause at 1)",
            Gauge,
            &shard(&|s| s.queued_bytes as f64 / (s.memory_budget.max(1) as f64)),
        )?;
        family(
            &mut enc,
            "msgc_shard_paused",
            "1 while the shard holds publishers back",
            Gauge,
            &shard(&|s| f64::from(u8::from(s.paused))),
        )?;
        family(
            &mut enc,
            "msgc_shard_hot_connections",
            "Connections holding publishers back, per shard",
            Gauge,
            &shard(&|s| s.hot as f64),
        )?;
        family(
            &mut enc,
            "msgc_shard_cpu_seconds",
            "CPU time of each shard thread (user + system)",
            Counter,
            &shard(&|s| s.cpu_seconds),
        )?;
        let p = &r.process;
        family(
            &mut enc,
            "process_cpu_seconds",
            "CPU time of the whole process (user + system)",
            Counter,
            &one(p.cpu_seconds),
        )?;
        family(
            &mut enc,
            "process_resident_memory_bytes",
            "Resident memory",
            Gauge,
            &one(p.resident_bytes as f64),
        )?;
        family(&mut enc, "process_open_fds", "Open file descriptors", Gauge, &one(p.open_fds as f64))?;
        family(
            &mut enc,
            "process_max_fds",
            "Limit on open file descriptors (LimitNOFILE)",
            Gauge,
            &one(p.max_fds as f64),
        )?;
        family(
            &mut enc,
            "process_start_time_seconds",
            "Start time, seconds since the epoch",
            Gauge,
            &one(r.started),
        )?;
        Ok(())
    }
}

/// A JSON status in the spirit of NATS's `/varz`: identity, counters, connections, links,
/// memory and CPU, and the running `msgc_server` options.
pub fn varz(report: &ServerReport, config: &ServerConfig) -> serde_json::Value {
    let r = report;
    let t = &r.totals;
    let options: serde_json::Map<String, serde_json::Value> = Config::server_option_names()
        .iter()
        .filter_map(|k| {
            let c = Config { server: config.clone(), ..Config::default() };
            // Strings shown unquoted (the config syntax's quoting is JSON's for these).
            let v = c.server_option(k).ok()?;
            let v = if v.starts_with('"') { serde_json::from_str::<String>(&v).unwrap_or(v) } else { v };
            Some((k.to_string(), json!(v)))
        })
        .collect();
    json!({
        "server_name": r.node,
        "server_id": r.tag,
        "version": r.version,
        "listen": r.addrs,
        "start": r.started,
        "now": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        "uptime_seconds": r.uptime_seconds,
        "shards": r.shards.len(),
        "draining": r.draining,
        "connections": {
            "clients": r.clients, "peers": r.peers, "handshake": r.handshaking,
            "dialing": r.dialing, "closing": r.closing,
        },
        "total_connections": t.accepted,
        "groups": r.groups.len(),
        "group_members": r.groups.iter().map(|g| g.members).sum::<usize>(),
        "local_members": r.local_members,
        "in_msgs": t.msgs_in,
        "in_bytes": t.bytes_in,
        "deliveries": t.deliveries,
        "out_bytes": t.bytes_out,
        "views": t.views,
        "slow_consumers": t.killed_stuck,
        "idle_kills": t.killed_idle,
        "protocol_errors": t.protocol_errors,
        "publisher_pauses": t.pauses,
        "gaps_sent": t.gaps,
        "config_digest_mismatches": t.digest_mismatches,
        "max_client_backlog": r.max_client_backlog,
        "links": r.links,
        "memory": {
            "queued_bytes": r.shards.iter().map(|s| s.queued_bytes).sum::<usize>(),
            "budget_bytes_per_shard": config.memory_budget,
            "resident_bytes": r.process.resident_bytes,
        },
        "cpu_seconds": r.process.cpu_seconds,
        "shard_cpu_seconds": r.shards.iter().map(|s| s.cpu_seconds).collect::<Vec<_>>(),
        "open_fds": r.process.open_fds,
        "max_fds": r.process.max_fds,
        "config": options,
    })
}
