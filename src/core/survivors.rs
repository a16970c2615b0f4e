//! What survivors owe each other of a lost server's multicasts.
//!
//! When a server is lost, each of the others delivered what reached it of its senders'
//! frames: one may have more than another (the last frames were in flight on links that
//! died). Members that move together to the next view must have delivered the same in the
//! old one, so before that view:
//!
//! - each shard keeps the remote frames it delivered lately (`Delivered`, within
//!   `resend_buffer` bytes);
//! - a lost server's sender's track is not ended at once (`SenderTrack::lost`): its end
//!   waits for the next view, or `HOLD_LINK_TIMEOUTS` link timeouts if none comes (then,
//!   with members here, for the answers to the same question as below, about the view
//!   installed here: `expire_lost`);
//! - with its marks of the next view, each shard sends every server that had members in
//!   its installed view the frames of such senders it delivered in that view, as relayed
//!   resends of their origin flagged PASSED (a server with none of a sender's frames
//!   could not even ask for them; what one has already is dropped there as copies; what
//!   the lost server sends itself comes without the flag and is dropped if it reaches a
//!   server that already marked a view leaving that server out: see
//!   `ShardCore::moved_past`), and in a PEER_MARK with
//!   flag LOST, where it stands with each such sender and the highest number it delivered
//!   in that view (and, under their own view, the numbers of frames it holds for a view
//!   still to come before the marked one: it delivers those there); the flush waits for
//!   the highest number any survivor listed, like for any sender it waits for;
//! - a flush that waits here for a view ordered before the loss gets no such marks (no view
//!   drops the lost server's members if it had none, and the others may have delivered
//!   the view already), so the shard asks the other shards here (each may have delivered
//!   what came before it was asked) and the other survivors' shards what they delivered
//!   of lost servers' senders in the view installed here (`ask_survivors`); each answers
//!   at once with those frames (and those it holds behind a hole, if that view is still
//!   installed there), passed on, then their numbers (`answer_ask`), and the
//!   flush waits for all answers and numbers; having asked or answered, a shard delivers
//!   no more of those senders in that view (also if it has yet to install it) than
//!   survivors pass on (`Group::committed`);
//! - just before the view is delivered, each such sender's end is reported to the members
//!   as a gap from the next number on, as before.
//!
//! Never does I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::proto::{Frame, GroupName, NodeTag, PeerMark, SenderEnd, SessionId};

use super::groups::Group;
use super::inbound::{mcast_frames, SenderTrack, HOLD_LINK_TIMEOUTS};
use super::membership::epoch_of;
use super::{Arrival, Envelope, ShardCore, ShardMsg};

/// Views of a group a shard commits to at once (the installed one and ones still to come):
/// a bound against a peer that asks about views without end. Past it, an answer about yet
/// another view still to come commits nothing (this shard delivers in it what comes).
const MAX_COMMITTED: usize = 64;

/// Remote runs this shard delivered, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    runs: VecDeque<Kept>,
    bytes: usize,
}

#[derive(Debug)]
struct Kept {
    group: GroupName,
    run: Bytes,
    /// The view installed here when it was delivered.
    view: u64,
}

impl Delivered {
    /// Remembers a run of remote frames just delivered to `group`'s members in `view`,
    /// within `limit` bytes (`resend_buffer`: the oldest are forgotten first).
    pub(super) fn keep(&mut self, group: GroupName, run: Bytes, view: u64, limit: usize) {
        self.bytes += run.len();
        self.runs.push_back(Kept { group, run, view });
        while self.bytes > limit {
            let Some(old) = self.runs.pop_front() else { break };
            self.bytes -= old.run.len();
        }
    }
}

/// A run of one lost server's sender's frames to pass on: the sender, the frames, their
/// count and the view they were delivered in.
pub(super) type PassOn = (SessionId, Bytes, u32, u64);

impl ShardCore {
    /// The lost servers' senders of `group` whose end waits here, for the PEER_MARKs of view
    /// `marking` with flag LOST: each with the installed view (`stamp`), the last number
    /// delivered here (`first`: where this shard stands) and the highest delivered or held
    /// in that view (`seq`, 0 if none: what members moving on from it must have). With them,
    /// the frames of theirs this shard delivered in that view, as far as it kept them, and
    /// holds, to pass on: one run per sender, in number order, with its frame count and that
    /// view. Only frames of the same view are passed on: another view may be one of another
    /// partition, whose members were not owed them. Frames of any unreachable server's
    /// senders held for a view still to come before `marking` are listed and passed on too,
    /// under that view (`early_of_lost`).
    pub(super) fn lost_senders(&self, group: &GroupName, marking: u64) -> (Vec<SenderEnd>, Vec<PassOn>) {
        let (mut ends, mut runs) = self.lost_in_installed(group);
        for ((stamp, sender), frames) in self.early_of_lost(group, marking) {
            if let Some((&seq, _)) = frames.last_key_value() {
                ends.push(SenderEnd { sender, first: 0, seq, stamp });
                runs.push((sender, joined(&frames), frames.len() as u32, stamp));
            }
        }
        (ends, runs)
    }

