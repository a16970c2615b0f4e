//! The members: one `msgc::client::Client` each, on a tokio task that feeds every event to
//! the member's [`Checker`] and, for a publisher, multicasts at a fixed rate.
//!
//! It owns the clients and their tasks (stopped by [`Member::stop`] or on drop). It never
//! waits for the servers itself and never sends faster than its rate: a publisher that was
//! held back catches up by at most one second's worth and skips the rest (counted), and
//! after a reconnection it waits (bounded) until its view lists the whole group again, so a
//! restarted server's missing routes are not mistaken for loss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use msgc::client::{Client, ClientError, Event};
use msgc::proto::SessionId;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checker::Checker;

/// How long a reconnected publisher waits for a complete view before it sends anyway.
const FULL_VIEW_WAIT: Duration = Duration::from_secs(20);
const TICK: Duration = Duration::from_millis(5);

/// State every member task reads.
#[derive(Default)]
pub struct Shared {
    pub phase: AtomicUsize,
    pub publishing: AtomicBool,
    /// When each publisher session began (its first welcome or reconnection).
    started: Mutex<HashMap<SessionId, Instant>>,
}

impl Shared {
    pub fn began(&self, s: SessionId, at: Instant) {
        self.started.lock().unwrap_or_else(PoisonError::into_inner).insert(s, at);
    }
    pub fn started(&self, s: SessionId) -> Option<Instant> {
        self.started.lock().unwrap_or_else(PoisonError::into_inner).get(&s).copied()
    }
}

#[derive(Clone, Debug)]
pub struct Publish {
    pub group: String,
    pub rate: u64,
    /// Members the group has when everyone is connected.
    pub group_size: usize,
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub label: String,
    pub addr: String,
    pub groups: Vec<String>,
    pub publish: Option<Publish>,
}

pub struct Member {
    pub spec: Spec,
    pub checker: Arc<Mutex<Checker>>,
    /// Multicasts queued.
    pub sent: Arc<AtomicU64>,
    /// Multicasts the rate asked for that were not sent (held back or waiting for a view).
    pub skipped: Arc<AtomicU64>,
    pub notes: Arc<Mutex<Vec<String>>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Member {
    /// Connects (retrying until `deadline`), joins the groups and starts the task.
    pub async fn start(
        spec: Spec,
        shared: Arc<Shared>,
        phases: usize,
        origin: Instant,
        deadline: Duration,
    ) -> Result<Member, String> {
        let end = Instant::now() + deadline;
        let client = loop {
            let attempt = Client::builder()
                .server(spec.addr.clone())
                .name(spec.label.clone())
                .reconnect_interval(Duration::from_millis(500))
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await;
            match attempt {
                Ok(c) => break c,
                Err(e) if Instant::now() > end => {
                    return Err(format!("{} cannot connect to {}: {e}", spec.label, spec.addr))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        for g in &spec.groups {
            client.join(g).await.map_err(|e| format!("{} join {g}: {e}", spec.label))?;
        }
        shared.began(client.session_id(), Instant::now());
        let checker =
            Arc::new(Mutex::new(Checker::new(spec.label.clone(), client.session_id(), phases, origin)));
        let (stop, stop_rx) = watch::channel(false);
        let sent = Arc::new(AtomicU64::new(0));
        let skipped = Arc::new(AtomicU64::new(0));
        let notes = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run(
            client,
            spec.clone(),
            shared,
            checker.clone(),
            sent.clone(),
            skipped.clone(),
            notes.clone(),
            stop_rx,
        ));
        Ok(Member { spec, checker, sent, skipped, notes, stop, task: Some(task) })
    }

    pub fn checker(&self) -> MutexGuard<'_, Checker> {
        self.checker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the task (its client is dropped with it) and waits for it.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mut client: Client,
    spec: Spec,
    shared: Arc<Shared>,
    checker: Arc<Mutex<Checker>>,
    sent: Arc<AtomicU64>,
    skipped: Arc<AtomicU64>,
    notes: Arc<Mutex<Vec<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let note = |s: String| notes.lock().unwrap_or_else(PoisonError::into_inner).push(s);
    let payload = [0x5au8; 32];
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let t0 = Instant::now();
    // Messages the rate asked for so far that were sent or skipped.
    let mut accounted = 0u64;
    let mut ready = true;
    let mut waiting_since: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            event = client.next_event() => {
                let Some(event) = event else { break };
                let now = Instant::now();
                if let Some(p) = &spec.publish {
                    match &event {
                        Event::Disconnected { .. } => ready = false,
                        Event::Reconnected { session, .. } => {
                            shared.began(*session, now);
                            waiting_since = Some(now);
                        }
                        Event::View(v) if waiting_since.is_some() && v.group.as_str() == p.group => {
                            let me = client.session_id();
                            if v.members.len() >= p.group_size && v.members.iter().any(|m| m.session == me) {
                                ready = true;
                                waiting_since = None;
                            }
                        }
                        _ => {}
                    }
                }
                let phase = shared.phase.load(Ordering::Relaxed);
                checker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .handle(event, now, phase, &|s| shared.started(s));
            }
            _ = tick.tick(), if spec.publish.is_some() => {
                let Some(p) = &spec.publish else { continue };
                let now = Instant::now();
                if let Some(since) = waiting_since {
                    if now.duration_since(since) > FULL_VIEW_WAIT {
                        note(format!("{}: no complete view {FULL_VIEW_WAIT:?} after reconnecting; sending anyway", spec.label));
                        ready = true;
                        waiting_since = None;
                    }
                }
                let due = (now.duration_since(t0).as_secs_f64() * p.rate as f64) as u64;
                if !shared.publishing.load(Ordering::Relaxed) {
                    accounted = due;
                    continue;
                }
                if !ready {
                    skipped.fetch_add(due - accounted, Ordering::Relaxed);
                    accounted = due;
                    continue;
                }
                let mut owed = due - accounted;
                if owed > p.rate {
                    skipped.fetch_add(owed - p.rate, Ordering::Relaxed);
                    accounted += owed - p.rate;
                    owed = p.rate;
                }
                while owed > 0 {
                    match client.try_multicast(&p.group, &payload) {
                        Ok(()) => {
                            sent.fetch_add(1, Ordering::Relaxed);
                            accounted += 1;
                            owed -= 1;
                        }
                        Err(ClientError::WouldBlock) => break,
                        Err(e) => {
                            note(format!("{}: multicast failed: {e}", spec.label));
                            break;
                        }
                    }
                }
            }
        }
    }
    // Hand what is queued to the socket before the client goes (bounded by connect_timeout).
    client.close().await;
}
