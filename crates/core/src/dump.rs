//! `crest dump`: seize, collect, write, then kill or leave running. Only
//! the order lives here; every step is in the room of its object.

use crate::error::{DumpCtx, DumpError};
use crate::files::{self, FileTable};
use crate::notify::{hook, Notify, Silent};
use crate::ns::other::OtherGraph;
use crate::ns::pid::PidnsGraph;
use crate::ns::user::UsernsGraph;
use crate::opts::{Action, Options};
use crate::pstree::{Seized, Task};
use crate::{coreimg, fs, mm, procfs};
use crest_images::pb::{InventoryEntry, PagemapHead, TaskKobjIdsEntry};
use crest_images::{magic, names, ImageWriter};
use crest_inject::Tracee;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct DumpSummary {
    pub pids: Vec<i32>,
    pub pages_bytes: u64,
    /// What it took (also in `stats-dump` in the work directory).
    pub stats: crate::stats::DumpStats,
}

/// Dumps the tree rooted at `opts.pid` into `opts.dir`. On failure every
/// task is detached and runs on as before.
pub fn dump(opts: &Options) -> Result<DumpSummary, DumpError> {
    dump_notified(opts, &mut Silent)
}

/// [`dump`], telling `n` at CRIU's notification points (pre-dump,
/// network-lock, post-dump, network-unlock); a refused notification fails
/// the dump, the tree released.
pub fn dump_notified(opts: &Options, n: &mut dyn Notify) -> Result<DumpSummary, DumpError> {
    let refused = opts.refusals(Action::Dump);
    if !refused.is_empty() {
        return Err(DumpError::Refused { refused });
    }
    // whom crest acts for, and nothing more than they hold from here on
    let caller = crate::privilege::Caller::detect(opts.unprivileged)
        .and_then(|c| c.confine().map(|()| c))
        .map_err(|source| DumpError::Io {
            pid: opts.pid,
            step: "take the caller's credentials",
            source,
        })?;
    std::fs::create_dir_all(&opts.dir).map_err(|source| DumpError::Dir {
        dir: opts.dir.display().to_string(),
        source,
    })?;
    tell(n, hook::PRE_DUMP, opts.pid)?;
    // cgroup hierarchies crest mounts itself, until the dump ends
    let _yard = crate::ns::cgyard::Guard;
    // a paused container: thawed to be seized, frozen again after
    let _refreeze = match &opts.freeze_cgroup {
        Some(p) => crate::ns::cgroup::thaw(p)?,
        None => None,
    };
    if caller.restricted {
        // the root before it is seized, for a refusal that says why (the
        // kernel refuses the seizing anyway: crest holds no more than the
        // caller); the whole tree once it is frozen
        let users = UsernsGraph::collect(&[opts.pid]).map_err(|e| {
            if Path::new(&format!("/proc/{}", opts.pid)).exists() {
                DumpError::Forbidden {
                    pid: opts.pid,
                    uid: caller.uid,
                    what: format!("its /proc files are closed to the caller ({e})"),
                }
            } else {
                e
            }
        })?;
        caller.check_dump(&[opts.pid], &users)?;
    }
    let start = Instant::now();
    let tree = Seized::seize(
        opts.pid,
        std::time::Duration::from_secs(opts.timeout.max(1).into()),
    )?;
    crest_sys::fault::point("dump: tree seized")?;
    let frozen = Instant::now();
    crate::info!("seized {} task(s) of tree {}", tree.tasks.len(), opts.pid);
    // The network is the caller's to lock when the tree has a net
    // namespace of its own.
    let own_net = crate::ns::other::own_net_ns(opts.pid);
    let res = (if own_net {
        tell(n, hook::NETWORK_LOCK, opts.pid)
    } else {
        Ok(())
    })
    .and_then(|()| collect_and_write(&tree, opts, &caller))
    .and_then(|s| {
        // last: the checksums of every file, which a restore checks
        crest_images::manifest::write(&opts.dir)?;
        crest_sys::fault::point("dump: images written")?;
        Ok(s)
    })
    .and_then(|s| tell(n, hook::POST_DUMP, opts.pid).map(|()| s));
    match res {
        Ok(mut summary) => {
            summary.stats.freezing = frozen - start;
            summary.stats.memdump = frozen.elapsed();
            if opts.leave_running || opts.leave_stopped {
                if opts.leave_stopped {
                    tree.release_stopped();
                } else {
                    tree.release();
                }
                if own_net {
                    tell(n, hook::NETWORK_UNLOCK, opts.pid)?;
                }
            } else {
                tree.kill();
            }
            crate::guard::end();
            summary.stats.frozen = frozen.elapsed();
            summary.stats.pages_scanned = summary.pages_bytes / 4096;
            summary.stats.pages_written = summary.pages_bytes / 4096;
            summary.stats.shpages_written =
                crate::stats::pages_in(&opts.dir).saturating_sub(summary.stats.pages_written);
            summary.stats.write(opts.work_dir()).unwrap_or_else(|e| {
                crate::warn!("stats-dump not written: {e}");
            });
            Ok(summary)
        }
        Err(e) => {
            crate::warn!("dump failed: {e}; releasing the tree");
            tree.release();
            crate::guard::end();
            if own_net {
                let _ = tell(n, hook::NETWORK_UNLOCK, opts.pid);
            }
            Err(e)
        }
    }
}

