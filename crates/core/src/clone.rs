//! Creating processes and threads for a restore: `clone3` arguments with
//! a `set_tid` array (a pid at every pid namespace level), steering through
//! `ns_last_pid` where `set_tid` cannot reach, the spare pids crest's own
//! helpers take, and the ends of short-lived tasks (zombies, helpers). It
//! uses only the injection layer, `/proc` and the errors; the namespace
//! rooms and the tree build on it.

use crate::error::RoomError;
use crate::error::{RestoreCtx, RestoreError};
use crate::procfs;
use crate::remote::Remote;
use crest_images::pb::PstreeEntry;
use crest_inject::{nr, Tracee};
use crest_sys::ptrace;

/// What creating a process or thread refuses.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    /// Something crest cannot carry yet, named.
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    /// An image that contradicts itself or the rest, naming the file.
    #[error("{file}: {what}")]
    BadImage { file: String, what: String },
}

impl RoomError for CloneError {}

/// Size of `struct clone_args` as crest passes it to `clone3`.
const CLONE_ARGS_SIZE: usize = 88;

/// Writes a `struct clone_args` (flags, exit signal and a `set_tid` array
/// right after it) into `parent`'s scratch memory; returns its address.
fn put_clone_args(
    parent: &mut Tracee,
    flags: u64,
    exit_signal: u64,
    set_tid: &[i32],
) -> Result<u64, RestoreError> {
    let ppid = parent.pid();
    let mut raw = vec![0u8; CLONE_ARGS_SIZE + 4 * set_tid.len()];
    let base = parent.scratch(raw.len()).rat(ppid, "scratch")?;
    raw[..8].copy_from_slice(&flags.to_le_bytes());
    raw[32..40].copy_from_slice(&exit_signal.to_le_bytes());
    if !set_tid.is_empty() {
        raw[64..72].copy_from_slice(&(base + CLONE_ARGS_SIZE as u64).to_le_bytes());
        raw[72..80].copy_from_slice(&(set_tid.len() as u64).to_le_bytes());
    }
    for (i, id) in set_tid.iter().enumerate() {
        let off = CLONE_ARGS_SIZE + 4 * i;
        raw[off..off + 4].copy_from_slice(&id.to_le_bytes());
    }
    parent.write_mem(base, &raw).rat(ppid, "write clone_args")?;
    Ok(base)
}

/// The ids a new task or thread must get, one per pid namespace level,
/// innermost first. crest's own level comes last, unless the tree's
/// outermost pid namespace is made afresh: then the kernel picks the ids
/// at crest's level (and above the tree's namespace).
#[derive(Debug, Clone, Copy)]
pub struct Ids<'a> {
    pub want: &'a [i32],
    /// How many innermost levels the forking task sets itself (`set_tid`);
    /// one level after them may be set by the caller's `before`.
    pub settable: usize,
    /// The last level is crest's, set through crest's `ns_last_pid` (the
    /// forking task has no rights over crest's pid namespace).
    pub crest_last: bool,
}

impl<'a> Ids<'a> {
    /// Every level set by the forking task.
    pub fn all(want: &'a [i32]) -> Ids<'a> {
        Ids {
            want,
            settable: want.len(),
            crest_last: false,
        }
    }
}

/// Whether task (or thread) `tid` of crest's view has the ids `want` at
/// its innermost levels.
pub(crate) fn has_ids(tid: i32, want: &[i32]) -> bool {
    procfs::read_status(tid).is_ok_and(|s| {
        s.ns_pid.len() >= want.len() && s.ns_pid.iter().rev().zip(want).all(|(a, b)| a == b)
    })
}

/// The error for task `pid`, whose ids `set_tid` (innermost first) were
/// taken: names what holds its pid in crest's namespace, as far as it can
/// be seen.
pub(crate) fn pid_taken(pid: i32, set_tid: &[i32]) -> RestoreError {
    let holder = match set_tid.last() {
        Some(&mine) => match procfs::read_stat(mine) {
            Ok(s) => format!(
                "pid {mine} here is {:?}, state {}, child of {}",
                s.comm, s.state, s.ppid
            ),
            Err(_) => group_holder(mine)
                .unwrap_or_else(|| format!("pid {mine} here was free again when looked at")),
        },
        None => "no ids to set".to_string(),
    };
    RestoreError::PidTaken { pid, holder }
}

/// A process whose process group or session is `pid` (which keeps the
/// number taken with no task of it left: a killed leader's children, or
/// their zombies), named.
fn group_holder(pid: i32) -> Option<String> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find_map(|p| {
            let s = procfs::read_stat(p).ok()?;
            let what = if s.pgrp == pid {
                "process group"
            } else if s.session == pid {
                "session"
            } else {
                return None;
            };
            Some(format!(
                "pid {pid} here is still the {what} of pid {p} ({:?}, state {}, child of {})",
                s.comm, s.state, s.ppid
            ))
        })
}

