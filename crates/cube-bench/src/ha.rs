//! `cube-bench ha`: highly available managers on a real etcd (Debian's `etcd-server`, started
//! here on loopback ports the OS picked).
//!
//! 1. Durable submits per second through a leader on etcd with one and with three members,
//!    beside etcd's own write floor measured in the same run on the same cluster: the same
//!    number of concurrent loops, each putting a record of a task's size in a transaction
//!    guarded like the leader's (etcd-client, one connection per loop).
//! 2. Failover: three managers and a worker on a three-member etcd; the leader is killed with
//!    SIGKILL, and the time until another manager leads and a task submitted through it runs
//!    is measured; the killed one is started again as a follower; `--runs` times. Then the
//!    same with SIGTERM (the leader resigns): the time until another leads.
//! 3. Memory and restart with `--tasks` tasks in etcd: the leader's and a follower's resident
//!    memory, then every manager killed and one started again: the time until it serves.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use cube_testkit::etcd::EtcdCluster;
use serde_json::json;

use crate::lab::{Lab, Manager};
use crate::load::{Until, load_spec, submit_load, wait_for};
use crate::out::{Summary, mib, say};

/// Options of `cube-bench ha`.
#[derive(Debug, Args)]
pub struct HaArgs {
    /// Concurrent clients of the submit measurements (and of etcd's floor).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long each submit measurement runs.
    #[arg(long, default_value = "5s", value_parser = cube_core::units::parse_duration)]
    pub duration: Duration,
    /// Leader kills (and as many resignations) measured.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Tasks stored for the memory and restart measurement (0: skip it).
    #[arg(long, default_value_t = 100_000)]
    pub tasks: u64,
}

/// Runs the benchmark; returns the JSON results.
pub async fn run(lab: &Lab, args: &HaArgs) -> anyhow::Result<serde_json::Value> {
    say(&format!(
        "ha: managers on etcd: submits with {} clients for {:?}, {} failovers, {} tasks",
        args.clients, args.duration, args.runs, args.tasks
    ));
    let mut submits = Vec::new();
    for members in [1, 3] {
        submits.push(submit_rates(lab, members, args).await?);
    }
    let failover = failovers(lab, args).await?;
    let restart = if args.tasks > 0 { Some(restart(lab, args).await?) } else { None };
    Ok(json!({"bench": "ha", "clients": args.clients, "submits": submits,
              "failover": failover, "restart": restart}))
}

fn etcd_args(cluster: &EtcdCluster, name: &str) -> Vec<String> {
    ["--store", "etcd", "--etcd", &cluster.endpoint_list(), "--name", name]
        .map(str::to_owned)
        .to_vec()
}

