//! The manager as the client commands see it: [`cube_http::client::Client`] with one-line error
//! messages that name the manager's address, and id resolution (unique prefixes, node names).

use std::time::Duration;

use cube_api::types::{NodeInfo, TaskFilter, TaskView};
use cube_core::{Chain, TaskId, TaskSpec};
use cube_http::client::{Client, ClientError, LogStream, Unreachable};

/// Timeout of one request (not of a followed log stream).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Candidates named in an "ambiguous prefix" error.
const MAX_CANDIDATES: usize = 5;

/// A manager's API.
pub(super) struct Api {
    client: Client,
}

impl Api {
    /// A client for the manager at `addr` (`http://` is assumed when no scheme is given), or
    /// for any of several, comma-separated.
    pub(super) fn new(
        addr: &str,
        token: Option<cube_http::auth::Token>,
        tls_ca: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let addr = addr.trim();
        if addr.is_empty() {
            anyhow::bail!("the manager address is empty: pass --addr URL or set CUBE_ADDR");
        }
        // Several managers (highly available ones) separated by commas; each without a
        // scheme is http://.
        let base = addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| if a.contains("://") { a.to_owned() } else { format!("http://{a}") })
            .collect::<Vec<_>>()
            .join(",");
        let tls_ca = tls_ca.map(cube_http::tls::ClientTls::from_ca_file).transpose()?;
        let client = cube_http::Security { token, tls: None, tls_ca, ..Default::default() }
            .client(base, REQUEST_TIMEOUT)
            .map_err(|e| describe(&e, addr))?;
        Ok(Self { client })
    }

    /// The manager's base URL.
    pub(super) fn base(&self) -> &str {
        self.client.base()
    }

    /// Turns a client error into one clean line.
    pub(super) fn error(&self, e: &ClientError) -> anyhow::Error {
        describe(e, self.base())
    }

    /// `GET /v1/tasks` with optional filters.
    pub(super) async fn tasks(&self, filter: &TaskFilter) -> anyhow::Result<Vec<TaskView>> {
        self.client.tasks_filtered(filter).await.map_err(|e| self.error(&e))
    }

    /// `GET /v1/tasks/{id}`, keeping the client error (callers that poll retry transient ones).
    pub(super) async fn task_raw(&self, id: TaskId) -> Result<TaskView, ClientError> {
        self.client.task(id).await
    }

    /// `GET /v1/tasks/{id}`.
    pub(super) async fn task(&self, id: TaskId) -> anyhow::Result<TaskView> {
        self.task_raw(id).await.map_err(|e| self.error(&e))
    }

    /// `POST /v1/tasks`: the task, and the index its events follow.
    pub(super) async fn submit(&self, spec: &TaskSpec) -> anyhow::Result<(TaskView, u64)> {
        let s = self.client.submit(None, spec).await.map_err(|e| self.error(&e))?;
        Ok((s.task, s.index.unwrap_or(0)))
    }

    /// `DELETE /v1/tasks/{id}`: the task, and the index its events follow.
    pub(super) async fn stop(&self, id: TaskId) -> anyhow::Result<(TaskView, u64)> {
        let (task, index) = self.client.stop_at(id).await.map_err(|e| self.error(&e))?;
        Ok((task, index.unwrap_or(0)))
    }

    /// The typed client, for calls whose errors the caller turns into lines with
    /// [`Api::error`].
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// `GET /v1/nodes`.
    pub(super) async fn nodes(&self) -> anyhow::Result<Vec<NodeInfo>> {
        self.client.nodes().await.map_err(|e| self.error(&e))
    }

    /// `GET /v1/tasks/{id}/logs`.
    pub(super) async fn logs(
        &self,
        id: TaskId,
        follow: bool,
        tail: Option<usize>,
    ) -> anyhow::Result<LogStream> {
        self.client.logs(id, follow, tail).await.map_err(|e| self.error(&e))
    }

    /// The task `given` names: a full id as is, otherwise the one task whose id (or short id)
    /// starts with it.
    pub(super) async fn resolve_task(&self, given: &str) -> anyhow::Result<TaskId> {
        let given = given.trim();
        if let Ok(id) = given.parse::<TaskId>() {
            return Ok(id);
        }
        if given.is_empty() {
            anyhow::bail!("a task id must not be empty");
        }
        let tasks = self.tasks(&TaskFilter::default()).await?;
        let matches = matching_tasks(&tasks, given);
        match matches.as_slice() {
            [one] => Ok(one.id),
            [] => anyhow::bail!("no task matches {given}"),
            many => anyhow::bail!(
                "task id prefix {given} is ambiguous: it matches {}",
                candidates(many.iter().map(|t| format!("{} ({})", t.id, t.name)))
            ),
        }
    }

    /// The node `given` names: its name, its id, or a unique prefix of its id.
    pub(super) async fn resolve_node(&self, given: &str) -> anyhow::Result<NodeInfo> {
        let given = given.trim();
        let nodes = self.nodes().await?;
        let matches = matching_nodes(&nodes, given);
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => {
                let known: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                if known.is_empty() {
                    anyhow::bail!("no node matches {given}: no nodes have registered")
                }
                anyhow::bail!("no node matches {given} (nodes: {})", known.join(", "))
            }
            many => anyhow::bail!(
                "node {given} is ambiguous: it matches {}",
                candidates(many.iter().map(|n| format!("{} ({})", n.id, n.name)))
            ),
        }
    }
}

