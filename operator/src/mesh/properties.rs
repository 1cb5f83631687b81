//! Property tests of the translation: whatever routes, gateways and
//! policies the cluster holds (even what admission would refuse), it
//! translates without a panic, and every config it pushes is one the
//! proxies' own compiler accepts.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_crds::AuthorizationPolicy;

use super::fixtures::{class, gateway, pod, route, service, slice};
use super::{CONTROLLER_NAME, MeshInput, MeshSettings, translate};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("*".to_owned()),
        "[a-z0-9./:*\\[\\]-]{1,20}",
        any::<String>(),
    ]
}

fn backend() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("blue".to_owned()), Just("nope".to_owned()), text()],
        any::<Option<i32>>(),
        any::<Option<i32>>(),
    )
        .prop_map(|(name, port, weight)| json!({"name": name, "port": port, "weight": weight}))
}

fn rule() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(backend(), 0..3),
        proptest::option::of(text()),
        proptest::option::of(prop_oneof![
            Just("Exact"),
            Just("PathPrefix"),
            Just("RegularExpression")
        ]),
        proptest::option::of(text()),
        prop_oneof![Just("Exact"), Just("RegularExpression")],
    )
        .prop_map(|(backends, path, kind, header, header_kind)| {
            let mut m = json!({});
            if let (Some(p), Some(k)) = (path, kind) {
                m["path"] = json!({"type": k, "value": p});
            }
            if let Some(h) = header {
                m["headers"] = json!([{"name": h.clone(), "type": header_kind, "value": h}]);
            }
            json!({"matches": [m], "backendRefs": backends})
        })
}

fn http_route() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(rule(), 0..3),
        proptest::collection::vec(text(), 0..2),
        any::<bool>(),
    )
        .prop_map(|(rules, hostnames, mesh)| {
            let parent = if mesh {
                json!({"group": "", "kind": "Service", "name": "blue", "port": 8080})
            } else {
                json!({"name": "gw"})
            };
            json!({"parentRefs": [parent], "hostnames": hostnames, "rules": rules})
        })
}

fn policy() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("ALLOW"), Just("DENY"), Just("AUDIT")],
        proptest::collection::vec(text(), 0..3),
        proptest::collection::vec(text(), 0..3),
        proptest::collection::vec(text(), 0..3),
        text(),
        proptest::collection::vec(text(), 0..2),
    )
        .prop_map(|(action, ips, ports, methods, key, values)| {
            json!({"action": action, "rules": [{
                "from": [{"source": {"ipBlocks": ips, "principals": methods.clone()}}],
                "to": [{"operation": {"ports": ports, "methods": methods}}],
                "when": [{"key": key, "values": values}],
            }]})
        })
}

fn listener_port() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(18080),
        Just(i32::from(sluice_proto::probes::ADMIN_PORT)),
        any::<i32>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_routes_gateways_and_policies_translate_and_every_pushed_policy_compiles(
        routes in proptest::collection::vec(http_route(), 0..4),
        policies in proptest::collection::vec(policy(), 0..4),
        ports in proptest::collection::vec(listener_port(), 1..3),
    ) {
        let listeners: Vec<Value> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| json!({"name": format!("l{i}"), "port": p, "protocol": "HTTP"}))
            .collect();
        let input = MeshInput {
            classes: vec![class("sluice", CONTROLLER_NAME)],
            gateways: vec![gateway("h", "gw", "sluice", Value::Array(listeners))],
            routes: routes
                .into_iter()
                .enumerate()
                .map(|(i, r)| route("h", &format!("r{i}"), r))
                .collect(),
            services: vec![service("h", "blue", &[("http", 8080, 8080)])],
            slices: vec![slice("h", "blue", ("http", 8080), &[("198.18.0.5", true, "blue-1")])],
            pods: vec![pod("h", "blue-1", "abc")],
            policies: policies
                .into_iter()
                .enumerate()
                .filter_map(|(i, spec)| {
                    serde_json::from_value::<AuthorizationPolicy>(json!({
                        "apiVersion": "sluice.dev/v1alpha1", "kind": "AuthorizationPolicy",
                        "metadata": {"name": format!("p{i}"), "namespace": "h"},
                        "spec": spec,
                    }))
                    .ok()
                    .map(Arc::new)
                })
                .collect(),
            sidecar_pods: BTreeSet::from([("h".to_owned(), "blue-1".to_owned())]),
            mesh: MeshSettings {
                root_namespace: "sluice-system".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let out = translate(&input);
        for config in out.configs.values() {
            if let Some(inbound) = &config.inbound {
                prop_assert!(sluice_authz::Policies::compile(&inbound.policies).is_ok());
            }
            for l in &config.listeners {
                prop_assert_ne!(l.address.port(), sluice_proto::probes::ADMIN_PORT);
            }
        }
    }
}
