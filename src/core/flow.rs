//! Flow control and timers of one shard: backlog limits and stuck connections, the
//! pressure that pauses publishers (memory, slow receivers, other shards' credit), and the
//! periodic tick (keepalives, idle and stall detection, closing connections).
//!
//! Never does I/O and never reads a clock: `now` is always an argument.

use std::time::Instant;

use super::shard::{State, CLOSE_GRACE};
use super::{ConnId, ShardCore, ShardMsg};
use crate::proto::{Cause, ErrorCode, Frame};

impl ShardCore {
    /// Applies backlog limits to the connections whose queues crossed the high-water mark
    /// during a fan-out, then re-evaluates pressure.
    pub(super) fn check_crossed(&mut self) {
        while let Some(conn) = self.crossed.pop() {
            self.check_backlog(conn);
        }
        self.update_pressure();
    }

    /// Applies `max_backlog` and the high-water mark after `conn`'s queue grew.
    ///
    /// Passing `max_backlog` kills a client at the next tick unless the writer made progress
    /// since the previous one: a burst already in flight when publishers were paused (up to
    /// the credit of another shard, or one large read) may overshoot briefly without the
    /// receiver being stuck. Far beyond it (4×) a client is killed at once. A peer link is
    /// never killed for its backlog: saturation between live servers is not a fault, it
    /// holds publishers back (see `handle_timeout` for a link that stops reading).
    pub(super) fn check_backlog(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        let queued = c.outbox.messages();
        if c.state != State::Peer && queued > self.limits.max_backlog.saturating_mul(4) {
            let why = format!("{queued} messages queued, far over max_backlog {}", self.limits.max_backlog);
            self.kill_stuck(conn, why);
        } else if !c.hot && queued > self.limits.high_water() {
            tracing::trace!(shard = self.id, conn, queued, "over high water");
            c.hot = true;
            self.hot_conns += 1;
            if c.state == State::Client {
                self.hot_clients += 1;
            }
        }
    }

