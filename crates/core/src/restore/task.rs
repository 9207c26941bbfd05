//! Turning a stopped fork of crest into the dumped task: its namespaces,
//! memory, files, task-wide state, threads and credentials.

use super::images::{to_array, TaskImage};
use super::plan::RestoreTask;
use crate::error::{RestoreCtx, RestoreError};
use crate::files::context::RestoreFiles;
use crate::files::restore::restore_fds;
use crate::ns::user::{to_outer_view, UsernsGraph};
use crate::remote::Remote;
use crate::task::{coreimg, creds, signals};
use crate::{mm, ns, task};
use crest_images::names;
use crest_images::pb::crest::CrestThreadExtra;
use crest_images::pb::CoreEntry;
use crest_inject::Tracee;

/// What the transforms of a tree's tasks share.
pub(super) struct TreeCtx<'a> {
    pub(super) users: &'a UsernsGraph,
    pub(super) userns: &'a ns::user::UsernsHelpers,
    pub(super) made_time: std::collections::HashSet<u32>,
    pub(super) others: &'a ns::other::OtherGraph,
    pub(super) others_h: &'a ns::other::NsHelpers,
    pub(super) files: &'a mut RestoreFiles,
    pub(super) shared: mm::restore::SharedAnon,
    /// Threads made so far, ready to be let go before their leaders.
    pub(super) threads: Vec<Tracee>,
    pub(super) writers: &'a mut ns::pid::Writers,
    /// crest has no rights over the namespaces nested user namespaces own
    /// from its own (unprivileged): a task enters its user namespace
    /// first, and the rest from there.
    pub(super) userns_first: bool,
    /// The tree's seccomp filters (`seccomp.img`).
    pub(super) seccomp: Vec<crest_images::pb::SeccompFilter>,
    /// The CPU mask crest had before it pinned itself (and so the tasks it
    /// forks) to one CPU for the restore ([`super::Pin`]): a thread with
    /// no mask of its own in the images gets it back when crest is done
    /// with it, as if it had inherited it.
    pub(super) inherited_mask: Option<Vec<u8>>,
    /// `--lazy-pages`: the daemon each task's lazy mappings go to.
    pub(super) lazy: Option<mm::lazy::link::Link>,
}

/// Gives thread `tid` (of image `pid`) the mask it would have inherited
/// from crest, unless its image has one of its own (set already).
fn unpin(
    ctx: &TreeCtx<'_>,
    pid: i32,
    tid: i32,
    extra: Option<&CrestThreadExtra>,
) -> Result<(), RestoreError> {
    let (Some(mask), None) = (
        &ctx.inherited_mask,
        extra.and_then(|e| e.cpu_affinity.as_ref()),
    ) else {
        return Ok(());
    };
    // (none of crest's CPUs in the task's cpuset: every CPU, which the
    // kernel narrows to the cpuset's, as moving it into its cgroup did
    // before crest pinned it)
    crest_sys::misc::set_affinity(tid, mask)
        .or_else(|_| crest_sys::misc::set_affinity(tid, &[0xff; 128]))
        .rat(pid, format!("thread {tid}: give back crest's CPU mask"))
}

