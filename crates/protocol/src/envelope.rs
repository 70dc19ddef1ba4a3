//! The envelope peers exchange through the server, and the server's relay rewrite.
//!
//! Peers send `{"origin":null,"destination":…,"signal":…,"rank":n}` (`docs/protocol.md#envelope`).
//! The server overwrites `origin` with the sender's id and forwards everything else
//! untouched (§3.2). [`relay`] does that rewrite without building a JSON tree: each
//! value is kept as the exact bytes the sender wrote, only `origin` is replaced.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::id::PeerId;

/// The envelope a client sends and receives on `/join`, in the key order JS emits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<S = serde_json::Value> {
    /// The sender's id: `null` from clients, set by the server.
    #[serde(default)]
    pub origin: Option<String>,
    /// `null` for the root, otherwise the id of the `/join` socket to deliver to.
    #[serde(default)]
    pub destination: Option<String>,
    /// The WebRTC signal (see [`crate::Signal`]).
    pub signal: S,
    /// Per-connection counter of signals sent. Nobody reads it; JS always sends it.
    #[serde(default)]
    pub rank: u64,
}

/// Where the server sends a relayed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `destination` is missing or falsy in the JS sense (`null`, `""`, `0`, `false`).
    Root,
    /// `destination` is a non-empty string: the `/join` socket with that id.
    Peer(PeerId),
    /// `destination` is truthy but names no possible socket: a string that is not an
    /// id, a non-zero number, `true`, an object or an array. The JS server drops these
    /// as unknown destinations.
    Unknown,
}

/// A message rewritten for forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// Where it goes.
    pub destination: Destination,
    /// The JSON text to send, with `origin` set to the sender's id.
    pub text: String,
}

/// Why a frame cannot be relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The frame is not JSON.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// The frame is valid JSON but not an object (`null`, a number, a string, an array…).
    #[error("the message is JSON but not an object")]
    NotAnObject,
}

/// Rewrites one frame received from the `/join` socket `origin`: parses it as a JSON
/// object, sets `origin` (in place when present, appended last otherwise, as JS does),
/// keeps every other field's bytes and order, and tells where it goes.
///
/// Duplicate keys follow `JSON.parse`: the last value wins, at the first key's position.
///
/// # Errors
/// [`EnvelopeError`] when the frame is not a JSON object.
pub fn relay(frame: &str, origin: &PeerId) -> Result<Relayed, EnvelopeError> {
    let fields: Fields<'_> = serde_json::from_str(frame).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => EnvelopeError::NotAnObject,
        _ => EnvelopeError::Malformed(e.to_string()),
    })?;
    let fields = fields.entries;
    let destination = fields
        .iter()
        .find(|(key, _)| key == "destination")
        .map_or(Destination::Root, |(_, raw)| destination_of(raw));

    let mut text = String::with_capacity(frame.len() + ID_JSON_LEN);
    text.push('{');
    let mut has_origin = false;
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        push_json_string(&mut text, key);
        text.push(':');
        if key == "origin" {
            has_origin = true;
            push_id(&mut text, origin);
        } else {
            text.push_str(value.get());
        }
    }
    if !has_origin {
        if !fields.is_empty() {
            text.push(',');
        }
        text.push_str("\"origin\":");
        push_id(&mut text, origin);
    }
    text.push('}');
    Ok(Relayed { destination, text })
}

/// Room for `"origin":"<32 hex>"` when the sender had no `origin` key.
const ID_JSON_LEN: usize = 44;

/// Writes an id as a JSON string (ids are hex: nothing to escape).
fn push_id(out: &mut String, id: &PeerId) {
    out.push('"');
    out.push_str(id.as_str());
    out.push('"');
}

/// JS truthiness of a `destination` value, and the id it names.
fn destination_of(raw: &RawValue) -> Destination {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'n' | b'f') => Destination::Root, // null, false
        Some(b'"') => match serde_json::from_str::<Cow<'_, str>>(text) {
            Ok(s) if s.is_empty() => Destination::Root,
            Ok(s) => s.parse().map_or(Destination::Unknown, Destination::Peer),
            Err(_) => Destination::Unknown,
        },
        Some(b'-' | b'0'..=b'9') => match text.parse::<f64>() {
            Ok(0.0) => Destination::Root, // also matches -0.0
            _ => Destination::Unknown,
        },
        _ => Destination::Unknown, // true, objects, arrays
    }
}

fn push_json_string(out: &mut String, s: &str) {
    // Keys without characters that need escaping (all keys JS peers send) are copied.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serializing a &str into JSON cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// A JSON object's fields in order, values left as raw text, duplicate keys merged.
///
/// Signaling envelopes have four or five keys, so a vector searched linearly beats a
/// hash map (no hashing, one allocation). From [`INDEX_FROM`] keys on, an index keeps a
/// frame with thousands of keys linear in time.
struct Fields<'a> {
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
    index: Option<HashMap<Cow<'a, str>, usize>>,
}

/// Number of keys from which duplicates are found through a hash map.
const INDEX_FROM: usize = 16;