/// The error of an injected `clone3` that returned `r` for task `pid`: a
/// pid in `set_tid` taken, or another failure.
fn clone3_result(r: i64, pid: i32, set_tid: &[i32], ppid: i32) -> Result<(), RestoreError> {
    if r == -i64::from(libc::EEXIST) {
        return Err(pid_taken(pid, set_tid));
    }
    if r < 0 {
        return Err(RestoreError::Io {
            pid,
            step: format!("clone3 with set_tid {set_tid:?} in parent {ppid}"),
            source: std::io::Error::from_raw_os_error(-r as i32),
        });
    }
    Ok(())
}

/// The pid of task `child` as its parent `parent` (crest's view) sees it.
fn seen_by(parent: i32, child: i32) -> Option<i32> {
    let level = procfs::read_status(parent)
        .ok()?
        .ns_pid
        .len()
        .checked_sub(1)?;
    procfs::read_status(child).ok()?.ns_pid.get(level).copied()
}

/// Reaps, in `parent`, its killed child `pid` (its own view) and takes back
/// the SIGCHLD, so that a clone undone leaves no zombie behind.
pub(crate) fn reap_in(parent: &mut Tracee, pid: i32) {
    const WNOHANG: u64 = 1;
    for _ in 0..200 {
        match parent.syscall_raw(nr::WAIT4, &[pid as u64, 0, WNOHANG, 0]) {
            Ok(0) => std::thread::sleep(std::time::Duration::from_millis(1)),
            _ => break,
        }
    }
    take_sigchld(parent);
}

/// Injects `clone3` into `parent` and takes charge of the new task (a
/// thread with `CLONE_THREAD` in `flags`), which starts traced and
/// stopped, with the ids `ids` asks for; `before` (given them) sets the
/// level after the settable ones right before each try. Levels set through an
/// `ns_last_pid` can be taken by any other fork in between: such a clone
/// is undone and tried again. `who` names the task in errors.
pub(crate) fn clone_with(
    parent: &mut Tracee,
    who: i32,
    ids: &Ids<'_>,
    flags: u64,
    exit_signal: u64,
    before: &mut dyn FnMut(&[i32]) -> Result<(), RestoreError>,
) -> Result<Tracee, RestoreError> {
    let (ppid, want) = (parent.pid(), ids.want);
    if want.is_empty() || want.len() > 32 {
        return Err(CloneError::Unsupported {
            what: format!("{} pid namespace levels", want.len()),
        }
        .in_restore(who));
    }
    let inner = &want[..ids.settable.min(want.len())];
    let tries = if inner.len() < want.len() { 64 } else { 1 };
    parent.trace_new_tasks().rat(ppid, "trace new tasks")?;
    // (all the tries together wait at most this long for a leaving holder)
    let patience = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for _ in 0..tries {
        if let Some(t) = clone_attempt(parent, who, ids, flags, exit_signal, before)? {
            return Ok(t);
        }
        if tries == 1 {
            return Err(CloneError::Unsupported {
                what: format!("clone3 with set_tid {inner:?} did not give the ids {want:?}"),
            }
            .in_restore(who));
        }
        // The pid at crest's level may be held by a task on its way out
        // (a zombie pid 1 reaps late): waited for, within `patience`. One
        // held by a live task is not the restore's to take.
        if let (true, Some(&mine)) = (ids.crest_last, want.last()) {
            let left = patience.saturating_duration_since(std::time::Instant::now());
            if !left.is_zero() {
                wait_for_leaving(&[mine], left);
            }
        }
    }
    if let (true, Some(&mine)) = (ids.crest_last, want.last()) {
        if procfs::read_stat(mine).is_ok() {
            return Err(pid_taken(mine, &[mine]));
        }
    }
    Err(CloneError::Unsupported {
        what: format!("other forks kept taking its ids {want:?}"),
    }
    .in_restore(who))
}

