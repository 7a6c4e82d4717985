//! The process driver: runs a task as a plain host process.
//!
//! What it gives: its own process group (so a stop signals the task and everything it spawned,
//! and a Ctrl-C aimed at the worker's terminal does not reach it), the spec's environment added
//! to the worker's, a working directory, stdout and stderr in the task's log file, SIGTERM then
//! SIGKILL after the grace period, and the exit status.
//!
//! Whom it runs as: a worker running as root runs each task as an unprivileged user (`nobody`
//! unless the spec names a user the worker allows; [`super::users`]), with that user's primary
//! group and no supplementary groups. The log file is opened by the worker and handed to the
//! child as its stdout and stderr, so the task needs no access to the worker's data directory.
//!
//! What it does not give: any other isolation. The process sees the whole filesystem (as its
//! user) and the network, and its CPU and memory are neither limited nor accounted for beyond
//! what the scheduler reserved on paper. Use the docker driver for anything untrusted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use cube_core::{DriverHandle, DriverKind, TaskId, TaskSpec};
use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use super::output::open_log;
use super::users::{Account, RunAs};
use futures_util::StreamExt;

use super::{
    Background, Driver, DriverError, ExitInfo, ExitWatch, Session, SessionControl, SessionRequest,
    Source, StartRequest, Started, wait_exit,
};

/// Runs tasks as host processes.
#[derive(Debug, Clone)]
pub(crate) struct ProcessDriver {
    /// Exit watchers run here.
    background: Background,
    /// What every task gets (behind a pointer, as the driver is cloned and kept by value).
    settings: std::sync::Arc<Settings>,
}

#[derive(Debug)]
struct Settings {
    /// Where processes reach this node's ingress (`CUBE_INGRESS_HOST`), if it runs one.
    ingress: Option<IpAddr>,
    /// Whom tasks run as.
    run_as: RunAs,
}

/// After SIGKILL a process dies at once unless stuck in the kernel; do not wait forever.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl ProcessDriver {
    /// A process driver whose exit watchers run in `background`; its tasks reach the node's
    /// ingress at `ingress` (an ingress on every address is reached on loopback).
    pub(crate) fn new(background: Background, ingress: Option<IpAddr>, run_as: RunAs) -> Self {
        let ingress = ingress.map(|ip| match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        });
        Self { background, settings: std::sync::Arc::new(Settings { ingress, run_as }) }
    }

    /// The variables the driver gives every task, besides the task's own.
    fn cube_env(&self, task_id: TaskId, name: &str) -> Vec<(&'static str, String)> {
        let mut env =
            vec![("CUBE_TASK_ID", task_id.to_string()), ("CUBE_TASK_NAME", name.to_owned())];
        if let Some(ip) = self.settings.ingress {
            env.push(("CUBE_INGRESS_HOST", ip.to_string()));
        }
        env
    }
}

