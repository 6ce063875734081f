//! Rotation counters for the `balanced` strategy, one per (platform key, model), in a map
//! whose size is bounded: the least recently used counter is evicted first.

use std::collections::{HashMap, VecDeque};

use xxhash_rust::xxh3::xxh3_64_with_seed;

#[derive(Debug, Clone, Copy)]
struct Slot {
    counter: u64,
    /// Matches the newest queue entry for this key; older entries are stale.
    stamp: u64,
}

/// Bounded map (key id, model) → next rotation start.
///
/// Keys are stored as 64-bit hashes: two pairs sharing a hash would share a counter, which
/// only makes their rotations move together, never routes wrongly. LRU order is kept with a
/// queue of touches and lazy deletion, so `advance` is amortised O(1).
#[derive(Debug, Clone)]
pub struct BalancedCursor {
    capacity: usize,
    slots: HashMap<u64, Slot>,
    touches: VecDeque<(u64, u64)>,
    next_stamp: u64,
}

impl BalancedCursor {
    /// `capacity` is at least 1.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        BalancedCursor {
            capacity,
            slots: HashMap::with_capacity(capacity.min(1 << 16)),
            touches: VecDeque::new(),
            next_stamp: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The rotation for this request (use it modulo the candidate count), advancing the
    /// counter for the next request with the same key and model.
    pub fn advance(&mut self, key_id: &str, model: &str) -> u64 {
        let key = xxh3_64_with_seed(
            model.as_bytes(),
            xxh3_64_with_seed(key_id.as_bytes(), 0x6261_6c61),
        );
        let stamp = self.next_stamp;
        self.next_stamp = self.next_stamp.wrapping_add(1);
        let current = match self.slots.get_mut(&key) {
            Some(slot) => {
                slot.stamp = stamp;
                let c = slot.counter;
                slot.counter = c.wrapping_add(1);
                c
            }
            None => {
                while self.slots.len() >= self.capacity {
                    self.evict_oldest();
                }
                self.slots.insert(key, Slot { counter: 1, stamp });
                0
            }
        };
        self.touches.push_back((key, stamp));
        if self.touches.len() > self.capacity.saturating_mul(2).max(16) {
            let slots = &self.slots;
            self.touches
                .retain(|(k, s)| slots.get(k).is_some_and(|slot| slot.stamp == *s));
        }
        current
    }

    fn evict_oldest(&mut self) {
        while let Some((k, s)) = self.touches.pop_front() {
            if self.slots.get(&k).is_some_and(|slot| slot.stamp == s) {
                self.slots.remove(&k);
                return;
            }
        }
        // Every live slot has a queue entry, so this is only reached with no slots left;
        // clearing keeps the bound even if that invariant were ever broken.
        self.slots.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_advance_per_key_and_model() {
        let mut c = BalancedCursor::new(8);
        assert!(c.is_empty());
        assert_eq!(c.advance("k1", "m"), 0);
        assert_eq!(c.advance("k1", "m"), 1);
        assert_eq!(c.advance("k1", "other"), 0);
        assert_eq!(c.advance("k2", "m"), 0);
        assert_eq!(c.advance("k1", "m"), 2);
        assert_eq!(c.len(), 3);
        // The pair is hashed unambiguously: ("ab","c") is not ("a","bc").
        assert_eq!(c.advance("ab", "c"), 0);
        assert_eq!(c.advance("a", "bc"), 0);
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = BalancedCursor::new(2);
        assert_eq!(c.capacity(), 2);
        c.advance("a", "m");
        c.advance("b", "m");
        c.advance("a", "m"); // a is now the most recent
        c.advance("c", "m"); // evicts b
        assert_eq!(c.len(), 2);
        assert_eq!(c.advance("a", "m"), 2, "a survived");
        assert_eq!(c.advance("b", "m"), 0, "b was evicted and starts over");
    }

    #[test]
    fn stays_bounded_under_churn() {
        let mut c = BalancedCursor::new(100);
        for i in 0..10_000 {
            c.advance(&format!("k{}", i % 250), "m");
            c.advance("hot", "m");
            assert!(c.len() <= 100);
            assert!(c.touches.len() <= 201);
        }
        // "hot" was touched every other call and never evicted.
        assert_eq!(c.advance("hot", "m"), 10_000);
        assert_eq!(BalancedCursor::new(0).capacity(), 1);
    }
}
