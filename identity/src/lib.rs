//! A mesh identity: the current workload certificate and the mesh's trust
//! roots, both swapped atomically, and the rustls pieces that read them on
//! every handshake. A rotated certificate or a new root set applies to the
//! next handshake; open connections are not disturbed. Proxies hold one for
//! mesh mTLS and towards the control plane; the operator holds one to serve
//! the control plane and to authenticate its peers.

pub mod channel;
pub mod serving;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};
use rustls::sign::CertifiedKey;

/// Why a certificate or root could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// PEM that holds no certificate, or a malformed one.
    #[error("invalid certificate PEM: {0}")]
    Pem(String),
    /// A root that cannot anchor a chain.
    #[error("invalid trust root: {0}")]
    Root(String),
    /// A key rustls cannot sign with.
    #[error("unusable private key: {0}")]
    Key(String),
    /// A certificate without a `spiffe://` URI SAN.
    #[error("the certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
}

/// The certificate this proxy presents.
#[derive(Debug)]
pub struct Leaf {
    /// Chain and key, as rustls wants them.
    pub certified: Arc<CertifiedKey>,
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub spiffe_id: String,
    /// When it expires.
    pub not_after: SystemTime,
}

/// Trust anchors, parsed once per root change.
#[derive(Debug, Default)]
pub struct Roots {
    /// For chain validation.
    pub anchors: Vec<TrustAnchor<'static>>,
    /// As received, to notice when nothing changed.
    pub pem: Vec<String>,
}

/// Shared by every worker; read on handshakes only, never per request.
#[derive(Debug)]
pub struct MeshIdentity {
    provider: Arc<CryptoProvider>,
    leaf: ArcSwapOption<Leaf>,
    roots: ArcSwap<Roots>,
    /// Whether this proxy is getting a certificate (it has a token).
    wanted: AtomicBool,
    /// Flips to true with the first certificate, for those who wait on it.
    installed: tokio::sync::watch::Sender<bool>,
}

impl Default for MeshIdentity {
    fn default() -> Self {
        MeshIdentity {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            leaf: ArcSwapOption::empty(),
            roots: ArcSwap::from_pointee(Roots::default()),
            wanted: AtomicBool::new(false),
            installed: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl MeshIdentity {
    /// The crypto provider every TLS config of the proxy uses.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The current certificate, once one has been issued.
    pub fn leaf(&self) -> Option<Arc<Leaf>> {
        self.leaf.load_full()
    }

    /// Whether a certificate is installed: per request, so it reads without
    /// touching the certificate's shared reference count.
    pub fn has_leaf(&self) -> bool {
        self.leaf.load().is_some()
    }

    /// Marks this proxy as one that gets a certificate: until the first
    /// arrives it is not ready, so that its app does not start talking
    /// plaintext to a mesh that expects mTLS.
    pub fn want(&self) {
        self.wanted.store(true, Relaxed);
    }

    /// Whether a certificate is wanted and none has arrived yet.
    pub fn waiting(&self) -> bool {
        self.wanted.load(Relaxed) && !self.has_leaf()
    }

    /// Resolves once a certificate is installed (at once if one is).
    pub async fn installed(&self) {
        let mut rx = self.installed.subscribe();
        // The sender lives in `self`: the wait cannot fail.
        let _ = rx.wait_for(|installed| *installed).await;
    }

    /// Whether the current certificate has expired at `now` (a failed
    /// renewal left it in place): peers refuse it, so the proxy is not
    /// ready.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.leaf
            .load()
            .as_ref()
            .is_some_and(|l| l.not_after <= now)
    }

    /// The current roots.
    pub fn roots(&self) -> Arc<Roots> {
        self.roots.load_full()
    }

    /// Replaces the trust roots (old and new both during a rotation).
    /// Unchanged PEM is a no-op.
    pub fn set_roots(&self, pem: &[String]) -> Result<(), IdentityError> {
        if self.roots.load().pem == pem {
            return Ok(());
        }
        let roots = parse_roots(pem)?;
        self.roots.store(Arc::new(roots));
        Ok(())
    }

    /// Installs a newly issued chain (leaf first) and its key; returns the
    /// leaf's notAfter.
    pub fn set_leaf(
        &self,
        chain_pem: &[String],
        key_der: Vec<u8>,
    ) -> Result<SystemTime, IdentityError> {
        let chain = chain_pem
            .iter()
            .map(|p| parse_certs(p))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::Pem("empty chain".into()))?;
        let (spiffe_id, not_after) = verify::describe(leaf)?;
        let key = PrivateKeyDer::Pkcs8(key_der.into());
        let signing = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(chain, signing));
        self.leaf.store(Some(Arc::new(Leaf {
            certified,
            spiffe_id,
            not_after,
        })));
        self.installed.send_replace(true);
        Ok(not_after)
    }
}

impl MeshIdentity {
    /// Installs a chain and a PKCS#8 key read from PEM files (static mode,
    /// where no control plane issues certificates).
    pub fn set_leaf_pem(
        &self,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<SystemTime, IdentityError> {
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        self.set_leaf(&[chain_pem.to_owned()], key.secret_pkcs8_der().to_vec())
    }
}

/// Every certificate in a PEM text.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(IdentityError::Pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Parses root PEMs into trust anchors (what config validation checks too).
pub fn parse_roots(pem: &[String]) -> Result<Roots, IdentityError> {
    let mut anchors = Vec::new();
    for p in pem {
        for der in parse_certs(p)? {
            let anchor = webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| IdentityError::Root(format!("{e:?}")))?
                .to_owned();
            anchors.push(anchor);
        }
    }
    Ok(Roots {
        anchors,
        pem: pem.to_vec(),
    })
}

/// A SPIFFE ID of the mesh, in its parts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// `cluster.local`.
    pub trust_domain: String,
    /// The workload's namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
}

impl SpiffeId {
    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`; anything else is none.
    pub fn parse(uri: &str) -> Option<SpiffeId> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let (td, ns_key, ns, sa_key, sa) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || ns_key != "ns" || sa_key != "sa" {
            return None;
        }
        if [td, ns, sa].iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(SpiffeId {
            trust_domain: td.to_owned(),
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
        })
    }

    /// The identity of the peer that presented `chain` (leaf first). The
    /// chain was validated by the handshake that produced it.
    pub fn of_chain(chain: &[CertificateDer<'_>]) -> Option<SpiffeId> {
        let (id, _) = verify::describe(chain.first()?).ok()?;
        SpiffeId::parse(&id)
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_only_in_the_mesh_form() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/handson/sa/curl").expect("valid");
        assert_eq!(
            (id.namespace.as_str(), id.service_account.as_str()),
            ("handson", "curl")
        );
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/handson/sa/curl");
        for bad in [
            "spiffe://cluster.local/ns/handson",
            "spiffe://cluster.local/ns/handson/sa/curl/extra",
            "spiffe://cluster.local/sa/curl/ns/handson",
            "https://cluster.local/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
    }
}
