//! Shared server state: configuration, the overlays (each with its registry behind its
//! own lock, its limits and its counters), server-wide counters, and the shutdown token
//! and task tracker every connection task answers to; and each socket's
//! [`Registration`] in its overlay, from admission (a `/join` socket, a root) until the
//! socket leaves.
//!
//! Every critical section is one registry operation. Queueing a message never waits,
//! so the relay queues it while holding its overlay's lock (no handle is cloned).
//! Locks nest in one order only: the overlay map, then one overlay's registry.
//!
//! What a config reload may change is read without a lock: the server's [`Config`] and
//! each overlay's [`OverlaySettings`] sit behind an `ArcSwap`, swapped whole by
//! [`AppState::reload`] (in `reload`, beside this file).

mod reload;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use bootstrap_protocol::paths::{PROMOTED, STANDBY};
use bootstrap_protocol::{IdGenerator, PeerId};
use serde::Serialize;
use subtle::ConstantTimeEq as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::admission::Pending;
use crate::auth::FailureThrottle;
use crate::cluster::lease::{Held, RootView};
use crate::cluster::{self, Backplane, Cluster, ClusterHealth};
use crate::config::{Config, OverlayConfig};
use crate::edge::{Edge, JoinLimiter};
use crate::handle::{self, Command, Inbox, Outbox, Outgoing, SocketHandle};
use crate::metrics::{Closes, Metrics};
use crate::queue::Budget;
use crate::registry::{Registry, RootTicket};
use crate::route::DEFAULT_OVERLAY;
use crate::shares::Shares;
use crate::stats::{Stats, StatsSnapshot};
use crate::tls::{Tls, TlsError};

pub use reload::Reloaded;

/// Failed authentications one address may make within [`AUTH_WINDOW`] before it is
/// answered 429.
const AUTH_FAILURES: u32 = 10;

/// The window of [`AUTH_FAILURES`].
const AUTH_WINDOW: Duration = Duration::from_secs(60);

/// Most addresses the throttle remembers (its memory bound).
const AUTH_TRACKED_ADDRESSES: usize = 65_536;

/// Most clients whose `/join` sockets and rate are tracked at once (the memory bound
/// of `max_joins_per_ip` and `join_rate_per_ip`).
const LIMITED_CLIENTS: usize = 65_536;

/// Most standby roots one overlay keeps waiting (on one instance); more are refused
/// with HTTP 503, or closed if they race past that check.
pub(crate) const MAX_STANDBY_ROOTS: usize = 16;

/// The server's state, cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct AppState(pub(crate) Arc<Shared>);

#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration in force, swapped whole by a reload; read it with
    /// [`Shared::config`] (lock-free) and never keep the guard across `.await`.
    config: ArcSwap<Config>,
    /// Held by a reload from start to end, so two reloads never interleave.
    reloading: Mutex<()>,
    /// Every overlay by name, the default one included. Held only to look one up, add
    /// or remove one.
    overlays: Mutex<HashMap<Arc<str>, Arc<Overlay>>>,
    /// Open `/join` sockets in all overlays, against `config.max_prospects`.
    prospects: AtomicUsize,
    /// Counters of all overlays together.
    pub(crate) stats: Stats,
    /// Sockets closed, by close code.
    pub(crate) closes: Closes,
    /// The server's metric registry.
    pub(crate) metrics: Metrics,
    /// What a config reload may change of the admission rules (a std lock, never held
    /// across `.await`).
    edge: std::sync::RwLock<Arc<Edge>>,
    /// Open `/join` sockets and their rate, per client.
    limiter: Mutex<JoinLimiter>,
    /// The TLS configuration, when the server speaks TLS.
    pub(crate) tls: Option<Tls>,
    /// Set when draining starts: `/readyz` answers 503 and new `/join` sockets are
    /// refused, while open ones go on.
    pub(crate) draining: AtomicBool,
    /// Bytes queued for (or being written to) slow readers, in all sockets.
    pub(crate) budget: Arc<Budget>,
    /// Bytes of unfinished incoming messages, in all sockets.
    pub(crate) reading: Budget,
    /// Addresses that failed to authenticate, to throttle.
    throttle: Mutex<FailureThrottle>,
    /// `/ice-servers` requests per address, against `turn.requests_per_minute` (a
    /// reload that changes the rate replaces it).
    ice_rate: Mutex<FailureThrottle>,
    /// Connections not upgraded yet, capped in all and per client.
    pub(crate) pending: Arc<Pending>,
    started: Instant,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// This instance's place in a cluster; `None` for a single server.
    pub(crate) cluster: Option<Arc<Cluster>>,
}

/// One overlay: its root, its `/join` sockets and their ids, its limits and counters.
/// Nothing ever crosses from one overlay to another.
#[derive(Debug)]
pub(crate) struct Overlay {
    pub(crate) name: Arc<str>,
    /// Its secret and limits, which a reload may replace.
    settings: ArcSwap<OverlaySettings>,
    /// Created by a root token; removed once empty. A reload that configures an overlay
    /// of the same name makes it a configured one (false).
    dynamic: AtomicBool,
    /// A std mutex, never held across `.await`.
    registry: Mutex<Slot>,
    pub(crate) stats: Stats,
    /// What each client holds in its root's queue.
    pub(crate) root_shares: Arc<Shares>,
}

