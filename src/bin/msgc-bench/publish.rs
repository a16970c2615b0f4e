//! Publisher threads: each drives several publisher connections on non-blocking sockets,
//! waiting in `ppoll` (nanosecond timeouts, 1 µs timer slack) so that paced runs send on
//! time. A publisher's socket has exactly one writer, this thread, which also reads and
//! answers what the server sends back (a NATS PING gets its PONG between two whole
//! messages, never inside one). No async runtime and no measurement logic beyond counting.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};

use crate::cpu::{sample_this_thread, ThreadSample, ThreadUse};
use crate::fanout::{ns, Shared, Window};
use crate::stats::stamp;
use crate::targets::{next_reply, publisher_handshake, Encoder, Reply, Target, SEND_BUFFER};

/// Bytes encoded at once at max rate, and the most a paced publisher encodes in one go.
const BATCH: usize = 64 * 1024;
/// A paced publisher that cannot write stops queueing once this much is pending; the
/// messages it holds back are sent late and their lateness counts as latency.
const MAX_PENDING: usize = 4 << 20;
/// How long a publisher may take to write out what it encoded before the window closed.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);
/// How long a publisher waits, after its last byte, for the server to close the connection
/// in answer to its own close (the server has then read and handled everything).
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);
/// Longest single wait, so the window's edges are noticed promptly.
const MAX_WAIT_NS: u64 = 50_000_000;

/// One publisher connection, connected and through its handshake.
pub struct PubConn {
    target: Target,
    stream: TcpStream,
    /// Index in the run (its stamp's publisher field).
    pub index: u32,
    encoder: Encoder,
    seq: u64,
    out: BytesMut,
    inbound: BytesMut,
    /// Pacing: this publisher's first message is due at the window's start plus this.
    phase_ns: u64,
    failed: Option<String>,
    /// Our side is shut down for writing; waiting for the server's end of file.
    closing: bool,
    /// The server closed its side after ours.
    closed: bool,
}

impl PubConn {
    pub fn connect(
        target: &Target,
        index: usize,
        publishers: usize,
        group: &str,
        size: usize,
        interval_ns: f64,
    ) -> Result<PubConn, String> {
        let addr = target.addr(index);
        let mut stream =
            TcpStream::connect(addr).map_err(|e| format!("publisher cannot connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        // Like the msgc client (SO_SNDBUF = tcpbuf_size): a publisher's own kernel buffer
        // is not allowed to hide megabytes of queueing from the latency figures.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        let (session, rest) =
            publisher_handshake(target, &mut stream, index).map_err(|e| format!("publisher {addr}: {e}"))?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(PubConn {
            target: target.clone(),
            stream,
            index: index as u32,
            encoder: Encoder::new(target, session, group, size)?,
            seq: 0,
            out: BytesMut::with_capacity(2 * BATCH),
            inbound: BytesMut::from(&rest[..]),
            // Spread the publishers' sends evenly over one interval.
            phase_ns: (interval_ns * index as f64 / publishers.max(1) as f64) as u64,
            failed: None,
            closing: false,
            closed: false,
        })
    }

    fn due(&self, k: u64, start: u64, interval_ns: f64) -> u64 {
        start + self.phase_ns + (k as f64 * interval_ns) as u64
    }

    /// Sends one probe (a payload stamped [`crate::stats::PROBE_SEQ`]) before the run, and
    /// handles what the server sent meanwhile. A probe is skipped while the last one is
    /// still unwritten, so probing queues nothing behind a server that does not read.
    pub fn probe(&mut self, payload: &[u8]) -> Result<(), String> {
        if self.out.is_empty() {
            self.encoder.encode(&mut self.out, payload);
        }
        self.flush();
        self.read_replies();
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Writes as much of `out` as the socket takes. False when it would block.
    fn flush(&mut self) -> bool {
        while !self.out.is_empty() && self.failed.is_none() {
            match self.stream.write(&self.out) {
                Ok(0) => self.failed = Some("the server closed the connection".into()),
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => self.failed = Some(e.to_string()),
            }
        }
        true
    }

    /// Reads and handles what the server sent.
    fn read_replies(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) if self.closing => {
                    self.closed = true;
                    break;
                }
                Ok(0) => {
                    self.failed.get_or_insert_with(|| "the server closed the connection".into());
                    return;
                }
                Ok(n) => self.inbound.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed.get_or_insert(e.to_string());
                    return;
                }
            }
        }
        self.handle_replies();
    }

    fn handle_replies(&mut self) {
        loop {
            match next_reply(&self.target, &mut self.inbound) {
                // `out` only ever holds whole messages, so the PONG lands between two.
                Ok(Some(Reply::Ping)) => self.out.extend_from_slice(b"PONG\r\n"),
                Ok(Some(Reply::Error(e))) => {
                    self.failed.get_or_insert(format!("server error: {e}"));
                }
                Ok(Some(Reply::Other)) => {}
                Ok(None) => break,
                Err(e) => {
                    self.failed.get_or_insert(e);
                    break;
                }
            }
        }
    }
}

