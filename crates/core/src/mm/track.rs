//! Memory tracking between dumps (`pre-dump`, `--track-mem`): which pages
//! a task wrote since the last dump, on a kernel without soft-dirty bits.
//!
//! A userfaultfd made by the task itself (the kernel registers only the
//! caller's own memory) registers the task's private mappings for
//! asynchronous write protection (`UFFD_FEATURE_WP_ASYNC`). crest arms it
//! through the task's pagemap (`PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`)
//! while the task is frozen, and the next dump reads which pages were
//! written since (`PAGE_IS_WRITTEN`): the kernel lifts a page's protection
//! at its first write, with no fault delivered to anyone, so nothing the
//! task does ever waits on it.
//!
//! The userfaultfd does not stay in the task's fd table: crest takes a copy
//! and closes the task's fd, and between dumps the keeper holds it
//! ([`super::keeper`]). When the last copy closes (the keeper killed, the
//! tracking ended), the kernel unregisters the mappings and lifts every
//! protection: tracking can be lost, never made wrong, and a lost tracking
//! makes the next dump save every page again.
//!
//! A page is taken from the parent images only when it is in a mapping
//! the tracking covers (smaps `uw` at this dump), was not written since,
//! and the parent images hold it at the same address.

use super::keeper::{self, Held, Kept, Restart};
use super::restore::Pages;
use crate::error::{DumpCtx, DumpError};
use crate::procfs::MapsEntry;
use crate::remote::Remote;
use crest_images::pb::{InventoryEntry, PagemapEntry};
use crest_images::{magic, names, PE_PARENT, PE_PRESENT};
use crest_inject::{nr, Tracee};
use crest_sys::misc::{self, ScanQuery};
use crest_sys::ptrace::UserRegs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// `UFFDIO_API` and `UFFDIO_REGISTER` (`_IOWR(0xAA, ..)`), the API
/// version, the asynchronous write-protection feature, the register mode
/// and `UFFD_USER_MODE_ONLY`.
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFD_USER_MODE_ONLY: u64 = 1;
/// `restart_syscall` and the error that sends a thread there.
const NR_RESTART_SYSCALL: u64 = 219;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// The tracking of one task during a dump.
pub struct Tracking {
    /// The task's userfaultfds (from the keeper, and one made at this
    /// dump for the mappings new since): each registers some of its
    /// mappings.
    pub uffds: Vec<OwnedFd>,
    /// The page ranges the parent images hold for this task, in address
    /// order (empty without parent images).
    pub parent: Vec<(u64, u64)>,
    /// Whether the tracking goes on after this dump (pre-dump,
    /// `--track-mem`), armed again; else it is only read.
    pub keep: bool,
    /// Pages taken from the parent images, counted.
    pub from_parent: u64,
    /// With `--auto-dedup`: where the parent images hold each page, to
    /// punch out of them the pages this dump saves again (`saved`).
    pub dedup: Option<Pages>,
    pub saved: Vec<(u64, u64)>,
}

impl Tracking {
    /// With a page server, whose images directory holds the parent images
    /// (`has`) or not: the pages the tracking says are unchanged are then
    /// the parent's, as CRIU takes them (this side has no parent pagemap to
    /// check them against); none without parent. No deduplication there.
    pub fn remote_parent(&mut self, has: bool) {
        self.parent = if has && !self.uffds.is_empty() {
            vec![(0, u64::MAX)]
        } else {
            Vec::new()
        };
        self.dedup = None;
    }
}

/// The tracking of a whole dump: what the parent's keeper handed over,
/// where the parent images are, and what goes to the next keeper.
#[derive(Default)]
pub struct TreeTracking {
    /// Whether memory is tracked at all (parent images, or tracking that
    /// goes on).
    active: bool,
    held: Vec<Held>,
    parent_dir: Option<PathBuf>,
    keep: bool,
    kept: Vec<Held>,
    /// Restart records: from the parent's keeper, for the next.
    restarts_in: Vec<Restart>,
    restarts_out: Vec<Restart>,
    /// Pages taken from the parent images, over the whole tree.
    pub from_parent: u64,
    /// `--auto-dedup`: the parent images' pages saved again are punched
    /// out of their files; the directories so changed.
    auto_dedup: bool,
    dedup: Dedup,
}

