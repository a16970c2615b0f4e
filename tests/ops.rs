//! The operator's side: shard reports and metrics (in process), and `msgc-server` with
//! `msgc-ctl` as child processes: every control command, `config set` taking effect,
//! reload, drain, the metrics endpoint, systemd notifications, log lines, and the Spread
//! import. Loopback and temporary directories only; every wait has a deadline.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use msgc::core::{Limits, LinkState};
use msgc::proto::{ErrorCode, Frame};
use msgc::runtime::{PeerSpec, ServerReport};

// ---------------------------------------------------------------------------------------
// Helpers

/// A temporary directory removed when dropped (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("msgc-ops-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn report(inspector: &msgc::runtime::Inspector, sessions: bool) -> ServerReport {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(inspector.report(sessions, Duration::from_secs(5))).expect("shards report")
}

/// A strict reader of the Prometheus text format (0.0.4): every sample belongs to a family
/// declared by a `# TYPE` line before it, names and labels are well-formed, values are
/// numbers. Returns `name{sorted labels}` to value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(valid_name(name), "bad family name {name:?}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(valid_name(rest.split(' ').next().unwrap()), "{line}");
            continue;
        }
        assert!(!line.starts_with('#') || line.starts_with("# "), "{line}");
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample: series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                (n, parse_labels(l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"))))
            }
            None => (series, Vec::new()),
        };
        assert!(valid_name(name), "bad metric name in {line:?}");
        assert!(types.contains_key(name), "sample {name} before (or without) its # TYPE line");
        let mut labels = labels;
        labels.sort();
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        assert!(samples.insert(key.clone(), value).is_none(), "sample {key} repeated");
    }
    samples
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label {key:?}"
        );
        assert_eq!(chars.next(), Some('"'), "label value must be quoted");
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("bad escape {other:?}"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key, value));
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(c) => panic!("unexpected {c:?} after a label"),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// In process: reports, metrics rendering, drain

