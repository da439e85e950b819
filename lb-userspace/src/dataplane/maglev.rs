//! Selection tables: what the kernel indexes to choose a new flow's backend.
//!
//! A table has a prime number of slots, each holding an index into the caller's
//! backend list. Maglev tables (Eisenbud et al., NSDI 2016) give each backend a
//! share proportional to its weight and move few slots when the set changes; the
//! round-robin sequence interleaves backends smoothly, as nginx does.

/// One backend as a table sees it: a stable identity (so every node builds the same
/// table) and a weight.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub identity: [u32; 5],
    pub weight: u32,
}

/// A weighted Maglev table of `size` (prime) slots. Empty when `entries` is.
///
/// The cost is the ~m ln m probes of slots already taken. A backend's walk looks at four
/// slots at a time (independent reads, one branch, one step of the running position for
/// four), in u32 arithmetic, in a u16 table (a service has at most `MAX_BACKENDS`).
pub fn maglev(entries: &[Entry], size: u32, seed: u32) -> Vec<u32> {
    const FREE: u16 = u16::MAX;
    const _: () = assert!(lb_common::MAX_BACKENDS < FREE as u32);
    if entries.is_empty() {
        return Vec::new();
    }
    let m = size;
    let add = |pos: u32, step: u32| {
        let next = pos + step;
        if next >= m { next - m } else { next }
    };
    // Each backend walks its own permutation of the slots: offset + j * skip (mod m), kept
    // as a running position with skip, 2, 3 and 4 times skip (mod m) beside it.
    let mut walks: Vec<[u32; 5]> = entries
        .iter()
        .map(|e| {
            let offset = lb_common::hash_words(&e.identity, seed ^ 0x6d61_676c) % m;
            let skip = lb_common::hash_words(&e.identity, seed ^ 0x736b_6970) % (m - 1) + 1;
            let (skip2, skip3) = (add(skip, skip), add(add(skip, skip), skip));
            [offset, skip, skip2, skip3, add(skip3, skip)]
        })
        .collect();
    let max_weight = entries.iter().map(|e| e.weight).max().unwrap_or(1).max(1) as u64;
    let mut credit = vec![0u64; entries.len()];
    let mut table = vec![FREE; size as usize];
    let mut filled = 0u32;
    // In each round a backend earns `weight` credit and claims one slot per
    // `max_weight` of credit: shares follow weights exactly over the rounds.
    while filled < m {
        for (i, e) in entries.iter().enumerate() {
            credit[i] += e.weight as u64;
            while credit[i] >= max_weight && filled < m {
                credit[i] -= max_weight;
                let [mut pos, skip, skip2, skip3, skip4] = walks[i];
                loop {
                    let (p1, p2, p3) = (add(pos, skip), add(pos, skip2), add(pos, skip3));
                    let free = (table[pos as usize] == FREE) as u32
                        | ((table[p1 as usize] == FREE) as u32) << 1
                        | ((table[p2 as usize] == FREE) as u32) << 2
                        | ((table[p3 as usize] == FREE) as u32) << 3;
                    if free != 0 {
                        let slot = [pos, p1, p2, p3][free.trailing_zeros() as usize];
                        table[slot as usize] = i as u16;
                        filled += 1;
                        pos = add(slot, skip);
                        break;
                    }
                    pos = add(pos, skip4);
                }
                walks[i][0] = pos;
            }
        }
    }
    table.into_iter().map(u32::from).collect()
}

