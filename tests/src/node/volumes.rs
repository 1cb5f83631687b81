//! Pod volumes on the host: `emptyDir`, `hostPath`, `configMap`, `secret`,
//! `downwardAPI` and `projected` (with `serviceAccountToken` requested
//! through the TokenRequest API and renewed as the kubelet does). Containers
//! see them at their `mountPath` through bind mounts in a private mount
//! namespace (see [`super::container`]).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, KeyToPath, Pod, Secret, ServiceAccount, Volume, VolumeProjection,
};
use kube::Api;
use kube::api::PostParams;

use super::env::field;

/// A bind mount for one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A service-account token file that must be renewed.
#[derive(Debug)]
struct Token {
    file: PathBuf,
    audience: Option<String>,
    expiration_seconds: i64,
    renew_at: Option<Instant>,
    mode: u32,
}

/// The volumes of one pod, materialised under its directory.
#[derive(Debug)]
pub struct PodVolumes {
    paths: BTreeMap<String, PathBuf>,
    tokens: Vec<Token>,
}

impl PodVolumes {
    /// Creates every volume of `pod` under `root` and fills it.
    pub async fn prepare(
        client: &kube::Client,
        pod: &Pod,
        root: &Path,
    ) -> Result<PodVolumes, String> {
        let mut vols = PodVolumes {
            paths: BTreeMap::new(),
            tokens: Vec::new(),
        };
        for v in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let path = if let Some(host) = &v.host_path {
                let p = PathBuf::from(&host.path);
                if matches!(host.type_.as_deref(), Some("DirectoryOrCreate")) {
                    std::fs::create_dir_all(&p)
                        .map_err(|e| format!("hostPath {}: {e}", p.display()))?;
                }
                p
            } else {
                let p = root.join(&v.name);
                std::fs::create_dir_all(&p).map_err(|e| format!("volume {}: {e}", v.name))?;
                p
            };
            if let Some(projected) = &v.projected {
                let mode = projected.default_mode.unwrap_or(0o644) as u32;
                for source in projected.sources.iter().flatten() {
                    if let Some(t) = &source.service_account_token {
                        vols.tokens.push(Token {
                            file: path.join(&t.path),
                            audience: t.audience.clone().filter(|a| !a.is_empty()),
                            expiration_seconds: t.expiration_seconds.unwrap_or(3600).max(600),
                            renew_at: None,
                            mode,
                        });
                    }
                }
            }
            if v.empty_dir.is_none()
                && v.host_path.is_none()
                && v.config_map.is_none()
                && v.secret.is_none()
                && v.projected.is_none()
                && v.downward_api.is_none()
            {
                return Err(format!(
                    "volume {}: unsupported volume type on this node",
                    v.name
                ));
            }
            vols.paths.insert(v.name.clone(), path);
        }
        vols.sync(client, pod).await?;
        Ok(vols)
    }

    /// Rewrites ConfigMap, Secret and downward-API files whose content
    /// changed, and renews tokens past 80% of their lifetime.
    pub async fn sync(&mut self, client: &kube::Client, pod: &Pod) -> Result<(), String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        for v in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let Some(dir) = self.paths.get(&v.name).cloned() else {
                continue;
            };
            write_volume(client, ns, pod, v, &dir).await?;
        }
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        for t in &mut self.tokens {
            if t.renew_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            let req = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: t.audience.clone().map(|a| vec![a]),
                    expiration_seconds: Some(t.expiration_seconds),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: pod.metadata.name.clone(),
                        uid: pod.metadata.uid.clone(),
                    }),
                }),
                ..Default::default()
            };
            let resp = Api::<ServiceAccount>::namespaced(client.clone(), ns)
                .create_token_request(&sa, &PostParams::default(), &req)
                .await
                .map_err(|e| format!("token for service account {sa:?}: {e}"))?;
            let token = resp.status.and_then(|s| s.token).unwrap_or_default();
            write_atomic(&t.file, token.as_bytes(), t.mode)?;
            t.renew_at =
                Some(Instant::now() + Duration::from_secs((t.expiration_seconds as u64) * 8 / 10));
        }
        Ok(())
    }

    /// The bind mounts of `container`'s `volumeMounts`.
    pub fn mounts_for(&self, container: &Container) -> Result<Vec<Mount>, String> {
        let mut mounts = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let base = self.paths.get(&m.name).ok_or_else(|| {
                format!("volumeMount {}: no volume named {:?}", m.mount_path, m.name)
            })?;
            let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => base.join(sub),
                None => base.clone(),
            };
            mounts.push(Mount {
                source,
                target: PathBuf::from(&m.mount_path),
                read_only: m.read_only.unwrap_or(false),
            });
        }
        Ok(mounts)
    }
}

