//! Server membership (docs/mesh.md, "Server membership"): which servers this one can reach,
//! directly or through others; the configuration the reachable servers agreed on (an epoch
//! that only grows, and the server that orders group views in it); and the next hop to a
//! server whose direct link is down.
//!
//! Every shard keeps the same tables, fed the same messages. Shard 0 speaks for the server:
//! it floods this server's PEER_TOPO and, on the ordering server, announces configurations.
//! Never does I/O.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::proto::{Frame, NodeTag, PeerConfig, PeerTopo};

use super::{ShardCore, ShardMsg};

/// View ids are `epoch << EPOCH_SHIFT` plus a count within the epoch, so a view of a later
/// configuration always has a higher id than every view of an earlier one.
pub const EPOCH_SHIFT: u32 = 20;

/// The epoch of the configuration that ordered view `view_id`.
pub fn epoch_of(view_id: u64) -> u64 {
    view_id >> EPOCH_SHIFT
}

/// Epochs are dealt out in this many slots, one per server of the `peers` table (by sorted
/// name): servers that order at once, on two sides of a partition, never number two
/// configurations alike, so a view id names one configuration everywhere (with more
/// servers than slots, two may share a slot).
const EPOCH_SLOTS: u64 = 64;

/// Configurations remembered after the next is installed (a bound; a view of a forgotten
/// one waits on the servers of the installed one).
const PAST_CONFIGS: usize = 16;

/// A configuration: the servers that reach each other, numbered by a growing epoch, and
/// the one among them that orders group views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub epoch: u64,
    pub leader: NodeTag,
    pub members: BTreeSet<NodeTag>,
}

/// One shard's copy of the server membership state.
#[derive(Debug)]
pub(crate) struct Mesh {
    /// The latest PEER_TOPO of every other server heard of (this server's own is built
    /// from its links when it is sent).
    pub topo: HashMap<NodeTag, Arc<PeerTopo>>,
    /// Version of this server's own PEER_TOPO (shard 0 only; grows at every change).
    pub own_version: u64,
    /// The installed configuration.
    pub config: Config,
    /// The configurations installed before it, oldest first (at most `PAST_CONFIGS`): a
    /// view still waiting for its flush belongs to the one that ordered it.
    pub past: VecDeque<Config>,
    /// Servers reachable now over up links, directly or through others (self included).
    pub reachable: BTreeSet<NodeTag>,
    /// First hop towards each reachable server without a direct link.
    pub next_hop: HashMap<NodeTag, NodeTag>,
    /// On the ordering server: the links among the members when it announced the
    /// configuration. Losing one starts a new epoch, whose state sync heals what the lost
    /// link was carrying (joins, leaves, views).
    pub edges: BTreeSet<(NodeTag, NodeTag)>,
    /// On the ordering server: when it last sent the configuration to its members.
    pub config_sent: Option<Instant>,
}

impl Mesh {
    pub fn new(me: NodeTag, boot: u64) -> Mesh {
        // The first epoch is the start time in ms: a restarted server numbers above what
        // its clients saw before, as long as a cluster averages under one configuration
        // change per millisecond. Linked servers then count up from the highest epoch.
        let config = Config { epoch: boot.max(1), leader: me, members: BTreeSet::from([me]) };
        Mesh {
            topo: HashMap::new(),
            own_version: 0,
            config,
            past: VecDeque::new(),
            reachable: BTreeSet::from([me]),
            next_hop: HashMap::new(),
            edges: BTreeSet::new(),
            config_sent: None,
        }
    }

    /// The configuration that ordered view `view_id`, if this server installed it and still
    /// remembers it.
    pub fn config_of(&self, view_id: u64) -> Option<&Config> {
        let epoch = epoch_of(view_id);
        std::iter::once(&self.config).chain(self.past.iter().rev()).find(|c| c.epoch == epoch)
    }
}

impl ShardCore {
    /// The server that orders group views for this one, if it is another server.
    pub(super) fn leader(&self) -> Option<NodeTag> {
        let l = self.mesh.config.leader;
        (l != self.identity.node_tag).then_some(l)
    }

    /// The installed configuration's epoch and ordering server.
    pub fn config(&self) -> &Config {
        &self.mesh.config
    }

    /// Servers this one reaches now (itself included), directly or through others.
    pub fn reachable(&self) -> &BTreeSet<NodeTag> {
        &self.mesh.reachable
    }

