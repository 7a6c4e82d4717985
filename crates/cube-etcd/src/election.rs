//! The leader election: etcd's election API on a lease.
//!
//! A [`Candidate`] grants a lease (TTL 5 s by default), keeps it alive every second, and
//! campaigns; etcd elects the candidate whose key under `<prefix>/leader/` was created first.
//! The elected one gets a [`Term`], whose epoch is that key's create revision (higher for
//! every later term) and whose [`Fence`] guards every write of the term. A term ends when the
//! lease could not be renewed for `step_down` (3 s by default), before etcd can let the lease
//! expire and elect another: the leader stops acting while it is still the only one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, LeaderKey, ResignOptions, SortOrder, SortTarget};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{Etcd, EtcdError, Fence};

/// Who leads, as the leader announces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The manager's name.
    pub id: String,
    /// Where its API answers.
    pub url: String,
    /// Where its cluster port answers nodes (mutual TLS), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_url: Option<String>,
    /// Its term's epoch (filled in from the leader key; not part of what it announces).
    #[serde(default)]
    pub epoch: u64,
}

/// A manager that wants to lead.
#[derive(Debug)]
pub struct Candidate {
    etcd: Etcd,
    info: LeaderInfo,
    ttl: Duration,
    renew: Duration,
    step_down: Duration,
}

/// One elected term.
#[derive(Debug)]
pub struct Term {
    /// The term's epoch: the leader key's create revision.
    pub epoch: u64,
    /// What the term's writes must prove.
    pub fence: Fence,
    /// Cancelled when the term ends.
    ended: CancellationToken,
    /// When the lease was last renewed (its request sent).
    renewed: Arc<Mutex<Instant>>,
    step_down: Duration,
    leader: LeaderKey,
    lease: i64,
    etcd: Etcd,
}

impl Candidate {
    pub(crate) fn new(etcd: Etcd, info: LeaderInfo, ttl: Duration) -> Self {
        // Renew three times per step-down window; step down with 40% of the lease left.
        let renew = (ttl / 5).max(Duration::from_millis(200));
        let step_down = ttl.mul_f64(0.6);
        Self { etcd, info, ttl, renew, step_down }
    }

    /// Campaigns until elected (or `cancel`): the term, whose keep-alive runs until it ends.
    pub async fn campaign(&self, cancel: &CancellationToken) -> Result<Term, EtcdError> {
        let etcd = &self.etcd;
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(5).max(2);
        // The lease runs from when etcd granted it: count from before the request.
        let asked = Instant::now();
        let lease = etcd
            .call("grant a lease", |c| async move { c.lease_client().grant(ttl, None).await })
            .await?
            .id();
        let renewed = Arc::new(Mutex::new(asked));
        let ended = CancellationToken::new();
        // The lease must stay alive while the campaign waits, and after it.
        let keeper = keep_alive(
            etcd.clone(),
            lease,
            self.renew,
            self.step_down,
            Arc::clone(&renewed),
            ended.clone(),
        );
        let keeper = tokio::spawn(keeper);
        let value = serde_json::to_vec(&self.info).unwrap_or_default();
        // Waits as long as another leads: no timeout; a member that goes away fails it.
        let (member, client) = etcd.current();
        let mut election = client.election_client();
        let campaign = election.campaign(etcd.election(), value, lease);
        let outcome = tokio::select! {
            r = campaign => r.map_err(|source| {
                if crate::unreachable(&source) {
                    etcd.failed(member);
                }
                EtcdError::Request { operation: "campaign", source }
            }),
            () = ended.cancelled() => Err(EtcdError::LeadershipLost { reason: "the lease ran out while campaigning" }),
            () = cancel.cancelled() => Err(EtcdError::LeadershipLost { reason: "stopped" }),
        };
        let leader = match outcome.map(|mut r| r.take_leader()) {
            Ok(Some(leader)) => leader,
            Ok(None) => {
                ended.cancel();
                let _ = keeper.await;
                revoke(etcd, lease).await;
                return Err(EtcdError::LeadershipLost { reason: "etcd named no leader key" });
            }
            Err(e) => {
                ended.cancel();
                let _ = keeper.await;
                revoke(etcd, lease).await;
                return Err(e);
            }
        };
        let revision = leader.rev();
        Ok(Term {
            epoch: u64::try_from(revision).unwrap_or(0),
            fence: Fence { key: leader.key().to_vec(), revision },
            ended,
            renewed,
            step_down: self.step_down,
            leader,
            lease,
            etcd: etcd.clone(),
        })
    }
}

impl Term {
    /// Cancelled when the term ends (the lease could not be renewed in time, or expired).
    pub fn ended(&self) -> CancellationToken {
        self.ended.clone()
    }

    /// Whether the term still holds by this process's own clock: the lease was renewed
    /// less than `step_down` ago. Checked before every command to a worker, so a leader that
    /// was paused longer than that sends nothing before it notices.
    pub fn valid(&self) -> bool {
        !self.ended.is_cancelled()
            && self.renewed.lock().unwrap_or_else(|e| e.into_inner()).elapsed() < self.step_down
    }

