//! `cube stop`: ask a task to stop, and optionally wait until it has.

use std::process::ExitCode;

use super::StopArgs;
use super::api::Api;
use super::format;
use super::wait::{self, Goal, Outcome};
use crate::cli::Output;

/// Runs `cube stop`.
pub(super) async fn stop(api: &Api, args: StopArgs, output: Output) -> anyhow::Result<ExitCode> {
    let id = api.resolve_task(&args.id).await?;
    let (task, index) = api.stop(id).await?;
    if task.state.is_terminal() {
        match output {
            Output::Json => format::emit_json(&task)?,
            Output::Table => {
                format::emit(&format!("task {id} has already finished ({})", task.state))?
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    match output {
        Output::Json if !args.wait => format::emit_json(&task)?,
        Output::Json => {}
        Output::Table => format::emit(&format!("stopping task {id}"))?,
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    match wait::wait(api, task, index, Goal::Stopped, args.timeout).await? {
        Outcome::Reached(task) => {
            match output {
                Output::Json => format::emit_json(&task)?,
                Output::Table => format::emit(&format!("task {id} {}", task.state))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Failed(task, why) => wait::unreached(output, Some(&task), &why),
        Outcome::TimedOut(task, why) => wait::unreached(output, task.as_ref(), &why),
    }
}
