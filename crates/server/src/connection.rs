//! One WebSocket's task: reads frames and relays them, writes its outbound queue, and
//! enforces the socket's lifetime, heartbeat and abuse limits.
//!
//! A single task per socket `select!`s over: shutdown, replacement (root), lifetime
//! (`/join`), heartbeat and ping (root), the outbound queue, and inbound bytes.
//! Cleanup (leaving the registry) happens once, after the loop.
//!
//! The task speaks WebSocket over the raw connection with the IO-free
//! [`Decoder`](bootstrap_protocol::ws::Decoder). It reads into a buffer on the stack of
//! the poll that found bytes, so a socket waiting for its peer holds no read buffer,
//! and writes from a buffer it only holds while writing.

use std::future::{Future, poll_fn};
use std::mem::MaybeUninit;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bootstrap_protocol::ws::{Decoder, FrameError, Inbound, encode_close, encode_frame, opcode};
use bootstrap_protocol::{PeerId, close, paths::HEARTBEAT, relay};
use futures_util::future::Either;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
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
    /// The connection ended or broke: nothing more to send.
    Gone,
    /// The peer sent a close frame (with this code): answer it, then stop.
    ClosedByPeer(Option<u16>),
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// Close without a status code, as the JS server does at the `/join` timeout.
    CloseNoStatus,
    /// The peer does not read: writes are stuck, so just drop the connection.
    Abandon,
}

/// Most queued messages written at once.
const WRITE_BATCH: usize = 64;

/// Bytes read at once, into a buffer that lives on the stack for one poll. 8 KiB holds
/// a typical signaling burst (an SDP of 500 to 1500 bytes in its envelope, then
/// candidates); a larger message takes several reads.
const READ_CHUNK: usize = 8 * 1024;

/// Runs one upgraded socket until it ends, then unregisters it.
///
/// Behind `axum::serve` the connection is a plain `TcpStream`, which is taken back
/// out of hyper's wrapper; any other transport is served through the wrapper.
/// Not an `async fn`: its arguments would stay in every socket's state.
pub(crate) fn serve(
    upgraded: Upgraded,
    role: Role,
    rx: queue::Receiver<String>,
    replaced: Option<CancellationToken>,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> {
    // Only a root can be replaced; its wait is boxed so `/join` sockets carry 8 bytes.
    let replaced = replaced.map(|token| Box::pin(token.cancelled_owned()));
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            // Bytes the client sent right after its request, before our answer.
            let early = parts.read_buf.to_vec();
            let io = parts.io.into_inner();
            Either::Left(run(io, early, role, rx, replaced, shared))
        }
        Err(upgraded) => Either::Right(run(
            TokioIo::new(upgraded),
            Vec::new(),
            role,
            rx,
            replaced,
            shared,
        )),
    }
}

/// Per-socket state the read path needs besides the connection.
struct Inbox<'a> {
    decoder: Decoder,
    handler: Handler<'a>,
}

