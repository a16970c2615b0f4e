//! The per-member checker: judges every event one client receives against the delivery and
//! membership contract (docs/mesh.md, issue 9) and counts what breaks it, per phase.
//!
//! It owns no socket and reads no clock (`now` is an argument), so its rules are tested
//! below on hand-made event streams. It must never excuse a loss the server did not announce:
//! the client library turns every sequence jump it sees into a `Gap` event of its own, placed
//! just before the message that reveals the jump, so such a gap says nothing about the server.
//! The checker mirrors the library's per-connection sequence state to recognise those
//! self-made gaps exactly and discards them; only the notices the server sent (and the
//! library's reconnection notices, which are real: the member was away) excuse a loss.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use msgc::client::Event;
use msgc::proto::{Gap, GapReason, GroupName, SessionId};

/// What one member saw in one phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages accepted: new, in order (after a covered or uncovered jump too).
    pub checked: u64,
    /// Sequence numbers missing where a notice (a server GAP, or the member's own
    /// reconnection) announced them.
    pub lost_notice: u64,
    /// Sequence numbers missing with no notice at all.
    pub silent: u64,
    /// Messages received twice.
    pub dups: u64,
    /// Messages that arrived after a later one from the same sender.
    pub reordered: u64,
    /// Views whose id was not above the highest this member had seen of that group.
    pub view_regressions: u64,
    /// Gap notices received (the library's own jump notices excluded).
    pub notices: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.checked += o.checked;
        self.lost_notice += o.lost_notice;
        self.silent += o.silent;
        self.dups += o.dups;
        self.reordered += o.reordered;
        self.view_regressions += o.view_regressions;
        self.notices += o.notices;
    }
}

/// Per (group, sender) state.
#[derive(Debug)]
struct SenderState {
    last: u64,
    /// Event index of the last message taken from this sender: notices after it count.
    last_idx: u64,
    last_phase: usize,
    /// Ranges counted as missing, to tell a late arrival from a duplicate (bounded).
    missing: Vec<(u64, u64)>,
}

const MAX_MISSING_RANGES: usize = 32;
/// Notices kept per member; older ones are dropped once no sender needs them.
const MAX_NOTICES: usize = 4096;
/// Anomalies described in words per member (the counts keep counting past it).
const MAX_DETAILS: usize = 12;

#[derive(Debug)]
struct Notice {
    idx: u64,
    at: Instant,
    phase: usize,
    gap: Gap,
}

/// A member's latest view of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatestView {
    pub view_id: u64,
    /// Highest view id seen (regressions are judged against it).
    pub highest: u64,
    /// Session ids listed, ascending.
    pub members: Vec<SessionId>,
}

/// The checker of one member (one client, for its whole life, across reconnections).
#[derive(Debug)]
pub struct Checker {
    pub label: String,
    per_phase: Vec<Counts>,
    senders: HashMap<(GroupName, SessionId), SenderState>,
    /// The library's per-connection "last sequence number" per (group, sender) (see the
    /// module docs): reset with each connection, pruned at each view as the library does.
    mirror: HashMap<GroupName, HashMap<SessionId, u64>>,
    /// A gap event waiting for the next event, which decides whether the library made it.
    held: Option<(Gap, Instant, usize)>,
    notices: Vec<Notice>,
    idx: u64,
    views: HashMap<GroupName, LatestView>,
    pub session: SessionId,
    pub connected: bool,
    pub reconnections: u64,
    /// Jump notices the library made itself (discarded).
    pub own_jump_gaps: u64,
    /// Self-made gaps the mirror expected but did not see: the mirror is wrong, so the
    /// verdicts of this member are suspect.
    pub mirror_mismatches: u64,
    pub last_message_at: Option<Instant>,
    /// The longest time between two messages (any sender), and when it started.
    pub longest_stall: Option<(Duration, Instant)>,
    pub details: Vec<String>,
    /// When the run began and when the last event came (details say when, for the logs).
    origin: Instant,
    now: Instant,
}

impl Checker {
    /// A checker for a member whose session is `session`, in a run that began at `origin`.
    pub fn new(label: impl Into<String>, session: SessionId, phases: usize, origin: Instant) -> Checker {
        Checker {
            label: label.into(),
            per_phase: vec![Counts::default(); phases.max(1)],
            senders: HashMap::new(),
            mirror: HashMap::new(),
            held: None,
            notices: Vec::new(),
            idx: 0,
            views: HashMap::new(),
            session,
            connected: true,
            reconnections: 0,
            own_jump_gaps: 0,
            mirror_mismatches: 0,
            last_message_at: None,
            longest_stall: None,
            details: Vec::new(),
            origin,
            now: origin,
        }
    }

