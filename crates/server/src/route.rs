//! Which socket a request path asks for, IO-free.
//!
//! The default overlay keeps the JS server's paths; a named overlay `NAME` lives under
//! `/o/NAME`, and a join token may ride in the path under `/t/TOKEN`. The JS 4.4.1
//! client builds its URLs as `host + '/join'` and `host + '/' + secret +
//! '/webrtc-bootstrap-root'`, so an unchanged client given the host `example.org/o/NAME`
//! or `example.org/o/NAME/t/TOKEN` reaches a named overlay, with a token.
//!
//! | path | socket |
//! |---|---|
//! | `/join`, `/t/TOKEN/join` | a newcomer or answerer of the default overlay |
//! | `/SECRET/webrtc-bootstrap-root` | the default overlay's root (`SECRET` may be a root token) |
//! | `/o/NAME/join`, `/o/NAME/t/TOKEN/join` | a newcomer or answerer of overlay `NAME` |
//! | `/o/NAME/SECRET/webrtc-bootstrap-root` | the root of overlay `NAME` |
//! | `[/o/NAME]/t/TOKEN/SECRET/webrtc-bootstrap-root` | the same root: a JS root given a host with a join token (for its answers) |
//! | `[/o/NAME][/t/TOKEN]/ice-servers` | not a socket: TURN credentials for the overlay's peers (HTTP GET) |
//!
//! Segments are compared as sent (still percent-encoded), as the JS server compares
//! its secret: overlay names and tokens only use characters that are never encoded.

use bootstrap_protocol::paths::{JOIN_PATH, ROOT_SUFFIX};

/// The name of the default overlay, the one at `/join`: the value of a token's `ovl`
/// claim for it, and its entry in `/healthz`. `/o/default/...` is the same overlay.
pub const DEFAULT_OVERLAY: &str = "default";

/// Longest overlay name.
pub const MAX_NAME_LEN: usize = 64;

/// The path, under an overlay's prefix, where its peers fetch TURN credentials.
pub const ICE_SERVERS_PATH: &str = "/ice-servers";

/// Longest token or secret taken from a path.
pub(crate) const MAX_CREDENTIAL_LEN: usize = 4096;

/// A socket route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// A `/join` socket of `overlay`, with the token its path carries, if any.
    Join {
        /// The overlay's name ([`DEFAULT_OVERLAY`] for `/join`).
        overlay: &'a str,
        /// A join token from a `/t/TOKEN` segment.
        token: Option<&'a str>,
    },
    /// `GET /ice-servers` of `overlay` (TURN credentials), with the join token its path
    /// carries, if any.
    IceServers {
        /// The overlay's name.
        overlay: &'a str,
        /// A join token from a `/t/TOKEN` segment.
        token: Option<&'a str>,
    },
    /// The root of `overlay`, with the secret or root token of its path.
    Root {
        /// The overlay's name.
        overlay: &'a str,
        /// The secret or a root token.
        credential: &'a str,
    },
}

