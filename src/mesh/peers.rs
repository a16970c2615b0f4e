//! The peer table: every server of the mesh as listed in the config's `peers` dictionary, and
//! which of them is this server.
//!
//! Owns parsing of peer names and addresses, the checks that make a table usable (no duplicate
//! names or addresses), self-identification, and the dial rule applied to table entries.
//! Never resolves host names, never reads interfaces or the host name itself: the runtime
//! passes what it found in a [`SelfHint`]. Never does I/O.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use super::dial::should_dial;
use super::name::{host_match, HostMatch};
use super::{MeshError, NodeName};

/// Index of a server in one [`PeerTable`], in config order. Stable within that table only:
/// after a reload, map old ids to new ones with [`super::diff`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u16);

impl PeerId {
    /// Position of the entry in `peers`, from 0.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    #[cfg(test)]
    pub(crate) fn from_test(index: u16) -> PeerId {
        PeerId(index)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer#{}", self.0)
    }
}

/// Where to dial a peer: a host (IP literal without brackets, or a name to resolve) and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub host: String,
    pub port: u16,
}

impl PeerAddr {
    /// The host as an IP address, if it is a literal (no resolution needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for PeerAddr {
    /// `host:port`, with an IPv6 literal in brackets (`[::1]:4809`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.parse::<Ipv6Addr>().is_ok() {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What the runtime knows about this machine, to find this server in `peers`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelfHint {
    /// `--node NAME`: overrides everything else; must name a peer (ASCII case-insensitive).
    pub node: Option<String>,
    /// Host names of this machine, short and long (`node1`, `node1.example.com`).
    pub hostnames: Vec<String>,
    /// Addresses of this machine's interfaces (loopback included if the runtime lists it).
    pub local_addrs: Vec<IpAddr>,
    /// Port the peer listener is bound to: breaks a tie between entries that share a host
    /// (`127.0.0.1:4810` and `127.0.0.1:4811` on one test machine).
    pub listen_port: Option<u16>,
}

/// A host as compared for duplicates and changes: canonical IP, or lowercased name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HostKey {
    Ip(IpAddr),
    Name(String),
}

#[derive(Clone, Debug)]
struct Entry {
    name: NodeName,
    /// The address as written in the config.
    written: String,
    /// Host without brackets, as written.
    host: String,
    key: HostKey,
    port: Option<u16>,
}

/// The servers of the mesh, in config order, with the default `port`.
#[derive(Clone, Debug)]
pub struct PeerTable {
    entries: Vec<Entry>,
    default_port: u16,
}

impl PeerTable {
    /// Builds the table from the `peers` dictionary in config order (`name`, `address as
    /// written`) and the `port` option (default 4809) for addresses without a port.
    ///
    /// Fails on a bad name or address, on two names equal up to ASCII case, and on two entries
    /// with the same host and port. An empty table and a table of one (this server, no links)
    /// are valid.
    pub fn new(peers: &[(String, String)], default_port: u16) -> Result<PeerTable, MeshError> {
        if peers.len() > usize::from(u16::MAX) {
            return Err(MeshError::TooManyPeers { count: peers.len() });
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(peers.len());
        let mut by_name: HashMap<NodeName, usize> = HashMap::new();
        let mut by_addr: HashMap<(HostKey, u16), usize> = HashMap::new();
        for (name, addr) in peers {
            let name = NodeName::new(name)?;
            let (host, key, port) = parse_addr(&name, addr)?;
            let effective = match port {
                Some(p) => p,
                None if default_port == 0 => {
                    return Err(MeshError::BadAddress {
                        node: name.to_string(),
                        addr: addr.clone(),
                        reason: "it has no port and the default `port` is 0",
                    })
                }
                None => default_port,
            };
            // invariant: the maps hold indices of entries already pushed.
            if let Some(&i) = by_name.get(&name) {
                return Err(MeshError::DuplicateName {
                    first: entries[i].name.to_string(),
                    second: name.to_string(),
                });
            }
            if let Some(&i) = by_addr.get(&(key.clone(), effective)) {
                return Err(MeshError::DuplicateAddress {
                    addr: addr.clone(),
                    first: entries[i].name.to_string(),
                    second: name.to_string(),
                });
            }
            by_name.insert(name.clone(), entries.len());
            by_addr.insert((key.clone(), effective), entries.len());
            entries.push(Entry { name, written: addr.trim().to_owned(), host, key, port });
        }
        Ok(PeerTable { entries, default_port })
    }

    /// Number of servers, this one included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `port` used for addresses written without one.
    pub fn default_port(&self) -> u16 {
        self.default_port
    }

    /// Every id, in config order.
    pub fn ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        // The constructor caps the table at u16::MAX entries, so the cast is lossless.
        (0..self.entries.len()).map(|i| PeerId(i as u16))
    }