    /// This server's PEER_TOPO as of now.
    fn own_topo(&self) -> PeerTopo {
        let mut neighbors: Vec<NodeTag> = self.links.iter().map(|l| l.tag).collect();
        neighbors.sort();
        PeerTopo {
            origin: self.identity.node_tag,
            version: self.mesh.own_version,
            boot: self.identity.boot,
            epoch: self.mesh.config.epoch,
            leader: self.mesh.config.leader,
            name: self.identity.node_name.clone(),
            neighbors,
        }
    }

    /// Shard 0: this server's links or configuration changed; tell every linked server,
    /// and a newly linked one (`new_link`) everything known about the others.
    pub(super) fn flood_own_topo(&mut self, new_link: Option<NodeTag>) {
        if self.id != 0 {
            return;
        }
        self.mesh.own_version += 1;
        let own = Frame::PeerTopo(self.own_topo()).to_bytes();
        let tags: Vec<NodeTag> = self.links.iter().map(|l| l.tag).collect();
        for tag in tags {
            self.send_to_link(tag, own.clone(), 1);
        }
        if let Some(tag) = new_link {
            let mut all = BytesMut::new();
            let mut count = 0;
            for t in self.mesh.topo.values().filter(|t| t.origin != tag) {
                Frame::PeerTopo((**t).clone()).encode(&mut all);
                count += 1;
            }
            if count > 0 {
                self.send_to_link(tag, all.freeze(), count);
            }
        }
    }

    /// A PEER_TOPO frame from the linked server `from`: if it is news, every shard learns
    /// it, and it goes on to every other linked server (flooding; versions stop the echo).
    pub(super) fn handle_topo_frame(&mut self, from: NodeTag, t: PeerTopo, bytes: Bytes) {
        if t.origin == self.identity.node_tag {
            return;
        }
        if self.mesh.topo.get(&t.origin).is_some_and(|known| known.version >= t.version)
            || self.superseded(&t)
        {
            return;
        }
        let tags: Vec<NodeTag> = self.links.iter().map(|l| l.tag).filter(|&l| l != from).collect();
        for tag in tags {
            self.send_to_link(tag, bytes.clone(), 1);
        }
        self.broadcast(ShardMsg::Topo(Arc::new(t)));
    }

    /// Every shard: a newer PEER_TOPO of another server.
    pub(super) fn handle_topo(&mut self, t: Arc<PeerTopo>) {
        if self.mesh.topo.get(&t.origin).is_some_and(|known| known.version >= t.version)
            || self.superseded(&t)
        {
            return;
        }
        // A restarted server comes back with a new tag: forget its previous run, and the
        // senders' ends owed to it (see `flush.rs`), which no mark will carry.
        let name = t.name.as_str().to_lowercase();
        let mut gone = Vec::new();
        self.mesh.topo.retain(|&tag, old| {
            let keep = tag == t.origin || old.name.as_str().to_lowercase() != name || old.boot > t.boot;
            if !keep {
                gone.push(tag);
            }
            keep
        });
        self.mesh.topo.insert(t.origin, t);
        self.groups.drop_ends_to(&gone);
        self.recompute_mesh();
    }

    /// Whether `t` is of an earlier run of a server whose later run is known (this one
    /// included): such a PEER_TOPO can still be in flight after a restart, and taken in
    /// again it would make the dead run reachable and unreachable by turns.
    fn superseded(&self, t: &PeerTopo) -> bool {
        let name = t.name.as_str();
        let later = |other: &str, boot: u64| other.eq_ignore_ascii_case(name) && boot > t.boot;
        later(self.identity.node_name.as_str(), self.identity.boot)
            || self.mesh.topo.values().any(|k| k.origin != t.origin && later(k.name.as_str(), k.boot))
    }

    /// Recomputes what is reachable and how, after links or topology changed. Servers that
    /// are no longer reachable end their senders' streams with a gap notice; shard 0 then
    /// checks whether a new configuration is due.
    pub(super) fn recompute_mesh(&mut self) {
        let me = self.identity.node_tag;
        let direct: BTreeSet<NodeTag> = self.links.iter().map(|l| l.tag).collect();
        // An edge counts only if both ends list each other: a crashed server's last
        // PEER_TOPO still names its neighbors, but they no longer name it.
        let linked = |a: NodeTag, b: NodeTag| -> bool {
            let lists = |x: NodeTag, y: NodeTag| {
                if x == me {
                    direct.contains(&y)
                } else {
                    self.mesh.topo.get(&x).is_some_and(|t| t.neighbors.contains(&y))
                }
            };
            lists(a, b) && lists(b, a)
        };
        let mut reachable = BTreeSet::from([me]);
        let mut next_hop = HashMap::new();
        let mut queue: VecDeque<(NodeTag, NodeTag)> = direct.iter().map(|&d| (d, d)).collect();
        for &d in &direct {
            reachable.insert(d);
        }
        while let Some((node, first)) = queue.pop_front() {
            let Some(t) = self.mesh.topo.get(&node) else { continue };
            for &n in &t.neighbors {
                if !reachable.contains(&n) && linked(node, n) {
                    reachable.insert(n);
                    next_hop.insert(n, first);
                    queue.push_back((n, first));
                }
            }
        }
        let departed: Vec<NodeTag> = self.mesh.reachable.difference(&reachable).copied().collect();
        self.mesh.reachable = reachable;
        self.mesh.next_hop = next_hop;
        for &node in &departed {
            tracing::debug!(me = me.0, shard = self.id, node = node.0, "server no longer reachable");
            self.sync_in.remove(&node);
            self.applied.retain(|(tag, _), _| *tag != node);
            self.server_unreachable(node);
        }
        if !departed.is_empty() {
            // A flush no longer waits for the lost servers' marks or senders.
            self.try_install_all();
        }
        self.pay_sync_owed();
        self.maybe_announce();
    }

