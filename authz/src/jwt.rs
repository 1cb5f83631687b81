//! JWT request authentication with the semantics of Istio's
//! `RequestAuthentication`, as pure code: the proxy runs it on every
//! request, the operator compiles every rule (keys included) before it
//! pushes one.
//!
//! A request without a token passes unauthenticated; a token found where
//! a rule looks for one must verify against the rule of its issuer, or the
//! request is refused ([`JwtError`], a `401`).

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use sluice_proto::authn::{BEARER_PREFIX, DEFAULT_TOKEN_PARAM, JwtRule, refusal};

use crate::CompileError;

/// The clock skew allowed on `exp` and `nbf`, as Envoy allows.
const LEEWAY_SECONDS: u64 = 60;

/// Why a request's token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No rule trusts the token's issuer.
    #[error("{}", self.reason())]
    UnknownIssuer,
    /// Past its `exp`, or before its `nbf`.
    #[error("{}", self.reason())]
    Expired,
    /// Malformed, badly signed, or for another audience.
    #[error("{}", self.reason())]
    Invalid,
}

impl JwtError {
    /// The body of the `401`, Istio's words.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::UnknownIssuer => refusal::UNKNOWN_ISSUER,
            JwtError::Expired => refusal::EXPIRED,
            JwtError::Invalid => refusal::VERIFICATION_FAILS,
        }
    }
}

/// What a verified token says about the request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuth {
    /// `<iss>/<sub>`: what `requestPrincipals` match.
    pub principal: String,
    /// Every claim of the payload.
    pub claims: Map<String, Value>,
}

impl RequestAuth {
    /// The token's `aud` values.
    pub fn audiences(&self) -> Vec<&str> {
        self.claim_strings("aud")
    }

    /// The string values of claim `name`: a string, or the strings of a
    /// list; none for anything else.
    pub fn claim_strings(&self, name: &str) -> Vec<&str> {
        match self.claims.get(name) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// Where a token may be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    algorithm: Option<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Issuer {
    issuer: String,
    audiences: Vec<String>,
    keys: Vec<Key>,
    locations: Vec<Location>,
    forward: bool,
    payload_header: Option<HeaderName>,
}

/// The JWT rules selecting one workload, compiled once per config.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    issuers: Vec<Issuer>,
    /// Every location of every rule, each once.
    locations: Vec<Location>,
}

/// A verified token: who, and how to pass the request on.
#[derive(Debug, Clone)]
pub struct Verified {
    /// What the token says.
    pub auth: RequestAuth,
    issuer: usize,
    location: Location,
    payload: String,
}

