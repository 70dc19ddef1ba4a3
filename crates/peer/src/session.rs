//! One negotiation, newcomer or answerer, from the first signal to an open data channel.
//!
//! The IO shell around [`Negotiation`]: it moves frames between the `/join` socket, the
//! requests routed by the root, and the WebRTC stack, and executes the negotiation's
//! actions. When the data channel opens it closes the `/join` socket and hands the
//! connection to a [`Peer`]; on any error it closes the connection before returning.

use std::future::Future;
use std::time::Duration;

use bootstrap_protocol::{Envelope, Signal};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::adapter::{Channel, ChannelEvent, LinkState, Rtc, RtcEvent, RtcEvents};
use crate::candidate::CandidateKind;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::negotiation::{Action, Negotiation, Role};
use crate::peer::Peer;
use crate::request::Request;
use crate::signaling::{self, Socket};

/// Opens this side's `/join` socket and its peer connection (with its ICE servers,
/// which may be fetched from the server first). They do not depend on each other, so
/// both are set up at once.
async fn open(endpoint: &Endpoint) -> Result<(Socket, Rtc, RtcEvents), Error> {
    let (server, options) = (endpoint.server(), endpoint.options());
    let url = server.join_url();
    let (socket, rtc) = tokio::join!(
        signaling::connect(
            &url,
            options.connect_timeout.min(options.timeout),
            &options.tls_roots_pem,
        ),
        async { Rtc::new(options, endpoint.ice_servers().await?).await }
    );
    let socket = socket.map_err(|e| e.for_join(&server.join_url_redacted()))?;
    let (rtc, events) = rtc?;
    Ok((socket, rtc, events))
}

/// Joins as a newcomer: opens `/join`, offers, and waits for the data channel.
pub(crate) async fn join(endpoint: &Endpoint) -> Result<Peer, Error> {
    let options = endpoint.options();
    let deadline = Instant::now() + options.timeout;
    let (socket, mut rtc, events) = open(endpoint).await?;
    let setup = async {
        let channel = rtc
            .create_data_channel(options.channel_label.as_deref())
            .await?;
        let offer = rtc.create_offer().await?;
        Ok::<_, Error>((channel, offer))
    }
    .await;
    let (channel, offer) = match setup {
        Ok(setup) => setup,
        Err(error) => {
            rtc.close().await;
            return Err(error);
        }
    };
    let mut session = Session {
        rtc,
        events,
        socket: Some(socket),
        channel: Some(channel),
        negotiation: Negotiation::newcomer(options.trickle),
        timeout: options.timeout,
        ice: LinkState::Connecting,
        connection: LinkState::Connecting,
        signaled: Vec::new(),
    };
    if options.trickle {
        let envelope = session.negotiation.local_description(offer);
        session.send(envelope).await;
    }
    session
        .run(deadline, RequestSource::none(), std::future::pending())
        .await
}

/// Answers `first` (and the later requests from `routed` and `own`): opens its own
/// `/join`, answers with `destination` = the newcomer's id, and waits for the data
/// channel. Gives up when `cancelled` completes.
pub(crate) async fn answer(
    endpoint: &Endpoint,
    first: Request,
    sources: RequestSource,
    cancelled: impl Future<Output = ()>,
) -> Result<Peer, Error> {
    let options = endpoint.options();
    let deadline = Instant::now() + options.timeout;
    let (socket, rtc, events) = open(endpoint).await?;
    let mut session = Session {
        rtc,
        events,
        socket: Some(socket),
        channel: None,
        negotiation: Negotiation::answerer(first.origin(), options.trickle),
        timeout: options.timeout,
        ice: LinkState::Connecting,
        connection: LinkState::Connecting,
        signaled: Vec::new(),
    };
    let origin = first.origin().to_owned();
    if let Err(error) = session
        .on_signal(Some(&origin), first.into_envelope().signal)
        .await
    {
        session.fail().await;
        return Err(error);
    }
    session.run(deadline, sources, cancelled).await
}

/// Where an answerer's later requests come from: the root's router and the
/// [`crate::Answerer`] handle. Each is dropped from the set once closed.
#[derive(Debug)]
pub(crate) struct RequestSource {
    sources: [Option<mpsc::Receiver<Request>>; 2],
}

impl RequestSource {
    /// No requests (the newcomer).
    pub(crate) fn none() -> Self {
        Self {
            sources: [None, None],
        }
    }

    /// Requests from these receivers.
    pub(crate) fn new(
        own: mpsc::Receiver<Request>,
        routed: Option<mpsc::Receiver<Request>>,
    ) -> Self {
        Self {
            sources: [Some(own), routed],
        }
    }