    /// Kills a connection that cannot keep up: its queue is dropped and its socket cut.
    pub(super) fn kill_stuck(&mut self, conn: ConnId, why: String) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        if c.state == State::Closing {
            return;
        }
        match &c.peer {
            Some(p) => tracing::error!(peer = %p.name, "killing stuck peer link: {why}"),
            None => tracing::warn!(session = %c.session, name = %c.name, "killing stuck connection: {why}"),
        }
        self.stats.killed_stuck += 1;
        self.begin_close(conn, Cause::Disconnect, None);
        self.cut.push(conn);
    }

    /// Bytes another shard may have in flight to this one before its publishers pause.
    pub(super) fn flight_limit(&self) -> usize {
        2 * self.limits.tcpbuf_size
    }

    /// Counts traffic received from another shard, to be credited back.
    pub(super) fn owe_credit(&mut self, from: u16, bytes: usize) {
        if from != self.id {
            if let Some(due) = self.credit_due.get_mut(from as usize) {
                *due += bytes;
            }
        }
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        now + self.limits.tick()
    }

    /// Keepalives, idle and stall detection, and cutting connections that would not close.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = Some(now);
        let l = self.limits.clone();
        // Silence we cause ourselves by not reading is no sign of a lost link.
        let not_reading_links = self.links_paused();
        let mut silent = Vec::new();
        let mut heartbeats = Vec::new();
        let mut idle = Vec::new();
        let mut stalled = Vec::new();
        let mut keepalive = Vec::new();
        let mut over_backlog = Vec::new();
        let mut handshakes = Vec::new();
        let mut dead_links = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            // When it started holding publishers back (noted at tick granularity).
            c.hot_since = if c.hot { Some(c.hot_since.unwrap_or(now)) } else { None };
            match c.state {
                State::Closing => {
                    let since = *c.closing_since.get_or_insert(now);
                    if now.duration_since(since) >= CLOSE_GRACE {
                        self.cut.push(id);
                    }
                }
                ref s if Self::in_handshake(s) && now.duration_since(c.opened) >= l.handshake_timeout => {
                    handshakes.push(id)
                }
                State::Peer => {
                    // A live server always reads its links; one that takes nothing for two
                    // keepalive intervals is hung, not saturated.
                    if !c.outbox.is_empty() && now.duration_since(c.last_progress) >= l.dead_link() {
                        dead_links.push(id);
                    } else if not_reading_links {
                        c.last_rx = now;
                    } else if now.duration_since(c.last_rx) >= l.link_timeout {
                        silent.push(id);
                    }
                    // The heartbeat goes out whatever this side is doing with its reads.
                    if c.outbox.is_empty() && now.duration_since(c.last_tx) >= l.link_heartbeat() {
                        heartbeats.push(id);
                    }
                }
                _ if now.duration_since(c.last_rx) >= l.idle_timeout => idle.push(id),
                State::Client
                    if c.outbox.messages() > l.max_backlog
                        && now.duration_since(c.last_progress) >= l.tick() =>
                {
                    over_backlog.push(id)
                }
                // Fast receivers are held to a slow one's pace for a bounded time only.
                State::Client if c.hot_since.is_some_and(|t| now.duration_since(t) >= l.stall_timeout) => {
                    stalled.push(id)
                }
                State::Client
                    if c.outbox.is_empty() && now.duration_since(c.last_tx) >= l.keepalive_interval =>
                {
                    keepalive.push(id)
                }
                _ => {}
            }
        }
        for id in idle {
            self.stats.killed_idle += 1;
            let secs = l.idle_timeout.as_secs_f64();
            self.fatal(
                id,
                ErrorCode::IdleTimeout,
                format!("nothing received for {secs}s (idle_timeout)"),
                now,
            );
        }
        for id in handshakes {
            self.stats.killed_handshake += 1;
            let secs = l.handshake_timeout.as_secs_f64();
            let msg = format!("handshake not completed within {secs}s (handshake_timeout)");
            self.fatal(id, ErrorCode::HandshakeTimeout, msg, now);
        }
        for id in dead_links {
            let queued = self.conns[id].outbox.messages();
            let why = format!("no write progress for {:?} with {queued} messages queued", l.dead_link());
            self.kill_stuck(id, why);
        }
        for id in over_backlog {
            let queued = self.conns[id].outbox.messages();
            self.kill_stuck(id, format!("{queued} messages queued, over max_backlog {}", l.max_backlog));
        }
        for id in stalled {
            let queued = self.conns[id].outbox.messages();
            self.kill_stuck(
                id,
                format!("no write progress for {:?} with {queued} messages queued", l.stall_timeout),
            );
        }
        for id in keepalive {
            self.conns[id].last_tx = now;
            self.send_frame(id, Frame::Noop.to_bytes());
        }
        for id in heartbeats {
            self.conns[id].last_tx = now;
            self.send_ack(id);
        }
        for id in silent {
            self.stats.links_timed_out += 1;
            tracing::warn!(peer = %self.conns[id].name, timeout = ?l.link_timeout, "nothing received on the peer link for link_timeout: closing it");
            self.begin_close(id, Cause::Disconnect, None);
            self.cut.push(id);
        }
        self.expire_held(now);
        self.expire_sync_wait(now);
        self.resend_config(now);
        // Memory over budget for too long: the largest queue is what holds everyone back.
        if self.queued_bytes > l.memory_budget {
            let since = *self.over_since.get_or_insert(now);
            if now.duration_since(since) >= l.stall_timeout {
                let largest = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.state == State::Client)
                    .max_by_key(|(_, c)| c.outbox.bytes())
                    .map(|(id, _)| id);
                if let Some(id) = largest {
                    let why = format!(
                        "shard over its memory budget of {} bytes for {:?}; largest queue",
                        l.memory_budget, l.stall_timeout
                    );
                    self.kill_stuck(id, why);
                }
                self.over_since = Some(now);
            }
        } else {
            self.over_since = None;
        }
        self.update_pressure();
    }

    /// Re-evaluates whether this shard holds publishers back, with hysteresis, and tells the
    /// other shards when that changes.
    pub(super) fn update_pressure(&mut self) {
        let budget = self.limits.memory_budget;
        let limit = if self.over { budget / 4 * 3 } else { budget };
        let over = self.hot_conns > 0 || self.queued_bytes > limit;
        let clients_hot = self.hot_clients > 0;
        if over == self.over && clients_hot == self.clients_hot {
            return;
        }
        let before = self.paused();
        let was_over = self.over;
        (self.over, self.clients_hot) = (over, clients_hot);
        if over && !was_over {
            self.stats.pauses += 1;
            tracing::debug!(
                shard = self.id,
                queued = self.queued_bytes,
                hot = self.hot_conns,
                "pausing publishers"
            );
        } else if was_over && !over {
            tracing::debug!(shard = self.id, "releasing publishers");
        }
        self.wake_if_relaxed(before);
        for s in 0..self.nshards {
            if s != self.id {
                self.outgoing[s as usize].push(ShardMsg::Pressure { from: self.id, over, clients_hot });
            }
        }
    }
}
