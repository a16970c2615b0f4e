//! The fanout run: start subscriber threads and wait until every subscription is in place,
//! connect the publishers and spread them over publisher threads, publish for warm-up plus
//! duration, wait until what was sent has arrived, then report what each subscriber
//! verified and measured, and whether the load generator itself was the limit.
//!
//! Connections are made in [`crate::subscribe::SubConn`] and [`crate::publish::PubConn`];
//! a driver that connects another way plugs in there, not here.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::cpu::{machine_busy, sample_machine, LoadUse};
use crate::lib_client::{self, ClientKind, LibPublisher};
use crate::publish::{self, PubConn};
use crate::report::Report;
use crate::stats::{stamp, Tally, PROBE_SEQ, STAMP};
use crate::subscribe::{self, SubSpec};
use crate::targets::Target;
use crate::threads::{available_cores, spread, ThreadPlan};
use crate::FanoutArgs;

/// After the publishers stop: the longest wait for what they sent to arrive, and how long
/// deliveries may pause before the rest is taken as never coming.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
const DRAIN_QUIET: Duration = Duration::from_millis(500);

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the run's epoch.
pub fn ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The instant `at` nanoseconds after the run's epoch.
pub fn instant_at(at: u64) -> Instant {
    *EPOCH.get_or_init(Instant::now) + Duration::from_nanos(at)
}

/// The run's clock marks (ns): publishing starts at `start`, is measured over
/// `[from, until)`, and stops at `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub from: u64,
    pub until: u64,
}

/// Counters every thread updates.
#[derive(Default)]
pub struct Shared {
    /// Messages received by all subscribers, window or not.
    pub received: AtomicU64,
    /// Messages stamped inside the window.
    pub published: AtomicU64,
    /// (subscriber, publisher) pairs whose first probe arrived (see [`PROBE_SEQ`]).
    pub probed: AtomicU64,
    pub stop: AtomicBool,
}

