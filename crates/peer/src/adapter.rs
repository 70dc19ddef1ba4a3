//! The `webrtc` glue: the only module that names a `webrtc` (or `rtc`) type.
//!
//! [`Rtc`] wraps one peer connection and [`Channel`] its one data channel. The
//! event handler registered with the stack only forwards events into an unbounded
//! channel and captures nothing but that sender (no `Arc` to the peer connection, so no
//! reference cycle): the stack's driver awaits each callback, so a callback must never
//! wait on us. The channel is unbounded on purpose: its volume is a handful of
//! candidates and state changes per connection, and a bounded one could deadlock the
//! driver against a session that is itself awaiting the driver.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bootstrap_protocol::{IceCandidate, SdpKind, SessionDescription};
use bytes::BytesMut;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::transport::RTCIceCandidateType;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfiguration,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState,
    RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSdpType, RTCSessionDescription, RTCStatsReportEntry, SettingEngineBuilder, StatsSelector,
};

use crate::candidate::{CandidateKind, Path};
use crate::config::{IceServer, Options};
use crate::error::Error;
use crate::message::Message;

/// Connection progress, for the ICE transport and for the whole peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// New, checking or connecting.
    Connecting,
    /// Connected or completed.
    Connected,
    /// Lost for now; may come back.
    Disconnected,
    /// Failed for good.
    Failed,
    /// Closed.
    Closed,
}

/// What the stack reports, already translated.
pub(crate) enum RtcEvent {
    /// A local candidate to trickle (its `sdpMid` still to be filled in, see [`Rtc::mid`]).
    Candidate(IceCandidate),
    /// Candidate gathering finished.
    GatheringComplete,
    /// The ICE transport changed state.
    Ice(LinkState),
    /// The peer connection (ICE + DTLS) changed state.
    Connection(LinkState),
    /// The remote peer's data channel arrived (answerer side).
    DataChannel(Channel),
}

impl fmt::Debug for RtcEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Candidate(c) => f.debug_tuple("Candidate").field(&c.candidate).finish(),
            Self::GatheringComplete => f.write_str("GatheringComplete"),
            Self::Ice(s) => f.debug_tuple("Ice").field(s).finish(),
            Self::Connection(s) => f.debug_tuple("Connection").field(s).finish(),
            Self::DataChannel(_) => f.write_str("DataChannel"),
        }
    }
}

/// Receives the stack's events for one connection.
pub(crate) type RtcEvents = mpsc::UnboundedReceiver<RtcEvent>;

/// The handler the stack calls: forwards and returns at once.
struct Forwarder {
    events: mpsc::UnboundedSender<RtcEvent>,
}

impl Forwarder {
    fn forward(&self, event: RtcEvent) {
        // The receiver is gone once the connection is being torn down; nothing to do.
        let _ = self.events.send(event);
    }
}

#[async_trait]
impl PeerConnectionEventHandler for Forwarder {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => self.forward(RtcEvent::Candidate(IceCandidate {
                candidate: init.candidate,
                sdp_m_line_index: Some(init.sdp_mline_index.unwrap_or(0)),
                sdp_mid: None,
            })),
            Err(error) => tracing::warn!(%error, "cannot serialize a local ICE candidate"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.forward(RtcEvent::GatheringComplete);
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        let state = match state {
            RTCIceConnectionState::Connected | RTCIceConnectionState::Completed => {
                LinkState::Connected
            }
            RTCIceConnectionState::Disconnected => LinkState::Disconnected,
            RTCIceConnectionState::Failed => LinkState::Failed,
            RTCIceConnectionState::Closed => LinkState::Closed,
            _ => LinkState::Connecting,
        };
        self.forward(RtcEvent::Ice(state));
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let state = match state {
            RTCPeerConnectionState::Connected => LinkState::Connected,
            RTCPeerConnectionState::Disconnected => LinkState::Disconnected,
            RTCPeerConnectionState::Failed => LinkState::Failed,
            RTCPeerConnectionState::Closed => LinkState::Closed,
            _ => LinkState::Connecting,
        };
        self.forward(RtcEvent::Connection(state));
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        self.forward(RtcEvent::DataChannel(Channel { dc: data_channel }));
    }
}

/// Reads a connection's statistics (it does not keep the connection open: closing is
/// [`Rtc`]'s).
#[derive(Clone)]
pub(crate) struct StatsReader {
    pc: Arc<dyn PeerConnection>,
}

impl fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsReader").finish_non_exhaustive()
    }
}

