//! One case: a workload started through `launch`, optionally dumped and
//! restored by crest, then told to check itself with SIGTERM.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::crest::{self, CREST_TIMEOUT};
use crate::procs::{self, alive, exists, wait_exit, wait_until, Exit, Procs, Waited};
use crate::suite::Report;
use crate::{ns, outside, Config, Flavor, Outcome, StdioKind};

/// How long a workload may take to say ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a workload may take to exit after SIGTERM.
pub const VERDICT_TIMEOUT: Duration = Duration::from_secs(30);

/// What runs a workload.
#[derive(Debug, Clone)]
pub enum Program {
    /// A compiled workload of `workloads/*.c`.
    C(&'static str),
    /// A script run by a Debian interpreter (skipped if it is missing).
    Script {
        /// The interpreter, e.g. `/usr/bin/python3`.
        interp: &'static str,
        /// The script in the workloads directory.
        script: &'static str,
    },
}

/// What a workload does once ready, so the harness knows when to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// It blocks in a syscall: wait for state S (so a signal cannot arrive
    /// before the syscall starts, and the dump catches it inside).
    Blocked,
    /// It spins: give it a moment.
    Spinning,
    /// It keeps forking and spawning threads (`fork_storm`): dump at once,
    /// without waiting for the tree to settle. Its tree changes all the time,
    /// so it is not compared before and after (the workload checks its
    /// long-lived children itself), and a dump crest refuses cleanly (every
    /// task still running, untraced; the workload's own check passes) is a
    /// pass with a note.
    Storm,
}

/// A protocol workload and its arguments.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Case name.
    pub name: &'static str,
    /// What to run.
    pub program: Program,
    /// Arguments after the state directory.
    pub args: Vec<String>,
    /// See [`Settle`].
    pub settle: Settle,
}

/// What the harness does between "ready" and SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing: validates the workload.
    SelfCheck,
    /// `crest dump` (the task dies), then `crest restore -d`.
    DumpRestore,
    /// `crest dump -R` (the task keeps running).
    DumpLeaveRunning,
}

/// A case's directory: `state/` for the workload, `images/` for crest.
#[derive(Debug)]
pub struct CaseDir {
    /// The case directory.
    pub root: PathBuf,
    /// The workload's state directory.
    pub state: PathBuf,
    /// crest's images directory.
    pub images: PathBuf,
}

impl CaseDir {
    /// Creates a fresh `<base>/<name>` (removing an old one).
    pub fn create(cfg: &Config, name: &str) -> Result<CaseDir> {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let root = cfg.base.join(safe.trim_end_matches('-'));
        if root.exists() {
            fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
        }
        CaseDir::at(root)
    }

    /// The case directory `root` with its state and images directories
    /// made.
    pub fn at(root: PathBuf) -> Result<CaseDir> {
        let dir = CaseDir {
            state: root.join("state"),
            images: root.join("images"),
            root,
        };
        for d in [&dir.state, &dir.images] {
            fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        Ok(dir)
    }

    /// Removes the directory (after a pass).
    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.root);
    }

    /// Tails of every log of the case, for a failure report.
    pub fn diagnostics(&self) -> String {
        let files = [
            self.root.join("dump.stderr"),
            self.images.join("dump.log"),
            self.root.join("restore.stderr"),
            self.images.join("restore.log"),
            self.root.join("out.log"),
            self.state.join("verdict"),
        ];
        let tails: Vec<String> = files.iter().filter_map(|f| crest::tail(f, 20)).collect();
        tails.join("\n")
    }
}

/// The display name of a case: `name[flavor,stdio]`.
pub fn case_name(name: &str, flavor: Flavor, stdio: Option<StdioKind>) -> String {
    match stdio {
        Some(s) => format!("{name}[{},{}]", flavor.name(), s.name()),
        None => format!("{name}[{}]", flavor.name()),
    }
}

/// Runs a protocol workload in a fresh case directory, removed if it passes.
pub fn run_protocol(
    cfg: &Config,
    w: &Workload,
    flavor: Flavor,
    stdio: StdioKind,
    mode: Mode,
) -> Outcome {
    let name = case_name(w.name, flavor, Some(stdio));
    let dir = match CaseDir::create(cfg, &name) {
        Ok(d) => d,
        Err(e) => return Outcome::fail(format!("{e:#}")),
    };
    let (outcome, _) = run_flavor(cfg, w, &dir, flavor, stdio, mode);
    if outcome.is_pass() {
        dir.remove();
    }
    outcome
}

/// Runs a protocol workload in `dir`; returns the outcome and the pid the
/// workload had. Every process it started is gone when it returns.
pub fn run_in(
    cfg: &Config,
    w: &Workload,
    dir: &CaseDir,
    stdio: StdioKind,
    mode: Mode,
) -> (Outcome, Option<Pid>) {
    run_flavor(cfg, w, dir, Flavor::Host, stdio, mode)
}

