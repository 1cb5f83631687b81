//! The mesh roots in a ConfigMap in every namespace (as Istio publishes
//! `istio-ca-root-cert`): injected proxies mount it to verify the operator
//! before they have a snapshot, which carries the roots from then on.
//! Published when a namespace appears, when the roots change, and again
//! every few minutes in case one was deleted; the injection webhook also
//! makes sure of it before it admits a pod (a pod in a namespace created a
//! moment ago must not wait for the next round).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use sluice_proto::bootstrap::{ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Authority;
use crate::world::World;

/// How often every namespace is published again regardless.
const RESYNC: Duration = Duration::from_secs(300);

/// Publishes the roots; remembers what each namespace has.
pub struct RootPublisher {
    client: Client,
    authority: Arc<ArcSwap<Authority>>,
    /// Namespace → the roots last written there, and when.
    published: Mutex<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for RootPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootPublisher")
    }
}

impl RootPublisher {
    /// Publishes what `authority` holds at each call.
    pub fn new(client: Client, authority: Arc<ArcSwap<Authority>>) -> Arc<RootPublisher> {
        Arc::new(RootPublisher {
            client,
            authority,
            published: Mutex::new(HashMap::new()),
        })
    }

    /// Writes the ConfigMap in `namespace` unless it was written with the
    /// same roots recently.
    pub async fn ensure(&self, namespace: &str) -> Result<(), kube::Error> {
        let roots = self.authority.load().roots_pem.concat();
        let fresh = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(namespace)
            .is_some_and(|(r, at)| *r == roots && at.elapsed() < RESYNC);
        if fresh {
            return Ok(());
        }
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": ROOT_CERT_CONFIGMAP,
                "labels": {"app.kubernetes.io/part-of": "sluice"},
            },
            "data": {ROOT_CERT_KEY: roots},
        }))
        .map_err(kube::Error::SerdeError)?;
        Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .patch(
                ROOT_CERT_CONFIGMAP,
                &PatchParams::apply("sluice-operator").force(),
                &Patch::Apply(&cm),
            )
            .await?;
        debug!(namespace, "published the mesh roots");
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(namespace.to_owned(), (roots, Instant::now()));
        Ok(())
    }

    /// Publishes in every namespace of `world`, at once, on every CA change
    /// (`ca_changed`) and every few seconds for new namespaces.
    pub async fn run(self: Arc<Self>, world: World, mut ca_changed: watch::Receiver<()>) {
        world.ready().await;
        info!("publishing the mesh roots in every namespace");
        loop {
            let mut written = 0usize;
            for ns in world.namespace_names() {
                match self.ensure(&ns).await {
                    Ok(()) => written += 1,
                    Err(e) => warn!(namespace = %ns, "publishing the mesh roots: {e}"),
                }
            }
            debug!(namespaces = written, "mesh roots published");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
                changed = ca_changed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    info!("the mesh roots changed: publishing them in every namespace");
                }
            }
        }
    }
}
