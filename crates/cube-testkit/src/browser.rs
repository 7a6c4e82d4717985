//! Headless Chromium for the web UI's tests and benchmarks: Debian's `chromium`, driven over
//! WebDriver by Debian's `chromium-driver` (`chromedriver`) through [`fantoccini`].
//!
//! Each [`Browser`] has a chromedriver of its own on a loopback port the OS picked, and a
//! temporary directory for Chromium's profile, its `HOME` and chromedriver's log. The browser
//! reaches loopback only (every other host name and address fails to resolve) and never
//! updates, syncs or reports anything. Dropping a [`Browser`], even while a test panics, kills
//! chromedriver and every process Chromium started.
//!
//! ```no_run
//! # async fn example() -> Result<(), cube_testkit::browser::BrowserError> {
//! use cube_testkit::browser::{Browser, BrowserOptions};
//! use fantoccini::Locator;
//! use std::time::Duration;
//!
//! let Some(browser) = Browser::start(BrowserOptions::default()).await? else {
//!     return Ok(()); // Not installed, and not under CI: skipped.
//! };
//! browser.client().goto("http://127.0.0.1:8080/").await.unwrap();
//! browser.client().find(Locator::Css("button")).await.unwrap().click().await.unwrap();
//! browser.wait_for_text("#status", "saved", Duration::from_secs(5)).await?;
//! browser.screenshot("target/ui/saved.png".as_ref()).await?;
//! browser.close().await
//! # }
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use fantoccini::Locator;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::wait::poll_until;

/// How long chromedriver may take to report its port and answer `/status`.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long chromedriver may take to start Chromium (a cold start on a busy machine).
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Chromium may take to quit when the session ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long killed processes may take to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`Browser::wait_for_text`] looks at the page.
const TEXT_POLL: Duration = Duration::from_millis(50);

