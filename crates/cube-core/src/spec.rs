//! The task spec: what a user asks Cube to run.
//!
//! A spec is the one type shared by job files, the HTTP API and the stores, so its serde shape
//! is a compatibility promise (field names are documented in `docs/task-spec.md`). Unknown fields
//! are rejected so a typo never silently drops a setting. [`TaskSpec::validate`] reports every
//! problem at once, each with the path of the offending field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::CoreError;
use crate::constraint::Constraint;
use crate::service::OnDisconnect;
use crate::units::{Bytes, Millicores, duration_serde};

/// Everything needed to run one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Human name; need not be unique (container names add the task id).
    pub name: String,
    /// How the task is run.
    pub driver: DriverKind,
    /// Container image (docker driver only), e.g. `cube-test/busybox:latest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Program to run. Docker: replaces the image's `CMD` (with `args`); process: required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Arguments passed to `command` (or, for docker without `command`, the whole `CMD`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (inside the container for docker, on the host for process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Resources reserved for the task (and enforced as limits by the docker driver).
    #[serde(default)]
    pub resources: Resources,
    /// Ports to publish (docker driver).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// What to do when the task exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// How to tell whether the running task is healthy. Boxed: most tasks have none, and the
    /// manager keeps every spec in memory (120 bytes inline vs 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Box<HealthCheck>>,
    /// Placement constraints, e.g. `node.labels.zone == a` (all must hold), parsed when the
    /// spec is read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// Time between the polite stop signal (SIGTERM) and SIGKILL.
    #[serde(default = "default_stop_grace", with = "duration_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub stop_grace: Duration,
    /// What the workload does when its worker cannot reach the manager: keep running (the
    /// default), or be stopped by the worker after so long without contact. A service's
    /// `on_disconnect` is copied here for each of its instances.
    #[serde(default, skip_serializing_if = "OnDisconnect::is_keep")]
    pub on_disconnect: OnDisconnect,
    /// User the workload runs as. Process: a host user name or uid, which the worker must
    /// allow (`--allow-user`); without it the worker's unprivileged default (`nobody`). Docker:
    /// the user inside the container (`name`, `uid`, `name:group` or `uid:gid`), as the
    /// engine's `--user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Docker: mount the container's root filesystem read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only_rootfs: bool,
    /// Docker: capabilities to drop (`ALL` drops every one), e.g. `["ALL"]` or `["NET_RAW"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Docker: capabilities to add; the worker must allow each (`--allow-cap-add`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Docker: a privileged container; the worker must allow it (`--allow-privileged`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// Docker: host directories or files mounted into the container; the worker must allow
    /// each source (`--allow-host-mounts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Docker: the network the container joins; `host` needs the worker's
    /// `--allow-host-network`.
    #[serde(default, skip_serializing_if = "NetworkMode::is_bridge")]
    pub network: NetworkMode,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A host path mounted into a container (a bind mount).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Absolute path on the host; it must exist (the engine does not create it).
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Mount it read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// The network a container joins.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema
)]
#[derive(strum::Display, strum::IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum NetworkMode {
    /// The engine's default bridge: a network namespace of its own (default).
    #[default]
    Bridge,
    /// The host's network namespace: every host interface and port.
    Host,
}

impl NetworkMode {
    /// Whether it is the default.
    pub fn is_bridge(&self) -> bool {
        *self == NetworkMode::Bridge
    }
}

/// A capability's name as the kernel spells it without its `CAP_` prefix (`NET_ADMIN`), so
/// `cap_net_admin` and `NET_ADMIN` compare equal.
pub fn capability_name(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    match upper.strip_prefix("CAP_") {
        Some(rest) => rest.to_owned(),
        None => upper,
    }
}

/// Whether `path` is absolute and has no `.` or `..` components, empty segments or trailing
/// slash (except `/` itself): the only form a prefix check on it can be trusted with.
pub fn is_clean_absolute_path(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    path.starts_with('/')
        && !path.ends_with('/')
        && !path.contains('\0')
        && path[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The execution driver of a task.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema
)]
#[derive(strum::Display, strum::EnumString, strum::IntoStaticStr)]
#[derive(strum::VariantArray, strum::VariantNames)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase", parse_err_ty = CoreError, parse_err_fn = unknown_driver)]
pub enum DriverKind {
    /// A Docker container.
    Docker,
    /// A plain host process in its own process group.
    Process,
}

