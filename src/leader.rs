//! Leader election on a coordination.k8s.io Lease, so that of several replicas only one reconciles.
//! Optimistic concurrency (resourceVersion) makes taking the Lease atomic.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, Client, api::PostParams};
use tracing::{info, warn};

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
}

/// What a replica may do with a Lease it observed.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// We hold it and should renew it.
    Renew,
    /// Nobody valid holds it; we may take it.
    Take,
    /// Someone else holds it.
    Wait,
}

/// Decides from the Lease as read whether `identity` may hold it at `now`. Pure.
pub fn claim(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Claim {
    let Some(spec) = spec else { return Claim::Take };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return Claim::Renew;
    }
    if holder.is_empty() {
        return Claim::Take;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let renewed = spec
        .renew_time
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    if renewed + duration < now {
        Claim::Take
    } else {
        Claim::Wait
    }
}

/// A Lease held by this replica.
pub struct Leadership {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Leadership {
    /// Waits until this replica holds the Lease.
    pub async fn acquire(client: Client, config: LeaseConfig) -> Self {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let leadership = Self { api, config };
        let mut waiting_logged = false;
        loop {
            match leadership.try_hold().await {
                Ok(true) => {
                    info!(lease = %leadership.config.name, identity = %leadership.config.identity, "acquired leadership");
                    return leadership;
                }
                Ok(false) if !waiting_logged => {
                    info!(lease = %leadership.config.name, "another replica leads; standing by");
                    waiting_logged = true;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election request failed"),
            }
            tokio::time::sleep(leadership.retry_period()).await;
        }
    }

    fn retry_period(&self) -> Duration {
        self.config.duration / 5
    }

    /// Renews the Lease; returns when leadership is lost: another replica took it, or no renewal
    /// succeeded within the renew deadline (two thirds of the lease duration, so this replica
    /// stops before another may take the Lease). Each attempt has its own timeout and a failed
    /// one is retried soon, so a slow API server costs attempts, not the Lease.
    pub async fn keep(&self) {
        let mut last_ok = tokio::time::Instant::now();
        let deadline = self.config.duration * 2 / 3;
        let mut pause = self.config.duration / 3;
        loop {
            tokio::time::sleep(pause).await;
            let attempt = tokio::time::timeout(self.retry_period(), self.try_hold()).await;
            match attempt {
                Ok(Ok(true)) => {
                    last_ok = tokio::time::Instant::now();
                    pause = self.config.duration / 3;
                }
                Ok(Ok(false)) => {
                    warn!("another replica took the lease");
                    return;
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.retry_period()),
                    };
                    warn!(error = %why, "renewing the lease failed; retrying");
                    if last_ok.elapsed() >= deadline {
                        return;
                    }
                    pause = self.retry_period() / 2;
                }
            }
        }
    }

    /// Gives the Lease up so a successor need not wait for it to expire.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(&self.config.identity) {
                spec.holder_identity = None;
                spec.renew_time = None;
                if let Err(e) = self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
                {
                    warn!(error = %e, "could not release the lease");
                }
            }
        }
    }

    /// One attempt to take or renew the Lease; Ok(false) when someone else holds it.
    async fn try_hold(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.config.name).await?;
        let claim = claim(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.config.identity,
            now,
        );
        if claim == Claim::Wait {
            return Ok(false);
        }
        let duration = i32::try_from(self.config.duration.as_secs()).unwrap_or(15);
        let pp = PostParams::default();
        let result = match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, now, duration)),
                };
                self.api.create(&pp, &lease).await
            }
            Some(mut lease) => {
                let previous = lease.spec.take();
                lease.spec =
                    Some(self.spec(previous.filter(|_| claim == Claim::Renew), now, duration));
                self.api.replace(&self.config.name, &pp, &lease).await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // Someone else wrote the Lease between our read and write.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, renewing: Option<LeaseSpec>, now: Timestamp, duration: i32) -> LeaseSpec {
        let acquire_time = renewing
            .as_ref()
            .and_then(|s| s.acquire_time.clone())
            .unwrap_or(MicroTime(now));
        let transitions = renewing
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(acquire_time),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if renewing.is_some() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).expect("valid"))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn claims() {
        let now = Timestamp::from_second(100).expect("valid");
        assert_eq!(claim(None, "me", now), Claim::Take);
        assert_eq!(claim(Some(&lease("me", 99)), "me", now), Claim::Renew);
        assert_eq!(claim(Some(&lease("other", 90)), "me", now), Claim::Wait);
        assert_eq!(claim(Some(&lease("other", 80)), "me", now), Claim::Take);
        assert_eq!(claim(Some(&lease("", 99)), "me", now), Claim::Take);
    }
}
