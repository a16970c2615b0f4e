//! What a subscriber measures: deliveries, verification from sequence numbers, latency.

use hdrhistogram::Histogram;
use std::collections::HashMap;

/// Bytes every benchmark payload starts with: scheduled send time (ns since the run's
/// epoch), publisher index, per-publisher sequence number.
pub const STAMP: usize = 20;

/// The sequence number of a probe: before the run starts, every publisher sends probes
/// until each of its subscribers has received one, which proves that the path from the
/// publisher's server to every subscriber's server is up. A subscriber's view lists the
/// members on all the servers *it* is linked to, not whether the publisher's server is
/// linked to them, so without probes a run can start while the publisher's server still
/// has no link to a subscriber's server: what it publishes then reaches nobody there, and
/// the run reports a missing head as loss. Real messages are numbered from 1.
pub const PROBE_SEQ: u64 = 0;

pub fn stamp(buf: &mut [u8], sched_ns: u64, publisher: u32, seq: u64) {
    buf[..8].copy_from_slice(&sched_ns.to_be_bytes());
    buf[8..12].copy_from_slice(&publisher.to_be_bytes());
    buf[12..20].copy_from_slice(&seq.to_be_bytes());
}

pub fn read_stamp(p: &[u8]) -> Option<(u64, u32, u64)> {
    if p.len() < STAMP {
        return None;
    }
    let ts = u64::from_be_bytes(p[..8].try_into().ok()?);
    let publisher = u32::from_be_bytes(p[8..12].try_into().ok()?);
    let seq = u64::from_be_bytes(p[12..20].try_into().ok()?);
    Some((ts, publisher, seq))
}

/// Skipped sequence numbers remembered per sender to recognise late arrivals.
const MAX_TRACKED_MISSING: usize = 10_000;

/// One subscriber's tally.
pub struct Tally {
    /// Messages received inside the measurement window.
    pub delivered: u64,
    pub bytes: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reorders: u64,
    pub gaps_reported: u64,
    /// Messages whose stamp names a publisher this run does not have (corruption).
    pub foreign: u64,
    /// The longest time (ns) this subscriber went between two reads once the window was
    /// known: a server cuts a client that makes no read progress for `stall_timeout`, and
    /// this says whether the load generator itself stopped reading that long.
    pub max_read_gap_ns: u64,
    pub latency_us: Histogram<u64>,
    /// Next expected sequence number per publisher index; every publisher starts at 1, so a
    /// missing head counts as loss too.
    next: Vec<u64>,
    /// Sequence numbers skipped so far, per sender (bounded), to tell a late arrival
    /// (reorder) from a second copy (duplicate).
    missing: HashMap<u32, std::collections::BTreeSet<u64>>,
    /// Publishers a probe ([`PROBE_SEQ`]) arrived from.
    probed: Vec<bool>,
    /// Only messages received in `[measure_from, measure_until)` (ns) count as delivered.
    pub measure_from: u64,
    pub measure_until: u64,
}

impl Tally {
    pub fn new(measure_from: u64, measure_until: u64, publishers: usize) -> Tally {
        Tally {
            delivered: 0,
            bytes: 0,
            lost: 0,
            duplicates: 0,
            reorders: 0,
            gaps_reported: 0,
            foreign: 0,
            max_read_gap_ns: 0,
            // invariant: 1 µs to 1 hour with 3 significant digits is a valid configuration.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            next: vec![1; publishers],
            missing: HashMap::new(),
            probed: vec![false; publishers],
            measure_from,
            measure_until,
        }
    }

    /// Records one message from publisher `sender` with sequence `seq`, scheduled at
    /// `sched_ns`, received at `now_ns`.
    pub fn record(&mut self, sender: u32, seq: u64, sched_ns: u64, now_ns: u64, size: usize) {
        let Some(next) = self.next.get_mut(sender as usize) else {
            self.foreign += 1;
            return;
        };
        if seq == *next {
            *next += 1;
        } else if seq > *next {
            self.lost += seq - *next;
            let missing = self.missing.entry(sender).or_default();
            for s in (*next..seq).take(MAX_TRACKED_MISSING.saturating_sub(missing.len())) {
                missing.insert(s);
            }
            *next = seq + 1;
        } else if self.missing.get_mut(&sender).is_some_and(|m| m.remove(&seq)) {
            // A message counted as lost arrived late after all.
            self.lost -= 1;
            self.reorders += 1;
        } else {
            self.duplicates += 1;
        }
        if now_ns >= self.measure_from && now_ns < self.measure_until {
            self.delivered += 1;
            self.bytes += size as u64;
            let us = now_ns.saturating_sub(sched_ns) / 1000;
            let _ = self.latency_us.record(us.max(1));
        }
    }

