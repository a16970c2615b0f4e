//! Peer links as the shard core sees them: the server-to-server handshake, link up and
//! down, frames from peers (over their own link or relayed), and the state sync a server
//! sends the ordering server when a configuration is installed.
//!
//! Which peers exist and who dials whom is `mesh`'s; sockets and redials are `runtime`'s.
//! Never does I/O.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::proto::{
    Cause, ErrorCode, Frame, GroupName, Handshake, Member, MemberVersion, Name, NodeTag, PeerAuth, PeerJoin,
    PeerState, SessionId, AUTH_LEN, PEER_VERSION,
};

use super::auth::{proof, verify, Side};
use super::relay::LinkStream;
use super::shard::{State, MAX_COUNTER};
use super::views::members_of;
use super::{ConnId, ConnMeta, Flow, LinkInfo, PeerEntry, ShardCore, ShardMsg};

/// The peer side of a connection that is a link to another server.
#[derive(Debug)]
pub(crate) struct PeerConn {
    pub tag: NodeTag,
    pub name: Name,
    /// Bytes sent, received and acknowledged, and multicasts to resend if it is lost.
    pub stream: LinkStream,
}

impl ShardCore {
    /// Sets the servers allowed to link to us (the `peers` table, self included or not;
    /// names are case-insensitive) and the addresses each may link from.
    pub fn set_peers(&mut self, peers: impl IntoIterator<Item = PeerEntry>) {
        self.peer_table = peers.into_iter().collect();
    }

    /// This server's node name.
    pub fn node_name(&self) -> &str {
        self.identity.node_name.as_str()
    }

