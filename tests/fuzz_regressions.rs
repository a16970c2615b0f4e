//! Inputs the fuzz targets (fuzz/, docs/fuzzing.md) crashed on, replayed as plain tests
//! because the fuzz crate does not run in CI, plus a property test per class of crash.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use msgc::core::{ConnId, Flow, Limits, PeerEntry, ServerIdentity, ShardCore, Take};
use msgc::proto::{
    self, encode_mcast, Cause, ErrorCode, Frame, GroupName, Handshake, Member, Name, NodeTag, Role,
    SessionId, View, MAX_ERROR_MESSAGE,
};
use proptest::prelude::*;

/// An ERROR frame with `message` as its raw bytes (not necessarily UTF-8).
fn raw_error(code: u16, flags: u8, message: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(2 + 4 + message.len() as u32);
    b.put_u8(proto::kind::ERROR);
    b.put_u8(flags);
    b.put_u16(code);
    b.put_u16(message.len() as u16);
    b.put_slice(message);
    b.freeze()
}

fn decode_one(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let f = proto::decode(&mut buf, proto::MAX_MAX_FRAME).expect("decodes").expect("complete");
    assert!(buf.is_empty(), "trailing bytes");
    f
}

/// Codec target: 400 bytes of Latin-1 became 1200 bytes of replacement characters, which
/// the encoder cut to 1024: decode → encode → decode changed the message.
#[test]
fn an_error_message_of_invalid_utf8_re_encodes_to_itself() {
    let first = decode_one(&raw_error(1, 0, &[0xe9; 400]));
    let Frame::Error(e) = &first else { panic!("{first:?}") };
    assert!(e.message.len() <= MAX_ERROR_MESSAGE, "kept {} bytes", e.message.len());
    assert!(e.message.starts_with('\u{fffd}'));
    let again = decode_one(&first.to_bytes());
    assert_eq!(again, first);
}

proptest! {
    /// Any ERROR that decodes is stable after one round trip: the message is bounded and
    /// valid UTF-8 from then on.
    #[test]
    fn received_error_frames_are_stable(code in any::<u16>(), fatal in any::<bool>(),
                                        message in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let first = decode_one(&raw_error(code, u8::from(fatal), &message));
        let Frame::Error(e) = &first else { panic!("{first:?}") };
        prop_assert!(e.message.len() <= MAX_ERROR_MESSAGE);
        prop_assert_eq!(decode_one(&first.to_bytes()), first.clone());
        if message.len() <= MAX_ERROR_MESSAGE && std::str::from_utf8(&message).is_ok() {
            prop_assert_eq!(e.message.as_bytes(), &message[..]);
        }
    }
}

/// One shard with one client and one link from a peer that started earlier (so it orders
/// membership), driven as the runtime drives it.
struct OneShard {
    core: ShardCore,
    now: Instant,
    client: ConnId,
    session: SessionId,
    peer: ConnId,
    /// Frames written to the client so far.
    to_client: Vec<Frame>,
    inbox: BytesMut,
}

const PEER_TAG: u32 = 99;

