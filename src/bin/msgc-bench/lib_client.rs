//! `--client lib`: publishers and subscribers on the project's own client library
//! (`msgc::client`), so the figures show what an application gets, not only what the relay
//! can do. The raw codec driver (`--client raw`, in `targets.rs`) stays for comparison.
//!
//! Measures exactly as the raw driver: the same stamped payloads, the same [`Tally`] per
//! subscriber, the same pacing loop (the publisher's batches go through `send_many`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use msgc::client::{Client, ClientOptions, Event};

use crate::fanout::{ns, Shared};
use crate::stats::{read_stamp, Tally};

/// Which client drives msgc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// msgc::client, the library applications use.
    Lib,
    /// msgc-bench's own codec client (blocking sockets, no library).
    Raw,
}

impl ClientKind {
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Lib => "lib",
            ClientKind::Raw => "raw",
        }
    }
}

fn options(addr: SocketAddr, name: String) -> ClientOptions {
    ClientOptions {
        servers: vec![addr.to_string()],
        name,
        connect_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

/// A publisher on the library. The client's tasks run on a runtime thread of its own, so
/// that they keep sending while the publishing thread sleeps for its pacing.
pub struct LibPublisher {
    rt: tokio::runtime::Runtime,
    client: Client,
    group: String,
}

impl LibPublisher {
    /// Connects; callable from inside a runtime (setup runs on a thread of its own, since a
    /// runtime cannot be started or blocked on from an async context).
    pub fn connect(addr: SocketAddr, i: usize, group: &str) -> Result<LibPublisher, String> {
        std::thread::scope(|s| s.spawn(|| Self::connect_here(addr, i, group)).join())
            .map_err(|_| "publisher setup panicked".to_string())?
    }

    fn connect_here(addr: SocketAddr, i: usize, group: &str) -> Result<LibPublisher, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-lib-pub")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a publisher runtime: {e}"))?;
        let client = rt
            .block_on(Client::connect(options(addr, format!("pub{i}"))))
            .map_err(|e| format!("publisher cannot connect to {addr}: {e}"))?;
        Ok(LibPublisher { rt, client, group: group.to_string() })
    }

    /// Adds one message to a batch being built in `out` (length-prefixed payloads).
    pub fn encode(&mut self, out: &mut Vec<u8>, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// Queues a batch built by `encode` with one `send_many`, waiting for room if needed.
    pub fn write(&mut self, out: &[u8]) -> std::io::Result<()> {
        let payloads = Payloads(out);
        self.rt
            .block_on(self.client.send_many(&self.group, payloads))
            .map(|_| ())
            .map_err(std::io::Error::other)
    }

    /// Waits until everything queued has left (at most 10 s).
    pub fn finish(&self) {
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), self.client.flush()).await });
    }
}

/// The payloads of a batch built by [`LibPublisher::encode`].
struct Payloads<'a>(&'a [u8]);

impl<'a> Iterator for Payloads<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.0.split_first_chunk::<4>()?;
        let len = (u32::from_be_bytes(*len) as usize).min(rest.len());
        let (payload, rest) = rest.split_at(len);
        self.0 = rest;
        Some(payload)
    }
}

/// What a publisher thread writes to: the raw codec client or the library.
pub trait PublishSink: Send {
    /// Adds one message to the batch in `out`.
    fn encode(&mut self, out: &mut Vec<u8>, payload: &[u8]);
    /// Sends a batch built by `encode`.
    fn write(&mut self, out: &[u8]) -> std::io::Result<()>;
    /// Waits until what was written has left (the library queues; a raw socket does not).
    fn finish(&mut self) {}
}

impl PublishSink for crate::targets::Publisher {
    fn encode(&mut self, out: &mut Vec<u8>, payload: &[u8]) {
        crate::targets::Publisher::encode(self, out, payload)
    }
    fn write(&mut self, out: &[u8]) -> std::io::Result<()> {
        crate::targets::Publisher::write(self, out)
    }
}

impl PublishSink for LibPublisher {
    fn encode(&mut self, out: &mut Vec<u8>, payload: &[u8]) {
        LibPublisher::encode(self, out, payload)
    }
    fn write(&mut self, out: &[u8]) -> std::io::Result<()> {
        LibPublisher::write(self, out)
    }
    fn finish(&mut self) {
        LibPublisher::finish(self)
    }
}

/// A subscriber on the library: joins `group`, reports ready once the view lists
/// `expected` members, then tallies every message until the run stops.
#[allow(clippy::too_many_arguments)]
pub async fn subscribe(
    addr: SocketAddr,
    index: usize,
    group: String,
    expected: usize,
    stalled: bool,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
    mut window: tokio::sync::watch::Receiver<Option<(u64, u64)>>,
    shared: Arc<Shared>,
) -> Result<Tally, String> {
    let setup = async {
        let mut c = Client::connect(options(addr, format!("sub{index}")))
            .await
            .map_err(|e| format!("subscriber cannot connect to {addr}: {e}"))?;
        c.join(&group).await.map_err(|e| e.to_string())?;
        loop {
            match c.next_event().await {
                Some(Event::View(v)) if v.members.len() >= expected => return Ok(c),
                Some(_) => {}
                None => return Err(format!("{addr} closed the connection during setup")),
            }
        }
    };
    let mut c = match setup.await {
        Ok(c) => {
            let _ = ready.send(Ok(())).await;
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone())).await;
            return Err(e);
        }
    };
    let (from, until) = loop {
        if let Some(w) = *window.borrow() {
            break w;
        }
        window.changed().await.map_err(|_| "run abandoned".to_string())?;
    };
    let mut tally = Tally::new(from, until);
    if stalled {
        // Hold the connection open without taking events until the run ends (bounded).
        while !shared.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return Ok(Tally::new(from, until));
    }
    loop {
        // Take what is queued without a timer per event; wait (bounded) only when idle.
        let first = match tokio::time::timeout(Duration::from_millis(100), c.next_event()).await {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(tally),
            Err(_) if shared.stop.load(Ordering::Relaxed) => return Ok(tally),
            Err(_) => continue,
        };
        let mut count = 0;
        let mut event = Some(first);
        while let Some(e) = event {
            match e {
                Event::Message { payload, .. } => {
                    if let Some((ts, publisher, seq)) = read_stamp(&payload) {
                        tally.record(publisher, seq, ts, ns(), payload.len());
                        count += 1;
                    }
                }
                Event::Gap(_) => tally.gaps_reported += 1,
                Event::Disconnected { .. } => {
                    shared.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            event = c.try_next_event().map_err(|e| e.to_string())?;
        }
        shared.delivered.fetch_add(count, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_back_into_its_payloads() {
        let mut out = Vec::new();
        for p in [&b"one"[..], b"", b"three"] {
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p);
        }
        let got: Vec<&[u8]> = Payloads(&out).collect();
        assert_eq!(got, [&b"one"[..], b"", b"three"]);
        // A truncated batch ends without reading past it.
        let got: Vec<&[u8]> = Payloads(&out[..out.len() - 2]).collect();
        assert_eq!(got, [&b"one"[..], b"", b"thr"]);
    }
}
