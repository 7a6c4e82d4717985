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
        "service": "web", "ports": [{"target": 80, "publish": publish}], "endpoints": endpoints,
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !ingress.open_connections().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "closed connections are not counted");
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
