//! HTTP routes: the root and `/join` WebSocket upgrades of every overlay, their
//! `/ice-servers` (TURN credentials), `/healthz`, static files.
//!
//! Which socket a path asks for is decided by [`crate::route::parse`]; handlers check
//! the credentials (secret or token), check the upgrade request, register the socket
//! and hand it to [`crate::transport::serve`]. Refusals are plain HTTP answers sent
//! before any upgrade: 401 for a missing or invalid token, 404 for an unknown overlay
//! or a wrong secret (as the JS server), 429 for an address that failed too often,
//! 503 when a cap is reached.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, ALLOW, AUTHORIZATION, CACHE_CONTROL, FORWARDED, ORIGIN,
    RETRY_AFTER, SEC_WEBSOCKET_PROTOCOL,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use bootstrap_protocol::paths::is_standby_query;
use futures_util::FutureExt as _;
use futures_util::future::Either;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info};

use crate::auth::{
    Audience, BEARER_SUBPROTOCOL, Claims, TokenError, bearer_from_subprotocols, token_from_query,
};
use crate::config::JoinAuth;
use crate::edge::{self, Limited};
use crate::files;
use crate::handle::heartbeats;
use crate::route::{self, Route};
use crate::state::{AppState, Health, MAX_STANDBY_ROOTS, NoOverlay, Overlay, Refusal, Shared};
use crate::stats::Stats;
use crate::transport;
use crate::turn::user_label;
use crate::upgrade::Upgrade;

/// The server's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_allowed))
        .fallback(entry)
        .with_state(state)
}

/// `GET /metrics` alone, to anyone who reaches it: for a listener of its own
/// (`--metrics-listen`), which the operator keeps private.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(state.health())
}

/// 200 while the server accepts joins; 503 while it drains or shuts down.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if state.0.is_ready() {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster broker unreachable\n",
        )
    } else {
        refuse(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.0.metrics.render().into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

/// `GET /metrics` on the main listener: only for clients in `metrics_allow` (the TCP
/// peer's address; forwarded addresses do not count).
async fn metrics_allowed(State(state): State<AppState>, request: Request) -> Response {
    let ip = peer_ip(&request);
    if !state.0.metrics_allowed(ip) {
        debug!(%ip, "metrics refused");
        return refuse(StatusCode::FORBIDDEN, "forbidden\n");
    }
    metrics(State(state)).await
}

/// 503 with `Retry-After`: the server is draining and takes no new `/join` socket.
fn draining() -> Response {
    let mut response = refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "server draining; retry later\n",
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static(DRAIN_RETRY_AFTER));
    response
}

/// Seconds a client refused during a drain should wait: about what a restart takes.
const DRAIN_RETRY_AFTER: &str = "5";

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

fn not_found() -> Response {
    refuse(StatusCode::NOT_FOUND, "not found\n")
}

/// Every path but `/healthz`: a socket route, else a static file (if a directory is
/// served), else 404.
async fn entry(State(state): State<AppState>, request: Request) -> Response {
    let uri = request.uri().clone();
    let route = route::parse(uri.path());
    if route.is_some()
        && let Some(refused) = origin_refused(&state.0, &request)
    {
        return refused;
    }
    match route {
        Some(Route::Join { overlay, token }) => join(&state.0, overlay, token, request),
        Some(Route::IceServers { overlay, token }) => {
            ice_servers(&state.0, overlay, token, &request)
        }
        Some(Route::Root {
            overlay,
            credential,
        }) => root(&state.0, overlay, credential, request),
        // Cloned: the configuration is not held across `.await`.
        None => match state.0.config().public.clone() {
            Some(dir) => files::serve(&dir, request).await,
            None => not_found(),
        },
    }
}

/// The TCP peer's address, where the server knows it (behind [`crate::serve`]).
fn peer_ip(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip())
}

