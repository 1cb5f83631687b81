//! A whole local cluster: control plane plus one node, and the helpers tests
//! use on it (apply manifests, run kubectl, exec in pods).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

use crate::Error;
use crate::control_plane::ControlPlane;
use crate::node::NodeAgent;
use crate::node::network::PodNetwork;
use crate::node::pod::ExecOutput;
use crate::process::log_tail;
use crate::toolchain::{Toolchain, workspace_bin_dir, workspace_root};
use crate::wait::poll;

/// The name of the node every cluster registers.
pub const NODE_NAME: &str = "sluice-node";

/// A running local cluster. Fields drop in order: pods first, then the
/// control plane, then the directory.
pub struct Cluster {
    node: NodeAgent,
    control_plane: ControlPlane,
    client: kube::Client,
    toolchain: &'static Toolchain,
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
        let toolchain = Toolchain::get()?;
        let bins = workspace_bin_dir()?;
        let network = PodNetwork::create()?;
        let control_plane =
            ControlPlane::start(&dir.join("control-plane"), network.gateway(), toolchain).await?;
        let client = control_plane.client().await?;
        let node = NodeAgent::start(
            client.clone(),
            NODE_NAME,
            network,
            &dir.join("node"),
            bins,
            control_plane.apiserver_addr,
            &toolchain.k8s_version,
        )
        .await?;
        Ok(Cluster {
            node,
            control_plane,
            client,
            toolchain,
            dir: None,
            path: dir.to_owned(),
        })
    }

    /// An admin client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
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

    /// The node agent.
    pub fn node(&self) -> &NodeAgent {
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

    /// Runs `argv` inside pod `namespace/name`, as `kubectl exec` would.
    pub async fn exec_in_pod(
        &self,
        namespace: &str,
        name: &str,
        argv: &[&str],
    ) -> Result<ExecOutput, Error> {
        self.node
            .exec_in_pod(namespace, name, argv, Duration::from_secs(60))
            .await
    }

    /// Fails with the component's log tail if any control-plane process died.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        self.control_plane.check_alive()
    }

    /// The last lines of every component's log, for a failed test's report.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for p in self.control_plane.processes() {
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
                "[sluice-tests] a test panicked; control-plane logs:\n{}",
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
