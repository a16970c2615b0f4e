//! The three systems the benchmark drives, each in its own protocol: msgc, NATS and Redis.
//! Publishers use blocking sockets on their own threads (precise pacing); subscribers are
//! tokio tasks that parse frames in place without allocating per message.

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
const SEND_BUFFER: usize = 131072;

/// A publisher's connection: encodes messages in the target's protocol.
pub struct Publisher {
    target: Target,
    stream: TcpStream,
    session: SessionId,
    group: GroupName,
    seq: u64,
}

fn hello(name: &str) -> Vec<u8> {
    Frame::Hello(Handshake::client(Name::new(name).unwrap_or_default(), 64 << 20)).to_bytes().to_vec()
}

/// Reads one msgc frame from a blocking stream.
fn read_frame(stream: &mut TcpStream) -> std::io::Result<Frame> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > 64 << 20 {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut body = vec![0u8; n];
    stream.read_exact(&mut body)?;
    let mut all = BytesMut::from(&len[..]);
    all.extend_from_slice(&body);
    proto::decode(&mut all, 64 << 20)
        .map_err(std::io::Error::other)?
        .ok_or_else(|| std::io::Error::other("short frame"))
}

impl Publisher {
    pub fn connect(target: &Target, i: usize, group: &str) -> Result<Publisher, String> {
        let addr = target.addr(i);
        let mut stream =
            TcpStream::connect(addr).map_err(|e| format!("publisher cannot connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        // Like the msgc client (SO_SNDBUF = tcpbuf_size): a publisher's own kernel buffer
        // is not allowed to hide megabytes of queueing from the latency figures.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        let mut session = SessionId::NONE;
        match target {
            Target::Msgc(_) => {
                stream.write_all(&hello(&format!("pub{i}"))).map_err(|e| e.to_string())?;
                match read_frame(&mut stream).map_err(|e| format!("handshake with {addr}: {e}"))? {
                    Frame::Welcome(w) => session = w.id,
                    other => return Err(format!("{addr} answered HELLO with {}", other.name())),
                }
            }
            Target::Nats(_) => {
                stream
                    .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
                    .map_err(|e| e.to_string())?;
                // Replies (INFO, PING) are drained by a thread so the server never blocks on us.
                let mut r = stream.try_clone().map_err(|e| e.to_string())?;
                let mut w = stream.try_clone().map_err(|e| e.to_string())?;
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = r.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if buf[..n].windows(4).any(|x| x == b"PING") && w.write_all(b"PONG\r\n").is_err() {
                            break;
                        }
                    }
                });
            }
            Target::Redis(_) => {
                // PUBLISH replies (subscriber counts) are drained by a thread.
                let mut r = stream.try_clone().map_err(|e| e.to_string())?;
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        }
        let group = GroupName::new(group).map_err(|e| e.to_string())?;
        Ok(Publisher { target: target.clone(), stream, session, group, seq: 0 })
    }

    /// Appends one message to `out`.
    pub fn encode(&mut self, out: &mut Vec<u8>, payload: &[u8]) {
        self.seq += 1;
        match self.target {
            Target::Msgc(_) => {
                let mut b = BytesMut::with_capacity(payload.len() + 64);
                encode_mcast(&mut b, self.session, self.seq, &self.group, payload);
                out.extend_from_slice(&b);
            }
            Target::Nats(_) => {
                out.extend_from_slice(format!("PUB {} {}\r\n", self.group, payload.len()).as_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
            }
            Target::Redis(_) => {
                let g = self.group.as_str();
                out.extend_from_slice(
                    format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{g}\r\n${}\r\n", g.len(), payload.len())
                        .as_bytes(),
                );
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
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
}
