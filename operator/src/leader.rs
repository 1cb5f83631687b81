//! Leader election on a `coordination.k8s.io` Lease, as client-go's: the
//! holder renews every few seconds; another replica takes over once the
//! lease has not been renewed for its duration. Only the leader runs the
//! writers (the Rollout controller, the status writer); every replica serves
//! proxies, the webhook and the dashboard. A leader that cannot renew within
//! the renew deadline exits, so that two replicas never both write. A leader
//! asked to stop ([`StepDown`], on SIGTERM) gives the lease up first, so that
//! a rolling update or a drained node hands over at once instead of after
//! the lease runs out.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

/// Where a replica is in stepping down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping,
    Done,
}

/// Asks the election to stop: a leader releases the lease, a candidate
/// stops asking for it.
#[derive(Debug, Clone)]
pub struct StepDown(watch::Sender<Phase>);

impl Default for StepDown {
    fn default() -> Self {
        StepDown(watch::channel(Phase::Running).0)
    }
}

impl StepDown {
    /// Asks, and waits at most `limit` for the lease to be released.
    pub async fn now(&self, limit: Duration) {
        let mut done = self.0.subscribe();
        self.0.send_replace(Phase::Stopping);
        let _ = tokio::time::timeout(limit, done.wait_for(|p| *p == Phase::Done)).await;
    }

    fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|p| *p != Phase::Running).await;
        }
    }

    fn done(&self) {
        self.0.send_replace(Phase::Done);
    }
}

/// How the lease is held.
#[derive(Debug, Clone)]
pub struct LeaderSettings {
    /// The operator's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica (its pod name).
    pub identity: String,
    /// A lease not renewed for this long may be taken over.
    pub lease_duration: Duration,
    /// The leader gives up (exits) when it could not renew for this long.
    pub renew_deadline: Duration,
    /// Set on the Lease when this creates it (removed with its owner).
    pub owner: Option<OwnerReference>,
}

/// What to do with the lease as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds it: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Its holder stopped renewing: take it over.
    TakeOver,
    /// Someone else holds it: wait.
    Wait,
}

/// The pure decision, from the lease's holder and last renewal.
pub fn decide(
    holder: Option<&str>,
    renewed: Option<Timestamp>,
    duration: Duration,
    me: &str,
    now: Timestamp,
) -> Step {
    match (holder, renewed) {
        (None, _) => Step::Create,
        (Some(h), _) if h == me => Step::Renew,
        (Some(_), Some(t)) if now.duration_since(t).as_secs_f64() > duration.as_secs_f64() => {
            Step::TakeOver
        }
        (Some(""), _) | (Some(_), None) => Step::TakeOver,
        _ => Step::Wait,
    }
}

fn spec(settings: &LeaderSettings, now: Timestamp, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(settings.lease_duration.as_secs() as i32),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// How long until a lease renewed at `renewed` for `duration` runs out.
fn until_expiry(renewed: Option<Timestamp>, duration: Duration, now: Timestamp) -> Duration {
    renewed.map_or(duration, |r| {
        let expiry = r.as_millisecond() + duration.as_millis() as i64;
        Duration::from_millis((expiry - now.as_millisecond()).max(0) as u64)
    })
}

/// What a round found.
enum Round {
    /// This replica holds the lease.
    Held,
    /// Another replica holds it; it expires in this long unless renewed.
    Elsewhere(Duration),
}

/// One round: whether we hold the lease afterwards, else when the
/// holder's lease runs out.
async fn round(api: &Api<Lease>, s: &LeaderSettings) -> Result<Round, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&s.name).await?;
    let (holder, renewed, transitions) = match &current {
        Some(l) => {
            let sp = l.spec.clone().unwrap_or_default();
            (
                Some(sp.holder_identity.unwrap_or_default()),
                sp.renew_time.map(|t| t.0),
                sp.lease_transitions.unwrap_or(0),
            )
        }
        None => (None, None, 0),
    };
    match decide(
        holder.as_deref(),
        renewed,
        s.lease_duration,
        &s.identity,
        now,
    ) {
        Step::Wait => Ok(Round::Elsewhere(until_expiry(
            renewed,
            s.lease_duration,
            now,
        ))),
        Step::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    owner_references: s.owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                spec: Some(spec(s, now, 0)),
            };
            api.create(&PostParams::default(), &lease).await?;
            Ok(Round::Held)
        }
        Step::Renew | Step::TakeOver => {
            let Some(mut lease) = current else {
                return Ok(Round::Elsewhere(Duration::ZERO));
            };
            let mut sp = lease.spec.clone().unwrap_or_default();
            if holder.as_deref() == Some(s.identity.as_str()) {
                sp.renew_time = Some(MicroTime(now));
                sp.lease_duration_seconds = Some(s.lease_duration.as_secs() as i32);
            } else {
                sp = spec(s, now, transitions + 1);
            }
            lease.spec = Some(sp);
            // resourceVersion makes this a compare-and-swap: a replica that
            // lost the race gets 409 and waits.
            api.replace(&s.name, &PostParams::default(), &lease).await?;
            Ok(Round::Held)
        }
    }
}

