//! msgc-bench: the load generator operators size deployments with.
//!
//! `msgc-bench fanout`: P publishers × S subscribers × G groups, each on its own connection,
//! against an embedded msgc server (no address given), a server, a cluster, or nats-server
//! and redis-server for comparison. Latency is measured from each message's scheduled send
//! time, so a stalled server cannot hide queueing (no coordinated omission). Its publisher
//! and subscriber threads scale with the machine's cores, and each run measures the load
//! generator's own CPU and says when it, not the server, was the limit.

mod cpu;
mod fanout;
mod lib_client;
mod publish;
mod report;
mod stats;
mod subscribe;
mod targets;
mod threads;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "msgc-bench", version, about = "load generator for msgc (and NATS, Redis)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publishers multicast to groups; every subscriber of a group receives every message.
    Fanout(FanoutArgs),
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// One msgc server (default: start an embedded one on 127.0.0.1).
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["servers", "target"])]
    server: Option<SocketAddr>,
    /// A cluster of msgc servers: publishers round-robin from the first, subscribers
    /// round-robin over the others (so every message crosses the mesh).
    #[arg(long, value_name = "A,B,...", value_delimiter = ',', conflicts_with = "target")]
    servers: Vec<SocketAddr>,
    /// Another system: nats://HOST:PORT[,HOST:PORT...] (a cluster) or redis://HOST:PORT.
    #[arg(long, value_name = "URL")]
    target: Option<String>,
    /// Which client drives msgc: `lib` (msgc::client, what applications use; the default for
    /// msgc) or `raw` (this program's own codec client; the only one for nats and redis).
    #[arg(long, value_enum)]
    client: Option<lib_client::ClientKind>,
    /// Publishers.
    #[arg(short, long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers (spread over the groups round-robin).
    #[arg(short, long, default_value_t = 8)]
    subscribers: usize,
    /// Groups (publishers send to them round-robin).
    #[arg(short, long, default_value_t = 1)]
    groups: usize,
    /// Payload bytes per message (at least 20, for the timestamp and sequence number).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds that connecting, subscribing and proving every publisher reaches every one of
    /// its subscribers (probes through the cluster) may take before the run is abandoned.
    #[arg(long, default_value_t = 30.0)]
    setup_timeout: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Aggregate messages per second over all publishers; 0 = as fast as accepted.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Of the subscribers, this many join but never read (overload: the relay must stay
    /// bounded in memory and keep the others flowing).
    #[arg(long, default_value_t = 0)]
    stalled: usize,
    /// Threads the reading subscribers are spread over (0 = one per core, at most one per
    /// subscriber).
    #[arg(long, alias = "threads", default_value_t = 0)]
    sub_threads: usize,
    /// Threads the publishers are spread over (0 = one per core, at most one per publisher).
    #[arg(long, default_value_t = 0)]
    pub_threads: usize,
    /// Shard threads of the embedded server (0 = one per core).
    #[arg(long, default_value_t = 0)]
    server_threads: usize,
    /// PID of an external server whose CPU time and peak RSS to report.
    #[arg(long)]
    server_pid: Option<u32>,
    /// One JSON object on stdout instead of the text report.
    #[arg(long)]
    json: bool,
}

impl FanoutArgs {
    /// The client measured: as asked, else the library for msgc and raw for the others.
    pub fn client(&self) -> lib_client::ClientKind {
        match (self.client, &self.target) {
            (Some(c), _) => c,
            (None, Some(url)) if !url.starts_with("msgc://") => lib_client::ClientKind::Raw,
            (None, _) => lib_client::ClientKind::Lib,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Cmd::Fanout(args) = cli.cmd;
    match fanout::run(args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("msgc-bench: {e}");
            ExitCode::from(2)
        }
    }
}
