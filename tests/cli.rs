//! msgc-server as a user runs it: a child process, its exit codes and messages, signals.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::RawClient;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_msgc-server"))
}

fn temp_conf(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msgc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Starts the server and reads the address it prints.
fn spawn(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = bin().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).expect("the server prints where it listens");
    let addr =
        line.trim().rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("bad line {line:?}"));
    (child, addr)
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[test]
fn check_config_accepts_good_and_rejects_bad_files_with_a_place() {
    let good = temp_conf("good.conf", "msgc_server { max_backlog = 100 }\n");
    let out = bin().arg("--check-config").arg(&good).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let bad = temp_conf("bad.conf", "msgc_server {\n  max_backlog = lots\n}\n");
    let out = bin().arg("--check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.conf:2:17:") && err.contains("expected a whole number"), "{err}");

    // The same file given to --config: the server refuses to start.
    let out = bin().arg("--config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.conf:2:17:"));
}

#[test]
fn bad_command_lines_are_rejected() {
    for args in [&["--threads", "many"][..], &["--listen", "nowhere"], &["--bogus"]] {
        let out = bin().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
    let out = bin().args(["--config", "/nonexistent/msgc.conf"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn sigterm_stops_gracefully_and_sighup_with_a_bad_file_keeps_serving() {
    let conf = temp_conf("live.conf", "msgc_server { max_backlog = 100 }\n");
    let (mut child, addr) =
        spawn(&["--config", conf.to_str().unwrap(), "--listen", "127.0.0.1:0", "--threads", "2"]);
    let mut a = RawClient::connect(addr, "a");
    a.join("g");
    a.wait_view("g", 1);
    // A broken file on reload: logged, the running config kept, clients unaffected.
    std::fs::write(&conf, "msgc_server { max_backlog = }\n").unwrap();
    signal(&child, libc::SIGHUP);
    let mut b = RawClient::connect(addr, "b");
    b.join("g");
    b.wait_view("g", 2);
    a.wait_view("g", 2);
    // A good file: applied live.
    std::fs::write(&conf, "msgc_server { max_backlog = 200 }\n").unwrap();
    signal(&child, libc::SIGHUP);
    b.mcast("g", b"after reload");
    match a.next_significant() {
        Some(msgc::proto::Frame::Mcast(m)) => assert_eq!(&m.payload[..], b"after reload"),
        other => panic!("{other:?}"),
    }
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("reload failed, keeping the running config") && stderr.contains("live.conf:1:"),
        "{stderr}"
    );
}

#[test]
fn the_io_backend_is_chosen_on_the_command_line_and_reported() {
    let mut child = bin()
        .args(["--listen", "127.0.0.1:0", "--threads", "1", "--io", "epoll"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    assert_eq!(second.trim(), "msgc-server: io backend epoll", "{first}{second}");
    let addr: SocketAddr = first.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let mut a = RawClient::connect(addr, "a");
    a.join("g");
    a.wait_view("g", 1);
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());

    let out = bin().args(["--io", "fast"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auto, uring, epoll"), "{err}");
}

#[test]
fn check_config_shows_the_tls_options_and_rejects_unusable_files_naming_them() {
    let cert = rcgen::generate_simple_self_signed(vec!["node1".to_string()]).unwrap();
    let cert_file = temp_conf("node1.pem", &cert.cert.pem());
    let key_file = temp_conf("node1.key", &cert.signing_key.serialize_pem());
    let text = format!(
        "msgc_server {{\n  io = epoll\n  tls_certificate = \"{}\"\n  tls_key = \"{}\"\n  tls_ca = \"{}\"\n  tls_clients = optional\n}}\n",
        cert_file.display(),
        key_file.display(),
        cert_file.display()
    );
    let good = temp_conf("tls-good.conf", &text);
    let out = bin().arg("--check-config").arg(&good).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "io epoll",
        "tls_clients optional",
        "tls_client_certificates none",
        "peer links mutual TLS",
        "node1.pem",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }

    // A key file holding a certificate, and a CA file that does not exist.
    let bad_key =
        temp_conf("tls-bad-key.conf", &text.replace(key_file.to_str().unwrap(), cert_file.to_str().unwrap()));
    let out = bin().arg("--check-config").arg(&bad_key).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node1.pem: no private key found"), "{err}");

    let missing = temp_conf("tls-missing.conf", &text.replace("tls_ca = \"", "tls_ca = \"/nonexistent"));
    let out = bin().arg("--check-config").arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent") && err.contains("cannot read"), "{err}");
    // The server refuses to start on it, with the same message and no panic.
    let out = bin().arg("--config").arg(&missing).args(["--listen", "127.0.0.1:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read") && !err.contains("panicked"), "{err}");
}

/// A panic anywhere (here a shard thread, through a fail point) ends the process with a
/// clear line and a non-zero exit, so a supervisor restarts it and clients fail over.
#[test]
fn a_panicking_shard_ends_the_process() {
    let mut child = bin()
        .args(["--listen", "127.0.0.1:0", "--threads", "2"])
        .env("MSGC_FAILPOINT", "shard-panic")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(70), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("FATAL: panic on thread msgc-shard-0") && err.contains("fail point"), "{err}");
}

/// Options the vendor's files never set show up in --check-config with their defaults.
#[test]
fn check_config_shows_the_security_options() {
    let conf = temp_conf(
        "sec.conf",
        "msgc_server { cluster_secret = \"0123456789abcdef0123\" max_connections = 99 }\n",
    );
    let out = bin().arg("--check-config").arg(&conf).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_connections 99") && text.contains("stall_timeout 1s"), "{text}");
    assert!(text.contains("peer authentication (msgc): cluster secret"), "{text}");
    assert!(!text.contains("0123456789abcdef0123"), "the secret must not be printed: {text}");
}

/// Where io_uring is unavailable (here: switched off by a fail point), `io = auto` runs on
/// epoll and says why; `--io uring` refuses to start, with the reason.
#[test]
fn without_io_uring_auto_falls_back_to_epoll_and_uring_is_refused() {
    let mut child = bin()
        .args(["--listen", "127.0.0.1:0", "--threads", "1"])
        .env("MSGC_FAILPOINT", "no-io-uring")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    assert!(second.starts_with("msgc-server: io backend epoll (io_uring is unavailable: "), "{second}");
    let addr: SocketAddr = first.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let mut a = RawClient::connect(addr, "a");
    a.join("g");
    a.wait_view("g", 1);
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child).success());

    let out = bin()
        .args(["--listen", "127.0.0.1:0", "--io", "uring"])
        .env("MSGC_FAILPOINT", "no-io-uring")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io_uring is unavailable") && !err.contains("panicked"), "{err}");
}
