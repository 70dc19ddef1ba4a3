//! The WebSocket opening handshake (RFC 6455 section 4.2) on an axum request.
//!
//! The server speaks WebSocket itself after the upgrade (see `connection`): a general
//! WebSocket library allocates a read buffer for every socket when it opens, which is
//! most of what an idle `/join` socket would cost.

use axum::extract::Request;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bootstrap_ws::accept_key;
use hyper::upgrade::OnUpgrade;

/// An accepted upgrade request: the `101` answer to send, and the connection once sent.
#[derive(Debug)]
pub(crate) struct Upgrade {
    accept: HeaderValue,
    /// Resolves to the connection after the `101` response has been written.
    pub(crate) on_upgrade: OnUpgrade,
}

/// Why a request cannot be upgraded to a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// Not a `GET`.
    #[error("WebSocket upgrades must use GET")]
    Method,
    /// No `Connection: upgrade` and `Upgrade: websocket`.
    #[error("not a WebSocket upgrade request")]
    NotUpgrade,
    /// A `Sec-WebSocket-Version` other than 13.
    #[error("Sec-WebSocket-Version must be 13")]
    Version,
    /// No valid `Sec-WebSocket-Key`.
    #[error("missing or invalid Sec-WebSocket-Key")]
    Key,
    /// The connection cannot be taken over (not HTTP/1.1).
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Method => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotUpgrade | Self::Key => StatusCode::BAD_REQUEST,
            Self::Version | Self::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
        };
        let mut response = (status, format!("{self}\n")).into_response();
        if self == Self::Version {
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

impl Upgrade {
    /// Checks `request` and takes its connection's upgrade handle.
    ///
    /// # Errors
    /// [`Refused`] if it is not a valid WebSocket upgrade request.
    pub(crate) fn accept(request: &mut Request) -> Result<Self, Refused> {
        let accept = check(request)?;
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(Refused::NotUpgradable)?;
        Ok(Self { accept, on_upgrade })
    }

    /// The `101 Switching Protocols` answer, with the subprotocol chosen, if any; send
    /// it, then await [`Self::on_upgrade`].
    pub(crate) fn response(&self, protocol: Option<&'static str>) -> Response {
        let mut response = switching_protocols(self.accept.clone());
        if let Some(protocol) = protocol {
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        response
    }
}

/// Checks the headers of an upgrade request; returns its `Sec-WebSocket-Accept`.
fn check(request: &Request) -> Result<HeaderValue, Refused> {
    if request.method() != Method::GET {
        return Err(Refused::Method);
    }
    let headers = request.headers();
    if !has_token(headers, &CONNECTION, "upgrade") || !has_token(headers, &UPGRADE, "websocket") {
        return Err(Refused::NotUpgrade);
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(Refused::Version);
    }
    // A base64 nonce of 16 bytes is 24 characters; anything else is not a key.
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .filter(|key| key.len() == 24)
        .ok_or(Refused::Key)?;
    HeaderValue::from_str(&accept_key(key.as_bytes())).map_err(|_| Refused::Key)
}

fn switching_protocols(accept: HeaderValue) -> Response {
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: &axum::http::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::get("/join");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).expect("request")
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_valid_request_gets_101_with_the_accept_key() {
        let accept = check(&request(&GOOD)).expect("valid");
        let response = switching_protocols(accept);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers()[SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn invalid_requests_are_refused_with_a_reason() {
        let without = |skip: &str| -> Vec<(&str, &str)> {
            GOOD.iter().copied().filter(|(n, _)| *n != skip).collect()
        };
        let with = |name: &'static str, value: &'static str| -> Vec<(&'static str, &'static str)> {
            let mut headers: Vec<_> = GOOD.iter().copied().filter(|(n, _)| *n != name).collect();
            headers.push((name, value));
            headers
        };
        let cases = [
            (without("connection"), Refused::NotUpgrade),
            (with("upgrade", "h2c"), Refused::NotUpgrade),
            (without("sec-websocket-version"), Refused::Version),
            (with("sec-websocket-version", "8"), Refused::Version),
            (without("sec-websocket-key"), Refused::Key),
            (with("sec-websocket-key", "short"), Refused::Key),
        ];
        for (headers, expected) in cases {
            let got = check(&request(&headers)).map(|_| ());
            assert_eq!(got, Err(expected), "{headers:?}");
        }
        let mut post = request(&GOOD);
        *post.method_mut() = Method::POST;
        assert_eq!(check(&post).map(|_| ()), Err(Refused::Method));
        // hyper attaches the upgrade handle to the HTTP/1.1 requests it serves.
        assert_eq!(
            Upgrade::accept(&mut request(&GOOD)).map(|_| ()),
            Err(Refused::NotUpgradable)
        );
        let response = Refused::Version.into_response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[SEC_WEBSOCKET_VERSION], "13");
    }
}
