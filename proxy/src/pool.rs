//! Upstream connections, pooled per worker thread.
//!
//! Each worker runs on its own single-threaded runtime, so its pool is a
//! thread-local: taking or returning a connection touches no lock shared
//! with other workers. HTTP/1.1 connections are reused once idle; one
//! HTTP/2 connection per endpoint carries every request, multiplexed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::body::ReqBody;
use crate::telemetry::Telemetry;

/// Idle HTTP/1.1 connections kept per endpoint and worker.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// The protocol of one upstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1.
    H1,
    /// HTTP/2 with prior knowledge.
    H2,
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The endpoint refused or could not be reached.
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// The connection did not open in time.
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    /// The protocol handshake failed.
    #[error("handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
    /// The connection failed after the request was sent.
    #[error("request to {0}: {1}")]
    Request(SocketAddr, hyper::Error),
}

impl UpstreamError {
    /// Whether nothing reached the endpoint (safe to retry elsewhere).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(..)
                | UpstreamError::ConnectTimeout(..)
                | UpstreamError::Handshake(..)
        )
    }
}

thread_local! {
    static H1_IDLE: RefCell<HashMap<SocketAddr, Vec<http1::SendRequest<ReqBody>>>> = RefCell::new(HashMap::new());
    static H2_CONN: RefCell<HashMap<SocketAddr, http2::SendRequest<ReqBody>>> = RefCell::new(HashMap::new());
}

async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    telemetry: &Telemetry,
) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            telemetry.upstream_connect_failures.fetch_add(1, Relaxed);
            return Err(UpstreamError::Connect(addr, e));
        }
        Err(_) => {
            telemetry.upstream_connect_failures.fetch_add(1, Relaxed);
            return Err(UpstreamError::ConnectTimeout(addr));
        }
    };
    telemetry.upstream_connects.fetch_add(1, Relaxed);
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect_h1(
    addr: SocketAddr,
    timeout: Duration,
    telemetry: &Telemetry,
) -> Result<http1::SendRequest<ReqBody>, UpstreamError> {
    let stream = connect(addr, timeout, telemetry).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Handshake(addr, e))?;
    tokio::spawn(async move {
        // Upgrades enabled: a 101 hands the socket to the tunnel.
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

async fn connect_h2(
    addr: SocketAddr,
    timeout: Duration,
    telemetry: &Telemetry,
) -> Result<http2::SendRequest<ReqBody>, UpstreamError> {
    let stream = connect(addr, timeout, telemetry).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .adaptive_window(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Handshake(addr, e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn take_idle_h1(addr: SocketAddr) -> Option<http1::SendRequest<ReqBody>> {
    H1_IDLE.with_borrow_mut(|pool| {
        let list = pool.get_mut(&addr)?;
        list.retain(|s| !s.is_closed());
        let pos = list.iter().position(|s| s.is_ready())?;
        Some(list.swap_remove(pos))
    })
}

fn put_h1(addr: SocketAddr, sender: http1::SendRequest<ReqBody>) {
    if sender.is_closed() {
        return;
    }
    H1_IDLE.with_borrow_mut(|pool| {
        let list = pool.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(sender);
        }
    });
}

/// Sends `req` to `addr`, on a pooled connection when one is free.
pub async fn send(
    addr: SocketAddr,
    proto: Proto,
    connect_timeout: Duration,
    req: Request<ReqBody>,
    telemetry: &Telemetry,
) -> Result<Response<Incoming>, UpstreamError> {
    match proto {
        Proto::H1 => {
            let mut sender = match take_idle_h1(addr) {
                Some(s) => s,
                None => connect_h1(addr, connect_timeout, telemetry).await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // Busy until the body is read; `is_ready` tells when it is free.
                    put_h1(addr, sender);
                    Ok(resp)
                }
                Err(mut e) => match e.take_message() {
                    // The pooled connection had closed before the request
                    // went out: nothing was sent, so a fresh one is safe.
                    Some(req) => {
                        let mut fresh = connect_h1(addr, connect_timeout, telemetry).await?;
                        let resp = fresh
                            .send_request(req)
                            .await
                            .map_err(|e| UpstreamError::Request(addr, e))?;
                        put_h1(addr, fresh);
                        Ok(resp)
                    }
                    None => Err(UpstreamError::Request(addr, e.into_error())),
                },
            }
        }
        Proto::H2 => {
            let cached = H2_CONN.with_borrow_mut(|m| {
                let s = m.get(&addr)?;
                if s.is_closed() {
                    m.remove(&addr);
                    None
                } else {
                    Some(s.clone())
                }
            });
            let mut sender = match cached {
                Some(s) => s,
                None => {
                    let s = connect_h2(addr, connect_timeout, telemetry).await?;
                    H2_CONN.with_borrow_mut(|m| m.insert(addr, s.clone()));
                    s
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(req) => {
                        let mut fresh = connect_h2(addr, connect_timeout, telemetry).await?;
                        H2_CONN.with_borrow_mut(|m| m.insert(addr, fresh.clone()));
                        fresh
                            .send_request(req)
                            .await
                            .map_err(|e| UpstreamError::Request(addr, e))
                    }
                    None => Err(UpstreamError::Request(addr, e.into_error())),
                },
            }
        }
    }
}
