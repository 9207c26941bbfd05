//! `crest dump`: seize, collect, write, then kill or leave running. Only
//! the order lives here; every step is in the room of its object.

mod namespaces;
mod pre;
mod task;

pub use pre::pre_dump;

use crate::error::DumpError;
use crate::files::table::FileTable;
use crate::mm::track::{Dedup, TreeTracking};
use crate::notify::{hook, Notify, Silent};
use crate::ns::user::UsernsGraph;
use crate::opts::{Action, Options};
use crate::pstree::seize::Seized;
use crate::pstree::Task;
use crest_images::pb::{InventoryEntry, TaskKobjIdsEntry};
use crest_images::{magic, names};
use std::path::Path;
use std::time::Instant;

pub use crate::stats::DumpSummary;

/// Dumps the tree rooted at `opts.pid` into `opts.dir`. On failure every
/// task is detached and runs on as before.
pub fn dump(opts: &Options) -> Result<DumpSummary, DumpError> {
    dump_notified(opts, &mut Silent)
}

/// [`dump`], telling `n` at CRIU's notification points (pre-dump,
/// network-lock, post-dump, network-unlock); a refused notification fails
/// the dump, the tree released.
pub fn dump_notified(opts: &Options, n: &mut dyn Notify) -> Result<DumpSummary, DumpError> {
    // (crest's thread follows the CPUs of the threads it injects into)
    let _cpus = crest_sys::misc::AffinityKept::now();
    let caller = begin(opts, Action::Dump)?;
    tell(n, hook::PRE_DUMP, opts.pid)?;
    // cgroup hierarchies crest mounts itself, until the dump ends
    let _yard = crate::ns::cgyard::Guard;
    // a paused container: thawed to be seized, frozen again after
    let _refreeze = match &opts.freeze_cgroup {
        Some(p) => crate::ns::cgroup::thaw(opts.pid, p)?,
        None => None,
    };
    if caller.restricted {
        check_caller_may(opts, &caller)?;
    }
    let start = Instant::now();
    let tree = Seized::seize(
        opts.pid,
        std::time::Duration::from_secs(opts.timeout.max(1).into()),
    )?;
    crest_sys::fault::point("dump: tree seized")?;
    crate::progress::begin("dump", tree.tasks.len());
    let frozen = Instant::now();
    crate::info!("seized {} task(s) of tree {}", tree.tasks.len(), opts.pid);
    // The network is the caller's to lock when the tree has a net
    // namespace of its own.
    let own_net = crate::ns::other::own_net_ns(opts.pid);
    let res = (if own_net {
        tell(n, hook::NETWORK_LOCK, opts.pid)
    } else {
        Ok(())
    })
    .and_then(|()| collect_and_write(&tree, opts, &caller))
    .and_then(|s| {
        // last: the checksums of every file, which a restore checks
        crest_images::manifest::write(&opts.dir)?;
        crest_sys::fault::point("dump: images written")?;
        Ok(s)
    })
    .and_then(|s| tell(n, hook::POST_DUMP, opts.pid).map(|()| s))
    .map(deduplicated);
    crate::progress::end();
    match res {
        Ok(mut summary) => {
            summary.stats.freezing = frozen - start;
            summary.stats.memdump = frozen.elapsed();
            let done = finish(tree, opts, n, own_net);
            crate::mm::track::close_retired();
            done?;
            summary.stats.frozen = frozen.elapsed();
            write_stats(&mut summary, opts);
            Ok(summary)
        }
        Err(e) => {
            crate::warn!("dump failed: {e}; releasing the tree");
            tree.release();
            crate::mm::track::close_retired();
            crate::guard::end();
            if own_net {
                let _ = tell(n, hook::NETWORK_UNLOCK, opts.pid);
            }
            Err(e)
        }
    }
}

/// The inventory of a dump: the root's ids, the keeper of its memory
/// tracking.
fn inventory(
    opts: &Options,
    root_ids: Option<TaskKobjIdsEntry>,
    keeper: Option<String>,
) -> InventoryEntry {
    InventoryEntry {
        img_version: crest_images::INVENTORY_IMG_VERSION,
        fdinfo_per_id: Some(true),
        root_ids,
        ns_per_id: Some(true),
        lsmtype: Some(0),
        dump_uptime: Some(uptime_ticks()),
        // (CRIU's mark: such images are restored with --tcp-close only)
        tcp_close: opts.tcp_close.then_some(true),
        crest_track_keeper: keeper,
        ..InventoryEntry::default()
    }
}