/// Like [`run_in`], in the namespaces of `flavor` (`Host` or `Ns`); the pid
/// returned is the root the harness started (`nsinit` for `Ns`).
pub fn run_flavor(
    cfg: &Config,
    w: &Workload,
    dir: &CaseDir,
    flavor: Flavor,
    stdio: StdioKind,
    mode: Mode,
) -> (Outcome, Option<Pid>) {
    let mut procs = Procs::default();
    let mut pid = None;
    let result = steps(cfg, w, dir, flavor, stdio, mode, &mut procs, &mut pid);
    let killed = procs.kill_all();
    let leftovers = procs::sweep_children();
    let outcome = conclude(result, dir, &killed, &leftovers);
    (outcome, pid)
}

/// A case that runs in a case directory of its own, with the processes it
/// tracks.
pub type DirCase = fn(&Config, &CaseDir, &mut Procs) -> Result<Outcome>;

/// Runs `f` in a fresh case directory `name`; then kills what it tracked,
/// sweeps leftover children and concludes. The directory is removed if the
/// case passed.
pub fn run_in_dir(
    cfg: &Config,
    name: &str,
    f: impl FnOnce(&CaseDir, &mut Procs) -> Result<Outcome>,
) -> Outcome {
    let dir = match CaseDir::create(cfg, name) {
        Ok(d) => d,
        Err(e) => return Outcome::fail(format!("{e:#}")),
    };
    let mut procs = Procs::default();
    let result = f(&dir, &mut procs);
    let killed = procs.kill_all();
    let leftovers = procs::sweep_children();
    let outcome = conclude(result, &dir, &killed, &leftovers);
    if outcome.is_pass() {
        dir.remove();
    }
    outcome
}

/// Runs each of `cases` (host flavor) whose name passes `selected`, each in
/// a directory of its own ([`run_in_dir`]); skipped without root.
pub fn run_root_cases(
    cfg: &Config,
    report: &mut Report,
    selected: &dyn Fn(&str) -> bool,
    cases: &[(&str, DirCase)],
) {
    for &(name, f) in cases {
        let n = case_name(name, Flavor::Host, None);
        if !selected(&n) {
            continue;
        }
        let outcome = if cfg.root {
            run_in_dir(cfg, &n, |dir, procs| f(cfg, dir, procs))
        } else {
            Outcome::Skip("needs root".into())
        };
        report.record(&n, outcome);
    }
}

/// Turns a case's result and its cleanup into the outcome.
pub fn conclude(
    result: Result<Outcome>,
    dir: &CaseDir,
    killed: &[String],
    leftovers: &[String],
) -> Outcome {
    // (a workload that cannot run here says so in its verdict, maybe
    // before it is ready: wl_skip)
    let skipped = fs::read_to_string(dir.state.join("verdict"))
        .ok()
        .and_then(|v| {
            v.strip_prefix("SKIP")
                .map(|r| r.trim_start_matches(':').trim().to_string())
        });
    let outcome = match (result, skipped) {
        (Ok(o), _) => o,
        (Err(_), Some(why)) => Outcome::Skip(why),
        (Err(e), None) => Outcome::Fail(format!("{e:#}")),
    };
    let outcome = match outcome {
        o if o.is_pass() && !leftovers.is_empty() => {
            Outcome::fail(format!("left processes behind: {}", leftovers.join("; ")))
        }
        o => o,
    };
    match outcome {
        Outcome::Fail(reason) => {
            let mut text = reason;
            for line in killed.iter().chain(leftovers) {
                text.push_str("\n  ");
                text.push_str(line);
            }
            let diag = dir.diagnostics();
            if !diag.is_empty() {
                text.push('\n');
                text.push_str(&diag);
            }
            text.push_str(&format!(
                "\n  (case directory kept: {})",
                dir.root.display()
            ));
            Outcome::Fail(text)
        }
        o => o,
    }
}

