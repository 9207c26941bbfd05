//! Restore of an address space inside a task that is a fork of crest:
//! a private work area (a `syscall` gadget plus scratch memory) is mapped
//! where the dumped task had nothing, everything else the task inherited
//! is unmapped, every dumped VMA is mapped at its address, the task reads
//! its own pages from the pages file with `preadv`, protections are set,
//! vdso/vvar are placed where they were (`arch_prctl(ARCH_MAP_VDSO_64)`)
//! and the mm fields are set with `prctl(PR_SET_MM, PR_SET_MM_MAP)`.

mod pages;
mod settle;

pub use pages::{defer_checks, fill_pages, reset_deferred, Pages, Run};
pub use settle::{place_vdso, protect, restore_aios, set_mm_fields};

use super::{status, PAGE};
use crate::error::RoomError;
use crate::error::{RestoreCtx, RestoreError};
use crate::files::context::RestoreFiles;
use crate::mm::error::MmError;
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
        .ok_or_else(|| {
            MmError::Unsupported {
                what: "an address space with no room for crest's work area".into(),
            }
            .in_restore(pid)
        })?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    let got = t
        .syscall(nr::MMAP, &[want, WORK_AREA, prot, flags, u64::MAX, 0])
        .rat(pid, "map the work area")?;
    if got != want {
        return Err(MmError::Unsupported {
            what: format!("work area asked at {want:#x}, got {got:#x}"),
        }
        .in_restore(pid));
    }
    // syscall; int3
    t.write_mem(got, &[0x0f, 0x05, 0xcc])
        .rat(pid, "write the syscall gadget")?;
    t.set_trap_gadget(got)
        .rat(pid, "write the loop of batched calls")?;
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
    // One munmap for each stretch between the ranges kept, over every
    // mapping and hole in it (an injected call each, against one per
    // mapping before: a fork of crest has about 40), from the first
    // mapping to the end of the last; vsyscall cannot be unmapped.
    let ranges: Vec<(u64, u64)> = current_ranges(pid)?
        .into_iter()
        .filter(|r| r.0 < 0xffff_ffff_ff60_0000)
        .collect();
    let (Some(low), Some(high)) = (
        ranges.iter().map(|r| r.0).min(),
        ranges.iter().map(|r| r.1).max(),
    ) else {
        return Ok(());
    };
    let mut kept = keep.to_vec();
    kept.push((work.addr, work.addr + work.len));
    for (s, e) in minus((low, high), &kept) {
        t.syscall(nr::MUNMAP, &[s, e - s])
            .rat(pid, format!("munmap inherited {s:#x}-{e:#x}"))?;
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
    // (plain mappings and their huge page advice gathered into batches,
    // run before a mapping made another way and at the end)
    let mut calls = crate::remote::Calls::default();
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
        if let Some(fd) = v.crest_map_fd {
            calls.run(t)?;
            if crate::files::uring::is_late(files, pid, fd) {
                // (an io_uring made once the task has its credentials:
                // memory of its own until then, filled like any)
                let anon = (libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u64;
                let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
                t.syscall(nr::MMAP, &[v.start, len, rw, anon, u64::MAX, 0])
                    .rat(
                        pid,
                        format!("mmap {:#x}-{:#x} for an io_uring", v.start, v.end),
                    )?;
            } else {
                map_ring(t, v, prot, fd)?;
            }
            continue;
        }
        let file_backed = v.status & (status::FILE_PRIVATE | status::FILE_SHARED) != 0;
        let shared_file = v.status & status::FILE_SHARED != 0;
        // A shared file mapping keeps its dumped protection: it cannot be
        // made writable through a read-only fd, and needs no filling.
        let prot = if shared_file { u64::from(v.prot) } else { prot };
        if file_backed {
            flags &= !(libc::MAP_ANONYMOUS as u64);
            let (fd, path) = file_for(t, v, files, open)?;
            calls.push(
                nr::MMAP,
                &[v.start, len, prot, flags, fd, v.pgoff],
                format!("mmap {:#x}-{:#x} of {path}", v.start, v.end),
            );
        } else if v.status & status::SYSVIPC != 0 {
            calls.run(t)?;
            attach_sysv(t, v)?;
        } else if v.status & status::ANON_SHARED != 0 && v.shmid != 0 {
            calls.run(t)?;
            map_shared_anon(t, v, (prot, flags), shared)?;
        } else {
            calls.push(
                nr::MMAP,
                &[v.start, len, prot, flags, u64::MAX, 0],
                format!("mmap {:#x}-{:#x}", v.start, v.end),
            );
        }
        huge_advice(&mut calls, v);
    }
    calls.run(t)?;
    Ok(())
}

