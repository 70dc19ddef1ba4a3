//! The signal shapes SimplePeer 6 peers send and accept (`docs/protocol.md#signals`).
//!
//! SimplePeer 6 destroys its connection on any signal with neither `sdp` nor
//! `candidate`, so peers must only ever send the two shapes of [`Signal`].

use serde::{Deserialize, Serialize};

/// One WebRTC signal carried in an envelope's `signal` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Signal {
    /// `{"type":"offer"|"answer","sdp":"…"}`.
    Description(SessionDescription),
    /// `{"candidate":{"candidate":"…","sdpMLineIndex":0,"sdpMid":"0"}}`.
    ///
    /// simple-peer 9+ adds `"type":"candidate"`; that field is accepted and ignored.
    Candidate {
        /// The trickled ICE candidate.
        candidate: IceCandidate,
    },
}

/// An SDP offer or answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    /// Offer or answer.
    #[serde(rename = "type")]
    pub kind: SdpKind,
    /// The SDP text.
    pub sdp: String,
}

/// The kind of a [`SessionDescription`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpKind {
    /// Sent by the newcomer (initiator).
    Offer,
    /// Sent by the answerer.
    Answer,
}

/// A trickled ICE candidate, with exactly the three fields SimplePeer 6 sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    /// The `candidate:…` line.
    pub candidate: String,
    /// Index of the media section; `0` for the one data section.
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_m_line_index: Option<u16>,
    /// Media id of the section: `"0"` with current libwebrtc, `"data"` with 2019 browsers.
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_round_trip() {
        let cases = [
            r#"{"type":"offer","sdp":"v=0\r\n"}"#,
            r#"{"type":"answer","sdp":"v=0\r\n"}"#,
            r#"{"candidate":{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host","sdpMLineIndex":0,"sdpMid":"0"}}"#,
        ];
        for text in cases {
            let signal: Signal = serde_json::from_str(text).expect(text);
            assert_eq!(serde_json::to_string(&signal).expect("ser"), text);
        }
    }

    #[test]
    fn accepts_simple_peer_9_candidates_and_data_mid() {
        let text = r#"{"type":"candidate","candidate":{"candidate":"candidate:x","sdpMLineIndex":0,"sdpMid":"data"}}"#;
        let Signal::Candidate { candidate } = serde_json::from_str(text).expect("candidate") else {
            panic!("not a candidate");
        };
        assert_eq!(candidate.sdp_mid.as_deref(), Some("data"));
    }

    #[test]
    fn rejects_other_signals() {
        for text in [
            r#"{"renegotiate":true}"#,
            r#"{"type":"pranswer","sdp":""}"#,
            "5",
            "null",
        ] {
            assert!(serde_json::from_str::<Signal>(text).is_err(), "{text}");
        }
    }
}
