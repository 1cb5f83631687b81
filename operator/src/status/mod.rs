//! Gateway API status, written as other implementations do: GatewayClass
//! `Accepted`; Gateway `Accepted`/`Programmed` with addresses and per
//! listener conditions; HttpRoute parent entries with `Accepted` and
//! `ResolvedRefs`; and AuthorizationPolicy `Accepted` (with a Warning
//! Event when one is refused). Each object is patched (server-side apply,
//! status subresource) only when what it shows differs from what it should.

mod conditions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use sluice_crds::{AuthorizationPolicy, RequestAuthentication};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::gateway_infra::{self, Address};
use crate::mesh::policies::PolicyDraft;
use crate::mesh::{
    Audience, CONTROLLER_NAME, Cond, GatewayDraft, GatewayInfra, MeshOutput, reason,
};
use crate::push::{Registry, Snapshots};
use crate::world::World;

pub use conditions::to_conditions;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "sluice-operator";

/// Whether the gateway proxies of `infra` run their current snapshot.
fn programmed(registry: &Registry, snapshots: &Snapshots, infra: &GatewayInfra) -> Cond {
    let current = snapshots.current();
    let Some(version) = current
        .get(&Audience::Gateway(infra.clone()))
        .map(|s| s.version().to_owned())
    else {
        return Cond::no(
            "Programmed",
            reason::PENDING,
            "computing the gateway config",
        );
    };
    let progress = registry.gateway_progress(infra, &version);
    if progress.connected == 0 {
        return Cond::no(
            "Programmed",
            reason::PENDING,
            "no Sluice gateway proxy is connected to the control plane",
        );
    }
    // One proxy refusing the config is worth saying even while others run
    // it: that proxy serves an older config.
    if let Some((pod, err)) = progress.refused {
        return Cond::no(
            "Programmed",
            reason::INVALID,
            format!("gateway proxy {pod} refused the config: {err}"),
        );
    }
    if progress.acked {
        return Cond::yes("Programmed", reason::PROGRAMMED);
    }
    Cond::no(
        "Programmed",
        reason::PENDING,
        format!("waiting for the gateway proxies to apply version {version}"),
    )
}

fn gateway_status(
    d: &GatewayDraft,
    programmed: &Cond,
    addresses: &[Address],
    existing: &[Condition],
    existing_listeners: &Value,
) -> Value {
    let listeners: Vec<Value> = d
        .listeners
        .iter()
        .map(|l| {
            let mut conds = l.conditions.clone();
            conds.push(match &l.programmed {
                Ok(()) => programmed.clone(),
                Err(why) => Cond::no("Programmed", reason::INVALID, why.clone()),
            });
            let old: Vec<Condition> = existing_listeners
                .as_array()
                .and_then(|ls| ls.iter().find(|x| x["name"] == l.name.as_str()))
                .and_then(|x| serde_json::from_value(x["conditions"].clone()).ok())
                .unwrap_or_default();
            json!({
                "name": l.name,
                "attachedRoutes": l.attached_routes,
                "supportedKinds": l
                    .route_kinds
                    .iter()
                    .map(|k| json!({"group": "gateway.networking.k8s.io", "kind": k}))
                    .collect::<Vec<_>>(),
                "conditions": to_conditions(&conds, d.generation, &old),
            })
        })
        .collect();
    let mut status = json!({
        "conditions": to_conditions(&[d.accepted.clone(), programmed.clone()], d.generation, existing),
        "listeners": listeners,
    });
    if !addresses.is_empty() {
        status["addresses"] = addresses
            .iter()
            .map(|a| match a {
                Address::Ip(ip) => json!({"type": "IPAddress", "value": ip}),
                Address::Hostname(h) => json!({"type": "Hostname", "value": h}),
            })
            .collect();
    }
    status
}

/// Whether the proxies of `infra` (which serve `gw`) run their config, and
/// where clients reach them: the shared proxies at their pods' addresses,
/// a dedicated Gateway's at its Service's.
fn where_served(
    world: &World,
    registry: &Registry,
    snapshots: &Snapshots,
    infra: &GatewayInfra,
    gw: &Gateway,
) -> (Cond, Vec<Address>) {
    let mut addresses: Vec<Address> = match infra {
        GatewayInfra::Shared => registry
            .gateway_pods(infra)
            .iter()
            .filter_map(|(ns, pod)| world.pod(ns, pod))
            .filter_map(|pod| pod.status.as_ref()?.pod_ip.clone())
            .map(Address::Ip)
            .collect(),
        GatewayInfra::Dedicated { namespace, name } => {
            let service = gateway_infra::resource_name(name, &gw.spec.gateway_class_name);
            world
                .service(namespace, &service)
                .map(|s| gateway_infra::addresses(&s))
                .unwrap_or_default()
        }
    };
    addresses.sort();
    addresses.dedup();
    (programmed(registry, snapshots, infra), addresses)
}

