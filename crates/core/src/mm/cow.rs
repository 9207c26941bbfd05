//! Copy-on-write sharing kept through a restore. A private anonymous page
//! that a parent and its child have not written since the fork is one page
//! for the kernel; restoring each task's memory on its own would make it
//! two. So, before a task forks its children, the areas it shares with one
//! of them (same bounds in both images) are put in it with its pages, at a
//! spare address no task of the tree uses ("held"): the children get them
//! by the fork. Later each task's transform moves the areas it keeps to
//! their place with `mremap` (the pages stay shared) and writes only the
//! pages whose contents differ from its own image; pages it did not have
//! are dropped. CRIU keeps the sharing the same way (premapped areas,
//! pages compared before they are written).

use super::restore::{current_ranges, has_pages, overlaps, Pages, Run};
use super::{status, PAGE};
use crate::error::RoomError;
use crate::error::{RestoreCtx, RestoreError};
use crate::mm::error::MmError;
use crest_images::pb::{MmEntry, PagemapEntry, VmaEntry};
use crest_inject::{nr, Tracee};
use std::os::unix::fs::FileExt;

/// An area a task holds at `at` until its transform moves it to
/// `start..end`; `fixed` once its pages are the task's own (not only what
/// its parent handed down).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub start: u64,
    pub end: u64,
    pub at: u64,
    pub fixed: bool,
    /// The `mmap` flags it was made with (a task keeps it only if its own
    /// VMA has the same).
    pub flags: u32,
}

impl Held {
    fn len(&self) -> u64 {
        self.end - self.start
    }

    /// What a child forked now finds.
    pub fn handed_down(&self) -> Held {
        Held {
            fixed: false,
            ..*self
        }
    }
}

/// Most bytes compared at once.
const CHUNK: u64 = 8 << 20;
/// Where spare addresses are looked for first (far from where programs
/// and crest usually map).
const SPARE_FROM: u64 = 0x2000_0000_0000;
const SPARE_TO: u64 = 0x7000_0000_0000;

/// Whether a VMA's pages can be shared this way: plain private anonymous
/// memory (the heap too), not a stack that grows, not huge pages.
pub fn candidate(v: &VmaEntry) -> bool {
    let plain = status::REGULAR | status::ANON_PRIVATE | status::HEAP;
    let odd = (libc::MAP_GROWSDOWN | libc::MAP_HUGETLB | libc::MAP_SHARED) as u32;
    v.status & !plain == 0
        && v.status & status::ANON_PRIVATE != 0
        && v.flags & odd == 0
        && v.end > v.start
        && v.start.is_multiple_of(PAGE)
        && v.end.is_multiple_of(PAGE)
}

fn same_bounds(v: &VmaEntry, start: u64, end: u64) -> bool {
    v.start == start && v.end == end
}

/// The flags an area for `v` is made with.
fn map_flags(v: &VmaEntry) -> u32 {
    v.flags & !((libc::MAP_LOCKED | libc::MAP_FIXED) as u32)
}

/// Whether `v` is the area `h` holds.
fn is_held(v: &VmaEntry, h: &Held) -> bool {
    candidate(v) && same_bounds(v, h.start, h.end) && map_flags(v) == h.flags
}

