//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! Every backend walks its own permutation of the table's slots (offset and
//! skip derived from its address, so every node computes the same table) and
//! backends take turns claiming their next free slot. Removing one of N
//! backends moves about 1/N of the slots; the others stay put, so flows that
//! must move are only the removed backend's.
//!
//! Weights are virtual backends: a backend of weight w takes w turns per
//! round, each with a permutation of its own.

/// Table sizes chosen automatically: primes near powers of two.
pub const TABLE_TIERS: [u32; 13] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071, 262139, 524287, 1000003,
];

/// The table size for `backends` backends: the smallest tier of at least
/// 100 slots per backend (Maglev's imbalance stays within about 1% there),
/// at most `max`. A table grows only when its backend count crosses a tier,
/// so most backend changes keep the size and move only ~1/N of the slots;
/// a resize remaps more, which only flows without a connection-table entry
/// can notice. Memory: 8 bytes per slot, so a Service with 10 backends takes
/// 8 KiB rather than the 128 KiB a fixed 16381-slot table would.
pub fn table_size_for(backends: usize, max: u32) -> u32 {
    let want = (backends as u64).saturating_mul(100);
    let tier = TABLE_TIERS
        .iter()
        .copied()
        .find(|&t| t as u64 >= want)
        .unwrap_or(TABLE_TIERS[TABLE_TIERS.len() - 1]);
    tier.min(max)
}

/// Whether `n` is prime (table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut i = 3u32;
    while (i as u64) * (i as u64) <= n as u64 {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 2;
    }
    true
}

/// A backend as Maglev sees it: a stable identity (the same on every node),
/// the id to put in the table, and a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: u64,
    pub id: u32,
    pub weight: u32,
}

fn mix64(mut x: u64) -> u64 {
    // SplitMix64's finalizer: cheap, well-spread, stable across releases.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// Builds a table of `size` slots (prime). Empty input gives an empty table.
pub fn build(entries: &[Entry], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} must be prime");
    let m = size as u64;
    // Virtual backends, in a canonical order (by key) so the result does not
    // depend on the order the caller listed them in.
    let mut sorted: Vec<Entry> = entries.iter().copied().filter(|e| e.weight > 0).collect();
    sorted.sort_by_key(|e| (e.key, e.id));
    let mut vnodes: Vec<(u64, u64, u32)> = Vec::new(); // (offset, skip, id)
    for e in &sorted {
        for r in 0..e.weight as u64 {
            let h1 = mix64(e.key ^ r.wrapping_mul(0x9e3779b97f4a7c15));
            let h2 = mix64(h1 ^ 0x5bd1e9955bd1e995);
            vnodes.push((h1 % m, h2 % (m - 1) + 1, e.id));
        }
    }
    if vnodes.is_empty() {
        return Vec::new();
    }
    let mut table = vec![u32::MAX; size as usize];
    let mut next = vec![0u64; vnodes.len()];
    let mut filled = 0u64;
    'outer: loop {
        for (i, &(offset, skip, id)) in vnodes.iter().enumerate() {
            loop {
                let slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = id;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break 'outer;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn backends(n: u32) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                key: 0x0af4_0100_0050 + ((i as u64) << 16),
                id: i + 1,
                weight: 1,
            })
            .collect()
    }

    fn loads(t: &[u32]) -> HashMap<u32, usize> {
        let mut m = HashMap::new();
        for &b in t {
            *m.entry(b).or_default() += 1;
        }
        m
    }

    #[test]
    fn every_slot_is_filled_and_the_load_is_balanced() {
        for &(n, size) in &[(3u32, 16381u32), (10, 16381), (100, 16381), (10, 65537)] {
            let t = build(&backends(n), size);
            assert_eq!(t.len(), size as usize);
            assert!(t.iter().all(|&b| b >= 1 && b <= n));
            let l = loads(&t);
            let (min, max) = (
                *l.values().min().unwrap() as f64,
                *l.values().max().unwrap() as f64,
            );
            // The paper's bound for M > 100 N: max/min within a few percent.
            assert!(max / min < 1.06, "n={n} size={size}: max/min {}", max / min);
        }
    }

    #[test]
    fn removing_one_of_n_backends_moves_about_one_nth_of_the_slots() {
        for n in [5u32, 10, 50] {
            let all = backends(n);
            let before = build(&all, 16381);
            let removed = all[n as usize / 2].id;
            let rest: Vec<Entry> = all.iter().copied().filter(|e| e.id != removed).collect();
            let after = build(&rest, 16381);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / 16381.0;
            let ideal = 1.0 / n as f64;
            // Slots of the removed backend must move; Maglev moves few others.
            assert!(
                moved >= ideal * 0.95 && moved <= ideal * 1.6,
                "n={n}: moved {moved:.4}, ideal {ideal:.4}"
            );
            // Every slot that did not belong to the removed backend and moved is
            // collateral; keep it small.
            let collateral = before
                .iter()
                .zip(&after)
                .filter(|(a, b)| a != b && **a != removed)
                .count() as f64
                / 16381.0;
            assert!(
                collateral < 0.6 * ideal,
                "n={n}: collateral {collateral:.4}"
            );
        }
    }

    #[test]
    fn adding_a_backend_takes_slots_from_the_others_only() {
        let all = backends(11);
        let before = build(&all[..10], 16381);
        let after = build(&all, 16381);
        let moved: Vec<(u32, u32)> = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (*a, *b))
            .collect();
        let to_new = moved.iter().filter(|(_, b)| *b == 11).count() as f64;
        assert!(
            to_new / moved.len() as f64 > 0.6,
            "most moved slots go to the new backend"
        );
        let share = to_new / 16381.0;
        assert!(
            (share - 1.0 / 11.0).abs() < 0.02,
            "new backend's share {share}"
        );
    }

    #[test]
    fn the_table_does_not_depend_on_input_order_and_weights_scale_shares() {
        let mut b = backends(4);
        let t1 = build(&b, 16381);
        b.reverse();
        assert_eq!(t1, build(&b, 16381));
        b[0].weight = 3; // 3 : 1 : 1 : 1
        let l = loads(&build(&b, 16381));
        let heavy = l[&b[0].id] as f64 / 16381.0;
        assert!((heavy - 0.5).abs() < 0.03, "weight 3 of 6 gets {heavy}");
        assert!(build(&[], 7).is_empty());
    }

    #[test]
    fn primes() {
        assert!(
            is_prime(16381) && is_prime(65537) && is_prime(251) && !is_prime(16383) && !is_prime(1)
        );
    }

    #[test]
    fn automatic_table_sizes_are_prime_and_grow_with_the_backends() {
        for t in TABLE_TIERS {
            assert!(is_prime(t), "{t}");
        }
        assert_eq!(table_size_for(1, 16381), 251);
        assert_eq!(table_size_for(3, 16381), 509);
        assert_eq!(table_size_for(10, 16381), 1021);
        assert_eq!(table_size_for(160, 16381), 16381);
        assert_eq!(table_size_for(1000, 16381), 16381, "capped");
        assert_eq!(table_size_for(1000, 1000003), 131071);
    }
}
