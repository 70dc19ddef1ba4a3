//! Fuzz targets for the relay rewrite, [`relay`] (see `docs/fuzzing.md`).
//!
//! Under `cargo test` each target is an ordinary test: bolero runs any corpus under
//! `tests/__fuzz__/` and then random inputs for about a second. `cargo bolero test
//! <target>` runs the same target coverage-guided.
//!
//! Properties, checked against `serde_json`'s own reading of the input:
//! - [`relay`] never panics, whatever the text;
//! - it accepts exactly the JSON objects; [`EnvelopeError::Malformed`] is never given
//!   for valid JSON (but for a top-level number out of `f64` range, `1e400`), and [`EnvelopeError::NotAnObject`] only for text that does not
//!   start with `{` (valid JSON that is not an object, but also a non-object value
//!   followed by garbage, such as `0\0`: serde_json reports the type first);
//! - its output is a JSON object whose keys are the input's in order (a duplicate key
//!   keeps its first position and its last value, as `JSON.parse` does) with `origin`
//!   set to the sender's id, in place or appended last, and every other value kept
//!   byte for byte;
//! - its [`Destination`] is the JS truthiness of the (last) `destination` value.

use std::fmt::{self, Write as _};

use bolero::{TypeGenerator, check};
use bootstrap_protocol::{Destination, EnvelopeError, PeerId, relay};
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

const ID: &str = "0123456789abcdef0123456789abcdef";

/// A JSON object's entries in order, values raw, as `serde_json` reads them.
struct Entries(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// The input's entries with duplicates merged as `JSON.parse` merges them.
fn merged(entries: Vec<(String, Box<RawValue>)>) -> Vec<(String, Box<RawValue>)> {
    let mut out: Vec<(String, Box<RawValue>)> = Vec::new();
    for (key, value) in entries {
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => out.push((key, value)),
        }
    }
    out
}

/// Where JS sends a message whose `destination` is `raw` (`None`: no such key).
fn js_destination(raw: Option<&RawValue>) -> Destination {
    let Some(raw) = raw else {
        return Destination::Root;
    };
    let text = raw.get();
    if let Ok(s) = serde_json::from_str::<String>(text) {
        return match s.parse::<PeerId>() {
            _ if s.is_empty() => Destination::Root,
            Ok(id) => Destination::Peer(id),
            Err(_) => Destination::Unknown,
        };
    }
    // `Number(text) == 0` for numbers; `null` and `false` are falsy.
    let falsy = text == "null" || text == "false" || text.parse::<f64>().is_ok_and(|n| n == 0.0);
    if falsy {
        Destination::Root
    } else {
        Destination::Unknown
    }
}

