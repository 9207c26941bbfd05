//! Restore of an address space inside a task that is a fork of crest:
//! a private work area (a `syscall` gadget plus scratch memory) is mapped
//! where the dumped task had nothing, everything else the task inherited
//! is unmapped, every dumped VMA is mapped at its address, the task reads
//! its own pages from the pages file with `preadv`, protections are set,
//! vdso/vvar are placed where they were (`arch_prctl(ARCH_MAP_VDSO_64)`)
//! and the mm fields are set with `prctl(PR_SET_MM, PR_SET_MM_MAP)`.

use super::{status, PAGE};
use crate::error::{RestoreCtx, RestoreError};
use crate::files::restore::RestoreFiles;
use crate::remote::Remote;
use crest_images::pb::{MmEntry, PagemapEntry, VmaEntry};
use crest_inject::{nr, Tracee};

/// Size of the work area: one gadget page and the scratch memory.
pub const WORK_AREA: u64 = 1 << 20;
const ARCH_MAP_VDSO_64: u64 = 0x2003;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const PRCTL_MM_MAP_SIZE: usize = 104;
/// Most bytes one `preadv` call moves (below the kernel's MAX_RW_COUNT).
const MAX_PREADV: u64 = 1 << 30;
const IOVS_PER_CALL: usize = 1024;

/// Where the work area lives in the task.
pub struct WorkArea {
    pub addr: u64,
    pub len: u64,
}

pub(super) fn current_ranges(pid: i32) -> Result<Vec<(u64, u64)>, RestoreError> {
    let maps = crate::procfs::read_maps(pid).map_err(|source| RestoreError::Proc {
        pid,
        step: "read maps of the new task",
        source,
    })?;
    Ok(maps.iter().map(|m| (m.start, m.end)).collect())
}

pub(super) fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Finds a hole for the work area that neither the dumped VMAs nor the
/// task's current mappings use, maps it, and writes the gadget.
pub fn map_work_area(t: &mut Tracee, mm: &MmEntry) -> Result<WorkArea, RestoreError> {
    let pid = t.pid();
    let mut used: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    used.extend(current_ranges(pid)?);
    used.sort_unstable();
    // Try below each used range, from high to low addresses, keeping a
    // gap; then the low addresses above mmap_min_addr.
    let mut candidates: Vec<u64> = used
        .iter()
        .filter_map(|r| r.0.checked_sub(WORK_AREA + 16 * PAGE))
        .collect();
    candidates.push(0x1000_0000);
    candidates.push(0x10_0000);
    let want = candidates
        .into_iter()
        .filter(|a| *a >= 0x10000)
        .map(|a| a & !(PAGE - 1))
        .find(|a| !used.iter().any(|r| overlaps(*r, (*a, *a + WORK_AREA))))
        .ok_or_else(|| RestoreError::Unsupported {
            pid,
            what: "an address space with no room for crest's work area".into(),
        })?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    let got = t
        .syscall(nr::MMAP, &[want, WORK_AREA, prot, flags, u64::MAX, 0])
        .rat(pid, "map the work area")?;
    if got != want {
        return Err(RestoreError::Unsupported {
            pid,
            what: format!("work area asked at {want:#x}, got {got:#x}"),
        });
    }
    // syscall; int3
    t.write_mem(got, &[0x0f, 0x05, 0xcc])
        .rat(pid, "write the syscall gadget")?;
    t.set_syscall_ip(got);
    t.adopt_scratch(got + PAGE, (WORK_AREA - PAGE) as usize);
    Ok(WorkArea {
        addr: got,
        len: WORK_AREA,
    })
}

/// Unmaps everything the task inherited from crest but the work area and
/// the areas it keeps to share with its parent or children (`keep`, where
/// they are now).
pub fn unmap_inherited(
    t: &mut Tracee,
    work: &WorkArea,
    keep: &[(u64, u64)],
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let work_range = (work.addr, work.addr + work.len);
    for (start, end) in current_ranges(pid)? {
        if overlaps((start, end), work_range) {
            continue;
        }
        if start >= 0xffff_ffff_ff60_0000 {
            continue; // vsyscall cannot be unmapped
        }
        for (s, e) in minus((start, end), keep) {
            t.syscall(nr::MUNMAP, &[s, e - s])
                .rat(pid, format!("munmap inherited {s:#x}-{e:#x}"))?;
        }
    }
    Ok(())
}

