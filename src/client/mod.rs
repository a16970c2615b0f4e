//! The client library: one TCP connection to a msgc server, with join, leave, multicast and
//! a stream of events (messages, views, gaps, reconnections).
//!
//! Plain tokio, so it works inside any tokio runtime. The protocol state is sans-io: the
//! [`Session`] (handshake, groups, sequence numbers, the bounded send queue) and the
//! [`Inbound`] decoder. Publishers encode into the send queue directly and a writer task sends
//! it in batches of up to `tcpbuf_size`; a reader task beside it hands events over in batches.
//! The client reconnects by itself (trying the servers in order, the delay doubling from
//! `reconnect_interval` up to 8 times that, with jitter), rejoins its groups and reports the
//! gap. Dropping the [`Client`] ends its tasks; [`Client::close`] first sends what is queued.
//! Never blocks a thread (every wait is an await) and never buffers without a bound.
//!
//! ```no_run
//! # async fn demo() -> Result<(), msgc::client::ClientError> {
//! use msgc::client::{Client, Event};
//! let mut client = Client::builder().server("127.0.0.1:4809").name("demo").connect().await?;
//! client.join("news").await?;
//! client.multicast("news", bytes::Bytes::from_static(b"hello")).await?;
//! while let Some(event) = client.next_event().await {
//!     match event {
//!         Event::Message { group, sender, seq, payload } => println!("{group} {sender} #{seq}: {payload:?}"),
//!         Event::View(view) => println!("{} now has {} members", view.group, view.members.len()),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```

mod driver;
pub(crate) mod events;
mod inbound;
mod session;
mod transport;

pub use inbound::Inbound;
pub use session::{valid_group, Refused, Session, SessionConfig};
pub use transport::{ReadHalf, WriteHalf};

use std::iter::Peekable;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::ClientConfig;
use crate::proto::{ErrorCode, Gap, GroupName, ProtoError, SessionId, View};

use driver::{AbortOnDrop, Shared};
use events::EventSource;

/// What a client receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A multicast to a group this client is in.
    Message { group: GroupName, sender: SessionId, seq: u64, payload: Bytes },
    /// A membership view of a group this client is in (or just left).
    View(View),
    /// Messages that may never arrive: from the server (a lost link) or detected here (a
    /// sequence jump, or this client's own reconnection).
    Gap(Gap),
    /// A non-fatal error from the server (`AlreadyMember`, `NotMember`).
    Error { code: ErrorCode, message: String },
    /// The connection was lost; a reconnection follows.
    Disconnected { reason: String },
    /// Connected again, with a new session id; groups were rejoined.
    Reconnected { server: String, session: SessionId },
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error from the server: {0}")]
    Protocol(ProtoError),
    #[error("the server refused: {code:?}: {message}")]
    Rejected { code: ErrorCode, message: String },
    #[error("the client is closed")]
    Closed,
    #[error("invalid group name: {0}")]
    BadGroup(ProtoError),
    #[error("a payload of {0} bytes does not fit in the maximum frame size")]
    TooLarge(usize),
    #[error("the server sent nothing for longer than idle_timeout")]
    IdleTimeout,
    #[error("no server answered (tried {})", .tried.join(", "))]
    NoServer { tried: Vec<String> },
    #[error("TLS settings: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the send queue is full or the client is reconnecting; try again later")]
    WouldBlock,
    #[error("the connection was lost: {0}")]
    Lost(String),
}

/// Options of a client; the vendor's `msgc_client` scope maps onto them.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Servers tried in order. Default `127.0.0.1:4809`.
    pub servers: Vec<String>,
    /// The name shown in views.
    pub name: String,
    pub bind_address: Option<IpAddr>,
    pub connect_timeout: Duration,
    pub reconnect_interval: Duration,
    pub keepalive_interval: Duration,
    pub idle_timeout: Duration,
    pub tcpbuf_size: usize,
    pub max_frame_size: usize,
    /// Events buffered for the application before the client stops reading the socket.
    pub max_backlog: usize,
    /// Connect with TLS (`tls`, msgc). Default no.
    pub tls: bool,
    /// PEM CA bundle the server's certificate is checked against (`tls_ca`); needed with TLS.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain and key (`tls_certificate`, `tls_key`), for servers
    /// that ask for one.
    pub tls_certificate: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry (`tls_server_name`); default: the host
    /// part of the server address being connected to.
    pub tls_server_name: Option<String>,
    /// Bytes of multicasts queued before `multicast` waits: `tcpbuf_size` unless set.
    pub send_queue_bytes: Option<usize>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions::from(&ClientConfig::default())
    }
}

