//! msgc-server: the relay. With no arguments it serves on 0.0.0.0:4809 with the vendor's
//! defaults; with `--config FILE` it reads the vendor's `msgc_server.conf` (or an
//! `ecelerity-cluster.conf` that includes it) unchanged.
//!
//! SIGINT/SIGTERM stop it gracefully; SIGHUP rereads the config file and applies every
//! option without a restart (a bad file is logged and the running config kept).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use msgc::config::{Config, IoBackend, ServerConfig};
use msgc::core::Limits;
use msgc::mesh::{PeerTable, SelfHint};
use msgc::runtime::{self, PeerSpec, ServerHandle, ServerOptions, ServerTls, TlsOptions};
use tracing_subscriber::{reload, EnvFilter};

#[derive(Parser, Debug)]
#[command(name = "msgc-server", version, about = "msgc group-communication relay")]
struct Args {
    /// Config file in the vendor's syntax (msgc_server, msgc_client and msgcserver_listener
    /// scopes; other scopes are skipped).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate FILE, print a summary, and exit (non-zero with the error if it is invalid).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Listen on ADDR (repeatable); overrides the config's listen scopes and port.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Shard threads, one per core by default (0 = all cores); overrides the config.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Which `peers` entry this server is (default: found by host name or address).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// I/O backend: uring, epoll, or auto (io_uring where this host allows it, else epoll);
    /// overrides the config's `io`.
    #[arg(long, value_name = "BACKEND", value_parser = parse_io)]
    io: Option<IoBackend>,
}

fn parse_io(s: &str) -> Result<IoBackend, String> {
    IoBackend::parse(s).ok_or_else(|| format!("expected one of {}", IoBackend::WORDS.join(", ")))
}

type LogHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check_config {
        return check_config(path, &args);
    }
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("msgc-server: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    let log = init_logging(&config.server);
    runtime::exit_on_panic();
    let opts = match options(&config, &args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("msgc-server: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match ServerHandle::start(opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("msgc-server: {e}");
            return ExitCode::from(1);
        }
    };
    if !config.server.peers.is_empty() {
        let l = limits(&config.server);
        if !l.peer_tls && l.cluster_secret.is_none() {
            tracing::warn!(
                "the mesh is UNAUTHENTICATED: peer links are accepted from the addresses in peers only; \
                 configure tls_certificate/tls_key/tls_ca or cluster_secret"
            );
        }
    }
    let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    // Always shown (the default debug_level, ERROR, hides info logs): where to connect.
    let why =
        server.backend_fallback().map(|w| format!(" (io_uring is unavailable: {w})")).unwrap_or_default();
    // One write for both lines: a reader that takes the first line and closes the pipe
    // must not make a second write fail.
    let banner = format!(
        "msgc-server: listening on {}\nmsgc-server: io backend {}{why}\n",
        addrs.join(" "),
        server.backend()
    );
    print!("{banner}");
    serve(server, config, &args, &log);
    ExitCode::SUCCESS
}

/// Waits for signals: SIGHUP reloads, SIGINT/SIGTERM stop.
fn serve(server: ServerHandle, mut config: Config, args: &Args, log: &LogHandle) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot wait for signals ({e}); stopping");
            return server.shutdown();
        }
    };
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) =
            (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            tracing::error!("cannot install signal handlers; stopping");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => reload(&server, &mut config, args, log),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("stopping: telling clients and flushing");
    });
    server.shutdown();
}

