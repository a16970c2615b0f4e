//! From the syntax tree to the typed `Config`: which scopes and options msgc reads, their
//! types, ranges and defaults, includes, and errors that point at the offending text.
//!
//! Never panics on any input; never reads anything but the config files named.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::parser::{parse, Entry, Pos, Value};
use super::{
    ClientCertificates, ClientConfig, Config, ConfigError, DebugLevel, IoBackend, LogFormat, Peer,
    ServerConfig, TlsClients,
};

pub(super) const SERVER_OPTIONS: &[&str] = &[
    "connect_timeout",
    "debug_level",
    "idle_timeout",
    "keepalive_interval",
    "max_backlog",
    "messages_per_iter",
    "peers",
    "port",
    "reconnect_interval",
    "tcpbuf_size",
    "max_frame_size",
    "memory_budget",
    "threads",
    "io",
    "tls_certificate",
    "tls_key",
    "tls_ca",
    "tls_clients",
    "tls_client_certificates",
    "stall_timeout",
    "link_timeout",
    "resend_buffer",
    "handshake_timeout",
    "max_connections",
    "max_handshakes",
    "max_groups_per_session",
    "max_group_members",
    "cluster_secret",
    "cluster_secret_file",
    "metrics_listen",
    "control_socket",
    "log_format",
];
/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
const CLIENT_OPTIONS: &[&str] = &[
    "bind_address",
    "connect_timeout",
    "debug_level",
    "idle_timeout",
    "keepalive_interval",
    "max_backlog",
    "messages_per_iter",
    "reconnect_interval",
    "tcpbuf_size",
    "max_frame_size",
    "server",
    "tls",
    "tls_ca",
    "tls_certificate",
    "tls_key",
    "tls_server_name",
];
/// Longest time option accepted (a year), so that durations cannot overflow.
const MAX_SECONDS: f64 = 31_536_000.0;
/// Shortest time option accepted: 0 would mean "at once" (every connection idle, a redial
/// loop with no pause), never what an operator wants.
const MIN_SECONDS: f64 = 0.1;
/// Deepest chain of includes.
const MAX_INCLUDE_DEPTH: usize = 16;
/// Most files one config may read, includes counted, and the largest file.
const MAX_INCLUDE_FILES: usize = 256;
const MAX_FILE_BYTES: u64 = 4 << 20;
/// Shortest cluster secret accepted.
const MIN_SECRET_LEN: usize = 16;
/// Largest `cluster_secret_file` read.
const MAX_SECRET_FILE_BYTES: u64 = 64 << 10;

/// Sets one of the options `msgc_server` and `msgc_client` share (same names, types and
/// ranges) on `$cfg`; evaluates to whether `$key` was one of them.
macro_rules! set_shared {
    ($cfg:expr, $key:expr, $v:expr) => {
        match AsRef::<str>::as_ref(&$key) {
            "connect_timeout" => {
                $cfg.connect_timeout = seconds($v)?;
                true
            }
            "debug_level" => {
                $cfg.debug_level = level($v)?;
                true
            }
            "idle_timeout" => {
                $cfg.idle_timeout = seconds($v)?;
                true
            }
            "keepalive_interval" => {
                $cfg.keepalive_interval = seconds($v)?;
                true
            }
            "max_backlog" => {
                $cfg.max_backlog = int($v, 1, usize::MAX as u64)? as usize;
                true
            }
            "messages_per_iter" => {
                $cfg.messages_per_iter = int($v, 1, usize::MAX as u64)? as usize;
                true
            }
            "reconnect_interval" => {
                $cfg.reconnect_interval = seconds($v)?;
                true
            }
            "tcpbuf_size" => {
                $cfg.tcpbuf_size = int($v, 4096, 64 << 20)? as usize;
                true
            }
            "max_frame_size" => {
                $cfg.max_frame_size = int($v, 4096, 64 << 20)? as usize;
                true
            }
            _ => false,
        }
    };
}

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let mut entries = Vec::new();
    read_file(path, &mut Includes::default(), &mut entries, None)?;
    build(entries)
}

pub fn parse_str(text: &str, file: &str) -> Result<Config, ConfigError> {
    let mut entries = Vec::new();
    expand(parse(text, file)?, Path::new("."), &mut Includes::default(), &mut entries)?;
    build(entries)
}

/// The chain of files being read (to catch cycles) and how many were read in all.
#[derive(Default)]
struct Includes {
    stack: Vec<PathBuf>,
    files: usize,
}

