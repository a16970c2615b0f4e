//! Throughput of the client library itself, the way an application uses it: one `Client`
//! publishing 128 B messages as fast as it can, alone (`pub`) or to N subscriber `Client`s
//! counting `Event::Message` (`fanout`). `benches/nats_client/main.go` does the same with
//! nats.go, and `benches/client.sh` runs both against their servers in one go.
//!
//! ```sh
//! cargo run --release --example client_bench -- pub                       # embedded server
//! cargo run --release --example client_bench -- fanout --subs 8 --server 127.0.0.1:4809
//! cargo run --release --example client_bench -- pub --api multicast        # await per message
//! ```
//!
//! Prints one line of JSON: the mode, the API used, messages published per second and (fanout)
//! deliveries per second over the measured window, and what each subscriber verified (lost
//! or out-of-order messages would show as `errors`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgc::client::{Client, ClientOptions, Event};

struct Args {
    mode: String,
    api: String,
    server: Option<String>,
    subs: usize,
    size: usize,
    duration: f64,
    warmup: f64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        mode: String::new(),
        api: "send_many".into(),
        server: None,
        subs: 8,
        size: 128,
        duration: 5.0,
        warmup: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "pub" | "fanout" => a.mode = arg.clone(),
            "--api" => a.api = value()?,
            "--server" => a.server = Some(value()?),
            "--subs" => a.subs = value()?.parse().map_err(|e| format!("--subs: {e}"))?,
            "--size" => a.size = value()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--duration" => a.duration = value()?.parse().map_err(|e| format!("--duration: {e}"))?,
            "--warmup" => a.warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.mode.is_empty() {
        return Err("usage: client_bench pub|fanout [--api send_many|multicast|try] [--server ADDR] [--subs N] [--size B] [--duration S] [--warmup S]".into());
    }
    if !["send_many", "multicast", "try"].contains(&a.api.as_str()) {
        return Err(format!("--api {}: expected send_many, multicast or try", a.api));
    }
    if a.size < 8 || !(a.duration.is_finite() && a.duration > 0.0 && a.warmup.is_finite() && a.warmup >= 0.0)
    {
        return Err("--size must be at least 8, --duration positive, --warmup not negative".into());
    }
    Ok(a)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("client_bench: {e}");
            std::process::exit(2);
        }
    };
    let mut embedded = None;
    let server = match &args.server {
        Some(s) => s.clone(),
        None => {
            let opts = msgc::runtime::ServerOptions {
                listen: vec!["127.0.0.1:0".parse().expect("a literal address")],
                node_name: "bench".into(),
                ..Default::default()
            };
            let h = msgc::runtime::ServerHandle::start(opts).expect("embedded server starts");
            let addr = h.local_addrs()[0].to_string();
            embedded = Some(h);
            addr
        }
    };
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match rt.block_on(run(&args, &server)) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("client_bench: {e}");
            std::process::exit(1);
        }
    }
    drop(embedded);
}

async fn run(args: &Args, server: &str) -> Result<String, String> {
    let opts = |name: &str| ClientOptions {
        servers: vec![server.to_string()],
        name: name.into(),
        ..Default::default()
    };
    let group = "bench.client";
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    if args.mode == "fanout" {
        for i in 0..args.subs {
            let mut c = Client::connect(opts(&format!("sub{i}"))).await.map_err(|e| e.to_string())?;
            c.join(group).await.map_err(|e| e.to_string())?;
            let want = i + 1;
            wait_view(&mut c, want).await?;
            let (stop, delivered) = (stop.clone(), delivered.clone());
            subs.push(tokio::spawn(subscribe(c, stop, delivered)));
        }
    }
    let publisher = Client::connect(opts("pub")).await.map_err(|e| e.to_string())?;
    let published = Arc::new(AtomicU64::new(0));
    let pub_task = {
        let (stop, published, api, size) = (stop.clone(), published.clone(), args.api.clone(), args.size);
        tokio::spawn(async move { publish(publisher, &api, size, stop, published).await })
    };
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let (p0, d0, t0) = (published.load(Ordering::Relaxed), delivered.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let (p1, d1, t1) = (published.load(Ordering::Relaxed), delivered.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    pub_task.await.map_err(|e| e.to_string())??;
    let mut errors = Vec::new();
    for s in subs {
        if let Err(e) = s.await.map_err(|e| e.to_string())? {
            errors.push(e);
        }
    }
    let secs = (t1 - t0).as_secs_f64();
    Ok(serde_json::json!({
        "client": "msgc::client",
        "mode": args.mode,
        "api": args.api,
        "subscribers": if args.mode == "fanout" { args.subs } else { 0 },
        "size": args.size,
        "duration_s": secs,
        "published_msgs_per_s": (p1 - p0) as f64 / secs,
        "delivered_msgs_per_s": (d1 - d0) as f64 / secs,
        "errors": errors,
    })
    .to_string())
}

async fn wait_view(c: &mut Client, members: usize) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Some(Event::View(v))) if v.members.len() >= members => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) => return Err("client closed during setup".into()),
            Err(_) => return Err("no view before the deadline".into()),
        }
    }
}

