//! `cube audit`: the manager's record of every mutation (admin only).

use std::process::ExitCode;

use comfy_table::Cell;
use cube_api::auth::{AuditQuery, AuditRecord};
use jiff::Timestamp;

use super::AuditArgs;
use super::api::Api;
use super::format;
use crate::cli::Output;

/// Runs `cube audit`.
pub(super) async fn audit(api: &Api, args: AuditArgs, output: Output) -> anyhow::Result<ExitCode> {
    let now = Timestamp::now();
    let since = args.since.as_deref().map(|s| since(s, now)).transpose()?;
    let query = AuditQuery { since, who: args.who, limit: Some(args.limit) };
    let records = api.client().audit(&query).await.map_err(|e| api.error(&e))?;
    match output {
        Output::Json => format::emit_json(&records)?,
        Output::Table if records.is_empty() => format::note("no records match"),
        Output::Table => format::emit(&table(&records, format::colour_stdout()))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since`: a time, or a duration before `now`.
fn since(text: &str, now: Timestamp) -> anyhow::Result<Timestamp> {
    if let Ok(at) = text.parse::<Timestamp>() {
        return Ok(at);
    }
    let ago = cube_core::units::parse_duration(text).map_err(|_| {
        anyhow::anyhow!(
            "--since {text}: expected a duration (1h, 7d) or a time (2026-12-01T00:00:00Z)"
        )
    })?;
    jiff::SignedDuration::try_from(ago)
        .ok()
        .and_then(|d| now.checked_sub(d).ok())
        .ok_or_else(|| anyhow::anyhow!("--since {text}: too far in the past"))
}

fn table(records: &[AuditRecord], colour: bool) -> String {
    let mut table =
        format::table(&["TIME (UTC)", "WHO", "ROLE", "OPERATION", "REQUEST", "STATUS"], colour);
    for r in records {
        table.add_row(vec![
            Cell::new(r.at.strftime("%Y-%m-%d %H:%M:%S")),
            Cell::new(&r.who),
            Cell::new(r.role.map_or_else(|| "node".to_owned(), |role| role.to_string())),
            Cell::new(&r.operation),
            Cell::new(&r.request),
            Cell::new(r.status),
        ]);
    }
    format::render(&table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        assert_eq!(since("1h", now).unwrap(), "2026-12-03T11:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(
            since("2026-12-01T00:00:00Z", now).unwrap(),
            "2026-12-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert!(since("yesterday", now).is_err());
    }
}
