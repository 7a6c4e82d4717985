//! The docker driver: runs a task as a container through the Docker Engine API (bollard).
//!
//! Every container Cube creates carries the labels `cube.task-id`, `cube.node` and
//! `cube.task-name`, so it can be found again after a worker restart (and stray ones can be
//! cleaned up). Cube owns restarts, so the engine's restart policy is always `no`. Containers run
//! with the engine's init (`--init`) so SIGTERM reaches the workload even when it is PID 1 and
//! would otherwise ignore it, and zombies are reaped.
//!
//! Every container gets `no-new-privileges` (a setuid binary in the image cannot gain what the
//! container was not given). It is privileged, mounts host paths, joins the host network or
//! gains capabilities only when its spec asks and the worker allows it (`--allow-*`, checked
//! when the task is placed and again when it arrives); host paths are bind mounts of paths
//! that must exist, never created by the engine.
//!
//! Images are used if present and pulled only if absent; a failed pull fails the task at once
//! with the image's name in the reason. Container output is copied to the task's log file while
//! the container lives, so logs stay readable after the container is removed; a re-adopted
//! container's copying resumes where it stopped ([`super::output::Cursor`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummaryStateEnum, ExecConfig,
    HostConfig, IpamConfig, Mount, MountType, PortBinding, PortMap, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use cube_core::{Chain, DriverHandle, DriverKind, HostPort, NodeId, Protocol, TaskSpec};
use cube_rt::Backoff;
use futures_util::StreamExt;
use jiff::Timestamp;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, SemaphorePermit, oneshot};

use super::output::{Cursor, open_log};
use super::{
    Background, Driver, DriverError, EngineError, ExitInfo, ExitWatch, Owned, PullError, Session,
    SessionControl, SessionRequest, Source, StartRequest, Started, wait_exit,
};

/// Label holding the task id.
const LABEL_TASK_ID: &str = "cube.task-id";
/// Label holding the node id.
const LABEL_NODE: &str = "cube.node";
/// Label holding the task name.
const LABEL_TASK_NAME: &str = "cube.task-name";

/// Reads of a fresh container's port bindings before accepting what is there.
const PORT_READ_ATTEMPTS: u32 = 20;
const PORT_READ_PAUSE: Duration = Duration::from_millis(50);

/// Extra time, beyond the grace period, allowed for the engine to report a stop.
const STOP_SLACK: Duration = Duration::from_secs(10);

/// Runs tasks as Docker containers.
#[derive(Debug, Clone)]
pub(crate) struct DockerDriver {
    docker: Docker,
    pull_timeout: Duration,
    /// Image pulls, for the worker's metrics.
    pulls: crate::metrics::Pulls,
    /// Exit watchers and output copiers run here.
    background: Background,
    /// Bounds concurrent container mutations (create, start, stop, remove). Engines serialise
    /// much of this work internally anyway, and Docker 20.10 has been seen to deadlock when
    /// dozens of containers die at once; a queue here costs little and spares the engine.
    mutations: Arc<Semaphore>,
    /// The default bridge's gateway, where containers reach this node's ingress (as
    /// `cube.internal`); `None` when the node runs no ingress or the bridge has no IPv4 one.
    gateway: Option<IpAddr>,
}

/// The name containers reach their node's ingress at.
const INGRESS_HOST_NAME: &str = "cube.internal";

/// Concurrent container mutations allowed per worker.
const MAX_CONCURRENT_MUTATIONS: usize = 8;

