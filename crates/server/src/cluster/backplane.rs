//! The [`Backplane`] seam: how instances of a cluster reach each other, and where root
//! leases live. Two implementations: [`InProcess`] (instances in one process: the
//! unit tests, and a library that runs several servers) and
//! [`RedisBackplane`](crate::cluster::RedisBackplane).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cluster::lease::{Epoch, InstanceTag, RootAt};

/// Why a backplane operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackplaneError {
    /// The broker cannot be reached, or did not answer in time.
    #[error("the cluster broker is unreachable: {0}")]
    Unreachable(String),
    /// Every instance tag is taken.
    #[error("no free instance tag")]
    NoFreeTag,
    /// The broker answered something unexpected.
    #[error("unexpected answer from the cluster broker: {0}")]
    Protocol(String),
}

/// Counters of what crossed the backplane, shared by an instance and its backplane.
#[derive(Debug, Default)]
pub struct BackplaneStats {
    /// Frames the broker took for another instance.
    pub published: AtomicU64,
    /// Frames received from other instances.
    pub received: AtomicU64,
    /// Frames no instance took (its instance is gone), and frames received for a
    /// destination that does not exist here.
    pub undeliverable: AtomicU64,
    /// Frames dropped because the broker was unreachable or its queue was full.
    pub dropped_unreachable: AtomicU64,
}