/// Why a browser could not be started or a browser operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// `chromium` or `chromedriver` is missing (an error under CI only: elsewhere
    /// [`Browser::start`] skips).
    #[error("{program} is not installed at {} (apt-get install chromium chromium-driver)", path.display())]
    NotInstalled {
        /// `chromium` or `chromedriver`.
        program: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A directory or file could not be made or written, or chromedriver could not be run.
    #[error("cannot {what}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// chromedriver did not report its port, answer `/status` or start Chromium in time, or
    /// Chromium did not quit in time.
    #[error("{what} within {timeout:?}; chromedriver's log:\n{log}")]
    NotReady {
        /// What did not happen.
        what: &'static str,
        /// How long it was given.
        timeout: Duration,
        /// What chromedriver and Chromium logged.
        log: String,
    },
    /// chromedriver could not open a session (most often: Chromium failed to start).
    #[error("chromedriver could not start chromium; chromedriver's log:\n{log}")]
    Session {
        /// The WebDriver error.
        #[source]
        source: fantoccini::error::NewSessionError,
        /// What chromedriver and Chromium logged.
        log: String,
    },
    /// A WebDriver command failed.
    #[error("WebDriver command failed: {what}")]
    Command {
        /// The command.
        what: String,
        /// The WebDriver error.
        #[source]
        source: fantoccini::error::CmdError,
    },
    /// [`Browser::wait_for_text`] did not see its text in time.
    #[error("no {css:?} containing {needle:?} within {timeout:?}; last seen: {last}")]
    TextTimeout {
        /// The CSS selector.
        css: String,
        /// The text waited for.
        needle: String,
        /// How long it was given.
        timeout: Duration,
        /// The element's last text, or why there was none.
        last: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrowserError {
    let what = what.into();
    move |source| BrowserError::Io { what, source }
}

fn command(what: impl Into<String>) -> impl FnOnce(fantoccini::error::CmdError) -> BrowserError {
    let what = what.into();
    move |source| BrowserError::Command { what, source }
}

/// The Chromium binary: `$CUBE_CHROMIUM`, or Debian's.
pub fn chromium_bin() -> PathBuf {
    std::env::var_os("CUBE_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// The chromedriver binary: `$CUBE_CHROMEDRIVER`, or Debian's.
pub fn chromedriver_bin() -> PathBuf {
    std::env::var_os("CUBE_CHROMEDRIVER")
        .map_or_else(|| PathBuf::from("/usr/bin/chromedriver"), PathBuf::from)
}

/// How the browser looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrowserOptions {
    /// Pages see `prefers-color-scheme: dark` (otherwise `light`, whatever the machine's theme).
    pub dark: bool,
    /// The viewport's width in CSS pixels (and the screenshots', at a device pixel ratio of 1).
    pub width: u32,
    /// The viewport's height in CSS pixels.
    pub height: u32,
}

impl Default for BrowserOptions {
    /// Light, 1280×900.
    fn default() -> Self {
        Self { dark: false, width: 1280, height: 900 }
    }
}

/// A headless Chromium with its own chromedriver, both killed when dropped.
#[derive(Debug)]
pub struct Browser {
    // Dropped first: the session's last handle (fantoccini then sends a last, harmless, DELETE).
    client: fantoccini::Client,
    processes: Processes,
}

impl Browser {
    /// Starts chromedriver and, through it, a headless Chromium, with a blank page open.
    ///
    /// Returns `None` (printing `skipped: ...`) when `chromium` or `chromedriver` is not
    /// installed, except under CI (`CI` set), where that is an error.
    pub async fn start(options: BrowserOptions) -> Result<Option<Self>, BrowserError> {
        let (chromium, chromedriver) = (chromium_bin(), chromedriver_bin());
        for (program, path) in [("chromium", &chromium), ("chromedriver", &chromedriver)] {
            if path.is_file() {
                continue;
            }
            if std::env::var_os("CI").is_some() {
                return Err(BrowserError::NotInstalled { program, path: path.clone() });
            }
            #[expect(clippy::print_stderr, reason = "tells the test's output why it did nothing")]
            {
                eprintln!(
                    "skipped: {program} is not installed at {} (apt-get install chromium chromium-driver)",
                    path.display()
                );
            }
            return Ok(None);
        }

        let dir = tempfile::Builder::new()
            .prefix("cube-browser-")
            .tempdir()
            .map_err(io("create a temporary directory"))?;
        let (profile, home) = (dir.path().join("profile"), dir.path().join("home"));
        for d in [&profile, &home] {
            std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
        }
        let log = dir.path().join("chromedriver.log");
        // Append mode for both writers (chromedriver's stderr, and the copy of its stdout).
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(format!("create {}", log.display())))?;

        let mut driver = Command::new(&chromedriver)
            // The OS picks the port; chromedriver prints it on stdout.
            .arg("--port=0")
            // Chromium's own stderr into the log (chromedriver drops it otherwise): it says why
            // Chromium did not start.
            .arg("--enable-chrome-logs")
            // Chromium writes outside its profile too (the crash handler's database under
            // ~/.config, dconf's cache under ~/.cache): keep it all in the temporary directory.
            // The crash handler then names that directory on its command line, which is how
            // `stop` finds it: it daemonizes out of the process group.
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            // A group of its own, which Chromium's processes inherit: one kill ends them all.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(io(format!("run {}", chromedriver.display())))?;
        // From here on, an error drops `processes`, which kills chromedriver and what it started.
        let stdout = driver.stdout.take();
        let processes = Processes { driver: Some(driver), dir, log };
        let port = processes.port(stdout).await?;
        processes.wait_status(port).await?;

        // Plain HTTP to chromedriver on loopback: fantoccini is built without TLS.
        let mut builder = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        );
        builder.capabilities(capabilities(&chromium, &profile, options));
        let url = format!("http://127.0.0.1:{port}");
        let client = match tokio::time::timeout(SESSION_TIMEOUT, builder.connect(&url)).await {
            Ok(Ok(client)) => client,
            Ok(Err(source)) => return Err(BrowserError::Session { source, log: processes.logs() }),
            Err(_) => {
                return Err(BrowserError::NotReady {
                    what: "chromium did not start",
                    timeout: SESSION_TIMEOUT,
                    log: processes.logs(),
                });
            }
        };
        let browser = Self { client, processes };
        browser.size_viewport(options).await?;
        Ok(Some(browser))
    }

    /// The WebDriver client: `goto`, `find`, `click`, `send_keys`, `execute`, ...
    pub fn client(&self) -> &fantoccini::Client {
        &self.client
    }

    /// Where the profile (`profile/`), Chromium's `HOME` (`home/`) and chromedriver's log
    /// (`chromedriver.log`) are; removed when the browser is dropped.
    pub fn dir(&self) -> &Path {
        self.processes.dir.path()
    }

    /// What chromedriver and Chromium logged so far.
    pub fn logs(&self) -> String {
        self.processes.logs()
    }

    /// Saves a PNG of the viewport to `path`, creating its parent directories.
    pub async fn screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let png = self.client.screenshot().await.map_err(command("screenshot"))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io(format!("create {}", parent.display())))?;
        }
        tokio::fs::write(path, png).await.map_err(io(format!("write {}", path.display())))
    }

    /// Waits until the first element matching `css` has a text (as rendered: hidden elements
    /// have none) containing `needle`, and returns that text. On timeout the error says what
    /// was last seen.
    pub async fn wait_for_text(
        &self,
        css: &str,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, BrowserError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("nothing (the browser did not answer in time)");
        loop {
            // Each look is bounded too: a page stuck in a script must not outlast the deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            let look = async {
                let element = self.client.find(Locator::Css(css)).await?;
                element.text().await
            };
            match tokio::time::timeout(left, look).await {
                Ok(Ok(text)) if text.contains(needle) => return Ok(text),
                Ok(Ok(text)) => last = format!("{text:?}"),
                Ok(Err(e)) if e.is_no_such_element() => last = "no element matches".into(),
                Ok(Err(e)) => last = format!("an error: {e}"),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::TextTimeout {
                    css: css.to_owned(),
                    needle: needle.to_owned(),
                    timeout,
                    last,
                });
            }
            // Polling the DOM is the condition here; the deadline bounds it.
            tokio::time::sleep(TEXT_POLL.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
    }

    /// Clicks the first element matching `css`, once there is one. A live page may replace
    /// the element between finding and clicking it (its live part is swapped in whole): the
    /// click is then made on the new one, until `timeout`.
    pub async fn click(&self, css: &str, timeout: Duration) -> Result<(), BrowserError> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = async { self.client.find(Locator::Css(css)).await?.click().await };
            let retry = match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_no_such_element() || e.is_stale_element_reference() => e,
                Err(e) => return Err(command(format!("click {css}"))(e)),
            };
            if Instant::now() >= deadline {
                return Err(command(format!("click {css} within {timeout:?}"))(retry));
            }
            // Polling the DOM is the condition here; the deadline bounds it.
            tokio::time::sleep(TEXT_POLL.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
    }

    /// Ends the session (Chromium quits), then stops chromedriver and anything left.
    pub async fn close(mut self) -> Result<(), BrowserError> {
        let close = self.client.clone().close();
        let closed = match tokio::time::timeout(CLOSE_TIMEOUT, close).await {
            Ok(closed) => closed.map_err(command("close the session")),
            Err(_) => Err(BrowserError::NotReady {
                what: "chromium did not quit",
                timeout: CLOSE_TIMEOUT,
                log: self.logs(),
            }),
        };
        // Killed either way; after a clean quit, only chromedriver is left.
        self.processes.stop();
        closed
    }

    /// Resizes the window so that the viewport, not the window, is `width`×`height`: headless
    /// Chromium still draws a window frame (143 px high in Chromium 156) inside
    /// `--window-size`.
    async fn size_viewport(&self, options: BrowserOptions) -> Result<(), BrowserError> {
        let script = "return [outerWidth - innerWidth, outerHeight - innerHeight]";
        let frame = self.client.execute(script, Vec::new()).await.map_err(command("measure"))?;
        let px = |i: usize| frame.get(i).and_then(Value::as_u64).unwrap_or(0);
        let (dw, dh) = (px(0), px(1));
        if (dw, dh) == (0, 0) {
            return Ok(());
        }
        let grow = |size: u32, by: u64| size.saturating_add(u32::try_from(by).unwrap_or(0));
        self.client
            .set_window_size(grow(options.width, dw), grow(options.height, dh))
            .await
            .map_err(command("resize the window"))
    }
}