/// The parts of `r` outside every range of `holes`.
fn minus(r: (u64, u64), holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut parts = vec![r];
    for &(hs, he) in holes {
        parts = parts
            .into_iter()
            .flat_map(|(s, e)| {
                if !overlaps((s, e), (hs, he)) {
                    return vec![(s, e)];
                }
                [(s, hs.max(s)), (he.min(e), e)]
                    .into_iter()
                    .filter(|(a, b)| a < b)
                    .collect()
            })
            .collect();
    }
    parts
}

fn is_special(v: &VmaEntry) -> bool {
    v.status & (status::VDSO | status::VVAR | status::VSYSCALL) != 0
}

/// Maps every dumped VMA but vdso/vvar, writable for now.
/// Shared anonymous memory already restored, by its dumped shmem id
/// (inode): the task and range that map it. Other tasks map the same
/// object through `/proc/PID/map_files/START-END`.
pub type SharedAnon = std::collections::HashMap<u64, (i32, u64, u64)>;

/// Whether the pagemap has pages inside the VMA (which must then be
/// writable while it is filled).
pub(super) fn has_pages(v: &VmaEntry, pagemap: &[PagemapEntry]) -> bool {
    pagemap
        .iter()
        .any(|e| e.vaddr >= v.start && e.vaddr < v.end)
}

/// Maps every dumped VMA but vdso/vvar and those already in place
/// (`placed`, see `cow`): with its final protection, plus write permission
/// where pages are to be filled.
pub fn map_vmas(
    t: &mut Tracee,
    (mm, pagemap): (&MmEntry, &[PagemapEntry]),
    placed: &[(u64, u64)],
    files: &mut RestoreFiles,
    shared: &mut SharedAnon,
) -> Result<(), RestoreError> {
    // One fd per mapped file and mode, closed at the end.
    let mut open: std::collections::HashMap<(String, i32), u64> = std::collections::HashMap::new();
    let res = map_each(t, (mm, pagemap), placed, files, shared, &mut open);
    for fd in open.into_values() {
        t.close(fd)?;
    }
    res
}

