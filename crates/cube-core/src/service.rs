//! Services: a task template kept running at `count` copies, and how changes to it roll out.
//!
//! A [`ServiceSpec`] is what a user declares (a service file, `PUT /v1/services/{name}`); its
//! instances are tasks carrying the service's name, version and slot. This module holds the
//! declaration and its validation only; versions, deployments and the rollout are built on it.
//! Like [`TaskSpec`], its serde shape is a compatibility promise and unknown fields are refused.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::DeploymentId;
use crate::deployment::DeploymentStatus;
use crate::spec::{FieldError, TaskSpec};
use crate::units::duration_serde;

/// A replicated workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique name (a DNS label, like a task name).
    pub name: String,
    /// How many instances to keep running.
    pub count: u32,
    /// What each instance runs.
    pub task: TaskSpec,
    /// How a change of `task` or `update` rolls out.
    #[serde(default)]
    pub update: UpdateStrategy,
    /// Never two instances on one node (a hard rule; by default instances are only spread).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub distinct_nodes: bool,
    /// What an instance does when its worker cannot reach the manager.
    #[serde(default, skip_serializing_if = "OnDisconnect::is_keep")]
    pub on_disconnect: OnDisconnect,
    /// Ports published on every node's ingress, which forwards them to healthy instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// How long a leaving instance's connections may take to finish, once every ingress has
    /// stopped sending it new ones, before it is stopped anyway [10s].
    #[serde(
        default = "default_drain_timeout",
        with = "duration_serde",
        skip_serializing_if = "is_default_drain_timeout"
    )]
    #[schemars(with = "crate::schema::DurationText")]
    pub drain_timeout: Duration,
}

/// A service port published on the ingress of every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// The instances' port: a `ports[].container` of the task template (TCP).
    pub target: u16,
    /// The port every node's ingress listens on.
    pub publish: u16,
    /// How the ingress forwards connections [tcp].
    #[serde(default)]
    pub mode: IngressMode,
}

/// How an ingress forwards a published port.
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
#[serde(rename_all = "snake_case")]
pub enum IngressMode {
    /// Layer 4: each connection goes to one instance, whatever the protocol.
    #[default]
    Tcp,
    /// Layer 7 (HTTP/1.1): each request goes to an instance over kept-alive connections,
    /// with `X-Forwarded-For` and `Forwarded` naming the client.
    Http,
}

/// The drain timeout when a service names none.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn default_drain_timeout() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}

fn is_default_drain_timeout(d: &Duration) -> bool {
    *d == DEFAULT_DRAIN_TIMEOUT
}

/// How a deployment replaces old instances with new ones. The defaults keep full capacity
/// throughout (start a new instance, wait until it is healthy, then stop an old one) and revert
/// a failed rollout on their own; see `docs/services.md` for the reasons behind each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateStrategy {
    /// Instances allowed above `count` during a rollout [1]. Integer, or a percentage of
    /// `count` rounded up.
    #[serde(default = "default_surge")]
    pub max_surge: Amount,
    /// Instances allowed below `count` during a rollout [0]. Integer, or a percentage of
    /// `count` rounded down.
    #[serde(default)]
    pub max_unavailable: Amount,
    /// How long a new instance must be running with every check passing to count as healthy
    /// [10s].
    #[serde(default = "default_min_healthy_time", with = "duration_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub min_healthy_time: Duration,
    /// A new instance not healthy this long after it was placed has failed [5m].
    #[serde(default = "default_healthy_deadline", with = "duration_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub healthy_deadline: Duration,
    /// A rollout in which no instance turned healthy for this long has failed [10m]; the clock
    /// restarts each time one does.
    #[serde(default = "default_progress_deadline", with = "duration_serde")]
    #[schemars(with = "crate::schema::DurationText")]
    pub progress_deadline: Duration,
    /// New instances started beside the old ones before the rollout proceeds [0]; `count`
    /// canaries is blue/green.
    #[serde(default)]
    pub canary: u32,
    /// Promote once every canary is healthy, without waiting for a user [false].
    #[serde(default)]
    pub auto_promote: bool,
    /// A failed rollout reverts to the last version that rolled out successfully [true].
    #[serde(default = "default_true")]
    pub auto_revert: bool,
    /// What to do when a surge instance cannot be placed [`stop_first`].
    #[serde(default)]
    pub on_no_room: OnNoRoom,
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        Self {
            max_surge: default_surge(),
            max_unavailable: Amount::default(),
            min_healthy_time: default_min_healthy_time(),
            healthy_deadline: default_healthy_deadline(),
            progress_deadline: default_progress_deadline(),
            canary: 0,
            auto_promote: false,
            auto_revert: true,
            on_no_room: OnNoRoom::default(),
        }
    }
}

