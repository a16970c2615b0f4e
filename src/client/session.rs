//! The client's outbound protocol state, sans-io: handshake, joined groups (to rejoin after
//! a reconnect), sequence numbers of outgoing multicasts, the bounded send queue and the
//! keepalive deadline. Its inbound twin, [`Inbound`](super::Inbound), decodes what the server
//! sends; the frames that change the session (WELCOME, fatal ERROR) come back here.
//!
//! Inputs are `handle_*` calls and commands; outputs are bytes to send (`take_transmit`) and
//! events (`poll_event`). Never touches a socket and never reads the clock.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::proto::{
    self, encode_mcast_parts, ErrorCode, Frame, Gap, GapReason, GroupName, Handshake, Name, SessionId,
};

use super::{ClientError, Event};

/// Timing and limits the session needs.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub name: String,
    pub keepalive_interval: Duration,
    pub idle_timeout: Duration,
    pub max_frame_size: usize,
    /// Bytes the send queue holds before multicasts wait (one write's worth: `tcpbuf_size`).
    /// A single frame larger than this is still accepted into an empty queue.
    pub send_queue_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Disconnected,
    Handshaking,
    Ready,
}

/// Why a multicast was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not connected (or the handshake is still running): retry after the next WELCOME.
    NotReady,
    /// The send queue holds `send_queue_bytes`: retry once the writer took it.
    Full,
}

