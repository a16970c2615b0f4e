//! Getting frames to another server whatever the state of the direct link: over the link
//! while it is up, else relayed by a server linked to both (PEER_RELAY); and a bounded
//! per-link buffer of the multicasts a link carried but the other side has not yet
//! acknowledged (PEER_ACK), resent by another path when the link is lost, and over a new
//! link to their destination when one comes up.
//!
//! Receivers drop what they already delivered by the senders' own sequence numbers (see
//! `inbound.rs`), so a resend never duplicates. Membership frames are not resent: a lost
//! link starts a new configuration, whose state sync rebuilds them.
//!
//! Multicasts of a server's own sessions go with a PEER_STAMP naming the view of their group
//! the server had installed when it sent them: once per change on a link, and inside every
//! PEER_RELAY. A receiver that starts delivering a group takes no frame sent under an
//! earlier view as a starting point (see `inbound.rs`). Never does I/O.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use crate::proto::{
    self, kind, relay_header, Frame, GroupName, McastHeader, NodeTag, PeerStamp, MCAST_FIXED, RELAY_HEADER,
};

use super::{Arrival, ConnId, Envelope, Flow, ShardCore, ShardMsg};

/// Servers a relayed frame may pass through: more than any route in a full mesh with cut
/// links needs, and a bound while routes change.
const MAX_HOPS: u8 = 8;
/// Groups whose PEER_STAMP a link remembers each way before it forgets them (a bound; what
/// is forgotten is sent again, or, on the receiving side, belongs to a group with no
/// members here, whose next stamp differs anyway).
const MAX_STAMPED_GROUPS: usize = 1 << 16;

/// A run of multicasts a link carried, kept until the other side acknowledges it.
#[derive(Debug)]
pub(crate) struct Unacked {
    /// Link bytes sent up to and including this run.
    pub end: u64,
    /// How it was sent (resent with the same origin, destination, stamp and flags).
    pub envelope: Envelope,
    pub frames: Bytes,
    pub count: u32,
}

/// The sending and acknowledging state of one link.
#[derive(Debug, Default)]
pub(crate) struct LinkStream {
    /// Bytes queued on the link since it came up.
    pub sent: u64,
    /// Bytes the other side acknowledged.
    pub acked: u64,
    /// Multicasts sent and not acknowledged, oldest first, and their bytes.
    pub unacked: VecDeque<Unacked>,
    pub unacked_bytes: usize,
    /// Bytes received from the link since it came up, and as last acknowledged.
    pub received: u64,
    pub ack_sent: u64,
    /// The last PEER_STAMP sent and received on the link, per group.
    stamps_out: HashMap<GroupName, u64>,
    stamps_in: HashMap<GroupName, u64>,
}

impl LinkStream {
    /// The view named by the last PEER_STAMP of `group` received on the link (0: none).
    pub fn stamp_in(&self, group: &[u8]) -> u64 {
        self.stamps_in.get(group).copied().unwrap_or(0)
    }
}

impl ShardCore {
    /// Sends frames of this server to server `dest`, directly or relayed.
    pub(super) fn send_to_link(&mut self, dest: NodeTag, frames: Bytes, count: u32) {
        let me = self.identity.node_tag;
        self.route(
            Envelope { origin: me, dest, hops: 0, resent: false, passed: false, stamp: 0 },
            frames,
            count,
        );
    }

    /// Sends a run of this server's sessions' multicasts, sent under view `stamp` of their
    /// group, to server `dest`.
    pub(super) fn send_mcast(&mut self, dest: NodeTag, run: Bytes, count: u32, stamp: u64) {
        let me = self.identity.node_tag;
        self.route(Envelope { origin: me, dest, hops: 0, resent: false, passed: false, stamp }, run, count);
    }

    /// Sends `origin`'s frames towards `dest`: over the direct link if it is up, else to the
    /// next hop of a path. Dropped if `dest` is unreachable (its members are told by the
    /// gap notices and views that follow).
    pub(super) fn route(&mut self, envelope: Envelope, frames: Bytes, count: u32) {
        let dest = envelope.dest;
        let hop = if self.links.iter().any(|l| l.tag == dest) {
            dest
        } else if frames.get(4) == Some(&kind::PEER_TOPO) {
            return; // about one link: meaningless on any other
        } else if let Some(&hop) = self.mesh.next_hop.get(&dest) {
            hop
        } else {
            tracing::debug!(node = %self.identity.node_name, origin = envelope.origin.0, dest = dest.0, "no route: dropped");
            return;
        };
        let Some(link) = self.links.iter().find(|l| l.tag == hop) else { return };
        let (shard, conn) = (link.shard, link.conn);
        if shard != self.id {
            self.in_flight[shard as usize] += frames.len();
        }
        self.send_to_shard(
            shard,
            ShardMsg::Forward { from: self.id, envelope, tag: hop, conn, frames, count },
        );
    }

