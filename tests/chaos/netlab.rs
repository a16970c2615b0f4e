//! The network lab: network namespaces joined by veths to one bridge in the root namespace,
//! one `msgc-server` process per namespace, and the faults (signals, blackhole routes).
//!
//! It owns everything it creates and removes all of it in `Drop` (also when a test panics):
//! processes, namespaces (which takes their veth ends along), host veths, the bridge and the
//! temporary directory. Names carry this process's id, so leftovers of a run that was killed
//! outright can be recognised and removed by the next run, and nothing else is ever touched.
//! It never runs commands in the root namespace other than `ip` on its own devices.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Prefix of every namespace this suite creates (`msgcc<pid><tag>n<i>`).
const NS_PREFIX: &str = "msgcc";
/// Prefix of every link this suite creates in the root namespace (`mc<pid><tag>...`).
const LINK_PREFIX: &str = "mc";
pub const CLIENT_PORT: u16 = 4809;
pub const METRICS_PORT: u16 = 9809;

/// Why the lab cannot run here (the caller prints it and skips).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces)".into());
    }
    match Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => {}
        _ => return Some("needs the `ip` command (iproute2)".into()),
    }
    match ip(&["netns", "list"]) {
        Ok(_) => None,
        Err(e) => Some(format!("`ip netns` does not work here: {e}")),
    }
}

