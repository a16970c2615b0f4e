//! What an operator asks of one shard: a report of its state (connections, sessions and
//! their backlog, links, the groups it owns, counters) and a drain (ask every client to move
//! to another server).
//!
//! Reports are plain data built on request, so the data path keeps no shared state and takes
//! no lock for them. Never does I/O and never reads a clock: `now` is always an argument.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::shard::State;
use super::{ShardCore, Stats};
use crate::proto::{Cause, ErrorCode, ErrorFrame};

/// The message of the ERROR `Draining` a client receives.
pub(super) const DRAINING: &str = "server is draining: reconnect to another server";

/// One shard's state, as an operator sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    pub shard: u16,
    pub stats: Stats,
    /// Connections by state.
    pub handshaking: usize,
    pub clients: usize,
    pub peers: usize,
    pub dialing: usize,
    pub closing: usize,
    /// Outbound bytes queued on this shard, and the `memory_budget` they are held to.
    pub queued_bytes: usize,
    pub memory_budget: usize,
    /// Whether this shard's readers are paused (memory, a slow receiver, another shard).
    pub paused: bool,
    /// An operator drained the server.
    pub draining: bool,
    /// Connections holding publishers back (over a quarter of `max_backlog`).
    pub hot: usize,
    /// Memberships of the sessions on this shard.
    pub local_members: usize,
    /// The longest queue of a client connection on this shard, in messages.
    pub max_client_backlog: usize,
    /// Thread CPU time in seconds (filled in by the runtime, which owns the thread).
    pub cpu_seconds: f64,
    /// Names of the servers in `peers` (lower-cased), as this shard was last told.
    pub peer_names: Vec<String>,
    /// Names of the servers with a link up, on any shard of this server.
    pub links_up: Vec<String>,
    /// The link connections this shard owns.
    pub links: Vec<LinkReport>,
    /// The groups this shard owns (each group has one owner shard per server).
    pub groups: Vec<GroupReport>,
    /// The client sessions on this shard; empty unless asked for.
    pub sessions: Vec<SessionReport>,
    /// Server membership: the installed configuration's epoch and member count, whether
    /// this server orders views in it, and how many servers it reaches (itself included).
    pub epoch: u64,
    pub config_servers: usize,
    pub orders_views: bool,
    pub reachable: usize,
}

/// The state of the link to one other server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Handshake in progress.
    Dialing,
    Up,
    /// Configured, but no connection: being redialed, or waiting for the peer to dial.
    Down,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Dialing => "dialing",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

/// A link to another server, from the shard that owns its connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkReport {
    /// The peer's node name as it announced it (as configured while dialing).
    pub peer: String,
    pub state: LinkState,
    /// The peer's node tag for this run (0 until its handshake is done).
    pub tag: u32,
    pub shard: u16,
    pub queued_messages: usize,
    pub queued_bytes: usize,
    /// Holding publishers back.
    pub hot: bool,
}

/// A group, from its owner shard: the membership as this server knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    pub name: String,
    pub view_id: u64,
    /// Members on every server.
    pub members: usize,
    /// Members whose session is on this server.
    pub local_members: usize,
}

/// A client session and its backlog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionReport {
    /// Shown as `NODETAG:SERIAL`.
    pub session: String,
    pub name: String,
    pub shard: u16,
    /// Groups this session asked to join, sorted.
    pub groups: Vec<String>,
    pub queued_messages: usize,
    pub queued_bytes: usize,
    /// Holding publishers back.
    pub hot: bool,
    /// Seconds since anything was received from it.
    pub idle_seconds: f64,
}

