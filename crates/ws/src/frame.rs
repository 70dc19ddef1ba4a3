//! Frames: opcodes, headers, encoding, masking, and what a frame can get wrong.

/// Frame opcodes (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// Continues a fragmented message.
    Continuation = 0x0,
    /// A text frame (UTF-8).
    Text = 0x1,
    /// A binary frame.
    Binary = 0x2,
    /// Starts the closing handshake.
    Close = 0x8,
    /// A ping, answered with a pong carrying the same payload.
    Ping = 0x9,
    /// A pong.
    Pong = 0xa,
}

impl OpCode {
    /// The opcode in the low four bits of a frame's first byte.
    ///
    /// # Errors
    /// [`FrameError::UnknownOpcode`] for the values RFC 6455 reserves.
    pub fn from_bits(bits: u8) -> Result<Self, FrameError> {
        Ok(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xa => Self::Pong,
            other => return Err(FrameError::UnknownOpcode(other)),
        })
    }

    /// Whether this is a control frame (close, ping, pong), which may not be fragmented
    /// and carries at most 125 bytes.
    #[must_use]
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Close status codes (RFC 6455 section 7.4.1) for the errors a [`FrameError`] stands
/// for.
pub mod status {
    /// The peer broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message (or close reason) is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message is larger than the endpoint accepts.
    pub const TOO_BIG: u16 = 1009;
}

/// Largest payload of a control frame.
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Why a frame or message breaks the protocol or a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A reserved bit is set (no extension was negotiated).
    #[error("reserved bits set")]
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A control frame is fragmented or longer than 125 bytes.
    #[error("invalid control frame")]
    InvalidControl,
    /// A client frame is not masked.
    #[error("unmasked client frame")]
    Unmasked,
    /// A continuation without a message to continue, or a new message inside one.
    #[error("bad fragmentation")]
    BadFragmentation,
    /// A close frame with a 1-byte payload or a status code that may not be sent.
    #[error("invalid close frame")]
    InvalidClose,
    /// A text message (or close reason) is not UTF-8.
    #[error("text is not UTF-8")]
    InvalidUtf8,
    /// A 64-bit payload length with its most significant bit set, which RFC 6455
    /// section 5.2 forbids: a broken frame, not merely a big one.
    #[error("64-bit payload length with the most significant bit set")]
    InvalidLength,
    /// A frame or message longer than the limit.
    #[error("message larger than {limit} bytes")]
    TooBig {
        /// The limit in bytes.
        limit: usize,
    },
}

impl FrameError {
    /// The close code this error is answered with.
    pub fn close_code(self) -> u16 {
        match self {
            Self::InvalidUtf8 => status::INVALID_PAYLOAD,
            Self::TooBig { .. } => status::TOO_BIG,
            _ => status::PROTOCOL_ERROR,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Whether this is the last frame of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The masking key, for frames sent by a client.
    pub mask: Option<[u8; 4]>,
    /// Bytes of the header itself.
    pub len: usize,
    /// Bytes of the payload after it.
    pub payload_len: u64,
}

/// Parses the frame header at the start of `buf`: `Ok(None)` until all of it is there.
///
/// # Errors
/// [`FrameError`] for reserved bits, unknown opcodes, oversized or fragmented control
/// frames, and 64-bit lengths with the most significant bit set.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_bits(b0 & 0x0f)?;
    let masked = b1 & 0x80 != 0;
    let (len_bytes, payload_len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (2, u64::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            // "the most significant bit MUST be 0" (RFC 6455 section 5.2).
            Some(b) if b[0] & 0x80 != 0 => return Err(FrameError::InvalidLength),
            Some(b) => (8, u64::from_be_bytes(b)),
            None => return Ok(None),
        },
        n => (0, u64::from(n)),
    };
    if opcode.is_control() && (!fin || payload_len > MAX_CONTROL_PAYLOAD) {
        return Err(FrameError::InvalidControl);
    }
    let mut len = 2 + len_bytes;
    let mask = if masked {
        let Some(key) = buf.get(len..len + 4) else {
            return Ok(None);
        };
        len += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len,
        payload_len,
    }))
}

/// Appends one unfragmented frame to `out`, masked with `mask` if given (clients mask,
/// servers do not).
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | opcode as u8);
    let len = payload.len();
    if let Ok(short) = u8::try_from(len)
        && short < 126
    {
        out.push(mask_bit | short);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], mask);
        }
        None => out.extend_from_slice(payload),
    }
}

/// Appends a close frame with `code` and `reason` (the reason is cut to fit a control
/// frame), or with no status at all when `code` is `None`.
pub fn encode_close(out: &mut Vec<u8>, code: Option<u16>, reason: &str) {
    let mut payload = Vec::new();
    if let Some(code) = code {
        payload.extend_from_slice(&code.to_be_bytes());
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
    }
    encode_frame(out, OpCode::Close, &payload, None);
}

/// XORs `data` with the 4-byte `mask` (masking and unmasking are the same).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the mask index restarts at 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Whether an endpoint may send `code` in a close frame (RFC 6455 section 7.4).
pub(crate) fn may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
