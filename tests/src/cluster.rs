//! A whole local cluster: control plane, one real node and cluster DNS, and
//! the helpers tests use on it (apply manifests, run kubectl, exec in pods,
//! read container logs), all through the API server as a user would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::LogParams;

use crate::Error;
use crate::control_plane::ControlPlane;
use crate::node::{Node, NodeImages, Site, dns};
use crate::process::log_tail;
use crate::toolchain::{Toolchain, workspace_bin_dir, workspace_root};
use crate::wait::{deployment_available, poll};

/// The name of the node every cluster registers.
pub const NODE_NAME: &str = "sluice-node";

/// What a command run in a pod printed, and how it exited.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Exit code (as `kubectl exec` reports it).
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error (with kubectl's own messages).
    pub stderr: String,
}

/// A `kubectl port-forward` to one pod's port, open until dropped: the
/// way to what a pod serves on loopback only (a proxy's `/config`).
#[derive(Debug)]
pub struct PortForward {
    local: std::net::SocketAddr,
    _kubectl: tokio::process::Child,
}

impl PortForward {
    /// The host's end of the forward, on 127.0.0.1.
    pub fn local(&self) -> std::net::SocketAddr {
        self.local
    }
}

/// The local address in kubectl's `Forwarding from 127.0.0.1:PORT -> N`.
fn forwarded_address(line: &str) -> Option<std::net::SocketAddr> {
    let (local, _) = line.strip_prefix("Forwarding from ")?.split_once(" -> ")?;
    local.parse().ok()
}

/// A running local cluster. Fields drop in order: the node first (pods,
/// then the host's state), then the control plane, then the directory.
pub struct Cluster {
    node: Node,
    control_plane: ControlPlane,
    client: kube::Client,
    toolchain: &'static Toolchain,
    images: NodeImages,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.control_plane.server)
            .field("dir", &self.path)
            .finish()
    }
}

