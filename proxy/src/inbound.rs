//! A sidecar's inbound side, on [`crate::config::INBOUND_PORT`]: mTLS from
//! other sidecars, which dial this port (the workload port in the TLS
//! server name), and, in
//! `PERMISSIVE` mode, whatever the pod's iptables rules redirect here from
//! clients outside the mesh (the workload port from `SO_ORIGINAL_DST`),
//! taken as it comes (plaintext, or the app's own TLS). On a TCP port each
//! connection is authorized once, before any byte reaches the workload (peer
//! identity, address, port), and a denied one is closed; on an HTTP port
//! every request is, and a denied one gets `403 RBAC: access denied` even
//! when the rule that denies it names only ports or principals (as Istio
//! answers: a closed connection would tell the client nothing). Allowed
//! traffic goes to `127.0.0.1:<port>`, or for a port the pod does not
//! declare, passes through to where it was going.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::LazyConfigAcceptor;
use tracing::debug;

use crate::authz::{Authorize, PeerInfo, Policies, Traffic, Verdict};
use crate::compiled::CompiledListener;
use crate::config::{ListenerProtocol, MtlsMode, inbound_port_of};
use crate::http_proxy::ProxyService;
use crate::identity::verify::server_config;
use crate::state::Proxy;

/// Serves one connection accepted on the inbound port.
pub async fn serve(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    watcher: Watcher,
) {
    let compiled = proxy.current();
    let Some(inbound) = &compiled.inbound else {
        return;
    };
    let telemetry = &proxy.telemetry;
    if let Some(dst) = crate::original_dst::redirected(&stream) {
        // Redirected: not from a sidecar, which would have dialled this port.
        if inbound.mode == MtlsMode::Strict {
            debug!(%peer, "plaintext refused: STRICT mTLS");
            telemetry.plaintext_refused.fetch_add(1, Relaxed);
            return;
        }
        let info = PeerInfo {
            ip: peer.ip(),
            principal: None,
            port: dst.port(),
        };
        match inbound.ports.get(&dst.port()).cloned() {
            Some(listener) => {
                if allowed_connection(
                    &inbound.policies,
                    &info,
                    connection_traffic(&listener),
                    telemetry,
                ) {
                    serve_port(proxy.clone(), listener, info, stream, stop, watcher).await;
                }
            }
            None => {
                if allowed_connection(&inbound.policies, &info, Some(Traffic::Tcp), telemetry) {
                    crate::tcp_proxy::passthrough(proxy.clone(), stream, dst).await;
                }
            }
        }
        return;
    }
    // The client's first byte and its TLS handshake share the bound.
    let handshake = proxy.handshake_timeout();
    let mut first = [0u8; 1];
    match tokio::time::timeout(handshake, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    let policies = inbound.policies.clone();
    // 0x16: a TLS handshake record.
    if first[0] == 0x16 {
        let accept = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let Ok(Ok(start)) = tokio::time::timeout(handshake, accept).await else {
            telemetry.tls_handshake_failures.fetch_add(1, Relaxed);
            return;
        };
        let Some(port) = start.client_hello().server_name().and_then(inbound_port_of) else {
            debug!(%peer, "mTLS without a workload port in its server name");
            telemetry.tls_handshake_failures.fetch_add(1, Relaxed);
            return;
        };
        // A port the pod does not declare is opaque TCP to the app, as
        // plaintext to it is (another sidecar dialled the pod's address).
        let listener = inbound.ports.get(&port).cloned();
        let (p, t) = (policies.clone(), proxy.telemetry.clone());
        let traffic = listener
            .as_ref()
            .map_or(Some(Traffic::Tcp), |l| connection_traffic(l));
        let ip = peer.ip();
        // The verifier has parsed the client's identity: keep it for the
        // per-request checks instead of parsing the certificate again.
        let verified: Arc<OnceLock<Arc<str>>> = Arc::default();
        let seen = verified.clone();
        let check = Box::new(move |principal: &str| {
            let principal: Arc<str> = principal.into();
            let _ = seen.set(principal.clone());
            let info = PeerInfo {
                ip,
                principal: Some(principal),
                port,
            };
            allowed_connection(&p, &info, traffic, &t)
        });
        let Ok(config) = server_config(&proxy.identity, check) else {
            return;
        };
        let tls = match tokio::time::timeout(handshake, start.into_stream(config)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                debug!(%peer, "inbound mTLS handshake: {e}");
                if !crate::identity::verify::is_access_denied(&e) {
                    telemetry.tls_handshake_failures.fetch_add(1, Relaxed);
                }
                return;
            }
            Err(_) => {
                telemetry.tls_handshake_failures.fetch_add(1, Relaxed);
                return;
            }
        };
        let Some(listener) = listener else {
            let app = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            crate::tcp_proxy::passthrough(proxy.clone(), tls, app).await;
            return;
        };
        let info = PeerInfo {
            ip,
            principal: verified.get().cloned(),
            port,
        };
        serve_port(proxy.clone(), listener, info, tls, stop, watcher).await;
    } else if inbound.mode == MtlsMode::Strict {
        // Plaintext to this port itself: nothing to forward to, but STRICT
        // counts what it refuses.
        debug!(%peer, "plaintext refused: STRICT mTLS");
        telemetry.plaintext_refused.fetch_add(1, Relaxed);
    }
}

