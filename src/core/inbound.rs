//! Multicasts from other servers, per sender, on each shard that delivers them: a frame
//! already delivered is dropped (a resend after a lost link, or a copy that took two
//! paths), one that arrives early is held until the frames before it arrive, and a hole
//! that does not fill within three link timeouts, or whose sender's server is no longer
//! reachable (at the next view: see `survivors.rs`), is reported to the members as a gap
//! naming the missing sequence numbers.
//!
//! Only shards with local members of a group track it. While a shard has no members of a
//! group it is sent nothing for it, so its tracks are dropped when the last member leaves,
//! and a sender's track starts again with a frame sent under a view that has this shard's
//! members (its PEER_STAMP): an older frame, still on its way when they joined, was sent
//! before its server knew of them, and what its server sent between it and the next may
//! have been for no one here. A track started by a relayed frame (a resend, or a frame
//! that took a path around a cut link) is tentative: an earlier frame may still come by
//! another path, so nothing is delivered until a frame arrives over the direct link from
//! its sender's server (the one path that keeps order), the marks before the next view
//! say where the track starts, the next view is delivered (what is held then was sent in
//! the view before), or the hold time passes. A frame sent under a view before the one
//! installed here comes after that view's flush, which did not wait for it (its server was
//! cut off then): it is reported missing rather than delivered in a view it was not sent
//! in. Never does I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::proto::{self, Frame, Gap, GapReason, GroupName, McastHeader, NodeTag, SessionId};

use super::groups::Early;
use super::shard::MAX_COUNTER;
use super::{Arrival, ShardCore};

/// How long a hole may wait to fill, in link timeouts: a frame lost with a link is resent
/// once the link is found dead, which takes up to one link timeout after the frames behind
/// it arrived by another path, and then it has to travel, and the path it takes may have
/// a dead link not yet found too (two were seen in the simulation).
pub(super) const HOLD_LINK_TIMEOUTS: u32 = 3;
/// Most frames held for one sender while waiting for a hole to fill.
const MAX_HELD: usize = 4096;
/// Most runs of one group held until their view is installed here.
const MAX_EARLY: usize = 4096;
/// How long a sender is remembered after its last frame: far longer than any resend takes
/// to arrive. (Senders come and go with their sessions; this bounds what is kept.)
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// What one shard has delivered from one remote sender to one group.
#[derive(Debug, Default)]
pub(crate) struct SenderTrack {
    /// Last sequence number delivered.
    pub(super) last: u64,
    /// The first number this track delivered or reported missing (the frames below it were
    /// not owed here, as far as this shard knew when the track started).
    start: u64,
    /// Frames that arrived after a hole, by sequence number, and since when.
    held: BTreeMap<u64, Bytes>,
    held_since: Option<Instant>,
    /// The sender's server was lost (a gap to the end was reported): the next newer frame
    /// starts afresh.
    fresh: bool,
    /// Started by a relayed frame, nothing delivered yet: `last` is just below the lowest frame
    /// held, and an earlier frame that may start a track lowers it.
    pub(super) tentative: bool,
    /// When the last frame came.
    seen: Option<Instant>,
    /// The sender's server was lost and its end waits for the next view (see
    /// `survivors.rs`), since `lost_at`.
    pub(super) lost: bool,
    pub(super) lost_at: Option<Instant>,
}

impl SenderTrack {
    /// The frames held after a hole, by number.
    pub(super) fn held(&self) -> &BTreeMap<u64, Bytes> {
        &self.held
    }

    /// Whether frame `seq` was delivered (or reported missing) here, for certain: a
    /// tentative track may still start lower.
    pub(super) fn reached(&self, seq: u64) -> bool {
        self.last >= seq && !self.tentative
    }
}

/// Per group, per remote sender.
pub(crate) type Tracks = HashMap<GroupName, HashMap<SessionId, SenderTrack>>;

/// Frames to deliver, built only when a run cannot be delivered as it came.
struct Rebuilt {
    bytes: BytesMut,
    count: u32,
}

impl Rebuilt {
    /// Starts with the frames of `run` before `at`, which were delivered as they came.
    fn up_to(run: &Bytes, at: usize) -> Rebuilt {
        Rebuilt { bytes: BytesMut::from(&run[..at]), count: count_frames(&run[..at]) }
    }
    fn push(&mut self, frame: &[u8]) {
        self.bytes.extend_from_slice(frame);
        self.count += 1;
    }
    fn gap(&mut self, group: &GroupName, sender: SessionId, first: u64, last: u64) -> u64 {
        let gap = Gap { reason: GapReason::LinkLost, group: group.clone(), sender, first, last };
        Frame::Gap(gap).encode(&mut self.bytes);
        self.count += 1;
        1
    }
}

