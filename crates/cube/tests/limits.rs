//! What a client can hold of a server: connections, headers, bodies. Many idle or slow
//! clients cannot starve the others (real `cube manager` processes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_cannot_starve_the_api() {
    const LIMIT: usize = 64;
    let m = TestManager::start(&["--max-connections", &LIMIT.to_string()]).await;
    let addr = m.url.trim_start_matches("http://").to_owned();
    let baseline = open_fds(m.process.pid());

    // Ten times the limit of connections that send nothing, then as many that send half a
    // request's headers and stop (slowloris).
    let mut held = Vec::new();
    for i in 0..(10 * LIMIT) {
        let mut s = TcpStream::connect(&addr).unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").unwrap();
        }
        held.push(s);
    }
    // Every request of a working client is still answered, at once.
    for _ in 0..20 {
        assert!(m.client.tasks().await.is_ok());
    }
    // The server holds no more than its limit, whatever is thrown at it.
    let fds = open_fds(m.process.pid());
    assert!(fds <= baseline + LIMIT + 8, "{fds} descriptors open (baseline {baseline})");

    // Headers and bodies are bounded: a 1 MiB header or a 2 MiB body is refused, and the server
    // goes on serving.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let huge = "x".repeat(1 << 20);
    let _ = s.write_all(
        format!("GET /v1/tasks HTTP/1.1\r\nHost: a\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
    );
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    let body = vec![b' '; 2 << 20];
    let refused =
        reqwest::Client::new().post(format!("{}/v1/tasks", m.url)).body(body).send().await.unwrap();
    assert_eq!(refused.status(), 413);
    assert!(m.client.tasks().await.is_ok());
    drop(held);
}
