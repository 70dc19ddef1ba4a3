//! [`Server`]: a validated signaling server address, and the URLs of this client's
//! sockets on it (`/join` with its overlay and join token, the root path with its
//! secret), plus their redacted forms for errors and logs. No IO.
//!
//! The URLs are built the way the JS client builds them, by appending to the address:
//! `address + "/join"` and `address + "/" + secret + "/webrtc-bootstrap-root"`. So an
//! address with a prefix path works as it does for JS clients (`ws://host/o/NAME`,
//! `ws://host/o/NAME/t/TOKEN`, or a reverse proxy's prefix), and
//! [`crate::Options::overlay`] and [`crate::Options::token`] say the same without
//! touching the address.

use bootstrap_protocol::paths::{JOIN_PATH, STANDBY_QUERY, is_url_safe_secret, root_path};

use crate::error::Error;

/// Where a server hands out TURN credentials, under the overlay's (and token's) prefix.
const ICE_SERVERS_PATH: &str = "/ice-servers";

/// The `http://` or `https://` URL on the same origin as `ws://` or `wss://` `url`.
fn http_url(url: &str) -> String {
    match url.strip_prefix("ws") {
        Some(rest) => format!("http{rest}"),
        None => url.to_owned(),
    }
}

/// Longest overlay name the server accepts.
const MAX_OVERLAY_LEN: usize = 64;

/// What error messages and `Debug` print in place of a token.
const TOKEN_PLACEHOLDER: &str = "<token>";

/// Where this client's join token travels.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carrier {
    /// In the address, as `/t/TOKEN` before `/join` (the JS clients' only way).
    Path,
    /// In the query, `/join?token=TOKEN` ([`crate::Options::token`]).
    Query,
}

/// A validated server address and where this client's sockets go on it.
///
/// The address is `ws://host[:port]` or `wss://host[:port]`, optionally followed by a
/// path prefix (a reverse proxy's), `/o/NAME` (an overlay) and `/t/TOKEN` (a join
/// token), the way JS clients are given `host/o/NAME/t/TOKEN` and append `/join`.
/// `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Server {
    /// The address as given, without a trailing `/`. It may carry a token: never log it.
    address: String,
    /// Scheme, authority, the path prefix and `/o/NAME` if an overlay is set: what every
    /// socket path is appended to. Holds no credential.
    base: String,
    /// The join token of every `/join` socket, and where it goes.
    token: Option<(String, Carrier)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| TOKEN_PLACEHOLDER))
            .finish()
    }
}

/// Whether `segment` can be a path segment of an address, and so a token or overlay
/// name: non-empty, URL-safe, not `.` or `..` (which URL parsers resolve away).
fn is_segment(segment: &str) -> bool {
    is_url_safe_secret(segment) && segment != "." && segment != ".."
}

/// Whether `name` is an overlay name the server accepts.
fn is_overlay_name(name: &str) -> bool {
    is_segment(name) && name.len() <= MAX_OVERLAY_LEN
}

/// `address` fit for an error message: no userinfo, query or fragment, and the segment
/// after any `t` segment (a token) hidden.
fn redact_address(address: &str) -> String {
    let (main, cut) = match address.find(['?', '#']) {
        Some(at) => (&address[..at], "?…"),
        None => (address, ""),
    };
    let (scheme, rest) = main.split_once("://").unwrap_or(("", main));
    let mut parts: Vec<&str> = rest.split('/').collect();
    if let Some(authority) = parts.first_mut()
        && let Some((_, host)) = authority.rsplit_once('@')
    {
        *authority = host;
    }
    for i in 1..parts.len() {
        if parts[i - 1] == "t" {
            parts[i] = TOKEN_PLACEHOLDER;
        }
    }
    let rest = parts.join("/");
    if scheme.is_empty() {
        format!("{rest}{cut}")
    } else {
        format!("{scheme}://{rest}{cut}")
    }
}

