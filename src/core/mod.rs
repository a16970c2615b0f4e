//! The sans-io heart of the relay: sessions, groups, views, routing, backlog accounting and
//! timers for one shard.
//!
//! Owns every decision about who receives what. Never touches a socket, a thread or the
//! clock: the runtime feeds it bytes, messages from other shards and `now`, and carries out
//! what it asks (write these slices, wake that writer, cut this socket, send that batch).

mod groups;
mod limits;
mod outbox;
mod shard;

pub use groups::{owner_of, MemberInfo};
pub use limits::Limits;
pub use outbox::{Outbox, MAX_IOV};
pub use shard::{Flow, ServerIdentity, ShardCore, Take};

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::{Cause, GroupName, SessionId};

/// Index of a connection in its shard's table.
pub type ConnId = usize;

/// A message from one shard to another (carried in batches, `Vec<ShardMsg>`).
#[derive(Debug, Clone)]
pub enum ShardMsg {
    /// A run of `count` MCAST frames to `group`, to be fanned out to local members.
    Deliver {
        group: GroupName,
        frames: Bytes,
        count: u32,
    },
    /// To the group's owner: a member joins.
    Join {
        group: GroupName,
        member: MemberInfo,
    },
    /// To the group's owner: a member leaves; `notify` is the leaver's shard if it should
    /// get the resulting view (an explicit leave), `None` if it is gone.
    Leave {
        group: GroupName,
        session: SessionId,
        cause: Cause,
        notify: Option<u16>,
    },
    /// From the group's owner to every shard: the new view, encoded once.
    View {
        group: GroupName,
        frame: Bytes,
        members: Arc<[MemberInfo]>,
        leaver: Option<(SessionId, u16)>,
    },
    /// A shard starts or stops holding publishers back.
    Pressure { from: u16, over: bool },
}

/// Counters of one shard; every limit crossing has one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    pub closed: u64,
    pub msgs_in: u64,
    pub runs_in: u64,
    pub deliveries: u64,
    pub bytes_out: u64,
    pub views: u64,
    pub protocol_errors: u64,
    pub killed_stuck: u64,
    pub killed_idle: u64,
    pub pauses: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.accepted += o.accepted;
        self.closed += o.closed;
        self.msgs_in += o.msgs_in;
        self.runs_in += o.runs_in;
        self.deliveries += o.deliveries;
        self.bytes_out += o.bytes_out;
        self.views += o.views;
        self.protocol_errors += o.protocol_errors;
        self.killed_stuck += o.killed_stuck;
        self.killed_idle += o.killed_idle;
        self.pauses += o.pauses;
    }
}

#[cfg(test)]
mod tests;
