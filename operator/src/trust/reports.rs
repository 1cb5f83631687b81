//! Which telemetry a verified proxy may speak for. A sidecar reports the
//! requests its own pod received, and the operator attributes them to
//! that pod (namespace, workload, revision) from the cache, not from the
//! report; a gateway reports what it sent, as itself. Anything else is
//! refused delta by delta and counted in `sluice_telemetry_refused_total`.
//! Latency vectors have the contract's length, so no reporter sizes the
//! operator's memory.

use sluice_proto::mesh::TrafficDelta;
use sluice_proto::mesh::proxy_identity::Role;
use sluice_proto::telemetry::LATENCY_CELLS;

use super::VerifiedProxy;

/// Why a delta was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeltaRefusal {
    /// A sidecar speaking for another pod, or for what it sent.
    NotOwnPod,
    /// A gateway claiming a pod's inbound side.
    GatewayInbound,
    /// A latency vector of another length, or more errors than requests.
    Shape,
}

impl DeltaRefusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeltaRefusal::NotOwnPod => "not_own_pod",
            DeltaRefusal::GatewayInbound => "gateway_inbound",
            DeltaRefusal::Shape => "shape",
        }
    }
}

/// Keeps the deltas `proxy` may report, attributed; calls `refused` for
/// each other one.
pub fn admit(
    proxy: &VerifiedProxy,
    deltas: Vec<TrafficDelta>,
    mut refused: impl FnMut(DeltaRefusal),
) -> Vec<TrafficDelta> {
    deltas
        .into_iter()
        .filter_map(|d| match attribute(proxy, d) {
            Ok(d) => Some(d),
            Err(r) => {
                refused(r);
                None
            }
        })
        .collect()
}

/// Whether `d` has the contract's shape: a latency vector of the
/// contract's length (or none), no more errors than requests. Checked on
/// relayed deltas too, which are otherwise taken as attributed.
pub fn well_formed(d: &TrafficDelta) -> bool {
    (d.latency_buckets.is_empty() || d.latency_buckets.len() == LATENCY_CELLS)
        && d.errors <= d.requests
}

fn attribute(proxy: &VerifiedProxy, mut d: TrafficDelta) -> Result<TrafficDelta, DeltaRefusal> {
    if !well_formed(&d) {
        return Err(DeltaRefusal::Shape);
    }
    match proxy.role {
        Role::Gateway => {
            if d.inbound {
                return Err(DeltaRefusal::GatewayInbound);
            }
            d.source_namespace.clone_from(&proxy.namespace);
            d.source_workload.clone_from(&proxy.workload);
            Ok(d)
        }
        _ => {
            let own = |claimed: &str, actual: &str| claimed.is_empty() || claimed == actual;
            if !d.inbound
                || !own(&d.destination_namespace, &proxy.namespace)
                || !own(&d.destination_revision, &proxy.revision)
                || !own(&d.destination_service, &proxy.workload)
            {
                return Err(DeltaRefusal::NotOwnPod);
            }
            d.destination_namespace.clone_from(&proxy.namespace);
            d.destination_service.clone_from(&proxy.workload);
            d.destination_revision.clone_from(&proxy.revision);
            // The caller is not proven by this report: not attributed.
            d.source_namespace.clear();
            d.source_workload.clear();
            Ok(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar() -> VerifiedProxy {
        VerifiedProxy {
            namespace: "handson".into(),
            pod: "handson-abc-1".into(),
            role: Role::Sidecar,
            gateway: None,
            revision: "abc".into(),
            workload: "handson".into(),
        }
    }

    fn delta(inbound: bool, ns: &str, rev: &str, requests: u64, errors: u64) -> TrafficDelta {
        TrafficDelta {
            destination_namespace: ns.into(),
            destination_revision: rev.into(),
            destination_service: String::new(),
            requests,
            errors,
            latency_buckets: vec![0; LATENCY_CELLS],
            inbound,
            source_namespace: "elsewhere".into(),
            source_workload: "claimed".into(),
            ..Default::default()
        }
    }

    fn admitted(
        proxy: &VerifiedProxy,
        deltas: Vec<TrafficDelta>,
    ) -> (Vec<TrafficDelta>, Vec<DeltaRefusal>) {
        let mut refusals = vec![];
        let kept = admit(proxy, deltas, |r| refusals.push(r));
        (kept, refusals)
    }

    #[test]
    fn a_sidecar_reports_only_its_own_pods_inbound_traffic() {
        let (kept, refused) = admitted(
            &sidecar(),
            vec![
                delta(true, "", "", 10, 1),
                delta(true, "handson", "abc", 5, 0),
                // Another team's canary, by name.
                delta(true, "other", "f00", 100, 100),
                // The same revision's other pods are not this pod's to report.
                delta(true, "handson", "def", 100, 100),
                // What it sent: not its own to vouch for.
                delta(false, "handson", "abc", 100, 0),
            ],
        );
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|d| d.destination_namespace == "handson"
            && d.destination_revision == "abc"
            && d.destination_service == "handson"
            && d.source_workload.is_empty()));
        assert_eq!(refused, vec![DeltaRefusal::NotOwnPod; 3]);
    }

    #[test]
    fn a_gateway_reports_what_it_sent_as_itself() {
        let gw = VerifiedProxy {
            namespace: "sluice-system".into(),
            pod: "gw-1".into(),
            role: Role::Gateway,
            gateway: Some(crate::mesh::GatewayInfra::Shared),
            revision: "r".into(),
            workload: "sluice-gateway".into(),
        };
        let (kept, refused) = admitted(
            &gw,
            vec![
                delta(false, "handson", "abc", 10, 0),
                delta(true, "handson", "abc", 10, 0),
            ],
        );
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].source_workload, "sluice-gateway");
        assert_eq!(kept[0].destination_revision, "abc");
        assert_eq!(refused, vec![DeltaRefusal::GatewayInbound]);
    }

    #[test]
    fn the_shape_is_the_contracts() {
        let mut long = delta(true, "", "", 1, 0);
        long.latency_buckets = vec![1; 100_000];
        let (kept, refused) = admitted(&sidecar(), vec![long, delta(true, "", "", 1, 2)]);
        assert!(kept.is_empty());
        assert_eq!(refused, vec![DeltaRefusal::Shape; 2]);
    }
}
