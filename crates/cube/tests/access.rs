//! Who may call what: every route of a real `cube manager` × every kind of caller (each role's
//! token, the cluster token, no token, an unknown, a revoked and an expired token), each with
//! exactly the documented answer; and the tokens' own life through the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

const CLUSTER: &str = "cluster-token-0123456789abcdef";

/// The role each route needs (docs/api.md, "Who may call what"). `node`: a worker's
/// credentials (or the cluster token), never a user's token; `open`: no credentials.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/v1/health", "open"),
    ("GET", "/v1/openapi.json", "read"),
    ("GET", "/metrics", "read"),
    ("GET", "/v1/tasks", "read"),
    ("POST", "/v1/tasks", "operate"),
    ("GET", "/v1/tasks/{id}", "read"),
    ("DELETE", "/v1/tasks/{id}", "operate"),
    ("GET", "/v1/tasks/{id}/logs", "read"),
    ("GET", "/v1/tasks/{id}/exec", "exec"),
    ("GET", "/v1/services", "read"),
    ("GET", "/v1/services/{name}", "read"),
    ("PUT", "/v1/services/{name}", "operate"),
    ("DELETE", "/v1/services/{name}", "operate"),
    ("POST", "/v1/services/{name}/scale", "operate"),
    ("POST", "/v1/services/{name}/plan", "read"),
    ("GET", "/v1/services/{name}/versions", "read"),
    ("GET", "/v1/services/{name}/endpoints", "read"),
    ("POST", "/v1/services/{name}/revert", "operate"),
    ("GET", "/v1/deployments/{id}", "read"),
    ("POST", "/v1/deployments/{id}/{action}", "operate"),
    ("GET", "/v1/nodes", "read"),
    ("GET", "/v1/nodes/{id}", "read"),
    ("POST", "/v1/nodes/{id}/drain", "admin"),
    ("POST", "/v1/nodes/{id}/eligibility", "admin"),
    ("POST", "/v1/nodes/register", "node"),
    ("POST", "/v1/nodes/{id}/heartbeat", "node"),
    ("GET", "/v1/nodes/{id}/endpoints", "node"),
    ("GET", "/v1/events", "read"),
    ("GET", "/v1/audit", "admin"),
    ("GET", "/v1/tokens", "admin"),
    ("POST", "/v1/tokens", "admin"),
    ("DELETE", "/v1/tokens/{name}", "admin"),
    ("DELETE", "/v1/nodes/{id}", "admin"),
    ("POST", "/v1/cluster/join", "open"),
    ("POST", "/v1/cluster/renew", "node"),
    ("POST", "/v1/cluster/join-token", "admin"),
];

const ROLES: [&str; 4] = ["read", "operate", "exec", "admin"];

/// What a caller gets from a route: passed (any answer of the route itself), 401 or 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Passed,
    Unauthorized,
    Forbidden,
}

/// The documented answer for a caller of `kind` on a route needing `needs`.
fn expected(kind: &str, needs: &str) -> Answer {
    let rank = |r: &str| ROLES.iter().position(|x| *x == r);
    match (kind, needs) {
        (_, "open") => Answer::Passed,
        ("none" | "unknown" | "revoked" | "expired", _) => Answer::Unauthorized,
        ("cluster", _) => Answer::Passed,
        (_, "node") => Answer::Forbidden,
        (role, needs) if rank(role) >= rank(needs) => Answer::Passed,
        _ => Answer::Forbidden,
    }
}

/// A concrete path for a template: ids that exist nowhere, names nobody uses.
fn concrete(template: &str) -> String {
    template
        .replace("{id}/heartbeat", "0193a2c4-0000-7000-8000-000000000001/heartbeat")
        .replace("{id}/endpoints", "0193a2c4-0000-7000-8000-000000000001/endpoints")
        .replace("{id}/{action}", "0193a2c4-0000-7000-8000-000000000002/promote")
        .replace("{id}", "0193a2c4-0000-7000-8000-000000000003")
        .replace("{name}", "nobody-uses-this")
}

