//! Lazy restore (issue 18, item 2): `crest lazy-pages` started for the
//! case's images, then `crest restore --lazy-pages`: the tree runs before
//! its private anonymous memory is in, the daemon serves the faults and
//! pushes the rest, then exits and lets the tree go.
//!
//! A protocol workload that writes `<statedir>/lazy` (`lazy_fork`, in
//! every flavor), or every workload when `CREST_E2E_LAZY` is set (a run
//! of the whole suite restored lazily), is restored this way; the harness
//! waits for the daemon to say every page is in and to exit (and for
//! `lazy_fork` to write `<statedir>/burst`: its forks after the restore
//! are over) before it compares the tree and the outside view (no task is
//! traced any more by then), and the workload checks its own pages.
//!
//! Cases of their own (`lazy_fork`, 256 MiB, dumped once):
//! - `lazy_source_dies`: the daemon killed (`CREST_FAULT=2:kill`, at its
//!   second stretch pushed after the tree ran), then failing there
//!   (`2:fail`): each time the restored task is killed by SIGKILL, never
//!   left to read zeros or to wait on a fault, and the holder of the
//!   userfaultfds' second copies gone; then a byte of the pages
//!   file flipped where only the daemon reads (the restore leaves the
//!   check of those chunks to it): the daemon kills the tree and exits
//!   naming the file; then, the byte put back, a restore with a daemon
//!   that lives passes the workload's check.
//! - `lazy_no_daemon`: `restore --lazy-pages` with no daemon fails naming
//!   its socket and leaves no task behind.

use std::fs;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::case::{self, CaseDir, DirCase, Program, Settle, Workload};
use crate::crest::{self, CREST_TIMEOUT};
use crate::procs::{self, wait_exit, Exit, Procs, Waited};
use crate::{Config, Outcome, StdioKind};

const CASES: [(&str, DirCase); 2] = [
    ("lazy_source_dies", lazy_source_dies),
    ("lazy_no_daemon", lazy_no_daemon),
];

/// Runs the cases whose names pass `selected`.
pub fn run(cfg: &Config, report: &mut crate::suite::Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
}

/// Whether the case's restore is lazy: its workload asks
/// (`<statedir>/lazy`), or `CREST_E2E_LAZY` asks for every workload.
pub fn asked(dir: &CaseDir) -> bool {
    dir.state.join("lazy").exists() || std::env::var_os("CREST_E2E_LAZY").is_some()
}

/// Starts `crest lazy-pages -d` for the case's images (with `env` set):
/// the daemon's pid, tracked.
pub fn start_daemon(
    cfg: &Config,
    dir: &CaseDir,
    env: &[(&str, &str)],
    procs: &mut Procs,
) -> Result<Pid> {
    start_daemon_for(cfg, dir, (&dir.images, None), env, procs)
}

/// [`start_daemon`] for the images in `images` (and the work directory
/// `work`, where its log goes, when given).
pub fn start_daemon_for(
    cfg: &Config,
    dir: &CaseDir,
    (images, work): (&std::path::Path, Option<&std::path::Path>),
    env: &[(&str, &str)],
    procs: &mut Procs,
) -> Result<Pid> {
    let pidfile = dir.root.join("lazy.pid");
    let _ = fs::remove_file(&pidfile);
    // (said again after this restore)
    let _ = fs::remove_file(dir.state.join("burst"));
    let images = images.to_string_lossy().into_owned();
    let pidfile_s = pidfile.to_string_lossy().into_owned();
    let work = work.map(|w| w.to_string_lossy().into_owned());
    let mut args = vec![
        "lazy-pages",
        "-D",
        &images,
        "-d",
        "--pidfile",
        &pidfile_s,
        "-o",
        "lazy.log",
        "-v4",
    ];
    if let Some(w) = &work {
        args.extend(["-W", w.as_str()]);
    }
    let mut cmd = crest::command(&cfg.crest, &args);
    cmd.envs(env.iter().copied());
    let ran = crest::run(cmd, &dir.root, "lazy-pages", CREST_TIMEOUT, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest lazy-pages -d"));
    }
    let pid = procs::read_pid_file(&pidfile).context("crest lazy-pages --pidfile")?;
    procs.track(pid);
    Ok(pid)
}