    /// Every id except `me`: the servers this one keeps links with.
    pub fn others(&self, me: PeerId) -> impl Iterator<Item = PeerId> + '_ {
        self.ids().filter(move |&id| id != me)
    }

    /// The name of `id`, if `id` belongs to this table.
    pub fn name(&self, id: PeerId) -> Option<&NodeName> {
        self.entry(id).map(|e| &e.name)
    }

    /// The address of `id` as written in the config.
    pub fn addr_as_written(&self, id: PeerId) -> Option<&str> {
        self.entry(id).map(|e| e.written.as_str())
    }

    /// The peer with this name (ASCII case-insensitive).
    pub fn find(&self, name: &str) -> Option<PeerId> {
        // invariant: ids from `self.ids()` index `self.entries`.
        self.ids().find(|&id| self.entries[id.index()].name.matches(name))
    }

    /// Where to dial `id`: its host and its port, or the default `port`. `None` only for an id
    /// from another table.
    pub fn resolve_addr(&self, id: PeerId) -> Option<PeerAddr> {
        self.entry(id).map(|e| PeerAddr { host: e.host.clone(), port: e.port.unwrap_or(self.default_port) })
    }

    /// Whether this server (`me`) dials `other`, rather than waiting for `other` to dial it.
    ///
    /// Exactly one side of every pair dials: the one whose node name is smaller (ASCII
    /// case-insensitive byte order). Both servers read the same `peers`, and the order is a
    /// total order on names that does not depend on the config's entry order, addresses or
    /// anything local, so for any pair `dials(a, b) != dials(b, a)`: one side connects, the
    /// other only accepts, and there is never a race of two simultaneous dials producing two
    /// links. Names are also what each side announces in its handshake, so the acceptor can
    /// apply the same rule ([`super::resolve_duplicate`]) when a second link appears anyway.
    /// `false` for `me == other` and for ids from another table.
    pub fn dials(&self, me: PeerId, other: PeerId) -> bool {
        match (self.name(me), self.name(other)) {
            (Some(a), Some(b)) if me != other => should_dial(a, b),
            _ => false,
        }
    }

    /// Finds this server in the table.
    ///
    /// With `--node NAME` (`hint.node`), the peer of that name (ASCII case-insensitive) or an
    /// error. Otherwise a peer is this server when its name, or the host of its address, is one
    /// of `hint.hostnames` (long or short form), or when its address (or name) is an IP
    /// literal among `hint.local_addrs`. Exact matches (same name, local address) win over
    /// matches of only the short form, so `mail` finds `mail.east.example.com` but not also
    /// `mail.west.example.com` when the long host name is known. If several entries still match
    /// and `hint.listen_port` is set, only those with that port count.
    pub fn identify_self(&self, hint: &SelfHint) -> Result<PeerId, MeshError> {
        if let Some(node) = &hint.node {
            return self.find(node).ok_or_else(|| MeshError::NoSelf {
                node: Some(node.clone()),
                looked_for: Vec::new(),
                candidates: self.describe(self.ids()),
            });
        }
        let local: HashSet<IpAddr> = hint.local_addrs.iter().map(|a| a.to_canonical()).collect();
        let hostnames: Vec<&str> =
            hint.hostnames.iter().map(|h| h.trim()).filter(|h| !h.is_empty()).collect();
        let by_name = |written: &str| {
            let mut best = hostnames.iter().filter_map(|h| host_match(written, h)).max();
            if let Ok(ip) = written.parse::<IpAddr>() {
                if local.contains(&ip.to_canonical()) {
                    best = Some(HostMatch::Exact);
                }
            }
            best
        };
        let strength = |e: &Entry| {
            let addr = match &e.key {
                HostKey::Ip(ip) if local.contains(ip) => Some(HostMatch::Exact),
                HostKey::Ip(_) => None,
                HostKey::Name(_) => by_name(&e.host),
            };
            addr.max(by_name(e.name.as_str()))
        };
        // invariant: ids from `self.ids()` index `self.entries`.
        let found: Vec<(PeerId, HostMatch)> =
            self.ids().filter_map(|id| strength(&self.entries[id.index()]).map(|s| (id, s))).collect();
        let Some(best) = found.iter().map(|&(_, s)| s).max() else {
            let mut looked_for = hostnames.iter().map(|h| h.to_string()).collect::<Vec<_>>();
            looked_for.extend(hint.local_addrs.iter().map(|a| a.to_string()));
            return Err(MeshError::NoSelf { node: None, looked_for, candidates: self.describe(self.ids()) });
        };
        let mut matches: Vec<PeerId> =
            found.into_iter().filter(|&(_, s)| s == best).map(|(id, _)| id).collect();
        if matches.len() > 1 {
            if let Some(port) = hint.listen_port {
                let on_port: Vec<PeerId> =
                    matches.iter().copied().filter(|&id| self.port_of(id) == port).collect();
                if !on_port.is_empty() {
                    matches = on_port;
                }
            }
        }
        match matches[..] {
            [one] => Ok(one),
            _ => Err(MeshError::AmbiguousSelf { matches: self.describe(matches.iter().copied()) }),
        }
    }

    /// Host and effective port of `id`, as compared for duplicates and changes.
    pub(crate) fn addr_key(&self, id: PeerId) -> Option<(&HostKey, u16)> {
        self.entry(id).map(|e| (&e.key, self.port_of(id)))
    }

    fn entry(&self, id: PeerId) -> Option<&Entry> {
        self.entries.get(id.index())
    }

    fn port_of(&self, id: PeerId) -> u16 {
        self.entry(id).and_then(|e| e.port).unwrap_or(self.default_port)
    }

    /// `name = address` of each id, as in the config, for error messages.
    fn describe(&self, ids: impl Iterator<Item = PeerId>) -> Vec<String> {
        ids.filter_map(|id| self.entry(id)).map(|e| format!("{} = {}", e.name, e.written)).collect()
    }
}

