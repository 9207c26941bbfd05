//! The end of a restore: SIGIO owners set once every task exists, the
//! caller's notifications, and every thread let go at once.

use super::plan::RestoreTask;
use crate::error::{RestoreCtx, RestoreError};
use crate::files::context::RestoreFiles;
use crate::notify::{hook, Notify};
use crate::opts::Options;
use crest_inject::Tracee;
use crest_sys::fault;
use std::os::fd::AsFd;

/// The caller's turn before anything runs (every task is in its
/// namespaces now): SIGIO owners first, then CRIU's notifications up to
/// pre-resume.
pub(super) fn hand_over(
    n: &mut dyn Notify,
    files: &RestoreFiles,
    has_netns: bool,
    root_pid: i32,
) -> Result<(), RestoreError> {
    // SIGIO owners, once every task and thread they may name exists.
    crate::files::fown::restore(
        files
            .holders
            .iter()
            .filter_map(|(id, &(pid, fd))| files.entries.get(id).map(|e| (e, pid, fd))),
    )?;
    tell(n, hook::SETUP_NAMESPACES, Some(root_pid))?;
    tell(n, hook::POST_SETUP_NAMESPACES, Some(root_pid))?;
    // consoles whose masters were outside: the caller takes the new ones
    for (_, master, _) in &files.ttys.masters {
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
    if has_netns {
        tell(n, hook::NETWORK_UNLOCK, Some(root_pid))?;
    }
    tell(n, hook::PRE_RESUME, Some(root_pid))?;
    fault::point("restore: about to resume")?;
    Ok(())
}

/// Lets every task and thread go.
pub(super) fn let_go(
    opts: &Options,
    threads: Vec<Tracee>,
    tree: Vec<RestoreTask<'_>>,
) -> Result<(), RestoreError> {
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
    for img in tree.iter().map(|t| t.img) {
        if let Some(s) = img.stop_signal()? {
            stops.insert(img.pid(), s);
        }
    }
    let mut all: Vec<(i32, crest_inject::Tracee)> = threads.into_iter().map(|t| (0, t)).collect();
    all.extend(
        tree.into_iter()
            .filter_map(|task| task.tracee.map(|t| (task.img.pid(), t))),
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
    Ok(())
}

/// `--lazy-pages`: the daemon takes hold of the running tree. When it
/// cannot (or is gone), the tree is killed: it would read zeros where its
/// pages were.
pub(super) fn lazy_go(
    link: crate::mm::lazy::link::Link,
    leaders: &[i32],
) -> Result<(), RestoreError> {
    link.resumed(leaders).inspect_err(|_| {
        for &p in leaders {
            let _ = crest_sys::misc::kill(p, libc::SIGKILL);
        }
    })
}

/// Runs the notification `h` (of the restore of `pid`), naming the hook
/// when it fails.
pub(super) fn tell(n: &mut dyn Notify, h: &str, pid: Option<i32>) -> Result<(), RestoreError> {
    n.notify(h, pid, None).map_err(|why| RestoreError::Notify {
        hook: h.to_string(),
        why,
    })
}
