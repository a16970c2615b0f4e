//! The client's protocol state, sans-io: handshake, joined groups (to rejoin after a
//! reconnect), sequence numbers of outgoing multicasts, gap detection on incoming ones,
//! keepalive and idle deadlines.
//!
//! Inputs are `handle_*` calls and commands; outputs are bytes to send (`poll_transmit`) and
//! events (`poll_event`). Never touches a socket and never reads the clock.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::proto::{
    self, encode_mcast, ErrorCode, Frame, Gap, GapReason, GroupName, Handshake, Name, SessionId,
};

use super::{ClientError, Event};

/// Timing and limits the session needs.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub name: String,
    pub keepalive_interval: Duration,
    pub idle_timeout: Duration,
    pub max_frame_size: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Disconnected,
    Handshaking,
    Ready,
}

/// One client's protocol state across reconnections.
pub struct Session {
    cfg: SessionConfig,
    state: State,
    session: SessionId,
    /// Whether a session existed before the current connection (reconnect).
    had_session: bool,
    server: String,
    joined: BTreeSet<GroupName>,
    send_seq: HashMap<GroupName, u64>,
    /// Last sequence number received per group and sender.
    recv_seq: HashMap<GroupName, HashMap<SessionId, u64>>,
    out: BytesMut,
    events: VecDeque<Event>,
    last_rx: Instant,
    last_tx: Instant,
}

