//! The two tasks of a connection: one reader and one writer, each the only one of its kind
//! on the socket (two reads in flight would race).
//!
//! A read is never raced against a timer or dropped while in flight (tokio-uring does not
//! cancel it, and the bytes it receives would be lost): timeouts shut the socket down
//! instead, which completes the pending read.

use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use crate::core::{ConnId, Flow, Take};

use super::shard::ShardRt;

/// Reads frames and hands them to the core until the connection closes.
pub async fn reader(shard: Rc<ShardRt>, id: ConnId, stream: Rc<TcpStream>) {
    // Small until the handshake is done: a connection that has not said who it is costs a
    // few KiB, whatever frame size it announces.
    let (first, _) = shard.core.borrow().read_budget(id);
    let mut buf = BytesMut::with_capacity(first);
    'read: loop {
        shard.wait_for_reading(id).await;
        let (tcpbuf, max_frame) = shard.core.borrow().read_budget(id);
        let room = reserve_for_next_read(&mut buf, tcpbuf, max_frame);
        // tokio-uring reads at the start of the buffer it is given: hand it the spare tail
        // (at most `room` bytes, so one read never carries more than tcpbuf_size or the
        // frame being completed) and keep the partial frame already buffered.
        let at = buf.len();
        let (res, tail) = stream.read(buf.slice(at..at + room)).await;
        buf = tail.into_inner();
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let flow = shard.core.borrow_mut().handle_input(id, &mut buf, Instant::now());
            shard.flush();
            match flow {
                Flow::Read => break,
                Flow::Yield => tokio::task::yield_now().await,
                Flow::Close => break 'read,
            }
        }
    }
    shard.task_done(id);
}

/// Ensures room for a read and returns how many bytes the read may take: `tcpbuf_size`,
/// or more to complete a frame whose header has arrived. Frames already split off keep the
/// old allocation alive; only a partial frame is moved to a new one.
fn reserve_for_next_read(buf: &mut BytesMut, tcpbuf: usize, max_frame: usize) -> usize {
    let pending = crate::proto::frame_len(buf, max_frame).ok().flatten().unwrap_or(0);
    let want = pending.saturating_sub(buf.len()).max(tcpbuf);
    if buf.capacity() - buf.len() < tcpbuf / 4 || buf.capacity() - buf.len() < want.min(tcpbuf) {
        buf.reserve(want);
    }
    (buf.capacity() - buf.len()).min(want)
}

/// Writes what the core queues, one vectored write of up to `tcpbuf_size` at a time.
pub async fn writer(shard: Rc<ShardRt>, id: ConnId, stream: Rc<TcpStream>, wake: Rc<Notify>) {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let take = shard.core.borrow_mut().take_batch(id, &mut batch, Instant::now());
        shard.flush();
        match take {
            Take::Write => match write_all(&stream, std::mem::take(&mut batch)).await {
                Ok(empty) => batch = empty,
                Err(_) => break,
            },
            Take::Wait => wake.notified().await,
            Take::Finished => break,
        }
    }
    // Our side is done; the peer sees end of stream after the last frame.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    shard.task_done(id);
}

/// Writes every slice, resubmitting after partial writes. Returns the emptied vector.
async fn write_all(stream: &TcpStream, mut bufs: Vec<Bytes>) -> std::io::Result<Vec<Bytes>> {
    while !bufs.is_empty() {
        let (res, mut b) = stream.writev(bufs).await;
        let mut n = res?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut done = 0;
        while done < b.len() && n >= b[done].len() {
            n -= b[done].len();
            done += 1;
        }
        b.drain(..done);
        if n > 0 {
            b[0].advance(n);
        }
        bufs = b;
    }
    Ok(bufs)
}