fn default_surge() -> Amount {
    Amount::Count(1)
}
fn default_min_healthy_time() -> Duration {
    Duration::from_secs(10)
}
fn default_healthy_deadline() -> Duration {
    Duration::from_secs(300)
}
fn default_progress_deadline() -> Duration {
    Duration::from_secs(600)
}
fn default_true() -> bool {
    true
}

/// What a rollout does when a surge instance finds no room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnNoRoom {
    /// Replace one instance at a time, stopping the old one first, and say so.
    #[default]
    StopFirst,
    /// Wait for room (reported as `no_capacity`) until the progress deadline.
    Wait,
}

/// What an instance does when its worker loses the manager.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OnDisconnect {
    /// Keep running (the manager places a replacement once the node is down).
    #[default]
    Keep,
    /// Stop after this long without the manager, so a singleton never runs twice for longer.
    StopAfter(
        #[serde(with = "duration_serde")]
        #[schemars(with = "crate::schema::DurationText")]
        Duration,
    ),
}

impl OnDisconnect {
    /// Whether it is the default, `keep`.
    pub fn is_keep(&self) -> bool {
        *self == OnDisconnect::Keep
    }
}

/// A number of instances, absolute or relative to `count`. Written as an integer or as a
/// string ending in `%` (`"25%"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    /// So many instances.
    Count(u32),
    /// This percentage of `count` (0 to 100).
    Percent(u8),
}

impl Default for Amount {
    fn default() -> Self {
        Amount::Count(0)
    }
}

impl Amount {
    /// Instances for a service of `count`, a percentage rounded up (surge: at least one
    /// extra instance for any non-zero percentage).
    pub fn rounded_up(self, count: u32) -> u32 {
        match self {
            Amount::Count(n) => n,
            // At most `count` (p ≤ 100), so it fits back in a u32.
            Amount::Percent(p) => (u64::from(count) * u64::from(p)).div_ceil(100) as u32,
        }
    }

    /// Instances for a service of `count`, a percentage rounded down (unavailability: never
    /// more below `count` than asked).
    pub fn rounded_down(self, count: u32) -> u32 {
        match self {
            Amount::Count(n) => n,
            // At most `count` (p ≤ 100), so it fits back in a u32.
            Amount::Percent(p) => (u64::from(count) * u64::from(p) / 100) as u32,
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Amount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        match t.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= 100 => Ok(Amount::Percent(p)),
                _ => Err(format!("{s:?} is not a percentage from 0% to 100%")),
            },
            None => t
                .parse::<u32>()
                .map(Amount::Count)
                .map_err(|_| format!("{s:?} is not a number of instances or a percentage")),
        }
    }
}

