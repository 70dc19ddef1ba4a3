//! A config reload: which settings of a new [`Config`] apply while the server runs,
//! and applying them.
//!
//! [`plan`] is IO-free. From the running configuration and the new one it makes the
//! configuration to put in force, and it names the settings that changed but apply only
//! after a restart. Those keep their running values, so the configuration in force
//! always describes the server as it runs. [`AppState::reload`] applies the plan: it
//! swaps the configuration, gives every overlay its new secret and limits, adds the
//! overlays configured anew, and removes the ones no longer configured. The sockets of
//! a removed overlay are closed with 1001, as on shutdown.
//!
//! What applies to what:
//! - A secret is checked when a root connects. From the reload on, a new root must
//!   present the new secret. A root already connected stays connected, and so do
//!   standby roots, which may still be promoted.
//! - A limit of `/join` sockets (`timeout`, `max_prospects`, queue sizes,
//!   `max_frame_bytes`, the rates) applies to sockets admitted after the reload. Sockets
//!   already open keep theirs, and are never closed for being above a lowered cap.
//! - Everything read per request (token key, `join_auth`, `public`, TURN, the admission
//!   rules of [`Edge`]) applies to the next request. `drain_timeout` and
//!   `shutdown_grace` apply to the next shutdown.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::{AppState, Overlay, OverlaySettings, ice_throttle, root_share};
use crate::Error;
use crate::config::{Config, OverlayConfig};
use crate::edge::Edge;
use crate::handle::Command;
use crate::route::DEFAULT_OVERLAY;
use crate::tls::Tls;

/// What a reload changed, by overlay name and setting name. It never holds a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// Settings that changed but apply only after a restart. They keep their running
    /// values.
    pub restart: Vec<&'static str>,
    /// Overlays configured anew, now served.
    pub added: Vec<String>,
    /// Overlays no longer configured. They are gone, and their sockets were told to
    /// close with 1001.
    pub removed: Vec<String>,
    /// Overlays whose root secret changed ([`DEFAULT_OVERLAY`] for the default one).
    /// Each one's connected root, if any, stays connected.
    pub secret_changed: Vec<String>,
}

/// The configuration to put in force when `new` replaces `running`, and the names of
/// the settings that differ but apply only after a restart. Those settings keep their
/// running values in the returned configuration.
pub(crate) fn plan(running: &Config, new: &Config) -> (Config, Vec<&'static str>) {
    // Every field is named, so that a new field must be sorted into one group or the
    // other before this compiles.
    let Config {
        // Live: read when a root connects, per request, per new socket, or at shutdown.
        secret: _,
        overlays: _,
        token_key: _,
        join_auth: _,
        dynamic_overlays: _,
        turn: _,
        max_overlays: _,
        timeout: _,
        heartbeat_interval: _,
        root_ping_timeout: _,
        public: _,
        max_frame_bytes: _,
        max_prospects: _,
        rate_per_second: _,
        rate_burst: _,
        max_bad_messages: _,
        join_queue: _,
        root_queue: _,
        join_queue_bytes: _,
        root_queue_bytes: _,
        root_bytes_per_client: _,
        write_timeout: _,
        shutdown_grace: _,
        drain_timeout: _,
        metrics_allow: _,
        max_joins_per_ip: _,
        join_rate_per_ip: _,
        trusted_proxies: _,
        allowed_origins: _,
        require_origin: _,
        // Fixed at start. The id generators are seeded once. The byte budgets and the
        // pending-connection caps are read on every message or connection, and a fixed
        // value keeps those paths free of a shared load. TLS on or off decides how the
        // accept loop treats every connection.
        seed,
        tls,
        max_queued_bytes,
        max_reading_bytes,
        max_pending_connections,
        max_pending_per_client,
    } = new;
    let mut next = new.clone();
    let mut restart = Vec::new();
    if *seed != running.seed {
        restart.push("seed");
        next.seed = running.seed;
    }
    if tls.is_some() != running.tls.is_some() {
        restart.push("tls (on or off)");
        next.tls.clone_from(&running.tls);
    }
    let sizes = [
        (
            "max_queued_bytes",
            *max_queued_bytes,
            running.max_queued_bytes,
            &mut next.max_queued_bytes,
        ),
        (
            "max_reading_bytes",
            *max_reading_bytes,
            running.max_reading_bytes,
            &mut next.max_reading_bytes,
        ),
        (
            "max_pending_connections",
            *max_pending_connections,
            running.max_pending_connections,
            &mut next.max_pending_connections,
        ),
        (
            "max_pending_per_client",
            *max_pending_per_client,
            running.max_pending_per_client,
            &mut next.max_pending_per_client,
        ),
    ];
    for (name, new, running, kept) in sizes {
        if new != running {
            restart.push(name);
            *kept = running;
        }
    }
    (next, restart)
}

