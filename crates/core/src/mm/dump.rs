//! Reading an address space at dump: VMAs from `/proc/PID/maps` and
//! `smaps`, present pages from `/proc/PID/pagemap` (copied into the pages
//! file), mm fields from `stat`, `auxv` and `exe`, AIO rings, madvise,
//! mlock, THP and membarrier state.

use super::{numa, pages, server, track};
use super::{status, DEFAULT_COREDUMP_FILTER, MADV_BIT_LOCKONFAULT, MEMBARRIER_REGISTER, PAGE};
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError};
use crate::files::table::FileTable;
use crate::mm::error::MmError;
use crate::procfs::{self, MapsEntry, PagemapBits, SmapsEntry};
use crate::remote::Remote;
use crest_images::pb::{AioRingEntry, MmEntry, PagemapEntry, VmaEntry};
use crest_images::{names, RawWriter, PE_PARENT, PE_PRESENT};
use crest_inject::{nr, Tracee};
use std::io;

/// smaps VmFlags that map to an madvise() advice, stored in
/// `vma_entry.madv` as `1 << advice` the way CRIU does.
const MADV_FLAGS: [(&str, u32); 6] = [
    ("hg", libc::MADV_HUGEPAGE as u32),
    ("nh", libc::MADV_NOHUGEPAGE as u32),
    ("dc", libc::MADV_DONTFORK as u32),
    ("dd", libc::MADV_DONTDUMP as u32),
    ("wf", libc::MADV_WIPEONFORK as u32),
    ("mg", libc::MADV_MERGEABLE as u32),
];

/// A range of addresses, [start, end).
type Range = (u64, u64);

/// What the dump of one address space produced.
pub struct MmDump {
    pub entry: MmEntry,
    pub pagemap: Vec<PagemapEntry>,
    pub pages_bytes: u64,
}

/// Which pages of a VMA hold data that the image must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PagePolicy {
    /// No pages: the kernel or the file provides them.
    None,
    /// Every present or swapped page.
    All,
    /// Present pages that are anonymous (copied on write), or swapped.
    Anon,
}

/// The VMA entry of mapping `m` (with its smaps `smaps`) as the images
/// hold it, and which of its pages are saved.
fn classify(m: &MapsEntry, smaps: Option<&SmapsEntry>) -> (VmaEntry, PagePolicy) {
    // A SysV segment: its inode number is the segment's id.
    let sysv = m.shared && m.path.starts_with("/SYSV");
    // anonymous memory of huge pages (MAP_HUGETLB): made again with the
    // same page size; shared, it is shared memory like any other
    let huge = m.path == "/anon_hugepage (deleted)" && smaps.is_some_and(|s| s.has("ht"));
    let huge_private = huge && !m.shared;
    // (a named one shows as [anon_shmem:NAME])
    let shmem_anon =
        m.shared && (m.path.starts_with("/dev/zero") || m.path.starts_with("[anon_shmem:") || huge);
    let anon = !m.is_file() || shmem_anon || sysv || huge_private;
    let mut flags = if m.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    } as u32;
    if anon {
        flags |= libc::MAP_ANONYMOUS as u32;
    }
    if huge {
        let bytes = smaps.map_or(2048, |s| s.kernel_page_kb) * 1024;
        flags |= libc::MAP_HUGETLB as u32 | (bytes.trailing_zeros() << libc::MAP_HUGE_SHIFT);
    }
    let growsdown = m.path == "[stack]" || smaps.is_some_and(|s| s.has("gd"));
    if growsdown {
        flags |= libc::MAP_GROWSDOWN as u32;
    }
    // no swap space reserved for it (smaps `nr`, as CRIU reads it): the
    // mapping is made again the same way
    if smaps.is_some_and(|s| s.has("nr")) {
        flags |= libc::MAP_NORESERVE as u32;
    }
    let (mut st, policy) = status_of(m, sysv, shmem_anon, anon);
    if m.path == "[stack]" {
        st |= status::STACK;
    }
    if m.path == "[heap]" {
        st |= status::HEAP;
    }
    let madv = smaps.map_or(0, madv_of);
    // mlock(2)ed: made again with mlock2 once the pages are in
    let flags = if smaps.is_some_and(|s| s.has("lo")) {
        flags | libc::MAP_LOCKED as u32
    } else {
        flags
    };
    let vma = VmaEntry {
        start: m.start,
        end: m.end,
        pgoff: m.offset,
        shmid: if shmem_anon || sysv { m.inode } else { 0 },
        prot: prot_of(m),
        flags,
        status: st,
        fd: -1,
        madv: Some(madv),
        fdflags: None,
        crest_mempolicy: None,
        crest_anon_name: anon_name(&m.path),
        crest_map_fd: None,
    };
    (vma, policy)
}