/// One client's outbound protocol state across reconnections.
pub struct Session {
    cfg: SessionConfig,
    state: State,
    session: SessionId,
    /// Whether a session existed before the current connection (reconnect).
    had_session: bool,
    server: String,
    joined: BTreeSet<GroupName>,
    send_seq: HashMap<GroupName, u64>,
    /// The group multicast to last and its counter, kept out of `send_seq` while it is here:
    /// a publisher sending to one group pays a name comparison instead of a hash per message.
    hot: Option<(GroupName, u64)>,
    out: BytesMut,
    events: VecDeque<Event>,
    last_tx: Instant,
    /// Connections made so far; a flush that started on an older one cannot complete.
    epoch: u64,
    /// Bytes ever queued and bytes ever handed to the socket (`flush` compares them).
    queued: u64,
    written: u64,
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
            hot: None,
            out: BytesMut::new(),
            events: VecDeque::new(),
            last_tx: now,
            epoch: 0,
            queued: 0,
            written: 0,
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
        self.epoch += 1;
        self.discard_queue();
        self.last_tx = now;
        let name = Name::new(&self.cfg.name).unwrap_or_default();
        let hello = Frame::Hello(Handshake::client(name, self.cfg.max_frame_size as u32));
        self.push_frame(&hello);
    }

    /// The connection is gone; a new one may follow. What was queued is dropped (the
    /// receivers learn of it by a gap when our session ends).
    pub fn handle_disconnected(&mut self, reason: String) {
        if self.state != State::Disconnected {
            self.state = State::Disconnected;
            self.epoch += 1;
            self.discard_queue();
            self.events.push_back(Event::Disconnected { reason });
        }
    }

    /// A frame [`Inbound`](super::Inbound) does not handle itself: WELCOME, a fatal ERROR,
    /// or anything a server must not send to a client.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<(), ClientError> {
        match frame {
            Frame::Welcome(w) if self.state == State::Handshaking => {
                self.state = State::Ready;
                self.session = w.id;
                self.send_seq.clear();
                self.hot = None;
                let groups: Vec<GroupName> = self.joined.iter().cloned().collect();
                for g in &groups {
                    self.push_frame(&Frame::Join(g.clone()));
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
                Ok(())
            }
            Frame::Error(e) if e.fatal => Err(ClientError::Rejected { code: e.code, message: e.message }),
            other => Err(ClientError::Rejected {
                code: ErrorCode::Unexpected,
                message: format!("server sent {} unexpectedly", other.name()),
            }),
        }
    }

    /// Joins `group` (remembered across reconnects). The view including us follows.
    pub fn join(&mut self, group: GroupName) {
        if self.joined.insert(group.clone()) && self.is_ready() {
            self.push_frame(&Frame::Join(group));
        }
    }

    pub fn leave(&mut self, group: GroupName) {
        if self.joined.remove(&group) && self.is_ready() {
            self.push_frame(&Frame::Leave(group));
        }
    }

    /// Queues a multicast with the next sequence number of `group`, or says why not.
    /// `group` must be a valid group name (see [`valid_group`]).
    pub fn multicast(&mut self, group: &str, payload: &[u8]) -> Result<Result<(), Refused>, ClientError> {
        let size = proto::MCAST_FIXED + group.len() + payload.len();
        if size > self.cfg.max_frame_size {
            return Err(ClientError::TooLarge(payload.len()));
        }
        if self.state != State::Ready {
            return Ok(Err(Refused::NotReady));
        }
        if !self.out.is_empty() && self.out.len() + size > self.cfg.send_queue_bytes {
            return Ok(Err(Refused::Full));
        }
        let seq = self.next_seq(group)?;
        let before = self.out.len();
        // next_seq checked the name (a group gets a counter only once it parsed).
        encode_mcast_parts(&mut self.out, self.session, seq, group.as_bytes(), payload);
        self.queued += (self.out.len() - before) as u64;
        Ok(Ok(()))
    }

    /// The next sequence number of `group`.
    fn next_seq(&mut self, group: &str) -> Result<u64, ClientError> {
        if let Some((g, seq)) = &mut self.hot {
            if g.as_bytes() == group.as_bytes() {
                *seq += 1;
                return Ok(*seq);
            }
        }
        // Looked up by bytes: no allocation once the group has a counter.
        let (g, last) = match self.send_seq.remove_entry(group.as_bytes()) {
            Some(entry) => entry,
            None => (GroupName::new(group).map_err(ClientError::BadGroup)?, 0),
        };
        if let Some((old, seq)) = self.hot.replace((g, last + 1)) {
            self.send_seq.insert(old, seq);
        }
        Ok(last + 1)
    }

    /// Bytes waiting to be written.
    pub fn queued_len(&self) -> usize {
        self.out.len()
    }

    /// Moves the queued bytes into `spare` (which must be empty) for writing: the two
    /// buffers swap, so neither side allocates once both have grown. False if nothing waits.
    pub fn take_transmit(&mut self, spare: &mut BytesMut, now: Instant) -> bool {
        debug_assert!(spare.is_empty());
        if self.out.is_empty() {
            return false;
        }
        std::mem::swap(&mut self.out, spare);
        self.last_tx = now;
        true
    }

    /// `n` bytes taken with `take_transmit` during connection `epoch` were written.
    pub fn handle_written(&mut self, epoch: u64, n: usize) {
        if epoch == self.epoch {
            self.written += n as u64;
        }
    }

    /// The current connection's number and the bytes queued so far: a flush is complete
    /// when [`flushed`](Self::flushed) says so for this mark.
    pub fn flush_mark(&self) -> (u64, u64) {
        (self.epoch, self.queued)
    }

    /// `Some(true)` once everything queued up to `mark` was written, `Some(false)` while it
    /// is on its way, `None` if the connection it was queued on is gone.
    pub fn flushed(&self, mark: (u64, u64)) -> Option<bool> {
        if mark.0 != self.epoch {
            return None;
        }
        Some(self.written >= mark.1)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When a keepalive is due, while connected.
    pub fn keepalive_deadline(&self) -> Option<Instant> {
        if self.state == State::Disconnected {
            return None;
        }
        Some(self.last_tx + self.cfg.keepalive_interval)
    }

    /// Queues a NOOP when nothing was sent for `keepalive_interval`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Disconnected {
            return;
        }
        if now.duration_since(self.last_tx) >= self.cfg.keepalive_interval && self.out.is_empty() {
            self.push_frame(&Frame::Noop);
        }
    }

    fn push_frame(&mut self, frame: &Frame) {
        let before = self.out.len();
        frame.encode(&mut self.out);
        self.queued += (self.out.len() - before) as u64;
    }

    fn discard_queue(&mut self) {
        self.out.clear();
        self.written = self.queued;
    }
}

