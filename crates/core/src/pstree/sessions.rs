//! Sessions and process groups at restore: a task forked from its
//! session's leader when the leader is not its ancestor, helpers that
//! stand in for a leader that is gone, and the groups set once every task
//! exists.

use crate::clone::{clone_plain, clone_with, fork_child, pid_max, take_sigchld, Ids};
use crate::error::RoomError;
use crate::error::{RestoreCtx, RestoreError};
use crate::procfs;
use crate::pstree::TreeError;
use crest_images::pb::PstreeEntry;
use crest_inject::{nr, Tracee};

/// Short-lived tasks that stand in for a session or group leader that is
/// gone, as CRIU's helpers do: a helper takes the leader's pid, creates
/// the session (setsid) or group (setpgid), forks or hosts the members,
/// then exits and is reaped by its parent.
#[derive(Default)]
pub struct LeaderHelpers {
    /// (session or group id, helper, index of its parent task, the
    /// helper's pid as its parent sees it).
    made: Vec<(i32, Tracee, usize, i32)>,
}

impl LeaderHelpers {
    fn get(&mut self, id: i32) -> Option<&mut Tracee> {
        self.made.iter_mut().find(|h| h.0 == id).map(|h| &mut h.1)
    }

    /// Ends every helper; the members of a session helper are reparented to
    /// its parent, which must be a child subreaper.
    pub fn finish(self, tasks: &mut [Option<Tracee>]) -> Result<(), RestoreError> {
        for (id, h, parent, seen) in self.made {
            let pid = h.pid();
            h.exit_as(0).rat(pid, "end a session/group helper")?;
            let p = tasks[parent].as_mut().ok_or_else(|| {
                TreeError::Unsupported {
                    what: "a helper whose parent is a zombie".into(),
                }
                .in_restore(id)
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
    helpers: &mut LeaderHelpers,
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
    let parent = tasks[p].as_mut().ok_or_else(|| {
        TreeError::Unsupported {
            what: "a task whose parent is a zombie".into(),
        }
        .in_restore(e.pid as i32)
    })?;
    if forks_directly(entries, k, p) {
        return fork_child(parent, e, &how.ids, flags, before);
    }
    let sid = e.sid as i32;
    if let Some(l) = entries.iter().position(|x| x.pid == e.sid) {
        return fork_from_leader(tasks, helpers, (k, p, l), e, how, before);
    }
    if !how.parent_is_subreaper {
        return Err(TreeError::Unsupported { what: format!(
                "session {sid} whose leader is gone, in a task whose parent {} is not a child subreaper",
                e.ppid
            ) }.in_restore(e.pid as i32));
    }
    if how.new_pidns {
        return Err(TreeError::Unsupported {
            what: "the init of a pid namespace in a session whose leader is gone".into(),
        }
        .in_restore(e.pid as i32));
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
    let h = helpers.get(sid).ok_or_else(|| {
        TreeError::Unsupported {
            what: "a lost session helper".into(),
        }
        .in_restore(sid)
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
    helpers: &mut LeaderHelpers,
    (k, p, l): (usize, usize, usize),
    e: &PstreeEntry,
    how: &ForkHow<'_>,
    before: &mut dyn FnMut(&[i32]) -> Result<(), RestoreError>,
) -> Result<Tracee, RestoreError> {
    let sid = e.sid as i32;
    let refuse = |what: String| {
        TreeError::Unsupported {
            what: format!(
                "session {sid}, whose leader is in the tree but is not an ancestor, {what}"
            ),
        }
        .in_restore(e.pid as i32)
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
    helpers: &mut LeaderHelpers,
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
        let t = tasks[i].as_mut().ok_or_else(|| {
            TreeError::Unsupported {
                what: "a zombie group member".into(),
            }
            .in_restore(pid)
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
