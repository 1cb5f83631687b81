//! A node agent: registers a `Node`, keeps its lease, and runs the pods the
//! scheduler binds to it, each in a network namespace on the node's bridge,
//! its containers as local processes (see [`images`] for the mapping from
//! image names). The real controllers (ReplicaSet, EndpointSlice, garbage
//! collector) then work unmodified against the status it writes.

pub mod container;
pub mod env;
pub mod images;
pub mod network;
pub mod pod;
pub mod probe;
pub mod services;
pub mod volumes;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Pod,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::Error;
use network::PodNetwork;
use pod::{ExecOutput, PodHandle, PodInfo, PodMap};

/// What every pod task of a node shares.
pub struct NodeShared {
    /// Admin client.
    pub client: kube::Client,
    /// The node's name.
    pub node_name: String,
    /// The bridge and address pool.
    pub network: PodNetwork,
    /// Node state directory (pods, logs, volumes).
    pub dir: PathBuf,
    /// Where the workspace binaries are.
    pub bins: PathBuf,
    /// The apiserver as pods reach it.
    pub apiserver: SocketAddr,
    /// ClusterIP translation and the pods' hosts files.
    pub services: Arc<services::ServiceProxy>,
    /// Process groups of running containers, killed on teardown.
    groups: Mutex<HashSet<u32>>,
}

impl std::fmt::Debug for NodeShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeShared")
            .field("node_name", &self.node_name)
            .field("dir", &self.dir)
            .finish()
    }
}

impl NodeShared {
    /// Records (or forgets) a container's process group.
    pub fn track_group(&self, pid: u32, alive: bool) {
        if let Ok(mut g) = self.groups.lock() {
            if alive {
                g.insert(pid);
            } else {
                g.remove(&pid);
            }
        }
    }
}

/// A running node agent. Dropping it kills every container and removes the
/// pods' namespaces and the bridge.
pub struct NodeAgent {
    shared: Arc<NodeShared>,
    pods: Arc<Mutex<PodMap>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for NodeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAgent")
            .field("node", &self.shared.node_name)
            .finish()
    }
}

