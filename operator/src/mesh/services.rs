//! Services and their ready endpoints, joined from Services, EndpointSlices
//! and Pods: what a backendRef or a sidecar's outbound route resolves to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use sluice_crds::annotations;
use sluice_proto::config::{Backend, UpstreamProtocol};

use super::grants::{Grants, Kind};
use crate::stored::SERVICE_NAME_LABEL;

/// Labels that name a pod's revision, most specific first.
const REVISION_LABELS: [&str; 2] = ["rollouts-pod-template-hash", "pod-template-hash"];

/// A pod's revision: the template hash its ReplicaSet labels it with.
pub fn revision_of(pod: &Pod) -> Option<&String> {
    let labels = pod.labels();
    REVISION_LABELS.iter().find_map(|l| labels.get(*l))
}

/// One port of a Service, with the endpoints behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePort {
    /// The port's name (may be empty for single-port Services).
    pub name: String,
    /// The Service port clients use.
    pub port: u16,
    /// Ready endpoint addresses (pod IP and target port), sorted.
    pub endpoints: Vec<SocketAddr>,
    /// `http2` for `appProtocol: kubernetes.io/h2c` or ports named
    /// `grpc*`/`http2*`.
    pub protocol: UpstreamProtocol,
    /// Endpoints whose pod runs a sidecar, with the pod's SPIFFE ID.
    pub mesh: BTreeMap<SocketAddr, String>,
    /// Not HTTP (see [`opaque_port`]): sidecars pass it through.
    pub opaque: bool,
}

/// Whether a port carries something other than HTTP, by Istio's explicit
/// protocol selection: its `appProtocol`, else its name or the name's
/// prefix before a dash (`tcp`, `tls`, `https`, `mongo`, `mysql`, `redis`,
/// as in `redis` or `tcp-db`). Sidecars route HTTP only; what they would
/// misread as HTTP passes through to where it was going.
pub fn opaque_port(name: &str, app_protocol: Option<&str>) -> bool {
    const OPAQUE: [&str; 6] = ["tcp", "tls", "https", "mongo", "mysql", "redis"];
    let protocol = app_protocol.unwrap_or_else(|| name.split('-').next().unwrap_or_default());
    OPAQUE.iter().any(|p| protocol.eq_ignore_ascii_case(p))
}

/// A Service as the mesh sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its ClusterIP, if it has one.
    pub cluster_ip: Option<IpAddr>,
    /// Ports in spec order.
    pub ports: Vec<ServicePort>,
    /// The revision all its ready endpoints run, when they agree.
    pub revision: Option<String>,
    /// Its timeouts for sidecar routes no HTTPRoute sets.
    pub timeouts: ServiceTimeouts,
    /// Its annotations of Sluice's that do not parse.
    pub invalid: Vec<InvalidAnnotation>,
}

/// A Service's own upstream timeouts, for the sidecar routes to it that no
/// HTTPRoute decides (an HTTPRoute's rule says its own). Set by annotations
/// ([`sluice_crds::annotations`]), as Linkerd's Service timeout annotations
/// are; none without them, as in Istio.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceTimeouts {
    /// Until the response starts, retries included.
    pub request: Option<Duration>,
    /// Until the response starts, per attempt.
    pub backend_request: Option<Duration>,
}

/// An annotation of Sluice's on a Service whose value does not parse: it
/// sets nothing, and the Service gets a Warning Event saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidAnnotation {
    /// The annotation.
    pub key: &'static str,
    /// Its value.
    pub value: String,
}

impl std::fmt::Display for InvalidAnnotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "annotation {}: {:?} is not a Gateway API duration (e.g. 500ms, 10s, 1m); no timeout is set from it",
            self.key, self.value
        )
    }
}

impl ServiceTimeouts {
    /// Read from `svc`'s annotations; zero sets nothing (no timeout, as in
    /// an HTTPRoute), and so does a value that is not a Gateway API
    /// duration, which is returned beside them.
    pub fn of(svc: &Service) -> (ServiceTimeouts, Vec<InvalidAnnotation>) {
        let mut invalid = Vec::new();
        let mut read = |key: &'static str| {
            let value = svc.annotations().get(key)?;
            match value.parse::<gateway_api::Duration>() {
                Ok(d) => super::rules::timeout_of(d),
                Err(_) => {
                    invalid.push(InvalidAnnotation {
                        key,
                        value: value.clone(),
                    });
                    None
                }
            }
        };
        let timeouts = ServiceTimeouts {
            request: read(annotations::REQUEST_TIMEOUT),
            backend_request: read(annotations::BACKEND_REQUEST_TIMEOUT),
        };
        (timeouts, invalid)
    }
}

impl ServiceInfo {
    /// The port clients reach without naming one: 80 if the Service has
    /// it, else its first port.
    pub fn default_port(&self) -> Option<&ServicePort> {
        self.ports
            .iter()
            .find(|p| p.port == 80)
            .or_else(|| self.ports.first())
    }