    /// [`Self::lost_senders`] in the installed view.
    fn lost_in_installed(&self, group: &GroupName) -> (Vec<SenderEnd>, Vec<PassOn>) {
        let Some(g) = self.groups.get(group.as_bytes()) else { return (vec![], vec![]) };
        let Some(tracks) = self.remote.get(group.as_bytes()) else { return (vec![], vec![]) };
        let view = g.view_id;
        let lost = |t: &SenderTrack| t.lost && (!t.tentative && t.last > 0 || !t.held().is_empty());
        let mut ends: BTreeMap<_, _> = tracks
            .iter()
            .filter(|(s, t)| lost(t) && !self.mesh.reachable.contains(&s.node()))
            .map(|(&sender, t)| (sender, SenderEnd { sender, first: t.last, seq: 0, stamp: view }))
            .collect();
        if ends.is_empty() {
            return (vec![], vec![]);
        }
        let mut runs = Vec::new();
        let mut frames = self.kept_in(group, view, |s| ends.contains_key(&s));
        // Frames held (after a hole, or on a track a relayed frame started) are delivered in
        // this view too, before the next one at the latest (`flush_held`): they count.
        add_held(&mut frames, tracks, |s| ends.contains_key(&s));
        for (sender, frames) in frames {
            if let (Some(e), Some((&seq, _))) = (ends.get_mut(&sender), frames.last_key_value()) {
                e.seq = seq;
            }
            runs.push((sender, joined(&frames), frames.len() as u32, view));
        }
        (ends.into_values().collect(), runs)
    }

    /// The frames of unreachable servers' senders that `group` holds for views still to come
    /// before `marking` (`Group::early`: they came before this shard learned of `marking`),
    /// per view and sender, by number. This shard delivers them when it installs their view
    /// (no flag set on arrival drops them), so members moving on from that view must have
    /// them too: the mark lists them under that view and passes them on. Those of a server
    /// this shard committed for their view (`commit`) are dropped then, and left out.
    fn early_of_lost(
        &self,
        group: &GroupName,
        marking: u64,
    ) -> BTreeMap<(u64, SessionId), BTreeMap<u64, Bytes>> {
        let mut frames: BTreeMap<(u64, SessionId), BTreeMap<u64, Bytes>> = BTreeMap::new();
        let Some(g) = self.groups.get(group.as_bytes()) else { return frames };
        let committed =
            |stamp: u64, t: NodeTag| g.committed.iter().any(|(v, lost)| *v >= stamp && lost.contains(&t));
        for e in g.early.iter().filter(|e| !e.arrival.superseded && e.arrival.stamp < marking) {
            let stamp = e.arrival.stamp;
            for (h, at, size) in mcast_frames(&e.run) {
                let t = h.sender.node();
                if !self.mesh.reachable.contains(&t) && !committed(stamp, t) {
                    let kept = frames.entry((stamp, h.sender)).or_default();
                    kept.entry(h.seq).or_insert_with(|| e.run.slice(at..at + size));
                }
            }
        }
        frames
    }

    /// The frames of the senders `of` picks that this shard delivered to `group` in `view`,
    /// as far as it kept them: per sender, by number.
    fn kept_in(
        &self,
        group: &GroupName,
        view: u64,
        of: impl Fn(SessionId) -> bool,
    ) -> BTreeMap<SessionId, BTreeMap<u64, Bytes>> {
        let mut frames: BTreeMap<SessionId, BTreeMap<u64, Bytes>> = BTreeMap::new();
        for k in self.delivered.runs.iter().filter(|k| k.view == view && k.group == *group) {
            for (h, at, size) in mcast_frames(&k.run) {
                if of(h.sender) {
                    let kept = frames.entry(h.sender).or_default();
                    kept.entry(h.seq).or_insert_with(|| k.run.slice(at..at + size));
                }
            }
        }
        frames
    }

