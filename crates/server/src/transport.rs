//! One WebSocket's transport: bytes and timers only. It reads what the peer sent and
//! hands it to the socket's [`Handler`], writes what the handler and the socket's queue
//! produce, and enforces the `/join` lifetime and the write timeouts.
//!
//! Each socket is one hand-written future ([`SocketTask`]): its loop, then its close.
//! It waits on three things only: its queue (messages, and commands such as close on
//! shutdown or the root's heartbeat), for `/join` sockets their lifetime, and its
//! connection. Leaving the registry happens once, when the loop ends.
//!
//! It reads into a buffer on the stack of the poll that found bytes, so a socket
//! waiting for its peer holds no read buffer, and writes from a buffer it only holds
//! while writing.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bootstrap_protocol::close;
use bootstrap_ws::{Decoder, OpCode, encode_close, encode_frame, parse_header};
use futures_util::future::Either;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info};

use crate::files::WriteDeadline;
use crate::handle::{Command, Inbox, Outgoing};
use crate::handler::{End, Handler};
use crate::queue::Received;
use crate::state::{Registration, Role, Shared};

/// Most queued messages written at once.
const WRITE_BATCH: usize = 64;

/// Most bytes of queued messages taken into one write (a single larger message is
/// taken alone): what a socket's write buffer holds besides its queue.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Bytes read at once, into a buffer that lives on the stack for one poll. 8 KiB holds
/// a typical signaling burst (an SDP of 500 to 1500 bytes in its envelope, then
/// candidates); a larger message takes several reads.
const READ_CHUNK: usize = 8 * 1024;

/// Runs one upgraded socket until it ends, then unregisters it.
///
/// Behind [`crate::serve`] the connection is a plain `TcpStream`, which is taken back
/// out of hyper's wrapper; any other transport (a router served by another server)
/// is served through the wrapper.
pub(crate) fn serve(
    upgraded: Upgraded,
    registration: Registration,
    rx: Inbox,
) -> impl Future<Output = ()> {
    match upgraded.downcast::<TokioIo<WriteDeadline<TcpStream>>>() {
        // With the bytes the client sent right after its request, if any.
        Ok(parts) => Either::Left(SocketTask::new(
            parts.io.into_inner().into_inner(),
            registration,
            rx,
            parts.read_buf.to_vec(),
        )),
        Err(upgraded) => Either::Right(
            match upgraded.downcast::<TokioIo<WriteDeadline<TlsStream<TcpStream>>>>() {
                // TLS: the stream keeps its TLS state (and rustls's buffers). Boxed:
                // rustls's connection state is over a kilobyte, and the future of
                // every plain socket would otherwise be as large as this variant.
                Ok(parts) => Either::Left(Box::pin(SocketTask::new(
                    parts.io.into_inner().into_inner(),
                    registration,
                    rx,
                    parts.read_buf.to_vec(),
                ))),
                Err(upgraded) => Either::Right(SocketTask::new(
                    TokioIo::new(upgraded),
                    registration,
                    rx,
                    Vec::new(),
                )),
            },
        ),
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.release_in_flight();
        let reading = std::mem::take(&mut self.reading);
        self.shared().reading.release(reading);
    }
}

/// A socket's state besides its connection.
struct Socket {
    decoder: Decoder,
    handler: Handler,
    rx: Inbox,
    /// Frames to write (queued messages, pongs, heartbeats, the close frame), encoded
    /// only while no write is under way; given back once written.
    out: Vec<u8>,
    /// Since when the outbound queue has been full after every write: a peer that
    /// reads too slowly to ever drain it is closed after `write_timeout`.
    full_since: Option<Instant>,
    /// Bytes of the messages in `out`, still taken from the server's queue budget
    /// until written.
    in_flight: usize,
    /// Bytes the decoder holds for an unfinished frame or message, taken from the
    /// server's reading budget: a peer that stops halfway through a large message
    /// costs its share.
    reading: usize,
    /// When the socket opened, for the join latency.
    opened: Instant,
    /// Whether a message was relayed to this socket (for a `/join` socket: its
    /// handshake got an answer).
    answered: bool,
}

