//! Dialing peer servers. For each peer this server is to dial (the smaller node name dials,
//! so each pair has one link), a task on one shard connects, hands the socket to the core,
//! and after the link is lost redials once `reconnect_interval` (with jitter) has passed.
//!
//! Connecting uses plain tokio sockets (a connect may safely be dropped on timeout); the
//! connected socket then moves to the shard's backend like any accepted one. When peer
//! links are mutual TLS, the TLS handshake (the peer's certificate checked against `tls_ca`
//! and its `peers` name) completes within `connect_timeout` before the core sees the link.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use tokio::sync::Notify;

use super::shard::ShardRt;
use super::stream::Stream;
use crate::core::ConnMeta;
use crate::core::PeerEntry;
use crate::mesh::{backoff_delay, should_dial, NodeName};

/// A server in the `peers` table: its node name and `host:port` to dial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    pub addr: String,
}

/// The dialers running on one shard, by lower-cased peer name.
#[derive(Default)]
pub struct Dialers {
    running: HashMap<String, (String, Rc<Cell<bool>>)>,
}

/// Whether this server dials `other` (else it waits for `other` to dial it); see
/// [`crate::mesh::should_dial`].
fn dials(me: &str, other: &str) -> bool {
    match (NodeName::new(me), NodeName::new(other)) {
        (Ok(me), Ok(other)) => should_dial(&me, &other),
        _ => false,
    }
}

/// Applies a (new) peers table on one shard: allowed names, dialers started and stopped,
/// links to removed peers closed.
pub fn apply_peers(
    shard: &Rc<ShardRt>,
    dialers: &mut Dialers,
    me: &str,
    peers: &[PeerSpec],
    entries: Vec<PeerEntry>,
) {
    let names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
    {
        let mut core = shard.core.borrow_mut();
        core.set_peers(entries);
        core.close_links_except(&names);
    }
    shard.flush();
    let nshards = shard.nshards as usize;
    let mut wanted: HashMap<String, String> = HashMap::new();
    for (i, p) in peers.iter().enumerate() {
        if i % nshards == shard.id as usize && !p.name.eq_ignore_ascii_case(me) && dials(me, &p.name) {
            wanted.insert(p.name.to_lowercase(), p.addr.clone());
        }
    }
    dialers.running.retain(|name, (addr, stop)| {
        let keep = wanted.get(name) == Some(addr);
        if !keep {
            stop.set(true);
        }
        keep
    });
    for p in peers {
        let key = p.name.to_lowercase();
        if wanted.contains_key(&key) && !dialers.running.contains_key(&key) {
            let stop = Rc::new(Cell::new(false));
            dialers.running.insert(key, (p.addr.clone(), stop.clone()));
            tokio::task::spawn_local(dial_loop(shard.clone(), p.name.clone(), p.addr.clone(), stop));
        }
    }
}

/// The addresses each peer may link from: its `host:port` resolved now (a name that does
/// not resolve is logged and gets no address: it can be dialed, not accepted, until the
/// next reload).
pub fn resolve(peers: &[PeerSpec]) -> Vec<PeerEntry> {
    use std::net::ToSocketAddrs;
    peers
        .iter()
        .map(|p| {
            let addrs = match p.addr.to_socket_addrs() {
                Ok(a) => {
                    let mut ips: Vec<_> = a.map(|sa| sa.ip()).collect();
                    ips.sort();
                    ips.dedup();
                    ips
                }
                Err(e) => {
                    tracing::warn!(peer = %p.name, addr = %p.addr, "cannot resolve peer address: {e}");
                    Vec::new()
                }
            };
            PeerEntry { name: p.name.clone(), addrs }
        })
        .collect()
}

/// Stops every dialer of a shard (shutdown).
pub fn stop_all(dialers: &mut Dialers) {
    for (_, (_, stop)) in dialers.running.drain() {
        stop.set(true);
    }
}

async fn dial_loop(shard: Rc<ShardRt>, name: String, addr: String, stop: Rc<Cell<bool>>) {
    let mut failures = 0u32;
    let mut attempt = 0u64;
    // A per-link seed, so that links of a restarted cluster do not redial in lockstep.
    let seed = {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(&name)
    };
    while !stop.get() {
        let limits = shard.core.borrow().limits().clone();
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(limits.connect_timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(stream)) => {
                let left = limits.connect_timeout.saturating_sub(started.elapsed());
                match connected(&shard, &name, stream, limits.tcpbuf_size, left).await {
                    Ok((stream, meta)) => {
                        failures = 0;
                        let gone = Rc::new(Notify::new());
                        super::shard::adopt(&shard, stream, meta, Some((&name, gone.clone())));
                        // The link is up or handshaking; wait until its connection is gone.
                        gone.notified().await;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(peer = %name, %addr, "cannot link: {e}");
                    }
                }
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(peer = %name, %addr, "cannot connect: {e}; retrying every {:?}", limits.reconnect_interval);
                }
            }
            Err(_) => {
                failures += 1;
                tracing::warn!(peer = %name, %addr, "connect timed out after {:?}", limits.connect_timeout);
            }
        }
        if stop.get() {
            break;
        }
        attempt += 1;
        tokio::time::sleep(backoff_delay(limits.reconnect_interval, seed, attempt)).await;
    }
}

/// Makes a connected socket ready for the core: plain on the shard's backend, or through
/// the TLS handshake when peer links are mutual TLS.
async fn connected(
    shard: &Rc<ShardRt>,
    name: &str,
    stream: tokio::net::TcpStream,
    tcpbuf: usize,
    within: std::time::Duration,
) -> Result<(Stream, ConnMeta), String> {
    super::shard::tune_socket(&stream, tcpbuf);
    let tls = shard.tls.borrow().clone();
    match tls {
        Some(tls) if tls.peer_tls() => tls.dial_peer(name, stream, within).await,
        _ => {
            let remote = stream.peer_addr().ok();
            let std = stream.into_std().map_err(|e| format!("cannot use connected socket: {e}"))?;
            let stream =
                Stream::plain(shard.backend, std).map_err(|e| format!("cannot use connected socket: {e}"))?;
            Ok((stream, ConnMeta { remote, tls: None }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_side_dials() {
        let names = ["node1", "Node2", "manager", "relay-a.example.com"];
        for a in names {
            for b in names {
                if a != b {
                    assert_ne!(dials(a, b), dials(b, a), "{a} {b}");
                }
            }
        }
    }
}
