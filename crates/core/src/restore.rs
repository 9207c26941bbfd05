//! `crest restore`: read the images, fork each task with its old pid,
//! transform it from outside, set credentials, registers, and let it go.
//! Only the order lives here; every step is in the room of its object.

use crate::error::{RestoreCtx, RestoreError};
use crate::files::restore::{restore_fds, RestoreFiles};
use crate::ns::user::{to_outer_view, UsernsGraph};
use crate::{coreimg, creds, mm, ns, pstree, regs, signals, task};
use crest_images::pb::crest::CrestThreadExtra;
use crest_images::pb::{
    CoreEntry, FdinfoEntry, FsEntry, MmEntry, PagemapEntry, PagemapHead, PstreeEntry,
    TaskKobjIdsEntry,
};
use crest_images::{magic, names, ImageReader};
use crest_inject::{nr, Tracee};
use crest_sys::proc::{spawn_stopped_with, SessionSetup};
use crest_sys::ptrace::{self, WaitStatus};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub dir: PathBuf,
    pub detached: bool,
    pub shell_job: bool,
    /// CRIU's `--external` entries (`veth[IFNAME]:OUTNAME`,
    /// `mnt[KEY]:PATH`).
    pub external: Vec<String>,
    /// CRIU's `--root`: the root directory of a tree that pivot_root'ed.
    pub root: Option<PathBuf>,
}

/// A restored tree, running.
pub struct Restored {
    pub root_pid: i32,
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

/// Everything the images say about one task.
struct TaskImage {
    entry: PstreeEntry,
    /// Core images: the leader's first, then every other thread's.
    cores: Vec<(i32, CoreEntry, Option<CrestThreadExtra>)>,
    ids: TaskKobjIdsEntry,
    /// None for a zombie.
    live: Option<LiveImage>,
    /// How many outer levels of its ids are left to the kernel: those above
    /// the tree's pid namespace when that is made afresh (see
    /// [`TreeImages::cut`]).
    cut: usize,
}

/// What only a live task has.
struct LiveImage {
    mm: MmEntry,
    pagemap: Vec<PagemapEntry>,
    pages_id: u32,
    fdinfo: Vec<FdinfoEntry>,
    fs: FsEntry,
}

const MAX_PAGEMAP_ENTRIES: usize = 1 << 24;
/// Most tasks plus threads crest restores from one image (as many as it
/// seizes at dump).
const MAX_TASKS: usize = 1 << 16;

impl TaskImage {
    fn read(dir: &Path, entry: PstreeEntry) -> Result<TaskImage, RestoreError> {
        let pid = entry.pid;
        let ids: TaskKobjIdsEntry = crest_images::read_one(dir, &names::ids(pid), magic::IDS)?;
        let mut cores = Vec::with_capacity(entry.threads.len());
        let mut tids = vec![pid];
        tids.extend(entry.threads.iter().copied().filter(|t| *t != pid));
        for tid in tids {
            let core: CoreEntry = crest_images::read_one(dir, &names::core(tid), magic::CORE)?;
            let extra_name = names::crest_thread(tid);
            let extra = if dir.join(&extra_name).exists() {
                Some(crest_images::read_one(
                    dir,
                    &extra_name,
                    magic::CREST_THREAD,
                )?)
            } else {
                None
            };
            cores.push((tid as i32, core, extra));
        }
        let dead = cores[0]
            .1
            .tc
            .as_ref()
            .is_some_and(|tc| tc.task_state == coreimg::TASK_DEAD);
        let live = if dead {
            None
        } else {
            Some(LiveImage::read(dir, pid, &ids)?)
        };
        Ok(TaskImage {
            entry,
            cores,
            ids,
            live,
            cut: 0,
        })
    }

    fn pid(&self) -> i32 {
        self.entry.pid as i32
    }

    /// Thread `i`'s ids at every pid namespace level crest sets, innermost
    /// first, as `clone3`'s `set_tid` wants them.
    fn set_tid(&self, i: usize) -> Vec<i32> {
        let ns = self.cores.get(i).and_then(|c| c.2.as_ref());
        let id = self.cores.get(i).map_or(self.entry.pid, |c| c.0 as u32);
        self.levels(ns.map(|e| &e.ns_tids[..]), id)
    }

    /// An id (`NSpid`-like list `ns`, outermost first, or crest's view
    /// `id` alone) as the levels crest sets, innermost first.
    fn levels(&self, ns: Option<&[u32]>, id: u32) -> Vec<i32> {
        let mut v: Vec<i32> = match ns {
            Some(ns) if !ns.is_empty() => ns.iter().rev().map(|t| *t as i32).collect(),
            _ => vec![id as i32],
        };
        v.truncate(v.len().saturating_sub(self.cut));
        v
    }

    /// Thread `i`'s id in its own pid namespace.
    fn inner_tid(&self, i: usize) -> Option<i32> {
        self.set_tid(i).first().copied()
    }

