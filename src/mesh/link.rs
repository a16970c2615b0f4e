//! The state machine of one peer link, seen from this server: dialling, handshake, keepalive,
//! idle detection and reconnect backoff.
//!
//! Owns the link's state, its deadlines and its counters. Inputs are `handle_*` calls (the
//! runtime started a dial, a connection was made or accepted, a handshake arrived, a frame
//! went in or out, the socket closed, time passed); outputs are [`LinkAction`]s returned by
//! [`Link::handle_timeout`] and the next deadline from [`Link::poll_timeout`]. Never does I/O,
//! never reads a clock, never draws random numbers: `now` is an argument and the reconnect
//! jitter derives from a seed given at construction.
//!
//! ```text
//!            Dial (dialer only)          connected             handshake ok
//!   Idle ─────────────────────> Connecting ─────> Handshaking ─────────────> Up
//!    ^ (acceptor)   ^                │  accepted ──^      │                   │
//!    │              │ Dial           │ connect_timeout    │ bad handshake,    │ closed,
//!    │              │                v                    v connect_timeout   v idle_timeout
//!    └──────────── Backoff{until} <──┴────────────────────┴───────────────────┘
//!   (an acceptor goes back to Idle instead of Backoff: the other side redials)
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use super::{DupLink, MeshError, NodeName, Origin, PeerId};
use crate::proto::{Handshake, NodeTag, Role};

/// Shortest `reconnect_interval` applied, so a refused peer is not dialled in a tight loop.
pub const MIN_RECONNECT: Duration = Duration::from_millis(100);
/// Longest duration applied to any link timing (one year); longer values are clamped.
pub const MAX_TIMING: Duration = Duration::from_secs(365 * 24 * 3600);

/// The `msgc_server` options that time a peer link. All can change at runtime
/// ([`Link::set_timing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTiming {
    /// `connect_timeout` (default 60 s): longest the connect, and then the handshake, may each
    /// take. 0 means no limit.
    pub connect_timeout: Duration,
    /// `reconnect_interval` (default 5 s): wait after a failure before dialling again, with
    /// ±20 % jitter. At least [`MIN_RECONNECT`].
    pub reconnect_interval: Duration,
    /// `keepalive_interval` (default 5 s): a NOOP goes out after this much send silence.
    /// 0 means no keepalives.
    pub keepalive_interval: Duration,
    /// `idle_timeout` (default 30 s): the link is closed when nothing was received for this
    /// long. 0 means never.
    pub idle_timeout: Duration,
}

impl Default for LinkTiming {
    fn default() -> LinkTiming {
        LinkTiming {
            connect_timeout: Duration::from_secs(60),
            reconnect_interval: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl LinkTiming {
    /// The timing as applied: every value at most [`MAX_TIMING`], the reconnect interval at
    /// least [`MIN_RECONNECT`].
    pub fn normalized(self) -> LinkTiming {
        LinkTiming {
            connect_timeout: self.connect_timeout.min(MAX_TIMING),
            reconnect_interval: self.reconnect_interval.clamp(MIN_RECONNECT, MAX_TIMING),
            keepalive_interval: self.keepalive_interval.min(MAX_TIMING),
            idle_timeout: self.idle_timeout.min(MAX_TIMING),
        }
    }
}

/// Where a link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected. A dialling link dials at the next timeout; an accepting one waits.
    Idle,
    /// A connect is in progress.
    Connecting { since: Instant },
    /// Connected; waiting for the remote's WELCOME (we dialled) or HELLO (we accepted).
    Handshaking { since: Instant },
    /// Handshake done: traffic flows.
    Up { since: Instant },
    /// After a failure, waiting to dial again.
    Backoff { until: Instant },
}

impl LinkState {
    /// Short name for logs and status.
    pub fn name(&self) -> &'static str {
        match self {
            LinkState::Idle => "idle",
            LinkState::Connecting { .. } => "connecting",
            LinkState::Handshaking { .. } => "handshaking",
            LinkState::Up { .. } => "up",
            LinkState::Backoff { .. } => "backoff",
        }
    }
}

/// Why a link closed (given to [`Link::handle_closed`], or carried by [`LinkAction::Close`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The connect took longer than `connect_timeout`.
    ConnectTimeout,
    /// The handshake took longer than `connect_timeout`.
    HandshakeTimeout,
    /// Nothing was received for `idle_timeout`.
    IdleTimeout,
    /// The remote closed the connection.
    Eof,
    /// A socket error or failed name resolution (the runtime's text of it).
    Io(String),
    /// The remote sent an ERROR frame (its message).
    RemoteError(String),
    /// The remote broke the protocol (the text of the `ProtoError`).
    Protocol(String),
    /// The handshake was refused.
    Handshake(MeshError),
    /// The outbound queue passed `max_backlog`.
    Stuck,
    /// Closed in favour of another link to the same peer. Not a failure.
    Duplicate,
    /// The server is stopping or the peer left `peers`. Not a failure.
    Shutdown,
}