#[test]
fn reports_and_metrics_show_links_groups_sessions_and_backlog() {
    let limits = Limits { max_backlog: 1_000_000, ..Limits::default() };
    let a = start_node("ops-report-a", 2, limits.clone());
    let b = start_node("ops-report-b", 2, limits);
    let table = vec![
        PeerSpec { name: "ops-report-a".into(), addr: addr(&a).to_string() },
        PeerSpec { name: "ops-report-b".into(), addr: addr(&b).to_string() },
        // Configured but never reachable: reported down.
        PeerSpec { name: "ops-report-z".into(), addr: "127.0.0.1:1".into() },
    ];
    a.set_peers(table.clone());
    b.set_peers(table);
    let (ia, ib) = (a.inspector(), b.inspector());
    wait_for("link up on both sides", || {
        let up = |r: ServerReport| r.links.iter().any(|l| l.state == LinkState::Up);
        up(report(&ia, false)) && up(report(&ib, false))
    });

    let mut reader = RawClient::connect(addr(&a), "reader");
    let mut sleeper = RawClient::connect(addr(&a), "sleeper");
    let mut sender = RawClient::connect(addr(&b), "sender");
    reader.join("orders");
    reader.wait_view("orders", 1);
    sleeper.join("orders");
    reader.wait_view("orders", 2);
    sleeper.join("audit");
    // The sleeper stops reading: what is sent to it queues on the server.
    const N: usize = 3000;
    let payload = vec![7u8; 1024];
    for _ in 0..N {
        sender.mcast("orders", &payload);
    }
    let mut got = 0;
    while got < N {
        if let Some(Frame::Mcast(_)) = reader.next_significant() {
            got += 1;
        }
    }

    wait_for("the sleeper's backlog shows", || {
        let r = report(&ia, true);
        r.sessions.iter().any(|s| s.name == "sleeper" && s.queued_messages > 0)
    });
    let r = report(&ia, true);
    assert_eq!((r.node.as_str(), r.clients, r.peers), ("ops-report-a", 2, 1));
    assert_eq!(r.shards.len(), 2);
    let sleeper_line = r.sessions.iter().find(|s| s.name == "sleeper").unwrap();
    assert_eq!(sleeper_line.groups, vec!["audit".to_string(), "orders".to_string()]);
    assert_eq!(sleeper_line.session, sleeper.session.to_string());
    let reader_line = r.sessions.iter().find(|s| s.name == "reader").unwrap();
    assert!(sleeper_line.queued_messages > reader_line.queued_messages);
    assert_eq!(r.max_client_backlog, sleeper_line.queued_messages.max(reader_line.queued_messages));
    let link = |name: &str| r.links.iter().find(|l| l.peer.eq_ignore_ascii_case(name)).cloned().unwrap();
    assert_eq!(link("ops-report-b").state, LinkState::Up);
    assert_ne!(link("ops-report-b").tag, 0);
    assert_ne!(link("ops-report-z").state, LinkState::Up);
    assert!(r.links.iter().all(|l| !l.peer.eq_ignore_ascii_case("ops-report-a")), "no link to itself");
    let orders = r.groups.iter().find(|g| g.name == "orders").expect("orders reported");
    assert_eq!((orders.members, orders.local_members), (2, 2));
    assert_eq!(r.groups.iter().find(|g| g.name == "audit").map(|g| g.members), Some(1));
    assert!(r.totals.msgs_in >= N as u64, "A received the run over the link");
    assert!(r.totals.bytes_in >= (N * 1024) as u64);

    let m = parse_prometheus(&msgc::ops::metrics::render(&r));
    assert_eq!(m["msgc_connections{role=client}"], 2.0);
    assert_eq!(m["msgc_connections{role=peer}"], 1.0);
    assert_eq!(m["msgc_groups"], 2.0);
    assert_eq!(m["msgc_group_members"], 3.0);
    assert_eq!(m["msgc_local_members"], 3.0);
    assert_eq!(m["msgc_link_up{peer=ops-report-b}"], 1.0);
    assert_eq!(m["msgc_link_up{peer=ops-report-z}"], 0.0);
    assert_eq!(m["msgc_link_state{peer=ops-report-b,state=up}"], 1.0);
    assert_eq!(m["msgc_messages_in_total"], r.totals.msgs_in as f64);
    assert_eq!(m["msgc_client_backlog_max"], r.max_client_backlog as f64);
    let queued: f64 = (0..2).map(|s| m[&format!("msgc_memory_queued_bytes{{shard={s}}}")]).sum();
    assert!(queued >= (sleeper_line.queued_bytes) as f64);
    assert!(m.contains_key("msgc_shard_cpu_seconds_total{shard=1}"));
    assert!(m["process_resident_memory_bytes"] > 0.0);
    for family in ["msgc_stuck_kills_total", "msgc_gaps_sent_total", "msgc_config_digest_mismatches_total"] {
        assert_eq!(m[family], 0.0, "{family}");
    }
    // The varz JSON carries the same figures.
    let v = msgc::ops::metrics::varz(&r, &msgc::config::ServerConfig::default());
    assert_eq!(v["connections"]["clients"], 2);
    assert_eq!(v["server_name"], "ops-report-a");
    assert_eq!(v["config"]["max_backlog"], "5000");
    drop(sleeper);
    a.shutdown();
    b.shutdown();
}

