//! Pods that no kubelet runs, for benchmarks that play thousands of
//! sidecars: a Node object whose lease this harness renews, and pods bound
//! to it whose status (phase, address) the harness writes as a kubelet
//! would. The operator sees them as it sees any pod; a client on this host
//! speaks for one by connecting from its address (each pod gets its own
//! loopback address, all of which are this host's).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::{Cluster, Error};

/// How often the node's lease is renewed (a kubelet's default).
const LEASE_RENEWAL: Duration = Duration::from_secs(10);

/// A node without a kubelet; its lease stops being renewed on drop.
pub struct VirtualNode {
    name: String,
    renewal: JoinHandle<()>,
}

impl Drop for VirtualNode {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

impl VirtualNode {
    /// Registers Node `name` as Ready and keeps its lease fresh, so that
    /// the node lifecycle controller leaves its pods alone.
    pub async fn start(cluster: &Cluster, name: &str) -> Result<VirtualNode, Error> {
        let client = cluster.client();
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"sluice.dev/virtual": "true"}},
            // Nothing may be scheduled here by accident.
            "spec": {"taints": [{"key": "sluice.dev/virtual", "effect": "NoSchedule"}]},
        }))
        .map_err(setup)?;
        nodes.create(&PostParams::default(), &node).await?;
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": [{
                    "type": "Ready", "status": "True", "reason": "VirtualNode",
                    "message": "a benchmark's node: no kubelet",
                    "lastHeartbeatTime": now(), "lastTransitionTime": now(),
                }]}})),
            )
            .await?;
        let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        }))
        .map_err(setup)?;
        leases.create(&PostParams::default(), &lease).await?;
        let lease_name = name.to_owned();
        let renewal = tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_RENEWAL);
            loop {
                tick.tick().await;
                let renew = json!({"spec": {"renewTime": now_micro()}});
                if let Err(e) = leases
                    .patch(&lease_name, &PatchParams::default(), &Patch::Merge(renew))
                    .await
                {
                    tracing::warn!("renewing virtual node lease {lease_name}: {e}");
                }
            }
        });
        Ok(VirtualNode {
            name: name.to_owned(),
            renewal,
        })
    }

    /// Creates one Running pod per entry of `pods` (name, labels, address)
    /// in `namespace`, running as `account`, with an app container on port
    /// 8080 and a `sluice-proxy` container (so that the mesh counts it as a
    /// sidecar's pod), `concurrency` API writes at a time.
    pub async fn pods(
        &self,
        cluster: &Cluster,
        namespace: &str,
        account: &str,
        pods: Vec<(String, BTreeMap<String, String>, Ipv4Addr)>,
        concurrency: usize,
    ) -> Result<(), Error> {
        let api: Api<Pod> = Api::namespaced(cluster.client(), namespace);
        futures::stream::iter(pods)
            .map(|(name, labels, ip)| {
                let api = api.clone();
                async move {
                    let pod: Pod = serde_json::from_value(json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": namespace, "labels": labels},
                        "spec": {
                            "nodeName": self.name,
                            "serviceAccountName": account,
                            "tolerations": [{"operator": "Exists"}],
                            "containers": [
                                {"name": "app", "image": sluice_proto::images::PAUSE,
                                 "ports": [{"name": "http", "containerPort": 8080}]},
                                {"name": sluice_proto::bootstrap::PROXY_CONTAINER,
                                 "image": sluice_proto::images::PAUSE},
                            ],
                        },
                    }))
                    .map_err(setup)?;
                    api.create(&PostParams::default(), &pod).await?;
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {
                            "phase": "Running",
                            "podIP": ip.to_string(),
                            "podIPs": [{"ip": ip.to_string()}],
                            "conditions": [{"type": "Ready", "status": "True"}],
                        }})),
                    )
                    .await?;
                    Ok::<_, Error>(())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

/// The `n`th address of the loopback block (127.0.1.1 onwards, 250 per
/// /24): every one is this host's without configuring anything.
pub fn loopback_address(n: usize) -> Ipv4Addr {
    let n = u32::try_from(n).unwrap_or(u32::MAX).min(250 * 250 - 1);
    Ipv4Addr::new(127, 0, (1 + n / 250) as u8, (1 + n % 250) as u8)
}

fn setup(e: serde_json::Error) -> Error {
    Error::Setup(e.to_string())
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn now_micro() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Microsecond)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_distinct_and_skip_network_and_broadcast_like_octets() {
        assert_eq!(loopback_address(0), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(loopback_address(249), Ipv4Addr::new(127, 0, 1, 250));
        assert_eq!(loopback_address(250), Ipv4Addr::new(127, 0, 2, 1));
        let all: std::collections::BTreeSet<_> = (0..1000).map(loopback_address).collect();
        assert_eq!(all.len(), 1000);
    }
}