/// `--auto-dedup`'s work, done once the dump is complete: each task's
/// pages saved again, punched out of the parent images that held them.
#[derive(Default)]
pub struct Dedup(Vec<(Pages, Vec<(u64, u64)>)>);

impl Dedup {
    /// Punches the parent images, then writes their manifests again (their
    /// checksums follow the punched files). A failure is told: the dump
    /// itself is whole, the parents hold more than they need.
    pub fn run(self) {
        let mut dirs = std::collections::BTreeSet::new();
        let mut bytes = 0;
        for (parent, saved) in &self.0 {
            match punch(parent, saved) {
                Ok(n) => bytes += n,
                Err(e) => crate::warn!("--auto-dedup: a parent pages file not punched: {e}"),
            }
            dirs.extend(
                parent
                    .paths
                    .iter()
                    .filter_map(|p| Path::new(p).parent())
                    .map(Path::to_path_buf),
            );
        }
        for dir in dirs {
            if let Err(e) = crest_images::manifest::write(&dir) {
                crate::warn!(
                    "{}: manifest not written again after --auto-dedup: {e}",
                    dir.display()
                );
            }
        }
        if bytes > 0 {
            crate::info!("--auto-dedup: {bytes} bytes punched out of the parent images");
        }
    }
}

impl TreeTracking {
    /// The tracking of a dump into `dir`: with the parent images at
    /// `parent` (relative to `dir`, as CRIU takes `--prev-images-dir`),
    /// whose keeper hands its trackings over; going on after the dump
    /// when `keep`.
    pub fn begin(dir: &Path, parent: Option<&Path>, keep: bool, auto_dedup: bool) -> TreeTracking {
        let parent_dir = parent.map(|p| dir.join(p));
        let kept = parent_dir.as_deref().map_or_else(Kept::default, |p| {
            let inv: Result<InventoryEntry, _> =
                crest_images::read_one(p, names::INVENTORY, magic::INVENTORY);
            match inv.ok().and_then(|i| i.crest_track_keeper) {
                Some(name) => keeper::take(&name).unwrap_or_else(|e| {
                    crate::warn!(
                        "the memory tracking since {} is lost ({e}): every page is saved again",
                        p.display()
                    );
                    Kept::default()
                }),
                None => {
                    crate::info!(
                        "{} has no memory tracking of crest's: every page is saved again",
                        p.display()
                    );
                    Kept::default()
                }
            }
        });
        TreeTracking {
            active: parent_dir.is_some() || keep,
            held: kept.held,
            restarts_in: kept.restarts,
            parent_dir,
            keep,
            auto_dedup,
            ..TreeTracking::default()
        }
    }

    /// Whether memory is tracked at this dump.
    pub fn active(&self) -> bool {
        self.active
    }

