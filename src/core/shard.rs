//! The state machine of one shard: its connections (clients and peer links), sessions,
//! routing, backlog accounting, flow control and timers. Membership ordering lives in
//! `views.rs`, peer links in `links.rs`.
//!
//! Inputs are `handle_*` calls (bytes read, bytes written, messages from other shards, time);
//! outputs are drained with `take_*`/`poll_*` (writers to wake, sockets to shut down, batches
//! for other shards). Never does I/O and never reads a clock: `now` is always an argument.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use slab::Slab;

use crate::proto::{
    self, Cause, ErrorCode, ErrorFrame, Frame, GroupName, Handshake, McastHeader, Name, NodeTag, ProtoError,
    Role, SessionId, MCAST_FIXED,
};

use super::groups::GroupTable;
use super::inbound::Tracks;
use super::links::PeerConn;
use super::membership::Mesh;
use super::{Arrival, ConnId, ConnMeta, Limits, LinkInfo, Outbox, PeerEntry, ShardMsg, Stats};

/// How long a closing connection may take to flush its last frames before it is cut.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Largest frame accepted before the handshake completes (a HELLO with a 255-byte name,
/// a PEER_PROOF or an ERROR fit), and the read size until then: a connection that has not
/// said who it is costs a few KiB, whatever it announces.
pub const HANDSHAKE_MAX_FRAME: usize = 2048;
/// Largest view id and sequence number accepted from the network: far beyond any real
/// count, and far enough from `u64::MAX` that arithmetic on them never overflows.
pub const MAX_COUNTER: u64 = 1 << 62;

/// What a reader should do after [`ShardCore::handle_input`].
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// All complete frames were handled; read more.
    Read,
    /// The `messages_per_iter` budget is spent; yield, then call `handle_input` again.
    Yield,
    /// The connection is closing: stop reading.
    Close,
}

/// What a writer does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// A batch was taken: write it, then ask again.
    Write,
    /// Nothing queued: wait for a wakeup.
    Wait,
    /// The connection is closed and flushed: shut the socket down and stop.
    Finished,
}

/// Identity of this server, as told to clients and peers in WELCOME/HELLO.
#[derive(Clone, Debug)]
pub struct ServerIdentity {
    pub node_tag: NodeTag,
    pub node_name: Name,
    pub digest: u64,
    /// Start time (ms since the epoch): the longest-running server orders membership.
    pub boot: u64,
    /// Random bytes drawn by the runtime at startup: the key of this server's nonces.
    pub entropy: [u8; 32],
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Accepted; waiting for HELLO.
    Handshake,
    /// We dialed a peer and sent HELLO; waiting for WELCOME from `expect`. With a cluster
    /// secret: `nonces` (the acceptor's challenge, ours) once challenged, `proven` once the
    /// acceptor proved the secret.
    Dialing {
        expect: String,
        nonces: Option<([u8; proto::AUTH_LEN], [u8; proto::AUTH_LEN])>,
        proven: bool,
    },
    /// A peer said HELLO; we sent PEER_CHALLENGE with `nonce` and wait for its PEER_PROOF.
    PeerAuth {
        hello: Box<Handshake>,
        nonce: [u8; proto::AUTH_LEN],
    },
    Client,
    Peer,
    Closing,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub state: State,
    pub session: SessionId,
    pub name: Name,
    pub outbox: Outbox,
    /// Groups this session is a member of (as it asked; views follow from the owner).
    pub joined: HashSet<GroupName>,
    /// Last sequence number sent to each group (at most `max_groups_per_session` groups
    /// remembered; see `handle_mcast_run`).
    pub sent: HashMap<GroupName, u64>,
    /// Some `sent` entry was dropped to stay within bounds: a group not in `sent` may then
    /// start at any sequence number (else the first MCAST to a group must be 1).
    pub forgot_sent: bool,
    pub meta: ConnMeta,
    pub opened: Instant,
    /// Set for peer links.
    pub peer: Option<Box<PeerConn>>,
    pub last_rx: Instant,
    pub last_tx: Instant,
    pub last_progress: Instant,
    pub closing_since: Option<Instant>,
    /// Above the high-water mark, holding publishers back.
    pub hot: bool,
    pub hot_since: Option<Instant>,
    /// Reader and writer tasks still running; the slot is freed when both are done.
    pub tasks: u8,
}

