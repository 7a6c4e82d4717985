//! The manager's event history: every committed change of a record gets the next index and an
//! [`Event`] stored in the same commit, so the history is exactly as durable as the state.
//!
//! - Indexes increase by one per change; `?index=N` means "everything after `N`", so a client
//!   that resumes from the last index it saw misses nothing and sees nothing twice.
//! - The newest [`RING`] events (at most as many as the history keeps) are kept in memory,
//!   encoded once and shared by every subscriber; older ones are read back from the store a
//!   page at a time. The store keeps what [`History`] says (`prune`).
//! - Events become visible to readers only once their commit is durable ([`EventLog::published`]),
//!   so nobody sees a change that a crash could take back.
//! - A reader holds no buffer of its own: it pulls the next page when its connection can take
//!   it. One that reads live from memory and falls out of it is told where to resume and
//!   dropped; it catches up from the store when it comes back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cube_api::events::{
    Actor, Event, EventObject, EventType, IndexBounds, Notice, NoticeType, Topic, TopicFilter,
};
use cube_core::deployment::{Deployment, DeploymentStatus};
use cube_core::{EventKind, Node, NodeState, Note, Task, Trigger};
use cube_store::{Batch, Op, Store, StoreError, Table};
use jiff::Timestamp;
use serde::Deserialize;
use tokio::sync::watch;

use crate::{History, Manager};

/// Most events kept in memory.
pub(crate) const RING: usize = 10_000;
/// A subscriber with nothing to read gets a heartbeat this often.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(10);
/// Most events one read returns (and the store page size).
const PAGE: usize = 512;
/// Most events one read looks at in memory, matching or not, so a narrow filter over a busy
/// history does not hold the lock long.
const SCAN: usize = 4096;
/// The meta key of the last index given out.
const INDEX_KEY: &str = "event_index";

/// The store key of an event: its index in 20 digits, so key order is index order.
pub(crate) fn key(index: u64) -> String {
    format!("{index:020}")
}

/// A change to record, before it has an index.
#[derive(Debug)]
pub(crate) struct Change {
    /// What happened.
    pub kind: EventType,
    /// The record's key.
    pub key: String,
    /// The record after the change.
    pub object: EventObject,
}

#[derive(Debug)]
struct Entry {
    index: u64,
    topic: Topic,
    key: Arc<str>,
    /// The encoded event, without a line break.
    line: Bytes,
}

#[derive(Debug)]
struct Inner {
    /// The last index given out.
    last: u64,
    /// The first index the store still holds (`last + 1` when it holds none).
    oldest: u64,
    /// The newest events, oldest first; every one of them is also in the store.
    ring: VecDeque<Entry>,
    /// How many `ring` holds at most.
    ring_len: usize,
    history: History,
}

/// The history, and who waits on it.
#[derive(Debug)]
pub(crate) struct EventLog {
    inner: Mutex<Inner>,
    /// The newest durable index: readers see events up to it.
    durable: watch::Sender<u64>,
    /// Streams open now.
    subscribers: AtomicUsize,
}

/// What one read found.
#[derive(Debug)]
pub(crate) enum Read {
    /// Lines to send with their indexes (possibly none, when the events looked at did not
    /// match), and the index to continue after.
    Lines(Vec<(u64, Bytes)>, u64),
    /// Nothing newer than the cursor yet.
    UpToDate,
    /// The cursor is older than what memory holds: read the store.
    Behind,
    /// The history no longer holds the events after the cursor.
    Gone,
}

/// The fields a reader of stored events looks at.
#[derive(Deserialize)]
struct Head {
    index: u64,
    topic: Topic,
    key: String,
}

