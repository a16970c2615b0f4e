//! The flush before a view: members that move together from one view of a group to the
//! next have delivered the same multicasts in the first.
//!
//! A shard routes and stamps its senders' multicasts by a new view as soon as it receives
//! it, and marks that moment to every shard that may wait for it (PEER_MARK to the servers
//! with members in the old or the new view; `ShardMsg::Mark` to the other shards here):
//! for each of its sessions that multicast to the group since its previous mark, the last
//! sequence number and the view it went under. Everything after the mark carries the new
//! view's stamp, which holds it back at every receiver until the view is delivered there
//! (`Group::early`). A server that no path reaches gets no mark (it would be dropped on the
//! way, and the chain of marks, each naming the one before, would break there): its ends
//! go with the next mark it gets.
//!
//! A shard with members in both the installed view and the next one delivers the next one
//! only when every other shard of the configuration's reachable servers has marked it (or
//! a later view) and every sender listed has reached, here, the number listed (delivered,
//! or reported missing). Marks are sent on receipt, not on delivery, so no shard waits for
//! another that waits for it. A shard lost on the way ends the wait (its senders' streams
//! end with a gap notice), and so does `HOLD_LINK_TIMEOUTS` link timeouts: then every
//! listed number not reached is reported as a gap, exactly. Never does I/O.
//!
//! Of a server that is lost, the survivors pass on to each other what they delivered of
//! its senders in the same view before the next one (`survivors.rs`). A view ordered
//! before a server was lost, with that server's members, is skipped for the one the next
//! configuration orders without them, unless it drops a member here (the servers cut off
//! from each other would install it apart, each with what reached it; a member it adds
//! sees its join in the next one).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::proto::{
    Frame, GroupName, Member, NodeTag, PeerMark, SenderEnd, SessionId, MARK_END_LEN, MARK_FIXED,
};

use super::groups::Pending;
use super::inbound::HOLD_LINK_TIMEOUTS;
use super::membership::Config;
use super::{ConnId, ShardCore, ShardMsg};

/// Groups whose marks a shard keeps before it forgets them all (a bound; a forgotten mark
/// only makes a view wait for its timeout).
const MAX_MARKED_GROUPS: usize = 1 << 16;

/// Marks kept per shard that overtook the one before them (a bound).
const MAX_AHEAD: usize = 64;
/// Senders' ends kept per server that no path reached (the newest).
const MAX_UNSENT_ENDS: usize = 4096;

/// What one shard of another server (or of this one) marked for one group.
#[derive(Debug, Default)]
pub(crate) struct MarkIn {
    /// The newest view it marked completely.
    view: u64,
    /// Its server's shard count.
    shards: u16,
    /// Its senders' first and last numbers by sender and view sent under, until reached here.
    pub(super) ends: HashMap<(SessionId, u64), (u64, u64)>,
    /// Marks that came before the one they follow: view by previous view.
    ahead: BTreeMap<u64, u64>,
    /// The newest view whose flush's question (about lost servers' senders) it answered
    /// completely since it was last asked.
    pub(super) answered: u64,
}

/// What a flush waits for (for the trace log).
#[derive(Debug)]
#[allow(dead_code)] // read through Debug only
enum Awaited {
    /// The mark of this shard of this server.
    Mark(NodeTag, u16),
    /// The answer of this shard of this server to the question about lost servers' senders.
    Answer(NodeTag, u16),
    /// This sender's frames up to this number.
    Sender(SessionId, u64),
}

/// Per group, per (server, shard).
pub(crate) type Marks = HashMap<GroupName, HashMap<(NodeTag, u16), MarkIn>>;

