//! A proxy's hello, checked against the pod it names: the pure decision
//! ([`check`]) and the wait for a pod that has just started ([`verify_proxy`]).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use sluice_proto::mesh::ProxyIdentity;
use sluice_proto::mesh::proxy_identity::Role;

use super::{Peer, Reason, Refusal};
use crate::gateway_infra::{GATEWAY_NAME_LABEL, resource_name};
use crate::mesh::services::revision_of;
use crate::mesh::{GatewayInfra, gateway};
use crate::world::World;

/// A proxy whose hello its connection proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProxy {
    /// Its pod's namespace.
    pub namespace: String,
    /// Its pod.
    pub pod: String,
    /// Sidecar or gateway.
    pub role: Role,
    /// For a gateway proxy, the proxies it is one of: the shared ones, or
    /// a dedicated Gateway's.
    pub gateway: Option<GatewayInfra>,
    /// The pod's revision (its template hash), empty without one.
    pub revision: String,
    /// The workload the pod belongs to: its controller's name without the
    /// revision suffix (`handson` for ReplicaSet `handson-5d8f7c9b4`).
    pub workload: String,
}

/// What a gateway proxy may be, besides a sidecar.
pub struct GatewayScope<'a> {
    /// The shared gateway runs here (where only cluster administrators
    /// create pods), as the chart installs it.
    pub root_namespace: &'a str,
    /// The service account a dedicated Gateway's proxies run as, given its
    /// (namespace, name); `None` when no Gateway of the dedicated class has
    /// that name.
    pub dedicated_account: &'a (dyn Fn(&str, &str) -> Option<String> + Sync),
}

/// Decides whether `hello` is proven by `peer`, given the pod it names as
/// the cache has it. A gateway is the shared one when it runs in the root
/// namespace, or a dedicated Gateway's when its pod carries that Gateway's
/// name label and runs as the account the operator made for it (so it
/// gets the config of a Gateway of its own namespace only).
pub fn check(
    peer: &Peer,
    hello: &ProxyIdentity,
    pod: Option<&Pod>,
    scope: &GatewayScope<'_>,
) -> Result<VerifiedProxy, Refusal> {
    let role = match Role::try_from(hello.role) {
        Ok(r @ (Role::Sidecar | Role::Gateway)) => r,
        _ => {
            return Err(Refusal::new(
                Reason::BadHello,
                "hello: role must be ROLE_SIDECAR or ROLE_GATEWAY",
            ));
        }
    };
    if hello.namespace.is_empty() || hello.pod_name.is_empty() {
        return Err(Refusal::new(
            Reason::BadHello,
            "hello: namespace and pod_name are required",
        ));
    }
    if hello.namespace != peer.id.namespace {
        return Err(Refusal::new(
            Reason::Namespace,
            format!(
                "the hello names namespace {:?}, but the certificate is {}",
                hello.namespace, peer.id
            ),
        ));
    }
    let named = format!("{}/{}", hello.namespace, hello.pod_name);
    let pod = pod
        .filter(|p| !ended(p))
        .ok_or_else(|| Refusal::new(Reason::UnknownPod, format!("no running pod {named}")))?;
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    if account != peer.id.service_account {
        return Err(Refusal::new(
            Reason::ServiceAccount,
            format!(
                "pod {named} runs as service account {account:?}, but the certificate is {}",
                peer.id
            ),
        ));
    }
    let addresses = pod_ips(pod);
    if !peer.addr.is_some_and(|a| addresses.contains(&a)) {
        return Err(Refusal::new(
            Reason::Address,
            format!(
                "pod {named} has addresses {addresses:?}, the connection comes from {:?}",
                peer.addr
            ),
        ));
    }
    let gateway = match role {
        Role::Gateway => Some(gateway_of(pod, account, &hello.namespace, scope)?),
        _ => None,
    };
    Ok(VerifiedProxy {
        namespace: hello.namespace.clone(),
        pod: hello.pod_name.clone(),
        role,
        gateway,
        revision: revision_of(pod).cloned().unwrap_or_default(),
        workload: workload_of(pod),
    })
}

