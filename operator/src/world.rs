//! Observed state: one kube-runtime reflector per kind the mesh reads, and
//! the loop that turns every change into snapshots (rate-limited, computed
//! once, shared by all proxies of an audience).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use futures::StreamExt;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::httproutes::HttpRoute;
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, broadcast, watch};
use tracing::{info, warn};

use crate::mesh::{self, MeshInput, MeshOutput, MeshSettings};
use crate::metrics::Metrics;
use crate::push::{Registry, SnapshotSet, Snapshots};
use crate::stored::Stored;
use sluice_crds::{AuthorizationPolicy, RequestAuthentication};

/// How many moves a slow receiver of [`World::moves`] may be behind before
/// it loses the oldest.
const MOVES_HELD: usize = 256;

/// An object of a kind a Rollout names whose translated input (its spec)
/// moved, or that was deleted.
#[derive(Clone, Debug)]
pub enum Moved {
    /// An HTTPRoute (a Rollout's `trafficRouting.httpRoutes`).
    Route(ObjectRef<HttpRoute>),
    /// A Service (a Rollout's stable, canary, active or preview Service).
    Service(ObjectRef<Service>),
}

/// The reflectors' stores.
#[derive(Clone)]
pub struct World {
    classes: Option<Store<GatewayClass>>,
    gateways: Option<Store<Gateway>>,
    routes: Option<Store<HttpRoute>>,
    grants: Option<Store<ReferenceGrant>>,
    /// Only `kubernetes.io/tls` Secrets, and only with the Gateway API: the
    /// certificates HTTPS listeners name.
    tls_secrets: Option<Store<Secret>>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    policies: Option<Store<AuthorizationPolicy>>,
    authentications: Option<Store<RequestAuthentication>>,
    /// The documents of the RequestAuthentications' `jwksUri`s.
    jwks: crate::jwks::Documents,
    mesh: Arc<ArcSwap<MeshSettings>>,
    changed: Arc<Notify>,
    /// Routes and Services that moved, told once their store holds the
    /// change (see [`World::moves`]).
    moves: broadcast::Sender<Moved>,
    /// True once every store has listed. A store's own readiness wakes
    /// only the last task that waited on it, so one task waits on the
    /// stores and every other waiter watches this.
    synced: watch::Receiver<bool>,
}

fn reflect<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
where
    K: Stored + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    reflect_with(api, watcher::Config::default(), changed, |_| {})
}

/// What a store calls with each object whose input moved: tells `moves`,
/// as `kind` of move. No receiver (no Rollout controller) is not an error.
fn telling<K>(
    moves: &broadcast::Sender<Moved>,
    kind: fn(ObjectRef<K>) -> Moved,
) -> impl Fn(&K) + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + 'static,
{
    let moves = moves.clone();
    move |object| {
        let _ = moves.send(kind(ObjectRef::from_obj(object)));
    }
}

/// [`reflect`] with a selection (fields or labels) of what is watched, and
/// `moved` called with each object applied or deleted whose input moved,
/// after the store took it in.
fn reflect_with<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    moved: impl Fn(&K) + Send + 'static,
) -> Store<K>
where
    K: Stored + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    // Slimmed before the store keeps the object (after the reflector, what
    // is dropped would only leave the stream, not the store).
    let events = watcher(api, config).default_backoff().modify(K::slim);
    let stream = reflector(writer, events);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut inputs = MeshInputs::default();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if inputs.moved(&event) {
                        changed.notify_one();
                        if let watcher::Event::Apply(k) | watcher::Event::Delete(k) = &event {
                            moved(k);
                        }
                    }
                }
                Err(e) => warn!(kind = %K::kind(&Default::default()), "watch: {e}"),
            }
        }
    });
    reader
}

/// Per object of one kind, the digest of what the translation reads of it
/// ([`Stored::mesh_input`]): an event that leaves it as it was (the
/// operator's own status write) wakes no translation.
#[derive(Default)]
struct MeshInputs {
    by_object: HashMap<(Option<String>, String), u64>,
}

