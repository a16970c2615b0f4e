//! Who dials whom: exactly one server of each pair dials, so a pair never races two
//! connections (multicasts could then take two paths and arrive twice or out of order).
//!
//! A pure function of node names. Never does I/O, never reads a clock. Should two links
//! exist anyway (a rolling config change), the shard core keeps the one already up and
//! refuses the newcomer.

use super::NodeName;

/// Whether the server named `me` dials the server named `other`: true when `me` sorts first
/// (ASCII case-insensitive byte order). For distinct names exactly one of
/// `should_dial(a, b)` and `should_dial(b, a)` holds; for equal names neither does.
pub fn should_dial(me: &NodeName, other: &NodeName) -> bool {
    me < other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn exactly_one_side_dials() {
        let names = ["a", "B", "node1", "node10", "Node2", "relay.example.com", "relay"];
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
}