/// Tells `n` that `h` is reached (with the tree's root for the hooks'
/// environment).
fn tell(n: &mut dyn Notify, h: &str, root: i32) -> Result<(), DumpError> {
    n.notify(h, Some(root), None)
        .map_err(|why| DumpError::Notify {
            hook: h.to_string(),
            why,
        })
}

fn collect_and_write(
    tree: &Seized,
    opts: &Options,
    caller: &crate::privilege::Caller,
) -> Result<DumpSummary, DumpError> {
    let root = &tree.tasks[0];
    if root.sid != root.pid && !opts.shell_job {
        // A job of a shell, or a container whose init was started without
        // setsid: handled as --shell-job would (restore puts it in the
        // session of the crest that restores it). Terminals it uses from
        // that session still need --shell-job (see files/tty.rs).
        crate::info!(
            "root {} is in session {} it does not lead: restored into the restorer's session, as with --shell-job",
            root.pid,
            root.sid
        );
    }
    let live: Vec<i32> = tree
        .tasks
        .iter()
        .filter(|t| t.zombie.is_none())
        .map(|t| t.pid)
        .collect();
    let mut users = UsernsGraph::collect(&live)?;
    caller.check_dump(&live, &users)?;
    let mut zombie_userns = std::collections::HashMap::new();
    for t in tree.tasks.iter().filter(|t| t.zombie.is_some()) {
        zombie_userns.insert(t.pid, users.add_zombie(t.pid)?);
    }
    let mnt_opts = crate::ns::mnt::MntOpts::of_dump(
        &opts.external,
        opts.auto_ext_mnt,
        &opts.skip_mnt,
        &opts.enable_fs,
    );
    let mut others = OtherGraph::collect_with(
        &live,
        &users,
        (Some(&opts.external), mnt_opts),
        opts.empty_ns,
    )?;
    let pids = PidnsGraph::collect(&live, &users, others.list.len() as u32 + 1, &opts.external)?;
    others.resolve_proc_pidns(&pids)?;
    pids.check_inits(&users, opts.pid, |pid| {
        procfs::read_status(pid)
            .ok()
            .and_then(|s| s.ns_pid.last().copied())
    })?;
    users.write(&opts.dir)?;
    others.write(&opts.dir, pids.entries())?;
    let members = others.cgroup_members()?;
    let root_cg = crate::ns::cgroup::lines_of(opts.pid)?;
    // the tasks not where the root is (a cgroup namespace's own aside)
    let mut placed = Vec::new();
    if opts.manage_cgroups != crate::opts::CgMode::Ignore {
        for &pid in live.iter().filter(|p| !members.iter().any(|m| m.0 == **p)) {
            let theirs = crate::ns::cgroup::lines_of(pid)?;
            crate::ns::cgroup::check_threads(pid, &theirs)?;
            if theirs != root_cg {
                placed.push((pid, theirs));
            }
        }
    }
    crate::ns::cgroup::write_members(&opts.dir, (opts.pid, &root_cg), &members, &placed)?;
    if opts.manage_cgroups != crate::opts::CgMode::Ignore {
        // the settings of the tree's cgroups and those below them
        let list = crate::ns::cgprops::PropList::with(
            opts.cgroup_props.as_deref(),
            opts.cgroup_props_file.as_deref(),
        )
        .map_err(|r| DumpError::Refused { refused: vec![r] })?;
        let mut hier = crate::ns::cgroup::hierarchies(opts.pid, &root_cg)?;
        for (pid, lines) in &placed {
            hier.extend(crate::ns::cgroup::hierarchies(*pid, lines)?);
        }
        let entry =
            crate::ns::cgprops::dump(opts.pid, &hier, &list, &opts.cgroup_dump_controllers)?;
        crate::ns::cgprops::write(&opts.dir, &entry)?;
    }
    let mut files = FileTable::default();
    files.tree = live.iter().copied().collect();
    files.ghosts.limit = opts.ghost_limit;
    (files.shell_job, files.tcp_established) = (opts.shell_job, opts.tcp_established);
    files.tcp_close = opts.tcp_close;
    files.tcp_skip_in_flight = opts.tcp_skip_in_flight;
    files.file_locks = opts.file_locks;
    files.orphan_pts_master = opts.orphan_pts_master;
    files.external_ttys = opts
        .external
        .iter()
        .filter(|e| e.starts_with("tty["))
        .cloned()
        .collect();
    files.ext_unix_sk = opts.ext_unix_sk;
    files.ext_unix_sk_ids = opts.ext_unix_sk_ids.clone();
    let user = libc::CLONE_NEWUSER as u32;
    let pid_ty = libc::CLONE_NEWPID as u32;
    files.tree_ns = (users.ns_inos().into_iter().map(|(i, id)| (i, (user, id))))
        .chain(
            others
                .ns_inos()
                .into_iter()
                .map(|(i, id, ty)| (i, (ty, id))),
        )
        .chain(pids.ns_inos().into_iter().map(|(i, id)| (i, (pid_ty, id))))
        .collect();
    let mut summary = DumpSummary::default();
    let mut filters = crate::seccomp::Table::default();
    let mut all_ids: Vec<(i32, TaskKobjIdsEntry)> = Vec::with_capacity(tree.tasks.len());
    for (i, task) in tree.tasks.iter().enumerate() {
        let id = i as u32 + 1;
        let parent_ids = all_ids.iter().find(|(p, _)| *p == task.ppid).map(|x| x.1);
        let ids = match task.zombie {
            Some(status) => {
                let core = coreimg::zombie(task.pid, status);
                write_core(&opts.dir, task.pid, core, coreimg::zombie_extra(task.pid))?;
                TaskKobjIdsEntry {
                    vm_id: id,
                    files_id: id,
                    fs_id: id,
                    sighand_id: id,
                    // A zombie has no namespaces left to read but its user
                    // namespace (its credentials' own); it died in its
                    // parent's pid namespace.
                    pid_ns_id: parent_ids.and_then(|p| p.pid_ns_id),
                    user_ns_id: zombie_userns.get(&task.pid).copied(),
                    ..TaskKobjIdsEntry::default()
                }
            }
            None => {
                let mut ids = shared_ids(task, id, parent_ids)?;
                ids.user_ns_id = users.ns_of(task.pid);
                ids.uts_ns_id = others.ns_of(task.pid, libc::CLONE_NEWUTS as u32);
                ids.ipc_ns_id = others.ns_of(task.pid, libc::CLONE_NEWIPC as u32);
                ids.net_ns_id = others.ns_of(task.pid, libc::CLONE_NEWNET as u32);
                ids.mnt_ns_id = others.ns_of(task.pid, libc::CLONE_NEWNS as u32);
                ids.time_ns_id = others.ns_of(task.pid, libc::CLONE_NEWTIME as u32);
                ids.cgroup_ns_id = others.ns_of(task.pid, libc::CLONE_NEWCGROUP as u32);
                ids.pid_ns_id = pids.ns_of(task.pid);
                let fc = for_children(task.pid, &others, &pids);
                dump_task(
                    task,
                    &ids,
                    &users,
                    fc,
                    &opts.dir,
                    (&mut files, &mut filters),
                    &mut summary,
                )?;
                crest_sys::fault::point("dump: task dumped")?;
                ids
            }
        };
        crest_images::write_image(&opts.dir, &names::ids(task.pid as u32), magic::IDS, &[ids])?;
        all_ids.push((task.pid, ids));
        summary.pids.push(task.pid);
    }
    filters.write(&opts.dir)?;
    let pstree: Vec<_> = tree.tasks.iter().map(Task::entry).collect();
    crest_images::write_image(&opts.dir, names::PSTREE, magic::PSTREE, &pstree)?;
    // (files passed in queued messages first: a pipe end among them is
    // the tree's)
    files.dump_in_flight()?;
    files.mark_outside_pipes();
    // (finish adds the entries of sockets outside the tree)
    files.finish(&opts.dir)?;
    crest_images::write_image(&opts.dir, names::FILES, magic::FILES, files.entries())?;
    files::write_images(&opts.dir, &files)?;
    let inventory = InventoryEntry {
        img_version: crest_images::INVENTORY_IMG_VERSION,
        fdinfo_per_id: Some(true),
        root_ids: all_ids.first().map(|x| x.1),
        ns_per_id: Some(true),
        lsmtype: Some(0),
        dump_uptime: Some(uptime_ticks()),
        // (CRIU's mark: such images are restored with --tcp-close only)
        tcp_close: opts.tcp_close.then_some(true),
        ..InventoryEntry::default()
    };
    crest_images::write_image(&opts.dir, names::INVENTORY, magic::INVENTORY, &[inventory])?;
    // Established connections stay in repair mode only for a tree that dies.
    files.inet.keep_repair = !opts.leave_running;
    Ok(summary)
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
        return Err(DumpError::Unsupported {
            pid: task.pid,
            what: format!(
                "a process sharing its memory with its parent {} (CLONE_VM)",
                task.ppid
            ),
        });
    }
    if same(crest_sys::misc::KCMP_FILES).at(task.pid, "kcmp files")? {
        ids.files_id = p.files_id;
    }
    if same(crest_sys::misc::KCMP_FS).at(task.pid, "kcmp fs")? {
        ids.fs_id = p.fs_id;
    }
    Ok(ids)
}

