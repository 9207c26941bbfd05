//! io_uring instances. The dump reads the ring from its fdinfo (sizes,
//! the kernel's SQ head and CQ tail, registered buffers, what is in
//! flight) and asks the ring itself, through crest's copy of the fd, what
//! fdinfo does not say (a single submitter, completions run only in it, a
//! disabled or restricted ring, a registered eventfd, 128-byte SQEs or
//! 32-byte CQEs where the regions' sizes tell). The rings' memory is the
//! mappings' (`mm`, `vma_entry.crest_map_fd`).
//!
//! Restore makes the ring again in the task with the same sizes and
//! flags, then brings the kernel's counters where they stood: it submits
//! no-op entries (`IORING_OP_NOP`, with `IOSQE_CQE_SKIP_SUCCESS` where no
//! completion is wanted, and `IORING_OP_MSG_RING` to the ring itself where
//! two are) until the SQ head and CQ tail are the dumped ones. Once the
//! memory is in, the mappings hold the dumped rings (completions not read
//! yet, entries not submitted yet) and the buffers are registered again
//! (`settle`). CRIU has no image for it: the entry is CRIU's `ext` kind
//! with crest's `crest_io_uring` beside it.
//!
//! A ring with an SQ thread (`SQPOLL`) submits with the credentials it
//! was made with: it is made once the task has its own (`placeholder`,
//! `late_rings`, `finish_late`; `restore::task` moves its mappings in).
//! Its idle time cannot be seen and comes back as the kernel's default.
//!
//! Refused, naming them: requests in flight, an SQ thread with entries
//! to take yet, registered files, personalities, a registered
//! eventfd, a disabled or restricted ring, a single-submitter ring in a
//! task of several threads. `NO_SQARRAY` shows where entries are pending
//! (fdinfo lists them through the array only); elsewhere the ring is made
//! with an array that maps each entry to itself (`mend_array`). Not seen
//! from outside, so not carried: `COOP_TASKRUN`, `TASKRUN_FLAG`,
//! `SUBMIT_ALL`, `IOPOLL`, registered ring fds, the io-wq's limits, and
//! of a single-submitter ring a registered eventfd or restrictions.

use super::fown::ext_entry;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crest_images::pb::{CrestIoUringEntry, FileEntry};
use crest_inject::{nr, Tracee};

/// `IORING_SETUP_*` flags crest carries.
pub const SETUP_SQPOLL: u32 = 1 << 1;
pub const SETUP_SQ_AFF: u32 = 1 << 2;
pub const SETUP_CQSIZE: u32 = 1 << 3;
pub const SETUP_SQE128: u32 = 1 << 10;
pub const SETUP_CQE32: u32 = 1 << 11;
pub const SETUP_SINGLE_ISSUER: u32 = 1 << 12;
pub const SETUP_DEFER_TASKRUN: u32 = 1 << 13;
pub const SETUP_NO_SQARRAY: u32 = 1 << 16;
const CARRIED: u32 = SETUP_SQPOLL
    | SETUP_SQ_AFF
    | SETUP_CQSIZE
    | SETUP_SQE128
    | SETUP_CQE32
    | SETUP_SINGLE_ISSUER
    | SETUP_DEFER_TASKRUN
    | SETUP_NO_SQARRAY;

/// The mmap offsets of an io_uring's regions.
pub const OFF_SQ_RING: u64 = 0;
pub const OFF_CQ_RING: u64 = 0x800_0000;
pub const OFF_SQES: u64 = 0x1000_0000;

/// The kernel's largest ring (`IORING_MAX_CQ_ENTRIES`).
const MAX_ENTRIES: u32 = 65536;

const PAGE: u64 = 4096;

/// Most batches of no-op entries a restore submits to bring a ring's
/// counters back (about half a minute of injected calls).
const MAX_BATCHES: u64 = 1 << 21;

/// What an io_uring's fdinfo says.
#[derive(Debug, Default, PartialEq)]
pub struct Ring {
    pub sq_entries: u32,
    pub cq_entries: u32,
    /// the kernel's SQ head and CQ tail, and the task's SQ tail
    pub sq_head: u32,
    pub cq_tail: u32,
    pub sq_tail: u32,
    /// the SQ thread's pid, -1 without one
    pub sq_thread: i32,
    pub user_files: u32,
    pub user_bufs: u32,
    /// the registered buffers listed (None: an empty slot)
    pub bufs: Vec<Option<(u64, u32)>>,
    pub personalities: bool,
    /// requests waiting on a poll, completions the CQ ring had no room for
    pub polls: usize,
    pub overflow: usize,
    /// entries written and not submitted, and how many fdinfo listed (it
    /// lists none of a ring without an SQ array)
    pub sqes_pending: u32,
    pub sqes_listed: u32,
    /// a pending SQE or CQE shows the big layout
    pub big_sqe_seen: bool,
    pub big_cqe_seen: bool,
}

