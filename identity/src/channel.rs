//! gRPC channels to the control plane over TLS: the server must present
//! the operator's SPIFFE identity under the mesh roots, and the client
//! presents its workload certificate once it has one. Used by proxies and
//! by operator replicas that relay telemetry to each other.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The address is not `https://host:port`.
    #[error("control plane address {0:?}: {1}")]
    Address(String, &'static str),
    /// The TLS config could not be built.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Connecting or the handshake failed.
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
}

/// A control-plane address: `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneAddress {
    host: String,
    port: u16,
}

impl ControlPlaneAddress {
    /// Parses `https://host:port`. Plain `http://` is refused: the control
    /// plane speaks TLS only, and a silent downgrade would hide a
    /// misconfiguration.
    pub fn parse(address: &str) -> Result<ControlPlaneAddress, ChannelError> {
        let bad = |why| ChannelError::Address(address.to_owned(), why);
        let uri: Uri = address.parse().map_err(|_| bad("not a URI"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") => return Err(bad("the control plane speaks TLS only: use https://")),
            _ => return Err(bad("expected https://host:port")),
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(sluice_proto::config::CONTROL_PLANE_PORT);
        Ok(ControlPlaneAddress { host, port })
    }

    /// The host (DNS name or IP).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Display for ControlPlaneAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

/// Opens a channel to `address` with `tls` (see
/// [`crate::verify::control_plane_client_config`]). HTTP/2 keepalives
/// notice a dead operator within seconds.
pub async fn connect(
    address: &ControlPlaneAddress,
    tls: Arc<ClientConfig>,
) -> Result<Channel, ChannelError> {
    connect_from(address, tls, None).await
}

/// [`connect`] from local address `local` (the kernel's choice if `None`):
/// for clients that speak for a pod whose address is one of this host's.
pub async fn connect_from(
    address: &ControlPlaneAddress,
    tls: Arc<ClientConfig>,
    local: Option<IpAddr>,
) -> Result<Channel, ChannelError> {
    // The scheme only fills `:scheme`; TLS is the connector's.
    let endpoint = Endpoint::from_shared(format!("http://{}:{}", address.host, address.port))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(tls);
    let target = address.clone();
    let connect = tower::service_fn(move |_: Uri| {
        let (connector, target) = (connector.clone(), target.clone());
        async move {
            let tcp = match local {
                None => TcpStream::connect((target.host.as_str(), target.port)).await?,
                Some(local) => {
                    let remote = tokio::net::lookup_host((target.host.as_str(), target.port))
                        .await?
                        .find(|a| a.is_ipv4() == local.is_ipv4())
                        .ok_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::AddrNotAvailable,
                                "no address of the control plane in the local address's family",
                            )
                        })?;
                    let socket = if local.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    socket.bind(SocketAddr::new(local, 0))?;
                    socket.connect(remote).await?
                }
            };
            tcp.set_nodelay(true)?;
            // The name is not what is verified (the SPIFFE ID is), but
            // rustls needs one; an IP is valid as such too.
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector(connect).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_https() {
        let a = ControlPlaneAddress::parse("https://sluice-operator.sluice-system.svc:15010")
            .expect("valid");
        assert_eq!(
            (a.host(), a.port()),
            ("sluice-operator.sluice-system.svc", 15010)
        );
        assert_eq!(
            ControlPlaneAddress::parse("https://10.0.0.1")
                .expect("valid")
                .port(),
            15010
        );
        let e = ControlPlaneAddress::parse("http://10.0.0.1:15010").expect_err("plaintext");
        assert!(e.to_string().contains("TLS only"), "{e}");
        assert!(ControlPlaneAddress::parse("10.0.0.1:15010").is_err());
        let v6 = ControlPlaneAddress::parse("https://[fd00::1]:15010").expect("valid");
        assert_eq!(v6.host(), "fd00::1");
        assert_eq!(v6.to_string(), "https://[fd00::1]:15010");
    }
}