/// Runs `ip ARGS`; the error carries its stderr.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Removes what earlier runs of this suite left behind when they were killed outright
/// (their process is gone, so their `Drop` never ran). Only names with our prefixes and the
/// id of a process that no longer exists are touched.
pub fn remove_leftovers() {
    let Ok(list) = ip(&["netns", "list"]) else { return };
    let mut dead_pids = BTreeSet::new();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let digits: String =
            ns.strip_prefix(NS_PREFIX).unwrap_or("").chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() && !Path::new(&format!("/proc/{digits}")).exists() {
            eprintln!("chaos: removing namespace {ns} left by an earlier run");
            let _ = ip(&["netns", "del", ns]);
            dead_pids.insert(digits);
        }
    }
    // Host veth ends went with their namespaces; the bridges stay: `mc<pid><tag>b`.
    let Ok(links) = ip(&["-o", "link", "show", "type", "bridge"]) else { return };
    for line in links.lines() {
        let Some(name) = line.split(": ").nth(1) else { continue };
        let ours = dead_pids.iter().any(|pid| {
            name.strip_prefix(LINK_PREFIX)
                .and_then(|r| r.strip_prefix(pid.as_str()))
                .is_some_and(|r| r.len() == 2 && r.ends_with('b'))
        });
        if ours {
            eprintln!("chaos: removing bridge {name} left by an earlier run");
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// One server of the lab.
struct Server {
    name: String,
    ns: String,
    ip: Ipv4Addr,
    log: PathBuf,
    child: Option<Child>,
    stopped: bool,
    starts: u32,
}

/// Namespaces, bridge, servers; all removed on drop.
pub struct Lab {
    bin: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    bridge: String,
    host_links: Vec<String>,
    namespaces: Vec<String>,
    servers: Vec<Server>,
    pub host_ip: Ipv4Addr,
    /// Blackhole routes in place: (namespace index, blackholed server index).
    cuts: BTreeSet<(usize, usize)>,
}

impl Lab {
    /// Creates `n` namespaces named after `tag` (one letter), with servers named
    /// `{prefix}1..{prefix}n` (not started yet) and a shared config whose `msgc_server`
    /// scope also holds `extra_options`.
    pub fn create(
        tag: char,
        prefix: &str,
        n: usize,
        bin: PathBuf,
        extra_options: &str,
    ) -> Result<Lab, String> {
        assert!((1..=9).contains(&n), "link names have room for one digit");
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("msgc-chaos-{pid}-{tag}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let subnet = free_subnet()?;
        let at = |i: u8| Ipv4Addr::new(10, 209, subnet, i);
        let mut lab = Lab {
            bin,
            config: dir.join("msgc_server.conf"),
            dir,
            bridge: format!("{LINK_PREFIX}{pid}{tag}b"),
            host_links: Vec::new(),
            namespaces: Vec::new(),
            servers: Vec::new(),
            host_ip: at(254),
            cuts: BTreeSet::new(),
        };
        // From here on `lab` is dropped on any error, removing what was made so far.
        ip(&["link", "add", &lab.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", lab.host_ip), "dev", &lab.bridge])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        for i in 1..=n {
            let ns = format!("{NS_PREFIX}{pid}{tag}n{i}");
            let host = format!("{LINK_PREFIX}{pid}{tag}{i}");
            ip(&["netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            ip(&["link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            lab.host_links.push(host.clone());
            ip(&["link", "set", &host, "master", &lab.bridge, "up"])?;
            let addr = at(i as u8);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let name = format!("{prefix}{i}");
            let log = lab.dir.join(format!("{name}.log"));
            lab.servers.push(Server { name, ns, ip: addr, log, child: None, stopped: false, starts: 0 });
        }
        let peers: String =
            lab.servers.iter().map(|s| format!("    {} = \"{}:{CLIENT_PORT}\"\n", s.name, s.ip)).collect();
        let conf = format!("msgc_server {{\n  peers = [\n{peers}  ]\n  threads = 1\n  {extra_options}\n}}\n");
        std::fs::write(&lab.config, conf).map_err(|e| format!("{}: {e}", lab.config.display()))?;
        Ok(lab)
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    pub fn client_addr(&self, i: usize) -> String {
        format!("{}:{CLIENT_PORT}", self.servers[i].ip)
    }

    pub fn metrics_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.servers[i].ip, METRICS_PORT))
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap_or_default()
    }

    /// Starts server `i` in its namespace (logging to its file, appended across restarts).
    pub fn start(&mut self, i: usize) -> Result<(), String> {
        let s = &mut self.servers[i];
        let mut log = OpenOptions::new().create(true).append(true).open(&s.log).map_err(|e| e.to_string())?;
        s.starts += 1;
        let _ = writeln!(log, "==== chaos: start {} of {} ====", s.starts, s.name);
        let listen = format!("{}:{CLIENT_PORT}", s.ip);
        let metrics = format!("{}:{METRICS_PORT}", s.ip);
        // `ip netns exec` execs the server in place, so the child's pid is the server's.
        let child = Command::new("ip")
            .args(["netns", "exec", &s.ns])
            .arg(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .args(["--node", &s.name, "--listen", &listen, "--metrics", &metrics])
            .env("RUST_LOG", std::env::var("MSGC_CHAOS_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", s.name))?;
        s.child = Some(child);
        s.stopped = false;
        Ok(())
    }

    /// Waits until server `i` accepts connections on its client port.
    pub fn wait_listening(&mut self, i: usize, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        let addr = SocketAddr::from((self.servers[i].ip, CLIENT_PORT));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.servers[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("{} exited at start: {status}", self.servers[i].name));
                }
            }
            if Instant::now() > end {
                return Err(format!("{} does not listen on {addr} after {deadline:?}", self.servers[i].name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stop(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.servers[i].stopped = true;
    }

    pub fn resume(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.servers[i].stopped = false;
    }

    fn signal(&self, i: usize, sig: i32) {
        if let Some(child) = &self.servers[i].child {
            // SAFETY: kill(2) on our own child's pid; it has not been reaped (we hold it).
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// Servers that exited by themselves (name and status): a crash is a finding.
    pub fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &mut self.servers {
            if let Some(child) = s.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    out.push(format!("{} exited: {status}", s.name));
                    s.child = None;
                }
            }
        }
        out
    }

    /// Drops traffic between servers `a` and `b`, both ways (a blackhole route in each).
    pub fn cut(&mut self, a: usize, b: usize) -> Result<(), String> {
        for (from, to) in [(a, b), (b, a)] {
            if self.cuts.insert((from, to)) {
                let dst = format!("{}/32", self.servers[to].ip);
                ip(&["-n", &self.servers[from].ns, "route", "add", "blackhole", &dst])?;
            }
        }
        Ok(())
    }

    pub fn restore(&mut self, a: usize, b: usize) -> Result<(), String> {
        for (from, to) in [(a, b), (b, a)] {
            if self.cuts.remove(&(from, to)) {
                let dst = format!("{}/32", self.servers[to].ip);
                ip(&["-n", &self.servers[from].ns, "route", "del", "blackhole", &dst])?;
            }
        }
        Ok(())
    }

    pub fn restore_all(&mut self) -> Result<(), String> {
        let cuts: Vec<_> = self.cuts.iter().copied().collect();
        for (a, b) in cuts {
            self.restore(a, b)?;
        }
        Ok(())
    }

    /// The last `lines` lines of each server's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for s in &self.servers {
            let mut text = String::new();
            if let Ok(mut f) = File::open(&s.log) {
                let _ = f.read_to_string(&mut text);
            }
            let all: Vec<&str> = text.lines().collect();
            out += &format!("---- {} ({}) ----\n", s.name, s.log.display());
            for l in &all[all.len().saturating_sub(lines)..] {
                out += l;
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("MSGC_CHAOS_SHOW_LOGS").is_some() {
            eprintln!("chaos: server logs (last 60 lines each):\n{}", self.log_tails(60));
        }
        for s in &mut self.servers {
            if let Some(mut child) = s.child.take() {
                if s.stopped {
                    // SAFETY: as in `signal`.
                    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("chaos: cleanup: {e}");
            }
        }
        for link in &self.host_links {
            // Gone with its namespace's end already, normally.
            let _ = ip(&["link", "del", link]);
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("chaos: cleanup: {e}");
        }
        if std::env::var_os("MSGC_CHAOS_KEEP_LOGS").is_some() {
            eprintln!("chaos: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A /24 in 10.209.0.0/16 that no address or route of the root namespace uses.
fn free_subnet() -> Result<u8, String> {
    let used =
        format!("{}{}", ip(&["-4", "-o", "addr", "show"])?, ip(&["-4", "route", "show", "table", "all"])?);
    let start = (std::process::id() % 200) as u8;
    (0..200u8)
        .map(|k| 20 + (start + k) % 200)
        .find(|x| !used.contains(&format!("10.209.{x}.")))
        .ok_or_else(|| "no free 10.209.x.0/24 subnet".into())
}

/// One plain HTTP GET of `path` (the servers' metrics endpoint), within `timeout`.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.take(4 << 20).read_to_string(&mut body).ok()?;
    let (head, body) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The value of a metric in Prometheus text (a counter's `_total` suffix optional), summed
/// over its label sets; `None` if absent.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let rest = rest.strip_prefix("_total").unwrap_or(rest);
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