/// Gives VMA `v` its transparent huge page advice (`MADV_HUGEPAGE`,
/// `MADV_NOHUGEPAGE`) as soon as it is mapped, so the pages filled into
/// it come as huge pages where the task had asked for them (the rest of
/// its advice waits for `protect`).
fn huge_advice(calls: &mut crate::remote::Calls, v: &VmaEntry) {
    let madv = v.madv.unwrap_or(0);
    for adv in [libc::MADV_HUGEPAGE, libc::MADV_NOHUGEPAGE] {
        if madv & (1 << adv) != 0 {
            calls.push(
                nr::MADVISE,
                &[v.start, v.end - v.start, adv as u64],
                format!("madvise({adv}) {:#x}-{:#x}", v.start, v.end),
            );
        }
    }
}

/// The top of the address space `mmap` places mappings below (47 bits).
const MMAP_TOP: u64 = (1 << 47) - PAGE;

/// The free ranges of the address space (from `low`) around mappings
/// `taken` but `keep`.
fn holes_but(low: u64, taken: &[(u64, u64)], keep: (u64, u64)) -> Vec<(u64, u64)> {
    let mut taken = taken.to_vec();
    taken.push(keep);
    minus((low, MMAP_TOP), &taken)
}

/// The lowest address a task may map (`vm.mmap_min_addr`).
fn mmap_min_addr() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(65536)
        .max(PAGE)
        .div_ceil(PAGE)
        * PAGE
}

/// Maps a kernel object's mapping from the object made again at `fd`
/// (a packet socket's rings: at the address, as asked). The kernel takes
/// no address for an io_uring's mapping (not even to move one there)
/// and places it in a free range of its choice: every free range of the
/// address space but the VMA's is taken for the time of the `mmap`, so
/// the VMA's range is the only one left.
pub fn map_ring(t: &mut Tracee, v: &VmaEntry, prot: u64, fd: u32) -> Result<(), RestoreError> {
    let pid = t.pid();
    let len = v.end - v.start;
    let fixed = (libc::MAP_SHARED | libc::MAP_FIXED) as u64;
    if t.syscall(
        nr::MMAP,
        &[v.start, len, prot, fixed, u64::from(fd), v.pgoff],
    )
    .is_ok()
    {
        // (a packet socket's rings go where they are asked to)
        return Ok(());
    }
    let what = |verb: &str| {
        format!(
            "{verb} {:#x}-{:#x} of the object at fd {fd}",
            v.start, v.end
        )
    };
    // (what the task still has there goes, as under MAP_FIXED)
    t.syscall(nr::MUNMAP, &[v.start, len])
        .rat(pid, what("clear"))?;
    let holes = holes_but(mmap_min_addr(), &current_ranges(pid)?, (v.start, v.end));
    let none = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE) as u64
        | libc::MAP_FIXED_NOREPLACE as u64;
    let mut held = Vec::with_capacity(holes.len());
    let mut res = Ok(0);
    for &(s, e) in &holes {
        match t.syscall(nr::MMAP, &[s, e - s, 0, none, u64::MAX, 0]) {
            Ok(_) => held.push((s, e)),
            Err(err) => {
                res = Err(err).rat(pid, what("hold the other free ranges"));
                break;
            }
        }
    }
    if res.is_ok() {
        res = t
            .syscall(
                nr::MMAP,
                &[
                    0,
                    len,
                    prot,
                    libc::MAP_SHARED as u64,
                    u64::from(fd),
                    v.pgoff,
                ],
            )
            .rat(pid, what("mmap"));
    }
    for (s, e) in held {
        t.syscall(nr::MUNMAP, &[s, e - s])
            .rat(pid, what("let go of the other free ranges"))?;
    }
    let at = res?;
    if at != v.start {
        t.syscall(nr::MUNMAP, &[at, len]).rat(pid, what("unmap"))?;
        return Err(MmError::Unsupported {
            what: format!(
                "a mapping at {:#x}-{:#x} of the object at fd {fd}: the kernel placed it at {at:#x}",
                v.start, v.end
            ),
        }
        .in_restore(pid));
    }
    Ok(())
}

