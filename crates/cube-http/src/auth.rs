//! Who calls an API, and what they may call.
//!
//! Authentication: every request but a health check carries `Authorization: Bearer <token>`
//! when the server requires credentials. The server's [`Authenticate`] turns it into a
//! [`Caller`]: the **cluster token** (one shared secret, the bootstrap admin, which workers
//! also send) is checked here ([`ClusterToken`]); the manager also knows users' named tokens,
//! each with a role. The API starts containers, which is root on the node, so anything but a
//! loopback listener needs credentials (the `cube` binary refuses otherwise); serve over TLS
//! ([`crate::tls`]) so they cannot be sniffed on the wire.
//!
//! Authorization: each operation declares its [`Access`] (`cube_api::openapi`), and the route
//! checks the caller against it ([`Caller::may`]): 401 for credentials refused, 403 naming what
//! is missing for a caller who may not.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use cube_api::auth::Role;
use cube_api::openapi::Access;
use cube_api::{ApiError, ErrorCode};
use cube_pki::Identity;

use crate::mtls::Peer;

/// Shortest token accepted: short secrets can be guessed over the network.
pub const MIN_TOKEN_LEN: usize = 16;

/// Paths served without a token: liveness probes, which reveal nothing but the server's role,
/// name and version, a worker's join, whose join secret is its credential, and the UI's
/// sign-in page.
const OPEN_PATHS: &[&str] = &["/v1/health", "/v1/cluster/join", "/ui/sign-in"];

/// Where the web UI is served. A browser there sends its token in the [`SESSION_COOKIE`]
/// (set by the sign-in page) rather than an `Authorization` header, which a browser cannot
/// add to a link or a form; only these paths take the cookie, so no `/v1` route can be made
/// to act by a page's form.
pub const UI_PREFIX: &str = "/ui";
/// The UI's stylesheet and script, served to anyone (they hold nothing of the cluster).
const UI_ASSETS: &str = "/ui/assets/";
/// The UI's event stream: a refused one is told so in its own framing.
const UI_LIVE: &str = "/ui/live";

/// The cookie holding a browser's token: `HttpOnly` (no script reads it), `SameSite=Strict`
/// (no other site's page sends it), scoped to [`UI_PREFIX`].
pub const SESSION_COOKIE: &str = "cube_session";

/// A browser's session on a UI path, in the request's extensions next to its [`Caller`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrowserSession {
    /// The token every form must send back (CSRF): derived from the credential itself, so
    /// any manager of the cluster can check it and no page of another site can know it.
    pub csrf: String,
    /// Whether the credential came from the session cookie (rather than a header or none).
    pub cookie: bool,
    /// The credential presented, so a long-lived answer (a page's live stream) can check it
    /// again: a token revoked meanwhile ends the stream.
    credential: Option<Secret>,
}

/// A credential held in memory; its `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq)]
struct Secret(Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl BrowserSession {
    fn for_credential(credential: Option<&[u8]>, cookie: bool) -> Self {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"cube-ui-csrf\0");
        context.update(credential.unwrap_or(b"anonymous"));
        let digest = context.finish();
        let csrf = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        Self { csrf, cookie, credential: credential.map(|c| Secret(Arc::from(c))) }
    }

    /// Whether the credential this session was opened with still opens what `access` needs
    /// on `auth` (a revoked or expired token no longer does).
    pub fn still_may(&self, auth: &dyn Authenticate, access: Access) -> bool {
        let credential = self.credential.as_ref().map(|c| &*c.0);
        auth.authenticate(credential).is_ok_and(|caller| caller.may(access).is_ok())
    }

    /// Whether `presented` (a form's field) is this session's CSRF token, in constant time.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.csrf.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

fn is_ui(path: &str) -> bool {
    path == UI_PREFIX || path.strip_prefix(UI_PREFIX).is_some_and(|rest| rest.starts_with('/'))
}

/// The value of cookie `name` in `headers`.
pub fn cookie<'h>(headers: &'h axum::http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

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

/// Who made a request, as the server's [`Authenticate`] established. The authentication
/// middleware puts it in the request's extensions; handlers read it from there (the audit log
/// names it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// A user token's name, a node's id, `cluster` for the cluster token, `anonymous` on a
    /// server that requires no credentials.
    pub name: Arc<str>,
    /// What it may call.
    pub grant: Grant,
}

