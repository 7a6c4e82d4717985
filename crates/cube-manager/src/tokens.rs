//! Users' tokens: who may call the manager's API, and with which role.
//!
//! A token is made by an admin (`POST /v1/tokens`) with a name and a role; its secret is
//! drawn from the OS's generator, shown once, and only its SHA-256 digest is kept (table
//! `tokens`, so every manager on the same store knows it). A request's bearer is hashed and
//! looked up by digest: the lookup reveals nothing about a secret (an attacker cannot choose
//! digests), and the digests are then compared in constant time all the same.
//!
//! The cluster token (`CUBE_TOKEN`) stays what it was: the bootstrap admin, and what workers
//! send. A manager without one requires no credentials (loopback only); a user's token
//! presented to it still acts with its own role, so roles can be tried on `cube dev`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use cube_api::auth::{CreatedToken, TokenRequest, TokenView};
use cube_core::Timestamp;
use cube_core::access::{Role, TokenRecord, TokenStatus};
use cube_http::auth::{Authenticate, Caller, ClusterToken, Grant, Refused};
use cube_pki::Identity;
use cube_rt::Clock;
use cube_store::{Batch, Table};

use crate::ManagerError;

/// The first characters of every secret: says what it is to people and to secret scanners.
const SECRET_PREFIX: &str = "cube_";
/// Random bytes in a secret (256 bits).
const SECRET_BYTES: usize = 32;

/// A SHA-256 digest.
type Digest = [u8; 32];

/// Every user's token, by name and by digest.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    by_name: BTreeMap<String, TokenRecord>,
    by_digest: HashMap<Digest, String>,
}

/// Why a token could not be made.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The name is not a valid token name.
    BadName,
    /// A token of that name exists and is not revoked.
    Taken,
}

impl Tokens {
    /// The table holding `records` (as stored; one with an unreadable digest is skipped).
    pub(crate) fn new(records: impl IntoIterator<Item = TokenRecord>) -> Self {
        let mut tokens = Self::default();
        for r in records {
            tokens.put(r);
        }
        tokens
    }

    /// Adds or replaces a record (made here, or replicated from the leader's writes).
    pub(crate) fn put(&mut self, record: TokenRecord) {
        if let Some(old) = self.by_name.remove(&record.name)
            && let Some(d) = parse_digest(&old.digest)
        {
            self.by_digest.remove(&d);
        }
        match parse_digest(&record.digest) {
            Some(d) => {
                self.by_digest.insert(d, record.name.clone());
            }
            None => {
                tracing::error!(name = %record.name, "a stored token's digest is not valid; it cannot be used");
            }
        }
        self.by_name.insert(record.name.clone(), record);
    }

    /// Forgets a record (replicated deletion).
    pub(crate) fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name)
            && let Some(d) = parse_digest(&old.digest)
        {
            self.by_digest.remove(&d);
        }
    }

    /// Every token, by name.
    pub(crate) fn list(&self) -> impl Iterator<Item = &TokenRecord> {
        self.by_name.values()
    }

    /// A new token's record, given its secret's `digest`, if the name is free (or revoked).
    pub(crate) fn admit(
        &self,
        name: &str,
        role: Role,
        digest: Digest,
        by: &str,
        now: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Result<TokenRecord, Refusal> {
        if !cube_core::access::valid_token_name(name) {
            return Err(Refusal::BadName);
        }
        if self.by_name.get(name).is_some_and(|t| t.revoked_at.is_none()) {
            return Err(Refusal::Taken);
        }
        Ok(TokenRecord {
            name: name.to_owned(),
            role,
            digest: hex(&digest),
            created_at: now,
            created_by: by.to_owned(),
            expires_at,
            revoked_at: None,
        })
    }

    /// The record of `name` revoked at `now` (`None`: no such token; one already revoked
    /// keeps its first revocation time).
    pub(crate) fn revoked(&self, name: &str, now: Timestamp) -> Option<TokenRecord> {
        let mut record = self.by_name.get(name)?.clone();
        record.revoked_at = record.revoked_at.or(Some(now));
        Some(record)
    }

    /// Who presents `secret` at `now`, or why they are refused. `None`: no token has this
    /// secret.
    fn caller(&self, secret: &[u8], now: Timestamp) -> Option<Result<Caller, Refused>> {
        use subtle::ConstantTimeEq;
        let digest = sha256(secret);
        let name = self.by_digest.get(&digest)?;
        let record = self.by_name.get(name)?;
        let stored = parse_digest(&record.digest)?;
        if !bool::from(stored.ct_eq(&digest)) {
            return None;
        }
        Some(match record.status(now) {
            TokenStatus::Valid => Ok(Caller {
                name: Arc::from(record.name.as_str()),
                grant: Grant::User(record.role),
            }),
            TokenStatus::Expired => Err(Refused(format!("token `{}` has expired", record.name))),
            TokenStatus::Revoked => Err(Refused(format!("token `{}` was revoked", record.name))),
        })
    }
}

