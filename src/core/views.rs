//! Membership ordering: joins and leaves become numbered views, in one order everywhere.
//!
//! Within a server, the group's owner shard orders its changes. Across servers, the
//! ordering server of the installed configuration (see `membership.rs`) orders all of them:
//! other servers forward joins and leaves to it and install the views it broadcasts. View
//! ids start each configuration at its epoch (`epoch << EPOCH_SHIFT`), so they only grow.
//! When the ordering server is lost, the next configuration's continues from its replica,
//! rebuilt by every server's state sync. Never does I/O.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::proto::{
    self, Cause, Frame, GroupName, Member, MemberVersion, NodeTag, PeerJoin, PeerLeave, SessionId, View,
};

use super::groups::{owner_of, Pending};
use super::membership::EPOCH_SHIFT;

/// Emptied groups whose last view id a shard remembers.
const MAX_RETIRED: usize = 65536;
use super::{ConnId, ShardCore, ShardMsg};

impl ShardCore {
    /// Sends a membership message to the owner shard of `group`.
    pub(super) fn send_to_owner(&mut self, group: &GroupName, msg: ShardMsg) {
        let owner = owner_of(group.as_bytes(), self.nshards);
        self.send_to_shard(owner, msg);
    }

    /// On the owner shard: a member joins (`Join`) or is reported by a link's state sync
    /// (`Network`). `via` is the server that sent it, if it came over a link.
    pub(super) fn owner_join(
        &mut self,
        group: GroupName,
        member: Member,
        cause: Cause,
        via: Option<NodeTag>,
        version: u64,
    ) {
        if let Some(leader) = self.leader() {
            // Our own sessions' joins go to the ordering server. Another server's join (or
            // state sync) reached us while configurations changed: not ours to order, and
            // never relayed (peers speak only for their own sessions); its server's state
            // sync in the next configuration carries it.
            if via.is_none() && cause != Cause::Network {
                let frame = Frame::PeerJoin(PeerJoin { cause, group, member, version }).to_bytes();
                self.send_to_link(leader, frame, 1);
            }
            return;
        }
        // A state sync's member (Network) may repeat the version of the last join or leave
        // it reflects; a join must be newer than everything applied from its shard.
        if let Some(origin) = via {
            if !self.fresh_version(origin, version, cause == Cause::Network) {
                return;
            }
        }
        let limits = (self.limits.max_group_members, self.limits.max_frame);
        let owned = self.groups.entry(group.clone()).owned.get_or_insert_with(Default::default);
        let subject = member.session;
        if !owned.members.contains_key(&subject) && !owned.fits_one_more(&group, &member, limits) {
            self.stats.limit_refusals += 1;
            tracing::warn!(%group, session = %subject, "join refused: max_group_members or max_frame_size reached");
            return;
        }
        let known = owned.members.insert(subject, member).is_some();
        if cause == Cause::Network {
            owned.dirty |= !known;
            return;
        }
        if !known {
            self.publish_view(group, cause, subject);
        }
    }

    /// On the owner shard: a member leaves, disconnects or is gone with its server.
    pub(super) fn owner_leave(
        &mut self,
        group: GroupName,
        session: SessionId,
        cause: Cause,
        via: Option<NodeTag>,
        version: u64,
    ) {
        if let Some(leader) = self.leader() {
            if via.is_none() {
                let frame = Frame::PeerLeave(PeerLeave { cause, group, session, version }).to_bytes();
                self.send_to_link(leader, frame, 1);
            }
            return;
        }
        if let Some(origin) = via {
            if !self.fresh_version(origin, version, false) {
                return;
            }
        }
        let Some(owned) = self.groups.get_mut(group.as_bytes()).and_then(|g| g.owned.as_mut()) else {
            return;
        };
        if owned.members.remove(&session).is_none() {
            return;
        }
        self.publish_view(group, cause, session);
    }