pub fn run(args: FanoutArgs) -> Result<String, String> {
    if args.size < STAMP {
        return Err(format!("--size must be at least {STAMP} bytes (timestamp and sequence number)"));
    }
    if args.publishers == 0 || args.groups == 0 {
        return Err("--publishers and --groups must be at least 1".into());
    }
    if args.stalled > args.subscribers {
        return Err("--stalled cannot exceed --subscribers".into());
    }
    if !(args.duration > 0.0 && args.duration.is_finite() && args.warmup >= 0.0 && args.warmup.is_finite()) {
        return Err("--duration must be positive and --warmup not negative".into());
    }
    if !(args.setup_timeout > 0.0 && args.setup_timeout <= 86_400.0) {
        return Err("--setup-timeout must be positive (seconds, at most a day)".into());
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
    let plan = ThreadPlan::decide(
        available_cores(),
        args.publishers,
        args.subscribers - args.stalled,
        args.pub_threads,
        args.sub_threads,
    );
    let result = drive(&args, &target, plan, embedded.is_some());
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

fn group_name(g: usize) -> String {
    format!("bench.g{g}")
}

fn drive(args: &FanoutArgs, target: &Target, plan: ThreadPlan, embedded: bool) -> Result<String, String> {
    let shared = Arc::new(Shared::default());
    // Abandoned setups leave threads waiting for a window that never comes: the stop flag
    // and the dropped window sender release them.
    let result = drive_inner(args, target, plan, embedded, &shared);
    shared.stop.store(true, Ordering::Relaxed);
    result
}

fn drive_inner(
    args: &FanoutArgs,
    target: &Target,
    plan: ThreadPlan,
    embedded: bool,
    shared: &Arc<Shared>,
) -> Result<String, String> {
    // Subscribers first, so that every publisher's first message has its audience.
    let specs: Vec<SubSpec> = (0..args.subscribers)
        .map(|i| {
            let g = i % args.groups;
            SubSpec {
                target: target.clone(),
                // In a cluster, subscribers go to the servers other than the first, where
                // the publishers start: every message then crosses the mesh.
                addr: target.subscriber_addr(i),
                index: i,
                group: group_name(g),
                members: (0..args.subscribers).filter(|j| j % args.groups == g).count(),
                lib: args.client() == ClientKind::Lib,
                stalled: i < args.stalled,
                publishers: args.publishers,
            }
        })
        .collect();
    // Readers first, so they are spread evenly; stalled ones cost no CPU.
    let (stalled, readers): (Vec<_>, Vec<_>) = specs.iter().cloned().partition(|s| s.stalled);
    let mut lists = spread(readers, plan.subscriber_threads);
    if lists.is_empty() {
        lists.push(Vec::new());
    }
    let n_lists = lists.len();
    for (i, s) in stalled.into_iter().enumerate() {
        lists[i % n_lists].push(s);
    }
    let (window_tx, window_rx) = tokio::sync::watch::channel(None::<Window>);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut sub_threads = Vec::new();
    for (n, list) in lists.into_iter().enumerate() {
        sub_threads.push(subscribe::start_thread(
            n,
            list,
            shared.clone(),
            ready_tx.clone(),
            window_rx.clone(),
        )?);
    }
    drop(ready_tx);
    let setup = Duration::from_secs_f64(args.setup_timeout);
    let setup_end = Instant::now() + setup;
    for _ in 0..args.subscribers {
        match ready_rx.recv_timeout(setup_end.saturating_duration_since(Instant::now())) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("a subscriber stopped during setup".into())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("subscriptions not in place after {setup:?}"))
            }
        }
    }
    let interval_ns = if args.rate > 0 { 1e9 * args.publishers as f64 / args.rate as f64 } else { 0.0 };
    let lib = args.client() == ClientKind::Lib;
    let (mut conns, mut lib_pubs) = (Vec::new(), Vec::new());
    for p in 0..args.publishers {
        let group = group_name(p % args.groups);
        if lib {
            lib_pubs.push(LibPublisher::connect(target.addr(p), p, args.publishers, &group, interval_ns)?);
        } else {
            conns.push(PubConn::connect(target, p, args.publishers, &group, args.size, interval_ns)?);
        }
    }
    // The clock starts once every publisher is known to reach every one of its subscribers.
    let pairs = specs
        .iter()
        .filter(|s| !s.stalled)
        .map(|s| (0..args.publishers).filter(|p| p % args.groups == s.index % args.groups).count() as u64)
        .sum();
    probe_paths(&mut conns, &mut lib_pubs, args.size, shared, pairs, setup_end)
        .map_err(|e| format!("after {setup:?} of setup, {e}"))?;
    let start = ns();
    let from = start + (args.warmup * 1e9) as u64;
    let window = Window { start, from, until: from + (args.duration * 1e9) as u64 };
    let _ = window_tx.send(Some(window));
    let mut pub_threads = Vec::new();
    let spawn = |n: usize, f: Box<dyn FnOnce() -> publish::PubThreadResult + Send>| {
        std::thread::Builder::new()
            .name(format!("bench-pub-{n}"))
            .spawn(f)
            .map_err(|e| format!("cannot start a publisher thread: {e}"))
    };
    let size = args.size;
    for (n, list) in spread(conns, plan.publisher_threads).into_iter().enumerate() {
        let shared = shared.clone();
        pub_threads
            .push(spawn(n, Box::new(move || publish::run_thread(list, size, interval_ns, window, &shared)))?);
    }
    for (n, list) in spread(lib_pubs, plan.publisher_threads).into_iter().enumerate() {
        let shared = shared.clone();
        pub_threads.push(spawn(
            n,
            Box::new(move || lib_client::run_thread(list, size, interval_ns, window, &shared)),
        )?);
    }
    sleep_until(window.from);
    let server_cpu_from = server_cpu(args.server_pid, embedded);
    let machine_from = sample_machine();
    progress(args, shared, window);
    let server_cpu_until = server_cpu(args.server_pid, embedded);
    let machine_until = sample_machine();

    let mut finals = vec![None; args.publishers];
    let mut errors = Vec::new();
    let mut load = LoadUse::default();
    for t in pub_threads {
        let r = t.join().map_err(|_| "a publisher thread panicked".to_string())?;
        for (i, last) in r.finals {
            finals[i as usize] = last;
        }
        errors.extend(r.errors);
        load.publishers.extend(r.cpu);
    }
    // Every reading subscriber should end up with every message of its group's publishers.
    let group_finals = |g: usize| -> Vec<Option<u64>> {
        finals.iter().enumerate().map(|(p, f)| if p % args.groups == g { *f } else { None }).collect()
    };
    let expected: Option<u64> = specs
        .iter()
        .filter(|s| !s.stalled)
        .flat_map(|s| (0..args.publishers).filter(move |p| p % args.groups == s.index % args.groups))
        .map(|p| finals[p])
        .sum();
    drain(shared, expected);
    shared.stop.store(true, Ordering::Relaxed);

    let mut total = Tally::new(window.from, window.until, args.publishers);
    let mut missing_at_end = 0;
    let mut disconnects = errors.len() as u64;
    for t in sub_threads {
        let r = t.join().map_err(|_| "a subscriber thread panicked".to_string())?;
        load.subscribers.extend(r.cpu);
        for o in r.outcomes {
            if let (Some(t), false) = (&o.tally, o.stalled) {
                total.merge(t);
                // A subscriber that was cut cannot have the end of the stream; its
                // disconnect is reported instead.
                if o.error.is_none() {
                    missing_at_end += t.missing_at_end(&group_finals(o.index % args.groups));
                }
            }
            if let Some(e) = o.error {
                disconnects += 1;
                errors.push(e);
            }
        }
    }
    load.machine_busy = match (machine_from, machine_until) {
        (Some(a), Some(b)) => machine_busy(a, b),
        _ => None,
    };
    let report = Report {
        target: target.name(),
        client: args.client().name(),
        args: args.clone(),
        published: shared.published.load(Ordering::Relaxed),
        total,
        missing_at_end,
        unfinished_publishers: finals.iter().filter(|f| f.is_none()).count(),
        disconnects,
        server_cpu_percent: match (server_cpu_from, server_cpu_until) {
            (Some(b), Some(a)) => Some((a - b) / args.duration * 100.0),
            _ => None,
        },
        server_peak_rss_kib: peak_rss_kib(args.server_pid, embedded),
        embedded,
        load,
        errors,
    };
    Ok(if args.json { report.json() } else { report.text() })
}

