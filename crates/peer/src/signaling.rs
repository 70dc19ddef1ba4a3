//! WebSocket IO with the signaling server: server addresses, connecting with errors that
//! say what happened, and encoding/decoding envelopes. No protocol decisions here.

use std::time::Duration;

use bootstrap_protocol::paths::{JOIN_PATH, is_url_safe_secret, root_path};
use bootstrap_protocol::{Envelope, Signal};
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::Error;

/// A WebSocket to the server.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long closing a `/join` socket may take before it is simply dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A validated server address: `ws://host[:port]` or `wss://host[:port]`, no trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    base: String,
}

impl Server {
    /// Checks `address` (`ws://` or `wss://`, a host, and nothing after an optional `/`).
    pub(crate) fn parse(address: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidAddress {
            address: address.to_owned(),
            reason,
        };
        let rest = address
            .strip_prefix("ws://")
            .or_else(|| address.strip_prefix("wss://"))
            .ok_or_else(|| invalid("it must start with ws:// or wss://"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(invalid("it has no host"));
        }
        if authority.contains(['/', '?', '#', ' ']) {
            return Err(invalid(
                "it must be only a scheme and a host[:port] (the paths are fixed)",
            ));
        }
        Ok(Self {
            base: address.strip_suffix('/').unwrap_or(address).to_owned(),
        })
    }

    /// The address as given, without a trailing `/`.
    pub(crate) fn as_str(&self) -> &str {
        &self.base
    }

    /// `…/join`.
    pub(crate) fn join_url(&self) -> String {
        format!("{}{JOIN_PATH}", self.base)
    }

    /// `…/<secret>/webrtc-bootstrap-root`.
    pub(crate) fn root_url(&self, secret: &str) -> Result<String, Error> {
        if !is_url_safe_secret(secret) {
            return Err(Error::InvalidSecret);
        }
        Ok(format!("{}{}", self.base, root_path(secret)))
    }

    /// The root URL with the secret hidden, for errors and logs.
    pub(crate) fn root_url_redacted(&self) -> String {
        format!("{}{}", self.base, root_path("<secret>"))
    }
}

/// Why a WebSocket could not be opened, before it is given a meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectError {
    /// Nothing answered: connection refused, DNS, TLS, or no handshake in time.
    Unreachable(String),
    /// The server answered with an HTTP status instead of upgrading.
    Status(u16),
    /// The TCP connection was accepted, then dropped during the handshake (what the JS
    /// server does to unknown paths, such as a wrong root secret).
    Dropped(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(reason) => write!(f, "unreachable: {reason}"),
            Self::Status(status) => write!(f, "refused with HTTP {status}"),
            Self::Dropped(reason) => write!(f, "dropped during the handshake: {reason}"),
        }
    }
}

impl ConnectError {
    /// The meaning on the `/join` path.
    pub(crate) fn for_join(self, url: &str) -> Error {
        match self {
            Self::Unreachable(reason) => Error::Unreachable {
                url: url.to_owned(),
                reason,
            },
            Self::Status(status) => Error::JoinRefused {
                url: url.to_owned(),
                reason: format!("HTTP {status}"),
            },
            Self::Dropped(reason) => Error::JoinRefused {
                url: url.to_owned(),
                reason,
            },
        }
    }

    /// The meaning on the root path (`url` is redacted).
    pub(crate) fn for_root(self, url: &str) -> Error {
        match self {
            Self::Unreachable(reason) => Error::Unreachable {
                url: url.to_owned(),
                reason,
            },
            Self::Status(status) => Error::RootRejected {
                reason: format!("HTTP {status}"),
            },
            Self::Dropped(reason) => Error::RootRejected {
                reason: format!("connection dropped during the WebSocket handshake: {reason}"),
            },
        }
    }
}

/// Opens a WebSocket to `url`, giving up after `timeout`.
pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<Socket, ConnectError> {
    match tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url)).await {
        Err(_) => Err(ConnectError::Unreachable(format!(
            "no WebSocket handshake within {timeout:?}"
        ))),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(error)) => Err(classify(error)),
    }
}