fn read_file(
    path: &Path,
    inc: &mut Includes,
    out: &mut Vec<Entry>,
    from: Option<&Pos>,
) -> Result<(), ConfigError> {
    let shown = path.display().to_string();
    let io_err = |e: std::io::Error| match from {
        Some(p) => ConfigError::at(&p.file, p.line, p.col, format!("cannot read included file {shown}: {e}")),
        None => ConfigError::plain(format!("{shown}: cannot read config file: {e}")),
    };
    let canonical = path.canonicalize().map_err(io_err)?;
    let here = || from.cloned().unwrap_or(Pos { file: shown.clone(), line: 0, col: 0 });
    inc.files += 1;
    if inc.files > MAX_INCLUDE_FILES {
        let p = here();
        return Err(ConfigError::at(
            &p.file,
            p.line,
            p.col,
            format!("more than {MAX_INCLUDE_FILES} config files included"),
        ));
    }
    let Some(bytes) = read_bounded(path, MAX_FILE_BYTES).map_err(io_err)? else {
        let p = here();
        let msg =
            format!("{shown} is over {MAX_FILE_BYTES} bytes; config files are limited to {MAX_FILE_BYTES}");
        return Err(ConfigError::at(&p.file, p.line, p.col, msg));
    };
    let stack = &mut inc.stack;
    if stack.contains(&canonical) {
        let p = from.cloned().unwrap_or(Pos { file: shown.clone(), line: 0, col: 0 });
        return Err(ConfigError::at(
            &p.file,
            p.line,
            p.col,
            format!("include cycle: {shown} includes itself"),
        ));
    }
    if stack.len() >= MAX_INCLUDE_DEPTH {
        let p = from.cloned().unwrap_or(Pos { file: shown.clone(), line: 0, col: 0 });
        return Err(ConfigError::at(&p.file, p.line, p.col, "includes nested too deeply"));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| io_err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8")))?;
    stack.push(canonical);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let result = expand(parse(&text, &shown)?, &dir, inc, out);
    inc.stack.pop();
    result
}

/// The contents of `path` if they are at most `max` bytes, else `None`. The size is found by
/// reading, not from metadata: `/dev/zero` and files under `/proc` report 0 bytes, and a
/// read of them must not run without end.
fn read_bounded(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// Replaces top-level includes by the entries of the files they name.
fn expand(
    entries: Vec<Entry>,
    dir: &Path,
    inc: &mut Includes,
    out: &mut Vec<Entry>,
) -> Result<(), ConfigError> {
    for e in entries {
        match e {
            Entry::Include { path, pos } => {
                let p = Path::new(&path);
                let full = if p.is_absolute() { p.to_path_buf() } else { dir.join(p) };
                read_file(&full, inc, out, Some(&pos))?;
            }
            other => out.push(other),
        }
    }
    Ok(())
}

fn err(pos: &Pos, msg: impl Into<String>) -> ConfigError {
    ConfigError::at(&pos.file, pos.line, pos.col, msg)
}

fn build(entries: Vec<Entry>) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    let mut server_opts: Vec<(String, Pos, Value)> = Vec::new();
    let mut client_opts: Vec<(String, Pos, Value)> = Vec::new();
    let mut listens: Vec<(String, Pos)> = Vec::new();
    for e in entries {
        match e {
            Entry::Scope { name, body, pos, .. } => match name.to_ascii_lowercase().as_str() {
                "msgc_server" => options_of(body, &name, &mut server_opts)?,
                "msgc_client" => options_of(body, &name, &mut client_opts)?,
                "msgcserver_listener" => listener(body, &mut listens)?,
                _ => tracing::debug!("{}:{}: skipping scope {name} (not msgc's)", pos.file, pos.line),
            },
            Entry::Option { key, pos, .. } => {
                tracing::debug!("{}:{}: skipping top-level option {key} (not msgc's)", pos.file, pos.line)
            }
            Entry::Include { .. } => {}
        }
    }
    check_duplicates(&server_opts)?;
    check_duplicates(&client_opts)?;
    let mut port_pos = None;
    for (key, pos, value) in &server_opts {
        if !set_server(&mut config.server, key, pos, value)? {
            return Err(unknown(key, pos, "msgc_server", SERVER_OPTIONS));
        }
        if key == "port" {
            port_pos = Some(pos.clone());
        }
    }
    check_server_tls(&config.server, &server_opts)?;
    if let Err(msg) = check_mesh_size(&config.server) {
        return Err(match server_opts.iter().find(|(k, ..)| k == "peers") {
            Some((_, pos, _)) => err(pos, msg),
            None => ConfigError::plain(msg),
        });
    }
    for (key, pos, value) in &client_opts {
        let c: &mut ClientConfig = &mut config.client;
        if set_shared!(c, key, value) {
            continue;
        }
        match key.as_str() {
            "bind_address" => c.bind_address = Some(ip(value)?),
            "server" => c.server = servers(value)?,
            "tls" => c.tls = yes_no(value)?,
            "tls_ca" => c.tls_ca = Some(path(value)?),
            "tls_certificate" => c.tls_certificate = Some(path(value)?),
            "tls_key" => c.tls_key = Some(path(value)?),
            "tls_server_name" => c.tls_server_name = Some(scalar(value, "a server name")?.to_string()),
            _ => return Err(unknown(key, pos, "msgc_client", CLIENT_OPTIONS)),
        }
    }
    check_client_tls(&config.client, &client_opts)?;
    if let Err(msg) = check_timeouts(&config.server) {
        let at = server_opts.iter().find(|(k, ..)| k == "idle_timeout" || k == "keepalive_interval");
        return Err(match at {
            Some((_, pos, _)) => err(pos, msg),
            None => ConfigError::plain(msg),
        });
    }
    if server_opts.iter().filter(|(k, ..)| k.starts_with("cluster_secret")).count() > 1 {
        return Err(ConfigError::plain("give cluster_secret or cluster_secret_file, not both"));
    }
    let mut ports = Vec::new();
    for (addr, pos) in &listens {
        let sa = listen_addr(addr).map_err(|m| err(pos, m))?;
        ports.push(sa.port());
        config.listener.listen.push(addr.clone());
    }
    if let (Some(pp), false) = (&port_pos, ports.is_empty()) {
        if !ports.contains(&config.server.port) {
            let (_, lp) = &listens[0];
            return Err(err(
                pp,
                format!(
                    "port {} matches no listen scope of msgcserver_listener (first at {}:{}: port {}); they must match",
                    config.server.port, lp.file, lp.line, ports[0]
                ),
            ));
        }
    }
    if port_pos.is_none() {
        if let Some(&p) = ports.first() {
            // The listener says where this relay listens; peers are dialed there too.
            config.server.port = p;
        }
    }
    Ok(config)
}

/// Sets one `msgc_server` option; false if `key` (lower-cased) is not one.
fn set_server(s: &mut ServerConfig, key: &str, pos: &Pos, value: &Value) -> Result<bool, ConfigError> {
    if set_shared!(s, key, value) {
        return Ok(true);
    }
    match key {
        "peers" => s.peers = peers(value)?,
        "port" => s.port = int(value, 1, 65535)? as u16,
        "memory_budget" => s.memory_budget = int(value, 1 << 20, u64::MAX >> 1)? as usize,
        "threads" => s.threads = int(value, 0, 1024)? as usize,
        "io" => s.io = keyword(value, "io", IoBackend::parse, IoBackend::WORDS)?,
        "tls_certificate" => s.tls_certificate = optional_path(value)?,
        "tls_key" => s.tls_key = optional_path(value)?,
        "tls_ca" => s.tls_ca = optional_path(value)?,
        "tls_clients" => s.tls_clients = keyword(value, "tls_clients", TlsClients::parse, TlsClients::WORDS)?,
        "tls_client_certificates" => {
            s.tls_client_certificates = keyword(
                value,
                "tls_client_certificates",
                ClientCertificates::parse,
                ClientCertificates::WORDS,
            )?
        }
        "stall_timeout" => s.stall_timeout = seconds(value)?,
        "link_timeout" => s.link_timeout = seconds(value)?,
        "resend_buffer" => s.resend_buffer = int(value, 64 << 10, 1 << 30)? as usize,
        "handshake_timeout" => s.handshake_timeout = seconds(value)?,
        "max_connections" => s.max_connections = int(value, 1, 10_000_000)? as usize,
        "max_handshakes" => s.max_handshakes = int(value, 1, 10_000_000)? as usize,
        "max_groups_per_session" => s.max_groups_per_session = int(value, 1, 1_000_000)? as usize,
        "max_group_members" => s.max_group_members = int(value, 1, 1_000_000)? as usize,
        "cluster_secret" => s.cluster_secret = Some(secret(scalar(value, "a secret string")?, value)?),
        "cluster_secret_file" => {
            let path = Path::new(scalar(value, "a file name")?);
            let cannot =
                |why: String| err(pos, format!("cannot read cluster_secret_file {}: {why}", path.display()));
            let text = read_bounded(path, MAX_SECRET_FILE_BYTES)
                .map_err(|e| cannot(e.to_string()))?
                .ok_or_else(|| cannot(format!("over {MAX_SECRET_FILE_BYTES} bytes")))?;
            let trimmed = String::from_utf8_lossy(&text).trim().to_string();
            s.cluster_secret = Some(secret(&trimmed, value)?);
        }
        "metrics_listen" => {
            let a = scalar(value, "an address such as \"127.0.0.1:9809\", or \"\" for off")?;
            s.metrics_listen =
                if a.is_empty() { None } else { Some(metrics_addr(a).map_err(|m| err(value.pos(), m))?) };
        }
        "control_socket" => {
            let p = scalar(value, "a socket path, or \"\" for off")?;
            if p.len() > MAX_SOCKET_PATH {
                return Err(err(
                    value.pos(),
                    format!(
                        "a Unix socket path is at most {MAX_SOCKET_PATH} bytes; this one has {}",
                        p.len()
                    ),
                ));
            }
            s.control_socket = if p.is_empty() { None } else { Some(PathBuf::from(p)) };
        }
        "log_format" => {
            s.log_format = match scalar(value, "text or json")?.to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(err(
                        value.pos(),
                        format!("unknown log_format `{other}`: expected text or json"),
                    ))
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// `config set`: one `msgc_server` option from its value in the config syntax, validated as
/// in a file (and `port` against the listen scopes). The config is unchanged on error.
pub fn set_server_option(config: &mut Config, key: &str, text: &str) -> Result<(), ConfigError> {
    let key = key.to_ascii_lowercase();
    if !SERVER_OPTIONS.contains(&key.as_str()) {
        let pos = Pos { file: String::new(), line: 0, col: 0 };
        return Err(ConfigError::plain(unknown(&key, &pos, "msgc_server", SERVER_OPTIONS).message()));
    }
    let file = format!("value of {key}");
    let entries = parse(&format!("{key} = {text}\n"), &file)?;
    let (value, pos) = match entries.as_slice() {
        [Entry::Option { key: k, value, pos }] if k.eq_ignore_ascii_case(&key) => (value, pos),
        _ => return Err(ConfigError::plain(format!("expected one value for {key}, found `{text}`"))),
    };
    let mut server = config.server.clone();
    set_server(&mut server, &key, pos, value)?;
    check_server_tls(&server, &[(key.clone(), pos.clone(), value.clone())])?;
    check_timeouts(&server).map_err(ConfigError::plain)?;
    check_mesh_size(&server).map_err(ConfigError::plain)?;
    if key == "port" && !config.listener.listen.is_empty() {
        let ports: Vec<u16> =
            config.listener.listen.iter().filter_map(|l| listen_addr(l).ok()).map(|a| a.port()).collect();
        if !ports.contains(&server.port) {
            return Err(ConfigError::plain(format!(
                "port {} matches no listen scope of msgcserver_listener (ports {ports:?}); they must match",
                server.port
            )));
        }
    }
    config.server = server;
    Ok(())
}

/// What `config get` shows for a secret that is set.
pub(super) const HIDDEN: &str = "(hidden)";

/// `config get`: the running value of one `msgc_server` option, in the config syntax (what
/// [`set_server_option`] reads back).
pub fn server_option(s: &ServerConfig, key: &str) -> Result<String, ConfigError> {
    let key = key.to_ascii_lowercase();
    let secs = |d: Duration| format!("{}", d.as_secs_f64());
    let quoted = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    Ok(match key.as_str() {
        "connect_timeout" => secs(s.connect_timeout),
        "debug_level" => format!("{:?}", s.debug_level).to_ascii_uppercase(),
        "idle_timeout" => secs(s.idle_timeout),
        "keepalive_interval" => secs(s.keepalive_interval),
        "max_backlog" => s.max_backlog.to_string(),
        "messages_per_iter" => s.messages_per_iter.to_string(),
        "peers" => {
            let name = |n: &str| {
                let bare = n.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                if bare {
                    n.to_string()
                } else {
                    quoted(n)
                }
            };
            let items: Vec<String> =
                s.peers.iter().map(|p| format!("{} = {}", name(&p.name), quoted(&p.addr))).collect();
            if items.is_empty() {
                "[ ]".to_string()
            } else {
                format!("[ {} ]", items.join(" "))
            }
        }
        "port" => s.port.to_string(),
        "reconnect_interval" => secs(s.reconnect_interval),
        "tcpbuf_size" => s.tcpbuf_size.to_string(),
        "max_frame_size" => s.max_frame_size.to_string(),
        "memory_budget" => s.memory_budget.to_string(),
        "threads" => s.threads.to_string(),
        "stall_timeout" => secs(s.stall_timeout),
        "link_timeout" => secs(s.link_timeout),
        "resend_buffer" => s.resend_buffer.to_string(),
        "handshake_timeout" => secs(s.handshake_timeout),
        "max_connections" => s.max_connections.to_string(),
        "max_handshakes" => s.max_handshakes.to_string(),
        "max_groups_per_session" => s.max_groups_per_session.to_string(),
        "max_group_members" => s.max_group_members.to_string(),
        // Never shown: the control socket and /varz are no place for the cluster's secret.
        "cluster_secret" | "cluster_secret_file" => {
            if s.cluster_secret.is_some() {
                HIDDEN.to_string()
            } else {
                quoted("")
            }
        }
        "io" => s.io.to_string(),
        "tls_clients" => s.tls_clients.to_string(),
        "tls_client_certificates" => s.tls_client_certificates.to_string(),
        "tls_certificate" | "tls_key" | "tls_ca" => {
            let p = match key.as_str() {
                "tls_certificate" => &s.tls_certificate,
                "tls_key" => &s.tls_key,
                _ => &s.tls_ca,
            };
            quoted(&p.as_ref().map(|p| p.display().to_string()).unwrap_or_default())
        }
        "metrics_listen" => quoted(&s.metrics_listen.map(|a| a.to_string()).unwrap_or_default()),
        "control_socket" => {
            quoted(&s.control_socket.as_ref().map(|p| p.display().to_string()).unwrap_or_default())
        }
        "log_format" => match s.log_format {
            LogFormat::Text => "text".into(),
            LogFormat::Json => "json".into(),
        },
        _ => {
            let pos = Pos { file: String::new(), line: 0, col: 0 };
            return Err(ConfigError::plain(unknown(&key, &pos, "msgc_server", SERVER_OPTIONS).message()));
        }
    })
}

/// Collects the options of one of our scopes (lower-cased keys); nested scopes are errors.
fn options_of(body: Vec<Entry>, scope: &str, out: &mut Vec<(String, Pos, Value)>) -> Result<(), ConfigError> {
    for e in body {
        match e {
            Entry::Option { key, pos, value } => out.push((key.to_ascii_lowercase(), pos, value)),
            Entry::Scope { name, pos, .. } => {
                return Err(err(&pos, format!("unexpected scope {name} inside {scope}")))
            }
            Entry::Include { pos, .. } => {
                return Err(err(&pos, format!("include is only allowed at top level, not inside {scope}")))
            }
        }
    }
    Ok(())
}

fn listener(body: Vec<Entry>, out: &mut Vec<(String, Pos)>) -> Result<(), ConfigError> {
    for e in body {
        match e {
            Entry::Scope { name, arg, pos, .. } if name.eq_ignore_ascii_case("listen") => match arg {
                Some(a) => out.push((a, pos)),
                None => return Err(err(&pos, "listen needs an address, as in listen \":4809\" { }")),
            },
            // Other listener options are accepted by the product but mean nothing here.
            Entry::Option { key, pos, .. } | Entry::Scope { name: key, pos, .. } => {
                tracing::debug!("{}:{}: ignoring {key} in msgcserver_listener", pos.file, pos.line)
            }
            Entry::Include { pos, .. } => return Err(err(&pos, "include is only allowed at top level")),
        }
    }
    Ok(())
}

fn check_duplicates(opts: &[(String, Pos, Value)]) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, &Pos> = HashMap::new();
    for (key, pos, _) in opts {
        if let Some(first) = seen.insert(key, pos) {
            return Err(err(
                pos,
                format!("duplicate option {key} (first set at {}:{})", first.file, first.line),
            ));
        }
    }
    Ok(())
}

fn unknown(key: &str, pos: &Pos, scope: &str, known: &[&str]) -> ConfigError {
    // A close misspelling, else a known name the key is a part of (`keepalive`).
    let nearest = known
        .iter()
        .min_by_key(|k| edit_distance(key, k))
        .filter(|k| edit_distance(key, k) <= (key.len() / 3).max(2))
        .or_else(|| known.iter().find(|k| key.len() >= 4 && (k.starts_with(key) || k.contains(key))));
    match nearest {
        Some(n) => err(pos, format!("unknown option {key} in {scope}; did you mean `{n}`?")),
        None => err(pos, format!("unknown option {key} in {scope}; known options: {}", known.join(", "))),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j])).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn scalar<'a>(v: &'a Value, what: &str) -> Result<&'a str, ConfigError> {
    v.scalar().ok_or_else(|| err(v.pos(), format!("expected {what}, found an array or dictionary")))
}

