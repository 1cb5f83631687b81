//! The mesh's certificate authority (as Istio's Citadel): a signing key
//! kept in a Secret, and the `Certificates` gRPC service that signs a
//! proxy's CSR for exactly the SPIFFE identity of the service-account token
//! it presents.
//!
//! [`authority`] is pure (generate, load, sign); [`secret`] keeps it in the
//! cluster; [`server`] checks tokens with a TokenReview and answers proxies.

pub mod authority;
pub mod secret;
pub mod server;

pub use authority::{Authority, CaError, ServingCert};
pub use server::CertificateServer;
