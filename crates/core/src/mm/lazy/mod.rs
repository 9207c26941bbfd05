//! Lazy restore (CRIU's `restore --lazy-pages` with a `lazy-pages`
//! daemon): the tree resumes before its private anonymous memory is
//! filled; the daemon serves each missing page on first touch through
//! userfaultfd and pushes the rest in the background until all are in.
//!
//! - The restore ([`link`]) connects to the daemon's socket
//!   (`lazy-pages.socket` in the work directory), makes a userfaultfd in
//!   each task, registers the task's lazy mappings for missing pages and
//!   hands the fd to the daemon, then fills everything else as usual.
//!   Once every task runs, it gives the daemon the tree's pids and waits
//!   until the daemon holds them.
//! - The daemon ([`daemon`]) serves faults from the images, follows the
//!   fork, mremap, madvise and munmap events, and keeps every task seized
//!   (`PTRACE_O_EXITKILL`, forks followed) until all pages are in: if it
//!   dies, the kernel kills the tasks rather than let them read zeros
//!   where their pages were. Signals and stops pass through it. A holder
//!   ([`holder`]) keeps a second copy of every userfaultfd, so that the
//!   daemon's own exit does not release them before the kill.
//!
//! Which mappings are lazy: private anonymous writable ones (heap, stack,
//! plain `mmap`) but those locked, of huge pages or advised to have them
//! (`MADV_HUGEPAGE`), AIO rings and those shared with a parent or child
//! since the fork (the latter are in place before the task's own mappings
//! are made). A read-only or inaccessible one is filled at restore: made
//! so while empty, it would lose its memory accounting (`ac` in smaps).

pub mod daemon;
pub mod holder;
pub mod link;

use crate::mm::restore::Run;
use crate::mm::status;
use crest_images::pb::MmEntry;

/// The daemon's socket in the work directory (CRIU's name).
pub const SOCKET: &str = "lazy-pages.socket";
/// Messages of the restore: a task's userfaultfd (`t`: pid in the images,
/// pid now, its ranges), the tree resumed (`g`: the pids now).
const TASK: u8 = b't';
const GO: u8 = b'g';
/// The daemon's answers: done (`k`), or failed (`e` and why).
const OK: u8 = b'k';
const FAILED: u8 = b'e';
/// Most ranges one task hands over (the rest is filled at restore).
const MAX_RANGES: usize = 4000;
/// Largest message either side sends.
const MAX_MSG: usize = 12 + 16 * MAX_RANGES;

const PAGE: u64 = crate::mm::PAGE;

/// The mappings of `mm` whose pages may come lazily, but those in
/// `placed` (already filled).
pub fn lazy_ranges(mm: &MmEntry, placed: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let aio = |s: u64, e: u64| {
        mm.aios
            .iter()
            .any(|a| a.id < e && s < a.id.saturating_add(u64::from(a.ring_len)))
    };
    let mut out: Vec<(u64, u64)> = mm
        .vmas
        .iter()
        .filter(|v| v.status & status::ANON_PRIVATE != 0)
        .filter(|v| {
            v.status
                & (status::FILE_PRIVATE
                    | status::FILE_SHARED
                    | status::ANON_SHARED
                    | status::SYSVIPC
                    | status::VDSO
                    | status::VVAR
                    | status::VSYSCALL)
                == 0
        })
        .filter(|v| v.flags & (libc::MAP_LOCKED | libc::MAP_HUGETLB) as u32 == 0)
        // (made read-only before its first page is in, a mapping would
        // lose its accounting, VM_ACCOUNT: the kernel drops it from a
        // private mapping that has no page yet)
        .filter(|v| v.prot & libc::PROT_WRITE as u32 != 0)
        // (UFFDIO_COPY puts small pages: an area advised to have huge
        // ones is filled now, and has them)
        .filter(|v| v.madv.unwrap_or(0) & (1 << libc::MADV_HUGEPAGE) == 0)
        .filter(|v| v.crest_map_fd.is_none() && v.end > v.start)
        .filter(|v| !aio(v.start, v.end))
        .filter(|v| !placed.iter().any(|p| p.0 < v.end && v.start < p.1))
        .map(|v| (v.start, v.end))
        .collect();
    out.sort_unstable();
    out.truncate(MAX_RANGES);
    out
}

/// The parts of `runs` inside any of `ranges` and those outside.
pub fn split_by(runs: &[Run], ranges: &[(u64, u64)]) -> (Vec<Run>, Vec<Run>) {
    let mut sorted: Vec<(u64, u64)> = ranges.iter().copied().filter(|r| r.0 < r.1).collect();
    sorted.sort_unstable();
    // (merged: sorted and apart, the ends rise too)
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for x in sorted {
        match merged.last_mut() {
            Some(m) if x.0 <= m.1 => m.1 = m.1.max(x.1),
            _ => merged.push(x),
        }
    }
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for &r in runs {
        let end = r.addr.saturating_add(r.len);
        let mut at = r.addr;
        while at < end {
            let piece = |a: u64, b: u64| Run {
                addr: a,
                len: b - a,
                off: r.off + (a - r.addr),
                src: r.src,
            };
            // (the first range that ends after `at`)
            let next = merged.get(merged.partition_point(|x| x.1 <= at));
            match next.filter(|x| x.0 <= at) {
                Some(x) => {
                    let stop = x.1.min(end);
                    inside.push(piece(at, stop));
                    at = stop;
                }
                None => {
                    let stop = next.map_or(end, |x| x.0).min(end);
                    outside.push(piece(at, stop));
                    at = stop;
                }
            }
        }
    }
    (inside, outside)
}