impl From<&ClientConfig> for ClientOptions {
    fn from(c: &ClientConfig) -> ClientOptions {
        ClientOptions {
            servers: c.server.clone(),
            name: String::new(),
            bind_address: c.bind_address,
            connect_timeout: c.connect_timeout,
            reconnect_interval: c.reconnect_interval,
            keepalive_interval: c.keepalive_interval,
            idle_timeout: c.idle_timeout,
            tcpbuf_size: c.tcpbuf_size,
            max_frame_size: c.max_frame_size,
            max_backlog: c.max_backlog,
            tls: c.tls,
            tls_ca: c.tls_ca.clone(),
            tls_certificate: c.tls_certificate.clone(),
            tls_key: c.tls_key.clone(),
            tls_server_name: c.tls_server_name.clone(),
            send_queue_bytes: None,
        }
    }
}

impl ClientOptions {
    /// Reads the TLS files into a client configuration; `Ok(None)` without `tls`. Every
    /// error names the file and what is wrong with it.
    pub fn tls_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, crate::tls::TlsError> {
        if !self.tls {
            return Ok(None);
        }
        let Some(ca) = &self.tls_ca else {
            return Err(crate::tls::TlsError::Setting(
                "tls = yes needs tls_ca, the CA the server's certificate is checked against".into(),
            ));
        };
        let identity = match (&self.tls_certificate, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => {
                return Err(crate::tls::TlsError::Setting(
                    "tls_certificate and tls_key go together: set both or neither".into(),
                ))
            }
        };
        crate::tls::client_config(ca, identity).map(Some)
    }
}

/// Builds a [`Client`] step by step.
#[derive(Default)]
pub struct ClientBuilder {
    opts: ClientOptions,
    servers: Vec<String>,
}

impl ClientBuilder {
    /// Adds a server to try (in the order added); replaces the default.
    pub fn server(mut self, addr: impl Into<String>) -> Self {
        self.servers.push(addr.into());
        self
    }
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.opts.name = name.into();
        self
    }
    pub fn reconnect_interval(mut self, d: Duration) -> Self {
        self.opts.reconnect_interval = d;
        self
    }
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.opts.connect_timeout = d;
        self
    }
    /// Connects with TLS, checking the server's certificate against the PEM CA bundle `ca`.
    pub fn tls(mut self, ca: impl Into<PathBuf>) -> Self {
        self.opts.tls = true;
        self.opts.tls_ca = Some(ca.into());
        self
    }
    /// Presents this PEM certificate chain and key to servers that ask for a client
    /// certificate.
    pub fn tls_identity(mut self, certificate: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.opts.tls_certificate = Some(certificate.into());
        self.opts.tls_key = Some(key.into());
        self
    }
    /// The name the server's certificate must carry (default: the host of its address).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.opts.tls_server_name = Some(name.into());
        self
    }
    pub fn options(mut self, opts: ClientOptions) -> Self {
        self.opts = opts;
        self
    }
    pub async fn connect(mut self) -> Result<Client, ClientError> {
        if !self.servers.is_empty() {
            self.opts.servers = self.servers;
        }
        Client::connect(self.opts).await
    }
}