    pub fn counts(&self, phase: usize) -> Counts {
        self.per_phase.get(phase).copied().unwrap_or_default()
    }

    pub fn latest_view(&self, group: &GroupName) -> Option<&LatestView> {
        self.views.get(group)
    }

    /// The highest sequence number taken from each (group, sender).
    pub fn last_seqs(&self) -> impl Iterator<Item = (&GroupName, SessionId, u64)> {
        self.senders.iter().map(|((g, s), st)| (g, *s, st.last))
    }

    /// The last sequence number taken from `sender` in `group`.
    pub fn last_seq(&self, group: &GroupName, sender: SessionId) -> Option<u64> {
        self.senders.get(&(group.clone(), sender)).map(|s| s.last)
    }

    /// Judges one event. `phase` is the phase it arrived in; `started(s)` is when sender `s`'s
    /// session began, if known (a loss at the head of a session is excused only by a notice
    /// that came after it).
    pub fn handle(
        &mut self,
        event: Event,
        now: Instant,
        phase: usize,
        started: &dyn Fn(SessionId) -> Option<Instant>,
    ) {
        let phase = phase.min(self.per_phase.len() - 1);
        self.now = self.now.max(now);
        // The gap the library would have put just before this message, if any.
        let expected = match &event {
            Event::Message { group, sender, seq, .. } => self.library_jump(group, *sender, *seq),
            _ => None,
        };
        match (self.held.take(), expected) {
            (Some((gap, ..)), Some(own)) if gap == own => self.own_jump_gaps += 1,
            (held, expected) => {
                if let Some((gap, at, in_phase)) = held {
                    self.take_notice(gap, at, in_phase);
                }
                if let (Some(own), Event::Message { seq, .. }) = (expected, &event) {
                    self.mirror_mismatches += 1;
                    self.detail(format!("expected the library's own gap {own:?} before #{seq}"));
                }
            }
        }
        match event {
            Event::Message { group, sender, seq, .. } => {
                self.message(group, sender, seq, now, phase, started)
            }
            Event::Gap(gap) => self.held = Some((gap, now, phase)),
            Event::View(v) => {
                self.idx += 1;
                // As the library's receive state: senders not listed are forgotten.
                if let Some(senders) = self.mirror.get_mut(&v.group) {
                    senders.retain(|s, _| v.members.iter().any(|m| m.session == *s));
                }
                let lv = self.views.entry(v.group.clone()).or_default();
                if lv.highest != 0 && v.view_id <= lv.highest {
                    self.per_phase[phase].view_regressions += 1;
                    let (highest, id, group) = (lv.highest, v.view_id, v.group.clone());
                    self.detail(format!("view of {group:?} went from {highest} to {id} ({:?})", v.cause));
                }
                let lv = self.views.entry(v.group.clone()).or_default();
                lv.view_id = v.view_id;
                lv.highest = lv.highest.max(v.view_id);
                lv.members = v.members.iter().map(|m| m.session).collect();
                lv.members.sort_unstable();
            }
            Event::Disconnected { .. } => {
                self.idx += 1;
                self.connected = false;
                self.mirror.clear();
            }
            Event::Reconnected { session, .. } => {
                self.idx += 1;
                self.connected = true;
                self.session = session;
                self.reconnections += 1;
                self.mirror.clear();
            }
            Event::Error { code, message } => {
                self.idx += 1;
                self.detail(format!("server error {code:?}: {message}"));
            }
        }
    }

    /// Counts what is missing at the end: for each (group, sender) in `highest` (the highest
    /// sequence number any member took) of a group in `groups`, what this member lacks above
    /// its own last message, excused only by a notice after that message.
    pub fn tail_check(
        &mut self,
        highest: &HashMap<(GroupName, SessionId), u64>,
        groups: &[GroupName],
        phase: usize,
        started: &dyn Fn(SessionId) -> Option<Instant>,
    ) {
        if let Some((gap, at, in_phase)) = self.held.take() {
            self.take_notice(gap, at, in_phase);
        }
        for ((group, sender), &max) in highest {
            if !groups.contains(group) {
                continue;
            }
            let (from, after_idx, after_at, quiet_since) = match self.senders.get(&(group.clone(), *sender)) {
                Some(st) if st.last >= max => continue,
                Some(st) => (st.last + 1, st.last_idx, None, st.last_phase),
                None => (1, 0, started(*sender), phase),
            };
            let unnoticed = self.loss(group, *sender, from, max, after_idx, after_at, quiet_since);
            if unnoticed > 0 {
                self.detail(format!(
                    "tail of {group:?} from {sender}: #{from}..=#{max} missing, {unnoticed} without notice"
                ));
            }
        }
    }