/// The most servers a peers table may list with frames of `max_frame` bytes: a flush's
/// question names every server it lost in one PEER_MARK (`core/survivors.rs`), which
/// peers refuse, closing the link, if it is longer than their frame limit.
pub fn max_mesh_servers(max_frame: usize) -> usize {
    use crate::proto::{MARK_END_LEN, MARK_FIXED, MAX_GROUP_LEN};
    max_frame.saturating_sub(MARK_FIXED + MAX_GROUP_LEN) / MARK_END_LEN
}

/// A peers table longer than the frame limit allows (see [`max_mesh_servers`]).
fn check_mesh_size(s: &ServerConfig) -> Result<(), String> {
    let most = max_mesh_servers(s.max_frame_size);
    if s.peers.len() > most {
        return Err(format!(
            "peers lists {} servers, but with max_frame_size {} a mesh has at most {most} \
             (a membership question names every lost server in one frame): raise max_frame_size",
            s.peers.len(),
            s.max_frame_size
        ));
    }
    Ok(())
}

/// Timeouts that only make sense in a certain order.
fn check_timeouts(s: &ServerConfig) -> Result<(), String> {
    if s.idle_timeout <= s.keepalive_interval {
        return Err(format!(
            "idle_timeout ({:?}) must be longer than keepalive_interval ({:?}), or quiet peers time each other out",
            s.idle_timeout, s.keepalive_interval
        ));
    }
    Ok(())
}

