//! What each side of a simulated handshake sends, and the exact bytes it must receive.
//!
//! Every message is deterministic: handshake number, side and rank fix its content, and
//! the ids the server assigned fix `origin` and `destination`. A receiver therefore
//! verifies a frame by comparing it byte for byte with the frame it expects next on that
//! stream, with no JSON parsing: a lost, duplicated, reordered, misrouted or altered
//! message cannot match. Both servers produce identical bytes here: our server keeps the
//! sender's bytes, and the JS server's `JSON.stringify(JSON.parse(..))` reproduces them
//! because the content is compact JSON of printable ASCII with `\r\n` escapes only.
//!
//! A sent frame is `{"origin":null,` + body; the received frame is
//! `{"origin":"<sender id>",` + the same body, where body is
//! `"destination":…,"signal":…,"rank":n}` as the JS client writes it (`docs/protocol.md#envelope`).

use std::fmt::Write as _;

/// A `/join` socket id as the server wrote it: 32 lowercase hex bytes.
pub(crate) type Id = [u8; 32];

/// Which side of the handshake sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The newcomer: the offer and its candidates.
    Newcomer,
    /// The answerer: the answer and its candidates.
    Answerer,
}

impl Side {
    fn letter(self) -> u8 {
        match self {
            Self::Newcomer => b'n',
            Self::Answerer => b'a',
        }
    }
}

/// What a received frame claims to be, read from its content (for error reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    /// Handshake number.
    pub(crate) handshake: u32,
    /// Sending side.
    pub(crate) side: Side,
    /// Rank of the message on its side.
    pub(crate) rank: u32,
}

/// How a received frame differs from the expected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// `origin` is not the sender's id (or not an id at all).
    Origin,
    /// The frame belongs to another handshake or side: misrouted.
    Misrouted(Option<Tag>),
    /// The right stream, but another rank: duplicated, lost or reordered.
    OutOfOrder {
        /// The rank that arrived.
        got: u32,
        /// The rank expected.
        expected: u32,
    },
    /// The right message, altered (destination, fields, order of fields, bytes).
    Altered,
}

const ORIGIN_PREFIX: &[u8] = b"{\"origin\":\"";
/// Offset of the body in a received frame: `{"origin":"` + 32 + `",`.
const BODY_AT: usize = ORIGIN_PREFIX.len() + 32 + 2;
/// Width of the handshake number written into SDPs and candidates.
const NUMBER_WIDTH: usize = 10;

/// The content of every handshake of one load point.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// Candidates per side (K).
    pub(crate) candidates: u32,
    /// Newcomer candidates sent root-bound with the offer; the rest go straight to
    /// the answerer once it has heard from it.
    pub(crate) early: u32,
    /// The SDP as JSON string content (escaped), with placeholders.
    sdp: Vec<u8>,
    /// Offsets of the handshake-number placeholders in `sdp`.
    number_at: Vec<usize>,
    /// Offsets of the side-letter placeholders in `sdp`.
    side_at: Vec<usize>,
}

impl Script {
    /// A script with `candidates` per side, `early` of the newcomer's sent root-bound,
    /// and SDPs of `sdp_bytes` bytes (at least [`Self::MIN_SDP`]).
    pub(crate) fn new(candidates: u32, early: u32, sdp_bytes: usize) -> Self {
        let (sdp, number_at, side_at) = sdp_template(sdp_bytes.max(Self::MIN_SDP));
        Self {
            candidates,
            early: early.min(candidates),
            sdp,
            number_at,
            side_at,
        }
    }

    /// Smallest SDP: the `v=` and `o=` lines that carry the side and handshake number.
    pub(crate) const MIN_SDP: usize = 64;

    /// Messages relayed per handshake: each side's description and candidates.
    pub(crate) fn messages_per_handshake(&self) -> u64 {
        2 * (u64::from(self.candidates) + 1)
    }

    /// The frame `side` sends as message `rank` of `handshake`.
    pub(crate) fn outgoing(
        &self,
        out: &mut Vec<u8>,
        handshake: u32,
        side: Side,
        rank: u32,
        destination: Option<&Id>,
    ) {
        out.clear();
        out.extend_from_slice(b"{\"origin\":null,");
        self.body(out, handshake, side, rank, destination);
    }

    /// Checks that `frame` is exactly message `rank` of `side` in `handshake`, sent by
    /// the socket whose id is `origin` to `destination`.
    pub(crate) fn check(
        &self,
        frame: &[u8],
        scratch: &mut Vec<u8>,
        origin: &Id,
        expected: Tag,
        destination: Option<&Id>,
    ) -> Result<(), Mismatch> {
        if origin_of(frame) != Some(*origin) {
            return Err(Mismatch::Origin);
        }
        scratch.clear();
        self.body(
            scratch,
            expected.handshake,
            expected.side,
            expected.rank,
            destination,
        );
        if frame[BODY_AT..] == scratch[..] {
            return Ok(());
        }
        Err(match tag_of(frame) {
            Some(tag) if tag.handshake == expected.handshake && tag.side == expected.side => {
                if tag.rank == expected.rank {
                    Mismatch::Altered
                } else {
                    Mismatch::OutOfOrder {
                        got: tag.rank,
                        expected: expected.rank,
                    }
                }
            }
            other => Mismatch::Misrouted(other),
        })
    }

