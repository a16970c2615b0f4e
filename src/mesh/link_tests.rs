//! Unit tests of [`super::Link`] (kept in their own file to keep `link.rs` short).

use super::*;
use crate::mesh::Fault;
use crate::proto::{Name, SessionId};

const S: Duration = Duration::from_secs(1);

fn peer() -> PeerId {
    PeerId::from_test(1)
}

fn link(dialer: bool, now: Instant) -> Link {
    let name = NodeName::new("node2").unwrap();
    Link::new(peer(), name, dialer, LinkTiming::default(), 42, now)
}

fn hello(name: &str, digest: u64) -> Handshake {
    Handshake {
        version: 1,
        role: Role::Peer,
        id: SessionId::NONE,
        digest,
        node_tag: NodeTag(7),
        max_frame: 1 << 20,
        name: Name::new(name).unwrap(),
    }
}

/// A dialling link brought up at `t0`.
fn up(t0: Instant) -> Link {
    let mut l = link(true, t0);
    assert_eq!(l.handle_timeout(t0), vec![LinkAction::Dial]);
    l.handle_connected(t0);
    l.handle_welcome(&hello("node2", 1), 1, t0).unwrap();
    l
}

#[test]
fn a_dialler_dials_at_once_and_once() {
    let t0 = Instant::now();
    let mut l = link(true, t0);
    assert_eq!(l.state(), LinkState::Idle);
    assert_eq!(l.poll_timeout(), Some(t0));
    assert_eq!(l.handle_timeout(t0), vec![LinkAction::Dial]);
    assert_eq!(l.state(), LinkState::Connecting { since: t0 });
    assert_eq!(l.handle_timeout(t0), vec![]);
    // The runtime reports the actual start: restarts the timer, does not count twice.
    l.handle_dial_started(t0 + S);
    assert_eq!(l.stats().dials, 1);
    assert_eq!(l.poll_timeout(), Some(t0 + S + 60 * S));
    l.handle_connected(t0 + 2 * S);
    assert_eq!(l.state(), LinkState::Handshaking { since: t0 + 2 * S });
    let ok = l.handle_welcome(&hello("NODE2", 9), 9, t0 + 3 * S).unwrap();
    assert_eq!(ok.origin, Origin::Dialed);
    assert!(!ok.digest_mismatch);
    assert_eq!(ok.node_tag, NodeTag(7));
    assert_eq!(l.state(), LinkState::Up { since: t0 + 3 * S });
    assert_eq!(l.stats().ups, 1);
    assert_eq!(
        l.dup_link(),
        Some(DupLink {
            origin: Origin::Dialed,
            up_since: t0 + 3 * S
        })
    );
}

#[test]
fn connect_timeout_closes_and_backs_off() {
    let t0 = Instant::now();
    let mut l = link(true, t0);
    l.handle_timeout(t0);
    assert_eq!(l.handle_timeout(t0 + 59 * S), vec![]);
    let acts = l.handle_timeout(t0 + 60 * S);
    assert_eq!(acts, vec![LinkAction::Close(CloseReason::ConnectTimeout)]);
    assert!(matches!(l.state(), LinkState::Backoff { .. }));
    assert_eq!(l.stats().failures, 1);
    assert!(l
        .stats()
        .last_error
        .as_deref()
        .unwrap()
        .contains("connect_timeout"));
    // The runtime's close report afterwards changes nothing.
    l.handle_closed(t0 + 60 * S, CloseReason::Io("cancelled".into()));
    assert_eq!(l.stats().failures, 1);
    // Redial when the backoff ends.
    let until = l.poll_timeout().unwrap();
    assert!(
        until >= t0 + 64 * S && until <= t0 + 66 * S,
        "{:?}",
        until - t0
    );
    assert_eq!(l.handle_timeout(until - Duration::from_millis(1)), vec![]);
    assert_eq!(l.handle_timeout(until), vec![LinkAction::Dial]);
    assert_eq!(l.stats().dials, 2);
}

