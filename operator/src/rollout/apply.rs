//! Acting on a [`Decision`]: weights first (so that a rollback takes
//! traffic off the canary before anything else), then ReplicaSets,
//! Services, status and events. Nothing here decides.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use sluice_crds::Rollout;
use sluice_crds::rollout::{Request, RolloutSpec, RolloutStatus};
use tracing::{debug, info};

use super::canary_routes::{self, CanaryRoutes};
use super::model::{Decision, Event, Observed};
use super::observe::{self, World};
use super::phase::decide;
use super::revisions::{self, REVISION_ANNOTATION};
use super::workload::{self, Adoption, WORKLOAD_LABEL};
use super::{Context, Error, HASH_LABEL, ROLLOUT_LABEL};
use crate::metrics::PassResult;
use crate::status::{FIELD_MANAGER, apply_status, to_conditions};

/// How soon a pass that found the cache behind this process's own last
/// write looks again: the watch event of that write normally wakes it
/// first; this is the fallback.
const CACHE_BEHIND_RECHECK: Duration = Duration::from_secs(1);

/// The writes of one pass to its Rollout.
#[derive(Debug, Default)]
struct Writes {
    /// The versions they produced, in order.
    versions: Vec<String>,
    /// The request this pass acts on, until its decision is in the status.
    unsettled: Option<Request>,
}

/// Observe, decide, apply; unless the cache still shows a version this
/// process's own writes replaced (see [`super::freshness`]). Counts the
/// pass; one that succeeds starts the failure backoff over
/// ([`super::retry`]).
pub async fn reconcile(rollout: &Rollout, ns: &str, ctx: &Context) -> Result<Action, Error> {
    let uid = rollout.uid().unwrap_or_default();
    let read = rollout.resource_version().unwrap_or_default();
    if ctx.written.superseded(&uid, &read) {
        debug!(version = %read, "the cache is behind this process's last write; waiting for it");
        ctx.metrics.rollout_pass(PassResult::CacheBehind);
        return Ok(Action::requeue(CACHE_BEHIND_RECHECK));
    }
    let mut writes = Writes::default();
    let result = pass(rollout, ns, &uid, ctx, &mut writes).await;
    match &result {
        Ok(_) => {
            ctx.metrics.rollout_pass(PassResult::Done);
            ctx.retry.succeeded(&uid);
        }
        Err(e) => {
            ctx.metrics.rollout_pass(PassResult::Failed);
            keep_unsettled_request(rollout, &uid, ctx, &mut writes, e).await;
        }
    }
    ctx.written.record(&uid, &read, &writes.versions);
    result
}

/// After a failed pass: keeps the request it acted on, if its decision
/// did not reach the status, for the next pass (see
/// [`super::unsettled`]), and says so in a Warning event: a user whose
/// `promote` seems ignored learns why.
async fn keep_unsettled_request(
    rollout: &Rollout,
    uid: &str,
    ctx: &Context,
    writes: &mut Writes,
    error: &Error,
) {
    let Some(request) = writes.unsettled.take() else {
        return;
    };
    ctx.unsettled.keep(uid, request);
    let event = Event {
        warning: true,
        reason: "RequestPending",
        note: format!(
            "{} could not be carried out ({}); it is kept for the next attempt",
            request.as_str(),
            error.brief()
        ),
    };
    record_event(rollout, ctx, &event).await;
}

