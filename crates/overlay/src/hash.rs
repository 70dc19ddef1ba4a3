//! Deterministic choice of the child a delegated request goes to.
//!
//! webrtc-tree-overlay picks slot `hash31(int(origin[0..6], 16) XOR node_id) % max_degree`,
//! so the offer and every later candidate of one newcomer take the same path. The choice
//! is local to each node (never on the wire); we reproduce the JS function exactly anyway,
//! so mixed trees behave the same whichever kind of node delegates.

/// Robert Jenkins' 32-bit integer hash, masked to 31 bits after every step, as
/// webrtc-tree-overlay's `hash31`.
#[must_use]
pub(crate) fn hash31(mut a: u32) -> u32 {
    const MASK: u32 = 0x7fff_ffff;
    a = a.wrapping_add(0x7ed5_5d16).wrapping_add(a << 12) & MASK;
    a = (a ^ 0xc761_c23c ^ (a >> 19)) & MASK;
    a = a.wrapping_add(0x1656_67b1).wrapping_add(a << 5) & MASK;
    a = (a.wrapping_add(0xd3a2_646c) ^ (a << 9)) & MASK;
    a = a.wrapping_add(0xfd70_46c5).wrapping_add(a << 3) & MASK;
    a = (a ^ 0xb55a_4f09 ^ (a >> 16)) & MASK;
    a
}

/// The slot (`0..max_degree`) that requests from `origin` are delegated to by the node
/// with local id `node_id`.
#[must_use]
pub(crate) fn slot_for(origin: &str, node_id: u32, max_degree: usize) -> usize {
    // parseInt(origin.slice(0, 6), 16): the longest hex prefix of the first 6 characters,
    // NaN (which XOR turns into 0) when there is none.
    let prefix: String = origin
        .chars()
        .take(6)
        .take_while(char::is_ascii_hexdigit)
        .collect();
    let value = u32::from_str_radix(&prefix, 16).unwrap_or(0);
    let hash = usize::try_from(hash31(value ^ node_id)).unwrap_or(0);
    hash % max_degree.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_js_vectors() {
        let vectors = [
            (0, 1_800_296_743),
            (1, 881_230_262),
            (42, 1_128_512_368),
            (4_294_967_295, 2_120_532_354),
            (123_456_789, 1_504_419_361),
        ];
        for (input, expected) in vectors {
            assert_eq!(hash31(input), expected, "hash31({input})");
        }
    }

    #[test]
    fn slots_are_deterministic_and_in_range() {
        let origin = "96e030c4f365189090174452ad4ecd06";
        let slot = slot_for(origin, 123_456, 3);
        assert!(slot < 3);
        assert_eq!(slot_for(origin, 123_456, 3), slot);
        assert_eq!(
            slot,
            usize::try_from(hash31(0x96e030 ^ 123_456)).expect("fits") % 3
        );
        // Different origins spread over the slots.
        let used: std::collections::HashSet<_> = (0..64u32)
            .map(|i| slot_for(&format!("{:06x}", i * 0x3_1337), 7, 4))
            .collect();
        assert_eq!(used.len(), 4);
        // Odd origins never panic.
        assert!(slot_for("", 1, 0) == 0 && slot_for("zz", 1, 5) < 5);
    }
}