fn classify(error: tungstenite::Error) -> ConnectError {
    use std::io::ErrorKind;
    use tungstenite::Error as E;
    match error {
        E::Http(response) => ConnectError::Status(response.status().as_u16()),
        E::Io(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
            ) =>
        {
            ConnectError::Dropped(e.to_string())
        }
        E::Protocol(tungstenite::error::ProtocolError::HandshakeIncomplete) => {
            ConnectError::Dropped("the server closed the connection".to_owned())
        }
        other => ConnectError::Unreachable(other.to_string()),
    }
}

/// Sends one envelope as a text frame.
pub(crate) async fn send(socket: &mut Socket, envelope: &Envelope<Signal>) -> Result<(), String> {
    let text = serde_json::to_string(envelope).map_err(|e| e.to_string())?;
    socket
        .send(Message::text(text))
        .await
        .map_err(|e| e.to_string())
}

/// The text of a data frame (JSON may come as text, or as binary from JS `Buffer`s).
pub(crate) fn frame_text(message: &Message) -> Option<&str> {
    match message {
        Message::Text(text) => Some(text.as_str()),
        Message::Binary(data) => std::str::from_utf8(data).ok(),
        _ => None,
    }
}

/// A relayed envelope, or `None` for anything else (logged by the caller).
pub(crate) fn decode(text: &str) -> Option<Envelope<Signal>> {
    serde_json::from_str(text).ok()
}

/// Closes a `/join` socket in the background: sends a Close frame and waits briefly
/// for the server's, so the server frees the prospect at once. The task ends within
/// [`CLOSE_WAIT`].
pub(crate) fn close_in_background(mut socket: Socket) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            use futures_util::StreamExt;
            if socket.close(None).await.is_ok() {
                while let Some(Ok(_)) = socket.next().await {}
            }
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let s = Server::parse("ws://127.0.0.1:8080").expect("valid");
        assert_eq!(s.join_url(), "ws://127.0.0.1:8080/join");
        assert_eq!(
            s.root_url("s3cret").expect("url"),
            "ws://127.0.0.1:8080/s3cret/webrtc-bootstrap-root"
        );
        assert_eq!(
            s.root_url_redacted(),
            "ws://127.0.0.1:8080/<secret>/webrtc-bootstrap-root"
        );
        let s = Server::parse("wss://example.org/").expect("valid");
        assert_eq!(s.join_url(), "wss://example.org/join");
        assert_eq!(s.as_str(), "wss://example.org");
        for bad in [
            "http://x",
            "x:80",
            "ws://",
            "ws:///",
            "ws://x/join",
            "ws://x?y",
        ] {
            assert!(
                matches!(Server::parse(bad), Err(Error::InvalidAddress { .. })),
                "{bad}"
            );
        }
        assert_eq!(s.root_url("a/b"), Err(Error::InvalidSecret));
    }

    #[test]
    fn connect_errors_get_their_meaning() {
        assert!(matches!(
            ConnectError::Status(404).for_root("u"),
            Error::RootRejected { reason } if reason == "HTTP 404"
        ));
        assert!(matches!(
            ConnectError::Dropped("x".into()).for_root("u"),
            Error::RootRejected { .. }
        ));
        assert!(matches!(
            ConnectError::Unreachable("refused".into()).for_join("u"),
            Error::Unreachable { .. }
        ));
        assert!(matches!(
            ConnectError::Status(503).for_join("u"),
            Error::JoinRefused { .. }
        ));
    }

    #[test]
    fn decodes_relayed_envelopes_only() {
        let ok =
            r#"{"origin":"a","destination":"b","signal":{"type":"answer","sdp":"x"},"rank":0}"#;
        assert!(decode(ok).is_some());
        assert!(decode("\"heartbeat\"").is_none());
        assert!(decode(r#"{"origin":"a","signal":{"renegotiate":true}}"#).is_none());
        assert_eq!(
            frame_text(&Message::Binary(ok.as_bytes().to_vec().into())),
            Some(ok)
        );
        assert_eq!(frame_text(&Message::Ping(Vec::new().into())), None);
    }
}