/// Handles the messages of one socket.
struct Handler<'a> {
    role: Role,
    policy: Policy,
    shared: &'a Shared,
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    mut early: Vec<u8>,
    role: Role,
    mut rx: queue::Receiver<String>,
    mut replaced: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    shared: Arc<Shared>,
) {
    let config = &shared.config;
    let opened = Instant::now();
    let mut inbox = Inbox {
        decoder: Decoder::new(config.max_frame_bytes),
        handler: Handler {
            role,
            policy: Policy::new(
                config.rate_per_second,
                config.rate_burst,
                config.max_bad_messages,
                opened,
            ),
            shared: &shared,
        },
    };
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
    // Frames to write (queued messages, pongs, heartbeats); emptied by every write.
    let mut out: Vec<u8> = Vec::new();
    let mut ping_sent: Option<Instant> = None;
    // Since when the outbound queue has been full after every write: a peer that reads
    // too slowly to ever drain it is closed after `write_timeout`.
    let mut full_since: Option<Instant> = None;

    let mut first = (!early.is_empty()).then(|| inbox.on_bytes(&mut early, &mut out));
    drop(early);
    let end = loop {
        if let Some(end) = first.take().flatten() {
            break end;
        }
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
                encode_frame(&mut out, opcode::TEXT, HEARTBEAT.as_bytes(), None);
                if ping_sent.is_none() {
                    encode_frame(&mut out, opcode::PING, &[], None);
                    ping_sent = Some(now);
                }
                if let Some(end) = write_out(&mut io, &mut out, &shared).await {
                    break end;
                }
            }
            queued = rx.recv() => {
                let Some(text) = queued else { break End::Gone };
                encode_frame(&mut out, opcode::TEXT, text.as_bytes(), None);
                rx.drain_each(WRITE_BATCH - 1, |text| {
                    encode_frame(&mut out, opcode::TEXT, text.as_bytes(), None);
                });
                if let Some(end) = write_out(&mut io, &mut out, &shared).await {
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
            read = read_some(&mut io, &mut inbox, &mut out) => {
                ping_sent = None; // any bytes show the peer is alive
                if let Some(end) = read {
                    break end;
                }
                // Pongs for the pings just read.
                if !out.is_empty()
                    && let Some(end) = write_out(&mut io, &mut out, &shared).await
                {
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
    out.clear();
    match end {
        End::Gone | End::Abandon => return,
        // Echo the peer's status code, as RFC 6455 suggests.
        End::ClosedByPeer(code) => encode_close(&mut out, code, ""),
        End::Close(code, reason) => encode_close(&mut out, Some(code), reason),
        End::CloseNoStatus => encode_close(&mut out, None, ""),
    }
    // Best effort: a peer that is gone or stuck must not hold the task.
    let goodbye = async {
        io.write_all(&out).await?;
        io.shutdown().await
    };
    let _ = timeout(config.write_timeout, goodbye).await;
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

/// Waits for bytes from the peer and handles every complete frame in them; `Some`
/// ends the loop. Frames to answer with (pongs) are appended to `out`.
///
/// The bytes are read into a buffer on the stack of the poll that finds them ready:
/// while the peer is silent, the socket holds no read buffer at all.
fn read_some<S: AsyncRead + Unpin>(
    io: &mut S,
    inbox: &mut Inbox<'_>,
    out: &mut Vec<u8>,
) -> impl Future<Output = Option<End>> {
    poll_fn(move |cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => {
                debug!(role = ?inbox.handler.role, %error, "socket read error");
                Poll::Ready(Some(End::Gone))
            }
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Some(End::Gone)),
            Poll::Ready(Ok(())) => Poll::Ready(inbox.on_bytes(buf.filled_mut(), out)),
        }
    })
}

/// Writes (and empties) `out` within the write timeout.
async fn write_out<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    shared: &Shared,
) -> Option<End> {
    // Taken, so an idle socket holds no write buffer either.
    let bytes = std::mem::take(out);
    let write = async {
        io.write_all(&bytes).await?;
        io.flush().await
    };
    let mut write = std::pin::pin!(write);
    // Almost every write completes at once (the socket buffer has room). Only a write
    // that has to wait arms the timeout, which costs a timer registration.
    let first = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
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

impl Inbox<'_> {
    /// Decodes bytes just read and handles each message; `Some` ends the loop.
    fn on_bytes(&mut self, bytes: &mut [u8], out: &mut Vec<u8>) -> Option<End> {
        let mut end = None;
        let handler = &mut self.handler;
        let decoded = self.decoder.decode(bytes, |inbound| {
            end = handler.on_inbound(inbound, out);
            if end.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        match decoded {
            Ok(_) => end,
            Err(error) => Some(self.handler.on_frame_error(error)),
        }
    }
}

impl Handler<'_> {
    /// Handles one message or control frame; `Some` ends the loop.
    fn on_inbound(&mut self, inbound: Inbound<'_>, out: &mut Vec<u8>) -> Option<End> {
        let (role, shared) = (self.role, self.shared);
        let text = match inbound {
            Inbound::Text(text) => text,
            Inbound::Binary(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => {
                    Stats::bump(&shared.stats.invalid_messages);
                    debug!(?role, "binary frame is not UTF-8; dropped");
                    return offend(&mut self.policy, Offence::InvalidPayload, shared);
                }
            },
            Inbound::Ping(payload) => {
                // Answering costs a write: pings count against the message rate too.
                if !self.policy.admit(Instant::now()) {
                    Stats::bump(&shared.stats.flood_messages);
                    return offend(&mut self.policy, Offence::Flood, shared);
                }
                encode_frame(out, opcode::PONG, payload, None);
                return None;
            }
            Inbound::Pong => return None,
            Inbound::Close(code) => return Some(End::ClosedByPeer(code)),
        };
        if !self.policy.admit(Instant::now()) {
            Stats::bump(&shared.stats.flood_messages);
            debug!(?role, "over the message rate; dropped");
            return offend(&mut self.policy, Offence::Flood, shared);
        }
        match role {
            Role::Join(id) => on_join_text(text, &id, &mut self.policy, shared),
            Role::Root(_) => on_root_text(text, &mut self.policy, shared),
        }
    }

    /// A frame broke the protocol or the size limit: the socket is closed.
    fn on_frame_error(&self, error: FrameError) -> End {
        Stats::bump(&self.shared.stats.abusive_closes);
        info!(role = ?self.role, %error, "closing a socket after a bad frame");
        let reason = match error {
            FrameError::TooBig { .. } => "message too big",
            FrameError::InvalidUtf8 => "text frame is not UTF-8",
            _ => "WebSocket protocol error",
        };
        End::Close(error.close_code(), reason)
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
        .map(|handle| handle.tx.try_send(relayed.text));
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