fn unknown_driver(input: &str) -> CoreError {
    CoreError::unknown_name::<DriverKind>("driver", input)
}

/// Resources a task reserves on its node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU, in cores or millicores; 0 = no reservation and no limit.
    #[serde(default)]
    pub cpu: Millicores,
    /// Memory; 0 = no reservation and no limit.
    #[serde(default)]
    pub memory: Bytes,
    /// Disk the task expects to use (checked when placing, not enforced).
    #[serde(default)]
    pub disk: Bytes,
}

impl Resources {
    /// Component-wise sum, saturating.
    pub fn saturating_add(self, other: Resources) -> Resources {
        Resources {
            cpu: self.cpu.saturating_add(other.cpu),
            memory: self.memory.saturating_add(other.memory),
            disk: self.disk.saturating_add(other.disk),
        }
    }

    /// Component-wise difference, stopping at zero.
    pub fn saturating_sub(self, other: Resources) -> Resources {
        Resources {
            cpu: self.cpu.saturating_sub(other.cpu),
            memory: self.memory.saturating_sub(other.memory),
            disk: self.disk.saturating_sub(other.disk),
        }
    }
}

/// A port to publish from the task to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Port inside the container.
    pub container: u16,
    /// Port on the host; 0 (default) lets the engine pick a free one.
    #[serde(default)]
    pub host: u16,
    /// Transport protocol.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Transport protocol of a port, named as Docker writes it in `80/tcp`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema
)]
#[derive(strum::Display, strum::EnumString, strum::IntoStaticStr)]
#[derive(strum::VariantArray, strum::VariantNames)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase", parse_err_ty = CoreError, parse_err_fn = unknown_protocol)]
pub enum Protocol {
    /// TCP (default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

fn unknown_protocol(input: &str) -> CoreError {
    CoreError::unknown_name::<Protocol>("protocol", input)
}

/// When a task that exited is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// Which exits lead to a restart.
    #[serde(default)]
    pub mode: RestartMode,
    /// How many restarts on the same node before giving up (the manager may then place the
    /// task elsewhere).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first restart; doubled after each attempt.
    #[serde(default = "default_initial_backoff", with = "duration_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub initial_backoff: Duration,
    /// Upper bound of the delay between restarts.
    #[serde(default = "default_max_backoff", with = "duration_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub max_backoff: Duration,
    /// When the restarts on one node are used up, how many times the manager may place the
    /// task on another node (never for mode `never`).
    #[serde(default = "default_reschedule_attempts")]
    pub reschedule_attempts: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            mode: RestartMode::default(),
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            reschedule_attempts: default_reschedule_attempts(),
        }
    }
}

/// Which exits cause a restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[derive(strum::Display, strum::EnumString, strum::IntoStaticStr)]
#[derive(strum::VariantArray, strum::VariantNames)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case", parse_err_ty = CoreError, parse_err_fn = unknown_mode)]
pub enum RestartMode {
    /// Never restart (default; a batch task's exit is final).
    #[default]
    Never,
    /// Restart after a non-zero exit, a start error or a failed health check.
    OnFailure,
    /// Restart after any exit that was not requested.
    Always,
}

fn unknown_mode(input: &str) -> CoreError {
    CoreError::unknown_name::<RestartMode>("restart mode", input)
}

/// A health check run by the worker next to the task.
///
/// Flat rather than an enum so that unknown fields are still rejected; [`HealthCheck::probe`]
/// gives the typed view once the spec is valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// What to probe.
    #[serde(rename = "type")]
    pub kind: ProbeKind,
    /// `http`/`tcp`: container port (docker; mapped to its host port) or host port (process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `http`: request path, starting with `/` (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `exec`: program and arguments (inside the container for docker, on the host for process).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Time between probes.
    #[serde(default = "default_health_interval", with = "duration_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub interval: Duration,
    /// Time a single probe may take.
    #[serde(default = "default_health_timeout", with = "duration_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub timeout: Duration,
    /// Consecutive failed probes before the task counts as unhealthy.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Time after start during which failures are not counted.
    #[serde(default, with = "duration_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub grace_period: Duration,
}

