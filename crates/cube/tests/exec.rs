//! `cube exec` through a real manager to a real worker, for process tasks and containers on the
//! real engine: exit codes, a mebibyte through stdin, a terminal driven through a pty, a
//! client that goes away mid-session, the events an exec leaves, and bad requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{TEST_IMAGE, TestManager, TestWorker, docker_lock, docker_ready, wait_until};
use cube_api::events::{EventObject, EventType, StreamLine};
use cube_api::exec::Control;
use cube_core::{TaskId, TaskState};
use futures_util::StreamExt;

/// `cube --addr URL exec ARGS`, with `input` on its stdin.
fn cube_exec(url: &str, args: &[&str], input: Option<&[u8]>) -> Output {
    let mut child = Command::new(common::cube_bin())
        .args(["--addr", url, "exec"])
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    child.wait_with_output().unwrap()
}

async fn cluster() -> (TestManager, TestWorker) {
    let m = TestManager::start(&[]).await;
    let w = m.worker("w1", &[]).await;
    wait_until(Duration::from_secs(10), "the node", || async {
        (m.client.nodes().await.ok()?.len() == 1).then_some(())
    })
    .await;
    (m, w)
}

/// A process task that sleeps.
fn sleeper() -> serde_json::Value {
    serde_json::json!({"name": "p", "driver": "process", "command": "sleep", "args": ["600"]})
}

/// A container that sleeps.
fn container() -> serde_json::Value {
    serde_json::json!({"name": "c", "driver": "docker", "image": TEST_IMAGE,
        "command": "sleep", "args": ["600"], "stop_grace": "1s"})
}

async fn running(m: &TestManager, spec: serde_json::Value) -> TaskId {
    let id = m.client.submit(None, &common::spec(spec)).await.unwrap().task.id;
    common::wait_state(&m.client, id, TaskState::Running, Duration::from_secs(30)).await;
    id
}

/// What every driver must do: exit codes, stdout and stderr apart, a mebibyte of stdin.
async fn basics(m: &TestManager, id: TaskId) {
    let url = m.url.clone();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let out = cube_exec(&url, &[&id, "--", "sh", "-c", "echo out; echo err >&2; exit 7"], None);
        assert_eq!(out.status.code(), Some(7), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
        let mib = vec![b'x'; 1 << 20];
        let out = cube_exec(&url, &["-i", &id, "--", "wc", "-c"], Some(&mib));
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1048576");
    })
    .await
    .unwrap();
}