    fn message(
        &mut self,
        group: GroupName,
        sender: SessionId,
        seq: u64,
        now: Instant,
        phase: usize,
        started: &dyn Fn(SessionId) -> Option<Instant>,
    ) {
        self.idx += 1;
        self.mirror.entry(group.clone()).or_default().insert(sender, seq);
        if let Some(prev) = self.last_message_at.replace(now) {
            let stall = now.saturating_duration_since(prev);
            if self.longest_stall.is_none_or(|(d, _)| stall > d) {
                self.longest_stall = Some((stall, prev));
            }
        }
        let key = (group, sender);
        let (from, after_idx, after_at) = match self.senders.get_mut(&key) {
            Some(st) if seq == st.last + 1 => {
                st.last = seq;
                st.last_idx = self.idx;
                st.last_phase = phase;
                self.per_phase[phase].checked += 1;
                return;
            }
            Some(st) if seq <= st.last => {
                let (late, last) = (st.missing.iter().any(|&(a, b)| (a..=b).contains(&seq)), st.last);
                if late {
                    self.per_phase[phase].reordered += 1;
                    self.detail(format!("{:?} from {sender}: #{seq} after #{last}", key.0));
                } else {
                    self.per_phase[phase].dups += 1;
                    self.detail(format!("{:?} from {sender}: #{seq} again (last #{last})", key.0));
                }
                return;
            }
            Some(st) => (st.last + 1, st.last_idx, None),
            // The first message of a sender: a loss before it is excused only by a notice
            // after the sender's session began (this member was away when it started).
            None => (1, 0, Some(started(sender).unwrap_or(now))),
        };
        if seq > from {
            let unnoticed = self.loss(&key.0, sender, from, seq - 1, after_idx, after_at, phase);
            if unnoticed > 0 {
                self.detail(format!(
                    "{:?} from {sender}: #{from}..=#{} missing, {unnoticed} without notice",
                    key.0,
                    seq - 1
                ));
            }
        }
        let idx = self.idx;
        let st = self.senders.entry(key).or_insert(SenderState {
            last: 0,
            last_idx: 0,
            last_phase: phase,
            missing: Vec::new(),
        });
        if seq > from && st.missing.len() < MAX_MISSING_RANGES {
            st.missing.push((from, seq - 1));
        }
        st.last = seq;
        st.last_idx = idx;
        st.last_phase = phase;
        self.per_phase[phase].checked += 1;
    }

    /// The gap the library puts before this message, if it makes one (see module docs).
    fn library_jump(&self, group: &GroupName, sender: SessionId, seq: u64) -> Option<Gap> {
        let last = *self.mirror.get(group)?.get(&sender)?;
        (seq > last + 1).then(|| Gap {
            reason: GapReason::LinkLost,
            group: group.clone(),
            sender,
            first: last + 1,
            last: seq - 1,
        })
    }

    fn take_notice(&mut self, gap: Gap, at: Instant, phase: usize) {
        self.idx += 1;
        self.per_phase[phase].notices += 1;
        if self.notices.len() >= MAX_NOTICES {
            // Keep what a sender may still need: notices after the oldest last message.
            let oldest = self.senders.values().map(|s| s.last_idx).min().unwrap_or(0);
            self.notices.retain(|n| n.idx > oldest);
            if self.notices.len() >= MAX_NOTICES {
                self.notices.drain(..MAX_NOTICES / 2);
                self.detail("notice log overflowed; older notices dropped".into());
            }
        }
        self.notices.push(Notice { idx: self.idx, at, phase, gap });
    }

    /// Counts `from..=to` from `sender` in `group` as lost: with notice as far as notices
    /// after event `after_idx` (and, if given, received at or after `after_at`) cover it, in
    /// the phase of the first such notice; the rest silent, in phase `found_in`. Returns the
    /// silent count.
    #[allow(clippy::too_many_arguments)]
    fn loss(
        &mut self,
        group: &GroupName,
        sender: SessionId,
        from: u64,
        to: u64,
        after_idx: u64,
        after_at: Option<Instant>,
        found_in: usize,
    ) -> u64 {
        let mut first_phase = None;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for n in &self.notices {
            let applies = n.idx > after_idx
                && after_at.is_none_or(|t| n.at >= t)
                && n.gap.group == *group
                && (n.gap.sender == sender || n.gap.sender.is_none());
            let (a, b) = (n.gap.first.max(from), n.gap.last.min(to));
            if applies && a <= b {
                ranges.push((a, b));
                // Notices are kept in arrival order.
                first_phase.get_or_insert(n.phase);
            }
        }
        ranges.sort_unstable();
        let (mut covered, mut next) = (0u64, from);
        for (a, b) in ranges {
            let a = a.max(next);
            if a <= b {
                covered += b - a + 1;
                next = b.saturating_add(1);
            }
        }
        let last = self.per_phase.len() - 1;
        let silent = (to - from + 1) - covered;
        self.per_phase[first_phase.unwrap_or(found_in).min(last)].lost_notice += covered;
        self.per_phase[found_in.min(last)].silent += silent;
        silent
    }

