//! The newcomer/answerer negotiation as a sans-IO state machine (`docs/protocol.md`,
//! sections "Envelope", "Messages at a join socket" and "Handshake").
//!
//! It owns the protocol rules, and nothing else: which `destination` each outgoing signal
//! carries (the newcomer switches from the root to the answerer's id on the first message
//! it receives), the per-socket `rank`, which incoming signals are applied or dropped,
//! queueing remote candidates until the remote description is set, and dropping late
//! signals once the data channel is open. The session (`session.rs`) feeds it what the
//! WebSocket and the WebRTC stack produce and executes the [`Action`]s it returns.

use bootstrap_protocol::{Envelope, IceCandidate, SdpKind, SessionDescription, Signal};

/// Which side of the handshake this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// Opened `/join`, creates the offer and the data channel.
    Newcomer,
    /// Answers the newcomer with this `/join` id.
    Answerer {
        /// The newcomer's id (`origin` of the request).
        newcomer: String,
    },
}

/// What the session must do with the WebRTC stack after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Set this remote description. For an offer, also create and set the answer, then
    /// call [`Negotiation::local_description`] with it. Afterwards call
    /// [`Negotiation::remote_description_applied`].
    ApplyDescription(SessionDescription),
    /// Add this remote candidate.
    AddCandidate(IceCandidate),
    /// Nothing yet: the candidate waits for the remote description.
    Queued,
    /// Nothing to do: the signal was dropped, for this reason (worth a debug log).
    Dropped(Dropped),
}

/// Why an incoming signal was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The data channel is already open: a late signal, dropped quietly.
    Late,
    /// Sent by another `/join` socket than the one this negotiation talks to.
    ForeignOrigin,
    /// An offer to a newcomer or an answer to an answerer.
    WrongKind,
    /// A second remote description.
    Duplicate,
    /// An empty candidate string (an end-of-candidates marker some stacks send).
    EmptyCandidate,
}

/// Where the remote description is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remote {
    /// Not received yet.
    Missing,
    /// Handed to the stack, not confirmed yet: candidates still queue.
    Applying,
    /// Set: candidates go straight to the stack.
    Set,
}

/// One negotiation, from the first signal until the data channel opens.
#[derive(Debug)]
pub(crate) struct Negotiation {
    role: Role,
    /// Whether candidates are trickled (otherwise they travel inside the description).
    trickle: bool,
    /// The remote `/join` id: known from the start by the answerer, learned by the
    /// newcomer from the first message it receives.
    remote_id: Option<String>,
    /// Next `rank` to send.
    rank: u64,
    remote: Remote,
    /// Remote candidates received before the remote description was set.
    pending: Vec<IceCandidate>,
    /// Whether the local description went out.
    description_sent: bool,
    /// The data channel is open: everything from now on is late.
    done: bool,
}

impl Negotiation {
    /// A newcomer's negotiation: signals go to the root until someone answers.
    pub(crate) fn newcomer(trickle: bool) -> Self {
        Self::new(Role::Newcomer, trickle)
    }

    /// An answerer's negotiation with the newcomer `newcomer` (the request's origin).
    pub(crate) fn answerer(newcomer: impl Into<String>, trickle: bool) -> Self {
        let newcomer = newcomer.into();
        let mut negotiation = Self::new(
            Role::Answerer {
                newcomer: newcomer.clone(),
            },
            trickle,
        );
        negotiation.remote_id = Some(newcomer);
        negotiation
    }

    fn new(role: Role, trickle: bool) -> Self {
        Self {
            role,
            trickle,
            remote_id: None,
            rank: 0,
            remote: Remote::Missing,
            pending: Vec::new(),
            description_sent: false,
            done: false,
        }
    }

    /// The role.
    pub(crate) fn role(&self) -> &Role {
        &self.role
    }

    /// The remote peer's `/join` id, once known.
    pub(crate) fn remote_id(&self) -> Option<&str> {
        self.remote_id.as_deref()
    }

    /// Whether the remote description arrived (the newcomer got an answer).
    pub(crate) fn has_remote_description(&self) -> bool {
        self.remote != Remote::Missing
    }

    /// Whether candidates are trickled.
    pub(crate) fn trickle(&self) -> bool {
        self.trickle
    }

    /// The local description is ready: the envelope to send, or `None` once the
    /// negotiation is over or when it was already sent.
    pub(crate) fn local_description(
        &mut self,
        description: SessionDescription,
    ) -> Option<Envelope<Signal>> {
        if self.done || self.description_sent {
            return None;
        }
        self.description_sent = true;
        Some(self.envelope(Signal::Description(description)))
    }

    /// A local candidate was gathered: the envelope to send, or `None` when candidates
    /// are not trickled, before the description went out (it would carry them), or once
    /// the negotiation is over (late candidates are dropped quietly).
    pub(crate) fn local_candidate(&mut self, candidate: IceCandidate) -> Option<Envelope<Signal>> {
        if self.done || !self.trickle || candidate.candidate.is_empty() {
            return None;
        }
        Some(self.envelope(Signal::Candidate { candidate }))
    }

