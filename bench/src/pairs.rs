//! The pair generator: the same signaling exchange spoken in three wire protocols (ours,
//! matchbox_server's, peerjs-server's), every relayed message verified byte for byte and
//! exactly once, for the side-by-side comparison of signaling servers (`peers`).
//!
//! One pair: client A joins, then client B; A learns B's id the way the protocol gives it
//! (matchbox: the server's `NewPeer`; peerjs: ids are chosen by the clients; ours: A does
//! not need it); A sends message 0 towards B; B learns A's id from it and sends its M
//! messages to A; A learns B's id from B's first message and sends its other M − 1. So
//! 2 M relayed messages per pair, each carrying a payload string of P bytes, then both
//! close.
//!
//! Ours has no rooms and no peer ids a `/join` socket could learn by itself: a newcomer
//! learns the other side's id only from a message relayed to it, and its first message
//! goes to the root (`docs/protocol.md`). So with ours A's message 0 goes to the root
//! (a socket of this generator on the secret route), which verifies it and hands A's id
//! to B in-process, standing in for what the other servers do themselves (matchbox's
//! `NewPeer`, peerjs's client-chosen ids). It is counted as one of the 2 M relayed
//! messages: the server relays it like any other.
//!
//! Every frame a client receives is compared with the exact bytes the server must write
//! for the next message on that stream (sender id, destination, payload), so a lost,
//! duplicated, reordered, misrouted or altered message fails the pair. The server's own
//! events (matchbox `IdAssigned`, `NewPeer`; peerjs `OPEN`) are checked too but not
//! counted as relayed. Matchbox tells every client of a room when a peer joins or
//! leaves; each generator worker has a room of its own, so a worker's previous pair may
//! still be leaving it: presence events about other ids are counted, not failures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::load::ServerUsage;
use crate::procfs;
use crate::stats::Percentiles;
use crate::verify::{Failure, FailureKind};
use crate::ws::{Arrival, Frame, WsClient, WsError};

/// Which wire protocol the generator speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// Ours (and the JS webrtc-bootstrap server's): `/join` sockets and a root.
    Ours {
        /// The root's secret.
        secret: String,
    },
    /// matchbox_server: `ws://HOST/ROOM`, `IdAssigned`, `NewPeer`, `Signal`.
    Matchbox,
    /// peerjs-server: `ws://HOST/peerjs?key=K&id=ID&token=T`, `OPEN`, `OFFER`/`ANSWER`/
    /// `CANDIDATE` with `dst`, delivered with `src`.
    Peerjs {
        /// The server's key.
        key: String,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PairsConfig {
    /// The server, a loopback address.
    pub server: SocketAddr,
    /// Its wire protocol.
    pub protocol: Protocol,
    /// Measured pairs.
    pub pairs: u32,
    /// Most pairs in flight.
    pub concurrency: u32,
    /// Messages each side sends (M, at least 1).
    pub messages: u32,
    /// Payload bytes per message (P).
    pub payload_bytes: usize,
    /// Unmeasured pairs first.
    pub warmup: u32,
    /// Longest one pair may take before its missing messages count as lost.
    pub timeout: Duration,
    /// The server's process id, for its CPU time and memory.
    pub server_pid: Option<u32>,
    /// Stop starting measured pairs after this long (the warm-up after a tenth of it),
    /// so a slow server does not hold the run for minutes; the figures are over the
    /// pairs that ran.
    pub max_time: Option<Duration>,
}

impl PairsConfig {
    /// 20 000 pairs, M = 5, P = 500, 1 000 warm-up pairs.
    #[must_use]
    pub fn new(server: SocketAddr, protocol: Protocol, concurrency: u32) -> Self {
        Self {
            server,
            protocol,
            pairs: 20_000,
            concurrency,
            messages: 5,
            payload_bytes: 500,
            warmup: 1000,
            timeout: Duration::from_secs(30),
            server_pid: None,
            max_time: None,
        }
    }
}

/// Figures of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairsReport {
    /// Measured pairs that ran (fewer than asked when `max_time` ran out).
    pub pairs: u32,
    /// Most in flight.
    pub concurrency: u32,
    /// Messages per side (M).
    pub messages_per_side: u32,
    /// Payload bytes (P).
    pub payload_bytes: usize,
    /// Wall time of the measured pairs, in seconds.
    pub seconds: f64,
    /// Relayed messages verified.
    pub messages: u64,
    /// Relayed messages per second.
    pub messages_per_second: f64,
    /// Relay latency, from the sender's write to the receiver's read (µs).
    pub relay_latency_us: Percentiles,
    /// Relay latency to the kernel's receive timestamp (µs).
    pub relay_delivery_us: Percentiles,
    /// The server's resource use, if its process id was given.
    pub server: Option<ServerUsage>,
    /// Server CPU per relayed message (µs), joins and closes included.
    pub cpu_us_per_message: f64,
    /// The generator's own CPU use, in cores.
    pub generator_cores: f64,
    /// CPU used by everything else during the run, in cores.
    pub background_cores: f64,
    /// Matchbox presence events about other pairs' clients (not failures).
    pub foreign_presence_events: u64,
    /// Pairs that failed verification.
    pub failed_pairs: u64,
    /// The first few failures.
    pub failure_samples: Vec<String>,
}

