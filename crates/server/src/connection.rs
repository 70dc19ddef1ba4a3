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

use std::future::Future;
use std::mem::MaybeUninit;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bootstrap_protocol::ws::{Decoder, FrameError, Inbound, encode_close, encode_frame, opcode};
use bootstrap_protocol::{PeerId, close, paths::HEARTBEAT, relay};
use futures_util::future::Either;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use pin_project_lite::pin_project;
use tokio::time::{Instant, MissedTickBehavior, Sleep, interval_at, sleep};
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
/// a heartbeat. One byte, in every socket's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Command {
    /// Time for the root's heartbeat and ping.
    Heartbeat,
    /// The server is shutting down: close with 1001.
    Shutdown,
    /// A newer root replaced this one: close with 4000.
    Replaced,
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
/// is served through the wrapper.
pub(crate) fn serve(
    upgraded: Upgraded,
    registration: Registration,
    rx: queue::Receiver<String, Command>,
) -> impl Future<Output = ()> {
    let config = &registration.shared.config;
    let socket = Socket {
        decoder: Decoder::new(config.max_frame_bytes),
        handler: Handler {
            policy: Policy::new(
                config.rate_per_second,
                config.rate_burst,
                config.max_bad_messages,
                Instant::now(),
            ),
            ping_sent: None,
            registration,
        },
        rx,
        out: Vec::new(),
        full_since: None,
    };
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        // With the bytes the client sent right after its request, if any.
        Ok(parts) => Either::Left(SocketTask::new(
            parts.io.into_inner(),
            socket,
            parts.read_buf.to_vec(),
        )),
        Err(upgraded) => Either::Right(SocketTask::new(TokioIo::new(upgraded), socket, Vec::new())),
    }
}

/// A socket's place in the registry: leaving it, explicitly or by being dropped (an
/// upgrade that never completed, a task dropped before it ended), unregisters the
/// socket once.
#[derive(Debug)]
pub(crate) struct Registration {
    role: Role,
    shared: Arc<Shared>,
    left: bool,
}

impl Registration {
    /// Takes responsibility for unregistering the socket registered as `role`.
    pub(crate) fn new(shared: Arc<Shared>, role: Role) -> Self {
        Self {
            role,
            shared,
            left: false,
        }
    }

    /// Unregisters the socket (once): no message is routed to it any more.
    fn leave(&mut self) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        match self.role {
            Role::Join(id) => self.shared.registry().leave(&id),
            Role::Root(ticket) => self.shared.registry().root_left(ticket),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.leave();
    }
}

/// A socket's state besides its connection.
struct Socket {
    decoder: Decoder,
    handler: Handler,
    rx: queue::Receiver<String, Command>,
    /// Frames to write (queued messages, pongs, heartbeats, the close frame), encoded
    /// only while no write is under way; given back once written.
    out: Vec<u8>,
    /// Since when the outbound queue has been full after every write: a peer that
    /// reads too slowly to ever drain it is closed after `write_timeout`.
    full_since: Option<Instant>,
}

/// Handles the messages of one socket.
struct Handler {
    policy: Policy,
    /// When the unanswered ping to the root was sent.
    ping_sent: Option<Instant>,
    registration: Registration,
}

pin_project! {
    /// One socket's whole life, as a hand-written future: its loop, then its closing.
    ///
    /// Written by hand rather than as an `async fn` around `select!`, because every
    /// open socket holds this state: the compiler's layout of the same loop took
    /// twice the bytes.
    struct SocketTask<S> {
        // The `/join` socket's lifetime (never polled for the root).
        #[pin]
        lifetime: Sleep,
        conn: Conn<S>,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for SocketTask<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        this.conn.poll(this.lifetime, cx)
    }
}

/// Everything of a [`SocketTask`] but its lifetime timer.
struct Conn<S> {
    io: S,
    socket: Socket,
    /// How many bytes of `socket.out` went out.
    written: usize,
    /// The write timeout, armed when a write has to wait (boxed: rarely needed).
    stalled: Option<Pin<Box<Sleep>>>,
    phase: Phase,
}

/// Where a socket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Relaying.
    Open,
    /// Writing its close frame; the connection closes when the task ends. (No
    /// separate `shutdown`: closing sends the FIN anyway, one system call fewer.)
    Closing,
    /// Finished.
    Done,
}