    fn body(
        &self,
        out: &mut Vec<u8>,
        handshake: u32,
        side: Side,
        rank: u32,
        destination: Option<&Id>,
    ) {
        destination_field(out, destination.map(|id| &id[..]));
        out.extend_from_slice(b",\"signal\":");
        let number = padded(handshake);
        if rank == 0 {
            out.extend_from_slice(match side {
                Side::Newcomer => b"{\"type\":\"offer\",\"sdp\":\"",
                Side::Answerer => b"{\"type\":\"answer\",\"sdp\":\"",
            });
            let start = out.len();
            out.extend_from_slice(&self.sdp);
            for &at in &self.number_at {
                out[start + at..start + at + NUMBER_WIDTH].copy_from_slice(&number);
            }
            for &at in &self.side_at {
                out[start + at] = side.letter();
            }
            out.extend_from_slice(b"\"}");
        } else {
            // A SimplePeer 6 candidate (docs/protocol.md#signals); the foundation carries the
            // handshake number, the ufrag the side, the port the rank.
            out.extend_from_slice(b"{\"candidate\":{\"candidate\":\"candidate:");
            out.extend_from_slice(&number);
            out.extend_from_slice(b" 1 udp 2122260223 127.0.0.1 ");
            push_decimal(out, 50_000 + u64::from(rank));
            out.extend_from_slice(b" typ host generation 0 ufrag ");
            out.push(side.letter());
            out.extend_from_slice(&number);
            out.extend_from_slice(b" network-id 1\",\"sdpMLineIndex\":0,\"sdpMid\":\"0\"}}");
        }
        out.extend_from_slice(b",\"rank\":");
        push_decimal(out, u64::from(rank));
        out.push(b'}');
    }
}

/// The `origin` id of a received frame, if it has the server's shape.
pub(crate) fn origin_of(frame: &[u8]) -> Option<Id> {
    if frame.len() < BODY_AT
        || !frame.starts_with(ORIGIN_PREFIX)
        || &frame[BODY_AT - 2..BODY_AT] != b"\","
    {
        return None;
    }
    let id: Id = frame[ORIGIN_PREFIX.len()..BODY_AT - 2].try_into().ok()?;
    id.iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(id)
}

/// What a frame claims to be: handshake, side and rank read from its content.
pub(crate) fn tag_of(frame: &[u8]) -> Option<Tag> {
    let text = std::str::from_utf8(frame).ok()?;
    let rank = text
        .rsplit_once(",\"rank\":")?
        .1
        .strip_suffix('}')?
        .parse()
        .ok()?;
    let (number, side) = if let Some((_, rest)) = text.split_once("\\r\\no=") {
        // Description: `o=<side>bench <number> 2 IN IP4 …`.
        let side = rest.bytes().next()?;
        (
            rest.strip_prefix(char::from(side))?
                .strip_prefix("bench ")?
                .get(..NUMBER_WIDTH)?,
            side,
        )
    } else {
        let rest = text.split_once("\"candidate\":\"candidate:")?.1;
        let side = rest.split_once(" ufrag ")?.1.bytes().next()?;
        (rest.get(..NUMBER_WIDTH)?, side)
    };
    let side = match side {
        b'n' => Side::Newcomer,
        b'a' => Side::Answerer,
        _ => return None,
    };
    Some(Tag {
        handshake: number.parse().ok()?,
        side,
        rank,
    })
}