impl OneShard {
    fn new() -> OneShard {
        OneShard::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> OneShard {
        let identity = ServerIdentity {
            node_tag: NodeTag(7),
            node_name: Name::new("self").unwrap(),
            digest: 42,
            boot: 1000,
            entropy: [7; 32],
        };
        let mut core = ShardCore::new(0, 1, identity, limits);
        core.set_peers(
            ["self", "peer1"].map(|n| PeerEntry { name: n.into(), addrs: vec![[127, 0, 0, 1].into()] }),
        );
        let now = Instant::now();
        let client = core.handle_accept(now, loopback());
        let hello = Frame::Hello(Handshake::client(Name::new("c").unwrap(), 1 << 20));
        assert_eq!(core.handle_input(client, &mut BytesMut::from(&hello.to_bytes()[..]), now), Flow::Read);
        let session = core.session_of(client).expect("client session");
        let peer = core.handle_accept(now, loopback());
        let hello = Frame::Hello(Handshake {
            version: msgc::proto::PEER_VERSION,
            role: Role::Peer,
            id: SessionId(5), // its start time: earlier than ours
            digest: 42,
            node_tag: NodeTag(PEER_TAG),
            max_frame: 1 << 20,
            name: Name::new("peer1").unwrap(),
        });
        assert_eq!(core.handle_input(peer, &mut BytesMut::from(&hello.to_bytes()[..]), now), Flow::Read);
        assert_eq!(core.links().len(), 1, "the link is up");
        let mut s =
            OneShard { core, now, client, session, peer, to_client: Vec::new(), inbox: BytesMut::new() };
        s.drain_client();
        s
    }

    fn peer_sends(&mut self, bytes: &[u8]) -> Flow {
        let mut buf = BytesMut::from(bytes);
        loop {
            match self.core.handle_input(self.peer, &mut buf, self.now) {
                Flow::Yield => continue,
                flow => return flow,
            }
        }
    }

    /// The link's socket ends, as the runtime reports it.
    fn peer_lost(&mut self) {
        self.core.handle_eof(self.peer, self.now);
        self.core.handle_task_done(self.peer, self.now);
        self.core.handle_task_done(self.peer, self.now);
    }

    fn drain_client(&mut self) -> Vec<Frame> {
        let mut batch = Vec::new();
        while self.core.take_batch(self.client, &mut batch, self.now) == Take::Write {
            for b in batch.drain(..) {
                self.inbox.extend_from_slice(&b);
            }
        }
        let mut out = Vec::new();
        while let Some(f) = proto::decode(&mut self.inbox, 1 << 20).expect("the server writes valid frames") {
            out.push(f);
        }
        self.to_client.extend(out.iter().cloned());
        out
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
    }
}

fn group() -> GroupName {
    GroupName::new("g").unwrap()
}

/// A session on the peer.
fn remote() -> SessionId {
    SessionId::new(NodeTag(PEER_TAG), 1)
}

/// A VIEW of `g` from the peer, listing our client and one of the peer's sessions.
fn view_from_peer(s: &OneShard, view_id: u64) -> Bytes {
    Frame::View(View {
        cause: Cause::Join,
        group: group(),
        view_id,
        group_seq: 0,
        subject: s.session,
        members: vec![
            Member { session: s.session, name: Name::new("c").unwrap() },
            Member { session: remote(), name: Name::new("r").unwrap() },
        ],
    })
    .to_bytes()
}

/// Core target: the leader's VIEW with view id u64::MAX was installed; when the link went
/// down this server took over ordering and numbered the next view `u64::MAX + 1`.
#[test]
fn a_view_id_at_u64_max_from_a_peer_does_not_overflow() {
    let mut s = OneShard::new();
    let _ = s.peer_sends(&view_from_peer(&s, u64::MAX));
    s.drain_client();
    s.peer_lost();
    s.tick(Duration::from_secs(1));
    s.drain_client();
    // Whatever was accepted, no view id ever went backwards (wrapped) at the client.
    let ids: Vec<u64> = s
        .to_client
        .iter()
        .filter_map(|f| if let Frame::View(v) = f { Some(v.view_id) } else { None })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "view ids {ids:?}");
    // The client is still served.
    let mut join = BytesMut::from(&Frame::Join(GroupName::new("other").unwrap()).to_bytes()[..]);
    assert_eq!(s.core.handle_input(s.client, &mut join, s.now), Flow::Read);
    assert!(s.drain_client().iter().any(|f| matches!(f, Frame::View(v) if v.group.as_str() == "other")));
}

