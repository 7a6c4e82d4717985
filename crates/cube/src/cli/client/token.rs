//! `cube token`: users' named tokens with roles (admin only).

use std::process::ExitCode;

use comfy_table::Cell;
use cube_api::auth::{TokenRequest, TokenView};
use jiff::Timestamp;

use super::TokenCommand;
use super::api::Api;
use super::format;
use crate::cli::Output;

/// Runs `cube token ...`.
pub(super) async fn token(
    api: &Api,
    command: TokenCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let client = api.client();
    match command {
        TokenCommand::Create { name, role, expires } => {
            let request = TokenRequest { name, role, expires_in: expires };
            let created = client.create_token(&request).await.map_err(|e| api.error(&e))?;
            match output {
                Output::Json => format::emit_json(&created)?,
                Output::Table => {
                    // The secret alone on stdout, so `$(cube token create ...)` captures it.
                    format::emit(&created.secret)?;
                    format::note(&format!(
                        "token {} ({}) created{}; its secret is shown this once",
                        created.token.name,
                        created.token.role,
                        created
                            .token
                            .expires_at
                            .map(|at| format!(", valid until {at}"))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        TokenCommand::Ls => {
            let tokens = client.tokens().await.map_err(|e| api.error(&e))?;
            match output {
                Output::Json => format::emit_json(&tokens)?,
                Output::Table if tokens.is_empty() => {
                    format::note("no tokens: make one with `cube token create NAME --role ROLE`")
                }
                Output::Table => format::emit(&table(&tokens, Timestamp::now()))?,
            }
        }
        TokenCommand::Rotate { .. } => {
            let token = client.rotate_join_token().await.map_err(|e| api.error(&e))?;
            match output {
                Output::Json => format::emit_json(&token)?,
                Output::Table => {
                    format::emit(&token.token)?;
                    format::note(
                        "worker join token replaced; start workers with `cube worker --join ADDR --token TOKEN`",
                    );
                }
            }
        }
        TokenCommand::Revoke { name } => {
            let token = client.revoke_token(&name).await.map_err(|e| api.error(&e))?;
            match output {
                Output::Json => format::emit_json(&token)?,
                Output::Table => format::emit(&format!("token {} revoked", token.name))?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn table(tokens: &[TokenView], now: Timestamp) -> String {
    let mut table = format::table(
        &["NAME", "ROLE", "STATUS", "CREATED", "BY", "EXPIRES"],
        format::colour_stdout(),
    );
    for t in tokens {
        let status = match (t.revoked_at, t.expires_at) {
            (Some(at), _) => format!("revoked {}", format::ago(at, now)),
            (None, Some(at)) if at <= now => "expired".to_owned(),
            _ => "valid".to_owned(),
        };
        table.add_row(vec![
            Cell::new(&t.name),
            Cell::new(t.role),
            Cell::new(status),
            Cell::new(format::ago(t.created_at, now)),
            Cell::new(&t.created_by),
            Cell::new(format::or_dash(t.expires_at.map(|at| format::when(at, now)))),
        ]);
    }
    format::render(&table)
}
