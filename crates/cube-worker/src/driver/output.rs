//! Where a task's output goes: one file per task, `<data dir>/tasks/<id>/output.log`, appended
//! to across restarts, written by every driver and served by the worker's `logs` endpoint.
//!
//! A driver that copies output into the file (docker) also keeps a [`Cursor`] beside it: the
//! engine's timestamp of the last entry copied. A restarted worker resumes from there, so what a
//! container wrote while no worker was copying still reaches the file. Delivery is at least
//! once: the cursor is saved at most every [`CURSOR_SAVE_EVERY`], so a crash may copy the last
//! moments again, but never skips any.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cube_core::TaskId;
use jiff::Timestamp;

use super::DriverError;

/// The files the worker keeps for its tasks.
#[derive(Clone, Debug)]
pub(crate) struct TaskFiles {
    root: PathBuf,
}

impl TaskFiles {
    /// The files under `data_dir`.
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self { root: data_dir.join("tasks") }
    }

    /// The directory of everything kept for task `id`.
    pub(crate) fn dir(&self, id: TaskId) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// The file holding task `id`'s output.
    pub(crate) fn log(&self, id: TaskId) -> PathBuf {
        self.dir(id).join("output.log")
    }
}

/// Opens (creating) a task's log file for appending, with its directory.
pub(crate) async fn open_log(path: &Path) -> Result<std::fs::File, DriverError> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| DriverError::File { path: dir.to_owned(), source })?;
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|source| DriverError::File { path: path.to_owned(), source })?;
    Ok(file.into_std().await)
}

/// Longest time between two saves of a cursor while output flows.
pub(crate) const CURSOR_SAVE_EVERY: Duration = Duration::from_millis(500);

/// How far the copying of a log got: the timestamp of the last entry written.
#[derive(Debug)]
pub(crate) struct Cursor {
    path: PathBuf,
    last: Option<Timestamp>,
    saved: Option<Timestamp>,
    saved_at: tokio::time::Instant,
}

impl Cursor {
    /// The cursor of the log at `log_path`, starting at `last`.
    pub(crate) fn new(log_path: &Path, last: Option<Timestamp>) -> Self {
        Self {
            path: log_path.with_extension("cursor"),
            last,
            saved: last,
            saved_at: tokio::time::Instant::now(),
        }
    }

    /// Where copying got to before: the saved cursor, else (for a log written before cursors
    /// were kept) the log file's last modification, else nothing (copy everything).
    pub(crate) async fn resume_point(log_path: &Path) -> Option<Timestamp> {
        let cursor = log_path.with_extension("cursor");
        if let Ok(text) = tokio::fs::read_to_string(&cursor).await
            && let Ok(at) = text.trim().parse::<Timestamp>()
        {
            return Some(at);
        }
        let modified = tokio::fs::metadata(log_path).await.ok()?.modified().ok()?;
        Timestamp::try_from(modified).ok()
    }

    /// The last entry copied.
    #[cfg(test)]
    pub(crate) fn last(&self) -> Option<Timestamp> {
        self.last
    }

    /// Records that the entry stamped `at` was written; whether it is time to save (flush the
    /// log first: a cursor must never be ahead of what the file holds).
    pub(crate) fn advance(&mut self, at: Timestamp) -> bool {
        self.last = Some(at);
        self.saved_at.elapsed() >= CURSOR_SAVE_EVERY
    }

    /// Saves the cursor (atomically: a torn write must not lose the position).
    pub(crate) async fn save(&mut self) {
        let Some(at) = self.last else { return };
        if self.saved == Some(at) {
            return;
        }
        let tmp = self.path.with_extension("cursor.tmp");
        let written = async {
            tokio::fs::write(&tmp, at.to_string()).await?;
            tokio::fs::rename(&tmp, &self.path).await
        };
        match written.await {
            Ok(()) => {
                self.saved = Some(at);
                self.saved_at = tokio::time::Instant::now();
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot save a log cursor")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_saved_cursor_is_where_copying_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("output.log");
        assert_eq!(Cursor::resume_point(&log).await, None, "nothing copied yet");
        std::fs::write(&log, "old\n").unwrap();
        let modified = Cursor::resume_point(&log).await.unwrap();
        assert!(modified <= Timestamp::now(), "a log without a cursor resumes from its mtime");

        let at: Timestamp = "2026-12-01T12:00:00.123456789Z".parse().unwrap();
        let mut cursor = Cursor::new(&log, None);
        cursor.advance(at);
        cursor.save().await;
        assert_eq!(Cursor::resume_point(&log).await, Some(at));
        assert_eq!(cursor.last(), Some(at));
    }
}
