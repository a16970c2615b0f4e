//! The I/O side of the relay: one pinned thread per core, each running one shard on
//! tokio-uring or, where io_uring is unavailable or not wanted, on tokio (epoll); an acceptor
//! that deals connections out to the shards; TLS handshakes; signals and reloads.
//!
//! Owns sockets, threads and the clock. Never decides routing or membership: that is
//! `core`'s, which every shard drives through `handle_*` calls.

mod accept;
mod conn;
mod host;
mod inspect;
mod links;
mod shard;
mod stream;
mod tls;
mod uring;

pub use crate::config::IoBackend;
pub use host::{hostnames, local_addrs, local_hostname};
pub use inspect::{InspectError, Inspector, ProcessReport, ServerReport};
pub use links::PeerSpec;
pub use stream::Backend;
pub use tls::{ServerTls, TlsOptions};
pub use uring::{check_io_uring, choose as choose_backend};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;

use crate::core::{Limits, ServerIdentity, Stats};
use crate::proto::{Name, NodeTag};

/// Everything needed to start a server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Addresses to listen on (port 0 picks a free port).
    pub listen: Vec<SocketAddr>,
    /// Shard threads; 0 means one per core.
    pub threads: usize,
    /// Pin each shard thread to a core (of those this process may run on), when there is
    /// a shard for every one of them (see `cores_to_pin`).
    pub pin_threads: bool,
    pub limits: Limits,
    /// This server's node name, as shown to clients and peers.
    pub node_name: String,
    /// Digest of the `msgc_server` config, sent in WELCOME.
    pub digest: u64,
    /// The `peers` table (this server included or not); links form to the others.
    pub peers: Vec<PeerSpec>,
    /// The I/O backend (`io`); auto picks io_uring when this host allows it.
    pub io: IoBackend,
    /// TLS for clients and peer links; off by default.
    pub tls: TlsOptions,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 4809))],
            threads: 0,
            pin_threads: true,
            limits: Limits::default(),
            node_name: local_hostname(),
            digest: 0,
            peers: Vec::new(),
            io: IoBackend::Auto,
            tls: TlsOptions::default(),
        }
    }
}

