//! The worker's side of cluster membership: register with the manager, then heartbeat.
//!
//! Heartbeats are pushed (the book's manager pulled every 15 s): one every interval for
//! liveness and stats, and one as soon as any task changes, carrying the changed tasks. While a
//! heartbeat is in flight further changes accumulate and go out together in the next one, so a
//! burst of changes costs a few requests, not one per change. Reports that do not reach the
//! manager are re-sent; nothing observed is lost while the manager is away.
//!
//! The manager answers with tasks to stop (user stops, and fencing of tasks it moved elsewhere
//! while this node was unreachable) and, if it lost track of this node, a request to register
//! again.

use std::sync::Arc;
use std::time::Duration;

use cube_api::types::{ActiveTask, HeartbeatRequest, HeartbeatResponse, RegisterRequest, TaskView};
use cube_core::{Chain, DriverKind, Resources, TaskId};
use cube_http::client::Client;
use cube_rt::{Backoff, Ticker};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::WorkerError;
use crate::agent::Agent;
use crate::host::{HostSnapshot, node_stats};

/// How the worker introduces itself to the manager.
#[derive(Clone, Debug)]
pub(crate) struct Membership {
    /// Manager base URL.
    pub manager: String,
    /// This worker's API address as the manager should call it.
    pub advertise: String,
    /// Labels for placement constraints.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Resources offered to tasks.
    pub capacity: Resources,
    /// Drivers available.
    pub drivers: Vec<DriverKind>,
    /// What tasks may ask for beyond the defaults.
    pub allows: cube_core::Allows,
    /// Token and CA for the calls to the manager.
    pub security: cube_http::Security,
    /// The node's ingress, reported in periodic heartbeats.
    pub ingress: Option<cube_ingress::Ingress>,
    /// The highest leader epoch seen.
    pub epochs: Arc<crate::epoch::Epochs>,
}

/// First and longest wait between registration attempts (jittered, see [`Backoff`]).
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Registers and heartbeats until `shutdown`.
pub(crate) async fn run(
    agent: Arc<Agent>,
    membership: Membership,
    host: watch::Receiver<HostSnapshot>,
    shutdown: CancellationToken,
) {
    let client = match membership.security.client(&membership.manager, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                error = %Chain(&e),
                "cannot build the manager client; not joining a cluster"
            );
            return;
        }
    };
    loop {
        let Some(response) = register(&agent, &membership, &client, &shutdown).await else {
            return;
        };
        tracing::info!(
            manager = %membership.manager,
            node = %agent.node_id(),
            "registered with the manager"
        );
        if admitted(&membership.epochs, response.epoch).await {
            stop_all(&agent, &response.stop).await;
        }
        let ingress = membership.ingress.as_ref();
        let epochs = &membership.epochs;
        let interval = response.interval();
        if !heartbeat_loop(&agent, &client, &host, ingress, epochs, interval, &shutdown).await {
            return;
        }
        tracing::warn!("the manager asked this node to register again");
    }
}

/// Registers, retrying with jittered backoff; `None` on shutdown.
async fn register(
    agent: &Agent,
    membership: &Membership,
    client: &Client,
    shutdown: &CancellationToken,
) -> Option<HeartbeatResponse> {
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
    let mut attempts = 0u32;
    loop {
        // Everything this node knows, so the manager can reconcile against it.
        agent.table().take_dirty();
        let request = RegisterRequest {
            node_id: agent.node_id(),
            name: agent.name().to_owned(),
            address: membership.advertise.clone(),
            labels: membership.labels.clone(),
            capacity: membership.capacity,
            drivers: membership.drivers.clone(),
            allows: membership.allows.clone(),
            tasks: agent.table().list().iter().map(TaskView::from).collect(),
        };
        match client.register(&request).await {
            Ok(response) => {
                agent.contacted();
                return Some(response);
            }
            Err(e) => {
                attempts += 1;
                // Say it once, then every tenth attempt, so a long outage does not flood logs.
                if attempts == 1 || attempts.is_multiple_of(10) {
                    tracing::warn!(
                        error = %Chain(&e),
                        attempts,
                        "cannot register with the manager; retrying"
                    );
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = shutdown.cancelled() => return None,
        }
    }
}

/// Heartbeats until shutdown (`false`) or until the manager asks to register again (`true`).
/// Whether an answer of the manager with `epoch` may be acted on: not if a newer leader was
/// seen (the answer came from a replaced one); a newer epoch is recorded.
async fn admitted(epochs: &crate::epoch::Epochs, epoch: Option<u64>) -> bool {
    let Some(epoch) = epoch else { return true };
    match epochs.admit(epoch).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "ignoring the stops of a replaced leader's answer");
            false
        }
    }
}

async fn heartbeat_loop(
    agent: &Agent,
    client: &Client,
    host: &watch::Receiver<HostSnapshot>,
    ingress: Option<&cube_ingress::Ingress>,
    epochs: &crate::epoch::Epochs,
    interval: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let mut ticker = Ticker::new(interval, shutdown.clone());
    let mut failures = 0u32;
    loop {
        // A periodic beat carries stats and the list of unfinished tasks (for fencing); a beat
        // pushed by a change carries just the changed tasks, so it stays cheap for both sides.
        let periodic = tokio::select! {
            ticked = ticker.tick() => {
                if !ticked {
                    return false;
                }
                true
            }
            () = agent.table().changed() => false,
            () = shutdown.cancelled() => return false,
        };
        let dirty = agent.table().take_dirty();
        let ids: Vec<_> = dirty.iter().map(|t| t.id).collect();
        let request = HeartbeatRequest {
            stats: periodic.then(|| node_stats(&host.borrow(), agent.table())),
            tasks: dirty.iter().map(TaskView::from).collect(),
            active: periodic.then(|| {
                agent
                    .table()
                    .active()
                    .into_iter()
                    .map(|(id, generation)| ActiveTask { id, generation })
                    .collect()
            }),
            ingress: ingress.filter(|_| periodic).map(|i| cube_core::endpoints::IngressReport {
                listeners: i.listeners(),
                open: i
                    .open_connections()
                    .into_iter()
                    .map(|(task, n)| (task, u32::try_from(n).unwrap_or(u32::MAX)))
                    .collect(),
            }),
        };
        match client.heartbeat(agent.node_id(), &request).await {
            Ok(response) => {
                agent.contacted();
                if failures > 0 {
                    tracing::info!(failures, "manager reachable again");
                }
                failures = 0;
                if response.register {
                    agent.table().mark_dirty(ids);
                    return true;
                }
                ticker.reset(response.interval());
                if admitted(epochs, response.epoch).await {
                    stop_all(agent, &response.stop).await;
                }
            }
            Err(e) => {
                agent.table().mark_dirty(ids);
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %Chain(&e), failures, "heartbeat failed; will retry");
                }
            }
        }
    }
}

async fn stop_all(agent: &Agent, ids: &[TaskId]) {
    for id in ids {
        match agent.stop(*id).await {
            Ok(_) => tracing::info!(task = %id, "stopping task at the manager's request"),
            Err(WorkerError::NotFound(_)) => {}
            Err(e) => tracing::warn!(task = %id, error = %Chain(&e), "cannot stop task"),
        }
    }
}
