//! One WebSocket's task: reads frames and relays them, writes its outbound queue, and
//! enforces the socket's lifetime, heartbeat and abuse limits.
//!
//! A single task per socket `select!`s over: shutdown, replacement (root), lifetime
//! (`/join`), heartbeat and ping (root), the outbound queue, and inbound frames.
//! Cleanup (leaving the registry) happens once, after the loop.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bootstrap_protocol::{PeerId, close, paths::HEARTBEAT, relay};
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, SplitStream, StreamExt};
use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at, sleep, timeout};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, info, warn};

use crate::policy::{Offence, Policy, Verdict};
use crate::queue::{self, TrySendError};
use crate::registry::{RootTicket, Undeliverable};
use crate::state::Shared;
use crate::stats::Stats;

/// Which kind of socket this is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    /// A `/join` socket with its id.
    Join(PeerId),
    /// The root, with its registration ticket.
    Root(RootTicket),
}

/// How the loop ended, and so how the socket is closed.
#[derive(Debug)]
enum End {
    /// The peer closed or the connection broke: nothing more to send.
    /// The peer sent a close frame: answer it, then stop.
    ClosedByPeer,
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// Close without a status code, as the JS server does at the `/join` timeout.
    CloseNoStatus,
    /// The peer does not read: writes are stuck, so just drop the connection.
    Abandon,
}

/// Most queued messages written before one flush.
const WRITE_BATCH: usize = 64;

type Sink = SplitSink<WebSocket, Message>;

type Stream = SplitStream<WebSocket>;

/// Runs one socket until it ends, then unregisters it.
///
/// Not an `async fn`: an async fn keeps its arguments in its state for its whole life,
/// and the unsplit `WebSocket` is ~370 bytes that every open socket would carry. The
/// socket is split first and only the two small halves go into the future.
pub(crate) fn serve(
    socket: WebSocket,
    role: Role,
    rx: queue::Receiver<Utf8Bytes>,
    replaced: Option<CancellationToken>,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> {
    let (sink, stream) = socket.split();
    // Only a root can be replaced; its wait is boxed so `/join` sockets carry 8 bytes.
    let replaced = replaced.map(|token| Box::pin(token.cancelled_owned()));
    run(sink, stream, role, rx, replaced, shared)
}

async fn run(
    mut sink: Sink,
    mut stream: Stream,
    role: Role,
    mut rx: queue::Receiver<Utf8Bytes>,
    mut replaced: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    shared: Arc<Shared>,
) {
    let config = &shared.config;
    let opened = Instant::now();
    let mut policy = Policy::new(
        config.rate_per_second,
        config.rate_burst,
        config.max_bad_messages,
        opened,
    );
    let is_root = matches!(role, Role::Root(_));
    let lifetime = sleep(config.timeout);
    tokio::pin!(lifetime);
    // Only the root has a heartbeat: `/join` sockets allocate no interval.
    let mut heartbeat = is_root.then(|| {
        let mut heartbeat = interval_at(
            opened + config.heartbeat_interval,
            config.heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat
    });
    // Created once, not on every turn of the loop: each creation registers a waiter with
    // the token, and the shutdown token is shared by every socket (one lock for all).
    let shutdown = shared.shutdown.cancelled();
    tokio::pin!(shutdown);
    // Reused for every write, so a write allocates nothing.
    let mut frames: Vec<Message> = Vec::new();
    let mut texts: Vec<Utf8Bytes> = Vec::new();
    let mut ping_sent: Option<Instant> = None;
    // Since when the outbound queue has been full after every write: a peer that reads
    // too slowly to ever drain it is closed after `write_timeout`.
    let mut full_since: Option<Instant> = None;

    let end = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break End::Close(close::GOING_AWAY, close::REASON_SHUTDOWN),
            () = cancelled(&mut replaced) => break End::Close(close::ROOT_REPLACED, close::REASON_ROOT_REPLACED),
            () = &mut lifetime, if !is_root => {
                Stats::bump(&shared.stats.timeouts);
                break End::CloseNoStatus;
            }
            _ = tick(&mut heartbeat) => {
                let now = Instant::now();
                if ping_sent.is_some_and(|sent| now.duration_since(sent) >= config.root_ping_timeout) {
                    warn!("root did not answer ping in time; dropping it");
                    break End::Close(close::ROOT_UNRESPONSIVE, "no pong");
                }
                frames.push(Message::Text(Utf8Bytes::from_static(HEARTBEAT)));
                if ping_sent.is_none() {
                    frames.push(Message::Ping(Vec::new().into()));
                    ping_sent = Some(now);
                }
                if let Some(end) = write_all(&mut sink, &mut frames, &shared).await {
                    break end;
                }
            }
            queued = rx.recv() => {
                let Some(first) = queued else { break End::Gone };
                texts.push(first);
                rx.drain_into(&mut texts, WRITE_BATCH - 1);
                frames.extend(texts.drain(..).map(Message::Text));
                if let Some(end) = write_all(&mut sink, &mut frames, &shared).await {
                    break end;
                }
                if rx.is_full() {
                    let now = Instant::now();
                    let since = *full_since.get_or_insert(now);
                    if now.duration_since(since) >= config.write_timeout {
                        Stats::bump(&shared.stats.abusive_closes);
                        info!(?role, "outbound queue stayed full; closing the socket");
                        break End::Close(close::POLICY, "not reading fast enough");
                    }
                } else {
                    full_since = None;
                }
            }
            frame = stream.next() => {
                ping_sent = None; // any frame shows the peer is alive
                let outcome = match frame {
                    None => Some(End::Gone),
                    Some(Ok(message)) => on_message(message, role, &mut policy, &shared),
                    Some(Err(error)) => Some(on_error(&error, role, &shared)),
                };
                if let Some(end) = outcome {
                    break end;
                }
            }
        }
    };

    match role {
        Role::Join(id) => shared.registry().leave(&id),
        Role::Root(ticket) => shared.registry().root_left(ticket),
    }
    debug!(?role, ?end, "socket ended");
    if matches!(end, End::ClosedByPeer) {
        // tungstenite queued the reply to the peer's close frame; send it, so the peer
        // sees a clean closing handshake rather than a dropped connection.
        let _ = timeout(config.write_timeout, sink.flush()).await;
    }
    let goodbye = match end {
        End::Gone | End::ClosedByPeer | End::Abandon => None,
        End::Close(code, reason) => Some(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))),
        End::CloseNoStatus => Some(Message::Close(None)),
    };
    if let Some(goodbye) = goodbye {
        // Best effort: a peer that is gone or stuck must not hold the task.
        let _ = timeout(config.write_timeout, sink.send(goodbye)).await;
    }
}