#[allow(clippy::too_many_arguments)]
fn steps(
    cfg: &Config,
    w: &Workload,
    dir: &CaseDir,
    flavor: Flavor,
    stdio: StdioKind,
    mode: Mode,
    procs: &mut Procs,
    pid_out: &mut Option<Pid>,
) -> Result<Outcome> {
    if let Program::Script { interp, .. } = w.program {
        if !Path::new(interp).exists() {
            return Ok(Outcome::Skip(format!("{interp} not found")));
        }
    }
    // `pid` is the root of the tree (dumped, restored, compared); `main` is
    // the workload (told to check itself): the same task on the host, the
    // child of `nsinit` (pid 1 of its own pid namespace) in the ns flavor
    let (pid, main) = match flavor {
        Flavor::Ns | Flavor::Uns | Flavor::Suns => {
            let user = match flavor {
                Flavor::Uns => Some("-U"),
                Flavor::Suns => {
                    // root inside is uid 20000 outside: it writes here
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&dir.state, fs::Permissions::from_mode(0o777))
                        .context("chmod the state directory")?;
                    Some("-S")
                }
                _ => None,
            };
            let pid = ns::start(cfg, w, dir, stdio, user, procs)?;
            *pid_out = Some(pid);
            (pid, ns::wait_ready(dir, pid, procs)?)
        }
        _ => {
            let pid = start(cfg, w, dir, stdio, procs)?;
            *pid_out = Some(pid);
            wait_ready(dir, pid, procs)?;
            (pid, pid)
        }
    };
    match w.settle {
        Settle::Blocked => {
            // every thread of every process of the tree (zombies aside)
            wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
        }
        Settle::Spinning => sleep(Duration::from_millis(100)),
        Settle::Storm => {
            let ns_before = match flavor {
                Flavor::Ns | Flavor::Uns | Flavor::Suns => {
                    Some(ns::before(cfg, dir, pid, main, true, procs)?)
                }
                _ => None,
            };
            return storm_steps(cfg, dir, (pid, main), ns_before, stdio, mode, procs);
        }
    }
    let before = procs::tree_snapshot(pid).context("process tree before the dump")?;
    let outside_before = outside::snapshot(&before);
    let ns_before = match flavor {
        Flavor::Ns | Flavor::Uns | Flavor::Suns => {
            Some(ns::before(cfg, dir, pid, main, false, procs)?)
        }
        _ => None,
    };
    let what = match mode {
        Mode::SelfCheck => "without a dump (self-check)",
        Mode::DumpRestore => "after restore",
        Mode::DumpLeaveRunning => "after dump -R",
    };
    let mut problems = ns_problems(&ns_before);
    match mode {
        Mode::SelfCheck => {}
        Mode::DumpRestore => {
            dump(cfg, dir, pid, false, procs)?;
            if let Some(b) = &ns_before {
                problems.extend(ns::check_images(cfg, dir, b, false, procs));
            }
            if let Err(e) = restore_detached(cfg, dir, pid, procs) {
                problems.insert(0, format!("{e:#}"));
                bail!("{}", problems.join("\n"));
            }
        }
        Mode::DumpLeaveRunning => {
            dump(cfg, dir, pid, true, procs)?;
            check_left_running(pid)?;
        }
    }
    if let Err(e) = check_tree(dir, pid, &before, what) {
        problems.insert(0, format!("{e:#}"));
    }
    if mode != Mode::SelfCheck {
        // back in the syscall it slept in (a sigsuspend shows its
        // temporary mask only there); a spinning workload's main thread
        // sleeps too, a moment after it is let go
        if w.settle == Settle::Blocked {
            wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
        } else {
            sleep(Duration::from_millis(200));
        }
        problems.extend(check_outside(dir, pid, &outside_before, what));
    }
    if let Some(b) = &ns_before {
        problems.extend(ns::check_after(
            cfg,
            dir,
            (pid, main),
            b,
            false,
            what,
            procs,
        ));
    }
    let verdict = finish_tree(dir, main, pid, stdio, procs);
    with_problems(verdict, problems)
}

/// The problems found while the namespaces were looked at before the dump.
fn ns_problems(before: &Option<ns::Before>) -> Vec<String> {
    before
        .as_ref()
        .map(|b| b.problems.clone())
        .unwrap_or_default()
}

/// The workload's verdict, unless the harness found problems: then they
/// fail the case, the verdict added as a note.
pub fn with_problems(verdict: Result<Outcome>, problems: Vec<String>) -> Result<Outcome> {
    if problems.is_empty() {
        return verdict;
    }
    let verdict = match verdict {
        Ok(o) => format!("the workload's own verdict: {o:?}"),
        Err(e) => format!("the workload's own verdict: FAIL {e:#}"),
    };
    bail!("{}\n{verdict}", problems.join("\n"))
}

/// The steps of a [`Settle::Storm`] workload after it is ready: dump at
/// once; a dump crest refuses must leave the tree running and untraced.
fn storm_steps(
    cfg: &Config,
    dir: &CaseDir,
    (pid, main): (Pid, Pid),
    ns_before: Option<ns::Before>,
    stdio: StdioKind,
    mode: Mode,
    procs: &mut Procs,
) -> Result<Outcome> {
    let mut note = None;
    let mut problems = ns_problems(&ns_before);
    let mut what = "after restore";
    match mode {
        Mode::SelfCheck => what = "without a dump (self-check)",
        Mode::DumpRestore => match dump_attempt(cfg, dir, pid, false, procs)? {
            None => {
                if let Some(b) = &ns_before {
                    problems.extend(ns::check_images(cfg, dir, b, true, procs));
                }
                if let Err(e) = restore_detached(cfg, dir, pid, procs) {
                    problems.insert(0, format!("{e:#}"));
                    bail!("{}", problems.join("\n"));
                }
            }
            Some(ran) => {
                what = "after the refused dump";
                let stuck = procs::tree_problems(pid);
                if !stuck.is_empty() {
                    bail!(
                        "{}; afterwards the tree is not left alone:\n  {}",
                        ran.failure("crest dump"),
                        stuck.join("\n  ")
                    );
                }
                let stderr: Vec<&str> = ran
                    .stderr
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                note = Some(format!("dump refused: {}", stderr.join(" | ")));
            }
        },
        Mode::DumpLeaveRunning => {
            what = "after dump -R";
            dump(cfg, dir, pid, true, procs)?;
            check_left_running(pid)?;
        }
    }
    if let Some(b) = &ns_before {
        problems.extend(ns::check_after(cfg, dir, (pid, main), b, true, what, procs));
    }
    let outcome = with_problems(finish_tree(dir, main, pid, stdio, procs), problems)?;
    Ok(match (outcome, note) {
        (Outcome::Pass, Some(note)) => Outcome::PassWith(note),
        (o, _) => o,
    })
}

