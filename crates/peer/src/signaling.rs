//! WebSocket IO with the signaling server: connecting with errors that say what
//! happened (what a refusal means on `/join` and on the root path), and encoding and
//! decoding envelopes. No protocol decisions here; the URLs come from `address`.

use std::sync::Arc;
use std::time::Duration;

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

/// Why a WebSocket could not be opened, before it is given a meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectError {
    /// Nothing answered: connection refused, DNS, TLS, or no handshake in time.
    Unreachable(String),
    /// The server answered with an HTTP status instead of upgrading.
    Status {
        /// The status code.
        code: u16,
        /// The `Retry-After` the server sent, in seconds form.
        retry_after: Option<Duration>,
        /// The first line of the body (the Rust server says why there), bounded.
        why: String,
    },
    /// The TCP connection was accepted, then dropped during the handshake (what the JS
    /// server does to unknown paths, such as a wrong root secret).
    Dropped(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(reason) => write!(f, "unreachable: {reason}"),
            Self::Status { .. } => write!(f, "refused with {}", self.status_text()),
            Self::Dropped(reason) => write!(f, "dropped during the handshake: {reason}"),
        }
    }
}

impl ConnectError {
    /// A refusal with `code` and nothing else, as a test or a bare server gives it.
    #[cfg(test)]
    pub(crate) fn status(code: u16) -> Self {
        Self::Status {
            code,
            retry_after: None,
            why: String::new(),
        }
    }

    /// An HTTP refusal: its code, its `Retry-After` (in seconds), and the first line of
    /// its body.
    pub(crate) fn from_status(
        code: u16,
        headers: &tungstenite::http::HeaderMap,
        body: Option<&[u8]>,
    ) -> Self {
        let retry_after = headers
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Only printable text, one line, bounded: the body is the server's to choose.
        let why = body
            .and_then(|body| std::str::from_utf8(body).ok())
            .and_then(|body| body.lines().next())
            .map(|line| {
                line.trim()
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_WHY)
                    .collect()
            })
            .unwrap_or_default();
        Self::Status {
            code,
            retry_after,
            why,
        }
    }

    /// `HTTP 404 (no such overlay)`, or `HTTP 404` when the body said nothing.
    fn status_text(&self) -> String {
        match self {
            Self::Status { code, why, .. } if why.is_empty() => format!("HTTP {code}"),
            Self::Status { code, why, .. } => format!("HTTP {code} ({why})"),
            other => other.to_string(),
        }
    }

    /// 401 and 429, which mean the same on every path; `url` is redacted.
    fn auth_refusal(&self, url: &str) -> Option<Error> {
        match self {
            Self::Status { code: 401, .. } => Some(Error::Unauthorized {
                url: url.to_owned(),
            }),
            Self::Status {
                code: 429,
                retry_after,
                ..
            } => Some(Error::Throttled {
                url: url.to_owned(),
                retry_after: *retry_after,
            }),
            _ => None,
        }
    }

    /// The meaning on the `/join` path (`url` is redacted).
    pub(crate) fn for_join(self, url: &str) -> Error {
        if let Some(error) = self.auth_refusal(url) {
            return error;
        }
        match self {
            Self::Unreachable(reason) => Error::Unreachable {
                url: url.to_owned(),
                reason,
            },
            Self::Status { .. } => Error::JoinRefused {
                url: url.to_owned(),
                reason: self.status_text(),
            },
            Self::Dropped(reason) => Error::JoinRefused {
                url: url.to_owned(),
                reason,
            },
        }
    }

    /// The meaning on the `/ice-servers` path (`url` is redacted).
    pub(crate) fn for_ice_servers(self, url: &str) -> Error {
        if let Some(error) = self.auth_refusal(url) {
            return error;
        }
        Error::IceServers {
            url: url.to_owned(),
            reason: self.status_text(),
        }
    }

    /// The meaning on the root path (`url` is redacted).
    pub(crate) fn for_root(self, url: &str) -> Error {
        if let Some(error) = self.auth_refusal(url) {
            return error;
        }
        match self {
            Self::Unreachable(reason) => Error::Unreachable {
                url: url.to_owned(),
                reason,
            },
            Self::Status { .. } => Error::RootRejected {
                reason: self.status_text(),
            },
            Self::Dropped(reason) => Error::RootRejected {
                reason: format!("connection dropped during the WebSocket handshake: {reason}"),
            },
        }
    }
}