/// What a reload may change of one overlay: what its root presents, and the limits of
/// its new `/join` sockets.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct OverlaySettings {
    /// Its root's secret; empty when its root presents root tokens only. Never logged.
    secret: String,
    /// Most `/join` sockets open at once in it (also held by its registry, which
    /// enforces it).
    max_prospects: usize,
    /// Lifetime of its `/join` sockets, from the moment each opens.
    timeout: Duration,
}

impl OverlaySettings {
    /// The settings `overlay` gets within the server's `config`: what it leaves out
    /// comes from the server's.
    fn of(config: &Config, overlay: &OverlayConfig) -> Self {
        Self {
            secret: overlay.secret.clone(),
            max_prospects: overlay.max_prospects.unwrap_or(config.max_prospects),
            timeout: overlay.timeout.unwrap_or(config.timeout),
        }
    }
}

impl std::fmt::Debug for OverlaySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlaySettings")
            .field("secret", &"<redacted>")
            .field("max_prospects", &self.max_prospects)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What an overlay's lock guards.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) registry: Registry<SocketHandle>,
    /// Removed from the server: nothing may register in it any more.
    retired: bool,
    /// In a cluster: where the root is when it is connected to another instance.
    pub(crate) remote_root: RootView,
    /// In a cluster: the root lease this instance holds for its local root.
    pub(crate) held: Option<Held>,
    /// In a cluster: a standby root here is trying to take the free lease.
    pub(crate) promoting: bool,
}

impl Slot {
    /// Whether the overlay was removed from the server.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired
    }
}

impl std::ops::Deref for Slot {
    type Target = Registry<SocketHandle>;

    fn deref(&self) -> &Registry<SocketHandle> {
        &self.registry
    }
}

/// What `GET /healthz` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Always `"ok"` while the server answers.
    pub status: &'static str,
    /// Whether the default overlay's root is connected.
    pub root_connected: bool,
    /// Open `/join` sockets, in all overlays.
    pub prospects: usize,
    /// The cap on open `/join` sockets, in all overlays.
    pub max_prospects: usize,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// Counters since the server started, all overlays together.
    pub stats: StatsSnapshot,
    /// Bytes held for slow readers: queued, or being written (at most
    /// `max_queued_bytes`).
    pub queued_bytes: usize,
    /// Bytes held for unfinished incoming messages (at most `max_reading_bytes`).
    pub reading_bytes: usize,
    /// Connections accepted and not upgraded (or answered) yet.
    pub pending_connections: usize,
    /// Whether `/ice-servers` hands out TURN credentials (never the secret).
    pub turn_credentials: bool,
    /// Every overlay, by name (never a secret).
    pub overlays: Vec<OverlayHealth>,
    /// In a cluster: this instance, the broker, and what crossed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterHealth>,
}

/// One overlay in [`Health`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverlayHealth {
    /// Its name ([`DEFAULT_OVERLAY`](crate::route::DEFAULT_OVERLAY) for the default
    /// overlay).
    pub name: String,
    /// Whether its root is connected.
    pub root_connected: bool,
    /// Its open `/join` sockets.
    pub prospects: usize,
    /// Its cap on open `/join` sockets.
    pub max_prospects: usize,
    /// Whether a root token created it.
    pub dynamic: bool,
    /// Standby roots waiting to take over (on this instance).
    pub standby_roots: usize,
    /// Its counters.
    pub stats: StatsSnapshot,
    /// In a cluster: the instance its root is connected to (this one or another),
    /// `null` when no root is known anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_instance: Option<Option<String>>,
}

/// One overlay's gauges in the metrics.
#[derive(Debug)]
pub(crate) struct OverlayGauges {
    pub(crate) name: String,
    /// Open `/join` sockets.
    pub(crate) joins: u64,
    /// Whether its root is connected.
    pub(crate) root: bool,
    /// Standby roots waiting.
    pub(crate) standbys: u64,
}

/// Why a `/join` socket was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The overlay has `max_prospects` open `/join` sockets.
    OverlayFull,
    /// The server has `max_prospects` open `/join` sockets.
    ServerFull,
}

/// Why an overlay cannot be found or created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoOverlay {
    /// Not configured, and not created (no dynamic overlays, or not by a root).
    Unknown,
    /// `max_overlays` exist.
    TooMany,
    /// No OS randomness to seed its ids.
    NoSeed,
}

impl AppState {
    /// Validates `config` and builds the state, seeding the id generators.
    ///
    /// # Errors
    /// An invalid configuration, or no OS randomness to seed ids with.
    pub fn new(config: Config) -> Result<Self, Error> {
        Self::build(config, None)
    }

    /// Like [`AppState::new`], for one instance of a cluster joined by `backplane`
    /// (see [`crate::cluster`]): leases its instance tag, subscribes, and spawns its
    /// inbox and lease tasks, which end with the server. `root_lease` is the time to
    /// live of a root lease: how long the cluster may take to forget a root whose
    /// instance died.
    ///
    /// # Errors
    /// An invalid configuration, no OS randomness, or the backplane unreachable.
    pub async fn clustered(
        config: Config,
        backplane: Arc<dyn Backplane>,
        root_lease: Duration,
    ) -> Result<Self, Error> {
        config.validate()?;
        let (cluster, inbox) = Cluster::join(backplane, root_lease).await?;
        let state = Self::build(config, Some(Arc::new(cluster)))?;
        tokio::spawn(cluster::inbox_task(Arc::clone(&state.0), inbox));
        tokio::spawn(cluster::lease_task(Arc::clone(&state.0)));
        Ok(state)
    }