impl EventLog {
    /// The history `store` holds (at start-up; reads the store, so call it from a blocking
    /// context). The next index is above `floor` too: a store written before the history
    /// existed has service records stamped with indexes of their own.
    pub(crate) fn load(
        store: &dyn Store,
        history: History,
        floor: u64,
    ) -> Result<Self, StoreError> {
        let ring_len = usize::try_from(history.events).unwrap_or(RING).clamp(1, RING);
        let meta = store.scan(Table::Meta, None, usize::MAX)?;
        let last = meta
            .iter()
            .find(|(k, _)| k == INDEX_KEY)
            .and_then(|(_, v)| serde_json::from_slice::<u64>(v).ok())
            .unwrap_or(0)
            .max(floor);
        let first = store.scan(Table::Events, None, 1)?;
        let oldest = match first.first() {
            Some((_, v)) => {
                serde_json::from_slice::<Head>(v)
                    .map_err(|source| StoreError::Codec {
                        table: Table::Events.name(),
                        key: "first".into(),
                        source,
                    })?
                    .index
            }
            None => last + 1,
        };
        let from = last.saturating_sub(ring_len as u64).max(oldest.saturating_sub(1));
        let mut ring = VecDeque::with_capacity(ring_len);
        for (k, v) in store.scan(Table::Events, Some(&key(from)), ring_len)? {
            let head: Head = serde_json::from_slice(&v).map_err(|source| StoreError::Codec {
                table: Table::Events.name(),
                key: k,
                source,
            })?;
            ring.push_back(Entry {
                index: head.index,
                topic: head.topic,
                key: head.key.into(),
                line: Bytes::from(v),
            });
        }
        let (durable, _) = watch::channel(last);
        let inner = Mutex::new(Inner { last, oldest, ring, ring_len, history });
        Ok(Self { inner, durable, subscribers: AtomicUsize::new(0) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update of `Inner` leaves it consistent before anything can panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `changes` the next indexes and adds them to `batch` (call while holding the state
    /// lock, so indexes follow commit order). Returns the last index given, if any.
    pub(crate) fn stage(
        &self,
        changes: Vec<Change>,
        at: Timestamp,
        by: &Actor,
        batch: &mut Batch,
    ) -> Result<Option<u64>, StoreError> {
        if changes.is_empty() {
            return Ok(None);
        }
        let mut inner = self.lock();
        let mut index = inner.last;
        let mut staged = Vec::with_capacity(changes.len());
        for change in changes {
            index += 1;
            let event = Event {
                index,
                at,
                kind: change.kind,
                key: change.key,
                by: by.clone(),
                object: change.object,
            };
            let line = serde_json::to_vec(&event).map_err(|source| StoreError::Codec {
                table: Table::Events.name(),
                key: key(index),
                source,
            })?;
            batch.ops.push(Op::Put { table: Table::Events, key: key(index), value: line.clone() });
            staged.push(Entry {
                index,
                topic: event.topic(),
                key: event.key.into(),
                line: Bytes::from(line),
            });
        }
        batch.put(Table::Meta, INDEX_KEY, &index)?;
        inner.last = index;
        for entry in staged {
            if inner.ring.len() >= inner.ring_len {
                inner.ring.pop_front();
            }
            inner.ring.push_back(entry);
        }
        Ok(Some(index))
    }

    /// An event another manager committed, as a follower's feed brings it (already durable):
    /// kept in memory and shown to readers at once. Events arrive in index order; one already
    /// held is ignored.
    pub(crate) fn replicate(&self, line: Vec<u8>) -> Result<(), StoreError> {
        let head: Head = serde_json::from_slice(&line).map_err(|source| StoreError::Codec {
            table: Table::Events.name(),
            key: "replicated".into(),
            source,
        })?;
        {
            let mut inner = self.lock();
            if head.index <= inner.last {
                return Ok(());
            }
            inner.last = head.index;
            if inner.ring.len() >= inner.ring_len {
                inner.ring.pop_front();
            }
            inner.ring.push_back(Entry {
                index: head.index,
                topic: head.topic,
                key: head.key.into(),
                line: Bytes::from(line),
            });
        }
        self.published(head.index);
        Ok(())
    }

    /// Another manager pruned the history up to the event stored under `key`.
    pub(crate) fn replicate_pruned(&self, key: &str) {
        if let Ok(index) = key.parse::<u64>() {
            let mut inner = self.lock();
            inner.oldest = inner.oldest.max(index + 1);
        }
    }

    /// Takes everything `fresh` holds (a follower that reloaded a snapshot). Readers continue
    /// from their cursors.
    pub(crate) fn reset(&self, fresh: EventLog) {
        let inner = fresh.inner.into_inner().unwrap_or_else(|e| e.into_inner());
        let last = inner.last;
        *self.lock() = inner;
        self.published(last);
    }

    /// The index the next change will get.
    pub(crate) fn next_index(&self) -> u64 {
        self.lock().last + 1
    }

    /// Everything up to `index` is durable: readers may see it.
    pub(crate) fn published(&self, index: u64) {
        self.durable.send_if_modified(|d| {
            let newer = index > *d;
            if newer {
                *d = index;
            }
            newer
        });
    }

    /// The newest durable index.
    pub(crate) fn current(&self) -> u64 {
        *self.durable.borrow()
    }

    /// The indexes the history holds.
    pub(crate) fn bounds(&self) -> IndexBounds {
        let oldest = self.lock().oldest;
        IndexBounds { oldest, current: self.current() }
    }

    /// Whether a reader may start after `after` without a gap.
    pub(crate) fn check_start(&self, after: u64) -> Result<(), IndexBounds> {
        let bounds = self.bounds();
        if after + 1 < bounds.oldest { Err(bounds) } else { Ok(()) }
    }

    /// Waits until something newer than `index` is durable, or `timeout` passed; whether it is.
    pub(crate) async fn wait_past(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.durable.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|d| *d > index)).await.is_ok_and(|r| r.is_ok())
    }

    /// A receiver that changes whenever something new is durable.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// The next events after `after` in memory that `filters` admit.
    pub(crate) fn read(&self, after: u64, filters: &[TopicFilter]) -> Read {
        let durable = self.current();
        if after >= durable {
            return Read::UpToDate;
        }
        let inner = self.lock();
        let Some(first) = inner.ring.front().map(|e| e.index) else { return Read::Behind };
        if after + 1 < first {
            return Read::Behind;
        }
        let skip = usize::try_from(after + 1 - first).unwrap_or(usize::MAX);
        let mut lines = Vec::new();
        let mut cursor = after;
        for entry in inner.ring.iter().skip(skip).take(SCAN) {
            if entry.index > durable || lines.len() == PAGE {
                break;
            }
            cursor = entry.index;
            if admits(filters, entry.topic, &entry.key) {
                lines.push((entry.index, entry.line.clone()));
            }
        }
        Read::Lines(lines, cursor)
    }

    /// The next page of events after `after` from the store (blocking: call it on a blocking
    /// thread).
    pub(crate) fn read_stored(
        &self,
        store: &dyn Store,
        after: u64,
        filters: &[TopicFilter],
    ) -> Result<Read, StoreError> {
        let rows = store.scan(Table::Events, Some(&key(after)), PAGE)?;
        let mut lines = Vec::new();
        let mut cursor = after;
        for (k, v) in rows {
            let head: Head = serde_json::from_slice(&v).map_err(|source| StoreError::Codec {
                table: Table::Events.name(),
                key: k,
                source,
            })?;
            // Pruned under the reader's feet: say so rather than skip ahead.
            if cursor == after && head.index != after + 1 {
                return Ok(Read::Gone);
            }
            cursor = head.index;
            if admits(filters, head.topic, &head.key) {
                lines.push((head.index, Bytes::from(v)));
            }
        }
        Ok(if cursor == after { Read::UpToDate } else { Read::Lines(lines, cursor) })
    }

    /// Deletes events beyond the retention from `store`: those older than the history's age
    /// at `now` that are not among its newest events. Returns how many. Blocking reads:
    /// call it on a blocking thread; the returned commit is awaited by the caller.
    pub(crate) fn prune(
        &self,
        store: &dyn Store,
        now: Timestamp,
    ) -> Result<Option<(usize, cube_store::Commit)>, StoreError> {
        #[derive(Deserialize)]
        struct Dated {
            index: u64,
            at: Timestamp,
        }
        let (oldest, last, history) = {
            let inner = self.lock();
            (inner.oldest, inner.last, inner.history)
        };
        let floor = last.saturating_sub(history.events);
        if oldest > floor {
            return Ok(None);
        }
        let age = jiff::SignedDuration::try_from(history.age).unwrap_or(jiff::SignedDuration::MAX);
        let cutoff = now.checked_sub(age);
        let Ok(cutoff) = cutoff else { return Ok(None) };
        let mut batch = Batch::new();
        let mut cut = None;
        for (k, v) in store.scan(Table::Events, Some(&key(oldest.saturating_sub(1))), PAGE * 8)? {
            let dated: Dated = serde_json::from_slice(&v).map_err(|source| StoreError::Codec {
                table: Table::Events.name(),
                key: k.clone(),
                source,
            })?;
            if dated.index > floor || dated.at >= cutoff {
                break;
            }
            batch.delete(Table::Events, k);
            cut = Some(dated.index);
        }
        let Some(cut) = cut else { return Ok(None) };
        // New readers are refused the pruned range before it disappears; the ring never holds
        // any of it (it holds at most the newest `history.events`).
        self.lock().oldest = cut + 1;
        let n = batch.ops.len();
        Ok(Some((n, store.commit(batch))))
    }

    /// The newest `n` durable events in memory of `topics`, newest first (for the UI).
    pub(crate) fn recent(&self, n: usize, topics: &[Topic]) -> Vec<Bytes> {
        let durable = self.current();
        let inner = self.lock();
        inner
            .ring
            .iter()
            .rev()
            .filter(|e| e.index <= durable && topics.contains(&e.topic))
            .take(n)
            .map(|e| e.line.clone())
            .collect()
    }

    /// Streams open now.
    pub(crate) fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }
}

/// How a stream is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One JSON object per line.
    Ndjson,
    /// Server-Sent Events: `id: <index>` and `data: <event>`.
    Sse,
}