fn map_each(
    t: &mut Tracee,
    (mm, pagemap): (&MmEntry, &[PagemapEntry]),
    placed: &[(u64, u64)],
    files: &mut RestoreFiles,
    shared: &mut SharedAnon,
    open: &mut std::collections::HashMap<(String, i32), u64>,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    for v in mm.vmas.iter().filter(|v| !is_special(v)) {
        if placed.contains(&(v.start, v.end)) {
            continue;
        }
        if v.end <= v.start || v.start % PAGE != 0 || v.end % PAGE != 0 {
            return Err(bad_vma(pid, v, "bad bounds"));
        }
        let len = v.end - v.start;
        let prot = if has_pages(v, pagemap) {
            u64::from(v.prot) | libc::PROT_WRITE as u64
        } else {
            u64::from(v.prot)
        };
        // (locked later, by protect, once the pages are in)
        let mut flags = (u64::from(v.flags) & !(libc::MAP_LOCKED as u64)) | libc::MAP_FIXED as u64;
        let file_backed = v.status & (status::FILE_PRIVATE | status::FILE_SHARED) != 0;
        let shared_file = v.status & status::FILE_SHARED != 0;
        // A shared file mapping keeps its dumped protection: it cannot be
        // made writable through a read-only fd, and needs no filling.
        let prot = if shared_file { u64::from(v.prot) } else { prot };
        if file_backed {
            flags &= !(libc::MAP_ANONYMOUS as u64);
            let id = v.shmid as u32;
            // a shared mapping whose file was open for writing (it could be
            // made writable, smaps `mw`) gets a file open for writing
            let entry_rw = files
                .entries
                .get(&id)
                .and_then(|e| e.reg.as_ref())
                .is_some_and(|r| r.flags as i32 & libc::O_ACCMODE == libc::O_RDWR);
            let oflags = if shared_file && (v.prot & libc::PROT_WRITE as u32 != 0 || entry_rw) {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            let path = match files.reg_path(id) {
                Some(p) => p.to_string(),
                None if v.status & status::MEMFD != 0 => format!("memfd entry {id}"),
                None => return Err(bad_vma(pid, v, "names a file that is not in files.img")),
            };
            let key = (path.clone(), oflags);
            let fd = match open.get(&key) {
                Some(fd) => *fd,
                None => {
                    let range = (v.start, v.end);
                    let ghost = files.remaps.get(&id).copied();
                    let reg = files.entries.get(&id).and_then(|e| e.reg.clone());
                    let fd = match crate::files::memfd::open_for_map(t, files, id, oflags, range) {
                        Some(fd) => fd?,
                        // a file deleted while mapped: made again (once)
                        None => match (ghost, reg) {
                            (Some(g), Some(reg)) => {
                                crate::files::ghost::open(t, &reg, oflags, g, files)?
                            }
                            _ => t.open(&path, oflags)?,
                        },
                    };
                    open.insert(key, fd);
                    fd
                }
            };
            t.syscall(nr::MMAP, &[v.start, len, prot, flags, fd, v.pgoff])
                .rat(pid, format!("mmap {:#x}-{:#x} of {path}", v.start, v.end))?;
        } else if v.status & status::SYSVIPC != 0 {
            attach_sysv(t, v)?;
        } else if v.status & status::ANON_SHARED != 0 && v.shmid != 0 {
            if let Some(&(holder, hs, he)) = shared.get(&v.shmid) {
                // crest opens the mapping (map_files wants rights in
                // crest's user namespace, which a task inside a nested one
                // has not) and hands the task the fd.
                let path = format!("/proc/{holder}/map_files/{hs:x}-{he:x}");
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .rat(pid, format!("open {path}"))?;
                let fd = t.give_fd(&std::os::fd::OwnedFd::from(file))?;
                let flags = flags & !(libc::MAP_ANONYMOUS as u64);
                let r = t.syscall(nr::MMAP, &[v.start, len, prot, flags, fd, v.pgoff]);
                t.close(fd)?;
                r.rat(
                    pid,
                    format!("mmap {:#x}-{:#x} shared with pid {holder}", v.start, v.end),
                )?;
            } else {
                t.syscall(nr::MMAP, &[v.start, len, prot, flags, u64::MAX, 0])
                    .rat(pid, format!("mmap {:#x}-{:#x}", v.start, v.end))?;
                shared.insert(v.shmid, (pid, v.start, v.end));
            }
        } else {
            t.syscall(nr::MMAP, &[v.start, len, prot, flags, u64::MAX, 0])
                .rat(pid, format!("mmap {:#x}-{:#x}", v.start, v.end))?;
        }
    }
    Ok(())
}

/// A SysV segment's VMA: the part at offset 0 attaches the whole segment
/// there (`shmat` with `SHM_REMAP`); every part then gets its protection.
/// The segment itself was restored with its namespace (or is crest's
/// namespace's, which must still hold it).
fn attach_sysv(t: &mut Tracee, v: &VmaEntry) -> Result<(), RestoreError> {
    const SHM_RDONLY: u64 = 0o10000;
    const SHM_REMAP: u64 = 0o40000;
    const SHM_EXEC: u64 = 0o100000;
    let pid = t.pid();
    if v.pgoff == 0 {
        let mut flags = SHM_REMAP;
        if v.prot & libc::PROT_WRITE as u32 == 0 {
            flags |= SHM_RDONLY;
        }
        if v.prot & libc::PROT_EXEC as u32 != 0 {
            flags |= SHM_EXEC;
        }
        let at = t.syscall(nr::SHMAT, &[v.shmid, v.start, flags]).rat(
            pid,
            format!("shmat of SysV segment {} at {:#x}", v.shmid, v.start),
        )?;
        if at != v.start {
            return Err(bad_vma(pid, v, "SysV segment attached elsewhere"));
        }
    } else if current_ranges(pid)?
        .iter()
        .all(|&(s, e)| !(s <= v.start && v.end <= e))
    {
        return Err(bad_vma(
            pid,
            v,
            "part of a SysV segment whose start is not mapped",
        ));
    }
    t.syscall(nr::MPROTECT, &[v.start, v.end - v.start, u64::from(v.prot)])
        .rat(pid, format!("mprotect SysV segment part {:#x}", v.start))?;
    Ok(())
}

fn bad_vma(pid: i32, v: &VmaEntry, what: &str) -> RestoreError {
    RestoreError::BadImage {
        pid,
        file: crest_images::names::mm(pid as u32),
        what: format!("vma {:#x}-{:#x}: {what}", v.start, v.end),
    }
}

/// A run of pages: where it goes, its length and where it is in the pages
/// file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub addr: u64,
    pub len: u64,
    pub off: u64,
}

