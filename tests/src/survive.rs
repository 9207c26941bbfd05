//! A crest killed in the middle of a dump harms nothing (issue 15): at
//! fault points chosen across a dump (`CREST_FAULT=N:kill`, see crest-sys
//! `fault`), crest dies by SIGKILL and the workload must run on as if it had
//! never been dumped: untraced, not stopped, the kernel's outside view as
//! before (the recovery area too, which the dump's guard takes away once
//! crest is gone, and the guard itself ends), and its own check passing
//! (registers, FPU and AVX state, TLS, signal masks).
//!
//! - `survive_dump_kill_threads`: `threads_busy` (9 threads spinning with
//!   values in their xmm registers, each with its own mask);
//! - `survive_dump_kill_fpu`: `fpu_avx` (ymm, x87 and MXCSR);
//! - `survive_dump_kill_signals`: `signals` (handlers, masks, pending
//!   signals, an alternate stack);
//! - `survive_dump_kill_tcp`: `sockets tcp` dumped with
//!   `--tcp-established`: an established connection crest put in repair
//!   mode is taken out of it by the dump's guard when crest dies.
//!
//! - `survive_dump_sigterm`: a SIGTERM to crest in the middle of a dump
//!   (`CREST_FAULT=N:term`) fails the dump with a message naming the
//!   signal, and the tree is released as after any failure: no recovery
//!   area left, the outside view exactly as before;
//! - `survive_dump_timeout`: a vfork parent (in uninterruptible sleep until
//!   its child ends) cannot be seized: `--timeout 1` fails the dump naming
//!   it, and the tree runs on.
//!
//! - `survive_dump_fail_walk_uns`: `sock_fork` (a tree whose processes
//!   hold the two ends of unix connections) inside its own user, pid,
//!   mount, uts, ipc, net and time namespaces; a dump with `-R` fails at a
//!   sample of its points (`CREST_FAULT=N:fail`): after each the tree runs
//!   on untraced with its outside view exactly as before, and in the end
//!   it passes its own check;
//! - `survive_restore_walk_uns` and `survive_restore_walk_threads`: the
//!   same tree, and `threads_busy`, dumped; restores that fail at a sample
//!   of their points (in turn: failed there, sent SIGTERM, killed) leave no task, no
//!   helper, no mount and no file behind; then a restore without faults
//!   brings the tree back and it passes its own check.
//!
//! - `images_checksums`: a dump of `mem_patterns` writes `crest-manifest`;
//!   a bit flipped in its pages file, a file cut short and a file added
//!   are each refused by `crest check-images` and by the restore, naming
//!   the file, with no task left; the intact images then restore and the
//!   workload passes its own check.
//! - `mapped_file_changed`: a workload run from a copy of its executable,
//!   dumped; the copy grown by a byte: the restore refuses naming it and
//!   that it changed since the dump (CRIU's default file validation), no
//!   task left; the copy put back, the restore passes.
//!
//! - `concurrent_dumps_restores`: two trees dumped at the same time, then
//!   restored at the same time: both come back and pass their checks;
//! - `restore_under_fork_load`: a tree in its own user and pid namespaces
//!   (its tasks' outer pids go through `ns_last_pid`) restored while a fork
//!   loop runs on every CPU: it succeeds, or fails naming the raced ids
//!   with nothing left behind.
//!
//! The recovery area's own `mmap` and its final `munmap` run with the
//! thread parked in the vdso loop (points named "parked"): walked like
//! the others. Points named "unguarded" are those calls where the vdso has
//! no loop site or the stack no room (README, "How a dump survives
//! crest's death") and are not walked. Every other kind of point is
//! walked, and one injected call in [`CALL_STRIDE`].

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::case::{self, CaseDir, Program, Settle, Workload};
use crate::crest::{self, CREST_TIMEOUT};
use crate::outside;
use crate::procs::{self, Exit, Procs};
use crate::suite::Report;
use crate::{Config, Outcome, StdioKind};

/// Of the points inside injected calls, one in this many is walked.
const CALL_STRIDE: usize = 37;

