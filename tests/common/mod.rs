//! Test helpers: an in-process server on 127.0.0.1 port 0 and a raw protocol client that
//! waits with deadlines, never fixed sleeps.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use msgc::core::Limits;
use msgc::proto::{self, encode_mcast, Frame, GroupName, Handshake, Name, SessionId, View};
use msgc::runtime::{Backend, IoBackend, ServerHandle, ServerOptions};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// The I/O backend the servers of this test binary run on: `MSGC_TEST_IO=uring|epoll|auto`
/// if set; else epoll in the `epoll` test target (which reruns the server suites), else
/// auto (io_uring where the host allows it).
pub fn test_io() -> IoBackend {
    if let Some(io) = std::env::var("MSGC_TEST_IO").ok().and_then(|v| IoBackend::parse(&v)) {
        return io;
    }
    // This file is compiled into each test target; in tests/epoll.rs it sits below `epoll::`.
    if module_path!().starts_with("epoll::") {
        IoBackend::Epoll
    } else {
        IoBackend::Auto
    }
}

/// Server options for tests: 127.0.0.1, the test backend, unpinned threads, no peers.
pub fn test_options(name: &str, threads: usize, limits: Limits) -> ServerOptions {
    ServerOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        threads,
        pin_threads: false,
        limits,
        node_name: name.into(),
        io: test_io(),
        ..ServerOptions::default()
    }
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn start_server(threads: usize, limits: Limits) -> ServerHandle {
    start_node("test-node", threads, limits)
}

/// A server named `name` on 127.0.0.1 with a free port and no peers yet.
pub fn start_node(name: &str, threads: usize, limits: Limits) -> ServerHandle {
    init_logging();
    let server = ServerHandle::start(test_options(name, threads, limits)).expect("server starts");
    if test_io() == IoBackend::Epoll {
        assert_eq!(server.backend(), Backend::Epoll);
    }
    server
}

pub fn addr(s: &ServerHandle) -> SocketAddr {
    s.local_addrs()[0]
}

/// Raises the open-files limit to its hard maximum (many clients in one process).
pub fn raise_fd_limit() {
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// A client speaking the wire protocol directly, for precise control in tests.
pub struct RawClient {
    pub stream: TcpStream,
    pub session: SessionId,
    buf: BytesMut,
    seqs: std::collections::HashMap<String, u64>,
}

impl RawClient {
    pub fn connect(addr: SocketAddr, name: &str) -> RawClient {
        let mut c = RawClient::connect_raw(addr);
        c.send(&Frame::Hello(Handshake::client(Name::new(name).unwrap(), 1 << 20)));
        match c.next() {
            Some(Frame::Welcome(w)) => c.session = w.id,
            other => panic!("expected WELCOME, got {other:?}"),
        }
        c
    }

    /// A connected socket without a handshake.
    pub fn connect_raw(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        RawClient::from_stream(stream)
    }

    /// Wraps a socket connected (or accepted) elsewhere.
    pub fn from_stream(stream: TcpStream) -> RawClient {
        stream.set_nodelay(true).unwrap();
        RawClient { stream, session: SessionId::NONE, buf: BytesMut::new(), seqs: Default::default() }
    }

    pub fn send(&mut self, f: &Frame) {
        self.stream.write_all(&f.to_bytes()).expect("write");
    }

    pub fn send_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b)
    }

    pub fn join(&mut self, g: &str) {
        self.send(&Frame::Join(GroupName::new(g).unwrap()));
    }

    pub fn leave(&mut self, g: &str) {
        self.send(&Frame::Leave(GroupName::new(g).unwrap()));
    }

    /// Multicasts with the next sequence number for `g`; returns it.
    pub fn mcast(&mut self, g: &str, payload: &[u8]) -> u64 {
        let seq = self.seqs.entry(g.to_string()).or_insert(0);
        *seq += 1;
        let mut b = BytesMut::new();
        encode_mcast(&mut b, self.session, *seq, &GroupName::new(g).unwrap(), payload);
        self.stream.write_all(&b).expect("write");
        *seq
    }

    /// The next frame, or None at end of stream; panics after the deadline.
    pub fn next(&mut self) -> Option<Frame> {
        self.next_within(DEADLINE).expect("a frame before the deadline")
    }

    /// The next frame; `Err` if nothing complete arrived within `wait`.
    pub fn next_within(&mut self, wait: Duration) -> Result<Option<Frame>, ()> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(f) = proto::decode(&mut self.buf, 64 << 20).expect("server frames decode") {
                return Ok(Some(f));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(());
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Err(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Ok(None),
            }
        }
    }

    /// Skips frames until a view of `g` with `n` members arrives.
    pub fn wait_view(&mut self, g: &str, n: usize) -> View {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            match self.next() {
                Some(Frame::View(v)) if v.group.as_str() == g && v.members.len() == n => return v,
                Some(Frame::Noop) | Some(Frame::View(_)) => {}
                other => panic!("waiting for a view of {g} with {n} members, got {other:?}"),
            }
        }
        panic!("no view of {g} with {n} members before the deadline");
    }

    /// The next frame that is not a NOOP.
    pub fn next_significant(&mut self) -> Option<Frame> {
        loop {
            match self.next() {
                Some(Frame::Noop) => continue,
                other => return other,
            }
        }
    }

    /// Reads until end of stream (bounded by the deadline); returns the frames seen.
    pub fn read_to_end(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            match self.next_within(deadline - Instant::now()) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return out,
                Err(()) => break,
            }
        }
        panic!("connection not closed before the deadline; got {out:?}");
    }
}

/// Polls `cond` until it holds; panics with `what` after the deadline. Counters are
/// published by the shards' timers, so they lag by up to one tick.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not reached before the deadline");
        std::thread::sleep(Duration::from_millis(20));
    }
}
