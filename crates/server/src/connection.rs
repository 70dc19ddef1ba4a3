//! One WebSocket's task: reads frames and relays them, writes its outbound queue, and
//! enforces the socket's lifetime, heartbeat and abuse limits.
//!
//! A single task per socket `select!`s over its queue (messages, and commands such as
//! close on shutdown or the root's heartbeat), its connection, and for `/join` sockets
//! their lifetime. Cleanup (leaving the registry) happens once, after the loop.
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
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, timeout};
use tracing::{debug, info, warn};

use crate::policy::{Offence, Policy, Verdict};
use crate::queue::{self, Received, TrySendError};
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

/// What a socket's task is told through its queue, ahead of any message. Ordered:
/// a pending command is only replaced by a greater one, so a close is never lost to
/// a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Command {
    /// Time for the root's heartbeat and ping.
    Heartbeat,
    /// Close with this code and reason (shutdown, or a root replaced).
    Close(u16, &'static str),
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

/// Tells every registered socket to close with `command` (on shutdown).
pub(crate) fn close_all(shared: &Shared, command: Command) {
    for handle in shared.registry().handles() {
        let _ = handle.tx.control(command);
    }
}

/// Sends the root a [`Command::Heartbeat`] every `period` until its queue closes.
pub(crate) async fn heartbeats(tx: queue::Sender<String, Command>, period: Duration) {
    let mut ticks = interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if tx.control(Command::Heartbeat).is_err() {
            return;
        }
    }
}

/// Runs one upgraded socket until it ends, then unregisters it.
///
/// Behind [`crate::serve`] the connection is a plain `TcpStream`, which is taken back
/// out of hyper's wrapper; any other transport (a router served by another server)
/// is served through the wrapper. Not an `async fn`: its arguments would stay in every
/// socket's state.
pub(crate) fn serve(
    upgraded: Upgraded,
    role: Role,
    rx: queue::Receiver<String, Command>,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> {
    let socket = |early| Socket {
        decoder: Decoder::new(shared.config.max_frame_bytes),
        handler: Handler {
            role,
            policy: Policy::new(
                shared.config.rate_per_second,
                shared.config.rate_burst,
                shared.config.max_bad_messages,
                Instant::now(),
            ),
            ping_sent: None,
            shared: Arc::clone(&shared),
        },
        rx,
        out: early,
        full_since: None,
    };
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        // `out` carries the bytes the client sent right after its request, if any.
        Ok(parts) => Either::Left(run(parts.io.into_inner(), socket(parts.read_buf.to_vec()))),
        Err(upgraded) => Either::Right(run(TokioIo::new(upgraded), socket(Vec::new()))),
    }
}

/// A socket's state besides its connection.
struct Socket {
    decoder: Decoder,
    handler: Handler,
    rx: queue::Receiver<String, Command>,
    /// Frames to write (queued messages, pongs, heartbeats); emptied by every write.
    out: Vec<u8>,
    /// Since when the outbound queue has been full after every write: a peer that
    /// reads too slowly to ever drain it is closed after `write_timeout`.
    full_since: Option<Instant>,
}

/// Handles the messages of one socket.
struct Handler {
    role: Role,
    policy: Policy,
    /// When the unanswered ping to the root was sent.
    ping_sent: Option<Instant>,
    shared: Arc<Shared>,
}

/// The socket's loop. It waits on three things only: its queue (messages and
/// commands), its connection, and for `/join` sockets their lifetime.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, mut socket: Socket) {
    let shared = Arc::clone(&socket.handler.shared);
    let is_root = matches!(socket.handler.role, Role::Root(_));
    let lifetime = sleep(shared.config.timeout);
    tokio::pin!(lifetime);
    let mut end = None;
    if !socket.out.is_empty() {
        let mut early = std::mem::take(&mut socket.out);
        end = socket
            .handler
            .on_bytes(&mut socket.decoder, &mut early, &mut socket.out);
    }
    // Registered before this check, or told by `close_all` after it: either way a
    // socket that opens during shutdown is closed.
    if shared.shutdown.is_cancelled() {
        end = Some(End::Close(close::GOING_AWAY, close::REASON_SHUTDOWN));
    }
    let end = loop {
        if let Some(end) = end.take() {
            break end;
        }
        tokio::select! {
            biased;
            received = socket.rx.recv() => end = socket.on_received(received),
            () = &mut lifetime, if !is_root => {
                Stats::bump(&shared.stats.timeouts);
                end = Some(End::CloseNoStatus);
            }
            read = read_some(&mut io, &mut socket.decoder, &mut socket.handler, &mut socket.out) => end = read,
        }
        if end.is_none() && !socket.out.is_empty() {
            end = write_out(&mut io, &mut socket.out, &shared).await;
            if end.is_none() {
                end = socket.check_backlog();
            }
        }
    };

    let role = socket.handler.role;
    match role {
        Role::Join(id) => shared.registry().leave(&id),
        Role::Root(ticket) => shared.registry().root_left(ticket),
    }
    debug!(?role, ?end, "socket ended");
    let mut out = Vec::new();
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
    let _ = Box::pin(timeout(shared.config.write_timeout, goodbye)).await;
}