impl ShardCore {
    /// Filters a run from another server for this shard's members of `group`. `None`: deliver
    /// the run as it is; `Some((frames, count))`: deliver these instead (possibly nothing).
    pub(super) fn accept_remote(
        &mut self,
        group: &[u8],
        run: &Bytes,
        arrival: Arrival,
    ) -> Option<(Bytes, u32)> {
        let now = self.clock;
        let (key, g) = self.groups.key_value(group)?;
        // A frame may start a track only if sent under a view with this shard's members.
        let may_start = arrival.stamp >= g.since;
        // Sent under a view before the one installed here: its flush is over, so it was not
        // listed by a mark this shard waited for (its server was cut off then). Delivering it
        // now would put it in a view it was not sent in: it is reported missing instead.
        let late = arrival.stamp != 0 && arrival.stamp < g.view_id;
        let resent = arrival.resent;
        // Sent by a server that was cut off, under a view before one this server had already
        // marked when the run came, whose configuration leaves that server out (see
        // `moved_past`): members moving on to that view deliver of the lost server's frames
        // only what survivors delivered before and pass on, flagged, so this copy is dropped.
        // (If no survivor passes it on, it is reported missing with the next hole or the end.)
        if arrival.superseded {
            return Some((Bytes::new(), 0));
        }
        // Lost servers whose senders' frames of the installed view this shard told (or asked)
        // the other survivors it has: it delivers no more of them in it, except what a
        // survivor passes on (the others, which may have moved on, do not get them).
        let committed: &[NodeTag] = match g.committed.iter().find(|(view, _)| *view == g.view_id) {
            Some((view, lost)) if !arrival.passed && arrival.stamp <= *view => lost,
            _ => &[],
        };
        let ordered = keeps_order(&self.link_settles, now, run, arrival);
        let tracks = self.remote.entry(key.clone()).or_default();
        // The common case, checked with one lookup: one sender, numbers in a row, right after
        // the last one delivered, nothing held.
        if let Some((sender, first, last)) =
            single_sender_run(run).filter(|(s, ..)| !committed.contains(&s.node()))
        {
            if let Some(t) = tracks.get_mut(&sender) {
                if t.last.checked_add(1) == Some(first) && t.held.is_empty() && !late {
                    t.last = last;
                    t.fresh = false;
                    t.seen = now.or(t.seen);
                    return None;
                }
            }
        }
        let mut out: Option<Rebuilt> = None;
        let mut gaps = 0;
        let mut at = 0;
        while at + 4 <= run.len() {
            let Ok(Some(size)) = proto::frame_len(&run[at..], usize::MAX) else { break };
            let Some(frame) = run.get(at..at + size) else { break };
            let Ok(h) = McastHeader::parse(frame) else { break };
            // Out of range (never sent by an honest server): dropped, and no arithmetic on
            // it. A frame that may not start a track (see the module doc) and has none is
            // dropped too.
            let barred = !may_start && !tracks.contains_key(&h.sender);
            if h.seq == 0 || h.seq >= MAX_COUNTER || barred || committed.contains(&h.sender.node()) {
                out.get_or_insert_with(|| Rebuilt::up_to(run, at));
                at += size;
                continue;
            }
            if late {
                let o = out.get_or_insert_with(|| Rebuilt::up_to(run, at));
                match tracks.get_mut(&h.sender) {
                    Some(t) if !t.tentative && h.seq > t.last => {
                        if may_start {
                            gaps += o.gap(&key, h.sender, t.last + 1, h.seq);
                        }
                        t.last = h.seq;
                        t.fresh = false;
                        gaps += drain_held(t, o, &key, h.sender, 0, now);
                    }
                    Some(t) if !t.tentative || h.seq <= t.last || t.held.contains_key(&h.seq) => {}
                    _ if may_start => gaps += o.gap(&key, h.sender, h.seq, h.seq),
                    _ => {}
                }
                at += size;
                continue;
            }
            let t = tracks.entry(h.sender).or_insert_with(|| SenderTrack {
                last: h.seq - 1,
                start: h.seq,
                tentative: !ordered,
                ..Default::default()
            });
            t.seen = now.or(t.seen);
            if t.tentative {
                let o = out.get_or_insert_with(|| Rebuilt::up_to(run, at));
                if may_start {
                    t.last = t.last.min(h.seq - 1);
                    t.start = t.start.min(h.seq);
                    t.held.entry(h.seq).or_insert_with(|| run.slice(at..at + size));
                    t.held_since = t.held_since.or(now);
                    if ordered || t.held.len() > MAX_HELD {
                        // The direct link: from here on frames come in order.
                        t.tentative = false;
                        let jump = if t.held.len() > MAX_HELD { u64::MAX } else { 0 };
                        gaps += drain_held(t, o, &key, h.sender, jump, now);
                    }
                }
                at += size;
                continue;
            }
            let in_order = h.seq == t.last + 1 || (t.fresh && !resent && h.seq > t.last);
            if in_order && t.held.is_empty() && out.is_none() {
                t.last = h.seq;
                t.fresh = false;
                at += size;
                continue;
            }
            let o = out.get_or_insert_with(|| Rebuilt::up_to(run, at));
            if h.seq <= t.last || (t.fresh && resent && !in_order && !may_start) {
                // Delivered already, or a resend where this shard has no starting point.
            } else if t.fresh && resent && !in_order {
                // A resend sent under a view with members here, after its server's loss
                // ended the track: it starts again, tentatively (an earlier one may follow).
                t.fresh = false;
                t.tentative = true;
                t.last = h.seq - 1;
                t.start = h.seq;
                t.held.insert(h.seq, run.slice(at..at + size));
                t.held_since = t.held_since.or(now);
            } else if in_order {
                o.push(frame);
                t.last = h.seq;
                t.fresh = false;
                gaps += drain_held(t, o, &key, h.sender, 0, now);
            } else {
                tracing::debug!(node = %self.identity.node_name, shard = self.id, sender = %h.sender, seq = h.seq, last = t.last, "holding an early frame");
                t.held.insert(h.seq, run.slice(at..at + size));
                t.held_since = t.held_since.or(now);
                if t.held.len() > MAX_HELD {
                    gaps += drain_held(t, o, &key, h.sender, u64::MAX, now);
                }
            }
            at += size;
        }
        self.stats.gaps += gaps;
        out.map(|o| (o.bytes.freeze(), o.count))
    }

