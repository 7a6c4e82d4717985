//! `cube exec`: runs a command in a task's environment, wherever the task runs, with its
//! output here, stdin from here with `-i`, on a terminal with `-t` (raw mode, window size
//! changes forwarded), and exits with the command's exit code.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use cube_api::exec::{Channel, Control, ExecQuery, Resize};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::ExecArgs;
use super::api::Api;
use super::format;

/// The exit code when the session itself failed (could not connect, the connection broke, the
/// command could not start): a command's own codes are 0 to 255, and 255 is the one a shell
/// gives for "the remote side failed" (as ssh does).
pub(super) const SESSION_FAILED: u8 = 255;
/// How often an idle session is pinged.
const PING: Duration = Duration::from_secs(15);

/// Runs `cube exec`: the command's exit code, or [`SESSION_FAILED`] with one line saying why.
pub(super) async fn exec(api: &Api, args: ExecArgs) -> anyhow::Result<ExitCode> {
    match session(api, args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            format::error_line(&format!("{e:#}"));
            Ok(ExitCode::from(SESSION_FAILED))
        }
    }
}

async fn session(api: &Api, args: ExecArgs) -> anyhow::Result<ExitCode> {
    if args.tty && !std::io::stdin().is_terminal() {
        anyhow::bail!("-t needs a terminal on standard input (drop -t to pipe data in with -i)");
    }
    let id = api.resolve_task(&args.id).await?;
    let size = if args.tty { terminal_size() } else { None };
    let query = ExecQuery { command: args.command, tty: args.tty, stdin: args.interactive, size };
    let path = format!("/v1/tasks/{id}/exec?{}", query.to_query());
    let socket = api.client().websocket(&path).await.map_err(|e| api.error(&e))?;
    // Restored when this returns, however it returns.
    let _raw = if args.tty { Some(RawMode::enable()?) } else { None };
    let (mut sink, mut incoming) = socket.split();
    let (outbox, mut queued) = mpsc::channel::<Message>(64);
    let sender = tokio::spawn(async move {
        while let Some(message) = queued.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
    });
    let mut helpers = Vec::new();
    if args.interactive {
        helpers.push(tokio::spawn(forward_stdin(outbox.clone())));
    }
    if args.tty {
        helpers.push(tokio::spawn(forward_resizes(outbox.clone())));
    }
    let pinger = outbox.clone();
    helpers.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PING, PING);
        loop {
            tick.tick().await;
            if pinger.send(Message::Ping(Bytes::new())).await.is_err() {
                return;
            }
        }
    }));
    let mut ended: Option<Control> = None;
    while let Some(message) = incoming.next().await {
        let frame = match message {
            Ok(Message::Binary(frame)) => frame,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Some((&first, payload)) = frame.split_first() else { continue };
        match Channel::of(first) {
            Some(Channel::Stdout) => write_all(&mut std::io::stdout(), payload)?,
            Some(Channel::Stderr) => write_all(&mut std::io::stderr(), payload)?,
            Some(Channel::Control) => {
                ended = serde_json::from_slice(payload).ok();
                break;
            }
            Some(Channel::Stdin | Channel::Resize | Channel::StdinClose) | None => {}
        }
    }
    for helper in helpers {
        helper.abort();
    }
    drop(outbox);
    let _ = tokio::time::timeout(Duration::from_secs(1), sender).await;
    drop(_raw);
    Ok(match ended {
        Some(Control::Exit { code }) => {
            // What a shell makes of it: 0 to 255.
            ExitCode::from(u8::try_from(code.rem_euclid(256)).unwrap_or(SESSION_FAILED))
        }
        Some(Control::Error { message }) => {
            format::error_line(&format!("exec in task {id}: {message}"));
            ExitCode::from(SESSION_FAILED)
        }
        None => {
            format::error_line(&format!(
                "exec in task {id}: the session ended before the command did"
            ));
            ExitCode::from(SESSION_FAILED)
        }
    })
}

fn write_all(out: &mut dyn Write, bytes: &[u8]) -> anyhow::Result<()> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // The reader went away (`cube exec ... | head`): the rest is not wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot write the command's output: {e}")),
    }
}

/// Sends standard input as it comes, then the half-close at its end.
async fn forward_stdin(outbox: mpsc::Sender<Message>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let frame = Message::Binary(Bytes::from(Channel::Stdin.frame(&buf[..n])));
        if outbox.send(frame).await.is_err() {
            return;
        }
    }
    let _ = outbox.send(Message::Binary(Bytes::from(Channel::StdinClose.frame(&[])))).await;
}

/// Sends the terminal's size whenever the window changes.
async fn forward_resizes(outbox: mpsc::Sender<Message>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut changes) = signal(SignalKind::window_change()) else { return };
    while changes.recv().await.is_some() {
        let Some(size) = terminal_size() else { continue };
        let json = serde_json::to_vec(&size).unwrap_or_default();
        let frame = Message::Binary(Bytes::from(Channel::Resize.frame(&json)));
        if outbox.send(frame).await.is_err() {
            return;
        }
    }
}

/// The size of the terminal on standard input, if it is one.
fn terminal_size() -> Option<Resize> {
    let size = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    (size.ws_col > 0 && size.ws_row > 0)
        .then_some(Resize { width: size.ws_col, height: size.ws_row })
}

/// The terminal in raw mode (keys go to the remote command as typed, Ctrl-C included) until
/// dropped, when its settings are restored.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enable() -> anyhow::Result<Self> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)
            .map_err(|e| anyhow::anyhow!("cannot read the terminal's settings: {e}"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw)
            .map_err(|e| anyhow::anyhow!("cannot set the terminal to raw mode: {e}"))?;
        Ok(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use rustix::termios::{OptionalActions, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.0);
    }
}