/// Splits an address as written into host, comparison key and optional port.
///
/// Accepted: `192.168.0.10`, `node1.example.com`, `10.0.0.1:4809`, `host:4810`, `::1`,
/// `[::1]`, `[::1]:4809`.
fn parse_addr(node: &NodeName, addr: &str) -> Result<(String, HostKey, Option<u16>), MeshError> {
    let bad = |reason| MeshError::BadAddress { node: node.to_string(), addr: addr.to_owned(), reason };
    let text = addr.trim();
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(bad("a '[' without its ']'"));
        };
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(bad("brackets must hold an IPv6 address"));
        }
        match after {
            "" => (inside, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (inside, Some(p)),
                None => return Err(bad("expected ':port' after ']'")),
            },
        }
    } else {
        match text.matches(':').count() {
            0 => (text, None),
            1 => match text.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (text, None),
            },
            _ if text.parse::<Ipv6Addr>().is_ok() => (text, None),
            _ => return Err(bad("not host:port; write an IPv6 address with a port as [addr]:port")),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) => return Err(bad("port 0 cannot be dialled")),
            Ok(p) => Some(p),
            Err(_) => return Err(bad("the port is not a number from 1 to 65535")),
        },
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((host.to_owned(), HostKey::Ip(ip.to_canonical()), port));
    }
    let plain = host.strip_suffix('.').unwrap_or(host);
    if plain.is_empty() || plain.len() > 253 {
        return Err(bad("the host name is empty or longer than 253 bytes"));
    }
    if !plain.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(bad("a host name may hold only letters, digits, '-', '_' and '.'"));
    }
    if plain.split('.').any(|label| label.is_empty() || label.starts_with('-')) {
        return Err(bad("a host name label is empty or starts with '-'"));
    }
    Ok((host.to_owned(), HostKey::Name(plain.to_ascii_lowercase()), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn table(peers: &[(&str, &str)]) -> PeerTable {
        try_table(peers).unwrap()
    }

    fn try_table(peers: &[(&str, &str)]) -> Result<PeerTable, MeshError> {
        let owned: Vec<(String, String)> =
            peers.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect();
        PeerTable::new(&owned, 4809)
    }

    fn vendor() -> PeerTable {
        table(&[("node1", "192.168.0.10"), ("node2", "192.168.0.11"), ("manager", "192.168.0.12")])
    }

    fn hint(hostnames: &[&str], addrs: &[&str]) -> SelfHint {
        SelfHint {
            node: None,
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            local_addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            listen_port: None,
        }
    }

    fn addr(t: &PeerTable, i: u16) -> String {
        t.resolve_addr(PeerId(i)).unwrap().to_string()
    }

    #[test]
    fn addresses_parse_with_default_port() {
        let t = table(&[
            ("a", "192.168.0.10"),
            ("b", "node1.example.com"),
            ("c", "10.0.0.1:4810"),
            ("d", "[::1]:4811"),
            ("e", "host:4812"),
            ("f", "::2"),
            ("g", "[::3]"),
            ("h", " trimmed.example. "),
        ]);
        assert_eq!(addr(&t, 0), "192.168.0.10:4809");
        assert_eq!(addr(&t, 1), "node1.example.com:4809");
        assert_eq!(addr(&t, 2), "10.0.0.1:4810");
        assert_eq!(addr(&t, 3), "[::1]:4811");
        assert_eq!(t.resolve_addr(PeerId(3)).unwrap().host, "::1");
        assert_eq!(addr(&t, 4), "host:4812");
        assert_eq!(addr(&t, 5), "[::2]:4809");
        assert_eq!(addr(&t, 6), "[::3]:4809");
        assert_eq!(addr(&t, 7), "trimmed.example.:4809");
        assert_eq!(t.addr_as_written(PeerId(2)), Some("10.0.0.1:4810"));
        assert_eq!(t.resolve_addr(PeerId(0)).unwrap().ip(), "192.168.0.10".parse().ok());
        assert_eq!(t.resolve_addr(PeerId(9)), None);
        assert_eq!(t.len(), 8);
    }

    #[test]
    fn bad_addresses_are_config_errors() {
        for bad in [
            "",
            "   ",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            "[::1",
            "[10.0.0.1]:4809",
            "[::1]4809",
            "a:b:c",
            "fe80::1%eth0",
            "bad host",
            "a..b",
            "-a",
            "a/b",
            "h:1:2",
        ] {
            let err = try_table(&[("n", bad)]).unwrap_err();
            assert!(matches!(err, MeshError::BadAddress { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("`n`"), "{err}");
        }
        let owned = vec![("n".to_string(), "host".to_string())];
        assert!(PeerTable::new(&owned, 0).is_err());
        assert!(try_table(&[("", "host")]).is_err());
    }

    #[test]
    fn duplicates_are_rejected_at_build() {
        let e = try_table(&[("node1", "10.0.0.1"), ("NODE1", "10.0.0.2")]).unwrap_err();
        assert!(matches!(e, MeshError::DuplicateName { .. }), "{e}");
        assert!(e.to_string().contains("NODE1"), "{e}");
        let e = try_table(&[("a", "10.0.0.1"), ("b", "10.0.0.1:4809")]).unwrap_err();
        assert!(matches!(e, MeshError::DuplicateAddress { .. }), "{e}");
        let e = try_table(&[("a", "Host.Example"), ("b", "host.example.")]).unwrap_err();
        assert!(matches!(e, MeshError::DuplicateAddress { .. }), "{e}");
        let e = try_table(&[("a", "::1"), ("b", "[0:0:0:0:0:0:0:1]:4809")]).unwrap_err();
        assert!(matches!(e, MeshError::DuplicateAddress { .. }), "{e}");
        // One host, two ports: a test machine running two servers.
        assert!(try_table(&[("a", "127.0.0.1:4810"), ("b", "127.0.0.1:4811")]).is_ok());
    }

    #[test]
    fn one_peer_and_no_peer_tables() {
        let t = table(&[("solo", "127.0.0.1")]);
        let me = t.identify_self(&hint(&[], &["127.0.0.1"])).unwrap();
        assert_eq!(t.others(me).count(), 0);
        assert!(!t.dials(me, me));
        let empty = table(&[]);
        assert!(empty.is_empty());
        let e = empty.identify_self(&hint(&["x"], &[])).unwrap_err();
        assert!(matches!(e, MeshError::NoSelf { .. }));
    }

    #[test]
    fn self_by_node_option() {
        let t = vendor();
        let mut h = hint(&["node1"], &["192.168.0.10"]);
        h.node = Some("MANAGER".into());
        assert_eq!(t.identify_self(&h), Ok(PeerId(2)));
        h.node = Some("node9".into());
        let e = t.identify_self(&h).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("node9") && msg.contains("manager = 192.168.0.12"), "{msg}");
    }

    #[test]
    fn self_by_short_and_long_hostname() {
        let t = vendor();
        assert_eq!(t.identify_self(&hint(&["node2"], &[])), Ok(PeerId(1)));
        assert_eq!(t.identify_self(&hint(&["node2.example.com"], &[])), Ok(PeerId(1)));
        let long = table(&[("node1.example.com", "10.0.0.1"), ("node2.example.com", "10.0.0.2")]);
        assert_eq!(long.identify_self(&hint(&["node2"], &[])), Ok(PeerId(1)));
        // Host name of the address, not of the entry's name.
        let by_host = table(&[("a", "mx1.example.com"), ("b", "mx2.example.com")]);
        assert_eq!(by_host.identify_self(&hint(&["mx2"], &[])), Ok(PeerId(1)));
    }

    #[test]
    fn exact_hostname_beats_short_form() {
        let t = table(&[("mail.west.example.com", "10.0.0.1"), ("mail.east.example.com", "10.0.0.2")]);
        let h = hint(&["mail", "mail.east.example.com"], &[]);
        assert_eq!(t.identify_self(&h), Ok(PeerId(1)));
        // Only the short name known: both match, and the error says so.
        let e = t.identify_self(&hint(&["mail"], &[])).unwrap_err();
        assert!(matches!(e, MeshError::AmbiguousSelf { .. }), "{e}");
    }

    #[test]
    fn self_by_address() {
        let t = vendor();
        let h = hint(&["unrelated"], &["127.0.0.1", "192.168.0.12"]);
        assert_eq!(t.identify_self(&h), Ok(PeerId(2)));
        let v6 = table(&[("a", "[2001:db8::1]:4809"), ("b", "2001:db8::2")]);
        assert_eq!(v6.identify_self(&hint(&[], &["2001:db8::2"])), Ok(PeerId(1)));
        // IPv4-mapped interface address.
        assert_eq!(t.identify_self(&hint(&[], &["::ffff:192.168.0.11"])), Ok(PeerId(1)));
        // A name that is an IP literal.
        let by_name = table(&[("10.1.1.1", "relay-a"), ("10.1.1.2", "relay-b")]);
        assert_eq!(by_name.identify_self(&hint(&[], &["10.1.1.2"])), Ok(PeerId(1)));
    }

    #[test]
    fn no_self_names_candidates_and_suggests_node() {
        let e = vendor().identify_self(&hint(&["node9"], &["10.9.9.9"])).unwrap_err();
        assert!(matches!(e, MeshError::NoSelf { .. }));
        let msg = e.to_string();
        for part in ["node1 = 192.168.0.10", "manager", "node9", "10.9.9.9", "--node"] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
    }

    #[test]
    fn ambiguous_self_and_port_disambiguation() {
        let t = table(&[("a", "127.0.0.1:4810"), ("b", "127.0.0.1:4811"), ("c", "127.0.0.1")]);
        let mut h = hint(&["devbox"], &["127.0.0.1", "10.0.0.5"]);
        let e = t.identify_self(&h).unwrap_err();
        assert!(matches!(e, MeshError::AmbiguousSelf { .. }));
        let msg = e.to_string();
        for part in ["a = 127.0.0.1:4810", "b = 127.0.0.1:4811", "--node"] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        h.listen_port = Some(4811);
        assert_eq!(t.identify_self(&h), Ok(PeerId(1)));
        h.listen_port = Some(4809);
        assert_eq!(t.identify_self(&h), Ok(PeerId(2)));
        // A port that matches none leaves it ambiguous.
        h.listen_port = Some(5000);
        assert!(t.identify_self(&h).is_err());
        // Two matches by different evidence are still ambiguous (never guess).
        let t = vendor();
        let h = hint(&["node1"], &["192.168.0.11"]);
        assert!(matches!(t.identify_self(&h), Err(MeshError::AmbiguousSelf { .. })));
    }

    #[test]
    fn dial_rule_is_antisymmetric_for_every_pair() {
        let t = table(&[
            ("node1", "10.0.0.1"),
            ("Node2", "10.0.0.2"),
            ("manager", "10.0.0.3"),
            ("ALPHA.example.com", "10.0.0.4"),
            ("alpha", "10.0.0.5"),
            ("zeta", "10.0.0.6"),
        ]);
        for a in t.ids() {
            assert!(!t.dials(a, a));
            for b in t.others(a) {
                assert_ne!(t.dials(a, b), t.dials(b, a), "{a} {b}");
            }
            // A node dials exactly the peers whose names sort after its own.
            let dialled = t.others(a).filter(|&b| t.dials(a, b)).count();
            let after = t.others(a).filter(|&b| t.name(b) > t.name(a)).count();
            assert_eq!(dialled, after);
        }
        // Independent of the order entries are written in.
        let rev = table(&[("zeta", "10.0.0.6"), ("node1", "10.0.0.1")]);
        assert!(rev.dials(PeerId(1), PeerId(0)));
        assert!(t.dials(PeerId(0), PeerId(5)));
        assert!(!t.dials(PeerId(0), PeerId(77)));
    }
}
