//! A deterministic simulation of a cluster: several servers, each of several `ShardCore`s,
//! linked by in-memory pipes and driven on virtual time with random joins, leaves and
//! multicasts, and faults (seeded; `SIM_SEED=n` replays one seed, `SIM_SEEDS=n` runs n):
//!
//! - `Fault::Partial`: single links cut (reset) or blackholed (nothing arrives until the
//!   path is back or the servers give the link up), and links flapping, never leaving a
//!   server without a path. Members must lose nothing at all: no gap notice, no hole.
//! - `Fault::Crash`: crashes and restarts, and server 0 cut off from the rest.
//! - `Fault::Severe`: server crashes and restarts, paused servers, whole-side partitions by
//!   reset or blackhole, and single blackholed links, in any combination.
//!
//! Checked always: no duplicates, per-sender order, every loss covered by a gap notice naming
//! it, view ids that only grow at every member, and, with the network healed and quiet,
//! views that converge on exactly the joined members.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use msgc::core::{Flow, Limits, PeerEntry, ServerIdentity, ShardCore, Take};
use msgc::proto::{self, encode_mcast, Frame, GroupName, Handshake, Name, NodeTag, SessionId};

const GROUPS: [&str; 2] = ["alpha", "beta"];
const STEP: Duration = Duration::from_millis(50);

/// A tiny deterministic generator (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One end of a connection: (server, shard, conn id).
type End = (usize, usize, usize);

struct Server {
    name: String,
    shards: Vec<ShardCore>,
    alive: bool,
    /// Stopped (SIGSTOP): reads, writes and timers wait; the others time its links out.
    paused: bool,
    generation: u64,
}

/// Which faults a schedule injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Partial,
    /// Crashes and restarts, and server 0 cut off from the rest by resets only.
    Crash,
    Severe,
}

/// A simulated client: its connection, what it asked for, and what it received.
struct SimClient {
    server: usize,
    end: Option<End>,
    session: SessionId,
    inbox: BytesMut,
    joined: BTreeSet<&'static str>,
    seq: HashMap<&'static str, u64>,
    /// Per (group, sender): last sequence number received.
    last: HashMap<(String, SessionId), u64>,
    /// Per (group, sender): gap notices received, as (first, last) missing.
    gaps: HashMap<(String, SessionId), Vec<(u64, u64)>>,
    /// Gap notices received in all.
    gap_notices: u64,
    /// Every multicast received: (group, sender, seq, the view id of the group installed
    /// when it came).
    delivered: Vec<(String, SessionId, u64, u64)>,
    last_view: HashMap<String, (u64, Vec<SessionId>)>,
    /// Per group, what this session delivered in each view it installed, in order.
    spans: HashMap<String, Vec<Span>>,
}

/// What one member delivered while one view of a group was installed.
struct Span {
    /// The view: its id and sorted members (ids alone may repeat across a partition).
    view: (u64, Vec<SessionId>),
    listed: bool,
    got: BTreeSet<(SessionId, u64)>,
}

struct Sim {
    rng: Rng,
    now: Instant,
    servers: Vec<Server>,
    clients: Vec<SimClient>,
    /// Links between servers: (a end, b end).
    links: Vec<(End, End)>,
    /// Server pairs whose traffic is dropped (a blackhole or partition): no link forms, and
    /// a link that was up carries nothing until the path is back or its servers give up.
    blocked: BTreeSet<(usize, usize)>,
    /// When each pair was last unblocked: a link that was blackholed may still time out for a
    /// while after (its silence already counted), so it is no path yet.
    restored: HashMap<(usize, usize), Instant>,
    trace: Vec<String>,
    violations: Vec<String>,
    fault: Fault,
    /// The spans of sessions that ended (their client reconnected).
    old_spans: Vec<(String, HashMap<String, Vec<Span>>)>,
    /// What every client got: messages and gap notices (the cost of the faults).
    tally: Tally,
}

/// Messages and gap notices the clients of a run got, summed over a sweep.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    messages: u64,
    gaps: u64,
}

fn limits() -> Limits {
    Limits {
        reconnect_interval: Duration::from_millis(100),
        link_timeout: Duration::from_millis(300),
        ..Limits::default()
    }
}

/// Whether the gap notices `gaps` (first, last) together cover every number of
/// `first..=last` (a loss may be reported in pieces, e.g. a flush's listed end and then
/// a hole after it).
fn covers(gaps: &[(u64, u64)], first: u64, last: u64) -> bool {
    let mut sorted = gaps.to_vec();
    sorted.sort();
    let mut next = first; // the lowest number not yet covered
    for (a, b) in sorted {
        if a <= next && b >= next {
            next = b.saturating_add(1);
        }
        if next > last {
            return true;
        }
    }
    next > last
}

