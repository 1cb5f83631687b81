//! The sidecars' configs. Outbound: every Service of the mesh by its DNS
//! names and ClusterIP, split by any HttpRoute whose parentRef is the
//! Service (the Gateway API's GAMMA mesh routing: once a route takes a
//! Service port, a request none of its rules match gets 404); the same for a whole
//! namespace, as they differ only in which short names resolve. Inbound:
//! per pod ([`super::inbound`]); pods with the same inbound side share one
//! config.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};

use gateway_api::httproutes::{HttpRoute, HttpRouteParentRefs};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use sluice_proto::config::{
    Config, Inbound, Listener, ListenerProtocol, MeshTcp, Route, WeightedBackend,
};

use super::gateway::{push_parent, status_ref};
use super::inbound::{PodInputs, for_inputs};
use super::rules::{self, Ranked, is_service_ref};
use super::services::{ServiceIndex, ServiceInfo, ServicePort};
use super::{Audience, Cond, ConfigKey, MeshInput, MeshOutput, reason};

/// Where a sidecar takes outbound traffic (the iptables redirect target).
pub use sluice_proto::config::OUTBOUND_PORT;

/// Fills one config per namespace with sidecars, and GAMMA route statuses.
pub fn translate(
    input: &MeshInput,
    index: &ServiceIndex,
    checked: &super::policies::Checked,
    resolved: &super::authn::Resolved,
    out: &mut MeshOutput,
) {
    let gamma: Vec<(&HttpRoute, &HttpRouteParentRefs, String)> = input
        .routes
        .iter()
        .flat_map(|r| {
            let ns = r.namespace().unwrap_or_default();
            r.spec
                .parent_refs
                .iter()
                .flatten()
                .filter(|pr| is_service_ref(pr))
                .map(move |pr| (&**r, pr, pr.namespace.clone().unwrap_or_else(|| ns.clone())))
        })
        .collect();
    for (route, pr, svc_ns) in &gamma {
        let accepted = match index.get(svc_ns, &pr.name) {
            Some(_) => Cond::yes("Accepted", reason::ACCEPTED),
            None => Cond::no(
                "Accepted",
                "NoMatchingParent",
                format!("Service {svc_ns}/{} does not exist", pr.name),
            ),
        };
        let conds = rules::parent_conditions(route, index, accepted);
        push_parent(out, route, status_ref(pr), conds);
    }
    if input.sidecar_pods.is_empty() {
        return;
    }
    let mut outbound: BTreeMap<&str, Config> = BTreeMap::new();
    let pods: HashMap<(&str, &str), &Pod> = input
        .pods
        .iter()
        .map(|p| {
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            ((ns, p.metadata.name.as_deref().unwrap_or_default()), &**p)
        })
        .collect();
    // Each distinct inbound side once, however many replicas share it.
    let mut keys: HashMap<(&str, PodInputs<'_>), ConfigKey> = HashMap::new();
    for (ns, pod) in &input.sidecar_pods {
        let found = pods.get(&(ns.as_str(), pod.as_str())).copied();
        let key = match keys.entry((ns.as_str(), PodInputs::of(found))) {
            Entry::Occupied(known) => known.get().clone(),
            Entry::Vacant(new) => {
                let inbound = for_inputs(input, checked, resolved, ns, &new.key().1);
                let key = ConfigKey::Sidecar(ns.clone(), variant(&inbound));
                let base = outbound
                    .entry(ns.as_str())
                    .or_insert_with(|| namespace_config(ns, index, &gamma));
                out.configs.entry(key.clone()).or_insert_with(|| Config {
                    inbound: Some(inbound),
                    mesh_tls: input.mesh.mesh_tls(),
                    ..base.clone()
                });
                new.insert(key).clone()
            }
        };
        out.sidecars
            .insert(Audience::Sidecar(ns.clone(), pod.clone()), key);
    }
}

/// A key for one inbound side, so that pods with equal ones share a config.
fn variant(inbound: &Inbound) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(inbound).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The outbound config of sidecars in `client_ns`.
fn namespace_config(
    client_ns: &str,
    index: &ServiceIndex,
    gamma: &[(&HttpRoute, &HttpRouteParentRefs, String)],
) -> Config {
    let mut backends = BTreeMap::new();
    let mut with_port: Vec<Route> = Vec::new();
    let mut bare: Vec<Route> = Vec::new();
    let mut mesh_tcp = MeshTcp {
        services: BTreeMap::new(),
        workloads: index.workloads().clone(),
    };
    for svc in index.iter() {
        // Opaque ports of meshed Services: carried over mTLS, balanced by
        // the client's sidecar.
        for port in svc.ports.iter().filter(|p| p.opaque && !p.mesh.is_empty()) {
            if let Some(ip) = svc.cluster_ip {
                let backend = svc.backend(port);
                mesh_tcp
                    .services
                    .insert(SocketAddr::new(ip, port.port), backend.name.clone());
                backends.insert(backend.name.clone(), backend);
            }
        }
        let default_port = svc.default_port().map(|p| p.port);
        for port in svc.ports.iter().filter(|p| !p.opaque) {
            let backend = svc.backend(port);
            let routes_for = |hosts: Vec<String>, scope: String, backends: &mut BTreeMap<_, _>| {
                let mut ranked: Vec<Ranked> = Vec::new();
                for (route, pr, svc_ns) in gamma {
                    let route_ns = route.namespace().unwrap_or_default();
                    // Producer routes (in the Service's namespace) apply to
                    // every client; consumer routes only to their own namespace.
                    let applies = *svc_ns == svc.namespace
                        && pr.name == svc.name
                        && pr.port.is_none_or(|p| i32::from(port.port) == p)
                        && (route_ns == svc.namespace || route_ns == client_ns);
                    if applies {
                        let r = rules::translate(route, &hosts, &scope, index);
                        backends.extend(r.backends);
                        ranked.extend(r.routes);
                    }
                }
                // A port with routes answers 404 to what none of them
                // match (GAMMA); only a port without any goes straight to
                // the Service.
                if !ranked.is_empty() {
                    rules::sort(&mut ranked);
                    return ranked.into_iter().map(|r| r.route).collect();
                }
                vec![Route {
                    name: format!("service/{scope}"),
                    hosts,
                    matches: vec![],
                    backends: vec![WeightedBackend {
                        name: backend.name.clone(),
                        weight: 1,
                    }],
                    timeout: svc.timeouts.request,
                    attempt_timeout: svc.timeouts.backend_request,
                    retries: Some(sluice_proto::config::Retries {
                        attempts: 2,
                        budget: 0.2,
                    }),
                    mirrors: vec![],
                    filters: Default::default(),
                }]
            };
            let scope = format!("{}/{}:{}", svc.namespace, svc.name, port.port);
            with_port.extend(routes_for(
                hosts(svc, port, client_ns, true),
                scope.clone(),
                &mut backends,
            ));
            if Some(port.port) == default_port {
                bare.extend(routes_for(
                    hosts(svc, port, client_ns, false),
                    format!("{scope}/default"),
                    &mut backends,
                ));
            }
            backends.insert(backend.name.clone(), backend);
        }
    }
    with_port.extend(bare);
    Config {
        admin: None,
        backends: backends.into_values().collect(),
        listeners: vec![Listener {
            name: "outbound".into(),
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, OUTBOUND_PORT)),
            protocol: ListenerProtocol::Http,
            routes: with_port,
            backends: vec![],
            tls: None,
        }],
        inbound: None,
        mesh_tls: None,
        mesh_tcp,
    }
}

