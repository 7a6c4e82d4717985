//! The node's ingress (`cube_ingress`) kept in step with the manager: a long poll of
//! `GET /v1/nodes/{id}/endpoints` that the manager answers as soon as any published service's
//! endpoints change. Each request names the index this node applied last, which is also how
//! the manager learns that this node no longer sends connections to an instance that left.

use std::time::Duration;

use cube_core::NodeId;
use cube_http::client::Client;
use cube_ingress::Ingress;
use cube_rt::Backoff;
use tokio_util::sync::CancellationToken;

/// How long one poll waits for a change (the manager's default wait).
const FEED_WAIT: Duration = Duration::from_secs(300);
/// The client's timeout: a poll plus the manager's jitter and some slack.
pub(crate) const FEED_TIMEOUT: Duration = Duration::from_secs(360);

/// Follows the manager's endpoints into `ingress` until `shutdown`.
pub(crate) async fn follow(
    ingress: Ingress,
    client: Client,
    node: NodeId,
    shutdown: CancellationToken,
) {
    let mut applied = None;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let answer = tokio::select! {
            () = shutdown.cancelled() => return,
            answer = client.ingress_feed(node, applied, FEED_WAIT) => answer,
        };
        match answer {
            Ok(feed) => {
                ingress.apply(&feed.services);
                if applied != Some(feed.index) {
                    tracing::debug!(
                        index = feed.index,
                        services = feed.services.len(),
                        "ingress endpoints applied"
                    );
                }
                applied = Some(feed.index);
                backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            }
            Err(e) => {
                // Before the first registration the manager does not know the node yet (404);
                // either way, try again shortly, keeping what was applied.
                tracing::debug!(error = %e, "ingress feed unavailable; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}
