//! Where the forked tasks go before they are transformed: their cgroups,
//! a way to crest's files from any mount namespace, and the mounts of
//! their mount namespaces, replayed before any task reopens a file.

use super::images::{init_of, TaskImage, TreeImages};
use super::plan::RestoreTask;
use crate::error::RestoreError;
use crate::ns;
use crate::opts::Options;

/// The cgroups the root is forked into (its children follow): its own,
/// or `--cgroup-root`'s; made, with their settings, before it moves in.
pub(super) fn cgroup_dirs(opts: &Options) -> Result<Vec<ns::cgroup::Place>, RestoreError> {
    let dir = &opts.dir;
    Ok(if opts.manage_cgroups == crate::opts::CgMode::Ignore {
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
    })
}

/// Puts every task of a tree whose tasks were in different cgroups where
/// it was (each was forked into its parent's): those recorded in their
/// own, moved the way the root's moved, the others in the root's. A
/// cgroup outside the root's is made ready as the root's were.
fn place_tasks(
    opts: &Options,
    imgs: &[TaskImage],
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
pub(super) fn before_transform(
    opts: &Options,
    ti: &TreeImages,
    tree: &mut [RestoreTask<'_>],
    userns: &ns::user::UsernsHelpers,
    others_h: &mut ns::other::NsHelpers,
) -> Result<(), RestoreError> {
    let imgs = &ti.imgs;
    let actual = &super::plan::pids_now(tree);
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
