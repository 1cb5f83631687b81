//! The real kube-proxy in iptables mode: ClusterIPs and NodePorts of the
//! node, from pods and from the host.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::Error;
use crate::control_plane::{ControlPlane, free_port};
use crate::process::ManagedProcess;
use crate::toolchain::Toolchain;

/// Whether bridged traffic passes iptables (`br_netfilter`): then replies of
/// a pod to a pod that reached it through a ClusterIP are un-NATed by the
/// host's conntrack, and sources stay visible; without it, everything
/// kube-proxy translates must be masqueraded.
fn bridged_traffic_is_filtered() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1")
}

fn config(
    kubeconfig: &Path,
    node: &str,
    node_ip: Ipv4Addr,
    pod_cidr: &str,
    ports: (u16, u16),
) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {node}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
clusterCIDR: {pod_cidr}
detectLocalMode: ClusterCIDR
nodePortAddresses: ["{node_ip}/32"]
iptables:
  # Else it sets net.ipv4.conf.all.route_localnet=1.
  localhostNodePorts: false
  masqueradeAll: {masquerade_all}
# 0: leave the host's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        kubeconfig = kubeconfig.display(),
        healthz = ports.0,
        metrics = ports.1,
        masquerade_all = !bridged_traffic_is_filtered(),
    )
}

/// Starts kube-proxy for `node` with its own client certificate
/// (`system:kube-proxy`, bound to `system:node-proxier` by default).
pub fn start(
    dir: &Path,
    node: &str,
    node_ip: Ipv4Addr,
    pod_cidr: &str,
    cp: &ControlPlane,
    tc: &Toolchain,
    logs: &Path,
) -> Result<ManagedProcess, Error> {
    let dir = dir.join("kube-proxy");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let cert = cp.pki.client("kube-proxy", "system:kube-proxy", &[])?;
    let kubeconfig = dir.join("kubeconfig");
    cp.pki
        .kubeconfig(&kubeconfig, &cp.server, "kube-proxy", (&cert.0, &cert.1))?;
    let lo = Ipv4Addr::LOCALHOST;
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        config(
            &kubeconfig,
            node,
            node_ip,
            pod_cidr,
            (free_port(lo)?, free_port(lo)?),
        ),
    )
    .map_err(|e| Error::io(&file, e))?;
    ManagedProcess::spawn(
        "kube-proxy",
        &tc.kube_proxy,
        &[format!("--config={}", file.display()), "--v=1".into()],
        &logs.join("kube-proxy.log"),
    )
}
