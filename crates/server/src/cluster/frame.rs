//! What crosses the backplane: a small binary header, then (for relayed messages) the
//! relayed text exactly as the sending instance rewrote it. IO-free.
//!
//! ```text
//! byte 0      kind (1 to 5, below)
//! bytes 1-2   the sending instance's tag, big-endian
//! byte 3      length N of the overlay's name (at most 64)
//! 4..4+N      the overlay's name
//! then, by kind:
//!   ToPeer        16 bytes: the destination id (hex decoded), then the message text
//!   ToRoot        16 bytes: the sender's client address (IPv6, IPv4 mapped), then the text
//!   RootClaimed   2 bytes holder tag, 8 bytes epoch (a root connected there)
//!   RootGone      2 bytes holder tag, 8 bytes epoch (that root left or was handed over)
//!   RootReplaced  2 bytes holder tag, 8 bytes epoch (the root of that epoch lost its lease)
//! ```
//!
//! The text is never re-encoded: the receiving instance queues those bytes as they are.

use std::net::{IpAddr, Ipv6Addr};

use bootstrap_protocol::PeerId;

use crate::cluster::lease::{Epoch, InstanceTag, RootAt};
use crate::route::MAX_NAME_LEN;

const TO_PEER: u8 = 1;
const TO_ROOT: u8 = 2;
const ROOT_CLAIMED: u8 = 3;
const ROOT_GONE: u8 = 4;
const ROOT_REPLACED: u8 = 5;

/// A decoded frame, borrowing the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    /// The instance that published it.
    pub(crate) from: InstanceTag,
    /// The overlay it belongs to: nothing crosses overlays.
    pub(crate) overlay: &'a str,
    /// What it carries.
    pub(crate) body: Body<'a>,
}

/// What a frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    /// A message for the `/join` socket with this id.
    ToPeer(PeerId, &'a str),
    /// A message for the overlay's root, from a client at this address (for the root's
    /// per-client shares).
    ToRoot(IpAddr, &'a str),
    /// A root connected at this instance and epoch.
    RootClaimed(RootAt),
    /// The root of this instance and epoch left.
    RootGone(RootAt),
    /// The root of this instance and epoch was replaced by a newer one elsewhere.
    RootReplaced(RootAt),
}

/// Why bytes from the backplane are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// Shorter than its header says.
    #[error("truncated frame")]
    Truncated,
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// The overlay name, destination id or text is not what it must be.
    #[error("malformed frame")]
    Malformed,
}

fn header(out: &mut Vec<u8>, kind: u8, from: InstanceTag, overlay: &str, extra: usize) {
    // Overlay names are at most MAX_NAME_LEN (64) bytes: route.rs refuses others.
    let len = u8::try_from(overlay.len().min(MAX_NAME_LEN)).unwrap_or(u8::MAX);
    out.reserve(4 + overlay.len() + extra);
    out.push(kind);
    out.extend_from_slice(&from.0.to_be_bytes());
    out.push(len);
    out.extend_from_slice(&overlay.as_bytes()[..usize::from(len)]);
}

impl Frame<'_> {
    /// Encodes a message for the `/join` socket `to`.
    pub(crate) fn to_peer(from: InstanceTag, overlay: &str, to: &PeerId, text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, TO_PEER, from, overlay, 16 + text.len());
        out.extend_from_slice(&id_bytes(to));
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// Encodes a message for the root of `overlay`.
    pub(crate) fn to_root(from: InstanceTag, overlay: &str, client: IpAddr, text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, TO_ROOT, from, overlay, 16 + text.len());
        let v6 = match client {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        out.extend_from_slice(&v6.octets());
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// Encodes a root event (`RootClaimed`, `RootGone`, `RootReplaced`).
    pub(crate) fn root_event(from: InstanceTag, overlay: &str, body: &Body<'_>) -> Vec<u8> {
        let (kind, at) = match body {
            Body::RootClaimed(at) => (ROOT_CLAIMED, at),
            Body::RootGone(at) => (ROOT_GONE, at),
            Body::RootReplaced(at) => (ROOT_REPLACED, at),
            Body::ToPeer(..) | Body::ToRoot(..) => return Vec::new(),
        };
        let mut out = Vec::new();
        header(&mut out, kind, from, overlay, 10);
        out.extend_from_slice(&at.instance.0.to_be_bytes());
        out.extend_from_slice(&at.epoch.to_be_bytes());
        out
    }
}