    fn envelope(&mut self, signal: Signal) -> Envelope<Signal> {
        let rank = self.rank;
        self.rank += 1;
        Envelope {
            origin: None,
            destination: self.remote_id.clone(),
            signal,
            rank,
        }
    }

    /// A signal arrived from `origin` (a relayed message on the `/join` socket, or a
    /// root-routed request handed to the answerer).
    pub(crate) fn receive(&mut self, origin: Option<&str>, signal: Signal) -> Action {
        if self.done {
            return Action::Dropped(Dropped::Late);
        }
        match (&self.role, &self.remote_id, origin) {
            // The first message a newcomer receives names its answerer (JS:
            // `req.origin = req.origin || message.origin`); everything after goes there.
            (Role::Newcomer, None, Some(origin)) => self.remote_id = Some(origin.to_owned()),
            (_, Some(expected), Some(origin)) if expected != origin => {
                return Action::Dropped(Dropped::ForeignOrigin);
            }
            _ => {}
        }
        match signal {
            Signal::Description(description) => {
                let expected = match self.role {
                    Role::Newcomer => SdpKind::Answer,
                    Role::Answerer { .. } => SdpKind::Offer,
                };
                if description.kind != expected {
                    Action::Dropped(Dropped::WrongKind)
                } else if self.remote != Remote::Missing {
                    Action::Dropped(Dropped::Duplicate)
                } else {
                    self.remote = Remote::Applying;
                    Action::ApplyDescription(description)
                }
            }
            Signal::Candidate { candidate } if candidate.candidate.is_empty() => {
                Action::Dropped(Dropped::EmptyCandidate)
            }
            Signal::Candidate { candidate } => {
                if self.remote == Remote::Set {
                    Action::AddCandidate(candidate)
                } else {
                    self.pending.push(candidate);
                    Action::Queued
                }
            }
        }
    }

    /// The stack accepted the remote description: the queued candidates to add now,
    /// in arrival order.
    pub(crate) fn remote_description_applied(&mut self) -> Vec<IceCandidate> {
        self.remote = Remote::Set;
        std::mem::take(&mut self.pending)
    }

