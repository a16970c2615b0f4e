//! msgc-ctl: the operator's command for a running msgc-server, over its local control
//! socket: status, peers, groups, sessions (with backlog), config get/set (applied live, as
//! a reload would), reload, drain (lame duck). Tables for people, `--json` for scripts.
//! Also `import-spread`, which needs no server: a Spread configuration's segments turned
//! into a `peers` table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use msgc::core::{GroupReport, LinkReport, SessionReport};
use msgc::ops::control::{self, ConfigValue, DrainResult, ReloadResult, Request, Response};
use msgc::ops::spread;
use msgc::runtime::ServerReport;

#[derive(Parser, Debug)]
#[command(
    name = "msgc-ctl",
    version,
    about = "Operate a running msgc-server over its control socket",
    after_help = "The socket is the server's control_socket option (msgc-server --control PATH); it is \
                  mode 0660, so run msgc-ctl as the service's user, a member of its group, or root.\n\
                  Exit status: 0 done, 1 the server refused or could not be reached, 2 bad command line."
)]
struct Args {
    /// The server's control socket.
    #[arg(long, global = true, value_name = "PATH", env = "MSGC_CONTROL", default_value = msgc::config::DEFAULT_CONTROL_SOCKET)]
    control: PathBuf,
    /// Print the server's answer as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the server's answer.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Identity, uptime, connections, groups, traffic, memory, CPU and kill counters.
    Status,
    /// Every configured peer and the state and queue of its link.
    Peers,
    /// Every group with members: view id, members in the mesh and on this server.
    Groups,
    /// Every client session with its backlog (queued messages and bytes).
    Sessions,
    /// Read or change the running msgc_server options.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Reread the config file and apply it, as SIGHUP does (changes made with
    /// `config set` are replaced by the file's values).
    Reload,
    /// Lame-duck mode: stop accepting, ask every client to move to another server, and
    /// exit once none is left or when the deadline passes.
    Drain {
        /// Seconds before the server stops whatever clients are left.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        deadline: u64,
        /// Wait until the server has exited.
        #[arg(long)]
        wait: bool,
    },
    /// Print a msgc `peers` table from a Spread configuration's Spread_Segment blocks (the
    /// old bus's spread.conf / mbus.conf). Needs no server.
    ImportSpread {
        /// The Spread configuration file.
        file: PathBuf,
        /// Write every address with this port (default: none, so msgc's `port` applies).
        #[arg(long, value_name = "PORT", conflicts_with = "keep_spread_port")]
        port: Option<u16>,
        /// Keep each segment's Spread port on its addresses.
        #[arg(long)]
        keep_spread_port: bool,
        /// Wrap the table in a `msgc_server { }` scope, ready to include.
        #[arg(long)]
        scope: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Show one option's running value, or every option's.
    Get {
        /// Option name (e.g. max_backlog); all options when omitted.
        key: Option<String>,
    },
    /// Change one option and apply it live, exactly as a reload would; prints the running
    /// value. The file is not changed: a later reload brings back the file's value.
    Set {
        /// Option name (e.g. max_backlog).
        key: String,
        /// The value in the config file syntax: 100, 2.5, INFO, "127.0.0.1:9809",
        /// '[ node1 = "10.0.0.1" node2 = "10.0.0.2" ]'.
        value: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("msgc-ctl: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let request = match &args.command {
        Command::Status => Request::Status,
        Command::Peers => Request::Peers,
        Command::Groups => Request::Groups,
        Command::Sessions => Request::Sessions,
        Command::Config(ConfigCommand::Get { key }) => Request::ConfigGet { key: key.clone() },
        Command::Config(ConfigCommand::Set { key, value }) => {
            Request::ConfigSet { key: key.clone(), value: value.clone() }
        }
        Command::Reload => Request::Reload,
        Command::Drain { deadline, .. } => Request::Drain { deadline_secs: *deadline },
        Command::ImportSpread { file, port, keep_spread_port, scope } => {
            return import_spread(file, *port, *keep_spread_port, *scope, args.json)
        }
    };
    let response = ask(args, &request)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response.result).map_err(|e| e.to_string())?);
    } else {
        print_human(&args.command, &response.result)?;
    }
    if let Command::Drain { deadline, wait: true } = args.command {
        wait_for_exit(args, Duration::from_secs(deadline) + Duration::from_secs(10))?;
    }
    Ok(())
}

