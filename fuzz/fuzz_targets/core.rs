//! The shard core (sans-io) driven the way the runtime drives it, by arbitrary clients and
//! peers: connections are accepted and dialed, frames built from the input (well-formed or
//! not, with made-up sessions, sequence numbers and view ids) or raw bytes arrive in chunks,
//! writers drain, shards exchange their messages, virtual time advances, limits are
//! reloaded, readers see end of stream.
//!
//! Checked: nothing panics (overflows included: build with `-a`); everything the server
//! writes decodes as frames; message passing between shards settles; once every
//! connection is gone, nothing stays queued.

#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use msgc::core::{ConnId, Flow, Limits, PeerEntry, ServerIdentity, ShardCore, ShardMsg, Take};
use msgc::proto::{
    self, Cause, ErrorCode, ErrorFrame, Frame, Gap, GapReason, GroupName, Handshake, Mcast, Member, Name,
    NodeTag, PeerJoin, PeerLeave, PeerState, Role, SessionId, View,
};

/// This server's node tag and name; it lists these servers as peers.
const OUR_TAG: u32 = 7;
const OUR_NAME: &str = "self";
const NAMES: [&str; 6] = ["self", "peer1", "peer2", "PEER1", "stranger", ""];
const GROUPS: [&str; 4] = ["g", "h", "cluster.state", "grüße"];

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

#[derive(Arbitrary, Debug)]
struct Input {
    shards: u8,
    /// Index into `FRAME_LIMITS`.
    max_frame: u8,
    max_backlog: u8,
    messages_per_iter: u8,
    small_budget: bool,
    /// Tiny resource bounds, so that every one of them is reached.
    small_bounds: bool,
    ops: Vec<Op>,
}

const FRAME_LIMITS: [usize; 3] = [proto::MIN_MAX_FRAME, 65536, proto::DEFAULT_MAX_FRAME];

#[derive(Arbitrary, Debug)]
enum Op {
    /// A connection arrives on a shard and says `hello`.
    Accept { shard: u8, hello: Hello },
    /// This server dials peer `NAMES[name]`; the answer (WELCOME) comes later as a frame.
    Dial { shard: u8, name: u8 },
    /// Frames arrive on a connection, cut into `chunk`-byte reads.
    Frames { conn: u8, frames: Vec<FrameSpec>, chunk: u8 },
    /// Raw bytes arrive on a connection.
    Raw { conn: u8, bytes: Vec<u8> },
    /// The writer of a connection takes and writes what is queued.
    Drain { conn: u8 },
    /// The reader of a connection sees end of stream (and finishes).
    Eof { conn: u8 },
    /// Shards deliver what they sent each other.
    Pump,
    /// Time passes; every shard's timer fires.
    Tick { ms: u16 },
    /// SIGHUP with other limits.
    Reload { max_backlog: u8, idle_ms: u16, keepalive_ms: u16 },
    /// SIGTERM on one shard.
    Shutdown { shard: u8 },
}

#[derive(Arbitrary, Debug)]
enum Hello {
    Client { name: u8 },
    Peer { name: u8, tag: u32, boot: u64, same_digest: bool },
    Other(HandshakeSpec),
    Nothing,
}

#[derive(Arbitrary, Debug)]
struct HandshakeSpec {
    version: u16,
    peer: bool,
    id: u64,
    digest: u64,
    tag: u32,
    max_frame: u32,
    name: u8,
}

impl HandshakeSpec {
    fn build(&self) -> Handshake {
        Handshake {
            version: self.version,
            role: if self.peer { Role::Peer } else { Role::Client },
            id: SessionId(self.id),
            digest: self.digest,
            node_tag: NodeTag(self.tag),
            max_frame: self.max_frame,
            name: name(self.name),
        }
    }
}