#[test]
fn handshake_timeout() {
    let t0 = Instant::now();
    let mut l = link(true, t0);
    l.handle_timeout(t0);
    l.handle_connected(t0 + 50 * S);
    assert_eq!(l.poll_timeout(), Some(t0 + 110 * S));
    assert_eq!(l.handle_timeout(t0 + 100 * S), vec![]);
    let acts = l.handle_timeout(t0 + 110 * S);
    assert_eq!(acts, vec![LinkAction::Close(CloseReason::HandshakeTimeout)]);
}

#[test]
fn backoff_jitter_stays_within_twenty_percent_and_depends_on_seed() {
    let interval = 5 * S;
    let (lo, hi) = (4 * S, 6 * S);
    let mut seen = std::collections::HashSet::new();
    for seed in 0..500u64 {
        for attempt in 0..4u64 {
            let d = backoff_delay(interval, seed, attempt);
            assert!(d >= lo && d <= hi, "{d:?}");
            assert_eq!(d, backoff_delay(interval, seed, attempt), "deterministic");
            seen.insert(d);
        }
    }
    assert!(
        seen.len() > 1900,
        "delays should spread, got {} distinct",
        seen.len()
    );
    assert_ne!(backoff_delay(interval, 1, 1), backoff_delay(interval, 2, 1));
    assert_ne!(backoff_delay(interval, 1, 1), backoff_delay(interval, 1, 2));
    // Both halves of the range are used.
    let below = (0..200)
        .filter(|&s| backoff_delay(interval, s, 0) < interval)
        .count();
    assert!(below > 50 && below < 150, "{below}");
    // Tiny and huge intervals neither panic nor escape the bounds.
    assert_eq!(
        backoff_delay(Duration::from_nanos(4), 3, 3),
        Duration::from_nanos(4)
    );
    let big = backoff_delay(Duration::MAX, 3, 3);
    assert!(big >= Duration::MAX / 5 * 4);
}

#[test]
fn links_with_other_seeds_back_off_differently() {
    let t0 = Instant::now();
    let untils: std::collections::HashSet<Instant> = (0..20u64)
        .map(|seed| {
            let name = NodeName::new("p").unwrap();
            let mut l = Link::new(peer(), name, true, LinkTiming::default(), seed, t0);
            l.handle_timeout(t0);
            l.handle_closed(t0, CloseReason::Eof);
            match l.state() {
                LinkState::Backoff { until } => until,
                s => panic!("{s:?}"),
            }
        })
        .collect();
    assert!(untils.len() > 15);
}

#[test]
fn keepalive_is_due_after_send_silence() {
    let t0 = Instant::now();
    let mut l = up(t0);
    assert_eq!(l.poll_timeout(), Some(t0 + 5 * S));
    assert_eq!(l.handle_timeout(t0 + 4 * S), vec![]);
    l.handle_tx(t0 + 4 * S);
    assert_eq!(l.poll_timeout(), Some(t0 + 9 * S));
    l.handle_rx(t0 + 8 * S);
    assert_eq!(l.handle_timeout(t0 + 9 * S), vec![LinkAction::SendNoop]);
    // Not again until another interval of silence.
    assert_eq!(l.handle_timeout(t0 + 9 * S), vec![]);
    assert_eq!(l.poll_timeout(), Some(t0 + 14 * S));
}

#[test]
fn idle_link_is_closed() {
    let t0 = Instant::now();
    let mut l = up(t0);
    let mut now = t0;
    // Receiving keeps it up for a long time.
    for _ in 0..20 {
        now += 10 * S;
        l.handle_rx(now);
        let acts = l.handle_timeout(now);
        assert!(!acts.iter().any(|a| matches!(a, LinkAction::Close(_))));
    }
    assert!(l.is_up());
    // Sending alone does not.
    for i in 1..=5u32 {
        l.handle_tx(now + i * 5 * S);
    }
    assert_eq!(l.poll_timeout(), Some(now + 30 * S));
    let acts = l.handle_timeout(now + 30 * S);
    assert_eq!(acts, vec![LinkAction::Close(CloseReason::IdleTimeout)]);
    assert!(matches!(l.state(), LinkState::Backoff { .. }));
    assert_eq!(l.stats().failures, 1);
    assert_eq!(l.dup_link(), None);
}