/// The client's address: the TCP peer's, or the one a trusted proxy forwarded.
fn client_ip(shared: &Shared, request: &Request) -> IpAddr {
    let peer = peer_ip(request);
    let edge = shared.edge();
    if edge.trusted_proxies.is_empty() {
        return peer;
    }
    let headers = request.headers();
    let values = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect::<Vec<_>>()
    };
    edge::client_ip(
        peer,
        values(FORWARDED.as_str()).into_iter(),
        values(X_FORWARDED_FOR).into_iter(),
        &edge.trusted_proxies,
    )
}

/// `X-Forwarded-For`, which `http` has no constant for.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// 403 for an upgrade whose `Origin` is not allowed (or missing, with `require_origin`).
fn origin_refused(shared: &Shared, request: &Request) -> Option<Response> {
    let edge = shared.edge();
    if edge.allowed_origins.is_empty() && !edge.require_origin {
        return None;
    }
    let origin = request
        .headers()
        .get(ORIGIN)
        .map(|value| value.to_str().unwrap_or("<not text>"));
    if edge::origin_allowed(origin, &edge.allowed_origins, edge.require_origin) {
        return None;
    }
    Stats::bump(&shared.stats.refused_origin);
    debug!(?origin, "upgrade refused for its Origin");
    Some(refuse(StatusCode::FORBIDDEN, "origin not allowed\n"))
}