/// The kind of probe of a health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// `GET http://<host>:<port><path>` must answer 2xx.
    Http,
    /// A TCP connection to the port must succeed.
    Tcp,
    /// A command must exit 0.
    Exec,
}

/// The typed form of a valid health check's probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe<'a> {
    /// HTTP GET of `path` on `port`.
    Http {
        /// Port to connect to (see [`HealthCheck::port`]).
        port: u16,
        /// Path to request.
        path: &'a str,
    },
    /// TCP connect to `port`.
    Tcp {
        /// Port to connect to (see [`HealthCheck::port`]).
        port: u16,
    },
    /// Run `command`.
    Exec {
        /// Program and arguments.
        command: &'a [String],
    },
}

impl HealthCheck {
    /// The probe, or `None` when a field it needs is missing (which validation reports).
    pub fn probe(&self) -> Option<Probe<'_>> {
        match self.kind {
            ProbeKind::Http => {
                Some(Probe::Http { port: self.port?, path: self.path.as_deref().unwrap_or("/") })
            }
            ProbeKind::Tcp => Some(Probe::Tcp { port: self.port? }),
            ProbeKind::Exec if self.command.is_empty() => None,
            ProbeKind::Exec => Some(Probe::Exec { command: &self.command }),
        }
    }
}

/// One problem found in a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `resources.memory` or `ports[1].container`.
    pub field: String,
    /// What is wrong, in lowercase words.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Longest accepted task name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// Smallest memory limit Docker accepts.
pub const DOCKER_MIN_MEMORY: Bytes = Bytes::mib(6);

