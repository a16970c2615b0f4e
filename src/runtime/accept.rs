//! The acceptor: listens on the configured addresses and deals each new connection to the
//! next shard, round-robin, so connections spread evenly and each lives on one shard.
//!
//! Runs on its own small thread with a plain tokio runtime; accepting is not the hot path.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::sync::mpsc::UnboundedSender;

use super::shard::Inbound;
use super::StartError;

/// Binds every address with SO_REUSEADDR and buffers of `tcpbuf` bytes (inherited by
/// accepted sockets).
pub fn bind_all(addrs: &[SocketAddr], tcpbuf: usize) -> Result<Vec<std::net::TcpListener>, StartError> {
    addrs
        .iter()
        .map(|&addr| {
            let err = |source| StartError::Listen { addr, source };
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
            socket.set_reuse_address(true).map_err(err)?;
            if addr.is_ipv6() {
                let _ = socket.set_only_v6(false);
            }
            let _ = socket.set_recv_buffer_size(tcpbuf);
            let _ = socket.set_send_buffer_size(tcpbuf);
            socket.bind(&addr.into()).map_err(err)?;
            socket.listen(1024).map_err(err)?;
            socket.set_nonblocking(true).map_err(err)?;
            Ok(socket.into())
        })
        .collect()
}

/// Accepts until `stop` fires; hands each connection to a shard.
pub fn run(
    listeners: Vec<std::net::TcpListener>,
    shards: Vec<UnboundedSender<Inbound>>,
    tcpbuf: usize,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("acceptor cannot start its runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let next = Rc::new(Cell::new(0usize));
        let shards = Rc::new(shards);
        for l in listeners {
            let listener = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("cannot register listener: {e}");
                    continue;
                }
            };
            let (next, shards) = (next.clone(), shards.clone());
            tokio::task::spawn_local(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            let Ok(std) = stream.into_std() else { continue };
                            let sock = socket2::SockRef::from(&std);
                            let _ = sock.set_nodelay(true);
                            let _ = sock.set_send_buffer_size(tcpbuf);
                            let _ = sock.set_recv_buffer_size(tcpbuf);
                            let i = next.get();
                            next.set(i.wrapping_add(1));
                            tracing::debug!(%peer, shard = i % shards.len(), "accepted");
                            let _ = shards[i % shards.len()].send(Inbound::Conn(std));
                        }
                        Err(e) => {
                            // Out of descriptors or similar: back off instead of spinning.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        let _ = stop.await;
    });
}
