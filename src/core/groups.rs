//! The group table of one shard: who receives a group's traffic, and, on the group's owner
//! shard, the replica of its membership and view numbering.
//!
//! Every group has one owner shard on each server (a hash of its name). On the server that
//! orders membership (see `views.rs`), the owner shard numbers every view of the group and
//! broadcasts it; on every server it keeps the replica a successor needs to take over.
//! Other shards keep only routing: local member connections, other shards and other servers
//! with members. Never does I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use crate::proto::{GroupName, Member, NodeTag, SenderEnd, SessionId};

use super::ConnId;

/// One group as seen by one shard.
#[derive(Debug, Default)]
pub struct Group {
    /// Member connections on this shard, from the latest view.
    pub local: Vec<ConnId>,
    /// Other shards of this server with at least one member.
    pub remote_shards: Vec<u16>,
    /// Other servers (by node tag) with at least one member.
    pub nodes: Vec<NodeTag>,
    /// Members in the installed view (the one the members here were last sent), and its id.
    pub members: usize,
    pub view_id: u64,
    /// The newest view received: it routes this shard's senders' multicasts (to `nodes`
    /// and `remote_shards`) and stamps them, while the members may still wait for it in
    /// `pending` (see `flush.rs`).
    pub send_view: u64,
    /// Views received and not yet installed, oldest first: each waits for the flush of the
    /// one before it.
    pub pending: VecDeque<Pending>,
    /// This shard's sessions that multicast to the group since its last mark: their first
    /// and last sequence numbers since, all sent under `send_view`.
    pub sent: HashMap<SessionId, (u64, u64)>,
    /// The view of the last mark this shard sent each server for the group.
    pub marked: HashMap<NodeTag, u64>,
    /// Senders' ends owed to servers that no path reached when they were marked, for
    /// their next mark (see `flush.rs`).
    pub unsent: HashMap<NodeTag, Vec<SenderEnd>>,
    /// The view that gave this shard its first member after it had none (0 without).
    pub since: u64,
    /// Runs from other servers sent under a view this shard has not installed yet, in the
    /// order they came, and when: delivered after that view (see `inbound.rs`).
    pub early: VecDeque<Early>,
    /// The VIEW frame installed last here, to ignore a copy of it (a server whose link
    /// comes up may be sent a group's current view more than once).
    pub installed: Bytes,
    /// Present on the owner shard only.
    pub owned: Option<Owned>,
    /// Views (the installed one, or ones still to come) in which this shard told (or asked)
    /// the other survivors what it delivered of the senders of these lost servers: it
    /// delivers no more of theirs in them but what a survivor passes on (see `survivors.rs`).
    pub committed: Vec<(u64, Vec<NodeTag>)>,
    /// When this shard asked the other survivors what they delivered, in the installed
    /// view, of lost servers' senders whose end waited too long for a next view: it ends
    /// them once all have answered (see `survivors.rs`; installing a view ends them too,
    /// and clears this).
    pub ending: Option<Instant>,
}

/// A run of multicasts held until its view is installed here.
#[derive(Debug)]
pub struct Early {
    pub run: Bytes,
    pub arrival: super::Arrival,
    pub since: Option<Instant>,
}

/// A view received and waiting to be installed.
#[derive(Debug)]
pub struct Pending {
    pub frame: Bytes,
    pub view_id: u64,
    pub members: std::sync::Arc<[Member]>,
    pub leaver: Option<SessionId>,
    /// When it came.
    pub since: Option<Instant>,
    /// The epoch of the configuration installed here when its flush last asked the others
    /// what they delivered of lost servers' senders (0: never; see `survivors.rs`).
    pub asked: u64,
    /// The servers it counted lost then.
    pub lost: Vec<NodeTag>,
}

/// The owner shard's replica of a group's membership.
#[derive(Debug, Default)]
pub struct Owned {
    pub view_id: u64,
    pub members: BTreeMap<SessionId, Member>,
    /// The newest VIEW frame, for servers whose link just came up.
    pub last_frame: Bytes,
    /// Members were added by a link's state sync; a view is published when it completes.
    pub dirty: bool,
    /// Changes held while a new configuration's state exchange completes: the cause and
    /// subject of the one held change (a Network view if several were).
    pub held: Option<(crate::proto::Cause, SessionId)>,
    pub held_count: u32,
}