/// Checks every property on one frame.
fn check_frame(frame: &str) {
    let id: PeerId = ID.parse().expect("a valid id");
    let result = relay(frame, &id);
    let syntax = serde_json::from_str::<IgnoredAny>(frame);
    let object = serde_json::from_str::<Entries>(frame);
    let relayed = match result {
        Err(EnvelopeError::Malformed(_)) => {
            // Not an object serde_json can read, nor a value JSON.parse takes, apart
            // from numbers serde_json cannot hold (a top-level `1e400`).
            assert!(object.is_err(), "an object refused as malformed: {frame:?}");
            let number = frame.trim().parse::<f64>().is_ok();
            assert!(
                syntax.is_err() || number,
                "valid JSON refused as malformed: {frame:?}"
            );
            return;
        }
        Err(EnvelopeError::NotAnObject) => {
            // Valid JSON that is not an object, or (serde_json reports the type before
            // reading on) a non-object value followed by anything, such as `0\0`.
            let start = frame.trim_start_matches([' ', '\t', '\n', '\r']);
            assert!(!start.starts_with('{'), "an object refused: {frame:?}");
            assert!(object.is_err(), "an object refused: {frame:?}");
            return;
        }
        Ok(relayed) => relayed,
    };
    let Ok(Entries(entries)) = object else {
        panic!("relayed something that is not a JSON object: {frame:?}");
    };
    let input = merged(entries);
    let Entries(output) = serde_json::from_str(&relayed.text)
        .unwrap_or_else(|e| panic!("output is not a JSON object ({e}): {:?}", relayed.text));

    // Keys in order, `origin` in place or last, other values byte for byte.
    let mut expected: Vec<(String, String)> = input
        .iter()
        .map(|(key, value)| (key.clone(), value.get().to_owned()))
        .collect();
    let origin = format!("\"{ID}\"");
    match expected.iter_mut().find(|(key, _)| key == "origin") {
        Some(slot) => slot.1.clone_from(&origin),
        None => expected.push(("origin".to_owned(), origin)),
    }
    let got: Vec<(String, String)> = output
        .iter()
        .map(|(key, value)| (key.clone(), value.get().to_owned()))
        .collect();
    assert_eq!(got, expected, "frame {frame:?}");

    // The same values as `serde_json` reads them (where it can hold the numbers).
    if let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(frame) {
        map.insert("origin".to_owned(), Value::String(ID.to_owned()));
        let out: Value = serde_json::from_str(&relayed.text).expect("checked above");
        assert_eq!(out, Value::Object(map), "frame {frame:?}");
    }

    let destination = input
        .iter()
        .find(|(key, _)| key == "destination")
        .map(|(_, value)| &**value);
    assert_eq!(
        relayed.destination,
        js_destination(destination),
        "frame {frame:?}"
    );
}

/// A JSON value, to be written with varied spacing and escapes. Arrays and objects
/// hold scalars only (nesting comes from [`Scalar::Deep`]), so values stay small.
#[derive(Debug, TypeGenerator)]
enum Json {
    Scalar(Scalar),
    Array(Vec<Scalar>),
    Object(Vec<(Key, Scalar)>),
}

#[derive(Debug, TypeGenerator)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    /// Written as Rust prints it; NaN and the infinities as 0.
    Float(f64),
    /// An entry of [`NUMBERS`]: edge cases, some of them not JSON.
    Number(u8),
    Str(String),
    Id([u8; 16]),
    /// Arrays (or objects) nested this deep around `1`: past serde_json's limit of 128
    /// from 128 on.
    Deep(u8, bool),
}

/// Numbers, valid first, and some that are not JSON numbers.
const NUMBERS: [&str; 16] = [
    "0",
    "-0",
    "0.0",
    "0e10",
    "-0.0E-5",
    "1e400",
    "-1e400",
    "1.5E+3",
    "18446744073709551616",
    "-9223372036854775809",
    "01",
    "1.",
    ".5",
    "-",
    "NaN",
    "0x10",
];

#[derive(Debug, TypeGenerator)]
enum Key {
    Origin,
    Destination,
    Signal,
    Rank,
    Other(String),
    /// `origin` or `destination` with a character written as `\u00XX`.
    Escaped(bool, u8),
}

/// Writes `s` as a JSON string, escaping per `style`.
fn write_string(out: &mut String, s: &str, style: u8) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || style % 4 == 1 => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").expect("write to a String");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Spacing: nothing, or some of the four JSON whitespace characters.
fn space(out: &mut String, style: u8, at: usize) {
    if style % 3 == 2 {
        out.push_str([" ", "\n", "\t", "\r", "  \n "][at % 5]);
    }
}

fn write_key(out: &mut String, key: &Key, style: u8) {
    match key {
        Key::Origin => out.push_str("\"origin\""),
        Key::Destination => out.push_str("\"destination\""),
        Key::Signal => out.push_str("\"signal\""),
        Key::Rank => out.push_str("\"rank\""),
        Key::Other(s) => write_string(out, s, style),
        Key::Escaped(origin, at) => {
            let name = if *origin { "origin" } else { "destination" };
            let at = usize::from(*at) % name.len();
            out.push('"');
            out.push_str(&name[..at]);
            write!(out, "\\u{:04X}", name.as_bytes()[at]).expect("write to a String");
            out.push_str(&name[at + 1..]);
            out.push('"');
        }
    }
}

