//! Messages on the data channels between tree nodes (`docs/protocol.md`, the
//! webrtc-tree-overlay section): JSON text, `{"type":"DATA","data":…}` for the application
//! and the bootstrap request plus `"type":"JOIN-REQUEST"` for delegated joins; and the
//! `{"broadcast": …}` / `{"to-root": …}` wrappers that Rust nodes put inside `data`.
//!
//! A frame is parsed once, into a [`ChannelMessage`]. A join request keeps the frame it
//! arrived in, and forwarding it re-sends that frame unchanged, as a JS node does
//! (`JSON.stringify` of what `JSON.parse` read).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use webrtc_bootstrap_peer::{Request, RequestError, Signal};

use crate::event::Delivery;

/// The `type` of application messages.
const DATA: &str = "DATA";
/// The `type` of delegated join requests.
const JOIN_REQUEST: &str = "JOIN-REQUEST";
/// A heartbeat, only between nodes that both support them (`crate::liveness`).
pub(crate) const HEARTBEAT: &str = r#"{"type":"HEARTBEAT"}"#;
/// The `type` of heartbeats.
const HEARTBEAT_TYPE: &str = "HEARTBEAT";

/// Key of the `data` object that marks a broadcast: `{"broadcast": payload}`.
pub const BROADCAST_KEY: &str = "broadcast";
/// Key of the `data` object that marks a message for the root: `{"to-root": payload}`.
pub const TO_ROOT_KEY: &str = "to-root";

/// One message received on a tree data channel.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChannelMessage {
    /// Application data.
    Data(Value),
    /// A join request delegated by the parent.
    JoinRequest(JoinRequest),
    /// A heartbeat: the sender is alive and supports heartbeats.
    Heartbeat,
}

/// A join request as a node handles it: the typed request, and how to forward it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JoinRequest {
    request: Request,
    /// The `JOIN-REQUEST` frame as the parent sent it, re-sent as is on forward. `None`
    /// for a request from the bootstrap server, which is framed when forwarded.
    frame: Option<String>,
}

impl JoinRequest {
    /// The newcomer's `/join` id.
    pub(crate) fn origin(&self) -> &str {
        self.request.origin()
    }

    /// Whether the signal is a session description (which may start a new child), not
    /// a trickled candidate.
    pub(crate) fn is_offer(&self) -> bool {
        matches!(self.request.signal(), Signal::Description(_))
    }

    /// The request, for the answerer.
    pub(crate) fn into_request(self) -> Request {
        self.request
    }

    /// The `JOIN-REQUEST` frame to send to a child.
    pub(crate) fn into_frame(self) -> String {
        self.frame
            .unwrap_or_else(|| join_request(&self.request.to_json()))
    }
}

impl From<Request> for JoinRequest {
    fn from(request: Request) -> Self {
        Self {
            request,
            frame: None,
        }
    }
}

/// Why a data-channel message was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// Not a JSON object, or a field of the wrong shape.
    #[error("not a JSON object: {0}")]
    Malformed(String),
    /// A JSON object whose `type` is not `DATA`, `JOIN-REQUEST` or `HEARTBEAT`.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A `JOIN-REQUEST` without a `signal`.
    #[error("a join request without a signal")]
    NoSignal,
    /// A `JOIN-REQUEST` the request type refuses (no `origin`).
    #[error(transparent)]
    Request(RequestError),
}