/// `--auto-dedup`'s work done, once the dump is whole: the parent images
/// punched.
fn deduplicated((summary, dedup): (DumpSummary, Dedup)) -> DumpSummary {
    dedup.run();
    summary
}

/// What a dump and a pre-dump do first: the options refused that crest
/// cannot honour, whom crest acts for found (and nothing more than they
/// hold from here on), the images directory made.
fn begin(opts: &Options, action: Action) -> Result<crate::privilege::Caller, DumpError> {
    let refused = opts.refusals(action);
    if !refused.is_empty() {
        return Err(DumpError::Refused { refused });
    }
    let caller = crate::privilege::Caller::detect(opts.unprivileged)
        .and_then(|c| c.confine().map(|()| c))
        .map_err(|source| DumpError::Io {
            pid: opts.pid,
            step: "take the caller's credentials",
            source,
        })?;
    std::fs::create_dir_all(&opts.dir).map_err(|source| DumpError::Dir {
        dir: opts.dir.display().to_string(),
        source,
    })?;
    Ok(caller)
}

/// Ends the page server session of a dump (nothing for a local one).
fn finish_sink(opts: &Options, sink: crate::mm::dump::PageSink) -> Result<(), DumpError> {
    sink.finish().map_err(|source| DumpError::Io {
        pid: opts.pid,
        step: "close the page server session",
        source,
    })
}

/// The page counts of `summary`'s stats, and `stats-dump` written.
fn write_stats(summary: &mut DumpSummary, opts: &Options) {
    summary.stats.pages_scanned = summary.pages_bytes / 4096 + summary.stats.pages_skipped_parent;
    summary.stats.pages_written = summary.pages_bytes / 4096;
    summary.stats.shpages_written =
        crate::stats::pages_in(&opts.dir).saturating_sub(summary.stats.pages_written);
    summary.stats.write(opts.work_dir()).unwrap_or_else(|e| {
        crate::warn!("stats-dump not written: {e}");
    });
}

/// For a restricted caller: refuses a tree the caller could not dump
/// itself. The root is checked before it is seized, for a refusal that
/// says why (the kernel refuses the seizing anyway: crest holds no more
/// than the caller); the whole tree once it is frozen.
fn check_caller_may(opts: &Options, caller: &crate::privilege::Caller) -> Result<(), DumpError> {
    let users = UsernsGraph::collect(&[opts.pid]).map_err(|e| {
        if Path::new(&format!("/proc/{}", opts.pid)).exists() {
            DumpError::Forbidden {
                pid: opts.pid,
                uid: caller.uid,
                what: format!("its /proc files are closed to the caller ({e})"),
            }
        } else {
            e
        }
    })?;
    caller.check_dump(&[opts.pid], &users)?;
    Ok(())
}

/// After a dump written: the tree released (`--leave-running`,
/// `--leave-stopped`, and the network unlocked where it has its own) or
/// killed; the dump's guard ended.
fn finish(
    tree: Seized,
    opts: &Options,
    n: &mut dyn Notify,
    own_net: bool,
) -> Result<(), DumpError> {
    if opts.leave_running || opts.leave_stopped {
        if opts.leave_stopped {
            tree.release_stopped();
        } else {
            tree.release();
        }
        if own_net {
            tell(n, hook::NETWORK_UNLOCK, opts.pid)?;
        }
    } else {
        tree.kill();
    }
    crate::guard::end();
    Ok(())
}

/// Tells `n` that `h` is reached (with the tree's root for the hooks'
/// environment).
fn tell(n: &mut dyn Notify, h: &str, root: i32) -> Result<(), DumpError> {
    n.notify(h, Some(root), None)
        .map_err(|why| DumpError::Notify {
            hook: h.to_string(),
            why,
        })
}