fn mask(v: &str) -> Option<u32> {
    u32::from_str_radix(v.trim().strip_prefix("0x")?, 16).ok()
}

/// Parses an io_uring's fdinfo; None where a line crest needs is missing
/// or odd.
pub fn parse(text: &str) -> Option<Ring> {
    let mut r = Ring::default();
    let mut section = "";
    let (mut sq_mask, mut cq_mask, mut thread) = (None, None, None);
    let (mut head, mut tail) = (None, None);
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if !line.starts_with([' ', '\t']) {
                section = k;
                match k {
                    "SqMask" => sq_mask = mask(v),
                    "CqMask" => cq_mask = mask(v),
                    "CachedSqHead" => head = v.trim().parse().ok(),
                    "SqTail" => r.sq_tail = v.trim().parse().ok()?,
                    "CachedCqTail" => tail = v.trim().parse().ok(),
                    "SqThread" => thread = v.trim().parse().ok(),
                    "UserFiles" => r.user_files = v.trim().parse().ok()?,
                    "UserBufs" => r.user_bufs = v.trim().parse().ok()?,
                    "SQEs" => r.sqes_pending = v.trim().parse().ok()?,
                    "Personalities" => r.personalities = true,
                    _ => {}
                }
                continue;
            }
        }
        let item = line.trim();
        if item.is_empty() {
            continue;
        }
        match section {
            "SQEs" => {
                r.sqes_listed += 1;
                r.big_sqe_seen |= item.contains(", e0:");
            }
            "CQEs" => r.big_cqe_seen |= item.contains("extra1:"),
            "UserBufs" => {
                let (_, v) = item.split_once(':')?;
                let v = v.trim();
                if v == "<none>" {
                    r.bufs.push(None);
                } else {
                    let (addr, len) = v.split_once('/')?;
                    let addr = u64::from_str_radix(addr.strip_prefix("0x")?, 16).ok()?;
                    r.bufs.push(Some((addr, len.parse().ok()?)));
                }
            }
            "PollList" => r.polls += 1,
            "CqOverflowList" => r.overflow += 1,
            _ => {}
        }
    }
    r.sq_entries = sq_mask?.checked_add(1)?;
    r.cq_entries = cq_mask?.checked_add(1)?;
    (r.sq_head, r.cq_tail, r.sq_thread) = (head?, tail?, thread?);
    Some(r)
}

/// What crest refuses in a ring, or None.
fn refusal(r: &Ring) -> Option<String> {
    let in_flight = r.sq_head.wrapping_sub(r.cq_tail) as i32;
    if r.sq_thread >= 0 && r.sq_tail != r.sq_head {
        Some(format!(
            "an io_uring whose SQ thread (IORING_SETUP_SQPOLL) has {} entries to take yet",
            r.sq_tail.wrapping_sub(r.sq_head)
        ))
    } else if r.polls > 0 || in_flight > 0 {
        Some(format!(
            "an io_uring with requests in flight ({} waiting on a poll, {} submitted without \
             a completion yet, or completed without one: IOSQE_CQE_SKIP_SUCCESS)",
            r.polls,
            in_flight.max(0)
        ))
    } else if r.overflow > 0 {
        Some(format!(
            "an io_uring with {} completions its CQ ring had no room for",
            r.overflow
        ))
    } else if r.user_files > 0 {
        Some(format!(
            "an io_uring with {} registered files (the kernel does not show which)",
            r.user_files
        ))
    } else if r.personalities {
        Some("an io_uring with registered personalities".into())
    } else if r.bufs.len() != r.user_bufs as usize {
        Some(format!(
            "an io_uring whose {} registered buffers fdinfo did not list",
            r.user_bufs
        ))
    } else if r.cq_tail.wrapping_sub(r.sq_head) > r.sq_head {
        Some(format!(
            "an io_uring that gave {} completions for {} entries (more than two each)",
            r.cq_tail, r.sq_head
        ))
    } else if !r.sq_entries.is_power_of_two()
        || !r.cq_entries.is_power_of_two()
        || r.cq_entries > MAX_ENTRIES
        || r.sq_entries > r.cq_entries
    {
        Some(format!(
            "an io_uring of {} SQ and {} CQ entries",
            r.sq_entries, r.cq_entries
        ))
    } else {
        None
    }
}

fn page_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// The size of the region of the rings (header, CQEs, the SQ array), as
/// the kernel lays it out.
fn rings_len(sq: u32, cq: u32, cqe: u64) -> u64 {
    (64 + u64::from(cq) * cqe).div_ceil(64) * 64 + u64::from(sq) * 4
}