impl Driver for ProcessDriver {
    async fn start(&self, req: &StartRequest) -> Result<Started, DriverError> {
        let program = req
            .spec
            .command
            .clone()
            .ok_or(DriverError::Incomplete { driver: DriverKind::Process, what: "a command" })?;
        // Before the log is opened: a task that cannot run as its user leaves no empty file.
        let account = self.settings.run_as.account(req.spec.user.as_deref()).await?;
        let log = open_log(&req.log_path).await?;
        let log_err = log
            .try_clone()
            .map_err(|source| DriverError::File { path: req.log_path.clone(), source })?;

        let mut command = tokio::process::Command::new(&program);
        command
            .args(&req.spec.args)
            .envs(account_env(account.as_ref()))
            .envs(&req.spec.env)
            .envs(self.cube_env(req.task_id, &req.name))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group: stop signals reach the whole tree, terminal signals do not.
            .process_group(0)
            // The workload must outlive a worker restart; the worker re-adopts it by pid.
            .kill_on_drop(false);
        if let Some(dir) = &req.spec.workdir {
            command.current_dir(dir);
        }
        if let Some(a) = &account {
            // std drops the supplementary groups (setgroups) before setuid when run as root.
            command.uid(a.uid).gid(a.gid);
        }
        let mut child = command
            .spawn()
            .map_err(|source| DriverError::Spawn { program: program.clone(), source })?;
        // A child that was just spawned and not yet waited for always has an id.
        let pid = child.id().unwrap_or_default();
        // Read right after spawn, while the child cannot have been reaped (we hold it).
        let start_ticks = start_ticks(pid).unwrap_or(0);

        let (tx, rx) = oneshot::channel();
        self.background.spawn(async move {
            let info = match child.wait().await {
                Ok(status) => ExitInfo {
                    code: status.code().map(i64::from),
                    signal: status.signal(),
                    ..ExitInfo::default()
                },
                Err(e) => ExitInfo {
                    error: Some(format!("waiting for process failed: {e}")),
                    ..ExitInfo::default()
                },
            };
            // The receiver may be gone if the runner stopped caring; nothing to do then.
            let _ = tx.send(info);
        });
        Ok(Started {
            handle: DriverHandle::Process { pid, start_ticks },
            host_ports: Vec::new(),
            exit: rx,
        })
    }

    async fn stop(
        &self,
        handle: &DriverHandle,
        grace: Duration,
        exit: &mut ExitWatch,
    ) -> Result<ExitInfo, DriverError> {
        let pid = process_pid(handle)?;
        signal_group(pid, Signal::TERM)?;
        let info = match tokio::time::timeout(grace, wait_exit(exit)).await {
            Ok(info) => info,
            Err(_) => {
                signal_group(pid, Signal::KILL)?;
                tokio::time::timeout(KILL_WAIT, wait_exit(exit))
                    .await
                    .map_err(|_| DriverError::DidNotStop { what: format!("process {pid}") })?
            }
        };
        // The leader is gone; take down anything it left in its group. The group id cannot have
        // been reused yet: members keep it alive, and if there are none this is a no-op.
        let _ = signal_group(pid, Signal::KILL);
        Ok(info)
    }

    async fn cleanup(&self, _handle: &DriverHandle) -> Result<(), DriverError> {
        // Nothing to remove: the log file stays for `cube logs`, the process is reaped.
        Ok(())
    }

