//! The three systems the benchmark drives, each in its own protocol (msgc, NATS, Redis):
//! handshakes, message encoding, and parsers for what subscribers and publishers receive,
//! which work in place without allocating per message. No threads or timing here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use bytes::{Buf, BytesMut};
use msgc::proto::{self, encode_mcast, Frame, GroupName, Handshake, McastHeader, Name, SessionId};

/// Which system, and where.
#[derive(Clone, Debug)]
pub enum Target {
    Msgc(Vec<SocketAddr>),
    /// One server, or a cluster (`nats://a:4222,b:4222`).
    Nats(Vec<SocketAddr>),
    Redis(SocketAddr),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Msgc(_) => "msgc",
            Target::Nats(_) => "nats",
            Target::Redis(_) => "redis",
        }
    }

    /// The address of the `i`-th publisher: round-robin over a cluster, from the first.
    pub fn addr(&self, i: usize) -> SocketAddr {
        match self {
            Target::Msgc(all) | Target::Nats(all) => all[i % all.len()],
            Target::Redis(a) => *a,
        }
    }

    /// The address of the `i`-th subscriber: round-robin over the servers after the first
    /// in a cluster (so traffic crosses it), else the only one.
    pub fn subscriber_addr(&self, i: usize) -> SocketAddr {
        match self {
            Target::Msgc(all) | Target::Nats(all) if all.len() > 1 => all[1 + i % (all.len() - 1)],
            _ => self.addr(i),
        }
    }
}

/// Publisher socket send buffer, the msgc client's default `tcpbuf_size`.
pub const SEND_BUFFER: usize = 131072;
/// Largest msgc frame the load generator accepts from a server.
const MAX_FRAME: usize = 64 << 20;

fn hello(name: &str) -> Vec<u8> {
    Frame::Hello(Handshake::client(Name::new(name).unwrap_or_default(), 64 << 20)).to_bytes().to_vec()
}

/// Reads one msgc frame from a blocking stream.
fn read_frame(stream: &mut TcpStream) -> std::io::Result<Frame> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut body = vec![0u8; n];
    stream.read_exact(&mut body)?;
    let mut all = BytesMut::from(&len[..]);
    all.extend_from_slice(&body);
    proto::decode(&mut all, MAX_FRAME)
        .map_err(std::io::Error::other)?
        .ok_or_else(|| std::io::Error::other("short frame"))
}

