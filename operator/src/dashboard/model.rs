//! What the dashboard shows, computed from the operator's own state: the
//! telemetry window (who calls whom, how much, how well), the pods (which
//! version a revision is) and the Rollouts. Pure functions, unit-tested.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde::Serialize;
use sluice_crds::Rollout;
use sluice_crds::rollout::{SetHeaderRoute, SetMirrorRoute};

use crate::traffic::window::{Totals, TrafficKey};

/// Error rate above which an edge is unhealthy (red), and above which it is
/// degraded (amber).
const BAD: f64 = 0.05;
const WARN: f64 = 0.01;

/// A node: a calling workload or a destination workload revision.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Stable id.
    pub id: String,
    /// `source` or `destination`.
    pub kind: &'static str,
    /// What to call it.
    pub label: String,
    /// Its namespace.
    pub namespace: String,
    /// Destination: the Service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Destination: the pod-template hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Destination: the pods' `version` label, when they have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// An edge: traffic from a source to a destination revision.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    /// Source node id.
    pub from: String,
    /// Destination node id.
    pub to: String,
    /// Requests in the window.
    pub requests: u64,
    /// Requests per second over the window.
    pub rps: f64,
    /// This edge's share of its source's traffic into the namespace.
    pub share: f64,
    /// 5xx and failures over requests.
    pub error_rate: f64,
    /// `ok`, `warn` or `bad`.
    pub health: &'static str,
}

/// The workload graph of one namespace.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    /// The namespace.
    pub namespace: String,
    /// Seconds of traffic summed.
    pub window_seconds: u64,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Edges.
    pub edges: Vec<Edge>,
}

/// The `version` label (else the app label) of pods of `revision`.
fn version_of(pods: &[Arc<Pod>], namespace: &str, revision: &str) -> Option<String> {
    pods.iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .find(|p| {
            let l = p.labels();
            l.get("rollouts-pod-template-hash").map(String::as_str) == Some(revision)
                || l.get("pod-template-hash").map(String::as_str) == Some(revision)
        })
        .and_then(|p| {
            let l = p.labels();
            l.get("version").or_else(|| l.get("app")).cloned()
        })
}

fn health(error_rate: f64) -> &'static str {
    if error_rate > BAD {
        "bad"
    } else if error_rate > WARN {
        "warn"
    } else {
        "ok"
    }
}

/// The graph of traffic into (or out of) `namespace` from per-key totals.
pub fn graph(
    namespace: &str,
    window_seconds: u64,
    totals: &BTreeMap<TrafficKey, Totals>,
    pods: &[Arc<Pod>],
) -> Graph {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut edges = Vec::new();
    let mut per_source: BTreeMap<String, u64> = BTreeMap::new();
    for (k, t) in totals {
        if (k.namespace != namespace && k.source_namespace != namespace) || t.requests == 0 {
            continue;
        }
        let from = format!("src:{}/{}", k.source_namespace, k.source_workload);
        let to = format!("dst:{}/{}/{}", k.namespace, k.service, k.revision);
        nodes.entry(from.clone()).or_insert_with(|| Node {
            id: from.clone(),
            kind: "source",
            // What a sidecar received: its callers are not attributed.
            label: if k.source_workload.is_empty() {
                "callers".to_owned()
            } else {
                k.source_workload.clone()
            },
            namespace: k.source_namespace.clone(),
            service: None,
            revision: None,
            version: None,
        });
        let version = (!k.revision.is_empty())
            .then(|| version_of(pods, &k.namespace, &k.revision))
            .flatten();
        nodes.entry(to.clone()).or_insert_with(|| Node {
            id: to.clone(),
            kind: "destination",
            label: match &version {
                Some(v) => format!("{} ({v})", k.service),
                None => k.service.clone(),
            },
            namespace: k.namespace.clone(),
            service: Some(k.service.clone()),
            revision: (!k.revision.is_empty()).then(|| k.revision.clone()),
            version,
        });
        *per_source.entry(from.clone()).or_default() += t.requests;
        edges.push(Edge {
            from,
            to,
            requests: t.requests,
            rps: t.requests as f64 / window_seconds.max(1) as f64,
            share: 0.0,
            error_rate: t.error_rate(),
            health: health(t.error_rate()),
        });
    }
    for e in &mut edges {
        let total = per_source.get(&e.from).copied().unwrap_or(0);
        e.share = if total == 0 {
            0.0
        } else {
            e.requests as f64 / total as f64
        };
    }
    Graph {
        namespace: namespace.to_owned(),
        window_seconds,
        nodes: nodes.into_values().collect(),
        edges,
    }
}