/// The setup flags the ring itself tells crest, asked through `copy`.
fn setup_flags(pid: i32, fd: i32, r: &Ring, copy: &std::os::fd::OwnedFd) -> Result<u32, DumpError> {
    let refuse = |what: &str| FileError::UnsupportedFd {
        fd,
        kind: format!("an io_uring {what}"),
    };
    let err = |e: std::io::Error| e.raw_os_error();
    let mut flags = 0;
    match crest_sys::misc::uring_getevents(copy).map_err(err) {
        Ok(()) => {}
        Err(Some(libc::EEXIST)) => flags |= SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN,
        Err(Some(libc::EBADFD)) => {
            return Err(refuse("still disabled (IORING_SETUP_R_DISABLED)").in_dump(pid))
        }
        Err(e) => return Err(refuse(&format!("crest cannot wait on (errno {e:?})")).in_dump(pid)),
    }
    match crest_sys::misc::uring_probe(copy).map_err(err) {
        Ok(()) => {
            let efd = crest_sys::misc::eventfd().at(pid, "make an eventfd")?;
            if crest_sys::misc::uring_has_eventfd(copy, &efd).at(pid, "ask an io_uring")? {
                return Err(refuse("with a registered eventfd").in_dump(pid));
            }
        }
        Err(Some(libc::EEXIST)) => flags |= SETUP_SINGLE_ISSUER,
        Err(Some(libc::EACCES)) => {
            return Err(refuse("restricted (IORING_REGISTER_RESTRICTIONS)").in_dump(pid))
        }
        Err(e) => return Err(refuse(&format!("crest cannot probe (errno {e:?})")).in_dump(pid)),
    }
    let (sq, cq) = (u64::from(r.sq_entries), r.cq_entries);
    // the regions' sizes tell the entries' where pages part them
    let big_sqes = page_up(sq * 128) > page_up(sq * 64)
        && crest_sys::misc::uring_region_fits(copy, OFF_SQES, (sq * 128) as usize);
    if r.big_sqe_seen || big_sqes {
        flags |= SETUP_SQE128;
    }
    let (small, big) = (
        rings_len(r.sq_entries, cq, 16),
        rings_len(r.sq_entries, cq, 32),
    );
    let big_cqes = page_up(big) > page_up(small)
        && crest_sys::misc::uring_region_fits(copy, OFF_SQ_RING, big as usize);
    if r.big_cqe_seen || big_cqes {
        flags |= SETUP_CQE32;
    }
    if r.cq_entries != 2 * r.sq_entries {
        flags |= SETUP_CQSIZE;
    }
    // (entries written and none listed: no array to list them through;
    // with nothing pending it cannot be seen, see `mend_array`)
    if r.sqes_pending > 0 && r.sqes_listed == 0 {
        flags |= SETUP_NO_SQARRAY;
    }
    Ok(flags)
}

/// Whether `pid` has an io_uring SQ thread (`iou-sqp-*`, a kernel thread
/// of the task).
fn has_sq_thread(pid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    dir.flatten().any(|e| {
        let tid: i32 = e
            .file_name()
            .to_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        comm.starts_with("iou-sqp-") && crate::procfs::is_io_worker(pid, tid)
    })
}

/// The one CPU SQ thread `tid` of `pid` is bound to, where the task's
/// leader may run on others (`IORING_SETUP_SQ_AFF`); None otherwise, or
/// where crest cannot see the thread (another pid namespace's numbers).
fn bound_cpu(pid: i32, tid: i32) -> Option<u32> {
    let list = |path: String| -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_string())
    };
    let sq = list(format!("/proc/{pid}/task/{tid}/status"))?;
    let leader = list(format!("/proc/{pid}/status"))?;
    let cpu: u32 = sq.parse().ok()?;
    (sq != leader).then_some(cpu)
}

/// Threads of `pid` but the kernel's own (io-wq workers, `iou-*`).
fn user_threads(pid: i32) -> usize {
    crate::procfs::list_tids(pid).map_or(0, |t| t.len())
}