/// chromedriver (and, in its process group, Chromium) and the temporary directory they use:
/// the processes are killed when dropped, before the directory is removed.
#[derive(Debug)]
struct Processes {
    /// `None` once stopped.
    driver: Option<Child>,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Processes {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reads chromedriver's stdout into the log, returning the port from its
    /// `ChromeDriver was started successfully on port N.` line.
    async fn port(&self, stdout: Option<std::process::ChildStdout>) -> Result<u16, BrowserError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut copy = std::fs::OpenOptions::new().append(true).open(&self.log).ok();
        if let Some(stdout) = stdout {
            // A thread, not the runtime: the pipe blocks. It reads until chromedriver exits, so
            // chromedriver never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(log) = copy.as_mut() {
                        let _ = writeln!(log, "{line}");
                    }
                    let port = line
                        .split("started successfully on port ")
                        .nth(1)
                        .and_then(|p| p.trim().trim_end_matches('.').parse::<u16>().ok());
                    if let Some(port) = port
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(port);
                    }
                }
            });
        }
        match tokio::time::timeout(DRIVER_TIMEOUT, rx).await {
            Ok(Ok(port)) => Ok(port),
            // The sender is gone: chromedriver exited without saying its port.
            Ok(Err(_)) => Err(BrowserError::NotReady {
                what: "chromedriver exited before reporting its port",
                timeout: DRIVER_TIMEOUT,
                log: self.logs(),
            }),
            Err(_) => Err(BrowserError::NotReady {
                what: "chromedriver did not report its port",
                timeout: DRIVER_TIMEOUT,
                log: self.logs(),
            }),
        }
    }

    /// Waits until chromedriver answers `GET /status` with `"ready":true`.
    async fn wait_status(&self, port: u16) -> Result<(), BrowserError> {
        poll_until(DRIVER_TIMEOUT, Duration::from_millis(20), "chromedriver /status", || async {
            ready(port).await.then_some(())
        })
        .await
        .map_err(|_| BrowserError::NotReady {
            what: "chromedriver did not answer /status",
            timeout: DRIVER_TIMEOUT,
            log: self.logs(),
        })
    }

    fn stop(&mut self) {
        if let Some(driver) = self.driver.take() {
            stop(driver, self.dir.path());
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether chromedriver on `port` says it is ready for a session (a plain HTTP/1.1 exchange;
/// chromedriver insists on a loopback `Host`, and keeps the connection open whatever the
/// request says: the answer is read until it tells).
async fn ready(port: u16) -> bool {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request = format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while answer.len() < 64 * 1024 {
            let n = stream.read(&mut chunk).await.ok()?;
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer);
            if text.contains("\"ready\":true") {
                return Some(true);
            }
            if n == 0 || text.contains("\"ready\":false") {
                return Some(false);
            }
        }
        Some(false)
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), exchange).await, Ok(Some(true)))
}