fn ask(args: &Args, request: &Request) -> Result<Response, String> {
    let response = control::request(&args.control, request, Duration::from_secs(args.timeout.max(1)))
        .map_err(|e| e.to_string())?;
    if !response.ok {
        return Err(response.error.unwrap_or_else(|| "the server refused without a reason".into()));
    }
    Ok(response)
}

/// Polls until the control socket stops answering (the server exited), bounded by `limit`.
fn wait_for_exit(args: &Args, limit: Duration) -> Result<(), String> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if control::request(&args.control, &Request::Status, Duration::from_secs(2)).is_err() {
            if !args.json {
                println!("server exited");
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("the server was still running after {limit:?}"))
}

fn decode<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| format!("unexpected answer from the server: {e}"))
}

fn print_human(command: &Command, result: &serde_json::Value) -> Result<(), String> {
    match command {
        Command::Status => print_status(&decode(result)?),
        Command::Peers => {
            let links: Vec<LinkReport> = decode(result)?;
            let rows = links
                .iter()
                .map(|l| {
                    let tag = if l.tag == 0 { "-".to_string() } else { format!("{:08x}", l.tag) };
                    vec![
                        l.peer.clone(),
                        l.state.as_str().to_string(),
                        tag,
                        l.shard.to_string(),
                        l.queued_messages.to_string(),
                        bytes(l.queued_bytes as u64),
                        yes(l.hot),
                    ]
                })
                .collect();
            table(&["PEER", "STATE", "TAG", "SHARD", "QUEUED", "BYTES", "HOT"], rows);
            if links.is_empty() {
                println!("(no peers configured)");
            }
        }
        Command::Groups => {
            let groups: Vec<GroupReport> = decode(result)?;
            let rows = groups
                .iter()
                .map(|g| {
                    vec![
                        g.name.clone(),
                        g.view_id.to_string(),
                        g.members.to_string(),
                        g.local_members.to_string(),
                    ]
                })
                .collect();
            table(&["GROUP", "VIEW", "MEMBERS", "LOCAL"], rows);
        }
        Command::Sessions => {
            let sessions: Vec<SessionReport> = decode(result)?;
            let rows = sessions
                .iter()
                .map(|s| {
                    vec![
                        s.session.clone(),
                        s.name.clone(),
                        s.shard.to_string(),
                        s.groups.len().to_string(),
                        s.queued_messages.to_string(),
                        bytes(s.queued_bytes as u64),
                        format!("{:.1}s", s.idle_seconds),
                        yes(s.hot),
                    ]
                })
                .collect();
            table(&["SESSION", "NAME", "SHARD", "GROUPS", "BACKLOG", "BYTES", "IDLE", "HOT"], rows);
        }
        Command::Config(ConfigCommand::Get { .. }) => {
            let values: Vec<ConfigValue> = decode(result)?;
            for v in values {
                println!("{} = {}", v.key, v.value);
            }
        }
        Command::Config(ConfigCommand::Set { .. }) => {
            let v: ConfigValue = decode(result)?;
            println!("{} = {}", v.key, v.value);
            if let Some(note) = v.note {
                println!("note: {note}");
            }
        }
        Command::Reload => {
            let r: ReloadResult = decode(result)?;
            match &r.file {
                Some(f) if r.changed.is_empty() => println!("reloaded {f}: nothing changed"),
                Some(f) => println!("reloaded {f}: changed {}", r.changed.join(", ")),
                None => {}
            }
            for n in &r.notes {
                println!("note: {n}");
            }
        }
        Command::Drain { .. } => {
            let d: DrainResult = decode(result)?;
            println!(
                "draining: no new connections; {} client(s) asked to move; the server exits when none is \
                 left, or in {} s",
                d.clients, d.deadline_secs
            );
        }
        Command::ImportSpread { .. } => {}
    }
    Ok(())
}