/// Whether `group` is a legal group name (1..=255 bytes; a `&str` is UTF-8 already).
pub fn valid_group(group: &str) -> bool {
    !group.is_empty() && group.len() <= proto::MAX_GROUP_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{NodeTag, Role};

    fn session_with_queue(send_queue_bytes: usize) -> (Session, Instant) {
        let now = Instant::now();
        let cfg = SessionConfig {
            name: "t".into(),
            keepalive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_frame_size: 1 << 20,
            send_queue_bytes,
        };
        (Session::new(cfg, now), now)
    }

    fn session() -> (Session, Instant) {
        session_with_queue(1 << 17)
    }

    fn welcome(id: u64) -> Frame {
        Frame::Welcome(Handshake {
            version: 1,
            role: Role::Peer,
            id: SessionId(id),
            digest: 0,
            node_tag: NodeTag(1),
            max_frame: 1 << 20,
            name: Name::new("srv").unwrap(),
        })
    }

    fn sent(s: &mut Session, now: Instant) -> Vec<Frame> {
        let mut b = BytesMut::new();
        s.take_transmit(&mut b, now);
        let mut out = Vec::new();
        while let Some(f) = proto::decode(&mut b, 1 << 20).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn handshake_then_sequenced_multicasts() {
        let (mut s, now) = session();
        assert_eq!(s.multicast("g", b"early").unwrap(), Err(Refused::NotReady), "not before WELCOME");
        s.handle_connected("a:1", now);
        assert!(matches!(sent(&mut s, now).as_slice(), [Frame::Hello(_)]));
        assert_eq!(s.multicast("g", b"early").unwrap(), Err(Refused::NotReady), "nor during the handshake");
        s.handle_frame(welcome(42)).unwrap();
        assert_eq!(s.session_id(), SessionId(42));
        s.join(GroupName::new("g").unwrap());
        s.multicast("g", b"1").unwrap().unwrap();
        s.multicast("g", b"2").unwrap().unwrap();
        s.multicast("h", b"other group").unwrap().unwrap();
        s.multicast("g", b"3").unwrap().unwrap();
        s.multicast("h", b"h2").unwrap().unwrap();
        match sent(&mut s, now).as_slice() {
            [Frame::Join(_), Frame::Mcast(a), Frame::Mcast(b), Frame::Mcast(c), Frame::Mcast(d), Frame::Mcast(e)] =>
            {
                assert_eq!((a.sender, a.seq, b.seq, c.seq), (SessionId(42), 1, 2, 1));
                assert_eq!((d.group.as_str(), d.seq, e.group.as_str(), e.seq), ("g", 3, "h", 2));
                assert_eq!((&a.payload[..], c.group.as_str()), (&b"1"[..], "h"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_send_queue_is_bounded_but_takes_one_big_frame() {
        let (mut s, now) = session_with_queue(1000);
        s.handle_connected("a:1", now);
        s.handle_frame(welcome(1)).unwrap();
        sent(&mut s, now);
        let mut queued = 0;
        while s.multicast("g", &[7u8; 100]).unwrap().is_ok() {
            queued += 1;
            assert!(queued < 100, "the bound never applied");
        }
        assert_eq!(queued, 1000 / (proto::MCAST_FIXED + 1 + 100));
        assert!(s.queued_len() <= 1000);
        assert_eq!(s.multicast("g", &[7u8; 100]).unwrap(), Err(Refused::Full));
        // The writer takes the queue: there is room again, and numbering continues.
        assert_eq!(sent(&mut s, now).len(), queued);
        s.multicast("g", &[7u8; 5000]).unwrap().expect("a frame above the bound fits an empty queue");
        match sent(&mut s, now).as_slice() {
            [Frame::Mcast(m)] => assert_eq!(m.seq, queued as u64 + 1, "a refused multicast takes no number"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.multicast("g", &vec![0u8; 1 << 20]), Err(ClientError::TooLarge(_))));
        assert!(matches!(s.multicast(&"x".repeat(300), b"p"), Err(ClientError::BadGroup(_))));
    }

    #[test]
    fn flush_marks_complete_when_written_and_fail_on_disconnect() {
        let (mut s, now) = session();
        s.handle_connected("a:1", now);
        s.handle_frame(welcome(1)).unwrap();
        s.multicast("g", b"x").unwrap().unwrap();
        let mark = s.flush_mark();
        assert_eq!(s.flushed(mark), Some(false));
        let mut b = BytesMut::new();
        assert!(s.take_transmit(&mut b, now));
        assert_eq!(s.flushed(mark), Some(false), "taken is not written");
        s.handle_written(s.epoch(), b.len());
        assert_eq!(s.flushed(mark), Some(true));
        s.multicast("g", b"y").unwrap().unwrap();
        let mark = s.flush_mark();
        s.handle_disconnected("reset".into());
        assert_eq!(s.flushed(mark), None, "lost with the connection");
        assert_eq!(s.queued_len(), 0);
        // Written bytes reported late by an old connection's writer do not count.
        s.handle_connected("a:1", now);
        let mark = s.flush_mark();
        s.handle_written(s.epoch() - 2, 1 << 20);
        assert_eq!(s.flushed(mark), Some(false), "the HELLO is still queued");
    }

    #[test]
    fn reconnect_rejoins_and_reports_gaps() {
        let (mut s, now) = session();
        s.handle_connected("a:1", now);
        s.handle_frame(welcome(1)).unwrap();
        s.join(GroupName::new("g").unwrap());
        s.join(GroupName::new("h").unwrap());
        s.multicast("g", b"x").unwrap().unwrap();
        sent(&mut s, now);
        s.handle_disconnected("reset".into());
        s.handle_connected("b:2", now);
        sent(&mut s, now);
        s.handle_frame(welcome(7)).unwrap();
        assert_eq!(sent(&mut s, now).len(), 2, "two JOINs");
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(matches!(&events[0], Event::Disconnected { .. }));
        assert!(
            matches!(&events[1], Event::Reconnected { server, session } if server == "b:2" && *session == SessionId(7))
        );
        assert!(events[2..].iter().all(|e| matches!(e, Event::Gap(g) if g.reason == GapReason::Reconnected)));
        assert_eq!(events.len(), 4);
        // Sequence numbers restart with the new session.
        s.multicast("g", b"x").unwrap().unwrap();
        assert!(
            matches!(sent(&mut s, now).as_slice(), [Frame::Mcast(m)] if m.seq == 1 && m.sender == SessionId(7))
        );
    }

    #[test]
    fn fatal_errors_and_unexpected_frames_end_the_connection() {
        let (mut s, now) = session();
        s.handle_connected("a:1", now);
        let fatal = crate::proto::ErrorFrame::fatal(ErrorCode::ShuttingDown, "bye");
        assert!(matches!(
            s.handle_frame(fatal),
            Err(ClientError::Rejected { code: ErrorCode::ShuttingDown, .. })
        ));
        let hello = Frame::Hello(Handshake::client(Name::default(), 4096));
        assert!(matches!(
            s.handle_frame(hello),
            Err(ClientError::Rejected { code: ErrorCode::Unexpected, .. })
        ));
    }

    #[test]
    fn keepalive_when_silent() {
        let (mut s, now) = session();
        assert_eq!(s.keepalive_deadline(), None, "nothing to keep alive");
        s.handle_connected("a:1", now);
        sent(&mut s, now);
        assert_eq!(s.keepalive_deadline(), Some(now + Duration::from_secs(5)));
        s.handle_timeout(now + Duration::from_secs(4));
        assert_eq!(s.queued_len(), 0, "not due yet");
        s.handle_timeout(now + Duration::from_secs(6));
        assert_eq!(sent(&mut s, now + Duration::from_secs(6)), vec![Frame::Noop]);
    }
}