/// An object's status as JSON (null when it has none), to compare with
/// the one it should have.
fn status_value<S: serde::Serialize>(status: Option<&S>) -> Value {
    status
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_default()
}

/// Patches the status of `name` (server-side apply, forced, as
/// [`FIELD_MANAGER`]) when `desired` differs from `current`: every status
/// the operator writes goes through here. The object's new resource
/// version when written.
pub async fn apply_status<K>(
    api: Api<K>,
    name: &str,
    current: Value,
    desired: Value,
) -> Result<Option<String>, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if current == desired {
        return Ok(None);
    }
    let kind = K::kind(&());
    debug!(%kind, %name, "writing status");
    let body = json!({"apiVersion": K::api_version(&()), "kind": kind, "metadata": {"name": name}, "status": desired});
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|written| kube::ResourceExt::resource_version(&written))
}

/// Writes every AuthorizationPolicy's and RequestAuthentication's
/// `Accepted`.
async fn write_policies(
    client: &Client,
    world: &World,
    recorder: &Recorder,
    out: &MeshOutput,
) -> Result<(), kube::Error> {
    for ((ns, name), draft) in &out.policies {
        if let Some(obj) = world.policy(ns, name) {
            let existing = obj.status.as_ref().map(|s| s.conditions.as_slice());
            write_accepted::<AuthorizationPolicy>(client, recorder, &obj, existing, draft).await?;
        }
    }
    for ((ns, name), draft) in &out.authentications {
        if let Some(obj) = world.authentication(ns, name) {
            let existing = obj.status.as_ref().map(|s| s.conditions.as_slice());
            write_accepted::<RequestAuthentication>(client, recorder, &obj, existing, draft)
                .await?;
        }
    }
    Ok(())
}

/// Writes one object's `Accepted` (skipped when unchanged); an object
/// newly refused also gets a Warning Event saying why.
async fn write_accepted<K>(
    client: &Client,
    recorder: &Recorder,
    obj: &K,
    existing: Option<&[Condition]>,
    draft: &PolicyDraft,
) -> Result<(), kube::Error>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let (ns, name) = (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    );
    let existing = existing.unwrap_or_default().to_vec();
    let was_refused = existing.iter().any(|c| {
        c.type_ == "Accepted" && c.status == "False" && c.message == draft.accepted.message
    });
    let conditions = to_conditions(
        std::slice::from_ref(&draft.accepted),
        draft.generation,
        &existing,
    );
    let desired = json!({ "conditions": conditions });
    let current = json!({ "conditions": existing });
    apply_status(
        Api::<K>::namespaced(client.clone(), &ns),
        &name,
        current,
        desired,
    )
    .await?;
    if !draft.accepted.ok && !was_refused {
        let event = Event {
            type_: EventType::Warning,
            reason: "Refused".into(),
            note: Some(draft.accepted.message.clone()),
            action: "Translate".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
            warn!("recording the refusal of {ns}/{name}: {e}");
        }
    }
    Ok(())
}

/// Writes status whenever a translation or the proxies' state changes.
pub async fn run(
    client: Client,
    world: World,
    registry: Arc<Registry>,
    snapshots: Snapshots,
    mut output: watch::Receiver<Arc<MeshOutput>>,
) {
    let mut registry_changes = registry.subscribe_gateways();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let mut warned = ServiceWarnings::default();
    loop {
        tokio::select! {
            r = output.changed() => if r.is_err() { return },
            r = registry_changes.changed() => if r.is_err() { return },
        }
        // Let a burst of ACKs settle into one write.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let out = output.borrow_and_update().clone();
        registry_changes.borrow_and_update();
        warned.record(&client, &recorder, &out).await;
        let written = match write_all(&client, &world, &registry, &snapshots, &out).await {
            Ok(()) => write_policies(&client, &world, &recorder, &out).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            warn!("writing Gateway API status: {e}");
            // Conflicts and transient errors: retry on the next change, or soon.
            tokio::time::sleep(Duration::from_secs(1)).await;
            output.mark_changed();
        }
    }
}