#[test]
fn reloaded_timing_applies_at_once() {
    let t0 = Instant::now();
    let fast = LinkTiming {
        connect_timeout: 10 * S,
        reconnect_interval: S,
        keepalive_interval: 2 * S,
        idle_timeout: 7 * S,
    };
    // Connecting.
    let mut l = link(true, t0);
    l.handle_timeout(t0);
    l.set_timing(fast);
    assert_eq!(l.poll_timeout(), Some(t0 + 10 * S));
    // Backoff: recomputed from when it started.
    l.set_timing(LinkTiming::default());
    l.handle_closed(t0 + S, CloseReason::Eof);
    let slow_until = l.poll_timeout().unwrap();
    assert!(slow_until >= t0 + 5 * S);
    l.set_timing(fast);
    let until = l.poll_timeout().unwrap();
    let wait = until - (t0 + S);
    assert!(wait >= Duration::from_millis(800) && wait <= Duration::from_millis(1200));
    assert_eq!(l.handle_timeout(until), vec![LinkAction::Dial]);
    // Up.
    let mut l = up(t0);
    assert_eq!(l.poll_timeout(), Some(t0 + 5 * S));
    l.set_timing(fast);
    assert_eq!(l.poll_timeout(), Some(t0 + 2 * S));
    l.handle_tx(t0 + 6 * S);
    assert_eq!(
        l.poll_timeout(),
        Some(t0 + 7 * S),
        "idle deadline comes first now"
    );
    assert_eq!(l.timing(), fast);
}

#[test]
fn zero_and_huge_timings() {
    let t0 = Instant::now();
    let mut l = up(t0);
    let off = LinkTiming {
        connect_timeout: Duration::ZERO,
        reconnect_interval: Duration::ZERO,
        keepalive_interval: Duration::ZERO,
        idle_timeout: Duration::ZERO,
    };
    l.set_timing(off);
    assert_eq!(l.timing().reconnect_interval, MIN_RECONNECT);
    assert_eq!(l.poll_timeout(), None);
    assert_eq!(l.handle_timeout(t0 + 1000 * S), vec![]);
    l.handle_closed(t0, CloseReason::Eof);
    assert_eq!(l.handle_timeout(t0 + S), vec![LinkAction::Dial]);
    assert_eq!(l.poll_timeout(), None, "no connect limit");
    let huge = LinkTiming {
        connect_timeout: Duration::MAX,
        reconnect_interval: Duration::MAX,
        keepalive_interval: Duration::MAX,
        idle_timeout: Duration::MAX,
    };
    l.set_timing(huge);
    assert_eq!(l.timing().idle_timeout, MAX_TIMING);
    l.handle_closed(t0 + S, CloseReason::Eof);
    assert!(l.poll_timeout().is_some());
    assert_eq!(l.handle_timeout(t0 + 1000 * S), vec![]);
}