/// A new secret and its digest.
pub(crate) fn new_secret() -> Result<(String, Digest), ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; SECRET_BYTES];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    let secret = format!("{SECRET_PREFIX}{}", hex(&bytes));
    let digest = sha256(secret.as_bytes());
    Ok((secret, digest))
}

fn sha256(data: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn parse_digest(text: &str) -> Option<Digest> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The manager's [`Authenticate`]: the cluster token first, then users' tokens.
pub(crate) struct ManagerAuth {
    pub(crate) cluster: ClusterToken,
    /// Removed nodes, whose certificates are refused.
    pub(crate) revocations: cube_http::mtls::Revocations,
    pub(crate) tokens: Arc<RwLock<Tokens>>,
    pub(crate) clock: Clock,
}

impl Authenticate for ManagerAuth {
    fn authenticate(&self, bearer: Option<&[u8]>) -> Result<Caller, Refused> {
        if let Some(caller) = self.cluster.check(bearer)? {
            return Ok(caller);
        }
        // `check` answers for a missing bearer: one is presented and is not the cluster token.
        let secret = bearer.unwrap_or_default();
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        match tokens.caller(secret, self.clock.now()) {
            Some(Ok(user)) => Ok(user),
            // A server that requires no credentials lets anyone in; a user's valid token still
            // acts with its own role, so roles can be tried on `cube dev`.
            _ if !self.cluster.requires_credentials() => Ok(Caller::anonymous()),
            Some(Err(refused)) => Err(refused),
            None => Err(Refused("wrong token".into())),
        }
    }

    fn requires_credentials(&self) -> bool {
        self.cluster.requires_credentials()
    }

    /// A node's certificate opens the node routes for that node; a manager's, for the node it
    /// passes a request on for (a follower to its leader).
    fn authenticate_peer(
        &self,
        peer: &Identity,
        on_behalf: Option<&str>,
    ) -> Result<Caller, Refused> {
        let node = match (peer, on_behalf) {
            (Identity::Node(id), _) => id.as_str(),
            (Identity::Manager(_), Some(id)) => id,
            (Identity::Manager(name), None) => {
                return Ok(Caller {
                    name: Arc::from(format!("manager {name}")),
                    grant: Grant::Node,
                });
            }
        };
        if self.revocations.is_revoked(node) {
            return Err(Refused("this node was removed from the cluster".into()));
        }
        Ok(Caller { name: Arc::from(node), grant: Grant::Node })
    }
}

// The manager's side: the routes' work, committed like every change.
impl crate::Manager {
    /// The table, to change it (call with the state lock held).
    pub(crate) fn tokens_mut(&self) -> std::sync::RwLockWriteGuard<'_, Tokens> {
        // A panic while holding the lock would be a bug; the table is still usable.
        self.tokens.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every token, by name (never a secret).
    pub(crate) fn list_tokens(&self) -> Vec<TokenView> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens.list().map(TokenView::from).collect()
    }

    /// Makes a token for `request`, made by `by`; its secret is in the answer only.
    pub(crate) async fn create_token(
        &self,
        request: TokenRequest,
        by: &Caller,
    ) -> Result<CreatedToken, ManagerError> {
        let (secret, digest) = new_secret().map_err(|_| ManagerError::Random)?;
        let now = self.clock.now();
        let expires_at = match request.expires_in {
            Some(d) => Some(
                jiff::SignedDuration::try_from(d)
                    .ok()
                    .and_then(|d| now.checked_add(d).ok())
                    .ok_or(ManagerError::TokenExpiry(d))?,
            ),
            None => None,
        };
        let (record, staged) = {
            // Under the state lock like every change, so the store sees changes in order.
            let _state = self.lock();
            let mut tokens = self.tokens_mut();
            let record = tokens
                .admit(&request.name, request.role, digest, &by.name, now, expires_at)
                .map_err(|r| match r {
                    Refusal::BadName => ManagerError::TokenName(request.name.clone()),
                    Refusal::Taken => ManagerError::TokenTaken(request.name.clone()),
                })?;
            let mut batch = Batch::new();
            batch.put(Table::Tokens, record.name.clone(), &record)?;
            tokens.put(record.clone());
            (record, crate::Staged::commit(self.store.as_ref(), batch, None))
        };
        self.committed(staged).await?;
        tracing::info!(name = %record.name, role = %record.role, by = %by.name, "token created");
        Ok(CreatedToken { token: TokenView::from(&record), secret })
    }

    /// Revokes `name` at once: its next request is refused.
    pub(crate) async fn revoke_token(
        &self,
        name: &str,
        by: &Caller,
    ) -> Result<TokenView, ManagerError> {
        let (record, staged) = {
            let _state = self.lock();
            let mut tokens = self.tokens_mut();
            let record = tokens
                .revoked(name, self.clock.now())
                .ok_or_else(|| ManagerError::TokenNotFound(name.to_owned()))?;
            let mut batch = Batch::new();
            batch.put(Table::Tokens, record.name.clone(), &record)?;
            tokens.put(record.clone());
            (record, crate::Staged::commit(self.store.as_ref(), batch, None))
        };
        self.committed(staged).await?;
        tracing::info!(name = %record.name, by = %by.name, "token revoked");
        Ok(TokenView::from(&record))
    }

    /// The [`Authenticate`] of this manager's API.
    pub(crate) fn authenticator(&self) -> cube_http::auth::Authenticator {
        Arc::new(ManagerAuth {
            cluster: ClusterToken(self.config().security.token.clone()),
            revocations: self.config().cluster.revocations().clone(),
            tokens: Arc::clone(&self.tokens),
            clock: self.clock.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn table_with(name: &str, role: Role, expires: Option<Timestamp>) -> (Tokens, String) {
        let mut t = Tokens::default();
        let (secret, digest) = new_secret().unwrap();
        let r =
            t.admit(name, role, digest, "cluster", at("2026-12-01T00:00:00Z"), expires).unwrap();
        t.put(r);
        (t, secret)
    }

    #[test]
    fn a_secret_names_its_token_and_role_until_it_expires_or_is_revoked() {
        let now = at("2026-12-01T12:00:00Z");
        let (mut t, secret) = table_with("ci", Role::Operate, Some(at("2026-12-02T00:00:00Z")));
        assert!(secret.starts_with("cube_") && secret.len() == 5 + 64);
        let caller = t.caller(secret.as_bytes(), now).unwrap().unwrap();
        assert_eq!((&*caller.name, caller.grant), ("ci", Grant::User(Role::Operate)));
        assert!(t.caller(b"cube_not-it", now).is_none());
        let expired = t.caller(secret.as_bytes(), at("2026-12-02T00:00:00Z")).unwrap();
        assert_eq!(expired, Err(Refused("token `ci` has expired".into())));
        let revoked = t.revoked("ci", now).unwrap();
        t.put(revoked);
        assert_eq!(
            t.caller(secret.as_bytes(), now).unwrap(),
            Err(Refused("token `ci` was revoked".into()))
        );
    }

    #[test]
    fn names_are_checked_and_taken_until_revoked() {
        let now = at("2026-12-01T12:00:00Z");
        let (mut t, old) = table_with("ci", Role::Read, None);
        let (_, digest) = new_secret().unwrap();
        assert_eq!(t.admit("ci", Role::Read, digest, "x", now, None), Err(Refusal::Taken));
        assert_eq!(t.admit("Bad Name", Role::Read, digest, "x", now, None), Err(Refusal::BadName));
        let revoked = t.revoked("ci", now).unwrap();
        t.put(revoked);
        let again = t.admit("ci", Role::Admin, digest, "x", now, None).unwrap();
        t.put(again);
        // The old secret no longer opens anything: its digest left with its record.
        assert!(t.caller(old.as_bytes(), now).is_none());
        assert_eq!(t.list().count(), 1);
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let d = sha256(b"x");
        assert_eq!(parse_digest(&hex(&d)), Some(d));
        assert_eq!(parse_digest("zz"), None);
    }
}
