//! An attempt's request, built again for each attempt from what the
//! downstream request became once routed and filtered.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri, Version};

use crate::body::ReqBody;
use crate::config::UpstreamProtocol;
use crate::pool::Proto;

/// Everything needed to build one upstream attempt.
#[derive(Debug)]
pub struct Prepared {
    /// The method.
    pub method: Method,
    /// Path and query, rewritten if a filter said so.
    pub path_and_query: http::uri::PathAndQuery,
    /// The authority of the request's URI, or the one a filter rewrote it
    /// to; without one, the `Host` header says it.
    pub authority: Option<http::uri::Authority>,
    /// The downstream request's version.
    pub version: Version,
    /// The headers to send, hop-by-hop ones already dropped.
    pub headers: HeaderMap,
}

impl Prepared {
    /// Builds an attempt; `last` moves the headers instead of copying them.
    pub fn request(&mut self, proto: Proto, body: ReqBody, last: bool) -> Request<ReqBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = if last {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        match proto {
            Proto::H1 => {
                *req.uri_mut() = Uri::from(self.path_and_query.clone());
                *req.version_mut() = Version::HTTP_11;
                if !req.headers().contains_key(header::HOST)
                    && let Some(a) = &self.authority
                    && let Ok(v) = HeaderValue::from_str(a.as_str())
                {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            Proto::H2 => {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = self.authority.clone().or_else(|| {
                    let host = req.headers().get(header::HOST)?;
                    http::uri::Authority::try_from(host.as_bytes()).ok()
                });
                parts.path_and_query = Some(self.path_and_query.clone());
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
                *req.version_mut() = Version::HTTP_2;
                // The authority travels as :authority in HTTP/2.
                req.headers_mut().remove(header::HOST);
            }
        }
        req
    }
}

/// The protocol to speak to a backend for a request of `version`.
pub fn upstream_proto(protocol: UpstreamProtocol, version: Version) -> Proto {
    match protocol {
        UpstreamProtocol::Http1 => Proto::H1,
        UpstreamProtocol::Http2 => Proto::H2,
        UpstreamProtocol::Auto if version == Version::HTTP_2 => Proto::H2,
        UpstreamProtocol::Auto => Proto::H1,
    }
}
