//! Looking into a running server from outside its shards: an [`Inspector`] asks every shard
//! for a report through its inbox and merges the answers into one [`ServerReport`].
//!
//! Nothing here is on the data path: shards build their report when asked, between two
//! turns of their own loop, and share no lock with whoever asked. Never changes a shard's
//! state (drain and reload go through `ServerHandle`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use super::shard::Inbound;
use super::Control;
use crate::core::{GroupReport, LinkReport, LinkState, SessionReport, ShardReport, Stats};

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("shard {0} is gone (its thread ended)")]
    ShardGone(usize),
    #[error("shard {shard} did not answer within {wait:?}")]
    ShardSilent { shard: usize, wait: Duration },
}

/// Facts about a server that do not change while it runs.
#[derive(Debug)]
pub(crate) struct ServerInfo {
    pub node_name: String,
    pub node_tag: u32,
    pub addrs: Vec<SocketAddr>,
    pub started: SystemTime,
    pub started_at: Instant,
}

/// A cheap, cloneable, `Send` handle that asks a server's shards for reports.
#[derive(Clone)]
pub struct Inspector {
    pub(crate) shards: Vec<UnboundedSender<Inbound>>,
    pub(crate) info: Arc<ServerInfo>,
}

/// The whole server's state: every shard's report merged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    pub node: String,
    /// This run's node tag, hexadecimal.
    pub tag: String,
    pub version: String,
    pub addrs: Vec<String>,
    /// Start time, seconds since the epoch.
    pub started: f64,
    pub uptime_seconds: f64,
    /// Counters summed over shards.
    pub totals: Stats,
    pub handshaking: usize,
    pub clients: usize,
    pub peers: usize,
    pub dialing: usize,
    pub closing: usize,
    pub local_members: usize,
    pub max_client_backlog: usize,
    pub draining: bool,
    /// Every configured peer, with the state of its link.
    pub links: Vec<LinkReport>,
    pub groups: Vec<GroupReport>,
    /// Empty unless asked for.
    pub sessions: Vec<SessionReport>,
    /// Per-shard figures (sessions, links and groups moved to the fields above).
    pub shards: Vec<ShardReport>,
    pub process: ProcessReport,
}

/// Process-wide figures from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
}

impl Inspector {
    /// Asks every shard for its report (with per-session lines if `sessions`) and merges
    /// them. Fails if a shard does not answer within `wait`.
    pub async fn report(&self, sessions: bool, wait: Duration) -> Result<ServerReport, InspectError> {
        let mut pending = Vec::with_capacity(self.shards.len());
        for (i, tx) in self.shards.iter().enumerate() {
            let (reply, rx) = tokio::sync::oneshot::channel();
            tx.send(Inbound::Control(Control::Report { sessions, reply }))
                .map_err(|_| InspectError::ShardGone(i))?;
            pending.push(rx);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut shards = Vec::with_capacity(pending.len());
        for (i, rx) in pending.into_iter().enumerate() {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(r)) => shards.push(r),
                Ok(Err(_)) => return Err(InspectError::ShardGone(i)),
                Err(_) => return Err(InspectError::ShardSilent { shard: i, wait }),
            }
        }
        Ok(merge(&self.info, shards))
    }

    /// This server's node name.
    pub fn node_name(&self) -> &str {
        &self.info.node_name
    }
}

fn merge(info: &ServerInfo, mut shards: Vec<ShardReport>) -> ServerReport {
    let mut totals = Stats::default();
    let mut r = ServerReport {
        node: info.node_name.clone(),
        tag: format!("{:08x}", info.node_tag),
        version: env!("CARGO_PKG_VERSION").to_string(),
        addrs: info.addrs.iter().map(|a| a.to_string()).collect(),
        started: info.started.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        uptime_seconds: info.started_at.elapsed().as_secs_f64(),
        totals: Stats::default(),
        handshaking: 0,
        clients: 0,
        peers: 0,
        dialing: 0,
        closing: 0,
        local_members: 0,
        max_client_backlog: 0,
        draining: false,
        links: Vec::new(),
        groups: Vec::new(),
        sessions: Vec::new(),
        shards: Vec::new(),
        process: process_report(),
    };
    // By lower-cased peer name: the connection that best describes the link.
    let mut links: BTreeMap<String, LinkReport> = BTreeMap::new();
    let configured: Vec<String> = shards.first().map(|s| s.peer_names.clone()).unwrap_or_default();
    let up: Vec<String> = shards.first().map(|s| s.links_up.clone()).unwrap_or_default();
    for s in &mut shards {
        totals.add(&s.stats);
        r.handshaking += s.handshaking;
        r.clients += s.clients;
        r.peers += s.peers;
        r.dialing += s.dialing;
        r.closing += s.closing;
        r.local_members += s.local_members;
        r.draining |= s.draining;
        r.max_client_backlog = r.max_client_backlog.max(s.max_client_backlog);
        for l in s.links.drain(..) {
            let key = l.peer.to_lowercase();
            // An up link wins over a dial in progress to the same peer.
            let better = links.get(&key).is_none_or(|old| old.state != LinkState::Up);
            if better {
                links.insert(key, l);
            }
        }
        r.groups.append(&mut s.groups);
        r.sessions.append(&mut s.sessions);
    }
    let me = info.node_name.to_lowercase();
    for name in configured.iter().chain(up.iter()) {
        let key = name.to_lowercase();
        if key == me || links.contains_key(&key) {
            continue;
        }
        links.insert(
            key,
            LinkReport {
                peer: name.clone(),
                state: LinkState::Down,
                tag: 0,
                shard: 0,
                queued_messages: 0,
                queued_bytes: 0,
                hot: false,
            },
        );
    }
    r.links = links.into_values().collect();
    r.groups.sort_by(|a, b| a.name.cmp(&b.name));
    r.sessions.sort_by(|a, b| a.session.cmp(&b.session));
    r.totals = totals;
    r.shards = shards;
    r
}

/// The calling thread's CPU time (user + system), from `getrusage(RUSAGE_THREAD)`.
pub(crate) fn thread_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_THREAD)
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes a plain struct that we own; zeroed is a valid initial value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Process CPU time, resident memory and descriptors.
fn process_report() -> ProcessReport {
    // statm: sizes in pages; the second field is the resident set.
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    // SAFETY: getrlimit writes a plain struct that we own.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    let max_fds =
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur } else { 0 };
    ProcessReport {
        cpu_seconds: rusage_seconds(libc::RUSAGE_SELF),
        resident_bytes: pages * page,
        open_fds,
        max_fds,
    }
}
