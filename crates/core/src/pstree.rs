//! The process tree: which tasks and threads are dumped, seized and
//! stopped, and `pstree.img` (CRIU's `pstree_entry`: pid, ppid, pgid, sid,
//! threads). Restore forks every task from its real parent, in tree order.

use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::procfs;
use crest_images::pb::PstreeEntry;
use crest_inject::{nr, Tracee};
use crest_sys::ptrace;

/// One task of the tree, seized (or a zombie, which cannot be).
#[derive(Debug, Clone)]
pub struct Task {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Thread ids, the leader first.
    pub threads: Vec<i32>,
    /// The raw wait status of a zombie.
    pub zombie: Option<i32>,
    /// The signal that stopped it, when it was stopped (job control).
    pub stopped: Option<i32>,
}

impl Task {
    pub fn entry(&self) -> PstreeEntry {
        PstreeEntry {
            pid: self.pid as u32,
            ppid: self.ppid as u32,
            pgid: self.pgid as u32,
            sid: self.sid as u32,
            threads: self.threads.iter().map(|t| *t as u32).collect(),
        }
    }
}

/// A seized tree. Dropping it detaches every thread: the tree runs on.
pub struct Seized {
    /// Tasks in tree order: every parent before its children.
    pub tasks: Vec<Task>,
    attached: Vec<i32>,
    /// By when every thread must have stopped (`--timeout`).
    deadline: std::time::Instant,
    /// Tasks found stopped (job control), with the signal that stopped
    /// them as their seizing reported it.
    stopped: std::collections::HashMap<i32, i32>,
}

/// Most tasks and threads crest seizes in one tree.
const MAX_THREADS: usize = 1 << 16;