    /// The process group's id at the levels crest sets, innermost first.
    fn pgid_ids(&self) -> Vec<i32> {
        let ns = self.cores.first().and_then(|c| c.2.as_ref());
        self.levels(ns.map(|e| &e.ns_pgids[..]), self.entry.pgid)
    }

    /// The session's id at the levels crest sets, innermost first.
    fn sid_ids(&self) -> Vec<i32> {
        let ns = self.cores.first().and_then(|c| c.2.as_ref());
        self.levels(ns.map(|e| &e.ns_sids[..]), self.entry.sid)
    }

    fn bad(&self, what: &str) -> RestoreError {
        RestoreError::BadImage {
            pid: self.pid(),
            file: names::core(self.entry.pid),
            what: what.into(),
        }
    }
}

impl LiveImage {
    fn read(dir: &Path, pid: u32, ids: &TaskKobjIdsEntry) -> Result<LiveImage, RestoreError> {
        let mm: MmEntry = crest_images::read_one(dir, &names::mm(pid), magic::MM)?;
        let mut r = ImageReader::open(dir, &names::pagemap(pid), magic::PAGEMAP)?;
        let head: PagemapHead = r.next_entry()?.ok_or_else(|| RestoreError::BadImage {
            pid: pid as i32,
            file: names::pagemap(pid),
            what: "no pagemap head".into(),
        })?;
        let mut pagemap = Vec::new();
        while let Some(e) = r.next_entry::<PagemapEntry>()? {
            if pagemap.len() >= MAX_PAGEMAP_ENTRIES {
                return Err(RestoreError::BadImage {
                    pid: pid as i32,
                    file: names::pagemap(pid),
                    what: format!("more than {MAX_PAGEMAP_ENTRIES} entries"),
                });
            }
            pagemap.push(e);
        }
        let fdinfo_name = names::fdinfo(ids.files_id);
        let fdinfo = if ids.files_id == ids.vm_id || dir.join(&fdinfo_name).exists() {
            crest_images::read_image(dir, &fdinfo_name, magic::FDINFO)?
        } else {
            Vec::new()
        };
        let fs: FsEntry = crest_images::read_one(dir, &names::fs(pid), magic::FS)?;
        Ok(LiveImage {
            mm,
            pagemap,
            pages_id: head.pages_id,
            fdinfo,
            fs,
        })
    }
}

/// Restores the tree in `opts.dir`. On failure every task made is killed
/// and reaped: crest is a child subreaper meanwhile, so the killed tasks'
/// orphans come back to it rather than waiting for init.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let _ = crest_sys::proc::set_child_subreaper(true);
    let res = restore_tree(opts);
    if res.is_err() {
        crest_sys::proc::reap_children(std::time::Duration::from_secs(2));
    }
    let _ = crest_sys::proc::set_child_subreaper(false);
    res
}

/// What the images say about the whole tree, read and checked.
struct TreeImages {
    imgs: Vec<TaskImage>,
    users: UsernsGraph,
    others: ns::other::OtherGraph,
    pidns: ns::pid::PidnsGraph,
    /// When the root is the init of a pid namespace, that namespace is made
    /// afresh below crest's, as CRIU does: the root is pid 1 inside and
    /// gets whatever pid the kernel gives it outside, and so do the ids of
    /// every task at the levels above the namespace (`cut` of them).
    cut: usize,
}

fn restore_tree(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let dir = &opts.dir;
    check_inventory(dir)?;
    let mut files = RestoreFiles::read(dir)?;
    files.socks.shell_job = opts.shell_job;
    let ti = read_tree_images(dir)?;
    let imgs = &ti.imgs;
    // crest's helpers take their pids from a range the tree does not use,
    // so none holds a pid a task is yet to get (pids wrap at pid_max).
    let tids: Vec<i32> = imgs
        .iter()
        .flat_map(|i| i.cores.iter().map(|c| c.0))
        .collect();
    let spare = pstree::spare_pids(&tids);
    pstree::steer_pids(spare);
    // The namespaces first, held by helpers until every task has entered
    // its own.
    let userns = ns::user::Helpers::build(&ti.users)?;
    let mut others_h = ns::other::Helpers::build(&ti.others, &userns, &opts.external)?;
    crate::info!("restoring {} task(s), root {}", imgs.len(), imgs[0].pid());

    // Fork the tree: every task from its parent, with its pid.
    let mut writers = ns::pid::Writers::new(spare);
    let Forked {
        mut tasks,
        actual,
        cur_userns,
        made_time,
    } = fork_tree(&ti, &userns, &mut writers)?;
    // How each task's threads get their ids: they are made after the task
    // moved into its own user namespace.
    let thread_levels = (0..imgs.len())
        .map(|k| levels_of(&ti, &actual, k, imgs[k].ids.user_ns_id.unwrap_or(1)))
        .collect::<Result<Vec<_>, _>>()?;

    // Cgroups, crest's files within reach, the mounts of mount namespaces.
    before_transform(opts, &ti, &actual, &mut tasks, &userns, &mut others_h)?;

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
        )?;
    }

    // Let everyone go, threads before their leaders (the leader's release
    // unmaps the work area they were injected through).
    for th in ctx.threads {
        th.release().rat(0, "let a thread go")?;
    }
    let root_pid = actual[0];
    for (k, t) in tasks.into_iter().enumerate() {
        if let Some(t) = t {
            t.release().rat(imgs[k].pid(), "let the task go")?;
        }
    }
    if root_pid != imgs[0].pid() {
        crate::info!(
            "the root (pid {} in the images) is pid {root_pid} now",
            imgs[0].pid()
        );
    }
    crate::info!("tree of {root_pid} restored and running");
    Ok(Restored { root_pid })
}