/// Written as a number of instances (`1`) or a percentage of them (`"25%"`).
impl schemars::JsonSchema for Amount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Amount".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number of instances, or a percentage of them such as \"25%\".",
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^\\s*(100|[1-9]?[0-9])\\s*%\\s*$"},
            ],
        })
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(n) => serializer.serialize_u32(*n),
            Amount::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of instances or a percentage such as \"25%\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Amount, E> {
                u32::try_from(v).map(Amount::Count).map_err(|_| E::custom("too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Amount, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("must not be negative (got {v})")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Amount, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl ServiceSpec {
    /// Checks everything types cannot say, the template included (its problems are reported
    /// under `task.`), and returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError { field: field.to_owned(), message });
        };
        if !crate::spec::is_valid_name(&self.name) {
            err(
                "name",
                format!(
                    "must be 1 to {} letters, digits, '-', '_' or '.', starting with a letter \
                     or digit",
                    crate::spec::MAX_NAME_LEN
                ),
            );
        }
        let u = &self.update;
        if u.max_surge.rounded_up(self.count) == 0
            && u.max_unavailable.rounded_down(self.count) == 0
        {
            err(
                "update",
                "max_surge and max_unavailable are both 0: a rollout could never replace an \
                 instance"
                    .into(),
            );
        }
        if u.healthy_deadline.is_zero() {
            err("update.healthy_deadline", "must be greater than 0".into());
        }
        if u.progress_deadline <= u.healthy_deadline {
            err(
                "update.progress_deadline",
                "must be longer than update.healthy_deadline (one instance's chance to turn \
                 healthy must fit in it)"
                    .into(),
            );
        }
        if u.min_healthy_time >= u.healthy_deadline {
            err("update.min_healthy_time", "must be shorter than update.healthy_deadline".into());
        }
        if u.canary > self.count {
            err("update.canary", format!("must be at most count ({})", self.count));
        }
        if let OnDisconnect::StopAfter(d) = self.on_disconnect
            && d.is_zero()
        {
            err("on_disconnect.stop_after", "must be greater than 0".into());
        }
        let mut published = std::collections::BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.publish == 0 {
                err(&format!("ports[{i}].publish"), "must be between 1 and 65535".into());
            } else if !published.insert(p.publish) {
                err(&format!("ports[{i}].publish"), format!("{} is published twice", p.publish));
            }
            let served = self
                .task
                .ports
                .iter()
                .any(|t| t.container == p.target && t.protocol == crate::spec::Protocol::Tcp);
            if !served {
                err(
                    &format!("ports[{i}].target"),
                    format!(
                        "{} is not a TCP port of the task (add {{\"container\": {}}} to \
                         task.ports)",
                        p.target, p.target
                    ),
                );
            }
        }
        if let Err(problems) = self.task.validate() {
            errors.extend(
                problems
                    .into_iter()
                    .map(|p| FieldError { field: format!("task.{}", p.field), message: p.message }),
            );
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// Whether `other` differs from this spec only in `count`: such a change resizes in place,
    /// with no new version and no restart of healthy instances.
    pub fn differs_only_in_count(&self, other: &ServiceSpec) -> bool {
        ServiceSpec { count: other.count, ..self.clone() } == *other
    }
}

/// Versions a service's history keeps, with their deployment outcome.
pub const KEPT_VERSIONS: usize = 10;

/// A service as the manager stores it: the current spec, its version and its history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Service {
    /// The current spec (its `count` is the current count).
    pub spec: ServiceSpec,
    /// The current version.
    pub version: u64,
    /// The cluster-wide index (the event index) of the last change to its spec: creation,
    /// update, scale or revert, not the progress of its deployments (`check_index` compares
    /// against it). Stamped by the commit of the change ([`Service::stamp`]).
    pub modify_index: u64,
    /// When it was created.
    #[schemars(with = "crate::schema::Rfc3339")]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schemars(with = "crate::schema::Rfc3339")]
    pub updated_at: Timestamp,
    /// The deployment of the current version, if it needed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentId>,
    /// The last [`KEPT_VERSIONS`] versions, oldest first, the current one last.
    pub versions: Vec<Version>,
}

/// One version of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Version {
    /// Its number.
    pub version: u64,
    /// The spec as it was when the version was made.
    pub spec: ServiceSpec,
    /// When.
    #[schemars(with = "crate::schema::Rfc3339")]
    pub created_at: Timestamp,
    /// Its deployment (none when only the strategy changed: nothing was replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentId>,
    /// How its deployment ended (`None` while it runs, or without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<DeploymentStatus>,
    /// A revert: the version whose spec it restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverts: Option<u64>,
}

