//! The fanout run: connect everyone, wait until every subscription is in place, publish for
//! warm-up plus duration, drain, then report what each subscriber verified and measured.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::lib_client::{self, ClientKind, LibPublisher, PublishSink};
use crate::stats::{read_stamp, stamp, Tally, STAMP};
use crate::targets::{next_item, subscribe_request, Item, Publisher, Target};
use crate::FanoutArgs;

/// How long connecting and subscribing may take before the run is abandoned.
const SETUP_DEADLINE: Duration = Duration::from_secs(30);
/// Most bytes a publisher writes at once.
const BATCH: usize = 64 * 1024;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the run's epoch.
pub(crate) fn ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub fn run(args: FanoutArgs) -> Result<String, String> {
    if args.size < STAMP {
        return Err(format!("--size must be at least {STAMP} bytes (timestamp and sequence number)"));
    }
    if args.publishers == 0 || args.groups == 0 || args.threads == 0 {
        return Err("--publishers, --groups and --threads must be at least 1".into());
    }
    if !(args.duration > 0.0 && args.duration.is_finite() && args.warmup >= 0.0 && args.warmup.is_finite()) {
        return Err("--duration must be positive and --warmup not negative".into());
    }
    ns();
    let mut embedded = None;
    let target = match (&args.target, args.servers.is_empty(), args.server) {
        (Some(url), _, _) => parse_target(url)?,
        (None, false, _) => Target::Msgc(args.servers.clone()),
        (None, true, Some(a)) => Target::Msgc(vec![a]),
        (None, true, None) => {
            let opts = msgc::runtime::ServerOptions {
                listen: vec!["127.0.0.1:0".parse().map_err(|e| format!("{e}"))?],
                threads: args.server_threads,
                pin_threads: true,
                node_name: "bench".into(),
                ..Default::default()
            };
            let server = msgc::runtime::ServerHandle::start(opts).map_err(|e| e.to_string())?;
            let addr = server.local_addrs()[0];
            embedded = Some(server);
            Target::Msgc(vec![addr])
        }
    };
    if args.client() == ClientKind::Lib && !matches!(target, Target::Msgc(_)) {
        return Err(format!(
            "--client lib drives msgc only; {} is measured with --client raw",
            target.name()
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the subscriber runtime: {e}"))?;
    let result = rt.block_on(drive(&args, &target, embedded.is_some()));
    drop(embedded);
    result
}

fn parse_target(url: &str) -> Result<Target, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("--target {url}: expected nats://HOST:PORT or redis://HOST:PORT"))?;
    let addrs = rest
        .split(',')
        .map(|one| {
            std::net::ToSocketAddrs::to_socket_addrs(one)
                .map_err(|e| format!("--target {url}: {one}: {e}"))?
                .next()
                .ok_or_else(|| format!("--target {url}: {one}: no address"))
        })
        .collect::<Result<Vec<SocketAddr>, String>>()?;
    match scheme {
        "nats" => Ok(Target::Nats(addrs)),
        "redis" if addrs.len() == 1 => Ok(Target::Redis(addrs[0])),
        "redis" => Err("--target redis:// takes one address".into()),
        "msgc" => Ok(Target::Msgc(addrs)),
        other => Err(format!("--target: unknown scheme {other}; expected nats, redis or msgc")),
    }
}

pub(crate) struct Shared {
    pub delivered: AtomicU64,
    pub published: AtomicU64,
    pub stop: AtomicBool,
    pub disconnects: AtomicU64,
}

async fn drive(args: &FanoutArgs, target: &Target, embedded: bool) -> Result<String, String> {
    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        published: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        disconnects: AtomicU64::new(0),
    });
    let group_name = |g: usize| format!("bench.g{g}");
    // Subscribers first, so that every publisher's first message has its audience.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(args.subscribers.max(1));
    let (window_tx, window_rx) = tokio::sync::watch::channel(None::<(u64, u64)>);
    let mut subs = Vec::new();
    for i in 0..args.subscribers {
        let g = i % args.groups;
        let expected = (0..args.subscribers).filter(|j| j % args.groups == g).count();
        // In a cluster, subscribers go to the servers other than the first, where the
        // publishers start: every message then crosses the mesh.
        let addr = target.subscriber_addr(i);
        let stalled = i < args.stalled;
        if args.client() == ClientKind::Lib {
            let (ready, window, shared) = (ready_tx.clone(), window_rx.clone(), shared.clone());
            subs.push(tokio::spawn(lib_client::subscribe(
                addr,
                i,
                group_name(g),
                expected,
                stalled,
                ready,
                window,
                shared,
            )));
            continue;
        }
        let sub =
            Subscriber { target: target.clone(), addr, index: i, group: group_name(g), expected, stalled };
        subs.push(tokio::spawn(sub.run(ready_tx.clone(), window_rx.clone(), shared.clone())));
    }
    drop(ready_tx);
    let setup_end = Instant::now() + SETUP_DEADLINE;
    for _ in 0..args.subscribers {
        match tokio::time::timeout_at(setup_end.into(), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err("a subscriber stopped during setup".into()),
            Err(_) => return Err(format!("subscriptions not in place after {SETUP_DEADLINE:?}")),
        }
    }
    let mut pubs: Vec<Box<dyn PublishSink>> = Vec::new();
    for p in 0..args.publishers {
        let group = group_name(p % args.groups);
        pubs.push(match args.client() {
            ClientKind::Lib => Box::new(LibPublisher::connect(target.addr(p), p, &group)?),
            ClientKind::Raw => Box::new(Publisher::connect(target, p, &group)?),
        });
    }
    let cpu_before = server_cpu(args.server_pid, embedded);
    let start = ns();
    let from = start + (args.warmup * 1e9) as u64;
    let until = from + (args.duration * 1e9) as u64;
    let _ = window_tx.send(Some((from, until)));
    let threads: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(p, publisher)| {
            let shared = shared.clone();
            let args = args.clone();
            std::thread::spawn(move || publish(publisher, p as u32, &args, start, from, until, &shared))
        })
        .collect();
    progress(args, &shared, start, until).await;
    for t in threads {
        let _ = t.join();
    }
    let cpu_after = server_cpu(args.server_pid, embedded);
    drain(&shared).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut total = Tally::new(from, until);
    let mut failed = Vec::new();
    for s in subs.into_iter().skip(args.stalled) {
        match s.await {
            Ok(Ok(t)) => total.merge(&t),
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(e.to_string()),
        }
    }
    let report = Report {
        target: target.name(),
        client: args.client().name(),
        args: args.clone(),
        published: shared.published.load(Ordering::Relaxed),
        total,
        disconnects: shared.disconnects.load(Ordering::Relaxed) + failed.len() as u64,
        server_cpu_percent: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) => Some((a - b) / args.duration * 100.0),
            _ => None,
        },
        server_peak_rss_kib: peak_rss_kib(args.server_pid, embedded),
        embedded,
        errors: failed,
    };
    Ok(if args.json { report.json() } else { report.text() })
}