impl DockerDriver {
    /// Connects to the engine named by `DOCKER_HOST` (or the local socket) and agrees on an API
    /// version. Fails if the engine does not answer.
    pub(crate) async fn connect(
        pull_timeout: Duration,
        background: Background,
        pulls: crate::metrics::Pulls,
        ingress: bool,
    ) -> Result<Self, EngineError> {
        let docker = Docker::connect_with_defaults().map_err(EngineError)?;
        let docker = docker.negotiate_version().await.map_err(EngineError)?;
        docker.ping().await.map_err(EngineError)?;
        let gateway = if ingress {
            match docker.inspect_network("bridge", None).await {
                Ok(bridge) => {
                    bridge_gateway(bridge.ipam.and_then(|i| i.config).unwrap_or_default())
                }
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "cannot inspect the default bridge; containers cannot reach the ingress");
                    None
                }
            }
        } else {
            None
        };
        Ok(Self {
            docker,
            pull_timeout,
            background,
            mutations: Arc::new(Semaphore::new(MAX_CONCURRENT_MUTATIONS)),
            pulls,
            gateway,
        })
    }

    /// Where containers reach this node's ingress, if they can.
    pub(crate) fn gateway(&self) -> Option<IpAddr> {
        self.gateway
    }

    /// Containers labelled for `node` (running or not).
    async fn list_managed(&self, node: NodeId) -> Result<Vec<Owned>, DriverError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_NODE}={node}")])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(engine("cannot list containers"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let id = c.id?;
                let task = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_TASK_ID))
                    .and_then(|s| s.parse().ok());
                let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
                Some(Owned { handle: DriverHandle::Container { id }, task, running })
            })
            .collect())
    }

    async fn permit(&self) -> SemaphorePermit<'_> {
        // Acquiring fails only on a closed semaphore, and this one is never closed.
        #[allow(clippy::expect_used)]
        self.mutations.acquire().await.expect("the engine queue is never closed")
    }

    async fn ensure_image(&self, image: &str) -> Result<(), DriverError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(engine("cannot inspect the image")(e)),
        }
        tracing::info!(image, "image not present; pulling");
        let options =
            CreateImageOptions { from_image: Some(image.to_owned()), ..Default::default() };
        let pull = async {
            let mut stream = self.docker.create_image(Some(options), None, None);
            let mut last_status = String::new();
            while let Some(item) = stream.next().await {
                let info = item.map_err(EngineError)?;
                if let Some(status) = info.status
                    && status != last_status
                {
                    tracing::debug!(image, %status, "pull progress");
                    last_status = status;
                }
            }
            Ok::<(), EngineError>(())
        };
        let unavailable =
            |source| DriverError::ImageUnavailable { image: image.to_owned(), source };
        let pulled = tokio::time::timeout(self.pull_timeout, pull).await;
        self.pulls.record(matches!(pulled, Ok(Ok(()))));
        match pulled {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(PullError::Engine(e))),
            Err(_) => Err(unavailable(PullError::TimedOut(self.pull_timeout))),
        }
    }

    fn create_body(req: &StartRequest, gateway: Option<IpAddr>) -> ContainerCreateBody {
        let spec = &req.spec;
        let cmd = match (&spec.command, spec.args.is_empty()) {
            (Some(_), _) => Some(spec.argv()),
            (None, false) => Some(spec.args.clone()),
            (None, true) => None,
        };
        let labels = HashMap::from([
            (LABEL_TASK_ID.to_owned(), req.task_id.to_string()),
            (LABEL_NODE.to_owned(), req.node_id.to_string()),
            (LABEL_TASK_NAME.to_owned(), req.name.clone()),
        ]);
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("CUBE_TASK_ID={}", req.task_id));
        env.push(format!("CUBE_TASK_NAME={}", req.name));
        let extra_hosts = gateway.map(|ip| {
            env.push(format!("CUBE_INGRESS_HOST={ip}"));
            vec![format!("{INGRESS_HOST_NAME}:{ip}")]
        });
        let exposed: Vec<String> =
            spec.ports.iter().map(|p| port_key(p.container, p.protocol)).collect();
        let bindings: PortMap = spec
            .ports
            .iter()
            .map(|p| {
                let host_port = if p.host == 0 { String::new() } else { p.host.to_string() };
                (
                    port_key(p.container, p.protocol),
                    Some(vec![PortBinding { host_ip: None, host_port: Some(host_port) }]),
                )
            })
            .collect();
        let memory = i64::try_from(spec.resources.memory.get()).unwrap_or(i64::MAX);
        let nano_cpus =
            i64::try_from(spec.resources.cpu.get()).unwrap_or(0).saturating_mul(1_000_000);
        let mounts: Vec<Mount> = spec
            .mounts
            .iter()
            .map(|m| Mount {
                source: Some(m.source.clone()),
                target: Some(m.target.clone()),
                // A bind of a path that must exist: the engine's old `Binds` would create a
                // missing source as root.
                typ: Some(MountType::BIND),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        let caps = |list: &[String]| {
            (!list.is_empty())
                .then(|| list.iter().map(|c| cube_core::spec::capability_name(c)).collect())
        };
        ContainerCreateBody {
            image: spec.image.clone(),
            user: spec.user.clone(),
            cmd,
            env: Some(env),
            working_dir: spec.workdir.clone(),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(HostConfig {
                memory: (memory > 0).then_some(memory),
                nano_cpus: (nano_cpus > 0).then_some(nano_cpus),
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                extra_hosts,
                init: Some(true),
                // Always: setuid binaries and file capabilities gain nothing inside.
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                readonly_rootfs: spec.read_only_rootfs.then_some(true),
                cap_drop: caps(&spec.cap_drop),
                cap_add: caps(&spec.cap_add),
                privileged: spec.privileged.then_some(true),
                mounts: (!mounts.is_empty()).then_some(mounts),
                network_mode: (spec.network == cube_core::NetworkMode::Host)
                    .then(|| "host".to_owned()),
                // Cube restarts tasks itself; an engine restart would race with it.
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn create(&self, req: &StartRequest) -> Result<String, DriverError> {
        let name = format!("cube-{}-{}", req.name, req.task_id.short());
        let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
        let body = Self::create_body(req, self.gateway);
        match self.docker.create_container(Some(options.clone()), body.clone()).await {
            Ok(r) => Ok(r.id),
            Err(BollardError::DockerResponseServerError { status_code: 409, .. }) => {
                // A container of an earlier run of this very task (same name = same task id)
                // survived, e.g. after a crash between start and cleanup. It is ours: replace it.
                tracing::warn!(container = %name, "removing leftover container of an earlier run");
                self.remove(&name).await?;
                self.docker
                    .create_container(Some(options), body)
                    .await
                    .map(|r| r.id)
                    .map_err(engine("cannot create container"))
            }
            Err(e) => Err(engine("cannot create container")(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), DriverError> {
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) | Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => {
                Ok(())
            }
            // 409: removal already in progress.
            Err(BollardError::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(engine("cannot remove container")(e)),
        }
    }

    /// The container's published ports. Under load the engine can answer an inspect right after
    /// start before its port bindings are filled in, so wait briefly for all `expected` of them.
    async fn published_ports(
        &self,
        id: &str,
        expected: usize,
    ) -> Result<Vec<HostPort>, DriverError> {
        let mut ports = Vec::new();
        for attempt in 0..PORT_READ_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(PORT_READ_PAUSE).await;
            }
            match self.inspect(id).await? {
                Some(info) => ports = host_ports(&info),
                None => return Ok(Vec::new()),
            }
            // Both address families bound: the engine has finished publishing.
            if ports.len() >= expected {
                break;
            }
        }
        Ok(ports)
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, DriverError> {
        match self.docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(r) => Ok(Some(r)),
            Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(engine("cannot inspect container")(e)),
        }
    }

    /// Watches `id` until it stops running, then reports how it ended.
    fn watch_exit(&self, id: String) -> ExitWatch {
        let (tx, rx) = oneshot::channel();
        let docker = self.docker.clone();
        self.background.spawn(async move {
            let info = wait_for_exit(&docker, &id).await;
            let _ = tx.send(info);
        });
        rx
    }

    /// Copies the container's output to the task's log file until the container goes away,
    /// keeping a cursor beside the file. Entries stamped at or before `after` were copied
    /// before a worker restart and are skipped.
    fn follow_logs(
        &self,
        id: String,
        file: std::fs::File,
        log_path: &std::path::Path,
        after: Option<Timestamp>,
    ) {
        let docker = self.docker.clone();
        let mut cursor = Cursor::new(log_path, after);
        self.background.spawn_graceful(|stopping| async move {
            let mut file = tokio::fs::File::from_std(file);
            let options = LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                timestamps: true,
                // The engine filters by whole seconds; the cursor does the rest.
                since: after.map_or(0, |t| i32::try_from(t.as_second()).unwrap_or(0)),
                ..Default::default()
            };
            let mut stream = docker.logs(&id, Some(options));
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    // Stopping: keep the position for the next worker and end.
                    () = stopping.cancelled() => break,
                };
                match item {
                    Some(Ok(output)) => {
                        let bytes = output.into_bytes();
                        let (at, line) = split_timestamp(&bytes);
                        if at.is_some_and(|at| after.is_some_and(|after| at <= after)) {
                            continue;
                        }
                        if let Err(e) = file.write_all(line).await {
                            tracing::warn!(
                                container = %id,
                                error = %Chain(&e),
                                "cannot write task log"
                            );
                            break;
                        }
                        if let Some(at) = at
                            && cursor.advance(at)
                        {
                            save_cursor(&id, &mut file, &mut cursor).await;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(container = %id, error = %Chain(&e), "log stream ended");
                        break;
                    }
                    None => break,
                }
            }
            save_cursor(&id, &mut file, &mut cursor).await;
        });
    }
}

/// Saves a log's cursor once what it points at is in the file (a tokio file finishes its last
/// write in the background).
async fn save_cursor(id: &str, file: &mut tokio::fs::File, cursor: &mut Cursor) {
    match file.flush().await {
        Ok(()) => cursor.save().await,
        Err(e) => tracing::warn!(container = %id, error = %Chain(&e), "cannot write task log"),
    }
}

/// Splits an entry the engine stamped (`2026-12-01T12:00:00.123456789Z text`) into its time and
/// its text; an entry without a readable stamp is all text.
fn split_timestamp(entry: &[u8]) -> (Option<Timestamp>, &[u8]) {
    let Some(space) = entry.iter().position(|b| *b == b' ') else { return (None, entry) };
    let stamp = std::str::from_utf8(&entry[..space]).ok().and_then(|s| s.parse().ok());
    match stamp {
        Some(at) => (Some(at), &entry[space + 1..]),
        None => (None, entry),
    }
}

impl Driver for DockerDriver {
    async fn start(&self, req: &StartRequest) -> Result<Started, DriverError> {
        let image = req
            .spec
            .image
            .as_deref()
            .ok_or(DriverError::Incomplete { driver: DriverKind::Docker, what: "an image" })?;
        self.ensure_image(image).await?;
        let log = open_log(&req.log_path).await?;
        let permit = self.permit().await;
        let id = self.create(req).await?;
        if let Err(e) = self.docker.start_container(&id, None).await {
            if let Err(e) = self.remove(&id).await {
                tracing::warn!(
                    container = %id,
                    error = %Chain(&e),
                    "cannot remove container that failed to start"
                );
            }
            return Err(engine("cannot start container")(e));
        }
        drop(permit);
        self.follow_logs(id.clone(), log, &req.log_path, None);
        let exit = self.watch_exit(id.clone());
        let host_ports = self.published_ports(&id, req.spec.ports.len()).await?;
        Ok(Started { handle: DriverHandle::Container { id }, host_ports, exit })
    }

    async fn stop(
        &self,
        handle: &DriverHandle,
        grace: Duration,
        exit: &mut ExitWatch,
    ) -> Result<ExitInfo, DriverError> {
        let id = container_id(handle)?;
        // Round up: a 1.5 s grace must not become 1 s.
        let t = i32::try_from(grace.as_millis().div_ceil(1000)).unwrap_or(i32::MAX);
        let options = StopContainerOptions { t: Some(t), signal: None };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => {}
            // 304: already stopped; 404: already gone. Either way the exit watch reports it.
            Err(BollardError::DockerResponseServerError { status_code: 304 | 404, .. }) => {}
            Err(e) => return Err(engine("cannot stop container")(e)),
        }
        tokio::time::timeout(grace + STOP_SLACK, wait_exit(exit))
            .await
            .map_err(|_| DriverError::DidNotStop { what: format!("container {id}") })
    }

    async fn cleanup(&self, handle: &DriverHandle) -> Result<(), DriverError> {
        let _permit = self.permit().await;
        self.remove(container_id(handle)?).await
    }

    async fn recover(&self, handle: &DriverHandle) -> Result<Option<Started>, DriverError> {
        let id = container_id(handle)?;
        let Some(info) = self.inspect(id).await? else {
            return Ok(None);
        };
        if !info.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
            return Ok(None);
        }
        let exit = self.watch_exit(id.to_owned());
        Ok(Some(Started { handle: handle.clone(), host_ports: host_ports(&info), exit }))
    }

    async fn exec(
        &self,
        handle: &DriverHandle,
        _spec: &TaskSpec,
        command: &[String],
    ) -> Result<i64, DriverError> {
        let id = container_id(handle)?;
        let config = ExecConfig {
            cmd: Some(command.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created =
            self.docker.create_exec(id, config).await.map_err(engine("cannot create exec"))?;
        let options = StartExecOptions { detach: false, tty: false, output_capacity: None };
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&created.id, Some(options))
            .await
            .map_err(engine("cannot start exec"))?
        {
            // Drain the output: the exec has finished when its stream ends.
            while let Some(item) = output.next().await {
                item.map_err(engine("exec output failed"))?;
            }
        }
        let inspect =
            self.docker.inspect_exec(&created.id).await.map_err(engine("cannot inspect exec"))?;
        inspect.exit_code.ok_or_else(|| DriverError::NoExitCode { command: command.to_vec() })
    }

    async fn owned(&self, node: NodeId) -> Result<Vec<Owned>, DriverError> {
        self.list_managed(node).await
    }

    async fn session(
        &self,
        handle: &DriverHandle,
        _spec: &TaskSpec,
        req: &SessionRequest,
    ) -> Result<Session, DriverError> {
        let id = container_id(handle)?;
        let config = ExecConfig {
            cmd: Some(req.command.clone()),
            attach_stdin: Some(req.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(req.tty),
            ..Default::default()
        };
        let created =
            self.docker.create_exec(id, config).await.map_err(engine("cannot create exec"))?;
        let options = StartExecOptions { detach: false, tty: req.tty, output_capacity: None };
        let started = self
            .docker
            .start_exec(&created.id, Some(options))
            .await
            .map_err(engine("cannot start exec"))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(DriverError::NoExitCode { command: req.command.clone() });
        };
        let control = DockerSession { docker: self.docker.clone(), exec: created.id };
        // Engines before API 1.42 take a size only once the exec runs: a command that is already
        // done by then (or a race with its first look at the terminal) is no failure.
        if let (true, Some((width, height))) = (req.tty, req.size)
            && let Err(e) = control.resize(width, height).await
        {
            tracing::debug!(error = %Chain(&e), "cannot size the exec's terminal");
        }
        let output = output.filter_map(|item| {
            std::future::ready(match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    Some(Ok((Source::Stdout, message)))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok((Source::Stderr, message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(engine("exec output failed")(e))),
            })
        });
        Ok(Session { stdin: input, output: output.boxed(), control: Box::new(control) })
    }

    async fn reattach_output(
        &self,
        handle: &DriverHandle,
        log_path: &std::path::Path,
    ) -> Result<(), DriverError> {
        let id = container_id(handle)?;
        let after = Cursor::resume_point(log_path).await;
        let file = open_log(log_path).await?;
        self.follow_logs(id.to_owned(), file, log_path, after);
        Ok(())
    }
}

async fn wait_for_exit(docker: &Docker, id: &str) -> ExitInfo {
    let mut failures = 0u32;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let options = WaitContainerOptions { condition: "not-running".into() };
        let mut stream = docker.wait_container(id, Some(options));
        match stream.next().await {
            // A non-zero exit arrives as a "wait error" in bollard; both mean it stopped.
            Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) => break,
            Some(Err(BollardError::DockerResponseServerError { status_code: 404, .. })) => {
                return ExitInfo {
                    error: Some("container disappeared (removed outside Cube)".into()),
                    ..ExitInfo::default()
                };
            }
            other => {
                // The engine connection dropped (daemon restart, timeout). Retry with a capped
                // backoff; the container's fate is read by inspect once the wait returns.
                failures += 1;
                let reason = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "wait stream ended".into(),
                };
                tracing::warn!(
                    container = %id,
                    %reason,
                    failures,
                    "waiting for container failed; retrying"
                );
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    match docker.inspect_container(id, None::<InspectContainerOptions>).await {
        Ok(info) => {
            let state = info.state.unwrap_or_default();
            ExitInfo {
                code: state.exit_code,
                signal: None,
                oom_killed: state.oom_killed.unwrap_or(false),
                error: state.error.filter(|e| !e.is_empty()),
            }
        }
        Err(e) => ExitInfo {
            error: Some(format!("cannot inspect exited container: {e}")),
            ..ExitInfo::default()
        },
    }
}

fn host_ports(info: &ContainerInspectResponse) -> Vec<HostPort> {
    let Some(ports) = info.network_settings.as_ref().and_then(|n| n.ports.as_ref()) else {
        return Vec::new();
    };
    // Docker binds IPv4 and IPv6 separately, and with a random host port it may even give them
    // different numbers. Report one binding per container port: the IPv4 one when there is one
    // (what `127.0.0.1:<port>` and most users reach), else the first.
    let mut chosen: BTreeMap<(u16, Protocol), HostPort> = BTreeMap::new();
    for (key, bindings) in ports {
        let Some((port, proto)) = key.split_once('/') else {
            continue;
        };
        let (Ok(container_port), protocol) =
            (port.parse::<u16>(), if proto == "udp" { Protocol::Udp } else { Protocol::Tcp })
        else {
            continue;
        };
        for b in bindings.iter().flatten() {
            let Some(host_port) = b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()) else {
                continue;
            };
            let host_ip =
                b.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| "0.0.0.0".into());
            let ipv4 = !host_ip.contains(':');
            let candidate = HostPort { container_port, host_port, protocol, host_ip };
            match chosen.get(&(container_port, protocol)) {
                Some(existing) if !existing.host_ip.contains(':') || !ipv4 => {}
                _ => {
                    chosen.insert((container_port, protocol), candidate);
                }
            }
        }
    }
    chosen.into_values().collect()
}

