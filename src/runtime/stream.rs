//! A connection's socket, whatever carries it: a tokio-uring socket, a plain tokio (epoll)
//! socket, or a TLS session over a tokio socket. Gives the reader and the writer the only
//! operations they need: read into the spare tail of a buffer, write a batch of slices
//! completely, half-close, and cut.
//!
//! Owns the byte moving and nothing else: never parses frames, never decides when to close.
//! A tokio-uring read in flight is never dropped here (the kernel would keep it and the bytes
//! it then receives would be lost); callers never race [`Stream::read`] against a timer.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_uring::buf::BoundedBuf;

use crate::core::MAX_IOV;

/// The shard runtime a socket is driven by, once chosen (see [`crate::config::IoBackend`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Epoll,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        })
    }
}

/// A TLS session over a tokio socket, server or client side.
pub type TlsStream = tokio_rustls::TlsStream<tokio::net::TcpStream>;

/// One connected socket, shared by its reader and its writer task (`Rc`).
pub struct Stream {
    kind: Kind,
    /// The socket's descriptor, for [`Stream::cut`]; it stays open as long as `kind` lives.
    fd: RawFd,
}

enum Kind {
    Uring(tokio_uring::net::TcpStream),
    Epoll(tokio::net::TcpStream),
    /// Reader and writer each borrow the session only inside one poll, never across an await.
    /// Boxed: a TLS session is large, and plain sockets are the common case.
    Tls(Box<RefCell<TlsStream>>),
}

impl Stream {
    /// Wraps a connected socket for the given backend. Must be called on a shard thread of
    /// that backend (the socket registers with the thread's runtime).
    pub fn plain(backend: Backend, std: std::net::TcpStream) -> io::Result<Stream> {
        let fd = std.as_raw_fd();
        let kind = match backend {
            Backend::Uring => Kind::Uring(tokio_uring::net::TcpStream::from_std(std)),
            Backend::Epoll => {
                std.set_nonblocking(true)?;
                Kind::Epoll(tokio::net::TcpStream::from_std(std)?)
            }
        };
        Ok(Stream { kind, fd })
    }

    /// Wraps a TLS session whose handshake is complete. Works on either backend: tokio's
    /// reactor runs inside tokio-uring's runtime too.
    pub fn tls(tls: TlsStream) -> Stream {
        let fd = tls.get_ref().0.as_raw_fd();
        Stream { kind: Kind::Tls(Box::new(RefCell::new(tls))), fd }
    }

    /// Reads at most `room` bytes into the spare capacity of `buf` (after its `len()`), so a
    /// partial frame already buffered stays in place. `Ok(0)` is end of stream.
    pub async fn read(&self, mut buf: BytesMut, room: usize) -> (io::Result<usize>, BytesMut) {
        match &self.kind {
            Kind::Uring(s) => {
                // tokio-uring reads at the start of the buffer it is given: hand it the tail.
                let at = buf.len();
                let (res, tail) = s.read(buf.slice(at..at + room)).await;
                (res, tail.into_inner())
            }
            Kind::Epoll(s) => loop {
                if let Err(e) = s.readable().await {
                    return (Err(e), buf);
                }
                match s.try_read_buf(&mut (&mut buf).limit(room)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    res => return (res, buf),
                }
            },
            Kind::Tls(s) => {
                let res = std::future::poll_fn(|cx| poll_read_tail(s, cx, &mut buf, room)).await;
                (res, buf)
            }
        }
    }

