//! Shared server state: configuration, the registry behind one mutex, counters, and
//! the shutdown token and task tracker every connection task answers to.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bootstrap_protocol::IdGenerator;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::config::Config;
use crate::connection::Command;
use crate::queue;
use crate::registry::Registry;
use crate::stats::{Stats, StatsSnapshot};

/// How the relay reaches one socket's task: its bounded outbound queue, which also
/// carries the commands the task must act on (close, heartbeat).
#[derive(Debug)]
pub(crate) struct SocketHandle {
    pub(crate) tx: queue::Sender<String, Command>,
}

/// The server's state, cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct AppState(pub(crate) Arc<Shared>);

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// A std mutex, never held across `.await`: every critical section is a map lookup
    /// or insert, and sends happen after the guard is dropped.
    registry: Mutex<Registry<SocketHandle>>,
    pub(crate) stats: Stats,
    started: Instant,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// What `GET /healthz` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Always `"ok"` while the server answers.
    pub status: &'static str,
    /// Whether a root is connected.
    pub root_connected: bool,
    /// Open `/join` sockets.
    pub prospects: usize,
    /// The cap on open `/join` sockets.
    pub max_prospects: usize,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// Counters since the server started.
    pub stats: StatsSnapshot,
}

impl AppState {
    /// Validates `config` and builds the state, seeding the id generator.
    ///
    /// # Errors
    /// An invalid configuration, or no OS randomness to seed ids with.
    pub fn new(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let ids = match config.seed {
            Some(seed) => IdGenerator::seeded(seed),
            None => IdGenerator::from_os()?,
        };
        let registry = Mutex::new(Registry::new(ids, config.max_prospects));
        Ok(Self(Arc::new(Shared {
            config,
            registry,
            stats: Stats::default(),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        })))
    }

    /// The server's current status.
    #[must_use]
    pub fn health(&self) -> Health {
        let (root_connected, prospects) = {
            let registry = self.0.registry();
            (registry.has_root(), registry.prospect_count())
        };
        Health {
            status: "ok",
            root_connected,
            prospects,
            max_prospects: self.0.config.max_prospects,
            uptime_seconds: self.0.started.elapsed().as_secs_f64(),
            stats: self.0.stats.snapshot(),
        }
    }

    /// Cancelling this token shuts the server down, as the `shutdown` future of
    /// [`crate::run`] does.
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.0.shutdown.clone()
    }
}

impl Shared {
    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry<SocketHandle>> {
        // No code panics while holding the lock, so poisoning cannot happen; if it did,
        // the registry is still consistent (every method is a single map operation).
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
