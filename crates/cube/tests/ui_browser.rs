//! The web UI in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven through WebDriver against a real manager and worker. Signs in,
//! watches a service deployed through the API appear without a reload, opens it and one of its
//! tasks (placement table, logs followed), promotes a canary with the button and sees the
//! deployment finish; a wrong token is refused. Every page is photographed into
//! `target/ui-screenshots/` (`CUBE_UI_SCREENSHOTS` to choose), from which `docs/ui/` is taken.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use cube_testkit::browser::{Browser, BrowserOptions};
use fantoccini::Locator;

const CLUSTER: &str = "cluster-token-0123456789abcdef";

fn screenshots() -> PathBuf {
    std::env::var_os("CUBE_UI_SCREENSHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots"),
        PathBuf::from,
    )
}

/// A service whose instances print a numbered line every 200 ms, on nodes of zone `a`.
fn talker(version: &str, canary: u32) -> cube_core::service::ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "name": "web", "count": 2,
        "task": {"name": "web", "driver": "process", "command": "sh",
                 "args": ["-c", "i=0; while true; do echo \"line $i of $V\"; i=$((i+1)); sleep 0.2; done"],
                 "env": {"V": version}, "stop_grace": "1s",
                 "constraints": ["node.labels.zone == a"]},
        "update": {"canary": canary, "min_healthy_time": "1s"}
    }))
    .unwrap()
}

async fn shoot(browser: &Browser, name: &str) {
    let path = screenshots().join(format!("{name}.png"));
    browser.screenshot(&path).await.unwrap();
}

