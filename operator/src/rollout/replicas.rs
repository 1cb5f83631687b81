//! How many pods each revision runs for a canary weight.
//!
//! With routed traffic (HTTPRoutes, the mesh) the weight is set on the
//! routes: stable keeps every pod, so that an abort moves all traffic back
//! at once, and the canary runs its share (at least one, to be analysed
//! before it gets traffic). Without routing the weight *is* the share of
//! pods behind the Service: each revision runs its share rounded up, so
//! stable never drops below its share of traffic and the canary surges
//! above `spec.replicas` by at most one pod, as Argo Rollouts' `maxSurge`
//! does.

/// `replicas × percent / 100`, rounded up.
pub fn share(replicas: i32, percent: i32) -> i32 {
    let r = i64::from(replicas.max(0));
    let p = i64::from(percent.clamp(0, 100));
    i32::try_from((r * p + 99) / 100).unwrap_or(i32::MAX)
}

/// Pods of the canary at `weight`; `scale` is a `setCanaryScale` override.
pub fn canary(replicas: i32, weight: i32, routed: bool, scale: Option<i32>) -> i32 {
    match scale {
        Some(n) => n.max(0),
        None if routed => share(replicas, weight).max(1),
        None => share(replicas, weight),
    }
}

/// Pods of the stable revision while a canary runs at `weight`.
pub fn stable(replicas: i32, weight: i32, routed: bool) -> i32 {
    if routed {
        replicas.max(0)
    } else {
        share(replicas, 100 - weight.clamp(0, 100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ten_replicas_at_twenty_percent_run_two_canary_pods_beside_eight_stable() {
        assert_eq!(canary(10, 20, false, None), 2);
        assert_eq!(stable(10, 20, false), 8);
    }

    #[test]
    fn one_replica_at_twenty_percent_keeps_its_stable_pod_and_surges_the_canary() {
        assert_eq!(stable(1, 20, false), 1);
        assert_eq!(canary(1, 20, false, None), 1);
    }

    #[test]
    fn routed_traffic_keeps_every_stable_pod_and_one_canary_pod_at_weight_zero() {
        assert_eq!(stable(4, 50, true), 4);
        assert_eq!(canary(4, 0, true, None), 1);
        assert_eq!(canary(4, 0, true, Some(3)), 3);
    }

    proptest! {
        /// Without routing, every weight of every replica count has pods
        /// enough: stable at least its share, the canary at least its
        /// share, at most one pod above `spec.replicas`.
        #[test]
        fn each_revision_runs_at_least_its_share(replicas in 0i32..200, weight in 0i32..=100) {
            let (c, s) = (canary(replicas, weight, false, None), stable(replicas, weight, false));
            let r = i64::from(replicas);
            prop_assert!(i64::from(s) * 100 >= r * i64::from(100 - weight));
            prop_assert!(i64::from(c) * 100 >= r * i64::from(weight));
            prop_assert!(c + s >= replicas);
            prop_assert!(c + s <= replicas + 1);
            if weight < 100 && replicas > 0 {
                prop_assert!(s >= 1, "stable went to zero before promotion");
            }
        }

        /// Routed: stable never gives up a pod, the canary always has one.
        #[test]
        fn routed_stable_keeps_every_pod(replicas in 0i32..200, weight in 0i32..=100) {
            prop_assert_eq!(stable(replicas, weight, true), replicas);
            prop_assert!(canary(replicas, weight, true, None) >= 1);
        }

        /// Nothing overflows or goes negative, whatever passed admission.
        #[test]
        fn any_input_is_in_range(replicas in any::<i32>(), weight in any::<i32>(), scale in any::<Option<i32>>()) {
            prop_assert!(canary(replicas, weight, false, scale) >= 0);
            prop_assert!(stable(replicas, weight, false) >= 0);
            prop_assert!(share(replicas, weight) >= 0);
        }
    }
}