/// The session's capabilities: Chromium headless, in `profile`, reaching nothing but loopback.
fn capabilities(
    chromium: &Path,
    profile: &Path,
    options: BrowserOptions,
) -> serde_json::Map<String, Value> {
    let BrowserOptions { dark, width, height } = options;
    let args = [
        "--headless=new".to_owned(),
        // Root in a container: no user namespaces for the sandbox. The pages are our own.
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        format!("--window-size={width},{height}"),
        "--force-device-scale-factor=1".to_owned(),
        format!("--user-data-dir={}", profile.display()),
        // 0 is dark, 1 light (Blink's PreferredColorScheme), for `prefers-color-scheme`; light
        // is explicit too, so that the machine's theme never leaks in.
        format!("--blink-settings=preferredColorScheme={}", if dark { 0 } else { 1 }),
        // Nothing but loopback: no background traffic, and (because even with these flags
        // Chromium 156 still looked up accounts.google.com, clients2.google.com,
        // update.googleapis.com and the default search engine) every host name and address
        // but loopback fails to resolve.
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--no-first-run".to_owned(),
        "--no-default-browser-check".to_owned(),
        "--disable-default-apps".to_owned(),
        "--metrics-recording-only".to_owned(),
        "--disable-domain-reliability".to_owned(),
        // chromedriver merges this with its own `--disable-features`.
        "--disable-features=Translate,OptimizationHints,MediaRouter".to_owned(),
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE ::1"
            .to_owned(),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args }));
    // A page that never loads fails its test in 30 s, not WebDriver's default 300 s.
    caps.insert("timeouts".into(), json!({ "pageLoad": 30_000, "script": 30_000 }));
    caps
}

/// Kills chromedriver's process group (chromedriver and Chromium's processes) and any other
/// process naming `dir` on its command line (Chromium's crash handler, which leaves the group),
/// then waits until they are gone, so that `dir` can be removed.
fn stop(mut driver: Child, dir: &Path) {
    let group = i32::try_from(driver.id()).ok().and_then(rustix::process::Pid::from_raw);
    if let Some(group) = group {
        // Before reaping chromedriver, while its pid still names the group.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    let _ = driver.kill();
    let _ = driver.wait();
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let left = naming(dir);
        if left.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in left {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        // A deadline on SIGKILLed processes' exit (milliseconds), not synchronisation.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Live processes (not zombies) whose command line mentions `dir`.
fn naming(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // A zombie's command line is empty.
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                !needle.is_empty() && cmd.windows(needle.len()).any(|w| w == needle)
            })
        })
        .filter(|pid| u32::try_from(*pid).is_ok_and(crate::process::alive))
        .collect()
}
