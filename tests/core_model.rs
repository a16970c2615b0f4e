//! Several `ShardCore`s wired together in memory, driven by random operations and checked
//! against a model of the contract: members get every message once, in sender order;
//! non-members get nothing; views list exactly the members.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use msgc::core::*;
use msgc::proto::{
    self, encode_mcast, Cause, ErrorCode, Frame, GroupName, Handshake, Name, NodeTag, SessionId,
};

struct Client {
    shard: u16,
    conn: ConnId,
    session: SessionId,
    open: bool,
    /// Bytes written to this client and not yet decoded.
    inbox: BytesMut,
    next_seq: HashMap<String, u64>,
}

struct Harness {
    shards: Vec<ShardCore>,
    clients: Vec<Client>,
    now: Instant,
    /// Batches in flight between shards: (to, batch), delivered in FIFO order per pair.
    wire: Vec<(u16, Vec<ShardMsg>)>,
}

impl Harness {
    fn new(nshards: u16, limits: Limits) -> Harness {
        let identity = ServerIdentity {
            node_tag: NodeTag(7),
            node_name: Name::new("test").unwrap(),
            digest: 0,
            boot: 1,
            entropy: [7; 32],
        };
        Harness {
            shards: (0..nshards)
                .map(|i| ShardCore::new(i, nshards, identity.clone(), limits.clone()))
                .collect(),
            clients: Vec::new(),
            now: Instant::now(),
            wire: Vec::new(),
        }
    }

    fn collect(&mut self) {
        for s in &mut self.shards {
            let out: Vec<_> = s.take_outgoing().collect();
            self.wire.extend(out);
        }
    }

    /// Delivers every batch in flight, including what delivering produces.
    fn pump(&mut self) {
        for _ in 0..1000 {
            self.collect();
            if self.wire.is_empty() {
                return;
            }
            for (to, batch) in std::mem::take(&mut self.wire) {
                self.shards[to as usize].handle_shard_msgs(batch, self.now);
            }
        }
        panic!("shard messages did not settle");
    }

    fn input(&mut self, c: usize, bytes: &[u8]) -> Flow {
        let cl = &self.clients[c];
        let mut buf = BytesMut::from(bytes);
        let core = &mut self.shards[cl.shard as usize];
        let mut flow = core.handle_input(cl.conn, &mut buf, self.now);
        while flow == Flow::Yield {
            flow = core.handle_input(cl.conn, &mut buf, self.now);
        }
        flow
    }

    fn connect(&mut self, name: &str) -> usize {
        let shard = (self.clients.len() % self.shards.len()) as u16;
        let conn = self.shards[shard as usize].handle_accept(self.now, loopback());
        self.clients.push(Client {
            shard,
            conn,
            session: SessionId::NONE,
            open: true,
            inbox: BytesMut::new(),
            next_seq: HashMap::new(),
        });
        let c = self.clients.len() - 1;
        let hello = Frame::Hello(Handshake::client(Name::new(name).unwrap(), 1 << 20));
        assert_eq!(self.input(c, &hello.to_bytes()), Flow::Read);
        match self.frames(c).as_slice() {
            [Frame::Welcome(w)] => self.clients[c].session = w.id,
            other => panic!("expected WELCOME, got {other:?}"),
        }
        c
    }

    /// Everything written to client `c` so far, decoded.
    fn frames(&mut self, c: usize) -> Vec<Frame> {
        self.pump();
        let cl = &mut self.clients[c];
        let core = &mut self.shards[cl.shard as usize];
        let mut batch = Vec::new();
        while core.take_batch(cl.conn, &mut batch, self.now) == Take::Write {
            for b in batch.drain(..) {
                cl.inbox.extend_from_slice(&b);
            }
        }
        let mut out = Vec::new();
        while let Some(f) = proto::decode(&mut cl.inbox, 1 << 20).expect("server sent a valid frame") {
            out.push(f);
        }
        out
    }

