//! Several real servers meshed over 127.0.0.1 in one process.

mod common;

use std::time::Duration;

use common::*;
use msgc::core::Limits;
use msgc::proto::{Cause, Frame, GapReason};
use msgc::runtime::{PeerSpec, ServerHandle};

fn mesh_limits() -> Limits {
    Limits {
        reconnect_interval: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("node{i}")).collect()
}

/// Starts `n` servers and gives each the full peers table.
fn cluster(n: usize) -> Vec<ServerHandle> {
    let servers: Vec<ServerHandle> = names(n).iter().map(|name| start_node(name, 2, mesh_limits())).collect();
    let table = peers_of(&names(n), &servers);
    for s in &servers {
        s.set_peers(table.clone());
    }
    servers
}

fn peers_of(names: &[String], servers: &[ServerHandle]) -> Vec<PeerSpec> {
    names.iter().zip(servers).map(|(n, s)| PeerSpec { name: n.clone(), addr: addr(s).to_string() }).collect()
}

/// Reads until every one of `want` messages (by payload) arrived once, in per-sender order.
fn expect_messages(c: &mut RawClient, want: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut last: std::collections::HashMap<_, u64> = Default::default();
    while got.len() < want {
        match c.next_significant() {
            Some(Frame::Mcast(m)) => {
                let prev = last.insert(m.sender, m.seq).unwrap_or(0);
                assert_eq!(m.seq, prev + 1, "per-sender FIFO without gaps or duplicates");
                got.push(m.payload.to_vec());
            }
            Some(Frame::View(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[test]
fn three_servers_share_groups_views_and_messages() {
    let servers = cluster(3);
    let mut clients: Vec<RawClient> =
        (0..6).map(|i| RawClient::connect(addr(&servers[i % 3]), &format!("c{i}"))).collect();
    for c in clients.iter_mut() {
        c.join("cluster");
    }
    // Every member, on every server, ends with the same view of all six.
    let views: Vec<_> = clients.iter_mut().map(|c| c.wait_view("cluster", 6)).collect();
    for v in &views[1..] {
        assert_eq!(v.view_id, views[0].view_id);
        assert_eq!(v.members, views[0].members);
    }
    // Each client sends 50 messages; everyone gets all 300 exactly once, in sender order.
    for (i, c) in clients.iter_mut().enumerate() {
        for k in 0..50 {
            c.mcast("cluster", format!("{i}:{k}").as_bytes());
        }
    }
    for c in clients.iter_mut() {
        let got = expect_messages(c, 300);
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 300);
    }
}

#[test]
fn a_lost_server_leaves_views_with_network_and_rejoins_after_restart() {
    let mut servers = cluster(3);
    let mut a = RawClient::connect(addr(&servers[0]), "a");
    let mut c = RawClient::connect(addr(&servers[2]), "c");
    let mut b = RawClient::connect(addr(&servers[1]), "b");
    for x in [&mut a, &mut b, &mut c] {
        x.join("g");
    }
    a.wait_view("g", 3);
    c.wait_view("g", 3);
    b.wait_view("g", 3);
    // b sends; then its server dies.
    for k in 0..10 {
        b.mcast("g", format!("b{k}").as_bytes());
    }
    expect_messages(&mut a, 10);
    expect_messages(&mut c, 10);
    let b_session = b.session;
    servers.remove(1).shutdown();
    for x in [&mut a, &mut c] {
        // A gap notice for b (it may have sent more), and a Network view without it.
        let mut saw_gap = false;
        loop {
            match x.next_significant() {
                Some(Frame::Gap(g)) => {
                    assert_eq!((g.reason, g.sender, g.first), (GapReason::LinkLost, b_session, 11));
                    saw_gap = true;
                }
                Some(Frame::View(v)) if v.members.len() == 2 => {
                    assert_eq!(v.cause, Cause::Network);
                    break;
                }
                Some(Frame::View(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        if !saw_gap {
            match x.next_significant() {
                Some(Frame::Gap(g)) => assert_eq!(g.sender, b_session),
                other => panic!("expected a gap notice, got {other:?}"),
            }
        }
    }
    // The server comes back (new port): the table is updated, its members merge back in.
    let back = start_node("node2", 2, mesh_limits());
    servers.insert(1, back);
    let table = peers_of(&names(3), &servers);
    for s in &servers {
        s.set_peers(table.clone());
    }
    let mut b2 = RawClient::connect(addr(&servers[1]), "b2");
    b2.join("g");
    b2.wait_view("g", 3);
    let v = a.wait_view("g", 3);
    assert!(v.members.iter().any(|m| m.session == b2.session));
    c.wait_view("g", 3);
    b2.mcast("g", b"back");
    assert_eq!(expect_messages(&mut a, 1), vec![b"back".to_vec()]);
    assert_eq!(expect_messages(&mut c, 1), vec![b"back".to_vec()]);
}

#[test]
fn nine_servers_deliver_to_every_member() {
    let servers = cluster(9);
    let mut clients: Vec<RawClient> =
        servers.iter().enumerate().map(|(i, s)| RawClient::connect(addr(s), &format!("c{i}"))).collect();
    for c in clients.iter_mut() {
        c.join("all");
    }
    for c in clients.iter_mut() {
        c.wait_view("all", 9);
    }
    clients[4].mcast("all", b"from the middle");
    for c in clients.iter_mut() {
        assert_eq!(expect_messages(c, 1), vec![b"from the middle".to_vec()]);
    }
}
