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
        // Tests run many servers at once on a loaded machine: a server starved of CPU for
        // a second must not count as a lost link here.
        link_timeout: Duration::from_secs(3),
        ..Limits::default()
    }
}

/// Node names unique to one test: clusters of tests running at once must not link to each
/// other when a port one of them freed is reused by another.
fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-node{i}")).collect()
}

/// Starts `n` servers and gives each the full peers table.
fn cluster(prefix: &str, n: usize) -> Vec<ServerHandle> {
    let servers: Vec<ServerHandle> =
        names(prefix, n).iter().map(|name| start_node(name, 2, mesh_limits())).collect();
    let table = peers_of(&names(prefix, n), &servers);
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
    let servers = cluster("three", 3);
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
    let mut servers = cluster("lost", 3);
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
    let back = start_node("lost-node2", 2, mesh_limits());
    servers.insert(1, back);
    let table = peers_of(&names("lost", 3), &servers);
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
    let servers = cluster("nine", 9);
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

/// A fake peer server that completes the link handshake, announces one member of `g`, and
/// then stops reading while it keeps sending keepalives: publishers are held back (a link
/// is never killed for its backlog alone), and when the link makes no progress for two
/// keepalive intervals it is killed and redialed; local members receive everything.
#[test]
fn a_link_that_stops_reading_is_killed_and_redialed() {
    use msgc::proto::{Handshake, Member, Name, NodeTag, PeerJoin, Role, SessionId};
    use std::io::{Read, Write};

    let limits = Limits {
        max_backlog: 100,
        tcpbuf_size: 16384,
        keepalive_interval: Duration::from_millis(500),
        ..mesh_limits()
    };
    let server = start_node("stuck-node1", 2, limits);
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // "zz-fake" sorts after "stuck-node1", so the server dials it.
    server.set_peers(vec![
        PeerSpec { name: "stuck-node1".into(), addr: addr(&server).to_string() },
        PeerSpec { name: "zz-fake".into(), addr: fake.local_addr().unwrap().to_string() },
    ]);
    fake.set_nonblocking(true).unwrap();
    let mut accepted = None;
    wait_for("the server dials the peer", || {
        accepted = fake.accept().ok().map(|(s, _)| s);
        accepted.is_some()
    });
    let mut link = accepted.unwrap();
    link.set_nonblocking(false).unwrap();
    link.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut len = [0u8; 4];
    link.read_exact(&mut len).unwrap();
    let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
    link.read_exact(&mut hello).unwrap();
    assert_eq!(hello[0], msgc::proto::kind::HELLO);
    let tag = NodeTag(0xfa4e);
    let welcome = Frame::Welcome(Handshake {
        version: msgc::proto::PEER_VERSION,
        role: Role::Peer,
        // A start time later than the server's: the server orders membership.
        id: SessionId(u64::MAX),
        digest: 0,
        node_tag: tag,
        max_frame: 1 << 20,
        name: Name::new("zz-fake").unwrap(),
    });
    let member = Member { session: SessionId::new(tag, 1), name: Name::new("remote").unwrap() };
    let join = Frame::PeerJoin(PeerJoin {
        cause: Cause::Join,
        group: msgc::proto::GroupName::new("g").unwrap(),
        member,
        version: 1,
    });
    link.write_all(&[welcome.to_bytes(), join.to_bytes()].concat()).unwrap();
    // Alive (keepalives every 100 ms, for at most the test's deadline) but never reading.
    let mut alive = link.try_clone().unwrap();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while started.elapsed() < DEADLINE && alive.write_all(&Frame::Noop.to_bytes()).is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });

    let mut local = RawClient::connect(addr(&server), "local");
    local.join("g");
    local.wait_view("g", 2);
    let mut publisher = RawClient::connect(addr(&server), "pub");
    let total = 600u64;
    let reader = std::thread::spawn(move || {
        let mut next = 1;
        while next <= total {
            match local.next_significant() {
                Some(Frame::Mcast(m)) => {
                    assert_eq!(m.seq, next, "the local member gets everything, in order");
                    next += 1;
                }
                Some(Frame::View(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let payload = vec![1u8; 4096];
    for _ in 0..total {
        publisher.mcast("g", &payload);
    }
    reader.join().expect("local member received every message");
    wait_for("stuck link counted", || server.stats().killed_stuck >= 1 && server.stats().links_down >= 1);
    // The server dials the peer again after reconnect_interval.
    wait_for("the server redials the peer", || fake.accept().is_ok());
}

/// Saturation is not a fault: publishers on every server at full speed, with small queues
/// and buffers so that the links fill up at once. Publishers are slowed; no link is killed,
/// no gap is sent, every subscriber gets everything in order.
#[test]
fn saturation_slows_publishers_and_never_kills_a_link() {
    let limits = Limits {
        // Small enough that links fill at once; large enough that a subscriber thread of a
        // busy test process, descheduled for a moment, is not cut as stuck.
        max_backlog: 1000,
        tcpbuf_size: 16384,
        memory_budget: 1 << 20,
        // Subscribers read as fast as they can; the test is about links, not slow clients.
        stall_timeout: Duration::from_secs(30),
        // Six servers' threads, six clients and the other tests share two cores here: a
        // link's heartbeat once waited 3 s for a CPU (a simulation sweep ran beside it).
        // Saturation itself never delays it by more than a moment.
        link_timeout: Duration::from_secs(6),
        ..mesh_limits()
    };
    let prefix = "saturate";
    let servers: Vec<ServerHandle> =
        names(prefix, 3).iter().map(|n| start_node(n, 2, limits.clone())).collect();
    let table = peers_of(&names(prefix, 3), &servers);
    for s in &servers {
        s.set_peers(table.clone());
    }
    let mut subs: Vec<RawClient> =
        (0..3).map(|i| RawClient::connect(addr(&servers[i]), &format!("sub{i}"))).collect();
    for s in subs.iter_mut() {
        s.join("firehose");
    }
    for s in subs.iter_mut() {
        s.wait_view("firehose", 3);
    }
    let per_publisher = 2000;
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| std::thread::spawn(move || expect_messages(&mut s, 3 * per_publisher).len()))
        .collect();
    let publishers: Vec<_> = (0..3)
        .map(|i| {
            let mut p = RawClient::connect(addr(&servers[i]), &format!("pub{i}"));
            std::thread::spawn(move || {
                let payload = vec![i as u8; 1024];
                for _ in 0..per_publisher {
                    p.mcast("firehose", &payload);
                }
                p
            })
        })
        .collect();
    let _publishers: Vec<RawClient> = publishers.into_iter().map(|p| p.join().expect("publisher")).collect();
    for r in readers {
        assert_eq!(r.join().expect("subscriber got everything in order"), 3 * per_publisher);
    }
    for s in &servers {
        let st = s.stats();
        assert_eq!((st.killed_stuck, st.links_down, st.gaps), (0, 0, 0), "{st:?}");
    }
    assert!(servers.iter().map(|s| s.stats().pauses).sum::<u64>() > 0, "publishers were held back");
}

/// Two servers that may no longer link to each other (each dropped the other from its
/// `peers`), but both still link to a third: their traffic goes through it, in order, with
/// nothing lost and no gap notice, and views still reach everyone.
#[test]
fn traffic_between_two_servers_without_a_link_goes_through_a_third() {
    let prefix = "relay";
    let all = names(prefix, 3);
    let servers = cluster(prefix, 3);
    // The full mesh first (views alone could already travel through a relay).
    wait_for("a full mesh", || servers.iter().all(|s| s.stats().links_up >= 2));
    let mut sub = RawClient::connect(addr(&servers[2]), "sub");
    let mut publisher = RawClient::connect(addr(&servers[0]), "pub");
    sub.join("g");
    publisher.join("g");
    sub.wait_view("g", 2);
    publisher.wait_view("g", 2);
    // node1 and node3 drop each other: their link closes and is not redialed.
    let table = peers_of(&all, &servers);
    let without = |skip: usize| -> Vec<PeerSpec> {
        table.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, p)| p.clone()).collect()
    };
    servers[0].set_peers(without(2));
    servers[2].set_peers(without(0));
    wait_for("node1 and node3 unlinked", || {
        servers[0].stats().links_down >= 1 && servers[2].stats().links_down >= 1
    });
    let per_round = 500;
    for k in 0..per_round {
        publisher.mcast("g", format!("m{k}").as_bytes());
    }
    let got = expect_messages(&mut sub, per_round);
    assert_eq!(got.len(), per_round);
    assert_eq!(got.last().map(Vec::as_slice), Some(format!("m{}", per_round - 1).as_bytes()));
    assert_eq!(expect_messages(&mut publisher, per_round).len(), per_round, "its own, locally");
    // A new member on node3 is seen by the publisher on node1 (views go through node2 too).
    let mut late = RawClient::connect(addr(&servers[2]), "late");
    late.join("g");
    publisher.wait_view("g", 3);
    let total_gaps: u64 = servers.iter().map(|s| s.stats().gaps).sum();
    assert_eq!(total_gaps, 0, "no gap notice while a path existed");
}
