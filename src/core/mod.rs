//! The sans-io heart of the relay: sessions, groups, views, routing, backlog accounting and
//! timers for one shard.
//!
//! Owns every decision about who receives what. Never touches a socket, a thread or the
//! clock: the runtime feeds it bytes, messages from other shards and `now`, and carries out
//! what it asks (write these slices, wake that writer, cut this socket, send that batch).

mod auth;
mod flow;
mod flush;
mod groups;
mod inbound;
mod limits;
mod links;
mod membership;
mod operator;
mod outbox;
mod relay;
mod shard;
mod survivors;
mod views;

pub use auth::ClusterSecret;
pub use groups::owner_of;
pub use limits::Limits;
pub use membership::{Config, EPOCH_SHIFT};
pub use operator::{GroupReport, LinkReport, LinkState, SessionReport, ShardReport};
pub use outbox::{Outbox, MAX_IOV};
pub use shard::{Flow, ServerIdentity, ShardCore, Take};

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;

use crate::proto::{Cause, GroupName, Member, Name, NodeTag, PeerMark, PeerTopo, SessionId};

/// Index of a connection in its shard's table.
pub type ConnId = usize;

/// What the runtime knows about a new connection before any frame is read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnMeta {
    /// The remote address of the socket.
    pub remote: Option<SocketAddr>,
    /// Set when the connection is TLS: what the verified certificate of the other side says.
    pub tls: Option<TlsPeer>,
}

/// The verified certificate of the other end of a TLS connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPeer {
    /// DNS names (subject alternative names) and common name of the verified certificate;
    /// empty if the other side presented none.
    pub names: Vec<String>,
}

/// One server of the `peers` table as the core checks it: its name, and the addresses an
/// inbound link from it may come from (used when peers are not otherwise authenticated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// Where frames between servers come from and go, as a PEER_RELAY carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub origin: NodeTag,
    pub dest: NodeTag,
    /// Servers that carried them so far.
    pub hops: u8,
    /// A resend after a lost link.
    pub resent: bool,
    /// See [`crate::proto::PeerRelay::passed`].
    pub passed: bool,
    /// For multicasts of the origin's own sessions, the view of their group it had
    /// installed when it sent them (written as a PEER_STAMP before them); 0 for other frames
    /// and for relayed ones, which carry their PEER_STAMP inside.
    pub stamp: u64,
}

/// How a run of multicasts from another server reached this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arrival {
    /// See [`Envelope::resent`].
    pub resent: bool,
    /// See [`Envelope::passed`].
    pub passed: bool,
    /// It came in a PEER_RELAY (not over the direct link from its sender's server, the one
    /// path whose frames arrive in the order they were sent).
    pub relayed: bool,
    /// The view of the group the sending server had installed when it sent the run (its
    /// PEER_STAMP); 0 if none came with it.
    pub stamp: u64,
    /// When it reached this server, the shard it came to had already marked a view newer than
    /// `stamp` whose configuration leaves its server out (`ShardCore::moved_past`): no shard
    /// here delivers it.
    pub superseded: bool,
}

/// A link to another server that is up, as every shard of this server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub tag: NodeTag,
    pub name: Name,
    /// The peer's start time (ms since the epoch), for choosing who orders membership.
    pub boot: u64,
    /// The shard that owns the link's connection, and the connection there.
    pub shard: u16,
    pub conn: ConnId,
}