    /// Sends the state owed to the ordering server once there is a route to it. (Sent with
    /// none, it would be dropped, and the ordering server would publish views without this
    /// shard's members until the next configuration.)
    fn pay_sync_owed(&mut self) {
        let Some(leader) = self.sync_owed else { return };
        if self.leader() != Some(leader) {
            self.sync_owed = None;
            return;
        }
        let linked = self.links.iter().any(|l| l.tag == leader) || self.mesh.next_hop.contains_key(&leader);
        if linked {
            self.sync_owed = None;
            self.send_state_sync(leader);
        }
    }

    /// The links among `nodes` as this server knows them now.
    fn edges_among(&self, nodes: &BTreeSet<NodeTag>) -> BTreeSet<(NodeTag, NodeTag)> {
        let me = self.identity.node_tag;
        let mut edges = BTreeSet::new();
        for l in &self.links {
            if nodes.contains(&l.tag) {
                edges.insert((me.min(l.tag), me.max(l.tag)));
            }
        }
        for t in self.mesh.topo.values().filter(|t| nodes.contains(&t.origin)) {
            for &n in t.neighbors.iter().filter(|n| nodes.contains(n) && **n != me) {
                let back = self.mesh.topo.get(&n).is_some_and(|o| o.neighbors.contains(&t.origin));
                if back {
                    edges.insert((t.origin.min(n), t.origin.max(n)));
                }
            }
        }
        edges
    }

    /// Shard 0: if this server should order membership for what it reaches (the
    /// longest-running reachable server) and the installed configuration does not match what
    /// it reaches, announce a new one with an epoch above every epoch any of them installed.
    fn maybe_announce(&mut self) {
        if self.id != 0 {
            return;
        }
        let me = self.identity.node_tag;
        // A server just linked has not told us its start time yet: wait for its PEER_TOPO
        // rather than take it for the youngest.
        if self.mesh.reachable.iter().any(|t| *t != me && !self.mesh.topo.contains_key(t)) {
            return;
        }
        let key = |tag: NodeTag| -> (u64, String, NodeTag) {
            if tag == me {
                (self.identity.boot, self.identity.node_name.as_str().to_lowercase(), me)
            } else {
                self.mesh
                    .topo
                    .get(&tag)
                    .map_or((u64::MAX, String::new(), tag), |t| (t.boot, t.name.as_str().to_lowercase(), tag))
            }
        };
        let Some(oldest) = self.mesh.reachable.iter().map(|&t| key(t)).min() else { return };
        if oldest.2 != me {
            return;
        }
        let cfg = &self.mesh.config;
        let members = &self.mesh.reachable;
        let others_epochs = members.iter().filter_map(|t| self.mesh.topo.get(t)).map(|t| (t.epoch, t.leader));
        // A member that installed another configuration with an epoch as high as ours (two
        // servers ordered at once) did not take ours: it needs a higher one.
        let contested = others_epochs.clone().any(|(e, l)| e > cfg.epoch || (e == cfg.epoch && l != me));
        let edges = self.edges_among(members);
        let lost_edge = self.mesh.edges.iter().any(|e| !edges.contains(e));
        if cfg.leader == me && cfg.members == *members && !contested && !lost_edge {
            self.mesh.edges = edges;
            return;
        }
        let floor = others_epochs.map(|(e, _)| e).chain([cfg.epoch]).max().unwrap_or(0);
        let slot = self.epoch_slot();
        let epoch = floor + 1 + (slot + EPOCH_SLOTS - (floor + 1) % EPOCH_SLOTS) % EPOCH_SLOTS;
        let config = Config { epoch, leader: me, members: members.clone() };
        tracing::info!(
            epoch,
            servers = config.members.len(),
            "announcing a new configuration of reachable servers (this server orders views)"
        );
        self.mesh.edges = edges;
        let others: Vec<NodeTag> = config.members.iter().copied().filter(|&t| t != me).collect();
        self.send_config(&config, others);
        self.broadcast(ShardMsg::Config(Arc::new(config)));
    }