    async fn recover(&self, handle: &DriverHandle) -> Result<Option<Started>, DriverError> {
        let DriverHandle::Process { pid, start_ticks: expected } = handle else {
            return Err(wrong_handle(handle));
        };
        let pid = *pid;
        // A pid with another start time is a different process that reused the number.
        if start_ticks(pid) != Some(*expected) {
            return Ok(None);
        }
        let Some(raw) = raw_pid(pid) else { return Ok(None) };
        let fd = match rustix::process::pidfd_open(raw, PidfdFlags::NONBLOCK) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(None),
            Err(e) => return Err(process_error("watch", pid, e.into())),
        };
        // `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` type could change or close
        // its descriptor behind the reactor's back. `OwnedFd` cannot: it owns the descriptor for
        // the AsyncFd's whole life, which is exactly what the safe-but-`unsafe fn` successor asks.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd).map_err(|e| process_error("watch", pid, e))?;
        let (tx, rx) = oneshot::channel();
        self.background.spawn(async move {
            // A pidfd becomes readable when the process exits. It is not our child any more, so
            // its exit status went to whoever reaps it now.
            let result = fd.readable().await.map(|_| ());
            let _ = tx.send(ExitInfo {
                error: Some(match result {
                    Ok(()) => "exit status unknown (process was re-adopted after a worker restart)"
                        .to_owned(),
                    Err(e) => format!("watching re-adopted process failed: {e}"),
                }),
                ..ExitInfo::default()
            });
        });
        Ok(Some(Started { handle: handle.clone(), host_ports: Vec::new(), exit: rx }))
    }

    async fn exec(
        &self,
        _handle: &DriverHandle,
        spec: &TaskSpec,
        command: &[String],
    ) -> Result<i64, DriverError> {
        // A process is not isolated, so its commands run on the host, with its environment.
        let (program, args) = command.split_first().ok_or(DriverError::Incomplete {
            driver: DriverKind::Process,
            what: "a command to run",
        })?;
        // As the task's own user: a probe is the task's code, not the worker's.
        let account = self.settings.run_as.account(spec.user.as_deref()).await?;
        let mut probe = tokio::process::Command::new(program);
        probe
            .args(args)
            .envs(account_env(account.as_ref()))
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(a) = &account {
            probe.uid(a.uid).gid(a.gid);
        }
        let status = probe
            .status()
            .await
            .map_err(|source| DriverError::Spawn { program: program.clone(), source })?;
        Ok(status.code().map(i64::from).unwrap_or(-1))
    }

    async fn session(
        &self,
        handle: &DriverHandle,
        spec: &TaskSpec,
        req: &SessionRequest,
    ) -> Result<Session, DriverError> {
        // Like the task itself: on the host, with its environment and working directory, and
        // no isolation (it has none to share).
        let (program, args) = req.command.split_first().ok_or(DriverError::Incomplete {
            driver: DriverKind::Process,
            what: "a command to run",
        })?;
        process_pid(handle)?;
        // As the task's user, so a session can do no more than the task could.
        let account = self.settings.run_as.account(spec.user.as_deref()).await?;
        // The account's variables, the task's own, and those the driver gives every task.
        let cube_env = self.cube_env(req.task_id, &req.name);
        let user_env = account_env(account.as_ref());
        let env: Vec<(&str, &str)> = user_env
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .chain(cube_env.iter().map(|(k, v)| (*k, v.as_str())))
            .collect();
        let spawn_error = |source| DriverError::Spawn { program: program.clone(), source };
        if req.tty {
            let (pty, pts) = pty_process::open().map_err(|e| spawn_error(pty_error(e)))?;
            if let Some((width, height)) = req.size {
                pty.resize(pty_process::Size::new(height, width))
                    .map_err(|e| spawn_error(pty_error(e)))?;
            }
            // A handle of its own on the terminal for resizing, as the pty is split below.
            let terminal = std::os::fd::AsFd::as_fd(&pty)
                .try_clone_to_owned()
                .map_err(|source| DriverError::SessionIo { what: "terminal", source })?;
            let mut command = pty_process::Command::new(program).args(args).kill_on_drop(true);
            for (k, v) in &env {
                command = command.env(k, v);
            }
            if let Some(dir) = &spec.workdir {
                command = command.current_dir(dir);
            }
            if let Some(a) = &account {
                command = command.uid(a.uid).gid(a.gid);
            }
            let child = command.spawn(pts).map_err(|e| spawn_error(pty_error(e)))?;
            let (read, write) = pty.into_split();
            let output = tokio_util::io::ReaderStream::new(read)
                // Reading a terminal whose last writer has gone fails with EIO: that is its end.
                .take_while(|r| {
                    std::future::ready(!matches!(r, Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error())))
                })
                .map(|r| {
                    r.map(|b| (Source::Stdout, b))
                        .map_err(|source| DriverError::SessionIo { what: "output", source })
                });
            return Ok(Session {
                stdin: Box::pin(write),
                output: output.boxed(),
                control: Box::new(ChildSession { child, terminal: Some(terminal) }),
            });
        }
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(if req.stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &spec.workdir {
            command.current_dir(dir);
        }
        if let Some(a) = &account {
            command.uid(a.uid).gid(a.gid);
        }
        let mut child = command.spawn().map_err(spawn_error)?;
        let stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>> = match child.stdin.take() {
            Some(stdin) => Box::pin(stdin),
            None => Box::pin(tokio::io::sink()),
        };
        let tagged = |source: Source| {
            move |r: std::io::Result<bytes::Bytes>| {
                r.map(|b| (source, b))
                    .map_err(|source| DriverError::SessionIo { what: "output", source })
            }
        };
        let stdout = child
            .stdout
            .take()
            .map(|o| tokio_util::io::ReaderStream::new(o).map(tagged(Source::Stdout)).boxed());
        let stderr = child
            .stderr
            .take()
            .map(|e| tokio_util::io::ReaderStream::new(e).map(tagged(Source::Stderr)).boxed());
        let output = futures_util::stream::select(
            stdout.unwrap_or_else(|| futures_util::stream::empty().boxed()),
            stderr.unwrap_or_else(|| futures_util::stream::empty().boxed()),
        );
        Ok(Session {
            stdin,
            output: output.boxed(),
            control: Box::new(ChildSession { child, terminal: None }),
        })
    }
}