/// Starts `launch <workload> <statedir> <args>` with the chosen stdio.
pub fn start(
    cfg: &Config,
    w: &Workload,
    dir: &CaseDir,
    stdio: StdioKind,
    procs: &mut Procs,
) -> Result<Pid> {
    let mut cmd = Command::new(cfg.workload("launch"));
    match &w.program {
        Program::C(name) => cmd.arg(cfg.workload(name)),
        Program::Script { interp, script } => cmd.arg(interp).arg(cfg.workload(script)),
    };
    cmd.arg(&dir.state)
        .args(&w.args)
        .current_dir(&dir.root)
        .stdin(Stdio::null());
    set_stdio(&mut cmd, dir, stdio)?;
    let child = cmd.spawn().with_context(|| format!("spawn {:?}", cmd))?;
    let pid = Pid::from_raw(child.id() as i32);
    procs.track(pid);
    Ok(pid)
}

/// Points stdout and stderr of `cmd` at /dev/null or `<casedir>/out.log`.
pub fn set_stdio(cmd: &mut Command, dir: &CaseDir, stdio: StdioKind) -> Result<()> {
    match stdio {
        StdioKind::DevNull => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        StdioKind::LogFile => {
            let path = dir.root.join("out.log");
            let log = OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .with_context(|| format!("open {}", path.display()))?;
            cmd.stdout(log.try_clone().context("dup log fd")?)
                .stderr(log);
        }
    }
    Ok(())
}

/// Waits for `<statedir>/ready` and checks it names `pid`.
pub fn wait_ready(dir: &CaseDir, pid: Pid, procs: &mut Procs) -> Result<()> {
    let ready = dir.state.join("ready");
    let start = Instant::now();
    while !ready.exists() {
        if let Waited::Exited(exit) = wait_exit(pid, Duration::ZERO)? {
            procs.untrack(pid);
            bail!(
                "workload exited before it was ready ({exit}){}",
                verdict_note(dir)
            );
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("workload not ready after {READY_TIMEOUT:?}");
        }
        sleep(procs::POLL);
    }
    let said = procs::read_pid_file(&ready)?;
    if said != pid {
        bail!("ready file names pid {said}, but the workload was started as {pid}");
    }
    Ok(())
}

fn verdict_note(dir: &CaseDir) -> String {
    match fs::read_to_string(dir.state.join("verdict")) {
        Ok(v) => format!("; verdict: {}", v.trim()),
        Err(_) => String::new(),
    }
}

/// Fails unless the crest binary exists.
pub fn check_crest(cfg: &Config) -> Result<()> {
    if !cfg.crest.exists() {
        bail!(
            "crest binary not found at {} (build it with `cargo build --release -p crest` or set \
             CREST_BIN)",
            cfg.crest.display()
        );
    }
    Ok(())
}

/// `crest dump -t PID -D images -o dump.log -v 4 [-R]`; without -R, waits
/// for the task to die and reaps it.
pub fn dump(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    leave_running: bool,
    procs: &mut Procs,
) -> Result<()> {
    match dump_attempt(cfg, dir, pid, leave_running, procs)? {
        None => Ok(()),
        Some(ran) => bail!(ran.failure("crest dump")),
    }
}