/// Before task `t` forks its children: what it was handed down and also
/// has is corrected to its own pages, what it was handed and lacks is
/// unmapped, and each area a child has too (`children`' VMAs) that it does
/// not hold yet is mapped at a spare address with its pages. `avoid` holds
/// every VMA of the tree. Returns what it holds now.
pub fn prepare(
    t: &mut Tracee,
    (mm, pages): (&MmEntry, &Pages),
    handed: &[Held],
    children: &[&MmEntry],
    avoid: &[(u64, u64)],
) -> Result<Vec<Held>, RestoreError> {
    let pid = t.pid();
    let runs = &pages.runs;
    let files = pages.open(pid)?;
    check_held(pages, handed)?;
    let mut held = Vec::new();
    for h in handed {
        if mm.vmas.iter().any(|v| is_held(v, h)) {
            if !h.fixed {
                correct(t, h, runs, (&files, pages))?;
            }
            held.push(Held { fixed: true, ..*h });
        } else {
            t.syscall(nr::MUNMAP, &[h.at, h.len()])
                .rat(pid, format!("munmap a handed-down area at {:#x}", h.at))?;
        }
    }
    let shared_with_child = |v: &VmaEntry| {
        children.iter().any(|c| {
            c.vmas.iter().any(|w| {
                candidate(w) && same_bounds(w, v.start, v.end) && map_flags(w) == map_flags(v)
            })
        })
    };
    let wanted: Vec<&VmaEntry> = mm
        .vmas
        .iter()
        .filter(|v| candidate(v) && shared_with_child(v))
        .filter(|v| !held.iter().any(|h| h.start == v.start && h.end == v.end))
        .collect();
    crate::debug!(
        "pid {pid}: {} area(s) handed down kept, {} to share with children",
        held.len(),
        wanted.len()
    );
    if wanted.is_empty() {
        return Ok(held);
    }
    let mut used: Vec<(u64, u64)> = avoid.to_vec();
    used.extend(current_ranges(pid)?);
    for v in wanted {
        let len = v.end - v.start;
        let at = spare(&used, len).ok_or_else(|| {
            MmError::Unsupported {
                what: format!("no spare room for {len} bytes of memory shared with a child"),
            }
            .in_restore(pid)
        })?;
        let flags = u64::from(map_flags(v))
            | (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let got = t
            .syscall(nr::MMAP, &[at, len, prot, flags, u64::MAX, 0])
            .rat(pid, format!("map {len} bytes to share with a child"))?;
        if got != at {
            return Err(MmError::Unsupported {
                what: format!("memory to share asked at {at:#x}, got {got:#x}"),
            }
            .in_restore(pid));
        }
        used.push((at, at + len));
        let h = Held {
            start: v.start,
            end: v.end,
            at,
            fixed: true,
            flags: map_flags(v),
        };
        write_own(pid, &h, runs, (&files, pages))?;
        held.push(h);
    }
    Ok(held)
}

/// A page-aligned address for `len` bytes, a page clear of every range in
/// `used`.
fn spare(used: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut sorted = used.to_vec();
    sorted.sort_unstable();
    let mut at = SPARE_FROM;
    for &(s, e) in &sorted {
        if e + PAGE <= at {
            continue;
        }
        if overlaps((s, e), (at - PAGE, at + len + PAGE)) {
            at = e.next_multiple_of(PAGE) + PAGE;
        }
    }
    (at + len <= SPARE_TO).then_some(at)
}

/// The pagemap runs inside `h`'s bounds.
fn runs_in<'a>(h: &'a Held, runs: &'a [Run]) -> impl Iterator<Item = &'a Run> + 'a {
    runs.iter()
        .filter(move |r| r.addr >= h.start && r.addr + r.len <= h.end)
}

/// Writes the task's pages of `h` into the fresh area at `h.at`.
fn write_own(
    pid: i32,
    h: &Held,
    runs: &[Run],
    (files, pages): (&[std::fs::File], &Pages),
) -> Result<(), RestoreError> {
    let mut buf = Vec::new();
    for r in runs_in(h, runs) {
        let (file, path) = (&files[r.src], &pages.paths[r.src]);
        let mut done = 0;
        while done < r.len {
            let n = (r.len - done).min(CHUNK);
            buf.resize(n as usize, 0);
            file.read_exact_at(&mut buf, r.off + done)
                .rat(pid, format!("read {path} at {}", r.off + done))?;
            let to = h.at + (r.addr - h.start) + done;
            put(pid, &[(to, n as usize)], &buf)?;
            done += n;
        }
    }
    Ok(())
}

