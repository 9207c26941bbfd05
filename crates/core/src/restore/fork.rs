//! Forking the tree: every task from its real parent with its ids at
//! every pid namespace level (the root from crest), pid namespaces made
//! inside their owners, sessions and groups, zombies ended.

use super::images::{init_of, parent_index, TaskImage, TreeImages};
use crate::clone::CloneError;
use crate::error::RoomError;
use crate::error::{RestoreCtx, RestoreError};
use crate::ns::error::NsError;
use crate::remote::Remote;
use crate::task::error::TaskError;
use crate::{mm, ns, pstree};
use crest_images::pb::PstreeEntry;
use crest_inject::{nr, Tracee};
use crest_sys::proc::{spawn_sibling, spawn_stopped_with, SessionSetup};

/// How task `k`'s pid levels are set when it is forked (or makes threads)
/// inside user namespace `userns`.
pub(super) fn levels_of(
    ti: &TreeImages,
    actual: &[i32],
    k: usize,
    userns: u32,
) -> Result<ns::pid::Levels, RestoreError> {
    let init = |n: u32| init_of(&ti.imgs, actual, n);
    ti.pidns
        .levels(ti.imgs[k].ids.pid_ns_id, userns, &ti.users, &init, ti.cut)
        .map_err(|why| {
            NsError::Pidns {
                file: crest_images::names::CREST_NS,
                why,
            }
            .in_restore(ti.imgs[k].pid())
        })
}

/// The tree forked, before any task is transformed.
pub(super) struct Forked {
    pub(super) tasks: Vec<Option<Tracee>>,
    /// Every task's pid in crest's namespace (the image's unless the tree's
    /// pid namespace was made afresh).
    pub(super) actual: Vec<i32>,
    /// The user namespace each task is in while it is restored: crest's
    /// (1) but for tasks forked inside a nested one.
    pub(super) cur_userns: Vec<u32>,
    /// Time namespaces that a task made for its children (unshare without
    /// fork), made again by it: its children got them at fork.
    pub(super) made_time: std::collections::HashSet<u32>,
    /// The areas each task holds to share pages with its parent or its
    /// children (see `mm::cow`).
    pub(super) held: Vec<Vec<mm::cow::Held>>,
    /// The init of the pid namespace a task's `pid_for_children` is to
    /// point at, when the task can set it only from its own user namespace
    /// (an unprivileged crest): set at the end of its transform.
    pub(super) later_pid_for_children: Vec<Option<i32>>,
}

/// Forks every task from its parent with its pid (the root from crest),
/// puts them in their sessions and groups, and ends the zombies.
pub(super) fn fork_tree(
    ti: &TreeImages,
    (userns, others_h): (&ns::user::UsernsHelpers, &ns::other::NsHelpers),
    writers: &mut ns::pid::Writers,
    (sibling, ext_pidns): (bool, Option<&std::os::fd::OwnedFd>),
    cgroups: &[ns::cgroup::Place],
) -> Result<Forked, RestoreError> {
    let imgs = &ti.imgs;
    let mut f = Forking {
        ti,
        userns,
        others_h,
        entries: imgs.iter().map(|i| &i.entry).collect(),
        tasks: Vec::with_capacity(imgs.len()),
        actual: Vec::with_capacity(imgs.len()),
        cur_userns: vec![1; imgs.len()],
        made_time: std::collections::HashSet::new(),
        helpers: pstree::sessions::LeaderHelpers::default(),
        sharing: Sharing::new(imgs),
    };
    let root = f.root(sibling, ext_pidns)?;
    ns::cgroup::place(root.pid(), cgroups)?;
    f.sharing.held.push(Vec::new());
    f.actual.push(root.pid());
    f.tasks.push(Some(root));
    for k in 1..imgs.len() {
        let p = parent_index(imgs, k)?;
        f.enter_time_owner(k, p)?;
        f.cur_userns[k] = f.cur_userns[p];
        make_time_for_children(&imgs[p], &ti.others, f.tasks[p].as_mut(), &mut f.made_time)?;
        let fresh = new_pidns(imgs, &ti.pidns, k, Some(p))?;
        let owner = pidns_owner(&imgs[k], &ti.pidns);
        let child = if fresh && owner != f.cur_userns[p] {
            // A pid namespace owned by another user namespace than the
            // parent is in: made by a helper inside the owner.
            let child = f.init_in_owner(k, p, owner)?;
            // (forked by a helper: it has none of its parent's memory)
            f.sharing.held.push(Vec::new());
            child
        } else {
            f.fork_child(k, p, fresh, writers)?
        };
        f.actual.push(child.pid());
        f.tasks.push(Some(child));
    }
    f.finish(writers)
}

