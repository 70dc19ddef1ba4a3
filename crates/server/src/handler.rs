//! What a socket's messages mean, without IO: frames decoded from the bytes a socket
//! read are relayed, answered (pongs) or counted as offences, and queue commands
//! become heartbeats or closes. The outcome is bytes to write (appended to `out`) and,
//! when the socket must end, an [`End`] saying how.
//!
//! The clock is an input (`now`), so the rate limit and the root's ping timeout are
//! tested without waiting. Relaying goes through the registry, whose queues never wait.

use std::ops::ControlFlow;

use bootstrap_protocol::{Destination, PeerId, Relayed, close, paths::HEARTBEAT, relay};
use bootstrap_ws::{Decoder, FrameError, Inbound, OpCode, encode_frame};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;
use crate::handle::{Command, Outgoing};
use crate::policy::{Offence, Policy, Verdict};
use crate::queue::TrySendError;
use crate::registry::Undeliverable;
use crate::state::{Registration, Role};

/// How a socket ends, and so how it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The connection ended or broke: nothing more to send.
    Gone,
    /// The peer sent a close frame (with this code): answer it, then stop.
    ClosedByPeer(Option<u16>),
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// Close as the server ordered (shutdown, replacement): this pre-empts a write that
    /// waits for the peer, and the goodbye gets a shorter time.
    Dismissed(u16, &'static str),
    /// Close without a status code, as the JS server does at the `/join` timeout.
    CloseNoStatus,
    /// The peer does not read: writes are stuck, so just drop the connection.
    Abandon,
}

/// The meaning of one socket's messages: its rate limit and offences, the root's
/// pending ping, and its place in the registry.
#[derive(Debug)]
pub(crate) struct Handler {
    policy: Policy,
    /// When the unanswered ping to the root was sent.
    ping_sent: Option<Instant>,
    registration: Registration,
}

impl Handler {
    /// The handler of the socket registered as `registration`, opened at `now`.
    pub(crate) fn new(registration: Registration, now: Instant) -> Self {
        let config = registration.shared().config();
        Self {
            policy: Policy::new(
                config.rate_per_second,
                config.rate_burst,
                config.max_bad_messages,
                now,
            ),
            ping_sent: None,
            registration,
        }
    }

    /// The socket's registration.
    pub(crate) fn registration(&self) -> &Registration {
        &self.registration
    }

    /// Unregisters the socket (once): called when it ends.
    pub(crate) fn leave(&mut self) {
        self.registration.leave();
    }