pin_project! {
    /// One socket's whole life, as a hand-written future: its loop, then its closing.
    ///
    /// Written by hand rather than as an `async fn` around `select!`, because every
    /// open socket holds this state: the compiler's layout of the same loop took
    /// twice the bytes.
    pub(crate) struct SocketTask<S> {
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
    /// The task for the socket registered as `registration` on `io`, reading its queue
    /// `rx`, which starts with `early`: bytes the client sent before it saw our answer.
    pub(crate) fn new(io: S, registration: Registration, rx: Inbox, mut early: Vec<u8>) -> Self {
        let now = Instant::now();
        let timeout = registration.overlay().timeout();
        let max_frame_bytes = registration.shared().config().max_frame_bytes;
        let mut socket = Socket {
            decoder: Decoder::new(max_frame_bytes),
            handler: Handler::new(registration, now),
            rx,
            out: Vec::new(),
            full_since: None,
            in_flight: 0,
            reading: 0,
            opened: now,
            answered: false,
        };
        let mut end = None;
        if !early.is_empty() {
            let Socket {
                decoder,
                handler,
                out,
                ..
            } = &mut socket;
            end = handler.on_bytes(decoder, &mut early, out, now);
            end = end.or_else(|| socket.account_reading());
        }
        // Registered before this check, or told by `close_all` after it: either way a
        // socket that opens during shutdown is closed.
        if end.is_none() && socket.shared().shutdown.is_cancelled() {
            end = Some(End::Dismissed(close::GOING_AWAY, close::REASON_SHUTDOWN));
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
            lifetime: sleep(timeout),
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
    /// and its connection. A write under way is finished before anything else but a
    /// command that closes the socket.
    fn poll_open(&mut self, mut lifetime: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<End> {
        let is_root = matches!(self.socket.handler.registration().role(), Role::Root(_));
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
                        // A close (shutdown, replacement) does not wait for the peer
                        // to read what is queued.
                        if let Poll::Ready(command) =
                            self.socket.rx.poll_control(cx, |c| c.closes())
                            && let Some(end) = self.socket.on_command(command)
                        {
                            return Poll::Ready(end);
                        }
                        if !self.write_timed_out(cx) {
                            return Poll::Pending;
                        }
                        self.socket
                            .handler
                            .registration()
                            .bump(|s| &s.abusive_closes);
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
                self.socket.handler.registration().bump(|s| &s.timeouts);
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
                    debug!(role = ?self.socket.handler.registration().role(), %error, "socket read error");
                    Some(End::Gone)
                }
                Ok(()) if buf.filled().is_empty() => Some(End::Gone),
                Ok(()) => {
                    let Socket {
                        decoder,
                        handler,
                        out,
                        ..
                    } = &mut self.socket;
                    let end = handler.on_bytes(decoder, buf.filled_mut(), out, Instant::now());
                    end.or_else(|| self.socket.account_reading())
                }
            },
        )
    }

    /// Writes what is left of `socket.out`, then flushes. While the socket is open, a
    /// write that makes progress restarts the write timeout: only a peer that reads
    /// nothing for `write_timeout` counts as stalled, not one that reads slowly.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Wrote {
        let out = &mut self.socket.out;
        while self.written < out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &out[self.written..]) {
                Poll::Pending => return Wrote::Waiting,
                Poll::Ready(Ok(0)) => return Wrote::Failed,
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    if self.phase == Phase::Open {
                        self.stalled = None;
                    }
                }
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
        self.socket.release_in_flight();
        if self.phase == Phase::Open {
            self.stalled = None;
        }
        Wrote::All
    }

    /// Whether the write timeout, armed when first needed, has passed.
    fn write_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let socket = &self.socket;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(sleep(socket.shared().config().write_timeout)));
        stalled.as_mut().poll(cx).is_ready()
    }

    /// Ends the loop: leaves the registry and prepares the close frame, if any, after
    /// the frame being written (a frame cannot be cut short).
    fn end(&mut self, end: End) {
        let role = self.socket.handler.registration().role();
        self.socket.count_end(role, end);
        self.socket.handler.leave();
        debug!(?role, ?end, "socket ended");
        let in_flight = frame_end(&self.socket.out, self.written);
        self.socket.out.truncate(in_flight);
        // What is left is at most one message and the close frame.
        self.socket.release_in_flight();
        let out = &mut self.socket.out;
        let config = self.socket.handler.registration().shared().config();
        // The goodbye gets one write timeout in all: a peer that is gone or stuck must
        // not hold the task. A close the server ordered gets half the shutdown grace at
        // most, so that every socket has ended before the server stops waiting.
        let mut goodbye = config.write_timeout;
        match end {
            // Nothing to send, nothing to wait for.
            End::Gone | End::Abandon => {
                self.phase = Phase::Done;
                return;
            }
            // Echo the peer's status code, as RFC 6455 suggests.
            End::ClosedByPeer(code) => encode_close(out, code, ""),
            End::Close(code, reason) => encode_close(out, Some(code), reason),
            End::Dismissed(code, reason) => {
                goodbye = goodbye.min(config.shutdown_grace / 2);
                encode_close(out, Some(code), reason);
            }
            End::CloseNoStatus => encode_close(out, None, ""),
        }
        self.phase = Phase::Closing;
        self.stalled = Some(Box::pin(sleep(goodbye)));
    }
}

