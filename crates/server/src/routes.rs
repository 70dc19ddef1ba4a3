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
use futures_util::FutureExt as _;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;
use tracing::info;

use crate::config::Config;
use crate::connection::{self, Role};
use crate::queue;
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
///
/// The write buffer is only a staging area: the connection task flushes after every
/// batch of queued messages, so a batch goes out in one write instead of one write per
/// message (a write buffer size of 0 writes each frame eagerly). It allocates nothing
/// until the socket sends.
fn limited(ws: WebSocketUpgrade, config: &Config) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(config.max_frame_bytes)
        .max_write_buffer_size(config.max_frame_bytes.saturating_mul(4))
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes)
}

/// Read chunk size, allocated for every socket when it opens and zero-filled before
/// every read by tungstenite: its default (128 KiB) would dominate the memory of idle
/// sockets. 2 KiB holds a typical signaling message (an SDP of 500 to 1500 bytes in its
/// envelope) in one read; larger ones take a second read.
const READ_BUFFER: usize = 2048;

async fn join(
    State(state): State<AppState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let shared = Arc::clone(&state.0);
    let (tx, rx) = queue::channel(shared.config.join_queue);
    let handle = SocketHandle { tx, replaced: None };
    let admitted = shared.registry().admit(handle);
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
    // The callback hands the socket over synchronously: a future that captured the
    // unsplit socket would carry its ~370 bytes for as long as the socket is open.
    // (An `async move` block would also hold the inner future twice: once captured, once
    // being awaited.) The tracker token is released when the socket's future completes.
    limited(ws, &shared.config).on_upgrade(move |socket| {
        let (shared, id) = guard.disarm();
        connection::serve(socket, Role::Join(id), rx, None, shared).map(move |()| drop(task))
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
        let (tx, rx) = queue::channel(shared.config.root_queue);
        let replaced = CancellationToken::new();
        let handle = SocketHandle {
            tx,
            replaced: Some(replaced.clone()),
        };
        let (ticket, old) = shared.registry().set_root(handle);
        Stats::bump(&shared.stats.roots);
        if let Some(old) = old {
            if let Some(token) = &old.replaced {
                token.cancel();
            }
            info!("root connected, replacing the previous root");
        } else {
            info!("root connected");
        }
        connection::serve(socket, Role::Root(ticket), rx, Some(replaced), shared).await;
        info!("root disconnected");
    })
}
