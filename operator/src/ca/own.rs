//! The operator's own certificate, issued by the CA it holds: it serves
//! the control plane (proxies verify its SPIFFE ID under the mesh roots),
//! authenticates one replica to another when they relay telemetry, and
//! serves the injection webhook (the API server verifies its DNS name
//! against the `caBundle`). Renewed at half its lifetime and whenever the
//! CA changes, so that a root rotation never leaves it signed by a root
//! that is no longer trusted.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use sluice_identity::{IdentityError, MeshIdentity};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Authority, CaError};

/// Who the operator is.
#[derive(Debug, Clone)]
pub struct OwnSettings {
    /// `spiffe://<td>/ns/<namespace>/sa/<service account>`.
    pub spiffe_id: String,
    /// DNS names and IPs it is reached by.
    pub names: Vec<String>,
}

/// Why the certificate could not be renewed.
#[derive(Debug, thiserror::Error)]
pub enum OwnError {
    /// The CA refused.
    #[error("issuing: {0}")]
    Issue(#[from] CaError),
    /// The result could not be installed.
    #[error("installing: {0}")]
    Install(#[from] IdentityError),
}

/// Issues a certificate and installs it with the CA's roots; returns how
/// long until it should be renewed.
pub fn renew(
    authority: &Authority,
    identity: &MeshIdentity,
    settings: &OwnSettings,
) -> Result<Duration, OwnError> {
    let cert = authority.issue_own(&settings.spiffe_id, &settings.names)?;
    identity.set_roots(&authority.roots_pem)?;
    let not_after = identity.set_leaf(&cert.chain_pem, cert.key_der)?;
    let left = not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Ok((left / 2).max(Duration::from_secs(1)))
}

/// Keeps `identity` current: renews at half-life and on every change of
/// the CA (`ca_changed`), retrying a failure after a few seconds.
pub async fn keep_current(
    authority: Arc<ArcSwap<Authority>>,
    identity: Arc<MeshIdentity>,
    settings: OwnSettings,
    mut ca_changed: watch::Receiver<()>,
) {
    loop {
        let wait = match renew(&authority.load(), &identity, &settings) {
            Ok(next) => {
                info!(identity = %settings.spiffe_id, renew_in = ?next, "operator certificate issued");
                next
            }
            Err(e) => {
                warn!("the operator's certificate: {e}; retrying");
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = ca_changed.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::authority::test_authority;

    #[test]
    fn the_operator_certificate_carries_its_identity_and_names() {
        let ca = test_authority(Duration::from_secs(600));
        let identity = MeshIdentity::default();
        let settings = OwnSettings {
            spiffe_id: "spiffe://cluster.local/ns/sluice-system/sa/sluice-operator".into(),
            names: vec![
                "sluice-operator.sluice-system.svc".into(),
                "10.0.0.1".into(),
            ],
        };
        let renew_in = renew(&ca, &identity, &settings).expect("issued");
        assert!(renew_in <= Duration::from_secs(300) && renew_in > Duration::from_secs(290));
        let leaf = identity.leaf().expect("installed");
        assert_eq!(leaf.spiffe_id, settings.spiffe_id);
        assert_eq!(identity.roots().pem, ca.roots_pem);
        assert!(!identity.expired(SystemTime::now()));
    }
}
