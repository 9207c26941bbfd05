//! What the images say about the tree, read and checked before anything
//! is made: every task's images (`TaskImage`), the namespace graphs, and
//! how many outer pid levels the kernel picks (`TreeImages::cut`).

use crate::error::RestoreError;
use crate::error::RoomError;
use crate::ns::error::NsError;
use crate::ns::user::UsernsGraph;
use crate::pstree::TreeError;
use crate::task::coreimg;
use crate::task::error::TaskError;
use crate::{ns, pstree};
use crest_images::pb::crest::CrestThreadExtra;
use crest_images::pb::{
    CoreEntry, FdinfoEntry, FsEntry, MmEntry, PagemapEntry, PstreeEntry, TaskKobjIdsEntry,
};
use crest_images::{magic, names};
use std::path::Path;

/// Everything the images say about one task.
pub(super) struct TaskImage {
    pub(super) entry: PstreeEntry,
    /// Core images: the leader's first, then every other thread's.
    pub(super) cores: Vec<(i32, CoreEntry, Option<CrestThreadExtra>)>,
    pub(super) ids: TaskKobjIdsEntry,
    /// None for a zombie.
    pub(super) live: Option<LiveImage>,
    /// How many outer levels of its ids are left to the kernel: those above
    /// the tree's pid namespace when that is made afresh (see
    /// [`TreeImages::cut`]).
    pub(super) cut: usize,
}

/// What only a live task has.
pub(super) struct LiveImage {
    pub(super) mm: MmEntry,
    pub(super) pagemap: Vec<PagemapEntry>,
    /// Where its pages are (its pages file, its parent images').
    pub(super) pages: crate::mm::restore::Pages,
    pub(super) fdinfo: Vec<FdinfoEntry>,
    pub(super) fs: FsEntry,
}

/// Most tasks plus threads crest restores from one image (as many as it
/// seizes at dump).
pub(super) const MAX_TASKS: usize = 1 << 16;

impl TaskImage {
    /// The signal a task stopped by job control at dump is stopped with
    /// again when it is let go (CRIU's `TASK_STOPPED`, `stop_signo`).
    pub(super) fn stop_signal(&self) -> Result<Option<i32>, RestoreError> {
        let Some(tc) = self.cores.first().and_then(|c| c.1.tc.as_ref()) else {
            return Ok(None);
        };
        if tc.task_state != coreimg::TASK_STOPPED {
            return Ok(None);
        }
        let sig = tc.stop_signo.unwrap_or(libc::SIGSTOP as u32) as i32;
        if !crest_inject::is_stop_signal(sig) {
            return Err(self.bad(&format!(
                "a task stopped by signal {sig}, which stops nothing"
            )));
        }
        Ok(Some(sig))
    }

