//! The client's inbound protocol state for one connection, sans-io: decodes what the server
//! sends into events, detects sequence gaps per (group, sender), and tracks the idle deadline.
//!
//! It owns the receive state so that the reader never takes the lock the publishers use;
//! frames that change the session (WELCOME, a fatal ERROR, anything unexpected) are handed
//! back to the caller for [`Session::handle_frame`](super::Session::handle_frame). Per-sender
//! state is dropped when a view no longer lists the sender, so it stays bounded by the
//! groups' members. Never touches a socket and never reads the clock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::proto::{self, Frame, Gap, GapReason, GroupName, SessionId, View};

use super::{ClientError, Event};

/// Receive state of one connection (a new connection starts a new one).
pub struct Inbound {
    max_frame_size: usize,
    idle_timeout: Duration,
    /// Last sequence number received per group and sender.
    recv_seq: FastMap<GroupName, FastMap<SessionId, u64>>,
    last_rx: Instant,
    /// This connection's session, once welcomed.
    me: SessionId,
}

impl Inbound {
    pub fn new(max_frame_size: usize, idle_timeout: Duration, now: Instant) -> Inbound {
        Inbound {
            max_frame_size,
            idle_timeout,
            recv_seq: FastMap::default(),
            last_rx: now,
            me: SessionId::NONE,
        }
    }

    /// The server welcomed this connection as `session`.
    pub fn set_session(&mut self, session: SessionId) {
        self.me = session;
    }

    /// Decodes complete frames from `buf` (payloads share its bytes), appending events to
    /// `events`. Stops at the first frame that is the session's business and returns it;
    /// call again after handing it over. `Ok(None)`: `buf` holds no complete frame any more.
    pub fn handle_bytes(
        &mut self,
        buf: &mut BytesMut,
        events: &mut Vec<Event>,
    ) -> Result<Option<Frame>, ClientError> {
        while let Some(frame) = proto::decode(buf, self.max_frame_size).map_err(ClientError::Protocol)? {
            match frame {
                Frame::Mcast(m) => {
                    // Looked up by bytes first: no key clone per message once the group is known.
                    let last = match self.recv_seq.get_mut(m.group.as_bytes()) {
                        Some(senders) => senders.insert(m.sender, m.seq),
                        None => {
                            let senders = FastMap::from_iter([(m.sender, m.seq)]);
                            self.recv_seq.insert(m.group.clone(), senders);
                            None
                        }
                    };
                    if let Some(last) = last {
                        if m.seq > last + 1 {
                            events.push(Event::Gap(Gap {
                                reason: GapReason::LinkLost,
                                group: m.group.clone(),
                                sender: m.sender,
                                first: last + 1,
                                last: m.seq - 1,
                            }));
                        }
                    }
                    events.push(Event::Message {
                        group: m.group,
                        sender: m.sender,
                        seq: m.seq,
                        payload: m.payload,
                    });
                }
                Frame::View(v) => {
                    self.prune(&v);
                    events.push(Event::View(v));
                }
                Frame::Gap(g) => events.push(Event::Gap(g)),
                Frame::Noop => {}
                Frame::Error(e) if !e.fatal => events.push(Event::Error { code: e.code, message: e.message }),
                other => return Ok(Some(other)),
            }
        }
        Ok(None)
    }

    /// Bytes arrived at `now`.
    pub fn handle_received(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// When the connection counts as dead unless something arrives first.
    pub fn idle_deadline(&self) -> Instant {
        self.last_rx + self.idle_timeout
    }

    /// Senders whose state is kept for `group` (for tests and diagnostics).
    pub fn tracked_senders(&self, group: &str) -> usize {
        self.recv_seq.get(group.as_bytes()).map_or(0, HashMap::len)
    }

    /// A sender that left the view is gone: forget its sequence numbers (a sender that comes
    /// back starts a fresh count). Senders that multicast without being members are dropped
    /// at every view too, so their gap detection restarts at each membership change. This
    /// session's own join or leave, or a view without it, forgets every sender of the group:
    /// what it was sent while it was not a member is none of its business, so a jump across
    /// that time is no gap.
    fn prune(&mut self, view: &View) {
        let Some(senders) = self.recv_seq.get_mut(view.group.as_bytes()) else {
            return;
        };
        // Members are sorted by session id (docs/protocol.md), so each check is a search.
        let listed = |s: &SessionId| view.members.binary_search_by(|m| m.session.cmp(s)).is_ok();
        if !self.me.is_none() && (view.subject == self.me || !listed(&self.me)) {
            senders.clear();
        }
        senders.retain(|s, _| listed(s));
        if senders.is_empty() {
            self.recv_seq.remove(view.group.as_bytes());
        }
    }
}

/// Two lookups per received message are this path's main cost; SipHash's flooding
/// resistance buys nothing here, since the keys come from our own server, which can end the
/// connection anyway. A multiply-rotate hash (as in rustc's FxHash) is several times faster.
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[derive(Default)]
struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{encode_mcast, Cause, Member, Name};