/// Turns a stopped fork of crest into the dumped task, and makes its
/// threads (pushed to `ctx.threads`, ready to be let go).
pub(super) fn transform(
    task: &mut RestoreTask<'_>,
    ctx: &mut TreeCtx<'_>,
) -> Result<(), RestoreError> {
    let img = task.img;
    let pid = img.pid();
    let (shares_files, shares_fs) = (task.shares_files, task.shares_fs);
    let (cur_userns, tl) = (task.userns_now, task.thread_levels);
    let (held, pid_for_children) = (&task.held[..], task.later_pid_for_children);
    let t = task
        .tracee
        .as_mut()
        .ok_or_else(|| img.bad("a zombie has nothing to transform"))?;
    let live = img.live_image()?;
    let core = &img.cores[0].1;
    let tc = img.task_core()?;
    task::unregister_inherited_rseq(t)?;
    // Its own namespaces (but the user one), its memory, what is the
    // whole task's.
    let ns = img.ids.user_ns_id.unwrap_or(1);
    let cur_userns = enter_namespaces(t, img, ctx, cur_userns)?;
    let work = restore_memory(t, img, ctx, shares_files, held)?;
    restore_task_wide(t, img, &mut *ctx.files, shares_fs)?;

    settle_memory(t, &live.mm, &work)?;

    // The leader's state, then its credentials around the move into its
    // user namespace (which needs a single thread), then the threads.
    // Forked inside a nested user namespace already: the task moves on
    // (down) to its own first, then sets its ids as it sees them.
    let early = cur_userns != 1;
    let helper = if ns == cur_userns {
        None
    } else {
        ctx.userns.pid_of(ns)
    };
    if early {
        if let Some(h) = helper {
            ns::user::enter(t, h)?;
        }
    }
    let helper = if early { None } else { helper };
    restore_thread(t, img, 0, tc.personality)?;
    let step = UserStep {
        users: ctx.users,
        helper,
        early,
    };
    let leader_ids = set_ids(t, img, core, img.cores[0].2.as_ref(), &step, None)?;
    crate::files::lock::restore_leases(t, pid, &ctx.files.locks)?;
    make_late_rings(t, (&live.fdinfo, &live.mm), ctx.files)?;
    make_threads(t, img, ctx, (tl, &work), early, leader_ids.as_ref())?;
    finish_task(t, img, ctx, pid_for_children)?;
    unpin(
        ctx,
        pid,
        t.tid(),
        img.cores.first().and_then(|c| c.2.as_ref()),
    )
}

/// Most bytes crest takes from an image for one mapping of an io_uring.
const MAX_RING_MAP: u64 = 64 << 20;

fn img_bad_ring(pid: i32, v: &crest_images::pb::VmaEntry) -> RestoreError {
    use crate::error::RoomError;
    crate::mm::error::MmError::BadImage {
        file: names::mm(pid as u32),
        what: format!("an io_uring mapping {:#x}-{:#x}", v.start, v.end),
    }
    .in_restore(pid)
}

/// The io_uring instances with an SQ thread, made now that the task has
/// its credentials (the SQ thread submits with the ring's): each replaces
/// its placeholder fd, and its mappings replace the memory that held
/// their pages until now, with those pages.
fn make_late_rings(
    t: &mut Tracee,
    (fdinfo, mm): (&[crest_images::pb::FdinfoEntry], &crest_images::pb::MmEntry),
    files: &mut RestoreFiles,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    for (fi, e) in crate::files::uring::late_rings(t, fdinfo, files) {
        let mut saved = Vec::new();
        for v in mm.vmas.iter().filter(|v| v.crest_map_fd == Some(fi.fd)) {
            // (an io_uring's regions are a few MiB at most)
            if v.end <= v.start || v.end - v.start > MAX_RING_MAP {
                return Err(img_bad_ring(pid, v));
            }
            let mut bytes = vec![0u8; (v.end - v.start) as usize];
            t.read_mem(v.start, &mut bytes)
                .rat(pid, "read an io_uring's pages")?;
            saved.push((v, bytes));
        }
        let (made, array) = crate::files::uring::create(t, &e)?;
        crate::files::restore::place_fd(t, made, &fi)?;
        t.close(made)?;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        for (v, bytes) in saved {
            mm::restore::map_ring(t, v, rw, fi.fd)?;
            t.write_mem(v.start, &bytes)
                .rat(pid, "write an io_uring's pages")?;
            if u64::from(v.prot) != rw {
                t.syscall(
                    crest_inject::nr::MPROTECT,
                    &[v.start, v.end - v.start, u64::from(v.prot)],
                )
                .rat(pid, format!("mprotect {:#x}-{:#x}", v.start, v.end))?;
            }
        }
        crate::files::uring::finish_late(t, fi.fd, &e, (mm, array))?;
    }
    Ok(())
}

