//! Rollouts of an existing Deployment (`spec.workloadRef`), as Argo
//! Rollouts' `workloadRef` and Flagger's `targetRef` do it, without renamed
//! clones: the Rollout runs the Deployment's selector and pod template as
//! its own (a change to the Deployment's template is a new revision), and
//! takes the traffic over with no gap. The Deployment keeps serving until
//! the Rollout's stable pods are all ready; then the Services are pinned to
//! them; only once no pinned Service has an endpoint outside the Rollout's
//! pods is the Deployment scaled to 0.

use k8s_openapi::api::apps::v1::Deployment;
use sluice_crds::Rollout;

/// The label the operator puts on an adopted Deployment (its value is the
/// Rollout's name), so that the controller watches only those.
pub const WORKLOAD_LABEL: &str = "sluice.dev/workload-of";

/// The Rollout as the controller runs it: the Deployment's selector and
/// template in place of its own (which admission keeps empty).
pub fn effective(rollout: &Rollout, deployment: &Deployment) -> Rollout {
    let mut ro = rollout.clone();
    if let Some(spec) = &deployment.spec {
        ro.spec.selector = spec.selector.clone();
        ro.spec.template = spec.template.clone();
    }
    ro
}

/// Where taking over from the Deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// The Rollout's stable pods are not all ready: the Deployment keeps
    /// serving and the Services are left as they are.
    Waiting,
    /// The Services are pinned (or being pinned) to the Rollout's pods; some
    /// still has an endpoint of the Deployment's.
    Draining,
    /// No pinned Service reaches the Deployment's pods: scale it to 0.
    ScaleDown,
    /// The Deployment is at 0: the Rollout runs everything.
    Done,
}

/// What an observation says about the take-over.
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    /// The Deployment's `spec.replicas`.
    pub deployment_replicas: i32,
    /// Ready pods of the Rollout's stable revision.
    pub stable_ready: i32,
    /// `spec.replicas` of the Rollout.
    pub replicas: i32,
    /// Every pinned Service selected only the Rollout's revisions when read.
    pub services_pinned: bool,
    /// Endpoints of those Services that are not the Rollout's pods.
    pub foreign_endpoints: usize,
}

/// The step of the take-over for `o`.
pub fn adoption(o: Observed) -> Adoption {
    if o.deployment_replicas == 0 {
        Adoption::Done
    } else if o.stable_ready < o.replicas.max(1) && !o.services_pinned {
        Adoption::Waiting
    } else if !o.services_pinned || o.foreign_endpoints > 0 {
        Adoption::Draining
    } else {
        Adoption::ScaleDown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(stable_ready: i32, pinned: bool, foreign: usize) -> Observed {
        Observed {
            deployment_replicas: 2,
            stable_ready,
            replicas: 2,
            services_pinned: pinned,
            foreign_endpoints: foreign,
        }
    }

    #[test]
    fn the_deployment_serves_until_the_rollouts_stable_pods_are_all_ready() {
        assert_eq!(adoption(observed(0, false, 2)), Adoption::Waiting);
        assert_eq!(adoption(observed(1, false, 2)), Adoption::Waiting);
        assert_eq!(adoption(observed(2, false, 2)), Adoption::Draining);
    }

    #[test]
    fn the_deployment_is_scaled_down_only_once_no_service_reaches_its_pods() {
        assert_eq!(adoption(observed(2, true, 1)), Adoption::Draining);
        assert_eq!(adoption(observed(2, true, 0)), Adoption::ScaleDown);
    }

    #[test]
    fn pinned_services_stay_pinned_when_a_stable_pod_restarts() {
        // Unpinning would send traffic back to a Deployment about to go.
        assert_eq!(adoption(observed(1, true, 0)), Adoption::ScaleDown);
    }

    #[test]
    fn a_deployment_at_zero_is_adopted() {
        let o = Observed {
            deployment_replicas: 0,
            ..observed(0, false, 0)
        };
        assert_eq!(adoption(o), Adoption::Done);
    }

    #[test]
    fn the_deployments_template_and_selector_are_the_rollouts() {
        let rollout: Rollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web"},
            "spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "strategy": {"canary": {"steps": [{"setWeight": 20}]}}}
        }))
        .expect("rollout");
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": "demo:blue"}]}}}
        }))
        .expect("deployment");
        let ro = effective(&rollout, &deployment);
        assert_eq!(
            ro.spec
                .selector
                .match_labels
                .as_ref()
                .and_then(|l| l.get("app")),
            Some(&"web".to_owned())
        );
        let image = ro
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone());
        assert_eq!(image.as_deref(), Some("demo:blue"));
    }
}