    /// Whether a run of multicasts to `group` from another server, just arrived at this
    /// shard, was sent under a view older than one this shard has marked (installed or
    /// waiting) whose configuration leaves the run's server out. Members moving on to that
    /// view deliver of a lost server's frames only what survivors had delivered before they
    /// marked it (and pass on): the other shards here, which may install the view as soon as
    /// this one's mark reaches them, must not deliver what comes after it, so neither does
    /// this one. Decided once, by the shard the run reached first.
    pub(super) fn moved_past(&self, group: &[u8], run: &[u8], arrival: Arrival) -> bool {
        if arrival.passed || arrival.stamp == 0 {
            return false;
        }
        let Some(g) = self.groups.get(group) else { return false };
        // The common case: no view after the run's here.
        if g.pending.is_empty() && arrival.stamp >= g.view_id {
            return false;
        }
        let Ok(origin) = McastHeader::parse(run).map(|h| h.sender.node()) else { return false };
        let left_out = |view: u64| self.mesh.config_of(view).is_some_and(|c| !c.members.contains(&origin));
        let later = std::iter::once(g.view_id).chain(g.pending.iter().map(|p| p.view_id));
        later.filter(|&view| arrival.stamp < view).any(left_out)
    }

    /// A run sent under a view of `group` newer than the one installed here (its server
    /// installed the view first): held until this shard installs it, so that members get a
    /// message only after the view it was sent in, or after `HOLD_LINK_TIMEOUTS` link
    /// timeouts (a view that never comes here must not hold its runs for good; one that is
    /// late, because this server was cut off from the one ordering views, comes within that).
    pub(super) fn hold_early(&mut self, group: &[u8], run: &Bytes, arrival: Arrival) {
        if keeps_order(&self.link_settles, self.clock, run, arrival) {
            self.settle_tentative(group, run);
        }
        let since = self.clock;
        let Some(g) = self.groups.get_mut(group) else { return };
        g.early.push_back(Early { run: run.clone(), arrival, since });
        if g.early.len() > MAX_EARLY {
            self.release_early(group, u64::MAX);
        }
    }

    /// A run that came over the direct link is held for its view: every earlier frame of
    /// its senders by that path came before it, so a track of theirs that a relayed frame
    /// started is no longer tentative (its frames held so far follow in order, or a hole
    /// waits).
    fn settle_tentative(&mut self, group: &[u8], run: &Bytes) {
        let Some(key) = self.groups.key(group) else { return };
        for sender in run_senders(run) {
            self.settle_track(&key, sender, u64::MAX);
        }
    }

