//! The OpenAPI documents of a real manager and a real worker against what they serve: every
//! documented path answers exactly its documented methods, and every body a tour of the whole
//! API receives (answers and errors alike) and every request body it sends validates against
//! the document's schema for that operation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::{TestManager, TestWorker, wait_until};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

/// A fetched document and what checks bodies against it.
struct Contract {
    name: &'static str,
    base: String,
    doc: Value,
    http: reqwest::Client,
    /// How many bodies were validated, by direction.
    checked: std::cell::Cell<(u32, u32)>,
}

impl Contract {
    async fn fetch(name: &'static str, base: &str) -> Contract {
        let http = cube_http::tls::http_client_builder().build().unwrap();
        let response = http.get(format!("{base}/v1/openapi.json")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let doc: Value = response.json().await.unwrap();
        assert_eq!(doc["openapi"], "3.1.0", "{name}");
        Contract { name, base: base.to_owned(), doc, http, checked: Default::default() }
    }

    fn operation(&self, method: &Method, template: &str) -> &Value {
        let op = &self.doc["paths"][template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{}: {method} {template} is not documented", self.name);
        op
    }

    /// Validates `instance` against `schema`, whose `$ref`s point into the document.
    fn validate(&self, schema: &Value, instance: &Value, what: &str) {
        let mut root = schema.as_object().cloned().unwrap_or_default();
        if schema == &Value::Bool(true) {
            return;
        }
        root.insert("components".into(), self.doc["components"].clone());
        let validator = jsonschema::draft202012::new(&Value::Object(root)).unwrap_or_else(|e| {
            panic!("{}: the schema of {what} does not compile: {e}", self.name)
        });
        let problems: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            problems.is_empty(),
            "{}: {what} does not match the document: {problems:#?}\n{instance:#}",
            self.name
        );
    }

    /// The schema the document gives an answer with `status` and `media`.
    fn reply_schema(&self, op: &Value, status: u16, media: &str, what: &str) -> Value {
        let responses = &op["responses"];
        let reply = responses
            .get(status.to_string())
            .or_else(|| (status >= 400).then(|| &responses["default"]).filter(|r| r.is_object()))
            .unwrap_or_else(|| panic!("{}: {what} answered {status}, not documented", self.name));
        // Media types are compared without their parameters (`; charset=utf-8`).
        let content = reply["content"]
            .as_object()
            .and_then(|c| c.iter().find(|(k, _)| k.split(';').next().unwrap().trim() == media))
            .map(|(_, v)| v)
            .unwrap_or_else(|| {
                panic!("{}: {what}: {status} is not documented as {media}", self.name)
            });
        content["schema"].clone()
    }

    /// Sends a request to `path` (an instance of `template`), checking the body sent and the
    /// answer against the document; returns the status and the JSON answer.
    async fn call(
        &self,
        method: Method,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.send(method, template, path, body, true).await
    }

    /// [`Contract::call`] with a body meant to be refused, which is not checked.
    async fn call_invalid(&self, method: Method, template: &str, path: &str, body: Value) -> u16 {
        self.send(method, template, path, Some(body), false).await.0
    }

    async fn send(
        &self,
        method: Method,
        template: &str,
        path: &str,
        body: Option<Value>,
        check_body: bool,
    ) -> (u16, Value) {
        let what = format!("{method} {path}");
        let op = self.operation(&method, template).clone();
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            assert!(schema.is_object(), "{}: {what} takes no documented body", self.name);
            if check_body {
                self.validate(schema, &body, &format!("the body sent to {what}"));
                self.count(1, 0);
            }
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let media = response.headers()["content-type"].to_str().unwrap().to_owned();
        let media = media.split(';').next().unwrap().trim().to_owned();
        let bytes = response.bytes().await.unwrap();
        let schema = self.reply_schema(&op, status, &media, &what);
        if media != "application/json" {
            return (status, Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        }
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        self.validate(&schema, &answer, &format!("the answer {status} to {what}"));
        self.count(0, 1);
        (status, answer)
    }

    fn count(&self, sent: u32, received: u32) {
        let (s, r) = self.checked.get();
        self.checked.set((s + sent, r + received));
    }

    /// Checks that every documented path answers exactly its documented methods: an
    /// undocumented one gets the router's 405, a documented one anything else.
    async fn compare_routes(&self) -> usize {
        let mut served = 0;
        let paths = self.doc["paths"].as_object().unwrap();
        for (template, item) in paths {
            let path = template
                .replace("{id}", "00000000-0000-7000-8000-000000000000")
                .replace("{name}", "no-such-service")
                .replace("{action}", "promote");
            for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
                let documented = item.get(method.to_lowercase()).is_some();
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                let response = self
                    .http
                    .request(method.clone(), format!("{}{path}", self.base))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                // Streams (events, logs) are not read: their status says enough.
                let refused = status == 405;
                if refused {
                    let body: Value = response.json().await.unwrap();
                    assert_eq!(body["error"]["code"], "method_not_allowed");
                }
                assert_eq!(
                    !refused,
                    documented,
                    "{}: {method} {template} answered {status} but is {}documented",
                    self.name,
                    if documented { "" } else { "not " }
                );
                served += usize::from(documented);
            }
        }
        served
    }
}

fn sleeper(name: &str) -> Value {
    json!({"name": name, "driver": "process", "command": "sleep", "args": ["3600"],
           "stop_grace": "1s"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documents_list_every_route_and_every_body_validates_against_them() {
    let m = TestManager::start(&[]).await;
    let w = m.worker("w1", &[]).await;
    let manager = Contract::fetch("manager", &m.url).await;
    let worker = Contract::fetch("worker", &w.process.url).await;

    // The routes: each documented method is served and no other.
    let served = manager.compare_routes().await;
    assert!(served >= 26, "the manager documents {served} operations");
    let served = worker.compare_routes().await;
    assert_eq!(served, 10, "the worker's operations");

    manager_tour(&manager, &w).await;
    worker_tour(&worker).await;
    let (sent, received) = manager.checked.get();
    let (wsent, wreceived) = worker.checked.get();
    eprintln!("validated {sent}+{wsent} request bodies and {received}+{wreceived} answers");
    assert!(received >= 40, "the tour checked {received} answers");
}

async fn manager_tour(c: &Contract, w: &TestWorker) {
    use Method as M;
    c.call(M::GET, "/v1/health", "/v1/health", None).await;
    let node = w.node_id.clone();
    let nodes = wait_until(Duration::from_secs(10), "the worker registered", || async {
        let (_, nodes) = c.call(M::GET, "/v1/nodes", "/v1/nodes", None).await;
        (nodes.as_array().unwrap().len() == 1).then_some(nodes)
    })
    .await;
    assert_eq!(nodes[0]["id"], node.as_str());
    c.call(M::GET, "/v1/nodes/{id}", &format!("/v1/nodes/{node}"), None).await;
    c.call(M::GET, "/v1/nodes/{id}", "/v1/nodes/w1", None).await;

    // Tasks: submitted, again with the same id (200), then with a bad spec (400).
    let (status, task) = c.call(M::POST, "/v1/tasks", "/v1/tasks", Some(sleeper("one"))).await;
    assert_eq!(status, 201);
    let id = task["id"].as_str().unwrap().to_owned();
    let mut again = sleeper("one");
    again["id"] = json!(id);
    let (status, _) = c.call(M::POST, "/v1/tasks", "/v1/tasks", Some(again)).await;
    assert_eq!(status, 200);
    let mut conflicting = sleeper("other");
    conflicting["id"] = json!(id);
    let (status, _) = c.call(M::POST, "/v1/tasks", "/v1/tasks", Some(conflicting)).await;
    assert_eq!(status, 409);
    let bad = json!({"name": "", "driver": "process"});
    assert_eq!(c.call_invalid(M::POST, "/v1/tasks", "/v1/tasks", bad).await, 400);
    let task_path = format!("/v1/tasks/{id}");
    wait_until(Duration::from_secs(20), "the task running", || async {
        let (_, t) = c.call(M::GET, "/v1/tasks/{id}", &task_path, None).await;
        (t["state"] == "running").then_some(())
    })
    .await;
    c.call(M::GET, "/v1/tasks", "/v1/tasks", None).await;
    c.call(M::GET, "/v1/tasks", &format!("/v1/tasks?state=running&node={node}"), None).await;
    let (status, _) = c.call(M::GET, "/v1/tasks", "/v1/tasks?state=dancing", None).await;
    assert_eq!(status, 400);
    let (status, _) = c.call(M::GET, "/v1/tasks/{id}", "/v1/tasks/not-an-id", None).await;
    assert_eq!(status, 400);
    let (status, _) = c
        .call(M::GET, "/v1/tasks/{id}", "/v1/tasks/00000000-0000-7000-8000-000000000000", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) =
        c.call(M::GET, "/v1/tasks/{id}/logs", &format!("{task_path}/logs?tail=5"), None).await;
    assert_eq!(status, 200);
    let (status, _) = c
        .call(M::GET, "/v1/tasks/{id}/exec", &format!("{task_path}/exec?command=true"), None)
        .await;
    assert_eq!(status, 400, "an exec that is not a WebSocket");
    // A blocking query that is answered at once (its index is already passed) and one that
    // waits out its wait.
    c.call(M::GET, "/v1/tasks/{id}", &format!("{task_path}?index=1&wait=1s"), None).await;
    let (status, _) = c.call(M::GET, "/v1/tasks", "/v1/tasks?wait=1s", None).await;
    assert_eq!(status, 400, "wait needs index");

    // Services and their deployments.
    let service = json!({"count": 2, "task": sleeper("web"), "update": {"min_healthy_time": "1s"}});
    let (status, view) =
        c.call(M::PUT, "/v1/services/{name}", "/v1/services/web", Some(service.clone())).await;
    assert_eq!(status, 201);
    let (status, _) = c
        .call(M::PUT, "/v1/services/{name}", "/v1/services/web?check_index=1", Some(service))
        .await;
    assert_eq!(status, 409, "a stale check_index");
    let deployment = view["deployment"]["id"].as_str().unwrap().to_owned();
    c.call(M::GET, "/v1/services", "/v1/services", None).await;
    c.call(M::GET, "/v1/services/{name}", "/v1/services/web", None).await;
    let (_, endpoints) =
        c.call(M::GET, "/v1/services/{name}/endpoints", "/v1/services/web/endpoints", None).await;
    assert_eq!(endpoints["endpoints"], json!([]), "it publishes nothing");
    let mut task = sleeper("web");
    task["env"] = json!({"V": "2"});
    let changed = json!({"count": 2, "task": task, "update": {"min_healthy_time": "1s"}});
    let (_, plan) = c
        .call(M::POST, "/v1/services/{name}/plan", "/v1/services/web/plan", Some(changed.clone()))
        .await;
    assert!(!plan["diff"].as_array().unwrap().is_empty(), "{plan}");
    c.call(M::GET, "/v1/deployments/{id}", &format!("/v1/deployments/{deployment}"), None).await;
    let (status, _) = c
        .call(
            M::POST,
            "/v1/deployments/{id}/{action}",
            &format!("/v1/deployments/{deployment}/promote"),
            None,
        )
        .await;
    assert!(status == 200 || status == 409, "{status}");
    let (status, _) = c
        .call(
            M::POST,
            "/v1/deployments/{id}/{action}",
            &format!("/v1/deployments/{deployment}/dance"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    c.call(M::PUT, "/v1/services/{name}", "/v1/services/web", Some(changed)).await;
    c.call(M::GET, "/v1/services/{name}/versions", "/v1/services/web/versions", None).await;
    c.call(
        M::POST,
        "/v1/services/{name}/scale",
        "/v1/services/web/scale",
        Some(json!({"count": 1})),
    )
    .await;
    let (status, _) = c
        .call(
            M::POST,
            "/v1/services/{name}/revert",
            "/v1/services/web/revert",
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(status, 200);
    let bad = json!({"count": -1});
    let status =
        c.call_invalid(M::POST, "/v1/services/{name}/scale", "/v1/services/web/scale", bad).await;
    assert_eq!(status, 400);

    // The event stream: every line so far validates against the line schema.
    events(c).await;

    // Nodes: eligibility, then a drain; the worker's own routes with a bad body.
    let node_path = format!("/v1/nodes/{node}");
    c.call(
        M::POST,
        "/v1/nodes/{id}/eligibility",
        &format!("{node_path}/eligibility"),
        Some(json!({"eligible": true})),
    )
    .await;
    let (status, feed) =
        c.call(M::GET, "/v1/nodes/{id}/endpoints", &format!("{node_path}/endpoints"), None).await;
    assert_eq!(status, 200, "{feed}");
    let (status, _) =
        c.call(M::POST, "/v1/nodes/{id}/heartbeat", &format!("{node_path}/heartbeat"), None).await;
    assert_eq!(status, 400, "a heartbeat without a body");
    let (status, _) = c.call(M::POST, "/v1/nodes/register", "/v1/nodes/register", None).await;
    assert_eq!(status, 400, "a registration without a body");
    let (status, _) = c
        .call(M::POST, "/v1/nodes/{id}/drain", &format!("{node_path}/drain"), Some(json!({})))
        .await;
    assert_eq!(status, 200);

    let (status, _) = c.call(M::DELETE, "/v1/services/{name}", "/v1/services/web", None).await;
    assert_eq!(status, 202);
    let (status, _) = c.call(M::DELETE, "/v1/tasks/{id}", &task_path, None).await;
    assert!(status == 202, "{status}");
    let (status, text) = c.call(M::GET, "/metrics", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(text.as_str().unwrap().contains("cube_tasks"), "{text}");
    let (status, _) = c.call(M::GET, "/v1/openapi.json", "/v1/openapi.json", None).await;
    assert_eq!(status, 200);
}

/// Reads the stream from index 0 up to the current index, validating each line.
async fn events(c: &Contract) {
    let op = c.operation(&Method::GET, "/v1/events").clone();
    let schema = c.reply_schema(&op, 200, "application/x-ndjson", "GET /v1/events");
    let response = c.http.get(format!("{}/v1/health", c.base)).send().await.unwrap();
    let current: u64 = response.headers()["x-cube-index"].to_str().unwrap().parse().unwrap();
    let response = c.http.get(format!("{}/v1/events?index=0", c.base)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut lines = 0;
    let mut last = 0;
    while last < current {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the stream reaches the current index")
            .unwrap()
            .unwrap();
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line: Value = serde_json::from_slice(&line).unwrap();
            c.validate(&schema, &line, "an event line");
            c.count(0, 1);
            last = line["index"].as_u64().unwrap();
            lines += 1;
        }
    }
    assert!(lines >= 10, "{lines} events");
    let (status, _) = c.call(Method::GET, "/v1/events", "/v1/events?topic=Weather", None).await;
    assert_eq!(status, 400);
}

async fn worker_tour(c: &Contract) {
    use Method as M;
    c.call(M::GET, "/v1/health", "/v1/health", None).await;
    c.call(M::GET, "/v1/stats", "/v1/stats", None).await;
    let id = "0193a000-0000-7000-8000-000000000001";
    let mut body = sleeper("direct");
    body["id"] = json!(id);
    let (status, _) = c.call(M::POST, "/v1/tasks", "/v1/tasks", Some(body)).await;
    assert_eq!(status, 201);
    let path = format!("/v1/tasks/{id}");
    c.call(M::GET, "/v1/tasks/{id}", &path, None).await;
    c.call(M::GET, "/v1/tasks", "/v1/tasks", None).await;
    c.call(M::GET, "/v1/tasks/{id}/logs", &format!("{path}/logs"), None).await;
    let bad = json!({"name": "x", "driver": "lxc"});
    assert_eq!(c.call_invalid(M::POST, "/v1/tasks", "/v1/tasks", bad).await, 400);
    let (status, _) = c.call(M::DELETE, "/v1/tasks/{id}", &path, None).await;
    assert_eq!(status, 202);
    c.call(M::GET, "/metrics", "/metrics", None).await;
}