const CASES: [(&str, &str, &[&str], Settle); 4] = [
    (
        "survive_dump_kill_threads",
        "threads_busy",
        &[],
        Settle::Spinning,
    ),
    ("survive_dump_kill_fpu", "fpu_avx", &[], Settle::Spinning),
    ("survive_dump_kill_signals", "signals", &[], Settle::Blocked),
    (
        "survive_dump_kill_tcp",
        "sockets",
        &["tcp"],
        Settle::Blocked,
    ),
];

pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(
        cfg,
        report,
        selected,
        &[
            ("survive_dump_sigterm", sigterm),
            ("survive_dump_timeout", timeout),
            ("survive_dump_fail_walk_uns", dump_fail_walk_uns),
            ("survive_restore_walk_uns", restore_walk_uns),
            ("survive_restore_walk_threads", restore_walk_threads),
            ("images_checksums", images_checksums),
            ("mapped_file_changed", mapped_file_changed),
            ("concurrent_dumps_restores", concurrent),
            ("restore_under_fork_load", under_fork_load),
        ],
    );
    for &(name, program, args, settle) in &CASES {
        let n = case::case_name(name, crate::Flavor::Host, None);
        if !selected(&n) {
            continue;
        }
        let outcome = if !cfg.root {
            Outcome::Skip("needs root".into())
        } else if !cfg.checkpoint {
            Outcome::Skip("CREST_E2E_NOCHECKPOINT=1: no crest".into())
        } else {
            let w = Workload {
                name,
                program: Program::C(program),
                args: args.iter().map(|a| a.to_string()).collect(),
                settle,
            };
            case::run_in_dir(cfg, &n, |dir, procs| walk(cfg, dir, &w, procs))
        };
        report.record(&n, outcome);
    }
}

/// The points a dump of `w` passes, from a run with `CREST_FAULT=list`.
fn list_points(
    cfg: &Config,
    dir: &CaseDir,
    w: &Workload,
    procs: &mut Procs,
) -> Result<Vec<String>> {
    let sub = sub_dir(dir, "list")?;
    let (pid, before) = start(cfg, &sub, w, procs)?;
    let ran = dump(cfg, &sub, pid, "list", procs)?;
    if !ran.success() {
        bail!(ran.failure("crest dump with CREST_FAULT=list"));
    }
    let points: Vec<String> = ran
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("crest fault point "))
        .filter_map(|l| l.split_once(": ").map(|(_, what)| what.to_string()))
        .collect();
    let problems = after_checks(&sub, pid, &before, "after a dump -R");
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    expect_pass(&sub, pid, procs, "after a dump -R")?;
    if points.is_empty() {
        bail!("crest dump with CREST_FAULT=list printed no fault point");
    }
    Ok(points)
}

/// The 1-based numbers of the points to kill crest at.
fn chosen(points: &[String]) -> Vec<usize> {
    let mut calls = 0;
    let mut out = Vec::new();
    for (i, what) in points.iter().enumerate() {
        if what.contains("unguarded") {
            continue;
        }
        if what.starts_with("injected call") {
            calls += 1;
            if calls % CALL_STRIDE != 1 {
                continue;
            }
        }
        out.push(i + 1);
    }
    out
}

fn walk(cfg: &Config, dir: &CaseDir, w: &Workload, procs: &mut Procs) -> Result<Outcome> {
    let points = list_points(cfg, dir, w, procs)?;
    let walked = chosen(&points);
    let mut failures = Vec::new();
    for &n in &walked {
        let what = &points[n - 1];
        if let Err(e) = killed_at(cfg, dir, w, n, procs) {
            failures.push(format!("killed at point {n} ({what}): {e:#}"));
        }
    }
    fs::write(
        dir.root.join("walked"),
        walked
            .iter()
            .map(|n| format!("{n} {}\n", points[n - 1]))
            .collect::<String>(),
    )
    .context("write the list of walked points")?;
    if !failures.is_empty() {
        bail!(
            "{} of {} fault points harmed the workload:\n  {}",
            failures.len(),
            walked.len(),
            failures.join("\n  ")
        );
    }
    Ok(Outcome::Pass)
}

