//! `cube-bench report`: rewrites the tables of `BENCHMARKS.md` from the JSON results of a run
//! (and criterion's estimates), between marker comments, keeping the hand-written prose.
//!
//! A section is `<!-- bench:NAME:begin -->` … `<!-- bench:NAME:end -->`; everything between
//! the markers is replaced. A section whose results file is missing says so instead of keeping
//! figures of an older run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::out::say;

/// Options of `cube-bench report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Directory of the JSON results (and `steps.tsv`, the suite's step timings).
    #[arg(long, default_value = "target/bench")]
    pub results: PathBuf,
    /// Criterion's output directory.
    #[arg(long, default_value = "target/criterion")]
    pub criterion: PathBuf,
    /// The document to rewrite.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub doc: PathBuf,
    /// Rewrite only these sections (e.g. `--only security` after running that benchmark on
    /// its own), leaving every other section as it is.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// Node counts and schedulers of the criterion benchmark (`crates/cube-core/benches`).
const SCHED_NODES: [u64; 4] = [100, 1_000, 5_000, 10_000];
const SCHEDULERS: [&str; 4] = ["round-robin", "epvm", "binpack", "spread"];

/// Runs the report.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let results = Results::load(&args.results, &args.criterion);
    let mut doc = std::fs::read_to_string(&args.doc)
        .with_context(|| format!("cannot read {}", args.doc.display()))?;
    let goals = goals(&results);
    let sections: Vec<(&str, Option<String>)> = vec![
        ("machine", Some(machine(&args.results))),
        ("goals", Some(render_goals(&goals))),
        ("scheduler", scheduler(&results)),
        ("submit", submit(&results)),
        ("latency", latency(&results)),
        ("memory", memory(&results)),
        ("failover", failover(&results)),
        ("restart", restart(&results)),
        ("sim", sim(&results)),
        ("swarm", swarm(&results)),
        ("rollout", rollout(&results)),
        ("swarm-rollout", swarm_rollout(&results)),
        ("observe", observe(&results)),
        ("ha", ha(&results)),
        ("security", security(&results)),
        ("ui", ui(&results)),
    ];
    for (name, content) in sections {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        match content {
            Some(text) => {
                if !replace_section(&mut doc, name, &text) {
                    say(&format!("report: no bench:{name} markers in {}", args.doc.display()));
                }
            }
            None => {
                // Never leave figures of an older run next to this run's.
                say(&format!("report: no results for {name} in this run"));
                let note = format!(
                    "_Not measured in the last run: no results in `{}`._",
                    args.results.display()
                );
                replace_section(&mut doc, name, &note);
            }
        }
    }
    std::fs::write(&args.doc, doc)
        .with_context(|| format!("cannot write {}", args.doc.display()))?;
    say(&format!("report: {} rewritten", args.doc.display()));
    for g in &goals {
        say(&format!("  goal: {} -> {} ({})", g.goal, g.figure, g.verdict));
    }
    Ok(())
}

/// Replaces what lies between the markers of `name`; false if they are missing.
fn replace_section(doc: &mut String, name: &str, content: &str) -> bool {
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end)) else {
        return false;
    };
    if e < b {
        return false;
    }
    let start = b + begin.len();
    // Blank lines around the content: a table must not run into the markers.
    doc.replace_range(start..e, &format!("\n\n{}\n\n", content.trim()));
    true
}

/// The JSON results of one suite run.
struct Results {
    submit: Option<Value>,
    submit_placing: Option<Value>,
    latency: Option<Value>,
    memory: Option<Value>,
    restart: Option<Value>,
    failover: Option<Value>,
    sim: Option<Value>,
    swarm: Option<Value>,
    rollout: Option<Value>,
    swarm_rollout: Option<Value>,
    observe: Option<Value>,
    ha: Option<Value>,
    security: Option<Value>,
    ui: Option<Value>,
    /// Mean nanoseconds per placement by (nodes, scheduler).
    sched: Vec<(u64, &'static str, f64)>,
}

impl Results {
    fn load(dir: &Path, criterion: &Path) -> Self {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(format!("{name}.json")))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        };
        let mut sched = Vec::new();
        for n in SCHED_NODES {
            for s in SCHEDULERS {
                let path = criterion.join(format!("place_{n}-nodes/{s}/new/estimates.json"));
                let mean = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .and_then(|v| v.pointer("/mean/point_estimate").and_then(Value::as_f64));
                if let Some(ns) = mean {
                    sched.push((n, s, ns));
                }
            }
        }
        Self {
            submit: read("submit"),
            submit_placing: read("submit-placing"),
            latency: read("latency"),
            memory: read("memory"),
            restart: read("restart"),
            failover: read("failover"),
            sim: read("sim-nodes"),
            swarm: read("swarm"),
            rollout: read("rollout"),
            swarm_rollout: read("swarm-rollout"),
            observe: read("observe"),
            ha: read("ha"),
            security: read("security"),
            ui: read("ui"),
            sched,
        }
    }

    fn placements_per_s(&self, nodes: u64, scheduler: &str) -> Option<f64> {
        self.sched
            .iter()
            .find(|(n, s, _)| *n == nodes && *s == scheduler)
            .map(|(_, _, ns)| 1e9 / ns)
    }
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