/// `PROT_*` of mapping `m`.
fn prot_of(m: &MapsEntry) -> u32 {
    let mut prot = 0u32;
    for (on, bit) in [
        (m.read, libc::PROT_READ),
        (m.write, libc::PROT_WRITE),
        (m.exec, libc::PROT_EXEC),
    ] {
        if on {
            prot |= bit as u32;
        }
    }
    prot
}

/// The VMA status bits (CRIU's `VMA_AREA_*`) of mapping `m` as it is
/// made again, and which of its pages are saved.
fn status_of(m: &MapsEntry, sysv: bool, shmem_anon: bool, anon: bool) -> (u32, PagePolicy) {
    let (st, policy) = match m.path.as_str() {
        "[vdso]" => (status::VDSO, PagePolicy::None),
        "[vvar]" | "[vvar_vclock]" => (status::VVAR, PagePolicy::None),
        "[vsyscall]" => return (status::VSYSCALL, PagePolicy::None),
        _ if sysv => (status::SYSVIPC, PagePolicy::None),
        _ if shmem_anon => (status::ANON_SHARED, PagePolicy::All),
        _ if anon => (status::ANON_PRIVATE, PagePolicy::All),
        _ if m.shared => (status::FILE_SHARED, PagePolicy::None),
        _ => (status::FILE_PRIVATE, PagePolicy::Anon),
    };
    (status::REGULAR | st, policy)
}

/// The `madvise` advice a mapping carries (smaps `VmFlags`), as CRIU's
/// bit mask.
fn madv_of(s: &SmapsEntry) -> u64 {
    let advice = MADV_FLAGS
        .iter()
        .filter(|(f, _)| s.has(f))
        .fold(0u64, |acc, (_, adv)| acc | (1u64 << adv));
    if s.has("lf") {
        advice | 1u64 << MADV_BIT_LOCKONFAULT
    } else {
        advice
    }
}

/// The name an anonymous mapping was given (`PR_SET_VMA_ANON_NAME`).
fn anon_name(path: &str) -> Option<String> {
    ["[anon:", "[anon_shmem:"]
        .iter()
        .find_map(|p| path.strip_prefix(p))
        .and_then(|rest| rest.strip_suffix(']'))
        .map(String::from)
}

/// `/proc/PID/coredump_filter` when it is not the kernel's default.
fn coredump_filter(pid: i32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/coredump_filter")).ok()?;
    u32::from_str_radix(text.trim(), 16)
        .ok()
        .filter(|f| *f != DEFAULT_COREDUMP_FILTER)
}

const PR_GET_MDWE: u64 = 66;

const PR_GET_THP_DISABLE: u64 = 42;

/// `membarrier` command that lists the address space's registrations.
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;

/// The task's membarrier registrations (None where the kernel cannot
/// list them: before Linux 6.3).
fn membarrier_registrations(t: &mut Tracee) -> Result<Option<u32>, DumpError> {
    let pid = t.pid();
    let r = t
        .syscall_raw(nr::MEMBARRIER, &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0])
        .at(pid, "membarrier(GET_REGISTRATIONS)")?;
    if r < 0 {
        return Ok(None);
    }
    let mask = r as u32 & MEMBARRIER_REGISTER.iter().fold(0, |a, b| a | b);
    Ok((mask != 0).then_some(mask))
}

