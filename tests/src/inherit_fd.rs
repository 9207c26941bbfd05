//! `pipe_inherit_fd`: a pipe whose other end a process outside the tree
//! holds — the harness reads the workload's stdout, as a container
//! runtime holds a container's stdio pipes — is dumped; a restore without
//! CRIU's `--inherit-fd` fails naming the pipe and the option and leaves
//! no task behind; with `--inherit-fd fd[3]:pipe:[INODE]`, crest's fd 3
//! (the harness's pipe, opened again for writing) stands for it, and what
//! the workload writes after the restore reaches the harness.
//!
//! The workload is `small_tree` (three processes sharing stdout), started
//! with its stdout on a pipe; the harness checks the verdict and that the
//! pipe carried "before" and, after the restore, "after".

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, DirCase};
use crate::crest::{self, CREST_TIMEOUT};
use crate::procs::{self, alive, exists, wait_until, Procs};
use crate::suite::Report;
use crate::{Config, Outcome, StdioKind};

const CASES: [(&str, DirCase); 1] = [("pipe_inherit_fd", pipe_inherit_fd)];

pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
}

fn pipe_inherit_fd(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.arg(cfg.workload("small_tree"))
        .arg(&dir.state)
        .current_dir(&dir.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().context("spawn small_tree")?;
    let pid = Pid::from_raw(child.id() as i32);
    procs.track(pid);
    let mut out = child.stdout.take().context("the workload's stdout")?;
    case::wait_ready(dir, pid, procs)?;
    let link = fs::read_link(format!("/proc/{pid}/fd/1")).context("read the stdout link")?;
    let key = link.to_string_lossy().to_string();
    if !key.starts_with("pipe:[") {
        bail!("the workload's stdout is {key}, not a pipe");
    }
    case::dump(cfg, dir, pid, false, procs)?;

    // without the pipe from its caller, crest must refuse and leave nothing
    let (ran, _) = case::run_restore_detached(cfg, dir, procs)?;
    if ran.success() {
        bail!("crest restore succeeded without --inherit-fd for {key}, held outside the tree");
    }
    let said = ran.stderr.trim();
    if !(said.contains(&key) && said.contains("--inherit-fd")) {
        bail!(ran.failure("crest restore (expected a refusal naming the pipe and --inherit-fd)"));
    }
    if !wait_until(Duration::from_secs(5), || !exists(pid)) {
        bail!("pid {pid} exists after the refused restore");
    }

    // crest's fd 3: the harness's pipe, opened again for writing
    let images = dir.images.to_string_lossy().to_string();
    let pidfile = dir.root.join("restore.pid").to_string_lossy().to_string();
    let inherit = format!("fd[3]:{key}");
    let mut restore = Command::new("sh");
    restore
        .arg("-c")
        .arg(format!(
            "exec \"$0\" \"$@\" 3>/proc/{}/fd/{}",
            std::process::id(),
            out.as_raw_fd()
        ))
        .arg(&cfg.crest)
        .args(["restore", "-D", &images, "-d", "--pidfile", &pidfile])
        .args(["-o", "restore-inherit.log", "-v4", "--inherit-fd", &inherit]);
    procs.track(pid);
    let ran = crest::run(restore, &dir.root, "restore-inherit", CREST_TIMEOUT, procs)?;
    if !ran.success() {
        bail!(ran.failure(&format!("crest restore --inherit-fd {inherit}")));
    }
    if !alive(pid) {
        bail!("crest restore succeeded but pid {pid} is not running");
    }
    let verdict = case::finish(dir, pid, StdioKind::DevNull, procs)?;
    // every writer is gone now: the pipe ends
    let mut text = String::new();
    out.read_to_string(&mut text)
        .context("read the workload's stdout")?;
    let before = text.find("before\n");
    let after = text.rfind("after\n");
    if !matches!((before, after), (Some(b), Some(a)) if b < a) {
        bail!("the pipe carried {text:?}, expected \"before\" then \"after\"");
    }
    procs::reap_zombie_children();
    Ok(verdict)
}