/// The last steps on the task's memory: the vdso placed (from here on
/// injection goes through it, and the work area can go when the leader
/// is let go), memory-deny-write-execute set.
fn settle_memory(
    t: &mut Tracee,
    mm: &crest_images::pb::MmEntry,
    work: &mm::restore::WorkArea,
) -> Result<(), RestoreError> {
    // The vdso last among mappings; injection goes on through the work
    // area's gadget (its last call, which unmaps it when the leader is let
    // go, stops at its exit).
    mm::restore::place_vdso(t, mm)?;
    // memory-deny-write-execute last among memory settings: it forbids
    // what the restore did to the mappings
    if let Some(flags) = mm.crest_mdwe {
        t.prctl(
            &[mm::PR_SET_MDWE, u64::from(flags), 0, 0, 0],
            &format!("prctl(PR_SET_MDWE, {flags:#x})"),
        )?;
    }
    // (all of the work area but the gadget's page, which goes with it)
    t.adopt_scratch(work.addr + mm::PAGE, (work.len - mm::PAGE) as usize);
    Ok(())
}

/// What is set once every thread of the task exists: POSIX timers,
/// `pid_for_children`, seccomp, capabilities, dumpable, pending signals.
fn finish_task(
    t: &mut Tracee,
    img: &TaskImage,
    ctx: &TreeCtx<'_>,
    pid_for_children: Option<i32>,
) -> Result<(), RestoreError> {
    let pid = img.pid();
    let live = img.live_image()?;
    let core = &img.cores[0].1;
    let tc = img.task_core()?;
    // POSIX timers once every thread they may signal exists.
    if let Some(tm) = tc.timers.as_ref() {
        crate::task::timers::restore(t, &tm.posix)?;
    }
    if let Some(init) = pid_for_children {
        // (from its own user namespace, its threads made: see
        // fork::set_pid_for_children)
        let path = format!("/proc/{init}/ns/pid");
        let fd = t.open_crest_side(&path, libc::O_RDONLY)?;
        t.with_fd(fd, |t, fd| {
            t.setns(fd, libc::CLONE_NEWPID as u64, "setns of pid_for_children")
        })?;
    }
    // seccomp once its threads are made (they would inherit it) and
    // while it holds its capabilities (a filter without no_new_privs
    // needs CAP_SYS_ADMIN); suspended for what is injected after
    if let Some(thc) = core.thread_core.as_ref() {
        crate::task::seccomp::restore(t, thc, &ctx.seccomp)?;
    }
    set_caps(t, img, core)?;
    if let Some(d) = live.mm.dumpable {
        // Changing credentials may have cleared it.
        t.prctl(
            &[libc::PR_SET_DUMPABLE as u64, d.clamp(0, 1) as u64],
            "prctl(PR_SET_DUMPABLE)",
        )?;
    }
    let inner_pid = img.inner_tid(0).unwrap_or(pid);
    signals::restore_pending(t, (inner_pid, inner_pid), tc.signals_s.as_ref(), true)?;
    Ok(())
}

