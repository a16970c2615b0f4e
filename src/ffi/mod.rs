//! `libmsgc`: the client library for C (`include/msgc.h` is the contract; every buffer's
//! owner is written there).
//!
//! Owns the C entry points. Each runs the async [`Client`] on an internal runtime thread and
//! is wrapped in `catch_unwind`, so no panic crosses into C: a caught panic becomes
//! `MSGC_EINTERNAL` (or NULL). Events are moved from the client into a bounded queue here;
//! an eventfd is readable exactly while that queue is not empty, so C can `poll` it. Never
//! keeps a pointer it was given past the call it was given to.

mod event;

use std::collections::VecDeque;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::raw::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::client::{Client, ClientError, ClientOptions, Event};
use crate::config::Config;

pub use event::{MsgcEvent, MsgcMember, OwnedEvent};

/// Return codes (`MSGC_*` in the header).
pub const MSGC_OK: c_int = 0;
pub const MSGC_EAGAIN: c_int = -1;
pub const MSGC_EINVAL: c_int = -2;
pub const MSGC_ETOOLARGE: c_int = -3;
pub const MSGC_ECLOSED: c_int = -4;
pub const MSGC_ELOST: c_int = -5;
pub const MSGC_EINTERNAL: c_int = -6;

/// Events queued for C before the client stops reading (then TCP pushes back).
const MAX_QUEUED: usize = 4096;

/// A connected client as C holds it (`msgc_client *`).
pub struct MsgcClient {
    client: Option<Arc<Client>>,
    queue: Arc<EventQueue>,
    connect_timeout: Duration,
    /// Declared last: dropped after the client, whose tasks run on it.
    rt: Option<tokio::runtime::Runtime>,
}

/// The events waiting for C, and the eventfd that says so.
struct EventQueue {
    events: Mutex<Queued>,
    fd: OwnedFd,
    /// C took an event from a full queue.
    space: Notify,
}

struct Queued {
    events: VecDeque<Event>,
    /// The client's tasks are gone; nothing more will come.
    closed: bool,
}

impl EventQueue {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        // A panic while holding it leaves a valid queue (each step is whole).
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the eventfd readable (it stays so until `clear`).
    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A full counter (EAGAIN)
        // is already readable, which is all we want.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Makes the eventfd unreadable.
    fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }

    /// Moves events from the client into the queue until the client ends.
    async fn forward(self: Arc<Self>, mut events: crate::client::events::EventSource) {
        loop {
            let Some(event) = std::future::poll_fn(|cx| events.poll_next(cx)).await else {
                self.lock().closed = true;
                self.signal();
                return;
            };
            loop {
                let notified = self.space.notified();
                {
                    let mut q = self.lock();
                    if q.events.len() < MAX_QUEUED {
                        q.events.push_back(event);
                        if q.events.len() == 1 {
                            self.signal();
                        }
                        break;
                    }
                }
                // notify_one keeps a permit: a pop between the check and here is not missed.
                notified.await;
            }
        }
    }
}

/// Runs `f`, turning a panic into `fallback`.
fn guard<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

fn code_of(e: &ClientError) -> c_int {
    match e {
        ClientError::WouldBlock => MSGC_EAGAIN,
        ClientError::BadGroup(_) => MSGC_EINVAL,
        ClientError::TooLarge(_) => MSGC_ETOOLARGE,
        ClientError::Lost(_) => MSGC_ELOST,
        ClientError::Closed => MSGC_ECLOSED,
        _ => MSGC_EINTERNAL,
    }
}

/// Copies `msg` into C's `errbuf` (NUL-terminated, cut to fit), if one was given.
unsafe fn set_error(errbuf: *mut c_char, errbuf_len: usize, msg: &str) {
    if errbuf.is_null() || errbuf_len == 0 {
        return;
    }
    let n = msg.len().min(errbuf_len - 1);
    std::ptr::copy_nonoverlapping(msg.as_ptr(), errbuf.cast::<u8>(), n);
    *errbuf.add(n) = 0;
}

/// A C string as `&str`, or None if it is NULL or not UTF-8.
unsafe fn str_arg<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    CStr::from_ptr(p).to_str().ok()
}

/// What `msgc_connect` needs, read from its arguments.
unsafe fn connect_options(
    servers: *const *const c_char,
    server_count: usize,
    name: *const c_char,
    config_path: *const c_char,
) -> Result<ClientOptions, String> {
    let mut opts = if config_path.is_null() {
        ClientOptions::default()
    } else {
        let path = str_arg(config_path).ok_or("config_path is not UTF-8")?;
        let config = Config::load(std::path::Path::new(path)).map_err(|e| e.to_string())?;
        ClientOptions::from(&config.client)
    };
    if server_count > 0 {
        if servers.is_null() {
            return Err("servers is NULL but server_count is not 0".into());
        }
        let list = std::slice::from_raw_parts(servers, server_count);
        opts.servers = list
            .iter()
            .map(|&s| str_arg(s).map(str::to_string).ok_or("a server is NULL or not UTF-8"))
            .collect::<Result<_, _>>()?;
    }
    if !name.is_null() {
        opts.name = str_arg(name).ok_or("name is not UTF-8")?.to_string();
        if opts.name.len() > crate::proto::MAX_NAME_LEN {
            return Err(format!("name is longer than {} bytes", crate::proto::MAX_NAME_LEN));
        }
    }
    Ok(opts)
}

