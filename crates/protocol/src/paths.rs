//! Route paths and fixed frames of the protocol (`docs/protocol.md`: routes, heartbeat).

/// Path every newcomer and answerer opens.
pub const JOIN_PATH: &str = "/join";

/// Suffix of the root path: the root connects on `/<secret>/webrtc-bootstrap-root`.
pub const ROOT_SUFFIX: &str = "/webrtc-bootstrap-root";

/// The heartbeat text frame: the JSON string `"heartbeat"`, quotes included.
pub const HEARTBEAT: &str = "\"heartbeat\"";

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
    fn heartbeat_is_a_json_string() {
        let parsed: String = serde_json::from_str(HEARTBEAT).expect("valid JSON");
        assert_eq!(parsed, "heartbeat");
        assert_eq!(HEARTBEAT.len(), 11);
    }
}
