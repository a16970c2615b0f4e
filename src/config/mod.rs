//! Configuration: the vendor's config syntax read unchanged (`msgc_server.conf`,
//! `ecelerity-cluster.conf` and the files they include) and the typed options of the
//! `msgc_server`, `msgc_client` and `msgcserver_listener` scopes, with the vendor's defaults.
//!
//! Owns parsing and validation. Never panics on any input; every error carries
//! `file:line:col`. Never starts anything: the runtime and the client apply the options.

mod lexer;
mod parser;
mod schema;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub client: ClientConfig,
    pub listener: ListenerConfig,
}

/// The `msgc_server` scope. Every option can change at runtime (SIGHUP).
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// `connect_timeout`: seconds a dial to a peer may take. Default 60.
    pub connect_timeout: Duration,
    /// `debug_level`: log level. Default ERROR.
    pub debug_level: DebugLevel,
    /// `idle_timeout`: seconds without receiving before a connection is closed. Default 30.
    pub idle_timeout: Duration,
    /// `keepalive_interval`: seconds of send silence before a NOOP goes out. Default 5.
    pub keepalive_interval: Duration,
    /// `max_backlog`: queued messages after which a connection is killed as stuck. Default 5000.
    pub max_backlog: usize,
    /// `messages_per_iter`: runs of frames handled per connection per turn. Default 20.
    pub messages_per_iter: usize,
    /// `peers`: the servers of the mesh, `[ name = "address" ]`, in file order. Default empty.
    pub peers: Vec<Peer>,
    /// `port`: the port servers listen on and peers are dialed at. Default 4809.
    pub port: u16,
    /// `reconnect_interval`: seconds before redialing a lost peer. Default 5.
    pub reconnect_interval: Duration,
    /// `tcpbuf_size`: bytes per read and per vectored write, and the socket buffers. Default 131072.
    pub tcpbuf_size: usize,
    /// `max_frame_size` (msgc): largest frame accepted, 4 KiB..=64 MiB. Default 1 MiB.
    pub max_frame_size: usize,
    /// `memory_budget` (msgc): queued bytes per shard before publishers pause. Default 64 MiB.
    pub memory_budget: usize,
    /// `threads` (msgc): shard threads, 0 = one per core. Default 0.
    pub threads: usize,
    /// `io` (msgc): the I/O backend, `uring`, `epoll` or `auto`. Default auto. Read at start.
    pub io: IoBackend,
    /// `tls_certificate` (msgc): PEM file with this server's certificate chain. No default.
    pub tls_certificate: Option<PathBuf>,
    /// `tls_key` (msgc): PEM file with the private key of `tls_certificate`. No default.
    pub tls_key: Option<PathBuf>,
    /// `tls_ca` (msgc): PEM file with the CA certificates that peer and client certificates
    /// are checked against. No default. With certificate, key and CA set, peer links are
    /// mutual TLS.
    pub tls_ca: Option<PathBuf>,
    /// `tls_clients` (msgc): TLS for client connections, `off`, `optional` or `required`.
    /// Default off.
    pub tls_clients: TlsClients,
    /// `tls_client_certificates` (msgc): `none`, `optional` or `required`; presented client
    /// certificates are checked against `tls_ca`. Default none.
    pub tls_client_certificates: ClientCertificates,
    /// `stall_timeout` (msgc): seconds a client may hold publishers back before it is cut.
    /// Default 1.
    pub stall_timeout: Duration,
    /// `link_timeout` (msgc): seconds without anything received after which a peer link is
    /// lost (its traffic then goes through another server). Default 1; at most half of
    /// `idle_timeout` takes effect.
    pub link_timeout: Duration,
    /// `resend_buffer` (msgc): bytes of multicasts per peer link kept until acknowledged,
    /// to resend by another path when the link is lost; and per shard, of other servers'
    /// multicasts kept after delivery, for survivors of their server. Default 16 MiB.
    pub resend_buffer: usize,
    /// `handshake_timeout` (msgc): seconds a connection has to complete its handshake.
    /// Default 10.
    pub handshake_timeout: Duration,
    /// `max_connections` (msgc): open connections per server. Default 65536.
    pub max_connections: usize,
    /// `max_handshakes` (msgc): connections in their handshake per server. Default 1024.
    pub max_handshakes: usize,
    /// `max_groups_per_session` (msgc): groups one session may join. Default 1024.
    pub max_groups_per_session: usize,
    /// `max_group_members` (msgc): members of one group. Default 4096.
    pub max_group_members: usize,
    /// `cluster_secret` or `cluster_secret_file` (msgc): the shared secret peers prove
    /// with an HMAC challenge. Default none.
    pub cluster_secret: Option<crate::core::ClusterSecret>,
    /// `metrics_listen` (msgc): where the HTTP endpoint serving `/metrics` (Prometheus) and
    /// `/varz` (JSON) listens; `""` is off. Default off.
    pub metrics_listen: Option<SocketAddr>,
    /// `control_socket` (msgc): path of the Unix socket `msgc-ctl` talks to; `""` is off.
    /// Default [`DEFAULT_CONTROL_SOCKET`].
    pub control_socket: Option<PathBuf>,
    /// `log_format` (msgc): `text` or `json` (one JSON object per line). Default text.
    pub log_format: LogFormat,
}