/// Where the frame that `written` bytes of `out` reached ends: everything after it can
/// be dropped without breaking the stream. `out` holds whole frames we encoded.
fn frame_end(out: &[u8], written: usize) -> usize {
    let mut at = 0;
    while at < written {
        let Ok(Some(header)) = parse_header(&out[at..]) else {
            return out.len();
        };
        let len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
        at = at.saturating_add(header.len).saturating_add(len);
    }
    at.min(out.len())
}

impl Socket {
    fn shared(&self) -> &Shared {
        self.handler.registration().shared()
    }

    /// Counts how the socket ends: its close code and, for a `/join` socket, the
    /// outcome of its handshake.
    fn count_end(&self, role: Role, end: End) {
        let registration = self.handler.registration();
        let closes = &registration.shared().closes;
        match end {
            End::Gone | End::Abandon => closes.dropped(),
            End::ClosedByPeer(code) => closes.sent(code),
            End::Close(code, _) | End::Dismissed(code, _) => closes.sent(Some(code)),
            End::CloseNoStatus => closes.sent(None),
        }
        if let Role::Join(_) = role {
            if self.answered {
                registration.bump(|s| &s.joins_answered);
            } else if end == End::CloseNoStatus {
                registration.bump(|s| &s.joins_timed_out);
            } else {
                registration.bump(|s| &s.joins_closed_early);
            }
        }
    }

    /// Gives the bytes of the messages taken into `out` back to the server's budget.
    fn release_in_flight(&mut self) {
        let bytes = std::mem::take(&mut self.in_flight);
        self.shared().budget.release(bytes);
    }

    /// Takes what the decoder holds now from the reading budget (or gives back what it
    /// no longer holds); closes the socket with 1013 when the budget is spent.
    fn account_reading(&mut self) -> Option<End> {
        let now = self.decoder.buffered();
        let budget = &self.handler.registration().shared().reading;
        if now <= self.reading {
            budget.release(self.reading - now);
            self.reading = now;
            return None;
        }
        if budget.try_reserve(now - self.reading) {
            self.reading = now;
            return None;
        }
        self.handler.registration().bump(|s| &s.closed_over_budget);
        info!(role = ?self.handler.registration().role(), "no room for an unfinished message; closing the socket");
        Some(End::Close(close::TRY_AGAIN_LATER, "server busy"))
    }

    /// Handles what the queue gave; `Some` ends the loop. Messages are encoded into
    /// `out`, with whatever else is queued (up to a batch), to go out in one write.
    fn on_received(&mut self, received: Option<Received<Outgoing, Command>>) -> Option<End> {
        match received? {
            Received::Message(first) => {
                if !self.answered {
                    self.answered = true;
                    if let Role::Join(_) = self.handler.registration().role() {
                        let shared = self.handler.registration().shared();
                        let latency = self.opened.elapsed().as_secs_f64();
                        shared.metrics.join_latency.observe(latency);
                    }
                }
                let (out, in_flight) = (&mut self.out, &mut self.in_flight);
                let mut take = |message: Outgoing| {
                    *in_flight += message.text.len();
                    encode_frame(out, OpCode::Text, message.text.as_bytes(), None);
                    // Dropped here: its sender's share of the root's queue is free.
                };
                let room = WRITE_BATCH_BYTES.saturating_sub(first.text.len());
                take(first);
                self.rx.drain_each(WRITE_BATCH - 1, room, take);
                None
            }
            Received::Control(command) => self.on_command(command),
        }
    }

