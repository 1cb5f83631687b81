//! A client of the control plane, enrolled as a proxy is: the mesh roots
//! from the ConfigMap the operator publishes, a service-account token, a
//! certificate from `Certificates.Sign` over server-authenticated TLS, then
//! mTLS. For tests and benchmarks that play proxies (a forger, a thousand
//! config streams) without running them.
//!
//! The operator believes a hello only from the address of the pod it
//! names; a client on this host therefore speaks for a pod in the host's
//! network namespace ([`host_pod`]), whose address is the node's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rcgen::{CertificateParams, KeyPair, SanType};
use sluice_identity::MeshIdentity;
use sluice_identity::channel::{self, ControlPlaneAddress};
use sluice_proto::bootstrap::{ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY, TOKEN_AUDIENCE};
use sluice_proto::mesh::SignRequest;
use sluice_proto::mesh::certificates_client::CertificatesClient;
use tonic::transport::Channel;

use crate::operator::operator_identity;
use crate::wait::poll;
use crate::{Cluster, Error};

/// An enrolled (or only bootstrapped) client.
#[derive(Debug, Clone)]
pub struct MeshClient {
    /// Its roots and, once enrolled, its certificate.
    pub identity: Arc<MeshIdentity>,
    /// TLS towards the operator.
    pub tls: Arc<rustls::ClientConfig>,
    /// The operator's gRPC address.
    pub address: ControlPlaneAddress,
}

impl MeshClient {
    /// Trusts the mesh roots, as published in `namespace`; no certificate.
    pub async fn bootstrap(
        cluster: &Cluster,
        grpc: SocketAddr,
        namespace: &str,
    ) -> Result<MeshClient, Error> {
        let api: Api<ConfigMap> = Api::namespaced(cluster.client(), namespace);
        let roots = poll(
            "the mesh roots' ConfigMap",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                Ok(api
                    .get_opt(ROOT_CERT_CONFIGMAP)
                    .await?
                    .and_then(|c| c.data?.get(ROOT_CERT_KEY).cloned()))
            },
        )
        .await?;
        let identity = Arc::new(MeshIdentity::default());
        identity
            .set_roots(&[roots])
            .map_err(|e| Error::Check(format!("the published roots: {e}")))?;
        let tls =
            sluice_identity::verify::control_plane_client_config(&identity, &operator_identity())
                .map_err(|e| Error::Setup(e.to_string()))?;
        let address = ControlPlaneAddress::parse(&format!("https://{grpc}"))
            .map_err(|e| Error::Setup(e.to_string()))?;
        Ok(MeshClient {
            identity,
            tls,
            address,
        })
    }

    /// [`MeshClient::bootstrap`], then a certificate for service account
    /// `namespace/sa` (created if missing), traded for its token.
    pub async fn enroll(
        cluster: &Cluster,
        grpc: SocketAddr,
        namespace: &str,
        sa: &str,
    ) -> Result<MeshClient, Error> {
        let client = MeshClient::bootstrap(cluster, grpc, namespace).await?;
        let token = service_account_token(cluster, namespace, sa, Some(TOKEN_AUDIENCE)).await?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::Setup(e.to_string()))?;
        let id = sluice_proto::config::spiffe_id("cluster.local", namespace, sa);
        let csr = spiffe_csr(&id, &key)?;
        let signed = CertificatesClient::new(client.channel().await?)
            .sign(SignRequest {
                csr_pem: csr,
                token,
            })
            .await
            .map_err(|s| Error::Check(format!("Certificates.Sign for {id}: {s}")))?
            .into_inner();
        client
            .identity
            .set_leaf(&signed.cert_chain_pem, key.serialize_der())
            .map_err(|e| Error::Check(format!("the issued certificate: {e}")))?;
        Ok(client)
    }

    /// A new TLS channel (the certificate, if any, is presented).
    pub async fn channel(&self) -> Result<Channel, Error> {
        self.channel_from(None).await
    }

    /// [`MeshClient::channel`] from local address `from` (the address of
    /// the pod the client speaks for, when that is one of this host's).
    pub async fn channel_from(&self, from: Option<std::net::IpAddr>) -> Result<Channel, Error> {
        channel::connect_from(&self.address, self.tls.clone(), from)
            .await
            .map_err(|e| Error::Check(format!("connecting to the control plane: {e}")))
    }
}

/// A CSR (PEM) for SPIFFE ID `id` with `key`, as a proxy sends it.
pub fn spiffe_csr(id: &str, key: &KeyPair) -> Result<String, Error> {
    let uri = id
        .try_into()
        .map_err(|e: rcgen::Error| Error::Setup(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri)];
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(|e| Error::Setup(e.to_string()))
}

/// A token of service account `namespace/sa` (created if missing) for
/// `audience` (None: the API server's own), valid ten minutes.
pub async fn service_account_token(
    cluster: &Cluster,
    namespace: &str,
    sa: &str,
    audience: Option<&str>,
) -> Result<String, Error> {
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), namespace);
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}
    }))
    .map_err(|e| Error::Setup(e.to_string()))?;
    api.patch(
        sa,
        &PatchParams::apply("sluice-tests"),
        &Patch::Apply(&account),
    )
    .await?;
    token_request(cluster, namespace, sa, audience, Duration::from_secs(600)).await
}

/// A token of the existing service account `namespace/sa` for `audience`
/// (None: the API server's own), valid for `lifetime`.
pub async fn token_request(
    cluster: &Cluster,
    namespace: &str,
    sa: &str,
    audience: Option<&str>,
    lifetime: Duration,
) -> Result<String, Error> {
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), namespace);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_owned()]),
            expiration_seconds: Some(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.create_token_request(sa, &PostParams::default(), &req)
        .await?
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| Error::Check(format!("no token for {namespace}/{sa}")))
}

/// A pod in the host's network namespace (so its address is the node's,
/// where clients of this harness connect from), running as service account
/// `sa`; returns once it runs.
pub async fn host_pod(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    sa: &str,
) -> Result<(), Error> {
    service_account_token(cluster, namespace, sa, None).await?;
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hostNetwork: true
  serviceAccountName: {sa}
  terminationGracePeriodSeconds: 0
  containers:
  - name: pause
    image: {pause}
"#,
        pause = sluice_proto::images::PAUSE,
    ))?;
    crate::wait::pod_ready(&cluster.client(), namespace, name, Duration::from_secs(60)).await
}
