//! Real `cube` processes for a benchmark: a scratch directory, managers and workers on loopback
//! ports chosen by the OS, and cleanup that runs even when the benchmark fails.
//!
//! Cleanup is done by `Drop`: a [`Worker`] is killed (SIGKILL), then the containers labelled
//! with its node id are removed a few at a time through the engine, and the process groups of
//! its process tasks are killed. A [`Manager`] is killed. The [`Lab`] removes the scratch
//! directory, or keeps it and prints the tail of every log when the benchmark did not finish.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cube_core::NodeId;
use cube_http::client::Client;
pub use cube_testkit::process::{self, alive, docker_answers};

use crate::out;

/// How long a `cube` process may take to print its "listening on" line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The scratch directory of one benchmark run and the binary under test.
#[derive(Debug)]
pub struct Lab {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    finished: bool,
}

impl Lab {
    /// A fresh scratch directory; `bin` is the `cube` binary to run.
    pub fn new(bin: &Path) -> anyhow::Result<Self> {
        if !bin.is_file() {
            bail!(
                "cube binary {} not found: build it with `cargo build --release -p cube` or pass \
                 --cube-bin / CUBE_BIN",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("cube-bench-")
            .tempdir()
            .context("cannot create a scratch directory")?;
        Ok(Self { dir: Some(dir), bin: bin.to_owned(), finished: false })
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/nonexistent"), |d| d.path())
    }

    /// The `cube` binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Marks the run as successful: the scratch directory is removed on drop.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Starts a manager with its data in `<scratch>/<name>` and `extra` arguments.
    pub async fn manager(&self, name: &str, extra: &[&str]) -> anyhow::Result<Manager> {
        let data = self.path().join(name);
        Manager::start(&self.bin, &data, self.path(), name, extra).await
    }

    /// Starts a worker named `name` that joins `manager`, with `extra` arguments.
    pub async fn worker(
        &self,
        manager: &Manager,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Worker> {
        self.worker_of(&manager.url, name, extra).await
    }

    /// Starts a worker named `name` that joins the managers `urls` (comma-separated).
    pub async fn worker_of(
        &self,
        urls: &str,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Worker> {
        let data = self.path().join(name);
        let data_s = data.to_string_lossy().into_owned();
        let mut args: Vec<String> = [
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_s,
            "--manager",
            urls,
            "--name",
            name,
            // The benchmarks run process tasks too.
            "--driver",
            "process",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log = self.path().join(format!("{name}.log"));
        let process = CubeProcess::spawn(&self.bin, &args, &log)?;
        let client = Client::new(&process.url, Duration::from_secs(10))?;
        let health = client.health().await.context("worker health")?;
        let node_id = health.node_id.context("the worker reported no node id")?;
        Ok(Worker { process, client, node_id, data, args })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if self.finished {
            return;
        }
        // Keep the evidence: print the end of every log and leave the directory in place.
        let path = dir.keep();
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&path)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out::warn(&format!("--- last lines of {}:\n{tail}", log.display()));
        }
        out::warn(&format!("benchmark did not finish; scratch directory kept: {}", path.display()));
    }
}

/// A `cube` process, killed (SIGKILL) when dropped, with what the benchmarks read of it.
#[derive(Debug)]
pub struct CubeProcess {
    inner: process::CubeProcess,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its stderr (logs).
    pub log: PathBuf,
}

impl CubeProcess {
    /// Starts `cube <args>` with stderr in `log`, and waits for its "listening on" line.
    pub fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let (process, _) = Self::spawn_timed(bin, args, log)?;
        Ok(process)
    }

    /// Like [`CubeProcess::spawn`], also returning when the spawn began and when the line
    /// arrived.
    pub fn spawn_timed(
        bin: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<(Self, (Instant, Instant))> {
        let spawn = process::Spawn {
            bin: bin.to_owned(),
            args: args.to_vec(),
            log: log.to_owned(),
            log_filter: std::env::var("CUBE_LOG").unwrap_or_else(|_| "warn".into()),
            timeout: START_TIMEOUT,
        };
        let inner = process::CubeProcess::spawn(&spawn)?;
        let started = inner.started;
        Ok((Self { url: inner.url.clone(), log: inner.log.clone(), inner }, started))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.inner.kill9();
    }

    /// SIGTERM, without waiting ([`CubeProcess::wait`] reaps it).
    pub fn signal_term(&self) {
        self.inner.signal_term();
    }

    /// Waits for the exit.
    pub fn wait(&mut self) -> anyhow::Result<()> {
        self.inner.wait()?;
        Ok(())
    }

    /// Resident memory (`VmRSS` of `/proc/<pid>/status`), in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_of(self.pid())
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds_of(&format!("/proc/{}/stat", self.pid()))
    }
}

/// `VmRSS` of a process, in bytes.
pub fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib: u64 =
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).context("bad VmRSS line")?;
    Ok(kib * 1024)
}

