//! The audit log: every mutation through the API — who (a token's name, `cluster`, a node),
//! with which role, which operation, when, and how it was answered — durable before the answer
//! leaves, and in the event stream as an `Audited` event (topic `Audit`).
//!
//! A record is written in one batch with its event and keyed by the event's index in the
//! `audit` table, which keeps them for the manager's `audit_retention` (90 days by default),
//! far longer than the event history. Answers refused for lack of a role (403) are recorded;
//! requests without valid credentials (401) are not, as nobody is known to record. Heartbeats,
//! reads and the endpoint feed are not mutations; exec sessions, although opened with a GET,
//! are.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use cube_api::auth::AuditQuery;
use cube_api::events::{Actor, EventObject, EventType};
use cube_api::openapi::manager as m;
use cube_core::Chain;
use cube_core::access::AuditRecord;
use cube_http::auth::Caller;
use cube_http::server::Served;
use cube_rt::Ticker;
use cube_store::{Batch, Table};

use crate::{Manager, ManagerError, Staged, events};

/// Records read from the store per page.
const PAGE: usize = 4096;
/// Records an answer holds when the query names no limit, and at most.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;

/// Whether the operation answered is audited.
fn audited(method: &Method, operation: &str) -> bool {
    let read = method == Method::GET || method == Method::HEAD;
    // Exec starts a command (a GET only because WebSockets open with one); heartbeats are a
    // node's periodic report, whose effects are in the event stream.
    (!read || operation == m::EXEC.id) && operation != m::HEARTBEAT.id
}

/// Middleware: records each audited request once it has been answered.
pub(crate) async fn audit(
    State(manager): State<std::sync::Arc<Manager>>,
    req: Request,
    next: Next,
) -> Response {
    let caller = req.extensions().get::<Caller>().cloned();
    let method = req.method().clone();
    let request = format!("{method} {}", req.uri().path());
    let response = next.run(req).await;
    // An open route may name who it served in its answer (a join names the node).
    let caller = caller.or_else(|| response.extensions().get::<Caller>().cloned());
    // An unknown route or method was no operation; without a caller nobody is known.
    let (Some(caller), Some(Served(operation))) = (caller, response.extensions().get::<Served>())
    else {
        return response;
    };
    if !audited(&method, operation.id) {
        return response;
    }
    let record = AuditRecord {
        at: manager.clock.now(),
        who: caller.name.to_string(),
        role: caller.role(),
        operation: operation.id.to_owned(),
        request,
        status: response.status().as_u16(),
    };
    if let Err(e) = manager.record_audit(record).await {
        tracing::error!(error = %Chain(&e), "cannot record a mutation in the audit log");
    }
    response
}

impl Manager {
    /// Commits `record` and its event.
    async fn record_audit(&self, record: AuditRecord) -> Result<(), ManagerError> {
        let staged = {
            // Under the state lock like every change, so indexes follow commit order.
            let _state = self.lock();
            let mut batch = Batch::new();
            let change = events::Change {
                kind: EventType::Audited,
                key: record.who.clone(),
                object: EventObject::Audit(Some(Box::new(record.clone()))),
            };
            let index = self.events.stage(vec![change], record.at, &Actor::Api, &mut batch)?;
            if let Some(index) = index {
                batch.put(Table::Audit, events::key(index), &record)?;
            }
            Staged::commit(self.store.as_ref(), batch, index)
        };
        self.committed(staged).await
    }