/// Dumps io_uring fd `fd` of `pid` (always `O_RDWR`: its own flags say
/// nothing).
pub fn dump(pid: i32, fd: i32) -> Result<FileEntry, DumpError> {
    let refuse = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
    let read = || -> Result<Ring, DumpError> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
            .at(pid, "read an io_uring's fdinfo")?;
        parse(&text).ok_or_else(|| refuse("an io_uring whose fdinfo crest cannot read".into()))
    };
    let mut ring = read()?;
    // (fdinfo names the SQ thread only while it gets the ring's lock,
    // which that thread takes now and then: a task with one reads again)
    for _ in 0..20 {
        if ring.sq_thread >= 0 || !has_sq_thread(pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        ring = read()?;
    }
    if let Some(why) = refusal(&ring) {
        return Err(refuse(why));
    }
    let copy = crate::remote::take_fd(pid, fd as u32)?;
    let mut setup = setup_flags(pid, fd, &ring, &copy)?;
    let sq_thread_cpu = if ring.sq_thread >= 0 {
        setup |= SETUP_SQPOLL;
        bound_cpu(pid, ring.sq_thread)
    } else {
        None
    };
    if sq_thread_cpu.is_some() {
        setup |= SETUP_SQ_AFF;
    }
    if setup & SETUP_SINGLE_ISSUER != 0 && user_threads(pid) > 1 {
        return Err(refuse(
            "an io_uring with a single submitter (IORING_SETUP_SINGLE_ISSUER) in a task of \
             several threads (which one submits cannot be seen)"
                .into(),
        ));
    }
    let (buf_addr, buf_len) = ring.bufs.iter().map(|b| b.unwrap_or((0, 0))).unzip();
    Ok(FileEntry {
        crest_io_uring: Some(CrestIoUringEntry {
            sq_entries: ring.sq_entries,
            cq_entries: ring.cq_entries,
            setup_flags: setup,
            sq_head: ring.sq_head,
            cq_tail: ring.cq_tail,
            buf_addr,
            buf_len,
            sq_thread_cpu,
        }),
        ..ext_entry()
    })
}

/// The fd of `pid` that holds the io_uring of inode `ino`, if any.
pub fn fd_of(pid: i32, ino: u64) -> Option<u32> {
    let fds = crate::procfs::list_fds(pid).ok()?;
    fds.into_iter().find_map(|(fd, link)| {
        if link != "anon_inode:[io_uring]" {
            return None;
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
        let here = text
            .lines()
            .find_map(|l| l.strip_prefix("ino:"))?
            .trim()
            .parse::<u64>()
            .ok()?;
        (here == ino).then_some(fd as u32)
    })
}

fn bad(pid: i32, what: String) -> RestoreError {
    FileError::BadImage {
        file: crest_images::names::FILES.into(),
        what,
    }
    .in_restore(pid)
}

/// Where the parts of a ring made again lie (`io_uring_params`' offsets).
struct Layout {
    sq_head: u64,
    sq_tail: u64,
    /// the SQ array's offset (None without one)
    array: Option<u64>,
    cq_head: u64,
    cq_tail: u64,
    ring_len: u64,
    sqe: u64,
}

/// `struct io_uring_params` (120 bytes): entries, flags, and the offsets
/// the kernel fills in.
fn params(e: &CrestIoUringEntry) -> [u8; 120] {
    let mut p = [0u8; 120];
    p[4..8].copy_from_slice(&e.cq_entries.to_le_bytes());
    p[8..12].copy_from_slice(&e.setup_flags.to_le_bytes());
    // (the SQ thread's CPU; its idle time, which crest cannot see, is the
    // kernel's default)
    p[12..16].copy_from_slice(&e.sq_thread_cpu.unwrap_or(0).to_le_bytes());
    p
}

fn word(p: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]))
}

fn layout(p: &[u8; 120], e: &CrestIoUringEntry) -> Layout {
    // sq_off at 40: head, tail, ring_mask, ring_entries, flags, dropped,
    // array; cq_off at 80: head, tail, ring_mask, ring_entries, overflow,
    // cqes
    let cqe = if e.setup_flags & SETUP_CQE32 != 0 {
        32
    } else {
        16
    };
    let sqe = if e.setup_flags & SETUP_SQE128 != 0 {
        128
    } else {
        64
    };
    let array = (e.setup_flags & SETUP_NO_SQARRAY == 0).then(|| word(p, 40 + 24));
    let sq_end = array.unwrap_or(0) + u64::from(e.sq_entries) * 4;
    let cq_end = word(p, 80 + 20) + u64::from(e.cq_entries) * cqe;
    Layout {
        sq_head: word(p, 40),
        sq_tail: word(p, 44),
        array,
        cq_head: word(p, 80),
        cq_tail: word(p, 84),
        ring_len: page_up(sq_end.max(cq_end)),
        sqe,
    }
}