/// Moves the task into its own namespaces but the user one, so files are
/// reopened in its mount namespace and the vdso is placed in its time
/// namespace (an unprivileged crest may enter them only from the user
/// namespace that owns them: the task moves there before). Returns the
/// user namespace it is in now.
fn enter_namespaces(
    t: &mut Tracee,
    img: &TaskImage,
    ctx: &mut TreeCtx<'_>,
    cur_userns: u32,
) -> Result<u32, RestoreError> {
    let pid = img.pid();
    let ns = img.ids.user_ns_id.unwrap_or(1);
    let first = ctx.userns_first && cur_userns == 1 && ns != 1;
    if first {
        let h = ctx
            .userns
            .pid_of(ns)
            .ok_or_else(|| img.bad("no user namespace helper"))?;
        ns::user::enter(t, h)?;
    }
    let cur_userns = if first { ns } else { cur_userns };
    ctx.others_h
        .enter_all_as(t, ctx.others, pid, &ctx.made_time)?;

    // (its namespaces, but the user one, hold namespace files from now on;
    // a task in one is surer than its helper: a time namespace a parent
    // made for its children is not the helper's)
    for (ty, id) in [
        (libc::CLONE_NEWUTS, img.ids.uts_ns_id),
        (libc::CLONE_NEWIPC, img.ids.ipc_ns_id),
        (libc::CLONE_NEWNET, img.ids.net_ns_id),
        (libc::CLONE_NEWNS, img.ids.mnt_ns_id),
        (libc::CLONE_NEWTIME, img.ids.time_ns_id),
        (libc::CLONE_NEWCGROUP, img.ids.cgroup_ns_id),
        (libc::CLONE_NEWPID, img.ids.pid_ns_id),
    ] {
        if let Some(id) = id {
            ctx.files
                .ns_holders
                .insert((ty as u32, id), (t.pid(), false));
        }
    }
    Ok(cur_userns)
}