    /// On the shard owning the link to `tag`: queue frames on it (in a PEER_RELAY unless they
    /// are this server's for `tag`), keeping multicasts until acknowledged. If the link is
    /// gone meanwhile, they take another path.
    pub(super) fn forward(&mut self, e: Envelope, tag: NodeTag, conn: ConnId, frames: Bytes, count: u32) {
        let ours = self.conns.get(conn).and_then(|c| c.peer.as_ref()).is_some_and(|p| p.tag == tag);
        if !ours {
            // The link went down (or moved) after this was sent here: route it again.
            self.route(e, frames, count);
            return;
        }
        let me = self.identity.node_tag;
        if e.origin == me && e.dest == tag && !e.resent {
            if e.stamp != 0 {
                self.stamp_link(conn, &frames, e.stamp);
            }
            self.send_frames(conn, frames.clone(), count);
        } else {
            self.send_relayed(conn, e, &frames);
        }
        // Multicasts and views are resent (receivers drop what they have by sequence number
        // and view id); joins, leaves and syncs are rebuilt by the next configuration's sync.
        if resendable(&frames) {
            self.keep_unacked(conn, e, frames, count);
        }
    }

    /// Queues a PEER_STAMP of `stamp` for the group of the multicasts `run` on `conn`,
    /// unless the last one of that group on the link named the same view.
    fn stamp_link(&mut self, conn: ConnId, run: &Bytes, stamp: u64) {
        let Some(p) = self.conns.get_mut(conn).and_then(|c| c.peer.as_mut()) else { return };
        let Ok(h) = McastHeader::parse(run) else { return };
        let sent = &mut p.stream.stamps_out;
        if sent.get(h.group(run)) == Some(&stamp) {
            return; // the common case: checked without building the name
        }
        let Some(group) = group_of(run) else { return };
        if sent.len() >= MAX_STAMPED_GROUPS {
            sent.clear();
        }
        sent.insert(group.clone(), stamp);
        self.send_frame(conn, Frame::PeerStamp(PeerStamp { group, view_id: stamp }).to_bytes());
    }

    /// PEER_STAMP on link `conn`: the multicasts of `group` that follow on it were sent under
    /// that view.
    pub(super) fn handle_stamp(&mut self, conn: ConnId, st: PeerStamp) {
        let Some(p) = self.conns.get_mut(conn).and_then(|c| c.peer.as_mut()) else { return };
        let known = &mut p.stream.stamps_in;
        if known.len() >= MAX_STAMPED_GROUPS && !known.contains_key(st.group.as_bytes()) {
            let groups = &self.groups;
            known.retain(|g, _| groups.get(g.as_bytes()).is_some());
        }
        known.insert(st.group, st.view_id);
    }

    /// Queues `frames` on `conn` in PEER_RELAY frames that each fit the peer's frame limit
    /// (split at frame boundaries; the frames themselves are not copied), each starting
    /// with the PEER_STAMP of `e`, if it has one.
    fn send_relayed(&mut self, conn: ConnId, e: Envelope, frames: &Bytes) {
        let stamp = match e.stamp {
            0 => Bytes::new(),
            stamp => group_of(frames)
                .map(|group| Frame::PeerStamp(PeerStamp { group, view_id: stamp }).to_bytes())
                .unwrap_or_default(),
        };
        let room = self.limits.max_frame.saturating_sub(RELAY_HEADER + stamp.len()).max(1);
        let mut start = 0;
        while start < frames.len() {
            let mut end = start;
            while end < frames.len() {
                let Ok(Some(size)) = proto::frame_len(&frames[end..], usize::MAX) else { break };
                if end > start && end + size - start > room {
                    break;
                }
                end = (end + size).min(frames.len());
            }
            if end == start {
                break; // not whole frames: nothing an honest origin sends
            }
            let chunk = frames.slice(start..end);
            let len = stamp.len() + chunk.len();
            let header = relay_header(e.origin, e.dest, e.hops.saturating_add(1), e.resent, e.passed, len);
            self.send_frames(conn, Bytes::copy_from_slice(&header), 0);
            if !stamp.is_empty() {
                self.send_frames(conn, stamp.clone(), 0);
            }
            self.send_frames(conn, chunk, 1);
            start = end;
        }
    }

