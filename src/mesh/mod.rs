//! The mesh between servers, sans-io: the peer table built from the config's `peers`, which
//! entry is this server, who dials whom, what a config reload changes, and reconnect backoff.
//!
//! Owns every decision about which links exist. Never does I/O: no sockets, no threads, no
//! name resolution, no reading of the host name or interfaces, no clock reads and no
//! randomness. The runtime gathers the facts ([`SelfHint`]) and dials; the shard core runs
//! each link's handshake, keepalives and traffic.

mod backoff;
mod dial;
mod diff;
mod name;
mod peers;

pub use backoff::backoff_delay;
pub use dial::should_dial;
pub use diff::{diff, PeerDiff};
pub use name::NodeName;
pub use peers::{PeerAddr, PeerId, PeerTable, SelfHint};

/// Errors of the mesh layer: all are configuration errors an operator must fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    #[error("peer name `{name}` is not usable: {reason}")]
    BadNodeName { name: String, reason: &'static str },
    #[error("address `{addr}` of peer `{node}` is not usable: {reason}")]
    BadAddress { node: String, addr: String, reason: &'static str },
    #[error(
        "`peers` lists the same server twice, as `{first}` and as `{second}` \
         (node names are compared without regard to case)"
    )]
    DuplicateName { first: String, second: String },
    #[error("peers `{first}` and `{second}` have the same address ({addr})")]
    DuplicateAddress { addr: String, first: String, second: String },
    #[error("`peers` has {count} entries; at most 65535 are supported")]
    TooManyPeers { count: usize },
    /// No entry of `peers` is this server. `candidates` are the entries as `name = address`;
    /// `looked_for` the host names and addresses tried (empty when `--node` was given).
    #[error("{}", no_self(.node, .looked_for, .candidates))]
    NoSelf { node: Option<String>, looked_for: Vec<String>, candidates: Vec<String> },
    /// Several entries of `peers` match this server (`name = address` each).
    #[error(
        "this server matches several entries of `peers`: {}; start it with --node NAME to \
         say which one it is",
        .matches.join(", ")
    )]
    AmbiguousSelf { matches: Vec<String> },
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
