//! `--client lib`: publishers and subscribers on the project's own client library
//! (`msgc::client`), so the figures show what an application gets, not only what the relay
//! can do. The raw codec driver (`--client raw`, `targets.rs` and `publish.rs`) stays for
//! comparison and for the other systems.
//!
//! Measures exactly as the raw driver: the same stamped payloads, the same [`Tally`] per
//! subscriber ([`crate::subscribe::SubConn::Lib`]), the same schedule and window, and the
//! same per-thread CPU sampling. Library publishers block in `send_many`, so each publisher
//! thread drives its publishers one after the other (no readiness polling).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use msgc::client::{Client, ClientOptions};

use crate::cpu::{sample_this_thread, ThreadUse};
use crate::fanout::{ns, Shared, Window};
use crate::publish::PubThreadResult;
use crate::stats::stamp;

/// Bytes of payload encoded at once at max rate.
const BATCH: usize = 64 * 1024;

/// Which client drives msgc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// msgc::client, the library applications use.
    Lib,
    /// msgc-bench's own codec client (non-blocking sockets, no library).
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

pub fn options(addr: SocketAddr, name: String) -> ClientOptions {
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
    index: u32,
    seq: u64,
    phase_ns: u64,
    failed: Option<String>,
}

impl LibPublisher {
    pub fn connect(
        addr: SocketAddr,
        index: usize,
        publishers: usize,
        group: &str,
        interval_ns: f64,
    ) -> Result<LibPublisher, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-lib-pub")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a publisher runtime: {e}"))?;
        let client = rt
            .block_on(Client::connect(options(addr, format!("pub{index}"))))
            .map_err(|e| format!("publisher cannot connect to {addr}: {e}"))?;
        Ok(LibPublisher {
            rt,
            client,
            group: group.to_string(),
            index: index as u32,
            seq: 0,
            phase_ns: (interval_ns * index as f64 / publishers.max(1) as f64) as u64,
            failed: None,
        })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Queues one probe (see [`crate::stats::PROBE_SEQ`]) unless the send queue is full.
    pub fn probe(&mut self, payload: &[u8]) -> Result<(), String> {
        match self.client.try_multicast(&self.group, payload) {
            Ok(()) | Err(msgc::client::ClientError::WouldBlock) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Queues a batch with one `send_many`, waiting for room if needed.
    fn send(&mut self, out: &[u8]) {
        if let Err(e) = self.rt.block_on(self.client.send_many(&self.group, Payloads(out))) {
            self.failed = Some(e.to_string());
        }
    }

    /// Waits until everything queued has left (bounded).
    fn finish(&mut self) {
        match self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), self.client.flush()).await })
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.failed = Some(e.to_string()),
            Err(_) => self.failed = Some("the client did not flush within 10 s".into()),
        }
    }
}

/// Appends one length-prefixed payload to a batch.
fn push(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// The payloads of a batch built by [`push`].
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

/// Runs library publishers until the window closes: at max rate a batch of about 64 KiB
/// each in turn; paced, every message when it is due (stamped with its due time, so a
/// late send counts as latency), sleeping until the next one.
pub fn run_thread(
    mut pubs: Vec<LibPublisher>,
    size: usize,
    interval_ns: f64,
    window: Window,
    shared: &Shared,
) -> PubThreadResult {
    let paced = interval_ns > 0.0;
    let mut payload = vec![0u8; size];
    let mut out = Vec::with_capacity(BATCH + size + 8);
    let mut cpu_from = None;
    let cpu_until = loop {
        let now = ns();
        if cpu_from.is_none() && now >= window.from {
            cpu_from = sample_this_thread(now);
        }
        let closing = now >= window.until;
        let mut next_due = now + 50_000_000;
        let mut counted = 0;
        for p in pubs.iter_mut().filter(|p| p.failed.is_none()) {
            out.clear();
            if !paced {
                if closing {
                    continue;
                }
                while out.len() < BATCH {
                    p.seq += 1;
                    stamp(&mut payload, now, p.index, p.seq);
                    push(&mut out, &payload);
                    counted += u64::from(now >= window.from);
                }
            } else {
                loop {
                    let at = window.start + p.phase_ns + (p.seq as f64 * interval_ns) as u64;
                    if at > now || at >= window.until {
                        next_due = next_due.min(at);
                        break;
                    }
                    p.seq += 1;
                    stamp(&mut payload, at, p.index, p.seq);
                    push(&mut out, &payload);
                    counted += u64::from(at >= window.from);
                    if out.len() >= BATCH && !closing {
                        next_due = now;
                        break;
                    }
                }
            }
            if !out.is_empty() {
                p.send(&out);
            }
        }
        shared.published.fetch_add(counted, Ordering::Relaxed);
        if closing {
            break sample_this_thread(now);
        }
        if paced {
            let wake = next_due.min(window.until);
            let now = ns();
            if wake > now {
                std::thread::sleep(Duration::from_nanos(wake - now));
            }
        }
    };
    for p in pubs.iter_mut().filter(|p| p.failed.is_none()) {
        p.finish();
    }
    let cpu = match (cpu_from, cpu_until) {
        (Some(a), Some(b)) => ThreadUse::between(a, b),
        _ => None,
    };
    let mut errors = Vec::new();
    let finals = pubs
        .iter()
        .map(|p| {
            if let Some(e) = &p.failed {
                errors.push(format!("publisher {}: {e}", p.index));
            }
            (p.index, p.failed.is_none().then_some(p.seq))
        })
        .collect();
    PubThreadResult { finals, errors, cpu }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_back_into_its_payloads() {
        let mut out = Vec::new();
        for p in [&b"one"[..], b"", b"three"] {
            push(&mut out, p);
        }
        let got: Vec<&[u8]> = Payloads(&out).collect();
        assert_eq!(got, [&b"one"[..], b"", b"three"]);
        // A truncated batch ends without reading past it.
        let got: Vec<&[u8]> = Payloads(&out[..out.len() - 2]).collect();
        assert_eq!(got, [&b"one"[..], b"", b"thr"]);
    }
}
