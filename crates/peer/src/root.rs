//! [`Root`]: the root's socket, its per-newcomer routing, and its reconnect loop.
//!
//! One task owns the root WebSocket. It ignores the server's `"heartbeat"`, turns every
//! other frame into a [`Request`], and routes it with the sans-IO `Router`: an offer
//! from a new origin becomes one [`Incoming`] for the application, and the origin's
//! later requests go to that item's queue. When the server goes away the task
//! reconnects with backoff (the JS root never does); when another root replaces this
//! one (close code 4000) it stops, so two roots never take turns evicting each other.
//! A standby root waits, told `"standby"`, until the server sends `"promoted"`.

use std::sync::Arc;
use std::time::Duration;

use bootstrap_protocol::close::ROOT_REPLACED;
use bootstrap_protocol::paths::{HEARTBEAT, PROMOTED, STANDBY};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::answerer::Answerer;
use crate::backoff::Backoff;
use crate::endpoint::Endpoint;
use crate::request::Request;
use crate::router::{Handler, Route, Router};
use crate::signaling::{self, ConnectError, Socket};

/// Newcomers the application has not taken yet. Past this, new newcomers are dropped
/// (with a warning) rather than stalling the root socket.
const INCOMING_QUEUE: usize = 1024;

/// Later requests of one newcomer not read yet. Past this, they are dropped.
const ROUTE_QUEUE: usize = 64;

/// How long closing the root socket may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The longest `Retry-After` a reconnecting root honours; longer ones are capped, so a
/// misbehaving server cannot park the root for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Where the root's connection to the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootStatus {
    /// Connected: join requests flow.
    Connected,
    /// Connected as a standby root ([`crate::Client::standby_root`]): no join requests
    /// until the active root leaves and the server promotes this one (then
    /// [`RootStatus::Connected`]).
    Standby,
    /// The server went away; retrying.
    Reconnecting {
        /// Number of the next attempt (1 for the first retry).
        attempt: u32,
        /// Why the last connection ended or the last attempt failed.
        last_error: String,
    },
    /// Another root connected with the secret and replaced this one (close code 4000).
    /// This root stopped.
    Replaced,
    /// The server refused the secret or root token when reconnecting (HTTP 401, 403 or
    /// 404; a root token may have expired). This root stopped.
    Rejected(String),
    /// [`Root::close`] was called or the [`Root`] was dropped.
    Closed,
}

