//! The vendor's sample configs parse to the documented values; bad configs give clear
//! errors with file:line:col.

use std::path::{Path, PathBuf};
use std::time::Duration;

use msgc::config::{Config, DebugLevel, Peer};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config").join(name)
}

fn error_of(text: &str) -> String {
    Config::parse_str(text, "t.conf").expect_err("config should be rejected").to_string()
}

#[test]
fn defaults_are_the_vendors() {
    let c = Config::default();
    let s = &c.server;
    assert_eq!(s.connect_timeout, Duration::from_secs(60));
    assert_eq!(s.debug_level, DebugLevel::Error);
    assert_eq!(s.idle_timeout, Duration::from_secs(30));
    assert_eq!(s.keepalive_interval, Duration::from_secs(5));
    assert_eq!(s.max_backlog, 5000);
    assert_eq!(s.messages_per_iter, 20);
    assert!(s.peers.is_empty());
    assert_eq!(s.port, 4809);
    assert_eq!(s.reconnect_interval, Duration::from_secs(5));
    assert_eq!(s.tcpbuf_size, 131072);
    assert_eq!(c.client.server, vec!["127.0.0.1:4809".to_string()]);
    assert_eq!(c.client.bind_address, None);
    assert_eq!(c.client.tcpbuf_size, 131072);
    assert_eq!(c.listener.socket_addrs(4809).unwrap(), vec!["0.0.0.0:4809".parse().unwrap()]);
}

#[test]
fn vendor_msgc_server_sample() {
    let c = Config::load(&fixture("msgc_server.conf")).unwrap();
    let peer = |n: &str, a: &str| Peer { name: n.into(), addr: a.into() };
    assert_eq!(
        c.server.peers,
        vec![peer("node1", "192.168.0.10"), peer("node2", "192.168.0.11"), peer("manager", "192.168.0.12")]
    );
    // Everything else keeps its default.
    assert_eq!(c.server.max_backlog, 5000);
    assert_eq!(c.server.port, 4809);
}

#[test]
fn vendor_listener_samples_in_both_spellings() {
    for f in ["msgcserver_listener.conf", "msgcserver_listener_capitalized.conf"] {
        let c = Config::load(&fixture(f)).unwrap();
        assert_eq!(c.listener.listen, vec![":4809".to_string()], "{f}");
        assert_eq!(c.listener.socket_addrs(4809).unwrap(), vec!["0.0.0.0:4809".parse().unwrap()]);
    }
}

#[test]
fn vendor_msgc_client_sample() {
    let c = Config::load(&fixture("msgc_client.conf")).unwrap();
    assert_eq!(c.client.server, vec!["127.0.0.1:4809".to_string()]);
}

#[test]
fn cluster_conf_with_include_and_product_scopes() {
    let c = Config::load(&fixture("ecelerity-cluster.conf")).unwrap();
    assert_eq!(c.server.peers.len(), 3);
    assert_eq!(c.listener.listen, vec![":4809".to_string()]);
    assert_eq!(c.client.server, vec!["127.0.0.1:4809".to_string()]);
}

#[test]
fn example_deployments_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples");
    let c = Config::load(&root.join("colocated-3.conf")).unwrap();
    assert_eq!(c.server.peers.len(), 3);
    assert_eq!(c.server.debug_level, DebugLevel::Warning);
    let r = Config::load(&root.join("relays-3x9.conf")).unwrap();
    assert_eq!(r.server.tcpbuf_size, 262144);
    assert_eq!(r.server.max_backlog, 20000);
    assert_eq!(r.client.server.len(), 3);
    assert_eq!(r.client.reconnect_interval, Duration::from_secs(1));
}

