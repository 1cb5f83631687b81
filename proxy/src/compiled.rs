//! A validated [`Config`] turned into what the hot path reads: route tables,
//! weighted splits, endpoint load state and telemetry cells, all resolved to
//! indices. A new config is compiled off the hot path and swapped in whole.

use crate::filters::CompiledFilters;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::authz::{Authenticator, JWT_RULES_PATH, Policies};
use crate::balance::{Endpoint, Split};
use crate::config::{
    Backend, Config, Listener, ListenerProtocol, MtlsMode, Route, UpstreamProtocol, WeightedBackend,
};
use crate::identity::MeshIdentity;
use crate::pool::Target;
use crate::route::{HostMatcher, Matcher};
use crate::telemetry::{Cell, CellKey, Telemetry};

/// The running configuration.
#[derive(Debug)]
pub struct Compiled {
    /// The document it was compiled from (served on `/config`).
    pub config: Config,
    /// Version label (a snapshot version, or a counter for static reloads).
    pub version: String,
    /// Listeners, in document order.
    pub listeners: Vec<Arc<CompiledListener>>,
    /// Backends, in document order (then the inbound side's own).
    pub backends: Vec<Arc<CompiledBackend>>,
    /// Sidecars: the inbound side.
    pub inbound: Option<CompiledInbound>,
    /// Sidecars: intercepted TCP carried over mTLS.
    pub mesh_tcp: CompiledMeshTcp,
}

/// [`crate::config::MeshTcp`], ready for lookups on every intercepted
/// connection.
#[derive(Debug, Default)]
pub struct CompiledMeshTcp {
    /// Opaque Service ports: the backend and the telemetry cell.
    pub services: HashMap<SocketAddr, (usize, Arc<Cell>)>,
    /// Pods behind a sidecar: the identity each must present.
    pub workloads: HashMap<std::net::IpAddr, Arc<str>>,
}

impl Compiled {
    /// A listener by name: a bound one, or an inbound port's.
    pub fn listener(&self, name: &str) -> Option<&Arc<CompiledListener>> {
        self.listeners
            .iter()
            .find(|l| &*l.name == name)
            .or_else(|| {
                self.inbound
                    .as_ref()?
                    .ports
                    .values()
                    .find(|l| &*l.name == name)
            })
    }
}

/// A sidecar's inbound side: one unbound listener per workload port (their
/// routes forward to `127.0.0.1:<port>`), the mTLS mode and the policies.
#[derive(Debug)]
pub struct CompiledInbound {
    /// mTLS mode.
    pub mode: MtlsMode,
    /// Per workload port.
    pub ports: HashMap<u16, Arc<CompiledListener>>,
    /// The policies selecting this workload.
    pub policies: Arc<Policies>,
    /// The JWT issuers it trusts.
    pub authn: Arc<Authenticator>,
}

/// A backend, ready to be balanced across.
#[derive(Debug)]
pub struct CompiledBackend {
    /// Its name.
    pub name: Arc<str>,
    /// Upstream protocol.
    pub protocol: UpstreamProtocol,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Endpoints with their load state (kept across reloads).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Answer locally with this status instead of forwarding.
    pub respond: Option<http::StatusCode>,
    /// Endpoints behind a sidecar, with the identity each must present.
    pub mesh: HashMap<SocketAddr, Arc<str>>,
}

impl CompiledBackend {
    /// How to reach endpoint `addr`: over mTLS, expecting its sidecar's
    /// identity, when it has one and this proxy holds a mesh certificate;
    /// in plaintext otherwise.
    pub fn target<'a>(&'a self, addr: SocketAddr, identity: &'a Arc<MeshIdentity>) -> Target<'a> {
        let mesh = self
            .mesh
            .get(&addr)
            .filter(|_| identity.has_leaf())
            .map(|id| (identity, id));
        Target { addr, mesh }
    }
}

