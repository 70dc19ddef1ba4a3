//! One simulated handshake: the newcomer's `/join` socket and, once the root has seen
//! the offer, the answerer's own fresh `/join` socket.
//!
//! The newcomer sends its offer and first `early` candidates with `destination: null`
//! (to the root); the answerer sends its answer and K candidates to the newcomer's id;
//! when the newcomer hears from the answerer it sends its remaining candidates straight
//! to the answerer's id (`docs/protocol.md#handshake`). Every frame received is checked against the
//! exact bytes expected next on its stream; then both sockets close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_rustls::rustls::ClientConfig;

use crate::script::{Id, Script, Side, Tag, origin_of};
use crate::verify::{Board, Failure, FailureKind, RootNote};
use crate::ws::{Arrival, Frame, WsClient, WsError};

/// Everything the generator's tasks share.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// Where newcomers open their `/join` socket (the server under test, or a
    /// cluster's other instance).
    pub(crate) newcomer_server: SocketAddr,
    /// Where answerers open theirs.
    pub(crate) answerer_server: SocketAddr,
    /// The path newcomers and answerers open (`/join`, or one carrying a token).
    pub(crate) join_path: String,
    /// Message content.
    pub(crate) script: Script,
    /// Handshakes waiting for their offer to reach the root.
    pub(crate) board: Board,
    /// Longest a handshake may take before its missing messages count as lost.
    pub(crate) timeout: Duration,
    /// TLS client configuration for `wss://`; `None` for `ws://`.
    pub(crate) tls: Option<Arc<ClientConfig>>,
}

/// Timings collected by one worker, in nanoseconds.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    /// Relay latency of every message: read by the receiver minus written by the sender.
    pub(crate) latency_ns: Vec<u64>,
    /// The same, ending when the kernel received it rather than when the generator
    /// read it: without the generator's own queueing.
    pub(crate) delivery_ns: Vec<u64>,
    /// Handshake time: newcomer's connect to the last message delivered.
    pub(crate) handshake_ns: Vec<u64>,
    /// Handshakes that failed verification.
    pub(crate) failures: Vec<Failure>,
}

/// How long a finished handshake waits for the server to confirm each close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Runs handshake number `n` and records its timings in `samples`.
pub(crate) async fn run(ctx: &Ctx, n: u32, samples: &mut Samples) -> Result<(), Failure> {
    let (tx, rx) = mpsc::unbounded_channel();
    let result = Handshake::new(ctx, n).run(tx, rx, samples).await;
    // Normally the root took it already; after a failure it may still be there.
    let _ = ctx.board.take(n);
    result
}

struct Handshake<'a> {
    ctx: &'a Ctx,
    n: u32,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    /// When each newcomer / answerer message was written, by rank.
    sent_newcomer: Vec<Instant>,
    sent_answerer: Vec<Instant>,
    newcomer_id: Option<Id>,
    answerer_id: Option<Id>,
    at_root: u32,
    at_newcomer: u32,
    at_answerer: u32,
}

impl<'a> Handshake<'a> {
    fn new(ctx: &'a Ctx, n: u32) -> Self {
        let now = Instant::now();
        let ranks = ctx.script.candidates as usize + 1;
        Self {
            ctx,
            n,
            buf: Vec::with_capacity(2048),
            scratch: Vec::with_capacity(2048),
            sent_newcomer: vec![now; ranks],
            sent_answerer: vec![now; ranks],
            newcomer_id: None,
            answerer_id: None,
            at_root: 0,
            at_newcomer: 0,
            at_answerer: 0,
        }
    }

    fn failure(&self, kind: FailureKind, what: impl std::fmt::Display) -> Failure {
        Failure::new(kind, format!("handshake {}: {what}", self.n))
    }

    fn connection<'s>(&'s self, who: &'s str) -> impl FnOnce(WsError) -> Failure + 's {
        move |e| self.failure(FailureKind::Connection, format_args!("{who}: {e}"))
    }

    fn done(&self) -> bool {
        let script = &self.ctx.script;
        self.at_root == script.early + 1
            && self.at_newcomer == script.candidates + 1
            && self.at_answerer == script.candidates - script.early
    }