/// Dumps one live task and its threads into their images.
#[allow(clippy::too_many_arguments)]
fn dump_task(
    task: &Task,
    ids: &TaskKobjIdsEntry,
    users: &UsernsGraph,
    for_children: (Option<u32>, Option<u32>),
    dir: &Path,
    (files, filters): (&mut FileTable, &mut crate::seccomp::Table),
    summary: &mut DumpSummary,
) -> Result<(), DumpError> {
    let pid = task.pid;
    let id = ids.vm_id;
    let status = procfs::read_status(pid).at(pid, "read status")?;
    // (suspended from here on: crest's injected syscalls meet no filter)
    let sandbox = crate::seccomp::collect(pid, &task.threads)?;
    let sandbox_of = |tid: i32| {
        task.threads
            .iter()
            .position(|t| *t == tid)
            .and_then(|i| sandbox.get(i))
            .cloned()
            .unwrap_or_default()
    };
    let mut t = Tracee::from_seized(pid, pid).at(pid, "prepare injection")?;
    let ip = t.use_any_syscall().at(pid, "find a syscall instruction")?;
    // from here on, a crest that vanishes leaves the task as it was seized
    // (the area itself is the dump's guard's to take away)
    let rec = t
        .arm(task.threads.len(), &mut |addr, len| {
            crate::guard::watch_area(pid, addr, len)
        })
        .at(pid, "map the recovery area")?;

    let mut pages = crest_images::create_raw(dir, &names::pages(id))?;
    let mm = mm::dump(&mut t, files, &mut pages)?;
    pages.finish()?;
    let mut tc = coreimg::dump_task(&mut t)?;
    if let Some(sig) = task.stopped {
        // comes back stopped by the same signal
        tc.task_state = coreimg::TASK_STOPPED;
        tc.stop_signo = Some(sig as u32);
    }
    if ids.files_id == id {
        let fdinfo = files::dump_fds(pid, files)?;
        crest_images::write_image(dir, &names::fdinfo(id), magic::FDINFO, &fdinfo)?;
    }
    let fs = fs::dump(pid, status.umask.unwrap_or(0o022), files)?;
    let ns = ids.user_ns_id.unwrap_or(1);
    let (mut core, mut extra) = coreimg::dump_thread(&mut t, users, ns)?;
    crate::seccomp::set_core(&mut core, &sandbox_of(pid), filters);
    (extra.pid_for_children, extra.time_for_children) = for_children;
    core.tc = Some(tc);

    // The other threads use the leader's recovery area, so they are put
    // back before it is.
    let others = task.threads.iter().filter(|t| **t != pid);
    for (slot, &tid) in (1..).zip(others) {
        let mut th = Tracee::from_seized(pid, tid).at(pid, "prepare injection into a thread")?;
        th.set_syscall_ip(ip);
        th.join(&rec, slot).at(pid, "arm a thread")?;
        let (mut core, extra) = coreimg::dump_thread(&mut th, users, ns)?;
        crate::seccomp::set_core(&mut core, &sandbox_of(tid), filters);
        th.put_back().at(pid, "put the thread back")?;
        th.leak();
        write_core(dir, tid, core, extra)?;
    }
    t.put_back().at(pid, "put the task back")?;
    t.leak();
    write_core(dir, pid, core, extra)?;

    let upid = pid as u32;
    crest_images::write_image(dir, &names::mm(upid), magic::MM, &[mm.entry])?;
    let mut pm = ImageWriter::create(dir, &names::pagemap(upid), magic::PAGEMAP)?;
    pm.write_entry(&PagemapHead { pages_id: id })?;
    for e in &mm.pagemap {
        pm.write_entry(e)?;
    }
    pm.finish()?;
    crest_images::write_image(dir, &names::fs(upid), magic::FS, &[fs])?;
    summary.pages_bytes += mm.pages_bytes;
    crate::info!(
        "dumped pid {pid} ({} threads): {} bytes of pages",
        task.threads.len(),
        mm.pages_bytes
    );
    Ok(())
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
fn write_core(
    dir: &Path,
    tid: i32,
    mut core: crest_images::pb::CoreEntry,
    extra: crest_images::pb::crest::CrestThreadExtra,
) -> Result<(), DumpError> {
    core.crest_thread = Some(extra);
    crest_images::write_image(dir, &names::core(tid as u32), magic::CORE, &[core])?;
    Ok(())
}

fn uptime_ticks() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * 1_000_000.0) as u64)
}