    fn build(config: Config, cluster: Option<Arc<Cluster>>) -> Result<Self, Error> {
        config.validate()?;
        let tag = cluster.as_ref().map(|c| c.tag.0);
        let mut overlays = HashMap::new();
        let default = OverlayConfig::new(config.secret.clone());
        let mut add = |name: &str, overlay: &OverlayConfig| -> Result<(), Error> {
            let overlay = Overlay::new(&config, name, overlay, false, tag)?;
            overlays.insert(Arc::clone(&overlay.name), Arc::new(overlay));
            Ok(())
        };
        add(DEFAULT_OVERLAY, &default)?;
        for (name, overlay) in &config.overlays {
            add(name, overlay)?;
        }
        let tls = config.tls.clone().map(Tls::load).transpose()?;
        let edge = Edge::of(&config);
        let budget = Arc::new(Budget::new(config.max_queued_bytes));
        let ice_rate = ice_throttle(&config);
        let config_reading = config.max_reading_bytes;
        let config_pending = (
            config.max_pending_connections,
            config.max_pending_per_client,
        );
        Ok(Self(Arc::new_cyclic(|weak| Shared {
            config: ArcSwap::from_pointee(config),
            reloading: Mutex::new(()),
            overlays: Mutex::new(overlays),
            prospects: AtomicUsize::new(0),
            stats: Stats::default(),
            closes: Closes::default(),
            metrics: Metrics::new(weak.clone()),
            draining: AtomicBool::new(false),
            edge: std::sync::RwLock::new(Arc::new(edge)),
            limiter: Mutex::new(JoinLimiter::new(LIMITED_CLIENTS)),
            tls,
            budget,
            reading: Budget::new(config_reading),
            pending: Pending::new(config_pending.0, config_pending.1),
            throttle: Mutex::new(FailureThrottle::new(
                AUTH_FAILURES,
                AUTH_WINDOW,
                AUTH_TRACKED_ADDRESSES,
            )),
            ice_rate: Mutex::new(ice_rate),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            cluster,
        })))
    }

    /// Every metric in the Prometheus text format, as `GET /metrics` answers.
    #[must_use]
    pub fn metrics(&self) -> String {
        self.0.metrics.render()
    }

    /// Whether the server accepts new `/join` sockets (what `GET /readyz` tells):
    /// false once draining or shutdown has started.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.0.is_ready()
            && self
                .0
                .cluster
                .as_ref()
                .is_none_or(|cluster| cluster.backplane.reachable())
    }

    /// In a cluster, this instance's tag (the first four hex characters of its ids).
    #[must_use]
    pub fn instance(&self) -> Option<String> {
        self.0.cluster.as_ref().map(|c| c.tag.to_string())
    }

    /// Starts draining: `/readyz` answers 503 and new `/join` upgrades get 503 with
    /// `Retry-After`, while the sockets already open go on. [`crate::serve`] calls it
    /// when its shutdown future completes (with a non-zero `drain_timeout`).
    pub fn start_draining(&self) {
        if !self.0.draining.swap(true, Ordering::AcqRel) {
            tracing::info!("draining: new /join sockets are refused");
        }
    }

    /// Reads the TLS certificate and key again: new connections get the new
    /// certificate, open ones keep theirs. On an error the current certificate stays.
    /// Does nothing on a server without TLS.
    ///
    /// # Errors
    /// [`TlsError`] when the new files cannot be used.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        match &self.0.tls {
            Some(tls) => tls.reload(None),
            None => Ok(()),
        }
    }

    /// Whether the server speaks TLS.
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.0.tls.is_some()
    }

    /// Open `/join` sockets in all overlays.
    #[must_use]
    pub fn open_joins(&self) -> usize {
        self.0.prospects.load(Ordering::Acquire)
    }

    /// The server's current status.
    #[must_use]
    pub fn health(&self) -> Health {
        let shared = &self.0;
        let mut overlays: Vec<OverlayHealth> = shared
            .all_overlays()
            .iter()
            .map(|overlay| overlay.health(shared.cluster.as_deref()))
            .collect();
        overlays.sort_by(|a, b| a.name.cmp(&b.name));
        let root_connected = overlays
            .iter()
            .any(|o| o.name == DEFAULT_OVERLAY && o.root_connected);
        Health {
            status: "ok",
            root_connected,
            prospects: shared.prospects.load(Ordering::Relaxed),
            max_prospects: shared.config().max_prospects,
            uptime_seconds: shared.started.elapsed().as_secs_f64(),
            stats: shared.stats.snapshot(),
            queued_bytes: shared.budget.used(),
            reading_bytes: shared.reading.used(),
            pending_connections: shared.pending.count(),
            turn_credentials: shared.config().turn.is_some(),
            overlays,
            cluster: shared.cluster.as_ref().map(|c| c.health()),
        }
    }

    /// Cancelling this token shuts the server down, as the `shutdown` future of
    /// [`crate::run`] does.
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.0.shutdown.clone()
    }
}

