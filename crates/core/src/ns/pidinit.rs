//! The init of a pid namespace that a nested user namespace owns: forked
//! by a helper inside that user namespace, which exits and leaves the init
//! to its real parent.

use crate::clone::{clone_attempt, clone_plain, take_sigchld, Ids};
use crate::error::RoomError;
use crate::error::{RestoreCtx, RestoreError};
use crate::ns::error::NsError;
use crate::remote::Remote;
use crest_images::pb::PstreeEntry;
use crest_inject::{nr, Tracee};

/// Forks `child`, the init of a pid namespace owned by the user namespace
/// `userns_holder` holds, from `parent` (from crest for the root of the
/// tree: None): a helper forked from the parent enters that user
/// namespace, unshares the pid namespace and forks the init — pid 1
/// inside, the level of the parent's namespace (if any) through the
/// parent's `ns_last_pid`, crest's through crest's if `crest_level` — then
/// exits; the parent (a child subreaper meanwhile, as crest is) inherits
/// the init and reaps the helper.
pub fn fork_init_in_userns(
    mut parent: Option<&mut Tracee>,
    child: &PstreeEntry,
    want: &[i32],
    crest_level: bool,
    (userns_holder, joins): (i32, &[(String, u32)]),
    sibling: bool,
) -> Result<Tracee, RestoreError> {
    let who = child.pid as i32;
    let middles = want.len().saturating_sub(1 + usize::from(crest_level));
    if want.first() != Some(&1) || middles > 1 || (middles == 1 && parent.is_none()) {
        return Err(NsError::Unsupported {
            what: format!("a pid namespace init with pids {want:?} (more than 3 levels)"),
        }
        .in_restore(who));
    }
    let middle = if middles == 1 {
        want.get(1).copied()
    } else {
        None
    };
    // A fork elsewhere may take one of the ids the init wants: killing an
    // init ends its pid namespace, so each try makes the helper again.
    for _ in 0..16 {
        if let Some(c) = init_attempt(
            parent.as_deref_mut(),
            child,
            want,
            (middle, crest_level),
            (userns_holder, joins),
            sibling,
        )? {
            return Ok(c);
        }
    }
    Err(NsError::Unsupported {
        what: format!("other forks kept taking its ids {want:?}"),
    }
    .in_restore(who))
}

/// Moves pid namespace helper `h` where the init is to be made: into
/// the init's namespaces `joins` (paths and types), into the user
/// namespace `userns_holder` is in, and unshares a new pid namespace.
fn helper_into_place(
    h: &mut Tracee,
    joins: &[(String, u32)],
    userns_holder: i32,
) -> Result<(), RestoreError> {
    let hp = h.pid();
    // the init's namespaces an outer user namespace may own, joined while
    // the helper still has rights over them; those it has no rights over
    // yet (an unprivileged crest: they belong to the namespace it enters)
    // once it is in its user namespace
    let mut later = Vec::new();
    for (path, nstype) in joins {
        let fd = h.open_crest_side(path, libc::O_RDONLY)?;
        let r = h.syscall(nr::SETNS, &[fd, u64::from(*nstype)]);
        match r {
            Err(crest_inject::InjectError::Syscall { ref source, .. })
                if source.raw_os_error() == Some(libc::EPERM) =>
            {
                later.push((fd, path, *nstype));
            }
            r => {
                h.close(fd)?;
                r.rat(hp, format!("setns into {path} in the pid namespace helper"))?;
            }
        }
    }
    crate::ns::user::enter(h, userns_holder)?;
    for (fd, path, nstype) in later {
        h.with_fd(fd, |h, fd| {
            h.setns(
                fd,
                u64::from(nstype),
                &format!("setns into {path} in the pid namespace helper"),
            )
        })?;
    }
    h.syscall(nr::UNSHARE, &[libc::CLONE_NEWPID as u64])
        .rat(hp, "unshare(CLONE_NEWPID) in the helper")?;
    Ok(())
}