/// `12,345`.
fn int(x: f64) -> String {
    let n = x.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Milliseconds with sensible precision.
fn ms(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2} ms")
    } else if x < 100.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.0} ms")
    }
}

fn secs(x: f64) -> String {
    format!("{x:.2} s")
}

fn opt(x: Option<f64>, f: fn(f64) -> String) -> String {
    x.map_or_else(|| "–".to_owned(), f)
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

fn shell(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn machine(results: &Path) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_owned(), |s| s.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or("unknown".to_owned(), |s| s.trim_matches('"').to_owned());
    let docker = shell(
        "docker",
        &["info", "--format", "{{.ServerVersion}}, {{.Driver}}, cgroup v{{.CgroupVersion}}"],
    )
    .unwrap_or_else(|| "no engine".into());
    let rustc = shell("rustc", &["--version"]).unwrap_or_else(|| "unknown".into());
    let commit =
        shell("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Tracked files changed since the commit (BENCHMARKS.md is the report's own output).
    let dirty: Vec<String> = shell("git", &["diff", "--name-only", "HEAD"])
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .filter(|p| p != "BENCHMARKS.md")
        .collect();
    let dirty = match dirty.len() {
        0 => String::new(),
        n if n <= 3 => format!(" with uncommitted changes to {}", dirty.join(", ")),
        n => format!(" with uncommitted changes to {n} files"),
    };
    let mut rows = vec![
        vec!["CPU".into(), format!("{model}, {cores} logical cores")],
        vec!["Memory".into(), format!("{mem_gib:.1} GiB")],
        vec!["OS, kernel".into(), format!("{os}, Linux {}", kernel.trim())],
        vec!["Docker engine".into(), docker],
        vec!["Rust".into(), rustc],
        vec!["Commit".into(), format!("{commit}{dirty}")],
        vec!["Run".into(), run_date(results)],
    ];
    let steps = std::fs::read_to_string(results.join("steps.tsv")).unwrap_or_default();
    let mut total = 0.0;
    let mut parts = Vec::new();
    for line in steps.lines() {
        if let Some((name, s)) = line.split_once('\t')
            && let Ok(s) = s.trim().parse::<f64>()
        {
            total += s;
            parts.push(format!("{name} {s:.0} s"));
        }
    }
    if !parts.is_empty() {
        rows.push(vec![
            "Suite time".into(),
            format!("{:.1} min (`scripts/bench.sh`): {}", total / 60.0, parts.join(", ")),
        ]);
    }
    table(&["", "This run"], &rows)
}

/// When the run finished: the latest `finished_at` of its results (so that running the report
/// again does not change the date), or now.
fn run_date(results: &Path) -> String {
    let latest = std::fs::read_dir(results)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
        .filter_map(|v| v["finished_at"].as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()))
        .max()
        .unwrap_or_else(jiff::Timestamp::now);
    latest.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// A goal of issue #6, its figure and whether it was met.
struct Goal {
    goal: &'static str,
    figure: String,
    verdict: String,
}

/// `met (2.0× better)` or `missed by 35%` for a figure that must be at least `target`.
fn at_least(value: f64, target: f64) -> String {
    if value >= target {
        format!("met ({:.1}× the goal)", value / target)
    } else {
        format!(
            "**missed** by {:.0}% ({} short)",
            100.0 * (1.0 - value / target),
            int(target - value)
        )
    }
}

/// For a figure that must be at most `target` (units in `unit`).
fn at_most(value: f64, target: f64, unit: &str) -> String {
    if value <= target {
        format!("met ({:.0}% of the limit)", 100.0 * value / target)
    } else {
        format!(
            "**missed** by {:.2}{unit} ({:.0}% over)",
            value - target,
            100.0 * (value / target - 1.0)
        )
    }
}

fn goals(r: &Results) -> Vec<Goal> {
    let mut g = Vec::new();
    let at5k: Vec<(&str, f64)> =
        SCHEDULERS.iter().filter_map(|s| r.placements_per_s(5_000, s).map(|v| (*s, v))).collect();
    if let Some((worst, v)) = at5k.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)) {
        g.push(Goal {
            goal: "Scheduler ≥ 50,000 placements/s at 5,000 nodes (every scheduler)",
            figure: format!("slowest: {worst} {}/s", int(v)),
            verdict: at_least(v, 50_000.0),
        });
    }
    if let Some(s) = &r.submit {
        let round =
            s["rounds"].as_array().and_then(|rs| rs.iter().max_by_key(|x| x["clients"].as_u64()));
        if let Some(x) = round {
            let rate = x["per_second"].as_f64().unwrap_or(0.0);
            let p99 = num(x, "/latency/p99_ms").unwrap_or(f64::INFINITY);
            g.push(Goal {
                goal: "≥ 10,000 durable submits/s",
                figure: format!("{}/s with {} clients", int(rate), x["clients"]),
                verdict: at_least(rate, 10_000.0),
            });
            g.push(Goal {
                goal: "… with p99 ≤ 10 ms",
                figure: format!("p99 {}", ms(p99)),
                verdict: at_most(p99, 10.0, " ms"),
            });
        }
    }
    if let Some(l) = &r.latency {
        if let Some(p50) = num(l, "/process/segments/total/p50_ms") {
            g.push(Goal {
                goal: "Process submit → running p50 ≤ 5 ms",
                figure: format!("p50 {}", ms(p50)),
                verdict: at_most(p50, 5.0, " ms"),
            });
        }
        if let Some(over) = num(l, "/docker/overhead_p50_ms") {
            g.push(Goal {
                goal: "Docker submit → running ≤ raw create+start + 50 ms",
                figure: format!(
                    "p50 {} vs floor {} (+{})",
                    opt(num(l, "/docker/segments/total/p50_ms"), ms),
                    opt(num(l, "/docker/floor/p50_ms"), ms),
                    ms(over)
                ),
                verdict: at_most(over, 50.0, " ms"),
            });
        }
    }
    if let Some(s) = &r.swarm {
        let worst = s["sizes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| Some((x["replicas"].as_u64()?, x["ratio"].as_f64()?)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((n, ratio)) = worst {
            g.push(Goal {
                goal: "Cube / Swarm time to N running ≤ 0.3",
                figure: format!("worst ratio {ratio:.2} (N = {n})"),
                verdict: at_most(ratio, 0.3, ""),
            });
        }
    }
    if let Some(m) = &r.memory {
        if let Some(idle) = num(m, "/idle_rss_mib") {
            let mb = idle * 1.048_576;
            g.push(Goal {
                goal: "Manager ≤ 30 MB idle",
                figure: format!("{mb:.1} MB"),
                verdict: at_most(mb, 30.0, " MB"),
            });
        }
        let per_task = m["points"]
            .as_array()
            .and_then(|p| p.last())
            .and_then(|p| p["bytes_per_task"].as_f64());
        if let Some(b) = per_task {
            g.push(Goal {
                goal: "Manager ≤ 2 KB per task",
                figure: format!("{} B/task at {} tasks", int(b), int(num_last_tasks(m))),
                verdict: at_most(b / 1000.0, 2.0, " KB"),
            });
        }
    }
    if let Some(f) = &r.failover {
        let replaced = num(f, "/median_replaced_s").unwrap_or(f64::INFINITY);
        let start = r
            .latency
            .as_ref()
            .and_then(|l| num(l, "/process/segments/total/p50_ms"))
            .unwrap_or(0.0)
            / 1000.0;
        g.push(Goal {
            goal: "Worker kill -9 → its tasks running elsewhere ≤ 10 s + start time",
            figure: format!("{} (start time {})", secs(replaced), ms(start * 1000.0)),
            verdict: at_most(replaced, 10.0 + start, " s"),
        });
    }
    if let Some(x) = &r.restart {
        let first = num(x, "/median_first_get_s").unwrap_or(f64::INFINITY);
        g.push(Goal {
            goal: "Manager restart with 100k tasks ≤ 2 s (to the first GET)",
            figure: format!("{} with {} tasks", secs(first), int(num(x, "/tasks").unwrap_or(0.0))),
            verdict: at_most(first, 2.0, " s"),
        });
    }
    g
}