/// One shard's state.
pub struct ShardCore {
    pub(super) id: u16,
    pub(super) nshards: u16,
    pub(super) identity: ServerIdentity,
    pub(super) limits: Limits,
    pub(super) conns: Slab<Conn>,
    /// Sessions on this shard.
    pub(super) sessions: HashMap<SessionId, ConnId>,
    pub(super) groups: GroupTable,
    /// Peer links that are up, on any shard of this server.
    pub(super) links: Vec<LinkInfo>,
    /// The servers allowed to link to us (the `peers` table).
    pub(super) peer_table: Vec<PeerEntry>,
    pub(super) nonce_counter: u64,
    /// Connections in a handshake state.
    pub(super) handshaking: usize,
    pub(super) next_serial: u32,
    pub(super) outgoing: Vec<Vec<ShardMsg>>,
    pub(super) wakeups: Vec<ConnId>,
    pub(super) cut: Vec<ConnId>,
    /// Connections over the high-water mark after the current fan-out (scratch).
    pub(super) crossed: Vec<ConnId>,
    /// Servers to forward the current run to (scratch).
    pub(super) scratch_nodes: Vec<NodeTag>,
    pub(super) queued_bytes: usize,
    pub(super) hot_conns: usize,
    /// Of those, client connections (peer links are not counted: see `links_paused`).
    pub(super) hot_clients: usize,
    /// Pressure as last announced to other shards.
    pub(super) over: bool,
    pub(super) clients_hot: bool,
    pub(super) over_since: Option<Instant>,
    pub(super) remote_over: Vec<bool>,
    pub(super) remote_clients_hot: Vec<bool>,
    /// Bytes of traffic sent to each shard and not yet credited back: publishers pause when
    /// another shard falls behind, before its queues can overshoot their limits.
    pub(super) in_flight: Vec<usize>,
    pub(super) credit_due: Vec<usize>,
    pub(super) resume: bool,
    /// An operator drained the server: new clients are turned away.
    pub(super) draining: bool,
    /// Server membership: topology, configuration, routes.
    pub(super) mesh: Mesh,
    /// What this shard delivered from each remote sender (duplicates, holes).
    pub(super) remote: Tracks,
    /// Remote frames delivered lately, for survivors that lack them (see `survivors.rs`).
    pub(super) delivered: super::survivors::Delivered,
    /// Per server whose link came up lately: until when frames over it may still pass
    /// earlier ones that took a relay (see `inbound.rs`).
    pub(super) link_settles: HashMap<NodeTag, Instant>,
    /// Servers this shard had a link to since it started (one per configured peer).
    pub(super) linked_before: HashSet<NodeTag>,
    /// The ordering server this shard owes its state to: installed while no route to it
    /// existed, so the state goes out as soon as one does.
    pub(super) sync_owed: Option<NodeTag>,
    /// Memberships announced by each server's state sync, until its part completes.
    pub(super) sync_in: HashMap<NodeTag, HashSet<(GroupName, SessionId)>>,
    /// The latest `now` any input brought (for timestamps deep inside routing); None
    /// before the first.
    pub(super) clock: Option<Instant>,
    /// Joins and leaves of this shard's sessions so far (its membership version).
    pub(super) member_ops: u64,
    /// On the ordering server: the newest membership version applied per sending server
    /// and shard, to drop membership messages that a later one overtook on another path.
    pub(super) applied: HashMap<(NodeTag, u16), u64>,
    /// The last view id of groups that emptied (see `views.rs`).
    pub(super) retired: HashMap<GroupName, u64>,
    /// On the ordering server: the state exchange of a new configuration in progress.
    pub(super) sync_wait: Option<super::views::SyncWait>,
    /// The marks received per group (see `flush.rs`).
    pub(super) marks: super::flush::Marks,
    /// A view is being installed: installing another waits until it is done.
    pub(super) installing: bool,
    pub stats: Stats,
}

