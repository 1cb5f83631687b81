//! The real kubelet: registers the node, runs its pods through containerd
//! and serves exec, logs and port-forward to the apiserver with a serving
//! certificate of the cluster CA.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::Error;
use crate::control_plane::{ControlPlane, free_port};
use crate::process::ManagedProcess;
use crate::toolchain::Toolchain;

/// The ClusterIP of the `kube-dns` Service, which the kubelet writes into
/// every pod's `resolv.conf`.
pub const CLUSTER_DNS: &str = "198.19.0.10";

/// What the kubelet needs to know of its node.
#[derive(Debug)]
pub struct NodeSpec<'a> {
    /// The node's name.
    pub name: &'a str,
    /// Its InternalIP (the bridge's address).
    pub ip: Ipv4Addr,
    /// The node's directory.
    pub dir: &'a Path,
    /// containerd's socket.
    pub runtime_socket: &'a Path,
}

fn config(node: &NodeSpec<'_>, ca: &Path, serving: (&Path, &Path), ports: (u16, u16)) -> String {
    let d = node.dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host is on cgroup v1 and has swap settings of its own.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{runtime}
address: {ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: Webhook
# A test machine: never evict, never collect images.
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: {d}/pod-logs
# Pods resolve through cluster DNS only: nothing is looked up off the machine.
resolvConf: ""
clusterDNS: [{CLUSTER_DNS}]
clusterDomain: cluster.local
serializeImagePulls: false
registerNode: true
maxPods: 250
# ConfigMap and Secret volumes follow changes within seconds.
syncFrequency: 10s
"#,
        runtime = node.runtime_socket.display(),
        ip = node.ip,
        port = ports.0,
        healthz = ports.1,
        cert = serving.0.display(),
        key = serving.1.display(),
        ca = ca.display(),
    )
}

/// Writes the kubelet's certificates, kubeconfig and configuration under
/// the node's directory and starts it.
pub fn start(
    node: &NodeSpec<'_>,
    cp: &ControlPlane,
    tc: &Toolchain,
    logs: &Path,
) -> Result<(ManagedProcess, u16), Error> {
    let dir = node.dir.join("kubelet");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // As the NodeRestriction admission plugin expects of a node.
    let client = cp.pki.client(
        "kubelet-client",
        &format!("system:node:{}", node.name),
        &["system:nodes"],
    )?;
    let serving = cp.pki.server(
        "kubelet-serving",
        node.name,
        &[node.name],
        &[IpAddr::V4(node.ip)],
    )?;
    let kubeconfig = dir.join("kubeconfig");
    cp.pki
        .kubeconfig(&kubeconfig, &cp.server, node.name, (&client.0, &client.1))?;
    let port = free_port(node.ip)?;
    let healthz = free_port(Ipv4Addr::LOCALHOST)?;
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        config(
            node,
            &cp.pki.ca_cert,
            (&serving.0, &serving.1),
            (port, healthz),
        ),
    )
    .map_err(|e| Error::io(&file, e))?;
    let args: Vec<String> = [
        ("config", file.display().to_string()),
        ("kubeconfig", kubeconfig.display().to_string()),
        ("hostname-override", node.name.to_owned()),
        ("node-ip", node.ip.to_string()),
        ("root-dir", dir.join("root").display().to_string()),
        ("cert-dir", dir.join("pki").display().to_string()),
        ("v", "1".to_owned()),
    ]
    .iter()
    .map(|(k, v)| format!("--{k}={v}"))
    .collect();
    let process = ManagedProcess::spawn("kubelet", &tc.kubelet, &args, &logs.join("kubelet.log"))?;
    Ok((process, healthz))
}