impl NodeAgent {
    /// Registers node `name` and starts serving its pods. `network` is the
    /// node's bridge, created before the control plane so that the apiserver
    /// can listen on its address.
    pub async fn start(
        client: kube::Client,
        name: &str,
        network: PodNetwork,
        dir: &Path,
        bins: &Path,
        apiserver: SocketAddr,
        k8s_version: &str,
    ) -> Result<NodeAgent, Error> {
        std::fs::create_dir_all(dir.join("pods")).map_err(|e| Error::io(dir, e))?;
        let services = Arc::new(services::ServiceProxy::new(
            network.service_chain(),
            network.gateway(),
        ));
        let shared = Arc::new(NodeShared {
            client: client.clone(),
            node_name: name.to_owned(),
            services: services.clone(),
            network,
            dir: dir.to_owned(),
            bins: bins.to_owned(),
            apiserver,
            groups: Mutex::new(HashSet::new()),
        });
        register(&shared, k8s_version).await?;
        let pods: Arc<Mutex<PodMap>> = Arc::default();
        let tasks = vec![
            tokio::spawn(heartbeat(shared.clone(), k8s_version.to_owned())),
            tokio::spawn(watch_pods(shared.clone(), pods.clone())),
            tokio::spawn(services::run(client, services)),
        ];
        Ok(NodeAgent {
            shared,
            pods,
            tasks,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.shared.node_name
    }

    /// The node's address on its bridge (the pods' gateway).
    pub fn address(&self) -> std::net::Ipv4Addr {
        self.shared.network.gateway()
    }

    /// Runs `argv` inside pod `namespace/name` (its network namespace, the
    /// mounts and environment of its first container), as `kubectl exec`.
    pub async fn exec_in_pod(
        &self,
        namespace: &str,
        name: &str,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, Error> {
        let context = {
            let pods = self
                .pods
                .lock()
                .map_err(|_| Error::Setup("pod map poisoned".into()))?;
            let handle = pods
                .values()
                .find(|h| h.key.0 == namespace && h.key.1 == name)
                .ok_or_else(|| {
                    Error::Setup(format!("pod {namespace}/{name} does not run on this node"))
                })?;
            let info = handle
                .info
                .lock()
                .map_err(|_| Error::Setup("pod info poisoned".into()))?;
            info.exec_context.clone().ok_or_else(|| {
                Error::Setup(format!(
                    "pod {namespace}/{name} has no running container yet"
                ))
            })?
        };
        pod::exec(
            &context,
            argv.iter().map(|s| s.to_string()).collect(),
            Some(timeout),
        )
        .await
        .map_err(|detail| Error::Command {
            command: argv.join(" "),
            detail,
        })
    }

    /// The network namespace of pod `namespace/name`, if it runs here.
    pub fn pod_netns(&self, namespace: &str, name: &str) -> Option<String> {
        let pods = self.pods.lock().ok()?;
        let h = pods
            .values()
            .find(|h| h.key.0 == namespace && h.key.1 == name)?;
        let info = h.info.lock().ok()?;
        info.net.as_ref().map(|n| n.netns.clone())
    }

    /// Path of a container's log file.
    pub fn container_log(&self, pod_uid: &str, container: &str) -> PathBuf {
        self.shared
            .dir
            .join("pods")
            .join(pod_uid)
            .join("logs")
            .join(format!("{container}.log"))
    }

    /// Stops the node synchronously: kills every container's process group
    /// and aborts the tasks; the bridge and namespaces go when the shared
    /// state drops.
    pub fn shutdown(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Ok(mut pods) = self.pods.lock() {
            for (_, h) in pods.drain() {
                h.task.abort();
            }
        }
        if let Ok(groups) = self.shared.groups.lock() {
            for &pid in groups.iter() {
                container::signal_group(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn quantity(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

fn node_status(shared: &NodeShared, k8s_version: &str) -> NodeStatus {
    let now = Time(Timestamp::now());
    let capacity: BTreeMap<String, Quantity> = [
        ("cpu".to_owned(), quantity("32")),
        ("memory".to_owned(), quantity("64Gi")),
        ("pods".to_owned(), quantity("250")),
        ("ephemeral-storage".to_owned(), quantity("100Gi")),
    ]
    .into();
    let cond = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    NodeStatus {
        capacity: Some(capacity.clone()),
        allocatable: Some(capacity),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: shared.network.gateway().to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: shared.node_name.clone(),
            },
        ]),
        conditions: Some(vec![
            cond(
                "Ready",
                "True",
                "KubeletReady",
                "sluice node agent is posting ready status",
            ),
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "no memory pressure",
            ),
            cond(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "no disk pressure",
            ),
            cond(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "no PID pressure",
            ),
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
            operating_system: "linux".into(),
            kubelet_version: k8s_version.to_owned(),
            kube_proxy_version: String::new(),
            container_runtime_version: "sluice-node://0.1.0".into(),
            os_image: "Sluice test node".into(),
            kernel_version: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            boot_id: String::new(),
            machine_id: String::new(),
            system_uuid: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn register(shared: &NodeShared, k8s_version: &str) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let labels: BTreeMap<String, String> = [
        (
            "kubernetes.io/hostname".to_owned(),
            shared.node_name.clone(),
        ),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        ("node.sluice.dev/agent".to_owned(), "true".to_owned()),
    ]
    .into();
    let node = Node {
        metadata: ObjectMeta {
            name: Some(shared.node_name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(shared.network.pod_cidr()),
            pod_cidrs: Some(vec![shared.network.pod_cidr()]),
            ..Default::default()
        }),
        status: None,
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let patch = serde_json::json!({ "status": node_status(shared, k8s_version) });
    nodes
        .patch_status(
            &shared.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Renews the node lease every 10 s and posts the node status every 30 s,
/// as the kubelet does, so that the node lifecycle controller keeps it Ready.
async fn heartbeat(shared: Arc<NodeShared>, k8s_version: String) {
    let leases: Api<Lease> = Api::namespaced(shared.client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(shared.node_name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(shared.node_name.clone()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        };
        let pp = PatchParams::apply("sluice-node-agent").force();
        if let Err(e) = leases
            .patch(&shared.node_name, &pp, &Patch::Apply(&lease))
            .await
        {
            debug!("node lease: {e}");
        }
        if n.is_multiple_of(3) && n > 0 {
            let patch = serde_json::json!({ "status": node_status(&shared, &k8s_version) });
            if let Err(e) = nodes
                .patch_status(
                    &shared.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                debug!("node status: {e}");
            }
        }
        n += 1;
    }
}

/// Watches the pods bound to this node and hands each to its task.
async fn watch_pods(shared: Arc<NodeShared>, pods: Arc<Mutex<PodMap>>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", shared.node_name));
    let mut stream = watcher(api, config).boxed();
    let mut listed: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                listed.insert(pod.uid().unwrap_or_default());
                dispatch(&shared, &pods, pod);
            }
            Ok(watcher::Event::InitDone) => {
                // Pods that vanished while the watch was down.
                if let Ok(map) = pods.lock() {
                    for (uid, h) in map.iter() {
                        if !listed.contains(uid) {
                            h.tx.send_replace(None);
                        }
                    }
                }
            }
            Ok(watcher::Event::Apply(pod)) => dispatch(&shared, &pods, pod),
            Ok(watcher::Event::Delete(pod)) => {
                if let Ok(map) = pods.lock()
                    && let Some(h) = map.get(&pod.uid().unwrap_or_default())
                {
                    h.tx.send_replace(None);
                }
            }
            Err(e) => {
                warn!("pod watch: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if let Ok(mut map) = pods.lock() {
            map.retain(|_, h| !h.task.is_finished());
        }
    }
}

fn dispatch(shared: &Arc<NodeShared>, pods: &Arc<Mutex<PodMap>>, pod: Pod) {
    let uid = pod.uid().unwrap_or_default();
    let Ok(mut map) = pods.lock() else { return };
    if let Some(h) = map.get(&uid) {
        h.tx.send_replace(Some(pod));
        return;
    }
    let terminal = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if terminal && pod.metadata.deletion_timestamp.is_none() {
        // A finished pod from an earlier agent: nothing to run.
        return;
    }
    let key = (pod.namespace().unwrap_or_default(), pod.name_any());
    let (tx, rx) = watch::channel(Some(pod));
    let info = Arc::new(Mutex::new(PodInfo::default()));
    let task = tokio::spawn(pod::run(shared.clone(), rx, info.clone()));
    map.insert(
        uid,
        PodHandle {
            tx,
            key,
            info,
            task,
        },
    );
}
