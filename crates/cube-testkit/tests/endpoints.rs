//! A service's endpoints through a real manager and workers in one process (fake driver,
//! virtual clock): healthy running instances are endpoints at their nodes' addresses, an
//! instance leaves them as soon as it is asked to stop, each change is one `EndpointsUpdated`
//! event, and two services cannot publish one port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cube_api::ErrorCode;
use cube_api::events::{EventObject, EventType, StreamLine};
use cube_core::endpoints::ServiceEndpoints;
use cube_core::service::ServiceSpec;
use cube_testkit::Cluster;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// `count` instances of a web server publishing container port 80 on `publish`, healthy once
/// their exec check passed for 1 s.
fn web(name: &str, count: u32, publish: u16, env: Value) -> ServiceSpec {
    serde_json::from_value(json!({
        "name": name, "count": count,
        "task": {"name": name, "driver": "docker", "image": "httpd", "env": env,
                 "ports": [{"container": 80}],
                 "health": {"type": "exec", "command": ["check"], "interval": "500ms"}},
        "ports": [{"target": 80, "publish": publish, "mode": "http"}],
        "update": {"min_healthy_time": "1s"}
    }))
    .unwrap()
}

async fn endpoints(cluster: &Cluster, name: &str) -> ServiceEndpoints {
    cluster.drive(cluster.client().service_endpoints(name)).await.unwrap()
}

async fn wait_endpoints(cluster: &Cluster, name: &str, n: usize) -> ServiceEndpoints {
    cluster
        .wait_for(Duration::from_secs(30), &format!("{n} endpoints"), |c| async move {
            let e = c.service_endpoints(name).await.ok()?;
            (e.endpoints.len() == n).then_some(e)
        })
        .await
}

#[tokio::test(start_paused = true)]
async fn healthy_instances_are_endpoints_until_they_are_asked_to_stop() {
    let cluster = Cluster::start(2).await;
    let mut stream =
        cluster.drive(cluster.client().events(Some(0), &["Endpoints".into()])).await.unwrap();
    cluster
        .drive(cluster.client().put_service(&web("web", 2, 8080, json!({})), None))
        .await
        .unwrap();
    let e = wait_endpoints(&cluster, "web", 2).await;
    assert_eq!(e.ports.len(), 1);
    let nodes: std::collections::BTreeSet<_> = e.endpoints.iter().map(|e| e.node).collect();
    assert_eq!(nodes.len(), 2, "one per node: {e:?}");
    for endpoint in &e.endpoints {
        let a = endpoint.address(80).unwrap();
        assert_eq!(a.host, "127.0.0.1", "the node's address: the engine bound every address");
        assert!(a.port >= 30000, "{a:?}");
        assert_eq!(endpoint.version, 1);
    }

    // Scaled down: the instance stopped leaves the endpoints in the change that stops it.
    cluster.drive(cluster.client().scale("web", 1)).await.unwrap();
    let after = endpoints(&cluster, "web").await;
    assert_eq!(after.endpoints.len(), 1, "{after:?}");

    // Each change was one event on the Endpoints topic: published with none yet, then 1, 2
    // and 1 instances.
    let mut counts = Vec::new();
    while counts.len() < 4 {
        match cluster.drive(stream.next()).await {
            Some(Ok(StreamLine::Event(event))) => {
                assert_eq!((event.kind, event.key.as_str()), (EventType::EndpointsUpdated, "web"));
                let EventObject::Endpoints(Some(e)) = &event.object else { panic!("{event:?}") };
                counts.push(e.endpoints.len());
            }
            Some(Ok(StreamLine::Notice(_))) => {}
            other => panic!("stream ended: {other:?}"),
        }
    }
    assert_eq!(counts, [0, 1, 2, 1], "announced once per change");

    // Removed: its endpoints go with it.
    cluster.drive(cluster.client().remove_service("web")).await.unwrap();
    let gone = cluster.drive(cluster.client().service_endpoints("web")).await;
    assert_eq!(gone.unwrap_err().code(), Some(ErrorCode::NotFound));
}

#[tokio::test(start_paused = true)]
async fn a_nodes_feed_answers_at_once_then_only_when_endpoints_change() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    let node = cluster.drive(client.nodes()).await.unwrap()[0].id;
    // Shorter than the test kit client's timeout.
    let wait = Duration::from_secs(2);
    let first = cluster.drive(client.ingress_feed(node, None, wait)).await.unwrap();
    assert!(first.services.is_empty());
    cluster.drive(client.put_service(&web("web", 1, 8080, json!({})), None)).await.unwrap();
    // Asked with what it applied, the node hears of the change (published, then running).
    let mut applied = first.index;
    let feed = loop {
        let feed = cluster.drive(client.ingress_feed(node, Some(applied), wait)).await.unwrap();
        // Answered once something changed, or the wait passed (the same index).
        assert!(feed.index >= applied);
        applied = feed.index;
        if feed.services.first().is_some_and(|s| s.endpoints.len() == 1) {
            break feed;
        }
    };
    assert_eq!(feed.services[0].ports[0].publish, 8080);
    // Nothing changes: the poll waits out its wait and answers the same index.
    let before = tokio::time::Instant::now();
    let idle = cluster.drive(client.ingress_feed(node, Some(applied), wait)).await.unwrap();
    assert_eq!(idle.index, applied);
    assert!(before.elapsed() >= wait, "it waited");
}

#[tokio::test(start_paused = true)]
async fn two_services_cannot_publish_one_port() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    cluster.drive(client.put_service(&web("web", 1, 8080, json!({})), None)).await.unwrap();
    let refused = cluster.drive(client.put_service(&web("api", 1, 8080, json!({})), None)).await;
    let error = refused.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Conflict), "{error}");
    assert!(error.to_string().contains("port 8080 is published by service web"), "{error}");
    // The same service may keep its port across an update, and another port is free.
    cluster.drive(client.put_service(&web("web", 1, 8080, json!({"V": "2"})), None)).await.unwrap();
    cluster.drive(client.put_service(&web("api", 1, 8081, json!({})), None)).await.unwrap();
}