    pub(super) fn read(dir: &Path, entry: PstreeEntry) -> Result<TaskImage, RestoreError> {
        let pid = entry.pid;
        let ids: TaskKobjIdsEntry = crest_images::read_one(dir, &names::ids(pid), magic::IDS)?;
        let mut cores = Vec::with_capacity(entry.threads.len());
        let mut tids = vec![pid];
        tids.extend(entry.threads.iter().copied().filter(|t| *t != pid));
        for tid in tids {
            let mut core: CoreEntry = crest_images::read_one(dir, &names::core(tid), magic::CORE)?;
            // crest's extras ride in the core; an older crest wrote them
            // to crest-thread-<tid>.img.
            let legacy = names::crest_thread(tid);
            let extra = match core.crest_thread.take() {
                Some(e) => Some(e),
                None if dir.join(&legacy).exists() => {
                    Some(crest_images::read_one(dir, &legacy, magic::CREST_THREAD)?)
                }
                None => None,
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

    pub(super) fn pid(&self) -> i32 {
        self.entry.pid as i32
    }

    /// Thread `i`'s ids at every pid namespace level crest sets, innermost
    /// first, as `clone3`'s `set_tid` wants them.
    pub(super) fn set_tid(&self, i: usize) -> Vec<i32> {
        let ns = self.cores.get(i).and_then(|c| c.2.as_ref());
        let id = self.cores.get(i).map_or(self.entry.pid, |c| c.0 as u32);
        self.levels(ns.map(|e| &e.ns_tids[..]), id)
    }

    /// An id (`NSpid`-like list `ns`, outermost first, or crest's view
    /// `id` alone) as the levels crest sets, innermost first.
    pub(super) fn levels(&self, ns: Option<&[u32]>, id: u32) -> Vec<i32> {
        let mut v: Vec<i32> = match ns {
            Some(ns) if !ns.is_empty() => ns.iter().rev().map(|t| *t as i32).collect(),
            _ => vec![id as i32],
        };
        v.truncate(v.len().saturating_sub(self.cut));
        v
    }

    /// Thread `i`'s id in its own pid namespace.
    pub(super) fn inner_tid(&self, i: usize) -> Option<i32> {
        self.set_tid(i).first().copied()
    }

    /// The process group's id at the levels crest sets, innermost first.
    pub(super) fn pgid_ids(&self) -> Vec<i32> {
        let ns = self.cores.first().and_then(|c| c.2.as_ref());
        self.levels(ns.map(|e| &e.ns_pgids[..]), self.entry.pgid)
    }

    /// The session's id at the levels crest sets, innermost first.
    pub(super) fn sid_ids(&self) -> Vec<i32> {
        let ns = self.cores.first().and_then(|c| c.2.as_ref());
        self.levels(ns.map(|e| &e.ns_sids[..]), self.entry.sid)
    }

    /// What only a live task has (an error naming the image for a zombie).
    pub(super) fn live_image(&self) -> Result<&LiveImage, RestoreError> {
        self.live
            .as_ref()
            .ok_or_else(|| self.bad("not a live task"))
    }

    /// The task-wide part of the leader's core.
    pub(super) fn task_core(&self) -> Result<&crest_images::pb::TaskCoreEntry, RestoreError> {
        self.cores
            .first()
            .and_then(|c| c.1.tc.as_ref())
            .ok_or_else(|| self.bad("no task core"))
    }

    pub(super) fn bad(&self, what: &str) -> RestoreError {
        TaskError::BadImage {
            file: names::core(self.entry.pid),
            what: what.into(),
        }
        .in_restore(self.pid())
    }
}

impl LiveImage {
    pub(super) fn read(
        dir: &Path,
        pid: u32,
        ids: &TaskKobjIdsEntry,
    ) -> Result<LiveImage, RestoreError> {
        let mem = crate::mm::image::read(dir, pid)?;
        let abs = std::path::absolute(dir).map_err(|source| RestoreError::Io {
            pid: pid as i32,
            step: "images directory path".into(),
            source,
        })?;
        let pages = crate::mm::restore::Pages::load(&abs, pid, mem.pages_id, &mem.pagemap)?;
        let fdinfo_name = names::fdinfo(ids.files_id);
        let fdinfo = if ids.files_id == ids.vm_id || dir.join(&fdinfo_name).exists() {
            crest_images::read_image(dir, &fdinfo_name, magic::FDINFO)?
        } else {
            Vec::new()
        };
        let fs: FsEntry = crest_images::read_one(dir, &names::fs(pid), magic::FS)?;
        Ok(LiveImage {
            mm: mem.mm,
            pagemap: mem.pagemap,
            pages,
            fdinfo,
            fs,
        })
    }
}

/// What the images say about the whole tree, read and checked.
pub(super) struct TreeImages {
    pub(super) imgs: Vec<TaskImage>,
    pub(super) users: UsernsGraph,
    pub(super) others: ns::other::OtherGraph,
    pub(super) pidns: ns::pid::PidnsGraph,
    /// When the root is the init of a pid namespace, that namespace is made
    /// afresh below crest's, as CRIU does: the root is pid 1 inside and
    /// gets whatever pid the kernel gives it outside, and so do the ids of
    /// every task at the levels above the namespace (`cut` of them).
    pub(super) cut: usize,
}

/// Reads `pstree.img`, every task's images and the namespace graphs.
pub(super) fn read_tree_images(dir: &Path) -> Result<TreeImages, RestoreError> {
    let tree: Vec<PstreeEntry> = crest_images::read_image(dir, names::PSTREE, magic::PSTREE)?;
    let threads: usize = tree.iter().map(|e| e.threads.len().max(1)).sum();
    if tree.len() > MAX_TASKS || threads > MAX_TASKS {
        return Err(TreeError::BadImage {
            file: names::PSTREE.into(),
            what: format!(
                "{} tasks with {threads} threads, more than {MAX_TASKS}",
                tree.len()
            ),
        }
        .in_tree_restore());
    }
    let order = pstree::tree_order(&tree).map_err(|e| e.in_tree_restore())?;
    let mut imgs = order
        .iter()
        .map(|&i| TaskImage::read(dir, tree[i].clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let pid_of: Vec<(i32, u32)> = imgs
        .iter()
        .filter_map(|i| Some((i.pid(), i.ids.pid_ns_id?)))
        .collect();
    let pidns = ns::pid::PidnsGraph::from_entries(&ns::other::read_entries(dir)?, &pid_of)
        .map_err(|why| {
            NsError::Pidns {
                file: names::CREST_NS,
                why,
            }
            .in_tree_restore()
        })?;
    let cut = fresh_levels(&imgs, &pidns)?;
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
    Ok(TreeImages {
        imgs,
        users,
        others,
        pidns,
        cut,
    })
}

/// How many outer levels of every task's ids the kernel picks: all above
/// the root's pid namespace when the root is its init or the namespace is
/// an external one (the caller's: the root is forked into it), none
/// otherwise. Every task must then have ids inside that namespace.
pub(super) fn fresh_levels(
    imgs: &[TaskImage],
    pidns: &ns::pid::PidnsGraph,
) -> Result<usize, RestoreError> {
    let root = &imgs[0];
    let levels = root.set_tid(0);
    if pidns
        .list
        .iter()
        .any(|n| n.external_key.is_some() && Some(n.id) != root.ids.pid_ns_id)
    {
        return Err(root.bad("an external pid namespace that is not the root's"));
    }
    let Some(own) = root.ids.pid_ns_id else {
        return Ok(0);
    };
    let external = pidns.node(own).is_some_and(|n| n.external_key.is_some());
    if levels.first() != Some(&1) && !external {
        return Ok(0);
    }
    if external && levels.len() < 2 {
        return Err(root.bad("no id in the external pid namespace of the tree's root"));
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
pub(super) fn init_index(imgs: &[TaskImage], n: u32) -> Option<usize> {
    imgs.iter()
        .position(|i| i.ids.pid_ns_id == Some(n) && i.inner_tid(0) == Some(1))
}

/// The pid (crest's view) of the restored init of pid namespace `n`;
/// `actual` holds the pids of the tasks forked so far, in tree order.
pub(super) fn init_of(imgs: &[TaskImage], actual: &[i32], n: u32) -> Option<i32> {
    init_index(imgs, n).and_then(|k| actual.get(k).copied())
}

/// `inventory.img` must be there, be CRIU's, and have image version 2.
pub fn check_inventory(dir: &Path, tcp_close: bool) -> Result<(), RestoreError> {
    let inv: crest_images::pb::InventoryEntry =
        crest_images::read_one(dir, names::INVENTORY, magic::INVENTORY)?;
    if inv.tcp_close == Some(true) && !tcp_close {
        // (CRIU's rule: the images lack the connections)
        return Err(RestoreError::Refused {
            refused: vec![crate::error::Refused {
                option: "--tcp-close".into(),
                why: "the images were dumped with it (they hold no connections), so the restore \
                      needs it too"
                    .into(),
            }],
        });
    }
    if inv.img_version != crest_images::INVENTORY_IMG_VERSION {
        return Err(TreeError::BadImage {
            file: names::INVENTORY.into(),
            what: format!(
                "image version {}, crest reads version {}",
                inv.img_version,
                crest_images::INVENTORY_IMG_VERSION
            ),
        }
        .in_tree_restore());
    }
    Ok(())
}

pub(super) fn parent_index(imgs: &[TaskImage], k: usize) -> Result<usize, RestoreError> {
    let ppid = imgs[k].entry.ppid;
    imgs[..k]
        .iter()
        .position(|i| i.entry.pid == ppid)
        .ok_or_else(|| imgs[k].bad("parent is not restored before the task"))
}

/// Refuses images that would give a task ids, capabilities or namespaces
/// the caller does not hold (see [`crate::privilege`]), before anything is
/// made.
pub(super) fn check_privilege(
    caller: &crate::privilege::Caller,
    ti: &TreeImages,
    joined: &[crate::opts::JoinNs],
) -> Result<(), RestoreError> {
    if !caller.restricted {
        return Ok(());
    }
    caller.check_can_restore()?;
    let root_ns = |id: u32| ti.users.node(id).is_none_or(|n| n.parent.is_none());
    for img in &ti.imgs {
        let in_root = root_ns(img.ids.user_ns_id.unwrap_or(1));
        for (tid, core, _) in &img.cores {
            let creds = core.thread_core.as_ref().and_then(|t| t.creds.as_ref());
            caller.check_creds(img.pid(), &names::core(*tid as u32), creds, in_root)?;
        }
    }
    for n in &ti.users.nodes {
        if n.parent.is_some_and(root_ns) {
            caller.check_userns(n, &names::userns(n.id))?;
        }
    }
    for n in &ti.others.list {
        if root_ns(n.owner_userns) && n.external_key.is_none() {
            let kind = ns::other::KINDS
                .iter()
                .find(|k| k.flag == n.nstype)
                .map_or("unknown", |k| k.name);
            // (joining one the caller names is the kernel's to allow)
            if !joined.iter().any(|j| j.ns == kind) {
                caller.check_ns(kind, names::CREST_NS)?;
            }
        }
    }
    for n in &ti.pidns.list {
        if root_ns(n.owner_userns) {
            caller.check_ns("pid", names::CREST_NS)?;
        }
    }
    Ok(())
}

/// The first four ids of `v` (real, effective, saved, fs), zeros for
/// those it lacks.
pub(super) fn to_array(v: Vec<u32>) -> [u32; 4] {
    let mut a = [0u32; 4];
    for (i, x) in v.into_iter().take(4).enumerate() {
        a[i] = x;
    }
    a
}
