//! Observing a Rollout's world and applying a [`Decision`] to it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use sluice_crds::Rollout;
use sluice_crds::rollout::{AnalysisSpec, RolloutPhase};
use tracing::info;

use super::analysis::evaluate;
use super::duration;
use super::steps::{Decision, Evaluation, Observed, Request, decide, secs};
use super::{Context, Error, HASH_LABEL, REQUEST_ANNOTATION, ROLLOUT_LABEL, template_hash};
use crate::mesh::Cond;
use crate::status::{FIELD_MANAGER, apply_status, to_conditions};

fn http_routes(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "gateway.networking.k8s.io",
            "v1",
            "HTTPRoute",
        )),
    )
}

/// Observe, decide, apply.
pub async fn reconcile(rollout: &Rollout, ns: &str, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let name = rollout.name_any();
    let spec = &rollout.spec;
    let status = rollout.status.clone().unwrap_or_default();
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let owned: Vec<ReplicaSet> = rs_api
        .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={name}")))
        .await?
        .items;
    let ready: BTreeMap<String, i32> = owned
        .iter()
        .filter_map(|rs| {
            let hash = rs.labels().get(HASH_LABEL)?.clone();
            // Pods of an earlier spec of this ReplicaSet do not count.
            let current = rs.status.as_ref()?.observed_generation == rs.metadata.generation;
            let ready = rs.status.as_ref()?.ready_replicas.unwrap_or(0);
            Some((hash, if current { ready } else { 0 }))
        })
        .collect();
    let hash = template_hash(&spec.template);
    let services = fetch_services(rollout, ns, ctx).await?;
    let invalid = validate(rollout, ns, ctx, &services).await?;
    let request = rollout
        .annotations()
        .get(REQUEST_ANNOTATION)
        .and_then(|v| Request::parse(v));
    let now = jiff_now();
    let evaluation =
        evaluation_due(rollout, &hash, now).map(|a| analyse(ctx, ns, &status, &hash, &a, now));
    let observed = Observed {
        spec,
        status: &status,
        generation: rollout.metadata.generation.unwrap_or(0),
        template_hash: hash.clone(),
        ready: &ready,
        request,
        evaluation,
        invalid,
        now,
    };
    let decision = decide(&observed);

    // Traffic first: on a rollback the canary loses its weight before
    // anything else happens.
    apply_weights(rollout, ns, ctx, &services, &decision).await?;
    apply_replicasets(rollout, ns, ctx, &owned, &hash, &decision).await?;
    apply_services(rollout, ns, ctx, &services, &decision).await?;
    write_status(rollout, ns, ctx, &decision, &ready).await?;
    for e in &decision.events {
        info!(reason = e.reason, "{}", e.note);
        let event = KubeEvent {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.into(),
            note: Some(e.note.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        // An event that cannot be written must not stop the rollout.
        if let Err(err) = ctx.recorder.publish(&event, &rollout.object_ref(&())).await {
            tracing::warn!("recording event {}: {err}", e.reason);
        }
    }
    // Handled, or not understood: either way it has been seen.
    if rollout.annotations().contains_key(REQUEST_ANNOTATION) {
        let api: Api<Rollout> = Api::namespaced(client.clone(), ns);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {REQUEST_ANNOTATION: null}}})),
        )
        .await?;
    }
    Ok(Action::requeue(
        decision.requeue.max(Duration::from_millis(500)),
    ))
}

fn jiff_now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

/// The analysis to evaluate now, if one is due: the background analysis,
/// or the current step's inline one, every `interval`.
fn evaluation_due(rollout: &Rollout, hash: &str, now: i64) -> Option<AnalysisSpec> {
    let status = rollout.status.as_ref()?;
    let canary = &rollout.spec.strategy.canary;
    if status.canary_revision.as_deref() != Some(hash)
        || status.aborted
        || status.stable_revision.as_deref() == Some(hash)
    {
        return None;
    }
    let step = status
        .current_step_index
        .and_then(|i| canary.steps.get(usize::try_from(i).ok()?))
        .and_then(|s| s.analysis.clone());
    let spec = step.or_else(|| canary.analysis.clone())?;
    let interval = duration(&spec.interval).unwrap_or(Duration::from_secs(5));
    let last = status
        .analysis
        .as_ref()
        .and_then(|a| secs(&a.evaluated_at))
        .unwrap_or(0);
    (now - last >= interval.as_secs().max(1) as i64).then_some(spec)
}

