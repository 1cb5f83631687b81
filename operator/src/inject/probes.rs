//! Probe rewriting for intercepted pods: an app container's HTTP GET, TCP
//! and gRPC probes are pointed at the sidecar's admin port, which runs the
//! original probe against the app over loopback (see
//! [`sluice_proto::probes`]). Exec probes run inside the container and need
//! nothing; HTTPS probes and probes to another host are left as they are.

use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use sluice_proto::probes::{ADMIN_PORT, AppProbe, AppProbes, Check, Grpc, HttpGet, probe_path};

/// The JSON Patch operations that rewrite `spec`'s app probes, and the
/// original probes the sidecar must run.
pub fn rewrite(spec: &PodSpec) -> (Vec<Value>, AppProbes) {
    let mut ops = Vec::new();
    let mut probes = AppProbes::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let fields = [
            ("readinessProbe", "readiness", &c.readiness_probe),
            ("livenessProbe", "liveness", &c.liveness_probe),
            ("startupProbe", "startup", &c.startup_probe),
        ];
        for (field, kind, probe) in fields {
            let Some(probe) = probe else { continue };
            let Some(original) = app_probe(c, probe) else {
                continue;
            };
            let path = probe_path(&c.name, kind);
            let Ok(Value::Object(mut new)) = serde_json::to_value(probe) else {
                continue;
            };
            new.remove("tcpSocket");
            new.remove("grpc");
            new.insert(
                "httpGet".into(),
                json!({"path": path, "port": ADMIN_PORT, "scheme": "HTTP"}),
            );
            ops.push(json!({
                "op": "replace",
                "path": format!("/spec/containers/{i}/{field}"),
                "value": new,
            }));
            probes.insert(path, original);
        }
    }
    (ops, probes)
}

/// What the sidecar must run for `probe`, when it is one it can run.
fn app_probe(c: &Container, probe: &Probe) -> Option<AppProbe> {
    let timeout_seconds = probe
        .timeout_seconds
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or(1);
    if let Some(h) = &probe.http_get {
        let https = h.scheme.as_deref().is_some_and(|s| s != "HTTP");
        if h.host.is_some() || https {
            return None;
        }
        let headers = h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return Some(AppProbe {
            port: port(c, &h.port)?,
            check: Check::HttpGet(HttpGet {
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                headers,
            }),
            timeout_seconds,
        });
    }
    if let Some(g) = &probe.grpc {
        return Some(AppProbe {
            port: u16::try_from(g.port).ok()?,
            check: Check::Grpc(Grpc {
                service: g.service.clone().unwrap_or_default(),
            }),
            timeout_seconds,
        });
    }
    let t = probe.tcp_socket.as_ref()?;
    if t.host.is_some() {
        return None;
    }
    Some(AppProbe {
        port: port(c, &t.port)?,
        check: Check::TcpSocket,
        timeout_seconds,
    })
}

/// A probe's port as a number; a name is looked up in the container's ports.
fn port(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(s) => s.parse().ok().or_else(|| {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s))
                .and_then(|p| u16::try_from(p.container_port).ok())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> PodSpec {
        serde_json::from_value(v).expect("pod spec")
    }

    #[test]
    fn http_tcp_and_grpc_probes_move_to_the_admin_port() {
        let s = spec(json!({"containers": [{
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http",
                "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "periodSeconds": 2},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3},
            "startupProbe": {"exec": {"command": ["true"]}}
        }, {
            "name": "rpc",
            "readinessProbe": {"grpc": {"port": 9090, "service": "sluice.Demo"}, "failureThreshold": 5},
            "livenessProbe": {"grpc": {"port": 9090}}
        }]}));
        let (ops, probes) = rewrite(&s);
        assert_eq!(ops.len(), 4, "{ops:#?}");
        assert_eq!(ops[0]["path"], "/spec/containers/0/readinessProbe");
        assert_eq!(
            ops[0]["value"],
            json!({"httpGet": {"path": "/app-health/web/readiness", "port": 15021, "scheme": "HTTP"},
                "periodSeconds": 2})
        );
        assert_eq!(
            ops[1]["value"],
            json!({"httpGet": {"path": "/app-health/web/liveness", "port": 15021, "scheme": "HTTP"},
                "timeoutSeconds": 3})
        );
        assert_eq!(
            probes.get("/app-health/web/readiness"),
            Some(&AppProbe {
                port: 8080,
                check: Check::HttpGet(HttpGet {
                    path: "/healthz".into(),
                    headers: vec![("X-Probe".into(), "1".into())]
                }),
                timeout_seconds: 1,
            })
        );
        assert_eq!(
            probes.get("/app-health/web/liveness"),
            Some(&AppProbe {
                port: 8080,
                check: Check::TcpSocket,
                timeout_seconds: 3
            })
        );
        assert_eq!(
            ops[2]["value"],
            json!({"httpGet": {"path": "/app-health/rpc/readiness", "port": 15021, "scheme": "HTTP"},
                "failureThreshold": 5})
        );
        assert_eq!(
            probes.get("/app-health/rpc/readiness").map(|p| &p.check),
            Some(&Check::Grpc(Grpc {
                service: "sluice.Demo".into()
            }))
        );
        assert_eq!(
            probes.get("/app-health/rpc/liveness").map(|p| &p.check),
            Some(&Check::Grpc(Grpc::default()))
        );
    }

    #[test]
    fn leaves_what_the_sidecar_cannot_run() {
        let s = spec(json!({"containers": [{
            "name": "web",
            "readinessProbe": {"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}},
            "livenessProbe": {"httpGet": {"path": "/", "port": "missing"}},
            "startupProbe": {"tcpSocket": {"port": 80, "host": "example.test"}}
        }]}));
        assert_eq!(rewrite(&s), (vec![], AppProbes::new()));
    }
}