impl ShardCore {
    /// This shard now routes `group` by `view_id`: marks it to the other shards here and to
    /// the servers with members in the view before (`old`: its id and servers) or this one.
    pub(super) fn send_marks(&mut self, group: &GroupName, view_id: u64, old: (u64, Vec<NodeTag>)) {
        let (stamp, old_nodes) = old;
        let me = self.identity.node_tag;
        let Some(g) = self.groups.get_mut(group.as_bytes()) else { return };
        // Everything in `sent` went under the view routed until now (`stamp`), so only the
        // servers with members in it were owed any of it. The others get the mark without
        // ends (it still chains their marks): that view may be one of another partition, whose
        // id they cannot tell from one of their own.
        let ends: Vec<SenderEnd> =
            g.sent.drain().map(|(sender, (first, seq))| SenderEnd { sender, first, seq, stamp }).collect();
        let mut to: Vec<(NodeTag, bool)> = old_nodes.iter().map(|&n| (n, true)).collect();
        for n in &g.nodes {
            if !old_nodes.contains(n) {
                to.push((*n, false));
            }
        }
        let (shard, shards) = (self.id, self.nshards);
        let local = Arc::new(PeerMark {
            group: group.clone(),
            view_id,
            prev: 0,
            shard,
            shards,
            more: false,
            lost: false,
            ask: false,
            answer: false,
            ends: vec![],
        });
        self.send_to_other_shards(&ShardMsg::Mark { origin: me, mark: local });
        let per_frame = self.ends_per_mark(group);
        // What this shard delivered of lost servers' senders goes first, flagged LOST.
        let (lost, passed) = self.lost_senders(group, view_id);
        for (tag, owed) in to {
            let Some(g) = self.groups.get_mut(group.as_bytes()) else { return };
            let mut owed_ends = g.unsent.remove(&tag).unwrap_or_default();
            if owed {
                owed_ends.extend_from_slice(&ends);
            }
            if !self.mesh.reachable.contains(&tag) {
                // No path reaches it: the mark would be dropped on the way. It stays out of
                // the chain (the next one names the mark before it), and its ends go with the
                // next: they say what this shard's senders sent it under the views before.
                if !owed_ends.is_empty() {
                    let keep = owed_ends.len().saturating_sub(MAX_UNSENT_ENDS);
                    g.unsent.insert(tag, owed_ends.split_off(keep));
                }
                continue;
            }
            let prev = g.marked.insert(tag, view_id).unwrap_or(0);
            // As many marks as the senders need, each within a frame.
            let mut chunks: Vec<&[SenderEnd]> = owed_ends.chunks(per_frame).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            let mark = |more, lost, ends: &[SenderEnd]| {
                let ends = ends.to_vec();
                Frame::PeerMark(PeerMark {
                    group: group.clone(),
                    view_id,
                    prev,
                    shard,
                    shards,
                    more,
                    lost,
                    ask: false,
                    answer: false,
                    ends,
                })
            };
            if owed {
                // Ahead of the marks, all of it, and to every server owed it: one with no track
                // of a lost sender (none of its frames reached there) could not even say what
                // it lacks. What a server has already is dropped there as copies.
                for (sender, run, count, view) in &passed {
                    self.pass_on(tag, *sender, run.clone(), *count, *view);
                }
            }
            let lost_chunks = if owed { lost.chunks(per_frame).collect() } else { vec![] };
            for c in lost_chunks {
                self.send_to_link(tag, mark(true, true, c).to_bytes(), 1);
            }
            for (i, c) in chunks.iter().enumerate() {
                let more = i + 1 < chunks.len();
                self.send_to_link(tag, mark(more, false, c).to_bytes(), 1);
            }
        }
    }

    /// The number of senders' ends that fit in one PEER_MARK of `group`.
    pub(super) fn ends_per_mark(&self, group: &GroupName) -> usize {
        ((self.limits.max_frame - MARK_FIXED - group.len()) / MARK_END_LEN).max(1)
    }