/// How often the publishers probe while waiting for their paths.
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// Sends probes from every publisher until `pairs` (subscriber, publisher) pairs have each
/// received one, or fails at `deadline` saying how many did.
fn probe_paths(
    conns: &mut [PubConn],
    lib_pubs: &mut [LibPublisher],
    size: usize,
    shared: &Shared,
    pairs: u64,
    deadline: Instant,
) -> Result<(), String> {
    let mut payload = vec![0u8; size];
    let mut probes = 0u64;
    loop {
        let heard = shared.probed.load(Ordering::Relaxed);
        if heard >= pairs {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{heard} of {pairs} (subscriber, publisher) pairs had \
                 received a probe ({probes} rounds sent): some publisher's server does not reach some \
                 subscriber's server (are all links of the cluster up?)"
            ));
        }
        for c in conns.iter_mut() {
            stamp(&mut payload, ns(), c.index, PROBE_SEQ);
            c.probe(&payload).map_err(|e| format!("publisher {} while probing: {e}", c.index))?;
        }
        for p in lib_pubs.iter_mut() {
            stamp(&mut payload, ns(), p.index(), PROBE_SEQ);
            p.probe(&payload).map_err(|e| format!("publisher {} while probing: {e}", p.index()))?;
        }
        probes += 1;
        std::thread::sleep(PROBE_EVERY.min(deadline.saturating_duration_since(Instant::now())));
    }
}

fn sleep_until(at: u64) {
    let now = ns();
    if at > now {
        std::thread::sleep(Duration::from_nanos(at - now));
    }
}

