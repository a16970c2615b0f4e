//! msgc-server: the relay. With no arguments it serves on 0.0.0.0:4809 with the vendor's
//! defaults; with `--config FILE` it reads the vendor's `msgc_server.conf` (or an
//! `ecelerity-cluster.conf` that includes it) unchanged.
//!
//! SIGINT/SIGTERM stop it gracefully; SIGHUP rereads the config file and applies every
//! option without a restart (a bad file is logged and the running config kept). The same
//! reload path serves `msgc-ctl reload` and `msgc-ctl config set`. Optional: a metrics
//! endpoint (`--metrics`), the control socket (`--control`), systemd notifications when
//! started with `NOTIFY_SOCKET`. All of that runs on this main thread, never on a shard.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use msgc::config::{Config, IoBackend, LogFormat, ServerConfig};
use msgc::core::Limits;
use msgc::mesh::{PeerTable, SelfHint};
use msgc::ops::control::{ConfigValue, ControlSocket, DrainResult, Pending, ReloadResult, Request, Response};
use msgc::ops::notify::{self, Notifier};
use msgc::runtime::{self, PeerSpec, ServerHandle, ServerOptions, ServerTls, TlsOptions};
use tokio::sync::{mpsc, watch};
use tracing_subscriber::{reload, EnvFilter};

#[derive(Parser, Debug)]
#[command(
    name = "msgc-server",
    version,
    about = "msgc group-communication relay",
    after_help = "Signals: SIGHUP rereads --config and applies it live; SIGINT/SIGTERM stop gracefully \
                  (clients are told, queues flush for up to 2 s).\n\
                  Environment: RUST_LOG overrides debug_level; NOTIFY_SOCKET and WATCHDOG_USEC (set by \
                  systemd for Type=notify) enable readiness, reload and watchdog notifications.\n\
                  Operate a running server with msgc-ctl (status, peers, groups, sessions, config, reload, drain)."
)]
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
    /// Serve /metrics (Prometheus) and /varz (JSON) over HTTP on ADDR, e.g. 127.0.0.1:9809
    /// ("off" disables); overrides metrics_listen. Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// The control socket msgc-ctl talks to ("off" disables); overrides control_socket.
    /// Default /run/msgc/msgc.sock; if it cannot be created the server runs without one.
    #[arg(long, value_name = "PATH")]
    control: Option<String>,
    /// Log line format, text or json; overrides log_format.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// I/O backend: uring, epoll, or auto (io_uring where this host allows it, else epoll);
    /// overrides the config's `io`.
    #[arg(long, value_name = "BACKEND", value_parser = parse_io)]
    io: Option<IoBackend>,
}

fn parse_io(s: &str) -> Result<IoBackend, String> {
    IoBackend::parse(s).ok_or_else(|| format!("expected one of {}", IoBackend::WORDS.join(", ")))
}

type LogHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// How long the shards may take to answer a report.
const REPORT_WAIT: Duration = Duration::from_secs(2);
/// How often a drain checks whether clients are left.
const DRAIN_POLL: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check_config {
        return check_config(path, &args);
    }
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("msgc-server: {e}");
            return ExitCode::from(2);
        }
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
    if let Some(n) = fd_headroom(config.server.max_connections) {
        // An error, so that the default debug_level shows it: connections will fail.
        tracing::error!("{n}");
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("msgc-server: cannot start the main thread's runtime: {e}");
            return ExitCode::from(1);
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
    // Signal handlers before anyone can know where we listen: a SIGHUP or SIGTERM that
    // arrives early must reload or stop us, not kill us with the default action.
    let signals = {
        let _rt = rt.enter();
        Signals::install()
    };
    let Ok(signals) = signals else {
        eprintln!("msgc-server: cannot install signal handlers");
        return ExitCode::from(1);
    };
    print!("{banner}");
    let notifier = match Notifier::from_env() {
        Ok(n) => n.map(Arc::new),
        Err(e) => {
            tracing::error!("NOTIFY_SOCKET is set but unusable: {e}");
            None
        }
    };
    let (requests_tx, requests_rx) = mpsc::channel(16);
    let (config_tx, _) = watch::channel(config.server.clone());
    let mut daemon = Daemon {
        server,
        config,
        args: &args,
        log,
        notifier,
        config_tx,
        requests_tx,
        metrics: None,
        control: None,
    };
    let code = rt.block_on(async {
        let _ = daemon.update_endpoints(true);
        if daemon.config.server.metrics_listen.is_some() && daemon.metrics.is_none() {
            // Asked for explicitly and unavailable: better to refuse than to run unwatched.
            return ExitCode::from(1);
        }
        daemon.notify(|n| n.ready(&format!("listening on {}", addrs.join(" "))));
        daemon.run(requests_rx, signals).await
    });
    daemon.notify(|n| n.stopping("stopping"));
    tracing::info!("stopping: telling clients and flushing");
    if let Some((_, task)) = daemon.metrics.take() {
        task.abort();
    }
    if let Some((_, task)) = daemon.control.take() {
        task.abort();
    }
    // Let the aborted tasks drop their sockets (the control socket file goes with it).
    rt.block_on(tokio::task::yield_now());
    drop(rt);
    daemon.server.shutdown();
    code
}

/// A running endpoint: what it is bound to and its task.
type Endpoint<T> = Option<(T, tokio::task::JoinHandle<()>)>;

/// The main thread's state: the server, its running config, and the operator endpoints.
struct Daemon<'a> {
    server: ServerHandle,
    /// The running config (the file's, with command-line overrides and `config set`s).
    config: Config,
    args: &'a Args,
    log: LogHandle,
    notifier: Option<Arc<Notifier>>,
    config_tx: watch::Sender<ServerConfig>,
    requests_tx: mpsc::Sender<Pending>,
    metrics: Endpoint<SocketAddr>,
    control: Endpoint<PathBuf>,
}

/// SIGHUP, SIGTERM and SIGINT, handled from the moment they are installed.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime's context).
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