/// Drives `cube exec -it ID -- sh` through a pseudo-terminal (`script`): what is typed is
/// echoed and run, and the shell's exit code comes back.
async fn terminal(m: &TestManager, id: TaskId) {
    let url = m.url.clone();
    tokio::task::spawn_blocking(move || {
        let cmd = format!("{} --addr {url} exec -it {id} -- sh", common::cube_bin().display());
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"echo typed-$((6*7))\nexit 5\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("echo typed-$((6*7))"), "what was typed is echoed: {text:?}");
        assert!(text.contains("typed-42"), "and run: {text:?}");
        assert_eq!(out.status.code(), Some(5), "{text:?}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_in_a_process_task_keeps_exit_codes_streams_and_stdin() {
    let (m, _w) = cluster().await;
    let id = running(
        &m,
        serde_json::json!({"name": "p", "driver": "process",
        "command": "sleep", "args": ["600"], "env": {"GREETING": "from-the-task"}}),
    )
    .await;
    basics(&m, id).await;
    terminal(&m, id).await;
    let url = m.url.clone();
    let task = id.to_string();
    let codes = tokio::task::spawn_blocking(move || {
        // Its environment is the task's.
        let out = cube_exec(&url, &[&task, "--", "sh", "-c", "echo $GREETING"], None);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "from-the-task\n");
        let out = cube_exec(&url, &[&task, "--", "sh", "-c", "echo $CUBE_TASK_ID"], None);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), task, "the driver's variables too");
        // 200 sessions, 4 at a time, each with its own code.
        let want: Vec<u8> = (0..200).map(|_| fastrand::u8(..)).collect();
        let mut got = vec![0u8; want.len()];
        std::thread::scope(|scope| {
            for (chunk, out) in want.chunks(50).zip(got.chunks_mut(50)) {
                let (url, task) = (&url, &task);
                scope.spawn(move || {
                    for (code, slot) in chunk.iter().zip(out) {
                        let script = format!("exit {code}");
                        let run = cube_exec(url, &[task, "--", "sh", "-c", &script], None);
                        *slot = u8::try_from(run.status.code().unwrap()).unwrap();
                    }
                });
            }
        });
        (want, got)
    })
    .await
    .unwrap();
    assert_eq!(codes.0, codes.1, "every exit code came back exactly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_in_a_container_keeps_exit_codes_streams_and_stdin() {
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let (m, _w) = cluster().await;
    let id = running(&m, container()).await;
    basics(&m, id).await;
    terminal(&m, id).await;
    m.client.stop(id).await.unwrap();
}

/// The `ExecStarted` and `ExecEnded` events of task `id` after `index`.
async fn exec_events(m: &TestManager, index: u64, id: TaskId) -> Vec<cube_api::events::Event> {
    let mut stream = m.client.events(Some(index), &[format!("Exec:{id}")]).await.unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(StreamLine::Event(e)))) => events.push(*e),
            Ok(Some(Ok(StreamLine::Notice(_)))) => {}
            other => panic!("no exec events: {other:?}"),
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_ends_the_session_and_every_exec_is_recorded() {
    let (m, _w) = cluster().await;
    let id = running(&m, sleeper()).await;
    let start = {
        let response = reqwest::get(format!("{}/v1/health", m.url)).await.unwrap();
        response.headers()["x-cube-index"].to_str().unwrap().parse::<u64>().unwrap()
    };
    // A session whose client is killed while its command runs.
    let mut client = Command::new(common::cube_bin())
        .args(["--addr", &m.url, "exec", &id.to_string(), "--", "sleep", "777"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sleeper = || {
        std::fs::read_dir("/proc").unwrap().flatten().find_map(|p| {
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            (cmdline == b"sleep\x00777\x00").then(|| p.file_name().to_string_lossy().into_owned())
        })
    };
    wait_until(Duration::from_secs(10), "the command running", || async { sleeper() }).await;
    client.kill().unwrap();
    client.wait().unwrap();
    wait_until(Duration::from_secs(10), "the command ended with its client", || async {
        sleeper().is_none().then_some(())
    })
    .await;
    let events = exec_events(&m, start, id).await;
    assert_eq!(events[0].kind, EventType::ExecStarted);
    assert_eq!(events[1].kind, EventType::ExecEnded);
    let EventObject::Exec(Some(ended)) = &events[1].object else { panic!("{events:?}") };
    assert_eq!(ended.command, ["sleep", "777"]);
    assert!(
        matches!(&ended.ended, Some(Control::Error { message }) if message.contains("client went away")),
        "{ended:?}"
    );
    let metrics = reqwest::get(format!("{}/metrics", m.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("\ncube_exec_sessions 0\n"), "{metrics}");

    // A session that ends: its exit code is recorded.
    let after = events[1].index;
    let url = m.url.clone();
    let task = id.to_string();
    tokio::task::spawn_blocking(move || {
        cube_exec(&url, &[&task, "--", "sh", "-c", "exit 4"], None)
    })
    .await
    .unwrap();
    let events = exec_events(&m, after, id).await;
    let EventObject::Exec(Some(ended)) = &events[1].object else { panic!("{events:?}") };
    assert_eq!(ended.ended, Some(Control::Exit { code: 4 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_execs_are_refused_with_a_reason() {
    let (m, _w) = cluster().await;
    let done = m
        .client
        .submit(
            None,
            &common::spec(serde_json::json!({"name": "done", "driver": "process",
            "command": "true"})),
        )
        .await
        .unwrap()
        .task
        .id;
    common::wait_state(&m.client, done, TaskState::Completed, Duration::from_secs(30)).await;
    let url = m.url.clone();
    let task = done.to_string();
    let out = tokio::task::spawn_blocking(move || cube_exec(&url, &[&task, "--", "ls"], None))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is completed: a command can run only in a running task"), "{stderr}");

    let (status, body) = common::raw(
        reqwest::Method::GET,
        &format!("{}/v1/tasks/{done}/exec?tty=true", m.url),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("command is missing"));
    let id = running(&m, sleeper()).await;
    let (status, body) = common::raw(
        reqwest::Method::GET,
        &format!("{}/v1/tasks/{id}/exec?command=ls", m.url),
        None,
    )
    .await;
    assert_eq!(status, 400, "a plain GET is not a session: {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("WebSocket"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_manager_ends_its_sessions_and_says_so() {
    let (mut m, _w) = cluster().await;
    let id = running(&m, sleeper()).await;
    let client = Command::new(common::cube_bin())
        .args(["--addr", &m.url, "exec", &id.to_string(), "--", "sleep", "888"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the session open", || async {
        let metrics = reqwest::get(format!("{}/metrics", m.url)).await.ok()?.text().await.ok()?;
        metrics.contains("\ncube_exec_sessions 1\n").then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let status = m.process.terminate();
    assert!(status.success(), "the manager stopped cleanly: {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let out =
        tokio::task::spawn_blocking(move || client.wait_with_output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the manager is shutting down"), "{stderr}");
}

/// A terminal session through the API: its first size (when `initial`), then a resize, as
/// `stty size` sees them.
async fn terminal_sizes(m: &TestManager, id: TaskId, initial: bool) {
    use cube_api::exec::{Channel, ExecQuery, Resize};
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let query = ExecQuery {
        command: vec![
            "sh".into(),
            "-c".into(),
            if initial {
                "stty size; read go; stty size".into()
            } else {
                "read go; stty size".into()
            },
        ],
        tty: true,
        stdin: true,
        size: Some(Resize { width: 100, height: 30 }),
    };
    let path = format!("/v1/tasks/{id}/exec?{}", query.to_query());
    let mut socket = m.client.websocket(&path).await.unwrap();
    let mut output = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut read_until = async |socket: &mut cube_http::client::WebSocket, want: &str| loop {
        if output.contains(want) {
            return;
        }
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in {output:?}"));
        assert!(message.is_some(), "the session ended without {want:?} in {output:?}");
        if let Some(Ok(Message::Binary(frame))) = message
            && frame.first() == Some(&(Channel::Stdout as u8))
        {
            output.push_str(&String::from_utf8_lossy(&frame[1..]));
        }
    };
    if initial {
        read_until(&mut socket, "30 100").await;
    }
    let resize = serde_json::to_vec(&Resize { width: 120, height: 40 }).unwrap();
    socket.send(Message::Binary(Channel::Resize.frame(&resize).into())).await.unwrap();
    socket.send(Message::Binary(Channel::Stdin.frame(b"go\r").into())).await.unwrap();
    read_until(&mut socket, "40 120").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_starts_at_the_size_asked_and_follows_resizes() {
    let (m, _w) = cluster().await;
    let id = running(&m, sleeper()).await;
    terminal_sizes(&m, id, true).await;
    if !docker_ready() {
        return;
    }
    let _serial = docker_lock().await;
    let id = running(&m, container()).await;
    // The engine sizes an exec's terminal only once it runs (before API 1.42), so a command's
    // very first look at it may race the size: only the resize is checked here.
    terminal_sizes(&m, id, false).await;
    m.client.stop(id).await.unwrap();
}