impl ShardCore {
    pub fn new(id: u16, nshards: u16, identity: ServerIdentity, limits: Limits) -> ShardCore {
        let nshards = nshards.max(1);
        let mesh = Mesh::new(identity.node_tag, identity.boot);
        ShardCore {
            id,
            nshards,
            identity,
            limits,
            conns: Slab::new(),
            sessions: HashMap::new(),
            groups: GroupTable::default(),
            links: Vec::new(),
            peer_table: Vec::new(),
            nonce_counter: 0,
            handshaking: 0,
            next_serial: 0,
            outgoing: (0..nshards).map(|_| Vec::new()).collect(),
            wakeups: Vec::new(),
            cut: Vec::new(),
            crossed: Vec::new(),
            scratch_nodes: Vec::new(),
            queued_bytes: 0,
            hot_conns: 0,
            hot_clients: 0,
            over: false,
            clients_hot: false,
            over_since: None,
            remote_over: vec![false; nshards as usize],
            remote_clients_hot: vec![false; nshards as usize],
            in_flight: vec![0; nshards as usize],
            credit_due: vec![0; nshards as usize],
            resume: false,
            draining: false,
            mesh,
            remote: Tracks::default(),
            delivered: Default::default(),
            link_settles: HashMap::new(),
            linked_before: HashSet::new(),
            sync_in: HashMap::new(),
            sync_owed: None,
            clock: None,
            member_ops: 0,
            applied: HashMap::new(),
            retired: HashMap::new(),
            sync_wait: None,
            marks: Default::default(),
            installing: false,
            stats: Stats::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Applies reloaded limits; they take effect on the next frame, write and tick.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Connections on this shard, open or closing.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Outbound bytes queued on this shard.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Whether readers of this shard should stop reading (memory or a slow receiver, here
    /// or on another shard).
    pub fn reading_paused(&self) -> bool {
        let limit = self.flight_limit();
        self.over || self.remote_over.iter().any(|&o| o) || self.in_flight.iter().any(|&b| b > limit)
    }

    /// Whether the reader of `conn` should wait. Clients wait while publishers are held
    /// back for any reason. Peer links wait only while a client (here or on another shard)
    /// is over its high-water mark or another shard is behind on credit: then TCP pushes
    /// back on the sending server, whose link queue holds its publishers back. A link is
    /// never paused for another link's queue or for memory held in link queues, so two
    /// servers never wait on each other in a cycle. Handshakes are always read.
    pub fn reading_paused_for(&self, conn: ConnId) -> bool {
        match self.conns.get(conn).map(|c| &c.state) {
            Some(State::Client) => self.reading_paused(),
            Some(State::Peer) => self.links_paused(),
            _ => false,
        }
    }

    pub(super) fn links_paused(&self) -> bool {
        let limit = self.flight_limit();
        self.hot_clients > 0
            || self.remote_clients_hot.iter().any(|&h| h)
            || self.in_flight.iter().any(|&b| b > limit)
    }

    /// What is paused now: (client readers, link readers).
    pub(super) fn paused(&self) -> (bool, bool) {
        (self.reading_paused(), self.links_paused())
    }

    /// After a change that can only relax pressure: wake paused readers if some may go on.
    pub(super) fn wake_if_relaxed(&mut self, before: (bool, bool)) {
        let now = self.paused();
        if (before.0 && !now.0) || (before.1 && !now.1) {
            self.resume = true;
        }
    }

    /// True once after reading became allowed again: the runtime wakes its paused readers.
    pub fn take_resume(&mut self) -> bool {
        std::mem::take(&mut self.resume)
    }

    /// The shard that holds a session of this server (serials interleave over shards).
    pub(super) fn shard_of(&self, session: SessionId) -> u16 {
        ((session.0 & 0xffff_ffff) % u64::from(self.nshards)) as u16
    }

    /// A new connection; its reader and writer tasks must each call [`Self::handle_task_done`].
    /// Over `max_connections` or `max_handshakes` it is told why (LimitReached) and closed.
    pub fn handle_accept(&mut self, now: Instant, meta: ConnMeta) -> ConnId {
        self.stats.accepted += 1;
        let over = if self.conns.len() >= self.limits.connections_per_shard(self.nshards) {
            Some(format!("server full: max_connections {} reached", self.limits.max_connections))
        } else if self.handshaking >= self.limits.handshakes_per_shard(self.nshards) {
            Some(format!(
                "too many connections in their handshake (max_handshakes {})",
                self.limits.max_handshakes
            ))
        } else {
            None
        };
        self.handshaking += 1;
        let conn = self.conns.insert(Conn {
            state: State::Handshake,
            session: SessionId::NONE,
            name: Name::default(),
            outbox: Outbox::default(),
            joined: HashSet::new(),
            sent: HashMap::new(),
            forgot_sent: false,
            meta,
            opened: now,
            peer: None,
            last_rx: now,
            last_tx: now,
            last_progress: now,
            closing_since: None,
            hot: false,
            hot_since: None,
            tasks: 2,
        });
        if let Some(why) = over {
            self.stats.limit_refusals += 1;
            tracing::warn!(remote = ?self.conns[conn].meta.remote, "refusing connection: {why}");
            self.fatal(conn, ErrorCode::LimitReached, why, now);
        }
        conn
    }

    /// How the reader of `conn` should size its reads: (bytes per read, largest frame).
    /// Small until the handshake is done, so silent or lying connections cost little.
    pub fn read_budget(&self, conn: ConnId) -> (usize, usize) {
        match self.conns.get(conn).map(|c| &c.state) {
            Some(State::Client) => (self.limits.tcpbuf_size, self.limits.max_frame),
            // A relayed frame adds its header to a frame of up to `max_frame`.
            Some(State::Peer) => (self.limits.tcpbuf_size, self.limits.max_frame + proto::RELAY_HEADER),
            _ => (HANDSHAKE_MAX_FRAME, HANDSHAKE_MAX_FRAME),
        }
    }

    /// Whether `conn` is in one of the handshake states.
    pub(super) fn in_handshake(state: &State) -> bool {
        matches!(state, State::Handshake | State::Dialing { .. } | State::PeerAuth { .. })
    }

    /// Moves `conn` to `state`, keeping the count of handshaking connections.
    pub(super) fn set_state(&mut self, conn: ConnId, state: State) {
        let c = &mut self.conns[conn];
        let was = Self::in_handshake(&c.state);
        let now = Self::in_handshake(&state);
        c.state = state;
        match (was, now) {
            (true, false) => self.handshaking -= 1,
            (false, true) => self.handshaking += 1,
            _ => {}
        }
    }

    /// Handles the complete frames at the front of `buf` (bytes just read from `conn`),
    /// leaving an incomplete frame in place. `buf` is split, never copied.
    pub fn handle_input(&mut self, conn: ConnId, buf: &mut BytesMut, now: Instant) -> Flow {
        self.clock = Some(now);
        let before = buf.len();
        let flow = self.handle_frames(conn, buf, now);
        self.stats.bytes_in += (before - buf.len()) as u64;
        flow
    }

    fn handle_frames(&mut self, conn: ConnId, buf: &mut BytesMut, now: Instant) -> Flow {
        let Some(c) = self.conns.get_mut(conn) else { return Flow::Close };
        if c.state == State::Closing {
            return Flow::Close;
        }
        c.last_rx = now;
        let mut turns = 0;
        loop {
            if turns >= self.limits.messages_per_iter {
                return Flow::Yield;
            }
            let (_, max_frame) = self.read_budget(conn);
            let size = match proto::frame_len(buf, max_frame) {
                Ok(Some(size)) if buf.len() >= size => size,
                Ok(_) => return Flow::Read,
                Err(e) => return self.protocol_error(conn, e, now),
            };
            turns += 1;
            let state = &self.conns[conn].state;
            let peer = *state == State::Peer;
            let len = buf.len();
            let flow = if buf[4] == proto::kind::MCAST && matches!(state, State::Client | State::Peer) {
                self.handle_mcast_run(conn, buf, size, now)
            } else {
                let bytes = buf.split_to(size).freeze();
                match proto::parse_whole(bytes.clone()) {
                    Ok(frame) => self.handle_frame(conn, frame, bytes, now),
                    Err(e) => self.protocol_error(conn, e, now),
                }
            };
            if peer {
                self.note_link_bytes(conn, len - buf.len());
            }
            if flow != Flow::Read {
                return flow;
            }
        }
    }

    /// Takes the longest run of complete, valid MCAST frames to one group from the front of
    /// `buf` (the first is `first_size` bytes) and routes it as one shared slice.
    ///
    /// From a client, every frame must carry its session id and the next sequence number
    /// of that group. From a peer, the sender must be one of that server's sessions.
    fn handle_mcast_run(
        &mut self,
        conn: ConnId,
        buf: &mut BytesMut,
        first_size: usize,
        now: Instant,
    ) -> Flow {
        let max_frame = self.limits.max_frame;
        let c = &mut self.conns[conn];
        let head = match McastHeader::parse(&buf[..first_size]) {
            Ok(h) => h,
            Err(e) => return self.protocol_error(conn, e, now),
        };
        let group_end = MCAST_FIXED + head.group_len;
        let from_peer = c.peer.as_ref().map(|p| p.tag);
        let last_seq =
            if from_peer.is_some() { Some(0) } else { c.sent.get(&buf[MCAST_FIXED..group_end]).copied() };
        let new_group = match last_seq {
            Some(_) => None,
            None => match GroupName::from_bytes(Bytes::copy_from_slice(&buf[MCAST_FIXED..group_end])) {
                Ok(g) => Some(g),
                Err(e) => return self.protocol_error(conn, e, now),
            },
        };
        // The next sequence number this client must send to the group; None: any, as the
        // group's counter was dropped to bound memory (see `forgot_sent`).
        let mut expect = match last_seq {
            Some(last) => Some(last + 1),
            None if c.forgot_sent => None,
            None => Some(1),
        };
        let (mut end, mut count) = (0usize, 0u32);
        let mut violation = None;
        while end < buf.len() {
            let size = match proto::frame_len(&buf[end..], max_frame) {
                Ok(Some(size)) if buf.len() - end >= size => size,
                _ => break, // incomplete or bad: handled on the next turn
            };
            let frame = &buf[end..end + size];
            if frame[4] != proto::kind::MCAST {
                break;
            }
            let h = match McastHeader::parse(frame) {
                Ok(h) => h,
                Err(_) if count > 0 => break,
                Err(e) => return self.protocol_error(conn, e, now),
            };
            if h.group(frame) != &buf[MCAST_FIXED..group_end] {
                break;
            }
            match from_peer {
                Some(tag) if h.sender.node() != tag => {
                    let msg = format!("MCAST from session {} relayed by node {:08x}", h.sender, tag.0);
                    violation = Some((ErrorCode::BadSender, msg));
                    break;
                }
                Some(_) => {}
                None if h.sender != c.session => {
                    let msg = format!("MCAST sender {} is not this session ({})", h.sender, c.session);
                    violation = Some((ErrorCode::BadSender, msg));
                    break;
                }
                None => match expect {
                    Some(e) if h.seq != e => {
                        let msg = format!("MCAST seq {} to this group, expected {e}", h.seq);
                        violation = Some((ErrorCode::BadSequence, msg));
                        break;
                    }
                    _ if h.seq == 0 || h.seq >= MAX_COUNTER => {
                        let msg = format!("MCAST seq {} out of range 1..2^62", h.seq);
                        violation = Some((ErrorCode::BadSequence, msg));
                        break;
                    }
                    _ => expect = Some(h.seq + 1),
                },
            }
            end += size;
            count += 1;
        }
        if count > 0 {
            let run = buf.split_to(end).freeze();
            let name = &run[MCAST_FIXED..group_end];
            let key = match (from_peer, new_group) {
                (Some(_), _) => match self.groups.key(name) {
                    Some(k) => k,
                    // Not routed here (any more): other shards may still deliver it in a
                    // view they have not left yet.
                    None => {
                        let stamp = self.conns[conn].peer.as_ref().map_or(0, |p| p.stream.stamp_in(name));
                        if let Ok(g) = GroupName::from_bytes(Bytes::copy_from_slice(name)) {
                            self.stats.msgs_in += u64::from(count);
                            self.route_shards(g, run, count, Arrival { stamp, ..Arrival::default() });
                        }
                        return self.after_violation(conn, violation, count, now);
                    }
                },
                (None, Some(g)) => {
                    if c.sent.len() >= self.limits.max_groups_per_session {
                        // Bounded memory: forget one group's counter (its next MCAST may
                        // then start anywhere) rather than refuse to send.
                        let victim = c.sent.keys().next().cloned();
                        if let Some(v) = victim {
                            c.sent.remove(&v);
                        }
                        c.forgot_sent = true;
                    }
                    // invariant: count > 0, so some frame set `expect`.
                    c.sent.insert(g.clone(), expect.map_or(0, |e| e - 1));
                    g
                }
                (None, None) => {
                    if let Some(last) = c.sent.get_mut(name) {
                        *last = expect.map_or(0, |e| e - 1);
                    }
                    // invariant: last_seq was Some, so the key is present.
                    c.sent.get_key_value(name).map(|(k, _)| k.clone()).expect("present")
                }
            };
            self.stats.msgs_in += u64::from(count);
            self.stats.runs_in += 1;
            // From a peer: under the view its last PEER_STAMP for the group named. From a
            // client: under the view its run is routed by, which its flush marks.
            let stamp = match &self.conns[conn].peer {
                Some(p) => p.stream.stamp_in(key.as_bytes()),
                None => match self.groups.get_mut(key.as_bytes()) {
                    Some(g) => {
                        // The run is frames head.seq ..= expect - 1 (count > 0 set `expect`).
                        let last = expect.map_or(head.seq, |e| e - 1);
                        g.sent.entry(self.conns[conn].session).or_insert((head.seq, last)).1 = last;
                        g.send_view
                    }
                    None => 0,
                },
            };
            let mut arrival = Arrival { stamp, ..Arrival::default() };
            if from_peer.is_some() {
                arrival.superseded = self.moved_past(key.as_bytes(), &run, arrival);
            } else {
                self.route_links(&key, &run, count);
            }
            self.route_local(key.as_bytes(), &run, count, arrival);
            self.route_shards(key, run, count, arrival);
        }
        self.after_violation(conn, violation, count, now)
    }

    /// A violation after some valid frames is reported on the next turn, when it is first.
    fn after_violation(
        &mut self,
        conn: ConnId,
        v: Option<(ErrorCode, String)>,
        count: u32,
        now: Instant,
    ) -> Flow {
        match v {
            Some((code, msg)) if count == 0 => self.fatal(conn, code, msg, now),
            _ => Flow::Read,
        }
    }

    /// Queues a run to this shard's members of `group`. A run from another server's
    /// senders is first checked for what was delivered already or arrives early.
    pub(super) fn route_local(&mut self, group: &[u8], run: &Bytes, count: u32, arrival: Arrival) {
        let Some(g) = self.groups.get(group) else { return };
        // Also with no members here yet: the view it was sent under may bring some.
        if arrival.stamp > g.view_id {
            self.hold_early(group, run, arrival);
            return;
        }
        if g.local.is_empty() {
            return;
        }
        self.deliver_run(group, run, count, arrival);
        // What came may complete the flush a view waits for.
        if self.groups.get(group).is_some_and(|g| !g.pending.is_empty()) {
            self.try_install(group);
        }
    }

    /// Queues a run to this shard's members of `group`, now (see [`Self::route_local`]).
    pub(super) fn deliver_run(&mut self, group: &[u8], run: &Bytes, count: u32, arrival: Arrival) {
        let me = self.identity.node_tag;
        let remote = McastHeader::parse(run).is_ok_and(|h| h.sender.node() != me);
        let filtered;
        let (run, count) = match remote.then(|| self.accept_remote(group, run, arrival)).flatten() {
            None => (run, count),
            Some((_, 0)) => return,
            Some((f, n)) => {
                filtered = f;
                (&filtered, n)
            }
        };
        let Some((key, g)) = self.groups.key_value_ref(group) else { return };
        // Another shard's run sent under a view before this shard's members came was not
        // for them (the same rule as `accept_remote`'s for other servers' runs).
        if !remote && arrival.stamp != 0 && arrival.stamp < g.since {
            return;
        }
        if remote {
            self.delivered.keep(key.clone(), run.clone(), g.view_id, self.limits.resend_buffer);
        }
        let high_water = self.limits.high_water();
        for &member in &g.local {
            let queued = Self::enqueue(
                &mut self.conns,
                &mut self.wakeups,
                &mut self.queued_bytes,
                &mut self.stats,
                member,
                run.clone(),
                count,
            );
            if queued > high_water {
                self.crossed.push(member);
            }
        }
        self.check_crossed();
    }

    /// Sends a run once to each other shard of this server with members of `group`.
    pub(super) fn route_shards(&mut self, group: GroupName, run: Bytes, count: u32, arrival: Arrival) {
        // A run sent under another view than the one this shard routes by (during a view
        // change, or after this shard forgot the group) may be owed to members that other
        // shards still have, or will have: every other shard gets it, and those without
        // members of that view drop it.
        let (routed, every): (&[u16], bool) = match self.groups.get(group.as_bytes()) {
            Some(g) if arrival.stamp == g.send_view || arrival.stamp == 0 => (&g.remote_shards, false),
            None if arrival.stamp == 0 => return,
            _ => (&[], true),
        };
        let others = (0..self.nshards).filter(|&s| every && s != self.id);
        for s in routed.iter().copied().chain(others) {
            self.in_flight[s as usize] += run.len();
            let msg = ShardMsg::Deliver {
                from: self.id,
                group: group.clone(),
                frames: run.clone(),
                count,
                arrival,
            };
            self.outgoing[s as usize].push(msg);
        }
    }

    /// Sends a run from a local client once to each other server with members of `group`.
    fn route_links(&mut self, group: &GroupName, run: &Bytes, count: u32) {
        let Some(g) = self.groups.get(group.as_bytes()) else { return };
        if g.nodes.is_empty() {
            return;
        }
        let stamp = g.send_view;
        // A reused scratch list: `send_mcast` needs `&mut self` while we walk the nodes.
        let mut nodes = std::mem::take(&mut self.scratch_nodes);
        nodes.extend_from_slice(&g.nodes);
        for &tag in &nodes {
            self.send_mcast(tag, run.clone(), count, stamp);
        }
        nodes.clear();
        self.scratch_nodes = nodes;
    }

    /// Queues `frames` to `conn`; returns how many messages it now has queued. (An
    /// associated fn so callers can hold a borrow of the group table meanwhile.)
    pub(super) fn enqueue(
        conns: &mut Slab<Conn>,
        wakeups: &mut Vec<ConnId>,
        queued: &mut usize,
        stats: &mut Stats,
        conn: ConnId,
        frames: Bytes,
        count: u32,
    ) -> usize {
        let Some(c) = conns.get_mut(conn) else { return 0 };
        if c.state == State::Closing {
            return 0;
        }
        if c.outbox.is_empty() {
            wakeups.push(conn);
        }
        if let Some(p) = c.peer.as_mut() {
            p.stream.sent += frames.len() as u64;
        }
        *queued += frames.len();
        stats.deliveries += u64::from(count);
        c.outbox.push(frames, count);
        c.outbox.messages()
    }

    /// Queues `count` frames in one slice to one connection.
    pub(super) fn send_frames(&mut self, conn: ConnId, frames: Bytes, count: u32) {
        Self::enqueue(
            &mut self.conns,
            &mut self.wakeups,
            &mut self.queued_bytes,
            &mut self.stats,
            conn,
            frames,
            count,
        );
        self.check_backlog(conn);
        self.update_pressure();
    }

    pub(super) fn send_frame(&mut self, conn: ConnId, frame: Bytes) {
        self.send_frames(conn, frame, 1);
    }

    fn handle_frame(&mut self, conn: ConnId, frame: Frame, bytes: Bytes, now: Instant) -> Flow {
        match (&self.conns[conn].state, frame) {
            (State::Handshake, Frame::Hello(h)) => self.handle_hello(conn, h, now),
            (State::Dialing { .. }, Frame::Welcome(w)) => self.handle_welcome(conn, w, now),
            (State::Dialing { .. }, Frame::PeerChallenge(c)) => self.handle_challenge(conn, c, now),
            (State::Dialing { .. }, Frame::PeerProof(p)) => match self.check_acceptor_proof(conn, &p) {
                Ok(()) => Flow::Read,
                Err(why) => self.refuse_peer(conn, why, now),
            },
            (State::PeerAuth { .. }, Frame::PeerProof(p)) => self.handle_dialer_proof(conn, p, now),
            (_, Frame::Error(e)) => {
                let c = &self.conns[conn];
                tracing::info!(session = %c.session, name = %c.name, code = ?e.code, "remote reported: {}", e.message);
                if e.fatal {
                    self.begin_close(conn, Cause::Disconnect, None);
                    return Flow::Close;
                }
                Flow::Read
            }
            (State::Handshake | State::Dialing { .. } | State::PeerAuth { .. }, other) => {
                let msg = format!("expected a handshake first, got {}", other.name());
                self.fatal(conn, ErrorCode::Unexpected, msg, now)
            }
            (_, Frame::Noop) => Flow::Read,
            (State::Client, Frame::Join(g)) => {
                if let Err(why) = self.may_join(conn, &g) {
                    self.stats.limit_refusals += 1;
                    self.send_frame(conn, ErrorFrame::warn(ErrorCode::LimitReached, why).to_bytes());
                    return Flow::Read;
                }
                let c = &mut self.conns[conn];
                if !c.joined.insert(g.clone()) {
                    let f = ErrorFrame::warn(ErrorCode::AlreadyMember, format!("already a member of {g}"));
                    self.send_frame(conn, f.to_bytes());
                    return Flow::Read;
                }
                let member = proto::Member { session: c.session, name: c.name.clone() };
                let version = self.next_member_version();
                self.send_to_owner(
                    &g,
                    ShardMsg::Join { group: g.clone(), member, cause: Cause::Join, via: None, version },
                );
                Flow::Read
            }
            (State::Client, Frame::Leave(g)) => {
                let c = &mut self.conns[conn];
                if !c.joined.remove(&g) {
                    let f = ErrorFrame::warn(ErrorCode::NotMember, format!("not a member of {g}"));
                    self.send_frame(conn, f.to_bytes());
                    return Flow::Read;
                }
                let session = c.session;
                let version = self.next_member_version();
                self.send_to_owner(
                    &g,
                    ShardMsg::Leave { group: g.clone(), session, cause: Cause::Leave, via: None, version },
                );
                Flow::Read
            }
            (State::Peer, frame) => self.handle_peer_frame(conn, frame, bytes, now),
            (_, other) => {
                let msg = format!("{} is not accepted from a client", other.name());
                self.fatal(conn, ErrorCode::Unexpected, msg, now)
            }
        }
    }

    fn handle_hello(&mut self, conn: ConnId, h: Handshake, now: Instant) -> Flow {
        if h.version < 1 {
            let msg = format!("protocol version {} is not supported (this server speaks 1)", h.version);
            return self.fatal(conn, ErrorCode::BadHandshake, msg, now);
        }
        if h.role == Role::Peer {
            return self.handle_peer_hello(conn, h, now);
        }
        if self.draining {
            return self.fatal(conn, ErrorCode::Draining, super::operator::DRAINING.into(), now);
        }
        let session = self.next_session();
        self.set_state(conn, State::Client);
        let c = &mut self.conns[conn];
        c.session = session;
        c.name = h.name;
        self.sessions.insert(session, conn);
        tracing::debug!(%session, name = %self.conns[conn].name, "session started");
        let welcome = self.handshake(session);
        self.send_frame(conn, Frame::Welcome(welcome).to_bytes());
        Flow::Read
    }

    /// A session id not in use on this shard. Serials interleave over shards and wrap after
    /// 2^32 / shards sessions; a serial still held by a live session is skipped.
    fn next_session(&mut self) -> SessionId {
        let per_shard = (u32::MAX - u32::from(self.nshards)) / u32::from(self.nshards);
        loop {
            self.next_serial = if self.next_serial >= per_shard { 1 } else { self.next_serial + 1 };
            let serial = self.next_serial * u32::from(self.nshards) + u32::from(self.id);
            let session = SessionId::new(self.identity.node_tag, serial);
            // Terminates: this shard holds fewer sessions than serials.
            if !self.sessions.contains_key(&session) {
                return session;
            }
        }
    }

    /// Whether client `conn` may join `group`: groups per session, members per group, and
    /// a VIEW that still fits `max_frame` with it.
    fn may_join(&self, conn: ConnId, group: &GroupName) -> Result<(), String> {
        let c = &self.conns[conn];
        let l = &self.limits;
        if c.joined.len() >= l.max_groups_per_session && !c.joined.contains(group) {
            return Err(format!(
                "member of max_groups_per_session ({}) groups already",
                l.max_groups_per_session
            ));
        }
        if let Some(g) = self.groups.get(group.as_bytes()) {
            if g.members >= l.max_group_members {
                return Err(format!("{group} has max_group_members ({}) members", l.max_group_members));
            }
            if g.installed.len() + proto::MEMBER_MAX_LEN > l.max_frame {
                return Err(format!("the view of {group} would not fit max_frame_size ({})", l.max_frame));
            }
        }
        Ok(())
    }

    /// Counts a join or leave of one of this shard's sessions; its membership version.
    fn next_member_version(&mut self) -> u64 {
        self.member_ops += 1;
        proto::MemberVersion::pack(self.id, self.member_ops)
    }

    /// This server's HELLO/WELCOME fields.
    pub(super) fn handshake(&self, id: SessionId) -> Handshake {
        Handshake {
            version: proto::VERSION,
            role: Role::Peer,
            id,
            digest: self.identity.digest,
            node_tag: self.identity.node_tag,
            max_frame: self.limits.max_frame as u32,
            name: self.identity.node_name.clone(),
        }
    }

    pub(super) fn protocol_error(&mut self, conn: ConnId, e: ProtoError, now: Instant) -> Flow {
        self.fatal(conn, e.code(), e.to_string(), now)
    }

    /// Sends a fatal ERROR and closes the connection once it is flushed.
    pub(super) fn fatal(&mut self, conn: ConnId, code: ErrorCode, message: String, now: Instant) -> Flow {
        let c = &self.conns[conn];
        tracing::info!(session = %c.session, name = %c.name, ?code, "closing connection: {message}");
        self.stats.protocol_errors += 1;
        self.begin_close(conn, Cause::Disconnect, Some(ErrorFrame::fatal(code, message).to_bytes()));
        self.conns[conn].closing_since = Some(now);
        Flow::Close
    }

    /// Leaves every group (or takes a link down) and stops accepting traffic for `conn`.
    /// The queue is replaced by `last` (an ERROR to flush) or dropped.
    pub(super) fn begin_close(&mut self, conn: ConnId, cause: Cause, last: Option<Bytes>) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        if c.state == State::Closing {
            return;
        }
        let (bytes, _) = c.outbox.clear();
        self.queued_bytes -= bytes;
        if c.hot {
            c.hot = false;
            self.hot_conns -= 1;
            if c.state == State::Client {
                self.hot_clients -= 1;
            }
        }
        let was = std::mem::replace(&mut c.state, State::Closing);
        if Self::in_handshake(&was) {
            self.handshaking -= 1;
        }
        let c = &mut self.conns[conn];
        let session = c.session;
        let groups: Vec<GroupName> = c.joined.drain().collect();
        let peer = c.peer.take();
        if let Some(frame) = last {
            c.outbox.push(frame.clone(), 1);
            self.queued_bytes += frame.len();
        }
        self.wakeups.push(conn);
        match was {
            State::Client => {
                self.sessions.remove(&session);
                for g in groups {
                    let version = self.next_member_version();
                    let msg = ShardMsg::Leave { group: g.clone(), session, cause, via: None, version };
                    self.send_to_owner(&g, msg);
                }
            }
            State::Peer => {
                if let Some(p) = peer {
                    self.link_lost(*p);
                }
            }
            _ => {}
        }
        self.update_pressure();
    }

    /// The reader saw end of stream or an error: the other side is gone.
    pub fn handle_eof(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        if c.state != State::Closing {
            tracing::debug!(session = %c.session, "connection closed by the other side");
            self.begin_close(conn, Cause::Disconnect, None);
        }
        if let Some(c) = self.conns.get_mut(conn) {
            c.closing_since.get_or_insert(now);
        }
    }

    /// A reader or writer task of `conn` finished; the slot is freed after both have.
    /// Returns true when it was freed (the id may then be reused).
    pub fn handle_task_done(&mut self, conn: ConnId, now: Instant) -> bool {
        self.handle_eof(conn, now);
        let Some(c) = self.conns.get_mut(conn) else { return false };
        c.tasks -= 1;
        if c.tasks > 0 {
            return false;
        }
        let c = self.conns.remove(conn);
        self.queued_bytes -= c.outbox.bytes();
        self.stats.closed += 1;
        self.update_pressure();
        true
    }

    /// What the writer of `conn` should do next.
    pub fn take_batch(&mut self, conn: ConnId, batch: &mut Vec<Bytes>, now: Instant) -> Take {
        let max = self.limits.tcpbuf_size;
        let Some(c) = self.conns.get_mut(conn) else { return Take::Finished };
        let (bytes, _) = c.outbox.take_batch(max, batch);
        if bytes > 0 {
            c.last_tx = now;
            c.last_progress = now;
            self.queued_bytes -= bytes;
            self.stats.bytes_out += bytes as u64;
            if c.hot && c.outbox.messages() < self.limits.low_water() {
                c.hot = false;
                // It kept up: a receiver that drains and refills between two ticks is not
                // stuck, so its stall clock starts over (the tick alone would miss this).
                c.hot_since = None;
                self.hot_conns -= 1;
                if c.state == State::Client {
                    self.hot_clients -= 1;
                }
            }
            self.update_pressure();
            return Take::Write;
        }
        if c.state == State::Closing {
            Take::Finished
        } else {
            Take::Wait
        }
    }

    /// Handles a batch of messages from another shard.
    pub fn handle_shard_msgs(&mut self, msgs: Vec<ShardMsg>, now: Instant) {
        self.clock = Some(now);
        for msg in msgs {
            self.handle_shard_msg(msg);
        }
        // Return credit for the traffic just handled, one message per sending shard.
        for from in 0..self.nshards {
            let bytes = std::mem::take(&mut self.credit_due[from as usize]);
            if bytes > 0 {
                self.outgoing[from as usize].push(ShardMsg::Credit { from: self.id, bytes });
            }
        }
        self.update_pressure();
    }

    pub(super) fn handle_shard_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver { from, group, frames, count, arrival } => {
                self.owe_credit(from, frames.len());
                self.route_local(group.as_bytes(), &frames, count, arrival)
            }
            ShardMsg::Credit { from, bytes } => {
                let before = self.paused();
                if let Some(f) = self.in_flight.get_mut(from as usize) {
                    *f = f.saturating_sub(bytes);
                }
                self.wake_if_relaxed(before);
            }
            ShardMsg::Forward { from, envelope, tag, conn, frames, count } => {
                self.owe_credit(from, frames.len());
                self.forward(envelope, tag, conn, frames, count);
            }
            ShardMsg::Join { group, member, cause, via, version } => {
                self.owner_join(group, member, cause, via, version)
            }
            ShardMsg::Leave { group, session, cause, via, version } => {
                self.owner_leave(group, session, cause, via, version)
            }
            ShardMsg::View { group, frame, view_id, members, leaver } => {
                self.apply_view(group, frame, view_id, &members, leaver)
            }
            ShardMsg::Mark { origin, mark } => self.record_mark(origin, &mark),
            ShardMsg::ViewId { group, view_id, digest } => self.raise_view_id(group, view_id, digest),
            ShardMsg::LinkUp(info) => self.handle_link_up(info),
            ShardMsg::Topo(t) => self.handle_topo(t),
            ShardMsg::Config(c) => self.install_config(c),
            ShardMsg::LinkDown { tag } => self.handle_link_down(tag),
            ShardMsg::SyncDone { tag, shard, shards, version, synced } => {
                self.handle_sync_done(tag, shard, shards, version, &synced)
            }
            ShardMsg::Pressure { from, over, clients_hot } => {
                tracing::trace!(shard = self.id, from, over, clients_hot, "pressure");
                let before = self.paused();
                if let (Some(o), Some(h)) =
                    (self.remote_over.get_mut(from as usize), self.remote_clients_hot.get_mut(from as usize))
                {
                    (*o, *h) = (over, clients_hot);
                }
                self.wake_if_relaxed(before);
            }
        }
    }

