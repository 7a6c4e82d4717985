//! Persistence for Cube's manager and worker.
//!
//! Both agents keep their live state in memory and write every change through a [`Store`]
//! before they acknowledge it. The store is a small key-value interface over named tables;
//! values are JSON documents. Writes are grouped into a [`Batch`] that commits atomically, and
//! [`Store::commit`] returns a future that resolves once the batch is durable, so many callers
//! can share one disk sync.
//!
//! **Invariant:** the order in which batches are handed to [`Store::commit`] is the order in
//! which they are applied, so callers that commit while holding their own state lock get a
//! store that always matches some state their memory went through.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

mod error;
mod redb_store;

pub use error::StoreError;

pub use redb_store::{FORMAT_VERSION, RedbStore};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

/// The tables Cube stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Task records, keyed by task id.
    Tasks,
    /// Node records (manager), keyed by node id.
    Nodes,
    /// Small facts about the store itself and the agent (node id, format version).
    Meta,
    /// Service records with their version history (manager), keyed by service name.
    Services,
    /// Deployment records (manager), keyed by deployment id.
    Deployments,
    /// The manager's event history, keyed by the event's index as 20 digits (so key order is
    /// index order).
    Events,
    /// Users' tokens (manager), keyed by name: their roles and secrets' digests.
    Tokens,
    /// The audit log (manager): every mutation through the API, keyed like the events (the
    /// index of its `Audited` event), kept longer than they are.
    Audit,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 8] = [
        Table::Tasks,
        Table::Nodes,
        Table::Meta,
        Table::Services,
        Table::Deployments,
        Table::Events,
        Table::Tokens,
        Table::Audit,
    ];

    /// Stable table name (used as the on-disk table name).
    pub const fn name(self) -> &'static str {
        match self {
            Table::Tasks => "tasks",
            Table::Nodes => "nodes",
            Table::Meta => "meta",
            Table::Services => "services",
            Table::Deployments => "deployments",
            Table::Events => "events",
            Table::Tokens => "tokens",
            Table::Audit => "audit",
        }
    }
}

/// One write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace a value.
    Put {
        /// Table written.
        table: Table,
        /// Key.
        key: String,
        /// Encoded value.
        value: Vec<u8>,
    },
    /// Remove a key (absent keys are fine).
    Delete {
        /// Table written.
        table: Table,
        /// Key.
        key: String,
    },
}

/// Writes that commit together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The writes, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put of `value` encoded as JSON.
    pub fn put<T: Serialize>(
        &mut self,
        table: Table,
        key: impl Into<String>,
        value: &T,
    ) -> Result<&mut Self, StoreError> {
        let key = key.into();
        let value = serde_json::to_vec(value).map_err(|source| StoreError::Codec {
            table: table.name(),
            key: key.clone(),
            source,
        })?;
        self.ops.push(Op::Put { table, key, value });
        Ok(self)
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: Table, key: impl Into<String>) -> &mut Self {
        self.ops.push(Op::Delete { table, key: key.into() });
        self
    }

    /// Whether the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A durable key-value store. Implementations must apply batches in the order `commit` is
/// called and must not block the caller of `commit`.
pub trait Store: Send + Sync + 'static {
    /// Hands a batch to the store; the returned future resolves when it is durable (or failed).
    /// Dropping the future does not cancel the write.
    fn commit(&self, batch: Batch) -> Commit;

    /// Every `(key, value)` of a table, in key order. Used at start-up; may block on disk I/O,
    /// so async callers run it on a blocking thread.
    fn load(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// At most `limit` rows of a table whose keys sort after `after` (every key when `None`),
    /// in key order: reads a long table a page at a time. May block on disk I/O, like `load`.
    fn scan(
        &self,
        table: Table,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Short name of the implementation, for logs (`memory`, `redb`).
    fn kind(&self) -> &'static str;
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.kind())
    }
}

/// Below this many rows a table is decoded on the calling thread.
const PARALLEL_DECODE_MIN_ROWS: usize = 4096;

/// Decodes every value of a table as `T`, in key order.
///
/// Decoding is most of a restart's cost (100k task records are over 200 MB of JSON), so large
/// tables are decoded in parallel, one contiguous chunk per available core. This blocks the
/// calling thread: call it from a blocking context.
pub fn load_json<T: DeserializeOwned + Send>(
    store: &dyn Store,
    table: Table,
) -> Result<Vec<(String, T)>, StoreError> {
    let rows = store.load(table)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads == 1 || rows.len() < PARALLEL_DECODE_MIN_ROWS {
        return decode_rows(table, rows);
    }
    let chunk = rows.len().div_ceil(threads);
    let mut chunks = Vec::with_capacity(threads);
    let mut rest = rows;
    while rest.len() > chunk {
        let tail = rest.split_off(chunk);
        chunks.push(rest);
        rest = tail;
    }
    chunks.push(rest);
    let decoded: Vec<Result<Vec<(String, T)>, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            chunks.into_iter().map(|c| scope.spawn(move || decode_rows(table, c))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(StoreError::DecodePanicked { table: table.name() })))
            .collect()
    });
    let mut out = Vec::new();
    for part in decoded {
        out.extend(part?);
    }
    Ok(out)
}

