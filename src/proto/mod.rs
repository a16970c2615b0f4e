//! The msgc wire protocol, version 1 (see `docs/protocol.md`): frame types and a resumable codec.
//!
//! Owns the byte layout of every frame. Never does I/O, never reads a clock, never panics on
//! input: every length is checked before it is used or allocated.

mod codec;
mod ids;

pub use codec::{
    decode, encode_mcast, encode_mcast_parts, frame_len, parse_whole, relay_header, McastHeader,
    MAX_ERROR_MESSAGE, MAX_NEIGHBORS, MCAST_FIXED,
};
pub use ids::{GroupName, Name, NodeTag, SessionId, MAX_GROUP_LEN, MAX_NAME_LEN};

use bytes::Bytes;

/// Protocol version spoken by this implementation with clients.
pub const VERSION: u16 = 1;
/// Version of the server-to-server protocol: 2 added server membership (PEER_TOPO,
/// PEER_CONFIG), relaying, acknowledgements and membership versions; 3 added PEER_STAMP.
/// Servers of an older version are refused with a message that says so.
pub const PEER_VERSION: u16 = 3;
/// The handshake magic, `MSGC`.
pub const MAGIC: [u8; 4] = *b"MSGC";
/// Bytes of the common header: length (4), kind (1), flags (1).
pub const HEADER_LEN: usize = 6;
/// Smallest legal `max_frame_size`.
pub const MIN_MAX_FRAME: usize = 4096;
/// Largest legal `max_frame_size` (64 MiB).
pub const MAX_MAX_FRAME: usize = 64 << 20;
/// Default `max_frame_size` (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Most bytes one member adds to a VIEW: session id, name length, a 255-byte name.
pub const MEMBER_MAX_LEN: usize = 8 + 1 + MAX_NAME_LEN;

/// Frame kinds (byte 4 of every frame).
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const JOIN: u8 = 0x03;
    pub const LEAVE: u8 = 0x04;
    pub const NOOP: u8 = 0x05;
    pub const ERROR: u8 = 0x06;
    pub const MCAST: u8 = 0x10;
    pub const VIEW: u8 = 0x11;
    pub const GAP: u8 = 0x12;
    /// First kind reserved for the server mesh.
    pub const PEER_FIRST: u8 = 0x40;
    pub const PEER_JOIN: u8 = 0x41;
    pub const PEER_LEAVE: u8 = 0x42;
    pub const PEER_STATE: u8 = 0x43;
    /// Peer handshake with a cluster secret: the acceptor's nonce.
    pub const PEER_CHALLENGE: u8 = 0x44;
    /// Peer handshake with a cluster secret: a nonce and an HMAC proving the secret.
    pub const PEER_PROOF: u8 = 0x45;
    /// Server membership: one server's links, epoch and leader, flooded over the mesh.
    pub const PEER_TOPO: u8 = 0x46;
    /// Server membership: the ordering server announces a configuration (epoch, members).
    pub const PEER_CONFIG: u8 = 0x47;
    /// Bytes of a link received so far, so the sender can drop them from its resend buffer.
    pub const PEER_ACK: u8 = 0x48;
    /// Frames from one server to another, carried by a third while their link is down.
    pub const PEER_RELAY: u8 = 0x49;
    /// The view of a group its sending server had installed when it sent the multicasts
    /// that follow on the link (or in the same PEER_RELAY).
    pub const PEER_STAMP: u8 = 0x4a;
    /// One shard of a server moved to a new view of a group: where its senders' multicasts
    /// under the views before it end (the flush before a view is delivered).
    pub const PEER_MARK: u8 = 0x4b;
    /// Last kind reserved for the server mesh.
    pub const PEER_LAST: u8 = 0x4f;
}

/// Flag bit of an ERROR frame: the sender closes the connection after it.
pub const ERROR_FATAL: u8 = 0x01;
/// Flag bit of a PEER_STATE frame: more PEER_STATE frames of the same part follow.
pub const STATE_MORE: u8 = 0x01;
/// Bytes of a nonce and of an HMAC-SHA256 in the peer authentication frames.
pub const AUTH_LEN: usize = 32;

/// Who is on the other end of a connection, as announced in HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client = 1,
    Peer = 2,
}

