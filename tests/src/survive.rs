//! A crest killed in the middle of a dump harms nothing (issue 15): at
//! fault points chosen across a dump (`CREST_FAULT=N:kill`, see crest-sys
//! `fault`), crest dies by SIGKILL and the workload must run on as if it had
//! never been dumped: untraced, not stopped, the kernel's outside view as
//! before (the recovery area crest could not unmap aside), and its own
//! check passing (registers, FPU and AVX state, TLS, signal masks).
//!
//! - `survive_dump_kill_threads`: `threads_busy` (9 threads spinning with
//!   values in their xmm registers, each with its own mask);
//! - `survive_dump_kill_fpu`: `fpu_avx` (ymm, x87 and MXCSR);
//! - `survive_dump_kill_signals`: `signals` (handlers, masks, pending
//!   signals, an alternate stack).
//!
//! - `survive_dump_sigterm`: a SIGTERM to crest in the middle of a dump
//!   (`CREST_FAULT=N:term`) fails the dump with a message naming the
//!   signal, and the tree is released as after any failure: no recovery
//!   area left, the outside view exactly as before;
//! - `survive_dump_timeout`: a vfork parent (in uninterruptible sleep until
//!   its child ends) cannot be seized: `--timeout 1` fails the dump naming
//!   it, and the tree runs on.
//!
//! Points named "unguarded" are the documented windows (the recovery
//! area's own `mmap` and its final `munmap`, DESIGN.md) and are not walked.
//! Every other kind of point is walked, and one injected call in
//! [`CALL_STRIDE`].

use std::fs;
use std::time::Duration;

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
const CALL_STRIDE: usize = 23;

const CASES: [(&str, &str, &[&str], Settle); 3] = [
    (
        "survive_dump_kill_threads",
        "threads_busy",
        &[],
        Settle::Spinning,
    ),
    ("survive_dump_kill_fpu", "fpu_avx", &[], Settle::Spinning),
    ("survive_dump_kill_signals", "signals", &[], Settle::Blocked),
];

pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(
        cfg,
        report,
        selected,
        &[
            ("survive_dump_sigterm", sigterm),
            ("survive_dump_timeout", timeout),
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
    let root = dir.root.join(name);
    let sub = CaseDir {
        state: root.join("state"),
        images: root.join("images"),
        root,
    };
    for d in [&sub.state, &sub.images] {
        fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    Ok(sub)
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
    let pid_s = pid.to_string();
    let images = dir.images.to_string_lossy();
    let mut cmd = crest::command(
        &cfg.crest,
        &[
            "dump", "-t", &pid_s, "-D", &images, "-o", "dump.log", "-v4", "-R",
        ],
    );
    cmd.env("CREST_FAULT", fault);
    crest::run(cmd, &dir.root, "dump", CREST_TIMEOUT, procs)
}

/// The tree runs untraced and the outside view is `before` again, but for
/// the recovery area a killed crest leaves: one new read-only executable
/// anonymous mapping.
fn after_checks(dir: &CaseDir, pid: Pid, before: &outside::View, what: &str) -> Vec<String> {
    let mut problems = procs::tree_problems(pid);
    std::thread::sleep(Duration::from_millis(100));
    let diff = case::check_outside(dir, pid, before, what);
    let mut areas = 0;
    for d in diff {
        let lines: Vec<&str> = d.lines().skip(1).map(str::trim).collect();
        let (area, rest): (Vec<&str>, Vec<&str>) = lines.into_iter().partition(|l| {
            l.contains(" vma ") && l.contains("new after") && l.contains(" r-xp 0  |")
        });
        areas += area.len();
        if !rest.is_empty() {
            problems.push(format!("outside view {what}:\n  {}", rest.join("\n  ")));
        }
    }
    if areas > 1 {
        problems.push(format!("{areas} new executable mappings {what}"));
    }
    problems
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
    let pid_s = pid.to_string();
    let images = dir.images.to_string_lossy();
    let cmd = crest::command(
        &cfg.crest,
        &[
            "dump",
            "-t",
            &pid_s,
            "-D",
            &images,
            "-o",
            "dump.log",
            "-v4",
            "--timeout",
            "1",
        ],
    );
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
