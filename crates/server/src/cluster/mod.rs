//! Several server instances behind a load balancer, joined by a [`Backplane`].
//!
//! - Every id an instance hands out starts with its [`InstanceTag`] (four hex
//!   characters, leased from the backplane), so a message for a `/join` socket on
//!   another instance goes straight to that instance's channel: one publish, no lookup,
//!   and only that instance is woken.
//! - Each overlay's root is a lease with an epoch ([`lease`]); every instance keeps where
//!   the root is in the overlay's slot (events from the claiming instance, corrected by
//!   reading the leases every third of their time to live), so a root-bound message
//!   costs one publish too.
//! - What crosses is the relayed text as the sending instance rewrote it (`origin` set by
//!   the instance owning the sender), behind a small binary header (`frame.rs`).
//! - Without a backplane none of this runs: a single server pays one `Option` check per
//!   message.
//!
//! The decisions are IO-free (`frame.rs`, [`lease`]); this module applies them to the
//! server's state, and spawns the two tasks of an instance: its inbox and its leases.

mod backplane;
pub(crate) mod frame;
pub mod lease;
mod redis;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bootstrap_protocol::PeerId;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use backplane::{Backplane, BackplaneError, BackplaneStats, InProcess};
pub use lease::{Epoch, InstanceTag, RootAt};
pub use redis::{RedisBackplane, RedisOptions};

use bootstrap_protocol::paths::PROMOTED;

use crate::handle::{Command, Outgoing};
use crate::registry::RootTicket;
use crate::state::{Overlay, Shared};
use crate::stats::Stats;
use frame::{Body, Frame};
use lease::{Held, Renewal, on_renewal, replaces};

/// Frames received and not yet handled, at most (at most 128 MiB of 64 KiB frames;
/// signaling frames are a few KiB); more are dropped and counted.
const INBOX: usize = 2048;

/// Default time to live of a root lease.
pub const DEFAULT_ROOT_LEASE: Duration = Duration::from_secs(6);

/// One instance's place in a cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// This instance's tag.
    pub(crate) tag: InstanceTag,
    pub(crate) backplane: Arc<dyn Backplane>,
    pub(crate) stats: Arc<BackplaneStats>,
    /// Time to live of the root leases this instance holds.
    pub(crate) root_lease: Duration,
}

/// An instance's cluster state in `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterHealth {
    /// This instance's tag: the first four hex characters of its ids.
    pub instance: String,
    /// Whether the broker answered lately.
    pub broker_reachable: bool,
    /// Frames the broker took for other instances.
    pub published: u64,
    /// Frames received from other instances.
    pub received: u64,
    /// Frames no instance took, or received for a destination that does not exist.
    pub undeliverable: u64,
    /// Frames dropped because the broker was unreachable or its queue was full.
    pub dropped_unreachable: u64,
}

impl Cluster {
    pub(crate) fn health(&self) -> ClusterHealth {
        let s = &self.stats;
        ClusterHealth {
            instance: self.tag.to_string(),
            broker_reachable: self.backplane.reachable(),
            published: s.published.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            undeliverable: s.undeliverable.load(Ordering::Relaxed),
            dropped_unreachable: s.dropped_unreachable.load(Ordering::Relaxed),
        }
    }

    /// Joins the cluster: leases a tag and subscribes. Returns the cluster and the inbox
    /// its frames arrive in.
    pub(crate) async fn join(
        backplane: Arc<dyn Backplane>,
        root_lease: Duration,
    ) -> Result<(Self, mpsc::Receiver<Vec<u8>>), BackplaneError> {
        let (tx, rx) = mpsc::channel(INBOX);
        let stats = Arc::new(BackplaneStats::default());
        let tag = backplane.start(tx, Arc::clone(&stats)).await?;
        info!(instance = %tag, "joined the cluster");
        Ok((
            Self {
                tag,
                backplane,
                stats,
                root_lease,
            },
            rx,
        ))
    }

    /// Sends a message for `to`, a `/join` socket on another instance.
    pub(crate) fn to_peer(&self, overlay: &str, to: &PeerId, text: &str) -> bool {
        let frame = Frame::to_peer(self.tag, overlay, to, text);
        self.backplane.publish(InstanceTag(to.tag()), frame)
    }