fn num_last_tasks(m: &Value) -> f64 {
    m["points"].as_array().and_then(|p| p.last()).and_then(|p| p["tasks"].as_f64()).unwrap_or(0.0)
}

fn render_goals(goals: &[Goal]) -> String {
    let rows: Vec<Vec<String>> = goals
        .iter()
        .map(|g| vec![g.goal.to_owned(), g.figure.clone(), g.verdict.clone()])
        .collect();
    table(&["Goal (issue #6)", "This run", "Verdict"], &rows)
}

fn scheduler(r: &Results) -> Option<String> {
    if r.sched.is_empty() {
        return None;
    }
    let mut rows = Vec::new();
    for n in SCHED_NODES {
        let mut row = vec![int(n as f64)];
        for s in SCHEDULERS {
            row.push(opt(r.placements_per_s(n, s), |v| {
                format!("{}/s ({:.1} µs)", int(v), 1e6 / v)
            }));
        }
        rows.push(row);
    }
    let mut header = vec!["Nodes"];
    header.extend(SCHEDULERS);
    Some(table(&header, &rows))
}

fn submit(r: &Results) -> Option<String> {
    let s = r.submit.as_ref()?;
    let mut rows = Vec::new();
    let mut push = |v: &Value, label: &str| {
        for x in v["rounds"].as_array().into_iter().flatten() {
            rows.push(vec![
                format!("{}{label}", x["clients"]),
                int(x["per_second"].as_f64().unwrap_or(0.0)),
                opt(num(x, "/latency/p50_ms"), ms),
                opt(num(x, "/latency/p90_ms"), ms),
                opt(num(x, "/latency/p99_ms"), ms),
                opt(num(x, "/latency/max_ms"), ms),
                int(x["errors"].as_f64().unwrap_or(0.0)),
                format!("{:.0}%", x["manager_cpu_percent"].as_f64().unwrap_or(0.0)),
                format!("{:.0}%", x["generator_cpu_percent"].as_f64().unwrap_or(0.0)),
            ]);
        }
    };
    push(s, "");
    if let Some(p) = &r.submit_placing {
        push(p, &format!(" + {} simulated nodes placing", p["sim_nodes"]));
    }
    Some(format!(
        "{}\nStore `{}`, {} s measured per row after {} s of warm-up, a fresh manager per row; CPU \
         is % of one core (200% = both).",
        table(
            &[
                "Clients",
                "Submits/s",
                "p50",
                "p90",
                "p99",
                "max",
                "Errors",
                "Manager CPU",
                "Generator CPU"
            ],
            &rows
        ),
        s["store"].as_str().unwrap_or("?"),
        s["duration_s"],
        s["warmup_s"],
    ))
}

