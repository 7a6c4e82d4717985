//! Node identity by mutual TLS, against real `cube` processes: workers join with the join
//! token the manager printed, every manager↔worker byte is TLS (captured with tcpdump on a
//! network namespace's link), a worker's certificate opens only the node routes, certificates
//! of another CA or none are refused, certificates renew without a missed heartbeat, a worker
//! whose certificate expired while it was away joins again under its id, and a removed node is
//! refused at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{CubeProcess, NetNs, TestManager};
use cube_api::events::EventType;
use cube_core::NodeState;
use cube_http::client::{Client, ClientError, Unreachable};
use cube_http::mtls::{ClusterTls, Expect};
use cube_pki::{Authority, Identity, KeyedCert};
use cube_testkit::wait::wait_until;

const ADMIN: &str = "admin-token-for-the-mtls-tests";

/// What the manager printed before it listened: its join token and cluster port.
struct Printed {
    token: String,
    cluster: String,
}

fn printed(manager: &TestManager) -> Printed {
    let log = manager.process.logs();
    let after = |prefix: &str| {
        log.lines()
            .find_map(|l| l.split(prefix).nth(1))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{log}"))
            .trim()
            .to_owned()
    };
    Printed { token: after("worker join token: "), cluster: after("cluster port: ") }
}

/// A worker started with `--join`; its node id is read from its data directory.
struct Joined {
    process: CubeProcess,
    dir: tempfile::TempDir,
    node: String,
    args: Vec<String>,
    netns: Option<String>,
}

impl Joined {
    fn start(netns: Option<&NetNs>, listen: &str, join: &str, token: &str, name: &str) -> Joined {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data").to_str().unwrap().to_owned();
        let args: Vec<String> = [
            "worker",
            "--listen",
            listen,
            "--data-dir",
            &data,
            "--name",
            name,
            "--join",
            join,
            "--token",
            token,
            "--stats-interval",
            "250ms",
            "--driver",
            "process",
        ]
        .map(str::to_owned)
        .to_vec();
        let netns = netns.map(|n| n.name.clone());
        let process = spawn(netns.as_deref(), &args, dir.path());
        let node =
            std::fs::read_to_string(dir.path().join("data/node-id")).unwrap().trim().to_owned();
        Joined { process, dir, node, args, netns }
    }

    fn restart(&mut self) {
        self.process = spawn(self.netns.as_deref(), &self.args, self.dir.path());
    }

    /// Its key and certificate, as a client presenting them would hold them.
    fn identity(&self) -> (String, KeyedCert) {
        let file = |name: &str| {
            std::fs::read_to_string(self.dir.path().join("data/pki").join(name)).unwrap()
        };
        (file("ca.crt"), KeyedCert { cert_pem: file("node.crt"), key_pem: file("node.key") })
    }

    /// A client of the manager's cluster port presenting this worker's certificate.
    fn client(&self, cluster: &str) -> Client {
        let (ca, own) = self.identity();
        as_node(&ca, &own, cluster)
    }

    fn logs(&self) -> String {
        self.process.logs()
    }
}

fn spawn(netns: Option<&str>, args: &[String], dir: &Path) -> CubeProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    CubeProcess::try_start_in(netns, &args, dir).unwrap_or_else(|e| panic!("{e}"))
}

fn as_node(ca: &str, own: &KeyedCert, cluster: &str) -> Client {
    let tls = ClusterTls::new(ca, own).unwrap();
    let config = tls.client_config(Expect::Manager).unwrap();
    Client::with_cluster_tls(format!("https://{cluster}"), Duration::from_secs(5), &config).unwrap()
}

fn refused_by_tls(e: &ClientError) -> bool {
    matches!(e, ClientError::Unreachable { kind: Unreachable::Tls | Unreachable::Broken, .. })
}