impl Session {
    pub fn new(cfg: SessionConfig, now: Instant) -> Session {
        Session {
            cfg,
            state: State::Disconnected,
            session: SessionId::NONE,
            had_session: false,
            server: String::new(),
            joined: BTreeSet::new(),
            send_seq: HashMap::new(),
            recv_seq: HashMap::new(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            last_rx: now,
            last_tx: now,
        }
    }

    /// The current session id (NONE until the first WELCOME).
    pub fn session_id(&self) -> SessionId {
        self.session
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Groups this client is in (as it asked).
    pub fn groups(&self) -> impl Iterator<Item = &GroupName> {
        self.joined.iter()
    }

    /// A connection to `server` is up: send HELLO.
    pub fn handle_connected(&mut self, server: &str, now: Instant) {
        self.state = State::Handshaking;
        self.server = server.to_string();
        self.out.clear();
        self.last_rx = now;
        self.last_tx = now;
        let name = Name::new(&self.cfg.name).unwrap_or_default();
        let hello = Frame::Hello(Handshake::client(name, self.cfg.max_frame_size as u32));
        hello.encode(&mut self.out);
    }

    /// The connection is gone; a new one may follow.
    pub fn handle_disconnected(&mut self, reason: String) {
        if self.state != State::Disconnected {
            self.state = State::Disconnected;
            self.out.clear();
            self.events.push_back(Event::Disconnected { reason });
        }
    }

    /// Decodes every complete frame in `buf` (payloads share its bytes).
    pub fn handle_bytes(&mut self, buf: &mut BytesMut, now: Instant) -> Result<(), ClientError> {
        self.last_rx = now;
        while let Some(frame) = proto::decode(buf, self.cfg.max_frame_size).map_err(ClientError::Protocol)? {
            self.handle_frame(frame)?;
        }
        Ok(())
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), ClientError> {
        match frame {
            Frame::Welcome(w) if self.state == State::Handshaking => {
                self.state = State::Ready;
                self.session = w.id;
                self.send_seq.clear();
                self.recv_seq.clear();
                let groups: Vec<GroupName> = self.joined.iter().cloned().collect();
                for g in &groups {
                    Frame::Join(g.clone()).encode(&mut self.out);
                }
                if std::mem::replace(&mut self.had_session, true) {
                    self.events.push_back(Event::Reconnected { server: self.server.clone(), session: w.id });
                    for group in groups {
                        let gap = Gap {
                            reason: GapReason::Reconnected,
                            group,
                            sender: SessionId::NONE,
                            first: 0,
                            last: u64::MAX,
                        };
                        self.events.push_back(Event::Gap(gap));
                    }
                }
            }
            Frame::Mcast(m) => {
                let last = self.recv_seq.entry(m.group.clone()).or_default().insert(m.sender, m.seq);
                if let Some(last) = last {
                    if m.seq > last + 1 {
                        let gap = Gap {
                            reason: GapReason::LinkLost,
                            group: m.group.clone(),
                            sender: m.sender,
                            first: last + 1,
                            last: m.seq - 1,
                        };
                        self.events.push_back(Event::Gap(gap));
                    }
                }
                self.events.push_back(Event::Message {
                    group: m.group,
                    sender: m.sender,
                    seq: m.seq,
                    payload: m.payload,
                });
            }
            Frame::View(v) => self.events.push_back(Event::View(v)),
            Frame::Gap(g) => self.events.push_back(Event::Gap(g)),
            Frame::Noop => {}
            Frame::Error(e) if e.fatal => {
                return Err(ClientError::Rejected { code: e.code, message: e.message });
            }
            Frame::Error(e) => self.events.push_back(Event::Error { code: e.code, message: e.message }),
            other => {
                return Err(ClientError::Rejected {
                    code: ErrorCode::Unexpected,
                    message: format!("server sent {} unexpectedly", other.name()),
                })
            }
        }
        Ok(())
    }

    /// Joins `group` (remembered across reconnects). The view including us follows.
    pub fn join(&mut self, group: GroupName) {
        if self.joined.insert(group.clone()) {
            // Messages before our membership are not ours: start gap detection afresh.
            self.recv_seq.remove(&group);
            if self.is_ready() {
                Frame::Join(group).encode(&mut self.out);
            }
        }
    }

    pub fn leave(&mut self, group: GroupName) {
        if self.joined.remove(&group) && self.is_ready() {
            Frame::Leave(group).encode(&mut self.out);
        }
    }

    /// Queues a multicast with the next sequence number of `group`.
    pub fn multicast(&mut self, group: &GroupName, payload: &[u8]) -> Result<(), ClientError> {
        if !self.is_ready() {
            return Err(ClientError::Closed);
        }
        if proto::MCAST_FIXED + group.len() + payload.len() > self.cfg.max_frame_size {
            return Err(ClientError::TooLarge(payload.len()));
        }
        let seq = self.send_seq.entry(group.clone()).or_insert(0);
        *seq += 1;
        encode_mcast(&mut self.out, self.session, *seq, group, payload);
        Ok(())
    }

    /// Bytes to write, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        self.last_tx = now;
        Some(self.out.split().freeze())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next keepalive or idle deadline while connected.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Disconnected {
            return None;
        }
        Some((self.last_tx + self.cfg.keepalive_interval).min(self.last_rx + self.cfg.idle_timeout))
    }

    /// Sends a keepalive when due; fails when the server has been silent for too long.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError> {
        if self.state == State::Disconnected {
            return Ok(());
        }
        if now.duration_since(self.last_rx) >= self.cfg.idle_timeout {
            return Err(ClientError::IdleTimeout);
        }
        if now.duration_since(self.last_tx) >= self.cfg.keepalive_interval && self.out.is_empty() {
            Frame::Noop.encode(&mut self.out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{NodeTag, Role};

    fn session() -> (Session, Instant) {
        let now = Instant::now();
        let cfg = SessionConfig {
            name: "t".into(),
            keepalive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_frame_size: 1 << 20,
        };
        (Session::new(cfg, now), now)
    }

    fn welcome(id: u64) -> BytesMut {
        let h = Handshake {
            version: 1,
            role: Role::Peer,
            id: SessionId(id),
            digest: 0,
            node_tag: NodeTag(1),
            max_frame: 1 << 20,
            name: Name::new("srv").unwrap(),
        };
        BytesMut::from(&Frame::Welcome(h).to_bytes()[..])
    }

    fn sent(s: &mut Session, now: Instant) -> Vec<Frame> {
        let mut b = BytesMut::from(&s.poll_transmit(now).unwrap_or_default()[..]);
        let mut out = Vec::new();
        while let Some(f) = proto::decode(&mut b, 1 << 20).unwrap() {
            out.push(f);
        }
        out
    }

    fn mcast(sender: u64, seq: u64) -> BytesMut {
        let mut b = BytesMut::new();
        encode_mcast(&mut b, SessionId(sender), seq, &GroupName::new("g").unwrap(), b"x");
        b
    }

    #[test]
    fn handshake_then_sequenced_multicasts() {
        let (mut s, now) = session();
        let g = GroupName::new("g").unwrap();
        assert!(s.multicast(&g, b"early").is_err(), "not before WELCOME");
        s.handle_connected("a:1", now);
        assert!(matches!(sent(&mut s, now).as_slice(), [Frame::Hello(_)]));
        s.handle_bytes(&mut welcome(42), now).unwrap();
        assert_eq!(s.session_id(), SessionId(42));
        s.join(g.clone());
        s.multicast(&g, b"1").unwrap();
        s.multicast(&g, b"2").unwrap();
        match sent(&mut s, now).as_slice() {
            [Frame::Join(_), Frame::Mcast(a), Frame::Mcast(b)] => {
                assert_eq!((a.sender, a.seq, b.seq), (SessionId(42), 1, 2));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sequence_jump_is_reported_as_a_gap() {
        let (mut s, now) = session();
        s.handle_connected("a:1", now);
        s.handle_bytes(&mut welcome(1), now).unwrap();
        for seq in [1, 2, 5] {
            s.handle_bytes(&mut mcast(9, seq), now).unwrap();
        }
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert_eq!(events.len(), 4);
        match &events[2] {
            Event::Gap(g) => assert_eq!((g.sender, g.first, g.last), (SessionId(9), 3, 4)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reconnect_rejoins_and_reports_gaps() {
        let (mut s, now) = session();
        s.handle_connected("a:1", now);
        s.handle_bytes(&mut welcome(1), now).unwrap();
        s.join(GroupName::new("g").unwrap());
        s.join(GroupName::new("h").unwrap());
        sent(&mut s, now);
        s.handle_disconnected("reset".into());
        s.handle_connected("b:2", now);
        sent(&mut s, now);
        s.handle_bytes(&mut welcome(7), now).unwrap();
        assert_eq!(sent(&mut s, now).len(), 2, "two JOINs");
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(matches!(&events[0], Event::Disconnected { .. }));
        assert!(
            matches!(&events[1], Event::Reconnected { server, session } if server == "b:2" && *session == SessionId(7))
        );
        assert!(events[2..].iter().all(|e| matches!(e, Event::Gap(g) if g.reason == GapReason::Reconnected)));
        assert_eq!(events.len(), 4);
        // Sequence numbers restart with the new session.
        let g = GroupName::new("g").unwrap();
        s.multicast(&g, b"x").unwrap();
        assert!(
            matches!(sent(&mut s, now).as_slice(), [Frame::Mcast(m)] if m.seq == 1 && m.sender == SessionId(7))
        );
    }

    #[test]
    fn keepalive_and_idle() {
        let (mut s, now) = session();
        s.handle_connected("a:1", now);
        sent(&mut s, now);
        s.handle_timeout(now + Duration::from_secs(6)).unwrap();
        assert_eq!(sent(&mut s, now + Duration::from_secs(6)), vec![Frame::Noop]);
        assert!(matches!(s.handle_timeout(now + Duration::from_secs(31)), Err(ClientError::IdleTimeout)));
    }
}
