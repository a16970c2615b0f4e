//! Subscriber threads: each runs its own current-thread tokio runtime holding several
//! subscriber connections (no work stealing, so each thread's CPU use is its subscribers'),
//! verifies every message it receives into a [`Tally`], and samples its own CPU over the
//! measurement window. How a subscriber connects and reads is [`SubConn`]; a driver that
//! connects another way (the msgc client library, say) is another variant of it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use msgc::proto::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::cpu::{sample_this_thread, ThreadUse};
use crate::fanout::{instant_at, ns, Shared, Window};
use crate::stats::{read_stamp, Tally, PROBE_SEQ};
use crate::targets::{next_item, subscribe_request, Item, Target};

/// How long a read waits before the subscriber looks at the stop flag.
const POLL_STOP: Duration = Duration::from_millis(100);
/// How often a raw msgc subscriber sends a NOOP: well under any sensible `idle_timeout`.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Read buffer: refilled when less than `READ_SPARE` is free.
const READ_BUFFER: usize = 256 * 1024;
const READ_SPARE: usize = 64 * 1024;

/// One subscriber of the run.
#[derive(Clone, Debug)]
pub struct SubSpec {
    pub target: Target,
    pub addr: SocketAddr,
    pub index: usize,
    pub group: String,
    /// Members the group has once every subscriber joined (msgc confirms with that view).
    pub members: usize,
    /// msgc through the client library instead of the raw codec.
    pub lib: bool,
    /// Joins but never reads (overload runs).
    pub stalled: bool,
    /// Publishers in the run (the tally's sender range).
    pub publishers: usize,
}

/// What one subscriber ended with: its tally (if it got as far as the window) and why it
/// stopped early, if it did.
pub struct SubOutcome {
    pub index: usize,
    pub tally: Option<Tally>,
    pub error: Option<String>,
    pub stalled: bool,
}

pub struct SubThreadResult {
    pub outcomes: Vec<SubOutcome>,
    pub cpu: Option<ThreadUse>,
}

/// Starts one subscriber thread for `specs`. Each subscriber reports on `ready` once
/// subscribed (or failed); all wait for the window.
pub fn start_thread(
    n: usize,
    specs: Vec<SubSpec>,
    shared: Arc<Shared>,
    ready: Sender<Result<(), String>>,
    window: watch::Receiver<Option<Window>>,
) -> Result<std::thread::JoinHandle<SubThreadResult>, String> {
    std::thread::Builder::new()
        .name(format!("bench-sub-{n}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(format!("cannot start a subscriber runtime: {e}")));
                    return SubThreadResult { outcomes: Vec::new(), cpu: None };
                }
            };
            rt.block_on(async move {
                let cpu = tokio::spawn(measure_cpu(window.clone()));
                let tasks: Vec<_> = specs
                    .into_iter()
                    .map(|s| tokio::spawn(run(s, ready.clone(), window.clone(), shared.clone())))
                    .collect();
                let mut outcomes = Vec::new();
                for t in tasks {
                    match t.await {
                        Ok(o) => outcomes.push(o),
                        Err(e) => outcomes.push(SubOutcome {
                            index: usize::MAX,
                            tally: None,
                            error: Some(format!("subscriber task failed: {e}")),
                            stalled: false,
                        }),
                    }
                }
                SubThreadResult { outcomes, cpu: cpu.await.ok().flatten() }
            })
        })
        .map_err(|e| format!("cannot start a subscriber thread: {e}"))
}

async fn wait_window(window: &mut watch::Receiver<Option<Window>>) -> Option<Window> {
    loop {
        if let Some(w) = *window.borrow_and_update() {
            return Some(w);
        }
        window.changed().await.ok()?;
    }
}

/// This thread's CPU over the window (the task runs on the thread it measures).
async fn measure_cpu(mut window: watch::Receiver<Option<Window>>) -> Option<ThreadUse> {
    let w = wait_window(&mut window).await?;
    tokio::time::sleep_until(instant_at(w.from).into()).await;
    let a = sample_this_thread(ns())?;
    tokio::time::sleep_until(instant_at(w.until).into()).await;
    let b = sample_this_thread(ns())?;
    ThreadUse::between(a, b)
}