/// Like [`dump`], but a crest that exits non-zero is no error: its run is
/// returned (None: the dump succeeded and was checked, crit reading every
/// image as well).
pub fn dump_attempt(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    leave_running: bool,
    procs: &mut Procs,
) -> Result<Option<crest::Ran>> {
    check_crest(cfg)?;
    // the whole tree dies with the dump; its other processes (and zombies)
    // are reparented to the harness and must be reaped to free their pids
    let tree: Vec<i32> = procs::tree_snapshot(pid)
        .map(|t| t.into_keys().collect())
        .unwrap_or_default();
    let ran = run_dump(cfg, dir, pid, leave_running, procs)?;
    if !ran.success() {
        return Ok(Some(ran));
    }
    for img in ["inventory.img", "pstree.img"] {
        if !dir.images.join(img).exists() {
            bail!(
                "crest dump succeeded but wrote no {img} in {}",
                dir.images.display()
            );
        }
    }
    if leave_running {
        crate::crit::require(dir, procs)?;
        return Ok(None);
    }
    crate::iterative::check_final(dir)?;
    match wait_exit(pid, Duration::from_secs(10))? {
        Waited::Exited(_) => procs.untrack(pid),
        Waited::TimedOut => {
            bail!("pid {pid} still runs 10 s after crest dump (without -R) succeeded")
        }
        Waited::NotChild => bail!("pid {pid} is no longer a child of the harness after crest dump"),
    }
    if !wait_until(Duration::from_secs(5), || !exists(pid)) {
        bail!("/proc/{pid} still exists after the dumped task was reaped");
    }
    for p in tree.into_iter().map(Pid::from_raw).filter(|p| *p != pid) {
        procs::reap_or_wait_gone(p);
        if exists(p) {
            bail!(
                "pid {p} ({}, state {:?}) of the dumped tree still exists 5 s after crest dump \
                 (without -R) succeeded",
                procs::proc_comm(p).unwrap_or_default(),
                procs::proc_state(p)
            );
        }
    }
    // descendants that ended after the snapshot (a fork storm) are zombies
    // of the harness now and hold pids the restore needs
    procs::reap_zombie_children();
    crate::crit::require(dir, procs)?;
    Ok(None)
}

/// Runs `crest dump -t PID -D images -o dump.log -v 4 [-R]` plus the
/// options in <statedir>/dump-args, one per line (a workload may ask for
/// `--tcp-established` there).
pub fn run_dump(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    leave_running: bool,
    procs: &mut Procs,
) -> Result<crest::Ran> {
    run_dump_env(cfg, dir, pid, leave_running, procs, &[])
}

/// [`run_dump`] with `env` set for crest (`CREST_FAULT`).
pub fn run_dump_env(
    cfg: &Config,
    dir: &CaseDir,
    pid: Pid,
    leave_running: bool,
    procs: &mut Procs,
    env: &[(&str, &str)],
) -> Result<crest::Ran> {
    // (a workload that asks for pre-dumps gets them first: the dump
    // then has their images as its parent)
    let prev = if leave_running {
        None
    } else {
        crate::iterative::pre_dumps(cfg, dir, pid, procs)?
    };
    let mut cmd = dump_command(&cfg.crest, dir, pid, leave_running);
    if let Some(p) = prev {
        cmd.arg("--prev-images-dir").arg(p);
    }
    cmd.envs(env.iter().copied());
    crest::run(cmd, &dir.root, "dump", CREST_TIMEOUT, procs)
}

/// `CREST dump -t PID -D images -o dump.log -v4 [-R]` plus the options in
/// <statedir>/dump-args.
pub fn dump_command(crest_bin: &Path, dir: &CaseDir, pid: Pid, leave_running: bool) -> Command {
    let pid_s = pid.to_string();
    let images = dir.images.to_string_lossy();
    let mut args = vec!["dump", "-t", &pid_s, "-D", &images, "-o", "dump.log", "-v4"];
    if leave_running {
        args.push("-R");
    }
    let extra = fs::read_to_string(dir.state.join("dump-args")).unwrap_or_default();
    args.extend(extra.split_whitespace());
    crest::command(crest_bin, &args)
}

/// Runs `crest restore -D images -d --pidfile restore.pid -o restore.log
/// -v 4` plus the options in <statedir>/restore-args (`--external`);
/// returns the run and the pidfile's path.
pub fn run_restore_detached(
    cfg: &Config,
    dir: &CaseDir,
    procs: &mut Procs,
) -> Result<(crest::Ran, std::path::PathBuf)> {
    run_restore_detached_env(cfg, dir, procs, &[])
}

/// [`run_restore_detached`] with `env` set for crest (`CREST_FAULT`).
pub fn run_restore_detached_env(
    cfg: &Config,
    dir: &CaseDir,
    procs: &mut Procs,
    env: &[(&str, &str)],
) -> Result<(crest::Ran, std::path::PathBuf)> {
    run_restore_detached_with(cfg, dir, procs, env, &[])
}