impl Daemon<'_> {
    /// Waits for signals, control requests and timers until asked to stop.
    async fn run(&mut self, mut requests: mpsc::Receiver<Pending>, signals: Signals) -> ExitCode {
        let Signals { mut hup, mut term, mut int } = signals;
        let watchdog = self.notifier.as_ref().and(notify::watchdog_interval());
        let mut watchdog_tick = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
        let mut drain_tick = tokio::time::interval(DRAIN_POLL);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    self.notify(|n| n.reloading());
                    match self.reload_file() {
                        Ok(r) => tracing::info!(changed = ?r.changed, notes = ?r.notes, "config reloaded (SIGHUP)"),
                        Err(e) => tracing::error!("reload failed, keeping the running config: {e}"),
                    }
                    self.notify(|n| n.ready("running"));
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
                Some((req, reply)) = requests.recv() => {
                    if let Request::Drain { deadline_secs } = req {
                        let secs = deadline_secs.clamp(1, 86_400);
                        let response = if drain_deadline.is_some() {
                            Response::error("a drain is already in progress")
                        } else {
                            drain_deadline = Some(Instant::now() + Duration::from_secs(secs));
                            self.drain(secs).await
                        };
                        let _ = reply.send(response);
                    } else {
                        self.handle(req, reply);
                    }
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    let (inspector, notifier) = (self.server.inspector(), self.notifier.clone());
                    let wait = watchdog.unwrap_or(REPORT_WAIT) / 4;
                    // Only shards that answer keep systemd's watchdog fed.
                    tokio::spawn(async move {
                        if inspector.report(false, wait).await.is_ok() {
                            if let Some(n) = notifier {
                                let _ = n.watchdog();
                            }
                        }
                    });
                }
                _ = drain_tick.tick(), if drain_deadline.is_some() => {
                    if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                        tracing::warn!("drain deadline passed with clients left; stopping");
                        break;
                    }
                    if let Ok(r) = self.server.inspector().report(false, REPORT_WAIT).await {
                        if r.clients + r.handshaking + r.closing == 0 {
                            tracing::info!("drain complete: no client left");
                            break;
                        }
                    }
                }
            }
        }
        ExitCode::SUCCESS
    }

    fn notify(&self, f: impl FnOnce(&Notifier) -> std::io::Result<()>) {
        if let Some(n) = &self.notifier {
            if let Err(e) = f(n) {
                tracing::warn!("sd_notify failed: {e}");
            }
        }
    }

    /// Answers a control request; reports are made on a task of their own.
    fn handle(&mut self, req: Request, reply: tokio::sync::oneshot::Sender<Response>) {
        let response = match req {
            Request::Status | Request::Peers | Request::Groups | Request::Sessions => {
                let inspector = self.server.inspector();
                tokio::spawn(async move {
                    let response = match inspector.report(req == Request::Sessions, REPORT_WAIT).await {
                        Ok(r) => match req {
                            Request::Peers => Response::ok(&r.links),
                            Request::Groups => Response::ok(&r.groups),
                            Request::Sessions => Response::ok(&r.sessions),
                            _ => Response::ok(&r),
                        },
                        Err(e) => Response::error(e.to_string()),
                    };
                    let _ = reply.send(response);
                });
                return;
            }
            Request::ConfigGet { key: Some(key) } => match self.config.server_option(&key) {
                Ok(value) => {
                    Response::ok(vec![ConfigValue { key: key.to_ascii_lowercase(), value, note: None }])
                }
                Err(e) => Response::error(e.to_string()),
            },
            Request::ConfigGet { key: None } => {
                let all: Vec<ConfigValue> = Config::server_option_names()
                    .iter()
                    .filter_map(|k| {
                        self.config.server_option(k).ok().map(|value| ConfigValue {
                            key: k.to_string(),
                            value,
                            note: None,
                        })
                    })
                    .collect();
                Response::ok(all)
            }
            Request::ConfigSet { key, value } => {
                self.notify(|n| n.reloading());
                let r = self.config_set(&key, &value);
                self.notify(|n| n.ready("running"));
                match r {
                    Ok(v) => Response::ok(v),
                    Err(e) => Response::error(e),
                }
            }
            Request::Reload => {
                self.notify(|n| n.reloading());
                let r = self.reload_file();
                self.notify(|n| n.ready("running"));
                match r {
                    Ok(r) => Response::ok(r),
                    Err(e) => Response::error(format!("reload failed, keeping the running config: {e}")),
                }
            }
            // invariant: drains are handled by the main loop, which owns the deadline.
            Request::Drain { .. } => Response::error("drain is handled by the main loop"),
        };
        let _ = reply.send(response);
    }

    /// Lame-duck mode: stop accepting, ask every client to move.
    async fn drain(&mut self, deadline_secs: u64) -> Response {
        let clients = match self.server.inspector().report(false, REPORT_WAIT).await {
            Ok(r) => r.clients,
            Err(e) => return Response::error(e.to_string()),
        };
        tracing::warn!(clients, deadline_secs, "draining: no new connections, clients asked to move");
        self.notify(|n| n.notify(&format!("STATUS=draining: {clients} client(s) asked to move")));
        self.server.drain();
        Response::ok(DrainResult { clients, deadline_secs })
    }

    /// SIGHUP and `msgc-ctl reload`: reread the file and apply it.
    fn reload_file(&mut self) -> Result<ReloadResult, String> {
        let Some(path) = &self.args.config else {
            return Ok(ReloadResult {
                file: None,
                changed: Vec::new(),
                notes: vec!["no --config file to reload; nothing to do".into()],
            });
        };
        let new = load(self.args).map_err(|e| e.to_string())?;
        let changed = changed_options(&self.config, &new);
        let notes = self.apply(new)?;
        tracing::info!(file = %path.display(), "config reloaded");
        Ok(ReloadResult { file: Some(path.display().to_string()), changed, notes })
    }

    /// `msgc-ctl config set`: one option changed in the running config, then applied.
    fn config_set(&mut self, key: &str, value: &str) -> Result<ConfigValue, String> {
        let mut new = self.config.clone();
        new.set_server_option(key, value).map_err(|e| e.to_string())?;
        let notes = self.apply(new)?;
        let key = key.to_ascii_lowercase();
        let value = self.config.server_option(&key).map_err(|e| e.to_string())?;
        tracing::info!(%key, %value, "config set");
        let note = (!notes.is_empty()).then(|| notes.join("; "));
        Ok(ConfigValue { key, value, note })
    }

    /// The one path by which a new config takes effect (SIGHUP, reload, config set).
    /// Returns notes on what waits for a restart or failed; an invalid config changes nothing.
    fn apply(&mut self, new: Config) -> Result<Vec<String>, String> {
        let opts = options(&new, self.args)?;
        let mut notes = Vec::new();
        if let Ok(old) = options(&self.config, self.args) {
            if opts.listen != old.listen {
                notes.push("listen addresses changed: they take effect at the next restart".to_string());
            }
            if opts.threads != old.threads {
                notes.push("threads changed: it takes effect at the next restart".to_string());
            }
            if opts.limits.tcpbuf_size != old.limits.tcpbuf_size {
                notes.push("tcpbuf_size applies to connections made from now on".to_string());
            }
            if opts.io != old.io {
                notes.push("io changed: it takes effect at the next restart".to_string());
            }
            // Reread even when the file names are unchanged: renewed certificates are
            // usually written over the old files.
            if opts.tls != old.tls || opts.tls != TlsOptions::default() {
                self.server.set_tls(&opts.tls).map_err(|e| format!("TLS: {e}"))?;
            }
        }
        if new.server.max_connections != self.config.server.max_connections {
            notes.extend(fd_headroom(new.server.max_connections));
        }
        if new.server.log_format != self.config.server.log_format {
            notes.push("log_format takes effect at the next restart".to_string());
        }
        for n in &notes {
            tracing::warn!("reload: {n}");
        }
        if std::env::var_os("RUST_LOG").is_none() {
            let _ = self.log.reload(EnvFilter::new(log_filter(&new.server)));
        }
        self.server.reload(opts.limits);
        self.server.set_peers(opts.peers);
        self.config = new;
        self.config_tx.send_replace(self.config.server.clone());
        notes.extend(self.update_endpoints(false));
        Ok(notes)
    }

    /// Starts, moves or stops the metrics endpoint and the control socket to match the
    /// running config. A new endpoint replaces the old one only once it is bound.
    fn update_endpoints(&mut self, starting: bool) -> Vec<String> {
        let mut notes = Vec::new();
        let want = self.config.server.metrics_listen;
        // What was asked, not what was bound: with port 0 the two differ.
        let have = self.metrics.as_ref().map(|(a, _)| *a);
        if want != have {
            match want {
                None => {
                    if let Some((_, t)) = self.metrics.take() {
                        t.abort();
                    }
                }
                Some(addr) => match bind_metrics(addr) {
                    Ok(listener) => {
                        let bound = listener.local_addr().unwrap_or(addr);
                        if let Some((_, t)) = self.metrics.take() {
                            t.abort();
                        }
                        let task = tokio::spawn(msgc::ops::http::serve(
                            listener,
                            self.server.inspector(),
                            self.config_tx.subscribe(),
                        ));
                        println!("msgc-server: metrics on http://{bound}/metrics");
                        tracing::info!(%bound, "metrics endpoint listening");
                        self.metrics = Some((addr, task));
                    }
                    Err(e) => {
                        let msg = format!("metrics endpoint: cannot listen on {addr}: {e}");
                        tracing::error!("{msg}");
                        if starting {
                            eprintln!("msgc-server: {msg}");
                        }
                        notes.push(msg);
                    }
                },
            }
        }
        let want = self.config.server.control_socket.clone();
        let have = self.control.as_ref().map(|(p, _)| p.clone());
        if want != have {
            if let Some((_, t)) = self.control.take() {
                t.abort();
            }
            if let Some(path) = want {
                match ControlSocket::bind(&path) {
                    Ok(socket) => {
                        tracing::info!(path = %path.display(), "control socket ready");
                        let task = tokio::spawn(socket.serve(self.requests_tx.clone()));
                        self.control = Some((path, task));
                    }
                    Err(e) => {
                        // Never fatal: the relay serves its clients without a control socket.
                        let default = path == Path::new(msgc::config::DEFAULT_CONTROL_SOCKET);
                        let msg = format!("running without a control socket: {e}");
                        if default && !path.parent().is_some_and(Path::exists) {
                            tracing::info!("{msg}");
                        } else {
                            tracing::error!("{msg}");
                            notes.push(msg);
                        }
                    }
                }
            }
        }
        notes
    }
}

