//! A hostile network, tried against real servers on 127.0.0.1: impostor peers, forged peer
//! frames, out-of-range numbers, oversized views, floods of silent connections, and the
//! configured bounds on connections, groups and members.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::*;
use msgc::core::{ClusterSecret, Limits};
use msgc::proto::{
    Cause, ErrorCode, Frame, GroupName, Handshake, Member, Name, NodeTag, PeerAuth, PeerJoin, PeerLeave,
    PeerMark, PeerState, Role, SenderEnd, SessionId, View,
};
use msgc::runtime::{PeerSpec, ServerHandle};

fn limits() -> Limits {
    Limits {
        reconnect_interval: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

fn peer_hello(name: &str, tag: u32) -> Frame {
    Frame::Hello(Handshake {
        version: msgc::proto::PEER_VERSION,
        role: Role::Peer,
        id: SessionId(1),
        digest: 0,
        node_tag: NodeTag(tag),
        max_frame: 1 << 20,
        name: Name::new(name).unwrap(),
    })
}

/// The connection must end with a fatal ERROR with `code` (frames before it are skipped).
fn expect_fatal(c: &mut RawClient, code: ErrorCode) {
    let frames = c.read_to_end();
    match frames.iter().find(|f| matches!(f, Frame::Error(_))) {
        Some(Frame::Error(e)) => assert_eq!((e.code, e.fatal), (code, true), "{}", e.message),
        other => panic!("expected a fatal {code:?}, got {other:?} (all: {frames:?})"),
    }
}

#[test]
fn an_impostor_naming_a_listed_server_that_is_down_is_refused() {
    let server = start_node("guard", 2, limits());
    // "ghost" is listed at an address this test does not connect from.
    server.set_peers(vec![
        PeerSpec { name: "guard".into(), addr: addr(&server).to_string() },
        PeerSpec { name: "ghost".into(), addr: "192.0.2.1:4809".into() },
    ]);
    let mut impostor = RawClient::connect_raw(addr(&server));
    impostor.send(&peer_hello("ghost", 0x0bad));
    expect_fatal(&mut impostor, ErrorCode::NotAuthorized);
    wait_for("auth failure counted", || server.stats().auth_failures == 1);
    assert_eq!(server.stats().links_up, 0);
}

/// Servers that share the cluster secret link; one with another secret, and a raw
/// impostor that cannot answer the challenge, do not.
#[test]
fn a_cluster_secret_admits_its_servers_only() {
    let good = Limits { cluster_secret: Some(ClusterSecret::new(b"the-right-secret-123")), ..limits() };
    let bad = Limits { cluster_secret: Some(ClusterSecret::new(b"some-other-secret-456")), ..limits() };
    let s1 = start_node("sec-a1", 1, good.clone());
    let s2 = start_node("sec-a2", 1, good);
    let s3 = start_node("sec-a3", 1, bad);
    let table: Vec<PeerSpec> = [("sec-a1", &s1), ("sec-a2", &s2), ("sec-a3", &s3)]
        .iter()
        .map(|(n, s)| PeerSpec { name: n.to_string(), addr: addr(s).to_string() })
        .collect();
    for s in [&s1, &s2, &s3] {
        s.set_peers(table.clone());
    }
    wait_for("a1 and a2 link", || s1.stats().links_up >= 1 && s2.stats().links_up >= 1);
    // a1 and a2 dial a3 (names order who dials); a3 finds their proofs wrong.
    wait_for("a3 refuses both", || s3.stats().auth_failures >= 2);
    assert_eq!(s3.stats().links_up, 0, "a server with the wrong secret never links");
    // Groups span the servers that share the secret.
    let mut c1 = RawClient::connect(addr(&s1), "c1");
    let mut c2 = RawClient::connect(addr(&s2), "c2");
    c1.join("g");
    c1.wait_view("g", 1);
    c2.join("g");
    c2.wait_view("g", 2);
    // A raw impostor gets a challenge and cannot answer it.
    let mut impostor = RawClient::connect_raw(addr(&s2));
    impostor.send(&peer_hello("sec-a3", 0x0bad));
    match impostor.next_significant() {
        Some(Frame::PeerChallenge(_)) => {}
        other => panic!("expected PEER_CHALLENGE, got {other:?}"),
    }
    impostor.send(&Frame::PeerProof(PeerAuth { nonce: [1; 32], mac: [2; 32] }));
    expect_fatal(&mut impostor, ErrorCode::NotAuthorized);
}

/// A fake peer this server dials: it completes the handshake with a later start time
/// (so the server orders membership) and then says what an honest server never says.
struct FakePeer {
    listener: TcpListener,
    tag: NodeTag,
}

impl FakePeer {
    fn new(server: &ServerHandle, me: &str) -> FakePeer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // "zz-" sorts after the server's name, so the server dials the fake.
        server.set_peers(vec![
            PeerSpec { name: me.into(), addr: addr(server).to_string() },
            PeerSpec { name: "zz-fake".into(), addr: listener.local_addr().unwrap().to_string() },
        ]);
        listener.set_nonblocking(true).unwrap();
        FakePeer { listener, tag: NodeTag(0xfa4e) }
    }

    /// Waits for the server to dial, answers its HELLO, returns the link.
    fn accept(&self) -> RawClient {
        let mut link = None;
        wait_for("the server dials the fake peer", || {
            link = self.listener.accept().ok().map(|(s, _)| s);
            link.is_some()
        });
        let stream = link.unwrap();
        stream.set_nonblocking(false).unwrap();
        let mut c = RawClient::from_stream(stream);
        match c.next_significant() {
            Some(Frame::Hello(h)) => assert_eq!(h.role, Role::Peer),
            other => panic!("expected HELLO, got {other:?}"),
        }
        c.send(&Frame::Welcome(Handshake {
            version: msgc::proto::PEER_VERSION,
            role: Role::Peer,
            id: SessionId(u64::MAX >> 1),
            digest: 0,
            node_tag: self.tag,
            max_frame: 1 << 20,
            name: Name::new("zz-fake").unwrap(),
        }));
        c
    }
}

#[test]
fn forged_and_out_of_range_peer_frames_are_refused() {
    let server = start_node("victim", 2, limits());
    let fake = FakePeer::new(&server, "victim");
    let mut link = fake.accept();
    let mut member = RawClient::connect(addr(&server), "member");
    member.join("g");
    let view = member.wait_view("g", 1);
    wait_for("link up", || server.stats().links_up >= 1);

    // A VIEW wiping the group, from a server that does not order membership: dropped.
    let wipe = View {
        cause: Cause::Network,
        group: GroupName::new("g").unwrap(),
        view_id: view.view_id + 100,
        group_seq: 0,
        subject: SessionId::NONE,
        members: Vec::new(),
    };
    link.send(&Frame::View(wipe));
    wait_for("forged view counted", || server.stats().peer_violations >= 1);
    // A PEER_LEAVE for a session of another server: the link is closed.
    link.send(&Frame::PeerLeave(PeerLeave {
        cause: Cause::Leave,
        group: GroupName::new("g").unwrap(),
        session: member.session,
        version: 0,
    }));
    expect_fatal(&mut link, ErrorCode::BadSender);
    // The member is still in the group: a second member sees both.
    let mut other = RawClient::connect(addr(&server), "other");
    other.join("g");
    let v = other.wait_view("g", 2);
    assert!(v.members.iter().any(|m| m.session == member.session));

    // Redialed: a view id at the end of the range closes the link too.
    let mut link = fake.accept();
    let state = PeerState {
        shard: 0,
        shards: 1,
        more: false,
        version: 0,
        views: vec![(GroupName::new("g").unwrap(), u64::MAX, 0)],
    };
    link.send(&Frame::PeerState(state));
    expect_fatal(&mut link, ErrorCode::BadSender);
    // And a PEER_JOIN claiming a session of this server.
    let mut link = fake.accept();
    let forged =
        Member { session: SessionId::new(server.node_tag(), 77), name: Name::new("forged").unwrap() };
    link.send(&Frame::PeerJoin(PeerJoin {
        cause: Cause::Join,
        group: GroupName::new("g").unwrap(),
        member: forged,
        version: 0,
    }));
    expect_fatal(&mut link, ErrorCode::BadSender);
    wait_for("violations counted", || server.stats().peer_violations >= 4 && server.stats().links_down >= 3);
}

#[test]
fn every_shard_answers_a_survivors_question_and_a_malformed_one_is_refused() {
    let server = start_node("victim", 2, limits());
    let fake = FakePeer::new(&server, "victim");
    let mut link = fake.accept();
    wait_for("link up", || server.stats().links_up >= 1);
    let ask = |view_id: u64, prev: u64, ends: Vec<SenderEnd>| {
        Frame::PeerMark(PeerMark {
            group: GroupName::new("g").unwrap(),
            view_id,
            prev,
            shard: 0,
            shards: 1,
            more: false,
            lost: false,
            ask: true,
            answer: false,
            ends,
        })
    };
    // Nothing of a lost server was delivered here (there is no group g): each of the two
    // shards answers once, with no ends, for the view asked: before a view (9 after 8), and
    // about the installed one with none awaited (8 and 8).
    for (view_id, prev) in [(9, 8), (8, 8)] {
        link.send(&ask(view_id, prev, vec![]));
        let mut answered = Vec::new();
        for _ in 0..1000 {
            if answered.len() == 2 {
                break;
            }
            match link.next_within(Duration::from_secs(5)) {
                Ok(Some(Frame::PeerMark(m))) if m.answer => {
                    assert_eq!((m.view_id, m.prev, m.more, m.ends.len()), (view_id, prev, false, 0), "{m:?}");
                    answered.push(m.shard);
                }
                Ok(Some(_)) => {}
                other => panic!("expected the shards' answers, got {other:?} after {answered:?}"),
            }
        }
        answered.sort_unstable();
        assert_eq!(answered, vec![0, 1]);
    }
    // A question that lists senders is no question: the link is closed.
    let end = SenderEnd { sender: SessionId::new(NodeTag(0xbeef), 1), first: 1, seq: 1, stamp: 8 };
    link.send(&ask(9, 8, vec![end]));
    expect_fatal(&mut link, ErrorCode::BadSender);
    wait_for("violation counted", || server.stats().peer_violations >= 1);
    // Nor is one about a view after the one it awaits.
    let mut link = fake.accept();
    link.send(&ask(8, 9, vec![]));
    expect_fatal(&mut link, ErrorCode::BadSender);
    wait_for("violations counted", || server.stats().peer_violations >= 2);
}

#[test]
fn views_never_outgrow_a_frame_and_groups_are_bounded() {
    // 8 KiB frames: about 30 members with 255-byte names fit in one VIEW.
    let server = start_server(1, Limits { max_frame: 8192, max_group_members: 1000, ..Limits::default() });
    let mut members = Vec::new();
    let refused = loop {
        assert!(members.len() < 100, "joins never refused");
        let name = format!("{:0>255}", members.len());
        let mut c = RawClient::connect(addr(&server), &name);
        c.join("big");
        match c.next_significant() {
            Some(Frame::View(v)) => {
                assert!(v.members.len() == members.len() + 1);
                members.push(c);
            }
            Some(Frame::Error(e)) => break e,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((refused.code, refused.fatal), (ErrorCode::LimitReached, false), "{}", refused.message);
    assert!(members.len() >= 25, "only {} members fit", members.len());

    // Members per group, and groups per session.
    let server =
        start_server(1, Limits { max_group_members: 2, max_groups_per_session: 2, ..Limits::default() });
    let mut a = RawClient::connect(addr(&server), "a");
    let mut b = RawClient::connect(addr(&server), "b");
    let mut c = RawClient::connect(addr(&server), "c");
    a.join("g");
    a.wait_view("g", 1);
    b.join("g");
    b.wait_view("g", 2);
    c.join("g");
    match c.next_significant() {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::LimitReached, "{}", e.message),
        other => panic!("expected LimitReached, got {other:?}"),
    }
    a.join("h");
    a.wait_view("h", 1);
    a.join("i");
    match a.next_significant() {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::LimitReached, "{}", e.message),
        other => panic!("expected LimitReached, got {other:?}"),
    }
    wait_for("refusals counted", || server.stats().limit_refusals == 2);
}

#[test]
fn connections_over_max_connections_are_told_and_closed() {
    let server = start_server(1, Limits { max_connections: 3, ..Limits::default() });
    let _kept: Vec<RawClient> = (0..3).map(|i| RawClient::connect(addr(&server), &format!("c{i}"))).collect();
    let mut over = RawClient::connect_raw(addr(&server));
    expect_fatal(&mut over, ErrorCode::LimitReached);
}

/// Resident memory of this process (the server runs in it), in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Many connections that never finish a handshake, half of them announcing a 1 MiB frame:
/// they cost a few KiB each, the liars are closed at once, the silent ones at the
/// handshake timeout.
#[test]
fn silent_and_lying_connections_cost_little_and_are_closed() {
    raise_fd_limit();
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    // Two descriptors per connection in this process (client and server side).
    let n = (10_000usize).min((limit.rlim_cur as usize).saturating_sub(200) / 2);
    let limits =
        Limits { handshake_timeout: Duration::from_secs(2), max_handshakes: 20_000, ..Limits::default() };
    let server = start_server(2, limits);
    let before = rss();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = RawClient::connect_raw(addr(&server));
        if i % 2 == 0 {
            // A header announcing a 1 MiB MCAST, and nothing more.
            let _ = c.send_bytes(&[&(1u32 << 20).to_be_bytes()[..], &[0x10, 0]].concat());
        }
        conns.push(c);
    }
    wait_for("every connection accepted", || server.stats().accepted >= n as u64);
    let grown = rss().saturating_sub(before);
    // Before the bound: 3000 such connections took about 400 MiB (tcpbuf_size per read).
    assert!(grown < 96 << 20, "{n} pending connections grew the process by {} MiB", grown >> 20);
    wait_for("all closed", || server.stats().closed >= n as u64);
    let s = server.stats();
    assert!(s.killed_handshake >= (n / 2) as u64, "{s:?}");
    assert!(s.protocol_errors >= (n / 2) as u64, "{s:?}");
    eprintln!("{n} connections: +{} MiB resident", grown >> 20);
}

/// A server of the previous server protocol (version 1, before server membership) is
/// refused, and told why, rather than linked half-working.
#[test]
fn a_peer_of_the_previous_server_protocol_is_refused_saying_why() {
    let server = start_node("v2", 1, limits());
    server.set_peers(vec![
        PeerSpec { name: "v2".into(), addr: addr(&server).to_string() },
        PeerSpec { name: "old".into(), addr: "127.0.0.1:9".into() },
    ]);
    let mut old = RawClient::connect_raw(addr(&server));
    let Frame::Hello(h) = peer_hello("old", 0x0dd) else { unreachable!() };
    old.send(&Frame::Hello(Handshake { version: 1, ..h }));
    let frames = old.read_to_end();
    match frames.iter().find(|f| matches!(f, Frame::Error(_))) {
        Some(Frame::Error(e)) => {
            assert_eq!((e.code, e.fatal), (ErrorCode::BadHandshake, true), "{}", e.message);
            assert!(
                e.message.contains("server protocol 1") && e.message.contains("upgrade"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a fatal BadHandshake, got {other:?}"),
    }
    assert_eq!(server.stats().links_up, 0);
}