impl MeshInputs {
    /// Records `event`; whether the translation's input moved.
    fn moved<K: Stored>(&mut self, event: &watcher::Event<K>) -> bool {
        let key = |k: &K| {
            (
                k.meta().namespace.clone(),
                k.meta().name.clone().unwrap_or_default(),
            )
        };
        match event {
            watcher::Event::Apply(k) => match k.mesh_input() {
                Some(digest) => self.by_object.insert(key(k), digest) != Some(digest),
                None => true,
            },
            watcher::Event::Delete(k) => {
                self.by_object.remove(&key(k));
                true
            }
            // A relist replaces the store when it is done: the digests too.
            watcher::Event::Init => {
                self.by_object.clear();
                false
            }
            watcher::Event::InitApply(k) => {
                if let Some(digest) = k.mesh_input() {
                    self.by_object.insert(key(k), digest);
                }
                false
            }
            watcher::Event::InitDone => true,
        }
    }
}

impl World {
    /// Starts the reflectors. Gateway API kinds and AuthorizationPolicies
    /// are watched only when their CRDs are installed. `mesh` holds the
    /// mesh-wide settings (see [`World::set_mesh`]).
    pub async fn start(client: &Client, mesh: MeshSettings) -> World {
        let changed = Arc::new(Notify::new());
        let gateway_api = kube::discovery::group(client, "gateway.networking.k8s.io")
            .await
            .is_ok();
        if !gateway_api {
            warn!("the Gateway API CRDs are not installed: only mesh (sidecar) routing is served");
        }
        let sluice_kinds: Vec<String> = kube::discovery::group(client, "sluice.dev")
            .await
            .map(|g| {
                g.recommended_resources()
                    .into_iter()
                    .map(|(r, _)| r.kind)
                    .collect()
            })
            .unwrap_or_default();
        let installed = |kind: &str| sluice_kinds.iter().any(|k| k == kind);
        let policies = installed("AuthorizationPolicy");
        if !policies {
            warn!("the AuthorizationPolicy CRD is not installed: no authorization is pushed");
        }
        let authentications = installed("RequestAuthentication");
        if !authentications {
            warn!("the RequestAuthentication CRD is not installed: no JWT rules are pushed");
        }
        let opt = |on: bool| on.then_some(());
        let (synced_tx, synced) = watch::channel(false);
        let (moves, _) = broadcast::channel(MOVES_HELD);
        let world = World {
            classes: opt(gateway_api).map(|_| reflect(Api::all(client.clone()), changed.clone())),
            gateways: opt(gateway_api).map(|_| reflect(Api::all(client.clone()), changed.clone())),
            routes: opt(gateway_api).map(|_| {
                let all = watcher::Config::default();
                let moved = telling(&moves, Moved::Route);
                reflect_with(Api::all(client.clone()), all, changed.clone(), moved)
            }),
            grants: opt(gateway_api).map(|_| reflect(Api::all(client.clone()), changed.clone())),
            tls_secrets: opt(gateway_api).map(|_| {
                let tls_only = watcher::Config::default().fields("type=kubernetes.io/tls");
                reflect_with(Api::all(client.clone()), tls_only, changed.clone(), |_| {})
            }),
            services: reflect_with(
                Api::all(client.clone()),
                watcher::Config::default(),
                changed.clone(),
                telling(&moves, Moved::Service),
            ),
            slices: reflect(Api::all(client.clone()), changed.clone()),
            pods: reflect(Api::all(client.clone()), changed.clone()),
            namespaces: reflect(Api::all(client.clone()), changed.clone()),
            policies: opt(policies).map(|_| reflect(Api::all(client.clone()), changed.clone())),
            authentications: opt(authentications)
                .map(|_| reflect(Api::all(client.clone()), changed.clone())),
            jwks: Default::default(),
            mesh: Arc::new(ArcSwap::from_pointee(mesh)),
            changed,
            moves,
            synced,
        };
        if let Some(store) = world.authentications.clone() {
            tokio::spawn(crate::jwks::run(
                store,
                world.jwks.clone(),
                world.changed.clone(),
            ));
        }
        let stores = world.clone();
        tokio::spawn(async move {
            stores.wait_for_stores().await;
            synced_tx.send_replace(true);
        });
        world
    }