impl Framing {
    fn frame(self, out: &mut Vec<u8>, index: Option<u64>, line: &[u8]) {
        match self {
            Framing::Ndjson => {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            Framing::Sse => {
                if let Some(index) = index {
                    out.extend_from_slice(format!("id: {index}\n").as_bytes());
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line);
                out.extend_from_slice(b"\n\n");
            }
        }
    }
}

/// A notice line.
fn notice(kind: NoticeType, index: u64) -> Vec<u8> {
    // Two plain fields: encoding cannot fail.
    serde_json::to_vec(&Notice { kind, index }).unwrap_or_default()
}

/// Counts a stream as open while it lives.
struct Subscription(Arc<Manager>);

impl Subscription {
    fn new(manager: Arc<Manager>) -> Self {
        manager.events.subscribers.fetch_add(1, Ordering::Relaxed);
        Self(manager)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.events.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Follow {
    sub: Subscription,
    cursor: u64,
    filters: Vec<TopicFilter>,
    framing: Framing,
    rx: watch::Receiver<u64>,
    /// It has read from memory: falling out of it now means it is too slow.
    live: bool,
    last_sent: tokio::time::Instant,
    done: bool,
}

/// The events after `after` that `filters` admit, then every new one as it becomes durable,
/// framed as `framing`, until the client goes away, the manager shuts down, or the subscriber
/// falls behind (a last `Lagged` line says where to resume). Dropping the stream (a client
/// that disconnected) leaves nothing behind.
pub(crate) fn follow(
    manager: Arc<Manager>,
    after: u64,
    filters: Vec<TopicFilter>,
    framing: Framing,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let rx = manager.events.watch();
    let state = Follow {
        sub: Subscription::new(manager),
        cursor: after,
        filters,
        framing,
        rx,
        live: false,
        last_sent: tokio::time::Instant::now(),
        done: false,
    };
    futures_util::stream::unfold(state, |mut f| async move {
        let chunk = f.next().await?;
        f.last_sent = tokio::time::Instant::now();
        Some((Ok(Bytes::from(chunk)), f))
    })
}

impl Follow {
    /// The next chunk to send, or `None` to end the stream.
    async fn next(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let m = Arc::clone(&self.sub.0);
        loop {
            // Marks the current value seen: a publish after this wakes `changed` below.
            self.rx.borrow_and_update();
            let read = match m.events.read(self.cursor, &self.filters) {
                Read::Behind if self.live => {
                    self.done = true;
                    tracing::debug!(cursor = self.cursor, "event subscriber fell behind");
                    return Some(self.notice(NoticeType::Lagged));
                }
                Read::Behind => {
                    let (m2, cursor, filters) = (Arc::clone(&m), self.cursor, self.filters.clone());
                    let stored = tokio::task::spawn_blocking(move || {
                        m2.events.read_stored(m2.store.as_ref(), cursor, &filters)
                    })
                    .await;
                    match stored {
                        Ok(Ok(read)) => read,
                        Ok(Err(e)) => {
                            tracing::error!(error = %cube_core::Chain(&e), "cannot read the event history");
                            return None;
                        }
                        Err(_) => return None,
                    }
                }
                read => {
                    if matches!(read, Read::Lines(..)) {
                        self.live = true;
                    }
                    read
                }
            };
            match read {
                Read::Lines(lines, cursor) => {
                    self.cursor = cursor;
                    if lines.is_empty() {
                        continue;
                    }
                    let mut out = Vec::with_capacity(lines.iter().map(|(_, l)| l.len() + 16).sum());
                    for (index, line) in &lines {
                        self.framing.frame(&mut out, Some(*index), line);
                    }
                    return Some(out);
                }
                Read::Gone => {
                    // Pruned while it caught up: resuming will say 410, never skip ahead.
                    self.done = true;
                    return Some(self.notice(NoticeType::Lagged));
                }
                Read::Behind => return None,
                Read::UpToDate => {
                    let beat = self.last_sent + HEARTBEAT;
                    tokio::select! {
                        changed = self.rx.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                        }
                        () = tokio::time::sleep_until(beat) => {
                            return Some(self.notice(NoticeType::Heartbeat));
                        }
                        () = m.shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }

    fn notice(&self, kind: NoticeType) -> Vec<u8> {
        let mut out = Vec::new();
        let id = (self.framing == Framing::Sse).then_some(self.cursor);
        self.framing.frame(&mut out, id, &notice(kind, self.cursor));
        out
    }
}

fn admits(filters: &[TopicFilter], topic: Topic, key: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.admits(topic, key))
}

/// A task event's type: what the newest history entry says happened.
pub(crate) fn task_type(task: &Task) -> EventType {
    let Some(last) = task.events.last() else { return EventType::TaskUpdated };
    match last.kind {
        EventKind::Transition(trigger) => match trigger {
            Trigger::Place => EventType::TaskPlaced,
            Trigger::Started => EventType::TaskRunning,
            Trigger::StartFailed { retry: true } | Trigger::Exited { retry: true, .. } => {
                EventType::TaskRestarting
            }
            Trigger::StartFailed { retry: false }
            | Trigger::Exited { success: false, retry: false } => EventType::TaskFailed,
            Trigger::Exited { success: true, retry: false } => EventType::TaskCompleted,
            Trigger::Stopped => EventType::TaskStopped,
            Trigger::Requeue => EventType::TaskRequeued,
            Trigger::Lost => EventType::TaskLost,
        },
        EventKind::Note(note) => match note {
            Note::Submitted => EventType::TaskSubmitted,
            Note::StopRequested => EventType::TaskStopRequested,
            Note::HealthPassing => EventType::TaskHealthy,
            Note::Unhealthy => EventType::TaskUnhealthy,
            Note::RestartScheduled => EventType::TaskRestarting,
            Note::Unplaceable => EventType::TaskUnplaceable,
            Note::Readopted | Note::Other => EventType::TaskUpdated,
        },
    }
}

/// A node event's type: the node's condition after the change.
pub(crate) fn node_type(node: &Node) -> EventType {
    match (&node.state, &node.drain) {
        (NodeState::Down, _) => EventType::NodeDown,
        (NodeState::Ready, Some(d)) if d.drained_at.is_some() => EventType::NodeDrained,
        (NodeState::Ready, Some(_)) => EventType::NodeDraining,
        (NodeState::Ready, None) if !node.eligible => EventType::NodeIneligible,
        // Registration stamps both with the same instant; later changes only the heartbeat.
        (NodeState::Ready, None) if node.last_heartbeat == Some(node.registered_at) => {
            EventType::NodeRegistered
        }
        (NodeState::Ready, None) => EventType::NodeReady,
    }
}

/// A deployment event's type: its status after the change.
pub(crate) fn deployment_type(d: &Deployment) -> EventType {
    match d.status {
        DeploymentStatus::Running => EventType::DeploymentProgress,
        DeploymentStatus::Paused => EventType::DeploymentPaused,
        DeploymentStatus::Successful => EventType::DeploymentSuccessful,
        DeploymentStatus::Failed => EventType::DeploymentFailed,
        DeploymentStatus::Cancelled => EventType::DeploymentCancelled,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures_util::StreamExt;

    use super::*;
    use crate::ManagerConfig;

    fn manager(events: u64) -> Arc<Manager> {
        let config = ManagerConfig {
            history: History { events, age: Duration::from_secs(3600) },
            ..ManagerConfig::default()
        };
        let store = Arc::new(cube_store::MemoryStore::new());
        let clock = cube_rt::Clock::following_tokio(Timestamp::UNIX_EPOCH);
        Manager::new(config, store, clock, tokio_util::sync::CancellationToken::new()).unwrap()
    }

    async fn submit(m: &Arc<Manager>, n: usize) {
        let spec: cube_core::TaskSpec = serde_json::from_value(
            serde_json::json!({"name": "t", "driver": "process", "command": "x"}),
        )
        .unwrap();
        for _ in 0..n {
            m.submit(None, spec.clone()).await.unwrap();
        }
    }

    fn lines(chunk: &[u8]) -> Vec<serde_json::Value> {
        chunk
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_reader_that_falls_out_of_memory_is_told_where_to_resume() {
        let m = manager(5);
        submit(&m, 1).await;
        let mut live = std::pin::pin!(follow(Arc::clone(&m), 0, Vec::new(), Framing::Ndjson));
        let first = lines(&live.next().await.unwrap().unwrap());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0]["index"], 1);
        // Ten more while it does not read: memory holds only the newest five.
        submit(&m, 10).await;
        let last = lines(&live.next().await.unwrap().unwrap());
        assert_eq!(last, [serde_json::json!({"type": "Lagged", "index": 1})]);
        assert!(live.next().await.is_none(), "then it is disconnected");

        // Resuming from there reads the store, then goes on live: nothing missing.
        let mut resumed = std::pin::pin!(follow(Arc::clone(&m), 1, Vec::new(), Framing::Ndjson));
        let caught_up = lines(&resumed.next().await.unwrap().unwrap());
        let indexes: Vec<u64> = caught_up.iter().map(|e| e["index"].as_u64().unwrap()).collect();
        assert_eq!(indexes, (2..=11).collect::<Vec<_>>());
        submit(&m, 1).await;
        let next = lines(&resumed.next().await.unwrap().unwrap());
        assert_eq!(next[0]["index"], 12);
        assert_eq!(m.event_subscribers(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn server_sent_events_carry_the_index_as_their_id() {
        let m = manager(100);
        submit(&m, 2).await;
        let mut sse = std::pin::pin!(follow(Arc::clone(&m), 0, Vec::new(), Framing::Sse));
        let chunk = String::from_utf8(sse.next().await.unwrap().unwrap().to_vec()).unwrap();
        let frames: Vec<&str> = chunk.split_terminator("\n\n").collect();
        assert_eq!(frames.len(), 2);
        assert!(frames[0].starts_with("id: 1\ndata: {\"index\":1,"), "{chunk}");
        assert!(frames[1].starts_with("id: 2\ndata: {\"index\":2,"), "{chunk}");
        // Idle: a heartbeat after ten seconds, with the index it has read up to.
        let beat = String::from_utf8(sse.next().await.unwrap().unwrap().to_vec()).unwrap();
        assert_eq!(beat, "id: 2\ndata: {\"type\":\"Heartbeat\",\"index\":2}\n\n");
    }
}