/// Waits for a root's replacement; never completes for `/join` sockets.
async fn cancelled(replaced: &mut Option<Pin<Box<WaitForCancellationFutureOwned>>>) {
    match replaced {
        Some(replaced) => replaced.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Waits for the root's next heartbeat; never completes for `/join` sockets.
async fn tick(heartbeat: &mut Option<Interval>) -> Instant {
    match heartbeat {
        Some(heartbeat) => heartbeat.tick().await,
        None => std::future::pending().await,
    }
}

/// Writes (and empties) `frames` and flushes, within the write timeout.
async fn write_all(sink: &mut Sink, frames: &mut Vec<Message>, shared: &Shared) -> Option<End> {
    let write = async {
        for frame in frames.drain(..) {
            sink.feed(frame).await?;
        }
        sink.flush().await
    };
    let mut write = std::pin::pin!(write);
    // Almost every write completes at once (the socket buffer has room). Only a write
    // that has to wait arms the timeout, which costs a timer registration.
    let first = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    // Whichever way it ends, the drain has emptied `frames` when `write` is dropped.
    // The slow path's timer is boxed, so every socket's state stays small.
    let result = match first {
        Poll::Ready(result) => Ok(result),
        Poll::Pending => Box::pin(timeout(shared.config.write_timeout, write)).await,
    };
    match result {
        Ok(Ok(())) => None,
        Ok(Err(error)) => {
            debug!(%error, "write failed");
            Some(End::Gone)
        }
        Err(_) => {
            Stats::bump(&shared.stats.abusive_closes);
            info!("socket does not read its messages; closing it");
            Some(End::Abandon)
        }
    }
}

/// Handles one inbound message; `Some` ends the loop.
fn on_message(message: Message, role: Role, policy: &mut Policy, shared: &Shared) -> Option<End> {
    let text: &str = match &message {
        Message::Text(text) => text.as_str(),
        Message::Binary(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => {
                Stats::bump(&shared.stats.invalid_messages);
                debug!(?role, "binary frame is not UTF-8; dropped");
                return offend(policy, Offence::InvalidPayload, shared);
            }
        },
        Message::Ping(_) | Message::Pong(_) => return None,
        Message::Close(_) => return Some(End::ClosedByPeer),
    };
    if !policy.admit(Instant::now()) {
        Stats::bump(&shared.stats.flood_messages);
        debug!(?role, "over the message rate; dropped");
        return offend(policy, Offence::Flood, shared);
    }
    match role {
        Role::Join(id) => on_join_text(text, &id, policy, shared),
        Role::Root(_) => on_root_text(text, policy, shared),
    }
}

fn on_join_text(text: &str, id: &PeerId, policy: &mut Policy, shared: &Shared) -> Option<End> {
    let relayed = match relay(text, id) {
        Ok(relayed) => relayed,
        Err(error) => {
            Stats::bump(&shared.stats.invalid_messages);
            debug!(%id, %error, "invalid message dropped");
            return offend(policy, Offence::InvalidPayload, shared);
        }
    };
    let stats = &shared.stats;
    // Queueing never waits, so it happens under the lock: no handle is cloned.
    let sent = shared
        .registry()
        .route(&relayed.destination)
        .map(|handle| handle.tx.try_send(relayed.text.into()));
    match sent {
        Ok(sent) => match sent {
            Ok(()) => match relayed.destination {
                bootstrap_protocol::Destination::Root => Stats::bump(&stats.relayed_to_root),
                _ => Stats::bump(&stats.relayed_to_peer),
            },
            Err(TrySendError::Full) => {
                Stats::bump(&stats.dropped_queue_full);
                debug!(%id, destination = ?relayed.destination, "destination queue full; dropped");
            }
            Err(TrySendError::Closed) => {
                Stats::bump(&stats.dropped_unknown_destination);
                debug!(%id, destination = ?relayed.destination, "destination closing; dropped");
            }
        },
        Err(Undeliverable::NoRoot) => {
            Stats::bump(&stats.dropped_no_root);
            debug!(%id, "no root is connected; dropped");
        }
        Err(Undeliverable::UnknownDestination) => {
            Stats::bump(&stats.dropped_unknown_destination);
            debug!(%id, destination = ?relayed.destination, "unknown destination; dropped");
        }
    }
    None
}

fn on_root_text(text: &str, policy: &mut Policy, shared: &Shared) -> Option<End> {
    if text == HEARTBEAT {
        return None;
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        debug!("unexpected message from root; ignored");
        None
    } else {
        Stats::bump(&shared.stats.invalid_messages);
        debug!("root sent invalid JSON; dropped");
        offend(policy, Offence::InvalidPayload, shared)
    }
}

fn offend(policy: &mut Policy, offence: Offence, shared: &Shared) -> Option<End> {
    match policy.offend(offence) {
        Verdict::Drop => None,
        Verdict::Close(offence) => {
            Stats::bump(&shared.stats.abusive_closes);
            info!(?offence, "closing a socket after repeated bad messages");
            Some(End::Close(offence.close_code(), offence.close_reason()))
        }
    }
}

/// Maps a read error to how the socket ends.
fn on_error(error: &axum::Error, role: Role, shared: &Shared) -> End {
    use tungstenite::Error as WsError;
    let inner = std::error::Error::source(error).and_then(|e| e.downcast_ref::<WsError>());
    let end = match inner {
        Some(WsError::Capacity(_)) => End::Close(close::TOO_BIG, "message too big"),
        Some(WsError::Utf8(_)) => End::Close(close::INVALID_PAYLOAD, "text frame is not UTF-8"),
        Some(WsError::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => End::Gone,
        Some(WsError::Protocol(_)) => End::Close(close::PROTOCOL_ERROR, "WebSocket protocol error"),
        _ => End::Gone,
    };
    if !matches!(end, End::Gone) {
        Stats::bump(&shared.stats.abusive_closes);
        info!(?role, %error, "closing a socket after a bad frame");
    } else {
        debug!(?role, %error, "socket read error");
    }
    end
}
