//! ARCHITECTURE.md's dependency rules, checked against the manifests and the sources, so the
//! map cannot drift from the territory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Each workspace crate and the Cube crates among its (non-dev) dependencies.
fn cube_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(crates_dir()).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
        let doc: toml::Table = text.parse().unwrap();
        let name = doc["package"]["name"].as_str().unwrap().to_owned();
        let deps = doc
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|d| d.keys().filter(|k| k.starts_with("cube")).cloned().collect())
            .unwrap_or_default();
        graph.insert(name, deps);
    }
    graph
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn crates_depend_only_the_documented_way() {
    let graph = cube_dependencies();
    let expect = |krate: &str, deps: &[&str]| {
        assert_eq!(graph[krate], set(deps), "the Cube dependencies of {krate}");
    };
    expect("cube-core", &[]);
    expect("cube-store", &[]);
    expect("cube-etcd", &["cube-store"]);
    expect("cube-rt", &[]);
    expect("cube-pki", &[]);
    expect("cube-api", &["cube-core"]);
    expect("cube-http", &["cube-api", "cube-core", "cube-pki"]);
    expect("cube-ingress", &["cube-core"]);
    expect(
        "cube-worker",
        &[
            "cube-api",
            "cube-core",
            "cube-http",
            "cube-ingress",
            "cube-pki",
            "cube-rt",
            "cube-store",
        ],
    );
    expect("cube-ui", &["cube-api", "cube-core"]);
    expect(
        "cube-manager",
        &[
            "cube-api",
            "cube-core",
            "cube-etcd",
            "cube-http",
            "cube-pki",
            "cube-rt",
            "cube-store",
            "cube-ui",
        ],
    );
    for (krate, deps) in &graph {
        if krate != "cube-bench" && krate != "cube-testkit" {
            assert!(!deps.contains("cube-testkit"), "{krate} depends on the test kit");
        }
        assert!(!deps.contains("cube-bench"), "{krate} depends on the benchmark tool");
    }
}

#[test]
fn the_manager_rules_import_only_the_domain() {
    let dir = crates_dir().join("cube-manager/src/state");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| l.trim_start().starts_with("use cube_")) {
            assert!(
                line.trim_start().starts_with("use cube_core"),
                "{}: the rules must not depend on {line:?}",
                path.display()
            );
        }
    }
}

#[test]
fn only_the_worker_driver_module_names_the_concrete_drivers() {
    let src = crates_dir().join("cube-worker/src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue; // driver/ itself
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for name in ["DockerDriver", "ProcessDriver", "bollard::"] {
            assert!(!text.contains(name), "{} names {name}", path.display());
        }
    }
}
