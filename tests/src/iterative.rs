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
//!
//! Cases of their own (`iter_*[host]`, `mem_iter` each):
//! - `iter_tracking_lost`: the keeper killed between rounds: the task's
//!   memory is no longer tracked (no `uw` in its smaps), the dump says the
//!   tracking is lost and saves every page; the restore passes.
//! - `iter_leave_running`: a `dump -R --track-mem` as a middle round
//!   keeps the tracking; the dump after it takes pages from it.
//! - `iter_page_server`: a migration between two network namespaces joined
//!   by a veth pair: a page server in the other namespace for each round,
//!   a pre-dump and a dump (`--page-server --address --port`) sending
//!   their pages there; the dump's other images copied over, the lazy
//!   restore from the server's directory (through its parent; `crest
//!   lazy-pages` serves them) passes, the pages never written on the
//!   source side, the dump's pages marked as the parent's where
//!   unchanged.
//! - `iter_auto_dedup`: a dump with `--auto-dedup` punches the pages it
//!   saves again out of its parent's pages file (fewer blocks, the same
//!   size), whose manifest still holds; the restore passes.
//! - `iter_parent_missing`: a parent's pages file gone: the restore fails
//!   naming it and leaves no task behind.
//! - `iter_crest_killed`: crest killed at every fault point of a pre-dump:
//!   the task runs on, its fds as before, its memory no longer tracked.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crest_images::pb::{PagemapEntry, PagemapHead, StatsEntry};
use crest_images::{magic, names, ImageReader, PE_PARENT};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, DirCase};
use crate::crest::{self, Ran, CREST_TIMEOUT};
use crate::procs::{self, wait_exit, Procs, Waited};
use crate::suite::Report;
use crate::{Config, Outcome, StdioKind};

const CASES: [(&str, DirCase); 6] = [
    ("iter_page_server", iter_page_server),
    ("iter_auto_dedup", iter_auto_dedup),
    ("iter_tracking_lost", iter_tracking_lost),
    ("iter_leave_running", iter_leave_running),
    ("iter_parent_missing", iter_parent_missing),
    ("iter_crest_killed", iter_crest_killed),
];

/// Runs the cases whose names pass `selected`.
pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
}

/// Time the workload runs between two rounds.
const BETWEEN: Duration = Duration::from_millis(300);

/// The rounds of pre-dumps the workload asks for (0: none), or
/// `CREST_E2E_PRE_DUMPS` asks for every workload (a run of the whole
/// suite through iterative dumps).
pub fn rounds(dir: &CaseDir) -> usize {
    let asked = |s: &str| s.trim().parse::<usize>().ok();
    let own = fs::read_to_string(dir.state.join("pre-dumps"))
        .ok()
        .and_then(|s| asked(&s))
        .unwrap_or(0);
    let all = std::env::var("CREST_E2E_PRE_DUMPS")
        .ok()
        .and_then(|s| asked(&s))
        .unwrap_or(0);
    own.max(all).min(8)
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
    let stopped_before: Vec<i32> = procs::tree_snapshot(pid)
        .map(|t| t.into_keys().collect::<Vec<i32>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| procs::proc_state(Pid::from_raw(*p)) == Some('T'))
        .collect();
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
        // (a task stopped before stays so)
        let mut stuck = procs::tree_problems(pid);
        stuck.retain(|p| {
            !(p.contains("is stopped")
                && stopped_before
                    .iter()
                    .any(|s| p.starts_with(&format!("pid {s} "))))
        });
        if !stuck.is_empty() {
            bail!(
                "after pre-dump round {k} the tree is not running: {}",
                stuck.join("; ")
            );
        }
        // (the fds of the processes there before and still there)
        let fds_now = fd_links(pid);
        let (fds_before, fds_now) = common_pids(&fds_before, &fds_now);
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
    took_from_parent(
        &dir.images,
        "the dump after the pre-dumps took no page from its parent images",
    )?;
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

/// The lines of two fd listings ("pid fd link") of the pids both have.
fn common_pids(a: &[String], b: &[String]) -> (Vec<String>, Vec<String>) {
    let pid = |l: &String| l.split(' ').next().map(str::to_string);
    let pa: std::collections::HashSet<_> = a.iter().filter_map(pid).collect();
    let pb: std::collections::HashSet<_> = b.iter().filter_map(pid).collect();
    let keep = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|l| pid(l).is_some_and(|p| pa.contains(&p) && pb.contains(&p)))
            .cloned()
            .collect()
    };
    (keep(a), keep(b))
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
    running_of("__track-keeper")
}