fn seconds(v: &Value) -> Result<Duration, ConfigError> {
    let s = scalar(v, "a number of seconds")?;
    let n: f64 = s.parse().map_err(|_| err(v.pos(), format!("expected a number of seconds, found `{s}`")))?;
    if !n.is_finite() || !(MIN_SECONDS..=MAX_SECONDS).contains(&n) {
        return Err(err(
            v.pos(),
            format!("{s} is out of range: expected {MIN_SECONDS} to {MAX_SECONDS} seconds"),
        ));
    }
    Ok(Duration::from_secs_f64(n))
}

fn secret(s: &str, v: &Value) -> Result<crate::core::ClusterSecret, ConfigError> {
    if s.len() < MIN_SECRET_LEN {
        let msg =
            format!("the cluster secret is {} bytes; use at least {MIN_SECRET_LEN} (random) bytes", s.len());
        return Err(err(v.pos(), msg));
    }
    Ok(crate::core::ClusterSecret::new(s.as_bytes()))
}

fn int(v: &Value, min: u64, max: u64) -> Result<u64, ConfigError> {
    let s = scalar(v, "a whole number")?;
    let n: i128 = s.parse().map_err(|_| err(v.pos(), format!("expected a whole number, found `{s}`")))?;
    if n < i128::from(min) || n > i128::from(max) {
        return Err(err(v.pos(), format!("{s} is out of range: expected {min} to {max}")));
    }
    Ok(n as u64)
}