fn analyse(
    ctx: &Context,
    ns: &str,
    status: &sluice_crds::RolloutStatus,
    canary: &str,
    spec: &AnalysisSpec,
    now: i64,
) -> Evaluation {
    let window = duration(&spec.window).unwrap_or(Duration::from_secs(30));
    // Only what the canary did since it started counts.
    let since_start = status
        .canary_start_time
        .as_ref()
        .map(|t| Duration::from_secs((now - t.0.as_second()).max(1) as u64))
        .unwrap_or(window);
    let window = window.min(since_start + Duration::from_secs(1));
    let stable = status.stable_revision.clone().unwrap_or_default();
    let totals = ctx.traffic.sum(
        window,
        |k| k.namespace == ns && (k.revision == canary || k.revision == stable),
        |k| k.revision == canary,
    );
    let bounds = ctx.traffic.bounds_ms();
    let c = totals.get(&true).cloned().unwrap_or_default();
    let s = totals.get(&false).cloned().unwrap_or_default();
    let p99 = c.quantile_ms(0.99, &bounds);
    evaluate(spec, &c, &s, p99, now)
}

/// The Rollout's stable and canary Services that exist, by name: read
/// once per reconcile, for validation, ports and selectors.
type Services = BTreeMap<String, Service>;

async fn fetch_services(rollout: &Rollout, ns: &str, ctx: &Context) -> Result<Services, Error> {
    let canary = &rollout.spec.strategy.canary;
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let mut out = Services::new();
    for name in [&canary.stable_service, &canary.canary_service]
        .into_iter()
        .flatten()
    {
        if let Some(svc) = api.get_opt(name).await? {
            out.insert(name.clone(), svc);
        }
    }
    Ok(out)
}

/// What makes a Rollout that passed the schema unable to run.
async fn validate(
    rollout: &Rollout,
    ns: &str,
    ctx: &Context,
    services: &Services,
) -> Result<Option<String>, Error> {
    let canary = &rollout.spec.strategy.canary;
    for (field, svc) in [
        ("spec.strategy.canary.stableService", &canary.stable_service),
        ("spec.strategy.canary.canaryService", &canary.canary_service),
    ] {
        if let Some(svc) = svc
            && !services.contains_key(svc)
        {
            return Ok(Some(format!("{field}: Service {ns}/{svc} does not exist")));
        }
    }
    if let Some(tr) = &canary.traffic_routing {
        if canary.stable_service.is_none() || canary.canary_service.is_none() {
            return Ok(Some(
                "spec.strategy.canary.trafficRouting needs both stableService and canaryService"
                    .into(),
            ));
        }
        let routes = http_routes(&ctx.client, ns);
        for (i, r) in tr.http_routes.iter().enumerate() {
            if routes.get_opt(&r.name).await?.is_none() {
                return Ok(Some(format!(
                    "spec.strategy.canary.trafficRouting.httpRoutes[{i}].name: HTTPRoute {ns}/{} does not exist",
                    r.name
                )));
            }
        }
    }
    Ok(None)
}