impl Overlay {
    fn new(
        config: &Config,
        name: &str,
        overlay: &OverlayConfig,
        dynamic: bool,
        tag: Option<u16>,
    ) -> Result<Self, bootstrap_protocol::id::SeedError> {
        // The default overlay draws the ids a seed has always given; a named one draws
        // its own sequence from the seed and its name.
        let ids = match config.seed {
            Some(seed) if name == DEFAULT_OVERLAY => IdGenerator::seeded(seed),
            Some(seed) => IdGenerator::seeded(seed ^ fnv1a(name.as_bytes())),
            None => IdGenerator::from_os()?,
        };
        let settings = OverlaySettings::of(config, overlay);
        let mut registry = Registry::new(ids, settings.max_prospects);
        if let Some(tag) = tag {
            registry.set_tag(tag);
        }
        Ok(Self {
            name: name.into(),
            settings: ArcSwap::from_pointee(settings),
            dynamic: AtomicBool::new(dynamic),
            registry: Mutex::new(Slot {
                registry,
                retired: false,
                remote_root: RootView::default(),
                held: None,
                promoting: false,
            }),
            stats: Stats::default(),
            root_shares: Shares::new(root_share(config)),
        })
    }

    /// Whether `credential` (as sent, still percent-encoded) is its root's secret;
    /// compared in constant time, and never true for an empty secret.
    pub(crate) fn secret_matches(&self, credential: &str) -> bool {
        let settings = self.settings.load();
        !settings.secret.is_empty()
            && bool::from(credential.as_bytes().ct_eq(settings.secret.as_bytes()))
    }

    /// Lifetime of its `/join` sockets opened now.
    pub(crate) fn timeout(&self) -> Duration {
        self.settings.load().timeout
    }

    /// Whether a root token created it (it goes once empty).
    fn is_dynamic(&self) -> bool {
        self.dynamic.load(Ordering::Acquire)
    }

    /// The overlay's registry, locked.
    pub(crate) fn registry(&self) -> MutexGuard<'_, Slot> {
        // No code panics while holding the lock, so poisoning cannot happen; if it did,
        // the registry is still consistent (every method is a single map operation).
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn health(&self, cluster: Option<&Cluster>) -> OverlayHealth {
        let (root_connected, standby_roots, prospects, root_instance) = {
            let slot = self.registry();
            let root_instance = cluster.map(|cluster| {
                if slot.has_root() {
                    Some(cluster.tag.to_string())
                } else {
                    slot.remote_root.get().map(|at| at.instance.to_string())
                }
            });
            (
                slot.has_root(),
                slot.standby_count(),
                slot.prospect_count(),
                root_instance,
            )
        };
        OverlayHealth {
            name: self.name.to_string(),
            root_connected,
            prospects,
            max_prospects: self.settings.load().max_prospects,
            dynamic: self.is_dynamic(),
            standby_roots,
            stats: self.stats.snapshot(),
            root_instance,
        }
    }
}

impl Shared {
    /// The overlay named `name`, if it exists.
    pub(crate) fn overlay(&self, name: &str) -> Option<Arc<Overlay>> {
        self.overlays().get(name).cloned()
    }

    /// The overlay named `name`, created (as a dynamic overlay) if it does not exist
    /// and `create` allows it.
    pub(crate) fn overlay_or_create(
        &self,
        name: &str,
        create: bool,
    ) -> Result<Arc<Overlay>, NoOverlay> {
        let mut overlays = self.overlays();
        if let Some(overlay) = overlays.get(name) {
            return Ok(Arc::clone(overlay));
        }
        let config = self.config();
        if !create || !config.dynamic_overlays {
            return Err(NoOverlay::Unknown);
        }
        if overlays.len() >= config.max_overlays {
            return Err(NoOverlay::TooMany);
        }
        let tag = self.cluster.as_ref().map(|c| c.tag.0);
        let overlay = Overlay::new(&config, name, &OverlayConfig::default(), true, tag)
            .map_err(|_| NoOverlay::NoSeed)?;
        let overlay = Arc::new(overlay);
        overlays.insert(Arc::clone(&overlay.name), Arc::clone(&overlay));
        tracing::info!(overlay = %name, "dynamic overlay created");
        Ok(overlay)
    }