    /// Closes this shard's links to servers whose names are not in `keep` (a peer was
    /// removed from the table).
    pub fn close_links_except(&mut self, keep: &[String]) {
        let doomed: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.peer.as_ref().is_some_and(|p| !keep.iter().any(|k| k.eq_ignore_ascii_case(p.name.as_str())))
            })
            .map(|(id, _)| id)
            .collect();
        for conn in doomed {
            tracing::info!(peer = %self.conns[conn].name, "peer removed from the table: closing its link");
            self.begin_close(conn, Cause::Disconnect, None);
            self.cut.push(conn);
        }
    }

    /// Links that are up, on any shard of this server.
    pub fn links(&self) -> &[LinkInfo] {
        &self.links
    }

    /// The runtime connected to peer `expect`: queue our HELLO on the new connection. Its
    /// reader and writer tasks must each call `handle_task_done`.
    pub fn handle_dial(&mut self, expect: &str, now: Instant, meta: ConnMeta) -> ConnId {
        let conn = self.handle_accept(now, meta);
        if self.conns[conn].state == State::Closing {
            return conn; // refused at a limit
        }
        let dialing = State::Dialing { expect: expect.to_lowercase(), nonces: None, proven: false };
        self.set_state(conn, dialing);
        let hello = Frame::Hello(self.peer_handshake());
        self.send_frame(conn, hello.to_bytes());
        conn
    }

    /// An inbound HELLO with role peer: the name must be in `peers` and proven by the
    /// certificate or address, then by the cluster secret if one is configured.
    pub(super) fn handle_peer_hello(&mut self, conn: ConnId, h: Handshake, now: Instant) -> Flow {
        if let Err(why) = self.check_peer(&h, None) {
            return self.fatal(conn, ErrorCode::BadHandshake, why, now);
        }
        if let Err(why) = self.authorize_inbound(conn, h.name.as_str()) {
            return self.refuse_peer(conn, why, now);
        }
        if self.limits.cluster_secret.is_some() {
            let nonce = self.new_nonce();
            self.send_frame(conn, Frame::PeerChallenge(PeerAuth { nonce, mac: [0; AUTH_LEN] }).to_bytes());
            self.set_state(conn, State::PeerAuth { hello: Box::new(h), nonce });
            return Flow::Read;
        }
        self.accept_peer(conn, h);
        Flow::Read
    }

    /// The dialer's PEER_PROOF answered our challenge: check it, prove ourselves, link up.
    pub(super) fn handle_dialer_proof(&mut self, conn: ConnId, p: PeerAuth, now: Instant) -> Flow {
        let State::PeerAuth { hello, nonce } = &self.conns[conn].state else { return Flow::Read };
        let (h, challenge) = ((**hello).clone(), *nonce);
        let Some(secret) = self.limits.cluster_secret.clone() else {
            return self.refuse_peer(conn, "the cluster secret was removed during the handshake".into(), now);
        };
        let me = self.identity.node_name.as_str().to_string();
        let dialer = h.name.as_str();
        if !verify(&secret, Side::Dialer, &challenge, &p.nonce, dialer, &me, &p.mac) {
            return self.refuse_peer(conn, format!("{dialer:?} failed to prove the cluster secret"), now);
        }
        // A link to the same server may have come up while we waited.
        if let Err(why) = self.check_peer(&h, None) {
            return self.fatal(conn, ErrorCode::BadHandshake, why, now);
        }
        let mac = proof(&secret, Side::Acceptor, &challenge, &p.nonce, dialer, &me);
        self.send_frame(conn, Frame::PeerProof(PeerAuth { nonce: [0; AUTH_LEN], mac }).to_bytes());
        self.accept_peer(conn, h);
        Flow::Read
    }

    /// PEER_CHALLENGE on a link we dialed: answer with our proof.
    pub(super) fn handle_challenge(&mut self, conn: ConnId, c: PeerAuth, now: Instant) -> Flow {
        match self.answer_challenge(conn, &c) {
            Ok(answer) => {
                self.send_frame(conn, Frame::PeerProof(answer).to_bytes());
                Flow::Read
            }
            Err(why) => self.refuse_peer(conn, why, now),
        }
    }

    /// Sends WELCOME and brings the link up (inbound side).
    fn accept_peer(&mut self, conn: ConnId, h: Handshake) {
        let welcome = Frame::Welcome(self.peer_handshake());
        self.send_frame(conn, welcome.to_bytes());
        self.link_up(conn, h);
    }

    /// A peer handshake failed authentication: logged loudly, counted, closed.
    pub(super) fn refuse_peer(&mut self, conn: ConnId, why: String, now: Instant) -> Flow {
        self.stats.auth_failures += 1;
        tracing::error!(remote = ?self.conns[conn].meta.remote, "refusing peer link: {why}");
        self.fatal(conn, ErrorCode::NotAuthorized, why, now)
    }

    /// WELCOME on a link we dialed.
    pub(super) fn handle_welcome(&mut self, conn: ConnId, w: Handshake, now: Instant) -> Flow {
        let (expect, proven) = match &self.conns[conn].state {
            State::Dialing { expect, proven, .. } => (expect.clone(), *proven),
            _ => (String::new(), false),
        };
        if let Err(why) = self.check_peer(&w, Some(&expect)) {
            return self.fatal(conn, ErrorCode::BadHandshake, why, now);
        }
        if let Err(why) = self.authorize_dialed(conn, &expect) {
            return self.refuse_peer(conn, why, now);
        }
        if self.limits.cluster_secret.is_some() && !proven {
            return self.refuse_peer(conn, format!("{expect:?} did not prove the cluster secret"), now);
        }
        self.link_up(conn, w);
        Flow::Read
    }

    /// This server's HELLO or WELCOME on a link.
    fn peer_handshake(&self) -> Handshake {
        Handshake { version: PEER_VERSION, ..self.handshake(SessionId(self.identity.boot)) }
    }

    fn check_peer(&self, h: &Handshake, expect: Option<&str>) -> Result<(), String> {
        let name = h.name.as_str().to_lowercase();
        if h.version < PEER_VERSION {
            return Err(format!(
                "node {:?} speaks server protocol {}, this server {PEER_VERSION}: upgrade every server of the cluster",
                h.name.as_str(),
                h.version
            ));
        }
        if let Some(expect) = expect {
            if name != expect {
                return Err(format!("dialed peer {expect:?} but {:?} answered", h.name.as_str()));
            }
        } else if !self.peer_table.iter().any(|p| p.name.eq_ignore_ascii_case(&name)) {
            return Err(format!("node {:?} is not in this server's peers", h.name.as_str()));
        }
        if h.id.0 == 0 {
            return Err(format!("node {:?} announced no start time", h.name.as_str()));
        }
        if h.node_tag.0 == 0 || h.node_tag == self.identity.node_tag {
            return Err(format!("node {:?} has an invalid or clashing node tag", h.name.as_str()));
        }
        if name == self.identity.node_name.as_str().to_lowercase() {
            return Err("a server cannot link to itself".into());
        }
        if self.links.iter().any(|l| l.tag == h.node_tag || l.name.as_str().to_lowercase() == name) {
            return Err(format!("a link to {:?} is already up", h.name.as_str()));
        }
        Ok(())
    }

    fn link_up(&mut self, conn: ConnId, h: Handshake) {
        if h.digest != self.identity.digest {
            self.stats.digest_mismatches += 1;
            tracing::error!(
                peer = %h.name,
                ours = format!("{:016x}", self.identity.digest),
                theirs = format!("{:016x}", h.digest),
                "CONFIG MISMATCH: peer runs a different msgc_server config; the link comes up anyway"
            );
        }
        tracing::info!(node = %self.identity.node_name, peer = %h.name, tag = format!("{:08x}", h.node_tag.0), "link up");
        self.stats.links_up += 1;
        self.set_state(conn, State::Peer);
        let c = &mut self.conns[conn];
        c.name = h.name.clone();
        c.peer =
            Some(Box::new(PeerConn { tag: h.node_tag, name: h.name.clone(), stream: LinkStream::default() }));
        let info = LinkInfo { tag: h.node_tag, name: h.name, boot: h.id.0, shard: self.id, conn };
        self.broadcast(ShardMsg::LinkUp(info));
    }

    /// Every shard learns of a new link: routes and server membership change.
    pub(super) fn handle_link_up(&mut self, info: LinkInfo) {
        let tag = info.tag;
        // A link that comes back while a relay reached its server: frames that server sent
        // by the relay may still be on their way, behind those the link now brings.
        let relayed = self.mesh.next_hop.contains_key(&tag);
        if !self.linked_before.insert(tag) && relayed {
            if let Some(now) = self.clock {
                let hold = self.limits.link_timeout * super::inbound::HOLD_LINK_TIMEOUTS;
                self.link_settles.insert(tag, now + hold);
            }
        }
        self.links.retain(|l| l.tag != tag);
        self.links.push(info);
        self.flood_own_topo(Some(tag));
        self.recompute_mesh();
        self.resend_relayed_to(tag);
    }

    /// Sends the ordering server `leader` this shard's state: its sessions' memberships,
    /// then (PEER_STATE) that the part is complete and the views of the groups it owns.
    pub(super) fn send_state_sync(&mut self, leader: NodeTag) {
        let mut sync = BytesMut::new();
        let mut count = 0;
        let version = MemberVersion::pack(self.id, self.member_ops);
        for (_, c) in self.conns.iter() {
            if c.state != State::Client {
                continue;
            }
            for g in &c.joined {
                let member = Member { session: c.session, name: c.name.clone() };
                Frame::PeerJoin(PeerJoin { cause: Cause::Network, group: g.clone(), member, version })
                    .encode(&mut sync);
                count += 1;
            }
        }
        // The view ids, in as many PEER_STATE frames as it takes for each to fit max_frame.
        let room = self.limits.max_frame.saturating_sub(64);
        let mut views = Vec::new();
        let mut size = 0;
        for g in self.groups.owned_names() {
            let Some(o) = self.groups.get(g.as_bytes()).and_then(|x| x.owned.as_ref()) else { continue };
            let entry = 17 + g.len();
            if size + entry > room {
                let (shard, shards, views) = (self.id, self.nshards, std::mem::take(&mut views));
                Frame::PeerState(PeerState { shard, shards, more: true, version, views }).encode(&mut sync);
                count += 1;
                size = 0;
            }
            size += entry;
            views.push((g, o.view_id, o.digest()));
        }
        Frame::PeerState(PeerState { shard: self.id, shards: self.nshards, more: false, version, views })
            .encode(&mut sync);
        self.send_to_link(leader, sync.freeze(), count + 1);
    }

    /// On the ordering server: this shard's sessions' memberships, applied like another
    /// server's state sync (see [`Self::send_state_sync`]).
    pub(super) fn sync_own_sessions(&mut self) {
        let version = MemberVersion::pack(self.id, self.member_ops);
        let mut synced = HashSet::new();
        let mut joins = Vec::new();
        for (_, c) in self.conns.iter().filter(|(_, c)| c.state == State::Client) {
            for g in &c.joined {
                synced.insert((g.clone(), c.session));
                joins.push((g.clone(), Member { session: c.session, name: c.name.clone() }));
            }
        }
        for (group, member) in joins {
            let msg =
                ShardMsg::Join { group: group.clone(), member, cause: Cause::Network, via: None, version };
            self.send_to_owner(&group, msg);
        }
        let tag = self.identity.node_tag;
        let (shard, shards) = (self.id, self.nshards);
        self.broadcast(ShardMsg::SyncDone { tag, shard, shards, version, synced: Arc::new(synced) });
    }

    /// Every shard learns that a link is gone.
    pub(super) fn handle_link_down(&mut self, tag: NodeTag) {
        self.links.retain(|l| l.tag != tag);
        self.flood_own_topo(None);
        self.recompute_mesh();
    }

    /// The link's connection closed (on the shard that owns it): every shard learns it is
    /// down, then what it carried unacknowledged goes again by another path. Members learn
    /// of losses only if the other server is unreachable altogether (see `inbound.rs`).
    pub(super) fn link_lost(&mut self, p: PeerConn) {
        tracing::warn!(node = %self.identity.node_name, peer = %p.name, "link down");
        self.stats.links_down += 1;
        self.broadcast(ShardMsg::LinkDown { tag: p.tag });
        self.resend_unacked(p.stream.unacked);
    }

    /// A frame other than MCAST from a linked server.
    pub(super) fn handle_peer_frame(
        &mut self,
        conn: ConnId,
        frame: Frame,
        bytes: Bytes,
        now: Instant,
    ) -> Flow {
        // invariant: only called for connections in state Peer, which have a PeerConn.
        let tag = self.conns[conn].peer.as_ref().map(|p| p.tag).expect("peer link");
        let result = match frame {
            Frame::PeerAck(n) => self.handle_ack(conn, n).map(|()| Flow::Read),
            Frame::PeerTopo(t) => {
                self.handle_topo_frame(tag, t, bytes);
                Ok(Flow::Read)
            }
            Frame::PeerRelay(r) => self.handle_relay(conn, r, now),
            Frame::PeerStamp(st) => {
                self.handle_stamp(conn, st);
                Ok(Flow::Read)
            }
            frame => self.handle_peer_message(conn, tag, frame, bytes, now),
        };
        match result {
            Ok(flow) => flow,
            Err(why) => self.peer_violation(conn, why, now),
        }
    }

    /// A frame server `origin` sent us, over its link `conn` or relayed through it.
    pub(super) fn handle_peer_message(
        &mut self,
        conn: ConnId,
        origin: NodeTag,
        frame: Frame,
        bytes: Bytes,
        now: Instant,
    ) -> Result<Flow, String> {
        check_peer_frame(&frame, origin)?;
        match frame {
            Frame::View(v) => {
                // Only the server that orders membership here publishes views. Not fatal:
                // while the configuration changes, an honest peer's view can be in flight;
                // the new configuration's state sync repairs what matters.
                if self.leader() != Some(origin) {
                    self.stats.peer_violations += 1;
                    tracing::debug!(node = %self.identity.node_name, shard = self.id, from = origin.0, group = %v.group, view = v.view_id, "dropping a VIEW from a server that does not order membership here");
                    return Ok(Flow::Read);
                }
                let leaver = (v.cause == Cause::Leave).then_some(v.subject);
                let members = members_of(&v);
                let msg =
                    ShardMsg::View { group: v.group, frame: bytes, view_id: v.view_id, members, leaver };
                self.broadcast(msg);
            }
            Frame::PeerJoin(j) => {
                if j.cause == Cause::Network {
                    self.sync_in.entry(origin).or_default().insert((j.group.clone(), j.member.session));
                }
                let msg = ShardMsg::Join {
                    group: j.group.clone(),
                    member: j.member,
                    cause: j.cause,
                    via: Some(origin),
                    version: j.version,
                };
                self.send_to_owner(&j.group, msg);
            }
            Frame::PeerMark(m) => self.broadcast(ShardMsg::Mark { origin, mark: Arc::new(m) }),
            Frame::PeerLeave(l) => {
                let msg = ShardMsg::Leave {
                    group: l.group.clone(),
                    session: l.session,
                    cause: l.cause,
                    via: Some(origin),
                    version: l.version,
                };
                self.send_to_owner(&l.group, msg);
            }
            Frame::PeerState(st) => {
                for (group, view_id, digest) in st.views {
                    self.send_to_owner(&group.clone(), ShardMsg::ViewId { group, view_id, digest });
                }
                if st.more {
                    return Ok(Flow::Read);
                }
                let (shard, shards, version) = (st.shard, st.shards, st.version);
                let in_part = |s: &SessionId| (s.0 & 0xffff_ffff) % u64::from(shards) == u64::from(shard);
                let announced = self.sync_in.entry(origin).or_default();
                let synced: HashSet<(GroupName, SessionId)> =
                    announced.iter().filter(|(_, s)| in_part(s)).cloned().collect();
                announced.retain(|(_, s)| !in_part(s));
                let tag = origin;
                self.broadcast(ShardMsg::SyncDone { tag, shard, shards, version, synced: Arc::new(synced) });
            }
            Frame::PeerConfig(c) => self.handle_config_frame(origin, c),
            other => {
                let msg = format!("{} is not accepted from a peer", other.name());
                return Ok(self.fatal(conn, ErrorCode::Unexpected, msg, now));
            }
        }
        Ok(Flow::Read)
    }

    /// A peer sent what an honest server never sends: logged, counted, the link closed
    /// (it is redialed, and the state sync starts over).
    fn peer_violation(&mut self, conn: ConnId, why: String, now: Instant) -> Flow {
        self.stats.peer_violations += 1;
        tracing::error!(peer = %self.conns[conn].name, "closing peer link, protocol violation: {why}");
        self.fatal(conn, ErrorCode::BadSender, why, now)
    }
}