/// The pagemap's runs with their offsets in the pages file (stored one
/// after the other, in pagemap order).
pub fn page_runs(pagemap: &[PagemapEntry]) -> Vec<Run> {
    let mut off = 0u64;
    pagemap
        .iter()
        .map(|e| {
            let len = e.pages().saturating_mul(PAGE);
            let r = Run {
                addr: e.vaddr,
                len,
                off,
            };
            off = off.saturating_add(len);
            r
        })
        .collect()
}

/// Fills the pages from the pages file (but those of the areas in
/// `placed`, which have theirs), on two CPUs at once: the task reads the
/// first part itself with injected `preadv` calls (one copy, at most 1024
/// runs each), while a crest thread writes the rest with
/// `process_vm_writev`. The page faults in the fresh memory, the slow part,
/// are thus taken in parallel.
pub fn fill_pages(
    t: &mut Tracee,
    (mm, pagemap): (&MmEntry, &[PagemapEntry]),
    placed: &[(u64, u64)],
    pages_path: &str,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    check_pagemap(pid, mm, pagemap)?;
    if pagemap.is_empty() {
        return Ok(());
    }
    let all = page_runs(pagemap);
    let need = all.last().map_or(0, |r| r.off + r.len);
    let runs: Vec<Run> = all
        .into_iter()
        .filter(|r| !placed.iter().any(|p| r.addr >= p.0 && r.addr < p.1))
        .collect();
    let total: u64 = runs.iter().map(|r| r.len).sum();
    let split = if total >= 64 << 20 { total / 2 } else { total };
    let (mine, theirs) = split_runs(&runs, split);
    let file = std::fs::File::open(pages_path).rat(pid, format!("open {pages_path}"))?;
    let len = file
        .metadata()
        .rat(pid, format!("stat {pages_path}"))?
        .len();
    if len < need {
        return Err(RestoreError::BadImage {
            pid,
            file: pages_path.to_string(),
            what: format!("holds {len} bytes, the pagemap needs {need}"),
        });
    }
    std::thread::scope(|s| {
        let helper = s.spawn(|| write_runs(pid, &file, &theirs, pages_path));
        let res = read_in_task(t, &mine, pages_path);
        let helped = helper.join().unwrap_or_else(|_| {
            Err(RestoreError::Unsupported {
                pid,
                what: "a page writer thread that panicked".into(),
            })
        });
        res.and(helped)
    })
}

/// Splits runs at byte `at` of their concatenation.
fn split_runs(runs: &[Run], at: u64) -> (Vec<Run>, Vec<Run>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut seen = 0u64;
    for &r in runs {
        if seen + r.len <= at {
            a.push(r);
        } else if seen >= at {
            b.push(r);
        } else {
            let head = at - seen;
            a.push(Run { len: head, ..r });
            b.push(Run {
                addr: r.addr + head,
                len: r.len - head,
                off: r.off + head,
            });
        }
        seen += r.len;
    }
    (a, b)
}