    /// Notes a probe from publisher `sender`; true the first time one arrives from it.
    /// Probes are not messages of the run: they count nowhere else.
    pub fn probe(&mut self, sender: u32) -> bool {
        match self.probed.get_mut(sender as usize) {
            Some(seen) if !*seen => {
                *seen = true;
                true
            }
            Some(_) => false,
            None => {
                self.foreign += 1;
                false
            }
        }
    }

    /// Messages this subscriber never received from the end of each publisher's stream:
    /// `finals[p]` is publisher `p`'s last sequence number once it stopped (`None` if it did
    /// not finish sending, or sends to another group).
    pub fn missing_at_end(&self, finals: &[Option<u64>]) -> u64 {
        finals
            .iter()
            .zip(&self.next)
            .map(|(last, next)| last.map_or(0, |last| (last + 1).saturating_sub(*next)))
            .sum()
    }

    pub fn merge(&mut self, o: &Tally) {
        self.delivered += o.delivered;
        self.bytes += o.bytes;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.reorders += o.reorders;
        self.gaps_reported += o.gaps_reported;
        self.foreign += o.foreign;
        self.max_read_gap_ns = self.max_read_gap_ns.max(o.max_read_gap_ns);
        let _ = self.latency_us.add(&o.latency_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_and_duplicates_from_sequence_numbers() {
        let mut t = Tally::new(0, u64::MAX, 1);
        for seq in [1, 2, 3, 6, 7, 7, 8] {
            t.record(0, seq, 0, 5_000, 10);
        }
        assert_eq!((t.delivered, t.lost, t.duplicates), (7, 2, 1));
        assert_eq!(t.latency_us.value_at_quantile(0.5), 5);
    }

    #[test]
    fn a_late_message_is_a_reorder_not_a_loss() {
        let mut t = Tally::new(0, u64::MAX, 8);
        for seq in [1, 3, 2, 4, 4] {
            t.record(7, seq, 0, 1_000, 10);
        }
        assert_eq!((t.lost, t.reorders, t.duplicates), (0, 1, 1));
    }

    #[test]
    fn only_messages_received_in_the_window_count() {
        let mut t = Tally::new(100, 200, 1);
        t.record(0, 1, 50, 60, 1);
        // Sent before the window, received in it: counted, with its whole latency.
        t.record(0, 2, 90, 150, 1);
        t.record(0, 3, 150, 250, 1);
        assert_eq!(t.delivered, 1);
        assert_eq!(t.lost, 0);
        assert_eq!(t.latency_us.max(), 1);
    }

    #[test]
    fn a_missing_head_and_a_missing_tail_are_loss() {
        let mut t = Tally::new(0, u64::MAX, 3);
        for seq in [3, 4, 5] {
            t.record(0, seq, 0, 0, 1);
        }
        t.record(1, 1, 0, 0, 1);
        assert_eq!(t.lost, 2, "sequence numbers start at 1");
        // Publisher 0 stopped at 7, publisher 1 at 1, publisher 2 sends elsewhere.
        assert_eq!(t.missing_at_end(&[Some(7), Some(1), None]), 2);
        assert_eq!(t.missing_at_end(&[Some(5), Some(1), None]), 0);
    }

    #[test]
    fn an_unknown_publisher_is_counted_not_stored() {
        let mut t = Tally::new(0, u64::MAX, 2);
        t.record(2, 1, 0, 0, 1);
        t.record(u32::MAX, 1, 0, 0, 1);
        assert_eq!((t.foreign, t.delivered, t.lost), (2, 0, 0));
    }

    #[test]
    fn probes_are_noted_once_per_publisher_and_are_not_messages() {
        let mut t = Tally::new(0, u64::MAX, 2);
        assert!(t.probe(1));
        assert!(!t.probe(1), "a second probe from the same publisher is not news");
        assert!(t.probe(0));
        assert!(!t.probe(2), "no such publisher");
        assert_eq!((t.delivered, t.lost, t.duplicates, t.foreign), (0, 0, 0, 1));
        // The run's first message is still number 1.
        t.record(0, 1, 0, 0, 1);
        assert_eq!((t.delivered, t.lost), (1, 0));
    }

    #[test]
    fn merging_keeps_the_longest_read_gap_and_sums_the_counts() {
        let mut a = Tally::new(0, u64::MAX, 1);
        let mut b = Tally::new(0, u64::MAX, 1);
        a.max_read_gap_ns = 7;
        b.max_read_gap_ns = 1_500_000_000;
        b.record(0, 2, 0, 0, 1);
        a.merge(&b);
        assert_eq!((a.max_read_gap_ns, a.delivered, a.lost), (1_500_000_000, 1, 1));
    }

    #[test]
    fn stamps_roundtrip() {
        let mut b = [0u8; 32];
        stamp(&mut b, 123, 4, 5);
        assert_eq!(read_stamp(&b), Some((123, 4, 5)));
        assert_eq!(read_stamp(&b[..10]), None);
    }
}
