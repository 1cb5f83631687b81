//! The certificates of HTTPS listeners: each `certificateRef` resolved to a
//! `kubernetes.io/tls` Secret (across namespaces only with a
//! ReferenceGrant) whose chain and key parse and match, as the gateway
//! proxies will load them. What does not resolve is reported on the
//! listener rather than pushed for the proxies to refuse.

use std::collections::BTreeMap;
use std::sync::Arc;

use gateway_api::gateways::{GatewayListeners, GatewayListenersTlsMode};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use sluice_proto::config::ServerCertificate;

use super::grants::{Grants, Kind};
use super::{Cond, reason};

/// TLS Secrets by (namespace, name).
pub struct Secrets<'a>(BTreeMap<(String, String), &'a Secret>);

impl<'a> Secrets<'a> {
    /// Indexes `secrets` (already only `kubernetes.io/tls` ones).
    pub fn of(secrets: &'a [Arc<Secret>]) -> Secrets<'a> {
        Secrets(
            secrets
                .iter()
                .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), &**s))
                .collect(),
        )
    }
}

/// A listener's certificates: those usable, and the first problem with
/// the others (its `ResolvedRefs=False`).
#[derive(Debug, Default)]
pub struct Found {
    /// Certificates the proxies will serve, for the listener's hostname.
    pub usable: Vec<ServerCertificate>,
    /// Why a ref could not be used.
    pub problem: Option<Cond>,
}

/// Resolves listener `l`'s certificateRefs (its Gateway in `gw_ns`).
/// `Err` when the listener cannot be accepted at all (TLS passthrough).
pub fn of_listener(
    l: &GatewayListeners,
    gw_ns: &str,
    secrets: &Secrets<'_>,
    grants: &Grants,
) -> Result<Found, Cond> {
    let tls = l.tls.as_ref();
    if tls.and_then(|t| t.mode.as_ref()) == Some(&GatewayListenersTlsMode::Passthrough) {
        return Err(Cond::no(
            "Accepted",
            reason::UNSUPPORTED_PROTOCOL,
            "HTTPS listeners terminate TLS; tls.mode Passthrough is not supported",
        ));
    }
    let hostnames: Vec<String> = l.hostname.iter().cloned().collect();
    let mut found = Found::default();
    let refs = tls
        .and_then(|t| t.certificate_refs.as_deref())
        .unwrap_or(&[]);
    if refs.is_empty() {
        found.problem = Some(invalid("the listener names no certificateRef"));
    }
    for r in refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        let resolved = resolve(group, kind, ns, &r.name, gw_ns, secrets, grants);
        match resolved {
            Ok((chain_pem, key_pem)) => found.usable.push(ServerCertificate {
                hostnames: hostnames.clone(),
                chain_pem,
                key_pem,
            }),
            Err(cond) => {
                found.problem.get_or_insert(cond);
            }
        }
    }
    Ok(found)
}

/// One certificateRef's chain and key, or the condition that says why not.
fn resolve(
    group: &str,
    kind: &str,
    ns: &str,
    name: &str,
    gw_ns: &str,
    secrets: &Secrets<'_>,
    grants: &Grants,
) -> Result<(String, String), Cond> {
    if !group.is_empty() || kind != "Secret" {
        return Err(invalid(format!(
            "certificateRef {name}: only core Secrets are supported, not {group}/{kind}"
        )));
    }
    let (gateway, secret) = (
        Kind::gateway_api("Gateway", gw_ns),
        Kind::core("Secret", ns),
    );
    if !grants.permits(gateway, secret, name) {
        return Err(Cond::no(
            "ResolvedRefs",
            reason::REF_NOT_PERMITTED,
            format!(
                "certificateRef {ns}/{name}: no ReferenceGrant in {ns} lets Gateways of {gw_ns} use it"
            ),
        ));
    }
    let Some(s) = secrets.0.get(&(ns.to_owned(), name.to_owned())) else {
        return Err(invalid(format!(
            "certificateRef {ns}/{name}: no Secret of type kubernetes.io/tls by that name"
        )));
    };
    let field = |key: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| invalid(format!("Secret {ns}/{name} has no {key}")))
    };
    let (chain, key) = (field("tls.crt")?, field("tls.key")?);
    let provider = rustls::crypto::ring::default_provider();
    sluice_identity::serving::certified_key(&provider, &chain, &key)
        .map_err(|e| invalid(format!("Secret {ns}/{name}: {e}")))?;
    Ok((chain, key))
}

fn invalid(message: impl Into<String>) -> Cond {
    Cond::no("ResolvedRefs", reason::INVALID_CERTIFICATE_REF, message)
}