/// One of a fixed set of words (`io = epoll`).
fn keyword<T>(
    v: &Value,
    option: &str,
    parse: fn(&str) -> Option<T>,
    words: &[&str],
) -> Result<T, ConfigError> {
    let s = scalar(v, "a word")?;
    parse(s).ok_or_else(|| err(v.pos(), format!("{option} cannot be `{s}`: expected {}", words.join(", "))))
}

fn yes_no(v: &Value) -> Result<bool, ConfigError> {
    let s = scalar(v, "yes or no")?;
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(err(v.pos(), format!("expected yes or no, found `{s}`"))),
    }
}

/// A file name; relative names are kept as written (relative to the working directory).
/// The file is not opened here: the runtime reads it and reports what is wrong with it.
/// A file name, or "" for none (so `config set` can also turn an option off).
fn optional_path(v: &Value) -> Result<Option<PathBuf>, ConfigError> {
    let s = scalar(v, "a file name, or \"\" for none")?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

fn path(v: &Value) -> Result<PathBuf, ConfigError> {
    let s = scalar(v, "a file name")?;
    if s.is_empty() {
        return Err(err(v.pos(), "expected a file name, found an empty string"));
    }
    Ok(PathBuf::from(s))
}

/// Where an option was set, for errors about how options combine.
fn pos_of<'a>(opts: &'a [(String, Pos, Value)], key: &str) -> Option<&'a Pos> {
    opts.iter().find(|(k, _, _)| k == key).map(|(_, p, _)| p)
}

