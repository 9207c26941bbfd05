//! `crest pre-dump`: the tree frozen only for as long as its memory is
//! copied, then running on, its memory tracked for the next round
//! (CRIU's iterative migration). The images hold the pages alone
//! (`pagemap-<pid>.img`, `pages-<id>.img`) and the inventory, which names
//! the keeper of the tracking; a later `pre-dump` or `dump` with
//! `--prev-images-dir` naming them saves only the pages written since.

use super::{link_parent, uptime_ticks};
use crate::error::{DumpCtx, DumpError};
use crate::mm;
use crate::mm::dump::PageSink;
use crate::mm::track::TreeTracking;
use crate::opts::{Action, Options};
use crate::pstree::seize::Seized;
use crate::pstree::Task;
use crest_images::pb::InventoryEntry;
use crest_images::{magic, names};
use crest_inject::Tracee;
use std::path::Path;
use std::time::Instant;

pub use crate::stats::DumpSummary;

/// Pre-dumps the tree rooted at `opts.pid` into `opts.dir`; the tree runs
/// on whatever happens.
pub fn pre_dump(opts: &Options) -> Result<DumpSummary, DumpError> {
    let _cpus = crest_sys::misc::AffinityKept::now();
    let caller = super::begin(opts, Action::PreDump)?;
    let _refreeze = match &opts.freeze_cgroup {
        Some(p) => crate::ns::cgroup::thaw(opts.pid, p)?,
        None => None,
    };
    if caller.restricted {
        super::check_caller_may(opts, &caller)?;
    }
    let start = Instant::now();
    let tree = Seized::seize(
        opts.pid,
        std::time::Duration::from_secs(opts.timeout.max(1).into()),
    )?;
    let frozen = Instant::now();
    crate::progress::begin("pre-dump", tree.tasks.len());
    let res = crest_sys::fault::point("pre-dump: tree seized")
        .map_err(DumpError::from)
        .and_then(|()| write_all(&tree, opts));
    crate::progress::end();
    // (running on, with or without its images)
    tree.release();
    crate::guard::end();
    let mut summary = res?;
    summary.stats.freezing = frozen - start;
    summary.stats.memdump = frozen.elapsed();
    summary.stats.frozen = frozen.elapsed();
    super::write_stats(&mut summary, opts);
    Ok(summary)
}

/// The pages of every live task, the tracking handed to a keeper, the
/// inventory and the checksums.
fn write_all(tree: &Seized, opts: &Options) -> Result<DumpSummary, DumpError> {
    let mut track = TreeTracking::begin(
        &opts.dir,
        opts.prev_images_dir.as_deref(),
        true,
        opts.auto_dedup,
    );
    let mut summary = DumpSummary::default();
    let mut sink = super::page_sink(opts)?;
    for (i, task) in tree.tasks.iter().enumerate() {
        if task.zombie.is_none() {
            let at = (opts.dir.as_path(), i as u32 + 1);
            summary.pages_bytes += pages_of(task, at, &mut track, &mut sink)?;
            summary.pids.push(task.pid);
        }
        crate::progress::task_done();
    }
    super::finish_sink(opts, sink)?;
    let keeper = track.finish();
    crest_sys::fault::point("pre-dump: tracking handed to its keeper")?;
    summary.stats.pages_skipped_parent = track.from_parent;
    link_parent(opts)?;
    let inventory = InventoryEntry {
        img_version: crest_images::INVENTORY_IMG_VERSION,
        fdinfo_per_id: Some(true),
        ns_per_id: Some(true),
        lsmtype: Some(0),
        dump_uptime: Some(uptime_ticks()),
        // CRIU's mark of a pre-dump's images: 1 splice, 2 read
        pre_dump_mode: Some(if opts.pre_dump_mode.as_deref() == Some("read") {
            2
        } else {
            1
        }),
        crest_track_keeper: keeper,
        ..InventoryEntry::default()
    };
    crest_images::write_image(&opts.dir, names::INVENTORY, magic::INVENTORY, &[inventory])?;
    crest_images::manifest::write(&opts.dir)?;
    // (the parent images punched only once these are whole)
    track.take_dedup().run();
    Ok(summary)
}

/// Copies the pages of `task` (its `id`-th pages file in `dir`, or to the
/// page server) and tracks its memory on: the bytes written.
fn pages_of(
    task: &Task,
    (dir, id): (&Path, u32),
    track: &mut TreeTracking,
    sink: &mut PageSink,
) -> Result<u64, DumpError> {
    let pid = task.pid;
    // (a sandboxed task's filters suspended: the injected calls meet none)
    crate::task::seccomp::collect(pid, &task.threads)?;
    super::task::note_restarts(task, track);
    let mut t = Tracee::from_seized(pid, pid).at(pid, "prepare injection")?;
    t.use_any_syscall().at(pid, "find a syscall instruction")?;
    t.arm(1, &mut |addr, len, parked| {
        crate::guard::watch_area(pid, addr, len, parked)
    })
    .at(pid, "map the recovery area")?;
    let mm = mm::dump::dump_with_pages(&mut t, (dir, id), None, track, sink)?;

    crest_sys::fault::point("pre-dump: a task's pages copied")?;
    t.put_back().at(pid, "put the task back")?;
    t.leak();
    if sink.local() {
        mm::image::write_pagemap(dir, pid as u32, id, &mm.pagemap)?;
    }
    crate::info!("pre-dumped pid {pid}: {} bytes of pages", mm.pages_bytes);
    Ok(mm.pages_bytes)
}
