//! Shared server state: configuration, the registry behind one mutex, counters, and
//! the shutdown token and task tracker every connection task answers to; and each
//! socket's [`Registration`] in it, from admission (a `/join` socket, a root) until the
//! socket leaves.
//!
//! Every critical section is one registry operation. Queueing a message never waits,
//! so the relay queues it while holding the lock (no handle is cloned).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bootstrap_protocol::IdGenerator;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use bootstrap_protocol::PeerId;

use crate::Error;
use crate::config::Config;
use crate::handle::{self, Command, Inbox, Outbox, SocketHandle};
use crate::registry::{Full, Registry, RootTicket};
use crate::stats::{Stats, StatsSnapshot};

/// The server's state, cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct AppState(pub(crate) Arc<Shared>);

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// A std mutex, never held across `.await`: every critical section is one map
    /// operation, plus at most one queue push that never waits.
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
    /// Admits a new `/join` socket (unless `max_prospects` are open) and gives it an
    /// id; the registration unregisters it when dropped, so an upgrade that never
    /// completes frees its slot at once.
    pub(crate) fn admit_join(self: &Arc<Self>) -> Result<(Registration, Inbox), Full> {
        let (handle, rx) = handle::channel(self.config.join_queue);
        let id = self.registry().admit(handle)?;
        Stats::bump(&self.stats.joins);
        Ok((Registration::new(Arc::clone(self), Role::Join(id)), rx))
    }

    /// Makes a new socket the root, telling the root it replaces (if any) to close.
    /// Returns its registration, its queue, and a sender for its heartbeats.
    pub(crate) fn register_root(self: &Arc<Self>) -> (Registration, Inbox, Outbox) {
        let (handle, rx) = handle::channel(self.config.root_queue);
        let heartbeats = handle.tx.clone();
        let (ticket, old) = self.registry().set_root(handle);
        Stats::bump(&self.stats.roots);
        if let Some(old) = old {
            let _ = old.tx.control(Command::Replaced);
            tracing::info!("root connected, replacing the previous root");
        } else {
            tracing::info!("root connected");
        }
        let registration = Registration::new(Arc::clone(self), Role::Root(ticket));
        (registration, rx, heartbeats)
    }

    /// Tells every registered socket to close with `command` (on shutdown).
    pub(crate) fn close_all(&self, command: Command) {
        for handle in self.registry().handles() {
            let _ = handle.tx.control(command);
        }
    }

    /// The registry, locked.
    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry<SocketHandle>> {
        // No code panics while holding the lock, so poisoning cannot happen; if it did,
        // the registry is still consistent (every method is a single map operation).
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
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

/// A socket's place in the registry: leaving it, explicitly or by being dropped (an
/// upgrade that never completed, a task dropped before it ended), unregisters the
/// socket once.
#[derive(Debug)]
pub(crate) struct Registration {
    role: Role,
    shared: Arc<Shared>,
    left: bool,
}

impl Registration {
    /// Takes responsibility for unregistering the socket registered as `role`.
    fn new(shared: Arc<Shared>, role: Role) -> Self {
        Self {
            role,
            shared,
            left: false,
        }
    }

    /// Which socket this is.
    pub(crate) fn role(&self) -> Role {
        self.role
    }

    /// The server state the socket is registered in.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Unregisters the socket (once): no message is routed to it any more.
    pub(crate) fn leave(&mut self) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        match self.role {
            Role::Join(id) => self.shared.registry().leave(&id),
            Role::Root(ticket) => self.shared.registry().root_left(ticket),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Received;

    fn shared(max_prospects: usize) -> Arc<Shared> {
        let mut config = Config::new("s");
        config.max_prospects = max_prospects;
        config.seed = Some(7);
        AppState::new(config).expect("valid config").0
    }

    #[tokio::test]
    async fn a_registration_unregisters_its_socket_once_when_dropped() {
        let shared = shared(1);
        let (join, _rx) = shared.admit_join().expect("room for one");
        assert!(shared.admit_join().is_err(), "capped at max_prospects");
        assert_eq!(shared.registry().prospect_count(), 1);
        drop(join);
        assert_eq!(shared.registry().prospect_count(), 0);
        let (mut join, _rx) = shared.admit_join().expect("the slot is free again");
        join.leave();
        join.leave();
        drop(join);
        assert_eq!(shared.registry().prospect_count(), 0);
        assert_eq!(
            shared
                .stats
                .joins
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    #[tokio::test]
    async fn a_new_root_replaces_the_old_one_which_cannot_unregister_it() {
        let shared = shared(1);
        let (first, mut first_rx, _) = shared.register_root();
        let (second, _second_rx, _) = shared.register_root();
        assert_eq!(
            first_rx.recv().await,
            Some(Received::Control(Command::Replaced))
        );
        drop(first);
        assert!(
            shared.registry().has_root(),
            "the old root left, the new one stays"
        );
        drop(second);
        assert!(!shared.registry().has_root());
    }

    #[tokio::test]
    async fn close_all_tells_the_root_and_every_prospect() {
        let shared = shared(4);
        let (_root, mut root_rx, _) = shared.register_root();
        let (_join, mut join_rx) = shared.admit_join().expect("room");
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