fn write_scalar(out: &mut String, value: &Scalar, style: u8) {
    match value {
        Scalar::Null => out.push_str("null"),
        Scalar::Bool(b) => write!(out, "{b}").expect("write to a String"),
        Scalar::Int(n) => write!(out, "{n}").expect("write to a String"),
        Scalar::Float(x) if x.is_finite() => write!(out, "{x:?}").expect("write to a String"),
        Scalar::Float(_) => out.push('0'),
        Scalar::Number(i) => out.push_str(NUMBERS[usize::from(*i) % NUMBERS.len()]),
        Scalar::Str(s) => write_string(out, s, style),
        Scalar::Id(bytes) => write_string(out, PeerId::from_bytes(*bytes).as_str(), style),
        Scalar::Deep(depth, array) => {
            let (open, close) = if *array {
                ("[", "]")
            } else {
                (r#"{"a":"#, "}")
            };
            out.push_str(&open.repeat(usize::from(*depth)));
            out.push('1');
            out.push_str(&close.repeat(usize::from(*depth)));
        }
    }
}

fn write_json(out: &mut String, value: &Json, style: u8) {
    match value {
        Json::Scalar(scalar) => write_scalar(out, scalar, style),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(out, style, i);
                write_scalar(out, item, style.wrapping_add(1));
            }
            out.push(']');
        }
        Json::Object(entries) => {
            out.push('{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_key(out, key, style);
                out.push(':');
                space(out, style, i);
                write_scalar(out, value, style.wrapping_add(1));
            }
            out.push('}');
        }
    }
}

fn write_object(out: &mut String, entries: &[(Key, Json)], style: u8) {
    out.push('{');
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        space(out, style, i);
        write_key(out, key, style);
        space(out, style, i + 1);
        out.push(':');
        write_json(out, value, style.wrapping_add(1));
        space(out, style, i + 2);
    }
    out.push('}');
}

/// A frame: an envelope-like object, possibly damaged, or any text.
#[derive(Debug, TypeGenerator)]
enum Frame {
    Object(Vec<(Key, Json)>, u8),
    Value(Json, u8),
    /// An object with one byte range replaced: truncations, insertions, stray text.
    Damaged(Vec<(Key, Json)>, u8, u16, u16, String),
    Text(String),
}

impl Frame {
    fn text(&self) -> String {
        let mut out = String::new();
        match self {
            Self::Object(entries, style) => write_object(&mut out, entries, *style),
            Self::Value(value, style) => write_json(&mut out, value, *style),
            Self::Damaged(entries, style, at, len, with) => {
                write_object(&mut out, entries, *style);
                let mut start = usize::from(*at) % (out.len() + 1);
                while !out.is_char_boundary(start) {
                    start -= 1;
                }
                let mut end = (start + usize::from(*len) % 8).min(out.len());
                while !out.is_char_boundary(end) {
                    end += 1;
                }
                out.replace_range(start..end, with);
            }
            Self::Text(text) => out.push_str(text),
        }
        out
    }
}

#[test]
fn relay_frames() {
    check!()
        .with_type::<Frame>()
        .for_each(|frame: &Frame| check_frame(&frame.text()));
}

#[test]
fn relay_bytes() {
    check!().for_each(|bytes: &[u8]| {
        if let Ok(text) = std::str::from_utf8(bytes) {
            check_frame(text);
        }
    });
}

#[test]
fn the_checks_hold_on_known_frames() {
    for frame in [
        r#"{"origin":null,"destination":null,"signal":{"type":"offer"},"rank":0}"#,
        r#"{"destination":"0123456789abcdef0123456789abcdef","a":1,"destination":-0}"#,
        r#"{"\u006frigin":5, "x" : [1, 2 ] }"#,
        r#"{"n":1e400,"destination":0e-7}"#,
        "[1,2]",
        "{",
        "",
        "\"heartbeat\"",
        "0\u{0}",
        "1e400",
    ] {
        check_frame(frame);
    }
    assert_eq!(js_destination(None), Destination::Root);
}
