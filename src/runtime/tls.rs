//! TLS on the relay's connections: what a new connection must go through before the core
//! sees it (nothing; a look at its first byte; a TLS handshake, bounded by a deadline), and
//! the mutual TLS of peer links.
//!
//! Owns the handshake and what it verified (the peer certificate's names, passed to the core
//! in [`ConnMeta`]). Never decides who may be a peer: the core checks HELLO against the names.
//! Handshakes run on tokio sockets, whose operations may be dropped safely on a timeout.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ClientCertificates, TlsClients};
use crate::core::{ConnMeta, TlsPeer};
use crate::proto::{ErrorCode, ErrorFrame};
use crate::tls::{self, ClientAuth, TlsAcceptor, TlsConnector, TlsError, TLS_HANDSHAKE_BYTE};

use super::shard::{self, ShardRt};
use super::stream::{Stream, TlsStream};

/// The TLS options of a server, as configured (files not read yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM certificate chain of this server.
    pub certificate: Option<PathBuf>,
    /// PEM private key of `certificate`.
    pub key: Option<PathBuf>,
    /// PEM CA bundle that peer and client certificates are checked against.
    pub ca: Option<PathBuf>,
    pub clients: TlsClients,
    pub client_certificates: ClientCertificates,
}

impl TlsOptions {
    /// Peer links are mutual TLS when certificate, key and CA are all set.
    pub fn peer_tls(&self) -> bool {
        self.certificate.is_some() && self.key.is_some() && self.ca.is_some()
    }
}

/// What the listener does with a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listen {
    /// Looks at the first byte: TLS gets a handshake, plain goes to the core.
    Either,
    /// Looks at the first byte: TLS gets a handshake, plain gets an error frame.
    TlsOnly,
}

/// The loaded TLS state of a server, shared by its shards (replaced as a whole on reload).
pub struct ServerTls {
    listen: Listen,
    acceptor: TlsAcceptor,
    /// For dialing peers (mutual TLS); `None` when peer links are plain.
    peers: Option<TlsConnector>,
}

impl ServerTls {
    /// Reads the files and builds the TLS configurations; `Ok(None)` when no TLS is
    /// configured. Every error names the file and what is wrong with it.
    pub fn load(opts: &TlsOptions) -> Result<Option<Arc<ServerTls>>, TlsError> {
        let peer_tls = opts.peer_tls();
        if opts.clients == TlsClients::Off && !peer_tls {
            return Ok(None);
        }
        let (Some(certificate), Some(key)) = (&opts.certificate, &opts.key) else {
            return Err(TlsError::Setting("TLS needs both tls_certificate and tls_key".into()));
        };
        // One port serves clients and peers; who is who is known only after HELLO. So a
        // certificate is asked of everyone when peers must show one, and the core refuses a
        // peer HELLO whose connection showed none.
        let auth = match opts.client_certificates {
            ClientCertificates::Required => ClientAuth::Required,
            ClientCertificates::Optional => ClientAuth::Optional,
            ClientCertificates::None if peer_tls => ClientAuth::Optional,
            ClientCertificates::None => ClientAuth::Off,
        };
        let server = tls::server_config(certificate, key, opts.ca.as_deref(), auth)?;
        let peers = match (&opts.ca, peer_tls) {
            (Some(ca), true) => Some(TlsConnector::from(tls::client_config(ca, Some((certificate, key)))?)),
            _ => None,
        };
        let listen = match opts.clients {
            TlsClients::Required => Listen::TlsOnly,
            TlsClients::Optional | TlsClients::Off => Listen::Either,
        };
        Ok(Some(Arc::new(ServerTls { listen, acceptor: TlsAcceptor::from(server), peers })))
    }

    /// Whether peer links are mutual TLS.
    pub fn peer_tls(&self) -> bool {
        self.peers.is_some()
    }

    /// Completes the client side of a peer link's TLS handshake, checking the peer's
    /// certificate against the CA and its `peers` name.
    pub async fn dial_peer(
        &self,
        name: &str,
        stream: tokio::net::TcpStream,
        within: Duration,
    ) -> Result<(Stream, ConnMeta), String> {
        let Some(connector) = &self.peers else { return Err("peer TLS is not configured".into()) };
        let remote = stream.peer_addr().ok();
        let server_name = tls::server_name(name).map_err(|e| e.to_string())?;
        let tls = match tokio::time::timeout(within, connector.connect(server_name, stream)).await {
            Ok(Ok(tls)) => TlsStream::Client(tls),
            Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
            Err(_) => return Err(format!("TLS handshake not done within {within:?}")),
        };
        let meta = ConnMeta { remote, tls: Some(verified(&tls)) };
        Ok((Stream::tls(tls), meta))
    }
}