    /// Settles `sender`'s tentative track if it starts at or below `first` (no frame before
    /// that is owed here): its held frames that follow in order are delivered.
    pub(super) fn settle_track(&mut self, group: &GroupName, sender: SessionId, first: u64) {
        let Some(t) = self.remote.get_mut(group).and_then(|s| s.get_mut(&sender)) else { return };
        if !t.tentative || t.last >= first {
            return;
        }
        t.tentative = false;
        let mut o = Rebuilt { bytes: BytesMut::new(), count: 0 };
        self.stats.gaps += drain_held(t, &mut o, group, sender, 0, self.clock);
        self.deliver_built(group, o);
    }

    /// The flush before a view is over: what the tracks of `group` still hold was sent under
    /// the views before it (a later view's frames wait in `Group::early`), so it is delivered
    /// now or never in its view. No mark said where a tentative one starts (its sender's
    /// server listed nothing for it, or was cut off), so it starts at its lowest frame, as
    /// when its hold time passes; a hole is reported missing.
    pub(super) fn flush_held(&mut self, group: &GroupName) {
        let Some(tracks) = self.remote.get(group) else { return };
        let held: Vec<SessionId> =
            tracks.iter().filter(|(_, t)| !t.held.is_empty()).map(|(&s, _)| s).collect();
        for sender in held {
            self.flush_sender(group, sender, None);
        }
    }

    /// Delivers the held runs of `group` sent under view `through` or an earlier one. Others'
    /// stay: a run of a later view released with an earlier view's would reach the members
    /// before its view. (A sender's views only grow, so what goes of each sender's frames
    /// is all of them up to a number, and none of them passes an earlier one.)
    pub(super) fn release_early(&mut self, group: &[u8], through: u64) {
        let Some(g) = self.groups.get_mut(group) else { return };
        if !g.early.iter().any(|e| e.arrival.stamp <= through) {
            return;
        }
        let (released, kept): (VecDeque<Early>, VecDeque<Early>) =
            std::mem::take(&mut g.early).into_iter().partition(|e| e.arrival.stamp <= through);
        g.early = kept;
        if g.local.is_empty() {
            return; // for members that left, or that the view did not bring here
        }
        // A resend may have come after a later frame of its sender that took a new path;
        // each sender's frames go in number order, so the later frame does not start a track
        // above the resent one (which would be dropped as delivered). Frame by frame: a run
        // may carry several senders, so no order of whole runs keeps every sender's.
        let mut frames: Vec<(SessionId, u64, Bytes, Arrival)> = Vec::new();
        for e in &released {
            for (h, at, size) in mcast_frames(&e.run) {
                frames.push((h.sender, h.seq, e.run.slice(at..at + size), e.arrival));
            }
        }
        frames.sort_by_key(|&(sender, seq, ..)| (sender, seq));
        for (_, _, frame, arrival) in frames {
            self.deliver_run(group, &frame, 1, arrival);
        }
    }

    /// Holes that did not fill within `HOLD_LINK_TIMEOUTS` link timeouts are reported and
    /// the frames held behind them delivered, and so are runs held for a view that did not
    /// come in as long.
    pub(super) fn expire_held(&mut self, now: Instant) {
        let limit = self.limits.link_timeout * HOLD_LINK_TIMEOUTS;
        let waiting: Vec<GroupName> = self.groups.names_with_early();
        for group in waiting {
            // With the overdue runs go those of the same views or earlier ones that came
            // later (a resend that a later frame passed).
            let overdue = self.groups.get(group.as_bytes()).and_then(|g| {
                let late = g.early.iter().filter(|e| e.since.is_some_and(|s| now.duration_since(s) >= limit));
                late.map(|e| e.arrival.stamp).max()
            });
            if let Some(through) = overdue {
                self.release_early(group.as_bytes(), through);
            }
        }
        let mut due = Vec::new();
        for (group, senders) in &self.remote {
            for (sender, t) in senders {
                if t.held_since.is_some_and(|s| now.duration_since(s) >= limit) {
                    due.push((group.clone(), *sender));
                }
            }
        }
        for (group, sender) in due {
            self.expire_sender(&group, sender);
        }
        self.expire_lost(now);
        self.prune_senders(now);
        self.link_settles.retain(|_, at| *at > now);
        self.try_install_all();
    }