/// The TLS options of `msgc_server` must make sense together.
fn check_server_tls(s: &super::ServerConfig, opts: &[(String, Pos, Value)]) -> Result<(), ConfigError> {
    let at = |key: &str, msg: String| match pos_of(opts, key) {
        Some(p) => err(p, msg),
        None => ConfigError::plain(msg),
    };
    if s.tls_certificate.is_some() != s.tls_key.is_some() {
        let key = if s.tls_key.is_some() { "tls_key" } else { "tls_certificate" };
        return Err(at(key, "tls_certificate and tls_key go together: set both or neither".into()));
    }
    if s.tls_clients != TlsClients::Off && s.tls_certificate.is_none() {
        return Err(at(
            "tls_clients",
            format!("tls_clients = {} needs tls_certificate and tls_key", s.tls_clients),
        ));
    }
    if s.tls_client_certificates != ClientCertificates::None {
        if s.tls_clients == TlsClients::Off {
            return Err(at(
                "tls_client_certificates",
                "tls_client_certificates needs tls_clients = optional or required".into(),
            ));
        }
        if s.tls_ca.is_none() {
            return Err(at(
                "tls_client_certificates",
                "tls_client_certificates needs tls_ca to check them against".into(),
            ));
        }
    }
    if s.tls_clients == TlsClients::Required && s.peers.len() > 1 && !s.peer_tls() {
        return Err(at(
            "tls_clients",
            "tls_clients = required refuses plain connections, peer links included: set tls_ca too, so that peers link over mutual TLS".into(),
        ));
    }
    Ok(())
}

fn check_client_tls(c: &ClientConfig, opts: &[(String, Pos, Value)]) -> Result<(), ConfigError> {
    let at = |key: &str, msg: &str| match pos_of(opts, key) {
        Some(p) => err(p, msg),
        None => ConfigError::plain(msg),
    };
    if c.tls_certificate.is_some() != c.tls_key.is_some() {
        let key = if c.tls_key.is_some() { "tls_key" } else { "tls_certificate" };
        return Err(at(key, "tls_certificate and tls_key go together: set both or neither"));
    }
    if c.tls && c.tls_ca.is_none() {
        return Err(at("tls", "tls = yes needs tls_ca, the CA the server's certificate is checked against"));
    }
    Ok(())
}