/// Starts `w`, kills crest at point `n` of its dump, checks the workload.
fn killed_at(cfg: &Config, dir: &CaseDir, w: &Workload, n: usize, procs: &mut Procs) -> Result<()> {
    let sub = sub_dir(dir, &format!("p{n}"))?;
    let (pid, before) = start(cfg, &sub, w, procs)?;
    let ran = dump(cfg, &sub, pid, &format!("{n}:kill"), procs)?;
    if ran.exit != Exit::Signal(Signal::SIGKILL) {
        bail!("crest was to die by SIGKILL, but ended with {}", ran.exit);
    }
    let what = "after crest was killed";
    let problems = after_checks(&sub, pid, &before, what);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    expect_pass(&sub, pid, procs, what)?;
    let _ = fs::remove_dir_all(&sub.root);
    Ok(())
}

/// A case directory of its own for one run, inside the case's.
fn sub_dir(dir: &CaseDir, name: &str) -> Result<CaseDir> {
    CaseDir::at(dir.root.join(name))
}

/// Starts the workload, waits until it is ready and settled, and takes the
/// outside view.
fn start(
    cfg: &Config,
    dir: &CaseDir,
    w: &Workload,
    procs: &mut Procs,
) -> Result<(Pid, outside::View)> {
    let pid = case::start(cfg, w, dir, StdioKind::LogFile, procs)?;
    case::wait_ready(dir, pid, procs)?;
    match w.settle {
        Settle::Blocked => {
            procs::wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
        }
        _ => std::thread::sleep(Duration::from_millis(100)),
    }
    let tree = procs::tree_snapshot(pid).context("process tree before the dump")?;
    Ok((pid, outside::snapshot(&tree)))
}

/// `crest dump -R` with `CREST_FAULT` set to `fault`.
fn dump(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    fault: &str,
    procs: &mut Procs,
) -> Result<crest::Ran> {
    case::run_dump_env(cfg, dir, pid, true, procs, &[("CREST_FAULT", fault)])
}

/// The tree runs untraced and the outside view is `before` again, the
/// recovery area included: the dump's guard takes it away once crest is
/// gone (a few milliseconds), and then ends.
fn after_checks(dir: &CaseDir, pid: Pid, before: &outside::View, what: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let mut problems = procs::tree_problems(pid);
        for d in case::check_outside(dir, pid, before, what) {
            let lines: Vec<&str> = d.lines().skip(1).map(str::trim).collect();
            problems.push(format!("outside view {what}:\n  {}", lines.join("\n  ")));
        }
        let guards = dump_guards();
        if !guards.is_empty() {
            problems.push(format!(
                "the dump's guard still runs {what}: pids {guards:?}"
            ));
        }
        if problems.is_empty() || Instant::now() >= deadline {
            return problems;
        }
    }
}

/// The pids of running `crest __dump-guard` processes.
fn dump_guards() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|&b| b == 0).nth(1) == Some(b"__dump-guard".as_slice()))
                .unwrap_or(false)
        })
        .collect()
}

/// SIGTERM to the workload; its verdict must be PASS.
fn expect_pass(dir: &CaseDir, pid: Pid, procs: &mut Procs, what: &str) -> Result<()> {
    match case::finish(dir, pid, StdioKind::LogFile, procs)? {
        Outcome::Pass => Ok(()),
        other => bail!("the workload's own check {what}: {other:?}"),
    }
}

