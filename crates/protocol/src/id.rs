//! Ids of `/join` sockets: 32 lowercase hex characters (128 random bits), as the JS server
//! produces with `crypto.randomBytes(16)`.

use std::fmt;
use std::str::FromStr;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// Length of an id in hex characters.
pub const ID_LEN: usize = 32;

/// Hex characters of an id that name a cluster instance (see [`PeerId::tagged`]).
pub const TAG_LEN: usize = 4;

/// The id of one `/join` socket, as 32 lowercase hex ASCII bytes.
///
/// Kept as fixed-size bytes rather than a `String`: ids are hashed and compared on every
/// relayed message, and a `Copy` array needs no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; ID_LEN]);

/// Why a string is not a [`PeerId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a peer id is 32 lowercase hex characters")]
pub struct PeerIdError;

impl PeerId {
    /// The id made of these 16 bytes, hex-encoded.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; ID_LEN];
        for (i, b) in bytes.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        Self(out)
    }

    /// The same id with its first [`TAG_LEN`] hex characters replaced by `tag`: a
    /// cluster names the instance that holds a socket inside the socket's id, so a
    /// message for it is routed with no lookup. The other 112 bits stay random.
    #[must_use]
    pub fn tagged(mut self, tag: u16) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, slot) in self.0[..TAG_LEN].iter_mut().enumerate() {
            let nibble = (tag >> (12 - 4 * i)) & 0x0f;
            *slot = HEX[usize::from(nibble)];
        }
        self
    }

    /// The instance tag in the first [`TAG_LEN`] hex characters (see
    /// [`PeerId::tagged`]). Every id has one; only a cluster gives it a meaning.
    #[must_use]
    pub fn tag(&self) -> u16 {
        self.0[..TAG_LEN].iter().fold(0u16, |tag, &c| {
            let nibble = match c {
                b'0'..=b'9' => c - b'0',
                _ => c - b'a' + 10,
            };
            (tag << 4) | u16::from(nibble)
        })
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Every constructor only stores ASCII hex digits, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; ID_LEN] = s.as_bytes().try_into().map_err(|_| PeerIdError)?;
        if bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(bytes))
        } else {
            Err(PeerIdError)
        }
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.as_str())
    }
}

impl serde::Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Draws ids from a ChaCha20 CSPRNG.
///
/// [`IdGenerator::from_os`] seeds it from the operating system; [`IdGenerator::seeded`]
/// gives a deterministic sequence for tests (`--seed N`).
pub struct IdGenerator {
    rng: ChaCha20Rng,
}

impl fmt::Debug for IdGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the generator's state: it would let a reader predict ids.
        f.write_str("IdGenerator { .. }")
    }
}

/// The operating system could not provide a random seed.
#[derive(Debug, thiserror::Error)]
#[error("cannot seed the id generator from the operating system: {0}")]
pub struct SeedError(getrandom::Error);

impl IdGenerator {
    /// A generator seeded with 256 bits from the operating system.
    ///
    /// # Errors
    /// When the OS random source is unavailable.
    pub fn from_os() -> Result<Self, SeedError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(SeedError)?;
        Ok(Self {
            rng: ChaCha20Rng::from_seed(seed),
        })
    }

    /// A deterministic generator: the same `seed` always gives the same ids.
    #[must_use]
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// The next id.
    pub fn next_id(&mut self) -> PeerId {
        let mut bytes = [0u8; 16];
        self.rng.fill_bytes(&mut bytes);
        PeerId::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_replaces_the_first_four_hex_characters_only() {
        let id = IdGenerator::seeded(3).next_id();
        for tag in [0u16, 1, 0x00ff, 0xabcd, u16::MAX] {
            let tagged = id.tagged(tag);
            assert_eq!(tagged.tag(), tag);
            assert_eq!(tagged.as_str()[TAG_LEN..], id.as_str()[TAG_LEN..]);
            assert_eq!(&tagged.as_str()[..TAG_LEN], format!("{tag:04x}"));
            assert_eq!(tagged.as_str().parse::<PeerId>(), Ok(tagged));
        }
    }

    #[test]
    fn ids_are_32_lowercase_hex() {
        let mut ids = IdGenerator::from_os().expect("os rng");
        for _ in 0..100 {
            let id = ids.next_id();
            assert_eq!(id.as_str().len(), 32);
            assert!(
                id.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_eq!(id.as_str().parse::<PeerId>(), Ok(id));
        }
    }

    #[test]
    fn seeded_sequences_repeat_and_differ_by_seed() {
        let a: Vec<_> = (0..5)
            .map({
                let mut g = IdGenerator::seeded(42);
                move |_| g.next_id()
            })
            .collect();
        let b: Vec<_> = (0..5)
            .map({
                let mut g = IdGenerator::seeded(42);
                move |_| g.next_id()
            })
            .collect();
        let c: Vec<_> = (0..5)
            .map({
                let mut g = IdGenerator::seeded(43);
                move |_| g.next_id()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let unique: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(unique.len(), 5);
    }

    #[test]
    fn os_seeded_generators_differ() {
        let a = IdGenerator::from_os().expect("os rng").next_id();
        let b = IdGenerator::from_os().expect("os rng").next_id();
        assert_ne!(a, b);
    }

    #[test]
    fn rejects_non_ids() {
        for bad in [
            "",
            "abc",
            &"A".repeat(32),
            &"g".repeat(32),
            &"a".repeat(33),
            "__proto__",
        ] {
            assert_eq!(bad.parse::<PeerId>(), Err(PeerIdError), "{bad:?}");
        }
    }

    #[test]
    fn hex_encoding() {
        let id = PeerId::from_bytes([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 0, 0, 0, 0, 0, 0xff, 0x10,
        ]);
        assert_eq!(id.as_str(), "0123456789abcdef000000000000ff10");
        assert_eq!(
            serde_json::to_string(&id).expect("ser"),
            "\"0123456789abcdef000000000000ff10\""
        );
    }
}