/// The task reads `runs` from the pages file.
fn read_in_task(t: &mut Tracee, runs: &[Run], pages_path: &str) -> Result<(), RestoreError> {
    if runs.is_empty() {
        return Ok(());
    }
    let fd = t.open_crest_side(pages_path, libc::O_RDONLY)?;
    // one preadv reads runs that follow each other in the file
    let mut file_off = runs[0].off;
    let mut batch: Vec<(u64, u64)> = Vec::with_capacity(IOVS_PER_CALL);
    let mut batch_bytes = 0u64;
    for r in runs {
        if r.off != file_off + batch_bytes && !batch.is_empty() {
            preadv(t, fd, &batch, file_off, pages_path)?;
            batch.clear();
            batch_bytes = 0;
        }
        if batch.is_empty() {
            file_off = r.off;
        }
        let (mut addr, mut left) = (r.addr, r.len);
        while left > 0 {
            let take = left.min(MAX_PREADV - batch_bytes);
            batch.push((addr, take));
            batch_bytes += take;
            addr += take;
            left -= take;
            if batch.len() == IOVS_PER_CALL || batch_bytes == MAX_PREADV {
                file_off = preadv(t, fd, &batch, file_off, pages_path)?;
                batch.clear();
                batch_bytes = 0;
            }
        }
    }
    if !batch.is_empty() {
        preadv(t, fd, &batch, file_off, pages_path)?;
    }
    t.close(fd)?;
    Ok(())
}

/// Writes `runs` from the pages file into the task with
/// `process_vm_writev`.
fn write_runs(
    pid: i32,
    file: &std::fs::File,
    runs: &[Run],
    pages_path: &str,
) -> Result<(), RestoreError> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 16 << 20;
    let mut buf = Vec::new();
    let mut pending: Vec<(u64, usize)> = Vec::new();
    let mut pending_len = 0u64;
    let mut flush =
        |pending: &mut Vec<(u64, usize)>, len: u64, off: u64| -> Result<(), RestoreError> {
            buf.resize(len as usize, 0);
            file.read_exact_at(&mut buf, off)
                .rat(pid, format!("read {pages_path} at {off}"))?;
            let n = crest_sys::mem::write_remote(pid, pending, &buf)
                .rat(pid, "process_vm_writev of pages")?;
            if n as u64 != len {
                return Err(RestoreError::Io {
                    pid,
                    step: "process_vm_writev of pages (short write)".into(),
                    source: std::io::Error::from_raw_os_error(libc::EFAULT),
                });
            }
            pending.clear();
            Ok(())
        };
    // one read takes runs that follow each other in the file
    let mut offset = runs.first().map_or(0, |r| r.off);
    for r in runs {
        if r.off != offset + pending_len && pending_len > 0 {
            flush(&mut pending, pending_len, offset)?;
            pending_len = 0;
        }
        if pending_len == 0 {
            offset = r.off;
        }
        let (mut addr, mut left) = (r.addr, r.len);
        while left > 0 {
            let take = left.min(CHUNK - pending_len);
            pending.push((addr, take as usize));
            pending_len += take;
            addr += take;
            left -= take;
            if pending_len == CHUNK {
                flush(&mut pending, pending_len, offset)?;
                offset += pending_len;
                pending_len = 0;
            }
        }
    }
    if pending_len > 0 {
        flush(&mut pending, pending_len, offset)?;
    }
    Ok(())
}

/// Every pagemap run must lie inside a dumped, non-special VMA.
fn check_pagemap(pid: i32, mm: &MmEntry, pagemap: &[PagemapEntry]) -> Result<(), RestoreError> {
    for e in pagemap {
        let n = e.pages();
        let end = n.checked_mul(PAGE).and_then(|b| e.vaddr.checked_add(b));
        let inside = end.is_some_and(|end| {
            e.vaddr % PAGE == 0
                && mm
                    .vmas
                    .iter()
                    .any(|v| !is_special(v) && v.start <= e.vaddr && end <= v.end)
        });
        if !inside {
            return Err(RestoreError::BadImage {
                pid,
                file: crest_images::names::pagemap(pid as u32),
                what: format!("{n} pages at {:#x} lie outside every vma", e.vaddr),
            });
        }
    }
    Ok(())
}

