//! [`IceCache`]: ICE servers fetched from the signaling server's `GET …/ice-servers`
//! ([`crate::Options::ice_from_server`]): short-lived TURN credentials, kept until 80 %
//! of their lifetime has passed.
//!
//! The request is one HTTP/1.1 GET (hyper's client connection) over TCP, or TLS for a
//! `wss://` server (the web's roots and `Options::tls_roots_pem`, as its WebSocket); the answer is the JSON that
//! `RTCPeerConnection` takes as `iceServers`, plus `ttl` in seconds.

use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, HOST};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::task::AbortOnDropHandle;

use crate::address::Server;
use crate::config::IceServer;
use crate::error::Error;
use crate::signaling::{self, ConnectError};

/// Largest answer read, in bytes: a few servers with credentials are well under 1 KiB.
const MAX_ANSWER: usize = 64 * 1024;

/// Most servers, and URLs per server, taken from an answer.
const MAX_SERVERS: usize = 16;

/// Lifetime assumed when the answer gives no `ttl`.
const TTL_WHEN_UNSAID: Duration = Duration::from_secs(5 * 60);

/// How long a failed refresh waits before the next try, while the credentials it
/// meant to replace are still valid.
const RETRY_AFTER_FAILED_REFRESH: Duration = Duration::from_secs(10);

/// The ICE servers a client fetched last, shared by all its joins and answers.
#[derive(Debug, Default)]
pub(crate) struct IceCache {
    /// Held across a fetch, so concurrent joins wait for one fetch instead of each
    /// making their own.
    fetched: Mutex<Option<Fetched>>,
}

#[derive(Debug, Clone)]
struct Fetched {
    servers: Vec<IceServer>,
    /// When to fetch again.
    refresh_at: Instant,
    /// When the credentials stop working.
    expires_at: Instant,
}

impl IceCache {
    /// The server's ICE servers: the ones fetched before while fresh, else fetched now
    /// (giving up after `timeout`). A failed refresh keeps credentials that have not
    /// expired yet.
    pub(crate) async fn get(
        &self,
        server: &Server,
        timeout: Duration,
        extra_roots: &[u8],
    ) -> Result<Vec<IceServer>, Error> {
        let mut slot = self.fetched.lock().await;
        let now = Instant::now();
        if let Some(fetched) = slot.as_ref().filter(|f| now < f.refresh_at) {
            return Ok(fetched.servers.clone());
        }
        match fetch(&server.ice_servers_url(), timeout, extra_roots).await {
            Ok(answer) => {
                let ttl = answer.ttl.map_or(TTL_WHEN_UNSAID, Duration::from_secs);
                let fetched = Fetched {
                    servers: answer.servers(),
                    refresh_at: now + ttl / 5 * 4,
                    expires_at: now + ttl,
                };
                let servers = fetched.servers.clone();
                *slot = Some(fetched);
                Ok(servers)
            }
            Err(error) => {
                let url = server.ice_servers_url_redacted();
                if let Some(fetched) = slot.as_mut().filter(|f| now < f.expires_at) {
                    tracing::warn!(%url, %error, "refreshing the ICE servers failed; keeping the current ones");
                    fetched.refresh_at = now + RETRY_AFTER_FAILED_REFRESH;
                    return Ok(fetched.servers.clone());
                }
                Err(error.into_error(&url))
            }
        }
    }
}

/// Why a fetch gave nothing.
#[derive(Debug)]
enum FetchError {
    /// No answer, or a refusal.
    Connect(ConnectError),
    /// An answer that is not the expected JSON.
    Invalid(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(error) => error.fmt(f),
            Self::Invalid(reason) => write!(f, "invalid answer: {reason}"),
        }
    }
}

impl FetchError {
    fn into_error(self, url: &str) -> Error {
        match self {
            Self::Connect(error) => error.for_ice_servers(url),
            Self::Invalid(reason) => Error::IceServers {
                url: url.to_owned(),
                reason: format!("invalid answer: {reason}"),
            },
        }
    }
}

fn unreachable(what: &str, error: impl std::fmt::Display) -> FetchError {
    FetchError::Connect(ConnectError::Unreachable(format!("{what}: {error}")))
}

/// What `/ice-servers` answers.
#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(rename = "iceServers")]
    ice_servers: Vec<WireServer>,
    /// Seconds the credentials stay valid.
    #[serde(default)]
    ttl: Option<u64>,
}

