//! [`CandidateKind`] and [`Path`]: which ICE candidates a connection offered and which
//! pair it uses, to tell a direct connection from one relayed through TURN.

/// The type of an ICE candidate (RFC 8445, section 5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// An address of a local interface (`typ host`).
    Host,
    /// The address a STUN server saw (`typ srflx`).
    ServerReflexive,
    /// An address learned from a connectivity check (`typ prflx`).
    PeerReflexive,
    /// An address on a TURN server, which relays every packet (`typ relay`).
    Relay,
}

impl CandidateKind {
    /// The kind a candidate attribute names (`candidate:… typ relay raddr …`), if any.
    #[must_use]
    pub fn of_candidate(candidate: &str) -> Option<Self> {
        let mut words = candidate.split_ascii_whitespace();
        words.find(|word| *word == "typ")?;
        match words.next()? {
            "host" => Some(Self::Host),
            "srflx" => Some(Self::ServerReflexive),
            "prflx" => Some(Self::PeerReflexive),
            "relay" => Some(Self::Relay),
            _ => None,
        }
    }

    /// The kinds of the candidates an SDP description carries (`a=candidate:` lines).
    #[must_use]
    pub fn in_sdp(sdp: &str) -> Vec<Self> {
        sdp.lines()
            .filter_map(|line| line.trim().strip_prefix("a="))
            .filter(|attribute| attribute.starts_with("candidate:"))
            .filter_map(Self::of_candidate)
            .collect()
    }
}

/// The candidate pair a connection sends and receives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    /// This side's candidate: [`CandidateKind::Relay`] when this side's traffic goes
    /// through its TURN server.
    pub local: CandidateKind,
    /// The remote side's candidate.
    pub remote: CandidateKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_read_from_candidate_lines_and_descriptions() {
        let relay = "candidate:1 1 udp 16777215 127.0.0.1 49152 typ relay raddr 0.0.0.0 rport 0";
        assert_eq!(
            CandidateKind::of_candidate(relay),
            Some(CandidateKind::Relay)
        );
        assert_eq!(
            CandidateKind::of_candidate("candidate:2 1 udp 2130706431 10.0.0.1 9 typ host"),
            Some(CandidateKind::Host)
        );
        assert_eq!(
            CandidateKind::of_candidate("candidate:3 1 udp 1 x 9 typ"),
            None
        );
        assert_eq!(CandidateKind::of_candidate("typ bogus"), None);
        let sdp = format!(
            "v=0\r\na=candidate:{}\r\na=mid:0\r\na=candidate:5 1 udp 1 h 1 typ srflx raddr h rport 1\r\n",
            &relay["candidate:".len()..]
        );
        assert_eq!(
            CandidateKind::in_sdp(&sdp),
            [CandidateKind::Relay, CandidateKind::ServerReflexive]
        );
    }
}
