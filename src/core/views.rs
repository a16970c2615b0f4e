//! Membership ordering: joins and leaves become numbered views, in one order everywhere.
//!
//! Within a server, the group's owner shard orders its changes. Across servers, one server
//! orders all membership changes: the longest-running server among those this one is
//! linked to (ties broken by name), so that a restarted server never takes over ordering
//! from a running cluster. Other servers forward joins and leaves to it and install the
//! views it broadcasts. When it is lost, the next oldest continues from its replica.
//! Never does I/O.

use std::collections::HashSet;
use std::sync::Arc;

use crate::proto::{self, Cause, Frame, GroupName, Member, NodeTag, PeerJoin, PeerLeave, SessionId, View};

use super::groups::owner_of;
use super::{ShardCore, ShardMsg};

impl ShardCore {
    /// Sends a membership message to the owner shard of `group`.
    pub(super) fn send_to_owner(&mut self, group: &GroupName, msg: ShardMsg) {
        let owner = owner_of(group.as_bytes(), self.nshards);
        self.send_to_shard(owner, msg);
    }

    /// The server that orders membership, if it is not this one.
    pub(super) fn leader(&self) -> Option<NodeTag> {
        let me = (self.identity.boot, self.identity.node_name.as_str().to_lowercase());
        let mut best: Option<(u64, String, NodeTag)> = None;
        for l in &self.links {
            let key = (l.boot, l.name.as_str().to_lowercase());
            if key < me && best.as_ref().is_none_or(|b| (b.0, &b.1) > (key.0, &key.1)) {
                best = Some((key.0, key.1, l.tag));
            }
        }
        best.map(|b| b.2)
    }

    /// On the owner shard: a member joins (`Join`) or is reported by a link's state sync
    /// (`Network`). `via` is the server that sent it, if it came over a link.
    pub(super) fn owner_join(
        &mut self,
        group: GroupName,
        member: Member,
        cause: Cause,
        via: Option<NodeTag>,
    ) {
        if let Some(leader) = self.leader() {
            // A sync reaches every server; only the leader applies its copy. Our own
            // sessions' joins go to the leader. A join from the server we take for the
            // leader (which then takes us for it) is applied: that breaks the loop. Another
            // server's join is not relayed (peers speak only for their own sessions): its
            // server's state sync delivers it once it links to the leader.
            if cause == Cause::Network {
                return;
            }
            match via {
                None => {
                    let frame = Frame::PeerJoin(PeerJoin { cause, group, member }).to_bytes();
                    self.send_to_link(leader, frame, 1);
                    return;
                }
                Some(v) if v != leader => return,
                Some(_) => {}
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
        self.publish_view(group, cause, subject);
    }

    /// On the owner shard: a member leaves, disconnects or is gone with its server.
    pub(super) fn owner_leave(
        &mut self,
        group: GroupName,
        session: SessionId,
        cause: Cause,
        via: Option<NodeTag>,
    ) {
        if let Some(leader) = self.leader() {
            match via {
                None => {
                    let frame = Frame::PeerLeave(PeerLeave { cause, group, session }).to_bytes();
                    self.send_to_link(leader, frame, 1);
                    return;
                }
                Some(v) if v != leader => return,
                Some(_) => {}
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
        let Some(owned) = self.groups.get_mut(group.as_bytes()).and_then(|g| g.owned.as_mut()) else {
            return;
        };
        // View ids come from peers too: one at u64::MAX must not wrap (or panic) here.
        let Some(view_id) = owned.view_id.checked_add(1) else {
            tracing::error!(%group, "view id space exhausted: no new view is published");
            return;
        };
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
        let tags: Vec<NodeTag> = self.links.iter().map(|l| l.tag).collect();
        for tag in tags {
            self.send_to_link(tag, frame.clone(), 1);
        }
    }

    /// Installs a view: updates routing and the owner's replica, and sends the frame to the
    /// local members (and to a local leaver, whose last view of the group it is).
    pub(super) fn apply_view(
        &mut self,
        group: GroupName,
        frame: bytes::Bytes,
        view_id: u64,
        members: &Arc<[Member]>,
        leaver: Option<SessionId>,
    ) {
        // A copy of the installed view changes nothing. (An older id is still installed:
        // after a partition heals, the server that orders membership may number below what
        // the other side reached, until its republish; see docs/mesh.md.)
        if self.groups.get(group.as_bytes()).is_some_and(|g| g.installed == frame) {
            return;
        }
        let me = self.identity.node_tag;
        let mut local = Vec::new();
        let mut remote_shards = Vec::new();
        let mut nodes = Vec::new();
        for m in members.iter() {
            let node = m.session.node();
            if node != me {
                if !nodes.contains(&node) {
                    nodes.push(node);
                }
            } else if let Some(&conn) = self.sessions.get(&m.session) {
                local.push(conn);
            } else {
                let shard = self.shard_of(m.session);
                if shard != self.id && !remote_shards.contains(&shard) {
                    remote_shards.push(shard);
                }
            }
        }
        let mut recipients = local.clone();
        if let Some(&conn) = leaver.and_then(|s| self.sessions.get(&s)) {
            recipients.push(conn);
        }
        let is_owner = owner_of(group.as_bytes(), self.nshards) == self.id;
        if members.is_empty() {
            self.groups.remove(group.as_bytes());
        } else {
            let g = self.groups.entry(group);
            g.local = local;
            g.remote_shards = remote_shards;
            g.nodes = nodes;
            g.members = members.len();
            g.installed = frame.clone();
            if is_owner {
                let owned = g.owned.get_or_insert_with(Default::default);
                owned.view_id = owned.view_id.max(view_id);
                owned.members = members.iter().map(|m| (m.session, m.clone())).collect();
                owned.last_frame = frame.clone();
            }
        }
        for conn in recipients {
            self.send_frame(conn, frame.clone());
        }
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

    /// After the set of linked servers changed: if this server orders membership, members
    /// on servers it can no longer reach leave every view it owns, with cause Network.
    pub(super) fn reconcile_membership(&mut self) {
        if self.leader().is_some() {
            return;
        }
        let me = self.identity.node_tag;
        let reachable: Vec<NodeTag> = self.links.iter().map(|l| l.tag).chain([me]).collect();
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
        synced: &HashSet<(GroupName, SessionId)>,
    ) {
        if self.leader().is_some() {
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
            } else if !owned.last_frame.is_empty() {
                let frame = owned.last_frame.clone();
                self.send_to_link(tag, frame, 1);
            }
        }
    }
}

/// A view's members as shared between shards.
pub(super) fn members_of(v: &proto::View) -> Arc<[Member]> {
    v.members.iter().cloned().collect()
}