    /// A world that holds `pods` and nothing else, without a cluster: for
    /// tests of what reads pods (the checks of proxies' hellos).
    #[cfg(test)]
    pub fn with_pods(pods: Vec<Pod>, mesh: MeshSettings) -> World {
        fn empty<K>() -> Store<K>
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            reflector::store().0
        }
        let (store, mut writer) = reflector::store();
        for p in pods {
            writer.apply_watcher_event(&watcher::Event::Apply(p));
        }
        World {
            classes: None,
            gateways: None,
            routes: None,
            grants: None,
            tls_secrets: None,
            services: empty(),
            slices: empty(),
            pods: store,
            namespaces: empty(),
            policies: None,
            authentications: None,
            jwks: Default::default(),
            mesh: Arc::new(ArcSwap::from_pointee(mesh)),
            changed: Arc::new(Notify::new()),
            moves: broadcast::channel(1).0,
            synced: watch::channel(true).1,
        }
    }

    /// HTTPRoutes and Services whose translated input (their spec) moved or
    /// that were deleted, each told after its store holds the change: a
    /// Rollout naming one is decided again at once, and reads it as it is.
    /// A receiver that falls more than a few hundred behind loses the
    /// oldest, and a change the watch missed while it was down comes back
    /// with the re-list, untold: for those the Rollouts' requeue remains.
    pub fn moves(&self) -> broadcast::Receiver<Moved> {
        self.moves.subscribe()
    }

    /// Waits until every store has listed once; any number of tasks may.
    pub async fn ready(&self) {
        let mut synced = self.synced.clone();
        // An error means the waiting task ended, which it does only once
        // the stores are ready.
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Waits on each store's own readiness: from one task only.
    async fn wait_for_stores(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        if let Some(s) = &self.policies {
            let _ = s.wait_until_ready().await;
        }
        if let Some(s) = &self.authentications {
            let _ = s.wait_until_ready().await;
        }
        if let Some(s) = &self.classes {
            let _ = s.wait_until_ready().await;
        }
        if let Some(s) = &self.gateways {
            let _ = s.wait_until_ready().await;
        }
        if let Some(s) = &self.routes {
            let _ = s.wait_until_ready().await;
        }
        if let Some(s) = &self.grants {
            let _ = s.wait_until_ready().await;
        }
        if let Some(s) = &self.tls_secrets {
            let _ = s.wait_until_ready().await;
        }
    }

    /// The state now.
    pub fn input(&self, registry: &Registry) -> MeshInput {
        MeshInput {
            classes: self.classes.as_ref().map(Store::state).unwrap_or_default(),
            gateways: self.gateways.as_ref().map(Store::state).unwrap_or_default(),
            routes: self.routes.as_ref().map(Store::state).unwrap_or_default(),
            services: self.services.state(),
            slices: self.slices.state(),
            pods: self.pods.state(),
            namespaces: self.namespaces.state(),
            policies: self.policies.as_ref().map(Store::state).unwrap_or_default(),
            authentications: self
                .authentications
                .as_ref()
                .map(Store::state)
                .unwrap_or_default(),
            jwks: self.jwks.load_full(),
            grants: self.grants.as_ref().map(Store::state).unwrap_or_default(),
            tls_secrets: self
                .tls_secrets
                .as_ref()
                .map(Store::state)
                .unwrap_or_default(),
            sidecar_pods: registry.sidecar_pods(),
            mesh: (**self.mesh.load()).clone(),
        }
    }

    /// The mesh-wide settings.
    pub fn mesh(&self) -> Arc<MeshSettings> {
        self.mesh.load_full()
    }

    /// Replaces the mesh-wide settings (e.g. new CA roots) and recomputes.
    pub fn set_mesh(&self, mesh: MeshSettings) {
        self.mesh.store(Arc::new(mesh));
        self.changed.notify_one();
    }

    /// A Pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// The names of the namespaces that are not being deleted.
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces
            .state()
            .iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .map(|n| n.name_any())
            .collect()
    }

    /// The current HttpRoute, Gateway and GatewayClass, for status diffs.
    pub fn route(&self, namespace: &str, name: &str) -> Option<Arc<HttpRoute>> {
        self.routes
            .as_ref()?
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// The names of the HTTPRoutes in `namespace` labelled `key=value`
    /// (a scan of every route: for the rare reader).
    pub fn routes_labelled(&self, namespace: &str, key: &str, value: &str) -> Vec<String> {
        let Some(routes) = &self.routes else {
            return Vec::new();
        };
        routes
            .state()
            .iter()
            .filter(|r| {
                r.namespace().as_deref() == Some(namespace)
                    && r.labels().get(key).map(String::as_str) == Some(value)
            })
            .map(|r| r.name_any())
            .collect()
    }

    /// An AuthorizationPolicy by namespace and name.
    pub fn policy(&self, namespace: &str, name: &str) -> Option<Arc<AuthorizationPolicy>> {
        self.policies
            .as_ref()?
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// A RequestAuthentication by namespace and name.
    pub fn authentication(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<RequestAuthentication>> {
        self.authentications
            .as_ref()?
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// See [`World::route`].
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<Arc<Gateway>> {
        self.gateways
            .as_ref()?
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// A Service by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services
            .get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// See [`World::route`].
    pub fn class(&self, name: &str) -> Option<Arc<GatewayClass>> {
        self.classes.as_ref()?.get(&reflector::ObjectRef::new(name))
    }
}

/// Recomputes and publishes snapshots on every change; sends each
/// translation to the status writer.
pub async fn run(
    world: World,
    registry: Arc<Registry>,
    snapshots: Snapshots,
    metrics: Arc<Metrics>,
    output: watch::Sender<Arc<MeshOutput>>,
) {
    world.ready().await;
    info!("caches synced; serving snapshots");
    let mut sidecar_set = registry.subscribe_sidecar_set();
    loop {
        let start = Instant::now();
        sidecar_set.borrow_and_update();
        let input = world.input(&registry);
        let out = mesh::translate(&input);
        let published = snapshots.publish(SnapshotSet::build(
            &out.configs,
            &out.sidecars,
            &snapshots.current(),
        ));
        metrics
            .compute_seconds
            .observe(start.elapsed().as_secs_f64());
        if published {
            info!(elapsed = ?start.elapsed(), "published new snapshots");
        }
        output.send_replace(Arc::new(out));
        let spent = start.elapsed();
        // Wait for a watched change, or a sidecar pod's proxy (dis)connecting.
        tokio::select! {
            _ = world.changed.notified() => {}
            r = sidecar_set.changed() => if r.is_err() { return },
        }
        // The next translation starts no sooner than as long after this one
        // ended as it took: a stream of changes (thousands of objects being
        // written) then costs at most half a core and each translation takes
        // in more of them. A change after a quiet spell is translated at
        // once, after one yield so that events already delivered are applied:
        // a fixed debounce would add its wait to every change's way to the
        // proxies, and the part of a burst that arrives during a translation
        // is taken in by the next one.
        let earliest = start + spent * 2;
        if Instant::now() < earliest {
            tokio::time::sleep_until(earliest.into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_api::httproutes::{HttpRouteSpec, HttpRouteStatus};
    use k8s_openapi::api::core::v1::Service;

    fn route(generation: i64, accepted: bool) -> HttpRoute {
        let mut r = HttpRoute::new("r", HttpRouteSpec::default());
        r.metadata.namespace = Some("ns".into());
        r.metadata.generation = Some(generation);
        r.status = accepted.then(|| HttpRouteStatus {
            parents: Vec::new(),
        });
        r
    }

    #[test]
    fn the_operator_s_own_status_write_wakes_no_translation() {
        let mut inputs = MeshInputs::default();
        assert!(inputs.moved(&watcher::Event::Apply(route(1, false))));
        assert!(!inputs.moved(&watcher::Event::Apply(route(1, true))));
    }

    #[test]
    fn a_spec_label_or_deletion_change_wakes_one() {
        let mut inputs = MeshInputs::default();
        inputs.moved(&watcher::Event::Apply(route(1, false)));
        assert!(inputs.moved(&watcher::Event::Apply(route(2, false))));
        let mut labelled = route(2, false);
        labelled.metadata.labels = Some([("a".to_owned(), "b".to_owned())].into());
        assert!(inputs.moved(&watcher::Event::Apply(labelled.clone())));
        assert!(inputs.moved(&watcher::Event::Delete(labelled)));
        // Gone from the digests: the same object again is new.
        assert!(inputs.moved(&watcher::Event::Apply(route(2, false))));
    }

    #[test]
    fn kinds_without_a_digest_wake_one_on_every_event() {
        let mut inputs = MeshInputs::default();
        let svc = Service::default();
        assert!(inputs.moved(&watcher::Event::Apply(svc.clone())));
        assert!(inputs.moved(&watcher::Event::Apply(svc)));
        assert!(inputs.by_object.is_empty());
    }

    #[test]
    fn a_relist_wakes_one_when_done_and_forgets_what_it_did_not_list() {
        let mut inputs = MeshInputs::default();
        inputs.moved(&watcher::Event::Apply(route(1, false)));
        assert!(!inputs.moved(&watcher::Event::<HttpRoute>::Init));
        assert!(inputs.by_object.is_empty());
        assert!(!inputs.moved(&watcher::Event::InitApply(route(1, false))));
        assert!(inputs.moved(&watcher::Event::<HttpRoute>::InitDone));
        assert!(!inputs.moved(&watcher::Event::Apply(route(1, true))));
    }
}
