//! `cube-bench ingress`: requests per second and latency of a small HTTP answer, with the same
//! load (`--clients` loops, each sending the next request when the last was answered) along
//! every path to one instance: straight to its host port (the floor), through Cube's ingress in
//! `tcp` and `http` mode, and through nginx (Debian's package, started here) as the equivalent
//! L4 (`stream`) and L7 (`proxy_pass`) proxy. Then the worker's memory per idle client
//! connection on an `http` port.
//!
//! Two backends, one after the other: busybox httpd, which closes every connection after its
//! answer (so each request is a new connection to the instance on every path, and the
//! backend's accept queue dominates the tail), and nginx inside a container
//! (`scripts/build-nginx-image.sh`), which keeps them alive, so what a path adds to the floor
//! is the proxy's own cost.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use cube_core::service::ServiceSpec;
use serde_json::json;
use tokio::process::Command;

use crate::lab::Lab;
use crate::latency::IMAGE;
use crate::load::wait_for;
use crate::out::{Summary, say};

/// The image `scripts/build-nginx-image.sh` builds.
const NGINX_IMAGE: &str = "cube-test/nginx:latest";

/// Options of `cube-bench ingress`.
#[derive(Debug, Args)]
pub struct IngressArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long each path is measured.
    #[arg(long, default_value = "10s", value_parser = cube_core::units::parse_duration)]
    pub duration: Duration,
    /// Idle client connections opened to measure their memory.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// The backends measured, in this order.
    #[arg(long, value_delimiter = ',', default_value = "busybox,nginx")]
    pub backends: Vec<Backend>,
}

/// What answers behind every path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// busybox httpd from the test image: a connection per request.
    Busybox,
    /// nginx in a container (`scripts/build-nginx-image.sh`): kept-alive connections.
    Nginx,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Busybox => "busybox",
            Backend::Nginx => "nginx",
        }
    }

    fn task(self, name: &str) -> serde_json::Value {
        let health = json!({"type": "http", "port": 80, "path": "/", "interval": "1s"});
        match self {
            Backend::Busybox => json!({
                "name": name, "driver": "docker", "image": IMAGE, "command": "httpd",
                "args": ["-f", "-p", "80", "-h", "/www"], "stop_grace": "1s",
                "ports": [{"container": 80}], "health": health}),
            Backend::Nginx => json!({
                "name": name, "driver": "docker", "image": NGINX_IMAGE, "stop_grace": "1s",
                "ports": [{"container": 80}], "health": health}),
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn service(backend: Backend, mode: &str, publish: u16) -> anyhow::Result<ServiceSpec> {
    let name = format!("bench-{}-{mode}", backend.name());
    Ok(serde_json::from_value(json!({
        "name": name, "count": 1, "task": backend.task(&name),
        "ports": [{"target": 80, "publish": publish, "mode": mode}],
    }))?)
}

/// Runs the benchmark; returns the JSON results.
pub async fn run(lab: &Lab, args: &IngressArgs) -> anyhow::Result<serde_json::Value> {
    say(&format!(
        "ingress: {} clients for {:?} per path, one instance, backends {:?}",
        args.clients, args.duration, args.backends
    ));
    let manager = lab.manager("manager", &[]).await?;
    let worker = lab.worker(&manager, "w1", &[]).await?;
    let client = manager.client.clone();
    let mut backends = Vec::new();
    let mut idle = serde_json::Value::Null;
    for (i, &backend) in args.backends.iter().enumerate() {
        let (paths, http_port) = measure(lab, &client, backend, args).await?;
        // Idle connections once, on the first backend's http port, before it is removed.
        if i == 0 {
            idle = idle_memory(&worker, http_port, args.idle).await?;
        }
        backends.push(json!({"backend": backend.name(), "paths": paths}));
        for mode in ["tcp", "http"] {
            client.remove_service(&format!("bench-{}-{mode}", backend.name())).await?;
        }
        wait_for(Duration::from_secs(60), Duration::from_millis(100), "instances gone", || {
            let client = client.clone();
            async move {
                let tasks = client.tasks().await.ok()?;
                tasks.iter().all(|t| t.state.is_terminal()).then_some(())
            }
        })
        .await?;
    }
    drop(worker);
    Ok(json!({
        "bench": "ingress", "clients": args.clients, "duration_s": args.duration.as_secs_f64(),
        "backends": backends, "idle": idle,
    }))
}

/// The five paths to one instance of `backend`: their results, and the `http` mode's port.
async fn measure(
    lab: &Lab,
    client: &cube_http::client::Client,
    backend: Backend,
    args: &IngressArgs,
) -> anyhow::Result<(Vec<serde_json::Value>, u16)> {
    say(&format!("  backend {}", backend.name()));
    let (tcp_port, http_port) = (free_port()?, free_port()?);
    client.put_service(&service(backend, "tcp", tcp_port)?, None).await?;
    client.put_service(&service(backend, "http", http_port)?, None).await?;
    let (tcp_name, http_name) =
        (format!("bench-{}-tcp", backend.name()), format!("bench-{}-http", backend.name()));
    let host_port =
        wait_for(Duration::from_secs(60), Duration::from_millis(50), "instances", || {
            let (client, tcp_name, http_name) = (client.clone(), &tcp_name, &http_name);
            async move {
                let tcp = client.service_endpoints(tcp_name).await.ok()?;
                let http = client.service_endpoints(http_name).await.ok()?;
                http.endpoints.first()?;
                Some(tcp.endpoints.first()?.addresses.first()?.port)
            }
        })
        .await?;
    let nginx = Nginx::start(&lab.path().join(backend.name()), host_port).await?;

    let paths = [
        ("floor", "straight to the container's host port", host_port),
        ("cube-tcp", "Cube ingress, tcp mode", tcp_port),
        ("cube-http", "Cube ingress, http mode", http_port),
        ("nginx-l4", "nginx stream (L4)", nginx.l4),
        ("nginx-l7", "nginx proxy_pass (L7)", nginx.l7),
    ];
    let mut results = Vec::new();
    for (name, what, port) in paths {
        let url = format!("http://127.0.0.1:{port}/");
        // A short warm-up, then the measured run.
        load(&url, args.clients, Duration::from_secs(1)).await?;
        let (rps, summary, failed) = load(&url, args.clients, args.duration).await?;
        say(&format!("    {what}: {rps:.0} req/s, {} ({failed} failed)", summary.line()));
        results.push(json!({"path": name, "what": what, "rps": rps, "latency": summary,
                            "failed": failed}));
    }
    drop(nginx);
    Ok((results, http_port))
}

/// The worker's resident memory before and after `count` idle client connections to `port`.
async fn idle_memory(
    worker: &crate::lab::Worker,
    port: u16,
    count: usize,
) -> anyhow::Result<serde_json::Value> {
    let before = worker.process.rss_bytes()?;
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?);
    }
    // Give the ingress time to accept and set up every one of them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = worker.process.rss_bytes()?;
    drop(idle);
    let per_connection = after.saturating_sub(before) as f64 / count.max(1) as f64;
    say(&format!(
        "  {count} idle connections: worker RSS {} -> {} KiB, {:.1} KiB each",
        before / 1024,
        after / 1024,
        per_connection / 1024.0
    ));
    Ok(json!({"connections": count, "rss_before": before, "rss_after": after,
              "bytes_per_connection": per_connection}))
}