    /// Sends a message for the root of `overlay`, on the instance `at`.
    pub(crate) fn to_root(&self, at: RootAt, overlay: &str, client: IpAddr, text: &str) -> bool {
        let frame = Frame::to_root(self.tag, overlay, client, text);
        self.backplane.publish(at.instance, frame)
    }

    /// Whether `id` belongs to another instance.
    pub(crate) fn is_remote(&self, id: &PeerId) -> bool {
        id.tag() != self.tag.0
    }
}

/// Handles frames from the inbox until the server shuts down.
pub(crate) async fn inbox_task(shared: Arc<Shared>, mut rx: mpsc::Receiver<Vec<u8>>) {
    let token = shared.shutdown.clone();
    loop {
        let bytes = tokio::select! {
            () = token.cancelled() => return,
            bytes = rx.recv() => match bytes {
                Some(bytes) => bytes,
                None => return,
            },
        };
        on_frame(&shared, &bytes);
    }
}

/// One frame from another instance.
pub(crate) fn on_frame(shared: &Arc<Shared>, bytes: &[u8]) {
    let Some(cluster) = shared.cluster.as_deref() else {
        return;
    };
    let frame = match Frame::decode(bytes) {
        Ok(frame) => frame,
        Err(error) => {
            warn!(%error, "invalid frame from the cluster broker; dropped");
            return;
        }
    };
    let Some(overlay) = shared.overlay(frame.overlay) else {
        if matches!(frame.body, Body::ToPeer(..) | Body::ToRoot(..)) {
            BackplaneStats::bump(&cluster.stats.undeliverable);
            debug!(
                overlay = frame.overlay,
                "frame for an overlay this instance does not have; dropped"
            );
        }
        return;
    };
    let bump = |counter: fn(&Stats) -> &std::sync::atomic::AtomicU64| {
        Stats::bump(counter(&overlay.stats));
        Stats::bump(counter(&shared.stats));
    };
    match frame.body {
        Body::ToPeer(id, text) => {
            let sent = overlay
                .registry()
                .route(&bootstrap_protocol::Destination::Peer(id))
                .map(|handle| handle.tx.try_send(Outgoing::from(text.to_owned())));
            match sent {
                Ok(Ok(())) => bump(|s| &s.relayed_to_peer),
                Ok(Err(_)) => bump(|s| &s.dropped_queue_full),
                Err(_) => {
                    BackplaneStats::bump(&cluster.stats.undeliverable);
                    bump(|s| &s.dropped_unknown_destination);
                }
            }
        }
        Body::ToRoot(client, text) => {
            let Some(share) = overlay.root_shares.take(client, text.len()) else {
                bump(|s| &s.dropped_root_share);
                return;
            };
            let outgoing = Outgoing {
                text: text.to_owned(),
                _share: Some(share),
            };
            let sent = overlay
                .registry()
                .route(&bootstrap_protocol::Destination::Root)
                .map(|handle| handle.tx.try_send(outgoing));
            match sent {
                Ok(Ok(())) => bump(|s| &s.relayed_to_root),
                Ok(Err(_)) => bump(|s| &s.dropped_queue_full),
                Err(_) => {
                    BackplaneStats::bump(&cluster.stats.undeliverable);
                    bump(|s| &s.dropped_no_root);
                }
            }
        }
        Body::RootClaimed(at) => {
            if at.instance != cluster.tag {
                overlay.registry().remote_root.claimed(at);
            }
        }
        Body::RootGone(at) => {
            overlay.registry().remote_root.gone(at);
            // A standby root here takes over once no root is known anywhere.
            promote_standby(shared, &overlay);
        }
        Body::RootReplaced(at) => {
            let mut slot = overlay.registry();
            if replaces(slot.held, at) {
                slot.held = None;
                info!(overlay = %overlay.name, "the root connected to another instance; closing ours as replaced");
                if let Ok(root) = slot.route(&bootstrap_protocol::Destination::Root) {
                    let _ = root.tx.control(Command::Replaced);
                }
            }
        }
    }
}

