//! Service networking for the node's pods, as kube-proxy and cluster DNS
//! give it on a real node: a TCP connection from a pod to a Service's
//! ClusterIP, or from a pod or the host to a NodePort on the node's
//! address, is DNATed on the host to one of its ready endpoints, chosen at
//! random; and every pod's `/etc/hosts` names every Service (`name` within
//! its own namespace, `name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local`).
//!
//! A hosts file rather than a DNS server keeps the test bed free of a
//! resolver of its own; glibc reads it before DNS, which is what pods' apps
//! (curl, the proxy, the operator) use. The host reaches ClusterIPs only
//! through NodePorts (it reaches pods by their addresses).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use tracing::warn;

use crate::process::run_with_input;

/// The cluster's DNS domain, as kubelets default it.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// What a pod's hosts file is made of besides the Services.
#[derive(Debug, Clone)]
pub struct PodHosts {
    /// The file bind-mounted at the pod's `/etc/hosts`.
    pub file: PathBuf,
    /// The pod's namespace: its Services get their short names.
    pub namespace: String,
    /// The pod's address and host name, as the kubelet writes them.
    pub ip: IpAddr,
    /// The pod's host name.
    pub hostname: String,
}

/// A Service's name and virtual address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceAddr {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIP.
    pub ip: Ipv4Addr,
}

#[derive(Debug, Default)]
struct State {
    services: Vec<ServiceAddr>,
    rules: String,
    pods: HashMap<String, PodHosts>,
}

/// The node's Service proxy: the nat chain of its bridge and its pods'
/// hosts files, both rewritten whenever Services or endpoints change.
#[derive(Debug)]
pub struct ServiceProxy {
    chain: String,
    node_ip: Ipv4Addr,
    state: Mutex<State>,
}

impl ServiceProxy {
    /// A proxy that writes its rules into nat chain `chain`, with the
    /// NodePorts on `node_ip`.
    pub fn new(chain: String, node_ip: Ipv4Addr) -> ServiceProxy {
        ServiceProxy {
            chain,
            node_ip,
            state: Mutex::default(),
        }
    }

    /// Writes a new pod's hosts file and keeps it current from now on.
    pub fn add_pod(&self, uid: &str, pod: PodHosts) -> Result<(), String> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| "service state poisoned".to_owned())?;
        write_hosts(&pod, &state.services)?;
        state.pods.insert(uid.to_owned(), pod);
        Ok(())
    }

    /// Stops maintaining a pod's hosts file.
    pub fn remove_pod(&self, uid: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.pods.remove(uid);
        }
    }

    /// Brings the rules and hosts files in line with `services` and
    /// `slices`, touching only what changed.
    fn apply(&self, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) {
        let addrs = service_addrs(services);
        let rules = nat_rules(&self.chain, self.node_ip, services, slices);
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if rules != state.rules {
            match run_with_input("iptables-restore", &["-w", "--noflush"], Some(&rules)) {
                Ok(_) => state.rules = rules,
                Err(e) => warn!("service rules: {e}"),
            }
        }
        if addrs != state.services {
            for pod in state.pods.values() {
                if let Err(e) = write_hosts(pod, &addrs) {
                    warn!("hosts file: {e}");
                }
            }
            state.services = addrs;
        }
    }
}

/// Watches Services and EndpointSlices and applies every change.
pub async fn run(client: kube::Client, proxy: Arc<ServiceProxy>) {
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, eps_writer) = reflector::store::<EndpointSlice>();
    let svc_events = reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|e| e.err().map(|e| e.to_string()));
    let eps_events = reflector(
        eps_writer,
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|e| e.err().map(|e| e.to_string()));
    let mut events = futures::stream::select(svc_events.boxed(), eps_events.boxed());
    while let Some(error) = events.next().await {
        if let Some(e) = error {
            warn!("service watch: {e}");
        }
        // Apply a burst of events once.
        while let Some(Some(_)) = events.next().now_or_never() {}
        let (services, slices) = (services.state(), slices.state());
        let proxy = proxy.clone();
        let _ = tokio::task::spawn_blocking(move || proxy.apply(&services, &slices)).await;
    }
}