    /// The data channel is open: later signals, either way, are dropped quietly.
    pub(crate) fn finish(&mut self) {
        self.done = true;
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWERER: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const NEWCOMER: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const OTHER: &str = "cccccccccccccccccccccccccccccccc";

    fn description(kind: SdpKind) -> SessionDescription {
        SessionDescription {
            kind,
            sdp: format!("{kind:?}"),
        }
    }

    fn candidate(n: u16) -> IceCandidate {
        IceCandidate {
            candidate: format!("candidate:{n} 1 udp 1 127.0.0.1 {n} typ host"),
            sdp_m_line_index: Some(0),
            sdp_mid: Some("0".into()),
        }
    }

    fn signal(c: IceCandidate) -> Signal {
        Signal::Candidate { candidate: c }
    }

    #[test]
    fn newcomer_switches_destination_on_first_message() {
        let mut n = Negotiation::newcomer(true);
        let offer = n
            .local_description(description(SdpKind::Offer))
            .expect("offer");
        assert_eq!((offer.destination.as_deref(), offer.rank), (None, 0));
        let c1 = n.local_candidate(candidate(1)).expect("candidate");
        assert_eq!((c1.destination.as_deref(), c1.rank), (None, 1));
        assert_eq!(c1.origin, None);

        // The answerer's first message (here a candidate that overtook nothing) names it.
        let action = n.receive(Some(ANSWERER), signal(candidate(9)));
        assert_eq!(action, Action::Queued);
        assert_eq!(n.remote_id(), Some(ANSWERER));

        let c2 = n.local_candidate(candidate(2)).expect("candidate");
        assert_eq!((c2.destination.as_deref(), c2.rank), (Some(ANSWERER), 2));
    }

    #[test]
    fn candidates_queue_until_remote_description_is_set() {
        let mut n = Negotiation::newcomer(true);
        n.local_description(description(SdpKind::Offer));
        assert_eq!(
            n.receive(Some(ANSWERER), signal(candidate(1))),
            Action::Queued
        );
        assert_eq!(
            n.receive(
                Some(ANSWERER),
                Signal::Description(description(SdpKind::Answer))
            ),
            Action::ApplyDescription(description(SdpKind::Answer))
        );
        assert!(n.has_remote_description());
        // Still applying: keep queueing.
        assert_eq!(
            n.receive(Some(ANSWERER), signal(candidate(2))),
            Action::Queued
        );
        assert_eq!(
            n.remote_description_applied(),
            vec![candidate(1), candidate(2)]
        );
        assert_eq!(
            n.receive(Some(ANSWERER), signal(candidate(3))),
            Action::AddCandidate(candidate(3))
        );
        assert!(n.remote_description_applied().is_empty());
    }

    #[test]
    fn answerer_always_targets_the_newcomer() {
        let mut a = Negotiation::answerer(NEWCOMER, true);
        assert_eq!(a.remote_id(), Some(NEWCOMER));
        assert_eq!(
            a.receive(
                Some(NEWCOMER),
                Signal::Description(description(SdpKind::Offer))
            ),
            Action::ApplyDescription(description(SdpKind::Offer))
        );
        a.remote_description_applied();
        let answer = a
            .local_description(description(SdpKind::Answer))
            .expect("answer");
        assert_eq!(
            (answer.destination.as_deref(), answer.rank),
            (Some(NEWCOMER), 0)
        );
        let c = a.local_candidate(candidate(1)).expect("candidate");
        assert_eq!((c.destination.as_deref(), c.rank), (Some(NEWCOMER), 1));
        assert_eq!(
            a.receive(Some(OTHER), signal(candidate(5))),
            Action::Dropped(Dropped::ForeignOrigin)
        );
        assert_eq!(
            a.receive(Some(NEWCOMER), signal(candidate(5))),
            Action::AddCandidate(candidate(5))
        );
    }

    #[test]
    fn answerer_handles_candidates_before_the_offer() {
        let mut a = Negotiation::answerer(NEWCOMER, true);
        assert_eq!(
            a.receive(Some(NEWCOMER), signal(candidate(1))),
            Action::Queued
        );
        assert!(matches!(
            a.receive(
                Some(NEWCOMER),
                Signal::Description(description(SdpKind::Offer))
            ),
            Action::ApplyDescription(_)
        ));
        assert_eq!(a.remote_description_applied(), vec![candidate(1)]);
    }

    #[test]
    fn newcomer_ignores_other_answerers_and_wrong_kinds() {
        let mut n = Negotiation::newcomer(true);
        assert_eq!(
            n.receive(
                Some(ANSWERER),
                Signal::Description(description(SdpKind::Offer))
            ),
            Action::Dropped(Dropped::WrongKind)
        );
        assert_eq!(
            n.receive(
                Some(OTHER),
                Signal::Description(description(SdpKind::Answer))
            ),
            Action::Dropped(Dropped::ForeignOrigin)
        );
        assert!(matches!(
            n.receive(
                Some(ANSWERER),
                Signal::Description(description(SdpKind::Answer))
            ),
            Action::ApplyDescription(_)
        ));
        assert_eq!(
            n.receive(
                Some(ANSWERER),
                Signal::Description(description(SdpKind::Answer))
            ),
            Action::Dropped(Dropped::Duplicate)
        );
        let mut a = Negotiation::answerer(NEWCOMER, true);
        assert_eq!(
            a.receive(
                Some(NEWCOMER),
                Signal::Description(description(SdpKind::Answer))
            ),
            Action::Dropped(Dropped::WrongKind)
        );
    }

    #[test]
    fn late_signals_are_dropped_quietly_both_ways() {
        let mut n = Negotiation::newcomer(true);
        n.local_description(description(SdpKind::Offer));
        n.receive(Some(ANSWERER), signal(candidate(1)));
        n.finish();
        assert_eq!(n.local_candidate(candidate(2)), None);
        assert_eq!(
            n.receive(Some(ANSWERER), signal(candidate(3))),
            Action::Dropped(Dropped::Late)
        );
        assert!(n.remote_description_applied().is_empty());
    }

    #[test]
    fn without_trickle_only_the_description_goes_out() {
        let mut n = Negotiation::newcomer(false);
        assert!(!n.trickle());
        assert_eq!(n.local_candidate(candidate(1)), None);
        let offer = n
            .local_description(description(SdpKind::Offer))
            .expect("offer");
        assert_eq!(offer.rank, 0);
        assert_eq!(n.local_description(description(SdpKind::Offer)), None);
        assert_eq!(n.local_candidate(candidate(2)), None);
    }

    #[test]
    fn empty_candidates_are_neither_sent_nor_applied() {
        let mut n = Negotiation::newcomer(true);
        let mut empty = candidate(1);
        empty.candidate.clear();
        assert_eq!(n.local_candidate(empty.clone()), None);
        assert_eq!(
            n.receive(Some(ANSWERER), signal(empty)),
            Action::Dropped(Dropped::EmptyCandidate)
        );
    }

    #[test]
    fn wire_shapes_are_the_three_js_accepts() {
        let mut n = Negotiation::newcomer(true);
        let offer = n
            .local_description(description(SdpKind::Offer))
            .expect("offer");
        let c = n.local_candidate(candidate(1)).expect("candidate");
        assert_eq!(
            serde_json::to_string(&offer).expect("json"),
            r#"{"origin":null,"destination":null,"signal":{"type":"offer","sdp":"Offer"},"rank":0}"#
        );
        assert_eq!(
            serde_json::to_string(&c).expect("json"),
            r#"{"origin":null,"destination":null,"signal":{"candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 1 typ host","sdpMLineIndex":0,"sdpMid":"0"}},"rank":1}"#
        );
    }
}