#[test]
fn every_option_is_read_case_insensitively() {
    let c = Config::parse_str(
        r#"MSGC_Server {
             Connect_Timeout = 7  debug_level = "debug"  idle_timeout = 2.5
             keepalive_interval = 2  max_backlog = 10  messages_per_iter = 3
             port = 4810  reconnect_interval = 1  tcpbuf_size = 65536
             max_frame_size = 8192  memory_budget = 2097152  threads = 2
             Stall_Timeout = 0.25  handshake_timeout = 3  max_connections = 100
             max_handshakes = 9  max_groups_per_session = 8  max_group_members = 7
             cluster_secret = "0123456789abcdef-secret"
             peers = [ A = "10.0.0.1" b = "10.0.0.2:4811" ]
           }
           msgc_client { bind_address = "10.0.0.9"  server = ( "r1:4809", "r2:4809" ) }
           msgcserver_listener { listen ":4810" { } Enabled = true }"#,
        "t.conf",
    )
    .unwrap();
    let s = &c.server;
    assert_eq!(s.connect_timeout, Duration::from_secs(7));
    assert_eq!(s.debug_level, DebugLevel::Debug);
    assert_eq!(s.idle_timeout, Duration::from_millis(2500));
    assert_eq!((s.stall_timeout, s.handshake_timeout), (Duration::from_millis(250), Duration::from_secs(3)));
    assert_eq!((s.max_connections, s.max_handshakes), (100, 9));
    assert_eq!((s.max_groups_per_session, s.max_group_members), (8, 7));
    assert_eq!(s.cluster_secret, Some(msgc::core::ClusterSecret::new(b"0123456789abcdef-secret")));
    assert_eq!((s.max_backlog, s.messages_per_iter, s.port, s.tcpbuf_size), (10, 3, 4810, 65536));
    assert_eq!((s.max_frame_size, s.memory_budget, s.threads), (8192, 2097152, 2));
    assert_eq!(s.peers[0], Peer { name: "A".into(), addr: "10.0.0.1".into() });
    assert_eq!(c.client.bind_address, Some("10.0.0.9".parse().unwrap()));
    assert_eq!(c.client.server, vec!["r1:4809".to_string(), "r2:4809".to_string()]);
}

#[test]
fn errors_point_at_the_text() {
    let cases = [
        ("msgc_server {\n  port = 0\n}", "t.conf:2:10:", "out of range"),
        ("msgc_server { port = \"x\" }", "t.conf:1:22:", "expected a whole number"),
        ("msgc_server { tcpbuf_size = 1024 }", "t.conf:1:29:", "out of range: expected 4096"),
        ("msgc_server { idle_timeout = -1 }", "t.conf:1:30:", "out of range"),
        ("msgc_server { idle_timeout = ( 1 ) }", "t.conf:1:30:", "expected a number of seconds"),
        // Zero durations mean "at once": every connection idle, a redial loop.
        ("msgc_server { idle_timeout = 0 }", "t.conf:1:30:", "expected 0.1 to"),
        ("msgc_server { reconnect_interval = 0 }", "t.conf:1:36:", "expected 0.1 to"),
        ("msgc_server { keepalive_interval = 0 }", "t.conf:1:36:", "expected 0.1 to"),
        ("msgc_server { connect_timeout = 0 }", "t.conf:1:33:", "expected 0.1 to"),
        ("msgc_server { stall_timeout = 0 }", "t.conf:1:31:", "expected 0.1 to"),
        ("msgc_server { handshake_timeout = 0.01 }", "t.conf:1:35:", "expected 0.1 to"),
        ("msgc_client { idle_timeout = 0 }", "t.conf:1:30:", "expected 0.1 to"),
        ("msgc_server { idle_timeout = 5 }", "t.conf:1:15:", "must be longer than keepalive_interval"),
        ("msgc_server { max_connections = 0 }", "t.conf:1:33:", "out of range: expected 1"),
        ("msgc_server { cluster_secret = \"short\" }", "t.conf:1:32:", "use at least 16"),
        (
            "msgc_server { cluster_secret_file = \"/nonexistent/x\" }",
            "t.conf:1:15:",
            "cannot read cluster_secret_file",
        ),
        (
            "msgc_server {\n port = 1\n port = 2 }",
            "t.conf:3:2:",
            "duplicate option port (first set at t.conf:2)",
        ),
        ("msgc_server { peers = [ a = \"1\"\n A = \"2\" ] }", "t.conf:2:2:", "duplicate peer A"),
        ("msgc_server { peers = ( \"a\" ) }", "t.conf:1:23:", "expected a dictionary"),
        ("msgc_server { keepalive = 5 }", "t.conf:1:15:", "did you mean `keepalive_interval`?"),
        ("msgc_client { sever = ( \"a:1\" ) }", "t.conf:1:15:", "did you mean `server`?"),
        ("msgc_client { server = ( \"nohost\" ) }", "t.conf:1:26:", "expected HOST:PORT"),
        ("msgc_client { bind_address = \"300.1.1.1\" }", "t.conf:1:30:", "expected an IP address"),
        ("msgc_server { debug_level = LOUD }", "t.conf:1:29:", "unknown debug level"),
        ("msgc_server { peers = [ a = \"1.2.3.4 ]\n}", "t.conf:1:29:", "unterminated string"),
        ("msgc_server {\n port = 4809\n", "t.conf:2:", "expected `}`"),
        ("msgcserver_listener { listen \":99999\" { } }", "t.conf:1:23:", "cannot listen on"),
        (
            "msgc_server { port = 4810 }\nmsgcserver_listener { listen \":4809\" { } }",
            "t.conf:1:15:",
            "must match",
        ),
    ];
    for (text, place, what) in cases {
        let e = error_of(text);
        assert!(e.starts_with(place), "{text:?}: {e}");
        assert!(e.contains(what), "{text:?}: {e}");
    }
}