    /// Numbers a new view of `group` from the owner's replica, encodes it once and sends it
    /// to every shard and every linked server.
    pub(super) fn publish_view(&mut self, group: GroupName, cause: Cause, subject: SessionId) {
        let waiting = self.sync_wait.is_some();
        let Some(owned) = self.groups.get_mut(group.as_bytes()).and_then(|g| g.owned.as_mut()) else {
            return;
        };
        if waiting {
            // A new configuration's state exchange is not complete: a view now would drop
            // the members of servers whose state has not arrived. Published when it is.
            owned.dirty = true;
            if cause != Cause::Network {
                owned.held = Some((cause, subject));
                owned.held_count += 1;
            }
            return;
        }
        // A single join or leave held during the exchange is named as the cause, if the
        // exchange did not undo it (a member that left may be back in a server's state).
        let listed = |s: &SessionId| owned.members.contains_key(s);
        let (cause, subject) = match (owned.held.take(), std::mem::take(&mut owned.held_count)) {
            (Some((held, s)), 1) if cause == Cause::Network && listed(&s) == (held == Cause::Join) => {
                (held, s)
            }
            _ => (cause, subject),
        };
        // The first view of a configuration starts at its epoch; ids only grow. (View ids
        // come from peers too, checked below 2^62, so this cannot overflow.)
        let epoch_start = self.mesh.config.epoch.saturating_mul(1 << EPOCH_SHIFT);
        // Above every view this shard saw of the group, also one it forgot when the group
        // emptied (`retired`).
        let retired = self.retired.get(group.as_bytes()).copied().unwrap_or(0);
        let view_id = (owned.view_id.max(retired) + 1).max(epoch_start + 1);
        if view_id >= super::shard::MAX_COUNTER {
            tracing::error!(%group, "view id space exhausted: no new view is published");
            return;
        }
        owned.view_id = view_id;
        owned.dirty = false;
        let members: Arc<[Member]> = owned.members.values().cloned().collect();
        let view = View {
            cause,
            group: group.clone(),
            view_id: owned.view_id,
            group_seq: 0,
            subject,
            members: members.to_vec(),
        };
        let view_id = view.view_id;
        let frame = Frame::View(view).to_bytes();
        self.stats.views += 1;
        let leaver = (cause == Cause::Leave).then_some(subject);
        self.broadcast(ShardMsg::View { group, frame: frame.clone(), view_id, members, leaver });
        // Every other server of the configuration, linked directly or not. (Not a server
        // outside it: the view would drop its members without their knowing; its next
        // configuration's sync brings it the views.)
        let me = self.identity.node_tag;
        let tags: Vec<NodeTag> = self.mesh.config.members.iter().copied().filter(|&t| t != me).collect();
        for tag in tags {
            self.send_to_link(tag, frame.clone(), 1);
        }
    }

    /// A view arrived: this shard's senders are routed and stamped by it at once, and their
    /// ends under the views before it are marked to every shard that may wait for them; the
    /// members here get it once the flush allows (see `flush.rs`).
    pub(super) fn apply_view(
        &mut self,
        group: GroupName,
        frame: bytes::Bytes,
        view_id: u64,
        members: &Arc<[Member]>,
        leaver: Option<SessionId>,
    ) {
        // A copy of a view received already, or an older one (a view that took a slower
        // path), changes nothing: members see view ids only grow.
        let newest = self.groups.get(group.as_bytes()).map_or(0, |g| g.send_view);
        if newest.max(self.retired.get(group.as_bytes()).copied().unwrap_or(0)) >= view_id {
            return;
        }
        let me = self.identity.node_tag;
        let mut remote_shards = Vec::new();
        let mut nodes = Vec::new();
        for m in members.iter() {
            let node = m.session.node();
            if node != me {
                if !nodes.contains(&node) {
                    nodes.push(node);
                }
            } else if !self.sessions.contains_key(&m.session) {
                let shard = self.shard_of(m.session);
                if !remote_shards.contains(&shard) {
                    remote_shards.push(shard);
                }
            }
        }
        let is_owner = owner_of(group.as_bytes(), self.nshards) == self.id;
        let g = self.groups.entry(group.clone());
        let old_nodes = std::mem::replace(&mut g.nodes, nodes);
        g.remote_shards = remote_shards;
        let old_view = std::mem::replace(&mut g.send_view, view_id);
        if is_owner {
            let owned = g.owned.get_or_insert_with(Default::default);
            owned.view_id = owned.view_id.max(view_id);
            owned.members = members.iter().map(|m| (m.session, m.clone())).collect();
            owned.last_frame = frame.clone();
        }
        let since = self.clock;
        g.pending.push_back(Pending {
            frame,
            view_id,
            members: members.clone(),
            leaver,
            since,
            asked: 0,
            lost: vec![],
        });
        self.send_marks(&group, view_id, (old_view, old_nodes));
        self.try_install(group.as_bytes());
    }

