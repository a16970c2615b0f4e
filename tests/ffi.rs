//! libmsgc from C: compiles `tests/c/ffi_test.c` and `examples/c/monitor.c` with `cc` against
//! the cdylib and the staticlib this package builds, and runs them against servers on
//! 127.0.0.1 (an in-process msgc server, restarted on the same port for the reconnect; a
//! scripted one for the gaps). Also checks that `include/msgc.h` declares every exported
//! function and the same return codes. Skips with a note when `cc` is missing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use msgc::core::Limits;
use msgc::proto::{
    self, encode_mcast, Frame, Gap, GapReason, GroupName, Handshake, Name, NodeTag, Role, SessionId,
};
use msgc::runtime::{ServerHandle, ServerOptions};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `cc`, if this machine has a working one.
fn cc() -> Option<&'static str> {
    match Command::new("cc").arg("--version").output() {
        Ok(o) if o.status.success() => Some("cc"),
        _ => {
            eprintln!("note: no working `cc` on this machine; the C tests of libmsgc are skipped");
            None
        }
    }
}

/// Where cargo put libmsgc.so and libmsgc.a. `cargo test` leaves them beside this test's
/// binary (`<target>/<profile>/deps/`); `cargo build` also copies them one level up.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let has_both = |dir: &Path| ["libmsgc.so", "libmsgc.a"].iter().all(|lib| dir.join(lib).exists());
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(Path::to_path_buf).collect();
    candidates.iter().find(|d| has_both(d)).cloned().unwrap_or_else(|| {
        panic!("libmsgc.so and libmsgc.a not found in {candidates:?}: is crate-type cdylib/staticlib set?")
    })
}

/// A fresh scratch directory for this test's outputs.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msgc-ffi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

enum Link {
    Shared,
    Static,
}

