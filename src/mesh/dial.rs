//! Who dials whom, and which link survives when a pair of servers ends up with two.
//!
//! Owns the dial rule and the duplicate-link rule, both pure functions of node names and of
//! facts the caller passes in. Never does I/O, never reads a clock.
//!
//! Why one dialer: if both servers of a pair dialled each other, two connections would race
//! and each side could keep a different one, so multicasts could take two paths and arrive
//! twice or out of order. With one dialer per pair (the smaller name, see [`should_dial`])
//! there is only ever one outbound attempt per pair, and the other side only accepts.
//!
//! Why two links can still exist: the servers may briefly disagree (a rolling config change, a
//! rename, a peer list that differs while the digest mismatch is being fixed), or an old link
//! may linger after the remote restarted and redialled before this side noticed the old one
//! died. [`resolve_duplicate`] picks the survivor so that both ends pick the same connection.

use std::time::Instant;

use super::NodeName;

/// Whether the server named `me` dials the server named `other`: true when `me` sorts first
/// (ASCII case-insensitive byte order). For distinct names exactly one of
/// `should_dial(a, b)` and `should_dial(b, a)` holds; for equal names neither does.
pub fn should_dial(me: &NodeName, other: &NodeName) -> bool {
    me < other
}

/// Which end opened a connection, seen from this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// This server dialled it.
    Dialed,
    /// The remote server dialled it; this server accepted it.
    Accepted,
}

/// What [`resolve_duplicate`] needs to know about one of two links to the same peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DupLink {
    pub origin: Origin,
    /// When its handshake completed.
    pub up_since: Instant,
}

/// The link [`resolve_duplicate`] keeps; the runtime closes the other one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Existing,
    Newcomer,
}

/// Chooses which of two established links between this server (`me`) and the peer `other`
/// (names as verified in the handshake) to keep.
///
/// - Opened by different ends: keep the one opened by the side the dial rule names. Both
///   servers evaluate the rule on the same two names and see each connection with the
///   opposite origin, so they keep the same connection and close the same one.
/// - Opened by the same end (an old link lingering next to its replacement): keep the one
///   that came up later. The dialer only dials again once it considers the previous link
///   dead, so the older one is the leftover. On a tie the existing link is kept (no churn).
pub fn resolve_duplicate(
    me: &NodeName,
    other: &NodeName,
    existing: DupLink,
    newcomer: DupLink,
) -> Keep {
    if existing.origin != newcomer.origin && me != other {
        let wanted = if should_dial(me, other) {
            Origin::Dialed
        } else {
            Origin::Accepted
        };
        return if existing.origin == wanted {
            Keep::Existing
        } else {
            Keep::Newcomer
        };
    }
    if newcomer.up_since > existing.up_since {
        Keep::Newcomer
    } else {
        Keep::Existing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn flip(o: Origin) -> Origin {
        match o {
            Origin::Dialed => Origin::Accepted,
            Origin::Accepted => Origin::Dialed,
        }
    }

    #[test]
    fn exactly_one_side_dials() {
        let names = [
            "a",
            "B",
            "node1",
            "node10",
            "Node2",
            "relay.example.com",
            "relay",
        ];
        for x in names {
            assert!(!should_dial(&n(x), &n(x)));
            assert!(!should_dial(&n(x), &n(&x.to_uppercase())));
            for y in names.iter().filter(|&&y| y != x) {
                assert_ne!(should_dial(&n(x), &n(y)), should_dial(&n(y), &n(x)));
            }
        }
        assert!(should_dial(&n("A"), &n("b")));
        assert!(should_dial(&n("a"), &n("B")));
    }

    #[test]
    fn crossed_links_keep_the_one_the_rule_dials() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let dialed = |t| DupLink {
            origin: Origin::Dialed,
            up_since: t,
        };
        let accepted = |t| DupLink {
            origin: Origin::Accepted,
            up_since: t,
        };
        // "a" dials "b": a keeps its outbound link, whichever came first.
        assert_eq!(
            resolve_duplicate(&n("a"), &n("b"), dialed(t0), accepted(t1)),
            Keep::Existing
        );
        assert_eq!(
            resolve_duplicate(&n("a"), &n("b"), accepted(t0), dialed(t1)),
            Keep::Newcomer
        );
        // "b" keeps the link "a" dialled, i.e. the one it accepted.
        assert_eq!(
            resolve_duplicate(&n("b"), &n("a"), dialed(t0), accepted(t1)),
            Keep::Newcomer
        );
        assert_eq!(
            resolve_duplicate(&n("B"), &n("a"), accepted(t0), dialed(t1)),
            Keep::Existing
        );
    }

    #[test]
    fn both_ends_keep_the_same_connection() {
        // Two connections X and Y between "node1" and "node2". Each end sees each connection
        // with the opposite origin, and possibly in a different arrival order.
        let t0 = Instant::now();
        let times = [
            t0,
            t0 + Duration::from_millis(3),
            t0 + Duration::from_secs(2),
        ];
        for x_origin in [Origin::Dialed, Origin::Accepted] {
            for y_origin in [Origin::Dialed, Origin::Accepted] {
                for &(tx, ty) in &[(times[0], times[1]), (times[2], times[1])] {
                    let (x, y) = (
                        DupLink {
                            origin: x_origin,
                            up_since: tx,
                        },
                        DupLink {
                            origin: y_origin,
                            up_since: ty,
                        },
                    );
                    let mirror = |l: DupLink| DupLink {
                        origin: flip(l.origin),
                        ..l
                    };
                    let (one, two) = (n("node1"), n("node2"));
                    // Each end with X as existing, and with Y as existing.
                    let keeps_x_1 = resolve_duplicate(&one, &two, x, y) == Keep::Existing;
                    let keeps_x_2 =
                        resolve_duplicate(&two, &one, mirror(x), mirror(y)) == Keep::Existing;
                    assert_eq!(keeps_x_1, keeps_x_2, "{x:?} {y:?}");
                    if x_origin != y_origin {
                        let keeps_x_rev = resolve_duplicate(&one, &two, y, x) == Keep::Newcomer;
                        assert_eq!(keeps_x_1, keeps_x_rev, "order must not matter");
                        // The kept one was dialled by node1.
                        let kept = if keeps_x_1 { x } else { y };
                        assert_eq!(kept.origin, Origin::Dialed);
                    }
                }
            }
        }
    }

    #[test]
    fn same_origin_keeps_the_newer() {
        let t0 = Instant::now();
        let old = DupLink {
            origin: Origin::Accepted,
            up_since: t0,
        };
        let new = DupLink {
            up_since: t0 + Duration::from_secs(9),
            ..old
        };
        assert_eq!(
            resolve_duplicate(&n("x"), &n("y"), old, new),
            Keep::Newcomer
        );
        assert_eq!(
            resolve_duplicate(&n("x"), &n("y"), new, old),
            Keep::Existing
        );
        assert_eq!(
            resolve_duplicate(&n("x"), &n("y"), old, old),
            Keep::Existing
        );
        // Names that cannot be ordered (talking to itself) fall back to the same rule.
        let dialed_new = DupLink {
            origin: Origin::Dialed,
            ..new
        };
        assert_eq!(
            resolve_duplicate(&n("x"), &n("X"), old, dialed_new),
            Keep::Newcomer
        );
    }
}
