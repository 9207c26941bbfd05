//! `crest restore`: read the images, fork each task with its old pid,
//! transform it from outside, set credentials, registers, and let it go.
//! Only the order lives here; every step is in the room of its object:
//! reading the images (`images`), forking the tree (`fork`), transforming
//! a task (`task`).

mod fork;
mod images;
mod task;

use crate::error::{RestoreCtx, RestoreError};
use crate::files::restore::RestoreFiles;
use crate::notify::{hook, Notify, Silent};
use crate::opts::{Action, Options};
use crate::remote::Remote;
use crate::{mm, ns};
use crest_inject::Tracee;
use crest_sys::fault;
use crest_sys::ptrace::{self, WaitStatus};
use fork::{fork_tree, levels_of, Forked};
pub use images::check_inventory;
use images::{check_privilege, init_of, parent_index, read_tree_images, TreeImages};
use std::os::fd::AsFd;
use task::{transform, TreeCtx};

/// A restored tree, running.
pub struct Restored {
    pub root_pid: i32,
    /// What it took (also in `stats-restore` in the work directory).
    pub stats: crate::stats::RestoreStats,
}

impl Restored {
    /// Waits for the root task and returns its exit status the way a shell
    /// reports it (128 + signal for a killed task).
    pub fn wait(&self) -> Result<i32, RestoreError> {
        loop {
            match ptrace::wait(self.root_pid).rat(self.root_pid, "wait for the restored task")? {
                WaitStatus::Exited(c) => return Ok(c),
                WaitStatus::Signaled(s) => return Ok(128 + s),
                _ => continue,
            }
        }
    }
}

/// Restores the tree in `opts.dir`. On failure every task made is killed
/// and reaped: crest is a child subreaper meanwhile, so the killed tasks'
/// orphans come back to it rather than waiting for init.
pub fn restore(opts: &Options) -> Result<Restored, RestoreError> {
    restore_notified(opts, &mut Silent)
}

/// [`restore`], telling `n` at CRIU's notification points (pre-restore,
/// setup-namespaces, post-setup-namespaces, post-restore, network-unlock,
/// pre-resume, post-resume); a refused notification fails the restore and
/// kills what was made.
pub fn restore_notified(opts: &Options, n: &mut dyn Notify) -> Result<Restored, RestoreError> {
    let refused = opts.refusals(Action::Restore);
    if !refused.is_empty() {
        return Err(RestoreError::Refused { refused });
    }
    // whom crest acts for, and nothing more than they hold from here on
    let caller = crate::privilege::Caller::detect(opts.unprivileged)
        .and_then(|c| c.confine().map(|()| c))
        .rat(0, "take the caller's credentials")?;
    let _ = crest_sys::proc::set_child_subreaper(true);
    // cgroup hierarchies crest mounts itself, until the restore ends
    let _yard = crate::ns::cgyard::Guard;
    let start = std::time::Instant::now();
    let res = tell(n, hook::PRE_RESTORE, None).and_then(|()| restore_tree(opts, &caller, n));
    if res.is_err() {
        crest_sys::proc::reap_children(std::time::Duration::from_secs(2));
    }
    let _ = crest_sys::proc::set_child_subreaper(false);
    let mut r = res?;
    r.stats.restore = start.elapsed();
    // the tree runs by now: a refusal here is reported, not undone (CRIU
    // does the same)
    if let Err(e) = tell(n, hook::POST_RESUME, Some(r.root_pid)) {
        crate::warn!("{e}");
    }
    r.stats.write(opts.work_dir()).unwrap_or_else(|e| {
        crate::warn!("stats-restore not written: {e}");
    });
    Ok(r)
}

fn tell(n: &mut dyn Notify, h: &str, pid: Option<i32>) -> Result<(), RestoreError> {
    n.notify(h, pid, None).map_err(|why| RestoreError::Notify {
        hook: h.to_string(),
        why,
    })
}