/// A connected root: yields one [`Incoming`] per newcomer.
///
/// Dropping it closes the root socket and stops reconnecting. Newcomers already handed
/// out keep working, but their later requests stop arriving.
#[derive(Debug)]
pub struct Root {
    incoming: mpsc::Receiver<Incoming>,
    status: watch::Receiver<RootStatus>,
    /// Dropping this stops the task.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Root {
    /// Starts serving an open root socket, whose standing is `status` (connected, or
    /// standby).
    pub(crate) fn start(
        endpoint: Arc<Endpoint>,
        url: String,
        socket: Socket,
        status: RootStatus,
    ) -> Self {
        let (incoming_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let standby = status == RootStatus::Standby;
        let (status_tx, status) = watch::channel(status);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(
            Task {
                endpoint,
                url,
                router: Router::new(),
                standby,
                incoming: incoming_tx,
                status: status_tx,
                stop: stop_rx,
            }
            .run(socket),
        );
        Self {
            incoming,
            status,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The next newcomer; `None` once the root stopped (closed, replaced or rejected).
    pub async fn next(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// The connection status now.
    #[must_use]
    pub fn status(&self) -> RootStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes (reconnects, replacement, promotion).
    #[must_use]
    pub fn status_receiver(&self) -> watch::Receiver<RootStatus> {
        self.status.clone()
    }

    /// Waits until this root is the active root ([`RootStatus::Connected`]): at once
    /// for a root, on promotion for a standby root.
    ///
    /// # Errors
    /// The final status if the root stopped first (replaced, rejected or closed).
    pub async fn active(&self) -> Result<(), RootStatus> {
        let mut status = self.status.clone();
        let reached = status
            .wait_for(|s| {
                matches!(
                    s,
                    RootStatus::Connected
                        | RootStatus::Replaced
                        | RootStatus::Rejected(_)
                        | RootStatus::Closed
                )
            })
            .await
            .map(|s| s.clone());
        match reached {
            Ok(RootStatus::Connected) => Ok(()),
            Ok(stopped) => Err(stopped),
            Err(_) => Err(RootStatus::Closed),
        }
    }

    /// Closes the root socket and waits for the task to end.
    pub async fn close(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(CLOSE_WAIT * 2, task).await;
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        self.stop.take();
    }
}

/// One newcomer, as the root received it: its offer now, its later requests as they come.
///
/// Answer it here with [`Incoming::accept`], or hand the raw requests to another process
/// or peer ([`Incoming::request`] and [`Incoming::next_request`], or
/// [`Incoming::into_parts`]). Dropping it lets the newcomer go: its later requests are
/// then dropped quietly.
#[derive(Debug)]
pub struct Incoming {
    endpoint: Arc<Endpoint>,
    request: Request,
    later: mpsc::Receiver<Request>,
}

impl Incoming {
    /// The newcomer's `/join` id.
    #[must_use]
    pub fn origin(&self) -> &str {
        self.request.origin()
    }

    /// The first request: the newcomer's offer.
    #[must_use]
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The next later request of this newcomer (its trickled candidates); `None` once the
    /// root stopped.
    pub async fn next_request(&mut self) -> Option<Request> {
        self.later.recv().await
    }

    /// Answers locally: opens this process's own `/join` and answers with
    /// `destination` = the newcomer's id. Later requests are routed to the answer
    /// automatically.
    #[must_use]
    pub fn accept(self) -> Answerer {
        Answerer::spawn(self.endpoint, self.request, Some(self.later))
    }

    /// The raw first request and the stream of later ones, to forward elsewhere.
    #[must_use]
    pub fn into_parts(self) -> (Request, Requests) {
        (self.request, Requests { rx: self.later })
    }
}

/// The later requests of one newcomer.
#[derive(Debug)]
pub struct Requests {
    rx: mpsc::Receiver<Request>,
}

impl Requests {
    /// The next one; `None` once the root stopped.
    pub async fn next(&mut self) -> Option<Request> {
        self.rx.recv().await
    }
}

/// The router's handle on one newcomer: the sending end of its queue.
#[derive(Debug)]
struct RouteTx(mpsc::Sender<Request>);

impl Handler for RouteTx {
    fn is_gone(&self) -> bool {
        self.0.is_closed()
    }
}

/// A standby root's standing, from the server's first frame on its fresh socket:
/// [`RootStatus::Standby`] for `"standby"`, [`RootStatus::Connected`] for `"promoted"`.
/// Anything else first (a request, a heartbeat, a close, nothing within `wait`) means
/// the server does not know standby roots; the reason says what came instead.
pub(crate) async fn standing(socket: &mut Socket, wait: Duration) -> Result<RootStatus, String> {
    let first = async {
        loop {
            match socket.next().await {
                None => return Err("it closed the connection".to_owned()),
                Some(Err(error)) => return Err(error.to_string()),
                Some(Ok(Message::Close(_))) => {
                    return Err("it closed the connection".to_owned());
                }
                Some(Ok(message)) => {
                    if let Some(text) = signaling::frame_text(&message) {
                        return match text.trim() {
                            STANDBY => Ok(RootStatus::Standby),
                            PROMOTED => Ok(RootStatus::Connected),
                            HEARTBEAT => Err("it sent a heartbeat first".to_owned()),
                            _ => Err("it sent a join request first".to_owned()),
                        };
                    }
                }
            }
        }
    };
    tokio::time::timeout(wait, first)
        .await
        .unwrap_or_else(|_| Err(format!("it confirmed nothing within {wait:?}")))
}

/// How a root connection ended.
enum End {
    Stopped,
    Replaced,
    Lost(String),
}

struct Task {
    endpoint: Arc<Endpoint>,
    url: String,
    router: Router<RouteTx>,
    /// Connects as a standby root (its URL carries the standby query).
    standby: bool,
    incoming: mpsc::Sender<Incoming>,
    status: watch::Sender<RootStatus>,
    stop: oneshot::Receiver<()>,
}

impl Task {
    async fn run(mut self, mut socket: Socket) {
        let mut backoff = Backoff::new(self.endpoint.options().reconnect);
        loop {
            let mut last_error = match self.serve(&mut socket).await {
                End::Stopped => {
                    let _ = tokio::time::timeout(CLOSE_WAIT, socket.close(None)).await;
                    self.status.send_replace(RootStatus::Closed);
                    return;
                }
                End::Replaced => {
                    tracing::warn!("another root replaced this one; stopping");
                    self.status.send_replace(RootStatus::Replaced);
                    return;
                }
                End::Lost(reason) => reason,
            };
            drop(socket);
            tracing::info!(reason = %last_error, "root connection lost; reconnecting");
            // A throttled attempt waits at least as long as the server asked.
            let mut not_before = Duration::ZERO;
            socket = loop {
                let attempt = backoff.attempt();
                let delay = backoff.next_delay().max(not_before);
                self.status.send_replace(RootStatus::Reconnecting {
                    attempt,
                    last_error: last_error.clone(),
                });
                let timeout = self.endpoint.options().connect_timeout;
                let roots = &self.endpoint.options().tls_roots_pem;
                let url = &self.url;
                let connected = tokio::select! {
                    _ = &mut self.stop => None,
                    result = async {
                        tokio::time::sleep(delay).await;
                        signaling::connect(url, timeout, roots).await
                    } => Some(result),
                };
                not_before = Duration::ZERO;
                match connected {
                    None => {
                        self.status.send_replace(RootStatus::Closed);
                        return;
                    }
                    Some(Ok(socket)) => break socket,
                    Some(Err(
                        error @ ConnectError::Status {
                            code: 401 | 403 | 404,
                            ..
                        },
                    )) => {
                        // Its secret or root token no longer opens the root (a token may
                        // have expired): retrying cannot help.
                        tracing::warn!(%error, "the server rejected the root's credential; stopping");
                        self.status
                            .send_replace(RootStatus::Rejected(error.to_string()));
                        return;
                    }
                    Some(Err(error)) => {
                        if let ConnectError::Status {
                            retry_after: Some(wait),
                            ..
                        } = &error
                        {
                            not_before = (*wait).min(MAX_RETRY_AFTER);
                        }
                        last_error = error.to_string();
                    }
                }
            };
            backoff.reset();
            tracing::info!("root reconnected");
            // A standby learns its standing from the server's first frame.
            self.status.send_replace(if self.standby {
                RootStatus::Standby
            } else {
                RootStatus::Connected
            });
        }
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, socket: &mut Socket) -> End {
        let idle = self.endpoint.options().root_idle_timeout;
        loop {
            let frame = tokio::select! {
                _ = &mut self.stop => return End::Stopped,
                () = self.incoming.closed() => return End::Stopped,
                frame = tokio::time::timeout(idle, socket.next()) => frame,
            };
            let message = match frame {
                Err(_) => return End::Lost(format!("nothing received for {idle:?}")),
                Ok(None) => return End::Lost("the connection closed".to_owned()),
                Ok(Some(Err(error))) => return End::Lost(error.to_string()),
                Ok(Some(Ok(message))) => message,
            };
            if let Message::Close(frame) = &message {
                return match frame {
                    Some(frame) if u16::from(frame.code) == ROOT_REPLACED => End::Replaced,
                    Some(frame) => End::Lost(format!(
                        "closed by the server ({}: {})",
                        u16::from(frame.code),
                        frame.reason
                    )),
                    None => End::Lost("closed by the server".to_owned()),
                };
            }
            if let Some(text) = signaling::frame_text(&message) {
                self.on_text(text);
            }
        }
    }

    fn on_text(&mut self, text: &str) {
        match text.trim() {
            HEARTBEAT => {
                tracing::trace!("heartbeat");
                return;
            }
            STANDBY => {
                tracing::info!("standby root: another root is active");
                self.status.send_replace(RootStatus::Standby);
                return;
            }
            PROMOTED => {
                tracing::info!("promoted: this standby root is the active root now");
                self.status.send_replace(RootStatus::Connected);
                return;
            }
            _ => {}
        }
        let request = match Request::from_json(text) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "ignoring a root frame that is not a request");
                return;
            }
        };
        let origin = request.origin().to_owned();
        match self.router.route(&origin, request.is_offer()) {
            Route::Existing(RouteTx(tx)) => {
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(request) {
                    tracing::warn!(%origin, "dropping a request: its handler is not reading");
                }
            }
            Route::New => {
                let (tx, later) = mpsc::channel(ROUTE_QUEUE);
                let item = Incoming {
                    endpoint: Arc::clone(&self.endpoint),
                    request,
                    later,
                };
                match self.incoming.try_send(item) {
                    Ok(()) => self.router.insert(origin, RouteTx(tx)),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(%origin, "dropping a newcomer: the application is not taking them");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            Route::Late => tracing::debug!(%origin, "late request dropped"),
        }
    }
}
