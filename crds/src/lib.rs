//! Sluice's custom resources: their Rust types and the CRD YAML generated
//! from them.
//!
//! The committed YAML under `crds/yaml/` is what Helm and the tests install;
//! [`generated_files`] is the single source it is written from, and a test
//! fails when the two differ (`cargo xtask crds` rewrites them).

pub mod analysis;
pub mod annotations;
pub mod authn;
pub mod authz;
pub mod rollout;
mod rules;

pub use analysis::{AnalysisTemplate, ClusterAnalysisTemplate};
pub use authn::{RequestAuthentication, RequestAuthenticationSpec};
pub use authz::{AuthorizationPolicy, AuthorizationPolicySpec};
pub use rollout::{
    Request, Rollout, RolloutPhase, RolloutReason, RolloutSpec, RolloutStatus, Verdict,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    ValidationRule,
};
use kube::CustomResourceExt;

/// Where the generated YAML lives, relative to the workspace root.
pub const YAML_DIR: &str = "crds/yaml";

/// The Helm chart's copy (Helm installs `crds/` before the templates).
pub const CHART_CRDS_DIR: &str = "charts/sluice/crds";

/// Every directory the generated YAML is written to.
pub const OUTPUT_DIRS: [&str; 2] = [YAML_DIR, CHART_CRDS_DIR];

/// Every CRD of the project as `(file name, YAML)`, in a stable order.
pub fn generated_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    let crds = [
        post_process(AnalysisTemplate::crd()),
        post_process(AuthorizationPolicy::crd()),
        post_process(ClusterAnalysisTemplate::crd()),
        post_process(RequestAuthentication::crd()),
        post_process(Rollout::crd()),
    ];
    crds.iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"));
            let body = serde_yaml::to_string(crd)?;
            Ok((name, format!("{HEADER}{body}")))
        })
        .collect()
}

/// Post-processes the derived schema of every version: see
/// [`slim_pod_template`] and [`bound_label_maps`].
fn post_process(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            slim_pod_template(root);
            slim_job_templates(root);
            bound_label_maps(root);
            policy_patterns(root);
            jwt_rule_checks(root);
        }
    }
    crd
}

/// The schema at `path` (property names) below `schema`.
fn at<'a>(schema: &'a mut JSONSchemaProps, path: &[&str]) -> Option<&'a mut JSONSchemaProps> {
    match path.split_first() {
        None => Some(schema),
        Some((key, rest)) => at(schema.properties.as_mut()?.get_mut(*key)?, rest),
    }
}

/// Drops the upstream field descriptions inside `spec.template`.
///
/// The pod template's schema keeps every field and type, so the apiserver
/// still validates it at admission, but its prose (the Kubernetes API docs,
/// ~70% of the bytes) would make the CRD too large for client-side
/// `kubectl apply`; `kubectl explain pod.spec` documents those fields already.
fn slim_pod_template(root: &mut JSONSchemaProps) {
    if let Some(template) = at(root, &["spec", "template"]) {
        for child in template.properties.iter_mut().flat_map(|p| p.values_mut()) {
            strip_descriptions(child);
        }
    }
}

/// Leaves a template's Job spec to the apiserver's Job validation, which
/// runs when the measurement creates the Job (and refuses it with a message
/// the measurement reports): its full schema, a pod spec nested one level
/// deeper than the Rollout's, would double the CRD's size.
fn slim_job_templates(root: &mut JSONSchemaProps) {
    let job = at(root, &["spec", "metrics"])
        .and_then(items)
        .and_then(|metric| at(metric, &["provider", "job", "spec"]));
    if let Some(spec) = job {
        *spec = JSONSchemaProps {
            type_: Some("object".into()),
            description: spec.description.take(),
            x_kubernetes_preserve_unknown_fields: Some(true),
            ..Default::default()
        };
    }
}

/// Gives the label maps that the selector rule reads the bounds Kubernetes
/// enforces anyway (a label value is at most 63 characters), so that the
/// apiserver's CEL cost estimate of the rule stays within budget.
fn bound_label_maps(root: &mut JSONSchemaProps) {
    for path in [
        &["spec", "selector", "matchLabels"][..],
        &["spec", "template", "metadata", "labels"][..],
    ] {
        if let Some(map) = at(root, path) {
            map.max_properties = Some(64);
            if let Some(JSONSchemaPropsOrBool::Schema(values)) = map.additional_properties.as_mut()
            {
                values.max_length = Some(63);
            }
        }
    }
}

/// The schema of a list's items.
fn items(schema: &mut JSONSchemaProps) -> Option<&mut JSONSchemaProps> {
    match schema.items.as_mut()? {
        JSONSchemaPropsOrArray::Schema(s) => Some(s),
        JSONSchemaPropsOrArray::Schemas(_) => None,
    }
}