/// What a connection to `l` is authorized as, if it is authorized per
/// connection at all: HTTP ports leave it to every request ([`Authorize`]).
fn connection_traffic(l: &CompiledListener) -> Option<Traffic<'static>> {
    match l.protocol {
        ListenerProtocol::Tcp => Some(Traffic::Tcp),
        ListenerProtocol::Http => None,
    }
}

/// The connection-level decision; counts denials and audits.
fn allowed_connection(
    policies: &Policies,
    info: &PeerInfo,
    traffic: Option<Traffic<'_>>,
    telemetry: &crate::telemetry::Telemetry,
) -> bool {
    let Some(traffic) = traffic else {
        return true;
    };
    if policies.is_empty() {
        return true;
    }
    let d = policies.decide(&info.peer(), &traffic);
    if d.audited {
        telemetry.authz_audited.fetch_add(1, Relaxed);
    }
    if let Verdict::Deny(policy) = &d.verdict {
        debug!(%policy, principal = ?info.principal, port = info.port, "connection denied");
        telemetry.authz_denied_connections.fetch_add(1, Relaxed);
        return false;
    }
    true
}

/// Serves an authorized connection until it ends, or until a new policy
/// set no longer allows it (then a TCP connection is closed, as Envoy
/// drains a listener whose filters changed; an HTTP one stays, and its
/// next request is judged): a policy applies to pooled connections too.
async fn serve_port<S>(
    proxy: Arc<Proxy>,
    listener: Arc<CompiledListener>,
    info: PeerInfo,
    io: S,
    stop: watch::Receiver<bool>,
    watcher: Watcher,
) where
    S: crate::h1::Transport,
{
    let traffic = connection_traffic(&listener);
    let info = Arc::new(info);
    let served = async {
        match listener.protocol {
            ListenerProtocol::Tcp => {
                crate::tcp_proxy::serve(proxy.clone(), listener.name.clone(), io).await;
            }
            ListenerProtocol::Http => {
                let peer = SocketAddr::new(info.ip, 0);
                let svc = Authorize::new(
                    ProxyService::new(proxy.clone(), listener.name.clone(), peer),
                    proxy.clone(),
                    info.clone(),
                );
                crate::h1::serve(svc, &proxy, io, stop, watcher).await;
            }
        }
    };
    tokio::select! {
        () = served => {}
        () = revoked(&proxy, &info, traffic) => {
            debug!(principal = ?info.principal, port = info.port, "the new config denies this open connection; closing it");
        }
    }
}

/// Resolves once the running policies deny this connection, or, for a
/// plaintext one, once the workload turned STRICT.
async fn revoked(proxy: &Proxy, info: &PeerInfo, traffic: Option<Traffic<'static>>) {
    let mut changes = proxy.subscribe();
    while changes.changed().await.is_ok() {
        let compiled = proxy.current();
        let allowed = compiled.inbound.as_ref().is_some_and(|inb| {
            (info.principal.is_some() || inb.mode != MtlsMode::Strict)
                && allowed_connection(&inb.policies, info, traffic, &proxy.telemetry)
        });
        if !allowed {
            return;
        }
    }
    std::future::pending().await
}
