//! The web UI of a real `cube manager`, over HTTP: signing in, the session cookie, CSRF and
//! roles on its buttons, the audit log of what they did, the live stream, and pages that name
//! no other site. (`ui_browser.rs` drives the same pages in a real Chromium.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt as _;

const CLUSTER: &str = "cluster-token-0123456789abcdef";

/// Posts a form as a browser with `cookie` (none when empty) would.
async fn post(url: &str, cookie: &str, form: &[(&str, &str)]) -> reqwest::Response {
    let mut request = browser()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).unwrap());
    if !cookie.is_empty() {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

/// A client that shows redirects instead of following them and keeps no cookies.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs in with `token`; the session cookie's `name=value`.
async fn sign_in(url: &str, token: &str) -> String {
    let answer =
        post(&format!("{url}/ui/sign-in"), "", &[("token", token), ("next", "/ui/services")]).await;
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    cookie.split(';').next().unwrap().to_owned()
}

async fn get(url: &str, cookie: &str) -> (u16, String) {
    let answer = browser().get(url).header("cookie", cookie).send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a form with a CSRF token") + 19;
    html[at..at + 32].to_owned()
}

fn service(name: &str, count: u32) -> cube_core::service::ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "name": name, "count": count,
        "task": {"name": name, "driver": "process", "command": "sleep", "args": ["600"]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_keeps_the_token_in_a_strict_http_only_cookie_and_refuses_a_wrong_one() {
    let m = TestManager::start(&["--token", CLUSTER]).await;
    let http = browser();

    // Without a session, pages go to the sign-in page and come back after.
    let answer = http.get(format!("{}/ui/tasks?state=running", m.url)).send().await.unwrap();
    assert_eq!(answer.status(), 303);
    assert_eq!(answer.headers()["location"], "/ui/sign-in?next=%2Fui%2Ftasks%3Fstate%3Drunning");
    let page = http.get(format!("{}/ui/sign-in", m.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains(r#"type="password" name="token""#));

    // A wrong token is refused, and no cookie is set.
    let wrong = post(
        &format!("{}/ui/sign-in", m.url),
        "",
        &[("token", "not-the-token-at-all-0000"), ("next", "/ui")],
    )
    .await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("Wrong token."));

    // The right one: a cookie no script can read and no other site's page sends.
    let right =
        post(&format!("{}/ui/sign-in", m.url), "", &[("token", CLUSTER), ("next", "/ui/nodes")])
            .await;
    assert_eq!(right.status(), 303);
    assert_eq!(right.headers()["location"], "/ui/nodes");
    let set = right.headers()["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = set.split(';').next().unwrap();
    let (status, html) = get(&format!("{}/ui/nodes", m.url), cookie).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("<h1>Nodes</h1>"));

    // The cookie opens the UI only: the API still wants its bearer token.
    let api = http.get(format!("{}/v1/tasks", m.url)).header("cookie", cookie).send().await;
    assert_eq!(api.unwrap().status(), 401);
    // A bearer token opens the UI too (for scripts and benchmarks).
    let bearer = http.get(format!("{}/ui", m.url)).bearer_auth(CLUSTER).send().await.unwrap();
    assert_eq!(bearer.status(), 200);

    // A live stream whose session is gone is told so, in its own framing.
    let live = http
        .get(format!("{}/ui/live?page=%2Fui", m.url))
        .header("cookie", "cube_session=revoked-or-wrong-0000000")
        .send()
        .await
        .unwrap();
    assert_eq!(live.headers()["content-type"], "text/event-stream");
    assert!(live.text().await.unwrap().starts_with("event: signed-out"));

    // Signing out forgets the cookie.
    let csrf = csrf_of(&html);
    let out = post(&format!("{}/ui/sign-out", m.url), cookie, &[("csrf", csrf.as_str())]).await;
    assert_eq!(out.status(), 303);
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buttons_are_shown_to_the_roles_that_may_use_them_and_need_the_pages_csrf_token() {
    let m = TestManager::start(&["--token", CLUSTER]).await;
    let admin = m.client.clone().with_token(Some(CLUSTER.parse().unwrap()));
    let mut secrets = Vec::new();
    for role in ["read", "operate"] {
        let request = cube_api::auth::TokenRequest {
            name: format!("ui-{role}"),
            role: role.parse().unwrap(),
            expires_in: None,
        };
        secrets.push(admin.create_token(&request).await.unwrap().secret);
    }
    admin.put_service(&service("web", 0), None).await.unwrap();
    let page = format!("{}/ui/services/web", m.url);

    // A reader sees no button, and cannot act even with a good CSRF token.
    let reader = sign_in(&m.url, &secrets[0]).await;
    let (status, html) = get(&page, &reader).await;
    assert_eq!(status, 200);
    assert!(!html.contains(">Scale</button>"), "{html}");
    let refused = post(
        &format!("{page}/scale"),
        &reader,
        &[("csrf", csrf_of(&html).as_str()), ("count", "2")],
    )
    .await;
    assert_eq!(refused.status(), 403);

    // An operator sees it; without the page's CSRF token it is refused, with it it acts.
    let operator = sign_in(&m.url, &secrets[1]).await;
    let (_, html) = get(&page, &operator).await;
    assert!(html.contains(">Scale</button>"), "{html}");
    assert!(!html.contains(">Drain</button>"), "draining is an admin's");
    for forged in ["", "00000000000000000000000000000000"] {
        let answer =
            post(&format!("{page}/scale"), &operator, &[("csrf", forged), ("count", "2")]).await;
        assert_eq!(answer.status(), 403, "forged CSRF {forged:?}");
    }
    assert_eq!(admin.service("web").await.unwrap().spec.count, 0);
    let csrf = csrf_of(&html);
    let done =
        post(&format!("{page}/scale"), &operator, &[("csrf", csrf.as_str()), ("count", "2")]).await;
    assert_eq!(done.status(), 303);
    assert_eq!(done.headers()["location"], "/ui/services/web");
    assert_eq!(admin.service("web").await.unwrap().spec.count, 2);
    // A bad value is a 400 page saying why.
    let bad =
        post(&format!("{page}/scale"), &operator, &[("csrf", csrf.as_str()), ("count", "many")])
            .await;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("is not a number of instances"));

    // The audit log names who did it, as for the API.
    let records = admin.audit(&cube_api::auth::AuditQuery::default()).await.unwrap();
    let scales: Vec<_> = records.iter().filter(|r| r.operation == "scaleService").collect();
    let by = |who: &str, status: u16| scales.iter().any(|r| r.who == who && r.status == status);
    assert!(by("ui-operate", 303) && by("ui-operate", 403) && by("ui-read", 403), "{scales:?}");

    // A page left open by a token revoked meanwhile is told so at the next change, and its
    // stream ends.
    let live = browser()
        .get(format!("{}/ui/live?page=%2Fui%2Fservices%2Fweb", m.url))
        .header("cookie", &reader)
        .send()
        .await
        .unwrap();
    let mut stream = live.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap();
    assert!(String::from_utf8_lossy(&first.unwrap().unwrap()).starts_with("event: live"));
    admin.revoke_token("ui-read").await.unwrap();
    admin.scale("web", 3).await.unwrap();
    let mut rest = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            rest.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end: {rest}");
    assert!(rest.ends_with("event: signed-out\ndata: \n\n"), "{rest}");
    assert!(!rest.contains("data-desired=\"3\""), "the revoked token saw the change: {rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_page_gets_each_change_from_its_live_stream_and_names_no_other_site() {
    let m = TestManager::start(&[]).await;
    let worker = m.worker("w1", &[]).await;
    wait_until(Duration::from_secs(10), "the worker registered", || async {
        (m.client.nodes().await.ok()?.len() == 1).then_some(())
    })
    .await;

    // The page as served first, then its live part whenever it changes.
    let live =
        browser().get(format!("{}/ui/live?page=%2Fui%2Fservices", m.url)).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let mut stream = live.bytes_stream();
    let mut seen = String::new();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap();
    seen.push_str(&String::from_utf8_lossy(&first.unwrap().unwrap()));
    assert!(seen.starts_with("event: live\n"), "{seen}");
    assert!(!seen.contains("data-service=\"api\""));

    let began = Instant::now();
    m.client.put_service(&service("api", 1), None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("data-service=\"api\"") {
        let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
        seen.push_str(&String::from_utf8_lossy(
            &next.expect("the change in time").unwrap().unwrap(),
        ));
    }
    eprintln!("change on the page's stream after {:?}", began.elapsed());

    // Every page: served, and nothing in it points at another site.
    let task = wait_until(Duration::from_secs(15), "the instance running", || async {
        let tasks = m.client.tasks().await.ok()?;
        tasks.into_iter().find(|t| t.state == cube_core::TaskState::Running)
    })
    .await;
    let pages = [
        "/ui".to_owned(),
        "/ui/services".to_owned(),
        "/ui/services/api".to_owned(),
        "/ui/tasks".to_owned(),
        "/ui/tasks?state=running&service=api".to_owned(),
        format!("/ui/tasks/{}", task.id),
        "/ui/nodes".to_owned(),
        format!("/ui/nodes/{}", worker.node_id),
    ];
    for path in pages {
        let (status, html) = get(&format!("{}{path}", m.url), "").await;
        assert_eq!(status, 200, "{path}: {html}");
        for external in ["href=\"http", "src=\"http", "action=\"http", "href=\"//", "src=\"//"] {
            assert!(!html.contains(external), "{path} holds {external}");
        }
    }
    let (_, task_page) = get(&format!("{}/ui/tasks/{}", m.url, task.id), "").await;
    assert!(task_page.contains("id=\"placement-table\""), "{task_page}");
    assert!(task_page.contains("class=\"chosen\""), "{task_page}");

    // A page is never a blocking query: `index` in its URL is not waited on.
    let at_once = tokio::time::timeout(
        Duration::from_secs(5),
        get(&format!("{}/ui/tasks?index=999999999", m.url), ""),
    )
    .await;
    assert_eq!(at_once.expect("answered at once, not held for a change").0, 200);

    // Unknown things are pages saying so, with the right status.
    let (status, _) = get(&format!("{}/ui/tasks/not-an-id", m.url), "").await;
    assert_eq!(status, 400);
    let (status, _) = get(&format!("{}/ui/services/nothing-here", m.url), "").await;
    assert_eq!(status, 404);
}