    /// The records `query` asks for, oldest first: the newest `limit` of those since `since`
    /// by `who`. Reads the store: call from a blocking context.
    pub(crate) fn audit_log(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, ManagerError> {
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
        let mut kept = std::collections::VecDeque::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.scan(Table::Audit, after.as_deref(), PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, value) in &page {
                let record: AuditRecord = match serde_json::from_slice(value) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(key, error = %e, "an audit record is not valid; skipped");
                        continue;
                    }
                };
                let since_ok = query.since.is_none_or(|since| record.at >= since);
                let who_ok = query.who.as_ref().is_none_or(|who| &record.who == who);
                if since_ok && who_ok {
                    if kept.len() == limit {
                        kept.pop_front();
                    }
                    kept.push_back(record);
                }
            }
            if page.len() < PAGE {
                break;
            }
        }
        Ok(kept.into())
    }

    /// Deletes audit records older than the retention, once an hour.
    pub(crate) async fn audit_loop(self: std::sync::Arc<Self>, retain: Duration) {
        let mut ticker = Ticker::new(Duration::from_secs(3600), self.shutdown.clone());
        while ticker.tick().await {
            match self.prune_expired_audit(retain).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(records = n, "pruned the audit log"),
                Err(e) => tracing::error!(error = %Chain(&e), "cannot prune the audit log"),
            }
        }
    }

    /// Deletes every record older than `retain`, a page per commit (a busy cluster writes far
    /// more than a page an hour); how many.
    pub(crate) async fn prune_expired_audit(
        self: &std::sync::Arc<Self>,
        retain: Duration,
    ) -> Result<usize, ManagerError> {
        let mut total = 0;
        loop {
            let this = std::sync::Arc::clone(self);
            let pruned =
                tokio::task::spawn_blocking(move || this.prune_audit(retain)).await.map_err(
                    |source| ManagerError::Panicked { what: "pruning the audit log", source },
                )??;
            let Some((n, commit)) = pruned else { return Ok(total) };
            commit.await?;
            total += n;
            if n < PAGE {
                return Ok(total);
            }
        }
    }

    /// The deletion of the records older than `retain` (keys follow time, so it stops at the
    /// first younger one), handed to the store; `None` when there is nothing to delete.
    fn prune_audit(
        &self,
        retain: Duration,
    ) -> Result<Option<(usize, cube_store::Commit)>, ManagerError> {
        let Ok(cutoff) = self.clock.now().checked_sub(retain) else { return Ok(None) };
        let mut batch = Batch::new();
        let page = self.store.scan(Table::Audit, None, PAGE)?;
        for (key, value) in &page {
            let old = serde_json::from_slice::<AuditRecord>(value).is_ok_and(|r| r.at < cutoff);
            if !old {
                break;
            }
            batch.delete(Table::Audit, key.clone());
        }
        if batch.is_empty() {
            return Ok(None);
        }
        let n = batch.ops.len();
        Ok(Some((n, self.store.commit(batch))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pruning_deletes_every_expired_record_however_many_and_keeps_the_rest() {
        let store = std::sync::Arc::new(cube_store::MemoryStore::new());
        let manager = Manager::new(
            crate::ManagerConfig::default(),
            store.clone(),
            cube_rt::Clock::system(),
            tokio_util::sync::CancellationToken::new(),
        )
        .unwrap();
        let now = manager.clock.now();
        let record = |days: i64| AuditRecord {
            at: now - jiff::SignedDuration::from_hours(24 * days),
            who: "ci".into(),
            role: None,
            operation: "submitTask".into(),
            request: "POST /v1/tasks".into(),
            status: 201,
        };
        // More than two pages of old records, then a young one.
        let old = 2 * PAGE + 10;
        let mut batch = Batch::new();
        for i in 0..old {
            batch.put(Table::Audit, events::key(i as u64 + 1), &record(100)).unwrap();
        }
        batch.put(Table::Audit, events::key(old as u64 + 1), &record(1)).unwrap();
        cube_store::Store::commit(store.as_ref(), batch).await.unwrap();

        let pruned = manager.prune_expired_audit(Duration::from_secs(90 * 86_400)).await.unwrap();
        assert_eq!(pruned, old);
        let left = manager.audit_log(&AuditQuery::default()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].at, record(1).at);
    }

    #[test]
    fn mutations_and_exec_are_audited_reads_and_heartbeats_are_not() {
        assert!(audited(&Method::POST, m::SUBMIT_TASK.id));
        assert!(audited(&Method::DELETE, m::REVOKE_TOKEN.id));
        assert!(audited(&Method::GET, m::EXEC.id));
        assert!(!audited(&Method::GET, m::LIST_TASKS.id));
        assert!(!audited(&Method::POST, m::HEARTBEAT.id));
        assert!(audited(&Method::POST, m::REGISTER.id));
    }
}