impl<'a> Frame<'a> {
    /// Decodes a frame; never panics, whatever the bytes.
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Self, FrameError> {
        let (&kind, rest) = bytes.split_first().ok_or(FrameError::Truncated)?;
        let (from, rest) = take::<2>(rest)?;
        let (&len, rest) = rest.split_first().ok_or(FrameError::Truncated)?;
        let len = usize::from(len);
        if rest.len() < len {
            return Err(FrameError::Truncated);
        }
        let (overlay, rest) = rest.split_at(len);
        let overlay = std::str::from_utf8(overlay).map_err(|_| FrameError::Malformed)?;
        let text = |bytes: &'a [u8]| std::str::from_utf8(bytes).map_err(|_| FrameError::Malformed);
        let root_at = |rest: &'a [u8]| -> Result<RootAt, FrameError> {
            let (tag, rest) = take::<2>(rest)?;
            let (epoch, _) = take::<8>(rest)?;
            Ok(RootAt {
                instance: InstanceTag(u16::from_be_bytes(tag)),
                epoch: Epoch::from_be_bytes(epoch),
            })
        };
        let body = match kind {
            TO_PEER => {
                let (id, rest) = take::<16>(rest)?;
                Body::ToPeer(PeerId::from_bytes(id), text(rest)?)
            }
            TO_ROOT => {
                let (ip, rest) = take::<16>(rest)?;
                let v6 = Ipv6Addr::from(ip);
                let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
                Body::ToRoot(ip, text(rest)?)
            }
            ROOT_CLAIMED => Body::RootClaimed(root_at(rest)?),
            ROOT_GONE => Body::RootGone(root_at(rest)?),
            ROOT_REPLACED => Body::RootReplaced(root_at(rest)?),
            other => return Err(FrameError::Kind(other)),
        };
        Ok(Self {
            from: InstanceTag(u16::from_be_bytes(from)),
            overlay,
            body,
        })
    }
}

fn take<const N: usize>(bytes: &[u8]) -> Result<([u8; N], &[u8]), FrameError> {
    if bytes.len() < N {
        return Err(FrameError::Truncated);
    }
    let (head, rest) = bytes.split_at(N);
    let head: [u8; N] = head.try_into().map_err(|_| FrameError::Truncated)?;
    Ok((head, rest))
}

/// The 16 bytes a 32-hex id encodes.
fn id_bytes(id: &PeerId) -> [u8; 16] {
    let hex = id.as_str().as_bytes();
    let nibble = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        _ => c.wrapping_sub(b'a').wrapping_add(10) & 0x0f,
    };
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = (nibble(hex[2 * i]) << 4) | nibble(hex[2 * i + 1]);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use bootstrap_protocol::IdGenerator;

    use super::*;

    #[test]
    fn frames_round_trip_and_carry_the_text_verbatim() {
        let id = IdGenerator::seeded(1).next_id().tagged(0xbeef);
        let text =
            r#"{"origin":"x","destination":"y","signal":{"type":"offer","sdp":"é"},"rank":0}"#;
        let from = InstanceTag(7);
        let bytes = Frame::to_peer(from, "default", &id, text);
        assert_eq!(bytes.len(), 4 + 7 + 16 + text.len(), "a 27-byte header");
        assert_eq!(
            Frame::decode(&bytes),
            Ok(Frame {
                from,
                overlay: "default",
                body: Body::ToPeer(id, text)
            })
        );
        for ip in [
            IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            "2001:db8::1".parse().expect("ip"),
        ] {
            let bytes = Frame::to_root(from, "o", ip, text);
            assert_eq!(
                Frame::decode(&bytes).expect("decodes").body,
                Body::ToRoot(ip, text)
            );
        }
        let at = RootAt {
            instance: InstanceTag(9),
            epoch: 1 << 40,
        };
        for body in [
            Body::RootClaimed(at),
            Body::RootGone(at),
            Body::RootReplaced(at),
        ] {
            let bytes = Frame::root_event(from, "o", &body);
            assert_eq!(Frame::decode(&bytes).expect("decodes").body, body);
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let id = IdGenerator::seeded(1).next_id();
        let good = Frame::to_peer(InstanceTag(1), "default", &id, "{}");
        for cut in 0..good.len() - 2 {
            assert!(Frame::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(Frame::decode(&[9, 0, 0, 0]), Err(FrameError::Kind(9)));
        assert_eq!(
            Frame::decode(&[1, 0, 0, 1, 0xff]),
            Err(FrameError::Malformed)
        );
        let mut bad_text = good;
        bad_text.push(0xff);
        assert_eq!(Frame::decode(&bad_text), Err(FrameError::Malformed));
        // Arbitrary bytes.
        let mut x: u32 = 1;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..(x % 40))
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = Frame::decode(&bytes);
        }
    }
}