fn collect_and_write(
    tree: &Seized,
    opts: &Options,
    caller: &crate::privilege::Caller,
) -> Result<(DumpSummary, Dedup), DumpError> {
    let root = &tree.tasks[0];
    if root.sid != root.pid && !opts.shell_job {
        // A job of a shell, or a container whose init was started without
        // setsid: handled as --shell-job would (restore puts it in the
        // session of the crest that restores it). Terminals it uses from
        // that session still need --shell-job (see files/tty.rs).
        crate::info!(
            "root {} is in session {} it does not lead: restored into the restorer's session, as with --shell-job",
            root.pid,
            root.sid
        );
    }
    let live: Vec<i32> = tree
        .tasks
        .iter()
        .filter(|t| t.zombie.is_none())
        .map(|t| t.pid)
        .collect();
    let ns = namespaces::collect(tree, &live, opts, caller)?;
    namespaces::cgroups(opts, &ns.others, &live)?;
    let mut files = FileTable::for_dump(opts, &live, ns.by_ino());
    let mut summary = DumpSummary::default();
    let mut filters = crate::task::seccomp::Table::default();
    let mut all_ids: Vec<(i32, TaskKobjIdsEntry)> = Vec::with_capacity(tree.tasks.len());
    // (memory tracked for a later dump only of a tree that runs on)
    let keep = opts.track_mem && (opts.leave_running || opts.leave_stopped);
    let mut track = TreeTracking::begin(
        &opts.dir,
        opts.prev_images_dir.as_deref(),
        keep,
        opts.auto_dedup,
    );
    let mut sink = page_sink(opts)?;
    let mut sh = task::Shared {
        dir: &opts.dir,
        ns: &ns,
        files: &mut files,
        filters: &mut filters,
        summary: &mut summary,
        track: &mut track,
        sink: &mut sink,
    };
    for (i, t) in tree.tasks.iter().enumerate() {
        let parent_ids = all_ids.iter().find(|(p, _)| *p == t.ppid).map(|x| x.1);
        let ids = task::dump(t, i, parent_ids, &mut sh)?;
        crate::progress::task_done();
        all_ids.push((t.pid, ids));
        sh.summary.pids.push(t.pid);
    }
    filters.write(&opts.dir)?;
    let pstree: Vec<_> = tree.tasks.iter().map(Task::entry).collect();
    crest_images::write_image(&opts.dir, names::PSTREE, magic::PSTREE, &pstree)?;
    files.finish(&opts.dir)?;
    finish_sink(opts, sink)?;
    let keeper = track.finish();
    summary.stats.pages_skipped_parent = track.from_parent;
    link_parent(opts)?;
    let inventory = inventory(opts, all_ids.first().map(|x| x.1), keeper);
    crest_images::write_image(&opts.dir, names::INVENTORY, magic::INVENTORY, &[inventory])?;
    // Established connections stay in repair mode only for a tree that dies.
    files.inet.keep_repair = !opts.leave_running;
    Ok((summary, track.take_dedup()))
}

/// Where the pages go: the images directory, or the page server the
/// options name (`--page-server --address A --port N`, or the connected
/// socket `--ps-socket FD`).
fn page_sink(opts: &Options) -> Result<crate::mm::dump::PageSink, DumpError> {
    use crate::mm::{dump::PageSink, server::Client};
    let io = |step: &'static str| {
        move |source| DumpError::Io {
            pid: opts.pid,
            step,
            source,
        }
    };
    if let Some(fd) = opts.ps_socket {
        let own = crest_sys::misc::own_fd(fd).map_err(io("take --ps-socket"))?;
        return Ok(PageSink::Server(Client::from_socket(own)));
    }
    if !opts.page_server {
        return Ok(PageSink::Local);
    }
    let address = opts.address.as_deref().unwrap_or("127.0.0.1");
    let port = opts.port.ok_or_else(|| DumpError::Refused {
        refused: vec![crate::opts::Refused {
            option: "--page-server".into(),
            why: "needs --port".into(),
        }],
    })?;
    let c = Client::connect(address, port).map_err(io("connect to the page server"))?;
    crate::info!("pages go to the page server at {address}:{port}");
    Ok(PageSink::Server(c))
}

/// The images' `parent` link to the parent images (`--prev-images-dir`,
/// relative to the images directory as CRIU takes it), which a restore
/// follows for the pages marked as the parent's.
fn link_parent(opts: &Options) -> Result<(), DumpError> {
    let Some(prev) = &opts.prev_images_dir else {
        return Ok(());
    };
    let link = opts.dir.join("parent");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(prev, &link).map_err(|source| DumpError::Dir {
        dir: link.display().to_string(),
        source,
    })
}

fn uptime_ticks() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * 1_000_000.0) as u64)
}