/// Its fds (unless it shares its parent's table) and its memory: every
/// mapping at its address, its pages, AIO rings, NUMA policies,
/// protections and mm fields. Returns the work area injection goes
/// through until the vdso is placed.
fn restore_memory(
    t: &mut Tracee,
    img: &TaskImage,
    ctx: &mut TreeCtx<'_>,
    shares_files: bool,
    held: &[mm::cow::Held],
) -> Result<mm::restore::WorkArea, RestoreError> {
    let pid = img.pid();
    let files = &mut *ctx.files;
    let live = img.live_image()?;
    let work = mm::restore::map_work_area(t, &live.mm)?;
    if !shares_files {
        restore_fds(t, img.ids.files_id, &live.fdinfo, files)?;
    }
    let pages = &live.pages;
    let mem = (&live.mm, &live.pagemap[..]);
    // (areas held since the fork to share pages with the parent or the
    // children move to their place)
    let kept = mm::cow::kept(held, &live.mm);
    let now: Vec<(u64, u64)> = kept
        .iter()
        .map(|h| (h.at, h.at + h.end - h.start))
        .collect();
    mm::restore::unmap_inherited(t, &work, &now)?;
    mm::cow::place(t, (mem.0, mem.1, pages), &kept)?;
    let placed: Vec<(u64, u64)> = kept.iter().map(|h| (h.start, h.end)).collect();
    mm::restore::map_vmas(t, mem, &placed, files, &mut ctx.shared)?;
    // (--lazy-pages: the lazy mappings registered and handed to the
    // daemon, filled by it from now on, not here)
    let mut skip = placed;
    if let Some(link) = ctx.lazy.as_mut() {
        let ranges = mm::lazy::lazy_ranges(&live.mm, &skip);
        skip.extend(link.hand(t, img.entry.pid, &ranges, &pages.runs)?);
    }
    let started = std::time::Instant::now();
    mm::restore::fill_pages(t, mem, &skip, pages)?;
    crate::debug!(
        "pid {pid}: pages filled in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    mm::restore::restore_aios(t, &live.mm, &names::mm(img.entry.pid))?;
    crate::files::uring::settle_all(t, (&live.fdinfo, &live.mm), files)?;
    mm::numa::restore(t, &live.mm)?;
    mm::restore::protect(t, &live.mm, &live.pagemap)?;
    let exe = files
        .reg_path(live.mm.exe_file_id)
        .ok_or_else(|| img.bad("exe file is not in files.img"))?
        .to_string();
    mm::restore::set_mm_fields(t, &live.mm, &exe)?;
    Ok(work)
}

/// What is the whole task's but memory: fs (unless shared with its
/// parent), limits, timers, signal actions, the child subreaper flag and
/// file locks (once its fds and mappings are in place for good).
fn restore_task_wide(
    t: &mut Tracee,
    img: &TaskImage,
    files: &mut RestoreFiles,
    shares_fs: bool,
) -> Result<(), RestoreError> {
    let pid = img.pid();
    let live = img.live_image()?;
    let tc = img.task_core()?;
    if !shares_fs {
        crate::fs::restore(t, &live.fs, files)?;
    }
    task::restore_rlimits(t.pid(), tc.rlimits.as_ref())?;
    task::restore_oom_score_adj(t.pid(), tc.oom_score_adj)?;
    task::restore_itimers(t, tc.timers.as_ref())?;
    if let Some(nice) = tc.crest_autogroup_nice {
        // (the autogroup is the session's: made by its setsid)
        let path = format!("/proc/{}/autogroup", t.pid());
        std::fs::write(&path, nice.to_string()).rat(pid, format!("write {nice} to {path}"))?;
    }
    if let Some(uid) = tc.loginuid {
        task::restore_loginuid(t, uid)?;
    }
    signals::restore_actions(t, &tc.sigactions)?;
    if let Some(on) = tc.child_subreaper {
        task::restore_child_subreaper(t, on)?;
    }
    // File locks once its fds and mappings are in place for good.
    crate::files::lock::restore(t, pid, &files.locks)?;
    Ok(())
}

/// Makes the task's other threads (after the leader moved into its user
/// namespace, while it still holds every capability); each gets its
/// state and ids and drops its own capabilities. `tl` says how their pids
/// are set; they share the leader's work area.
fn make_threads(
    t: &mut Tracee,
    img: &TaskImage,
    ctx: &mut TreeCtx<'_>,
    (tl, work): (ns::pid::Levels, &mm::restore::WorkArea),
    early: bool,
    leader_ids: Option<&creds::Ids>,
) -> Result<(), RestoreError> {
    let tc = img.task_core()?;
    for (i, (tid, tcore, extra)) in img.cores.iter().enumerate().skip(1) {
        let set_tid = img.set_tid(i);
        // (made in the task's own user namespace: `tl` is for it)
        let ids = crate::clone::Ids {
            want: &set_tid,
            settable: tl.settable,
            crest_last: tl.crest_last,
        };
        let writers = &mut *ctx.writers;
        let mut before = |want: &[i32]| -> Result<(), RestoreError> {
            if let (Some((ns, init)), Some(&next)) = (tl.middle, want.get(tl.settable)) {
                writers.set_next(ns, init, next)?;
            }
            Ok(())
        };
        let mut th = crate::clone::fork_thread(t, *tid, &ids, &mut before)?;
        th.adopt_scratch(work.addr + mm::PAGE, (work.len - mm::PAGE) as usize);
        restore_thread(&mut th, img, i, tc.personality)?;
        let tstep = UserStep {
            users: ctx.users,
            helper: None,
            early,
        };
        set_ids(&mut th, img, tcore, extra.as_ref(), &tstep, leader_ids)?;
        // (its own, not the leader's: made before the leader gets its)
        if let Some(thc) = tcore.thread_core.as_ref() {
            crate::task::seccomp::restore(&mut th, thc, &ctx.seccomp)?;
        }
        set_caps(&mut th, img, tcore)?;
        th.forget_scratch();
        unpin(ctx, img.pid(), th.tid(), extra.as_ref())?;
        ctx.threads.push(th);
    }
    Ok(())
}

/// Sets a thread's ids as crest sees them (so that ids its namespace does
/// not map come back exactly), keeping every capability, and for the
/// leader of a task in a nested user namespace moves it there (`helper`
/// holds it). A thread made after the move that has the leader's ids
/// (`leader`) keeps them; one with other ids sets them inside the
/// namespace. Returns the ids (crest's view).
pub(super) fn set_ids(
    t: &mut Tracee,
    img: &TaskImage,
    core: &CoreEntry,
    extra: Option<&CrestThreadExtra>,
    u: &UserStep<'_>,
    leader: Option<&creds::Ids>,
) -> Result<Option<creds::Ids>, RestoreError> {
    let (users, helper, early) = (u.users, u.helper, u.early);
    let th = core
        .thread_core
        .as_ref()
        .ok_or_else(|| img.bad("no thread core"))?;
    let Some(c) = th.creds.as_ref() else {
        if let Some(h) = helper {
            ns::user::enter(t, h)?;
        }
        return Ok(None);
    };
    let ns = img.ids.user_ns_id.unwrap_or(1);
    let inner = creds::Ids::of(c);
    let rec = |f: fn(&CrestThreadExtra) -> &Vec<u32>| extra.map_or(&[][..], |e| &f(e)[..]);
    let outer = creds::Ids {
        uids: to_array(to_outer_view(
            users,
            ns,
            &inner.uids,
            rec(|e| &e.outer_uids),
            false,
        )),
        gids: to_array(to_outer_view(
            users,
            ns,
            &inner.gids,
            rec(|e| &e.outer_gids),
            true,
        )),
        groups: to_outer_view(users, ns, &inner.groups, rec(|e| &e.outer_groups), true),
    };
    let nested = users.node(ns).is_some_and(|n| n.parent.is_some());
    if early {
        // Already in its user namespace: ids as the task sees them.
        if leader.is_none_or(|l| *l != outer) {
            let allow = users.node(ns).is_some_and(|n| n.setgroups_allow);
            creds::set_ids(t, &inner, allow)?;
        }
        return Ok(Some(outer));
    }
    match leader {
        Some(l) if nested => {
            if *l != outer {
                let allow = users.node(ns).is_some_and(|n| n.setgroups_allow);
                creds::set_ids(t, &inner, allow)?;
            }
        }
        _ => creds::set_ids(t, &outer, true)?,
    }
    if let Some(h) = helper {
        ns::user::enter(t, h)?;
    }
    Ok(Some(outer))
}

/// Sets a thread's capabilities as they are in its namespace, then the
/// parent-death signal that changing credentials clears.
pub(super) fn set_caps(
    t: &mut Tracee,
    img: &TaskImage,
    core: &CoreEntry,
) -> Result<(), RestoreError> {
    let th = core
        .thread_core
        .as_ref()
        .ok_or_else(|| img.bad("no thread core"))?;
    if let Some(c) = th.creds.as_ref() {
        creds::set_caps(t, c)?;
    }
    task::restore_pdeathsig(t, th.pdeath_sig.unwrap_or(0))
}

/// Where a task stands on its way into its user namespace.
pub(super) struct UserStep<'a> {
    pub(super) users: &'a UsernsGraph,
    /// Holder of the user namespace to enter after the ids are set.
    pub(super) helper: Option<i32>,
    /// It is in its user namespace already.
    pub(super) early: bool,
}

/// Thread `i`'s own state (see [`coreimg::restore_thread`]).
pub(super) fn restore_thread(
    t: &mut Tracee,
    img: &TaskImage,
    i: usize,
    personality: u32,
) -> Result<(), RestoreError> {
    let pid = img.pid();
    let (image_tid, core, extra) = img
        .cores
        .get(i)
        .map(|c| (c.0, &c.1, c.2.as_ref()))
        .ok_or_else(|| img.bad("a thread without a core image"))?;
    let th = coreimg::ThreadImage {
        pid,
        image_tid,
        core,
        extra,
        inner: (
            img.inner_tid(0).unwrap_or(pid),
            img.inner_tid(i).unwrap_or(image_tid),
        ),
    };
    coreimg::restore_thread(t, &th, personality)
}