/// 429 with `Retry-After` when the client is over its `/join` limits; otherwise it is
/// counted (and `None`).
fn over_join_limits(shared: &Shared, ip: IpAddr) -> Option<Response> {
    let limits = shared.edge().limits;
    let now = tokio::time::Instant::now();
    let limited = shared.limiter().admit(ip, limits, now).err()?;
    Stats::bump(&shared.stats.joins_refused_per_ip);
    debug!(%ip, ?limited, "/join refused: per-client limit");
    let (why, retry) = match limited {
        Limited::TooManyOpen => ("too many open /join sockets from your address\n", 1),
        Limited::TooFast(wait) => (
            "too many new /join sockets from your address\n",
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        ),
        Limited::Busy => ("too many clients; retry later\n", 1),
    };
    let mut response = refuse(StatusCode::TOO_MANY_REQUESTS, why);
    if let Ok(value) = HeaderValue::from_str(&retry.max(1).to_string()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    Some(response)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// A 429 answer saying when to retry (at least a second from now).
fn too_many(why: &'static str, retry: Duration) -> Response {
    let mut response = refuse(StatusCode::TOO_MANY_REQUESTS, why);
    let seconds = retry.max(Duration::from_secs(1)).as_secs();
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

/// Refuses an address that failed to authenticate too often.
fn throttled(shared: &Shared, ip: IpAddr) -> Option<Response> {
    let retry = shared
        .throttle()
        .check(ip, tokio::time::Instant::now())
        .err()?;
    Stats::bump(&shared.stats.auth_throttled);
    Some(too_many("too many failed attempts; retry later\n", retry))
}

/// Checks the join token of a request to `overlay` from `ip`, when joins need one:
/// `Ok(None)` when they do not, the token's claims when it is valid, else the answer
/// (401, or 429 for an address that failed too often).
fn check_join_token(
    shared: &Shared,
    overlay: &Overlay,
    ip: IpAddr,
    token: Option<&str>,
) -> Result<Option<Claims>, Box<Response>> {
    let config = shared.config();
    if config.join_auth != JoinAuth::Token {
        return Ok(None);
    }
    if let Some(response) = throttled(shared, ip) {
        return Err(Box::new(response));
    }
    let Some(key) = config.token_key.as_deref() else {
        return Err(Box::new(unauthorized(shared, ip, TokenError::Missing)));
    };
    let verified = match token {
        Some(token) => key.verify(token, Audience::Join, &overlay.name, unix_now()),
        None => Err(TokenError::Missing),
    };
    verified
        .map(Some)
        .map_err(|error| Box::new(unauthorized(shared, ip, error)))
}

/// `GET [/o/NAME][/t/TOKEN]/ice-servers`: fresh TURN credentials for a peer of overlay
/// `name`, when TURN is configured (else 404). Rate limited per address (429); when
/// joins need a token, so does this (in the path, the query, or `Authorization:
/// Bearer`), and the TURN username carries its `sub`.
fn ice_servers(
    shared: &Shared,
    name: &str,
    path_token: Option<&str>,
    request: &Request,
) -> Response {
    let config = shared.config();
    let Some(turn) = config.turn.as_ref() else {
        return not_found();
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = refuse(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let Some(overlay) = shared.overlay(name) else {
        return refuse(StatusCode::NOT_FOUND, "no such overlay\n");
    };
    let ip = client_ip(shared, request);
    if let Err(retry) = shared.ice_rate().admit(ip, tokio::time::Instant::now()) {
        Stats::bump(&shared.stats.ice_servers_throttled);
        return too_many("too many /ice-servers requests; retry later\n", retry);
    }
    let header_token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let token = path_token
        .or_else(|| request.uri().query().and_then(token_from_query))
        .or(header_token);
    let claims = match check_join_token(shared, &overlay, ip, token) {
        Ok(claims) => claims,
        Err(response) => return *response,
    };
    let sub = claims.as_ref().and_then(|claims| claims.sub.as_deref());
    let answer = turn.answer(unix_now(), user_label(sub));
    Stats::bump(&shared.stats.ice_servers_issued);
    let mut response = Json(answer).into_response();
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Browsers on other origins may read it: what guards it is the token, not cookies.
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// Counts a failed authentication against `ip`; the answer is 401.
fn unauthorized(shared: &Shared, ip: IpAddr, error: TokenError) -> Response {
    shared.throttle().failed(ip, tokio::time::Instant::now());
    Stats::bump(&shared.stats.auth_failures);
    debug!(%ip, %error, "token refused");
    let mut response = refuse(StatusCode::UNAUTHORIZED, "missing or invalid token\n");
    response
        .headers_mut()
        .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    response
}

fn join(
    shared: &Arc<Shared>,
    name: &str,
    path_token: Option<&str>,
    mut request: Request,
) -> Response {
    let Some(overlay) = shared.overlay(name) else {
        return refuse(StatusCode::NOT_FOUND, "no such overlay\n");
    };
    if !shared.is_ready() {
        Stats::bump(&shared.stats.joins_refused_draining);
        return draining();
    }
    let client = client_ip(shared, &request);
    let headers = request.headers();
    let bearer = bearer_from_subprotocols(
        headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok()),
    );
    // A browser that offered `bearer` drops a socket whose answer does not echo it.
    let protocol = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim() == BEARER_SUBPROTOCOL)
        .then_some(BEARER_SUBPROTOCOL);
    // Carriers, in order: the subprotocol, the path, the query.
    let token = bearer
        .or(path_token)
        .or_else(|| request.uri().query().and_then(token_from_query));
    match check_join_token(shared, &overlay, client, token) {
        Ok(Some(claims)) => {
            debug!(overlay = %overlay.name, sub = ?claims.sub, "join token accepted");
        }
        Ok(None) => {}
        Err(response) => return *response,
    }
    let upgrade = match Upgrade::accept(&mut request) {
        Ok(upgrade) => upgrade,
        Err(refused) => return refused.into_response(),
    };
    if let Some(response) = over_join_limits(shared, client) {
        return response;
    }
    // If the upgrade never completes, the registration is dropped and unregisters the id.
    let (mut registration, rx) = match shared.admit_join(&overlay) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            shared.limiter().release(client);
            Stats::bump(&shared.stats.joins_refused);
            Stats::bump(&overlay.stats.joins_refused);
            let why = match refusal {
                Refusal::OverlayFull => "too many open /join sockets in this overlay\n",
                Refusal::ServerFull => "too many open /join sockets\n",
            };
            return refuse(StatusCode::SERVICE_UNAVAILABLE, why);
        }
    };
    registration.set_client(client);
    registration.set_limited();
    let response = upgrade.response(protocol);
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

/// How a root proved itself.
enum RootAuth {
    /// With its overlay's secret (kept to check it again once upgraded; never logged).
    Secret(String),
    /// With a root token (which may create a dynamic overlay).
    Token(Option<String>),
}

fn root(shared: &Arc<Shared>, name: &str, credential: &str, mut request: Request) -> Response {
    // Compare the raw (still percent-encoded) path segment, as the JS server does, in
    // constant time. Never log it.
    let known = shared.overlay(name);
    let by_secret = known
        .as_ref()
        .is_some_and(|overlay| overlay.secret_matches(credential));
    let token_key = shared.config().token_key.clone();
    let auth = if by_secret {
        RootAuth::Secret(credential.to_owned())
    } else if let Some(key) = token_key.as_deref() {
        let ip = client_ip(shared, &request);
        if let Some(response) = throttled(shared, ip) {
            return response;
        }
        match key.verify(credential, Audience::Root, name, unix_now()) {
            Ok(claims) => RootAuth::Token(claims.sub),
            Err(error) => return unauthorized(shared, ip, error),
        }
    } else {
        // Without token auth the wire is the JS server's: a wrong secret is not found.
        return not_found();
    };
    let overlay = match known {
        Some(overlay) => overlay,
        None => match shared.overlay_or_create(name, true) {
            Ok(overlay) => overlay,
            Err(NoOverlay::Unknown) => return refuse(StatusCode::NOT_FOUND, "no such overlay\n"),
            Err(NoOverlay::TooMany) => {
                Stats::bump(&shared.stats.overlays_refused);
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many overlays\n");
            }
            Err(NoOverlay::NoSeed) => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot create the overlay\n",
                );
            }
        },
    };
    // A standby root (`?standby=1`) waits, without requests, for the active one to go.
    let standby = request.uri().query().is_some_and(is_standby_query);
    if standby && overlay.registry().standby_count() >= MAX_STANDBY_ROOTS {
        shared.remove_if_empty(&overlay);
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many standby roots in this overlay\n",
        );
    }
    let upgrade = match Upgrade::accept(&mut request) {
        Ok(upgrade) => upgrade,
        Err(refused) => {
            shared.remove_if_empty(&overlay);
            return refused.into_response();
        }
    };
    let response = upgrade.response(None);
    let on_upgrade = upgrade.on_upgrade;
    let shared = Arc::clone(shared);
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            shared.remove_if_empty(&overlay);
            return;
        };
        match &auth {
            RootAuth::Token(sub) => info!(overlay = %overlay.name, ?sub, "root token accepted"),
            // A reload changed the secret while the upgrade completed: from the reload
            // on, only the new secret opens the root.
            RootAuth::Secret(secret) if !overlay.secret_matches(secret) => {
                info!(overlay = %overlay.name, "the root secret changed while this root connected; closing it");
                shared.remove_if_empty(&overlay);
                return;
            }
            RootAuth::Secret(_) => {}
        }
        let Some((registration, rx, tx)) = shared.register_root(&overlay, standby) else {
            // A dynamic overlay emptied and removed meanwhile (the root reconnects), or
            // a standby raced past the cap: the socket is dropped.
            shared.remove_if_empty(&overlay);
            return;
        };
        // Stopped (dropped) with the root's task.
        let _heartbeats = AbortOnDropHandle::new(tokio::spawn(heartbeats(
            tx,
            shared.config().heartbeat_interval,
        )));
        drop(shared);
        transport::serve(upgraded, registration, rx).await;
        info!(overlay = %overlay.name, "root disconnected");
    });
    response
}
