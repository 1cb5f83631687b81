//! containerd 2.x as the node's container runtime, with its own root and
//! state under the node's directory, Debian's runc, and the CNI plugins.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;
use crate::process::{ManagedProcess, run};
use crate::toolchain::Toolchain;
use crate::wait::poll;

/// A running containerd.
#[derive(Debug)]
pub struct Containerd {
    process: ManagedProcess,
    socket: PathBuf,
    ctr: PathBuf,
}

/// Where containerd keeps what, under the node's directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The node's directory.
    pub dir: PathBuf,
    /// Its gRPC socket (the CRI endpoint of the kubelet).
    pub socket: PathBuf,
    /// Where the CNI configuration is read from.
    pub cni_conf_dir: PathBuf,
}

impl Paths {
    /// The layout under `dir`.
    pub fn new(dir: &Path) -> Paths {
        Paths {
            dir: dir.to_owned(),
            socket: dir.join("containerd/containerd.sock"),
            cni_conf_dir: dir.join("cni/net.d"),
        }
    }
}

/// containerd's configuration. `sandbox_image` is the pause image (pinned,
/// so the kubelet's image GC never removes it).
fn config(paths: &Paths, tc: &Toolchain, sandbox_image: &str) -> String {
    let d = paths.dir.display();
    format!(
        r#"version = 3
root = '{d}/containerd/root'
state = '{d}/containerd/state'

[grpc]
  address = '{socket}'

[ttrpc]
  address = '{socket}.ttrpc'

[debug]
  address = ''

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = '{d}/containerd/opt'

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{sandbox_image}'

  [plugins.'io.containerd.cri.v1.runtime']
    # Root here lacks CAP_SYS_RESOURCE: runc cannot give the sandbox the
    # kubelet's oom_score_adj of -998; clamp it to containerd's own.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{runc}'
          Root = '{d}/runc'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{cni_bin}']
      conf_dir = '{cni_conf}'

  [plugins.'io.containerd.nri.v1.nri']
    disable = true
"#,
        socket = paths.socket.display(),
        runc = tc.runc.display(),
        cni_bin = tc.cni_bin_dir.display(),
        cni_conf = paths.cni_conf_dir.display(),
    )
}

impl Containerd {
    /// Writes the configuration and starts containerd; returns once it
    /// answers. The CNI configuration must be in place before: the CRI
    /// plugin reads it at start.
    pub async fn start(
        paths: &Paths,
        tc: &Toolchain,
        sandbox_image: &str,
        logs: &Path,
    ) -> Result<Containerd, Error> {
        let dir = paths.dir.join("containerd");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let file = dir.join("config.toml");
        std::fs::write(&file, config(paths, tc, sandbox_image)).map_err(|e| Error::io(&file, e))?;
        // The shims are found next to containerd.
        let bin_dir = tc.containerd.parent().unwrap_or(Path::new("/"));
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut process = ManagedProcess::spawn_with_env(
            "containerd",
            &tc.containerd,
            &["--config".into(), file.display().to_string()],
            &[("PATH", &path)],
            &logs.join("containerd.log"),
        )?;
        let containerd = Containerd {
            socket: paths.socket.clone(),
            ctr: tc.ctr.clone(),
            process: {
                let socket = paths.socket.clone();
                let ctr = tc.ctr.clone();
                poll(
                    "containerd answering",
                    Duration::from_secs(30),
                    Duration::from_millis(100),
                    || {
                        let exited = process.exited();
                        let ok = socket.exists()
                            && run(
                                &ctr.display().to_string(),
                                &["--address", &socket.display().to_string(), "version"],
                            )
                            .is_ok();
                        async move {
                            if let Some(status) = exited {
                                return Err(Error::Setup(format!(
                                    "containerd exited with {status}"
                                )));
                            }
                            Ok(ok.then_some(()))
                        }
                    },
                )
                .await
                .map_err(|e| process.failure(e.to_string()))?;
                process
            },
        };
        Ok(containerd)
    }

    /// Runs `ctr ARGS` in the `k8s.io` namespace (the kubelet's).
    pub fn ctr(&self, args: &[&str]) -> Result<String, Error> {
        let socket = self.socket.display().to_string();
        let mut all = vec!["--address", &socket, "-n", "k8s.io"];
        all.extend_from_slice(args);
        run(&self.ctr.display().to_string(), &all)
    }

    /// Imports an OCI image archive.
    pub fn import(&self, archive: &Path) -> Result<(), Error> {
        self.ctr(&[
            "images",
            "import",
            "--platform",
            "linux/amd64",
            &archive.display().to_string(),
        ])
        .map(|_| ())
    }

    /// The process, for resource use and liveness.
    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }
}