    /// A cheap handle that answers [`Term::valid`].
    pub fn validity(&self) -> Validity {
        Validity {
            ended: self.ended.clone(),
            renewed: Arc::clone(&self.renewed),
            step_down: self.step_down,
        }
    }

    /// Gives the leadership up at once (on shutdown): the next candidate is elected as soon
    /// as etcd deletes the key, without waiting for the lease.
    pub async fn resign(self) {
        self.ended.cancel();
        let leader = self.leader.clone();
        let resign = self.etcd.call("resign", |c| {
            let options = ResignOptions::new().with_leader(leader.clone());
            async move { c.election_client().resign(Some(options)).await }
        });
        if let Err(e) = resign.await {
            tracing::warn!(error = %e, "cannot resign; the lease will expire instead");
        }
        revoke(&self.etcd, self.lease).await;
    }
}

impl Drop for Term {
    /// A term dropped without resigning stops renewing its lease (etcd lets it expire).
    fn drop(&mut self) {
        self.ended.cancel();
    }
}

/// Answers whether a term still holds (see [`Term::valid`]).
#[derive(Clone, Debug)]
pub struct Validity {
    ended: CancellationToken,
    renewed: Arc<Mutex<Instant>>,
    step_down: Duration,
}

impl Validity {
    /// Whether the term still holds by this process's clock.
    pub fn valid(&self) -> bool {
        !self.ended.is_cancelled()
            && self.renewed.lock().unwrap_or_else(|e| e.into_inner()).elapsed() < self.step_down
    }
}

async fn revoke(etcd: &Etcd, lease: i64) {
    let revoked =
        etcd.call("revoke the lease", |c| async move { c.lease_client().revoke(lease).await });
    if let Err(e) = revoked.await {
        tracing::debug!(error = %e, "cannot revoke the lease; it will expire");
    }
}

/// Renews `lease` every `renew` until `ended`; ends the term (cancels `ended`) when no renewal
/// succeeded for `step_down`, or etcd says the lease is gone.
async fn keep_alive(
    etcd: Etcd,
    lease: i64,
    renew: Duration,
    step_down: Duration,
    renewed: Arc<Mutex<Instant>>,
    ended: CancellationToken,
) {
    let mut channel = None;
    let mut member = 0;
    let mut tick = tokio::time::interval(renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = ended.cancelled() => return,
        }
        let last = *renewed.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= step_down {
            tracing::warn!(lease, since = ?last.elapsed(), "lease not renewed in time: stepping down");
            ended.cancel();
            return;
        }
        if channel.is_none() {
            let (i, client) = etcd.current();
            member = i;
            let mut leases = client.lease_client();
            match etcd.timed("keep the lease alive", leases.keep_alive(lease)).await {
                Ok(pair) => channel = Some(pair),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open the lease's keep-alive");
                    etcd.failed(i);
                    continue;
                }
            }
        }
        let Some((keeper, stream)) = channel.as_mut() else { continue };
        let sent = Instant::now();
        let answer = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match tokio::time::timeout(renew, answer).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                *renewed.lock().unwrap_or_else(|e| e.into_inner()) = sent;
            }
            Ok(Ok(Some(_))) => {
                tracing::warn!(lease, "the lease expired: stepping down");
                ended.cancel();
                return;
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                // Open a fresh keep-alive stream at the next tick, on the next member.
                channel = None;
                etcd.failed(member);
            }
        }
    }
}

impl Etcd {
    /// Who leads now, if anyone: the value of the election's oldest key.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>, EtcdError> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let key = format!("{}/", self.election());
        let answer = self
            .call("find the leader", |c| {
                let (key, options) = (key.clone(), options.clone());
                async move { c.kv_client().get(key, Some(options)).await }
            })
            .await?;
        Ok(answer.kvs().first().and_then(|kv| {
            let mut info: LeaderInfo = serde_json::from_slice(kv.value()).ok()?;
            info.epoch = u64::try_from(kv.create_revision()).unwrap_or(0);
            Some(info)
        }))
    }

    /// Keeps `leader` on who leads until `cancel`: looks again at every change of the
    /// election's keys (a watch, not a period); while etcd cannot be reached, says nothing new
    /// and retries every second.
    pub async fn follow_leader(
        &self,
        leader: tokio::sync::watch::Sender<Option<LeaderInfo>>,
        cancel: CancellationToken,
    ) {
        let prefix = format!("{}/", self.election());
        while !cancel.is_cancelled() {
            let attempt = async {
                let options = etcd_client::WatchOptions::new().with_prefix();
                let mut stream = self
                    .call("watch the election", |c| {
                        let (prefix, options) = (prefix.clone(), options.clone());
                        async move { c.watch_client().watch(prefix, Some(options)).await }
                    })
                    .await?;
                loop {
                    let now = self.leader().await?;
                    leader.send_if_modified(|l| {
                        let changed = *l != now;
                        *l = now;
                        changed
                    });
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return Err(EtcdError::WatchEnded { reason: "closed".into() }),
                        Err(source) => {
                            return Err(EtcdError::Request {
                                operation: "watch the election",
                                source,
                            });
                        }
                    }
                }
            };
            tokio::select! {
                r = attempt => {
                    let r: Result<(), EtcdError> = r;
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "lost the election's watch");
                    }
                }
                () = cancel.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}