    /// A mark from shard `mark.shard` of server `origin` (another shard of this server
    /// when `origin` is this one: those come in order), or a question or answer about lost
    /// servers' senders (`survivors.rs`).
    pub(super) fn record_mark(&mut self, origin: NodeTag, mark: &PeerMark) {
        if mark.ask {
            self.answer_ask(origin, mark);
            return;
        }
        if self.marks.len() >= MAX_MARKED_GROUPS && !self.marks.contains_key(mark.group.as_bytes()) {
            self.marks.clear();
        }
        tracing::trace!(node = %self.identity.node_name, shard = self.id, origin = origin.0, from = mark.shard, group = %mark.group, view = mark.view_id, prev = mark.prev, ends = mark.ends.len(), answer = mark.answer, "mark");
        let m = self.marks.entry(mark.group.clone()).or_default().entry((origin, mark.shard)).or_default();
        m.shards = mark.shards;
        // Its senders' ends count at once (they only add to what a view waits for). A lost
        // server's sender's end in a mark says nothing of where its frames start here
        // (first: none); in an answer, it is the lowest number delivered in the view asked.
        for e in mark.ends.iter().filter(|e| !mark.lost || e.seq > 0) {
            let first = if mark.lost { u64::MAX } else { e.first };
            let end = m.ends.entry((e.sender, e.stamp)).or_insert((first, e.seq));
            *end = (end.0.min(first), end.1.max(e.seq));
        }
        if mark.answer {
            if !mark.more {
                m.answered = m.answered.max(mark.view_id);
            }
        } else if !mark.more {
            // It completes the views up to its own only if the one before it came (or this
            // shard keeps none from there: it forgot them with the group, or never had
            // members to wait for).
            if mark.prev <= m.view || m.view == 0 {
                m.view = m.view.max(mark.view_id);
                while let Some(next) = m.ahead.remove(&m.view) {
                    m.view = m.view.max(next);
                }
                m.ahead.retain(|&prev, _| prev > m.view);
            } else if m.ahead.len() < MAX_AHEAD {
                m.ahead.insert(mark.prev, mark.view_id);
            }
        }
        self.try_install(mark.group.as_bytes());
    }

    /// Delivers the views of `group` waiting here, in order, as far as their flush allows.
    pub(super) fn try_install(&mut self, group: &[u8]) {
        if self.installing {
            return; // the install under way goes on to the next one itself
        }
        self.installing = true;
        while let Some(g) = self.groups.get(group) {
            let Some(p) = g.pending.front() else { break };
            let view_id = p.view_id;
            let limit = self.limits.link_timeout * HOLD_LINK_TIMEOUTS;
            let overdue = p.since.zip(self.clock).is_some_and(|(s, now)| now.duration_since(s) >= limit);
            let me = self.identity.node_tag;
            let stays =
                p.members.iter().any(|m| m.session.node() == me && self.sessions.contains_key(&m.session));
            // A view with members of a server lost since it was ordered is superseded: the
            // next configuration orders one without them. (Lost: unreachable now, or left
            // out of the configuration of a view waiting behind it: reachable again, but cut
            // off meanwhile, so this server missed what reached the others in it.) Members
            // here skip it (the servers cut off from each other would install it apart, each
            // with what reached it), unless it drops one of them: a member sees its own
            // leave, because senders stopped sending to it by that view (and only the
            // members it drops see it: below). One it adds sees
            // its join in the view that supersedes it, which lists every member this server
            // has.
            let cut_off = p.members.iter().any(|m| !self.mesh.reachable.contains(&m.session.node()))
                || self.left_out_later(&g.pending, &p.members);
            let drops_local = cut_off && !self.keeps_local(&g.local, &p.members);
            if cut_off && !g.local.is_empty() && !drops_local {
                if g.pending.len() > 1 {
                    tracing::trace!(node = %self.identity.node_name, shard = self.id, view_id, "skipping a view with members of a lost server");
                    self.groups.get_mut(group).and_then(|g| g.pending.pop_front());
                    continue;
                }
                if !overdue {
                    break; // the view that supersedes it comes with the next configuration
                }
            }
            let waits = !g.local.is_empty() && stays;
            if waits {
                self.ask_survivors(group, view_id);
                // Runs held for a view between the installed one and this one, which this
                // shard skipped (a newer came first), belong to the installed one.
                self.release_early(group, view_id.saturating_sub(1));
                self.settle_by_marks(group, view_id);
            }
            let Some(key) = self.groups.key(group) else { break };
            if let Some(awaited) = waits.then(|| self.flush_wait(group, view_id)).flatten() {
                if !overdue {
                    tracing::trace!(node = %self.identity.node_name, shard = self.id, group = %key, view_id, ?awaited, "flush waits");
                    break;
                }
                tracing::debug!(node = %self.identity.node_name, shard = self.id, group = %key, view_id, "flush overdue: reporting what did not come");
                self.give_up_flush(&key, view_id);
            }
            tracing::trace!(node = %self.identity.node_name, shard = self.id, group = %key, view_id, waits, "installing a view");
            if waits {
                self.flush_held(&key);
            }
            let Some(p) = self.groups.get_mut(group).and_then(|g| g.pending.pop_front()) else { break };
            self.end_lost_senders(&key);
            // One that drops a member here, from across a split, is its member's last
            // view: only the members it drops see it (the others here move on from the
            // view before to the next one, ordered by the configuration they are in; the
            // other side, which installs this one with what reached it, may have delivered
            // more in the view before).
            self.install_view(key.clone(), p, drops_local);
            self.prune_marks(&key);
        }
        self.installing = false;
    }

