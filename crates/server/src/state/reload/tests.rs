use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt as _;

use super::*;
use crate::auth::TokenKey;
use crate::queue::Received;
use crate::state::{NoOverlay, Refusal};

fn config() -> Config {
    let mut config = Config::new("old-secret");
    config.seed = Some(11);
    config
        .overlays
        .insert("a".into(), OverlayConfig::new("secret-a"));
    config
}

fn state(config: Config) -> AppState {
    AppState::new(config).expect("valid config")
}

fn key() -> Arc<TokenKey> {
    Arc::new(TokenKey::from_bytes(b"0123456789abcdef0123456789abcdef").expect("key"))
}

#[test]
fn the_plan_keeps_what_needs_a_restart_and_names_it() {
    let running = config();
    let (same, restart) = plan(&running, &running);
    assert!(restart.is_empty(), "{restart:?}");
    assert_eq!(format!("{same:?}"), format!("{running:?}"));

    let mut new = running.clone();
    new.secret = "new-secret".into();
    new.timeout = Duration::from_secs(3);
    new.max_prospects = 7;
    new.token_key = Some(key());
    new.seed = Some(12);
    new.max_queued_bytes = 1;
    new.max_reading_bytes = 2;
    new.max_pending_connections = 3;
    new.max_pending_per_client = 4;
    new.tls = Some(crate::TlsFiles {
        cert: "c".into(),
        key: "k".into(),
    });
    let (next, restart) = plan(&running, &new);
    assert_eq!(
        restart,
        [
            "seed",
            "tls (on or off)",
            "max_queued_bytes",
            "max_reading_bytes",
            "max_pending_connections",
            "max_pending_per_client"
        ]
    );
    // Kept at their running values...
    assert_eq!(next.seed, running.seed);
    assert!(next.tls.is_none());
    assert_eq!(
        (
            next.max_queued_bytes,
            next.max_reading_bytes,
            next.max_pending_connections,
            next.max_pending_per_client
        ),
        (
            running.max_queued_bytes,
            running.max_reading_bytes,
            running.max_pending_connections,
            running.max_pending_per_client
        )
    );
    // ...while the rest is the new configuration.
    assert_eq!(next.secret, "new-secret");
    assert_eq!(
        (next.timeout, next.max_prospects),
        (Duration::from_secs(3), 7)
    );
    assert!(next.token_key.is_some());
}

#[tokio::test]
async fn a_new_secret_refuses_the_old_one_and_keeps_the_connected_root() {
    let state = state(config());
    let shared = &state.0;
    let default = shared.overlay(DEFAULT_OVERLAY).expect("default");
    let a = shared.overlay("a").expect("a");
    assert!(default.secret_matches("old-secret"));
    let (_root, mut root_rx, _) = shared.register_root(&default, false).expect("open");

    let mut new = config();
    new.secret = "new-secret".into();
    new.overlays
        .insert("a".into(), OverlayConfig::new("secret-a2"));
    let reloaded = state.reload(&new).expect("valid");
    assert_eq!(reloaded.secret_changed, ["a", DEFAULT_OVERLAY]);
    assert!(reloaded.added.is_empty() && reloaded.removed.is_empty());
    assert!(reloaded.restart.is_empty(), "{:?}", reloaded.restart);
    assert!(!default.secret_matches("old-secret"));
    assert!(default.secret_matches("new-secret"));
    assert!(!a.secret_matches("secret-a") && a.secret_matches("secret-a2"));
    // The same overlay (its sockets, its ids), and its root was told nothing.
    assert!(Arc::ptr_eq(
        &default,
        &shared.overlay(DEFAULT_OVERLAY).expect("default")
    ));
    assert!(default.registry().has_root());
    assert!(root_rx.recv().now_or_never().is_none());
    // Reloading the same file again changes nothing.
    assert_eq!(state.reload(&new).expect("valid"), Reloaded::default());
}

