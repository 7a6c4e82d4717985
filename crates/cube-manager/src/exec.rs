//! Exec sessions through the manager: `GET /v1/tasks/{id}/exec` opens a WebSocket to the
//! task's worker (a connection of its own, never reused) before it upgrades the client's, then
//! passes frames both ways unchanged. Each session is two events: `ExecStarted` and
//! `ExecEnded` with how it ended (`cube_api::exec`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{Message as ClientMessage, WebSocket};
use cube_api::events::{Actor, EventObject, EventType};
use cube_api::exec::{Channel, Control, ExecQuery, ExecRecord};
use cube_core::{Chain, TaskId, TaskState};
use cube_http::client::ClientError;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WorkerMessage;

use crate::{Manager, ManagerError, events};

/// How often the manager pings both ends of an idle session.
const PING: Duration = Duration::from_secs(15);

/// A session's worker end, connected.
pub(crate) struct Connected {
    worker: cube_http::client::WebSocket,
    record: ExecRecord,
}

impl Manager {
    /// Opens `query`'s session on the node running task `id`: refused for an unknown task, one
    /// that does not run, or one its node refuses.
    pub(crate) async fn exec_connect(
        self: &Arc<Self>,
        id: TaskId,
        query: ExecQuery,
    ) -> Result<Connected, ManagerError> {
        if !self.may_command() {
            return Err(ManagerError::NoLeader);
        }
        let (node, address) = {
            let state = self.lock();
            let task = state.task(id).ok_or(ManagerError::TaskNotFound(id))?;
            let node = match (task.state, task.node) {
                (TaskState::Running, Some(node)) => node,
                (state, _) => return Err(ManagerError::NotRunning { id, state }),
            };
            (node, state.node(node).map(|n| n.node.address.clone()))
        };
        let address = address.ok_or_else(|| ManagerError::NodeNotFound(node.to_string()))?;
        let path = format!("/v1/tasks/{id}/exec?{}", query.to_query());
        let worker = self.client(node, &address).websocket(&path).await.map_err(|e| match e {
            ClientError::Api { error, .. } => ManagerError::Remote(error),
            source => ManagerError::NodeUnreachable { node, source },
        })?;
        let record = ExecRecord { task: id, command: query.command, tty: query.tty, ended: None };
        self.record_exec(EventType::ExecStarted, &record).await;
        Ok(Connected { worker, record })
    }

    /// Serves a session, tracked with the manager's other work (a stopping manager ends it
    /// and waits for it).
    pub(crate) async fn serve_exec(self: Arc<Self>, client: WebSocket, connected: Connected) {
        let this = Arc::clone(&self);
        let session = self.tracker.spawn(this.exec_relay(client, connected));
        let _ = session.await;
    }

    /// Passes frames between the client and the worker until either goes away (or the
    /// manager shuts down), then records how the session ended.
    async fn exec_relay(self: Arc<Self>, client: WebSocket, connected: Connected) {
        self.exec_sessions.fetch_add(1, Ordering::Relaxed);
        let Connected { worker, mut record } = connected;
        let ended = relay(client, worker, &self.shutdown).await;
        self.exec_sessions.fetch_sub(1, Ordering::Relaxed);
        record.ended = Some(ended);
        self.record_exec(EventType::ExecEnded, &record).await;
    }

    /// Commits an exec event (nothing else changes).
    async fn record_exec(&self, kind: EventType, record: &ExecRecord) {
        let change = events::Change {
            kind,
            key: record.task.to_string(),
            object: EventObject::Exec(Some(Box::new(record.clone()))),
        };
        if let Err(e) = self.record(Actor::Api, vec![change]).await {
            tracing::error!(error = %Chain(&e), task = %record.task, "cannot record an exec");
        }
    }
}

/// Relays until the session ends; how it ended (the worker's last `Control` frame, or why
/// it broke off).
async fn relay(
    client: WebSocket,
    worker: cube_http::client::WebSocket,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Control {
    let (mut to_client, mut from_client) = client.split();
    let (mut to_worker, mut from_worker) = worker.split();
    let mut reported: Option<Control> = None;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING, PING);
    let broke_off = loop {
        tokio::select! {
            message = from_client.next() => match message {
                Some(Ok(ClientMessage::Binary(frame))) => {
                    if to_worker.send(WorkerMessage::Binary(frame)).await.is_err() {
                        break "the node went away";
                    }
                }
                Some(Ok(ClientMessage::Text(_) | ClientMessage::Ping(_) | ClientMessage::Pong(_))) => {}
                Some(Ok(ClientMessage::Close(_)) | Err(_)) | None => break "the client went away",
            },
            message = from_worker.next() => match message {
                Some(Ok(WorkerMessage::Binary(frame))) => {
                    if frame.first() == Some(&(Channel::Control as u8)) {
                        reported = serde_json::from_slice(&frame[1..]).ok();
                    }
                    if to_client.send(ClientMessage::Binary(frame)).await.is_err() {
                        break "the client went away";
                    }
                }
                Some(Ok(WorkerMessage::Close(_)) | Err(_)) | None => {
                    break "the node closed the session";
                }
                Some(Ok(_)) => {}
            },
            () = shutdown.cancelled() => break "the manager is shutting down",
            _ = ping.tick() => {
                if to_client.send(ClientMessage::Ping(Default::default())).await.is_err() {
                    break "the client went away";
                }
                if to_worker.send(WorkerMessage::Ping(Default::default())).await.is_err() {
                    break "the node went away";
                }
            }
        }
    };
    let ended = match reported {
        Some(control) => control,
        None => {
            // The node said nothing of the end: the client hears why from here.
            let control = Control::Error { message: broke_off.into() };
            let json = serde_json::to_vec(&control).unwrap_or_default();
            let frame = ClientMessage::Binary(Channel::Control.frame(&json).into());
            let _ = to_client.send(frame).await;
            control
        }
    };
    let _ = to_client.close().await;
    let _ = to_worker.close().await;
    ended
}