/// The tree while it is forked, in image order.
struct Forking<'a> {
    ti: &'a TreeImages,
    userns: &'a ns::user::UsernsHelpers,
    others_h: &'a ns::other::NsHelpers,
    entries: Vec<&'a PstreeEntry>,
    tasks: Vec<Option<Tracee>>,
    actual: Vec<i32>,
    cur_userns: Vec<u32>,
    made_time: std::collections::HashSet<u32>,
    helpers: pstree::sessions::LeaderHelpers,
    sharing: Sharing<'a>,
}

impl Forking<'_> {
    /// The root, from crest (or from a helper inside the nested user
    /// namespace owning its fresh pid namespace).
    fn root(
        &mut self,
        sibling: bool,
        ext_pidns: Option<&std::os::fd::OwnedFd>,
    ) -> Result<Tracee, RestoreError> {
        let (imgs, pidns) = (&self.ti.imgs, &self.ti.pidns);
        let root_new_pidns = new_pidns(imgs, pidns, 0, None)?;
        let root_owner = pidns_owner(&imgs[0], pidns);
        if !root_new_pidns || root_owner == 1 {
            return spawn_root(&imgs[0], root_new_pidns, sibling, ext_pidns);
        }
        // a fresh pid namespace owned by a nested user namespace: made
        // from inside it
        let holder = self.userns.pid_of(root_owner).ok_or_else(|| {
            imgs[0].bad("the init of a pid namespace owned by a user namespace crest did not make")
        })?;
        let set_tid = imgs[0].set_tid(0);
        let joins = self.others_h.early_joins(&self.ti.others, imgs[0].pid());
        let t = crate::ns::pidinit::fork_init_in_userns(
            None,
            &imgs[0].entry,
            &set_tid,
            false,
            (holder, &joins),
            sibling,
        )?;
        self.cur_userns[0] = root_owner;
        Ok(t)
    }

    /// Parent `p` of task `k` moves into the user namespace owning the
    /// time namespace it made for its children, if it has not yet: its
    /// unshare then makes the namespace owned by it.
    fn enter_time_owner(&mut self, k: usize, p: usize) -> Result<(), RestoreError> {
        let (imgs, users) = (&self.ti.imgs, &self.ti.users);
        let Some(owner) = time_owner(&imgs[p], &self.ti.others, &self.made_time) else {
            return Ok(());
        };
        if owner == self.cur_userns[p] {
            return Ok(());
        }
        let u = imgs[p].ids.user_ns_id.unwrap_or(1);
        if !users.is_within(owner, self.cur_userns[p]) || !users.is_within(u, owner) {
            return Err(imgs[p].bad(
                "a time namespace for its children owned by a user namespace it is not on its way to",
            ));
        }
        let holder = self.userns.pid_of(owner).ok_or_else(|| {
            imgs[p].bad("a time namespace owned by a user namespace crest did not make")
        })?;
        let t = self.tasks[p]
            .as_mut()
            .ok_or_else(|| imgs[k].bad("parent is a zombie"))?;
        ns::user::enter(t, holder)?;
        self.cur_userns[p] = owner;
        Ok(())
    }

    /// Task `k`, the init of a fresh pid namespace owned by user namespace
    /// `owner` (not the one its parent `p` is in), forked by a helper
    /// inside the owner.
    fn init_in_owner(&mut self, k: usize, p: usize, owner: u32) -> Result<Tracee, RestoreError> {
        let imgs = &self.ti.imgs;
        let holder = self.userns.pid_of(owner).ok_or_else(|| {
            imgs[k].bad("the init of a pid namespace owned by a user namespace crest did not make")
        })?;
        let joins = self.others_h.early_joins(&self.ti.others, imgs[k].pid());
        let parent = self.tasks[p]
            .as_mut()
            .ok_or_else(|| imgs[k].bad("parent is a zombie"))?;
        let child = crate::ns::pidinit::fork_init_in_userns(
            Some(parent),
            &imgs[k].entry,
            &imgs[k].set_tid(0),
            self.ti.cut == 0,
            (holder, &joins),
            false,
        )?;
        self.cur_userns[k] = owner;
        Ok(child)
    }

    /// Task `k` forked by its parent `p` (or by a session or group helper)
    /// with its ids, `fresh` if it is the init of a new pid namespace.
    fn fork_child(
        &mut self,
        k: usize,
        p: usize,
        fresh: bool,
        writers: &mut ns::pid::Writers,
    ) -> Result<Tracee, RestoreError> {
        let imgs = &self.ti.imgs;
        // (orphans go to a child subreaper, or to the init of the pid
        // namespace)
        let subreaper = imgs[p].cores[0]
            .1
            .tc
            .as_ref()
            .and_then(|tc| tc.child_subreaper)
            .unwrap_or(false)
            || imgs[p].set_tid(0).first() == Some(&1);
        let set_tid = imgs[k].set_tid(0);
        let sid_ids = imgs[k].sid_ids();
        let levels = levels_of(self.ti, &self.actual, k, self.cur_userns[p])?;
        let how = pstree::sessions::ForkHow {
            ids: crate::clone::Ids {
                want: &set_tid,
                settable: levels.settable,
                crest_last: levels.crest_last,
            },
            sid_ids: &sid_ids,
            share_files: imgs[k].ids.files_id == imgs[p].ids.files_id,
            share_fs: imgs[k].ids.fs_id == imgs[p].ids.fs_id,
            new_pidns: fresh,
            parent_is_subreaper: subreaper,
        };
        let mut before = |want: &[i32]| -> Result<(), RestoreError> {
            if let (Some((ns, init)), Some(&next)) = (levels.middle, want.get(levels.settable)) {
                writers.set_next(ns, init, next)?;
            }
            Ok(())
        };
        let direct = pstree::sessions::forks_directly(&self.entries, k, p);
        if direct {
            self.sharing.prepare(&mut self.tasks, p)?;
        }
        let child = pstree::sessions::fork_in_session(
            &mut self.tasks,
            &mut self.helpers,
            &self.entries,
            k,
            p,
            &how,
            &mut before,
        )?;
        self.sharing.forked(p, direct);
        Ok(child)
    }

    /// Every task forked: the process groups set (a group helper is forked
    /// by a member, in the member's user namespace), `pid_for_children`
    /// pointed, the helpers gone, the zombies ended.
    fn finish(mut self, writers: &mut ns::pid::Writers) -> Result<Forked, RestoreError> {
        let (ti, imgs) = (self.ti, &self.ti.imgs);
        let pgid_ids: Vec<Vec<i32>> = imgs.iter().map(TaskImage::pgid_ids).collect();
        let group_levels = (0..imgs.len())
            .map(|k| levels_of(ti, &self.actual, k, self.cur_userns[k]))
            .collect::<Result<Vec<_>, _>>()?;
        pstree::sessions::set_groups(
            &mut self.tasks,
            &mut self.helpers,
            &self.entries,
            &pgid_ids,
            ti.cut > 0,
            (&group_levels, writers),
        )?;
        let later_pid_for_children = set_pid_for_children(imgs, &self.actual, &mut self.tasks)?;
        self.helpers.finish(&mut self.tasks)?;
        end_zombies(imgs, &mut self.tasks, self.userns, &self.cur_userns)?;
        Ok(Forked {
            tasks: self.tasks,
            actual: self.actual,
            cur_userns: self.cur_userns,
            made_time: self.made_time,
            held: self.sharing.held,
            later_pid_for_children,
        })
    }
}