#[tokio::test]
async fn a_removed_overlay_closes_its_sockets_and_a_new_one_is_served() {
    let state = state(config());
    let shared = &state.0;
    let a = shared.overlay("a").expect("a");
    let (root, mut root_rx, _) = shared.register_root(&a, false).expect("open");
    let (standby, mut standby_rx, _) = shared.register_root(&a, true).expect("open");
    assert!(
        matches!(standby_rx.recv().await, Some(Received::Message(_))),
        "\"standby\""
    );
    let (join, mut join_rx) = shared.admit_join(&a).expect("room");
    let mut new = config();
    new.overlays.remove("a");
    new.overlays
        .insert("b".into(), OverlayConfig::new("secret-b"));

    let reloaded = state.reload(&new).expect("valid");
    assert_eq!(
        (reloaded.added, reloaded.removed),
        (vec!["b".to_owned()], vec!["a".to_owned()])
    );
    assert!(shared.overlay("a").is_none(), "a is unknown now");
    let b = shared.overlay("b").expect("b is served");
    assert!(b.secret_matches("secret-b"));
    for rx in [&mut root_rx, &mut standby_rx, &mut join_rx] {
        assert_eq!(rx.recv().await, Some(Received::Control(Command::Removed)));
    }
    // A request that found `a` just before the reload registers nothing.
    assert!(shared.register_root(&a, false).is_none());
    assert!(shared.register_root(&a, true).is_none());
    assert_eq!(shared.admit_join(&a).err(), Some(Refusal::OverlayFull));
    // The root leaving a removed overlay promotes no standby.
    drop(root);
    assert!(
        standby_rx.recv().now_or_never().is_none(),
        "a standby of a removed overlay was promoted"
    );
    drop((standby, join));
    assert_eq!(shared.prospects.load(Ordering::Acquire), 0);
    let names: Vec<_> = state
        .health()
        .overlays
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["b", DEFAULT_OVERLAY]);
    shared.admit_join(&b).expect("b admits");
}

#[tokio::test]
async fn lowered_limits_apply_to_new_admissions_and_keep_open_sockets() {
    let mut start = config();
    start.max_prospects = 10;
    let state = state(start.clone());
    let shared = &state.0;
    let (default, a) = (
        shared.overlay(DEFAULT_OVERLAY).expect("default"),
        shared.overlay("a").expect("a"),
    );
    let _open: Vec<_> = (0..3)
        .map(|_| shared.admit_join(&default).expect("room"))
        .collect();
    let (_in_a, _) = shared.admit_join(&a).expect("room");

    let mut new = start;
    new.max_prospects = 5;
    new.timeout = Duration::from_secs(2);
    new.overlays.insert(
        "a".into(),
        OverlayConfig {
            secret: "secret-a".into(),
            max_prospects: Some(1),
            timeout: Some(Duration::from_secs(9)),
        },
    );
    let reloaded = state.reload(&new).expect("valid");
    assert!(reloaded.secret_changed.is_empty());
    assert_eq!(
        (default.timeout(), a.timeout()),
        (Duration::from_secs(2), Duration::from_secs(9))
    );
    // `a` already has its one socket; the server has 4 of 5.
    assert_eq!(shared.admit_join(&a).err(), Some(Refusal::OverlayFull));
    let (_fifth, _) = shared.admit_join(&default).expect("the fifth");
    assert_eq!(shared.admit_join(&default).err(), Some(Refusal::ServerFull));
    // Lowered below what is open: nothing is closed, nothing more admitted.
    new.max_prospects = 2;
    state.reload(&new).expect("valid");
    assert_eq!(shared.prospects.load(Ordering::Acquire), 5);
    assert_eq!(shared.admit_join(&default).err(), Some(Refusal::ServerFull));
    let health = state.health();
    assert_eq!((health.prospects, health.max_prospects), (5, 2));
    let a_health = health.overlays.iter().find(|o| o.name == "a").expect("a");
    assert_eq!(a_health.max_prospects, 1);
    // Frames and queues of new sockets come from the new configuration.
    assert_eq!(shared.config().timeout, Duration::from_secs(2));
}

#[tokio::test]
async fn an_invalid_configuration_changes_nothing() {
    let state = state(config());
    let shared = &state.0;
    let before = format!("{:?}", shared.config());
    let mut new = config();
    new.secret = "new-secret".into();
    new.overlays.remove("a");
    new.overlays
        .insert("b".into(), OverlayConfig::new("secret-b"));
    new.max_prospects = 1;
    new.timeout = Duration::ZERO;
    let error = state.reload(&new).expect_err("timeout 0");
    assert!(matches!(error, Error::Config(_)), "{error}");
    // Nor do TLS files that cannot be read, on a server with TLS: tested in the binary.
    assert_eq!(format!("{:?}", shared.config()), before);
    let default = shared.overlay(DEFAULT_OVERLAY).expect("default");
    assert!(default.secret_matches("old-secret"));
    assert!(shared.overlay("a").is_some() && shared.overlay("b").is_none());
    assert_eq!(state.health().max_prospects, 20_000);
}

