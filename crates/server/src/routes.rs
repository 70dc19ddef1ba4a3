//! HTTP routes: the root and `/join` WebSocket upgrades, `/healthz`, static files.
//!
//! Handlers only check the request, register the socket and hand it to
//! [`crate::transport::serve`].

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, get};
use bootstrap_protocol::paths;
use futures_util::FutureExt as _;
use futures_util::future::Either;
use subtle::ConstantTimeEq;
use tokio_util::task::AbortOnDropHandle;
use tower_http::services::ServeDir;
use tracing::info;

use crate::handle::heartbeats;
use crate::state::{AppState, Health};
use crate::stats::Stats;
use crate::transport;
use crate::upgrade::Upgrade;

/// The server's routes over `state`.
pub fn router(state: AppState) -> Router {
    let public = state.0.config.public.clone();
    let router = Router::new()
        .route(paths::JOIN_PATH, any(join))
        .route("/{secret}/webrtc-bootstrap-root", any(root))
        .route("/healthz", get(healthz))
        .with_state(state);
    match public {
        Some(dir) => router.fallback_service(ServeDir::new(dir)),
        None => router.fallback(not_found),
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(state.health())
}

async fn join(State(state): State<AppState>, mut request: Request) -> Response {
    let upgrade = match Upgrade::accept(&mut request) {
        Ok(upgrade) => upgrade,
        Err(refused) => return refused.into_response(),
    };
    let shared = &state.0;
    // If the upgrade never completes, the registration is dropped and unregisters the id.
    let Ok((registration, rx)) = shared.admit_join() else {
        Stats::bump(&shared.stats.joins_refused);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many open /join sockets\n",
        )
            .into_response();
    };
    let response = upgrade.response();
    let on_upgrade = upgrade.on_upgrade;
    // Chained rather than one `async` block, which would keep the captured upgrade
    // handle and registration beside the socket's state for the socket's whole life.
    let socket = on_upgrade.then(move |upgraded| match upgraded {
        Ok(upgraded) => Either::Left(transport::serve(upgraded, registration, rx)),
        Err(_) => Either::Right(std::future::ready(())),
    });
    shared.tracker.spawn(socket);
    response
}

async fn root(State(state): State<AppState>, mut request: Request) -> Response {
    // Compare the raw (still percent-encoded) path segment, as the JS server does, in
    // constant time. Never log it.
    let given = request
        .uri()
        .path()
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix(paths::ROOT_SUFFIX))
        .unwrap_or_default();
    let shared = Arc::clone(&state.0);
    if !bool::from(given.as_bytes().ct_eq(shared.config.secret.as_bytes())) {
        return not_found().await;
    }
    let upgrade = match Upgrade::accept(&mut request) {
        Ok(upgrade) => upgrade,
        Err(refused) => return refused.into_response(),
    };
    let response = upgrade.response();
    let on_upgrade = upgrade.on_upgrade;
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (registration, rx, tx) = shared.register_root();
        // Stopped (dropped) with the root's task.
        let _heartbeats = AbortOnDropHandle::new(tokio::spawn(heartbeats(
            tx,
            shared.config.heartbeat_interval,
        )));
        drop(shared);
        transport::serve(upgraded, registration, rx).await;
        info!("root disconnected");
    });
    response
}