impl<'a> Fields<'a> {
    fn insert(&mut self, key: Cow<'a, str>, value: &'a RawValue) {
        let found = match &self.index {
            Some(index) => index.get(&key).copied(),
            None => self.entries.iter().position(|(k, _)| *k == key),
        };
        if let Some(at) = found {
            self.entries[at].1 = value;
            return;
        }
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), self.entries.len());
        }
        self.entries.push((key, value));
        if self.index.is_none() && self.entries.len() >= INDEX_FROM {
            let index = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect();
            self.index = Some(index);
        }
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields {
            entries: Vec::with_capacity(map.size_hint().unwrap_or(5).min(INDEX_FROM)),
            index: None,
        };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            fields.insert(key.0, value);
        }
        Ok(fields)
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210";

    fn id() -> PeerId {
        ID.parse().expect("id")
    }

    fn relayed(frame: &str) -> Relayed {
        relay(frame, &id()).expect("relayable")
    }

    #[test]
    fn overwrites_origin_in_place_and_keeps_the_rest() {
        let r = relayed(
            r#"{"origin":null,"destination":null,"signal":{"type":"offer","sdp":"v=0\r\n"},"rank":0}"#,
        );
        assert_eq!(r.destination, Destination::Root);
        assert_eq!(
            r.text,
            format!(
                r#"{{"origin":"{ID}","destination":null,"signal":{{"type":"offer","sdp":"v=0\r\n"}},"rank":0}}"#
            )
        );
    }

    #[test]
    fn forged_origin_is_replaced() {
        let r = relayed(&format!(
            r#"{{"origin":"{OTHER}","destination":"{OTHER}","signal":1}}"#
        ));
        assert_eq!(r.destination, Destination::Peer(OTHER.parse().expect("id")));
        assert!(r.text.starts_with(&format!(r#"{{"origin":"{ID}""#)));
    }

    #[test]
    fn missing_origin_is_appended_last() {
        let r = relayed(r#"{"signal":{"candidate":{}},"extra":42,"rank":3}"#);
        assert_eq!(
            r.text,
            format!(r#"{{"signal":{{"candidate":{{}}}},"extra":42,"rank":3,"origin":"{ID}"}}"#)
        );
    }

    #[test]
    fn values_keep_their_bytes() {
        let r = relayed(r#"{ "signal" : { "sdp" : "\u00e9\n" , "n": 1.50e3 } , "x":[1, 2] }"#);
        assert_eq!(
            r.text,
            format!(
                r#"{{"signal":{{ "sdp" : "\u00e9\n" , "n": 1.50e3 }},"x":[1, 2],"origin":"{ID}"}}"#
            )
        );
    }

    #[test]
    fn duplicate_keys_behave_like_json_parse() {
        let r = relayed(&format!(
            r#"{{"destination":"{OTHER}","a":1,"destination":null}}"#
        ));
        assert_eq!(r.destination, Destination::Root);
        assert_eq!(
            r.text,
            format!(r#"{{"destination":null,"a":1,"origin":"{ID}"}}"#)
        );
    }

    #[test]
    fn many_keys_and_late_duplicates() {
        let keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let frame = format!(
            "{{{},\"k3\":\"x\",\"origin\":1,\"k39\":[]}}",
            keys.join(",")
        );
        let r = relayed(&frame);
        let mut expected = keys;
        expected[3] = "\"k3\":\"x\"".to_owned();
        expected[39] = "\"k39\":[]".to_owned();
        expected.push(format!("\"origin\":\"{ID}\""));
        assert_eq!(r.text, format!("{{{}}}", expected.join(",")));
        assert_eq!(r.destination, Destination::Root);
    }

    #[test]
    fn destination_truthiness() {
        let cases = [
            ("null", Destination::Root),
            ("\"\"", Destination::Root),
            ("0", Destination::Root),
            ("-0", Destination::Root),
            ("0.0", Destination::Root),
            ("0e10", Destination::Root),
            ("false", Destination::Root),
            ("true", Destination::Unknown),
            ("1", Destination::Unknown),
            ("\"abc\"", Destination::Unknown),
            ("\"__proto__\"", Destination::Unknown),
            ("{}", Destination::Unknown),
            ("[]", Destination::Unknown),
            (
                &format!("\"{OTHER}\""),
                Destination::Peer(OTHER.parse().expect("id")),
            ),
        ];
        for (value, expected) in cases {
            let r = relayed(&format!(r#"{{"destination":{value}}}"#));
            assert_eq!(r.destination, expected, "destination {value}");
        }
        assert_eq!(relayed("{}").destination, Destination::Root);
    }

    #[test]
    fn escaped_keys_are_reencoded() {
        let r = relayed(r#"{"a\"b":1,"\u0041":2}"#);
        assert_eq!(r.text, format!(r#"{{"a\"b":1,"A":2,"origin":"{ID}"}}"#));
    }

    #[test]
    fn rejects_non_objects() {
        for frame in ["null", "5", "\"x\"", "true", "[1,2]", "\"heartbeat\""] {
            assert_eq!(
                relay(frame, &id()),
                Err(EnvelopeError::NotAnObject),
                "{frame}"
            );
        }
        for frame in ["", "{", "heartbeat", "{\"a\":}", "{} x", "{\"a\":1,}"] {
            assert!(
                matches!(relay(frame, &id()), Err(EnvelopeError::Malformed(_))),
                "{frame}"
            );
        }
    }

    #[test]
    fn output_is_valid_json_with_same_values() {
        let frame = r#"{"origin":null,"destination":"","signal":{"candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMLineIndex":0,"sdpMid":"0"}},"rank":7}"#;
        let r = relayed(frame);
        let mut expected: serde_json::Value = serde_json::from_str(frame).expect("json");
        expected["origin"] = serde_json::Value::String(ID.into());
        let got: serde_json::Value = serde_json::from_str(&r.text).expect("json");
        assert_eq!(got, expected);
    }

    #[test]
    fn client_envelope_key_order() {
        let e = Envelope {
            origin: None,
            destination: None,
            signal: crate::Signal::Description(crate::SessionDescription {
                kind: crate::SdpKind::Offer,
                sdp: "x".into(),
            }),
            rank: 0,
        };
        assert_eq!(
            serde_json::to_string(&e).expect("ser"),
            r#"{"origin":null,"destination":null,"signal":{"type":"offer","sdp":"x"},"rank":0}"#
        );
    }
}