/// One period of a smooth weighted round-robin sequence (nginx's algorithm), at most
/// `size` slots: each step every backend gains its weight and the richest is chosen
/// and pays the total. Weights are reduced by their common divisor first, so the
/// period is as short as the weights allow.
pub fn round_robin(entries: &[Entry], size: u32) -> Vec<u32> {
    if entries.is_empty() {
        return Vec::new();
    }
    let gcd = entries.iter().fold(0, |g, e| gcd(g, e.weight)).max(1);
    let weights: Vec<i64> = entries.iter().map(|e| (e.weight / gcd) as i64).collect();
    let total: i64 = weights.iter().sum();
    let period = (total as usize).min(size as usize);
    let mut current = vec![0i64; entries.len()];
    let mut seq = Vec::with_capacity(period);
    for _ in 0..period {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(best as u32);
    }
    seq
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(weights: &[u32]) -> Vec<Entry> {
        weights.iter().enumerate().map(|(i, &weight)| Entry { identity: [0x0a01_0000 + i as u32, 0, 0, 0, 8080], weight }).collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        table.iter().for_each(|&i| counts[i as usize] += 1);
        counts.iter().map(|&c| c as f64 / table.len() as f64).collect()
    }

    #[test]
    fn maglev_fills_every_slot_evenly() {
        let t = maglev(&entries(&[1, 1, 1, 1, 1]), 65537, 0);
        assert!(t.iter().all(|&i| i < 5));
        for s in shares(&t, 5) {
            assert!((s - 0.2).abs() < 0.002, "{s}");
        }
    }

    #[test]
    fn maglev_follows_weights() {
        let t = maglev(&entries(&[1, 2, 3]), 65537, 0);
        let s = shares(&t, 3);
        for (got, want) in s.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!((got - want).abs() < 0.002, "{s:?}");
        }
    }

    #[test]
    fn maglev_moves_little_when_a_backend_goes() {
        let all = entries(&[1; 10]);
        let before = maglev(&all, 65537, 0);
        let after = maglev(&all[..9], 65537, 0);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a && **b != 9).count();
        // Only the removed backend's ~10% must move; Maglev disturbs a little more.
        assert!((moved as f64) < 0.03 * 65537.0, "{moved} slots of surviving backends moved");
    }

    #[test]
    fn maglev_is_deterministic_per_seed() {
        let e = entries(&[1, 1, 1]);
        assert_eq!(maglev(&e, 4099, 7), maglev(&e, 4099, 7));
        assert_ne!(maglev(&e, 4099, 7), maglev(&e, 4099, 8));
    }

    /// Nodes of different versions must build the same table: these slots were computed by
    /// the first implementation ((offset + j * skip) % m with a division per step).
    const PINNED: [u32; 12] = [0, 2, 0, 2, 0, 2, 2, 1, 1, 2, 2, 2];
    const PINNED_SUM: u64 = 19_625_550;

    #[test]
    fn maglev_table_is_stable_across_versions() {
        let t = maglev(&entries(&[1, 2, 3]), 4099, 7);
        let sum: u64 = t.iter().enumerate().map(|(i, &b)| (i as u64 + 1) * (b as u64 + 1)).sum();
        assert_eq!((&t[..12], sum), (&PINNED[..], PINNED_SUM));
    }

    /// The walk as the paper states it, one slot at a time: the four-slot walk must claim
    /// exactly what it claims, small tables (fewer slots than lanes) included.
    fn one_slot_at_a_time(entries: &[Entry], m: u32, seed: u32) -> Vec<u32> {
        let perm = |e: &Entry, j: u64| {
            let offset = lb_common::hash_words(&e.identity, seed ^ 0x6d61_676c) % m;
            let skip = lb_common::hash_words(&e.identity, seed ^ 0x736b_6970) % (m - 1) + 1;
            ((offset as u64 + j * skip as u64) % m as u64) as usize
        };
        let max_weight = entries.iter().map(|e| e.weight).max().unwrap() as u64;
        let (mut next, mut credit, mut table, mut filled) = (vec![0u64; entries.len()], vec![0u64; entries.len()], vec![u32::MAX; m as usize], 0);
        while filled < m {
            for (i, e) in entries.iter().enumerate() {
                credit[i] += e.weight as u64;
                while credit[i] >= max_weight && filled < m {
                    credit[i] -= max_weight;
                    while table[perm(e, next[i])] != u32::MAX {
                        next[i] += 1;
                    }
                    table[perm(e, next[i])] = i as u32;
                    filled += 1;
                }
            }
        }
        table
    }

    #[test]
    fn maglev_claims_what_the_one_slot_walk_claims() {
        for (weights, size, seed) in [(&[1, 1, 1][..], 3, 0), (&[2, 1][..], 5, 1), (&[1, 2, 3][..], 4099, 7), (&[5, 3, 3, 1, 8, 2, 2][..], 65537, 9)] {
            let e = entries(weights);
            assert_eq!(maglev(&e, size, seed), one_slot_at_a_time(&e, size, seed), "{weights:?} in {size} slots");
        }
    }

    #[test]
    fn round_robin_is_smooth_and_weighted() {
        // nginx's example: weights 5,1,1 give a a b a c a a, one period.
        assert_eq!(round_robin(&entries(&[5, 1, 1]), 4099), [0, 0, 1, 0, 2, 0, 0]);
        // Scaled weights give the same short period.
        assert_eq!(round_robin(&entries(&[500, 100, 100]), 4099), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(round_robin(&entries(&[100, 100, 100]), 4099), [0, 1, 2]);
        // A period longer than the table is cut to it.
        assert_eq!(round_robin(&entries(&[997, 1]), 101).len(), 101);
    }
}
