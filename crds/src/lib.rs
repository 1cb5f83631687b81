//! Sluice's custom resources: their Rust types and the CRD YAML generated
//! from them.
//!
//! The committed YAML under `crds/yaml/` is what Helm and the tests install;
//! [`generated_files`] is the single source it is written from, and a test
//! fails when the two differ (`cargo xtask crds` rewrites them).

pub mod authz;
pub mod rollout;

pub use authz::{AuthorizationPolicy, AuthorizationPolicySpec};
pub use rollout::{Rollout, RolloutPhase, RolloutSpec, RolloutStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
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
        post_process(AuthorizationPolicy::crd()),
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
            bound_label_maps(root);
            policy_patterns(root);
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

/// Patterns on the authorization rules' strings that proxies parse (ports,
/// address blocks, condition keys), so that a typo is refused at admission
/// with the field's path instead of reaching a proxy.
fn policy_patterns(root: &mut JSONSchemaProps) {
    let Some(rule) = at(root, &["spec", "rules"]).and_then(items) else {
        return;
    };
    const PORT: &str = "^[0-9]{1,5}$";
    const CIDR: &str = "^[0-9a-fA-F:.]+(/[0-9]{1,3})?$";
    let keys = format!(
        "^({}|request\\.headers\\[[^\\]]+\\])$",
        sluice_proto::authz::CONDITION_KEYS
            .iter()
            .map(|k| k.replace('.', "\\."))
            .collect::<Vec<_>>()
            .join("|")
    );
    let mut set = |path: &[&str], pattern: &str| {
        let mut cur = Some(&mut *rule);
        for (i, key) in path.iter().enumerate() {
            cur = cur.and_then(|s| at(s, &[key]));
            // Every step but the last into a list's items: to[], from[], when[].
            if i + 1 < path.len() && matches!(*key, "to" | "from" | "when") {
                cur = cur.and_then(items);
            }
        }
        let last = cur.and_then(|s| if s.items.is_some() { items(s) } else { Some(s) });
        if let Some(s) = last {
            s.pattern = Some(pattern.to_owned());
        }
    };
    set(&["to", "operation", "ports"], PORT);
    set(&["to", "operation", "notPorts"], PORT);
    set(&["from", "source", "ipBlocks"], CIDR);
    set(&["from", "source", "notIpBlocks"], CIDR);
    set(&["when", "key"], &keys);
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
