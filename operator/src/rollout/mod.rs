//! The Rollout controller: one ReplicaSet per pod-template revision, traffic
//! moved by weight through HTTPRoutes (ingress and mesh), and the canary
//! judged from the proxies' telemetry, rolled back on its own when it fails.
//!
//! [`phase::decide`] is the whole decision and holds no I/O: [`observe`]
//! reads the world, [`apply`] acts on what the decision says (weights
//! first, so that a rollback takes traffic off the canary before anything
//! else), [`conditions`] derives the conditions from the status.

pub mod analysis;
pub mod apply;
pub mod by_uid;
pub mod canary_routes;
pub mod conditions;
pub mod edit;
pub mod freshness;
pub mod gone;
pub mod lint;
pub mod model;
pub mod named_moves;
pub mod notify;
pub mod observe;
pub mod phase;
pub mod replicas;
pub mod replicasets;
pub mod retry;
pub mod revisions;
pub mod unsettled;
pub mod workload;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use sluice_crds::Rollout;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument, debug, info, warn};

use crate::metrics::Metrics;
use crate::stored::Stored;
use crate::traffic::window::TrafficWindow;
use crate::world::World;

/// The label that carries a pod's revision, as Argo Rollouts names it (the
/// mesh reads it as the telemetry revision).
pub const HASH_LABEL: &str = "rollouts-pod-template-hash";
pub use sluice_crds::rollout::ROLLOUT_LABEL;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A resource did not serialise.
    #[error("serialising: {0}")]
    Json(#[from] serde_json::Error),
    /// The object has no namespace.
    #[error("the Rollout has no namespace")]
    NoNamespace,
}

impl Error {
    /// What went wrong in a line: the API server's own message rather than
    /// its whole status (an Event's note holds at most 1,024 bytes).
    pub fn brief(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(status)) => status.message.clone(),
            other => other.to_string(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    /// Prometheus and web metrics' client.
    http: reqwest::Client,
    /// Where decisions are sent besides Events.
    notifier: notify::Notifier,
    traffic: Arc<TrafficWindow>,
    recorder: Recorder,
    /// `--test-faults`: see [`TEST_FAULT_ANNOTATION`].
    test_faults: bool,
    /// Where reconciles register, so that one stuck is noticed.
    supervisor: crate::health::Supervisor,
    /// The Services and HTTPRoutes a reconcile reads (the mesh's caches).
    world: World,
    /// The Rollouts' ReplicaSets.
    replicasets: replicasets::ReplicaSets,
    /// The versions of each Rollout this process's writes replaced.
    written: freshness::Written,
    /// Requests taken by passes that failed before acting on them.
    unsettled: unsettled::Unsettled,
    /// Failed passes in a row, for the wait before the next.
    retry: retry::Backoff,
    /// Where passes are counted.
    metrics: Arc<Metrics>,
}

impl Context {
    /// Drops what the passes keep for Rollouts that are gone.
    fn forget(&self, gone: &gone::Forget) {
        self.written.forget(gone);
        self.unsettled.forget(gone);
        self.retry.forget(gone);
    }
}

/// How many Rollouts are reconciled at once: a burst (thousands of
/// Rollouts created, or the operator starting) queues rather than opening
/// thousands of API calls at the same time.
const CONCURRENCY: u16 = 16;

/// A reconcile running longer than this is stuck.
const RECONCILE_LIMIT: Duration = Duration::from_secs(60);

/// With `--test-faults`, a Rollout annotated `panic` makes its reconcile
/// panic, `stall` makes it block its thread: the faults the supervisor
/// must notice, for the end-to-end test of supervision.
pub const TEST_FAULT_ANNOTATION: &str = "sluice.dev/test-fault";

/// Runs the controller until the process stops (or idles for good when the
/// Rollout CRD is not installed).
pub async fn run(
    client: Client,
    world: World,
    traffic: Arc<TrafficWindow>,
    supervisor: crate::health::Supervisor,
    notifier: notify::Notifier,
    metrics: Arc<Metrics>,
    test_faults: bool,
) {
    let rollouts: Api<Rollout> = Api::all(client.clone());
    if let Err(e) = rollouts.list(&Default::default()).await {
        warn!("rollouts.sluice.dev is not served ({e}); the Rollout controller is off");
        return std::future::pending().await;
    }
    let replicasets = replicasets::ReplicaSets::default();
    let (touched_tx, touched) = mpsc::channel(1024);
    let (synced_tx, mut synced) = watch::channel(false);
    tokio::spawn(replicasets::watch(
        Api::all(client.clone()),
        replicasets.clone(),
        touched_tx,
        synced_tx,
    ));
    // A reconcile before the caches hold the cluster would see no
    // ReplicaSet and no Service, and act on that.
    world.ready().await;
    if synced.wait_for(|s| *s).await.is_err() {
        return;
    }
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "sluice-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client: client.clone(),
        http: reqwest::Client::new(),
        notifier,
        traffic,
        test_faults,
        supervisor,
        world,
        replicasets,
        written: freshness::Written::default(),
        unsettled: unsettled::Unsettled::default(),
        retry: retry::Backoff::default(),
        metrics,
    });
    info!("Rollout controller started");
    // The controller's own store, trimmed: managed fields are a large share
    // of each Rollout written by server-side apply, and `kubectl apply`
    // keeps a whole copy in an annotation.
    let (store, writer) = reflector::store();
    let records = ctx.clone();
    let mut gone = gone::Gone::default();
    let events = watcher(rollouts, watcher::Config::default())
        .default_backoff()
        .modify(Rollout::slim)
        .inspect_ok(move |e| {
            if let Some(f) = gone.follow(e) {
                records.forget(&f);
            }
        });
    let rollouts = reflector(writer, events).applied_objects();
    let naming_what_moved = named_moves::rollouts_to_decide(ctx.world.moves(), store.clone());
    Controller::for_stream(rollouts, store)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .owns_stream(ReceiverStream::new(touched).map(Ok))
        .reconcile_on(naming_what_moved)
        // Adopted Deployments only: their template is a Rollout's.
        .watches(
            Api::<Deployment>::all(client),
            watcher::Config::default().labels(workload::WORKLOAD_LABEL),
            |d| {
                let rollout = d.labels().get(workload::WORKLOAD_LABEL)?;
                Some(ObjectRef::new(rollout).within(&d.namespace()?))
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!("rollout reconcile: {e}");
            }
        })
        .await;
}

