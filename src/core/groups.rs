//! The group table of one shard: who receives a group's traffic, and, for the groups this
//! shard owns, the authoritative membership and view numbering.
//!
//! Every group has one owner shard (a hash of its name). The owner orders all joins and
//! leaves of the group on this server and broadcasts each resulting view to every shard, so
//! views change in the same order everywhere. Other shards keep a replica: their local
//! member connections and which shards have members. Never does I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::proto::{GroupName, Name, SessionId};

use super::ConnId;

/// A member as the shards know it: its session, name and the shard that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub session: SessionId,
    pub name: Name,
    pub shard: u16,
}

/// One group as seen by one shard.
#[derive(Debug, Default)]
pub struct Group {
    /// Member connections on this shard, from the latest view.
    pub local: Vec<ConnId>,
    /// Other shards with at least one member, from the latest view.
    pub remote_shards: Vec<u16>,
    /// Present on the owner shard only.
    pub owned: Option<Owned>,
}

/// The owner's authoritative state of a group.
#[derive(Debug, Default)]
pub struct Owned {
    pub view_id: u64,
    pub members: BTreeMap<SessionId, MemberInfo>,
}

impl Owned {
    pub fn member_list(&self) -> Arc<[MemberInfo]> {
        self.members.values().cloned().collect()
    }
}

/// All groups known to one shard.
#[derive(Debug, Default)]
pub struct GroupTable {
    groups: HashMap<GroupName, Group>,
}

impl GroupTable {
    pub fn get(&self, name: &[u8]) -> Option<&Group> {
        self.groups.get(name)
    }
    pub fn get_mut(&mut self, name: &[u8]) -> Option<&mut Group> {
        self.groups.get_mut(name)
    }
    pub fn entry(&mut self, name: GroupName) -> &mut Group {
        self.groups.entry(name).or_default()
    }
    pub fn remove(&mut self, name: &[u8]) {
        self.groups.remove(name);
    }
}

/// The shard that owns `group` among `nshards` (FNV-1a, stable across runs and builds).
pub fn owner_of(group: &[u8], nshards: u16) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in group {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % u32::from(nshards.max(1))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_spread_and_are_stable() {
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            let g = format!("group-{i}");
            let o = owner_of(g.as_bytes(), 4);
            assert_eq!(o, owner_of(g.as_bytes(), 4));
            seen[o as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
        assert_eq!(owner_of(b"x", 1), 0);
    }
}
