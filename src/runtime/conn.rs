//! The two tasks of a connection: one reader and one writer, each the only one of its kind
//! on the socket (two reads in flight would race).
//!
//! A read is never raced against a timer or dropped while in flight (tokio-uring does not
//! cancel it, and the bytes it receives would be lost): timeouts shut the socket down
//! instead, which completes the pending read. The same code runs on every backend: the
//! [`Stream`] hides which one carries the bytes.

use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use crate::core::{ConnId, Flow, Take};

use super::shard::ShardRt;
use super::stream::Stream;

/// Reads frames and hands them to the core until the connection closes.
pub async fn reader(shard: Rc<ShardRt>, id: ConnId, stream: Rc<Stream>) {
    // Small until the handshake is done: a connection that has not said who it is costs a
    // few KiB, whatever frame size it announces.
    let (first, _) = shard.core.borrow().read_budget(id);
    let mut buf = BytesMut::with_capacity(first);
    'read: loop {
        shard.wait_for_reading(id).await;
        let (tcpbuf, max_frame) = shard.core.borrow().read_budget(id);
        let room = reserve_for_next_read(&mut buf, tcpbuf, max_frame);
        // Into the spare tail (at most `room` bytes, so one read never carries more than
        // tcpbuf_size or the frame being completed), keeping the partial frame buffered.
        let (res, back) = stream.read(buf, room).await;
        buf = back;
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
pub async fn writer(shard: Rc<ShardRt>, id: ConnId, stream: Rc<Stream>, wake: Rc<Notify>) {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let take = shard.core.borrow_mut().take_batch(id, &mut batch, Instant::now());
        shard.flush();
        match take {
            Take::Write => match stream.write_all(std::mem::take(&mut batch)).await {
                Ok(empty) => batch = empty,
                Err(_) => break,
            },
            Take::Wait => wake.notified().await,
            Take::Finished => break,
        }
    }
    // Our side is done; the peer sees end of stream after the last frame.
    stream.close_write().await;
    shard.task_done(id);
}