/// The variables naming the account a task runs as (when it is not the worker's own), which
/// would otherwise be inherited from the worker (`HOME=/root`).
fn account_env(account: Option<&Account>) -> Vec<(&'static str, String)> {
    match account {
        Some(a) => {
            vec![("HOME", a.home.clone()), ("USER", a.name.clone()), ("LOGNAME", a.name.clone())]
        }
        None => Vec::new(),
    }
}

/// A command the process driver started for a session.
struct ChildSession {
    child: tokio::process::Child,
    /// Its terminal, when it has one.
    terminal: Option<std::os::fd::OwnedFd>,
}

impl SessionControl for ChildSession {
    fn resize(
        &self,
        width: u16,
        height: u16,
    ) -> futures_util::future::BoxFuture<'_, Result<(), DriverError>> {
        let result = match &self.terminal {
            Some(fd) => {
                let size = rustix::termios::Winsize {
                    ws_row: height,
                    ws_col: width,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                rustix::termios::tcsetwinsize(fd, size)
                    .map_err(|e| DriverError::SessionIo { what: "terminal", source: e.into() })
            }
            None => Ok(()),
        };
        Box::pin(std::future::ready(result))
    }

    fn exit_code(&mut self) -> futures_util::future::BoxFuture<'_, Result<i64, DriverError>> {
        Box::pin(async move {
            let status = self
                .child
                .wait()
                .await
                .map_err(|source| DriverError::SessionIo { what: "exit status", source })?;
            // Killed by a signal: the shell's convention, 128 + the signal.
            Ok(status
                .code()
                .map_or_else(|| 128 + i64::from(status.signal().unwrap_or(0)), i64::from))
        })
    }
}

fn pty_error(e: pty_process::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn process_pid(handle: &DriverHandle) -> Result<u32, DriverError> {
    match handle {
        DriverHandle::Process { pid, .. } => Ok(*pid),
        DriverHandle::Container { .. } => Err(wrong_handle(handle)),
    }
}

fn wrong_handle(handle: &DriverHandle) -> DriverError {
    DriverError::WrongHandle { driver: DriverKind::Process, handle: handle.short() }
}

fn process_error(operation: &'static str, pid: u32, source: std::io::Error) -> DriverError {
    DriverError::Process { operation, pid, source }
}

/// The pid as the kernel's type; `None` for 0 or a value no process can have.
fn raw_pid(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

/// Sends `signal` to the process group led by `pid`; a group that no longer exists is fine.
fn signal_group(pid: u32, signal: Signal) -> Result<(), DriverError> {
    let Some(raw) = raw_pid(pid) else { return Ok(()) };
    match rustix::process::kill_process_group(raw, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(process_error("signal", pid, e.into())),
    }
}

/// Start time of `pid` in clock ticks after boot, or `None` if there is no such process.
/// (A read of /proc, which the kernel answers from memory without blocking.)
fn start_ticks(pid: u32) -> Option<u64> {
    let pid = i32::try_from(pid).ok()?;
    procfs::process::Process::new(pid).ok()?.stat().ok().map(|s| s.starttime)
}