    fn detail(&mut self, what: String) {
        if self.details.len() < MAX_DETAILS {
            let at = self.now.saturating_duration_since(self.origin).as_secs_f64();
            self.details.push(format!("[{at:.1} s] {what}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use msgc::proto::{Cause, Member, Name, View};

    const S: SessionId = SessionId(0x1_0000_0001);
    const ME: SessionId = SessionId(0x2_0000_0001);

    fn g() -> GroupName {
        GroupName::new("g").unwrap()
    }
    fn msg(seq: u64) -> Event {
        msg_from(S, seq)
    }
    fn msg_from(sender: SessionId, seq: u64) -> Event {
        Event::Message { group: g(), sender, seq, payload: Bytes::new() }
    }
    fn gap(reason: GapReason, sender: SessionId, first: u64, last: u64) -> Event {
        Event::Gap(Gap { reason, group: g(), sender, first, last })
    }
    fn view(id: u64, members: &[SessionId]) -> Event {
        let members =
            members.iter().map(|&session| Member { session, name: Name::new("m").unwrap() }).collect();
        Event::View(View { cause: Cause::Join, group: g(), view_id: id, group_seq: 0, subject: ME, members })
    }
    fn run(events: Vec<Event>) -> Checker {
        let t0 = Instant::now();
        let mut c = Checker::new("t", ME, 2, t0);
        for (i, e) in events.into_iter().enumerate() {
            c.handle(e, t0 + Duration::from_millis(i as u64), 0, &|_| None);
        }
        c
    }

    #[test]
    fn an_unbroken_stream_is_all_checked() {
        let c = run((1..=50).map(msg).collect());
        assert_eq!(c.counts(0), Counts { checked: 50, ..Counts::default() });
    }

    #[test]
    fn a_jump_the_server_never_announced_is_silent_even_with_the_librarys_own_gap() {
        // What the library delivers for 1, 2, 6: its own gap 3..=5 just before #6.
        let c = run(vec![msg(1), msg(2), gap(GapReason::LinkLost, S, 3, 5), msg(6)]);
        assert_eq!(c.counts(0).silent, 3);
        assert_eq!(c.counts(0).lost_notice, 0);
        assert_eq!(c.own_jump_gaps, 1);
        assert_eq!(c.mirror_mismatches, 0);
    }

    #[test]
    fn a_jump_after_a_server_gap_is_loss_with_notice() {
        // The server says "from #3 on, end unknown"; the library adds its own before #6.
        let c = run(vec![
            msg(1),
            msg(2),
            gap(GapReason::LinkLost, S, 3, u64::MAX),
            gap(GapReason::LinkLost, S, 3, 5),
            msg(6),
        ]);
        assert_eq!((c.counts(0).lost_notice, c.counts(0).silent), (3, 0));
        assert_eq!(c.counts(0).notices, 1);
    }

    #[test]
    fn a_notice_covering_part_of_a_jump_leaves_the_rest_silent() {
        let c = run(vec![
            msg(1),
            gap(GapReason::LinkLost, S, 2, 3),
            msg(2),
            msg(3),
            gap(GapReason::LinkLost, S, 4, 4),
            gap(GapReason::LinkLost, S, 4, 9),
            msg(10),
        ]);
        // Notice 2..=3 came before #2 and #3 arrived after all; only #4 is announced after #3.
        assert_eq!((c.counts(0).lost_notice, c.counts(0).silent), (1, 5));
    }

    #[test]
    fn a_notice_for_another_sender_does_not_excuse() {
        let other = SessionId(0x3_0000_0001);
        let c = run(vec![
            msg(1),
            gap(GapReason::LinkLost, other, 1, u64::MAX),
            gap(GapReason::LinkLost, S, 2, 4),
            msg(5),
        ]);
        assert_eq!(c.counts(0).silent, 3);
    }

    #[test]
    fn a_reconnection_notice_covers_every_sender() {
        let c = run(vec![
            msg(1),
            Event::Disconnected { reason: "x".into() },
            Event::Reconnected { server: "s".into(), session: SessionId(9) },
            gap(GapReason::Reconnected, SessionId::NONE, 0, u64::MAX),
            msg(7),
        ]);
        // A new connection: the library has no state, so no gap of its own before #7.
        assert_eq!((c.counts(0).lost_notice, c.counts(0).silent), (5, 0));
        assert_eq!((c.session, c.reconnections, c.own_jump_gaps), (SessionId(9), 1, 0));
    }

    #[test]
    fn duplicates_and_late_arrivals_are_told_apart() {
        let c = run(vec![
            msg(1),
            msg(2),
            msg(2),
            gap(GapReason::LinkLost, S, 3, u64::MAX),
            gap(GapReason::LinkLost, S, 3, 4),
            msg(5),
            msg(4),
            msg(1),
        ]);
        let n = c.counts(0);
        assert_eq!((n.dups, n.reordered, n.checked, n.lost_notice), (2, 1, 3, 2));
    }

    #[test]
    fn a_loss_counts_in_the_phase_of_its_notice_and_a_silent_one_where_it_shows() {
        let t0 = Instant::now();
        let mut c = Checker::new("t", ME, 4, t0);
        c.handle(msg(1), t0, 0, &|_| None);
        c.handle(gap(GapReason::LinkLost, S, 2, u64::MAX), t0, 1, &|_| None);
        c.handle(gap(GapReason::LinkLost, S, 2, 9), t0, 2, &|_| None);
        c.handle(msg(10), t0, 2, &|_| None);
        c.handle(gap(GapReason::LinkLost, S, 11, 14), t0, 3, &|_| None);
        c.handle(msg(15), t0, 3, &|_| None);
        let got: Vec<_> =
            (0..4).map(|p| (c.counts(p).lost_notice, c.counts(p).silent, c.counts(p).notices)).collect();
        assert_eq!(got, [(0, 0, 0), (8, 0, 1), (0, 0, 0), (0, 4, 0)]);
    }

    #[test]
    fn view_ids_must_grow() {
        let c = run(vec![view(3, &[ME]), view(5, &[ME, S]), view(4, &[ME]), view(5, &[ME]), view(6, &[ME])]);
        assert_eq!(c.counts(0).view_regressions, 2);
        let lv = c.latest_view(&g()).unwrap();
        assert_eq!((lv.view_id, lv.highest, lv.members.clone()), (6, 6, vec![ME]));
    }

    #[test]
    fn a_view_without_the_sender_resets_the_librarys_state() {
        // After a view that drops S, the library forgets S: a jump then gets no gap of its
        // own, and the checker must not expect one.
        let c = run(vec![
            view(1, &[ME, S]),
            msg(1),
            view(2, &[ME]),
            gap(GapReason::LinkLost, S, 2, u64::MAX),
            view(3, &[ME, S]),
            msg(4),
        ]);
        assert_eq!((c.counts(0).lost_notice, c.counts(0).silent, c.mirror_mismatches), (2, 0, 0));
    }

    #[test]
    fn a_late_first_message_needs_a_notice_after_the_sender_began() {
        let t0 = Instant::now();
        let mut c = Checker::new("t", ME, 1, t0);
        c.handle(gap(GapReason::Reconnected, SessionId::NONE, 0, u64::MAX), t0, 0, &|_| None);
        // The sender began after that notice: the notice does not excuse its lost head.
        let began = t0 + Duration::from_secs(1);
        c.handle(msg(4), t0 + Duration::from_secs(2), 0, &|_| Some(began));
        assert_eq!((c.counts(0).silent, c.counts(0).lost_notice), (3, 0));
    }

    #[test]
    fn the_tail_check_counts_what_never_came() {
        let t0 = Instant::now();
        let mut c = Checker::new("t", ME, 1, t0);
        let quiet = SessionId(0x4_0000_0001);
        for (i, e) in [msg(1), msg(2), msg_from(quiet, 1), gap(GapReason::LinkLost, quiet, 2, u64::MAX)]
            .into_iter()
            .enumerate()
        {
            c.handle(e, t0 + Duration::from_millis(i as u64), 0, &|_| None);
        }
        let highest = HashMap::from([((g(), S), 5), ((g(), quiet), 4)]);
        c.tail_check(&highest, &[g()], 0, &|_| None);
        let n = c.counts(0);
        assert_eq!((n.silent, n.lost_notice), (3, 3));
    }
}