/// Reads `pstree.img`, every task's images and the namespace graphs.
fn read_tree_images(dir: &Path) -> Result<TreeImages, RestoreError> {
    let tree: Vec<PstreeEntry> = crest_images::read_image(dir, names::PSTREE, magic::PSTREE)?;
    let threads: usize = tree.iter().map(|e| e.threads.len().max(1)).sum();
    if tree.len() > MAX_TASKS || threads > MAX_TASKS {
        return Err(RestoreError::BadImage {
            pid: 0,
            file: names::PSTREE.into(),
            what: format!(
                "{} tasks with {threads} threads, more than {MAX_TASKS}",
                tree.len()
            ),
        });
    }
    let order = pstree::tree_order(&tree).map_err(|what| RestoreError::BadImage {
        pid: 0,
        file: names::PSTREE.into(),
        what,
    })?;
    let mut imgs = order
        .iter()
        .map(|&i| TaskImage::read(dir, tree[i].clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let cut = fresh_levels(&imgs)?;
    for img in &mut imgs {
        img.cut = cut;
    }
    let ns_of: Vec<(i32, u32)> = imgs
        .iter()
        .map(|i| (i.pid(), i.ids.user_ns_id.unwrap_or(1)))
        .collect();
    let users = UsernsGraph::read(dir, &ns_of)?;
    let other_of: Vec<(i32, u32)> = imgs
        .iter()
        .flat_map(|i| {
            ns::other::ids_of(&i.ids)
                .into_iter()
                .map(move |n| (i.pid(), n))
        })
        .collect();
    let others = ns::other::OtherGraph::read(dir, &other_of)?;
    let pid_of: Vec<(i32, u32)> = imgs
        .iter()
        .filter_map(|i| Some((i.pid(), i.ids.pid_ns_id?)))
        .collect();
    let pidns = ns::pid::PidnsGraph::from_entries(&ns::other::read_entries(dir)?, &pid_of)
        .map_err(|what| RestoreError::BadImage {
            pid: 0,
            file: names::CREST_NS.into(),
            what,
        })?;
    Ok(TreeImages {
        imgs,
        users,
        others,
        pidns,
        cut,
    })
}

/// How many outer levels of every task's ids the kernel picks: all above
/// the root's pid namespace when the root is its init, none otherwise.
/// Every task must then have ids inside that namespace.
fn fresh_levels(imgs: &[TaskImage]) -> Result<usize, RestoreError> {
    let root = &imgs[0];
    let levels = root.set_tid(0);
    if root.ids.pid_ns_id.is_none() || levels.first() != Some(&1) {
        return Ok(0);
    }
    let cut = levels.len() - 1;
    for img in imgs {
        for (tid, _, extra) in &img.cores {
            if extra.as_ref().map_or(0, |e| e.ns_tids.len()) <= cut {
                return Err(img.bad(&format!(
                    "thread {tid} has no id inside the pid namespace of the tree's root"
                )));
            }
        }
    }
    Ok(cut)
}

/// The index of the init of pid namespace `n`.
fn init_index(imgs: &[TaskImage], n: u32) -> Option<usize> {
    imgs.iter()
        .position(|i| i.ids.pid_ns_id == Some(n) && i.inner_tid(0) == Some(1))
}

/// The pid (crest's view) of the restored init of pid namespace `n`;
/// `actual` holds the pids of the tasks forked so far, in tree order.
fn init_of(imgs: &[TaskImage], actual: &[i32], n: u32) -> Option<i32> {
    init_index(imgs, n).and_then(|k| actual.get(k).copied())
}

/// How task `k`'s pid levels are set when it is forked (or makes threads)
/// inside user namespace `userns`.
fn levels_of(
    ti: &TreeImages,
    actual: &[i32],
    k: usize,
    userns: u32,
) -> Result<ns::pid::Levels, RestoreError> {
    let init = |n: u32| init_of(&ti.imgs, actual, n);
    ti.pidns
        .levels(ti.imgs[k].ids.pid_ns_id, userns, &ti.users, &init, ti.cut)
        .map_err(|what| RestoreError::Unsupported {
            pid: ti.imgs[k].pid(),
            what,
        })
}

/// The tree forked, before any task is transformed.
struct Forked {
    tasks: Vec<Option<Tracee>>,
    /// Every task's pid in crest's namespace (the image's unless the tree's
    /// pid namespace was made afresh).
    actual: Vec<i32>,
    /// The user namespace each task is in while it is restored: crest's
    /// (1) but for tasks forked inside a nested one.
    cur_userns: Vec<u32>,
    /// Time namespaces that a task made for its children (unshare without
    /// fork), made again by it: its children got them at fork.
    made_time: std::collections::HashSet<u32>,
}

/// Forks every task from its parent with its pid (the root from crest),
/// puts them in their sessions and groups, and ends the zombies.
fn fork_tree(
    ti: &TreeImages,
    userns: &ns::user::Helpers,
    writers: &mut ns::pid::Writers,
) -> Result<Forked, RestoreError> {
    let (imgs, users, others, pidns) = (&ti.imgs, &ti.users, &ti.others, &ti.pidns);
    let entries: Vec<&PstreeEntry> = imgs.iter().map(|i| &i.entry).collect();
    let mut tasks: Vec<Option<Tracee>> = Vec::with_capacity(imgs.len());
    let mut cur_userns: Vec<u32> = vec![1; imgs.len()];
    let mut made_time = std::collections::HashSet::new();
    let mut helpers = pstree::Helpers::default();
    let root_new_pidns = new_pidns(imgs, pidns, 0, None)?;
    let root_owner = pidns_owner(&imgs[0], pidns);
    let root = if root_new_pidns && root_owner != 1 {
        // a fresh pid namespace owned by a nested user namespace: made
        // from inside it
        let holder = userns.pid_of(root_owner).ok_or_else(|| {
            imgs[0].bad("the init of a pid namespace owned by a user namespace crest did not make")
        })?;
        let set_tid = imgs[0].set_tid(0);
        let t = pstree::fork_init_in_userns(None, &imgs[0].entry, &set_tid, false, holder)?;
        cur_userns[0] = root_owner;
        t
    } else {
        spawn_root(&imgs[0], root_new_pidns)?
    };
    let mut actual = vec![root.pid()];
    tasks.push(Some(root));
    for k in 1..imgs.len() {
        let p = parent_index(imgs, k)?;
        let share = (
            imgs[k].ids.files_id == imgs[p].ids.files_id,
            imgs[k].ids.fs_id == imgs[p].ids.fs_id,
        );
        let subreaper = imgs[p].cores[0]
            .1
            .tc
            .as_ref()
            .and_then(|tc| tc.child_subreaper)
            .unwrap_or(false);
        let fresh = new_pidns(imgs, pidns, k, Some(p))?;
        let set_tid = imgs[k].set_tid(0);
        let sid_ids = imgs[k].sid_ids();
        if let Some(owner) = time_owner(&imgs[p], others, &made_time) {
            // The time namespace it made for its children is owned by a
            // user namespace it has still to enter: it moves there now, so
            // that its unshare makes the namespace owned by it.
            if owner != cur_userns[p] {
                let u = imgs[p].ids.user_ns_id.unwrap_or(1);
                if !users.is_within(owner, cur_userns[p]) || !users.is_within(u, owner) {
                    return Err(imgs[p].bad(
                        "a time namespace for its children owned by a user namespace it is not on its way to",
                    ));
                }
                let holder = userns.pid_of(owner).ok_or_else(|| {
                    imgs[p].bad("a time namespace owned by a user namespace crest did not make")
                })?;
                let t = tasks[p]
                    .as_mut()
                    .ok_or_else(|| imgs[k].bad("parent is a zombie"))?;
                ns::user::enter(t, holder)?;
                cur_userns[p] = owner;
            }
        }
        cur_userns[k] = cur_userns[p];
        make_time_for_children(&imgs[p], others, tasks[p].as_mut(), &mut made_time)?;
        let owner = pidns_owner(&imgs[k], pidns);
        if fresh && owner != cur_userns[p] {
            // A pid namespace owned by another user namespace than the
            // parent is in: made by a helper inside the owner.
            let holder = userns.pid_of(owner).ok_or_else(|| {
                imgs[k]
                    .bad("the init of a pid namespace owned by a user namespace crest did not make")
            })?;
            let parent = tasks[p]
                .as_mut()
                .ok_or_else(|| imgs[k].bad("parent is a zombie"))?;
            let child = pstree::fork_init_in_userns(
                Some(parent),
                &imgs[k].entry,
                &set_tid,
                ti.cut == 0,
                holder,
            )?;
            cur_userns[k] = owner;
            actual.push(child.pid());
            tasks.push(Some(child));
            continue;
        }
        let levels = levels_of(ti, &actual, k, cur_userns[p])?;
        let how = pstree::ForkHow {
            ids: pstree::Ids {
                want: &set_tid,
                settable: levels.settable,
                crest_last: levels.crest_last,
            },
            sid_ids: &sid_ids,
            share_files: share.0,
            share_fs: share.1,
            new_pidns: fresh,
            parent_is_subreaper: subreaper,
        };
        let mut before = || -> Result<(), RestoreError> {
            if let Some((ns, init)) = levels.middle {
                writers.set_next(ns, init, set_tid[levels.settable])?;
            }
            Ok(())
        };
        let child =
            pstree::fork_in_session(&mut tasks, &mut helpers, &entries, k, p, &how, &mut before)?;
        actual.push(child.pid());
        tasks.push(Some(child));
    }
    let pgid_ids: Vec<Vec<i32>> = imgs.iter().map(TaskImage::pgid_ids).collect();
    pstree::set_groups(&mut tasks, &mut helpers, &entries, &pgid_ids, ti.cut > 0)?;
    set_pid_for_children(imgs, &actual, &mut tasks)?;
    helpers.finish(&mut tasks)?;
    end_zombies(imgs, &mut tasks)?;
    Ok(Forked {
        tasks,
        actual,
        cur_userns,
        made_time,
    })
}

/// Zombies end now, with their exit status.
fn end_zombies(imgs: &[TaskImage], tasks: &mut [Option<Tracee>]) -> Result<(), RestoreError> {
    for k in 1..imgs.len() {
        let Some(tc) = imgs[k].cores[0].1.tc.as_ref() else {
            continue;
        };
        if imgs[k].live.is_some() {
            continue;
        }
        let p = parent_index(imgs, k)?;
        let (Some(t), status) = (tasks[k].take(), tc.exit_code as i32) else {
            continue;
        };
        let parent = tasks[p]
            .as_mut()
            .ok_or_else(|| imgs[k].bad("parent is a zombie"))?;
        pstree::make_zombie(t, status, &tc.comm, parent)?;
    }
    Ok(())
}

/// What comes between the fork and the transforms: tasks of cgroup
/// namespaces back in their cgroups, every task given a way to crest's
/// files, and the mounts of mount namespaces replayed before any task
/// reopens files in them.
fn before_transform(
    opts: &RestoreOptions,
    ti: &TreeImages,
    actual: &[i32],
    tasks: &mut [Option<Tracee>],
    userns: &ns::user::Helpers,
    others_h: &mut ns::other::Helpers,
) -> Result<(), RestoreError> {
    let imgs = &ti.imgs;
    // (threads made later follow their leader)
    for (pid, path) in ns::cgroup::read_members(&opts.dir)? {
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
        let max_fd = live
            .fdinfo
            .iter()
            .map(|f| u64::from(f.fd))
            .max()
            .unwrap_or(0);
        mm::restore::open_crest_root(t, max_fd + 6 * live.fdinfo.len() as u64 + 64)?;
    }
    let mnt_externals = ns::mnt::mnt_externals(&opts.external);
    let root = opts.root.as_ref().map(|r| r.to_string_lossy().into_owned());
    let how = ns::mnt::Replay {
        root: root.as_deref(),
        externals: &mnt_externals,
    };
    let init = |n: u32| init_of(imgs, actual, n);
    for id in ti.others.mount_order() {
        others_h.replay_mounts(&ti.others, id, userns, &init, &how)?;
    }
    Ok(())
}

/// A task whose children go to a time namespace of their own makes it
/// again (`unshare(CLONE_NEWTIME)` and its offsets) before its first child.
/// The owner of the time namespace task `img` made for its children, if
/// it is still to be made.
fn time_owner(
    img: &TaskImage,
    others: &ns::other::OtherGraph,
    made: &std::collections::HashSet<u32>,
) -> Option<u32> {
    let x = img.cores[0].2.as_ref()?.time_for_children?;
    if made.contains(&x) {
        return None;
    }
    others
        .list
        .iter()
        .find(|n| n.id == x)
        .map(|n| n.owner_userns)
}

fn make_time_for_children(
    img: &TaskImage,
    others: &ns::other::OtherGraph,
    t: Option<&mut Tracee>,
    made: &mut std::collections::HashSet<u32>,
) -> Result<(), RestoreError> {
    let Some(x) = img.cores[0].2.as_ref().and_then(|e| e.time_for_children) else {
        return Ok(());
    };
    let (Some(t), false) = (t, made.contains(&x)) else {
        return Ok(());
    };
    let pid = t.pid();
    let n = others
        .list
        .iter()
        .find(|n| n.id == x)
        .ok_or_else(|| img.bad("time_for_children names an unknown namespace"))?;
    t.syscall(nr::UNSHARE, &[libc::CLONE_NEWTIME as u64])
        .rat(pid, "unshare(CLONE_NEWTIME)")?;
    if let Some([(ms, mn), (bs, bn)]) = n.offsets {
        let path = format!("/proc/{pid}/timens_offsets");
        std::fs::write(&path, format!("monotonic {ms} {mn}\nboottime {bs} {bn}\n"))
            .rat(pid, format!("write {path}"))?;
    }
    made.insert(x);
    Ok(())
}

/// A task whose children go to another pid namespace than its own (it
/// unshared one) points its `pid_for_children` there again, through the
/// namespace's init.
fn set_pid_for_children(
    imgs: &[TaskImage],
    actual: &[i32],
    tasks: &mut [Option<Tracee>],
) -> Result<(), RestoreError> {
    for (k, img) in imgs.iter().enumerate() {
        let Some(x) = img.cores[0].2.as_ref().and_then(|e| e.pid_for_children) else {
            continue;
        };
        let Some(init) = init_of(imgs, actual, x) else {
            continue;
        };
        if let Some(t) = tasks[k].as_mut() {
            let path = format!("/proc/{init}/ns/pid");
            let fd = mm::restore::open_crest_side(t, &path, libc::O_RDONLY)?;
            let r = t.syscall(nr::SETNS, &[fd, libc::CLONE_NEWPID as u64]);
            t.syscall(nr::CLOSE, &[fd]).rat(img.pid(), "close")?;
            r.rat(img.pid(), "setns of pid_for_children")?;
        }
    }
    Ok(())
}

/// The user namespace that owns task `img`'s pid namespace.
fn pidns_owner(img: &TaskImage, pidns: &ns::pid::PidnsGraph) -> u32 {
    img.ids
        .pid_ns_id
        .and_then(|n| pidns.node(n))
        .map_or(1, |n| n.owner_userns)
}

/// Whether task `k` is the init of a pid namespace of its own, a child of
/// its parent's (task `p`, or crest's for the root).
fn new_pidns(
    imgs: &[TaskImage],
    g: &ns::pid::PidnsGraph,
    k: usize,
    p: Option<usize>,
) -> Result<bool, RestoreError> {
    let child_ns = imgs[k].ids.pid_ns_id;
    let parent_ns = p.and_then(|p| imgs[p].ids.pid_ns_id);
    if child_ns == parent_ns {
        return Ok(false);
    }
    let Some(ns) = child_ns else {
        return Err(imgs[k].bad("a task in crest's pid namespace whose parent is in another"));
    };
    let node = g
        .node(ns)
        .ok_or_else(|| imgs[k].bad("an unknown pid namespace"))?;
    // (the root's namespace is made below crest's whatever its parent was)
    if (p.is_some() && node.parent != parent_ns) || imgs[k].inner_tid(0) != Some(1) {
        return Err(imgs[k].bad(
            "a task in a pid namespace other than its parent's that is not the init (pid 1) of a child namespace",
        ));
    }
    Ok(true)
}

/// `inventory.img` must be there, be CRIU's, and have image version 2.
pub fn check_inventory(dir: &Path) -> Result<(), RestoreError> {
    let inv: crest_images::pb::InventoryEntry =
        crest_images::read_one(dir, names::INVENTORY, magic::INVENTORY)?;
    if inv.img_version != crest_images::INVENTORY_IMG_VERSION {
        return Err(RestoreError::BadImage {
            pid: 0,
            file: names::INVENTORY.into(),
            what: format!(
                "image version {}, crest reads version {}",
                inv.img_version,
                crest_images::INVENTORY_IMG_VERSION
            ),
        });
    }
    Ok(())
}

fn parent_index(imgs: &[TaskImage], k: usize) -> Result<usize, RestoreError> {
    let ppid = imgs[k].entry.ppid;
    imgs[..k]
        .iter()
        .position(|i| i.entry.pid == ppid)
        .ok_or_else(|| imgs[k].bad("parent is not restored before the task"))
}

/// Forks the root task from crest with its old pid at every level, or as
/// pid 1 of a new pid namespace if it was an init.
fn spawn_root(img: &TaskImage, new_pidns: bool) -> Result<Tracee, RestoreError> {
    let pid = img.pid();
    let set_tid = img.set_tid(0);
    let flags = if new_pidns {
        libc::CLONE_NEWPID as u64
    } else {
        0
    };
    let child = spawn_stopped_with(&set_tid, session_of(img), flags).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::EEXIST) => RestoreError::PidTaken { pid },
            _ => RestoreError::Io {
                pid,
                step: format!("clone3 with set_tid {set_tid:?}"),
                source: e,
            },
        }
    })?;
    let mut t = Tracee::from_stopped_child(child).rat(pid, "attach to the new task")?;
    if !pstree::has_ids(child, &set_tid) {
        return Err(RestoreError::Unsupported {
            pid,
            what: format!("clone3 with set_tid {set_tid:?} gave pid {child}"),
        });
    }
    t.trace_new_tasks().rat(pid, "trace new tasks")?;
    t.use_vdso_syscall()
        .rat(pid, "find a syscall instruction")?;
    Ok(t)
}

