//! The cluster token: one shared secret that every API request must carry as
//! `Authorization: Bearer <token>` when the server was started with one.
//!
//! The API starts containers, which is root on the node, so anything but a loopback listener
//! needs it (the `cube` binary refuses otherwise). Every client, the manager and every worker use
//! the same token, as Swarm's join token and Nomad's bootstrap token are shared. Serve over TLS
//! ([`crate::tls`]) so the token cannot be sniffed on the wire; per-user tokens with scopes are
//! the next step.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use cube_api::{ApiError, ErrorCode};

/// Shortest token accepted: short secrets can be guessed over the network.
pub const MIN_TOKEN_LEN: usize = 16;

/// Paths served without a token: liveness probes, which reveal nothing but the server's role,
/// name and version.
const OPEN_PATHS: &[&str] = &["/v1/health"];

/// A cluster token. Its `Debug` form never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    /// The secret, to send.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ
    /// (only on their lengths), so the secret cannot be found byte by byte by timing.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Fewer than [`MIN_TOKEN_LEN`] characters.
    #[error("a token needs at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)")]
    TooShort,
    /// Whitespace or control characters, which do not survive an HTTP header intact.
    #[error("a token may only hold printable characters without spaces")]
    BadCharacter,
}

impl FromStr for Token {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacter);
        }
        if s.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort);
        }
        Ok(Self(Arc::from(s)))
    }
}

/// Middleware: answers 401 (JSON error, `WWW-Authenticate: Bearer`) unless the request carries
/// the token, except on [`OPEN_PATHS`].
pub(crate) async fn require_token(
    State(token): State<Token>,
    req: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    match presented {
        Some(p) if token.matches(p) => next.run(req).await,
        Some(_) => unauthorized("wrong token"),
        None => unauthorized("this server requires a token: set CUBE_TOKEN or pass --token"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        crate::server::HttpError(ApiError::new(ErrorCode::Unauthorized, message)).into_response();
    response.headers_mut().insert(WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_on_parse_and_compared_whole() {
        assert_eq!("short".parse::<Token>(), Err(TokenError::TooShort));
        assert_eq!("has a space in it ok".parse::<Token>(), Err(TokenError::BadCharacter));
        let t: Token = "0123456789abcdef".parse().unwrap();
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b"0123456789abcde"));
        assert!(!t.matches(b"0123456789abcdef0"));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }
}
