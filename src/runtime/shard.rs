//! One shard thread: a pinned runtime (tokio-uring, or tokio on epoll) that owns its
//! connections for life and drives its `ShardCore` from socket reads, writer completions,
//! other shards and a timer.
//!
//! Shares nothing with other shards: they exchange `Inbound` messages over channels. Every
//! core call is followed by [`ShardRt::flush`], which carries out what the core asked for.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;

use crate::core::{ConnId, ConnMeta, Limits, ServerIdentity, ShardCore, ShardMsg, Stats};

use super::stream::{Backend, Stream};
use super::tls::ServerTls;
use super::Control;
use super::{conn, links, tls};

/// How long a stopping shard waits for its connections to flush their goodbyes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What a shard's inbox carries.
pub enum Inbound {
    /// A batch from another shard.
    Shard(Vec<ShardMsg>),
    /// A newly accepted connection, now owned by this shard.
    Conn(std::net::TcpStream),
    Control(Control),
}

pub struct ShardSetup {
    pub id: u16,
    pub nshards: u16,
    pub identity: ServerIdentity,
    pub limits: Limits,
    pub peers: Vec<UnboundedSender<Inbound>>,
    pub inbox: UnboundedReceiver<Inbound>,
    pub core: Option<core_affinity::CoreId>,
    pub stats: Arc<Mutex<Vec<Stats>>>,
    pub backend: Backend,
    pub tls: Option<Arc<ServerTls>>,
    /// Told once whether the shard's runtime started (a server never runs short a shard).
    pub started: std::sync::mpsc::Sender<Result<(), String>>,
}

/// The socket side of one connection.
pub struct ConnIo {
    pub stream: Rc<Stream>,
    pub wake: Rc<Notify>,
    /// Notified when the connection is gone (a dialer waits on it to redial).
    pub gone: Option<Rc<Notify>>,
}

/// Per-shard runtime state, shared by this shard's tasks (single thread, `Rc`).
pub struct ShardRt {
    pub id: u16,
    pub nshards: u16,
    pub backend: Backend,
    /// The TLS state new connections and dials use (replaced on reload).
    pub tls: RefCell<Option<Arc<ServerTls>>>,
    /// Accepted connections still in their TLS handshake (not yet known to the core).
    pub pre_core: Cell<usize>,
    pub core: RefCell<ShardCore>,
    pub io: RefCell<Vec<Option<ConnIo>>>,
    /// Paused readers wait here for the core to allow reading again.
    pub resume: Notify,
    peers: Vec<UnboundedSender<Inbound>>,
    scratch: RefCell<Vec<ConnId>>,
    inbox: RefCell<UnboundedReceiver<Inbound>>,
    dialers: RefCell<links::Dialers>,
    node_name: String,
    stopping: Cell<bool>,
    /// Wakes the main loop when a task other than it handled the shutdown message.
    stopped: Notify,
    draining: Cell<bool>,
}

impl ShardRt {
    /// Carries out what the core asked for, then handles whatever other shards sent
    /// meanwhile.
    ///
    /// Draining the inbox here, from whichever task is running, matters: tokio's
    /// current-thread scheduler looks at wakeups from other threads only every few dozen
    /// task polls, so a busy shard would otherwise see other shards' deliveries and
    /// pressure signals late, and its queues would overshoot their limits.
    pub fn flush(self: &Rc<Self>) {
        self.do_outputs();
        if self.draining.replace(true) {
            return;
        }
        loop {
            let next = self.inbox.try_borrow_mut().ok().and_then(|mut rx| rx.try_recv().ok());
            let Some(msg) = next else { break };
            self.handle_inbound(msg);
            self.do_outputs();
        }
        self.draining.set(false);
    }

