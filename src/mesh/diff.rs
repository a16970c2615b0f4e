//! What a config reload changes in the mesh: peers added, removed, or moved to a new address.
//!
//! Owns the comparison of two peer tables by node name. Never does I/O; the runtime opens and
//! closes links from the result.

use std::collections::HashMap;

use super::{NodeName, PeerId, PeerTable};

/// The difference between the running peer table and a reloaded one.
///
/// Peers are matched by name (ASCII case-insensitive); ids are positions and may differ
/// between the two tables, so every entry says which table its ids belong to. A renamed peer
/// is one removal and one addition. The entry of this server is compared like any other;
/// the runtime ignores it (or rebinds) as it sees fit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerDiff {
    /// Ids in the new table of peers the old one did not have: open links to them.
    pub added: Vec<PeerId>,
    /// Ids in the old table of peers the new one drops: close their links.
    pub removed: Vec<PeerId>,
    /// `(old id, new id)` of peers whose host or effective port changed (including through
    /// a changed default `port`): close the link and redial the new address.
    pub changed_addr: Vec<(PeerId, PeerId)>,
    /// `(old id, new id)` of peers that stay as they are: keep their links, re-key by new id.
    pub kept: Vec<(PeerId, PeerId)>,
}

impl PeerDiff {
    /// Whether the reload changes no link (ids may still have moved; see `kept`).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed_addr.is_empty()
    }
}

/// Compares the running table with a reloaded one (see [`PeerDiff`]). Host names compare
/// without case and IP addresses by value (`::1` equals `0:0:0:0:0:0:0:1`).
pub fn diff(old: &PeerTable, new: &PeerTable) -> PeerDiff {
    let new_by_name: HashMap<&NodeName, PeerId> =
        new.ids().filter_map(|id| new.name(id).map(|n| (n, id))).collect();
    let mut out = PeerDiff::default();
    let mut seen = vec![false; new.len()];
    for o in old.ids() {
        let Some(&n) = old.name(o).and_then(|name| new_by_name.get(name)) else {
            out.removed.push(o);
            continue;
        };
        // invariant: `n` comes from `new.ids()`, so it indexes `seen` (len `new.len()`).
        seen[n.index()] = true;
        if old.addr_key(o) == new.addr_key(n) {
            out.kept.push((o, n));
        } else {
            out.changed_addr.push((o, n));
        }
    }
    out.added = new.ids().filter(|id| !seen[id.index()]).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(port: u16, peers: &[(&str, &str)]) -> PeerTable {
        let owned: Vec<(String, String)> =
            peers.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect();
        PeerTable::new(&owned, port).unwrap()
    }

    fn names(t: &PeerTable, ids: &[PeerId]) -> Vec<String> {
        ids.iter().map(|&i| t.name(i).unwrap().to_string()).collect()
    }

    #[test]
    fn identical_tables_change_nothing() {
        let t = table(4809, &[("a", "10.0.0.1"), ("b", "b.example")]);
        let d = diff(&t, &t);
        assert!(d.is_empty());
        assert_eq!(d.kept.len(), 2);
    }

    #[test]
    fn added_removed_changed_and_moved() {
        let old = table(
            4809,
            &[("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3"), ("d", "Host-D.example"), ("e", "::1")],
        );
        let new = table(
            4809,
            &[
                ("E", "[0:0:0:0:0:0:0:1]:4809"),
                ("d", "host-d.example:4809"),
                ("c", "10.0.0.33"),
                ("a", "10.0.0.1:4810"),
                ("f", "10.0.0.6"),
            ],
        );
        let d = diff(&old, &new);
        assert_eq!(names(&old, &d.removed), ["b"]);
        assert_eq!(names(&new, &d.added), ["f"]);
        let changed: Vec<_> = d.changed_addr.iter().map(|&(o, _)| o).collect();
        assert_eq!(names(&old, &changed), ["a", "c"]);
        for &(o, n) in d.changed_addr.iter().chain(&d.kept) {
            assert_eq!(old.name(o), new.name(n));
        }
        let kept: Vec<_> = d.kept.iter().map(|&(o, _)| o).collect();
        assert_eq!(names(&old, &kept), ["d", "e"]);
        assert_eq!(d.kept[0], (PeerId::from_test(3), PeerId::from_test(1)));
        assert!(!d.is_empty());
    }

    #[test]
    fn default_port_change_moves_peers_without_a_port() {
        let old = table(4809, &[("a", "10.0.0.1"), ("b", "10.0.0.2:4809")]);
        let new = table(4900, &[("a", "10.0.0.1"), ("b", "10.0.0.2:4809")]);
        let d = diff(&old, &new);
        assert_eq!(d.changed_addr.len(), 1);
        assert_eq!(names(&old, &[d.changed_addr[0].0]), ["a"]);
        assert_eq!(d.kept.len(), 1);
    }

    #[test]
    fn rename_is_remove_plus_add_and_empty_tables_work() {
        let old = table(4809, &[("a", "10.0.0.1")]);
        let new = table(4809, &[("a2", "10.0.0.1")]);
        let d = diff(&old, &new);
        assert_eq!((d.removed.len(), d.added.len()), (1, 1));
        let empty = table(4809, &[]);
        assert_eq!(diff(&empty, &old).added.len(), 1);
        assert_eq!(diff(&old, &empty).removed.len(), 1);
        assert!(diff(&empty, &empty).is_empty());
    }
}