/// Makes the ring again in the task and brings its counters where they
/// stood; returns its fd and the offset of its SQ array, if it has one.
pub fn create(t: &mut Tracee, e: &CrestIoUringEntry) -> Result<(u64, Option<u64>), RestoreError> {
    let pid = t.pid();
    if e.setup_flags & !CARRIED != 0
        || !e.sq_entries.is_power_of_two()
        || !e.cq_entries.is_power_of_two()
        || e.cq_entries > MAX_ENTRIES
        || e.sq_entries > e.cq_entries
        || e.buf_addr.len() != e.buf_len.len()
    {
        return Err(bad(
            pid,
            format!(
                "io_uring of {} SQ and {} CQ entries, flags {:#x}",
                e.sq_entries, e.cq_entries, e.setup_flags
            ),
        ));
    }
    // (each batch is an injected call or two: a bound, not a hang)
    let batches = u64::from(e.sq_head.max(e.cq_tail)) / u64::from(e.sq_entries);
    if batches > MAX_BATCHES {
        return Err(FileError::Unsupported {
            what: format!(
                "an io_uring of {} entries whose counters ({} entries taken, {} completions) \
                 take {batches} batches of no-op entries to reach (at most {MAX_BATCHES})",
                e.sq_entries, e.sq_head, e.cq_tail
            ),
        }
        .in_restore(pid));
    }
    let at = t.put(&params(e)).rat(pid, "write io_uring params")?;
    let fd = t
        .syscall(nr::IO_URING_SETUP, &[u64::from(e.sq_entries), at])
        .rat(pid, format!("io_uring_setup({})", e.sq_entries))?;
    let mut p = [0u8; 120];
    t.read_mem(at, &mut p).rat(pid, "read io_uring params")?;
    if word(&p, 0) != u64::from(e.sq_entries) || word(&p, 4) != u64::from(e.cq_entries) {
        return Err(FileError::Unsupported {
            what: format!(
                "an io_uring of {} SQ and {} CQ entries (made again with {} and {})",
                e.sq_entries,
                e.cq_entries,
                word(&p, 0),
                word(&p, 4)
            ),
        }
        .in_restore(pid));
    }
    let l = layout(&p, e);
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let shared = libc::MAP_SHARED as u64;
    let ring = t
        .syscall(nr::MMAP, &[0, l.ring_len, rw, shared, fd, OFF_SQ_RING])
        .rat(pid, "map a new io_uring's rings")?;
    let sqes_len = page_up(u64::from(e.sq_entries) * l.sqe);
    let sqes = t.syscall(nr::MMAP, &[0, sqes_len, rw, shared, fd, OFF_SQES]);
    let res = match sqes {
        Ok(sqes) => {
            let r = catch_up(t, fd, e, (ring, sqes), &l);
            t.syscall(nr::MUNMAP, &[sqes, sqes_len])
                .rat(pid, "unmap a new io_uring's SQEs")?;
            r
        }
        Err(err) => Err(err).rat(pid, "map a new io_uring's SQEs"),
    };
    t.syscall(nr::MUNMAP, &[ring, l.ring_len])
        .rat(pid, "unmap a new io_uring's rings")?;
    res.map(|()| (fd, l.array))
}

const OP_NOP: u8 = 0;
const OP_MSG_RING: u8 = 40;
const SKIP_SUCCESS: u8 = 1 << 6;

/// The next batch of no-op entries, `ds` entries and `dc` completions
/// short: how many, their opcode and flags. Entries give two completions
/// (a message to the ring itself), none (`IOSQE_CQE_SKIP_SUCCESS`) or one
/// each; None where completions are left that no entry can give.
fn next_batch(ds: u32, dc: u32, sq_entries: u32) -> Option<(u32, u8, u8)> {
    let (n, op, flags) = if dc > ds && ds > 0 {
        ((dc - ds).min(ds), OP_MSG_RING, 0)
    } else if ds > dc {
        (ds - dc, OP_NOP, SKIP_SUCCESS)
    } else if ds == dc {
        (ds, OP_NOP, 0)
    } else {
        return None;
    };
    Some((n.min(sq_entries), op, flags))
}

/// Reads the counter at `at` of a ring mapped at `ring` in the task.
fn counter(t: &mut Tracee, ring: u64, at: u64) -> Result<u32, RestoreError> {
    let mut b = [0u8; 4];
    t.read_mem(ring + at, &mut b)
        .rat(t.pid(), "read a new io_uring's counters")?;
    Ok(u32::from_le_bytes(b))
}

/// Writes `n` no-op entries of opcode `op` and `flags` from the SQ tail
/// `tail` on, and the tail after them.
fn write_batch(
    t: &mut Tracee,
    fd: u64,
    (ring, sqes, l): (u64, u64, &Layout),
    (tail, mask): (u32, u32),
    (n, op, flags): (u32, u8, u8),
) -> Result<(), RestoreError> {
    let pid = t.pid();
    for i in 0..n {
        let slot = tail.wrapping_add(i) & mask;
        let mut sqe = vec![0u8; l.sqe as usize];
        sqe[0] = op;
        sqe[1] = flags;
        if op == OP_MSG_RING {
            // fd: the ring itself; addr IORING_MSG_DATA (0), len 0
            sqe[4..8].copy_from_slice(&(fd as u32).to_le_bytes());
        }
        t.write_mem(sqes + u64::from(slot) * l.sqe, &sqe)
            .rat(pid, "write a no-op entry")?;
    }
    t.write_mem(ring + l.sq_tail, &tail.wrapping_add(n).to_le_bytes())
        .rat(pid, "write a new io_uring's SQ tail")
}

