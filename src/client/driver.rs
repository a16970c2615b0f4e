//! The client's driver task: owns the socket, moves bytes between it and the [`Session`],
//! delivers events to the application and reconnects.
//!
//! Reads stop while the application is not taking events (the event queue is bounded), so
//! TCP pushes back on the server instead of the client buffering without limit. With TLS,
//! the handshake is part of connecting (within `connect_timeout`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;

use super::session::{Session, SessionConfig};
use super::{ClientError, ClientOptions, Command, Event};

pub async fn run(
    opts: ClientOptions,
    tls: Option<TlsConnector>,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    session_id: Arc<AtomicU64>,
    ready: oneshot::Sender<Result<(), ClientError>>,
) {
    let cfg = SessionConfig {
        name: opts.name.clone(),
        keepalive_interval: opts.keepalive_interval,
        idle_timeout: opts.idle_timeout,
        max_frame_size: opts.max_frame_size,
    };
    let mut session = Session::new(cfg, Instant::now());
    let mut ready = Some(ready);
    let mut attempt = 0u64;
    loop {
        let (stream, server) = match connect_any(&opts, tls.as_ref()).await {
            Ok(found) => found,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                attempt += 1;
                tokio::time::sleep(jittered(opts.reconnect_interval, attempt)).await;
                continue;
            }
        };
        session.handle_connected(&server, Instant::now());
        let end = match stream {
            Connected::Plain(s) => {
                serve(&opts, s, &mut session, &mut commands, &events, &session_id, &mut ready).await
            }
            Connected::Tls(s) => {
                serve(&opts, *s, &mut session, &mut commands, &events, &session_id, &mut ready).await
            }
        };
        match end {
            End::Closed => return,
            End::Lost(reason) => {
                session.handle_disconnected(reason);
                if !deliver(&mut session, &events).await {
                    return;
                }
                attempt += 1;
                tokio::time::sleep(jittered(opts.reconnect_interval, attempt)).await;
            }
        }
    }
}

enum End {
    /// The application closed the client (or dropped it).
    Closed,
    /// The connection was lost; reconnect.
    Lost(String),
}

/// A connection to a server, ready for HELLO.
enum Connected {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

#[allow(clippy::too_many_arguments)]
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    opts: &ClientOptions,
    mut stream: S,
    session: &mut Session,
    commands: &mut mpsc::Receiver<Command>,
    events: &mpsc::Sender<Event>,
    session_id: &AtomicU64,
    ready: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
) -> End {
    let mut buf = BytesMut::with_capacity(opts.tcpbuf_size);
    loop {
        if let Some(bytes) = session.poll_transmit(Instant::now()) {
            if let Err(e) = stream.write_all(&bytes).await {
                return End::Lost(format!("write failed: {e}"));
            }
        }
        if session.is_ready() {
            session_id.store(session.session_id().0, Ordering::Relaxed);
            if let Some(r) = ready.take() {
                let _ = r.send(Ok(()));
            }
        }
        if !deliver(session, events).await {
            return End::Closed;
        }
        let deadline = session.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        if buf.capacity() - buf.len() < opts.tcpbuf_size / 4 {
            buf.reserve(opts.tcpbuf_size);
        }
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) => return End::Lost("server closed the connection".into()),
                Ok(_) => {
                    if let Err(e) = session.handle_bytes(&mut buf, Instant::now()) {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(ClientError::Rejected { code: crate::proto::ErrorCode::BadHandshake, message: e.to_string() }));
                            return End::Closed;
                        }
                        return End::Lost(e.to_string());
                    }
                }
                Err(e) => {
                    // A TLS alert before WELCOME (a refused client certificate) does not go
                    // away by retrying: the first connect reports it.
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(ClientError::Io(e)));
                            return End::Closed;
                        }
                    }
                    return End::Lost(format!("read failed: {e}"));
                }
            },
            cmd = commands.recv(), if session.is_ready() => match cmd {
                None => return End::Closed,
                Some(Command::Join(g)) => session.join(g),
                Some(Command::Leave(g)) => session.leave(g),
                Some(Command::Multicast(g, payload)) => {
                    if let Err(e) = session.multicast(&g, &payload) {
                        let _ = events.send(Event::Error { code: crate::proto::ErrorCode::TooLarge, message: e.to_string() }).await;
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                if let Err(e) = session.handle_timeout(Instant::now()) {
                    return End::Lost(e.to_string());
                }
            }
        }
    }
}

/// Hands queued events to the application; false if it is gone.
async fn deliver(session: &mut Session, events: &mpsc::Sender<Event>) -> bool {
    while let Some(ev) = session.poll_event() {
        if events.send(ev).await.is_err() {
            return false;
        }
    }
    true
}

/// Tries the servers in order, each within `connect_timeout` (TLS handshake included).
async fn connect_any(
    opts: &ClientOptions,
    tls: Option<&TlsConnector>,
) -> Result<(Connected, String), ClientError> {
    for server in &opts.servers {
        let attempt = async {
            let stream = connect_one(opts, server).await?;
            match tls {
                None => Ok(Connected::Plain(stream)),
                Some(tls) => {
                    let name = opts.tls_server_name.as_deref().unwrap_or_else(|| host_of(server));
                    let name = crate::tls::server_name(name).map_err(std::io::Error::other)?;
                    Ok(Connected::Tls(Box::new(tls.connect(name, stream).await?)))
                }
            }
        };
        match tokio::time::timeout(opts.connect_timeout, attempt).await {
            Ok(Ok(stream)) => return Ok((stream, server.clone())),
            // A refused certificate is worth an operator's attention; a server that is down
            // during failover is not.
            Ok(Err::<_, std::io::Error>(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!(%server, "TLS handshake failed: {e}")
            }
            Ok(Err(e)) => tracing::debug!(%server, "connect failed: {e}"),
            Err(_) => tracing::debug!(%server, "connect timed out"),
        }
    }
    Err(ClientError::NoServer { tried: opts.servers.clone() })
}

/// The host part of `host:port` (`[::1]:4809` gives `::1`).
fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

async fn connect_one(opts: &ClientOptions, server: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(server).await? {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        let _ = socket.set_send_buffer_size(opts.tcpbuf_size as u32);
        let _ = socket.set_recv_buffer_size(opts.tcpbuf_size as u32);
        if let Some(ip) = opts.bind_address {
            socket.bind(std::net::SocketAddr::new(ip, 0))?;
        }
        match socket.connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
}

/// `interval` ± 20 %, so that clients of a restarted server do not reconnect in lockstep.
fn jittered(interval: Duration, attempt: u64) -> Duration {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    crate::mesh::backoff_delay(interval, seed, attempt)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_tls_server_name_defaults_to_the_host_part() {
        assert_eq!(host_of("relay1.example.com:4809"), "relay1.example.com");
        assert_eq!(host_of("127.0.0.1:4809"), "127.0.0.1");
        assert_eq!(host_of("[::1]:4809"), "::1");
        assert_eq!(host_of("relay1"), "relay1");
    }
}