/// The processes running crest's hidden command `command` (their pids).
pub fn running_of(command: &str) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| {
            fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == command.as_bytes()))
        })
        .collect()
}

/// Starts `mem_iter` (32 MiB) in `dir`, ready.
fn start_iter(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Pid> {
    let w = crate::suite::workload("mem_iter").context("no mem_iter workload")?;
    let pid = case::start(cfg, &w, dir, StdioKind::DevNull, procs)?;
    case::wait_ready(dir, pid, procs)?;
    Ok(pid)
}

/// Runs `crest <args>` in the case directory (its output as `<tag>.*`),
/// with `env` set.
fn crest_run(
    cfg: &Config,
    dir: &CaseDir,
    args: &[&str],
    tag: &str,
    env: &[(&str, &str)],
    procs: &mut Procs,
) -> Result<Ran> {
    let mut cmd = crest::command(&cfg.crest, args);
    cmd.envs(env.iter().copied());
    crest::run(cmd, &dir.root, tag, CREST_TIMEOUT, procs)
}

/// `crest pre-dump` of `pid` into `<case>/<name>`, after `prev` if given.
fn pre_dump(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    (name, prev): (&str, Option<&str>),
    procs: &mut Procs,
) -> Result<()> {
    let images = dir.root.join(name).to_string_lossy().into_owned();
    let pid_s = pid.to_string();
    let mut args = vec![
        "pre-dump",
        "-t",
        &pid_s,
        "-D",
        &images,
        "-o",
        "pre-dump.log",
        "-v4",
    ];
    let prev = prev.map(|p| format!("../{p}"));
    if let Some(p) = &prev {
        args.extend(["--prev-images-dir", p.as_str()]);
    }
    let ran = crest_run(cfg, dir, &args, name, &[], procs)?;
    if !ran.success() {
        bail!(ran.failure(&format!("crest pre-dump into {name}")));
    }
    Ok(())
}

/// The final dump of `pid` into the images directory after `prev` (with
/// the options `extra`); the dumped task reaped.
fn final_dump(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    (prev, extra): (&str, &[&str]),
    procs: &mut Procs,
) -> Result<()> {
    let images = dir.images.to_string_lossy().into_owned();
    let pid_s = pid.to_string();
    let prev = format!("../{prev}");
    let mut args = vec![
        "dump",
        "-t",
        &pid_s,
        "-D",
        &images,
        "-o",
        "dump.log",
        "-v4",
        "--prev-images-dir",
        &prev,
    ];
    args.extend_from_slice(extra);
    let ran = crest_run(cfg, dir, &args, "dump", &[], procs)?;
    if !ran.success() {
        bail!(ran.failure("crest dump"));
    }
    reap_dumped(pid, procs)?;
    Ok(())
}

/// Kills every keeper and waits until `pid`'s memory is tracked no more.
fn end_keepers(pid: Pid) -> Result<()> {
    for k in keepers() {
        let _ = nix::sys::signal::kill(Pid::from_raw(k), nix::sys::signal::Signal::SIGKILL);
    }
    if !procs::wait_until(Duration::from_secs(3), || !tracked(pid)) {
        bail!("the keepers killed, pid {pid}'s memory is still tracked");
    }
    Ok(())
}

/// The restore of `pid` and its own check.
fn land(cfg: &Config, dir: &CaseDir, pid: Pid, procs: &mut Procs) -> Result<Outcome> {
    case::restore_detached(cfg, dir, pid, procs)?;
    case::finish_tree(dir, pid, pid, StdioKind::DevNull, procs)
}

/// Fails, saying `what`, unless the dump in `images` took pages from its
/// parent images.
fn took_from_parent(images: &Path, what: &str) -> Result<()> {
    if skipped_parent(images)? == 0 {
        bail!("{what}");
    }
    Ok(())
}

/// Reaps the task the dump killed.
fn reap_dumped(pid: Pid, procs: &mut Procs) -> Result<()> {
    match wait_exit(pid, Duration::from_secs(10))? {
        Waited::Exited(_) => procs.untrack(pid),
        other => bail!("the dumped pid {pid}: {other:?} 10 s after the dump"),
    }
    Ok(())
}

/// Whether `pid`'s memory is tracked (a mapping registered).
fn tracked(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/smaps")).is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("VmFlags:") && l.contains(" uw"))
    })
}