    /// The flush before `view_id` of `group` waits here, and servers of the configuration
    /// that ordered it are lost, or that configuration leaves out servers with members in
    /// the installed view. Their senders' last frames may have reached only some of
    /// the survivors, and those may have delivered them and the view already: nothing else
    /// would tell this shard (a view that drops the lost servers' members comes only if
    /// they had any). So it asks the other shards of this server and every shard of the
    /// other survivors of that configuration what they delivered of such senders in the
    /// view installed here, once per configuration installed here (and again if one more
    /// of its servers is lost before the next), and the flush waits for every answer.
    pub(super) fn ask_survivors(&mut self, group: &[u8], view_id: u64) {
        let me = self.identity.node_tag;
        let epoch = self.mesh.config.epoch;
        let Some((key, g)) = self.groups.key_value(group) else { return };
        let installed = g.view_id;
        let Some(p) = g.pending.front() else { return };
        let config = self.mesh.config_of(view_id).unwrap_or(&self.mesh.config);
        let reachable = &self.mesh.reachable;
        // Lost: servers of that configuration not reachable now, and servers with members in
        // the installed view that it leaves out (a survivor may have marked the view while it
        // still reached them through a relay, and listed nothing of theirs).
        let gone = |t: &NodeTag| *t != me && !reachable.contains(t);
        let any_gone = config.members.iter().any(gone);
        // Asked already in this configuration, about every server lost since. (One more may
        // be lost before the next configuration comes: a survivor that delivered its frames
        // and the view meanwhile would not tell otherwise.)
        let asked = p.asked == epoch && config.members.iter().filter(|t| gone(t)).all(|t| p.lost.contains(t));
        if any_gone && asked {
            return; // still waiting for lost servers
        }
        let left_out = |t: &NodeTag| *t != me && !config.members.contains(t);
        let mut left: Vec<NodeTag> = Vec::new();
        if epoch_of(installed) != epoch_of(view_id) {
            if let Ok(Frame::View(v)) = crate::proto::parse_whole(g.installed.clone()) {
                left = v.members.iter().map(|m| m.session.node()).filter(left_out).collect();
            }
        }
        if !any_gone && left.is_empty() {
            // All back: their marks tell what this shard owes (an answer to a question
            // asked before is not waited for, but counts if it comes).
            if let Some(p) = self.groups.get_mut(group).and_then(|g| g.pending.front_mut()) {
                p.asked = 0;
            }
            return;
        }
        if asked || installed == 0 || installed >= view_id {
            return;
        }
        let (survivors, mut lost): (Vec<NodeTag>, Vec<NodeTag>) =
            config.members.iter().copied().filter(|t| *t != me).partition(|t| reachable.contains(t));
        lost.extend(left);
        lost.sort_unstable();
        lost.dedup();
        if let Some(g) = self.groups.get_mut(group) {
            if let Some(p) = g.pending.front_mut() {
                p.asked = epoch;
                p.lost.clone_from(&lost);
            }
            commit(g, installed, &lost);
        }
        tracing::debug!(node = %self.identity.node_name, shard = self.id, group = %key, view_id, installed, "asking the survivors what they delivered of lost servers' senders");
        self.send_question(key, view_id, installed, &lost, &survivors);
    }

    /// Asks the other shards here and every shard of `survivors` what they delivered to
    /// `group` in view `prev` of the senders of the `lost` servers, for the flush before
    /// `view_id` (`answer_ask`); answers to earlier questions no longer count.
    fn send_question(
        &mut self,
        group: GroupName,
        view_id: u64,
        prev: u64,
        lost: &[NodeTag],
        survivors: &[NodeTag],
    ) {
        let me = self.identity.node_tag;
        // Answers to an earlier question may lack the servers lost since.
        self.marks
            .get_mut(group.as_bytes())
            .into_iter()
            .flat_map(|m| m.values_mut())
            .for_each(|m| m.answered = 0);
        let ask = PeerMark {
            group,
            view_id,
            prev,
            shard: self.id,
            shards: self.nshards,
            more: false,
            lost: false,
            ask: true,
            answer: false,
            ends: lost
                .iter()
                .map(|&tag| SenderEnd { sender: SessionId::new(tag, 0), first: 0, seq: 0, stamp: 0 })
                .collect(),
        };
        // The other shards here are asked too: each got the same frames, but may have
        // delivered some of them before this shard asked, or may not have committed yet.
        self.send_to_other_shards(&ShardMsg::Mark { origin: me, mark: Arc::new(ask.clone()) });
        let ask = Frame::PeerMark(ask).to_bytes();
        for &tag in survivors {
            self.send_to_link(tag, ask.clone(), 1);
        }
    }