/// Where the control socket is unless configured: the directory systemd's
/// `RuntimeDirectory=msgc` creates for the service.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/msgc/msgc.sock";

/// The format of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (colours only when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The `io` option: which I/O backend the shard threads run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring when this host allows it, else epoll with a logged warning.
    #[default]
    Auto,
    /// io_uring (tokio-uring); the server does not start where it is unavailable.
    Uring,
    /// epoll (plain tokio); works wherever tokio does (containers with a strict seccomp
    /// profile, `kernel.io_uring_disabled`).
    Epoll,
}

/// The `tls_clients` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsClients {
    /// Client connections are plain TCP.
    #[default]
    Off,
    /// TLS and plain connections on the same port, told apart by their first byte.
    Optional,
    /// Only TLS; a plain connection gets an error frame and is closed.
    Required,
}

/// The `tls_client_certificates` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientCertificates {
    /// Clients are not asked for a certificate.
    #[default]
    None,
    /// A client may present one; if it does, it must check out against `tls_ca`.
    Optional,
    /// Every TLS client must present a certificate that checks out against `tls_ca`.
    Required,
}

macro_rules! keywords {
    ($t:ty { $($word:literal => $v:expr),+ $(,)? }) => {
        impl $t {
            /// Parses the option's value, case-insensitively.
            pub fn parse(s: &str) -> Option<$t> {
                match s.to_ascii_lowercase().as_str() {
                    $($word => Some($v),)+
                    _ => None,
                }
            }
            /// The accepted values, for error messages.
            pub const WORDS: &'static [&'static str] = &[$($word),+];
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                $(if *self == $v { return f.write_str($word); })+
                Ok(())
            }
        }
    };
}

keywords!(IoBackend { "auto" => IoBackend::Auto, "uring" => IoBackend::Uring, "epoll" => IoBackend::Epoll });
keywords!(TlsClients { "off" => TlsClients::Off, "optional" => TlsClients::Optional, "required" => TlsClients::Required });
keywords!(ClientCertificates {
    "none" => ClientCertificates::None,
    "optional" => ClientCertificates::Optional,
    "required" => ClientCertificates::Required,
});

/// One entry of `peers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// As written: `"192.168.0.10"`, `"node1.example.com"`, `"10.0.0.1:4810"`, `"[::1]:4809"`.
    pub addr: String,
}

