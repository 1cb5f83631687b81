//! A container's environment, resolved as the kubelet does: `env` with
//! `valueFrom` (field, ConfigMap and Secret references), `envFrom`, and
//! `$(VAR)` expansion in values, command and args.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;

/// Resolves `container`'s environment inside `pod`. Kubernetes'
/// `KUBERNETES_SERVICE_HOST`/`PORT` point at `apiserver` so that in-cluster
/// clients work.
pub async fn resolve(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    image_env: &[(String, String)],
    apiserver: std::net::SocketAddr,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        (
            "HOSTNAME".into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        ("KUBERNETES_SERVICE_HOST".into(), apiserver.ip().to_string()),
        (
            "KUBERNETES_SERVICE_PORT".into(),
            apiserver.port().to_string(),
        ),
        (
            "KUBERNETES_SERVICE_PORT_HTTPS".into(),
            apiserver.port().to_string(),
        ),
    ];
    env.extend(image_env.iter().cloned());
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            match Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(&r.name)
                .await
            {
                Ok(Some(cm)) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                Ok(None) if optional => {}
                Ok(None) => return Err(format!("configmap {:?} not found", r.name)),
                Err(e) => return Err(format!("configmap {:?}: {e}", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            match Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(&r.name)
                .await
            {
                Ok(Some(s)) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                Ok(None) if optional => {}
                Ok(None) => return Err(format!("secret {:?} not found", r.name)),
                Err(e) => return Err(format!("secret {:?}: {e}", r.name)),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                field(pod, &f.field_path).ok_or_else(|| {
                    format!("env {}: unsupported fieldPath {}", var.name, f.field_path)
                })?
            } else if let Some(r) = &from.config_map_key_ref {
                let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
                    .get_opt(&r.name)
                    .await
                    .map_err(|e| format!("env {}: configmap {:?}: {e}", var.name, r.name))?;
                match cm.and_then(|c| c.data).and_then(|d| d.get(&r.key).cloned()) {
                    Some(v) => v,
                    None if r.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(format!(
                            "env {}: key {:?} of configmap {:?} not found",
                            var.name, r.key, r.name
                        ));
                    }
                }
            } else if let Some(r) = &from.secret_key_ref {
                let s = Api::<Secret>::namespaced(client.clone(), ns)
                    .get_opt(&r.name)
                    .await
                    .map_err(|e| format!("env {}: secret {:?}: {e}", var.name, r.name))?;
                match s.and_then(|s| s.data).and_then(|d| d.get(&r.key).cloned()) {
                    Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                    None if r.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(format!(
                            "env {}: key {:?} of secret {:?} not found",
                            var.name, r.key, r.name
                        ));
                    }
                }
            } else if from.resource_field_ref.is_some() {
                "0".to_owned()
            } else {
                return Err(format!("env {}: empty valueFrom", var.name));
            }
        } else {
            let lookup: BTreeMap<String, String> = env.iter().cloned().collect();
            expand(var.value.as_deref().unwrap_or(""), &lookup)
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// The value of a downward-API `fieldPath`.
pub fn field(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let map_entry = |map: &Option<BTreeMap<String, String>>, rest: &str| {
        let key = rest.trim_start_matches("['").trim_end_matches("']");
        map.as_ref().and_then(|m| m.get(key).cloned())
    };
    Some(match path {
        "metadata.name" => meta.name.clone()?,
        "metadata.namespace" => meta.namespace.clone()?,
        "metadata.uid" => meta.uid.clone()?,
        "spec.nodeName" => spec?.node_name.clone()?,
        "spec.serviceAccountName" => spec?
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        "status.podIP" => status?.pod_ip.clone()?,
        "status.hostIP" => status?.host_ip.clone()?,
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        p if p.starts_with("metadata.labels[") => {
            map_entry(&meta.labels, &p["metadata.labels".len()..])?
        }
        p if p.starts_with("metadata.annotations[") => {
            map_entry(&meta.annotations, &p["metadata.annotations".len()..])?
        }
        _ => return None,
    })
}

fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.map(|m| m.iter().map(|(k, v)| format!("{k}=\"{v}\"\n")).collect())
        .unwrap_or_default()
}

/// Expands `$(VAR)` from `env`; `$$(VAR)` escapes; unknown names stay as written.
pub fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_known_vars_and_keeps_unknown_and_escaped() {
        let env: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$HOME $(A", &env), "$HOME $(A");
    }
}