/// The kernel's locked memory of `pid` (`VmLck`, kB).
fn vm_locked(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmLck:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `mlockall` flags for future mappings in force in the task: whether a
/// new mapping (a page crest maps and unmaps again) comes locked, and then
/// whether on fault.
fn mlockall_future(t: &mut Tracee) -> Result<u32, DumpError> {
    let pid = t.pid();
    let before = vm_locked(pid);
    // a mapping of its own (the scratch area may exist already)
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let addr = t
        .syscall(nr::MMAP, &[0, 4096, prot, flags, u64::MAX, 0])
        .at(pid, "map a page to see if it comes locked")?;
    let locked = vm_locked(pid) > before;
    let on_fault = locked
        && procfs::read_smaps(pid)
            .at(pid, "read smaps")?
            .iter()
            .find(|s| s.start == addr)
            .is_some_and(|s| s.has("lf"));
    t.syscall(nr::MUNMAP, &[addr, 4096])
        .at(pid, "unmap the page")?;
    if !locked {
        return Ok(0);
    }
    Ok(libc::MCL_FUTURE as u32
        | if on_fault {
            libc::MCL_ONFAULT as u32
        } else {
            0
        })
}

/// Where a dump's pages go: the images directory, or a page server.
pub enum PageSink {
    Local,
    Server(server::Client),
}

impl PageSink {
    /// Whether the pagemap and pages images are written here.
    pub fn local(&self) -> bool {
        matches!(self, PageSink::Local)
    }

    /// Ends the page server session (the server has everything once it
    /// answers).
    pub fn finish(self) -> std::io::Result<()> {
        match self {
            PageSink::Local => Ok(()),
            PageSink::Server(c) => c.close(),
        }
    }
}

/// Where one task's pages go during its dump.
enum Out<'a> {
    File(RawWriter),
    Server(&'a mut server::Client),
}

/// The memory of the task `t` injects into (its pages into its `id`-th
/// pages file in `dir`, or to the page server), with its tracking when
/// memory is tracked; without `files`, the pages alone (a pre-dump).
pub fn dump_with_pages(
    t: &mut Tracee,
    (dir, id): (&std::path::Path, u32),
    files: Option<&mut FileTable>,
    track: &mut track::TreeTracking,
    sink: &mut PageSink,
) -> Result<MmDump, DumpError> {
    let pid = t.pid();
    let start_time = if track.active() {
        procfs::read_stat(pid).at(pid, "read stat")?.start_time
    } else {
        0
    };
    let (mut out, has_parent) = match sink {
        PageSink::Local => (
            Out::File(crest_images::create_raw(dir, &names::pages(id))?),
            None,
        ),
        PageSink::Server(c) => {
            let has = c
                .open(pid as u32)
                .at(pid, "open the task's pages on the page server")?;
            (Out::Server(c), Some(has))
        }
    };
    let mut tr = track.for_task(pid, start_time);
    if let (Some(tr), Some(has)) = (tr.as_mut(), has_parent) {
        tr.remote_parent(has);
    }
    let mm = dump(t, files, &mut out, tr.as_mut());
    if let Some(tr) = tr {
        track.done(pid, start_time, tr);
    }
    let mm = mm?;
    if let Out::File(w) = out {
        w.finish()?;
    }
    Ok(mm)
}

/// Collects the VMAs, mm fields and present pages of `pid` (stopped and
/// injected through `t`), streaming the pages into `pages`. Without
/// `files` (a pre-dump) only the pages are collected. With `track`, the
/// pages the parent images hold and the task has not written since are
/// marked as the parent's instead of copied, and the tracking is armed
/// again (and extended to new mappings) when it goes on.
fn dump(
    t: &mut Tracee,
    mut files: Option<&mut FileTable>,
    pages: &mut Out<'_>,
    mut track: Option<&mut track::Tracking>,
) -> Result<MmDump, DumpError> {
    let pid = t.pid();
    let mut maps = procfs::read_maps(pid).at(pid, "read maps")?;
    // crest's own recovery area is not the task's
    if let Some((start, end)) = t.recovery_range() {
        maps.retain(|m| m.end <= start || m.start >= end);
    }
    let smaps = procfs::read_smaps(pid).at(pid, "read smaps")?;
    let mut entry = files
        .as_deref_mut()
        .map_or(Ok(MmEntry::default()), |f| mm_fields(t, f))?;

    let mut vmas = Vec::with_capacity(maps.len());
    // guard pages (MADV_GUARD_INSTALL): (start, length) pairs
    let mut guards: Vec<u64> = Vec::new();
    let mut runs: Vec<pages::Run> = Vec::new();
    let mut aios = Vec::new();
    // (pages taken from the parent images; mappings to start tracking)
    let mut reuse: Vec<(u64, u64)> = Vec::new();
    let mut untracked: Vec<(u64, u64)> = Vec::new();
    let pagemap = procfs::Pagemap::open(pid).at(pid, "open pagemap")?;
    let mempolicies = vma_policies(t, &maps)?;
    for m in &maps {
        let sm = smaps.iter().find(|s| s.start == m.start);
        let (mut vma, policy) = classify(m, sm);
        vma.crest_mempolicy = mempolicies
            .iter()
            .find(|p| p.0 == m.start)
            .map(|p| p.1.clone());
        if vma.status & status::VSYSCALL != 0 {
            continue;
        }
        if m.path.starts_with("/[aio]") {
            // an AIO context: made again by io_setup and moved here
            aios.push(aio_ring(t, m.start, m.end)?);
            continue;
        }
        let policy = ring_or_refused(pid, (m, sm), &mut vma, policy)?;
        if vma.status & (status::FILE_PRIVATE | status::FILE_SHARED) != 0
            && vma.crest_map_fd.is_none()
        {
            if let Some(f) = files.as_deref_mut() {
                vma.shmid = u64::from(mapped_file(pid, m, sm, &mut vma, f)?);
            }
        }
        if let Some(tr) = track.as_deref_mut() {
            let saved = policy != PagePolicy::None && vma.crest_map_fd.is_none();
            tracked(
                tr,
                (m, sm, &vma),
                saved,
                &pagemap,
                (&mut reuse, &mut untracked),
            );
        }
        if policy != PagePolicy::None {
            let words = pagemap.read(m.start, m.end).at(pid, "read pagemap")?;
            page_runs(pid, m, &vma, policy, words, (&mut runs, &mut guards))?;
        }
        vmas.push(vma);
    }

    let (pagemap_entries, pages_bytes) = save(t, &runs, (&reuse, &untracked), pages, track)?;

    entry.vmas = vmas;
    entry.aios = aios;
    entry.crest_guards = guards;
    Ok(MmDump {
        entry,
        pagemap: pagemap_entries,
        pages_bytes,
    })
}

/// Copies the pages of `runs` but those in `reuse` (the parent images'),
/// then extends the tracking to the mappings `untracked` when it goes on:
/// the pagemap and the bytes copied.
fn save(
    t: &mut Tracee,
    runs: &[pages::Run],
    (reuse, untracked): (&[Range], &[Range]),
    out: &mut Out<'_>,
    track: Option<&mut track::Tracking>,
) -> Result<(Vec<PagemapEntry>, u64), DumpError> {
    let (copied, entries) = parent_or_copied(runs, reuse);
    let pid = t.pid();
    let bytes = match out {
        Out::File(w) => pages::copy(pid, &copied, w)?,
        Out::Server(c) => c.send((pid, pid as u32), &entries, &copied)?,
    };
    if let Some(tr) = track {
        if tr.dedup.is_some() {
            tr.saved = copied.iter().map(|r| (r.addr, r.pages * PAGE)).collect();
        }
        let all: u64 = runs.iter().map(|r| r.pages).sum();
        tr.from_parent += all.saturating_sub(bytes / PAGE);
        if tr.keep {
            track::register(t, tr, untracked)?;
        }
    }
    Ok((entries, bytes))
}

/// For mapping `m` (its smaps `sm`, its entry `vma`, its pages `saved`
/// or not) of a tracked task: the pages it may take from the parent
/// images pushed to `reuse`; the mapping pushed to `untracked` when the
/// tracking does not cover it yet.
fn tracked(
    tr: &track::Tracking,
    (m, sm, vma): (&MapsEntry, Option<&SmapsEntry>, &VmaEntry),
    saved: bool,
    pagemap: &procfs::Pagemap,
    (reuse, untracked): (&mut Vec<Range>, &mut Vec<Range>),
) {
    let hugetlb = vma.flags & libc::MAP_HUGETLB as u32 != 0;
    if !track::trackable(m, hugetlb, saved) {
        return;
    }
    let covered = !tr.uffds.is_empty() && sm.is_some_and(|s| s.has("uw"));
    match covered.then(|| track::clean_ranges(pagemap.file(), (m.start, m.end), tr.keep)) {
        Some(Some(clean)) => reuse.extend(track::intersect(&clean, &tr.parent)),
        _ => untracked.push((m.start, m.end)),
    }
}

/// The runs to copy, and the pagemap of every run: the pieces inside
/// `reuse` (sorted) marked as the parent images' (`PE_PARENT`), the rest
/// present in this dump's pages file.
fn parent_or_copied(
    runs: &[pages::Run],
    reuse: &[(u64, u64)],
) -> (Vec<pages::Run>, Vec<PagemapEntry>) {
    let entry = |addr: u64, n: u64, flags: u32| PagemapEntry {
        vaddr: addr,
        compat_nr_pages: u32::try_from(n).unwrap_or(u32::MAX),
        in_parent: None,
        flags: Some(flags),
        nr_pages: Some(n),
    };
    let mut copied = Vec::with_capacity(runs.len());
    let mut entries = Vec::with_capacity(runs.len());
    for r in runs {
        for (addr, len, parent) in track::split(r.addr, r.pages * PAGE, reuse) {
            let n = len / PAGE;
            if parent {
                entries.push(entry(addr, n, PE_PARENT));
            } else {
                copied.push(pages::Run {
                    addr,
                    pages: n,
                    readable: r.readable,
                });
                entries.push(entry(addr, n, PE_PRESENT));
            }
        }
    }
    (copied, entries)
}

/// The mm's fields but its mappings: its layout (code, data, stack,
/// brk, arguments, environment), its executable, auxv, and the settings
/// that are the whole mm's (dumpable, THP, mlockall, membarrier,
/// coredump filter, MDWE).
fn mm_fields(t: &mut Tracee, files: &mut FileTable) -> Result<MmEntry, DumpError> {
    let pid = t.pid();
    let stat = procfs::read_stat(pid).at(pid, "read stat")?;
    let auxv = procfs::read_auxv(pid).at(pid, "read auxv")?;
    let exe = procfs::read_link(&format!("/proc/{pid}/exe")).at(pid, "read exe link")?;
    let exe_id = files.reg_path(pid, &exe, libc::O_RDONLY as u32)?;
    let brk = t.syscall(nr::BRK, &[0]).at(pid, "brk(0)")?;
    let dumpable = t.prctl(&[libc::PR_GET_DUMPABLE as u64], "prctl(PR_GET_DUMPABLE)")?;

    Ok(MmEntry {
        mm_start_code: stat.start_code,
        mm_end_code: stat.end_code,
        mm_start_data: stat.start_data,
        mm_end_data: stat.end_data,
        mm_start_stack: stat.start_stack,
        mm_start_brk: stat.start_brk,
        mm_brk: brk,
        mm_arg_start: stat.arg_start,
        mm_arg_end: stat.arg_end,
        mm_env_start: stat.env_start,
        mm_env_end: stat.env_end,
        exe_file_id: exe_id,
        mm_saved_auxv: auxv.iter().flat_map(|&(k, v)| [k, v]).collect(),
        dumpable: Some(dumpable as i32),
        thp_disabled: Some(t.prctl(&[PR_GET_THP_DISABLE], "prctl(PR_GET_THP_DISABLE)")? != 0),
        crest_mlockall: Some(mlockall_future(t)?),
        crest_membarrier: membarrier_registrations(t)?,
        crest_coredump_filter: coredump_filter(pid),
        crest_mdwe: {
            // (EINVAL from a kernel without it: none)
            let r = t
                .syscall_raw(nr::PRCTL, &[PR_GET_MDWE, 0, 0, 0, 0])
                .at(pid, "prctl(PR_GET_MDWE)")?;
            (r > 0).then_some(r as u32)
        },
        ..MmEntry::default()
    })
}

/// The pages policy of mapping `m`: a kernel object's mapping (an
/// io_uring's, a packet socket's rings) is marked (mapped again from the
/// object's fd, with its contents); other
/// mappings that would come back lossy are refused (`refuse_lossy`).
fn ring_or_refused(
    pid: i32,
    (m, sm): (&MapsEntry, Option<&SmapsEntry>),
    vma: &mut VmaEntry,
    policy: PagePolicy,
) -> Result<PagePolicy, DumpError> {
    match fd_mapping(pid, m)? {
        Some(fd) => {
            vma.crest_map_fd = Some(fd);
            vma.status = status::REGULAR | status::FILE_SHARED;
            vma.flags &= !(libc::MAP_ANONYMOUS as u32);
            Ok(PagePolicy::All)
        }
        None => {
            refuse_lossy(pid, m, sm, vma)?;
            Ok(policy)
        }
    }
}

/// The task's fd of the kernel object mapping `m` maps, if it is one (an
/// io_uring's rings or SQEs, a packet socket's rings); refused where the
/// task holds no fd of it (the object lives on through the mapping alone)
/// or the mapping is not of what crest makes again (a provided buffer
/// ring, a private mapping, a part of a packet ring).
fn fd_mapping(pid: i32, m: &MapsEntry) -> Result<Option<u32>, DumpError> {
    use crate::files::uring;
    let path = m.path.as_str();
    let what = if path.starts_with("socket:[") {
        if !m.shared || m.offset != 0 {
            format!("a mapping of {path} at offset {:#x}", m.offset)
        } else {
            let fds = procfs::list_fds(pid).at(pid, "list fds")?;
            match fds.into_iter().find(|(_, link)| link == path) {
                Some((fd, _)) => return Ok(Some(fd as u32)),
                None => format!("a mapping of {path} whose fd the task closed"),
            }
        }
    } else if path != "anon_inode:[io_uring]" {
        return Ok(None);
    } else if ![uring::OFF_SQ_RING, uring::OFF_CQ_RING, uring::OFF_SQES].contains(&m.offset) {
        format!(
            "a mapping of the anonymous inode [io_uring] at offset {:#x} (a provided buffer ring)",
            m.offset
        )
    } else if !m.shared {
        "a private mapping of the anonymous inode [io_uring]".to_string()
    } else {
        match uring::fd_of(pid, m.inode) {
            Some(fd) => return Ok(Some(fd)),
            None => "a mapping of the anonymous inode [io_uring] whose fd the task closed".into(),
        }
    };
    Err(MmError::Unsupported {
        what: format!("{what} at {:#x}-{:#x}", m.start, m.end),
    }
    .in_dump(pid))
}

/// Refuses mapping `m` where a plain mapping made again would quietly
/// lose what it is: a hugetlb mapping that is neither anonymous, SysV nor
/// of a file, the
/// mapping of an anonymous inode (an io_uring's rings, a perf buffer), a
/// mapping of a deleted file that is not a file mapping.
fn refuse_lossy(
    pid: i32,
    m: &MapsEntry,
    sm: Option<&SmapsEntry>,
    vma: &VmaEntry,
) -> Result<(), DumpError> {
    // (a file on a hugetlbfs mount, or a hugetlb memfd, is mapped from
    // it again, and so of huge pages; a deleted one is made again on its
    // mount first, as a ghost file)
    let hugetlbfs_file =
        m.is_file() && vma.status & (status::FILE_PRIVATE | status::FILE_SHARED) != 0;
    // (a SHM_HUGETLB segment: attached again, it is of huge pages)
    let sysv = vma.status & status::SYSVIPC != 0;
    let odd = if sm.is_some_and(|s| s.has("ht"))
        && vma.flags & libc::MAP_HUGETLB as u32 == 0
        && !hugetlbfs_file
        && !sysv
    {
        Some(format!(
            "a {} hugetlb mapping of {} crest cannot make again",
            if m.shared { "shared" } else { "private" },
            m.path
        ))
    } else {
        m.path
            .strip_prefix("anon_inode:")
            .map(|kind| format!("a mapping of the anonymous inode {kind}"))
    };
    if let Some(what) = odd {
        return Err(MmError::Unsupported {
            what: format!("{what} at {:#x}-{:#x}", m.start, m.end),
        }
        .in_dump(pid));
    }
    if ghost_mapping(m, vma) && vma.status & (status::FILE_PRIVATE | status::FILE_SHARED) == 0 {
        return Err(MmError::Unsupported {
            what: format!(
                "mapping {:#x}-{:#x} of deleted file {}",
                m.start, m.end, m.path
            ),
        }
        .in_dump(pid));
    }
    Ok(())
}

/// A mapping of a deleted file (not a memfd, not shared memory), saved as
/// a ghost file.
fn ghost_mapping(m: &MapsEntry, vma: &VmaEntry) -> bool {
    let memfd = m.is_file() && crate::files::memfd::name_of(&m.path).is_some();
    m.deleted()
        && vma.status & (status::ANON_SHARED | status::SYSVIPC | status::ANON_PRIVATE) == 0
        && !memfd
}

/// The file entry id of the file mapping `m` maps (a memfd, a deleted
/// file saved as a ghost, a file by path), opened for writing where the
/// mapping is shared and may be made writable.
fn mapped_file(
    pid: i32,
    m: &MapsEntry,
    sm: Option<&SmapsEntry>,
    vma: &mut VmaEntry,
    files: &mut FileTable,
) -> Result<u32, DumpError> {
    // a shared mapping that may be made writable needs a file opened for
    // writing, whatever its protection now
    let maywrite = sm.is_some_and(|s| s.has("mw"));
    let mode = if m.shared && (m.write || maywrite) {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    } as u32;
    if m.is_file() && crate::files::memfd::name_of(&m.path).is_some() {
        vma.status |= status::MEMFD;
        files.memfd_vma(pid, m.start, m.end, &m.path, mode)
    } else if ghost_mapping(m, vma) {
        // saved as a ghost file, as one deleted while open is
        let path = m.path.strip_suffix(" (deleted)").unwrap_or(&m.path);
        files.reg_deleted_map(pid, (m.start, m.end), path, mode)
    } else {
        files.reg_path(pid, &m.path, mode)
    }
}

/// The runs of pages of mapping `m` to save, by `policy`, from its
/// pagemap `words`, pushed to `runs`; its guard pages pushed to `guards`
/// as (start, length).
fn page_runs(
    pid: i32,
    m: &MapsEntry,
    vma: &VmaEntry,
    policy: PagePolicy,
    mut words: Vec<u64>,
    (runs, guards): (&mut Vec<pages::Run>, &mut Vec<u64>),
) -> Result<(), DumpError> {
    if vma.status & status::ANON_SHARED != 0 {
        mark_shmem_data(pid, m, &mut words).at(pid, "find the pages of shared memory")?;
    }
    let keep = |b: PagemapBits| match policy {
        _ if b.guard() => false,
        PagePolicy::All => b.present() || b.swapped(),
        PagePolicy::Anon => (b.present() && !b.file_or_shared_anon()) || b.swapped(),
        PagePolicy::None => false,
    };
    for (addr, n) in procfs::runs(&words, m.start, |b: PagemapBits| b.guard()) {
        guards.extend([addr, n * PAGE]);
    }
    // An anonymous page another task maps too (shared copy-on-write
    // since a fork) is read through /proc/PID/mem: the kernel gives
    // a task its own copy of a shared page that process_vm_readv
    // pins, and a dump must not change what it reads.
    let cow = |b: PagemapBits| b.present() && !b.file_or_shared_anon() && !b.exclusive();
    let mut mine: Vec<pages::Run> = Vec::new();
    for (addr, n) in procfs::runs(&words, m.start, |b| keep(b) && !cow(b)) {
        mine.push(pages::Run {
            addr,
            pages: n,
            readable: m.read,
        });
    }
    for (addr, n) in procfs::runs(&words, m.start, |b| keep(b) && cow(b)) {
        mine.push(pages::Run {
            addr,
            pages: n,
            readable: false,
        });
    }
    mine.sort_unstable_by_key(|r| r.addr);
    runs.extend(mine);
    Ok(())
}

/// `struct aio_ring`'s magic and feature words, as the kernel writes them.
const AIO_RING_MAGIC: u32 = 0xa10a_10a1;
const AIO_RING_COMPAT: u32 = 1;
const AIO_RING_INCOMPAT: u32 = 0;
/// `sizeof(struct aio_ring)` and `sizeof(struct io_event)`.
const AIO_HEADER: u64 = 32;
const AIO_EVENT: u64 = 32;

/// The `io_setup` size that makes a ring of `len` bytes again: the
/// kernel doubles the size asked (at least 4 per CPU) and adds 2, then
/// fills the pages.
pub fn aio_nr_req(len: u64) -> u32 {
    let fits = len.saturating_sub(AIO_HEADER) / AIO_EVENT;
    (fits.saturating_sub(2) / 2) as u32
}

/// The AIO context whose ring is mapped at `[start, end)`: refused when
/// its header is not the kernel's or completions wait in it (CRIU's
/// rule: the ring itself is not carried, only made again empty).
fn aio_ring(t: &mut Tracee, start: u64, end: u64) -> Result<AioRingEntry, DumpError> {
    let pid = t.pid();
    let mut h = [0u8; AIO_HEADER as usize];
    t.read_mem(start, &mut h)
        .at(pid, "read an AIO ring's header")?;
    let word = |i: usize| u32::from_ne_bytes([h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]]);
    let (head, tail, magic) = (word(2), word(3), word(4));
    let refuse = |what: String| {
        MmError::Unsupported {
            what: format!("the AIO context at {start:#x}-{end:#x}: {what}"),
        }
        .in_dump(pid)
    };
    if magic != AIO_RING_MAGIC || word(5) != AIO_RING_COMPAT || word(6) != AIO_RING_INCOMPAT {
        return Err(refuse(format!(
            "a ring header crest does not know ({magic:#x})"
        )));
    }
    if head != tail {
        return Err(refuse(format!(
            "{} completed events not read yet",
            tail.wrapping_sub(head) % word(1).max(1)
        )));
    }
    let len = end - start;
    let nr_req = aio_nr_req(len);
    if !len.is_multiple_of(PAGE) || nr_req == 0 || len > u64::from(u32::MAX) {
        return Err(refuse(format!("a ring of {len} bytes")));
    }
    Ok(AioRingEntry {
        id: start,
        nr_req,
        ring_len: len as u32,
    })
}