/// The `msgc_client` scope.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// `bind_address`: local address for the connection to the server. No default.
    pub bind_address: Option<IpAddr>,
    pub connect_timeout: Duration,
    pub debug_level: DebugLevel,
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub max_backlog: usize,
    pub messages_per_iter: usize,
    pub reconnect_interval: Duration,
    pub tcpbuf_size: usize,
    pub max_frame_size: usize,
    /// `server`: servers tried in order. Default `( "127.0.0.1:4809" )`.
    pub server: Vec<String>,
    /// `tls` (msgc): connect with TLS, `yes` or `no`. Default no.
    pub tls: bool,
    /// `tls_ca` (msgc): PEM file with the CA certificates the server's certificate is checked
    /// against. Default: none, which with `tls = yes` is an error when connecting.
    pub tls_ca: Option<PathBuf>,
    /// `tls_certificate` (msgc): PEM client certificate chain, for servers that ask. No default.
    pub tls_certificate: Option<PathBuf>,
    /// `tls_key` (msgc): PEM private key of `tls_certificate`. No default.
    pub tls_key: Option<PathBuf>,
    /// `tls_server_name` (msgc): the name the server's certificate must carry. Default: the
    /// host part of the server's address.
    pub tls_server_name: Option<String>,
}

/// The `msgcserver_listener` scope: its `listen "ADDR" { }` scopes, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerConfig {
    pub listen: Vec<String>,
}

/// Log levels of the vendor's `debug_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DebugLevel {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl DebugLevel {
    /// Parses a level name, case-insensitively (`WARN` and `ALL`/`NONE` are accepted too).
    pub fn parse(s: &str) -> Option<DebugLevel> {
        Some(match s.to_ascii_uppercase().as_str() {
            "DEBUG" | "ALL" => DebugLevel::Debug,
            "INFO" => DebugLevel::Info,
            "NOTICE" => DebugLevel::Notice,
            "WARNING" | "WARN" => DebugLevel::Warning,
            "ERROR" => DebugLevel::Error,
            "CRITICAL" => DebugLevel::Critical,
            "ALERT" => DebugLevel::Alert,
            "EMERGENCY" | "NONE" => DebugLevel::Emergency,
            _ => return None,
        })
    }

    /// The `tracing` filter level this maps to.
    pub fn as_tracing_filter(&self) -> &'static str {
        match self {
            DebugLevel::Debug => "debug",
            DebugLevel::Info | DebugLevel::Notice => "info",
            DebugLevel::Warning => "warn",
            _ => "error",
        }
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            connect_timeout: Duration::from_secs(60),
            debug_level: DebugLevel::Error,
            idle_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(5),
            max_backlog: 5000,
            messages_per_iter: 20,
            peers: Vec::new(),
            port: 4809,
            reconnect_interval: Duration::from_secs(5),
            tcpbuf_size: 131072,
            max_frame_size: crate::proto::DEFAULT_MAX_FRAME,
            memory_budget: 64 << 20,
            threads: 0,
            io: IoBackend::Auto,
            tls_certificate: None,
            tls_key: None,
            tls_ca: None,
            tls_clients: TlsClients::Off,
            tls_client_certificates: ClientCertificates::None,
            stall_timeout: Duration::from_secs(1),
            link_timeout: Duration::from_secs(1),
            resend_buffer: 16 << 20,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 65536,
            max_handshakes: 1024,
            max_groups_per_session: 1024,
            max_group_members: 4096,
            cluster_secret: None,
            metrics_listen: None,
            control_socket: Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            log_format: LogFormat::Text,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        let s = ServerConfig::default();
        ClientConfig {
            bind_address: None,
            connect_timeout: s.connect_timeout,
            debug_level: s.debug_level,
            idle_timeout: s.idle_timeout,
            keepalive_interval: s.keepalive_interval,
            max_backlog: s.max_backlog,
            messages_per_iter: s.messages_per_iter,
            reconnect_interval: s.reconnect_interval,
            tcpbuf_size: s.tcpbuf_size,
            max_frame_size: s.max_frame_size,
            server: vec!["127.0.0.1:4809".into()],
            tls: false,
            tls_ca: None,
            tls_certificate: None,
            tls_key: None,
            tls_server_name: None,
        }
    }
}