struct Subscriber {
    target: Target,
    addr: SocketAddr,
    index: usize,
    group: String,
    expected: usize,
    /// Never reads after subscribing.
    stalled: bool,
}

impl Subscriber {
    async fn run(
        self,
        ready: tokio::sync::mpsc::Sender<Result<(), String>>,
        mut window: tokio::sync::watch::Receiver<Option<(u64, u64)>>,
        shared: Arc<Shared>,
    ) -> Result<Tally, String> {
        let setup = self.subscribe().await;
        let (mut stream, mut buf) = match setup {
            Ok(s) => {
                let _ = ready.send(Ok(())).await;
                s
            }
            Err(e) => {
                let _ = ready.send(Err(e.clone())).await;
                return Err(e);
            }
        };
        let (from, until) = loop {
            if let Some(w) = *window.borrow() {
                break w;
            }
            window.changed().await.map_err(|_| "run abandoned".to_string())?;
        };
        let mut tally = Tally::new(from, until);
        if self.stalled {
            // Hold the connection open without reading until the run ends (bounded).
            while !shared.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return Ok(Tally::new(from, until));
        }
        loop {
            let mut pings = 0;
            let mut count = 0;
            while let Some(()) = next_item(&self.target, &mut buf, |item| match item {
                Item::Message(p) => {
                    if let Some((ts, publisher, seq)) = read_stamp(p) {
                        tally.record(publisher, seq, ts, ns(), p.len());
                        count += 1;
                    }
                }
                Item::Gap => tally.gaps_reported += 1,
                Item::Ping => pings += 1,
                _ => {}
            })? {}
            shared.delivered.fetch_add(count, Ordering::Relaxed);
            for _ in 0..pings {
                stream.write_all(b"PONG\r\n").await.map_err(|e| e.to_string())?;
            }
            if buf.capacity() - buf.len() < 64 * 1024 {
                buf.reserve(256 * 1024);
            }
            match tokio::time::timeout(Duration::from_millis(100), stream.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    shared.disconnects.fetch_add(1, Ordering::Relaxed);
                    return Ok(tally);
                }
                Ok(Ok(_)) => {}
                Err(_) if shared.stop.load(Ordering::Relaxed) => return Ok(tally),
                Err(_) => {}
            }
        }
    }

    /// Connects and subscribes; returns once the subscription is confirmed (msgc: a view
    /// with every subscriber of the group).
    async fn subscribe(&self) -> Result<(tokio::net::TcpStream, BytesMut), String> {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("subscriber cannot connect to {}: {e}", self.addr))?;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(&subscribe_request(&self.target, self.index, &self.group))
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        loop {
            let mut done = false;
            let mut pings = 0;
            while let Some(()) = next_item(&self.target, &mut buf, |item| match item {
                Item::View(n) if n >= self.expected => done = true,
                Item::Subscribed => done = true,
                Item::Ping => pings += 1,
                _ => {}
            })? {}
            for _ in 0..pings {
                stream.write_all(b"PONG\r\n").await.map_err(|e| e.to_string())?;
            }
            if done {
                return Ok((stream, buf));
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err(format!("{} closed the connection during setup", self.addr)),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// One publisher's loop: at `--rate`, each message is stamped with its scheduled time and
/// sent when due (late ones are sent at once and count their lateness as latency); at max
/// rate, batches of up to 64 KiB are written back to back.
fn publish(
    mut p: Box<dyn PublishSink>,
    index: u32,
    args: &FanoutArgs,
    start: u64,
    from: u64,
    until: u64,
    shared: &Shared,
) {
    let mut payload = vec![0u8; args.size];
    let mut out = Vec::with_capacity(BATCH + args.size + 256);
    let interval = if args.rate > 0 { 1e9 * args.publishers as f64 / args.rate as f64 } else { 0.0 };
    let mut seq = 0u64;
    let mut counted = 0u64;
    loop {
        let now = ns();
        if now >= until {
            break;
        }
        out.clear();
        if args.rate == 0 {
            while out.len() < BATCH {
                seq += 1;
                stamp(&mut payload, now, index, seq);
                p.encode(&mut out, &payload);
                counted += u64::from(now >= from);
            }
        } else {
            let due = |k: u64| start + (k as f64 * interval) as u64;
            let next = due(seq);
            if next > now {
                // Sleep rather than spin: on a small machine a spinning publisher would steal
                // the server's CPU. Lateness is measured, since messages carry their due time.
                let wait = next - now;
                if wait > 20_000 {
                    std::thread::sleep(Duration::from_nanos(wait));
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            while due(seq) <= now && out.len() < BATCH && due(seq) < until {
                let at = due(seq);
                seq += 1;
                stamp(&mut payload, at, index, seq);
                p.encode(&mut out, &payload);
                counted += u64::from(at >= from);
            }
        }
        if p.write(&out).is_err() {
            shared.disconnects.fetch_add(1, Ordering::Relaxed);
            break;
        }
        shared.published.fetch_add(std::mem::take(&mut counted), Ordering::Relaxed);
    }
    p.finish();
    shared.published.fetch_add(counted, Ordering::Relaxed);
}

/// Shows a one-line progress display on a terminal until the run ends.
async fn progress(args: &FanoutArgs, shared: &Shared, start: u64, until: u64) {
    let show = !args.json && std::io::stderr().is_terminal();
    let mut last = (ns(), 0u64, 0u64);
    while ns() < until {
        tokio::time::sleep(Duration::from_millis(1000).min(Duration::from_nanos(until.saturating_sub(ns()))))
            .await;
        if show {
            let now = ns();
            let (p, d) = (shared.published.load(Ordering::Relaxed), shared.delivered.load(Ordering::Relaxed));
            let secs = (now - last.0) as f64 / 1e9;
            eprint!(
                "\r{:>5.1}s  delivered {:>12.0} msg/s  disconnects {}   ",
                (now - start) as f64 / 1e9,
                (d - last.2) as f64 / secs,
                shared.disconnects.load(Ordering::Relaxed)
            );
            last = (now, p, d);
        }
    }
    if show {
        eprintln!();
    }
}

/// Waits until deliveries stop (what was in flight has arrived), at most 3 s.
async fn drain(shared: &Shared) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = shared.delivered.load(Ordering::Relaxed);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = shared.delivered.load(Ordering::Relaxed);
        if now == seen {
            break;
        }
        seen = now;
    }
}

/// CPU seconds used so far by the server: an external process, or the embedded server's
/// threads (named `msgc-*`).
fn server_cpu(pid: Option<u32>, embedded: bool) -> Option<f64> {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_of = |stat: &str| -> Option<f64> {
        let after = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
    };
    if let Some(pid) = pid {
        return cpu_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?);
    }
    if !embedded {
        return None;
    }
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("msgc-") {
            total += cpu_of(&std::fs::read_to_string(task.path().join("stat")).ok()?)?;
        }
    }
    Some(total)
}

