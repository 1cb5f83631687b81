//! Certificates and keys for a test control plane: a CA, the apiserver's
//! serving certificate, an admin client certificate in `system:masters`, and
//! the service-account signing key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

/// PEM files written for one control plane.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The cluster CA certificate (also the client CA of the apiserver).
    pub ca_cert: PathBuf,
    /// The CA's certificate in PEM, for kubeconfigs.
    pub ca_pem: String,
    /// Serving certificate of kube-apiserver.
    pub apiserver_cert: PathBuf,
    /// Key of the serving certificate.
    pub apiserver_key: PathBuf,
    /// Admin client certificate in PEM (`O=system:masters`).
    pub admin_cert_pem: String,
    /// Admin client key in PEM.
    pub admin_key_pem: String,
    /// Service-account token signing key (EC P-256, PKCS#8).
    pub service_account_key: PathBuf,
    /// Its public half, which verifies tokens.
    pub service_account_pub: PathBuf,
}

fn pki_err(e: rcgen::Error) -> Error {
    Error::Setup(format!("generating certificates: {e}"))
}

impl Pki {
    /// Generates everything into `dir`. `ips` and `names` are the apiserver's
    /// subject alternative names.
    pub fn generate(dir: &Path, ips: &[IpAddr], names: &[&str]) -> Result<Pki, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let ca_key = KeyPair::generate().map_err(pki_err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sluice-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(pki_err)?;

        let server_key = KeyPair::generate().map_err(pki_err)?;
        let mut server =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map_err(pki_err)?;
        server
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        server
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let server_cert = server.signed_by(&server_key, &ca).map_err(pki_err)?;

        let admin_key = KeyPair::generate().map_err(pki_err)?;
        let mut admin = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "sluice-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let admin_cert = admin.signed_by(&admin_key, &ca).map_err(pki_err)?;

        let sa_key = KeyPair::generate().map_err(pki_err)?;

        let write = |name: &str, body: &str| -> Result<PathBuf, Error> {
            let path = dir.join(name);
            std::fs::write(&path, body).map_err(|e| Error::io(&path, e))?;
            Ok(path)
        };
        Ok(Pki {
            ca_cert: write("ca.crt", &ca.pem())?,
            ca_pem: ca.pem(),
            apiserver_cert: write("apiserver.crt", &server_cert.pem())?,
            apiserver_key: write("apiserver.key", &server_key.serialize_pem())?,
            admin_cert_pem: admin_cert.pem(),
            admin_key_pem: admin_key.serialize_pem(),
            service_account_key: write("sa.key", &sa_key.serialize_pem())?,
            service_account_pub: write("sa.pub", &sa_key.public_key_pem())?,
        })
    }
}