/// What the shards are told from outside.
pub(crate) enum Control {
    Reload(Limits),
    /// The peers table, with each peer's addresses resolved (for the unauthenticated
    /// mesh's address check).
    Peers(Vec<PeerSpec>, Vec<crate::core::PeerEntry>),
    Tls(Option<Arc<ServerTls>>),
    /// Answer with a report of the shard's state (per session if asked).
    Report {
        sessions: bool,
        reply: tokio::sync::oneshot::Sender<crate::core::ShardReport>,
    },
    /// Ask every client to move to another server; turn new ones away.
    Drain,
    Shutdown,
}

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    node_tag: NodeTag,
    control: Vec<UnboundedSender<shard::Inbound>>,
    accept_stop: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<Mutex<Vec<Stats>>>,
    backend: Backend,
    fallback: Option<String>,
    /// Whether peer links are mutual TLS now: the core's `Limits::peer_tls` follows the TLS
    /// settings actually loaded, whatever limits a caller passes.
    peer_tls: std::sync::atomic::AtomicBool,
    inspector: Inspector,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("io_uring is unavailable: {0}")]
    NoIoUring(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Shard(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl ServerHandle {
    /// Starts the acceptor and the shard threads and returns once they listen.
    pub fn start(opts: ServerOptions) -> Result<ServerHandle, StartError> {
        let (backend, fallback) = uring::choose(opts.io).map_err(StartError::NoIoUring)?;
        let tls = ServerTls::load(&opts.tls)?;
        let peer_tls = tls.as_ref().is_some_and(|t| t.peer_tls());
        let mut opts = opts;
        opts.limits.peer_tls = peer_tls;
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            opts.threads
        }
        .min(u16::MAX as usize);
        let listeners = accept::bind_all(&opts.listen, opts.limits.tcpbuf_size)?;
        let addrs: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
        let identity = ServerIdentity {
            node_tag: random_node_tag(),
            node_name: Name::new(truncate_name(&opts.node_name)).unwrap_or_default(),
            digest: opts.digest,
            boot: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
                .max(1),
            entropy: os_entropy(),
        };
        let stats = Arc::new(Mutex::new(vec![Stats::default(); threads]));
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..threads).map(|_| tokio::sync::mpsc::unbounded_channel()).unzip();
        let allowed =
            if opts.pin_threads { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
        let cores = cores_to_pin(threads, allowed);
        let mut handles = Vec::new();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        for (i, inbox) in receivers.into_iter().enumerate() {
            let setup = shard::ShardSetup {
                id: i as u16,
                nshards: threads as u16,
                identity: identity.clone(),
                limits: opts.limits.clone(),
                peers: senders.clone(),
                inbox,
                core: cores.get(i % cores.len().max(1)).copied(),
                stats: stats.clone(),
                backend,
                tls: tls.clone(),
                started: started_tx.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("msgc-shard-{i}"))
                .spawn(move || shard::run(setup))
                .map_err(StartError::Thread)?;
            handles.push(h);
        }
        // Every shard must be running before the server counts as started. (Our sender goes,
        // so a shard thread that dies without a word ends the wait too.)
        drop(started_tx);
        for _ in 0..threads {
            let outcome = started_rx.recv().unwrap_or_else(|_| Err("a shard thread ended at startup".into()));
            if let Err(why) = outcome {
                for tx in &senders {
                    let _ = tx.send(shard::Inbound::Control(Control::Shutdown));
                }
                for h in handles.drain(..) {
                    let _ = h.join();
                }
                return Err(StartError::Shard(why));
            }
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let shard_tx = senders.clone();
        let tcpbuf = opts.limits.tcpbuf_size;
        let acceptor = std::thread::Builder::new()
            .name("msgc-accept".into())
            .spawn(move || accept::run(listeners, shard_tx, tcpbuf, stop_rx))
            .map_err(StartError::Thread)?;
        handles.push(acceptor);
        if !opts.peers.is_empty() {
            let entries = links::resolve(&opts.peers);
            for tx in &senders {
                let _ = tx.send(shard::Inbound::Control(Control::Peers(opts.peers.clone(), entries.clone())));
            }
        }
        tracing::info!(node = %identity.node_name, tag = format!("{:08x}", identity.node_tag.0), ?addrs, threads, io = %backend, "msgc-server listening");
        match &tls {
            Some(t) if t.peer_tls() => tracing::info!("TLS on; peer links are mutual TLS"),
            Some(_) => tracing::info!("TLS on for clients; peer links are plain"),
            None => {}
        }
        let inspector = Inspector {
            shards: senders.clone(),
            info: Arc::new(inspect::ServerInfo {
                node_name: identity.node_name.as_str().to_string(),
                node_tag: identity.node_tag.0,
                addrs: addrs.clone(),
                started: std::time::SystemTime::now(),
                started_at: std::time::Instant::now(),
            }),
        };
        Ok(ServerHandle {
            addrs,
            node_tag: identity.node_tag,
            inspector,
            control: senders,
            accept_stop: Some(stop_tx),
            threads: handles,
            stats,
            backend,
            fallback,
            peer_tls: peer_tls.into(),
        })
    }

    /// The I/O backend the shards run on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// With `io = auto` on a host where io_uring is unavailable: why (the server runs on
    /// epoll).
    pub fn backend_fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Rereads the TLS files and applies them to new connections and dials (connections up
    /// keep their session). On an error the running TLS settings stay.
    pub fn set_tls(&self, opts: &TlsOptions) -> Result<(), crate::tls::TlsError> {
        let tls = ServerTls::load(opts)?;
        let peer_tls = tls.as_ref().is_some_and(|t| t.peer_tls());
        self.peer_tls.store(peer_tls, std::sync::atomic::Ordering::Relaxed);
        for tx in &self.control {
            let _ = tx.send(shard::Inbound::Control(Control::Tls(tls.clone())));
        }
        Ok(())
    }

    /// The addresses the server listens on (with the real port when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// This run's node tag (upper half of every session id it assigns).
    pub fn node_tag(&self) -> NodeTag {
        self.node_tag
    }

    /// Applies new limits to every shard without a restart.
    pub fn reload(&self, mut limits: Limits) {
        limits.peer_tls = self.peer_tls.load(std::sync::atomic::Ordering::Relaxed);
        for tx in &self.control {
            let _ = tx.send(shard::Inbound::Control(Control::Reload(limits.clone())));
        }
    }

    /// Replaces the peers table: links to new peers form, links to removed ones close.
    /// Names are resolved here, on the caller's thread, not on the shards.
    pub fn set_peers(&self, peers: Vec<PeerSpec>) {
        let entries = links::resolve(&peers);
        for tx in &self.control {
            let _ = tx.send(shard::Inbound::Control(Control::Peers(peers.clone(), entries.clone())));
        }
    }

    /// A handle that asks the shards for reports, usable from any thread.
    pub fn inspector(&self) -> Inspector {
        self.inspector.clone()
    }

    /// Lame-duck mode: stops accepting (the listening sockets close) and asks every client
    /// to move to another server (ERROR `Draining` after what is queued for it). Peer links
    /// stay up. The caller decides when to [`ServerHandle::shutdown`].
    pub fn drain(&mut self) {
        if let Some(stop) = self.accept_stop.take() {
            let _ = stop.send(());
        }
        for tx in &self.control {
            let _ = tx.send(shard::Inbound::Control(Control::Drain));
        }
    }

    /// Counters summed over shards (refreshed at every shard tick).
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        if let Ok(all) = self.stats.lock() {
            for s in all.iter() {
                total.add(s);
            }
        }
        total
    }

    /// Stops accepting, tells every client, flushes briefly and waits for the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(stop) = self.accept_stop.take() {
            let _ = stop.send(());
        }
        for tx in &self.control {
            let _ = tx.send(shard::Inbound::Control(Control::Shutdown));
        }
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes any panic, on any thread, end the process: logged with the thread's name, then
/// exit code 70 (EX_SOFTWARE). A server with a dead shard or a dead connection task would
/// otherwise live on half-working; exiting lets a supervisor (systemd) restart it and its
/// clients fail over. `msgc-server` installs this at startup; embedders may too.
pub fn exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        eprintln!("msgc-server: FATAL: panic on thread {name}: {info}; exiting (code 70) so the server restarts clean");
        tracing::error!(thread = name, "FATAL: panic: {info}; exiting");
        std::process::exit(70);
    }));
}