async fn run(
    spec: SubSpec,
    ready: Sender<Result<(), String>>,
    mut window: watch::Receiver<Option<Window>>,
    shared: Arc<Shared>,
) -> SubOutcome {
    let mut outcome = SubOutcome { index: spec.index, tally: None, error: None, stalled: spec.stalled };
    let mut conn = match SubConn::open(&spec).await {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            outcome.error = Some(e);
            return outcome;
        }
    };
    drop(ready);
    if spec.stalled {
        // Hold the connection open without reading until the run ends (bounded by stop).
        let Some(w) = wait_window(&mut window).await else {
            outcome.error = Some("run abandoned".into());
            return outcome;
        };
        outcome.tally = Some(Tally::new(w.from, w.until, spec.publishers));
        while !shared.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return outcome;
    }
    // Reading starts before the window is known: the probes that prove the publishers reach
    // this subscriber arrive first. Until the window is known nothing counts as delivered.
    let mut tally = Tally::new(u64::MAX, u64::MAX, spec.publishers);
    let mut last_read = ns();
    loop {
        let mut count = 0;
        let mut probed = 0;
        let got = conn
            .receive(POLL_STOP, |now, item| match item {
                Item::Message(p) => match read_stamp(p) {
                    Some((_, publisher, PROBE_SEQ)) => probed += u64::from(tally.probe(publisher)),
                    Some((ts, publisher, seq)) => {
                        if tally.measure_from == u64::MAX {
                            // The window is sent before any publisher starts, so it is
                            // known by the time the first real message arrives.
                            if let Some(w) = *window.borrow() {
                                (tally.measure_from, tally.measure_until) = (w.from, w.until);
                            }
                        }
                        tally.record(publisher, seq, ts, now, p.len());
                        count += 1;
                    }
                    None => {}
                },
                Item::Gap => tally.gaps_reported += 1,
                _ => {}
            })
            .await;
        shared.received.fetch_add(count, Ordering::Relaxed);
        shared.probed.fetch_add(probed, Ordering::Relaxed);
        let now = ns();
        if tally.measure_from != u64::MAX {
            tally.max_read_gap_ns = tally.max_read_gap_ns.max(now.saturating_sub(last_read));
        }
        last_read = now;
        match got {
            Ok(Received::Data) => {}
            Ok(Received::Idle) if shared.stop.load(Ordering::Relaxed) => break,
            Ok(Received::Idle) => {}
            Ok(Received::Closed) => {
                outcome.error = Some(format!("subscriber {}: the server closed the connection", spec.index));
                break;
            }
            Err(e) => {
                outcome.error = Some(format!("subscriber {}: {e}", spec.index));
                break;
            }
        }
    }
    outcome.tally = Some(tally);
    outcome
}

pub enum Received {
    Data,
    /// Nothing arrived within the wait.
    Idle,
    Closed,
}

/// A subscriber's connection.
pub enum SubConn {
    /// The load generator's own protocol code ([`crate::targets`]).
    Raw {
        target: Target,
        stream: tokio::net::TcpStream,
        buf: BytesMut,
        /// When this subscriber last sent something (msgc keepalives).
        last_sent: Instant,
    },
    /// The msgc client library (`--client lib`).
    Lib(Box<msgc::client::Client>),
}

impl SubConn {
    /// Connects and subscribes; returns once the subscription is confirmed (msgc: a view
    /// with every subscriber of the group; NATS: the PONG after SUB; Redis: the subscribe
    /// reply).
    pub async fn open(spec: &SubSpec) -> Result<SubConn, String> {
        if spec.lib {
            return Self::open_lib(spec).await;
        }
        let mut stream = tokio::net::TcpStream::connect(spec.addr)
            .await
            .map_err(|e| format!("subscriber cannot connect to {}: {e}", spec.addr))?;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(&subscribe_request(&spec.target, spec.index, &spec.group))
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = SubConn::Raw {
            target: spec.target.clone(),
            stream,
            buf: BytesMut::with_capacity(READ_BUFFER),
            last_sent: Instant::now(),
        };
        let mut done = false;
        while !done {
            let got = conn
                .receive(Duration::from_secs(3600), |_, item| match item {
                    Item::View(n) if n >= spec.members => done = true,
                    Item::Subscribed => done = true,
                    _ => {}
                })
                .await?;
            if let Received::Closed = got {
                return Err(format!("{} closed the connection during setup", spec.addr));
            }
        }
        Ok(conn)
    }