/// Publishes until told to stop; counts messages as they are queued.
async fn publish(
    c: Client,
    api: &str,
    size: usize,
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
) -> Result<(), String> {
    let group = "bench.client";
    let mut payload = vec![0u8; size];
    let mut seq = 0u64;
    // send_many takes batches of this many messages.
    const BATCH: usize = 256;
    let mut batch: Vec<Vec<u8>> = vec![vec![0u8; size]; BATCH];
    while !stop.load(Ordering::Relaxed) {
        match api {
            "send_many" => {
                for p in batch.iter_mut() {
                    seq += 1;
                    p[..8].copy_from_slice(&seq.to_be_bytes());
                }
                c.send_many(group, &batch).await.map_err(|e| e.to_string())?;
                published.fetch_add(BATCH as u64, Ordering::Relaxed);
            }
            "multicast" => {
                for _ in 0..BATCH {
                    seq += 1;
                    payload[..8].copy_from_slice(&seq.to_be_bytes());
                    c.multicast(group, &payload).await.map_err(|e| e.to_string())?;
                }
                published.fetch_add(BATCH as u64, Ordering::Relaxed);
            }
            _ => {
                let mut n = 0;
                for _ in 0..BATCH {
                    payload[..8].copy_from_slice(&(seq + 1).to_be_bytes());
                    match c.try_multicast(group, &payload) {
                        Ok(()) => {
                            seq += 1;
                            n += 1;
                        }
                        Err(msgc::client::ClientError::WouldBlock) => break,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                published.fetch_add(n, Ordering::Relaxed);
                if n < BATCH as u64 {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    c.flush().await.map_err(|e| e.to_string())
}

/// Counts messages; checks each arrives once and in order (the payload carries its number).
/// Takes what is queued without waiting, and waits (with a timeout, to notice the end of the
/// run) only when nothing is.
async fn subscribe(mut c: Client, stop: Arc<AtomicBool>, delivered: Arc<AtomicU64>) -> Result<(), String> {
    let mut expect = 1u64;
    loop {
        let mut count = 0u64;
        let first = match tokio::time::timeout(Duration::from_millis(200), c.next_event()).await {
            Ok(Some(e)) => e,
            Ok(None) => return Err("closed".into()),
            Err(_) if stop.load(Ordering::Relaxed) => return Ok(()),
            Err(_) => continue,
        };
        let mut event = Some(first);
        while let Some(e) = event {
            match e {
                Event::Message { payload, .. } => {
                    let n = u64::from_be_bytes(payload[..8].try_into().map_err(|_| "short payload")?);
                    if n != expect {
                        return Err(format!("expected message {expect}, got {n}"));
                    }
                    expect += 1;
                    count += 1;
                }
                Event::View(_) => {}
                other => return Err(format!("unexpected {other:?}")),
            }
            event = c.try_next_event().map_err(|e| e.to_string())?;
        }
        delivered.fetch_add(count, Ordering::Relaxed);
    }
}
