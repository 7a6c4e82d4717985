//! The durable store, on [redb](https://docs.rs/redb): one file, ACID, checksummed,
//! copy-on-write B-trees (BoltDB's design, in Rust). Every redb call of the project lives in
//! this module, so a redb major version bump is a one-file change.
//!
//! **Group commit.** One writer thread owns all writes. It takes the first waiting batch plus
//! every batch queued behind it, applies them in order in a single transaction and commits once
//! (one fsync), then answers every caller. Under load many requests share a sync, so
//! durability does not cap throughput at one fsync per request; when idle, a lone batch
//! commits at once.
//!
//! **Format.** The `meta` table holds `format_version`. A file written by a newer Cube, a file
//! that is not a Cube database, or a damaged one is refused with a one-line error; the integrity
//! check on open turns damage into an error instead of a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use tokio::sync::oneshot;

use crate::{Batch, Commit, Op, Store, StoreError, Table};

/// Format of the data this version writes.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_KEY: &str = "format_version";
/// redb's page cache (its default is up to 1 GiB).
const CACHE_SIZE: usize = 16 * 1024 * 1024;
/// Most batches folded into one transaction.
const MAX_GROUP: usize = 4096;

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// A store in one redb file.
#[derive(Debug)]
pub struct RedbStore {
    db: Arc<Database>,
    /// Transactions the writer committed (each holds one or more batches).
    transactions: Arc<AtomicU64>,
    /// `None` only while dropping.
    writer: Option<mpsc::Sender<(Batch, Reply)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what it has and exit; waiting for it means
        // the file is closed (and can be reopened) once the store is gone.
        self.writer.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing_free_warning(&self.path);
        }
    }
}

/// The store crate does not log; a writer that panicked is reported on stderr as a last resort.
#[allow(clippy::print_stderr)]
fn tracing_free_warning(path: &Path) {
    eprintln!("warning: the writer thread of {} panicked", path.display());
}

fn definition(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

/// An engine failure while doing `operation` on the database at `path`.
fn engine(path: &Path, operation: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |source| StoreError::Engine { path: path.to_owned(), operation, source: Arc::new(source) }
}

/// Like [`engine`], for the operation's own error type (redb has one per operation).
fn engine_of<E: Into<redb::Error>>(
    path: &Path,
    operation: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| engine(path, operation)(e.into())
}

impl RedbStore {
    /// Opens (creating if absent) the database at `path` and starts its writer thread.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                operation: "cannot create directory",
                source,
            })?;
        }
        // Cube reads the store only at start-up; its live state is in memory. redb's default
        // page cache (up to 1 GiB) would hold every record a second time.
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .set_cache_size(CACHE_SIZE)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::InUse { path: path.clone() }
                }
                redb::DatabaseError::Storage(redb::StorageError::Io(io))
                    if io.kind() == std::io::ErrorKind::InvalidData =>
                {
                    StoreError::NotADatabase { path: path.clone(), source: io }
                }
                other => engine_of(&path, "cannot open database (damaged?)")(other),
            })?;
        let db = Arc::new(db);
        check_format(&db, &path)?;
        let (writer, queue) = mpsc::channel::<(Batch, Reply)>();
        let thread_db = Arc::clone(&db);
        let thread_path = path.clone();
        let transactions = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&transactions);
        let thread = std::thread::Builder::new()
            .name("cube-store-writer".into())
            .spawn(move || write_loop(&thread_db, &thread_path, &queue, &counter))
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                operation: "cannot start writer thread",
                source,
            })?;
        Ok(Self { db, transactions, writer: Some(writer), thread: Some(thread), path })
    }

    /// Transactions the writer committed so far (each holds one or more batches): how well
    /// commits group.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Stamps a new database with the format version, or checks an existing one's.
fn check_format(db: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(engine_of(path, "cannot begin transaction"))?;
    {
        let mut meta = txn
            .open_table(definition(Table::Meta))
            .map_err(engine_of(path, "cannot open meta table"))?;
        let stored = meta
            .get(FORMAT_KEY)
            .map_err(engine_of(path, "cannot read format"))?
            .map(|v| v.value().to_vec());
        match stored {
            None => {
                let version = FORMAT_VERSION.to_string();
                meta.insert(FORMAT_KEY, version.as_bytes())
                    .map_err(engine_of(path, "cannot write format"))?;
            }
            Some(bytes) => {
                let version: u32 = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| StoreError::BadFormat {
                        path: path.to_owned(),
                        found: String::from_utf8_lossy(&bytes).into_owned(),
                    })?;
                if version > FORMAT_VERSION {
                    return Err(StoreError::NewerFormat {
                        path: path.to_owned(),
                        found: version,
                        supported: FORMAT_VERSION,
                    });
                }
            }
        }
    }
    for table in Table::ALL {
        txn.open_table(definition(table)).map_err(engine_of(path, "cannot create table"))?;
    }
    txn.commit().map_err(engine_of(path, "cannot commit"))
}

fn write_loop(
    db: &Database,
    path: &Path,
    queue: &mpsc::Receiver<(Batch, Reply)>,
    transactions: &AtomicU64,
) {
    // Ends when every sender is gone, i.e. when the store is dropped.
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let result = apply(db, &group);
        transactions.fetch_add(1, Ordering::Relaxed);
        for (_, reply) in group {
            let answer = match &result {
                Ok(()) => Ok(()),
                // One failed transaction fails every batch folded into it.
                Err((operation, source)) => Err(StoreError::Engine {
                    path: path.to_owned(),
                    operation,
                    source: Arc::clone(source),
                }),
            };
            // The caller may have stopped waiting; the write is done either way.
            let _ = reply.send(answer);
        }
    }
}