/// A listener with its routes.
#[derive(Debug)]
pub struct CompiledListener {
    /// Its name.
    pub name: Arc<str>,
    /// Where it listens.
    pub address: SocketAddr,
    /// HTTP or TCP.
    pub protocol: ListenerProtocol,
    /// HTTP routes in order.
    pub routes: Vec<CompiledRoute>,
    /// TCP: the weighted split, and a cell per backend (by position in `tcp_cells`).
    pub tcp_split: Split,
    /// TCP: telemetry per backend index.
    pub tcp_cells: Vec<(usize, Arc<Cell>)>,
    /// Requests that matched no route (or were malformed).
    pub unrouted: Arc<Cell>,
    /// HTTPS: the TLS it terminates (certificates by SNI).
    pub tls: Option<Termination>,
}

/// TLS a listener terminates; `None` inside when its certificates did not
/// load (validation refuses such configs, so only if that were skipped):
/// then every connection is refused rather than served in plaintext.
#[derive(Debug, Clone)]
pub struct Termination(pub Option<Arc<rustls::ServerConfig>>);

/// An HTTP route.
#[derive(Debug)]
pub struct CompiledRoute {
    /// Its name.
    pub name: Arc<str>,
    /// Hosts it answers for.
    pub hosts: HostMatcher,
    /// Request matches (any).
    pub matchers: Vec<Matcher>,
    /// Backends by weight.
    pub split: Split,
    /// Response-headers deadline over all attempts.
    pub timeout: Option<Duration>,
    /// Response-headers deadline of each attempt.
    pub attempt_timeout: Option<Duration>,
    /// Retry policy.
    pub retry: Option<RetryPolicy>,
    /// Telemetry per backend index.
    pub cells: Vec<(usize, Arc<Cell>)>,
    /// Telemetry when no backend could be chosen (all weights 0), and of
    /// redirects.
    pub no_backend: Arc<Cell>,
    /// Header changes, redirect, rewrites.
    pub filters: CompiledFilters,
    /// Backends that get copies of the route's requests.
    pub mirrors: Vec<CompiledMirror>,
}

/// A mirror of a route: copies go to backend `backend`, their outcomes
/// counted in `cell` (so that a canary's errors under mirrored traffic
/// reach its analysis).
#[derive(Debug)]
pub struct CompiledMirror {
    /// Index into [`Compiled::backends`].
    pub backend: usize,
    /// Percentage of requests copied.
    pub percent: u32,
    /// The mirror backend's telemetry on this route.
    pub cell: Arc<Cell>,
}

impl CompiledRoute {
    /// The cell of backend `idx`.
    pub fn cell(&self, idx: usize) -> &Arc<Cell> {
        self.cells
            .iter()
            .find(|(i, _)| *i == idx)
            .map(|(_, c)| c)
            .unwrap_or(&self.no_backend)
    }
}

/// Bounded retries with a budget.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub attempts: u32,
    /// Shared budget of this route.
    pub budget: Arc<RetryBudget>,
}

/// Retries earn a fraction of a token per request and spend one token each,
/// so that retries stay a bounded share of traffic (as linkerd's budgets).
#[derive(Debug)]
pub struct RetryBudget {
    /// Tokens in thousandths.
    milli: AtomicI64,
    earn_milli: i64,
}

/// At most this many retries can be banked (in thousandths).
const BUDGET_CAP_MILLI: i64 = 10_000;

impl RetryBudget {
    pub(crate) fn new(ratio: f64) -> RetryBudget {
        // Start with a few tokens so that the first failures can be retried.
        RetryBudget {
            milli: AtomicI64::new(3_000),
            earn_milli: (ratio * 1000.0) as i64,
        }
    }

    /// A request started: earn.
    pub fn deposit(&self) {
        let cur = self.milli.load(Relaxed);
        if cur < BUDGET_CAP_MILLI {
            self.milli.fetch_add(self.earn_milli, Relaxed);
        }
    }

    /// Takes a token for a retry; false when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let prev = self.milli.fetch_sub(1000, Relaxed);
        if prev >= 1000 {
            true
        } else {
            self.milli.fetch_add(1000, Relaxed);
            false
        }
    }
}

/// Endpoint load state shared across reloads, keyed by backend and address.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    map: Mutex<HashMap<(String, SocketAddr), Weak<Endpoint>>>,
}