impl ShardCore {
    /// A report of this shard's state; per-session lines only if `sessions`.
    pub fn report(&self, sessions: bool, now: Instant) -> ShardReport {
        let mut r = ShardReport {
            shard: self.id,
            stats: self.stats,
            queued_bytes: self.queued_bytes,
            memory_budget: self.limits.memory_budget,
            paused: self.reading_paused(),
            draining: self.draining,
            hot: self.hot_conns,
            peer_names: self.peer_table.iter().map(|p| p.name.to_lowercase()).collect(),
            links_up: self.links.iter().map(|l| l.name.as_str().to_string()).collect(),
            epoch: self.mesh.config.epoch,
            config_servers: self.mesh.config.members.len(),
            orders_views: self.leader().is_none(),
            reachable: self.mesh.reachable.len(),
            ..ShardReport::default()
        };
        for (_, c) in self.conns.iter() {
            match &c.state {
                // An inbound peer proving who it is counts as a handshake too.
                State::Handshake | State::PeerAuth { .. } => r.handshaking += 1,
                State::Closing => r.closing += 1,
                State::Dialing { expect, .. } => {
                    r.dialing += 1;
                    r.links.push(LinkReport {
                        peer: expect.clone(),
                        state: LinkState::Dialing,
                        tag: 0,
                        shard: self.id,
                        queued_messages: c.outbox.messages(),
                        queued_bytes: c.outbox.bytes(),
                        hot: c.hot,
                    });
                }
                State::Peer => {
                    r.peers += 1;
                    let tag = c.peer.as_ref().map_or(0, |p| p.tag.0);
                    r.links.push(LinkReport {
                        peer: c.name.as_str().to_string(),
                        state: LinkState::Up,
                        tag,
                        shard: self.id,
                        queued_messages: c.outbox.messages(),
                        queued_bytes: c.outbox.bytes(),
                        hot: c.hot,
                    });
                }
                State::Client => {
                    r.clients += 1;
                    r.local_members += c.joined.len();
                    r.max_client_backlog = r.max_client_backlog.max(c.outbox.messages());
                    if sessions {
                        let mut groups: Vec<String> = c.joined.iter().map(|g| g.to_string()).collect();
                        groups.sort();
                        r.sessions.push(SessionReport {
                            session: c.session.to_string(),
                            name: c.name.as_str().to_string(),
                            shard: self.id,
                            groups,
                            queued_messages: c.outbox.messages(),
                            queued_bytes: c.outbox.bytes(),
                            hot: c.hot,
                            idle_seconds: now.saturating_duration_since(c.last_rx).as_secs_f64(),
                        });
                    }
                }
            }
        }
        let me = self.identity.node_tag;
        for name in self.groups.owned_names() {
            let Some(owned) = self.groups.get(name.as_bytes()).and_then(|g| g.owned.as_ref()) else {
                continue;
            };
            if owned.members.is_empty() {
                continue;
            }
            r.groups.push(GroupReport {
                name: name.to_string(),
                view_id: owned.view_id,
                members: owned.members.len(),
                local_members: owned.members.keys().filter(|s| s.node() == me).count(),
            });
        }
        r.groups.sort_by(|a, b| a.name.cmp(&b.name));
        r
    }

    /// Asks every client to move: each gets what is already queued for it, then a fatal
    /// ERROR `Draining`, and its connection closes. Clients that connect from now on are
    /// turned away the same way. Peer links stay up. Returns how many clients were asked.
    pub fn handle_drain(&mut self, now: Instant) -> usize {
        self.draining = true;
        let targets: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Client | State::Handshake))
            .map(|(id, _)| id)
            .collect();
        let frame = ErrorFrame::fatal(ErrorCode::Draining, DRAINING).to_bytes();
        let mut asked = 0;
        for conn in targets {
            if self.conns[conn].state == State::Client {
                asked += 1;
            }
            // Unlike a shutdown, the queue is kept: the client gets everything sent to it
            // before the request to move, so a drain loses nothing.
            let kept = std::mem::take(&mut self.conns[conn].outbox);
            self.queued_bytes -= kept.bytes();
            self.begin_close(conn, Cause::Disconnect, None);
            let added = kept.bytes() + frame.len();
            let c = &mut self.conns[conn];
            c.outbox = kept;
            c.outbox.push(frame.clone(), 1);
            c.closing_since = Some(now);
            self.queued_bytes += added;
        }
        tracing::info!(shard = self.id, asked, "draining: clients asked to move");
        self.update_pressure();
        asked
    }

    /// Whether an operator drained this shard.
    pub fn draining(&self) -> bool {
        self.draining
    }
}
