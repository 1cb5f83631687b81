//! Where the real binaries are: Kubernetes, etcd, containerd, CoreDNS and
//! helm from `scripts/test-bed.sh` (with runc and the CNI plugins from
//! Debian), and this workspace's own binaries from cargo.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::Error;

/// Paths of the external binaries of the test bed, at their pinned versions.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// etcd server.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// kube-controller-manager.
    pub kube_controller_manager: PathBuf,
    /// kube-scheduler.
    pub kube_scheduler: PathBuf,
    /// kubectl of the same minor version.
    pub kubectl: PathBuf,
    /// helm v3.
    pub helm: PathBuf,
    /// The Gateway API standard-channel CRDs, one multi-document YAML file.
    pub gateway_api_crds: PathBuf,
    /// The Kubernetes version, e.g. `v1.36.3`.
    pub k8s_version: String,
    /// kubelet, of the control plane's version.
    pub kubelet: PathBuf,
    /// kube-proxy, of the same version.
    pub kube_proxy: PathBuf,
    /// containerd 2.x (its `containerd-shim-runc-v2` beside it).
    pub containerd: PathBuf,
    /// containerd's client.
    pub ctr: PathBuf,
    /// runc.
    pub runc: PathBuf,
    /// The directory of the CNI plugins (bridge, host-local, loopback, portmap).
    pub cni_bin_dir: PathBuf,
    /// CoreDNS.
    pub coredns: PathBuf,
    /// Its version, the tag of its image.
    pub coredns_version: String,
    /// metrics-server.
    pub metrics_server: PathBuf,
    /// Its version, the tag of its image.
    pub metrics_server_version: String,
    /// Prometheus (Debian's build), for the analysis tests.
    pub prometheus: PathBuf,
}

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

impl Toolchain {
    /// Builds what is missing (once per machine, cached under
    /// `~/.cache/sluice`) and returns the paths. Cheap when warm: the script
    /// answers from its cache, and the answer is kept for the process.
    pub fn get() -> Result<&'static Toolchain, Error> {
        static TOOLCHAIN: OnceLock<Result<Toolchain, String>> = OnceLock::new();
        TOOLCHAIN
            .get_or_init(|| Self::from_script().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Toolchain(e.clone()))
    }

    fn from_script() -> Result<Toolchain, Error> {
        let script = workspace_root().join("scripts/test-bed.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| Error::Toolchain(format!("running {}: {e}", script.display())))?;
        if !out.status.success() {
            return Err(Error::Toolchain(format!(
                "{} failed ({})",
                script.display(),
                out.status
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let path = |key: &str| -> Result<PathBuf, Error> {
            vars.get(key)
                .map(PathBuf::from)
                .ok_or_else(|| Error::Toolchain(format!("{} printed no {key}=", script.display())))
        };
        Ok(Toolchain {
            etcd: path("ETCD")?,
            kube_apiserver: path("KUBE_APISERVER")?,
            kube_controller_manager: path("KUBE_CONTROLLER_MANAGER")?,
            kube_scheduler: path("KUBE_SCHEDULER")?,
            kubectl: path("KUBECTL")?,
            helm: path("HELM")?,
            gateway_api_crds: path("GATEWAY_API_CRDS")?,
            k8s_version: vars.get("K8S_VERSION").unwrap_or(&"").to_string(),
            kubelet: path("KUBELET")?,
            kube_proxy: path("KUBE_PROXY")?,
            containerd: path("CONTAINERD")?,
            ctr: path("CTR")?,
            runc: path("RUNC")?,
            cni_bin_dir: path("CNI_BIN_DIR")?,
            coredns: path("COREDNS")?,
            coredns_version: vars.get("COREDNS_VERSION").unwrap_or(&"").to_string(),
            metrics_server: path("METRICS_SERVER")?,
            prometheus: path("PROMETHEUS")?,
            metrics_server_version: vars
                .get("METRICS_SERVER_VERSION")
                .unwrap_or(&"")
                .to_string(),
        })
    }
}

/// The binaries of this workspace the test bed needs: those its images
/// hold (see `sluice_images::catalog`), and the kubectl plugin.
pub const WORKSPACE_BINS: &[&str] = &[
    "demo-app",
    "sluice-proxy",
    "sluice-operator",
    "sluice-pause",
    "kubectl-sluice",
];

/// Directory of this workspace's built binaries, built if needed.
///
/// Tests run from `target/<profile>/deps/`, tools from `target/<profile>/`;
/// the binaries of the other packages sit in `target/<profile>/`. A
/// `cargo build` of them runs once per process (a no-op when they are fresh),
/// so a plain `cargo test --workspace` never runs stale pods.
pub fn workspace_bin_dir() -> Result<&'static Path, Error> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| build_workspace_bins().map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| Error::Toolchain(e.clone()))
}

fn build_workspace_bins() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::Toolchain(format!("current_exe: {e}")))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    if std::env::var_os("SLUICE_SKIP_CARGO_BUILD").is_none() {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(workspace_root())
            .args(["build", "--quiet", "--bins"]);
        crate::cargo_env::clear_run_vars(&mut cmd);
        for bin in WORKSPACE_BINS {
            cmd.args(["--bin", bin]);
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .map_err(|e| Error::Toolchain(format!("running cargo build: {e}")))?;
        if !status.success() {
            return Err(Error::Toolchain(format!(
                "cargo build of {WORKSPACE_BINS:?} failed"
            )));
        }
    }
    for bin in WORKSPACE_BINS {
        if !dir.join(bin).exists() {
            return Err(Error::Toolchain(format!(
                "{} was not built",
                dir.join(bin).display()
            )));
        }
    }
    Ok(dir)
}