fn restore_tree(
    opts: &Options,
    caller: &crate::privilege::Caller,
    n: &mut dyn Notify,
) -> Result<Restored, RestoreError> {
    let dir = &opts.dir;
    // every file as the dump wrote it, before anything is made
    match crest_images::manifest::verify(dir)? {
        crest_images::manifest::Verified::Intact { files, bytes } => {
            crate::info!("{files} image files ({bytes} bytes) match their checksums")
        }
        crest_images::manifest::Verified::NoManifest => crate::warn!(
            "{}: no {}: images of CRIU or of an older crest, read without checksums",
            dir.display(),
            crest_images::manifest::MANIFEST
        ),
    }
    check_inventory(dir, opts.tcp_close)?;
    let mut files = RestoreFiles::read(dir)?;
    files.socks.shell_job = opts.shell_job;
    files.socks.tcp_close = opts.tcp_close;
    files.ttys.orphan_pts_master = opts.orphan_pts_master;
    for (fd, key) in &opts.inherit_fd {
        let own = crest_sys::misc::dup_own(*fd).rat(0, format!("--inherit-fd fd[{fd}]:{key}"))?;
        files.inherit.insert(key.clone(), own);
    }
    let mut ti = read_tree_images(dir)?;
    if opts.empty_ns & libc::CLONE_NEWNET as u32 != 0 {
        // CRIU's --empty-ns net: the caller sets the network up itself
        ti.others.empty_net();
    }
    let ti = ti;
    check_privilege(caller, &ti, &opts.join_ns)?;
    let filters = crate::seccomp::read(dir)?;
    let sandboxed = ti.imgs.iter().find(|i| {
        i.cores
            .iter()
            .any(|c| c.1.thread_core.as_ref().is_some_and(crate::seccomp::wanted))
    });
    if let (true, Some(img)) = (caller.restricted, sandboxed) {
        return Err(RestoreError::Unsupported {
            pid: img.pid(),
            what: "a seccomp sandbox restored by an unprivileged crest (suspending it while \
                   the restore goes on needs CAP_SYS_ADMIN)"
                .into(),
        });
    }
    // CRIU's --external pid[INO]:KEY at dump: the root goes into the
    // caller's pid namespace, given with --inherit-fd fd[N]:KEY
    let ext_pidns = match ti.imgs[0]
        .ids
        .pid_ns_id
        .and_then(|n| ti.pidns.node(n))
        .and_then(|n| n.external_key.as_ref())
    {
        Some(key) => {
            let fd = files
                .inherit
                .get(key)
                .ok_or_else(|| RestoreError::Unsupported {
                    pid: ti.imgs[0].pid(),
                    what: format!(
                        "the external pid namespace {key}, the caller's: give crest an fd of it \
                         with --inherit-fd fd[N]:{key}"
                    ),
                })?;
            Some(fd.try_clone().rat(0, format!("dup the fd of {key}"))?)
        }
        None => None,
    };
    let imgs = &ti.imgs;
    // crest's helpers take their pids from a range the tree does not use,
    // so none holds a pid a task is yet to get (pids wrap at pid_max).
    let tids: Vec<i32> = imgs
        .iter()
        .flat_map(|i| i.cores.iter().map(|c| c.0))
        .collect();
    if ti.cut == 0 || ext_pidns.is_some() {
        // `crest dump && crest restore`: the dumped tasks may still be
        // on their way out
        crate::clone::wait_for_leaving(&tids, std::time::Duration::from_secs(5));
    }
    let spare = crate::clone::spare_pids(&tids);
    crate::clone::steer_pids(spare);
    // The namespaces first, held by helpers until every task has entered
    // its own.
    let join_user = opts.join_ns.iter().find(|j| j.ns == "user");
    let userns = ns::user::Helpers::build(&ti.users, join_user)?;
    fault::point("restore: user namespaces made")?;
    let mut others_h = ns::other::Helpers::build(
        &ti.others,
        &userns,
        &opts.external,
        &files.inherit,
        &opts.join_ns,
    )?;
    others_h.userns_first = caller.enters_userns_first();
    // namespace files of the tree's own namespaces open them through their
    // helpers (and through pid namespace inits and tasks, below)
    for n in ti.users.nodes.iter().filter(|n| n.parent.is_some()) {
        if let Some(p) = userns.pid_of(n.id) {
            files
                .ns_holders
                .insert((libc::CLONE_NEWUSER as u32, n.id), (p, false));
        }
    }
    for (id, p) in others_h.holders() {
        if let Some(n) = ti.others.list.iter().find(|n| n.id == id) {
            // (a helper unshares a time namespace for its children)
            let time = n.nstype == libc::CLONE_NEWTIME as u32;
            files.ns_holders.insert((n.nstype, id), (p, time));
        }
    }
    fault::point("restore: other namespaces made")?;
    crate::info!("restoring {} task(s), root {}", imgs.len(), imgs[0].pid());

    // Fork the tree: every task from its parent, with its pid.
    let mut writers = ns::pid::Writers::new(spare);
    // Where the root goes (its children follow): its cgroups, or
    // --cgroup-root's.
    let cg_dirs = if opts.manage_cgroups == crate::opts::CgMode::Ignore {
        Vec::new()
    } else {
        let mut lines = ns::cgroup::read_members(dir)?.root;
        if lines.is_empty() {
            // (images without them: only --cgroup-root moves the tree)
            lines = ns::cgroup::lines_of(std::process::id() as i32).unwrap_or_default();
        }
        let places = ns::cgroup::placement(&lines, &opts.cgroup_roots)?;
        // made, and given their settings, before the root moves in
        let saved = ns::cgprops::read(dir)?;
        for p in &places {
            ns::cgprops::prepare(
                &p.dir,
                &p.ctrls,
                &p.dumped,
                p.moves,
                saved.as_ref(),
                opts.manage_cgroups,
            )?;
        }
        places
    };
    let forking = std::time::Instant::now();
    let Forked {
        mut tasks,
        actual,
        cur_userns,
        made_time,
        held,
        later_pid_for_children,
    } = fork_tree(
        &ti,
        dir,
        (&userns, &others_h),
        &mut writers,
        (opts.restore_sibling, ext_pidns.as_ref()),
        &cg_dirs,
    )?;
    let forking = forking.elapsed();
    for n in &ti.pidns.list {
        if let Some(p) = images::init_of(&ti.imgs, &actual, n.id) {
            files
                .ns_holders
                .insert((libc::CLONE_NEWPID as u32, n.id), (p, false));
        }
    }
    // (queued messages name their senders by the pids they had)
    files.socks.pid_map = imgs
        .iter()
        .zip(&actual)
        .filter(|(i, a)| i.pid() != **a)
        .map(|(i, a)| (i.pid(), *a))
        .collect();
    fault::point("restore: tree forked")?;
    // How each task's threads get their ids: they are made after the task
    // moved into its own user namespace.
    let thread_levels = (0..imgs.len())
        .map(|k| levels_of(&ti, &actual, k, imgs[k].ids.user_ns_id.unwrap_or(1)))
        .collect::<Result<Vec<_>, _>>()?;

    // Cgroups, crest's files within reach, the mounts of mount namespaces.
    before_transform(opts, &ti, &actual, &mut tasks, &userns, &mut others_h)?;
    fault::point("restore: mounts replayed")?;

    // Transform every live task, make its threads, set its threads' state.
    let mut ctx = TreeCtx {
        dir,
        users: &ti.users,
        userns: &userns,
        made_time,
        others: &ti.others,
        others_h: &others_h,
        files: &mut files,
        shared: mm::restore::SharedAnon::new(),
        threads: Vec::new(),
        writers: &mut writers,
        userns_first: caller.enters_userns_first(),
        seccomp: filters,
    };
    for k in 0..imgs.len() {
        let Some(t) = tasks[k].as_mut() else { continue };
        let shares_files =
            k > 0 && imgs[k].ids.files_id == imgs[parent_index(imgs, k)?].ids.files_id;
        let shares_fs = k > 0 && imgs[k].ids.fs_id == imgs[parent_index(imgs, k)?].ids.fs_id;
        transform(
            t,
            &imgs[k],
            &mut ctx,
            (shares_files, shares_fs),
            cur_userns[k],
            thread_levels[k],
            (&held[k], later_pid_for_children[k]),
        )?;
        fault::point("restore: task transformed")?;
    }

    // SIGIO owners, once every task and thread they may name exists.
    let files = &*ctx.files;
    crate::files::fown::restore(
        files
            .holders
            .iter()
            .filter_map(|(id, &(pid, fd))| files.entries.get(id).map(|e| (e, pid, fd))),
    )?;

    // The caller's turn before anything runs: every task is in its
    // namespaces now.
    let root_pid = actual[0];
    tell(n, hook::SETUP_NAMESPACES, Some(root_pid))?;
    tell(n, hook::POST_SETUP_NAMESPACES, Some(root_pid))?;
    // consoles whose masters were outside: the caller takes the new ones
    for (_, master, _) in &ctx.files.ttys.masters {
        n.notify(
            hook::ORPHAN_PTS_MASTER,
            Some(root_pid),
            Some(master.as_fd()),
        )
        .map_err(|why| RestoreError::Notify {
            hook: hook::ORPHAN_PTS_MASTER.to_string(),
            why,
        })?;
    }
    tell(n, hook::POST_RESTORE, Some(root_pid))?;
    if ti.others.has_kind(libc::CLONE_NEWNET as u32) {
        tell(n, hook::NETWORK_UNLOCK, Some(root_pid))?;
    }
    tell(n, hook::PRE_RESUME, Some(root_pid))?;
    fault::point("restore: about to resume")?;
    // Let everyone go, threads before their leaders (the leader's release
    // unmaps the work area they were injected through).
    // (--leave-stopped: each goes with a SIGSTOP, the group stopped at
    // once)
    // In three passes, so that a crest killed meanwhile leaves all or
    // nothing: every thread put back (still killed with crest), then made
    // to outlive crest, then let go.
    let sig = if opts.leave_stopped { libc::SIGSTOP } else { 0 };
    // (a task stopped by job control at dump goes with its stop signal:
    // its whole group stops)
    let mut stops = std::collections::HashMap::new();
    for img in imgs.iter() {
        if let Some(s) = img.stop_signal()? {
            stops.insert(img.pid(), s);
        }
    }
    let mut all: Vec<(i32, crest_inject::Tracee)> =
        ctx.threads.into_iter().map(|t| (0, t)).collect();
    all.extend(
        tasks
            .into_iter()
            .enumerate()
            .filter_map(|(k, t)| t.map(|t| (imgs[k].pid(), t))),
    );
    for (pid, t) in all.iter_mut() {
        t.put_back().rat(*pid, "put the task back")?;
    }
    fault::point("restore: every task put back")?;
    for (pid, t) in all.iter_mut() {
        t.outlive_tracer().rat(*pid, "let the task outlive crest")?;
    }
    // A task to be stopped gets its stop signal queued on every thread
    // before any is let go: each stops as it leaves the tracer, never
    // running in between (a signal given with the detach is dropped when
    // the thread sits in an event stop rather than a syscall stop).
    let leader_sig: std::collections::HashMap<i32, i32> = all
        .iter()
        .filter(|(pid, _)| *pid != 0)
        .filter_map(|(pid, t)| {
            let s = stops.get(pid).copied().unwrap_or(sig);
            (s != 0).then_some((t.pid(), s))
        })
        .collect();
    for (pid, t) in &all {
        if let Some(&s) = leader_sig.get(&t.pid()) {
            crest_sys::misc::tgkill(t.pid(), t.tid(), s).rat(*pid, "queue the stop signal")?;
        }
    }
    for (pid, t) in all {
        t.detach_with(0).rat(pid, "let the task go")?;
    }
    if root_pid != imgs[0].pid() {
        crate::info!(
            "the root (pid {} in the images) is pid {root_pid} now",
            imgs[0].pid()
        );
    }
    crate::info!("tree of {root_pid} restored and running");
    Ok(Restored {
        root_pid,
        stats: crate::stats::RestoreStats {
            forking,
            ..Default::default()
        },
    })
}

