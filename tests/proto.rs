//! The codec: roundtrips of every frame kind, decoding from every split point, and hostile
//! input that must be rejected without a panic or a large allocation.

use bytes::{Bytes, BytesMut};
use msgc::proto::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

fn name() -> impl Strategy<Value = Name> {
    "[a-zA-Z0-9é✓ _.-]{0,20}".prop_map(|s| Name::new(&s).unwrap())
}
fn group() -> impl Strategy<Value = GroupName> {
    "[a-zA-Z0-9ü✓_.-]{1,30}".prop_map(|s| GroupName::new(&s).unwrap())
}
fn cause() -> impl Strategy<Value = Cause> {
    prop_oneof![Just(Cause::Join), Just(Cause::Leave), Just(Cause::Disconnect), Just(Cause::Network)]
}
fn handshake() -> impl Strategy<Value = Handshake> {
    (
        any::<u16>(),
        prop_oneof![Just(Role::Client), Just(Role::Peer)],
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        name(),
    )
        .prop_map(|(version, role, id, digest, tag, max_frame, name)| Handshake {
            version,
            role,
            id: SessionId(id),
            digest,
            node_tag: NodeTag(tag),
            max_frame,
            name,
        })
}
fn member() -> impl Strategy<Value = Member> {
    (any::<u64>(), name()).prop_map(|(s, name)| Member { session: SessionId(s), name })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        handshake().prop_map(Frame::Hello),
        handshake().prop_map(Frame::Welcome),
        group().prop_map(Frame::Join),
        group().prop_map(Frame::Leave),
        Just(Frame::Noop),
        (0usize..17, any::<bool>(), "[ -~é]{0,40}").prop_map(|(c, fatal, message)| {
            let codes = [
                ErrorCode::Malformed,
                ErrorCode::UnknownKind,
                ErrorCode::TooLarge,
                ErrorCode::BadHandshake,
                ErrorCode::Unexpected,
                ErrorCode::BadGroup,
                ErrorCode::BadSender,
                ErrorCode::BadSequence,
                ErrorCode::AlreadyMember,
                ErrorCode::NotMember,
                ErrorCode::Stuck,
                ErrorCode::IdleTimeout,
                ErrorCode::ShuttingDown,
                ErrorCode::LimitReached,
                ErrorCode::HandshakeTimeout,
                ErrorCode::NotAuthorized,
                ErrorCode::Draining,
            ];
            Frame::Error(ErrorFrame { code: codes[c], fatal, message })
        }),
        (any::<u64>(), any::<u64>(), any::<u64>(), group(), proptest::collection::vec(any::<u8>(), 0..2000))
            .prop_map(|(s, seq, order, group, p)| Frame::Mcast(Mcast {
                sender: SessionId(s),
                seq,
                order,
                group,
                payload: Bytes::from(p)
            })),
        (
            cause(),
            group(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(member(), 0..20)
        )
            .prop_map(|(cause, group, view_id, group_seq, subject, members)| Frame::View(View {
                cause,
                group,
                view_id,
                group_seq,
                subject: SessionId(subject),
                members
            })),
        (
            prop_oneof![Just(GapReason::LinkLost), Just(GapReason::Reconnected), Just(GapReason::ServerLost)],
            group(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(reason, group, s, first, last)| Frame::Gap(Gap {
                reason,
                group,
                sender: SessionId(s),
                first,
                last
            })),
        (cause(), group(), member(), any::<u64>()).prop_map(|(cause, group, member, version)| {
            Frame::PeerJoin(PeerJoin { cause, group, member, version })
        }),
        (cause(), group(), any::<u64>(), any::<u64>()).prop_map(|(cause, group, s, version)| {
            Frame::PeerLeave(PeerLeave { cause, group, session: SessionId(s), version })
        }),
        (group(), any::<u64>()).prop_map(|(group, view_id)| Frame::PeerStamp(PeerStamp { group, view_id })),
        (
            group(),
            any::<(u64, u64)>(),
            1u16..64,
            any::<(bool, bool, bool, bool)>(),
            proptest::collection::vec(any::<(u64, u64, u64, u64)>(), 0..4)
        )
            .prop_map(|(group, (view_id, prev), shards, (more, lost, ask, answer), ends)| {
                Frame::PeerMark(PeerMark {
                    group,
                    view_id,
                    prev,
                    shard: shards - 1,
                    shards,
                    more,
                    lost,
                    ask,
                    answer,
                    ends: ends
                        .into_iter()
                        .map(|(s, first, seq, stamp)| SenderEnd { sender: SessionId(s), first, seq, stamp })
                        .collect(),
                })
            }),
        (
            1u16..64,
            any::<u16>(),
            any::<bool>(),
            any::<u64>(),
            proptest::collection::vec((group(), any::<u64>(), any::<u64>()), 0..10)
        )
            .prop_map(|(shards, s, more, version, views)| Frame::PeerState(PeerState {
                shard: s % shards,
                shards,
                more,
                version,
                views
            })),
        (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<bool>()).prop_map(|(nonce, mac, challenge)| {
            let a = PeerAuth { nonce, mac };
            if challenge {
                Frame::PeerChallenge(a)
            } else {
                Frame::PeerProof(a)
            }
        }),
    ]
}

const MAX: usize = 1 << 20;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_frame_roundtrips(f in frame()) {
        let bytes = f.to_bytes();
        let mut buf = BytesMut::from(&bytes[..]);
        let back = decode(&mut buf, MAX).unwrap().unwrap();
        prop_assert_eq!(back, f);
        prop_assert!(buf.is_empty(), "consumed exactly the frame");
    }

    #[test]
    fn a_stream_of_frames_decodes_from_any_chunking(frames in proptest::collection::vec(frame(), 1..8), cuts in proptest::collection::vec(1usize..64, 1..40)) {
        let mut stream = BytesMut::new();
        for f in &frames { f.encode(&mut stream); }
        let stream = stream.freeze();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < stream.len() {
            let n = cuts[i % cuts.len()].min(stream.len() - at);
            i += 1;
            buf.extend_from_slice(&stream[at..at + n]);
            at += n;
            while let Some(f) = decode(&mut buf, MAX).unwrap() { got.push(f); }
        }
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..64 {
            match decode(&mut buf, 4096) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }

    /// A well-formed header with a random kind and body: rejected or decoded, never a panic.
    #[test]
    fn random_bodies_never_panic(kind in any::<u8>(), flags in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut b = BytesMut::new();
        b.extend_from_slice(&((body.len() + 2) as u32).to_be_bytes());
        b.extend_from_slice(&[kind, flags]);
        b.extend_from_slice(&body);
        let _ = decode(&mut b, 4096);
    }
}

#[test]
fn every_kind_decodes_only_when_complete_at_every_split() {
    let mut rt = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..200 {
        let f = frame().new_tree(&mut rt).unwrap().current();
        let bytes = f.to_bytes();
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            assert_eq!(decode(&mut buf, MAX).unwrap(), None, "{} incomplete at {split}", f.name());
            assert_eq!(buf.len(), split, "nothing consumed");
            buf.extend_from_slice(&bytes[split..]);
            assert_eq!(decode(&mut buf, MAX).unwrap().as_ref(), Some(&f));
        }
    }
}

