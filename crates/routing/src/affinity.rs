//! Rendezvous (highest-random-weight) hashing: a conversation anchor picks, among a set of
//! accounts, the one whose `hash(anchor, account)` is highest.
//!
//! Every gateway replica computes the same answer from the same set without sharing state,
//! and removing an account only moves the anchors that picked it (every other account's
//! weight is unchanged, so its winners still win). xxh3 is specified bit for bit, so the
//! weights are identical across processes, machines and releases; std's `RandomState` would
//! not be.

use xxhash_rust::xxh3::xxh3_64;

/// Hash an anchor once per decision; weights are derived from it per account.
pub fn anchor_hash(anchor: &str) -> u64 {
    xxh3_64(anchor.as_bytes())
}

/// Hash an account id once (per snapshot, in the prefilter), so a decision over thousands of
/// accounts never reads their ids.
pub fn account_hash(account_id: &str) -> u64 {
    xxh3_64(account_id.as_bytes())
}

/// The weight of an account (by [`account_hash`]) for an anchor (by [`anchor_hash`]): the
/// splitmix64 finaliser over both, a few multiplications instead of hashing the id again.
pub fn weight(anchor_hash: u64, account_hash: u64) -> u64 {
    let mut z = anchor_hash ^ account_hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The weight of `account_id` for an anchor.
pub fn rendezvous_weight(anchor_hash: u64, account_id: &str) -> u64 {
    weight(anchor_hash, account_hash(account_id))
}

/// The position (in `ids`) of the account `anchor` maps to; `None` for an empty set.
/// Equal weights (astronomically rare) go to the smaller id, so the answer does not depend
/// on the order of `ids`.
pub fn rendezvous_pick<'a>(anchor: &str, ids: impl IntoIterator<Item = &'a str>) -> Option<usize> {
    let h = anchor_hash(anchor);
    let mut best: Option<(usize, u64, &str)> = None;
    for (i, id) in ids.into_iter().enumerate() {
        let w = rendezvous_weight(h, id);
        let better = match best {
            None => true,
            Some((_, bw, bid)) => w > bw || (w == bw && id < bid),
        };
        if better {
            best = Some((i, w, id));
        }
    }
    best.map(|(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_pins_the_hash() {
        // Pinned so a change of hash function or seeding (which would move every
        // conversation on a rolling upgrade) cannot slip in unnoticed.
        assert_eq!(anchor_hash(""), 0x2D06_8005_38D3_94C2);
        assert_eq!(weight(0, 0), 0);
        assert_eq!(weight(1, 0), 0x5692_161D_100B_05E5);
        let h = anchor_hash("conv-1");
        assert_eq!(
            rendezvous_weight(h, "acc_a"),
            rendezvous_weight(anchor_hash("conv-1"), "acc_a")
        );
        assert_ne!(rendezvous_weight(h, "acc_a"), rendezvous_weight(h, "acc_b"));
    }

    #[test]
    fn picks_are_order_independent_and_spread() {
        let ids = ["a", "b", "c", "d"];
        let mut counts = [0u32; 4];
        for n in 0..4000 {
            let anchor = format!("session-{n}");
            let i = rendezvous_pick(&anchor, ids).unwrap();
            let rev: Vec<&str> = ids.iter().rev().copied().collect();
            let j = rendezvous_pick(&anchor, rev.iter().copied()).unwrap();
            assert_eq!(ids[i], rev[j]);
            counts[i] += 1;
        }
        // Each account gets roughly a quarter of 4000 anchors.
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(rendezvous_pick("x", std::iter::empty()), None);
    }
}