    /// The rate limit of `/ice-servers` requests, locked.
    pub(crate) fn ice_rate(&self) -> MutexGuard<'_, FailureThrottle> {
        self.ice_rate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The throttle of failed authentications, locked.
    pub(crate) fn throttle(&self) -> MutexGuard<'_, FailureThrottle> {
        self.throttle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn overlays(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Overlay>>> {
        self.overlays.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every overlay now.
    pub(crate) fn overlay_list(&self) -> Vec<Arc<Overlay>> {
        self.all_overlays()
    }

    fn all_overlays(&self) -> Vec<Arc<Overlay>> {
        self.overlays().values().cloned().collect()
    }

    /// Each overlay's gauges, sorted by name (for the metrics).
    pub(crate) fn overlay_gauges(&self) -> Vec<OverlayGauges> {
        let mut gauges: Vec<OverlayGauges> = self
            .all_overlays()
            .iter()
            .map(|overlay| {
                let slot = overlay.registry();
                OverlayGauges {
                    name: overlay.name.to_string(),
                    joins: u64::try_from(slot.prospect_count()).unwrap_or(u64::MAX),
                    root: slot.has_root(),
                    standbys: u64::try_from(slot.standby_count()).unwrap_or(u64::MAX),
                }
            })
            .collect();
        gauges.sort_by(|a, b| a.name.cmp(&b.name));
        gauges
    }

    /// The configuration in force now. Lock-free; read what you need and drop the guard
    /// (never keep it across `.await`: it pins this version of the configuration).
    pub(crate) fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// Whether `ip` may read `/metrics` on the main listener.
    pub(crate) fn metrics_allowed(&self, ip: IpAddr) -> bool {
        self.edge()
            .metrics_allow
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// The admission rules now.
    pub(crate) fn edge(&self) -> Arc<Edge> {
        Arc::clone(&self.edge.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the admission rules (a config reload).
    pub(crate) fn set_edge(&self, edge: Edge) {
        *self.edge.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(edge);
    }

    /// The per-client limiter of `/join` sockets, locked.
    pub(crate) fn limiter(&self) -> MutexGuard<'_, JoinLimiter> {
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether new `/join` sockets are accepted: not draining, not shutting down.
    pub(crate) fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && !self.shutdown.is_cancelled()
    }

    /// Admits a new `/join` socket into `overlay` (unless it or the server has
    /// `max_prospects` open) and gives it an id; the registration unregisters it when
    /// dropped, so an upgrade that never completes frees its slot at once.
    pub(crate) fn admit_join(
        self: &Arc<Self>,
        overlay: &Arc<Overlay>,
    ) -> Result<(Registration, Inbox), Refusal> {
        let (handle, rx, max) = {
            let config = self.config();
            let (handle, rx) = handle::channel(
                config.join_queue,
                config.join_queue_bytes.max(config.max_frame_bytes),
                Arc::clone(&self.budget),
            );
            (handle, rx, config.max_prospects)
        };
        self.prospects
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Refusal::ServerFull)?;
        let admitted = {
            let mut slot = overlay.registry();
            if slot.retired {
                // Removed while we looked it up: as if it had been full.
                Err(crate::registry::Full)
            } else {
                slot.registry.admit(handle)
            }
        };
        let Ok(id) = admitted else {
            self.prospects.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::OverlayFull);
        };
        let registration = Registration::new(Arc::clone(self), Arc::clone(overlay), Role::Join(id));
        registration.bump(|s| &s.joins);
        Ok((registration, rx))
    }

    /// Registers a new root socket in `overlay`. An active root (`standby` false) is
    /// the root at once, telling the root it replaces (if any) to close. A standby root
    /// waits without requests while a root is active (here or, in a cluster, on another
    /// instance) and is told `"standby"`; with none it is the root at once and is told
    /// `"promoted"`. Returns its registration, its queue, and a sender for its
    /// heartbeats; `None` if the overlay was removed meanwhile, or a standby would
    /// exceed [`MAX_STANDBY_ROOTS`].
    pub(crate) fn register_root(
        self: &Arc<Self>,
        overlay: &Arc<Overlay>,
        standby: bool,
    ) -> Option<(Registration, Inbox, Outbox)> {
        let config = self.config();
        let (handle, rx) = handle::channel(
            config.root_queue,
            config.root_queue_bytes.max(config.max_frame_bytes),
            Arc::clone(&self.budget),
        );
        drop(config);
        let heartbeats = handle.tx.clone();
        let (ticket, old, active) = {
            let mut slot = overlay.registry();
            if slot.retired {
                return None;
            }
            if standby && slot.standby_count() >= MAX_STANDBY_ROOTS {
                return None;
            }
            if standby {
                // In a cluster a root may be elsewhere though none is known here yet: a
                // standby takes the lease only if it is free (below).
                let may_promote = self.cluster.is_none() && self.is_ready();
                let (ticket, active) = slot.registry.add_standby(handle, may_promote);
                (ticket, None, active)
            } else {
                let (ticket, old) = slot.registry.set_root(handle);
                (ticket, old, true)
            }
        };
        let registration =
            Registration::new(Arc::clone(self), Arc::clone(overlay), Role::Root(ticket));
        registration.bump(|s| &s.roots);
        if standby {
            registration.bump(|s| &s.roots_standby);
            // Nothing is queued for it yet: this is its first frame.
            let word = if active { PROMOTED } else { STANDBY };
            let _ = heartbeats.try_send(Outgoing::from(word.to_owned()));
        }
        if let Some(old) = old {
            registration.bump(|s| &s.roots_replaced);
            let _ = old.tx.control(Command::Replaced);
            tracing::info!(overlay = %overlay.name, "root connected, replacing the previous root");
        } else if !active {
            tracing::info!(overlay = %overlay.name, "standby root connected; a root is active");
        } else if standby {
            registration.bump(|s| &s.roots_promoted);
            tracing::info!(overlay = %overlay.name, "standby root connected and promoted: no root was active");
        } else {
            tracing::info!(overlay = %overlay.name, "root connected");
        }
        if active {
            cluster::claim(self, overlay, ticket);
        } else if standby {
            cluster::promote_standby(self, overlay);
        }
        Some((registration, rx, heartbeats))
    }

    /// Counts and logs a standby root promoted in `overlay`.
    pub(crate) fn count_promotion(&self, overlay: &Overlay) {
        Stats::bump(&overlay.stats.roots_promoted);
        Stats::bump(&self.stats.roots_promoted);
        tracing::info!(overlay = %overlay.name, "the root is gone; a standby root is promoted");
    }

    /// Removes a dynamic overlay once its root and its last `/join` socket have left.
    pub(crate) fn remove_if_empty(&self, overlay: &Overlay) {
        if !overlay.is_dynamic() {
            return;
        }
        let mut overlays = self.overlays();
        let mut slot = overlay.registry();
        // Dynamic is checked again under the map's lock, which a reload that adopts the
        // overlay holds.
        if !overlay.is_dynamic()
            || slot.retired
            || slot.has_root()
            || slot.standby_count() > 0
            || slot.prospect_count() > 0
        {
            return;
        }
        slot.retired = true;
        overlays.remove(&overlay.name);
        tracing::info!(overlay = %overlay.name, "dynamic overlay removed");
    }

    /// Tells every registered socket of every overlay to close with `command` (on
    /// shutdown).
    pub(crate) fn close_all(&self, command: Command) {
        for overlay in self.all_overlays() {
            for handle in overlay.registry().handles() {
                let _ = handle.tx.control(command);
            }
        }
    }
}

/// Which kind of socket a registration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A `/join` socket with its id.
    Join(PeerId),
    /// The root, with its registration ticket.
    Root(RootTicket),
}

/// A socket's place in its overlay: leaving it, explicitly or by being dropped (an
/// upgrade that never completed, a task dropped before it ended), unregisters the
/// socket once.
#[derive(Debug)]
pub(crate) struct Registration {
    role: Role,
    shared: Arc<Shared>,
    overlay: Arc<Overlay>,
    /// The client's address (unspecified when the server does not know it).
    client: IpAddr,
    /// Counted by the per-client limiter, which must be told when it leaves.
    limited: bool,
    left: bool,
}

impl Registration {
    /// Takes responsibility for unregistering the socket registered as `role`.
    fn new(shared: Arc<Shared>, overlay: Arc<Overlay>, role: Role) -> Self {
        Self {
            role,
            shared,
            overlay,
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            limited: false,
            left: false,
        }
    }