    /// Remembers a run of multicasts just queued on link `conn` until acknowledged, within
    /// `resend_buffer` bytes (the oldest are forgotten first; losing the link then loses
    /// them, and receivers get an exact gap notice).
    fn keep_unacked(&mut self, conn: ConnId, e: Envelope, frames: Bytes, count: u32) {
        let limit = self.limits.resend_buffer;
        let Some(p) = self.conns.get_mut(conn).and_then(|c| c.peer.as_mut()) else { return };
        let s = &mut p.stream;
        s.unacked_bytes += frames.len();
        s.unacked.push_back(Unacked { end: s.sent, envelope: e, frames, count });
        while s.unacked_bytes > limit {
            let Some(old) = s.unacked.pop_front() else { break };
            s.unacked_bytes -= old.frames.len();
            self.stats.resend_evicted += u64::from(old.count);
        }
    }

    /// PEER_ACK: the other side has received `n` bytes of this link.
    pub(super) fn handle_ack(&mut self, conn: ConnId, n: u64) -> Result<(), String> {
        let Some(p) = self.conns.get_mut(conn).and_then(|c| c.peer.as_mut()) else { return Ok(()) };
        let s = &mut p.stream;
        if n > s.sent || n < s.acked {
            return Err(format!("PEER_ACK of {n} bytes; {} sent, {} acknowledged before", s.sent, s.acked));
        }
        s.acked = n;
        while s.unacked.front().is_some_and(|u| u.end <= n) {
            if let Some(u) = s.unacked.pop_front() {
                s.unacked_bytes -= u.frames.len();
            }
        }
        Ok(())
    }

    /// Bytes of link `conn` were handled: acknowledge them every `resend_buffer / 8` bytes
    /// (the heartbeat acknowledges the rest).
    pub(super) fn note_link_bytes(&mut self, conn: ConnId, n: usize) {
        let every = (self.limits.resend_buffer / 8).max(4096) as u64;
        let Some(p) = self.conns.get_mut(conn).and_then(|c| c.peer.as_mut()) else { return };
        p.stream.received += n as u64;
        if p.stream.received - p.stream.ack_sent >= every {
            self.send_ack(conn);
        }
    }

    /// Queues a PEER_ACK of everything received on `conn` (also the link's heartbeat).
    pub(super) fn send_ack(&mut self, conn: ConnId) {
        let Some(p) = self.conns.get_mut(conn).and_then(|c| c.peer.as_mut()) else { return };
        p.stream.ack_sent = p.stream.received;
        let frame = Frame::PeerAck(p.stream.received).to_bytes();
        self.send_frame(conn, frame);
    }

    /// A link to `tag` came up: what this shard's other links carry towards `tag` by relay
    /// and is not acknowledged yet goes again over it, ahead of what is sent from now on.
    /// (A relay may be stalled, a paused server say: its frames would otherwise arrive
    /// after later ones of the same senders that took the new link, and be dropped as
    /// delivered.) Receivers drop the copies they already have.
    pub(super) fn resend_relayed_to(&mut self, tag: NodeTag) {
        let mut pending = Vec::new();
        for (_, c) in self.conns.iter() {
            let Some(p) = c.peer.as_ref().filter(|p| p.tag != tag) else { continue };
            pending.extend(p.stream.unacked.iter().filter(|u| u.envelope.dest == tag).map(|u| {
                let e = Envelope { dest: tag, hops: 0, resent: true, ..u.envelope };
                (e, u.frames.clone(), u.count)
            }));
        }
        for (e, frames, count) in pending {
            self.stats.resent += u64::from(count);
            self.route(e, frames, count);
        }
    }

    /// A lost link's unacknowledged multicasts go out again by another path, if the servers
    /// they were for are still reachable (`LinkDown` was handled first, so routes avoid it).
    pub(super) fn resend_unacked(&mut self, unacked: VecDeque<Unacked>) {
        let mut resent = 0u64;
        for u in unacked {
            resent += u64::from(u.count);
            let e = Envelope { hops: 0, resent: true, ..u.envelope };
            self.route(e, u.frames, u.count);
        }
        if resent > 0 {
            tracing::info!(node = %self.identity.node_name, messages = resent, "resending what the lost link had not delivered");
            self.stats.resent += resent;
        }
    }