#[test]
fn include_errors() {
    let dir = std::env::temp_dir().join(format!("msgc-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.conf"), "include \"b.conf\"\n").unwrap();
    std::fs::write(dir.join("b.conf"), "\n include \"a.conf\"").unwrap();
    let e = Config::load(&dir.join("a.conf")).unwrap_err().to_string();
    assert!(e.contains("b.conf:2:2:") && e.contains("include cycle"), "{e}");
    std::fs::write(dir.join("c.conf"), "include \"missing.conf\"").unwrap();
    let e = Config::load(&dir.join("c.conf")).unwrap_err().to_string();
    assert!(e.contains("c.conf:1:1:") && e.contains("cannot read included file"), "{e}");
    let e = Config::load(&dir.join("nope.conf")).unwrap_err().to_string();
    assert!(e.contains("nope.conf") && e.contains("cannot read"), "{e}");
    // Fan-out: each file includes the next twice; a bound stops it with a clear error.
    for i in 0..12 {
        std::fs::write(
            dir.join(format!("f{i}.conf")),
            format!("include \"f{0}.conf\"\ninclude \"f{0}.conf\"\n", i + 1),
        )
        .unwrap();
    }
    std::fs::write(dir.join("f12.conf"), "# leaf\n").unwrap();
    let e = Config::load(&dir.join("f0.conf")).unwrap_err().to_string();
    assert!(e.contains("more than 256 config files included"), "{e}");
    // Size: a huge file is refused after at most the limit is read.
    std::fs::write(dir.join("big.conf"), vec![b'#'; 5 << 20]).unwrap();
    std::fs::write(dir.join("inc-big.conf"), "include \"big.conf\"").unwrap();
    let e = Config::load(&dir.join("inc-big.conf")).unwrap_err().to_string();
    assert!(e.contains("inc-big.conf:1:1:") && e.contains("config files are limited to"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn digest_ignores_peer_order_and_sees_changes() {
    let a = Config::parse_str("msgc_server { peers = [ a = \"1\" b = \"2\" ] }", "x").unwrap();
    let b = Config::parse_str("msgc_server { peers = [ b = \"2\" A = \"1\" ] }", "y").unwrap();
    let c =
        Config::parse_str("msgc_server { peers = [ a = \"1\" b = \"2\" ] max_backlog = 9 }", "z").unwrap();
    assert_eq!(a.server.digest(), b.server.digest());
    assert_ne!(a.server.digest(), c.server.digest());
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Random bytes and token soups never panic the parser.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = Config::parse_str(&text, "fuzz");
        }

        #[test]
        fn token_soup_never_panics(toks in proptest::collection::vec(
            prop_oneof![
                Just("{"), Just("}"), Just("("), Just(")"), Just("["), Just("]"), Just("="),
                Just("msgc_server"), Just("msgc_client"), Just("msgcserver_listener"), Just("listen"),
                Just("peers"), Just("port"), Just("\"x\""), Just("5"), Just("-1"), Just("\""), Just("#"),
                Just("\n"), Just("include"), Just("server"), Just(","),
            ], 0..60)) {
            let text = toks.join(" ");
            let _ = Config::parse_str(&text, "fuzz");
        }
    }
}

#[test]
fn io_and_tls_options_parse_and_default_off() {
    use msgc::config::{ClientCertificates, IoBackend, TlsClients};
    let d = Config::default();
    assert_eq!(d.server.io, IoBackend::Auto);
    assert_eq!(
        (d.server.tls_clients, d.server.tls_client_certificates),
        (TlsClients::Off, ClientCertificates::None)
    );
    assert!(!d.server.peer_tls() && !d.client.tls);
    let c = Config::parse_str(
        "msgc_server {\n io = EPOLL\n tls_certificate = \"/etc/msgc/s.pem\"\n tls_key = \"/etc/msgc/s.key\"\n \
         tls_ca = \"/etc/msgc/ca.pem\"\n tls_clients = required\n tls_client_certificates = optional\n}\n\
         msgc_client {\n tls = yes\n tls_ca = \"/etc/msgc/ca.pem\"\n tls_server_name = relay1.example.com\n}\n",
        "t.conf",
    )
    .unwrap();
    let s = &c.server;
    assert_eq!(s.io, IoBackend::Epoll);
    assert_eq!(s.tls_certificate.as_deref(), Some(Path::new("/etc/msgc/s.pem")));
    assert_eq!(s.tls_key.as_deref(), Some(Path::new("/etc/msgc/s.key")));
    assert_eq!(
        (s.tls_clients, s.tls_client_certificates),
        (TlsClients::Required, ClientCertificates::Optional)
    );
    assert!(s.peer_tls());
    assert!(c.client.tls);
    assert_eq!(c.client.tls_server_name.as_deref(), Some("relay1.example.com"));
}

#[test]
fn io_and_tls_options_that_cannot_work_are_errors_with_a_place() {
    assert_eq!(
        error_of("msgc_server {\n  io = fast\n}"),
        "t.conf:2:8: io cannot be `fast`: expected auto, uring, epoll"
    );
    assert_eq!(
        error_of("msgc_server { tls_clients = sometimes }"),
        "t.conf:1:29: tls_clients cannot be `sometimes`: expected off, optional, required"
    );
    let e = error_of("msgc_server {\n  tls_clients = optional\n}");
    assert!(e.starts_with("t.conf:2:3:") && e.contains("needs tls_certificate and tls_key"), "{e}");
    let e = error_of("msgc_server { tls_key = \"k.pem\" }");
    assert!(e.contains("tls_certificate and tls_key go together"), "{e}");
    let e = error_of(
        "msgc_server { tls_certificate = c.pem tls_key = k.pem tls_clients = optional tls_client_certificates = required }",
    );
    assert!(e.contains("tls_client_certificates needs tls_ca"), "{e}");
    let e = error_of(
        "msgc_server { peers = [ a = \"10.0.0.1\" b = \"10.0.0.2\" ] tls_certificate = c.pem tls_key = k.pem tls_clients = required }",
    );
    assert!(e.contains("peer links included: set tls_ca too"), "{e}");
    let e = error_of("msgc_client { tls = yes }");
    assert!(e.contains("tls = yes needs tls_ca"), "{e}");
    let e = error_of("msgc_client { tls = maybe }");
    assert!(e.contains("expected yes or no"), "{e}");
    // "" means none (so `msgc-ctl config set tls_ca '""'` can turn it off).
    let c = Config::parse_str("msgc_server { tls_ca = \"\" }", "t.conf").unwrap();
    assert_eq!(c.server.tls_ca, None);
}

/// Files whose size metadata says 0 but that never end (`/dev/zero`) are read only up to the
/// limit: an include of one, or one as the cluster secret, is an error, not a hang.
#[test]
fn endless_files_are_refused_at_the_size_limit() {
    if !Path::new("/dev/zero").exists() {
        eprintln!("skipped: no /dev/zero");
        return;
    }
    let e = error_of("include \"/dev/zero\"");
    assert!(e.contains("config files are limited to"), "{e}");
    let e = error_of("msgc_server { cluster_secret_file = \"/dev/zero\" }");
    assert!(e.contains("cannot read cluster_secret_file /dev/zero: over 65536 bytes"), "{e}");
}
