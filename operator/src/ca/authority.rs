//! Generating, loading and signing with the mesh CA, as pure code.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// Why the CA could not be loaded or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The Secret's certificate or key is unusable.
    #[error("CA secret: {0}")]
    Secret(String),
    /// The CSR is malformed or its signature is wrong.
    #[error("invalid CSR: {0}")]
    Csr(String),
    /// The CSR asks for another identity than the token's.
    #[error("the CSR asks for {asked:?}, but the token is for {allowed:?}")]
    Identity {
        /// SANs in the CSR.
        asked: Vec<String>,
        /// The one identity the token proves.
        allowed: String,
    },
    /// rcgen refused.
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
}

/// The signing certificate and key, and what proxies must trust.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// Certificates sent after the leaf: the signing certificate when it is
    /// an intermediate, then its chain.
    chain_pem: Vec<String>,
    /// The roots proxies trust (old and new during a rotation).
    pub roots_pem: Vec<String>,
    /// `cluster.local` in `spiffe://cluster.local/ns/x/sa/y`.
    pub trust_domain: String,
    /// Lifetime of issued certificates.
    pub ttl: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots_pem.len())
            .finish_non_exhaustive()
    }
}

/// The PEM of a new self-signed root: certificate and key.
pub struct GeneratedRoot {
    /// `ca.crt`.
    pub cert_pem: String,
    /// `ca.key`.
    pub key_pem: String,
}

/// A new EC P-256 root valid for ten years.
pub fn generate_root(trust_domain: &str) -> Result<GeneratedRoot, CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sluice");
    dn.push(
        DnType::CommonName,
        format!("sluice root CA ({trust_domain})"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    Ok(GeneratedRoot {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl Authority {
    /// Loads a signing certificate and key. `chain_pem` follows the signing
    /// certificate up to the root when it is an intermediate; `roots_pem`
    /// is what proxies trust (default: the signing certificate itself).
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        chain_pem: Option<&str>,
        roots_pem: Vec<String>,
        trust_domain: String,
        ttl: Duration,
    ) -> Result<Authority, CaError> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| CaError::Secret(format!("ca.key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| CaError::Secret(format!("ca.crt: {e}")))?;
        let intermediate = chain_pem.is_some_and(|c| !c.trim().is_empty());
        let chain_pem = if intermediate {
            vec![
                cert_pem.to_owned(),
                chain_pem.unwrap_or_default().to_owned(),
            ]
        } else {
            vec![]
        };
        let roots_pem = if roots_pem.is_empty() {
            vec![cert_pem.to_owned()]
        } else {
            roots_pem
        };
        Ok(Authority {
            issuer,
            chain_pem,
            roots_pem,
            trust_domain,
            ttl,
        })
    }

    /// The SPIFFE ID of a service account.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        sluice_proto::config::spiffe_id(&self.trust_domain, namespace, service_account)
    }

    /// Signs `csr_pem` when it asks for exactly the identity of
    /// `namespace/service_account`; returns the chain (leaf first) and the
    /// leaf's notAfter (Unix seconds). Only the CSR's public key is taken:
    /// validity, usages and names are the CA's.
    pub fn sign(
        &self,
        csr_pem: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<(Vec<String>, i64), CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let allowed = self.spiffe_id(namespace, service_account);
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|s| match s {
                SanType::URI(u) => u.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [allowed.clone()] {
            return Err(CaError::Identity { asked, allowed });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(allowed.as_str().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        // A little slack for clocks that disagree.
        params.not_before = now - time::Duration::minutes(1);
        let ttl = time::Duration::try_from(self.ttl).unwrap_or(time::Duration::hours(24));
        params.not_after = now + ttl;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&fastrand_serial()));
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        let mut chain = vec![cert.pem()];
        chain.extend(self.chain_pem.iter().cloned());
        Ok((chain, params.not_after.unix_timestamp()))
    }
}

/// A certificate of the operator itself, and its key.
pub struct OwnCertificate {
    /// PEM, leaf first, then any intermediates.
    pub chain_pem: Vec<String>,
    /// PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl Authority {
    /// A certificate for the operator itself, for the CA's lifetime
    /// (`ttl`): its SPIFFE ID, which proxies and the other replicas verify,
    /// and the DNS names and IPs it is reached by, which the API server
    /// verifies when it calls the injection webhook.
    pub fn issue_own(&self, spiffe_id: &str, names: &[String]) -> Result<OwnCertificate, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        for n in names {
            params
                .subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.as_str().try_into()?),
                });
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        let ttl = time::Duration::try_from(self.ttl).unwrap_or(time::Duration::hours(24));
        params.not_after = now + ttl;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&fastrand_serial()));
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain_pem = vec![cert.pem()];
        chain_pem.extend(self.chain_pem.iter().cloned());
        Ok(OwnCertificate {
            chain_pem,
            key_der: key.serialize_der(),
        })
    }
}

/// A positive 16-byte serial.
fn fastrand_serial() -> [u8; 16] {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    b[0] &= 0x7f;
    b
}

/// A new self-signed CA for `cluster.local` issuing for `ttl`: for
/// tests of what the CA's certificates are used for.
#[cfg(test)]
pub(crate) fn test_authority(ttl: Duration) -> Authority {
    let root = generate_root("cluster.local").expect("root");
    Authority::from_pem(
        &root.cert_pem,
        &root.key_pem,
        None,
        vec![],
        "cluster.local".into(),
        ttl,
    )
    .expect("loads")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(id: &str) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(id.try_into().expect("uri"))];
        p.serialize_request(&key).expect("csr").pem().expect("pem")
    }

    fn authority() -> Authority {
        test_authority(Duration::from_secs(3600))
    }

    #[test]
    fn signs_exactly_the_token_identity() {
        let ca = authority();
        let (chain, not_after) = ca
            .sign(&csr_for("spiffe://cluster.local/ns/h/sa/curl"), "h", "curl")
            .expect("signed");
        assert_eq!(chain.len(), 1);
        assert!(not_after > OffsetDateTime::now_utc().unix_timestamp() + 3500);
        assert_eq!(ca.roots_pem.len(), 1);
    }

    #[test]
    fn refuses_another_identity() {
        let ca = authority();
        let e = ca
            .sign(
                &csr_for("spiffe://cluster.local/ns/h/sa/admin"),
                "h",
                "curl",
            )
            .expect_err("refused");
        assert!(e.to_string().contains("sa/curl"), "{e}");
        let e = ca.sign("not a csr", "h", "curl").expect_err("refused");
        assert!(matches!(e, CaError::Csr(_)));
    }
}