impl Authenticator {
    /// Compiles `rules`; a malformed value is an error naming its field
    /// (below `path`, e.g. `inbound.jwtRules`). A rule without inline keys
    /// gets none: every token of its issuer is then refused, the safe side
    /// while its `jwksUri` has not been fetched.
    pub fn compile(rules: &[JwtRule], path: &str) -> Result<Authenticator, CompileError> {
        let mut issuers = Vec::new();
        let mut all: Vec<Location> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let at = format!("{path}[{i}]");
            if r.issuer.is_empty() {
                return Err(CompileError::new(
                    format!("{at}.issuer"),
                    "must not be empty",
                ));
            }
            if rules[..i].iter().any(|o| o.issuer == r.issuer) {
                return Err(CompileError::new(
                    format!("{at}.issuer"),
                    format!("{:?} is given by an earlier rule", r.issuer),
                ));
            }
            let keys = match &r.jwks {
                Some(text) => keys(text).map_err(|e| CompileError::new(format!("{at}.jwks"), e))?,
                None => Vec::new(),
            };
            let locations = locations(r, &at)?;
            for l in &locations {
                if !all.contains(l) {
                    all.push(l.clone());
                }
            }
            let payload_header = r
                .output_payload_to_header
                .as_deref()
                .map(|h| {
                    HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                        CompileError::new(
                            format!("{at}.outputPayloadToHeader"),
                            format!("{h:?} is not a header name"),
                        )
                    })
                })
                .transpose()?;
            issuers.push(Issuer {
                issuer: r.issuer.clone(),
                audiences: r.audiences.clone(),
                keys,
                locations,
                forward: r.forward_original_token,
                payload_header,
            });
        }
        Ok(Authenticator {
            issuers,
            locations: all,
        })
    }

    /// Whether no rule selects the workload.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The request's token, verified; `Ok(None)` when it carries none.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Verified>, JwtError> {
        let Some((location, token)) = self.find(headers, query) else {
            return Ok(None);
        };
        let header = jsonwebtoken::decode_header(&token).map_err(|_| JwtError::UnknownIssuer)?;
        let (i, issuer) = unverified_issuer(&token, &header)
            .and_then(|iss| {
                self.issuers
                    .iter()
                    .enumerate()
                    .find(|(_, r)| r.issuer == iss)
            })
            .filter(|(_, r)| r.locations.contains(&location))
            .ok_or(JwtError::UnknownIssuer)?;
        let (claims, payload) = issuer.check(&token, &header)?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Ok(Some(Verified {
            auth: RequestAuth {
                principal: format!("{}/{sub}", issuer.issuer),
                claims,
            },
            issuer: i,
            location,
            payload,
        }))
    }

    /// Passes a verified request on as its rule says: the token's header
    /// removed unless forwarded, the payload added when asked for.
    pub fn pass_on(&self, verified: &Verified, headers: &mut HeaderMap) {
        let Some(issuer) = self.issuers.get(verified.issuer) else {
            return;
        };
        if !issuer.forward
            && let Location::Header { name, .. } = &verified.location
        {
            headers.remove(name);
        }
        if let Some(name) = &issuer.payload_header
            && let Ok(v) = HeaderValue::from_str(&verified.payload)
        {
            headers.insert(name.clone(), v);
        }
    }

    /// The first token in any location of any rule.
    fn find(&self, headers: &HeaderMap, query: Option<&str>) -> Option<(Location, String)> {
        self.locations.iter().find_map(|l| {
            let token = match l {
                Location::Header { name, prefix } => headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| strip_prefix_ignore_case(v.trim(), prefix))
                    .map(str::to_owned),
                Location::Param(p) => query.and_then(|q| param(q, p)),
            };
            token.filter(|t| !t.is_empty()).map(|t| (l.clone(), t))
        })
    }
}

impl Issuer {
    /// Verifies `token`'s signature, time and audience; its claims and
    /// its payload segment.
    fn check(
        &self,
        token: &str,
        header: &Header,
    ) -> Result<(Map<String, Value>, String), JwtError> {
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.required_spec_claims.clear();
        validation.set_issuer(&[&self.issuer]);
        if self.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
        }
        let candidates = self.keys.iter().filter(|k| {
            (header.kid.is_none() || k.kid == header.kid)
                && k.algorithm.is_none_or(|a| a == header.alg)
        });
        let mut outcome = JwtError::Invalid;
        for k in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &validation) {
                Ok(data) => {
                    let payload = token.split('.').nth(1).unwrap_or_default().to_owned();
                    return Ok((data.claims, payload));
                }
                Err(e) => {
                    if matches!(
                        e.kind(),
                        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature
                    ) {
                        outcome = JwtError::Expired;
                    }
                }
            }
        }
        Err(outcome)
    }
}

/// The keys of a JWKS document.
fn keys(text: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    set.keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| key(jwk).map_err(|e| format!("keys[{i}]: {e}")))
        .collect()
}

fn key(jwk: &Jwk) -> Result<Key, String> {
    let algorithm = jwk
        .common
        .key_algorithm
        .map(|a| {
            a.to_string()
                .parse::<Algorithm>()
                .map_err(|_| format!("alg {a} is not a signing algorithm"))
        })
        .transpose()?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key: DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?,
    })
}

fn locations(r: &JwtRule, at: &str) -> Result<Vec<Location>, CompileError> {
    if r.from_headers.is_empty() && r.from_params.is_empty() {
        return Ok(vec![
            Location::Header {
                name: http::header::AUTHORIZATION,
                prefix: BEARER_PREFIX.to_owned(),
            },
            Location::Param(DEFAULT_TOKEN_PARAM.to_owned()),
        ]);
    }
    let mut out = Vec::new();
    for (i, h) in r.from_headers.iter().enumerate() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            CompileError::new(
                format!("{at}.fromHeaders[{i}].name"),
                format!("{:?} is not a header name", h.name),
            )
        })?;
        out.push(Location::Header {
            name,
            prefix: h.prefix.clone(),
        });
    }
    for (i, p) in r.from_params.iter().enumerate() {
        if p.is_empty() {
            return Err(CompileError::new(
                format!("{at}.fromParams[{i}]"),
                "must not be empty",
            ));
        }
        out.push(Location::Param(p.clone()));
    }
    Ok(out)
}

