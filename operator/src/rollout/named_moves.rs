//! Changes to what a Rollout names, as Rollout reconciles: a Rollout whose
//! HTTPRoute (`trafficRouting.httpRoutes`) or Service (stable, canary,
//! active, preview) was deleted, recreated or edited is decided again at
//! once, instead of at its next requeue (up to 30 s while paused).

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{ObjectRef, Store};
use sluice_crds::Rollout;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::observe::services_of;
use crate::world::Moved;

/// Whether `rollout` names `moved` (routes and Services are named within
/// the Rollout's namespace).
pub fn names(rollout: &Rollout, moved: &Moved) -> bool {
    let in_namespace = |namespace: &Option<String>| rollout.metadata.namespace == *namespace;
    match moved {
        Moved::Route(route) => {
            in_namespace(&route.namespace)
                && rollout
                    .spec
                    .strategy
                    .canary
                    .traffic_routing
                    .as_ref()
                    .is_some_and(|t| t.http_routes.iter().any(|r| r.name == route.name))
        }
        Moved::Service(service) => {
            in_namespace(&service.namespace)
                && services_of(&rollout.spec)
                    .into_iter()
                    .any(|(_, name)| *name == service.name)
        }
    }
}

/// The Rollouts of `rollouts` to decide again for each of `moves`. A
/// receiver that fell behind skips what it lost: those Rollouts keep their
/// requeue.
pub fn rollouts_to_decide(
    moves: broadcast::Receiver<Moved>,
    rollouts: Store<Rollout>,
) -> impl Stream<Item = ObjectRef<Rollout>> + Send + 'static {
    BroadcastStream::new(moves)
        .filter_map(|moved| std::future::ready(moved.ok()))
        .flat_map(move |moved| {
            let naming: Vec<ObjectRef<Rollout>> = rollouts
                .state()
                .iter()
                .filter(|r| names(r, &moved))
                .map(|r| ObjectRef::from_obj(&**r))
                .collect();
            futures::stream::iter(naming)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::rollout::{BlueGreenStrategy, HttpRouteRef, TrafficRouting};

    fn rollout(ns: &str, routes: &[&str]) -> Rollout {
        let spec = serde_json::from_value(serde_json::json!({
            "selector": {}, "template": {}, "strategy": {"canary": {"steps": [{"setWeight": 20}]}}
        }))
        .expect("spec");
        let mut r = Rollout::new("web", spec);
        r.metadata.namespace = Some(ns.into());
        let c = &mut r.spec.strategy.canary;
        c.stable_service = Some("web-stable".into());
        c.canary_service = Some("web-canary".into());
        c.traffic_routing = Some(TrafficRouting {
            http_routes: routes
                .iter()
                .map(|n| HttpRouteRef { name: (*n).into() })
                .collect(),
            mesh: None,
        });
        r
    }

    fn route(ns: &str, name: &str) -> Moved {
        Moved::Route(ObjectRef::new(name).within(ns))
    }

    fn service(ns: &str, name: &str) -> Moved {
        Moved::Service(ObjectRef::new(name).within(ns))
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

    #[test]
    fn the_stable_and_canary_services_name_their_rollout_and_a_route_of_their_name_does_not() {
        let ro = rollout("shop", &["public"]);
        assert!(names(&ro, &service("shop", "web-stable")));
        assert!(names(&ro, &service("shop", "web-canary")));
        assert!(!names(&ro, &service("other", "web-stable")));
        assert!(!names(&ro, &service("shop", "public")));
        assert!(!names(&ro, &route("shop", "web-stable")));
    }

    #[test]
    fn a_blue_green_rollout_is_named_by_its_active_and_preview_services() {
        let mut ro = rollout("shop", &[]);
        ro.spec.strategy.blue_green = Some(BlueGreenStrategy {
            active_service: "web-active".into(),
            preview_service: Some("web-preview".into()),
            ..Default::default()
        });
        assert!(names(&ro, &service("shop", "web-active")));
        assert!(names(&ro, &service("shop", "web-preview")));
        assert!(!names(&ro, &service("shop", "web-stable")));
    }
}
