//! `cube events`: follows the manager's event stream, one line per change, resuming by itself
//! from the last index it printed when the connection drops or the manager asks it to.

use std::process::ExitCode;
use std::time::Duration;

use cube_api::ErrorCode;
use cube_api::events::{Event, EventObject, NoticeType, StreamLine};
use futures_util::StreamExt;

use super::EventsArgs;
use super::api::Api;
use super::format::{emit, note};
use crate::cli::Output;

/// Longest pause between attempts to reach the manager again.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Runs `cube events`.
pub(super) async fn events(
    api: &Api,
    args: EventsArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut last = args.index;
    let mut retry = Duration::from_millis(200);
    loop {
        let stream = match api.client().events(last, &args.topics).await {
            Ok(stream) => stream,
            Err(e) if e.code() == Some(ErrorCode::Gone) || !e.is_transient() => {
                return Err(api.error(&e));
            }
            Err(e) => {
                note(&format!("{}; retrying in {retry:?}", api.error(&e)));
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
        };
        retry = Duration::from_millis(200);
        let mut stream = stream;
        let mut lagged = false;
        while let Some(line) = stream.next().await {
            match line {
                Ok(StreamLine::Event(event)) => {
                    last = Some(event.index);
                    print(&event, output)?;
                }
                Ok(StreamLine::Notice(n)) => {
                    last = last.max(Some(n.index));
                    lagged = n.kind == NoticeType::Lagged;
                }
                Err(e) => {
                    note(&format!("{}; resuming", api.error(&e)));
                    break;
                }
            }
        }
        if lagged {
            note(&format!("fell behind at index {}; catching up", last.unwrap_or(0)));
        } else {
            // The manager closed the stream (it may be restarting): come back shortly.
            tokio::time::sleep(retry).await;
        }
    }
}

fn print(event: &Event, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        let text = serde_json::to_string(event)
            .map_err(|e| anyhow::anyhow!("cannot encode JSON output: {e}"))?;
        return emit(&text);
    }
    let at = event.at.strftime("%H:%M:%S%.3f");
    let by = match &event.by {
        cube_api::events::Actor::Api => "api".to_owned(),
        cube_api::events::Actor::Manager => "manager".to_owned(),
        cube_api::events::Actor::Node { node } => format!("node {}", node.short()),
    };
    let kind = format!("{:?}", event.kind);
    emit(&format!(
        "{:<8} {at}  {kind:<22} {:<14} {:<22} by {by}",
        event.index,
        short(&event.key),
        detail(&event.object)
    ))
}

/// Ids shortened as the other tables show them; names kept whole.
fn short(key: &str) -> String {
    // Task, node and deployment ids are the same kind of UUID.
    key.parse::<cube_core::TaskId>().map_or_else(|_| key.to_owned(), |id| id.short())
}

fn detail(object: &EventObject) -> String {
    match object {
        EventObject::Task(Some(t)) => match &t.reason {
            Some(reason) => format!("{} {}: {reason}", t.name, t.state),
            None => format!("{} {}", t.name, t.state),
        },
        EventObject::Node(Some(n)) => format!("{} {}", n.name, n.state),
        EventObject::Service(Some(s)) => {
            format!("v{} {}/{} healthy", s.version, s.instances.healthy, s.instances.desired)
        }
        EventObject::Deployment(Some(d)) => {
            format!("{} v{}: {}", d.service, d.version, d.description)
        }
        EventObject::Exec(Some(e)) => {
            let command = super::format::shell_words(&e.command);
            match &e.ended {
                None => command,
                Some(cube_api::exec::Control::Exit { code }) => format!("{command}: exit {code}"),
                Some(cube_api::exec::Control::Error { message }) => format!("{command}: {message}"),
            }
        }
        EventObject::Task(None)
        | EventObject::Node(None)
        | EventObject::Service(None)
        | EventObject::Deployment(None)
        | EventObject::Exec(None) => "deleted".to_owned(),
    }
}
