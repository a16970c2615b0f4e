//! TLS on real servers over 127.0.0.1: mutual TLS between peers, TLS clients, client
//! certificates. Certificates are made at test time (rcgen): a cluster CA, certificates for
//! node names, and a second CA nobody trusts.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use msgc::client::{Client, ClientError, Event};
use msgc::config::{ClientCertificates, TlsClients};
use msgc::core::Limits;
use msgc::proto::{self, ErrorCode, Frame, Handshake, Name, NodeTag, Role, SessionId};
use msgc::runtime::{PeerSpec, ServerHandle, TlsOptions};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A CA and a folder of PEM files it issued; the folder goes when the value does.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_file: PathBuf,
}

/// A certificate and key, as files.
#[derive(Clone)]
struct Identity {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("msgc-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("msgc test CA {tag}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki { dir, ca, ca_file }
    }

    /// A certificate for `names` (DNS names or IP addresses), CN the first of them, usable
    /// by servers and clients.
    fn issue(&self, file: &str, names: &[&str]) -> Identity {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let id = Identity {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&id.cert, cert.pem()).unwrap();
        std::fs::write(&id.key, key.serialize_pem()).unwrap();
        id
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mesh_limits() -> Limits {
    Limits {
        reconnect_interval: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

/// Mutual TLS between peers (certificate, key and CA); clients as `clients` says.
fn tls_opts(pki: &Pki, id: &Identity, clients: TlsClients, certs: ClientCertificates) -> TlsOptions {
    TlsOptions {
        certificate: Some(id.cert.clone()),
        key: Some(id.key.clone()),
        ca: Some(pki.ca_file.clone()),
        clients,
        client_certificates: certs,
    }
}

fn start_tls(name: &str, tls: TlsOptions) -> ServerHandle {
    init_logging();
    let opts = msgc::runtime::ServerOptions { tls, ..test_options(name, 2, mesh_limits()) };
    ServerHandle::start(opts).expect("server starts")
}

fn rustls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(pki: &Pki) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    Arc::new(roots)
}

fn load_identity(id: &Identity) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(&id.cert).unwrap().map(|c| c.unwrap()).collect();
    (certs, PrivateKeyDer::from_pem_file(&id.key).unwrap())
}

/// A blocking TLS connection speaking frames, to play a peer or a client precisely.
struct TlsRaw {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: BytesMut,
}

impl TlsRaw {
    /// Connects to `addr` trusting `trust`'s CA, checking the server certificate for
    /// `server_name`, presenting `id` if given.
    fn connect(addr: SocketAddr, trust: &Pki, server_name: &str, id: Option<&Identity>) -> TlsRaw {
        let builder = rustls::ClientConfig::builder_with_provider(rustls_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(trust));
        let config = match id {
            Some(id) => {
                let (certs, key) = load_identity(id);
                builder.with_client_auth_cert(certs, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        TlsRaw { tls: rustls::StreamOwned::new(conn, sock), buf: BytesMut::new() }
    }

    fn send(&mut self, f: &Frame) -> std::io::Result<()> {
        self.tls.write_all(&f.to_bytes())?;
        self.tls.flush()
    }

    /// The next frame; `Err` on end of stream, a TLS alert, or no frame before the deadline.
    fn next(&mut self) -> Result<Frame, String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(f) = proto::decode(&mut self.buf, 1 << 20).map_err(|e| e.to_string())? {
                return Ok(f);
            }
            if Instant::now() > deadline {
                return Err("no frame before the deadline".into());
            }
            let mut chunk = [0u8; 16384];
            match self.tls.read(&mut chunk) {
                Ok(0) => return Err("end of stream".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The next frame that is not a NOOP.
    fn next_significant(&mut self) -> Result<Frame, String> {
        loop {
            match self.next()? {
                Frame::Noop => {}
                f => return Ok(f),
            }
        }
    }
}

/// A peer's HELLO naming `name`.
fn peer_hello(name: &str) -> Frame {
    Frame::Hello(Handshake {
        version: msgc::proto::PEER_VERSION,
        role: Role::Peer,
        id: SessionId(1),
        node_tag: NodeTag(0x5eed_0001),
        ..Handshake::client(Name::new(name).unwrap(), 1 << 20)
    })
}

#[test]
fn a_mutual_tls_mesh_of_three_servers_forms_and_carries_messages() {
    let pki = Pki::new("mesh");
    let names = ["tlsmesh-node1", "tlsmesh-node2", "tlsmesh-node3"];
    let servers: Vec<ServerHandle> = names
        .iter()
        .map(|n| {
            let id = pki.issue(n, &[n]);
            start_tls(n, tls_opts(&pki, &id, TlsClients::Off, ClientCertificates::None))
        })
        .collect();
    let table: Vec<PeerSpec> = names
        .iter()
        .zip(&servers)
        .map(|(n, s)| PeerSpec { name: n.to_string(), addr: addr(s).to_string() })
        .collect();
    for s in &servers {
        s.set_peers(table.clone());
    }
    // Plain clients (tls_clients = off), one per server, all in one group.
    let mut clients: Vec<RawClient> =
        servers.iter().enumerate().map(|(i, s)| RawClient::connect(addr(s), &format!("c{i}"))).collect();
    for c in clients.iter_mut() {
        c.join("g");
    }
    for c in clients.iter_mut() {
        c.wait_view("g", 3);
    }
    clients[0].mcast("g", b"over mutual TLS");
    for c in clients.iter_mut().skip(1) {
        match c.next_significant() {
            Some(Frame::Mcast(m)) => assert_eq!(&m.payload[..], b"over mutual TLS"),
            other => panic!("expected the message, got {other:?}"),
        }
    }
    wait_for("every server has its two links up", || servers.iter().all(|s| s.stats().links_up >= 2));
}

/// A test-side TLS acceptor on 127.0.0.1 that a server under test dials: reports how its one
/// handshake ended.
fn fake_peer(pki: &Pki, id: &Identity) -> (SocketAddr, std::thread::JoinHandle<Result<(), String>>) {
    let (certs, key) = load_identity(id);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(pki), rustls_provider())
        .allow_unauthenticated()
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(rustls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + DEADLINE;
        let sock = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("never dialed: {e}")),
            }
        };
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let mut sock = sock;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        // TLS 1.3: the client may learn it refuses only after our last flight; read on.
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut b = [0u8; 256];
        tls.read(&mut b).map(|_| ()).map_err(|e| e.to_string())
    });
    (addr, handle)
}

#[test]
fn a_dialing_server_refuses_a_peer_certificate_from_another_ca_or_for_another_name() {
    let pki = Pki::new("dialer");
    let rogue = Pki::new("dialer-rogue");
    // "a-…" sorts before "b-…": the server under test dials its peer.
    let me = "tlsdial-a";
    let peer = "tlsdial-b";
    let server =
        start_tls(me, tls_opts(&pki, &pki.issue(me, &[me]), TlsClients::Off, ClientCertificates::None));
    let cases = [
        ("another CA", rogue.issue("wrong-ca", &[peer])),
        ("another name", pki.issue("wrong-name", &["tlsdial-x"])),
    ];
    for (what, id) in cases {
        let (fake, outcome) = fake_peer(&pki, &id);
        server.set_peers(vec![
            PeerSpec { name: me.into(), addr: addr(&server).to_string() },
            PeerSpec { name: peer.into(), addr: fake.to_string() },
        ]);
        let result = outcome.join().unwrap();
        let err = result.expect_err(&format!("a certificate for {what} must be refused"));
        assert!(
            err.contains("UnknownCA") || err.contains("BadCertificate") || err.contains("alert"),
            "{what}: the dialer should abort the handshake with an alert, got: {err}"
        );
        server.set_peers(Vec::new());
    }
    assert_eq!(server.stats().links_up, 0);
}

#[test]
fn an_accepting_server_refuses_a_peer_certificate_from_another_ca() {
    let pki = Pki::new("acceptor");
    let rogue = Pki::new("acceptor-rogue");
    let me = "tlsacc-b";
    let claimed = "tlsacc-a";
    let server =
        start_tls(me, tls_opts(&pki, &pki.issue(me, &[me]), TlsClients::Off, ClientCertificates::None));
    server.set_peers(vec![
        PeerSpec { name: claimed.into(), addr: "127.0.0.1:9".into() },
        PeerSpec { name: me.into(), addr: addr(&server).to_string() },
    ]);
    let id = rogue.issue("rogue", &[claimed]);
    let mut c = TlsRaw::connect(addr(&server), &pki, me, Some(&id));
    // The handshake may look complete to us (TLS 1.3); the server's alert follows.
    let _ = c.send(&peer_hello(claimed));
    let got = c.next();
    assert!(
        !matches!(got, Ok(Frame::Welcome(_))),
        "a peer whose certificate another CA issued must not be welcomed, got {got:?}"
    );
    assert_eq!(server.stats().links_up, 0);
}

#[test]
fn an_accepting_server_welcomes_a_peer_whose_certificate_names_it_and_refuses_one_naming_another() {
    let pki = Pki::new("names");
    let me = "tlsname-b";
    let claimed = "tlsname-a";
    let server =
        start_tls(me, tls_opts(&pki, &pki.issue(me, &[me]), TlsClients::Off, ClientCertificates::None));
    server.set_peers(vec![
        PeerSpec { name: claimed.into(), addr: "127.0.0.1:9".into() },
        PeerSpec { name: me.into(), addr: addr(&server).to_string() },
    ]);
    // A certificate of the right CA, issued to another server of the cluster.
    let other = pki.issue("other", &["tlsname-c"]);
    let mut c = TlsRaw::connect(addr(&server), &pki, me, Some(&other));
    c.send(&peer_hello(claimed)).unwrap();
    match c.next_significant() {
        Ok(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::NotAuthorized, "{e:?}"),
        other => {
            panic!("a HELLO naming a server the certificate does not name must be refused, got {other:?}")
        }
    }
    // Without a certificate at all.
    let mut c = TlsRaw::connect(addr(&server), &pki, me, None);
    c.send(&peer_hello(claimed)).unwrap();
    assert!(
        matches!(c.next_significant(), Ok(Frame::Error(_)) | Err(_)),
        "a peer without a certificate is refused"
    );
    // In plain TCP, with peer links mutual TLS.
    let mut plain = RawClient::connect_raw(addr(&server));
    plain.send(&peer_hello(claimed));
    match plain.next_significant() {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::NotAuthorized, "{e:?}"),
        other => panic!("a plain peer HELLO must be refused when peers use mutual TLS, got {other:?}"),
    }
    // The right certificate is welcomed: the refusals above were about the names.
    let right = pki.issue("right", &[claimed]);
    let mut c = TlsRaw::connect(addr(&server), &pki, me, Some(&right));
    c.send(&peer_hello(claimed)).unwrap();
    match c.next_significant() {
        Ok(Frame::Welcome(w)) => assert_eq!(w.name.as_str(), me),
        other => panic!("expected WELCOME, got {other:?}"),
    }
}

async fn next_event(c: &mut Client) -> Event {
    tokio::time::timeout(DEADLINE, c.next_event()).await.expect("an event before the deadline").expect("open")
}

/// Waits for the view of `g` with `n` members, skipping other events.
async fn view_of(c: &mut Client, g: &str, n: usize) {
    for _ in 0..1000 {
        if let Event::View(v) = next_event(c).await {
            if v.group.as_str() == g && v.members.len() == n {
                return;
            }
        }
    }
    panic!("no view of {g} with {n} members");
}

fn client(server: &ServerHandle, name: &str) -> msgc::client::ClientBuilder {
    Client::builder()
        .server(addr(server).to_string())
        .name(name)
        .connect_timeout(Duration::from_secs(5))
        .reconnect_interval(Duration::from_millis(100))
}

#[tokio::test]
async fn tls_clients_required_takes_tls_clients_and_refuses_plain_ones() {
    let pki = Pki::new("required");
    // Clients dial 127.0.0.1: the server name checked is that address.
    let id = pki.issue("server", &["tlsreq-node", "127.0.0.1"]);
    let server =
        start_tls("tlsreq-node", tls_opts(&pki, &id, TlsClients::Required, ClientCertificates::None));
    let mut a = client(&server, "a").tls(&pki.ca_file).connect().await.expect("a TLS client connects");
    let mut b = client(&server, "b").tls(&pki.ca_file).connect().await.expect("a TLS client connects");
    a.join("g").await.unwrap();
    b.join("g").await.unwrap();
    view_of(&mut a, "g", 2).await;
    view_of(&mut b, "g", 2).await;
    a.multicast("g", Bytes::from_static(b"secret")).await.unwrap();
    loop {
        if let Event::Message { payload, .. } = next_event(&mut b).await {
            assert_eq!(&payload[..], b"secret");
            break;
        }
    }
    // A plain client gets an error frame saying why, then the connection closes.
    let mut plain = RawClient::connect_raw(addr(&server));
    plain.send(&Frame::Hello(Handshake::client(Name::new("plain").unwrap(), 1 << 20)));
    let frames = plain.read_to_end();
    match frames.first() {
        Some(Frame::Error(e)) => assert!(e.message.contains("TLS"), "{e:?}"),
        other => panic!("expected an error frame, got {other:?}"),
    }
    // The client library reports it, instead of retrying forever.
    let err = client(&server, "c").connect().await.err().expect("a plain client is refused");
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test]
async fn tls_clients_optional_takes_both_on_one_port() {
    let pki = Pki::new("optional");
    let id = pki.issue("server", &["tlsopt-node", "127.0.0.1"]);
    let server =
        start_tls("tlsopt-node", tls_opts(&pki, &id, TlsClients::Optional, ClientCertificates::None));
    let mut secure = client(&server, "secure").tls(&pki.ca_file).connect().await.expect("TLS client");
    let mut plain = client(&server, "plain").connect().await.expect("plain client");
    secure.join("g").await.unwrap();
    plain.join("g").await.unwrap();
    view_of(&mut secure, "g", 2).await;
    view_of(&mut plain, "g", 2).await;
    plain.multicast("g", Bytes::from_static(b"from plain")).await.unwrap();
    loop {
        if let Event::Message { payload, .. } = next_event(&mut secure).await {
            assert_eq!(&payload[..], b"from plain");
            break;
        }
    }
    // A server name the certificate does not carry is refused by the client.
    let wrong = client(&server, "wrong").tls(&pki.ca_file).tls_server_name("elsewhere").connect().await;
    assert!(matches!(wrong, Err(ClientError::NoServer { .. })), "{:?}", wrong.err());
}

#[tokio::test]
async fn client_certificates_required_checks_them_against_the_ca() {
    let pki = Pki::new("clientcerts");
    let rogue = Pki::new("clientcerts-rogue");
    let id = pki.issue("server", &["tlscc-node", "127.0.0.1"]);
    let server =
        start_tls("tlscc-node", tls_opts(&pki, &id, TlsClients::Required, ClientCertificates::Required));
    let good = pki.issue("client", &["app1"]);
    let mut c = client(&server, "app1")
        .tls(&pki.ca_file)
        .tls_identity(&good.cert, &good.key)
        .connect()
        .await
        .expect("a client with a certificate of the CA connects");
    c.join("g").await.unwrap();
    view_of(&mut c, "g", 1).await;

    let none = client(&server, "anon").tls(&pki.ca_file).connect().await;
    assert!(none.is_err(), "a client without a certificate is refused");
    let bad = rogue.issue("client", &["app2"]);
    let other_ca =
        client(&server, "app2").tls(&pki.ca_file).tls_identity(&bad.cert, &bad.key).connect().await;
    assert!(other_ca.is_err(), "a client certificate from another CA is refused");
}

#[test]
fn unreadable_or_invalid_tls_files_are_clear_start_errors() {
    let pki = Pki::new("files");
    let id = pki.issue("server", &["tlsfiles-node"]);
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = pki.dir.join("missing.pem");
    let cases = [
        (
            TlsOptions {
                certificate: Some(missing.clone()),
                ..tls_opts(&pki, &id, TlsClients::Optional, ClientCertificates::None)
            },
            "missing.pem: cannot read",
        ),
        (
            TlsOptions {
                certificate: Some(garbage.clone()),
                ..tls_opts(&pki, &id, TlsClients::Optional, ClientCertificates::None)
            },
            "garbage.pem: no certificate found",
        ),
        (
            TlsOptions {
                key: Some(garbage.clone()),
                ..tls_opts(&pki, &id, TlsClients::Optional, ClientCertificates::None)
            },
            "garbage.pem: no private key found",
        ),
        (
            TlsOptions {
                ca: Some(garbage.clone()),
                ..tls_opts(&pki, &id, TlsClients::Off, ClientCertificates::None)
            },
            "garbage.pem: no certificate found",
        ),
        // A key that is not the certificate's.
        (
            TlsOptions {
                key: Some(pki.issue("other", &["x"]).key),
                ..tls_opts(&pki, &id, TlsClients::Optional, ClientCertificates::None)
            },
            "unusable certificate and key",
        ),
    ];
    for (tls, want) in cases {
        let opts =
            msgc::runtime::ServerOptions { tls, ..test_options("tlsfiles-node", 1, Limits::default()) };
        match ServerHandle::start(opts) {
            Err(e) => assert!(e.to_string().contains(want), "expected {want:?} in {e}"),
            Ok(_) => panic!("a server with a bad TLS file must not start ({want})"),
        }
    }
}

#[test]
fn silent_tls_connections_count_against_max_handshakes() {
    let pki = Pki::new("silent");
    let id = pki.issue("server", &["tlssilent-node", "127.0.0.1"]);
    init_logging();
    // A handshake_timeout longer than the test's deadline: a closed third connection can
    // only come from the bound.
    let limits = Limits { max_handshakes: 2, handshake_timeout: Duration::from_secs(60), ..mesh_limits() };
    let opts = msgc::runtime::ServerOptions {
        tls: tls_opts(&pki, &id, TlsClients::Optional, ClientCertificates::None),
        ..test_options("tlssilent-node", 1, limits)
    };
    let server = ServerHandle::start(opts).expect("server starts");
    // Two connections that start a TLS record and say nothing more hold both places.
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(addr(&server)).unwrap();
            s.write_all(&[0x16]).unwrap();
            s
        })
        .collect();
    // The shard takes connections in order, so both are counted before the third arrives.
    let mut third = TcpStream::connect(addr(&server)).unwrap();
    third.write_all(&[0x16]).unwrap();
    third.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 16];
    match third.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the third connection must be closed at once, got {other:?}"),
    }
    wait_for("the refusal is counted", || server.stats().limit_refusals >= 1);
    drop(silent);
}

