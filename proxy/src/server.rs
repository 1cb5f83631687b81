//! Workers and listeners.
//!
//! Each worker is an OS thread with a single-threaded tokio runtime and its
//! own socket per listener (`SO_REUSEPORT`), so connections, their tasks and
//! the upstream pools of a worker never cross threads. Workers reconcile
//! their listeners whenever a new config is applied, and drain on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::FutureExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::compiled::{CompiledListener, Termination};
use crate::config::ListenerProtocol;
use crate::http_proxy::ProxyService;
use crate::listening::WorkerSlot;
use crate::state::Proxy;

/// Largest request head accepted; larger gets `431` (HTTP/1.1) or a
/// refused stream (HTTP/2), as Envoy's 60 KiB default.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Binds `addr` with `SO_REUSEPORT`, so that every worker has its own socket.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The connection builder: HTTP/1.1 and HTTP/2 detected per connection;
/// an HTTP/1 request head must arrive within `header_read` once started.
pub(crate) fn http_builder(header_read: Duration) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new());
    b.http1().header_read_timeout(header_read);
    // Rapid reset (CVE-2023-44487): a connection whose client resets
    // streams faster than they are served, or keeps provoking resets, gets
    // a GOAWAY. Set here rather than left to hyper's defaults, which may
    // change.
    b.http2()
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .adaptive_window(true)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024);
    b
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ListenerKey {
    name: Arc<str>,
    address: SocketAddr,
    protocol: ListenerProtocol,
    /// A sidecar's inbound port (see [`crate::inbound`]).
    inbound: bool,
}

