//! The client library against real servers on 127.0.0.1.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use msgc::client::{Client, ClientError, ClientOptions, Event};
use msgc::core::Limits;
use msgc::proto::{Cause, GapReason};
use msgc::runtime::{ServerHandle, ServerOptions};

fn server_on(addr: std::net::SocketAddr, name: &str) -> ServerHandle {
    let opts = ServerOptions { listen: vec![addr], ..test_options(name, 2, Limits::default()) };
    ServerHandle::start(opts).expect("server starts")
}

async fn next(c: &mut Client) -> Event {
    tokio::time::timeout(DEADLINE, c.next_event()).await.expect("an event before the deadline").expect("open")
}

/// Skips events until one matches.
async fn until(c: &mut Client, what: &str, mut f: impl FnMut(&Event) -> bool) -> Event {
    for _ in 0..10_000 {
        let e = next(c).await;
        if f(&e) {
            return e;
        }
    }
    panic!("no {what}");
}

fn opts(servers: Vec<String>, name: &str) -> ClientOptions {
    ClientOptions {
        servers,
        name: name.into(),
        reconnect_interval: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn join_multicast_and_receive_in_order() {
    let server = start_server(2, Limits::default());
    let a_addr = addr(&server).to_string();
    let mut a = Client::builder().server(&a_addr).name("a").connect().await.unwrap();
    let mut b = Client::builder().server(&a_addr).name("b").connect().await.unwrap();
    a.join("g").await.unwrap();
    until(&mut a, "own view", |e| matches!(e, Event::View(v) if v.members.len() == 1)).await;
    b.join("g").await.unwrap();
    until(
        &mut a,
        "view of 2",
        |e| matches!(e, Event::View(v) if v.members.len() == 2 && v.cause == Cause::Join),
    )
    .await;
    until(&mut b, "view of 2", |e| matches!(e, Event::View(v) if v.members.len() == 2)).await;
    for i in 0..1000u32 {
        b.multicast("g", Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
    }
    for c in [&mut a, &mut b] {
        for i in 0..1000u32 {
            match next(c).await {
                Event::Message { seq, payload, .. } => {
                    assert_eq!(seq, u64::from(i) + 1);
                    assert_eq!(&payload[..], &i.to_be_bytes());
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(matches!(a.join("").await, Err(ClientError::BadGroup(_))));
    a.close().await;
}

#[tokio::test]
async fn no_server_is_a_clear_error() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    match Client::connect(opts(vec![free.clone()], "x")).await {
        Err(ClientError::NoServer { tried }) => assert_eq!(tried, vec![free]),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test]
async fn reconnects_after_a_server_restart_rejoins_and_reports_the_gap() {
    let server = start_server(2, Limits::default());
    let at = addr(&server);
    let mut c = Client::connect(opts(vec![at.to_string()], "c")).await.unwrap();
    let first = c.session_id();
    c.join("g").await.unwrap();
    until(&mut c, "view", |e| matches!(e, Event::View(_))).await;
    server.shutdown();
    until(&mut c, "disconnect", |e| matches!(e, Event::Disconnected { .. })).await;
    let _again = server_on(at, "again");
    let e = until(&mut c, "reconnect", |e| matches!(e, Event::Reconnected { .. })).await;
    let Event::Reconnected { session, .. } = e else { unreachable!() };
    assert_ne!(session, first);
    match next(&mut c).await {
        Event::Gap(g) => assert_eq!((g.reason, g.group.as_str()), (GapReason::Reconnected, "g")),
        other => panic!("{other:?}"),
    }
    // Rejoined by itself: the new server's view lists the new session.
    let v = until(&mut c, "view after rejoin", |e| matches!(e, Event::View(_))).await;
    let Event::View(v) = v else { unreachable!() };
    assert_eq!(v.members[0].session, c.session_id());
    c.multicast("g", Bytes::from_static(b"back")).await.unwrap();
    until(&mut c, "own message", |e| matches!(e, Event::Message { payload, .. } if &payload[..] == b"back"))
        .await;
}

#[tokio::test]
async fn fails_over_to_the_next_relay_in_order() {
    let relay_a = start_node("relayA", 1, Limits::default());
    let relay_b = start_node("relayB", 1, Limits::default());
    let servers = vec![addr(&relay_a).to_string(), addr(&relay_b).to_string()];
    let mut c = Client::connect(opts(servers.clone(), "c")).await.unwrap();
    c.join("g").await.unwrap();
    until(&mut c, "view", |e| matches!(e, Event::View(_))).await;
    relay_a.shutdown();
    let e = until(&mut c, "reconnect", |e| matches!(e, Event::Reconnected { .. })).await;
    assert!(matches!(e, Event::Reconnected { server, .. } if server == servers[1]));
    until(&mut c, "view on relay B", |e| matches!(e, Event::View(v) if v.members.len() == 1)).await;
    drop(relay_b);
}

/// Waits for the next message, checking its number; skips views.
async fn expect_messages(c: &mut Client, n: u64, check: impl Fn(u64, &[u8])) {
    let mut seq = 0;
    while seq < n {
        match next(c).await {
            Event::Message { seq: s, payload, .. } => {
                seq += 1;
                assert_eq!(s, seq, "in order, none missing");
                check(s, &payload);
            }
            Event::View(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

async fn member_of(c: &mut Client, group: &str, members: usize) {
    c.join(group).await.unwrap();
    until(c, "view", |e| matches!(e, Event::View(v) if v.members.len() == members)).await;
}

#[tokio::test]
async fn a_burst_is_batched_bounded_and_arrives_whole() {
    let server = start_server(2, Limits::default());
    let at = addr(&server).to_string();
    let mut rx = Client::connect(opts(vec![at.clone()], "rx")).await.unwrap();
    member_of(&mut rx, "burst", 1).await;
    let tx = Client::connect(ClientOptions { send_queue_bytes: Some(4096), ..opts(vec![at], "tx") })
        .await
        .unwrap();
    const N: u64 = 20_000;
    // try_multicast never waits: with a 4 KiB queue it must refuse some, and every accepted
    // message must arrive, in order.
    let mut accepted = 0u64;
    let mut refused = 0u64;
    let deadline = std::time::Instant::now() + DEADLINE;
    while accepted < N / 2 && std::time::Instant::now() < deadline {
        match tx.try_multicast("burst", &accepted.to_be_bytes()) {
            Ok(()) => accepted += 1,
            Err(ClientError::WouldBlock) => {
                refused += 1;
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(accepted, N / 2);
    assert!(refused > 0, "a 4 KiB queue never filled during a burst of {accepted}");
    // send_many waits for room instead.
    let rest: Vec<[u8; 8]> = (N / 2..N).map(|i| i.to_be_bytes()).collect();
    assert_eq!(tx.send_many("burst", &rest).await.unwrap(), rest.len());
    tx.flush().await.unwrap();
    expect_messages(&mut rx, N, |seq, p| assert_eq!(p, (seq - 1).to_be_bytes())).await;
    assert!(matches!(tx.try_multicast("", b"x"), Err(ClientError::BadGroup(_))));
    assert!(matches!(tx.try_multicast("burst", &vec![0; 2 << 20]), Err(ClientError::TooLarge(_))));
}

#[tokio::test]
async fn dropping_a_client_closes_its_connection_for_good() {
    let server = start_server(1, Limits::default());
    let at = addr(&server).to_string();
    let mut watcher = Client::connect(opts(vec![at.clone()], "watcher")).await.unwrap();
    member_of(&mut watcher, "g", 1).await;
    let mut gone = Client::connect(opts(vec![at], "gone")).await.unwrap();
    member_of(&mut gone, "g", 2).await;
    until(&mut watcher, "view of 2", |e| matches!(e, Event::View(v) if v.members.len() == 2)).await;
    drop(gone);
    until(
        &mut watcher,
        "disconnect view",
        |e| matches!(e, Event::View(v) if v.members.len() == 1 && v.cause == Cause::Disconnect),
    )
    .await;
    // A client that kept redialing would rejoin within a few 100 ms reconnect intervals.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), watcher.next_event()).await;
    assert!(quiet.is_err(), "something happened after the drop: {quiet:?}");
}

#[tokio::test]
async fn publishing_waits_for_the_reconnection_instead_of_dropping() {
    let server = start_server(1, Limits::default());
    let at = addr(&server);
    let mut c = Client::connect(opts(vec![at.to_string()], "c")).await.unwrap();
    member_of(&mut c, "g", 1).await;
    c.multicast("g", b"one").await.unwrap();
    c.flush().await.unwrap();
    server.shutdown();
    until(&mut c, "disconnect", |e| matches!(e, Event::Disconnected { .. })).await;
    // While disconnected nothing can be queued without waiting.
    assert!(matches!(c.try_multicast("g", b"x"), Err(ClientError::WouldBlock)));
    let _again = server_on(at, "again");
    // multicast waits for the reconnection rather than failing or dropping.
    tokio::time::timeout(DEADLINE, c.multicast("g", b"two")).await.expect("sent after reconnecting").unwrap();
    c.flush().await.unwrap();
    until(
        &mut c,
        "the message sent while reconnecting",
        |e| matches!(e, Event::Message { payload, .. } if &payload[..] == b"two"),
    )
    .await;
}