/// Which gateway proxies `pod` (running as `account` in `namespace`) is
/// one of.
fn gateway_of(
    pod: &Pod,
    account: &str,
    namespace: &str,
    scope: &GatewayScope<'_>,
) -> Result<GatewayInfra, Refusal> {
    if let Some(name) = pod.labels().get(GATEWAY_NAME_LABEL)
        && (scope.dedicated_account)(namespace, name).as_deref() == Some(account)
    {
        return Ok(GatewayInfra::Dedicated {
            namespace: namespace.to_owned(),
            name: name.clone(),
        });
    }
    if namespace == scope.root_namespace {
        return Ok(GatewayInfra::Shared);
    }
    Err(Refusal::new(
        Reason::GatewayNamespace,
        format!(
            "gateways run in {:?} or as a dedicated Gateway's proxies, not as {namespace}/{account}",
            scope.root_namespace
        ),
    ))
}

fn ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return vec![];
    };
    status
        .pod_ips
        .iter()
        .flatten()
        .map(|i| i.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect()
}

/// The pod's workload: its controller's name, less the revision suffix a
/// ReplicaSet carries; the pod's own name without a controller.
pub fn workload_of(pod: &Pod) -> String {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner else {
        return pod.name_any();
    };
    match revision_of(pod).and_then(|r| owner.name.strip_suffix(&format!("-{r}"))) {
        Some(base) if owner.kind == "ReplicaSet" => base.to_owned(),
        _ => owner.name.clone(),
    }
}

/// How long a hello may wait for its pod to show up in the cache with its
/// address: the kubelet reports a pod's IP moments after its containers
/// (the sidecar among them) start.
const POD_WAIT: Duration = Duration::from_secs(5);