fn print_status(r: &ServerReport) {
    let up = r.links.iter().filter(|l| l.state == msgc::core::LinkState::Up).count();
    let members: usize = r.groups.iter().map(|g| g.members).sum();
    let queued: usize = r.shards.iter().map(|s| s.queued_bytes).sum();
    let budget = r.shards.first().map_or(0, |s| s.memory_budget);
    let cpu: Vec<String> = r.shards.iter().map(|s| format!("{:.1}s", s.cpu_seconds)).collect();
    let t = &r.totals;
    let rows = vec![
        vec!["node".into(), format!("{} (tag {}), msgc {}", r.node, r.tag, r.version)],
        vec!["uptime".into(), duration(r.uptime_seconds)],
        vec!["listen".into(), r.addrs.join(" ")],
        vec!["state".into(), if r.draining { "draining".into() } else { "serving".into() }],
        vec![
            "connections".into(),
            format!(
                "{} client(s), {} handshaking, {} closing; {} of {} peer link(s) up",
                r.clients,
                r.handshaking,
                r.closing,
                up,
                r.links.len()
            ),
        ],
        // Shard 0 speaks for the server's membership (every shard holds the same).
        vec![
            "mesh".into(),
            r.shards.first().map_or_else(String::new, |s| {
                format!(
                    "configuration epoch {} of {} server(s), {} reachable; {}",
                    s.epoch,
                    s.config_servers,
                    s.reachable,
                    if s.orders_views { "this server orders views" } else { "another server orders views" }
                )
            }),
        ],
        vec![
            "groups".into(),
            format!("{} ({} members in the mesh, {} here)", r.groups.len(), members, r.local_members),
        ],
        vec![
            "traffic".into(),
            format!(
                "in {} msgs / {}; out {} frames / {}",
                t.msgs_in,
                bytes(t.bytes_in),
                t.deliveries,
                bytes(t.bytes_out)
            ),
        ],
        vec![
            "memory".into(),
            format!(
                "{} queued (budget {} per shard), largest client backlog {}, rss {}",
                bytes(queued as u64),
                bytes(budget as u64),
                r.max_client_backlog,
                bytes(r.process.resident_bytes)
            ),
        ],
        vec!["cpu".into(), format!("{:.1}s total; shards {}", r.process.cpu_seconds, cpu.join(" "))],
        vec![
            "kills".into(),
            format!(
                "{} stuck, {} idle, {} protocol errors",
                t.killed_stuck, t.killed_idle, t.protocol_errors
            ),
        ],
        vec![
            "events".into(),
            format!(
                "{} views, {} gaps sent, {} publisher pauses, {} config digest mismatches",
                t.views, t.gaps, t.pauses, t.digest_mismatches
            ),
        ],
    ];
    for row in rows {
        println!("{:<12} {}", row[0], row[1]);
    }
}

/// Prints rows under headers, columns padded to their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn yes(b: bool) -> String {
    if b {
        "yes".into()
    } else {
        "-".into()
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{secs:.1}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

fn import_spread(
    file: &PathBuf,
    port: Option<u16>,
    keep_spread_port: bool,
    scope: bool,
    json: bool,
) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let shown = file.display().to_string();
    let config = spread::parse(&text, &shown).map_err(|e| e.to_string())?;
    if json {
        let peers: Vec<serde_json::Value> = config
            .segments
            .iter()
            .flat_map(|s| {
                s.daemons.iter().map(move |d| {
                    serde_json::json!({
                        "name": d.name, "address": d.peer_address(),
                        "segment": format!("{}:{}", s.address, s.port),
                    })
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&peers).map_err(|e| e.to_string())?);
        return Ok(());
    }
    let style = spread::PeersStyle { port, keep_spread_port, scope };
    print!("{}", spread::peers_table(&config, &shown, &style));
    Ok(())
}
