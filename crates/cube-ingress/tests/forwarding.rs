//! The ingress forwarding real TCP connections on loopback to real listeners.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use cube_core::NodeId;
use cube_core::endpoints::ServiceEndpoints;
use cube_ingress::Ingress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A server that answers every connection with `name` and closes it.
async fn server(name: &'static str) -> u16 {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = c.write_all(name.as_bytes()).await;
            });
        }
    });
    port
}

/// A port nothing listens on (bound by the OS, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind((LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

fn node() -> NodeId {
    NodeId::from_uuid(Uuid::from_u128(1))
}

fn service(publish: u16, backends: &[u16]) -> ServiceEndpoints {
    service_in("tcp", publish, backends)
}

fn service_in(mode: &str, publish: u16, backends: &[u16]) -> ServiceEndpoints {
    let endpoints: Vec<serde_json::Value> = backends
        .iter()
        .enumerate()
        .map(|(i, port)| {
            serde_json::json!({"task": Uuid::from_u128(100 + i as u128), "node": node(),
                               "version": 1,
                               "addresses": [{"target": 80, "host": "127.0.0.1", "port": port}]})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "service": "web", "ports": [{"target": 80, "publish": publish, "mode": mode}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

async fn ask(port: u16) -> std::io::Result<String> {
    let mut c = TcpStream::connect((LOCALHOST, port)).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut answer)).await??;
    Ok(answer)
}

#[tokio::test]
async fn connections_spread_over_instances_and_skip_a_dead_one() {
    let (a, b, dead) = (server("a").await, server("b").await, free_port());
    let ingress = Ingress::new(node(), LOCALHOST.into(), CancellationToken::new());
    let publish = free_port();
    ingress.apply(&[service(publish, &[a, dead, b])]);
    assert_eq!(ingress.listeners()[0].error, None);
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..30 {
        *seen.entry(ask(publish).await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both live instances answered, every connection did: {seen:?}");
    assert!(seen.values().all(|n| *n >= 10), "spread: {seen:?}");
    // Each forwarding task ends just after its client saw the answer.
    nothing_open(&ingress, "closed connections are not counted").await;
}

/// Waits (5 s at most) until the ingress counts nothing open to any instance.
async fn nothing_open(ingress: &Ingress, why: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !ingress.open_connections().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_taken_port_is_reported_and_an_unpublished_one_stops_listening() {
    let taken = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let ingress = Ingress::new(node(), LOCALHOST.into(), CancellationToken::new());
    ingress.apply(&[service(port, &[server("a").await])]);
    let status = ingress.listeners();
    assert_eq!(status[0].error.as_deref(), Some("the port is already in use on this node"));
    drop(taken);
    // Applied again, the port is bound now that it is free.
    ingress.apply(&[service(port, &[server("a").await])]);
    assert_eq!(ingress.listeners()[0].error, None);
    assert_eq!(ask(port).await.unwrap(), "a");
    ingress.apply(&[]);
    assert!(ingress.listeners().is_empty());
    // The listener closes once its accept loop sees the cancellation.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(SocketAddr::from((LOCALHOST, port))).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still listening");
        tokio::task::yield_now().await;
    }
}

/// An HTTP server answering each request with `name` and the request's head, then closing
/// the connection (as busybox httpd does), so keep-alive is the ingress's doing.
async fn http_server(name: &'static str) -> u16 {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let head = read_head(&mut c).await;
                let body = format!("{name}\n{head}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// Reads up to the blank line ending a message's head.
async fn read_head(c: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Sends a GET on `c` (kept alive) and reads its answer: the status line and the body.
async fn exchange(c: &mut TcpStream) -> (String, String) {
    c.write_all(
        b"GET /hello?x=1 HTTP/1.1\r\nHost: web.test\r\nX-Forwarded-For: 198.51.100.9\r\n\r\n",
    )
    .await
    .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(c)).await.unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("a length: {head}"))
        .trim()
        .parse()
        .unwrap();
    assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let mut body = vec![0; length];
    c.read_exact(&mut body).await.unwrap();
    (head.lines().next().unwrap().to_owned(), String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn http_mode_balances_each_request_of_a_kept_alive_connection() {
    let (a, b, dead) = (http_server("a").await, http_server("b").await, free_port());
    let ingress = Ingress::new(node(), LOCALHOST.into(), CancellationToken::new());
    let publish = free_port();
    ingress.apply(&[service_in("http", publish, &[a, dead, b])]);
    let mut c = TcpStream::connect((LOCALHOST, publish)).await.unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let (status, body) = exchange(&mut c).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let (name, head) = body.split_once('\n').unwrap();
        *seen.entry(name.to_owned()).or_insert(0) += 1;
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("get /hello?x=1 http/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: web.test\r\n"), "the client's host: {head}");
        assert!(head.contains("\r\nx-forwarded-for: 198.51.100.9, 127.0.0.1\r\n"), "{head}");
        assert!(head.contains("\r\nforwarded: for=127.0.0.1;proto=http\r\n"), "{head}");
    }
    // One client connection, every request on it answered, by both live instances in turn.
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| *n >= 8), "spread: {seen:?}");
    nothing_open(&ingress, "answered requests are not counted").await;
}

#[tokio::test]
async fn http_mode_answers_503_without_instances_and_502_when_none_answers() {
    let ingress = Ingress::new(node(), LOCALHOST.into(), CancellationToken::new());
    let (empty, unreachable) = (free_port(), free_port());
    ingress.apply(&[
        service_in("http", empty, &[]),
        ServiceEndpoints {
            service: "down".into(),
            ..service_in("http", unreachable, &[free_port()])
        },
    ]);
    let mut c = TcpStream::connect((LOCALHOST, empty)).await.unwrap();
    assert_eq!(exchange(&mut c).await.0, "HTTP/1.1 503 Service Unavailable");
    let mut c = TcpStream::connect((LOCALHOST, unreachable)).await.unwrap();
    assert_eq!(exchange(&mut c).await.0, "HTTP/1.1 502 Bad Gateway");
    // The connection stays usable after the ingress's own answers.
    assert_eq!(exchange(&mut c).await.0, "HTTP/1.1 502 Bad Gateway");
}