/// One `RTCIceServer`: `urls` is a string or a list of strings.
#[derive(Debug, Deserialize)]
struct WireServer {
    urls: Urls,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    credential: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Urls {
    One(String),
    Many(Vec<String>),
}

impl Answer {
    fn servers(self) -> Vec<IceServer> {
        self.ice_servers
            .into_iter()
            .take(MAX_SERVERS)
            .map(|server| IceServer {
                urls: match server.urls {
                    Urls::One(url) => vec![url],
                    Urls::Many(urls) => urls.into_iter().take(MAX_SERVERS).collect(),
                },
                username: server.username,
                credential: server.credential,
            })
            .collect()
    }
}

/// `GET url` (`http://` or `https://`) within `timeout`, parsed.
async fn fetch(url: &str, timeout: Duration, extra_roots: &[u8]) -> Result<Answer, FetchError> {
    let body = tokio::time::timeout(timeout, get(url, extra_roots))
        .await
        .map_err(|_| unreachable("no answer", format!("within {timeout:?}")))??;
    serde_json::from_slice(&body).map_err(|e| FetchError::Invalid(e.to_string()))
}

/// The body of a successful `GET url`; an `https://` server's certificate may also be
/// signed by one of `extra_roots` (PEM).
async fn get(url: &str, extra_roots: &[u8]) -> Result<Bytes, FetchError> {
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(unreachable("not an http(s) URL", url)),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let (host, port) = host_port(authority, if tls { 443 } else { 80 })
        .ok_or_else(|| unreachable("invalid host", authority))?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| unreachable("connecting", e))?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return exchange(tcp, authority, path).await;
    }
    let name = ServerName::try_from(host.to_owned()).map_err(|e| unreachable("TLS name", e))?;
    let config = signaling::tls_config(extra_roots, vec![b"http/1.1".to_vec()])
        .map_err(|e| unreachable("TLS", e))?;
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| unreachable("TLS", e))?;
    exchange(stream, authority, path).await
}

/// The host (without brackets) and port of `authority` (`[user@]host[:port]`).
fn host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, rest) = rest.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if rest.is_empty() => default_port,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, default_port)),
    }
    .filter(|(host, _)| !host.is_empty())
}

/// One request and its answer over `io`.
async fn exchange<S>(io: S, authority: &str, path: &str) -> Result<Bytes, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| unreachable("HTTP", e))?;
    let connection = AbortOnDropHandle::new(tokio::spawn(connection));
    let request = hyper::Request::get(path)
        .header(HOST, authority)
        .header(ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable("building the request", e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable("HTTP", e))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| unreachable("reading the answer", e))?
        .to_bytes();
    drop(connection);
    if !parts.status.is_success() {
        return Err(FetchError::Connect(ConnectError::from_status(
            parts.status.as_u16(),
            &parts.headers,
            Some(&body),
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(host_port("example.org", 443), Some(("example.org", 443)));
        assert_eq!(host_port("127.0.0.1:8080", 80), Some(("127.0.0.1", 8080)));
        assert_eq!(host_port("[::1]:9", 80), Some(("::1", 9)));
        assert_eq!(host_port("[::1]", 80), Some(("::1", 80)));
        assert_eq!(host_port("u:p@h:1", 80), Some(("h", 1)));
        for bad in ["", ":1", "h:x", "[::1", "[::1]x", "h:99999"] {
            assert_eq!(host_port(bad, 80), None, "{bad:?}");
        }
    }

    #[test]
    fn answers_take_a_url_or_a_list_and_are_bounded() {
        let answer: Answer = serde_json::from_str(
            r#"{"iceServers":[{"urls":"stun:a:3478"},
                {"urls":["turn:a:3478?transport=udp"],"username":"1:u","credential":"c"}],
                "ttl":600,"extra":true}"#,
        )
        .expect("valid");
        assert_eq!(answer.ttl, Some(600));
        let servers = answer.servers();
        assert_eq!(servers[0], IceServer::stun("stun:a:3478"));
        assert_eq!(
            servers[1],
            IceServer::turn("turn:a:3478?transport=udp", "1:u", "c")
        );
        let many = format!(
            r#"{{"iceServers":[{}]}}"#,
            vec![r#"{"urls":"stun:a"}"#; 40].join(",")
        );
        let answer: Answer = serde_json::from_str(&many).expect("valid");
        assert_eq!(answer.ttl, None);
        assert_eq!(answer.servers().len(), MAX_SERVERS);
        for bad in ["[]", r#"{"iceServers":[{"urls":3}]}"#, r#"{"ttl":1}"#] {
            assert!(serde_json::from_str::<Answer>(bad).is_err(), "{bad}");
        }
    }
}