/// The names a client in `client_ns` may use for `svc` on `port`.
fn hosts(svc: &ServiceInfo, port: &ServicePort, client_ns: &str, with_port: bool) -> Vec<String> {
    let (ns, name) = (&svc.namespace, &svc.name);
    let mut names = vec![
        format!("{name}.{ns}.svc.cluster.local"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}"),
    ];
    if ns == client_ns {
        names.push(name.clone());
    }
    if let Some(ip) = svc.cluster_ip {
        names.push(ip.to_string());
    }
    if with_port {
        names.iter().map(|n| format!("{n}:{}", port.port)).collect()
    } else {
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::fixtures::{pod, route, service, slice};
    use crate::mesh::translate;
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn services_by_name_and_gamma_split() {
        let input = MeshInput {
            routes: vec![route(
                "h",
                "split",
                json!({
                    "parentRefs": [{"group": "", "kind": "Service", "name": "handson", "port": 8080}],
                    "rules": [{"backendRefs": [{"name": "blue", "port": 8080, "weight": 20}, {"name": "yellow", "port": 8080, "weight": 80}]}]
                }),
            )],
            services: vec![
                service("h", "handson", &[("http", 8080, 8080)]),
                service("h", "blue", &[("http", 8080, 8080)]),
                service("h", "yellow", &[("http", 8080, 8080)]),
            ],
            slices: vec![
                slice(
                    "h",
                    "handson",
                    ("http", 8080),
                    &[("10.0.0.2", true, "b"), ("10.0.0.3", true, "y")],
                ),
                slice("h", "blue", ("http", 8080), &[("10.0.0.2", true, "b")]),
                slice("h", "yellow", ("http", 8080), &[("10.0.0.3", true, "y")]),
            ],
            pods: vec![pod("h", "b", "rb"), pod("h", "y", "ry")],
            sidecar_pods: [
                ("h".to_owned(), "b".to_owned()),
                ("other".to_owned(), "o".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        let out = translate(&input);
        let config_of = |ns: &str, pod: &str| {
            &out.configs[&out.sidecars[&Audience::Sidecar(ns.into(), pod.into())]]
        };
        let own = &config_of("h", "b").listeners[0];
        let first_handson = own
            .routes
            .iter()
            .find(|r| r.hosts.iter().any(|h| h == "handson:8080"))
            .expect("a route for handson:8080");
        let split: Vec<(&str, u32)> = first_handson
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.weight))
            .collect();
        assert_eq!(split, vec![("h/blue:8080", 20), ("h/yellow:8080", 80)]);
        // The portless names come after every port-specific route.
        let bare = own
            .routes
            .iter()
            .position(|r| r.hosts.iter().any(|h| h == "handson.h.svc"))
            .expect("bare");
        let last_port = own
            .routes
            .iter()
            .rposition(|r| r.hosts.iter().any(|h| h.contains(':')))
            .expect("ported");
        assert!(bare > last_port);
        // Another namespace gets no short names.
        let other = &config_of("other", "o").listeners[0];
        assert!(other.routes.iter().all(|r| {
            !r.hosts
                .iter()
                .any(|h| h == "handson" || h == "handson:8080")
        }));
        assert!(other.routes.iter().any(|r| {
            r.hosts
                .iter()
                .any(|h| h == "handson.h.svc.cluster.local:8080")
        }));
        let st = &out.routes[&("h".to_owned(), "split".to_owned())];
        assert!(st.parents[0].1.iter().all(|c| c.ok));
    }

    #[test]
    fn replicas_with_the_same_labels_and_ports_share_a_config_and_other_ports_get_their_own() {
        let pod = |name: &str, app: &str, port: u16| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "h", "labels": {"app": app}},
                    "spec": {"containers": [{"name": "app", "ports": [{"containerPort": port}]}]}
                }))
                .expect("pod"),
            )
        };
        let input = MeshInput {
            pods: vec![
                pod("a-1", "a", 8080),
                pod("a-2", "a", 8080),
                pod("a-3", "a", 9090),
                pod("b-1", "b", 8080),
            ],
            sidecar_pods: ["a-1", "a-2", "a-3", "b-1", "not-yet"]
                .map(|p| ("h".to_owned(), p.to_owned()))
                .into(),
            ..Default::default()
        };
        let out = translate(&input);
        let key = |pod: &str| &out.sidecars[&Audience::Sidecar("h".into(), pod.into())];
        let ports = |pod: &str| -> Vec<u16> {
            let inbound = out.configs[key(pod)].inbound.as_ref().expect("inbound");
            inbound.ports.iter().map(|p| p.port).collect()
        };
        assert_eq!(key("a-1"), key("a-2"));
        assert_eq!(ports("a-1"), vec![8080]);
        assert_eq!(ports("a-3"), vec![9090]);
        assert_ne!(key("a-1"), key("a-3"));
        // No policy tells a and b apart: equal inbound sides, one config.
        assert_eq!(key("a-1"), key("b-1"));
        assert_eq!(ports("not-yet"), Vec::<u16>::new());
        let sidecar_configs = out
            .configs
            .keys()
            .filter(|k| matches!(k, ConfigKey::Sidecar(..)));
        assert_eq!(sidecar_configs.count(), 3);
    }

    #[test]
    fn a_port_with_routes_answers_404_to_what_none_of_them_match() {
        let input = MeshInput {
            routes: vec![route(
                "h",
                "v2-only",
                json!({
                    "parentRefs": [{"group": "", "kind": "Service", "name": "handson", "port": 8080}],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                               "backendRefs": [{"name": "handson", "port": 8080}]}]
                }),
            )],
            services: vec![service(
                "h",
                "handson",
                &[("http", 8080, 8080), ("admin", 9000, 9000)],
            )],
            slices: vec![slice(
                "h",
                "handson",
                ("http", 8080),
                &[("10.0.0.2", true, "b")],
            )],
            pods: vec![pod("h", "b", "rb")],
            sidecar_pods: [("h".to_owned(), "b".to_owned())].into(),
            ..Default::default()
        };
        let out = translate(&input);
        let cfg = &out.configs[&out.sidecars[&Audience::Sidecar("h".into(), "b".into())]];
        let routes_of = |host: &str| -> Vec<&Route> {
            cfg.listeners[0]
                .routes
                .iter()
                .filter(|r| r.hosts.iter().any(|h| h == host))
                .collect()
        };
        // Only the route's rule: nothing else catches other paths.
        let taken = routes_of("handson:8080");
        assert_eq!(taken.len(), 1, "{taken:?}");
        assert!(!taken[0].matches.is_empty());
        // The port no route takes still goes to the Service.
        let free = routes_of("handson:9000");
        assert_eq!(free.len(), 1);
        assert!(free[0].matches.is_empty() && free[0].name.starts_with("service/"));
    }

    #[test]
    fn a_services_timeout_annotations_bound_its_sidecar_route_and_an_httproute_says_its_own() {
        use sluice_crds::annotations::{BACKEND_REQUEST_TIMEOUT, REQUEST_TIMEOUT};
        use std::time::Duration;
        let annotated = |name: &str, request: &str, backend: &str| {
            let mut svc = (*service("h", name, &[("http", 8080, 8080)])).clone();
            svc.metadata.annotations = Some(
                [
                    (REQUEST_TIMEOUT.to_owned(), request.to_owned()),
                    (BACKEND_REQUEST_TIMEOUT.to_owned(), backend.to_owned()),
                ]
                .into(),
            );
            Arc::new(svc)
        };
        let input = MeshInput {
            services: vec![
                annotated("slow", "10s", "2500ms"),
                annotated("odd", "ten seconds", "0s"),
                annotated("routed", "10s", "1s"),
                service("h", "plain", &[("http", 8080, 8080)]),
            ],
            routes: vec![route(
                "h",
                "own",
                json!({
                    "parentRefs": [{"group": "", "kind": "Service", "name": "routed", "port": 8080}],
                    "rules": [{"timeouts": {"request": "3s"}, "backendRefs": [{"name": "routed", "port": 8080}]}]
                }),
            )],
            sidecar_pods: [("h".to_owned(), "c".to_owned())].into(),
            ..Default::default()
        };
        let out = translate(&input);
        let config = &out.configs[&out.sidecars[&Audience::Sidecar("h".into(), "c".into())]];
        let timeouts = |host: &str| {
            let r = config.listeners[0]
                .routes
                .iter()
                .find(|r| r.hosts.iter().any(|h| h == host))
                .unwrap_or_else(|| panic!("no route for {host}"));
            (r.timeout, r.attempt_timeout)
        };
        assert_eq!(
            timeouts("slow:8080"),
            (
                Some(Duration::from_secs(10)),
                Some(Duration::from_millis(2500))
            )
        );
        assert_eq!(
            timeouts("odd:8080"),
            (None, None),
            "unparsable and zero set nothing"
        );
        assert_eq!(timeouts("plain:8080"), (None, None));
        // The unparsable one is reported, for a Warning Event on its
        // Service; zero (no timeout) is a valid value.
        let invalid = &out.invalid_service_annotations;
        assert_eq!(invalid.len(), 1, "{invalid:?}");
        let odd = &invalid[&("h".to_owned(), "odd".to_owned())];
        assert_eq!(odd.len(), 1);
        assert_eq!(
            (odd[0].key, odd[0].value.as_str()),
            (REQUEST_TIMEOUT, "ten seconds")
        );
        assert!(odd[0].to_string().contains("not a Gateway API duration"));
        assert_eq!(
            timeouts("routed:8080"),
            (Some(Duration::from_secs(3)), None),
            "the HTTPRoute's rule decides, not the annotations"
        );
    }

    #[test]
    fn opaque_ports_get_no_http_route() {
        let input = MeshInput {
            services: vec![service(
                "h",
                "cache",
                &[
                    ("http", 8080, 8080),
                    ("redis", 6379, 6379),
                    ("tcp-db", 5432, 5432),
                ],
            )],
            sidecar_pods: [("h".to_owned(), "c".to_owned())].into(),
            ..Default::default()
        };
        let out = translate(&input);
        let config = &out.configs[&out.sidecars[&Audience::Sidecar("h".into(), "c".into())]];
        let hosts: Vec<&String> = config.listeners[0]
            .routes
            .iter()
            .flat_map(|r| r.hosts.iter())
            .collect();
        assert!(hosts.iter().any(|h| *h == "cache:8080"), "{hosts:?}");
        assert!(
            !hosts
                .iter()
                .any(|h| h.ends_with(":6379") || h.ends_with(":5432")),
            "{hosts:?}"
        );
    }

    #[test]
    fn opaque_ports_and_pod_addresses_of_meshed_pods_go_over_mtls() {
        let meshed = |name: &str, ip: &str, sa: &str, extra: serde_json::Value| -> Arc<Pod> {
            let mut v = json!({
                "metadata": {"name": name, "namespace": "h"},
                "spec": {"serviceAccountName": sa, "containers": [{"name": "app"}],
                    "initContainers": [{"name": "sluice-proxy", "restartPolicy": "Always"}]},
                "status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}
            });
            json_patch::merge(&mut v, &extra);
            Arc::new(serde_json::from_value(v).expect("pod"))
        };
        let input = MeshInput {
            services: vec![service(
                "h",
                "db",
                &[("tcp-db", 5432, 5432), ("http", 8080, 8080)],
            )],
            slices: vec![
                slice(
                    "h",
                    "db",
                    ("tcp-db", 5432),
                    &[("10.0.0.2", true, "db-1"), ("10.0.0.9", true, "plain")],
                ),
                slice("h", "db", ("http", 8080), &[("10.0.0.2", true, "db-1")]),
            ],
            pods: vec![
                meshed("db-1", "10.0.0.2", "db", json!({})),
                meshed(
                    "on-host",
                    "192.168.0.5",
                    "x",
                    json!({"spec": {"hostNetwork": true}}),
                ),
                meshed(
                    "done",
                    "10.0.0.7",
                    "x",
                    json!({"status": {"phase": "Succeeded"}}),
                ),
                pod("h", "plain", "p"),
            ],
            sidecar_pods: [("h".to_owned(), "db-1".to_owned())].into(),
            mesh: crate::mesh::MeshSettings {
                trust_domain: "cluster.local".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let out = translate(&input);
        let config = &out.configs[&out.sidecars[&Audience::Sidecar("h".into(), "db-1".into())]];
        let tcp = &config.mesh_tcp;
        let db: SocketAddr = "198.19.0.10:5432".parse().expect("addr");
        assert_eq!(tcp.services.get(&db).map(String::as_str), Some("h/db:5432"));
        // The HTTP port has its routes; only the opaque one is listed.
        assert_eq!(tcp.services.len(), 1, "{:?}", tcp.services);
        let backend = config
            .backends
            .iter()
            .find(|b| b.name == "h/db:5432")
            .expect("the opaque port's backend");
        let meshed_ep: SocketAddr = "10.0.0.2:5432".parse().expect("addr");
        assert_eq!(
            backend.mesh.get(&meshed_ep).map(String::as_str),
            Some("spiffe://cluster.local/ns/h/sa/db")
        );
        assert_eq!(
            backend.endpoints.len(),
            2,
            "plain endpoints stay, in plaintext"
        );
        let workloads: Vec<(&str, Vec<String>)> = tcp
            .workloads
            .iter()
            .map(|(id, ips)| (id.as_str(), ips.iter().map(|ip| ip.to_string()).collect()))
            .collect();
        assert_eq!(
            workloads,
            [(
                "spiffe://cluster.local/ns/h/sa/db",
                vec!["10.0.0.2".to_owned()]
            )],
            "host-network and finished pods are left out"
        );
    }
}