#[test]
fn drain_delivers_what_is_queued_then_asks_clients_to_move() {
    let limits = Limits { max_backlog: 1_000_000, ..Limits::default() };
    let mut a = start_node("ops-drain-a", 2, limits.clone());
    let b = start_node("ops-drain-b", 1, limits);
    let (addr_a, addr_b) = (addr(&a), addr(&b));
    let inspector = a.inspector();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // A library client that knows both servers.
    let mut client = rt
        .block_on(
            msgc::client::Client::builder()
                .server(addr_a.to_string())
                .server(addr_b.to_string())
                .name("mover")
                .reconnect_interval(Duration::from_millis(100))
                .connect(),
        )
        .expect("client connects to A");
    let mut slow = RawClient::connect(addr_a, "slow");
    let mut sender = RawClient::connect(addr_a, "sender");
    slow.join("g");
    slow.wait_view("g", 1);
    const N: u64 = 2000;
    let payload = vec![1u8; 1024];
    for _ in 0..N {
        sender.mcast("g", &payload);
    }
    // Every message reached the server and was queued for the slow reader before the drain.
    wait_for("a backlog for the slow reader", || {
        let r = report(&inspector, true);
        r.totals.msgs_in >= N && r.sessions.iter().any(|s| s.name == "slow" && s.queued_messages > 0)
    });

    a.drain();
    // The slow reader gets every message queued before the drain, in order, then the
    // request to move, then the end of the connection.
    let mut seq = 0;
    loop {
        match slow.next() {
            Some(Frame::Mcast(m)) => {
                seq += 1;
                assert_eq!(m.seq, seq);
            }
            Some(Frame::Noop) | Some(Frame::View(_)) => {}
            Some(Frame::Error(e)) => {
                assert_eq!((e.code, e.fatal), (ErrorCode::Draining, true), "{e:?}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seq, N, "nothing queued was dropped");
    assert!(slow.read_to_end().is_empty());
    // No new connections.
    wait_for("A stops accepting", || {
        TcpStream::connect_timeout(&addr_a, Duration::from_millis(500)).is_err()
    });
    // The library client moves to B by itself.
    let moved = rt.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            while let Some(ev) = client.next_event().await {
                if let msgc::client::Event::Reconnected { server, .. } = ev {
                    return server;
                }
            }
            String::new()
        })
        .await
    });
    assert_eq!(moved.ok().as_deref(), Some(addr_b.to_string().as_str()));
    drop(sender);
    wait_for("A has no client left", || {
        let r = report(&inspector, false);
        r.draining && r.clients + r.handshaking + r.closing == 0
    });
    rt.block_on(client.close());
    a.shutdown();
    b.shutdown();
}

// ---------------------------------------------------------------------------------------
// Child processes: msgc-server and msgc-ctl

/// A `msgc-server` child, killed if still running when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    control: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    fn start(dir: &TempDir, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let control = dir.path("msgc.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_msgc-server"));
        // On the backend of this test target (epoll when tests/epoll.rs reruns this suite).
        cmd.args(["--listen", "127.0.0.1:0", "--threads", "2", "--io", &test_io().to_string(), "--control"])
            .arg(&control)
            .args(extra)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn msgc-server");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).expect("the server prints where it listens");
        let addr =
            line.trim().rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("bad line {line:?}"));
        let metrics = extra.contains(&"--metrics").then(|| {
            // After the banner's other lines (the io backend), at most a few.
            let mut seen = Vec::new();
            for _ in 0..5 {
                let mut line = String::new();
                out.read_line(&mut line).unwrap();
                if let Some(a) = line.trim().strip_prefix("msgc-server: metrics on http://") {
                    return a.strip_suffix("/metrics").unwrap().parse().unwrap();
                }
                seen.push(line);
            }
            panic!("no metrics line in {seen:?}");
        });
        // Keep reading stdout so that later lines never block the server.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {}
        });
        wait_for("control socket", || control.exists());
        Server { child, addr, metrics, control, stderr }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_msgc-ctl"))
            .arg("--control")
            .arg(&self.control)
            .args(args)
            .env_remove("MSGC_CONTROL")
            .output()
            .expect("run msgc-ctl")
    }

    /// `msgc-ctl ARGS`, which must succeed; its stdout.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "msgc-ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ctl_ok(&all)).expect("--json prints JSON")
    }

    fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 request; returns the status code and the body.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    if !request.starts_with(b"HEAD") {
        assert_eq!(length, body.len(), "Content-Length matches the body");
    }
    (code, body.to_string())
}