/// Waits until a ring's SQ thread took the entries up to `want`, and the
/// completions it posts for them stop coming.
fn wait_sq_thread(t: &mut Tracee, ring: u64, l: &Layout, want: u32) -> Result<(), RestoreError> {
    for _ in 0..20_000 {
        if counter(t, ring, l.sq_head)? == want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    let mut last = counter(t, ring, l.cq_tail)?;
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_micros(500));
        let now = counter(t, ring, l.cq_tail)?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(())
}

/// Submits no-op entries until the kernel's SQ head and CQ tail are the
/// dumped ones, throwing their completions away.
fn catch_up(
    t: &mut Tracee,
    fd: u64,
    e: &CrestIoUringEntry,
    (ring, sqes): (u64, u64),
    l: &Layout,
) -> Result<(), RestoreError> {
    const ENTER_GETEVENTS: u64 = 1;
    const ENTER_SQ_WAKEUP: u64 = 2;
    let pid = t.pid();
    let sqpoll = e.setup_flags & SETUP_SQPOLL != 0;
    if let Some(array) = l.array {
        // an array that maps each entry to itself
        let identity: Vec<u8> = (0..e.sq_entries).flat_map(|i| i.to_le_bytes()).collect();
        t.write_mem(ring + array, &identity)
            .rat(pid, "write a new io_uring's SQ array")?;
    }
    loop {
        let (s, c) = (counter(t, ring, l.sq_head)?, counter(t, ring, l.cq_tail)?);
        let (ds, dc) = (e.sq_head.wrapping_sub(s), e.cq_tail.wrapping_sub(c));
        if ds == 0 && dc == 0 {
            return Ok(());
        }
        let unsupported = |what: String| FileError::Unsupported { what }.in_restore(pid);
        if (ds as i32) < 0 || (dc as i32) < 0 {
            return Err(unsupported(format!(
                "an io_uring made again whose counters went past the dumped ones (SQ head {s}, \
                 CQ tail {c}; dumped {} and {})",
                e.sq_head, e.cq_tail
            )));
        }
        let Some((n, op, flags)) = next_batch(ds, dc, e.sq_entries) else {
            return Err(unsupported(format!(
                "an io_uring that gave {} completions for {} entries: {dc} left that no entry \
                 gives",
                e.cq_tail, e.sq_head
            )));
        };
        let tail = counter(t, ring, l.sq_tail)?;
        write_batch(
            t,
            fd,
            (ring, sqes, l),
            (tail, e.sq_entries - 1),
            (n, op, flags),
        )?;
        let wake = if sqpoll { ENTER_SQ_WAKEUP } else { 0 };
        t.syscall(
            nr::IO_URING_ENTER,
            &[fd, u64::from(n), 0, ENTER_GETEVENTS | wake, 0, 0],
        )
        .rat(pid, format!("io_uring_enter({n}) of no-op entries"))?;
        if sqpoll {
            // (the SQ thread takes them in its own time)
            wait_sq_thread(t, ring, l, tail.wrapping_add(n))?;
        }
        // the completions are thrown away
        let now = counter(t, ring, l.cq_tail)?;
        t.write_mem(ring + l.cq_head, &now.to_le_bytes())
            .rat(pid, "write a new io_uring's CQ head")?;
        if counter(t, ring, l.sq_head)? == s {
            return Err(unsupported(format!(
                "an io_uring whose SQ head stays at {s} (no entry taken)"
            )));
        }
    }
}

/// The io_uring instances task `t` made, once its memory (`mm`) is in:
/// their SQ arrays whole and their buffers registered again.
pub fn settle_all(
    t: &mut Tracee,
    (fdinfo, mm): (&[crest_images::pb::FdinfoEntry], &crest_images::pb::MmEntry),
    files: &super::context::RestoreFiles,
) -> Result<(), RestoreError> {
    let mut done = std::collections::HashSet::new();
    for fi in fdinfo {
        let ring = files
            .entries
            .get(&fi.id)
            .and_then(|e| e.crest_io_uring.as_ref());
        if let Some(ring) = ring {
            let late = files.uring_late.contains(&fi.id);
            if files.made_by.get(&fi.id) == Some(&t.pid()) && !late && done.insert(fi.id) {
                if let Some(&array) = files.uring_arrays.get(&fi.id) {
                    mend_array(t, fi.fd, ring, (mm, array))?;
                }
                settle(t, u64::from(fi.fd), ring)?;
            }
        }
    }
    Ok(())
}