/// What a caller may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Everything: the cluster token (the bootstrap admin, and what workers sent before
    /// they had identities of their own), or anyone on a server that requires no credentials.
    All,
    /// The routes of this role and the ones below it; never a node's routes.
    User(Role),
    /// A node's routes only.
    Node,
}

impl Caller {
    /// The cluster token's caller.
    pub fn cluster() -> Self {
        Self { name: Arc::from(CLUSTER_CALLER), grant: Grant::All }
    }

    /// Anyone, on a server that requires no credentials.
    pub fn anonymous() -> Self {
        Self { name: Arc::from("anonymous"), grant: Grant::All }
    }

    /// The role it acts with: what the audit log records (`None` for a node).
    pub fn role(&self) -> Option<Role> {
        match self.grant {
            Grant::All => Some(Role::Admin),
            Grant::User(role) => Some(role),
            Grant::Node => None,
        }
    }

    /// Whether it may call an operation of `access`; if not, why (for the 403).
    pub fn may(&self, access: Access) -> Result<(), String> {
        match (access, self.grant) {
            (Access::Open, _) | (_, Grant::All) | (Access::Node, Grant::Node) => Ok(()),
            (Access::Role(needed), Grant::User(has)) if has >= needed => Ok(()),
            (Access::Role(needed), Grant::User(has)) => {
                Err(format!("this needs the `{needed}` role; token `{}` has `{has}`", self.name))
            }
            (Access::Role(_), Grant::Node) => {
                Err(format!("node `{}`'s credentials open only the node routes", self.name))
            }
            (Access::Node, Grant::User(_)) => Err(format!(
                "only a node (or the cluster token) may call this; token `{}` is a user's",
                self.name
            )),
        }
    }
}

/// The name the cluster token acts under.
pub const CLUSTER_CALLER: &str = "cluster";

/// Why credentials were refused (a 401).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// How a server tells who calls it: from the bearer token (absent: `None`). Implemented by
/// [`ClusterToken`] (the worker, and any server with one shared token) and by the manager
/// (which also knows users' tokens).
pub trait Authenticate: Send + Sync + 'static {
    /// The caller presenting `bearer`, or why not.
    fn authenticate(&self, bearer: Option<&[u8]>) -> Result<Caller, Refused>;

    /// Whether a request without credentials is refused (a server with a cluster token).
    fn requires_credentials(&self) -> bool;

    /// The caller at the other end of a connection whose verified certificate names `peer`
    /// ([`crate::mtls`]); `on_behalf` is the [`NODE_HEADER`] of the request, the node a
    /// manager passes a request on for. By default certificates open nothing.
    fn authenticate_peer(
        &self,
        peer: &Identity,
        on_behalf: Option<&str>,
    ) -> Result<Caller, Refused> {
        let _ = (peer, on_behalf);
        Err(Refused("this server takes no certificates".into()))
    }
}

/// The header with which a manager passes on a node's request (a follower to its leader):
/// the node's id. Believed only from a peer with a manager's certificate.
pub const NODE_HEADER: &str = "x-cube-node";

/// One shared token, or none (then every caller is [`Caller::anonymous`]).
#[derive(Clone, Debug)]
pub struct ClusterToken(pub Option<Token>);

impl ClusterToken {
    /// What `bearer` proves against the cluster token: `Some(cluster)` when it is the token,
    /// `None` when it is not (another authenticator may know it), and the caller to use when
    /// nothing is presented.
    pub fn check(&self, bearer: Option<&[u8]>) -> Result<Option<Caller>, Refused> {
        match (&self.0, bearer) {
            (_, Some(b)) if self.0.as_ref().is_some_and(|t| t.matches(b)) => {
                Ok(Some(Caller::cluster()))
            }
            (_, Some(_)) => Ok(None),
            (Some(_), None) => {
                Err(Refused("this server requires a token: set CUBE_TOKEN or pass --token".into()))
            }
            (None, None) => Ok(Some(Caller::anonymous())),
        }
    }
}

impl Authenticate for ClusterToken {
    fn authenticate(&self, bearer: Option<&[u8]>) -> Result<Caller, Refused> {
        match self.check(bearer)? {
            Some(caller) => Ok(caller),
            // A server that requires nothing ignores what it cannot check, as it always did
            // (a manager with a token calling a worker without one).
            None if self.0.is_none() => Ok(Caller::anonymous()),
            None => Err(Refused("wrong token".into())),
        }
    }