/// What an update did to a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing: the spec is the current one.
    None,
    /// Only `count`: resized in place, same version, no deployment.
    Resized,
    /// A new version. `rollout`: its template differs, so instances are replaced by a
    /// deployment; otherwise (only the strategy or the rules changed) they are relabelled.
    Version {
        /// Instances must be replaced.
        rollout: bool,
    },
}

impl Service {
    /// A new service at version 1 (its `modify_index` is stamped when it is committed).
    pub fn new(spec: ServiceSpec, now: Timestamp) -> Self {
        let version = Version::new(1, spec.clone(), now, None);
        Self {
            spec,
            version: 1,
            modify_index: 0,
            created_at: now,
            updated_at: now,
            deployment: None,
            versions: vec![version],
        }
    }

    /// Records the index of the commit that changed the spec.
    pub fn stamp(&mut self, index: u64) {
        self.modify_index = index;
    }

    /// The task template of `version`, if the history still has it.
    pub fn template(&self, version: u64) -> Option<&TaskSpec> {
        self.versions.iter().find(|v| v.version == version).map(|v| &v.spec.task)
    }

    /// The current version's history entry.
    pub fn current(&self) -> Option<&Version> {
        self.versions.iter().find(|v| v.version == self.version)
    }

    /// The current version's history entry, to record its deployment and outcome.
    pub fn current_mut(&mut self) -> Option<&mut Version> {
        let version = self.version;
        self.versions.iter_mut().find(|v| v.version == version)
    }

    /// Takes a new spec: resizes in place, or makes a new version (`reverts`: the earlier
    /// version whose spec it restores). Unless it changed nothing, its commit stamps the
    /// change's index.
    pub fn update(&mut self, spec: ServiceSpec, now: Timestamp, reverts: Option<u64>) -> Change {
        if spec == self.spec {
            return Change::None;
        }
        self.updated_at = now;
        if self.spec.differs_only_in_count(&spec) {
            self.spec = spec;
            return Change::Resized;
        }
        let rollout = spec.task != self.spec.task;
        self.version += 1;
        self.deployment = None;
        self.versions.push(Version::new(self.version, spec.clone(), now, reverts));
        if self.versions.len() > KEPT_VERSIONS {
            self.versions.remove(0);
        }
        self.spec = spec;
        Change::Version { rollout }
    }

    /// The newest earlier version whose deployment succeeded: what a revert restores.
    pub fn last_good(&self) -> Option<&Version> {
        self.versions
            .iter()
            .rev()
            .filter(|v| v.version != self.version)
            .find(|v| v.outcome == Some(DeploymentStatus::Successful))
    }
}