/// Sets the stable and canary backendRefs' weights in every routed
/// HTTPRoute, and keeps the mesh route of `trafficRouting.mesh`.
async fn apply_weights(
    rollout: &Rollout,
    ns: &str,
    ctx: &Context,
    services: &Services,
    d: &Decision,
) -> Result<(), Error> {
    let canary = &rollout.spec.strategy.canary;
    let (Some(tr), Some(stable), Some(canary_svc)) = (
        &canary.traffic_routing,
        &canary.stable_service,
        &canary.canary_service,
    ) else {
        return Ok(());
    };
    let w = d.canary_weight.clamp(0, 100);
    let routes = http_routes(&ctx.client, ns);
    for r in &tr.http_routes {
        let Some(route) = routes.get_opt(&r.name).await? else {
            continue;
        };
        let mut rules = route.data["spec"]["rules"].clone();
        let mut changed = false;
        for rule in rules.as_array_mut().into_iter().flatten() {
            for b in rule["backendRefs"].as_array_mut().into_iter().flatten() {
                let want = match b["name"].as_str() {
                    Some(n) if n == stable => 100 - w,
                    Some(n) if n == canary_svc => w,
                    _ => continue,
                };
                if b["weight"].as_i64() != Some(i64::from(want)) {
                    b["weight"] = json!(want);
                    changed = true;
                }
            }
        }
        if changed {
            routes
                .patch(
                    &r.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"rules": rules}})),
                )
                .await?;
        }
    }
    if let Some(mesh) = &tr.mesh {
        let service = mesh.service.clone().unwrap_or_else(|| stable.clone());
        let name = format!("{}-mesh", rollout.name_any());
        let owner = rollout.controller_owner_ref(&()).map(|o| vec![o]);
        let body = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns, "ownerReferences": owner},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": service}],
                "rules": [{"backendRefs": [
                    {"name": stable, "port": service_port(services, stable), "weight": 100 - w},
                    {"name": canary_svc, "port": service_port(services, canary_svc), "weight": w},
                ]}],
            },
        });
        routes
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await?;
    }
    Ok(())
}

/// The first port of Service `name` (80 when it has none).
fn service_port(services: &Services, name: &str) -> i32 {
    services
        .get(name)
        .and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port))
        .unwrap_or(80)
}

/// Creates the current revision's ReplicaSet and scales every owned one to
/// what the decision says (0 when it says nothing).
async fn apply_replicasets(
    rollout: &Rollout,
    ns: &str,
    ctx: &Context,
    owned: &[ReplicaSet],
    hash: &str,
    d: &Decision,
) -> Result<(), Error> {
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let name = rollout.name_any();
    let want: BTreeMap<&str, i32> = d.replicas.iter().map(|(h, n)| (h.as_str(), *n)).collect();
    let existing: BTreeMap<String, &ReplicaSet> = owned
        .iter()
        .filter_map(|rs| Some((rs.labels().get(HASH_LABEL)?.clone(), rs)))
        .collect();
    if let Some(&n) = want.get(hash)
        && !existing.contains_key(hash)
    {
        let mut template = rollout.spec.template.clone();
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.to_owned());
        let mut selector: LabelSelector = rollout.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.to_owned());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{hash}")),
                namespace: Some(ns.into()),
                labels: Some(
                    [
                        (ROLLOUT_LABEL.to_owned(), name.clone()),
                        (HASH_LABEL.to_owned(), hash.to_owned()),
                    ]
                    .into(),
                ),
                owner_references: rollout.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(n),
                selector,
                template: Some(template),
                min_ready_seconds: None,
            }),
            status: None,
        };
        info!(revision = %hash, replicas = n, "creating ReplicaSet");
        api.create(&PostParams::default(), &rs).await?;
    }
    for (h, rs) in &existing {
        let n = want.get(h.as_str()).copied().unwrap_or(0);
        if rs.spec.as_ref().and_then(|s| s.replicas) != Some(n) {
            info!(revision = %h, replicas = n, "scaling ReplicaSet");
            api.patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": n}})),
            )
            .await?;
        }
    }
    // Revision history: keep the newest scaled-down ReplicaSets only.
    let limit = rollout.spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let mut idle: Vec<&ReplicaSet> = existing
        .iter()
        .filter(|(h, _)| !want.contains_key(h.as_str()))
        .map(|(_, rs)| *rs)
        .filter(|rs| rs.status.as_ref().is_some_and(|s| s.replicas == 0))
        .collect();
    idle.sort_by_key(|rs| std::cmp::Reverse(rs.metadata.creation_timestamp.clone().map(|t| t.0)));
    for rs in idle.into_iter().skip(limit) {
        api.delete(&rs.name_any(), &Default::default()).await?;
    }
    Ok(())
}