fn service_addrs(services: &[Arc<Service>]) -> Vec<ServiceAddr> {
    let mut out: Vec<ServiceAddr> = services
        .iter()
        .filter_map(|s| {
            let ip = s.spec.as_ref()?.cluster_ip.as_deref()?.parse().ok()?;
            Some(ServiceAddr {
                namespace: s.namespace()?,
                name: s.name_any(),
                ip,
            })
        })
        .collect();
    out.sort();
    out
}

/// The hosts file of `pod`, as the kubelet writes it, plus the Services.
pub fn hosts_file(pod: &PodHosts, services: &[ServiceAddr]) -> String {
    let mut out = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
        pod.ip, pod.hostname
    );
    for s in services {
        let (name, ns) = (&s.name, &s.namespace);
        let short = if *ns == pod.namespace {
            format!(" {name}")
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{}\t{name}.{ns}.svc.{CLUSTER_DOMAIN} {name}.{ns}.svc {name}.{ns}{short}\n",
            s.ip
        ));
    }
    out
}

fn write_hosts(pod: &PodHosts, services: &[ServiceAddr]) -> Result<(), String> {
    // In place, not by rename: the file is bind-mounted by inode.
    std::fs::write(&pod.file, hosts_file(pod, services))
        .map_err(|e| format!("{}: {e}", pod.file.display()))
}

/// The ready IPv4 endpoints of Service port `port_name` (TCP), from the
/// slices of `namespace/service`.
fn endpoints(
    slices: &[Arc<EndpointSlice>],
    namespace: &str,
    service: &str,
    port_name: Option<&str>,
) -> Vec<(Ipv4Addr, i32)> {
    let mut out = BTreeSet::new();
    let of_service = slices.iter().filter(|s| {
        s.namespace().as_deref() == Some(namespace)
            && s.labels()
                .get("kubernetes.io/service-name")
                .map(String::as_str)
                == Some(service)
            && s.address_type == "IPv4"
    });
    for slice in of_service {
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name.unwrap_or("")
                && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
        });
        let Some(port) = port.and_then(|p| p.port) else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            out.extend(
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                    .map(|ip| (ip, port)),
            );
        }
    }
    out.into_iter().collect()
}

