//! The one public error enum of the library: every way joining, rooting, answering or
//! talking over a data channel can fail, said in words a user can act on.

use std::time::Duration;

/// What went wrong. Every public fallible call returns this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server address is not a `ws://` or `wss://` URL with a host.
    #[error("invalid server address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The root secret (or root token) cannot go into a URL path unchanged (only
    /// `A-Z a-z 0-9 - . _ ~`, and not `.` or `..`).
    #[error("the root secret or root token must be non-empty and URL-safe (A-Z a-z 0-9 - . _ ~)")]
    InvalidSecret,
    /// The overlay name ([`crate::Options::overlay`]) is not 1 to 64 of
    /// `A-Z a-z 0-9 - . _ ~`, or is `.` or `..`.
    #[error(
        "invalid overlay name {name:?}: it must be 1 to 64 of A-Z a-z 0-9 - . _ ~ (not . or ..)"
    )]
    InvalidOverlay {
        /// The name as given.
        name: String,
    },
    /// The join token ([`crate::Options::token`]) cannot go into a URL unchanged: it must
    /// be non-empty and only `A-Z a-z 0-9 - . _ ~`, as a JWT is. The token itself is not
    /// repeated here.
    #[error("the token must be non-empty and URL-safe (A-Z a-z 0-9 - . _ ~), as a JWT is")]
    InvalidToken,
    /// The signaling server could not be reached: connection refused, DNS failure, TLS
    /// failure, or no WebSocket handshake within the timeout.
    #[error("signaling server unreachable at {url}: {reason}")]
    Unreachable {
        /// The WebSocket URL tried (without the root secret).
        url: String,
        /// What the network said.
        reason: String,
    },
    /// The server refused the root socket. The Rust server answers HTTP 404 to a wrong
    /// secret; the JS server drops the connection during the handshake.
    #[error("the server rejected the root (wrong secret?): {reason}")]
    RootRejected {
        /// The HTTP status or handshake failure the server gave.
        reason: String,
    },
    /// The server refused a `/join` socket (for example HTTP 503 when it is full).
    #[error("the server refused the /join socket at {url}: {reason}")]
    JoinRefused {
        /// The `/join` URL.
        url: String,
        /// The HTTP status or handshake failure.
        reason: String,
    },
    /// The server refused the credentials with HTTP 401: on `/join`, the join token is
    /// missing, invalid, expired, not yet valid or for another overlay; on the root
    /// socket, the secret is wrong and the root token (if it is one) is invalid. Only
    /// servers with token auth answer 401; retrying with the same credentials fails
    /// the same way.
    #[error(
        "the server refused the credentials for {url} (HTTP 401): the token is missing, invalid, \
         expired or for another overlay, or the root secret is wrong"
    )]
    Unauthorized {
        /// The URL tried, with the token or secret hidden.
        url: String,
    },
    /// The server refused the socket with HTTP 429 because this address failed to
    /// authenticate too often recently.
    #[error(
        "the server refuses {url} for now after repeated failed attempts (HTTP 429){}",
        retry_after.map(|d| format!("; retry in {d:?}")).unwrap_or_default()
    )]
    Throttled {
        /// The URL tried, with the token or secret hidden.
        url: String,
        /// How long the server asked to wait (its `Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// A standby root ([`crate::Client::standby_root`]) connected, but the server did not
    /// confirm it as standby (`"standby"`) or as the root (`"promoted"`) before anything
    /// else: a server without standby roots (the JS server) took it for the active root
    /// instead. The socket was closed again.
    #[error("the server at {url} does not support standby roots: {reason}")]
    StandbyUnsupported {
        /// The root URL, with the secret hidden.
        url: String,
        /// What the server sent instead, or that it sent nothing in time.
        reason: String,
    },
    /// [`crate::Options::ice_from_server`] is on but the server's `/ice-servers` gave
    /// no ICE servers: unreachable, a refusal (404 when the server has no TURN
    /// configured), or an answer that is not the expected JSON. A refused token is
    /// [`Error::Unauthorized`] and a rate limit [`Error::Throttled`] instead.
    #[error("no ICE servers from {url}: {reason}")]
    IceServers {
        /// The `/ice-servers` URL, with the token hidden.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// No answer arrived within the timeout. The server drops root-bound signals
    /// silently when no root is connected, so this usually means no root is connected
    /// (or the root ignored the request).
    #[error(
        "no answer within {0:?}: no root may be connected to the server, or the request was ignored"
    )]
    NoAnswer(Duration),
    /// ICE and DTLS connected but the data channel did not open within the timeout.
    #[error("the data channel did not open within {0:?} although the peers connected")]
    ConnectTimeout(Duration),
    /// The server closed the `/join` socket before the remote description arrived, so
    /// the negotiation cannot finish.
    #[error("the signaling server closed the /join socket before the negotiation finished")]
    SignalingClosed,
    /// ICE found no working candidate pair (it failed, or had not connected when the
    /// timeout ran out although the description exchange was done).
    #[error("ICE failed: no working candidate pair between the peers")]
    IceFailed,
    /// ICE connected but the DTLS handshake failed or did not finish in time.
    #[error("the DTLS handshake failed after ICE connected")]
    DtlsFailed,
    /// The remote peer closed the connection or its data channel.
    #[error("the connection was closed by the remote peer")]
    ClosedByRemote,
    /// The connection was closed locally (or failed) and can no longer send.
    #[error("the connection is closed")]
    Closed,
    /// A message is larger than the data channel can carry in one message.
    #[error("a {size}-byte message is larger than the largest allowed, {max} bytes")]
    MessageTooLarge {
        /// Size of the rejected message in bytes.
        size: usize,
        /// The largest message this connection can send, in bytes.
        max: usize,
    },
    /// A signal handed to an answerer comes from another newcomer.
    #[error("the request comes from {got}, but this answerer answers {expected}")]
    WrongOrigin {
        /// The origin this answerer answers.
        expected: String,
        /// The origin of the rejected request.
        got: String,
    },
    /// The WebRTC stack reported an error.
    #[error("WebRTC error while {during}: {message}")]
    WebRtc {
        /// What the library was doing.
        during: &'static str,
        /// The stack's message.
        message: String,
    },
}

impl Error {
    /// Wraps a WebRTC stack error, keeping its text (no `webrtc` type leaks out).
    pub(crate) fn webrtc(during: &'static str, error: impl std::fmt::Display) -> Self {
        Self::WebRtc {
            during,
            message: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_answer_mentions_the_root() {
        let text = Error::NoAnswer(Duration::from_secs(3)).to_string();
        assert!(text.contains("no root may be connected"), "{text}");
        assert!(text.contains("3s"), "{text}");
    }

    #[test]
    fn too_large_says_both_sizes() {
        let text = Error::MessageTooLarge {
            size: 70_000,
            max: 65_536,
        }
        .to_string();
        assert!(text.contains("70000") && text.contains("65536"), "{text}");
    }

    #[test]
    fn throttled_says_when_to_retry() {
        let url = "ws://h/join?token=<token>".to_owned();
        let text = Error::Throttled {
            url: url.clone(),
            retry_after: Some(Duration::from_secs(7)),
        }
        .to_string();
        assert!(
            text.contains("429") && text.contains("retry in 7s"),
            "{text}"
        );
        let text = Error::Throttled {
            url,
            retry_after: None,
        }
        .to_string();
        assert!(!text.contains("retry in"), "{text}");
    }
}
