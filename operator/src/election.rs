//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas exactly one reconciles. A replica takes the lease when it is free, released, or has
//! not been renewed for its duration *as measured on this replica's clock* (as client-go does, so
//! clock skew between nodes does not matter); the leader renews it every retry period and stops
//! leading once it has not renewed for the renew deadline, which is shorter than the duration:
//! it stops before anyone else may start.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

/// Which lease, who this replica is, and the timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in the lease (its pod name).
    pub identity: String,
    /// How long a holder's claim lasts without a renewal.
    pub duration: Duration,
    /// A leader that has not renewed for this long stops leading.
    pub renew_deadline: Duration,
    /// How often the leader renews, and a standby replica tries.
    pub retry_period: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error(
        "the renew deadline ({renew:?}) must be shorter than the lease duration ({duration:?}): \
         a leader must stop before another replica may take over"
    )]
    DeadlineNotBeforeExpiry { renew: Duration, duration: Duration },
    #[error(
        "the retry period ({retry:?}) must be shorter than the renew deadline ({renew:?}), or \
         the leader gives up before its first renewal"
    )]
    RetryNotBeforeDeadline { retry: Duration, renew: Duration },
    #[error("the lease duration must be a whole number of seconds, at least 1 (got {0:?})")]
    Duration(Duration),
}

impl LeaseSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.duration.as_secs() == 0 || self.duration.subsec_nanos() != 0 {
            return Err(SettingsError::Duration(self.duration));
        }
        if self.renew_deadline >= self.duration {
            return Err(SettingsError::DeadlineNotBeforeExpiry {
                renew: self.renew_deadline,
                duration: self.duration,
            });
        }
        if self.retry_period >= self.renew_deadline {
            return Err(SettingsError::RetryNotBeforeDeadline {
                retry: self.retry_period,
                renew: self.renew_deadline,
            });
        }
        Ok(())
    }
}

/// What the lease, as read, allows this replica to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// There is no lease yet.
    Create,
    /// This replica holds it.
    Renew,
    /// Free: released, or its holder has not renewed it in time.
    TakeOver,
    /// Another replica holds it.
    Held { holder: String },
}

/// Decides from the lease's spec and how long this replica has seen it unchanged. The holder's
/// own duration counts (replicas may be configured differently), else `ours`.
pub fn verdict(spec: Option<&LeaseSpec>, identity: &str, unchanged_for: Duration, ours: Duration) -> Verdict {
    let Some(spec) = spec else {
        return Verdict::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Verdict::TakeOver;
    }
    if holder == identity {
        return Verdict::Renew;
    }
    let duration = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map_or(ours, |s| Duration::from_secs(s as u64));
    if unchanged_for >= duration {
        Verdict::TakeOver
    } else {
        Verdict::Held {
            holder: holder.to_owned(),
        }
    }
}

/// The lease's spec after this replica takes or renews it.
pub fn claimed(
    previous: Option<&LeaseSpec>,
    identity: &str,
    duration: Duration,
    now: MicroTime,
) -> LeaseSpec {
    let previous = previous.cloned().unwrap_or_default();
    let renewing = previous.holder_identity.as_deref() == Some(identity);
    let transitions = previous.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(duration.as_secs() as i32),
        acquire_time: match renewing {
            true => previous.acquire_time.or_else(|| Some(now.clone())),
            false => Some(now.clone()),
        },
        renew_time: Some(now),
        lease_transitions: Some(match (renewing, previous.holder_identity.is_some()) {
            (true, _) | (false, false) => transitions,
            (false, true) => transitions + 1,
        }),
        ..previous
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("lease {lease}: {source}")]
    Api {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("lost lease {lease}: {holder} holds it now")]
    Taken { lease: String, holder: String },
    #[error(
        "could not renew lease {lease} within {deadline:?}; stopped leading before another \
         replica may take over"
    )]
    Expired { lease: String, deadline: Duration },
}

/// The outcome of one attempt at the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Leading,
    Held {
        holder: String,
    },
    /// Another replica wrote the lease between our read and our write.
    Raced,
}

pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The lease's resourceVersion as last read, and since when this replica has seen it.
    seen: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Elector {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            seen: None,
        }
    }

    /// `namespace/name`, as logs and errors name the lease.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.name)
    }

    fn api_error(&self) -> impl FnOnce(kube::Error) -> ElectionError {
        let lease = self.lease();
        move |source| ElectionError::Api { lease, source }
    }

    /// One read and, when allowed, one write of the lease.
    pub async fn attempt(&mut self) -> Result<Attempt, ElectionError> {
        let settings = &self.settings;
        let current = self.api.get_opt(&settings.name).await.map_err(self.api_error())?;
        let version = current.as_ref().and_then(|l| l.metadata.resource_version.clone());
        let unchanged_for = match (&self.seen, &version) {
            (Some((seen, since)), Some(version)) if seen == version => since.elapsed(),
            _ => {
                self.seen = version.map(|v| (v, Instant::now()));
                Duration::ZERO
            }
        };
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let identity = &settings.identity;
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        // The read's resourceVersion goes along: a write after someone else's is refused (409).
        let metadata = match &current {
            Some(lease) => lease.metadata.clone(),
            None => ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
        };
        let lease = Lease {
            metadata,
            spec: Some(claimed(spec, identity, settings.duration, now)),
        };
        let written = match verdict(spec, identity, unchanged_for, settings.duration) {
            Verdict::Held { holder } => return Ok(Attempt::Held { holder }),
            Verdict::Create => self.api.create(&PostParams::default(), &lease).await,
            Verdict::Renew | Verdict::TakeOver => {
                self.api
                    .replace(&settings.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(response)) if response.code == 409 => Ok(Attempt::Raced),
            Err(error) => Err(self.api_error()(error)),
        }
    }

    /// Waits until this replica holds the lease; returns when it was last sure to (the start of
    /// the attempt that took it).
    pub async fn acquire(&mut self) -> Instant {
        let mut last_holder = None;
        loop {
            let started = Instant::now();
            match self.attempt().await {
                Ok(Attempt::Leading) => return started,
                Ok(Attempt::Held { holder }) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.lease(), %holder, "standing by: another replica leads");
                        last_holder = Some(holder);
                    }
                }
                Ok(Attempt::Raced) => {}
                Err(error) => tracing::warn!(%error, "cannot read or take the lease"),
            }
            tokio::time::sleep(self.settings.retry_period).await;
        }
    }

    /// Renews the lease every retry period while leading; returns why leadership ended. `since`
    /// is when the lease was last known to be held (as `acquire` returned it). A renewal counts
    /// from when it was sent, which is no later than when the API server stored it: the leader
    /// always stops before the lease could look expired to anyone else.
    pub async fn hold(&mut self, since: Instant) -> ElectionError {
        let mut renewed = since;
        loop {
            let deadline = renewed + self.settings.renew_deadline;
            let next = (Instant::now() + self.settings.retry_period).min(deadline);
            tokio::time::sleep_until(next).await;
            let started = Instant::now();
            match tokio::time::timeout_at(deadline, self.attempt()).await {
                Err(_) => {
                    return ElectionError::Expired {
                        lease: self.lease(),
                        deadline: self.settings.renew_deadline,
                    };
                }
                Ok(Ok(Attempt::Leading)) => renewed = started,
                Ok(Ok(Attempt::Held { holder })) => {
                    return ElectionError::Taken {
                        lease: self.lease(),
                        holder,
                    };
                }
                Ok(Ok(Attempt::Raced)) => {
                    tracing::warn!(lease = %self.lease(), "the lease changed under a renewal")
                }
                Ok(Err(error)) => tracing::warn!(%error, "cannot renew the lease"),
            }
        }
    }

    /// Gives the lease up, so that a standby replica takes over at once instead of after the
    /// lease duration. Only a lease this replica still holds is touched.
    pub async fn release(&mut self) -> Result<(), ElectionError> {
        let name = self.settings.name.clone();
        let Some(mut lease) = self.api.get_opt(&name).await.map_err(self.api_error())? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        self.api
            .replace(&name, &PostParams::default(), &lease)
            .await
            .map_err(self.api_error())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Duration = Duration::from_secs(15);

    fn spec(yaml: &str) -> LeaseSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn at(text: &str) -> MicroTime {
        MicroTime(text.parse().unwrap())
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(verdict(None, "a", Duration::ZERO, OURS), Verdict::Create);
    }

    #[test]
    fn the_holder_renews_and_a_released_lease_is_free() {
        let held = spec("{holderIdentity: a, leaseDurationSeconds: 15}");
        assert_eq!(verdict(Some(&held), "a", Duration::ZERO, OURS), Verdict::Renew);
        let released = spec("{leaseDurationSeconds: 1}");
        assert_eq!(
            verdict(Some(&released), "b", Duration::ZERO, OURS),
            Verdict::TakeOver
        );
        let emptied = spec("{holderIdentity: '', leaseDurationSeconds: 1}");
        assert_eq!(
            verdict(Some(&emptied), "b", Duration::ZERO, OURS),
            Verdict::TakeOver
        );
    }

    #[test]
    fn another_holder_keeps_it_for_its_own_duration_as_seen_here() {
        let held = spec("{holderIdentity: a, leaseDurationSeconds: 4}");
        let waits = Verdict::Held { holder: "a".into() };
        assert_eq!(verdict(Some(&held), "b", Duration::from_secs(3), OURS), waits);
        assert_eq!(
            verdict(Some(&held), "b", Duration::from_secs(4), OURS),
            Verdict::TakeOver
        );
        // Without a duration in the lease, this replica's own counts.
        let bare = spec("{holderIdentity: a}");
        assert_eq!(verdict(Some(&bare), "b", Duration::from_secs(14), OURS), waits);
        assert_eq!(
            verdict(Some(&bare), "b", Duration::from_secs(15), OURS),
            Verdict::TakeOver
        );
    }

    #[test]
    fn claiming_counts_transitions_and_keeps_the_acquire_time_while_renewing() {
        let now = at("2026-11-23T10:00:05Z");
        let created = claimed(None, "a", OURS, now.clone());
        assert_eq!(created.holder_identity.as_deref(), Some("a"));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.acquire_time, Some(now.clone()));

        let held = spec(
            "{holderIdentity: a, leaseDurationSeconds: 15, leaseTransitions: 2, \
             acquireTime: '2026-11-23T10:00:00.000000Z', renewTime: '2026-11-23T10:00:03.000000Z'}",
        );
        let renewed = claimed(Some(&held), "a", OURS, now.clone());
        assert_eq!(renewed.lease_transitions, Some(2));
        assert_eq!(renewed.acquire_time, Some(at("2026-11-23T10:00:00Z")));
        assert_eq!(renewed.renew_time, Some(now.clone()));

        let taken = claimed(Some(&held), "b", Duration::from_secs(4), now.clone());
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.acquire_time, Some(now));
        assert_eq!(taken.lease_duration_seconds, Some(4));
    }

    #[test]
    fn settings_must_let_the_leader_stop_before_the_lease_expires() {
        let good = LeaseSettings {
            namespace: "ops".into(),
            name: "cairn-operator".into(),
            identity: "a".into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        assert_eq!(good.validate(), Ok(()));
        let late = LeaseSettings {
            renew_deadline: Duration::from_secs(15),
            ..good.clone()
        };
        assert!(matches!(
            late.validate(),
            Err(SettingsError::DeadlineNotBeforeExpiry { .. })
        ));
        let slow = LeaseSettings {
            retry_period: Duration::from_secs(10),
            ..good.clone()
        };
        assert!(matches!(
            slow.validate(),
            Err(SettingsError::RetryNotBeforeDeadline { .. })
        ));
        let fractional = LeaseSettings {
            duration: Duration::from_millis(1500),
            renew_deadline: Duration::from_secs(1),
            retry_period: Duration::from_millis(200),
            ..good
        };
        assert!(matches!(fractional.validate(), Err(SettingsError::Duration(_))));
    }
}