/// What the rest of the restore learns once the tree is forked: the pid
/// namespaces' inits (to open their files through), the pids queued
/// messages name; returns how each task's threads get their ids (they are
/// made after the task moved into its own user namespace).
pub(super) fn note_forked(
    ti: &TreeImages,
    actual: &[i32],
    files: &mut crate::files::context::RestoreFiles,
) -> Result<Vec<ns::pid::Levels>, RestoreError> {
    let imgs = &ti.imgs;
    for n in &ti.pidns.list {
        if let Some(p) = init_of(&ti.imgs, actual, n.id) {
            files
                .ns_holders
                .insert((libc::CLONE_NEWPID as u32, n.id), (p, false));
        }
    }
    // (queued messages name their senders by the pids they had)
    files.socks.pid_map = imgs
        .iter()
        .zip(actual)
        .filter(|(i, a)| i.pid() != **a)
        .map(|(i, a)| (i.pid(), *a))
        .collect();
    // How each task's threads get their ids: they are made after the task
    // moved into its own user namespace.
    (0..imgs.len())
        .map(|k| levels_of(ti, actual, k, imgs[k].ids.user_ns_id.unwrap_or(1)))
        .collect()
}

/// Pages shared copy-on-write between parents and children: each task's
/// held areas (see `mm::cow`), made once before it forks its first child.
struct Sharing<'a> {
    imgs: &'a [TaskImage],
    /// Every VMA of the tree: held areas stay clear of them.
    avoid: Vec<(u64, u64)>,
    held: Vec<Vec<mm::cow::Held>>,
    prepared: Vec<bool>,
}

