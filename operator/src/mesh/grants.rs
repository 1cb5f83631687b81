//! `ReferenceGrant`: what lets an object point into another namespace (an
//! HTTPRoute at a Service, a Gateway at a certificate Secret). The target
//! namespace's owner grants it; without a grant the reference is refused
//! with `RefNotPermitted`, so that nobody borrows a Service or a private key
//! by naming it.

use std::collections::BTreeMap;
use std::sync::Arc;

use gateway_api::referencegrants::ReferenceGrant;
use kube::ResourceExt;

/// The Gateway API group, as `from`/`to` entries name it.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// One side of a reference: the kind of object, and where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind<'a> {
    /// API group (`""` for core).
    pub group: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// Namespace.
    pub namespace: &'a str,
}

impl<'a> Kind<'a> {
    /// A Gateway API kind (`Gateway`, `HTTPRoute`) in `namespace`.
    pub fn gateway_api(kind: &'a str, namespace: &'a str) -> Kind<'a> {
        Kind {
            group: GATEWAY_GROUP,
            kind,
            namespace,
        }
    }

    /// A core kind (`Service`, `Secret`) in `namespace`.
    pub fn core(kind: &'a str, namespace: &'a str) -> Kind<'a> {
        Kind {
            group: "",
            kind,
            namespace,
        }
    }
}

/// ReferenceGrants by the namespace they live in (the target's).
#[derive(Debug, Default, Clone)]
pub struct Grants {
    by_namespace: BTreeMap<String, Vec<Arc<ReferenceGrant>>>,
}

impl Grants {
    /// Indexes `grants`.
    pub fn of(grants: &[Arc<ReferenceGrant>]) -> Grants {
        let mut by_namespace: BTreeMap<String, Vec<Arc<ReferenceGrant>>> = BTreeMap::new();
        for g in grants {
            by_namespace
                .entry(g.namespace().unwrap_or_default())
                .or_default()
                .push(g.clone());
        }
        Grants { by_namespace }
    }

    /// Whether an object of `from` may refer to `to`'s object `name`:
    /// always within one namespace, otherwise when a grant in the target
    /// namespace names both sides (the name too, if it names one).
    pub fn permits(&self, from: Kind<'_>, to: Kind<'_>, name: &str) -> bool {
        if from.namespace == to.namespace {
            return true;
        }
        self.by_namespace
            .get(to.namespace)
            .into_iter()
            .flatten()
            .any(|g| {
                g.spec.from.iter().any(|f| {
                    f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
                }) && g.spec.to.iter().any(|t| {
                    t.group == to.group
                        && t.kind == to.kind
                        && t.name.as_deref().is_none_or(|n| n == name)
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_api::referencegrants::{ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo};

    fn grant(ns: &str, from_ns: &str, to_kind: &str, name: Option<&str>) -> Arc<ReferenceGrant> {
        let mut g = ReferenceGrant::new(
            "g",
            ReferenceGrantSpec {
                from: vec![ReferenceGrantFrom {
                    group: GATEWAY_GROUP.into(),
                    kind: "HTTPRoute".into(),
                    namespace: from_ns.into(),
                }],
                to: vec![ReferenceGrantTo {
                    group: String::new(),
                    kind: to_kind.into(),
                    name: name.map(Into::into),
                }],
            },
        );
        g.metadata.namespace = Some(ns.into());
        Arc::new(g)
    }

    const ROUTE_IN_WEB: Kind<'static> = Kind {
        group: GATEWAY_GROUP,
        kind: "HTTPRoute",
        namespace: "web",
    };

    fn service_in(namespace: &str) -> Kind<'_> {
        Kind::core("Service", namespace)
    }

    #[test]
    fn the_same_namespace_needs_no_grant() {
        assert!(Grants::default().permits(ROUTE_IN_WEB, service_in("web"), "api"));
    }

    #[test]
    fn another_namespace_needs_a_grant_there_naming_both_sides() {
        let none = Grants::default();
        assert!(!none.permits(ROUTE_IN_WEB, service_in("backend"), "api"));

        let any_service = Grants::of(&[grant("backend", "web", "Service", None)]);
        assert!(any_service.permits(ROUTE_IN_WEB, service_in("backend"), "api"));

        let one_service = Grants::of(&[grant("backend", "web", "Service", Some("db"))]);
        assert!(!one_service.permits(ROUTE_IN_WEB, service_in("backend"), "api"));
        assert!(one_service.permits(ROUTE_IN_WEB, service_in("backend"), "db"));
    }

    #[test]
    fn a_grant_elsewhere_or_for_others_does_not_count() {
        // In the route's own namespace rather than the target's.
        let misplaced = Grants::of(&[grant("web", "web", "Service", None)]);
        assert!(!misplaced.permits(ROUTE_IN_WEB, service_in("backend"), "api"));
        // For routes of another namespace.
        let other_from = Grants::of(&[grant("backend", "shop", "Service", None)]);
        assert!(!other_from.permits(ROUTE_IN_WEB, service_in("backend"), "api"));
        // For Secrets, not Services.
        let secrets = Grants::of(&[grant("backend", "web", "Secret", None)]);
        assert!(!secrets.permits(ROUTE_IN_WEB, service_in("backend"), "api"));
    }
}