/// Waits for the daemon to put every page in and exit, and checks that
/// it said so.
pub fn wait_done(dir: &CaseDir, daemon: Pid, procs: &mut Procs) -> Result<()> {
    wait_done_for(dir, &dir.images, daemon, procs)
}

/// [`wait_done`] of a daemon whose log is in `work` (its work directory).
pub fn wait_done_for(
    dir: &CaseDir,
    work: &std::path::Path,
    daemon: Pid,
    procs: &mut Procs,
) -> Result<()> {
    let log = work.join("lazy.log");
    match wait_exit(daemon, Duration::from_secs(60))? {
        Waited::Exited(Exit::Code(0)) => procs.untrack(daemon),
        other => bail!(
            "the lazy-pages daemon {daemon}: {other:?}; its log ends: {}",
            crest::tail(&log, 3).unwrap_or_default()
        ),
    }
    // (a workload that forks right after its restore says when it is done)
    if dir.state.join("lazy").exists() {
        let burst = dir.state.join("burst");
        if !procs::wait_until(Duration::from_secs(10), || burst.exists()) {
            bail!(
                "the workload wrote no {} 10 s after its lazy restore",
                burst.display()
            );
        }
    }
    let said = fs::read_to_string(&log).unwrap_or_default();
    if !said.contains("every page in") {
        bail!(
            "the lazy-pages daemon exited without saying every page is in: {}",
            crest::tail(&log, 3).unwrap_or_default()
        );
    }
    Ok(())
}

fn start_lazy_fork(cfg: &Config, dir: &CaseDir, mib: &str, procs: &mut Procs) -> Result<Pid> {
    let w = Workload {
        name: "lazy_fork",
        program: Program::C("lazy_fork"),
        args: vec![mib.to_string()],
        settle: Settle::Spinning,
    };
    let pid = case::start(cfg, &w, dir, StdioKind::DevNull, procs)?;
    case::wait_ready(dir, pid, procs)?;
    std::thread::sleep(Duration::from_millis(100));
    Ok(pid)
}

/// A daemon (with `env`) and `restore --lazy-pages` of `pid`, which must
/// succeed: the daemon's pid.
fn lazy_restore(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    env: &[(&str, &str)],
    procs: &mut Procs,
) -> Result<Pid> {
    let daemon = start_daemon(cfg, dir, env, procs)?;
    procs.track(pid);
    let (ran, _) = case::run_restore_detached_with(cfg, dir, procs, &[], &["--lazy-pages"])?;
    if !ran.success() {
        bail!(ran.failure(&format!("crest restore --lazy-pages (daemon with {env:?})")));
    }
    Ok(daemon)
}

/// Dumps `pid` (which dies, reaped).
fn dump_it(cfg: &Config, dir: &CaseDir, pid: Pid, procs: &mut Procs) -> Result<()> {
    case::dump(cfg, dir, pid, false, procs)
}