fn preadv(
    t: &mut Tracee,
    fd: u64,
    iovs: &[(u64, u64)],
    mut off: u64,
    path: &str,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let mut rest: Vec<(u64, u64)> = iovs.to_vec();
    while !rest.is_empty() {
        let raw: Vec<u8> = rest
            .iter()
            .flat_map(|(a, l)| a.to_le_bytes().into_iter().chain(l.to_le_bytes()))
            .collect();
        let addr = t.put(&raw).rat(pid, "write iovecs")?;
        let n = t
            .syscall(nr::PREADV, &[fd, addr, rest.len() as u64, off])
            .rat(pid, format!("preadv from {path} at offset {off}"))?;
        if n == 0 {
            return Err(RestoreError::BadImage {
                pid,
                file: path.to_string(),
                what: format!("ends at offset {off}, before all pages were read"),
            });
        }
        off += n;
        let mut done = n;
        while let Some(first) = rest.first_mut() {
            if done >= first.1 {
                done -= first.1;
                rest.remove(0);
            } else {
                first.0 += done;
                first.1 -= done;
                break;
            }
        }
    }
    Ok(off)
}

/// `madvise` advice that makes pages fault (Linux 6.13).
const MADV_GUARD_INSTALL: u64 = 102;

/// Sets the final protection of the VMAs that were made writable to be
/// filled, and the madvise advice of every VMA.
/// Makes each AIO context again: `io_setup` with the size that gives a
/// ring of the dumped length, the ring moved to the dumped address (the
/// context's id) with `mremap`, which the kernel follows.
pub fn restore_aios(t: &mut Tracee, mm: &MmEntry, image: &str) -> Result<(), RestoreError> {
    let pid = t.pid();
    for a in &mm.aios {
        let len = u64::from(a.ring_len);
        let bad = |what: String| RestoreError::BadImage {
            pid,
            file: image.to_string(),
            what,
        };
        if a.id % PAGE != 0 || a.id == 0 || len == 0 || len % PAGE != 0 || a.nr_req == 0 {
            return Err(bad(format!(
                "an AIO ring at {:#x} of {len} bytes for {} requests",
                a.id, a.nr_req
            )));
        }
        let slot = t.scratch(8).rat(pid, "scratch")?;
        t.write_mem(slot, &0u64.to_ne_bytes())
            .rat(pid, "write an AIO context id")?;
        t.syscall(nr::IO_SETUP, &[u64::from(a.nr_req), slot]).rat(
            pid,
            format!("io_setup({}) for the AIO ring at {:#x}", a.nr_req, a.id),
        )?;
        let mut raw = [0u8; 8];
        t.read_mem(slot, &mut raw)
            .rat(pid, "read an AIO context id")?;
        let ctx = u64::from_ne_bytes(raw);
        if ctx != a.id {
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            let at = t
                .syscall(nr::MREMAP, &[ctx, len, len, flags, a.id])
                .rat(pid, format!("move the AIO ring {ctx:#x} to {:#x}", a.id))?;
            if at != a.id {
                return Err(bad(format!(
                    "the AIO ring made again went to {at:#x}, not {:#x}",
                    a.id
                )));
            }
        }
    }
    Ok(())
}