/// The fd in `t` of the file VMA `v` maps, and its path for messages:
/// one per file and mode in `open`; a memfd, or a file deleted while
/// mapped, made again once.
fn file_for(
    t: &mut Tracee,
    v: &VmaEntry,
    files: &mut RestoreFiles,
    open: &mut std::collections::HashMap<(String, i32), u64>,
) -> Result<(u64, String), RestoreError> {
    let pid = t.pid();
    let id = v.shmid as u32;
    let shared_file = v.status & status::FILE_SHARED != 0;
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
                    (Some(g), Some(reg)) => crate::files::ghost::open(t, &reg, oflags, g, files)?,
                    (_, reg) => {
                        let fd = t.open(&path, oflags)?;
                        if let Err(e) = same_size(pid, fd, &path, reg.and_then(|r| r.size)) {
                            t.close_quietly(fd);
                            return Err(e);
                        }
                        fd
                    }
                },
            };
            open.insert(key, fd);
            fd
        }
    };
    Ok((fd, path))
}

/// Refuses a mapped file whose size is not the one it had at the dump
/// (`dumped`; CRIU's default file validation): its pages would be other
/// code or data than the task's, or a fault past its end.
fn same_size(pid: i32, fd: u64, path: &str, dumped: Option<u64>) -> Result<(), RestoreError> {
    let Some(want) = dumped else {
        return Ok(());
    };
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
        .rat(pid, format!("stat the mapped file {path}"))?;
    if meta.is_file() && meta.len() != want {
        return Err(MmError::Failed {
            what: format!(
                "the mapped file {path} holds {} bytes, {want} when dumped: it changed since the \
                 dump",
                meta.len()
            ),
        }
        .in_restore(pid));
    }
    Ok(())
}

/// Maps shared anonymous VMA `v`: the first task to map it makes it, the
/// others map the same memory through its `map_files` entry.
fn map_shared_anon(
    t: &mut Tracee,
    v: &VmaEntry,
    (prot, flags): (u64, u64),
    shared: &mut SharedAnon,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let len = v.end - v.start;
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
    MmError::BadImage {
        file: crest_images::names::mm(pid as u32),
        what: format!("vma {:#x}-{:#x}: {what}", v.start, v.end),
    }
    .in_restore(pid)
}

/// `madvise` advice that makes pages fault (Linux 6.13).
const MADV_GUARD_INSTALL: u64 = 102;

#[cfg(test)]
mod tests {
    use super::pages::split_runs;
    use super::{minus, Run};

    #[test]
    fn split_runs_cuts_inside_a_run() {
        let runs = [Run::at(0x1000, 0x3000, 0), Run::at(0x10000, 0x2000, 0x3000)];
        let (a, b) = split_runs(&runs, 0x4000);
        assert_eq!(a, vec![runs[0], Run::at(0x10000, 0x1000, 0x3000)]);
        assert_eq!(b, vec![Run::at(0x11000, 0x1000, 0x4000)]);
        let (a, b) = split_runs(&runs, 0x5000);
        assert_eq!((a.len(), b.len()), (2, 0));
    }

    #[test]
    fn holes_leave_the_range_kept() {
        let holes = super::holes_but(0x10000, &[(0x20000, 0x30000)], (0x40000, 0x41000));
        assert_eq!(holes[0], (0x10000, 0x20000));
        assert_eq!(holes[1], (0x30000, 0x40000));
        assert_eq!(holes[2], (0x41000, super::MMAP_TOP));
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
