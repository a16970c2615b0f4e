//! systemd's service notifications (`sd_notify`), written out: one datagram of
//! `KEY=VALUE` lines to the Unix socket named by `NOTIFY_SOCKET` (a path, or an abstract
//! name written with a leading `@`). Used for `Type=notify`: `READY=1` once listening,
//! `RELOADING=1` with `MONOTONIC_USEC` during a reload, `WATCHDOG=1` while the shards
//! answer, `STOPPING=1` on the way out.
//!
//! Never fails the server: without `NOTIFY_SOCKET` every call does nothing, and a send
//! error is returned for the caller to log.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier named by `NOTIFY_SOCKET`, if the service manager set one.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) if !path.is_empty() => Notifier::new(&path.to_string_lossy()).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for `path` (`@name` for an abstract socket).
    pub fn new(path: &str) -> io::Result<Notifier> {
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(path)?,
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Notifier { socket, addr })
    }

    /// Sends `state`, newline-separated `KEY=VALUE` assignments, in one datagram.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr).map(drop)
    }

    /// The server listens and is ready for clients.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("READY=1\nSTATUS={status}"))
    }

    /// A reload starts; `ready` must follow when it is done.
    pub fn reloading(&self) -> io::Result<()> {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// The server is stopping.
    pub fn stopping(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("STOPPING=1\nSTATUS={status}"))
    }

    /// The server is alive (its shards answered).
    pub fn watchdog(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }
}

/// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`), if it is meant
/// for this process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// `CLOCK_MONOTONIC` in microseconds, as `RELOADING=1` wants it.
pub fn monotonic_usec() -> u64 {
    // SAFETY: clock_gettime writes a plain struct that we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_per_notification() {
        let dir = std::env::temp_dir().join(format!("msgc-notify-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.ready("listening").unwrap();
        n.reloading().unwrap();
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=listening");
        let len = listener.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        let usec: u64 = text.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").unwrap().parse().unwrap();
        assert!(usec > 0 && usec <= monotonic_usec());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn abstract_names_are_accepted() {
        assert!(Notifier::new("@msgc-test-abstract").is_ok());
    }
}