/// Rereads the config file and applies it; a bad file keeps the running config.
fn reload(server: &ServerHandle, config: &mut Config, args: &Args, log: &LogHandle) {
    let Some(path) = &args.config else {
        tracing::info!("SIGHUP: no --config file to reload; nothing to do");
        return;
    };
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload failed, keeping the running config: {e}");
            return;
        }
    };
    let opts = match options(&new, args) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("reload failed, keeping the running config: {e}");
            return;
        }
    };
    if let Ok(old) = options(config, args) {
        if opts.listen != old.listen {
            tracing::warn!("reload: listen addresses changed; they take effect at the next restart");
        }
        if opts.threads != old.threads {
            tracing::warn!("reload: threads changed; it takes effect at the next restart");
        }
        if opts.io != old.io {
            tracing::warn!("reload: io changed; it takes effect at the next restart");
        }
        // Reread even when the file names are unchanged: renewed certificates are usually
        // written over the old files.
        if opts.tls != old.tls || opts.tls != TlsOptions::default() {
            if let Err(e) = server.set_tls(&opts.tls) {
                tracing::error!("reload failed, keeping the running config: {e}");
                return;
            }
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        let _ = log.reload(EnvFilter::new(log_filter(&new.server)));
    }
    server.reload(opts.limits);
    server.set_peers(opts.peers);
    tracing::info!(file = %path.display(), "config reloaded");
    *config = new;
}

fn check_config(path: &Path, args: &Args) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let s = &config.server;
    println!("{}: OK", path.display());
    println!(
        "  msgc_server: port {}, tcpbuf_size {}, max_backlog {}, messages_per_iter {}, \
         idle_timeout {:?}, keepalive_interval {:?}, connect_timeout {:?}, reconnect_interval {:?}, \
         debug_level {:?}, digest {:016x}",
        s.port,
        s.tcpbuf_size,
        s.max_backlog,
        s.messages_per_iter,
        s.idle_timeout,
        s.keepalive_interval,
        s.connect_timeout,
        s.reconnect_interval,
        s.debug_level,
        s.digest()
    );
    println!(
        "  limits (msgc): stall_timeout {:?}, handshake_timeout {:?}, max_connections {}, max_handshakes {}, \
         max_groups_per_session {}, max_group_members {}, max_frame_size {}, memory_budget {}, threads {}",
        s.stall_timeout,
        s.handshake_timeout,
        s.max_connections,
        s.max_handshakes,
        s.max_groups_per_session,
        s.max_group_members,
        s.max_frame_size,
        s.memory_budget,
        s.threads
    );
    let l = limits(s);
    let auth = match (l.peer_tls, l.cluster_secret.is_some()) {
        (true, true) => "mutual TLS and cluster secret",
        (true, false) => "mutual TLS",
        (false, true) => "cluster secret (HMAC challenge)",
        (false, false) => "none: UNAUTHENTICATED, links accepted from the peers' addresses only",
    };
    println!("  peer authentication (msgc): {auth}");
    for p in &s.peers {
        println!("  peer {} = {}", p.name, p.addr);
    }
    println!(
        "  msgc_server (msgc): io {}, tls_clients {}, tls_client_certificates {}, tls_certificate {}, tls_key {}, tls_ca {}, peer links {}",
        s.io,
        s.tls_clients,
        s.tls_client_certificates,
        shown(&s.tls_certificate),
        shown(&s.tls_key),
        shown(&s.tls_ca),
        if s.peer_tls() { "mutual TLS" } else { "plain" },
    );
    let c = &config.client;
    println!(
        "  msgc_client: server {:?}, tls {}, tls_ca {}, tls_certificate {}, tls_key {}, tls_server_name {}",
        c.server,
        if c.tls { "yes" } else { "no" },
        shown(&c.tls_ca),
        shown(&c.tls_certificate),
        shown(&c.tls_key),
        c.tls_server_name.as_deref().unwrap_or("(host of the server address)"),
    );
    // The files must be readable and valid here, as at startup.
    if let Err(e) = ServerTls::load(&tls_options(s)) {
        eprintln!("{}: msgc_server TLS: {e}", path.display());
        return ExitCode::from(2);
    }
    if let Err(e) = msgc::client::ClientOptions::from(c).tls_config() {
        eprintln!("{}: msgc_client TLS: {e}", path.display());
        return ExitCode::from(2);
    }
    match options(&config, args) {
        Ok(o) if !s.peers.is_empty() => println!("  this host is peer {:?}", o.node_name),
        Ok(_) => {}
        Err(e) => {
            // Which entry is this host depends on where it runs: report, do not fail.
            println!("  note: {e}");
        }
    }
    ExitCode::SUCCESS
}

