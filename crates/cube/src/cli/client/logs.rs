//! `cube logs`: a task's output, copied to stdout as it arrives.

use std::io::Write;
use std::process::ExitCode;

use futures_util::StreamExt;

use super::LogsArgs;
use super::api::Api;

/// Runs `cube logs`.
pub(super) async fn logs(api: &Api, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let id = api.resolve_task(&args.id).await?;
    let mut stream = api.logs(id, args.follow, args.tail).await?;
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let bytes = chunk.map_err(|e| api.error(&e))?;
        // Flushed per chunk: a followed line must show up now, not when a buffer fills.
        match out.write_all(&bytes).and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader went away (`cube logs ID | head`): nothing more to do.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(e) => anyhow::bail!("cannot write to standard output: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