impl EndpointRegistry {
    fn get(&self, backend: &str, addr: SocketAddr) -> Arc<Endpoint> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        let key = (backend.to_owned(), addr);
        if let Some(e) = map.get(&key).and_then(Weak::upgrade) {
            return e;
        }
        let e = Arc::new(Endpoint::new(addr));
        map.insert(key, Arc::downgrade(&e));
        e
    }
}

/// What the names of the inbound side's listeners and backends start with.
pub const INBOUND_PREFIX: &str = "inbound|";

/// The name of the unbound listener and backend of inbound port `port`.
pub fn inbound_name(port: u16) -> String {
    format!("{INBOUND_PREFIX}{port}")
}

/// The backends and listeners the inbound side forwards with: for each
/// workload port, `127.0.0.1:<port>`.
fn inbound_parts(config: &Config) -> (Vec<Backend>, Vec<Listener>) {
    let Some(inb) = &config.inbound else {
        return (vec![], vec![]);
    };
    inb.ports
        .iter()
        .map(|p| {
            let name = inbound_name(p.port);
            let backend = Backend {
                name: name.clone(),
                endpoints: vec![SocketAddr::from(([127, 0, 0, 1], p.port))],
                protocol: UpstreamProtocol::Auto,
                revision: None,
                connect_timeout: Duration::from_secs(2),
                service: None,
                respond: None,
                mesh: Default::default(),
            };
            let to = vec![WeightedBackend {
                name: name.clone(),
                weight: 1,
            }];
            let (routes, backends) = match p.protocol {
                ListenerProtocol::Http => (
                    vec![Route {
                        name: "inbound".into(),
                        hosts: vec![],
                        matches: vec![],
                        backends: to,
                        timeout: None,
                        attempt_timeout: None,
                        retries: None,
                        mirrors: vec![],
                        filters: Default::default(),
                    }],
                    vec![],
                ),
                ListenerProtocol::Tcp => (vec![], to),
            };
            let listener = Listener {
                name,
                address: SocketAddr::from(([0, 0, 0, 0], crate::config::INBOUND_PORT)),
                protocol: p.protocol,
                routes,
                backends,
                tls: None,
            };
            (backend, listener)
        })
        .unzip()
}

