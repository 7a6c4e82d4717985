//! Helpers for tests that run real `cube` processes on loopback ports picked by the OS, on top
//! of `cube_testkit`'s process and wait helpers (shared with `cube-bench`).
//!
//! Nothing here sleeps to synchronise: [`wait_until`] polls a condition until a deadline and
//! fails with a description of what never happened.

// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cube_http::client::Client;
pub use cube_testkit::process::{self, alive, kill_process_tasks};
pub use cube_testkit::wait::wait_until;

/// The image every docker test runs (built by scripts/build-test-image.sh).
pub const TEST_IMAGE: &str = "cube-test/busybox:latest";

/// Path of the `cube` binary under test.
pub fn cube_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cube"))
}

/// Serialises the docker tests of one test binary: the engine on a 2-core machine starts
/// containers slowly when fifty other starts are queued, and the tests assert start latencies.
pub async fn docker_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Whether docker tests can run. Without an engine they are skipped locally, but under CI
/// (`CI` set) a missing engine or test image is a failure, never a silent skip.
pub fn docker_ready() -> bool {
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let image = engine
        && Command::new("docker")
            .args(["image", "inspect", TEST_IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if image {
        return true;
    }
    let why = if engine {
        format!("test image {TEST_IMAGE} missing: run scripts/build-test-image.sh")
    } else {
        "no docker engine answers".to_owned()
    };
    if std::env::var_os("CI").is_some() {
        panic!("docker test cannot run under CI: {why}");
    }
    eprintln!("skipping docker test: {why}");
    false
}

/// A `cube` process that is killed (SIGKILL) when dropped.
pub struct CubeProcess {
    pub inner: process::CubeProcess,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The CA it was told to trust (`--tls-ca`), which its clients trust too.
    pub tls_ca: Option<PathBuf>,
}

impl CubeProcess {
    /// Starts `cube <args>` and waits for its "listening on http://..." line.
    pub fn start(args: &[&str], log_dir: &Path) -> CubeProcess {
        Self::try_start(args, log_dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`CubeProcess::start`], failing instead of panicking.
    pub fn try_start(args: &[&str], log_dir: &Path) -> Result<CubeProcess, process::SpawnError> {
        Self::try_start_in(None, args, log_dir)
    }

    /// Like [`CubeProcess::try_start`], inside network namespace `netns` when given.
    pub fn try_start_in(
        netns: Option<&str>,
        args: &[&str],
        log_dir: &Path,
    ) -> Result<CubeProcess, process::SpawnError> {
        let log = log_dir.join(format!("cube-{}.log", args[0]));
        let mut spawn = process::Spawn::new(&cube_bin(), args, &log);
        if let Some(ns) = netns {
            // `ip netns exec` execs the command, so the child is still the cube process.
            let bin = spawn.bin.to_str().unwrap().to_owned();
            spawn.args = ["netns", "exec", ns, &bin]
                .into_iter()
                .map(str::to_owned)
                .chain(spawn.args)
                .collect();
            spawn.bin = PathBuf::from("ip");
        }
        spawn.log_filter = "info,cube_worker=debug".into();
        let inner = process::CubeProcess::spawn(&spawn)?;
        let tls_ca = args.iter().position(|a| *a == "--tls-ca").map(|i| PathBuf::from(args[i + 1]));
        Ok(CubeProcess { url: inner.url.clone(), inner, tls_ca })
    }

    /// A client for this process's API.
    pub fn client(&self) -> Client {
        let tls =
            self.tls_ca.as_deref().map(|ca| cube_http::tls::ClientTls::from_ca_file(ca).unwrap());
        Client::with_tls(&self.url, Duration::from_secs(10), tls.as_ref()).unwrap()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.inner.kill9();
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.inner.terminate().unwrap()
    }

    /// The process's log so far.
    pub fn logs(&self) -> String {
        self.inner.logs()
    }
}

/// A manager on a loopback port with its own data directory; it can be killed and restarted on
/// the same port (workers and clients keep their address).
pub struct TestManager {
    pub process: CubeProcess,
    pub client: Client,
    pub url: String,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl TestManager {
    /// Starts a manager with extra arguments (e.g. `--scheduler binpack`).
    pub async fn start(extra: &[&str]) -> TestManager {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra).await
    }

    /// Starts a manager whose data directory is `dir` (which may hold state already).
    pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> TestManager {
        Self::start_on(dir, "127.0.0.1:0", extra).await
    }

    /// Starts a manager listening on `listen` (beyond loopback it needs `--token`).
    pub async fn start_on(dir: tempfile::TempDir, listen: &str, extra: &[&str]) -> TestManager {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let args = Self::args(&dir, listen, &extra);
        let process = CubeProcess::start(&refs(&args), dir.path());
        let url = process.url.clone();
        let client = process.client();
        TestManager { process, client, url, dir, extra }
    }

    fn args(dir: &tempfile::TempDir, listen: &str, extra: &[String]) -> Vec<String> {
        let data = dir.path().join("data").to_str().unwrap().to_owned();
        let mut args: Vec<String> =
            ["manager", "--listen", listen, "--data-dir", &data].map(str::to_owned).to_vec();
        args.extend(extra.iter().cloned());
        args
    }

    /// Kills the manager with SIGKILL.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the manager again on the same port and data directory (after `kill9`).
    pub async fn restart(&mut self) {
        // The port the OS picked first, so workers and clients keep their address.
        let listen = self.url.rsplit("://").next().unwrap().to_owned();
        let args = Self::args(&self.dir, &listen, &self.extra);
        // The port was just released; binding can race with its teardown, so retry until a
        // deadline.
        self.process = wait_until(Duration::from_secs(10), "the manager listening again", || {
            let attempt = CubeProcess::try_start(&refs(&args), self.dir.path());
            async move { attempt.ok() }
        })
        .await;
    }

    /// Starts a worker that joins this manager, named `name`, with extra arguments (and the
    /// process driver on).
    pub async fn worker(&self, name: &str, extra: &[&str]) -> TestWorker {
        let mut args = vec!["--manager", &self.url, "--name", name];
        args.extend_from_slice(extra);
        TestWorker::start(&args).await
    }

    /// [`TestManager::worker`] without the process driver: as `cube worker` starts by default.
    pub async fn worker_without_process(&self, name: &str, extra: &[&str]) -> TestWorker {
        let mut args = vec!["--manager", &self.url, "--name", name];
        args.extend_from_slice(extra);
        TestWorker::start_in(None, &args, false).await
    }

    /// Node name by id, from the manager.
    pub async fn node_names(&self) -> std::collections::HashMap<cube_core::NodeId, String> {
        self.client.nodes().await.unwrap().into_iter().map(|n| (n.id, n.name)).collect()
    }
}

/// A worker on a free loopback port with its own data directory. On drop it is killed and
/// every container labelled with its node id is removed.
pub struct TestWorker {
    pub process: CubeProcess,
    pub client: Client,
    pub node_id: String,
    pub dir: tempfile::TempDir,
    /// Arguments it was started with (a restart reuses them, data directory included).
    args: Vec<String>,
}

impl TestWorker {
    /// Starts a worker with extra arguments, with the process driver on (`--driver process`:
    /// most tests run process tasks).
    pub async fn start(extra: &[&str]) -> TestWorker {
        Self::start_in(None, extra, true).await
    }

    /// Starts a worker without the process driver, as `cube worker` starts by default.
    pub async fn start_without_process(extra: &[&str]) -> TestWorker {
        Self::start_in(None, extra, false).await
    }

    /// Starts a worker inside `netns`, listening on its address there.
    pub async fn start_in_netns(netns: &NetNs, extra: &[&str]) -> TestWorker {
        Self::start_in(Some(netns), extra, true).await
    }

    async fn start_in(netns: Option<&NetNs>, extra: &[&str], process: bool) -> TestWorker {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let data = data.to_str().unwrap().to_owned();
        let listen = netns.map_or("127.0.0.1:0".to_owned(), |ns| format!("{}:0", ns.inside));
        let mut args =
            vec!["worker", "--listen", &listen, "--data-dir", &data, "--stats-interval", "250ms"];
        if process {
            args.extend_from_slice(&["--driver", "process"]);
        }
        args.extend_from_slice(extra);
        let process =
            CubeProcess::try_start_in(netns.map(|ns| ns.name.as_str()), &args, dir.path())
                .unwrap_or_else(|e| panic!("{e}"));
        let client = process.client();
        let node_id = client.health().await.unwrap().node_id.unwrap().to_string();
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        TestWorker { process, client, node_id, dir, args }
    }

    /// Kills the worker with SIGKILL (its workloads keep running).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the worker again with the same arguments and data directory (after `kill9`).
    pub async fn restart(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.process = CubeProcess::start(&args, self.dir.path());
        self.client = self.process.client();
        let node_id = self.client.health().await.unwrap().node_id.unwrap().to_string();
        assert_eq!(node_id, self.node_id, "a restarted worker keeps its node id");
    }

    /// Ids of containers labelled for this node (and task, when given), running or not.
    pub fn containers(&self, task_id: Option<&str>) -> Vec<String> {
        let node = process::containers(&format!("label=cube.node={}", self.node_id));
        match task_id {
            None => node,
            Some(t) => {
                let task = process::containers(&format!("label=cube.task-id={t}"));
                node.into_iter().filter(|c| task.contains(c)).collect()
            }
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.process.kill9();
        process::remove_node_containers(&self.node_id);
        // Process tasks run in their own process groups; take them down too.
        process::kill_process_tasks(&self.dir.path().join("data"));
    }
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Parses a task spec written as JSON.
pub fn spec(value: serde_json::Value) -> cube_core::TaskSpec {
    serde_json::from_value(value).expect("test spec must parse")
}

/// Sends a raw request and returns the status and the JSON body.
pub async fn raw(
    method: reqwest::Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> (u16, serde_json::Value) {
    let client = cube_http::tls::http_client_builder().build().unwrap();
    let mut req = client.request(method, url);
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!("status {status}: body is not JSON: {}", String::from_utf8_lossy(&bytes))
    });
    (status, json)
}

/// Waits until task `id` is in `state` (as `client` sees it) and returns it.
pub async fn wait_state(
    client: &Client,
    id: cube_core::TaskId,
    state: cube_core::TaskState,
    timeout: Duration,
) -> cube_api::types::TaskView {
    wait_until(timeout, &format!("task {id} {state}"), || async {
        let t = client.task(id).await.ok()?;
        (t.state == state).then_some(t)
    })
    .await
}

/// PEM files for TLS tests, made with the `openssl` command: a CA, and a certificate for
/// 127.0.0.1 signed by it with its key.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn create(dir: &Path) -> TlsFiles {
        let run = |args: &[&str]| {
            let out =
                Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=cube test CA"],
        ]
        .concat());
        run(&[
            &["req"][..],
            &ec,
            &["-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=cube test node"],
        ]
        .concat());
        std::fs::write(
            dir.join("node.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "node.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "node.pem",
            "-days",
            "2",
            "-extfile",
            "node.ext",
        ]);
        TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("node.pem"), key: dir.join("node.key") }
    }
}