    /// Views waiting anywhere on this shard: installed where their flush is now complete
    /// (after a server was lost, a configuration changed or time passed).
    pub(super) fn try_install_all(&mut self) {
        for group in self.groups.names_with_pending() {
            self.try_install(group.as_bytes());
        }
    }

    /// Whether a view after the first of `pending` comes from a configuration that leaves
    /// out a server with members in `members` (of that first one).
    fn left_out_later(&self, pending: &VecDeque<Pending>, members: &[Member]) -> bool {
        pending
            .iter()
            .skip(1)
            .filter_map(|q| self.mesh.config_of(q.view_id))
            .any(|c| members.iter().any(|m| !c.members.contains(&m.session.node())))
    }

    /// Whether `members` lists every member of this shard in `local` (of a view installed
    /// here): it drops none of them, and may add some.
    fn keeps_local(&self, local: &[ConnId], members: &[Member]) -> bool {
        let me = self.identity.node_tag;
        let here = |m: &&Member| m.session.node() == me;
        let listed = members
            .iter()
            .filter(here)
            .filter(|m| self.sessions.get(&m.session).is_some_and(|c| local.contains(c)));
        listed.count() == local.len()
    }

    /// What the flush before `view_id` still waits for: the mark of a shard (of this server
    /// or a reachable one of the configuration) that may have sent this shard's members
    /// multicasts under the views before it, or a sender's number it listed; None when
    /// nothing.
    fn flush_wait(&self, group: &[u8], view_id: u64) -> Option<Awaited> {
        let g = self.groups.get(group)?;
        let none = HashMap::new();
        let marks = self.marks.get(group).unwrap_or(&none);
        let tracks = self.remote.get(group);
        let reached =
            |sender: &SessionId, seq: u64| tracks.and_then(|t| t.get(sender)).is_some_and(|t| t.reached(seq));
        let owed = |stamp: u64| stamp >= g.since && stamp < view_id;
        let asked = g.pending.front().is_some_and(|p| p.asked != 0);
        // What one shard's marks still leave to wait for: the mark itself, its answer if this
        // shard asked, and the numbers they listed.
        let awaits = |tag: NodeTag, shard: u16| {
            let Some(m) = marks.get(&(tag, shard)).filter(|m| m.view >= view_id) else {
                return Some(Awaited::Mark(tag, shard));
            };
            if asked && m.answered < view_id {
                return Some(Awaited::Answer(tag, shard));
            }
            m.ends
                .iter()
                .find(|(&(s, stamp), &(_, seq))| owed(stamp) && !reached(&s, seq))
                .map(|(&(s, _), &(_, seq))| Awaited::Sender(s, seq))
        };
        // The other shards here first (they answer questions too, and list the frames of
        // lost servers' senders they had delivered before), then the servers of the
        // configuration that ordered the view: those that installed it elsewhere waited for
        // these, not for servers that joined since (a heal), whose ends would make this shard
        // deliver what the others did not.
        let config = self.mesh.config_of(view_id).unwrap_or(&self.mesh.config);
        // (Bound before it is returned: the iterator borrows `none`.)
        let awaited = self.shards_to_hear(config, marks).find_map(|(tag, shard)| awaits(tag, shard));
        awaited
    }