/// Pages still to come into one address space: runs sorted by address,
/// never overlapping.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending(pub Vec<Run>);

impl Pending {
    pub fn new(mut runs: Vec<Run>) -> Pending {
        runs.retain(|r| r.len > 0);
        runs.sort_unstable_by_key(|r| r.addr);
        Pending(runs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|r| r.len).sum()
    }

    /// Takes out up to `max` bytes from the page at `addr` on, if that
    /// page is still to come.
    pub fn take_at(&mut self, addr: u64, max: u64) -> Option<Run> {
        let page = addr & !(PAGE - 1);
        let i = self.0.partition_point(|r| r.addr + r.len <= page);
        let r = *self.0.get(i)?;
        if r.addr > page {
            return None;
        }
        let len = max.min(r.addr + r.len - page);
        self.remove(page, page + len);
        Some(Run {
            addr: page,
            len,
            off: r.off + (page - r.addr),
            src: r.src,
        })
    }

    /// Takes out up to `max` bytes from the lowest address still to come.
    pub fn take_first(&mut self, max: u64) -> Option<Run> {
        let addr = self.0.first()?.addr;
        self.take_at(addr, max)
    }

    /// Forgets what is to come in `start..end` (dropped or unmapped).
    pub fn remove(&mut self, start: u64, end: u64) {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &r in &self.0 {
            let e = r.addr + r.len;
            if e <= start || r.addr >= end {
                out.push(r);
                continue;
            }
            if r.addr < start {
                out.push(Run {
                    len: start - r.addr,
                    ..r
                });
            }
            if e > end {
                out.push(Run {
                    addr: end,
                    len: e - end,
                    off: r.off + (end - r.addr),
                    src: r.src,
                });
            }
        }
        self.0 = out;
    }

    /// What was to come in `from..from+len` is to come at `to` now.
    pub fn moved(&mut self, from: u64, to: u64, len: u64) {
        let end = from + len;
        let mut moving = Vec::new();
        for &r in &self.0 {
            let (s, e) = (r.addr.max(from), (r.addr + r.len).min(end));
            if s < e {
                moving.push(Run {
                    addr: s - from + to,
                    len: e - s,
                    off: r.off + (s - r.addr),
                    src: r.src,
                });
            }
        }
        self.remove(from, end);
        // (whatever was to come where they land was unmapped by the move)
        self.remove(to, to + len);
        self.0.extend(moving);
        self.0.sort_unstable_by_key(|r| r.addr);
    }

    /// Puts back a run taken out.
    pub fn put_back(&mut self, r: Run) {
        let i = self.0.partition_point(|x| x.addr < r.addr);
        self.0.insert(i, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_taken_where_asked_and_once() {
        let mut p = Pending::new(vec![
            Run::at(0x10000, 0x4000, 0),
            Run::at(0x20000, 0x2000, 0x4000),
        ]);
        assert_eq!(
            p.take_at(0x11234, 0x1000),
            Some(Run::at(0x11000, 0x1000, 0x1000))
        );
        assert_eq!(p.take_at(0x11000, 0x1000), None);
        assert_eq!(
            p.take_at(0x13000, 0x4000),
            Some(Run::at(0x13000, 0x1000, 0x3000))
        );
        assert_eq!(p.take_first(0x8000), Some(Run::at(0x10000, 0x1000, 0)));
        assert_eq!(p.take_first(0x8000), Some(Run::at(0x12000, 0x1000, 0x2000)));
        assert_eq!(p.bytes(), 0x2000);
        assert_eq!(p.take_at(0x30000, 0x1000), None);
    }

    #[test]
    fn a_move_carries_what_is_to_come() {
        let mut p = Pending::new(vec![
            Run::at(0x10000, 0x4000, 0),
            Run::at(0x40000, 0x1000, 0x9000),
        ]);
        p.moved(0x12000, 0x40000, 0x2000);
        assert_eq!(
            p.0,
            vec![
                Run::at(0x10000, 0x2000, 0),
                Run::at(0x40000, 0x2000, 0x2000)
            ]
        );
        p.remove(0x11000, 0x41000);
        assert_eq!(
            p.0,
            vec![
                Run::at(0x10000, 0x1000, 0),
                Run::at(0x41000, 0x1000, 0x3000)
            ]
        );
    }

    #[test]
    fn runs_split_at_the_lazy_ranges() {
        let runs = [Run::at(0x10000, 0x6000, 0)];
        let (i, o) = split_by(&runs, &[(0x12000, 0x14000)]);
        assert_eq!(i, vec![Run::at(0x12000, 0x2000, 0x2000)]);
        assert_eq!(
            o,
            vec![
                Run::at(0x10000, 0x2000, 0),
                Run::at(0x14000, 0x2000, 0x4000)
            ]
        );
    }
}