impl<'a> Sharing<'a> {
    fn new(imgs: &'a [TaskImage]) -> Self {
        let avoid = imgs
            .iter()
            .filter_map(|i| i.live.as_ref())
            .flat_map(|l| l.mm.vmas.iter().map(|v| (v.start, v.end)))
            .collect();
        Sharing {
            imgs,
            avoid,
            held: Vec::with_capacity(imgs.len()),
            prepared: vec![false; imgs.len()],
        }
    }

    /// Task `p` about to fork a child: its held areas made, once.
    fn prepare(&mut self, tasks: &mut [Option<Tracee>], p: usize) -> Result<(), RestoreError> {
        if self.prepared[p] {
            return Ok(());
        }
        self.prepared[p] = true;
        let (Some(t), Some(live)) = (tasks[p].as_mut(), self.imgs[p].live.as_ref()) else {
            return Ok(());
        };
        let children: Vec<&crest_images::pb::MmEntry> = (1..self.imgs.len())
            .filter(|&c| parent_index(self.imgs, c).ok() == Some(p))
            .filter_map(|c| self.imgs[c].live.as_ref().map(|l| &l.mm))
            .collect();
        self.held[p] = mm::cow::prepare(
            t,
            (&live.mm, &live.pages),
            &self.held[p],
            &children,
            &self.avoid,
        )?;
        Ok(())
    }

    /// A child of `p` forked: straight from `p` (it has `p`'s held areas)
    /// or through a helper (it has none).
    fn forked(&mut self, p: usize, direct: bool) {
        let h = if direct {
            self.held[p]
                .iter()
                .map(mm::cow::Held::handed_down)
                .collect()
        } else {
            Vec::new()
        };
        self.held.push(h);
    }
}

/// Zombies end now, with their exit status, in their user namespace and
/// with their credentials (the kernel keeps both for a zombie).
pub(super) fn end_zombies(
    imgs: &[TaskImage],
    tasks: &mut [Option<Tracee>],
    userns: &ns::user::UsernsHelpers,
    cur_userns: &[u32],
) -> Result<(), RestoreError> {
    for k in 1..imgs.len() {
        let Some(tc) = imgs[k].cores[0].1.tc.as_ref() else {
            continue;
        };
        if imgs[k].live.is_some() {
            continue;
        }
        let p = parent_index(imgs, k)?;
        let (Some(mut t), status) = (tasks[k].take(), tc.exit_code as i32) else {
            continue;
        };
        zombie_creds(&mut t, &imgs[k], userns, cur_userns[k])?;
        let parent = tasks[p]
            .as_mut()
            .ok_or_else(|| imgs[k].bad("parent is a zombie"))?;
        crate::clone::make_zombie(t, status, &tc.comm, parent)?;
    }
    Ok(())
}

