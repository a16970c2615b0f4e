//! The control socket between `msgc-ctl` and `msgc-server`: a local Unix stream socket
//! (mode 0660, so only the service's user and group can use it; never a network socket)
//! carrying one JSON request per line and one JSON response per line.
//!
//! Owns the request and response types, the listening side (which hands each request to the
//! server's main loop and writes back its answer) and the client side `msgc-ctl` uses.
//! Never acts on a request itself: what a request does is the server's.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Longest request line.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Longest response line `msgc-ctl` accepts (a session list can be long).
pub const MAX_RESPONSE: usize = 256 << 20;
/// How long one side may take to send its line.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Control connections served at once.
const MAX_CONNECTIONS: usize = 8;
/// The socket's permissions: the service's user and group.
pub const SOCKET_MODE: u32 = 0o660;

/// What `msgc-ctl` asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The server's identity, counters, connections, memory and links (a `ServerReport`).
    Status,
    /// Every configured peer and its link (`Vec<LinkReport>`).
    Peers,
    /// Every group with members (`Vec<GroupReport>`).
    Groups,
    /// Every client session with its backlog (`Vec<SessionReport>`).
    Sessions,
    /// One `msgc_server` option, or all of them (`Vec<ConfigValue>`).
    ConfigGet { key: Option<String> },
    /// Sets one option and applies it as a reload would (`ConfigValue`, the running value).
    ConfigSet { key: String, value: String },
    /// Rereads the config file, as SIGHUP does (`ReloadResult`).
    Reload,
    /// Stop accepting, ask clients to move, exit when none is left or after the deadline
    /// (`DrainResult`).
    Drain { deadline_secs: u64 },
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub result: serde_json::Value,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(result) => Response { ok: true, error: None, result },
            Err(e) => Response::error(format!("cannot encode the result: {e}")),
        }
    }
    pub fn error(message: impl Into<String>) -> Response {
        Response { ok: false, error: Some(message.into()), result: serde_json::Value::Null }
    }
}

/// One option's running value, in the config syntax.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValue {
    pub key: String,
    pub value: String,
    /// Set when the change waits for something (a restart) or was not applied in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    pub file: Option<String>,
    /// Options whose running value changed.
    pub changed: Vec<String>,
    pub notes: Vec<String>,
}

/// What a drain started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainResult {
    /// Clients connected when the drain began, each asked to move.
    pub clients: usize,
    pub deadline_secs: u64,
}

/// Control socket errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create control socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("control socket {0} is in use by a running server")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("cannot connect to control socket {path}: {source} (is msgc-server running with this --control path?)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("control socket i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server's answer is not valid: {0}")]
    BadResponse(String),
}

/// A request waiting for the server's answer.
pub type Pending = (Request, oneshot::Sender<Response>);

/// A bound control socket. Dropping it removes the socket file (if it is still this one).
#[derive(Debug)]
pub struct ControlSocket {
    listener: Option<std::os::unix::net::UnixListener>,
    path: PathBuf,
    inode: (u64, u64),
}

impl ControlSocket {
    /// Binds `path` with mode 0660. A stale socket left by a server that is gone is
    /// replaced; a live one, or a file that is not a socket, is an error.
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket(path.to_path_buf()));
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ControlError::InUse(path.to_path_buf())),
                Err(_) => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        // The socket is created with the umask's permissions: narrow them for the bind so
        // there is no moment when others could connect. (Startup and reloads run on the
        // main thread; nothing else creates files meanwhile.)
        // SAFETY: umask only swaps the process's file creation mask.
        let old = unsafe { libc::umask(0o117) };
        let bound = std::os::unix::net::UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let err = |source| ControlError::Bind { path: path.to_path_buf(), source };
        let listener = bound.map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let meta = std::fs::metadata(path).map_err(err)?;
        Ok(ControlSocket {
            listener: Some(listener),
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections and hands their requests to `requests` until the task is
    /// aborted (the socket file is removed then). Must run inside a tokio runtime.
    pub async fn serve(mut self, requests: mpsc::Sender<Pending>) {
        let Some(std) = self.listener.take() else { return };
        let listener = match tokio::net::UnixListener::from_std(std) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(path = %self.path.display(), "control socket: {e}");
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                if let Err(e) = converse(stream, requests).await {
                    tracing::debug!("control connection ended: {e}");
                }
                drop(permit);
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // Only our own file: another server may have replaced a socket it found stale.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.inode {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Answers the requests of one connection, one line each, until it closes.
async fn converse(stream: tokio::net::UnixStream, requests: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let n = match tokio::time::timeout(IO_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let response = if line.len() > MAX_REQUEST {
            Response::error(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => {
                    if !matches!(req, Request::Status | Request::Peers | Request::Groups | Request::Sessions)
                    {
                        tracing::info!(uid, request = ?req, "control request");
                    }
                    let (tx, rx) = oneshot::channel();
                    if requests.send((req, tx)).await.is_err() {
                        Response::error("the server is stopping")
                    } else {
                        rx.await.unwrap_or_else(|_| Response::error("the server is stopping"))
                    }
                }
                Err(e) => Response::error(format!("not a valid request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        match tokio::time::timeout(IO_TIMEOUT, write.write_all(&out)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        }
        if line.len() > MAX_REQUEST {
            return Ok(());
        }
    }
}

use tokio::io::AsyncReadExt as _;

/// Sends one request to the server at `path` and waits up to `wait` for its answer
/// (blocking; for `msgc-ctl`).
pub fn request(path: &Path, req: &Request, wait: Duration) -> Result<Response, ControlError> {
    let stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|source| ControlError::Connect { path: path.to_path_buf(), source })?;
    stream.set_read_timeout(Some(wait))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::BadResponse(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reader = BufReader::new(std::io::Read::take(&stream, MAX_RESPONSE as u64));
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer)?;
    if answer.is_empty() {
        return Err(ControlError::BadResponse("the server closed the connection without answering".into()));
    }
    serde_json::from_slice(&answer).map_err(|e| ControlError::BadResponse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_per_line() {
        let r = Request::ConfigSet { key: "max_backlog".into(), value: "100".into() };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"cmd":"config_set","key":"max_backlog","value":"100"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(), Request::Status);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_disk"}"#).is_err());
    }

    #[test]
    fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = std::env::temp_dir().join(format!("msgc-ctl-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let _ = std::fs::remove_file(&path);
        let first = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        assert!(matches!(ControlSocket::bind(&path), Err(ControlError::InUse(_))));
        drop(first);
        assert!(!path.exists());
        // A server that died leaves its socket file behind, with nobody listening.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (tx, mut rx) = mpsc::channel::<Pending>(1);
        let second = ControlSocket::bind(&path).unwrap();
        let p = path.clone();
        rt.block_on(async move {
            let server = tokio::spawn(second.serve(tx));
            let answer = tokio::task::spawn_blocking(move || request(&p, &Request::Peers, IO_TIMEOUT));
            let (req, reply) = rx.recv().await.unwrap();
            assert_eq!(req, Request::Peers);
            reply.send(Response::ok(vec!["x"])).unwrap();
            let answer = answer.await.unwrap().unwrap();
            assert!(answer.ok);
            assert_eq!(answer.result, serde_json::json!(["x"]));
            server.abort();
            let _ = server.await;
        });
        assert!(!path.exists(), "the socket file goes with the server");
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(ControlSocket::bind(&path), Err(ControlError::NotASocket(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