/// One point of a revision's error-rate series.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Unix seconds at the end of the bucket.
    pub t: u64,
    /// Requests in the bucket.
    pub requests: u64,
    /// Error rate in the bucket.
    pub error_rate: f64,
}

/// A Rollout as the rollouts view shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Phase (`Healthy`, `Progressing`, `Paused`, `Degraded`).
    pub phase: String,
    /// Why (`InconclusiveAnalysis`, `AnalysisFailed`, ...), empty if none.
    pub reason: String,
    /// What it is doing.
    pub message: String,
    /// The steps, as short text.
    pub steps: Vec<String>,
    /// Index of the current step.
    pub current_step: Option<i32>,
    /// Weights (stable, canary).
    pub weights: serde_json::Value,
    /// Header routes to the canary in force, as text.
    pub header_routes: Vec<String>,
    /// Mirror routes to the canary in force, as text.
    pub mirror_routes: Vec<String>,
    /// A blue-green Rollout's Services and the revision each selects.
    pub blue_green: Option<BlueGreenView>,
    /// Revisions.
    pub stable_revision: Option<String>,
    /// While a canary runs.
    pub canary_revision: Option<String>,
    /// The latest analysis figures.
    pub analysis: serde_json::Value,
    /// Conditions.
    pub conditions: serde_json::Value,
    /// Error rate over time per revision, from the telemetry window.
    pub series: BTreeMap<String, Vec<Point>>,
    /// Recent events.
    pub events: Vec<serde_json::Value>,
}

/// A blue-green Rollout's Services and the revisions they select.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenView {
    /// `activeService`.
    pub active_service: String,
    /// The revision it selects.
    pub active_revision: Option<String>,
    /// `previewService`, if any.
    pub preview_service: Option<String>,
    /// The revision it selects.
    pub preview_revision: Option<String>,
}

/// A step as text: `setWeight 20`, `pause 5s`, `pause (until promoted)`.
pub fn step_text(step: &serde_json::Value) -> String {
    let Some((kind, value)) = step.as_object().and_then(|o| o.iter().next()) else {
        return step.to_string();
    };
    match (kind.as_str(), value) {
        ("pause", v) => match v.get("duration").and_then(|d| d.as_str()) {
            Some(d) => format!("pause {d}"),
            None => "pause (until promoted)".into(),
        },
        ("setHeaderRoute", v) => match serde_json::from_value::<SetHeaderRoute>(v.clone()) {
            Ok(r) => format!("setHeaderRoute {r}"),
            Err(_) => format!("setHeaderRoute {v}"),
        },
        ("setMirrorRoute", v) => match serde_json::from_value::<SetMirrorRoute>(v.clone()) {
            Ok(r) => format!("setMirrorRoute {r}"),
            Err(_) => format!("setMirrorRoute {v}"),
        },
        (k, serde_json::Value::Number(n)) => format!("{k} {n}"),
        (k, v) => format!("{k} {v}"),
    }
}