/// How long after a lease's expiry a candidate checks it again.
const EXPIRY_MARGIN: Duration = Duration::from_millis(50);

/// Gives the lease up if this replica holds it: another takes it over at
/// its next check.
async fn release(api: &Api<Lease>, s: &LeaderSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&s.name).await? else {
        return Ok(());
    };
    let mut sp = lease.spec.clone().unwrap_or_default();
    if sp.holder_identity.as_deref() != Some(s.identity.as_str()) {
        return Ok(());
    }
    sp.holder_identity = Some(String::new());
    sp.lease_duration_seconds = Some(1);
    lease.spec = Some(sp);
    api.replace(&s.name, &PostParams::default(), &lease).await?;
    info!(identity = %s.identity, "stepped down: lease released");
    Ok(())
}

/// Waits until this replica leads, then keeps renewing in the background
/// (exiting the process if it cannot) until `step_down` asks it to release
/// the lease. Returns whether it leads: `false` when asked to stop first.
pub async fn lead(client: Client, settings: LeaderSettings, step_down: StepDown) -> bool {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let retry = (settings.lease_duration / 5).max(Duration::from_millis(500));
    loop {
        // Check again at the retry period, or just after the holder's lease
        // runs out if that comes first: a dead leader is replaced within
        // the lease duration of its last renewal, not a retry period later.
        let wait = match round(&api, &settings).await {
            Ok(Round::Held) => break,
            Ok(Round::Elsewhere(left)) => retry.min(left + EXPIRY_MARGIN),
            Err(kube::Error::Api(e)) if e.code == 409 => retry,
            Err(e) => {
                warn!("leader election: {e}");
                retry
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = step_down.stopping() => {
                step_down.done();
                return false;
            }
        }
    }
    info!(identity = %settings.identity, lease = %settings.name, "leading: this replica reconciles and writes");
    tokio::spawn(async move {
        let mut last_ok = tokio::time::Instant::now();
        let every = (settings.renew_deadline / 3).max(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = step_down.stopping() => {
                    if let Err(e) = release(&api, &settings).await {
                        warn!("releasing the lease: {e}");
                    }
                    step_down.done();
                    return;
                }
            }
            match round(&api, &settings).await {
                Ok(Round::Held) => last_ok = tokio::time::Instant::now(),
                Ok(Round::Elsewhere(_)) => {
                    tracing::error!(
                        "leadership lost to another replica; exiting so that only one writes"
                    );
                    std::process::exit(1);
                }
                Err(e) => warn!("renewing the lease: {e}"),
            }
            if last_ok.elapsed() > settings.renew_deadline {
                tracing::error!(
                    "could not renew the lease within {:?}; exiting",
                    settings.renew_deadline
                );
                std::process::exit(1);
            }
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_decision() {
        let now: Timestamp = "2026-11-26T00:00:30Z".parse().expect("time");
        let fresh: Timestamp = "2026-11-26T00:00:25Z".parse().expect("time");
        let stale: Timestamp = "2026-11-26T00:00:10Z".parse().expect("time");
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, None, d, "a", now), Step::Create);
        assert_eq!(decide(Some("a"), Some(stale), d, "a", now), Step::Renew);
        assert_eq!(decide(Some("b"), Some(fresh), d, "a", now), Step::Wait);
        assert_eq!(decide(Some("b"), Some(stale), d, "a", now), Step::TakeOver);
        assert_eq!(decide(Some(""), Some(fresh), d, "a", now), Step::TakeOver);
        // A candidate looks again when the holder's lease runs out.
        assert_eq!(until_expiry(Some(fresh), d, now), Duration::from_secs(10));
        assert_eq!(until_expiry(Some(stale), d, now), Duration::ZERO);
        assert_eq!(until_expiry(None, d, now), d);
    }
}