fn level(v: &Value) -> Result<DebugLevel, ConfigError> {
    let s = scalar(v, "a debug level")?;
    DebugLevel::parse(s).ok_or_else(|| {
        err(v.pos(), format!("unknown debug level `{s}`: expected DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL, ALERT or EMERGENCY"))
    })
}

fn ip(v: &Value) -> Result<IpAddr, ConfigError> {
    let s = scalar(v, "an IP address")?;
    s.parse().map_err(|_| err(v.pos(), format!("expected an IP address, found `{s}`")))
}

fn peers(v: &Value) -> Result<Vec<Peer>, ConfigError> {
    let Value::Dict(items, _) = v else {
        return Err(err(
            v.pos(),
            "expected a dictionary of peers, as in peers = [ node1 = \"192.168.0.10\" ]",
        ));
    };
    let mut out: Vec<Peer> = Vec::new();
    let mut seen: HashMap<String, &Pos> = HashMap::new();
    for (name, pos, value) in items {
        if let Some(first) = seen.insert(name.to_lowercase(), pos) {
            return Err(err(
                pos,
                format!("duplicate peer {name} (first listed at {}:{})", first.file, first.line),
            ));
        }
        let addr = scalar(value, "the peer's address as a string")?;
        if addr.is_empty() {
            return Err(err(value.pos(), format!("peer {name} has an empty address")));
        }
        out.push(Peer { name: name.clone(), addr: addr.to_string() });
    }
    Ok(out)
}

fn servers(v: &Value) -> Result<Vec<String>, ConfigError> {
    let list: Vec<&Value> = match v {
        Value::Array(items, _) => items.iter().collect(),
        Value::Str(..) | Value::Word(..) => vec![v],
        Value::Dict(..) => {
            return Err(err(v.pos(), "expected an array of servers, as in server = ( \"127.0.0.1:4809\" )"))
        }
    };
    if list.is_empty() {
        return Err(err(v.pos(), "server lists no server"));
    }
    list.into_iter()
        .map(|s| {
            let a = scalar(s, "a server address")?;
            match a.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                    Ok(a.to_string())
                }
                _ => Err(err(s.pos(), format!("expected HOST:PORT, found `{a}`"))),
            }
        })
        .collect()
}

/// The metrics endpoint's address: as a listen scope's, and port 0 (any free port) too.
pub fn metrics_addr(s: &str) -> Result<SocketAddr, String> {
    listen_addr(s).or_else(|e| s.parse::<SocketAddr>().map_err(|_| e))
}

