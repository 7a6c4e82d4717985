//! [`EtcdStore`]: the [`Store`] of a highly available manager.
//!
//! Batches go to one writer task in the order `commit` is called; it packs what is queued
//! into as few transactions as etcd's limits allow (a group commit: many batches share one
//! round trip and one fsync of etcd's log) and sends them one after the other. Every
//! transaction is guarded by the writer's [`Fence`]: it applies only while the leader key the
//! fence names still exists with the revision it was created at, so once another manager has
//! been elected nothing this one sends is applied. A store without a fence (a follower)
//! refuses every write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cube_store::{Batch, Commit, Op, Store, StoreError, Table};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tokio::sync::{mpsc, oneshot};

use crate::Etcd;

/// Batches taken from the queue for one round of transactions.
const GROUP: usize = 512;

/// What a write must prove: the leader key of the term it was made in, and that key's create
/// revision (the term's epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The leader key.
    pub key: Vec<u8>,
    /// Its create revision.
    pub revision: i64,
}

struct Job {
    batch: Batch,
    done: oneshot::Sender<Result<(), StoreError>>,
}

struct Shared {
    etcd: Etcd,
    fence: Mutex<Option<Fence>>,
    runtime: tokio::runtime::Handle,
}

/// A [`Store`] in etcd under the cluster's prefix.
pub struct EtcdStore {
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("etcd", &self.shared.etcd).finish()
    }
}

impl EtcdStore {
    /// A store with its writer task (which ends once the store is dropped and its queue is
    /// done). Call from within the runtime.
    pub(crate) fn new(etcd: Etcd) -> Self {
        let runtime = tokio::runtime::Handle::current();
        let shared = Arc::new(Shared { etcd, fence: Mutex::new(None), runtime });
        let (jobs, queue) = mpsc::unbounded_channel();
        shared.runtime.spawn(write_loop(Arc::clone(&shared), queue));
        Self { shared, jobs }
    }

    /// Writes from now on must prove `fence` (`None`: every write is refused).
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.shared.fence.lock().unwrap_or_else(|e| e.into_inner()) = fence;
    }
}

impl Store for EtcdStore {
    fn commit(&self, batch: Batch) -> Commit {
        let (done, receiver) = oneshot::channel();
        match self.jobs.send(Job { batch, done }) {
            Ok(()) => Commit::pending(receiver),
            Err(_) => Commit::ready(Err(StoreError::Closed)),
        }
    }

    /// Blocks on the runtime: call from a blocking thread, as [`Store::load`] asks.
    fn load(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let read = self.shared.etcd.read(table, None, usize::MAX, 0);
        let (rows, _) = self.shared.runtime.block_on(read).map_err(unavailable("cannot read"))?;
        Ok(rows)
    }

    /// Blocks on the runtime: call from a blocking thread, as [`Store::scan`] asks.
    fn scan(
        &self,
        table: Table,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let read = self.shared.etcd.read(table, after, limit, 0);
        let (rows, _) = self.shared.runtime.block_on(read).map_err(unavailable("cannot read"))?;
        Ok(rows)
    }

    fn kind(&self) -> &'static str {
        "etcd"
    }
}

/// The first key after every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: everything after them.
    vec![0]
}

fn unavailable(operation: &'static str) -> impl Fn(crate::EtcdError) -> StoreError {
    move |e| StoreError::Unavailable { operation, source: Arc::new(e) }
}

async fn write_loop(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < GROUP {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        write(&shared, jobs).await;
    }
}

/// One transaction's writes, and the jobs whose last write it carries.
#[derive(Default)]
struct Txnful {
    ops: Vec<TxnOp>,
    /// Where each key's write is in `ops`: etcd refuses a key twice in one transaction, and
    /// within one atomic transaction only the last write of a key matters.
    keys: HashMap<String, (usize, usize)>,
    bytes: usize,
    finishes: Vec<usize>,
}

impl Txnful {
    /// Whether a write of `key` of `bytes` fits.
    fn fits(&self, key: &str, bytes: usize, limits: crate::Limits) -> bool {
        if self.ops.is_empty() {
            return true;
        }
        match self.keys.get(key) {
            Some(&(_, old)) => self.bytes - old + bytes <= limits.bytes,
            None => self.ops.len() < limits.ops && self.bytes + bytes <= limits.bytes,
        }
    }

    fn add(&mut self, key: String, op: TxnOp, bytes: usize) {
        match self.keys.get_mut(&key) {
            Some((at, old)) => {
                self.bytes = self.bytes - *old + bytes;
                *old = bytes;
                self.ops[*at] = op;
            }
            None => {
                self.keys.insert(key, (self.ops.len(), bytes));
                self.ops.push(op);
                self.bytes += bytes;
            }
        }
    }
}

