//! `crest restore`: read the images, fork each task with its old pid,
//! transform it from outside, set credentials, registers, and let it go.
//! Only the order lives here: reading and checking the images (`prepare`,
//! `images`), making the namespaces (`namespaces`), forking the tree
//! (`fork`), placing the tasks and replaying mounts (`places`),
//! transforming each task (`task`), and the notifications and release
//! (`resume`); every step's work is in the room of its object.

mod fork;
mod images;
mod namespaces;
mod places;
mod plan;
mod prepare;
mod resume;
mod task;

use crate::error::{RestoreCtx, RestoreError};
use crate::notify::{hook, Notify, Silent};
use crate::opts::{Action, Options};
use crate::{mm, ns};
use crest_sys::fault;
use crest_sys::ptrace::{self, WaitStatus};
use fork::fork_tree;
pub use images::check_inventory;
use prepare::Prepared;
use resume::tell;
use task::{transform, TreeCtx};

/// A restored tree, running.
pub struct Restored {
    pub root_pid: i32,
    /// What it took (also in `stats-restore` in the work directory).
    pub stats: crate::stats::RestoreStats,
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

/// Restores the tree in `opts.dir`. On failure every task made is killed
/// and reaped: crest is a child subreaper meanwhile, so the killed tasks'
/// orphans come back to it rather than waiting for init.
pub fn restore(opts: &Options) -> Result<Restored, RestoreError> {
    restore_notified(opts, &mut Silent)
}

/// [`restore`], telling `n` at CRIU's notification points (pre-restore,
/// setup-namespaces, post-setup-namespaces, post-restore, network-unlock,
/// pre-resume, post-resume); a refused notification fails the restore and
/// kills what was made.
pub fn restore_notified(opts: &Options, n: &mut dyn Notify) -> Result<Restored, RestoreError> {
    let refused = opts.refusals(Action::Restore);
    if !refused.is_empty() {
        return Err(RestoreError::Refused { refused });
    }
    // whom crest acts for, and nothing more than they hold from here on
    let caller = crate::privilege::Caller::detect(opts.unprivileged)
        .and_then(|c| c.confine().map(|()| c))
        .rat(0, "take the caller's credentials")?;
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    // cgroup hierarchies crest mounts itself, until the restore ends
    let _yard = crate::ns::cgyard::Guard;
    let start = std::time::Instant::now();
    let res = tell(n, hook::PRE_RESTORE, None).and_then(|()| restore_tree(opts, &caller, n));
    crate::progress::end();
    if res.is_err() {
        crest_sys::proc::reap_children(std::time::Duration::from_secs(2));
    }
    let _ = rustix::process::set_child_subreaper(None);
    let mut r = res?;
    r.stats.restore = start.elapsed();
    if let Some(b) = r.stats.lazy_bytes {
        crate::info!(
            "lazy restore: the tree runs {:.3} s after the restore began; {:.1} MiB of its pages \
             come from the lazy-pages daemon",
            r.stats.restore.as_secs_f64(),
            b as f64 / (1 << 20) as f64
        );
    }
    // the tree runs by now: a refusal here is reported, not undone (CRIU
    // does the same)
    if let Err(e) = tell(n, hook::POST_RESUME, Some(r.root_pid)) {
        crate::warn!("{e}");
    }
    r.stats.write(opts.work_dir()).unwrap_or_else(|e| {
        crate::warn!("stats-restore not written: {e}");
    });
    Ok(r)
}

/// The restore, step by step: images, namespaces, the fork, places, the
/// transforms, the release. Long because it is the order itself, each
/// step one call into its room.
fn restore_tree(
    opts: &Options,
    caller: &crate::privilege::Caller,
    n: &mut dyn Notify,
) -> Result<Restored, RestoreError> {
    let Prepared {
        mut files,
        ti,
        filters,
        ext_pidns,
    } = prepare::prepare(opts, caller)?;
    let imgs = &ti.imgs;
    // The namespaces first, held by helpers until every task has entered
    // its own.
    let namespaces::Made {
        userns,
        mut others_h,
        spare,
    } = namespaces::make(opts, caller, &ti, &mut files, ext_pidns.is_some())?;
    crate::info!("restoring {} task(s), root {}", imgs.len(), imgs[0].pid());

    // Fork the tree: every task from its parent, with its pid, all on
    // crest's CPU until crest is done with them.
    let pin = Pin::here();
    let mut writers = ns::pid::Writers::new(spare);
    let cg_dirs = places::cgroup_dirs(opts)?;
    let forking = std::time::Instant::now();
    let mut forked = fork_tree(
        &ti,
        (&userns, &others_h),
        &mut writers,
        (opts.restore_sibling, ext_pidns.as_ref()),
        &cg_dirs,
    )?;
    let forking = forking.elapsed();
    let thread_levels = fork::note_forked(&ti, &forked.actual, &mut files)?;
    let made_time = std::mem::take(&mut forked.made_time);
    let mut tree = plan::tasks(&ti, forked, thread_levels)?;
    fault::point("restore: tree forked")?;

    // Cgroups, crest's files within reach, the mounts of mount namespaces.
    places::before_transform(opts, &ti, &mut tree, &userns, &mut others_h)?;
    fault::point("restore: mounts replayed")?;

    // Transform every live task, make its threads, set its threads' state.
    let mut ctx = TreeCtx {
        users: &ti.users,
        userns: &userns,
        made_time,
        others: &ti.others,
        others_h: &others_h,
        files: &mut files,
        shared: mm::restore::SharedAnon::new(),
        threads: Vec::new(),
        writers: &mut writers,
        userns_first: caller.enters_userns_first(),
        seccomp: filters,
        inherited_mask: pin.before(),
        lazy: None,
    };
    if opts.lazy_pages {
        ctx.lazy = Some(mm::lazy::link::Link::connect(opts.work_dir())?);
    }
    crate::progress::begin("restore", tree.len());
    for task in tree.iter_mut().filter(|t| t.tracee.is_some()) {
        transform(task, &mut ctx)?;
        crate::progress::task_done();
        fault::point("restore: task transformed")?;
    }

    drop(pin);
    let root_pid = tree[0].pid_now;
    let has_netns = ti.others.has_kind(libc::CLONE_NEWNET as u32);
    resume::hand_over(n, ctx.files, has_netns, root_pid)?;
    let leaders: Vec<i32> = tree
        .iter()
        .filter(|t| t.tracee.is_some())
        .map(|t| t.pid_now)
        .collect();
    resume::let_go(opts, ctx.threads, tree)?;
    let mut lazy_bytes = None;
    if let Some(link) = ctx.lazy.take() {
        lazy_bytes = Some(link.bytes);
        resume::lazy_go(link, &leaders)?;
    }
    if root_pid != imgs[0].pid() {
        crate::info!(
            "the root (pid {} in the images) is pid {root_pid} now",
            imgs[0].pid()
        );
    }
    crate::info!("tree of {root_pid} restored and running");
    Ok(Restored {
        root_pid,
        stats: crate::stats::RestoreStats {
            forking,
            lazy_bytes,
            ..Default::default()
        },
    })
}

/// crest pinned to the CPU it runs on for the time of a restore, given its
/// own mask back when dropped. The tasks it forks inherit the pin, so each
/// injected call wakes the task and crest on one CPU (about 11 µs a round
/// trip, against 55-90 across CPUs: a tree restores in about two thirds
/// of the time); each thread is given back crest's mask when crest is done
/// with it ([`task::TreeCtx::inherited_mask`]), and a large memory fill
/// runs on every CPU (`mm::restore::pages`). Where crest's mask cannot be
/// read or set, nothing is pinned.
struct Pin;

impl Pin {
    fn here() -> Pin {
        crest_sys::misc::pin_to_current_cpu();
        Pin
    }

    /// crest's mask before the pin, while pinned.
    fn before(&self) -> Option<Vec<u8>> {
        crest_sys::misc::pinned().map(|p| p.0)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        crest_sys::misc::unpin();
    }
}