impl BackplaneStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How the instances of a cluster reach each other.
///
/// An instance calls [`start`](Backplane::start) once; from then on every frame
/// published to its tag, and every broadcast, lands in its inbox.
/// [`publish`](Backplane::publish) is called on the relay's hot path: it never waits, keeps the
/// order of the frames given to it, and drops (and counts) what it cannot send rather
/// than queue without bound. Leases take the time of a broker round trip.
pub trait Backplane: Send + Sync + std::fmt::Debug + 'static {
    /// Leases a free instance tag (renewed by the backplane itself until it is
    /// dropped), subscribes to its own channel and to broadcasts, and delivers what
    /// arrives there to `inbox` (dropping and counting what does not fit).
    fn start(
        &self,
        inbox: mpsc::Sender<Vec<u8>>,
        stats: Arc<BackplaneStats>,
    ) -> BoxFuture<'_, Result<InstanceTag, BackplaneError>>;

    /// Sends `frame` to the instance `to`, in order with the frames before it. Returns
    /// whether it was taken (false: dropped and counted).
    fn publish(&self, to: InstanceTag, frame: Vec<u8>) -> bool;

    /// Sends `frame` to every instance (root events: rare).
    fn broadcast(&self, frame: Vec<u8>) -> bool;

    /// Claims the root lease of `overlay` for `holder`, whoever held it: returns the new
    /// lease and the one it replaced.
    fn claim_root(
        &self,
        overlay: &str,
        holder: InstanceTag,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(RootAt, Option<RootAt>), BackplaneError>>;

    /// Claims the root lease of `overlay` for `holder` only if nobody holds it (a standby
    /// taking over a root that is gone everywhere): the new lease, or `None` when
    /// another instance was first.
    fn claim_free_root(
        &self,
        overlay: &str,
        holder: InstanceTag,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<RootAt>, BackplaneError>>;

    /// Renews the lease `at` if it is still the overlay's lease (or, when the broker
    /// lost it, takes it again); false when another instance holds it now.
    fn renew_root(
        &self,
        overlay: &str,
        at: RootAt,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BackplaneError>>;

    /// Deletes the lease `at` if it is still the overlay's lease.
    fn release_root(&self, overlay: &str, at: RootAt) -> BoxFuture<'_, Result<(), BackplaneError>>;

    /// Reads the root leases of these overlays.
    fn roots(
        &self,
        overlays: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Option<RootAt>>, BackplaneError>>;

    /// Whether the broker answered lately.
    fn reachable(&self) -> bool;
}

/// Instances of one process joined without a broker: what the unit tests use, with
/// several simulated instances. Clone it into each instance; every clone shares one
/// hub. [`InProcess::set_reachable`] simulates a broker outage.
#[derive(Debug, Clone, Default)]
pub struct InProcess {
    hub: Arc<Hub>,
    /// This clone's tag and counters, once started.
    me: Arc<Mutex<Option<Me>>>,
    /// Killed: every operation of this clone fails.
    dead: Arc<AtomicBool>,
}

/// A started instance: its tag and counters.
type Me = (InstanceTag, Arc<BackplaneStats>);

#[derive(Debug, Default)]
struct Hub {
    state: Mutex<HubState>,
    down: AtomicBool,
}

#[derive(Debug, Default)]
struct HubState {
    next_tag: u16,
    instances: HashMap<InstanceTag, (mpsc::Sender<Vec<u8>>, Arc<BackplaneStats>)>,
    leases: HashMap<String, (RootAt, Instant)>,
    epochs: HashMap<String, Epoch>,
}

impl HubState {
    /// Gives `overlay`'s lease to `holder` with the next epoch, whoever held it.
    fn take_lease(&mut self, overlay: String, holder: InstanceTag, ttl: Duration) -> RootAt {
        let epoch = self.epochs.entry(overlay.clone()).or_default();
        *epoch += 1;
        let at = RootAt {
            instance: holder,
            epoch: *epoch,
        };
        self.leases.insert(overlay, (at, Instant::now() + ttl));
        at
    }

    fn lease(&mut self, overlay: &str) -> Option<RootAt> {
        let (at, expires) = *self.leases.get(overlay)?;
        if Instant::now() >= expires {
            self.leases.remove(overlay);
            return None;
        }
        Some(at)
    }
}

impl InProcess {
    /// A hub with no instance yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Another instance's handle on the same hub (not started).
    #[must_use]
    pub fn instance(&self) -> Self {
        Self {
            hub: Arc::clone(&self.hub),
            me: Arc::default(),
            dead: Arc::default(),
        }
    }

    /// Simulates the broker going down (false) and coming back (true): while down,
    /// publishes are dropped and lease operations fail.
    pub fn set_reachable(&self, reachable: bool) {
        self.hub.down.store(!reachable, Ordering::Release);
    }

    /// Simulates the death of this instance: it leaves the hub and can do nothing
    /// more; its leases stay until they expire.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::Release);
        if let Some((tag, _)) = self.me() {
            self.hub.state().instances.remove(&tag);
        }
    }

    fn me(&self) -> Option<Me> {
        self.me
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counts one sent frame as published, undeliverable or dropped.
    fn count(&self, outcome: Result<bool, BackplaneError>) -> bool {
        if let Some((_, stats)) = self.me() {
            BackplaneStats::bump(match outcome {
                Ok(true) => &stats.published,
                Ok(false) => &stats.undeliverable,
                Err(_) => &stats.dropped_unreachable,
            });
        }
        matches!(outcome, Ok(true))
    }

    fn check(&self) -> Result<(), BackplaneError> {
        if self.hub.down.load(Ordering::Acquire) || self.dead.load(Ordering::Acquire) {
            Err(BackplaneError::Unreachable("simulated outage".into()))
        } else {
            Ok(())
        }
    }

    fn deliver(&self, to: InstanceTag, frame: Vec<u8>, state: &HubState, count: bool) -> bool {
        let Some((inbox, stats)) = state.instances.get(&to) else {
            return false;
        };
        let taken = inbox.try_send(frame).is_ok();
        if taken && count {
            BackplaneStats::bump(&stats.received);
        }
        taken
    }
}

impl Hub {
    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backplane for InProcess {
    fn start(
        &self,
        inbox: mpsc::Sender<Vec<u8>>,
        stats: Arc<BackplaneStats>,
    ) -> BoxFuture<'_, Result<InstanceTag, BackplaneError>> {
        Box::pin(async move {
            self.check()?;
            let mut state = self.hub.state();
            state.next_tag = state
                .next_tag
                .checked_add(1)
                .ok_or(BackplaneError::NoFreeTag)?;
            let tag = InstanceTag(state.next_tag);
            let stats_clone = Arc::clone(&stats);
            state.instances.insert(tag, (inbox, stats));
            *self.me.lock().unwrap_or_else(PoisonError::into_inner) = Some((tag, stats_clone));
            Ok(tag)
        })
    }

    fn publish(&self, to: InstanceTag, frame: Vec<u8>) -> bool {
        let outcome = self.check().map(|()| {
            let state = self.hub.state();
            self.deliver(to, frame, &state, true)
        });
        self.count(outcome)
    }

    fn broadcast(&self, frame: Vec<u8>) -> bool {
        if self.check().is_err() {
            return false;
        }
        let state = self.hub.state();
        let me = self.me().map(|(tag, _)| tag);
        for &tag in state.instances.keys() {
            if Some(tag) != me {
                self.deliver(tag, frame.clone(), &state, false);
            }
        }
        true
    }

    fn claim_root(
        &self,
        overlay: &str,
        holder: InstanceTag,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(RootAt, Option<RootAt>), BackplaneError>> {
        let overlay = overlay.to_owned();
        Box::pin(async move {
            self.check()?;
            let mut state = self.hub.state();
            let old = state.lease(&overlay);
            Ok((state.take_lease(overlay, holder, ttl), old))
        })
    }

    fn claim_free_root(
        &self,
        overlay: &str,
        holder: InstanceTag,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<RootAt>, BackplaneError>> {
        let overlay = overlay.to_owned();
        Box::pin(async move {
            self.check()?;
            let mut state = self.hub.state();
            if state.lease(&overlay).is_some() {
                return Ok(None);
            }
            Ok(Some(state.take_lease(overlay, holder, ttl)))
        })
    }

    fn renew_root(
        &self,
        overlay: &str,
        at: RootAt,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BackplaneError>> {
        let overlay = overlay.to_owned();
        Box::pin(async move {
            self.check()?;
            let mut state = self.hub.state();
            match state.lease(&overlay) {
                Some(now) if now != at => Ok(false),
                _ => {
                    state.leases.insert(overlay, (at, Instant::now() + ttl));
                    Ok(true)
                }
            }
        })
    }

    fn release_root(&self, overlay: &str, at: RootAt) -> BoxFuture<'_, Result<(), BackplaneError>> {
        let overlay = overlay.to_owned();
        Box::pin(async move {
            self.check()?;
            let mut state = self.hub.state();
            if state.lease(&overlay) == Some(at) {
                state.leases.remove(&overlay);
            }
            Ok(())
        })
    }

    fn roots(
        &self,
        overlays: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Option<RootAt>>, BackplaneError>> {
        Box::pin(async move {
            self.check()?;
            let mut state = self.hub.state();
            Ok(overlays.iter().map(|o| state.lease(o)).collect())
        })
    }

    fn reachable(&self) -> bool {
        self.check().is_ok()
    }
}