impl Owned {
    /// Whether `member` may join: under `max_members` (limits.0), and the VIEW listing it
    /// still fits a frame of `max_frame` bytes (limits.1).
    pub fn fits_one_more(&self, group: &GroupName, member: &Member, limits: (usize, usize)) -> bool {
        let (max_members, max_frame) = limits;
        if self.members.len() >= max_members {
            return false;
        }
        // VIEW: header 6, cause 1, group length 1, ids 24, count 4, the group, the members.
        let fixed = 36 + group.len();
        let size: usize = self.members.values().chain([member]).map(|m| 9 + m.name.as_bytes().len()).sum();
        fixed + size <= max_frame
    }

    /// FNV-1a over the member session ids, to compare views between servers.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for s in self.members.keys() {
            for b in s.0.to_be_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
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
    /// The stored name of a group (shares its bytes).
    pub fn key(&self, name: &[u8]) -> Option<GroupName> {
        self.groups.get_key_value(name).map(|(k, _)| k.clone())
    }
    /// The stored name of a group, and the group.
    pub fn key_value(&self, name: &[u8]) -> Option<(GroupName, &Group)> {
        self.groups.get_key_value(name).map(|(k, g)| (k.clone(), g))
    }
    /// The same without cloning the name (for the per-run path).
    pub fn key_value_ref(&self, name: &[u8]) -> Option<(&GroupName, &Group)> {
        self.groups.get_key_value(name)
    }
    pub fn entry(&mut self, name: GroupName) -> &mut Group {
        self.groups.entry(name).or_default()
    }
    pub fn remove(&mut self, name: &[u8]) {
        self.groups.remove(name);
    }
    /// Names of the groups with runs held for a view and no view waiting (those wait with
    /// it).
    pub fn names_with_early(&self) -> Vec<GroupName> {
        let holding = |g: &Group| !g.early.is_empty() && g.pending.is_empty();
        self.groups.iter().filter(|(_, g)| holding(g)).map(|(k, _)| k.clone()).collect()
    }
    /// Names of the groups with views waiting to be installed.
    pub fn names_with_pending(&self) -> Vec<GroupName> {
        self.groups.iter().filter(|(_, g)| !g.pending.is_empty()).map(|(k, _)| k.clone()).collect()
    }
    /// Forgets the ends owed to the servers of `gone` (earlier runs of servers that
    /// restarted: no mark will carry them). A group kept only for them is dropped when a
    /// view without members is installed next.
    pub fn drop_ends_to(&mut self, gone: &[NodeTag]) {
        for g in self.groups.values_mut() {
            g.unsent.retain(|tag, _| !gone.contains(tag));
        }
    }
    /// Names of the groups whose replica this shard owns.
    pub fn owned_names(&self) -> Vec<GroupName> {
        self.groups.iter().filter(|(_, g)| g.owned.is_some()).map(|(k, _)| k.clone()).collect()
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

    #[test]
    fn ends_owed_to_a_dead_run_are_forgotten() {
        let (old_run, other) = (NodeTag(0x7d1), NodeTag(0xbb9));
        let end = SenderEnd { sender: SessionId::new(NodeTag(0x3e9), 1), first: 1, seq: 9, stamp: 5 };
        let name = |s: &str| GroupName::new(s).unwrap();
        let mut table = GroupTable::default();
        table.entry(name("one")).unsent.insert(old_run, vec![end]);
        let both = table.entry(name("both"));
        both.unsent.insert(old_run, vec![end]);
        both.unsent.insert(other, vec![end]);

        table.drop_ends_to(&[old_run]);
        assert_eq!(table.get(b"one").map(|g| g.unsent.len()), Some(0));
        let left: Vec<NodeTag> = table.get(b"both").unwrap().unsent.keys().copied().collect();
        assert_eq!(left, [other], "ends owed to a live server stay");
    }
}