/// A root registered here with `ticket`: claims the overlay's lease, tells the
/// instance that held it (its root is closed there as replaced) and everyone else.
pub(crate) fn claim(shared: &Shared, overlay: &Arc<Overlay>, ticket: RootTicket) {
    let Some(cluster) = shared.cluster.clone() else {
        return;
    };
    let overlay = Arc::clone(overlay);
    shared.tracker.spawn(async move {
        let claimed = cluster
            .backplane
            .claim_root(&overlay.name, cluster.tag, cluster.root_lease)
            .await;
        let (at, old) = match claimed {
            Ok(claimed) => claimed,
            Err(error) => {
                // Same-instance joins go on; the next renewal takes the lease.
                warn!(overlay = %overlay.name, %error, "cannot claim the root lease now");
                let mut slot = overlay.registry();
                if slot.root_ticket() == Some(ticket) {
                    slot.held = Some(Held {
                        ticket,
                        at: RootAt {
                            instance: cluster.tag,
                            epoch: 0,
                        },
                    });
                }
                return;
            }
        };
        {
            let mut slot = overlay.registry();
            if slot.root_ticket() != Some(ticket) {
                // Replaced or gone meanwhile: its successor claims (or already did).
                return;
            }
            slot.held = Some(Held { ticket, at });
            slot.remote_root.read(None);
        }
        if let Some(old) = old.filter(|old| old.instance != cluster.tag) {
            cluster.backplane.publish(
                old.instance,
                Frame::root_event(cluster.tag, &overlay.name, &Body::RootReplaced(old)),
            );
        }
        cluster.backplane.broadcast(Frame::root_event(
            cluster.tag,
            &overlay.name,
            &Body::RootClaimed(at),
        ));
        info!(overlay = %overlay.name, epoch = at.epoch, "holding the root lease");
    });
}

/// When no root of `overlay` is known anywhere and a standby root waits here: takes the
/// overlay's lease if it is free, and only then promotes the oldest standby, so two
/// instances never both promote one. Another instance first (or the broker down): the
/// standby keeps waiting, and the next event or lease read tries again.
pub(crate) fn promote_standby(shared: &Arc<Shared>, overlay: &Arc<Overlay>) {
    let Some(cluster) = shared.cluster.clone() else {
        return;
    };
    {
        let mut slot = overlay.registry();
        if slot.promoting
            || slot.is_retired()
            || slot.has_root()
            || slot.standby_count() == 0
            || slot.remote_root.get().is_some()
            || !shared.is_ready()
        {
            return;
        }
        slot.promoting = true;
    }
    let (shared, overlay) = (Arc::clone(shared), Arc::clone(overlay));
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        let claimed = cluster
            .backplane
            .claim_free_root(&overlay.name, cluster.tag, cluster.root_lease)
            .await;
        let promoted = {
            let mut slot = overlay.registry();
            slot.promoting = false;
            match claimed {
                Ok(Some(at)) => match slot.registry.promote() {
                    Some((ticket, standby)) => {
                        let _ = standby.tx.try_send(Outgoing::from(PROMOTED.to_owned()));
                        slot.held = Some(Held { ticket, at });
                        slot.remote_root.read(None);
                        Ok(at)
                    }
                    // Gone meanwhile (or a root came, holding its own lease).
                    None => Err(slot.held.is_none().then_some(at)),
                },
                Ok(None) => Err(None),
                Err(error) => {
                    debug!(overlay = %overlay.name, %error, "cannot take the free root lease now");
                    Err(None)
                }
            }
        };
        match promoted {
            Ok(at) => {
                shared.count_promotion(&overlay);
                cluster.backplane.broadcast(Frame::root_event(
                    cluster.tag,
                    &overlay.name,
                    &Body::RootClaimed(at),
                ));
                info!(overlay = %overlay.name, epoch = at.epoch, "holding the root lease for a promoted standby");
            }
            // Nobody to hold it: give the lease back.
            Err(Some(at)) => {
                let _ = cluster.backplane.release_root(&overlay.name, at).await;
            }
            Err(None) => {}
        }
    });
}