/// A session id as a sender or member: one the server handed out, one of the peer's,
/// or any number.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sess {
    Own,
    OfConn(u8),
    OfPeer(u32),
    Any(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Seq {
    Next,
    Any(u64),
    Max,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Grp {
    Known(u8),
    /// `n` times `x` (a long name when n is large).
    Long(u8),
}

#[derive(Arbitrary, Debug)]
enum FrameSpec {
    Hello(HandshakeSpec),
    Welcome { name: u8, tag: u32, boot: u64 },
    Join(Grp),
    Leave(Grp),
    Noop,
    Error { code: u16, fatal: bool, message: String },
    Mcast { sender: Sess, seq: Seq, group: Grp, payload: u16, repeat: u8 },
    View { cause: u8, group: Grp, view_id: u64, subject: Sess, members: Vec<(Sess, u8)> },
    Gap { group: Grp, sender: Sess, first: u64, last: u64 },
    PeerJoin { cause: u8, group: Grp, session: Sess, name: u8, version: u64 },
    PeerLeave { cause: u8, group: Grp, session: Sess, version: u64 },
    PeerState { shard: u16, shards: u16, more: bool, version: u64, views: Vec<(Grp, u64, u64)> },
}

fn name(i: u8) -> Name {
    // One more than the pool: the longest name, so views outgrow small frames quickly.
    static LONG: OnceLock<String> = OnceLock::new();
    let long = LONG.get_or_init(|| "n".repeat(proto::MAX_NAME_LEN));
    let s = NAMES.get(usize::from(i) % (NAMES.len() + 1)).copied().unwrap_or(long);
    // invariant: at most MAX_NAME_LEN bytes of ASCII.
    Name::new(s).expect("valid name")
}

fn group(g: Grp) -> GroupName {
    let s = match g {
        Grp::Known(i) => GROUPS[usize::from(i) % GROUPS.len()].to_string(),
        Grp::Long(n) => "x".repeat(usize::from(n).max(1)),
    };
    // invariant: 1..=255 bytes of UTF-8.
    GroupName::new(&s).expect("valid group")
}

fn cause(c: u8) -> Cause {
    [Cause::Join, Cause::Leave, Cause::Disconnect, Cause::Network][usize::from(c) % 4]
}

/// What the harness knows of a connection (as the runtime would: its two tasks).
struct Conn {
    shard: usize,
    id: ConnId,
    /// The peer's node tag, for a link we made up.
    tag: u32,
    reader_done: bool,
    writer_done: bool,
    /// Bytes the server wrote and the remote has not decoded yet.
    inbox: BytesMut,
    next_seq: HashMap<GroupName, u64>,
}

struct Harness {
    shards: Vec<ShardCore>,
    conns: Vec<Conn>,
    now: Instant,
    /// The largest frame any of the server's limits ever allowed (for decoding its output).
    max_frame: usize,
    limits: Limits,
}

impl Harness {
    fn new(input: &Input) -> Harness {
        let n = u16::from(input.shards % 3 + 1);
        let max_frame = FRAME_LIMITS[usize::from(input.max_frame) % FRAME_LIMITS.len()];
        let limits = Limits {
            max_backlog: usize::from(input.max_backlog).max(1),
            messages_per_iter: usize::from(input.messages_per_iter % 32).max(1),
            max_frame,
            memory_budget: if input.small_budget { 4096 } else { 64 << 20 },
            tcpbuf_size: 4096,
            ..Limits::default()
        };
        let limits = if input.small_bounds {
            Limits {
                max_connections: 6,
                max_handshakes: 2,
                max_groups_per_session: 2,
                max_group_members: 3,
                handshake_timeout: Duration::from_millis(500),
                ..limits
            }
        } else {
            limits
        };
        let identity = ServerIdentity {
            node_tag: NodeTag(OUR_TAG),
            node_name: Name::new(OUR_NAME).expect("valid name"),
            digest: 42,
            boot: 1000,
            entropy: [7; 32],
        };
        let shards = (0..n)
            .map(|i| {
                let mut s = ShardCore::new(i, n, identity.clone(), limits.clone());
                s.set_peers(
                    ["self", "peer1", "peer2"]
                        .map(|n| PeerEntry { name: n.into(), addrs: vec![[127, 0, 0, 1].into()] }),
                );
                s
            })
            .collect();
        Harness { shards, conns: Vec::new(), now: start(), max_frame, limits }
    }

    fn conn(&self, i: u8) -> Option<usize> {
        if self.conns.is_empty() {
            None
        } else {
            Some(usize::from(i) % self.conns.len())
        }
    }

    fn session(&self, c: usize, s: Sess) -> SessionId {
        let conn = &self.conns[c];
        match s {
            Sess::Own => self.shards[conn.shard].session_of(conn.id).unwrap_or(SessionId::NONE),
            Sess::OfConn(i) => {
                let o = &self.conns[usize::from(i) % self.conns.len()];
                self.shards[o.shard].session_of(o.id).unwrap_or(SessionId::NONE)
            }
            Sess::OfPeer(serial) => SessionId::new(NodeTag(conn.tag), serial),
            Sess::Any(x) => SessionId(x),
        }
    }

    fn build(&mut self, c: usize, spec: &FrameSpec, out: &mut BytesMut) {
        let frame = match spec {
            FrameSpec::Hello(h) => Frame::Hello(h.build()),
            FrameSpec::Welcome { name: n, tag, boot } => Frame::Welcome(Handshake {
                version: msgc::proto::PEER_VERSION,
                role: Role::Peer,
                id: SessionId(*boot),
                digest: 42,
                node_tag: NodeTag(*tag),
                max_frame: 1 << 20,
                name: name(*n),
            }),
            FrameSpec::Join(g) => Frame::Join(group(*g)),
            FrameSpec::Leave(g) => Frame::Leave(group(*g)),
            FrameSpec::Noop => Frame::Noop,
            FrameSpec::Error { code, fatal, message } => {
                let code = match code % 14 {
                    0 => ErrorCode::Other,
                    1 => ErrorCode::Malformed,
                    5 => ErrorCode::Unexpected,
                    11 => ErrorCode::Stuck,
                    _ => ErrorCode::ShuttingDown,
                };
                if *fatal {
                    ErrorFrame::fatal(code, message.clone())
                } else {
                    ErrorFrame::warn(code, message.clone())
                }
            }
            FrameSpec::Mcast { sender, seq, group: g, payload, repeat } => {
                let g = group(*g);
                let sender = self.session(c, *sender);
                let payload = Bytes::from(vec![0xa5; usize::from(*payload) % 2048]);
                for _ in 0..=(*repeat % 8) {
                    let seq = match seq {
                        Seq::Next => {
                            let n = self.conns[c].next_seq.entry(g.clone()).or_insert(0);
                            *n = n.wrapping_add(1);
                            *n
                        }
                        Seq::Any(x) => *x,
                        Seq::Max => u64::MAX,
                    };
                    let m = Mcast { sender, seq, order: 0, group: g.clone(), payload: payload.clone() };
                    Frame::Mcast(m).encode(out);
                }
                return;
            }
            FrameSpec::View { cause: cz, group: g, view_id, subject, members } => Frame::View(View {
                cause: cause(*cz),
                group: group(*g),
                view_id: *view_id,
                group_seq: 0,
                subject: self.session(c, *subject),
                members: members
                    .iter()
                    .map(|(s, n)| Member { session: self.session(c, *s), name: name(*n) })
                    .collect(),
            }),
            FrameSpec::Gap { group: g, sender, first, last } => Frame::Gap(Gap {
                reason: GapReason::LinkLost,
                group: group(*g),
                sender: self.session(c, *sender),
                first: *first,
                last: *last,
            }),
            FrameSpec::PeerJoin { cause: cz, group: g, session, name: n, version } => Frame::PeerJoin(PeerJoin {
                cause: cause(*cz),
                group: group(*g),
                member: Member { session: self.session(c, *session), name: name(*n) },
                version: *version,
            }),
            FrameSpec::PeerLeave { cause: cz, group: g, session, version } => Frame::PeerLeave(PeerLeave {
                cause: cause(*cz),
                group: group(*g),
                session: self.session(c, *session),
                version: *version,
            }),
            FrameSpec::PeerState { shard, shards, more, version, views } => {
                // The decoder rejects shard >= shards; keep these well-formed.
                let shards = (*shards).max(1);
                Frame::PeerState(PeerState {
                    shard: shard % shards,
                    shards,
                    more: *more,
                    version: *version,
                    views: views.iter().map(|(g, id, d)| (group(*g), *id, *d)).collect(),
                })
            }
        };
        frame.encode(out);
    }

    /// Bytes arrive on connection `c` in `chunk`-byte reads, as the reader hands them over.
    fn read(&mut self, c: usize, bytes: &[u8], chunk: usize) {
        if self.conns[c].reader_done {
            return;
        }
        let (shard, id) = (self.conns[c].shard, self.conns[c].id);
        let mut buf = BytesMut::new();
        for piece in bytes.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            let mut turns = 0;
            loop {
                turns += 1;
                assert!(turns < 100_000, "handle_input keeps yielding");
                match self.shards[shard].handle_input(id, &mut buf, self.now) {
                    Flow::Read => break,
                    Flow::Yield => continue,
                    Flow::Close => {
                        // The reader stops reading and finishes.
                        self.reader_finished(c);
                        return;
                    }
                }
            }
        }
    }

    fn reader_finished(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        if !conn.reader_done {
            conn.reader_done = true;
            self.shards[conn.shard].handle_task_done(conn.id, self.now);
        }
    }

    fn writer_finished(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        if !conn.writer_done {
            conn.writer_done = true;
            self.shards[conn.shard].handle_task_done(conn.id, self.now);
        }
    }

    /// The writer takes everything queued; the remote decodes it.
    fn drain(&mut self, c: usize) {
        if self.conns[c].writer_done {
            return;
        }
        let mut batch = Vec::new();
        for _ in 0..10_000 {
            let conn = &mut self.conns[c];
            match self.shards[conn.shard].take_batch(conn.id, &mut batch, self.now) {
                Take::Write => {
                    for b in batch.drain(..) {
                        conn.inbox.extend_from_slice(&b);
                    }
                }
                Take::Wait => break,
                Take::Finished => {
                    self.writer_finished(c);
                    break;
                }
            }
        }
        let conn = &mut self.conns[c];
        loop {
            // Within the frame limit: views included (issue 8 item 3, found by this target).
            match proto::decode(&mut conn.inbox, self.max_frame) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("the server wrote an undecodable frame: {e}"),
            }
        }
    }

    /// Delivers what the shards sent each other until nothing moves.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            for s in 0..self.shards.len() {
                let out: Vec<(u16, Vec<ShardMsg>)> = self.shards[s].take_outgoing().collect();
                for (to, batch) in out {
                    moved = true;
                    self.shards[usize::from(to)].handle_shard_msgs(batch, self.now);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("messages between shards do not settle");
    }

    /// Sockets the core asked to cut: both tasks end.
    fn cuts(&mut self) {
        let mut cut = Vec::new();
        for s in 0..self.shards.len() {
            cut.clear();
            self.shards[s].take_cuts(&mut cut);
            for &id in &cut {
                if let Some(c) = self.conns.iter().position(|c| c.shard == s && c.id == id) {
                    self.reader_finished(c);
                    self.writer_finished(c);
                }
            }
        }
        // Slots both of whose tasks are done are freed; the core may reuse their ids.
        self.conns.retain(|c| !(c.reader_done && c.writer_done));
    }

    fn add(&mut self, shard: usize, id: ConnId, tag: u32) -> usize {
        self.conns.push(Conn {
            shard,
            id,
            tag,
            reader_done: false,
            writer_done: false,
            inbox: BytesMut::new(),
            next_seq: HashMap::new(),
        });
        self.conns.len() - 1
    }

    fn op(&mut self, op: &Op) {
        let nshards = self.shards.len();
        match op {
            Op::Accept { shard, hello } => {
                let shard = usize::from(*shard) % nshards;
                let id = self.shards[shard].handle_accept(self.now, loopback());
                let (frame, tag) = match hello {
                    Hello::Client { name: n } => {
                        (Some(Frame::Hello(Handshake::client(name(*n), 1 << 20))), 0)
                    }
                    Hello::Peer { name: n, tag, boot, same_digest } => {
                        let h = Handshake {
                            version: msgc::proto::PEER_VERSION,
                            role: Role::Peer,
                            id: SessionId(*boot),
                            digest: if *same_digest { 42 } else { 0 },
                            node_tag: NodeTag(*tag),
                            max_frame: 1 << 20,
                            name: name(*n),
                        };
                        (Some(Frame::Hello(h)), *tag)
                    }
                    Hello::Other(spec) => (Some(Frame::Hello(spec.build())), spec.tag),
                    Hello::Nothing => (None, 0),
                };
                let c = self.add(shard, id, tag);
                if let Some(f) = frame {
                    self.read(c, &f.to_bytes(), usize::MAX);
                }
            }
            Op::Dial { shard, name: n } => {
                let shard = usize::from(*shard) % nshards;
                let id = self.shards[shard].handle_dial(
                    NAMES[usize::from(*n) % NAMES.len()],
                    self.now,
                    loopback(),
                );
                self.add(shard, id, 0);
            }
            Op::Frames { conn, frames, chunk } => {
                let Some(c) = self.conn(*conn) else { return };
                let mut bytes = BytesMut::new();
                for f in frames {
                    if let FrameSpec::Welcome { tag, .. } = f {
                        self.conns[c].tag = *tag;
                    }
                    self.build(c, f, &mut bytes);
                }
                let chunk = if *chunk == 0 { usize::MAX } else { usize::from(*chunk) };
                self.read(c, &bytes, chunk);
            }
            Op::Raw { conn, bytes } => {
                let Some(c) = self.conn(*conn) else { return };
                self.read(c, bytes, usize::MAX);
            }
            Op::Drain { conn } => {
                let Some(c) = self.conn(*conn) else { return };
                self.drain(c);
            }
            Op::Eof { conn } => {
                let Some(c) = self.conn(*conn) else { return };
                if !self.conns[c].reader_done {
                    let conn = &self.conns[c];
                    self.shards[conn.shard].handle_eof(conn.id, self.now);
                    self.reader_finished(c);
                }
            }
            Op::Pump => self.pump(),
            Op::Tick { ms } => {
                self.now += Duration::from_millis(u64::from(*ms));
                for s in &mut self.shards {
                    assert!(s.poll_timeout(self.now) > self.now, "a timer due in the past");
                    s.handle_timeout(self.now);
                }
            }
            Op::Reload { max_backlog, idle_ms, keepalive_ms } => {
                self.limits.max_backlog = usize::from(*max_backlog).max(1);
                self.limits.idle_timeout = Duration::from_millis(u64::from(*idle_ms).max(1));
                self.limits.keepalive_interval = Duration::from_millis(u64::from(*keepalive_ms).max(1));
                for s in &mut self.shards {
                    s.set_limits(self.limits.clone());
                }
            }
            Op::Shutdown { shard } => {
                let shard = usize::from(*shard) % nshards;
                self.shards[shard].handle_shutdown(self.now);
            }
        }
        self.cuts();
    }

    /// Every connection goes away; then nothing may stay queued or open.
    fn finish(&mut self) {
        self.pump();
        for c in 0..self.conns.len() {
            self.drain(c);
            let conn = &self.conns[c];
            self.shards[conn.shard].handle_eof(conn.id, self.now);
            self.reader_finished(c);
            self.writer_finished(c);
        }
        self.conns.clear();
        self.pump();
        for (i, s) in self.shards.iter().enumerate() {
            assert_eq!(s.connections(), 0, "shard {i} keeps connections after all closed");
            assert_eq!(s.queued_bytes(), 0, "shard {i} counts queued bytes after all closed");
        }
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(&input);
    // Every input starts with a client and a linked peer.
    h.op(&Op::Accept { shard: 0, hello: Hello::Client { name: 0 } });
    let peer = Hello::Peer { name: 1, tag: 99, boot: 5, same_digest: true };
    h.op(&Op::Accept { shard: 1, hello: peer });
    for op in input.ops.iter().take(256) {
        h.op(op);
    }
    h.finish();
});

/// Metadata of a connection from the loopback address (where the peer is listed).
fn loopback() -> msgc::core::ConnMeta {
    msgc::core::ConnMeta { remote: Some(([127, 0, 0, 1], 40000).into()), tls: None }
}
