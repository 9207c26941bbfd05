//! The dump's namespaces and cgroups: the tree's user, pid and other
//! namespaces found, checked and written, and the cgroups of its tasks
//! with their settings.

use crate::error::DumpError;
use crate::ns::other::OtherGraph;
use crate::ns::pid::PidnsGraph;
use crate::ns::user::UsernsGraph;
use crate::opts::Options;
use crate::procfs;
use crate::pstree::seize::Seized;
use std::collections::HashMap;

/// The tree's namespaces.
pub(super) struct Namespaces {
    pub(super) users: UsernsGraph,
    pub(super) others: OtherGraph,
    pub(super) pids: PidnsGraph,
    /// The user namespace of each zombie (by pid).
    pub(super) zombie_userns: HashMap<i32, u32>,
}

impl Namespaces {
    /// Every namespace of the tree as the files table knows it: (nsfs
    /// inode, (kind, id)).
    pub(super) fn by_ino(&self) -> HashMap<u64, (u32, u32)> {
        let user = libc::CLONE_NEWUSER as u32;
        let pid_ty = libc::CLONE_NEWPID as u32;
        (self
            .users
            .ns_inos()
            .into_iter()
            .map(|(i, id)| (i, (user, id))))
        .chain(
            self.others
                .ns_inos()
                .into_iter()
                .map(|(i, id, ty)| (i, (ty, id))),
        )
        .chain(
            self.pids
                .ns_inos()
                .into_iter()
                .map(|(i, id)| (i, (pid_ty, id))),
        )
        .collect()
    }
}

/// Finds, checks and writes the namespaces of the tree's `live` tasks and
/// of its zombies.
pub(super) fn collect(
    tree: &Seized,
    live: &[i32],
    opts: &Options,
    caller: &crate::privilege::Caller,
) -> Result<Namespaces, DumpError> {
    let mut users = UsernsGraph::collect(live)?;
    caller.check_dump(live, &users)?;
    let mut zombie_userns = HashMap::new();
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
        live,
        &users,
        (Some(&opts.external), mnt_opts),
        opts.empty_ns,
    )?;
    let pids = PidnsGraph::collect(live, &users, others.list.len() as u32 + 1, &opts.external)?;
    others.resolve_proc_pidns(&pids)?;
    pids.check_inits(&users, opts.pid, |pid| {
        procfs::read_status(pid)
            .ok()
            .and_then(|s| s.ns_pid.last().copied())
    })?;
    users.write(&opts.dir)?;
    others.write(&opts.dir, pids.entries())?;
    Ok(Namespaces {
        users,
        others,
        pids,
        zombie_userns,
    })
}

/// Writes where the tree's tasks are in their cgroups, and (unless
/// `--manage-cgroups ignore`) the settings of those cgroups and below.
pub(super) fn cgroups(opts: &Options, others: &OtherGraph, live: &[i32]) -> Result<(), DumpError> {
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
    Ok(())
}