    /// Handles `msg` here if `shard` is this one, else queues it for that shard.
    pub(super) fn send_to_shard(&mut self, shard: u16, msg: ShardMsg) {
        if shard == self.id {
            self.handle_shard_msg(msg);
        } else {
            self.outgoing[shard as usize].push(msg);
        }
    }

    /// Sends `msg` to every shard of this server, this one included.
    pub(super) fn broadcast(&mut self, msg: ShardMsg) {
        self.send_to_other_shards(&msg);
        self.handle_shard_msg(msg);
    }

    /// Sends a copy of `msg` to every other shard of this server.
    pub(super) fn send_to_other_shards(&mut self, msg: &ShardMsg) {
        for s in (0..self.nshards).filter(|&s| s != self.id) {
            self.outgoing[s as usize].push(msg.clone());
        }
    }

    /// The server is stopping: every connection gets a fatal ShuttingDown and is closed.
    pub fn handle_shutdown(&mut self, now: Instant) {
        let conns: Vec<ConnId> = self.conns.iter().map(|(k, _)| k).collect();
        for conn in conns {
            let frame = ErrorFrame::fatal(ErrorCode::ShuttingDown, "server is shutting down").to_bytes();
            self.begin_close(conn, Cause::Disconnect, Some(frame));
            if let Some(c) = self.conns.get_mut(conn) {
                c.closing_since.get_or_insert(now);
            }
        }
    }

    /// Writers that have something to write (or must notice a close).
    pub fn take_wakeups(&mut self, into: &mut Vec<ConnId>) {
        into.append(&mut self.wakeups);
    }

    /// Connections whose sockets must be shut down now.
    pub fn take_cuts(&mut self, into: &mut Vec<ConnId>) {
        into.append(&mut self.cut);
    }

    /// Batches for other shards, by shard index; empty batches are skipped.
    pub fn take_outgoing(&mut self) -> impl Iterator<Item = (u16, Vec<ShardMsg>)> + '_ {
        self.outgoing
            .iter_mut()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(i, b)| (i as u16, std::mem::take(b)))
    }

    /// The session id of `conn`, if it is a client that finished its handshake.
    pub fn session_of(&self, conn: ConnId) -> Option<SessionId> {
        self.conns.get(conn).map(|c| c.session).filter(|s| !s.is_none())
    }
}