/// A network namespace of the test's own, linked to the host by a veth pair on a /30 of
/// 10.231.0.0/16: the host end has [`NetNs::host`], the namespace end [`NetNs::inside`]. A
/// worker started in it reaches a manager listening on the host address, and
/// [`NetNs::cut`] takes the link down as a pulled cable would. Deleted on drop, link included;
/// namespaces left by a killed test run are deleted by the next one.
pub struct NetNs {
    pub name: String,
    pub host: std::net::Ipv4Addr,
    pub inside: std::net::Ipv4Addr,
    /// The host end of the veth pair.
    pub link: String,
}

const NETNS_PREFIX: &str = "cube-test-";

impl NetNs {
    /// Creates one, or returns `None` (the test is skipped) when this process may not; under
    /// CI that is a failure, never a silent skip.
    pub fn create() -> Option<NetNs> {
        let root = std::fs::read_to_string("/proc/self/status")
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")));
        if !root || !ip(&["-V"]) {
            if std::env::var_os("CI").is_some() {
                panic!("network namespace test cannot run under CI: needs root and `ip`");
            }
            eprintln!("skipping network namespace test: needs root and `ip` (iproute2)");
            return None;
        }
        Self::remove_stale();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names have at most 15 bytes; the /30 follows from the pid and the counter
        // so concurrent test processes do not collide.
        let slot = (pid.wrapping_mul(8).wrapping_add(n)) % 16_384;
        let [a, b] = [(slot * 4 / 256) as u8, (slot * 4 % 256) as u8];
        let ns = NetNs {
            name: format!("{NETNS_PREFIX}{pid}-{n}"),
            host: std::net::Ipv4Addr::new(10, 231, a, b + 1),
            inside: std::net::Ipv4Addr::new(10, 231, a, b + 2),
            link: format!("cvh{}", slot),
        };
        let peer = format!("cvn{slot}");
        let (host, inside) = (format!("{}/30", ns.host), format!("{}/30", ns.inside));
        let steps: [&[&str]; 8] = [
            &["netns", "add", &ns.name],
            &["link", "add", &ns.link, "type", "veth", "peer", "name", &peer],
            &["link", "set", &peer, "netns", &ns.name],
            &["addr", "add", &host, "dev", &ns.link],
            &["link", "set", &ns.link, "up"],
            &["-n", &ns.name, "addr", "add", &inside, "dev", &peer],
            &["-n", &ns.name, "link", "set", &peer, "up"],
            &["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            // On failure `ns` is dropped here, which removes what was made so far.
            assert!(ip(step), "ip {step:?} failed");
        }
        Some(ns)
    }

    /// Takes the link down from the namespace's side: nothing inside reaches the host and
    /// nothing on the host reaches inside (connections time out), while the host's own
    /// address stays up for everything else on the host.
    pub fn cut(&self) {
        assert!(ip(&["-n", &self.name, "link", "set", &self.peer(), "down"]), "cut");
    }

    /// Brings the link back after [`NetNs::cut`].
    pub fn heal(&self) {
        assert!(ip(&["-n", &self.name, "link", "set", &self.peer(), "up"]), "heal");
    }

    fn peer(&self) -> String {
        self.link.replacen("cvh", "cvn", 1)
    }

    /// Deletes the namespaces of test processes that no longer exist.
    fn remove_stale() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(NETNS_PREFIX) else { continue };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !alive(p)) {
                ip(&["netns", "del", name]);
            }
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end and with it the host's end, once no
        // process is left in it; delete the host end too in case one still is.
        ip(&["netns", "del", &self.name]);
        ip(&["link", "del", &self.link]);
    }
}

/// Runs `ip ARGS` quietly; whether it succeeded.
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