fn iter_tracking_lost(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let pid = start_iter(cfg, dir, procs)?;
    pre_dump(cfg, dir, pid, ("pre-1", None), procs)?;
    if !tracked(pid) {
        bail!("after the pre-dump no mapping of pid {pid} is tracked (no uw in its smaps)");
    }
    end_keepers(pid)?;
    std::thread::sleep(BETWEEN);
    final_dump(cfg, dir, pid, ("pre-1", &[]), procs)?;
    if skipped_parent(&dir.images)? != 0 {
        bail!("the tracking was lost, yet the dump took pages from its parent images");
    }
    let log = fs::read_to_string(dir.images.join("dump.log")).unwrap_or_default();
    if !log.contains("tracking") || !log.contains("lost") {
        bail!("dump.log does not say the memory tracking was lost");
    }
    land(cfg, dir, pid, procs)
}

fn iter_leave_running(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let pid = start_iter(cfg, dir, procs)?;
    pre_dump(cfg, dir, pid, ("pre-1", None), procs)?;
    std::thread::sleep(BETWEEN);
    let mid = dir.root.join("mid").to_string_lossy().into_owned();
    let pid_s = pid.to_string();
    let args = [
        "dump",
        "-t",
        &pid_s,
        "-D",
        &mid,
        "-o",
        "dump.log",
        "-v4",
        "-R",
        "--track-mem",
        "--prev-images-dir",
        "../pre-1",
    ];
    let ran = crest_run(cfg, dir, &args, "mid", &[], procs)?;
    if !ran.success() {
        bail!(ran.failure("crest dump -R --track-mem"));
    }
    if !procs::alive(pid) || !tracked(pid) || keepers().is_empty() {
        bail!("after dump -R --track-mem pid {pid} is not running tracked with a keeper");
    }
    took_from_parent(
        &dir.root.join("mid"),
        "dump -R --track-mem took no page from its parent images",
    )?;
    std::thread::sleep(BETWEEN);
    final_dump(cfg, dir, pid, ("mid", &[]), procs)?;
    took_from_parent(
        &dir.images,
        "the dump after dump -R --track-mem took no page from it",
    )?;
    land(cfg, dir, pid, procs)
}

fn iter_auto_dedup(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    use std::os::unix::fs::MetadataExt;
    let pid = start_iter(cfg, dir, procs)?;
    pre_dump(cfg, dir, pid, ("pre-1", None), procs)?;
    let pages = dir.root.join("pre-1/pages-1.img");
    let before = fs::metadata(&pages)?;
    std::thread::sleep(BETWEEN);
    final_dump(cfg, dir, pid, ("pre-1", &["--auto-dedup"]), procs)?;
    let after = fs::metadata(&pages)?;
    if after.len() != before.len() || after.blocks() >= before.blocks() {
        bail!(
            "--auto-dedup: the parent's pages file went from {} bytes in {} blocks to {} bytes in \
             {} blocks",
            before.len(),
            before.blocks(),
            after.len(),
            after.blocks()
        );
    }
    land(cfg, dir, pid, procs)
}

fn iter_parent_missing(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let pid = start_iter(cfg, dir, procs)?;
    pre_dump(cfg, dir, pid, ("pre-1", None), procs)?;
    std::thread::sleep(BETWEEN);
    final_dump(cfg, dir, pid, ("pre-1", &[]), procs)?;
    let pages = dir.root.join("pre-1/pages-1.img");
    fs::remove_file(&pages).with_context(|| format!("remove {}", pages.display()))?;
    let images = dir.images.to_string_lossy().into_owned();
    let args = ["restore", "-D", &images, "-d", "-o", "restore.log", "-v4"];
    procs.track(pid);
    let ran = crest_run(cfg, dir, &args, "restore", &[], procs)?;
    if ran.success() {
        bail!("the restore succeeded without its parent's pages file");
    }
    if !ran.stderr.contains("pages-1.img") {
        bail!(
            "the restore's error does not name the missing pages file: {}",
            ran.stderr.trim()
        );
    }
    if procs::exists(pid) {
        bail!("the failed restore left pid {pid} behind");
    }
    procs.untrack(pid);
    Ok(Outcome::Pass)
}