    /// Shard `ask.shard` of server `origin` asks what this shard delivered to `ask.group`
    /// in view `ask.prev` of the senders of the servers it lost (listed in `ask.ends`), this
    /// one can no longer reach, or its next configuration leaves out: it gets those frames,
    /// passed on as for a view that drops their members, then the answer (one or more marks
    /// flagged ANSWER, the last without MORE; one without ends if none). If this shard
    /// still has that view installed, the frames it holds behind a hole count as delivered;
    /// if it has it installed or still to come, it delivers no more of those senders' frames
    /// in it than it answered.
    pub(super) fn answer_ask(&mut self, origin: NodeTag, ask: &PeerMark) {
        let (group, view) = (&ask.group, ask.prev);
        let me = self.identity.node_tag;
        let mut lost: Vec<NodeTag> = ask.ends.iter().map(|e| e.sender.node()).collect();
        lost.extend(self.mesh.config.members.iter().filter(|t| !self.mesh.reachable.contains(t)));
        // And servers the asker's next configuration leaves out whose senders' frames this
        // shard delivered in that view: a sender that is no member there (the asker could
        // not name its server) may have reached only this side. (A question that awaits no
        // view, about the installed one, has no next configuration.)
        let next = (ask.view_id > view).then(|| self.mesh.config_of(ask.view_id)).flatten();
        let owed = |t: NodeTag| {
            t != origin && t != me && (lost.contains(&t) || next.is_some_and(|c| !c.members.contains(&t)))
        };
        let mut kept = self.kept_in(group, view, |s| owed(s.node()));
        lost.extend(kept.keys().map(|s| s.node()));
        lost.retain(|&t| t != origin && t != me);
        lost.sort_unstable();
        lost.dedup();
        // A view still to come here is committed to as well: the asker moves on from it with
        // what this shard answers, so the frames held for it must not add to that.
        let installed = self.groups.get_mut(group.as_bytes()).filter(|g| g.view_id <= view).map(|g| {
            commit(g, view, &lost);
            g.view_id
        });
        if installed == Some(view) {
            // Frames held here after a hole are delivered in this view once the hole is
            // filled (survivors pass on what they have of it) or reported: they count as
            // delivered, or the asker would move on without them.
            if let Some(tracks) = self.remote.get(group.as_bytes()) {
                add_held(&mut kept, tracks, |s| lost.contains(&s.node()));
            }
        }
        let mut ends = Vec::with_capacity(kept.len());
        for (sender, frames) in kept {
            let (Some((&first, _)), Some((&seq, _))) = (frames.first_key_value(), frames.last_key_value())
            else {
                continue;
            };
            ends.push(SenderEnd { sender, first, seq, stamp: view });
            let (run, count) = (joined(&frames), frames.len() as u32);
            if origin == me {
                self.pass_to_shard(ask.shard, group, sender, run, count, view);
            } else {
                self.pass_on(origin, sender, run, count, view);
            }
        }
        tracing::debug!(node = %self.identity.node_name, shard = self.id, to = origin.0, %group, view, senders = ends.len(), "answering what this shard delivered of lost servers' senders");
        let mut chunks: Vec<&[SenderEnd]> = ends.chunks(self.ends_per_mark(group)).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let answer = PeerMark {
                group: group.clone(),
                view_id: ask.view_id,
                prev: view,
                shard: self.id,
                shards: self.nshards,
                more: i < last,
                lost: false,
                ask: false,
                answer: true,
                ends: chunk.to_vec(),
            };
            if origin == me {
                if let Some(q) = self.outgoing.get_mut(ask.shard as usize) {
                    q.push(ShardMsg::Mark { origin: me, mark: Arc::new(answer) });
                }
            } else {
                self.send_to_link(origin, Frame::PeerMark(answer).to_bytes(), 1);
            }
        }
    }

    /// [`Self::pass_on`] to shard `shard` of this server, which asked: over the shards'
    /// channel, so the run arrives before the answer that lists it.
    fn pass_to_shard(
        &mut self,
        shard: u16,
        group: &GroupName,
        sender: SessionId,
        run: Bytes,
        count: u32,
        view: u64,
    ) {
        tracing::debug!(node = %self.identity.node_name, shard = self.id, to_shard = shard, %sender, count, "passing on a lost server's frames");
        let Some(slot) = self.in_flight.get_mut(shard as usize) else { return };
        *slot += run.len();
        let arrival = Arrival { resent: true, passed: true, relayed: true, stamp: view, superseded: false };
        let msg = ShardMsg::Deliver { from: self.id, group: group.clone(), frames: run, count, arrival };
        self.outgoing[shard as usize].push(msg);
    }

    /// Sends server `to` a run of `sender`'s frames (of a lost server) delivered here in view
    /// `view`: relayed, as a resend of their own server.
    pub(super) fn pass_on(&mut self, to: NodeTag, sender: SessionId, run: Bytes, count: u32, view: u64) {
        tracing::debug!(node = %self.identity.node_name, shard = self.id, to = to.0, %sender, count, "passing on a lost server's frames");
        self.stats.resent += u64::from(count);
        let envelope =
            Envelope { origin: sender.node(), dest: to, hops: 0, resent: true, passed: true, stamp: view };
        self.route(envelope, run, count);
    }

    /// Lost servers' senders whose end waited `HOLD_LINK_TIMEOUTS` link timeouts for a view
    /// that did not come. Where no member here is owed their frames, or a view is on its
    /// way, they end now. Otherwise no view may come at all (a sender that is no member:
    /// its loss orders none), and each survivor may stand at a different frame of it, while
    /// members that later move on together must have delivered the same. So the shard asks
    /// the survivors what they delivered of those senders in the view installed here, as a
    /// flush would (`ask_ends`), and ends them once every shard answered and the frames
    /// listed arrived, or when as long again has passed.
    pub(super) fn expire_lost(&mut self, now: Instant) {
        let limit = self.limits.link_timeout * HOLD_LINK_TIMEOUTS;
        let due: Vec<GroupName> = self
            .remote
            .iter()
            .filter(|(_, s)| {
                s.values().any(|t| t.lost && t.lost_at.is_some_and(|at| now.duration_since(at) >= limit))
            })
            .map(|(g, _)| g.clone())
            .collect();
        for group in due {
            let asking =
                self.groups.get(group.as_bytes()).filter(|g| !g.local.is_empty() && g.pending.is_empty());
            let Some(g) = asking else {
                self.end_lost_senders(&group);
                continue;
            };
            match g.ending {
                Some(since) => {
                    if now.duration_since(since) >= limit || self.ends_agreed(&group, g.view_id) {
                        self.end_lost_senders(&group);
                    }
                }
                None => self.ask_ends(&group, now),
            }
        }
    }

    /// The question of [`Self::expire_lost`], about the view installed here.
    fn ask_ends(&mut self, group: &GroupName, now: Instant) {
        let me = self.identity.node_tag;
        let reachable = &self.mesh.reachable;
        let mut lost: Vec<NodeTag> = self.remote.get(group.as_bytes()).map_or_else(Vec::new, |tracks| {
            tracks
                .iter()
                .filter(|(_, t)| t.lost)
                .map(|(s, _)| s.node())
                .filter(|t| !reachable.contains(t))
                .collect()
        });
        lost.sort_unstable();
        lost.dedup();
        if lost.is_empty() {
            self.end_lost_senders(group); // all back: nothing to end
            return;
        }
        let Some(g) = self.groups.get_mut(group.as_bytes()) else { return };
        let view = g.view_id;
        g.ending = Some(now);
        commit(g, view, &lost);
        let survivors: Vec<NodeTag> =
            self.mesh.config.members.iter().copied().filter(|t| *t != me && reachable.contains(t)).collect();
        tracing::debug!(node = %self.identity.node_name, shard = self.id, %group, view, "asking the survivors what they delivered of lost senders that no view ended");
        self.send_question(group.clone(), view, view, &lost, &survivors);
    }

    /// Whether every shard asked by [`Self::ask_ends`] (still reachable) answered about
    /// `view`, and the lost servers' frames they listed arrived here.
    fn ends_agreed(&self, group: &GroupName, view: u64) -> bool {
        let Some(marks) = self.marks.get(group.as_bytes()) else { return false };
        let reachable = &self.mesh.reachable;
        let tracks = self.remote.get(group.as_bytes());
        let reached =
            |sender: &SessionId, seq: u64| tracks.and_then(|t| t.get(sender)).is_some_and(|t| t.reached(seq));
        let answered = |at: (NodeTag, u16)| {
            marks.get(&at).is_some_and(|m| {
                m.answered >= view
                    && m.ends.iter().all(|(&(s, stamp), &(_, seq))| {
                        stamp != view || reachable.contains(&s.node()) || reached(&s, seq)
                    })
            })
        };
        self.shards_to_hear(&self.mesh.config, marks).all(answered)
    }

    /// Before a view of `group` is delivered here (or when [`Self::expire_lost`] ends them):
    /// the lost servers' senders whose end waited end now (a gap from the next number on),
    /// unless their server came back.
    pub(super) fn end_lost_senders(&mut self, group: &GroupName) {
        if let Some(g) = self.groups.get_mut(group.as_bytes()) {
            g.ending = None;
        }
        let Some(tracks) = self.remote.get_mut(group.as_bytes()) else { return };
        let mut ending = Vec::new();
        for (&sender, t) in tracks.iter_mut().filter(|(_, t)| t.lost) {
            t.lost = false;
            if !self.mesh.reachable.contains(&sender.node()) {
                ending.push(sender);
            }
        }
        for sender in ending {
            self.flush_sender(group, sender, Some(u64::MAX));
        }
    }
}

