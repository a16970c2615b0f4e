//! Node names and the host-name comparisons the mesh relies on.
//!
//! Owns the `NodeName` newtype (parse, don't validate) and the rules by which a name written in
//! `peers` matches a host name of this machine (long or short form, ASCII case-insensitive).
//! Never resolves names (no DNS), never does I/O.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use super::MeshError;
use crate::proto::{Name, MAX_NAME_LEN};

/// The name of a server in `peers`: 1 to 255 bytes of UTF-8 without control characters.
///
/// Shown exactly as written in the config, but compared, hashed and ordered without regard to
/// ASCII case (`Node1` and `node1` are the same server), because node names are host names.
/// Non-ASCII characters are compared exactly, so both ends of a link always agree on the
/// order (no Unicode tables involved). There is no 19-character limit.
#[derive(Clone)]
pub struct NodeName(String);

impl NodeName {
    /// Parses a node name as written in `peers` or given with `--node`.
    pub fn new(name: &str) -> Result<NodeName, MeshError> {
        let bad = |reason| MeshError::BadNodeName { name: name.escape_debug().to_string(), reason };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad("it is longer than 255 bytes"));
        }
        if name.chars().any(char::is_control) {
            return Err(bad("it contains a control character"));
        }
        Ok(NodeName(name.to_owned()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` names this node (ASCII case-insensitive), e.g. a name from a handshake.
    pub fn matches(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }

    /// The name as carried in HELLO/WELCOME.
    pub fn to_wire(&self) -> Name {
        // invariant: a NodeName is valid UTF-8 of at most MAX_NAME_LEN bytes, which is
        // exactly what Name accepts; the fallback is never taken.
        Name::new(&self.0).unwrap_or_default()
    }
}

impl PartialEq for NodeName {
    fn eq(&self, other: &NodeName) -> bool {
        self.matches(&other.0)
    }
}
impl Eq for NodeName {}

impl Hash for NodeName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for b in self.0.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
        state.write_u8(0xff);
    }
}

impl Ord for NodeName {
    fn cmp(&self, other: &NodeName) -> Ordering {
        cmp_ignore_ascii_case(&self.0, &other.0)
    }
}
impl PartialOrd for NodeName {
    fn partial_cmp(&self, other: &NodeName) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Byte-wise order of the ASCII-lowercased strings (a total order both ends compute alike).
pub(crate) fn cmp_ignore_ascii_case(a: &str, b: &str) -> Ordering {
    a.bytes().map(|c| c.to_ascii_lowercase()).cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

/// How strongly a name from `peers` matches a host name of this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HostMatch {
    /// Only the short form matches the long one (`node1` vs `node1.example.com`).
    Short,
    /// The same name (ignoring ASCII case and one trailing dot), or a local address.
    Exact,
}

/// Compares a name written in `peers` with a host name of this machine.
///
/// Equal names (ASCII case-insensitive, a trailing dot ignored) match exactly; a short name
/// matches a long one whose first label it is, in either direction. IP literals never match by
/// short form (`10` is not a short form of `10.0.0.1`). Two long names from different domains
/// never match.
pub(crate) fn host_match(written: &str, hostname: &str) -> Option<HostMatch> {
    let a = written.strip_suffix('.').unwrap_or(written);
    let b = hostname.strip_suffix('.').unwrap_or(hostname);
    if a.is_empty() || b.is_empty() {
        return None;
    }
    if a.eq_ignore_ascii_case(b) {
        return Some(HostMatch::Exact);
    }
    if a.parse::<IpAddr>().is_ok() || b.parse::<IpAddr>().is_ok() {
        return None;
    }
    let short_of = |short: &str, long: &str| {
        !short.contains('.')
            && long.split_once('.').is_some_and(|(first, _)| first.eq_ignore_ascii_case(short))
    };
    if short_of(a, b) || short_of(b, a) {
        Some(HostMatch::Short)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_checked() {
        assert!(NodeName::new("").is_err());
        assert!(NodeName::new("a\nb").is_err());
        assert!(NodeName::new(&"n".repeat(256)).is_err());
        // No 19-character limit.
        let long = "a-rather-long-node-name.mail.example.com";
        assert_eq!(NodeName::new(long).unwrap().as_str(), long);
        assert!(NodeName::new(&"n".repeat(255)).is_ok());
        assert_eq!(NodeName::new("knödel").unwrap().to_wire().as_str(), "knödel");
    }

    #[test]
    fn names_compare_without_case_but_display_as_written() {
        let a = NodeName::new("Node1.Example.COM").unwrap();
        let b = NodeName::new("node1.example.com").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.cmp(&b), Ordering::Equal);
        assert_eq!(a.to_string(), "Node1.Example.COM");
        let set: HashSet<NodeName> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 1);
        let x = NodeName::new("Alpha").unwrap();
        let y = NodeName::new("beta").unwrap();
        assert!(x < y, "case must not decide the order ('A' < 'b' but also 'a' < 'b')");
        assert!(NodeName::new("B").unwrap() > NodeName::new("a").unwrap());
    }

    #[test]
    fn host_matching() {
        use HostMatch::*;
        assert_eq!(host_match("node1", "node1"), Some(Exact));
        assert_eq!(host_match("NODE1.example.com.", "node1.Example.com"), Some(Exact));
        assert_eq!(host_match("node1", "node1.example.com"), Some(Short));
        assert_eq!(host_match("node1.example.com", "node1"), Some(Short));
        assert_eq!(host_match("node1.a.com", "node1.b.com"), None);
        assert_eq!(host_match("node1", "node10"), None);
        assert_eq!(host_match("10", "10.0.0.1"), None);
        assert_eq!(host_match("10.0.0.1", "10.0.0.1"), Some(Exact));
        assert_eq!(host_match("", ""), None);
        assert_eq!(host_match(".", "."), None);
    }
}