/// One `clone3` of [`clone_with`]: the new task, or None if it did not
/// get the ids (another fork took one meanwhile; the task is gone again).
pub(crate) fn clone_attempt(
    parent: &mut Tracee,
    who: i32,
    ids: &Ids<'_>,
    flags: u64,
    exit_signal: u64,
    before: &mut dyn FnMut(&[i32]) -> Result<(), RestoreError>,
) -> Result<Option<Tracee>, RestoreError> {
    let (ppid, want) = (parent.pid(), ids.want);
    let inner = &want[..ids.settable.min(want.len())];
    let thread = flags & libc::CLONE_THREAD as u64 != 0;
    let base = put_clone_args(parent, flags, exit_signal, inner)?;
    before(want)?;
    if let (true, Some(last)) = (ids.crest_last, want.last()) {
        std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", last - 1))
            .rat(ppid, "write ns_last_pid")?;
    }
    let r = parent
        .syscall_raw(nr::CLONE3, &[base, CLONE_ARGS_SIZE as u64])
        .rat(ppid, "clone3")?;
    clone3_result(r, who, inner, ppid)?;
    // The new task's id in crest's namespace.
    let got = parent.new_task().ok_or_else(|| {
        CloneError::Unsupported {
            what: "a clone that reported no new task".into(),
        }
        .in_restore(who)
    })?;
    let pid = if thread { ppid } else { got };
    let mut t = Tracee::from_new_task(pid, got).rat(got, "attach to the new task")?;
    t.inject_like(parent);
    if has_ids(got, want) {
        return Ok(Some(t));
    }
    if thread {
        // exit, not exit_group: only the wrong thread ends
        t.syscall_raw(60, &[0]).ok();
        t.leak();
        let _ = ptrace::wait(got);
    } else {
        let seen = seen_by(ppid, got);
        drop(t); // killed, and reaped by crest as its tracer
        if let Some(s) = seen {
            reap_in(parent, s);
        }
    }
    Ok(None)
}

/// Injects a plain `clone3` (no `set_tid`) into `parent`: a helper task,
/// traced and stopped from birth.
pub fn clone_plain(parent: &mut Tracee) -> Result<Tracee, RestoreError> {
    clone_with_tid(parent, &[])
}

/// [`clone_plain`] with the new task's pid in the innermost pid namespace
/// it is made in (`parent`'s `pid_for_children`) set to `set_tid` (none:
/// any pid).
pub fn clone_with_tid(parent: &mut Tracee, set_tid: &[i32]) -> Result<Tracee, RestoreError> {
    let ppid = parent.pid();
    let base = put_clone_args(parent, 0, libc::SIGCHLD as u64, set_tid)?;
    parent.trace_new_tasks().rat(ppid, "trace new tasks")?;
    parent
        .syscall(nr::CLONE3, &[base, CLONE_ARGS_SIZE as u64])
        .rat(ppid, {
            if set_tid.is_empty() {
                "clone3 of a helper".to_string()
            } else {
                format!("clone3 of a helper with set_tid {set_tid:?}")
            }
        })?;
    // The helper's pid in crest's namespace (the parent may see another).
    let got = parent.new_task().ok_or_else(|| {
        CloneError::Unsupported {
            what: "a clone that reported no new task".into(),
        }
        .in_restore(ppid)
    })?;
    let mut t = Tracee::from_new_task(got, got).rat(got, "attach to a helper")?;
    t.inject_like(parent);
    Ok(t)
}

/// Forks `child` from its restored parent with its old ids (`clone3`
/// `flags` beside), and makes it lead its session if it did.
pub fn fork_child(
    parent: &mut Tracee,
    child: &PstreeEntry,
    ids: &Ids<'_>,
    flags: u64,
    before: &mut dyn FnMut(&[i32]) -> Result<(), RestoreError>,
) -> Result<Tracee, RestoreError> {
    let mut t = clone_with(
        parent,
        child.pid as i32,
        ids,
        flags,
        libc::SIGCHLD as u64,
        before,
    )?;
    if child.sid == child.pid {
        t.syscall(nr::SETSID, &[]).rat(t.pid(), "setsid")?;
    }
    Ok(t)
}

/// Creates thread `tid` (the image's id) of the task behind `leader`,
/// with its ids at every pid namespace level.
pub fn fork_thread(
    leader: &mut Tracee,
    tid: i32,
    ids: &Ids<'_>,
    before: &mut dyn FnMut(&[i32]) -> Result<(), RestoreError>,
) -> Result<Tracee, RestoreError> {
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    clone_with(leader, tid, ids, flags, 0, before)
}