    fn mcast(&mut self, c: usize, group: &str, payload: &[u8]) -> u64 {
        let seq = {
            let s = self.clients[c].next_seq.entry(group.into()).or_insert(0);
            *s += 1;
            *s
        };
        let mut b = BytesMut::new();
        encode_mcast(&mut b, self.clients[c].session, seq, &GroupName::new(group).unwrap(), payload);
        assert_eq!(self.input(c, &b), Flow::Read);
        seq
    }

    fn disconnect(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        cl.open = false;
        let core = &mut self.shards[cl.shard as usize];
        core.handle_task_done(cl.conn, self.now);
        core.handle_task_done(cl.conn, self.now);
    }
}

fn join(g: &str) -> Bytes {
    Frame::Join(GroupName::new(g).unwrap()).to_bytes()
}
fn leave(g: &str) -> Bytes {
    Frame::Leave(GroupName::new(g).unwrap()).to_bytes()
}

#[test]
fn join_multicast_leave_across_shards() {
    let mut h = Harness::new(3, Limits::default());
    let a = h.connect("a");
    let b = h.connect("b");
    let c = h.connect("c");
    h.input(a, &join("g"));
    h.input(b, &join("g"));
    let views_a = h.frames(a);
    assert_eq!(views_a.len(), 2, "{views_a:?}");
    let Frame::View(v) = &views_a[1] else { panic!() };
    // View ids count up from the configuration's epoch (the start time, 1 here).
    let first = 1 << msgc::core::EPOCH_SHIFT;
    assert_eq!((v.cause, v.view_id, v.members.len()), (Cause::Join, first + 2, 2));
    assert_eq!(v.subject, h.clients[b].session);
    h.frames(b);
    // c is not a member but may send; a and b receive, c does not.
    h.mcast(c, "g", b"one");
    h.mcast(c, "g", b"two");
    for m in [a, b] {
        let got: Vec<_> = h
            .frames(m)
            .into_iter()
            .map(|f| match f {
                Frame::Mcast(m) => (m.seq, m.payload),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![(1, Bytes::from_static(b"one")), (2, Bytes::from_static(b"two"))]);
    }
    assert!(h.frames(c).is_empty());
    // Leave: the leaver gets its last view, the other the remaining membership.
    h.input(a, &leave("g"));
    let Frame::View(v) = &h.frames(a)[0] else { panic!() };
    assert_eq!((v.cause, v.members.len()), (Cause::Leave, 1));
    let Frame::View(v) = &h.frames(b)[0] else { panic!() };
    assert_eq!((v.cause, v.view_id), (Cause::Leave, first + 3));
    // Disconnect: remaining members see cause Disconnect.
    h.input(c, &join("g"));
    h.frames(b);
    h.disconnect(c);
    let Frame::View(v) = &h.frames(b)[0] else { panic!() };
    assert_eq!((v.cause, v.members.len()), (Cause::Disconnect, 1));
}

#[test]
fn sender_and_sequence_are_checked() {
    let mut h = Harness::new(1, Limits::default());
    let a = h.connect("a");
    let mut b = BytesMut::new();
    encode_mcast(&mut b, SessionId(12345), 1, &GroupName::new("g").unwrap(), b"x");
    assert_eq!(h.input(a, &b), Flow::Close);
    match h.frames(a).as_slice() {
        [Frame::Error(e)] => assert_eq!((e.code, e.fatal), (ErrorCode::BadSender, true)),
        other => panic!("{other:?}"),
    }
    let a = h.connect("a2");
    let mut b = BytesMut::new();
    encode_mcast(&mut b, h.clients[a].session, 2, &GroupName::new("g").unwrap(), b"x");
    assert_eq!(h.input(a, &b), Flow::Close);
    match h.frames(a).as_slice() {
        [Frame::Error(e)] => assert_eq!(e.code, ErrorCode::BadSequence),
        other => panic!("{other:?}"),
    }
}

#[test]
fn frames_before_hello_and_double_join_are_errors() {
    let mut h = Harness::new(1, Limits::default());
    let a = h.connect("a");
    h.input(a, &join("g"));
    h.frames(a);
    assert_eq!(h.input(a, &join("g")), Flow::Read);
    match h.frames(a).as_slice() {
        [Frame::Error(e)] => assert_eq!((e.code, e.fatal), (ErrorCode::AlreadyMember, false)),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.input(a, &leave("nope")), Flow::Read);
    match h.frames(a).as_slice() {
        [Frame::Error(e)] => assert_eq!(e.code, ErrorCode::NotMember),
        other => panic!("{other:?}"),
    }
    // A raw connection that sends JOIN before HELLO.
    let conn = h.shards[0].handle_accept(h.now, loopback());
    let mut buf = BytesMut::from(&join("g")[..]);
    assert_eq!(h.shards[0].handle_input(conn, &mut buf, h.now), Flow::Close);
}

#[test]
fn a_receiver_over_max_backlog_is_killed_and_others_keep_receiving() {
    let limits = Limits { max_backlog: 10, ..Limits::default() };
    let mut h = Harness::new(2, limits);
    let slow = h.connect("slow");
    let fast = h.connect("fast");
    let pubr = h.connect("pub");
    for c in [slow, fast] {
        h.input(c, &join("g"));
    }
    h.frames(fast);
    let mut got = 0;
    for i in 0..30 {
        h.mcast(pubr, "g", format!("m{i}").as_bytes());
        got += h.frames(fast).iter().filter(|f| matches!(f, Frame::Mcast(_))).count();
    }
    assert_eq!(got, 30);
    let killed = |h: &Harness| -> u64 { h.shards.iter().map(|s| s.stats.killed_stuck).sum() };
    // Over max_backlog (but under 4x): killed at the next tick, as it made no progress.
    assert_eq!(killed(&h), 0);
    h.now += Limits::default().tick();
    for s in &mut h.shards {
        s.handle_timeout(h.now);
    }
    assert_eq!(killed(&h), 1);
    // Far over it: killed at once.
    let slow2 = h.connect("slow2");
    h.input(slow2, &join("g"));
    h.frames(fast);
    for i in 0..45 {
        h.mcast(pubr, "g", format!("n{i}").as_bytes());
        h.frames(fast);
    }
    assert_eq!(killed(&h), 2);
    let mut cuts = Vec::new();
    h.shards[h.clients[slow].shard as usize].take_cuts(&mut cuts);
    assert!(cuts.contains(&h.clients[slow].conn));
}

#[test]
fn idle_connections_get_keepalives_then_time_out() {
    let limits = Limits {
        idle_timeout: Duration::from_secs(10),
        keepalive_interval: Duration::from_secs(3),
        ..Limits::default()
    };
    let mut h = Harness::new(1, limits);
    let a = h.connect("a");
    h.now += Duration::from_secs(4);
    h.shards[0].handle_timeout(h.now);
    assert_eq!(h.frames(a), vec![Frame::Noop]);
    h.now += Duration::from_secs(7);
    h.shards[0].handle_timeout(h.now);
    match h.frames(a).as_slice() {
        [Frame::Error(e)] => assert_eq!(e.code, ErrorCode::IdleTimeout),
        other => panic!("{other:?}"),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Join(usize, usize),
    Leave(usize, usize),
    Send(usize, usize),
    Disconnect(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6usize, 0..3usize).prop_map(|(c, g)| Op::Join(c, g)),
        (0..6usize, 0..3usize).prop_map(|(c, g)| Op::Leave(c, g)),
        (0..6usize, 0..3usize).prop_map(|(c, g)| Op::Send(c, g)),
        (0..6usize, 0..3usize).prop_map(|(c, g)| Op::Send(c, g)),
        (0..6usize).prop_map(Op::Disconnect),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random joins, leaves, sends and disconnects on 3 shards, checked against a model.
    #[test]
    fn contract_holds_for_random_operations(ops in proptest::collection::vec(op(), 1..60)) {
        let mut h = Harness::new(3, Limits::default());
        let clients: Vec<usize> = (0..6).map(|i| h.connect(&format!("c{i}"))).collect();
        let groups = ["alpha", "beta", "gamma"];
        let mut members: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        // What each client must receive, in order: a message (sender, group, seq) or a view.
        let mut expected: Vec<Vec<String>> = vec![Vec::new(); clients.len()];
        let mut received: Vec<Vec<String>> = vec![Vec::new(); clients.len()];
        for op in ops {
            match op {
                Op::Join(c, g) if h.clients[c].open && !members.entry(g).or_default().contains(&c) => {
                    h.input(c, &join(groups[g]));
                    members.entry(g).or_default().insert(c);
                    let list: Vec<_> = members[&g].iter().map(|&m| h.clients[m].session).collect();
                    for &m in &members[&g] {
                        expected[m].push(format!("view {} join {:?}", groups[g], sorted(list.clone())));
                    }
                }
                Op::Leave(c, g) if h.clients[c].open && members.entry(g).or_default().contains(&c) => {
                    h.input(c, &leave(groups[g]));
                    members.entry(g).or_default().remove(&c);
                    let list: Vec<_> = members[&g].iter().map(|&m| h.clients[m].session).collect();
                    for &m in members[&g].iter().chain([c].iter()) {
                        expected[m].push(format!("view {} leave {:?}", groups[g], sorted(list.clone())));
                    }
                }
                Op::Send(c, g) if h.clients[c].open => {
                    let seq = h.mcast(c, groups[g], b"p");
                    for &m in members.entry(g).or_default().iter() {
                        expected[m].push(format!("msg {} from {} seq {seq}", groups[g], h.clients[c].session));
                    }
                }
                Op::Disconnect(c) if h.clients[c].open => {
                    received[c].extend(drain(&mut h, c));
                    h.disconnect(c);
                    for (g, set) in members.iter_mut() {
                        if set.remove(&c) {
                            let list: Vec<_> = set.iter().map(|&m| h.clients[m].session).collect();
                            for &m in set.iter() {
                                expected[m].push(format!("view {} disconnect {:?}", groups[*g], sorted(list.clone())));
                            }
                        }
                    }
                }
                _ => {}
            }
            for (c, log) in received.iter_mut().enumerate() {
                if h.clients[c].open {
                    log.extend(drain(&mut h, c));
                }
            }
        }
        // Order is promised within a group (views and messages), not across groups.
        for c in 0..clients.len() {
            for g in groups {
                let of = |v: &Vec<String>| -> Vec<String> {
                    v.iter().filter(|e| e.split(' ').nth(1) == Some(g)).cloned().collect()
                };
                prop_assert_eq!(of(&received[c]), of(&expected[c]), "client {} group {}", c, g);
            }
            prop_assert_eq!(received[c].len(), expected[c].len(), "client {}", c);
        }
    }
}

fn sorted(mut v: Vec<SessionId>) -> Vec<SessionId> {
    v.sort();
    v
}

fn drain(h: &mut Harness, c: usize) -> Vec<String> {
    h.frames(c)
        .into_iter()
        .map(|f| match f {
            Frame::Mcast(m) => format!("msg {} from {} seq {}", m.group, m.sender, m.seq),
            Frame::View(v) => {
                let cause = format!("{:?}", v.cause).to_lowercase();
                let list: Vec<SessionId> = v.members.iter().map(|m| m.session).collect();
                format!("view {} {cause} {:?}", v.group, list)
            }
            other => format!("{other:?}"),
        })
        .collect()
}

/// Connection metadata for a simulated connection from the loopback address.
fn loopback() -> msgc::core::ConnMeta {
    msgc::core::ConnMeta { remote: Some(([127, 0, 0, 1], 40000).into()), tls: None }
}
