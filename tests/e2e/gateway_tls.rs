//! HTTPS listeners on the real gateway: TLS terminated with certificates
//! from `kubernetes.io/tls` Secrets, chosen by SNI, a Secret of another
//! namespace used only once a ReferenceGrant there allows it, a renewed
//! Secret served without a restart, and a deleted one reported on the
//! listener.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use gateway_api::gateways::Gateway;
use kube::Api;
use kube::api::DeleteParams;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use sluice_tests::Cluster;
use sluice_tests::wait::{deployment_available, poll};

use super::{TIMEOUT, mesh, version};

/// The port of the scenario's HTTPS listeners: the usual one, which the
/// non-root gateway binds thanks to its pod's sysctl.
const HTTPS_PORT: u16 = 443;

/// A CA of the test's own, and the leaves it signs.
struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A leaf certificate: PEM chain and key, and the DER a client sees.
struct Leaf {
    chain_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ok(Ca(CertifiedIssuer::self_signed(
            params,
            KeyPair::generate()?,
        )?))
    }

    fn leaf(&self, name: &str) -> anyhow::Result<Leaf> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &self.0)?;
        Ok(Leaf {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }
}

fn tls_secret(ns: &str, name: &str, leaf: &Leaf) -> String {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"tls.crt": leaf.chain_pem, "tls.key": leaf.key_pem},
    })
    .to_string()
}

/// What a client trusting only `ca` gets for `https://host/` at the
/// gateway: the body and the certificate it was served, or the error.
async fn fetch(ca: &Ca, gateway_ip: &str, host: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let addr = format!("{gateway_ip}:{HTTPS_PORT}").parse()?;
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.0.pem().as_bytes())?)
        .resolve(host, addr)
        .tls_info(true)
        // A new connection (and handshake) per request.
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()?;
    let resp = client
        .get(format!("https://{host}:{HTTPS_PORT}/"))
        .send()
        .await?;
    let served = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    ensure!(resp.status() == 200, "{host}: status {}", resp.status());
    Ok((resp.text().await?.trim().to_owned(), served))
}

/// Waits until `host` answers blue with the certificate `want`.
async fn until_served(ca: &Ca, ip: &str, host: &str, want: &Leaf) -> anyhow::Result<()> {
    poll(
        &format!("https://{host} served blue with its certificate"),
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            Ok(match fetch(ca, ip, host).await {
                Ok((body, der)) if body == "blue" && der == want.der => Some(()),
                _ => None,
            })
        },
    )
    .await?;
    Ok(())
}

/// A listener's condition `kind` as (status, reason).
async fn listener_condition(
    gateways: &Api<Gateway>,
    listener: &str,
    kind: &str,
) -> Result<Option<(String, String)>, sluice_tests::Error> {
    let gw = gateways.get("secure").await?;
    Ok(gw
        .status
        .and_then(|s| s.listeners)
        .unwrap_or_default()
        .into_iter()
        .find(|l| l.name == listener)
        .and_then(|l| l.conditions.into_iter().find(|c| c.type_ == kind))
        .map(|c| (c.status, c.reason)))
}

async fn until_condition(
    gateways: &Api<Gateway>,
    listener: &str,
    kind: &str,
    want: (&str, &str),
) -> anyhow::Result<()> {
    poll(
        &format!("listener {listener}: {kind}={} {}", want.0, want.1),
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let now = listener_condition(gateways, listener, kind).await?;
            Ok((now == Some((want.0.to_owned(), want.1.to_owned()))).then_some(()))
        },
    )
    .await?;
    Ok(())
}

pub async fn https_listeners(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let mesh = mesh(&cluster).await?;
    let ip = mesh.gateway_ip.clone();
    let (ns, certs_ns) = ("secure", "certs");
    cluster.create_namespace(ns).await?;
    cluster.create_namespace(certs_ns).await?;
    let ca = Ca::new()?;
    let site = ca.leaf("secure.example.com")?;
    let shared = ca.leaf("shared.example.com")?;
    cluster.apply(&version(ns, "handson-blue", "handson", "blue", 1))?;
    cluster.apply(&tls_secret(ns, "site", &site))?;
    cluster.apply(&tls_secret(certs_ns, "shared", &shared))?;
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: secure, namespace: {ns}}}
spec:
  gatewayClassName: sluice
  listeners:
  - name: site
    port: {HTTPS_PORT}
    protocol: HTTPS
    hostname: secure.example.com
    tls: {{certificateRefs: [{{name: site}}]}}
  - name: shared
    port: {HTTPS_PORT}
    protocol: HTTPS
    hostname: shared.example.com
    tls: {{certificateRefs: [{{name: shared, namespace: {certs_ns}}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: secure, namespace: {ns}}}
spec:
  parentRefs: [{{name: secure}}]
  rules:
  - backendRefs: [{{name: handson-blue, port: 8080}}]
"#
    ))?;
    deployment_available(&cluster.client(), ns, "handson-blue", TIMEOUT).await?;
    let gateways: Api<Gateway> = Api::namespaced(cluster.client(), ns);

    // The Secret of the Gateway's namespace is served at once; the other
    // namespace's is refused until a grant there allows it, and its name
    // gets no certificate meanwhile.
    until_served(&ca, &ip, "secure.example.com", &site).await?;
    until_condition(&gateways, "site", "Programmed", ("True", "Programmed")).await?;
    until_condition(
        &gateways,
        "shared",
        "ResolvedRefs",
        ("False", "RefNotPermitted"),
    )
    .await?;
    let refused = fetch(&ca, &ip, "shared.example.com").await;
    ensure!(
        refused.is_err(),
        "served without a grant: {:?}",
        refused.map(|r| r.0)
    );
    cluster.apply(&format!(
        r#"apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: gateways-of-secure, namespace: {certs_ns}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: {ns}}}]
  to: [{{group: "", kind: Secret, name: shared}}]
"#
    ))?;
    until_condition(
        &gateways,
        "shared",
        "ResolvedRefs",
        ("True", "ResolvedRefs"),
    )
    .await?;
    until_served(&ca, &ip, "shared.example.com", &shared).await?;

    // A renewed certificate is served on the next handshake.
    let renewed = ca.leaf("secure.example.com")?;
    cluster.apply(&tls_secret(ns, "site", &renewed))?;
    until_served(&ca, &ip, "secure.example.com", &renewed).await?;

    // A deleted Secret is reported, and its listener is no longer served.
    cluster.kubectl(&["delete", "secret", "site", "-n", ns], None)?;
    until_condition(
        &gateways,
        "site",
        "ResolvedRefs",
        ("False", "InvalidCertificateRef"),
    )
    .await?;
    until_condition(&gateways, "site", "Programmed", ("False", "Invalid")).await?;
    poll(
        "secure.example.com no longer served",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            Ok(fetch(&ca, &ip, "secure.example.com")
                .await
                .is_err()
                .then_some(()))
        },
    )
    .await?;
    until_served(&ca, &ip, "shared.example.com", &shared)
        .await
        .context("the other listener kept serving")?;
    gateways.delete("secure", &DeleteParams::default()).await?;
    Ok(())
}