/// Waits, up to `limit` in all, for the tasks that hold any of `pids` on
/// their way out to be gone: zombies (a dumped tree's orphans, which pid 1
/// reaps late) and killed tasks still tearing down their memory (a dump
/// does not wait for them). A pid held by a live task is left to the
/// clone, which names it.
pub fn wait_for_leaving(pids: &[i32], limit: std::time::Duration) {
    const PF_EXITING: u32 = 0x4;
    let leaving = |pid: i32| {
        procfs::read_stat(pid)
            .is_ok_and(|s| matches!(s.state, 'Z' | 'X' | 'x') || s.flags & PF_EXITING != 0)
    };
    let start = std::time::Instant::now();
    for &pid in pids {
        while leaving(pid) && start.elapsed() < limit {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Takes back one SIGCHLD queued in a (blocked) restored task by the exit
/// of a helper or a zombie.
pub(crate) fn take_sigchld(parent: &mut Tracee) {
    let mut set = [0u8; 32];
    set[..8].copy_from_slice(&(1u64 << (libc::SIGCHLD - 1)).to_le_bytes());
    if let Ok(addr) = parent.put(&set) {
        let _ = parent.syscall_raw(nr::RT_SIGTIMEDWAIT, &[addr, 0, addr + 16, 8]);
    }
}

/// Ends a task that was a zombie with its exit status, and takes back the
/// SIGCHLD that its exit queued in the (still blocked) parent.
pub fn make_zombie(
    mut t: Tracee,
    status: i32,
    comm: &str,
    parent: &mut Tracee,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let mut name = comm.as_bytes().to_vec();
    name.truncate(15);
    name.push(0);
    let addr = t.put(&name).rat(pid, "write comm")?;
    t.prctl(&[libc::PR_SET_NAME as u64, addr], "prctl(PR_SET_NAME)")?;
    let sig = status & 0x7f;
    if sig != 0 && sig != libc::SIGKILL && sig != libc::SIGSTOP {
        // Default action for the fatal signal, and no core file.
        let addr = t.put(&[0u8; 32]).rat(pid, "write sigaction")?;
        t.syscall(nr::RT_SIGACTION, &[sig as u64, addr, 0, 8])
            .rat(pid, "reset the action of the fatal signal")?;
        let _ = crest_sys::misc::prlimit(pid, libc::RLIMIT_CORE, Some((0, 0)));
    }
    if sig != 0 {
        crest_sys::ptrace::set_sigmask(pid, 0).rat(pid, "PTRACE_SETSIGMASK")?;
    }
    t.forget_scratch();
    t.exit_as(status).rat(pid, "exit as a zombie")?;
    crate::debug!(
        "pid {pid}: ended with status {status:#x}, state {:?}",
        procfs::read_stat(pid).map(|s| s.state)
    );
    take_sigchld(parent);
    Ok(())
}

/// The first pid of the widest run of pids below `pid_max` that none of
/// `taken` is in (crest's helpers are steered there).
pub fn spare_pids(taken: &[i32]) -> i32 {
    spare_in(taken, pid_max())
}

/// `kernel/pid_max`.
pub fn pid_max() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768)
}

fn spare_in(taken: &[i32], max: i32) -> i32 {
    // pids below 300 are not handed out again after a wrap
    let mut t: Vec<i32> = taken
        .iter()
        .copied()
        .filter(|p| (300..max).contains(p))
        .collect();
    t.sort_unstable();
    t.dedup();
    let mut best = (300, t.first().copied().unwrap_or(max) - 300);
    for w in t.windows(2) {
        if w[1] - w[0] - 1 > best.1 {
            best = (w[0] + 1, w[1] - w[0] - 1);
        }
    }
    if let Some(&last) = t.last() {
        if max - last - 1 > best.1 {
            best = (last + 1, max - last - 1);
        }
    }
    best.0
}

/// The first of the spare pids a restore's own helpers take (0: none
/// chosen).
static SPARE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Chooses `first` as where the restore's helpers take their pids, and
/// steers crest's next children there.
pub fn use_spare(first: i32) {
    SPARE.store(first, std::sync::atomic::Ordering::Relaxed);
    steer_pids(first);
}

/// Steers crest's next child to the spare pids again. Forking the tree
/// moves `ns_last_pid` among the tree's pids, and a helper made after that
/// would take a pid right after them: one a thread made later may need.
pub fn steer_to_spare() {
    let first = SPARE.load(std::sync::atomic::Ordering::Relaxed);
    if first > 0 {
        steer_pids(first);
    }
}

/// Makes crest's next children take pids from `first` on (best effort:
/// others on the machine fork too).
pub fn steer_pids(first: i32) {
    let _ = std::fs::write(
        "/proc/sys/kernel/ns_last_pid",
        format!("{}", first.max(301) - 1),
    );
}

#[cfg(test)]
mod spare_tests {
    use super::spare_in;

    #[test]
    fn widest_gap() {
        assert_eq!(spare_in(&[], 32768), 300);
        assert_eq!(spare_in(&[1000, 1001, 1002], 32768), 1003);
        assert_eq!(spare_in(&[5000, 30000], 32768), 5001);
        assert_eq!(spare_in(&[400, 32000], 32768), 401);
        assert_eq!(spare_in(&[10, 20000], 32768), 300);
    }
}