impl Seized {
    /// Seizes `root`, its threads and all its descendants, repeating until
    /// a whole pass finds no new task or thread, so a tree that forks or
    /// spawns threads meanwhile is still caught whole. Every thread is
    /// stopped when this returns.
    pub fn seize(root: i32, timeout: std::time::Duration) -> Result<Seized, DumpError> {
        if !std::path::Path::new(&format!("/proc/{root}")).exists() {
            return Err(DumpError::NoSuchProcess { pid: root });
        }
        let mut s = Seized {
            tasks: Vec::new(),
            attached: Vec::new(),
            deadline: std::time::Instant::now() + timeout,
            stopped: std::collections::HashMap::new(),
        };
        let mut order: Vec<i32> = vec![root];
        let mut zombies: Vec<(i32, i32)> = Vec::new();
        loop {
            let mut changed = false;
            let mut i = 0;
            while i < order.len() {
                let pid = order[i];
                i += 1;
                if zombies.iter().any(|z| z.0 == pid) {
                    continue;
                }
                let stat = match procfs::read_stat(pid) {
                    Ok(st) => st,
                    Err(e) if e.is_not_found() && pid != root => continue,
                    Err(e) if e.is_not_found() => return Err(DumpError::NoSuchProcess { pid }),
                    Err(e) => {
                        return Err(DumpError::Proc {
                            pid,
                            step: "read stat",
                            source: e,
                        })
                    }
                };
                if stat.state == 'Z' && pid == root {
                    return Err(DumpError::Unsupported {
                        pid,
                        what: "dumping a zombie as the root of a tree".into(),
                    });
                }
                if stat.state == 'Z' && !s.attached.contains(&pid) {
                    zombies.push((pid, stat.exit_code));
                    changed = true;
                    continue;
                }
                if stat.state == 'T' {
                    s.stopped.entry(pid).or_insert(libc::SIGSTOP);
                }
                changed |= s.seize_threads(pid)?;
                for tid in procfs::list_tids(pid).at(pid, "list threads")? {
                    let kids = match procfs::read_children(pid, tid) {
                        Ok(k) => k,
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => {
                            return Err(DumpError::Proc {
                                pid,
                                step: "read children",
                                source: e,
                            })
                        }
                    };
                    for k in kids {
                        if !order.contains(&k) {
                            order.push(k);
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        for pid in order {
            let Ok(stat) = procfs::read_stat(pid) else {
                continue; // gone (reaped) before we stopped its parent
            };
            let zombie = zombies.iter().find(|z| z.0 == pid).map(|z| z.1);
            let threads = if zombie.is_some() {
                vec![pid]
            } else {
                let mut th: Vec<i32> = procfs::list_tids(pid)
                    .at(pid, "list threads")?
                    .into_iter()
                    .filter(|t| s.attached.contains(t))
                    .collect();
                th.sort_unstable_by_key(|t| (*t != pid, *t));
                th
            };
            s.tasks.push(Task {
                pid,
                ppid: stat.ppid,
                pgid: stat.pgrp,
                sid: stat.session,
                threads,
                zombie,
                stopped: s.stopped.get(&pid).copied().filter(|_| zombie.is_none()),
            });
        }
        Ok(s)
    }

    /// Seizes every thread of `pid` not seized yet; true if any was new.
    fn seize_threads(&mut self, pid: i32) -> Result<bool, DumpError> {
        let mut any = false;
        loop {
            let tids = procfs::list_tids(pid).at(pid, "list threads")?;
            let new: Vec<i32> = tids
                .into_iter()
                .filter(|t| !self.attached.contains(t))
                .collect();
            if new.is_empty() {
                return Ok(any);
            }
            for tid in new {
                if self.attached.len() >= MAX_THREADS {
                    return Err(DumpError::Unsupported {
                        pid,
                        what: format!("a tree of more than {MAX_THREADS} threads"),
                    });
                }
                match crest_inject::seize_thread_reporting(tid, self.deadline) {
                    Ok(sig) => {
                        if crest_inject::is_stop_signal(sig) {
                            self.stopped.insert(pid, sig);
                        }
                        self.attached.push(tid);
                    }
                    // A thread that exited meanwhile is simply not there.
                    Err(_)
                        if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() => {}
                    // Another tracer holds it (a debugger, or a task of
                    // the tree tracing another): said as such.
                    Err(crest_inject::InjectError::Ptrace {
                        op: "PTRACE_SEIZE", ..
                    }) if tracer_of(pid, tid)
                        .is_some_and(|t| t != 0 && t != std::process::id() as i32) =>
                    {
                        let tracer = tracer_of(pid, tid).unwrap_or(0);
                        let inside = if self.attached.contains(&tracer) || tracer == pid {
                            "a task of the tree"
                        } else {
                            "a process outside the tree"
                        };
                        return Err(DumpError::Unsupported {
                            pid,
                            what: format!(
                                "thread {tid} traced by pid {tracer} ({inside}): a traced task"
                            ),
                        });
                    }
                    Err(e) => {
                        return Err(DumpError::Inject {
                            pid,
                            step: "seize",
                            source: e,
                        })
                    }
                }
                any = true;
            }
        }
    }

    /// Lets every thread go; they run on as before.
    pub fn release(mut self) {
        for tid in std::mem::take(&mut self.attached) {
            let _ = ptrace::detach(tid, 0);
        }
    }

    /// Lets the tree go stopped (CRIU's `--leave-stopped`): every task
    /// gets a SIGSTOP before it is detached.
    pub fn release_stopped(self) {
        for t in self.tasks.iter().filter(|t| t.zombie.is_none()) {
            let _ = crest_sys::misc::kill(t.pid, libc::SIGSTOP);
        }
        self.release();
    }

    /// Kills the dumped tasks (the default after a successful dump). The
    /// threads are left to the kernel: a killed tracee goes away on its own
    /// once crest stops tracing it, and tearing down a large address space
    /// need not hold up the dump.
    pub fn kill(mut self) {
        for t in self.tasks.iter().filter(|t| t.zombie.is_none()) {
            let _ = crest_sys::misc::kill(t.pid, libc::SIGKILL);
        }
        // A runtime looks at the root as soon as the dump returns: it must
        // be dead by then (a zombie, or gone). A traced task's death is
        // reported to crest first, and the init of a pid namespace waits
        // for its tasks' deaths to be collected: crest collects them, which
        // hands each to its real parent.
        let mut left = std::mem::take(&mut self.attached);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dead(self.tasks[0].pid) && std::time::Instant::now() < deadline {
            left.retain(|&tid| {
                matches!(
                    ptrace::try_wait(tid),
                    Ok(None) | Ok(Some(ptrace::WaitStatus::Stopped { .. }))
                )
            });
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// The `TracerPid` of thread `tid` of `pid` (0: not traced).
fn tracer_of(pid: i32, tid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` has exited (a zombie or gone).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z') || r.starts_with('X')),
        Err(_) => true,
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        for tid in std::mem::take(&mut self.attached) {
            let _ = ptrace::detach(tid, 0);
        }
    }
}

/// Orders pstree entries so that every parent comes before its children,
/// the root first; entries whose parent is missing (other than the root)
/// are an error in the image.
pub fn tree_order(entries: &[PstreeEntry]) -> Result<Vec<usize>, String> {
    let Some(root) = entries.first() else {
        return Err("no tasks".into());
    };
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        if !seen.insert(e.pid) {
            return Err(format!("pid {} appears twice", e.pid));
        }
    }
    let mut kids: std::collections::HashMap<u32, Vec<usize>> = std::collections::HashMap::new();
    for (j, e) in entries.iter().enumerate().skip(1) {
        kids.entry(e.ppid).or_default().push(j);
    }
    let mut order = vec![0usize];
    let mut placed = vec![false; entries.len()];
    placed[0] = true;
    let mut i = 0;
    while i < order.len() {
        let parent = entries[order[i]].pid;
        for &j in kids.get(&parent).map_or(&[][..], |v| &v[..]) {
            if !placed[j] {
                placed[j] = true;
                order.push(j);
            }
        }
        i += 1;
    }
    if order.len() == entries.len() {
        order = after_leaders(entries, &order)?;
    }
    if order.len() != entries.len() {
        let lost: Vec<u32> = entries
            .iter()
            .enumerate()
            .filter(|(j, _)| !placed[*j])
            .map(|(_, e)| e.pid)
            .take(16)
            .collect();
        return Err(format!(
            "tasks {lost:?} have no parent in the tree rooted at {}",
            root.pid
        ));
    }
    Ok(order)
}

/// `order` (parents first) changed so that a task whose session leader is
/// in the tree but is not its ancestor comes after that leader (it is
/// forked from the leader's side): the first task whose parent and leader
/// are placed goes next.
fn after_leaders(entries: &[PstreeEntry], order: &[usize]) -> Result<Vec<usize>, String> {
    let index: std::collections::HashMap<u32, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.pid, i))
        .collect();
    let is_ancestor = |a: usize, mut of: usize| {
        for _ in 0..entries.len() {
            match index.get(&entries[of].ppid) {
                Some(&p) if p == a => return true,
                Some(&p) if p != of => of = p,
                _ => return false,
            }
        }
        false
    };
    let needs = |j: usize| -> Vec<usize> {
        let e = &entries[j];
        let mut d: Vec<usize> = index.get(&e.ppid).copied().into_iter().collect();
        if let Some(&l) = index.get(&e.sid) {
            if l != j && !is_ancestor(l, j) {
                d.push(l);
            }
        }
        d
    };
    if !(0..entries.len()).any(|j| needs(j).len() > 1) {
        return Ok(order.to_vec());
    }
    let mut placed = vec![false; entries.len()];
    let mut out = Vec::with_capacity(order.len());
    while out.len() < order.len() {
        let next = order
            .iter()
            .copied()
            .find(|&j| !placed[j] && needs(j).iter().all(|&d| placed[d] || d == j));
        let Some(j) = next else {
            return Err("sessions whose leaders and members wait on each other".into());
        };
        placed[j] = true;
        out.push(j);
    }
    Ok(out)
}

// ---- restore side -------------------------------------------------------

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

/// The error of an injected `clone3` that returned `r` for task `pid`: a
/// pid in `set_tid` taken, or another failure.
fn clone3_result(r: i64, pid: i32, set_tid: &[i32], ppid: i32) -> Result<(), RestoreError> {
    if r == -i64::from(libc::EEXIST) {
        return Err(RestoreError::PidTaken { pid });
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
fn reap_in(parent: &mut Tracee, pid: i32) {
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
        return Err(RestoreError::Unsupported {
            pid: who,
            what: format!("{} pid namespace levels", want.len()),
        });
    }
    let inner = &want[..ids.settable.min(want.len())];
    let tries = if inner.len() < want.len() { 64 } else { 1 };
    parent.trace_new_tasks().rat(ppid, "trace new tasks")?;
    for _ in 0..tries {
        if let Some(t) = clone_attempt(parent, who, ids, flags, exit_signal, before)? {
            return Ok(t);
        }
        if tries == 1 {
            return Err(RestoreError::Unsupported {
                pid: who,
                what: format!("clone3 with set_tid {inner:?} did not give the ids {want:?}"),
            });
        }
    }
    Err(RestoreError::Unsupported {
        pid: who,
        what: format!("other forks kept taking its ids {want:?}"),
    })
}

/// One `clone3` of [`clone_with`]: the new task, or None if it did not
/// get the ids (another fork took one meanwhile; the task is gone again).
fn clone_attempt(
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
    let got = parent.new_task().ok_or_else(|| RestoreError::Unsupported {
        pid: who,
        what: "a clone that reported no new task".into(),
    })?;
    let pid = if thread { ppid } else { got };
    let mut t = Tracee::from_new_task(pid, got).rat(got, "attach to the new task")?;
    t.set_syscall_ip(parent.syscall_ip());
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
    let got = parent.new_task().ok_or_else(|| RestoreError::Unsupported {
        pid: ppid,
        what: "a clone that reported no new task".into(),
    })?;
    let mut t = Tracee::from_new_task(got, got).rat(got, "attach to a helper")?;
    t.set_syscall_ip(parent.syscall_ip());
    Ok(t)
}

/// Forks `child`, the init of a pid namespace owned by the user namespace
/// `userns_holder` holds, from `parent` (from crest for the root of the
/// tree: None): a helper forked from the parent enters that user
/// namespace, unshares the pid namespace and forks the init — pid 1
/// inside, the level of the parent's namespace (if any) through the
/// parent's `ns_last_pid`, crest's through crest's if `crest_level` — then
/// exits; the parent (a child subreaper meanwhile, as crest is) inherits
/// the init and reaps the helper.
pub fn fork_init_in_userns(
    mut parent: Option<&mut Tracee>,
    child: &PstreeEntry,
    want: &[i32],
    crest_level: bool,
    (userns_holder, joins): (i32, &[(String, u32)]),
    sibling: bool,
) -> Result<Tracee, RestoreError> {
    let who = child.pid as i32;
    let middles = want.len().saturating_sub(1 + usize::from(crest_level));
    if want.first() != Some(&1) || middles > 1 || (middles == 1 && parent.is_none()) {
        return Err(RestoreError::Unsupported {
            pid: who,
            what: format!("a pid namespace init with pids {want:?} (more than 3 levels)"),
        });
    }
    let middle = if middles == 1 {
        want.get(1).copied()
    } else {
        None
    };
    // A fork elsewhere may take one of the ids the init wants: killing an
    // init ends its pid namespace, so each try makes the helper again.
    for _ in 0..16 {
        if let Some(c) = init_attempt(
            parent.as_deref_mut(),
            child,
            want,
            (middle, crest_level),
            (userns_holder, joins),
            sibling,
        )? {
            return Ok(c);
        }
    }
    Err(RestoreError::Unsupported {
        pid: who,
        what: format!("other forks kept taking its ids {want:?}"),
    })
}

/// One try of [`fork_init_in_userns`]: a helper in the owner of the new
/// pid namespace forks the init; None if the init did not get its ids
/// (it and the helper are gone again).
fn init_attempt(
    mut parent: Option<&mut Tracee>,
    child: &PstreeEntry,
    want: &[i32],
    (middle, crest_level): (Option<i32>, bool),
    (userns_holder, joins): (i32, &[(String, u32)]),
    sibling: bool,
) -> Result<Option<Tracee>, RestoreError> {
    let who = child.pid as i32;
    // the helper itself keeps off the ids the init wants: past them in
    // the parent's pid namespace and in crest's
    if let (Some(m), Some(p)) = (middle, parent.as_deref_mut()) {
        crate::ns::user::write_in_task(
            p,
            "/proc/sys/kernel/ns_last_pid",
            m.to_string().as_bytes(),
        )?;
    }
    if let (true, Some(last)) = (crest_level, want.last()) {
        std::fs::write("/proc/sys/kernel/ns_last_pid", last.to_string())
            .rat(who, "write ns_last_pid")?;
    }
    let mut h = match parent.as_deref_mut() {
        Some(p) => {
            p.syscall(nr::PRCTL, &[36, 1]) // PR_SET_CHILD_SUBREAPER, restored later
                .rat(p.pid(), "prctl(PR_SET_CHILD_SUBREAPER)")?;
            clone_plain(p)?
        }
        // (a sibling root: the helper and the init it forks are children
        // of crest's parent, CRIU's --restore-sibling)
        None if sibling => crate::ns::pid::spawn_sibling_helper()?,
        None => crate::ns::pid::spawn_helper(&[])?,
    };
    let flags = if sibling && parent.is_none() {
        libc::CLONE_PARENT as u64
    } else {
        0
    };
    let hp = h.pid();
    // the init's namespaces an outer user namespace may own, joined while
    // the helper still has rights over them; those it has no rights over
    // yet (an unprivileged crest: they belong to the namespace it enters)
    // once it is in its user namespace
    let mut later = Vec::new();
    for (path, nstype) in joins {
        let fd = crate::mm::restore::open_crest_side(&mut h, path, libc::O_RDONLY)?;
        let r = h.syscall(nr::SETNS, &[fd, u64::from(*nstype)]);
        match r {
            Err(crest_inject::InjectError::Syscall { ref source, .. })
                if source.raw_os_error() == Some(libc::EPERM) =>
            {
                later.push((fd, path, *nstype));
            }
            r => {
                h.syscall(nr::CLOSE, &[fd]).rat(hp, "close")?;
                r.rat(hp, format!("setns into {path} in the pid namespace helper"))?;
            }
        }
    }
    crate::ns::user::enter(&mut h, userns_holder)?;
    for (fd, path, nstype) in later {
        let r = h.syscall(nr::SETNS, &[fd, u64::from(nstype)]);
        h.syscall(nr::CLOSE, &[fd]).rat(hp, "close")?;
        r.rat(hp, format!("setns into {path} in the pid namespace helper"))?;
    }
    h.syscall(nr::UNSHARE, &[libc::CLONE_NEWPID as u64])
        .rat(hp, "unshare(CLONE_NEWPID) in the helper")?;
    // The helper has rights over the new namespace only.
    let ids = Ids {
        want,
        settable: 1,
        crest_last: crest_level,
    };
    let made = {
        let mut before = |_: &[i32]| -> Result<(), RestoreError> {
            if let (Some(m), Some(p)) = (middle, parent.as_deref_mut()) {
                crate::ns::user::write_in_task(
                    p,
                    "/proc/sys/kernel/ns_last_pid",
                    format!("{}", m - 1).as_bytes(),
                )?;
            }
            Ok(())
        };
        // (clone3 takes no exit signal with CLONE_PARENT: the child gets
        // the forking task's)
        let exit_signal = if flags == 0 { libc::SIGCHLD as u64 } else { 0 };
        h.trace_new_tasks().rat(hp, "trace new tasks")?;
        clone_attempt(&mut h, who, &ids, flags, exit_signal, &mut before)?
    };
    let end_helper = |h: Tracee, parent: Option<&mut Tracee>| -> Result<(), RestoreError> {
        h.exit_as(0).rat(hp, "end the pid namespace helper")?;
        if let Some(p) = parent {
            p.syscall(nr::WAIT4, &[u64::MAX, 0, 0, 0])
                .rat(p.pid(), "reap the pid namespace helper")?;
            take_sigchld(p);
        }
        Ok(())
    };
    let Some(mut c) = made else {
        end_helper(h, parent)?;
        return Ok(None);
    };
    if child.sid == child.pid {
        c.syscall(nr::SETSID, &[]).rat(c.pid(), "setsid")?;
    }
    end_helper(h, parent)?;
    Ok(Some(c))
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

/// Short-lived tasks that stand in for a session or group leader that is
/// gone, as CRIU's helpers do: a helper takes the leader's pid, creates
/// the session (setsid) or group (setpgid), forks or hosts the members,
/// then exits and is reaped by its parent.
#[derive(Default)]
pub struct Helpers {
    /// (session or group id, helper, index of its parent task, the
    /// helper's pid as its parent sees it).
    made: Vec<(i32, Tracee, usize, i32)>,
}

impl Helpers {
    fn get(&mut self, id: i32) -> Option<&mut Tracee> {
        self.made.iter_mut().find(|h| h.0 == id).map(|h| &mut h.1)
    }

    /// Ends every helper; the members of a session helper are reparented to
    /// its parent, which must be a child subreaper.
    pub fn finish(self, tasks: &mut [Option<Tracee>]) -> Result<(), RestoreError> {
        for (id, h, parent, seen) in self.made {
            let pid = h.pid();
            h.exit_as(0).rat(pid, "end a session/group helper")?;
            let p = tasks[parent]
                .as_mut()
                .ok_or_else(|| RestoreError::Unsupported {
                    pid: id,
                    what: "a helper whose parent is a zombie".into(),
                })?;
            p.syscall(nr::WAIT4, &[seen as u64, 0, 0, 0])
                .rat(p.pid(), format!("reap helper {pid}"))?;
            take_sigchld(p);
        }
        Ok(())
    }
}

/// How a task is forked from its parent.
pub struct ForkHow<'a> {
    /// Its ids at every pid namespace level and how they are set.
    pub ids: Ids<'a>,
    /// Its session's id at the same levels (for a session helper).
    pub sid_ids: &'a [i32],
    pub share_files: bool,
    pub share_fs: bool,
    /// It is the init of a new pid namespace.
    pub new_pidns: bool,
    /// Its parent is a child subreaper (needed for a session helper).
    pub parent_is_subreaper: bool,
}

/// Whether task `k` is forked by its parent `p` itself (not by a session
/// helper): so when it is in its own session or in its parent's.
pub fn forks_directly(entries: &[&PstreeEntry], k: usize, p: usize) -> bool {
    let e = entries[k];
    e.sid == e.pid || e.sid == entries[p].sid
}

/// Forks task `k` of `entries` (in tree order) from its parent `p`, with a
/// session helper in between when its session leader is gone.
pub fn fork_in_session(
    tasks: &mut [Option<Tracee>],
    helpers: &mut Helpers,
    entries: &[&PstreeEntry],
    k: usize,
    p: usize,
    how: &ForkHow<'_>,
    before: &mut dyn FnMut(&[i32]) -> Result<(), RestoreError>,
) -> Result<Tracee, RestoreError> {
    let e = entries[k];
    let mut flags = 0u64;
    if how.share_files {
        flags |= libc::CLONE_FILES as u64;
    }
    if how.share_fs {
        flags |= libc::CLONE_FS as u64;
    }
    if how.new_pidns {
        flags |= libc::CLONE_NEWPID as u64;
    }
    let parent = tasks[p].as_mut().ok_or_else(|| RestoreError::Unsupported {
        pid: e.pid as i32,
        what: "a task whose parent is a zombie".into(),
    })?;
    if forks_directly(entries, k, p) {
        return fork_child(parent, e, &how.ids, flags, before);
    }
    let sid = e.sid as i32;
    if let Some(l) = entries.iter().position(|x| x.pid == e.sid) {
        return fork_from_leader(tasks, helpers, (k, p, l), e, how, before);
    }
    if !how.parent_is_subreaper {
        return Err(RestoreError::Unsupported {
            pid: e.pid as i32,
            what: format!(
                "session {sid} whose leader is gone, in a task whose parent {} is not a child subreaper",
                e.ppid
            ),
        });
    }
    if how.new_pidns {
        return Err(RestoreError::Unsupported {
            pid: e.pid as i32,
            what: "the init of a pid namespace in a session whose leader is gone".into(),
        });
    }
    if helpers.get(sid).is_none() {
        // The members must come back to the parent when the helper exits.
        parent
            .syscall(nr::PRCTL, &[36, 1]) // PR_SET_CHILD_SUBREAPER
            .rat(parent.pid(), "prctl(PR_SET_CHILD_SUBREAPER)")?;
        // at the task's levels, set the way the task's are
        let ids = Ids {
            want: how.sid_ids,
            ..how.ids
        };
        let mut h = clone_with(parent, sid, &ids, 0, libc::SIGCHLD as u64, before)?;
        h.syscall(nr::SETSID, &[])
            .rat(sid, "setsid in a session helper")?;
        // (in its parent's pid namespace: the innermost id)
        helpers.made.push((sid, h, p, ids.want[0]));
    }
    let h = helpers.get(sid).ok_or_else(|| RestoreError::Unsupported {
        pid: sid,
        what: "a lost session helper".into(),
    })?;
    fork_child(h, e, &how.ids, 0, before)
}

/// Forks task `k` (child of `p`) into the session of `l`, its leader, which
/// is in the tree but not its ancestor (it was reparented to `p`, a child
/// subreaper, after its parent left): a helper child of the leader forks
/// it and exits, so it comes back to `p` as it did. In crest's pid
/// namespace the helper gets any pid (crest's steering keeps those out of
/// the tree's way); below it, a high one at each level.
fn fork_from_leader(
    tasks: &mut [Option<Tracee>],
    helpers: &mut Helpers,
    (k, p, l): (usize, usize, usize),
    e: &PstreeEntry,
    how: &ForkHow<'_>,
    before: &mut dyn FnMut(&[i32]) -> Result<(), RestoreError>,
) -> Result<Tracee, RestoreError> {
    let sid = e.sid as i32;
    let refuse = |what: String| RestoreError::Unsupported {
        pid: e.pid as i32,
        what: format!("session {sid}, whose leader is in the tree but is not an ancestor, {what}"),
    };
    if !how.parent_is_subreaper {
        return Err(refuse(format!(
            "in a task whose parent {} is not a child subreaper",
            e.ppid
        )));
    }
    if how.new_pidns || l >= k {
        return Err(refuse("as the init of a pid namespace".into()));
    }
    let helper_of = sid ^ i32::MIN; // (apart from a gone leader's helper)
    if helpers.get(helper_of).is_none() {
        let parent = tasks[p]
            .as_mut()
            .ok_or_else(|| refuse("in a zombie's children".into()))?;
        parent
            .syscall(nr::PRCTL, &[36, 1]) // PR_SET_CHILD_SUBREAPER
            .rat(parent.pid(), "prctl(PR_SET_CHILD_SUBREAPER)")?;
        let leader = tasks[l].as_mut().ok_or_else(|| refuse("a zombie".into()))?;
        let (h, seen) = if how.ids.want.len() > 1 {
            // in a pid namespace below crest's: at every level the member
            // has, a pid high in the namespace, out of the tree's way (the
            // leader knows it by the innermost)
            let top = pid_max() - 3001 - sid.rem_euclid(1000);
            let high: Vec<i32> = (0..how.ids.want.len()).map(|_| top).collect();
            let ids = Ids {
                want: &high,
                ..how.ids
            };
            (
                clone_with(leader, sid, &ids, 0, libc::SIGCHLD as u64, before)?,
                top,
            )
        } else {
            let h = clone_plain(leader)?;
            let seen = h.pid();
            (h, seen)
        };
        helpers.made.push((helper_of, h, l, seen));
    }
    let h = helpers
        .get(helper_of)
        .ok_or_else(|| refuse("lost its helper".into()))?;
    fork_child(h, e, &how.ids, 0, before)
}

/// Puts every task in its process group: group leaders first, then the
/// members (a group must exist before others join it). A group whose
/// leader is gone is made by a helper with the leader's ids, forked by
/// its first member. `pgid_ids` holds each task's group id at the levels
/// its pids are set at, innermost first; with `fresh`, the tree's pid
/// namespace is new and no group outside the tree can be joined.
pub fn set_groups(
    tasks: &mut [Option<Tracee>],
    helpers: &mut Helpers,
    entries: &[&PstreeEntry],
    pgid_ids: &[Vec<i32>],
    fresh: bool,
    (levels, writers): (&[crate::ns::pid::Levels], &mut crate::ns::pid::Writers),
) -> Result<(), RestoreError> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].pgid != entries[i].pid);
    let in_tree = |id: u32| entries.iter().any(|x| x.pid == id);
    for i in order {
        let e = entries[i];
        let pid = e.pid as i32;
        let (Some(t), Some(want)) = (tasks[i].as_ref(), pgid_ids.get(i)) else {
            continue;
        };
        let now = procfs::read_status(t.pid()).map_err(|source| RestoreError::Proc {
            pid,
            step: "read status of a new task",
            source,
        })?;
        let now = &now.ns_pgid;
        if now.len() >= want.len() && now.iter().rev().zip(want).all(|(a, b)| a == b) {
            continue;
        }
        if want.first() == Some(&0) {
            // the group's leader is outside the task's pid namespace: the
            // task cannot name it; it stays in the group it got at fork
            crate::debug!("pid {pid}: group {} is outside its pid namespace", e.pgid);
            continue;
        }
        let pgid = e.pgid as i32;
        let exists = e.pgid == e.pid
            || in_tree(e.pgid)
            || (!fresh && std::path::Path::new(&format!("/proc/{pgid}")).exists());
        if !exists && !in_tree(e.sid) {
            // a group of a session from outside the tree (a shell job): it
            // stays in the restorer's, as --shell-job does
            continue;
        }
        let t = tasks[i].as_mut().ok_or_else(|| RestoreError::Unsupported {
            pid,
            what: "a zombie group member".into(),
        })?;
        if !exists {
            // at the member's levels, set the way its own were
            let l = levels.get(i).copied().unwrap_or_default();
            let ids = Ids {
                want,
                settable: l.settable.min(want.len()),
                crest_last: l.crest_last,
            };
            let mut before = |w: &[i32]| -> Result<(), RestoreError> {
                match (l.middle, w.get(l.settable)) {
                    (Some((ns, init)), Some(&next)) => writers.set_next(ns, init, next),
                    _ => Ok(()),
                }
            };
            let mut h = clone_with(t, pgid, &ids, 0, libc::SIGCHLD as u64, &mut before)?;
            h.syscall(nr::SETPGID, &[0, 0])
                .rat(pgid, "setpgid in a group helper")?;
            helpers.made.push((pgid, h, i, want[0]));
        }
        let target = if e.pgid == e.pid {
            0
        } else {
            want.first().map_or(u64::from(e.pgid), |g| *g as u64)
        };
        t.syscall(nr::SETPGID, &[0, target])
            .rat(pid, format!("setpgid to group {}", e.pgid))?;
    }
    Ok(())
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
    t.syscall(nr::PRCTL, &[libc::PR_SET_NAME as u64, addr])
        .rat(pid, "prctl(PR_SET_NAME)")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pid: u32, ppid: u32) -> PstreeEntry {
        PstreeEntry {
            pid,
            ppid,
            pgid: pid,
            sid: pid,
            threads: vec![pid],
        }
    }

    #[test]
    fn parents_come_first() {
        let entries = [e(10, 1), e(30, 20), e(20, 10), e(11, 10)];
        let order = tree_order(&entries).unwrap();
        let pids: Vec<u32> = order.iter().map(|i| entries[*i].pid).collect();
        assert_eq!(pids, [10, 20, 11, 30]);
    }

    #[test]
    fn members_come_after_a_leader_that_is_not_their_ancestor() {
        // 12 (a member of 11's session, reparented to 10) listed first
        let member = PstreeEntry {
            sid: 11,
            pgid: 11,
            ..e(12, 10)
        };
        let entries = [e(10, 1), member, e(11, 10), e(13, 11)];
        let order = tree_order(&entries).unwrap();
        let pids: Vec<u32> = order.iter().map(|i| entries[*i].pid).collect();
        assert_eq!(pids, [10, 11, 12, 13]);
    }

    #[test]
    fn orphans_and_duplicates_are_refused() {
        assert!(tree_order(&[e(10, 1), e(30, 20)])
            .unwrap_err()
            .contains("[30]"));
        assert!(tree_order(&[e(10, 1), e(11, 10), e(11, 10)]).is_err());
        assert!(tree_order(&[]).is_err());
    }
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