fn summary_row(label: &str, v: &Value) -> Vec<String> {
    vec![
        label.to_owned(),
        int(v["n"].as_f64().unwrap_or(0.0)),
        opt(v["p50_ms"].as_f64(), ms),
        opt(v["p90_ms"].as_f64(), ms),
        opt(v["p99_ms"].as_f64(), ms),
        opt(v["max_ms"].as_f64(), ms),
    ]
}

fn latency(r: &Results) -> Option<String> {
    let l = r.latency.as_ref()?;
    let mut rows = vec![summary_row("Cube, process driver", &l["process"]["segments"]["total"])];
    if l["burst"].is_object() {
        let mut row = summary_row(
            &format!("Cube, process driver, {} submitted at once", l["burst"]["tasks"]),
            &l["burst"]["per_task"],
        );
        row[0].push_str(&format!(
            " (all running after {})",
            opt(l["burst"]["all_running_ms"].as_f64(), ms)
        ));
        rows.push(row);
    }
    if l["docker"]["segments"].is_object() {
        rows.push(summary_row("Cube, docker driver", &l["docker"]["segments"]["total"]));
        rows.push(summary_row(
            "Floor: raw bollard create + start, same image, same run",
            &l["docker"]["floor"],
        ));
    } else {
        rows.push(vec![
            format!(
                "Cube, docker driver: skipped ({})",
                l["docker"]["skipped"].as_str().unwrap_or("?")
            ),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
        ]);
    }
    let mut seg_rows = Vec::new();
    for (label, v) in [("process", &l["process"]["segments"]), ("docker", &l["docker"]["segments"])]
    {
        if v.is_object() {
            seg_rows.push(vec![
                label.to_owned(),
                opt(num(v, "/ack/p50_ms"), ms),
                opt(num(v, "/queue/p50_ms"), ms),
                opt(num(v, "/start/p50_ms"), ms),
                opt(num(v, "/report/p50_ms"), ms),
            ]);
        }
    }
    Some(format!(
        "{}\nWhere the time goes (p50 of each segment; the client polls every {}):\n\n{}",
        table(&["Path", "Samples", "p50", "p90", "p99", "max"], &rows),
        opt(l["poll_ms"].as_f64(), ms),
        table(
            &[
                "Driver",
                "Submit answered",
                "Queued → placed",
                "Placed → running (dispatch + driver)",
                "Running → seen by the client",
            ],
            &seg_rows
        ),
    ))
}

fn memory(r: &Results) -> Option<String> {
    let m = r.memory.as_ref()?;
    let mut rows = vec![
        vec![
            "idle (no node, no task)".into(),
            opt(num(m, "/idle_rss_mib"), mib_s),
            "–".into(),
            "–".into(),
        ],
        vec![
            format!("{} simulated nodes, no task", m["nodes"]),
            opt(num(m, "/with_nodes_rss_mib"), mib_s),
            "–".into(),
            "–".into(),
        ],
    ];
    for p in m["points"].as_array().into_iter().flatten() {
        rows.push(vec![
            format!("{} tasks running", int(p["tasks"].as_f64().unwrap_or(0.0))),
            opt(p["rss_mib"].as_f64(), mib_s),
            opt(p["bytes_per_task"].as_f64(), |b| format!("{} B", int(b))),
            opt(p["store_mib"].as_f64(), mib_s),
        ]);
    }
    let marginal = num(m, "/marginal_bytes_per_task")
        .map(|b| {
            format!("\nMarginal cost between the first and last reading: {} B per task.", int(b))
        })
        .unwrap_or_default();
    Some(format!(
        "{}{marginal}",
        table(&["Manager state", "RSS", "Per task (above nodes, no task)", "Store on disk"], &rows)
    ))
}