/// A random, non-zero node tag: new at every start so session ids are never reused.
fn random_node_tag() -> NodeTag {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is keyed from the OS's randomness.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let tag = (h.finish() >> 32) as u32;
    NodeTag(tag.max(1))
}

/// 32 random bytes from the OS (the key of this run's handshake nonces). If
/// /dev/urandom cannot be read, the process's hash keys and the clock stand in, and the
/// server says so.
fn os_entropy() -> [u8; 32] {
    use std::io::Read;
    let mut out = [0u8; 32];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut out));
    if let Err(e) = read {
        tracing::warn!("cannot read /dev/urandom ({e}); handshake nonces use weaker randomness");
        use std::hash::{BuildHasher, Hasher};
        for chunk in out.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            chunk.copy_from_slice(&h.finish().to_be_bytes()[..chunk.len()]);
        }
    }
    out
}

fn truncate_name(name: &str) -> &str {
    let mut end = name.len().min(crate::proto::MAX_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The cores shard threads are pinned to, shard `i` to `cores[i % len]`: all of `allowed`
/// (the cores this process may run on) when there are at least as many shards, or none.
/// With fewer shards than cores, pinning would put the shards of every server on one host
/// (several servers with `threads = 1`, say) on the same first cores, while the others
/// idle: the kernel places them instead.
fn cores_to_pin(threads: usize, allowed: Vec<core_affinity::CoreId>) -> Vec<core_affinity::CoreId> {
    if threads >= allowed.len() {
        allowed
    } else {
        tracing::info!(threads, cores = allowed.len(), "fewer shard threads than cores: not pinning them");
        Vec::new()
    }
}

#[cfg(test)]
mod pin_tests {
    use super::*;
    use core_affinity::CoreId;

    fn ids(n: usize) -> Vec<CoreId> {
        (0..n).map(|id| CoreId { id }).collect()
    }

    #[test]
    fn shards_are_pinned_only_when_every_allowed_core_gets_one() {
        assert_eq!(cores_to_pin(2, ids(2)).len(), 2);
        assert_eq!(cores_to_pin(4, ids(2)).len(), 2);
        assert!(cores_to_pin(1, ids(2)).is_empty());
        assert!(cores_to_pin(3, ids(8)).is_empty());
        // A process restricted to one core (taskset) with one shard is pinned to it.
        assert_eq!(cores_to_pin(1, vec![CoreId { id: 5 }]), vec![CoreId { id: 5 }]);
        assert!(cores_to_pin(1, Vec::new()).is_empty());
    }
}
