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
//!   waits for the next view, or `HOLD_LINK_TIMEOUTS` link timeouts if none comes;
//! - with its marks of the next view, each shard sends every server that had members in
//!   its installed view the frames of such senders it delivered in that view, as relayed
//!   resends of their origin flagged PASSED (a server with none of a sender's frames
//!   could not even ask for them; what one has already is dropped there as copies; a
//!   resend of the lost server's own comes without the flag and is dropped once the view
//!   that drops it is marked: see `inbound.rs`), and in a PEER_MARK with
//!   flag LOST, where it stands with each such sender and the highest number it delivered
//!   in that view; the flush waits for the highest number any survivor listed, like for
//!   any sender it waits for;
//! - just before the view is delivered, each such sender's end is reported to the members
//!   as a gap from the next number on, as before.
//!
//! Never does I/O.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::proto::{GroupName, NodeTag, SenderEnd, SessionId};

use super::inbound::{mcast_frames, SenderTrack, HOLD_LINK_TIMEOUTS};
use super::{Envelope, ShardCore};

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
    /// The lost servers' senders of `group` whose end waits here, for a PEER_MARK with flag
    /// LOST: each with the installed view (`stamp`), the last number delivered here (`first`:
    /// where this shard stands) and the highest delivered in that view (`seq`, 0 if none:
    /// what members moving on from it must have). With them, the frames of theirs this
    /// shard delivered in that view, as far as it kept them, to pass on: one run per sender,
    /// in number order, with its frame count and that view. Only frames of the same view
    /// are passed on: another view may be one of another partition, whose members were not
    /// owed them.
    pub(super) fn lost_senders(&self, group: &GroupName) -> (Vec<SenderEnd>, Vec<PassOn>) {
        let Some(g) = self.groups.get(group.as_bytes()) else { return (vec![], vec![]) };
        let Some(tracks) = self.remote.get(group.as_bytes()) else { return (vec![], vec![]) };
        let view = g.view_id;
        let lost = |t: &SenderTrack| t.lost && !t.tentative && t.last > 0;
        let mut ends: BTreeMap<_, _> = tracks
            .iter()
            .filter(|(s, t)| lost(t) && !self.mesh.reachable.contains(&s.node()))
            .map(|(&sender, t)| (sender, SenderEnd { sender, first: t.last, seq: 0, stamp: view }))
            .collect();
        if ends.is_empty() {
            return (vec![], vec![]);
        }
        let mut frames: BTreeMap<SessionId, BTreeMap<u64, Bytes>> = BTreeMap::new();
        for k in self.delivered.runs.iter().filter(|k| k.view == view && k.group == *group) {
            for (h, at, size) in mcast_frames(&k.run) {
                if ends.contains_key(&h.sender) {
                    let kept = frames.entry(h.sender).or_default();
                    kept.entry(h.seq).or_insert_with(|| k.run.slice(at..at + size));
                }
            }
        }
        let mut runs = Vec::with_capacity(frames.len());
        for (sender, frames) in frames {
            if let (Some(e), Some((&seq, _))) = (ends.get_mut(&sender), frames.last_key_value()) {
                e.seq = seq;
            }
            let mut run = BytesMut::new();
            frames.values().for_each(|f| run.extend_from_slice(f));
            runs.push((sender, run.freeze(), frames.len() as u32, view));
        }
        (ends.into_values().collect(), runs)
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

    /// Before a view of `group` is delivered here: the lost servers' senders whose end
    /// waited end now (a gap from the next number on), unless their server came back.
    pub(super) fn end_lost_senders(&mut self, group: &GroupName) {
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

    /// Lost servers' senders whose end waited `HOLD_LINK_TIMEOUTS` link timeouts for a view
    /// that did not come end now.
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
            self.end_lost_senders(&group);
        }
    }
}
