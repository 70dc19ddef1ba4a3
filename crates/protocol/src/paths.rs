//! Route paths and fixed frames of the protocol (`docs/protocol.md`: routes, heartbeat).

/// Path every newcomer and answerer opens.
pub const JOIN_PATH: &str = "/join";

/// Suffix of the root path: the root connects on `/<secret>/webrtc-bootstrap-root`.
pub const ROOT_SUFFIX: &str = "/webrtc-bootstrap-root";

/// The heartbeat text frame: the JSON string `"heartbeat"`, quotes included.
pub const HEARTBEAT: &str = "\"heartbeat\"";

/// The query a standby root adds to its root path: the server keeps it registered but
/// sends it no requests until the active root is gone. The JS server ignores queries, so
/// a standby root given a JS server would replace its root: a standby waits for
/// [`STANDBY`] or [`PROMOTED`] before anything else.
pub const STANDBY_QUERY: &str = "standby=1";

/// Sent once to a standby root when it is registered and another root is active: the
/// JSON string `"standby"`, quotes included. A JS root never connects as standby, so it
/// never receives this.
pub const STANDBY: &str = "\"standby\"";

/// Sent once to a standby root when it becomes the active root (at once if no root was
/// active when it connected): the JSON string `"promoted"`, quotes included. Join requests
/// follow it.
pub const PROMOTED: &str = "\"promoted\"";

/// Whether `query` (the part of a URL after `?`) asks for a standby root: it holds
/// `standby=1` or `standby=true` among its `&`-separated pairs.
#[must_use]
pub fn is_standby_query(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| matches!(pair, "standby=1" | "standby=true"))
}

/// The root path for `secret`.
///
/// The secret goes into the path as is (the JS client does not URL-encode it), so it must
/// be URL-safe; see [`is_url_safe_secret`].
#[must_use]
pub fn root_path(secret: &str) -> String {
    format!("/{secret}{ROOT_SUFFIX}")
}

/// Whether `secret` can go into a URL path unchanged: non-empty and only the RFC 3986
/// unreserved characters `A-Z a-z 0-9 - . _ ~`.
#[must_use]
pub fn is_url_safe_secret(secret: &str) -> bool {
    !secret.is_empty()
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_path_matches_js_client() {
        assert_eq!(root_path("s3cret"), "/s3cret/webrtc-bootstrap-root");
    }

    #[test]
    fn url_safe_secrets() {
        assert!(is_url_safe_secret("EMpGMQADK1oR5n8x-_.~"));
        for bad in ["", "a/b", "a b", "a?b", "a#b", "a%20", "é"] {
            assert!(!is_url_safe_secret(bad), "{bad:?}");
        }
    }

    #[test]
    fn standby_frames_are_json_strings_and_the_query_is_recognised() {
        for (frame, word) in [(STANDBY, "standby"), (PROMOTED, "promoted")] {
            let parsed: String = serde_json::from_str(frame).expect("valid JSON");
            assert_eq!(parsed, word);
        }
        assert!(is_standby_query(STANDBY_QUERY));
        assert!(is_standby_query("token=x&standby=true"));
        for not in ["", "standby", "standby=0", "xstandby=1", "standby=1x"] {
            assert!(!is_standby_query(not), "{not:?}");
        }
    }

    #[test]
    fn heartbeat_is_a_json_string() {
        let parsed: String = serde_json::from_str(HEARTBEAT).expect("valid JSON");
        assert_eq!(parsed, "heartbeat");
        assert_eq!(HEARTBEAT.len(), 11);
    }
}
