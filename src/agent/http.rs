//! A tiny HTTP/1.1 responder on `ha.metrics_address`, on the agent's tokio runtime: `GET /metrics`
//! (Prometheus text format 0.0.4), `/health`, `/leader`, `/replica[?max_lag_bytes=N]` for load
//! balancers and probes. One request per connection (`Connection: close`), GET and HEAD only, no
//! request body. Answers come from [`metrics`] over the shared snapshot; nothing here touches Postgres.
//! The listener follows the setting: a reload that changes it rebinds, an empty value closes it.

use super::metrics::{self, Probe, View};
use super::{Event, Events, Shared};
use crate::config::AgentAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request head larger than this is refused (431).
const MAX_HEAD: usize = 8192;
/// A client gets this long to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed right away.
const MAX_CONNECTIONS: usize = 32;
/// A failed bind is retried this often (the address may be in use for a while).
const RETRY: Duration = Duration::from_secs(5);

pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn text(status: u16, body: &str) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: format!("{body}\n"),
    }
}

/// The request line of a head: (method, path, query).
pub fn parse_request_line(head: &str) -> Option<(&str, &str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some((method, path, query))
}

fn max_lag(query: &str) -> Result<Option<u64>, String> {
    let mut max = None;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let Some(("max_lag_bytes", v)) = kv.split_once('=') else {
            return Err(format!("unknown parameter {kv:?}; only max_lag_bytes=N"));
        };
        let n = v
            .parse()
            .map_err(|_| format!("max_lag_bytes must be a whole number of bytes, not {v:?}"))?;
        max = Some(n);
    }
    Ok(max)
}

/// Answer one request head from `view` (the body is dropped later for HEAD).
pub fn route(head: &str, view: &View) -> Response {
    let Some((method, path, query)) = parse_request_line(head) else {
        return text(400, "bad request line; expected e.g. GET /metrics HTTP/1.1");
    };
    if method != "GET" && method != "HEAD" {
        return text(405, "only GET and HEAD");
    }
    let probe = |p: Probe| {
        let (ok, body) = metrics::probe(view, p);
        Response {
            status: if ok { 200 } else { 503 },
            content_type: "application/json",
            body,
        }
    };
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: METRICS_CONTENT_TYPE,
            body: metrics::render(view),
        },
        "/health" => probe(Probe::Health),
        "/leader" => probe(Probe::Leader),
        "/replica" => match max_lag(query) {
            Ok(max_lag_bytes) => probe(Probe::Replica { max_lag_bytes }),
            Err(e) => text(400, &e),
        },
        "/" => text(
            200,
            "pg_ha agent: GET /metrics, /health, /leader, /replica[?max_lag_bytes=N]",
        ),
        _ => text(404, "not found; try /metrics, /health, /leader, /replica"),
    }
}

/// The bytes sent back for `r` (no body for HEAD).
pub fn encode(r: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(r.body.as_bytes());
    }
    out
}

async fn read_head(sock: &mut TcpStream) -> Result<String, u16> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return String::from_utf8(buf).map_err(|_| 400);
        }
        if buf.len() > MAX_HEAD {
            return Err(431);
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                // A client that ends its head with a bare "\n\n" (or closes after it).
                return match buf.windows(2).position(|w| w == b"\n\n") {
                    Some(end) => String::from_utf8(buf[..end].to_vec()).map_err(|_| 400),
                    None => Err(400),
                };
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn serve_one(mut sock: TcpStream, shared: Arc<Shared>) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut sock)).await {
        Err(_) => return,
        Ok(h) => h,
    };
    let (resp, head_only) = match head {
        Ok(h) => (route(&h, &View::of(&shared)), h.starts_with("HEAD ")),
        Err(status) => (text(status, reason(status)), false),
    };
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        let _ = sock.write_all(&encode(&resp, head_only)).await;
        let _ = sock.shutdown().await;
    })
    .await;
}

/// Serve on `listener` until the address setting changes or the agent stops.
async fn serve(
    listener: TcpListener,
    shared: &Arc<Shared>,
    addr_rx: &mut tokio::sync::watch::Receiver<Option<AgentAddr>>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((sock, _)) = accepted else { continue };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    continue; // too many at once: dropping the socket closes it
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    serve_one(sock, shared).await;
                    drop(permit);
                });
            }
            _ = addr_rx.changed() => return,
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// The responder task: bind `ha.metrics_address` when set, rebind when it changes. A bind failure is
/// logged (once per address) and retried; it never stops the agent, metrics being optional.
pub async fn run(
    shared: Arc<Shared>,
    events: Events,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut addr_rx = shared.metrics_address.subscribe();
    let mut failing: Option<AgentAddr> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let addr = addr_rx.borrow_and_update().clone();
        let Some(addr) = addr else {
            tokio::select! {
                _ = addr_rx.changed() => continue,
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        };
        match TcpListener::bind(addr.to_string()).await {
            Ok(listener) => {
                failing = None;
                let _ = events.send(Event::Log(format!(
                    "serving metrics and health endpoints on http://{addr}/metrics"
                )));
                serve(listener, &shared, &mut addr_rx, &mut shutdown).await;
                let _ = events.send(Event::Log(format!("stopped serving metrics on {addr}")));
            }
            Err(e) => {
                if failing.as_ref() != Some(&addr) {
                    let _ = events.send(Event::Log(format!(
                        "cannot serve metrics on ha.metrics_address {addr}: {e}; retrying every {} s",
                        RETRY.as_secs()
                    )));
                    failing = Some(addr);
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = addr_rx.changed() => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::NodeSnapshot;
    use std::time::Instant;

    fn empty_view() -> View {
        View {
            me: NodeSnapshot::default(),
            peers: Vec::new(),
            now: Instant::now(),
            peer_fresh: Duration::from_secs(2),
        }
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line("GET /replica?max_lag_bytes=5 HTTP/1.1\r\nHost: x"),
            Some(("GET", "/replica", "max_lag_bytes=5"))
        );
        assert_eq!(
            parse_request_line("GET /leader HTTP/1.0"),
            Some(("GET", "/leader", ""))
        );
        for bad in [
            "",
            "GET",
            "GET /x",
            "GET x HTTP/1.1",
            "GET /x FTP/1",
            "GET /x HTTP/1.1 y",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn routing() {
        let v = empty_view();
        assert_eq!(route("POST /metrics HTTP/1.1", &v).status, 405);
        assert_eq!(route("GET /nope HTTP/1.1", &v).status, 404);
        assert_eq!(route("nonsense", &v).status, 400);
        assert_eq!(
            route("GET /replica?max_lag_bytes=x HTTP/1.1", &v).status,
            400
        );
        assert_eq!(route("GET /replica?foo=1 HTTP/1.1", &v).status, 400);
        // Not ready yet: metrics says so, every probe fails.
        let m = route("GET /metrics HTTP/1.1", &v);
        assert_eq!((m.status, m.content_type), (200, METRICS_CONTENT_TYPE));
        assert!(m.body.contains("pg_ha_up 0"));
        for p in ["/health", "/leader", "/replica"] {
            let r = route(&format!("GET {p} HTTP/1.1"), &v);
            assert_eq!(r.status, 503, "{p}");
            assert!(r.body.contains("agent is starting"), "{}", r.body);
        }
    }

    #[test]
    fn encoding() {
        let r = text(200, "hi");
        let full = String::from_utf8(encode(&r, false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(full.contains("Content-Length: 3\r\n"));
        assert!(full.contains("Connection: close\r\n"));
        assert!(full.ends_with("\r\n\r\nhi\n"));
        let head = String::from_utf8(encode(&r, true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
    }
}
