//! Who may act as a peer. A connection that says HELLO with role peer becomes a link only
//! after it proves it is the configured server it names:
//!
//! - mutual TLS (`Limits::peer_tls`): the runtime verified the certificate against the
//!   cluster's CA; the core checks that it names the peer;
//! - a cluster secret (`Limits::cluster_secret`): an HMAC-SHA256 challenge in both
//!   directions (PEER_CHALLENGE, PEER_PROOF), bound to both nonces and both names, so a
//!   proof can be neither replayed nor reflected;
//! - with neither, an inbound link must come from an address of the named server in
//!   `peers` (the mesh is then unauthenticated, which the server logs at startup).
//!
//! Never does I/O: nonces come from a key the runtime drew from the OS at startup.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::proto::{PeerAuth, AUTH_LEN};

use super::shard::State;
use super::{ConnId, ShardCore};

type HmacSha256 = Hmac<Sha256>;

/// The shared secret of a cluster's servers. Its bytes never appear in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Arc<[u8]>);

impl ClusterSecret {
    pub fn new(bytes: &[u8]) -> ClusterSecret {
        ClusterSecret(bytes.into())
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecret(<{} bytes>)", self.0.len())
    }
}

/// Which side of the handshake a proof is from (part of what the HMAC covers).
#[derive(Clone, Copy)]
pub(super) enum Side {
    Dialer,
    Acceptor,
}

/// The HMAC one side sends: over both nonces and both names (lower-cased), labelled with
/// the side so that the acceptor's proof cannot be sent back as the dialer's.
pub(super) fn proof(
    secret: &ClusterSecret,
    side: Side,
    challenge: &[u8; AUTH_LEN],
    nonce: &[u8; AUTH_LEN],
    dialer: &str,
    acceptor: &str,
) -> [u8; AUTH_LEN] {
    let mut out = [0; AUTH_LEN];
    out.copy_from_slice(&mac_for(secret, side, challenge, nonce, dialer, acceptor).finalize().into_bytes());
    out
}