/// Applies a group of batches in one transaction; on failure, what failed and why.
fn apply(db: &Database, group: &[(Batch, Reply)]) -> Result<(), (&'static str, Arc<redb::Error>)> {
    fn fail<E: Into<redb::Error>>(
        what: &'static str,
    ) -> impl FnOnce(E) -> (&'static str, Arc<redb::Error>) {
        move |e| (what, Arc::new(e.into()))
    }
    let txn = db.begin_write().map_err(fail("cannot begin transaction"))?;
    // Only the tables the group writes: most commits touch one or two of them.
    let written = |table: Table| {
        group.iter().flat_map(|(b, _)| &b.ops).any(|op| match op {
            Op::Put { table: t, .. } | Op::Delete { table: t, .. } => *t == table,
        })
    };
    for table in Table::ALL.into_iter().filter(|t| written(*t)) {
        let mut t = txn.open_table(definition(table)).map_err(fail("cannot open table"))?;
        for (batch, _) in group {
            for op in &batch.ops {
                match op {
                    Op::Put { table: tt, key, value } if *tt == table => {
                        t.insert(key.as_str(), value.as_slice()).map_err(fail("cannot write"))?;
                    }
                    Op::Delete { table: tt, key } if *tt == table => {
                        t.remove(key.as_str()).map_err(fail("cannot delete"))?;
                    }
                    Op::Put { .. } | Op::Delete { .. } => {}
                }
            }
        }
    }
    txn.commit().map_err(fail("cannot commit"))
}

impl Store for RedbStore {
    fn commit(&self, batch: Batch) -> Commit {
        let (reply, wait) = oneshot::channel();
        match self.writer.as_ref().map(|w| w.send((batch, reply))) {
            Some(Ok(())) => Commit::pending(wait),
            Some(Err(_)) | None => Commit::ready(Err(StoreError::Closed)),
        }
    }

    fn load(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan(table, None, usize::MAX)
    }

    fn scan(
        &self,
        table: Table,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        use std::ops::Bound;
        let path = &self.path;
        let txn = self.db.begin_read().map_err(engine_of(path, "cannot begin read"))?;
        let t = match txn.open_table(definition(table)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(engine_of(path, "cannot open table")(e)),
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let range = t
            .range::<&str>((from, Bound::Unbounded))
            .map_err(engine_of(path, "cannot read table"))?;
        let mut rows = Vec::new();
        for item in range.take(limit) {
            let (k, v) = item.map_err(engine_of(path, "cannot read row"))?;
            rows.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(rows)
    }

    fn kind(&self) -> &'static str {
        "redb"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_json;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scans_page_through_a_table_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("s.redb")).unwrap();
        crate::tests::scans_page_through_a_table_in_key_order(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cube.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            let mut b = Batch::new();
            b.put(Table::Tasks, "a", &"one").unwrap().put(Table::Nodes, "n", &7u32).unwrap();
            store.commit(b).await.unwrap();
            let mut b = Batch::new();
            b.delete(Table::Tasks, "missing").put(Table::Tasks, "b", &"two").unwrap();
            store.commit(b).await.unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let tasks: Vec<(String, String)> = load_json(&store, Table::Tasks).unwrap();
        assert_eq!(tasks, [("a".into(), "one".into()), ("b".into(), "two".into())]);
        let nodes: Vec<(String, u32)> = load_json(&store, Table::Nodes).unwrap();
        assert_eq!(nodes, [("n".into(), 7)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_are_grouped_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path().join("g.redb")).unwrap());
        let commits: Vec<_> = (0..500)
            .map(|i| {
                let mut b = Batch::new();
                b.put(Table::Tasks, format!("k{i:04}"), &i).unwrap();
                store.commit(b)
            })
            .collect();
        for c in commits {
            c.await.unwrap();
        }
        assert_eq!(store.load(Table::Tasks).unwrap().len(), 500);
        // 500 batches queued while the first commits: far fewer transactions (one fsync each).
        let transactions = store.transactions();
        assert!(transactions < 100, "{transactions} transactions for 500 batches");
    }

    #[test]
    fn garbage_and_truncated_files_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.redb");
        std::fs::write(&garbage, vec![0x5a; 64 * 1024]).unwrap();
        let err = RedbStore::open(&garbage).unwrap_err().to_string();
        assert!(err.contains("garbage.redb"), "{err}");

        let good = dir.path().join("good.redb");
        drop(RedbStore::open(&good).unwrap());
        let bytes = std::fs::read(&good).unwrap();
        let truncated = dir.path().join("truncated.redb");
        std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
        let err = RedbStore::open(&truncated).unwrap_err().to_string();
        assert!(err.contains("truncated.redb"), "{err}");
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.redb");
        drop(RedbStore::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(definition(Table::Meta))
                .unwrap()
                .insert(FORMAT_KEY, b"99".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::NewerFormat { found: 99, .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("newer Cube (data format 99"), "{err}");
    }

    #[test]
    fn a_second_opener_is_told_the_file_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.redb");
        let _first = RedbStore::open(&path).unwrap();
        let err = RedbStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("in use by another process"), "{err}");
    }
}
