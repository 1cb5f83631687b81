//! The proxy's shared state: the running configuration (swapped atomically),
//! telemetry and endpoint load. One `Proxy` serves every worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::compiled::{Compiled, EndpointRegistry, compile};
use crate::config::Config;
use crate::identity::MeshIdentity;
use crate::listening::{Listening, STARTING_GENERATION};
use crate::telemetry::Telemetry;

/// Shared by the workers, the admin endpoint and the config sources.
#[derive(Debug)]
pub struct Proxy {
    config: ArcSwap<Compiled>,
    /// Counters and cells.
    pub telemetry: Arc<Telemetry>,
    /// The workload certificate and mesh roots (sidecars and gateways).
    pub identity: Arc<MeshIdentity>,
    /// Which config generation each worker's listeners are bound for.
    pub listening: Listening,
    registry: EndpointRegistry,
    /// The config generation, bumped on every applied config; workers
    /// reconcile listeners on it.
    changes: watch::Sender<u64>,
    /// Static reloads applied, for version labels.
    generation: AtomicU64,
    /// Downstream connections idle this long are closed (ms; 0: never).
    connection_idle_ms: AtomicU64,
    /// How long a request head may take once its first byte came (ms).
    header_read_ms: AtomicU64,
    /// How long a downstream TLS handshake may take (ms).
    handshake_ms: AtomicU64,
}

/// Time allowed for a request head to arrive once it has started (nginx's
/// `client_header_timeout` is 60 s; Envoy has none by default).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed for a downstream TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Proxy {
    /// A proxy with an empty configuration (no listeners).
    pub fn new() -> Arc<Proxy> {
        let telemetry = Arc::new(Telemetry::default());
        let registry = EndpointRegistry::default();
        let empty = compile(Config::default(), "0".into(), &telemetry, &registry);
        Arc::new(Proxy {
            config: ArcSwap::from_pointee(empty),
            telemetry,
            identity: Arc::new(MeshIdentity::default()),
            listening: Listening::default(),
            registry,
            changes: watch::channel(STARTING_GENERATION).0,
            generation: AtomicU64::new(0),
            connection_idle_ms: AtomicU64::new(0),
            header_read_ms: AtomicU64::new(millis(DEFAULT_HEADER_READ_TIMEOUT)),
            handshake_ms: AtomicU64::new(millis(DEFAULT_HANDSHAKE_TIMEOUT)),
        })
    }

    /// Closes downstream connections idle for `d` (zero: never).
    pub fn set_connection_idle_timeout(&self, d: Duration) {
        self.connection_idle_ms.store(millis(d), Relaxed);
    }

    /// Bounds slow clients: a request head must arrive within
    /// `header_read` of its first byte, a TLS handshake within `handshake`.
    pub fn set_slow_client_timeouts(&self, header_read: Duration, handshake: Duration) {
        self.header_read_ms.store(millis(header_read), Relaxed);
        self.handshake_ms.store(millis(handshake), Relaxed);
    }

    /// How long a request head may take once its first byte came.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_ms.load(Relaxed))
    }

    /// How long a downstream TLS handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_ms.load(Relaxed))
    }

    /// `stream`, closed once idle for the configured time ([`crate::idle`]).
    pub fn idle<S>(&self, stream: S) -> crate::idle::Idle<S> {
        let idle = match self.connection_idle_ms.load(Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        crate::idle::Idle::new(stream, idle, self.telemetry.clone())
    }

    /// The running configuration. Requests hold this `Arc` until they
    /// finish, so a swap never disturbs one in flight.
    pub fn current(&self) -> Arc<Compiled> {
        self.config.load_full()
    }

    /// Compiles and swaps in a validated config; `version` labels it (a
    /// counter is used when `None`).
    pub fn apply(&self, config: Config, version: Option<String>) {
        let version =
            version.unwrap_or_else(|| (self.generation.fetch_add(1, Relaxed) + 1).to_string());
        if let Some(m) = &config.mesh_tls
            && let Err(e) = self.identity.set_roots(&m.roots_pem)
        {
            // Validation parsed these roots already.
            tracing::warn!("mesh roots: {e}");
        }
        let compiled = compile(config, version, &self.telemetry, &self.registry);
        self.config.store(Arc::new(compiled));
        self.telemetry.reloads_ok.fetch_add(1, Relaxed);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Counts a refused document (the running config stays).
    pub fn refused(&self) {
        self.telemetry.reloads_failed.fetch_add(1, Relaxed);
    }

    /// Whether any configuration has been applied: the generation is past
    /// the empty starting config's.
    pub fn configured(&self) -> bool {
        *self.changes.borrow() > STARTING_GENERATION
    }

    /// Notified on every applied config.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
