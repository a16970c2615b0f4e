//! A real server on 127.0.0.1 (port 0) with raw protocol clients.

mod common;

use std::time::Duration;

use common::*;
use msgc::core::Limits;
use msgc::proto::{Cause, ErrorCode, Frame};

#[test]
fn join_multicast_views_and_leave_across_two_shards() {
    let server = start_server(2, Limits::default());
    let mut a = RawClient::connect(addr(&server), "a");
    let mut b = RawClient::connect(addr(&server), "b");
    let mut outsider = RawClient::connect(addr(&server), "outsider");
    // Session ids are unique and carry the server's tag.
    assert_ne!(a.session, b.session);
    assert_eq!(a.session.node(), server.node_tag());

    a.join("room");
    let v = a.wait_view("room", 1);
    assert_eq!((v.cause, v.subject), (Cause::Join, a.session));
    b.join("room");
    let va = a.wait_view("room", 2);
    let vb = b.wait_view("room", 2);
    assert_eq!(va, vb, "both members see the same view");
    assert!(va.view_id > v.view_id);
    assert_eq!(va.members[0].name.as_str(), if va.members[0].session == a.session { "a" } else { "b" });

    // A non-member may send; members (including a sending member) receive in order.
    for i in 0..100 {
        outsider.mcast("room", format!("o{i}").as_bytes());
        a.mcast("room", format!("a{i}").as_bytes());
    }
    for c in [&mut a, &mut b] {
        let (mut from_o, mut from_a) = (0u64, 0u64);
        while from_o < 100 || from_a < 100 {
            match c.next_significant() {
                Some(Frame::Mcast(m)) => {
                    let counter = if m.sender == outsider.session { &mut from_o } else { &mut from_a };
                    *counter += 1;
                    assert_eq!(m.seq, *counter, "per-sender FIFO without gaps");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(outsider.next_within(Duration::from_millis(200)).is_err(), "a non-member receives nothing");

    b.leave("room");
    let last = b.wait_view("room", 1);
    assert_eq!((last.cause, last.subject), (Cause::Leave, b.session));
    assert_eq!(a.wait_view("room", 1).cause, Cause::Leave);
    drop(b);
    a.join("other");
    a.wait_view("other", 1);
    server.shutdown();
}

#[test]
fn a_disconnect_produces_a_disconnect_view() {
    let server = start_server(2, Limits::default());
    let mut a = RawClient::connect(addr(&server), "a");
    let mut b = RawClient::connect(addr(&server), "b");
    a.join("g");
    b.join("g");
    a.wait_view("g", 2);
    drop(b);
    let v = a.wait_view("g", 1);
    assert_eq!(v.cause, Cause::Disconnect);
}

#[test]
fn a_thousand_clients_on_one_server() {
    raise_fd_limit();
    let server = start_server(2, Limits::default());
    let mut clients: Vec<RawClient> =
        (0..1000).map(|i| RawClient::connect(addr(&server), &format!("c{i}"))).collect();
    // 100 groups of 10.
    for (i, c) in clients.iter_mut().enumerate() {
        c.join(&format!("g{}", i % 100));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.wait_view(&format!("g{}", i % 100), 10);
    }
    // One message per group from its first member; all 10 members get it.
    for (g, c) in clients.iter_mut().take(100).enumerate() {
        c.mcast(&format!("g{g}"), b"hi");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        match c.next_significant() {
            Some(Frame::Mcast(m)) => {
                assert_eq!(m.group.as_str(), format!("g{}", i % 100));
                assert_eq!(&m.payload[..], b"hi");
            }
            other => panic!("client {i}: {other:?}"),
        }
    }
    assert_eq!(server.stats().killed_stuck, 0);
}

#[test]
fn a_receiver_that_never_reads_is_killed_and_others_get_everything() {
    let limits = Limits {
        max_backlog: 200,
        tcpbuf_size: 16384,
        stall_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let server = start_server(2, limits);
    let mut sleeper = RawClient::connect(addr(&server), "sleeper");
    sleeper.stream.set_read_timeout(None).unwrap();
    let mut fast = RawClient::connect(addr(&server), "fast");
    let mut publisher = RawClient::connect(addr(&server), "pub");
    sleeper.join("g");
    sleeper.wait_view("g", 1);
    fast.join("g");
    fast.wait_view("g", 2);
    // The sleeper stops reading now. 8 KiB payloads fill its socket buffers quickly.
    let payload = vec![7u8; 8192];
    let total = 2000u64;
    let reader = std::thread::spawn(move || {
        let mut next = 1;
        let mut view = None;
        while next <= total {
            match fast.next_significant() {
                Some(Frame::Mcast(m)) => {
                    assert_eq!(m.seq, next, "no gap, no reorder");
                    next += 1;
                }
                Some(Frame::View(v)) => view = Some(v),
                other => panic!("unexpected {other:?}"),
            }
        }
        (fast, view)
    });
    for _ in 0..total {
        publisher.mcast("g", &payload);
    }
    let (mut fast, view) = reader.join().expect("fast receiver got every message in order");
    // The sleeper was cut: its membership ends with a Disconnect view...
    let v = view.unwrap_or_else(|| fast.wait_view("g", 1));
    assert_eq!(v.members.len(), 1);
    assert_eq!((v.cause, v.subject), (Cause::Disconnect, sleeper.session));
    // ...and the counter says why.
    wait_for("stuck counter", || server.stats().killed_stuck == 1);
}

#[test]
fn bad_frames_get_an_error_and_a_close_and_others_are_unaffected() {
    let server = start_server(2, Limits { max_frame: 4096, ..Limits::default() });
    let mut good = RawClient::connect(addr(&server), "good");
    good.join("g");
    good.wait_view("g", 1);
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec(), ErrorCode::TooLarge),
        ("oversized", [&(5000u32).to_be_bytes()[..], &[0x10, 0]].concat(), ErrorCode::TooLarge),
        ("too short", [&1u32.to_be_bytes()[..], &[0x05]].concat(), ErrorCode::Malformed),
        ("unknown kind", [&2u32.to_be_bytes()[..], &[0x7e, 0]].concat(), ErrorCode::UnknownKind),
        ("join before hello", [&4u32.to_be_bytes()[..], &[0x03, 0, 1, b'g']].concat(), ErrorCode::Unexpected),
        (
            "bad magic",
            [&38u32.to_be_bytes()[..], &[0x01, 0], b"XXXX", &[0u8; 32]].concat(),
            ErrorCode::BadHandshake,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut c = RawClient::connect_raw(addr(&server));
        c.send_bytes(&bytes).unwrap();
        let frames = c.read_to_end();
        match frames.as_slice() {
            [Frame::Error(e)] => {
                assert_eq!(e.code, code, "{what}: {}", e.message);
                assert!(e.fatal, "{what}");
            }
            other => panic!("{what}: expected one fatal ERROR then close, got {other:?}"),
        }
    }
    // After a handshake: a truncated frame followed by a close is just a disconnect.
    let mut t = RawClient::connect(addr(&server), "truncated");
    t.send_bytes(&[0, 0, 0, 40, 0x10, 0, 1]).unwrap();
    drop(t);
    // A member with a bad group name in JOIN is closed, others are unaffected.
    let mut bad = RawClient::connect(addr(&server), "bad");
    bad.send_bytes(&[0, 0, 0, 5, 0x03, 0, 2, 0xff, 0xfe]).unwrap();
    match bad.read_to_end().as_slice() {
        [Frame::Error(e)] => assert_eq!(e.code, ErrorCode::BadGroup),
        other => panic!("{other:?}"),
    }
    let mut sender = RawClient::connect(addr(&server), "sender");
    sender.mcast("g", b"still here");
    match good.next_significant() {
        Some(Frame::Mcast(m)) => assert_eq!(&m.payload[..], b"still here"),
        other => panic!("{other:?}"),
    }
    wait_for("protocol error counter", || server.stats().protocol_errors >= 7);
}

#[test]
fn shutdown_tells_clients_and_closes() {
    let server = start_server(2, Limits::default());
    let mut a = RawClient::connect(addr(&server), "a");
    server.shutdown();
    match a.read_to_end().as_slice() {
        [Frame::Error(e)] => assert_eq!(e.code, ErrorCode::ShuttingDown),
        other => panic!("{other:?}"),
    }
}

#[test]
fn idle_clients_are_closed_and_keepalives_flow() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(1500),
        keepalive_interval: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = start_server(1, limits);
    let mut a = RawClient::connect(addr(&server), "a");
    let frames = a.read_to_end();
    assert!(frames.iter().filter(|f| **f == Frame::Noop).count() >= 2, "{frames:?}");
    match frames.last() {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::IdleTimeout),
        other => panic!("{other:?}"),
    }
    wait_for("idle counter", || server.stats().killed_idle == 1);
}