impl Cluster {
    /// Starts a fresh cluster in a temporary directory (kept when
    /// `SLUICE_KEEP_TEST_DIR` is set).
    pub async fn start() -> Result<Cluster, Error> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cluster-")
            .tempdir()
            .map_err(|e| Error::Setup(e.to_string()))?;
        let path = dir.path().to_owned();
        let keep = std::env::var_os("SLUICE_KEEP_TEST_DIR").is_some();
        let mut cluster = Self::start_in(&path).await?;
        cluster.dir = if keep {
            eprintln!("[sluice-tests] keeping {}", dir.keep().display());
            None
        } else {
            Some(dir)
        };
        Ok(cluster)
    }

    /// Starts a cluster whose state lives in `dir` (left in place on drop).
    pub async fn start_in(dir: &Path) -> Result<Cluster, Error> {
        let started = Instant::now();
        let toolchain = Toolchain::get()?;
        let bins = workspace_bin_dir()?;
        let images = NodeImages::build(bins, toolchain)?;
        let node_dir = dir.join("node");
        let site = Site::claim(&node_dir, toolchain)?;
        let control_plane =
            ControlPlane::start(&dir.join("control-plane"), site.address(), toolchain).await?;
        let client = control_plane.client().await?;
        let node = Node::start(
            site,
            NODE_NAME,
            &node_dir,
            &control_plane,
            &client,
            toolchain,
            &images,
        )
        .await?;
        let cluster = Cluster {
            node,
            control_plane,
            client,
            toolchain,
            images,
            dir: None,
            path: dir.to_owned(),
        };
        cluster.apply(&dns::manifest(&cluster.images.coredns))?;
        deployment_available(
            &cluster.client,
            "kube-system",
            "coredns",
            Duration::from_secs(90),
        )
        .await?;
        eprintln!(
            "[sluice-tests] cluster up in {:.1}s (node {}, {})",
            started.elapsed().as_secs_f64(),
            cluster.node.address(),
            dir.display()
        );
        Ok(cluster)
    }

    /// An admin client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Service `namespace/name`'s cluster IP.
    pub async fn cluster_ip(&self, namespace: &str, name: &str) -> Result<String, Error> {
        Api::<Service>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await?
            .spec
            .and_then(|s| s.cluster_ip)
            .filter(|ip| !ip.is_empty() && ip != "None")
            .ok_or_else(|| Error::Check(format!("Service {namespace}/{name} has no cluster IP")))
    }

    /// The API server's `https://ip:port`, as pods reach it too.
    pub fn apiserver(&self) -> &str {
        &self.control_plane.server
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        &self.control_plane.kubeconfig
    }

    /// The test-bed binaries.
    pub fn toolchain(&self) -> &'static Toolchain {
        self.toolchain
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The cluster's state directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Runs `kubectl ARGS` against this cluster; `stdin` is piped in when
    /// given. Returns stdout, or an error with stderr.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
        run_tool(&self.toolchain.kubectl, self.kubeconfig(), args, stdin)
    }

    /// Runs `helm ARGS` against this cluster.
    pub fn helm(&self, args: &[&str]) -> Result<String, Error> {
        run_tool(&self.toolchain.helm, self.kubeconfig(), args, None)
    }

    /// Server-side applies a (multi-document) manifest.
    pub fn apply(&self, yaml: &str) -> Result<String, Error> {
        self.kubectl(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(yaml),
        )
    }

    /// Creates namespace `name` (if missing) and waits for its `default`
    /// ServiceAccount, without which pods are refused.
    pub async fn create_namespace(&self, name: &str) -> Result<(), Error> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
        ))?;
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), name);
        poll(
            &format!("serviceaccount {name}/default"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async { Ok(api.get_opt("default").await?.map(|_| ())) },
        )
        .await
    }

    /// Installs Sluice's CRDs (the committed YAML) and waits until they are served.
    pub async fn install_crds(&self) -> Result<(), Error> {
        let dir = workspace_root().join("crds/yaml");
        self.kubectl(
            &["apply", "--server-side", "-f", &dir.display().to_string()],
            None,
        )?;
        let names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".yaml"))
                    .map(str::to_owned)
            })
            .collect();
        self.wait_crds_established(&names).await
    }

    /// Installs the Gateway API standard-channel CRDs.
    pub async fn install_gateway_api(&self) -> Result<(), Error> {
        let file = self.toolchain.gateway_api_crds.display().to_string();
        self.kubectl(&["apply", "--server-side", "-f", &file], None)?;
        self.wait_crds_established(&[
            "gateways.gateway.networking.k8s.io".into(),
            "httproutes.gateway.networking.k8s.io".into(),
        ])
        .await
    }

    async fn wait_crds_established(&self, names: &[String]) -> Result<(), Error> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for name in names {
            poll(
                &format!("CRD {name} Established"),
                Duration::from_secs(30),
                Duration::from_millis(100),
                || async {
                    let crd = api.get_opt(name).await?;
                    let ok = crd
                        .and_then(|c| c.status)
                        .and_then(|s| s.conditions)
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c.type_ == "Established" && c.status == "True")
                        });
                    Ok(ok.then_some(()))
                },
            )
            .await?;
        }
        Ok(())
    }

    /// `kubectl rollout restart` of Deployment `namespace/name`, then
    /// `kubectl rollout status` until its new pods are ready.
    pub fn restart_deployment(&self, namespace: &str, name: &str) -> Result<(), Error> {
        let target = format!("deployment/{name}");
        self.kubectl(&["rollout", "restart", &target, "-n", namespace], None)?;
        self.kubectl(
            &[
                "rollout",
                "status",
                &target,
                "-n",
                namespace,
                "--timeout=180s",
            ],
            None,
        )?;
        Ok(())
    }

    /// Installs metrics-server (resource metrics for `kubectl top` and
    /// HorizontalPodAutoscalers) and waits until the metrics API serves
    /// the node's metrics.
    pub async fn install_metrics_server(&self) -> Result<(), Error> {
        self.apply(&crate::node::metrics::manifest(&self.images.metrics_server))?;
        deployment_available(
            &self.client,
            "kube-system",
            "metrics-server",
            Duration::from_secs(90),
        )
        .await?;
        poll(
            "the metrics API to serve the node",
            Duration::from_secs(90),
            Duration::from_secs(1),
            || async { Ok(self.kubectl(&["top", "nodes", "--no-headers"], None).ok()) },
        )
        .await?;
        Ok(())
    }

    /// Runs `argv` in the default container of pod `namespace/name` with
    /// `kubectl exec` (through the API server and the kubelet), for at most
    /// a minute.
    pub async fn exec_in_pod(
        &self,
        namespace: &str,
        name: &str,
        argv: &[&str],
    ) -> Result<ExecOutput, Error> {
        let mut args = vec!["exec", "-n", namespace, name, "--"];
        args.extend_from_slice(argv);
        let mut cmd = tokio::process::Command::new(&self.toolchain.kubectl);
        cmd.args(&args)
            .env("KUBECONFIG", self.kubeconfig())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let command = format!("kubectl {}", args.join(" "));
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .map_err(|_| Error::Command {
                command: command.clone(),
                detail: "no answer within 60 s".into(),
            })?
            .map_err(|e| Error::Command {
                command,
                detail: e.to_string(),
            })?;
        Ok(ExecOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Forwards a free port of 127.0.0.1 to `port` of pod `namespace/name`
    /// (through the API server and the kubelet, which connects on the pod's
    /// loopback).
    pub async fn port_forward(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Result<PortForward, Error> {
        use tokio::io::AsyncBufReadExt;
        let target = format!("pod/{name}");
        let remote = format!(":{port}");
        let args = [
            "port-forward",
            "-n",
            namespace,
            &target,
            "--address",
            "127.0.0.1",
            &remote,
        ];
        let command = format!("kubectl {}", args.join(" "));
        let failed = |detail: String| Error::Command {
            command: command.clone(),
            detail,
        };
        let mut child = tokio::process::Command::new(&self.toolchain.kubectl)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| failed("no stdout".into()))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let local = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.ok().flatten() {
                if let Some(addr) = forwarded_address(&line) {
                    return Some(addr);
                }
            }
            None
        })
        .await
        .map_err(|_| failed("no forward within 30 s".into()))?
        .ok_or_else(|| failed("kubectl exited before forwarding".into()))?;
        // kubectl prints a line per connection: keep the pipe drained.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(PortForward {
            local,
            _kubectl: child,
        })
    }

    /// The last `lines` lines of a container's log, as `kubectl logs`
    /// shows them (an error text instead when there is none).
    pub async fn logs(&self, namespace: &str, pod: &str, container: &str, lines: i64) -> String {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = LogParams {
            container: Some(container.to_owned()),
            tail_lines: Some(lines),
            ..LogParams::default()
        };
        api.logs(pod, &params)
            .await
            .unwrap_or_else(|e| format!("(no log of {namespace}/{pod}/{container}: {e})"))
    }

    /// Fails with the component's log tail if any control-plane or node
    /// process died.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        self.control_plane.check_alive()?;
        self.node.check_alive()
    }

    /// The last lines of every component's log, for a failed test's report.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let procs = self
            .control_plane
            .processes()
            .iter()
            .chain(self.node.processes());
        for p in procs {
            out.push_str(&format!(
                "--- {} ({}) ---\n{}\n",
                p.name(),
                p.log_path().display(),
                log_tail(p.log_path(), 15)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[sluice-tests] a test panicked; component logs:\n{}",
                self.diagnostics()
            );
        }
        self.node.shutdown();
    }
}

fn run_tool(
    program: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, Error> {
    let command = format!(
        "{} {}",
        program
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        args.join(" ")
    );
    // The workspace's binaries first on PATH: `kubectl sluice` finds the
    // plugin as a user's kubectl would.
    let mut path = std::ffi::OsString::new();
    if let Ok(bins) = crate::toolchain::workspace_bin_dir() {
        path.push(bins);
        path.push(":");
    }
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("PATH", path);
    crate::process::run_command(cmd, command, stdin)
}

#[cfg(test)]
mod tests {
    use super::forwarded_address;

    #[test]
    fn reads_the_local_end_of_a_forward() {
        assert_eq!(
            forwarded_address("Forwarding from 127.0.0.1:41234 -> 15021"),
            Some("127.0.0.1:41234".parse().expect("address"))
        );
        assert_eq!(forwarded_address("Handling connection for 15021"), None);
    }
}