impl Server {
    /// Checks `address` with the overlay and join token of the options.
    ///
    /// The address's path may end in `/o/NAME` (then `overlay` must be `None` or the
    /// same name) and then `/t/TOKEN` (then `token` must be `None`). A path that is a
    /// socket's (`…/join`, `…/webrtc-bootstrap-root`), a query or a fragment is refused:
    /// the socket paths are appended to the address.
    pub(crate) fn new(
        address: &str,
        overlay: Option<&str>,
        token: Option<&str>,
    ) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidAddress {
            address: redact_address(address),
            reason,
        };
        let (scheme, rest) = if let Some(rest) = address.strip_prefix("ws://") {
            ("ws://", rest)
        } else if let Some(rest) = address.strip_prefix("wss://") {
            ("wss://", rest)
        } else {
            return Err(invalid("it must start with ws:// or wss://"));
        };
        if rest.contains(['?', '#']) || rest.contains(char::is_whitespace) {
            return Err(invalid(
                "it must have no query, fragment or spaces (give a token with Options::token \
                 or a /t/TOKEN path)",
            ));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            return Err(invalid("it has no host"));
        }
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut segments: Vec<&str> = match path.strip_prefix('/') {
            Some(path) => path.split('/').collect(),
            None => Vec::new(),
        };
        if !segments.iter().all(|s| is_segment(s)) {
            return Err(invalid(
                "each path segment must be non-empty, not . or .., and only A-Z a-z 0-9 - . _ ~",
            ));
        }
        let path_token = match segments.as_slice() {
            [.., "t", token] => {
                let token = *token;
                segments.truncate(segments.len() - 2);
                Some(token)
            }
            _ => None,
        };
        let path_overlay = match segments.as_slice() {
            [.., "o", name] => {
                let name = *name;
                segments.truncate(segments.len() - 2);
                Some(name)
            }
            _ => None,
        };
        if matches!(
            segments.last(),
            Some(&("join" | "webrtc-bootstrap-root" | "t" | "o"))
        ) {
            return Err(invalid(
                "give the server's address (with an optional /o/NAME/t/TOKEN prefix), not a \
                 socket URL: the paths /join and /SECRET/webrtc-bootstrap-root are appended",
            ));
        }
        if let Some(name) = overlay
            .into_iter()
            .chain(path_overlay)
            .find(|n| !is_overlay_name(n))
        {
            return Err(Error::InvalidOverlay {
                name: name.to_owned(),
            });
        }
        let overlay = match (overlay, path_overlay) {
            (Some(set), Some(named)) if set != named => {
                return Err(invalid(
                    "it names another overlay (/o/NAME) than Options::overlay",
                ));
            }
            (set, named) => set.or(named),
        };
        let token = match (token, path_token) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "it carries a token (/t/TOKEN) and Options::token is set too: give one",
                ));
            }
            (Some(token), None) if !is_segment(token) => return Err(Error::InvalidToken),
            (Some(token), None) => Some((token.to_owned(), Carrier::Query)),
            (None, path_token) => path_token.map(|token| (token.to_owned(), Carrier::Path)),
        };
        let mut base = format!("{scheme}{authority}");
        for segment in segments {
            base.push('/');
            base.push_str(segment);
        }
        if let Some(name) = overlay {
            base.push_str("/o/");
            base.push_str(name);
        }
        Ok(Self {
            address: address.strip_suffix('/').unwrap_or(address).to_owned(),
            base,
            token,
        })
    }

    /// The address as given, without a trailing `/` (it may carry a token).
    pub(crate) fn as_str(&self) -> &str {
        &self.address
    }

    /// `…/join`, with this client's overlay and token.
    pub(crate) fn join_url(&self) -> String {
        self.join_url_with(self.token.as_ref().map(|(token, _)| token.as_str()))
    }

    /// The `/join` URL with the token hidden, for errors and logs.
    pub(crate) fn join_url_redacted(&self) -> String {
        self.join_url_with(self.token.as_ref().map(|_| TOKEN_PLACEHOLDER))
    }

    fn join_url_with(&self, token: Option<&str>) -> String {
        self.url_with(JOIN_PATH, token)
    }

    /// `leaf` (`/join`, `/ice-servers`) under the base, with `token` where this
    /// client's token travels.
    fn url_with(&self, leaf: &str, token: Option<&str>) -> String {
        let base = &self.base;
        match (token, self.token.as_ref().map(|(_, carrier)| *carrier)) {
            (Some(token), Some(Carrier::Path)) => format!("{base}/t/{token}{leaf}"),
            (Some(token), Some(Carrier::Query)) => format!("{base}{leaf}?token={token}"),
            _ => format!("{base}{leaf}"),
        }
    }

    /// `http(s)://…[/t/TOKEN]/ice-servers` (or `…/ice-servers?token=TOKEN`): where
    /// this client fetches TURN credentials, on the server's origin, with its overlay
    /// and join token.
    pub(crate) fn ice_servers_url(&self) -> String {
        http_url(&self.url_with(
            ICE_SERVERS_PATH,
            self.token.as_ref().map(|(token, _)| token.as_str()),
        ))
    }

    /// The `/ice-servers` URL with the token hidden, for errors and logs.
    pub(crate) fn ice_servers_url_redacted(&self) -> String {
        http_url(&self.url_with(
            ICE_SERVERS_PATH,
            self.token.as_ref().map(|_| TOKEN_PLACEHOLDER),
        ))
    }

    /// `…/<credential>/webrtc-bootstrap-root`, in this client's overlay. The credential
    /// is the root secret or a root token; the join token has no place here.
    pub(crate) fn root_url(&self, credential: &str) -> Result<String, Error> {
        if !is_segment(credential) {
            return Err(Error::InvalidSecret);
        }
        Ok(format!("{}{}", self.base, root_path(credential)))
    }

    /// The URL a standby root opens: the root URL with the standby query.
    pub(crate) fn standby_root_url(&self, credential: &str) -> Result<String, Error> {
        Ok(format!("{}?{STANDBY_QUERY}", self.root_url(credential)?))
    }

    /// The root URL with the secret hidden, for errors and logs.
    pub(crate) fn root_url_redacted(&self) -> String {
        format!("{}{}", self.base, root_path("<secret>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(address: &str) -> Server {
        Server::new(address, None, None).expect("valid")
    }

    #[test]
    fn ice_servers_live_on_the_same_origin_with_the_same_overlay_and_token() {
        let s = server("ws://127.0.0.1:8080/o/chat/t/eyJ.a.b");
        assert_eq!(
            s.ice_servers_url(),
            "http://127.0.0.1:8080/o/chat/t/eyJ.a.b/ice-servers"
        );
        assert_eq!(
            s.ice_servers_url_redacted(),
            "http://127.0.0.1:8080/o/chat/t/<token>/ice-servers"
        );
        let s =
            Server::new("wss://example.org/prefix", Some("chat"), Some("eyJ.a.b")).expect("valid");
        assert_eq!(
            s.ice_servers_url(),
            "https://example.org/prefix/o/chat/ice-servers?token=eyJ.a.b"
        );
        assert_eq!(
            server("ws://[::1]:9").ice_servers_url(),
            "http://[::1]:9/ice-servers"
        );
    }

    #[test]
    fn plain_addresses_keep_the_js_paths() {
        let s = server("ws://127.0.0.1:8080");
        assert_eq!(s.join_url(), "ws://127.0.0.1:8080/join");
        assert_eq!(
            s.root_url("s3cret").expect("url"),
            "ws://127.0.0.1:8080/s3cret/webrtc-bootstrap-root"
        );
        assert_eq!(
            s.root_url_redacted(),
            "ws://127.0.0.1:8080/<secret>/webrtc-bootstrap-root"
        );
        let s = server("wss://example.org/");
        assert_eq!(s.join_url(), "wss://example.org/join");
        assert_eq!(s.as_str(), "wss://example.org");
        assert_eq!(s.root_url("a/b"), Err(Error::InvalidSecret));
        assert_eq!(s.root_url(".."), Err(Error::InvalidSecret));
        assert_eq!(s.root_url(""), Err(Error::InvalidSecret));
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in [
            "http://x",
            "x:80",
            "ws://",
            "ws:///",
            "ws:///o/a",
            "ws://x/join",
            "ws://x/o/a/join",
            "ws://x/o/a/t/tok/join",
            "ws://x/s3cret/webrtc-bootstrap-root",
            "ws://x/t",
            "ws://x/o/",
            "ws://x?y",
            "ws://x/o/a?token=t",
            "ws://x/#f",
            "ws://x/a b",
            "ws://x//join",
            "ws://x/a//b",
            "ws://x/../b",
            "ws://x/a%20b",
        ] {
            assert!(
                matches!(
                    Server::new(bad, None, None),
                    Err(Error::InvalidAddress { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_overlay_in_the_options_or_the_address() {
        let s = Server::new("ws://h:1", Some("chat"), None).expect("valid");
        assert_eq!(s.join_url(), "ws://h:1/o/chat/join");
        assert_eq!(
            s.root_url("k").expect("url"),
            "ws://h:1/o/chat/k/webrtc-bootstrap-root"
        );
        assert_eq!(
            s.root_url_redacted(),
            "ws://h:1/o/chat/<secret>/webrtc-bootstrap-root"
        );
        // As a JS client is given it, and the same name twice.
        for s in [
            server("ws://h:1/o/chat"),
            server("ws://h:1/o/chat/"),
            Server::new("ws://h:1/o/chat", Some("chat"), None).expect("same overlay"),
        ] {
            assert_eq!(s.join_url(), "ws://h:1/o/chat/join");
        }
        // A reverse proxy's prefix comes first; an overlay named `join` is an overlay.
        let s = Server::new("wss://h/signal", Some("a"), None).expect("valid");
        assert_eq!(s.join_url(), "wss://h/signal/o/a/join");
        assert_eq!(server("ws://h/o/join").join_url(), "ws://h/o/join/join");
        assert!(matches!(
            Server::new("ws://h/o/a", Some("b"), None),
            Err(Error::InvalidAddress { .. })
        ));
        let long = "n".repeat(65);
        for bad in ["", ".", "..", "a/b", "a b", "caf\u{e9}", &long] {
            assert_eq!(
                Server::new("ws://h", Some(bad), None),
                Err(Error::InvalidOverlay {
                    name: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
        assert!(Server::new("ws://h", Some(&"n".repeat(64)), None).is_ok());
        assert!(matches!(
            Server::new(&format!("ws://h/o/{long}"), None, None),
            Err(Error::InvalidOverlay { .. })
        ));
    }

    #[test]
    fn a_token_in_the_query_or_the_path() {
        let s = Server::new("ws://h:1", Some("a"), Some("eyJ.x-y_z")).expect("valid");
        assert_eq!(s.join_url(), "ws://h:1/o/a/join?token=eyJ.x-y_z");
        assert_eq!(s.join_url_redacted(), "ws://h:1/o/a/join?token=<token>");
        // The join token has no place on the root path.
        assert_eq!(
            s.root_url("k").expect("url"),
            "ws://h:1/o/a/k/webrtc-bootstrap-root"
        );
        let s = server("ws://h:1/o/a/t/eyJ.x");
        assert_eq!(s.join_url(), "ws://h:1/o/a/t/eyJ.x/join");
        assert_eq!(s.join_url_redacted(), "ws://h:1/o/a/t/<token>/join");
        assert_eq!(
            s.root_url("k").expect("url"),
            "ws://h:1/o/a/k/webrtc-bootstrap-root"
        );
        assert_eq!(s.as_str(), "ws://h:1/o/a/t/eyJ.x");
        // A path token with the overlay in the options goes after `/o/NAME`.
        let s = Server::new("ws://h/t/tok", Some("a"), None).expect("valid");
        assert_eq!(s.join_url(), "ws://h/o/a/t/tok/join");
        assert!(matches!(
            Server::new("ws://h/t/tok", None, Some("tok")),
            Err(Error::InvalidAddress { .. })
        ));
        for bad in ["", "a b", "a/b", "a?b", "a&b=c", "a%20", "..", "caf\u{e9}"] {
            assert_eq!(
                Server::new("ws://h", None, Some(bad)),
                Err(Error::InvalidToken),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn errors_and_debug_never_show_a_token() {
        let secret = "eyJTOKEN";
        let s = Server::new("ws://h/o/a/t/eyJTOKEN", None, None).expect("valid");
        assert!(!format!("{s:?}").contains(secret), "{s:?}");
        let s = Server::new("ws://h", None, Some(secret)).expect("valid");
        assert!(!format!("{s:?}").contains(secret), "{s:?}");
        for bad in [
            "ws://h/t/eyJTOKEN/join",
            "ws://h/o/a/t/eyJTOKEN?x",
            "ws://user:eyJTOKEN@h/join",
            "ws://h/join?token=eyJTOKEN",
            "ws://h/t/eyJTOKEN/a%20",
        ] {
            let error = Server::new(bad, None, None).expect_err(bad);
            let text = format!("{error} {error:?}");
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(
            redact_address("ws://u:p@h/o/a/t/x/join?token=y"),
            "ws://h/o/a/t/<token>/join?…"
        );
    }
}