#[test]
fn every_ctl_command_against_a_running_server() {
    let dir = TempDir::new("every");
    let server = Server::start(&dir, &["--node", "alpha"], &[]);
    let mut c = RawClient::connect(server.addr, "worker-1");
    c.join("jobs");
    c.wait_view("jobs", 1);

    let status = server.ctl_json(&["status"]);
    assert_eq!(status["node"], "alpha");
    assert_eq!(status["clients"], 1);
    assert_eq!(status["shards"].as_array().unwrap().len(), 2);
    let human = server.ctl_ok(&["status"]);
    assert!(human.contains("alpha") && human.contains("1 client(s)"), "{human}");
    // A lone server is its own configuration (epoch = its start time in ms) and orders views.
    let epoch = status["shards"][0]["epoch"].as_u64().expect("an epoch");
    assert!(
        human.contains(&format!(
            "configuration epoch {epoch} of 1 server(s), 1 reachable; this server orders views"
        )),
        "{human}"
    );

    let groups = server.ctl_json(&["groups"]);
    assert_eq!(groups[0]["name"], "jobs");
    assert_eq!(groups[0]["members"], 1);
    assert!(server.ctl_ok(&["groups"]).lines().any(|l| l.starts_with("jobs ")));

    let sessions = server.ctl_json(&["sessions"]);
    assert_eq!(sessions[0]["name"], "worker-1");
    assert_eq!(sessions[0]["session"], c.session.to_string());
    assert_eq!(sessions[0]["groups"][0], "jobs");
    assert!(sessions[0]["queued_messages"].is_u64());
    let table = server.ctl_ok(&["sessions"]);
    assert!(table.starts_with("SESSION") && table.contains("worker-1"), "{table}");

    assert_eq!(server.ctl_json(&["peers"]), serde_json::json!([]));
    // Peers change live through config set: the new peer shows at once.
    let me = format!("127.0.0.1:{}", server.addr.port());
    let peers = format!("[ alpha = \"{me}\" beta = \"127.0.0.1:1\" ]");
    let set = server.ctl_ok(&["config", "set", "peers", &peers]);
    assert!(set.starts_with("peers = [ alpha = "), "{set}");
    let links = server.ctl_json(&["peers"]);
    assert_eq!(links.as_array().unwrap().len(), 1, "{links}");
    assert_eq!(links[0]["peer"], "beta");
    assert_ne!(links[0]["state"], "up");
    assert!(server.ctl_ok(&["peers"]).lines().any(|l| l.starts_with("beta ")));

    let all = server.ctl_ok(&["config", "get"]);
    for key in msgc::config::Config::server_option_names() {
        assert!(all.lines().any(|l| l.starts_with(&format!("{key} = "))), "{key} missing from {all}");
    }
    assert_eq!(server.ctl_ok(&["config", "get", "max_backlog"]), "max_backlog = 5000\n");
    let v = server.ctl_json(&["config", "get", "control_socket"]);
    assert_eq!(v[0]["value"], format!("\"{}\"", server.control.display()));

    let bad = server.ctl(&["config", "set", "max_backlog", "lots"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected a whole number"));
    let bad = server.ctl(&["config", "get", "max_backlgo"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("did you mean `max_backlog`"));
    let note = server.ctl_ok(&["config", "set", "log_format", "json"]);
    assert!(note.starts_with("log_format = json\nnote: ") && note.contains("next restart"), "{note}");

    // No --config: a reload has nothing to read and says so.
    assert!(server.ctl_ok(&["reload"]).contains("no --config file"));

    // Lame duck: the client is asked to move; once it is gone the server exits by itself.
    let out = server.ctl_ok(&["drain", "--deadline", "30"]);
    assert!(out.contains("1 client(s) asked to move"), "{out}");
    let frames = c.read_to_end();
    let last = frames.iter().rev().find(|f| !matches!(f, Frame::Noop | Frame::View(_)));
    assert!(matches!(last, Some(Frame::Error(e)) if e.code == ErrorCode::Draining), "{frames:?}");
    drop(c);
    let mut server = server;
    assert!(server.wait_exit(DEADLINE).success());
    assert!(!server.control.exists(), "the control socket goes with the server");
    let gone = server.ctl(&["status"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot connect"));
}

#[test]
fn config_set_takes_effect_and_reload_brings_back_the_file() {
    let dir = TempDir::new("config");
    let conf = dir.path("msgc.conf");
    std::fs::write(&conf, "msgc_server {\n  max_backlog = 100\n}\n").unwrap();
    let server = Server::start(&dir, &["--config", conf.to_str().unwrap()], &[]);

    // A client that sends nothing stays connected under the default idle_timeout (30 s)...
    let mut idle = RawClient::connect(server.addr, "idle");
    // Checked as in a file: idle_timeout must stay longer than keepalive_interval.
    let refused = server.ctl(&["config", "set", "idle_timeout", "1"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("must be longer than keepalive_interval"));
    server.ctl_ok(&["config", "set", "keepalive_interval", "0.5"]);
    let out = server.ctl_ok(&["config", "set", "idle_timeout", "1"]);
    assert_eq!(out, "idle_timeout = 1\n");
    // ...and is closed for it within a few seconds once it is 1 s.
    let closed_at = Instant::now();
    let frames = idle.read_to_end();
    assert!(
        frames.iter().any(|f| matches!(f, Frame::Error(e) if e.code == ErrorCode::IdleTimeout)),
        "{frames:?}"
    );
    assert!(closed_at.elapsed() < Duration::from_secs(15));
    assert_eq!(server.ctl_json(&["status"])["totals"]["killed_idle"], 1);

    // A max_connections the descriptor limit cannot hold is applied, with a warning.
    let out = server.ctl_ok(&["config", "set", "max_connections", "10000000"]);
    assert!(out.contains("note: the open-files limit"), "{out}");
    server.ctl_ok(&["config", "set", "max_backlog", "200"]);
    assert_eq!(server.ctl_ok(&["config", "get", "max_backlog"]), "max_backlog = 200\n");
    // A reload rereads the file: the file's values replace those set by hand.
    std::fs::write(&conf, "msgc_server {\n  max_backlog = 300\n}\n").unwrap();
    let r = server.ctl_json(&["reload"]);
    let changed: Vec<&str> = r["changed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(changed, ["idle_timeout", "keepalive_interval", "max_backlog", "max_connections"]);
    assert_eq!(server.ctl_ok(&["config", "get", "max_backlog"]), "max_backlog = 300\n");
    // SIGHUP goes the same way.
    std::fs::write(&conf, "msgc_server {\n  max_backlog = 400\n}\n").unwrap();
    server.signal(libc::SIGHUP);
    wait_for("SIGHUP applied", || server.ctl_ok(&["config", "get", "max_backlog"]) == "max_backlog = 400\n");
    // A bad file keeps the running config.
    std::fs::write(&conf, "msgc_server {\n  max_backlog = lots\n}\n").unwrap();
    let bad = server.ctl(&["reload"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("reload failed") && err.contains("msgc.conf:2:17"), "{err}");
    assert_eq!(server.ctl_ok(&["config", "get", "max_backlog"]), "max_backlog = 400\n");
    // --check-config shows the operator options too.
    std::fs::write(&conf, "msgc_server {\n  metrics_listen = \"127.0.0.1:9809\"\n  log_format = json\n}\n")
        .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_msgc-server")).arg("--check-config").arg(&conf).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("metrics_listen \"127.0.0.1:9809\"")
            && text.contains("log_format json")
            && text.contains("control_socket \"/run/msgc/msgc.sock\""),
        "{text}"
    );
    server.signal(libc::SIGTERM);
    let mut server = server;
    assert!(server.wait_exit(DEADLINE).success());
}

#[test]
fn a_descriptor_limit_below_max_connections_is_reported() {
    let dir = TempDir::new("nofile");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msgc-server"));
    cmd.args(["--listen", "127.0.0.1:0", "--threads", "1", "--control"]).arg(dir.path("msgc.sock"));
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.env_remove("RUST_LOG").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("open-files limit (1024) is below max_connections (65536)"), "{line:?}");
}

#[test]
fn drain_turns_new_clients_away_and_exits_when_the_last_one_leaves() {
    let dir = TempDir::new("drain");
    let mut server = Server::start(&dir, &[], &[]);
    let mut a = RawClient::connect(server.addr, "a");
    let b = RawClient::connect(server.addr, "b");
    let r = server.ctl_json(&["drain", "--deadline", "60"]);
    assert_eq!(r["clients"], 2);
    let again = server.ctl(&["drain"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already in progress"));
    assert_eq!(server.ctl_json(&["status"])["draining"], true);
    wait_for("no new connections", || {
        TcpStream::connect_timeout(&server.addr, Duration::from_millis(500)).is_err()
    });
    assert!(matches!(a.read_to_end().last(), Some(Frame::Error(e)) if e.code == ErrorCode::Draining));
    drop(a);
    drop(b);
    let started = Instant::now();
    assert!(server.wait_exit(DEADLINE).success());
    assert!(started.elapsed() < Duration::from_secs(30), "exited when empty, well before the deadline");
}

#[test]
fn metrics_endpoint_serves_parseable_text_and_refuses_bad_requests() {
    let dir = TempDir::new("metrics");
    let server = Server::start(&dir, &["--metrics", "127.0.0.1:0"], &[]);
    let m = server.metrics.unwrap();
    let mut a = RawClient::connect(server.addr, "a");
    a.join("g");
    a.wait_view("g", 1);
    for _ in 0..10 {
        a.mcast("g", b"0123456789");
    }
    let mut got = 0;
    while got < 10 {
        if let Some(Frame::Mcast(_)) = a.next_significant() {
            got += 1;
        }
    }
    let (code, body) = http(m, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200);
    let samples = parse_prometheus(&body);
    assert_eq!(samples["msgc_connections{role=client}"], 1.0);
    assert_eq!(samples["msgc_messages_in_total"], 10.0);
    assert_eq!(samples["msgc_groups"], 1.0);
    assert!(samples["msgc_bytes_in_total"] > 10.0 * 10.0);
    assert!(samples["msgc_deliveries_total"] >= 10.0);
    assert_eq!(samples["msgc_shards"], 2.0);
    assert!(samples.contains_key("msgc_shard_cpu_seconds_total{shard=0}"));
    let documented =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    for name in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap()) {
        assert!(
            documented.contains(&format!("`{name}`")),
            "metric {name} is not documented in docs/operations.md"
        );
    }

    let (code, body) = http(m, b"GET /varz HTTP/1.0\r\n\r\n");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["in_msgs"], 10);
    assert_eq!(v["connections"]["clients"], 1);
    assert_eq!(http(m, b"GET /healthz HTTP/1.1\r\n\r\n"), (200, "ok\n".into()));
    assert_eq!(http(m, b"HEAD /metrics HTTP/1.1\r\n\r\n").0, 200);
    assert_eq!(http(m, b"GET /nope HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(m, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(m, b"BLAH\r\n\r\n").0, 400);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(http(m, &huge).0, 431);
    // A client that sends half a request and waits is cut off, not waited for.
    let mut slow = TcpStream::connect(m).unwrap();
    slow.write_all(b"GET /metrics HT").unwrap();
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut text = String::new();
    slow.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // The endpoint moves when metrics_listen changes, and stops when it is emptied.
    server.ctl_ok(&["config", "set", "metrics_listen", "\"\""]);
    wait_for("endpoint closed", || TcpStream::connect(m).is_err());
}

#[test]
fn systemd_notifications_through_a_notify_socket() {
    let dir = TempDir::new("notify");
    let path = dir.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let server =
        Server::start(&dir, &[], &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")]);
    let next = || {
        let mut buf = [0u8; 1024];
        let n = sock.recv(&mut buf).expect("a notification before the deadline");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1\nSTATUS=listening on 127.0.0.1:"), "{ready:?}");
    // The watchdog is fed while the shards answer: every 0.2 s for a 0.4 s WATCHDOG_USEC.
    let mut pings = 0;
    while pings < 3 {
        assert_eq!(next(), "WATCHDOG=1");
        pings += 1;
    }
    let before = msgc::ops::notify::monotonic_usec();
    server.signal(libc::SIGHUP);
    let reloading = loop {
        let n = next();
        if n != "WATCHDOG=1" {
            break n;
        }
    };
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"))
        .parse()
        .unwrap();
    assert!(usec >= before && usec <= msgc::ops::notify::monotonic_usec());
    loop {
        let n = next();
        if n.starts_with("READY=1") {
            break;
        }
        assert_eq!(n, "WATCHDOG=1");
    }
    server.signal(libc::SIGTERM);
    loop {
        let n = next();
        if n.starts_with("STOPPING=1") {
            break;
        }
        assert_eq!(n, "WATCHDOG=1");
    }
    let mut server = server;
    assert!(server.wait_exit(DEADLINE).success());
}

#[test]
fn logs_have_no_colour_escapes_off_a_terminal_and_json_lines_parse() {
    for format in ["text", "json"] {
        let dir = TempDir::new(&format!("logs-{format}"));
        let server = Server::start(&dir, &["--log-format", format], &[("RUST_LOG", "msgc=debug")]);
        let mut c = RawClient::connect(server.addr, "logged");
        c.join("g");
        c.wait_view("g", 1);
        drop(c);
        server.signal(libc::SIGTERM);
        let mut server = server;
        assert!(server.wait_exit(DEADLINE).success());
        // The reader thread may lag the exit a little.
        wait_for("stderr collected", || server.stderr().contains("session started"));
        let text = server.stderr();
        assert!(!text.contains('\x1b'), "{format}: colour escapes in {text:?}");
        if format == "json" {
            for line in text.lines().filter(|l| !l.is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            }
        } else {
            assert!(text.lines().any(|l| l.contains("DEBUG") && l.contains("session started")), "{text}");
        }
    }
}

#[test]
fn import_spread_turns_segments_into_peers() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spread/mbus.conf");
    let out = Command::new(env!("CARGO_BIN_EXE_msgc-ctl"))
        .args(["--control", "/nonexistent/unused.sock", "import-spread", "--scope"])
        .arg(&fixture)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    // What it prints is a config msgc reads, and a peers table the mesh accepts.
    let config = msgc::config::Config::parse_str(&text, "imported").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let got: Vec<(String, String)> =
        config.server.peers.iter().map(|p| (p.name.clone(), p.addr.clone())).collect();
    let want = [
        ("mta-a1", "10.99.1.11"),
        ("mta-a2", "10.99.1.12"),
        ("mta-a3", "10.20.1.13"),
        ("mta-b1.example.net", "10.30.1.21"),
        ("10.30.1.22", "10.30.1.22"),
        ("mgr-b1", "mgr-b1"),
        ("mta-b3", "10.30.1.23"),
        ("mta-b4", "10.30.1.24"),
        ("manager", "10.40.0.5"),
    ];
    assert_eq!(got, want.map(|(n, a)| (n.to_string(), a.to_string())));
    let entries: Vec<(String, String)> = got.clone();
    msgc::mesh::PeerTable::new(&entries, 4809).expect("the mesh accepts the table");
    assert!(text.contains("3 segment(s), 9 daemon(s)"), "{text}");
    assert!(text.contains("msgc's `port` option (default 4809) applies"), "{text}");

    // Spread's ports kept on request; the odd segment keeps its own.
    let out = Command::new(env!("CARGO_BIN_EXE_msgc-ctl"))
        .args(["import-spread", "--keep-spread-port"])
        .arg(&fixture)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("mta-a1 = \"10.99.1.11:4803\"") && text.contains("manager = \"10.40.0.5:4903\""),
        "{text}"
    );

    // A broken file: an error with the line, exit status 1.
    let dir = TempDir::new("spread");
    let bad = dir.path("bad.conf");
    std::fs::write(&bad, "# x\nSpread_Segment 10.0.0.255:4803 {\n  a 10.0.0.1 { D }\n}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_msgc-ctl")).arg("import-spread").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.conf:3:"), "{err}");
}
