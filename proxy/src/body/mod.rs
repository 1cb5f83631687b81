//! The proxy's body types: request bodies forwarded upstream (or empty, for
//! a retry), and response bodies streamed from upstream (or written by the
//! proxy itself). Both count bytes into the request's telemetry cell.

pub mod request;
pub mod response;

pub use request::{Downstream, Received, ReqBody};
pub use response::{RespBody, headers_mut};