/// Pins `stableService` to the stable pods and `canaryService` to the
/// canary's (or to stable while no canary runs), as Argo Rollouts does.
async fn apply_services(
    rollout: &Rollout,
    ns: &str,
    ctx: &Context,
    services: &Services,
    d: &Decision,
) -> Result<(), Error> {
    let canary = &rollout.spec.strategy.canary;
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let stable = d.status.stable_revision.clone();
    let canary_rev = d.status.canary_revision.clone().or_else(|| stable.clone());
    for (svc, rev) in [
        (&canary.stable_service, stable),
        (&canary.canary_service, canary_rev),
    ] {
        let (Some(svc), Some(rev)) = (svc, rev) else {
            continue;
        };
        let Some(current) = services.get(svc) else {
            continue;
        };
        let pinned = current
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.get(HASH_LABEL));
        if pinned != Some(&rev) {
            api.patch(
                svc,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"selector": {HASH_LABEL: rev}}})),
            )
            .await?;
        }
    }
    Ok(())
}

async fn write_status(
    rollout: &Rollout,
    ns: &str,
    ctx: &Context,
    d: &Decision,
    ready: &BTreeMap<String, i32>,
) -> Result<(), Error> {
    let ready = |h: &str| ready.get(h).copied().unwrap_or(0);
    let mut st = d.status.clone();
    let spec = &rollout.spec;
    let stable = st.stable_revision.clone().unwrap_or_default();
    let canary = st.canary_revision.clone();
    let total: i32 = d.replicas.iter().map(|(_, n)| *n).sum();
    let ready_total: i32 = d.replicas.iter().map(|(h, _)| ready(h)).sum();
    st.replicas = Some(total);
    st.ready_replicas = Some(ready_total);
    st.available_replicas = Some(ready_total);
    st.updated_replicas = Some(ready(canary.as_deref().unwrap_or(&stable)));
    st.selector = Some(
        spec.selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    let phase = st.phase.unwrap_or(RolloutPhase::Progressing);
    let message = st.message.clone().unwrap_or_default();
    let invalid = message.strip_prefix("InvalidSpec: ");
    let available = ready(&stable) >= spec.replicas;
    let conds = vec![
        if available {
            Cond::yes("Available", "AvailableReplicas")
        } else {
            Cond::no(
                "Available",
                "NotEnoughReplicas",
                format!("{} of {} stable pods ready", ready(&stable), spec.replicas),
            )
        },
        match phase {
            RolloutPhase::Progressing => Cond {
                kind: "Progressing",
                ok: true,
                reason: "RolloutProgressing",
                message: message.clone(),
            },
            RolloutPhase::Paused => Cond {
                kind: "Progressing",
                ok: true,
                reason: "RolloutPaused",
                message: message.clone(),
            },
            RolloutPhase::Healthy => Cond::no("Progressing", "RolloutCompleted", message.clone()),
            RolloutPhase::Degraded => Cond::no("Progressing", "RolloutAborted", message.clone()),
        },
        if phase == RolloutPhase::Paused {
            Cond {
                kind: "Paused",
                ok: true,
                reason: "RolloutPaused",
                message: message.clone(),
            }
        } else {
            Cond::no("Paused", "NotPaused", "")
        },
        if phase == RolloutPhase::Healthy {
            Cond {
                kind: "Healthy",
                ok: true,
                reason: "RolloutHealthy",
                message: message.clone(),
            }
        } else {
            Cond::no("Healthy", "RolloutNotHealthy", message.clone())
        },
        if st.aborted {
            Cond {
                kind: "RolledBack",
                ok: true,
                reason: if st.analysis.as_ref().and_then(|a| a.verdict.as_deref()) == Some("Failed")
                {
                    "AnalysisFailed"
                } else {
                    "Aborted"
                },
                message: message.clone(),
            }
        } else {
            Cond::no("RolledBack", "NotRolledBack", "")
        },
        match invalid {
            Some(why) => Cond {
                kind: "InvalidSpec",
                ok: true,
                reason: "InvalidSpec",
                message: why.to_owned(),
            },
            None => Cond::no("InvalidSpec", "ValidSpec", ""),
        },
    ];
    let existing = rollout
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let conditions = to_conditions(&conds, rollout.metadata.generation, &existing);
    st.conditions = Vec::new();
    let mut status: Value = serde_json::to_value(&st)?;
    status["conditions"] = Value::Array(conditions);
    let current = rollout
        .status
        .as_ref()
        .map(serde_json::to_value)
        .transpose()?
        .unwrap_or(Value::Null);
    apply_status(
        Api::<Rollout>::namespaced(ctx.client.clone(), ns),
        &rollout.name_any(),
        current,
        status,
    )
    .await?;
    Ok(())
}
