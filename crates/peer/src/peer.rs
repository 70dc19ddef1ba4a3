//! [`Peer`]: a connected data channel, and the driver task that owns its connection.
//!
//! The driver pumps incoming messages into a bounded queue (backpressure reaches the
//! remote through SCTP flow control), publishes the connection state, and is the one
//! place the peer connection is closed: on [`Peer::close`], when the [`Peer`] is dropped,
//! when the remote closes, or when ICE fails.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::adapter::{Channel, ChannelEvent, LinkState, Rtc, RtcEvent, RtcEvents, StatsReader};
use crate::candidate::{CandidateKind, Path};
use crate::error::Error;

// Defined below the adapter, which builds messages too; re-exported so that
// `peer::Message` keeps its path.
pub use crate::message::Message;

/// The largest message [`Peer::send_text`] and [`Peer::send_binary`] accept: 64 KiB,
/// the `a=max-message-size` the WebRTC stack advertises by default. When the remote
/// advertises less, its value applies ([`Peer::max_message_size`]). Larger messages are
/// refused with [`Error::MessageTooLarge`], never truncated: split them yourself.
pub const MAX_MESSAGE_SIZE: usize = 65_536;

/// Messages received but not read yet. When full, the driver stops reading the data
/// channel and SCTP flow control slows the sender down.
const RECEIVE_QUEUE: usize = 256;

/// How long [`Peer::close`] waits for the connection to shut down.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Where a connected peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Connected: messages flow.
    Connected,
    /// ICE lost the remote for now; it may come back (or fail).
    Disconnected,
    /// Closed for good.
    Closed(CloseReason),
}

/// Why a peer closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// [`Peer::close`] was called, or the [`Peer`] was dropped.
    Local,
    /// The remote peer closed the data channel or the connection.
    Remote,
    /// ICE or DTLS failed.
    Failed,
}

/// A connected peer: one ordered, reliable data channel.
///
/// Dropping it closes the connection and releases its sockets and task.
#[derive(Debug)]
pub struct Peer {
    remote_id: Option<String>,
    label: String,
    channel: Channel,
    max_message_size: usize,
    incoming: mpsc::Receiver<Message>,
    state: watch::Receiver<PeerState>,
    /// Reads the connection's statistics.
    stats: StatsReader,
    /// The kinds of the candidates this side signaled.
    signaled: Vec<CandidateKind>,
    /// Dropping this tells the driver to close.
    shutdown: Option<oneshot::Sender<()>>,
    driver: Option<JoinHandle<()>>,
}

impl Peer {
    /// Takes over a connection whose data channel just opened.
    pub(crate) async fn start(
        rtc: Rtc,
        events: RtcEvents,
        channel: Channel,
        remote_id: Option<String>,
        first_message: Option<Message>,
        signaled: Vec<CandidateKind>,
    ) -> Self {
        let max_message_size = rtc
            .max_message_size()
            .await
            .map_or(MAX_MESSAGE_SIZE, |n| n.min(MAX_MESSAGE_SIZE));
        let label = channel.label().await;
        let (message_tx, incoming) = mpsc::channel(RECEIVE_QUEUE);
        if let Some(message) = first_message {
            // The queue is new and empty: this cannot fail.
            let _ = message_tx.try_send(message);
        }
        let stats = rtc.stats();
        let (state_tx, state) = watch::channel(PeerState::Connected);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let driver = tokio::spawn(drive(
            rtc,
            events,
            channel.clone(),
            message_tx,
            state_tx,
            shutdown_rx,
        ));
        Self {
            remote_id,
            label,
            channel,
            max_message_size,
            incoming,
            state,
            stats,
            signaled,
            shutdown: Some(shutdown),
            driver: Some(driver),
        }
    }

    /// The remote peer's `/join` id: the answerer's for a newcomer, the newcomer's for
    /// an answerer.
    #[must_use]
    pub fn remote_id(&self) -> Option<&str> {
        self.remote_id.as_deref()
    }

    /// The data channel's label: [`crate::Options::channel_label`] of the newcomer that
    /// created it (simple-peer picks 40 random hex characters).
    #[must_use]
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The largest message this connection sends: [`MAX_MESSAGE_SIZE`], or less if the
    /// remote advertised less.
    #[must_use]
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The candidate pair the connection uses: whether this side (and the remote) is
    /// reached directly or through a TURN relay. `None` once closed, or if the stack
    /// has no selected pair to report.
    pub async fn path(&self) -> Option<Path> {
        self.stats.path().await
    }

    /// The kinds of the ICE candidates this side sent to the remote during the
    /// negotiation (trickled, or in its description), in order. With
    /// [`crate::Options::relay_only`] they are all [`CandidateKind::Relay`].
    #[must_use]
    pub fn signaled_candidates(&self) -> &[CandidateKind] {
        &self.signaled
    }