/// The `iptables-restore --noflush` input that replaces `chain` with one
/// DNAT rule per (ClusterIP port, ready endpoint), and likewise per
/// NodePort on `node_ip`, spread evenly: the `k`-th of `n` endpoints is
/// taken with probability `1/(n-k)`, the last always. A port without
/// endpoints gets no rule, so its connections fall to the bridge's
/// forwarding guard and are rejected.
pub fn nat_rules(
    chain: &str,
    node_ip: Ipv4Addr,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
) -> String {
    let mut out = format!("*nat\n:{chain} - [0:0]\n");
    let mut sorted: Vec<&Arc<Service>> = services.iter().collect();
    sorted.sort_by_key(|s| (s.namespace(), s.name_any()));
    for svc in sorted {
        let Some(spec) = &svc.spec else { continue };
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let ns = svc.namespace().unwrap_or_default();
        for port in spec.ports.iter().flatten() {
            if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let eps = endpoints(slices, &ns, &svc.name_any(), port.name.as_deref());
            let fronts = cluster_ip
                .map(|ip| (ip, port.port))
                .into_iter()
                .chain(port.node_port.map(|p| (node_ip, p)));
            for (ip, front) in fronts {
                for (k, (ep, target)) in eps.iter().enumerate() {
                    let pick = if k + 1 == eps.len() {
                        String::new()
                    } else {
                        format!(
                            " -m statistic --mode random --probability {:.5}",
                            1.0 / (eps.len() - k) as f64
                        )
                    };
                    out.push_str(&format!(
                        "-A {chain} -d {ip}/32 -p tcp -m tcp --dport {front}{pick} -j DNAT --to-destination {ep}:{target}\n"
                    ));
                }
            }
        }
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, ip: &str, ports: &[(&str, i32)]) -> Arc<Service> {
        let ports: Vec<serde_json::Value> = ports
            .iter()
            .map(|(n, p)| {
                // A port above 30000 stands for a NodePort of the same number.
                let node_port = (*p >= 30000).then_some(*p);
                serde_json::json!({"name": n, "port": p, "nodePort": node_port})
            })
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": name},
                "spec": {"clusterIP": ip, "ports": ports}
            }))
            .expect("service"),
        )
    }

    fn slice(ns: &str, svc: &str, port: (&str, i32), eps: &[(&str, bool)]) -> Arc<EndpointSlice> {
        let eps: Vec<serde_json::Value> = eps
            .iter()
            .map(|(a, r)| serde_json::json!({"addresses": [a], "conditions": {"ready": r}}))
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": format!("{svc}-x"),
                    "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4",
                "ports": [{"name": port.0, "port": port.1, "protocol": "TCP"}],
                "endpoints": eps
            }))
            .expect("slice"),
        )
    }

    #[test]
    fn spreads_over_ready_endpoints_of_the_matching_port() {
        let services = [
            service(
                "a",
                "web",
                "198.19.0.10",
                &[("http", 8080), ("admin", 9000)],
            ),
            service("a", "headless", "None", &[("http", 80)]),
            service("b", "empty", "198.19.0.11", &[("", 80)]),
        ];
        let slices = [
            slice(
                "a",
                "web",
                ("http", 80),
                &[
                    ("198.18.0.3", true),
                    ("198.18.0.2", true),
                    ("198.18.0.9", false),
                ],
            ),
            slice("a", "headless", ("http", 80), &[("198.18.0.4", true)]),
            slice("b", "web", ("http", 80), &[("198.18.0.5", true)]),
        ];
        let rules = nat_rules("SVC", Ipv4Addr::new(198, 18, 0, 1), &services, &slices);
        assert_eq!(
            rules,
            "*nat\n:SVC - [0:0]\n\
             -A SVC -d 198.19.0.10/32 -p tcp -m tcp --dport 8080 -m statistic --mode random --probability 0.50000 -j DNAT --to-destination 198.18.0.2:80\n\
             -A SVC -d 198.19.0.10/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 198.18.0.3:80\n\
             COMMIT\n"
        );
    }

    #[test]
    fn node_ports_lead_to_the_same_endpoints_on_the_node_address() {
        let services = [service("g", "gw", "198.19.0.20", &[("http", 32080)])];
        let slices = [slice("g", "gw", ("http", 18080), &[("198.18.0.8", true)])];
        let rules = nat_rules("SVC", Ipv4Addr::new(198, 18, 0, 1), &services, &slices);
        assert!(
            rules.contains(
                "-A SVC -d 198.19.0.20/32 -p tcp -m tcp --dport 32080 -j DNAT --to-destination 198.18.0.8:18080\n"
            ) && rules.contains(
                "-A SVC -d 198.18.0.1/32 -p tcp -m tcp --dport 32080 -j DNAT --to-destination 198.18.0.8:18080\n"
            ),
            "{rules}"
        );
    }

    #[test]
    fn hosts_give_short_names_only_within_the_namespace() {
        let pod = PodHosts {
            file: PathBuf::new(),
            namespace: "a".into(),
            ip: "198.18.0.7".parse().expect("ip"),
            hostname: "curl".into(),
        };
        let services = service_addrs(&[
            service("b", "api", "198.19.0.2", &[]),
            service("a", "web", "198.19.0.1", &[]),
        ]);
        let hosts = hosts_file(&pod, &services);
        assert!(hosts.contains("198.18.0.7\tcurl\n"), "{hosts}");
        assert!(
            hosts.contains("198.19.0.1\tweb.a.svc.cluster.local web.a.svc web.a web\n"),
            "{hosts}"
        );
        assert!(
            hosts.contains("198.19.0.2\tapi.b.svc.cluster.local api.b.svc api.b\n"),
            "{hosts}"
        );
    }
}