/// The view of `ro`, with its series and events.
pub fn rollout_view(
    ro: &Rollout,
    series: BTreeMap<String, Vec<Point>>,
    events: Vec<serde_json::Value>,
) -> RolloutView {
    let spec = serde_json::to_value(&ro.spec).unwrap_or_default();
    let steps = spec
        .pointer("/strategy/canary/steps")
        .and_then(|s| s.as_array())
        .map(|s| s.iter().map(step_text).collect())
        .unwrap_or_default();
    let status = ro.status.clone().unwrap_or_default();
    RolloutView {
        name: ro.name_any(),
        namespace: ro.namespace().unwrap_or_default(),
        phase: status
            .phase
            .as_ref()
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "Pending".into()),
        reason: status.reason.map(|r| r.to_string()).unwrap_or_default(),
        message: status.message.clone().unwrap_or_default(),
        steps,
        current_step: status.current_step_index,
        weights: to_json(&status.weights),
        header_routes: crate::rollout::canary_routes::header_routes_in_force(
            &ro.spec.strategy.canary.steps,
            &status,
        ),
        mirror_routes: crate::rollout::canary_routes::mirror_routes_in_force(
            &ro.spec.strategy.canary.steps,
            &status,
        ),
        blue_green: ro.spec.strategy.blue_green.as_ref().map(|bg| {
            let sel = status.blue_green.as_ref();
            BlueGreenView {
                active_service: bg.active_service.clone(),
                active_revision: sel.map(|s| s.active_revision.clone()),
                preview_service: bg.preview_service.clone(),
                preview_revision: sel.map(|s| s.preview_revision.clone()),
            }
        }),
        stable_revision: status.stable_revision.clone(),
        canary_revision: status.canary_revision.clone(),
        analysis: to_json(&status.analysis),
        conditions: to_json(&status.conditions),
        series,
        events,
    }
}

/// Status fields are plain data: serialising them cannot fail.
fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(src: &str, svc: &str, rev: &str) -> TrafficKey {
        TrafficKey {
            source_namespace: "sluice-system".into(),
            source_workload: src.into(),
            namespace: "h".into(),
            service: svc.into(),
            revision: rev.into(),
            inbound: false,
        }
    }

    fn totals(requests: u64, errors: u64) -> Totals {
        Totals {
            requests,
            errors,
            latency: vec![],
        }
    }

    #[test]
    fn shares_are_per_source_and_versions_come_from_pods() {
        let mut t = BTreeMap::new();
        t.insert(key("gw", "handson-blue", "b1"), totals(300, 0));
        t.insert(key("gw", "handson-yellow", "y1"), totals(100, 10));
        t.insert(key("other", "handson-blue", "b1"), totals(50, 0));
        let pods: Vec<Arc<Pod>> = vec![Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "h", "labels": {"pod-template-hash": "b1", "version": "blue"}}}))
                .expect("pod"),
        )];
        let g = graph("h", 30, &t, &pods);
        let share = |to: &str, from: &str| {
            g.edges
                .iter()
                .find(|e| e.to.contains(to) && e.from.ends_with(from))
                .map(|e| (e.share, e.health))
        };
        assert_eq!(share("handson-blue", "/gw"), Some((0.75, "ok")));
        assert_eq!(share("handson-yellow", "/gw"), Some((0.25, "bad")));
        assert_eq!(share("handson-blue", "/other"), Some((1.0, "ok")));
        let blue = g
            .nodes
            .iter()
            .find(|n| n.revision.as_deref() == Some("b1"))
            .expect("node");
        assert_eq!(blue.version.as_deref(), Some("blue"));
        assert_eq!(blue.label, "handson-blue (blue)");
        // Another namespace sees nothing of it.
        assert!(graph("x", 30, &t, &pods).edges.is_empty());
    }

    #[test]
    fn steps_read_as_text() {
        assert_eq!(step_text(&json!({"setWeight": 20})), "setWeight 20");
        assert_eq!(step_text(&json!({"pause": {"duration": "5s"}})), "pause 5s");
        assert_eq!(step_text(&json!({"pause": {}})), "pause (until promoted)");
        assert_eq!(
            step_text(&json!({"setHeaderRoute": {"name": "testers", "match": [
                {"headerName": "x-canary", "headerValue": {"exact": "yes"}}]}})),
            "setHeaderRoute testers (x-canary=yes)"
        );
    }
}