    /// The proxy backend for `port`.
    pub fn backend(&self, port: &ServicePort) -> Backend {
        Backend {
            name: backend_name(&self.namespace, &self.name, port.port),
            endpoints: port.endpoints.clone(),
            protocol: port.protocol,
            revision: self.revision.clone(),
            connect_timeout: Duration::from_secs(2),
            service: Some(format!("{}/{}", self.namespace, self.name)),
            respond: None,
            mesh: port.mesh.clone(),
        }
    }
}

pub use sluice_proto::bootstrap::PROXY_CONTAINER;

/// Whether a pod runs Sluice's sidecar (as a container or a native
/// sidecar init container).
pub fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER)
    })
}

/// The SPIFFE ID of a pod that runs a sidecar, when the mesh has a trust
/// domain.
fn pod_identity(pod: &Pod, trust_domain: &str) -> Option<String> {
    if trust_domain.is_empty() || !has_sidecar(pod) {
        return None;
    }
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let ns = pod.namespace().unwrap_or_default();
    Some(sluice_proto::config::spiffe_id(trust_domain, &ns, sa))
}

/// The identities of live pods with a sidecar (from `identities`, by
/// (namespace, pod)), each with its pods' addresses, sorted. Pods on the
/// host's network share the node's address and are left out, as are
/// finished pods, whose address a new pod may have taken.
fn workloads(
    pods: &[Arc<Pod>],
    identities: &BTreeMap<(String, String), String>,
) -> BTreeMap<String, Vec<IpAddr>> {
    let mut out = BTreeMap::new();
    for p in pods {
        let host_network = p
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let status = p.status.as_ref();
        let finished = status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
        if host_network || finished {
            continue;
        }
        let Some(id) = identities.get(&(p.namespace().unwrap_or_default(), p.name_any())) else {
            continue;
        };
        let ips = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|ip| ip.ip.as_str())
            .chain(status.and_then(|s| s.pod_ip.as_deref()));
        let addresses: &mut Vec<IpAddr> = out.entry(id.clone()).or_default();
        addresses.extend(ips.filter_map(|ip| ip.parse::<IpAddr>().ok()));
    }
    for addresses in out.values_mut() {
        addresses.sort_unstable();
        addresses.dedup();
    }
    out.retain(|_, addresses| !addresses.is_empty());
    out
}

/// `namespace/name:port`: the backend of one Service port.
pub fn backend_name(namespace: &str, name: &str, port: u16) -> String {
    format!("{namespace}/{name}:{port}")
}

/// Services by (namespace, name), and the ReferenceGrants that let routes
/// of other namespaces name them: what backendRefs resolve against.
#[derive(Debug, Default, Clone)]
pub struct ServiceIndex {
    services: BTreeMap<(String, String), ServiceInfo>,
    grants: Grants,
    workloads: BTreeMap<String, Vec<IpAddr>>,
}

impl ServiceIndex {
    /// Joins the three kinds; with a `trust_domain`, endpoints of pods that
    /// run a sidecar carry their SPIFFE ID.
    pub fn build(
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        pods: &[Arc<Pod>],
        trust_domain: &str,
    ) -> ServiceIndex {
        let pod_revisions: BTreeMap<(String, String), String> = pods
            .iter()
            .filter_map(|p| {
                let rev = revision_of(p)?;
                Some((
                    (p.namespace().unwrap_or_default(), p.name_any()),
                    rev.clone(),
                ))
            })
            .collect();
        let pod_identities: BTreeMap<(String, String), String> = pods
            .iter()
            .filter_map(|p| {
                let id = pod_identity(p, trust_domain)?;
                Some(((p.namespace().unwrap_or_default(), p.name_any()), id))
            })
            .collect();
        let workloads = workloads(pods, &pod_identities);
        let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
        for s in slices {
            if let Some(svc) = s.labels().get(SERVICE_NAME_LABEL) {
                by_service
                    .entry((s.namespace().unwrap_or_default(), svc.clone()))
                    .or_default()
                    .push(s);
            }
        }
        let mut index = ServiceIndex {
            workloads,
            ..ServiceIndex::default()
        };
        for svc in services {
            let namespace = svc.namespace().unwrap_or_default();
            let name = svc.name_any();
            let Some(spec) = &svc.spec else { continue };
            let key = (namespace.clone(), name.clone());
            let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            let mut revisions = BTreeSet::new();
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .filter_map(|p| {
                    let port = u16::try_from(p.port).ok()?;
                    let pname = p.name.clone().unwrap_or_default();
                    let mut endpoints = BTreeSet::new();
                    let mut mesh = BTreeMap::new();
                    for slice in slices {
                        let Some(target) = slice
                            .ports
                            .iter()
                            .flatten()
                            .find(|sp| sp.name.as_deref().unwrap_or("") == pname)
                        else {
                            continue;
                        };
                        let Some(target_port) = target.port.and_then(|p| u16::try_from(p).ok())
                        else {
                            continue;
                        };
                        for ep in slice.endpoints.iter().flatten() {
                            let ready =
                                ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                            if !ready {
                                continue;
                            }
                            let pod_key = ep
                                .target_ref
                                .as_ref()
                                .filter(|r| r.kind.as_deref() == Some("Pod"))
                                .map(|pod| {
                                    (
                                        pod.namespace.clone().unwrap_or_else(|| namespace.clone()),
                                        pod.name.clone().unwrap_or_default(),
                                    )
                                });
                            if let Some(rev) = pod_key.as_ref().and_then(|k| pod_revisions.get(k)) {
                                revisions.insert(rev.clone());
                            }
                            let identity = pod_key.as_ref().and_then(|k| pod_identities.get(k));
                            for a in &ep.addresses {
                                if let Ok(ip) = a.parse::<IpAddr>() {
                                    let addr = SocketAddr::new(ip, target_port);
                                    endpoints.insert(addr);
                                    if let Some(id) = identity {
                                        mesh.insert(addr, id.clone());
                                    }
                                }
                            }
                        }
                    }
                    let h2 = p.app_protocol.as_deref() == Some("kubernetes.io/h2c")
                        || pname.starts_with("grpc")
                        || pname.starts_with("http2");
                    let opaque = opaque_port(&pname, p.app_protocol.as_deref());
                    Some(ServicePort {
                        opaque,
                        name: pname,
                        port,
                        endpoints: endpoints.into_iter().collect(),
                        mesh,
                        protocol: if h2 {
                            UpstreamProtocol::Http2
                        } else {
                            UpstreamProtocol::Auto
                        },
                    })
                })
                .collect();
            let cluster_ip = spec
                .cluster_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            let revision = (revisions.len() == 1)
                .then(|| revisions.into_iter().next())
                .flatten();
            let (timeouts, invalid) = ServiceTimeouts::of(svc);
            index.services.insert(
                key,
                ServiceInfo {
                    namespace,
                    name,
                    cluster_ip,
                    ports,
                    revision,
                    timeouts,
                    invalid,
                },
            );
        }
        index
    }

