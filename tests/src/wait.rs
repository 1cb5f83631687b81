//! Waiting on conditions with a deadline, never on a fixed sleep.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::Error;

/// Polls `check` every `every` until it returns `Ok(Some(value))`, an error,
/// or `timeout` passes. `what` names the condition in the timeout error.
pub async fn poll<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, Error>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_owned(),
                seconds: start.elapsed().as_secs_f64(),
            });
        }
        tokio::time::sleep(every).await;
    }
}

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;

/// Waits until Deployment `ns/name` reports `Available=True` with all
/// replicas updated and ready.
pub async fn deployment_available(
    client: &kube::Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<Deployment, Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    poll(
        &format!("deployment {ns}/{name} Available"),
        timeout,
        Duration::from_millis(200),
        || async {
            let d = api.get_opt(name).await?;
            Ok(d.filter(|d| {
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let st = d.status.clone().unwrap_or_default();
                let available = st
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Available" && c.status == "True");
                available
                    && st.ready_replicas.unwrap_or(0) == want
                    && st.updated_replicas.unwrap_or(0) == want
            }))
        },
    )
    .await
}

/// The ready endpoint addresses of Service `ns/service`, from its EndpointSlices.
pub async fn ready_endpoints(
    client: &kube::Client,
    ns: &str,
    service: &str,
) -> Result<Vec<String>, Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let mut ips: Vec<String> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .flat_map(|s| s.endpoints.unwrap_or_default())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .flat_map(|e| e.addresses)
        .collect();
    ips.sort();
    Ok(ips)
}

/// The pods of namespace `ns` that carry `selector` (a label selector).
pub async fn pods_by_label(
    client: &kube::Client,
    ns: &str,
    selector: &str,
) -> Result<Vec<k8s_openapi::api::core::v1::Pod>, Error> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}

/// The names of the pods of namespace `ns` that carry `selector`.
pub async fn pod_names(
    client: &kube::Client,
    ns: &str,
    selector: &str,
) -> Result<Vec<String>, Error> {
    Ok(pods_by_label(client, ns, selector)
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// Waits until pod `ns/name` is Ready (all its containers started and
/// passing their readiness probes).
pub async fn pod_ready(
    client: &kube::Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<(), Error> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    poll(
        &format!("pod {ns}/{name} to be Ready"),
        timeout,
        Duration::from_millis(100),
        || async {
            let pod = api.get_opt(name).await?;
            let ready = pod
                .and_then(|p| p.status?.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok(ready.then_some(()))
        },
    )
    .await
}