/// HELLO and WELCOME (same layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub version: u16,
    pub role: Role,
    /// WELCOME to a client: its session id. Otherwise 0.
    pub id: SessionId,
    /// Config digest (peers and server replies), else 0.
    pub digest: u64,
    pub node_tag: NodeTag,
    /// Largest frame the sender accepts.
    pub max_frame: u32,
    pub name: Name,
}

impl Handshake {
    /// A client's HELLO: version 1, no id, digest or tag.
    pub fn client(name: Name, max_frame: u32) -> Handshake {
        Handshake {
            version: VERSION,
            role: Role::Client,
            id: SessionId::NONE,
            digest: 0,
            node_tag: NodeTag(0),
            max_frame,
            name,
        }
    }
}

/// Why a membership view changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    Join = 1,
    Leave = 2,
    Disconnect = 3,
    Network = 4,
}

/// A member as listed in a view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub session: SessionId,
    pub name: Name,
}

/// A membership view of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub cause: Cause,
    pub group: GroupName,
    pub view_id: u64,
    /// Reserved for agreed ordering; 0 in version 1.
    pub group_seq: u64,
    /// The session that joined, left or disconnected; NONE for Network.
    pub subject: SessionId,
    /// Ascending by session id.
    pub members: Vec<Member>,
}

/// Why messages may be missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GapReason {
    LinkLost = 1,
    Reconnected = 2,
    ServerLost = 3,
}

/// Messages `first..=last` from `sender` to `group` may never arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub reason: GapReason,
    pub group: GroupName,
    /// NONE = any sender.
    pub sender: SessionId,
    pub first: u64,
    /// `u64::MAX` = end unknown.
    pub last: u64,
}

/// ERROR codes (docs/protocol.md section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Malformed = 1,
    UnknownKind = 2,
    TooLarge = 3,
    BadHandshake = 4,
    Unexpected = 5,
    BadGroup = 6,
    BadSender = 7,
    BadSequence = 8,
    AlreadyMember = 9,
    NotMember = 10,
    Stuck = 11,
    IdleTimeout = 12,
    ShuttingDown = 13,
    /// A configured bound was reached (connections, groups per session, members per group).
    LimitReached = 14,
    /// The handshake did not complete within the handshake timeout.
    HandshakeTimeout = 15,
    /// A peer could not prove it is the configured server it claims to be.
    NotAuthorized = 16,
    /// The server is draining (an operator's `msgc-ctl drain`): reconnect to another server.
    Draining = 17,
    /// A code this version does not know (kept so an old client can show it).
    Other = 0xffff,
}

/// An ERROR frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub fatal: bool,
    pub message: String,
}

/// A multicast (client → server) or a delivery (server → client): the same frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mcast {
    pub sender: SessionId,
    pub seq: u64,
    /// Reserved for agreed order; 0 in version 1.
    pub order: u64,
    pub group: GroupName,
    pub payload: Bytes,
}

/// Between servers: a member joined (or, after a link came up, is a member).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerJoin {
    pub cause: Cause,
    pub group: GroupName,
    pub member: Member,
    /// The sending shard's membership version (see [`MemberVersion`]).
    pub version: u64,
}

/// Orders a server's membership messages to the ordering server whatever path each took:
/// the sending shard in the top 16 bits, a count of its sessions' joins and leaves below.
/// A message older than one already applied from the same shard is stale.
pub struct MemberVersion;

impl MemberVersion {
    pub fn pack(shard: u16, count: u64) -> u64 {
        (u64::from(shard) << 48) | (count & ((1 << 48) - 1))
    }
    pub fn shard(v: u64) -> u16 {
        (v >> 48) as u16
    }
    pub fn count(v: u64) -> u64 {
        v & ((1 << 48) - 1)
    }
}

/// Between servers: a member left or is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLeave {
    pub cause: Cause,
    pub group: GroupName,
    pub session: SessionId,
    /// The sending shard's membership version.
    pub version: u64,
}