/// Puts every task of a tree whose tasks were in different cgroups where
/// it was (each was forked into its parent's): those recorded in their
/// own, moved the way the root's moved, the others in the root's. A
/// cgroup outside the root's is made ready as the root's were.
fn place_tasks(
    opts: &Options,
    imgs: &[images::TaskImage],
    actual: &[i32],
    cg: &ns::cgroup::CgroupImages,
) -> Result<(), RestoreError> {
    let root_places = ns::cgroup::placement(&cg.root, &opts.cgroup_roots)?;
    let root_moves = ns::cgroup::moves(&cg.root, &opts.cgroup_roots);
    let saved = ns::cgprops::read(&opts.dir)?;
    let mut ready: Vec<std::path::PathBuf> = root_places.iter().map(|p| p.dir.clone()).collect();
    for (k, img) in imgs.iter().enumerate() {
        if img.live.is_none() || cg.members.iter().any(|m| m.0 == img.pid()) {
            continue;
        }
        let Some((_, lines)) = cg.placed.iter().find(|p| p.0 == img.pid()) else {
            ns::cgroup::place_task(actual[k], &root_places)?;
            continue;
        };
        let places = ns::cgroup::placement(&ns::cgroup::relocate(lines, &root_moves), &[])?;
        for p in &places {
            if ready.iter().any(|r| p.dir.starts_with(r)) {
                continue;
            }
            let dumped = ns::cgroup::moves(lines, &[])
                .into_iter()
                .find(|(c, _, _)| *c == p.ctrls)
                .map(|(_, d, _)| d)
                .unwrap_or_default();
            ns::cgprops::prepare(
                &p.dir,
                &p.ctrls,
                &dumped,
                true,
                saved.as_ref(),
                opts.manage_cgroups,
            )?;
            ready.push(p.dir.clone());
        }
        ns::cgroup::place_task(actual[k], &places)?;
    }
    Ok(())
}

