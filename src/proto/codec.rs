//! Encoding and resumable decoding of frames (layouts in `docs/protocol.md`).
//!
//! Owns: byte layouts, length checks before allocation. Never does I/O; never panics on input.
//! `decode` accepts any prefix of a stream: it returns `Ok(None)` and consumes nothing until a
//! whole frame is buffered. Decoded payloads share the input buffer (`split_to().freeze()`).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::*;

/// Fixed part of an MCAST frame before the group name.
pub const MCAST_FIXED: usize = 32;
const HANDSHAKE_FIXED: usize = 38;
const VIEW_FIXED: usize = 36;
const GAP_FIXED: usize = 32;
const ERROR_FIXED: usize = 10;

/// The total size of the frame starting at `buf[0]`, once its length field is buffered.
///
/// Checks the length against `max_frame` so that nothing is buffered for an oversized frame.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, ProtoError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 2 {
        return Err(ProtoError::TooShort(len));
    }
    let size = 4 + len as usize;
    if size > max_frame {
        return Err(ProtoError::TooLarge { size, max: max_frame });
    }
    Ok(Some(size))
}

/// The checked fixed fields of one MCAST frame, read without copying its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct McastHeader {
    pub sender: SessionId,
    pub seq: u64,
    pub order: u64,
    /// Group name length; the name is `frame[MCAST_FIXED..MCAST_FIXED + group_len]`.
    pub group_len: usize,
}

impl McastHeader {
    /// Parses the header of one whole MCAST frame (`frame` is exactly the frame's bytes).
    /// Validates the layout; the group name's UTF-8 is checked by [`GroupName::from_bytes`].
    pub fn parse(frame: &[u8]) -> Result<McastHeader, ProtoError> {
        if frame.len() < MCAST_FIXED || frame[4] != kind::MCAST {
            return Err(ProtoError::Malformed("MCAST shorter than its fixed fields"));
        }
        if frame[5] != 0 || frame[7] != 0 {
            return Err(ProtoError::Malformed("MCAST reserved bits set"));
        }
        let group_len = frame[6] as usize;
        if group_len == 0 {
            return Err(ProtoError::BadGroup);
        }
        if frame.len() < MCAST_FIXED + group_len {
            return Err(ProtoError::Malformed("MCAST group name runs past the frame"));
        }
        Ok(McastHeader {
            sender: SessionId(be_u64(&frame[8..16])),
            seq: be_u64(&frame[16..24]),
            order: be_u64(&frame[24..32]),
            group_len,
        })
    }

