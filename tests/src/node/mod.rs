//! A real node on this machine: containerd with Debian's runc and CNI
//! plugins, the kubelet and kube-proxy of the control plane's version, all
//! built from their Go modules (`scripts/test-bed.sh`), and cluster DNS
//! (CoreDNS, deployed by [`crate::Cluster`]). Pods run the project's own
//! OCI images, imported into containerd at start.
//!
//! The kubelet and kube-proxy own host-wide state, so one node runs per
//! machine ([`host::MachineLock`]); [`host::Record`] says what to undo, and
//! [`Node::shutdown`] (or the next node, after a crash) undoes it.

pub mod containerd;
pub mod dns;
pub mod host;
pub mod kube_proxy;
pub mod kubelet;
pub mod metrics;
pub mod network;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::Api;

use crate::Error;
use crate::control_plane::ControlPlane;
use crate::process::ManagedProcess;
use crate::toolchain::Toolchain;
use crate::wait::poll;
use containerd::Containerd;
use host::{MachineLock, Record};
use network::PodNetwork;

/// What must exist before the control plane starts: the machine's node
/// lock and the bridge whose address the apiserver listens on. Dropping it
/// undoes everything its [`Record`] covers.
#[derive(Debug)]
pub struct Site {
    network: PodNetwork,
    record: Record,
    _lock: MachineLock,
}

impl Site {
    /// Takes the machine's node lock, cleans up after a node whose owner
    /// died, creates the bridge, and records what the node in `dir` will
    /// change on the host (before it changes anything).
    pub fn claim(dir: &Path, tc: &Toolchain) -> Result<Site, Error> {
        let lock = MachineLock::acquire()?;
        host::clean_stale();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let record = Record::new(dir, &tc.kube_proxy);
        record.write()?;
        let network = PodNetwork::create()?;
        let record = record.with_bridge(network.index(), network.cni_name());
        record.write()?;
        Ok(Site {
            network,
            record,
            _lock: lock,
        })
    }

    /// The node's address: the bridge's.
    pub fn address(&self) -> Ipv4Addr {
        self.network.gateway()
    }
}

/// A running node. Dropping it stops every component, then its [`Site`]
/// kills every pod and puts the host back as it was.
pub struct Node {
    name: String,
    dir: PathBuf,
    // Stopped in this order by `shutdown`.
    kube_proxy: Option<ManagedProcess>,
    kubelet: Option<ManagedProcess>,
    containerd: Option<Containerd>,
    site: Site,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish()
    }
}

