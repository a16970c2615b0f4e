//! The state machine of one shard: its connections, sessions, group replicas, routing,
//! backlog accounting and timers.
//!
//! Inputs are `handle_*` calls (bytes read, bytes written, messages from other shards, time);
//! outputs are drained with `take_*`/`poll_*` (writers to wake, sockets to shut down, batches
//! for other shards). Never does I/O and never reads a clock: `now` is always an argument.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use slab::Slab;

use crate::proto::{
    self, Cause, ErrorCode, ErrorFrame, Frame, GroupName, Handshake, McastHeader, Name, NodeTag,
    ProtoError, Role, SessionId, View, MCAST_FIXED,
};

use super::groups::{owner_of, GroupTable, MemberInfo};
use super::{ConnId, Limits, Outbox, ShardMsg, Stats};

/// How long a closing connection may take to flush its last frames before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

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

/// Identity of the server, as told to clients in WELCOME.
#[derive(Clone, Debug)]
pub struct ServerIdentity {
    pub node_tag: NodeTag,
    pub node_name: Name,
    pub digest: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Handshake,
    Client,
    Closing,
}

#[derive(Debug)]
struct Conn {
    state: State,
    session: SessionId,
    name: Name,
    outbox: Outbox,
    /// Groups this session is a member of (as it asked; views follow from the owner).
    joined: HashSet<GroupName>,
    /// Last sequence number sent to each group.
    sent: HashMap<GroupName, u64>,
    last_rx: Instant,
    last_tx: Instant,
    last_progress: Instant,
    closing_since: Option<Instant>,
    /// Above the high-water mark, holding publishers back.
    hot: bool,
    /// Reader and writer tasks still running; the slot is freed when both are done.
    tasks: u8,
}

/// One shard's state.
pub struct ShardCore {
    id: u16,
    nshards: u16,
    identity: ServerIdentity,
    limits: Limits,
    conns: Slab<Conn>,
    sessions: HashMap<SessionId, ConnId>,
    groups: GroupTable,
    next_serial: u32,
    outgoing: Vec<Vec<ShardMsg>>,
    wakeups: Vec<ConnId>,
    cut: Vec<ConnId>,
    /// Connections over the high-water mark after the current fan-out (scratch).
    crossed: Vec<ConnId>,
    queued_bytes: usize,
    hot_conns: usize,
    /// Pressure as last announced to other shards.
    over: bool,
    over_since: Option<Instant>,
    remote_over: Vec<bool>,
    resume: bool,
    shutting_down: bool,
    pub stats: Stats,
}

