//! The opening handshake's `Sec-WebSocket-Key` check and `Sec-WebSocket-Accept` key.

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

/// The GUID RFC 6455 appends to `Sec-WebSocket-Key` before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value answering a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Whether `key` is a valid `Sec-WebSocket-Key`: the base64 of a 16-byte nonce
/// (RFC 6455 section 4.2.1), in canonical form (padded, no stray bits; RFC 4648
/// section 3.5).
#[must_use]
pub fn is_valid_key(key: &[u8]) -> bool {
    // 16 bytes are 24 characters, the last two `==`; 18 bytes of room is what the
    // decoder asks for 24 characters.
    let mut nonce = [0u8; 18];
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode_slice(key, &mut nonce)
            .is_ok_and(|len| len == 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_base64_of_16_bytes_is_a_key() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_valid_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        for bad in [
            &b""[..],
            b"short",
            b"!!!!!!!!!!!!!!!!!!!!!!==",  // not base64
            b"dGhlIHNhbXBsZSBub25jZR==",  // non-zero bits after the 16th byte
            b"AAAAAAAAAAAAAAAAAAAAAAA=",  // 17 bytes
            b"AAAAAAAAAAAAAAAAAAAAAAAA",  // 18 bytes
            b"dGhlIHNhbXBsZSBub25jZQ",    // unpadded
            b"dGhlIHNhbXBsZSBub25jZQ==A", // 25 characters
            b"dGhlIHNhbXBsZSBub25jZQ=\n",
            b"dGhlIHNhbXBsZSBub25jZQ-_", // URL-safe alphabet
        ] {
            assert!(!is_valid_key(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
