//! HTTP routes: the root and `/join` WebSocket upgrades, `/healthz`, static files.
//!
//! Handlers only check the request, register the socket and hand it to
//! [`crate::connection::serve`].

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, get};
use bootstrap_protocol::{PeerId, paths};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;
use tracing::info;

use crate::config::Config;
use crate::connection::{self, Role};
use crate::state::{AppState, Health, Shared, SocketHandle};
use crate::stats::Stats;

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

/// Applies the configured limits to the WebSocket: small buffers for idle sockets, a
/// message size cap, and a bounded write buffer.
fn limited(ws: WebSocketUpgrade, config: &Config) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(config.max_frame_bytes.saturating_mul(4))
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
}

/// Read chunk size: tungstenite's default (128 KiB) is far more than a signaling
/// message needs and would dominate the memory of idle sockets.
const READ_BUFFER: usize = 4096;

async fn join(
    State(state): State<AppState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let shared = Arc::clone(&state.0);
    let (tx, rx) = mpsc::channel(shared.config.join_queue);
    let handle = SocketHandle {
        tx,
        replaced: CancellationToken::new(),
    };
    let admitted = shared.registry().admit(handle.clone());
    let Ok(id) = admitted else {
        Stats::bump(&shared.stats.joins_refused);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many open /join sockets\n",
        )
            .into_response();
    };
    Stats::bump(&shared.stats.joins);
    // If the upgrade never completes, the callback is dropped and the guard unregisters.
    let guard = Registered {
        shared: Arc::clone(&shared),
        id,
        armed: true,
    };
    let task = shared.tracker.token();
    limited(ws, &shared.config).on_upgrade(move |socket| async move {
        let _task = task;
        let (shared, id) = guard.disarm();
        connection::serve(socket, Role::Join(id), rx, handle.replaced, shared).await;
    })
}

/// Unregisters a `/join` id when dropped before its socket task takes over.
struct Registered {
    shared: Arc<Shared>,
    id: PeerId,
    armed: bool,
}

impl Registered {
    /// Hands the registration over to the socket task, which unregisters it itself.
    fn disarm(mut self) -> (Arc<Shared>, PeerId) {
        self.armed = false;
        (Arc::clone(&self.shared), self.id)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if self.armed {
            self.shared.registry().leave(&self.id);
        }
    }
}

async fn root(
    State(state): State<AppState>,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Compare the raw (still percent-encoded) path segment, as the JS server does, in
    // constant time. Never log it.
    let given = uri
        .path()
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix(paths::ROOT_SUFFIX))
        .unwrap_or_default();
    let shared = Arc::clone(&state.0);
    if !bool::from(given.as_bytes().ct_eq(shared.config.secret.as_bytes())) {
        return not_found().await;
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let task = shared.tracker.token();
    limited(ws, &shared.config).on_upgrade(move |socket| async move {
        let _task = task;
        let (tx, rx) = mpsc::channel(shared.config.root_queue);
        let handle = SocketHandle {
            tx,
            replaced: CancellationToken::new(),
        };
        let replaced = handle.replaced.clone();
        let (ticket, old) = shared.registry().set_root(handle);
        Stats::bump(&shared.stats.roots);
        if let Some(old) = old {
            old.replaced.cancel();
            info!("root connected, replacing the previous root");
        } else {
            info!("root connected");
        }
        connection::serve(socket, Role::Root(ticket), rx, replaced, shared).await;
        info!("root disconnected");
    })
}