#[tokio::test]
async fn new_tls_files_apply_to_new_connections_and_bad_ones_keep_the_running_settings() {
    let old = Pki::new("reload-old");
    let new = Pki::new("reload-new");
    let names = ["tlsreload-node", "127.0.0.1"];
    let server = start_tls(
        names[0],
        tls_opts(&old, &old.issue("server", &names), TlsClients::Optional, ClientCertificates::None),
    );
    let before = client(&server, "before").tls(&old.ca_file).connect().await.expect("the old CA is trusted");

    // A file that cannot be read: an error naming it, and the old settings stay.
    let missing = TlsOptions {
        certificate: Some(old.dir.join("gone.pem")),
        ..tls_opts(&old, &old.issue("server2", &names), TlsClients::Optional, ClientCertificates::None)
    };
    let err = server.set_tls(&missing).expect_err("a missing file is refused");
    assert!(err.to_string().contains("gone.pem: cannot read"), "{err}");
    let still = client(&server, "still").tls(&old.ca_file).connect().await.expect("the old settings stay");

    // Renewed from another CA: new connections get the new certificate.
    server
        .set_tls(&tls_opts(
            &new,
            &new.issue("server", &names),
            TlsClients::Optional,
            ClientCertificates::None,
        ))
        .unwrap();
    let renewed =
        client(&server, "renewed").tls(&new.ca_file).connect().await.expect("the new certificate is served");
    let stale = client(&server, "stale").tls(&old.ca_file).connect().await;
    assert!(stale.is_err(), "a client trusting only the old CA no longer connects");
    for c in [before, still, renewed] {
        c.close().await;
    }
}