pub fn protect(t: &mut Tracee, mm: &MmEntry, pagemap: &[PagemapEntry]) -> Result<(), RestoreError> {
    let pid = t.pid();
    for v in mm.vmas.iter().filter(|v| !is_special(v)) {
        let widened = v.prot & libc::PROT_WRITE as u32 == 0 && has_pages(v, pagemap);
        if v.status & status::FILE_SHARED == 0 && widened {
            t.syscall(nr::MPROTECT, &[v.start, v.end - v.start, u64::from(v.prot)])
                .rat(pid, format!("mprotect {:#x}-{:#x}", v.start, v.end))?;
        }
        let madv = v.madv.unwrap_or(0);
        for adv in 0..u64::from(crate::mm::MADV_BIT_LOCKONFAULT) {
            if madv & (1 << adv) != 0 {
                t.syscall(nr::MADVISE, &[v.start, v.end - v.start, adv])
                    .rat(pid, format!("madvise({adv}) {:#x}-{:#x}", v.start, v.end))?;
            }
        }
        if v.flags & libc::MAP_LOCKED as u32 != 0 {
            let on_fault = madv & (1 << crate::mm::MADV_BIT_LOCKONFAULT) != 0;
            t.syscall(nr::MLOCK2, &[v.start, v.end - v.start, u64::from(on_fault)])
                .rat(pid, format!("mlock2 {:#x}-{:#x}", v.start, v.end))?;
        }
    }
    for g in mm.crest_guards.chunks_exact(2) {
        t.syscall(nr::MADVISE, &[g[0], g[1], MADV_GUARD_INSTALL])
            .rat(
                pid,
                format!("madvise(MADV_GUARD_INSTALL) {:#x}+{:#x}", g[0], g[1]),
            )?;
    }
    if let Some(mask) = mm.crest_membarrier {
        for cmd in crate::mm::MEMBARRIER_REGISTER
            .iter()
            .filter(|c| mask & **c != 0)
        {
            t.syscall(nr::MEMBARRIER, &[u64::from(*cmd), 0, 0])
                .rat(pid, format!("membarrier register {cmd:#x}"))?;
        }
    }
    for v in mm.vmas.iter().filter(|v| !is_special(v)) {
        if let Some(name) = v.crest_anon_name.as_deref() {
            const PR_SET_VMA: u64 = 0x5356_4d41;
            let mut raw = name.as_bytes().to_vec();
            raw.push(0);
            let p = t.put(&raw).rat(pid, "write a mapping's name")?;
            t.prctl(
                &[PR_SET_VMA, 0, v.start, v.end - v.start, p],
                &format!("name the mapping {:#x}-{:#x} {name:?}", v.start, v.end),
            )?;
        }
    }
    if let Some(filter) = mm.crest_coredump_filter {
        let path = format!("/proc/{pid}/coredump_filter");
        std::fs::write(&path, format!("{filter:#x}")).rat(pid, format!("write {path}"))?;
    }
    if mm.thp_disabled == Some(true) {
        t.prctl(
            &[crate::mm::PR_SET_THP_DISABLE, 1, 0, 0, 0],
            "prctl(PR_SET_THP_DISABLE)",
        )?;
    }
    if let Some(mcl) = mm.crest_mlockall.filter(|m| *m != 0) {
        t.syscall(nr::MLOCKALL, &[u64::from(mcl)])
            .rat(pid, format!("mlockall({mcl:#x})"))?;
    }
    Ok(())
}

/// Maps vvar and vdso where the dumped task had them and switches
/// injection to the vdso's `syscall` instruction.
pub fn place_vdso(t: &mut Tracee, mm: &MmEntry) -> Result<(), RestoreError> {
    let pid = t.pid();
    let special: Vec<&VmaEntry> = mm
        .vmas
        .iter()
        .filter(|v| v.status & (status::VDSO | status::VVAR) != 0)
        .collect();
    let Some(start) = special.iter().map(|v| v.start).min() else {
        return use_dumped_syscall(t, mm);
    };
    t.syscall(nr::ARCH_PRCTL, &[ARCH_MAP_VDSO_64, start])
        .rat(pid, format!("arch_prctl(ARCH_MAP_VDSO_64, {start:#x})"))?;
    let now = crate::procfs::read_maps(pid).map_err(|source| RestoreError::Proc {
        pid,
        step: "read maps after placing the vdso",
        source,
    })?;
    for v in &special {
        if !now.iter().any(|m| m.start == v.start && m.end == v.end) {
            return Err(RestoreError::Unsupported {
                pid,
                what: format!(
                    "a vdso/vvar layout different from this kernel's ({:#x}-{:#x} not placed)",
                    v.start, v.end
                ),
            });
        }
    }
    t.use_vdso_syscall().rat(pid, "find syscall in the vdso")?;
    Ok(())
}