    /// The socket's client is at `client`.
    pub(crate) fn set_client(&mut self, client: IpAddr) {
        self.client = client;
    }

    /// The socket was admitted by the per-client limiter: release it on leaving.
    pub(crate) fn set_limited(&mut self) {
        self.limited = true;
    }

    /// The socket's client address.
    pub(crate) fn client(&self) -> IpAddr {
        self.client
    }

    /// Which socket this is.
    pub(crate) fn role(&self) -> Role {
        self.role
    }

    /// The server state the socket is registered in.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The overlay the socket belongs to.
    pub(crate) fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// Adds one to a counter of the overlay and of the server.
    pub(crate) fn bump(&self, counter: impl Fn(&Stats) -> &AtomicU64) {
        Stats::bump(counter(&self.overlay.stats));
        Stats::bump(counter(&self.shared.stats));
    }

    /// Unregisters the socket (once): no message is routed to it any more.
    pub(crate) fn leave(&mut self) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        if self.limited {
            self.shared.limiter().release(self.client);
        }
        match self.role {
            Role::Join(id) => {
                if self.overlay.registry().registry.leave(&id) {
                    self.shared.prospects.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Role::Root(ticket) => {
                let promoted = {
                    let mut slot = self.overlay.registry();
                    // A draining server, or a removed overlay, promotes no one: its
                    // standbys reconnect elsewhere (or later) like its root.
                    let may_promote =
                        slot.remote_root.get().is_none() && !slot.retired && self.shared.is_ready();
                    slot.registry
                        .root_left(ticket, may_promote)
                        .map(|(promoted, handle)| {
                            // Queued ahead of any request: nothing reached it before.
                            let _ = handle.tx.try_send(Outgoing::from(PROMOTED.to_owned()));
                            promoted
                        })
                };
                match promoted {
                    // The promoted root claims the lease over ours: no other instance
                    // hears the root is gone, so none promotes a standby of its own.
                    Some(promoted) => {
                        self.shared.count_promotion(&self.overlay);
                        cluster::claim(&self.shared, &self.overlay, promoted);
                    }
                    None => cluster::release(&self.shared, &self.overlay, ticket),
                }
            }
        }
        self.shared.remove_if_empty(&self.overlay);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The rate limit of `/ice-servers` requests per address that `config` asks for
/// (`turn.requests_per_minute`; unused without TURN).
fn ice_throttle(config: &Config) -> FailureThrottle {
    let per_minute = config.turn.as_ref().map_or(1, |t| t.requests_per_minute);
    FailureThrottle::new(per_minute, Duration::from_secs(60), AUTH_TRACKED_ADDRESSES)
}

/// Bytes of a root's queue one client may hold: `root_bytes_per_client`, raised so that
/// any message fits.
fn root_share(config: &Config) -> usize {
    config.root_bytes_per_client.max(config.max_frame_bytes)
}

/// FNV-1a, to derive a named overlay's id seed from the server's seed (tests only).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;
    use crate::queue::Received;
    use bootstrap_protocol::Destination;

    fn shared(adjust: impl FnOnce(&mut Config)) -> Arc<Shared> {
        let mut config = Config::new("s");
        config.seed = Some(7);
        adjust(&mut config);
        AppState::new(config).expect("valid config").0
    }

    fn default(shared: &Shared) -> Arc<Overlay> {
        shared
            .overlay(DEFAULT_OVERLAY)
            .expect("the default overlay")
    }

    #[tokio::test]
    async fn a_registration_unregisters_its_socket_once_when_dropped() {
        let shared = shared(|c| c.max_prospects = 1);
        let overlay = default(&shared);
        let (join, _rx) = shared.admit_join(&overlay).expect("room for one");
        assert_eq!(shared.admit_join(&overlay).err(), Some(Refusal::ServerFull));
        assert_eq!(overlay.registry().prospect_count(), 1);
        drop(join);
        assert_eq!(overlay.registry().prospect_count(), 0);
        let (mut join, _rx) = shared.admit_join(&overlay).expect("the slot is free again");
        join.leave();
        join.leave();
        drop(join);
        assert_eq!(shared.prospects.load(Ordering::Relaxed), 0);
        assert_eq!(shared.stats.joins.load(Ordering::Relaxed), 2);
        assert_eq!(overlay.stats.joins.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_new_root_replaces_the_old_one_which_cannot_unregister_it() {
        let shared = shared(|_| {});
        let overlay = default(&shared);
        let (first, mut first_rx, _) = shared.register_root(&overlay, false).expect("open");
        let (second, _second_rx, _) = shared.register_root(&overlay, false).expect("open");
        assert_eq!(
            first_rx.recv().await,
            Some(Received::Control(Command::Replaced))
        );
        drop(first);
        assert!(
            overlay.registry().has_root(),
            "the old root left, the new one stays"
        );
        drop(second);
        assert!(!overlay.registry().has_root());
    }

    /// The text of the next queued message, if one is queued now.
    fn queued(rx: &mut Inbox) -> Option<String> {
        match rx.recv().now_or_never()?? {
            Received::Message(message) => Some(message.text),
            Received::Control(_) => None,
        }
    }

    #[tokio::test]
    async fn a_standby_root_waits_without_requests_and_takes_over_when_the_root_leaves() {
        let shared = shared(|_| {});
        let overlay = default(&shared);
        let (active, mut active_rx, _) = shared.register_root(&overlay, false).expect("open");
        let (standby, mut standby_rx, _) = shared.register_root(&overlay, true).expect("open");
        let (_later, mut later_rx, _) = shared.register_root(&overlay, true).expect("open");
        assert_eq!(queued(&mut standby_rx).as_deref(), Some(STANDBY));
        assert_eq!(queued(&mut later_rx).as_deref(), Some(STANDBY));
        assert!(
            queued(&mut active_rx).is_none(),
            "standbys do not replace the root"
        );
        assert_eq!(overlay.health(None).standby_roots, 2);
        // A join request goes to the active root only.
        let (join, _join_rx) = shared.admit_join(&overlay).expect("room");
        let relayed = {
            let slot = overlay.registry();
            let root = slot.route(&Destination::Root).expect("a root");
            root.tx.try_send(Outgoing::from("request".to_owned()))
        };
        assert_eq!(relayed, Ok(()));
        assert_eq!(queued(&mut active_rx).as_deref(), Some("request"));
        assert!(queued(&mut standby_rx).is_none());
        // The active root goes: the oldest standby is the root and is told first.
        drop(active);
        assert_eq!(queued(&mut standby_rx).as_deref(), Some(PROMOTED));
        assert!(queued(&mut later_rx).is_none(), "the younger standby waits");
        assert_eq!(overlay.health(None).standby_roots, 1);
        let snapshot = shared.stats.snapshot();
        assert_eq!(
            (
                snapshot.roots,
                snapshot.roots_standby,
                snapshot.roots_promoted
            ),
            (3, 2, 1)
        );
        // The promoted root leaving promotes the next one; the overlay stays whole.
        drop(standby);
        assert_eq!(queued(&mut later_rx).as_deref(), Some(PROMOTED));
        drop(join);
    }

    #[tokio::test]
    async fn standby_roots_are_capped_per_overlay() {
        let shared = shared(|_| {});
        let overlay = default(&shared);
        let (_active, _rx, _) = shared.register_root(&overlay, false).expect("open");
        let standbys: Vec<_> = (0..MAX_STANDBY_ROOTS)
            .map(|_| shared.register_root(&overlay, true).expect("room"))
            .collect();
        assert!(shared.register_root(&overlay, true).is_none(), "capped");
        assert_eq!(overlay.health(None).standby_roots, MAX_STANDBY_ROOTS);
        drop(standbys);
        assert_eq!(overlay.health(None).standby_roots, 0);
    }

    #[tokio::test]
    async fn a_draining_server_promotes_no_standby() {
        let shared = shared(|_| {});
        let overlay = default(&shared);
        let (active, _active_rx, _) = shared.register_root(&overlay, false).expect("open");
        let (_standby, mut rx, _) = shared.register_root(&overlay, true).expect("open");
        assert_eq!(queued(&mut rx).as_deref(), Some(STANDBY));
        AppState(Arc::clone(&shared)).start_draining();
        drop(active);
        assert!(queued(&mut rx).is_none(), "not promoted while draining");
        assert!(!overlay.registry().has_root());
        assert_eq!(overlay.health(None).standby_roots, 1);
    }

    #[tokio::test]
    async fn a_standby_root_with_no_root_active_is_promoted_at_once() {
        let shared = shared(|_| {});
        let overlay = default(&shared);
        let (_standby, mut rx, _) = shared.register_root(&overlay, true).expect("open");
        assert_eq!(queued(&mut rx).as_deref(), Some(PROMOTED));
        assert!(overlay.registry().has_root());
        // A root that is not standby replaces it, as any root (newest root wins).
        let (_active, _active_rx, _) = shared.register_root(&overlay, false).expect("open");
        assert_eq!(rx.recv().await, Some(Received::Control(Command::Replaced)));
        assert_eq!(shared.stats.snapshot().roots_promoted, 1);
    }

    #[tokio::test]
    async fn overlays_have_their_own_roots_caps_and_counters() {
        let shared = shared(|c| {
            c.max_prospects = 3;
            c.overlays.insert(
                "a".into(),
                OverlayConfig {
                    secret: "ka".into(),
                    max_prospects: Some(1),
                    timeout: Some(Duration::from_secs(5)),
                },
            );
            c.overlays.insert("b".into(), OverlayConfig::new("kb"));
        });
        let (a, b) = (
            shared.overlay("a").expect("a"),
            shared.overlay("b").expect("b"),
        );
        assert_eq!(
            (a.timeout(), b.timeout()),
            (Duration::from_secs(5), Duration::from_secs(30))
        );
        let (_root_a, mut root_a_rx, _) = shared.register_root(&a, false).expect("open");
        let (_root_b, _root_b_rx, _) = shared.register_root(&b, false).expect("open");
        // Each overlay has its root: no replacement across overlays.
        assert!(root_a_rx.recv().now_or_never().is_none());
        let (_join_a, _) = shared.admit_join(&a).expect("room in a");
        assert_eq!(shared.admit_join(&a).err(), Some(Refusal::OverlayFull));
        let (_b1, _) = shared.admit_join(&b).expect("room in b");
        let (_b2, _) = shared.admit_join(&b).expect("room in b");
        assert_eq!(
            shared.admit_join(&b).err(),
            Some(Refusal::ServerFull),
            "3 in all"
        );
        let health = AppState(Arc::clone(&shared)).health();
        let names: Vec<_> = health
            .overlays
            .iter()
            .map(|o| (o.name.as_str(), o.prospects, o.root_connected))
            .collect();
        assert_eq!(
            names,
            [("a", 1, true), ("b", 2, true), ("default", 0, false)]
        );
        assert_eq!((health.prospects, health.root_connected), (3, false));
        assert_eq!(health.overlays[1].stats.joins, 2);
    }

    #[tokio::test]
    async fn a_dynamic_overlay_exists_while_used_and_max_overlays_caps_them() {
        let shared = shared(|c| {
            c.token_key = Some(Arc::new(
                crate::auth::TokenKey::from_bytes(b"0123456789abcdef0123456789abcdef")
                    .expect("key"),
            ));
            c.dynamic_overlays = true;
            c.max_overlays = 2;
        });
        assert_eq!(
            shared.overlay_or_create("x", false).err(),
            Some(NoOverlay::Unknown)
        );
        let x = shared.overlay_or_create("x", true).expect("created");
        assert_eq!(
            shared.overlay_or_create("y", true).err(),
            Some(NoOverlay::TooMany)
        );
        let (root, _rx, _) = shared.register_root(&x, false).expect("open");
        let (join, _rx) = shared.admit_join(&x).expect("room");
        drop(root);
        assert!(
            shared.overlay("x").is_some(),
            "a /join socket is still open"
        );
        drop(join);
        assert!(shared.overlay("x").is_none(), "removed once empty");
        assert!(shared.register_root(&x, false).is_none(), "retired");
        assert_eq!(shared.admit_join(&x).err(), Some(Refusal::OverlayFull));
        assert_eq!(shared.prospects.load(Ordering::Relaxed), 0);
        shared.overlay_or_create("y", true).expect("room again");
    }

    #[tokio::test]
    async fn close_all_tells_every_root_and_prospect_of_every_overlay() {
        let shared = shared(|c| {
            c.overlays.insert("a".into(), OverlayConfig::new("ka"));
        });
        let (a, d) = (shared.overlay("a").expect("a"), default(&shared));
        let (_root, mut root_rx, _) = shared.register_root(&d, false).expect("open");
        let (_join, mut join_rx) = shared.admit_join(&a).expect("room");
        shared.close_all(Command::Shutdown);
        assert_eq!(
            root_rx.recv().await,
            Some(Received::Control(Command::Shutdown))
        );
        assert_eq!(
            join_rx.recv().await,
            Some(Received::Control(Command::Shutdown))
        );
    }
}
