//! The mesh between servers, sans-io: the peer table built from the config's `peers`, which
//! entry is this server, who dials whom, which link survives when a pair has two, what a
//! config reload changes, and the state machine of each peer link.
//!
//! Owns every decision about peer links. Never does I/O: no sockets, no threads, no name
//! resolution, no reading of the host name or interfaces, no clock reads (`now` is always an
//! argument) and no randomness (reconnect jitter derives from a seed passed in). The runtime
//! gathers the facts ([`SelfHint`]), dials and accepts, reads and writes, and feeds the
//! results in through `handle_*` calls; it carries out the [`LinkAction`]s it gets back and
//! sleeps until [`Link::poll_timeout`].

mod dial;
mod diff;
mod link;
mod name;
mod peers;

pub use dial::{resolve_duplicate, should_dial, DupLink, Keep, Origin};
pub use diff::{diff, PeerDiff};
pub use link::{
    backoff_delay, CloseReason, Link, LinkAction, LinkState, LinkStats, LinkTiming, LinkUp,
    MAX_TIMING, MIN_RECONNECT,
};
pub use name::NodeName;
pub use peers::{PeerAddr, PeerId, PeerTable, SelfHint};

use crate::proto::Role;

/// Whose fault a [`MeshError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The config (`peers`, `port`, `--node`), on this server or on the remote one: an
    /// operator must fix it; retrying will not help.
    Config,
    /// The remote server broke the protocol; the link is closed and redialled.
    Remote,
}

/// Errors of the mesh layer. [`MeshError::fault`] says who must act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    #[error("peer name `{name}` is not usable: {reason}")]
    BadNodeName { name: String, reason: &'static str },
    #[error("address `{addr}` of peer `{node}` is not usable: {reason}")]
    BadAddress {
        node: String,
        addr: String,
        reason: &'static str,
    },
    #[error(
        "`peers` lists the same server twice, as `{first}` and as `{second}` \
         (node names are compared without regard to case)"
    )]
    DuplicateName { first: String, second: String },
    #[error("peers `{first}` and `{second}` have the same address ({addr})")]
    DuplicateAddress {
        addr: String,
        first: String,
        second: String,
    },
    #[error("`peers` has {count} entries; at most 65535 are supported")]
    TooManyPeers { count: usize },
    /// No entry of `peers` is this server. `candidates` are the entries as `name = address`;
    /// `looked_for` the host names and addresses tried (empty when `--node` was given).
    #[error("{}", no_self(.node, .looked_for, .candidates))]
    NoSelf {
        node: Option<String>,
        looked_for: Vec<String>,
        candidates: Vec<String>,
    },
    /// Several entries of `peers` match this server (`name = address` each).
    #[error(
        "this server matches several entries of `peers`: {}; start it with --node NAME to \
         say which one it is",
        .matches.join(", ")
    )]
    AmbiguousSelf { matches: Vec<String> },
    /// The server reached as `expected` announced another name in its handshake.
    #[error(
        "peer `{expected}` answered as `{got}`: its address in `peers` leads to another \
         server, or that server's config gives it another name"
    )]
    WrongPeer { expected: String, got: String },
    #[error("peer `{peer}` announced the role {role:?} in its handshake instead of Peer")]
    NotAPeer { peer: String, role: Role },
    #[error("peer `{peer}` sent a handshake while the link was {state}")]
    UnexpectedHandshake { peer: String, state: &'static str },
}

impl MeshError {
    /// Whose fault this error is.
    pub fn fault(&self) -> Fault {
        match self {
            MeshError::BadNodeName { .. }
            | MeshError::BadAddress { .. }
            | MeshError::DuplicateName { .. }
            | MeshError::DuplicateAddress { .. }
            | MeshError::TooManyPeers { .. }
            | MeshError::NoSelf { .. }
            | MeshError::AmbiguousSelf { .. }
            | MeshError::WrongPeer { .. } => Fault::Config,
            MeshError::NotAPeer { .. } | MeshError::UnexpectedHandshake { .. } => Fault::Remote,
        }
    }
}

fn no_self(node: &Option<String>, looked_for: &[String], candidates: &[String]) -> String {
    let peers = if candidates.is_empty() {
        "`peers` is empty".to_owned()
    } else {
        format!("the peers are: {}", candidates.join(", "))
    };
    match node {
        Some(node) => format!("--node {node} names no entry of `peers`; {peers}"),
        None => {
            let tried = if looked_for.is_empty() {
                "no host name or address of this machine is known".to_owned()
            } else {
                format!("none matches {}", looked_for.join(", "))
            };
            format!(
                "this server is not in `peers` ({tried}); {peers}; add it to `peers` or start \
                 it with --node NAME"
            )
        }
    }
}
