//! Dedicated gateways, as Istio deploys them: each Gateway of the dedicated
//! class gets its own proxies (a Deployment and a Service named
//! `<gateway>-<class>`, owned by the Gateway), which serve that Gateway
//! alone and are reached at the Service's address, which its status shows.
//! Gateways of the other classes share the gateway the chart installs.
//!
//! The objects are a pure function of the Gateway ([`objects`]); [`run`]
//! applies them (server-side apply) when they change.

pub mod objects;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::inject::InjectSettings;
use crate::mesh::{GatewayInfra, MeshOutput};
use crate::push::fnv1a;
use crate::world::World;

pub use objects::{GATEWAY_NAME_LABEL, Objects, resource_name};

/// The field manager of the objects applied here.
pub const FIELD_MANAGER: &str = "sluice-gateway-deployer";

/// How often everything is applied again even when unchanged, so that an
/// object someone deleted or edited comes back.
const RESYNC: Duration = Duration::from_secs(300);

/// A Gateway's address as its status shows it: `IPAddress` or `Hostname`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Address {
    /// An IP address.
    Ip(String),
    /// A DNS name (a load balancer's).
    Hostname(String),
}

/// Where clients reach a dedicated Gateway's Service: its load balancer's
/// addresses once it has them, else its cluster IP.
pub fn addresses(service: &Service) -> Vec<Address> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut out: Vec<Address> = ingress
        .into_iter()
        .flatten()
        .filter_map(|i| {
            i.ip.clone()
                .map(Address::Ip)
                .or_else(|| i.hostname.clone().map(Address::Hostname))
        })
        .collect();
    if out.is_empty() {
        out.extend(
            service
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .filter(|ip| !ip.is_empty() && ip != "None")
                .map(Address::Ip),
        );
    }
    out
}

/// Applies the objects of every dedicated Gateway the translation serves,
/// each time the translation changes (skipping a Gateway whose objects are
/// what was last applied) and every [`RESYNC`]. Deleted Gateways' objects
/// go with them (owner references).
pub async fn run(
    client: Client,
    world: World,
    proxy: InjectSettings,
    mut output: watch::Receiver<Arc<MeshOutput>>,
) {
    let mut applied: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut resync = tokio::time::interval(RESYNC);
    // A failed apply is tried again this soon.
    let mut retry = tokio::time::interval(Duration::from_secs(10));
    let mut failed = false;
    loop {
        tokio::select! {
            r = output.changed() => if r.is_err() { return },
            _ = resync.tick() => applied.clear(),
            _ = retry.tick(), if failed => {}
        }
        let out = output.borrow_and_update().clone();
        let wanted: BTreeSet<(String, String)> = out
            .gateways
            .iter()
            .filter_map(|d| match &d.infra {
                GatewayInfra::Dedicated { namespace, name } => {
                    Some((namespace.clone(), name.clone()))
                }
                GatewayInfra::Shared => None,
            })
            .collect();
        applied.retain(|k, _| wanted.contains(k));
        failed = false;
        for (ns, name) in wanted {
            let Some(gw) = world.gateway(&ns, &name) else {
                continue;
            };
            let Some(objects) = objects::objects(&gw, &proxy) else {
                continue;
            };
            let hash = fnv1a(
                serde_json::to_string(&objects_json(&objects))
                    .unwrap_or_default()
                    .as_bytes(),
            );
            if applied.get(&(ns.clone(), name.clone())) == Some(&hash) {
                continue;
            }
            match apply(&client, &ns, &objects).await {
                Ok(()) => {
                    info!(gateway = %format!("{ns}/{name}"), "applied the gateway's deployment and service");
                    applied.insert((ns, name), hash);
                }
                Err(e) => {
                    failed = true;
                    warn!(gateway = %format!("{ns}/{name}"), "applying the gateway's objects: {e}")
                }
            }
        }
        if failed {
            retry.reset();
        }
    }
}

fn objects_json(o: &Objects) -> Value {
    serde_json::json!([o.account, o.deployment, o.service])
}

/// Server-side applies `o` (forced: the objects are the operator's).
async fn apply(client: &Client, ns: &str, o: &Objects) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let name = |v: &Value| {
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .patch(&name(&o.account), &params, &Patch::Apply(&o.account))
        .await?;
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(&name(&o.deployment), &params, &Patch::Apply(&o.deployment))
        .await?;
    if let Some(svc) = &o.service {
        Api::<Service>::namespaced(client.clone(), ns)
            .patch(&name(svc), &params, &Patch::Apply(svc))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(v: Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    #[test]
    fn a_cluster_ip_service_is_reached_at_its_cluster_ip() {
        let s = service(json!({"spec": {"clusterIP": "10.96.0.20"}}));
        assert_eq!(addresses(&s), vec![Address::Ip("10.96.0.20".into())]);
        assert!(addresses(&service(json!({"spec": {"clusterIP": "None"}}))).is_empty());
    }

    #[test]
    fn a_load_balancer_is_reached_at_its_ingress_once_it_has_one() {
        let s = service(json!({
            "spec": {"clusterIP": "10.96.0.20", "type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "lb.example.com"}]}},
        }));
        assert_eq!(
            addresses(&s),
            vec![
                Address::Ip("203.0.113.7".into()),
                Address::Hostname("lb.example.com".into())
            ]
        );
    }
}