fn lazy_source_dies(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let pid = start_lazy_fork(cfg, dir, "256", procs)?;
    dump_it(cfg, dir, pid, procs)?;
    for (fault, daemon_exit) in [
        ("2:kill", Exit::Signal(Signal::SIGKILL)),
        ("2:fail", Exit::Code(1)),
    ] {
        let daemon = lazy_restore(cfg, dir, pid, &[("CREST_FAULT", fault)], procs)?;
        match wait_exit(pid, Duration::from_secs(10))? {
            Waited::Exited(Exit::Signal(Signal::SIGKILL)) => procs.untrack(pid),
            other => bail!(
                "the lazy-pages daemon ended at its fault point ({fault}), and the restored \
                 pid {pid}: {other:?} (state {:?}), not killed by SIGKILL",
                procs::proc_state(pid)
            ),
        }
        match wait_exit(daemon, Duration::from_secs(10))? {
            Waited::Exited(e) if e == daemon_exit => procs.untrack(daemon),
            other => bail!("the lazy-pages daemon with {fault}: {other:?}, not {daemon_exit:?}"),
        }
        // (nor a child it forked meanwhile: its group is empty once the
        // zombies are reaped, and its pid free for the next round)
        let gone = procs::wait_until(Duration::from_secs(5), || {
            procs::reap_zombie_children();
            group_members(pid).is_empty()
        });
        if !gone {
            bail!(
                "processes of group {pid} still exist after its lazy-pages daemon ended \
                 ({fault}): {:?}",
                group_members(pid)
            );
        }
        if dir.state.join("verdict").exists() {
            bail!("the task killed with its daemon ({fault}) wrote a verdict");
        }
        // (the holder of the userfaultfds' second copies lets go too)
        let holders = || crate::iterative::running_of("__lazy-holder");
        if !procs::wait_until(Duration::from_secs(3), || {
            procs::reap_zombie_children();
            holders().is_empty()
        }) {
            bail!(
                "the userfaultfd holder still runs after its daemon ended ({fault}): {:?}",
                holders()
            );
        }
    }
    // a byte of the pages file flipped where only the daemon reads: the
    // restore (which leaves those chunks' checks to the daemon) passes,
    // the daemon finds the chunk changed, kills the tree and says why
    let pages = pages_file(dir)?;
    let mut bytes = fs::read(&pages)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(&pages, &bytes)?;
    let daemon = lazy_restore(cfg, dir, pid, &[], procs)?;
    match wait_exit(pid, Duration::from_secs(10))? {
        Waited::Exited(Exit::Signal(Signal::SIGKILL)) => procs.untrack(pid),
        other => bail!(
            "a page flipped in the pages file: the restored pid {pid}: {other:?}, not killed by \
             its lazy-pages daemon"
        ),
    }
    match wait_exit(daemon, Duration::from_secs(10))? {
        Waited::Exited(Exit::Code(1)) => procs.untrack(daemon),
        other => bail!("the lazy-pages daemon with a page flipped: {other:?}, not exit code 1"),
    }
    let log = fs::read_to_string(dir.images.join("lazy.log")).unwrap_or_default();
    let name = pages.file_name().map(|n| n.to_string_lossy().into_owned());
    if !name.is_some_and(|n| log.contains(&n)) {
        bail!(
            "the lazy-pages daemon killed the tree without naming {}: {}",
            pages.display(),
            crest::tail(&dir.images.join("lazy.log"), 3).unwrap_or_default()
        );
    }
    procs::wait_until(Duration::from_secs(5), || {
        procs::reap_zombie_children();
        group_members(pid).is_empty()
    });
    bytes[at] ^= 0x40;
    fs::write(&pages, &bytes)?;
    // and with a daemon that lives, the task runs on and passes
    let daemon = lazy_restore(cfg, dir, pid, &[], procs)?;
    wait_done(dir, daemon, procs)?;
    case::finish(dir, pid, StdioKind::DevNull, procs)
}

/// The images' pages file (the one of the task's pagemap: the only one).
fn pages_file(dir: &CaseDir) -> Result<std::path::PathBuf> {
    fs::read_dir(&dir.images)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
        })
        .context("no pages file in the images")
}

/// The processes whose process group is `pgid` (zombies too).
fn group_members(pgid: Pid) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|st| {
                st.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<i32>().ok())
                    == Some(pgid.as_raw())
            })
        })
        .collect()
}

fn lazy_no_daemon(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let pid = start_lazy_fork(cfg, dir, "16", procs)?;
    dump_it(cfg, dir, pid, procs)?;
    procs.track(pid);
    let (ran, _) = case::run_restore_detached_with(cfg, dir, procs, &[], &["--lazy-pages"])?;
    if ran.success() {
        bail!("crest restore --lazy-pages with no lazy-pages daemon succeeded");
    }
    if !ran.stderr.contains("lazy-pages.socket") {
        bail!(
            "crest restore --lazy-pages with no daemon failed without naming its socket: {}",
            ran.stderr.trim()
        );
    }
    if procs::proc_state(pid).is_some_and(|s| s != 'Z') {
        bail!("the failed lazy restore left pid {pid} behind");
    }
    Ok(Outcome::Pass)
}