/// Connects (see `msgc_connect` in the header). Returns NULL on failure, with the reason in
/// `errbuf` when one is given.
///
/// # Safety
/// Pointers are NULL or valid as the header describes; they are not kept after the call.
#[no_mangle]
pub unsafe extern "C" fn msgc_connect(
    servers: *const *const c_char,
    server_count: usize,
    name: *const c_char,
    config_path: *const c_char,
    errbuf: *mut c_char,
    errbuf_len: usize,
) -> *mut MsgcClient {
    let result = catch_unwind(AssertUnwindSafe(|| connect(servers, server_count, name, config_path)));
    match result {
        Ok(Ok(client)) => Box::into_raw(Box::new(client)),
        Ok(Err(msg)) => {
            set_error(errbuf, errbuf_len, &msg);
            std::ptr::null_mut()
        }
        Err(_) => {
            set_error(errbuf, errbuf_len, "internal error (a panic was caught)");
            std::ptr::null_mut()
        }
    }
}

unsafe fn connect(
    servers: *const *const c_char,
    server_count: usize,
    name: *const c_char,
    config_path: *const c_char,
) -> Result<MsgcClient, String> {
    let opts = connect_options(servers, server_count, name, config_path)?;
    let connect_timeout = opts.connect_timeout;
    // One worker thread: the client's reader and writer are small, and C's calls are short.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("libmsgc-rt")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the client thread: {e}"))?;
    // SAFETY: eventfd has no memory arguments; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut client = rt.block_on(Client::connect(opts)).map_err(|e| e.to_string())?;
    let queue = Arc::new(EventQueue {
        events: Mutex::new(Queued { events: VecDeque::new(), closed: false }),
        fd,
        space: Notify::new(),
    });
    rt.spawn(queue.clone().forward(client.take_events()));
    Ok(MsgcClient { client: Some(Arc::new(client)), queue, connect_timeout, rt: Some(rt) })
}

/// The client behind a C pointer, if it is not NULL and not closed.
unsafe fn client<'a>(c: *const MsgcClient) -> Option<&'a MsgcClient> {
    c.as_ref().filter(|c| c.client.is_some())
}

/// Joins a group (queued; the view follows as an event).
///
/// # Safety
/// `c` is NULL or a live client; `group` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn msgc_join(c: *mut MsgcClient, group: *const c_char) -> c_int {
    guard(MSGC_EINTERNAL, || membership(c, group, true))
}

/// Leaves a group (queued; a view without this client follows).
///
/// # Safety
/// As `msgc_join`.
#[no_mangle]
pub unsafe extern "C" fn msgc_leave(c: *mut MsgcClient, group: *const c_char) -> c_int {
    guard(MSGC_EINTERNAL, || membership(c, group, false))
}

unsafe fn membership(c: *const MsgcClient, group: *const c_char, join: bool) -> c_int {
    let (Some(c), Some(group)) = (client(c), str_arg(group)) else {
        return MSGC_EINVAL;
    };
    let (Some(rt), Some(client)) = (&c.rt, &c.client) else {
        return MSGC_ECLOSED;
    };
    let result = if join { rt.block_on(client.join(group)) } else { rt.block_on(client.leave(group)) };
    match result {
        Ok(()) => MSGC_OK,
        Err(e) => code_of(&e),
    }
}

/// Multicasts `len` bytes at `data` to `group`; the bytes are copied before it returns.
/// `timeout_ms`: 0 never waits (MSGC_EAGAIN when the queue is full or the client is
/// reconnecting), > 0 waits at most that long, < 0 waits as long as it takes.
///
/// # Safety
/// `c` is NULL or a live client; `group` is NULL or a NUL-terminated string; `data` points
/// to `len` readable bytes (or `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn msgc_multicast(
    c: *mut MsgcClient,
    group: *const c_char,
    data: *const u8,
    len: usize,
    timeout_ms: c_int,
) -> c_int {
    guard(MSGC_EINTERNAL, || {
        let (Some(c), Some(group)) = (client(c), str_arg(group)) else {
            return MSGC_EINVAL;
        };
        if data.is_null() && len > 0 {
            return MSGC_EINVAL;
        }
        let payload: &[u8] = if len == 0 { &[] } else { std::slice::from_raw_parts(data, len) };
        let (Some(rt), Some(client)) = (&c.rt, &c.client) else {
            return MSGC_ECLOSED;
        };
        let result = match timeout_ms {
            0 => client.try_multicast(group, payload),
            t if t < 0 => rt.block_on(client.multicast(group, payload)),
            t => {
                let wait = Duration::from_millis(t as u64);
                rt.block_on(async {
                    tokio::time::timeout(wait, client.multicast(group, payload))
                        .await
                        .unwrap_or(Err(ClientError::WouldBlock))
                })
            }
        };
        match result {
            Ok(()) => MSGC_OK,
            Err(e) => code_of(&e),
        }
    })
}