/// SIGTERM to crest at a point halfway through a dump of `threads_busy`.
fn sigterm(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let w = Workload {
        name: "survive_dump_sigterm",
        program: Program::C("threads_busy"),
        args: Vec::new(),
        settle: Settle::Spinning,
    };
    let points = list_points(cfg, dir, &w, procs)?;
    let n = points.len() / 2;
    let sub = sub_dir(dir, "term")?;
    let (pid, before) = start(cfg, &sub, &w, procs)?;
    let ran = dump(cfg, &sub, pid, &format!("{n}:term"), procs)?;
    if ran.success() || !ran.stderr.contains("stopped by signal 15") {
        bail!(ran.failure("crest dump with SIGTERM halfway (expected \"stopped by signal 15\")"));
    }
    let what = "after a dump stopped by SIGTERM";
    let mut problems = procs::tree_problems(pid);
    std::thread::sleep(Duration::from_millis(100));
    problems.extend(case::check_outside(&sub, pid, &before, what));
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    expect_pass(&sub, pid, procs, what)?;
    Ok(Outcome::Pass)
}

/// `--timeout 1` on a tree with a vfork parent.
fn timeout(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let w = Workload {
        name: "survive_dump_timeout",
        program: Program::C("vfork_hold"),
        args: Vec::new(),
        settle: Settle::Spinning,
    };
    let (pid, _) = start(cfg, dir, &w, procs)?;
    let mut cmd = case::dump_command(&cfg.crest, dir, pid, false);
    cmd.args(["--timeout", "1"]);
    let ran = crest::run(cmd, &dir.root, "dump", CREST_TIMEOUT, procs)?;
    if ran.success() || !ran.stderr.contains("did not stop within the timeout") {
        bail!(ran.failure("crest dump --timeout 1 of a vfork parent (expected a timeout)"));
    }
    if ran.elapsed > Duration::from_secs(10) {
        bail!("crest dump --timeout 1 took {:?} to give up", ran.elapsed);
    }
    let problems = procs::tree_problems(pid);
    if !problems.is_empty() {
        bail!("after the timed-out dump: {}", problems.join("; "));
    }
    expect_pass(dir, pid, procs, "after the timed-out dump")?;
    Ok(Outcome::Pass)
}

/// The tree started for a walk: the root the harness started and the
/// workload told to check itself.
struct Started {
    root: Pid,
    main: Pid,
}

fn sock_fork() -> Workload {
    Workload {
        name: "survive_uns",
        program: Program::C("sock_fork"),
        args: Vec::new(),
        settle: Settle::Blocked,
    }
}

/// Starts `w` on the host or (`uns`) inside nsinit's namespaces.
fn start_tree(
    cfg: &Config,
    dir: &CaseDir,
    w: &Workload,
    uns: bool,
    procs: &mut Procs,
) -> Result<Started> {
    let (root, main) = if uns {
        let root = crate::ns::start(cfg, w, dir, StdioKind::LogFile, Some("-U"), procs)?;
        (root, crate::ns::wait_ready(dir, root, procs)?)
    } else {
        let root = case::start(cfg, w, dir, StdioKind::LogFile, procs)?;
        case::wait_ready(dir, root, procs)?;
        (root, root)
    };
    match w.settle {
        Settle::Blocked => {
            procs::wait_until(Duration::from_secs(5), || procs::tree_settled(root));
        }
        _ => std::thread::sleep(Duration::from_millis(100)),
    }
    Ok(Started { root, main })
}

/// The points of one run, numbered from 1, to walk: every point but the
/// unguarded ones and but one in `stride` of those inside injected calls.
fn sample(points: &[String], stride: usize) -> Vec<usize> {
    let mut calls = 0;
    (1..=points.len())
        .filter(|&n| {
            let what = &points[n - 1];
            if what.contains("unguarded") {
                return false;
            }
            if what.starts_with("injected call") {
                calls += 1;
                return calls % stride == 1;
            }
            true
        })
        .collect()
}

fn points_in(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("crest fault point "))
        .filter_map(|l| l.split_once(": ").map(|(_, what)| what.to_string()))
        .collect()
}

