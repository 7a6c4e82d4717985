//! What keeps a manager's memory equal to etcd: a [`Snapshot`] of every table at one
//! revision, then a [`Feed`] of every change after that revision, in order.

use cube_store::{Batch, MemoryStore, Store, Table};
use etcd_client::{EventType, WatchOptions, WatchStream};

use crate::{Etcd, EtcdError};

/// A table's rows: keys and encoded values, in key order.
pub type Rows = Vec<(String, Vec<u8>)>;

/// Every table at one revision.
#[derive(Debug)]
pub struct Snapshot {
    /// The revision it reflects: a feed from it misses nothing.
    pub revision: i64,
    /// Each table's rows in key order.
    pub tables: Vec<(Table, Rows)>,
}

impl Snapshot {
    /// The rows in an in-memory store, for the loaders written against [`Store`].
    pub fn into_store(self) -> MemoryStore {
        let store = MemoryStore::new();
        let mut batch = Batch::new();
        for (table, rows) in self.tables {
            for (key, value) in rows {
                batch.ops.push(cube_store::Op::Put { table, key, value });
            }
        }
        // A memory store commits on the spot; there is nothing to wait for.
        drop(store.commit(batch));
        store
    }
}

/// One record changed in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its table.
    pub table: Table,
    /// Its key in the table.
    pub key: String,
    /// Its new value (`None`: deleted).
    pub value: Option<Vec<u8>>,
}

/// The changes under the prefix after a revision, in revision order.
pub struct Feed {
    etcd: Etcd,
    stream: WatchStream,
    revision: i64,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("revision", &self.revision).finish()
    }
}

impl Etcd {
    /// Every table, read at one revision.
    pub async fn snapshot(&self) -> Result<Snapshot, EtcdError> {
        let mut revision = 0;
        let mut tables = Vec::with_capacity(Table::ALL.len());
        for table in Table::ALL {
            let (rows, at) = self.read(table, None, usize::MAX, revision).await?;
            revision = at;
            tables.push((table, rows));
        }
        Ok(Snapshot { revision, tables })
    }

    /// The changes after `revision` (a snapshot's).
    pub async fn feed(&self, revision: i64) -> Result<Feed, EtcdError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let prefix = format!("{}/", self.config.prefix);
        let stream = self
            .call("watch", |c| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move {
                    let mut watch = c.watch_client().max_decoding_message_size(usize::MAX);
                    watch.watch(prefix, Some(options)).await
                }
            })
            .await?;
        Ok(Feed { etcd: self.clone(), stream, revision })
    }
}

impl Feed {
    /// The revision the changes so far bring a reader to.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The next changes, in order (empty when etcd only said how far it is), and the revision
    /// they bring the reader to. Keys outside Cube's tables (the election's, the cluster
    /// record) are left out.
    pub async fn next(&mut self) -> Result<(Vec<Change>, i64), EtcdError> {
        loop {
            let answer = match self.stream.message().await {
                Ok(Some(answer)) => answer,
                Ok(None) => return Err(EtcdError::WatchEnded { reason: "stream closed".into() }),
                Err(source) => return Err(EtcdError::Request { operation: "watch", source }),
            };
            if answer.compact_revision() > 0 {
                return Err(EtcdError::Compacted { compacted: answer.compact_revision() });
            }
            if answer.canceled() {
                return Err(EtcdError::WatchEnded { reason: answer.cancel_reason().to_owned() });
            }
            if answer.created() && answer.events().is_empty() {
                continue;
            }
            let mut changes = Vec::with_capacity(answer.events().len());
            for event in answer.events() {
                let Some(kv) = event.kv() else { continue };
                self.revision = self.revision.max(kv.mod_revision());
                let Some((table, key)) = self.etcd.parse(kv.key()) else { continue };
                let value = match event.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                };
                changes.push(Change { table, key, value });
            }
            // A progress notice: every change up to its revision has been sent.
            if answer.events().is_empty()
                && let Some(header) = answer.header()
            {
                self.revision = self.revision.max(header.revision());
            }
            return Ok((changes, self.revision));
        }
    }
}