/// Between servers, once per shard after that shard's PEER_JOINs of a link's state sync:
/// the sync of sessions `serial % shards == shard` is complete (members of theirs not in it
/// are gone), and the sender's newest view id of every group it keeps a replica of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub shard: u16,
    pub shards: u16,
    /// More PEER_STATE frames of this part follow (a large state is split so that every
    /// frame fits `max_frame_size`); the part is complete with the frame without it.
    pub more: bool,
    /// The sending shard's membership version when it took this state.
    pub version: u64,
    /// Per group: the newest view id and a digest of that view's member list.
    pub views: Vec<(GroupName, u64, u64)>,
}

/// Between servers, during the handshake when a cluster secret is configured: the
/// acceptor's challenge (`mac` all zero), or a side's proof of the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuth {
    pub nonce: [u8; AUTH_LEN],
    pub mac: [u8; AUTH_LEN],
}

/// Between servers, flooded over every link: what one server links to, and the
/// configuration it has installed. Newer `version`s of the same `origin` replace older ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTopo {
    pub origin: NodeTag,
    pub version: u64,
    /// The origin's start time (ms since the epoch): who orders membership.
    pub boot: u64,
    /// The highest configuration epoch the origin has installed, and that configuration's
    /// ordering server.
    pub epoch: u64,
    pub leader: NodeTag,
    pub name: Name,
    /// Servers the origin has a link up to, ascending.
    pub neighbors: Vec<NodeTag>,
}

/// Between servers: the ordering server announces configuration `epoch` with `members`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub leader: NodeTag,
    pub epoch: u64,
    /// Ascending.
    pub members: Vec<NodeTag>,
}

/// Between servers: frames of `origin` for `dest`, carried by a server linked to both while
/// their own link is down. `frames` are whole frames, as the origin would have sent them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRelay {
    pub origin: NodeTag,
    pub dest: NodeTag,
    /// Servers that carried it so far (a bound against loops while routes change).
    pub hops: u8,
    /// Sent again after a link was lost (flag `RELAY_RESENT`): a receiver that had no
    /// members of the group before takes no new starting point from it.
    pub resent: bool,
    /// A lost server's multicasts that a survivor passes on (flag `RELAY_PASSED`, with
    /// `RELAY_RESENT`): not sent by `origin` itself.
    pub passed: bool,
    pub frames: Bytes,
}

/// Flag bit of a PEER_RELAY frame: its frames are a resend (see [`PeerRelay::resent`]).
pub const RELAY_RESENT: u8 = 0x01;
/// Flag bit of a PEER_RELAY frame: a survivor passes them on (see [`PeerRelay::passed`]).
pub const RELAY_PASSED: u8 = 0x02;

/// Bytes of a PEER_RELAY frame before the frames it carries.
pub const RELAY_HEADER: usize = HEADER_LEN + 9;

/// Between servers: the multicasts to `group` that follow (on the link, or in the same
/// PEER_RELAY) were sent while their server had view `view_id` of the group installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStamp {
    pub group: GroupName,
    pub view_id: u64,
}

/// Between servers: shard `shard` (of `shards`) of the sending server routes `group` by
/// view `view_id` from now on; `ends` lists, for each of its sessions that multicast to the
/// group since its previous mark, the last sequence number sent and the view it was sent
/// under. `prev` is the view of the previous mark that shard sent to the receiving server
/// for the group (0: none), so that marks that overtake one another are applied in order.
/// `more`: further marks of the same view follow with more senders (flag `MARK_MORE`).
/// `lost`: the ends are not the sending server's sessions but those of servers it can no
/// longer reach, each with the last number it delivered (flag `MARK_LOST`; such a mark
/// always has `more` set, the mark of the shard's own senders follows).
/// `ask`: not a mark but a question (flag `MARK_ASK`, nothing else set, no ends): the sending
/// shard waits to deliver `view_id` and asks each shard here what it delivered, in view
/// `prev` (the one installed there), of the senders of servers it can no longer reach.
/// `answer`: the reply (flag `MARK_ANSWER`, `view_id` and `prev` as asked, `more` while
/// further replies follow): its ends are such senders, each with the lowest (`first`) and
/// highest number delivered in `prev`, stamped `prev`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMark {
    pub group: GroupName,
    pub view_id: u64,
    pub prev: u64,
    pub shard: u16,
    pub shards: u16,
    pub more: bool,
    pub lost: bool,
    pub ask: bool,
    pub answer: bool,
    pub ends: Vec<SenderEnd>,
}

