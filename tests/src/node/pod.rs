//! One pod's life on the node: network, volumes, init containers (and native
//! sidecars), containers with restarts and probes, status written back to
//! the apiserver, and a clean end when the pod is deleted.
//!
//! Each pod is one task running [`run`]: an event loop over pod updates,
//! process exits, probe results and timers. Every pass decides what to start
//! next from the recorded state, then writes the status if it changed.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::container::{ProcessSpec, signal_group};
use super::network::PodNet;
use super::services::PodHosts;
use super::volumes::{Mount, PodVolumes};
use super::{NodeShared, env, images, probe};

/// Restart back-off: the kubelet starts at 10 s; a test node starts lower so
/// that crash-and-recover scenarios stay quick, with the same doubling.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(20);
/// How often ConfigMap/Secret volumes are re-read and tokens checked.
const VOLUME_SYNC: Duration = Duration::from_secs(5);

/// What other parts of the node need to know of a running pod.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    /// The pod's network, once set up.
    pub net: Option<PodNet>,
    /// The first container's process spec, the context of `exec_in_pod`.
    pub exec_context: Option<ProcessSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Sidecar,
    Main,
}

#[derive(Debug, Clone)]
struct Terminated {
    exit_code: i32,
    reason: String,
    message: Option<String>,
    started: Timestamp,
    finished: Timestamp,
}

#[derive(Debug, Clone)]
enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        pid: u32,
        started: Timestamp,
    },
    Terminated(Terminated),
}

#[derive(Debug)]
struct Ctr {
    spec: Container,
    kind: Kind,
    state: State,
    last: Option<Terminated>,
    restarts: i32,
    generation: u64,
    ready: bool,
    started: bool,
    probe_ok: u32,
    probe_fail: u32,
    live_fail: u32,
    next_start: Option<Instant>,
    backoff: Duration,
    program: Option<String>,
    probes: Option<tokio::task::AbortHandle>,
}

impl Ctr {
    fn new(spec: Container, kind: Kind) -> Ctr {
        Ctr {
            spec,
            kind,
            state: State::Waiting {
                reason: "PodInitializing".into(),
                message: None,
            },
            last: None,
            restarts: 0,
            generation: 0,
            ready: false,
            started: false,
            probe_ok: 0,
            probe_fail: 0,
            live_fail: 0,
            next_start: Some(Instant::now()),
            backoff: BACKOFF_START,
            program: None,
            probes: None,
        }
    }
    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }
    fn pid(&self) -> Option<u32> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }
    fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }
}

#[derive(Debug)]
enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

#[derive(Debug)]
struct ProbeResult {
    container: String,
    generation: u64,
    kind: ProbeKind,
    ok: bool,
    detail: String,
}

struct Exit {
    container: String,
    generation: u64,
    code: i32,
    signal: Option<i32>,
}

struct Runtime {
    shared: Arc<NodeShared>,
    pod: Pod,
    dir: PathBuf,
    net: Option<PodNet>,
    host_network: bool,
    volumes: Option<PodVolumes>,
    ctrs: Vec<Ctr>,
    setup_error: Option<String>,
    start_time: Timestamp,
    exits: JoinSet<Exit>,
    probe_tx: mpsc::Sender<ProbeResult>,
    last_status: Option<serde_json::Value>,
    info: Arc<std::sync::Mutex<PodInfo>>,
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// Runs `pod` until it is deleted (or `rx` is closed), then cleans up.
pub async fn run(
    shared: Arc<NodeShared>,
    mut rx: watch::Receiver<Option<Pod>>,
    info: Arc<std::sync::Mutex<PodInfo>>,
) {
    let Some(pod) = rx.borrow_and_update().clone() else {
        return;
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let key = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    );
    let spec = pod.spec.clone().unwrap_or_default();
    let mut ctrs: Vec<Ctr> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            let kind = if c.restart_policy.as_deref() == Some("Always") {
                Kind::Sidecar
            } else {
                Kind::Init
            };
            Ctr::new(c.clone(), kind)
        })
        .collect();
    ctrs.extend(
        spec.containers
            .iter()
            .map(|c| Ctr::new(c.clone(), Kind::Main)),
    );
    let (probe_tx, mut probe_rx) = mpsc::channel(64);
    let mut rt = Runtime {
        dir: shared.dir.join("pods").join(&uid),
        shared,
        pod,
        net: None,
        host_network: spec.host_network.unwrap_or(false),
        volumes: None,
        ctrs,
        setup_error: None,
        start_time: now(),
        exits: JoinSet::new(),
        probe_tx,
        last_status: None,
        info,
    };
    // A pod already being deleted (e.g. found at an agent restart) never starts.
    if rt.pod.metadata.deletion_timestamp.is_none() {
        info!(pod = %key, "starting pod");
        rt.setup().await;
        rt.advance().await;
        rt.write_status().await;
        rt.serve(&mut rx, &mut probe_rx).await;
    }
    let deleted_via_api = rx.borrow().is_some();
    info!(pod = %key, "stopping pod");
    rt.terminate().await;
    rt.cleanup();
    if deleted_via_api {
        // As the kubelet does: the pod object goes once its processes are gone.
        let api: Api<Pod> = Api::namespaced(
            rt.shared.client.clone(),
            rt.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = api
            .delete(rt.pod.metadata.name.as_deref().unwrap_or(""), &dp)
            .await
        {
            debug!(pod = %key, "final delete: {e}");
        }
    }
}