/// Without a vdso, injection goes through a `syscall` instruction in any
/// dumped executable mapping.
fn use_dumped_syscall(t: &mut Tracee, mm: &MmEntry) -> Result<(), RestoreError> {
    let pid = t.pid();
    for v in &mm.vmas {
        if v.prot & libc::PROT_EXEC as u32 != 0 && v.prot & libc::PROT_READ as u32 != 0 {
            if let Ok(ip) = t.find_syscall_insn(v.start, v.end) {
                t.set_syscall_ip(ip);
                return Ok(());
            }
        }
    }
    Err(RestoreError::Unsupported {
        pid,
        what: "an address space without a vdso or any syscall instruction".into(),
    })
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP)` with the dumped mm fields, auxv and
/// executable.
pub fn set_mm_fields(t: &mut Tracee, mm: &MmEntry, exe: &str) -> Result<(), RestoreError> {
    let pid = t.pid();
    // The task inherited crest's executable; when the dumped one is the
    // same file it stays (the kernel refuses to replace an exe that is
    // still mapped), otherwise it is replaced through exe_fd.
    let current = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let same = current.is_some_and(|c| c.as_os_str() == std::ffi::OsStr::new(exe));
    let exe_fd = if same {
        u64::from(u32::MAX)
    } else {
        t.open(exe, libc::O_RDONLY)?
    };
    let auxv: Vec<u8> = mm
        .mm_saved_auxv
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let mut raw = Vec::with_capacity(PRCTL_MM_MAP_SIZE + auxv.len());
    for w in [
        mm.mm_start_code,
        mm.mm_end_code,
        mm.mm_start_data,
        mm.mm_end_data,
        mm.mm_start_brk,
        mm.mm_brk,
        mm.mm_start_stack,
        mm.mm_arg_start,
        mm.mm_arg_end,
        mm.mm_env_start,
        mm.mm_env_end,
    ] {
        raw.extend_from_slice(&w.to_le_bytes());
    }
    let base = t
        .scratch(PRCTL_MM_MAP_SIZE + auxv.len())
        .rat(pid, "scratch")?;
    let auxv_addr = base + PRCTL_MM_MAP_SIZE as u64;
    raw.extend_from_slice(&auxv_addr.to_le_bytes());
    raw.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
    raw.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    raw.extend_from_slice(&auxv);
    t.write_mem(base, &raw).rat(pid, "write prctl_mm_map")?;
    let r = t.syscall(
        nr::PRCTL,
        &[PR_SET_MM, PR_SET_MM_MAP, base, PRCTL_MM_MAP_SIZE as u64, 0],
    );
    if !same {
        t.close(exe_fd)?;
    }
    r.rat(pid, "prctl(PR_SET_MM, PR_SET_MM_MAP)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{minus, split_runs, Run};

    fn run(addr: u64, len: u64, off: u64) -> Run {
        Run { addr, len, off }
    }

    #[test]
    fn split_runs_cuts_inside_a_run() {
        let runs = [run(0x1000, 0x3000, 0), run(0x10000, 0x2000, 0x3000)];
        let (a, b) = split_runs(&runs, 0x4000);
        assert_eq!(a, vec![runs[0], run(0x10000, 0x1000, 0x3000)]);
        assert_eq!(b, vec![run(0x11000, 0x1000, 0x4000)]);
        let (a, b) = split_runs(&runs, 0x5000);
        assert_eq!((a.len(), b.len()), (2, 0));
    }

    #[test]
    fn minus_cuts_holes_out() {
        assert_eq!(minus((0, 10), &[]), vec![(0, 10)]);
        assert_eq!(
            minus((0, 10), &[(2, 4), (6, 7)]),
            vec![(0, 2), (4, 6), (7, 10)]
        );
        assert_eq!(minus((0, 10), &[(0, 10)]), vec![]);
        assert_eq!(minus((5, 10), &[(0, 6), (20, 30)]), vec![(6, 10)]);
    }
}
