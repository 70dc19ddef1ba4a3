//! Fuzz targets for [`Decoder`] (see `docs/fuzzing.md`).
//!
//! Under `cargo test` each target is an ordinary test: bolero runs any corpus under
//! `tests/__fuzz__/` and then random inputs for about a second. `cargo bolero test
//! <target>` runs the same target coverage-guided.
//!
//! Properties, checked on every input against [`reference`], a deliberately naive
//! decoder written from RFC 6455 section 5 that only ever looks at the whole stream:
//! - the decoder agrees with the reference: the same events (fragments included) and the
//!   same end (more bytes wanted, a close frame, or the same [`FrameError`]);
//! - split at arbitrary points, the stream gives the same events and end as fed whole,
//!   and every event comes out of the read that completes its frame (none is held back);
//! - after every read that leaves the decoder waiting, [`Decoder::is_mid_message`] is
//!   true exactly when part of a frame or of a fragmented message is pending, and the
//!   pending bytes are one incomplete frame of at most a header and `max_message`
//!   bytes: an oversized frame is refused from its header alone, before its payload is
//!   buffered;
//! - nothing panics.

use std::ops::ControlFlow;

use bolero::{TypeGenerator, check};
use bootstrap_ws::{Decoder, FrameError, Inbound, OpCode, apply_mask};

/// Longest frame header: 2 bytes, a 64-bit length and a masking key.
const MAX_HEADER: usize = 14;

/// What the decoder reported, owned so runs can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Fragment,
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

impl From<Inbound<'_>> for Event {
    fn from(inbound: Inbound<'_>) -> Self {
        match inbound {
            Inbound::Fragment => Self::Fragment,
            Inbound::Text(text) => Self::Text(text.to_owned()),
            Inbound::Binary(bytes) => Self::Binary(bytes.to_vec()),
            Inbound::Ping(bytes) => Self::Ping(bytes.to_vec()),
            Inbound::Pong => Self::Pong,
            Inbound::Close(code) => Self::Close(code),
        }
    }
}

/// How decoding a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Every complete frame was used; more bytes are wanted.
    Waiting,
    /// A close frame arrived.
    Closed,
    /// The stream broke the protocol or the size limit.
    Failed(FrameError),
}

/// What the reference decoder makes of a whole stream.
#[derive(Debug)]
struct Expected {
    events: Vec<Event>,
    end: End,
    /// Bytes of the complete frames used (when waiting: where the pending frame starts).
    used: usize,
    /// Whether a fragmented message is open.
    in_message: bool,
}