/// The VMAs with a NUMA policy of their own (none without NUMA).
fn vma_policies(
    t: &mut Tracee,
    maps: &[MapsEntry],
) -> Result<Vec<(u64, crest_images::pb::crest::CrestMempolicy)>, DumpError> {
    let pid = t.pid();
    let path = format!("/proc/{pid}/numa_maps");
    let starts = match std::fs::read_to_string(&path) {
        Ok(text) => {
            numa::maybe_own(&text).map_err(|why| MmError::Numa { path, why }.in_dump(pid))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).at(pid, "read numa_maps"),
    };
    let mut out = Vec::new();
    for start in starts {
        // (not vdso, vvar or vsyscall: no policy there)
        let regular = maps.iter().find(|m| m.start == start).is_some_and(|m| {
            !["[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"].contains(&m.path.as_str())
        });
        if !regular {
            continue;
        }
        let (mode, nodes) = crate::task::coreimg::get_mempolicy(t, Some(start))?;
        if let Some(p) = numa::own(mode, nodes) {
            out.push((start, p));
        }
    }
    Ok(out)
}

/// Marks present, in a shared anonymous VMA's pagemap words, every page
/// the shared memory object holds (`SEEK_DATA`/`SEEK_HOLE` on its
/// `/proc/PID/map_files` entry): a page another process touched, even one
/// that has exited since (a server's worker), is in the object but in no
/// page table of this task.
fn mark_shmem_data(pid: i32, m: &MapsEntry, words: &mut [u64]) -> io::Result<()> {
    use rustix::fs::{seek, SeekFrom};
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let file = std::fs::File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {path}: {e}")))?;
    let (first, end) = (m.offset, m.offset + (m.end - m.start));
    let mut at = first;
    while at < end {
        let data = match seek(&file, SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        let hole = seek(&file, SeekFrom::Hole(data))?.min(end);
        for page in (data - first) / PAGE..(hole - first).div_ceil(PAGE) {
            if let Some(w) = words.get_mut(page as usize) {
                *w |= 1 << 63; // pagemap's present bit
            }
        }
        at = hole.max(data + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size asked again gives a ring of the same pages: the kernel
    /// takes at least 4 events per CPU, doubles, adds 2 and fills pages.
    #[test]
    fn aio_sizes_round_trip() {
        let ring_pages = |nr: u64, cpus: u64| {
            let events = nr.max(4 * cpus) * 2 + 2;
            (AIO_HEADER + events * AIO_EVENT).div_ceil(PAGE)
        };
        for nr in [1u64, 16, 62, 63, 128, 300, 5000] {
            for cpus in [1u64, 2, 8] {
                let len = ring_pages(nr, cpus) * PAGE;
                let again = u64::from(aio_nr_req(len));
                assert_eq!(ring_pages(again, cpus), len / PAGE, "nr {nr}, {cpus} cpus");
            }
        }
    }
}