    /// The SPIFFE IDs of pods behind a sidecar (none without a trust
    /// domain), each with its pods' addresses: where sidecars carry TCP
    /// over mTLS.
    pub fn workloads(&self) -> &BTreeMap<String, Vec<IpAddr>> {
        &self.workloads
    }

    /// Each Service with annotations of Sluice's that do not parse, by
    /// (namespace, name).
    pub fn invalid_annotations(
        &self,
    ) -> impl Iterator<Item = (&(String, String), &[InvalidAnnotation])> {
        self.services
            .iter()
            .filter(|(_, s)| !s.invalid.is_empty())
            .map(|(k, s)| (k, s.invalid.as_slice()))
    }

    /// The index with `grants` for references across namespaces.
    pub fn with_grants(self, grants: Grants) -> ServiceIndex {
        ServiceIndex { grants, ..self }
    }

    /// The ReferenceGrants (Gateways naming Secrets check them too).
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Whether an HTTPRoute in `route_ns` may send to Service
    /// `namespace/name` (see [`Grants::permits`]).
    pub fn route_may_use(&self, route_ns: &str, namespace: &str, name: &str) -> bool {
        let route = Kind::gateway_api("HTTPRoute", route_ns);
        self.grants
            .permits(route, Kind::core("Service", namespace), name)
    }

    /// The Service `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&ServiceInfo> {
        self.services.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Every Service, sorted by namespace and name.
    pub fn iter(&self) -> impl Iterator<Item = &ServiceInfo> {
        self.services.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::fixtures::{pod, service, slice};

    #[test]
    fn joins_ready_endpoints_and_revision() {
        let idx = ServiceIndex::build(
            &[service("h", "blue", &[("http", 8080, 9001)])],
            &[slice(
                "h",
                "blue",
                ("http", 9001),
                &[("10.0.0.2", true, "b-1"), ("10.0.0.3", false, "b-2")],
            )],
            &[pod("h", "b-1", "abc"), pod("h", "b-2", "abc")],
            "cluster.local",
        );
        let s = idx.get("h", "blue").expect("indexed");
        assert_eq!(
            s.ports[0].endpoints,
            vec!["10.0.0.2:9001".parse().expect("addr")]
        );
        assert_eq!(s.revision.as_deref(), Some("abc"));
        let b = s.backend(&s.ports[0]);
        assert_eq!(b.name, "h/blue:8080");
        assert_eq!(b.service.as_deref(), Some("h/blue"));
    }

    #[test]
    fn mixed_revisions_have_none() {
        let idx = ServiceIndex::build(
            &[service("h", "all", &[("", 80, 8080)])],
            &[slice(
                "h",
                "all",
                ("", 8080),
                &[("10.0.0.2", true, "a"), ("10.0.0.3", true, "b")],
            )],
            &[pod("h", "a", "one"), pod("h", "b", "two")],
            "",
        );
        let s = idx.get("h", "all").expect("indexed");
        assert_eq!(s.ports[0].endpoints.len(), 2);
        assert_eq!(s.revision, None);
        assert_eq!(s.default_port().map(|p| p.port), Some(80));
    }
}
