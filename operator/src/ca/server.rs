//! The `Certificates` gRPC service: authenticate the token with a
//! TokenReview (audience `sluice`), then sign the CSR for that token's
//! service account and nothing else.

use std::sync::Arc;

use arc_swap::ArcSwap;
use kube::Client;
use sluice_proto::mesh::certificates_server::Certificates;
use sluice_proto::mesh::{SignRequest, SignResponse};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::authority::{Authority, CaError};
use crate::access::{TokenRejected, review_token};
use crate::metrics::{Metrics, ResultLabel};

/// The audience proxies' projected tokens must carry.
pub use sluice_proto::bootstrap::TOKEN_AUDIENCE;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct CertificateServer {
    client: Client,
    authority: Arc<ArcSwap<Authority>>,
    metrics: Arc<Metrics>,
}

impl CertificateServer {
    /// Signs with whatever `authority` holds at each request.
    pub fn new(
        client: Client,
        authority: Arc<ArcSwap<Authority>>,
        metrics: Arc<Metrics>,
    ) -> CertificateServer {
        CertificateServer {
            client,
            authority,
            metrics,
        }
    }

    /// The (namespace, service account) a token proves.
    async fn review(&self, token: &str) -> Result<(String, String), Status> {
        let user = review_token(&self.client, token, Some(vec![TOKEN_AUDIENCE.to_owned()]))
            .await
            .map_err(|e| match e {
                TokenRejected::Unavailable(m) => Status::unavailable(format!("TokenReview: {m}")),
                TokenRejected::Invalid(m) => Status::unauthenticated(format!(
                    "the token is not valid for audience {TOKEN_AUDIENCE:?}: {m}"
                )),
            })?;
        let user = user.username.unwrap_or_default();
        let mut parts = user.splitn(4, ':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("system"), Some("serviceaccount"), Some(ns), Some(sa)) => {
                Ok((ns.to_owned(), sa.to_owned()))
            }
            _ => Err(Status::permission_denied(format!(
                "{user:?} is not a service account"
            ))),
        }
    }
}

#[tonic::async_trait]
impl Certificates for CertificateServer {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let req = request.into_inner();
        let result: Result<SignResponse, Status> = async {
            let (ns, sa) = self.review(&req.token).await?;
            let authority = self.authority.load_full();
            let (chain, not_after) =
                authority
                    .sign(&req.csr_pem, &ns, &sa)
                    .map_err(|e| match e {
                        CaError::Identity { .. } => Status::permission_denied(e.to_string()),
                        CaError::Csr(_) => Status::invalid_argument(e.to_string()),
                        other => Status::internal(other.to_string()),
                    })?;
            info!(identity = %authority.spiffe_id(&ns, &sa), "issued a workload certificate");
            Ok(SignResponse {
                cert_chain_pem: chain,
                not_after_unix: not_after,
            })
        }
        .await;
        let label = ResultLabel {
            result: if result.is_ok() { "issued" } else { "refused" },
        };
        self.metrics.certificates.get_or_create(&label).inc();
        if let Err(e) = &result {
            warn!("certificate refused: {}", e.message());
        }
        result.map(Response::new)
    }
}