/// The helper that makes an init (task `who`, with ids `want`): forked by
/// the init's `parent` (made a subreaper meanwhile) or spawned by crest (a
/// child of crest's parent for a `sibling` root). It keeps off the ids
/// the init wants: `ns_last_pid` is set past them in the parent's pid
/// namespace (`middle`) and in crest's (`crest_level`).
fn spawn_init_helper(
    mut parent: Option<&mut Tracee>,
    who: i32,
    want: &[i32],
    (middle, crest_level): (Option<i32>, bool),
    sibling: bool,
) -> Result<Tracee, RestoreError> {
    if let (Some(m), Some(p)) = (middle, parent.as_deref_mut()) {
        crate::ns::user::write_in_task(
            p,
            "/proc/sys/kernel/ns_last_pid",
            m.to_string().as_bytes(),
        )?;
    }
    if let (true, Some(last)) = (crest_level, want.last()) {
        std::fs::write("/proc/sys/kernel/ns_last_pid", last.to_string())
            .rat(who, "write ns_last_pid")?;
    }
    Ok(match parent {
        Some(p) => {
            p.syscall(nr::PRCTL, &[36, 1]) // PR_SET_CHILD_SUBREAPER, restored later
                .rat(p.pid(), "prctl(PR_SET_CHILD_SUBREAPER)")?;
            clone_plain(p)?
        }
        // (a sibling root: the helper and the init it forks are children
        // of crest's parent, CRIU's --restore-sibling)
        None if sibling => crate::ns::pid::spawn_sibling_helper()?,
        None => crate::ns::pid::spawn_helper(&[])?,
    })
}

/// One try of [`fork_init_in_userns`]: a helper in the owner of the new
/// pid namespace forks the init; None if the init did not get its ids
/// (it and the helper are gone again).
fn init_attempt(
    mut parent: Option<&mut Tracee>,
    child: &PstreeEntry,
    want: &[i32],
    (middle, crest_level): (Option<i32>, bool),
    (userns_holder, joins): (i32, &[(String, u32)]),
    sibling: bool,
) -> Result<Option<Tracee>, RestoreError> {
    let who = child.pid as i32;
    let mut h = spawn_init_helper(
        parent.as_deref_mut(),
        who,
        want,
        (middle, crest_level),
        sibling,
    )?;
    let flags = if sibling && parent.is_none() {
        libc::CLONE_PARENT as u64
    } else {
        0
    };
    let hp = h.pid();
    helper_into_place(&mut h, joins, userns_holder)?;
    // The helper has rights over the new namespace only.
    let ids = Ids {
        want,
        settable: 1,
        crest_last: crest_level,
    };
    let made = {
        let mut before = |_: &[i32]| -> Result<(), RestoreError> {
            if let (Some(m), Some(p)) = (middle, parent.as_deref_mut()) {
                crate::ns::user::write_in_task(
                    p,
                    "/proc/sys/kernel/ns_last_pid",
                    format!("{}", m - 1).as_bytes(),
                )?;
            }
            Ok(())
        };
        // (clone3 takes no exit signal with CLONE_PARENT: the child gets
        // the forking task's)
        let exit_signal = if flags == 0 { libc::SIGCHLD as u64 } else { 0 };
        h.trace_new_tasks().rat(hp, "trace new tasks")?;
        clone_attempt(&mut h, who, &ids, flags, exit_signal, &mut before)?
    };
    let end_helper = |h: Tracee, parent: Option<&mut Tracee>| -> Result<(), RestoreError> {
        h.exit_as(0).rat(hp, "end the pid namespace helper")?;
        if let Some(p) = parent {
            p.syscall(nr::WAIT4, &[u64::MAX, 0, 0, 0])
                .rat(p.pid(), "reap the pid namespace helper")?;
            take_sigchld(p);
        }
        Ok(())
    };
    let Some(mut c) = made else {
        end_helper(h, parent)?;
        return Ok(None);
    };
    if child.sid == child.pid {
        c.syscall(nr::SETSID, &[]).rat(c.pid(), "setsid")?;
    }
    end_helper(h, parent)?;
    Ok(Some(c))
}
