//! Serves one exec session over its WebSocket: the command's output out, stdin, resizes and
//! the stdin half-close in, and last its exit code (`cube_api::exec`).
//!
//! Input and output move independently (a command blocked writing its output never stops its
//! stdin from being written, and the other way round), and a client that goes away ends the
//! session: the command is killed (process tasks) or left to the engine (docker has no way to
//! kill an exec), and nothing of it stays in the worker.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use cube_api::exec::{Channel, Control, Resize};
use cube_core::Chain;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, mpsc};

use crate::driver::{DriverError, Session, SessionControl, Source};

/// How often each end pings an idle session.
pub(crate) const PING: Duration = Duration::from_secs(15);
/// Frames waiting to be sent before output is held back.
const OUTBOX: usize = 64;

fn control(c: &Control) -> Message {
    // Two plain fields: encoding cannot fail.
    let json = serde_json::to_vec(c).unwrap_or_default();
    Message::Binary(Bytes::from(Channel::Control.frame(&json)))
}

/// Runs the session `session` (or says why it could not start) on `socket` until the
/// command ends or the client goes away.
pub(crate) async fn serve(
    socket: WebSocket,
    session: Result<Session, DriverError>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (mut sink, mut incoming) = socket.split();
    let Session { stdin, mut output, control: ctl } = match session {
        Ok(session) => session,
        Err(e) => {
            let message = Chain(&e).to_string();
            tracing::info!(error = %message, "exec could not start");
            let _ = sink.send(control(&Control::Error { message })).await;
            let _ = sink.close().await;
            return;
        }
    };
    let ctl: Arc<Mutex<Box<dyn SessionControl>>> = Arc::new(Mutex::new(ctl));
    // One sender owns the socket's writing half; output, pings and the end go through it.
    let (outbox, mut queued) = mpsc::channel::<Message>(OUTBOX);
    let sender = tokio::spawn(async move {
        while let Some(message) = queued.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    // The client's frames: stdin, resizes, the half-close. Ends when the client goes away.
    let input = {
        let ctl = Arc::clone(&ctl);
        tokio::spawn(async move {
            let mut stdin = Some(stdin);
            while let Some(Ok(message)) = incoming.next().await {
                let frame = match message {
                    Message::Binary(frame) => frame,
                    Message::Close(_) => return,
                    Message::Text(_) | Message::Ping(_) | Message::Pong(_) => continue,
                };
                let Some((&first, payload)) = frame.split_first() else { continue };
                match Channel::of(first) {
                    Some(Channel::Stdin) => {
                        if let Some(w) = stdin.as_mut()
                            && (w.write_all(payload).await.is_err() || w.flush().await.is_err())
                        {
                            // The command closed its stdin: what else comes is dropped.
                            stdin = None;
                        }
                    }
                    Some(Channel::StdinClose) => {
                        if let Some(mut w) = stdin.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                    Some(Channel::Resize) => {
                        if let Ok(size) = serde_json::from_slice::<Resize>(payload) {
                            let _ = ctl.lock().await.resize(size.width, size.height).await;
                        }
                    }
                    Some(Channel::Stdout | Channel::Stderr | Channel::Control) | None => {}
                }
            }
        })
    };
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING, PING);
    let mut input = input;
    let ended = loop {
        tokio::select! {
            item = output.next() => match item {
                Some(Ok((source, bytes))) => {
                    let channel = match source {
                        Source::Stdout => Channel::Stdout,
                        Source::Stderr => Channel::Stderr,
                    };
                    let frame = Message::Binary(Bytes::from(channel.frame(&bytes)));
                    if outbox.send(frame).await.is_err() {
                        break None;
                    }
                }
                Some(Err(e)) => break Some(Control::Error { message: Chain(&e).to_string() }),
                None => {
                    let code = ctl.lock().await.exit_code().await;
                    break Some(match code {
                        Ok(code) => Control::Exit { code },
                        Err(e) => Control::Error { message: Chain(&e).to_string() },
                    });
                }
            },
            _ = &mut input => break None,
            () = shutdown.cancelled() => {
                break Some(Control::Error { message: "the worker is shutting down".into() });
            }
            _ = ping.tick() => {
                if outbox.send(Message::Ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
        }
    };
    input.abort();
    match ended {
        Some(how) => {
            tracing::debug!(?how, "exec ended");
            let _ = outbox.send(control(&how)).await;
            drop(outbox);
            // Lets the last frames go out; a client that stopped reading is not waited for.
            let _ = tokio::time::timeout(Duration::from_secs(5), sender).await;
        }
        None => {
            tracing::debug!("exec client went away; ending the session");
            sender.abort();
        }
    }
    // Dropping the session's control ends a command still running (process tasks).
    drop(ctl);
}