/// User + system CPU seconds from a `/proc/.../stat` file.
pub fn cpu_seconds_of(stat_path: &str) -> anyhow::Result<f64> {
    let stat =
        std::fs::read_to_string(stat_path).with_context(|| format!("cannot read {stat_path}"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit(')').next().context("bad stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15, i.e. indexes 11 and 12 after the name.
    let total = ticks(11) + ticks(12);
    // /proc reports in USER_HZ, which is 100 on every Linux architecture.
    Ok(total as f64 / 100.0)
}

/// CPU seconds this benchmark process has used.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds_of("/proc/self/stat").unwrap_or(0.0)
}

/// A manager with its own data directory; it can be killed and started again on the same
/// port.
#[derive(Debug)]
pub struct Manager {
    /// The process.
    pub process: CubeProcess,
    /// A client with a 30 s timeout.
    pub client: Client,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its data directory.
    pub data: PathBuf,
    /// When its latest start began (the process was spawned).
    pub spawned: Instant,
    /// When its latest start printed the listening line (state loaded, port bound).
    pub listening: Instant,
    args: Vec<String>,
    bin: PathBuf,
}

impl Manager {
    /// Starts a manager with data in `data`, its log in `log_dir/<name>.log`.
    pub async fn start(
        bin: &Path,
        data: &Path,
        log_dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let data_s = data.to_string_lossy().into_owned();
        let mut args: Vec<String> = ["manager", "--listen", "127.0.0.1:0", "--data-dir", &data_s]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log = log_dir.join(format!("{name}.log"));
        let (process, (spawned, listening)) = CubeProcess::spawn_timed(bin, &args, &log)?;
        let url = process.url.clone();
        // Restarts reuse the port the OS picked, so workers keep their manager address.
        let port = url.rsplit(':').next().unwrap_or("0").to_owned();
        args[2] = format!("127.0.0.1:{port}");
        let client = Client::new(&url, Duration::from_secs(30))?;
        Ok(Self {
            process,
            client,
            url,
            data: data.to_owned(),
            spawned,
            listening,
            args,
            bin: bin.to_owned(),
        })
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the manager again on the same port and data directory (after [`Manager::kill9`]);
    /// [`Manager::spawned`] and [`Manager::listening`] say when.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let log = self.process.log.clone();
        let mut last = None;
        // The port was just released; binding can race with its teardown, so retry briefly.
        for _ in 0..20 {
            match CubeProcess::spawn_timed(&self.bin, &self.args, &log) {
                Ok((p, (spawned, listening))) => {
                    self.process = p;
                    self.spawned = spawned;
                    self.listening = listening;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("manager restart failed")))
    }
}

/// A worker; on drop it is killed and what it started is removed.
#[derive(Debug)]
pub struct Worker {
    /// The process.
    pub process: CubeProcess,
    /// A client for its API.
    pub client: Client,
    /// Its node id.
    pub node_id: NodeId,
    data: PathBuf,
    args: Vec<String>,
}

impl Worker {
    /// SIGKILL (its workloads keep running).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the worker again with the same arguments and data directory.
    pub fn restart(&mut self, bin: &Path) -> anyhow::Result<()> {
        let log = self.process.log.clone();
        self.process = CubeProcess::spawn(bin, &self.args, &log)?;
        self.client = Client::new(&self.process.url, Duration::from_secs(10))?;
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.process.kill9();
        process::remove_node_containers(&self.node_id.to_string());
        process::kill_process_tasks(&self.data);
    }
}
