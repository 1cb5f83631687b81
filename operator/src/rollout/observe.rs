//! Reading a Rollout's world: its ReplicaSets, its stable and canary
//! Services, the HTTPRoutes its weights go to, and the analysis due now.
//! [`invalid`] and [`evaluation_due`] are pure, over what was read.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use sluice_crds::Rollout;
use sluice_crds::rollout::{AnalysisSpec, RolloutReason, RolloutSpec};

use super::analysis::{self, measure::Subject};
use super::canary_routes::{CANARY_ROUTES_LABEL, invalid_regex};
use super::model::{AnalysisRun, Evaluation, Invalid, secs};
use super::phase::{analysis_in_force, analysis_since};
use super::{Context, Error, HASH_LABEL, duration};
use crate::stored::SERVICE_NAME_LABEL;

/// What one reconcile read.
#[derive(Debug, Default)]
pub struct World {
    /// The Rollout's ReplicaSets.
    pub owned: Vec<ReplicaSet>,
    /// Ready pods per revision hash (of ReplicaSets whose status is
    /// current); with routed traffic, a canary's pods count once they are
    /// ready endpoints of `canaryService` too, so that weight never goes to
    /// a Service whose endpoints the proxies have not got yet.
    pub ready: BTreeMap<String, i32>,
    /// The stable and canary Services that exist, by name.
    pub services: BTreeMap<String, Service>,
    /// The HTTPRoutes of `trafficRouting` that exist, by name.
    pub routes: BTreeMap<String, HttpRoute>,
    /// The operator's companion routes of this Rollout's header and mirror
    /// routes.
    pub companions: Vec<String>,
    /// The Deployment of `workloadRef`, if there is one and it exists.
    pub workload: Option<Deployment>,
    /// With `workloadRef`: every pinned Service selects a revision.
    pub services_pinned: bool,
    /// With `workloadRef`: endpoints of the pinned Services that are not
    /// the Rollout's pods.
    pub foreign_endpoints: usize,
}

/// Reads the world of `rollout` in `ns`: ReplicaSets, Services and routes
/// from the caches; endpoints from the API, and only while a canary has
/// ready pods (the one read that must be current, and the only one not
/// cached for every Rollout).
pub async fn world(rollout: &Rollout, ns: &str, ctx: &Context) -> Result<World, Error> {
    let client = &ctx.client;
    let name = rollout.name_any();
    let owned = ctx.replicasets.of(ns, &name);
    let ready = ready_of(&owned);
    let canary = &rollout.spec.strategy.canary;
    let stable = rollout
        .status
        .as_ref()
        .and_then(|s| s.stable_revision.as_deref());
    let canary_ready = ready
        .iter()
        .any(|(hash, n)| *n > 0 && Some(hash.as_str()) != stable);
    let ready = match (&canary.traffic_routing, &canary.canary_service) {
        (Some(_), Some(svc)) if canary_ready => {
            let prefix = format!("{name}-");
            let serving: BTreeMap<String, i32> = serving(client, ns, svc)
                .await?
                .into_iter()
                .filter_map(|(rs, n)| Some((rs.strip_prefix(&prefix)?.to_owned(), n)))
                .collect();
            ready
                .into_iter()
                .map(|(hash, n)| {
                    let n = if Some(hash.as_str()) == stable {
                        n
                    } else {
                        n.min(serving.get(&hash).copied().unwrap_or(0))
                    };
                    (hash, n)
                })
                .collect()
        }
        _ => ready,
    };
    let services = services_of(&rollout.spec)
        .into_iter()
        .filter_map(|(_, svc)| Some((svc.to_owned(), (*ctx.world.service(ns, svc)?).clone())))
        .collect();
    let mut routes = BTreeMap::new();
    let mut companions = Vec::new();
    if let Some(tr) = &canary.traffic_routing
        && !tr.http_routes.is_empty()
    {
        for r in &tr.http_routes {
            if let Some(route) = ctx.world.route(ns, &r.name) {
                routes.insert(r.name.clone(), (*route).clone());
            }
        }
        if may_have_companions(rollout) {
            companions = ctx.world.routes_labelled(ns, CANARY_ROUTES_LABEL, &name);
        }
    }
    let mut world = World {
        owned,
        ready,
        services,
        routes,
        companions,
        ..Default::default()
    };
    if let Some(w) = &rollout.spec.workload_ref {
        world.workload = Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(&w.name)
            .await?;
        // Once the Deployment is at 0 the take-over is done: its endpoints
        // need no more reading.
        let serving = world
            .workload
            .as_ref()
            .and_then(|d| d.spec.as_ref()?.replicas)
            .is_none_or(|n| n > 0);
        if world.workload.is_some() && serving {
            take_over(client, ns, rollout, &mut world).await?;
        }
    }
    Ok(world)
}

