//! Prometheus metrics shared by both agents: the HTTP requests they serve, and the text
//! exposition of a registry (OpenMetrics, which Prometheus scrapes).
//!
//! **Bounded cardinality:** every label here takes one of a fixed set of values. Requests are
//! labelled with their route *template* (`/v1/tasks/{id}`), never the path, so the number of
//! series does not grow with the number of tasks.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of OpenMetrics, which Prometheus asks for.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the older Prometheus text format, for every other client (`curl`,
/// `promtool check metrics`).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Labels of a served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// Labels of a request's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// A histogram constructor for request durations: 100 µs to ~26 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// The requests an agent served.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    /// Registers the request metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "cube_http_requests",
            "Requests served, by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "cube_http_request_duration_seconds",
            "Time to the response's head, by method and route template (a stream's body is not \
             counted)",
            duration.clone(),
        );
        Self { requests, duration }
    }
}

/// Records every request in `metrics` (use as the outermost layer, so refused requests count).
pub async fn record(State(metrics): State<HttpMetrics>, req: Request, next: Next) -> Response {
    // Any token is a valid HTTP method: only the standard ones get a label of their own.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH") => m,
        _ => "other",
    }
    .to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    metrics
        .duration
        .get_or_create(&RouteLabels { method: method.clone(), route: route.clone() })
        .observe(started.elapsed().as_secs_f64());
    metrics.requests.get_or_create(&RequestLabels { method, route, status }).inc();
    response
}

/// The OpenMetrics text of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail; an encoder error would be a bug in a metric.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    text
}

/// OpenMetrics text turned into the Prometheus text format (0.0.4): a counter family is named
/// with its `_total` suffix, and the OpenMetrics-only `# UNIT` and `# EOF` lines go. The
/// samples are the same in both.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // Held until the TYPE line says whether the family is a counter.
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if kind == "counter" { format!("{name}_total") } else { name.to_owned() };
            if let Some(help) = help.take() {
                let text = help.split_once(' ').map_or("", |(_, text)| text);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A `/metrics` answer with `openmetrics` (from [`encode`]), in the format the client accepts.
pub fn response(headers: &axum::http::HeaderMap, openmetrics: String) -> Response {
    let wants_openmetrics = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
    let (content_type, body) = if wants_openmetrics {
        (OPENMETRICS, openmetrics)
    } else {
        (PROMETHEUS_TEXT, to_prometheus_text(&openmetrics))
    };
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn counters_are_named_with_their_suffix_in_the_prometheus_format() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        metrics
            .requests
            .get_or_create(&RequestLabels { method: "GET".into(), route: "/x".into(), status: 200 })
            .inc();
        let open = encode(&registry);
        assert!(open.contains("# TYPE cube_http_requests counter\n"), "{open}");
        assert!(open.ends_with("# EOF\n"));
        let text = to_prometheus_text(&open);
        assert!(text.contains("# HELP cube_http_requests_total Requests served"), "{text}");
        assert!(text.contains("# TYPE cube_http_requests_total counter\n"), "{text}");
        assert!(
            text.contains(
                "cube_http_requests_total{method=\"GET\",route=\"/x\",status=\"200\"} 1\n"
            )
        );
        assert!(!text.contains("# EOF"));
    }
}