    async fn run(
        mut self,
        tx: mpsc::UnboundedSender<RootNote>,
        mut rx: mpsc::UnboundedReceiver<RootNote>,
        samples: &mut Samples,
    ) -> Result<(), Failure> {
        let ctx = self.ctx;
        let started = Instant::now();
        let deadline = started + ctx.timeout;
        let seed = self.n.wrapping_mul(2_654_435_761);
        let mut newcomer = connect(ctx, ctx.newcomer_server, seed, deadline)
            .await
            .map_err(self.connection("newcomer"))?;
        ctx.board.register(self.n, tx);
        for rank in 0..=ctx.script.early {
            self.send(&mut newcomer, Side::Newcomer, rank, None).await?;
        }
        let mut answerer: Option<WsClient> = None;
        let root_bound = ctx.script.early + 1;
        // One timer for the whole handshake, not one per loop turn.
        let timeout = sleep_until(deadline);
        tokio::pin!(timeout);
        while !self.done() {
            // The root drops its sender after the last root-bound message.
            let root_open = self.at_root < root_bound;
            let event = tokio::select! {
                note = rx.recv(), if root_open => Event::Root(note),
                read = newcomer.fill() => Event::Newcomer(read),
                read = fill(&mut answerer) => Event::Answerer(read),
                () = &mut timeout => Event::Timeout,
            };
            match event {
                Event::Root(Some(RootNote::Offer { origin, at })) => {
                    self.record(samples, self.sent_newcomer[0], at);
                    self.at_root = 1;
                    self.newcomer_id = Some(origin);
                    // The root answers with a fresh `/join` socket.
                    let mut socket =
                        connect(ctx, ctx.answerer_server, seed.rotate_left(16), deadline)
                            .await
                            .map_err(self.connection("answerer"))?;
                    for rank in 0..=ctx.script.candidates {
                        self.send(&mut socket, Side::Answerer, rank, Some(origin))
                            .await?;
                    }
                    answerer = Some(socket);
                }
                Event::Root(Some(RootNote::Candidate { rank, at })) => {
                    self.record(samples, self.sent_newcomer[rank as usize], at);
                    self.at_root += 1;
                }
                Event::Root(Some(RootNote::Failed(failure))) => return Err(failure),
                Event::Root(None) => {
                    return Err(self.failure(FailureKind::Connection, "the root task ended"));
                }
                Event::Newcomer(read) => {
                    read.map_err(self.connection("newcomer"))?;
                    self.on_newcomer_frames(&mut newcomer, samples).await?;
                }
                Event::Answerer(read) => {
                    read.map_err(self.connection("answerer"))?;
                    if let Some(socket) = answerer.as_mut() {
                        self.on_answerer_frames(socket, samples).await?;
                    }
                }
                Event::Timeout => {
                    let script = &ctx.script;
                    return Err(self.failure(
                        FailureKind::Lost,
                        format_args!(
                            "timed out; root got {}/{}, newcomer {}/{}, answerer {}/{}",
                            self.at_root,
                            script.early + 1,
                            self.at_newcomer,
                            script.candidates + 1,
                            self.at_answerer,
                            script.candidates - script.early
                        ),
                    ));
                }
            }
        }
        samples
            .handshake_ns
            .push(nanos(Instant::now().duration_since(started)));
        // Both close; nothing may arrive any more.
        let (a, b) = tokio::join!(
            newcomer.close(CLOSE_WAIT),
            close_opt(answerer.take(), CLOSE_WAIT)
        );
        for (who, stray) in [("newcomer", a), ("answerer", b)] {
            match stray {
                Ok(stray) if stray.is_empty() => {}
                Ok(stray) => {
                    return Err(self.failure(
                        FailureKind::Duplicated,
                        format_args!("{who} got {} message(s) after the handshake", stray.len()),
                    ));
                }
                Err(e) => return Err(self.connection(who)(e)),
            }
        }
        Ok(())
    }

    async fn send(
        &mut self,
        socket: &mut WsClient,
        side: Side,
        rank: u32,
        destination: Option<Id>,
    ) -> Result<(), Failure> {
        self.ctx
            .script
            .outgoing(&mut self.buf, self.n, side, rank, destination.as_ref());
        let sent = match side {
            Side::Newcomer => &mut self.sent_newcomer,
            Side::Answerer => &mut self.sent_answerer,
        };
        sent[rank as usize] = Instant::now();
        let who = match side {
            Side::Newcomer => "newcomer",
            Side::Answerer => "answerer",
        };
        socket
            .send_text(&self.buf)
            .await
            .map_err(self.connection(who))
    }

    fn record(&self, samples: &mut Samples, sent: Instant, at: Arrival) {
        samples
            .latency_ns
            .push(nanos(at.read.saturating_duration_since(sent)));
        samples
            .delivery_ns
            .push(nanos(at.delivered.saturating_duration_since(sent)));
    }

    /// The next complete text frame buffered on `who`'s socket, answering pings on the
    /// way; `None` when no complete frame is buffered. Binary and close frames fail the
    /// handshake.
    async fn next_text(
        &self,
        socket: &mut WsClient,
        who: &str,
    ) -> Result<Option<BytesMut>, Failure> {
        while let Some(frame) = socket.next_frame().map_err(self.connection(who))? {
            match frame {
                Frame::Text(text) => return Ok(Some(text)),
                Frame::Ping(payload) => {
                    socket.pong(&payload).await.map_err(self.connection(who))?
                }
                Frame::Pong => {}
                Frame::Binary(_) => {
                    return Err(self.failure(
                        FailureKind::Altered,
                        format_args!("{who} got a binary frame"),
                    ));
                }
                Frame::Close => {
                    return Err(self.failure(
                        FailureKind::Connection,
                        format_args!("{who} closed by server"),
                    ));
                }
            }
        }
        Ok(None)
    }