    /// Writes every slice of `bufs`, resubmitting after partial writes, at most [`MAX_IOV`]
    /// slices per system call. Returns the emptied vector for reuse.
    pub async fn write_all(&self, mut bufs: Vec<Bytes>) -> io::Result<Vec<Bytes>> {
        match &self.kind {
            Kind::Uring(s) => {
                while !bufs.is_empty() {
                    let rest = bufs.split_off(bufs.len().min(MAX_IOV));
                    let (res, mut now) = s.writev(bufs).await;
                    let n = res?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    consume(&mut now, n);
                    now.extend(rest);
                    bufs = now;
                }
            }
            Kind::Epoll(s) => {
                while !bufs.is_empty() {
                    s.writable().await?;
                    let iov: Vec<IoSlice<'_>> = bufs.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
                    match s.try_write_vectored(&iov) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            drop(iov);
                            consume(&mut bufs, n)
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Kind::Tls(s) => {
                // TLS copies into records anyway; one slice per call keeps it simple.
                let mut io = Shared(s);
                while !bufs.is_empty() {
                    let n = io.write(&bufs[0]).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    consume(&mut bufs, n);
                }
                io.flush().await?;
            }
        }
        Ok(bufs)
    }

    /// Our side is done: the peer sees end of stream after what was written (and, over TLS,
    /// a close_notify alert, if the peer takes it within a second).
    pub async fn close_write(&self) {
        if let Kind::Tls(s) = &self.kind {
            // A TLS shutdown may wait on a peer that does not read; bounded, then cut.
            let bye = tokio::time::timeout(std::time::Duration::from_secs(1), Shared(s).shutdown()).await;
            if matches!(bye, Ok(Ok(()))) {
                return;
            }
        }
        self.shutdown(libc::SHUT_WR);
    }

    /// Shuts the socket down both ways at once: a pending read completes (with end of
    /// stream) and the next write fails, so both tasks end. Used for kills and timeouts.
    pub fn cut(&self) {
        self.shutdown(libc::SHUT_RDWR);
    }

    fn shutdown(&self, how: libc::c_int) {
        // invariant: `fd` belongs to the socket `self.kind` owns, open while `self` lives.
        // shutdown(2) on it is a plain system call with no memory effects; its errors
        // (not connected, already shut) mean there is nothing left to do.
        unsafe {
            libc::shutdown(self.fd, how);
        }
    }
}

/// Drops what `n` written bytes covered from the front of `bufs`.
fn consume(bufs: &mut Vec<Bytes>, mut n: usize) {
    let mut done = 0;
    while done < bufs.len() && n >= bufs[done].len() {
        n -= bufs[done].len();
        done += 1;
    }
    bufs.drain(..done);
    if n > 0 {
        if let Some(first) = bufs.first_mut() {
            first.advance(n);
        }
    }
}

/// Polls a TLS read into the spare capacity of `buf`, at most `room` bytes.
fn poll_read_tail(
    s: &RefCell<TlsStream>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    room: usize,
) -> Poll<io::Result<usize>> {
    let spare = buf.spare_capacity_mut();
    let room = room.min(spare.len());
    let mut rb = ReadBuf::uninit(&mut spare[..room]);
    let Ok(mut tls) = s.try_borrow_mut() else {
        // Never happens (one reader, one writer, no borrow across an await); fail safe.
        return Poll::Ready(Err(io::Error::other("TLS session busy")));
    };
    match Pin::new(&mut *tls).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// A TLS session borrowed for the length of each poll, so that the writer can use the
/// `AsyncWriteExt` helpers while the reader holds its own pending read.
struct Shared<'a>(&'a RefCell<TlsStream>);

impl Shared<'_> {
    fn with<T>(&self, f: impl FnOnce(Pin<&mut TlsStream>) -> Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match self.0.try_borrow_mut() {
            Ok(mut tls) => f(Pin::new(&mut *tls)),
            Err(_) => Poll::Ready(Err(io::Error::other("TLS session busy"))),
        }
    }
}

impl AsyncWrite for Shared<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.with(|s| s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_drops_written_slices_and_advances_a_partial_one() {
        let mut bufs =
            vec![Bytes::from_static(b"abc"), Bytes::from_static(b"de"), Bytes::from_static(b"fgh")];
        consume(&mut bufs, 4);
        assert_eq!(bufs, vec![Bytes::from_static(b"e"), Bytes::from_static(b"fgh")]);
        consume(&mut bufs, 1);
        assert_eq!(bufs, vec![Bytes::from_static(b"fgh")]);
        consume(&mut bufs, 3);
        assert!(bufs.is_empty());
    }
}