    /// The tracking of process `pid` (started at `start_time`) for its
    /// dump: none for a process with a userfaultfd of its own.
    pub fn for_task(&mut self, pid: i32, start_time: u64) -> Option<Tracking> {
        if !self.active {
            return None;
        }
        let (held, others): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.pid == pid);
        self.held = others;
        if has_own_userfaultfd(pid) {
            crate::info!("pid {pid} has a userfaultfd of its own: its memory is not tracked");
            return None;
        }
        // (a pid used again by another process: its tracking was not this)
        let uffds: Vec<OwnedFd> = held
            .into_iter()
            .filter(|h| h.start_time == start_time)
            .map(|h| h.uffd)
            .collect();
        let parent_map = self.parent_dir.as_deref().and_then(|dir| {
            super::image::read_pagemap(dir, pid as u32)
                .map_err(|e| crate::info!("pid {pid}: no pages of the parent images used ({e})"))
                .ok()
                .map(|m| (dir, m))
        });
        let parent = match (&parent_map, uffds.is_empty()) {
            (Some((_, (_, entries))), false) => held_ranges(entries),
            _ => Vec::new(),
        };
        let dedup = parent_map
            .filter(|_| self.auto_dedup)
            .and_then(|(dir, (id, m))| {
                Pages::load(dir, pid as u32, id, &m)
                    .map_err(|e| crate::info!("pid {pid}: parent images not deduplicated ({e})"))
                    .ok()
            });
        Some(Tracking {
            uffds,
            parent,
            keep: self.keep,
            from_parent: 0,
            dedup,
            saved: Vec::new(),
        })
    }

    /// Process `pid`'s tracking after its dump: kept for the next keeper
    /// when the tracking goes on.
    pub fn done(&mut self, pid: i32, start_time: u64, tr: Tracking) {
        self.from_parent += tr.from_parent;
        if let Some(p) = tr.dedup {
            self.dedup.0.push((p, tr.saved));
        }
        if self.keep {
            self.kept.extend(tr.uffds.into_iter().map(|uffd| Held {
                pid,
                start_time,
                uffd,
            }));
        } else {
            retire(tr.uffds);
        }
    }

    /// The call thread `tid` of `pid` was in when a round left it to
    /// `restart_syscall` (found at the same place with the same arguments).
    fn restarted(&self, (pid, tid): (i32, i32), r: &UserRegs) -> Option<u64> {
        let in_restart = r.orig_rax == NR_RESTART_SYSCALL && r.rax as i64 == -ERESTART_RESTARTBLOCK;
        let args = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
        in_restart.then_some(())?;
        self.restarts_in
            .iter()
            .find(|x| x.pid == pid && x.tid == tid && x.rip == r.rip && x.args == args)
            .map(|x| x.nr)
    }

    /// Notes the threads of `pid` (their seized registers) that this
    /// round leaves in a call the kernel restarts through
    /// `restart_syscall`, for the next round (when the tracking goes on).
    pub fn note_restarts(&mut self, pid: i32, threads: &[(i32, UserRegs)]) {
        if !self.keep {
            return;
        }
        for (tid, r) in threads {
            if (r.orig_rax as i64) < 0 || r.rax as i64 != -ERESTART_RESTARTBLOCK {
                continue;
            }
            let nr = if r.orig_rax == NR_RESTART_SYSCALL {
                match self.restarted((pid, *tid), r) {
                    Some(nr) => nr,
                    None => continue,
                }
            } else {
                r.orig_rax
            };
            self.restarts_out.push(Restart {
                pid,
                tid: *tid,
                nr,
                rip: r.rip,
                args: [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9],
            });
        }
    }

    /// A thread dumped in `restart_syscall` that an earlier round left
    /// there: the call it restarts, as if dumped in it (the restore then
    /// makes that call again from its arguments, where `restart_syscall`
    /// would give EINTR in the new task).
    pub fn original_call(&self, (pid, tid): (i32, i32), r: &UserRegs) -> Option<u64> {
        let nr = self.restarted((pid, tid), r)?;
        crate::info!("thread {tid} of pid {pid}: in restart_syscall for call {nr}");
        Some(nr)
    }

    /// `--auto-dedup`'s work, for when the dump is complete.
    pub fn take_dedup(&mut self) -> Dedup {
        std::mem::take(&mut self.dedup)
    }

    /// After the dump: a keeper holding the trackings that go on, and its
    /// name for the images. The trackings that do not go on end here.
    pub fn finish(&mut self) -> Option<String> {
        self.held.clear();
        let kept = Kept {
            held: std::mem::take(&mut self.kept),
            restarts: std::mem::take(&mut self.restarts_out),
        };
        if kept.held.is_empty() {
            return None;
        }
        match keeper::start(&kept) {
            Ok(name) => Some(name),
            Err(e) => {
                crate::warn!("memory tracking not kept ({e}): the next dump saves every page");
                None
            }
        }
    }
}

/// Userfaultfds of trackings that end with this dump, closed once the tree
/// is killed or let go ([`close_retired`]): the last close clears the
/// protection of every page, which for a large task takes a while, and
/// need not be done while the tree is frozen.
static RETIRED: std::sync::Mutex<Vec<OwnedFd>> = std::sync::Mutex::new(Vec::new());

fn retire(uffds: Vec<OwnedFd>) {
    RETIRED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(uffds);
}

/// Closes the userfaultfds of the trackings that ended with the dump.
pub fn close_retired() {
    drop(std::mem::take(
        &mut *RETIRED.lock().unwrap_or_else(|e| e.into_inner()),
    ));
}

