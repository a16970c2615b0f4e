//! The client's tasks: a supervisor that connects, reads and reconnects, and per connection
//! a writer that drains the send queue.
//!
//! Publishers encode frames straight into the [`Session`]'s send queue under a small mutex
//! (no channel send and no wakeup per message); the writer swaps the whole queue out and
//! writes it in one go, up to `tcpbuf_size` bytes, while the publishers fill the other buffer.
//! The reader runs beside it on its own half of the stream, so reads never wait for writes.
//! Reads stop while the application is not taking events (the event queue is bounded), so TCP
//! pushes back on the server instead of the client buffering without limit. Never holds the
//! mutex across an await; never sleeps except for the reconnect delay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use super::events::EventSink;
use super::inbound::Inbound;
use super::session::Session;
use super::transport::{self, ReadHalf, WriteHalf};
use super::{ClientError, ClientOptions, Event};

/// What the application's handle and the tasks share.
pub struct Shared {
    session: Mutex<Session>,
    /// A frame was queued into an empty send queue (a permit is kept if the writer is busy).
    pub wake_writer: Notify,
    /// The send queue has room, bytes were written, or the connection came or went.
    pub progress: Notify,
    pub session_id: AtomicU64,
}

impl Shared {
    pub fn new(session: Session) -> Shared {
        Shared {
            session: Mutex::new(session),
            wake_writer: Notify::new(),
            progress: Notify::new(),
            session_id: AtomicU64::new(0),
        }
    }