/// Compiles a validated config.
pub fn compile(
    config: Config,
    version: String,
    telemetry: &Telemetry,
    registry: &EndpointRegistry,
) -> Compiled {
    let (inbound_backends, inbound_listeners) = inbound_parts(&config);
    let all_backends: Vec<&Backend> = config.backends.iter().chain(&inbound_backends).collect();
    let index: HashMap<&str, usize> = all_backends
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.as_str(), i))
        .collect();
    let backends: Vec<Arc<CompiledBackend>> = all_backends
        .iter()
        .map(|b| {
            Arc::new(CompiledBackend {
                name: b.name.as_str().into(),
                protocol: b.protocol,
                connect_timeout: b.connect_timeout,
                endpoints: b
                    .endpoints
                    .iter()
                    .map(|a| registry.get(&b.name, *a))
                    .collect(),
                respond: b.respond.and_then(|s| http::StatusCode::from_u16(s).ok()),
                mesh: b
                    .mesh
                    .iter()
                    .map(|(a, id)| (*a, Arc::from(id.as_str())))
                    .collect(),
            })
        })
        .collect();
    let revision =
        |i: usize| -> Arc<str> { all_backends[i].revision.as_deref().unwrap_or("").into() };
    let empty: Arc<str> = "".into();
    let compile_listener = |l: &Listener| {
        let lname: Arc<str> = l.name.as_str().into();
        let cell = |route: &Arc<str>, backend: Option<usize>| {
            telemetry.cell(CellKey {
                listener: lname.clone(),
                route: route.clone(),
                backend: backend
                    .map(|i| backends[i].name.clone())
                    .unwrap_or_else(|| empty.clone()),
                revision: backend.map(&revision).unwrap_or_else(|| empty.clone()),
            })
        };
        let weighted = |refs: &[WeightedBackend]| {
            let pairs: Vec<(usize, u32)> = refs
                .iter()
                .filter_map(|wb| index.get(wb.name.as_str()).map(|i| (*i, wb.weight)))
                .collect();
            pairs
        };
        let routes = l
            .routes
            .iter()
            .map(|r| {
                let rname: Arc<str> = r.name.as_str().into();
                let pairs = weighted(&r.backends);
                CompiledRoute {
                    hosts: HostMatcher::new(&r.hosts),
                    matchers: r.matches.iter().map(Matcher::new).collect(),
                    split: Split::new(pairs.iter().copied()),
                    timeout: r.timeout,
                    attempt_timeout: r.attempt_timeout,
                    retry: r.retries.as_ref().map(|rt| RetryPolicy {
                        attempts: rt.attempts,
                        budget: Arc::new(RetryBudget::new(rt.budget)),
                    }),
                    cells: pairs
                        .iter()
                        .map(|(i, _)| (*i, cell(&rname, Some(*i))))
                        .collect(),
                    no_backend: cell(&rname, None),
                    filters: CompiledFilters::new(&r.filters),
                    mirrors: r
                        .mirrors
                        .iter()
                        .filter_map(|m| {
                            let i = *index.get(m.backend.as_str())?;
                            Some(CompiledMirror {
                                backend: i,
                                percent: m.percent.min(100),
                                cell: cell(&rname, Some(i)),
                            })
                        })
                        .collect(),
                    name: rname,
                }
            })
            .collect();
        let tcp_pairs = weighted(&l.backends);
        Arc::new(CompiledListener {
            address: l.address,
            protocol: l.protocol,
            routes,
            tcp_split: Split::new(tcp_pairs.iter().copied()),
            tcp_cells: tcp_pairs
                .iter()
                .map(|(i, _)| (*i, cell(&empty, Some(*i))))
                .collect(),
            unrouted: cell(&empty, None),
            // Validation built this already; should that ever be skipped,
            // a listener whose certificates fail has none and refuses
            // every handshake.
            tls: l.tls.as_ref().map(|t| {
                Termination(sluice_identity::serving::listener_config(&t.certificates).ok())
            }),
            name: lname,
        })
    };
    let listeners = config.listeners.iter().map(&compile_listener).collect();
    let inbound = config.inbound.as_ref().map(|inb| {
        // Validation compiled these already; should that ever be skipped,
        // fail closed.
        let (policies, authn) = match (
            Policies::compile(&inb.policies),
            Authenticator::compile(&inb.jwt_rules, JWT_RULES_PATH),
        ) {
            (Ok(p), Ok(a)) => (p, a),
            _ => (Policies::deny_all(), Authenticator::default()),
        };
        CompiledInbound {
            mode: inb.mode,
            ports: inb
                .ports
                .iter()
                .zip(&inbound_listeners)
                .map(|(p, l)| (p.port, compile_listener(l)))
                .collect(),
            policies: Arc::new(policies),
            authn: Arc::new(authn),
        }
    });
    let mesh_tcp = CompiledMeshTcp {
        services: config
            .mesh_tcp
            .services
            .iter()
            .filter_map(|(addr, name)| {
                let i = *index.get(name.as_str())?;
                let cell = telemetry.cell(CellKey {
                    listener: MESH_TCP_LISTENER.into(),
                    route: empty.clone(),
                    backend: backends[i].name.clone(),
                    revision: revision(i),
                });
                Some((*addr, (i, cell)))
            })
            .collect(),
        workloads: config
            .mesh_tcp
            .workloads
            .iter()
            .flat_map(|(id, ips)| {
                let id: Arc<str> = Arc::from(id.as_str());
                ips.iter().map(move |ip| (*ip, id.clone()))
            })
            .collect(),
    };
    Compiled {
        config,
        version,
        listeners,
        backends,
        inbound,
        mesh_tcp,
    }
}

/// The listener name telemetry gives opaque Service connections a sidecar
/// carries over mTLS.
pub const MESH_TCP_LISTENER: &str = "outbound-tcp";
