//! The etcd backend against a real etcd (Debian's `etcd-server`, started here on ports the
//! OS chose): the store's order, limits and fencing, the cluster record, the election and
//! its step-down, the snapshot and the feed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use cube_etcd::{Etcd, EtcdConfig, EtcdError, Fence, LeaderInfo};
use cube_store::{Batch, Store, StoreError, Table};
use cube_testkit::etcd::{EtcdCluster, etcd_available};
use tokio_util::sync::CancellationToken;

/// Whether etcd tests can run: skipped without etcd locally, a failure under CI.
fn ready() -> bool {
    if etcd_available() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "etcd test cannot run under CI: etcd-server missing");
    eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
    false
}

async fn connect(cluster: &EtcdCluster, name: &str) -> Result<Etcd, EtcdError> {
    let mut config = EtcdConfig::new(cluster.endpoints());
    config.cluster = name.to_owned();
    Etcd::connect(config).await
}

fn info(id: &str) -> LeaderInfo {
    LeaderInfo {
        id: id.to_owned(),
        url: format!("http://{id}.invalid"),
        cluster_url: None,
        epoch: 0,
    }
}

/// Runs a blocking store read off the runtime's threads, as the manager does.
async fn load(store: &std::sync::Arc<cube_etcd::EtcdStore>, table: Table) -> Vec<(String, u32)> {
    let store = std::sync::Arc::clone(store);
    tokio::task::spawn_blocking(move || cube_store::load_json(store.as_ref(), table))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_commits_in_order_and_a_follower_or_a_deposed_leader_cannot() {
    if !ready() {
        return;
    }
    let cluster = EtcdCluster::start(1).unwrap();
    let etcd = connect(&cluster, "cube").await.unwrap();
    let store = std::sync::Arc::new(etcd.store());

    // Without a term nothing is written.
    let mut b = Batch::new();
    b.put(Table::Tasks, "a", &1u32).unwrap();
    assert!(matches!(store.commit(b).await, Err(StoreError::Fenced)));

    let cancel = CancellationToken::new();
    let term = etcd.candidate(info("one"), Duration::from_secs(5)).campaign(&cancel).await.unwrap();
    store.set_fence(Some(term.fence.clone()));
    // Many batches queued at once land in the order they were handed over, and one far above
    // etcd's 128 writes per transaction is split.
    let mut commits = Vec::new();
    for i in 0..50u32 {
        let mut b = Batch::new();
        b.put(Table::Tasks, "a", &i).unwrap();
        b.put(Table::Events, format!("{i:020}"), &i).unwrap();
        commits.push(store.commit(b));
    }
    let mut big = Batch::new();
    for i in 0..1000u32 {
        big.put(Table::Nodes, format!("{i:04}"), &i).unwrap();
    }
    commits.push(store.commit(big));
    for c in commits {
        c.await.unwrap();
    }
    assert_eq!(load(&store, Table::Tasks).await, [("a".to_owned(), 49)]);
    assert_eq!(load(&store, Table::Events).await.len(), 50);
    let nodes = load(&store, Table::Nodes).await;
    assert_eq!(nodes.len(), 1000);
    assert!(nodes.iter().enumerate().all(|(i, (k, v))| *v == i as u32 && *k == format!("{i:04}")));
    // Paging through a table.
    let s = std::sync::Arc::clone(&store);
    let page = tokio::task::spawn_blocking(move || s.scan(Table::Nodes, Some("0997"), 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["0998", "0999"]);

    // A fence from before another leader's election is refused, whole.
    let old = term.fence.clone();
    term.resign().await;
    let other =
        etcd.candidate(info("two"), Duration::from_secs(5)).campaign(&cancel).await.unwrap();
    assert!(
        other.epoch > old.revision as u64,
        "epochs grow: {} after {}",
        other.epoch,
        old.revision
    );
    store.set_fence(Some(old));
    let mut b = Batch::new();
    b.put(Table::Tasks, "a", &1000u32).unwrap();
    b.put(Table::Tasks, "b", &1000u32).unwrap();
    assert!(matches!(store.commit(b).await, Err(StoreError::Fenced)));
    assert_eq!(load(&store, Table::Tasks).await, [("a".to_owned(), 49)]);
    store.set_fence(Some(Fence { key: other.fence.key.clone(), revision: other.fence.revision }));
    let mut b = Batch::new();
    b.delete(Table::Tasks, "a");
    store.commit(b).await.unwrap();
    assert!(load(&store, Table::Tasks).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_or_a_newer_formats_data_is_refused() {
    if !ready() {
        return;
    }
    let cluster = EtcdCluster::start(1).unwrap();
    connect(&cluster, "blue").await.unwrap();
    connect(&cluster, "blue").await.unwrap();
    let err = connect(&cluster, "green").await.unwrap_err();
    assert!(matches!(err, EtcdError::OtherCluster { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "etcd prefix /cube holds cluster \"blue\", not \"green\": give this manager the other \
         cluster's name (--etcd-cluster) or a prefix of its own (--etcd-prefix)"
    );

    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    raw.put("/newer/cluster", r#"{"cluster":"cube","format":99}"#, None).await.unwrap();
    let mut config = EtcdConfig::new(cluster.endpoints());
    config.prefix = "/newer".into();
    let err = Etcd::connect(config).await.unwrap_err();
    assert!(matches!(err, EtcdError::NewerFormat { found: 99, .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resigned_leader_is_followed_within_a_second_and_the_feed_sees_every_change() {
    if !ready() {
        return;
    }
    let cluster = EtcdCluster::start(1).unwrap();
    let etcd = connect(&cluster, "cube").await.unwrap();
    let cancel = CancellationToken::new();
    let first =
        etcd.candidate(info("one"), Duration::from_secs(5)).campaign(&cancel).await.unwrap();
    assert_eq!(etcd.leader().await.unwrap().map(|l| l.id), Some("one".to_owned()));

    let (tx, mut leader) = tokio::sync::watch::channel(None);
    let follower = tokio::spawn({
        let (etcd, cancel) = (etcd.clone(), cancel.clone());
        async move { etcd.follow_leader(tx, cancel).await }
    });
    let waiting = tokio::spawn({
        let (etcd, cancel) = (etcd.clone(), cancel.clone());
        async move { etcd.candidate(info("two"), Duration::from_secs(5)).campaign(&cancel).await }
    });
    leader.wait_for(|l| l.as_ref().is_some_and(|l| l.id == "one")).await.unwrap();

    // Changes a snapshot does not hold reach the feed, in order, deletes included.
    let store = etcd.store();
    store.set_fence(Some(first.fence.clone()));
    let snapshot = etcd.snapshot().await.unwrap();
    let mut feed = etcd.feed(snapshot.revision).await.unwrap();
    let mut b = Batch::new();
    b.put(Table::Services, "web", &1u32).unwrap();
    b.put(Table::Tasks, "t1", &2u32).unwrap();
    store.commit(b).await.unwrap();
    let mut b = Batch::new();
    b.delete(Table::Tasks, "t1");
    store.commit(b).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let (changes, _) =
            tokio::time::timeout(Duration::from_secs(5), feed.next()).await.unwrap().unwrap();
        seen.extend(changes.into_iter().map(|c| (c.table, c.key, c.value.is_some())));
    }
    assert_eq!(
        seen,
        [
            (Table::Services, "web".to_owned(), true),
            (Table::Tasks, "t1".to_owned(), true),
            (Table::Tasks, "t1".to_owned(), false)
        ]
    );

    let began = Instant::now();
    first.resign().await;
    let second = waiting.await.unwrap().unwrap();
    let handover = began.elapsed();
    assert!(handover < Duration::from_secs(1), "handover took {handover:?}");
    leader.wait_for(|l| l.as_ref().is_some_and(|l| l.id == "two")).await.unwrap();
    assert_eq!(leader.borrow().as_ref().map(|l| l.epoch), Some(second.epoch));
    cancel.cancel();
    follower.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_steps_down_before_its_lease_can_expire() {
    if !ready() {
        return;
    }
    let mut cluster = EtcdCluster::start(1).unwrap();
    let etcd = connect(&cluster, "cube").await.unwrap();
    let term = etcd
        .candidate(info("one"), Duration::from_secs(5))
        .campaign(&CancellationToken::new())
        .await
        .unwrap();
    let validity = term.validity();
    assert!(term.valid() && validity.valid());
    let began = Instant::now();
    cluster.kill(0);
    tokio::time::timeout(Duration::from_secs(10), term.ended().cancelled()).await.unwrap();
    let after = began.elapsed();
    assert!(!validity.valid());
    // At most the 3 s without a renewal plus a renewal's period (and whatever the last renewal
    // before the kill had left of it), well before the 5 s lease.
    assert!(after < Duration::from_millis(4500), "stepped down after {after:?}");
}