async fn write_volume(
    client: &kube::Client,
    ns: &str,
    pod: &Pod,
    v: &Volume,
    dir: &Path,
) -> Result<(), String> {
    if let Some(cm) = &v.config_map {
        let mode = cm.default_mode.unwrap_or(0o644) as u32;
        write_config_map(
            client,
            ns,
            &cm.name,
            cm.items.as_deref(),
            cm.optional.unwrap_or(false),
            dir,
            mode,
        )
        .await?;
    }
    if let Some(s) = &v.secret {
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        let name = s.secret_name.clone().unwrap_or_default();
        write_secret(
            client,
            ns,
            &name,
            s.items.as_deref(),
            s.optional.unwrap_or(false),
            dir,
            mode,
        )
        .await?;
    }
    if let Some(d) = &v.downward_api {
        let mode = d.default_mode.unwrap_or(0o644) as u32;
        for item in d.items.iter().flatten() {
            if let Some(f) = &item.field_ref {
                let value = field(pod, &f.field_path).unwrap_or_default();
                write_if_changed(&dir.join(&item.path), value.as_bytes(), mode)?;
            }
        }
    }
    if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644) as u32;
        for source in p.sources.iter().flatten() {
            write_projection(client, ns, pod, source, dir, mode).await?;
        }
    }
    Ok(())
}

async fn write_projection(
    client: &kube::Client,
    ns: &str,
    pod: &Pod,
    source: &VolumeProjection,
    dir: &Path,
    mode: u32,
) -> Result<(), String> {
    if let Some(cm) = &source.config_map {
        write_config_map(
            client,
            ns,
            &cm.name,
            cm.items.as_deref(),
            cm.optional.unwrap_or(false),
            dir,
            mode,
        )
        .await?;
    }
    if let Some(s) = &source.secret {
        write_secret(
            client,
            ns,
            &s.name,
            s.items.as_deref(),
            s.optional.unwrap_or(false),
            dir,
            mode,
        )
        .await?;
    }
    if let Some(d) = &source.downward_api {
        for item in d.items.iter().flatten() {
            if let Some(f) = &item.field_ref {
                let value = field(pod, &f.field_path).unwrap_or_default();
                write_if_changed(&dir.join(&item.path), value.as_bytes(), mode)?;
            }
        }
    }
    Ok(())
}

async fn write_config_map(
    client: &kube::Client,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    dir: &Path,
    mode: u32,
) -> Result<(), String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("configmap {name:?}: {e}"))?;
    let Some(cm) = cm else {
        return if optional {
            Ok(())
        } else {
            Err(format!("configmap {name:?} not found"))
        };
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    write_keys(&data, items, dir, mode)
}

async fn write_secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
    dir: &Path,
    mode: u32,
) -> Result<(), String> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("secret {name:?}: {e}"))?;
    let Some(s) = s else {
        return if optional {
            Ok(())
        } else {
            Err(format!("secret {name:?} not found"))
        };
    };
    let data: BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    write_keys(&data, items, dir, mode)
}

fn write_keys(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    dir: &Path,
    mode: u32,
) -> Result<(), String> {
    match items {
        Some(items) => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    return Err(format!("key {:?} not found", item.key));
                };
                let mode = item.mode.map(|m| m as u32).unwrap_or(mode);
                write_if_changed(&dir.join(&item.path), value, mode)?;
            }
        }
        None => {
            for (k, v) in data {
                write_if_changed(&dir.join(k), v, mode)?;
            }
        }
    }
    Ok(())
}

fn write_if_changed(path: &Path, body: &[u8], mode: u32) -> Result<(), String> {
    if std::fs::read(path).is_ok_and(|cur| cur == body) {
        return Ok(());
    }
    write_atomic(path, body, mode)
}

/// Writes through a temporary file and a rename, so readers never see half a file.
fn write_atomic(path: &Path, body: &[u8], mode: u32) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let tmp = path.with_extension("sluice-tmp");
    std::fs::write(&tmp, body).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