/// What comes between the fork and the transforms: tasks of cgroup
/// namespaces back in their cgroups, every task given a way to crest's
/// files, and the mounts of mount namespaces replayed before any task
/// reopens files in them.
fn before_transform(
    opts: &Options,
    ti: &TreeImages,
    actual: &[i32],
    tasks: &mut [Option<Tracee>],
    userns: &ns::user::Helpers,
    others_h: &mut ns::other::Helpers,
) -> Result<(), RestoreError> {
    let imgs = &ti.imgs;
    // (threads made later follow their leader)
    let cg = ns::cgroup::read_members(&opts.dir)?;
    if opts.manage_cgroups != crate::opts::CgMode::Ignore && !cg.placed.is_empty() {
        place_tasks(opts, imgs, actual, &cg)?;
    }
    for (pid, path) in cg.members {
        if let Some(k) = imgs.iter().position(|i| i.pid() == pid && i.live.is_some()) {
            ns::cgroup::move_to(actual[k], &path)?;
        }
    }
    // crest's /proc and the images stay within reach while a task is in
    // other mount namespaces: an fd numbered above its future fds
    for (k, t) in tasks.iter_mut().enumerate() {
        let (Some(t), Some(live)) = (t.as_mut(), imgs[k].live.as_ref()) else {
            continue;
        };
        t.open_crest_root(live.crest_root_fd())?;
    }
    let mnt_externals = crate::opts::mnt_externals(&opts.external);
    let root = opts.root.as_ref().map(|r| r.to_string_lossy().into_owned());
    let cg_lines = ns::cgroup::read_members(&opts.dir)?.root;
    let cgroup_moves = ns::cgroup::moves(&cg_lines, &opts.cgroup_roots);
    let how = ns::mnt::Replay {
        root: root.as_deref(),
        externals: &mnt_externals,
        cgroup_moves: &cgroup_moves,
    };
    let init = |n: u32| init_of(imgs, actual, n);
    for id in ti.others.mount_order() {
        others_h.replay_mounts(&ti.others, id, userns, &init, &how)?;
    }
    Ok(())
}