#[test]
fn handshake_checks_name_role_and_digest() {
    let t0 = Instant::now();
    let mut l = link(true, t0);
    l.handle_timeout(t0);
    l.handle_connected(t0);
    let err = l.handle_welcome(&hello("node3", 1), 1, t0).unwrap_err();
    assert!(matches!(err, MeshError::WrongPeer { .. }), "{err}");
    assert_eq!(err.fault(), Fault::Config);
    assert!(err.to_string().contains("node2") && err.to_string().contains("node3"));
    assert!(matches!(l.state(), LinkState::Backoff { .. }));
    assert_eq!(l.stats().failures, 1);
    assert!(l.stats().last_error.as_deref().unwrap().contains("node3"));

    let mut l = link(true, t0);
    l.handle_timeout(t0);
    l.handle_connected(t0);
    let mut client = hello("node2", 1);
    client.role = Role::Client;
    let err = l.handle_welcome(&client, 1, t0).unwrap_err();
    assert_eq!(err.fault(), Fault::Remote);

    let mut l = link(true, t0);
    l.handle_timeout(t0);
    l.handle_connected(t0);
    let ok = l
        .handle_welcome(&hello("node2", 0xdead), 0xbeef, t0)
        .unwrap();
    assert!(
        ok.digest_mismatch,
        "a differing digest is reported, not refused"
    );
    assert_eq!(ok.remote_digest, 0xdead);
    // A second handshake on an up link is the remote's fault and changes nothing.
    let err = l.handle_welcome(&hello("node2", 1), 1, t0).unwrap_err();
    assert!(matches!(err, MeshError::UnexpectedHandshake { .. }));
    assert_eq!(err.fault(), Fault::Remote);
    assert!(l.is_up());
}

#[test]
fn an_acceptor_never_dials() {
    let t0 = Instant::now();
    let mut l = link(false, t0);
    assert_eq!(l.poll_timeout(), None);
    assert_eq!(l.handle_timeout(t0 + 1000 * S), vec![]);
    assert!(l.handle_accepted(t0 + S));
    assert!(!l.handle_accepted(t0 + S), "one connection per link");
    let ok = l.handle_welcome(&hello("node2", 1), 1, t0 + S).unwrap();
    assert_eq!(ok.origin, Origin::Accepted);
    l.handle_closed(t0 + 2 * S, CloseReason::Eof);
    assert_eq!(l.state(), LinkState::Idle);
    assert_eq!(l.poll_timeout(), None);
    assert_eq!(l.stats().dials, 0);
    assert_eq!(l.stats().failures, 1);
}

#[test]
fn duplicate_replacement_is_not_a_failure() {
    let t0 = Instant::now();
    let mut l = up(t0);
    l.handle_closed(t0 + S, CloseReason::Duplicate);
    assert_eq!(l.stats().failures, 0);
    assert_eq!(l.stats().last_error, None);
    // The runtime adopts the surviving connection into this link.
    assert!(l.handle_accepted(t0 + S));
    l.handle_welcome(&hello("node2", 1), 1, t0 + S).unwrap();
    assert_eq!(l.origin(), Some(Origin::Accepted));
    assert_eq!(l.stats().ups, 2);
}

#[test]
fn out_of_order_inputs_never_panic() {
    // A deterministic walk over every input in every state.
    let t0 = Instant::now();
    for seed in 0..50u64 {
        let mut l = link(seed % 2 == 0, t0);
        l.set_timing(LinkTiming {
            connect_timeout: 3 * S,
            reconnect_interval: S,
            keepalive_interval: S,
            idle_timeout: 4 * S,
        });
        let mut now = t0;
        let mut x = seed;
        for _ in 0..400 {
            x = splitmix64(x);
            now += Duration::from_millis(x % 1500);
            match (x >> 32) % 10 {
                0 => l.handle_dial_started(now),
                1 => l.handle_connected(now),
                2 => {
                    l.handle_accepted(now);
                }
                3 => {
                    let name = if x & 1 == 0 { "node2" } else { "other" };
                    let _ = l.handle_welcome(&hello(name, x & 3), 1, now);
                }
                4 => l.handle_rx(now),
                5 => l.handle_tx(now),
                6 => l.handle_closed(now, CloseReason::Eof),
                7 => l.set_timing(LinkTiming::default()),
                _ => {
                    let _ = l.handle_timeout(now);
                }
            }
            if let Some(t) = l.poll_timeout() {
                // A deadline in the past is handled by the next timeout call.
                if t <= now {
                    let _ = l.handle_timeout(now);
                }
            }
            if !l.is_dialer() {
                assert!(!matches!(l.state(), LinkState::Backoff { .. }));
            }
            let s = l.stats();
            assert!(s.ups <= s.dials + 400 && s.failures <= s.dials + s.ups + 400);
        }
    }
}