/// Shows a one-line progress display on a terminal until the window closes.
fn progress(args: &FanoutArgs, shared: &Shared, window: Window) {
    let show = !args.json && std::io::stderr().is_terminal();
    let mut last = (ns(), shared.received.load(Ordering::Relaxed));
    while ns() < window.until {
        sleep_until((ns() + 1_000_000_000).min(window.until));
        if show {
            let (now, d) = (ns(), shared.received.load(Ordering::Relaxed));
            eprint!(
                "\r{:>5.1}s  delivered {:>12.0} msg/s   ",
                (now - window.start) as f64 / 1e9,
                (d - last.1) as f64 / ((now - last.0) as f64 / 1e9)
            );
            last = (now, d);
        }
    }
    if show {
        eprintln!();
    }
}

/// Waits until the subscribers received `expected` messages in all (when every publisher
/// finished), or deliveries pause for [`DRAIN_QUIET`], at most [`DRAIN_DEADLINE`].
fn drain(shared: &Shared, expected: Option<u64>) {
    let deadline = Instant::now() + DRAIN_DEADLINE;
    let mut seen = shared.received.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        if expected.is_some_and(|e| seen >= e) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
        let now = shared.received.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= DRAIN_QUIET {
            return;
        }
    }
}

/// CPU seconds used so far by the server: an external process, or the embedded server's
/// threads (named `msgc-*`).
fn server_cpu(pid: Option<u32>, embedded: bool) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_explain() {
        assert!(
            matches!(parse_target("nats://127.0.0.1:4222,127.0.0.1:4223"), Ok(Target::Nats(a)) if a.len() == 2)
        );
        assert!(matches!(parse_target("redis://127.0.0.1:6379"), Ok(Target::Redis(_))));
        assert!(matches!(parse_target("msgc://127.0.0.1:4809"), Ok(Target::Msgc(_))));
        let err = |url: &str| parse_target(url).unwrap_err();
        assert!(err("127.0.0.1:4222").contains("expected nats://"));
        assert!(err("kafka://127.0.0.1:9092").contains("unknown scheme kafka"));
        assert!(err("redis://127.0.0.1:1,127.0.0.1:2").contains("one address"));
        assert!(err("nats://nonsense").contains("nonsense"));
    }

    #[test]
    fn bad_arguments_are_refused_before_anything_starts() {
        use clap::Parser;
        let run_with = |extra: &[&str]| {
            let mut argv = vec!["msgc-bench", "fanout", "--server", "127.0.0.1:1"];
            argv.extend_from_slice(extra);
            let crate::Cli { cmd: crate::Cmd::Fanout(args) } = crate::Cli::try_parse_from(argv).unwrap();
            run(args).unwrap_err()
        };
        assert!(run_with(&["--size", "8"]).contains("--size must be at least 20"));
        assert!(run_with(&["-p", "0"]).contains("at least 1"));
        assert!(run_with(&["-s", "2", "--stalled", "3"]).contains("--stalled"));
        assert!(run_with(&["--duration", "0"]).contains("--duration"));
        assert!(run_with(&["--setup-timeout", "0"]).contains("--setup-timeout"));
        assert!(run_with(&["--setup-timeout", "NaN"]).contains("--setup-timeout"));
    }

    /// Three embedded servers on 127.0.0.1 (port 0) named `{prefix}-n1..3`, that redial
    /// quickly; `n2` and `n3` are linked, `n1` (where the publishers connect) is linked to
    /// nobody yet. Returns the servers and the full peers table.
    fn cluster_without_n1(prefix: &str) -> (Vec<msgc::runtime::ServerHandle>, Vec<msgc::runtime::PeerSpec>) {
        let servers: Vec<_> = (1..=3)
            .map(|i| {
                msgc::runtime::ServerHandle::start(msgc::runtime::ServerOptions {
                    listen: vec!["127.0.0.1:0".parse().unwrap()],
                    threads: 1,
                    pin_threads: false,
                    node_name: format!("{prefix}-n{i}"),
                    limits: msgc::core::Limits {
                        reconnect_interval: Duration::from_millis(200),
                        ..Default::default()
                    },
                    ..Default::default()
                })
                .expect("server starts")
            })
            .collect();
        let table: Vec<_> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| msgc::runtime::PeerSpec {
                name: format!("{prefix}-n{}", i + 1),
                addr: s.local_addrs()[0].to_string(),
            })
            .collect();
        servers[1].set_peers(table[1..].to_vec());
        servers[2].set_peers(table[1..].to_vec());
        (servers, table)
    }

    /// Arguments for a raw-client run against `servers` (one: `--server`, more: `--servers`).
    fn fanout_args(servers: &[msgc::runtime::ServerHandle], extra: &[&str]) -> FanoutArgs {
        use clap::Parser;
        let list = servers.iter().map(|s| s.local_addrs()[0].to_string()).collect::<Vec<_>>().join(",");
        let flag = if servers.len() == 1 { "--server" } else { "--servers" };
        let mut argv = vec!["msgc-bench", "fanout", "--client", "raw", flag, &list, "--json"];
        argv.extend_from_slice(extra);
        let crate::Cli { cmd: crate::Cmd::Fanout(args) } = crate::Cli::try_parse_from(argv).unwrap();
        args
    }

    /// The silent loss once seen across a 3-server mesh: the subscribers' views were
    /// complete (n2 and n3 were linked), but the publishers' server n1 was not linked to
    /// them yet, so what it was sent first reached nobody and the run reported the missing
    /// head as loss. Here n1 is linked only once it has received something; the run must
    /// wait for that and then lose nothing.
    #[test]
    fn the_clock_starts_only_once_the_publishers_server_reaches_every_subscriber() {
        let (servers, table) = cluster_without_n1("bench-late");
        let released = AtomicBool::new(false);
        let report = std::thread::scope(|scope| {
            scope.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(30);
                while servers[0].stats().msgs_in == 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                for s in &servers {
                    s.set_peers(table.clone());
                }
                released.store(true, Ordering::Relaxed);
            });
            run(fanout_args(&servers, &["-p", "2", "-s", "4", "--duration", "0.5", "--warmup", "0"]))
        });
        for s in servers {
            s.shutdown();
        }
        assert!(released.load(Ordering::Relaxed));
        let r: serde_json::Value = serde_json::from_str(&report.expect("the run completes")).unwrap();
        assert!(r["delivered_msgs_per_s"].as_f64().unwrap() > 0.0, "{r}");
        for key in ["lost", "missing_at_end", "duplicates", "foreign", "disconnects", "unfinished_publishers"]
        {
            assert_eq!(r[key], 0, "{key} in {r}");
        }
    }

    #[test]
    fn a_publisher_that_cannot_reach_its_subscribers_fails_the_setup_clearly() {
        let (servers, _) = cluster_without_n1("bench-cut");
        let started = Instant::now();
        let err = run(fanout_args(&servers, &["-s", "2", "--duration", "0.2", "--setup-timeout", "2"]));
        for s in servers {
            s.shutdown();
        }
        let err = err.unwrap_err();
        assert!(err.contains("0 of 2 (subscriber, publisher) pairs had received a probe"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20), "bounded by --setup-timeout");
    }

    /// A subscriber only reads, but a msgc server closes connections that send nothing for
    /// `idle_timeout`: a run longer than that must not lose its subscribers to it.
    #[test]
    fn raw_subscribers_outlive_the_servers_idle_timeout() {
        let server = msgc::runtime::ServerHandle::start(msgc::runtime::ServerOptions {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            threads: 1,
            pin_threads: false,
            node_name: "bench-idle".into(),
            limits: msgc::core::Limits {
                idle_timeout: Duration::from_millis(1500),
                keepalive_interval: Duration::from_millis(500),
                ..Default::default()
            },
            ..Default::default()
        })
        .expect("server starts");
        let report = run(fanout_args(
            std::slice::from_ref(&server),
            &["-s", "2", "--rate", "2000", "--duration", "3", "--warmup", "0.5"],
        ));
        server.shutdown();
        let r: serde_json::Value = serde_json::from_str(&report.expect("the run completes")).unwrap();
        assert_eq!(r["disconnects"], 0, "{r}");
        assert_eq!(r["missing_at_end"], 0, "{r}");
        assert!(r["delivered_msgs_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
}
