//! The highest leader epoch this node has seen, kept durably: with highly available managers
//! every command of the leader carries its term's epoch (`X-Cube-Epoch`), and a command of a
//! lower epoch than one already seen comes from a leader that was replaced (it may have been
//! paused, or cut off) and is refused. A heartbeat answer carries the epoch too, so a node
//! learns of a new leader at its next heartbeat even before that leader sends it anything.

use std::sync::Arc;

use cube_store::{Batch, Store, StoreError, Table};

use crate::WorkerError;

/// The key of the highest epoch in the store's meta table.
const KEY: &str = "leader_epoch";

/// The highest epoch seen.
#[derive(Debug)]
pub(crate) struct Epochs {
    store: Arc<dyn Store>,
    seen: tokio::sync::Mutex<u64>,
}

impl Epochs {
    /// What `store` holds (0: never saw a leader's epoch). Reads the store: call from a
    /// blocking context.
    pub(crate) fn load(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let rows = store.scan(Table::Meta, None, usize::MAX)?;
        let seen = rows
            .iter()
            .find(|(k, _)| k == KEY)
            .and_then(|(_, v)| serde_json::from_slice::<u64>(v).ok())
            .unwrap_or(0);
        Ok(Self { store, seen: tokio::sync::Mutex::new(seen) })
    }

    /// Admits a command of `epoch`: refused if a higher one was seen; a higher one than any
    /// seen is stored durably before this returns (so a restart still refuses the old).
    pub(crate) async fn admit(&self, epoch: u64) -> Result<(), WorkerError> {
        let mut seen = self.seen.lock().await;
        if epoch < *seen {
            return Err(WorkerError::StaleLeader { epoch, seen: *seen });
        }
        if epoch > *seen {
            let mut batch = Batch::new();
            batch.put(Table::Meta, KEY, &epoch)?;
            self.store.commit(batch).await?;
            tracing::info!(
                epoch,
                previous = *seen,
                "a new leader's epoch: older ones are refused from now on"
            );
            *seen = epoch;
        }
        Ok(())
    }
}