/// The Warning Events given to Services whose annotations do not parse:
/// one per Service and distinct message (a Service has no status to
/// remember it in; after a restart each is given once more).
#[derive(Default)]
struct ServiceWarnings {
    given: BTreeMap<(String, String), String>,
}

impl ServiceWarnings {
    /// Warns each Service of `out` whose message is new; forgets Services
    /// that no longer have one.
    async fn record(&mut self, client: &Client, recorder: &Recorder, out: &MeshOutput) {
        let now = &out.invalid_service_annotations;
        self.given.retain(|k, _| now.contains_key(k));
        for ((ns, name), invalid) in now {
            let note = invalid
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let key = (ns.clone(), name.clone());
            if self.given.get(&key) == Some(&note) {
                continue;
            }
            warn!(service = %format!("{ns}/{name}"), "{note}");
            // The store keeps no UID, which `kubectl describe` matches
            // events by: read it (rare: a new wrong value).
            let service = match Api::<Service>::namespaced(client.clone(), ns)
                .get(name)
                .await
            {
                Ok(svc) => svc.object_ref(&()),
                Err(e) => {
                    warn!("reading Service {ns}/{name} to warn it: {e}");
                    continue;
                }
            };
            let event = Event {
                type_: EventType::Warning,
                reason: "InvalidAnnotation".into(),
                note: Some(note.clone()),
                action: "Translate".into(),
                secondary: None,
            };
            match recorder.publish(&event, &service).await {
                Ok(()) => {
                    self.given.insert(key, note);
                }
                Err(e) => warn!("recording an invalid annotation of {ns}/{name}: {e}"),
            }
        }
    }
}

async fn write_all(
    client: &Client,
    world: &World,
    registry: &Registry,
    snapshots: &Snapshots,
    out: &MeshOutput,
) -> Result<(), kube::Error> {
    for (name, generation) in &out.classes {
        let Some(obj) = world.class(name) else {
            continue;
        };
        let existing = obj
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let desired = json!({"conditions": to_conditions(&[Cond::yes("Accepted", reason::ACCEPTED)], *generation, &existing)});
        let current = status_value(obj.status.as_ref());
        apply_status(
            Api::<GatewayClass>::all(client.clone()),
            name,
            current,
            desired,
        )
        .await?;
    }
    let mut infras: BTreeMap<&GatewayInfra, (Cond, Vec<Address>)> = BTreeMap::new();
    for d in &out.gateways {
        let Some(obj) = world.gateway(&d.namespace, &d.name) else {
            continue;
        };
        let (programmed, addresses) = infras
            .entry(&d.infra)
            .or_insert_with(|| where_served(world, registry, snapshots, &d.infra, &obj));
        let existing = obj
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let current = status_value(obj.status.as_ref());
        let desired = gateway_status(d, programmed, addresses, &existing, &current["listeners"]);
        apply_status(
            Api::<Gateway>::namespaced(client.clone(), &d.namespace),
            &d.name,
            current,
            desired,
        )
        .await?;
    }
    for ((ns, name), draft) in &out.routes {
        let Some(obj) = world.route(ns, name) else {
            continue;
        };
        let current = status_value(obj.status.as_ref());
        let old_parents = obj
            .status
            .as_ref()
            .map(|s| s.parents.clone())
            .unwrap_or_default();
        // Entries of other controllers stay as they are.
        let mut parents: Vec<Value> = old_parents
            .iter()
            .filter(|p| p.controller_name != CONTROLLER_NAME)
            .filter_map(|p| serde_json::to_value(p).ok())
            .collect();
        for (parent_ref, conds) in &draft.parents {
            let old = old_parents
                .iter()
                .find(|p| p.controller_name == CONTROLLER_NAME && p.parent_ref == *parent_ref)
                .map(|p| p.conditions.clone())
                .unwrap_or_default();
            parents.push(json!({
                "parentRef": parent_ref,
                "controllerName": CONTROLLER_NAME,
                "conditions": to_conditions(conds, draft.generation, &old),
            }));
        }
        let desired = json!({"parents": parents});
        apply_status(
            Api::<HttpRoute>::namespaced(client.clone(), ns),
            name,
            current,
            desired,
        )
        .await?;
    }
    Ok(())
}