    /// Frames the newcomer received: the answerer's answer and candidates, in order.
    async fn on_newcomer_frames(
        &mut self,
        socket: &mut WsClient,
        samples: &mut Samples,
    ) -> Result<(), Failure> {
        let at = socket.arrival();
        while let Some(text) = self.next_text(socket, "newcomer").await? {
            let rank = self.at_newcomer;
            if rank > self.ctx.script.candidates {
                return Err(self.failure(FailureKind::Duplicated, "newcomer got an extra message"));
            }
            let Some(newcomer_id) = self.newcomer_id else {
                return Err(self.failure(
                    FailureKind::Misrouted,
                    "newcomer got a message before the root saw its offer",
                ));
            };
            if rank == 0 {
                // The newcomer learns the answerer's id from the first message.
                match origin_of(&text) {
                    Some(id) if id != newcomer_id => self.answerer_id = Some(id),
                    _ => return Err(self.failure(FailureKind::WrongOrigin, "answer's origin")),
                }
            }
            let Some(answerer_id) = self.answerer_id else {
                return Err(self.failure(FailureKind::WrongOrigin, "no answerer id"));
            };
            let expected = Tag {
                handshake: self.n,
                side: Side::Answerer,
                rank,
            };
            self.ctx
                .script
                .check(
                    &text,
                    &mut self.scratch,
                    &answerer_id,
                    expected,
                    Some(&newcomer_id),
                )
                .map_err(|m| Failure::mismatch(&m, &format!("handshake {} newcomer", self.n)))?;
            self.record(samples, self.sent_answerer[rank as usize], at);
            self.at_newcomer += 1;
            if rank == 0 {
                // Heard from the answerer: the remaining candidates go straight to it.
                for rank in self.ctx.script.early + 1..=self.ctx.script.candidates {
                    self.send(socket, Side::Newcomer, rank, Some(answerer_id))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Frames the answerer received: the newcomer's direct candidates, in order.
    async fn on_answerer_frames(
        &mut self,
        socket: &mut WsClient,
        samples: &mut Samples,
    ) -> Result<(), Failure> {
        let at = socket.arrival();
        while let Some(text) = self.next_text(socket, "answerer").await? {
            let script = &self.ctx.script;
            let rank = script.early + 1 + self.at_answerer;
            let (Some(newcomer_id), Some(answerer_id)) = (self.newcomer_id, self.answerer_id)
            else {
                return Err(self.failure(
                    FailureKind::Misrouted,
                    "answerer got a message before the newcomer heard from it",
                ));
            };
            if rank > script.candidates {
                return Err(self.failure(FailureKind::Duplicated, "answerer got an extra message"));
            }
            let expected = Tag {
                handshake: self.n,
                side: Side::Newcomer,
                rank,
            };
            script
                .check(
                    &text,
                    &mut self.scratch,
                    &newcomer_id,
                    expected,
                    Some(&answerer_id),
                )
                .map_err(|m| Failure::mismatch(&m, &format!("handshake {} answerer", self.n)))?;
            self.record(samples, self.sent_newcomer[rank as usize], at);
            self.at_answerer += 1;
        }
        Ok(())
    }
}

enum Event {
    Root(Option<RootNote>),
    Newcomer(Result<(), WsError>),
    Answerer(Result<(), WsError>),
    Timeout,
}

/// Opens a `/join` socket, giving up at `deadline`.
async fn connect(
    ctx: &Ctx,
    server: SocketAddr,
    seed: u32,
    deadline: Instant,
) -> Result<WsClient, WsError> {
    let connect = WsClient::connect_with(server, &ctx.join_path, None, seed, ctx.tls.as_ref());
    tokio::time::timeout_at(deadline, connect)
        .await
        .unwrap_or(Err(WsError::TimedOut))
}

/// Reads more into the answerer's socket; never completes while there is none.
async fn fill(socket: &mut Option<WsClient>) -> Result<(), WsError> {
    match socket {
        Some(socket) => socket.fill().await,
        None => std::future::pending().await,
    }
}

async fn close_opt(
    socket: Option<WsClient>,
    wait: Duration,
) -> Result<Vec<bytes::BytesMut>, WsError> {
    match socket {
        Some(socket) => socket.close(wait).await,
        None => Ok(Vec::new()),
    }
}

/// Nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