/// One pass over Rollout `uid`: observe, decide, apply; its writes to the
/// Rollout go to `writes`.
async fn pass(
    rollout: &Rollout,
    ns: &str,
    uid: &str,
    ctx: &Context,
    writes: &mut Writes,
) -> Result<Action, Error> {
    let status = rollout.status.clone().unwrap_or_default();
    let world = observe::world(rollout, ns, ctx).await?;
    let adopted = world
        .workload
        .as_ref()
        .map(|d| workload::effective(rollout, d));
    let rollout = adopted.as_ref().unwrap_or(rollout);
    let hash = revisions::current_hash(&world.owned, &rollout.spec.template);
    // Taken (removed) before it is acted on, and acted on only if this
    // pass removed it: the cache may still show a request that an earlier
    // pass handled, and a promote must not end two pauses. One that an
    // earlier pass took but could not carry out comes from memory.
    let taken = match rollout.annotations().get(Request::ANNOTATION) {
        Some(seen) => match take_request(rollout, ns, ctx, seen).await? {
            Some(version) => {
                writes.versions.push(version);
                Request::parse(seen)
            }
            None => None,
        },
        None => None,
    };
    let request = ctx.unsettled.next(uid, taken);
    writes.unsettled = request;
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    // Templates that cannot run hold the Rollout as an invalid spec.
    let (evaluation, unrunnable) = match observe::evaluation_due(rollout, &hash, now) {
        Some(due) => match observe::analyse(ctx, rollout, ns, &hash, due, now).await {
            Ok(e) => (Some(e), None),
            Err(invalid) => (None, Some(invalid)),
        },
        None => (None, None),
    };
    let observed = Observed {
        spec: &rollout.spec,
        status: &status,
        generation: rollout.metadata.generation.unwrap_or(0),
        template_hash: hash.clone(),
        ready: &world.ready,
        request,
        evaluation,
        invalid: observe::invalid(rollout, ns, &world).or(unrunnable),
        now,
    };
    let decision = decide(&observed);

    apply_weights(rollout, ns, ctx, &world, &decision).await?;
    apply_replicasets(rollout, ns, ctx, &world.owned, &hash, &decision).await?;
    let adoption = take_over(rollout, ns, ctx, &world, &decision).await?;
    if adoption != Some(Adoption::Waiting) {
        apply_services(rollout, ns, ctx, &world.services, &decision).await?;
    }
    if let Some(version) = write_status(rollout, ns, ctx, &decision, &world.ready).await? {
        writes.versions.push(version);
    }
    writes.unsettled = None;
    record_events(rollout, ctx, &decision).await;
    ctx.notifier
        .notify(rollout, &decision.status, &decision.events, now);
    let requeue = match adoption {
        // Taking over: look again soon.
        Some(Adoption::Waiting | Adoption::Draining) => {
            decision.requeue.min(Duration::from_secs(1))
        }
        _ => decision.requeue,
    };
    Ok(Action::requeue(requeue.max(Duration::from_millis(500))))
}

/// With `workloadRef`: labels the Deployment (so that its changes wake the
/// controller) and scales it to 0 once the take-over allows; says where the
/// take-over stands.
async fn take_over(
    rollout: &Rollout,
    ns: &str,
    ctx: &Context,
    world: &World,
    d: &Decision,
) -> Result<Option<Adoption>, Error> {
    let Some(deployment) = &world.workload else {
        return Ok(None);
    };
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let name = rollout.name_any();
    if deployment.labels().get(WORKLOAD_LABEL) != Some(&name) {
        api.patch(
            &deployment.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {WORKLOAD_LABEL: name}}})),
        )
        .await?;
    }
    let stable = d.status.stable_revision.as_deref().unwrap_or_default();
    let step = workload::adoption(workload::Observed {
        deployment_replicas: deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1),
        stable_ready: world.ready.get(stable).copied().unwrap_or(0),
        replicas: rollout.spec.replicas,
        services_pinned: world.services_pinned,
        foreign_endpoints: world.foreign_endpoints,
    });
    if step == Adoption::ScaleDown {
        api.patch(
            &deployment.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
        let note = format!(
            "Deployment {} scaled to 0: revision {stable} serves its traffic",
            deployment.name_any()
        );
        let event = Event {
            warning: false,
            reason: "WorkloadScaledDown",
            note,
        };
        record_event(rollout, ctx, &event).await;
    }
    Ok(Some(step))
}

