//! Certificates a gateway serves to outside clients (Gateway HTTPS
//! listeners, from `kubernetes.io/tls` Secrets), chosen per handshake by
//! the name the client asks for (SNI). The operator parses them with the
//! same function to report a bad Secret before any proxy sees it.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sluice_proto::config::ServerCertificate;

use crate::{IdentityError, parse_certs};

/// The rustls config of a listener that terminates TLS with
/// `certificates` (ALPN `h2` and `http/1.1`). On failure, the index of the
/// certificate at fault, so that config validation can name it.
pub fn listener_config(
    certificates: &[ServerCertificate],
) -> Result<Arc<ServerConfig>, (usize, IdentityError)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sni = SniCertificates::default();
    for (i, c) in certificates.iter().enumerate() {
        let key = certified_key(&provider, &c.chain_pem, &c.key_pem).map_err(|e| (i, e))?;
        sni.add(&c.hostnames, Arc::new(key));
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| (0, IdentityError::Key(e.to_string())))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(sni));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A PEM chain (leaf first) and its private key (PKCS#1, PKCS#8 or SEC1,
/// as Kubernetes TLS Secrets hold them) as rustls signs with them. Fails
/// when either does not parse or the key is not the leaf's.
pub fn certified_key(
    provider: &CryptoProvider,
    chain_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, IdentityError> {
    let chain = parse_certs(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| IdentityError::Key(format!("not the certificate's key: {e}")))?;
    Ok(certified)
}

/// Certificates by the hostnames they serve. A name is exact
/// (`shop.example.com`) or a wildcard (`*.example.com`, which covers one
/// or more labels, as Gateway API listener hostnames do); the most
/// specific match wins, and a client without SNI or with an unknown name
/// gets the default, if there is one.
#[derive(Debug, Default)]
pub struct SniCertificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniCertificates {
    /// Adds `key` for `hostnames` (none: the default). A name already
    /// taken keeps its first certificate, as the first listener keeps a
    /// contested hostname.
    pub fn add(&mut self, hostnames: &[String], key: Arc<CertifiedKey>) {
        if hostnames.is_empty() {
            self.default.get_or_insert(key);
            return;
        }
        for h in hostnames {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_owned()),
                None => self.exact.entry(h),
            }
            .or_insert_with(|| key.clone());
        }
    }

    /// Whether no certificate was added.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }

    /// The certificate for `server_name` (`None`: the client sent no SNI).
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        // Longest suffix first: `*.b.example.com` before `*.example.com`.
        let mut rest = name.as_str();
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(k) = self.wildcard.get(suffix) {
                return Some(k.clone());
            }
            rest = suffix;
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("rcgen");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    fn key(name: &str) -> Arc<CertifiedKey> {
        let (c, k) = pair(name);
        Arc::new(certified_key(&rustls::crypto::ring::default_provider(), &c, &k).expect("parses"))
    }

    #[test]
    fn the_most_specific_name_wins_and_the_default_takes_the_rest() {
        let (exact, wide, narrow, fallback) = (
            key("shop.example.com"),
            key("*.example.com"),
            key("*.eu.example.com"),
            key("default"),
        );
        let mut sni = SniCertificates::default();
        sni.add(&["shop.example.com".into()], exact.clone());
        sni.add(&["*.example.com".into()], wide.clone());
        sni.add(&["*.eu.example.com".into()], narrow.clone());
        sni.add(&[], fallback.clone());
        let is = |name: Option<&str>, want: &Arc<CertifiedKey>| {
            assert!(
                Arc::ptr_eq(&sni.pick(name).expect("a certificate"), want),
                "{name:?}"
            );
        };
        is(Some("SHOP.example.com"), &exact);
        is(Some("api.example.com"), &wide);
        is(Some("a.b.example.com"), &wide);
        is(Some("api.eu.example.com"), &narrow);
        is(Some("example.com"), &fallback);
        is(Some("other.org"), &fallback);
        is(None, &fallback);
    }

    #[test]
    fn without_a_default_an_unknown_name_gets_no_certificate() {
        let mut sni = SniCertificates::default();
        sni.add(&["a.example.com".into()], key("a.example.com"));
        assert!(sni.pick(Some("b.example.com")).is_none());
        assert!(sni.pick(None).is_none());
        sni.add(&["a.example.com".into()], key("a.example.com"));
        assert!(!sni.is_empty());
    }

    #[test]
    fn a_key_of_another_certificate_or_bad_pem_is_refused() {
        let provider = rustls::crypto::ring::default_provider();
        let (cert, _) = pair("a.example.com");
        let (_, other_key) = pair("b.example.com");
        let err = certified_key(&provider, &cert, &other_key).expect_err("mismatch");
        assert!(
            err.to_string().contains("not the certificate's key"),
            "{err}"
        );
        let err = certified_key(&provider, "garbage", &other_key).expect_err("no cert");
        assert!(err.to_string().contains("certificate"), "{err}");
        let err = certified_key(&provider, &cert, "garbage").expect_err("no key");
        assert!(matches!(err, IdentityError::Key(_)), "{err}");
    }
}
