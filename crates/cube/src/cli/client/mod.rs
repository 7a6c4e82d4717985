//! Client commands: they talk to a manager's HTTP API.

use std::process::ExitCode;

use clap::Subcommand;

use super::GlobalArgs;

/// Commands that talk to a manager.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Ask a task to stop.
    ///
    /// Example: cube stop 0190a1b2
    Stop {
        /// Task id (or a unique prefix).
        id: String,
    },
}

/// Runs a client command.
pub fn run(command: ClientCommand, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let _ = (command, global);
    anyhow::bail!("not implemented yet")
}