fn strip_prefix_ignore_case<'a>(v: &'a str, prefix: &str) -> Option<&'a str> {
    let head = v.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| v[prefix.len()..].trim_start())
}

/// The first value of query parameter `name` (a token is base64url and
/// dots, which need no decoding).
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// The `iss` of a token, unverified: only to pick the rule whose keys
/// then verify it.
fn unverified_issuer(token: &str, header: &Header) -> Option<String> {
    let mut v = Validation::new(header.alg);
    v.insecure_disable_signature_validation();
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &DecodingKey::from_secret(&[]), &v)
            .ok()?;
    data.claims.get("iss")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const ISS: &str = "https://issuer.test";
    /// `k` of the test key: base64url of the secret below.
    const SECRET: &[u8] = b"a-secret-of-thirty-two-bytes!!!!";

    fn jwks() -> String {
        // base64url("a-secret-of-thirty-two-bytes!!!!")
        json!({"keys": [{"kty": "oct", "alg": "HS256", "kid": "k1",
            "k": "YS1zZWNyZXQtb2YtdGhpcnR5LXR3by1ieXRlcyEhISE"}]})
        .to_string()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default()
    }

    fn token(claims: Value, kid: &str, secret: &[u8]) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.into());
        encode(&header, &claims, &EncodingKey::from_secret(secret)).expect("token")
    }

    fn good(sub: &str) -> String {
        token(
            json!({"iss": ISS, "sub": sub, "aud": ["shop"], "exp": now() + 300, "groups": ["admin", "dev"]}),
            "k1",
            SECRET,
        )
    }

    fn rule(extra: Value) -> JwtRule {
        let mut v = json!({"issuer": ISS, "jwks": jwks(), "audiences": ["shop"]});
        if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
            m.extend(e);
        }
        serde_json::from_value(v).expect("rule")
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).expect("value"),
        );
        h
    }

    fn verify(
        a: &Authenticator,
        h: &HeaderMap,
        q: Option<&str>,
    ) -> Result<Option<String>, JwtError> {
        a.verify(h, q).map(|v| v.map(|v| v.auth.principal))
    }

    #[test]
    fn a_valid_bearer_token_names_the_request_principal() {
        let a = Authenticator::compile(&[rule(json!({}))], "r").expect("compiles");
        let v = a
            .verify(&bearer(&good("alice")), None)
            .expect("valid")
            .expect("token");
        assert_eq!(v.auth.principal, "https://issuer.test/alice");
        assert_eq!(v.auth.audiences(), ["shop"]);
        assert_eq!(v.auth.claim_strings("groups"), ["admin", "dev"]);
    }

    #[test]
    fn no_token_passes_unauthenticated() {
        let a = Authenticator::compile(&[rule(json!({}))], "r").expect("compiles");
        assert_eq!(verify(&a, &HeaderMap::new(), Some("x=1")), Ok(None));
    }

    #[test]
    fn a_bad_token_is_refused_with_istios_reason() {
        let a = Authenticator::compile(&[rule(json!({}))], "r").expect("compiles");
        let forged = token(
            json!({"iss": ISS, "sub": "a", "aud": "shop"}),
            "k1",
            b"another-secret-another-secret!!!",
        );
        let expired = token(
            json!({"iss": ISS, "sub": "a", "aud": "shop", "exp": now() - 3600}),
            "k1",
            SECRET,
        );
        let early = token(
            json!({"iss": ISS, "sub": "a", "aud": "shop", "nbf": now() + 3600}),
            "k1",
            SECRET,
        );
        let other_aud = token(json!({"iss": ISS, "sub": "a", "aud": "bank"}), "k1", SECRET);
        let other_iss = token(
            json!({"iss": "https://evil.test", "sub": "a"}),
            "k1",
            SECRET,
        );
        let other_kid = token(json!({"iss": ISS, "sub": "a", "aud": "shop"}), "k2", SECRET);
        let cases = [
            (forged, JwtError::Invalid),
            (expired, JwtError::Expired),
            (early, JwtError::Expired),
            (other_aud, JwtError::Invalid),
            (other_iss, JwtError::UnknownIssuer),
            (other_kid, JwtError::Invalid),
            ("not.a.token".to_owned(), JwtError::UnknownIssuer),
        ];
        for (t, want) in cases {
            assert_eq!(verify(&a, &bearer(&t), None), Err(want.clone()), "{t}");
        }
        assert_eq!(JwtError::Expired.to_string(), "Jwt is expired");
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        let a = Authenticator::compile(&[rule(json!({}))], "r").expect("compiles");
        // alg "none": header {"alg":"none"}, payload {"iss":ISS,"sub":"a"}.
        let none = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0Iiwic3ViIjoiYSJ9.";
        assert!(verify(&a, &bearer(none), None).is_err());
    }

    #[test]
    fn tokens_are_found_where_the_rule_says() {
        let t = good("bob");
        let default = Authenticator::compile(&[rule(json!({}))], "r").expect("compiles");
        let query = format!("a=1&access_token={t}");
        assert!(matches!(
            verify(&default, &HeaderMap::new(), Some(&query)),
            Ok(Some(_))
        ));
        let custom = Authenticator::compile(
            &[rule(
                json!({"fromHeaders": [{"name": "x-jwt", "prefix": "Token "}]}),
            )],
            "r",
        )
        .expect("compiles");
        // Only the named header counts now: the bearer token is not read.
        assert_eq!(verify(&custom, &bearer(&t), None), Ok(None));
        let mut h = HeaderMap::new();
        h.insert(
            "x-jwt",
            HeaderValue::from_str(&format!("Token {t}")).expect("value"),
        );
        assert!(matches!(verify(&custom, &h, None), Ok(Some(_))));
    }

    #[test]
    fn the_token_header_is_removed_unless_forwarded_and_the_payload_passed_on() {
        let t = good("carol");
        for (forward, kept) in [(false, false), (true, true)] {
            let a = Authenticator::compile(
                &[rule(json!({"forwardOriginalToken": forward, "outputPayloadToHeader": "x-jwt-payload"}))],
                "r",
            )
            .expect("compiles");
            let mut h = bearer(&t);
            let v = a.verify(&h, None).expect("valid").expect("token");
            a.pass_on(&v, &mut h);
            assert_eq!(h.contains_key(http::header::AUTHORIZATION), kept);
            assert_eq!(
                h.get("x-jwt-payload").and_then(|v| v.to_str().ok()),
                t.split('.').nth(1)
            );
        }
    }

    #[test]
    fn malformed_rules_are_errors_naming_the_field() {
        let err = |r: Value| {
            let r: JwtRule = serde_json::from_value(r).expect("rule");
            Authenticator::compile(&[r], "inbound.jwtRules").expect_err("refused")
        };
        assert_eq!(
            err(json!({"issuer": ""})).path,
            "inbound.jwtRules[0].issuer"
        );
        assert_eq!(
            err(json!({"issuer": ISS, "jwks": "{"})).path,
            "inbound.jwtRules[0].jwks"
        );
        let bad_key = err(
            json!({"issuer": ISS, "jwks": "{\"keys\": [{\"kty\": \"RSA\", \"n\": \"!\", \"e\": \"AQAB\"}]}"}),
        );
        assert_eq!(bad_key.path, "inbound.jwtRules[0].jwks");
        assert!(bad_key.message.starts_with("keys[0]"), "{bad_key}");
        assert_eq!(
            err(json!({"issuer": ISS, "fromHeaders": [{"name": "bad header"}]})).path,
            "inbound.jwtRules[0].fromHeaders[0].name"
        );
        let twice = [rule(json!({})), rule(json!({}))];
        assert_eq!(
            Authenticator::compile(&twice, "r")
                .expect_err("refused")
                .path,
            "r[1].issuer"
        );
    }

    #[test]
    fn a_rule_without_keys_yet_refuses_its_issuers_tokens() {
        let a = Authenticator::compile(
            &[rule(
                json!({"jwks": null, "jwksUri": "https://issuer.test/keys"}),
            )],
            "r",
        )
        .expect("compiles");
        assert_eq!(
            verify(&a, &bearer(&good("dave")), None),
            Err(JwtError::Invalid)
        );
    }
}