/// Whether `name` is a valid overlay name: 1 to 64 of `A-Z a-z 0-9 . _ ~ -`, but not
/// `.` or `..` (which clients would resolve away).
#[must_use]
pub fn is_valid_overlay_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// Whether `segment` can be a token or a secret: URL-safe characters only, not too
/// long, and not a relative path segment.
fn is_credential(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= MAX_CREDENTIAL_LEN
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// The socket `path` (without its query) asks for; `None` for any other path (static
/// files, `/healthz`, or nothing).
pub(crate) fn parse(path: &str) -> Option<Route<'_>> {
    // `/o/SECRET/webrtc-bootstrap-root` is not named: its root's secret is `o`.
    let named = path
        .strip_prefix("/o/")
        .and_then(|named| named.find('/').map(|at| named.split_at(at)));
    let (overlay, rest) = match named {
        Some((name, rest)) => {
            if !is_valid_overlay_name(name) {
                return None;
            }
            (name, rest)
        }
        None => (DEFAULT_OVERLAY, path),
    };
    // `[/t/TOKEN]/join` and `[/t/TOKEN]/ice-servers`.
    let leaf = |leaf: &str| {
        if rest == leaf {
            return Some(None);
        }
        rest.strip_prefix("/t/")
            .and_then(|r| r.strip_suffix(leaf))
            .filter(|token| is_credential(token))
            .map(Some)
    };
    if let Some(token) = leaf(JOIN_PATH) {
        return Some(Route::Join { overlay, token });
    }
    if let Some(token) = leaf(ICE_SERVERS_PATH) {
        return Some(Route::IceServers { overlay, token });
    }
    // A JS root given the host `…/t/TOKEN` (so that its answers' `/join` sockets carry
    // the join token) puts the prefix before its root path too: the prefix is ignored.
    let rest = match rest.strip_prefix("/t/").and_then(|r| r.split_once('/')) {
        Some((token, root)) if is_credential(token) => &rest[rest.len() - root.len() - 1..],
        _ => rest,
    };
    let credential = rest.strip_prefix('/')?.strip_suffix(ROOT_SUFFIX)?;
    is_credential(credential).then_some(Route::Root {
        overlay,
        credential,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(overlay: &str, token: Option<&str>) -> Option<Route<'static>> {
        let overlay: &'static str = Box::leak(overlay.to_owned().into_boxed_str());
        let token = token.map(|t| &*Box::leak(t.to_owned().into_boxed_str()));
        Some(Route::Join { overlay, token })
    }

    #[test]
    fn the_js_paths_reach_the_default_overlay() {
        assert_eq!(parse("/join"), join(DEFAULT_OVERLAY, None));
        assert_eq!(
            parse("/s3cret/webrtc-bootstrap-root"),
            Some(Route::Root {
                overlay: DEFAULT_OVERLAY,
                credential: "s3cret"
            })
        );
        assert_eq!(
            parse("/t/a.b-c_d/join"),
            join(DEFAULT_OVERLAY, Some("a.b-c_d"))
        );
    }

    #[test]
    fn named_overlays_live_under_o() {
        assert_eq!(parse("/o/chat/join"), join("chat", None));
        assert_eq!(
            parse("/o/chat/t/eyJ.x.y/join"),
            join("chat", Some("eyJ.x.y"))
        );
        assert_eq!(
            parse("/o/chat/k3y/webrtc-bootstrap-root"),
            Some(Route::Root {
                overlay: "chat",
                credential: "k3y"
            })
        );
        // A JS root whose host carries a join token: the token is not the root's.
        assert_eq!(
            parse("/o/chat/t/eyJ.x.y/k3y/webrtc-bootstrap-root"),
            Some(Route::Root {
                overlay: "chat",
                credential: "k3y"
            })
        );
        assert_eq!(
            parse("/t/eyJ.x.y/k3y/webrtc-bootstrap-root"),
            Some(Route::Root {
                overlay: DEFAULT_OVERLAY,
                credential: "k3y"
            })
        );
        assert_eq!(
            parse("/t/webrtc-bootstrap-root"),
            Some(Route::Root {
                overlay: DEFAULT_OVERLAY,
                credential: "t"
            })
        );
        // A root whose secret is "o" or "t" is still the default overlay's root.
        assert_eq!(
            parse("/o/webrtc-bootstrap-root"),
            Some(Route::Root {
                overlay: DEFAULT_OVERLAY,
                credential: "o"
            })
        );
        assert!(parse(&format!("/o/{}/join", "n".repeat(64))).is_some());
    }

    #[test]
    fn every_overlay_and_token_prefix_has_its_ice_servers() {
        let ice = |overlay, token| Some(Route::IceServers { overlay, token });
        assert_eq!(parse("/ice-servers"), ice(DEFAULT_OVERLAY, None));
        assert_eq!(
            parse("/t/eyJ.x.y/ice-servers"),
            ice(DEFAULT_OVERLAY, Some("eyJ.x.y"))
        );
        assert_eq!(parse("/o/chat/ice-servers"), ice("chat", None));
        assert_eq!(
            parse("/o/chat/t/eyJ.x.y/ice-servers"),
            ice("chat", Some("eyJ.x.y"))
        );
        for path in [
            "/ice-servers/",
            "/o/chat/ice-servers/x",
            "/t//ice-servers",
            "/t/a/b/ice-servers",
            "/o/a b/ice-servers",
            "/x/ice-servers",
        ] {
            assert_eq!(parse(path), None, "{path:?}");
        }
    }

    #[test]
    fn hostile_paths_are_no_route() {
        let long_name = format!("/o/{}/join", "n".repeat(65));
        let long_token = format!("/t/{}/join", "a".repeat(MAX_CREDENTIAL_LEN + 1));
        for path in [
            "",
            "/",
            "/join/",
            "//join",
            "/o/join",
            "/o//join",
            "/o/a/b/join",
            "/o/a%2Fb/join",
            "/o/%ff%fe/join",
            "/o/caf\u{e9}/join",
            "/o/a/",
            "/o/a",
            "/o/../join",
            "/o/a/t//join",
            "/t/../join",
            "/t/a/b/join",
            "/t/a/b/c/webrtc-bootstrap-root",
            "/t/%ff/k/webrtc-bootstrap-root",
            "/t/%ff/join",
            "/t/a b/join",
            "/o/a/webrtc-bootstrap-root",
            "//webrtc-bootstrap-root",
            "/a/b/webrtc-bootstrap-root",
            "/../webrtc-bootstrap-root",
            "/healthz",
            "/index.html",
            &long_name,
            &long_token,
        ] {
            assert_eq!(parse(path), None, "{path:?}");
        }
    }

    #[test]
    fn overlay_names_follow_the_unreserved_characters() {
        for good in ["a", "chat", "A-Z.0_9~", &"x".repeat(64)] {
            assert!(is_valid_overlay_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "caf\u{e9}",
            "a%20",
            "a?b",
            "a#b",
            &"x".repeat(65),
        ] {
            assert!(!is_valid_overlay_name(bad), "{bad}");
        }
    }
}