/// Tasks whose id, with or without hyphens, or short id starts with `given`.
fn matching_tasks<'a>(tasks: &'a [TaskView], given: &str) -> Vec<&'a TaskView> {
    let Some(needle) = needle(given) else { return Vec::new() };
    tasks
        .iter()
        .filter(|t| id_matches(&t.id.as_uuid().simple().to_string(), &t.id.short(), &needle))
        .collect()
}

/// Nodes named `given`, else with id `given`, else whose id or short id starts with it.
fn matching_nodes<'a>(nodes: &'a [NodeInfo], given: &str) -> Vec<&'a NodeInfo> {
    let by_name: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name == given).collect();
    if !by_name.is_empty() {
        return by_name;
    }
    let Some(needle) = needle(given) else { return Vec::new() };
    nodes
        .iter()
        .filter(|n| id_matches(&n.id.as_uuid().simple().to_string(), &n.id.short(), &needle))
        .collect()
}

/// What an id prefix is compared with: lowercase hex without hyphens (`None` when `given`
/// cannot be part of an id).
fn needle(given: &str) -> Option<String> {
    let needle = given.to_ascii_lowercase().replace('-', "");
    (!needle.is_empty() && needle.chars().all(|c| c.is_ascii_hexdigit())).then_some(needle)
}

/// Whether an id (its 32 hex digits, and its short form) starts with `needle`.
fn id_matches(simple: &str, short: &str, needle: &str) -> bool {
    simple.starts_with(needle) || short.starts_with(needle)
}

/// `a, b, c and 4 more`.
fn candidates(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    let shown = items.iter().take(MAX_CANDIDATES).cloned().collect::<Vec<_>>().join(", ");
    match items.len().saturating_sub(MAX_CANDIDATES) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// One line for a client error: which manager, and what went wrong in plain words (decided by
/// the error's kind; the cause is added only where the kind alone does not say enough).
fn describe(e: &ClientError, base: &str) -> anyhow::Error {
    match e {
        ClientError::Unreachable { kind, source, .. } => match kind {
            Unreachable::Refused
            | Unreachable::Timeout
            | Unreachable::Dns
            | Unreachable::InvalidUrl => {
                anyhow::anyhow!("cannot reach manager at {base}: {kind}")
            }
            Unreachable::Tls | Unreachable::Connect | Unreachable::Broken => {
                anyhow::anyhow!("cannot reach manager at {base}: {kind}: {}", Chain(source).root())
            }
        },
        ClientError::Api { error, status, .. } if *status >= 500 => {
            anyhow::anyhow!("manager at {base} failed (HTTP {status}): {}", error.message)
        }
        ClientError::Api { error, status: 401 | 403, .. } => {
            anyhow::anyhow!("manager at {base} refused the request: {}", error.message)
        }
        ClientError::Api { error, .. } => anyhow::anyhow!("{}", error.message),
        ClientError::Decode { status, source, .. } => anyhow::anyhow!(
            "unexpected answer from {base} (HTTP {status}; is it a Cube manager?): {source}"
        ),
        ClientError::NotCube { status, body, .. } => anyhow::anyhow!(
            "unexpected answer from {base} (HTTP {status}; is it a Cube manager?): {}",
            one_line(body)
        ),
        ClientError::Build(source) => {
            anyhow::anyhow!("cannot set up a client for {base}: {}", Chain(source).root())
        }
        ClientError::ClusterTls(source) => {
            anyhow::anyhow!("cannot set up a client for {base}: {}", Chain(source).root())
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn prefixes_match_full_and_short_ids() {
        let ids: Vec<TaskId> =
            ["01900000-0000-7000-8000-00000000aaaa", "01900000-0000-7000-8000-00000000bbbb"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        let hits = |given: &str| -> Vec<TaskId> {
            let Some(needle) = needle(given) else { return Vec::new() };
            ids.iter()
                .copied()
                .filter(|id| id_matches(&id.as_uuid().simple().to_string(), &id.short(), &needle))
                .collect()
        };
        assert_eq!(hits("0190").len(), 2);
        assert_eq!(hits("01900000-0000-7000-8000-00000000a"), [ids[0]]);
        assert_eq!(hits("00000000BB"), [ids[1]]);
        assert!(hits("web").is_empty());
        assert!(hits("").is_empty());
    }

    #[test]
    fn candidates_are_capped() {
        let many = (0..8).map(|i| i.to_string());
        assert_eq!(candidates(many), "0, 1, 2, 3, 4 and 3 more");
    }
}