fn port_key(port: u16, protocol: Protocol) -> String {
    format!("{port}/{protocol}")
}

/// An exec the engine runs for a session.
struct DockerSession {
    docker: Docker,
    exec: String,
}

impl SessionControl for DockerSession {
    fn resize(
        &self,
        width: u16,
        height: u16,
    ) -> futures_util::future::BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            let size = ResizeExecOptions { width, height };
            self.docker.resize_exec(&self.exec, size).await.map_err(engine("cannot resize exec"))
        })
    }

    fn exit_code(&mut self) -> futures_util::future::BoxFuture<'_, Result<i64, DriverError>> {
        Box::pin(async move {
            let inspect = self
                .docker
                .inspect_exec(&self.exec)
                .await
                .map_err(engine("cannot inspect exec"))?;
            inspect.exit_code.ok_or_else(|| DriverError::NoExitCode { command: Vec::new() })
        })
    }
}

fn container_id(handle: &DriverHandle) -> Result<&str, DriverError> {
    match handle {
        DriverHandle::Container { id } => Ok(id),
        DriverHandle::Process { .. } => {
            Err(DriverError::WrongHandle { driver: DriverKind::Docker, handle: handle.short() })
        }
    }
}

/// The driver error for an engine failure while doing `operation`: a lost connection to the
/// engine makes the driver unavailable; anything else is the engine's answer.
fn engine(operation: &'static str) -> impl FnOnce(BollardError) -> DriverError {
    move |e| match e {
        BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::RequestTimeoutError => DriverError::Unavailable {
            driver: DriverKind::Docker,
            source: Arc::new(EngineError(e)),
        },
        other => DriverError::Engine { operation, source: EngineError(other) },
    }
}

