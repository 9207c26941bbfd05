//! The tree's namespaces, made before any task: user namespaces by
//! helpers with their maps, every other kind by a helper inside its owner;
//! crest's own helpers are steered to pids the tree does not use.

use super::images::TreeImages;
use crate::error::RestoreError;
use crate::files::context::RestoreFiles;
use crate::ns;
use crate::opts::Options;
use crest_sys::fault;

/// The namespaces made, held by their helpers until every task has entered
/// its own.
pub(super) struct Made {
    pub(super) userns: ns::user::UsernsHelpers,
    pub(super) others_h: ns::other::NsHelpers,
    /// The first of the pids crest's helpers take.
    pub(super) spare: i32,
}

/// Makes the namespaces of `ti`; the files of the tree's own namespaces
/// will be opened through their helpers (`files.ns_holders`).
pub(super) fn make(
    opts: &Options,
    caller: &crate::privilege::Caller,
    ti: &TreeImages,
    files: &mut RestoreFiles,
    ext_pidns: bool,
) -> Result<Made, RestoreError> {
    let imgs = &ti.imgs;
    // crest's helpers take their pids from a range the tree does not use,
    // so none holds a pid a task is yet to get (pids wrap at pid_max).
    let tids: Vec<i32> = imgs
        .iter()
        .flat_map(|i| i.cores.iter().map(|c| c.0))
        .collect();
    if ti.cut == 0 || ext_pidns {
        // `crest dump && crest restore`: the dumped tasks may still be
        // on their way out
        crate::clone::wait_for_leaving(&tids, std::time::Duration::from_secs(5));
    }
    let spare = crate::clone::spare_pids(&tids);
    crate::clone::use_spare(spare);
    // The namespaces first, held by helpers until every task has entered
    // its own.
    let join_user = opts.join_ns.iter().find(|j| j.ns == "user");
    let userns = ns::user::UsernsHelpers::build(&ti.users, join_user)?;
    fault::point("restore: user namespaces made")?;
    let mut others_h = ns::other::NsHelpers::build(
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
    Ok(Made {
        userns,
        others_h,
        spare,
    })
}