    fn handle_inbound(self: &Rc<Self>, msg: Inbound) {
        match msg {
            Inbound::Shard(batch) => self.core.borrow_mut().handle_shard_msgs(batch, Instant::now()),
            Inbound::Conn(std) if !self.stopping.get() => {
                let within = self.core.borrow().limits().handshake_timeout;
                tls::accepted(self, std, self.tls.borrow().clone(), within)
            }
            Inbound::Conn(_) => {}
            Inbound::Control(Control::Reload(limits)) => {
                tracing::info!(shard = self.id, "applying reloaded limits");
                self.core.borrow_mut().set_limits(limits);
            }
            Inbound::Control(Control::Tls(tls)) => {
                tracing::info!(shard = self.id, "applying reloaded TLS settings");
                // The core requires certificate-checked peers exactly when peer TLS is on.
                let peer_tls = tls.as_ref().is_some_and(|t| t.peer_tls());
                let mut limits = self.core.borrow().limits().clone();
                if limits.peer_tls != peer_tls {
                    limits.peer_tls = peer_tls;
                    self.core.borrow_mut().set_limits(limits);
                }
                *self.tls.borrow_mut() = tls;
            }
            Inbound::Control(Control::Peers(peers, entries)) => {
                let mut dialers = self.dialers.borrow_mut();
                links::apply_peers(self, &mut dialers, &self.node_name, &peers, entries);
            }
            Inbound::Control(Control::Report { sessions, reply }) => {
                let mut report = self.core.borrow().report(sessions, Instant::now());
                report.cpu_seconds = super::inspect::thread_cpu_seconds();
                let _ = reply.send(report);
            }
            Inbound::Control(Control::Drain) => {
                self.core.borrow_mut().handle_drain(Instant::now());
            }
            Inbound::Control(Control::Shutdown) => {
                links::stop_all(&mut self.dialers.borrow_mut());
                self.core.borrow_mut().handle_shutdown(Instant::now());
                self.stopping.set(true);
                self.stopped.notify_one();
            }
        }
    }

    /// Carries out what the core asked for: wake writers, cut sockets, send batches to
    /// other shards, release paused readers.
    fn do_outputs(&self) {
        let mut core = self.core.borrow_mut();
        let mut ids = self.scratch.borrow_mut();
        core.take_wakeups(&mut ids);
        {
            let io = self.io.borrow();
            for &id in ids.iter() {
                if let Some(Some(c)) = io.get(id) {
                    c.wake.notify_one();
                }
            }
            ids.clear();
            core.take_cuts(&mut ids);
            for &id in ids.iter() {
                if let Some(Some(c)) = io.get(id) {
                    c.stream.cut();
                    c.wake.notify_one();
                }
            }
            ids.clear();
        }
        for (shard, batch) in core.take_outgoing() {
            let _ = self.peers[shard as usize].send(Inbound::Shard(batch));
        }
        if core.take_resume() {
            self.resume.notify_waiters();
        }
    }

    /// A reader or writer of `id` ended; the last one frees the socket slot.
    pub fn task_done(self: &Rc<Self>, id: ConnId) {
        let freed = self.core.borrow_mut().handle_task_done(id, Instant::now());
        if freed {
            let io = self.io.borrow_mut().get_mut(id).and_then(|slot| slot.take());
            if let Some(gone) = io.and_then(|c| c.gone) {
                gone.notify_one();
            }
        }
        self.flush();
    }

    /// Whether the shard is shutting down (new connections are not taken any more).
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Waits until the core allows reading `id` (publishers are held back under pressure).
    pub async fn wait_for_reading(&self, id: ConnId) {
        loop {
            let notified = self.resume.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.core.borrow().reading_paused_for(id) {
                return;
            }
            notified.await;
        }
    }
}

/// The shard thread's body.
pub fn run(setup: ShardSetup) {
    if let Some(core) = setup.core {
        if !core_affinity::set_for_current(core) {
            tracing::debug!(shard = setup.id, "could not pin to core {:?}", core.id);
        }
    }
    // Both runtimes run the shard's tasks with `spawn_local` on this one thread
    // (tokio_uring::spawn is spawn_local underneath).
    let started = setup.started.clone();
    let failed = |e: std::io::Error| {
        let _ =
            started.send(Err(format!("shard {}: cannot start its {} runtime: {e}", setup.id, setup.backend)));
    };
    match setup.backend {
        Backend::Uring => match tokio_uring::Runtime::new(&tokio_uring::builder()) {
            Ok(rt) => rt.block_on(serve(setup)),
            Err(e) => failed(e),
        },
        Backend::Epoll => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => tokio::task::LocalSet::new().block_on(&rt, serve(setup)),
            Err(e) => failed(e),
        },
    }
}

