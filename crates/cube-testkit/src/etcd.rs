//! Real etcd clusters for tests and benchmarks: Debian's `etcd-server` (`/usr/bin/etcd`), one
//! or more members on loopback ports the OS picked, each in a data directory of its own,
//! killed when dropped. Members can be killed, paused and started again on the same ports.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why an etcd cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The binary could not be run, or a directory or log file could not be made.
    #[error("cannot start etcd member {name}")]
    Start {
        /// The member.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A member did not answer `/health` in time.
    #[error("etcd member {name} not healthy within {timeout:?}; its log:\n{log}")]
    NotHealthy {
        /// The member.
        name: String,
        /// How long it was given.
        timeout: Duration,
        /// What it logged.
        log: String,
    },
}

/// The etcd binary: `$CUBE_ETCD_BIN`, or Debian's.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("CUBE_ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

/// Whether etcd is installed (tests that need it are skipped without it, and fail under CI).
pub fn etcd_available() -> bool {
    etcd_bin().is_file()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One member.
#[derive(Debug)]
pub struct Member {
    /// Its name (`m0`, `m1`, ...).
    pub name: String,
    /// Its client port.
    pub client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }
}

/// A running etcd cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    /// Its members.
    pub members: Vec<Member>,
    initial_cluster: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until each answers `/health`.
    pub fn start(size: usize) -> Result<Self, EtcdError> {
        let start = |name: &str, source| EtcdError::Start { name: name.to_owned(), source };
        let dir = tempfile::tempdir().map_err(|e| start("all", e))?;
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            let name = format!("m{i}");
            let client_port = free_port().map_err(|e| start(&name, e))?;
            let peer_port = free_port().map_err(|e| start(&name, e))?;
            let dir = dir.path().join(&name);
            std::fs::create_dir_all(&dir).map_err(|e| start(&name, e))?;
            members.push(Member { name, client_port, peer_port, dir, child: None });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("cube-test-{}", uuid::Uuid::now_v7());
        let mut cluster = Self { members, initial_cluster, token, _dir: dir };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    /// Every member's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The endpoints as one comma-separated list (for `--etcd`).
    pub fn endpoint_list(&self) -> String {
        self.endpoints().join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<(), EtcdError> {
        let (initial, token) = (self.initial_cluster.clone(), self.token.clone());
        let m = &mut self.members[i];
        let err = |source| EtcdError::Start { name: m.name.clone(), source };
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(m.log()).map_err(err)?;
        let client = m.endpoint();
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(etcd_bin())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial, "--initial-cluster-token", &token])
            .args(["--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| EtcdError::Start { name: m.name.clone(), source })?;
        m.child = Some(child);
        Ok(())
    }

    /// Waits until member `i` answers `/health` with `true` (it has a leader).
    pub fn wait_healthy(&self, i: usize, timeout: Duration) -> Result<(), EtcdError> {
        let m = &self.members[i];
        let began = Instant::now();
        while began.elapsed() < timeout {
            if healthy(m.client_port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(EtcdError::NotHealthy {
            name: m.name.clone(),
            timeout,
            log: std::fs::read_to_string(m.log()).unwrap_or_default(),
        })
    }

    /// SIGKILLs member `i` and waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and data (after [`EtcdCluster::kill`]).
    pub fn restart(&mut self, i: usize) -> Result<(), EtcdError> {
        self.kill(i);
        self.spawn(i)
    }

    /// The log of member `i`.
    pub fn logs(&self, i: usize) -> String {
        std::fs::read_to_string(self.members[i].log()).unwrap_or_default()
    }

    /// Where member `i` keeps its files.
    pub fn dir(&self, i: usize) -> &Path {
        &self.members[i].dir
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Whether etcd on `port` says it is healthy (`GET /health`, a plain HTTP/1.0 exchange).
fn healthy(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}