/// Punches out of the parent images' pages files (`parent`) the pages of
/// `saved` (address, length), which this dump saved again (CRIU's
/// `--auto-dedup`): the parent images then hold them no more, as their
/// child replaces them.
pub fn punch(parent: &Pages, saved: &[(u64, u64)]) -> std::io::Result<u64> {
    use rustix::fs::{fallocate, FallocateFlags};
    let files: Vec<std::fs::File> = parent
        .paths
        .iter()
        .map(|p| std::fs::OpenOptions::new().write(true).open(p))
        .collect::<Result<_, _>>()?;
    let mut punched = 0;
    let runs = &parent.runs;
    for &(addr, len) in saved {
        let end = addr + len;
        let first = runs.partition_point(|r| r.addr + r.len <= addr);
        for r in runs[first..].iter().take_while(|r| r.addr < end) {
            let (s, e) = (r.addr.max(addr), (r.addr + r.len).min(end));
            if s >= e {
                continue;
            }
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            fallocate(&files[r.src], flags, r.off + (s - r.addr), e - s)?;
            punched += e - s;
        }
    }
    Ok(punched)
}

/// The page ranges a pagemap holds (its own or its parents'), sorted and
/// merged.
fn held_ranges(entries: &[PagemapEntry]) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = entries
        .iter()
        .filter(|e| {
            e.flags.unwrap_or(0) & (PE_PRESENT | PE_PARENT) != 0 || e.in_parent == Some(true)
        })
        .map(|e| {
            (
                e.vaddr,
                e.vaddr
                    .saturating_add(e.pages().saturating_mul(super::PAGE)),
            )
        })
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Whether mapping `m` is one the tracking covers: private memory whose
/// pages a dump saves (`saved`), of normal pages.
pub fn trackable(m: &MapsEntry, hugetlb: bool, saved: bool) -> bool {
    !m.shared && saved && !hugetlb
}

/// The ranges of `[start, end)` not written since the tracking was last
/// armed, the tracking armed again there when it goes on. `None` when the
/// mapping's protection is not crest's asynchronous one (the scan refuses
/// it): nothing of it is then known to be clean.
pub fn clean_ranges(
    pagemap: &impl AsRawFd,
    (start, end): (u64, u64),
    rearm: bool,
) -> Option<Vec<(u64, u64)>> {
    // Only pages that are there (present or swapped) are asked for: a
    // query of "written" alone takes every empty entry of a page table
    // for written, and arming it leaves a marker there that the pagemap
    // shows as a swapped page.
    let q = ScanQuery {
        flags: misc::PM_SCAN_CHECK_WPASYNC | if rearm { misc::PM_SCAN_WP_MATCHING } else { 0 },
        all: misc::PAGE_IS_WRITTEN,
        any: misc::PAGE_IS_PRESENT | misc::PAGE_IS_SWAPPED,
        report: misc::PAGE_IS_WRITTEN,
    };
    let written = misc::pagemap_scan(pagemap, start, end, q).ok()?;
    Some(complement((start, end), written.iter().map(|w| (w.0, w.1))))
}