impl StatsReader {
    /// The selected candidate pair's kinds, once ICE selected one.
    pub(crate) async fn path(&self) -> Option<Path> {
        let report = self
            .pc
            .get_stats(std::time::Instant::now(), StatsSelector::None)
            .await;
        let selected = report.iter().find_map(|entry| match entry {
            RTCStatsReportEntry::Transport(transport)
                if !transport.selected_candidate_pair_id.is_empty() =>
            {
                Some(transport.selected_candidate_pair_id.clone())
            }
            _ => None,
        })?;
        let RTCStatsReportEntry::IceCandidatePair(pair) = report.get(&selected)? else {
            return None;
        };
        // The stack files candidates under a prefixed id; a pair names them bare.
        let kind = |prefix: &str, id: &str| match report
            .get(id)
            .or_else(|| report.get(&format!("{prefix}{id}")))?
        {
            RTCStatsReportEntry::LocalCandidate(candidate)
            | RTCStatsReportEntry::RemoteCandidate(candidate) => {
                candidate_kind(candidate.candidate_type)
            }
            _ => None,
        };
        Some(Path {
            local: kind("RTCLocalIceCandidate_", &pair.local_candidate_id)?,
            // Every signaled remote candidate is on record: one that is not was
            // learned from a connectivity check.
            remote: kind("RTCRemoteIceCandidate_", &pair.remote_candidate_id)
                .unwrap_or(CandidateKind::PeerReflexive),
        })
    }
}

fn candidate_kind(kind: RTCIceCandidateType) -> Option<CandidateKind> {
    match kind {
        RTCIceCandidateType::Host => Some(CandidateKind::Host),
        RTCIceCandidateType::Srflx => Some(CandidateKind::ServerReflexive),
        RTCIceCandidateType::Prflx => Some(CandidateKind::PeerReflexive),
        RTCIceCandidateType::Relay => Some(CandidateKind::Relay),
        _ => None,
    }
}

/// One peer connection. Closed exactly once: by [`Rtc::close`], or on drop by a task
/// spawned for it, so no driver task, socket or port outlives this value.
pub(crate) struct Rtc {
    pc: Arc<dyn PeerConnection>,
    /// The configuration built with, re-applied unchanged by [`Rtc::wake`].
    configuration: RTCConfiguration,
    /// Media id of the one data section, for outgoing candidates' `sdpMid`.
    mid: String,
    closed: bool,
}

