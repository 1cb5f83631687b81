//! The proxy's own answers, when no upstream answered a request: each
//! with its status, a flag saying why (as Envoy's response flags do) and
//! whether the upstream is to blame, so that every place that gives up on
//! a request answers and counts it the same way.

use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use crate::body::RespBody;
use crate::telemetry::Cell;

/// Response header naming why the proxy answered itself.
pub const FLAGS_HEADER: &str = "x-sluice-flags";

/// Why the proxy answered a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalReply {
    /// The connection's listener left the config while it was open.
    ListenerGone,
    /// The request names no host.
    MissingHost,
    /// No route matched.
    NoRoute,
    /// The route's backends all have weight 0.
    NoBackend,
    /// The backend is a reference the control plane could not resolve; it
    /// said which status to answer.
    Unresolved(StatusCode),
    /// The backend has no endpoint left to try.
    NoEndpoint,
    /// No response started within the route's or the attempt's deadline.
    Timeout,
    /// No connection to the endpoint (refused, unreachable, silent).
    ConnectFailed,
    /// The upstream connection broke before a response.
    Reset,
}

impl LocalReply {
    /// The status answered.
    pub fn status(self) -> StatusCode {
        match self {
            LocalReply::ListenerGone | LocalReply::NoEndpoint | LocalReply::ConnectFailed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            LocalReply::MissingHost => StatusCode::BAD_REQUEST,
            LocalReply::NoRoute => StatusCode::NOT_FOUND,
            LocalReply::NoBackend => StatusCode::INTERNAL_SERVER_ERROR,
            LocalReply::Unresolved(status) => status,
            LocalReply::Timeout => StatusCode::GATEWAY_TIMEOUT,
            LocalReply::Reset => StatusCode::BAD_GATEWAY,
        }
    }

    /// The flag in [`FLAGS_HEADER`]: `NR` no route, `NB` no backend with
    /// weight, `DR` unresolved backend, `UH` no endpoint, `UT` upstream
    /// timeout, `UF` connect failure, `UC` upstream connection reset.
    pub fn flag(self) -> &'static str {
        match self {
            LocalReply::ListenerGone | LocalReply::MissingHost | LocalReply::NoRoute => "NR",
            LocalReply::NoBackend => "NB",
            LocalReply::Unresolved(_) => "DR",
            LocalReply::NoEndpoint => "UH",
            LocalReply::Timeout => "UT",
            LocalReply::ConnectFailed => "UF",
            LocalReply::Reset => "UC",
        }
    }

    fn body(self) -> &'static str {
        match self {
            LocalReply::ListenerGone => "listener is being removed\n",
            LocalReply::MissingHost => "missing Host header\n",
            LocalReply::NoRoute => "no route matched\n",
            LocalReply::NoBackend => "no backend has weight for this route\n",
            LocalReply::Unresolved(_) => "this backend cannot be resolved\n",
            LocalReply::NoEndpoint => "no healthy endpoint for this backend\n",
            LocalReply::Timeout => "upstream request timeout\n",
            LocalReply::ConnectFailed => "upstream connect error\n",
            LocalReply::Reset => "upstream connection reset before a response\n",
        }
    }

    /// Whether the upstream failed (counted apart from what the request or
    /// the config caused).
    pub fn upstream_failure(self) -> bool {
        matches!(
            self,
            LocalReply::NoEndpoint
                | LocalReply::Timeout
                | LocalReply::ConnectFailed
                | LocalReply::Reset
        )
    }

    /// The answer, not counted anywhere.
    pub fn response(self) -> Response<RespBody> {
        let mut resp = Response::new(RespBody::text(self.body()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            HeaderName::from_static(FLAGS_HEADER),
            HeaderValue::from_static(self.flag()),
        );
        resp
    }

    /// Counts the outcome in `cell` as a request that started at `start`,
    /// for those with nobody to answer (a mirrored copy, a TCP connection).
    pub fn count(self, cell: &Cell, start: Instant) {
        cell.record(
            self.status().as_u16(),
            crate::clock::since(start),
            self.upstream_failure(),
        );
    }

    /// The answer, counted in `cell` as a request that started at `start`.
    pub fn counted(self, cell: &Cell, start: Instant) -> Response<RespBody> {
        self.count(cell, start);
        self.response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_says_its_status_and_why_and_blames_the_upstream_only_for_its_failures() {
        let resp = LocalReply::Timeout.response();
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(resp.headers()[FLAGS_HEADER], "UT");
        assert!(LocalReply::ConnectFailed.upstream_failure());
        assert!(!LocalReply::NoBackend.upstream_failure());
        assert!(!LocalReply::Unresolved(StatusCode::INTERNAL_SERVER_ERROR).upstream_failure());
        assert_eq!(
            LocalReply::Unresolved(StatusCode::FORBIDDEN).status(),
            StatusCode::FORBIDDEN
        );
    }
}
