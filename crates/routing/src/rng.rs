//! Randomness as an explicit input, so every routing decision can be replayed in a test.

/// A source of uniformly distributed 64-bit values.
///
/// Any `FnMut() -> u64` closure is one, so callers can plug in whatever generator they keep.
pub trait Rng {
    fn next_u64(&mut self) -> u64;

    /// A value in `0..n` (0 when `n` is 0), by Lemire's multiply-shift: no division, and
    /// the bias is at most n / 2^64.
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as usize
    }
}

impl<F: FnMut() -> u64> Rng for F {
    fn next_u64(&mut self) -> u64 {
        self()
    }
}

/// SplitMix64: tiny, fast, and statistically good enough for load balancing. Not for secrets.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }
}

impl Rng for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_and_below_stays_in_range() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let i = a.below(5);
            assert!(i < 5);
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s), "every value of 0..5 shows up");
        assert_eq!(a.below(0), 0);
    }

    #[test]
    fn closures_are_sources() {
        let mut n = 0u64;
        let mut f = || {
            n += 1;
            n
        };
        assert_eq!(Rng::next_u64(&mut f), 1);
        assert_eq!(f.below(1), 0);
        // u64::MAX maps to the top of the range.
        let mut max = || u64::MAX;
        assert_eq!(max.below(10), 9);
    }
}