/// Core target: an MCAST relayed by the peer with seq u64::MAX was recorded for gap notices;
/// when the link was lost the gap's first missing number was `u64::MAX + 1`. Now numbers no
/// client may send (2^62 and above) are dropped on arrival, and nothing overflows.
#[test]
fn a_sequence_number_at_u64_max_from_a_peer_does_not_overflow() {
    let mut s = OneShard::new();
    let mut join = BytesMut::from(&Frame::Join(group()).to_bytes()[..]);
    assert_eq!(s.core.handle_input(s.client, &mut join, s.now), Flow::Read);
    // The peer orders membership: our join went to it; it answers with the view.
    let _ = s.peer_sends(&view_from_peer(&s, 1));
    s.drain_client();
    let mut run = BytesMut::new();
    encode_mcast(&mut run, remote(), u64::MAX - 1, &group(), b"a");
    encode_mcast(&mut run, remote(), u64::MAX, &group(), b"b");
    assert_eq!(s.peer_sends(&run), Flow::Read);
    let got = s.drain_client();
    assert_eq!(got.iter().filter(|f| matches!(f, Frame::Mcast(_))).count(), 0, "{got:?}");
    s.peer_lost();
    // Nothing can be missing after u64::MAX: no gap notice for that sender.
    let frames = s.drain_client();
    assert!(!frames.iter().any(|f| matches!(f, Frame::Gap(g) if g.sender == remote())), "{frames:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Numbers a peer chooses, near the top of their range, never panic the core: view ids
    /// of VIEWs and PEER_STATEs, sequence numbers of relayed MCASTs, then the link is lost.
    #[test]
    fn peer_numbers_near_u64_max_never_panic(
        view_ids in proptest::collection::vec(prop_oneof![Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()], 1..4),
        seqs in proptest::collection::vec(prop_oneof![Just(u64::MAX), any::<u64>()], 1..4),
        lose_link in any::<bool>(),
    ) {
        let mut s = OneShard::new();
        let mut join = BytesMut::from(&Frame::Join(group()).to_bytes()[..]);
        s.core.handle_input(s.client, &mut join, s.now);
        let mut input = BytesMut::new();
        for &id in &view_ids {
            input.extend_from_slice(&view_from_peer(&s, id));
            let state = proto::PeerState { shard: 0, shards: 1, more: false, version: 0, views: vec![(group(), id, 0)] };
            Frame::PeerState(state).encode(&mut input);
        }
        for &seq in &seqs {
            encode_mcast(&mut input, remote(), seq, &group(), b"x");
        }
        let _ = s.peer_sends(&input);
        if lose_link {
            s.peer_lost();
        }
        s.tick(Duration::from_secs(1));
        s.drain_client();
        let mut leave = BytesMut::from(&Frame::Leave(group()).to_bytes()[..]);
        s.core.handle_input(s.client, &mut leave, s.now);
        s.drain_client();
        for f in &s.to_client {
            if let Frame::Error(e) = f {
                prop_assert!(e.code != ErrorCode::Malformed, "the server blamed the client: {e:?}");
            }
        }
    }
}

/// Metadata of a connection from the loopback address (where the peer is listed).
fn loopback() -> msgc::core::ConnMeta {
    msgc::core::ConnMeta { remote: Some(([127, 0, 0, 1], 40000).into()), tls: None }
}

/// Core target: a linked server announces 16 members with 255-byte names in a group with a
/// long name; at the smallest frame limit (4 KiB) the VIEW this server then sends to the
/// link was 4205 bytes, which no receiver accepts (it closes the link, which comes back and
/// gets the view again). The same happened at the default 1 MiB limit with about 4000 such
/// members. Fixed by issue 8 item 3: a member whose view would not fit is refused.
#[test]
fn a_view_never_exceeds_the_frame_limit() {
    let max_frame = proto::MIN_MAX_FRAME;
    let mut s = OneShard::with_limits(Limits { max_frame, ..Limits::default() });
    let g = GroupName::new(&"x".repeat(209)).unwrap();
    // The peer says it links to us and started after us: we order views for both.
    let topo = proto::PeerTopo {
        origin: NodeTag(PEER_TAG),
        version: 1,
        boot: 2000,
        epoch: 1,
        leader: NodeTag(PEER_TAG),
        name: Name::new("peer1").unwrap(),
        neighbors: vec![NodeTag(7)],
    };
    assert_eq!(s.peer_sends(&Frame::PeerTopo(topo).to_bytes()), Flow::Read);
    // It installs our configuration and sends its (empty) state, as a server does; until
    // every member's state is in, we hold views.
    let state = proto::PeerState { shard: 0, shards: 1, more: false, version: 0, views: Vec::new() };
    assert_eq!(s.peer_sends(&Frame::PeerState(state).to_bytes()), Flow::Read);
    let mut joins = BytesMut::new();
    for serial in 1..=16 {
        let member = Member {
            session: SessionId::new(NodeTag(PEER_TAG), serial),
            name: Name::new(&"n".repeat(255)).unwrap(),
        };
        let version = proto::MemberVersion::pack(0, u64::from(serial));
        Frame::PeerJoin(proto::PeerJoin { cause: Cause::Join, group: g.clone(), member, version })
            .encode(&mut joins);
    }
    assert_eq!(s.peer_sends(&joins), Flow::Read);
    let mut out = BytesMut::new();
    let mut batch = Vec::new();
    while s.core.take_batch(s.peer, &mut batch, s.now) == Take::Write {
        for b in batch.drain(..) {
            out.extend_from_slice(&b);
        }
    }
    let mut views = 0;
    loop {
        match proto::decode(&mut out, max_frame) {
            Ok(Some(Frame::View(_))) => views += 1,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => panic!("the peer cannot read what this server sent it: {e}"),
        }
    }
    assert!(views > 0, "the joins produced no view");
}
