//! The mesh's certificate authority (as Istio's Citadel): a signing key
//! kept in a Secret, and the `Certificates` gRPC service that signs a
//! proxy's CSR for exactly the SPIFFE identity of the service-account token
//! it presents.
//!
//! [`authority`] is pure (generate, load, sign); [`secret`] keeps it in the
//! cluster; [`server`] checks tokens with a TokenReview and answers proxies;
//! [`own`] keeps the operator's own certificate; [`publish`] puts the roots
//! in every namespace for proxies to bootstrap with.

pub mod authority;
pub mod own;
pub mod publish;
pub mod secret;
pub mod server;

pub use authority::{Authority, CaError, OwnCertificate};
pub use server::CertificateServer;
