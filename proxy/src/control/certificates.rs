//! The workload certificate: the proxy makes its own key, sends a CSR for
//! its SPIFFE identity with its pod's projected service-account token, and
//! renews at half of the certificate's lifetime. A failed renewal is
//! retried with backoff while the current certificate keeps serving (and,
//! once it has expired, `/ready` fails until a renewal succeeds).
//!
//! The first request runs before the proxy has anything from the control
//! plane: it verifies the operator with the mesh roots mounted from the
//! `sluice-ca-root-cert` ConfigMap. Snapshots carry the roots from then on.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use sluice_proto::mesh::SignRequest;
use sluice_proto::mesh::certificates_client::CertificatesClient;
use tracing::{error, info, warn};

use super::{Backoff, Settings, connect};
use crate::state::Proxy;

/// Who asks for a certificate, and with which token.
#[derive(Debug, Clone)]
pub struct CertificateSettings {
    /// The projected service-account token (audience `sluice`), re-read on
    /// every request because the kubelet rotates it.
    pub token_file: PathBuf,
    /// The mesh roots, PEM, for the first connection.
    pub roots_file: PathBuf,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account.
    pub service_account: String,
}

/// Why one issuance failed.
#[derive(Debug, thiserror::Error)]
enum IssueError {
    #[error("reading {0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("the mesh roots in {0}: {1}")]
    Roots(PathBuf, crate::identity::IdentityError),
    #[error("making the key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("{0}")]
    Connect(#[from] sluice_identity::channel::ChannelError),
    #[error("refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("unusable certificate: {0}")]
    Certificate(#[from] crate::identity::IdentityError),
}

/// Keeps a valid certificate for as long as the process runs.
pub async fn run_certificates(proxy: Arc<Proxy>, control: Settings, settings: CertificateSettings) {
    if !settings.token_file.exists() {
        error!(
            token = %settings.token_file.display(),
            "no service-account token: this proxy cannot get a workload certificate, \
             and the control plane talks to none without one (is the pod injected?)"
        );
    }
    proxy.identity.want();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        match issue(&proxy, &control, &settings).await {
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

/// Trusts the mounted roots until a snapshot has brought some.
async fn bootstrap_roots(proxy: &Proxy, settings: &CertificateSettings) -> Result<(), IssueError> {
    if !proxy.identity.roots().anchors.is_empty() {
        return Ok(());
    }
    let pem = tokio::fs::read_to_string(&settings.roots_file)
        .await
        .map_err(|e| IssueError::File(settings.roots_file.clone(), e))?;
    proxy
        .identity
        .set_roots(&[pem])
        .map_err(|e| IssueError::Roots(settings.roots_file.clone(), e))
}

/// One CSR round trip; returns the new certificate's remaining lifetime.
async fn issue(
    proxy: &Proxy,
    control: &Settings,
    settings: &CertificateSettings,
) -> Result<Duration, IssueError> {
    bootstrap_roots(proxy, settings).await?;
    let token = tokio::fs::read_to_string(&settings.token_file)
        .await
        .map_err(|e| IssueError::File(settings.token_file.clone(), e))?;
    let spiffe = crate::config::spiffe_id(
        &settings.trust_domain,
        &settings.namespace,
        &settings.service_account,
    );
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(spiffe.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let mut client = CertificatesClient::new(connect(control).await?);
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