/// A connection to a msgc server (see the module docs). Dropping it ends its tasks at once
/// (what is still queued is not sent; [`close`](Client::close) sends it first).
pub struct Client {
    shared: Arc<Shared>,
    events: EventSource,
    connect_timeout: Duration,
    /// Held for its Drop: the supervisor (and with it the reader and writer) ends with the client.
    _task: AbortOnDrop,
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Connects to the first server that answers (in order) and starts the client's tasks.
    /// Must be called inside a tokio runtime.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        // Bad TLS files are the caller's error now, not a reconnect loop later.
        opts.tls_config()?;
        let cfg = SessionConfig {
            name: opts.name.clone(),
            keepalive_interval: opts.keepalive_interval,
            idle_timeout: opts.idle_timeout,
            max_frame_size: opts.max_frame_size,
            send_queue_bytes: opts.send_queue_bytes.unwrap_or(opts.tcpbuf_size).max(1),
        };
        let shared = Arc::new(Shared::new(Session::new(cfg, Instant::now())));
        let (sink, events) = events::event_queue(opts.max_backlog);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let connect_timeout = opts.connect_timeout;
        let task = AbortOnDrop(tokio::spawn(driver::run(opts, shared.clone(), sink, ready_tx)));
        match ready_rx.await {
            Ok(Ok(())) => Ok(Client { shared, events, connect_timeout, _task: task }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// The current session id (it changes after a reconnection).
    pub fn session_id(&self) -> SessionId {
        SessionId(self.shared.session_id.load(Ordering::Relaxed))
    }

    /// Joins a group (remembered across reconnections); a view listing this client follows
    /// as an event. Membership starts with that view: messages sent to the group before it
    /// arrives may not reach this client. Never waits.
    pub async fn join(&self, group: &str) -> Result<(), ClientError> {
        let g = GroupName::new(group).map_err(ClientError::BadGroup)?;
        self.shared.session().join(g);
        self.shared.wake_writer.notify_one();
        Ok(())
    }

    /// Leaves a group; a view without this client follows. Never waits.
    pub async fn leave(&self, group: &str) -> Result<(), ClientError> {
        let g = GroupName::new(group).map_err(ClientError::BadGroup)?;
        self.shared.session().leave(g);
        self.shared.wake_writer.notify_one();
        Ok(())
    }

    /// Multicasts `payload` to `group` (membership not required). The payload is copied into
    /// the send queue; this returns once it is queued. While the queue is full or the client
    /// is reconnecting it waits (the queue is bounded) rather than dropping.
    pub async fn multicast(&self, group: &str, payload: impl AsRef<[u8]>) -> Result<(), ClientError> {
        let payload = payload.as_ref();
        if self.queue(group, &mut std::iter::once(payload).peekable())? == 1 {
            return Ok(());
        }
        self.send_many(group, std::iter::once(payload)).await.map(|_| ())
    }

    /// Queues a multicast if there is room now, else `Err(WouldBlock)` (the queue is full or
    /// the client is reconnecting). For callers that must not wait per message.
    pub fn try_multicast(&self, group: &str, payload: &[u8]) -> Result<(), ClientError> {
        match self.queue(group, &mut std::iter::once(payload).peekable())? {
            1 => Ok(()),
            _ => Err(ClientError::WouldBlock),
        }
    }

    /// Multicasts every payload to `group` in order, queueing as many as fit at a time under
    /// one lock, and waiting for room only when the queue is full. Returns how many were
    /// queued (all of them unless an error is returned; on an error the ones before it are
    /// queued).
    pub async fn send_many<I>(&self, group: &str, payloads: I) -> Result<usize, ClientError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let mut payloads = payloads.into_iter().peekable();
        let mut sent = 0;
        let progress = self.shared.progress.notified();
        tokio::pin!(progress);
        loop {
            // Registered before looking, so a wakeup between the look and the wait is kept.
            progress.as_mut().enable();
            sent += self.queue(group, &mut payloads)?;
            if payloads.peek().is_none() {
                return Ok(sent);
            }
            progress.as_mut().await;
            progress.set(self.shared.progress.notified());
        }
    }

    /// Queues payloads while there is room; returns how many. A refused one stays in `payloads`.
    fn queue<I>(&self, group: &str, payloads: &mut Peekable<I>) -> Result<usize, ClientError>
    where
        I: Iterator,
        I::Item: AsRef<[u8]>,
    {
        if !valid_group(group) {
            return Err(ClientError::BadGroup(ProtoError::BadGroup));
        }
        let mut n = 0;
        let was_empty;
        {
            let mut s = self.shared.session();
            was_empty = s.queued_len() == 0;
            while let Some(p) = payloads.peek() {
                if s.multicast(group, p.as_ref())?.is_err() {
                    break;
                }
                payloads.next();
                n += 1;
            }
        }
        if n > 0 && was_empty {
            self.shared.wake_writer.notify_one();
        }
        Ok(n)
    }

    /// Waits until everything queued before this call has been handed to the socket.
    /// `Err(Lost)` if the connection was lost first (those messages may not have arrived; the
    /// receivers get a gap notice).
    pub async fn flush(&self) -> Result<(), ClientError> {
        let mark = self.shared.session().flush_mark();
        let progress = self.shared.progress.notified();
        tokio::pin!(progress);
        loop {
            progress.as_mut().enable();
            match self.shared.session().flushed(mark) {
                Some(true) => return Ok(()),
                None => return Err(ClientError::Lost("before the queued messages were written".into())),
                Some(false) => {}
            }
            progress.as_mut().await;
            progress.set(self.shared.progress.notified());
        }
    }

    /// The next event; `None` once the client is closed.
    pub async fn next_event(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.events.poll_next(cx)).await
    }

    /// The next event if one is waiting; never waits. `Err(Closed)` once the client's tasks
    /// are gone.
    pub fn try_next_event(&mut self) -> Result<Option<Event>, ClientError> {
        self.events.try_next().map_err(|()| ClientError::Closed)
    }

    /// Moves the event stream out (for a caller that reads events on its own task, as the
    /// C library does); this handle then sees none.
    pub(crate) fn take_events(&mut self) -> EventSource {
        std::mem::replace(&mut self.events, events::closed())
    }

    /// Sends what is queued (waiting at most `connect_timeout`), then closes the connection.
    pub async fn close(self) {
        let _ = tokio::time::timeout(self.connect_timeout, self.flush()).await;
    }
}

impl futures_core::Stream for Client {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_next(cx)
    }
}