    /// The session. Its state stays consistent if a holder panicked (each method leaves it
    /// whole), so a poisoned lock is taken over rather than propagated.
    pub fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Aborts a task when dropped: the supervisor's tasks end with it, and it ends with the
/// [`Client`](super::Client).
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum End {
    /// The application dropped its end, or the first connection failed.
    Closed,
    /// The connection was lost; reconnect.
    Lost(String),
}

/// The supervisor: connects to the first server that answers, serves the connection until
/// it is lost, and reconnects after a backoff, until the application is gone.
pub async fn run(
    opts: ClientOptions,
    shared: Arc<Shared>,
    events: EventSink,
    ready: oneshot::Sender<Result<(), ClientError>>,
) {
    let mut ready = Some(ready);
    let seed = jitter_seed(&shared);
    let mut failures = 0u32;
    loop {
        match transport_any(&opts).await {
            Ok((reader, writer, server)) => {
                let epoch = {
                    let mut s = shared.session();
                    s.handle_connected(&server, Instant::now());
                    s.epoch()
                };
                shared.wake_writer.notify_one();
                let write = tokio::spawn(write_loop(shared.clone(), writer, epoch));
                let mut write = AbortOnDrop(write);
                let end = tokio::select! {
                    end = read_loop(&opts, &shared, reader, &events, &mut ready, &mut failures) => end,
                    _ = &mut write.0 => End::Lost("write failed".into()),
                };
                drop(write);
                let reason = match end {
                    End::Closed => return,
                    End::Lost(reason) => reason,
                };
                if let Some(r) = ready.take() {
                    // The first connection must complete its handshake for connect() to succeed.
                    let _ = r.send(Err(ClientError::Lost(reason)));
                    return;
                }
                tracing::debug!(%server, "connection lost: {reason}");
                let batch: Vec<Event> = {
                    let mut s = shared.session();
                    s.handle_disconnected(reason);
                    std::iter::from_fn(|| s.poll_event()).collect()
                };
                shared.progress.notify_waiters();
                if !events.send(batch).await {
                    return;
                }
            }
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
            }
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(reconnect_delay(opts.reconnect_interval, seed, failures)).await;
    }
}

/// Reads, decodes and hands events over until the connection ends.
async fn read_loop(
    opts: &ClientOptions,
    shared: &Shared,
    mut reader: ReadHalf,
    events: &EventSink,
    ready: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
    failures: &mut u32,
) -> End {
    let mut inbound = Inbound::new(opts.max_frame_size, opts.idle_timeout, Instant::now());
    let mut buf = BytesMut::with_capacity(opts.tcpbuf_size);
    let mut batch = Vec::new();
    loop {
        if buf.capacity() - buf.len() < opts.tcpbuf_size / 4 {
            buf.reserve(opts.tcpbuf_size);
        }
        // A tokio read is cancel-safe: a timeout loses no bytes.
        match tokio::time::timeout_at(inbound.idle_deadline().into(), reader.read_buf(&mut buf)).await {
            Err(_) => return End::Lost(ClientError::IdleTimeout.to_string()),
            Ok(Ok(0)) => return End::Lost("server closed the connection".into()),
            Ok(Err(e)) => return End::Lost(format!("read failed: {e}")),
            Ok(Ok(_)) => inbound.handle_received(Instant::now()),
        }
        let failed = loop {
            match inbound.handle_bytes(&mut buf, &mut batch) {
                Ok(None) => break None,
                Ok(Some(frame)) => {
                    let result = {
                        let mut s = shared.session();
                        let was_ready = s.is_ready();
                        let result = s.handle_frame(frame);
                        if s.is_ready() && !was_ready {
                            shared.session_id.store(s.session_id().0, Ordering::Relaxed);
                            inbound.set_session(s.session_id());
                            *failures = 0;
                            if let Some(r) = ready.take() {
                                let _ = r.send(Ok(()));
                            }
                        }
                        batch.extend(std::iter::from_fn(|| s.poll_event()));
                        result
                    };
                    // Rejoins were queued, and waiting publishers may go on.
                    shared.wake_writer.notify_one();
                    shared.progress.notify_waiters();
                    if let Err(e) = result {
                        break Some(e);
                    }
                }
                Err(e) => break Some(e),
            }
        };
        // What was decoded before a failure is delivered, then the failure ends the connection.
        let capacity = batch.capacity();
        if !events.send(std::mem::replace(&mut batch, Vec::with_capacity(capacity))).await {
            return End::Closed;
        }
        if let Some(e) = failed {
            if let (Some(r), ClientError::Rejected { .. }) = (ready.take(), &e) {
                // The first server refused the handshake: connect() reports it as is.
                let _ = r.send(Err(e));
                return End::Closed;
            }
            return End::Lost(e.to_string());
        }
        // Waiting for the application is not the server's silence.
        inbound.handle_received(Instant::now());
    }
}

/// Writes whatever the publishers queued, one batch per write, and keepalives when idle.
async fn write_loop(shared: Arc<Shared>, mut writer: WriteHalf, epoch: u64) {
    let mut spare = BytesMut::new();
    loop {
        let (took, keepalive) = {
            let mut s = shared.session();
            (s.take_transmit(&mut spare, Instant::now()), s.keepalive_deadline())
        };
        if took {
            // The queue is empty again: publishers waiting for room may go on.
            shared.progress.notify_waiters();
            if let Err(e) = writer.write_all(&spare).await {
                tracing::debug!("write failed: {e}");
                return;
            }
            shared.session().handle_written(epoch, spare.len());
            spare.clear();
            shared.progress.notify_waiters();
            continue;
        }
        let deadline = keepalive.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        if tokio::time::timeout_at(deadline.into(), shared.wake_writer.notified()).await.is_err() {
            shared.session().handle_timeout(Instant::now());
        }
    }
}

/// Tries the servers in order, each within `connect_timeout`.
async fn transport_any(opts: &ClientOptions) -> Result<(ReadHalf, WriteHalf, String), ClientError> {
    for server in &opts.servers {
        match tokio::time::timeout(opts.connect_timeout, transport::connect(opts, server)).await {
            Ok(Ok((r, w))) => return Ok((r, w, server.clone())),
            // A refused certificate is worth an operator's attention; a server that is down
            // during failover is not.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!(%server, "TLS handshake failed: {e}")
            }
            Ok(Err(e)) => tracing::debug!(%server, "connect failed: {e}"),
            Err(_) => tracing::debug!(%server, "connect timed out"),
        }
    }
    Err(ClientError::NoServer { tried: opts.servers.clone() })
}

/// The wait before reconnection attempt `failures` (1 = the first after a loss): the
/// interval doubles with each failed attempt up to 8 × `reconnect_interval`, ± 20 % jitter so
/// that the clients of a restarted server do not come back in lockstep.
pub fn reconnect_delay(interval: Duration, seed: u64, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(3);
    crate::mesh::backoff_delay(interval.saturating_mul(factor), seed, u64::from(failures))
}

/// A seed that differs between clients and processes.
fn jitter_seed(shared: &Arc<Shared>) -> u64 {
    use std::hash::BuildHasher;
    let addr = Arc::as_ptr(shared) as usize as u64;
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_doubles_to_a_cap_with_jitter() {
        let base = Duration::from_millis(1000);
        let within = |d: Duration, nominal: u64| {
            let ms = d.as_millis() as u64;
            ms >= nominal * 8 / 10 && ms <= nominal * 12 / 10
        };
        for seed in 0..50 {
            assert!(within(reconnect_delay(base, seed, 1), 1000));
            assert!(within(reconnect_delay(base, seed, 2), 2000));
            assert!(within(reconnect_delay(base, seed, 3), 4000));
            for failures in [4, 5, 40, u32::MAX] {
                assert!(within(reconnect_delay(base, seed, failures), 8000), "capped at 8x");
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|s| reconnect_delay(base, s, 5)).collect();
        assert!(spread.len() > 40, "jitter spreads clients apart");
    }
}
