//! Process-tree cases that are not plain dump/restore round trips (issue 4):
//! a dump crest must refuse (`dump_fails_cleanly`), a restore it must refuse
//! (`restore_fails_cleanly`), and `crest dump -R` of a whole tree
//! (`leave_running_tree`, `leave_running_cow`). `fork_storm` is a protocol workload (see
//! [`crate::case::Settle::Storm`]).

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, DirCase, Mode, Program, Settle, Workload};
use crate::procs::{self, alive, exists, wait_until, Exit, Procs};
use crate::suite::Report;
use crate::{Config, Flavor, Outcome, StdioKind};

/// The fd on which `small_tree socket`'s grandchild holds its netlink socket
/// (`SOCK_FD` in `workloads/small_tree.c`).
pub const SOCK_FD: i32 = 7;

const CASES: [(&str, DirCase); 2] = [
    ("dump_fails_cleanly", dump_fails_cleanly),
    ("restore_fails_cleanly", restore_fails_cleanly),
];

/// Runs every case whose name passes `selected`.
pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
    // a session leader that is not an ancestor of its member: crest forks
    // the member from the leader's side, in crest's pid namespace and in
    // the tree's own
    // (adopted_init: the member goes to the pid namespace's init, which is
    // no subreaper)
    let variants = [
        ("adopted", Flavor::Host, ""),
        ("adopted", Flavor::Ns, ""),
        ("adopted", Flavor::Uns, ""),
        ("adopted_init", Flavor::Ns, "init"),
        ("adopted_init", Flavor::Uns, "init"),
    ];
    for (name, flavor, arg) in variants {
        let n = case::case_name(name, flavor, Some(StdioKind::DevNull));
        if !selected(&n) {
            continue;
        }
        let w = Workload {
            name,
            program: Program::C("adopted"),
            args: if arg.is_empty() {
                Vec::new()
            } else {
                vec![arg.to_string()]
            },
            settle: Settle::Blocked,
        };
        let outcome = if cfg.root {
            case::run_protocol(cfg, &w, flavor, StdioKind::DevNull, Mode::DumpRestore)
        } else {
            Outcome::Skip("needs root".into())
        };
        report.record(&n, outcome);
    }
    // (cow: the dump must not end the pages' sharing it reads; pty: the
    // bytes queued in the pairs, read out at the dump, must be back)
    for (case, workload) in [
        ("leave_running_tree", "tree_sessions"),
        ("leave_running_cow", "cow"),
        ("leave_running_pty", "pty"),
    ] {
        let n = case::case_name(case, Flavor::Host, None);
        if selected(&n) {
            let outcome = if cfg.root {
                leave_running_tree(cfg, &n, workload)
            } else {
                Outcome::Skip("needs root".into())
            };
            report.record(&n, outcome);
        }
    }
}

fn small_tree(args: &[&str]) -> Workload {
    Workload {
        name: "small_tree",
        program: Program::C("small_tree"),
        args: args.iter().map(|a| a.to_string()).collect(),
        settle: Settle::Blocked,
    }
}

/// The pids `small_tree` wrote: root, child, grandchild.
fn read_pids(dir: &CaseDir) -> Result<[Pid; 3]> {
    let path = dir.state.join("pids");
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let pids: Vec<i32> = text
        .split_whitespace()
        .map(|p| p.parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} holds {text:?}", path.display()))?;
    match pids[..] {
        [r, c, g] => Ok([r, c, g].map(Pid::from_raw)),
        _ => bail!("{} holds {text:?}, expected 3 pids", path.display()),
    }
}

/// Whether `text` has `n` as a separate number (not inside a longer one).
fn names_number(text: &str, n: i32) -> bool {
    let n = n.to_string();
    text.split(|c: char| !c.is_ascii_digit()).any(|t| t == n)
}

