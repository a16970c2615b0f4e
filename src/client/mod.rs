//! The client library: one TCP connection to a msgc server, with join, leave, multicast and
//! a stream of events (messages, views, gaps, reconnections).
//!
//! Plain tokio, so it works inside any tokio runtime. The protocol state is the sans-io
//! [`Session`]; the driver task owns the socket, reconnects by itself (trying the servers
//! in order after `reconnect_interval` with jitter), rejoins its groups and reports the gap.
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
mod session;

pub use session::{Session, SessionConfig};

use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::ClientConfig;
use crate::proto::{ErrorCode, Gap, GroupName, ProtoError, SessionId, View};

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

pub(crate) enum Command {
    Join(GroupName),
    Leave(GroupName),
    Multicast(GroupName, Bytes),
}

/// A connection to a msgc server (see the module docs).
pub struct Client {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    session: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Connects to the first server that answers (in order) and starts the driver task.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        // Bad TLS files are the caller's error now, not a reconnect loop later.
        let tls = opts.tls_config()?.map(tokio_rustls::TlsConnector::from);
        let capacity = opts.max_backlog.clamp(16, 1 << 16);
        let (cmd_tx, cmd_rx) = mpsc::channel(capacity);
        let (ev_tx, ev_rx) = mpsc::channel(capacity);
        let session = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(driver::run(opts, tls, cmd_rx, ev_tx, session.clone(), ready_tx));
        match ready_rx.await {
            Ok(Ok(())) => Ok(Client { commands: cmd_tx, events: ev_rx, session, task }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// The current session id (it changes after a reconnection).
    pub fn session_id(&self) -> SessionId {
        SessionId(self.session.load(Ordering::Relaxed))
    }

    /// Joins a group; a view listing this client follows as an event. Membership starts
    /// with that view: messages sent to the group before it arrives may not reach this client.
    pub async fn join(&self, group: &str) -> Result<(), ClientError> {
        let g = GroupName::new(group).map_err(ClientError::BadGroup)?;
        self.send(Command::Join(g)).await
    }

    pub async fn leave(&self, group: &str) -> Result<(), ClientError> {
        let g = GroupName::new(group).map_err(ClientError::BadGroup)?;
        self.send(Command::Leave(g)).await
    }

    /// Multicasts `payload` to `group` (membership not required). While the client is
    /// reconnecting this waits (the command queue is bounded) rather than dropping.
    pub async fn multicast(&self, group: &str, payload: Bytes) -> Result<(), ClientError> {
        let g = GroupName::new(group).map_err(ClientError::BadGroup)?;
        self.send(Command::Multicast(g, payload)).await
    }

    async fn send(&self, cmd: Command) -> Result<(), ClientError> {
        self.commands.send(cmd).await.map_err(|_| ClientError::Closed)
    }

    /// The next event; `None` once the client is closed.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Closes the connection.
    pub async fn close(self) {
        drop(self.commands);
        let _ = self.task.await;
    }
}

impl futures_core::Stream for Client {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}
