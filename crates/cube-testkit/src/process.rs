//! Real `cube` processes for multi-process tests and benchmarks: started on loopback ports the
//! OS picks, killed when dropped, and cleaned up after (their containers and process tasks),
//! even when the test or benchmark failed.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Why a `cube` process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The log file could not be created.
    #[error("cannot create {}", path.display())]
    Log {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The binary could not be run.
    #[error("cannot run {}", bin.display())]
    Run {
        /// The binary.
        bin: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It did not print its `listening on` line in time (it may have failed at once, e.g. on
    /// a port still held by a predecessor).
    #[error("cube {args:?} did not start listening within {timeout:?}; its log:\n{log}")]
    NotListening {
        /// Its arguments.
        args: Vec<String>,
        /// How long it was given.
        timeout: Duration,
        /// What it logged.
        log: String,
    },
}

/// How to start a `cube` process.
#[derive(Clone, Debug)]
pub struct Spawn {
    /// The `cube` binary.
    pub bin: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The file its stderr (its logs) is appended to.
    pub log: PathBuf,
    /// Its `CUBE_LOG` filter.
    pub log_filter: String,
    /// How long it may take to print its `listening on` line.
    pub timeout: Duration,
}

impl Spawn {
    /// `bin args`, logging to `log` at `info`, given 20 s to listen.
    pub fn new(bin: &Path, args: &[&str], log: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log: log.to_owned(),
            log_filter: "info".into(),
            timeout: Duration::from_secs(20),
        }
    }
}

/// A running `cube` process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct CubeProcess {
    child: Child,
    /// The address it printed: `http://127.0.0.1:PORT` (or `https://`).
    pub url: String,
    /// Its stderr (its logs) and, line by line, its stdout.
    pub log: PathBuf,
    /// When its spawn began and when it printed its `listening on` line.
    pub started: (Instant, Instant),
}

impl CubeProcess {
    /// Starts the process and waits for its `listening on` line. The environment carries no
    /// token or TLS settings of the caller's: a test that wants them passes flags.
    pub fn spawn(spec: &Spawn) -> Result<Self, SpawnError> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|source| SpawnError::Log { path: spec.log.clone(), source })?;
        let began = Instant::now();
        let mut child = Command::new(&spec.bin)
            .args(&spec.args)
            .env("CUBE_LOG", &spec.log_filter)
            .env_remove("CUBE_TOKEN")
            .env_remove("CUBE_TOKEN_FILE")
            .env_remove("CUBE_TLS_CA")
            .env_remove("CUBE_TLS_CERT")
            .env_remove("CUBE_TLS_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| SpawnError::Run { bin: spec.bin.clone(), source })?;
        let (tx, rx) = mpsc::channel();
        // The command's own output goes to the log too, among its log lines.
        let mut copy = std::fs::OpenOptions::new().append(true).open(&spec.log).ok();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                // Keep reading until the process exits, so it never blocks on a full pipe.
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(url) = line.split("listening on ").nth(1) {
                        let _ = tx.send((url.trim().to_owned(), Instant::now()));
                    }
                    if let Some(log) = copy.as_mut() {
                        let _ = writeln!(log, "{line}");
                    }
                }
            });
        }
        match rx.recv_timeout(spec.timeout) {
            Ok((url, at)) => Ok(Self { child, url, log: spec.log.clone(), started: (began, at) }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(SpawnError::NotListening {
                    args: spec.args.clone(),
                    timeout: spec.timeout,
                    log: std::fs::read_to_string(&spec.log).unwrap_or_default(),
                })
            }
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the exit.
    pub fn terminate(&mut self) -> std::io::Result<ExitStatus> {
        self.signal_term();
        self.child.wait()
    }

    /// SIGTERM, without waiting ([`CubeProcess::wait`] reaps it).
    pub fn signal_term(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(self.pid()).unwrap_or(0)) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// Waits for the exit (after [`CubeProcess::signal_term`]).
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait()
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CubeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Kills the process groups of process-driver tasks whose logs live under the worker data
/// directory `data_dir` (their `CUBE_TASK_ID` environment variable names them).
pub fn kill_process_tasks(data_dir: &Path) {
    let Ok(tasks) = std::fs::read_dir(data_dir.join("tasks")) else {
        return;
    };
    let ids: HashSet<String> =
        tasks.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if ids.is_empty() {
        return;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let name = p.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<i32>() else { continue };
        let Ok(env) = std::fs::read(p.path().join("environ")) else {
            continue;
        };
        let owned = env.split(|b| *b == 0).any(|var| {
            var.strip_prefix(b"CUBE_TASK_ID=")
                .is_some_and(|id| ids.contains(String::from_utf8_lossy(id).as_ref()))
        });
        if owned && let Some(pid) = rustix::process::Pid::from_raw(pid) {
            // Process tasks lead their own group; it may have exited since the scan.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// Ids of the containers (running or not) matching a `docker ps` filter such as
/// `label=cube.node=<id>`.
pub fn containers(filter: &str) -> Vec<String> {
    let out = Command::new("docker").args(["ps", "-aq", "--no-trunc", "--filter", filter]).output();
    match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

/// Removes the containers matching `filter`, five at a time: a burst of forced removals is hard
/// on the engine (Docker 20.10 has been seen to deadlock under fifty concurrent kills).
pub fn remove_containers(filter: &str) {
    for chunk in containers(filter).chunks(5) {
        let _ = Command::new("docker").args(["rm", "-f"]).args(chunk).output();
    }
}

/// Removes the containers Cube created for node `node`.
pub fn remove_node_containers(node: &str) {
    remove_containers(&format!("label=cube.node={node}"));
}

/// Whether a Docker engine answers within 10 s.
pub fn docker_answers() -> bool {
    let Ok(mut child) = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            // A deadline on an external command, not synchronisation.
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}