/// Waits for bytes from the peer and handles every complete frame in them; `Some`
/// ends the loop. Frames to answer with (pongs) are appended to `out`.
///
/// The bytes are read into a buffer on the stack of the poll that finds them ready:
/// while the peer is silent, the socket holds no read buffer at all.
fn read_some<'a, S: AsyncRead + Unpin>(
    io: &'a mut S,
    decoder: &'a mut Decoder,
    handler: &'a mut Handler,
    out: &'a mut Vec<u8>,
) -> impl Future<Output = Option<End>> + 'a {
    poll_fn(move |cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => {
                debug!(role = ?handler.role, %error, "socket read error");
                Poll::Ready(Some(End::Gone))
            }
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Some(End::Gone)),
            Poll::Ready(Ok(())) => Poll::Ready(handler.on_bytes(decoder, buf.filled_mut(), out)),
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

impl Socket {
    /// Handles what the queue gave; `Some` ends the loop. Messages are encoded into
    /// `out`, with whatever else is queued (up to a batch), to go out in one write.
    fn on_received(&mut self, received: Option<Received<String, Command>>) -> Option<End> {
        match received? {
            Received::Message(text) => {
                encode_frame(&mut self.out, opcode::TEXT, text.as_bytes(), None);
                let out = &mut self.out;
                self.rx.drain_each(WRITE_BATCH - 1, |text| {
                    encode_frame(out, opcode::TEXT, text.as_bytes(), None);
                });
                None
            }
            Received::Control(Command::Close(code, reason)) => Some(End::Close(code, reason)),
            Received::Control(Command::Heartbeat) => self.handler.heartbeat(&mut self.out),
        }
    }

    /// After a write: closes a socket whose queue has stayed full for `write_timeout`.
    fn check_backlog(&mut self) -> Option<End> {
        if !self.rx.is_full() {
            self.full_since = None;
            return None;
        }
        let now = Instant::now();
        let since = *self.full_since.get_or_insert(now);
        if now.duration_since(since) < self.handler.shared.config.write_timeout {
            return None;
        }
        Stats::bump(&self.handler.shared.stats.abusive_closes);
        info!(role = ?self.handler.role, "outbound queue stayed full; closing the socket");
        Some(End::Close(close::POLICY, "not reading fast enough"))
    }
}

impl Handler {
    /// Decodes bytes just read and handles each message; `Some` ends the loop.
    fn on_bytes(
        &mut self,
        decoder: &mut Decoder,
        bytes: &mut [u8],
        out: &mut Vec<u8>,
    ) -> Option<End> {
        let mut end = None;
        let decoded = decoder.decode(bytes, |inbound| {
            end = self.on_inbound(inbound, out);
            if end.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        match decoded {
            Ok(_) => end,
            Err(error) => Some(self.on_frame_error(error)),
        }
    }

    /// The root's heartbeat: a heartbeat message, and a ping unless one is still
    /// unanswered; a ping unanswered for `root_ping_timeout` drops the root.
    fn heartbeat(&mut self, out: &mut Vec<u8>) -> Option<End> {
        let now = Instant::now();
        let config = &self.shared.config;
        if self
            .ping_sent
            .is_some_and(|sent| now.duration_since(sent) >= config.root_ping_timeout)
        {
            warn!("root did not answer ping in time; dropping it");
            return Some(End::Close(close::ROOT_UNRESPONSIVE, "no pong"));
        }
        encode_frame(out, opcode::TEXT, HEARTBEAT.as_bytes(), None);
        if self.ping_sent.is_none() {
            encode_frame(out, opcode::PING, &[], None);
            self.ping_sent = Some(now);
        }
        None
    }

    /// Handles one message or control frame; `Some` ends the loop.
    fn on_inbound(&mut self, inbound: Inbound<'_>, out: &mut Vec<u8>) -> Option<End> {
        self.ping_sent = None; // any frame shows the peer is alive
        let (role, shared) = (self.role, &*self.shared);
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