/// Whether fd `fd` of `pid` stands for an io_uring made late (one with
/// an SQ thread: see [`make_late`]).
pub fn is_late(files: &super::context::RestoreFiles, pid: i32, fd: u32) -> bool {
    files
        .uring_late
        .iter()
        .any(|id| files.holders.get(id) == Some(&(pid, fd)))
}

/// The fd that stands for an io_uring with an SQ thread until the task
/// has its own credentials: the SQ thread submits with those the ring was
/// made with, so the ring is made once the task has them (`make_late`).
pub fn placeholder(
    t: &mut Tracee,
    id: u32,
    files: &mut super::context::RestoreFiles,
) -> Result<u64, RestoreError> {
    files.uring_late.insert(id);
    t.syscall(nr::EVENTFD2, &[0, libc::EFD_CLOEXEC as u64])
        .rat(t.pid(), "an eventfd to stand for an io_uring")
}

/// The io_uring entries with an SQ thread task `t` made a placeholder
/// for: (fd, entry), each once.
pub fn late_rings(
    t: &Tracee,
    fdinfo: &[crest_images::pb::FdinfoEntry],
    files: &super::context::RestoreFiles,
) -> Vec<(crest_images::pb::FdinfoEntry, CrestIoUringEntry)> {
    let mut done = std::collections::HashSet::new();
    fdinfo
        .iter()
        .filter(|fi| files.uring_late.contains(&fi.id))
        .filter(|fi| files.made_by.get(&fi.id) == Some(&t.pid()) && done.insert(fi.id))
        .filter_map(|fi| {
            let e = files.entries.get(&fi.id)?.crest_io_uring.clone()?;
            Some((fi.clone(), e))
        })
        .collect()
}

/// The last steps of a ring made late, its mappings back in place:
/// its SQ array whole, its buffers registered, its SQ thread woken (its
/// flags in the ring are the dumped ones: woken, it sets its own).
pub fn finish_late(
    t: &mut Tracee,
    fd: u32,
    e: &CrestIoUringEntry,
    (mm, array): (&crest_images::pb::MmEntry, Option<u64>),
) -> Result<(), RestoreError> {
    if let Some(array) = array {
        mend_array(t, fd, e, (mm, array))?;
    }
    settle(t, u64::from(fd), e)?;
    const ENTER_SQ_WAKEUP: u64 = 2;
    t.syscall(
        nr::IO_URING_ENTER,
        &[u64::from(fd), 0, 0, ENTER_SQ_WAKEUP, 0, 0],
    )
    .rat(t.pid(), "wake an io_uring's SQ thread")?;
    Ok(())
}

/// A ring dumped without an SQ array (`IORING_SETUP_NO_SQARRAY`, which
/// crest cannot see) has zeros where the ring made again keeps its array:
/// the mapping's pages put them there. The array then maps each entry to
/// itself again, as the ring the task made did without one. (A task that
/// uses its array writes each slot before it submits it.)
fn mend_array(
    t: &mut Tracee,
    fd: u32,
    e: &CrestIoUringEntry,
    (mm, array): (&crest_images::pb::MmEntry, u64),
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let len = u64::from(e.sq_entries) * 4;
    let rings = mm.vmas.iter().find(|v| {
        v.crest_map_fd == Some(fd)
            && [OFF_SQ_RING, OFF_CQ_RING].contains(&v.pgoff)
            && v.end - v.start >= array + len
    });
    let Some(v) = rings else {
        // (not mapped there: the array made again is untouched)
        return Ok(());
    };
    let mut now = vec![0u8; len as usize];
    t.read_mem(v.start + array, &mut now)
        .rat(pid, "read an io_uring's SQ array")?;
    if now.iter().all(|b| *b == 0) {
        let identity: Vec<u8> = (0..e.sq_entries).flat_map(|i| i.to_le_bytes()).collect();
        t.write_mem(v.start + array, &identity)
            .rat(pid, "write an io_uring's SQ array")?;
    }
    Ok(())
}