/// A sender's multicasts to a group between two marks: the first and last sequence numbers
/// and the view they were sent under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderEnd {
    pub sender: SessionId,
    pub first: u64,
    pub seq: u64,
    pub stamp: u64,
}

/// Flag bit of a PEER_MARK frame: more marks of the same view follow.
pub const MARK_MORE: u8 = 0x01;
/// Flag bit of a PEER_MARK frame: its ends are of senders of lost servers.
pub const MARK_LOST: u8 = 0x02;
/// Flag bit of a PEER_MARK frame: a question about lost servers' senders (see `PeerMark`).
pub const MARK_ASK: u8 = 0x04;
/// Flag bit of a PEER_MARK frame: the reply to a `MARK_ASK`.
pub const MARK_ANSWER: u8 = 0x08;
/// Bytes of a PEER_MARK before its group name, and per sender listed.
pub const MARK_FIXED: usize = HEADER_LEN + 21;
pub const MARK_END_LEN: usize = 32;

/// Every frame of version 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Handshake),
    Welcome(Handshake),
    Join(GroupName),
    Leave(GroupName),
    Noop,
    Error(ErrorFrame),
    Mcast(Mcast),
    View(View),
    Gap(Gap),
    PeerJoin(PeerJoin),
    PeerLeave(PeerLeave),
    PeerState(PeerState),
    PeerChallenge(PeerAuth),
    PeerProof(PeerAuth),
    PeerTopo(PeerTopo),
    PeerConfig(PeerConfig),
    /// Bytes of this link received so far (counted from the end of its handshake).
    PeerAck(u64),
    PeerRelay(PeerRelay),
    PeerStamp(PeerStamp),
    PeerMark(PeerMark),
}

/// A protocol violation by the remote side. Maps onto the ERROR code sent before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("frame length {0} is below the 2-byte minimum")]
    TooShort(u32),
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("bad handshake: {0}")]
    BadHandshake(&'static str),
    #[error("group name is empty, longer than 255 bytes or not UTF-8")]
    BadGroup,
}

impl ProtoError {
    /// The ERROR code that reports this violation to the remote side.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::TooLarge { .. } => ErrorCode::TooLarge,
            ProtoError::TooShort(_) | ProtoError::Malformed(_) => ErrorCode::Malformed,
            ProtoError::UnknownKind(_) => ErrorCode::UnknownKind,
            ProtoError::BadHandshake(_) => ErrorCode::BadHandshake,
            ProtoError::BadGroup => ErrorCode::BadGroup,
        }
    }
}

impl Frame {
    /// The frame kind's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "HELLO",
            Frame::Welcome(_) => "WELCOME",
            Frame::Join(_) => "JOIN",
            Frame::Leave(_) => "LEAVE",
            Frame::Noop => "NOOP",
            Frame::Error(_) => "ERROR",
            Frame::Mcast(_) => "MCAST",
            Frame::View(_) => "VIEW",
            Frame::Gap(_) => "GAP",
            Frame::PeerJoin(_) => "PEER_JOIN",
            Frame::PeerLeave(_) => "PEER_LEAVE",
            Frame::PeerState(_) => "PEER_STATE",
            Frame::PeerChallenge(_) => "PEER_CHALLENGE",
            Frame::PeerProof(_) => "PEER_PROOF",
            Frame::PeerTopo(_) => "PEER_TOPO",
            Frame::PeerConfig(_) => "PEER_CONFIG",
            Frame::PeerAck(_) => "PEER_ACK",
            Frame::PeerRelay(_) => "PEER_RELAY",
            Frame::PeerStamp(_) => "PEER_STAMP",
            Frame::PeerMark(_) => "PEER_MARK",
        }
    }

    /// Appends this frame's bytes to `dst`.
    pub fn encode(&self, dst: &mut bytes::BytesMut) {
        codec::encode(self, dst)
    }
    /// This frame as a standalone `Bytes`.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = bytes::BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }
}

impl ErrorFrame {
    pub fn fatal(code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error(ErrorFrame { code, fatal: true, message: message.into() })
    }
    pub fn warn(code: ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error(ErrorFrame { code, fatal: false, message: message.into() })
    }
}