impl AppState {
    /// Applies `config` to the running server.
    ///
    /// Everything applies at once: the secrets, the overlays and their limits, the
    /// token key, `join_auth`, the per-socket limits and rates, `public`, TURN, the
    /// admission rules, the drain and shutdown timeouts, and the TLS files (read again,
    /// also when only their content changed). Except `seed`, TLS turned on or off,
    /// `max_queued_bytes`, `max_reading_bytes` and the pending-connection caps: when
    /// they differ, they keep their running values and [`Reloaded::restart`] names
    /// them.
    ///
    /// A new secret is asked of roots that connect from now on; a connected root stays,
    /// and so do standby roots (which may still be promoted).
    /// New limits apply to sockets admitted from now on; open sockets stay, even above
    /// a lowered cap. An overlay no longer configured is removed at once (its paths
    /// answer 404) and its sockets are closed with 1001 "overlay removed". A dynamic
    /// overlay (made by a root token) stays until it empties, or becomes a configured
    /// one when the configuration names it.
    ///
    /// Logs overlays added and removed and secrets changed, by name only.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid `config`, [`Error::Tls`] for unusable TLS files,
    /// [`Error::Seed`] if a new overlay cannot seed its ids. Then nothing changes.
    pub fn reload(&self, config: &Config) -> Result<Reloaded, Error> {
        config.validate()?;
        let shared = &self.0;
        let _one_at_a_time = shared
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (next, restart) = plan(&shared.config(), config);
        // First everything that can fail, changing nothing.
        let tls = match (&shared.tls, &next.tls) {
            (Some(_), Some(files)) => Some(Tls::prepare(files.clone())?),
            _ => None,
        };
        let mut overlays = shared.overlays();
        let tag = shared.cluster.as_ref().map(|c| c.tag.0);
        let mut fresh = Vec::new();
        for (name, overlay) in &next.overlays {
            if !overlays.contains_key(name.as_str()) {
                fresh.push(Arc::new(Overlay::new(&next, name, overlay, false, tag)?));
            }
        }
        // Then the changes, which cannot fail. The map stays locked, so no overlay is
        // created or removed meanwhile.
        if let (Some(current), Some(prepared)) = (&shared.tls, tls) {
            current.install(prepared);
        }
        shared.set_edge(Edge::of(&next));
        let ice_rate = |config: &Config| config.turn.as_ref().map(|t| t.requests_per_minute);
        if ice_rate(&next) != ice_rate(&shared.config()) {
            // Counts start afresh: at worst a client gets one more minute's worth.
            *shared.ice_rate() = ice_throttle(&next);
        }
        let next = Arc::new(next);
        shared.config.store(Arc::clone(&next));
        let mut reloaded = Reloaded {
            restart,
            ..Reloaded::default()
        };
        let default = OverlayConfig::new(next.secret.clone());
        let mut removed = Vec::new();
        overlays.retain(|name, overlay| {
            let configured = if &**name == DEFAULT_OVERLAY {
                Some(&default)
            } else {
                next.overlays.get(&**name)
            };
            let settings = match configured {
                Some(configured) => {
                    // A dynamic overlay configured now stays when it empties.
                    overlay.dynamic.store(false, Ordering::Release);
                    OverlaySettings::of(&next, configured)
                }
                None if overlay.is_dynamic() => {
                    OverlaySettings::of(&next, &OverlayConfig::default())
                }
                None => {
                    removed.push(Arc::clone(overlay));
                    return false;
                }
            };
            if overlay.update(&next, settings) {
                reloaded.secret_changed.push(name.to_string());
            }
            true
        });
        for overlay in fresh {
            tracing::info!(overlay = %overlay.name, "overlay added");
            reloaded.added.push(overlay.name.to_string());
            overlays.insert(Arc::clone(&overlay.name), overlay);
        }
        for overlay in removed {
            overlay.retire();
            reloaded.removed.push(overlay.name.to_string());
        }
        drop(overlays);
        reloaded.added.sort();
        reloaded.removed.sort();
        reloaded.secret_changed.sort();
        Ok(reloaded)
    }
}

impl Overlay {
    /// Puts `settings` in force, within the server's `config`. Returns whether the
    /// secret changed.
    fn update(&self, config: &Config, settings: OverlaySettings) -> bool {
        self.root_shares.set_limit(root_share(config));
        let old = self.settings.load_full();
        if *old == settings {
            return false;
        }
        let secret_changed = old.secret != settings.secret;
        let max_prospects = settings.max_prospects;
        self.settings.store(Arc::new(settings));
        let mut slot = self.registry();
        slot.registry.set_max_prospects(max_prospects);
        if secret_changed {
            if slot.has_root() || slot.standby_count() > 0 {
                tracing::info!(
                    overlay = %self.name,
                    standby_roots = slot.standby_count(),
                    "root secret changed: new roots must present the new one; the connected root and standby roots, admitted under the previous credentials, stay connected"
                );
            } else {
                tracing::info!(overlay = %self.name, "root secret changed");
            }
        }
        secret_changed
    }

    /// Takes the overlay out of service (it is no longer in the map): nothing registers
    /// in it any more, and its sockets are told to close with 1001.
    fn retire(&self) {
        let mut slot = self.registry();
        slot.retired = true;
        let mut told = 0_usize;
        for handle in slot.handles() {
            let _ = handle.tx.control(Command::Removed);
            told += 1;
        }
        tracing::info!(overlay = %self.name, sockets = told, "overlay removed: its sockets are closed");
    }
}

#[cfg(test)]
mod tests;