/// Packs `jobs` into transactions within the limits and sends them in order; each job learns
/// its outcome once the transaction with its last write answered. After a failure nothing
/// more of this round is sent (later batches must not land without the earlier).
async fn write(shared: &Shared, jobs: Vec<Job>) {
    let etcd = &shared.etcd;
    let limits = etcd.config.limits;
    let mut txns: Vec<Txnful> = vec![Txnful::default()];
    let mut done = Vec::with_capacity(jobs.len());
    for (j, job) in jobs.into_iter().enumerate() {
        for op in job.batch.ops {
            let (key, txn_op, bytes) = match op {
                Op::Put { table, key, value } => {
                    let key = etcd.key(table, &key);
                    let bytes = key.len() + value.len();
                    (key.clone(), TxnOp::put(key, value, None), bytes)
                }
                Op::Delete { table, key } => {
                    let key = etcd.key(table, &key);
                    (key.clone(), TxnOp::delete(key.as_str(), None), key.len())
                }
            };
            let fits = txns.last().is_some_and(|t| t.fits(&key, bytes, limits));
            if !fits {
                txns.push(Txnful::default());
            }
            if let Some(txn) = txns.last_mut() {
                txn.add(key, txn_op, bytes);
            }
        }
        if let Some(t) = txns.last_mut() {
            t.finishes.push(j);
        }
        done.push(Some(job.done));
    }
    let mut failure: Option<StoreError> = None;
    for txn in txns {
        if failure.is_none() && !txn.ops.is_empty() {
            failure = send(shared, txn.ops).await.err();
        }
        for j in txn.finishes {
            if let Some(tx) = done[j].take() {
                let _ = tx.send(match &failure {
                    None => Ok(()),
                    Some(e) => Err(same(e)),
                });
            }
        }
    }
}

/// One guarded transaction.
async fn send(shared: &Shared, ops: Vec<TxnOp>) -> Result<(), StoreError> {
    let fence = shared.fence.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(fence) = fence else { return Err(StoreError::Fenced) };
    let count = ops.len();
    let txn = Txn::new()
        .when([Compare::create_revision(fence.key, CompareOp::Equal, fence.revision)])
        .and_then(ops);
    // Repeating the transaction on another member is safe: its writes are the same again,
    // and nothing after it is sent before it answered.
    let answer = shared.etcd.call("commit", |c| {
        let txn = txn.clone();
        async move { c.kv_client().txn(txn).await }
    });
    match answer.await {
        Ok(answer) if answer.succeeded() => Ok(()),
        Ok(_) => Err(StoreError::Fenced),
        Err(crate::EtcdError::Request {
            source: etcd_client::Error::GRpcStatus(status), ..
        }) if status.code() == tonic::Code::InvalidArgument => {
            // etcd refuses a transaction above its --max-txn-ops or --max-request-bytes as an
            // invalid argument (this store never repeats a key in one, the other such case):
            // this store's limits are set above the server's.
            Err(StoreError::TooLarge { ops: count, limit: shared.etcd.config.limits.ops })
        }
        Err(e) => Err(StoreError::Unavailable { operation: "cannot commit", source: Arc::new(e) }),
    }
}

/// The same outcome for every batch of a failed transaction.
fn same(e: &StoreError) -> StoreError {
    match e {
        StoreError::Fenced => StoreError::Fenced,
        StoreError::TooLarge { ops, limit } => StoreError::TooLarge { ops: *ops, limit: *limit },
        StoreError::Unavailable { operation, source } => {
            StoreError::Unavailable { operation, source: Arc::clone(source) }
        }
        _ => StoreError::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(prefix_end(b"/cube/tasks/"), b"/cube/tasks0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn a_transaction_keeps_one_write_per_key_and_stays_within_its_limits() {
        let limits = Limits { ops: 2, bytes: 10 };
        let mut txn = Txnful::default();
        assert!(txn.fits("k1", 100, limits), "an empty transaction takes anything");
        txn.add("k1".into(), TxnOp::delete("k1", None), 4);
        assert!(txn.fits("k2", 6, limits));
        assert!(!txn.fits("k2", 7, limits), "over the bytes");
        txn.add("k2".into(), TxnOp::delete("k2", None), 6);
        assert!(!txn.fits("k3", 0, limits), "over the writes");
        // A later write of a key replaces the earlier one, in its place.
        assert!(txn.fits("k1", 4, limits));
        assert!(!txn.fits("k1", 5, limits));
        txn.add("k1".into(), TxnOp::delete("k1", None), 2);
        assert_eq!((txn.ops.len(), txn.bytes), (2, 8));
    }
}