async fn start_manager(lab: &Lab, cluster: &EtcdCluster, name: &str) -> anyhow::Result<Manager> {
    let args = etcd_args(cluster, name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.manager(name, &args).await
}

/// Waits until one of `managers` leads; its index.
async fn leader(managers: &[Manager], among: &[usize], timeout: Duration) -> anyhow::Result<usize> {
    wait_for(timeout, Duration::from_millis(10), "a leader", || async {
        for &i in among {
            if managers[i].client.health().await.is_ok_and(|h| h.leading == Some(true)) {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// etcd's floor and Cube's submits on an etcd of `members` members.
async fn submit_rates(
    lab: &Lab,
    members: usize,
    args: &HaArgs,
) -> anyhow::Result<serde_json::Value> {
    let cluster = EtcdCluster::start(members)?;
    let body = Bytes::from(serde_json::to_vec(&load_spec("ha-bench"))?);
    // A stored task record is about 1.5 KB once placed; a submitted one is what etcd gets.
    let record = vec![b'x'; 1500];
    let floor = etcd_floor(&cluster, args.clients, args.duration, &record).await?;
    let manager = start_manager(lab, &cluster, &format!("submit-{members}")).await?;
    leader(std::slice::from_ref(&manager), &[0], Duration::from_secs(15)).await?;
    let warm =
        submit_load(&manager.url, body.clone(), args.clients, Until::Time(Duration::from_secs(1)))
            .await;
    if warm.ok == 0 {
        bail!("no submit succeeded on etcd: {}", warm.first_error.unwrap_or_default());
    }
    let load = submit_load(&manager.url, body, args.clients, Until::Time(args.duration)).await;
    let rate = load.ok as f64 / load.elapsed.as_secs_f64();
    let latency = Summary::of(&load.latencies);
    say(&format!(
        "  etcd of {members}: floor {floor:.0} guarded puts/s; Cube {rate:.0} submits/s ({:.2}× the floor), {}, {} errors",
        rate / floor,
        latency.line(),
        load.errors
    ));
    Ok(json!({"members": members, "etcd_floor": floor, "submits": rate,
              "ratio": rate / floor, "latency": latency, "errors": load.errors}))
}

/// Guarded puts per second: `clients` loops, each with its own connection, each putting a
/// `record` under a key of its own in a transaction with one compare, like the leader's.
async fn etcd_floor(
    cluster: &EtcdCluster,
    clients: usize,
    duration: Duration,
    record: &[u8],
) -> anyhow::Result<f64> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let began = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for c in 0..clients {
        let endpoints = cluster.endpoints();
        let record = record.to_vec();
        loops.spawn(async move {
            let mut client = etcd_client::Client::connect(endpoints, None).await?;
            let mut n = 0u64;
            while began.elapsed() < duration {
                let key = format!("/floor/{c}/{n}");
                let txn = Txn::new()
                    .when([Compare::create_revision("/floor/fence", CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, record.clone(), None)]);
                client.txn(txn).await?;
                n += 1;
            }
            Ok::<u64, etcd_client::Error>(n)
        });
    }
    let mut total = 0;
    while let Some(done) = loops.join_next().await {
        total += done?.context("etcd floor loop")?;
    }
    Ok(total as f64 / began.elapsed().as_secs_f64())
}

/// Leader kills and resignations on three managers over a three-member etcd.
async fn failovers(lab: &Lab, args: &HaArgs) -> anyhow::Result<serde_json::Value> {
    let cluster = EtcdCluster::start(3)?;
    let mut managers = Vec::new();
    for i in 0..3 {
        managers.push(start_manager(lab, &cluster, &format!("m{i}")).await?);
    }
    let urls = managers.iter().map(|m| m.url.as_str()).collect::<Vec<_>>().join(",");
    let worker = lab.worker_of(&urls, "w1", &[]).await?;
    let client = cube_http::client::Client::new(&urls, Duration::from_secs(10))?;
    let all = [0, 1, 2];
    leader(&managers, &all, Duration::from_secs(15)).await?;
    wait_for(
        Duration::from_secs(15),
        Duration::from_millis(50),
        "the worker registered",
        || async { (client.nodes().await.ok()?.len() == 1).then_some(()) },
    )
    .await?;
    let probe = serde_json::from_value::<cube_core::TaskSpec>(json!({
        "name": "probe", "driver": "process", "command": "sleep", "args": ["600"]}))?;

    let mut kills = Vec::new();
    for run in 0..args.runs {
        let old = leader(&managers, &all, Duration::from_secs(15)).await?;
        let others: Vec<usize> = all.into_iter().filter(|i| *i != old).collect();
        let killed = Instant::now();
        managers[old].kill9();
        let new = leader(&managers, &others, Duration::from_secs(20)).await?;
        let elected = killed.elapsed();
        // Acting: a task submitted through the new leader runs.
        let id = managers[new].client.submit(None, &probe).await?.task.id;
        wait_for(
            Duration::from_secs(20),
            Duration::from_millis(10),
            "the probe running",
            || async {
                let t = managers[new].client.task(id).await.ok()?;
                (t.state == cube_core::TaskState::Running).then_some(())
            },
        )
        .await?;
        let acting = killed.elapsed();
        managers[new].client.stop(id).await?;
        say(&format!(
            "  kill {run}: m{new} elected after {elected:.2?}, acting after {acting:.2?}"
        ));
        kills.push((elected, acting));
        managers[old].restart()?;
    }
    let (mut handovers, mut exits) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let old = leader(&managers, &all, Duration::from_secs(15)).await?;
        let others: Vec<usize> = all.into_iter().filter(|i| *i != old).collect();
        let asked = Instant::now();
        managers[old].process.signal_term();
        let new = leader(&managers, &others, Duration::from_secs(20)).await?;
        let took = asked.elapsed();
        let process = &mut managers[old].process;
        tokio::task::block_in_place(|| process.wait())?;
        let exited = asked.elapsed();
        say(&format!(
            "  resign {run}: m{new} leads after {took:.2?}; m{old} exited after {exited:.2?}"
        ));
        handovers.push(took);
        exits.push(exited);
        managers[old].restart()?;
    }
    drop(worker);
    let elected: Vec<Duration> = kills.iter().map(|k| k.0).collect();
    let acting: Vec<Duration> = kills.iter().map(|k| k.1).collect();
    let (elected, acting, handover, exit) =
        (Summary::of(&elected), Summary::of(&acting), Summary::of(&handovers), Summary::of(&exits));
    say(&format!("  SIGKILL → acting: {}", acting.line()));
    say(&format!("  SIGTERM → new leader: {}", handover.line()));
    say(&format!("  SIGTERM → exited: {}", exit.line()));
    Ok(json!({"runs": args.runs, "ttl_s": 5, "kill_elected": elected, "kill_acting": acting,
              "resign": handover, "resign_exit": exit}))
}

/// `--tasks` tasks in etcd: memory of the leader and a follower, then restart-to-serving.
async fn restart(lab: &Lab, args: &HaArgs) -> anyhow::Result<serde_json::Value> {
    let cluster = EtcdCluster::start(1)?;
    let mut managers = Vec::new();
    for i in 0..2 {
        managers.push(start_manager(lab, &cluster, &format!("r{i}")).await?);
    }
    let lead = leader(&managers, &[0, 1], Duration::from_secs(15)).await?;
    let follower = 1 - lead;
    let body = Bytes::from(serde_json::to_vec(&load_spec("ha-restart"))?);
    let began = Instant::now();
    let load = submit_load(&managers[lead].url, body, args.clients, Until::Count(args.tasks)).await;
    if load.errors > 0 {
        bail!("{} submits failed: {}", load.errors, load.first_error.unwrap_or_default());
    }
    let filled = began.elapsed();
    // The follower has them all once its copy answers the last one.
    let last = managers[lead].client.tasks().await?.len();
    wait_for(
        Duration::from_secs(120),
        Duration::from_millis(50),
        "the follower caught up",
        || async {
            let n = managers[follower].client.tasks().await.ok()?.len();
            (n == last).then_some(())
        },
    )
    .await?;
    let (leader_rss, follower_rss) =
        (managers[lead].process.rss_bytes()?, managers[follower].process.rss_bytes()?);
    say(&format!(
        "  {last} tasks submitted in {filled:.1?}; leader {:.1} MiB, follower {:.1} MiB",
        mib(leader_rss),
        mib(follower_rss)
    ));
    for m in &mut managers {
        m.kill9();
    }
    let probe = managers[0].client.clone();
    managers[0].restart()?;
    let listening = managers[0].listening - managers[0].spawned;
    wait_for(
        Duration::from_secs(120),
        Duration::from_millis(5),
        "serving after restart",
        || async {
            let n = probe.tasks().await.ok()?.len();
            (n == last).then_some(())
        },
    )
    .await?;
    let serving = managers[0].spawned.elapsed();
    leader(&managers, &[0], Duration::from_secs(30)).await?;
    let acting = managers[0].spawned.elapsed();
    say(&format!(
        "  restart with {last} tasks: listening after {listening:.2?}, every task served after {serving:.2?}, leading after {acting:.2?}"
    ));
    Ok(json!({"tasks": last, "fill_s": filled.as_secs_f64(), "leader_rss": leader_rss,
              "follower_rss": follower_rss, "listening_s": listening.as_secs_f64(),
              "serving_s": serving.as_secs_f64(), "leading_s": acting.as_secs_f64()}))
}
