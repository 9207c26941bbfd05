//! Id-map arithmetic. A map is a list of extents `(first, lower_first,
//! count)`: ids `first..first+count` inside a namespace are
//! `lower_first..lower_first+count` one level up.
//!
//! crest reads every map relative to its own namespace (`/proc/PID/uid_map`
//! gives `lower_first` in the reader's view). Images store maps relative to
//! the parent namespace, as the kernel wants them written; `to_parent`
//! converts, splitting extents where the parent's map is split.

use crate::procfs::IdExtent;

/// The id one level up (`lower`) of `id` inside the namespace, if mapped.
pub fn up(map: &[IdExtent], id: u32) -> Option<u32> {
    map.iter().find_map(|e| {
        let off = id.checked_sub(e.first)?;
        (off < e.count).then(|| e.lower_first + off)
    })
}

/// The id inside the namespace of `outer` (one level up), if mapped.
pub fn down(map: &[IdExtent], outer: u32) -> Option<u32> {
    map.iter().find_map(|e| {
        let off = outer.checked_sub(e.lower_first)?;
        (off < e.count).then(|| e.first + off)
    })
}

/// Converts `child` (lower ids in crest's view) to the parent's view,
/// given the parent's map (also with lower ids in crest's view). Fails with
/// the first crest-view id the parent does not map.
pub fn to_parent(child: &[IdExtent], parent: &[IdExtent]) -> Result<Vec<IdExtent>, u32> {
    let mut out = Vec::new();
    for c in child {
        let mut done = 0u32;
        while done < c.count {
            let outer = c.lower_first + done;
            let pe = parent
                .iter()
                .find(|p| outer >= p.lower_first && outer - p.lower_first < p.count)
                .ok_or(outer)?;
            let off = outer - pe.lower_first;
            let n = (pe.count - off).min(c.count - done);
            out.push(IdExtent {
                first: c.first + done,
                lower_first: pe.first + off,
                count: n,
            });
            done += n;
        }
    }
    Ok(out)
}

/// An id inside the namespace at the end of `chain` (maps relative to
/// each parent, outermost first) as seen from the top of the chain.
pub fn to_outer(chain: &[&[IdExtent]], id: u32) -> Option<u32> {
    chain.iter().rev().try_fold(id, |id, map| up(map, id))
}

/// An id seen from the top of `chain` as seen inside its last namespace.
pub fn to_inner(chain: &[&[IdExtent]], outer: u32) -> Option<u32> {
    chain.iter().try_fold(outer, |id, map| down(map, id))
}

/// Extents as the text a `uid_map`/`gid_map` write takes.
pub fn to_text(map: &[IdExtent]) -> String {
    map.iter()
        .map(|e| format!("{} {} {}\n", e.first, e.lower_first, e.count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(first: u32, lower_first: u32, count: u32) -> IdExtent {
        IdExtent {
            first,
            lower_first,
            count,
        }
    }

    #[test]
    fn up_and_down() {
        let m = [x(0, 100_000, 1000), x(5000, 2000, 10)];
        assert_eq!(up(&m, 0), Some(100_000));
        assert_eq!(up(&m, 999), Some(100_999));
        assert_eq!(up(&m, 1000), None);
        assert_eq!(up(&m, 5009), Some(2009));
        assert_eq!(down(&m, 100_500), Some(500));
        assert_eq!(down(&m, 2010), None);
    }

    #[test]
    fn kernel_notes_example() {
        // L1: 0 100000 65536 (crest view); L3 read from crest: 0 101500 1000;
        // L2 read from crest: 0 101000 10000. Relative to L2, L3 is 0 500 1000.
        let l2 = [x(0, 101_000, 10_000)];
        let l3 = [x(0, 101_500, 1000)];
        assert_eq!(to_parent(&l3, &l2).unwrap(), [x(0, 500, 1000)]);
        let l1 = [x(0, 100_000, 65_536)];
        assert_eq!(to_parent(&l2, &l1).unwrap(), [x(0, 1000, 10_000)]);
    }

    #[test]
    fn split_across_parent_extents() {
        let parent = [x(0, 500, 10), x(10, 900, 10)];
        // Ids 510..514 are not mapped by the parent: refused, naming 510.
        let child = [x(100, 505, 10)];
        assert_eq!(to_parent(&child, &parent), Err(510));
        let child = [x(100, 505, 5), x(200, 900, 3)];
        assert_eq!(
            to_parent(&child, &parent).unwrap(),
            [x(100, 5, 5), x(200, 10, 3)]
        );
        // A child extent that runs over two parent extents whose lower ids
        // touch is split in two.
        let parent = [x(0, 500, 10), x(50, 510, 10)];
        let child = [x(7, 505, 10)];
        assert_eq!(
            to_parent(&child, &parent).unwrap(),
            [x(7, 5, 5), x(12, 50, 5)]
        );
        assert_eq!(to_parent(&[x(0, 42, 1)], &parent), Err(42));
    }

    #[test]
    fn chains() {
        let l1 = [x(0, 100_000, 65_536)];
        let l2 = [x(0, 1000, 10_000)];
        let l3 = [x(0, 500, 1000)];
        let chain: [&[IdExtent]; 3] = [&l1, &l2, &l3];
        assert_eq!(to_outer(&chain, 0), Some(101_500));
        assert_eq!(to_inner(&chain, 101_500), Some(0));
        assert_eq!(to_inner(&chain, 100_000), None);
        assert_eq!(to_outer(&chain, 1000), None);
        assert_eq!(to_text(&l3), "0 500 1000\n");
    }
}