/// `g` delivers no more in `view` (installed, or still to come) of the senders of `lost`
/// than it has (and what survivors pass on).
fn commit(g: &mut Group, view: u64, lost: &[NodeTag]) {
    let installed = g.view_id;
    g.committed.retain(|(v, _)| *v >= installed);
    match g.committed.iter_mut().find(|(v, _)| *v == view) {
        Some((_, servers)) => {
            for &t in lost {
                if !servers.contains(&t) {
                    servers.push(t);
                }
            }
        }
        None => {
            if g.committed.len() >= MAX_COMMITTED {
                if view != installed {
                    return;
                }
                // The installed view always counts: the farthest one still to come gives way.
                let far = g.committed.iter().enumerate().max_by_key(|(_, (v, _))| *v).map(|(i, _)| i);
                if let Some(i) = far {
                    g.committed.swap_remove(i);
                }
            }
            g.committed.push((view, lost.to_vec()));
        }
    }
}

/// Adds to `frames` (per sender, by number) the frames that `tracks` hold of the senders
/// `of` picks: after a hole, or on a track a relayed frame started.
fn add_held(
    frames: &mut BTreeMap<SessionId, BTreeMap<u64, Bytes>>,
    tracks: &HashMap<SessionId, SenderTrack>,
    of: impl Fn(SessionId) -> bool,
) {
    for (&sender, t) in tracks.iter().filter(|(&s, t)| of(s) && !t.held().is_empty()) {
        frames.entry(sender).or_default().extend(t.held().iter().map(|(&n, f)| (n, f.clone())));
    }
}