    /// The shards a flush hears from, in order: the other shards here, then every shard of
    /// the reachable servers of `config` (as many as their `marks` say they have).
    pub(super) fn shards_to_hear<'a>(
        &'a self,
        config: &'a Config,
        marks: &'a HashMap<(NodeTag, u16), MarkIn>,
    ) -> impl Iterator<Item = (NodeTag, u16)> + 'a {
        let me = self.identity.node_tag;
        let other = move |t: &&NodeTag| **t != me && self.mesh.reachable.contains(*t);
        let shards_of =
            move |tag: NodeTag| marks.iter().find(|((t, _), _)| *t == tag).map_or(1, |(_, m)| m.shards);
        let local = (0..self.nshards).filter(|&s| s != self.id).map(move |s| (me, s));
        let remote = config
            .members
            .iter()
            .filter(other)
            .flat_map(move |&tag| (0..shards_of(tag)).map(move |s| (tag, s)));
        local.chain(remote)
    }

    /// The marks tell where each sender's frames owed here start. A track a relayed frame
    /// started is tentative while an earlier frame may still come by another path: one that
    /// starts at or below that is settled (its held frames delivered in order). A track
    /// that started above it missed the frames between, which are reported.
    fn settle_by_marks(&mut self, group: &[u8], view_id: u64) {
        let Some((key, g)) = self.groups.key_value(group) else { return };
        let since = g.since;
        let mut starts: HashMap<SessionId, u64> = HashMap::new();
        // Only marks whose chain is complete up to this view: one that overtook an earlier
        // mark (on another path) lacks that mark's ends, whose numbers may start lower and
        // still be on their way.
        let complete = |m: &&MarkIn| m.view >= view_id;
        for m in self.marks.get(group).into_iter().flat_map(|m| m.values()).filter(complete) {
            for (&(sender, stamp), &(first, _)) in &m.ends {
                if stamp >= since && stamp < view_id && first != u64::MAX {
                    let f = starts.entry(sender).or_insert(first);
                    *f = (*f).min(first);
                }
            }
        }
        for (sender, first) in starts {
            self.settle_track(&key, sender, first);
            self.report_missed_start(&key, sender, first);
        }
    }

    /// The flush before `view_id` timed out: each listed number not reached here is
    /// reported missing (with what is held before it).
    fn give_up_flush(&mut self, group: &GroupName, view_id: u64) {
        let since = self.groups.get(group.as_bytes()).map_or(0, |g| g.since);
        let mut owed: Vec<(SessionId, u64)> = Vec::new();
        for m in self.marks.get(group.as_bytes()).into_iter().flat_map(|m| m.values()) {
            for (&(sender, stamp), &(_, seq)) in &m.ends {
                if stamp >= since && stamp < view_id {
                    owed.push((sender, seq));
                }
            }
        }
        for (sender, seq) in owed {
            self.end_sender_at(group, sender, seq);
        }
    }

    /// After a view was installed: drops the ends it no longer waits for (reached, sent
    /// before its members came, or of no use without members here).
    fn prune_marks(&mut self, group: &GroupName) {
        let Some(marks) = self.marks.get_mut(group.as_bytes()) else { return };
        let (since, installed, members_here) = self
            .groups
            .get(group.as_bytes())
            .map_or((0, u64::MAX, false), |g| (g.since, g.view_id, !g.local.is_empty()));
        let tracks = self.remote.get(group.as_bytes());
        for m in marks.values_mut() {
            m.ends.retain(|&(s, stamp), &mut (_, seq)| {
                if !members_here {
                    return stamp > installed;
                }
                let reached = tracks.and_then(|t| t.get(&s)).is_some_and(|t| t.reached(seq));
                stamp >= since && !reached
            });
        }
    }

    /// The group emptied: its marks go with it.
    pub(super) fn forget_marks(&mut self, group: &[u8]) {
        self.marks.remove(group);
    }
}