    /// Server `node` is no longer reachable: what its senders' frames held here wait for
    /// may still come from another survivor, before the next view (see `survivors.rs`);
    /// then anything after the last delivered may be missing. (The views this lets through
    /// are tried by the caller once every lost server is marked: a view let through by the
    /// first would not wait for the next one's senders.)
    pub(super) fn server_unreachable(&mut self, node: NodeTag) {
        let now = self.clock;
        for senders in self.remote.values_mut() {
            for (_, t) in senders.iter_mut().filter(|(s, _)| s.node() == node) {
                if !t.lost {
                    t.lost = true;
                    t.lost_at = now;
                }
            }
        }
    }

    /// `sender`'s frames held here waited their time. A tentative track starts at its lowest
    /// frame; a hole after what follows it in order is a later one (it may still be on a
    /// slow path), which waits its own time from now (`settle_track` restarts the hold
    /// clock on progress). Otherwise the hole is reported.
    fn expire_sender(&mut self, group: &GroupName, sender: SessionId) {
        let tentative = self.remote.get(group).and_then(|s| s.get(&sender)).is_some_and(|t| t.tentative);
        if tentative {
            self.settle_track(group, sender, u64::MAX);
        } else {
            self.flush_sender(group, sender, None);
        }
    }

    /// Delivers `sender`'s held frames to `group`'s members here, with a gap notice before
    /// each hole; with `end`, then reports everything after as possibly missing.
    pub(super) fn flush_sender(&mut self, group: &GroupName, sender: SessionId, end: Option<u64>) {
        let Some(t) = self.remote.get_mut(group).and_then(|s| s.get_mut(&sender)) else { return };
        // A tentative start is taken as it is: nothing below it is known to be missing.
        t.tentative = false;
        let mut o = Rebuilt { bytes: BytesMut::new(), count: 0 };
        let mut gaps = drain_held(t, &mut o, group, sender, u64::MAX, None);
        if let Some(end) = end {
            let first = t.last + 1;
            gaps += o.gap(group, sender, first, end);
            // Kept (to drop copies that still arrive), but its next new frame starts afresh.
            t.fresh = true;
        }
        self.stats.gaps += gaps;
        self.deliver_built(group, o);
    }

    /// The marks say `sender`'s frames owed here start at `first`, but its track started
    /// above that: a later frame came first by a new path, and the earlier ones, resent
    /// after it, were taken for copies. They are reported missing, once.
    pub(super) fn report_missed_start(&mut self, group: &GroupName, sender: SessionId, first: u64) {
        let Some(t) = self.remote.get_mut(group).and_then(|s| s.get_mut(&sender)) else { return };
        if t.tentative || t.start <= first {
            return;
        }
        let mut o = Rebuilt { bytes: BytesMut::new(), count: 0 };
        self.stats.gaps += o.gap(group, sender, first, t.start - 1);
        t.start = first;
        self.deliver_built(group, o);
    }

    /// A view's flush gave up on `sender` reaching `end` here: its frames held up to `end`
    /// are delivered and every number missing up to it reported; later ones stay held.
    pub(super) fn end_sender_at(&mut self, group: &GroupName, sender: SessionId, end: u64) {
        let Some(t) = self.remote.get_mut(group).and_then(|s| s.get_mut(&sender)) else { return };
        if t.last >= end {
            return;
        }
        t.tentative = false;
        let mut o = Rebuilt { bytes: BytesMut::new(), count: 0 };
        let mut gaps = drain_held(t, &mut o, group, sender, end, None);
        if t.last < end {
            gaps += o.gap(group, sender, t.last + 1, end);
            t.last = end;
        }
        gaps += drain_held(t, &mut o, group, sender, 0, self.clock);
        self.stats.gaps += gaps;
        self.deliver_built(group, o);
    }

    /// Sends frames rebuilt outside a run's arrival to `group`'s members here.
    fn deliver_built(&mut self, group: &GroupName, o: Rebuilt) {
        if o.count == 0 {
            return;
        }
        let frames = o.bytes.freeze();
        let Some(g) = self.groups.get(group.as_bytes()) else { return };
        let local = g.local.clone();
        self.delivered.keep(group.clone(), frames.clone(), g.view_id, self.limits.resend_buffer);
        for conn in local {
            self.send_frames(conn, frames.clone(), o.count);
        }
    }