/// Runs one worker until `shutdown` turns true, then drains its
/// connections for up to `drain`. `slot` is where it records the config
/// generation its listeners are bound for.
pub async fn worker(
    proxy: Arc<Proxy>,
    slot: WorkerSlot,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut running: HashMap<ListenerKey, Running> = HashMap::new();
    let mut changes = proxy.subscribe();
    let mut failed_in_a_row = 0u32;
    loop {
        // Read before reconciling: the config stored with this generation
        // (or a newer one) is what `reconcile` binds.
        let generation = *changes.borrow_and_update();
        let all_bound = reconcile(&proxy, &mut running, drain);
        // Only a full bind counts: a proxy whose port is still taken must
        // not say it is ready, or its clients would be refused.
        if all_bound {
            proxy.listening.reconciled(&slot, generation);
        }
        // A port still held (by the process this one replaces, by another
        // workload) is tried again, less often the longer it stays taken,
        // until it frees or a config drops the listener.
        failed_in_a_row = if all_bound { 0 } else { failed_in_a_row + 1 };
        let retry = async {
            match failed_in_a_row {
                0 => std::future::pending::<()>().await,
                n => tokio::time::sleep(bind_retry_wait(n)).await,
            }
        };
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            () = retry => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    // Stop accepting everywhere, then wait for the listeners to drain.
    let tasks: Vec<_> = running
        .drain()
        .map(|(_, r)| {
            let _ = r.stop.send(true);
            r.task
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The wait before binding again after `n` failed attempts in a row:
/// 250 ms, doubling up to 30 s.
fn bind_retry_wait(n: u32) -> Duration {
    Duration::from_millis(250u64 << n.saturating_sub(1).min(7)).min(Duration::from_secs(30))
}

/// Binds what the current config adds and stops what it drops; false when
/// a listener could not be bound (counted, and left for a retry).
fn reconcile(
    proxy: &Arc<Proxy>,
    running: &mut HashMap<ListenerKey, Running>,
    drain: Duration,
) -> bool {
    let compiled = proxy.current();
    let mut wanted: Vec<ListenerKey> = compiled
        .listeners
        .iter()
        .map(|l| ListenerKey {
            name: l.name.clone(),
            address: l.address,
            protocol: l.protocol,
            inbound: false,
        })
        .collect();
    if compiled.inbound.is_some() {
        wanted.push(ListenerKey {
            name: "inbound".into(),
            address: SocketAddr::from(([0, 0, 0, 0], crate::config::INBOUND_PORT)),
            protocol: ListenerProtocol::Http,
            inbound: true,
        });
    }
    running.retain(|key, r| {
        let keep = wanted.contains(key);
        if !keep {
            info!(listener = %key.name, address = %key.address, "listener removed; draining");
            let _ = r.stop.send(true);
        }
        keep
    });
    let mut all_bound = true;
    for key in wanted {
        if running.contains_key(&key) {
            continue;
        }
        match bind(key.address) {
            Ok(listener) => {
                info!(listener = %key.name, address = %key.address, "listening");
                let (stop, stop_rx) = watch::channel(false);
                let task = tokio::spawn(accept_loop(
                    proxy.clone(),
                    key.clone(),
                    listener,
                    stop_rx,
                    drain,
                ));
                running.insert(key, Running { stop, task });
            }
            Err(e) => {
                proxy.telemetry.listener_bind_failures.fetch_add(1, Relaxed);
                warn!(listener = %key.name, address = %key.address, "cannot listen (retrying): {e}");
                all_bound = false;
            }
        }
    }
    all_bound
}

/// Accepts until stopped, then drains this listener's connections: HTTP
/// connections finish their in-flight requests and close (HTTP/2 with a
/// GOAWAY); TCP connections are left to end on their own until `drain`.
async fn accept_loop(
    proxy: Arc<Proxy>,
    key: ListenerKey,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let builder = http_builder(proxy.header_read_timeout());
    let graceful = GracefulShutdown::new();
    let mut tcp_conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(listener = %key.name, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        if proxy.telemetry.over_connection_limit() {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        proxy.telemetry.accepted_connections.fetch_add(1, Relaxed);
        if key.inbound {
            tokio::spawn(counted(
                proxy.clone(),
                crate::inbound::serve(
                    proxy.clone(),
                    stream,
                    peer,
                    stop.clone(),
                    graceful.watcher(),
                ),
            ));
            continue;
        }
        match key.protocol {
            ListenerProtocol::Tcp => {
                tcp_conns.spawn(counted(
                    proxy.clone(),
                    crate::tcp_proxy::serve(proxy.clone(), key.name.clone(), stream),
                ));
            }
            ListenerProtocol::Http => {
                // One look at the running config per connection.
                let compiled = proxy.current();
                let listener = compiled.listener(&key.name);
                if let Some(dst) = crate::original_dst::redirected(&stream)
                    && !listener.is_some_and(|l| routes_to(l, dst))
                {
                    tcp_conns.spawn(counted(
                        proxy.clone(),
                        crate::tcp_proxy::outbound(proxy.clone(), stream, dst),
                    ));
                    continue;
                }
                let svc = ProxyService::new(proxy.clone(), key.name.clone(), peer);
                if let Some(tls) = listener.and_then(|l| l.tls.clone()) {
                    tokio::spawn(counted(
                        proxy.clone(),
                        serve_https(
                            proxy.clone(),
                            stream,
                            tls,
                            svc.over_tls(),
                            builder.clone(),
                            stop.clone(),
                            graceful.watcher(),
                        ),
                    ));
                    continue;
                }
                let conn = crate::h1::serve(svc, &proxy, stream, stop.clone(), graceful.watcher());
                tokio::spawn(counted(proxy.clone(), conn));
            }
        }
    }
    drop(listener);
    let drained = async {
        graceful.shutdown().await;
        while tcp_conns.join_next().await.is_some() {}
    };
    if tokio::time::timeout(drain, drained).await.is_err() {
        warn!(listener = %key.name, "drain deadline reached; closing remaining connections");
    }
}

/// Terminates TLS (the certificate picked by SNI, read from the config
/// current at accept time, so renewed certificates need no rebind), then
/// serves HTTP/2 through hyper if ALPN settled on it, and anything else on
/// the proxy's own HTTP/1 path (which hands an HTTP/2 preface that came
/// without ALPN to hyper in turn).
async fn serve_https(
    proxy: Arc<Proxy>,
    stream: tokio::net::TcpStream,
    tls: Termination,
    svc: ProxyService,
    builder: auto::Builder<TokioExecutor>,
    stop: watch::Receiver<bool>,
    watcher: Watcher,
) {
    let failed = || {
        proxy.telemetry.tls_handshake_failures.fetch_add(1, Relaxed);
    };
    let Termination(Some(config)) = tls else {
        return failed();
    };
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let io = match tokio::time::timeout(proxy.handshake_timeout(), accept).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            debug!("TLS handshake: {e}");
            return failed();
        }
        Err(_) => return failed(),
    };
    if io.get_ref().1.alpn_protocol() != Some(b"h2") {
        return crate::h1::serve(svc, &proxy, io, stop, watcher).await;
    }
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(proxy.idle(io)), TowerToHyperService::new(svc))
        .into_owned();
    let _ = watcher.watch(conn).await;
}

/// Whether HTTP `listener` has a route for intercepted destination `dst`
/// (a Service's ClusterIP and port); what it has none for passes through
/// untouched.
fn routes_to(listener: &CompiledListener, dst: SocketAddr) -> bool {
    let ip = dst.ip().to_string();
    listener
        .routes
        .iter()
        .any(|r| r.hosts.matches(&ip, Some(dst.port())))
}

/// `fut`, a connection's task, counted among the open connections from
/// now until it ends or is dropped (a drain deadline cancels it), and
/// reading the clock once per poll ([`crate::clock`]). Not an `async fn`:
/// its state would hold `fut` twice, as the argument and as the future
/// awaited, and a connection's task is most of what the proxy holds per
/// idle connection.
fn counted<F>(proxy: Arc<Proxy>, fut: F) -> impl std::future::Future<Output = ()>
where
    F: std::future::Future<Output = ()>,
{
    let open = OpenConnection::new(proxy);
    crate::clock::per_poll(fut.map(move |()| drop(open)))
}

/// One open connection in the proxy's count, for as long as it lives.
struct OpenConnection(Arc<Proxy>);

impl OpenConnection {
    fn new(proxy: Arc<Proxy>) -> OpenConnection {
        proxy.telemetry.open_connections.fetch_add(1, Relaxed);
        OpenConnection(proxy)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.telemetry.open_connections.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_tried_again_soon_then_at_most_every_thirty_seconds() {
        let waits: Vec<u64> = (1..=10)
            .map(|n| bind_retry_wait(n).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [
                250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000
            ]
        );
    }
}