/// [`run_restore_detached_env`] with the options `extra` too.
pub fn run_restore_detached_with(
    cfg: &Config,
    dir: &CaseDir,
    procs: &mut Procs,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Result<(crest::Ran, std::path::PathBuf)> {
    let (mut cmd, pidfile) = restore_command(&cfg.crest, dir);
    cmd.args(extra);
    cmd.envs(env.iter().copied());
    let ran = crest::run(cmd, &dir.root, "restore", CREST_TIMEOUT, procs)?;
    Ok((ran, pidfile))
}

/// `CREST restore -D images -d --pidfile restore.pid -o restore.log -v4`
/// plus the options in <statedir>/restore-args, and the pidfile's path
/// (an old one removed).
pub fn restore_command(crest_bin: &Path, dir: &CaseDir) -> (Command, PathBuf) {
    let pidfile = dir.root.join("restore.pid");
    let _ = fs::remove_file(&pidfile);
    let images = dir.images.to_string_lossy();
    let pidfile_s = pidfile.to_string_lossy();
    let mut args = vec![
        "restore",
        "-D",
        &images,
        "-d",
        "--pidfile",
        &pidfile_s,
        "-o",
        "restore.log",
        "-v4",
    ];
    let extra = fs::read_to_string(dir.state.join("restore-args")).unwrap_or_default();
    args.extend(extra.split_whitespace());
    (crest::command(crest_bin, &args), pidfile)
}

/// After `crest dump -R`: the task and every task and thread of its tree
/// run on, untraced and not stopped.
pub fn check_left_running(pid: Pid) -> Result<()> {
    let problems = procs::tree_problems(pid);
    if !problems.is_empty() {
        bail!("after crest dump -R: {}", problems.join("; "));
    }
    Ok(())
}

/// `crest restore -D images -d --pidfile restore.pid -o restore.log -v 4`;
/// the task must be back with its pid.
pub fn restore_detached(cfg: &Config, dir: &CaseDir, pid: Pid, procs: &mut Procs) -> Result<()> {
    // whatever happens, the pid may be ours to kill from now on
    procs.track(pid);
    // (the workload asks for a lazy restore, or CREST_E2E_LAZY does)
    let daemon = if crate::lazy::asked(dir) {
        Some(crate::lazy::start_daemon(cfg, dir, &[], procs)?)
    } else {
        None
    };
    let extra: &[&str] = if daemon.is_some() {
        &["--lazy-pages"]
    } else {
        &[]
    };
    let (ran, pidfile) = run_restore_detached_with(cfg, dir, procs, &[], extra)?;
    if !ran.success() {
        bail!(ran.failure("crest restore"));
    }
    if let Some(d) = daemon {
        crate::lazy::wait_done(dir, d, procs)?;
    }
    if !alive(pid) {
        bail!(
            "crest restore -d succeeded but pid {pid} is not running (state {:?})",
            procs::proc_state(pid)
        );
    }
    let said = procs::read_pid_file(&pidfile).context("crest restore --pidfile")?;
    if said != pid {
        bail!("crest restore wrote pid {said} to its pidfile, expected {pid}");
    }
    Ok(())
}

/// The tree of `pid` must be `before` again: same pids, parents, groups,
/// sessions, zombies and thread ids. The snapshots go to `tree.before` and
/// `tree.after` in the case directory.
fn check_tree(dir: &CaseDir, pid: Pid, before: &procs::Tree, what: &str) -> Result<()> {
    let after = procs::tree_snapshot(pid).with_context(|| format!("process tree {what}"))?;
    let _ = fs::write(dir.root.join("tree.before"), format!("{before:#?}\n"));
    let _ = fs::write(dir.root.join("tree.after"), format!("{after:#?}\n"));
    let diff = procs::tree_diff(before, &after, what);
    if !diff.is_empty() {
        bail!(
            "process tree of pid {pid} differs {what} ({} of {} processes before):\n  {}",
            diff.len(),
            before.len(),
            diff.join("\n  ")
        );
    }
    Ok(())
}

/// What the kernel shows of the tree from outside must be `before` again
/// ([`outside`]); the views go to `outside.before`/`outside.after`.
pub fn check_outside(dir: &CaseDir, pid: Pid, before: &outside::View, what: &str) -> Vec<String> {
    let tree = match procs::tree_snapshot(pid) {
        Ok(t) => t,
        Err(e) => return vec![format!("process tree {what}: {e:#}")],
    };
    let after = outside::snapshot(&tree);
    outside::save(before, &dir.root.join("outside.before"));
    outside::save(&after, &dir.root.join("outside.after"));
    let diff = outside::diff(before, &after);
    if diff.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "what the kernel shows of the tree from outside differs {what} ({} lines):\n  {}",
        diff.len(),
        diff.join("\n  ")
    )]
}

/// SIGTERM, wait for the exit, read the verdict.
pub fn finish(dir: &CaseDir, pid: Pid, stdio: StdioKind, procs: &mut Procs) -> Result<Outcome> {
    finish_tree(dir, pid, pid, stdio, procs)
}