impl Node {
    /// Starts containerd (importing `images`), kube-proxy and the kubelet
    /// in `dir`, and returns once the node is `Ready`.
    pub async fn start(
        site: Site,
        name: &str,
        dir: &Path,
        cp: &ControlPlane,
        client: &kube::Client,
        tc: &Toolchain,
        images: &NodeImages,
    ) -> Result<Node, Error> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
        let mut node = Node {
            name: name.to_owned(),
            dir: dir.to_owned(),
            kube_proxy: None,
            kubelet: None,
            containerd: None,
            site,
        };
        // On an error below, dropping `node` undoes what was started.
        node.start_components(cp, tc, images, &logs).await?;
        node.wait_ready(client).await?;
        // The kubelet sets its sysctls once, at start.
        node.site.record.restore_sysctls();
        Ok(node)
    }

    async fn start_components(
        &mut self,
        cp: &ControlPlane,
        tc: &Toolchain,
        images: &NodeImages,
        logs: &Path,
    ) -> Result<(), Error> {
        let paths = containerd::Paths::new(&self.dir);
        let network = &self.site.network;
        let (ip, pod_cidr) = (network.gateway(), network.pod_cidr());
        std::fs::create_dir_all(&paths.cni_conf_dir)
            .map_err(|e| Error::io(&paths.cni_conf_dir, e))?;
        let conflist = paths.cni_conf_dir.join("10-sluice.conflist");
        std::fs::write(&conflist, network.cni_conflist(&self.dir.join("cni/ipam")))
            .map_err(|e| Error::io(&conflist, e))?;
        let containerd = Containerd::start(&paths, tc, &images.sandbox, logs).await?;
        let started = Instant::now();
        for archive in &images.archives {
            containerd.import(archive)?;
        }
        eprintln!(
            "[sluice-tests] imported {} images into the node in {:.1}s",
            images.archives.len(),
            started.elapsed().as_secs_f64()
        );
        self.containerd = Some(containerd);
        self.kube_proxy = Some(kube_proxy::start(
            &self.dir, &self.name, ip, &pod_cidr, cp, tc, logs,
        )?);
        let spec = kubelet::NodeSpec {
            name: &self.name,
            ip,
            dir: &self.dir,
            runtime_socket: &paths.socket,
        };
        let (kubelet, _healthz) = kubelet::start(&spec, cp, tc, logs)?;
        self.kubelet = Some(kubelet);
        Ok(())
    }

    async fn wait_ready(&mut self, client: &kube::Client) -> Result<(), Error> {
        let nodes: Api<NodeObject> = Api::all(client.clone());
        let name = self.name.clone();
        let result = poll(
            &format!("node {name} Ready"),
            Duration::from_secs(90),
            Duration::from_millis(250),
            || {
                let dead = self.first_exited();
                let nodes = nodes.clone();
                let name = name.clone();
                async move {
                    if let Some(e) = dead {
                        return Err(e);
                    }
                    let ready = nodes.get_opt(&name).await?.is_some_and(|n| {
                        n.status
                            .and_then(|s| s.conditions)
                            .into_iter()
                            .flatten()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    });
                    Ok(ready.then_some(()))
                }
            },
        )
        .await;
        result.map_err(|e| match &self.kubelet {
            Some(k) => k.failure(e.to_string()),
            None => e,
        })
    }

    /// An error for the first component that has exited, if any.
    fn first_exited(&mut self) -> Option<Error> {
        let procs = [
            self.containerd.as_mut().map(Containerd::process),
            self.kube_proxy.as_mut(),
            self.kubelet.as_mut(),
        ];
        for p in procs.into_iter().flatten() {
            if let Some(status) = p.exited() {
                return Some(p.failure(format!("exited unexpectedly with {status}")));
            }
        }
        None
    }

    /// Fails with the component's log tail if a node component died.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        self.first_exited().map_or(Ok(()), Err)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's InternalIP (the bridge's address), where NodePorts answer.
    pub fn address(&self) -> Ipv4Addr {
        self.site.network.gateway()
    }

    /// Runs `ctr` against the node's containerd (namespace `k8s.io`).
    pub fn ctr(&self, args: &[&str]) -> Result<String, Error> {
        self.containerd
            .as_ref()
            .ok_or_else(|| Error::Setup("containerd is not running".into()))?
            .ctr(args)
    }

    /// The node's components (kubelet, containerd, kube-proxy), for logs.
    pub fn processes(&self) -> Vec<&ManagedProcess> {
        let mut v: Vec<&ManagedProcess> = Vec::new();
        v.extend(self.kubelet.as_ref());
        v.extend(self.kube_proxy.as_ref());
        v
    }

    /// The resident memory of the node's own processes (kubelet,
    /// containerd and its shims, kube-proxy), in KiB.
    pub fn resident_kib(&self) -> u64 {
        host::resident_kib_under(&self.dir)
    }

    /// Stops the node's components; the pods and the host's state go when
    /// the node is dropped. Idempotent.
    pub fn shutdown(&mut self) {
        if let Some(mut p) = self.kube_proxy.take() {
            p.stop(Duration::from_secs(2));
        }
        if let Some(mut p) = self.kubelet.take() {
            p.stop(Duration::from_secs(5));
        }
        if let Some(mut c) = self.containerd.take() {
            c.process().stop(Duration::from_secs(5));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.record.clean_up();
    }
}

/// The images a node runs: OCI archives to import, and the sandbox image's
/// name among them.
#[derive(Debug, Clone)]
pub struct NodeImages {
    /// Archives for `ctr images import`.
    pub archives: Vec<PathBuf>,
    /// The pause image, as containerd names it.
    pub sandbox: String,
    /// The CoreDNS image, as pods name it.
    pub coredns: String,
    /// The metrics-server image, as pods name it.
    pub metrics_server: String,
}

impl NodeImages {
    /// Builds (or reuses) Sluice's images from the workspace binaries in
    /// `bins`, and the test bed's CoreDNS, into `bins/images`.
    pub fn build(bins: &Path, tc: &Toolchain) -> Result<NodeImages, Error> {
        let out = bins.join("images");
        let err = |e: sluice_images::Error| Error::Toolchain(format!("building images: {e}"));
        let mut images = sluice_images::catalog::sluice(bins).map_err(err)?;
        let coredns =
            sluice_images::catalog::coredns(&tc.coredns, &tc.coredns_version).map_err(err)?;
        let metrics =
            sluice_images::catalog::metrics_server(&tc.metrics_server, &tc.metrics_server_version)
                .map_err(err)?;
        let first =
            |i: &sluice_images::Image| i.references().into_iter().next().unwrap_or_default();
        let (coredns_ref, metrics_ref) = (first(&coredns), first(&metrics));
        images.push(coredns);
        images.push(metrics);
        let pause = sluice_proto::images::repository(sluice_proto::images::PAUSE);
        let sandbox = images
            .iter()
            .find(|i| i.repository == pause)
            .map(|i| i.full_name(sluice_proto::images::TAG))
            .ok_or_else(|| Error::Toolchain("no pause image in the catalog".into()))?;
        let started = Instant::now();
        let archives = images
            .iter()
            .map(|i| i.build(&out).map_err(err))
            .collect::<Result<Vec<_>, _>>()?;
        eprintln!(
            "[sluice-tests] {} image archives ready in {:.1}s ({})",
            archives.len(),
            started.elapsed().as_secs_f64(),
            out.display()
        );
        Ok(NodeImages {
            archives,
            sandbox,
            coredns: coredns_ref,
            metrics_server: metrics_ref,
        })
    }
}
