//! One task of a dump: its ids (what it shares with its parent, its
//! namespaces), its memory, core, files and fs, and its threads' cores,
//! each into its image.

use super::namespaces::Namespaces;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError};
use crate::files::table::FileTable;
use crate::files::{self};
use crate::ns::other::OtherGraph;
use crate::ns::pid::PidnsGraph;
use crate::ns::user::UsernsGraph;
use crate::pstree::{Task, TreeError};
use crate::stats::DumpSummary;
use crate::task::coreimg;
use crate::{fs, mm, procfs};
use crest_images::pb::TaskKobjIdsEntry;
use crest_images::{magic, names};
use crest_inject::Tracee;
use std::path::Path;

/// What every task's dump shares.
pub(super) struct Shared<'a> {
    pub(super) dir: &'a Path,
    pub(super) ns: &'a Namespaces,
    pub(super) files: &'a mut FileTable,
    pub(super) filters: &'a mut crate::task::seccomp::Table,
    pub(super) summary: &'a mut DumpSummary,
    pub(super) track: &'a mut mm::track::TreeTracking,
    pub(super) sink: &'a mut mm::dump::PageSink,
}

/// Dumps `task` (the `index`-th of the tree; `parent_ids` its parent's
/// ids when the parent came before) and returns its ids.
pub(super) fn dump(
    task: &Task,
    index: usize,
    parent_ids: Option<TaskKobjIdsEntry>,
    sh: &mut Shared<'_>,
) -> Result<TaskKobjIdsEntry, DumpError> {
    let id = index as u32 + 1;
    let ns = sh.ns;
    let ids = match task.zombie {
        Some(status) => {
            let core = coreimg::zombie(task.pid, status);
            write_core(sh.dir, task.pid, core, coreimg::zombie_extra(task.pid))?;
            TaskKobjIdsEntry {
                vm_id: id,
                files_id: id,
                fs_id: id,
                sighand_id: id,
                // A zombie has no namespaces left to read but its user
                // namespace (its credentials' own); it died in its
                // parent's pid namespace.
                pid_ns_id: parent_ids.and_then(|p| p.pid_ns_id),
                user_ns_id: ns.zombie_userns.get(&task.pid).copied(),
                ..TaskKobjIdsEntry::default()
            }
        }
        None => {
            let mut ids = shared_ids(task, id, parent_ids)?;
            let other = |kind: i32| ns.others.ns_of(task.pid, kind as u32);
            ids.user_ns_id = ns.users.ns_of(task.pid);
            ids.uts_ns_id = other(libc::CLONE_NEWUTS);
            ids.ipc_ns_id = other(libc::CLONE_NEWIPC);
            ids.net_ns_id = other(libc::CLONE_NEWNET);
            ids.mnt_ns_id = other(libc::CLONE_NEWNS);
            ids.time_ns_id = other(libc::CLONE_NEWTIME);
            ids.cgroup_ns_id = other(libc::CLONE_NEWCGROUP);
            ids.pid_ns_id = ns.pids.ns_of(task.pid);
            let fc = for_children(task.pid, &ns.others, &ns.pids);
            dump_task(
                task,
                &ids,
                &ns.users,
                fc,
                sh.dir,
                (sh.files, sh.filters, sh.track, sh.sink),
                sh.summary,
            )?;
            crest_sys::fault::point("dump: task dumped")?;
            ids
        }
    };
    crest_images::write_image(sh.dir, &names::ids(task.pid as u32), magic::IDS, &[ids])?;
    Ok(ids)
}

/// The ids of a task's fd table and fs info: the parent's when the two
/// share them (`CLONE_FILES`, `CLONE_FS`, found with `kcmp`), else its own.
fn shared_ids(
    task: &Task,
    id: u32,
    parent: Option<TaskKobjIdsEntry>,
) -> Result<TaskKobjIdsEntry, DumpError> {
    let mut ids = TaskKobjIdsEntry {
        vm_id: id,
        files_id: id,
        fs_id: id,
        sighand_id: id,
        ..TaskKobjIdsEntry::default()
    };
    let Some(p) = parent else { return Ok(ids) };
    let same = |kind| crest_sys::misc::kcmp(task.pid, task.ppid, kind).map(|r| r == 0);
    if same(crest_sys::misc::KCMP_VM).at(task.pid, "kcmp vm")? {
        return Err(TreeError::Unsupported {
            what: format!(
                "a process sharing its memory with its parent {} (CLONE_VM)",
                task.ppid
            ),
        }
        .in_dump(task.pid));
    }
    if same(crest_sys::misc::KCMP_FILES).at(task.pid, "kcmp files")? {
        ids.files_id = p.files_id;
    }
    if same(crest_sys::misc::KCMP_FS).at(task.pid, "kcmp fs")? {
        ids.fs_id = p.fs_id;
    }
    Ok(ids)
}

/// The tables every task's dump adds to: files, seccomp filters, memory
/// tracking.
type Tables<'a> = (
    &'a mut FileTable,
    &'a mut crate::task::seccomp::Table,
    &'a mut mm::track::TreeTracking,
    &'a mut mm::dump::PageSink,
);

