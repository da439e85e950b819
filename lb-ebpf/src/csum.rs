//! One's-complement checksum arithmetic (RFC 1071, RFC 1624).
//!
//! Every value is a raw 16-bit word as it sits in the packet, loaded in host order:
//! one's-complement sums do not care about byte order, so nothing is swapped.

/// Folds a 32-bit sum of 16-bit words into 16 bits with end-around carry.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The sum of the two halves of a 32-bit word.
#[inline(always)]
pub fn words(v: u32) -> u32 {
    (v & 0xffff) + (v >> 16)
}

/// What replacing `old` by `new` adds to a checksum (RFC 1624, eqn. 3: ~m + m').
#[inline(always)]
pub fn diff32(old: u32, new: u32) -> u32 {
    words(!old) + words(new)
}

#[inline(always)]
pub fn diff16(old: u16, new: u16) -> u32 {
    (!old) as u32 + new as u32
}

/// Applies a difference to a complete checksum: C' = ~(~C + diff).
#[inline(always)]
pub fn apply(check: u16, diff: u32) -> u16 {
    !fold((!check) as u32 + fold(diff) as u32)
}