impl Runtime {
    /// The event loop; returns when the pod is deleted or gone.
    async fn serve(
        &mut self,
        rx: &mut watch::Receiver<Option<Pod>>,
        probe_rx: &mut mpsc::Receiver<ProbeResult>,
    ) {
        let mut sync = tokio::time::interval(VOLUME_SYNC);
        sync.tick().await;
        loop {
            let next_timer = self.ctrs.iter().filter_map(|c| c.next_start).min();
            let timer = async {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Some(pod) = rx.borrow_and_update().clone() else { return };
                    let deleting = pod.metadata.deletion_timestamp.is_some();
                    self.pod = pod;
                    if deleting {
                        return;
                    }
                }
                Some(Ok(exit)) = self.exits.join_next() => self.on_exit(exit),
                Some(result) = probe_rx.recv() => self.on_probe(result),
                _ = timer => {}
                _ = sync.tick() => self.sync_volumes().await,
            }
            self.advance().await;
            self.write_status().await;
        }
    }

    fn pod_ip(&self) -> IpAddr {
        match &self.net {
            Some(n) => IpAddr::V4(n.ip),
            None => IpAddr::V4(self.shared.network.gateway()),
        }
    }

    async fn setup(&mut self) {
        if let Err(e) = self.try_setup().await {
            warn!(pod = ?self.pod.metadata.name, "pod setup failed: {e}");
            self.setup_error = Some(e);
        }
    }

    async fn try_setup(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(self.dir.join("logs")).map_err(|e| e.to_string())?;
        if !self.host_network {
            self.net = Some(self.shared.network.add_pod().map_err(|e| e.to_string())?);
        }
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        let ip = self.pod_ip();
        let etc = self.dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(|e| e.to_string())?;
        let hostname = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| name.clone());
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        self.shared.services.add_pod(
            &uid,
            PodHosts {
                file: etc.join("hosts"),
                namespace: ns.clone(),
                ip,
                hostname,
            },
        )?;
        std::fs::write(
            etc.join("resolv.conf"),
            format!(
                "nameserver {}\nsearch {ns}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
                self.shared.network.gateway()
            ),
        )
        .map_err(|e| e.to_string())?;
        if let Ok(mut info) = self.info.lock() {
            info.net = self.net.clone();
        }
        // The IP is known now: write it before volumes, whose downward API may use it.
        self.write_status().await;
        let volumes =
            PodVolumes::prepare(&self.shared.client, &self.pod, &self.dir.join("volumes")).await?;
        self.volumes = Some(volumes);
        Ok(())
    }

    async fn sync_volumes(&mut self) {
        if let Some(v) = self.volumes.as_mut()
            && let Err(e) = v.sync(&self.shared.client, &self.pod).await
        {
            warn!(pod = ?self.pod.metadata.name, "volume sync: {e}");
        }
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    /// Whether the container at `i` should run again after it stopped.
    fn should_restart(&self, i: usize) -> bool {
        let c = &self.ctrs[i];
        let failed = !c.succeeded();
        match c.kind {
            Kind::Sidecar => !self.completed(),
            Kind::Init => failed && self.restart_policy() != "Never",
            Kind::Main => match self.restart_policy() {
                "Never" => false,
                "OnFailure" => failed,
                _ => true,
            },
        }
    }

    /// All main containers have finished for good.
    fn completed(&self) -> bool {
        let policy = self.restart_policy();
        self.ctrs.iter().filter(|c| c.kind == Kind::Main).all(|c| {
            matches!(&c.state, State::Terminated(t) if policy == "Never" || (policy == "OnFailure" && t.exit_code == 0))
        })
    }

    fn init_failed(&self) -> bool {
        self.restart_policy() == "Never"
            && self.ctrs.iter().any(|c| {
                c.kind == Kind::Init && matches!(&c.state, State::Terminated(t) if t.exit_code != 0)
            })
    }

    /// Starts what is due: init containers in order, then the containers.
    async fn advance(&mut self) {
        if self.setup_error.is_some() || self.volumes.is_none() {
            return;
        }
        if self.init_failed() {
            return;
        }
        let now = Instant::now();
        for i in 0..self.ctrs.len() {
            let kind = self.ctrs[i].kind;
            // Init containers gate everything after them.
            let gate_open = self.ctrs[..i].iter().all(|c| match c.kind {
                Kind::Init => c.succeeded(),
                Kind::Sidecar => c.started,
                Kind::Main => true,
            });
            if !gate_open {
                break;
            }
            let c = &self.ctrs[i];
            if c.running() {
                continue;
            }
            let finished = matches!(c.state, State::Terminated(_));
            if finished && (kind == Kind::Init && c.succeeded() || !self.should_restart(i)) {
                continue;
            }
            if kind == Kind::Sidecar && self.completed() {
                continue;
            }
            if c.next_start.is_some_and(|at| at <= now) {
                self.start(i).await;
            }
        }
        // Native sidecars stop once the main containers have completed.
        if self.completed() {
            for c in &self.ctrs {
                if c.kind == Kind::Sidecar
                    && let Some(pid) = c.pid()
                {
                    signal_group(pid, libc::SIGTERM);
                }
            }
        }
    }

    async fn process_spec(&self, c: &Container) -> Result<ProcessSpec, (String, String)> {
        let launch = images::resolve(
            c.image.as_deref().unwrap_or(""),
            c.command.as_deref().unwrap_or(&[]),
            c.args.as_deref().unwrap_or(&[]),
            &self.shared.bins,
        )
        .map_err(|m| ("ErrImagePull".to_owned(), m))?;
        let env_list = env::resolve(
            &self.shared.client,
            &self.pod,
            c,
            &launch.image_env,
            self.shared.apiserver,
        )
        .await
        .map_err(|m| ("CreateContainerConfigError".to_owned(), m))?;
        let lookup: BTreeMap<String, String> = env_list.iter().cloned().collect();
        let args = launch
            .args
            .iter()
            .map(|a| env::expand(a, &lookup))
            .collect();
        let program = PathBuf::from(env::expand(&launch.program.to_string_lossy(), &lookup));
        let mut mounts = vec![
            Mount {
                source: self.dir.join("etc/hosts"),
                target: "/etc/hosts".into(),
                read_only: false,
            },
            Mount {
                source: self.dir.join("etc/resolv.conf"),
                target: "/etc/resolv.conf".into(),
                read_only: false,
            },
        ];
        if let Some(v) = &self.volumes {
            mounts.extend(
                v.mounts_for(c)
                    .map_err(|m| ("CreateContainerConfigError".to_owned(), m))?,
            );
        }
        Ok(ProcessSpec {
            program,
            args,
            env: env_list,
            netns: self.net.as_ref().map(|n| n.netns_path()),
            mounts,
            working_dir: c.working_dir.as_ref().map(PathBuf::from),
        })
    }

    async fn start(&mut self, i: usize) {
        let pod_ip = self.pod_ip();
        let spec = self.ctrs[i].spec.clone();
        let name = spec.name.clone();
        let pspec = match self.process_spec(&spec).await {
            Ok(p) => p,
            Err((reason, message)) => {
                let c = &mut self.ctrs[i];
                c.state = State::Waiting {
                    reason,
                    message: Some(message),
                };
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
                return;
            }
        };
        let log_path = self.dir.join("logs").join(format!("{name}.log"));
        let spawned = (|| {
            let out = std::fs::File::options()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| e.to_string())?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let mut cmd = pspec.command(Stdio::from(out), Stdio::from(err))?;
            cmd.spawn()
                .map_err(|e| format!("starting {}: {e}", pspec.program.display()))
        })();
        let c = &mut self.ctrs[i];
        let mut child = match spawned {
            Ok(child) => child,
            Err(message) => {
                warn!(container = %name, "{message}");
                c.state = State::Waiting {
                    reason: "RunContainerError".into(),
                    message: Some(message),
                };
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        self.shared.track_group(pid, true);
        c.generation += 1;
        c.program = Some(pspec.program.display().to_string());
        c.state = State::Running {
            pid,
            started: now(),
        };
        c.next_start = None;
        c.ready = false;
        c.probe_ok = 0;
        c.probe_fail = 0;
        c.live_fail = 0;
        c.started = c.spec.startup_probe.is_none();
        debug!(container = %name, pid, "container started");
        let generation = c.generation;
        let cname = name.clone();
        self.exits.spawn(async move {
            let status = child.wait().await;
            use std::os::unix::process::ExitStatusExt;
            let (code, signal) = match status {
                Ok(s) => (
                    s.code().unwrap_or(128 + s.signal().unwrap_or(0)),
                    s.signal(),
                ),
                Err(_) => (255, None),
            };
            Exit {
                container: cname,
                generation,
                code,
                signal,
            }
        });
        if c.spec.readiness_probe.is_some()
            || c.spec.liveness_probe.is_some()
            || c.spec.startup_probe.is_some()
        {
            let handle = tokio::spawn(probe_loop(
                c.spec.clone(),
                generation,
                pod_ip,
                pspec.clone(),
                self.probe_tx.clone(),
            ));
            c.probes = Some(handle.abort_handle());
        }
        if i == self
            .ctrs
            .iter()
            .position(|c| c.kind == Kind::Main)
            .unwrap_or(0)
            && let Ok(mut info) = self.info.lock()
        {
            info.exec_context = Some(pspec);
        }
    }

    fn on_exit(&mut self, exit: Exit) {
        let Some(i) = self.ctrs.iter().position(|c| c.spec.name == exit.container) else {
            return;
        };
        let c = &mut self.ctrs[i];
        if c.generation != exit.generation {
            return;
        }
        if let Some(pid) = c.pid() {
            self.shared.track_group(pid, false);
            // Whatever the container left in its group goes with it.
            signal_group(pid, libc::SIGKILL);
        }
        if let Some(p) = c.probes.take() {
            p.abort();
        }
        let started = match &c.state {
            State::Running { started, .. } => *started,
            _ => now(),
        };
        let reason = if exit.code == 0 { "Completed" } else { "Error" };
        let t = Terminated {
            exit_code: exit.code,
            reason: reason.to_owned(),
            message: exit.signal.map(|s| format!("killed by signal {s}")),
            started,
            finished: now(),
        };
        info!(container = %c.spec.name, code = exit.code, "container exited");
        c.last = Some(t.clone());
        c.state = State::Terminated(t);
        c.ready = false;
        if c.kind == Kind::Init && exit.code == 0 {
            return;
        }
        if self.should_restart(i) {
            let c = &mut self.ctrs[i];
            c.restarts += 1;
            c.next_start = Some(Instant::now() + c.backoff);
            c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn on_probe(&mut self, r: ProbeResult) {
        let Some(c) = self.ctrs.iter_mut().find(|c| c.spec.name == r.container) else {
            return;
        };
        if c.generation != r.generation || !c.running() {
            return;
        }
        match r.kind {
            ProbeKind::Startup => {
                if r.ok {
                    c.started = true;
                } else if let Some(pid) = c.pid() {
                    info!(container = %c.spec.name, "startup probe failed: {}; restarting", r.detail);
                    signal_group(pid, libc::SIGKILL);
                }
            }
            ProbeKind::Readiness => {
                let threshold = c.spec.readiness_probe.as_ref().map(probe::Timing::of);
                let Some(t) = threshold else { return };
                if r.ok {
                    c.probe_ok += 1;
                    c.probe_fail = 0;
                    if c.probe_ok >= t.success_threshold {
                        c.ready = true;
                    }
                } else {
                    c.probe_fail += 1;
                    c.probe_ok = 0;
                    if c.probe_fail >= t.failure_threshold {
                        c.ready = false;
                    }
                    debug!(container = %c.spec.name, "readiness probe failed: {}", r.detail);
                }
            }
            ProbeKind::Liveness => {
                let Some(t) = c.spec.liveness_probe.as_ref().map(probe::Timing::of) else {
                    return;
                };
                if r.ok {
                    c.live_fail = 0;
                } else {
                    c.live_fail += 1;
                    if c.live_fail >= t.failure_threshold
                        && let Some(pid) = c.pid()
                    {
                        info!(container = %c.spec.name, "liveness probe failed: {}; restarting", r.detail);
                        signal_group(pid, libc::SIGTERM);
                    }
                }
            }
        }
    }

    /// The pod's status as the kubelet would report it.
    fn status(&self) -> PodStatus {
        let ctr_status = |c: &Ctr| {
            let state = match &c.state {
                State::Waiting { reason, message } => ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.clone()),
                        message: message.clone(),
                    }),
                    ..Default::default()
                },
                State::Running { started, .. } => ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(*started)),
                    }),
                    ..Default::default()
                },
                State::Terminated(t) => ContainerState {
                    terminated: Some(terminated(t)),
                    ..Default::default()
                },
            };
            // A container waiting for its restart shows CrashLoopBackOff with its last state.
            let state = match (&c.state, c.next_start) {
                (State::Terminated(_), Some(_)) => ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CrashLoopBackOff".into()),
                        message: Some(format!(
                            "back-off {:?} restarting failed container",
                            c.backoff
                        )),
                    }),
                    ..Default::default()
                },
                _ => state,
            };
            let last_state = c
                .last
                .as_ref()
                .filter(|_| c.restarts > 0)
                .map(|t| ContainerState {
                    terminated: Some(terminated(t)),
                    ..Default::default()
                });
            let ready = c.running()
                && match c.kind {
                    Kind::Init => false,
                    _ => c.spec.readiness_probe.is_none() && c.started || c.ready,
                };
            ContainerStatus {
                name: c.spec.name.clone(),
                image: c.spec.image.clone().unwrap_or_default(),
                image_id: format!("sluice-local://{}", c.program.as_deref().unwrap_or("")),
                container_id: c.pid().map(|p| format!("sluice://{p}")),
                ready,
                started: Some(c.running() && c.started),
                restart_count: c.restarts,
                state: Some(state),
                last_state,
                ..Default::default()
            }
        };
        let inits: Vec<ContainerStatus> = self
            .ctrs
            .iter()
            .filter(|c| c.kind != Kind::Main)
            .map(ctr_status)
            .collect();
        let mains: Vec<ContainerStatus> = self
            .ctrs
            .iter()
            .filter(|c| c.kind == Kind::Main)
            .map(ctr_status)
            .collect();
        let initialized = self.ctrs.iter().all(|c| match c.kind {
            Kind::Init => c.succeeded(),
            Kind::Sidecar => c.started,
            Kind::Main => true,
        });
        let sidecars_ready = inits
            .iter()
            .zip(self.ctrs.iter().filter(|c| c.kind != Kind::Main))
            .all(|(s, c)| c.kind == Kind::Init || s.ready);
        let containers_ready = mains.iter().all(|s| s.ready) && sidecars_ready;
        let completed = self.completed();
        let phase = if self.init_failed() {
            "Failed"
        } else if completed {
            if self
                .ctrs
                .iter()
                .filter(|c| c.kind == Kind::Main)
                .all(|c| c.succeeded())
            {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if initialized
            && self
                .ctrs
                .iter()
                .any(|c| c.kind == Kind::Main && (c.running() || c.restarts > 0))
        {
            "Running"
        } else {
            "Pending"
        };
        let old_conditions = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let cond = |type_: &str, ok: bool, reason: Option<&str>| {
            let status = if ok { "True" } else { "False" };
            let previous = old_conditions.iter().find(|c| c.type_ == type_);
            let transition = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Some(Time(now())),
            };
            PodCondition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: if ok { None } else { reason.map(str::to_owned) },
                last_transition_time: transition,
                ..Default::default()
            }
        };
        let mut conditions: Vec<PodCondition> = old_conditions
            .iter()
            .filter(|c| c.type_ == "PodScheduled")
            .cloned()
            .collect();
        conditions.push(cond(
            "PodReadyToStartContainers",
            self.volumes.is_some(),
            Some("SetupFailed"),
        ));
        conditions.push(cond(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
        ));
        let ready = containers_ready && phase == "Running";
        conditions.push(cond(
            "Ready",
            ready,
            Some(if completed {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ));
        conditions.push(cond(
            "ContainersReady",
            ready,
            Some(if completed {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
        ));
        let ip = self.pod_ip().to_string();
        let host_ip = self.shared.network.gateway().to_string();
        PodStatus {
            phase: Some(phase.to_owned()),
            message: self.setup_error.clone(),
            reason: self.setup_error.as_ref().map(|_| "SetupFailed".to_owned()),
            host_ip: Some(host_ip.clone()),
            host_ips: Some(vec![HostIP { ip: host_ip }]),
            pod_ip: (self.net.is_some() || self.host_network).then(|| ip.clone()),
            pod_ips: (self.net.is_some() || self.host_network).then(|| vec![PodIP { ip }]),
            start_time: Some(Time(self.start_time)),
            conditions: Some(conditions),
            container_statuses: Some(mains),
            init_container_statuses: (!inits.is_empty()).then_some(inits),
            ..Default::default()
        }
    }

    /// Patches the status when it differs from what was last written.
    async fn write_status(&mut self) {
        let status = self.status();
        let Ok(value) = serde_json::to_value(&status) else {
            return;
        };
        // Transition times change on every call; compare without them.
        let comparable = strip_times(value.clone());
        if self.last_status.as_ref() == Some(&comparable) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.shared.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let patch = serde_json::json!({ "status": value });
        match api
            .patch_status(
                self.pod.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(updated) => {
                self.pod.status = updated.status;
                self.last_status = Some(comparable);
            }
            Err(e) => debug!(pod = ?self.pod.metadata.name, "status update: {e}"),
        }
    }

    /// Stops every process: containers first (SIGTERM, then SIGKILL after the
    /// grace period), then sidecars, as the kubelet orders them.
    async fn terminate(&mut self) {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .clamp(0, 30) as u64;
        for kinds in [[Kind::Main, Kind::Init], [Kind::Sidecar, Kind::Sidecar]] {
            let pids: Vec<u32> = self
                .ctrs
                .iter()
                .filter(|c| kinds.contains(&c.kind))
                .filter_map(Ctr::pid)
                .collect();
            for &pid in &pids {
                signal_group(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(grace);
            while self
                .ctrs
                .iter()
                .any(|c| kinds.contains(&c.kind) && c.running())
                && Instant::now() < deadline
            {
                match tokio::time::timeout_at(deadline.into(), self.exits.join_next()).await {
                    Ok(Some(Ok(exit))) => self.on_exit(exit),
                    _ => break,
                }
                for c in &mut self.ctrs {
                    c.next_start = None;
                }
            }
            for &pid in &pids {
                signal_group(pid, libc::SIGKILL);
            }
        }
        self.exits.shutdown().await;
        for c in &mut self.ctrs {
            if let Some(pid) = c.pid() {
                self.shared.track_group(pid, false);
            }
            if let Some(p) = c.probes.take() {
                p.abort();
            }
        }
    }

    fn cleanup(&mut self) {
        self.shared
            .services
            .remove_pod(self.pod.metadata.uid.as_deref().unwrap_or_default());
        if let Some(net) = self.net.take() {
            self.shared.network.remove_pod(&net);
        }
        if let Ok(mut info) = self.info.lock() {
            *info = PodInfo::default();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn terminated(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(Time(t.started)),
        finished_at: Some(Time(t.finished)),
        ..Default::default()
    }
}

fn strip_times(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(conds) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    v
}

/// Runs a container's probes until aborted: startup first, then readiness
/// and liveness side by side, each on its own period.
async fn probe_loop(
    c: Container,
    generation: u64,
    ip: IpAddr,
    exec: ProcessSpec,
    tx: mpsc::Sender<ProbeResult>,
) {
    let send = |kind: ProbeKind, r: Result<(), String>| {
        let tx = tx.clone();
        let name = c.name.clone();
        async move {
            let (ok, detail) = match r {
                Ok(()) => (true, String::new()),
                Err(e) => (false, e),
            };
            let _ = tx
                .send(ProbeResult {
                    container: name,
                    generation,
                    kind,
                    ok,
                    detail,
                })
                .await;
        }
    };
    let run_exec = |argv: Vec<String>| {
        let exec = exec.clone();
        async move { exec_status(&exec, argv).await }
    };
    if let Some(p) = &c.startup_probe {
        let t = probe::Timing::of(p);
        tokio::time::sleep(t.initial_delay).await;
        let mut failures = 0;
        loop {
            let r = probe::run(p, &c, ip, run_exec).await;
            let ok = r.is_ok();
            if ok {
                send(ProbeKind::Startup, r).await;
                break;
            }
            failures += 1;
            if failures >= t.failure_threshold {
                send(ProbeKind::Startup, r).await;
                return;
            }
            tokio::time::sleep(t.period).await;
        }
    }
    let periodic = |probe: Option<k8s_openapi::api::core::v1::Probe>, kind: fn() -> ProbeKind| {
        let c = c.clone();
        let send = &send;
        async move {
            let Some(p) = probe else { return };
            let t = probe::Timing::of(&p);
            tokio::time::sleep(t.initial_delay).await;
            loop {
                let r = probe::run(&p, &c, ip, run_exec).await;
                send(kind(), r).await;
                tokio::time::sleep(t.period).await;
            }
        }
    };
    tokio::join!(
        periodic(c.readiness_probe.clone(), || ProbeKind::Readiness),
        periodic(c.liveness_probe.clone(), || ProbeKind::Liveness),
    );
}

/// Runs `argv` in a container's context and returns its exit code.
async fn exec_status(context: &ProcessSpec, argv: Vec<String>) -> Result<i32, String> {
    let out = exec(context, argv, None).await?;
    Ok(out.code)
}

/// The result of a command run in a pod.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Exit code (128 + signal when killed).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `argv` with `context`'s namespaces, mounts and environment; killed
/// after `timeout` (default 60 s).
pub async fn exec(
    context: &ProcessSpec,
    argv: Vec<String>,
    timeout: Option<Duration>,
) -> Result<ExecOutput, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("exec: empty command".into());
    };
    let spec = ProcessSpec {
        program: program.into(),
        args: args.to_vec(),
        ..context.clone()
    };
    let cmd = spec.command(Stdio::piped(), Stdio::piped())?;
    let mut cmd = cmd;
    let child = cmd.spawn().map_err(|e| format!("exec {program}: {e}"))?;
    let pid = child.id();
    let waited = tokio::time::timeout(
        timeout.unwrap_or(Duration::from_secs(60)),
        child.wait_with_output(),
    )
    .await;
    match waited {
        Ok(Ok(out)) => {
            use std::os::unix::process::ExitStatusExt;
            Ok(ExecOutput {
                code: out
                    .status
                    .code()
                    .unwrap_or(128 + out.status.signal().unwrap_or(0)),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
        Ok(Err(e)) => Err(format!("exec {program}: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                signal_group(pid, libc::SIGKILL);
            }
            Err(format!("exec {program}: timed out"))
        }
    }
}

/// Pods by uid, as the agent tracks them.
pub type PodMap = HashMap<String, PodHandle>;

/// The agent's handle on a pod task.
#[derive(Debug)]
pub struct PodHandle {
    /// Latest object; `None` when it is gone from the apiserver.
    pub tx: watch::Sender<Option<Pod>>,
    /// Namespace and name.
    pub key: (String, String),
    /// Shared facts about the pod.
    pub info: Arc<std::sync::Mutex<PodInfo>>,
    /// The task.
    pub task: tokio::task::JoinHandle<()>,
}