    /// Sends a view to the members here: the ones it lists, a local leaver (its last view
    /// of the group), and any it drops; with `only_dropped`, not to the members it keeps
    /// (the shard routes by it all the same).
    pub(super) fn install_view(&mut self, group: GroupName, p: Pending, only_dropped: bool) {
        let Pending { frame, view_id, members, leaver, .. } = p;
        let name = group.clone();
        let me = self.identity.node_tag;
        let local: Vec<ConnId> = members
            .iter()
            .filter(|m| m.session.node() == me)
            .filter_map(|m| self.sessions.get(&m.session).copied())
            .collect();
        // (A member it adds needs a first view all the same.)
        let mut recipients = match self.groups.get(group.as_bytes()) {
            Some(g) if only_dropped => local.iter().filter(|c| !g.local.contains(c)).copied().collect(),
            _ => local.clone(),
        };
        if let Some(&conn) = leaver.and_then(|s| self.sessions.get(&s)) {
            recipients.push(conn);
        }
        // A local member this view drops (it left, or the ordering server no longer counts
        // it) is told: the view without it is its last of the group for now.
        if let Some(g) = self.groups.get(group.as_bytes()) {
            for &conn in g.local.iter().filter(|c| !local.contains(c)) {
                if !recipients.contains(&conn) {
                    recipients.push(conn);
                }
            }
        }
        if local.is_empty() {
            self.forget_group(group.as_bytes());
        }
        let g = self.groups.entry(group.clone());
        // A group with ends still owed to a server no path reaches stays (without members)
        // until its next mark carries them: a server cut off alone installs a view without
        // the others' members, and its senders' last numbers in the view before must still
        // reach them after the heal.
        if members.is_empty() && g.pending.is_empty() && g.unsent.is_empty() {
            self.groups.remove(group.as_bytes());
            self.forget_marks(group.as_bytes());
            // Remembered so that the group's ids keep growing if it comes back; bounded
            // (forgetting only risks a stale view being installed, which the next fixes).
            if self.retired.len() >= MAX_RETIRED {
                self.retired.clear();
            }
            self.retired.insert(group.clone(), view_id);
        } else {
            g.view_id = view_id;
            if local.is_empty() {
                g.since = 0;
            } else if g.local.is_empty() {
                g.since = view_id;
            }
            g.local = local;
            g.members = members.len();
            g.installed = frame.clone();
        }
        for conn in recipients {
            self.send_frame(conn, frame.clone());
        }
        // Runs that were sent under this view, or an older one, follow it (dropped if no
        // member is here; a later view's runs stay held, it may bring members back).
        self.release_early(name.as_bytes(), view_id);
    }

    /// On the ordering server: whether a membership message from `origin` with `version`
    /// is newer than what this shard applied from the same sending shard (or, `same_ok`,
    /// as new: a state sync reflects the change that has its version); records it if so.
    /// Messages take different paths while links change; this keeps their order.
    fn fresh_version(&mut self, origin: NodeTag, version: u64, same_ok: bool) -> bool {
        let key = (origin, MemberVersion::shard(version));
        let count = MemberVersion::count(version);
        let seen = self.applied.get(&key).copied();
        let fresh = match seen {
            None => true,
            Some(s) => count > s || (same_ok && count == s),
        };
        if fresh {
            self.applied.insert(key, count);
        }
        fresh
    }

    /// A server's state sync told us its newest view of `group` (id and member digest):
    /// continue numbering above it, and republish ours when the sync completes if it saw a
    /// newer view, or the same id with other members (another server ordered membership
    /// while the two were apart), so that every member ends with one view.
    pub(super) fn raise_view_id(&mut self, group: GroupName, view_id: u64, digest: u64) {
        if let Some(owned) = self.groups.get_mut(group.as_bytes()).and_then(|g| g.owned.as_mut()) {
            if view_id > owned.view_id || (view_id == owned.view_id && digest != owned.digest()) {
                owned.view_id = owned.view_id.max(view_id);
                owned.dirty = true;
            }
        }
    }

