//! The client CLI (`cube run`, `status`, `stop`, `logs`, `node`) against a real `cube dev`
//! cluster: what people and scripts see, exit codes and one-line errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod cli_support;
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cli_support::{Cluster, closed_port_url, cube, example};
use cube_core::TaskState;

/// The 12-digit short id the tables show (the end of the full id).
fn short(id: &str) -> String {
    id.replace('-', "")[20..].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_file_runs_and_shows_up_in_status_logs_and_stop() {
    let c = Cluster::start().await;
    let run = c.cube(&["run", &example("process.toml")]).success();
    let id = run.submitted_id();
    assert_eq!(run.stdout.trim(), format!("submitted task {id}"));
    c.wait_state(&id, TaskState::Running, Duration::from_secs(10)).await;

    // The list: a table for people, with no colour when stdout is not a terminal.
    let table = c.cube(&["status"]).success().stdout;
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in ["ID", "NAME", "STATE", "NODE", "RESTARTS", "CREATED", "DRIVER", "REASON"] {
        assert!(header.contains(column), "{column} missing from {header:?}");
    }
    let row = lines.find(|l| l.starts_with(&short(&id))).expect("a row for the task");
    for word in ["hello", "running", &c.node_name, "process"] {
        assert!(row.contains(word), "{word} missing from {row:?}");
    }
    assert!(row.contains(" ago ") || row.contains("just now"), "no relative time in {row:?}");
    assert!(!table.contains('\x1b'), "no colour codes in a pipe: {table}");

    // The list as JSON: the API's task views, every field the table shows.
    let list = c.cube(&["status", "-o", "json"]).success().json();
    let task = list.as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).unwrap();
    assert_eq!(task["state"], "running");
    assert_eq!(task["name"], "hello");
    for field in ["node", "restart_count", "created_at", "driver", "reason", "spec", "events"] {
        assert!(task.get(field).is_some(), "{field} missing");
    }

    // Filters.
    assert!(c.cube(&["status", "--state", "running"]).success().stdout.contains(&short(&id)));
    let none = c.cube(&["status", "--state", "failed"]).success();
    assert!(!none.stdout.contains(&short(&id)), "{none:#?}");
    assert!(c.cube(&["status", "--node", &c.node_name]).success().stdout.contains(&short(&id)));

    // One task in detail, by the short id the table shows: placement and history.
    let detail = c.cube(&["status", &short(&id)]).success().stdout;
    for word in [
        id.as_str(),
        "State:",
        "running (desired: running)",
        "Placement:",
        "Scheduler:",
        "Chosen:",
        "CANDIDATE",
        "Events:",
        "pending → scheduled",
        "scheduled → running",
        &c.node_name,
    ] {
        assert!(detail.contains(word), "{word:?} missing from the detail:\n{detail}");
    }
    let json = c.cube(&["status", &id[..13], "-o", "json"]).success().json();
    assert_eq!(json["id"], id.as_str());
    assert!(json["placement"]["chosen"]["name"].is_string(), "{json}");
    assert!(json["events"].as_array().unwrap().len() >= 3, "{json}");

    // Logs: everything, then only the last line.
    let logs = common::wait_until(Duration::from_secs(10), "two lines of output", || async {
        let out = c.cube(&["logs", &id]).success().stdout;
        (out.lines().count() >= 2).then_some(out)
    })
    .await;
    assert!(logs.lines().all(|l| l.starts_with("hello ")), "{logs}");
    let tail = c.cube(&["logs", &short(&id), "--tail", "1"]).success().stdout;
    assert_eq!(tail.lines().count(), 1, "{tail:?}");
    assert!(tail.starts_with("hello "), "{tail:?}");

    // Stop, waiting until it has stopped.
    let stop = c.cube(&["stop", &short(&id), "--wait"]).success().stdout;
    assert!(stop.contains(&format!("stopping task {id}")), "{stop}");
    assert!(stop.contains(&format!("task {id} completed")), "{stop}");
    let t = c.client.task(id.parse().unwrap()).await.unwrap();
    assert_eq!(t.state, TaskState::Completed);
    assert_eq!(t.desired_state, cube_core::DesiredState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_tasks_and_wait_exit_codes() {
    let c = Cluster::start().await;

    // Success: the task runs; the result names the node.
    let ok = c.cube(&["run", "--driver", "process", "--wait", "--", "sleep", "300"]).success();
    let id = ok.submitted_id();
    for word in ["State:", "running", "Name:", "sleep", "Node:", &c.node_name] {
        assert!(ok.stdout.contains(word), "{word} missing: {ok:#?}");
    }
    assert_eq!(c.client.task(id.parse().unwrap()).await.unwrap().state, TaskState::Running);

    // Failure: exit code 3 and one error line saying why.
    let bad = c.cube(&[
        "run", "--driver", "process", "--name", "failing", "--wait", "--", "sh", "-c", "exit 7",
    ]);
    assert_eq!(bad.code, 3, "{bad:#?}");
    let line = bad.error_line();
    assert!(line.contains("(failing) failed"), "{line}");
    assert!(line.contains("exited with code 7"), "{line}");
    assert!(line.contains(&c.node_name), "{line}");

    // JSON without --wait: the task view as submitted, with flags turned into the spec.
    let json = c
        .cube(&[
            "run",
            "-o",
            "json",
            "--driver",
            "process",
            "-e",
            "GREETING=hi",
            "--cpu",
            "0.1",
            "--memory",
            "16MiB",
            "--restart",
            "on-failure",
            "--",
            "sleep",
            "300",
        ])
        .success()
        .json();
    assert_eq!(json["spec"]["env"]["GREETING"], "hi");
    assert_eq!(json["spec"]["resources"]["memory"], "16MiB");
    assert_eq!(json["spec"]["restart"]["mode"], "on-failure");
    assert_eq!(json["spec"]["args"], serde_json::json!(["300"]));
    let second = json["id"].as_str().unwrap().to_owned();

    // Quiet: the id alone, for scripts.
    let quiet = c.cube(&["run", "-q", "--driver", "process", "--", "sleep", "300"]).success();
    let third = quiet.stdout.trim().to_owned();
    assert!(third.parse::<cube_core::TaskId>().is_ok(), "{quiet:#?}");

    // Nothing to run, and a process task without a command: one-line usage errors.
    let nothing = c.cube(&["run"]);
    assert_ne!(nothing.code, 0);
    assert!(nothing.error_line().contains("nothing to run"), "{nothing:#?}");

    for id in [id, second, third] {
        c.cube(&["stop", &id, "--wait"]).success();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_task_fails_the_wait_with_exit_code_3() {
    let c = Cluster::start().await;
    let out = c.cube(&["run", &example("crashloop.toml"), "--wait", "--timeout", "60s"]);
    assert_eq!(out.code, 3, "{out:#?}");
    let id = out.submitted_id();
    let line = out.error_line();
    assert!(line.contains(&format!("task {id} (crashloop) failed")), "{line}");
    assert!(line.contains("exited with code 1"), "{line}");
    let detail = c.cube(&["status", &id]).success().stdout;
    assert!(detail.contains("running → restarting"), "{detail}");
    assert!(detail.contains("→ failed"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_prints_each_line_as_it_is_written() {
    let c = Cluster::start().await;
    let id = c.cube(&["run", &example("process.toml")]).success().submitted_id();
    c.wait_state(&id, TaskState::Running, Duration::from_secs(10)).await;

    let mut child = Command::new(common::cube_bin())
        .args(["--addr", c.url(), "logs", &short(&id), "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let (_, first) = rx.recv_timeout(Duration::from_secs(10)).expect("a first line");
    assert!(first.starts_with("hello "), "{first}");
    // The task prints a line a second: each must show up promptly, not when a buffer fills.
    for n in 0..3 {
        let (_, line) = rx.recv_timeout(Duration::from_millis(1500)).unwrap_or_else(|_| {
            panic!("line {} did not arrive within 1.5s of the one before", n + 2)
        });
        assert!(line.starts_with("hello "), "{line}");
    }

    // Once the task has stopped, the followed stream ends by itself.
    c.cube(&["stop", &id, "--wait"]).success();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cube logs -f did not end after the task stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_listed_and_explained() {
    let c = Cluster::start().await;
    // Wait for the first stats so the table has them.
    common::wait_until(Duration::from_secs(10), "node stats", || async {
        let nodes = c.client.nodes().await.ok()?;
        nodes.first()?.stats.is_some().then_some(())
    })
    .await;

    let table = c.cube(&["node"]).success().stdout;
    let header = table.lines().next().unwrap();
    for column in [
        "NAME",
        "ID",
        "STATE",
        "ADDRESS",
        "TASKS",
        "CPU",
        "MEMORY",
        "CPU BUSY",
        "MEM USED",
        "LAST HEARTBEAT",
    ] {
        assert!(header.contains(column), "{column} missing from {header:?}");
    }
    let row = table.lines().nth(1).unwrap();
    assert!(row.starts_with(&c.node_name), "{row}");
    assert!(row.contains("ready") && row.contains('%') && row.contains("iB"), "{row}");

    let json = c.cube(&["node", "-o", "json"]).success().json();
    assert_eq!(json[0]["id"], c.node_id.as_str());
    assert!(json[0]["stats"]["memory"]["total_bytes"].as_u64().unwrap() > 0);

    for key in [c.node_name.as_str(), &c.node_id, &c.node_id[..8]] {
        let detail = c.cube(&["node", key]).success().stdout;
        for word in ["Name:", "Labels:", "Drivers:", "process", "Stats:", "Load:", "Disk:"] {
            assert!(detail.contains(word), "{word} missing for {key}:\n{detail}");
        }
    }
    let json = c.cube(&["node", &c.node_name, "-o", "json"]).success().json();
    assert_eq!(json["name"], c.node_name.as_str());

    let missing = c.cube(&["node", "no-such-node"]);
    assert_eq!(missing.code, 1);
    assert!(missing.error_line().contains("no node matches no-such-node"), "{missing:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_may_be_shortened_to_a_unique_prefix() {
    let c = Cluster::start().await;
    let a = c.cube(&["run", "--driver", "process", "--", "sleep", "300"]).success().submitted_id();
    let b = c.cube(&["run", "--driver", "process", "--", "sleep", "300"]).success().submitted_id();

    // A prefix both ids share is ambiguous: the error lists them.
    let common_len = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    assert!(common_len >= 2, "v7 ids made together share their time prefix: {a} {b}");
    let shared = &a[..common_len];
    let out = c.cube(&["status", shared]);
    assert_eq!(out.code, 1, "{out:#?}");
    let line = out.error_line();
    assert!(line.contains("ambiguous") && line.contains(&a) && line.contains(&b), "{line}");

    // One more character of the full id, or the short id, names one task.
    let unique = &a[..common_len + 1];
    assert_eq!(c.cube(&["status", unique, "-o", "json"]).success().json()["id"], a.as_str());
    assert_eq!(
        c.cube(&["status", &short(&b)[..8], "-o", "json"]).success().json()["id"],
        b.as_str()
    );

    // Nothing matches.
    let out = c.cube(&["stop", "nomatch"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.error_line(), "error: no task matches nomatch");

    // A full id that does not exist is the manager's 404, in one line.
    let out = c.cube(&["status", "01900000-0000-7000-8000-000000000001"]);
    assert_eq!(out.code, 1);
    assert!(out.error_line().contains("not found"), "{out:#?}");

    for id in [&a, &b] {
        c.cube(&["stop", &short(id), "--wait"]).success();
    }
}

#[test]
fn a_task_file_with_a_typo_is_one_line_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let addr = closed_port_url();

    let typo = dir.path().join("web.toml");
    std::fs::write(
        &typo,
        "name = \"web\"\ndriver = \"docker\"\nimgae = \"cube-test/busybox:latest\"\n",
    )
    .unwrap();
    let out = cube(&["--addr", &addr, "run", typo.to_str().unwrap()], &[]);
    assert_eq!(out.code, 1, "{out:#?}");
    let expected = format!("error: {}:3:1: unknown field `imgae`, expected one of", typo.display());
    assert!(out.error_line().starts_with(&expected), "{out:#?}");
    assert!(out.stdout.is_empty());

    let nested = dir.path().join("nested.toml");
    std::fs::write(
        &nested,
        "name = \"web\"\ndriver = \"process\"\ncommand = \"sh\"\n\n[restart]\nmode = \"sometimes\"\n",
    )
    .unwrap();
    let out = cube(&["--addr", &addr, "run", nested.to_str().unwrap()], &[]);
    let line = out.error_line();
    assert!(
        line.starts_with(&format!("error: {}:6:8: restart.mode: ", nested.display())),
        "{line}"
    );
    assert!(line.contains("unknown variant `sometimes`"), "{line}");

    let invalid = dir.path().join("invalid.json");
    std::fs::write(&invalid, r#"{"name": "", "driver": "docker"}"#).unwrap();
    let out = cube(&["--addr", &addr, "run", invalid.to_str().unwrap()], &[]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.error_line(),
        format!(
            "error: {}: invalid task spec: name: must not be empty; image: is required by the \
             docker driver",
            invalid.display()
        )
    );

    let missing = dir.path().join("missing.toml");
    let out = cube(&["--addr", &addr, "run", missing.to_str().unwrap()], &[]);
    assert_eq!(
        out.error_line(),
        format!("error: cannot read task file {}: no such file", missing.display())
    );
}

#[test]
fn the_examples_are_valid_task_files() {
    for name in ["web.toml", "crashloop.toml", "process.toml"] {
        let out = cube(&["run", &example(name), "--dry-run", "-o", "json"], &[]).success();
        let spec = out.json();
        assert!(spec["name"].is_string(), "{name}: {spec}");
    }
    let web = cube(&["run", &example("web.toml"), "--dry-run", "-o", "json"], &[]).json();
    assert_eq!(web["image"], common::TEST_IMAGE);
    assert_eq!(web["ports"][0]["host"], 0);
    assert_eq!(web["health"]["type"], "http");
    assert_eq!(web["restart"]["mode"], "on-failure");
    let service = cube(&["deploy", &example("web-service.toml"), "--dry-run"], &[]).json();
    assert_eq!((service["name"].as_str(), service["count"].as_u64()), (Some("web"), Some(3)));
    assert_eq!(service["task"]["health"]["type"], "http");
    assert_eq!(service["update"]["min_healthy_time"], "3s");
}

#[test]
fn an_unreachable_manager_is_one_line_naming_the_address() {
    let addr = closed_port_url();
    for args in [
        vec!["--addr", addr.as_str(), "status"],
        vec!["--addr", addr.as_str(), "node"],
        vec!["--addr", addr.as_str(), "logs", "abc"],
        vec!["--addr", addr.as_str(), "run", "--driver", "process", "--", "true"],
    ] {
        let out = cube(&args, &[]);
        assert_eq!(out.code, 1, "{out:#?}");
        assert_eq!(
            out.error_line(),
            format!("error: cannot reach manager at {addr}: connection refused"),
            "{args:?}"
        );
    }
    // CUBE_ADDR works as well as --addr.
    let out = cube(&["status"], &[("CUBE_ADDR", &addr)]);
    assert_eq!(
        out.error_line(),
        format!("error: cannot reach manager at {addr}: connection refused")
    );
}

#[test]
fn agents_refuse_an_unauthenticated_api_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for args in [
        vec!["manager", "--listen", "0.0.0.0:0", "--data-dir", data],
        vec!["worker", "--listen", "0.0.0.0:0", "--data-dir", data],
        vec!["dev", "--listen", "0.0.0.0:0", "--data-dir", data],
    ] {
        let out = cube(&args, &[]);
        assert_eq!(out.code, 1, "{out:#?}");
        assert!(
            out.error_line().starts_with("error: refusing to listen on 0.0.0.0:0 without a token"),
            "{args:?}: {out:#?}"
        );
    }
    let out = cube(&["manager", "--token", "short"], &[]);
    assert_eq!(out.code, 2, "a weak token is bad usage: {out:#?}");
    assert!(out.stderr.contains("at least 16 characters"), "{out:#?}");
}

#[test]
fn unusable_tls_files_are_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let bad = bad.to_str().unwrap();
    let out = cube(&["manager", "--data-dir", data, "--tls-cert", bad, "--tls-key", bad], &[]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert_eq!(
        out.error_line(),
        format!("error: {bad}: no certificate in the file (expected PEM)")
    );
    let out = cube(&["status", "--tls-ca", "/nonexistent/ca.pem"], &[]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.error_line().starts_with("error: /nonexistent/ca.pem: "), "{out:#?}");
    let out = cube(&["worker", "--data-dir", data, "--tls-cert", bad], &[]);
    assert_eq!(out.code, 2, "a certificate without its key is bad usage: {out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_send_the_token_and_say_when_it_is_refused() {
    const TOKEN: &str = "cli-token-0123456789abcdef";
    let m = common::TestManager::start(&["--token", TOKEN]).await;
    let out = cube(&["--addr", &m.url, "status"], &[]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert_eq!(
        out.error_line(),
        format!(
            "error: manager at {} refused the request: this server requires a token: set \
             CUBE_TOKEN or pass --token",
            m.url
        )
    );
    let out = cube(&["--addr", &m.url, "status", "--token", "wrong-token-0123456789"], &[]);
    assert_eq!(
        out.error_line(),
        format!("error: manager at {} refused the request: wrong token", m.url)
    );
    let out = cube(&["--addr", &m.url, "-o", "json", "node"], &[("CUBE_TOKEN", TOKEN)]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.json(), serde_json::json!([]));

    // From a file, as mounted secrets are (a trailing newline is fine).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let file = file.to_str().unwrap();
    let out = cube(&["--addr", &m.url, "node", "--token-file", file], &[]);
    assert_eq!(out.code, 0, "{out:#?}");
    let out = cube(&["--addr", &m.url, "node", "--token-file", "/nonexistent/token"], &[]);
    assert!(
        out.error_line().starts_with("error: /nonexistent/token: cannot read the token: "),
        "{out:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_web_example_runs_and_serves() {
    if !common::docker_ready() {
        return;
    }
    let _serial = common::docker_lock().await;
    let c = Cluster::start().await;
    let out = c.cube(&["run", &example("web.toml"), "--wait", "--timeout", "60s"]).success();
    let id = out.submitted_id();
    assert!(out.stdout.contains("running (healthy)"), "{out:#?}");
    let port: u16 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Ports:"))
        .and_then(|p| p.trim().split("->").next()?.rsplit(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no host port in {out:#?}"));
    let http = cube_http::tls::http_client_builder().build().unwrap();
    let body = http.get(format!("http://127.0.0.1:{port}/")).send().await.unwrap();
    let body = body.text().await.unwrap();
    assert!(body.contains("cube test image"), "{body}");

    let detail = c.cube(&["status", &id]).success().stdout;
    assert!(detail.contains("cube-test/busybox:latest") && detail.contains("->80/tcp"), "{detail}");
    c.cube(&["stop", &id, "--wait"]).success();
}