/// Frames of one sender, by number, as one run.
fn joined(frames: &BTreeMap<u64, Bytes>) -> Bytes {
    let mut run = BytesMut::new();
    frames.values().for_each(|f| run.extend_from_slice(f));
    run.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed_views(g: &Group) -> Vec<u64> {
        let mut views: Vec<u64> = g.committed.iter().map(|(v, _)| *v).collect();
        views.sort_unstable();
        views
    }

    #[test]
    fn commits_are_kept_per_view_and_bounded() {
        let (a, b) = (NodeTag(7), NodeTag(9));
        let mut g = Group { view_id: 100, ..Default::default() };
        commit(&mut g, 100, &[a]);
        commit(&mut g, 103, &[a]);
        commit(&mut g, 103, &[b, a]);
        assert_eq!(committed_views(&g), [100, 103]);
        let servers = &g.committed.iter().find(|(v, _)| *v == 103).unwrap().1;
        assert_eq!(servers, &[a, b], "servers merge without repeats");

        // Installing a later view forgets the commits below it.
        g.view_id = 103;
        commit(&mut g, 104, &[a]);
        assert_eq!(committed_views(&g), [103, 104]);

        // Views still to come are bounded; the installed view always gets in.
        for v in 105..105 + MAX_COMMITTED as u64 {
            commit(&mut g, v, &[a]);
        }
        assert_eq!(g.committed.len(), MAX_COMMITTED);
        assert!(!committed_views(&g).contains(&(104 + MAX_COMMITTED as u64)));
        let farthest = 105 + MAX_COMMITTED as u64;
        g.committed.retain(|(v, _)| *v != 103);
        commit(&mut g, farthest, &[a]);
        assert_eq!(g.committed.len(), MAX_COMMITTED);
        commit(&mut g, 103, &[b]);
        assert_eq!(g.committed.len(), MAX_COMMITTED);
        assert!(committed_views(&g).contains(&103));
        assert!(!committed_views(&g).contains(&farthest), "the farthest gave way");
    }
}
