//! The server-side decoder: masked client frames in, messages and control frames out.

use std::ops::ControlFlow;

use crate::frame::{FrameError, Header, OpCode, apply_mask, may_be_sent, parse_header};

/// One complete message, control frame, or piece of a fragmented message a client
/// sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A frame of a fragmented message that does not complete it (the message comes
    /// whole once its last frame arrives). Reported so that every frame can be counted
    /// against a budget: empty continuation frames cost a peer nothing to send.
    Fragment,
    /// A text message, checked to be UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping with its payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame with its status code, if it has one.
    Close(Option<u16>),
}

/// Decodes the masked frames a client sends, reassembling fragmented messages, and
/// enforcing a size limit per message.
///
/// Idle, it owns no heap memory. It stops at the first close frame; a protocol error
/// is final (the connection must be closed with [`FrameError::close_code`]).
#[derive(Debug)]
pub struct Decoder {
    /// The bytes of an incomplete frame.
    partial: Vec<u8>,
    /// The payload so far of a fragmented message.
    message: Vec<u8>,
    /// The opcode of the fragmented message in progress.
    fragmented: Option<OpCode>,
    max_message: usize,
}

impl Decoder {
    /// A decoder for messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            partial: Vec::new(),
            message: Vec::new(),
            fragmented: None,
            max_message,
        }
    }

    /// Whether part of a frame or message is waiting for more bytes.
    pub fn is_mid_message(&self) -> bool {
        !self.partial.is_empty() || self.fragmented.is_some()
    }

    /// Bytes held for an incomplete frame or message: what a peer that stops halfway
    /// makes the decoder keep (at most one frame and one message).
    pub fn buffered(&self) -> usize {
        self.partial.capacity() + self.message.capacity()
    }

    /// Decodes `input` (the bytes just read, unmasked in place) and calls `on` for each
    /// complete message or control frame, until `on` breaks or a close frame arrives
    /// (both give `Ok(ControlFlow::Break(()))`; the rest of the input is ignored).
    ///
    /// # Errors
    /// [`FrameError`] when the input breaks the protocol or the size limit.
    pub fn decode(
        &mut self,
        input: &mut [u8],
        mut on: impl FnMut(Inbound<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, FrameError> {
        if self.partial.is_empty() {
            let (used, flow) = self.frames(input, &mut on)?;
            if flow.is_continue() && used < input.len() {
                self.partial.extend_from_slice(&input[used..]);
            }
            return Ok(flow);
        }
        let mut partial = std::mem::take(&mut self.partial);
        partial.extend_from_slice(input);
        let (used, flow) = self.frames(&mut partial, &mut on)?;
        if flow.is_continue() && used < partial.len() {
            partial.drain(..used);
            self.partial = partial;
        }
        Ok(flow)
    }

    /// Decodes the complete frames at the start of `buf`; returns the bytes used.
    fn frames(
        &mut self,
        buf: &mut [u8],
        on: &mut impl FnMut(Inbound<'_>) -> ControlFlow<()>,
    ) -> Result<(usize, ControlFlow<()>), FrameError> {
        let mut at = 0;
        loop {
            let Some(header) = parse_header(&buf[at..])? else {
                return Ok((at, ControlFlow::Continue(())));
            };
            let mask = header.mask.ok_or(FrameError::Unmasked)?;
            let limit = FrameError::TooBig {
                limit: self.max_message,
            };
            let payload_len = usize::try_from(header.payload_len).map_err(|_| limit)?;
            let so_far = if header.opcode == OpCode::Continuation {
                self.message.len()
            } else {
                0
            };
            if so_far.saturating_add(payload_len) > self.max_message {
                return Err(limit);
            }
            let start = at + header.len;
            let Some(payload) = buf.get_mut(start..start + payload_len) else {
                return Ok((at, ControlFlow::Continue(())));
            };
            apply_mask(payload, mask);
            at = start + payload_len;
            let flow = self.frame(&header, payload, on)?;
            if flow.is_break() {
                return Ok((at, flow));
            }
        }
    }

    /// Handles one complete, unmasked frame.
    fn frame(
        &mut self,
        header: &Header,
        payload: &[u8],
        on: &mut impl FnMut(Inbound<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, FrameError> {
        match header.opcode {
            OpCode::Close => {
                let code = match payload {
                    [] => None,
                    [_] => return Err(FrameError::InvalidClose),
                    [hi, lo, reason @ ..] => {
                        let code = u16::from_be_bytes([*hi, *lo]);
                        if !may_be_sent(code) {
                            return Err(FrameError::InvalidClose);
                        }
                        std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
                        Some(code)
                    }
                };
                // Whatever `on` says, nothing after a close frame is read.
                let _ = on(Inbound::Close(code));
                Ok(ControlFlow::Break(()))
            }
            OpCode::Ping => Ok(on(Inbound::Ping(payload))),
            OpCode::Pong => Ok(on(Inbound::Pong)),
            OpCode::Continuation => {
                let Some(kind) = self.fragmented else {
                    return Err(FrameError::BadFragmentation);
                };
                self.message.extend_from_slice(payload);
                if !header.fin {
                    return Ok(on(Inbound::Fragment));
                }
                self.fragmented = None;
                // Taken, so the buffer is given back once the message is delivered.
                let message = std::mem::take(&mut self.message);
                deliver(kind, &message, on)
            }
            kind => {
                if self.fragmented.is_some() {
                    return Err(FrameError::BadFragmentation);
                }
                if header.fin {
                    return deliver(kind, payload, on);
                }
                self.fragmented = Some(kind);
                self.message.extend_from_slice(payload);
                Ok(on(Inbound::Fragment))
            }
        }
    }
}

/// Hands a complete data message to `on`.
fn deliver(
    kind: OpCode,
    payload: &[u8],
    on: &mut impl FnMut(Inbound<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, FrameError> {
    if kind == OpCode::Text {
        let text = std::str::from_utf8(payload).map_err(|_| FrameError::InvalidUtf8)?;
        Ok(on(Inbound::Text(text)))
    } else {
        Ok(on(Inbound::Binary(payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_close, encode_frame, status};

    fn client_frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode, payload, Some([0x12, 0x34, 0x56, 0x78]));
        if !fin {
            out[0] &= 0x7f;
        }
        out
    }

    /// Decodes `input` fed in pieces of `step` bytes; returns what came out.
    fn decode_in_steps(
        decoder: &mut Decoder,
        input: &[u8],
        step: usize,
    ) -> Result<Vec<String>, FrameError> {
        let mut seen = Vec::new();
        for piece in input.chunks(step) {
            let mut piece = piece.to_vec();
            let flow = decoder.decode(&mut piece, |inbound| {
                // Fragments are counted by `fragments_are_reported`, not listed here.
                if inbound == Inbound::Fragment {
                    return ControlFlow::Continue(());
                }
                seen.push(match inbound {
                    Inbound::Text(t) => format!("text:{t}"),
                    Inbound::Binary(b) => format!("binary:{}", b.len()),
                    Inbound::Ping(p) => format!("ping:{}", p.len()),
                    Inbound::Pong => "pong".into(),
                    Inbound::Fragment => unreachable!("skipped above"),
                    Inbound::Close(code) => format!("close:{code:?}"),
                });
                ControlFlow::Continue(())
            })?;
            if flow.is_break() {
                break;
            }
        }
        Ok(seen)
    }

    /// A small deterministic generator (xorshift64) for the randomized tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_valid_streams_decode_the_same_however_they_are_split() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..1 + rng.below(8) {
                let len = [0, 1, 125, 126, 300, 70_000][rng.below(6)];
                let text: String = (0..len)
                    .map(|i| char::from(b'a' + (i % 26) as u8))
                    .collect();
                match rng.below(3) {
                    0 => input.extend(client_frame(true, OpCode::Text, text.as_bytes())),
                    1 => {
                        // Fragmented in up to four pieces, a ping between two of them.
                        let cut = |rng: &mut Rng| rng.below(len + 1);
                        let (mut a, mut b) = (cut(&mut rng), cut(&mut rng));
                        if a > b {
                            std::mem::swap(&mut a, &mut b);
                        }
                        input.extend(client_frame(false, OpCode::Text, &text.as_bytes()[..a]));
                        input.extend(client_frame(true, OpCode::Ping, b"p"));
                        expected.push("ping:1".to_owned());
                        let middle = &text.as_bytes()[a..b];
                        input.extend(client_frame(false, OpCode::Continuation, middle));
                        let last = &text.as_bytes()[b..];
                        input.extend(client_frame(true, OpCode::Continuation, last));
                    }
                    _ => {
                        input.extend(client_frame(true, OpCode::Binary, text.as_bytes()));
                        expected.push(format!("binary:{len}"));
                        continue;
                    }
                }
                expected.push(format!("text:{text}"));
            }
            let step = 1 + rng.below(4096);
            let mut decoder = Decoder::new(1 << 20);
            let seen = decode_in_steps(&mut decoder, &input, step).expect("valid stream");
            assert_eq!(seen, expected, "step {step}");
            assert!(!decoder.is_mid_message());
        }
    }

    #[test]
    fn random_garbage_never_panics_and_buffers_at_most_one_frame() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let limit = 4096;
        for _ in 0..2000 {
            let mut decoder = Decoder::new(limit);
            let len = rng.below(3 * limit);
            let mut garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if rng.below(2) == 0 && !garbage.is_empty() {
                garbage[0] = 0x81; // a plausible first byte, so headers get parsed
            }
            for piece in garbage.chunks_mut(1 + rng.below(512)) {
                match decoder.decode(piece, |_| ControlFlow::Continue(())) {
                    Ok(ControlFlow::Continue(())) => {}
                    Ok(ControlFlow::Break(())) | Err(_) => break,
                }
                // An incomplete frame is at most a header and `limit` bytes, plus the
                // rest of one read.
                assert!(
                    decoder.partial.len() <= 14 + limit + 512,
                    "{}",
                    decoder.partial.len()
                );
                assert!(decoder.message.len() <= limit);
            }
        }
    }

    #[test]
    fn frames_round_trip_at_every_length_class_and_split() {
        for len in [0usize, 5, 125, 126, 1500, 65_535, 65_536] {
            let text: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let input = client_frame(true, OpCode::Text, text.as_bytes());
            for step in [1, 7, 1000, input.len()] {
                let mut decoder = Decoder::new(1 << 20);
                let seen = decode_in_steps(&mut decoder, &input, step).expect("valid");
                assert_eq!(seen, [format!("text:{text}")], "len {len} step {step}");
                assert!(!decoder.is_mid_message());
                assert_eq!(
                    decoder.partial.capacity(),
                    0,
                    "idle decoder holds no buffer"
                );
            }
        }
    }

    #[test]
    fn reassembles_fragments_with_interleaved_control_frames() {
        let mut input = client_frame(false, OpCode::Text, b"hel");
        input.extend(client_frame(true, OpCode::Ping, b"p"));
        input.extend(client_frame(false, OpCode::Continuation, b"lo "));
        input.extend(client_frame(true, OpCode::Continuation, "wörld".as_bytes()));
        input.extend(client_frame(true, OpCode::Binary, &[0xff; 3]));
        input.extend(client_frame(true, OpCode::Close, &1000u16.to_be_bytes()));
        input.extend(client_frame(true, OpCode::Text, b"after close"));
        for step in [1, 3, input.len()] {
            let mut decoder = Decoder::new(100);
            let seen = decode_in_steps(&mut decoder, &input, step).expect("valid");
            assert_eq!(
                seen,
                ["ping:1", "text:hello wörld", "binary:3", "close:Some(1000)"],
                "step {step}"
            );
        }
    }

    #[test]
    fn fragments_are_reported_so_every_frame_can_be_counted() {
        let mut input = client_frame(false, OpCode::Text, b"");
        for _ in 0..3 {
            input.extend(client_frame(false, OpCode::Continuation, b""));
        }
        input.extend(client_frame(true, OpCode::Continuation, b"x"));
        let mut events = Vec::new();
        let flow = Decoder::new(10).decode(&mut input, |inbound| {
            events.push(format!("{inbound:?}"));
            ControlFlow::Continue(())
        });
        assert_eq!(flow, Ok(ControlFlow::Continue(())));
        assert_eq!(
            events,
            [
                "Fragment",
                "Fragment",
                "Fragment",
                "Fragment",
                "Text(\"x\")"
            ]
        );
        // A consumer may stop at a fragment.
        let mut again = client_frame(false, OpCode::Text, b"a");
        again.extend(client_frame(true, OpCode::Continuation, b"b"));
        let flow = Decoder::new(10).decode(&mut again, |_| ControlFlow::Break(()));
        assert_eq!(flow, Ok(ControlFlow::Break(())));
    }

    #[test]
    fn utf8_split_across_fragments_is_accepted() {
        let bytes = "é".as_bytes();
        let mut input = client_frame(false, OpCode::Text, &bytes[..1]);
        input.extend(client_frame(true, OpCode::Continuation, &bytes[1..]));
        let seen = decode_in_steps(&mut Decoder::new(10), &input, input.len());
        assert_eq!(seen.expect("valid"), ["text:é"]);
    }

    #[test]
    fn violations_map_to_their_close_codes() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (
                vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'],
                FrameError::Unmasked,
            ),
            (
                client_frame(true, OpCode::Text, &[0xc3, 0x28]),
                FrameError::InvalidUtf8,
            ),
            (
                {
                    let mut f = client_frame(true, OpCode::Text, b"x");
                    f[0] = 0x83;
                    f
                },
                FrameError::UnknownOpcode(3),
            ),
            (
                {
                    let mut f = client_frame(true, OpCode::Text, b"x");
                    f[0] |= 0x40;
                    f
                },
                FrameError::ReservedBits,
            ),
            (
                client_frame(false, OpCode::Ping, b""),
                FrameError::InvalidControl,
            ),
            (
                client_frame(true, OpCode::Ping, &[0; 126]),
                FrameError::InvalidControl,
            ),
            (
                client_frame(true, OpCode::Continuation, b"x"),
                FrameError::BadFragmentation,
            ),
            (
                {
                    let mut f = client_frame(false, OpCode::Text, b"a");
                    f.extend(client_frame(true, OpCode::Text, b"b"));
                    f
                },
                FrameError::BadFragmentation,
            ),
            (
                client_frame(true, OpCode::Close, &[3]),
                FrameError::InvalidClose,
            ),
            (
                client_frame(true, OpCode::Close, &1005u16.to_be_bytes()),
                FrameError::InvalidClose,
            ),
            (
                client_frame(true, OpCode::Text, &[b'a'; 11]),
                FrameError::TooBig { limit: 10 },
            ),
            (
                {
                    let mut f = client_frame(false, OpCode::Text, &[b'a'; 6]);
                    f.extend(client_frame(true, OpCode::Continuation, &[b'a'; 6]));
                    f
                },
                FrameError::TooBig { limit: 10 },
            ),
        ];
        for (input, expected) in cases {
            let got = decode_in_steps(&mut Decoder::new(10), &input, input.len());
            assert_eq!(got, Err(expected), "{input:x?}");
        }
        assert_eq!(
            FrameError::InvalidUtf8.close_code(),
            status::INVALID_PAYLOAD
        );
        assert_eq!(
            FrameError::TooBig { limit: 1 }.close_code(),
            status::TOO_BIG
        );
        assert_eq!(FrameError::Unmasked.close_code(), status::PROTOCOL_ERROR);
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        // Only the header of a 1 MiB frame: refused before its payload arrives.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 20).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let got = decode_in_steps(&mut Decoder::new(1024), &header, header.len());
        assert_eq!(got, Err(FrameError::TooBig { limit: 1024 }));
    }

    #[test]
    fn a_64_bit_length_with_the_top_bit_set_is_a_protocol_error_not_too_big() {
        // However large the limit: RFC 6455 section 5.2 forbids the bit outright.
        for limit in [1024, usize::MAX] {
            let mut header = vec![0x81, 0x80 | 127];
            header.extend_from_slice(&((1u64 << 63) | 5).to_be_bytes());
            header.extend_from_slice(&[1, 2, 3, 4]);
            let got = decode_in_steps(&mut Decoder::new(limit), &header, header.len());
            assert_eq!(got, Err(FrameError::InvalidLength), "limit {limit}");
        }
        assert_eq!(
            FrameError::InvalidLength.close_code(),
            status::PROTOCOL_ERROR
        );
        // The largest length allowed is only too big.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let got = decode_in_steps(&mut Decoder::new(1024), &header, header.len());
        assert_eq!(got, Err(FrameError::TooBig { limit: 1024 }));
    }

    #[test]
    fn server_frames_are_unmasked_and_close_reasons_are_cut_at_a_char_boundary() {
        let mut out = Vec::new();
        encode_frame(&mut out, OpCode::Text, b"hi", None);
        assert_eq!(out, [0x81, 2, b'h', b'i']);
        out.clear();
        encode_close(&mut out, Some(1008), &"é".repeat(100));
        let header = parse_header(&out).expect("valid").expect("complete");
        assert!(header.payload_len <= 125 && header.mask.is_none());
        assert!(std::str::from_utf8(&out[header.len + 2..]).is_ok());
        out.clear();
        encode_close(&mut out, None, "");
        assert_eq!(out, [0x88, 0]);
    }
}