impl CloseReason {
    /// Whether this close counts as a failure (counter, `last_error`).
    pub fn is_failure(&self) -> bool {
        !matches!(self, CloseReason::Duplicate | CloseReason::Shutdown)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ConnectTimeout => f.write_str("connect took longer than connect_timeout"),
            CloseReason::HandshakeTimeout => {
                f.write_str("handshake took longer than connect_timeout")
            }
            CloseReason::IdleTimeout => f.write_str("nothing received for idle_timeout"),
            CloseReason::Eof => f.write_str("closed by the remote server"),
            CloseReason::Io(e) => write!(f, "socket error: {e}"),
            CloseReason::RemoteError(e) => write!(f, "remote server sent an error: {e}"),
            CloseReason::Protocol(e) => write!(f, "protocol violation by the remote server: {e}"),
            CloseReason::Handshake(e) => write!(f, "handshake refused: {e}"),
            CloseReason::Stuck => f.write_str("outbound queue passed max_backlog"),
            CloseReason::Duplicate => f.write_str("replaced by another link to the same peer"),
            CloseReason::Shutdown => f.write_str("shut down"),
        }
    }
}

/// What the runtime must do for a link, returned by [`Link::handle_timeout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkAction {
    /// Connect to the peer's address (the link is now `Connecting`).
    Dial,
    /// Send a NOOP frame (keepalive).
    SendNoop,
    /// Close the connection. The link has already moved on (to `Backoff` or `Idle`); calling
    /// [`Link::handle_closed`] afterwards is harmless.
    Close(CloseReason),
}

/// A link that completed its handshake: what the runtime needs to start traffic and to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkUp {
    pub peer: PeerId,
    pub origin: Origin,
    /// The remote server's tag for this run (changes when it restarts).
    pub node_tag: NodeTag,
    /// Largest frame the remote accepts.
    pub max_frame: u32,
    pub remote_digest: u64,
    /// The remote's `msgc_server` config digest differs from ours: not an error, but the
    /// runtime logs it loudly (the config must be identical on every node).
    pub digest_mismatch: bool,
}

/// Counters of one link, for status display.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Connects started.
    pub dials: u64,
    /// Handshakes completed.
    pub ups: u64,
    /// Connects, handshakes and links that failed or were lost.
    pub failures: u64,
    /// Why the last failure happened.
    pub last_error: Option<String>,
}

/// One peer link from this server's side. Created for every other entry of the peer table;
/// `dialer` is [`super::PeerTable::dials`] for that pair.
#[derive(Clone, Debug)]
pub struct Link {
    peer: PeerId,
    name: NodeName,
    dialer: bool,
    timing: LinkTiming,
    seed: u64,
    state: LinkState,
    origin: Option<Origin>,
    /// When the link last became `Idle` (a dialler dials at once from there).
    idle_since: Instant,
    /// When the current backoff started, and its number (input of the jitter).
    failed_at: Instant,
    backoffs: u64,
    last_rx: Instant,
    last_tx: Instant,
    stats: LinkStats,
}

impl Link {
    /// A new, idle link to `peer` named `name`. `seed` drives the reconnect jitter: give each
    /// link its own (e.g. this run's node tag mixed with the peer's name) so that links do not
    /// redial in lockstep.
    pub fn new(
        peer: PeerId,
        name: NodeName,
        dialer: bool,
        timing: LinkTiming,
        seed: u64,
        now: Instant,
    ) -> Link {
        Link {
            peer,
            name,
            dialer,
            timing: timing.normalized(),
            seed,
            state: LinkState::Idle,
            origin: None,
            idle_since: now,
            failed_at: now,
            backoffs: 0,
            last_rx: now,
            last_tx: now,
            stats: LinkStats::default(),
        }
    }