    /// PEER_RELAY from a linked server: pass it on towards `dest`, or, if it is for us,
    /// handle its frames as if `origin` had sent them over its own link.
    pub(super) fn handle_relay(
        &mut self,
        conn: ConnId,
        r: proto::PeerRelay,
        now: Instant,
    ) -> Result<Flow, String> {
        let me = self.identity.node_tag;
        if r.dest != me {
            if r.hops >= MAX_HOPS {
                self.stats.peer_violations += 1;
                tracing::warn!(hops = r.hops, "dropping a relayed frame that went around too long");
                return Ok(Flow::Read);
            }
            // (Its PEER_STAMP, if any, is inside.)
            let (origin, dest, hops, resent, passed) = (r.origin, r.dest, r.hops, r.resent, r.passed);
            let e = Envelope { origin, dest, hops, resent, passed, stamp: 0 };
            self.route(e, r.frames, 1);
            return Ok(Flow::Read);
        }
        if r.origin == me {
            return Err("PEER_RELAY from this server to itself".into());
        }
        let frames = r.frames;
        let mut arrival = Arrival { resent: r.resent, passed: r.passed, relayed: true, ..Arrival::default() };
        let mut at = 0;
        while at < frames.len() {
            let size = match proto::frame_len(&frames[at..], usize::MAX) {
                Ok(Some(size)) if at + size <= frames.len() => size,
                _ => return Err("PEER_RELAY carries a partial frame".into()),
            };
            if frames[at + 4] == kind::MCAST {
                at = self.relayed_mcast_run(&frames, at, r.origin, arrival)?;
                continue;
            }
            let bytes = frames.slice(at..at + size);
            at += size;
            let frame = proto::parse_whole(bytes.clone()).map_err(|e| e.to_string())?;
            if let Frame::PeerStamp(st) = frame {
                arrival.stamp = st.view_id; // for the multicasts after it in this relay
                continue;
            }
            if matches!(frame, Frame::PeerRelay(_) | Frame::PeerAck(_) | Frame::PeerTopo(_)) {
                return Err(format!("{} inside PEER_RELAY", frame.name()));
            }
            if self.handle_peer_message(conn, r.origin, frame, bytes, now)? != Flow::Read {
                return Ok(Flow::Close);
            }
        }
        Ok(Flow::Read)
    }

    /// The run of MCAST frames to one group starting at `at` in relayed `frames`: checked to
    /// be `origin`'s and delivered. Returns where the run ends.
    fn relayed_mcast_run(
        &mut self,
        frames: &Bytes,
        start: usize,
        origin: NodeTag,
        arrival: Arrival,
    ) -> Result<usize, String> {
        let first = McastHeader::parse(&frames[start..]).map_err(|e| e.to_string())?;
        let group_end = start + MCAST_FIXED + first.group_len;
        let group =
            GroupName::from_bytes(frames.slice(start + MCAST_FIXED..group_end)).map_err(|e| e.to_string())?;
        let (mut at, mut count) = (start, 0u32);
        while at < frames.len() {
            let Ok(Some(size)) = proto::frame_len(&frames[at..], usize::MAX) else { break };
            let Some(frame) = frames.get(at..at + size) else { break };
            if frame[4] != kind::MCAST {
                break;
            }
            let h = McastHeader::parse(frame).map_err(|e| e.to_string())?;
            if h.group(frame) != group.as_bytes() {
                break;
            }
            if h.sender.node() != origin {
                return Err(format!("relayed MCAST from session {} of another server", h.sender));
            }
            at += size;
            count += 1;
        }
        let run = frames.slice(start..at);
        self.stats.msgs_in += u64::from(count);
        match self.groups.key(group.as_bytes()) {
            Some(key) => {
                let arrival =
                    Arrival { superseded: self.moved_past(key.as_bytes(), &run, arrival), ..arrival };
                self.route_local(key.as_bytes(), &run, count, arrival);
                self.route_shards(key, run, count, arrival);
            }
            // Not routed here (any more): other shards may still deliver it.
            None => self.route_shards(group, run, count, arrival),
        }
        Ok(at)
    }
}

/// The group of the MCAST frames `run` (None if it does not start with one, which an
/// honest caller never passes). Shares the run's bytes.
fn group_of(run: &Bytes) -> Option<GroupName> {
    let h = McastHeader::parse(run).ok()?;
    GroupName::from_bytes(run.slice(MCAST_FIXED..MCAST_FIXED + h.group_len)).ok()
}

/// Whether `frames` are multicasts, a view or a mark (after the PEER_STAMP a relayed run
/// starts with).
fn resendable(frames: &[u8]) -> bool {
    let first = match frames.get(4) {
        Some(&kind::PEER_STAMP) => proto::frame_len(frames, usize::MAX).ok().flatten(),
        _ => Some(0),
    };
    first
        .and_then(|at| frames.get(at + 4))
        .is_some_and(|k| matches!(*k, kind::MCAST | kind::VIEW | kind::PEER_MARK))
}