/// Takes an accepted socket through what the listener requires, then hands it to the shard's
/// core: directly when no TLS is configured, else after a look at its first byte and, for
/// TLS, a handshake; both within `within`.
pub fn accepted(
    shard: &Rc<ShardRt>,
    std: std::net::TcpStream,
    tls: Option<Arc<ServerTls>>,
    within: Duration,
) {
    let remote = std.peer_addr().ok();
    let Some(tls) = tls else {
        match Stream::plain(shard.backend, std) {
            Ok(stream) => shard::adopt(shard, stream, ConnMeta { remote, tls: None }, None),
            Err(e) => tracing::warn!(?remote, "cannot use accepted socket: {e}"),
        }
        return;
    };
    // Connections not yet handed to the core count against max_handshakes too, so that
    // silent TLS connections cannot pile up for handshake_timeout each.
    let cap = {
        let core = shard.core.borrow();
        core.limits().handshakes_per_shard(shard.nshards)
    };
    if shard.pre_core.get() >= cap {
        shard.core.borrow_mut().stats.limit_refusals += 1;
        tracing::warn!(?remote, "refusing connection: too many TLS handshakes in progress (max_handshakes)");
        return;
    }
    shard.pre_core.set(shard.pre_core.get() + 1);
    let shard = shard.clone();
    tokio::task::spawn_local(async move {
        let outcome = tokio::time::timeout(within, sniff_and_handshake(&shard, std, &tls)).await;
        shard.pre_core.set(shard.pre_core.get() - 1);
        match outcome {
            Ok(Ok(Some((stream, meta)))) if !shard.is_stopping() => shard::adopt(&shard, stream, meta, None),
            Ok(Ok(_)) => {}
            Ok(Err(why)) => {
                shard.core.borrow_mut().stats.auth_failures += 1;
                tracing::info!(?remote, "connection closed before reaching the core: {why}");
            }
            Err(_) => {
                shard.core.borrow_mut().stats.killed_handshake += 1;
                tracing::info!(
                    ?remote,
                    "TLS handshake not done within {within:?} (handshake_timeout); closed"
                );
            }
        }
    });
}

/// `Ok(None)` when the connection closed (or was refused with an error frame) before it
/// could be handed over.
async fn sniff_and_handshake(
    shard: &ShardRt,
    std: std::net::TcpStream,
    tls: &ServerTls,
) -> Result<Option<(Stream, ConnMeta)>, String> {
    std.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stream = tokio::net::TcpStream::from_std(std).map_err(|e| e.to_string())?;
    let remote = stream.peer_addr().ok();
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await.map_err(|e| e.to_string())? == 0 {
        return Ok(None);
    }
    if first[0] != TLS_HANDSHAKE_BYTE {
        if tls.listen == Listen::TlsOnly {
            refuse_plain(stream).await;
            return Err("plain connection while tls_clients = required".into());
        }
        // Plain: the socket leaves tokio's reactor for the shard's backend.
        let std = stream.into_std().map_err(|e| e.to_string())?;
        let stream = Stream::plain(shard.backend, std).map_err(|e| e.to_string())?;
        return Ok(Some((stream, ConnMeta { remote, tls: None })));
    }
    let tls = tls.acceptor.accept(stream).await.map_err(|e| format!("TLS handshake failed: {e}"))?;
    let tls = TlsStream::Server(tls);
    let meta = ConnMeta { remote, tls: Some(verified(&tls)) };
    Ok(Some((Stream::tls(tls), meta)))
}

/// Tells a plain client that TLS is required (a fatal ERROR it can show), then closes.
/// What the client sent is read and discarded until it closes too (bounded by the caller's
/// deadline): closing with unread bytes would reset the connection and could destroy the
/// error frame before the client reads it.
async fn refuse_plain(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let frame =
        ErrorFrame::fatal(ErrorCode::BadHandshake, "this server requires TLS (tls_clients = required)");
    if stream.write_all(&frame.to_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    for _ in 0..256 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The names of the certificate the other side presented (verified by rustls against the
/// CA before the handshake completed); empty if it presented none.
fn verified(tls: &TlsStream) -> TlsPeer {
    let certs = tls.get_ref().1.peer_certificates();
    let names = certs.and_then(|c| c.first()).map(tls::cert_names).unwrap_or_default();
    TlsPeer { names }
}