    fn mcast(sender: u64, seq: u64) -> BytesMut {
        let mut b = BytesMut::new();
        encode_mcast(&mut b, SessionId(sender), seq, &GroupName::new("g").unwrap(), b"x");
        b
    }

    fn view(members: &[u64]) -> BytesMut {
        let v = View {
            cause: Cause::Leave,
            group: GroupName::new("g").unwrap(),
            view_id: 3,
            group_seq: 0,
            subject: SessionId(9),
            members: members
                .iter()
                .map(|&s| Member { session: SessionId(s), name: Name::default() })
                .collect(),
        };
        BytesMut::from(&Frame::View(v).to_bytes()[..])
    }

    fn inbound() -> Inbound {
        Inbound::new(1 << 20, Duration::from_secs(30), Instant::now())
    }

    fn feed(i: &mut Inbound, mut b: BytesMut) -> Vec<Event> {
        let mut events = Vec::new();
        assert!(i.handle_bytes(&mut b, &mut events).unwrap().is_none());
        events
    }

    #[test]
    fn a_sequence_jump_is_reported_as_a_gap() {
        let mut i = inbound();
        let mut events = Vec::new();
        for seq in [1, 2, 5] {
            events.extend(feed(&mut i, mcast(9, seq)));
        }
        assert_eq!(events.len(), 4);
        match &events[2] {
            Event::Gap(g) => assert_eq!((g.sender, g.first, g.last), (SessionId(9), 3, 4)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sender_missing_from_a_view_is_forgotten() {
        let mut i = inbound();
        feed(&mut i, mcast(9, 1));
        feed(&mut i, mcast(4, 1));
        assert_eq!(i.tracked_senders("g"), 2);
        feed(&mut i, view(&[4, 7]));
        assert_eq!(i.tracked_senders("g"), 1, "9 left; 4 is still a member");
        // 9 comes back with a later number: a fresh start, not a gap.
        let events = feed(&mut i, mcast(9, 40));
        assert!(matches!(events.as_slice(), [Event::Message { seq: 40, .. }]), "{events:?}");
        feed(&mut i, view(&[]));
        assert_eq!(i.tracked_senders("g"), 0);
        assert!(i.recv_seq.is_empty(), "an empty group leaves no entry behind");
    }

    #[test]
    fn leaving_and_joining_again_is_no_gap() {
        let mut i = inbound();
        i.set_session(SessionId(7));
        feed(&mut i, mcast(4, 1));
        feed(&mut i, mcast(4, 2));
        // A view without this session (it left): nothing of the group is kept.
        feed(&mut i, view(&[4]));
        assert_eq!(i.tracked_senders("g"), 0);
        // Back in the group, sender 4 is at 9: messages 3..8 were sent while this session
        // was out, so no gap is reported.
        feed(&mut i, view(&[4, 7]));
        let events = feed(&mut i, mcast(4, 9));
        assert!(matches!(events.as_slice(), [Event::Message { seq: 9, .. }]), "{events:?}");
        // While it is a member, a jump still is one.
        let events = feed(&mut i, mcast(4, 11));
        assert!(matches!(events.as_slice(), [Event::Gap(_), Event::Message { seq: 11, .. }]), "{events:?}");
    }

    #[test]
    fn session_frames_are_handed_back_in_order() {
        let mut i = inbound();
        let mut b = mcast(9, 1);
        b.extend_from_slice(&Frame::Join(GroupName::new("g").unwrap()).to_bytes());
        b.extend_from_slice(&mcast(9, 2));
        let mut events = Vec::new();
        let handed = i.handle_bytes(&mut b, &mut events).unwrap();
        assert!(matches!(handed, Some(Frame::Join(_))));
        assert_eq!(events.len(), 1, "stops at the session's frame");
        assert!(i.handle_bytes(&mut b, &mut events).unwrap().is_none());
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut i = inbound();
        let mut b = BytesMut::from(&[0u8, 0, 0, 1, 9][..]);
        assert!(matches!(i.handle_bytes(&mut b, &mut Vec::new()), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn idle_deadline_follows_the_last_receive() {
        let now = Instant::now();
        let mut i = Inbound::new(1 << 20, Duration::from_secs(30), now);
        assert_eq!(i.idle_deadline(), now + Duration::from_secs(30));
        i.handle_received(now + Duration::from_secs(10));
        assert_eq!(i.idle_deadline(), now + Duration::from_secs(40));
    }
}
