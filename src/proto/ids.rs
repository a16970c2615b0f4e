//! Identifier newtypes that cross the wire: session ids, node tags and group names.
//!
//! Owns parsing of these values from untrusted bytes ("parse, don't validate"). Never does I/O.

use bytes::Bytes;
use std::fmt;

use super::ProtoError;

/// Longest group name, in bytes of UTF-8.
pub const MAX_GROUP_LEN: usize = 255;
/// Longest client or node name carried in HELLO/WELCOME and views, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A cluster-wide unique session id: node tag in the upper 32 bits, a per-server counter below.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SessionId(pub u64);

impl SessionId {
    /// "No session" (the wire value 0).
    pub const NONE: SessionId = SessionId(0);

    pub fn new(node: NodeTag, serial: u32) -> SessionId {
        SessionId((u64::from(node.0) << 32) | u64::from(serial))
    }
    /// The tag of the server that accepted this session.
    pub fn node(self) -> NodeTag {
        NodeTag((self.0 >> 32) as u32)
    }
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}:{}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// A server's identity for one run: random, never 0, new at every start.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct NodeTag(pub u32);

/// A group name: 1..=255 bytes of UTF-8. Cheap to clone (shares its bytes).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(Bytes);

impl GroupName {
    /// Parses a group name from wire bytes, sharing them.
    pub fn from_bytes(bytes: Bytes) -> Result<GroupName, ProtoError> {
        if bytes.is_empty() || bytes.len() > MAX_GROUP_LEN {
            return Err(ProtoError::BadGroup);
        }
        if std::str::from_utf8(&bytes).is_err() {
            return Err(ProtoError::BadGroup);
        }
        Ok(GroupName(bytes))
    }
    pub fn new(name: &str) -> Result<GroupName, ProtoError> {
        GroupName::from_bytes(Bytes::copy_from_slice(name.as_bytes()))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn as_str(&self) -> &str {
        // invariant: constructed only from validated UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::borrow::Borrow<[u8]> for GroupName {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}
impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client or node name as shown in views: 0..=255 bytes of UTF-8.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Name(Bytes);

impl Name {
    pub fn from_bytes(bytes: Bytes) -> Result<Name, ProtoError> {
        if bytes.len() > MAX_NAME_LEN || std::str::from_utf8(&bytes).is_err() {
            return Err(ProtoError::Malformed("name is longer than 255 bytes or not UTF-8"));
        }
        Ok(Name(bytes))
    }
    pub fn new(name: &str) -> Result<Name, ProtoError> {
        Name::from_bytes(Bytes::copy_from_slice(name.as_bytes()))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn as_str(&self) -> &str {
        // invariant: constructed only from validated UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}
impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_parts() {
        let id = SessionId::new(NodeTag(0xdead_beef), 7);
        assert_eq!(id.node(), NodeTag(0xdead_beef));
        assert_eq!(id.0 & 0xffff_ffff, 7);
        assert_eq!(id.to_string(), "deadbeef:7");
    }

    #[test]
    fn group_names_are_checked() {
        assert!(GroupName::new("").is_err());
        assert!(GroupName::new(&"x".repeat(256)).is_err());
        assert!(GroupName::new(&"x".repeat(255)).is_ok());
        assert!(GroupName::from_bytes(Bytes::from_static(&[0xff, 0xfe])).is_err());
        assert_eq!(GroupName::new("grüße").unwrap().as_str(), "grüße");
    }
}