/// The server's options from the config and the command line.
fn options(config: &Config, args: &Args) -> Result<ServerOptions, String> {
    let s = &config.server;
    let listen = if !args.listen.is_empty() {
        args.listen.clone()
    } else if !config.listener.listen.is_empty() {
        config.listener.socket_addrs(s.port).map_err(|e| e.to_string())?
    } else {
        vec![SocketAddr::from(([0, 0, 0, 0], s.port))]
    };
    let (node_name, peers) = identify(s, args, &listen)?;
    Ok(ServerOptions {
        listen,
        threads: args.threads.unwrap_or(s.threads),
        pin_threads: true,
        limits: limits(s),
        node_name,
        digest: s.digest(),
        peers,
        io: args.io.unwrap_or(s.io),
        tls: tls_options(s),
    })
}

fn tls_options(s: &ServerConfig) -> TlsOptions {
    TlsOptions {
        certificate: s.tls_certificate.clone(),
        key: s.tls_key.clone(),
        ca: s.tls_ca.clone(),
        clients: s.tls_clients,
        client_certificates: s.tls_client_certificates,
    }
}

fn shown(p: &Option<PathBuf>) -> String {
    p.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into())
}

/// Finds this server in `peers` and lists every peer's `host:port`.
fn identify(s: &ServerConfig, args: &Args, listen: &[SocketAddr]) -> Result<(String, Vec<PeerSpec>), String> {
    if s.peers.is_empty() {
        return Ok((args.node.clone().unwrap_or_else(runtime::local_hostname), Vec::new()));
    }
    let entries: Vec<(String, String)> = s.peers.iter().map(|p| (p.name.clone(), p.addr.clone())).collect();
    let table = PeerTable::new(&entries, s.port).map_err(|e| e.to_string())?;
    let hint = SelfHint {
        node: args.node.clone(),
        hostnames: runtime::hostnames(),
        local_addrs: runtime::local_addrs(),
        listen_port: listen.first().map(|a| a.port()),
    };
    let me = table.identify_self(&hint).map_err(|e| e.to_string())?;
    let name = table.name(me).map(|n| n.as_str().to_string()).unwrap_or_default();
    let peers = table
        .ids()
        .filter_map(|id| {
            let name = table.name(id)?.as_str().to_string();
            Some(PeerSpec { name, addr: table.resolve_addr(id)?.to_string() })
        })
        .collect();
    Ok((name, peers))
}

/// What the core enforces, from the `msgc_server` options.
fn limits(s: &ServerConfig) -> Limits {
    Limits {
        max_backlog: s.max_backlog,
        messages_per_iter: s.messages_per_iter,
        max_frame: s.max_frame_size,
        memory_budget: s.memory_budget,
        idle_timeout: s.idle_timeout,
        keepalive_interval: s.keepalive_interval,
        stall_timeout: s.stall_timeout,
        tcpbuf_size: s.tcpbuf_size,
        connect_timeout: s.connect_timeout,
        reconnect_interval: s.reconnect_interval,
        handshake_timeout: s.handshake_timeout,
        max_connections: s.max_connections,
        max_handshakes: s.max_handshakes,
        max_groups_per_session: s.max_groups_per_session,
        max_group_members: s.max_group_members,
        peer_tls: s.peer_tls(),
        cluster_secret: s.cluster_secret.clone(),
    }
}

fn log_filter(s: &ServerConfig) -> String {
    format!("msgc={}", s.debug_level.as_tracing_filter())
}

/// `RUST_LOG` if set, else the config's `debug_level`; reloadable on SIGHUP.
fn init_logging(s: &ServerConfig) -> LogHandle {
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(log_filter(s)));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    handle
}