impl Config {
    /// Reads `path` and the files it includes (relative to the including file's folder).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        schema::load(path)
    }

    /// Parses config text; includes are resolved relative to the current directory.
    pub fn parse_str(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        schema::parse_str(text, file_name)
    }
}

impl Config {
    /// Sets one `msgc_server` option from its value written in the config syntax (`30`,
    /// `"127.0.0.1:9809"`, `[ a = "10.0.0.1" ]`), checked exactly as in a file.
    pub fn set_server_option(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        schema::set_server_option(self, key, value)
    }

    /// The value of one `msgc_server` option, written in the config syntax.
    pub fn server_option(&self, key: &str) -> Result<String, ConfigError> {
        schema::server_option(&self.server, key)
    }

    /// The names of the `msgc_server` options, in the order the reference lists them.
    pub fn server_option_names() -> &'static [&'static str] {
        schema::SERVER_OPTIONS
    }
}

impl ServerConfig {
    /// Whether peer links are mutual TLS: certificate, key and CA are all set.
    pub fn peer_tls(&self) -> bool {
        self.tls_certificate.is_some() && self.tls_key.is_some() && self.tls_ca.is_some()
    }

    /// A digest of the normalized options (FNV-1a 64), equal on servers whose `msgc_server`
    /// scopes mean the same; peers compare it to detect config drift. The host-local
    /// operational options (`metrics_listen`, `control_socket`, `log_format`) are left out:
    /// they may differ between servers without any effect on the mesh.
    pub fn digest(&self) -> u64 {
        let mut peers: Vec<(String, &str)> =
            self.peers.iter().map(|p| (p.name.to_lowercase(), p.addr.as_str())).collect();
        peers.sort();
        let text = format!(
            "{:?}|{:?}|{:?}|{:?}|{}|{}|{:?}|{}|{:?}|{}|{}|{}|{}",
            self.connect_timeout,
            self.debug_level,
            self.idle_timeout,
            self.keepalive_interval,
            self.max_backlog,
            self.messages_per_iter,
            peers,
            self.port,
            self.reconnect_interval,
            self.tcpbuf_size,
            self.max_frame_size,
            self.memory_budget,
            self.threads
        );
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

impl ListenerConfig {
    /// The listen addresses: `":4809"` and `"*:4809"` mean all IPv4 interfaces, a bare port
    /// too; `"[::]:4809"`, `"10.0.0.1:4809"` as written. With no listen scope: `0.0.0.0:port`.
    pub fn socket_addrs(&self, default_port: u16) -> Result<Vec<SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(vec![SocketAddr::from(([0, 0, 0, 0], default_port))]);
        }
        self.listen.iter().map(|l| schema::listen_addr(l).map_err(ConfigError::plain)).collect()
    }
}

/// A `metrics_listen` address: `:9809`, `*:9809`, `127.0.0.1:9809`, `[::1]:9809`, or port 0
/// for any free port.
pub fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    schema::metrics_addr(s)
}

/// A config error; `Display` is `file:line:col: message` when the place is known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    file: String,
    line: u32,
    col: u32,
    message: String,
}

impl ConfigError {
    pub(crate) fn at(file: &str, line: u32, col: u32, message: impl Into<String>) -> ConfigError {
        ConfigError { file: file.to_string(), line, col, message: message.into() }
    }
    pub(crate) fn plain(message: impl Into<String>) -> ConfigError {
        ConfigError { file: String::new(), line: 0, col: 0, message: message.into() }
    }
    pub fn file(&self) -> &str {
        &self.file
    }
    pub fn line(&self) -> u32 {
        self.line
    }
    pub fn col(&self) -> u32 {
        self.col
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    fn render(&self) -> String {
        match (self.file.is_empty(), self.line) {
            (true, _) => self.message.clone(),
            (false, 0) => format!("{}: {}", self.file, self.message),
            (false, _) => format!("{}:{}:{}: {}", self.file, self.line, self.col, self.message),
        }
    }
}
