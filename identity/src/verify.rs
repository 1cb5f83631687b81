//! Mesh TLS on both ends: chain validation against the mesh roots, the
//! SPIFFE identity in the URI SAN (what Sluice authenticates, not DNS
//! names), and the rustls configs built around them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig,
    SignatureScheme,
};

use crate::{IdentityError, MeshIdentity};

/// The identity and expiry of a certificate.
pub fn describe(cert: &CertificateDer<'_>) -> Result<(String, SystemTime), IdentityError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x) =
        X509Certificate::from_der(cert).map_err(|e| IdentityError::Pem(format!("x509: {e}")))?;
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(x.validity().not_after.timestamp().max(0) as u64);
    let id = x
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
                _ => None,
            })
        })
        .ok_or(IdentityError::NoSpiffeId)?;
    Ok((id, not_after))
}

/// Istio's principal form of a SPIFFE ID: `cluster.local/ns/x/sa/y`.
pub fn principal(spiffe_id: &str) -> &str {
    spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id)
}

fn cert_error(e: webpki::Error) -> Error {
    let c = match e {
        webpki::Error::CertExpired { .. } => CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
        webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        _ => CertificateError::BadEncoding,
    };
    Error::InvalidCertificate(c)
}

impl MeshIdentity {
    /// Validates a peer chain against the current roots; returns the
    /// peer's SPIFFE ID.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<String, Error> {
        let roots = self.roots();
        if roots.anchors.is_empty() {
            return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        }
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(cert_error)?;
        cert.verify_for_usage(
            self.provider().signature_verification_algorithms.all,
            &roots.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(cert_error)?;
        describe(end_entity)
            .map(|(id, _)| id)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider()
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider().signature_verification_algorithms,
        )
    }
}

/// The signature checks both verifiers share: TLS 1.3 only, with the
/// proxy's crypto provider.
macro_rules! signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            // The mesh speaks TLS 1.3 only.
            Err(Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls13RequiredForQuic,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.identity.tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.identity.schemes()
        }
    };
}

/// Decides, once the client's chain is valid, whether this peer may open a
/// connection at all (L4 authorization). A refusal becomes the TLS alert
/// `access_denied`, which the client's sidecar turns into a closed
/// connection for its app.
pub type ConnectionCheck = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Verifies client chains for the inbound side (a certificate required)
/// and for the control plane (optional: a proxy without one may only ask
/// for one).
struct ClientVerifier {
    identity: Arc<MeshIdentity>,
    check: ConnectionCheck,
    mandatory: bool,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientVerifier")
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let id = self.identity.verify_chain(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        if (self.check)(principal(&id)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    signatures!();
}

/// Verifies that the server presents exactly the identity expected of the
/// endpoint (secure naming), under the mesh roots.
#[derive(Debug)]
struct ServerVerifier {
    identity: Arc<MeshIdentity>,
    expected: String,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let id = self.identity.verify_chain(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if id == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    signatures!();
}

/// Presents the current leaf on both sides, so a rotation needs no new
/// config.
#[derive(Debug)]
struct CurrentLeaf(Arc<MeshIdentity>);

impl ResolvesServerCert for CurrentLeaf {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.leaf().map(|l| l.certified.clone())
    }
}

impl ResolvesClientCert for CurrentLeaf {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.leaf().map(|l| l.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.has_leaf()
    }
}

/// The inbound config for one connection: `check` sees the client's
/// principal once its chain is valid.
pub fn server_config(
    identity: &Arc<MeshIdentity>,
    check: ConnectionCheck,
) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(identity.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ClientVerifier {
            identity: identity.clone(),
            check,
            mandatory: true,
        }))
        .with_cert_resolver(Arc::new(CurrentLeaf(identity.clone())));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Mesh connections are long-lived and pooled: no tickets to manage.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The outbound config towards endpoints that must present `expected`,
/// offering `alpn` (the application protocol carried through the tunnel;
/// empty for opaque TCP, which offers none).
pub fn client_config(
    identity: &Arc<MeshIdentity>,
    expected: &str,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, Error> {
    let mut config = ClientConfig::builder_with_provider(identity.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier {
            identity: identity.clone(),
            expected: expected.to_owned(),
        }))
        .with_client_cert_resolver(Arc::new(CurrentLeaf(identity.clone())));
    config.alpn_protocols = if alpn.is_empty() {
        Vec::new()
    } else {
        vec![alpn.to_vec()]
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The control plane's server config: the operator's current certificate,
/// and client certificates validated against the mesh roots when a client
/// presents one (every stream but `Certificates.Sign` then requires one;
/// the services read it from the connection).
pub fn control_plane_server_config(
    identity: &Arc<MeshIdentity>,
) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(identity.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ClientVerifier {
            identity: identity.clone(),
            check: Box::new(|_| true),
            mandatory: false,
        }))
        .with_cert_resolver(Arc::new(CurrentLeaf(identity.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A server config that presents the identity's current certificate and
/// asks nothing of clients: the operator's admission webhook, which the
/// API server calls and verifies against the `caBundle` it is given.
pub fn serving_config(identity: &Arc<MeshIdentity>) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(identity.provider().clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CurrentLeaf(identity.clone())));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The config of a proxy (or an operator replica) towards the control
/// plane: the server must present `expected` (the operator's SPIFFE ID)
/// under the mesh roots; the client presents its own certificate once it
/// has one.
pub fn control_plane_client_config(
    identity: &Arc<MeshIdentity>,
    expected: &str,
) -> Result<Arc<ClientConfig>, Error> {
    client_config(identity, expected, b"h2")
}

/// Whether an error (anywhere in its source chain) is the peer's TLS alert
/// `access_denied`: the destination's sidecar refused this connection.
pub fn is_access_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(rustls::Error::AlertReceived(rustls::AlertDescription::AccessDenied)) =
            err.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(rustls::Error::AlertReceived(rustls::AlertDescription::AccessDenied)) =
                inner.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        cur = err.source();
    }
    false
}