/// The text of the first element `css` finds (looked at again if the live page replaced it).
async fn text(browser: &Browser, css: &str) -> String {
    browser.wait_for_text(css, "", Duration::from_secs(5)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_watches_a_deploy_follows_logs_and_promotes_a_canary() {
    let Some(browser) = Browser::start(BrowserOptions::default()).await.unwrap() else { return };
    let m = TestManager::start(&["--token", CLUSTER]).await;
    // Two nodes: the placement table shows the one chosen and the one refused, and why.
    let _w1 = m.worker("w1", &["--token", CLUSTER, "--label", "zone=a"]).await;
    let _w2 = m.worker("w2", &["--token", CLUSTER, "--label", "zone=b"]).await;
    let api = m.client.clone().with_token(Some(CLUSTER.parse().unwrap()));
    wait_until(Duration::from_secs(10), "the workers registered", || async {
        (api.nodes().await.ok()?.len() == 2).then_some(())
    })
    .await;
    let c = browser.client();

    // Signing in: a wrong token is refused, the cluster token opens the UI.
    c.goto(&format!("{}/ui/services", m.url)).await.unwrap();
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.send_keys("not-the-token-0000000000").await.unwrap();
    browser.click("form button[type=submit]", Duration::from_secs(5)).await.unwrap();
    browser.wait_for_text("[role=alert]", "Wrong token.", Duration::from_secs(5)).await.unwrap();
    shoot(&browser, "sign-in").await;
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.send_keys(CLUSTER).await.unwrap();
    browser.click("form button[type=submit]", Duration::from_secs(5)).await.unwrap();
    browser.wait_for_text("h1", "Services", Duration::from_secs(5)).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/services"));

    // A service deployed through the API appears on the open page without a reload.
    let marker = "window.__cubeNotReloaded = true; return true;";
    c.execute(marker, vec![]).await.unwrap();
    browser.wait_for_text("#live-dot.on", "", Duration::from_secs(5)).await.unwrap();
    let began = Instant::now();
    api.put_service(&talker("1", 0), None).await.unwrap();
    browser.wait_for_text("#live", "web", Duration::from_secs(1)).await.unwrap();
    let seen = began.elapsed();
    let kept = c.execute("return window.__cubeNotReloaded === true;", vec![]).await.unwrap();
    assert_eq!(kept, serde_json::Value::Bool(true), "the page was reloaded");
    eprintln!("the new service appeared on the open page {seen:?} after its PUT was acknowledged");

    // Open it, then one of its tasks: the placement table and the logs, followed.
    wait_until(Duration::from_secs(30), "the first version healthy", || async {
        let s = api.service("web").await.ok()?;
        (s.deployment?.status == cube_core::deployment::DeploymentStatus::Successful).then_some(())
    })
    .await;
    browser.click("a[href='/ui/services/web']", Duration::from_secs(5)).await.unwrap();
    browser.wait_for_text("h1", "Service web", Duration::from_secs(5)).await.unwrap();
    browser.wait_for_text("[data-healthy]", "2", Duration::from_secs(10)).await.unwrap();
    shoot(&browser, "service").await;
    browser.click("tr[data-task] a", Duration::from_secs(5)).await.unwrap();
    browser.wait_for_text("#placement-table", "chosen", Duration::from_secs(5)).await.unwrap();
    let placement = text(&browser, "#placement-table").await;
    assert!(placement.contains("w1") && placement.contains("chosen"), "{placement}");
    assert!(placement.contains("w2") && placement.contains("rejected"), "{placement}");
    // The tail served with the page; following must show lines printed after it.
    let before = browser.wait_for_text("#logs", "line", Duration::from_secs(5)).await.unwrap();
    let last = before.lines().filter_map(|l| l.split(' ').nth(1)?.parse::<u64>().ok()).max();
    let next = format!("line {} of", last.expect("numbered lines in the tail") + 3);
    browser.click("#follow-logs", Duration::from_secs(5)).await.unwrap();
    browser.wait_for_text("#logs", &next, Duration::from_secs(10)).await.unwrap();
    c.execute("document.getElementById('placement-h').scrollIntoView(); return true;", vec![])
        .await
        .unwrap();
    shoot(&browser, "task").await;

    // An update with a canary waits for promotion; the button promotes it.
    api.put_service(&talker("2", 1), None).await.unwrap();
    c.goto(&format!("{}/ui/services/web", m.url)).await.unwrap();
    let promote = "[data-deployment] button.primary";
    browser
        .wait_for_text("[data-deployment]", "needs_promotion", Duration::from_secs(30))
        .await
        .unwrap();
    browser.wait_for_text(promote, "Promote", Duration::from_secs(5)).await.unwrap();
    shoot(&browser, "service-canary").await;
    browser.click(promote, Duration::from_secs(5)).await.unwrap();
    browser
        .wait_for_text("[data-deployment] dd", "successful", Duration::from_secs(60))
        .await
        .unwrap();
    let deployment = api.service("web").await.unwrap().deployment.unwrap();
    assert!(deployment.promoted);
    assert_eq!(deployment.version, 2);
    shoot(&browser, "service-promoted").await;

    // The other pages, for the record.
    for (name, path) in [("overview", "/ui"), ("tasks", "/ui/tasks"), ("nodes", "/ui/nodes")] {
        if let Err(e) = c.goto(&format!("{}{path}", m.url)).await {
            panic!("{path}: {e}\n{}\n{}", browser.logs(), m.process.logs());
        }
        browser.wait_for_text("h1", "", Duration::from_secs(5)).await.unwrap();
        shoot(&browser, name).await;
    }
    browser.click("tr[data-node] a", Duration::from_secs(5)).await.unwrap();
    browser.wait_for_text("h1", "Node w1", Duration::from_secs(5)).await.unwrap();
    shoot(&browser, "node").await;
    browser.close().await.unwrap();

    // The overview in the dark, as a browser that prefers it sees it.
    let Some(dark) =
        Browser::start(BrowserOptions { dark: true, ..BrowserOptions::default() }).await.unwrap()
    else {
        return;
    };
    dark.client().goto(&format!("{}/ui/sign-in", m.url)).await.unwrap();
    dark.client().find(Locator::Css("#token")).await.unwrap().send_keys(CLUSTER).await.unwrap();
    dark.click("form button[type=submit]", Duration::from_secs(5)).await.unwrap();
    dark.wait_for_text("h1", "Overview", Duration::from_secs(5)).await.unwrap();
    shoot(&dark, "overview-dark").await;
    dark.close().await.unwrap();
}
