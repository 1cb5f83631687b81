//! Who a dashboard or debug user is, and what they may do, as Kubernetes
//! says: a bearer token is authenticated by a TokenReview, and each action
//! is allowed by a SubjectAccessReview for that user (`patch` on the
//! Rollout to promote or abort it, `list` on Rollouts to read). A client
//! on loopback without a token is the local user (the sandbox, or `kubectl
//! port-forward`, which itself needs the right to reach the pod). Answers
//! are cached for a few seconds, as the dashboard polls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

/// How long an authentication or authorization answer is reused.
const CACHE_FOR: Duration = Duration::from_secs(10);
/// Entries before the cache is emptied (bounds its memory).
const CACHE_MAX: usize = 4096;

/// Why a TokenReview did not vouch for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRejected {
    /// The review could not be made (the API server's error).
    Unavailable(String),
    /// The API server did not authenticate the token (its reason).
    Invalid(String),
}

/// Who the API server says `token` belongs to: one TokenReview, for
/// `audiences` (`None`: the API server's own), shared by every surface
/// that takes a token (the dashboard, the certificate service).
pub async fn review_token(
    client: &Client,
    token: &str,
    audiences: Option<Vec<String>>,
) -> Result<UserInfo, TokenRejected> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            audiences,
        },
        ..Default::default()
    };
    let status = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| TokenRejected::Unavailable(e.to_string()))?
        .status
        .unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(TokenRejected::Invalid(status.error.unwrap_or_default()));
    }
    Ok(status.user.unwrap_or_default())
}

/// A user of the dashboard or the debug endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// On loopback, without a token.
    Local,
    /// Authenticated by Kubernetes.
    Kubernetes(KubeUser),
}

/// What a TokenReview said about a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KubeUser {
    /// `system:serviceaccount:ns:name`, `alice`, …
    pub username: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// The user's uid.
    pub uid: Option<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No token from outside loopback.
    #[error("a bearer token is required from outside loopback (Authorization: Bearer <token>)")]
    NoToken,
    /// The token is not valid.
    #[error("the token is not valid: {0}")]
    InvalidToken(String),
    /// Kubernetes says no.
    #[error("{user} may not {verb} {what}")]
    Forbidden {
        /// Who asked.
        user: String,
        /// What they asked to do.
        verb: String,
        /// To what.
        what: String,
    },
    /// Kubernetes could not be asked.
    #[error("cannot check access: {0}")]
    Unavailable(String),
}

impl Denied {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::NoToken => "no_token",
            Denied::InvalidToken(_) => "invalid_token",
            Denied::Forbidden { .. } => "forbidden",
            Denied::Unavailable(_) => "unavailable",
        }
    }

    /// 401 for who is unknown, 403 for who may not, 503 when unsure.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Denied::NoToken | Denied::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Denied::Forbidden { .. } => StatusCode::FORBIDDEN,
            Denied::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An action on Rollouts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Action {
    /// `list`, `patch`, …
    pub verb: &'static str,
    /// None: every namespace.
    pub namespace: Option<String>,
    /// None: every Rollout.
    pub name: Option<String>,
}

/// Answers by key, each with when it was given.
type Cache<K, V> = Mutex<HashMap<K, (V, Instant)>>;

/// Checks tokens and actions with the API server.
pub struct Access {
    client: Client,
    users: Cache<String, Result<KubeUser, Denied>>,
    decisions: Cache<(KubeUser, Action), bool>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Access")
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn cached<K: std::hash::Hash + Eq, V: Clone>(map: &Cache<K, V>, key: &K) -> Option<V> {
    let map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.get(key)
        .filter(|(_, at)| at.elapsed() < CACHE_FOR)
        .map(|(v, _)| v.clone())
}

fn remember<K: std::hash::Hash + Eq, V>(map: &Cache<K, V>, key: K, v: V) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= CACHE_MAX {
        map.clear();
    }
    map.insert(key, (v, Instant::now()));
}

impl Access {
    /// Asks `client`'s API server.
    pub fn new(client: Client) -> Access {
        Access {
            client,
            users: Mutex::default(),
            decisions: Mutex::default(),
        }
    }

    /// Who sent a request from `peer` with `headers`.
    pub async fn authenticate(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<User, Denied> {
        let Some(token) = bearer(headers) else {
            return if peer.ip().is_loopback() {
                Ok(User::Local)
            } else {
                Err(Denied::NoToken)
            };
        };
        if let Some(answer) = cached(&self.users, &token.to_owned()) {
            return answer.map(User::Kubernetes);
        }
        let answer = self.review(token).await;
        if !matches!(answer, Err(Denied::Unavailable(_))) {
            remember(&self.users, token.to_owned(), answer.clone());
        }
        answer.map(User::Kubernetes)
    }

    async fn review(&self, token: &str) -> Result<KubeUser, Denied> {
        let UserInfo {
            username,
            groups,
            uid,
            ..
        } = review_token(&self.client, token, None)
            .await
            .map_err(|e| match e {
                TokenRejected::Unavailable(m) => Denied::Unavailable(m),
                TokenRejected::Invalid(m) => Denied::InvalidToken(m),
            })?;
        Ok(KubeUser {
            username: username.unwrap_or_default(),
            groups: groups.unwrap_or_default(),
            uid,
        })
    }

    /// Whether `user` may do `action` on Rollouts.
    pub async fn allow(&self, user: &User, action: Action) -> Result<(), Denied> {
        let User::Kubernetes(u) = user else {
            return Ok(());
        };
        let key = (u.clone(), action.clone());
        let allowed = match cached(&self.decisions, &key) {
            Some(a) => a,
            None => {
                let a = self.review_access(u, &action).await?;
                remember(&self.decisions, key, a);
                a
            }
        };
        if allowed {
            return Ok(());
        }
        let what = match (&action.namespace, &action.name) {
            (Some(ns), Some(n)) => format!("rollout {ns}/{n}"),
            (Some(ns), None) => format!("rollouts in {ns}"),
            _ => "rollouts in every namespace".to_owned(),
        };
        Err(Denied::Forbidden {
            user: u.username.clone(),
            verb: action.verb.to_owned(),
            what,
        })
    }

    async fn review_access(&self, u: &KubeUser, action: &Action) -> Result<bool, Denied> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(u.username.clone()),
                groups: Some(u.groups.clone()),
                uid: u.uid.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("sluice.dev".into()),
                    resource: Some("rollouts".into()),
                    verb: Some(action.verb.into()),
                    namespace: action.namespace.clone(),
                    name: action.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let status = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Denied::Unavailable(e.to_string()))?
            .status
            .unwrap_or_default();
        Ok(status.allowed && status.denied != Some(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_come_from_the_authorization_header_only() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("value"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().expect("value"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer  ".parse().expect("value"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn refusals_map_to_http_statuses() {
        use axum::http::StatusCode;
        assert_eq!(Denied::NoToken.status(), StatusCode::UNAUTHORIZED);
        let f = Denied::Forbidden {
            user: "u".into(),
            verb: "patch".into(),
            what: "rollout a/b".into(),
        };
        assert_eq!(f.status(), StatusCode::FORBIDDEN);
        assert_eq!(f.to_string(), "u may not patch rollout a/b");
    }
}