impl PairsReport {
    /// Whether every message was delivered exactly once, unaltered, to the right client.
    #[must_use]
    pub fn verified(&self) -> bool {
        self.failed_pairs == 0
    }
}

/// A client id as the protocol writes it.
type Id = Vec<u8>;

/// What the root tells a pair (ours): A's id and when its message 0 arrived, or why
/// that message was wrong.
type RootSeen = Result<(Id, Arrival), Failure>;

/// What pair tasks share.
#[derive(Debug)]
struct Ctx {
    server: SocketAddr,
    protocol: Protocol,
    messages: u32,
    payload_bytes: usize,
    timeout: Duration,
    /// Ours: pairs waiting for the root to see A's message 0, by pair number.
    board: Mutex<HashMap<u32, oneshot::Sender<RootSeen>>>,
}

/// Timings and counts of one worker.
#[derive(Debug, Default)]
struct Samples {
    pairs: u32,
    latency_ns: Vec<u64>,
    delivery_ns: Vec<u64>,
    foreign: u64,
    failures: Vec<Failure>,
}

/// Runs one load point on a current-thread runtime.
///
/// # Errors
/// When the runtime cannot start, the root is refused, or `/proc` is unreadable.
/// Verification failures are counted in the report.
pub fn run_blocking(config: &PairsConfig) -> anyhow::Result<PairsReport> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

