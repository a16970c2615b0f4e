//! The load generator's own CPU use, so that a run can say when it, not the server, was the
//! limit. Each load-generator thread samples itself at the measurement window's start and
//! end (`/proc/thread-self/schedstat`: time on a CPU and time waiting for one); the machine
//! as a whole is sampled from `/proc/stat`. This module never reads the server's threads
//! (fanout does that for `--server-pid` and the embedded server).

use serde_json::json;

/// A thread's demand for CPU (on one, or runnable and waiting) at or above which the thread,
/// not the server, bounded the run.
pub const SATURATED: f64 = 0.9;
/// Machine-wide busy fraction at or above which server and load generator competed for CPU.
pub const MACHINE_SATURATED: f64 = 0.95;

/// One thread's cumulative scheduler counters at `at_ns` (the run's clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSample {
    pub run_ns: u64,
    /// Time runnable but not running; `None` where the kernel does not report it.
    pub wait_ns: Option<u64>,
    pub at_ns: u64,
}

/// Samples the calling thread.
pub fn sample_this_thread(at_ns: u64) -> Option<ThreadSample> {
    if let Ok(s) = std::fs::read_to_string("/proc/thread-self/schedstat") {
        if let Some((run_ns, wait_ns)) = parse_schedstat(&s) {
            return Some(ThreadSample { run_ns, wait_ns: Some(wait_ns), at_ns });
        }
    }
    // Without schedstat, the thread's CPU clock still gives time on CPU.
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return None;
    }
    Some(ThreadSample { run_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64, wait_ns: None, at_ns })
}

/// `/proc/*/schedstat`: "run_ns wait_ns timeslices".
fn parse_schedstat(s: &str) -> Option<(u64, u64)> {
    let mut f = s.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// What one thread did over a window, as fractions of the window's wall time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThreadUse {
    pub busy: f64,
    pub waiting: Option<f64>,
}

impl ThreadUse {
    pub fn between(a: ThreadSample, b: ThreadSample) -> Option<ThreadUse> {
        let wall = b.at_ns.checked_sub(a.at_ns).filter(|&w| w > 0)? as f64;
        let busy = b.run_ns.saturating_sub(a.run_ns) as f64 / wall;
        let waiting = match (a.wait_ns, b.wait_ns) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / wall),
            _ => None,
        };
        Some(ThreadUse { busy, waiting })
    }

    /// On a CPU or waiting for one.
    pub fn demand(&self) -> f64 {
        self.busy + self.waiting.unwrap_or(0.0)
    }
}

/// Cumulative busy and total time of all CPUs, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineSample {
    busy: u64,
    total: u64,
}

pub fn sample_machine() -> Option<MachineSample> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The aggregate `cpu` line: user nice system idle iowait irq softirq steal ...; idle and
/// iowait are not busy. Guest time is already inside user and nice.
fn parse_proc_stat(s: &str) -> Option<MachineSample> {
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> =
        line.split_whitespace().skip(1).take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some(MachineSample { busy: total - v[3] - v[4], total })
}

/// Fraction of all CPUs' time that was busy between two samples.
pub fn machine_busy(a: MachineSample, b: MachineSample) -> Option<f64> {
    let total = b.total.checked_sub(a.total).filter(|&t| t > 0)?;
    Some(b.busy.saturating_sub(a.busy) as f64 / total as f64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Subscriber,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Subscriber => "subscriber",
        }
    }
}

/// The load generator's threads over the measured window, and the machine's.
#[derive(Clone, Debug, Default)]
pub struct LoadUse {
    pub publishers: Vec<ThreadUse>,
    pub subscribers: Vec<ThreadUse>,
    pub machine_busy: Option<f64>,
}

/// Whether the load generator (or the machine) rather than the server bounded the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub load_generator_saturated: bool,
    pub machine_saturated: bool,
    /// One sentence for the report when either flag is set.
    pub why: Option<String>,
}

impl LoadUse {
    fn threads(&self) -> impl Iterator<Item = (Role, usize, &ThreadUse)> {
        let p = self.publishers.iter().enumerate().map(|(i, u)| (Role::Publisher, i, u));
        p.chain(self.subscribers.iter().enumerate().map(|(i, u)| (Role::Subscriber, i, u)))
    }

    /// CPU used by all load-generator threads, in cores.
    pub fn cores_used(&self) -> f64 {
        self.threads().map(|(_, _, u)| u.busy).sum()
    }

    /// The load generator is saturated when one of its threads wanted a CPU (ran, or waited
    /// to run) for at least [`SATURATED`] of the window: the connections on that thread were
    /// served as fast as that thread could go, so the figure is not the server's limit. Its
    /// cause is named: the thread itself was busy, or it waited because server and load
    /// generator compete for the machine's cores.
    pub fn verdict(&self) -> Verdict {
        let machine_saturated = self.machine_busy.is_some_and(|b| b >= MACHINE_SATURATED);
        let busiest = self.threads().max_by(|a, b| a.2.demand().total_cmp(&b.2.demand()));
        let mut why = None;
        let mut saturated = false;
        if let Some((role, i, u)) = busiest {
            if u.demand() >= SATURATED {
                saturated = true;
                let pct = |x: f64| (x * 100.0).round();
                why = Some(if u.busy >= SATURATED {
                    format!(
                        "load generator saturated: {} thread {i} was on a CPU {:.0}% of the window; \
                         it, not the server, was the limit",
                        role.name(),
                        pct(u.busy)
                    )
                } else {
                    format!(
                        "load generator saturated: {} thread {i} ran {:.0}% and waited for a CPU {:.0}% \
                         of the window; server and load generator were competing for the cores",
                        role.name(),
                        pct(u.busy),
                        pct(u.waiting.unwrap_or(0.0))
                    )
                });
            }
        }
        if why.is_none() && machine_saturated {
            why = Some(format!(
                "machine saturated: all CPUs {:.0}% busy (server, load generator and anything else running)",
                self.machine_busy.unwrap_or(0.0) * 100.0
            ));
        }
        Verdict { load_generator_saturated: saturated, machine_saturated, why }
    }

