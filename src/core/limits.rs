//! The limits and timings the core enforces, taken from the config (or its defaults).
//!
//! Owns only data; never reads a clock or a file.

use std::time::Duration;

/// What the shard core needs from the `msgc_server` options. Changeable at runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `max_backlog`: a connection with more queued messages than this is stuck and killed.
    pub max_backlog: usize,
    /// `messages_per_iter`: runs of frames handled for one connection before yielding.
    pub messages_per_iter: usize,
    /// `max_frame_size`: largest frame accepted, in bytes.
    pub max_frame: usize,
    /// `memory_budget`: queued outbound bytes per shard before publishers are paused.
    pub memory_budget: usize,
    /// `idle_timeout`: a connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// `keepalive_interval`: a NOOP goes out after this much send silence.
    pub keepalive_interval: Duration,
    /// How long a connection may hold publishers back (over its high-water mark, a quarter
    /// of `max_backlog`) before it is killed as stuck, so fast receivers are held to a
    /// slow one's pace for a bounded time. Tied to `keepalive_interval`.
    pub stall_timeout: Duration,
    /// `tcpbuf_size`: bytes per read and most bytes per vectored write.
    pub tcpbuf_size: usize,
    /// `connect_timeout`: how long dialing a peer may take.
    pub connect_timeout: Duration,
    /// `reconnect_interval`: wait before redialing a lost peer link (± 20 % jitter).
    pub reconnect_interval: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_backlog: 5000,
            messages_per_iter: 20,
            max_frame: crate::proto::DEFAULT_MAX_FRAME,
            memory_budget: 64 << 20,
            idle_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(5),
            tcpbuf_size: 131072,
            connect_timeout: Duration::from_secs(60),
            reconnect_interval: Duration::from_secs(5),
        }
    }
}

impl Limits {
    /// Queued messages above which a connection holds publishers back. A quarter of
    /// `max_backlog`, so that what is already in flight between shards when publishers are
    /// told to pause fits below the kill line.
    pub fn high_water(&self) -> usize {
        (self.max_backlog / 4).max(1)
    }
    /// Queued messages below which a held-back connection releases publishers again.
    pub fn low_water(&self) -> usize {
        self.max_backlog / 8
    }
    /// How often the shard's timer should fire.
    pub fn tick(&self) -> Duration {
        let shortest = self.keepalive_interval.min(self.idle_timeout).min(self.stall_timeout);
        (shortest / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }
}
