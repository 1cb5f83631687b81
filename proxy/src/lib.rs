//! `sluice-proxy`: the Sluice data plane, as a library so that its parts
//! are testable on their own and the binary stays thin.
//!
//! A request flows: [`server`] (accept; plaintext HTTP/1.1 on the proxy's
//! own path, [`h1`], the rest through hyper) →
//! [`http_proxy`] (route, split, balance, forward, retry) → [`pool`]
//! (upstream connections). Configuration arrives as a document
//! ([`config`]) from a file ([`static_source`]) or the control plane, is
//! compiled ([`compiled`]) and swapped in atomically ([`state`]).

pub mod admin;
pub mod app_health;
pub mod authz;
pub mod balance;
pub mod body;
pub mod clock;
pub mod compiled;
pub mod config;
pub mod control;
pub mod filters;
pub mod forward;
pub mod framing;
pub mod h1;
pub mod head_fields;
pub mod hops;
pub mod http_proxy;
pub mod identity;
pub mod idle;
pub mod inbound;
pub mod intercept;
pub mod listening;
pub mod local_reply;
pub mod mirror;
pub mod original_dst;
pub mod pool;
pub mod read_buffers;
pub mod route;
pub mod server;
pub mod state;
pub mod static_source;
pub mod tcp_proxy;
pub mod telemetry;