/// Removes the request annotation if it still holds `seen`; the Rollout's
/// version after the removal when it did. Not removed: already taken by an
/// earlier pass (this one read a stale cache), or replaced by a newer
/// request (a `promote --full` right after a `promote`), which the next
/// pass takes.
async fn take_request(
    rollout: &Rollout,
    ns: &str,
    ctx: &Context,
    seen: &str,
) -> Result<Option<String>, Error> {
    let api: Api<Rollout> = Api::namespaced(ctx.client.clone(), ns);
    let path = format!(
        "/metadata/annotations/{}",
        Request::ANNOTATION.replace('~', "~0").replace('/', "~1")
    );
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": seen},
        {"op": "remove", "path": path},
    ]))?;
    match api
        .patch(
            &rollout.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(taken) => Ok(Some(taken.resource_version().unwrap_or_default())),
        // Gone or changed: the test failed.
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn record_events(rollout: &Rollout, ctx: &Context, d: &Decision) {
    for e in &d.events {
        record_event(rollout, ctx, e).await;
    }
}

/// Logs `e` and records it as an Event on the Rollout.
async fn record_event(rollout: &Rollout, ctx: &Context, e: &Event) {
    info!(reason = e.reason, "{}", e.note);
    let event = KubeEvent {
        type_: if e.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: e.reason.into(),
        note: Some(event_note(&e.note).to_owned()),
        action: "Reconcile".into(),
        secondary: None,
    };
    // An event that cannot be written must not stop the rollout.
    if let Err(err) = ctx.recorder.publish(&event, &rollout.object_ref(&())).await {
        tracing::warn!("recording event {}: {err}", e.reason);
    }
}

/// The most of `note` an Event holds (the API server refuses a note over
/// 1,024 bytes, and the Event with it), cut at a character boundary.
fn event_note(note: &str) -> &str {
    const MAX: usize = 1024;
    let mut end = note.len().min(MAX);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    &note[..end]
}

/// The JSON Patch (RFC 6902) that sets the weights of `route`'s backendRefs
/// to `stable` and `canary`: each change guarded by a `test` of the
/// backendRef's name, so that a route edited meanwhile is refused rather
/// than mis-weighted, and nothing else of the user's route is touched.
pub fn weight_patch(
    route: &HttpRoute,
    stable: &str,
    canary: &str,
    canary_weight: i32,
) -> Vec<Value> {
    let w = canary_weight.clamp(0, 100);
    let mut ops = Vec::new();
    for (i, rule) in route.spec.rules.iter().flatten().enumerate() {
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            let want = if b.name == stable {
                100 - w
            } else if b.name == canary {
                w
            } else {
                continue;
            };
            if b.weight != Some(want) {
                let path = format!("/spec/rules/{i}/backendRefs/{j}");
                ops.push(json!({"op": "test", "path": format!("{path}/name"), "value": b.name}));
                ops.push(json!({"op": "add", "path": format!("{path}/weight"), "value": want}));
            }
        }
    }
    ops
}