/// Once the task's memory is in: registers the ring's buffers again.
fn settle(t: &mut Tracee, fd: u64, e: &CrestIoUringEntry) -> Result<(), RestoreError> {
    const REGISTER_BUFFERS: u64 = 0;
    let pid = t.pid();
    if e.buf_addr.is_empty() {
        return Ok(());
    }
    let iov: Vec<u8> = e
        .buf_addr
        .iter()
        .zip(&e.buf_len)
        .flat_map(|(a, l)| {
            a.to_le_bytes()
                .into_iter()
                .chain(u64::from(*l).to_le_bytes())
        })
        .collect();
    let at = t.put(&iov).rat(pid, "write io_uring buffers")?;
    t.syscall(
        nr::IO_URING_REGISTER,
        &[fd, REGISTER_BUFFERS, at, e.buf_addr.len() as u64],
    )
    .rat(
        pid,
        format!("register {} io_uring buffers", e.buf_addr.len()),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fdinfo of a ring as this kernel shows it (the `io_uring` workload).
    const PLAIN: &str = concat!(
        "pos:\t0\n",
        "flags:\t02000002\n",
        "mnt_id:\t17\n",
        "ino:\t26496106\n",
        "SqMask:\t0x7\n",
        "SqHead:\t44\n",
        "SqTail:\t45\n",
        "CachedSqHead:\t44\n",
        "CqMask:\t0xf\n",
        "CqHead:\t42\n",
        "CqTail:\t44\n",
        "CachedCqTail:\t44\n",
        "SQEs:\t1\n",
        "    4: opcode:NOP, fd:0, flags:0, off:0, addr:0x0, rw_flags:0x0, buf_index:0 user_data:204\n",
        "CQEs:\t2\n",
        "   10: user_data:170, res:0, flag:0\n",
        "   11: user_data:187, res:0, flag:0\n",
        "SqThread:\t-1\n",
        "SqThreadCpu:\t-1\n",
        "SqTotalTime:\t0\n",
        "SqWorkTime:\t0\n",
        "UserFiles:\t0\n",
        "UserBufs:\t3\n",
        "    0: 0x55857939d000/4096\n",
        "    1: <none>\n",
        "    2: 0x55857939c000/4096\n",
        "PollList:\n",
        "CqOverflowList:\n",
        "NAPI:\tdisabled\n",
    );

    #[test]
    fn parses_a_ring() {
        let r = parse(PLAIN).unwrap();
        assert_eq!((r.sq_entries, r.cq_entries), (8, 16));
        assert_eq!((r.sq_head, r.cq_tail, r.sq_thread), (44, 44, -1));
        assert_eq!(
            r.bufs,
            vec![
                Some((0x5585_7939_d000, 4096)),
                None,
                Some((0x5585_7939_c000, 4096))
            ]
        );
        assert!(!r.big_sqe_seen && !r.big_cqe_seen);
        assert_eq!((r.polls, r.overflow), (0, 0));
        assert_eq!(refusal(&r), None);
    }

    #[test]
    fn refuses_what_it_cannot_carry() {
        let inflight = PLAIN
            .replace("CachedSqHead:\t44", "CachedSqHead:\t45")
            .replace("PollList:\n", "PollList:\n  op=22, task_works=0\n");
        let r = parse(&inflight).unwrap();
        assert_eq!(r.polls, 1);
        assert!(refusal(&r).unwrap().contains("in flight"));
        let sqpoll = PLAIN.replace("SqThread:\t-1", "SqThread:\t4711");
        assert!(refusal(&parse(&sqpoll).unwrap())
            .unwrap()
            .contains("SQPOLL"));
        let files = PLAIN.replace("UserFiles:\t0", "UserFiles:\t4");
        assert!(refusal(&parse(&files).unwrap())
            .unwrap()
            .contains("registered files"));
        let unlisted = PLAIN.replace("    1: <none>\n", "");
        assert!(refusal(&parse(&unlisted).unwrap())
            .unwrap()
            .contains("did not list"));
        let big = PLAIN.replace("flag:0\n   11", "flag:0, extra1:0, extra2:0\n\n   11");
        assert!(parse(&big).unwrap().big_cqe_seen);
    }

    #[test]
    fn odd_fdinfo_is_none() {
        assert_eq!(parse("SqMask:\t7\n"), None);
        assert_eq!(parse(&PLAIN.replace("CachedCqTail", "Cached")), None);
        assert_eq!(parse(&PLAIN.replace("0x55857939d000", "zz")), None);
    }

    #[test]
    fn batches_reach_both_counters() {
        // simulated: a message to itself gives two completions
        for (x, y) in [(44u32, 44u32), (22, 19), (22, 21), (10, 20), (0, 0), (5, 0)] {
            let (mut s, mut c) = (0u32, 0u32);
            while (s, c) != (x, y) {
                let (n, op, flags) = next_batch(x - s, y - c, 8).unwrap();
                assert!(n > 0 && n <= 8);
                s += n;
                c += match (op, flags) {
                    (OP_MSG_RING, _) => 2 * n,
                    (_, SKIP_SUCCESS) => 0,
                    _ => n,
                };
                assert!(s <= x && c <= y, "{x} {y}: went to {s} {c}");
            }
        }
        assert_eq!(next_batch(0, 3, 8), None);
    }

    #[test]
    fn ring_sizes() {
        // 8 SQ and 16 CQ entries: the header, 16 CQEs, the array
        assert_eq!(rings_len(8, 16, 16), 64 + 256 + 32);
        assert_eq!(rings_len(8, 16, 32), 64 + 512 + 32);
    }
}