fn dump_fail_walk_uns(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let t = start_tree(cfg, dir, &sock_fork(), true, procs)?;
    let tree = procs::tree_snapshot(t.root).context("process tree before the dumps")?;
    let before = outside::snapshot(&tree);
    let listed = dump(cfg, dir, t.root, "list", procs)?;
    if !listed.success() {
        bail!(listed.failure("crest dump -R with CREST_FAULT=list"));
    }
    let points = points_in(&listed.stderr);
    let mut failures = Vec::new();
    let walked = sample(&points, 100);
    for &n in &walked {
        let what = &points[n - 1];
        let ran = dump(cfg, dir, t.root, &format!("{n}:fail"), procs)?;
        if ran.success() || !ran.stderr.contains(&format!("fault injected at point {n}")) {
            failures.push(format!("point {n} ({what}): {}", ran.failure("the dump")));
            continue;
        }
        let mut problems = procs::tree_problems(t.root);
        procs::wait_until(Duration::from_secs(5), || procs::tree_settled(t.root));
        problems.extend(case::check_outside(
            dir,
            t.root,
            &before,
            "after the failed dump",
        ));
        if !problems.is_empty() {
            failures.push(format!(
                "failed at point {n} ({what}): {}",
                problems.join("\n")
            ));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} failed dumps disturbed the tree:\n  {}",
            failures.len(),
            walked.len(),
            failures.join("\n  ")
        );
    }
    match case::finish_tree(dir, t.main, t.root, StdioKind::LogFile, procs)? {
        Outcome::Pass => Ok(Outcome::Pass),
        other => bail!(
            "the workload's own check after {} failed dumps: {other:?}",
            walked.len()
        ),
    }
}

fn restore_walk_uns(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    restore_walk(cfg, dir, &sock_fork(), true, procs)
}

fn restore_walk_threads(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let w = Workload {
        name: "survive_threads",
        program: Program::C("threads_busy"),
        args: vec!["4".into()],
        settle: Settle::Spinning,
    };
    restore_walk(cfg, dir, &w, false, procs)
}

/// What a failed restore must not leave behind: the harness's children
/// (crest's helpers and tasks would be reparented to it), its mounts, and
/// the files in /tmp, /dev/shm, /run and the case's state directory.
fn leftovers(dir: &CaseDir) -> Vec<String> {
    let mut out: Vec<String> = procs::harness_children()
        .into_iter()
        .map(|(p, comm, st)| format!("process {p} ({comm}, state {st})"))
        .collect();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    out.extend(mounts.lines().map(|l| format!("mount {l}")));
    for d in [
        Path::new("/tmp"),
        Path::new("/dev/shm"),
        Path::new("/run"),
        &dir.state,
    ] {
        if let Ok(rd) = fs::read_dir(d) {
            out.extend(
                rd.filter_map(Result::ok)
                    .map(|e| format!("file {}", e.path().display())),
            );
        }
    }
    out.sort();
    out
}

