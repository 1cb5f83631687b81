//! The CA's Secret: read at start (created with a new root when absent) and
//! re-read periodically, so that a user's root rotation (new `ca.crt` and
//! `ca.key`, old and new roots together in `root.crt`) reaches proxies
//! without a restart.
//!
//! Keys: `ca.crt` and `ca.key` (the signing certificate and its key, PEM),
//! optional `cert-chain.crt` (when `ca.crt` is an intermediate: its chain up
//! to the root) and optional `root.crt` (the roots proxies trust; default
//! `ca.crt`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

use super::authority::{Authority, CaError, generate_root};

/// The Secret's name in the operator's namespace.
pub const SECRET_NAME: &str = "sluice-ca";

/// Where the CA comes from and how it signs.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// The operator's namespace.
    pub namespace: String,
    /// The trust domain.
    pub trust_domain: String,
    /// Lifetime of workload certificates.
    pub ttl: Duration,
    /// Set on a Secret this creates, so that uninstalling (deleting the
    /// owner) removes it.
    pub owner: Option<OwnerReference>,
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|s| !s.trim().is_empty())
}

/// The authority a Secret's data describes.
fn from_data(
    data: &BTreeMap<String, ByteString>,
    settings: &CaSettings,
) -> Result<Authority, CaError> {
    let cert = text(data, "ca.crt").ok_or_else(|| CaError::Secret("no ca.crt".into()))?;
    let key = text(data, "ca.key").ok_or_else(|| CaError::Secret("no ca.key".into()))?;
    let chain = text(data, "cert-chain.crt");
    let roots = text(data, "root.crt").map(|r| vec![r]).unwrap_or_default();
    Authority::from_pem(
        &cert,
        &key,
        chain.as_deref(),
        roots,
        settings.trust_domain.clone(),
        settings.ttl,
    )
}

/// Reads the CA Secret, creating it with a new root when it does not exist
/// (another replica may win the race: then its root is used).
pub async fn load_or_create(client: &Client, settings: &CaSettings) -> Result<Authority, CaError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let k8s =
        |e: kube::Error| CaError::Secret(format!("{}/{SECRET_NAME}: {e}", settings.namespace));
    if let Some(s) = api.get_opt(SECRET_NAME).await.map_err(k8s)? {
        info!(secret = %SECRET_NAME, "using the mesh CA from its Secret");
        return from_data(&s.data.unwrap_or_default(), settings);
    }
    let root = generate_root(&settings.trust_domain)?;
    let data: BTreeMap<String, ByteString> = [
        ("ca.crt".to_owned(), ByteString(root.cert_pem.into_bytes())),
        ("ca.key".to_owned(), ByteString(root.key_pem.into_bytes())),
    ]
    .into();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.into()),
            namespace: Some(settings.namespace.clone()),
            labels: Some([("app.kubernetes.io/part-of".to_owned(), "sluice".to_owned())].into()),
            owner_references: settings.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data.clone()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(secret = %SECRET_NAME, "generated a new mesh root CA (EC P-256, 10 years)");
            from_data(&data, settings)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = api.get(SECRET_NAME).await.map_err(k8s)?;
            from_data(&s.data.unwrap_or_default(), settings)
        }
        Err(e) => Err(k8s(e)),
    }
}

/// Re-reads the Secret every `every`; a changed, valid Secret replaces the
/// authority and `on_change` runs (new roots go out with the next
/// snapshots). An invalid Secret is logged and the running CA kept.
pub async fn watch(
    client: Client,
    settings: CaSettings,
    current: Arc<ArcSwap<Authority>>,
    every: Duration,
    on_change: impl Fn() + Send + 'static,
) {
    let api: Api<Secret> = Api::namespaced(client, &settings.namespace);
    let mut last: Option<BTreeMap<String, ByteString>> = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let data = match api.get_opt(SECRET_NAME).await {
            Ok(Some(s)) => s.data.unwrap_or_default(),
            Ok(None) => continue,
            Err(e) => {
                warn!("reading the CA Secret: {e}");
                continue;
            }
        };
        if last.as_ref() == Some(&data) {
            continue;
        }
        let first = last.is_none();
        last = Some(data.clone());
        match from_data(&data, &settings) {
            Ok(a) => {
                let changed = a.roots_pem != current.load().roots_pem || !first;
                current.store(Arc::new(a));
                if changed {
                    info!("the CA Secret changed: signing with it; roots pushed to proxies");
                    on_change();
                }
            }
            Err(e) => warn!("the CA Secret is invalid ({e}); keeping the running CA"),
        }
    }
}
