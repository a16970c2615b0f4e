//! The metrics endpoint: a deliberately small HTTP/1.1 server that answers `GET` (and
//! `HEAD`) for `/metrics` (Prometheus text format), `/varz` (JSON status) and `/healthz`,
//! one request per connection.
//!
//! Strict limits, because it may face a network: the request head is at most
//! [`MAX_REQUEST`] bytes and must arrive within [`IO_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] requests are served at once (more wait in the kernel's backlog), and
//! nothing but the request line is interpreted. Never touches a shard directly.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::config::ServerConfig;
use crate::runtime::Inspector;

/// Largest request head read (request line and headers).
pub const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request, and to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at the same time.
pub const MAX_CONNECTIONS: usize = 16;
/// How long the shards may take to report.
const REPORT_WAIT: Duration = Duration::from_secs(2);

/// Serves until the task is aborted. `config` is the running `msgc_server` scope (for
/// `/varz`).
pub async fn serve(listener: TcpListener, inspector: Inspector, config: watch::Receiver<ServerConfig>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // invariant: the semaphore is never closed.
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (inspector, config) = (inspector.clone(), config.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &inspector, &config).await {
                tracing::debug!(%peer, "metrics request failed: {e}");
            }
            drop(permit);
        });
    }
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    head_only: bool,
    path: String,
}

/// Why a request is refused, with its status line.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    TooLarge,
    Method,
}

async fn answer(
    mut stream: TcpStream,
    inspector: &Inspector,
    config: &watch::Receiver<ServerConfig>,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return respond(&mut stream, 408, "Request Timeout", "text/plain", "request timeout\n", false)
                .await
        }
    };
    let req = match head.map(|h| parse_request(&h)) {
        Ok(Ok(r)) => r,
        Ok(Err(Refusal::Method)) => {
            return respond(
                &mut stream,
                405,
                "Method Not Allowed",
                "text/plain",
                "only GET and HEAD\n",
                false,
            )
            .await
        }
        Err(Refusal::TooLarge) | Ok(Err(Refusal::TooLarge)) => {
            return respond(
                &mut stream,
                431,
                "Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
                false,
            )
            .await
        }
        Err(_) | Ok(Err(Refusal::BadRequest)) => {
            return respond(&mut stream, 400, "Bad Request", "text/plain", "bad request\n", false).await
        }
    };
    let head_only = req.head_only;
    match req.path.as_str() {
        "/metrics" | "/varz" | "/healthz" => match inspector.report(false, REPORT_WAIT).await {
            Ok(report) => match req.path.as_str() {
                "/metrics" => {
                    let body = super::metrics::render(&report);
                    respond(&mut stream, 200, "OK", super::metrics::CONTENT_TYPE, &body, head_only).await
                }
                "/varz" => {
                    let cfg = config.borrow().clone();
                    let mut body = serde_json::to_string_pretty(&super::metrics::varz(&report, &cfg))
                        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
                    body.push('\n');
                    respond(&mut stream, 200, "OK", "application/json", &body, head_only).await
                }
                _ => respond(&mut stream, 200, "OK", "text/plain", "ok\n", head_only).await,
            },
            Err(e) => {
                let body = format!("the server's shards did not report: {e}\n");
                respond(&mut stream, 503, "Service Unavailable", "text/plain", &body, head_only).await
            }
        },
        "/" => {
            let body = "msgc-server: /metrics (Prometheus), /varz (JSON), /healthz\n";
            respond(&mut stream, 200, "OK", "text/plain", body, head_only).await
        }
        _ => respond(&mut stream, 404, "Not Found", "text/plain", "not found\n", head_only).await,
    }
}

/// Reads until the blank line that ends the head; refuses heads over [`MAX_REQUEST`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Result<Vec<u8>, Refusal>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Err(Refusal::BadRequest));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf) {
            buf.truncate(end);
            return Ok(Ok(buf));
        }
        if buf.len() > MAX_REQUEST {
            return Ok(Err(Refusal::TooLarge));
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

/// Reads the request line: `METHOD TARGET HTTP/1.x`. The query string is ignored.
fn parse_request(head: &[u8]) -> Result<Request, Refusal> {
    if head.len() > MAX_REQUEST {
        return Err(Refusal::TooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| Refusal::BadRequest)?;
    let line = text.lines().next().ok_or(Refusal::BadRequest)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequest);
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Err(Refusal::BadRequest);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => return Err(Refusal::Method),
        _ => return Err(Refusal::BadRequest),
    };
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(Request { head_only, path })
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    reason: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    match tokio::time::timeout(IO_TIMEOUT, stream.write_all(out.as_bytes())).await {
        Ok(r) => r?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    }
    let _ = stream.shutdown().await;
    if code >= 400 {
        // A refused request may have left bytes unread; closing over them would reset the
        // connection and could destroy the answer before the client reads it. Read a bounded
        // amount, briefly, until the client closes.
        let mut sink = [0u8; 4096];
        let mut budget = 16 * MAX_REQUEST;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while budget > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => budget = budget.saturating_sub(n),
                }
            }
        })
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let ok = parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a").unwrap();
        assert_eq!(ok, Request { head_only: false, path: "/metrics".into() });
        assert!(parse_request(b"HEAD /varz HTTP/1.0").unwrap().head_only);
        assert_eq!(parse_request(b"POST /metrics HTTP/1.1"), Err(Refusal::Method));
        for bad in [
            &b"GET /metrics"[..],
            b"GET metrics HTTP/1.1",
            b"GET / HTTP/2",
            b"\xff\xfe",
            b"",
            b"get / HTTP/1.1",
        ] {
            assert_eq!(parse_request(bad), Err(Refusal::BadRequest), "{bad:?}");
        }
        assert_eq!(parse_request(&vec![b'a'; MAX_REQUEST + 1]), Err(Refusal::TooLarge));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(14));
    }
}