fn mib_s(x: f64) -> String {
    format!("{x:.1} MiB")
}

fn failover(r: &Results) -> Option<String> {
    let f = r.failover.as_ref()?;
    let mut rows = Vec::new();
    for (i, x) in f["runs"].as_array().into_iter().flatten().enumerate() {
        rows.push(vec![
            format!("{}", i + 1),
            opt(x["detect_s"].as_f64(), secs),
            opt(x["replaced_s"].as_f64(), secs),
            opt(x["fenced_s"].as_f64(), secs),
            int(x["duplicates"].as_f64().unwrap_or(0.0)),
        ]);
    }
    Some(format!(
        "{}\n{} {} tasks on the killed worker; node TTL {} s, heartbeat every {} s (the defaults).",
        table(
            &[
                "Run",
                "Node down after",
                "All tasks running elsewhere after",
                "Old copies stopped after the worker returned",
                "Duplicates left"
            ],
            &rows
        ),
        int(f["tasks"].as_f64().unwrap_or(0.0)),
        f["driver"].as_str().unwrap_or("?"),
        f["node_ttl_s"],
        f["heartbeat_interval_s"],
    ))
}

fn restart(r: &Results) -> Option<String> {
    let x = r.restart.as_ref()?;
    let mut rows = Vec::new();
    for (i, t) in x["runs"].as_array().into_iter().flatten().enumerate() {
        rows.push(vec![
            format!("{}", i + 1),
            opt(t["listening_s"].as_f64(), secs),
            opt(t["first_get_s"].as_f64(), secs),
            opt(t["full_list_s"].as_f64(), secs),
        ]);
    }
    rows.push(vec![
        "median".into(),
        opt(num(x, "/median_listening_s"), secs),
        opt(num(x, "/median_first_get_s"), secs),
        opt(num(x, "/median_full_list_s"), secs),
    ]);
    Some(format!(
        "{}\n{} tasks, store {} on disk; times from the process spawn after a SIGKILL.",
        table(
            &[
                "Restart",
                "Listening (state loaded)",
                "First GET /v1/tasks/{id}",
                "Full GET /v1/tasks received"
            ],
            &rows
        ),
        int(num(x, "/tasks").unwrap_or(0.0)),
        opt(num(x, "/store_mib"), mib_s),
    ))
}

fn sim(r: &Results) -> Option<String> {
    let s = r.sim.as_ref()?;
    let mut rows = Vec::new();
    for x in s["rounds"].as_array().into_iter().flatten() {
        rows.push(vec![
            int(x["nodes"].as_f64().unwrap_or(0.0)),
            format!(
                "{} ({}/s)",
                opt(x["register_s"].as_f64(), secs),
                int(x["nodes"].as_f64().unwrap_or(0.0) / x["register_s"].as_f64().unwrap_or(1.0))
            ),
            format!(
                "{}/s, {:.0}% CPU",
                int(x["heartbeats_per_s"].as_f64().unwrap_or(0.0)),
                x["idle_manager_cpu_percent"].as_f64().unwrap_or(0.0)
            ),
            int(x["tasks"].as_f64().unwrap_or(0.0)),
            opt(x["all_running_s"].as_f64(), secs),
            format!("{}/s", int(x["running_per_s"].as_f64().unwrap_or(0.0))),
            format!("{:.0}%", x["manager_cpu_percent"].as_f64().unwrap_or(0.0)),
            opt(x["manager_rss_mib"].as_f64(), mib_s),
            int(x["nodes_down"].as_f64().unwrap_or(0.0)),
        ]);
    }
    Some(format!(
        "{}\nScheduler `{}`, heartbeat every {} s, node TTL {} s, {} submitting clients.",
        table(
            &[
                "Nodes",
                "Registered in",
                "Heartbeats (idle manager CPU)",
                "Tasks",
                "All running after",
                "End to end",
                "Manager CPU",
                "Manager RSS",
                "Nodes down"
            ],
            &rows
        ),
        s["scheduler"].as_str().unwrap_or("?"),
        s["heartbeat_interval_s"],
        s["node_ttl_s"],
        s["clients"],
    ))
}