/// Sets the stable and canary backendRefs' weights in every routed
/// HTTPRoute (a JSON Patch: the routes are the user's), keeps their
/// companions for header and mirror routes, and keeps the mesh route of `trafficRouting.mesh`
/// (the operator's own: server-side apply).
async fn apply_weights(
    rollout: &Rollout,
    ns: &str,
    ctx: &Context,
    world: &World,
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
    let routes: Api<HttpRoute> = Api::namespaced(ctx.client.clone(), ns);
    // Every route that still exists gets the weight, also while another is
    // missing: a rollback must reach all of them.
    for (name, route) in &world.routes {
        let ops = weight_patch(route, stable, canary_svc, w);
        if ops.is_empty() {
            continue;
        }
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
        routes
            .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await?;
        info!(route = %name, canary_weight = w, "weights set");
    }
    let canary_routes = CanaryRoutes {
        stable,
        canary: canary_svc,
        weight: w,
        headers: &d.header_routes,
        mirrors: &d.mirror_routes,
    };
    apply_companions(rollout, ctx, world, &canary_routes).await?;
    if let Some(mesh) = &tr.mesh {
        let service = mesh.service.clone().unwrap_or_else(|| stable.clone());
        let name = format!("{}-mesh", rollout.name_any());
        let owner = rollout.controller_owner_ref(&()).map(|o| vec![o]);
        let services = &world.services;
        let rules = canary_routes::mesh_rules(
            &canary_routes,
            service_port(services, stable),
            service_port(services, canary_svc),
        );
        let body = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns, "ownerReferences": owner},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": service}],
                "rules": rules,
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

/// Keeps one companion route per routed HTTPRoute while header or mirror
/// routes are in force, and deletes those no longer wanted (all of them
/// once the canary is promoted or aborted).
async fn apply_companions(
    rollout: &Rollout,
    ctx: &Context,
    world: &World,
    canary_routes: &CanaryRoutes<'_>,
) -> Result<(), Error> {
    let ns = rollout.namespace().unwrap_or_default();
    let api: Api<HttpRoute> = Api::namespaced(ctx.client.clone(), &ns);
    let name = rollout.name_any();
    let owner = rollout.controller_owner_ref(&()).map(|o| vec![o]);
    let mut wanted = BTreeSet::new();
    for route in world.routes.values() {
        let Some(mut body) = canary_routes::companion(route, &name, canary_routes) else {
            continue;
        };
        body["metadata"]["ownerReferences"] = json!(owner);
        let companion = canary_routes::companion_name(&name, &route.name_any());
        api.patch(
            &companion,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
        wanted.insert(companion);
    }
    for gone in world.companions.iter().filter(|c| !wanted.contains(*c)) {
        match api.delete(gone, &Default::default()).await {
            Ok(_) => info!(route = %gone, "canary routes removed"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The first port of Service `name` (80 when it has none).
fn service_port(services: &BTreeMap<String, Service>, name: &str) -> i32 {
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
    let number = revisions::next_number(owned, hash);
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
                annotations: number
                    .map(|n| [(REVISION_ANNOTATION.to_owned(), n.to_string())].into()),
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
    // A revision that becomes current again (an undo) is renumbered.
    if let (Some(n), Some(rs)) = (number, existing.get(hash)) {
        info!(revision = %hash, number = n, "numbering revision");
        api.patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {REVISION_ANNOTATION: n.to_string()}}}),
            ),
        )
        .await?;
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

/// The revision each pinned Service selects under `status`: a canary's
/// `stableService` the stable pods and `canaryService` the canary's (or
/// stable's while no canary runs), as Argo Rollouts does; a blue-green
/// Rollout's Services what its status says.
pub fn pins<'a>(spec: &'a RolloutSpec, status: &RolloutStatus) -> Vec<(&'a str, String)> {
    if let Some(bg) = &spec.strategy.blue_green {
        let Some(sel) = &status.blue_green else {
            return Vec::new();
        };
        let mut out = vec![(bg.active_service.as_str(), sel.active_revision.clone())];
        if let Some(p) = &bg.preview_service {
            out.push((p.as_str(), sel.preview_revision.clone()));
        }
        return out;
    }
    let canary = &spec.strategy.canary;
    let stable = status.stable_revision.clone();
    let canary_rev = status.canary_revision.clone().or_else(|| stable.clone());
    [
        (&canary.stable_service, stable),
        (&canary.canary_service, canary_rev),
    ]
    .into_iter()
    .filter_map(|(svc, rev)| Some((svc.as_deref()?, rev?)))
    .collect()
}

/// Pins each Service's selector to its revision ([`pins`]).
async fn apply_services(
    rollout: &Rollout,
    ns: &str,
    ctx: &Context,
    services: &BTreeMap<String, Service>,
    d: &Decision,
) -> Result<(), Error> {
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    for (svc, rev) in pins(&rollout.spec, &d.status) {
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
) -> Result<Option<String>, Error> {
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
    let conds = super::conditions::conditions(&st, ready(&stable), spec.replicas.max(0));
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
    let written = apply_status(
        Api::<Rollout>::namespaced(ctx.client.clone(), ns),
        &rollout.name_any(),
        current,
        status,
    )
    .await?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::event_note;

    #[test]
    fn a_long_note_is_cut_to_what_an_event_holds_at_a_character_boundary() {
        assert_eq!(event_note("short"), "short");
        // 'é' is two bytes: 1,023 of them end mid-character at byte 1,024.
        let long = format!("a{}", "é".repeat(600));
        let cut = event_note(&long);
        assert_eq!(cut.len(), 1023);
        assert!(long.starts_with(cut));
    }
}