/// `tcpdump` writing every packet on `interface` to a file, until stopped.
struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(interface: &str, dir: &Path) -> Option<Capture> {
        let Ok(path) = which("tcpdump") else {
            assert!(std::env::var_os("CI").is_none(), "tcpdump is missing under CI");
            eprintln!("skipping the capture: no tcpdump");
            return None;
        };
        let file = dir.join("capture.pcap");
        let mut child = Command::new(path)
            .args(["-i", interface, "--immediate-mode", "-U", "-s", "0", "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // It says "listening on ..." once the capture runs.
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let ready = lines.by_ref().map_while(Result::ok).any(|l| l.contains("listening on"));
        assert!(ready, "tcpdump did not start");
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("tcpdump: {line}");
            }
        });
        Some(Capture { child, file })
    }

    fn stop(mut self) -> Vec<u8> {
        // SIGINT: tcpdump flushes and exits.
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        std::fs::read(&self.file).unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn manager_and_worker_speak_only_mutual_tls_and_a_worker_certificate_opens_only_node_routes()
{
    let Some(ns) = NetNs::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("{}:0", ns.host);
    let manager = TestManager::start_on(
        tempfile::tempdir().unwrap(),
        &listen,
        &["--token", ADMIN, "--cluster-listen", &listen],
    )
    .await;
    let admin = manager.client.clone().with_token(Some(ADMIN.parse().unwrap()));
    let printed = printed(&manager);
    let capture = Capture::start(&ns.link, dir.path());

    // The worker joins from inside its namespace: every byte between it and the manager
    // crosses the veth link the capture listens on.
    let began = Instant::now();
    let worker = Joined::start(
        Some(&ns),
        &format!("{}:0", ns.inside),
        &printed.cluster,
        &printed.token,
        "w1",
    );
    wait_until(Duration::from_secs(20), "the worker registered", || {
        let admin = admin.clone();
        let node = worker.node.clone();
        async move {
            let nodes = admin.nodes().await.ok()?;
            nodes
                .iter()
                .any(|n| n.id.to_string() == node && n.state == NodeState::Ready)
                .then_some(())
        }
    })
    .await;
    eprintln!("joined and registered {:?} after spawn", began.elapsed());
    let info = admin.node(&worker.node).await.unwrap();
    assert!(info.address.starts_with("https://"), "{}", info.address);

    // A task whose spec and output carry a marker: dispatched, run, its logs read back, all
    // over the link.
    let marker = format!("MARKER{}", uuid::Uuid::now_v7().simple());
    let spec = common::spec(serde_json::json!({
        "name": "secret-task",
        "driver": "process",
        "command": "/bin/sh",
        "args": ["-c", format!("echo {marker}; sleep 300")],
        "env": {"SECRET_VALUE": marker},
        "resources": {"cpu": "100m", "memory": "16MiB"},
    }));
    let task = admin.submit(None, &spec).await.unwrap().task;
    common::wait_state(&admin, task.id, cube_core::TaskState::Running, Duration::from_secs(20))
        .await;
    let logs = wait_until(Duration::from_secs(10), "the task's output", || {
        let admin = admin.clone();
        let marker = marker.clone();
        async move {
            use futures_util::StreamExt;
            let mut stream = admin.logs(task.id, false, None).await.ok()?;
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk.ok()?);
            }
            let text = String::from_utf8_lossy(&out).into_owned();
            text.contains(&marker).then_some(text)
        }
    })
    .await;
    assert!(logs.contains(&marker));

    // A worker's certificate: the node routes for itself, nothing else.
    let as_worker = worker.client(&printed.cluster);
    let forbidden = |e: ClientError| e.code() == Some(cube_api::ErrorCode::Forbidden);
    let listed = as_worker.tasks().await.unwrap_err();
    assert!(forbidden(listed), "a worker's certificate cannot read the task list");
    let submitted = as_worker.submit(None, &spec).await.unwrap_err();
    assert!(forbidden(submitted), "a worker's certificate cannot submit a task");
    let other_node = cube_core::NodeId::from_uuid(uuid::Uuid::now_v7());
    let beat = heartbeat();
    let elsewhere = as_worker.heartbeat(other_node, &beat).await.unwrap_err();
    assert!(forbidden(elsewhere), "a worker's certificate speaks only for its own node");
    let ui = as_worker
        .forward(reqwest::Method::GET, "/ui", reqwest::header::HeaderMap::new(), Default::default())
        .await
        .unwrap();
    assert_eq!(ui.status(), 403, "a worker's certificate opens no page of the UI");

    // A certificate of another CA, for the same node id: refused in the handshake.
    let (ca, _) = worker.identity();
    let other_ca = Authority::create("other", std::time::SystemTime::now()).unwrap();
    let forged = other_ca
        .issue(
            &Identity::Node(worker.node.clone()),
            std::time::SystemTime::now(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let error = as_node(&ca, &forged, &printed.cluster)
        .register(&register(&worker.node))
        .await
        .unwrap_err();
    assert!(refused_by_tls(&error), "a certificate of another CA: {error:?}");
    // No certificate and no token, over a connection that trusts the manager (pinned to its
    // CA, as a joining worker's): the manager answers, and answers 401.
    let pin = cube_pki::CaDigest::of_pem(&ca).unwrap();
    let pinned = cube_http::mtls::pinned_config(pin).unwrap();
    let bare = Client::with_cluster_tls(
        format!("https://{}", printed.cluster),
        Duration::from_secs(5),
        &pinned,
    )
    .unwrap();
    let bare_error = bare.tasks().await.unwrap_err();
    assert_eq!(bare_error.code(), Some(cube_api::ErrorCode::Unauthorized), "{bare_error:?}");
    let bare_register = bare.register(&register(&worker.node)).await.unwrap_err();
    assert_eq!(bare_register.code(), Some(cube_api::ErrorCode::Unauthorized));
    let Some(capture) = capture else { return };
    let bytes = capture.stop();
    assert!(bytes.len() > 4_000, "the capture holds the session ({} bytes)", bytes.len());
    assert!(!contains(&bytes, marker.as_bytes()), "the task's spec or output crossed in clear");
    for clear in [&b"\"spec\""[..], b"/v1/tasks", b"HTTP/1.1", b"heartbeat"] {
        assert!(!contains(&bytes, clear), "{} crossed in clear", String::from_utf8_lossy(clear));
    }
    admin.stop(task.id).await.unwrap();
}

fn heartbeat() -> cube_api::types::HeartbeatRequest {
    cube_api::types::HeartbeatRequest {
        stats: None,
        tasks: Vec::new(),
        active: None,
        ingress: None,
    }
}

/// Every event after `from` the manager has now.
async fn events_after(client: &Client, from: u64) -> Vec<cube_api::events::Event> {
    use cube_api::events::StreamLine;
    use futures_util::StreamExt;
    let mut stream = client.events(Some(from), &[]).await.unwrap();
    let mut events = Vec::new();
    // The history comes at once; a quiet second means it is all here.
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        if let StreamLine::Event(e) = line.unwrap() {
            events.push(*e);
        }
    }
    events
}

