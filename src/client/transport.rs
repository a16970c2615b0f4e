//! The client's connect step: turns a server address into a byte stream split into a read
//! half and a write half. Everything above it is generic over those halves, so another
//! transport (TLS) plugs in here alone.
//!
//! Owns socket options (buffer sizes, `bind_address`, TCP_NODELAY). Never speaks the protocol.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpSocket;

use super::ClientOptions;

/// The receiving half of a connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The sending half of a connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Connects to `server` (`host:port`; every address it resolves to is tried in order).
pub async fn connect(opts: &ClientOptions, server: &str) -> std::io::Result<(ReadHalf, WriteHalf)> {
    let mut last = None;
    for addr in tokio::net::lookup_host(server).await? {
        match connect_tcp(opts, addr).await {
            Ok(stream) => {
                // Owned halves: the reader and the writer never wait on each other.
                let (r, w) = stream.into_split();
                return Ok((Box::new(r), Box::new(w)));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
}

async fn connect_tcp(opts: &ClientOptions, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // Best effort: the kernel clamps these to its limits, which is fine.
    let size = u32::try_from(opts.tcpbuf_size).unwrap_or(u32::MAX);
    let _ = socket.set_send_buffer_size(size);
    let _ = socket.set_recv_buffer_size(size);
    if let Some(ip) = opts.bind_address {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