fn iter_crest_killed(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let pid = start_iter(cfg, dir, procs)?;
    let fds_before = fd_links(pid);
    // the points a pre-dump passes (one that goes on from a parent)
    pre_dump(cfg, dir, pid, ("pre-1", None), procs)?;
    let images = dir.root.join("list").to_string_lossy().into_owned();
    let pid_s = pid.to_string();
    let args = [
        "pre-dump",
        "-t",
        &pid_s,
        "-D",
        &images,
        "--prev-images-dir",
        "../pre-1",
    ];
    let ran = crest_run(cfg, dir, &args, "list", &[("CREST_FAULT", "list")], procs)?;
    let points = ran
        .stderr
        .lines()
        .filter(|l| l.starts_with("crest fault point "))
        .count();
    if !ran.success() || points == 0 {
        bail!(
            "a pre-dump with CREST_FAULT=list: {}",
            ran.failure("crest pre-dump")
        );
    }
    for n in 1..=points {
        // (each round from a task tracked afresh, its keeper the only one)
        end_keepers(pid)?;
        pre_dump(cfg, dir, pid, ("pre-1", None), procs)?;
        let images = dir.root.join(format!("killed-{n}"));
        let images = images.to_string_lossy().into_owned();
        let args = [
            "pre-dump",
            "-t",
            &pid_s,
            "-D",
            &images,
            "--prev-images-dir",
            "../pre-1",
        ];
        let spec = format!("{n}:kill");
        let tag = format!("killed-{n}");
        let ran = crest_run(cfg, dir, &args, &tag, &[("CREST_FAULT", &spec)], procs)?;
        if ran.success() {
            continue;
        }
        // running, and tracked only while a keeper still holds it
        // (and let go by the dump's guard, which takes the recovery area
        // away once crest is gone)
        let settled = procs::wait_until(Duration::from_secs(15), || {
            running_of("__dump-guard").is_empty()
                && procs::tree_problems(pid).is_empty()
                && procs::proc_status_field(pid, "TracerPid").as_deref() == Some("0")
                && (!tracked(pid) || !keepers().is_empty())
        });
        if !settled {
            let problems = procs::tree_problems(pid);
            bail!(
                "crest killed at fault point {n} of a pre-dump: pid {pid} {}",
                if problems.is_empty() {
                    "is tracked with no keeper left".to_string()
                } else {
                    problems.join("; ")
                }
            );
        }
        let fds = fd_links(pid);
        if fds != fds_before {
            bail!(
                "crest killed at fault point {n} of a pre-dump: fds {fds_before:?} became {fds:?}"
            );
        }
    }
    end_keepers(pid)?;
    case::finish_tree(dir, pid, pid, StdioKind::DevNull, procs)
}

/// A second network namespace joined to this one by a veth pair:
/// (namespace name, this side's address, the other side's); removed when
/// dropped.
struct OtherHost {
    name: String,
}

impl OtherHost {
    const HERE: &'static str = "10.77.0.1";
    const THERE: &'static str = "10.77.0.2";