/// Reads CRLF-terminated lines from a blocking stream until `done` accepts one, answering
/// the server's PINGs (NATS) on the way. Returns the bytes read after that line.
fn read_lines_until(
    stream: &mut TcpStream,
    mut done: impl FnMut(&[u8]) -> Result<bool, String>,
) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(eol) = find_crlf(&buf, 0) {
            let line: Vec<u8> = buf.drain(..eol + 2).take(eol).collect();
            if line == b"PING" {
                stream.write_all(b"PONG\r\n").map_err(|e| e.to_string())?;
            } else if done(&line)? {
                return Ok(buf);
            }
        }
        if buf.len() > 1 << 20 {
            return Err("a reply line longer than 1 MiB".into());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("the server closed the connection during the handshake".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Publisher `i`'s handshake on a fresh blocking connection; returns its msgc session id
/// (`NONE` for the other systems) and what the server sent after the handshake (to be
/// handled as replies). NATS publishers wait for the PONG to their PING, so the server has
/// processed CONNECT before the first PUB.
pub fn publisher_handshake(
    target: &Target,
    stream: &mut TcpStream,
    i: usize,
) -> Result<(SessionId, Vec<u8>), String> {
    match target {
        Target::Msgc(_) => {
            stream.write_all(&hello(&format!("pub{i}"))).map_err(|e| e.to_string())?;
            match read_frame(stream).map_err(|e| format!("handshake: {e}"))? {
                Frame::Welcome(w) => Ok((w.id, Vec::new())),
                other => Err(format!("answered HELLO with {}", other.name())),
            }
        }
        Target::Nats(_) => {
            stream
                .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
                .map_err(|e| e.to_string())?;
            let rest = read_lines_until(stream, |line| {
                if line.starts_with(b"-ERR") {
                    return Err(String::from_utf8_lossy(line).into_owned());
                }
                Ok(line == b"PONG")
            })?;
            Ok((SessionId::NONE, rest))
        }
        Target::Redis(_) => Ok((SessionId::NONE, Vec::new())),
    }
}

/// Encodes one publisher's messages in its target's protocol.
pub struct Encoder {
    target: Target,
    session: SessionId,
    group: GroupName,
    /// msgc: the frame sequence number.
    seq: u64,
    /// NATS and Redis: the constant bytes before each payload.
    prefix: Vec<u8>,
}

impl Encoder {
    pub fn new(target: &Target, session: SessionId, group: &str, size: usize) -> Result<Encoder, String> {
        let group = GroupName::new(group).map_err(|e| e.to_string())?;
        let g = group.as_str();
        let prefix = match target {
            Target::Msgc(_) => Vec::new(),
            Target::Nats(_) => format!("PUB {g} {size}\r\n").into_bytes(),
            Target::Redis(_) => {
                format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{g}\r\n${size}\r\n", g.len()).into_bytes()
            }
        };
        Ok(Encoder { target: target.clone(), session, group, seq: 0, prefix })
    }

    /// Appends one message to `out`.
    pub fn encode(&mut self, out: &mut BytesMut, payload: &[u8]) {
        self.seq += 1;
        match self.target {
            Target::Msgc(_) => encode_mcast(out, self.session, self.seq, &self.group, payload),
            Target::Nats(_) | Target::Redis(_) => {
                out.extend_from_slice(&self.prefix);
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// What a server sent back to a publisher.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// NATS keepalive: must be answered with PONG.
    Ping,
    /// The server refused something; the run reports it.
    Error(String),
    /// Anything else (msgc NOOP or views, NATS INFO/PONG/+OK, Redis subscriber counts).
    Other,
}

/// Takes the next complete reply from the front of a publisher's inbound buffer, or
/// `Ok(None)` if more bytes are needed.
pub fn next_reply(target: &Target, buf: &mut BytesMut) -> Result<Option<Reply>, String> {
    match target {
        Target::Msgc(_) => {
            let Some(size) = proto::frame_len(buf, MAX_FRAME).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            if buf.len() < size {
                return Ok(None);
            }
            let frame = buf.split_to(size);
            Ok(Some(if frame[4] == proto::kind::ERROR {
                Reply::Error(match proto::decode(&mut BytesMut::from(&frame[..]), MAX_FRAME) {
                    Ok(Some(f)) => format!("{f:?}"),
                    _ => "a malformed ERROR frame".into(),
                })
            } else {
                Reply::Other
            }))
        }
        Target::Nats(_) | Target::Redis(_) => {
            let Some(eol) = find_crlf(buf, 0) else { return Ok(None) };
            let line = buf.split_to(eol + 2);
            let line = &line[..eol];
            Ok(Some(if line == b"PING" && matches!(target, Target::Nats(_)) {
                Reply::Ping
            } else if line.starts_with(b"-") {
                Reply::Error(String::from_utf8_lossy(line).into_owned())
            } else {
                Reply::Other
            }))
        }
    }
}

/// What a subscriber's parser found in its buffer.
pub enum Item<'a> {
    Message(&'a [u8]),
    Gap,
    /// A membership view with this many members (msgc).
    View(usize),
    /// The subscription is confirmed (NATS PONG, Redis subscribe reply).
    Subscribed,
    Ping,
    Other,
}

/// The first bytes a subscriber sends.
pub fn subscribe_request(target: &Target, i: usize, group: &str) -> Vec<u8> {
    match target {
        Target::Msgc(_) => {
            let mut v = hello(&format!("sub{i}"));
            // invariant: benchmark group names are short ASCII.
            v.extend_from_slice(&Frame::Join(GroupName::new(group).expect("valid group")).to_bytes());
            v
        }
        Target::Nats(_) => {
            format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {group} {i}\r\nPING\r\n")
                .into_bytes()
        }
        Target::Redis(_) => format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{group}\r\n", group.len()).into_bytes(),
    }
}

/// Takes the next complete item from the front of `buf`, or `Ok(None)` if more bytes are
/// needed. `f` sees the item while its bytes are still in the buffer.
pub fn next_item<R>(
    target: &Target,
    buf: &mut BytesMut,
    f: impl FnOnce(Item) -> R,
) -> Result<Option<R>, String> {
    match target {
        Target::Msgc(_) => {
            let Some(size) = proto::frame_len(buf, 64 << 20).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            if buf.len() < size {
                return Ok(None);
            }
            let frame = &buf[..size];
            let r = match frame[4] {
                proto::kind::MCAST => {
                    let h = McastHeader::parse(frame).map_err(|e| e.to_string())?;
                    f(Item::Message(&frame[proto::MCAST_FIXED + h.group_len..]))
                }
                proto::kind::GAP => f(Item::Gap),
                proto::kind::VIEW if frame.len() >= 36 => {
                    f(Item::View(u32::from_be_bytes([frame[32], frame[33], frame[34], frame[35]]) as usize))
                }
                proto::kind::ERROR => {
                    return Err(format!(
                        "server error: {:?}",
                        proto::decode(&mut BytesMut::from(frame), 1 << 26)
                    ))
                }
                _ => f(Item::Other),
            };
            buf.advance(size);
            Ok(Some(r))
        }
        Target::Nats(_) => {
            let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
            let line = &buf[..eol];
            if line.starts_with(b"MSG ") {
                let text = std::str::from_utf8(line).map_err(|e| e.to_string())?;
                let n: usize = text.rsplit(' ').next().and_then(|x| x.parse().ok()).ok_or("bad MSG line")?;
                let total = eol + 2 + n + 2;
                if buf.len() < total {
                    return Ok(None);
                }
                let r = f(Item::Message(&buf[eol + 2..eol + 2 + n]));
                buf.advance(total);
                return Ok(Some(r));
            }
            let r = if line == b"PING" {
                f(Item::Ping)
            } else if line == b"PONG" {
                f(Item::Subscribed)
            } else if line.starts_with(b"-ERR") {
                return Err(String::from_utf8_lossy(line).into_owned());
            } else {
                f(Item::Other)
            };
            buf.advance(eol + 2);
            Ok(Some(r))
        }
        Target::Redis(_) => {
            // Pushes are arrays of three bulk strings: kind, channel, payload.
            let mut at = 0;
            let mut parts: [(usize, usize); 3] = [(0, 0); 3];
            let Some(eol) = find_crlf(buf, at) else { return Ok(None) };
            if buf.first() != Some(&b'*') {
                return Err(format!(
                    "unexpected reply from redis: {:?}",
                    String::from_utf8_lossy(&buf[..eol])
                ));
            }
            at = eol + 2;
            for part in parts.iter_mut() {
                let Some(eol) = find_crlf(buf, at) else { return Ok(None) };
                let head = &buf[at..eol];
                let (start, len) = match head.first() {
                    Some(b'$') => {
                        let n: usize = std::str::from_utf8(&head[1..])
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or("bad bulk length")?;
                        (eol + 2, n)
                    }
                    // The subscriber count in a subscribe confirmation is an integer.
                    Some(b':') => (at + 1, eol - at - 1),
                    _ => return Err("unexpected RESP element".into()),
                };
                if head.first() == Some(&b'$') {
                    if buf.len() < start + len + 2 {
                        return Ok(None);
                    }
                    at = start + len + 2;
                } else {
                    at = eol + 2;
                }
                *part = (start, len);
            }
            let kind = &buf[parts[0].0..parts[0].0 + parts[0].1];
            let r = match kind {
                b"message" => f(Item::Message(&buf[parts[2].0..parts[2].0 + parts[2].1])),
                b"subscribe" => f(Item::Subscribed),
                _ => f(Item::Other),
            };
            buf.advance(at);
            Ok(Some(r))
        }
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(target: &Target, bytes: &[u8]) -> Vec<String> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(s) = next_item(target, &mut buf, |i| match i {
            Item::Message(p) => format!("msg {}", String::from_utf8_lossy(p)),
            Item::Subscribed => "subscribed".into(),
            Item::Ping => "ping".into(),
            Item::Gap => "gap".into(),
            Item::View(n) => format!("view {n}"),
            Item::Other => "other".into(),
        })
        .unwrap()
        {
            out.push(s);
        }
        out
    }

    #[test]
    fn parses_nats_and_redis_replies() {
        let nats = Target::Nats(vec!["127.0.0.1:1".parse().unwrap()]);
        assert_eq!(
            items(&nats, b"INFO {}\r\nPONG\r\nMSG g 1 5\r\nhello\r\nPING\r\nMSG g 1 3\r\nab"),
            vec!["other", "subscribed", "msg hello", "ping"]
        );
        let redis = Target::Redis("127.0.0.1:1".parse().unwrap());
        assert_eq!(
            items(&redis, b"*3\r\n$9\r\nsubscribe\r\n$1\r\ng\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$1\r\ng\r\n$2\r\nhi\r\n*3\r\n$7\r\nmess"),
            vec!["subscribed", "msg hi"]
        );
    }

    fn replies(target: &Target, bytes: &[u8]) -> (Vec<Reply>, usize) {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(r) = next_reply(target, &mut buf).unwrap() {
            out.push(r);
        }
        (out, buf.len())
    }

    #[test]
    fn publisher_replies_are_recognised_and_partial_ones_kept() {
        let nats = Target::Nats(vec!["127.0.0.1:1".parse().unwrap()]);
        let (r, left) = replies(&nats, b"INFO {}\r\nPING\r\n-ERR 'Slow Consumer'\r\nPI");
        assert_eq!(r, vec![Reply::Other, Reply::Ping, Reply::Error("-ERR 'Slow Consumer'".into())]);
        assert_eq!(left, 2);
        let redis = Target::Redis("127.0.0.1:1".parse().unwrap());
        let (r, _) = replies(&redis, b":8\r\n-ERR wrong\r\nPING\r\n");
        assert_eq!(r, vec![Reply::Other, Reply::Error("-ERR wrong".into()), Reply::Other]);
        let msgc = Target::Msgc(vec!["127.0.0.1:1".parse().unwrap()]);
        let mut bytes = Frame::Noop.to_bytes().to_vec();
        bytes.extend_from_slice(&proto::ErrorFrame::fatal(proto::ErrorCode::Malformed, "bad").to_bytes());
        let (r, left) = replies(&msgc, &bytes);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], Reply::Other);
        assert!(matches!(&r[1], Reply::Error(e) if e.contains("bad")), "{r:?}");
        assert_eq!(left, 0);
    }

    #[test]
    fn encodes_whole_messages_in_each_protocol() {
        let payload = b"0123456789";
        let mut out = BytesMut::new();
        let nats = Target::Nats(vec!["127.0.0.1:1".parse().unwrap()]);
        Encoder::new(&nats, SessionId::NONE, "bench.g0", 10).unwrap().encode(&mut out, payload);
        assert_eq!(&out[..], b"PUB bench.g0 10\r\n0123456789\r\n");
        out.clear();
        let redis = Target::Redis("127.0.0.1:1".parse().unwrap());
        Encoder::new(&redis, SessionId::NONE, "g", 10).unwrap().encode(&mut out, payload);
        assert_eq!(&out[..], b"*3\r\n$7\r\nPUBLISH\r\n$1\r\ng\r\n$10\r\n0123456789\r\n");
        out.clear();
        let msgc = Target::Msgc(vec!["127.0.0.1:1".parse().unwrap()]);
        let mut e = Encoder::new(&msgc, SessionId(7), "g", 10).unwrap();
        e.encode(&mut out, payload);
        e.encode(&mut out, payload);
        // Two frames a subscriber parses back to the same payloads.
        let got = items(&msgc, &out);
        assert_eq!(got, vec!["msg 0123456789", "msg 0123456789"]);
    }
}
