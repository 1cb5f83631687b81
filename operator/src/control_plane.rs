//! The gRPC endpoint proxies use (config discovery, telemetry,
//! certificates), served over TLS only: the operator presents its own
//! certificate, and clients present theirs when they have one (every call
//! but `Certificates.Sign` requires it; the services read it from the
//! connection). A plaintext client, or one whose certificate does not
//! chain to the mesh roots, fails the handshake and is counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_identity::MeshIdentity;
use sluice_proto::mesh::certificates_server::CertificatesServer;
use sluice_proto::mesh::config_discovery_server::ConfigDiscoveryServer;
use sluice_proto::mesh::telemetry_server::TelemetryServer as TelemetryService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::ca::CertificateServer;
use crate::metrics::Metrics;
use crate::push::ConfigServer;
use crate::traffic::TelemetryServer;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS config could not be built.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The address is taken.
    #[error("listening on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The server failed.
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Accepted connections, once their TLS handshake is done. Handshakes run
/// concurrently, so that a slow or silent client delays no one.
pub fn incoming(
    listener: TcpListener,
    identity: &Arc<MeshIdentity>,
    metrics: Arc<Metrics>,
) -> Result<ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>, ServeError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(
        sluice_identity::verify::control_plane_server_config(identity)?,
    );
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    debug!("accept: {e}");
                    // Out of descriptors, usually: let some close.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        metrics.refused("tls", "handshake");
                        debug!(%peer, "control plane TLS handshake: {e}");
                    }
                    Err(_) => {
                        metrics.refused("tls", "handshake_timeout");
                        debug!(%peer, "control plane TLS handshake timed out");
                    }
                }
            });
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// The three services.
pub struct Services {
    /// Config discovery.
    pub config: ConfigServer,
    /// Telemetry.
    pub telemetry: TelemetryServer,
    /// Certificates.
    pub certificates: CertificateServer,
}

/// Serves `services` on `addr` with `identity` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    identity: &Arc<MeshIdentity>,
    metrics: Arc<Metrics>,
    services: Services,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Listen(addr, e))?;
    serve_on(listener, identity, metrics, services, shutdown).await
}

/// [`serve`] on a bound listener.
pub async fn serve_on(
    listener: TcpListener,
    identity: &Arc<MeshIdentity>,
    metrics: Arc<Metrics>,
    services: Services,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let incoming = incoming(listener, identity, metrics)?;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(
            ConfigDiscoveryServer::new(services.config).max_decoding_message_size(16 << 20),
        )
        .add_service(TelemetryService::new(services.telemetry))
        .add_service(CertificatesServer::new(services.certificates))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