/// Peak RSS in KiB of an external server, or of this whole process with an embedded one.
fn peak_rss_kib(pid: Option<u32>, embedded: bool) -> Option<u64> {
    let path = match (pid, embedded) {
        (Some(pid), _) => format!("/proc/{pid}/status"),
        (None, true) => "/proc/self/status".into(),
        _ => return None,
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Report {
    target: &'static str,
    /// Which client measured: `lib` (msgc::client) or `raw` (this program's codec client).
    client: &'static str,
    args: FanoutArgs,
    published: u64,
    total: Tally,
    disconnects: u64,
    server_cpu_percent: Option<f64>,
    server_peak_rss_kib: Option<u64>,
    embedded: bool,
    errors: Vec<String>,
}

impl Report {
    fn rates(&self) -> (f64, f64, f64) {
        let d = self.args.duration;
        (self.published as f64 / d, self.total.delivered as f64 / d, self.total.bytes as f64 / d / 1e6)
    }

    fn json(&self) -> String {
        let (pubs, dels, mbs) = self.rates();
        let h = &self.total.latency_us;
        let q = |x: f64| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
        serde_json::json!({
            "target": self.target,
            "client": self.client,
            "publishers": self.args.publishers,
            "subscribers": self.args.subscribers,
            "groups": self.args.groups,
            "size": self.args.size,
            "rate": self.args.rate,
            "duration_s": self.args.duration,
            "warmup_s": self.args.warmup,
            "published_msgs_per_s": pubs,
            "delivered_msgs_per_s": dels,
            "delivered_payload_mb_per_s": mbs,
            "latency_us": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999), "max": h.max(), "samples": h.len() },
            "lost": self.total.lost,
            "duplicates": self.total.duplicates,
            "reorders": self.total.reorders,
            "gaps_reported": self.total.gaps_reported,
            "disconnects": self.disconnects,
            "server_cpu_percent": self.server_cpu_percent,
            "server_peak_rss_kib": self.server_peak_rss_kib,
            "rss_includes_load_generator": self.embedded,
            "errors": self.errors,
        })
        .to_string()
    }

    fn text(&self) -> String {
        let (pubs, dels, mbs) = self.rates();
        let h = &self.total.latency_us;
        let q = |x: f64| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
        let a = &self.args;
        let mut s = format!(
            "{} fanout ({} client): {} pub x {} sub x {} groups, {} B, rate {}, {:.1} s measured\n\
             published  {pubs:>14.0} msg/s\n\
             delivered  {dels:>14.0} msg/s   {mbs:.1} MB/s payload\n\
             latency us p50 {} p90 {} p99 {} p99.9 {} max {}\n\
             lost {}  duplicates {}  reorders {}  gap notices {}  disconnects {}",
            self.target,
            self.client,
            a.publishers,
            a.subscribers,
            a.groups,
            a.size,
            if a.rate == 0 { "max".to_string() } else { format!("{}/s", a.rate) },
            a.duration,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            h.max(),
            self.total.lost,
            self.total.duplicates,
            self.total.reorders,
            self.total.gaps_reported,
            self.disconnects,
        );
        if let Some(cpu) = self.server_cpu_percent {
            s.push_str(&format!("\nserver cpu {cpu:.0}%"));
        }
        if let Some(rss) = self.server_peak_rss_kib {
            let whose = if self.embedded { " (whole process, load generator included)" } else { "" };
            s.push_str(&format!("  peak rss {} MiB{whose}", rss / 1024));
        }
        for e in &self.errors {
            s.push_str(&format!("\nerror: {e}"));
        }
        s
    }
}