    /// A configuration was installed and this server orders membership in it: members on
    /// servers outside it leave every view it owns, with cause Network.
    pub(super) fn reconcile_membership(&mut self) {
        if self.leader().is_some() {
            return;
        }
        let reachable: Vec<NodeTag> = self.mesh.config.members.iter().copied().collect();
        for group in self.groups.owned_names() {
            let Some(owned) = self.groups.get_mut(group.as_bytes()).and_then(|g| g.owned.as_mut()) else {
                continue;
            };
            let before = owned.members.len();
            owned.members.retain(|s, _| reachable.contains(&s.node()));
            if owned.members.len() != before || owned.dirty {
                self.publish_view(group, Cause::Network, SessionId::NONE);
            }
        }
    }

    /// A linked server finished the state sync of its sessions `serial % shards == shard`.
    /// If this server orders membership: members of those sessions that the sync did not
    /// announce are gone (cause Network), changed groups get a new view, and the others'
    /// current views go to that server so it can route to their members.
    pub(super) fn handle_sync_done(
        &mut self,
        tag: NodeTag,
        shard: u16,
        shards: u16,
        version: u64,
        synced: &HashSet<(GroupName, SessionId)>,
    ) {
        if self.leader().is_some() || !self.mesh.config.members.contains(&tag) {
            return;
        }
        if !self.fresh_version(tag, version, true) {
            return;
        }
        let theirs = |s: &SessionId| {
            s.node() == tag && (s.0 & 0xffff_ffff) % u64::from(shards.max(1)) == u64::from(shard)
        };
        for group in self.groups.owned_names() {
            let Some(owned) = self.groups.get_mut(group.as_bytes()).and_then(|g| g.owned.as_mut()) else {
                continue;
            };
            let before = owned.members.len();
            owned.members.retain(|s, _| !theirs(s) || synced.contains(&(group.clone(), *s)));
            if owned.dirty || owned.members.len() != before {
                self.publish_view(group, Cause::Network, SessionId::NONE);
            } else if !owned.last_frame.is_empty() && tag != self.identity.node_tag {
                let frame = owned.last_frame.clone();
                self.send_to_link(tag, frame, 1);
            }
        }
        self.sync_part_done(tag, shard, shards);
    }

    /// On the ordering server, after installing a configuration: hold views until every
    /// other member's state is in (ended by the last part, or by `expire_sync_wait`).
    pub(super) fn start_sync_wait(&mut self) {
        let me = self.identity.node_tag;
        let pending: BTreeMap<NodeTag, BTreeSet<u16>> =
            self.mesh.config.members.iter().filter(|&&t| t != me).map(|&t| (t, BTreeSet::new())).collect();
        self.sync_wait =
            if pending.is_empty() { None } else { Some(SyncWait { since: self.clock, pending }) };
    }

    /// A part of a member's state arrived; when every part of every member has, the
    /// groups that changed get their views.
    fn sync_part_done(&mut self, tag: NodeTag, shard: u16, shards: u16) {
        let Some(w) = self.sync_wait.as_mut() else { return };
        if let Some(done) = w.pending.get_mut(&tag) {
            done.insert(shard);
            if done.len() >= usize::from(shards) {
                w.pending.remove(&tag);
            }
        }
        if w.pending.is_empty() {
            self.end_sync_wait();
        }
    }

    /// A member's state did not arrive within `link_timeout` (it is slow, or a new
    /// configuration is on its way): publish what changed anyway.
    pub(super) fn expire_sync_wait(&mut self, now: Instant) {
        let limit = self.limits.link_timeout;
        if self.sync_wait.as_ref().is_some_and(|w| w.since.is_none_or(|s| now.duration_since(s) >= limit)) {
            self.end_sync_wait();
        }
    }

    fn end_sync_wait(&mut self) {
        self.sync_wait = None;
        for group in self.groups.owned_names() {
            if self.groups.get(group.as_bytes()).and_then(|g| g.owned.as_ref()).is_some_and(|o| o.dirty) {
                self.publish_view(group, Cause::Network, SessionId::NONE);
            }
        }
    }
}

/// The ordering server's wait for the state of a new configuration's members: the shard
/// parts received from each.
#[derive(Debug)]
pub(crate) struct SyncWait {
    since: Option<Instant>,
    pending: BTreeMap<NodeTag, BTreeSet<u16>>,
}

/// A view's members as shared between shards.
pub(super) fn members_of(v: &proto::View) -> Arc<[Member]> {
    v.members.iter().cloned().collect()
}
