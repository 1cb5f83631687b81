//! Request authentication by JSON Web Token, in the shape of Istio's
//! `RequestAuthentication`: the rules the `RequestAuthentication` resource
//! holds and a sidecar enforces. A request without a token passes
//! unauthenticated (an AuthorizationPolicy decides whether that is enough);
//! a request with a token that fails verification is refused with `401`.

use serde::{Deserialize, Serialize};

/// Where a token is looked for when a rule names no location: the
/// `Authorization` header after `Bearer `, and this query parameter.
pub const DEFAULT_TOKEN_PARAM: &str = "access_token";

/// The prefix of a bearer token in the `Authorization` header.
pub const BEARER_PREFIX: &str = "Bearer ";

/// The `401` bodies, Istio's words.
pub mod refusal {
    /// The token's signature, audience or form is wrong.
    pub const VERIFICATION_FAILS: &str = "Jwt verification fails";
    /// No rule trusts the token's issuer.
    pub const UNKNOWN_ISSUER: &str = "Jwt issuer is not configured";
    /// The token's `exp` has passed (or its `nbf` has not come).
    pub const EXPIRED: &str = "Jwt is expired";
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The token's `iss`, exactly.
    pub issuer: String,
    /// Accepted `aud` values, any of which the token must carry; none
    /// given: any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the issuer publishes its keys (a JWKS document). The operator
    /// fetches it and hands the keys to proxies, which never reach out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The keys, inline: a JWKS document (JSON). Takes precedence over
    /// `jwksUri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Headers the token may come in; none given (and no `fromParams`):
    /// `Authorization: Bearer <token>` and `?access_token=<token>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token may come in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Keep the token in the request passed to the app (by default the
    /// header that carried it is removed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_original_token: bool,
    /// A header to pass the verified payload to the app in (base64url
    /// of its JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
}

/// A header a token may come in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// The header's name.
    pub name: String,
    /// Text before the token, removed (e.g. `Bearer `).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}