/// `[start, end)` without the sorted ranges `holes`.
fn complement(
    (start, end): (u64, u64),
    holes: impl Iterator<Item = (u64, u64)>,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for (s, e) in holes {
        let (s, e) = (s.max(start), e.min(end));
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

/// The intersection of two sorted lists of disjoint ranges.
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Splits `(addr, len)` by the sorted ranges `reuse`: the pieces, in
/// order, each with whether it lies in `reuse`.
pub fn split(addr: u64, len: u64, reuse: &[(u64, u64)]) -> Vec<(u64, u64, bool)> {
    let end = addr + len;
    let mut out = Vec::new();
    let mut at = addr;
    let first = reuse.partition_point(|r| r.1 <= addr);
    for &(s, e) in &reuse[first..] {
        if s >= end {
            break;
        }
        let (s, e) = (s.max(at), e.min(end));
        if s > at {
            out.push((at, s - at, false));
        }
        if e > s {
            out.push((s, e - s, true));
            at = e;
        }
    }
    if at < end {
        out.push((at, end - at, false));
    }
    out
}

/// Registers `ranges` of the task for tracking and arms them, through a
/// userfaultfd the task makes, which crest then keeps beside the ones it
/// has (the task's fd closed: a crest that dies meanwhile leaves it to the
/// recovery code, which closes it). A range the kernel will not register
/// stays untracked (its pages are saved whole at every dump).
pub fn register(t: &mut Tracee, tr: &mut Tracking, ranges: &[(u64, u64)]) -> Result<(), DumpError> {
    if ranges.is_empty() {
        return Ok(());
    }
    let pid = t.pid();
    let fd = made_in_task(t)?;
    let (uffd, registered) = t.with_fd(fd, |t, fd| -> Result<_, DumpError> {
        crest_sys::fault::point("track: a userfaultfd in the task")?;
        let buf = t.scratch(32).at(pid, "scratch for UFFDIO_REGISTER")?;
        let mut done = Vec::new();
        for &(start, end) in ranges {
            let mut reg = [0u8; 32];
            reg[0..8].copy_from_slice(&start.to_le_bytes());
            reg[8..16].copy_from_slice(&(end - start).to_le_bytes());
            reg[16..24].copy_from_slice(&UFFDIO_REGISTER_MODE_WP.to_le_bytes());
            t.write_mem(buf, &reg).at(pid, "write uffdio_register")?;
            match t.syscall(nr::IOCTL, &[fd, UFFDIO_REGISTER, buf]) {
                Ok(_) => done.push((start, end)),
                Err(e) => crate::info!(
                    "pid {pid}: mapping {start:#x}-{end:#x} not tracked (UFFDIO_REGISTER: {e})"
                ),
            }
        }
        crest_sys::fault::point("track: mappings registered")?;
        let uffd = if done.is_empty() {
            None
        } else {
            Some(crate::remote::take_fd(pid, fd as u32)?)
        };
        Ok((uffd, done))
    })?;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).at(pid, "open pagemap")?;
    for r in registered {
        // every page present now is saved by this dump: armed from here
        if clean_ranges(&pagemap, r, true).is_none() {
            crate::info!(
                "pid {pid}: mapping {:#x}-{:#x} could not be armed",
                r.0,
                r.1
            );
        }
    }
    tr.uffds.extend(uffd);
    Ok(())
}

/// A userfaultfd made by the task, its API agreed with asynchronous write
/// protection: its fd in the task.
fn made_in_task(t: &mut Tracee) -> Result<u64, DumpError> {
    let pid = t.pid();
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    // (a task without CAP_SYS_PTRACE may make one for user faults only,
    // which is all asynchronous protection needs)
    let fd = match t.syscall(nr::USERFAULTFD, &[flags]) {
        Ok(fd) => fd,
        Err(_) => t.call(
            nr::USERFAULTFD,
            &[flags | UFFD_USER_MODE_ONLY],
            "userfaultfd",
        )?,
    };
    let api = (|| -> Result<(), DumpError> {
        let mut a = [0u8; 24];
        a[0..8].copy_from_slice(&UFFD_API.to_le_bytes());
        a[8..16].copy_from_slice(&UFFD_FEATURE_WP_ASYNC.to_le_bytes());
        let buf = t.put(&a).at(pid, "write uffdio_api")?;
        t.call(nr::IOCTL, &[fd, UFFDIO_API, buf], "UFFDIO_API (WP_ASYNC)")?;
        Ok(())
    })();
    if let Err(e) = api {
        t.close_quietly(fd);
        return Err(e);
    }
    Ok(fd)
}

/// Whether the task holds a userfaultfd of its own (its protections would
/// then not be crest's to read).
pub fn has_own_userfaultfd(pid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return true;
    };
    dir.flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[userfaultfd]")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complement_and_intersect() {
        let c = complement((0, 100), [(10, 20), (20, 30), (90, 120)].into_iter());
        assert_eq!(c, vec![(0, 10), (30, 90)]);
        assert_eq!(complement((0, 10), std::iter::empty()), vec![(0, 10)]);
        let i = intersect(&[(0, 10), (30, 90)], &[(5, 40), (50, 60), (85, 200)]);
        assert_eq!(i, vec![(5, 10), (30, 40), (50, 60), (85, 90)]);
    }

    #[test]
    fn split_marks_the_reused_pieces() {
        let r = [(0x1000, 0x3000), (0x5000, 0x6000)];
        assert_eq!(
            split(0x2000, 0x5000, &r),
            vec![
                (0x2000, 0x1000, true),
                (0x3000, 0x2000, false),
                (0x5000, 0x1000, true),
                (0x6000, 0x1000, false)
            ]
        );
        assert_eq!(split(0x8000, 0x1000, &r), vec![(0x8000, 0x1000, false)]);
    }
}
