//! Layer 7 (HTTP/1.1): the client's connection is kept alive by the ingress and each of its
//! requests goes to an instance of its own, over a pool of kept-alive connections to the
//! instances. hyper parses and writes HTTP on both sides.
//!
//! A request that never reached an instance (its connect failed) is sent to another one. So
//! is an idempotent request whose instance closed or reset the connection before answering,
//! when its body is small enough to be kept for a second try ([`REPLAY_LIMIT`]); any other
//! failure is a `502` to the client, and a port with no healthy instance answers `503`.
//!
//! The client's address survives: `X-Forwarded-For` and `Forwarded` (RFC 7239) get it
//! appended, `X-Forwarded-Proto` is set when absent. Hop-by-hop headers (RFC 9110 §7.6.1)
//! are not forwarded either way, so an instance that closes each connection does not close
//! the client's.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{ATTEMPTS, CONNECT_TIMEOUT, Inner, Open};

/// Request bodies up to this size (known in advance) are kept so the request can be sent
/// to another instance; larger or streamed ones are forwarded as they come, once.
pub const REPLAY_LIMIT: u64 = 64 * 1024;
/// How long a kept-alive connection to an instance may stay idle in the pool.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// How long a client has to send a request's head once it started one.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long requests in flight may take to finish once their port stops being published or
/// the ingress stops.
const GRACE: Duration = Duration::from_secs(5);

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The pooled client the ingress sends requests to instances with.
pub(crate) type Upstream = Client<HttpConnector, ProxyBody>;

pub(crate) fn upstream() -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    // The pool's connection drivers are hyper's: each ends when its instance closes it or the
    // pool drops it (idle, or the ingress gone), and holds nothing of the ingress.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Serves one client connection as HTTP/1.1 until the client closes it, or `stop` (the port
/// no longer published, or the ingress stopping) ends it after the requests in flight.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    client: TcpStream,
    peer: SocketAddr,
    port: u16,
    stop: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let service = hyper::service::service_fn(move |request| {
        let inner = Arc::clone(&inner);
        async move { Ok::<_, Infallible>(proxy(&inner, peer, port, request).await) }
    });
    let mut conn = pin!(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(client), service)
    );
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(port, %peer, error = %e, "ingress http connection ended");
            }
            return;
        }
        () = stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(GRACE, conn).await;
}

/// A request's body, as it can be sent: kept (so it can be sent again) or streamed (once).
enum Outgoing {
    Kept(Bytes),
    Streamed(Option<Incoming>),
}

impl Outgoing {
    fn take(&mut self) -> Option<ProxyBody> {
        match self {
            Self::Kept(bytes) => {
                Some(Full::new(bytes.clone()).map_err(|never| match never {}).boxed())
            }
            Self::Streamed(body) => body.take().map(BodyExt::boxed),
        }
    }
}

/// Sends one request to an instance of `port`'s service; the instance's answer, or the
/// ingress's own 502/503.
async fn proxy(
    inner: &Arc<Inner>,
    peer: SocketAddr,
    port: u16,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    remove_hop_by_hop(&mut headers);
    add_forwarded(&mut headers, peer.ip());
    let kept = body.is_end_stream() || body.size_hint().exact().is_some_and(|n| n <= REPLAY_LIMIT);
    let mut outgoing = if kept {
        match body.collect().await {
            Ok(collected) => Outgoing::Kept(collected.to_bytes()),
            Err(e) => {
                tracing::debug!(port, %peer, error = %e, "client's request body failed");
                return answer(StatusCode::BAD_REQUEST, "the request's body could not be read");
            }
        }
    } else {
        Outgoing::Streamed(Some(body))
    };
    let replayable = kept && is_idempotent(&parts.method);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut tried = Vec::new();
    for _ in 0..ATTEMPTS {
        let Some(backend) = inner.choose(port, &tried) else { break };
        let Some(body) = outgoing.take() else { break };
        let Ok(uri) = format!("http://{}{path}", backend.addr).parse::<Uri>() else {
            return answer(StatusCode::BAD_REQUEST, "the request's target is not valid");
        };
        let mut upstream = Request::new(body);
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = headers.clone();
        let open = Open::new(inner, backend.task);
        match inner.upstream.request(upstream).await {
            Ok(response) => {
                inner.connected(backend.task, true);
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                // The request stays counted against its instance until its answer's body has
                // been passed on, so a drain waits for it.
                let body = body
                    .map_frame(move |frame| {
                        let _counted = &open;
                        frame
                    })
                    .boxed();
                return Response::from_parts(parts, body);
            }
            Err(e) => {
                let unreached = e.is_connect();
                if unreached {
                    inner.connected(backend.task, false);
                }
                tracing::debug!(port, task = %backend.task, addr = %backend.addr, error = %e, unreached, "request to an instance failed");
                if !unreached && !replayable {
                    return answer(StatusCode::BAD_GATEWAY, "the instance failed to answer");
                }
                tried.push(backend.task);
            }
        }
    }
    if tried.is_empty() {
        answer(StatusCode::SERVICE_UNAVAILABLE, "no healthy instance of this service")
    } else {
        answer(StatusCode::BAD_GATEWAY, "no instance of this service could be reached")
    }
}

/// The ingress's own answer.
fn answer(status: StatusCode, why: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("cube ingress: {why}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// RFC 9110 §9.2.2: sending these twice has the effect of sending them once.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Removes the headers meant for one connection only: the standard ones and those that
/// `Connection` names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Appends the client's address to `X-Forwarded-For` and `Forwarded`, and sets
/// `X-Forwarded-Proto` if nobody before did.
fn add_forwarded(headers: &mut HeaderMap, client: IpAddr) {
    let x_forwarded_for = HeaderName::from_static("x-forwarded-for");
    let xff = match joined(headers, &x_forwarded_for) {
        Some(before) => format!("{before}, {client}"),
        None => client.to_string(),
    };
    // RFC 7239 §6: an IPv6 address is bracketed and quoted.
    let node = match client {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("\"[{ip}]\""),
    };
    let forwarded = match joined(headers, &header::FORWARDED) {
        Some(before) => format!("{before}, for={node};proto=http"),
        None => format!("for={node};proto=http"),
    };
    for (name, value) in [(x_forwarded_for, xff), (header::FORWARDED, forwarded)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    let proto = HeaderName::from_static("x-forwarded-proto");
    if !headers.contains_key(&proto) {
        headers.insert(proto, HeaderValue::from_static("http"));
    }
}

/// A header's values joined by commas (how a list-valued header may be sent), if it has any.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_is_appended_to_what_came_before() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "192.0.2.7".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["forwarded"], "for=192.0.2.7;proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert("forwarded", HeaderValue::from_static("for=198.51.100.1;proto=https"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded(&mut h, "2001:db8::1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 2001:db8::1");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.1;proto=https, for=\"[2001:db8::1]\";proto=http"
        );
        assert_eq!(h["x-forwarded-proto"], "https", "an outer proxy's word is kept");
    }

    #[test]
    fn hop_by_hop_headers_stay_on_their_connection() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn only_idempotent_methods_are_sent_twice() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}