    fn make() -> Result<OtherHost> {
        let name = format!("crest-dst-{}", std::process::id());
        let h = OtherHost { name };
        let veth = format!("cv{}", std::process::id() % 100_000);
        let peer = format!("{veth}p");
        let cmds: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), h.name.clone()],
            vec![
                "link".into(),
                "add".into(),
                veth.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                peer.clone(),
                "netns".into(),
                h.name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/24", Self::HERE),
                "dev".into(),
                veth.clone(),
            ],
            vec!["link".into(), "set".into(), veth.clone(), "up".into()],
            vec![
                "-n".into(),
                h.name.clone(),
                "addr".into(),
                "add".into(),
                format!("{}/24", Self::THERE),
                "dev".into(),
                peer.clone(),
            ],
            vec![
                "-n".into(),
                h.name.clone(),
                "link".into(),
                "set".into(),
                peer,
                "up".into(),
            ],
            vec![
                "-n".into(),
                h.name.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for c in cmds {
            let out = std::process::Command::new("ip")
                .args(&c)
                .output()
                .context("run ip")?;
            if !out.status.success() {
                bail!(
                    "ip {}: {}",
                    c.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(h)
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        // (the veth pair goes with the namespace)
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Starts a page server in `host` for `<case>/dst/<name>` (after `prev`),
/// in the background once it listens.
fn page_server(
    cfg: &Config,
    dir: &CaseDir,
    host: &OtherHost,
    (name, prev): (&str, Option<&str>),
    procs: &mut Procs,
) -> Result<()> {
    let images = dir
        .root
        .join("dst")
        .join(name)
        .to_string_lossy()
        .into_owned();
    let crest_path = cfg.crest.to_string_lossy().into_owned();
    let mut args = vec![
        "netns",
        "exec",
        &host.name,
        &crest_path,
        "page-server",
        "-D",
        &images,
        "--address",
        OtherHost::THERE,
        "--port",
        "27031",
        "-d",
        "-o",
        "page-server.log",
        "-v4",
    ];
    let prev = prev.map(|p| format!("../{p}"));
    if let Some(p) = &prev {
        args.extend(["--prev-images-dir", p.as_str()]);
    }
    let mut cmd = std::process::Command::new("ip");
    cmd.args(&args);
    let ran = crest::run(
        cmd,
        &dir.root,
        &format!("page-server-{name}"),
        CREST_TIMEOUT,
        procs,
    )?;
    if !ran.success() {
        bail!(ran.failure("crest page-server"));
    }
    Ok(())
}

fn iter_page_server(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Ok(Outcome::Skip(
            "no ip(8) to make a second network namespace".into(),
        ));
    }
    let host = OtherHost::make()?;
    let pid = start_iter(cfg, dir, procs)?;
    let pid_s = pid.to_string();
    let src = |n: &str| dir.root.join("src").join(n).to_string_lossy().into_owned();
    page_server(cfg, dir, &host, ("1", None), procs)?;
    let s1 = src("1");
    let args = [
        "pre-dump",
        "-t",
        &pid_s,
        "-D",
        &s1,
        "-o",
        "pre-dump.log",
        "-v4",
        "--page-server",
        "--address",
        OtherHost::THERE,
        "--port",
        "27031",
    ];
    let ran = crest_run(cfg, dir, &args, "pre-dump", &[], procs)?;
    if !ran.success() {
        bail!(ran.failure("crest pre-dump --page-server"));
    }
    std::thread::sleep(BETWEEN);
    page_server(cfg, dir, &host, ("2", Some("1")), procs)?;
    let s2 = src("2");
    let args = [
        "dump",
        "-t",
        &pid_s,
        "-D",
        &s2,
        "-o",
        "dump.log",
        "-v4",
        "--prev-images-dir",
        "../1",
        "--page-server",
        "--address",
        OtherHost::THERE,
        "--port",
        "27031",
    ];
    let ran = crest_run(cfg, dir, &args, "dump", &[], procs)?;
    if !ran.success() {
        bail!(ran.failure("crest dump --page-server"));
    }
    reap_dumped(pid, procs)?;
    for d in [src("1"), src("2")] {
        let pages = fs::read_dir(&d)?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("pages-"));
        if pages {
            bail!("{d} holds pages: the dump was to send them to the page server");
        }
    }
    took_from_parent(
        Path::new(&s2),
        "the dump through the page server took no page from its parent images",
    )?;
    // the rest of the images go over, as a user copies them
    let dst = dir.root.join("dst/2");
    for e in fs::read_dir(&s2)?.flatten() {
        if e.file_type()?.is_file() {
            fs::copy(e.path(), dst.join(e.file_name()))?;
        }
    }
    if parent_entries(&dst)? == 0 {
        bail!("the page server's pagemaps mark no page as the parent images'");
    }
    let images = dst.to_string_lossy().into_owned();
    let args = [
        "restore",
        "-D",
        &images,
        "-d",
        "--pidfile",
        "restore.pid",
        "-o",
        "restore.log",
        "-v4",
    ];
    procs.track(pid);
    // (lazily: the pages come from the daemon as the task runs)
    let daemon = crate::lazy::start_daemon_for(cfg, dir, (&dst, None), &[], procs)?;
    let mut args = args.to_vec();
    args.push("--lazy-pages");
    let ran = crest_run(cfg, dir, &args, "restore", &[], procs)?;
    if !ran.success() {
        bail!(ran.failure("crest restore --lazy-pages from the page server's images"));
    }
    crate::lazy::wait_done_for(dir, &dst, daemon, procs)?;
    drop(host);
    case::finish_tree(dir, pid, pid, StdioKind::DevNull, procs)
}
