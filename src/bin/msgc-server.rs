//! msgc-server (temporary minimal CLI until config lands).
use clap::Parser;
use msgc::runtime::{ServerHandle, ServerOptions};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    let mut opts = ServerOptions::default();
    if let Some(l) = args.listen {
        opts.listen = vec![l];
    }
    opts.threads = args.threads;
    let server = ServerHandle::start(opts).expect("start");
    println!("listening on {:?}", server.local_addrs());
    loop {
        std::thread::park();
    }
}