    fn requires_credentials(&self) -> bool {
        self.0.is_some()
    }

    /// A node's server: its managers' certificates open everything, no node's opens anything.
    fn authenticate_peer(
        &self,
        peer: &Identity,
        _on_behalf: Option<&str>,
    ) -> Result<Caller, Refused> {
        match peer {
            Identity::Manager(name) => {
                Ok(Caller { name: Arc::from(format!("manager {name}")), grant: Grant::All })
            }
            Identity::Node(_) => Err(Refused("a node accepts only its managers".into())),
        }
    }
}

/// A server's [`Authenticate`], shared by its router.
pub type Authenticator = Arc<dyn Authenticate>;

/// Why a request from a browser is refused, if it is. The API sends no CORS headers, so no
/// other site's page can read an answer; this also keeps one from *sending* anything:
///
/// - a request another site's page made (`Sec-Fetch-Site: cross-site`, or an `Origin` that
///   is not this server's `Host`) is refused, so a page cannot submit a task with a "simple"
///   POST, which browsers send without asking;
/// - on a server that requires no credentials (loopback only), a `Host` that is not an IP
///   address or `localhost` is refused, so a page cannot reach it through a name it made
///   resolve to 127.0.0.1 (DNS rebinding).
fn browser_refusal(headers: &axum::http::HeaderMap, open: bool) -> Option<&'static str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text("host");
    if text("sec-fetch-site") == Some("cross-site") {
        return Some("requests from other sites' pages are refused");
    }
    if let Some(origin) = text("origin") {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if Some(origin_host) != host {
            return Some("requests from other sites' pages are refused");
        }
    }
    if open && let Some(host) = host {
        let name = host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }
        });
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if name != "localhost" && name.parse::<std::net::IpAddr>().is_err() {
            return Some(
                "this server requires no credentials, so it answers only to an IP address or localhost",
            );
        }
    }
    None
}

/// Middleware: establishes the [`Caller`] (401 with `WWW-Authenticate: Bearer` when the
/// credentials are refused), except on [`OPEN_PATHS`], which need none.
pub(crate) async fn authenticate(
    State(auth): State<Authenticator>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(why) = browser_refusal(req.headers(), !auth.requires_credentials()) {
        return crate::server::HttpError(ApiError::new(ErrorCode::Forbidden, why)).into_response();
    }
    let path = req.uri().path();
    if OPEN_PATHS.contains(&path) || path.starts_with(UI_ASSETS) {
        return next.run(req).await;
    }
    let ui = is_ui(path);
    if let Some(Peer(identity)) = req.extensions().get::<Peer>() {
        let on_behalf = req.headers().get(NODE_HEADER).and_then(|v| v.to_str().ok());
        return match auth.authenticate_peer(identity, on_behalf) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                if ui {
                    // A certificate is no browser's: no cookie, and its CSRF token opens
                    // nothing a page of another site could use.
                    req.extensions_mut().insert(BrowserSession::for_credential(None, false));
                }
                next.run(req).await
            }
            Err(Refused(why)) => unauthorized(&why),
        };
    }
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    let from_cookie = if ui && header.is_none() {
        cookie(req.headers(), SESSION_COOKIE).map(str::as_bytes)
    } else {
        None
    };
    let presented = header.or(from_cookie);
    let session = ui.then(|| BrowserSession::for_credential(presented, from_cookie.is_some()));
    match auth.authenticate(presented) {
        Ok(caller)
            if caller == Caller::anonymous()
                && req.extensions().get::<crate::mtls::OnClusterPort>().is_some() =>
        {
            unauthorized("the cluster port needs a node's certificate or a token")
        }
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            if let Some(session) = session {
                req.extensions_mut().insert(session);
            }
            next.run(req).await
        }
        Err(Refused(_)) if ui => ui_refusal(&req),
        Err(Refused(why)) => unauthorized(&why),
    }
}

/// A browser without valid credentials on a UI path: its pages go to the sign-in page
/// (coming back after), its live stream is told it was signed out.
fn ui_refusal(req: &Request) -> Response {
    use axum::http::{HeaderValue, StatusCode, header};
    if req.uri().path() == UI_LIVE {
        let body = "event: signed-out\ndata: \n\n";
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
            body,
        )
            .into_response();
    }
    let back = req.uri().path_and_query().map_or(UI_PREFIX, |p| p.as_str());
    let next: String = serde_urlencoded::to_string([("next", back)]).unwrap_or_default();
    let location = format!("/ui/sign-in?{next}");
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        crate::server::HttpError(ApiError::new(ErrorCode::Unauthorized, message)).into_response();
    response.headers_mut().insert(WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    response
}