/// Longest part of a refusal's body kept for an error message.
const MAX_WHY: usize = 120;

/// Opens a WebSocket to `url`, giving up after `timeout`. A `wss://` server's
/// certificate may also be signed by one of `extra_roots` (PEM).
pub(crate) async fn connect(
    url: &str,
    timeout: Duration,
    extra_roots: &[u8],
) -> Result<Socket, ConnectError> {
    let connector = if extra_roots.is_empty() || !url.starts_with("wss://") {
        None
    } else {
        Some(tls_connector(extra_roots).map_err(ConnectError::Unreachable)?)
    };
    let connecting = tokio_tungstenite::connect_async_tls_with_config(url, None, false, connector);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(ConnectError::Unreachable(format!(
            "no WebSocket handshake within {timeout:?}"
        ))),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(error)) => Err(classify(error)),
    }
}

/// A TLS connector that trusts the public web roots and `extra_roots` (PEM).
fn tls_connector(extra_roots: &[u8]) -> Result<tokio_tungstenite::Connector, String> {
    Ok(tokio_tungstenite::Connector::Rustls(tls_config(
        extra_roots,
        Vec::new(),
    )?))
}

/// A client TLS configuration (ring) that trusts the public web roots and
/// `extra_roots` (PEM, may be empty), offering `alpn`.
pub(crate) fn tls_config(
    extra_roots: &[u8],
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut added = 0;
    for certificate in CertificateDer::pem_slice_iter(extra_roots) {
        let certificate =
            certificate.map_err(|error| format!("bad PEM in tls_roots_pem: {error}"))?;
        roots
            .add(certificate)
            .map_err(|error| format!("bad certificate in tls_roots_pem: {error}"))?;
        added += 1;
    }
    if added == 0 && !extra_roots.is_empty() {
        return Err("tls_roots_pem holds no certificate".to_owned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS setup: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

fn classify(error: tungstenite::Error) -> ConnectError {
    use std::io::ErrorKind;
    use tungstenite::Error as E;
    match error {
        E::Http(response) => ConnectError::from_status(
            response.status().as_u16(),
            response.headers(),
            response.body().as_deref(),
        ),
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
    fn connect_errors_get_their_meaning() {
        assert!(matches!(
            ConnectError::status(404).for_root("u"),
            Error::RootRejected { reason } if reason == "HTTP 404"
        ));
        let not_found = ConnectError::Status {
            code: 404,
            retry_after: None,
            why: "no such overlay".to_owned(),
        };
        assert!(matches!(
            not_found.for_join("u"),
            Error::JoinRefused { reason, .. } if reason == "HTTP 404 (no such overlay)"
        ));
        for url in [
            "ws://h/join?token=<token>",
            "ws://h/<secret>/webrtc-bootstrap-root",
        ] {
            assert_eq!(
                ConnectError::status(401).for_join(url),
                Error::Unauthorized {
                    url: url.to_owned()
                }
            );
            assert_eq!(
                ConnectError::status(401).for_root(url),
                Error::Unauthorized {
                    url: url.to_owned()
                }
            );
            let throttled = ConnectError::Status {
                code: 429,
                retry_after: Some(Duration::from_secs(3)),
                why: String::new(),
            };
            assert_eq!(
                throttled.clone().for_join(url),
                Error::Throttled {
                    url: url.to_owned(),
                    retry_after: Some(Duration::from_secs(3))
                }
            );
            assert!(matches!(throttled.for_root(url), Error::Throttled { .. }));
        }
        assert!(matches!(
            ConnectError::Dropped("x".into()).for_root("u"),
            Error::RootRejected { .. }
        ));
        assert!(matches!(
            ConnectError::Unreachable("refused".into()).for_join("u"),
            Error::Unreachable { .. }
        ));
        assert!(matches!(
            ConnectError::status(503).for_join("u"),
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