impl TaskSpec {
    /// Checks everything that cannot be expressed in types and returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError { field: field.to_owned(), message });
        };

        if self.name.is_empty() {
            err("name", "must not be empty".into());
        } else if self.name.len() > MAX_NAME_LEN {
            err("name", format!("must be at most {MAX_NAME_LEN} characters"));
        } else if !valid_name(&self.name) {
            err(
                "name",
                "must start with a letter or digit and contain only letters, digits, '-', '_' or '.'"
                    .into(),
            );
        }

        match self.driver {
            DriverKind::Docker => match self.image.as_deref() {
                None => err("image", "is required by the docker driver".into()),
                Some(i) if i.trim().is_empty() => err("image", "must not be empty".into()),
                Some(i) if i.chars().any(char::is_whitespace) => {
                    err("image", "must not contain whitespace".into())
                }
                Some(_) => {}
            },
            DriverKind::Process => {
                if self.image.is_some() {
                    err("image", "is not used by the process driver; remove it".into());
                }
                if self.command.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    err("command", "is required by the process driver".into());
                }
                if !self.ports.is_empty() {
                    err(
                        "ports",
                        "are not supported by the process driver (a process binds host ports itself)"
                            .into(),
                    );
                }
            }
        }
        if self.command.as_deref().is_some_and(str::is_empty) {
            err("command", "must not be empty when given".into());
        }
        if let Some(w) = &self.workdir
            && !w.starts_with('/')
        {
            err("workdir", "must be an absolute path".into());
        }

        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                err(&format!("env.{key}"), "names must be non-empty and contain no '='".into());
            }
        }

        if self.driver == DriverKind::Docker
            && self.resources.memory.get() > 0
            && self.resources.memory < DOCKER_MIN_MEMORY
        {
            err(
                "resources.memory",
                format!("docker needs at least {DOCKER_MIN_MEMORY} when a limit is set"),
            );
        }

        let mut seen_container = BTreeSet::new();
        let mut seen_host = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.container == 0 {
                err(&format!("ports[{i}].container"), "must be between 1 and 65535".into());
            }
            if !seen_container.insert((p.container, p.protocol)) {
                err(
                    &format!("ports[{i}].container"),
                    format!("{}/{} is listed twice", p.container, p.protocol),
                );
            }
            if p.host != 0 && !seen_host.insert((p.host, p.protocol)) {
                err(
                    &format!("ports[{i}].host"),
                    format!("{}/{} is listed twice", p.host, p.protocol),
                );
            }
        }

        let r = &self.restart;
        if r.initial_backoff.is_zero() {
            err("restart.initial_backoff", "must be greater than 0".into());
        }
        if r.max_backoff < r.initial_backoff {
            err("restart.max_backoff", "must not be less than restart.initial_backoff".into());
        }

        if let Some(h) = &self.health {
            if h.interval.is_zero() {
                err("health.interval", "must be greater than 0".into());
            }
            if h.timeout.is_zero() {
                err("health.timeout", "must be greater than 0".into());
            }
            if h.failure_threshold == 0 {
                err("health.failure_threshold", "must be at least 1".into());
            }
            match h.kind {
                ProbeKind::Http | ProbeKind::Tcp => {
                    if h.kind == ProbeKind::Http
                        && h.path.as_deref().is_some_and(|p| !p.starts_with('/'))
                    {
                        err("health.path", "must start with '/'".into());
                    }
                    if !h.command.is_empty() {
                        err("health.command", "is only used by exec checks".into());
                    }
                    match h.port {
                        None => err("health.port", "is required by http and tcp checks".into()),
                        Some(port) => self.check_probe_port(port, &mut err),
                    }
                }
                ProbeKind::Exec => {
                    if h.command.first().is_none_or(|c| c.is_empty()) {
                        err("health.command", "must name a program".into());
                    }
                    if h.port.is_some() || h.path.is_some() {
                        err("health", "exec checks take no port or path".into());
                    }
                }
            }
        }

        if self.stop_grace > MAX_STOP_GRACE {
            err("stop_grace", "must be at most 1h".into());
        }

        if let OnDisconnect::StopAfter(d) = self.on_disconnect
            && d.is_zero()
        {
            err("on_disconnect.stop_after", "must be greater than 0".into());
        }
        self.validate_security(&mut err);
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// The user, capability, mount and network fields.
    fn validate_security(&self, err: &mut impl FnMut(&str, String)) {
        if let Some(user) = &self.user {
            if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
                err("user", "must be a non-empty name or id without whitespace".into());
            } else if self.driver == DriverKind::Process && user.contains(':') {
                err("user", "names one host user or uid (its primary group is used)".into());
            }
        }
        if self.driver == DriverKind::Process {
            let docker_only = [
                ("read_only_rootfs", self.read_only_rootfs),
                ("cap_drop", !self.cap_drop.is_empty()),
                ("cap_add", !self.cap_add.is_empty()),
                ("privileged", self.privileged),
                ("mounts", !self.mounts.is_empty()),
                ("network", !self.network.is_bridge()),
            ];
            for (field, set) in docker_only {
                if set {
                    err(field, "is only used by the docker driver; remove it".into());
                }
            }
        }
        for (field, list) in [("cap_drop", &self.cap_drop), ("cap_add", &self.cap_add)] {
            let mut seen = BTreeSet::new();
            for (i, cap) in list.iter().enumerate() {
                let name = capability_name(cap);
                let path = format!("{field}[{i}]");
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                {
                    err(&path, format!("{cap:?} is not a capability name (e.g. NET_ADMIN)"));
                } else if name == "ALL" && field == "cap_add" {
                    err(&path, "ALL cannot be added; name each capability".into());
                } else if !seen.insert(name) {
                    err(&path, format!("{cap} is listed twice"));
                }
            }
        }
        let mut targets = BTreeSet::new();
        for (i, m) in self.mounts.iter().enumerate() {
            if !is_clean_absolute_path(&m.source) {
                err(
                    &format!("mounts[{i}].source"),
                    "must be an absolute path without '.', '..' or a trailing '/'".into(),
                );
            }
            if !is_clean_absolute_path(&m.target) || m.target == "/" {
                err(
                    &format!("mounts[{i}].target"),
                    "must be an absolute path other than '/' without '.', '..' or a trailing '/'"
                        .into(),
                );
            } else if !targets.insert(m.target.as_str()) {
                err(&format!("mounts[{i}].target"), format!("{} is mounted twice", m.target));
            }
        }
        if self.network == NetworkMode::Host && !self.ports.is_empty() {
            err(
                "ports",
                "are not published on the host network (the task binds host ports itself)".into(),
            );
        }
    }

    fn check_probe_port(&self, port: u16, err: &mut impl FnMut(&str, String)) {
        if port == 0 {
            err("health.port", "must be between 1 and 65535".into());
        } else if self.driver == DriverKind::Docker
            && !self.ports.iter().any(|p| p.container == port && p.protocol == Protocol::Tcp)
        {
            err(
                "health.port",
                format!(
                    "container port {port}/tcp must be listed in ports so the worker can reach it"
                ),
            );
        }
    }

    /// The full command line: `command` followed by `args`.
    pub fn argv(&self) -> Vec<String> {
        self.command.iter().chain(self.args.iter()).cloned().collect()
    }
}