impl ShardCore {
    pub fn new(id: u16, nshards: u16, identity: ServerIdentity, limits: Limits) -> ShardCore {
        ShardCore {
            id,
            nshards: nshards.max(1),
            identity,
            limits,
            conns: Slab::new(),
            sessions: HashMap::new(),
            groups: GroupTable::default(),
            next_serial: 0,
            outgoing: (0..nshards.max(1)).map(|_| Vec::new()).collect(),
            wakeups: Vec::new(),
            cut: Vec::new(),
            crossed: Vec::new(),
            queued_bytes: 0,
            hot_conns: 0,
            over: false,
            over_since: None,
            remote_over: vec![false; nshards.max(1) as usize],
            resume: false,
            shutting_down: false,
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
        self.over || self.remote_over.iter().any(|&o| o)
    }

    /// True once after reading became allowed again: the runtime wakes its paused readers.
    pub fn take_resume(&mut self) -> bool {
        std::mem::take(&mut self.resume)
    }

    /// A new connection; its reader and writer tasks must each call [`Self::handle_task_done`].
    pub fn handle_accept(&mut self, now: Instant) -> ConnId {
        self.stats.accepted += 1;
        self.conns.insert(Conn {
            state: State::Handshake,
            session: SessionId::NONE,
            name: Name::default(),
            outbox: Outbox::default(),
            joined: HashSet::new(),
            sent: HashMap::new(),
            last_rx: now,
            last_tx: now,
            last_progress: now,
            closing_since: None,
            hot: false,
            tasks: 2,
        })
    }

    /// Handles the complete frames at the front of `buf` (bytes just read from `conn`),
    /// leaving an incomplete frame in place. `buf` is split, never copied.
    pub fn handle_input(&mut self, conn: ConnId, buf: &mut BytesMut, now: Instant) -> Flow {
        let Some(c) = self.conns.get_mut(conn) else {
            return Flow::Close;
        };
        if c.state == State::Closing {
            return Flow::Close;
        }
        c.last_rx = now;
        let mut turns = 0;
        loop {
            if turns >= self.limits.messages_per_iter {
                return Flow::Yield;
            }
            let size = match proto::frame_len(buf, self.limits.max_frame) {
                Ok(Some(size)) if buf.len() >= size => size,
                Ok(_) => return Flow::Read,
                Err(e) => return self.protocol_error(conn, e, now),
            };
            turns += 1;
            let is_client = self.conns[conn].state == State::Client;
            let flow = if buf[4] == proto::kind::MCAST && is_client {
                self.handle_mcast_run(conn, buf, size, now)
            } else {
                match proto::decode(buf, self.limits.max_frame) {
                    Ok(Some(frame)) => self.handle_frame(conn, frame, now),
                    Ok(None) => Flow::Read, // unreachable: the frame is complete
                    Err(e) => self.protocol_error(conn, e, now),
                }
            };
            if flow != Flow::Read {
                return flow;
            }
        }
    }

    /// Takes the longest run of complete, valid MCAST frames to one group from the front of
    /// `buf` (the first is `first_size` bytes) and routes it as one shared slice.
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
        let last_seq = c.sent.get(&buf[MCAST_FIXED..group_end]).copied();
        let group = match last_seq {
            Some(_) => None,
            None => {
                match GroupName::from_bytes(Bytes::copy_from_slice(&buf[MCAST_FIXED..group_end])) {
                    Ok(g) => Some(g),
                    Err(e) => return self.protocol_error(conn, e, now),
                }
            }
        };
        let mut expect = last_seq.unwrap_or(0) + 1;
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
            if h.sender != c.session {
                violation = Some((
                    ErrorCode::BadSender,
                    format!(
                        "MCAST sender {} is not this session ({})",
                        h.sender, c.session
                    ),
                ));
                break;
            }
            if h.seq != expect {
                violation = Some((
                    ErrorCode::BadSequence,
                    format!("MCAST seq {} to this group, expected {expect}", h.seq),
                ));
                break;
            }
            expect += 1;
            end += size;
            count += 1;
        }
        if count > 0 {
            let run = buf.split_to(end).freeze();
            let key = match group {
                Some(g) => {
                    c.sent.insert(g.clone(), expect - 1);
                    g
                }
                None => {
                    let name = &run[MCAST_FIXED..group_end];
                    if let Some(last) = c.sent.get_mut(name) {
                        *last = expect - 1;
                    }
                    // invariant: last_seq was Some, so the key is present.
                    c.sent
                        .get_key_value(name)
                        .map(|(k, _)| k.clone())
                        .expect("present")
                }
            };
            self.stats.msgs_in += count as u64;
            self.stats.runs_in += 1;
            self.route_local(key.as_bytes(), &run, count);
            self.route_remote(key, run, count);
        }
        match violation {
            Some((code, msg)) if count == 0 => self.fatal(conn, code, msg, now),
            _ => Flow::Read,
        }
    }

    /// Queues a run to this shard's members of `group`.
    fn route_local(&mut self, group: &[u8], run: &Bytes, count: u32) {
        let Some(g) = self.groups.get(group) else {
            return;
        };
        let high_water = self.limits.high_water();
        for &member in &g.local {
            if Self::enqueue(
                &mut self.conns,
                &mut self.wakeups,
                &mut self.queued_bytes,
                &mut self.stats,
                member,
                run.clone(),
                count,
            ) > high_water
            {
                self.crossed.push(member);
            }
        }
        self.check_crossed();
    }

    /// Sends a run once to each other shard with members of `group`.
    fn route_remote(&mut self, group: GroupName, run: Bytes, count: u32) {
        let Some(g) = self.groups.get(group.as_bytes()) else {
            return;
        };
        for &s in &g.remote_shards {
            self.outgoing[s as usize].push(ShardMsg::Deliver {
                group: group.clone(),
                frames: run.clone(),
                count,
            });
        }
    }

    /// Queues `frames` to `conn`; returns how many messages it now has queued. (An
    /// associated fn so callers can hold a borrow of the group table meanwhile.)
    fn enqueue(
        conns: &mut Slab<Conn>,
        wakeups: &mut Vec<ConnId>,
        queued: &mut usize,
        stats: &mut Stats,
        conn: ConnId,
        frames: Bytes,
        count: u32,
    ) -> usize {
        let Some(c) = conns.get_mut(conn) else {
            return 0;
        };
        if c.state == State::Closing {
            return 0;
        }
        if c.outbox.is_empty() {
            wakeups.push(conn);
        }
        *queued += frames.len();
        stats.deliveries += u64::from(count);
        c.outbox.push(frames, count);
        c.outbox.messages()
    }

    /// Applies backlog limits to the connections whose queues crossed the high-water mark
    /// during a fan-out, then re-evaluates pressure.
    fn check_crossed(&mut self) {
        while let Some(conn) = self.crossed.pop() {
            self.check_backlog(conn);
        }
        self.update_pressure();
    }

    /// Queues one frame to one connection.
    fn send_frame(&mut self, conn: ConnId, frame: Bytes) {
        Self::enqueue(
            &mut self.conns,
            &mut self.wakeups,
            &mut self.queued_bytes,
            &mut self.stats,
            conn,
            frame,
            1,
        );
        self.check_backlog(conn);
        self.update_pressure();
    }

    /// Applies `max_backlog` and the high-water mark after `conn`'s queue grew.
    fn check_backlog(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let queued = c.outbox.messages();
        if queued > self.limits.max_backlog {
            let why = format!(
                "{queued} messages queued, over max_backlog {}",
                self.limits.max_backlog
            );
            self.kill_stuck(conn, why);
        } else if !c.hot && queued > self.limits.high_water() {
            c.hot = true;
            self.hot_conns += 1;
        }
    }

    /// Kills a connection that cannot keep up: its queue is dropped and its socket cut.
    fn kill_stuck(&mut self, conn: ConnId, why: String) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.state == State::Closing {
            return;
        }
        tracing::warn!(session = %c.session, name = %c.name, "killing stuck connection: {why}");
        self.stats.killed_stuck += 1;
        self.begin_close(conn, Cause::Disconnect, None);
        self.cut.push(conn);
    }

    fn handle_frame(&mut self, conn: ConnId, frame: Frame, now: Instant) -> Flow {
        let state = &self.conns[conn].state;
        match (state, frame) {
            (State::Handshake, Frame::Hello(h)) => self.handle_hello(conn, h, now),
            (State::Handshake, other) => self.fatal(
                conn,
                ErrorCode::Unexpected,
                format!("expected HELLO first, got {}", other.name()),
                now,
            ),
            (_, Frame::Join(g)) => {
                let c = &mut self.conns[conn];
                if !c.joined.insert(g.clone()) {
                    let f = ErrorFrame::warn(
                        ErrorCode::AlreadyMember,
                        format!("already a member of {g}"),
                    );
                    self.send_frame(conn, f.to_bytes());
                    return Flow::Read;
                }
                let member = MemberInfo {
                    session: c.session,
                    name: c.name.clone(),
                    shard: self.id,
                };
                self.to_owner(
                    &g,
                    ShardMsg::Join {
                        group: g.clone(),
                        member,
                    },
                );
                Flow::Read
            }
            (_, Frame::Leave(g)) => {
                let c = &mut self.conns[conn];
                if !c.joined.remove(&g) {
                    let f = ErrorFrame::warn(ErrorCode::NotMember, format!("not a member of {g}"));
                    self.send_frame(conn, f.to_bytes());
                    return Flow::Read;
                }
                let session = c.session;
                self.to_owner(
                    &g,
                    ShardMsg::Leave {
                        group: g.clone(),
                        session,
                        cause: Cause::Leave,
                        notify: Some(self.id),
                    },
                );
                Flow::Read
            }
            (_, Frame::Noop) => Flow::Read,
            (_, Frame::Error(e)) => {
                tracing::info!(session = %self.conns[conn].session, code = ?e.code, "client reported error: {}", e.message);
                if e.fatal {
                    self.begin_close(conn, Cause::Disconnect, None);
                    return Flow::Close;
                }
                Flow::Read
            }
            (_, other) => {
                let what = other.name();
                self.fatal(
                    conn,
                    ErrorCode::Unexpected,
                    format!("{what} is not accepted from a client"),
                    now,
                )
            }
        }
    }

    fn handle_hello(&mut self, conn: ConnId, h: Handshake, now: Instant) -> Flow {
        if h.version < 1 {
            return self.fatal(
                conn,
                ErrorCode::BadHandshake,
                format!(
                    "protocol version {} is not supported (this server speaks 1)",
                    h.version
                ),
                now,
            );
        }
        if h.role != Role::Client {
            return self.fatal(
                conn,
                ErrorCode::BadHandshake,
                "this server does not accept peer links".into(),
                now,
            );
        }
        // Serials interleave over shards so that ids are unique on this server.
        self.next_serial += 1;
        let serial = self
            .next_serial
            .wrapping_mul(u32::from(self.nshards))
            .wrapping_add(u32::from(self.id));
        let session = SessionId::new(self.identity.node_tag, serial);
        let c = &mut self.conns[conn];
        c.state = State::Client;
        c.session = session;
        c.name = h.name;
        self.sessions.insert(session, conn);
        tracing::debug!(%session, name = %self.conns[conn].name, "session started");
        let welcome = Frame::Welcome(Handshake {
            version: proto::VERSION,
            role: Role::Peer,
            id: session,
            digest: self.identity.digest,
            node_tag: self.identity.node_tag,
            max_frame: self.limits.max_frame as u32,
            name: self.identity.node_name.clone(),
        });
        self.send_frame(conn, welcome.to_bytes());
        Flow::Read
    }

    fn protocol_error(&mut self, conn: ConnId, e: ProtoError, now: Instant) -> Flow {
        self.fatal(conn, e.code(), e.to_string(), now)
    }

    /// Sends a fatal ERROR and closes the connection once it is flushed.
    fn fatal(&mut self, conn: ConnId, code: ErrorCode, message: String, now: Instant) -> Flow {
        let c = &self.conns[conn];
        tracing::info!(session = %c.session, name = %c.name, ?code, "closing connection: {message}");
        self.stats.protocol_errors += 1;
        self.begin_close(
            conn,
            Cause::Disconnect,
            Some(ErrorFrame::fatal(code, message).to_bytes()),
        );
        self.conns[conn].closing_since = Some(now);
        Flow::Close
    }

    /// Leaves every group and stops accepting traffic for `conn`. The queue is replaced by
    /// `last` (an ERROR to flush) or dropped.
    fn begin_close(&mut self, conn: ConnId, cause: Cause, last: Option<Bytes>) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.state == State::Closing {
            return;
        }
        let (bytes, _) = c.outbox.clear();
        self.queued_bytes -= bytes;
        if c.hot {
            c.hot = false;
            self.hot_conns -= 1;
        }
        let was_client = c.state == State::Client;
        c.state = State::Closing;
        let session = c.session;
        let groups: Vec<GroupName> = c.joined.drain().collect();
        if let Some(frame) = last {
            c.outbox.push(frame.clone(), 1);
            self.queued_bytes += frame.len();
        }
        self.wakeups.push(conn);
        if was_client {
            self.sessions.remove(&session);
            for g in groups {
                self.to_owner(
                    &g,
                    ShardMsg::Leave {
                        group: g.clone(),
                        session,
                        cause,
                        notify: None,
                    },
                );
            }
        }
        self.update_pressure();
    }

    /// The reader saw end of stream or an error: the peer is gone.
    pub fn handle_eof(&mut self, conn: ConnId, now: Instant) {
        if let Some(c) = self.conns.get_mut(conn) {
            if c.state != State::Closing {
                tracing::debug!(session = %c.session, "connection closed by peer");
                self.begin_close(conn, Cause::Disconnect, None);
            }
            if let Some(c) = self.conns.get_mut(conn) {
                c.closing_since.get_or_insert(now);
            }
        }
    }

    /// A reader or writer task of `conn` finished; the slot is freed after both have.
    /// Returns true when it was freed (the id may then be reused).
    pub fn handle_task_done(&mut self, conn: ConnId, now: Instant) -> bool {
        self.handle_eof(conn, now);
        let Some(c) = self.conns.get_mut(conn) else {
            return false;
        };
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
        let Some(c) = self.conns.get_mut(conn) else {
            return Take::Finished;
        };
        let (bytes, _) = c.outbox.take_batch(max, batch);
        if bytes > 0 {
            c.last_tx = now;
            c.last_progress = now;
            self.queued_bytes -= bytes;
            self.stats.bytes_out += bytes as u64;
            if c.hot && c.outbox.messages() < self.limits.low_water() {
                c.hot = false;
                self.hot_conns -= 1;
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
        let _ = now;
        for msg in msgs {
            self.handle_shard_msg(msg);
        }
        self.update_pressure();
    }

    fn handle_shard_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver {
                group,
                frames,
                count,
            } => {
                self.route_local(group.as_bytes(), &frames, count);
            }
            ShardMsg::Join { group, member } => self.owner_join(group, member),
            ShardMsg::Leave {
                group,
                session,
                cause,
                notify,
            } => self.owner_leave(group, session, cause, notify),
            ShardMsg::View {
                group,
                frame,
                members,
                leaver,
            } => self.apply_view(group, frame, &members, leaver),
            ShardMsg::Pressure { from, over } => {
                let was = self.reading_paused();
                if let Some(slot) = self.remote_over.get_mut(from as usize) {
                    *slot = over;
                }
                if was && !self.reading_paused() {
                    self.resume = true;
                }
            }
        }
    }

    fn to_owner(&mut self, group: &GroupName, msg: ShardMsg) {
        let owner = owner_of(group.as_bytes(), self.nshards);
        if owner == self.id {
            self.handle_shard_msg(msg);
        } else {
            self.outgoing[owner as usize].push(msg);
        }
    }

    fn owner_join(&mut self, group: GroupName, member: MemberInfo) {
        let g = self.groups.entry(group.clone());
        let owned = g.owned.get_or_insert_with(Default::default);
        let subject = member.session;
        owned.members.insert(member.session, member);
        self.publish_view(group, Cause::Join, subject, None);
    }

    fn owner_leave(
        &mut self,
        group: GroupName,
        session: SessionId,
        cause: Cause,
        notify: Option<u16>,
    ) {
        let Some(owned) = self
            .groups
            .get_mut(group.as_bytes())
            .and_then(|g| g.owned.as_mut())
        else {
            return;
        };
        if owned.members.remove(&session).is_none() {
            return;
        }
        let leaver = notify.map(|shard| (session, shard));
        self.publish_view(group, cause, session, leaver);
    }

    /// Numbers the owner's new view, encodes it once and broadcasts it to every shard.
    fn publish_view(
        &mut self,
        group: GroupName,
        cause: Cause,
        subject: SessionId,
        leaver: Option<(SessionId, u16)>,
    ) {
        // invariant: callers just updated the owned state of this group.
        let owned = self
            .groups
            .get_mut(group.as_bytes())
            .and_then(|g| g.owned.as_mut())
            .expect("owned group");
        owned.view_id += 1;
        let members = owned.member_list();
        let view = View {
            cause,
            group: group.clone(),
            view_id: owned.view_id,
            group_seq: 0,
            subject,
            members: members
                .iter()
                .map(|m| proto::Member {
                    session: m.session,
                    name: m.name.clone(),
                })
                .collect(),
        };
        let frame = Frame::View(view).to_bytes();
        self.stats.views += 1;
        for s in 0..self.nshards {
            let msg = ShardMsg::View {
                group: group.clone(),
                frame: frame.clone(),
                members: members.clone(),
                leaver,
            };
            if s == self.id {
                self.handle_shard_msg(msg);
            } else {
                self.outgoing[s as usize].push(msg);
            }
        }
    }

    /// Installs a view from the owner: updates routing and sends it to local members.
    fn apply_view(
        &mut self,
        group: GroupName,
        frame: Bytes,
        members: &Arc<[MemberInfo]>,
        leaver: Option<(SessionId, u16)>,
    ) {
        let mut local = Vec::new();
        let mut remote_shards = Vec::new();
        for m in members.iter() {
            if m.shard == self.id {
                if let Some(&conn) = self.sessions.get(&m.session) {
                    local.push(conn);
                }
            } else if !remote_shards.contains(&m.shard) {
                remote_shards.push(m.shard);
            }
        }
        let mut recipients = local.clone();
        if let Some((session, shard)) = leaver {
            if shard == self.id {
                if let Some(&conn) = self.sessions.get(&session) {
                    recipients.push(conn);
                }
            }
        }
        if members.is_empty() {
            self.groups.remove(group.as_bytes());
        } else {
            let g = self.groups.entry(group);
            g.local = local;
            g.remote_shards = remote_shards;
        }
        for conn in recipients {
            self.send_frame(conn, frame.clone());
        }
    }

    /// The server is stopping: every client gets a fatal ShuttingDown and is closed.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let conns: Vec<ConnId> = self.conns.iter().map(|(k, _)| k).collect();
        for conn in conns {
            let frame =
                ErrorFrame::fatal(ErrorCode::ShuttingDown, "server is shutting down").to_bytes();
            self.begin_close(conn, Cause::Disconnect, Some(frame));
            if let Some(c) = self.conns.get_mut(conn) {
                c.closing_since.get_or_insert(now);
            }
        }
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        now + self.limits.tick()
    }

    /// Keepalives, idle and stall detection, and cutting connections that would not close.
    pub fn handle_timeout(&mut self, now: Instant) {
        let l = self.limits.clone();
        let mut idle = Vec::new();
        let mut stalled = Vec::new();
        let mut keepalive = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            match c.state {
                State::Closing => {
                    let since = *c.closing_since.get_or_insert(now);
                    if now.duration_since(since) >= CLOSE_GRACE {
                        self.cut.push(id);
                    }
                }
                _ if now.duration_since(c.last_rx) >= l.idle_timeout => idle.push(id),
                _ if c.hot && now.duration_since(c.last_progress) >= l.stall_timeout => {
                    stalled.push(id)
                }
                State::Client
                    if c.outbox.is_empty()
                        && now.duration_since(c.last_tx) >= l.keepalive_interval =>
                {
                    keepalive.push(id)
                }
                _ => {}
            }
        }
        for id in idle {
            self.stats.killed_idle += 1;
            let secs = l.idle_timeout.as_secs_f64();
            self.fatal(
                id,
                ErrorCode::IdleTimeout,
                format!("nothing received for {secs}s (idle_timeout)"),
                now,
            );
        }
        for id in stalled {
            let queued = self.conns[id].outbox.messages();
            self.kill_stuck(
                id,
                format!(
                    "no write progress for {:?} with {queued} messages queued",
                    l.stall_timeout
                ),
            );
        }
        for id in keepalive {
            self.conns[id].last_tx = now;
            self.send_frame(id, Frame::Noop.to_bytes());
        }
        // Memory over budget for too long: the largest queue is what holds everyone back.
        if self.queued_bytes > l.memory_budget {
            let since = *self.over_since.get_or_insert(now);
            if now.duration_since(since) >= l.stall_timeout {
                let largest = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.state != State::Closing)
                    .max_by_key(|(_, c)| c.outbox.bytes())
                    .map(|(id, _)| id);
                if let Some(id) = largest {
                    let why = format!(
                        "shard over its memory budget of {} bytes for {:?}; largest queue",
                        l.memory_budget, l.stall_timeout
                    );
                    self.kill_stuck(id, why);
                }
                self.over_since = Some(now);
            }
        } else {
            self.over_since = None;
        }
        self.update_pressure();
    }

    /// Re-evaluates whether this shard holds publishers back, with hysteresis, and tells the
    /// other shards when that changes.
    fn update_pressure(&mut self) {
        let budget = self.limits.memory_budget;
        let over = if self.over {
            self.hot_conns > 0 || self.queued_bytes > budget / 4 * 3
        } else {
            self.hot_conns > 0 || self.queued_bytes > budget
        };
        if over == self.over {
            return;
        }
        let was_paused = self.reading_paused();
        self.over = over;
        if over {
            self.stats.pauses += 1;
            tracing::debug!(
                shard = self.id,
                queued = self.queued_bytes,
                hot = self.hot_conns,
                "pausing publishers"
            );
        }
        if was_paused && !self.reading_paused() {
            self.resume = true;
        }
        for s in 0..self.nshards {
            if s != self.id {
                self.outgoing[s as usize].push(ShardMsg::Pressure {
                    from: self.id,
                    over,
                });
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

    /// Batches for other shards, by shard index; empty batches are skipped by the caller.
    pub fn take_outgoing(&mut self) -> impl Iterator<Item = (u16, Vec<ShardMsg>)> + '_ {
        self.outgoing
            .iter_mut()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(i, b)| (i as u16, std::mem::take(b)))
    }

    /// The session id of `conn`, if it finished its handshake.
    pub fn session_of(&self, conn: ConnId) -> Option<SessionId> {
        self.conns
            .get(conn)
            .map(|c| c.session)
            .filter(|s| !s.is_none())
    }
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