    /// The group name bytes of `frame` (not yet checked for UTF-8).
    pub fn group<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[MCAST_FIXED..MCAST_FIXED + self.group_len]
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Appends an MCAST frame built from its parts (the client's send path).
pub fn encode_mcast(dst: &mut BytesMut, sender: SessionId, seq: u64, group: &GroupName, payload: &[u8]) {
    encode_mcast_parts(dst, sender, seq, group.as_bytes(), payload)
}

/// [`encode_mcast`] with the group name as bytes, so that a sender need not build a
/// [`GroupName`] per message. The caller guarantees `group` is a valid name (1..=255 bytes
/// of UTF-8); a longer one would not fit its length field.
pub fn encode_mcast_parts(dst: &mut BytesMut, sender: SessionId, seq: u64, group: &[u8], payload: &[u8]) {
    debug_assert!(!group.is_empty() && group.len() <= MAX_GROUP_LEN);
    let len = MCAST_FIXED - 4 + group.len() + payload.len();
    // The fixed fields are built on the stack and appended at once: this is the client's
    // per-message path, and one copy beats eight capacity checks.
    let mut head = [0u8; MCAST_FIXED];
    head[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    head[4] = kind::MCAST;
    head[6] = group.len() as u8;
    head[8..16].copy_from_slice(&sender.0.to_be_bytes());
    head[16..24].copy_from_slice(&seq.to_be_bytes());
    dst.reserve(4 + len);
    dst.extend_from_slice(&head);
    dst.extend_from_slice(group);
    dst.extend_from_slice(payload);
}

/// Appends `frame` to `dst`.
pub fn encode(frame: &Frame, dst: &mut BytesMut) {
    let start = dst.len();
    dst.put_u32(0); // length, patched below
    match frame {
        Frame::Hello(h) | Frame::Welcome(h) => {
            let k = if matches!(frame, Frame::Hello(_)) { kind::HELLO } else { kind::WELCOME };
            dst.put_u8(k);
            dst.put_u8(0);
            dst.put_slice(&MAGIC);
            dst.put_u16(h.version);
            dst.put_u8(h.role as u8);
            dst.put_u8(h.name.as_bytes().len() as u8);
            dst.put_u64(h.id.0);
            dst.put_u64(h.digest);
            dst.put_u32(h.node_tag.0);
            dst.put_u32(h.max_frame);
            dst.put_slice(h.name.as_bytes());
        }
        Frame::Join(g) | Frame::Leave(g) => {
            dst.put_u8(if matches!(frame, Frame::Join(_)) { kind::JOIN } else { kind::LEAVE });
            dst.put_u8(0);
            dst.put_u8(g.len() as u8);
            dst.put_slice(g.as_bytes());
        }
        Frame::Noop => {
            dst.put_u8(kind::NOOP);
            dst.put_u8(0);
        }
        Frame::Error(e) => {
            dst.put_u8(kind::ERROR);
            dst.put_u8(if e.fatal { ERROR_FATAL } else { 0 });
            dst.put_u16(e.code as u16);
            let message = bounded_message(&e.message);
            dst.put_u16(message.len() as u16);
            dst.put_slice(message.as_bytes());
        }
        Frame::Mcast(m) => {
            dst.truncate(start);
            let mut tmp = BytesMut::new();
            encode_mcast(&mut tmp, m.sender, m.seq, &m.group, &m.payload);
            // order is reserved but carried faithfully.
            tmp[24..32].copy_from_slice(&m.order.to_be_bytes());
            dst.extend_from_slice(&tmp);
            return;
        }
        Frame::View(v) => {
            dst.put_u8(kind::VIEW);
            dst.put_u8(0);
            dst.put_u8(v.cause as u8);
            dst.put_u8(v.group.len() as u8);
            dst.put_u64(v.view_id);
            dst.put_u64(v.group_seq);
            dst.put_u64(v.subject.0);
            dst.put_u32(v.members.len() as u32);
            dst.put_slice(v.group.as_bytes());
            for m in &v.members {
                dst.put_u64(m.session.0);
                dst.put_u8(m.name.as_bytes().len() as u8);
                dst.put_slice(m.name.as_bytes());
            }
        }
        Frame::Gap(g) => {
            dst.put_u8(kind::GAP);
            dst.put_u8(0);
            dst.put_u8(g.reason as u8);
            dst.put_u8(g.group.len() as u8);
            dst.put_u64(g.sender.0);
            dst.put_u64(g.first);
            dst.put_u64(g.last);
            dst.put_slice(g.group.as_bytes());
        }
        Frame::PeerJoin(j) => {
            dst.put_u8(kind::PEER_JOIN);
            dst.put_u8(0);
            dst.put_u8(j.cause as u8);
            dst.put_u8(j.group.len() as u8);
            dst.put_u64(j.member.session.0);
            dst.put_u64(j.version);
            dst.put_u8(j.member.name.as_bytes().len() as u8);
            dst.put_slice(j.group.as_bytes());
            dst.put_slice(j.member.name.as_bytes());
        }
        Frame::PeerLeave(l) => {
            dst.put_u8(kind::PEER_LEAVE);
            dst.put_u8(0);
            dst.put_u8(l.cause as u8);
            dst.put_u8(l.group.len() as u8);
            dst.put_u64(l.session.0);
            dst.put_u64(l.version);
            dst.put_slice(l.group.as_bytes());
        }
        Frame::PeerState(st) => {
            dst.put_u8(kind::PEER_STATE);
            dst.put_u8(if st.more { STATE_MORE } else { 0 });
            dst.put_u16(st.shard);
            dst.put_u16(st.shards);
            dst.put_u64(st.version);
            dst.put_u32(st.views.len() as u32);
            for (g, id, digest) in &st.views {
                dst.put_u8(g.len() as u8);
                dst.put_slice(g.as_bytes());
                dst.put_u64(*id);
                dst.put_u64(*digest);
            }
        }
        Frame::PeerChallenge(a) | Frame::PeerProof(a) => {
            let challenge = matches!(frame, Frame::PeerChallenge(_));
            dst.put_u8(if challenge { kind::PEER_CHALLENGE } else { kind::PEER_PROOF });
            dst.put_u8(0);
            dst.put_slice(&a.nonce);
            dst.put_slice(&a.mac);
        }
        Frame::PeerTopo(t) => {
            dst.put_u8(kind::PEER_TOPO);
            dst.put_u8(0);
            dst.put_u32(t.origin.0);
            dst.put_u64(t.version);
            dst.put_u64(t.boot);
            dst.put_u64(t.epoch);
            dst.put_u32(t.leader.0);
            dst.put_u8(t.name.as_bytes().len() as u8);
            let n = t.neighbors.len().min(MAX_NEIGHBORS);
            dst.put_u16(n as u16);
            dst.put_slice(t.name.as_bytes());
            for tag in &t.neighbors[..n] {
                dst.put_u32(tag.0);
            }
        }
        Frame::PeerConfig(c) => {
            dst.put_u8(kind::PEER_CONFIG);
            dst.put_u8(0);
            dst.put_u32(c.leader.0);
            dst.put_u64(c.epoch);
            let n = c.members.len().min(MAX_NEIGHBORS);
            dst.put_u16(n as u16);
            for tag in &c.members[..n] {
                dst.put_u32(tag.0);
            }
        }
        Frame::PeerAck(n) => {
            dst.put_u8(kind::PEER_ACK);
            dst.put_u8(0);
            dst.put_u64(*n);
        }
        Frame::PeerStamp(st) => {
            dst.put_u8(kind::PEER_STAMP);
            dst.put_u8(0);
            dst.put_u64(st.view_id);
            dst.put_u8(st.group.len() as u8);
            dst.put_slice(st.group.as_bytes());
        }
        Frame::PeerMark(m) => {
            dst.put_u8(kind::PEER_MARK);
            let flag = |set: bool, bit: u8| if set { bit } else { 0 };
            dst.put_u8(
                flag(m.more, MARK_MORE)
                    | flag(m.lost, MARK_LOST)
                    | flag(m.ask, MARK_ASK)
                    | flag(m.answer, MARK_ANSWER),
            );
            dst.put_u64(m.view_id);
            dst.put_u64(m.prev);
            dst.put_u16(m.shard);
            dst.put_u16(m.shards);
            dst.put_u8(m.group.len() as u8);
            dst.put_slice(m.group.as_bytes());
            for e in &m.ends {
                dst.put_u64(e.sender.0);
                dst.put_u64(e.first);
                dst.put_u64(e.seq);
                dst.put_u64(e.stamp);
            }
        }
        Frame::PeerRelay(r) => {
            dst.truncate(start);
            dst.extend_from_slice(&relay_header(
                r.origin,
                r.dest,
                r.hops,
                r.resent,
                r.passed,
                r.frames.len(),
            ));
            dst.extend_from_slice(&r.frames);
            return;
        }
    }
    let len = (dst.len() - start - 4) as u32;
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Most servers one PEER_TOPO or PEER_CONFIG lists (far more than a full mesh can have).
pub const MAX_NEIGHBORS: usize = 4096;

/// The header of a PEER_RELAY frame carrying `len` bytes of frames, which follow it (so a
/// run can be relayed without copying it).
pub fn relay_header(
    origin: NodeTag,
    dest: NodeTag,
    hops: u8,
    resent: bool,
    passed: bool,
    len: usize,
) -> [u8; RELAY_HEADER] {
    let mut h = [0u8; RELAY_HEADER];
    h[..4].copy_from_slice(&((RELAY_HEADER - 4 + len) as u32).to_be_bytes());
    h[4] = kind::PEER_RELAY;
    h[5] = if resent { RELAY_RESENT } else { 0 } | if passed { RELAY_PASSED } else { 0 };
    h[6..10].copy_from_slice(&origin.0.to_be_bytes());
    h[10..14].copy_from_slice(&dest.0.to_be_bytes());
    h[14] = hops;
    h
}

/// Decodes one frame from the front of `buf`, consuming it; `Ok(None)` if it is incomplete.
///
/// On `Err` the stream is unusable: the caller sends an ERROR and closes.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, ProtoError> {
    let Some(size) = frame_len(buf, max_frame)? else {
        return Ok(None);
    };
    if buf.len() < size {
        return Ok(None);
    }
    parse_whole(buf.split_to(size).freeze()).map(Some)
}

/// Parses one whole frame held in `frame`; names and payloads share its bytes.
pub fn parse_whole(frame: Bytes) -> Result<Frame, ProtoError> {
    let f: &[u8] = &frame;
    if f.len() < HEADER_LEN {
        return Err(ProtoError::Malformed("frame shorter than its header"));
    }
    let group_at = |from: usize, len: usize| -> Result<GroupName, ProtoError> {
        if from + len > f.len() {
            return Err(ProtoError::Malformed("group name runs past the frame"));
        }
        GroupName::from_bytes(frame.slice(from..from + len))
    };
    let name_at = |from: usize, len: usize| -> Result<Name, ProtoError> {
        if from + len > f.len() {
            return Err(ProtoError::Malformed("name runs past the frame"));
        }
        Name::from_bytes(frame.slice(from..from + len))
    };
    let k = f[4];
    let flags = f[5];
    let body = &f[HEADER_LEN..];
    let no_flags = || {
        if flags != 0 {
            Err(ProtoError::Malformed("reserved flag bits set"))
        } else {
            Ok(())
        }
    };
    match k {
        kind::HELLO | kind::WELCOME => {
            no_flags()?;
            if f.len() < HANDSHAKE_FIXED {
                return Err(ProtoError::BadHandshake("handshake shorter than its fixed fields"));
            }
            if f[6..10] != MAGIC {
                return Err(ProtoError::BadHandshake("wrong magic (not an msgc peer?)"));
            }
            let version = u16::from_be_bytes([f[10], f[11]]);
            let role = match f[12] {
                1 => Role::Client,
                2 => Role::Peer,
                _ => return Err(ProtoError::BadHandshake("unknown role")),
            };
            let name_len = f[13] as usize;
            if HANDSHAKE_FIXED + name_len != f.len() {
                return Err(ProtoError::BadHandshake("name length disagrees with frame length"));
            }
            let mut c = &f[14..HANDSHAKE_FIXED];
            let h = Handshake {
                version,
                role,
                id: SessionId(c.get_u64()),
                digest: c.get_u64(),
                node_tag: NodeTag(c.get_u32()),
                max_frame: c.get_u32(),
                name: name_at(HANDSHAKE_FIXED, name_len)?,
            };
            Ok(if k == kind::HELLO { Frame::Hello(h) } else { Frame::Welcome(h) })
        }
        kind::JOIN | kind::LEAVE => {
            no_flags()?;
            let Some(&len) = body.first() else {
                return Err(ProtoError::Malformed("JOIN/LEAVE without a group"));
            };
            if HEADER_LEN + 1 + len as usize != f.len() {
                return Err(ProtoError::Malformed("group length disagrees with frame length"));
            }
            let g = group_at(HEADER_LEN + 1, len as usize)?;
            Ok(if k == kind::JOIN { Frame::Join(g) } else { Frame::Leave(g) })
        }
        kind::NOOP => {
            no_flags()?;
            if f.len() != HEADER_LEN {
                return Err(ProtoError::Malformed("NOOP with a body"));
            }
            Ok(Frame::Noop)
        }
        kind::ERROR => {
            if flags & !ERROR_FATAL != 0 {
                return Err(ProtoError::Malformed("reserved flag bits set"));
            }
            if f.len() < ERROR_FIXED {
                return Err(ProtoError::Malformed("ERROR shorter than its fixed fields"));
            }
            let code = u16::from_be_bytes([f[6], f[7]]);
            let mlen = u16::from_be_bytes([f[8], f[9]]) as usize;
            if ERROR_FIXED + mlen != f.len() {
                return Err(ProtoError::Malformed("message length disagrees with frame length"));
            }
            // Lenient (a message is only shown), and bounded like the messages we send, so
            // that a received ERROR re-encodes to itself.
            let message = bounded_message(&String::from_utf8_lossy(&f[ERROR_FIXED..])).to_string();
            Ok(Frame::Error(ErrorFrame { code: error_code(code), fatal: flags & ERROR_FATAL != 0, message }))
        }
        kind::MCAST => {
            let h = McastHeader::parse(f)?;
            let group = group_at(MCAST_FIXED, h.group_len)?;
            Ok(Frame::Mcast(Mcast {
                sender: h.sender,
                seq: h.seq,
                order: h.order,
                group,
                payload: frame.slice(MCAST_FIXED + h.group_len..),
            }))
        }
        kind::VIEW => {
            no_flags()?;
            if f.len() < VIEW_FIXED {
                return Err(ProtoError::Malformed("VIEW shorter than its fixed fields"));
            }
            let cause = cause_of(f[6])?;
            let glen = f[7] as usize;
            let mut c = &f[8..VIEW_FIXED];
            let view_id = c.get_u64();
            let group_seq = c.get_u64();
            let subject = SessionId(c.get_u64());
            let count = c.get_u32() as usize;
            let group = group_at(VIEW_FIXED, glen)?;
            // Each member takes at least 9 bytes: bound the allocation by what is present.
            let mut at = VIEW_FIXED + glen;
            if count > (f.len() - at) / 9 {
                return Err(ProtoError::Malformed("member count exceeds frame length"));
            }
            let mut members = Vec::with_capacity(count);
            for _ in 0..count {
                if at + 9 > f.len() {
                    return Err(ProtoError::Malformed("member runs past the frame"));
                }
                let session = SessionId(be_u64(&f[at..at + 8]));
                let nlen = f[at + 8] as usize;
                let name = name_at(at + 9, nlen)?;
                at += 9 + nlen;
                members.push(Member { session, name });
            }
            if at != f.len() {
                return Err(ProtoError::Malformed("trailing bytes after members"));
            }
            Ok(Frame::View(View { cause, group, view_id, group_seq, subject, members }))
        }
        kind::GAP => {
            no_flags()?;
            if f.len() < GAP_FIXED {
                return Err(ProtoError::Malformed("GAP shorter than its fixed fields"));
            }
            let reason = match f[6] {
                1 => GapReason::LinkLost,
                2 => GapReason::Reconnected,
                3 => GapReason::ServerLost,
                _ => return Err(ProtoError::Malformed("unknown gap reason")),
            };
            let glen = f[7] as usize;
            if GAP_FIXED + glen != f.len() {
                return Err(ProtoError::Malformed("group length disagrees with frame length"));
            }
            let mut c = &f[8..GAP_FIXED];
            let sender = SessionId(c.get_u64());
            let first = c.get_u64();
            let last = c.get_u64();
            let group = group_at(GAP_FIXED, glen)?;
            Ok(Frame::Gap(Gap { reason, group, sender, first, last }))
        }
        kind::PEER_JOIN => {
            no_flags()?;
            if f.len() < 25 {
                return Err(ProtoError::Malformed("PEER_JOIN shorter than its fixed fields"));
            }
            let cause = cause_of(f[6])?;
            let glen = f[7] as usize;
            let session = SessionId(be_u64(&f[8..16]));
            let version = be_u64(&f[16..24]);
            let nlen = f[24] as usize;
            if 25 + glen + nlen != f.len() {
                return Err(ProtoError::Malformed("PEER_JOIN lengths disagree with frame length"));
            }
            let group = group_at(25, glen)?;
            let name = name_at(25 + glen, nlen)?;
            Ok(Frame::PeerJoin(PeerJoin { cause, group, member: Member { session, name }, version }))
        }
        kind::PEER_LEAVE => {
            no_flags()?;
            if f.len() < 24 {
                return Err(ProtoError::Malformed("PEER_LEAVE shorter than its fixed fields"));
            }
            let cause = cause_of(f[6])?;
            let glen = f[7] as usize;
            if 24 + glen != f.len() {
                return Err(ProtoError::Malformed("PEER_LEAVE group length disagrees with frame length"));
            }
            let session = SessionId(be_u64(&f[8..16]));
            let version = be_u64(&f[16..24]);
            let group = group_at(24, glen)?;
            Ok(Frame::PeerLeave(PeerLeave { cause, group, session, version }))
        }
        kind::PEER_STATE => {
            if flags & !STATE_MORE != 0 {
                return Err(ProtoError::Malformed("reserved flag bits set"));
            }
            if f.len() < 22 {
                return Err(ProtoError::Malformed("PEER_STATE shorter than its fixed fields"));
            }
            let shard = u16::from_be_bytes([f[6], f[7]]);
            let shards = u16::from_be_bytes([f[8], f[9]]);
            if shards == 0 || shard >= shards {
                return Err(ProtoError::Malformed("PEER_STATE shard out of range"));
            }
            let version = be_u64(&f[10..18]);
            let count = u32::from_be_bytes([f[18], f[19], f[20], f[21]]) as usize;
            let mut at = 22;
            // Each entry takes at least 18 bytes: bound the allocation by what is present.
            if count > (f.len() - at) / 18 {
                return Err(ProtoError::Malformed("PEER_STATE count exceeds frame length"));
            }
            let mut views = Vec::with_capacity(count);
            for _ in 0..count {
                let Some(&glen) = f.get(at) else {
                    return Err(ProtoError::Malformed("PEER_STATE entry runs past the frame"));
                };
                let glen = glen as usize;
                if at + 1 + glen + 16 > f.len() {
                    return Err(ProtoError::Malformed("PEER_STATE entry runs past the frame"));
                }
                let group = group_at(at + 1, glen)?;
                let id = be_u64(&f[at + 1 + glen..at + 9 + glen]);
                let digest = be_u64(&f[at + 9 + glen..at + 17 + glen]);
                views.push((group, id, digest));
                at += 17 + glen;
            }
            if at != f.len() {
                return Err(ProtoError::Malformed("trailing bytes after PEER_STATE entries"));
            }
            Ok(Frame::PeerState(PeerState { shard, shards, more: flags & STATE_MORE != 0, version, views }))
        }
        kind::PEER_CHALLENGE | kind::PEER_PROOF => {
            no_flags()?;
            if body.len() != 2 * AUTH_LEN {
                return Err(ProtoError::Malformed("PEER_CHALLENGE/PEER_PROOF body is not 64 bytes"));
            }
            let mut a = PeerAuth { nonce: [0; AUTH_LEN], mac: [0; AUTH_LEN] };
            a.nonce.copy_from_slice(&body[..AUTH_LEN]);
            a.mac.copy_from_slice(&body[AUTH_LEN..]);
            Ok(if k == kind::PEER_CHALLENGE { Frame::PeerChallenge(a) } else { Frame::PeerProof(a) })
        }
        kind::PEER_TOPO => {
            no_flags()?;
            const FIXED: usize = HEADER_LEN + 35;
            if f.len() < FIXED {
                return Err(ProtoError::Malformed("PEER_TOPO shorter than its fixed fields"));
            }
            let mut c = &f[HEADER_LEN..FIXED];
            let origin = NodeTag(c.get_u32());
            let version = c.get_u64();
            let boot = c.get_u64();
            let epoch = c.get_u64();
            let leader = NodeTag(c.get_u32());
            let name_len = c.get_u8() as usize;
            let count = c.get_u16() as usize;
            if FIXED + name_len + 4 * count != f.len() {
                return Err(ProtoError::Malformed("PEER_TOPO lengths disagree with frame length"));
            }
            let name = name_at(FIXED, name_len)?;
            let neighbors = tags_at(&f[FIXED + name_len..]);
            Ok(Frame::PeerTopo(PeerTopo { origin, version, boot, epoch, leader, name, neighbors }))
        }
        kind::PEER_CONFIG => {
            no_flags()?;
            const FIXED: usize = HEADER_LEN + 14;
            if f.len() < FIXED {
                return Err(ProtoError::Malformed("PEER_CONFIG shorter than its fixed fields"));
            }
            let mut c = &f[HEADER_LEN..FIXED];
            let leader = NodeTag(c.get_u32());
            let epoch = c.get_u64();
            let count = c.get_u16() as usize;
            if FIXED + 4 * count != f.len() {
                return Err(ProtoError::Malformed("PEER_CONFIG count disagrees with frame length"));
            }
            Ok(Frame::PeerConfig(PeerConfig { leader, epoch, members: tags_at(&f[FIXED..]) }))
        }
        kind::PEER_ACK => {
            no_flags()?;
            if body.len() != 8 {
                return Err(ProtoError::Malformed("PEER_ACK body is not 8 bytes"));
            }
            Ok(Frame::PeerAck(be_u64(body)))
        }
        kind::PEER_RELAY => {
            if flags & !(RELAY_RESENT | RELAY_PASSED) != 0 {
                return Err(ProtoError::Malformed("reserved flag bits set"));
            }
            if f.len() < RELAY_HEADER {
                return Err(ProtoError::Malformed("PEER_RELAY shorter than its fixed fields"));
            }
            let origin = NodeTag(u32::from_be_bytes([f[6], f[7], f[8], f[9]]));
            let dest = NodeTag(u32::from_be_bytes([f[10], f[11], f[12], f[13]]));
            let hops = f[14];
            let resent = flags & RELAY_RESENT != 0;
            let passed = flags & RELAY_PASSED != 0;
            Ok(Frame::PeerRelay(PeerRelay {
                origin,
                dest,
                hops,
                resent,
                passed,
                frames: frame.slice(RELAY_HEADER..),
            }))
        }
        kind::PEER_STAMP => {
            no_flags()?;
            if f.len() < 15 {
                return Err(ProtoError::Malformed("PEER_STAMP shorter than its fixed fields"));
            }
            let glen = f[14] as usize;
            if 15 + glen != f.len() {
                return Err(ProtoError::Malformed("PEER_STAMP group length disagrees with frame length"));
            }
            let view_id = be_u64(&f[6..14]);
            Ok(Frame::PeerStamp(PeerStamp { group: group_at(15, glen)?, view_id }))
        }
        kind::PEER_MARK => {
            if flags & !(MARK_MORE | MARK_LOST | MARK_ASK | MARK_ANSWER) != 0 {
                return Err(ProtoError::Malformed("reserved flag bits set"));
            }
            if f.len() < MARK_FIXED {
                return Err(ProtoError::Malformed("PEER_MARK shorter than its fixed fields"));
            }
            let mut c = &f[HEADER_LEN..MARK_FIXED];
            let view_id = c.get_u64();
            let prev = c.get_u64();
            let shard = c.get_u16();
            let shards = c.get_u16();
            let glen = c.get_u8() as usize;
            let rest = f.len().saturating_sub(MARK_FIXED + glen);
            if f.len() < MARK_FIXED + glen || rest % MARK_END_LEN != 0 {
                return Err(ProtoError::Malformed("PEER_MARK lengths disagree with frame length"));
            }
            if shard >= shards {
                return Err(ProtoError::Malformed("PEER_MARK shard out of range"));
            }
            let group = group_at(MARK_FIXED, glen)?;
            let ends = f[MARK_FIXED + glen..]
                .chunks_exact(MARK_END_LEN)
                .map(|e| SenderEnd {
                    sender: SessionId(be_u64(&e[..8])),
                    first: be_u64(&e[8..16]),
                    seq: be_u64(&e[16..24]),
                    stamp: be_u64(&e[24..]),
                })
                .collect();
            Ok(Frame::PeerMark(PeerMark {
                group,
                view_id,
                prev,
                shard,
                shards,
                more: flags & MARK_MORE != 0,
                lost: flags & MARK_LOST != 0,
                ask: flags & MARK_ASK != 0,
                answer: flags & MARK_ANSWER != 0,
                ends,
            }))
        }
        other => Err(ProtoError::UnknownKind(other)),
    }
}

/// Node tags packed as big-endian u32s (the caller checked the length is a multiple of 4).
fn tags_at(b: &[u8]) -> Vec<NodeTag> {
    b.chunks_exact(4).map(|c| NodeTag(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))).collect()
}

/// Longest ERROR message sent or kept, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// `message` cut to at most [`MAX_ERROR_MESSAGE`] bytes, at a char boundary.
fn bounded_message(message: &str) -> &str {
    let mut end = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

fn cause_of(b: u8) -> Result<Cause, ProtoError> {
    Ok(match b {
        1 => Cause::Join,
        2 => Cause::Leave,
        3 => Cause::Disconnect,
        4 => Cause::Network,
        _ => return Err(ProtoError::Malformed("unknown view cause")),
    })
}

fn error_code(code: u16) -> ErrorCode {
    use ErrorCode::*;
    match code {
        1 => Malformed,
        2 => UnknownKind,
        3 => TooLarge,
        4 => BadHandshake,
        5 => Unexpected,
        6 => BadGroup,
        7 => BadSender,
        8 => BadSequence,
        9 => AlreadyMember,
        10 => NotMember,
        11 => Stuck,
        12 => IdleTimeout,
        13 => ShuttingDown,
        14 => LimitReached,
        15 => HandshakeTimeout,
        16 => NotAuthorized,
        17 => Draining,
        _ => Other,
    }
}
