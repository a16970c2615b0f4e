//! The client's connect step: turns a server address into a byte stream split into a read
//! half and a write half. Everything above it is generic over those halves, so another
//! transport (TLS) plugs in here alone: with `tls`, the handshake is part of connecting
//! (within `connect_timeout`).
//!
//! Owns socket options (buffer sizes, `bind_address`, TCP_NODELAY). Never speaks the protocol.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use super::ClientOptions;

/// The receiving half of a connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The sending half of a connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Connects to `server` (`host:port`; every address it resolves to is tried in order), and
/// with `tls` completes the TLS handshake, checking the server's certificate against
/// `tls_ca` for `tls_server_name` or the host part of `server`.
pub async fn connect(opts: &ClientOptions, server: &str) -> std::io::Result<(ReadHalf, WriteHalf)> {
    let mut last = None;
    for addr in tokio::net::lookup_host(server).await? {
        match connect_tcp(opts, addr).await {
            Ok(stream) if opts.tls => return tls(opts, server, stream).await,
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

async fn tls(
    opts: &ClientOptions,
    server: &str,
    stream: TcpStream,
) -> std::io::Result<(ReadHalf, WriteHalf)> {
    // Read at each connect, so a renewed CA or client certificate is picked up; the files
    // were checked once when the client was made.
    let config = opts
        .tls_config()
        .map_err(std::io::Error::other)?
        .ok_or_else(|| std::io::Error::other("TLS is off"))?;
    let name = opts.tls_server_name.as_deref().unwrap_or_else(|| host_of(server));
    let name = crate::tls::server_name(name).map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
    // A TLS session is one object: the halves share it through tokio's split, each holding
    // it only for the length of one poll.
    let (r, w) = tokio::io::split(tls);
    Ok((Box::new(r), Box::new(w)))
}

/// The host part of `host:port` (`[::1]:4809` gives `::1`).
fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

async fn connect_tcp(opts: &ClientOptions, addr: SocketAddr) -> std::io::Result<TcpStream> {
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