    pub fn peer(&self) -> PeerId {
        self.peer
    }
    /// The peer's name as in the table (what its handshake must announce).
    pub fn name(&self) -> &NodeName {
        &self.name
    }
    /// Whether this side dials (and redials) the link.
    pub fn is_dialer(&self) -> bool {
        self.dialer
    }
    pub fn state(&self) -> LinkState {
        self.state
    }
    pub fn is_up(&self) -> bool {
        matches!(self.state, LinkState::Up { .. })
    }
    /// Which end opened the current connection, if there is one.
    pub fn origin(&self) -> Option<Origin> {
        self.origin
    }
    /// The timing in force (normalized).
    pub fn timing(&self) -> LinkTiming {
        self.timing
    }
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }
    /// What [`super::resolve_duplicate`] needs about this link, when it is up.
    pub fn dup_link(&self) -> Option<DupLink> {
        match (self.state, self.origin) {
            (LinkState::Up { since }, Some(origin)) => Some(DupLink {
                origin,
                up_since: since,
            }),
            _ => None,
        }
    }

    /// Applies reloaded timing at once: every deadline, a running backoff included, is
    /// recomputed from the new values.
    pub fn set_timing(&mut self, timing: LinkTiming) {
        self.timing = timing.normalized();
        if let LinkState::Backoff { .. } = self.state {
            self.state = LinkState::Backoff {
                until: self.backoff_until(),
            };
        }
    }

    /// The runtime started a connect on its own (e.g. an operator asked to reconnect now).
    /// After a [`LinkAction::Dial`] this only restarts the connect timer. Ignored while a
    /// connection is handshaking or up.
    pub fn handle_dial_started(&mut self, now: Instant) {
        match self.state {
            LinkState::Idle | LinkState::Backoff { .. } => self.enter_connecting(now),
            LinkState::Connecting { .. } => self.state = LinkState::Connecting { since: now },
            LinkState::Handshaking { .. } | LinkState::Up { .. } => {}
        }
    }

    /// The connect succeeded; the handshake starts (the runtime sends HELLO).
    pub fn handle_connected(&mut self, now: Instant) {
        if let LinkState::Connecting { .. } = self.state {
            self.state = LinkState::Handshaking { since: now };
        }
    }

    /// The peer connected to us (its HELLO is awaited). Returns `false` if this link already
    /// has a connection (connecting, handshaking or up): the runtime then treats the new one
    /// as a second link, settled with [`super::resolve_duplicate`] once both are up.
    pub fn handle_accepted(&mut self, now: Instant) -> bool {
        match self.state {
            LinkState::Idle | LinkState::Backoff { .. } => {
                self.state = LinkState::Handshaking { since: now };
                self.origin = Some(Origin::Accepted);
                true
            }
            _ => false,
        }
    }

    /// The remote's handshake arrived: its WELCOME when we dialled, its HELLO when we
    /// accepted (magic and version were checked by the codec). The remote must be a peer
    /// server announcing the name this link expects (ASCII case-insensitive). A different
    /// config digest is reported in [`LinkUp::digest_mismatch`], not refused.
    ///
    /// On an error from `Handshaking` the link fails at once (counted, `last_error`, backoff)
    /// and the runtime closes the connection; outside `Handshaking` the link is unchanged.
    pub fn handle_welcome(
        &mut self,
        remote: &Handshake,
        my_digest: u64,
        now: Instant,
    ) -> Result<LinkUp, MeshError> {
        if !matches!(self.state, LinkState::Handshaking { .. }) {
            return Err(MeshError::UnexpectedHandshake {
                peer: self.name.to_string(),
                state: self.state.name(),
            });
        }
        let refused = if remote.role != Role::Peer {
            Some(MeshError::NotAPeer {
                peer: self.name.to_string(),
                role: remote.role,
            })
        } else if !self.name.matches(remote.name.as_str()) {
            Some(MeshError::WrongPeer {
                expected: self.name.to_string(),
                got: remote.name.as_str().escape_debug().to_string(),
            })
        } else {
            None
        };
        if let Some(err) = refused {
            self.go_down(now, CloseReason::Handshake(err.clone()));
            return Err(err);
        }
        // invariant: `Handshaking` is entered only with an origin set; the fallback is unused.
        let origin = self.origin.unwrap_or(if self.dialer {
            Origin::Dialed
        } else {
            Origin::Accepted
        });
        self.origin = Some(origin);
        self.state = LinkState::Up { since: now };
        self.last_rx = now;
        self.last_tx = now;
        self.stats.ups += 1;
        Ok(LinkUp {
            peer: self.peer,
            origin,
            node_tag: remote.node_tag,
            max_frame: remote.max_frame,
            remote_digest: remote.digest,
            digest_mismatch: remote.digest != my_digest,
        })
    }

    /// A frame was received (resets the idle timer).
    pub fn handle_rx(&mut self, now: Instant) {
        self.last_rx = self.last_rx.max(now);
    }

    /// A frame was sent (resets the keepalive timer).
    pub fn handle_tx(&mut self, now: Instant) {
        self.last_tx = self.last_tx.max(now);
    }

    /// The connection closed or failed. A dialler backs off (`reconnect_interval` ± 20 %), an
    /// acceptor goes back to `Idle`. Ignored when there is no connection (e.g. after a
    /// [`LinkAction::Close`] the link already moved on).
    pub fn handle_closed(&mut self, now: Instant, reason: CloseReason) {
        match self.state {
            LinkState::Connecting { .. } | LinkState::Handshaking { .. } | LinkState::Up { .. } => {
                self.go_down(now, reason)
            }
            LinkState::Idle | LinkState::Backoff { .. } => {}
        }
    }

    /// Time passed: what is due now (at most one action per call).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<LinkAction> {
        match self.state {
            LinkState::Idle if self.dialer => {
                self.enter_connecting(now);
                vec![LinkAction::Dial]
            }
            LinkState::Backoff { until } if now >= until => {
                self.enter_connecting(now);
                vec![LinkAction::Dial]
            }
            LinkState::Connecting { since } if due(since, self.timing.connect_timeout, now) => {
                self.close(now, CloseReason::ConnectTimeout)
            }
            LinkState::Handshaking { since } if due(since, self.timing.connect_timeout, now) => {
                self.close(now, CloseReason::HandshakeTimeout)
            }
            LinkState::Up { .. } if due(self.last_rx, self.timing.idle_timeout, now) => {
                self.close(now, CloseReason::IdleTimeout)
            }
            LinkState::Up { .. } if due(self.last_tx, self.timing.keepalive_interval, now) => {
                self.last_tx = now;
                vec![LinkAction::SendNoop]
            }
            _ => Vec::new(),
        }
    }

    /// When [`Self::handle_timeout`] has something to do next; `None` if nothing is timed
    /// (an idle acceptor, or limits set to 0).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            LinkState::Idle => self.dialer.then_some(self.idle_since),
            LinkState::Connecting { since } | LinkState::Handshaking { since } => {
                deadline(since, self.timing.connect_timeout)
            }
            LinkState::Up { .. } => {
                let idle = deadline(self.last_rx, self.timing.idle_timeout);
                let keepalive = deadline(self.last_tx, self.timing.keepalive_interval);
                match (idle, keepalive) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            LinkState::Backoff { until } => Some(until),
        }
    }

    fn enter_connecting(&mut self, now: Instant) {
        self.state = LinkState::Connecting { since: now };
        self.origin = Some(Origin::Dialed);
        self.stats.dials += 1;
    }

    fn close(&mut self, now: Instant, reason: CloseReason) -> Vec<LinkAction> {
        self.go_down(now, reason.clone());
        vec![LinkAction::Close(reason)]
    }

    /// Leaves the current connection: counts a failure, then backs off or idles.
    fn go_down(&mut self, now: Instant, reason: CloseReason) {
        if reason.is_failure() {
            self.stats.failures += 1;
            self.stats.last_error = Some(reason.to_string());
        }
        self.origin = None;
        if self.dialer {
            self.failed_at = now;
            self.backoffs += 1;
            self.state = LinkState::Backoff {
                until: self.backoff_until(),
            };
        } else {
            self.idle_since = now;
            self.state = LinkState::Idle;
        }
    }

    fn backoff_until(&self) -> Instant {
        let delay = backoff_delay(self.timing.reconnect_interval, self.seed, self.backoffs);
        // Cannot overflow in practice (delays are capped at MAX_TIMING); if it did, dial
        // again at once rather than panic.
        self.failed_at.checked_add(delay).unwrap_or(self.failed_at)
    }
}

/// The wait before redialling: `interval` ± 20 %, chosen by a hash of `seed` and `attempt`.
/// The same inputs give the same delay; different seeds spread links apart.
pub fn backoff_delay(interval: Duration, seed: u64, attempt: u64) -> Duration {
    let base = interval.as_nanos();
    let span = base / 5;
    if span == 0 {
        return interval;
    }
    let h = u128::from(splitmix64(seed ^ splitmix64(attempt)));
    let nanos = base - span + h % (2 * span + 1);
    // Only a Duration::MAX interval plus jitter exceeds u64 seconds; saturate it.
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder of a division by 10^9 fits in u32.
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

/// SplitMix64 (Steele, Lea, Flood 2014): a fast, well-mixed 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `base + d`, or `None` if `d` is 0 (disabled) or the sum overflows.
fn deadline(base: Instant, d: Duration) -> Option<Instant> {
    if d.is_zero() {
        None
    } else {
        base.checked_add(d)
    }
}

fn due(base: Instant, d: Duration, now: Instant) -> bool {
    deadline(base, d).is_some_and(|t| now >= t)
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