/// Runs one load point on the current runtime.
///
/// # Errors
/// As [`run_blocking`].
pub async fn run(config: &PairsConfig) -> anyhow::Result<PairsReport> {
    if !config.server.ip().is_loopback() {
        bail!("the bench only targets loopback servers");
    }
    if config.messages == 0 {
        bail!("each side must send at least one message");
    }
    let ctx = Arc::new(Ctx {
        server: config.server,
        protocol: config.protocol.clone(),
        messages: config.messages,
        payload_bytes: config.payload_bytes.max(MIN_PAYLOAD),
        timeout: config.timeout,
        board: Mutex::new(HashMap::new()),
    });
    let (stop, stopped) = oneshot::channel();
    let root = match &config.protocol {
        Protocol::Ours { secret } => {
            let path = format!("/{secret}/webrtc-bootstrap-root");
            let ws = WsClient::connect(config.server, &path, None, 0x5eed)
                .await
                .context("cannot connect the root")?;
            Some(tokio::spawn(root(Arc::clone(&ctx), ws, stopped)))
        }
        _ => None,
    };
    let warm_time = config.max_time.map(|t| t / 10);
    let mut warm = phase(&ctx, 0, config.warmup, config.concurrency, warm_time).await;
    let pid = config.server_pid.map(|p| p.to_string());
    let server_before = pid.as_deref().map(procfs::cpu_times).transpose()?;
    let own_before = procfs::cpu_time("self")?;
    let busy_before = procfs::machine_busy()?;
    let started = Instant::now();
    let mut samples = phase(
        &ctx,
        config.warmup,
        config.pairs,
        config.concurrency,
        config.max_time,
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let ran = samples.pairs;
    let own_cpu = procfs::cpu_time("self")?.saturating_sub(own_before);
    let busy = procfs::machine_busy()?.saturating_sub(busy_before);
    let failed_measured = samples.failures.len() as u64;
    let completed = u64::from(ran).saturating_sub(failed_measured);
    let messages = completed * 2 * u64::from(config.messages);
    let per_message = |d: Duration| d.as_secs_f64() * 1e6 / (messages.max(1) as f64);
    let server = match (pid.as_deref(), server_before) {
        (Some(pid), Some((user0, system0))) => {
            let (user1, system1) = procfs::cpu_times(pid)?;
            let (user, system) = (user1.saturating_sub(user0), system1.saturating_sub(system0));
            let memory = procfs::memory(pid)?;
            let per_pair = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(ran.max(1));
            Some(ServerUsage {
                cpu_seconds: (user + system).as_secs_f64(),
                cpu_us_per_handshake: per_pair(user + system),
                user_us_per_handshake: per_pair(user),
                system_us_per_handshake: per_pair(system),
                peak_rss_kib: memory.peak_kib,
                rss_kib: memory.rss_kib,
            })
        }
        _ => None,
    };
    let server_cpu = server.map_or(0.0, |s| s.cpu_seconds);
    let _ = stop.send(());
    let mut stray = Vec::new();
    if let Some(root) = root {
        stray = root.await.context("the root task panicked")?;
    }
    let failed = failed_measured + warm.failures.len() as u64 + stray.len() as u64;
    let failure_samples = warm
        .failures
        .drain(..)
        .chain(samples.failures.drain(..))
        .chain(stray)
        .take(10)
        .map(|f| f.to_string())
        .collect();
    Ok(PairsReport {
        pairs: ran,
        concurrency: config.concurrency,
        messages_per_side: config.messages,
        payload_bytes: ctx.payload_bytes,
        seconds,
        messages,
        messages_per_second: messages as f64 / seconds,
        relay_latency_us: Percentiles::of(&mut samples.latency_ns, 1e3),
        relay_delivery_us: Percentiles::of(&mut samples.delivery_ns, 1e3),
        server,
        cpu_us_per_message: per_message(Duration::from_secs_f64(server_cpu)),
        generator_cores: own_cpu.as_secs_f64() / seconds,
        background_cores: ((busy.as_secs_f64() - server_cpu - own_cpu.as_secs_f64()) / seconds)
            .max(0.0),
        foreign_presence_events: samples.foreign + warm.foreign,
        failed_pairs: failed,
        failure_samples,
    })
}

/// Runs pairs `first..first + count`, at most `concurrency` at once, starting none
/// after `max_time`; worker `w` uses matchbox room `w`.
async fn phase(
    ctx: &Arc<Ctx>,
    first: u32,
    count: u32,
    concurrency: u32,
    max_time: Option<Duration>,
) -> Samples {
    let next = Arc::new(AtomicU32::new(first));
    let end = first.saturating_add(count);
    let stop_at = max_time.map(|t| Instant::now() + t);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency.clamp(1, count.max(1)) {
        let ctx = Arc::clone(ctx);
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut samples = Samples::default();
            loop {
                if stop_at.is_some_and(|at| Instant::now() >= at) {
                    break samples;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    break samples;
                }
                samples.pairs += 1;
                let deadline = Instant::now() + ctx.timeout;
                let pair = Pair {
                    ctx: &ctx,
                    n,
                    worker,
                    deadline,
                };
                if let Err(failure) = pair.run(&mut samples).await {
                    samples.failures.push(failure);
                }
                ctx.board
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&n);
            }
        });
    }
    let mut all = Samples::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(mut s) => {
                all.pairs += s.pairs;
                all.latency_ns.append(&mut s.latency_ns);
                all.delivery_ns.append(&mut s.delivery_ns);
                all.foreign += s.foreign;
                all.failures.append(&mut s.failures);
            }
            Err(e) => all.failures.push(Failure::new(
                FailureKind::Connection,
                format!("worker: {e}"),
            )),
        }
    }
    all
}