/// What one publisher thread did.
pub struct PubThreadResult {
    /// Per publisher: (index, last sequence number if everything encoded was written).
    pub finals: Vec<(u32, Option<u64>)>,
    pub errors: Vec<String>,
    pub cpu: Option<ThreadUse>,
}

/// Runs `conns` until the window closes, then writes out what is pending (bounded).
/// `rate_per_publisher` 0 means as fast as the connections accept.
pub fn run_thread(
    mut conns: Vec<PubConn>,
    size: usize,
    interval_ns: f64,
    window: Window,
    shared: &Shared,
) -> PubThreadResult {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes an unsigned long and affects this thread only.
    // 1 µs instead of the default 50 µs lets ppoll wake when a paced message is due.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
    let paced = interval_ns > 0.0;
    for c in conns.iter_mut() {
        // What arrived with the handshake's last reply.
        c.handle_replies();
    }
    let mut payload = vec![0u8; size];
    let mut cpu_from: Option<ThreadSample> = None;
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let cpu_until = loop {
        let now = ns();
        if cpu_from.is_none() && now >= window.from {
            cpu_from = sample_this_thread(now);
        }
        // At the close, a paced publisher still sends what was due before it (late, if this
        // thread was held up), so a run publishes exactly its schedule.
        let closing = now >= window.until;
        let mut counted = 0;
        let mut next_due = now + MAX_WAIT_NS;
        for c in conns.iter_mut().filter(|c| c.failed.is_none()) {
            if !paced {
                // Max rate: a new batch once the last one is written, stamped with now.
                if c.out.is_empty() && !closing {
                    while c.out.len() < BATCH {
                        c.seq += 1;
                        stamp(&mut payload, now, c.index, c.seq);
                        c.encoder.encode(&mut c.out, &payload);
                        counted += u64::from(now >= window.from);
                    }
                }
            } else {
                // Paced: every message that is due, stamped with the time it was due.
                let mut added = 0;
                loop {
                    let at = c.due(c.seq, window.start, interval_ns);
                    if at > now || at >= window.until {
                        next_due = next_due.min(at);
                        break;
                    }
                    if c.out.len() >= MAX_PENDING {
                        // Blocked: woken by writability.
                        break;
                    }
                    if added >= BATCH && !closing {
                        // More is due: come back at once, after a look at the others.
                        next_due = now;
                        break;
                    }
                    c.seq += 1;
                    stamp(&mut payload, at, c.index, c.seq);
                    let before = c.out.len();
                    c.encoder.encode(&mut c.out, &payload);
                    added += c.out.len() - before;
                    counted += u64::from(at >= window.from);
                }
            }
            c.flush();
        }
        shared.published.fetch_add(counted, Ordering::Relaxed);
        if closing {
            break sample_this_thread(now);
        }
        // Wait for writability of blocked connections, replies, or the next due message.
        let boundary = if now < window.from { window.from } else { window.until };
        let mut wake = boundary.min(next_due);
        let any_idle_max_rate = !paced && conns.iter().any(|c| c.failed.is_none() && c.out.is_empty());
        if any_idle_max_rate {
            wake = now;
        }
        poll(&mut conns, &mut fds, wake.saturating_sub(now));
    };
    // Write out what was encoded before the window closed, so every counted message is sent.
    let deadline = ns() + FLUSH_DEADLINE.as_nanos() as u64;
    loop {
        let mut pending = false;
        for c in conns.iter_mut().filter(|c| c.failed.is_none()) {
            pending |= !c.flush();
        }
        let now = ns();
        if !pending || now >= deadline {
            break;
        }
        poll(&mut conns, &mut fds, (deadline - now).min(MAX_WAIT_NS));
    }
    // Close gracefully: our end of file, then the server's. Closing a socket with replies
    // still unread (Redis answers every PUBLISH) sends a reset, and a reset makes the server
    // drop whatever it had not read yet: the tail of the run would be lost.
    for c in conns.iter_mut().filter(|c| c.failed.is_none() && c.out.is_empty()) {
        match c.stream.shutdown(std::net::Shutdown::Write) {
            Ok(()) => c.closing = true,
            Err(e) => c.failed = Some(format!("cannot close: {e}")),
        }
    }
    let deadline = ns() + CLOSE_DEADLINE.as_nanos() as u64;
    loop {
        let now = ns();
        if !conns.iter().any(|c| c.closing && !c.closed && c.failed.is_none()) || now >= deadline {
            break;
        }
        poll(&mut conns, &mut fds, (deadline - now).min(MAX_WAIT_NS));
    }
    for c in conns.iter_mut().filter(|c| c.closing && !c.closed && c.failed.is_none()) {
        c.failed = Some(format!("the server did not finish within {CLOSE_DEADLINE:?} of the last message"));
    }
    let cpu = match (cpu_from, cpu_until) {
        (Some(a), Some(b)) => ThreadUse::between(a, b),
        _ => None,
    };
    let mut errors = Vec::new();
    let finals = conns
        .iter()
        .map(|c| {
            if let Some(e) = &c.failed {
                errors.push(format!("publisher {}: {e}", c.index));
            }
            let complete = c.failed.is_none() && c.out.is_empty() && c.closed;
            (c.index, complete.then_some(c.seq))
        })
        .collect();
    PubThreadResult { finals, errors, cpu }
}

