//! HTTPRoute changes as Rollout reconciles: a Rollout whose
//! `trafficRouting.httpRoutes` names a route that was deleted, recreated
//! or edited is decided again at once, instead of at its next requeue
//! (up to 30 s while paused).

use futures::{Stream, StreamExt};
use gateway_api::httproutes::HttpRoute;
use kube::runtime::reflector::{ObjectRef, Store};
use sluice_crds::Rollout;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

/// Whether `rollout` sends weights to the HTTPRoute `route` (routes are
/// named within the Rollout's namespace).
pub fn names(rollout: &Rollout, route: &ObjectRef<HttpRoute>) -> bool {
    rollout.metadata.namespace == route.namespace
        && rollout
            .spec
            .strategy
            .canary
            .traffic_routing
            .as_ref()
            .is_some_and(|t| t.http_routes.iter().any(|r| r.name == route.name))
}

/// The Rollouts of `rollouts` to decide again for each route in `moves`.
/// A receiver that fell behind skips what it lost: those Rollouts keep
/// their requeue.
pub fn rollouts_to_decide(
    moves: broadcast::Receiver<ObjectRef<HttpRoute>>,
    rollouts: Store<Rollout>,
) -> impl Stream<Item = ObjectRef<Rollout>> + Send + 'static {
    BroadcastStream::new(moves)
        .filter_map(|moved| std::future::ready(moved.ok()))
        .flat_map(move |route| {
            let naming: Vec<ObjectRef<Rollout>> = rollouts
                .state()
                .iter()
                .filter(|r| names(r, &route))
                .map(|r| ObjectRef::from_obj(&**r))
                .collect();
            futures::stream::iter(naming)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::rollout::{HttpRouteRef, TrafficRouting};

    fn rollout(ns: &str, routes: &[&str]) -> Rollout {
        let spec = serde_json::from_value(serde_json::json!({
            "selector": {}, "template": {}, "strategy": {"canary": {"steps": [{"setWeight": 20}]}}
        }))
        .expect("spec");
        let mut r = Rollout::new("web", spec);
        r.metadata.namespace = Some(ns.into());
        r.spec.strategy.canary.traffic_routing = Some(TrafficRouting {
            http_routes: routes
                .iter()
                .map(|n| HttpRouteRef { name: (*n).into() })
                .collect(),
            mesh: None,
        });
        r
    }

    fn route(ns: &str, name: &str) -> ObjectRef<HttpRoute> {
        ObjectRef::new(name).within(ns)
    }

    #[test]
    fn a_route_names_the_rollouts_of_its_namespace_that_list_it() {
        let ro = rollout("shop", &["public", "internal"]);
        assert!(names(&ro, &route("shop", "public")));
        assert!(names(&ro, &route("shop", "internal")));
    }

    #[test]
    fn a_route_of_the_same_name_elsewhere_or_unlisted_names_none() {
        let ro = rollout("shop", &["public"]);
        assert!(!names(&ro, &route("other", "public")));
        assert!(!names(&ro, &route("shop", "admin")));
    }

    #[test]
    fn a_rollout_without_traffic_routing_is_named_by_no_route() {
        let mut ro = rollout("shop", &["public"]);
        ro.spec.strategy.canary.traffic_routing = None;
        assert!(!names(&ro, &route("shop", "public")));
    }
}