#[tokio::test]
async fn dynamic_overlays_become_configured_or_stay_dynamic() {
    let mut start = config();
    start.token_key = Some(key());
    start.dynamic_overlays = true;
    let state = state(start.clone());
    let shared = &state.0;
    let x = shared.overlay_or_create("x", true).expect("created");
    let y = shared.overlay_or_create("y", true).expect("created");
    let (x_root, _x_rx, _) = shared.register_root(&x, false).expect("open");
    let (y_root, mut y_rx, _) = shared.register_root(&y, false).expect("open");

    let mut new = start;
    new.overlays
        .insert("x".into(), OverlayConfig::new("secret-x"));
    new.dynamic_overlays = false;
    let reloaded = state.reload(&new).expect("valid");
    // `x` is configured now (the same overlay, its root kept); `y` stays dynamic and
    // is not closed, but no new dynamic overlay is created.
    assert!(reloaded.added.is_empty() && reloaded.removed.is_empty());
    assert_eq!(reloaded.secret_changed, ["x"]);
    assert!(Arc::ptr_eq(&x, &shared.overlay("x").expect("x")));
    assert!(x.secret_matches("secret-x") && !x.is_dynamic());
    assert!(y.is_dynamic());
    assert!(y_rx.recv().now_or_never().is_none());
    assert_eq!(
        shared.overlay_or_create("z", true).err(),
        Some(NoOverlay::Unknown)
    );
    drop((x_root, y_root));
    assert!(
        shared.overlay("x").is_some(),
        "configured: stays when empty"
    );
    assert!(shared.overlay("y").is_none(), "dynamic: removed once empty");
}

#[tokio::test]
async fn the_token_key_and_the_root_share_follow_the_reload() {
    let state = state(config());
    let shared = &state.0;
    assert!(shared.config().token_key.is_none());
    let mut new = config();
    new.token_key = Some(key());
    new.join_auth = crate::JoinAuth::Token;
    new.max_frame_bytes = 4 * 1024 * 1024;
    state.reload(&new).expect("valid");
    let config = shared.config();
    assert!(config.token_key.is_some() && config.join_auth == crate::JoinAuth::Token);
    // A root's per-client share still holds the largest message.
    let default = shared.overlay(DEFAULT_OVERLAY).expect("default");
    let client = std::net::IpAddr::from([192, 0, 2, 1]);
    assert!(default.root_shares.take(client, 4 * 1024 * 1024).is_some());
    // And off again.
    state.reload(&self::config()).expect("valid");
    assert!(shared.config().token_key.is_none());
    assert!(default.root_shares.take(client, 4 * 1024 * 1024).is_none());
}

#[tokio::test]
async fn a_new_ice_servers_rate_starts_afresh() {
    let with_rate = |per_minute| {
        let mut config = config();
        let mut turn =
            crate::turn::TurnConfig::new("turn-secret", vec!["turn:127.0.0.1:3478".into()]);
        turn.requests_per_minute = per_minute;
        config.turn = Some(turn);
        config
    };
    let state = state(with_rate(1));
    let shared = &state.0;
    let client = std::net::IpAddr::from([192, 0, 2, 7]);
    let now = tokio::time::Instant::now();
    assert!(shared.ice_rate().admit(client, now).is_ok());
    assert!(
        shared.ice_rate().admit(client, now).is_err(),
        "one a minute"
    );
    // The same rate keeps the counts; a new one starts afresh with its own.
    state.reload(&with_rate(1)).expect("valid");
    assert!(shared.ice_rate().admit(client, now).is_err());
    state.reload(&with_rate(2)).expect("valid");
    assert!(shared.ice_rate().admit(client, now).is_ok());
    assert!(shared.ice_rate().admit(client, now).is_ok());
    assert!(
        shared.ice_rate().admit(client, now).is_err(),
        "two a minute"
    );
}