    /// Decodes bytes just read and handles each message; `Some` ends the socket.
    pub(crate) fn on_bytes(
        &mut self,
        decoder: &mut Decoder,
        bytes: &mut [u8],
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Option<End> {
        let mut end = None;
        let decoded = decoder.decode(bytes, |inbound| {
            end = self.on_inbound(inbound, out, now);
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

    /// A command from the socket's queue; `Some` ends the socket.
    pub(crate) fn on_command(
        &mut self,
        command: Command,
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Option<End> {
        match command {
            Command::Shutdown => Some(End::Dismissed(close::GOING_AWAY, close::REASON_SHUTDOWN)),
            Command::Removed => Some(End::Dismissed(
                close::GOING_AWAY,
                close::REASON_OVERLAY_REMOVED,
            )),
            Command::Replaced => Some(End::Dismissed(
                close::ROOT_REPLACED,
                close::REASON_ROOT_REPLACED,
            )),
            Command::Heartbeat => self.heartbeat(out, now),
        }
    }

    /// The root's heartbeat: a heartbeat message, and a ping unless one is still
    /// unanswered; a ping unanswered for `root_ping_timeout` drops the root.
    fn heartbeat(&mut self, out: &mut Vec<u8>, now: Instant) -> Option<End> {
        let config = self.registration.shared().config();
        if self
            .ping_sent
            .is_some_and(|sent| now.duration_since(sent) >= config.root_ping_timeout)
        {
            warn!("root did not answer ping in time; dropping it");
            return Some(End::Close(close::ROOT_UNRESPONSIVE, "no pong"));
        }
        encode_frame(out, OpCode::Text, HEARTBEAT.as_bytes(), None);
        if self.ping_sent.is_none() {
            encode_frame(out, OpCode::Ping, &[], None);
            self.ping_sent = Some(now);
        }
        None
    }

    /// Handles one message or control frame; `Some` ends the socket.
    fn on_inbound(&mut self, inbound: Inbound<'_>, out: &mut Vec<u8>, now: Instant) -> Option<End> {
        self.ping_sent = None; // any frame shows the peer is alive
        let (role, registration) = (self.registration.role(), &self.registration);
        let text = match inbound {
            Inbound::Text(text) => text,
            Inbound::Binary(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => {
                    registration.bump(|s| &s.invalid_messages);
                    debug!(?role, "binary frame is not UTF-8; dropped");
                    return offend(&mut self.policy, Offence::InvalidPayload, registration);
                }
            },
            Inbound::Ping(payload) => {
                // Answering costs a write: pings count against the message rate too.
                if !self.policy.admit(now) {
                    registration.bump(|s| &s.flood_messages);
                    return offend(&mut self.policy, Offence::Flood, registration);
                }
                encode_frame(out, OpCode::Pong, payload, None);
                return None;
            }
            // Pongs and pieces of fragmented messages cost nothing to send and are
            // answered with nothing, but count against the rate like every frame.
            Inbound::Pong | Inbound::Fragment => {
                if !self.policy.admit(now) {
                    registration.bump(|s| &s.flood_messages);
                    return offend(&mut self.policy, Offence::Flood, registration);
                }
                return None;
            }
            Inbound::Close(code) => return Some(End::ClosedByPeer(code)),
        };
        if !self.policy.admit(now) {
            registration.bump(|s| &s.flood_messages);
            debug!(?role, "over the message rate; dropped");
            return offend(&mut self.policy, Offence::Flood, registration);
        }
        match role {
            Role::Join(id) => on_join_text(text, &id, &mut self.policy, registration),
            Role::Root(_) => on_root_text(text, &mut self.policy, registration),
        }
    }

    /// A frame broke the protocol or the size limit: the socket is closed.
    fn on_frame_error(&self, error: FrameError) -> End {
        self.registration.bump(|s| &s.abusive_closes);
        info!(role = ?self.registration.role(), %error, "closing a socket after a bad frame");
        let reason = match error {
            FrameError::TooBig { .. } => "message too big",
            FrameError::InvalidUtf8 => "text frame is not UTF-8",
            _ => "WebSocket protocol error",
        };
        End::Close(error.close_code(), reason)
    }
}

/// A message from a `/join` socket: `origin` rewritten, then queued for the root or the
/// `/join` socket it names.
fn on_join_text(
    text: &str,
    id: &PeerId,
    policy: &mut Policy,
    registration: &Registration,
) -> Option<End> {
    let relayed = match relay(text, id) {
        Ok(relayed) => relayed,
        Err(error) => {
            registration.bump(|s| &s.invalid_messages);
            debug!(%id, %error, "invalid message dropped");
            return offend(policy, Offence::InvalidPayload, registration);
        }
    };
    // In a cluster, a message for a socket or root on another instance is published
    // to that instance, which queues it (taking the root's share there).
    if let Some(cluster) = registration.shared().cluster.as_deref()
        && let Some(end) = to_other_instance(cluster, &relayed, id, registration)
    {
        return end;
    }
    // A message for the root holds a share of its sender's allowance in the root's
    // queue until it leaves the queue: a flood from one client leaves room for others.
    let share = match relayed.destination {
        Destination::Root => {
            let overlay = registration.overlay();
            match overlay
                .root_shares
                .take(registration.client(), relayed.text.len())
            {
                Some(share) => Some(share),
                None => {
                    registration.bump(|s| &s.dropped_root_share);
                    debug!(%id, "the client's share of the root's queue is spent; dropped");
                    return None;
                }
            }
        }
        _ => None,
    };
    let outgoing = Outgoing {
        text: relayed.text,
        _share: share,
    };
    // Queueing never waits, so it happens under the lock: no handle is cloned. Only
    // the sender's overlay is searched: nothing crosses overlays.
    let sent = registration
        .overlay()
        .registry()
        .route(&relayed.destination)
        .map(|handle| handle.tx.try_send(outgoing));
    match sent {
        Ok(Ok(())) => match relayed.destination {
            Destination::Root => registration.bump(|s| &s.relayed_to_root),
            _ => registration.bump(|s| &s.relayed_to_peer),
        },
        Ok(Err(TrySendError::OverBudget)) => {
            registration.bump(|s| &s.dropped_over_budget);
            debug!(%id, destination = ?relayed.destination, "the server's queue budget is spent; dropped");
        }
        Ok(Err(TrySendError::Full)) => {
            registration.bump(|s| &s.dropped_queue_full);
            debug!(%id, destination = ?relayed.destination, "destination queue full; dropped");
        }
        Ok(Err(TrySendError::Closed)) => {
            registration.bump(|s| &s.dropped_unknown_destination);
            debug!(%id, destination = ?relayed.destination, "destination closing; dropped");
        }
        Err(Undeliverable::NoRoot) => {
            registration.bump(|s| &s.dropped_no_root);
            debug!(%id, "no root is connected; dropped");
        }
        Err(Undeliverable::UnknownDestination) => {
            registration.bump(|s| &s.dropped_unknown_destination);
            debug!(%id, destination = ?relayed.destination, "unknown destination; dropped");
        }
    }
    None
}

/// Publishes `relayed` when its destination is on another instance of the cluster:
/// `Some` when it was handled so (published, or dropped and counted), `None` when it is
/// for this instance.
fn to_other_instance(
    cluster: &Cluster,
    relayed: &Relayed,
    id: &PeerId,
    registration: &Registration,
) -> Option<Option<End>> {
    let overlay = registration.overlay();
    let sent = match relayed.destination {
        Destination::Peer(to) if cluster.is_remote(&to) => {
            let sent = cluster.to_peer(&overlay.name, &to, &relayed.text);
            if sent {
                registration.bump(|s| &s.relayed_to_peer);
            }
            sent
        }
        Destination::Root => {
            let remote = {
                let slot = overlay.registry();
                if slot.has_root() {
                    None
                } else {
                    slot.remote_root.get()
                }
            };
            let at = remote?;
            let sent = cluster.to_root(at, &overlay.name, registration.client(), &relayed.text);
            if sent {
                registration.bump(|s| &s.relayed_to_root);
            }
            sent
        }
        _ => return None,
    };
    if !sent {
        debug!(%id, destination = ?relayed.destination, "the cluster broker did not take it; dropped");
    }
    Some(None)
}

/// A message from the root: its heartbeat answer is expected; anything else is
/// ignored if it is JSON and counted as an offence if not.
fn on_root_text(text: &str, policy: &mut Policy, registration: &Registration) -> Option<End> {
    if text == HEARTBEAT {
        return None;
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
        debug!("unexpected message from root; ignored");
        None
    } else {
        registration.bump(|s| &s.invalid_messages);
        debug!("root sent invalid JSON; dropped");
        offend(policy, Offence::InvalidPayload, registration)
    }
}

/// Counts an offence; closes the socket once it has offended too often.
fn offend(policy: &mut Policy, offence: Offence, registration: &Registration) -> Option<End> {
    match policy.offend(offence) {
        Verdict::Drop => None,
        Verdict::Close(offence) => {
            registration.bump(|s| &s.abusive_closes);
            info!(?offence, "closing a socket after repeated bad messages");
            Some(End::Close(offence.close_code(), offence.close_reason()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::handle::Inbox;
    use crate::queue::Received;
    use crate::route::DEFAULT_OVERLAY;
    use crate::state::{AppState, Shared};

    fn shared(adjust: impl FnOnce(&mut Config)) -> Arc<Shared> {
        let mut config = Config::new("s");
        config.seed = Some(1);
        adjust(&mut config);
        AppState::new(config).expect("valid config").0
    }

    /// A `/join` socket's handler, with its id.
    fn join(shared: &Arc<Shared>, now: Instant) -> (Handler, PeerId, Inbox) {
        let overlay = shared.overlay(DEFAULT_OVERLAY).expect("default overlay");
        let (registration, rx) = shared.admit_join(&overlay).expect("room");
        let Role::Join(id) = registration.role() else {
            unreachable!("admitted as /join")
        };
        (Handler::new(registration, now), id, rx)
    }

    /// Feeds the handler one masked client frame; returns what it wrote and its verdict.
    fn feed(
        handler: &mut Handler,
        opcode: OpCode,
        payload: &[u8],
        now: Instant,
    ) -> (Vec<u8>, Option<End>) {
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, opcode, payload, Some([1, 2, 3, 4]));
        let mut out = Vec::new();
        let mut decoder = Decoder::new(handler.registration().shared().config().max_frame_bytes);
        let end = handler.on_bytes(&mut decoder, &mut bytes, &mut out, now);
        (out, end)
    }

    fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode, payload, None);
        out
    }

    fn message(rx: &mut Inbox) -> Option<String> {
        let waker = std::task::Waker::noop();
        match rx.poll_recv(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(Some(Received::Message(message))) => Some(message.text),
            _ => None,
        }
    }

    #[tokio::test]
    async fn join_messages_reach_the_root_with_origin_rewritten() {
        let shared = shared(|_| {});
        let now = Instant::now();
        let (_root, mut root_rx, _) = shared
            .register_root(
                &shared.overlay(DEFAULT_OVERLAY).expect("default overlay"),
                false,
            )
            .expect("open");
        let (mut handler, id, _rx) = join(&shared, now);
        let text = r#"{"origin":"forged","signal":{"type":"offer"},"rank":3}"#;
        let (out, end) = feed(&mut handler, OpCode::Text, text.as_bytes(), now);
        assert_eq!((out.len(), end), (0, None));
        assert_eq!(
            message(&mut root_rx).expect("relayed"),
            format!(r#"{{"origin":"{id}","signal":{{"type":"offer"}},"rank":3}}"#)
        );
        assert_eq!(shared.stats.relayed_to_root.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn messages_to_other_join_sockets_or_nowhere_are_routed_or_counted() {
        let shared = shared(|_| {});
        let now = Instant::now();
        let (mut a, _, _a_rx) = join(&shared, now);
        let (_b, b_id, mut b_rx) = join(&shared, now);
        let to_b = format!(r#"{{"destination":"{b_id}","signal":1}}"#);
        assert_eq!(feed(&mut a, OpCode::Text, to_b.as_bytes(), now).1, None);
        assert!(
            message(&mut b_rx)
                .expect("relayed")
                .contains(r#""signal":1"#)
        );
        let to_nobody = format!(r#"{{"destination":"{}","signal":1}}"#, "0".repeat(32));
        feed(&mut a, OpCode::Text, to_nobody.as_bytes(), now);
        feed(&mut a, OpCode::Text, br#"{"signal":2}"#, now); // no root
        // Binary frames carrying UTF-8 JSON are relayed like text.
        feed(&mut a, OpCode::Binary, to_b.as_bytes(), now);
        assert!(message(&mut b_rx).is_some());
        let stats = &shared.stats;
        assert_eq!(stats.relayed_to_peer.load(Ordering::Relaxed), 2);
        assert_eq!(stats.dropped_unknown_destination.load(Ordering::Relaxed), 1);
        assert_eq!(stats.dropped_no_root.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn pings_are_answered_and_count_against_the_rate() {
        let shared = shared(|c| {
            c.rate_burst = 2;
            c.rate_per_second = 1;
            c.max_bad_messages = 2;
        });
        let now = Instant::now();
        let (mut handler, _, _rx) = join(&shared, now);
        let (out, end) = feed(&mut handler, OpCode::Ping, b"hi", now);
        assert_eq!((out, end), (server_frame(OpCode::Pong, b"hi"), None));
        assert_eq!(feed(&mut handler, OpCode::Ping, b"", now).1, None);
        // Over the burst: dropped, then closed as a flood.
        assert_eq!(
            feed(&mut handler, OpCode::Ping, b"", now),
            (Vec::new(), None)
        );
        let (_, end) = feed(&mut handler, OpCode::Text, b"{}", now);
        assert_eq!(end, Some(End::Close(close::POLICY, "too many messages")));
        assert_eq!(shared.stats.flood_messages.load(Ordering::Relaxed), 2);
        // A second later one token is back.
        let later = now + Duration::from_secs(1);
        let (mut fresh, _, _rx) = join(&shared, later);
        assert_eq!(feed(&mut fresh, OpCode::Ping, b"", later).1, None);
    }

    #[tokio::test]
    async fn pongs_and_fragments_count_against_the_rate() {
        let shared = shared(|c| {
            c.rate_burst = 3;
            c.rate_per_second = 1;
            c.max_bad_messages = 2;
        });
        let now = Instant::now();
        let (mut handler, _, _rx) = join(&shared, now);
        for _ in 0..3 {
            assert_eq!(feed(&mut handler, OpCode::Pong, b"", now).1, None);
        }
        assert_eq!(
            feed(&mut handler, OpCode::Pong, b"", now).1,
            None,
            "dropped once"
        );
        let (_, end) = feed(&mut handler, OpCode::Pong, b"", now);
        assert_eq!(end, Some(End::Close(close::POLICY, "too many messages")));
        // Empty pieces of a message that never ends, likewise.
        let (mut handler, _, _rx) = join(&shared, now);
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, OpCode::Text, b"", Some([1, 2, 3, 4]));
        bytes[0] &= 0x7f; // not the last frame
        for _ in 0..10 {
            encode_frame(&mut bytes, OpCode::Continuation, b"", Some([1, 2, 3, 4]));
            let last = bytes.len() - 6;
            bytes[last] &= 0x7f;
        }
        let mut decoder = Decoder::new(1024);
        let end = handler.on_bytes(&mut decoder, &mut bytes, &mut Vec::new(), now);
        assert_eq!(end, Some(End::Close(close::POLICY, "too many messages")));
    }

    #[tokio::test]
    async fn repeated_bad_payloads_close_with_1007() {
        let shared = shared(|c| c.max_bad_messages = 3);
        let now = Instant::now();
        let (mut handler, _, _rx) = join(&shared, now);
        assert_eq!(feed(&mut handler, OpCode::Text, b"not json", now).1, None);
        assert_eq!(feed(&mut handler, OpCode::Text, b"[1]", now).1, None);
        let (_, end) = feed(&mut handler, OpCode::Binary, &[0xff, 0xfe], now);
        assert_eq!(
            end,
            Some(End::Close(
                close::INVALID_PAYLOAD,
                "too many invalid messages"
            ))
        );
        assert_eq!(shared.stats.invalid_messages.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_broken_frame_closes_with_its_code_and_a_close_frame_ends_the_socket() {
        let shared = shared(|c| c.max_frame_bytes = 4096);
        let now = Instant::now();
        let (mut handler, _, _rx) = join(&shared, now);
        // Unmasked: a protocol error.
        let mut out = Vec::new();
        let mut unmasked = server_frame(OpCode::Text, b"{}");
        let end = handler.on_bytes(&mut Decoder::new(4096), &mut unmasked, &mut out, now);
        assert_eq!(end, Some(End::Close(1002, "WebSocket protocol error")));
        let (_, end) = feed(&mut handler, OpCode::Text, &[b' '; 5000], now);
        assert_eq!(end, Some(End::Close(1009, "message too big")));
        let (_, end) = feed(&mut handler, OpCode::Close, &1000u16.to_be_bytes(), now);
        assert_eq!(end, Some(End::ClosedByPeer(Some(1000))));
        assert_eq!(shared.stats.abusive_closes.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn the_root_gets_heartbeats_and_is_dropped_when_pings_go_unanswered() {
        let shared = shared(|c| c.root_ping_timeout = Duration::from_secs(30));
        let start = Instant::now();
        let (registration, _rx, _) = shared
            .register_root(
                &shared.overlay(DEFAULT_OVERLAY).expect("default overlay"),
                false,
            )
            .expect("open");
        let mut root = Handler::new(registration, start);
        let mut out = Vec::new();
        assert_eq!(root.on_command(Command::Heartbeat, &mut out, start), None);
        let mut expected = server_frame(OpCode::Text, HEARTBEAT.as_bytes());
        expected.extend(server_frame(OpCode::Ping, b""));
        assert_eq!(out, expected, "a heartbeat and a ping");
        // While the ping is unanswered, heartbeats go on without a second ping.
        out.clear();
        let soon = start + Duration::from_secs(29);
        assert_eq!(root.on_command(Command::Heartbeat, &mut out, soon), None);
        assert_eq!(out, server_frame(OpCode::Text, HEARTBEAT.as_bytes()));
        // Any frame (the root's heartbeat echo) shows it is alive.
        assert_eq!(
            feed(&mut root, OpCode::Text, HEARTBEAT.as_bytes(), soon).1,
            None
        );
        let late = start + Duration::from_secs(60);
        assert_eq!(root.on_command(Command::Heartbeat, &mut out, late), None);
        let dead = late + Duration::from_secs(30);
        let end = root.on_command(Command::Heartbeat, &mut out, dead);
        assert_eq!(end, Some(End::Close(close::ROOT_UNRESPONSIVE, "no pong")));
    }

    #[tokio::test]
    async fn the_root_may_send_json_but_not_garbage_and_commands_close() {
        let shared = shared(|c| c.max_bad_messages = 1);
        let now = Instant::now();
        let (registration, _rx, _) = shared
            .register_root(
                &shared.overlay(DEFAULT_OVERLAY).expect("default overlay"),
                false,
            )
            .expect("open");
        let mut root = Handler::new(registration, now);
        assert_eq!(
            feed(&mut root, OpCode::Text, br#"{"any":"json"}"#, now).1,
            None
        );
        let (_, end) = feed(&mut root, OpCode::Text, b"{", now);
        assert_eq!(
            end,
            Some(End::Close(
                close::INVALID_PAYLOAD,
                "too many invalid messages"
            ))
        );
        let mut out = Vec::new();
        assert_eq!(
            root.on_command(Command::Shutdown, &mut out, now),
            Some(End::Dismissed(close::GOING_AWAY, close::REASON_SHUTDOWN))
        );
        assert_eq!(
            root.on_command(Command::Replaced, &mut out, now),
            Some(End::Dismissed(
                close::ROOT_REPLACED,
                close::REASON_ROOT_REPLACED
            ))
        );
        assert!(out.is_empty());
    }
}