/// Length of the tag that opens a payload and names pair, side and sequence number:
/// `"p`, 10 digits, a letter, 4 digits.
const TAG_LEN: usize = 17;

/// Smallest payload in bytes (a JSON string, quotes included): the tag and its closing
/// quote.
pub const MIN_PAYLOAD: usize = TAG_LEN + 1;

/// How long a finished pair waits for the server to confirm each close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Which side sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// One pair's task.
struct Pair<'a> {
    ctx: &'a Ctx,
    n: u32,
    worker: u32,
    deadline: Instant,
}

/// One side's socket and the times its messages were sent.
struct Client {
    ws: WsClient,
    id: Id,
    sent: Vec<Instant>,
}

impl Pair<'_> {
    async fn run(&self, samples: &mut Samples) -> Result<(), Failure> {
        let m = self.ctx.messages;
        let mut a = self.join(Side::A, samples).await?;
        let mut b = self.join(Side::B, samples).await?;
        if self.ctx.protocol == Protocol::Matchbox {
            // A is told that B joined its room.
            let expected = [b"{\"NewPeer\":\"".as_slice(), &b.id, b"\"}"].concat();
            let frame = self.read(&mut a.ws, "A", &b.id, samples).await?.0;
            if frame[..] != expected[..] {
                return Err(self.wrong("A, NewPeer", &frame));
            }
        }
        // A's message 0: to B, or with ours to the root.
        let to_b = match self.ctx.protocol {
            Protocol::Ours { .. } => None,
            _ => Some(b.id.clone()),
        };
        self.send(&mut a, Side::A, 0, to_b.as_deref()).await?;
        // B learns A's id.
        match self.ctx.protocol {
            Protocol::Ours { .. } => {
                let (tx, rx) = oneshot::channel();
                self.ctx
                    .board
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(self.n, tx);
                let (id, at) = tokio::time::timeout_at(self.deadline, rx)
                    .await
                    .map_err(|_| self.lost("A's message 0 at the root"))?
                    .map_err(|_| self.lost("A's message 0 at the root"))??;
                record(samples, a.sent[0], at);
                a.id = id;
            }
            Protocol::Matchbox => {
                let (frame, at) = self.read(&mut b.ws, "B", &a.id, samples).await?;
                // B does not know A's id yet: take it from `sender`, then check the frame.
                let prefix = b"{\"Signal\":{\"sender\":\"";
                let id = frame
                    .get(prefix.len()..prefix.len() + 36)
                    .filter(|_| frame.starts_with(prefix))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| self.wrong("B, message 0", &frame))?;
                a.id = id;
                self.check(&frame, Side::A, 0, &a.id, &b.id)?;
                record(samples, a.sent[0], at);
            }
            Protocol::Peerjs { .. } => {
                let (frame, at) = self.read(&mut b.ws, "B", &a.id, samples).await?;
                self.check(&frame, Side::A, 0, &a.id, &b.id)?;
                record(samples, a.sent[0], at);
            }
        }
        for seq in 0..m {
            self.send(&mut b, Side::B, seq, Some(&a.id)).await?;
        }
        // A learns B's id from B's message 0 (ours: its origin).
        let (frame, at) = self.read(&mut a.ws, "A", &b.id, samples).await?;
        if let Protocol::Ours { .. } = self.ctx.protocol {
            b.id = origin_of(&frame).ok_or_else(|| self.wrong("A, message 0", &frame))?;
        }
        self.check(&frame, Side::B, 0, &b.id, &a.id)?;
        record(samples, b.sent[0], at);
        for seq in 1..m {
            self.send(&mut a, Side::A, seq, Some(&b.id)).await?;
        }
        // The rest, read on both sockets at once.
        let mut a_samples = Samples::default();
        let (a_id, b_id) = (a.id.clone(), b.id.clone());
        let (a_sent, b_sent) = (a.sent.clone(), b.sent.clone());
        let (from_b, from_a) = tokio::join!(
            self.receive_rest(&mut a.ws, (&a_id, &b_id), &b_sent, Side::B, &mut a_samples),
            self.receive_rest(&mut b.ws, (&b_id, &a_id), &a_sent, Side::A, samples),
        );
        samples.latency_ns.append(&mut a_samples.latency_ns);
        samples.delivery_ns.append(&mut a_samples.delivery_ns);
        samples.foreign += a_samples.foreign;
        from_b?;
        from_a?;
        // Close both; only presence events may still arrive.
        let (a_left, b_left) = tokio::join!(a.ws.close(CLOSE_WAIT), b.ws.close(CLOSE_WAIT));
        for (left, who) in [(a_left, "A"), (b_left, "B")] {
            let left = left.map_err(|e| self.connection(who, &e))?;
            for frame in left {
                if !is_presence(&frame) {
                    return Err(Failure::new(
                        FailureKind::Duplicated,
                        format!(
                            "pair {} {who}: after its last message: {}",
                            self.n,
                            snippet(&frame)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Connects `side` and reads the server's greeting; the client's id.
    async fn join(&self, side: Side, samples: &mut Samples) -> Result<Client, Failure> {
        let letter = match side {
            Side::A => 'a',
            Side::B => 'b',
        };
        let (path, id) = match &self.ctx.protocol {
            Protocol::Ours { .. } => ("/join".to_owned(), Vec::new()),
            Protocol::Matchbox => (format!("/bench-{}", self.worker), Vec::new()),
            Protocol::Peerjs { key } => {
                let id = format!("{letter}{}", self.n);
                (
                    format!("/peerjs?key={key}&id={id}&token=t{}", self.n),
                    id.into_bytes(),
                )
            }
        };
        let who = if side == Side::A { "A" } else { "B" };
        let seed = self
            .n
            .wrapping_mul(2)
            .wrapping_add(u32::from(side == Side::B));
        let ws = tokio::time::timeout_at(
            self.deadline,
            WsClient::connect(self.ctx.server, &path, None, seed),
        )
        .await
        .unwrap_or(Err(WsError::TimedOut))
        .map_err(|e| self.connection(who, &e))?;
        let mut client = Client {
            ws,
            id,
            sent: vec![self.deadline; self.ctx.messages as usize],
        };
        match self.ctx.protocol {
            Protocol::Ours { .. } => {}
            Protocol::Matchbox => {
                let frame = self.read(&mut client.ws, who, b"", samples).await?.0;
                let prefix = b"{\"IdAssigned\":\"";
                client.id = frame
                    .get(prefix.len()..prefix.len() + 36)
                    .filter(|_| {
                        frame.starts_with(prefix)
                            && frame.ends_with(b"\"}")
                            && frame.len() == prefix.len() + 38
                    })
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| self.wrong(&format!("{who}, IdAssigned"), &frame))?;
            }
            Protocol::Peerjs { .. } => {
                let frame = self.read(&mut client.ws, who, b"", samples).await?.0;
                if frame[..] != b"{\"type\":\"OPEN\"}"[..] {
                    return Err(self.wrong(&format!("{who}, OPEN"), &frame));
                }
            }
        }
        Ok(client)
    }

    /// Sends message `seq` of `side` (to `to`, or with ours and `None` to the root).
    async fn send(
        &self,
        client: &mut Client,
        side: Side,
        seq: u32,
        to: Option<&[u8]>,
    ) -> Result<(), Failure> {
        let mut frame = Vec::with_capacity(self.ctx.payload_bytes + 100);
        match &self.ctx.protocol {
            Protocol::Ours { .. } => {
                frame.extend_from_slice(b"{\"origin\":null,");
                ours_body(&mut frame, to, &self.payload(side, seq), seq);
            }
            Protocol::Matchbox => {
                frame.extend_from_slice(b"{\"Signal\":{\"receiver\":\"");
                frame.extend_from_slice(to.unwrap_or_default());
                frame.extend_from_slice(b"\",\"data\":");
                frame.extend_from_slice(&self.payload(side, seq));
                frame.extend_from_slice(b"}}");
            }
            Protocol::Peerjs { .. } => {
                frame.extend_from_slice(b"{\"type\":");
                frame.extend_from_slice(peerjs_type(side, seq));
                frame.extend_from_slice(b",\"dst\":\"");
                frame.extend_from_slice(to.unwrap_or_default());
                frame.extend_from_slice(b"\",\"payload\":");
                frame.extend_from_slice(&self.payload(side, seq));
                frame.push(b'}');
            }
        }
        client.sent[seq as usize] = Instant::now();
        client
            .ws
            .send_text(&frame)
            .await
            .map_err(|e| self.connection(if side == Side::A { "A" } else { "B" }, &e))
    }

    /// Reads messages 1.. of `from` on `ws`; `ids` are the receiver's and the sender's,
    /// `sent` when the sender wrote each message.
    async fn receive_rest(
        &self,
        ws: &mut WsClient,
        (own, sender): (&[u8], &[u8]),
        sent: &[Instant],
        from: Side,
        samples: &mut Samples,
    ) -> Result<(), Failure> {
        let who = if from == Side::A { "B" } else { "A" };
        for seq in 1..self.ctx.messages {
            let (frame, at) = self.read(ws, who, sender, samples).await?;
            self.check(&frame, from, seq, sender, own)?;
            record(samples, sent[seq as usize], at);
        }
        Ok(())
    }

    /// The next text frame on `ws`, skipping (and counting) matchbox presence events
    /// about clients other than `partner`.
    async fn read(
        &self,
        ws: &mut WsClient,
        who: &str,
        partner: &[u8],
        samples: &mut Samples,
    ) -> Result<(BytesMut, Arrival), Failure> {
        loop {
            match ws.next_frame() {
                Ok(Some(Frame::Text(text))) => {
                    if self.ctx.protocol == Protocol::Matchbox
                        && is_presence(&text)
                        && !is_about(&text, partner)
                    {
                        samples.foreign += 1;
                        continue;
                    }
                    return Ok((text, ws.arrival()));
                }
                Ok(Some(Frame::Ping(payload))) => {
                    ws.pong(&payload)
                        .await
                        .map_err(|e| self.connection(who, &e))?;
                    continue;
                }
                Ok(Some(Frame::Close)) => {
                    return Err(self.connection(who, &WsError::Closed));
                }
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return Err(self.connection(who, &e)),
            }
            match tokio::time::timeout_at(self.deadline, ws.fill()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.connection(who, &e)),
                Err(_) => return Err(self.lost(&format!("{who}: a message"))),
            }
        }
    }

    /// The payload of message `seq` of `side`: a JSON string of P bytes, quotes included.
    fn payload(&self, side: Side, seq: u32) -> Vec<u8> {
        payload(self.n, side, seq, self.ctx.payload_bytes)
    }

    /// Checks that `frame` is exactly message `seq` of `from`, sent by `sender` to `to`.
    fn check(
        &self,
        frame: &[u8],
        from: Side,
        seq: u32,
        sender: &[u8],
        to: &[u8],
    ) -> Result<(), Failure> {
        let expected = expected_frame(
            &self.ctx.protocol,
            self.n,
            from,
            seq,
            sender,
            to,
            self.ctx.payload_bytes,
        );
        if frame == &expected[..] {
            return Ok(());
        }
        let tag = payload(self.n, from, seq, self.ctx.payload_bytes);
        let kind = if !contains(frame, &tag[..TAG_LEN]) {
            // Another pair's, another side's or another sequence number's message.
            if contains(frame, &tag[..12]) {
                FailureKind::Duplicated
            } else {
                FailureKind::Misrouted
            }
        } else {
            FailureKind::Altered
        };
        Err(Failure::new(
            kind,
            format!(
                "pair {} message {seq} of {from:?}: got {}",
                self.n,
                snippet(frame)
            ),
        ))
    }

    fn lost(&self, what: &str) -> Failure {
        Failure::new(
            FailureKind::Lost,
            format!("pair {}: {what} never arrived", self.n),
        )
    }

    fn wrong(&self, what: &str, frame: &[u8]) -> Failure {
        Failure::new(
            FailureKind::Altered,
            format!("pair {} {what}: got {}", self.n, snippet(frame)),
        )
    }

    fn connection(&self, who: &str, e: &WsError) -> Failure {
        Failure::new(
            FailureKind::Connection,
            format!("pair {} {who}: {e}", self.n),
        )
    }
}

/// The frame the server must deliver for message `seq` of `from` in pair `n`.
fn expected_frame(
    protocol: &Protocol,
    n: u32,
    from: Side,
    seq: u32,
    sender: &[u8],
    to: &[u8],
    payload_bytes: usize,
) -> Vec<u8> {
    let payload = payload(n, from, seq, payload_bytes);
    let mut out = Vec::with_capacity(payload.len() + 120);
    match protocol {
        Protocol::Ours { .. } => {
            out.extend_from_slice(b"{\"origin\":\"");
            out.extend_from_slice(sender);
            out.extend_from_slice(b"\",");
            // A's message 0 went to the root with `destination: null`.
            let to = (from == Side::B || seq > 0).then_some(to);
            ours_body(&mut out, to, &payload, seq);
        }
        Protocol::Matchbox => {
            out.extend_from_slice(b"{\"Signal\":{\"sender\":\"");
            out.extend_from_slice(sender);
            out.extend_from_slice(b"\",\"data\":");
            out.extend_from_slice(&payload);
            out.extend_from_slice(b"}}");
        }
        Protocol::Peerjs { .. } => {
            out.extend_from_slice(b"{\"type\":");
            out.extend_from_slice(peerjs_type(from, seq));
            out.extend_from_slice(b",\"src\":\"");
            out.extend_from_slice(sender);
            out.extend_from_slice(b"\",\"dst\":\"");
            out.extend_from_slice(to);
            out.extend_from_slice(b"\",\"payload\":");
            out.extend_from_slice(&payload);
            out.push(b'}');
        }
    }
    out
}

/// `"destination":…,"signal":PAYLOAD,"rank":seq}`, as the JS client orders the keys.
fn ours_body(out: &mut Vec<u8>, to: Option<&[u8]>, payload: &[u8], seq: u32) {
    crate::script::destination_field(out, to);
    out.extend_from_slice(b",\"signal\":");
    out.extend_from_slice(payload);
    out.extend_from_slice(format!(",\"rank\":{seq}}}").as_bytes());
}

/// PeerJS's message type: A offers, B answers, then candidates.
fn peerjs_type(side: Side, seq: u32) -> &'static [u8] {
    match (side, seq) {
        (Side::A, 0) => b"\"OFFER\"",
        (Side::B, 0) => b"\"ANSWER\"",
        _ => b"\"CANDIDATE\"",
    }
}

/// `"p<pair, 10 digits><side><seq, 4 digits>xxx…"`: `bytes` bytes, quotes included.
fn payload(n: u32, side: Side, seq: u32, bytes: usize) -> Vec<u8> {
    let letter = if side == Side::A { 'a' } else { 'b' };
    let mut out = format!("\"p{n:010}{letter}{:04}", seq % 10_000).into_bytes();
    out.resize(bytes.max(MIN_PAYLOAD) - 1, b'x');
    out.push(b'"');
    out
}

/// Our server's `origin` at the start of a received frame.
fn origin_of(frame: &[u8]) -> Option<Id> {
    let prefix = b"{\"origin\":\"";
    let id = frame.get(prefix.len()..prefix.len() + 32)?;
    (frame.starts_with(prefix) && id.iter().all(u8::is_ascii_hexdigit)).then(|| id.to_vec())
}

fn is_presence(frame: &[u8]) -> bool {
    frame.starts_with(b"{\"PeerLeft\":\"") || frame.starts_with(b"{\"NewPeer\":\"")
}

fn is_about(frame: &[u8], id: &[u8]) -> bool {
    !id.is_empty() && contains(frame, id)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn snippet(frame: &[u8]) -> String {
    let text = String::from_utf8_lossy(&frame[..frame.len().min(120)]).into_owned();
    if frame.len() > 120 {
        text + "…"
    } else {
        text
    }
}

fn record(samples: &mut Samples, sent: Instant, at: Arrival) {
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    samples
        .latency_ns
        .push(nanos(at.read.saturating_duration_since(sent)));
    samples
        .delivery_ns
        .push(nanos(at.delivered.saturating_duration_since(sent)));
}

/// Ours: the root. Every frame must be some pair's A message 0; its origin is handed to
/// that pair. Returns the failures not tied to a waiting pair.
async fn root(ctx: Arc<Ctx>, mut ws: WsClient, mut stop: oneshot::Receiver<()>) -> Vec<Failure> {
    let mut failures = Vec::new();
    loop {
        tokio::select! {
            read = ws.fill() => {
                if let Err(e) = read {
                    failures.push(Failure::new(FailureKind::Connection, format!("root: {e}")));
                    return failures;
                }
            }
            _ = &mut stop => return failures,
        }
        let at = ws.arrival();
        loop {
            match ws.next_frame() {
                Ok(Some(Frame::Text(text))) => {
                    if &text[..] == b"\"heartbeat\"" {
                        continue;
                    }
                    if let Some(failure) = root_frame(&ctx, &text, at) {
                        failures.push(failure);
                    }
                }
                Ok(Some(Frame::Ping(payload))) => {
                    if let Err(e) = ws.pong(&payload).await {
                        failures.push(Failure::new(FailureKind::Connection, format!("root: {e}")));
                        return failures;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    failures.push(Failure::new(FailureKind::Connection, format!("root: {e}")));
                    return failures;
                }
            }
        }
    }
}

/// Checks a root-bound frame and hands its origin to its pair; a failure if no pair is
/// waiting for it.
fn root_frame(ctx: &Ctx, frame: &[u8], at: Arrival) -> Option<Failure> {
    let Some(origin) = origin_of(frame) else {
        return Some(Failure::new(
            FailureKind::WrongOrigin,
            format!("root: {}", snippet(frame)),
        ));
    };
    // `{"origin":"<32>","destination":null,"signal":"p<10 digits>…`
    let at_number = 11 + 32 + 2 + "\"destination\":null,\"signal\":\"p".len();
    let n = frame
        .get(at_number..at_number + 10)
        .and_then(|digits| std::str::from_utf8(digits).ok()?.parse::<u32>().ok());
    let Some(n) = n else {
        return Some(Failure::new(
            FailureKind::Misrouted,
            format!("root: {}", snippet(frame)),
        ));
    };
    let Some(tx) = ctx
        .board
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&n)
    else {
        return Some(Failure::new(
            FailureKind::Duplicated,
            format!("root: pair {n} not waiting: {}", snippet(frame)),
        ));
    };
    let expected = expected_frame(
        &ctx.protocol,
        n,
        Side::A,
        0,
        &origin,
        b"",
        ctx.payload_bytes,
    );
    let result = if frame == &expected[..] {
        Ok((origin, at))
    } else {
        Err(Failure::new(
            FailureKind::Altered,
            format!("root: pair {n}: {}", snippet(frame)),
        ))
    };
    // The pair may have given up already; then its own failure is recorded.
    let _ = tx.send(result);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_size_asked_for() {
        assert_eq!(payload(1, Side::A, 0, 1).len(), MIN_PAYLOAD);
        for bytes in [18, 100, 500] {
            let p = payload(7, Side::B, 3, bytes);
            assert_eq!(p.len(), bytes);
            assert!(p.starts_with(b"\"p0000000007b0003"));
            assert!(p.ends_with(b"\""));
        }
    }

    #[test]
    fn expected_frames_match_what_each_server_writes() {
        let p = || String::from_utf8(payload(1, Side::A, 0, 20)).unwrap_or_default();
        let frame = |protocol| {
            String::from_utf8(expected_frame(&protocol, 1, Side::A, 0, b"S", b"D", 20))
                .unwrap_or_default()
        };
        assert_eq!(
            frame(Protocol::Matchbox),
            format!("{{\"Signal\":{{\"sender\":\"S\",\"data\":{}}}}}", p())
        );
        assert_eq!(
            frame(Protocol::Peerjs { key: "k".into() }),
            format!(
                "{{\"type\":\"OFFER\",\"src\":\"S\",\"dst\":\"D\",\"payload\":{}}}",
                p()
            )
        );
        assert_eq!(
            frame(Protocol::Ours { secret: "s".into() }),
            format!(
                "{{\"origin\":\"S\",\"destination\":null,\"signal\":{},\"rank\":0}}",
                p()
            )
        );
    }
}