/// Waits until everything multicast before the call was handed to the socket.
/// `timeout_ms` as for `msgc_multicast` (0 = only check).
///
/// # Safety
/// `c` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn msgc_flush(c: *mut MsgcClient, timeout_ms: c_int) -> c_int {
    guard(MSGC_EINTERNAL, || {
        let Some(c) = client(c) else {
            return MSGC_EINVAL;
        };
        let (Some(rt), Some(client)) = (&c.rt, &c.client) else {
            return MSGC_ECLOSED;
        };
        let wait = if timeout_ms < 0 { Duration::MAX } else { Duration::from_millis(timeout_ms as u64) };
        let result = rt.block_on(async {
            match tokio::time::timeout(wait, client.flush()).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::WouldBlock),
            }
        });
        match result {
            Ok(()) => MSGC_OK,
            Err(e) => code_of(&e),
        }
    })
}

/// A descriptor that is readable while events are waiting (poll it for POLLIN). Owned by
/// the client: do not read, write or close it.
///
/// # Safety
/// `c` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn msgc_fd(c: *const MsgcClient) -> c_int {
    guard(MSGC_EINTERNAL, || match c.as_ref() {
        Some(c) => c.queue.fd.as_raw_fd(),
        None => MSGC_EINVAL,
    })
}

/// Takes the next event without waiting: MSGC_OK with `*event` set (free it with
/// `msgc_event_free`), MSGC_EAGAIN when none is waiting, MSGC_ECLOSED when none ever will.
///
/// # Safety
/// `c` is NULL or a live client; `event` is NULL or points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn msgc_next_event(c: *mut MsgcClient, event: *mut *mut MsgcEvent) -> c_int {
    guard(MSGC_EINTERNAL, || {
        let (Some(c), false) = (c.as_ref(), event.is_null()) else {
            return MSGC_EINVAL;
        };
        let q = &c.queue;
        let (next, closed, was_full) = {
            let mut queued = q.lock();
            let was_full = queued.events.len() >= MAX_QUEUED;
            let next = queued.events.pop_front();
            // Readable exactly while events wait, or for good once the client is gone.
            if queued.events.is_empty() && !queued.closed {
                q.clear();
            }
            (next, queued.closed, was_full)
        };
        if was_full {
            q.space.notify_one();
        }
        match next {
            Some(e) => {
                *event = Box::into_raw(OwnedEvent::new(e)).cast::<MsgcEvent>();
                MSGC_OK
            }
            None if closed => MSGC_ECLOSED,
            None => MSGC_EAGAIN,
        }
    })
}

/// Frees an event returned by `msgc_next_event` (NULL is ignored).
///
/// # Safety
/// `event` is NULL or an event from `msgc_next_event` not freed before.
#[no_mangle]
pub unsafe extern "C" fn msgc_event_free(event: *mut MsgcEvent) {
    guard((), || {
        if !event.is_null() {
            // SAFETY: the pointer came from Box<OwnedEvent>, whose first field it points at.
            drop(Box::from_raw(event.cast::<OwnedEvent>()));
        }
    })
}

/// The current session id (it changes after a reconnection); 0 for NULL.
///
/// # Safety
/// `c` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn msgc_session_id(c: *const MsgcClient) -> u64 {
    guard(0, || client(c).and_then(|c| c.client.as_ref()).map_or(0, |cl| cl.session_id().0))
}

/// Sends what is queued (waiting at most `connect_timeout`), disconnects, stops the client's
/// thread and frees everything, the descriptor included. NULL is ignored.
///
/// # Safety
/// `c` is NULL or a live client, not used again (by any thread) after this call.
#[no_mangle]
pub unsafe extern "C" fn msgc_close(c: *mut MsgcClient) {
    guard((), || {
        if c.is_null() {
            return;
        }
        // SAFETY: the pointer came from Box::into_raw in msgc_connect.
        let mut c = Box::from_raw(c);
        if let (Some(rt), Some(client)) = (c.rt.take(), c.client.take()) {
            let wait = c.connect_timeout;
            rt.block_on(async {
                let _ = tokio::time::timeout(wait, client.flush()).await;
            });
            drop(client);
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    })
}

/// A static description of a return code.
#[no_mangle]
pub extern "C" fn msgc_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        MSGC_OK => c"ok",
        MSGC_EAGAIN => {
            c"would block: the send queue is full, the client is reconnecting, or no event is waiting"
        }
        MSGC_EINVAL => c"invalid argument (NULL, not UTF-8, or a bad group name)",
        MSGC_ETOOLARGE => c"the message does not fit in the maximum frame size",
        MSGC_ECLOSED => c"the client is closed",
        MSGC_ELOST => c"the connection was lost before the queued messages were written",
        MSGC_EINTERNAL => c"internal error",
        _ => c"unknown error code",
    };
    s.as_ptr()
}

/// `sizeof(msgc_event)` as this library lays it out, so C can check the header it was
/// compiled with matches.
#[no_mangle]
pub extern "C" fn msgc_event_size() -> usize {
    std::mem::size_of::<MsgcEvent>()
}
