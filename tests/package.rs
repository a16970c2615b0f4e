//! What ships: the systemd unit and the default config as packaged, and, when `cargo-deb`
//! is installed (it is not on CI; the test then says so and skips), the `.deb` itself:
//! its files, conffiles, maintainer scripts and control fields.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The unit's `Key=Value` lines (repeated keys keep every value).
fn unit() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("packaging/msgc-server.service")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn values(unit: &[(String, String)], key: &str) -> Vec<String> {
    unit.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
}

#[test]
fn the_unit_is_type_notify_and_hardened() {
    let u = unit();
    let one = |k: &str| values(&u, k).pop().unwrap_or_else(|| panic!("{k} missing from the unit"));
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("ExecStart"), "/usr/bin/msgc-server --config /etc/msgc/msgc_server.conf");
    assert!(one("ExecReload").contains("-HUP $MAINPID"));
    assert!(one("WatchdogSec").parse::<u32>().unwrap() > 0);
    assert_eq!((one("User").as_str(), one("Group").as_str()), ("msgc", "msgc"));
    assert_eq!(one("RuntimeDirectory"), "msgc", "the control socket's directory");
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(k), v, "{k}");
    }
    // Room for max_connections (its default) and the server's own descriptors.
    let default_max = msgc::config::ServerConfig::default().max_connections as u64;
    assert!(one("LimitNOFILE").parse::<u64>().unwrap() >= default_max + 256);
    let filter = values(&u, "SystemCallFilter").join(" ");
    for call in ["@system-service", "io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(filter.split(' ').any(|c| c == call), "SystemCallFilter lacks {call}: {filter}");
    }
    assert!(one("RestrictAddressFamilies").contains("AF_NETLINK"), "getifaddrs needs netlink");

    // systemd's own check, where it is installed (with ExecStart pointed at this build).
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let dir = std::env::temp_dir().join(format!("msgc-unit-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let text = std::fs::read_to_string(root().join("packaging/msgc-server.service")).unwrap();
            let unit_path = dir.join("msgc-server.service");
            std::fs::write(
                &unit_path,
                text.replace("/usr/bin/msgc-server", env!("CARGO_BIN_EXE_msgc-server")),
            )
            .unwrap();
            let out = Command::new("systemd-analyze").arg("verify").arg(&unit_path).output().unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert!(out.stderr.is_empty(), "warnings: {}", String::from_utf8_lossy(&out.stderr));
        }
        _ => {
            eprintln!("note: systemd-analyze is not installed; the unit's syntax was not checked by systemd")
        }
    }
}

#[test]
fn the_packaged_config_is_valid_with_metrics_on_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_msgc-server"))
        .arg("--check-config")
        .arg(root().join("packaging/msgc_server.conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("metrics_listen \"127.0.0.1:9809\""), "{text}");
    assert!(text.contains("port 4809"), "{text}");
}

/// Runs `cmd`, which must succeed; its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_deb_holds_binaries_unit_conffile_sysctl_and_docs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    if !has(Command::new(&cargo).args(["deb", "--version"])) {
        eprintln!("note: cargo-deb is not installed (cargo install cargo-deb); skipping the .deb check");
        return;
    }
    if !has(Command::new("dpkg-deb").arg("--version")) {
        eprintln!("note: dpkg-deb is not installed; skipping the .deb check");
        return;
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("msgc-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The binaries this test run built (debug, stripped into the package, which leaves
    // them in place), with fast compression: what is checked is the packaging, in seconds.
    let deb = dir.join("msgc.deb");
    run(Command::new(&cargo)
        .current_dir(root())
        .args(["deb", "--no-build", "--profile", "dev", "--fast", "--output"])
        .arg(&deb));

    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().last()).collect();
    let has_file = |want: &str| files.iter().any(|f| f.trim_start_matches('.') == want);
    for want in [
        "/usr/bin/msgc-server",
        "/usr/bin/msgc-ctl",
        "/usr/bin/msgc-bench",
        "/etc/msgc/msgc_server.conf",
        "/usr/lib/sysctl.d/90-msgc.conf",
        "/usr/share/doc/msgc/README.md",
        "/usr/share/doc/msgc/operations.md",
        "/usr/share/doc/msgc/copyright",
    ] {
        assert!(has_file(want), "{want} missing from the package:\n{listing}");
    }
    assert!(
        has_file("/lib/systemd/system/msgc-server.service")
            || has_file("/usr/lib/systemd/system/msgc-server.service"),
        "the unit is missing:\n{listing}"
    );
    assert!(
        has_file("/usr/lib/sysusers.d/msgc.conf"),
        "the msgc user's sysusers file is missing:\n{listing}"
    );

    let control = dir.join("control");
    run(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(conffiles.lines().any(|l| l == "/etc/msgc/msgc_server.conf"), "{conffiles}");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("systemd-sysusers") && postinst.contains("msgc.conf"), "{postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "not started at install: {postinst}");
    assert!(!postinst.contains("#DEBHELPER#"), "the systemd fragments were inserted");
    let fields = run(Command::new("dpkg-deb").arg("--field").arg(&deb));
    assert!(fields.contains("Package: msgc") && fields.contains("Section: net"), "{fields}");
    assert!(fields.contains("systemd | systemd-sysusers"), "sysusers is a dependency: {fields}");

    // What is installed is what is in the tree.
    let tree = dir.join("tree");
    run(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&tree));
    let unit = ["lib/systemd/system/msgc-server.service", "usr/lib/systemd/system/msgc-server.service"]
        .iter()
        .find_map(|p| std::fs::read_to_string(tree.join(p)).ok())
        .unwrap();
    assert_eq!(unit, std::fs::read_to_string(root().join("packaging/msgc-server.service")).unwrap());
    let version = run(Command::new(tree.join("usr/bin/msgc-ctl")).arg("--version"));
    assert!(version.starts_with("msgc-ctl "), "{version}");
    let _ = std::fs::remove_dir_all(&dir);
}