#[test]
fn limits_are_checked_before_the_body_arrives() {
    let mut buf = BytesMut::from(&(5000u32).to_be_bytes()[..]);
    assert!(matches!(decode(&mut buf, 4096), Err(ProtoError::TooLarge { size: 5004, max: 4096 })));
    let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 5][..]);
    assert!(matches!(decode(&mut buf, 4096), Err(ProtoError::TooShort(1))));
    let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 0x05, 0x80][..]);
    assert!(matches!(decode(&mut buf, 4096), Err(ProtoError::Malformed(_))), "reserved flag bits");
    let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 0x7e, 0][..]);
    assert!(matches!(decode(&mut buf, 4096), Err(ProtoError::UnknownKind(0x7e))));
    // A VIEW claiming four billion members in a short frame: rejected, nothing allocated.
    let mut v = BytesMut::new();
    v.extend_from_slice(&36u32.to_be_bytes());
    v.extend_from_slice(&[0x11, 0, 1, 1]);
    v.extend_from_slice(&[0u8; 24]);
    v.extend_from_slice(&u32::MAX.to_be_bytes());
    v.extend_from_slice(b"g");
    v.extend_from_slice(&[0u8; 3]);
    assert!(matches!(decode(&mut v, 4096), Err(ProtoError::Malformed(_))));
}

/// PEER_RELAY keeps its RESENT and PASSED flags through the codec, and a flag bit it does
/// not define is refused.
#[test]
fn relay_flags_roundtrip_and_unknown_ones_are_refused() {
    let inner = Frame::PeerAck(7).to_bytes();
    for (resent, passed) in [(false, false), (true, false), (true, true)] {
        let f = Frame::PeerRelay(PeerRelay {
            origin: NodeTag(1001),
            dest: NodeTag(2001),
            hops: 2,
            resent,
            passed,
            frames: inner.clone(),
        });
        let bytes = f.to_bytes();
        assert_eq!(bytes[5], (u8::from(resent) * RELAY_RESENT) | (u8::from(passed) * RELAY_PASSED));
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut buf, MAX).unwrap(), Some(f));
    }
    let mut bytes = BytesMut::from(&relay_header(NodeTag(1), NodeTag(2), 1, true, true, inner.len())[..]);
    bytes.extend_from_slice(&inner);
    bytes[5] |= 0x04;
    assert!(matches!(decode(&mut bytes, MAX), Err(ProtoError::Malformed(_))));
}
