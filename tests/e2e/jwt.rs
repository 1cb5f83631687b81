//! End-to-end: JWT request authentication as Istio users write it. The
//! test is the identity provider: it makes an ES256 key, serves its JWKS
//! on the host's loopback (the operator, a host process here, fetches it:
//! proxies never do) and signs tokens. A `RequestAuthentication` on the
//! handson app makes its sidecar refuse bad tokens with `401`; an
//! AuthorizationPolicy with `requestPrincipals` and a claim condition then
//! requires a good one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kube::Api;
use kube::api::DeleteParams;
use serde_json::{Value, json};
use sluice_crds::RequestAuthentication;
use sluice_proto::authz::DENIED_BODY;
use sluice_tests::Cluster;
use sluice_tests::operator::proxy_counter;
use sluice_tests::wait::poll;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::TIMEOUT;
use super::identity::{NS, call_with, delete_policy, handson_ip, policy, setup};

const ISSUER: &str = "https://idp.sluice.test";

/// A signing key and its public JWKS document.
struct Idp {
    key: EncodingKey,
    jwks: String,
}

impl Idp {
    fn new(kid: &str) -> anyhow::Result<Idp> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        // An uncompressed P-256 point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key_raw();
        ensure!(point.len() == 65, "unexpected P-256 point");
        let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])});
        Ok(Idp {
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwks: json!({"keys": [jwk]}).to_string(),
        })
    }

    /// A token with `claims`, `iss`, `aud` and `exp` (in `ttl` seconds,
    /// negative for one already expired) added.
    fn token(&self, kid: &str, mut claims: Value, ttl: i64) -> anyhow::Result<String> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Some(m) = claims.as_object_mut() {
            m.entry("iss").or_insert(json!(ISSUER));
            m.insert("aud".into(), json!("handson"));
            m.insert("exp".into(), json!(now + ttl));
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

/// Serves `body` at every path of a fresh loopback port; its URL.
async fn serve_jwks(body: String) -> anyhow::Result<(String, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr()?);
    let app = axum::Router::new().fallback(move || async move { body });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

pub async fn request_authentication(cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let checked = checks(&cluster).await;
    // Pass or fail, leave nothing behind for the scenarios after this one.
    let _ = delete_policy(&cluster, "require-jwt").await;
    let api: Api<RequestAuthentication> = Api::namespaced(cluster.client(), NS);
    let _ = api.delete("handson-jwt", &DeleteParams::default()).await;
    checked
}

async fn checks(cluster: &Cluster) -> anyhow::Result<()> {
    setup(cluster).await?;
    let idp = Idp::new("k1")?;
    let impostor = Idp::new("k1")?;
    let (jwks_uri, server) = serve_jwks(idp.jwks.clone()).await?;
    let result = authenticate(cluster, &idp, &impostor, &jwks_uri).await;
    server.abort();
    result
}

/// What handson answers `curl` with `token` as a bearer token, if any.
async fn ask(cluster: &Cluster, token: Option<&str>) -> anyhow::Result<(String, String)> {
    let header = token.map(|t| format!("Authorization: Bearer {t}"));
    let headers: Vec<&str> = header.iter().map(String::as_str).collect();
    call_with(cluster, "curl", "GET", "/", &headers).await
}

async fn authenticate(
    cluster: &Cluster,
    idp: &Idp,
    impostor: &Idp,
    jwks_uri: &str,
) -> anyhow::Result<()> {
    let alice = idp.token("k1", json!({"sub": "alice", "groups": ["admin"]}), 600)?;
    let bob = idp.token("k1", json!({"sub": "bob", "groups": ["dev"]}), 600)?;
    let expired = idp.token("k1", json!({"sub": "alice"}), -3600)?;
    let forged = impostor.token("k1", json!({"sub": "alice", "groups": ["admin"]}), 600)?;
    let foreign = idp.token(
        "k1",
        json!({"sub": "alice", "iss": "https://other.test"}),
        600,
    )?;

    cluster.apply(&format!(
        r#"apiVersion: sluice.dev/v1alpha1
kind: RequestAuthentication
metadata: {{name: handson-jwt, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: handson}}}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [handson]
    jwksUri: {jwks_uri}
"#
    ))?;
    accepted(cluster).await?;
    let ip = handson_ip(cluster).await?;
    let refused_before = proxy_counter(&ip, "sluice_jwt_refused_requests_total", "").await?;
    // The keys reach the sidecar: a good token passes, a forged one not.
    poll(
        "the sidecar to refuse a forged token",
        TIMEOUT,
        Duration::from_millis(200),
        || async { Ok((ask(cluster, Some(&forged)).await?.0 == "401").then_some(())) },
    )
    .await?;
    let cases = [
        ("a valid token", Some(&alice), "200", "blue"),
        ("no token", None, "200", "blue"),
        (
            "a forged token",
            Some(&forged),
            "401",
            "Jwt verification fails",
        ),
        ("an expired token", Some(&expired), "401", "Jwt is expired"),
        (
            "another issuer's token",
            Some(&foreign),
            "401",
            "Jwt issuer is not configured",
        ),
    ];
    expect(cluster, "without a policy", &cases).await?;
    let refused =
        proxy_counter(&ip, "sluice_jwt_refused_requests_total", "").await? - refused_before;
    ensure!(refused >= 4.0, "the sidecar counted {refused} JWT refusals");

    // Istio's pattern: an ALLOW policy with requestPrincipals requires a
    // token; a claim condition narrows it to admins.
    cluster.apply(&policy(
        "require-jwt",
        &format!(
            "  action: ALLOW\n  rules:\n  - from: [{{source: {{requestPrincipals: [\"{ISSUER}/*\"]}}}}]\n    when: [{{key: \"request.auth.claims[groups]\", values: [admin]}}]\n"
        ),
    ))?;
    poll(
        "a request without a token to be denied",
        TIMEOUT,
        Duration::from_millis(200),
        || async { Ok((ask(cluster, None).await?.0 == "403").then_some(())) },
    )
    .await?;
    let cases = [
        ("an admin's token", Some(&alice), "200", "blue"),
        ("a non-admin's token", Some(&bob), "403", DENIED_BODY),
        ("no token", None, "403", DENIED_BODY),
        (
            "a forged admin token",
            Some(&forged),
            "401",
            "Jwt verification fails",
        ),
    ];
    expect(cluster, "under the policy", &cases).await
}

/// Asks with each case's token; each answer must be its status and body.
async fn expect(
    cluster: &Cluster,
    when: &str,
    cases: &[(&str, Option<&String>, &str, &str)],
) -> anyhow::Result<()> {
    for (what, token, code, body) in cases {
        let got = ask(cluster, token.map(String::as_str)).await?;
        ensure!(
            got.0 == *code && got.1.trim() == *body,
            "{when}, {what}: {got:?}, want {code} {body}"
        );
    }
    Ok(())
}

/// Waits for the operator to fetch the JWKS and accept the resource.
async fn accepted(cluster: &Cluster) -> anyhow::Result<()> {
    let api: Api<RequestAuthentication> = Api::namespaced(cluster.client(), NS);
    poll(
        "the RequestAuthentication to be Accepted",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let ra = api.get("handson-jwt").await?;
            let cond = ra
                .status
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Accepted"));
            Ok(cond.filter(|c| c.status == "True").map(|_| ()))
        },
    )
    .await?;
    Ok(())
}
