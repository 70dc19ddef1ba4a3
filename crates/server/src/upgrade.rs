//! The WebSocket opening handshake (RFC 6455 section 4.2) on an axum request.
//!
//! Strict where the RFCs say "MUST": one `Host` of valid syntax (RFC 9110 section 7.2,
//! RFC 6455 section 4.2.1), exactly one `Sec-WebSocket-Key`, the canonical base64 of 16
//! bytes, and exactly one `Sec-WebSocket-Version`.
//!
//! The server speaks WebSocket itself after the upgrade (see `connection`): a general
//! WebSocket library allocates a read buffer for every socket when it opens, which is
//! most of what an idle `/join` socket would cost.

use std::net::Ipv6Addr;

use axum::extract::Request;
use axum::http::header::{
    CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bootstrap_ws::{accept_key, is_valid_key};
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
    /// No `Host`, more than one, or one that is not `host[:port]` (RFC 9110 section 7.2).
    #[error("missing, repeated or invalid Host")]
    Host,
    /// No `Connection: upgrade` and `Upgrade: websocket`.
    #[error("not a WebSocket upgrade request")]
    NotUpgrade,
    /// No `Sec-WebSocket-Version`, or one other than 13.
    #[error("Sec-WebSocket-Version must be 13")]
    Version,
    /// More than one `Sec-WebSocket-Version`.
    #[error("repeated Sec-WebSocket-Version")]
    RepeatedVersion,
    /// No `Sec-WebSocket-Key`, more than one, or one that is not the base64 of 16 bytes.
    #[error("missing, repeated or invalid Sec-WebSocket-Key")]
    Key,
    /// The connection cannot be taken over (not HTTP/1.1).
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Method => StatusCode::METHOD_NOT_ALLOWED,
            Self::Host | Self::NotUpgrade | Self::RepeatedVersion | Self::Key => {
                StatusCode::BAD_REQUEST
            }
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
    // RFC 9110 section 7.2 answers a missing (in HTTP/1.1), repeated or invalid `Host`
    // with 400; RFC 6455 section 4.1 requires one in every handshake.
    if !only(headers, &HOST).is_some_and(|host| is_valid_host(host.as_bytes())) {
        return Err(Refused::Host);
    }
    if !has_token(headers, &CONNECTION, "upgrade") || !has_token(headers, &UPGRADE, "websocket") {
        return Err(Refused::NotUpgrade);
    }
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(version), None) if version.as_bytes() == b"13" => {}
        (Some(_), Some(_)) => return Err(Refused::RepeatedVersion),
        _ => return Err(Refused::Version),
    }
    let key = only(headers, &SEC_WEBSOCKET_KEY)
        .filter(|key| is_valid_key(key.as_bytes()))
        .ok_or(Refused::Key)?;
    HeaderValue::from_str(&accept_key(key.as_bytes())).map_err(|_| Refused::Key)
}

/// The value of header `name` if it appears exactly once.
fn only<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

/// Whether `value` is a `Host` header: `uri-host [":" port]` (RFC 9110 section 7.2 and
/// RFC 3986 section 3.2.2), with a host that is not empty (RFC 9110 section 4.2.1).
fn is_valid_host(value: &[u8]) -> bool {
    let (host_ok, rest) = if let Some(literal) = value.strip_prefix(b"[") {
        // An IPv6 literal. (IPvFuture, the grammar's other literal, names no address
        // in use, and no client sends it.)
        let Some(end) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let address = std::str::from_utf8(&literal[..end]).ok();
        let ok = address.is_some_and(|a| a.parse::<Ipv6Addr>().is_ok());
        (ok, &literal[end + 1..])
    } else {
        let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        let host = &value[..end];
        (!host.is_empty() && is_reg_name(host), &value[end..])
    };
    let port_ok = match rest {
        [] => true,
        [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    host_ok && port_ok
}

/// Whether `name` is a `reg-name` (RFC 3986 section 3.2.2; IPv4 addresses are names
/// too): unreserved characters, sub-delims and percent-encodings.
fn is_reg_name(name: &[u8]) -> bool {
    let mut rest = name;
    while let [first, tail @ ..] = rest {
        rest = match first {
            b'%' => match tail {
                [hi, lo, after @ ..] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => after,
                _ => return false,
            },
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(b) => tail,
            _ => return false,
        };
    }
    true
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
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
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

    const GOOD: [(&str, &str); 5] = [
        ("host", "example.com:5000"),
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

    /// The good headers with `name` set to each of `values` (none: left out; two:
    /// repeated).
    fn replaced(name: &str, values: &[&'static str]) -> Request {
        let mut headers: Vec<_> = GOOD.iter().copied().filter(|(n, _)| *n != name).collect();
        let name = GOOD
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, _)| *n)
            .expect("a header of GOOD");
        headers.extend(values.iter().map(|value| (name, *value)));
        request(&headers)
    }

    fn refusal(request: &Request) -> Option<Refused> {
        check(request).err()
    }

    #[test]
    fn the_key_must_be_one_canonical_base64_nonce_of_16_bytes() {
        for key in [
            "!!!!!!!!!!!!!!!!!!!!!!==", // not base64
            "AAAAAAAAAAAAAAAAAAAAAAA=", // 17 bytes
            "AAAAAAAAAAAAAAAAAAAAAAAA", // 18 bytes
            "dGhlIHNhbXBsZSBub25jZR==", // bits set beyond the 16th byte
        ] {
            assert_eq!(
                refusal(&replaced("sec-websocket-key", &[key])),
                Some(Refused::Key),
                "{key}"
            );
        }
        let two = ["dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAA=="];
        assert_eq!(
            refusal(&replaced("sec-websocket-key", &two)),
            Some(Refused::Key)
        );
        assert_eq!(
            refusal(&replaced(
                "sec-websocket-key",
                &["AAAAAAAAAAAAAAAAAAAAAA=="]
            )),
            None
        );
        assert_eq!(
            Refused::Key.into_response().status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn a_repeated_version_is_a_bad_request() {
        for versions in [["13", "13"], ["13", "8"], ["8", "13"]] {
            assert_eq!(
                refusal(&replaced("sec-websocket-version", &versions)),
                Some(Refused::RepeatedVersion),
                "{versions:?}"
            );
        }
        let response = Refused::RepeatedVersion.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(!response.headers().contains_key(SEC_WEBSOCKET_VERSION));
    }

    #[test]
    fn exactly_one_valid_host_is_required() {
        assert_eq!(refusal(&replaced("host", &[])), Some(Refused::Host));
        assert_eq!(
            refusal(&replaced("host", &["example.com", "example.com"])),
            Some(Refused::Host)
        );
        for host in [
            "",
            "a b",
            "a/b",
            "user@example.com",
            "example.com:80x",
            "example.com:80:90",
            ":80",
            "%zz",
            "%4",
            "[::1",
            "[zz]",
            "[::1]x",
            "[::1]:x",
            "::1",
            "é.example",
        ] {
            assert_eq!(
                refusal(&replaced("host", &[host])),
                Some(Refused::Host),
                "{host:?}"
            );
        }
        for host in [
            "example.com",
            "EXAMPLE.com:443",
            "127.0.0.1:5000",
            "[::1]",
            "[::1]:5000",
            "[2001:db8::7]:80",
            "example.com:",
            "a%2Db.example",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(refusal(&replaced("host", &[host])), None, "{host:?}");
        }
        assert_eq!(
            Refused::Host.into_response().status(),
            StatusCode::BAD_REQUEST
        );
    }
}