/// Middleware of one operation: 403 unless its caller may call it. A request that reached it
/// without a caller (a router not finished by `finish_router`) is refused: this fails closed.
pub(crate) async fn authorize(access: Access, req: Request, next: Next) -> Response {
    if access == Access::Open {
        return next.run(req).await;
    }
    let verdict = match req.extensions().get::<Caller>() {
        Some(caller) => caller.may(access),
        None => Err("no credentials were checked for this route".to_owned()),
    };
    match verdict {
        Ok(()) => next.run(req).await,
        Err(why) => {
            crate::server::HttpError(ApiError::new(ErrorCode::Forbidden, why)).into_response()
        }
    }
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

    #[test]
    fn pages_of_other_sites_and_rebound_names_are_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = axum::http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, axum::http::HeaderValue::from_static(v));
            }
            h
        };
        // curl, the CLI, workers: no Origin.
        assert_eq!(browser_refusal(&headers(&[("host", "127.0.0.1:5555")]), true), None);
        assert_eq!(browser_refusal(&headers(&[("host", "localhost:5555")]), true), None);
        assert_eq!(browser_refusal(&headers(&[("host", "[::1]:5555")]), true), None);
        // The server's own pages (the UI).
        let same = headers(&[("host", "10.0.0.1:5555"), ("origin", "https://10.0.0.1:5555")]);
        assert_eq!(browser_refusal(&same, false), None);
        // Another site's page.
        let other = headers(&[("host", "127.0.0.1:5555"), ("origin", "https://evil.example")]);
        assert!(browser_refusal(&other, true).is_some());
        let fetch = headers(&[("host", "127.0.0.1:5555"), ("sec-fetch-site", "cross-site")]);
        assert!(browser_refusal(&fetch, false).is_some());
        // A name rebound to loopback, on a server without credentials only.
        let rebound =
            headers(&[("host", "evil.example:5555"), ("origin", "http://evil.example:5555")]);
        assert!(browser_refusal(&rebound, true).is_some());
        assert_eq!(browser_refusal(&rebound, false), None);
    }

    #[test]
    fn each_grant_opens_exactly_its_routes() {
        use Role::*;
        let user = |role| Caller { name: Arc::from("u"), grant: Grant::User(role) };
        let node = Caller { name: Arc::from("n1"), grant: Grant::Node };
        for caller in [Caller::cluster(), Caller::anonymous()] {
            for access in [Access::Open, Access::Node, Access::Role(Admin)] {
                assert_eq!(caller.may(access), Ok(()));
            }
        }
        assert_eq!(user(Operate).may(Access::Role(Read)), Ok(()));
        assert_eq!(user(Operate).may(Access::Role(Operate)), Ok(()));
        assert_eq!(
            user(Operate).may(Access::Role(Exec)),
            Err("this needs the `exec` role; token `u` has `operate`".into())
        );
        assert!(user(Admin).may(Access::Node).is_err(), "a user is never a node");
        assert_eq!(node.may(Access::Node), Ok(()));
        assert!(node.may(Access::Role(Read)).is_err(), "a node opens only its routes");
        assert_eq!(node.may(Access::Open), Ok(()));
        assert_eq!(node.role(), None);
        assert_eq!(Caller::cluster().role(), Some(Admin));
    }

    #[test]
    fn the_cluster_token_answers_for_itself_and_leaves_other_bearers_to_others() {
        let t: Token = "0123456789abcdef".parse().unwrap();
        let guarded = ClusterToken(Some(t));
        assert_eq!(guarded.check(Some(b"0123456789abcdef")), Ok(Some(Caller::cluster())));
        assert_eq!(guarded.check(Some(b"cube_other")), Ok(None));
        assert!(guarded.check(None).is_err());
        let open = ClusterToken(None);
        assert_eq!(open.check(None), Ok(Some(Caller::anonymous())));
        assert_eq!(open.check(Some(b"cube_other")), Ok(None));
        assert_eq!(open.authenticate(Some(b"cube_other")), Ok(Caller::anonymous()));
        assert!(guarded.authenticate(Some(b"cube_other")).is_err());
    }
}