/// A listen scope's address: `:4809`, `*:4809`, `4809`, `10.0.0.1:4809`, `[::]:4809`.
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    let bad = || format!("cannot listen on `{s}`: expected :PORT, *:PORT, IP:PORT or [IPv6]:PORT");
    let any = |port: &str| -> Result<SocketAddr, String> {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(SocketAddr::from(([0, 0, 0, 0], p))),
            _ => Err(bad()),
        }
    };
    if let Some(port) = s.strip_prefix("*:").or_else(|| s.strip_prefix(':')) {
        return any(port);
    }
    if s.chars().all(|c| c.is_ascii_digit()) {
        return any(s);
    }
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() > 0 => Ok(a),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mesh with `n` peers and frames of `max_frame` bytes, as a config file.
    fn mesh_config(n: usize, max_frame: usize) -> String {
        let peers: Vec<String> =
            (0..n).map(|i| format!("n{i} = \"10.0.{}.{}\"", i / 250, i % 250 + 1)).collect();
        format!("msgc_server {{ max_frame_size = {max_frame}\n peers = [ {} ] }}", peers.join("\n"))
    }

    #[test]
    fn a_mesh_too_large_for_its_frame_limit_is_refused() {
        let most = max_mesh_servers(4096);
        assert!(most >= 64, "a 4 KiB frame must still carry a mesh of 64 servers, carries {most}");
        assert!(parse_str(&mesh_config(most, 4096), "f").is_ok());
        let e = parse_str(&mesh_config(most + 1, 4096), "f").unwrap_err().to_string();
        assert!(e.starts_with("f:2:") && e.contains("raise max_frame_size"), "{e}");
        // The default frame limit carries the same table, and a set at run time checks it too.
        let mut c = parse_str(&mesh_config(most + 1, 1 << 20), "f").unwrap();
        let e = set_server_option(&mut c, "max_frame_size", "4096").unwrap_err().to_string();
        assert!(e.contains("raise max_frame_size"), "{e}");
        assert_eq!(c.server.max_frame_size, 1 << 20, "a failed set changes nothing");
    }

    #[test]
    fn a_question_naming_every_peer_fits_one_frame() {
        use crate::proto::{Frame, GroupName, NodeTag, PeerMark, SenderEnd, SessionId, MAX_GROUP_LEN};
        let question = |servers: usize| {
            let end = |i: usize| SenderEnd {
                sender: SessionId::new(NodeTag(i as u32), 0),
                first: 0,
                seq: 0,
                stamp: 0,
            };
            let mark = PeerMark {
                group: GroupName::new(&"g".repeat(MAX_GROUP_LEN)).unwrap(),
                view_id: 2,
                prev: 1,
                shard: 0,
                shards: 1,
                more: false,
                lost: false,
                ask: true,
                answer: false,
                ends: (0..servers).map(end).collect(),
            };
            Frame::PeerMark(mark).to_bytes().len()
        };
        for max_frame in [4096, 65536] {
            let most = max_mesh_servers(max_frame);
            assert!(question(most) <= max_frame, "{most} servers at {max_frame}");
            assert!(question(most + 1) > max_frame, "{} servers at {max_frame}", most + 1);
        }
    }

    #[test]
    fn nearest_names_are_suggested() {
        assert_eq!(edit_distance("idle_timout", "idle_timeout"), 1);
        let e = parse_str("msgc_server { idle_timout = 3 }", "f").unwrap_err().to_string();
        assert_eq!(e, "f:1:15: unknown option idle_timout in msgc_server; did you mean `idle_timeout`?");
    }

    #[test]
    fn every_option_reads_back_what_get_shows() {
        let text = r#"msgc_server {
            idle_timeout = 12.5 debug_level = info max_backlog = 7 threads = 3
            peers = [ a = "10.0.0.1" "b.example" = "[::1]:4810" "c d" = "x" ]
            metrics_listen = "127.0.0.1:9809" control_socket = "/tmp/x \"y\".sock" log_format = JSON
        }"#;
        let config = parse_str(text, "f").unwrap();
        let mut copy = Config::default();
        for key in SERVER_OPTIONS.iter().filter(|k| !k.starts_with("cluster_secret")) {
            let shown = server_option(&config.server, key).unwrap();
            set_server_option(&mut copy, key, &shown).unwrap_or_else(|e| panic!("{key} = {shown}: {e}"));
        }
        assert_eq!(copy.server, config.server);
        assert_eq!(server_option(&config.server, "idle_timeout").unwrap(), "12.5");
        // The secret is never shown.
        let secret =
            parse_str("msgc_server { cluster_secret = \"0123456789abcdef-very-secret\" }", "f").unwrap();
        assert_eq!(server_option(&secret.server, "cluster_secret").unwrap(), HIDDEN);
        assert_eq!(server_option(&config.server, "cluster_secret").unwrap(), "\"\"");
        let e = set_server_option(&mut copy, "tls_certificate", "\"/etc/msgc/cert.pem\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("go together"), "{e}");
        assert_eq!(server_option(&config.server, "metrics_listen").unwrap(), "\"127.0.0.1:9809\"");
    }

    #[test]
    fn config_set_checks_values_as_a_file_does() {
        let mut c = Config::default();
        let e = set_server_option(&mut c, "max_backlog", "lots").unwrap_err().to_string();
        assert!(e.contains("expected a whole number"), "{e}");
        let e = set_server_option(&mut c, "idle_timout", "3").unwrap_err().to_string();
        assert!(e.contains("did you mean `idle_timeout`"), "{e}");
        let e = set_server_option(&mut c, "max_backlog", "5 threads = 2").unwrap_err().to_string();
        assert!(e.contains("expected one value"), "{e}");
        assert!(set_server_option(&mut c, "log_format", "yaml").is_err());
        let e = set_server_option(&mut c, "idle_timeout", "2").unwrap_err().to_string();
        assert!(e.contains("must be longer than keepalive_interval"), "{e}");
        assert!(set_server_option(&mut c, "control_socket", &format!("\"{}\"", "x".repeat(200))).is_err());
        assert_eq!(c, Config::default(), "a failed set changes nothing");
        set_server_option(&mut c, "MAX_BACKLOG", "9").unwrap();
        assert_eq!(c.server.max_backlog, 9);
        set_server_option(&mut c, "metrics_listen", "\"\"").unwrap();
        assert_eq!(c.server.metrics_listen, None);

        let mut l = parse_str("msgcserver_listener { listen \":4809\" { } }", "f").unwrap();
        assert!(set_server_option(&mut l, "port", "4810").is_err());
        set_server_option(&mut l, "port", "4809").unwrap();
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(listen_addr(":4809").unwrap(), "0.0.0.0:4809".parse().unwrap());
        assert_eq!(listen_addr("*:4802").unwrap(), "0.0.0.0:4802".parse().unwrap());
        assert_eq!(listen_addr("[::]:4809").unwrap(), "[::]:4809".parse().unwrap());
        assert!(listen_addr(":0").is_err());
        assert!(listen_addr("nonsense").is_err());
    }
}
