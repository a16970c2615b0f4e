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