fn restore_walk(
    cfg: &Config,
    dir: &CaseDir,
    w: &Workload,
    uns: bool,
    procs: &mut Procs,
) -> Result<Outcome> {
    let t = start_tree(cfg, dir, w, uns, procs)?;
    let tree = procs::tree_snapshot(t.root).context("process tree before the dump")?;
    let pids: Vec<i32> = tree.keys().copied().collect();
    case::dump(cfg, dir, t.root, false, procs)?;
    // the points of a whole restore; the tree it brings back is killed
    let (listed, _) = restore(cfg, dir, "list", procs)?;
    if !listed.success() {
        bail!(listed.failure("crest restore with CREST_FAULT=list"));
    }
    let points = points_in(&listed.stderr);
    for &p in &pids {
        let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    procs::reap_or_wait_gone(t.root);
    procs::wait_until(Duration::from_secs(5), || {
        procs::reap_zombie_children();
        pids.iter().all(|p| !procs::exists(Pid::from_raw(*p)))
    });
    let baseline = leftovers(dir);
    let walked = sample(&points, 120);
    let mut failures = Vec::new();
    for (i, &n) in walked.iter().enumerate() {
        let what = &points[n - 1];
        let action = ["fail", "term", "kill"][i % 3];
        let (ran, _) = restore(cfg, dir, &format!("{n}:{action}"), procs)?;
        if ran.success() {
            // A run may pass fewer points than the listed one (a retried
            // clone, one more or less injected call), and a SIGTERM is
            // noticed only at a later point: then the restore is right to
            // succeed. The tree it made goes before the next run.
            let fired = ran.stderr.contains(&format!("crest fault point {n}:"));
            if fired && action != "term" {
                failures.push(format!(
                    "point {n} ({what}): the restore succeeded with {action}"
                ));
                break;
            }
            for &p in &pids {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            procs::wait_until(Duration::from_secs(5), || {
                procs::reap_zombie_children();
                pids.iter().all(|p| !procs::exists(Pid::from_raw(*p)))
            });
            continue;
        }
        // what crest made dies with it, a moment later
        let new_since = |now: Vec<String>| -> Vec<String> {
            now.into_iter().filter(|l| !baseline.contains(l)).collect()
        };
        // (a kernel worker may take a freed pid of the tree meanwhile)
        let ours = |p: &i32| {
            let p = Pid::from_raw(*p);
            procs::exists(p) && !procs::kernel_thread(p)
        };
        let settled = procs::wait_until(Duration::from_secs(5), || {
            procs::reap_zombie_children();
            !pids.iter().any(ours) && new_since(leftovers(dir)).is_empty()
        });
        if !settled {
            let mut left = new_since(leftovers(dir));
            left.extend(
                pids.iter()
                    .filter(|p| ours(p))
                    .map(|p| format!("task {p} of the tree")),
            );
            failures.push(format!(
                "{action} at point {n} ({what}) left: {}",
                left.join("; ")
            ));
            // clean up for the next run
            for (p, _, _) in procs::harness_children() {
                let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
            }
            procs::sweep_children();
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} failed restores left something behind:\n  {}",
            failures.len(),
            walked.len(),
            failures.join("\n  ")
        );
    }
    // and the images still restore, unless a kernel worker took a pid of
    // the tree meanwhile (then no restore can give it back)
    if let Some(p) = pids
        .iter()
        .find(|p| procs::kernel_thread(Pid::from_raw(**p)))
    {
        return Ok(Outcome::Skip(format!(
            "every failed restore was clean, but a kernel thread took pid {p} of the tree \
             since, so the last restore cannot have it"
        )));
    }
    case::restore_detached(cfg, dir, t.root, procs)?;
    match case::finish_tree(dir, t.main, t.root, StdioKind::LogFile, procs)? {
        Outcome::Pass => Ok(Outcome::Pass),
        other => bail!("the workload's own check after the walk: {other:?}"),
    }
}

/// `crest restore -d` with `CREST_FAULT` set to `fault`.
fn restore(
    cfg: &Config,
    dir: &CaseDir,
    fault: &str,
    procs: &mut Procs,
) -> Result<(crest::Ran, std::path::PathBuf)> {
    case::run_restore_detached_env(cfg, dir, procs, &[("CREST_FAULT", fault)])
}

fn mapped_file_changed(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let exe = dir.root.join("mem_patterns");
    fs::copy(cfg.workload("mem_patterns"), &exe)?;
    let mut cmd = std::process::Command::new(cfg.workload("launch"));
    cmd.arg(&exe)
        .arg(&dir.state)
        .arg("8")
        .current_dir(&dir.root)
        .stdin(std::process::Stdio::null());
    case::set_stdio(&mut cmd, dir, StdioKind::DevNull)?;
    let pid = Pid::from_raw(cmd.spawn()?.id() as i32);
    procs.track(pid);
    case::wait_ready(dir, pid, procs)?;
    procs::wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
    case::dump(cfg, dir, pid, false, procs)?;
    let original = fs::read(&exe)?;
    let mut grown = original.clone();
    grown.push(0);
    fs::write(&exe, &grown)?;
    procs.track(pid);
    let (ran, _) = case::run_restore_detached(cfg, dir, procs)?;
    if ran.success() {
        bail!("crest restore succeeded though the mapped executable changed since the dump");
    }
    if !ran.stderr.contains(&*exe.to_string_lossy()) || !ran.stderr.contains("changed") {
        bail!(
            "the restore with a changed executable failed without naming it: {}",
            ran.stderr.trim()
        );
    }
    if procs::proc_state(pid).is_some_and(|s| s != 'Z') {
        bail!("the refused restore left pid {pid} behind");
    }
    fs::write(&exe, &original)?;
    case::restore_detached(cfg, dir, pid, procs)?;
    case::finish(dir, pid, StdioKind::DevNull, procs)
}

fn images_checksums(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let w = Workload {
        name: "images_checksums",
        program: Program::C("mem_patterns"),
        args: vec!["8".into()],
        settle: Settle::Blocked,
    };
    let t = start_tree(cfg, dir, &w, false, procs)?;
    let tree = procs::tree_snapshot(t.root).context("process tree before the dump")?;
    let pids: Vec<i32> = tree.keys().copied().collect();
    case::dump(cfg, dir, t.root, false, procs)?;
    if !dir.images.join("crest-manifest").is_file() {
        bail!("the dump wrote no crest-manifest");
    }
    let check = |procs: &mut Procs| -> Result<crest::Ran> {
        let images = dir.images.to_string_lossy();
        let cmd = crest::command(&cfg.crest, &["check-images", &images]);
        crest::run(cmd, &dir.root, "check-images", CREST_TIMEOUT, procs)
    };
    let ran = check(procs)?;
    if !ran.success() {
        bail!(ran.failure("crest check-images of intact images"));
    }
    let pages = fs::read_dir(&dir.images)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .find(|n| n.starts_with("pages-"))
        .context("no pages file in the dump")?;
    let core = format!("core-{}.img", t.root);
    // (file, what is done to it, how to undo it)
    type Change = Box<dyn Fn(&Path) -> Result<Vec<u8>>>;
    let flip: Change = Box::new(|p: &Path| {
        let orig = fs::read(p)?;
        let mut b = orig.clone();
        let at = b.len() / 2;
        b[at] ^= 0x10;
        fs::write(p, b)?;
        Ok(orig)
    });
    let cut: Change = Box::new(|p: &Path| {
        let orig = fs::read(p)?;
        fs::write(p, &orig[..orig.len() - 1])?;
        Ok(orig)
    });
    let add: Change = Box::new(|p: &Path| {
        fs::write(p, b"")?;
        Ok(Vec::new())
    });
    let cases: [(&str, &str, &Change); 3] = [
        (pages.as_str(), "a flipped bit", &flip),
        (core.as_str(), "a byte cut", &cut),
        ("mm-99999.img", "a file added", &add),
    ];
    for (file, what, change) in cases {
        let path = dir.images.join(file);
        let orig = change(&path).with_context(|| format!("change {file}"))?;
        let ran = check(procs)?;
        if ran.success() || !ran.stderr.contains(file) {
            bail!(ran.failure(&format!(
                "crest check-images after {what} in {file} (expected a refusal naming it)"
            )));
        }
        let (ran, _) = restore(cfg, dir, "none", procs)?;
        if ran.success() || !ran.stderr.contains(file) {
            bail!(ran.failure(&format!(
                "crest restore after {what} in {file} (expected a refusal naming it)"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
        if let Some(p) = pids.iter().find(|p| procs::exists(Pid::from_raw(**p))) {
            bail!("pid {p} exists after the refused restore ({what} in {file})");
        }
        if what == "a file added" {
            fs::remove_file(&path)?;
        } else {
            fs::write(&path, orig)?;
        }
    }
    case::restore_detached(cfg, dir, t.root, procs)?;
    match case::finish_tree(dir, t.main, t.root, StdioKind::LogFile, procs)? {
        Outcome::Pass => Ok(Outcome::Pass),
        other => bail!("the workload's own check after the intact restore: {other:?}"),
    }
}

fn concurrent(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let subs = [sub_dir(dir, "a")?, sub_dir(dir, "b")?];
    let works = [
        Workload {
            name: "concurrent_a",
            program: Program::C("mem_patterns"),
            args: vec!["16".into()],
            settle: Settle::Blocked,
        },
        Workload {
            name: "concurrent_b",
            program: Program::C("threads_busy"),
            args: vec!["4".into()],
            settle: Settle::Spinning,
        },
    ];
    let mut roots = Vec::new();
    for (sub, w) in subs.iter().zip(&works) {
        roots.push(start_tree(cfg, sub, w, false, procs)?.root);
    }
    // both dumps at once, then both restores at once
    let run_both = |args: [Vec<String>; 2], tag: &str| -> Result<Vec<std::process::Output>> {
        let children: Vec<std::process::Child> = args
            .iter()
            .zip(&subs)
            .map(|(a, sub)| {
                std::process::Command::new(&cfg.crest)
                    .args(a)
                    .current_dir(&sub.root)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .with_context(|| format!("spawn crest {tag}"))
            })
            .collect::<Result<_>>()?;
        children
            .into_iter()
            .map(|c| {
                c.wait_with_output()
                    .with_context(|| format!("wait for crest {tag}"))
            })
            .collect()
    };
    let dumps = run_both(
        [0, 1].map(|k| {
            vec![
                "dump".into(),
                "-t".into(),
                roots[k].to_string(),
                "-D".into(),
                subs[k].images.display().to_string(),
                "-o".into(),
                "dump.log".into(),
            ]
        }),
        "dump",
    )?;
    for (k, out) in dumps.iter().enumerate() {
        if !out.status.success() {
            bail!(
                "dump {k} of two at once failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    for &r in &roots {
        procs::reap_or_wait_gone(r);
        procs.untrack(r);
    }
    procs::reap_zombie_children();
    let restores = run_both(
        [0, 1].map(|k| {
            vec![
                "restore".into(),
                "-D".into(),
                subs[k].images.display().to_string(),
                "-d".into(),
                "-o".into(),
                "restore.log".into(),
            ]
        }),
        "restore",
    )?;
    for &r in &roots {
        procs.track(r);
    }
    for (k, out) in restores.iter().enumerate() {
        if !out.status.success() {
            bail!(
                "restore {k} of two at once failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    for (sub, &r) in subs.iter().zip(&roots) {
        match case::finish(sub, r, StdioKind::LogFile, procs)? {
            Outcome::Pass => {}
            other => bail!("pid {r} after two restores at once: {other:?}"),
        }
    }
    Ok(Outcome::Pass)
}

fn under_fork_load(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let t = start_tree(cfg, dir, &sock_fork(), true, procs)?;
    let tree = procs::tree_snapshot(t.root).context("process tree before the dump")?;
    let pids: Vec<i32> = tree.keys().copied().collect();
    case::dump(cfg, dir, t.root, false, procs)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut load = Vec::new();
    for _ in 0..cpus {
        let c = std::process::Command::new(cfg.workload("fork_loop"))
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("spawn fork_loop")?;
        let p = Pid::from_raw(c.id() as i32);
        procs.track(p);
        load.push(p);
    }
    std::thread::sleep(Duration::from_millis(200));
    let (ran, _) = restore(cfg, dir, "none", procs)?;
    for &p in &load {
        let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
        procs::reap_or_wait_gone(p);
        procs.untrack(p);
    }
    procs::reap_zombie_children();
    if !ran.success() {
        if !ran.stderr.contains("other forks kept taking") {
            bail!(ran.failure(
                "crest restore under a fork load (expected success or a raced-ids refusal)"
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
        if let Some(p) = pids.iter().find(|p| procs::exists(Pid::from_raw(**p))) {
            bail!("pid {p} exists after the restore failed under load");
        }
        // a clean refusal is a right answer too; the log keeps which
        let _ = fs::write(dir.root.join("refused-under-load"), &ran.stderr);
        return Ok(Outcome::Pass);
    }
    match case::finish_tree(dir, t.main, t.root, StdioKind::LogFile, procs)? {
        Outcome::Pass => Ok(Outcome::Pass),
        other => bail!("the workload's own check after a restore under load: {other:?}"),
    }
}