/// SIGTERM to `main` (the workload), wait for the exit of `pid` (the root
/// the harness started, which ends the way the workload did), read the
/// verdict.
pub fn finish_tree(
    dir: &CaseDir,
    main: Pid,
    pid: Pid,
    stdio: StdioKind,
    procs: &mut Procs,
) -> Result<Outcome> {
    kill(main, Signal::SIGTERM).with_context(|| format!("SIGTERM pid {main}"))?;
    let exit = match wait_exit(pid, VERDICT_TIMEOUT)? {
        Waited::Exited(exit) => {
            procs.untrack(pid);
            if main != pid {
                if !wait_until(Duration::from_secs(5), || !exists(main)) {
                    bail!("pid {main} (the workload) still exists after nsinit (pid {pid}) ended");
                }
                procs.untrack(main);
            }
            exit
        }
        Waited::TimedOut => bail!(
            "pid {pid} (state {:?}) did not exit within {VERDICT_TIMEOUT:?} of SIGTERM{}",
            procs::proc_state(pid),
            verdict_note(dir)
        ),
        Waited::NotChild => {
            wait_until(VERDICT_TIMEOUT, || !exists(pid));
            bail!(
                "pid {pid} is not a child of the harness (waitpid: ECHILD), so its exit status \
                 is unknown; it should be reparented to the harness, a child subreaper{}",
                verdict_note(dir)
            );
        }
    };
    let outcome = judge(dir, exit)?;
    if outcome == Outcome::Pass && stdio == StdioKind::LogFile {
        check_log(&dir.root.join("out.log"))?;
    }
    Ok(outcome)
}

/// The outcome from the verdict file and the exit status.
pub fn judge(dir: &CaseDir, exit: Exit) -> Result<Outcome> {
    let path = dir.state.join("verdict");
    let verdict = match fs::read_to_string(&path) {
        Ok(v) => v,
        Err(_) => bail!("no verdict; the workload ended with {exit}"),
    };
    let verdict = verdict.trim_end();
    if verdict == "PASS" {
        if exit != Exit::Code(0) {
            bail!("verdict PASS but the workload ended with {exit}");
        }
        return Ok(Outcome::Pass);
    }
    if let Some(reason) = verdict.strip_prefix("SKIP: ") {
        return Ok(Outcome::Skip(reason.to_string()));
    }
    if let Some(reason) = verdict.strip_prefix("FAIL: ") {
        bail!("{reason} ({exit})");
    }
    bail!("unreadable verdict {verdict:?} ({exit})")
}

/// The log file got "before\n" and later "after\n".
fn check_log(path: &Path) -> Result<()> {
    let log = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let Some(b) = log.find("before\n") else {
        bail!("stdout log {} lacks \"before\": {log:?}", path.display());
    };
    if !log[b..].contains("after\n") {
        bail!(
            "stdout log {} lacks \"after\" after \"before\": {log:?}",
            path.display()
        );
    }
    Ok(())
}

/// The Debian-binary case: `sleep 4` (no protocol) is dumped right after it
/// starts and restored without -d: `crest restore` must wait for it and exit
/// 0 when it exits, not at once.
pub fn run_sleep_binary(cfg: &Config, mode: Mode) -> Outcome {
    let name = case_name("sleep_bin", Flavor::Host, None);
    run_in_dir(cfg, &name, |dir, procs| sleep_steps(cfg, dir, mode, procs))
}

fn sleep_steps(cfg: &Config, dir: &CaseDir, mode: Mode, procs: &mut Procs) -> Result<Outcome> {
    const SLEEP: &str = "/bin/sleep";
    if !Path::new(SLEEP).exists() {
        return Ok(Outcome::Skip(format!("{SLEEP} not found")));
    }
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.args([SLEEP, "4"]).current_dir(&dir.root);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let pid = Pid::from_raw(cmd.spawn().context("spawn launch sleep")?.id() as i32);
    procs.track(pid);
    if !wait_until(Duration::from_secs(5), || {
        procs::proc_comm(pid).as_deref() == Some("sleep") && procs::proc_state(pid) == Some('S')
    }) {
        bail!("pid {pid} did not become a sleeping `sleep` within 5 s");
    }
    if mode == Mode::SelfCheck {
        return match wait_exit(pid, Duration::from_secs(15))? {
            Waited::Exited(Exit::Code(0)) if started.elapsed() >= Duration::from_secs(1) => {
                procs.untrack(pid);
                Ok(Outcome::Pass)
            }
            other => bail!("sleep 4 ended with {other:?} after {:?}", started.elapsed()),
        };
    }
    dump(cfg, dir, pid, false, procs)?;
    let images = dir.images.to_string_lossy();
    let pidfile = dir.root.join("restore.pid");
    let pidfile_s = pidfile.to_string_lossy();
    let args = [
        "restore",
        "-D",
        &images,
        "--pidfile",
        &pidfile_s,
        "-o",
        "restore.log",
        "-v4",
    ];
    procs.track(pid);
    let restore_at = started.elapsed();
    let ran = crest::run(
        crest::command(&cfg.crest, &args),
        &dir.root,
        "restore",
        CREST_TIMEOUT,
        procs,
    )?;
    if !ran.success() {
        bail!(ran.failure("crest restore (without -d)"));
    }
    if alive(pid) {
        bail!("crest restore returned but the restored sleep (pid {pid}) still runs");
    }
    procs.untrack(pid);
    // sleep's deadline is 4 s after its start; only a restore that began well
    // before it can be expected to wait
    if restore_at < Duration::from_millis(2500) && ran.elapsed < Duration::from_secs(1) {
        bail!(
            "crest restore returned {:?} after it started, but the restored `sleep 4` (dumped \
             {restore_at:?} after its start) should have slept on",
            ran.elapsed
        );
    }
    Ok(Outcome::Pass)
}

