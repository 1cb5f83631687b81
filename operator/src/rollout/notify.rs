//! Webhook notifications of a rollout's decisions (each step, pause,
//! analysis failure, rollback and promotion: the Events it records), as
//! Flagger's event webhook and Argo Rollouts' notifications send them.
//!
//! Delivery never holds a reconcile: events go into a bounded queue and a
//! background task POSTs them, retrying with backoff. What is dropped (the
//! queue full) or given up (every attempt failed) is counted in
//! `sluice_notifications_total{result}`, never retried forever.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sluice_crds::Rollout;
use sluice_crds::rollout::{RolloutStatus, Weights};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use super::model::Event;
use crate::metrics::Metrics;

/// Events waiting for delivery at most: beyond, new ones are dropped.
const QUEUE: usize = 1024;
/// Deliveries in flight at once.
const CONCURRENT: usize = 16;
/// Attempts per delivery, the first included.
const ATTEMPTS: u32 = 4;
/// The wait before the first retry; doubled for each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The JSON body POSTed for each event.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The Rollout's name.
    pub rollout: String,
    /// Its namespace.
    pub namespace: String,
    /// The event's reason (`StepAdvanced`, `AnalysisFailed`, ...).
    pub reason: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// What happened, in a sentence.
    pub message: String,
    /// The Rollout's phase after the decision.
    pub phase: Option<String>,
    /// Its step, e.g. `2/4`.
    pub step: Option<String>,
    /// The weights after the decision.
    pub weights: Option<Weights>,
    /// The stable revision's hash.
    pub stable_revision: Option<String>,
    /// The new revision's hash.
    pub canary_revision: Option<String>,
    /// When (RFC 3339).
    pub time: String,
}

impl Notification {
    /// The notification of `e`, decided for `rollout` with status `st`.
    pub fn of(rollout: &Rollout, st: &RolloutStatus, e: &Event, now: i64) -> Notification {
        Notification {
            rollout: rollout.metadata.name.clone().unwrap_or_default(),
            namespace: rollout.metadata.namespace.clone().unwrap_or_default(),
            reason: e.reason.to_owned(),
            type_: if e.warning { "Warning" } else { "Normal" },
            message: e.note.clone(),
            phase: st.phase.map(|p| format!("{p:?}")),
            step: st.step.clone(),
            weights: st.weights.clone(),
            stable_revision: st.stable_revision.clone(),
            canary_revision: st.canary_revision.clone(),
            time: super::model::time(now).0.to_string(),
        }
    }
}

struct Delivery {
    url: String,
    body: Arc<Notification>,
}

/// Where a rollout's events go: the cluster's default webhooks (the
/// operator's `--notify-webhook`) and those its spec names.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Delivery>,
    defaults: Arc<[String]>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Starts the delivery task; `defaults` receive every Rollout's events.
    pub fn start(defaults: Vec<String>, metrics: Arc<Metrics>) -> Notifier {
        let (tx, rx) = mpsc::channel(QUEUE);
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .unwrap_or_default();
        tokio::spawn(deliver_all(rx, http, metrics.clone()));
        Notifier {
            tx,
            defaults: defaults.into(),
            metrics,
        }
    }

    /// Queues `events` of `rollout` (status `st` after the decision) for
    /// every webhook that wants them.
    pub fn notify(&self, rollout: &Rollout, st: &RolloutStatus, events: &[Event], now: i64) {
        let spec = rollout.spec.notifications.as_ref();
        for e in events {
            let body = Arc::new(Notification::of(rollout, st, e, now));
            let named = spec
                .into_iter()
                .flat_map(|n| &n.webhooks)
                .filter(|w| w.reasons.is_empty() || w.reasons.iter().any(|r| r == e.reason))
                .map(|w| w.url.clone());
            for url in self.defaults.iter().cloned().chain(named) {
                let d = Delivery {
                    url,
                    body: body.clone(),
                };
                if self.tx.try_send(d).is_err() {
                    self.metrics.notification("dropped");
                }
            }
        }
    }
}

async fn deliver_all(
    mut rx: mpsc::Receiver<Delivery>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    while let Some(d) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (http, metrics) = (http.clone(), metrics.clone());
        tokio::spawn(async move {
            let result = if deliver(&http, &d).await {
                "sent"
            } else {
                "failed"
            };
            metrics.notification(result);
            drop(slot);
        });
    }
}

/// POSTs `d`, retrying with backoff; whether it was taken (a 2xx).
async fn deliver(http: &reqwest::Client, d: &Delivery) -> bool {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match http.post(&d.url).json(&*d.body).send().await {
            Ok(r) if r.status().is_success() => {
                debug!(url = d.url, reason = d.body.reason, "notification sent");
                return true;
            }
            Ok(r) => warn!(url = d.url, attempt, status = %r.status(), "notification refused"),
            Err(e) => warn!(url = d.url, attempt, "notification failed: {e}"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::RolloutPhase;

    #[test]
    fn a_notification_carries_the_decision_and_the_event() {
        let spec = serde_json::from_value(serde_json::json!({"strategy": {}})).expect("a spec");
        let mut rollout = Rollout::new("web", spec);
        rollout.metadata.namespace = Some("shop".into());
        let st = RolloutStatus {
            phase: Some(RolloutPhase::Degraded),
            step: Some("1/3".into()),
            weights: Some(Weights {
                stable: 100,
                canary: 0,
            }),
            canary_revision: Some("c4f3".into()),
            ..Default::default()
        };
        let e = Event {
            warning: true,
            reason: "AnalysisFailed",
            note: "metric error-rate failed".into(),
        };
        let n = Notification::of(&rollout, &st, &e, 0);
        let json = serde_json::to_value(&n).expect("serialises");
        assert_eq!(json["type"], "Warning");
        assert_eq!(json["reason"], "AnalysisFailed");
        assert_eq!(json["phase"], "Degraded");
        assert_eq!(json["weights"]["canary"], 0);
        assert_eq!(json["canaryRevision"], "c4f3");
        assert_eq!(json["time"], "1970-01-01T00:00:00Z");
    }
}