fn padded(n: u32) -> [u8; NUMBER_WIDTH] {
    let mut out = [b'0'; NUMBER_WIDTH];
    let mut n = n;
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A realistic data-channel-only SDP of exactly `len` bytes (before JSON escaping),
/// escaped for a JSON string, with the offsets of the number and side placeholders.
fn sdp_template(len: usize) -> (Vec<u8>, Vec<usize>, Vec<usize>) {
    const NUMBER: &str = "##########";
    const SIDE: &str = "@";
    let mut sdp = format!(
        "v=0\r\no={SIDE}bench {NUMBER} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         a=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n\
         m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
         a=ice-ufrag:{SIDE}{NUMBER}\r\na=ice-pwd:benchbenchbenchbenchbenc\r\n\
         a=ice-options:trickle\r\na=fingerprint:sha-256 \
         5B:0C:8E:8A:39:27:36:6C:AB:1F:9A:38:28:F2:9F:3E:1A:44:76:2B:CB:6E:23:3A:37:0D:6E:8B:5A:61:0A:93\r\n\
         a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n"
    );
    let mut line = 0;
    while sdp.len() < len {
        let _ = write!(sdp, "a=x-bench-padding-{line:03}:");
        while sdp.len() % 64 != 62 {
            sdp.push('p');
        }
        sdp.push_str("\r\n");
        line += 1;
    }
    sdp.truncate(len);
    let mut escaped = Vec::with_capacity(len + len / 16);
    let (mut number_at, mut side_at) = (Vec::new(), Vec::new());
    let bytes = sdp.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(NUMBER.as_bytes()) {
            number_at.push(escaped.len());
            escaped.extend_from_slice(&[b'0'; NUMBER_WIDTH]);
            i += NUMBER_WIDTH;
            continue;
        }
        match bytes[i] {
            b'\r' => escaped.extend_from_slice(b"\\r"),
            b'\n' => escaped.extend_from_slice(b"\\n"),
            b'@' => {
                side_at.push(escaped.len());
                escaped.push(b'n');
            }
            b => escaped.push(b),
        }
        i += 1;
    }
    (escaped, number_at, side_at)
}

/// `"destination":null`, or `"destination":"ID"` with the id as given.
pub(crate) fn destination_field(out: &mut Vec<u8>, to: Option<&[u8]>) {
    out.extend_from_slice(b"\"destination\":");
    match to {
        None => out.extend_from_slice(b"null"),
        Some(id) => {
            out.push(b'"');
            out.extend_from_slice(id);
            out.push(b'"');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &Id = b"0123456789abcdef0123456789abcdef";
    const B: &Id = b"fedcba9876543210fedcba9876543210";

    fn received(sent: &[u8], origin: &Id) -> Vec<u8> {
        let body = sent
            .strip_prefix(b"{\"origin\":null,")
            .expect("client frame");
        let mut out = b"{\"origin\":\"".to_vec();
        out.extend_from_slice(origin);
        out.extend_from_slice(b"\",");
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn frames_are_valid_json_in_js_key_order_with_exact_sdp_length() {
        let script = Script::new(4, 2, 1500);
        let mut out = Vec::new();
        script.outgoing(&mut out, 42, Side::Newcomer, 0, None);
        let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(value["signal"]["type"], "offer");
        assert_eq!(value["signal"]["sdp"].as_str().map(str::len), Some(1500));
        assert_eq!(value["rank"], 0);
        assert!(value["origin"].is_null() && value["destination"].is_null());
        script.outgoing(&mut out, 42, Side::Answerer, 3, Some(A));
        let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(value["destination"], std::str::from_utf8(A).expect("ascii"));
        assert!(
            value["signal"]["candidate"]["candidate"]
                .as_str()
                .is_some_and(|c| c.starts_with("candidate:0000000042 "))
        );
    }

    #[test]
    fn check_accepts_the_relayed_frame_and_classifies_others() {
        let script = Script::new(4, 2, 600);
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let tag = |handshake, side, rank| Tag {
            handshake,
            side,
            rank,
        };
        script.outgoing(&mut out, 7, Side::Answerer, 0, Some(B));
        let frame = received(&out, A);
        assert_eq!(origin_of(&frame), Some(*A));
        assert_eq!(tag_of(&frame), Some(tag(7, Side::Answerer, 0)));
        let expect = tag(7, Side::Answerer, 0);
        assert_eq!(
            script.check(&frame, &mut scratch, A, expect, Some(B)),
            Ok(())
        );
        assert_eq!(
            script.check(&frame, &mut scratch, B, expect, Some(B)),
            Err(Mismatch::Origin)
        );
        assert_eq!(
            script.check(&frame, &mut scratch, A, expect, Some(A)),
            Err(Mismatch::Altered)
        );
        assert_eq!(
            script.check(&frame, &mut scratch, A, tag(8, Side::Answerer, 0), Some(B)),
            Err(Mismatch::Misrouted(Some(expect)))
        );
        script.outgoing(&mut out, 7, Side::Answerer, 2, Some(B));
        let frame = received(&out, A);
        assert_eq!(
            script.check(&frame, &mut scratch, A, tag(7, Side::Answerer, 1), Some(B)),
            Err(Mismatch::OutOfOrder {
                got: 2,
                expected: 1
            })
        );
        assert_eq!(tag_of(&frame), Some(tag(7, Side::Answerer, 2)));
    }

    #[test]
    fn tiny_sdps_still_carry_the_tag() {
        let script = Script::new(1, 1, 10);
        let mut out = Vec::new();
        script.outgoing(&mut out, 123_456, Side::Newcomer, 0, None);
        let frame = received(&out, A);
        assert_eq!(
            tag_of(&frame).map(|t| t.handshake),
            Some(123_456),
            "{}",
            String::from_utf8_lossy(&frame)
        );
    }
}