fn register(node: &str) -> cube_api::types::RegisterRequest {
    serde_json::from_value(serde_json::json!({
        "node_id": node,
        "name": "forged",
        "address": "https://127.0.0.1:1",
        "capacity": {"cpu": "1", "memory": "1GiB", "disk": "1GiB"},
        "drivers": ["process"],
        "tasks": [],
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_workers_renew_two_minute_certificates_without_missing_a_heartbeat() {
    let manager = TestManager::start(&[
        "--cert-lifetime",
        "2m",
        "--node-ttl",
        "5s",
        "--heartbeat-interval",
        "1s",
    ])
    .await;
    let printed = printed(&manager);
    let client = manager.client.clone();
    let from = client.index().await.unwrap();
    // This manager has no token (loopback); its cluster port still lets nobody in anonymously.
    let pin: cube_pki::JoinToken = printed.token.parse().unwrap();
    let pinned = cube_http::mtls::pinned_config(pin.ca).unwrap();
    let bare = format!("https://{}", printed.cluster);
    let bare = Client::with_cluster_tls(bare, Duration::from_secs(5), &pinned).unwrap();
    let anonymous = bare.tasks().await.unwrap_err();
    assert_eq!(anonymous.code(), Some(cube_api::ErrorCode::Unauthorized), "{anonymous:?}");
    assert!(client.tasks().await.is_ok(), "the API itself answers without a token on loopback");
    // All at once: twenty joins race on the manager, and every one must be enrolled (its
    // renewals below are refused otherwise).
    let workers: Vec<Joined> = std::thread::scope(|s| {
        let started: Vec<_> = (0..20)
            .map(|i| {
                let (cluster, token) = (&printed.cluster, &printed.token);
                s.spawn(move || {
                    Joined::start(None, "127.0.0.1:0", cluster, token, &format!("w{i}"))
                })
            })
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    wait_until(Duration::from_secs(30), "20 nodes ready", || {
        let client = client.clone();
        async move {
            let nodes = client.nodes().await.ok()?;
            (nodes.iter().filter(|n| n.state == NodeState::Ready).count() == 20).then_some(())
        }
    })
    .await;
    // Renewals fall between 60 s and 96 s after each certificate was issued.
    wait_until(Duration::from_secs(150), "every worker renewed its certificate", || {
        let renewed = workers.iter().all(|w| w.logs().contains("renewed this node's certificate"));
        async move { renewed.then_some(()) }
    })
    .await;
    // Past the first certificates' lifetime: the new ones are in use.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = events_after(&client, from).await;
    let down: Vec<_> = events.iter().filter(|e| e.kind == EventType::NodeDown).collect();
    assert!(down.is_empty(), "no node went down: {down:?}");
    let nodes = client.nodes().await.unwrap();
    assert_eq!(nodes.iter().filter(|n| n.state == NodeState::Ready).count(), 20);
    for w in &workers {
        let (_, own) = w.identity();
        let info = cube_pki::inspect_pem(&own.cert_pem).unwrap();
        assert_eq!(info.identity, Identity::Node(w.node.clone()));
        assert!(
            !w.logs().contains("heartbeat failed"),
            "{}: a heartbeat failed:\n{}",
            w.node,
            w.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_worker_rejoins_under_its_id_and_a_removed_node_is_refused_at_once() {
    let manager = TestManager::start(&["--cert-lifetime", "10s", "--token", ADMIN]).await;
    let admin = manager.client.clone().with_token(Some(ADMIN.parse().unwrap()));
    let printed = printed(&manager);
    let mut worker = Joined::start(None, "127.0.0.1:0", &printed.cluster, &printed.token, "away");
    let ready = |worker: &Joined, since: jiff::Timestamp| {
        let admin = admin.clone();
        let node = worker.node.clone();
        move || {
            let (admin, node) = (admin.clone(), node.clone());
            async move {
                let n = admin.node(&node).await.ok()?;
                (n.state == NodeState::Ready && n.last_heartbeat.is_some_and(|h| h > since))
                    .then_some(())
            }
        }
    };
    wait_until(Duration::from_secs(20), "the worker ready", ready(&worker, jiff::Timestamp::now()))
        .await;

    // Away past its certificate's end.
    worker.process.kill9();
    let (_, own) = worker.identity();
    let expires = cube_pki::inspect_pem(&own.cert_pem).unwrap().not_after;
    let left = expires.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left + Duration::from_secs(1)).await;
    let back = jiff::Timestamp::now();
    let began = Instant::now();
    worker.restart();
    wait_until(Duration::from_secs(2), "the expired worker back within 2 s", ready(&worker, back))
        .await;
    eprintln!("rejoined {:?} after its restart", began.elapsed());
    assert!(worker.logs().contains("joining again with the join token"), "{}", worker.logs());
    let nodes = admin.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1, "the same node, not a new one: {nodes:?}");
    assert_eq!(nodes[0].id.to_string(), worker.node);

    // Removed: its open connections (the worker's own long poll of its endpoint feed, always
    // open, and one of ours) are closed and new ones refused, within a second.
    let as_worker = worker.client(&printed.cluster);
    let node: cube_core::NodeId = worker.node.parse().unwrap();
    let index = as_worker.ingress_feed(node, None, Duration::from_secs(1)).await.unwrap().index;
    let open = {
        let as_worker = as_worker.clone();
        tokio::spawn(async move {
            as_worker.ingress_feed(node, Some(index), Duration::from_secs(60)).await
        })
    };
    let closed = "closed a removed node's connection";
    assert!(!manager.process.logs().contains(closed));
    let removed = Instant::now();
    admin.remove_node(&worker.node).await.unwrap();
    wait_until(Duration::from_secs(1), "the node's open connections closed", || {
        let logs = manager.process.logs();
        async move { logs.contains(closed).then_some(()) }
    })
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(1), open).await;
    assert!(matches!(ended, Ok(Ok(Err(_)))), "our long poll ends within 1 s: {ended:?}");
    let refused = as_worker.heartbeat(node, &heartbeat()).await;
    assert!(removed.elapsed() < Duration::from_secs(1));
    assert!(refused.as_ref().is_err_and(refused_by_tls), "refused in the handshake: {refused:?}");
    // Its id never joins again, even with the join token.
    worker.process.kill9();
    std::fs::remove_file(worker.dir.path().join("data/pki/node.crt")).unwrap();
    let error = common::CubeProcess::try_start(
        &worker.args.iter().map(String::as_str).collect::<Vec<_>>(),
        worker.dir.path(),
    );
    assert!(error.is_err(), "a removed node cannot join again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_joined_by_certificate_follows_highly_available_managers_through_a_failover() {
    use cube_testkit::etcd::{EtcdCluster, etcd_available};
    if !etcd_available() {
        assert!(std::env::var_os("CI").is_none(), "etcd-server missing under CI");
        eprintln!("skipped: etcd is not installed");
        return;
    }
    let etcd = EtcdCluster::start(1).unwrap();
    let list = etcd.endpoint_list();
    let mut managers = Vec::new();
    for name in ["m0", "m1"] {
        managers
            .push(TestManager::start(&["--store", "etcd", "--etcd", &list, "--name", name]).await);
    }
    let leader = || async {
        for (i, m) in managers.iter().enumerate() {
            if m.client.health().await.is_ok_and(|h| h.leading == Some(true)) {
                return Some(i);
            }
        }
        None
    };
    let first = wait_until(Duration::from_secs(15), "a leader", leader).await;
    // The cluster's CA was made by its first leader; a join token comes from any manager.
    let token = wait_until(Duration::from_secs(10), "a join token", || {
        let client = managers[1 - first].client.clone();
        async move { client.rotate_join_token().await.ok() }
    })
    .await
    .token;
    // The follower only: its cluster port passes the join and the node's requests on to the
    // leader's, under the follower's own certificate; once the leader is gone, it leads.
    let ports: Vec<String> = managers.iter().map(printed_port).collect();
    let join = ports[1 - first].clone();
    let worker = Joined::start(None, "127.0.0.1:0", &join, &token, "ha-worker");
    let client = Client::new(
        managers.iter().map(|m| m.url.as_str()).collect::<Vec<_>>().join(","),
        Duration::from_secs(10),
    )
    .unwrap();
    let sleeper = |name: &str| {
        common::spec(
            serde_json::json!({"name": name, "driver": "process", "command": "sleep", "args": ["600"]}),
        )
    };
    let before = client.submit(None, &sleeper("before")).await.unwrap().task.id;
    common::wait_state(&client, before, cube_core::TaskState::Running, Duration::from_secs(20))
        .await;

    managers[first].kill9();
    let second = wait_until(Duration::from_secs(15), "a new leader", || async {
        let m = &managers[1 - first];
        m.client.health().await.is_ok_and(|h| h.leading == Some(true)).then_some(1 - first)
    })
    .await;
    let after = client.submit(None, &sleeper("after")).await.unwrap().task.id;
    common::wait_state(&client, after, cube_core::TaskState::Running, Duration::from_secs(20))
        .await;
    let node = client.node(&worker.node).await.unwrap();
    assert_eq!(node.state, NodeState::Ready, "the node stayed up through the failover");
    assert_eq!(client.task(before).await.unwrap().state, cube_core::TaskState::Running);
    assert_eq!(second, 1 - first);
    drop(etcd);
}

fn printed_port(manager: &TestManager) -> String {
    let log = manager.process.logs();
    log.lines()
        .find_map(|l| l.split("cluster port: ").nth(1))
        .unwrap_or_else(|| panic!("no cluster port line in:\n{log}"))
        .trim()
        .to_owned()
}