fn put(pid: i32, ranges: &[(u64, usize)], buf: &[u8]) -> Result<(), RestoreError> {
    let n =
        crest_sys::mem::write_remote(pid, ranges, buf).rat(pid, "process_vm_writev of pages")?;
    if n != buf.len() {
        return Err(RestoreError::Io {
            pid,
            step: "process_vm_writev of pages (short write)".into(),
            source: std::io::Error::from_raw_os_error(libc::EFAULT),
        });
    }
    Ok(())
}

/// Makes a handed-down area at `h.at` hold the task's own pages: pages
/// whose contents differ are written (only they stop being shared), pages
/// the task did not have are dropped.
fn correct(
    t: &mut Tracee,
    h: &Held,
    runs: &[Run],
    (files, pages): (&[std::fs::File], &Pages),
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).rat(pid, "open /proc/PID/mem")?;
    let (mut want, mut have) = (Vec::new(), Vec::new());
    let mut covered = h.start;
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    for r in runs_in(h, runs) {
        if r.addr > covered {
            gaps.push((covered, r.addr));
        }
        covered = r.addr + r.len;
        let (file, path) = (&files[r.src], &pages.paths[r.src]);
        let mut done = 0;
        while done < r.len {
            let n = (r.len - done).min(CHUNK);
            want.resize(n as usize, 0);
            have.resize(n as usize, 0);
            file.read_exact_at(&mut want, r.off + done)
                .rat(pid, format!("read {path} at {}", r.off + done))?;
            let from = h.at + (r.addr - h.start) + done;
            // (through /proc/PID/mem: process_vm_readv pins the pages,
            // and the kernel unshares a shared page it pins)
            mem.read_exact_at(&mut have, from)
                .rat(pid, "read handed-down pages through /proc/PID/mem")?;
            let mut differ: Vec<(u64, usize)> = Vec::new();
            let mut bytes = Vec::new();
            for (i, (w, g)) in want
                .chunks(PAGE as usize)
                .zip(have.chunks(PAGE as usize))
                .enumerate()
            {
                if w != g {
                    differ.push((from + i as u64 * PAGE, PAGE as usize));
                    bytes.extend_from_slice(w);
                }
            }
            crate::debug!(
                "pid {pid}: {} of {} handed-down pages at {from:#x} differ",
                differ.len(),
                n / PAGE
            );
            if !differ.is_empty() {
                put(pid, &differ, &bytes)?;
            }
            done += n;
        }
    }
    if covered < h.end {
        gaps.push((covered, h.end));
    }
    for (s, e) in gaps {
        t.syscall(
            nr::MADVISE,
            &[h.at + (s - h.start), e - s, libc::MADV_DONTNEED as u64],
        )
        .rat(pid, "drop handed-down pages the task did not have")?;
    }
    Ok(())
}

/// The held areas the task keeps: those its own image has (by bounds).
pub fn kept(held: &[Held], mm: &MmEntry) -> Vec<Held> {
    held.iter()
        .filter(|h| mm.vmas.iter().any(|v| is_held(v, h)))
        .copied()
        .collect()
}

/// Checks the pages of the held areas `held` where their pages files'
/// checks were deferred (a lazy restore).
fn check_held(pages: &Pages, held: &[Held]) -> Result<(), RestoreError> {
    let areas: Vec<(u64, u64)> = held.iter().map(|h| (h.start, h.end)).collect();
    let (inside, _) = crate::mm::lazy::split_by(&pages.runs, &areas);
    pages.check(&inside)
}