/// [`check`] against the cache, waiting a little while the pod is not
/// known yet or has no address yet.
pub async fn verify_proxy(
    world: &World,
    peer: &Peer,
    hello: &ProxyIdentity,
    root_namespace: &str,
) -> Result<VerifiedProxy, Refusal> {
    let dedicated_class = world.mesh().dedicated_class.clone();
    let dedicated_account = |ns: &str, name: &str| {
        let gw = world.gateway(ns, name)?;
        match gateway::infra_of(&gw, &dedicated_class) {
            GatewayInfra::Dedicated { .. } => Some(resource_name(name, &dedicated_class)),
            GatewayInfra::Shared => None,
        }
    };
    let scope = GatewayScope {
        root_namespace,
        dedicated_account: &dedicated_account,
    };
    let deadline = Instant::now() + POD_WAIT;
    loop {
        let pod = world.pod(&hello.namespace, &hello.pod_name);
        match check(peer, hello, pod.as_deref(), &scope) {
            Err(r)
                if matches!(r.reason, Reason::UnknownPod | Reason::Address)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_identity::SpiffeId;

    fn peer(ns: &str, sa: &str, ip: &str) -> Peer {
        Peer {
            id: SpiffeId {
                trust_domain: "cluster.local".into(),
                namespace: ns.into(),
                service_account: sa.into(),
            },
            addr: ip.parse().ok(),
        }
    }

    fn no_dedicated(_: &str, _: &str) -> Option<String> {
        None
    }

    fn root(ns: &'static str) -> GatewayScope<'static> {
        GatewayScope {
            root_namespace: ns,
            dedicated_account: &no_dedicated,
        }
    }

    fn hello(ns: &str, pod: &str, role: Role) -> ProxyIdentity {
        ProxyIdentity {
            namespace: ns.into(),
            pod_name: pod.into(),
            role: role as i32,
            ..Default::default()
        }
    }

    fn pod(ns: &str, name: &str, sa: &str, ip: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": ns,
                "labels": {"pod-template-hash": "5d8f7c9b4"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "handson-5d8f7c9b4", "uid": "u", "controller": true}],
            },
            "spec": {"serviceAccountName": sa, "containers": []},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .expect("pod")
    }

    #[test]
    fn a_sidecar_is_the_pod_its_certificate_and_address_prove() {
        let p = pod("handson", "web-1", "web", "10.1.0.5");
        let v = check(
            &peer("handson", "web", "10.1.0.5"),
            &hello("handson", "web-1", Role::Sidecar),
            Some(&p),
            &root("sluice-system"),
        )
        .expect("verified");
        assert_eq!(v.revision, "5d8f7c9b4");
        assert_eq!(v.workload, "handson");
    }

    #[test]
    fn a_certificate_of_one_namespace_cannot_ask_for_another() {
        let p = pod("b", "web-1", "y", "10.1.0.5");
        let e = check(
            &peer("a", "x", "10.1.0.5"),
            &hello("b", "web-1", Role::Sidecar),
            Some(&p),
            &root("sluice-system"),
        )
        .expect_err("refused");
        assert_eq!(e.reason, Reason::Namespace);
        assert_eq!(e.status().code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn another_account_or_another_address_is_refused() {
        let p = pod("a", "web-1", "web", "10.1.0.5");
        let h = hello("a", "web-1", Role::Sidecar);
        let e =
            check(&peer("a", "curl", "10.1.0.5"), &h, Some(&p), &root("s")).expect_err("account");
        assert_eq!(e.reason, Reason::ServiceAccount);
        let e =
            check(&peer("a", "web", "10.1.0.6"), &h, Some(&p), &root("s")).expect_err("address");
        assert_eq!(e.reason, Reason::Address);
        let e = check(&peer("a", "web", "10.1.0.5"), &h, None, &root("s")).expect_err("no pod");
        assert_eq!(e.reason, Reason::UnknownPod);
    }

    #[test]
    fn gateways_only_run_in_the_root_namespace() {
        let p = pod("a", "gw-1", "gw", "10.1.0.5");
        let e = check(
            &peer("a", "gw", "10.1.0.5"),
            &hello("a", "gw-1", Role::Gateway),
            Some(&p),
            &root("sluice-system"),
        )
        .expect_err("refused");
        assert_eq!(e.reason, Reason::GatewayNamespace);
        let p = pod("sluice-system", "gw-1", "gw", "10.1.0.5");
        assert!(
            check(
                &peer("sluice-system", "gw", "10.1.0.5"),
                &hello("sluice-system", "gw-1", Role::Gateway),
                Some(&p),
                &root("sluice-system"),
            )
            .is_ok()
        );
    }

    #[test]
    fn a_dedicated_gateways_pod_gets_its_gateway_only_with_its_account() {
        let account = |ns: &str, name: &str| {
            (ns == "shop" && name == "edge").then(|| "edge-sluice-dedicated".to_owned())
        };
        let scope = GatewayScope {
            root_namespace: "sluice-system",
            dedicated_account: &account,
        };
        let mut p = pod("shop", "edge-1", "edge-sluice-dedicated", "10.1.0.5");
        p.labels_mut()
            .insert(GATEWAY_NAME_LABEL.into(), "edge".into());
        let h = hello("shop", "edge-1", Role::Gateway);
        let v = check(
            &peer("shop", "edge-sluice-dedicated", "10.1.0.5"),
            &h,
            Some(&p),
            &scope,
        )
        .expect("verified");
        assert_eq!(
            v.gateway,
            Some(GatewayInfra::Dedicated {
                namespace: "shop".into(),
                name: "edge".into()
            })
        );
        // The label alone proves nothing: another account of the namespace
        // is refused, and so is a label naming a Gateway that is not
        // dedicated.
        let mut other = pod("shop", "edge-1", "web", "10.1.0.5");
        other
            .labels_mut()
            .insert(GATEWAY_NAME_LABEL.into(), "edge".into());
        let e = check(&peer("shop", "web", "10.1.0.5"), &h, Some(&other), &scope)
            .expect_err("another account");
        assert_eq!(e.reason, Reason::GatewayNamespace);
        p.labels_mut()
            .insert(GATEWAY_NAME_LABEL.into(), "shared-one".into());
        let e = check(
            &peer("shop", "edge-sluice-dedicated", "10.1.0.5"),
            &h,
            Some(&p),
            &scope,
        )
        .expect_err("not a dedicated Gateway");
        assert_eq!(e.reason, Reason::GatewayNamespace);
    }

    #[test]
    fn an_ipv4_mapped_source_matches_the_pod_ip() {
        let p = pod("a", "web-1", "web", "10.1.0.5");
        let mut pr = peer("a", "web", "10.1.0.5");
        pr.addr = Some(
            "::ffff:10.1.0.5"
                .parse::<IpAddr>()
                .expect("ip")
                .to_canonical(),
        );
        assert!(
            check(
                &pr,
                &hello("a", "web-1", Role::Sidecar),
                Some(&p),
                &root("s")
            )
            .is_ok()
        );
    }
}
