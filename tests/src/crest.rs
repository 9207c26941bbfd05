//! Running crest (and other commands) with a timeout, their output captured
//! in files of the case directory.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::procs::{wait_exit, Exit, Procs, Waited};

/// How long any one crest command may take (the slowest takes a few
/// seconds; a hung crest must not hold up the suite for long).
pub const CREST_TIMEOUT: Duration = Duration::from_secs(30);

/// A finished command.
#[derive(Debug)]
pub struct Ran {
    /// How it ended.
    pub exit: Exit,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
    /// The file its stderr went to.
    pub stderr_path: PathBuf,
}

impl Ran {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0)
    }

    /// "`what` failed (exit code 1): <last stderr line>".
    pub fn failure(&self, what: &str) -> String {
        let last = self.stderr.lines().rev().find(|l| !l.trim().is_empty());
        format!(
            "{what} failed ({}): {}",
            self.exit,
            last.unwrap_or("(no stderr)")
        )
    }
}

/// Runs `cmd` in `dir` with stdin on /dev/null and stdout/stderr in
/// `<dir>/<tag>.stdout` and `<dir>/<tag>.stderr`; kills it after `timeout`.
pub fn run(
    mut cmd: Command,
    dir: &Path,
    tag: &str,
    timeout: Duration,
    procs: &mut Procs,
) -> Result<Ran> {
    let out_path = dir.join(format!("{tag}.stdout"));
    let err_path = dir.join(format!("{tag}.stderr"));
    let out = File::create(&out_path).with_context(|| format!("create {}", out_path.display()))?;
    let err = File::create(&err_path).with_context(|| format!("create {}", err_path.display()))?;
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    let pid = Pid::from_raw(child.id() as i32);
    procs.track(pid);
    let waited = wait_exit(pid, timeout)?;
    let elapsed = start.elapsed();
    let exit = match waited {
        Waited::Exited(exit) => exit,
        Waited::TimedOut => {
            procs.kill_all();
            bail!("{tag}: {:?} timed out after {timeout:?}", cmd.get_program());
        }
        Waited::NotChild => bail!("{tag}: lost track of pid {pid}"),
    };
    procs.untrack(pid);
    Ok(Ran {
        exit,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        elapsed,
        stderr_path: err_path,
    })
}

/// A crest command line: `crest <args>`.
pub fn command(crest: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(crest);
    cmd.args(args);
    cmd
}

/// A crest command line run through the shell, whose redirections
/// `redirect` (e.g. `3>/proc/PID/fd/N`, `3<>/dev/pts/5`) give crest fds
/// first: `sh -c 'exec crest "$@" REDIRECT' crest <args>`.
pub fn command_with(crest: &Path, redirect: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("exec \"$0\" \"$@\" {redirect}"))
        .arg(crest)
        .args(args);
    cmd
}

/// The redirection giving crest fd `n` as the harness's fd `fd`, opened
/// again for writing.
pub fn writing_to(n: i32, fd: std::os::fd::RawFd) -> String {
    format!("{n}>/proc/{}/fd/{fd}", std::process::id())
}

/// The last `n` lines of a text file, each prefixed for a report; None if
/// the file is missing or empty.
pub fn tail(path: &Path, n: usize) -> Option<String> {
    let text = fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return None;
    }
    let skip = lines.len().saturating_sub(n);
    let mut out = format!("--- {} (last {} lines)", path.display(), lines.len() - skip);
    for l in &lines[skip..] {
        out.push_str("\n  | ");
        out.push_str(l);
    }
    Some(out)
}
