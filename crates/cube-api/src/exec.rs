//! `GET /v1/tasks/{id}/exec`: a command run in a task's environment, over a WebSocket.
//!
//! Every message is a binary frame whose first byte is its [`Channel`]; the rest is the
//! payload. The client sends `Stdin` (bytes), `Resize` ([`Resize`] as JSON) and `StdinClose`
//! (no payload: the command's stdin is closed, the session goes on); the server sends `Stdout`,
//! `Stderr` and, last, one `Control` ([`Control`] as JSON: the exit code, or why the session
//! failed). Either end pings every 15 s, so idle sessions survive proxies.

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode};

/// What a frame carries (its first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Channel {
    /// Client → server: bytes for the command's stdin.
    Stdin = 0,
    /// Server → client: the command's stdout (everything, with a tty).
    Stdout = 1,
    /// Server → client: the command's stderr.
    Stderr = 2,
    /// Server → client, last: how it ended.
    Control = 3,
    /// Client → server: the terminal's new size.
    Resize = 4,
    /// Client → server: no more stdin (half-close).
    StdinClose = 5,
}

impl Channel {
    /// The channel of a frame's first byte.
    pub fn of(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Channel::Stdin,
            1 => Channel::Stdout,
            2 => Channel::Stderr,
            3 => Channel::Control,
            4 => Channel::Resize,
            5 => Channel::StdinClose,
            _ => return None,
        })
    }

    /// A frame on this channel with `payload`.
    pub fn frame(self, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(payload.len() + 1);
        frame.push(self as u8);
        frame.extend_from_slice(payload);
        frame
    }
}

/// The last frame: how the command ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// It exited with this code.
    Exit {
        /// The exit code.
        code: i64,
    },
    /// The session failed (the command could not start, the node went away).
    Error {
        /// Why, in words.
        message: String,
    },
}

/// A terminal size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Resize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// The query of an exec: `command` once per argument, `tty`, `stdin`, and with a tty its
/// first size (`width`, `height`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExecQuery {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Run it on a terminal (stdout and stderr are then one stream).
    pub tty: bool,
    /// Attach its stdin (otherwise it reads nothing).
    pub stdin: bool,
    /// The terminal's first size, with a tty.
    pub size: Option<Resize>,
}

impl ExecQuery {
    /// Parses a query string; a missing command or a malformed value is a 400.
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let bad = |message: String| ApiError::new(ErrorCode::InvalidArgument, message);
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|e| bad(format!("bad query string: {e}")))?;
        let mut q = ExecQuery { command: Vec::new(), tty: false, stdin: false, size: None };
        let (mut width, mut height) = (None, None);
        let flag = |k: &str, v: &str| match v {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(bad(format!("{k}={v:?}: expected true or false"))),
        };
        let size = |k: &str, v: &str| {
            v.parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(format!("{k}={v:?}: expected a number from 1 to 65535")))
        };
        for (k, v) in pairs {
            match k.as_str() {
                "command" => q.command.push(v),
                "tty" => q.tty = flag(&k, &v)?,
                "stdin" => q.stdin = flag(&k, &v)?,
                "width" => width = Some(size(&k, &v)?),
                "height" => height = Some(size(&k, &v)?),
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?}: expected command, tty, stdin, width, height"
                    )));
                }
            }
        }
        if q.command.first().is_none_or(String::is_empty) {
            return Err(bad(
                "command is missing: pass it as ?command=ARG, once per argument".into()
            ));
        }
        if let (Some(width), Some(height)) = (width, height) {
            q.size = Some(Resize { width, height });
        }
        Ok(q)
    }

    /// The query string of this exec.
    pub fn to_query(&self) -> String {
        let mut pairs: Vec<(&str, String)> =
            self.command.iter().map(|c| ("command", c.clone())).collect();
        pairs.push(("tty", self.tty.to_string()));
        pairs.push(("stdin", self.stdin.to_string()));
        if let Some(size) = self.size {
            pairs.push(("width", size.width.to_string()));
            pairs.push(("height", size.height.to_string()));
        }
        // Strings and numbers only: encoding cannot fail.
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

/// An exec, as its events carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExecRecord {
    /// The task it ran in.
    pub task: cube_core::TaskId,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Whether it ran on a terminal.
    pub tty: bool,
    /// How it ended (`None` while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Control>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn queries_round_trip_and_bad_ones_are_refused() {
        let q = ExecQuery {
            command: vec!["sh".into(), "-c".into(), "echo a && exit 7".into()],
            tty: true,
            stdin: true,
            size: Some(Resize { width: 80, height: 24 }),
        };
        assert_eq!(ExecQuery::parse(&q.to_query()).unwrap(), q);
        for (query, says) in [
            ("tty=true", "command is missing"),
            ("command=", "command is missing"),
            ("command=ls&tty=maybe", "expected true or false"),
            ("command=ls&width=0&height=2", "from 1 to 65535"),
            ("command=ls&user=root", "unknown parameter \"user\""),
        ] {
            let e = ExecQuery::parse(query).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert!(e.message.contains(says), "{query}: {}", e.message);
        }
    }

    #[test]
    fn frames_carry_their_channel_first() {
        let frame = Channel::Stderr.frame(b"oops");
        assert_eq!(frame, b"\x02oops");
        assert_eq!(Channel::of(frame[0]), Some(Channel::Stderr));
        assert_eq!(Channel::of(9), None);
        let control = serde_json::to_string(&Control::Exit { code: 7 }).unwrap();
        assert_eq!(control, r#"{"exit":{"code":7}}"#);
    }
}
