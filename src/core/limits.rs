//! The limits and timings the core enforces, taken from the config (or its defaults).
//!
//! Owns only data; never reads a clock or a file.

use std::time::Duration;

use super::ClusterSecret;

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
    /// `stall_timeout` (msgc): how long a client connection may hold publishers back (over
    /// its high-water mark, a quarter of `max_backlog`) before it is cut as stuck, so fast
    /// receivers are held to a slow one's pace for a bounded time. Default 1 s. Peer links
    /// are never cut for being slow, only for making no write progress at all (see
    /// [`Limits::dead_link`]).
    pub stall_timeout: Duration,
    /// `handshake_timeout` (msgc): a connection must complete its handshake within this.
    pub handshake_timeout: Duration,
    /// `max_connections` (msgc): open connections per server (split evenly over shards).
    pub max_connections: usize,
    /// `max_handshakes` (msgc): connections still in their handshake, per server.
    pub max_handshakes: usize,
    /// `max_groups_per_session` (msgc): groups one session may be a member of, and groups
    /// it may send to whose sequence numbers the server checks.
    pub max_groups_per_session: usize,
    /// `max_group_members` (msgc): members of one group (a VIEW must also fit `max_frame`).
    pub max_group_members: usize,
    /// Peer links must be mutual TLS, the certificate naming the peer (set when
    /// `tls_certificate`, `tls_key` and `tls_ca` are configured).
    pub peer_tls: bool,
    /// `cluster_secret` (msgc): peers prove they know it with an HMAC challenge.
    pub cluster_secret: Option<ClusterSecret>,
    /// `tcpbuf_size`: bytes per read and most bytes per vectored write.
    pub tcpbuf_size: usize,
    /// `connect_timeout`: how long dialing a peer may take.
    pub connect_timeout: Duration,
    /// `reconnect_interval`: wait before redialing a lost peer link (± 20 % jitter).
    pub reconnect_interval: Duration,
    /// `link_timeout` (msgc): a peer link on which nothing arrives for this long is lost;
    /// traffic then goes through another server. Links send a heartbeat (PEER_ACK) after a
    /// quarter of it without sending anything else.
    pub link_timeout: Duration,
    /// `resend_buffer` (msgc): bytes of multicasts per peer link kept until the other side
    /// acknowledges them, to resend by another path if the link is lost.
    pub resend_buffer: usize,
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
            stall_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 65536,
            max_handshakes: 1024,
            max_groups_per_session: 1024,
            max_group_members: 4096,
            peer_tls: false,
            cluster_secret: None,
            tcpbuf_size: 131072,
            connect_timeout: Duration::from_secs(60),
            reconnect_interval: Duration::from_secs(5),
            link_timeout: Duration::from_millis(750),
            resend_buffer: 16 << 20,
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
    /// Open connections one of `nshards` shards accepts.
    pub fn connections_per_shard(&self, nshards: u16) -> usize {
        self.max_connections.div_ceil(usize::from(nshards.max(1)))
    }
    /// Connections in their handshake one of `nshards` shards accepts.
    pub fn handshakes_per_shard(&self, nshards: u16) -> usize {
        self.max_handshakes.div_ceil(usize::from(nshards.max(1)))
    }
    /// A peer link that takes no bytes at all for this long while frames wait is hung and
    /// is cut (twice `keepalive_interval`: a live, reading server always makes progress).
    pub fn dead_link(&self) -> Duration {
        self.keepalive_interval * 2
    }
    /// Send silence after which a peer link carries a heartbeat.
    pub fn link_heartbeat(&self) -> Duration {
        self.link_timeout / 4
    }
    /// How often the shard's timer should fire.
    pub fn tick(&self) -> Duration {
        let shortest = self
            .keepalive_interval
            .min(self.idle_timeout)
            .min(self.stall_timeout)
            .min(self.handshake_timeout)
            .min(self.link_timeout);
        (shortest / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }
}