/// Gives a zombie-to-be its ids and moves it into its user namespace
/// (the kernel keeps both for a zombie). The ids are set first, as the
/// namespace it was forked in sees crest's view of them (one its own
/// namespace does not map stays as crest saw it), and kept across the move.
fn zombie_creds(
    t: &mut Tracee,
    img: &TaskImage,
    userns: &ns::user::UsernsHelpers,
    cur: u32,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let ns = img.ids.user_ns_id.unwrap_or(1);
    if let Some(extra) = img.cores[0].2.as_ref().filter(|e| e.outer_uids.len() == 4) {
        let now = crate::procfs::read_status(pid).ok();
        let same = now.as_ref().is_some_and(|s| {
            s.uid.to_vec() == extra.outer_uids
                && s.gid.to_vec() == extra.outer_gids
                && s.groups == extra.outer_groups
        });
        if !same {
            let map = |file: &str| std::fs::read_to_string(format!("/proc/{pid}/{file}"));
            let inside = |m: &std::io::Result<String>, ids: &[u32]| -> Option<Vec<u32>> {
                let m = m.as_ref().ok()?;
                ids.iter().map(|&i| crate::task::inside_id(m, i)).collect()
            };
            let (umap, gmap) = (map("uid_map"), map("gid_map"));
            let (Some(uids), Some(gids)) = (
                inside(&umap, &extra.outer_uids),
                inside(&gmap, &extra.outer_gids),
            ) else {
                return Err(TaskError::Unsupported {
                    what: "a zombie whose ids the user namespace it is made in does not map".into(),
                }
                .in_restore(pid));
            };
            let groups = inside(&gmap, &extra.outer_groups).unwrap_or_default();
            let allow = map("setgroups").is_ok_and(|s| s.trim() == "allow");
            let ids = crate::task::creds::Ids {
                uids: super::images::to_array(uids),
                gids: super::images::to_array(gids),
                groups,
            };
            crate::task::creds::set_ids(t, &ids, allow)?;
        }
    }
    if ns != cur {
        let Some(holder) = userns.pid_of(ns) else {
            return Err(img.bad("a zombie in a user namespace crest did not make"));
        };
        ns::user::enter(t, holder)?;
    }
    // (new credentials made it non-dumpable, and /proc of it root's: a
    // zombie has no memory left to protect)
    t.prctl(&[libc::PR_SET_DUMPABLE as u64, 1], "prctl(PR_SET_DUMPABLE)")?;
    Ok(())
}