async fn serve(setup: ShardSetup) {
    let ShardSetup { id, nshards, identity, limits, peers, inbox, stats, backend, tls, started, .. } = setup;
    let _ = started.send(Ok(()));
    let node_name = identity.node_name.as_str().to_string();
    let shard = Rc::new(ShardRt {
        id,
        nshards,
        backend,
        tls: RefCell::new(tls),
        pre_core: Cell::new(0),
        core: RefCell::new(ShardCore::new(id, nshards, identity, limits)),
        io: RefCell::new(Vec::new()),
        resume: Notify::new(),
        peers,
        scratch: RefCell::new(Vec::new()),
        inbox: RefCell::new(inbox),
        dialers: RefCell::new(links::Dialers::default()),
        node_name,
        stopping: Cell::new(false),
        stopped: Notify::new(),
        draining: Cell::new(false),
    });
    let timer = tokio::task::spawn_local(tick(shard.clone(), stats.clone()));
    // When the shard is idle, this task is what notices messages from other shards.
    while !shard.stopping.get() {
        let next = tokio::select! {
            msg = std::future::poll_fn(|cx| shard.inbox.borrow_mut().poll_recv(cx)) => msg,
            () = shard.stopped.notified() => break,
        };
        let Some(msg) = next else { break };
        // Handled as the drain loop would, so nothing re-enters it meanwhile.
        shard.draining.set(true);
        shard.handle_inbound(msg);
        shard.draining.set(false);
        shard.flush();
    }
    // Let writers flush their ShuttingDown frames, bounded in time.
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while shard.core.borrow().connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for c in shard.io.borrow().iter().flatten() {
        c.stream.cut();
        c.wake.notify_one();
    }
    timer.abort();
    publish_stats(&shard, &stats);
}

/// Takes ownership of a connected socket, ready for its first frame (any TLS handshake is
/// done): an accepted one, or one dialed to peer `dialed` (whose `gone` is notified when the
/// connection ends). Registers it with the core and starts its reader and writer.
pub fn adopt(shard: &Rc<ShardRt>, stream: Stream, meta: ConnMeta, dialed: Option<(&str, Rc<Notify>)>) {
    let stream = Rc::new(stream);
    let now = Instant::now();
    let (id, gone) = match dialed {
        Some((peer, gone)) => (shard.core.borrow_mut().handle_dial(peer, now, meta), Some(gone)),
        None => (shard.core.borrow_mut().handle_accept(now, meta), None),
    };
    let wake = Rc::new(Notify::new());
    {
        let mut io = shard.io.borrow_mut();
        if io.len() <= id {
            io.resize_with(id + 1, || None);
        }
        io[id] = Some(ConnIo { stream: stream.clone(), wake: wake.clone(), gone });
    }
    tokio::task::spawn_local(conn::reader(shard.clone(), id, stream.clone()));
    tokio::task::spawn_local(conn::writer(shard.clone(), id, stream, wake));
    shard.flush();
}

/// Applies the socket options every connection gets (the acceptor does this too; a dialed
/// socket gets them here).
pub fn tune_socket(socket: &impl std::os::fd::AsFd, tcpbuf: usize) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_nodelay(true);
    let _ = sock.set_send_buffer_size(tcpbuf);
    let _ = sock.set_recv_buffer_size(tcpbuf);
}

/// Drives the core's timers and publishes counters.
async fn tick(shard: Rc<ShardRt>, stats: Arc<Mutex<Vec<Stats>>>) {
    // A fail point for the tests that a panicking shard ends the server (never set in
    // production): MSGC_FAILPOINT=shard-panic makes shard 0 panic at its first tick.
    let fail = shard.id == 0 && std::env::var_os("MSGC_FAILPOINT").is_some_and(|v| v == "shard-panic");
    loop {
        let now = Instant::now();
        let next = shard.core.borrow().poll_timeout(now);
        tokio::time::sleep_until(next.into()).await;
        assert!(!fail, "fail point shard-panic");
        shard.core.borrow_mut().handle_timeout(Instant::now());
        shard.flush();
        publish_stats(&shard, &stats);
    }
}

fn publish_stats(shard: &ShardRt, stats: &Mutex<Vec<Stats>>) {
    if let Ok(mut all) = stats.lock() {
        if let Some(slot) = all.get_mut(shard.id as usize) {
            *slot = shard.core.borrow().stats;
        }
    }
}