const MAX_STOP_GRACE: Duration = Duration::from_secs(3600);

/// Whether `name` is a valid task or service name: 1 to [`MAX_NAME_LEN`] characters, letters,
/// digits, `-`, `_` or `.`, starting with a letter or digit.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && valid_name(name)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_max_attempts() -> u32 {
    3
}
fn default_reschedule_attempts() -> u32 {
    1
}
fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(60)
}
fn default_health_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_failure_threshold() -> u32 {
    3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_spec() -> TaskSpec {
        serde_json::from_str(
            r#"{"name": "web", "driver": "docker", "image": "cube-test/busybox:latest",
                "command": "httpd", "args": ["-f", "-p", "80"],
                "resources": {"cpu": 0.5, "memory": "64MiB"},
                "ports": [{"container": 80}],
                "health": {"type": "http", "port": 80, "path": "/"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_good_spec_validates_and_fills_defaults() {
        let spec = docker_spec();
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.stop_grace, Duration::from_secs(10));
        assert_eq!(spec.restart.mode, RestartMode::Never);
        assert_eq!(spec.resources.cpu, Millicores(500));
        assert_eq!(spec.ports[0].protocol, Protocol::Tcp);
        assert_eq!(spec.argv(), ["httpd", "-f", "-p", "80"]);
    }

    #[test]
    fn json_shape_is_stable() {
        let json = serde_json::to_value(docker_spec()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "web", "driver": "docker", "image": "cube-test/busybox:latest",
                "command": "httpd", "args": ["-f", "-p", "80"],
                "resources": {"cpu": 0.5, "memory": "64MiB", "disk": "0B"},
                "ports": [{"container": 80, "host": 0, "protocol": "tcp"}],
                "restart": {"mode": "never", "max_attempts": 3, "initial_backoff": "1s", "max_backoff": "1m",
                            "reschedule_attempts": 1},
                "health": {"type": "http", "port": 80, "path": "/", "interval": "10s",
                           "timeout": "2s", "failure_threshold": 3, "grace_period": "0s"},
                "stop_grace": "10s"
            })
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<TaskSpec>(
            r#"{"name": "x", "driver": "docker", "image": "i", "imgae": "typo"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `imgae`"), "{err}");
    }

    #[test]
    fn validation_lists_every_problem_with_its_field() {
        let spec = TaskSpec {
            name: "-bad name".into(),
            driver: DriverKind::Docker,
            image: Some(String::new()),
            command: Some(String::new()),
            args: vec![],
            env: BTreeMap::from([("A=B".into(), "x".into())]),
            workdir: Some("relative".into()),
            resources: Resources { cpu: Millicores(0), memory: Bytes(1024), disk: Bytes(0) },
            ports: vec![
                PortSpec { container: 0, host: 8080, protocol: Protocol::Tcp },
                PortSpec { container: 80, host: 8080, protocol: Protocol::Tcp },
            ],
            restart: RestartPolicy {
                initial_backoff: Duration::from_secs(5),
                max_backoff: Duration::from_secs(1),
                ..RestartPolicy::default()
            },
            health: Some(Box::new(HealthCheck {
                kind: ProbeKind::Http,
                port: Some(9999),
                path: Some("health".into()),
                command: vec![],
                interval: Duration::ZERO,
                timeout: Duration::from_secs(1),
                failure_threshold: 0,
                grace_period: Duration::ZERO,
            })),
            constraints: vec![],
            stop_grace: Duration::from_secs(7200),
            on_disconnect: Default::default(),
            user: None,
            read_only_rootfs: false,
            cap_drop: vec![],
            cap_add: vec![],
            privileged: false,
            mounts: vec![],
            network: Default::default(),
        };
        let fields: Vec<String> =
            spec.validate().unwrap_err().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "name",
                "image",
                "command",
                "workdir",
                "env.A=B",
                "resources.memory",
                "ports[0].container",
                "ports[1].host",
                "restart.max_backoff",
                "health.interval",
                "health.failure_threshold",
                "health.path",
                "health.port",
                "stop_grace",
            ]
        );
    }

    #[test]
    fn constraints_are_parsed_with_the_spec() {
        let spec: TaskSpec = serde_json::from_str(
            r#"{"name": "c", "driver": "process", "command": "x",
                "constraints": ["node.labels.zone == a"]}"#,
        )
        .unwrap();
        assert_eq!(spec.constraints[0].value, "a");
        // A malformed one is found where it stands (the API lists it with the other problems).
        let err = serde_json::from_str::<TaskSpec>(
            r#"{"name": "c", "driver": "process", "command": "x", "constraints": ["zone = a"]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("expected `<attribute> == <value>`"), "{err}");
    }

    #[test]
    fn process_specs_need_a_command_and_no_image() {
        let spec: TaskSpec = serde_json::from_str(
            r#"{"name": "p", "driver": "process", "image": "x", "ports": [{"container": 80}]}"#,
        )
        .unwrap();
        let fields: Vec<String> =
            spec.validate().unwrap_err().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["image", "command", "ports"]);
    }

    #[test]
    fn security_fields_are_validated_with_their_paths() {
        let spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "name": "c", "driver": "docker", "image": "i", "user": "a b",
            "cap_drop": ["ALL", "all"], "cap_add": ["ALL", "net-admin", "CAP_NET_RAW"],
            "mounts": [{"source": "relative", "target": "/x"},
                       {"source": "/a/../etc", "target": "/"},
                       {"source": "/ok", "target": "/x"}],
            "network": "host", "ports": [{"container": 80}]
        }))
        .unwrap();
        let fields: Vec<String> =
            spec.validate().unwrap_err().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "user",
                "cap_drop[1]",
                "cap_add[0]",
                "cap_add[1]",
                "mounts[0].source",
                "mounts[1].source",
                "mounts[1].target",
                "mounts[2].target",
                "ports",
            ]
        );
        let process: TaskSpec = serde_json::from_value(serde_json::json!({
            "name": "p", "driver": "process", "command": "x", "user": "a:b",
            "read_only_rootfs": true, "cap_drop": ["ALL"], "privileged": true,
            "mounts": [{"source": "/a", "target": "/b"}], "network": "host"
        }))
        .unwrap();
        let fields: Vec<String> =
            process.validate().unwrap_err().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["user", "read_only_rootfs", "cap_drop", "privileged", "mounts", "network"]
        );
    }

    #[test]
    fn security_fields_round_trip_and_are_absent_when_unset() {
        let json = serde_json::json!({
            "name": "c", "driver": "docker", "image": "i", "user": "1000:1000",
            "read_only_rootfs": true, "cap_drop": ["ALL"], "cap_add": ["NET_BIND_SERVICE"],
            "privileged": true, "mounts": [{"source": "/srv", "target": "/srv", "read_only": true}],
            "network": "host"
        });
        let spec: TaskSpec = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(spec.validate(), Ok(()));
        let back = serde_json::to_value(&spec).unwrap();
        for key in ["user", "read_only_rootfs", "cap_drop", "cap_add", "privileged", "mounts"] {
            assert_eq!(back[key], json[key], "{key}");
        }
        assert_eq!(back["network"], "host");
        let plain = serde_json::to_value(docker_spec()).unwrap();
        for key in ["user", "read_only_rootfs", "cap_drop", "cap_add", "privileged", "mounts"] {
            assert!(plain.get(key).is_none(), "{key} is written only when set");
        }
        assert!(plain.get("network").is_none());
        assert!(is_clean_absolute_path("/"));
        assert!(!is_clean_absolute_path("/a//b"));
        assert!(!is_clean_absolute_path("/a/./b"));
        assert_eq!(capability_name(" cap_sys_admin"), "SYS_ADMIN");
    }

    #[test]
    fn unknown_driver_is_a_parse_error_naming_the_variants() {
        let err = serde_json::from_str::<TaskSpec>(r#"{"name": "x", "driver": "podman"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `podman`"), "{err}");
        assert!(err.contains("docker") && err.contains("process"), "{err}");
    }
}