/// A bridge network's IPv4 gateway: the one its IPAM names, else the first address of its
/// subnet (what the engine gives the bridge when none is named, as on the default bridge).
fn bridge_gateway(configs: Vec<IpamConfig>) -> Option<IpAddr> {
    configs.into_iter().find_map(|c| {
        if let Some(ip) = c.gateway.as_deref().and_then(|g| g.parse::<Ipv4Addr>().ok()) {
            return Some(IpAddr::V4(ip));
        }
        let (network, bits) = c.subnet.as_deref()?.split_once('/')?;
        let (network, bits): (Ipv4Addr, u32) = (network.parse().ok()?, bits.parse().ok()?);
        // A /31 or /32 has no room for a gateway of its own.
        (bits <= 30).then(|| IpAddr::V4(Ipv4Addr::from(u32::from(network) + 1)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::NetworkSettings;

    fn binding(ip: &str, port: &str) -> PortBinding {
        PortBinding { host_ip: Some(ip.into()), host_port: Some(port.into()) }
    }

    #[test]
    fn the_bridge_gateway_is_named_or_the_first_address_of_the_subnet() {
        let config = |subnet: &str, gateway: Option<&str>| IpamConfig {
            subnet: Some(subnet.into()),
            gateway: gateway.map(Into::into),
            ..Default::default()
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(bridge_gateway(vec![config("172.17.0.0/16", None)]), ip("172.17.0.1"));
        assert_eq!(
            bridge_gateway(vec![config("10.9.0.0/24", Some("10.9.0.254"))]),
            ip("10.9.0.254")
        );
        // IPv6 first, then IPv4: the IPv4 one (the ingress's listeners are IPv4 here).
        assert_eq!(
            bridge_gateway(vec![config("fd00::/64", None), config("172.18.0.0/16", None)]),
            ip("172.18.0.1")
        );
        assert_eq!(bridge_gateway(vec![config("10.0.0.7/32", None)]), None);
        assert_eq!(bridge_gateway(vec![]), None);
    }

    #[test]
    fn stamped_entries_split_into_time_and_text() {
        let (at, text) = split_timestamp(b"2026-12-01T12:00:00.123456789Z hello world\n");
        assert_eq!(at, Some("2026-12-01T12:00:00.123456789Z".parse().unwrap()));
        assert_eq!(text, b"hello world\n");
        let (at, text) = split_timestamp(b"no stamp here\n");
        assert_eq!((at, text), (None, &b"no stamp here\n"[..]));
    }

    #[test]
    fn one_binding_per_container_port_preferring_ipv4() {
        let ports: PortMap = HashMap::from([
            // Docker 20.10 can give the two address families different random ports.
            ("80/tcp".to_owned(), Some(vec![binding("::", "32793"), binding("0.0.0.0", "32792")])),
            ("53/udp".to_owned(), Some(vec![binding("::", "40000")])),
            ("9000/tcp".to_owned(), None),
        ]);
        let info = ContainerInspectResponse {
            network_settings: Some(NetworkSettings { ports: Some(ports), ..Default::default() }),
            ..Default::default()
        };
        let got = host_ports(&info);
        assert_eq!(
            got,
            [
                HostPort {
                    container_port: 53,
                    host_port: 40000,
                    protocol: Protocol::Udp,
                    host_ip: "::".into()
                },
                HostPort {
                    container_port: 80,
                    host_port: 32792,
                    protocol: Protocol::Tcp,
                    host_ip: "0.0.0.0".into()
                },
            ]
        );
    }
}