fn session_of(img: &TaskImage) -> SessionSetup {
    if img.entry.sid == img.entry.pid {
        SessionSetup::NewSession
    } else if img.entry.pgid == img.entry.pid {
        SessionSetup::NewGroup
    } else {
        SessionSetup::Inherit
    }
}

/// What the transforms of a tree's tasks share.
struct TreeCtx<'a> {
    dir: &'a Path,
    users: &'a UsernsGraph,
    userns: &'a ns::user::Helpers,
    made_time: std::collections::HashSet<u32>,
    others: &'a ns::other::OtherGraph,
    others_h: &'a ns::other::Helpers,
    files: &'a mut RestoreFiles,
    shared: mm::restore::SharedAnon,
    /// Threads made so far, ready to be let go before their leaders.
    threads: Vec<Tracee>,
    writers: &'a mut ns::pid::Writers,
}

/// Turns a stopped fork of crest into the dumped task, and makes its
/// threads (pushed to `ctx.threads`, ready to be let go).
fn transform(
    t: &mut Tracee,
    img: &TaskImage,
    ctx: &mut TreeCtx<'_>,
    (shares_files, shares_fs): (bool, bool),
    cur_userns: u32,
    tl: ns::pid::Levels,
) -> Result<(), RestoreError> {
    let pid = img.pid();
    let (files, dir) = (&mut *ctx.files, ctx.dir);
    let live = img
        .live
        .as_ref()
        .ok_or_else(|| img.bad("not a live task"))?;
    let core = &img.cores[0].1;
    let tc = core.tc.as_ref().ok_or_else(|| img.bad("no task core"))?;
    task::unregister_inherited_rseq(t)?;
    if shares_files {
        // Its parent's fd table restore closed the fd it had of crest's root.
        let max_fd = live
            .fdinfo
            .iter()
            .map(|f| u64::from(f.fd))
            .max()
            .unwrap_or(0);
        mm::restore::open_crest_root(t, max_fd + 6 * live.fdinfo.len() as u64 + 64)?;
    }
    // Its own namespaces (but the user namespace) first, so files are
    // reopened in its mount namespace and the vdso is placed in its time
    // namespace.
    ctx.others_h
        .enter_all_as(t, ctx.others, pid, &ctx.made_time)?;

    // Memory.
    let work = mm::restore::map_work_area(t, &live.mm)?;
    if !shares_files {
        restore_fds(t, img.ids.files_id, &live.fdinfo, files)?;
    }
    mm::restore::unmap_inherited(t, &work)?;
    mm::restore::map_vmas(t, &live.mm, &live.pagemap, files, &mut ctx.shared)?;
    let pages = absolute(dir)
        .rat(pid, "images directory path")?
        .join(names::pages(live.pages_id));
    let started = std::time::Instant::now();
    mm::restore::fill_pages(t, &live.mm, &live.pagemap, &pages.to_string_lossy())?;
    crate::debug!(
        "pid {pid}: pages filled in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    mm::restore::protect(t, &live.mm, &live.pagemap)?;
    let exe = files
        .reg_path(live.mm.exe_file_id)
        .ok_or_else(|| img.bad("exe file is not in files.img"))?
        .to_string();
    mm::restore::set_mm_fields(t, &live.mm, &exe)?;

    // fs, limits, timers, signal actions: task-wide.
    if !shares_fs {
        restore_fs(t, &live.fs, files)?;
    }
    task::restore_rlimits(t.pid(), tc.rlimits.as_ref())?;
    task::restore_oom_score_adj(t.pid(), tc.oom_score_adj)?;
    task::restore_itimers(t, tc.timers.as_ref())?;
    signals::restore_actions(t, &tc.sigactions)?;
    if let Some(on) = tc.child_subreaper {
        task::restore_child_subreaper(t, on)?;
    }
    // File locks once its fds and mappings are in place for good.
    crate::files::lock::restore(t, pid, &files.locks)?;

    // The vdso last among mappings: from here on injection goes through it
    // and the work area can go when the leader is let go.
    mm::restore::place_vdso(t, &live.mm)?;
    t.adopt_scratch(work.addr, work.len as usize);

    // The leader's state, then its credentials around the move into its
    // user namespace (which needs a single thread), then the threads.
    let ns = img.ids.user_ns_id.unwrap_or(1);
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
    // Threads are made after the move and while the leader still holds
    // every capability; each drops its own, the leader last.
    for (i, (tid, tcore, extra)) in img.cores.iter().enumerate().skip(1) {
        let set_tid = img.set_tid(i);
        // (made in the task's own user namespace: `tl` is for it)
        let ids = pstree::Ids {
            want: &set_tid,
            settable: tl.settable,
            crest_last: tl.crest_last,
        };
        let writers = &mut *ctx.writers;
        let mut before = || -> Result<(), RestoreError> {
            if let Some((ns, init)) = tl.middle {
                writers.set_next(ns, init, set_tid[tl.settable])?;
            }
            Ok(())
        };
        let mut th = pstree::fork_thread(t, *tid, &ids, &mut before)?;
        th.adopt_scratch(work.addr + mm::PAGE, (work.len - mm::PAGE) as usize);
        restore_thread(&mut th, img, i, tc.personality)?;
        let tstep = UserStep {
            users: ctx.users,
            helper: None,
            early,
        };
        set_ids(
            &mut th,
            img,
            tcore,
            extra.as_ref(),
            &tstep,
            leader_ids.as_ref(),
        )?;
        set_caps(&mut th, img, tcore)?;
        th.forget_scratch();
        ctx.threads.push(th);
    }
    set_caps(t, img, core)?;
    if let Some(d) = live.mm.dumpable {
        // Changing credentials may have cleared it.
        t.syscall(
            nr::PRCTL,
            &[libc::PR_SET_DUMPABLE as u64, d.clamp(0, 1) as u64],
        )
        .rat(pid, "prctl(PR_SET_DUMPABLE)")?;
    }
    let inner_pid = img.inner_tid(0).unwrap_or(pid);
    signals::restore_pending(t, (inner_pid, inner_pid), tc.signals_s.as_ref(), true)?;
    mm::restore::close_crest_root(t)?;
    Ok(())
}

/// Sets a thread's ids as crest sees them (so that ids its namespace does
/// not map come back exactly), keeping every capability, and for the
/// leader of a task in a nested user namespace moves it there (`helper`
/// holds it). A thread made after the move that has the leader's ids
/// (`leader`) keeps them; one with other ids sets them inside the
/// namespace. Returns the ids (crest's view).
fn set_ids(
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
fn set_caps(t: &mut Tracee, img: &TaskImage, core: &CoreEntry) -> Result<(), RestoreError> {
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
struct UserStep<'a> {
    users: &'a UsernsGraph,
    /// Holder of the user namespace to enter after the ids are set.
    helper: Option<i32>,
    /// It is in its user namespace already.
    early: bool,
}

fn to_array(v: Vec<u32>) -> [u32; 4] {
    let mut a = [0u32; 4];
    for (i, x) in v.into_iter().take(4).enumerate() {
        a[i] = x;
    }
    a
}

/// The per-thread state of thread `i` of the image: altstack, comm,
/// rseq, robust list, clear_child_tid, credentials, private pending
/// signals, FPU and registers (set when the thread is let go).
fn restore_thread(
    t: &mut Tracee,
    img: &TaskImage,
    i: usize,
    personality: u32,
) -> Result<(), RestoreError> {
    let pid = img.pid();
    let tid = t.tid();
    let (image_tid, core, extra) = img
        .cores
        .get(i)
        .map(|c| (c.0, &c.1, c.2.as_ref()))
        .ok_or_else(|| img.bad("a thread without a core image"))?;
    let th = core
        .thread_core
        .as_ref()
        .ok_or_else(|| img.bad("no thread core"))?;
    let info = core
        .thread_info
        .as_ref()
        .ok_or_else(|| img.bad("no thread info"))?;
    signals::restore_altstack(t, th.sas.as_ref())?;
    let comm = th
        .comm
        .as_deref()
        .or(core.tc.as_ref().map(|tc| tc.comm.as_str()))
        .unwrap_or("");
    task::restore_misc(
        t,
        &task::ThreadMisc {
            comm,
            personality,
            rseq: th.rseq_entry.as_ref(),
            robust_list: (th.futex_rla, u64::from(th.futex_rla_len)),
            clear_tid: info.clear_tid_addr,
        },
    )?;
    let inner = (
        img.inner_tid(0).unwrap_or(pid),
        img.inner_tid(i).unwrap_or(image_tid),
    );
    signals::restore_pending(t, inner, th.signals_p.as_ref(), false)?;
    let xsave = match extra.and_then(|e| e.xsave.as_ref()) {
        Some(x) => x.clone(),
        None => {
            let size = ptrace::get_xstate(tid).map_or(2432, |x| x.len());
            regs::xsave_from_fpregs(&info.fpregs, size)
        }
    };
    ptrace::set_xstate(tid, &xsave).rat(
        pid,
        format!("PTRACE_SETREGSET(NT_X86_XSTATE) of thread {tid}"),
    )?;
    let dumped = regs::from_image(&info.gpregs);
    let mask = th
        .blk_sigset
        .or(core.tc.as_ref().map(|tc| tc.blk_sigset))
        .unwrap_or(0);
    t.set_final_state(regs::resume_regs(&dumped), mask);
    Ok(())
}

fn restore_fs(t: &mut Tracee, fs: &FsEntry, files: &RestoreFiles) -> Result<(), RestoreError> {
    let pid = t.pid();
    let cwd = files.reg_path(fs.cwd_id).unwrap_or("/");
    let root = files.reg_path(fs.root_id).unwrap_or("/");
    let mut p = cwd.as_bytes().to_vec();
    p.push(0);
    let addr = t.put(&p).rat(pid, "write cwd")?;
    t.syscall(nr::CHDIR, &[addr])
        .rat(pid, format!("chdir {cwd}"))?;
    if root != "/" {
        let mut p = root.as_bytes().to_vec();
        p.push(0);
        let addr = t.put(&p).rat(pid, "write root")?;
        t.syscall(nr::CHROOT, &[addr])
            .rat(pid, format!("chroot {root}"))?;
    }
    t.syscall(nr::UMASK, &[u64::from(fs.umask.unwrap_or(0o022))])
        .rat(pid, "umask")?;
    Ok(())
}

fn absolute(p: &Path) -> std::io::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}