    /// The next request from any source; pending forever once all are closed.
    async fn next(&mut self) -> Request {
        loop {
            let [a, b] = &mut self.sources;
            let (which, request) = tokio::select! {
                r = recv(a) => (0, r),
                r = recv(b) => (1, r),
            };
            match request {
                Some(request) => return request,
                None => self.sources[which] = None,
            }
        }
    }
}

async fn recv(source: &mut Option<mpsc::Receiver<Request>>) -> Option<Request> {
    match source {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The state of one negotiation in flight.
struct Session {
    rtc: Rtc,
    events: RtcEvents,
    /// `None` once the server closed it.
    socket: Option<Socket>,
    /// The newcomer's from the start; the answerer's once it arrives.
    channel: Option<Channel>,
    negotiation: Negotiation,
    timeout: Duration,
    /// Last ICE state, to tell ICE failures from DTLS failures.
    ice: LinkState,
    /// Last peer-connection (ICE + DTLS) state.
    connection: LinkState,
    /// The kinds of the candidates sent to the remote, in order.
    signaled: Vec<CandidateKind>,
}

impl Session {
    /// Drives the negotiation until the data channel opens, it fails, or `deadline`.
    async fn run(
        mut self,
        deadline: Instant,
        mut requests: RequestSource,
        cancelled: impl Future<Output = ()>,
    ) -> Result<Peer, Error> {
        tokio::pin!(cancelled);
        let mut pulse = tokio::time::interval(Duration::from_millis(5));
        pulse.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            let step = tokio::select! {
                // Between ICE connecting and the channel opening, DTLS, SCTP and DCEP
                // each leave output queued in the stack (see `Rtc::wake`).
                _ = pulse.tick(), if self.ice == LinkState::Connected => {
                    self.rtc.wake().await;
                    Ok(())
                }
                () = tokio::time::sleep_until(deadline) => Err(self.timed_out()),
                () = &mut cancelled => Err(Error::Closed),
                frame = next_frame(&mut self.socket) => self.on_frame(frame).await,
                event = self.events.recv() => self.on_event(event).await,
                event = next_channel_event(self.channel.as_ref()) => match event {
                    ChannelEvent::Open => break Ok(None),
                    ChannelEvent::Closed => Err(Error::ClosedByRemote),
                    // Messages flow after `Open`; one arriving first means it is open.
                    ChannelEvent::Message(message) => break Ok(Some(message)),
                },
                request = requests.next() => {
                    let origin = request.origin().to_owned();
                    self.on_signal(Some(&origin), request.into_envelope().signal).await
                }
            };
            if let Err(error) = step {
                break Err(error);
            }
        };
        match outcome {
            Ok(first_message) => {
                self.negotiation.finish();
                if let Some(socket) = self.socket.take() {
                    signaling::close_in_background(socket);
                }
                let remote_id = self.negotiation.remote_id().map(str::to_owned);
                let Some(channel) = self.channel.take() else {
                    // `Open` only comes from a channel, so it is set.
                    return Err(Error::Closed);
                };
                Ok(Peer::start(
                    self.rtc,
                    self.events,
                    channel,
                    remote_id,
                    first_message,
                    self.signaled,
                )
                .await)
            }
            Err(error) => {
                tracing::debug!(%error, role = ?self.negotiation.role(), "negotiation failed");
                self.fail().await;
                Err(error)
            }
        }
    }

    /// The error for a negotiation that ran out of time: the last step that did not
    /// complete. ICE alone only declares failure after 30 s of checks, longer than the
    /// default timeout, so a timeout before ICE connected is the ICE failure.
    fn timed_out(&self) -> Error {
        if !self.negotiation.has_remote_description() {
            Error::NoAnswer(self.timeout)
        } else if self.ice != LinkState::Connected {
            Error::IceFailed
        } else if self.connection != LinkState::Connected {
            Error::DtlsFailed
        } else {
            Error::ConnectTimeout(self.timeout)
        }
    }

    /// Releases everything after a failure.
    async fn fail(&mut self) {
        self.negotiation.finish();
        if let Some(socket) = self.socket.take() {
            signaling::close_in_background(socket);
        }
        if let Some(channel) = self.channel.take() {
            channel.close().await;
        }
        self.rtc.close().await;
    }

    async fn send(&mut self, envelope: Option<Envelope<Signal>>) {
        let (Some(envelope), Some(socket)) = (envelope, self.socket.as_mut()) else {
            return;
        };
        match &envelope.signal {
            Signal::Candidate { candidate } => self
                .signaled
                .extend(CandidateKind::of_candidate(&candidate.candidate)),
            Signal::Description(description) => self
                .signaled
                .extend(CandidateKind::in_sdp(&description.sdp)),
        }
        if let Err(error) = signaling::send(socket, &envelope).await {
            tracing::debug!(%error, "the /join socket failed while sending");
            self.socket = None;
        }
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<tokio_tungstenite::tungstenite::Message, String>>,
    ) -> Result<(), Error> {
        let message = match frame {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                tracing::debug!(%error, "the /join socket failed");
                return self.socket_closed();
            }
            None => return self.socket_closed(),
        };
        if message.is_close() {
            return self.socket_closed();
        }
        let Some(text) = signaling::frame_text(&message) else {
            return Ok(()); // ping/pong: tungstenite answers pings itself
        };
        let Some(envelope) = signaling::decode(text) else {
            tracing::debug!(frame = %text, "ignoring a frame that is not a relayed signal");
            return Ok(());
        };
        self.on_signal(envelope.origin.as_deref(), envelope.signal)
            .await
    }

    fn socket_closed(&mut self) -> Result<(), Error> {
        self.socket = None;
        if self.negotiation.has_remote_description() {
            // Enough went through; ICE may still finish without more signals.
            Ok(())
        } else {
            Err(Error::SignalingClosed)
        }
    }

    async fn on_signal(&mut self, origin: Option<&str>, signal: Signal) -> Result<(), Error> {
        match self.negotiation.receive(origin, signal) {
            Action::ApplyDescription(description) => {
                if let Some(answer) = self.rtc.apply_remote(&description).await?
                    && self.negotiation.trickle()
                {
                    let envelope = self.negotiation.local_description(answer);
                    self.send(envelope).await;
                }
                for candidate in self.negotiation.remote_description_applied() {
                    self.add_candidate(candidate).await;
                }
                self.rtc.wake().await;
            }
            Action::AddCandidate(candidate) => {
                self.add_candidate(candidate).await;
                self.rtc.wake().await;
            }
            Action::Queued => {}
            Action::Dropped(why) => tracing::debug!(?why, ?origin, "dropped a signal"),
        }
        Ok(())
    }

    async fn add_candidate(&mut self, candidate: bootstrap_protocol::IceCandidate) {
        // One bad candidate (an unresolvable `.local` name, an unknown type) must not end
        // the negotiation: the others may work.
        if let Err(error) = self.rtc.add_candidate(candidate).await {
            tracing::debug!(%error, "ignored a remote candidate");
        }
    }

    async fn on_event(&mut self, event: Option<RtcEvent>) -> Result<(), Error> {
        let Some(event) = event else {
            return Err(Error::Closed);
        };
        tracing::debug!(?event, role = ?self.negotiation.role(), "webrtc event");
        match event {
            RtcEvent::Candidate(mut candidate) => {
                candidate.sdp_mid = Some(self.rtc.mid().to_owned());
                let envelope = self.negotiation.local_candidate(candidate);
                self.send(envelope).await;
            }
            RtcEvent::GatheringComplete if !self.negotiation.trickle() => {
                let description = self.rtc.local_description().await?;
                let envelope = self.negotiation.local_description(description);
                self.send(envelope).await;
            }
            RtcEvent::GatheringComplete => {}
            RtcEvent::Ice(LinkState::Failed) => return Err(Error::IceFailed),
            RtcEvent::Ice(state) => {
                self.ice = state;
                if state == LinkState::Connected {
                    // The first DTLS flight may sit queued until the next timer tick.
                    self.rtc.wake().await;
                }
            }
            RtcEvent::Connection(LinkState::Failed) => {
                return Err(if self.ice == LinkState::Connected {
                    Error::DtlsFailed
                } else {
                    Error::IceFailed
                });
            }
            RtcEvent::Connection(LinkState::Closed) => return Err(Error::ClosedByRemote),
            RtcEvent::Connection(state) => {
                self.connection = state;
                if state == LinkState::Connected {
                    self.rtc.wake().await;
                }
            }
            RtcEvent::DataChannel(channel) => {
                if matches!(self.negotiation.role(), Role::Answerer { .. })
                    && self.channel.is_none()
                {
                    self.channel = Some(channel);
                    // The DCEP ACK is queued; through a TURN relay it waits for a tick.
                    self.rtc.wake().await;
                } else {
                    tracing::debug!("ignoring an extra data channel");
                }
            }
        }
        Ok(())
    }
}

async fn next_frame(
    socket: &mut Option<Socket>,
) -> Option<Result<tokio_tungstenite::tungstenite::Message, String>> {
    match socket {
        Some(socket) => socket.next().await.map(|r| r.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

async fn next_channel_event(channel: Option<&Channel>) -> ChannelEvent {
    match channel {
        Some(channel) => channel.next().await,
        None => std::future::pending().await,
    }
}
