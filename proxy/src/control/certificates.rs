//! The workload certificate: the proxy makes its own key, sends a CSR for
//! its SPIFFE identity with its pod's projected service-account token, and
//! renews at half of the certificate's lifetime. A failed renewal is
//! retried with backoff while the current certificate keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use sluice_proto::mesh::SignRequest;
use sluice_proto::mesh::certificates_client::CertificatesClient;
use tracing::{info, warn};

use super::{Backoff, connect};
use crate::state::Proxy;

/// Who asks for a certificate, and with which token.
#[derive(Debug, Clone)]
pub struct CertificateSettings {
    /// The operator's gRPC address.
    pub endpoint: String,
    /// The projected service-account token (audience `sluice`), re-read on
    /// every request because the kubelet rotates it.
    pub token_file: PathBuf,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account.
    pub service_account: String,
}

/// Why one issuance failed.
#[derive(Debug, thiserror::Error)]
enum IssueError {
    #[error("reading the token {0}: {1}")]
    Token(PathBuf, std::io::Error),
    #[error("making the key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("unusable certificate: {0}")]
    Certificate(#[from] crate::identity::IdentityError),
}

/// Keeps a valid certificate for as long as the process runs. Without a
/// token file the proxy has no mesh identity (plaintext only).
pub async fn run_certificates(proxy: Arc<Proxy>, settings: CertificateSettings) {
    if !settings.token_file.exists() {
        info!(
            token = %settings.token_file.display(),
            "no service-account token for the mesh: no workload certificate, plaintext only"
        );
        return;
    }
    proxy.identity.want();
    let mut changes = proxy.subscribe();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        // The trust domain comes with the first snapshot.
        let Some(trust_domain) = proxy
            .current()
            .config
            .mesh_tls
            .as_ref()
            .map(|m| m.trust_domain.clone())
        else {
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        };
        match issue(&proxy, &settings, &trust_domain).await {
            Ok(lifetime) => {
                backoff.reset();
                proxy.telemetry.certificates_issued.fetch_add(1, Relaxed);
                let renew = lifetime / 2;
                info!(
                    ?lifetime,
                    ?renew,
                    "workload certificate installed; renewing at half-life"
                );
                tokio::time::sleep(renew).await;
            }
            Err(e) => {
                proxy.telemetry.certificate_failures.fetch_add(1, Relaxed);
                let delay = backoff.next_delay();
                warn!("workload certificate: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One CSR round trip; returns the new certificate's remaining lifetime.
async fn issue(
    proxy: &Proxy,
    settings: &CertificateSettings,
    trust_domain: &str,
) -> Result<Duration, IssueError> {
    let token = tokio::fs::read_to_string(&settings.token_file)
        .await
        .map_err(|e| IssueError::Token(settings.token_file.clone(), e))?;
    let spiffe =
        crate::config::spiffe_id(trust_domain, &settings.namespace, &settings.service_account);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(spiffe.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let mut client = CertificatesClient::new(connect(&settings.endpoint).await?);
    let resp = client
        .sign(SignRequest {
            csr_pem: csr,
            token: token.trim().to_owned(),
        })
        .await?
        .into_inner();
    let until = proxy
        .identity
        .set_leaf(&resp.cert_chain_pem, key.serialize_der())?;
    let unix = until
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    proxy.telemetry.certificate_expiry.store(unix, Relaxed);
    Ok(until
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::from_secs(1)))
}