fn swarm(r: &Results) -> Option<String> {
    let s = r.swarm.as_ref()?;
    if let Some(blocked) = s["blocked"].as_str() {
        return Some(format!("Blocked: swarm mode does not work on this engine: `{blocked}`"));
    }
    let list = |v: &Value| {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .map(secs)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rows = Vec::new();
    for x in s["sizes"].as_array().into_iter().flatten() {
        rows.push(vec![
            int(x["replicas"].as_f64().unwrap_or(0.0)),
            list(&x["swarm_s"]),
            list(&x["cube_s"]),
            opt(x["swarm_median_s"].as_f64(), secs),
            opt(x["cube_median_s"].as_f64(), secs),
            opt(x["ratio"].as_f64(), |v| format!("{v:.2}")),
        ]);
    }
    Some(format!(
        "{}\nRuns alternate Swarm and Cube on the same engine ({} run(s) each); ratio = Cube median ÷ \
         Swarm median.",
        table(&["N", "Swarm runs", "Cube runs", "Swarm median", "Cube median", "Ratio"], &rows),
        s["runs"],
    ))
}

fn rollout(r: &Results) -> Option<String> {
    let x = r.rollout.as_ref()?;
    let mut rows = Vec::new();
    for (i, t) in x["runs"].as_array().into_iter().flatten().enumerate() {
        rows.push(vec![
            format!("{}", i + 1),
            opt(t["seconds"].as_f64(), secs),
            opt(t["start_ms"].as_f64(), |v| format!("{v:.1} ms")),
            opt(t["cost_per_batch_ms"].as_f64(), |v| format!("{v:.1} ms")),
            format!("{} of {}", t["fewest_healthy"], x["replicas"]),
        ]);
    }
    rows.push(vec![
        "median".into(),
        opt(num(x, "/median_seconds"), secs),
        opt(num(x, "/median_start_ms"), |v| format!("{v:.1} ms")),
        opt(num(x, "/median_cost_per_batch_ms"), |v| format!("{v:.1} ms")),
        format!("{} of {}", x["fewest_healthy"], x["replicas"]),
    ]);
    Some(format!(
        "{}\n{} {} instances, {} at a time start-first, `min_healthy_time = 0`; per batch: the \
         median instance's start (placed → running) and what Cube adds beyond it (rollout time ÷ \
         batches − start).",
        table(
            &["Run", "Rollout", "Instance start", "Cube's cost per batch", "Fewest healthy"],
            &rows
        ),
        x["replicas"],
        x["driver"].as_str().unwrap_or("?"),
        x["parallel"],
    ))
}

fn observe(r: &Results) -> Option<String> {
    let x = r.observe.as_ref()?;
    let p = |key: &str, pct: &str| num(x, &format!("/{key}/{pct}_ms"));
    let mut rows = vec![
        vec![
            format!("Commit → event delivered, {} changes/s", int(num(x, "/rate")?)),
            format!(
                "p50 {}, p99 {} ({} changes/s achieved)",
                opt(p("events", "p50"), ms),
                opt(p("events", "p99"), ms),
                opt(num(x, "/achieved_rate"), int)
            ),
            "p99 ≤ 50 ms".into(),
            opt(p("events", "p99"), |v| at_most(v, 50.0, " ms")),
        ],
        vec![
            format!("Manager memory per idle subscriber ({})", x["subscribers"]),
            opt(num(x, "/bytes_per_subscriber"), |v| format!("{:.1} KB", v / 1000.0)),
            "≤ 64 KB".into(),
            opt(num(x, "/bytes_per_subscriber"), |v| at_most(v / 1000.0, 64.0, " KB")),
        ],
        vec![
            format!("Scrape of `/metrics` with {} tasks", opt(num(x, "/scrape_tasks"), int)),
            format!(
                "p50 {}, {} bytes",
                opt(p("scrape", "p50"), ms),
                opt(num(x, "/scrape_bytes"), int)
            ),
            "< 10 ms and < 200 KB".into(),
            opt(p("scrape", "p50"), |v| at_most(v, 10.0, " ms")),
        ],
        vec![
            "`cube exec ID -- true`, process task".into(),
            format!("p50 {}", opt(p("exec_process", "p50"), ms)),
            "≤ 30 ms".into(),
            opt(p("exec_process", "p50"), |v| at_most(v, 30.0, " ms")),
        ],
    ];
    if let (Some(cube), Some(docker)) = (p("exec_container", "p50"), p("docker_exec", "p50")) {
        rows.push(vec![
            "`cube exec ID -- true`, container (beside `docker exec`)".into(),
            format!("p50 {} (docker exec {})", ms(cube), ms(docker)),
            "≤ docker exec + 20 ms".into(),
            if cube <= docker {
                format!("met ({} faster than `docker exec`)", ms(docker - cube))
            } else {
                at_most(cube - docker, 20.0, " ms over docker exec")
            },
        ]);
    }
    Some(table(&["Figure", "This run", "Goal", "Verdict"], &rows))
}

fn ha(r: &Results) -> Option<String> {
    let x = r.ha.as_ref()?;
    let mut rows = Vec::new();
    for s in x["submits"].as_array().into_iter().flatten() {
        rows.push(vec![
            format!("Durable submits/s, etcd of {}", s["members"]),
            format!(
                "{}/s, p99 {} ({} errors)",
                opt(num(s, "/submits"), int),
                opt(num(s, "/latency/p99_ms"), ms),
                s["errors"]
            ),
            format!("≥ 0.5× etcd's floor ({}/s)", opt(num(s, "/etcd_floor"), int)),
            opt(num(s, "/ratio"), |v| {
                if v >= 0.5 {
                    format!("met ({v:.2}× the floor)")
                } else {
                    format!("**missed** ({v:.2}× the floor)")
                }
            }),
        ]);
    }
    let f = &x["failover"];
    let p = |key: &str, pct: &str| num(f, &format!("/{key}/{pct}_ms")).map(|v| v / 1000.0);
    rows.push(vec![
        format!("Leader SIGKILL → new leader acting ({} runs, TTL {} s)", f["runs"], f["ttl_s"]),
        format!(
            "p50 {}, p99 {}, max {} (elected: p99 {})",
            opt(p("kill_acting", "p50"), secs),
            opt(p("kill_acting", "p99"), secs),
            opt(p("kill_acting", "max"), secs),
            opt(p("kill_elected", "p99"), secs),
        ),
        "p99 ≤ 7 s".into(),
        opt(p("kill_acting", "p99"), |v| at_most(v, 7.0, " s")),
    ]);
    rows.push(vec![
        format!("Leader SIGTERM → another leads ({} runs)", f["runs"]),
        spread_ms(&f["resign"]),
        "≤ 1 s".into(),
        opt(num(f, "/resign/max_ms"), |v| at_most(v, 1000.0, " ms")),
    ]);
    rows.push(vec![
        format!("Leader SIGTERM → its process exited ({} runs)", f["runs"]),
        spread_ms(&f["resign_exit"]),
        "–".into(),
        "–".into(),
    ]);
    let t = &x["restart"];
    if t.is_object() {
        let tasks = opt(num(t, "/tasks"), int);
        rows.push(vec![
            format!("Manager memory with {tasks} tasks on etcd"),
            format!(
                "leader {}, follower {}",
                opt(num(t, "/leader_rss"), |b| mib_s(b / 1048576.0)),
                opt(num(t, "/follower_rss"), |b| mib_s(b / 1048576.0)),
            ),
            "–".into(),
            "–".into(),
        ]);
        rows.push(vec![
            format!("Every manager killed, one restarted, {tasks} tasks"),
            format!(
                "listening {}, every task served {}, leading {}",
                opt(num(t, "/listening_s"), secs),
                opt(num(t, "/serving_s"), secs),
                opt(num(t, "/leading_s"), secs),
            ),
            "–".into(),
            "–".into(),
        ]);
    }
    Some(table(&["Figure", "This run", "Goal or peer", "Verdict"], &rows))
}

/// `p50 …, p99 …, max …` of a latency summary, in milliseconds.
/// The mean over a setup's rounds of the figure at `pointer`.
fn setup_mean(x: &Value, setup: &str, pointer: &str) -> Option<f64> {
    let values: Vec<f64> = x["rounds"]
        .as_array()?
        .iter()
        .filter(|r| r["setup"] == setup)
        .filter_map(|r| num(r, pointer))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn security(r: &Results) -> Option<String> {
    let x = r.security.as_ref()?;
    let mut rows = Vec::new();
    let j = &x["join"];
    rows.push(vec![
        format!("Join: spawn → node ready ({} workers)", j["n"]),
        "–".into(),
        spread_ms(j),
        "–".into(),
        opt(num(j, "/p99_ms"), |v| format!("≤ 1 s: {}", at_most(v, 1000.0, " ms"))),
    ]);
    // Higher is better for rates, lower for latencies: the ratio is always mTLS over token.
    let measures: [(&str, &str, bool); 5] = [
        ("Durable submits/s (8 clients, no node)", "/submits_per_s", true),
        ("Submit latency p50", "/submit/p50_ms", false),
        ("GET /v1/tasks p50", "/get_tasks/p50_ms", false),
        ("GET /v1/tasks p99", "/get_tasks/p99_ms", false),
        (
            "Submit → running p50 (dispatch and report over the link)",
            "/submit_to_running/p50_ms",
            false,
        ),
    ];
    for (what, pointer, rate) in measures {
        let token = setup_mean(x, "token", pointer);
        let mtls = setup_mean(x, "mtls+roles", pointer);
        let show = |v: Option<f64>| if rate { opt(v, int) } else { opt(v, ms) };
        let (cost, verdict) = match (token, mtls) {
            (Some(t), Some(m)) if t > 0.0 && m > 0.0 => {
                let slower = if rate { t / m - 1.0 } else { m / t - 1.0 };
                let verdict = if slower <= 0.10 { "met" } else { "**missed**" };
                (format!("{:+.0}%", 100.0 * slower), format!("≤ 10% slower: {verdict}"))
            }
            _ => ("–".into(), "–".into()),
        };
        rows.push(vec![what.into(), show(token), show(mtls), cost, verdict]);
    }
    Some(table(&["Measure", "cluster token", "mTLS + user role", "cost", "goal"], &rows))
}

fn ui(r: &Results) -> Option<String> {
    let x = r.ui.as_ref()?;
    let mut rows = Vec::new();
    for p in x["pages"].as_array()? {
        let bytes = num(p, "/bytes");
        let p95 = num(p, "/render/p95_ms");
        rows.push(vec![
            format!(
                "{} `{}`",
                p["page"].as_str().unwrap_or("?"),
                p["path"].as_str().unwrap_or("?")
            ),
            opt(num(p, "/render/p50_ms"), ms),
            opt(p95, ms),
            opt(num(p, "/answer/p95_ms"), ms),
            opt(bytes, |b| format!("{:.1} KB", b / 1000.0)),
            match (p95, bytes) {
                (Some(t), Some(b)) => format!(
                    "render {}; size {}",
                    at_most(t, 50.0, " ms"),
                    at_most(b / 1000.0, 100.0, " KB")
                ),
                _ => "–".into(),
            },
        ]);
    }
    let mut text = format!(
        "{} services × {} instances = {} tasks on {} simulated nodes; {} requests of each page.\n\n{}",
        opt(num(x, "/services"), int),
        x["instances"],
        opt(num(x, "/tasks"), int),
        x["nodes"],
        x["renders"],
        table(
            &[
                "Page",
                "Render p50",
                "Render p95",
                "Answer p95",
                "Size",
                "Goals (p95 ≤ 50 ms, ≤ 100 KB)"
            ],
            &rows
        )
    );
    let live = &x["live"];
    if live.is_object() {
        let lag = &live["lag"];
        let rows = vec![
            vec![
                format!(
                    "Committed change → on the open page ({} changes, Chromium)",
                    live["changes"]
                ),
                spread_ms(lag),
                opt(num(lag, "/p99_ms"), |v| format!("p99 ≤ 1 s: {}", at_most(v, 1000.0, " ms"))),
            ],
            vec![
                format!("Requests of an idle tab in {} s", live["idle_seconds"]),
                live["idle_requests"].to_string(),
                "0 (the live stream only)".into(),
            ],
            vec![
                format!(
                    "Updates sent to an unchanged service's open page in {} s (the cluster \
                     changing around it)",
                    x["quiet_seconds"]
                ),
                x["quiet_pushes"].to_string(),
                "0".into(),
            ],
        ];
        text.push('\n');
        text.push_str(&table(&["Measure", "This run", "Goal"], &rows));
    } else {
        text.push_str("\n\nChange → page: not measured (no Chromium in this run).");
    }
    Some(text)
}

fn spread_ms(summary: &Value) -> String {
    let p = |key: &str| opt(num(summary, &format!("/{key}_ms")), ms);
    format!("p50 {}, p99 {}, max {}", p("p50"), p("p99"), p("max"))
}

fn swarm_rollout(r: &Results) -> Option<String> {
    let s = r.swarm_rollout.as_ref()?;
    if let Some(blocked) = s["blocked"].as_str() {
        return Some(format!("Blocked: swarm mode does not work on this engine: `{blocked}`"));
    }
    let list = |v: &Value, f: fn(f64) -> String| {
        v.as_array().into_iter().flatten().filter_map(Value::as_f64).map(f).collect::<Vec<_>>()
    };
    let times = |key: &str| list(&s[key], secs).join(", ");
    let fewest = |key: &str| list(&s[key], |v| format!("{v:.0}")).join(", ");
    let rows = vec![
        vec![
            "Swarm".to_owned(),
            times("swarm_s"),
            opt(num(s, "/swarm_median_s"), secs),
            fewest("swarm_fewest_healthy"),
        ],
        vec![
            "Cube".to_owned(),
            times("cube_s"),
            opt(num(s, "/cube_median_s"), secs),
            fewest("cube_fewest_healthy"),
        ],
    ];
    Some(format!(
        "{}\n{} replicas of the busybox httpd with an HTTP check every second, an environment \
         variable changed, 2 at a time start-first, on engine {}; ratio Cube ÷ Swarm = {}.",
        table(&["System", "Runs", "Median", "Fewest healthy (per run)"], &rows),
        s["replicas"],
        s["engine"].as_str().unwrap_or("?"),
        opt(num(s, "/ratio"), |v| format!("{v:.2}")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_between_markers_only() {
        let mut doc =
            "intro\n<!-- bench:x:begin -->\nold\n<!-- bench:x:end -->\nprose\n".to_owned();
        assert!(replace_section(&mut doc, "x", "new table\n"));
        assert_eq!(
            doc,
            "intro\n<!-- bench:x:begin -->\n\nnew table\n\n<!-- bench:x:end -->\nprose\n"
        );
        assert!(!replace_section(&mut doc, "missing", "y"));
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(int(1234567.4), "1,234,567");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(-1000.0), "-1,000");
    }
}
