//! `crest dump`: seize, collect, write, then kill or leave running. Only
//! the order lives here; every step is in the room of its object.

use crate::error::{DumpCtx, DumpError};
use crate::files::{self, FileTable};
use crate::pstree::{Seized, Task};
use crate::{coreimg, fs, mm, procfs};
use crest_images::pb::{InventoryEntry, PagemapHead, TaskKobjIdsEntry};
use crest_images::{magic, names, ImageWriter};
use crest_inject::Tracee;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub pid: i32,
    pub dir: PathBuf,
    pub leave_running: bool,
    pub shell_job: bool,
}

#[derive(Debug, Clone, Default)]
pub struct DumpSummary {
    pub pids: Vec<i32>,
    pub pages_bytes: u64,
}

/// Dumps the tree rooted at `opts.pid` into `opts.dir`. On failure every
/// task is detached and runs on as before.
pub fn dump(opts: &DumpOptions) -> Result<DumpSummary, DumpError> {
    std::fs::create_dir_all(&opts.dir).map_err(|source| DumpError::Dir {
        dir: opts.dir.display().to_string(),
        source,
    })?;
    let tree = Seized::seize(opts.pid)?;
    crate::info!("seized {} task(s) of tree {}", tree.tasks.len(), opts.pid);
    match collect_and_write(&tree, opts) {
        Ok(summary) => {
            if opts.leave_running {
                tree.release();
            } else {
                tree.kill();
            }
            Ok(summary)
        }
        Err(e) => {
            crate::warn!("dump failed: {e}; releasing the tree");
            tree.release();
            Err(e)
        }
    }
}

fn collect_and_write(tree: &Seized, opts: &DumpOptions) -> Result<DumpSummary, DumpError> {
    let root = &tree.tasks[0];
    if root.sid != root.pid && !opts.shell_job {
        return Err(DumpError::ForeignSession {
            pid: root.pid,
            sid: root.sid,
        });
    }
    let mut files = FileTable::default();
    let mut summary = DumpSummary::default();
    let mut root_ids = None;
    for (i, task) in tree.tasks.iter().enumerate() {
        let id = i as u32 + 1;
        let ids = dump_task(task, id, &opts.dir, &mut files, &mut summary)?;
        root_ids.get_or_insert(ids);
    }
    let pstree: Vec<_> = tree.tasks.iter().map(Task::entry).collect();
    crest_images::write_image(&opts.dir, names::PSTREE, magic::PSTREE, &pstree)?;
    crest_images::write_image(&opts.dir, names::FILES, magic::FILES, files.entries())?;
    files::pipe::write_data(&opts.dir, &files.pipes)?;
    let inventory = InventoryEntry {
        img_version: crest_images::INVENTORY_IMG_VERSION,
        fdinfo_per_id: Some(true),
        root_ids,
        ns_per_id: Some(true),
        lsmtype: Some(0),
        dump_uptime: Some(uptime_ticks()),
        ..InventoryEntry::default()
    };
    crest_images::write_image(&opts.dir, names::INVENTORY, magic::INVENTORY, &[inventory])?;
    Ok(summary)
}

/// Dumps one task into its images; returns its ids entry.
fn dump_task(
    task: &Task,
    id: u32,
    dir: &Path,
    files: &mut FileTable,
    summary: &mut DumpSummary,
) -> Result<TaskKobjIdsEntry, DumpError> {
    let pid = task.pid;
    if task.threads.len() > 1 {
        return Err(DumpError::Unsupported {
            pid,
            what: format!("a process with {} threads", task.threads.len()),
        });
    }
    let status = procfs::read_status(pid).at(pid, "read status")?;
    let mut t = Tracee::from_seized(pid, pid).at(pid, "prepare injection")?;
    t.use_vdso_syscall().at(pid, "find a syscall instruction")?;

    let mut pages = crest_images::create_raw(dir, &names::pages(id))?;
    let mm = mm::dump(&mut t, files, &mut pages)?;
    pages.finish()?;
    let (core, extra) = coreimg::dump(&mut t, &status)?;
    let fdinfo = files::dump_fds(pid, files)?;
    let fs = fs::dump(pid, status.umask.unwrap_or(0o022), files)?;
    t.put_back().at(pid, "put the task back")?;
    t.leak();

    let upid = pid as u32;
    crest_images::write_image(dir, &names::core(upid), magic::CORE, &[core])?;
    crest_images::write_image(
        dir,
        &names::crest_thread(upid),
        magic::CREST_THREAD,
        &[extra],
    )?;
    crest_images::write_image(dir, &names::mm(upid), magic::MM, &[mm.entry])?;
    let mut pm = ImageWriter::create(dir, &names::pagemap(upid), magic::PAGEMAP)?;
    pm.write_entry(&PagemapHead { pages_id: id })?;
    for e in &mm.pagemap {
        pm.write_entry(e)?;
    }
    pm.finish()?;
    crest_images::write_image(dir, &names::fdinfo(id), magic::FDINFO, &fdinfo)?;
    crest_images::write_image(dir, &names::fs(upid), magic::FS, &[fs])?;
    let ids = TaskKobjIdsEntry {
        vm_id: id,
        files_id: id,
        fs_id: id,
        sighand_id: id,
        ..TaskKobjIdsEntry::default()
    };
    crest_images::write_image(dir, &names::ids(upid), magic::IDS, &[ids])?;
    summary.pids.push(pid);
    summary.pages_bytes += mm.pages_bytes;
    crate::info!("dumped pid {pid}: {} bytes of pages", mm.pages_bytes);
    Ok(ids)
}

fn uptime_ticks() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * 1_000_000.0) as u64)
}