    /// The last member of `group` on this shard is leaving (or was dropped): the group's
    /// tracks are dropped (see the module doc). Frames held behind a hole are dropped with
    /// them: the members are leaving, and the hole may be a resend still on its way, so a
    /// gap notice would more often be false than true.
    pub(super) fn forget_group(&mut self, group: &[u8]) {
        self.remote.remove(group);
    }

    /// Forgets senders that sent nothing for a long time and wait for nothing. One that
    /// sends again starts afresh, as a new one would.
    fn prune_senders(&mut self, now: Instant) {
        let idle = |t: &SenderTrack| {
            t.held.is_empty() && t.seen.is_some_and(|s| now.duration_since(s) >= FORGET_AFTER)
        };
        self.remote.retain(|_, senders| {
            senders.retain(|_, t| !idle(t));
            !senders.is_empty()
        });
    }
}

/// Moves held frames that now follow in order into `o`, and jumps each hole before a held
/// frame numbered up to `jump_to` (reporting it; 0: none, u64::MAX: all). A hole still left
/// after progress is a later one, known only from `now`: its hold starts then. Returns the
/// gap notices added.
fn drain_held(
    t: &mut SenderTrack,
    o: &mut Rebuilt,
    group: &GroupName,
    sender: SessionId,
    jump_to: u64,
    now: Option<Instant>,
) -> u64 {
    let before = t.last;
    let mut gaps = 0;
    while let Some((&seq, _)) = t.held.first_key_value() {
        if seq <= t.last {
            t.held.pop_first();
            continue;
        }
        if seq != t.last + 1 {
            if seq > jump_to {
                break;
            }
            gaps += o.gap(group, sender, t.last + 1, seq - 1);
        }
        if let Some((seq, frame)) = t.held.pop_first() {
            o.push(&frame);
            t.last = seq;
        }
    }
    t.held_since = match (t.held.is_empty(), t.last != before) {
        (true, _) => None,
        (false, true) => now.or(t.held_since),
        (false, false) => t.held_since,
    };
    gaps
}

/// If `run` is MCAST frames of one sender with consecutive numbers (in range): the sender,
/// the first and the last number.
fn single_sender_run(run: &[u8]) -> Option<(SessionId, u64, u64)> {
    let mut at = 0;
    let mut found: Option<(SessionId, u64, u64)> = None;
    while at < run.len() {
        let size = proto::frame_len(&run[at..], usize::MAX).ok().flatten()?;
        let h = McastHeader::parse(run.get(at..at + size)?).ok()?;
        if h.seq == 0 || h.seq >= MAX_COUNTER {
            return None;
        }
        found = match found {
            None => Some((h.sender, h.seq, h.seq)),
            Some((s, first, last)) if s == h.sender && h.seq == last + 1 => Some((s, first, h.seq)),
            Some(_) => return None,
        };
        at += size;
    }
    found
}

/// Whether `run` came by the path that keeps its senders' order: over the direct link from
/// their server, and not so soon after that link came back that frames sent before by a
/// relay may still be on their way (`settles`: until when, per server). Cheap in the common
/// case: no parse while no link came back lately.
fn keeps_order(
    settles: &HashMap<NodeTag, Instant>,
    now: Option<Instant>,
    run: &[u8],
    arrival: Arrival,
) -> bool {
    if arrival.relayed {
        return false;
    }
    if settles.is_empty() {
        return true;
    }
    match McastHeader::parse(run).ok().and_then(|h| settles.get(&h.sender.node())) {
        Some(&at) => now.is_some_and(|now| now >= at),
        None => true,
    }
}

/// The MCAST frames of `run` (each one's header, start and size), past the gap notices a
/// rebuilt run may carry among them.
pub(super) fn mcast_frames(run: &[u8]) -> impl Iterator<Item = (McastHeader, usize, usize)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || loop {
        let size = proto::frame_len(run.get(at..)?, usize::MAX).ok().flatten()?;
        let frame = run.get(at..at + size)?;
        at += size;
        if let Ok(h) = McastHeader::parse(frame) {
            return Some((h, at - size, size));
        }
    })
}

/// The senders of the MCAST frames in `run`, one per frame.
fn run_senders(run: &[u8]) -> impl Iterator<Item = SessionId> + '_ {
    mcast_frames(run).map(|(h, ..)| h.sender)
}

/// Whole frames in `b`.
fn count_frames(b: &[u8]) -> u32 {
    let (mut at, mut n) = (0, 0);
    while at < b.len() {
        let Ok(Some(size)) = proto::frame_len(&b[at..], usize::MAX) else { break };
        at += size;
        n += 1;
    }
    n
}
