//! Scheduler throughput: placements per second for every scheduler at 100, 1,000, 5,000 and
//! 10,000 nodes with mixed load (nodes of different sizes, partly full, some down, some without
//! stats), single core.
//!
//! Run: `cargo bench -p cube-core --bench scheduler`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cube_core::scheduler::NodeLoad;
use cube_core::{
    Bytes, DriverKind, Millicores, NodeId, NodeView, Resources, RestartPolicy, Scheduler,
    SchedulerKind, TaskSpec,
};
use strum::VariantArray;

/// Deterministic pseudo-random numbers (seeded), so every run sees the same cluster.
fn rng(seed: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed)
}

fn cluster(n: usize) -> Vec<NodeView> {
    let mut rng = rng(42);
    (0..n)
        .map(|i| {
            let cores = [2, 4, 8, 16][rng.u64(0..4) as usize];
            let mem_gib = [4, 8, 16, 64][rng.u64(0..4) as usize];
            let fill = rng.u64(0..90) as f64 / 100.0;
            let capacity = Resources {
                cpu: Millicores::cores(cores),
                memory: Bytes::gib(mem_gib),
                disk: Bytes::gib(100),
            };
            NodeView {
                id: NodeId::from_uuid(uuid::Uuid::from_u128(i as u128 + 1)),
                name: format!("node-{i}").into(),
                ready: rng.u64(0..100) >= 2,
                eligible: true,
                labels: BTreeMap::from([("zone".to_owned(), format!("z{}", rng.u64(0..3)))]),
                drivers: vec![DriverKind::Docker, DriverKind::Process],
                allows: Default::default(),
                reserved: Resources {
                    cpu: Millicores((capacity.cpu.get() as f64 * fill) as u64),
                    memory: Bytes((capacity.memory.get() as f64 * fill) as u64),
                    disk: Bytes::gib(1),
                },
                capacity,
                used_ports: BTreeSet::new(),
                task_count: rng.u64(0..40) as u32,
                load: (rng.u64(0..100) >= 5).then(|| NodeLoad {
                    cpu_busy: rng.u64(0..100) as f64 / 100.0,
                    memory_used: rng.u64(0..100) as f64 / 100.0,
                }),
            }
        })
        .collect()
}

fn specs() -> Vec<TaskSpec> {
    let mut rng = rng(7);
    (0..64)
        .map(|i| TaskSpec {
            name: format!("t{i}"),
            driver: DriverKind::Docker,
            image: Some("cube-test/busybox:latest".into()),
            command: None,
            args: vec![],
            env: BTreeMap::new(),
            workdir: None,
            resources: Resources {
                cpu: Millicores(100 * (1 + rng.u64(0..10))),
                memory: Bytes::mib(64 * (1 + rng.u64(0..16))),
                disk: Bytes::mib(100),
            },
            ports: vec![],
            restart: RestartPolicy::default(),
            health: None,
            constraints: if i % 4 == 0 {
                vec!["node.labels.zone == z1".parse().unwrap()]
            } else {
                vec![]
            },
            stop_grace: Duration::from_secs(10),
            on_disconnect: Default::default(),
            user: None,
            read_only_rootfs: false,
            cap_drop: vec![],
            cap_add: vec![],
            privileged: false,
            mounts: vec![],
            network: Default::default(),
        })
        .collect()
}

fn placements(c: &mut Criterion) {
    let specs = specs();
    for n in [100, 1_000, 5_000, 10_000] {
        let nodes = cube_core::NodeSet::new(cluster(n));
        let mut group = c.benchmark_group(format!("place/{n}-nodes"));
        group.throughput(Throughput::Elements(1));
        for &kind in SchedulerKind::VARIANTS {
            group.bench_with_input(BenchmarkId::from_parameter(kind), &nodes, |b, nodes| {
                let mut scheduler = Scheduler::new(kind);
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) % specs.len();
                    black_box(scheduler.place(&specs[i], nodes, &[]))
                });
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = placements
}
criterion_main!(benches);