/// Ready pods per revision hash, of the ReplicaSets whose status is
/// current (pods of an earlier spec of a ReplicaSet do not count).
fn ready_of(owned: &[ReplicaSet]) -> BTreeMap<String, i32> {
    owned
        .iter()
        .filter_map(|rs| {
            let hash = rs.labels().get(HASH_LABEL)?.clone();
            let status = rs.status.as_ref()?;
            let current = status.observed_generation == rs.metadata.generation;
            let ready = status.ready_replicas.unwrap_or(0);
            Some((hash, if current { ready } else { 0 }))
        })
        .collect()
}

/// Whether every pinned Service selects a revision, and how many of their
/// endpoints are not the Rollout's pods (the Deployment's, being taken
/// over).
async fn take_over(
    client: &kube::Client,
    ns: &str,
    rollout: &Rollout,
    world: &mut World,
) -> Result<(), Error> {
    let ours: Vec<String> = world.owned.iter().map(ResourceExt::name_any).collect();
    let mut pinned = true;
    let mut foreign = 0;
    for (_, name) in services_of(&rollout.spec) {
        let selects_revision = world
            .services
            .get(name)
            .and_then(|s| s.spec.as_ref()?.selector.as_ref())
            .is_some_and(|s| s.contains_key(HASH_LABEL));
        pinned &= selects_revision;
        for (rs, n) in serving(client, ns, name).await? {
            if !ours.contains(&rs) {
                foreign += usize::try_from(n).unwrap_or(0);
            }
        }
    }
    world.services_pinned = pinned;
    world.foreign_endpoints = foreign;
    Ok(())
}

/// The Services the controller pins, each with the field that names it.
pub fn services_of(spec: &RolloutSpec) -> Vec<(&'static str, &str)> {
    if let Some(bg) = &spec.strategy.blue_green {
        let mut out = vec![(
            "spec.strategy.blueGreen.activeService",
            bg.active_service.as_str(),
        )];
        if let Some(p) = &bg.preview_service {
            out.push(("spec.strategy.blueGreen.previewService", p.as_str()));
        }
        return out;
    }
    let canary = &spec.strategy.canary;
    [
        ("spec.strategy.canary.stableService", &canary.stable_service),
        ("spec.strategy.canary.canaryService", &canary.canary_service),
    ]
    .into_iter()
    .filter_map(|(field, svc)| Some((field, svc.as_deref()?)))
    .collect()
}

/// Whether `rollout` can have companion routes: its steps set header or
/// mirror routes, or its status still names some (removed from the spec
/// since). Companions are deleted before the status stops naming their
/// routes, so the Rollouts that never used them are spared a list per
/// reconcile.
fn may_have_companions(rollout: &Rollout) -> bool {
    let uses = rollout
        .spec
        .strategy
        .canary
        .steps
        .iter()
        .any(|s| s.set_header_route.is_some() || s.set_mirror_route.is_some());
    uses || rollout
        .status
        .as_ref()
        .is_some_and(|s| !s.header_routes.is_empty() || !s.mirror_routes.is_empty())
}

