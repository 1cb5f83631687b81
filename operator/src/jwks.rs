//! The keys behind RequestAuthentications' `jwksUri`s: the operator
//! fetches each document, refreshes it, and hands it to the translation,
//! which pushes the keys inline, so that no proxy ever reaches out to an
//! issuer (Istio's istiod does the same by default).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use kube::runtime::reflector::Store;
use sluice_crds::RequestAuthentication;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::mesh::authn::Fetched;

/// How often a fetched document is fetched again (Istio's default).
const REFRESH: Duration = Duration::from_secs(20 * 60);
/// How soon a failed fetch is tried again.
const RETRY: Duration = Duration::from_secs(10);
/// How often the resources are read for new URIs (from memory).
const TICK: Duration = Duration::from_secs(1);
/// One fetch's deadline.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest document accepted.
const MAX_BYTES: usize = 256 * 1024;

/// The fetched documents, by URI.
pub type Documents = Arc<ArcSwap<BTreeMap<String, Fetched>>>;

/// The `jwksUri`s the resources need fetched (rules with inline keys need
/// none).
pub fn wanted(authns: &[Arc<RequestAuthentication>]) -> BTreeSet<String> {
    authns
        .iter()
        .flat_map(|a| a.spec.jwt_rules.iter())
        .filter(|r| r.jwks.is_none())
        .filter_map(|r| r.jwks_uri.clone())
        .collect()
}

/// Keeps `docs` filled for the URIs `store`'s resources name; wakes
/// `changed` whenever a document arrives, changes or is dropped.
pub async fn run(store: Store<RequestAuthentication>, docs: Documents, changed: Arc<Notify>) {
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            warn!("no HTTP client for JWKS fetches: {e}");
            return;
        }
    };
    // When each URI was last fetched; whether that worked is in `docs`.
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(TICK);
    loop {
        ticker.tick().await;
        let uris = wanted(&store.state());
        last.retain(|u, _| uris.contains(u));
        let current = docs.load_full();
        // Copied only once something changes: most ticks fetch nothing.
        let mut next: Option<BTreeMap<String, Fetched>> =
            current.keys().any(|u| !uris.contains(u)).then(|| {
                current
                    .iter()
                    .filter(|(u, _)| uris.contains(*u))
                    .map(|(u, f)| (u.clone(), f.clone()))
                    .collect()
            });
        for uri in uris {
            let wait = match current.get(&uri) {
                Some(Ok(_)) => REFRESH,
                _ => RETRY,
            };
            if last.get(&uri).is_some_and(|at| at.elapsed() < wait) {
                continue;
            }
            let got = fetch(&client, &uri).await;
            match &got {
                Ok(_) => info!(%uri, "JWKS fetched"),
                Err(e) => warn!(%uri, "JWKS fetch failed: {e}"),
            }
            last.insert(uri.clone(), Instant::now());
            if current.get(&uri) != Some(&got) {
                next.get_or_insert_with(|| (*current).clone())
                    .insert(uri, got);
            }
        }
        if let Some(next) = next {
            docs.store(Arc::new(next));
            changed.notify_one();
        }
    }
}

async fn fetch(client: &reqwest::Client, uri: &str) -> Fetched {
    let resp = client.get(uri).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    if resp.content_length().is_some_and(|n| n > MAX_BYTES as u64) {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8 text".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_rules_without_inline_keys_need_a_fetch() {
        let a: RequestAuthentication = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "RequestAuthentication",
            "metadata": {"name": "a", "namespace": "h"},
            "spec": {"jwtRules": [
                {"issuer": "x", "jwksUri": "https://x.test/keys"},
                {"issuer": "y", "jwksUri": "https://y.test/keys", "jwks": "{\"keys\": []}"},
                {"issuer": "z", "jwksUri": "https://x.test/keys"}
            ]}
        }))
        .expect("resource");
        assert_eq!(
            wanted(&[Arc::new(a)]).into_iter().collect::<Vec<_>>(),
            ["https://x.test/keys"]
        );
    }
}
