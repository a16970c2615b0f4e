//! Chooses the I/O backend: detects whether io_uring can be used here, so that a server
//! either runs on it, falls back to epoll with a logged warning (`io = auto`), or fails with
//! a clear message (`io = uring`) instead of a panic inside tokio-uring.

use crate::config::IoBackend;

use super::stream::Backend;

/// `Ok` if an io_uring instance can be created in this process.
pub fn check_io_uring() -> Result<(), String> {
    // A fail point for the tests of the fallback (never set in production): a host without
    // io_uring cannot be made inside a test.
    if std::env::var_os("MSGC_FAILPOINT").is_some_and(|v| v == "no-io-uring") {
        return Err("switched off by the fail point MSGC_FAILPOINT=no-io-uring".into());
    }
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        match v.trim() {
            "2" => return Err("disabled by the kernel (kernel.io_uring_disabled = 2)".into()),
            "1" if unsafe { libc::geteuid() } != 0 => {
                return Err("restricted by the kernel (kernel.io_uring_disabled = 1 and not root)".into())
            }
            _ => {}
        }
    }
    // On a thread of its own: the probe builds (and drops) a runtime, which must not happen
    // inside the caller's async context.
    let probe = std::thread::spawn(|| tokio_uring::Runtime::new(&tokio_uring::builder()).map(drop));
    match probe.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot create an io_uring instance ({e}); seccomp or an old kernel?")),
        Err(_) => Err("the io_uring probe failed".into()),
    }
}

/// The backend to run for the `io` choice, and for `auto` on a host without io_uring, why
/// it fell back to epoll. `Err` (why io_uring is unusable) only when io_uring was asked for
/// explicitly.
pub fn choose(io: IoBackend) -> Result<(Backend, Option<String>), String> {
    match io {
        IoBackend::Epoll => Ok((Backend::Epoll, None)),
        IoBackend::Uring => check_io_uring().map(|()| (Backend::Uring, None)),
        IoBackend::Auto => match check_io_uring() {
            Ok(()) => Ok((Backend::Uring, None)),
            Err(why) => {
                tracing::warn!("io_uring is unavailable ({why}); falling back to epoll");
                Ok((Backend::Epoll, Some(why)))
            }
        },
    }
}