/// Waits up to `timeout_ns` for any connection to become writable (if it has output
/// pending) or readable, then reads what arrived.
fn poll(conns: &mut [PubConn], fds: &mut Vec<libc::pollfd>, timeout_ns: u64) {
    fds.clear();
    for c in conns.iter() {
        let mut events = libc::POLLIN;
        if !c.out.is_empty() {
            events |= libc::POLLOUT;
        }
        // A negative fd is skipped by ppoll.
        let fd = if c.failed.is_none() && !c.closed { c.stream.as_raw_fd() } else { -1 };
        fds.push(libc::pollfd { fd, events, revents: 0 });
    }
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `fds` is a valid array of `fds.len()` pollfds and `ts` a valid timespec; a
    // null signal mask leaves the thread's mask unchanged.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
    if n <= 0 {
        return;
    }
    for (c, fd) in conns.iter_mut().zip(fds.iter()) {
        if fd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
            c.read_replies();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A fake nats-server on loopback that checks every byte a publisher sends: only whole
    /// `PUB` messages and `PONG`s may arrive. While the publisher writes, it sends up to
    /// `pings` PINGs. Returns (messages, pongs) once the publisher closes.
    fn strict_nats_server(listener: TcpListener, size: usize, pings: u32) -> Result<(u64, u32), String> {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        s.write_all(b"INFO {}\r\n").map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut line = String::new();
        let next_line = |r: &mut BufReader<TcpStream>, line: &mut String| -> Result<usize, String> {
            line.clear();
            r.read_line(line).map_err(|e| e.to_string())
        };
        next_line(&mut r, &mut line)?;
        if !line.starts_with("CONNECT ") {
            return Err(format!("expected CONNECT, got {line:?}"));
        }
        next_line(&mut r, &mut line)?;
        if line != "PING\r\n" {
            return Err(format!("expected PING, got {line:?}"));
        }
        s.write_all(b"PONG\r\n").map_err(|e| e.to_string())?;
        let (mut msgs, mut pongs, mut pinged) = (0u64, 0u32, 0u32);
        let mut payload = vec![0u8; size + 2];
        while next_line(&mut r, &mut line)? > 0 {
            if line == "PONG\r\n" {
                pongs += 1;
            } else if line == format!("PUB bench.g0 {size}\r\n") {
                r.read_exact(&mut payload).map_err(|e| format!("payload {msgs}: {e}"))?;
                if &payload[size..] != b"\r\n" {
                    return Err(format!("message {msgs} does not end with CRLF"));
                }
                msgs += 1;
                if msgs % 500 == 0 && pinged < pings {
                    pinged += 1;
                    s.write_all(b"PING\r\n").map_err(|e| e.to_string())?;
                }
            } else {
                return Err(format!("unexpected bytes after {msgs} messages: {line:?}"));
            }
        }
        Ok((msgs, pongs))
    }

    fn shared() -> Shared {
        Shared::default()
    }

    #[test]
    fn a_nats_publisher_answers_pings_between_whole_messages() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target::Nats(vec![listener.local_addr().unwrap()]);
        let server = std::thread::spawn(move || strict_nats_server(listener, 64, 3));
        let conn = PubConn::connect(&target, 0, 1, "bench.g0", 64, 0.0).unwrap();
        let now = ns();
        // Long enough for the 1500 messages that draw three PINGs even on a loaded machine.
        let window = Window { start: now, from: now, until: now + 2_000_000_000 };
        let shared = shared();
        let r = run_thread(vec![conn], 64, 0.0, window, &shared);
        let (msgs, pongs) = server.join().unwrap().unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(msgs >= 1500, "the PINGs need 1500 messages; {msgs} arrived");
        assert_eq!(r.finals, vec![(0, Some(msgs))], "every message encoded arrived whole");
        assert_eq!(pongs, 3);
        assert!(shared.published.load(Ordering::Relaxed) <= msgs);
    }

    #[test]
    fn a_paced_publisher_sends_exactly_its_schedule() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target::Nats(vec![listener.local_addr().unwrap()]);
        let server = std::thread::spawn(move || strict_nats_server(listener, 32, 0));
        // One message per millisecond for 200 ms, 50 ms of it before the window.
        let conn = PubConn::connect(&target, 0, 1, "bench.g0", 32, 1e6).unwrap();
        let now = ns();
        let window = Window { start: now, from: now + 50_000_000, until: now + 200_000_000 };
        let shared = shared();
        let r = run_thread(vec![conn], 32, 1e6, window, &shared);
        let (msgs, _) = server.join().unwrap().unwrap();
        assert_eq!(msgs, 200);
        assert_eq!(r.finals, vec![(0, Some(200))]);
        assert_eq!(shared.published.load(Ordering::Relaxed), 150, "only the window's messages count");
    }

    #[test]
    fn a_server_error_is_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target::Nats(vec![listener.local_addr().unwrap()]);
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut r = BufReader::new(s.try_clone()?);
            let mut line = String::new();
            r.read_line(&mut line)?; // CONNECT
            r.read_line(&mut line)?; // PING
            s.write_all(b"PONG\r\n-ERR 'Maximum Payload Violation'\r\n")?;
            // Read until the publisher gives up (bounded by the read timeout).
            let mut sink = [0u8; 65536];
            while r.get_mut().read(&mut sink)? > 0 {}
            Ok(())
        });
        let conn = PubConn::connect(&target, 0, 1, "bench.g0", 32, 0.0).unwrap();
        let now = ns();
        let window = Window { start: now, from: now, until: now + 200_000_000 };
        let r = run_thread(vec![conn], 32, 0.0, window, &shared());
        server.join().unwrap().unwrap();
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(r.errors[0].contains("Maximum Payload Violation"), "{:?}", r.errors);
        assert_eq!(r.finals, vec![(0, None)], "a failed publisher's tail is not checked");
    }

    /// A fake redis-server that answers every PUBLISH (as Redis does) and counts them until
    /// the publisher closes.
    fn counting_redis_server(listener: TcpListener, size: usize) -> Result<u64, String> {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let head = format!("*3\r\n$7\r\nPUBLISH\r\n$8\r\nbench.g0\r\n${size}\r\n");
        let mut msg = vec![0u8; head.len() + size + 2];
        let mut count = 0;
        loop {
            match r.read_exact(&mut msg[..1]) {
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(count),
                Err(e) => return Err(format!("after {count} messages: {e}")),
                Ok(()) => {}
            }
            r.read_exact(&mut msg[1..]).map_err(|e| format!("message {count}: {e}"))?;
            if !msg.starts_with(head.as_bytes()) || !msg.ends_with(b"\r\n") {
                return Err(format!("message {count} is not a whole PUBLISH"));
            }
            count += 1;
            // Every reply is left for the publisher to read (or not).
            s.write_all(b":8\r\n").map_err(|e| e.to_string())?;
        }
    }

    #[test]
    fn the_tail_reaches_a_server_that_answers_every_message() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target::Redis(listener.local_addr().unwrap());
        let server = std::thread::spawn(move || counting_redis_server(listener, 100));
        let conn = PubConn::connect(&target, 0, 1, "bench.g0", 100, 0.0).unwrap();
        let now = ns();
        let window = Window { start: now, from: now, until: now + 300_000_000 };
        let r = run_thread(vec![conn], 100, 0.0, window, &shared());
        let count = server.join().unwrap().unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(count > 0);
        assert_eq!(r.finals, vec![(0, Some(count))], "the server read every message, the last ones included");
    }
}