/// Checks a proof in constant time.
pub(super) fn verify(
    secret: &ClusterSecret,
    side: Side,
    challenge: &[u8; AUTH_LEN],
    nonce: &[u8; AUTH_LEN],
    dialer: &str,
    acceptor: &str,
    mac: &[u8; AUTH_LEN],
) -> bool {
    mac_for(secret, side, challenge, nonce, dialer, acceptor).verify_slice(mac).is_ok()
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // invariant: HMAC accepts keys of any length; new_from_slice cannot fail.
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn mac_for(
    secret: &ClusterSecret,
    side: Side,
    challenge: &[u8; AUTH_LEN],
    nonce: &[u8; AUTH_LEN],
    dialer: &str,
    acceptor: &str,
) -> HmacSha256 {
    let mut mac = keyed(&secret.0);
    mac.update(match side {
        Side::Dialer => b"msgc peer proof v1: dialer\0",
        Side::Acceptor => b"msgc peer proof v1: acceptor",
    });
    mac.update(challenge);
    mac.update(nonce);
    mac.update(dialer.to_lowercase().as_bytes());
    mac.update(&[0]);
    mac.update(acceptor.to_lowercase().as_bytes());
    mac
}

impl ShardCore {
    /// A fresh nonce: HMAC of a counter under the key the runtime drew at startup.
    pub(super) fn new_nonce(&mut self) -> [u8; AUTH_LEN] {
        self.nonce_counter += 1;
        let mut mac = keyed(&self.identity.entropy);
        mac.update(&self.id.to_be_bytes());
        mac.update(&self.nonce_counter.to_be_bytes());
        let mut out = [0; AUTH_LEN];
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Whether an inbound connection that named itself peer `name` may be that peer, as
    /// far as its certificate and address tell (the cluster secret is checked after).
    pub(super) fn authorize_inbound(&self, conn: ConnId, name: &str) -> Result<(), String> {
        let meta = &self.conns[conn].meta;
        if self.limits.peer_tls {
            return match &meta.tls {
                None => Err("peer links must use mutual TLS; this one is plain".into()),
                Some(t) if t.names.iter().any(|n| n.eq_ignore_ascii_case(name)) => Ok(()),
                Some(t) => Err(format!("certificate names {:?}, not {name:?}", t.names)),
            };
        }
        if self.limits.cluster_secret.is_some() {
            return Ok(());
        }
        let entry = self.peer_table.iter().find(|p| p.name.eq_ignore_ascii_case(name));
        match (meta.remote, entry) {
            (Some(remote), Some(p)) if p.addrs.contains(&remote.ip()) => Ok(()),
            (Some(remote), Some(p)) => Err(format!(
                "connection from {} but peers lists {name:?} at {:?} (unauthenticated mesh: links only from listed addresses)",
                remote.ip(),
                p.addrs
            )),
            (None, _) => Err("remote address unknown; cannot check it against peers".into()),
            (_, None) => Err(format!("node {name:?} is not in this server's peers")),
        }
    }

    /// Whether the server we dialed as `expect` is that peer, as far as its certificate
    /// tells (the cluster secret is checked by the proof exchange).
    pub(super) fn authorize_dialed(&self, conn: ConnId, expect: &str) -> Result<(), String> {
        if !self.limits.peer_tls {
            return Ok(());
        }
        match &self.conns[conn].meta.tls {
            None => Err("peer links must use mutual TLS; this one is plain".into()),
            Some(t) if t.names.iter().any(|n| n.eq_ignore_ascii_case(expect)) => Ok(()),
            Some(t) => Err(format!("certificate names {:?}, not {expect:?}", t.names)),
        }
    }

    /// The dialer's answer to PEER_CHALLENGE: our nonce and proof.
    pub(super) fn answer_challenge(
        &mut self,
        conn: ConnId,
        challenge: &PeerAuth,
    ) -> Result<PeerAuth, String> {
        let Some(secret) = self.limits.cluster_secret.clone() else {
            return Err("the peer asks for the cluster secret, and none is configured here".into());
        };
        let nonce = self.new_nonce();
        let me = self.identity.node_name.as_str().to_string();
        let State::Dialing { expect, nonces, .. } = &mut self.conns[conn].state else {
            return Err("PEER_CHALLENGE outside a dialed handshake".into());
        };
        if nonces.is_some() {
            return Err("a second PEER_CHALLENGE".into());
        }
        *nonces = Some((challenge.nonce, nonce));
        let mac = proof(&secret, Side::Dialer, &challenge.nonce, &nonce, &me, expect);
        Ok(PeerAuth { nonce, mac })
    }

    /// The dialer checks the acceptor's PEER_PROOF.
    pub(super) fn check_acceptor_proof(&mut self, conn: ConnId, p: &PeerAuth) -> Result<(), String> {
        let Some(secret) = self.limits.cluster_secret.clone() else {
            return Err("unexpected PEER_PROOF: no cluster secret is configured here".into());
        };
        let me = self.identity.node_name.as_str().to_string();
        let State::Dialing { expect, nonces: Some((challenge, nonce)), proven } = &mut self.conns[conn].state
        else {
            return Err("PEER_PROOF before PEER_CHALLENGE".into());
        };
        if !verify(&secret, Side::Acceptor, challenge, nonce, &me, expect, &p.mac) {
            return Err("the peer's proof of the cluster secret is wrong".into());
        }
        *proven = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_side_nonces_and_names() {
        let s = ClusterSecret::new(b"correct horse");
        let (c, n) = ([1; AUTH_LEN], [2; AUTH_LEN]);
        let good = proof(&s, Side::Dialer, &c, &n, "node1", "Node2");
        assert!(verify(&s, Side::Dialer, &c, &n, "NODE1", "node2", &good));
        assert!(!verify(&ClusterSecret::new(b"wrong"), Side::Dialer, &c, &n, "node1", "node2", &good));
        assert!(!verify(&s, Side::Acceptor, &c, &n, "node1", "node2", &good), "reflected");
        assert!(!verify(&s, Side::Dialer, &n, &c, "node1", "node2", &good), "nonces swapped");
        assert!(!verify(&s, Side::Dialer, &c, &n, "node3", "node2", &good), "other dialer");
        assert!(!verify(&s, Side::Dialer, &c, &n, "node1", "node3", &good), "other acceptor");
        assert_eq!(format!("{s:?}"), "ClusterSecret(<13 bytes>)");
    }
}