/// A task whose children go to a time namespace of their own makes it
/// again (`unshare(CLONE_NEWTIME)` and its offsets) before its first child.
/// The owner of the time namespace task `img` made for its children, if
/// it is still to be made.
pub(super) fn time_owner(
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

pub(super) fn make_time_for_children(
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
/// namespace's init. Returns, per task, the init to point at later, from
/// the task's own user namespace, where crest had no right to yet.
pub(super) fn set_pid_for_children(
    imgs: &[TaskImage],
    actual: &[i32],
    tasks: &mut [Option<Tracee>],
) -> Result<Vec<Option<i32>>, RestoreError> {
    let mut later = vec![None; imgs.len()];
    for (k, img) in imgs.iter().enumerate() {
        let Some(x) = img.cores[0].2.as_ref().and_then(|e| e.pid_for_children) else {
            continue;
        };
        let Some(init) = init_of(imgs, actual, x) else {
            continue;
        };
        if let Some(t) = tasks[k].as_mut() {
            let path = format!("/proc/{init}/ns/pid");
            let fd = t.open_crest_side(&path, libc::O_RDONLY)?;
            let r = t.syscall(nr::SETNS, &[fd, libc::CLONE_NEWPID as u64]);
            t.close(fd)?;
            match r {
                Err(crest_inject::InjectError::Syscall { ref source, .. })
                    if source.raw_os_error() == Some(libc::EPERM) =>
                {
                    later[k] = Some(init);
                }
                r => {
                    r.rat(img.pid(), "setns of pid_for_children")?;
                }
            }
        }
    }
    Ok(later)
}

/// The user namespace that owns task `img`'s pid namespace.
pub(super) fn pidns_owner(img: &TaskImage, pidns: &ns::pid::PidnsGraph) -> u32 {
    img.ids
        .pid_ns_id
        .and_then(|n| pidns.node(n))
        .map_or(1, |n| n.owner_userns)
}

/// Whether task `k` is the init of a pid namespace of its own, a child of
/// its parent's (task `p`, or crest's for the root).
pub(super) fn new_pidns(
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
    if p.is_none() && node.external_key.is_some() {
        return Ok(false); // the caller's: the root is forked into it
    }
    // (the root's namespace is made below crest's whatever its parent was)
    if (p.is_some() && node.parent != parent_ns) || imgs[k].inner_tid(0) != Some(1) {
        return Err(imgs[k].bad(
            "a task in a pid namespace other than its parent's that is not the init (pid 1) of a child namespace",
        ));
    }
    Ok(true)
}

/// Forks the root task from crest with its old pid at every level, or as
/// pid 1 of a new pid namespace if it was an init, or with its old pid
/// inside the caller's pid namespace `join` (an external one); a
/// `sibling` (CRIU's `--restore-sibling`) becomes a child of crest's
/// parent.
pub(super) fn spawn_root(
    img: &TaskImage,
    new_pidns: bool,
    sibling: bool,
    join: Option<&std::os::fd::OwnedFd>,
) -> Result<Tracee, RestoreError> {
    let pid = img.pid();
    let set_tid = img.set_tid(0);
    if let (false, None, Some(&mine)) = (new_pidns, join, set_tid.last()) {
        // (the dumped root, killed since, may still hold its pid: a zombie
        // pid 1 reaps late)
        crate::clone::wait_for_leaving(&[mine], std::time::Duration::from_secs(10));
    }
    let flags = if new_pidns {
        libc::CLONE_NEWPID as u64
    } else {
        0
    };
    // crest's children go into the caller's namespace for this one fork
    let back = match join {
        Some(fd) => {
            let mine =
                std::fs::File::open("/proc/self/ns/pid").rat(pid, "open crest's pid namespace")?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(fd),
                Some(rustix::thread::LinkNameSpaceType::ProcessID),
            )
            .rat(pid, "setns into the external pid namespace")?;
            Some(mine)
        }
        None => None,
    };
    let spawned = if sibling {
        spawn_sibling(&set_tid, session_of(img), flags)
    } else {
        spawn_stopped_with(&set_tid, session_of(img), flags)
    };
    if let Some(mine) = back {
        if let Err(e) = rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&mine),
            Some(rustix::thread::LinkNameSpaceType::ProcessID),
        ) {
            if let Ok(child) = spawned {
                let _ = crest_sys::misc::kill(child, libc::SIGKILL);
            }
            return Err(e).rat(pid, "setns back to crest's pid namespace");
        }
    }
    let child = spawned.map_err(|e| match e.raw_os_error() {
        Some(libc::EEXIST) => crate::clone::pid_taken(pid, &set_tid),
        _ => RestoreError::Io {
            pid,
            step: format!("clone3 with set_tid {set_tid:?}"),
            source: e,
        },
    })?;
    let mut t = if sibling {
        ns::pid::seize_sibling(child)?
    } else {
        Tracee::from_stopped_child(child).rat(pid, "attach to the new task")?
    };
    if !crate::clone::has_ids(child, &set_tid) {
        return Err(CloneError::Unsupported {
            what: format!("clone3 with set_tid {set_tid:?} gave pid {child}"),
        }
        .in_restore(pid));
    }
    t.trace_new_tasks().rat(pid, "trace new tasks")?;
    t.use_vdso_syscall()
        .rat(pid, "find a syscall instruction")?;
    Ok(t)
}

pub(super) fn session_of(img: &TaskImage) -> SessionSetup {
    if img.entry.sid == img.entry.pid {
        SessionSetup::NewSession
    } else if img.entry.pgid == img.entry.pid {
        SessionSetup::NewGroup
    } else {
        SessionSetup::Inherit
    }
}