/// How far a write got.
enum Wrote {
    /// Everything was written (and flushed).
    All,
    /// The connection cannot take more yet.
    Waiting,
    /// The connection failed.
    Failed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SocketTask<S> {
    /// The task for `socket` on `io`, which starts with `early`: bytes the client sent
    /// before it saw our answer.
    fn new(io: S, mut socket: Socket, mut early: Vec<u8>) -> Self {
        let shared = Arc::clone(&socket.handler.registration.shared);
        let mut end = None;
        if !early.is_empty() {
            end = socket
                .handler
                .on_bytes(&mut socket.decoder, &mut early, &mut socket.out);
        }
        // Registered before this check, or told by `close_all` after it: either way a
        // socket that opens during shutdown is closed.
        if end.is_none() && shared.shutdown.is_cancelled() {
            end = Some(End::Close(close::GOING_AWAY, close::REASON_SHUTDOWN));
        }
        let mut conn = Conn {
            io,
            socket,
            written: 0,
            stalled: None,
            phase: Phase::Open,
        };
        if let Some(end) = end {
            conn.end(end);
        }
        Self {
            lifetime: sleep(shared.config.timeout),
            conn,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn poll(&mut self, mut lifetime: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.phase {
                Phase::Open => {
                    let end = ready!(self.poll_open(lifetime.as_mut(), cx));
                    self.end(end);
                }
                Phase::Closing => {
                    let finished = match self.poll_write(cx) {
                        Wrote::All | Wrote::Failed => Poll::Ready(()),
                        Wrote::Waiting => Poll::Pending,
                    };
                    // The goodbye's timer was armed by `end`.
                    if finished.is_pending() && !self.write_timed_out(cx) {
                        return Poll::Pending;
                    }
                    self.phase = Phase::Done;
                }
                Phase::Done => return Poll::Ready(()),
            }
        }
    }

    /// Runs the open socket until it ends. It waits on three things only, in this
    /// order: its queue (messages and commands), for `/join` sockets their lifetime,
    /// and its connection. A write under way is finished before anything else.
    fn poll_open(&mut self, mut lifetime: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<End> {
        let is_root = matches!(self.socket.handler.registration.role, Role::Root(_));
        loop {
            if !self.socket.out.is_empty() {
                match self.poll_write(cx) {
                    Wrote::All => {
                        if let Some(end) = self.socket.check_backlog() {
                            return Poll::Ready(end);
                        }
                    }
                    Wrote::Failed => return Poll::Ready(End::Gone),
                    Wrote::Waiting => {
                        if !self.write_timed_out(cx) {
                            return Poll::Pending;
                        }
                        let shared = &self.socket.handler.registration.shared;
                        Stats::bump(&shared.stats.abusive_closes);
                        info!("socket does not read its messages; closing it");
                        return Poll::Ready(End::Abandon);
                    }
                }
            }
            if let Poll::Ready(received) = self.socket.rx.poll_recv(cx) {
                if let Some(end) = self.socket.on_received(received) {
                    return Poll::Ready(end);
                }
                continue;
            }
            if !is_root && lifetime.as_mut().poll(cx).is_ready() {
                Stats::bump(&self.socket.handler.registration.shared.stats.timeouts);
                return Poll::Ready(End::CloseNoStatus);
            }
            // Pongs for the pings just read, if any, are written on the next turn.
            if let Some(end) = ready!(self.poll_read(cx)) {
                return Poll::Ready(end);
            }
        }
    }

    /// Reads what the peer sent and handles every complete frame in it; `Some` ends
    /// the socket. The bytes land in a buffer on the stack of this poll: while the
    /// peer is silent, the socket holds no read buffer at all.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<End>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        Poll::Ready(
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                Err(error) => {
                    debug!(role = ?self.socket.handler.registration.role, %error, "socket read error");
                    Some(End::Gone)
                }
                Ok(()) if buf.filled().is_empty() => Some(End::Gone),
                Ok(()) => {
                    let socket = &mut self.socket;
                    socket
                        .handler
                        .on_bytes(&mut socket.decoder, buf.filled_mut(), &mut socket.out)
                }
            },
        )
    }

    /// Writes what is left of `socket.out`, then flushes.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Wrote {
        let out = &mut self.socket.out;
        while self.written < out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &out[self.written..]) {
                Poll::Pending => return Wrote::Waiting,
                Poll::Ready(Ok(0)) => return Wrote::Failed,
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(error)) => {
                    debug!(%error, "write failed");
                    return Wrote::Failed;
                }
            }
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => return Wrote::Waiting,
            Poll::Ready(Err(_)) => return Wrote::Failed,
            Poll::Ready(Ok(())) => {}
        }
        // Given back, so an idle socket holds no write buffer.
        *out = Vec::new();
        self.written = 0;
        if self.phase == Phase::Open {
            self.stalled = None;
        }
        Wrote::All
    }

    /// Whether the write timeout, armed when first needed, has passed.
    fn write_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.socket.handler.registration.shared.config.write_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(sleep(timeout)));
        stalled.as_mut().poll(cx).is_ready()
    }

    /// Ends the loop: leaves the registry and prepares the close frame, if any.
    fn end(&mut self, end: End) {
        let role = self.socket.handler.registration.role;
        self.socket.handler.registration.leave();
        debug!(?role, ?end, "socket ended");
        self.socket.out.clear();
        self.written = 0;
        self.stalled = None;
        match end {
            // Nothing to send, nothing to wait for.
            End::Gone | End::Abandon => {
                self.phase = Phase::Done;
                return;
            }
            // Echo the peer's status code, as RFC 6455 suggests.
            End::ClosedByPeer(code) => encode_close(&mut self.socket.out, code, ""),
            End::Close(code, reason) => encode_close(&mut self.socket.out, Some(code), reason),
            End::CloseNoStatus => encode_close(&mut self.socket.out, None, ""),
        }
        // The goodbye gets one write timeout in all: a peer that is gone or stuck must
        // not hold the task.
        self.phase = Phase::Closing;
        let timeout = self.socket.handler.registration.shared.config.write_timeout;
        self.stalled = Some(Box::pin(sleep(timeout)));
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
            Received::Control(Command::Shutdown) => {
                Some(End::Close(close::GOING_AWAY, close::REASON_SHUTDOWN))
            }
            Received::Control(Command::Replaced) => Some(End::Close(
                close::ROOT_REPLACED,
                close::REASON_ROOT_REPLACED,
            )),
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
        if now.duration_since(since) < self.handler.registration.shared.config.write_timeout {
            return None;
        }
        Stats::bump(&self.handler.registration.shared.stats.abusive_closes);
        info!(role = ?self.handler.registration.role, "outbound queue stayed full; closing the socket");
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
        let config = &self.registration.shared.config;
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
        let (role, shared) = (self.registration.role, &*self.registration.shared);
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
        Stats::bump(&self.registration.shared.stats.abusive_closes);
        info!(role = ?self.registration.role, %error, "closing a socket after a bad frame");
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
