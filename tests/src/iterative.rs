//! Iterative dumps (issue 18): a protocol workload that writes
//! `<statedir>/pre-dumps` (a number N) is pre-dumped N times while it
//! runs, round K into `<case>/pre-K` with round K-1 as its parent, a
//! moment apart; the suite's dump then takes `--prev-images-dir ../pre-N`
//! and the restore follows the chain. Checked from outside, beside the
//! workload's own check of every page:
//!
//! - every round leaves the tree running, its fd tables as they were (the
//!   tracking's userfaultfd is not the task's) and a keeper process;
//! - a later round and the dump take pages from their parent images
//!   (`pages_skipped_parent` of `stats-dump`, `PE_PARENT` entries);
//! - after the dump (the tree killed), no keeper is left.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crest_images::pb::{PagemapEntry, PagemapHead, StatsEntry};
use crest_images::{magic, names, ImageReader, PE_PARENT};
use nix::unistd::Pid;

use crate::case::CaseDir;
use crate::crest::{self, CREST_TIMEOUT};
use crate::procs::{self, Procs};
use crate::Config;

/// Time the workload runs between two rounds.
const BETWEEN: Duration = Duration::from_millis(300);

/// The rounds of pre-dumps the workload asks for (0: none).
pub fn rounds(dir: &CaseDir) -> usize {
    fs::read_to_string(dir.state.join("pre-dumps"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
        .min(8)
}

/// Runs the pre-dumps the workload asks for; returns the final dump's
/// `--prev-images-dir` (relative to the images directory), if any.
pub fn pre_dumps(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    procs: &mut Procs,
) -> Result<Option<String>> {
    let n = rounds(dir);
    if n == 0 {
        return Ok(None);
    }
    let fds_before = fd_links(pid);
    for k in 1..=n {
        let images = dir.root.join(format!("pre-{k}"));
        let images_s = images.to_string_lossy().into_owned();
        let pid_s = pid.to_string();
        let log = format!("pre-dump-{k}.log");
        let prev = format!("../pre-{}", k - 1);
        let mut args = vec!["pre-dump", "-t", &pid_s, "-D", &images_s, "-o", &log, "-v4"];
        if k > 1 {
            args.extend(["--prev-images-dir", prev.as_str()]);
        }
        let ran = crest::run(
            crest::command(&cfg.crest, &args),
            &dir.root,
            &format!("pre-dump-{k}"),
            CREST_TIMEOUT,
            procs,
        )?;
        if !ran.success() {
            bail!(ran.failure(&format!("crest pre-dump (round {k})")));
        }
        if !procs::exists(pid) {
            bail!("pid {pid} is gone after pre-dump round {k}");
        }
        let stuck = procs::tree_problems(pid);
        if !stuck.is_empty() {
            bail!(
                "after pre-dump round {k} the tree is not running: {}",
                stuck.join("; ")
            );
        }
        let fds_now = fd_links(pid);
        if fds_now != fds_before {
            bail!("pre-dump round {k} changed the tree's fds: {fds_before:?} became {fds_now:?}");
        }
        if keepers().is_empty() {
            bail!("pre-dump round {k} left no keeper of its memory tracking");
        }
        if k > 1 {
            let skipped = skipped_parent(&images)?;
            if skipped == 0 {
                bail!("pre-dump round {k} took no page from its parent images");
            }
        }
        std::thread::sleep(BETWEEN);
    }
    Ok(Some(format!("../pre-{n}")))
}

/// After the dump that ended the rounds: it took pages from the parent
/// images, marked them so, and no keeper is left.
pub fn check_final(dir: &CaseDir) -> Result<()> {
    if rounds(dir) == 0 {
        return Ok(());
    }
    if skipped_parent(&dir.images)? == 0 {
        bail!("the dump after the pre-dumps took no page from its parent images");
    }
    let marked = parent_entries(&dir.images)?;
    if marked == 0 {
        bail!("the dump's pagemaps mark no page as the parent images'");
    }
    let gone = procs::wait_until(Duration::from_secs(3), || keepers().is_empty());
    if !gone {
        bail!(
            "keepers of memory tracking left after the dump: {:?}",
            keepers()
        );
    }
    Ok(())
}

/// `pages_skipped_parent` of the `stats-dump` in `images`.
fn skipped_parent(images: &Path) -> Result<u64> {
    let s: StatsEntry = crest_images::read_one(images, names::STATS_DUMP, magic::STATS)
        .with_context(|| format!("read stats-dump of {}", images.display()))?;
    Ok(s.dump.map_or(0, |d| d.pages_skipped_parent))
}

/// The pagemap entries of `images` marked as the parent's.
fn parent_entries(images: &Path) -> Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(images)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("pagemap-") || name.starts_with("pagemap-shmem") {
            continue;
        }
        let mut r = ImageReader::open(images, &name, magic::PAGEMAP)?;
        let _: Option<PagemapHead> = r.next_entry()?;
        while let Some(p) = r.next_entry::<PagemapEntry>()? {
            n += usize::from(p.flags.unwrap_or(0) & PE_PARENT != 0);
        }
    }
    Ok(n)
}

/// The fd links of every process of the tree of `pid`.
fn fd_links(pid: Pid) -> Vec<String> {
    let tree = procs::tree_snapshot(pid).map(|t| t.into_keys().collect::<Vec<_>>());
    let mut out = Vec::new();
    for p in tree.unwrap_or_default() {
        let Ok(dir) = fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        for e in dir.flatten() {
            let link = fs::read_link(e.path()).map(|l| l.to_string_lossy().into_owned());
            out.push(format!(
                "{p} {} {}",
                e.file_name().to_string_lossy(),
                link.unwrap_or_default()
            ));
        }
    }
    out.sort();
    out
}

/// The keepers of memory tracking that run (their pids).
fn keepers() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| {
            fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"__track-keeper"))
        })
        .collect()
}