async fn answer(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> (Answer, u16, Value) {
    let url = format!("{base}{}", concrete(path));
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http.request(method.clone(), &url).timeout(Duration::from_secs(10));
    if let Some(b) = bearer {
        request = request.bearer_auth(b);
    }
    if method != reqwest::Method::GET {
        request = request.header("content-type", "application/json").body("{}");
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    // The event stream never ends: its status and headers are the answer.
    let body = if path == "/v1/events" && status == 200 {
        Value::Null
    } else {
        response.json::<Value>().await.unwrap_or(Value::Null)
    };
    let kind = match (status, body["error"]["code"].as_str()) {
        (401, Some("unauthorized")) => Answer::Unauthorized,
        (403, Some("forbidden")) => Answer::Forbidden,
        (401 | 403, _) => panic!("{method} {url}: {status} without the error envelope: {body}"),
        _ => Answer::Passed,
    };
    (kind, status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_kind_of_caller_as_documented() {
    let m = TestManager::start(&["--token", CLUSTER]).await;
    let admin = m.client.clone().with_token(Some(CLUSTER.parse().unwrap()));

    // One token per role, one revoked, one already expired.
    let mut secrets: BTreeMap<&str, String> = BTreeMap::new();
    for role in ROLES.into_iter().chain(["revoked", "expired"]) {
        let (role_of, expires) = match role {
            "revoked" | "expired" => {
                ("admin", (role == "expired").then_some(Duration::from_millis(1)))
            }
            r => (r, None),
        };
        let request = cube_api::auth::TokenRequest {
            name: format!("t-{role}"),
            role: role_of.parse().unwrap(),
            expires_in: expires,
        };
        let created = admin.create_token(&request).await.unwrap();
        assert!(created.secret.starts_with("cube_"));
        secrets.insert(role, created.secret);
    }
    admin.revoke_token("t-revoked").await.unwrap();

    // The document states each route's role, and the list above is every route it has.
    let doc: Value =
        reqwest::get(format!("{}/v1/openapi.json", m.url)).await.unwrap().json().await.unwrap();
    assert_eq!(doc["error"]["code"], "unauthorized", "the document needs a token too");
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(format!("{}/v1/openapi.json", m.url))
        .bearer_auth(CLUSTER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let role = op.get("x-cube-role").and_then(Value::as_str).unwrap_or("open");
            documented.push((method.to_uppercase(), path.clone(), role.to_owned()));
        }
    }
    documented.sort();
    let mut listed: Vec<(String, String, String)> = ROUTES
        .iter()
        .map(|(m, p, r)| ((*m).to_owned(), (*p).to_owned(), (*r).to_owned()))
        .collect();
    listed.sort();
    assert_eq!(documented, listed, "the routes' roles in the OpenAPI document");

    let callers: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        (
            "unknown",
            Some("cube_0000000000000000000000000000000000000000000000000000000000000000".into()),
        ),
        ("cluster", Some(CLUSTER.into())),
        ("revoked", secrets.get("revoked").cloned()),
        ("expired", secrets.get("expired").cloned()),
        ("read", secrets.get("read").cloned()),
        ("operate", secrets.get("operate").cloned()),
        ("exec", secrets.get("exec").cloned()),
        ("admin", secrets.get("admin").cloned()),
    ];
    let mut wrong = Vec::new();
    for (method, path, needs) in ROUTES {
        for (kind, secret) in &callers {
            let (got, status, body) = answer(&http, &m.url, method, path, secret.as_deref()).await;
            let want = expected(kind, needs);
            if got != want {
                wrong
                    .push(format!("{method} {path} as {kind}: {status} {body}, expected {want:?}"));
            }
            // A 403 names what is missing; a 401 says why the credentials were refused.
            if got == Answer::Forbidden {
                let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
                let named = if *needs == "node" {
                    message.contains("only a node")
                } else {
                    message.contains(&format!("`{needs}`"))
                };
                assert!(named, "{method} {path} as {kind}: {message}");
            }
            if got == Answer::Unauthorized && *kind == "revoked" {
                assert!(body["error"]["message"].as_str().unwrap().contains("revoked"), "{body}");
            }
            if got == Answer::Unauthorized && *kind == "expired" {
                assert!(body["error"]["message"].as_str().unwrap().contains("expired"), "{body}");
            }
        }
    }
    assert!(wrong.is_empty(), "{} wrong answers:\n{}", wrong.len(), wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_made_listed_and_revoked_with_the_cli_and_shown_once() {
    let m = TestManager::start(&["--token", CLUSTER]).await;
    let cube = |token: &str, args: &[&str]| {
        let out = std::process::Command::new(cube_bin())
            .env("CUBE_ADDR", &m.url)
            .env("CUBE_TOKEN", token)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, secret, note) =
        cube(CLUSTER, &["token", "create", "ci", "--role", "operate", "--expires", "90d"]);
    assert_eq!(code, Some(0), "{note}");
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("cube_"), "{secret}");
    assert!(note.contains("shown this once"), "{note}");

    // The new token works with its role: it may run things, not make tokens.
    let (code, out, err) = cube(&secret, &["status"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = cube(&secret, &["token", "ls"]);
    assert_ne!(code, Some(0));
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("`admin`") && err.contains("`operate`"), "{err}");

    // Listed without its secret; revoked at once.
    let (code, out, _) = cube(CLUSTER, &["token", "ls", "-o", "json"]);
    assert_eq!(code, Some(0));
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["name"], "ci");
    assert_eq!(listed[0]["role"], "operate");
    assert_eq!(listed[0]["created_by"], "cluster");
    assert!(listed[0]["expires_at"].is_string());
    assert!(!out.contains(&secret) && !out.contains("digest"), "{out}");
    let (code, _, _) = cube(CLUSTER, &["token", "create", "ci", "--role", "read"]);
    assert_ne!(code, Some(0), "a name is taken until revoked");
    let (code, out, _) = cube(CLUSTER, &["token", "revoke", "ci"]);
    assert_eq!((code, out.trim()), (Some(0), "token ci revoked"));
    let (code, _, err) = cube(&secret, &["status"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("revoked"), "{err}");

    // The secret is in no log of the manager.
    assert!(!m.process.logs().contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_is_in_the_audit_log_durably_and_in_the_event_stream() {
    let mut m = TestManager::start(&["--token", CLUSTER]).await;
    let admin = m.client.clone().with_token(Some(CLUSTER.parse().unwrap()));
    let request = cube_api::auth::TokenRequest {
        name: "ci".into(),
        role: cube_api::auth::Role::Operate,
        expires_in: None,
    };
    let secret = admin.create_token(&request).await.unwrap().secret;
    let ci = m.client.clone().with_token(Some(secret.parse().unwrap()));
    let spec: cube_core::TaskSpec = serde_json::from_value(serde_json::json!({
        "name": "audited", "driver": "process", "command": "true"}))
    .unwrap();
    ci.submit(None, &spec).await.unwrap();
    let refused =
        ci.create_token(&cube_api::auth::TokenRequest { name: "x".into(), ..request }).await;
    assert!(matches!(refused, Err(cube_http::client::ClientError::Api { status: 403, .. })));
    // Reads are not mutations.
    ci.tasks().await.unwrap();

    // Durable: a manager killed and started again still has them.
    m.kill9();
    m.restart().await;
    let log = admin.audit(&cube_api::auth::AuditQuery::default()).await.unwrap();
    let seen: Vec<(String, Option<cube_api::auth::Role>, String, u16)> =
        log.iter().map(|r| (r.who.clone(), r.role, r.operation.clone(), r.status)).collect();
    use cube_api::auth::Role::*;
    assert_eq!(
        seen,
        vec![
            ("cluster".to_owned(), Some(Admin), "createToken".to_owned(), 201),
            ("ci".to_owned(), Some(Operate), "submitTask".to_owned(), 201),
            ("ci".to_owned(), Some(Operate), "createToken".to_owned(), 403),
        ]
    );
    assert_eq!(log[1].request, "POST /v1/tasks");
    let only_ci = admin
        .audit(&cube_api::auth::AuditQuery { who: Some("ci".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(only_ci.len(), 2);
    let later = admin
        .audit(&cube_api::auth::AuditQuery { since: Some(log[2].at), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
    // The audit log is an admin's: an operator may not read it.
    assert!(matches!(
        ci.audit(&cube_api::auth::AuditQuery::default()).await,
        Err(cube_http::client::ClientError::Api { status: 403, .. })
    ));

    // The same records are events of the stream, topic Audit.
    let http = reqwest::Client::new();
    let mut stream = http
        .get(format!("{}/v1/events?index=0&topic=Audit", m.url))
        .bearer_auth(CLUSTER)
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while text.matches("\"Audited\"").count() < 3 {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk()).await.unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let audited: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "Audited")
        .collect();
    assert_eq!(audited[1]["topic"], "Audit");
    assert_eq!(audited[1]["key"], "ci");
    assert_eq!(audited[1]["object"]["operation"], "submitTask");
    // ...and only an admin's.
    let status = http
        .get(format!("{}/v1/events?index=0&topic=Audit", m.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sites_page_cannot_drive_a_manager_that_requires_no_credentials() {
    let m = TestManager::start(&[]).await;
    let http = reqwest::Client::new();
    let body = r#"{"name":"drive-by","driver":"process","command":"true"}"#;
    // A "simple" cross-site POST, as a page may send without asking; and the same through a
    // name rebound to 127.0.0.1.
    let cross_site = http
        .post(format!("{}/v1/tasks", m.url))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let port = m.url.rsplit(':').next().unwrap().to_owned();
    let rebound = http
        .post(format!("{}/v1/tasks", m.url))
        .header("host", format!("evil.example:{port}"))
        .header("origin", format!("http://evil.example:{port}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    // Nothing was submitted; the CLI and curl (no Origin, an IP address) work as before.
    assert!(m.client.tasks().await.unwrap().is_empty());
    let ok = http.post(format!("{}/v1/tasks", m.url)).body(body).send().await.unwrap();
    assert_eq!(ok.status(), 201);
}