/// Bytes the pipeline case pushes through `head -c`: about 4 s on a 2-CPU
/// machine, so it is mid-flight when it is dumped.
pub const PIPELINE_BYTES: u64 = 4_000_000_000;

/// A shell pipeline (`cat /dev/zero | head -c N | wc -c > OUT`, no
/// protocol) dumped mid-flight 0.3 s after it starts and restored without
/// -d: `crest restore` must exit 0 once the pipeline is done, and OUT must
/// hold N.
pub fn run_pipeline(cfg: &Config, mode: Mode) -> Outcome {
    let name = case_name("pipeline", Flavor::Host, None);
    run_in_dir(cfg, &name, |dir, procs| {
        pipeline_steps(cfg, dir, mode, procs)
    })
}

fn pipeline_steps(cfg: &Config, dir: &CaseDir, mode: Mode, procs: &mut Procs) -> Result<Outcome> {
    const BASH: &str = "/bin/bash";
    for bin in [BASH, "/bin/cat", "/usr/bin/head", "/usr/bin/wc"] {
        if !Path::new(bin).exists() {
            return Ok(Outcome::Skip(format!("{bin} not found")));
        }
    }
    let out = dir.root.join("pipeline.out");
    let script = format!(
        "cat /dev/zero | head -c {PIPELINE_BYTES} | wc -c > '{}'",
        out.display()
    );
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.args([BASH, "-c", &script]).current_dir(&dir.root);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let pid = Pid::from_raw(cmd.spawn().context("spawn launch bash")?.id() as i32);
    procs.track(pid);
    let comms = |t: &procs::Tree| {
        let mut c: Vec<String> = t.values().map(|t| t.comm.clone()).collect();
        c.sort();
        c
    };
    let full = |t: &procs::Tree| {
        t.len() == 4 && t.values().all(|t| !t.zombie) && comms(t) == ["bash", "cat", "head", "wc"]
    };
    if !wait_until(Duration::from_secs(5), || {
        procs::tree_snapshot(pid).is_ok_and(|t| full(&t))
    }) {
        bail!(
            "pid {pid} did not become bash with the children cat, head and wc within 5 s \
             (tree: {:?})",
            procs::tree_snapshot(pid)
                .map(|t| comms(&t))
                .unwrap_or_default()
        );
    }
    if let Some(left) = Duration::from_millis(300).checked_sub(started.elapsed()) {
        sleep(left);
    }
    let expect = format!("{PIPELINE_BYTES}\n");
    let check_out = || -> Result<()> {
        let got = fs::read_to_string(&out).with_context(|| format!("read {}", out.display()))?;
        if got != expect {
            bail!("{} holds {got:?}, expected {expect:?}", out.display());
        }
        Ok(())
    };
    if mode == Mode::SelfCheck {
        return match wait_exit(pid, Duration::from_secs(60))? {
            Waited::Exited(Exit::Code(0)) => {
                procs.untrack(pid);
                check_out()?;
                Ok(Outcome::Pass)
            }
            other => bail!(
                "the pipeline ended with {other:?} after {:?}",
                started.elapsed()
            ),
        };
    }
    // it must be mid-flight when it is dumped
    let tree = procs::tree_snapshot(pid).context("the pipeline's tree before the dump")?;
    if !full(&tree) {
        bail!(
            "the pipeline is no longer complete {:?} after its start (tree {:?}); raise \
             PIPELINE_BYTES",
            started.elapsed(),
            comms(&tree)
        );
    }
    fs::write(dir.root.join("tree.before"), format!("{tree:#?}\n")).context("write tree.before")?;
    dump(cfg, dir, pid, false, procs)?;
    let images = dir.images.to_string_lossy();
    let args = ["restore", "-D", &images, "-o", "restore.log", "-v4"];
    procs.track(pid);
    let ran = crest::run(
        crest::command(&cfg.crest, &args),
        &dir.root,
        "restore",
        CREST_TIMEOUT,
        procs,
    )?;
    if !ran.success() {
        bail!(ran.failure("crest restore (without -d)"));
    }
    for p in tree.keys().map(|p| Pid::from_raw(*p)) {
        if alive(p) {
            bail!(
                "crest restore returned but pid {p} ({}) of the pipeline still runs",
                procs::proc_comm(p).unwrap_or_default()
            );
        }
    }
    procs.untrack(pid);
    check_out()?;
    Ok(Outcome::Pass)
}