fn progress_len(dir: &CaseDir) -> u64 {
    fs::metadata(dir.state.join("progress"))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The root must still append to `progress`.
fn check_progress(dir: &CaseDir, when: &str) -> Result<()> {
    let first = progress_len(dir);
    if !wait_until(Duration::from_secs(2), || progress_len(dir) > first) {
        bail!("the root made no progress {when} (progress file stays at {first} bytes)");
    }
    Ok(())
}

/// A tree whose grandchild holds an AF_NETLINK socket with the kernel's
/// answers waiting in it: `crest dump` must
/// fail naming the grandchild's pid, the fd and "socket", and leave every
/// task running, untraced, the root making progress.
fn dump_fails_cleanly(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let w = small_tree(&["socket"]);
    let pid = case::start(cfg, &w, dir, StdioKind::DevNull, procs)?;
    case::wait_ready(dir, pid, procs)?;
    let pids = read_pids(dir)?;
    if pids[0] != pid {
        bail!("pids file names root {}, started {pid}", pids[0]);
    }
    let gc = pids[2];
    let link = fs::read_link(format!("/proc/{gc}/fd/{SOCK_FD}"))
        .with_context(|| format!("grandchild {gc} fd {SOCK_FD}"))?;
    if !link.to_string_lossy().starts_with("socket:") {
        bail!("grandchild {gc} fd {SOCK_FD} is {}", link.display());
    }
    check_progress(dir, "before the dump")?;
    if cfg.checkpoint {
        let Some(ran) = case::dump_attempt(cfg, dir, pid, false, procs)? else {
            bail!(
                "crest dump succeeded, but grandchild {gc} holds an AF_NETLINK socket with \
                 messages waiting on fd {SOCK_FD}, which crest cannot dump"
            );
        };
        if let Exit::Signal(s) = ran.exit {
            bail!("crest dump was killed by {s}");
        }
        let stderr = ran.stderr.trim();
        let mut missing = Vec::new();
        if !names_number(stderr, gc.as_raw()) {
            missing.push(format!("the grandchild's pid {gc}"));
        }
        if !names_number(stderr, SOCK_FD) {
            missing.push(format!("fd {SOCK_FD}"));
        }
        if !stderr.to_lowercase().contains("socket") {
            missing.push("the word \"socket\"".to_string());
        }
        if !missing.is_empty() {
            bail!(
                "crest dump failed ({}), but its stderr does not name {}: {stderr:?}",
                ran.exit,
                missing.join(", ")
            );
        }
        let mut problems = procs::tree_problems(pid);
        for p in pids {
            if !alive(p) {
                problems.push(format!(
                    "pid {p} is gone (state {:?})",
                    procs::proc_state(p)
                ));
            }
        }
        if !problems.is_empty() {
            bail!(
                "after the failed dump the tree is not left alone:\n  {}",
                problems.join("\n  ")
            );
        }
        check_progress(dir, "after the failed dump")?;
    }
    case::finish(dir, pid, StdioKind::DevNull, procs)
}

/// Occupies `target` with a `sleep` child of the harness (through
/// `/proc/sys/kernel/ns_last_pid`, retried if another fork takes the pid).
fn occupy_pid(target: Pid) -> Result<Child> {
    const LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
    for _ in 0..50 {
        if exists(target) {
            bail!("pid {target} is already taken by another process");
        }
        fs::write(LAST_PID, format!("{}", target.as_raw() - 1))
            .with_context(|| format!("write {LAST_PID}"))?;
        let mut child = Command::new("/bin/sleep")
            .arg("60")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn sleep")?;
        if child.id() as i32 == target.as_raw() {
            return Ok(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    bail!("could not get pid {target} for a sleeper in 50 attempts")
}

fn end_sleeper(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Dump a 3-task tree, occupy the child's pid, `crest restore -d`: it must
/// fail naming the pid and "in use", leaving no restored task and no crest
/// process behind.
fn restore_fails_cleanly(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let w = small_tree(&[]);
    let pid = case::start(cfg, &w, dir, StdioKind::DevNull, procs)?;
    case::wait_ready(dir, pid, procs)?;
    let pids = read_pids(dir)?;
    let target = pids[1];
    wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
    if !cfg.checkpoint {
        // validate the workload and the pid trick without crest
        let outcome = case::finish(dir, pid, StdioKind::DevNull, procs)?;
        wait_until(Duration::from_secs(5), || !exists(target));
        let sleeper = occupy_pid(target)?;
        end_sleeper(sleeper);
        return Ok(outcome);
    }
    case::dump(cfg, dir, pid, false, procs)?;
    let sleeper = occupy_pid(target)?;
    let result = restore_refused(cfg, dir, &pids, target, procs);
    end_sleeper(sleeper);
    result
}

fn restore_refused(
    cfg: &Config,
    dir: &CaseDir,
    pids: &[Pid; 3],
    target: Pid,
    procs: &mut Procs,
) -> Result<Outcome> {
    // should the restore succeed, the restored root is ours to kill
    procs.track(pids[0]);
    let (ran, _) = case::run_restore_detached(cfg, dir, procs)?;
    if ran.success() {
        bail!("crest restore succeeded although pid {target} of the dumped tree was in use");
    }
    if let Exit::Signal(s) = ran.exit {
        bail!("crest restore was killed by {s}");
    }
    let stderr = ran.stderr.trim();
    if !names_number(stderr, target.as_raw()) || !stderr.contains("in use") {
        bail!(
            "crest restore failed ({}), but its stderr does not name pid {target} and \
             \"in use\": {stderr:?}",
            ran.exit
        );
    }
    let others: Vec<Pid> = pids.iter().copied().filter(|p| *p != target).collect();
    if !wait_until(Duration::from_secs(2), || {
        !others.iter().any(|p| exists(*p))
    }) {
        let left: Vec<String> = others
            .iter()
            .filter(|p| exists(**p))
            .map(|p| {
                format!(
                    "pid {p} ({}, state {:?}, ppid {:?})",
                    procs::proc_comm(*p).unwrap_or_default(),
                    procs::proc_state(*p),
                    procs::proc_ppid(*p)
                )
            })
            .collect();
        bail!(
            "after the failed restore, dumped pids still exist 2 s later: {}",
            left.join(", ")
        );
    }
    procs.untrack(pids[0]);
    let crests: Vec<String> = procs::harness_children()
        .into_iter()
        .filter(|(_, comm, _)| comm == "crest")
        .map(|(p, _, state)| format!("pid {p} (state {state})"))
        .collect();
    if !crests.is_empty() {
        bail!(
            "after the failed restore, crest processes are left as children of the harness: {}",
            crests.join(", ")
        );
    }
    Ok(Outcome::Pass)
}

/// `crest dump -R` of a tree (`workload`): the whole tree runs on,
/// untraced, the same tree, and its own check passes.
fn leave_running_tree(cfg: &Config, n: &str, workload: &str) -> Outcome {
    let dir = match CaseDir::create(cfg, n) {
        Ok(d) => d,
        Err(e) => return Outcome::fail(format!("{e:#}")),
    };
    let Some(w) = crate::suite::workload(workload) else {
        return Outcome::fail(format!("no {workload} workload"));
    };
    let mode = if cfg.checkpoint {
        Mode::DumpLeaveRunning
    } else {
        Mode::SelfCheck
    };
    let (outcome, _) = case::run_in(cfg, &w, &dir, StdioKind::DevNull, mode);
    if outcome.is_pass() {
        dir.remove();
    }
    outcome
}