/// Dumps one live task and its threads into their images.
#[allow(clippy::too_many_arguments)]
fn dump_task(
    task: &Task,
    ids: &TaskKobjIdsEntry,
    users: &UsernsGraph,
    for_children: (Option<u32>, Option<u32>),
    dir: &Path,
    (files, filters, track, sink): Tables<'_>,
    summary: &mut DumpSummary,
) -> Result<(), DumpError> {
    let pid = task.pid;
    let id = ids.vm_id;
    let status = procfs::read_status(pid).at(pid, "read status")?;
    // (suspended from here on: crest's injected syscalls meet no filter)
    let sandbox = crate::task::seccomp::collect(pid, &task.threads)?;
    let sandbox_of = |tid: i32| {
        task.threads
            .iter()
            .position(|t| *t == tid)
            .and_then(|i| sandbox.get(i))
            .cloned()
            .unwrap_or_default()
    };
    note_restarts(task, track);
    let mut t = Tracee::from_seized(pid, pid).at(pid, "prepare injection")?;
    let ip = t.use_any_syscall().at(pid, "find a syscall instruction")?;
    // from here on, a crest that vanishes leaves the task as it was seized
    // (the area itself is the dump's guard's to take away)
    let rec = t
        .arm(task.threads.len(), &mut |addr, len, parked| {
            crate::guard::watch_area(pid, addr, len, parked)
        })
        .at(pid, "map the recovery area")?;

    let mm = mm::dump::dump_with_pages(&mut t, (dir, id), Some(&mut *files), track, sink)?;
    let mut tc = coreimg::dump_task(&mut t)?;
    if let Some(sig) = task.stopped {
        // comes back stopped by the same signal
        tc.task_state = coreimg::TASK_STOPPED;
        tc.stop_signo = Some(sig as u32);
    }
    if ids.files_id == id {
        let fdinfo = files::dump::dump_fds(pid, files)?;
        crest_images::write_image(dir, &names::fdinfo(id), magic::FDINFO, &fdinfo)?;
    }
    let fs = fs::dump(pid, status.umask.unwrap_or(0o022), files)?;
    let ns = ids.user_ns_id.unwrap_or(1);
    let (mut core, mut extra) = thread_core(&mut t, users, ns, track)?;
    crate::task::seccomp::set_core(&mut core, &sandbox_of(pid), filters);
    (extra.pid_for_children, extra.time_for_children) = for_children;
    core.tc = Some(tc);

    // The other threads use the leader's recovery area, so they are put
    // back before it is.
    let others = task.threads.iter().filter(|t| **t != pid);
    for (slot, &tid) in (1..).zip(others) {
        let mut th = Tracee::from_seized(pid, tid).at(pid, "prepare injection into a thread")?;
        th.set_syscall_ip(ip);
        th.join(&rec, slot).at(pid, "arm a thread")?;
        let (mut core, extra) = thread_core(&mut th, users, ns, track)?;
        crate::task::seccomp::set_core(&mut core, &sandbox_of(tid), filters);
        th.put_back().at(pid, "put the thread back")?;
        th.leak();
        write_core(dir, tid, core, extra)?;
    }
    t.put_back().at(pid, "put the task back")?;
    t.leak();
    write_core(dir, pid, core, extra)?;

    let upid = pid as u32;
    let pagemap = sink.local().then_some(&mm.pagemap[..]);
    mm::image::write(dir, upid, id, &mm.entry, pagemap)?;
    crest_images::write_image(dir, &names::fs(upid), magic::FS, &[fs])?;
    summary.pages_bytes += mm.pages_bytes;
    crate::info!(
        "dumped pid {pid} ({} threads): {} bytes of pages",
        task.threads.len(),
        mm.pages_bytes
    );
    Ok(())
}

/// A thread's core; dumped in `restart_syscall` where an earlier round of
/// the tracking left it, its core names the call it restarts.
fn thread_core(
    t: &mut Tracee,
    users: &UsernsGraph,
    ns: u32,
    track: &mm::track::TreeTracking,
) -> Result<
    (
        crest_images::pb::CoreEntry,
        crest_images::pb::crest::CrestThreadExtra,
    ),
    DumpError,
> {
    let (mut core, extra) = coreimg::dump_thread(t, users, ns)?;
    let call = track.original_call((t.pid(), t.tid()), t.orig_regs());
    if let (Some(nr), Some(ti)) = (call, core.thread_info.as_mut()) {
        ti.gpregs.orig_ax = nr;
    }
    Ok((core, extra))
}

/// The task's threads (as seized) that this round leaves in a call
/// restarted through `restart_syscall`, noted for the next round.
pub(super) fn note_restarts(task: &Task, track: &mut mm::track::TreeTracking) {
    let seized: Vec<_> = task
        .threads
        .iter()
        .filter_map(|&tid| crest_sys::ptrace::get_regs(tid).ok().map(|r| (tid, r)))
        .collect();
    track.note_restarts(task.pid, &seized);
}

/// The pid and time namespaces `pid`'s next children go to, where they
/// differ from its own (it unshared them without forking yet).
fn for_children(pid: i32, others: &OtherGraph, pids: &PidnsGraph) -> (Option<u32>, Option<u32>) {
    let ino = |f: &str| crate::ns::user::ino_of(&format!("/proc/{pid}/ns/{f}")).ok();
    let differs = |own: &str, kids: &str| {
        let k = ino(kids);
        (k.is_some() && k != ino(own)).then_some(k).flatten()
    };
    (
        differs("pid", "pid_for_children").and_then(|i| pids.by_ino(i)),
        differs("time", "time_for_children").and_then(|i| others.by_ino(i)),
    )
}

/// Writes `core-<tid>.img`, crest's extras in `core_entry.crest_thread`.
pub(super) fn write_core(
    dir: &Path,
    tid: i32,
    mut core: crest_images::pb::CoreEntry,
    extra: crest_images::pb::crest::CrestThreadExtra,
) -> Result<(), DumpError> {
    core.crest_thread = Some(extra);
    crest_images::write_image(dir, &names::core(tid as u32), magic::CORE, &[core])?;
    Ok(())
}