    /// This server's epoch slot: its place among the `peers` table's names.
    fn epoch_slot(&self) -> u64 {
        let me = self.identity.node_name.as_str().to_lowercase();
        let mut names: Vec<String> = self.peer_table.iter().map(|p| p.name.to_lowercase()).collect();
        names.push(me.clone());
        names.sort_unstable();
        names.dedup();
        names.iter().position(|n| *n == me).unwrap_or(0) as u64 % EPOCH_SLOTS
    }

    fn send_config(&mut self, config: &Config, to: Vec<NodeTag>) {
        let frame = Frame::PeerConfig(PeerConfig {
            leader: config.leader,
            epoch: config.epoch,
            members: config.members.iter().copied().collect(),
        })
        .to_bytes();
        for tag in to {
            self.send_to_link(tag, frame.clone(), 1);
        }
        self.mesh.config_sent = self.clock.or(self.mesh.config_sent);
    }

    /// Shard 0 of the ordering server, on its timer: members whose PEER_TOPO still reports
    /// an older configuration are sent the installed one again, at most once per link
    /// timeout. (A PEER_CONFIG is not resent with a lost link, and can find no route while
    /// routes change; such a member would otherwise keep its own configuration for good.)
    pub(super) fn resend_config(&mut self, now: Instant) {
        let me = self.identity.node_tag;
        let cfg = &self.mesh.config;
        if self.id != 0
            || cfg.leader != me
            || self.mesh.config_sent.is_some_and(|t| now.duration_since(t) < self.limits.link_timeout)
        {
            return;
        }
        let behind: Vec<NodeTag> = cfg
            .members
            .iter()
            .copied()
            .filter(|t| *t != me && self.mesh.topo.get(t).is_none_or(|topo| topo.epoch < cfg.epoch))
            .collect();
        if !behind.is_empty() {
            tracing::debug!(
                epoch = cfg.epoch,
                servers = behind.len(),
                "sending the configuration again to servers still behind it"
            );
            let config = cfg.clone();
            self.send_config(&config, behind);
        }
    }

    /// A PEER_CONFIG from `origin` (directly or relayed): installed if `origin` announces
    /// itself, lists this server, and its epoch is above the installed one.
    pub(super) fn handle_config_frame(&mut self, origin: NodeTag, c: PeerConfig) {
        let me = self.identity.node_tag;
        if c.leader != origin || !c.members.contains(&me) || c.epoch <= self.mesh.config.epoch {
            // A stale or contested announcement: our PEER_TOPO (with our higher epoch)
            // tells the announcer to go higher.
            return;
        }
        let config = Config { epoch: c.epoch, leader: c.leader, members: c.members.into_iter().collect() };
        self.broadcast(ShardMsg::Config(Arc::new(config)));
    }

    /// Every shard: install a configuration. The ordering server drops the members of
    /// servers outside it; every other server sends it this shard's state (its sessions'
    /// memberships and the views it holds), from which it rebuilds and republishes views.
    pub(super) fn install_config(&mut self, config: Arc<Config>) {
        if config.epoch <= self.mesh.config.epoch {
            return;
        }
        tracing::debug!(
            node = %self.identity.node_name,
            shard = self.id,
            epoch = config.epoch,
            leader = config.leader.0,
            "configuration installed"
        );
        let old = std::mem::replace(&mut self.mesh.config, (*config).clone());
        if self.mesh.past.len() == PAST_CONFIGS {
            self.mesh.past.pop_front();
        }
        self.mesh.past.push_back(old);
        // Servers left out are waited for no longer.
        self.marks.values_mut().for_each(|m| m.retain(|(tag, _), _| config.members.contains(tag)));
        self.try_install_all();
        if self.id == 0 {
            self.flood_own_topo(None);
        }
        match self.leader() {
            None => {
                self.start_sync_wait();
                // This server's own sessions' joins and leaves may have gone to a previous
                // ordering server and been lost with it: sync them to ourselves as well.
                self.sync_own_sessions();
                self.reconcile_membership();
            }
            Some(leader) => {
                self.sync_wait = None;
                self.sync_owed = Some(leader);
                self.pay_sync_owed();
            }
        }
    }
}
