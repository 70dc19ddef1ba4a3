//! [`Request`]: one relayed signal together with the `/join` id of its sender.
//!
//! This is what the root receives for every newcomer signal, what it hands to an
//! answerer, and what a tree overlay forwards to another node (`docs/protocol.md`,
//! "Requests at the root").

use bootstrap_protocol::{Envelope, SdpKind, Signal};

/// A signal relayed by the server, stamped with its sender's id (`origin`).
///
/// The root gets one per root-bound newcomer signal: the offer first, then the
/// trickled candidates, all with the same origin. Hand them all to the same answerer.
/// A `Request` is plain data: serialize it with [`Request::to_json`] to pass it to
/// another process or over a data channel, and read it back with
/// [`Request::from_json`].
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Invariant: `origin` is `Some` and non-empty.
    envelope: Envelope<Signal>,
}

/// Why some JSON or envelope is not a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Not a JSON envelope carrying one of the three signal shapes.
    #[error("not a webrtc-bootstrap request: {0}")]
    Malformed(String),
    /// The envelope has no `origin`: it was not relayed by a server.
    #[error("the request has no origin (it was not relayed by a server)")]
    NoOrigin,
}

impl Request {
    /// A request from `origin` carrying `signal` (rank 0, no destination).
    ///
    /// # Errors
    /// [`RequestError::NoOrigin`] when `origin` is empty.
    pub fn new(origin: impl Into<String>, signal: Signal) -> Result<Self, RequestError> {
        Self::from_envelope(Envelope {
            origin: Some(origin.into()),
            destination: None,
            signal,
            rank: 0,
        })
    }

    /// Wraps a relayed envelope.
    ///
    /// # Errors
    /// [`RequestError::NoOrigin`] when the envelope's `origin` is missing or empty.
    pub fn from_envelope(envelope: Envelope<Signal>) -> Result<Self, RequestError> {
        match envelope.origin.as_deref() {
            Some(origin) if !origin.is_empty() => Ok(Self { envelope }),
            _ => Err(RequestError::NoOrigin),
        }
    }

    /// Parses a relayed envelope as the server sends it. Unknown fields (such as the
    /// tree overlay's `"type":"JOIN-REQUEST"`) are ignored.
    ///
    /// # Errors
    /// [`RequestError`] when the text is not an envelope with an origin and a valid signal.
    pub fn from_json(text: &str) -> Result<Self, RequestError> {
        let envelope: Envelope<Signal> =
            serde_json::from_str(text).map_err(|e| RequestError::Malformed(e.to_string()))?;
        Self::from_envelope(envelope)
    }

    /// The envelope as JSON, in the key order JS emits.
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and the signal enum cannot fail.
        serde_json::to_string(&self.envelope).unwrap_or_default()
    }

    /// The `/join` id of the sender (the newcomer, for root-bound requests).
    #[must_use]
    pub fn origin(&self) -> &str {
        self.envelope.origin.as_deref().unwrap_or_default()
    }

    /// The WebRTC signal.
    #[must_use]
    pub fn signal(&self) -> &Signal {
        &self.envelope.signal
    }

    /// Whether this carries an SDP offer (the first request of every newcomer).
    #[must_use]
    pub fn is_offer(&self) -> bool {
        matches!(&self.envelope.signal, Signal::Description(d) if d.kind == SdpKind::Offer)
    }

    /// The whole envelope, `rank` and `destination` included.
    #[must_use]
    pub fn envelope(&self) -> &Envelope<Signal> {
        &self.envelope
    }

    /// Unwraps the envelope.
    #[must_use]
    pub fn into_envelope(self) -> Envelope<Signal> {
        self.envelope
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootstrap_protocol::{IceCandidate, SessionDescription};

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_what_the_root_receives() {
        let text = format!(
            r#"{{"origin":"{ID}","destination":null,"signal":{{"type":"offer","sdp":"v=0\r\n"}},"rank":0}}"#
        );
        let request = Request::from_json(&text).expect("request");
        assert_eq!(request.origin(), ID);
        assert!(request.is_offer());
        assert_eq!(request.to_json(), text);
    }

    #[test]
    fn ignores_overlay_type_field() {
        let text = format!(
            r#"{{"origin":"{ID}","destination":null,"signal":{{"candidate":{{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMLineIndex":0,"sdpMid":"0"}}}},"rank":3,"type":"JOIN-REQUEST"}}"#
        );
        let request = Request::from_json(&text).expect("request");
        assert!(!request.is_offer());
        assert_eq!(request.envelope().rank, 3);
        assert!(matches!(request.signal(), Signal::Candidate { .. }));
    }

    #[test]
    fn needs_an_origin() {
        let offer = Signal::Description(SessionDescription {
            kind: SdpKind::Offer,
            sdp: String::new(),
        });
        assert_eq!(Request::new("", offer.clone()), Err(RequestError::NoOrigin));
        let text =
            r#"{"origin":null,"destination":null,"signal":{"type":"offer","sdp":""},"rank":0}"#;
        assert_eq!(Request::from_json(text), Err(RequestError::NoOrigin));
        assert!(Request::new(ID, offer).is_ok());
    }

    #[test]
    fn rejects_other_signals() {
        for text in [
            format!(r#"{{"origin":"{ID}","signal":{{"renegotiate":true}}}}"#),
            "5".to_owned(),
            "\"heartbeat\"".to_owned(),
        ] {
            assert!(
                matches!(Request::from_json(&text), Err(RequestError::Malformed(_))),
                "{text}"
            );
        }
        let candidate = Signal::Candidate {
            candidate: IceCandidate {
                candidate: "candidate:x".into(),
                sdp_m_line_index: Some(0),
                sdp_mid: Some("0".into()),
            },
        };
        assert!(!Request::new(ID, candidate).expect("request").is_offer());
    }
}
