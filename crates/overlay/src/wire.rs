//! Messages on the data channels between tree nodes (PROTOCOL.md §10): JSON text,
//! `{"type":"DATA","data":…}` for the application and the bootstrap request plus
//! `"type":"JOIN-REQUEST"` for delegated joins.

use serde_json::Value;

/// The `type` of application messages.
pub const DATA: &str = "DATA";
/// The `type` of delegated join requests.
pub const JOIN_REQUEST: &str = "JOIN-REQUEST";

/// One message received on a tree data channel.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelMessage {
    /// Application data.
    Data(Value),
    /// A join request delegated by the parent: the bootstrap envelope as JSON text
    /// (its extra `type` field is ignored by the request parser).
    JoinRequest(String),
}

/// Why a data-channel message was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    Malformed(String),
    /// A JSON object whose `type` is neither `DATA` nor `JOIN-REQUEST`.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
}

/// Parses a data-channel message (text or binary frames both carry JSON text).
///
/// # Errors
/// [`WireError`] for anything that is not one of the two message kinds; the JS
/// overlay throws on these, a Rust node logs and ignores them.
pub fn parse(bytes: &[u8]) -> Result<ChannelMessage, WireError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(WireError::Malformed("not an object".to_owned()));
    };
    match object.get("type").and_then(Value::as_str) {
        Some(DATA) => Ok(ChannelMessage::Data(
            object.remove("data").unwrap_or(Value::Null),
        )),
        Some(JOIN_REQUEST) => {
            // Re-serialize without the overlay's `type`; the request parser reads the rest.
            object.remove("type");
            Ok(ChannelMessage::JoinRequest(
                Value::Object(object).to_string(),
            ))
        }
        Some(other) => Err(WireError::UnknownType(other.to_owned())),
        None => Err(WireError::UnknownType(String::new())),
    }
}

/// `{"type":"DATA","data":<data>}`.
#[must_use]
pub fn data(data: &Value) -> String {
    let mut text = String::from(r#"{"type":"DATA","data":"#);
    text.push_str(&data.to_string());
    text.push('}');
    text
}

/// A bootstrap request as JSON text plus `"type":"JOIN-REQUEST"`, as the JS overlay
/// forwards it to a child.
#[must_use]
pub fn join_request(request_json: &str) -> String {
    match request_json.trim_end().strip_suffix('}') {
        Some(body) if body.trim() != "{" => format!(r#"{body},"type":"JOIN-REQUEST"}}"#),
        _ => r#"{"type":"JOIN-REQUEST"}"#.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trip() {
        let value = serde_json::json!({"hello": [1, "two"]});
        let text = data(&value);
        assert!(text.starts_with(r#"{"type":"DATA","data":"#));
        assert_eq!(parse(text.as_bytes()), Ok(ChannelMessage::Data(value)));
    }

    #[test]
    fn join_request_matches_js_shape() {
        let request =
            r#"{"origin":"484c","destination":null,"signal":{"type":"offer","sdp":"x"},"rank":0}"#;
        let text = join_request(request);
        assert_eq!(
            text,
            r#"{"origin":"484c","destination":null,"signal":{"type":"offer","sdp":"x"},"rank":0,"type":"JOIN-REQUEST"}"#
        );
        let ChannelMessage::JoinRequest(inner) = parse(text.as_bytes()).expect("parses") else {
            panic!("not a join request");
        };
        let inner: Value = serde_json::from_str(&inner).expect("json");
        assert_eq!(inner["origin"], "484c");
        assert_eq!(inner["signal"]["type"], "offer");
        assert!(inner.get("type").is_none());
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        for bad in [
            &b"nope"[..],
            b"null",
            b"[1]",
            b"\xff",
            b"{\"type\":\"PING\"}",
            b"{}",
            b"{\"type\":5}",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            parse(br#"{"type":"PING"}"#),
            Err(WireError::UnknownType("PING".into()))
        );
    }
}