impl fmt::Debug for Rtc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rtc")
            .field("mid", &self.mid)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Rtc {
    /// Builds a peer connection with `options` and `ice_servers` (in place of
    /// `options.ice_servers`) and starts its driver.
    pub(crate) async fn new(
        options: &Options,
        ice_servers: Vec<IceServer>,
    ) -> Result<(Self, RtcEvents), Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let ice_servers = ice_servers
            .into_iter()
            .map(|s| RTCIceServer {
                urls: s.urls,
                username: s.username.unwrap_or_default(),
                credential: s.credential.unwrap_or_default(),
            })
            .collect();
        let policy = if options.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        };
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .with_ice_transport_policy(policy)
            .build();
        let mdns = if options.mdns {
            MulticastDnsMode::QueryOnly
        } else {
            MulticastDnsMode::Disabled
        };
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(mdns)
            // Check pacing: webrtc's default is 200 ms, and every step of the handshake
            // that the stack leaves queued (the first DTLS flight among them) waits for
            // the next check tick. 50 ms is RFC 8445's default Ta. The number of checks
            // per pair is scaled so a pair still gets the default 1.4 s before it fails.
            .with_ice_connection_attempts(
                Some(options.ice_check_interval),
                Some(binding_requests(options.ice_check_interval)),
            )
            // With trickle, the remote's first check often arrives before its
            // candidate, so the controlling side knows it only as peer-reflexive; the
            // default 1 s wait before nominating such a pair then adds a full second.
            // A pair learned from a check that succeeded is a working path: take it.
            .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
            // The controlling side waits 2 s before nominating a relay pair, in case a
            // direct one works; relay-only, none can, and the wait is all loss.
            .with_relay_acceptance_min_wait(options.relay_only.then_some(Duration::ZERO))
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration.clone())
            .with_setting_engine(settings)
            .with_handler(Arc::new(Forwarder { events: tx }))
            .with_udp_addrs(options.udp_addrs.clone())
            .build()
            .await
            .map_err(|e| Error::webrtc("creating the peer connection", e))?;
        let rtc = Self {
            configuration,
            pc: Arc::new(pc),
            mid: "0".to_owned(),
            closed: false,
        };
        Ok((rtc, rx))
    }

    /// A handle that reads this connection's statistics, for as long as it lives.
    pub(crate) fn stats(&self) -> StatsReader {
        StatsReader {
            pc: Arc::clone(&self.pc),
        }
    }

    /// Media id of the data section, for outgoing candidates.
    pub(crate) fn mid(&self) -> &str {
        &self.mid
    }

    /// Creates the one in-band, ordered, reliable data channel (newcomer side), labelled
    /// `label`, or with a 40-hex-character random label like simple-peer's.
    pub(crate) async fn create_data_channel(&self, label: Option<&str>) -> Result<Channel, Error> {
        let label = label.map_or_else(random_label, str::to_owned);
        let dc = self
            .pc
            .create_data_channel(&label, None)
            .await
            .map_err(|e| Error::webrtc("creating the data channel", e))?;
        Ok(Channel { dc })
    }

    /// Creates the offer and sets it as local description.
    pub(crate) async fn create_offer(&mut self) -> Result<SessionDescription, Error> {
        let offer = self
            .pc
            .create_offer(None)
            .await
            .map_err(|e| Error::webrtc("creating the offer", e))?;
        self.set_local(offer).await
    }

    /// Sets the remote description; for an offer, also creates and sets the answer and
    /// returns it.
    pub(crate) async fn apply_remote(
        &mut self,
        description: &SessionDescription,
    ) -> Result<Option<SessionDescription>, Error> {
        let remote = match description.kind {
            SdpKind::Offer => RTCSessionDescription::offer(description.sdp.clone()),
            SdpKind::Answer => RTCSessionDescription::answer(description.sdp.clone()),
        }
        .map_err(|e| Error::webrtc("parsing the remote description", e))?;
        self.pc
            .set_remote_description(remote)
            .await
            .map_err(|e| Error::webrtc("setting the remote description", e))?;
        if description.kind == SdpKind::Answer {
            return Ok(None);
        }
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(|e| Error::webrtc("creating the answer", e))?;
        self.set_local(answer).await.map(Some)
    }

    async fn set_local(
        &mut self,
        description: RTCSessionDescription,
    ) -> Result<SessionDescription, Error> {
        if let Some(mid) = data_mid(&description.sdp) {
            mid.clone_into(&mut self.mid);
        }
        let converted = from_rtc(&description)?;
        self.pc
            .set_local_description(description)
            .await
            .map_err(|e| Error::webrtc("setting the local description", e))?;
        Ok(converted)
    }

    /// The current local description, candidates included once gathering is complete
    /// (used when trickle is off).
    pub(crate) async fn local_description(&self) -> Result<SessionDescription, Error> {
        let description = self.pc.local_description().await.ok_or(Error::WebRtc {
            during: "reading the local description",
            message: "no local description".to_owned(),
        })?;
        from_rtc(&description)
    }

    /// Adds a remote candidate.
    pub(crate) async fn add_candidate(&self, candidate: IceCandidate) -> Result<(), Error> {
        self.pc
            .add_ice_candidate(RTCIceCandidateInit {
                candidate: candidate.candidate,
                sdp_mid: candidate.sdp_mid,
                sdp_mline_index: candidate.sdp_m_line_index,
                ..RTCIceCandidateInit::default()
            })
            .await
            .map_err(|e| Error::webrtc("adding a remote candidate", e))
    }

    /// The largest message the negotiated SCTP association carries, once connected.
    pub(crate) async fn max_message_size(&self) -> Option<usize> {
        let sctp = self.pc.sctp().await?;
        let size = sctp.max_message_size().await.ok()?;
        usize::try_from(size).ok()
    }

    /// Wakes the stack's driver so that it sends what it queued.
    ///
    /// webrtc 0.21.1's driver only flushes its output at the top of its loop, and some
    /// steps queue output while it then sleeps until its next timer (up to 200 ms):
    /// adding a remote candidate, the SCTP INIT after the DTLS handshake, the DCEP OPEN
    /// after the SCTP handshake. Any driver event makes it go round its loop again;
    /// re-applying the unchanged configuration is the cheapest public call that sends
    /// one.
    pub(crate) async fn wake(&self) {
        if let Err(error) = self.pc.set_configuration(self.configuration.clone()).await {
            tracing::trace!(%error, "waking the driver");
        }
    }

    /// Closes the connection: stops its driver and frees its sockets.
    pub(crate) async fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            if let Err(error) = self.pc.close().await {
                tracing::debug!(%error, "closing the peer connection");
            }
        }
    }
}