/// A message from one shard to another (carried in batches, `Vec<ShardMsg>`).
#[derive(Debug, Clone)]
pub enum ShardMsg {
    /// A run of `count` MCAST frames to `group`, to be fanned out to local members
    /// (`arrival`: for a run from another server, how it came).
    Deliver {
        from: u16,
        group: GroupName,
        frames: Bytes,
        count: u32,
        arrival: Arrival,
    },
    /// To the shard owning the link to `tag`: queue these frames on it (in a PEER_RELAY
    /// unless they are this server's for `tag` itself).
    Forward {
        from: u16,
        envelope: Envelope,
        tag: NodeTag,
        conn: ConnId,
        frames: Bytes,
        count: u32,
    },
    /// Back to a shard that sent Deliver/Forward: this many of its bytes were handled.
    Credit {
        from: u16,
        bytes: usize,
    },
    /// To the group's owner shard: a member joins (or, `Network`, is reported by a sync).
    /// `via` is the server it came from; `version` its shard's membership version
    /// (`proto::MemberVersion`).
    Join {
        group: GroupName,
        member: Member,
        cause: Cause,
        via: Option<NodeTag>,
        version: u64,
    },
    /// To the group's owner shard: a member leaves or is gone.
    Leave {
        group: GroupName,
        session: SessionId,
        cause: Cause,
        via: Option<NodeTag>,
        version: u64,
    },
    /// To every shard: a new view, encoded once. `leaver` also gets it (its last view).
    View {
        group: GroupName,
        frame: Bytes,
        view_id: u64,
        members: Arc<[Member]>,
        leaver: Option<SessionId>,
    },
    /// To every shard: shard `mark.shard` of server `origin` routes `mark.group` by a new
    /// view (see `flush.rs`). Between shards of one server, `ends` is empty: the channel
    /// keeps order.
    Mark {
        origin: NodeTag,
        mark: Arc<PeerMark>,
    },
    /// To the group's owner shard: a linked server has seen views of `group` up to this id.
    ViewId {
        group: GroupName,
        view_id: u64,
        digest: u64,
    },
    LinkUp(LinkInfo),
    /// A newer PEER_TOPO of another server (server membership).
    Topo(Arc<PeerTopo>),
    /// A configuration to install (server membership).
    Config(Arc<Config>),
    LinkDown {
        tag: NodeTag,
    },
    /// A linked server finished sending the state of its sessions `serial % shards ==
    /// shard`; `synced` are the memberships it announced for them.
    SyncDone {
        tag: NodeTag,
        shard: u16,
        shards: u16,
        version: u64,
        synced: Arc<HashSet<(GroupName, SessionId)>>,
    },
    /// A shard starts or stops holding publishers back (`over`), or having a client over
    /// its high-water mark (`clients_hot`, which also holds back reading links).
    Pressure {
        from: u16,
        over: bool,
        clients_hot: bool,
    },
}

/// Counters of one shard; every limit crossing has one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub accepted: u64,
    pub closed: u64,
    pub msgs_in: u64,
    /// Bytes of whole frames read from clients and peers.
    pub bytes_in: u64,
    pub runs_in: u64,
    pub deliveries: u64,
    pub bytes_out: u64,
    pub views: u64,
    pub protocol_errors: u64,
    pub killed_stuck: u64,
    pub killed_idle: u64,
    pub pauses: u64,
    pub links_up: u64,
    pub links_down: u64,
    pub digest_mismatches: u64,
    pub gaps: u64,
    /// Peer frames refused: forged or out-of-range input, VIEWs from a server that does not
    /// order membership here, requests for sessions of another server.
    pub peer_violations: u64,
    /// Inbound peer handshakes refused (certificate, address or cluster secret).
    pub auth_failures: u64,
    /// Requests refused at a configured bound (connections, handshakes, groups, members).
    pub limit_refusals: u64,
    /// Connections closed for not completing their handshake within `handshake_timeout`.
    pub killed_handshake: u64,
    /// Peer links closed because nothing arrived on them for `link_timeout`.
    pub links_timed_out: u64,
    /// Multicasts sent again by another path after a link was lost.
    pub resent: u64,
    /// Multicasts dropped from a full resend buffer before they were acknowledged.
    pub resend_evicted: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.accepted += o.accepted;
        self.closed += o.closed;
        self.msgs_in += o.msgs_in;
        self.bytes_in += o.bytes_in;
        self.runs_in += o.runs_in;
        self.deliveries += o.deliveries;
        self.bytes_out += o.bytes_out;
        self.views += o.views;
        self.protocol_errors += o.protocol_errors;
        self.killed_stuck += o.killed_stuck;
        self.killed_idle += o.killed_idle;
        self.pauses += o.pauses;
        self.links_up += o.links_up;
        self.links_down += o.links_down;
        self.digest_mismatches += o.digest_mismatches;
        self.gaps += o.gaps;
        self.peer_violations += o.peer_violations;
        self.auth_failures += o.auth_failures;
        self.limit_refusals += o.limit_refusals;
        self.killed_handshake += o.killed_handshake;
        self.links_timed_out += o.links_timed_out;
        self.resent += o.resent;
        self.resend_evicted += o.resend_evicted;
    }
}