impl Version {
    fn new(version: u64, spec: ServiceSpec, created_at: Timestamp, reverts: Option<u64>) -> Self {
        Self { version, spec, created_at, deployment: None, outcome: None, reverts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: serde_json::Value) -> ServiceSpec {
        serde_json::from_value(json).unwrap()
    }

    fn web() -> serde_json::Value {
        serde_json::json!({"name": "web", "count": 3,
            "task": {"name": "web", "driver": "process", "command": "x"}})
    }

    #[test]
    fn defaults_keep_capacity_and_revert() {
        let s = service(web());
        assert_eq!(s.validate(), Ok(()));
        let u = &s.update;
        assert_eq!((u.max_surge, u.max_unavailable), (Amount::Count(1), Amount::Count(0)));
        assert_eq!(u.min_healthy_time, Duration::from_secs(10));
        assert_eq!(u.healthy_deadline, Duration::from_secs(300));
        assert_eq!(u.progress_deadline, Duration::from_secs(600));
        assert!(u.auto_revert && !u.auto_promote);
        assert_eq!((u.canary, u.on_no_room), (0, OnNoRoom::StopFirst));
        assert_eq!(s.on_disconnect, OnDisconnect::Keep);
        assert!(!s.distinct_nodes);
    }

    #[test]
    fn the_json_shape_is_stable() {
        let mut json = web();
        json["update"] = serde_json::json!({"max_surge": "25%", "on_no_room": "wait"});
        json["on_disconnect"] = serde_json::json!({"stop_after": "30s"});
        let s = service(json);
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(
            back["update"],
            serde_json::json!({"max_surge": "25%", "max_unavailable": 0,
                "min_healthy_time": "10s", "healthy_deadline": "5m", "progress_deadline": "10m",
                "canary": 0, "auto_promote": false, "auto_revert": true, "on_no_room": "wait"})
        );
        assert_eq!(back["on_disconnect"], serde_json::json!({"stop_after": "30s"}));
        assert_eq!(serde_json::from_value::<ServiceSpec>(back).unwrap(), s);
    }

    #[test]
    fn percentages_round_up_for_surge_and_down_for_unavailability() {
        let p = Amount::Percent(25);
        assert_eq!((p.rounded_up(3), p.rounded_down(3)), (1, 0));
        assert_eq!((p.rounded_up(8), p.rounded_down(8)), (2, 2));
        assert_eq!(Amount::Count(2).rounded_up(10), 2);
        assert!("101%".parse::<Amount>().is_err());
        assert!("-1".parse::<Amount>().is_err());
        assert_eq!("50 %".parse::<Amount>(), Ok(Amount::Percent(50)));
    }

    #[test]
    fn validation_lists_every_problem() {
        let mut json = web();
        json["name"] = serde_json::json!("-bad");
        json["update"] = serde_json::json!({"max_surge": 0, "max_unavailable": "10%",
            "healthy_deadline": "1m", "progress_deadline": "1m", "min_healthy_time": "2m",
            "canary": 4});
        json["task"]["command"] = serde_json::json!("");
        let fields: Vec<String> =
            service(json).validate().unwrap_err().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "name",
                "update",
                "update.progress_deadline",
                "update.min_healthy_time",
                "update.canary",
                // The template's own problems, as TaskSpec::validate reports them.
                "task.command",
                "task.command",
            ]
        );
    }

    #[test]
    fn unknown_fields_and_negative_counts_are_refused() {
        let mut json = web();
        json["cuont"] = serde_json::json!(3);
        assert!(serde_json::from_value::<ServiceSpec>(json).is_err());
        let mut json = web();
        json["count"] = serde_json::json!(-1);
        assert!(serde_json::from_value::<ServiceSpec>(json).is_err());
    }

    #[test]
    fn published_ports_name_a_task_port_once_each() {
        let mut json = web();
        json["task"] = serde_json::json!({"name": "web", "driver": "docker", "image": "httpd",
                                          "ports": [{"container": 80}]});
        json["ports"] = serde_json::json!([{"target": 80, "publish": 8080, "mode": "http"}]);
        let s = service(json.clone());
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.ports[0].mode, IngressMode::Http);
        assert_eq!(s.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        let encoded = serde_json::to_value(&s).unwrap();
        assert_eq!(encoded["ports"], json["ports"]);
        assert!(encoded.get("drain_timeout").is_none(), "the default is left out");

        json["ports"] = serde_json::json!([{"target": 81, "publish": 8080},
                                           {"target": 80, "publish": 8080},
                                           {"target": 80, "publish": 0}]);
        let fields: Vec<String> =
            service(json).validate().unwrap_err().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["ports[0].target", "ports[1].publish", "ports[2].publish"]);
    }

    #[test]
    fn a_count_change_alone_is_in_place() {
        let a = service(web());
        let b = ServiceSpec { count: 5, ..a.clone() };
        assert!(a.differs_only_in_count(&b));
        let mut c = b.clone();
        c.task.args = vec!["v2".into()];
        assert!(!a.differs_only_in_count(&c));
    }
}
