//! One task of the tree being restored: its image, and what the restore
//! learned about it since the fork (its tracee, its pid now, the user
//! namespace it is in, how its threads get their ids).

use super::fork::Forked;
use super::images::{parent_index, TaskImage, TreeImages};
use crate::error::RestoreError;
use crate::{mm, ns};
use crest_inject::Tracee;

/// A task of the tree, forked and not yet transformed.
pub(super) struct RestoreTask<'a> {
    pub(super) img: &'a TaskImage,
    /// The stopped fork (none for a zombie, ended at the fork).
    pub(super) tracee: Option<Tracee>,
    /// Its pid in crest's namespace (the image's unless the tree's pid
    /// namespace was made afresh).
    pub(super) pid_now: i32,
    /// The user namespace it is in while it is restored: crest's (1) but
    /// for tasks forked inside a nested one.
    pub(super) userns_now: u32,
    /// How its threads get their ids (they are made after it moved into
    /// its own user namespace).
    pub(super) thread_levels: ns::pid::Levels,
    /// The areas it holds to share pages with its parent or its children
    /// (see `mm::cow`).
    pub(super) held: Vec<mm::cow::Held>,
    /// The init of the pid namespace its `pid_for_children` is to point
    /// at, when it can set it only from its own user namespace (an
    /// unprivileged crest): set at the end of its transform.
    pub(super) later_pid_for_children: Option<i32>,
    /// It shares its parent's fd table, and its parent's fs (root, cwd,
    /// umask).
    pub(super) shares_files: bool,
    pub(super) shares_fs: bool,
}

/// The tree's tasks, in image order, from what the fork made.
pub(super) fn tasks<'a>(
    ti: &'a TreeImages,
    forked: Forked,
    thread_levels: Vec<ns::pid::Levels>,
) -> Result<Vec<RestoreTask<'a>>, RestoreError> {
    let imgs = &ti.imgs;
    let mut out = Vec::with_capacity(imgs.len());
    let per_task = forked
        .tasks
        .into_iter()
        .zip(forked.actual)
        .zip(forked.cur_userns)
        .zip(forked.held)
        .zip(forked.later_pid_for_children)
        .zip(thread_levels);
    for (k, (((((tracee, pid_now), userns_now), held), later), levels)) in per_task.enumerate() {
        let parent = if k > 0 {
            Some(&imgs[parent_index(imgs, k)?])
        } else {
            None
        };
        let img = &imgs[k];
        out.push(RestoreTask {
            img,
            tracee,
            pid_now,
            userns_now,
            thread_levels: levels,
            held,
            later_pid_for_children: later,
            shares_files: parent.is_some_and(|p| p.ids.files_id == img.ids.files_id),
            shares_fs: parent.is_some_and(|p| p.ids.fs_id == img.ids.fs_id),
        });
    }
    Ok(out)
}

/// Every task's pid now, in image order.
pub(super) fn pids_now(tree: &[RestoreTask<'_>]) -> Vec<i32> {
    tree.iter().map(|t| t.pid_now).collect()
}