/// Ready endpoints of Service `service` per ReplicaSet of their pods (a
/// ReplicaSet's pods are named `<replicaset>-<suffix>`; the Rollout's
/// ReplicaSets are `<rollout>-<hash>`).
async fn serving(
    client: &kube::Client,
    ns: &str,
    service: &str,
) -> Result<BTreeMap<String, i32>, Error> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list = slices
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={service}")))
        .await?;
    let mut out = BTreeMap::new();
    for e in list.items.iter().flat_map(|s| s.endpoints.iter().flatten()) {
        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
        let replicaset = e
            .target_ref
            .as_ref()
            .and_then(|t| t.name.as_deref())
            .and_then(|n| n.rsplit_once('-'))
            .map(|(rs, _)| rs.to_owned());
        if ready {
            *out.entry(replicaset.unwrap_or_default()).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// Whether `route` has a backendRef to Service `service`.
pub fn references(route: &HttpRoute, service: &str) -> bool {
    route
        .spec
        .rules
        .iter()
        .flatten()
        .flat_map(|r| r.backend_refs.iter().flatten())
        .any(|b| b.name == service && b.kind.as_deref().is_none_or(|k| k == "Service"))
}

/// What makes a Rollout that passed admission unable to run now, naming the
/// field or object: a missing Service, a header or mirror route's regex the
/// proxies would refuse, an HTTPRoute of `trafficRouting` that is gone or lost its
/// backendRef to either Service.
pub fn invalid(rollout: &Rollout, ns: &str, world: &World) -> Option<Invalid> {
    let canary = &rollout.spec.strategy.canary;
    let spec_error = |message: String| Invalid {
        reason: RolloutReason::InvalidSpec,
        message,
    };
    if let Some(w) = &rollout.spec.workload_ref
        && world.workload.is_none()
    {
        return Some(spec_error(format!(
            "spec.workloadRef.name: Deployment {ns}/{} does not exist",
            w.name
        )));
    }
    for (field, svc) in services_of(&rollout.spec) {
        if !world.services.contains_key(svc) {
            return Some(spec_error(format!(
                "{field}: Service {ns}/{svc} does not exist"
            )));
        }
    }
    if let Some(message) = invalid_regex(&canary.steps) {
        return Some(spec_error(message));
    }
    let tr = canary.traffic_routing.as_ref()?;
    let (Some(stable), Some(canary_svc)) = (&canary.stable_service, &canary.canary_service) else {
        return Some(spec_error(
            "spec.strategy.canary.trafficRouting needs both stableService and canaryService".into(),
        ));
    };
    for (i, r) in tr.http_routes.iter().enumerate() {
        let field = format!("spec.strategy.canary.trafficRouting.httpRoutes[{i}].name");
        let missing = |what: String| {
            Some(Invalid {
                reason: RolloutReason::TrafficRouteMissing,
                message: format!("{field}: HTTPRoute {ns}/{} {what}", r.name),
            })
        };
        let Some(route) = world.routes.get(&r.name) else {
            return missing("does not exist".into());
        };
        for svc in [stable, canary_svc] {
            if !references(route, svc) {
                return missing(format!("has no backendRef to Service {svc}"));
            }
        }
    }
    None
}

/// The analysis to evaluate now, if one is due: the current step's inline
/// one, else the background analysis, every `interval`; none once the
/// promotion has started (a full promotion skips the analysis).
pub fn evaluation_due(
    rollout: &Rollout,
    hash: &str,
    now: i64,
) -> Option<(AnalysisRun, AnalysisSpec)> {
    let status = rollout.status.as_ref()?;
    if status.canary_revision.as_deref() != Some(hash)
        || status.aborted
        || status.stable_revision.as_deref() == Some(hash)
        || status.reason == Some(RolloutReason::Promoting)
    {
        return None;
    }
    let (run, spec) = analysis_in_force(&rollout.spec, status)?;
    let interval = duration(&spec.interval).unwrap_or(Duration::from_secs(5));
    let last = status
        .analysis
        .as_ref()
        .and_then(|a| secs(&a.evaluated_at))
        .unwrap_or(0);
    let every = i64::try_from(interval.as_secs().max(1)).unwrap_or(i64::MAX);
    (now.saturating_sub(last) >= every).then(|| (run, spec.clone()))
}

/// Evaluates analysis `run` of new revision `canary`: the built-in judge
/// or its templates' metrics. Templates that cannot run (missing, an
/// argument without value) hold the rollout as an invalid spec.
pub async fn analyse(
    ctx: &Context,
    rollout: &Rollout,
    ns: &str,
    canary: &str,
    (run, spec): (AnalysisRun, AnalysisSpec),
    now: i64,
) -> Result<Evaluation, Invalid> {
    let status = rollout.status.clone().unwrap_or_default();
    let since = analysis_since(&rollout.spec, &status);
    let subject = Subject {
        rollout,
        ns,
        canary,
        run,
        since,
        started: match run {
            AnalysisRun::Step(_) => secs(&status.step_start_time),
            _ => since,
        },
        now,
    };
    analysis::evaluate(ctx, &subject, &spec)
        .await
        .map_err(|e| Invalid {
            reason: RolloutReason::InvalidSpec,
            message: format!("{run} analysis: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::rollout::{HttpRouteRef, TrafficRouting};

    fn rollout() -> Rollout {
        let spec = serde_json::from_value(serde_json::json!({
            "selector": {}, "template": {}, "strategy": {"canary": {"steps": [{"setWeight": 20}]}}
        }))
        .expect("spec");
        let mut r = Rollout::new("web", spec);
        let c = &mut r.spec.strategy.canary;
        c.stable_service = Some("web-stable".into());
        c.canary_service = Some("web-canary".into());
        c.traffic_routing = Some(TrafficRouting {
            http_routes: vec![HttpRouteRef { name: "web".into() }],
            mesh: None,
        });
        r
    }

    fn route(backends: &[&str]) -> HttpRoute {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"rules": [{"backendRefs": backends.iter()
                .map(|b| serde_json::json!({"name": b, "port": 80})).collect::<Vec<_>>()}]}
        }))
        .expect("route")
    }

    fn world(routes: &[(&str, HttpRoute)]) -> World {
        World {
            services: ["web-stable", "web-canary"]
                .map(|s| (s.to_owned(), Service::default()))
                .into(),
            routes: routes
                .iter()
                .map(|(n, r)| ((*n).to_owned(), r.clone()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_deleted_route_makes_the_rollout_invalid_naming_it() {
        let why = invalid(&rollout(), "ns", &world(&[])).expect("invalid");
        assert_eq!(why.reason, RolloutReason::TrafficRouteMissing);
        assert!(
            why.message
                .contains("httpRoutes[0].name: HTTPRoute ns/web does not exist"),
            "{}",
            why.message
        );
    }

    #[test]
    fn a_route_without_the_canary_backend_is_invalid_too() {
        let w = world(&[("web", route(&["web-stable"]))]);
        let why = invalid(&rollout(), "ns", &w).expect("invalid");
        assert_eq!(why.reason, RolloutReason::TrafficRouteMissing);
        assert!(why.message.contains("no backendRef to Service web-canary"));
        let ok = world(&[("web", route(&["web-stable", "web-canary"]))]);
        assert_eq!(invalid(&rollout(), "ns", &ok), None);
    }

    #[test]
    fn a_missing_service_is_an_invalid_spec() {
        let mut w = world(&[("web", route(&["web-stable", "web-canary"]))]);
        w.services.remove("web-canary");
        let why = invalid(&rollout(), "ns", &w).expect("invalid");
        assert_eq!(why.reason, RolloutReason::InvalidSpec);
        assert!(
            why.message
                .starts_with("spec.strategy.canary.canaryService")
        );
    }
}
