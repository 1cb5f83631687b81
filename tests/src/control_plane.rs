//! A real Kubernetes control plane on this machine: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, each a child process with its
//! own log, on free ports, in a directory of its own.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;
use crate::pki::Pki;
use crate::process::ManagedProcess;
use crate::toolchain::Toolchain;
use crate::wait::poll;

/// The Service ClusterIP range of test clusters.
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
/// The service-account token issuer.
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A running control plane. Dropping it stops every component.
#[derive(Debug)]
pub struct ControlPlane {
    /// `https://ip:port` of kube-apiserver.
    pub server: String,
    /// The apiserver's address.
    pub apiserver_addr: SocketAddr,
    /// An admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    /// Certificates and keys.
    pub pki: Pki,
    /// Components in start order; stopped in reverse.
    processes: Vec<ManagedProcess>,
}

/// A free TCP port on `ip` (the kernel's choice, released at once).
pub fn free_port(ip: Ipv4Addr) -> Result<u16, Error> {
    let l = TcpListener::bind((ip, 0))
        .map_err(|e| Error::Setup(format!("no free port on {ip}: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Setup(e.to_string()))
}

fn args(list: &[(&str, String)]) -> Vec<String> {
    list.iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

impl ControlPlane {
    /// Starts every component under `dir`, the apiserver listening on
    /// `bind` (the node's bridge address, so that pods reach it too), and
    /// returns once each one reports healthy.
    pub async fn start(dir: &Path, bind: Ipv4Addr, tc: &Toolchain) -> Result<ControlPlane, Error> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
        let loopback = Ipv4Addr::LOCALHOST;
        let pki = Pki::generate(
            &dir.join("pki"),
            &[
                bind.into(),
                loopback.into(),
                "198.19.0.1"
                    .parse()
                    .map_err(|_| Error::Setup("ip".into()))?,
            ],
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?;
        let mut processes = Vec::new();

        // etcd
        let etcd_port = free_port(loopback)?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer = format!("http://127.0.0.1:{}", free_port(loopback)?);
        let etcd = ManagedProcess::spawn(
            "etcd",
            &tc.etcd,
            &args(&[
                ("data-dir", dir.join("etcd").display().to_string()),
                ("listen-client-urls", etcd_url.clone()),
                ("advertise-client-urls", etcd_url.clone()),
                ("listen-peer-urls", etcd_peer.clone()),
                ("initial-advertise-peer-urls", etcd_peer.clone()),
                ("initial-cluster", format!("default={etcd_peer}")),
                ("unsafe-no-fsync", "true".into()),
                ("log-level", "warn".into()),
            ]),
            &logs.join("etcd.log"),
        )?;
        processes.push(etcd);
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Setup(e.to_string()))?;
        wait_healthy(
            &mut processes[0],
            &http,
            &format!("{etcd_url}/health"),
            "\"health\":\"true\"",
        )
        .await?;

        // kube-apiserver
        let api_port = free_port(bind)?;
        let apiserver_addr = SocketAddr::from((bind, api_port));
        let server = format!("https://{apiserver_addr}");
        let sa_key = pki.service_account_key.display().to_string();
        let apiserver = ManagedProcess::spawn(
            "kube-apiserver",
            &tc.kube_apiserver,
            &args(&[
                ("etcd-servers", etcd_url),
                ("bind-address", bind.to_string()),
                ("advertise-address", bind.to_string()),
                ("secure-port", api_port.to_string()),
                ("cert-dir", dir.join("apiserver").display().to_string()),
                ("tls-cert-file", pki.apiserver_cert.display().to_string()),
                (
                    "tls-private-key-file",
                    pki.apiserver_key.display().to_string(),
                ),
                ("client-ca-file", pki.ca_cert.display().to_string()),
                ("service-cluster-ip-range", SERVICE_CIDR.into()),
                ("service-account-issuer", SA_ISSUER.into()),
                (
                    "service-account-key-file",
                    pki.service_account_pub.display().to_string(),
                ),
                ("service-account-signing-key-file", sa_key.clone()),
                // The node's kubelet is authorised as nodes are.
                ("authorization-mode", "Node,RBAC".into()),
                ("enable-admission-plugins", "NodeRestriction".into()),
                ("allow-privileged", "true".into()),
                // exec, logs and port-forward reach the kubelet at its
                // InternalIP; its serving certificate is the cluster CA's.
                (
                    "kubelet-client-certificate",
                    pki.kubelet_client.0.display().to_string(),
                ),
                (
                    "kubelet-client-key",
                    pki.kubelet_client.1.display().to_string(),
                ),
                (
                    "kubelet-certificate-authority",
                    pki.ca_cert.display().to_string(),
                ),
                ("kubelet-preferred-address-types", "InternalIP".into()),
                // The aggregation layer (metrics-server's metrics.k8s.io).
                (
                    "requestheader-client-ca-file",
                    pki.front_proxy_ca.display().to_string(),
                ),
                (
                    "requestheader-allowed-names",
                    crate::pki::FRONT_PROXY_CLIENT.into(),
                ),
                ("requestheader-username-headers", "X-Remote-User".into()),
                ("requestheader-group-headers", "X-Remote-Group".into()),
                (
                    "requestheader-extra-headers-prefix",
                    "X-Remote-Extra-".into(),
                ),
                (
                    "proxy-client-cert-file",
                    pki.front_proxy_client.0.display().to_string(),
                ),
                (
                    "proxy-client-key-file",
                    pki.front_proxy_client.1.display().to_string(),
                ),
                // Dial webhook and aggregated API endpoints directly rather
                // than through their Service.
                ("enable-aggregator-routing", "true".into()),
                ("profiling", "false".into()),
                ("v", "0".into()),
            ]),
            &logs.join("kube-apiserver.log"),
        )?;
        processes.push(apiserver);

        let kubeconfig = dir.join("admin.kubeconfig");
        pki.kubeconfig(
            &kubeconfig,
            &server,
            "admin",
            (&dir.join("pki/admin.crt"), &dir.join("pki/admin.key")),
        )?;
        // reqwest rather than kube::Client: kube logs every 500 of a
        // not-yet-ready apiserver as an error.
        let identity = reqwest::Identity::from_pem(
            format!("{}{}", pki.admin_cert_pem, pki.admin_key_pem).as_bytes(),
        )
        .map_err(|e| Error::Setup(format!("admin identity: {e}")))?;
        let admin_http = reqwest::Client::builder()
            .identity(identity)
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Setup(e.to_string()))?;
        wait_healthy(
            &mut processes[1],
            &admin_http,
            &format!("{server}/readyz"),
            "ok",
        )
        .await?;
        let cp = ControlPlane {
            server,
            apiserver_addr,
            kubeconfig,
            pki,
            processes,
        };
        Self::start_controllers(cp, dir, &logs, tc, &http).await
    }

    async fn start_controllers(
        mut cp: ControlPlane,
        dir: &Path,
        logs: &Path,
        tc: &Toolchain,
        http: &reqwest::Client,
    ) -> Result<ControlPlane, Error> {
        let loopback = Ipv4Addr::LOCALHOST;
        let kcm_port = free_port(loopback)?;
        let kubeconfig = cp.kubeconfig.display().to_string();
        let kcm = ManagedProcess::spawn(
            "kube-controller-manager",
            &tc.kube_controller_manager,
            &args(&[
                ("kubeconfig", kubeconfig.clone()),
                ("authentication-kubeconfig", kubeconfig.clone()),
                ("authorization-kubeconfig", kubeconfig.clone()),
                ("leader-elect", "false".into()),
                ("bind-address", "127.0.0.1".into()),
                ("secure-port", kcm_port.to_string()),
                ("cert-dir", dir.join("kcm").display().to_string()),
                ("controllers", "*".into()),
                (
                    "service-account-private-key-file",
                    cp.pki.service_account_key.display().to_string(),
                ),
                ("root-ca-file", cp.pki.ca_cert.display().to_string()),
                ("use-service-account-credentials", "true".into()),
                ("cluster-name", "sluice-test".into()),
                // Autoscaling reacts within seconds in tests.
                ("horizontal-pod-autoscaler-sync-period", "5s".into()),
                ("v", "0".into()),
            ]),
            &logs.join("kube-controller-manager.log"),
        )?;
        cp.processes.push(kcm);
        let sched_port = free_port(loopback)?;
        let scheduler = ManagedProcess::spawn(
            "kube-scheduler",
            &tc.kube_scheduler,
            &args(&[
                ("kubeconfig", kubeconfig.clone()),
                ("authentication-kubeconfig", kubeconfig.clone()),
                ("authorization-kubeconfig", kubeconfig),
                ("leader-elect", "false".into()),
                ("bind-address", "127.0.0.1".into()),
                ("secure-port", sched_port.to_string()),
                ("v", "0".into()),
            ]),
            &logs.join("kube-scheduler.log"),
        )?;
        cp.processes.push(scheduler);
        wait_healthy(
            &mut cp.processes[2],
            http,
            &format!("https://127.0.0.1:{kcm_port}/healthz"),
            "ok",
        )
        .await?;
        wait_healthy(
            &mut cp.processes[3],
            http,
            &format!("https://127.0.0.1:{sched_port}/healthz"),
            "ok",
        )
        .await?;
        Ok(cp)
    }

    /// A client with the admin credentials.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        client_from(&self.kubeconfig).await
    }

    /// An error for the first component that has exited, if any.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        for p in &mut self.processes {
            if let Some(status) = p.exited() {
                return Err(p.failure(format!("exited unexpectedly with {status}")));
            }
        }
        Ok(())
    }

    /// The components, for logs and diagnostics.
    pub fn processes(&self) -> &[ManagedProcess] {
        &self.processes
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.stop(Duration::from_secs(2));
        }
    }
}

/// A client for the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> Result<kube::Client, Error> {
    let kc = Kubeconfig::read_from(path).map_err(|e| Error::Setup(format!("kubeconfig: {e}")))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Setup(format!("kubeconfig: {e}")))?;
    Ok(kube::Client::try_from(config)?)
}

async fn wait_healthy(
    p: &mut ManagedProcess,
    http: &reqwest::Client,
    url: &str,
    expect: &str,
) -> Result<(), Error> {
    let what = format!("{} at {url}", p.name());
    poll(
        &what,
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let exited = p.exited();
            let fut = http.get(url).send();
            async move {
                if let Some(status) = exited {
                    return Err(Error::Setup(format!("exited with {status}")));
                }
                match fut.await {
                    Ok(resp) => Ok(resp
                        .text()
                        .await
                        .ok()
                        .filter(|t| t.contains(expect))
                        .map(|_| ())),
                    Err(_) => Ok(None),
                }
            }
        },
    )
    .await
    .map_err(|e| p.failure(e.to_string()))
}
