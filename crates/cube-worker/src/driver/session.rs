//! Interactive commands in a workload's environment (`cube exec`): what a driver hands back
//! for one, whatever runs it.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use tokio::io::AsyncWrite;

use super::DriverError;

/// What an exec asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SessionRequest {
    /// The task it runs in.
    pub task_id: cube_core::TaskId,
    /// The task's name.
    pub name: String,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// On a terminal (stdout and stderr are then one stream).
    pub tty: bool,
    /// Attach its stdin.
    pub stdin: bool,
    /// The terminal's first size, columns and rows.
    pub size: Option<(u16, u16)>,
}

/// Which stream output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Stdout (and, with a tty, everything).
    Stdout,
    /// Stderr.
    Stderr,
}

/// A running command.
pub(crate) struct Session {
    /// Its stdin: shutting it down closes it (a sink when not attached).
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    /// Its output as it comes; ends when the command has closed it.
    pub output: BoxStream<'static, Result<(Source, Bytes), DriverError>>,
    /// Resizes its terminal and, once the output has ended, says how it exited.
    pub control: Box<dyn SessionControl>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// What a driver can do with a running command besides its streams. Dropping it (with the
/// session) ends the command if it still runs.
pub(crate) trait SessionControl: Send + Sync {
    /// Sets its terminal's size (columns, rows); without a terminal nothing happens.
    fn resize(&self, width: u16, height: u16) -> BoxFuture<'_, Result<(), DriverError>>;

    /// Its exit code, once its output has ended.
    fn exit_code(&mut self) -> BoxFuture<'_, Result<i64, DriverError>>;
}