/// What an honest peer `tag` may send: requests only for its own sessions, numbers in range.
fn check_peer_frame(frame: &Frame, tag: NodeTag) -> Result<(), String> {
    // (`tag` is the server the frame comes from, over its link or relayed.)
    let own = |s: SessionId, what: &str| {
        if s.node() == tag {
            Ok(())
        } else {
            Err(format!("{what} for session {s}, which belongs to another server"))
        }
    };
    match frame {
        Frame::View(v) if v.view_id == 0 || v.view_id >= MAX_COUNTER => {
            Err(format!("VIEW id {} out of range", v.view_id))
        }
        Frame::View(v) if v.members.windows(2).any(|w| w[0].session >= w[1].session) => {
            Err("VIEW members not in ascending session order".into())
        }
        Frame::PeerJoin(j) if !matches!(j.cause, Cause::Join | Cause::Network) => {
            Err(format!("PEER_JOIN with cause {:?}", j.cause))
        }
        Frame::PeerJoin(j) => own(j.member.session, "PEER_JOIN"),
        Frame::PeerLeave(l) if l.cause == Cause::Join => Err("PEER_LEAVE with cause Join".into()),
        Frame::PeerLeave(l) => own(l.session, "PEER_LEAVE"),
        Frame::PeerState(st) if st.views.iter().any(|(_, id, _)| *id >= MAX_COUNTER) => {
            Err("PEER_STATE view id out of range".into())
        }
        Frame::PeerMark(m) if m.view_id == 0 || m.view_id >= MAX_COUNTER => {
            Err(format!("PEER_MARK view id {} out of range", m.view_id))
        }
        Frame::PeerMark(m) if m.lost && !m.more => Err("PEER_MARK of lost senders that ends its view".into()),
        // (`prev` equal to `view`: a question about the installed view that awaits none.)
        Frame::PeerMark(m) if (m.ask || m.answer) && (m.prev == 0 || m.prev > m.view_id) => {
            Err("PEER_MARK question or answer about a view after the one awaited".into())
        }
        // A question's ends name the servers its sender lost, not senders.
        Frame::PeerMark(m) if m.ask => {
            let server_only = |e: &crate::proto::SenderEnd| {
                e.sender == SessionId::new(e.sender.node(), 0) && (e.first, e.seq, e.stamp) == (0, 0, 0)
            };
            if m.more || m.lost || m.answer || !m.ends.iter().all(server_only) {
                return Err("PEER_MARK question with other flags, or ends that are not servers".into());
            }
            Ok(())
        }
        Frame::PeerMark(m) if m.answer && m.lost => Err("PEER_MARK answer flagged LOST".into()),
        Frame::PeerMark(m) => m.ends.iter().try_for_each(|e| {
            // (A lost sender's `first` is where the lister stands, not a range's start.)
            let range = m.lost || e.first <= e.seq;
            if !range || e.first >= MAX_COUNTER || e.seq >= MAX_COUNTER || e.stamp >= MAX_COUNTER {
                return Err("PEER_MARK sequence number or view id out of range".into());
            }
            match m.lost || m.answer {
                // Senders of servers it lost: never its own.
                true if e.sender.node() == tag => Err("PEER_MARK lists its own session as lost".into()),
                true => Ok(()),
                false => own(e.sender, "PEER_MARK"),
            }
        }),
        _ => Ok(()),
    }
}
