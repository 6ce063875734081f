//! Request ids: time-ordered (like UUIDv7) so request-log inserts append to the index.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::now_ms;

static SEED: OnceLock<u64> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn seed() -> u64 {
    *SEED.get_or_init(|| {
        let mut b = [0u8; 8];
        // A fixed seed still gives unique ids (the counter), only less unpredictable ones.
        let _ = getrandom::fill(&mut b);
        u64::from_le_bytes(b)
    })
}

/// SplitMix64's output function: a bijection, so distinct inputs give distinct outputs.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fresh 64-bit random value (not for secrets).
pub(crate) fn random_u64() -> u64 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    mix(seed().wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// 32 lowercase hex characters: 48 bits of Unix milliseconds, then 80 bits that are unique
/// within the process (a mixed counter) and random across processes.
pub fn request_id() -> String {
    request_id_at(now_ms())
}

/// [`request_id`] for a request that arrived at `now_ms` (the caller read the clock already).
pub(crate) fn request_id_at(now_ms: i64) -> String {
    let ms = u64::try_from(now_ms).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r = mix(seed() ^ n);
    // Written into one exact-size buffer: one allocation per request, not a growing one.
    let mut out = String::with_capacity(32);
    let _ = write!(out, "{ms:012x}{:04x}{r:016x}", n & 0xFFFF);
    out
}

/// A random UUIDv4-shaped string (fresh Codex session ids on failover).
pub(crate) fn uuid_v4() -> String {
    let a = random_u64();
    let b = random_u64();
    let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000;
    let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_unique_hex_and_time_ordered() {
        let ids: Vec<String> = (0..1000).map(|_| request_id()).collect();
        assert!(
            ids.iter()
                .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000);
        // The time prefix never goes backwards.
        assert!(ids.windows(2).all(|w| w[0][..12] <= w[1][..12]));
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid_v4());
    }
}