    fn on_command(&mut self, command: Command) -> Option<End> {
        self.handler
            .on_command(command, &mut self.out, Instant::now())
    }

    /// After a write: closes a socket whose queue has stayed full for `write_timeout`.
    fn check_backlog(&mut self) -> Option<End> {
        if !self.rx.is_full() {
            self.full_since = None;
            return None;
        }
        let now = Instant::now();
        let since = *self.full_since.get_or_insert(now);
        if now.duration_since(since) < self.shared().config().write_timeout {
            return None;
        }
        self.handler.registration().bump(|s| &s.abusive_closes);
        info!(role = ?self.handler.registration().role(), "outbound queue stayed full; closing the socket");
        Some(End::Close(close::POLICY, "not reading fast enough"))
    }
}

#[cfg(test)]
mod tests {
    //! The transport over an in-memory connection (`tokio::io::duplex`), in paused time:
    //! every timer fires exactly when due, and no test waits on the wall clock.

    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use bootstrap_protocol::paths::HEARTBEAT;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream, duplex};
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    use super::*;
    use crate::config::Config;
    use crate::handle::Outbox;
    use crate::route::DEFAULT_OVERLAY;
    use crate::state::AppState;

    fn shared(adjust: impl FnOnce(&mut Config)) -> Arc<Shared> {
        let mut config = Config::new("s");
        config.seed = Some(3);
        adjust(&mut config);
        AppState::new(config).expect("valid config").0
    }

    /// A `/join` socket's task on a connection that buffers `buffer` bytes.
    fn join(shared: &Arc<Shared>, buffer: usize) -> (JoinHandle<()>, DuplexStream) {
        let overlay = shared.overlay(DEFAULT_OVERLAY).expect("default overlay");
        let (registration, rx) = shared.admit_join(&overlay).expect("room");
        let (server, client) = duplex(buffer);
        let task = tokio::spawn(SocketTask::new(server, registration, rx, Vec::new()));
        (task, client)
    }

    /// The root's task, with the sender of its queue (for heartbeats).
    fn root(shared: &Arc<Shared>, buffer: usize) -> (JoinHandle<()>, DuplexStream, Outbox) {
        let overlay = shared.overlay(DEFAULT_OVERLAY).expect("default overlay");
        let (registration, rx, tx) = shared.register_root(&overlay, false).expect("open");
        let (server, client) = duplex(buffer);
        let task = tokio::spawn(SocketTask::new(server, registration, rx, Vec::new()));
        (task, client, tx)
    }

    /// Reads one server frame: its opcode and payload.
    async fn frame(client: &mut DuplexStream) -> (OpCode, Vec<u8>) {
        let mut bytes = Vec::new();
        loop {
            if let Some(header) = parse_header(&bytes).expect("a valid server frame") {
                let len = header.len + usize::try_from(header.payload_len).expect("small");
                if bytes.len() >= len {
                    assert_eq!(bytes.len(), len, "read past one frame");
                    return (header.opcode, bytes[header.len..].to_vec());
                }
            }
            let mut byte = [0; 1];
            let n = client.read(&mut byte).await.expect("read");
            assert_eq!(n, 1, "connection ended mid-frame");
            bytes.push(byte[0]);
        }
    }

    /// The close frame's status code and reason.
    fn status(payload: &[u8]) -> (u16, &str) {
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        (
            code,
            std::str::from_utf8(&payload[2..]).expect("UTF-8 reason"),
        )
    }

    async fn ends_within(task: JoinHandle<()>, limit: Duration) {
        timeout(limit, task)
            .await
            .expect("the task ends in time")
            .expect("no panic");
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_socket_closes_without_status_at_the_end_of_its_lifetime() {
        let shared = shared(|c| c.timeout = Duration::from_secs(30));
        let start = Instant::now();
        let (task, mut client) = join(&shared, 1024);
        assert!(
            timeout(Duration::from_millis(29_999), frame(&mut client))
                .await
                .is_err()
        );
        let overlay = shared.overlay(DEFAULT_OVERLAY).expect("default overlay");
        assert_eq!(overlay.registry().prospect_count(), 1);
        assert_eq!(frame(&mut client).await, (OpCode::Close, Vec::new()));
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        ends_within(task, Duration::from_millis(1)).await;
        assert_eq!(overlay.registry().prospect_count(), 0);
        assert_eq!(shared.stats.timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_dropped_after_the_write_timeout() {
        let shared = shared(|c| c.write_timeout = Duration::from_secs(10));
        let start = Instant::now();
        let (task, _client, tx) = root(&shared, 64);
        tx.try_send("x".repeat(1000).into()).expect("room");
        ends_within(task, Duration::from_secs(11)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(
            !shared
                .overlay(DEFAULT_OVERLAY)
                .expect("default")
                .registry()
                .has_root()
        );
        assert_eq!(shared.stats.abusive_closes.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_is_not_treated_as_stalled() {
        let shared = shared(|c| c.write_timeout = Duration::from_secs(10));
        let (task, mut client, tx) = root(&shared, 64);
        // 10 KB at 640 B/s: 14 s to read, longer than the write timeout, but the
        // writes never stop making progress.
        for i in 0..10 {
            tx.try_send(format!("{i}{}", "r".repeat(999)).into())
                .expect("room");
        }
        let start = Instant::now();
        let mut got = 0;
        while got < 10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut chunk = [0; 64];
            let n = client.read(&mut chunk).await.expect("read");
            assert_ne!(n, 0, "closed after {:?}", start.elapsed());
            got += chunk[..n].iter().filter(|&&b| b == 0x81).count();
        }
        assert!(
            start.elapsed() > Duration::from_secs(12),
            "{:?}",
            start.elapsed()
        );
        assert!(!task.is_finished(), "the reader was dropped");
        assert_eq!(shared.stats.abusive_closes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_that_stays_full_closes_the_socket_with_1008() {
        let shared = shared(|c| {
            c.join_queue = 2;
            c.write_timeout = Duration::from_secs(10);
            c.timeout = Duration::from_secs(3600);
        });
        let start = Instant::now();
        let overlay = shared.overlay(DEFAULT_OVERLAY).expect("default overlay");
        let (registration, rx) = shared.admit_join(&overlay).expect("room");
        let Role::Join(id) = registration.role() else {
            unreachable!("a /join socket")
        };
        let (server, mut client) = duplex(64);
        let task = tokio::spawn(SocketTask::new(server, registration, rx, Vec::new()));
        // A producer keeps the queue full; the peer reads 64 bytes a second.
        let producer = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                loop {
                    let route = bootstrap_protocol::Destination::Peer(id);
                    let overlay = shared.overlay(DEFAULT_OVERLAY).expect("default overlay");
                    if let Ok(handle) = overlay.registry().route(&route) {
                        while handle.tx.try_send("y".repeat(100).into()).is_ok() {}
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let close = loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (opcode, payload) = frame(&mut client).await;
            if opcode == OpCode::Close {
                break payload;
            }
        };
        producer.abort();
        assert_eq!(status(&close), (close::POLICY, "not reading fast enough"));
        assert!(
            start.elapsed() >= Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        ends_within(task, Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_root_gets_heartbeats_and_is_closed_when_its_ping_goes_unanswered() {
        let shared = shared(|c| c.root_ping_timeout = Duration::from_secs(30));
        let (task, mut client, tx) = root(&shared, 1024);
        tx.control(Command::Heartbeat).expect("open");
        assert_eq!(
            frame(&mut client).await,
            (OpCode::Text, HEARTBEAT.as_bytes().to_vec())
        );
        assert_eq!(frame(&mut client).await, (OpCode::Ping, Vec::new()));
        tokio::time::sleep(Duration::from_secs(30)).await;
        tx.control(Command::Heartbeat).expect("open");
        let (opcode, payload) = frame(&mut client).await;
        assert_eq!(
            (opcode, status(&payload)),
            (OpCode::Close, (close::ROOT_UNRESPONSIVE, "no pong"))
        );
        ends_within(task, Duration::from_millis(1)).await;
        assert!(
            !shared
                .overlay(DEFAULT_OVERLAY)
                .expect("default")
                .registry()
                .has_root()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pong_keeps_the_root() {
        let shared = shared(|c| c.root_ping_timeout = Duration::from_secs(30));
        let (_task, mut client, tx) = root(&shared, 1024);
        tx.control(Command::Heartbeat).expect("open");
        frame(&mut client).await;
        assert_eq!(frame(&mut client).await.0, OpCode::Ping);
        let mut pong = Vec::new();
        encode_frame(&mut pong, OpCode::Pong, &[], Some([1, 2, 3, 4]));
        client.write_all(&pong).await.expect("write");
        tokio::time::sleep(Duration::from_secs(30)).await;
        tx.control(Command::Heartbeat).expect("open");
        assert_eq!(frame(&mut client).await.0, OpCode::Text);
        assert_eq!(
            frame(&mut client).await.0,
            OpCode::Ping,
            "a new ping, no close"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_every_socket_with_1001() {
        let shared = shared(|_| {});
        let (root_task, mut root_client, _tx) = root(&shared, 1024);
        let (join_task, mut join_client) = join(&shared, 1024);
        shared.close_all(Command::Shutdown);
        for client in [&mut root_client, &mut join_client] {
            let (opcode, payload) = frame(client).await;
            assert_eq!(
                (opcode, status(&payload)),
                (OpCode::Close, (close::GOING_AWAY, close::REASON_SHUTDOWN))
            );
        }
        ends_within(root_task, Duration::from_millis(1)).await;
        ends_within(join_task, Duration::from_millis(1)).await;
        let overlay = shared.overlay(DEFAULT_OVERLAY).expect("default overlay");
        assert_eq!(overlay.registry().handles().count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_pre_empts_a_write_the_peer_does_not_read() {
        let shared = shared(|c| {
            c.write_timeout = Duration::from_secs(10);
            c.shutdown_grace = Duration::from_secs(5);
        });
        let start = Instant::now();
        let (task, mut client, tx) = root(&shared, 64);
        for _ in 0..3 {
            tx.try_send("z".repeat(200).into()).expect("room");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        shared.close_all(Command::Shutdown);
        // The peer reads again: the frame in flight arrives whole, then the close frame;
        // the messages queued behind it are dropped.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            frame(&mut client).await,
            (OpCode::Text, "z".repeat(200).into_bytes())
        );
        let (opcode, payload) = frame(&mut client).await;
        assert_eq!(
            (opcode, status(&payload)),
            (OpCode::Close, (close::GOING_AWAY, close::REASON_SHUTDOWN))
        );
        ends_within(task, Duration::from_millis(1)).await;
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dismissed_socket_whose_peer_never_reads_ends_within_half_the_grace() {
        let shared = shared(|c| {
            c.write_timeout = Duration::from_secs(10);
            c.shutdown_grace = Duration::from_secs(5);
        });
        let (task, _client, tx) = root(&shared, 64);
        tx.try_send("z".repeat(1000).into()).expect("room");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let dismissed = Instant::now();
        shared.close_all(Command::Shutdown);
        ends_within(task, Duration::from_secs(5)).await;
        assert_eq!(dismissed.elapsed(), Duration::from_millis(2500));
    }

    #[test]
    fn a_close_goes_after_the_frame_in_flight() {
        let mut out = Vec::new();
        encode_frame(&mut out, OpCode::Text, &[b'a'; 10], None);
        let first = out.len();
        encode_frame(&mut out, OpCode::Text, &[b'b'; 300], None);
        let second = out.len();
        encode_frame(&mut out, OpCode::Text, b"c", None);
        assert_eq!(frame_end(&out, 0), 0);
        assert_eq!(frame_end(&out, 1), first);
        assert_eq!(frame_end(&out, first), first);
        assert_eq!(frame_end(&out, first + 1), second);
        assert_eq!(frame_end(&out, out.len()), out.len());
    }
}