/// Compiles one C file against libmsgc; panics with the compiler's output if it fails.
fn compile(cc: &str, src: &str, out: &Path, link: Link) {
    let lib = lib_dir();
    let mut cmd = Command::new(cc);
    cmd.args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-g", "-I"])
        .arg(Path::new(ROOT).join("include"))
        .arg(Path::new(ROOT).join(src))
        .arg("-o")
        .arg(out);
    match link {
        Link::Shared => {
            cmd.arg("-L").arg(&lib).arg("-lmsgc").arg(format!("-Wl,-rpath,{}", lib.display()));
        }
        Link::Static => {
            cmd.arg(lib.join("libmsgc.a")).args(["-lpthread", "-ldl", "-lm"]);
        }
    }
    let o = cmd.output().expect("run cc");
    assert!(
        o.status.success(),
        "cc {src} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Waits for a child with a deadline; kills it (and fails) if it overstays.
fn wait_child(mut child: Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "{what} failed ({status}):\n{err}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn server_on(addr: SocketAddr) -> ServerHandle {
    let opts = ServerOptions {
        listen: vec![addr],
        threads: 1,
        pin_threads: false,
        limits: Limits::default(),
        node_name: "ffi".into(),
        ..ServerOptions::default()
    };
    ServerHandle::start(opts).expect("server starts")
}

#[test]
fn the_header_declares_every_exported_function_and_code() {
    let header = std::fs::read_to_string(Path::new(ROOT).join("include/msgc.h")).expect("include/msgc.h");
    let source = std::fs::read_to_string(Path::new(ROOT).join("src/ffi/mod.rs")).expect("src/ffi/mod.rs");
    let mut exported = Vec::new();
    for line in source.lines() {
        if let Some(at) = line.find("extern \"C\" fn ") {
            let rest = &line[at + "extern \"C\" fn ".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            exported.push(name);
        }
    }
    assert!(exported.len() >= 12, "found only {exported:?}");
    for name in &exported {
        assert!(name.starts_with("msgc_"), "{name}: exported names carry the msgc_ prefix");
        assert!(header.contains(&format!("{name}(")), "include/msgc.h does not declare {name}");
    }
    for (name, value) in [
        ("MSGC_OK", msgc::ffi::MSGC_OK),
        ("MSGC_EAGAIN", msgc::ffi::MSGC_EAGAIN),
        ("MSGC_EINVAL", msgc::ffi::MSGC_EINVAL),
        ("MSGC_ETOOLARGE", msgc::ffi::MSGC_ETOOLARGE),
        ("MSGC_ECLOSED", msgc::ffi::MSGC_ECLOSED),
        ("MSGC_ELOST", msgc::ffi::MSGC_ELOST),
        ("MSGC_EINTERNAL", msgc::ffi::MSGC_EINTERNAL),
    ] {
        let want =
            if value < 0 { format!("#define {name} ({value})") } else { format!("#define {name} {value}") };
        assert!(header.contains(&want), "include/msgc.h lacks `{want}`");
    }
    assert!(header.contains("#define MSGC_GAP_SERVER_LOST 3") && GapReason::ServerLost as i32 == 3);
}

#[test]
fn c_program_joins_multicasts_and_survives_a_server_restart() {
    let Some(cc) = cc() else { return };
    let dir = scratch("basic");
    let exe = dir.join("ffi_test");
    compile(cc, "tests/c/ffi_test.c", &exe, Link::Shared);
    let config = dir.join("client.conf");
    std::fs::write(&config, "msgc_client {\n  reconnect_interval = 0.2\n  connect_timeout = 5\n}\n").unwrap();
    let server = start_node("ffi", 1, Limits::default());
    let at = addr(&server);
    let mut child = Command::new(&exe)
        .args(["basic", &at.to_string(), config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ffi_test");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut server = Some(server);
    let mut restarted = None;
    let mut ok = false;
    for line in stdout.lines() {
        let line = line.expect("read the program's output");
        match line.as_str() {
            "phase:restart" => {
                server.take().expect("one restart").shutdown();
                restarted = Some(server_on(at));
            }
            "ok" => ok = true,
            _ => {}
        }
    }
    wait_child(child, "ffi_test basic");
    assert!(ok && restarted.is_some(), "the program ended without finishing its phases");
}

/// A server that speaks just enough of the protocol to send one scripted stream.
fn scripted_server(frames: Vec<u8>) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("the client connects");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 4096];
        // Wait for the HELLO, answer, send the script, then hold on until the client goes.
        loop {
            match proto::decode(&mut buf, 1 << 20).expect("client frames decode") {
                Some(Frame::Hello(_)) => break,
                Some(_) => {}
                None => {
                    let n = s.read(&mut chunk).expect("HELLO before the deadline");
                    assert!(n > 0, "closed before HELLO");
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        let welcome = Frame::Welcome(Handshake {
            version: proto::VERSION,
            role: Role::Client,
            id: SessionId::new(NodeTag(5), 1),
            digest: 0,
            node_tag: NodeTag(5),
            max_frame: 1 << 20,
            name: Name::new("scripted").unwrap(),
        });
        s.write_all(&welcome.to_bytes()).unwrap();
        s.write_all(&frames).unwrap();
        while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
    });
    (at, t)
}

#[test]
fn c_program_sees_a_sequence_gap_and_a_server_gap() {
    let Some(cc) = cc() else { return };
    let dir = scratch("gap");
    let exe = dir.join("ffi_test");
    compile(cc, "tests/c/ffi_test.c", &exe, Link::Shared);
    let g = GroupName::new("ctest").unwrap();
    let mut script = BytesMut::new();
    encode_mcast(&mut script, SessionId(77), 1, &g, b"one");
    encode_mcast(&mut script, SessionId(77), 4, &g, b"four");
    let gap =
        Gap { reason: GapReason::ServerLost, group: g, sender: SessionId::NONE, first: 5, last: u64::MAX };
    Frame::Gap(gap).encode(&mut script);
    let (at, server) = scripted_server(script.to_vec());
    let child = Command::new(&exe)
        .args(["gap", &at.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ffi_test");
    wait_child(child, "ffi_test gap");
    server.join().expect("scripted server");
}

#[test]
fn c_example_links_statically_and_talks_to_a_server() {
    let Some(cc) = cc() else { return };
    let dir = scratch("example");
    let exe = dir.join("monitor");
    compile(cc, "examples/c/monitor.c", &exe, Link::Static);
    let server = start_node("ffi-example", 1, Limits::default());
    let mut child = Command::new(&exe)
        .args([&addr(&server).to_string(), "lobby", "--once"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run monitor");
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    wait_child(child, "monitor");
    assert!(out.contains("view lobby"), "{out}");
    assert!(out.contains("message lobby"), "{out}");
}

#[test]
fn the_pkg_config_template_names_the_library() {
    if !Command::new("pkg-config").arg("--version").output().is_ok_and(|o| o.status.success()) {
        eprintln!("note: no pkg-config on this machine; the libmsgc.pc check is skipped");
        return;
    }
    let dir = scratch("pc");
    let template = std::fs::read_to_string(Path::new(ROOT).join("pkgconfig/libmsgc.pc.in")).unwrap();
    let pc = template.replace("@PREFIX@", "/opt/msgc").replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    assert!(!pc.contains('@'), "a placeholder was left: {pc}");
    std::fs::write(dir.join("libmsgc.pc"), pc).unwrap();
    let query = |what: &str| {
        let o = Command::new("pkg-config")
            .args([what, "libmsgc"])
            .env("PKG_CONFIG_PATH", &dir)
            .output()
            .expect("run pkg-config");
        assert!(o.status.success(), "pkg-config {what}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(query("--modversion"), env!("CARGO_PKG_VERSION"));
    let out = format!("{} {}", query("--cflags"), query("--libs"));
    for want in ["-I/opt/msgc/include", "-L/opt/msgc/lib", "-lmsgc"] {
        assert!(out.contains(want), "pkg-config output lacks {want}: {out}");
    }
}
