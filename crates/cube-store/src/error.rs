//! The store's one error type. As everywhere in Cube, `Display` says what failed and the
//! `#[source]` why (`cube_core::Chain` shows both).

use std::path::PathBuf;
use std::sync::Arc;

/// Errors of the store crate. Callers decide on the variant: a closed or fenced store, a batch
/// too large for the backend, a file that cannot be used, or a failed disk operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A value could not be encoded or decoded.
    #[error("{table}/{key}: stored value is not valid")]
    Codec {
        /// Table of the value.
        table: &'static str,
        /// Key of the value.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The file is held by another process (another `cube` with the same data directory).
    #[error("{}: in use by another process: stop the other cube first", path.display())]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not a database at all (or is damaged beyond recognition).
    #[error("{}: not a Cube database (or damaged beyond recognition)", path.display())]
    NotADatabase {
        /// The file.
        path: PathBuf,
        /// What the engine found.
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer Cube, whose format this version cannot read.
    #[error(
        "{}: written by a newer Cube (data format {found}, this version reads up to {supported})",
        path.display()
    )]
    NewerFormat {
        /// The database file.
        path: PathBuf,
        /// Format version found in the file.
        found: u32,
        /// Newest format this version reads.
        supported: u32,
    },
    /// The format version recorded in the file is unreadable.
    #[error("{}: unreadable format version: {found}", path.display())]
    BadFormat {
        /// The database file.
        path: PathBuf,
        /// What the file holds instead of a version number.
        found: String,
    },
    /// The storage engine failed (disk full, I/O error, corrupt file). Shared, because one failed
    /// group commit fails every batch in it.
    #[error("{}: {operation}", path.display())]
    Engine {
        /// The database file.
        path: PathBuf,
        /// What was being done, e.g. `cannot commit`.
        operation: &'static str,
        /// The engine's error.
        #[source]
        source: Arc<redb::Error>,
    },
    /// A file-system operation around the database failed (creating its directory, starting
    /// its writer thread).
    #[error("{}: {operation}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A thread decoding a table panicked (a bug).
    #[error("decoding table {table} panicked")]
    DecodePanicked {
        /// The table.
        table: &'static str,
    },
    /// The write was refused because this process no longer holds the leadership its writes
    /// require (another manager took over); nothing of the batch was applied.
    #[error("write refused: this process no longer holds leadership")]
    Fenced,
    /// The batch holds more writes than the backend accepts in one atomic commit; split it.
    #[error("batch of {ops} writes exceeds the store's limit of {limit}")]
    TooLarge {
        /// Writes in the batch.
        ops: usize,
        /// Most writes the backend commits atomically.
        limit: usize,
    },
    /// A store on other machines (etcd) could not be reached or did not answer in time; the
    /// batch may or may not have been applied. Shared, because one failed transaction fails
    /// every batch it carried.
    #[error("store unavailable: {operation}")]
    Unavailable {
        /// What was being done, e.g. `cannot commit`.
        operation: &'static str,
        /// Why.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The store was closed (its writer stopped) before the batch committed.
    #[error("store is closed")]
    Closed,
}