/// Parses a data-channel message (text or binary frames both carry JSON text), in one
/// pass over the text.
///
/// # Errors
/// [`WireError`] for anything that is not one of the three message kinds; the JS
/// overlay throws on these, a Rust node logs and ignores them.
pub(crate) fn parse(bytes: &[u8]) -> Result<ChannelMessage, WireError> {
    let text = std::str::from_utf8(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    let frame: Frame =
        serde_json::from_str(text).map_err(|e| WireError::Malformed(e.to_string()))?;
    match frame.kind.as_ref().and_then(Value::as_str) {
        Some(DATA) => Ok(ChannelMessage::Data(frame.data.unwrap_or(Value::Null))),
        Some(JOIN_REQUEST) => {
            let signal = frame.signal.ok_or(WireError::NoSignal)?;
            // `destination` and `rank` were checked while parsing, and travel on in the
            // frame; the answerer reads only the origin and the signal.
            let request = Request::new(frame.origin.unwrap_or_default(), signal)
                .map_err(WireError::Request)?;
            Ok(ChannelMessage::JoinRequest(JoinRequest {
                request,
                frame: Some(text.to_owned()),
            }))
        }
        Some(HEARTBEAT_TYPE) => Ok(ChannelMessage::Heartbeat),
        Some(other) => Err(WireError::UnknownType(other.to_owned())),
        None => Err(WireError::UnknownType(String::new())),
    }
}

/// `{"type":"DATA","data":<data>}`.
pub(crate) fn data(data: &Value) -> String {
    let mut text = String::from(r#"{"type":"DATA","data":"#);
    text.push_str(&data.to_string());
    text.push('}');
    text
}

/// `{"type":"DATA","data":{<key>:<data>}}`: the bytes of `data(&wrap(key, data))`,
/// without copying `data` into a new object.
pub(crate) fn wrapped_data(key: &str, data: &Value) -> String {
    let mut text = String::from(r#"{"type":"DATA","data":{"#);
    // Serializing a string cannot fail.
    text.push_str(&serde_json::to_string(key).unwrap_or_default());
    text.push(':');
    text.push_str(&data.to_string());
    text.push_str("}}");
    text
}

/// A bootstrap request as JSON text plus `"type":"JOIN-REQUEST"`, as the JS overlay
/// forwards it to a child.
fn join_request(request_json: &str) -> String {
    match request_json.trim_end().strip_suffix('}') {
        Some(body) if body.trim() != "{" => format!(r#"{body},"type":"JOIN-REQUEST"}}"#),
        _ => r#"{"type":"JOIN-REQUEST"}"#.to_owned(),
    }
}

/// `{key: data}`.
pub(crate) fn wrap(key: &str, data: Value) -> Value {
    let mut object = serde_json::Map::with_capacity(1);
    object.insert(key.to_owned(), data);
    Value::Object(object)
}

/// Splits a received payload into its delivery and the application data.
pub(crate) fn unwrap(data: Value) -> (Delivery, Value) {
    match data {
        Value::Object(mut object) if object.len() == 1 => {
            if let Some(inner) = object.remove(BROADCAST_KEY) {
                (Delivery::Broadcast, inner)
            } else if let Some(inner) = object.remove(TO_ROOT_KEY) {
                (Delivery::ToRoot, inner)
            } else {
                (Delivery::Direct, Value::Object(object))
            }
        }
        other => (Delivery::Direct, other),
    }
}

/// The fields of a frame that either message kind reads. `type` may come last (it does
/// in JS join requests), so the request fields are read, and checked as the request
/// parser checks them, before the kind is known.
#[derive(Default)]
struct Frame {
    /// `type`: any JSON value, as only a string names a kind.
    kind: Option<Value>,
    data: Option<Value>,
    origin: Option<String>,
    signal: Option<Signal>,
}

impl<'de> Deserialize<'de> for Frame {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FrameVisitor)
    }
}

struct FrameVisitor;

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = Frame;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Frame, A::Error> {
        let mut frame = Frame::default();
        // A repeated key overwrites the earlier value, as in `JSON.parse`.
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match &*key {
                "type" => frame.kind = Some(map.next_value()?),
                "data" => frame.data = map.next_value()?,
                "origin" => frame.origin = map.next_value()?,
                "signal" => frame.signal = Some(map.next_value()?),
                "destination" => {
                    map.next_value::<Option<Cow<'de, str>>>()?;
                }
                "rank" => {
                    map.next_value::<u64>()?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "484c0000000000000000000000000000";

    fn join_frame(signal: &str) -> String {
        format!(
            r#"{{"origin":"{ORIGIN}","destination":null,"signal":{signal},"rank":0,"type":"JOIN-REQUEST"}}"#
        )
    }

    fn join(frame: &str) -> JoinRequest {
        match parse(frame.as_bytes()) {
            Ok(ChannelMessage::JoinRequest(request)) => request,
            other => panic!("not a join request: {other:?}"),
        }
    }

    #[test]
    fn heartbeats_parse() {
        assert_eq!(parse(HEARTBEAT.as_bytes()), Ok(ChannelMessage::Heartbeat));
    }

    #[test]
    fn data_round_trip() {
        let value = serde_json::json!({"hello": [1, "two"]});
        let text = data(&value);
        assert!(text.starts_with(r#"{"type":"DATA","data":"#));
        assert_eq!(parse(text.as_bytes()), Ok(ChannelMessage::Data(value)));
        assert_eq!(
            parse(br#"{"type":"DATA"}"#),
            Ok(ChannelMessage::Data(Value::Null))
        );
    }

    #[test]
    fn join_request_is_typed_and_forwarded_as_received() {
        let frame = join_frame(r#"{"type":"offer","sdp":"x"}"#);
        let request = join(&frame);
        assert_eq!(request.origin(), ORIGIN);
        assert!(request.is_offer());
        assert_eq!(request.into_frame(), frame);
        // Key order, spacing and unknown fields are the sender's: re-sent byte for byte.
        let odd = format!(
            r#"{{ "type": "JOIN-REQUEST", "extra": [1], "rank": 7, "signal": {{"candidate":{{"candidate":"c","sdpMLineIndex":0,"sdpMid":"0"}}}}, "origin": "{ORIGIN}" }}"#
        );
        let request = join(&odd);
        assert!(!request.is_offer());
        assert_eq!(request.clone().into_request().origin(), ORIGIN);
        assert_eq!(request.into_frame(), odd);
    }

    #[test]
    fn a_request_from_the_server_is_framed_as_js_does() {
        let text = format!(
            r#"{{"origin":"{ORIGIN}","destination":null,"signal":{{"type":"offer","sdp":"x"}},"rank":0}}"#
        );
        let request = Request::from_json(&text).expect("request");
        let frame = JoinRequest::from(request.clone()).into_frame();
        assert_eq!(frame, join_frame(r#"{"type":"offer","sdp":"x"}"#));
        assert_eq!(join(&frame).into_request(), request);
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        for bad in [
            &b"nope"[..],
            b"null",
            b"[1]",
            br#"["DATA", 1]"#,
            b"\xff",
            b"{\"type\":\"PING\"}",
            b"{}",
            b"{\"type\":5}",
            b"{\"type\":\"DATA\",\"data\":1,\"x\":\"\xff\"}",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            parse(br#"{"type":"PING"}"#),
            Err(WireError::UnknownType("PING".into()))
        );
    }

    #[test]
    fn malformed_join_requests_are_refused() {
        let no_signal = format!(r#"{{"origin":"{ORIGIN}","type":"JOIN-REQUEST"}}"#);
        assert_eq!(parse(no_signal.as_bytes()), Err(WireError::NoSignal));
        let no_origin =
            r#"{"origin":null,"signal":{"type":"offer","sdp":""},"type":"JOIN-REQUEST"}"#;
        assert_eq!(
            parse(no_origin.as_bytes()),
            Err(WireError::Request(RequestError::NoOrigin))
        );
        for field in [
            r#""signal":{"renegotiate":true}"#,
            r#""signal":{"type":"offer","sdp":""},"destination":5"#,
            r#""signal":{"type":"offer","sdp":""},"rank":null"#,
        ] {
            let frame = format!(r#"{{"origin":"{ORIGIN}",{field},"type":"JOIN-REQUEST"}}"#);
            assert!(
                matches!(parse(frame.as_bytes()), Err(WireError::Malformed(_))),
                "{frame}"
            );
        }
    }

    #[test]
    fn deliveries_unwrap() {
        let payload = serde_json::json!([1]);
        for (key, delivery) in [
            (BROADCAST_KEY, Delivery::Broadcast),
            (TO_ROOT_KEY, Delivery::ToRoot),
        ] {
            assert_eq!(
                unwrap(wrap(key, payload.clone())),
                (delivery, payload.clone())
            );
        }
        assert_eq!(
            wrapped_data(TO_ROOT_KEY, &payload),
            data(&wrap(TO_ROOT_KEY, payload.clone()))
        );
        let two = serde_json::json!({"broadcast": 1, "x": 2});
        assert_eq!(unwrap(two.clone()), (Delivery::Direct, two));
        assert_eq!(unwrap(payload.clone()), (Delivery::Direct, payload));
    }
}