/// Whether a close frame may carry `code` (RFC 6455 section 7.4).
fn may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A naive server-side decoder of a whole stream, from RFC 6455 section 5. Errors are
/// checked in the order the decoder documents: header fields as they arrive, the mask
/// once the header is complete, the size limit, then the payload.
fn reference(stream: &[u8], max_message: usize) -> Expected {
    let mut events = Vec::new();
    let mut message: Option<(u8, Vec<u8>)> = None;
    let mut at = 0;
    let fail = |events, at, message: &Option<_>, error| Expected {
        events,
        end: End::Failed(error),
        used: at,
        in_message: message.is_some(),
    };
    loop {
        let rest = &stream[at..];
        let waiting = |events, message: &Option<(u8, Vec<u8>)>| Expected {
            events,
            end: End::Waiting,
            used: at,
            in_message: message.is_some(),
        };
        let [b0, b1, ..] = *rest else {
            return waiting(events, &message);
        };
        if b0 & 0x70 != 0 {
            return fail(events, at, &message, FrameError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
            return fail(events, at, &message, FrameError::UnknownOpcode(opcode));
        }
        let (extended, len) = match b1 & 0x7f {
            126 if rest.len() < 4 => return waiting(events, &message),
            126 => (2, u64::from(u16::from_be_bytes([rest[2], rest[3]]))),
            127 if rest.len() < 10 => return waiting(events, &message),
            127 if rest[2] & 0x80 != 0 => {
                return fail(events, at, &message, FrameError::InvalidLength);
            }
            127 => {
                let mut bytes = [0; 8];
                bytes.copy_from_slice(&rest[2..10]);
                (8, u64::from_be_bytes(bytes))
            }
            short => (0, u64::from(short)),
        };
        let control = opcode >= 8;
        if control && (!fin || len > 125) {
            return fail(events, at, &message, FrameError::InvalidControl);
        }
        let masked = b1 & 0x80 != 0;
        let header = 2 + extended + if masked { 4 } else { 0 };
        if rest.len() < header {
            return waiting(events, &message);
        }
        if !masked {
            return fail(events, at, &message, FrameError::Unmasked);
        }
        let so_far = match (&message, opcode) {
            (Some((_, bytes)), 0) => bytes.len() as u64,
            _ => 0,
        };
        if so_far + len > max_message as u64 {
            let limit = max_message;
            return fail(events, at, &message, FrameError::TooBig { limit });
        }
        let len = usize::try_from(len).expect("at most max_message");
        if rest.len() < header + len {
            return waiting(events, &message);
        }
        let mask = [
            rest[header - 4],
            rest[header - 3],
            rest[header - 2],
            rest[header - 1],
        ];
        let payload: Vec<u8> = rest[header..header + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        at += header + len;
        let complete = match opcode {
            8 => {
                let code = match payload.as_slice() {
                    [] => None,
                    [hi, lo, reason @ ..] if may_be_sent(u16::from_be_bytes([*hi, *lo])) => {
                        if std::str::from_utf8(reason).is_err() {
                            return fail(events, at, &message, FrameError::InvalidUtf8);
                        }
                        Some(u16::from_be_bytes([*hi, *lo]))
                    }
                    _ => return fail(events, at, &message, FrameError::InvalidClose),
                };
                events.push(Event::Close(code));
                return Expected {
                    events,
                    end: End::Closed,
                    used: at,
                    in_message: message.is_some(),
                };
            }
            9 => {
                events.push(Event::Ping(payload));
                continue;
            }
            10 => {
                events.push(Event::Pong);
                continue;
            }
            0 => {
                let Some((kind, mut bytes)) = message.take() else {
                    return fail(events, at, &message, FrameError::BadFragmentation);
                };
                bytes.extend_from_slice(&payload);
                if !fin {
                    message = Some((kind, bytes));
                    events.push(Event::Fragment);
                    continue;
                }
                (kind, bytes)
            }
            kind => {
                if message.is_some() {
                    return fail(events, at, &message, FrameError::BadFragmentation);
                }
                if !fin {
                    message = Some((kind, payload));
                    events.push(Event::Fragment);
                    continue;
                }
                (kind, payload)
            }
        };
        match complete {
            (1, bytes) => match String::from_utf8(bytes) {
                Ok(text) => events.push(Event::Text(text)),
                Err(_) => return fail(events, at, &message, FrameError::InvalidUtf8),
            },
            (_, bytes) => events.push(Event::Binary(bytes)),
        }
    }
}

/// Feeds `decoder` one read; returns the events and how it ended.
fn feed(decoder: &mut Decoder, read: &[u8], events: &mut Vec<Event>) -> End {
    let mut buf = read.to_vec();
    match decoder.decode(&mut buf, |inbound| {
        events.push(inbound.into());
        ControlFlow::Continue(())
    }) {
        Ok(ControlFlow::Continue(())) => End::Waiting,
        Ok(ControlFlow::Break(())) => End::Closed,
        Err(error) => End::Failed(error),
    }
}

/// Checks every property on `stream`, read in pieces that end at `cuts` (taken modulo
/// the stream's length).
fn check_stream(stream: &[u8], cuts: &[u16], max_message: usize) {
    let expected = reference(stream, max_message);

    let mut whole = Vec::new();
    let end = feed(&mut Decoder::new(max_message), stream, &mut whole);
    assert_eq!(whole, expected.events, "fed whole");
    assert_eq!(end, expected.end, "fed whole");

    let mut ends: Vec<usize> = cuts
        .iter()
        .map(|&cut| usize::from(cut) % (stream.len() + 1))
        .chain([stream.len()])
        .collect();
    ends.sort_unstable();
    ends.dedup();
    let mut decoder = Decoder::new(max_message);
    let mut split = Vec::new();
    let mut start = 0;
    let mut end = End::Waiting;
    for &cut in &ends {
        end = feed(&mut decoder, &stream[start..cut], &mut split);
        start = cut;
        if end != End::Waiting {
            break;
        }
        // Waiting after `cut` bytes: everything complete so far has come out, and what
        // is held is one incomplete frame within the limit.
        let so_far = reference(&stream[..cut], max_message);
        assert_eq!(so_far.end, End::Waiting, "the decoder waits at {cut}");
        assert_eq!(split, so_far.events, "events held back at {cut}");
        let pending = cut - so_far.used;
        assert!(
            pending < MAX_HEADER + max_message,
            "{pending} bytes pending at {cut}, limit {max_message}"
        );
        assert_eq!(
            decoder.is_mid_message(),
            pending > 0 || so_far.in_message,
            "is_mid_message at {cut}"
        );
    }
    assert_eq!(split, expected.events, "split at {ends:?}");
    assert_eq!(end, expected.end, "split at {ends:?}");
}

/// What a client sends: mostly well-formed messages, and one in eight damaged.
#[derive(Debug, TypeGenerator)]
struct Item {
    message: Message,
    mask: [u8; 4],
    /// `% 3`: the shortest length encoding, or a (non-minimal) 16- or 64-bit one.
    length_form: u8,
    /// From 224 on, `damage % 8` picks a [`Item::damage`]; below, none.
    damage: u8,
}

#[derive(Debug, TypeGenerator)]
enum Message {
    /// A text (or binary) message in up to four frames (`pieces % 4 + 1`, cut at
    /// arbitrary bytes, UTF-8 sequences included), a ping after its first frame if
    /// `ping_inside`.
    Data {
        text: bool,
        payload: Payload,
        pieces: u8,
        cut: u16,
        ping_inside: bool,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: no status, or [`CLOSE_CODES`]`[code % 10]` and a reason.
    Close(Option<(u8, String)>),
}

#[derive(Debug, TypeGenerator)]
enum Payload {
    Text(String),
    Bytes(Vec<u8>),
    /// Zeros, `len % 4096` of them: messages over the limit.
    Zeros(u16),
}

/// Close codes, allowed ones first.
const CLOSE_CODES: [u16; 10] = [1000, 1001, 1003, 1007, 1014, 3000, 4999, 1005, 1015, 5000];

/// One frame to encode.
struct Frame {
    b0: u8,
    masked: bool,
    payload: Vec<u8>,
    /// Added to the length the header declares.
    skew: u64,
}

impl Item {
    fn frames(&self) -> Vec<Frame> {
        let frame = |opcode: u8, fin: bool, payload: &[u8]| Frame {
            b0: u8::from(fin) << 7 | opcode,
            masked: true,
            payload: payload.to_vec(),
            skew: 0,
        };
        match &self.message {
            Message::Data {
                text,
                payload,
                pieces,
                cut,
                ping_inside,
            } => {
                let bytes = match payload {
                    Payload::Text(text) => text.as_bytes().to_vec(),
                    Payload::Bytes(bytes) => bytes.clone(),
                    Payload::Zeros(len) => vec![0; usize::from(*len) % 4096],
                };
                // Cut points spread from `cut`.
                let pieces = usize::from(pieces % 4) + 1;
                let mut cuts: Vec<usize> = (1..pieces)
                    .map(|i| (usize::from(*cut) * i) % (bytes.len() + 1))
                    .collect();
                cuts.sort_unstable();
                let mut frames = Vec::new();
                let mut start = 0;
                for (i, end) in cuts.into_iter().chain([bytes.len()]).enumerate() {
                    let opcode = match (i, text) {
                        (0, true) => 1,
                        (0, false) => 2,
                        _ => 0,
                    };
                    frames.push(frame(
                        opcode,
                        end == bytes.len() && i == pieces - 1,
                        &bytes[start..end],
                    ));
                    if i == 0 && *ping_inside {
                        frames.push(frame(9, true, b"inside"));
                    }
                    start = end;
                }
                frames
            }
            Message::Ping(bytes) => vec![frame(9, true, &bytes[..bytes.len().min(125)])],
            Message::Pong(bytes) => vec![frame(10, true, &bytes[..bytes.len().min(125)])],
            Message::Close(None) => vec![frame(8, true, b"")],
            Message::Close(Some((code, reason))) => {
                let mut payload = CLOSE_CODES[usize::from(*code) % 10].to_be_bytes().to_vec();
                payload.extend_from_slice(reason.as_bytes());
                payload.truncate(125);
                vec![frame(8, true, &payload)]
            }
        }
    }

    /// Breaks the first frame one of eight ways, if `damage` says so.
    fn damage(&self, frames: &mut [Frame]) {
        let Some(first) = frames.first_mut() else {
            return;
        };
        if self.damage < 224 {
            return;
        }
        match self.damage % 8 {
            0 => first.b0 |= 0x10 << (self.damage % 3),
            1 => first.b0 = first.b0 & 0xf0 | [3, 7, 0xb, 0xf][usize::from(self.damage % 4)],
            2 => first.masked = false,
            3 => first.b0 &= 0x7f,
            4 => first.skew = u64::from(self.damage % 5) + 1,
            5 => first.b0 &= 0xf0,
            6 => first.payload.push(0xff),
            _ => first.payload.truncate(first.payload.len() / 2),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let mut frames = self.frames();
        self.damage(&mut frames);
        for frame in frames {
            out.push(frame.b0);
            let declared = frame.payload.len() as u64 + frame.skew;
            let mask_bit = if frame.masked { 0x80 } else { 0 };
            match self.length_form % 3 {
                0 if declared < 126 => out.push(mask_bit | declared as u8),
                0 | 1 if declared <= u64::from(u16::MAX) => {
                    out.push(mask_bit | 126);
                    out.extend_from_slice(&(declared as u16).to_be_bytes());
                }
                _ => {
                    out.push(mask_bit | 127);
                    out.extend_from_slice(&declared.to_be_bytes());
                }
            }
            if frame.masked {
                out.extend_from_slice(&self.mask);
            }
            let body = out.len();
            out.extend_from_slice(&frame.payload);
            if frame.masked {
                apply_mask(&mut out[body..], self.mask);
            }
        }
    }
}

/// A stream of messages, then raw bytes, read in pieces.
#[derive(Debug, TypeGenerator)]
struct FramedStream {
    items: Vec<Item>,
    tail: Vec<u8>,
    cuts: Vec<u16>,
    /// `% 1025`: the decoder's `max_message`.
    max_message: u16,
}

#[test]
fn decoder_frames() {
    check!()
        .with_type::<FramedStream>()
        .for_each(|input: &FramedStream| {
            let mut stream = Vec::new();
            for item in &input.items {
                item.encode(&mut stream);
            }
            stream.extend_from_slice(&input.tail);
            check_stream(&stream, &input.cuts, usize::from(input.max_message % 1025));
        });
}

#[test]
fn decoder_bytes() {
    check!()
        .with_type::<(Vec<u8>, Vec<u16>, u16)>()
        .for_each(|(stream, cuts, max_message)| {
            check_stream(stream, cuts, usize::from(*max_message % 1025));
        });
}

#[test]
fn reference_agrees_with_known_streams() {
    // The reference is only as good as it is right: pin it on hand-made frames too.
    let mut stream = Vec::new();
    bootstrap_ws::encode_frame(&mut stream, OpCode::Text, b"hi", Some([1, 2, 3, 4]));
    bootstrap_ws::encode_frame(&mut stream, OpCode::Ping, b"p", Some([5, 6, 7, 8]));
    bootstrap_ws::encode_frame(
        &mut stream,
        OpCode::Close,
        &1000u16.to_be_bytes(),
        Some([9; 4]),
    );
    let expected = reference(&stream, 10);
    assert_eq!(
        expected.events,
        [
            Event::Text("hi".into()),
            Event::Ping(b"p".to_vec()),
            Event::Close(Some(1000))
        ]
    );
    assert_eq!(expected.end, End::Closed);
    let unmasked = [0x81, 0x01, b'x'];
    assert_eq!(
        reference(&unmasked, 10).end,
        End::Failed(FrameError::Unmasked)
    );
    check_stream(&stream, &[1, 5, 9], 10);
}
