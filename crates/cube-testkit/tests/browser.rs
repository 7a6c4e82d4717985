//! The browser harness against a page served here: clicks, waits for text, screenshots, the
//! colour scheme, and no process left behind however the browser ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use cube_testkit::browser::{Browser, BrowserOptions};
use fantoccini::Locator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: &str = "<!doctype html><title>smoke</title>
<button id=go onclick=\"document.getElementById('out').textContent='clicked'\">Go</button>
<p id=out>waiting</p>
<p id=scheme></p>
<script>
document.getElementById('scheme').textContent =
  'dark=' + matchMedia('(prefers-color-scheme: dark)').matches;
</script>";

/// Serves `PAGE` to every request on a loopback port; returns `http://127.0.0.1:PORT/`.
async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // One read holds the whole of a browser's small GET.
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

/// Fails if a process still names the browser's directory on its command line (`pgrep -f`):
/// Chromium's processes (`--user-data-dir=DIR/profile`) and its crash handlers (their database
/// is under `DIR/home`), or if the directory is still there.
fn assert_no_process(dir: &Path) {
    let pattern = dir.display().to_string();
    let out = std::process::Command::new("pgrep").args(["-a", "-f", &pattern]).output().unwrap();
    let left = String::from_utf8_lossy(&out.stdout);
    assert!(left.trim().is_empty(), "processes left behind:\n{left}");
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_wait_screenshot() {
    let began = Instant::now();
    let Some(browser) = Browser::start(BrowserOptions::default()).await.unwrap() else {
        return;
    };
    let started = began.elapsed();
    let url = serve().await;
    let client = browser.client();
    client.goto(&url).await.unwrap();
    let navigated = began.elapsed();

    let scheme = browser.wait_for_text("#scheme", "dark=", Duration::from_secs(10)).await.unwrap();
    assert_eq!(scheme, "dark=false", "the default is light");
    client.find(Locator::Css("#go")).await.unwrap().click().await.unwrap();
    let out = browser.wait_for_text("#out", "clicked", Duration::from_secs(10)).await.unwrap();
    assert_eq!(out, "clicked");

    let shots = tempfile::tempdir().unwrap();
    let path = shots.path().join("nested/dir/smoke.png");
    browser.screenshot(&path).await.unwrap();
    let png = std::fs::read(&path).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // IHDR: the viewport is what was asked for, not the window.
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (1280, 900));

    // A text that never comes: the error says what was there.
    let err = browser.wait_for_text("#out", "never", Duration::from_millis(200)).await.unwrap_err();
    assert!(err.to_string().contains("last seen: \"clicked\""), "{err}");
    let err = browser.wait_for_text("#nope", "x", Duration::from_millis(200)).await.unwrap_err();
    assert!(err.to_string().contains("last seen: no element matches"), "{err}");

    let dir = browser.dir().to_owned();
    let closing = Instant::now();
    browser.close().await.unwrap();
    eprintln!(
        "browser: started in {started:?}, navigated at {navigated:?}, closed in {:?}",
        closing.elapsed()
    );
    assert_no_process(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dark_scheme() {
    let options = BrowserOptions { dark: true, width: 800, height: 600 };
    let Some(browser) = Browser::start(options).await.unwrap() else {
        return;
    };
    browser.client().goto(&serve().await).await.unwrap();
    let scheme = browser.wait_for_text("#scheme", "dark=", Duration::from_secs(10)).await.unwrap();
    assert_eq!(scheme, "dark=true");
    let size = browser.client().execute("return [innerWidth, innerHeight]", vec![]).await.unwrap();
    assert_eq!(size, serde_json::json!([800, 600]));
    let dir = browser.dir().to_owned();
    browser.close().await.unwrap();
    assert_no_process(&dir);
}

/// Dropped without `close`, as when a test panics: everything is killed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_kills_everything() {
    let Some(browser) = Browser::start(BrowserOptions::default()).await.unwrap() else {
        return;
    };
    browser.client().goto(&serve().await).await.unwrap();
    let dir = browser.dir().to_owned();
    let pattern = dir.display().to_string();
    let out = std::process::Command::new("pgrep").args(["-f", &pattern]).output().unwrap();
    assert!(!out.stdout.is_empty(), "pgrep finds the running browser");
    drop(browser);
    assert_no_process(&dir);
}

/// Hosts other than loopback do not resolve: the browser sends nothing off the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_only() {
    let Some(browser) = Browser::start(BrowserOptions::default()).await.unwrap() else {
        return;
    };
    let err = browser.client().goto("http://example.com/").await.unwrap_err();
    assert!(err.to_string().contains("ERR_NAME_NOT_RESOLVED"), "{err}");
    let url = serve().await.replace("127.0.0.1", "localhost");
    browser.client().goto(&url).await.unwrap();
    browser.wait_for_text("#out", "waiting", Duration::from_secs(10)).await.unwrap();
    browser.close().await.unwrap();
}