/// The config file (or the defaults) with the command line's overrides of operator options.
fn load(args: &Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let s = &mut config.server;
    if let Some(m) = &args.metrics {
        s.metrics_listen = match m.as_str() {
            "" | "off" => None,
            a => Some(msgc::config::parse_metrics_addr(a).map_err(|e| format!("--metrics: {e}"))?),
        };
    }
    if let Some(c) = &args.control {
        s.control_socket = match c.as_str() {
            "" | "off" => None,
            p => Some(PathBuf::from(p)),
        };
    }
    if let Some(f) = &args.log_format {
        s.log_format = match f.to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(format!("--log-format: unknown format `{other}`: expected text or json")),
        };
    }
    Ok(config)
}

/// The `msgc_server` options whose value differs between two configs.
fn changed_options(old: &Config, new: &Config) -> Vec<String> {
    Config::server_option_names()
        .iter()
        .filter(|k| old.server_option(k).ok() != new.server_option(k).ok())
        .map(|k| k.to_string())
        .collect()
}

/// Descriptors the server needs beyond one per connection: listeners, io_uring rings,
/// shard channels, the control socket and metrics endpoint, log and config files.
const FD_MARGIN: u64 = 256;

/// A warning when the open-files limit cannot hold `max_connections` connections.
fn fd_headroom(max_connections: usize) -> Option<String> {
    // SAFETY: getrlimit writes a plain struct that we own.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let need = max_connections as u64 + FD_MARGIN;
    (lim.rlim_cur < need).then(|| {
        format!(
            "the open-files limit ({}) is below max_connections ({max_connections}) + {FD_MARGIN}: \
             connections will fail before max_connections; raise LimitNOFILE (or ulimit -n) to at least {need}",
            lim.rlim_cur
        )
    })
}

fn bind_metrics(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std)
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
    println!(
        "  operations (msgc): metrics_listen {}, control_socket {}, log_format {}",
        config.server_option("metrics_listen").unwrap_or_default(),
        config.server_option("control_socket").unwrap_or_default(),
        config.server_option("log_format").unwrap_or_default(),
    );
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
        // A lost link must be noticed before idle_timeout would close it anyway.
        link_timeout: s.link_timeout.min(s.idle_timeout / 2),
        resend_buffer: s.resend_buffer,
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

/// `RUST_LOG` if set, else the config's `debug_level` (reloadable); text or JSON lines on
/// stderr, with colours only when stderr is a terminal (never in a file or the journal).
fn init_logging(s: &ServerConfig) -> LogHandle {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(log_filter(s)));
    let (filter, handle) = reload::Layer::new(filter);
    let json = s.log_format == LogFormat::Json;
    let text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let json = json.then(|| tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr));
    tracing_subscriber::registry().with(filter).with(text).with(json).init();
    handle
}