fn decode_rows<T: DeserializeOwned>(
    table: Table,
    rows: Vec<(String, Vec<u8>)>,
) -> Result<Vec<(String, T)>, StoreError> {
    rows.into_iter()
        .map(|(key, value)| match serde_json::from_slice(&value) {
            Ok(v) => Ok((key, v)),
            Err(source) => Err(StoreError::Codec { table: table.name(), key, source }),
        })
        .collect()
}

/// The future returned by [`Store::commit`].
#[derive(Debug)]
pub struct Commit(CommitState);

#[derive(Debug)]
enum CommitState {
    Done(Option<Result<(), StoreError>>),
    Waiting(oneshot::Receiver<Result<(), StoreError>>),
}

impl Commit {
    /// A commit that already finished with `result`.
    pub fn ready(result: Result<(), StoreError>) -> Self {
        Self(CommitState::Done(Some(result)))
    }

    /// A commit that finishes when the sender side reports (a dropped sender means the store
    /// shut down first).
    pub fn pending(receiver: oneshot::Receiver<Result<(), StoreError>>) -> Self {
        Self(CommitState::Waiting(receiver))
    }
}

impl Future for Commit {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            CommitState::Done(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            CommitState::Waiting(receiver) => {
                Pin::new(receiver).poll(cx).map(|r| r.unwrap_or(Err(StoreError::Closed)))
            }
        }
    }
}

/// A store that keeps everything in memory: for tests and `--store memory`. Nothing survives
/// the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<HashMap<Table, BTreeMap<String, Vec<u8>>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn commit(&self, batch: Batch) -> Commit {
        // A poisoned lock means a panic happened mid-apply in another thread; the map itself is
        // still structurally sound, so keep serving.
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        for op in batch.ops {
            match op {
                Op::Put { table, key, value } => {
                    tables.entry(table).or_default().insert(key, value);
                }
                Op::Delete { table, key } => {
                    tables.entry(table).or_default().remove(&key);
                }
            }
        }
        Commit::ready(Ok(()))
    }

    fn load(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        Ok(tables
            .get(&table)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn scan(
        &self,
        table: Table,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        use std::ops::Bound;
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rows) = tables.get(&table) else { return Ok(Vec::new()) };
        let from = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.to_owned()));
        Ok(rows
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_applies_batches_in_order() {
        let store = MemoryStore::new();
        let mut b = Batch::new();
        b.put(Table::Tasks, "a", &1u32).unwrap();
        b.put(Table::Tasks, "b", &2u32).unwrap();
        store.commit(b).await.unwrap();
        let mut b = Batch::new();
        b.delete(Table::Tasks, "a");
        b.put(Table::Tasks, "b", &3u32).unwrap();
        store.commit(b).await.unwrap();
        let rows: Vec<(String, u32)> = load_json(&store, Table::Tasks).unwrap();
        assert_eq!(rows, [("b".to_owned(), 3)]);
        assert!(store.load(Table::Nodes).unwrap().is_empty());
    }

    #[tokio::test]
    async fn undecodable_values_name_table_and_key() {
        let store = MemoryStore::new();
        let mut b = Batch::new();
        b.put(Table::Meta, "k", &"text").unwrap();
        store.commit(b).await.unwrap();
        let err = load_json::<u32>(&store, Table::Meta).unwrap_err();
        assert!(err.to_string().starts_with("meta/k: stored value is not valid"), "{err}");
    }

    #[tokio::test]
    async fn large_tables_decode_in_key_order_and_name_a_bad_row() {
        let store = MemoryStore::new();
        let n = PARALLEL_DECODE_MIN_ROWS as u32 * 3 + 7;
        let mut b = Batch::new();
        for i in 0..n {
            b.put(Table::Tasks, format!("{i:08}"), &i).unwrap();
        }
        store.commit(b).await.unwrap();
        let rows: Vec<(String, u32)> = load_json(&store, Table::Tasks).unwrap();
        assert_eq!(rows.len(), n as usize);
        assert!(
            rows.iter().enumerate().all(|(i, (k, v))| *v == i as u32 && *k == format!("{i:08}"))
        );

        let mut b = Batch::new();
        b.put(Table::Tasks, "00010000", &"not a number").unwrap();
        store.commit(b).await.unwrap();
        let err = load_json::<u32>(&store, Table::Tasks).unwrap_err();
        assert!(err.to_string().starts_with("tasks/00010000: stored value"), "{err}");
    }

    /// What every store's `scan` must do (run on each implementation).
    pub(crate) async fn scans_page_through_a_table_in_key_order(store: &dyn Store) {
        let mut b = Batch::new();
        for i in [3u32, 1, 2, 5, 4] {
            b.put(Table::Events, format!("{i:02}"), &i).unwrap();
        }
        store.commit(b).await.unwrap();
        let keys =
            |rows: Vec<(String, Vec<u8>)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(store.scan(Table::Events, None, 2).unwrap()), ["01", "02"]);
        assert_eq!(keys(store.scan(Table::Events, Some("02"), 10).unwrap()), ["03", "04", "05"]);
        assert!(store.scan(Table::Events, Some("05"), 10).unwrap().is_empty());
        assert!(store.scan(Table::Nodes, None, 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn memory_scans_page_through_a_table_in_key_order() {
        scans_page_through_a_table_in_key_order(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn a_commit_whose_writer_vanished_reports_closed() {
        let (tx, rx) = oneshot::channel();
        drop(tx);
        assert!(matches!(Commit::pending(rx).await, Err(StoreError::Closed)));
    }
}