#[test]
fn gap_notices_cover_a_loss_together() {
    assert!(covers(&[(7, 8), (9, 9)], 7, 9));
    assert!(covers(&[(9, 9), (5, 8)], 7, 9));
    assert!(!covers(&[(7, 7), (9, 9)], 7, 9));
    assert!(!covers(&[(8, 9)], 7, 9));
    assert!(!covers(&[], 7, 7));
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn new(seed: u64, nservers: usize, nshards: u16, nclients: usize) -> Sim {
        let mut sim = Sim {
            rng: Rng(seed),
            now: Instant::now(),
            servers: Vec::new(),
            clients: Vec::new(),
            links: Vec::new(),
            blocked: BTreeSet::new(),
            restored: HashMap::new(),
            trace: Vec::new(),
            violations: Vec::new(),
            tally: Tally::default(),
            fault: Fault::Severe,
            old_spans: Vec::new(),
        };
        for i in 0..nservers {
            let name = format!("node{i}");
            sim.servers.push(Server { name, shards: Vec::new(), alive: false, paused: false, generation: 0 });
            sim.start_server(i, nshards);
        }
        for c in 0..nclients {
            sim.clients.push(SimClient {
                server: c % nservers,
                end: None,
                session: SessionId::NONE,
                inbox: BytesMut::new(),
                joined: BTreeSet::new(),
                seq: HashMap::new(),
                last: HashMap::new(),
                gaps: HashMap::new(),
                gap_notices: 0,
                delivered: Vec::new(),
                last_view: HashMap::new(),
                spans: HashMap::new(),
            });
            sim.connect_client(c);
        }
        sim
    }

    fn start_server(&mut self, i: usize, nshards: u16) {
        let names: Vec<String> = (0..self.servers.len()).map(|k| format!("node{k}")).collect();
        let s = &mut self.servers[i];
        s.generation += 1;
        let identity = ServerIdentity {
            // A new tag and a later start time at every (re)start.
            node_tag: NodeTag((i as u32 + 1) * 1000 + s.generation as u32),
            node_name: Name::new(&s.name).unwrap(),
            digest: 0,
            boot: s.generation * 1000 + i as u64,
            entropy: [7; 32],
        };
        s.shards = (0..nshards).map(|k| ShardCore::new(k, nshards, identity.clone(), limits())).collect();
        for sh in &mut s.shards {
            sh.set_peers(
                names.iter().map(|n| PeerEntry { name: n.clone(), addrs: vec![[127, 0, 0, 1].into()] }),
            );
        }
        s.alive = true;
        s.paused = false;
    }

    fn connect_client(&mut self, c: usize) {
        let srv = self.clients[c].server;
        if !self.servers[srv].alive || self.servers[srv].paused {
            return;
        }
        let shard = (self.rng.below(self.servers[srv].shards.len() as u64)) as usize;
        let conn = self.servers[srv].shards[shard].handle_accept(self.now, loopback());
        let cl = &mut self.clients[c];
        cl.end = Some((srv, shard, conn));
        cl.inbox.clear();
        let who = format!("c{c} ({})", cl.session);
        cl.session = SessionId::NONE;
        cl.last.clear();
        cl.gaps.clear();
        cl.last_view.clear();
        cl.seq.clear();
        self.old_spans.push((who, std::mem::take(&mut cl.spans)));
        let mut hello = Frame::Hello(Handshake::client(Name::new(&format!("c{c}")).unwrap(), 1 << 20))
            .to_bytes()
            .to_vec();
        // A reconnecting client rejoins its groups.
        for g in cl.joined.iter() {
            hello.extend_from_slice(&Frame::Join(GroupName::new(g).unwrap()).to_bytes());
        }
        self.input((srv, shard, conn), &hello);
    }

    fn input(&mut self, (s, sh, conn): End, bytes: &[u8]) {
        if !self.servers[s].alive {
            return;
        }
        // Random chunking: TCP delivers bytes, not frames.
        let mut at = 0;
        let mut buf = BytesMut::new();
        while at < bytes.len() {
            let n = (1 + self.rng.below(64) as usize).min(bytes.len() - at);
            buf.extend_from_slice(&bytes[at..at + n]);
            at += n;
            let core = &mut self.servers[s].shards[sh];
            while core.handle_input(conn, &mut buf, self.now) == Flow::Yield {}
        }
    }

    /// Bytes written by the server to `end` so far, and whether it has closed it.
    fn output(&mut self, (s, sh, conn): End) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut batch = Vec::new();
        if !self.servers[s].alive {
            return (out, false);
        }
        loop {
            match self.servers[s].shards[sh].take_batch(conn, &mut batch, self.now) {
                Take::Write => {
                    for b in batch.drain(..) {
                        out.extend_from_slice(&b);
                    }
                }
                Take::Wait => return (out, false),
                Take::Finished => return (out, true),
            }
        }
    }

    fn close_end(&mut self, (s, sh, conn): End) {
        if self.servers[s].alive {
            let core = &mut self.servers[s].shards[sh];
            core.handle_task_done(conn, self.now);
            core.handle_task_done(conn, self.now);
        }
    }

    /// Moves everything in flight until nothing moves.
    fn pump(&mut self) {
        for _ in 0..200 {
            let mut moved = false;
            for s in 0..self.servers.len() {
                if !self.servers[s].alive {
                    continue;
                }
                let out: Vec<(u16, Vec<msgc::core::ShardMsg>)> = self.servers[s]
                    .shards
                    .iter_mut()
                    .flat_map(|sh| sh.take_outgoing().collect::<Vec<_>>())
                    .collect();
                for (to, batch) in out {
                    moved = true;
                    self.servers[s].shards[to as usize].handle_shard_msgs(batch, self.now);
                }
            }
            let mut closed = Vec::new();
            for i in 0..self.links.len() {
                let (a, b) = self.links[i];
                // A paused server, or a blackhole: bytes wait in the queues (TCP retransmits
                // them once the path is back), and are lost if a server gives the link up.
                if self.servers[a.0].paused
                    || self.servers[b.0].paused
                    || self.blocked.contains(&pair(a.0, b.0))
                {
                    continue;
                }
                for (from, to) in [(a, b), (b, a)] {
                    let (bytes, finished) = self.output(from);
                    if finished {
                        closed.push(i);
                    }
                    if !bytes.is_empty() {
                        moved = true;
                        self.input(to, &bytes);
                    }
                }
            }
            // A server closed a link (timed out, refused): the other end sees it closed.
            closed.dedup();
            for &i in closed.iter().rev() {
                moved = true;
                let (a, b) = self.links.remove(i);
                self.close_end(a);
                self.close_end(b);
            }
            for c in 0..self.clients.len() {
                if let Some(end) = self.clients[c].end {
                    if self.servers[end.0].paused {
                        continue;
                    }
                    let (bytes, _) = self.output(end);
                    if !bytes.is_empty() {
                        moved = true;
                        self.clients[c].inbox.extend_from_slice(&bytes);
                        self.client_receive(c);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        self.violations.push("traffic did not settle".into());
    }

    fn client_receive(&mut self, c: usize) {
        loop {
            let frame = match proto::decode(&mut self.clients[c].inbox, 1 << 20) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    self.violations.push(format!("client {c}: undecodable bytes: {e}"));
                    return;
                }
            };
            let cl = &mut self.clients[c];
            match frame {
                Frame::Welcome(w) => cl.session = w.id,
                Frame::Mcast(m) => {
                    tracing::debug!("SIM c{c} got {} from {} seq {}", m.group, m.sender, m.seq);
                    self.tally.messages += 1;
                    let key = (m.group.to_string(), m.sender);
                    let view = cl.last_view.get(&key.0).map_or(0, |v| v.0);
                    cl.delivered.push((key.0.clone(), m.sender, m.seq, view));
                    if let Some(span) = cl.spans.get_mut(&key.0).and_then(|s| s.last_mut()) {
                        span.got.insert((m.sender, m.seq));
                    }
                    let last = cl.last.insert(key.clone(), m.seq);
                    if let Some(last) = last {
                        if m.seq <= last {
                            self.violations.push(format!(
                                "client {c}: {} seq {} after {last} (duplicate or reorder)",
                                m.group, m.seq
                            ));
                        } else if m.seq > last + 1 {
                            let covered =
                                cl.gaps.get(&key).is_some_and(|gaps| covers(gaps, last + 1, m.seq - 1));
                            if self.fault == Fault::Partial {
                                self.violations.push(format!(
                                    "client {c}: lost {} from {}: {} -> {} while a path existed",
                                    m.group, m.sender, last, m.seq
                                ));
                            } else if !covered {
                                self.violations.push(format!(
                                    "client {c}: silent loss {} from {}: {} -> {}",
                                    m.group, m.sender, last, m.seq
                                ));
                            }
                        }
                    }
                }
                Frame::Gap(g) => {
                    tracing::debug!("SIM c{c} gap {} from {} seq {}..{}", g.group, g.sender, g.first, g.last);
                    self.tally.gaps += 1;
                    cl.gap_notices += 1;
                    cl.gaps.entry((g.group.to_string(), g.sender)).or_default().push((g.first, g.last));
                    if self.fault == Fault::Partial {
                        self.violations.push(format!(
                            "client {c}: gap notice {}..{} of {} from {} while a path existed",
                            g.first, g.last, g.group, g.sender
                        ));
                    }
                }
                Frame::View(v) => {
                    tracing::debug!(
                        "SIM c{c} view {} {} {:?} {:?}",
                        v.group,
                        v.view_id,
                        v.cause,
                        v.members.iter().map(|m| m.session.to_string()).collect::<Vec<_>>()
                    );
                    let g = v.group.to_string();
                    if let Some((id, _)) = cl.last_view.get(&g) {
                        if v.view_id <= *id {
                            self.violations.push(format!("client {c}: view {} of {g} after {id}", v.view_id));
                        }
                    }
                    // A new membership starts sequence tracking afresh; a leave ends it.
                    let me = cl.session;
                    // Joining, leaving or being dropped: sequence tracking starts afresh.
                    let listed = v.members.iter().any(|m| m.session == me);
                    let mut members: Vec<SessionId> = v.members.iter().map(|m| m.session).collect();
                    members.sort();
                    let span = Span { view: (v.view_id, members), listed, got: BTreeSet::new() };
                    cl.spans.entry(g.clone()).or_default().push(span);
                    if v.subject == me || !listed {
                        cl.last.retain(|(grp, _), _| *grp != g);
                    }
                    if v.subject == me && v.cause == proto::Cause::Leave {
                        cl.last_view.remove(&g);
                    } else {
                        cl.last_view.insert(g, (v.view_id, v.members.iter().map(|m| m.session).collect()));
                    }
                }
                _ => {}
            }
        }
    }

    /// Forms the links that should exist (both servers up, not blocked, none yet).
    fn dial(&mut self) {
        let n = self.servers.len();
        for i in 0..n {
            for j in (i + 1)..n {
                let up = [i, j].iter().all(|&k| self.servers[k].alive && !self.servers[k].paused)
                    && !self.blocked.contains(&(i, j));
                let exists = self.links.iter().any(|(a, b)| (a.0, b.0) == (i, j) || (a.0, b.0) == (j, i));
                if up && !exists {
                    // node_i < node_j: i dials j.
                    let dsh = self.rng.below(self.servers[i].shards.len() as u64) as usize;
                    let ash = self.rng.below(self.servers[j].shards.len() as u64) as usize;
                    let name = self.servers[j].name.clone();
                    let d = self.servers[i].shards[dsh].handle_dial(&name, self.now, loopback());
                    let a = self.servers[j].shards[ash].handle_accept(self.now, loopback());
                    self.links.push(((i, dsh, d), (j, ash, a)));
                }
            }
        }
    }

    fn cut(&mut self, k: usize) {
        let (a, b) = self.links.remove(k);
        self.trace.push(format!("cut link {}-{}", a.0, b.0));
        self.close_end(a);
        self.close_end(b);
    }

    fn crash(&mut self, s: usize) {
        self.trace.push(format!("crash server {s}"));
        let doomed: Vec<usize> = (0..self.links.len())
            .rev()
            .filter(|&k| self.links[k].0 .0 == s || self.links[k].1 .0 == s)
            .collect();
        for k in doomed {
            let (a, b) = self.links.remove(k);
            let other = if a.0 == s { b } else { a };
            self.close_end(other);
        }
        self.servers[s].alive = false;
        for c in 0..self.clients.len() {
            if self.clients[c].server == s {
                self.clients[c].end = None;
            }
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        tracing::debug!("SIM ---- step; events: {:?}", self.trace.last());
        let mut cut_ends = Vec::new();
        for (si, s) in self.servers.iter_mut().enumerate().filter(|(_, s)| s.alive && !s.paused) {
            for (shi, sh) in s.shards.iter_mut().enumerate() {
                sh.handle_timeout(self.now);
                let mut cuts = Vec::new();
                sh.take_cuts(&mut cuts);
                cut_ends.extend(cuts.into_iter().map(|c| (si, shi, c)));
            }
        }
        // A socket shut down by its server: the link is gone at both ends.
        for end in cut_ends {
            if let Some(k) = self.links.iter().position(|(a, b)| *a == end || *b == end) {
                let (a, b) = self.links.remove(k);
                self.close_end(a);
                self.close_end(b);
            }
        }
        self.dial();
        self.pump();
        self.check_epochs();
    }

    /// No two running servers have installed different configurations (ordering server and
    /// members) under one epoch at once, or a view id would name two. (A restarted server
    /// shares its earlier run's epoch slot; in the simulation start times are small, so it
    /// may number a configuration like that run did once no running server holds it. A
    /// real server's first epoch is its start time in ms, above its earlier run's.)
    fn check_epochs(&mut self) {
        let mut named: HashMap<u64, (NodeTag, &BTreeSet<NodeTag>)> = HashMap::new();
        let mut twice = Vec::new();
        for s in self.servers.iter().filter(|s| s.alive) {
            for c in s.shards.iter().map(|sh| sh.config()) {
                let first = *named.entry(c.epoch).or_insert((c.leader, &c.members));
                let this = (c.leader, &c.members);
                if first != this {
                    twice.push(format!("epoch {} names two configurations: {first:?} and {this:?}", c.epoch));
                }
            }
        }
        for v in twice {
            if !self.violations.contains(&v) {
                self.violations.push(v);
            }
        }
    }

    /// Whether every server reaches every other over the links that are up and not blocked,
    /// with `extra` blocked too.
    fn connected_without(&self, extra: (usize, usize)) -> bool {
        let n = self.servers.len();
        let settling = limits().link_timeout * 2;
        let recent =
            |p: &(usize, usize)| self.restored.get(p).is_some_and(|&t| self.now.duration_since(t) < settling);
        let up: BTreeSet<(usize, usize)> =
            self.links.iter().map(|(a, b)| pair(a.0, b.0)).filter(|p| !recent(p)).collect();
        let mut seen = vec![false; n];
        let mut stack = vec![0];
        seen[0] = true;
        while let Some(x) = stack.pop() {
            for (y, seen_y) in seen.iter_mut().enumerate() {
                let p = pair(x, y);
                if !*seen_y && x != y && p != extra && up.contains(&p) && !self.blocked.contains(&p) {
                    *seen_y = true;
                    stack.push(y);
                }
            }
        }
        seen.iter().all(|&s| s)
    }

    /// Blocks traffic between servers `a` and `b`; `reset`: their link is closed at once
    /// (both ends notice), else it carries nothing until the servers notice (a blackhole).
    fn block(&mut self, a: usize, b: usize, reset: bool) {
        self.blocked.insert(pair(a, b));
        if reset {
            if let Some(k) = self.links.iter().position(|(x, y)| pair(x.0, y.0) == pair(a, b)) {
                self.cut(k);
            }
        }
    }

    fn random_action(&mut self) {
        let c = self.rng.below(self.clients.len() as u64) as usize;
        let g = GROUPS[self.rng.below(GROUPS.len() as u64) as usize];
        let action = self.rng.below(100);
        if action < 85 && self.servers[self.clients[c].server].paused {
            return; // its client waits too
        }
        match action {
            0..=24 => {
                if self.clients[c].joined.insert(g) {
                    if let Some(end) = self.clients[c].end {
                        self.trace.push(format!("c{c} join {g}"));
                        self.input(end, &Frame::Join(GroupName::new(g).unwrap()).to_bytes());
                    }
                }
            }
            25..=34 => {
                if self.clients[c].joined.remove(g) {
                    if let Some(end) = self.clients[c].end {
                        self.trace.push(format!("c{c} leave {g}"));
                        self.input(end, &Frame::Leave(GroupName::new(g).unwrap()).to_bytes());
                    }
                }
            }
            35..=84 => {
                if let (Some(end), false) = (self.clients[c].end, self.clients[c].session.is_none()) {
                    let cl = &mut self.clients[c];
                    let seq = cl.seq.entry(g).or_insert(0);
                    *seq += 1;
                    let mut b = BytesMut::new();
                    encode_mcast(&mut b, cl.session, *seq, &GroupName::new(g).unwrap(), b"x");
                    tracing::debug!("SIM c{c} {} sends {g} seq {seq}", cl.session);
                    self.input(end, &b);
                }
            }
            85..=94 if self.fault == Fault::Partial => self.partial_fault(),
            85..=97 if self.fault == Fault::Severe => self.severe_fault(),
            85..=97 if self.fault == Fault::Crash => self.crash_fault(),
            _ => {
                if !self.blocked.is_empty() {
                    self.trace.push("heal".into());
                    for p in std::mem::take(&mut self.blocked) {
                        self.restored.insert(p, self.now);
                    }
                }
            }
        }
    }

    /// A single link cut, blackholed or flapping, never leaving a server without a path;
    /// or a blocked link healed.
    fn partial_fault(&mut self) {
        let n = self.servers.len();
        let (a, b) = (self.rng.below(n as u64) as usize, self.rng.below(n as u64) as usize);
        if a == b {
            return;
        }
        let p = pair(a, b);
        if self.blocked.contains(&p) {
            self.trace.push(format!("restore {}-{}", p.0, p.1));
            self.blocked.remove(&p);
            self.restored.insert(p, self.now);
        } else if self.connected_without(p) {
            let reset = self.rng.below(2) == 0;
            self.trace.push(format!("{} {}-{}", if reset { "cut" } else { "blackhole" }, p.0, p.1));
            self.block(a, b, reset);
        }
    }

    /// Starts a crashed server again (as many shards as the others) and reconnects its
    /// clients.
    fn restart(&mut self, s: usize) {
        self.trace.push(format!("restart server {s}"));
        let nshards = self.servers[(s + 1) % self.servers.len()].shards.len().max(1) as u16;
        self.start_server(s, nshards);
        for c in 0..self.clients.len() {
            if self.clients[c].server == s {
                self.connect_client(c);
            }
        }
    }

    /// A crash, a restart, or server 0 cut off from the others (links reset).
    fn crash_fault(&mut self) {
        let n = self.servers.len();
        let s = self.rng.below(n as u64) as usize;
        match self.rng.below(3) {
            0 if self.servers[s].alive => self.crash(s),
            1 if !self.servers[s].alive => self.restart(s),
            2 => {
                self.trace.push("partition 0 | rest".into());
                for b in 1..n {
                    self.block(0, b, true);
                }
            }
            _ => {}
        }
    }

    /// Crashes, restarts, pauses, resumes, whole-side partitions and blackholed links.
    fn severe_fault(&mut self) {
        let n = self.servers.len();
        let s = self.rng.below(n as u64) as usize;
        match self.rng.below(6) {
            0 if self.servers[s].alive => self.crash(s),
            1 if !self.servers[s].alive => self.restart(s),
            2 if self.servers[s].alive => {
                let paused = !self.servers[s].paused;
                self.trace.push(format!("{} server {s}", if paused { "pause" } else { "resume" }));
                self.servers[s].paused = paused;
            }
            3 | 4 => {
                // Split into two sides: by reset (both sides notice at once) or blackhole.
                let reset = self.rng.below(2) == 0;
                let side: Vec<bool> = (0..n).map(|_| self.rng.below(2) == 0).collect();
                self.trace
                    .push(format!("partition {side:?} by {}", if reset { "reset" } else { "blackhole" }));
                for a in 0..n {
                    for b in (a + 1)..n {
                        if side[a] != side[b] {
                            self.block(a, b, reset);
                        }
                    }
                }
            }
            _ => {
                let t = self.rng.below(n as u64) as usize;
                if s != t {
                    self.trace.push(format!("blackhole {s}-{t}"));
                    self.block(s, t, false);
                }
            }
        }
    }

    /// Virtual synchrony: members that installed the same two views one after the other
    /// delivered the same messages in the first.
    fn check_synchrony(&mut self) {
        type Key = (String, (u64, Vec<SessionId>), (u64, Vec<SessionId>));
        type Got<'a> = (String, &'a BTreeSet<(SessionId, u64)>);
        let mut seen: HashMap<Key, Got> = HashMap::new();
        let old = self.old_spans.iter().map(|(who, spans)| (who.clone(), spans));
        let current =
            self.clients.iter().enumerate().map(|(i, c)| (format!("c{i} ({})", c.session), &c.spans));
        for (who, spans) in old.chain(current) {
            for (group, list) in spans {
                for pair in list.windows(2) {
                    let (a, b) = (&pair[0], &pair[1]);
                    if !a.listed || !b.listed {
                        continue;
                    }
                    let key = (group.clone(), a.view.clone(), b.view.clone());
                    match seen.get(&key) {
                        None => {
                            seen.insert(key, (who.clone(), &a.got));
                        }
                        Some((other, got)) if *got != &a.got => {
                            let only_here: Vec<_> = a.got.difference(got).take(3).collect();
                            let only_there: Vec<_> = got.difference(&a.got).take(3).collect();
                            self.violations.push(format!(
                                "sessions {who} and {other} moved from view {} to {} of {group} having \
                                 delivered different messages in the first: only {who} got {only_here:?}, \
                                 only {other} got {only_there:?}",
                                a.view.0, b.view.0
                            ));
                            return;
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }

    /// Heals everything, lets it settle, and checks that views converged.
    fn settle_and_check(&mut self, nshards: u16) {
        self.blocked.clear();
        for s in 0..self.servers.len() {
            self.servers[s].paused = false;
            if !self.servers[s].alive {
                self.start_server(s, nshards);
                for c in 0..self.clients.len() {
                    if self.clients[c].server == s {
                        self.connect_client(c);
                    }
                }
            }
        }
        for _ in 0..60 {
            self.step();
        }
        for g in GROUPS {
            let joined: BTreeSet<SessionId> =
                self.clients.iter().filter(|c| c.joined.contains(g)).map(|c| c.session).collect();
            let mut seen: Option<(u64, Vec<SessionId>)> = None;
            for (i, c) in self.clients.iter().enumerate().filter(|(_, c)| c.joined.contains(g)) {
                let Some(v) = c.last_view.get(g) else {
                    self.violations.push(format!("client {i} in {g} never got a view"));
                    continue;
                };
                let members: BTreeSet<SessionId> = v.1.iter().copied().collect();
                if members != joined {
                    self.violations.push(format!(
                        "client {i}: view {} of {g} lists {members:?}, joined are {joined:?}",
                        v.0
                    ));
                }
                match &seen {
                    Some(s) if s != v => {
                        self.violations.push(format!("client {i}: view {v:?} of {g} differs from {s:?}"))
                    }
                    _ => seen = Some(v.clone()),
                }
            }
        }
    }
}

/// Runs one random schedule with the given faults.
fn run_seed(seed: u64, fault: Fault, synchrony: bool) -> Result<Tally, String> {
    let mut r = Rng(seed);
    let nservers = 3 + r.below(3) as usize;
    let nshards = 1 + r.below(3) as u16;
    let mut sim = Sim::new(seed, nservers, nshards, 6);
    sim.fault = fault;
    for _ in 0..20 {
        sim.step();
    }
    for _ in 0..100 {
        for _ in 0..3 {
            sim.random_action();
        }
        sim.step();
    }
    sim.settle_and_check(nshards);
    if synchrony {
        sim.check_synchrony();
    }
    if sim.violations.is_empty() {
        Ok(sim.tally)
    } else {
        let trace = sim.trace.iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("; ");
        Err(format!(
            "seed {seed} {fault:?} ({nservers} servers x {nshards} shards): {}\nlast events: {trace}",
            sim.violations.join("\n")
        ))
    }
}

/// Seeds run by `cargo test`: `SIM_SEEDS` (default 2000) of the partial and severe mixes and a
/// quarter as many of the crash mix, from `SIM_FIRST` (default 0). Every seed must keep every
/// property; the failing ones are listed with their violations and last events, and
/// `SIM_SEED=n` replays one with every mix (`SIM_LOG=msgc=debug,sim=debug` traces it).
#[test]
fn random_schedules_keep_the_contract() {
    let var = |k: &str| std::env::var(k).ok().map(|v| v.parse::<u64>().expect("a number"));
    let synchrony = std::env::var("SIM_VSYNC").is_ok();
    if let Some(seed) = var("SIM_SEED") {
        if std::env::var("SIM_LOG").is_ok() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(std::env::var("SIM_LOG").unwrap_or_default())
                .without_time()
                .try_init();
        }
        for fault in [Fault::Partial, Fault::Crash, Fault::Severe] {
            if let Err(e) = run_seed(seed, fault, synchrony) {
                panic!("{e}");
            }
        }
        return;
    }
    let first = var("SIM_FIRST").unwrap_or(0);
    let seeds = var("SIM_SEEDS").unwrap_or(2000);
    let mut failures = Vec::new();
    for (fault, count) in [(Fault::Partial, seeds), (Fault::Severe, seeds), (Fault::Crash, seeds / 4)] {
        let mut broken = 0;
        let mut sum = Tally::default();
        for seed in first..first + count {
            match run_seed(seed, fault, synchrony) {
                Ok(t) => {
                    sum.messages += t.messages;
                    sum.gaps += t.gaps;
                }
                Err(e) => {
                    broken += 1;
                    failures.push(e);
                }
            }
        }
        println!(
            "{fault:?}: {broken} of {count} seeds broke a property; the others' clients got {} messages \
             and {} gap notices",
            sum.messages, sum.gaps
        );
    }
    let shown = failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n\n");
    assert!(
        failures.is_empty(),
        "{} seeds failed (first 10 below); replay with SIM_SEED=n:\n{shown}",
        failures.len()
    );
}

/// Schedules that broke virtual synchrony until a fix, checked for it on every run
/// so that they stay fixed (the full sweep with `SIM_VSYNC=1` does not pass yet: see the
/// README's limits): frames held at a skipped view (61, 199), resent frames of a view from
/// before a partition (223), a flush that waited on a server that joined after its view
/// was ordered (272; again once links resend on coming up, by a cut-off server's own
/// resend), a survivor that got none of a lost sender's frames (303), a resend that came
/// after its server's loss had ended the sender's track (925), a frame stuck behind a paused
/// relay that a later one overtook on a new link (2880), a server lost while a flush waited
/// for its marks, whose senders' last frames only some survivors had delivered, and no
/// later view dropped members of its (281, 2116), a survivor that answered what it had of
/// a lost server and then delivered a late frame of it in the same view (1989), two shards
/// of one server of which one delivered a cut-off server's frame that came after the
/// other had marked the view leaving that server out (severe 1438, crash 744), survivors
/// that marked a view while they still reached, through a relay, a server its
/// configuration had left out, and listed nothing of that server's senders (459; 157 passed
/// with the same fix), a frame of a server's sender that was no member, delivered by one
/// survivor only, of a server the next configuration left out (64; 1472 passed with the
/// same fix), a survivor that answered nothing of a sender whose frames it held behind a
/// hole, and delivered them once others passed on the hole (735; 1232 and 3422 passed with
/// the same fix), a server cut off alone whose mark, with its senders' last numbers, found
/// no path and was dropped, so that its senders' last frames reached only some survivors
/// (2489, 3956, 383, 1491), a server whose mark chain broke at a mark dropped for want of a
/// path (256), a survivor that answered about a view it had yet to install and then
/// delivered in it a lost server's frame the asker moved on without (1262), a survivor
/// that held a lost server's frame on a track a relayed frame started, listed nothing of
/// it, and delivered it with the next view (2690), a survivor that held a lost server's
/// frames for a view it had yet to install when it marked the next one, listed nothing of
/// them, and delivered them in that view (260, 5942, 6221), a server cut off from the one
/// ordering views that installed, apart, a view adding a member of its own, having
/// delivered less than the other side (744, 2149, 4243, 4952; 3964 with the fix before),
/// a server cut off alone that dropped a group it had no members of, and with it the ends
/// its senders owed the others (2335, 3552, 6167; 4762, 6252, 6488, 6721, 6877, 9054,
/// 11175 passed with the same fix), a paused server that, back, installed a view ordered
/// while it was cut off as if it had moved on with the others, without a frame dropped with
/// its links (1534), two shards of one server of which only one had asked the survivors
/// about a lost server's senders (and so delivered no more of them) while the other
/// delivered what came (1964, 7689), a server that lost a second server after it had asked
/// about the first, in the same configuration, and did not ask again (4692), survivors
/// that each ended a lost server's sender (no member, so no view followed) when their wait
/// ran out, one after a frame the other never had (9988), a view that drops a member of a
/// server cut off from the others, installed apart on both sides, each with what reached
/// it, and shown there to the members it kept (11374), and others found with them.
#[test]
fn fixed_synchrony_breaks_stay_fixed() {
    let severe = [
        29, 61, 64, 157, 199, 223, 256, 260, 272, 281, 303, 355, 374, 383, 459, 735, 744, 925, 1232, 1262,
        1438, 1472, 1491, 1534, 1964, 1989, 2116, 2149, 2335, 2489, 2553, 2690, 2880, 3422, 3552, 3956, 3964,
        4243, 4692, 4762, 4952, 5942, 6167, 6221, 6252, 6488, 6721, 6877, 7689, 9054, 9988, 11175, 11374,
    ];
    let crash = [744];
    let seeds = severe.map(|s| (s, Fault::Severe)).into_iter().chain(crash.map(|s| (s, Fault::Crash)));
    for (seed, fault) in seeds {
        if let Err(e) = run_seed(seed, fault, true) {
            panic!("{e}");
        }
    }
}

/// Schedules beyond the default sweep that broke a property until a fix: a tentative track
/// whose hold time ended while frames after its first were still on a blackholed link, and
/// which then reported them lost although a path existed (partial 6124).
#[test]
fn fixed_breaks_beyond_the_sweep_stay_fixed() {
    for (seed, fault) in [(6124, Fault::Partial)] {
        if let Err(e) = run_seed(seed, fault, false) {
            panic!("{e}");
        }
    }
}

#[test]
fn the_next_oldest_server_takes_over_when_the_ordering_one_dies() {
    let mut sim = Sim::new(7, 3, 2, 6);
    for _ in 0..20 {
        sim.step();
    }
    for c in 0..6 {
        sim.clients[c].joined.insert("alpha");
        let end = sim.clients[c].end.unwrap();
        sim.input(end, &Frame::Join(GroupName::new("alpha").unwrap()).to_bytes());
    }
    for _ in 0..10 {
        sim.step();
    }
    // node0 started first: it orders membership. Kill it; node1 continues.
    sim.crash(0);
    for _ in 0..10 {
        sim.step();
    }
    let survivors: Vec<usize> = (0..6).filter(|c| sim.clients[*c].server != 0).collect();
    let first = sim.clients[survivors[0]].last_view.get("alpha").cloned().expect("a view");
    assert_eq!(first.1.len(), survivors.len(), "the dead server's members left the view");
    for &c in &survivors {
        assert_eq!(sim.clients[c].last_view.get("alpha"), Some(&first));
    }
    sim.settle_and_check(2);
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
}

/// Connection metadata for a simulated connection from the loopback address.
fn loopback() -> msgc::core::ConnMeta {
    msgc::core::ConnMeta { remote: Some(([127, 0, 0, 1], 40000).into()), tls: None }
}

/// A frame sent to a member before it left, held up in a blackholed link's queue while it
/// left and joined again, arrives after the rejoin: it was sent under an older view, so it
/// is not delivered, and the sender's next frame (after numbers sent while this server had
/// no members) is no hole.
#[test]
fn a_frame_older_than_a_rejoin_is_not_delivered_and_makes_no_gap() {
    let mut sim = Sim::new(11, 3, 1, 3);
    sim.fault = Fault::Partial;
    for _ in 0..20 {
        sim.step();
    }
    // Client 1 (on node1) receives; client 2 (on node2) sends. node0 orders views.
    let (receiver, sender) = (1, 2);
    let join = |sim: &mut Sim, c: usize, join: bool| {
        let g = GroupName::new("alpha").unwrap();
        let frame = if join { Frame::Join(g) } else { Frame::Leave(g) };
        if join {
            sim.clients[c].joined.insert("alpha");
        } else {
            sim.clients[c].joined.remove("alpha");
        }
        sim.input(sim.clients[c].end.unwrap(), &frame.to_bytes());
        sim.step();
    };
    let send = |sim: &mut Sim, seq: u64| {
        let mut b = BytesMut::new();
        let session = sim.clients[sender].session;
        encode_mcast(&mut b, session, seq, &GroupName::new("alpha").unwrap(), b"x");
        sim.input(sim.clients[sender].end.unwrap(), &b);
        sim.step();
    };
    join(&mut sim, receiver, true);
    send(&mut sim, 1);
    let key = ("alpha".to_string(), sim.clients[sender].session);
    assert_eq!(sim.clients[receiver].last.get(&key), Some(&1));
    // node1-node2 carries nothing for less than link_timeout: the link stays up.
    sim.block(1, 2, false);
    send(&mut sim, 2); // waits in the link's queue
    join(&mut sim, receiver, false);
    send(&mut sim, 3); // for no one on node1
    join(&mut sim, receiver, true);
    send(&mut sim, 4); // waits behind 2
    sim.blocked.clear();
    for _ in 0..20 {
        sim.step();
    }
    let c = &sim.clients[receiver];
    assert_eq!(c.last.get(&key), Some(&4), "the rejoined member gets what was sent to it");
    assert_eq!(c.gap_notices, 0, "no gap notice: nothing the member was owed is missing");
    sim.settle_and_check(1);
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
}

/// A multicast sent under a view its sender's server installed before the receiver's
/// server did reaches the receiver's members after that view, not before.
#[test]
fn a_message_comes_after_the_view_it_was_sent_in() {
    let mut sim = Sim::new(12, 3, 1, 3);
    sim.fault = Fault::Partial;
    for _ in 0..20 {
        sim.step();
    }
    let alpha = GroupName::new("alpha").unwrap();
    // Clients 1 (node1) and 2 (node2) are members; node0 orders views.
    for c in [1, 2] {
        sim.clients[c].joined.insert("alpha");
        sim.input(sim.clients[c].end.unwrap(), &Frame::Join(alpha.clone()).to_bytes());
        sim.step();
    }
    // node0-node1 carries nothing for a moment (less than link_timeout): client 0's join
    // view reaches node2, which routes and stamps by it at once (its members get it after
    // the flush), but waits on its way to node1.
    let before = sim.clients[1].last_view.get("alpha").map(|v| v.0).expect("node1 has a view");
    sim.block(0, 1, false);
    sim.clients[0].joined.insert("alpha");
    sim.input(sim.clients[0].end.unwrap(), &Frame::Join(alpha.clone()).to_bytes());
    sim.step();
    assert_eq!(
        sim.clients[1].last_view.get("alpha").map(|v| v.0),
        Some(before),
        "node1 does not have it yet"
    );
    // Client 2 sends under the new view; its frame reaches node1 first.
    let mut b = BytesMut::new();
    encode_mcast(&mut b, sim.clients[2].session, 1, &alpha, b"x");
    sim.input(sim.clients[2].end.unwrap(), &b);
    sim.step();
    sim.blocked.clear();
    for _ in 0..5 {
        sim.step();
    }
    let (sender, newcomer) = (sim.clients[2].session, sim.clients[0].session);
    let joined =
        sim.clients[1].spans["alpha"].iter().find(|s| s.view.1.contains(&newcomer)).map(|s| s.view.0);
    assert!(joined.is_some_and(|j| j > before), "node1 installed the view with client 0");
    let got: Vec<u64> = sim.clients[1].delivered.iter().filter(|d| d.1 == sender).map(|d| d.3).collect();
    assert_eq!(got, joined.into_iter().collect::<Vec<_>>(), "delivered once, after the view it was sent in");
    sim.settle_and_check(1);
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
}