    pub fn json(&self) -> serde_json::Value {
        let v = self.verdict();
        let pct = |x: f64| (x * 1000.0).round() / 10.0;
        let list = |us: &[ThreadUse]| us.iter().map(|u| pct(u.busy)).collect::<Vec<_>>();
        let waits = |us: &[ThreadUse]| us.iter().map(|u| u.waiting.map(pct)).collect::<Vec<_>>();
        json!({
            "publisher_threads": self.publishers.len(),
            "subscriber_threads": self.subscribers.len(),
            "cpu_percent": pct(self.cores_used()),
            "publisher_busy_percent": list(&self.publishers),
            "publisher_wait_percent": waits(&self.publishers),
            "subscriber_busy_percent": list(&self.subscribers),
            "subscriber_wait_percent": waits(&self.subscribers),
            "saturated": v.load_generator_saturated,
            "machine_busy_percent": self.machine_busy.map(pct),
            "machine_saturated": v.machine_saturated,
            "why": v.why,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(busy: f64, waiting: f64) -> ThreadUse {
        ThreadUse { busy, waiting: Some(waiting) }
    }

    #[test]
    fn a_busy_thread_saturates_the_load_generator() {
        let u = LoadUse {
            publishers: vec![t(0.97, 0.01)],
            subscribers: vec![t(0.4, 0.0), t(0.3, 0.0)],
            machine_busy: Some(0.8),
        };
        let v = u.verdict();
        assert!(v.load_generator_saturated && !v.machine_saturated);
        let why = v.why.unwrap();
        assert!(why.contains("publisher thread 0") && why.contains("97%"), "{why}");
        assert!((u.cores_used() - 1.67).abs() < 1e-9);
    }

    #[test]
    fn a_thread_starved_of_cpu_is_saturated_too_and_says_why() {
        let u = LoadUse {
            publishers: vec![t(0.2, 0.0)],
            subscribers: vec![t(0.5, 0.45)],
            machine_busy: Some(0.99),
        };
        let v = u.verdict();
        assert!(v.load_generator_saturated && v.machine_saturated);
        assert!(v.why.unwrap().contains("subscriber thread 0 ran 50% and waited for a CPU 45%"));
    }

    #[test]
    fn headroom_everywhere_is_not_saturated() {
        let u = LoadUse {
            publishers: vec![t(0.5, 0.1)],
            subscribers: vec![t(0.6, 0.2), t(0.7, 0.1)],
            machine_busy: Some(0.7),
        };
        assert_eq!(
            u.verdict(),
            Verdict { load_generator_saturated: false, machine_saturated: false, why: None }
        );
    }

    #[test]
    fn a_busy_machine_alone_is_named_but_is_not_the_load_generator() {
        let u = LoadUse {
            publishers: vec![t(0.3, 0.0)],
            subscribers: vec![t(0.3, 0.1)],
            machine_busy: Some(0.96),
        };
        let v = u.verdict();
        assert!(!v.load_generator_saturated && v.machine_saturated);
        assert!(v.why.unwrap().starts_with("machine saturated: all CPUs 96% busy"));
    }

    #[test]
    fn use_between_samples() {
        let a = ThreadSample { run_ns: 1_000, wait_ns: Some(0), at_ns: 0 };
        let b = ThreadSample { run_ns: 501_000, wait_ns: Some(250_000), at_ns: 1_000_000 };
        assert_eq!(ThreadUse::between(a, b), Some(ThreadUse { busy: 0.5, waiting: Some(0.25) }));
        assert_eq!(ThreadUse::between(b, a), None, "a window that runs backwards is no window");
        let no_wait = ThreadSample { wait_ns: None, ..b };
        assert_eq!(ThreadUse::between(a, no_wait).unwrap().waiting, None);
    }

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_schedstat("123 456 7\n"), Some((123, 456)));
        assert_eq!(parse_schedstat("garbage"), None);
        let a = parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5\n").unwrap();
        let b = parse_proc_stat("cpu  400 0 150 850 100 0 0 0 0 0\n").unwrap();
        // 400 more ticks busy out of 500.
        assert_eq!(machine_busy(a, b), Some(0.8));
        assert_eq!(parse_proc_stat("intr 1 2 3"), None);
    }

    #[test]
    fn this_thread_can_be_sampled() {
        let a = sample_this_thread(0).expect("a Linux thread has a CPU clock");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = sample_this_thread(1).unwrap();
        assert!(b.run_ns >= a.run_ns);
    }
}
