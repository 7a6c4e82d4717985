//! Helpers for the client CLI tests: a `cube dev` cluster on a free loopback port that cleans up
//! after itself, and a way to run `cube` commands against it and look at what they printed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use cube_core::TaskState;
use cube_http::client::Client;

use crate::common::{CubeProcess, cube_bin, wait_until};

/// Longest time one `cube` command may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// What a `cube` command printed and how it exited.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`-1` when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Panics unless the command exited 0.
    #[track_caller]
    pub fn success(self) -> Run {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        self
    }

    /// The one line on stderr; panics if there are more or none.
    #[track_caller]
    pub fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:#?}");
        assert!(lines[0].starts_with("error: "), "not an error line: {self:#?}");
        lines[0]
    }

    /// Standard output parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    /// The task id of a `submitted task <id>` line.
    #[track_caller]
    pub fn submitted_id(&self) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("submitted task "))
            .unwrap_or_else(|| panic!("no `submitted task` line: {self:#?}"))
            .trim()
            .to_owned()
    }
}

/// Runs `cube <args>` with a clean environment for output settings.
pub fn cube(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = assert_cmd::Command::new(cube_bin());
    cmd.args(args)
        .env_remove("CUBE_ADDR")
        .env_remove("CUBE_OUTPUT")
        .env_remove("CUBE_TOKEN")
        .env_remove("CUBE_TOKEN_FILE")
        .env_remove("CUBE_TLS_CA")
        .env_remove("NO_COLOR")
        .timeout(COMMAND_TIMEOUT);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cannot run cube");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An example file of the repository.
pub fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name);
    path.to_str().unwrap().to_owned()
}

/// A `cube dev` cluster (a manager and one worker). On drop it is killed, and every container
/// and process-driver workload it started is removed.
pub struct Cluster {
    pub process: CubeProcess,
    pub client: Client,
    /// The worker's node id.
    pub node_id: String,
    /// The worker's name.
    pub node_name: String,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `cube dev` and waits until its worker has registered.
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let data = data.to_str().unwrap().to_owned();
        let process = CubeProcess::start(
            &["dev", "--listen", "127.0.0.1:0", "--data-dir", &data],
            dir.path(),
        );
        let client = process.client();
        let node = wait_until(Duration::from_secs(20), "the dev worker registered", || async {
            client.nodes().await.ok()?.into_iter().next()
        })
        .await;
        Cluster { process, client, node_id: node.id.to_string(), node_name: node.name, dir }
    }

    /// The manager's URL.
    pub fn url(&self) -> &str {
        &self.process.url
    }

    /// Runs `cube --addr <manager> <args>`.
    pub fn cube(&self, args: &[&str]) -> Run {
        let mut all = vec!["--addr", self.url()];
        all.extend_from_slice(args);
        cube(&all, &[])
    }

    /// Waits until task `id` is in `state`.
    pub async fn wait_state(&self, id: &str, state: TaskState, timeout: Duration) {
        let task_id = id.parse().unwrap();
        wait_until(timeout, &format!("task {id} {state}"), || async {
            let t = self.client.task(task_id).await.ok()?;
            (t.state == state).then_some(())
        })
        .await;
    }

    fn worker_data(&self) -> PathBuf {
        self.dir.path().join("data").join("worker")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.process.kill9();
        if std::thread::panicking() {
            eprintln!("cube dev log:\n{}", self.process.logs());
        }
        crate::common::process::remove_node_containers(&self.node_id);
        crate::common::kill_process_tasks(&self.worker_data());
    }
}

/// A loopback URL where nothing listens (a port the OS gave out and that was closed again).
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}