    /// Sends a text message (ordered, reliable).
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] above [`Peer::max_message_size`] bytes,
    /// [`Error::ClosedByRemote`] or [`Error::Closed`] once closed.
    pub async fn send_text(&self, text: &str) -> Result<(), Error> {
        self.check(text.len())?;
        let result = self.channel.send_text(text).await;
        self.sent(result)
    }

    /// Sends a binary message (ordered, reliable).
    ///
    /// # Errors
    /// As [`Peer::send_text`].
    pub async fn send_binary(&self, data: &[u8]) -> Result<(), Error> {
        self.check(data.len())?;
        let result = self.channel.send_binary(data).await;
        self.sent(result)
    }

    /// Sends a message of either kind.
    ///
    /// # Errors
    /// As [`Peer::send_text`].
    pub async fn send(&self, message: &Message) -> Result<(), Error> {
        match message {
            Message::Text(text) => self.send_text(text).await,
            Message::Binary(data) => self.send_binary(data).await,
        }
    }

    fn check(&self, size: usize) -> Result<(), Error> {
        if let PeerState::Closed(reason) = *self.state.borrow() {
            return Err(closed_error(reason));
        }
        if size > self.max_message_size {
            return Err(Error::MessageTooLarge {
                size,
                max: self.max_message_size,
            });
        }
        Ok(())
    }

    fn sent(&self, result: Result<(), String>) -> Result<(), Error> {
        result.map_err(|message| match *self.state.borrow() {
            PeerState::Closed(reason) => closed_error(reason),
            _ => Error::WebRtc {
                during: "sending a message",
                message,
            },
        })
    }

    /// The next message, in order; `None` once the connection is closed and every
    /// message received before was read.
    pub async fn recv(&mut self) -> Option<Message> {
        self.incoming.recv().await
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> PeerState {
        *self.state.borrow()
    }

    /// A receiver of state changes, to watch the connection from another task.
    #[must_use]
    pub fn state_receiver(&self) -> watch::Receiver<PeerState> {
        self.state.clone()
    }

    /// Waits until the connection is closed (by either side, or by failure) and says why.
    pub async fn closed(&self) -> CloseReason {
        let mut state = self.state.clone();
        loop {
            if let PeerState::Closed(reason) = *state.borrow_and_update() {
                return reason;
            }
            if state.changed().await.is_err() {
                // The driver is gone without saying why: it was stopped locally.
                return CloseReason::Local;
            }
        }
    }

    /// Closes the connection and waits (up to 2 s) until its sockets are released.
    pub async fn close(mut self) {
        self.shutdown.take();
        if let Some(driver) = self.driver.take() {
            let _ = tokio::time::timeout(CLOSE_WAIT, driver).await;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Dropping `shutdown` wakes the driver, which closes the connection.
        self.shutdown.take();
    }
}

fn closed_error(reason: CloseReason) -> Error {
    match reason {
        CloseReason::Remote => Error::ClosedByRemote,
        CloseReason::Local | CloseReason::Failed => Error::Closed,
    }
}

/// The driver of one connected peer.
async fn drive(
    mut rtc: Rtc,
    mut events: RtcEvents,
    channel: Channel,
    messages: mpsc::Sender<Message>,
    state: watch::Sender<PeerState>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut pending: Option<Message> = None;
    let reason = loop {
        tokio::select! {
            _ = &mut shutdown => break CloseReason::Local,
            event = channel.next(), if pending.is_none() => match event {
                ChannelEvent::Message(message) => pending = Some(message),
                ChannelEvent::Open => {}
                ChannelEvent::Closed => break CloseReason::Remote,
            },
            permit = messages.reserve(), if pending.is_some() => match (permit, pending.take()) {
                (Ok(permit), Some(message)) => permit.send(message),
                // The `Peer` is gone; `shutdown` fires too.
                _ => break CloseReason::Local,
            },
            event = events.recv() => match event {
                Some(RtcEvent::Ice(LinkState::Disconnected)) => {
                    state.send_replace(PeerState::Disconnected);
                }
                Some(RtcEvent::Ice(LinkState::Connected)) => {
                    state.send_replace(PeerState::Connected);
                }
                Some(RtcEvent::Ice(LinkState::Failed) | RtcEvent::Connection(LinkState::Failed)) => {
                    break CloseReason::Failed;
                }
                Some(RtcEvent::Connection(LinkState::Closed)) | None => break CloseReason::Remote,
                // Late local candidates and the like: the negotiation is over.
                Some(event) => tracing::trace!(?event, "ignored after connect"),
            },
        }
    };
    tracing::debug!(?reason, "peer closing");
    // Publish first so senders fail fast, then release everything.
    state.send_replace(PeerState::Closed(reason));
    if let Some(message) = pending.take() {
        let _ = messages.try_send(message);
    }
    drop(messages);
    if reason == CloseReason::Local {
        channel.close().await;
    }
    rtc.close().await;
}
