//! `cube events`: follows the manager's event stream, one line per change, resuming by itself
//! from the last index it printed when the connection drops or the manager asks it to.

use std::process::ExitCode;

use cube_api::events::{Event, EventObject};

use super::EventsArgs;
use super::api::Api;
use super::follow::Follower;
use super::format::{emit, note};
use crate::cli::Output;

/// Runs `cube events`.
pub(super) async fn events(
    api: &Api,
    args: EventsArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let index = match args.index {
        Some(index) => index,
        // "From now" as an index, so a stream that drops before its first line resumes from
        // there and not from a later now.
        None => api.client().index().await.map_err(|e| api.error(&e))?,
    };
    let mut follower = Follower::new(api, index, args.topics);
    let trouble = |why: &str| note(why);
    while let Some(event) = follower.next(None, &trouble).await? {
        print(&event, output)?;
    }
    Ok(ExitCode::SUCCESS)
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
        EventObject::Endpoints(Some(e)) => {
            let n = e.endpoints.len();
            format!("{n} endpoint{}", if n == 1 { "" } else { "s" })
        }
        EventObject::Endpoints(None) => "publishes nothing".to_owned(),
        EventObject::Audit(Some(a)) => format!("{} {} -> {}", a.operation, a.request, a.status),
        EventObject::Task(None)
        | EventObject::Node(None)
        | EventObject::Service(None)
        | EventObject::Deployment(None)
        | EventObject::Exec(None)
        | EventObject::Audit(None) => "deleted".to_owned(),
    }
}