/// `clients` loops sending GETs to `url` for `duration`: requests per second, the latencies
/// of the answered ones, and how many failed.
async fn load(
    url: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Summary, usize)> {
    let mut loops = tokio::task::JoinSet::new();
    let began = Instant::now();
    for _ in 0..clients {
        let url = url.to_owned();
        loops.spawn(async move {
            let http = reqwest::Client::new();
            let (mut latencies, mut failed) = (Vec::new(), 0usize);
            while began.elapsed() < duration {
                let at = Instant::now();
                let answer = match http.get(&url).send().await.and_then(|r| r.error_for_status()) {
                    Ok(r) => r.bytes().await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(()) => latencies.push(at.elapsed()),
                    Err(_) => failed += 1,
                }
            }
            (latencies, failed)
        });
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while let Some(r) = loops.join_next().await {
        let (l, f) = r?;
        latencies.extend(l);
        failed += f;
    }
    let seconds = began.elapsed().as_secs_f64();
    Ok((latencies.len() as f64 / seconds, Summary::of(&latencies), failed))
}

/// nginx from Debian's package, as an L4 and an L7 proxy in front of `upstream`.
struct Nginx {
    child: tokio::process::Child,
    l4: u16,
    l7: u16,
}

impl Nginx {
    async fn start(dir: &Path, upstream: u16) -> anyhow::Result<Self> {
        let (l4, l7) = (free_port()?, free_port()?);
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("nginx.conf");
        // As many workers as cores, like the worker's runtime; logs off on the request path.
        std::fs::write(
            &conf,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                 worker_processes auto; daemon off; pid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\n\
                 events {{ worker_connections 8192; }}\n\
                 stream {{ server {{ listen 127.0.0.1:{l4}; proxy_pass 127.0.0.1:{upstream}; }} }}\n\
                 http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
                   fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                   keepalive_requests 1000000;\n\
                   upstream backend {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n\
                   server {{ listen 127.0.0.1:{l7}; location / {{\n\
                     proxy_pass http://backend; proxy_http_version 1.1;\n\
                     proxy_set_header Connection \"\";\n\
                     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }} }}\n",
                d = dir.display()
            ),
        )?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .spawn()
            .context("cannot run nginx (Debian package `nginx`)")?;
        let nginx = Self { child, l4, l7 };
        for port in [l4, l7] {
            wait_for(Duration::from_secs(10), Duration::from_millis(20), "nginx", || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()
            })
            .await?;
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then itself (a SIGKILL would orphan them).
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
    }
}
