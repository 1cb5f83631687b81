//! Who is calling the control plane. The identity is the SPIFFE ID of the
//! client certificate the TLS handshake validated, never what a message
//! says; a proxy's claim to be a pod holds only if that pod exists, runs
//! with that identity's service account in that namespace, and has the
//! connection's source address. Every refusal has a [`Reason`], counted in
//! `sluice_control_plane_refused_total`.

pub mod pods;
pub mod reports;

use std::net::IpAddr;

use sluice_identity::SpiffeId;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

pub use pods::{VerifiedProxy, verify_proxy};

/// Why a caller was refused, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No client certificate where one is required.
    NoCertificate,
    /// A certificate of another trust domain, or without a mesh SPIFFE ID.
    TrustDomain,
    /// The first message is not a well-formed hello.
    BadHello,
    /// The hello's namespace is not the certificate's.
    Namespace,
    /// A gateway that is neither in the operator's namespace nor a
    /// dedicated Gateway's proxy (its label and its account).
    GatewayNamespace,
    /// The hello names a pod that does not exist (or has ended).
    UnknownPod,
    /// The pod runs with another service account.
    ServiceAccount,
    /// The pod does not have the connection's source address.
    Address,
    /// A relay from something that is not an operator replica.
    NotOperator,
}

impl Reason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoCertificate => "no_certificate",
            Reason::TrustDomain => "trust_domain",
            Reason::BadHello => "bad_hello",
            Reason::Namespace => "namespace",
            Reason::GatewayNamespace => "gateway_namespace",
            Reason::UnknownPod => "unknown_pod",
            Reason::ServiceAccount => "service_account",
            Reason::Address => "address",
            Reason::NotOperator => "not_operator",
        }
    }
}

/// A refusal: its reason and what to tell the caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Why, as counted.
    pub reason: Reason,
    /// For the caller and the log.
    pub message: String,
}

impl Refusal {
    /// A refusal for `reason`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }

    /// The gRPC status the caller gets.
    pub fn status(&self) -> tonic::Status {
        match self.reason {
            Reason::NoCertificate | Reason::TrustDomain => {
                tonic::Status::unauthenticated(self.message.clone())
            }
            Reason::BadHello => tonic::Status::invalid_argument(self.message.clone()),
            _ => tonic::Status::permission_denied(self.message.clone()),
        }
    }
}

/// The caller of a gRPC request, as its connection proves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// From the client certificate.
    pub id: SpiffeId,
    /// The connection's source address.
    pub addr: Option<IpAddr>,
}

impl Peer {
    /// The peer of `request`, which must have presented a certificate of
    /// `trust_domain` (the handshake already validated its chain).
    pub fn of<T>(request: &tonic::Request<T>, trust_domain: &str) -> Result<Peer, Refusal> {
        let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let addr = remote_addr(request).map(|a| a.ip().to_canonical());
        let certs = info.and_then(|i| i.peer_certs()).ok_or_else(|| {
            Refusal::new(
                Reason::NoCertificate,
                "no client certificate: this call needs the workload certificate (Certificates.Sign first)",
            )
        })?;
        let id = SpiffeId::of_chain(&certs).ok_or_else(|| {
            Refusal::new(
                Reason::TrustDomain,
                "the client certificate has no mesh SPIFFE ID",
            )
        })?;
        if id.trust_domain != trust_domain {
            return Err(Refusal::new(
                Reason::TrustDomain,
                format!(
                    "the client certificate is of trust domain {:?}, not {trust_domain:?}",
                    id.trust_domain
                ),
            ));
        }
        Ok(Peer { id, addr })
    }
}

/// The connection's source address and port, for the registry.
pub fn remote_addr<T>(request: &tonic::Request<T>) -> Option<std::net::SocketAddr> {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
}

/// What the control plane's services check callers against.
#[derive(Debug, Clone)]
pub struct TrustSettings {
    /// Certificates of other trust domains are refused.
    pub trust_domain: String,
    /// The operator's namespace: gateways run there.
    pub root_namespace: String,
    /// The operator's own identity: the only one that may relay telemetry.
    pub operator: SpiffeId,
}