    async fn open_lib(spec: &SubSpec) -> Result<SubConn, String> {
        use msgc::client::{Client, Event};
        let name = format!("sub{}", spec.index);
        let mut c = Client::connect(crate::lib_client::options(spec.addr, name))
            .await
            .map_err(|e| format!("subscriber cannot connect to {}: {e}", spec.addr))?;
        c.join(&spec.group).await.map_err(|e| e.to_string())?;
        loop {
            match c.next_event().await {
                Some(Event::View(v)) if v.members.len() >= spec.members => {
                    return Ok(SubConn::Lib(Box::new(c)))
                }
                Some(_) => {}
                None => return Err(format!("{} closed the connection during setup", spec.addr)),
            }
        }
    }

    /// Waits up to `wait` for bytes, then hands every complete item to `f` with the time
    /// they arrived (one clock read per read, not per message). Answers NATS PINGs.
    pub async fn receive(&mut self, wait: Duration, f: impl FnMut(u64, Item)) -> Result<Received, String> {
        let (target, stream, buf) = match self {
            SubConn::Raw { target, stream, buf, last_sent } => {
                // A msgc server closes a connection that sends nothing for idle_timeout
                // (30 s by default), and a subscriber only reads: it sends NOOPs, as the
                // client library does.
                if matches!(target, Target::Msgc(_)) && last_sent.elapsed() >= KEEPALIVE {
                    stream.write_all(&Frame::Noop.to_bytes()).await.map_err(|e| e.to_string())?;
                    *last_sent = Instant::now();
                }
                (target, stream, buf)
            }
            SubConn::Lib(c) => return receive_lib(c, wait, f).await,
        };
        let mut f = f;
        if buf.capacity() - buf.len() < READ_SPARE {
            buf.reserve(READ_BUFFER);
        }
        let n = match tokio::time::timeout(wait, stream.read_buf(buf)).await {
            Err(_) => return Ok(Received::Idle),
            Ok(Ok(0)) => return Ok(Received::Closed),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.to_string()),
        };
        debug_assert!(n > 0);
        let now = ns();
        let mut pings = 0;
        while let Some(()) = next_item(target, buf, |item| match item {
            Item::Ping => pings += 1,
            other => f(now, other),
        })? {}
        for _ in 0..pings {
            stream.write_all(b"PONG\r\n").await.map_err(|e| e.to_string())?;
        }
        Ok(Received::Data)
    }
}

/// The library's events as items: what is queued is taken without a timer per event; the
/// wait is only for the first. The library reconnects by itself, so a lost connection ends
/// this subscriber's measurement with an error (its tally counts what it received).
async fn receive_lib(
    c: &mut msgc::client::Client,
    wait: Duration,
    mut f: impl FnMut(u64, Item),
) -> Result<Received, String> {
    use msgc::client::Event;
    let first = match tokio::time::timeout(wait, c.next_event()).await {
        Err(_) => return Ok(Received::Idle),
        Ok(None) => return Ok(Received::Closed),
        Ok(Some(e)) => e,
    };
    let now = ns();
    let mut event = Some(first);
    while let Some(e) = event {
        match e {
            Event::Message { payload, .. } => f(now, Item::Message(&payload)),
            Event::Gap(_) => f(now, Item::Gap),
            Event::Disconnected { reason } => return Err(format!("disconnected: {reason}")),
            _ => {}
        }
        event = c.try_next_event().map_err(|e| e.to_string())?;
    }
    Ok(Received::Data)
}