/// In the transform, once what the task inherited otherwise is gone: each
/// kept area corrected to the task's pages if only handed down, moved to
/// its place, and given the protection `map_vmas` gives a fresh one.
pub fn place(
    t: &mut Tracee,
    (mm, pagemap, pages): (&MmEntry, &[PagemapEntry], &Pages),
    kept: &[Held],
) -> Result<(), RestoreError> {
    if kept.is_empty() {
        return Ok(());
    }
    let pid = t.pid();
    crate::debug!(
        "pid {pid}: {} area(s) shared with parent or children",
        kept.len()
    );
    let runs = &pages.runs;
    let files = pages.open(pid)?;
    check_held(pages, kept)?;
    for h in kept {
        if !h.fixed {
            correct(t, h, runs, (&files, pages))?;
        }
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        let got = t
            .syscall(nr::MREMAP, &[h.at, h.len(), h.len(), flags, h.start])
            .rat(pid, format!("mremap {:#x} to {:#x}", h.at, h.start))?;
        if got != h.start {
            return Err(MmError::Unsupported {
                what: format!("mremap to {:#x} gave {got:#x}", h.start),
            }
            .in_restore(pid));
        }
        let v = mm
            .vmas
            .iter()
            .find(|v| same_bounds(v, h.start, h.end))
            .ok_or_else(|| {
                MmError::Unsupported {
                    what: format!("a kept area {:#x} with no vma", h.start),
                }
                .in_restore(pid)
            })?;
        let mut prot = u64::from(v.prot);
        if has_pages(v, pagemap) {
            prot |= libc::PROT_WRITE as u64;
        }
        if prot != (libc::PROT_READ | libc::PROT_WRITE) as u64 {
            t.syscall(nr::MPROTECT, &[h.start, h.len(), prot])
                .rat(pid, format!("mprotect {:#x}", h.start))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_keeps_a_page_clear() {
        let used = [(SPARE_FROM, SPARE_FROM + PAGE)];
        let at = spare(&used, 4 * PAGE).unwrap();
        assert!(at >= SPARE_FROM + 2 * PAGE);
        assert_eq!(at % PAGE, 0);
        assert_eq!(spare(&[], PAGE), Some(SPARE_FROM));
        let later = [(SPARE_FROM + 3 * PAGE, SPARE_FROM + 5 * PAGE)];
        // a range just above the wanted one pushes it past
        assert!(spare(&later, 4 * PAGE).unwrap() >= SPARE_FROM + 6 * PAGE);
        assert_eq!(spare(&[(0, SPARE_TO)], PAGE), None);
    }

    #[test]
    fn kept_only_with_the_same_bounds_and_flags() {
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        let v = |flags: u32| VmaEntry {
            start: 0x1000,
            end: 0x3000,
            status: status::REGULAR | status::ANON_PRIVATE,
            flags,
            ..Default::default()
        };
        let h = Held {
            start: 0x1000,
            end: 0x3000,
            at: SPARE_FROM,
            fixed: false,
            flags: anon,
        };
        let mm = |v: VmaEntry| MmEntry {
            vmas: vec![v],
            ..Default::default()
        };
        assert_eq!(kept(&[h], &mm(v(anon))), vec![h]);
        // (mlock is set later either way)
        assert_eq!(kept(&[h], &mm(v(anon | libc::MAP_LOCKED as u32))), vec![h]);
        assert!(kept(&[h], &mm(v(anon | libc::MAP_NORESERVE as u32))).is_empty());
        let moved = VmaEntry {
            end: 0x4000,
            ..v(anon)
        };
        assert!(kept(&[h], &mm(moved)).is_empty());
    }

    #[test]
    fn candidates_are_plain_private_anon() {
        let v = |status: u32, flags: u32| VmaEntry {
            start: 0x1000,
            end: 0x3000,
            status,
            flags: flags | (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            ..Default::default()
        };
        assert!(candidate(&v(status::REGULAR | status::ANON_PRIVATE, 0)));
        assert!(candidate(&v(
            status::REGULAR | status::ANON_PRIVATE | status::HEAP,
            0
        )));
        assert!(!candidate(&v(
            status::REGULAR | status::ANON_PRIVATE,
            libc::MAP_GROWSDOWN as u32
        )));
        assert!(!candidate(&v(status::REGULAR | status::FILE_PRIVATE, 0)));
        assert!(!candidate(&v(status::REGULAR | status::ANON_SHARED, 0)));
    }
}