/// Admission checks of the authorization rules' strings that proxies parse
/// (ports 1-65535, addresses and CIDR blocks, condition keys and their
/// values), so that a typo is refused with the field's path instead of
/// reaching a proxy. Patterns where a pattern says it all, CEL (Kubernetes'
/// `isIP`/`isCIDR`) where it does not; every list and string bounded so
/// that the apiserver's cost estimate of the rules stays within budget.
fn policy_patterns(root: &mut JSONSchemaProps) {
    let Some(rules) = at(root, &["spec", "rules"]) else {
        return;
    };
    rules.max_items = Some(64);
    let Some(rule) = items(rules) else {
        return;
    };
    for list in ["from", "to", "when"] {
        if let Some(l) = at(rule, &[list]) {
            l.max_items = Some(8);
        }
    }
    const PORT: &str = "^[0-9]{1,5}$";
    let keys = format!(
        "^({}|request\\.headers\\[[^\\]]+\\]|request\\.auth\\.claims\\[[^\\]]+\\])$",
        sluice_proto::authz::CONDITION_KEYS
            .iter()
            .map(|k| k.replace('.', "\\."))
            .collect::<Vec<_>>()
            .join("|")
    );
    let port_rule = "self.all(p, p.matches('^[0-9]{1,5}$') && int(p) >= 1 && int(p) <= 65535)";
    let ip_rule = "self.all(b, isIP(b) || isCIDR(b))";
    for list in ["ports", "notPorts"] {
        if let Some(s) = list_at(rule, &["to", "operation", list]) {
            bound_list(s, 32, 5, Some(PORT));
            s.x_kubernetes_validations =
                Some(vec![cel(port_rule, "must be port numbers from 1 to 65535")]);
        }
    }
    for list in ["ipBlocks", "notIpBlocks"] {
        if let Some(s) = list_at(rule, &["from", "source", list]) {
            bound_list(s, 32, 64, None);
            s.x_kubernetes_validations = Some(vec![cel(
                ip_rule,
                "must be IP addresses or CIDR blocks such as 10.0.0.0/16",
            )]);
        }
    }
    for list in [
        &["from", "source", "principals"][..],
        &["from", "source", "notPrincipals"],
        &["from", "source", "namespaces"],
        &["from", "source", "notNamespaces"],
        &["from", "source", "requestPrincipals"],
        &["from", "source", "notRequestPrincipals"],
        &["to", "operation", "hosts"],
        &["to", "operation", "notHosts"],
        &["to", "operation", "methods"],
        &["to", "operation", "notMethods"],
        &["to", "operation", "paths"],
        &["to", "operation", "notPaths"],
    ] {
        if let Some(s) = list_at(rule, list) {
            bound_list(s, 256, 1024, None);
        }
    }
    let Some(when) = at(rule, &["when"]).and_then(items) else {
        return;
    };
    if let Some(key) = at(when, &["key"]) {
        key.pattern = Some(keys);
        key.max_length = Some(128);
    }
    for list in ["values", "notValues"] {
        if let Some(s) = at(when, &[list]) {
            bound_list(s, 16, 128, None);
        }
    }
    let each = |field: &str, check: &str| format!("!has(self.{field}) || self.{field}.{check}");
    let port_values = port_rule.trim_start_matches("self.");
    let ip_values = ip_rule.trim_start_matches("self.");
    when.x_kubernetes_validations = Some(vec![
        cel(
            &format!(
                "self.key != 'source.ip' || (({}) && ({}))",
                each("values", ip_values),
                each("notValues", ip_values)
            ),
            "source.ip values must be IP addresses or CIDR blocks",
        ),
        cel(
            &format!(
                "self.key != 'destination.port' || (({}) && ({}))",
                each("values", port_values),
                each("notValues", port_values)
            ),
            "destination.port values must be port numbers from 1 to 65535",
        ),
    ]);
}

/// Admission checks of a RequestAuthentication's rules: an issuer, keys
/// from somewhere, an http(s) `jwksUri`; bounded so the apiserver's CEL
/// cost estimate stays within budget. What needs parsing (the JWKS
/// document itself) the operator checks, on the resource's status.
fn jwt_rule_checks(root: &mut JSONSchemaProps) {
    let Some(rules) = at(root, &["spec", "jwtRules"]) else {
        return;
    };
    rules.max_items = Some(16);
    let Some(rule) = items(rules) else {
        return;
    };
    if let Some(issuer) = at(rule, &["issuer"]) {
        issuer.min_length = Some(1);
        issuer.max_length = Some(512);
    }
    if let Some(uri) = at(rule, &["jwksUri"]) {
        uri.max_length = Some(2048);
        uri.pattern = Some("^https?://".into());
    }
    if let Some(jwks) = at(rule, &["jwks"]) {
        jwks.max_length = Some(65536);
    }
    for list in ["audiences", "fromParams"] {
        if let Some(l) = at(rule, &[list]) {
            bound_list(l, 32, 256, None);
        }
    }
    if let Some(l) = at(rule, &["fromHeaders"]) {
        l.max_items = Some(8);
    }
    rule.x_kubernetes_validations = Some(vec![cel(
        "has(self.jwks) || has(self.jwksUri)",
        "needs its keys: jwks (inline) or jwksUri",
    )]);
}

/// The list at `path` below a rule: every step but the last into a list's
/// items (`from[]`, `to[]`).
fn list_at<'a>(rule: &'a mut JSONSchemaProps, path: &[&str]) -> Option<&'a mut JSONSchemaProps> {
    let (last, steps) = path.split_last()?;
    let mut cur = rule;
    for key in steps {
        cur = at(cur, &[key])?;
        if matches!(*key, "to" | "from") {
            cur = items(cur)?;
        }
    }
    at(cur, &[last])
}

/// At most `max_items` entries of at most `max_length` characters.
fn bound_list(list: &mut JSONSchemaProps, max_items: i64, max_length: i64, pattern: Option<&str>) {
    list.max_items = Some(max_items);
    if let Some(item) = items(list) {
        item.max_length = Some(max_length);
        if let Some(p) = pattern {
            item.pattern = Some(p.to_owned());
        }
    }
}

fn cel(rule: &str, message: &str) -> ValidationRule {
    ValidationRule {
        rule: rule.to_owned(),
        message: Some(message.to_owned()),
        ..Default::default()
    }
}

fn strip_descriptions(schema: &mut JSONSchemaProps) {
    schema.description = None;
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_descriptions(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        strip_descriptions(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        strip_descriptions(extra);
    }
}

const HEADER: &str =
    "# Generated by `cargo xtask crds` from the Rust types in crds/src. Do not edit.\n";