async fn reconcile(rollout: Arc<Rollout>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rollout.namespace().ok_or(Error::NoNamespace)?;
    let _busy = ctx.supervisor.busy(
        format!("reconcile of rollout {ns}/{}", rollout.name_any()),
        RECONCILE_LIMIT,
    );
    if ctx.test_faults {
        match rollout
            .annotations()
            .get(TEST_FAULT_ANNOTATION)
            .map(String::as_str)
        {
            Some("panic") => panic!("test fault on rollout {ns}/{}", rollout.name_any()),
            Some("stall") => std::thread::sleep(Duration::from_secs(3600)),
            _ => {}
        }
    }
    let span = tracing::info_span!("rollout", namespace = %ns, name = %rollout.name_any());
    let start = std::time::Instant::now();
    let result = apply::reconcile(&rollout, &ns, &ctx)
        .instrument(span.clone())
        .await;
    span.in_scope(|| {
        debug!(
            elapsed_ms = start.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "reconciled"
        )
    });
    result
}

/// Retries a failed pass after a wait that grows while it keeps failing
/// (see [`retry`]).
fn error_policy(rollout: Arc<Rollout>, err: &Error, ctx: Arc<Context>) -> Action {
    let wait = ctx.retry.failed(&rollout.uid().unwrap_or_default());
    warn!(
        namespace = rollout.namespace().unwrap_or_default(),
        name = rollout.name_any(),
        "rollout: {err}; retrying in {wait:?}"
    );
    Action::requeue(wait)
}

/// The revision hash of a pod template: stable across restarts and
/// processes (a content hash of its JSON).
pub fn template_hash(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let h = crate::push::snapshots::fnv1a(&bytes);
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// A Go-style duration from the spec (`30s`, `1m30s`); the CRD's CEL rule
/// admits only what parses.
pub fn duration(s: &str) -> Option<Duration> {
    sluice_proto::config::parse_duration(s).ok()
}
