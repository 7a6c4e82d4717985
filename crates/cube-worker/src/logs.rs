//! Serving a task's output: the whole log file or its last lines, optionally followed.
//!
//! Every driver writes a task's stdout and stderr to one file per task
//! ([`crate::driver::output`]), so logs read the same for containers and processes and stay
//! readable after the workload is gone. Following polls the file for growth every
//! [`FOLLOW_POLL`] (as `tail -f` does) and ends once the task has finished and everything it
//! wrote has been sent.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cube_core::TaskId;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::table::TaskTable;

/// How often a followed log is checked for new output.
pub(crate) const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How far back from the end `tail` looks for line starts.
const TAIL_WINDOW: u64 = 4 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

struct Reader {
    table: Arc<TaskTable>,
    id: TaskId,
    path: PathBuf,
    follow: bool,
    tail: Option<usize>,
    file: Option<tokio::fs::File>,
    /// The task was seen finished; one last read, then the stream ends.
    last_pass: bool,
}

/// The log of task `id`, kept at `path`, as a byte stream.
pub(crate) fn stream(
    table: Arc<TaskTable>,
    id: TaskId,
    path: PathBuf,
    follow: bool,
    tail: Option<usize>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let reader = Reader { table, id, path, follow, tail, file: None, last_pass: false };
    futures_util::stream::unfold(reader, |mut r| async move {
        match r.next_chunk().await {
            Ok(Some(bytes)) => Some((Ok(bytes), r)),
            Ok(None) => None,
            Err(e) => {
                // End the stream after reporting the error once.
                r.follow = false;
                r.last_pass = true;
                r.file = None;
                Some((Err(e), r))
            }
        }
    })
}

impl Reader {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            if self.file.is_none() {
                match tokio::fs::File::open(&self.path).await {
                    Ok(mut f) => {
                        if let Some(n) = self.tail {
                            let start = tail_start(&mut f, n).await?;
                            f.seek(SeekFrom::Start(start)).await?;
                        }
                        self.file = Some(f);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Nothing written yet (or a task that never started).
                        if !self.follow || self.wait_or_finish().await {
                            return Ok(None);
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(file) = self.file.as_mut() else { continue };
            let mut buf = vec![0u8; CHUNK];
            let n = file.read(&mut buf).await?;
            if n > 0 {
                buf.truncate(n);
                return Ok(Some(Bytes::from(buf)));
            }
            if !self.follow || self.wait_or_finish().await {
                return Ok(None);
            }
        }
    }

    /// At end of file while following: returns `true` when the stream should end (the task is
    /// finished and a last read found nothing), otherwise waits a poll period.
    async fn wait_or_finish(&mut self) -> bool {
        if self.last_pass {
            return true;
        }
        let finished = self.table.get(self.id).is_none_or(|t| t.state.is_terminal());
        // Output written just before the exit may still be on its way to the file (the docker
        // log copier lags the container slightly): read once more after a poll period.
        self.last_pass = finished;
        tokio::time::sleep(FOLLOW_POLL).await;
        false
    }
}

/// Offset of the start of the last `n` lines (within the last [`TAIL_WINDOW`] bytes).
async fn tail_start(f: &mut tokio::fs::File, n: usize) -> std::io::Result<u64> {
    let len = f.metadata().await?.len();
    let from = len.saturating_sub(TAIL_WINDOW);
    f.seek(SeekFrom::Start(from)).await?;
    let mut window = Vec::with_capacity(usize::try_from(len - from).unwrap_or(0));
    f.read_to_end(&mut window).await?;
    Ok(from + tail_offset(&window, n) as u64)
}

/// Index in `text` where its last `n` lines begin (a final line without `\n` counts).
fn tail_offset(text: &[u8], n: usize) -> usize {
    if n == 0 {
        return text.len();
    }
    // Ignore a trailing newline: it ends the last line rather than starting a new one.
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n').nth(n - 1).map_or(0, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::tail_offset;

    #[test]
    fn tail_finds_the_last_lines() {
        let text = b"one\ntwo\nthree\n";
        assert_eq!(&text[tail_offset(text, 1)..], b"three\n");
        assert_eq!(&text[tail_offset(text, 2)..], b"two\nthree\n");
        assert_eq!(&text[tail_offset(text, 10)..], text);
        assert_eq!(&text[tail_offset(text, 0)..], b"");
        let partial = b"a\nb\nunfinished";
        assert_eq!(&partial[tail_offset(partial, 1)..], b"unfinished");
        assert_eq!(&partial[tail_offset(partial, 2)..], b"b\nunfinished");
    }
}