/// The root registered with `ticket` left: releases its lease, if it holds one.
pub(crate) fn release(shared: &Shared, overlay: &Arc<Overlay>, ticket: RootTicket) {
    let Some(cluster) = shared.cluster.clone() else {
        return;
    };
    let held = {
        let mut slot = overlay.registry();
        match slot.held {
            Some(held) if held.ticket == ticket => slot.held.take(),
            _ => None,
        }
    };
    let Some(held) = held else {
        return;
    };
    let name = Arc::clone(&overlay.name);
    shared.tracker.spawn(async move {
        if let Err(error) = cluster.backplane.release_root(&name, held.at).await {
            warn!(overlay = %name, %error, "cannot release the root lease; it lapses by itself");
        }
        cluster.backplane.broadcast(Frame::root_event(
            cluster.tag,
            &name,
            &Body::RootGone(held.at),
        ));
    });
}

/// Renews the leases held here and reads where every overlay's root is, every third of
/// the lease's time to live, until the server shuts down.
pub(crate) async fn lease_task(shared: Arc<Shared>) {
    let Some(cluster) = shared.cluster.clone() else {
        return;
    };
    let period = cluster.root_lease / 3;
    let token = shared.shutdown.clone();
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        refresh(&shared, &cluster).await;
    }
}

/// One round of renewals and lease reads.
pub(crate) async fn refresh(shared: &Arc<Shared>, cluster: &Cluster) {
    let overlays = shared.overlay_list();
    for overlay in &overlays {
        let held = overlay.registry().held;
        let Some(held) = held else { continue };
        let renewed = if held.at.epoch == 0 {
            // The claim failed (broker down): claim now.
            cluster
                .backplane
                .claim_root(&overlay.name, cluster.tag, cluster.root_lease)
                .await
                .map(|(at, _)| {
                    let mut slot = overlay.registry();
                    if slot.held == Some(held) {
                        slot.held = Some(Held {
                            ticket: held.ticket,
                            at,
                        });
                    }
                    cluster.backplane.broadcast(Frame::root_event(
                        cluster.tag,
                        &overlay.name,
                        &Body::RootClaimed(at),
                    ));
                    true
                })
        } else {
            cluster
                .backplane
                .renew_root(&overlay.name, held.at, cluster.root_lease)
                .await
        };
        match renewed.map(on_renewal) {
            Ok(Renewal::Kept) => {}
            Ok(Renewal::Lost) => {
                let mut slot = overlay.registry();
                if slot.held == Some(held) {
                    slot.held = None;
                    info!(overlay = %overlay.name, "the root lease is held elsewhere; closing ours as replaced");
                    if let Ok(root) = slot.route(&bootstrap_protocol::Destination::Root) {
                        let _ = root.tx.control(Command::Replaced);
                    }
                }
            }
            Err(error) => {
                debug!(overlay = %overlay.name, %error, "cannot renew the root lease now")
            }
        }
    }
    let names: Vec<String> = overlays.iter().map(|o| o.name.to_string()).collect();
    match cluster.backplane.roots(names).await {
        Ok(leases) => {
            for (overlay, lease) in overlays.iter().zip(leases) {
                let remote = lease.filter(|at| at.instance != cluster.tag);
                overlay.registry().remote_root.read(remote);
                promote_standby(shared, overlay);
            }
        }
        Err(error) => debug!(%error, "cannot read the root leases now"),
    }
}

/// Hands the leases held here over at once (a graceful shutdown): releases them, so
/// other instances stop routing here, and closes the local roots and standby roots with
/// 1001 so they reconnect, through the load balancer, to another instance.
pub(crate) async fn hand_over(shared: &Shared) {
    let Some(cluster) = shared.cluster.clone() else {
        return;
    };
    for overlay in shared.overlay_list() {
        let held = {
            let mut slot = overlay.registry();
            let held = slot.held.take();
            if let Ok(root) = slot.route(&bootstrap_protocol::Destination::Root) {
                let _ = root.tx.control(Command::Shutdown);
            }
            // Standby roots too: they wait on another instance (this one promotes
            // nobody while it drains).
            for standby in slot.standbys() {
                let _ = standby.tx.control(Command::Shutdown);
            }
            held
        };
        let Some(held) = held else { continue };
        if let Err(error) = cluster.backplane.release_root(&overlay.name, held.at).await {
            warn!(overlay = %overlay.name, %error, "cannot release the root lease; it lapses by itself");
        }
        cluster.backplane.broadcast(Frame::root_event(
            cluster.tag,
            &overlay.name,
            &Body::RootGone(held.at),
        ));
        info!(overlay = %overlay.name, "root lease handed over");
    }
}
