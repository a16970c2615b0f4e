//! The fanout run's result, as text for people and one JSON object for scripts. Only
//! formatting: every figure is computed by the run.

use serde_json::json;

use crate::cpu::LoadUse;
use crate::stats::Tally;
use crate::FanoutArgs;

pub struct Report {
    pub target: &'static str,
    /// Which client measured: `lib` (msgc::client) or `raw` (this program's codec client).
    pub client: &'static str,
    pub args: FanoutArgs,
    /// Messages stamped inside the window.
    pub published: u64,
    pub total: Tally,
    /// Messages that never reached a subscriber that stayed connected, from the end of
    /// each publisher's stream.
    pub missing_at_end: u64,
    /// Publishers that did not finish writing what they encoded (their tail is unchecked).
    pub unfinished_publishers: usize,
    pub disconnects: u64,
    pub server_cpu_percent: Option<f64>,
    pub server_peak_rss_kib: Option<u64>,
    pub embedded: bool,
    pub load: LoadUse,
    pub errors: Vec<String>,
}

impl Report {
    fn rates(&self) -> (f64, f64, f64) {
        let d = self.args.duration;
        (self.published as f64 / d, self.total.delivered as f64 / d, self.total.bytes as f64 / d / 1e6)
    }

    pub fn json(&self) -> String {
        let (pubs, dels, mbs) = self.rates();
        let h = &self.total.latency_us;
        let q = |x: f64| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
        json!({
            "target": self.target,
            "client": self.client,
            "publishers": self.args.publishers,
            "subscribers": self.args.subscribers,
            "groups": self.args.groups,
            "size": self.args.size,
            "rate": self.args.rate,
            "duration_s": self.args.duration,
            "warmup_s": self.args.warmup,
            "published_msgs_per_s": pubs,
            "delivered_msgs_per_s": dels,
            "delivered_payload_mb_per_s": mbs,
            "latency_us": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999), "max": h.max(), "samples": h.len() },
            "lost": self.total.lost,
            "missing_at_end": self.missing_at_end,
            "unfinished_publishers": self.unfinished_publishers,
            "duplicates": self.total.duplicates,
            "reorders": self.total.reorders,
            "foreign": self.total.foreign,
            "gaps_reported": self.total.gaps_reported,
            "max_read_gap_ms": self.total.max_read_gap_ns as f64 / 1e6,
            "disconnects": self.disconnects,
            "server_cpu_percent": self.server_cpu_percent,
            "server_peak_rss_kib": self.server_peak_rss_kib,
            "rss_includes_load_generator": self.embedded,
            "load_generator": self.load.json(),
            "errors": self.errors,
        })
        .to_string()
    }

    pub fn text(&self) -> String {
        let (pubs, dels, mbs) = self.rates();
        let h = &self.total.latency_us;
        let q = |x: f64| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
        let a = &self.args;
        let mut s = format!(
            "{} fanout ({} client): {} pub x {} sub x {} groups, {} B, rate {}, {:.1} s measured\n\
             published  {pubs:>14.0} msg/s\n\
             delivered  {dels:>14.0} msg/s   {mbs:.1} MB/s payload\n\
             latency us p50 {} p90 {} p99 {} p99.9 {} max {}\n\
             lost {}  missing at end {}  duplicates {}  reorders {}  gap notices {}  disconnects {}",
            self.target,
            self.client,
            a.publishers,
            a.subscribers,
            a.groups,
            a.size,
            if a.rate == 0 { "max".to_string() } else { format!("{}/s", a.rate) },
            a.duration,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            h.max(),
            self.total.lost,
            self.missing_at_end,
            self.total.duplicates,
            self.total.reorders,
            self.total.gaps_reported,
            self.disconnects,
        );
        if self.total.foreign > 0 {
            s.push_str(&format!("\nmessages with an unknown sender {}", self.total.foreign));
        }
        if self.unfinished_publishers > 0 {
            s.push_str(&format!("\npublishers that could not finish writing {}", self.unfinished_publishers));
        }
        if self.total.max_read_gap_ns > 0 {
            let ms = self.total.max_read_gap_ns as f64 / 1e6;
            s.push_str(&format!("\nlongest pause between a subscriber's reads {ms:.0} ms"));
        }
        if let Some(cpu) = self.server_cpu_percent {
            s.push_str(&format!("\nserver cpu {cpu:.0}%"));
        }
        if let Some(rss) = self.server_peak_rss_kib {
            let whose = if self.embedded { " (whole process, load generator included)" } else { "" };
            s.push_str(&format!("  peak rss {} MiB{whose}", rss / 1024));
        }
        s.push('\n');
        s.push_str(&self.load_text());
        for e in &self.errors {
            s.push_str(&format!("\nerror: {e}"));
        }
        s
    }

    fn load_text(&self) -> String {
        let l = &self.load;
        let list = |us: &[crate::cpu::ThreadUse]| {
            us.iter()
                .map(|u| match u.waiting {
                    Some(w) if w >= 0.05 => format!("{:.0}% (+{:.0}% waiting)", u.busy * 100.0, w * 100.0),
                    _ => format!("{:.0}%", u.busy * 100.0),
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut s = format!(
            "load generator cpu {:.0}%: publisher threads {} [{}], subscriber threads {} [{}]",
            l.cores_used() * 100.0,
            l.publishers.len(),
            list(&l.publishers),
            l.subscribers.len(),
            list(&l.subscribers),
        );
        if let Some(m) = l.machine_busy {
            s.push_str(&format!("; machine {:.0}% busy", m * 100.0));
        }
        if let Some(why) = l.verdict().why {
            s.push_str(&format!("\nWARNING: {why}"));
        }
        s
    }
}