impl Drop for Rtc {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Dropped without `close` (a cancelled join, a dropped handle): the stack's driver
        // would keep running with its sockets, so close it on the runtime we were built on.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pc = self.pc.clone();
            runtime.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

/// Checks per candidate pair at `interval` so that a pair gets the stack's default
/// 1.4 s (7 checks at 200 ms) before it is declared failed.
fn binding_requests(interval: Duration) -> u16 {
    const BUDGET: Duration = Duration::from_millis(1400);
    let per_interval = BUDGET.as_millis() / interval.as_millis().max(1);
    u16::try_from(per_interval).unwrap_or(u16::MAX).max(7)
}

fn from_rtc(description: &RTCSessionDescription) -> Result<SessionDescription, Error> {
    let kind = match description.sdp_type {
        RTCSdpType::Offer => SdpKind::Offer,
        RTCSdpType::Answer => SdpKind::Answer,
        other => {
            return Err(Error::WebRtc {
                during: "reading the local description",
                message: format!("unexpected description type {other}"),
            });
        }
    };
    Ok(SessionDescription {
        kind,
        sdp: description.sdp.clone(),
    })
}

/// The `a=mid:` of the first media section (the data section: there is no other).
fn data_mid(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|line| line.trim_end().strip_prefix("a=mid:"))
        .filter(|mid| !mid.is_empty())
}

/// 20 random bytes as 40 hex characters, like simple-peer's channel label.
fn random_label() -> String {
    let mut bytes = [0u8; 20];
    if getrandom::fill(&mut bytes).is_err() {
        // The label only has to be a string; uniqueness is nice to have.
        return "webrtc-bootstrap".to_owned();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a data channel reports, already translated.
#[derive(Debug)]
pub(crate) enum ChannelEvent {
    /// Open: ready to send.
    Open,
    /// A message arrived.
    Message(Message),
    /// Closed (by either side), or the connection went away.
    Closed,
}

/// The one data channel of a connection.
#[derive(Clone)]
pub(crate) struct Channel {
    dc: Arc<dyn DataChannel>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.dc.id())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// The next event that matters. Cancel-safe: nothing is lost if the future is
    /// dropped before it completes.
    pub(crate) async fn next(&self) -> ChannelEvent {
        loop {
            match self.dc.poll().await {
                None | Some(DataChannelEvent::OnClose) => return ChannelEvent::Closed,
                Some(DataChannelEvent::OnOpen) => return ChannelEvent::Open,
                Some(DataChannelEvent::OnMessage(message)) => {
                    let data = message.data.freeze();
                    let message = if message.is_string {
                        match String::from_utf8(data.to_vec()) {
                            Ok(text) => Message::Text(text),
                            Err(e) => Message::Binary(e.into_bytes()),
                        }
                    } else {
                        Message::Binary(data.to_vec())
                    };
                    return ChannelEvent::Message(message);
                }
                Some(_) => {}
            }
        }
    }

    /// The channel's label (empty if the stack cannot say).
    pub(crate) async fn label(&self) -> String {
        self.dc.label().await.unwrap_or_default()
    }

    /// Sends a text message.
    pub(crate) async fn send_text(&self, text: &str) -> Result<(), String> {
        self.dc.send_text(text).await.map_err(|e| e.to_string())
    }

    /// Sends a binary message.
    pub(crate) async fn send_binary(&self, data: &[u8]) -> Result<(), String> {
        self.dc
            .send(BytesMut::from(data))
            .await
            .map_err(|e| e.to_string())
    }

    /// Starts closing the channel.
    pub(crate) async fn close(&self) {
        if let Err(error) = self.dc.close().await {
            tracing::debug!(%error, "closing the data channel");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_data_mid() {
        let sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:data\r\n";
        assert_eq!(data_mid(sdp), Some("data"));
        assert_eq!(data_mid("v=0\r\na=mid:\r\n"), None);
    }

    #[test]
    fn binding_requests_keep_the_default_budget() {
        assert_eq!(binding_requests(Duration::from_millis(200)), 7);
        assert_eq!(binding_requests(Duration::from_millis(50)), 28);
        assert_eq!(binding_requests(Duration::from_secs(1)), 7);
        assert_eq!(binding_requests(Duration::ZERO), 1400);
    }

    #[tokio::test]
    async fn accepts_stun_and_turn_servers_with_credentials() {
        use crate::config::IceServer;
        let options = Options {
            ice_servers: vec![
                IceServer::stun("stun:127.0.0.1:3478"),
                IceServer::turn("turn:127.0.0.1:3478?transport=udp", "user", "secret"),
            ],
            ..Options::loopback()
        };
        let (mut rtc, _events) = Rtc::new(&options, options.ice_servers.clone())
            .await
            .expect("valid ICE servers");
        rtc.close().await;

        let missing = Options {
            ice_servers: vec![IceServer {
                urls: vec!["turn:127.0.0.1:3478".into()],
                ..IceServer::default()
            }],
            ..Options::loopback()
        };
        let error = Rtc::new(&missing, missing.ice_servers.clone())
            .await
            .expect_err("TURN needs credentials");
        assert!(matches!(error, Error::WebRtc { .. }), "{error:?}");
    }

    #[test]
    fn labels_are_40_hex_chars() {
        let a = random_label();
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_label());
    }
}
