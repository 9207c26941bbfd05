//! CRIU's command line as CRIU's users and its zdtm harness write it
//! (issue 12, item 8): each spelling on a real dump and restore of
//! `small_tree` (three processes, each checking its ppid on SIGTERM), the
//! tree compared from outside before the dump and after the restore, and
//! the workload's own verdict.
//!
//! Cases (`criu_cli_*[host]`): long and short spellings (`--tree`/`-t`,
//! `--images-dir`/`-D`/`--images-dir=`, `--log-file`/`-o`, `-v4`,
//! `-vvvv`, `--verbosity=4`, `--restore-detached`/`-d`, `--pidfile`
//! relative to the work directory), `--work-dir`/`-W`,
//! `--restore-sibling`, `--leave-running`/`-R`, `--leave-stopped`/`-s`,
//! a bag of options crest takes (`--timeout`, `--link-remap`,
//! `--ghost-limit`, `--evasive-devices`, `--network-lock skip`,
//! `--skip-in-flight`, `--ghost-fiemap`, `--force-irmap`,
//! `--manage-cgroups[=soft]`), `--empty-ns net` (a tree with its own net
//! namespace, started by `nsinit`), `--inherit-fd=`, `--status-fd`,
//! `--action-script`, `--display-stats`, `--config`/`--no-default-config`,
//! `check` (with `--feature`, `--all`), `--version`, the name `criu`
//! (a symlink), and refusals (`--lazy-pages`, `--tcp-close`, `--auto-dedup` at restore,
//! an unknown option, CRIU's exit code 1 and `Error (` in the log).

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, DirCase, Program, Settle, Workload};
use crate::crest::{self, Ran, CREST_TIMEOUT};
use crate::procs::{self, alive, exists, wait_exit, wait_until, Procs, Tree, Waited};
use crate::suite::Report;
use crate::{ns, Config, Outcome, StdioKind};

const CASES: [(&str, DirCase); 25] = [
    ("criu_cli_long_forms", long_forms),
    ("criu_cli_short_forms", short_forms),
    ("criu_cli_work_dir", work_dir),
    ("criu_cli_restore_sibling", restore_sibling),
    ("criu_cli_leave_running", leave_running),
    ("criu_cli_leave_stopped", leave_stopped),
    ("criu_cli_options", options_taken),
    ("criu_cli_empty_ns_net", empty_ns_net),
    ("criu_cli_join_ns", join_ns),
    ("criu_cli_join_ns_mnt", join_ns_mnt),
    ("criu_cli_ext_unix_sk", ext_unix_sk),
    ("criu_cli_tcp_close", tcp_close),
    ("criu_cli_external_mnt", external_mnt),
    ("criu_cli_mount_options", mount_options),
    ("criu_cli_inherit_fd", inherit_fd),
    ("criu_cli_status_fd", status_fd),
    ("criu_cli_progress_on_terminal", progress_on_terminal),
    ("criu_cli_action_script", action_script),
    ("criu_cli_display_stats", display_stats),
    ("criu_cli_config", config),
    ("criu_cli_check", check),
    ("criu_cli_version", version),
    ("criu_cli_name_criu", name_criu),
    ("criu_cli_refusals", refusals),
    ("criu_cli_failure_exit", failure_exit),
];

pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
}

/// `small_tree`: root, child, grandchild, each checking its ppid.
pub(crate) fn small_tree() -> Workload {
    Workload {
        name: "small_tree",
        program: Program::C("small_tree"),
        args: Vec::new(),
        settle: Settle::Blocked,
    }
}

/// Starts `small_tree`, waits until it is ready and settled; returns the
/// root and the tree as /proc shows it (every pid tracked for cleanup).
pub(crate) fn start_tree(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<(Pid, Tree)> {
    let pid = case::start(cfg, &small_tree(), dir, StdioKind::DevNull, procs)?;
    case::wait_ready(dir, pid, procs)?;
    wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
    let tree = procs::tree_snapshot(pid).context("the tree before the dump")?;
    if tree.len() != 3 {
        bail!("small_tree has {} processes, expected 3", tree.len());
    }
    for p in tree.keys() {
        procs.track(Pid::from_raw(*p));
    }
    Ok((pid, tree))
}

/// After a dump without -R: the root (our child) is reaped, every other
/// task of the tree is gone.
pub(crate) fn reap_dumped(pid: Pid, tree: &Tree, procs: &mut Procs) -> Result<()> {
    match wait_exit(pid, Duration::from_secs(10))? {
        Waited::Exited(_) => procs.untrack(pid),
        Waited::TimedOut => bail!("pid {pid} still runs 10 s after the dump succeeded"),
        Waited::NotChild => {
            if !wait_until(Duration::from_secs(5), || !exists(pid)) {
                bail!("pid {pid} still exists after the dump");
            }
        }
    }
    for p in tree.keys().map(|p| Pid::from_raw(*p)).filter(|p| *p != pid) {
        procs::reap_or_wait_gone(p);
        if exists(p) {
            bail!(
                "pid {p} ({}, state {:?}) of the dumped tree still exists after the dump",
                procs::proc_comm(p).unwrap_or_default(),
                procs::proc_state(p)
            );
        }
    }
    procs::reap_zombie_children();
    Ok(())
}

/// The restored tree of `pid` must be `before` again; then it is told to
/// check itself and must pass.
pub(crate) fn check_restored(
    dir: &CaseDir,
    pid: Pid,
    before: &Tree,
    procs: &mut Procs,
) -> Result<Outcome> {
    if !alive(pid) {
        bail!(
            "the restored root {pid} is not running (state {:?})",
            procs::proc_state(pid)
        );
    }
    let after = procs::tree_snapshot(pid).context("the tree after the restore")?;
    let diff = procs::tree_diff(before, &after, "after restore");
    if !diff.is_empty() {
        bail!(
            "the tree differs after the restore:\n  {}",
            diff.join("\n  ")
        );
    }
    for p in after.keys() {
        procs.track(Pid::from_raw(*p));
    }
    case::finish(dir, pid, StdioKind::DevNull, procs)
}

/// `crest ARGS` in the case directory, output in `<tag>.stdout/.stderr`.
pub(crate) fn crest_run(
    cfg: &Config,
    dir: &CaseDir,
    tag: &str,
    args: &[&str],
    procs: &mut Procs,
) -> Result<Ran> {
    case::check_crest(cfg)?;
    crest::run(
        crest::command(&cfg.crest, args),
        &dir.root,
        tag,
        CREST_TIMEOUT,
        procs,
    )
}

/// A crest run that must succeed.
fn crest_ok(
    cfg: &Config,
    dir: &CaseDir,
    tag: &str,
    args: &[&str],
    procs: &mut Procs,
) -> Result<Ran> {
    let ran = crest_run(cfg, dir, tag, args, procs)?;
    if !ran.success() {
        bail!(ran.failure(&format!("crest {}", args.join(" "))));
    }
    Ok(ran)
}

/// A dump that must succeed and kill the tree.
pub(crate) fn dump_ok(
    cfg: &Config,
    dir: &CaseDir,
    args: &[&str],
    pid: Pid,
    tree: &Tree,
    procs: &mut Procs,
) -> Result<Ran> {
    let ran = crest_ok(cfg, dir, "dump", args, procs)?;
    reap_dumped(pid, tree, procs)?;
    Ok(ran)
}

/// A restore that must succeed and bring `pid` back.
pub(crate) fn restore_ok(
    cfg: &Config,
    dir: &CaseDir,
    tag: &str,
    args: &[&str],
    pid: Pid,
    procs: &mut Procs,
) -> Result<Ran> {
    procs.track(pid);
    let ran = crest_ok(cfg, dir, tag, args, procs)?;
    if !alive(pid) {
        bail!(
            "crest {} succeeded but pid {pid} is not running",
            args.join(" ")
        );
    }
    Ok(ran)
}

/// `crest dump -t PID -D IMAGES -o dump.log` and `extra`, which must
/// succeed and end the tree of `pid`.
fn dump_with(
    cfg: &Config,
    dir: &CaseDir,
    extra: &[&str],
    pid: Pid,
    tree: &Tree,
    procs: &mut Procs,
) -> Result<Ran> {
    let (images, pid_s) = (s(&dir.images), pid.to_string());
    let mut args = vec!["dump", "-t", &pid_s, "-D", &images, "-o", "dump.log"];
    args.extend_from_slice(extra);
    dump_ok(cfg, dir, &args, pid, tree, procs)
}

/// `crest restore -D IMAGES -d -o restore.log` and `extra`, which must
/// succeed and bring `pid` back.
fn restore_with(
    cfg: &Config,
    dir: &CaseDir,
    extra: &[&str],
    pid: Pid,
    procs: &mut Procs,
) -> Result<Ran> {
    let images = s(&dir.images);
    let args = restore_args(&images, extra);
    restore_ok(cfg, dir, "restore", &args, pid, procs)
}

/// `restore -D IMAGES -d -o restore.log` and `extra`.
fn restore_args<'a>(images: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["restore", "-D", images, "-d", "-o", "restore.log"];
    args.extend_from_slice(extra);
    args
}

/// [`restore_with`] run through the shell, whose `redirect` gives crest
/// fds first ([`crest::command_with`]).
fn restore_redirected(
    cfg: &Config,
    dir: &CaseDir,
    redirect: &str,
    extra: &[&str],
    pid: Pid,
    procs: &mut Procs,
) -> Result<Ran> {
    let images = s(&dir.images);
    let args = restore_args(&images, extra);
    let cmd = crest::command_with(&cfg.crest, redirect, &args);
    procs.track(pid);
    let ran = crest::run(cmd, &dir.root, "restore", CREST_TIMEOUT, procs)?;
    if !ran.success() {
        bail!(ran.failure(&format!("crest {}", args.join(" "))));
    }
    Ok(ran)
}

pub(crate) fn s(p: &Path) -> String {
    p.to_string_lossy().to_string()
}

/// The pid a pidfile names must be `pid`.
fn check_pidfile(path: &Path, pid: Pid) -> Result<()> {
    let said = procs::read_pid_file(path)?;
    if said != pid {
        bail!("{} names {said}, expected {pid}", path.display());
    }
    Ok(())
}

fn must_exist(dir: &Path, files: &[&str]) -> Result<()> {
    for f in files {
        if !dir.join(f).exists() {
            bail!("no {f} in {}", dir.display());
        }
    }
    Ok(())
}

fn long_forms(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    let images = s(&dir.images);
    let pid_s = pid.to_string();
    let d = [
        "dump",
        "--tree",
        &pid_s,
        "--images-dir",
        &images,
        "--log-file",
        "dump.log",
        "--verbosity=4",
    ];
    dump_ok(cfg, dir, &d, pid, &before, procs)?;
    let images_eq = format!("--images-dir={images}");
    let r = [
        "restore",
        &images_eq,
        "--restore-detached",
        "--pidfile",
        "restore.pid",
        "--log-file",
        "restore.log",
        "--verbosity=4",
    ];
    restore_ok(cfg, dir, "restore", &r, pid, procs)?;
    must_exist(&dir.images, &["dump.log", "restore.log", "stats-dump"])?;
    // relative to the work directory, which is the images directory
    check_pidfile(&dir.images.join("restore.pid"), pid)?;
    check_restored(dir, pid, &before, procs)
}

/// Lines of a log file (0 if missing).
fn log_lines(p: &Path) -> usize {
    fs::read_to_string(p)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn short_forms(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    dump_with(cfg, dir, &["-vvvv"], pid, &before, procs)?;
    let pidfile = s(&dir.root.join("restore.pid"));
    restore_with(cfg, dir, &["-v4", "--pidfile", &pidfile], pid, procs)?;
    check_pidfile(&dir.root.join("restore.pid"), pid)?;
    // -vvvv and -v4 are verbose: more than a line or two each
    for f in ["dump.log", "restore.log"] {
        let n = log_lines(&dir.images.join(f));
        if n < 5 {
            bail!("{f} has {n} lines at verbosity 4");
        }
    }
    check_restored(dir, pid, &before, procs)
}

fn work_dir(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    let work = dir.root.join("work");
    fs::create_dir_all(&work)?;
    let (images, work_s, pid_s) = (s(&dir.images), s(&work), pid.to_string());
    dump_ok(
        cfg,
        dir,
        &[
            "dump", "-t", &pid_s, "-D", &images, "-W", &work_s, "-o", "dump.log", "-v4",
        ],
        pid,
        &before,
        procs,
    )?;
    restore_ok(
        cfg,
        dir,
        "restore",
        &[
            "restore",
            "-D",
            &images,
            "--work-dir",
            &work_s,
            "-d",
            "-o",
            "restore.log",
            "--pidfile",
            "restore.pid",
        ],
        pid,
        procs,
    )?;
    let files = [
        "dump.log",
        "stats-dump",
        "restore.log",
        "stats-restore",
        "restore.pid",
    ];
    must_exist(&work, &files)?;
    for f in files {
        if dir.images.join(f).exists() {
            bail!("{f} is in the images directory, not (only) in the work directory");
        }
    }
    check_pidfile(&work.join("restore.pid"), pid)?;
    check_restored(dir, pid, &before, procs)
}

/// An action script appending "$CRTOOLS_SCRIPT_ACTION $CRTOOLS_IMAGE_DIR
/// $CRTOOLS_INIT_PID $PPID PPID-OF-INIT" to `log`.
fn write_script(dir: &CaseDir, log: &Path) -> Result<String> {
    let path = dir.root.join("action.sh");
    fs::write(
        &path,
        format!(
            concat!(
                "#!/bin/sh\nppid=\n",
                "if [ -n \"$CRTOOLS_INIT_PID\" ]; then\n",
                "  ppid=$(awk '/^PPid:/ {{print $2}}' /proc/$CRTOOLS_INIT_PID/status 2>/dev/null)\n",
                "fi\n",
                "echo \"$CRTOOLS_SCRIPT_ACTION $CRTOOLS_IMAGE_DIR ${{CRTOOLS_INIT_PID:--}} $PPID \\\n",
                "  ${{ppid:--}}\" >> {}\n"
            ),
            log.display()
        ),
    )?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(s(&path))
}

/// One line of the action script's log.
#[derive(Debug)]
struct Hook {
    action: String,
    images: String,
    pid: Option<i32>,
    /// The script's parent (crest).
    caller: i32,
    /// The parent of the init pid, when there is one.
    init_ppid: Option<i32>,
}

fn read_hooks(log: &Path) -> Result<Vec<Hook>> {
    let text = fs::read_to_string(log).with_context(|| format!("read {}", log.display()))?;
    let mut out = Vec::new();
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        let [action, images, pid, caller, ppid] = w[..] else {
            bail!("action script line {l:?}");
        };
        let num = |v: &str| -> Result<Option<i32>> {
            if v == "-" {
                return Ok(None);
            }
            Ok(Some(
                v.parse()
                    .with_context(|| format!("{v:?} in {l:?} is not a pid"))?,
            ))
        };
        out.push(Hook {
            action: action.into(),
            images: images.into(),
            pid: num(pid)?,
            caller: caller.parse().with_context(|| format!("line {l:?}"))?,
            init_ppid: num(ppid)?,
        });
    }
    Ok(out)
}

fn restore_sibling(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    let images = s(&dir.images);
    dump_with(cfg, dir, &[], pid, &before, procs)?;
    let log = dir.root.join("hooks.log");
    let script = write_script(dir, &log)?;
    restore_ok(
        cfg,
        dir,
        "restore",
        &[
            "restore",
            "-D",
            &images,
            "-d",
            "--restore-sibling",
            "-o",
            "restore.log",
            "--action-script",
            &script,
        ],
        pid,
        procs,
    )?;
    let me = std::process::id() as i32;
    let hooks = read_hooks(&log)?;
    let post = hooks
        .iter()
        .find(|h| h.action == "post-restore")
        .context("no post-restore hook ran")?;
    if post.init_ppid != Some(me) {
        bail!(
            "with --restore-sibling the root {pid} had parent {:?} at post-restore (crest is {}), \
             expected the test process {me}",
            post.init_ppid,
            post.caller
        );
    }
    if procs::proc_ppid(pid) != Some(me) {
        bail!(
            "the restored root's parent is {:?}, not the test process",
            procs::proc_ppid(pid)
        );
    }
    check_restored(dir, pid, &before, procs)
}

fn leave_running(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    let pid_s = pid.to_string();
    for (i, flag) in ["-R", "--leave-running"].iter().enumerate() {
        let images = s(&dir.root.join(format!("images{i}")));
        crest_ok(
            cfg,
            dir,
            &format!("dump{i}"),
            &["dump", "-t", &pid_s, "-D", &images, flag, "-o", "dump.log"],
            procs,
        )?;
        let problems = procs::tree_problems(pid);
        if !problems.is_empty() {
            bail!("after dump {flag}: {}", problems.join("; "));
        }
        must_exist(Path::new(&images), &["pstree.img"])?;
    }
    let after = procs::tree_snapshot(pid)?;
    let diff = procs::tree_diff(&before, &after, "after dump -R");
    if !diff.is_empty() {
        bail!("the tree changed: {}", diff.join("; "));
    }
    case::finish(dir, pid, StdioKind::DevNull, procs)
}

/// Every task of `tree` must be in state T (stopped), not traced.
fn all_stopped(tree: &Tree, what: &str) -> Result<()> {
    for p in tree.keys().map(|p| Pid::from_raw(*p)) {
        let ok = wait_until(Duration::from_secs(3), || procs::proc_state(p) == Some('T'));
        let tracer = procs::proc_status_field(p, "TracerPid");
        if !ok || tracer.as_deref() != Some("0") {
            bail!(
                "{what}: pid {p} is in state {:?} with TracerPid {tracer:?}, expected T and 0",
                procs::proc_state(p)
            );
        }
    }
    Ok(())
}

fn leave_stopped(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    let (images, pid_s) = (s(&dir.images), pid.to_string());
    crest_ok(
        cfg,
        dir,
        "dump",
        &[
            "dump",
            "-t",
            &pid_s,
            "-D",
            &images,
            "--leave-stopped",
            "-o",
            "dump.log",
        ],
        procs,
    )?;
    all_stopped(&before, "after dump --leave-stopped")?;
    // the stopped tree goes away, so the images can have its pids
    for p in before.keys().rev() {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    reap_dumped(pid, &before, procs)?;
    restore_ok(
        cfg,
        dir,
        "restore",
        &["restore", "-D", &images, "-s", "-d", "-o", "restore.log"],
        pid,
        procs,
    )?;
    all_stopped(&before, "after restore -s -d")?;
    for p in before.keys() {
        kill(Pid::from_raw(*p), Signal::SIGCONT).context("SIGCONT")?;
    }
    if !wait_until(Duration::from_secs(3), || {
        before
            .keys()
            .all(|p| procs::proc_state(Pid::from_raw(*p)) == Some('S'))
    }) {
        bail!("the tree does not sleep again after SIGCONT");
    }
    check_restored(dir, pid, &before, procs)
}

fn options_taken(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    dump_with(
        cfg,
        dir,
        &[
            "--timeout",
            "10",
            "--link-remap",
            "--ghost-limit",
            "1M",
            "--evasive-devices",
            "--network-lock",
            "skip",
            "--skip-in-flight",
            "--ghost-fiemap",
            "--force-irmap",
            "--manage-cgroups",
        ],
        pid,
        &before,
        procs,
    )?;
    restore_with(
        cfg,
        dir,
        &[
            "--timeout",
            "10",
            "--link-remap",
            "--evasive-devices",
            "--network-lock",
            "skip",
            "--no-ghost-fiemap",
            "--manage-cgroups=soft",
        ],
        pid,
        procs,
    )?;
    check_restored(dir, pid, &before, procs)
}

/// The interfaces /proc/PID/net/dev lists (those of its net namespace).
fn interfaces(pid: Pid) -> Result<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/net/dev"))?;
    Ok(text
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect())
}

fn empty_ns_net(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let root = ns::start(cfg, &small_tree(), dir, StdioKind::DevNull, None, procs)?;
    let main = ns::wait_ready(dir, root, procs)?;
    wait_until(Duration::from_secs(5), || procs::tree_settled(root));
    let before = procs::tree_snapshot(root)?;
    for p in before.keys() {
        procs.track(Pid::from_raw(*p));
    }
    let ifs = interfaces(main)?;
    if ifs != ["lo"] {
        bail!("the workload's net namespace has {ifs:?} before the dump, expected lo only");
    }
    dump_with(cfg, dir, &["--empty-ns", "net"], root, &before, procs)?;
    restore_with(cfg, dir, &["--empty-ns", "net"], root, procs)?;
    let ours = fs::read_link("/proc/self/ns/net")?;
    let theirs = fs::read_link(format!("/proc/{main}/ns/net"))?;
    if ours == theirs {
        bail!("the restored workload shares the harness's net namespace ({ours:?})");
    }
    let ifs = interfaces(main)?;
    if ifs != ["lo"] {
        bail!("the restored net namespace has {ifs:?}, expected an empty one (lo only)");
    }
    let after = procs::tree_snapshot(root)?;
    let diff = procs::tree_diff(&before, &after, "after restore");
    if !diff.is_empty() {
        bail!(
            "the tree differs after the restore:\n  {}",
            diff.join("\n  ")
        );
    }
    case::finish_tree(dir, main, root, StdioKind::DevNull, procs)
}

/// `small_tree` in its own namespaces (the `ns` flavor), restored with
/// `--join-ns uts:PID` (a holder process in a uts namespace of its own,
/// with another host name): the restored tree is in the holder's uts
/// namespace, whose name crest left as it was.
fn join_ns(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if !Path::new("/usr/bin/unshare").exists() {
        return Ok(Outcome::Skip("util-linux unshare is missing".into()));
    }
    let root = ns::start(cfg, &small_tree(), dir, StdioKind::DevNull, None, procs)?;
    let main = ns::wait_ready(dir, root, procs)?;
    wait_until(Duration::from_secs(5), || procs::tree_settled(root));
    let before = procs::tree_snapshot(root)?;
    for p in before.keys() {
        procs.track(Pid::from_raw(*p));
    }
    let (mut holder, hpid) = spawn_quiet(
        "/usr/bin/unshare",
        &["-u", "sh", "-c", "hostname crest-joined && exec sleep 60"],
        None,
        procs,
    )?;
    let uts_of = |p: Pid| fs::read_link(format!("/proc/{p}/ns/uts"));
    let ours = fs::read_link("/proc/self/ns/uts")?;
    if !wait_until(Duration::from_secs(5), || {
        uts_of(hpid).is_ok_and(|u| u != ours)
    }) {
        bail!("the holder did not get a uts namespace of its own");
    }
    dump_with(cfg, dir, &[], root, &before, procs)?;
    let join = format!("uts:{hpid}");
    restore_with(cfg, dir, &["--join-ns", &join], root, procs)?;
    let (theirs, held) = (uts_of(main)?, uts_of(hpid)?);
    if theirs != held {
        bail!("the restored workload is in {theirs:?}, not the joined {held:?}");
    }
    let name = std::process::Command::new("nsenter")
        .arg(format!("--uts=/proc/{main}/ns/uts"))
        .arg("hostname")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if name.trim() != "crest-joined" {
        bail!("the joined namespace's host name is {name:?}, crest changed it");
    }
    let _ = holder.kill();
    let _ = holder.wait();
    case::finish_tree(dir, main, root, StdioKind::DevNull, procs)
}

/// `--join-ns mnt:PID`: a tree in a mount namespace of its own (a tmpfs
/// at `m` holding `t`) is restored into the mount namespace a holder
/// made (a tmpfs at `m` holding `h`): the tree is in the holder's
/// namespace and sees its files, crest replayed nothing there.
fn join_ns_mnt(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if !Path::new("/usr/bin/unshare").exists() {
        return Ok(Outcome::Skip("util-linux unshare is missing".into()));
    }
    let m = dir.root.join("m");
    fs::create_dir_all(&m)?;
    let setup = format!(
        "mount -t tmpfs none {} && echo tree > {}/t",
        m.display(),
        m.display()
    );
    let (pid, before) = in_own_mntns(cfg, dir, &setup, procs)?;
    let script = format!(
        "mount -t tmpfs none {} && echo held > {}/h && exec sleep 60",
        m.display(),
        m.display()
    );
    let (mut holder, hpid) = spawn_quiet(
        "/usr/bin/unshare",
        &["-m", "--propagation", "private", "sh", "-c", &script],
        None,
        procs,
    )?;
    let held = m.join("h");
    if !wait_until(Duration::from_secs(5), || {
        Path::new(&format!("/proc/{hpid}/root{}", held.display())).exists()
    }) {
        bail!("the holder did not mount its tmpfs");
    }
    dump_with(cfg, dir, &[], pid, &before, procs)?;
    let join = format!("mnt:{hpid}");
    let r = restore_with(cfg, dir, &["--join-ns", &join], pid, procs);
    let mnt_of = |p: Pid| fs::read_link(format!("/proc/{p}/ns/mnt"));
    let check = r.and_then(|_| {
        let (theirs, held_ns) = (mnt_of(pid)?, mnt_of(hpid)?);
        if theirs != held_ns {
            bail!("the restored tree is in {theirs:?}, not the joined {held_ns:?}");
        }
        let root = format!("/proc/{pid}/root{}", m.display());
        if !Path::new(&format!("{root}/h")).exists() || Path::new(&format!("{root}/t")).exists() {
            bail!(
                "the tree does not see the joined namespace's tmpfs at {}",
                m.display()
            );
        }
        Ok(())
    });
    let _ = holder.kill();
    let _ = holder.wait();
    procs.untrack(hpid);
    check?;
    check_restored(dir, pid, &before, procs)
}

/// `--ext-unix-sk`: a python3 process sends numbered datagrams on a unix
/// socket connected to a socket the harness bound (outside the tree, as
/// a host's /dev/log is); without the option the dump is refused naming
/// it; with it, the restored process sends on to the same socket, its
/// count going on from where it stopped.
fn ext_unix_sk(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if !Path::new("/usr/bin/python3").exists() {
        return Ok(Outcome::Skip("python3 is missing".into()));
    }
    let path = dir.root.join("log.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&path).context("bind the receiver")?;
    rx.set_read_timeout(Some(Duration::from_secs(5)))?;
    let script = format!(
        "import os, socket, time\n\
         os.closerange(3, 65536)\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.connect({:?})\n\
         i = 0\n\
         while True:\n    i += 1\n    s.send(b'%d' % i)\n    time.sleep(0.05)\n",
        s(&path)
    );
    let (_, pid) = spawn_quiet("/usr/bin/python3", &["-c", &script], None, procs)?;
    let tick = |rx: &std::os::unix::net::UnixDatagram| -> Result<u64> {
        let mut buf = [0u8; 32];
        let n = rx.recv(&mut buf).context("receive a datagram")?;
        String::from_utf8_lossy(&buf[..n])
            .parse()
            .context("a numbered datagram")
    };
    let mut last = tick(&rx)?;
    wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
    let before = procs::tree_snapshot(pid)?;
    let (images, pid_s) = (s(&dir.images), pid.to_string());
    let refused = crest_run(
        cfg,
        dir,
        "dump-plain",
        &["dump", "-t", &pid_s, "-D", &images, "-o", "dump-plain.log"],
        procs,
    )?;
    if refused.success() || !refused.stderr.contains("--ext-unix-sk") {
        bail!(refused.failure("a dump without --ext-unix-sk (expected a refusal naming it)"));
    }
    dump_with(cfg, dir, &["--ext-unix-sk"], pid, &before, procs)?;
    // what it sent before it was dumped
    rx.set_nonblocking(true)?;
    while let Ok(n) = tick(&rx) {
        last = n;
    }
    rx.set_nonblocking(false)?;
    restore_with(cfg, dir, &[], pid, procs)?;
    let next = tick(&rx)?;
    if next != last + 1 {
        bail!("after the restore the datagrams went on at {next}, the last before was {last}");
    }
    Ok(Outcome::Pass)
}

/// `--tcp-close`: a python3 process holds a TCP connection to the harness
/// and sends on it. Dumped with `--tcp-close` (no `--tcp-established`),
/// the images are refused by a restore without the option; restored with
/// it, the process finds its socket closed (its next send fails) and says
/// so in a file.
fn tcp_close(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if !Path::new("/usr/bin/python3").exists() {
        return Ok(Outcome::Skip("python3 is missing".into()));
    }
    let lis = std::net::TcpListener::bind("127.0.0.1:0").context("listen")?;
    let port = lis.local_addr()?.port();
    let said = dir.root.join("said");
    let script = format!(
        "import os, socket, time\n\
         os.closerange(3, 65536)\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         while True:\n    \
             try:\n        s.send(b'x')\n    \
             except OSError as e:\n        \
                 open({:?}, 'w').write(e.__class__.__name__)\n        \
                 time.sleep(1)\n        break\n    \
             time.sleep(0.05)\n",
        s(&said)
    );
    let (_, pid) = spawn_quiet("/usr/bin/python3", &["-c", &script], None, procs)?;
    let (mut conn, _) = lis.accept().context("accept the connection")?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut conn, &mut b).context("the first byte")?;
    wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
    let before = procs::tree_snapshot(pid)?;
    let images = s(&dir.images);
    dump_with(cfg, dir, &["--tcp-close"], pid, &before, procs)?;
    let refused = crest_run(
        cfg,
        dir,
        "restore-plain",
        &["restore", "-D", &images, "-d", "-o", "restore-plain.log"],
        procs,
    )?;
    if refused.success() || !refused.stderr.contains("--tcp-close") {
        bail!(refused.failure("a restore without --tcp-close (expected a refusal naming it)"));
    }
    restore_with(cfg, dir, &["--tcp-close"], pid, procs)?;
    if !wait_until(Duration::from_secs(5), || said.exists()) {
        bail!("the restored process did not find its connection closed");
    }
    let what = fs::read_to_string(&said)?;
    if !wait_until(Duration::from_secs(5), || !procs::alive(pid)) {
        bail!("the restored process did not end after its send failed ({what})");
    }
    Ok(Outcome::Pass)
}

/// `small_tree` in a mount namespace of its own with a bind mount from
/// outside (`src` on `dst`): dumped with `--external mnt[DST]:KEY`,
/// restored with `--external mnt[KEY]:SRC2`; the restored mount shows
/// SRC2's file.
fn external_mnt(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if !Path::new("/usr/bin/unshare").exists() {
        return Ok(Outcome::Skip("unshare (util-linux) not found".into()));
    }
    let (src, src2, dst) = (
        dir.root.join("src"),
        dir.root.join("src2"),
        dir.root.join("dst"),
    );
    for d in [&src, &src2, &dst] {
        fs::create_dir_all(d)?;
    }
    fs::write(src.join("before"), "1")?;
    fs::write(src2.join("after"), "2")?;
    let setup = format!("mount --bind {} {}", src.display(), dst.display());
    let (pid, before) = in_own_mntns(cfg, dir, &setup, procs)?;
    let seen = |pid: Pid| -> Vec<String> {
        fs::read_dir(format!("/proc/{pid}/root{}", dst.display()))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    if seen(pid) != ["before"] {
        bail!("the bind mount shows {:?} before the dump", seen(pid));
    }
    let ext_dump = format!("mnt[{}]:shared", dst.display());
    dump_with(cfg, dir, &["--external", &ext_dump], pid, &before, procs)?;
    let ext_restore = format!("mnt[shared]:{}", src2.display());
    restore_with(cfg, dir, &["--external", &ext_restore], pid, procs)?;
    if seen(pid) != ["after"] {
        bail!(
            "the restored mount on {} shows {:?}, expected src2's file (--external {ext_restore})",
            dst.display(),
            seen(pid)
        );
    }
    check_restored(dir, pid, &before, procs)
}

/// Starts `program` with `args`, stdio on /dev/null (in `cwd` if given),
/// tracked: the child and its pid.
fn spawn_quiet(
    program: &str,
    args: &[&str],
    cwd: Option<&Path>,
    procs: &mut Procs,
) -> Result<(std::process::Child, Pid)> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let child = cmd.spawn().with_context(|| format!("start {program}"))?;
    let pid = Pid::from_raw(child.id() as i32);
    procs.track(pid);
    Ok((child, pid))
}

/// Starts `small_tree` in a mount namespace of its own (`unshare -m`,
/// private), after the shell commands `setup` ran there; returns its pid
/// once it is ready and settled, and its tree.
fn in_own_mntns(
    cfg: &Config,
    dir: &CaseDir,
    setup: &str,
    procs: &mut Procs,
) -> Result<(Pid, procs::Tree)> {
    let script = format!(
        "{setup} && exec {} {} {}",
        cfg.workload("launch").display(),
        cfg.workload("small_tree").display(),
        dir.state.display()
    );
    let (_, pid) = spawn_quiet(
        "/usr/bin/unshare",
        &["-m", "--propagation", "private", "sh", "-c", &script],
        Some(&dir.root),
        procs,
    )?;
    case::wait_ready(dir, pid, procs)?;
    wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
    let before = procs::tree_snapshot(pid)?;
    for p in before.keys() {
        procs.track(Pid::from_raw(*p));
    }
    Ok((pid, before))
}

/// The mount options runtimes and LXC pass (`--ext-mount-map auto`,
/// `--enable-fs`, `--skip-mnt`, `--enable-external-sharing/masters`): a
/// tree in a mount namespace of its own with a bind mount from outside
/// (found by itself and bound again from the same place), a hugetlbfs mount
/// (made afresh), and a tmpfs left out with `--skip-mnt` (not there after).
fn mount_options(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if !Path::new("/usr/bin/unshare").exists() {
        return Ok(Outcome::Skip("unshare (util-linux) not found".into()));
    }
    let huge_fs = fs::read_to_string("/proc/filesystems")?.contains("\thugetlbfs\n");
    let (src, dst, huge, skip) = (
        dir.root.join("src"),
        dir.root.join("dst"),
        dir.root.join("huge"),
        dir.root.join("skip"),
    );
    for d in [&src, &dst, &huge, &skip] {
        fs::create_dir_all(d)?;
    }
    fs::write(src.join("bound"), "1")?;
    let hugetlb = if huge_fs {
        format!("mount -t hugetlbfs none {} && ", huge.display())
    } else {
        String::new()
    };
    let setup = format!(
        "mount --bind {} {} && {hugetlb}mount -t tmpfs none {} && echo x > {}/f",
        src.display(),
        dst.display(),
        skip.display(),
        skip.display(),
    );
    let (pid, before) = in_own_mntns(cfg, dir, &setup, procs)?;
    // (mount point → filesystem type) in the tree's namespace
    let mounts = |pid: Pid| -> std::collections::HashMap<String, String> {
        let text = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let sep = f.iter().position(|x| *x == "-")?;
                Some((f.get(4)?.to_string(), f.get(sep + 1)?.to_string()))
            })
            .collect()
    };
    let m = mounts(pid);
    if !m.contains_key(&s(&dst)) || !m.contains_key(&s(&skip)) {
        bail!("the tree's mounts before the dump: {m:?}");
    }
    let skip_s = s(&skip);
    dump_with(
        cfg,
        dir,
        &[
            "--ext-mount-map",
            "auto",
            "--enable-fs",
            "hugetlbfs,tracefs",
            "--skip-mnt",
            &skip_s,
            "--enable-external-sharing",
            "--enable-external-masters",
        ],
        pid,
        &before,
        procs,
    )?;
    restore_with(cfg, dir, &["--ext-mount-map", "auto"], pid, procs)?;
    let m = mounts(pid);
    let mut problems = Vec::new();
    if fs::read_to_string(format!("/proc/{pid}/root{}/bound", dst.display()))
        .ok()
        .as_deref()
        != Some("1")
    {
        problems.push(format!(
            "{} does not show {}'s file again (auto external)",
            dst.display(),
            src.display()
        ));
    }
    if huge_fs && m.get(&s(&huge)).map(String::as_str) != Some("hugetlbfs") {
        problems.push(format!(
            "no hugetlbfs at {} after the restore ({m:?})",
            huge.display()
        ));
    }
    if m.contains_key(&skip_s) {
        problems.push(format!(
            "{skip_s} is a mount again, though --skip-mnt left it out"
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    check_restored(dir, pid, &before, procs)
}

fn inherit_fd(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.arg(cfg.workload("small_tree"))
        .arg(&dir.state)
        .current_dir(&dir.root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().context("spawn small_tree")?;
    let pid = Pid::from_raw(child.id() as i32);
    procs.track(pid);
    let mut out = child.stdout.take().context("the workload's stdout")?;
    case::wait_ready(dir, pid, procs)?;
    wait_until(Duration::from_secs(5), || procs::tree_settled(pid));
    let before = procs::tree_snapshot(pid)?;
    for p in before.keys() {
        procs.track(Pid::from_raw(*p));
    }
    let key = fs::read_link(format!("/proc/{pid}/fd/1"))?
        .to_string_lossy()
        .to_string();
    dump_with(cfg, dir, &[], pid, &before, procs)?;
    let inherit = format!("--inherit-fd=fd[3]:{key}");
    let to_pipe = crest::writing_to(3, out.as_raw_fd());
    restore_redirected(cfg, dir, &to_pipe, &[&inherit], pid, procs)?;
    let verdict = check_restored(dir, pid, &before, procs)?;
    let mut text = String::new();
    out.read_to_string(&mut text)?;
    if !(text.contains("before\n") && text.rfind("after\n") > text.find("before\n")) {
        bail!("the pipe carried {text:?}, expected \"before\" then \"after\"");
    }
    Ok(verdict)
}

fn status_fd(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    dump_with(cfg, dir, &[], pid, &before, procs)?;
    let (rd, wr) = nix::unistd::pipe().context("pipe")?;
    let to_pipe = crest::writing_to(5, wr.as_raw_fd());
    restore_redirected(cfg, dir, &to_pipe, &["--status-fd", "5"], pid, procs)?;
    drop(wr);
    nix::fcntl::fcntl(
        &rd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut got = Vec::new();
    let _ = fs::File::from(rd).read_to_end(&mut got);
    if got != [0] {
        bail!("the status fd carried {got:?}, expected one zero byte");
    }
    check_restored(dir, pid, &before, procs)
}

/// A dump run on a terminal (`script`) shows its progress line, the delay
/// before it set to nothing (this tree dumps in less than the second it
/// waits otherwise), and clears it at the end; the images then restore.
/// Off a terminal (every other case) nothing of it shows.
fn progress_on_terminal(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    let images = s(&dir.images);
    let line = format!(
        "exec '{}' dump -t {pid} -D '{images}' -o dump.log",
        cfg.crest.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &line, "/dev/null"])
        .env("CREST_PROGRESS_AFTER_MS", "0");
    let ran = crest::run(cmd, &dir.root, "dump-on-a-terminal", CREST_TIMEOUT, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest dump on a terminal (script)"));
    }
    let out = &ran.stdout;
    if !(out.contains("crest dump: ") && out.contains(" tasks, ") && out.ends_with("\r\x1b[K")) {
        bail!("crest dump on a terminal printed {out:?}, expected its progress line, cleared");
    }
    reap_dumped(pid, &before, procs)?;
    restore_with(cfg, dir, &[], pid, procs)?;
    check_restored(dir, pid, &before, procs)
}

fn action_script(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    let images = s(&dir.images);
    let log = dir.root.join("hooks.log");
    let script = write_script(dir, &log)?;
    dump_with(cfg, dir, &["--action-script", &script], pid, &before, procs)?;
    let dumped = read_hooks(&log)?;
    let _ = fs::remove_file(&log);
    restore_with(cfg, dir, &["--action-script", &script], pid, procs)?;
    let restored = read_hooks(&log)?;
    let check = |hooks: &[Hook], want: &[&str], with_pid: &[&str]| -> Result<()> {
        let names: Vec<&str> = hooks.iter().map(|h| h.action.as_str()).collect();
        if names != want {
            bail!("action script ran for {names:?}, expected {want:?}");
        }
        for h in hooks {
            if h.images != images {
                bail!(
                    "{}: CRTOOLS_IMAGE_DIR {:?}, expected {images}",
                    h.action,
                    h.images
                );
            }
            if let Some(p) = h.pid {
                if p != pid.as_raw() {
                    bail!(
                        "{}: CRTOOLS_INIT_PID {p}, expected the root {pid}",
                        h.action
                    );
                }
            } else if with_pid.contains(&h.action.as_str()) {
                bail!("{}: no CRTOOLS_INIT_PID", h.action);
            }
        }
        Ok(())
    };
    check(
        &dumped,
        &["pre-dump", "post-dump"],
        &["pre-dump", "post-dump"],
    )?;
    check(
        &restored,
        &[
            "pre-restore",
            "setup-namespaces",
            "post-setup-namespaces",
            "post-restore",
            "pre-resume",
            "post-resume",
        ],
        &["setup-namespaces", "post-restore"],
    )?;
    check_restored(dir, pid, &before, procs)
}

fn display_stats(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    let ran = dump_with(cfg, dir, &["--display-stats"], pid, &before, procs)?;
    if !ran.stdout.contains("Displaying dump stats") {
        bail!("dump --display-stats printed {:?}", ran.stdout);
    }
    let ran = restore_with(cfg, dir, &["--display-stats"], pid, procs)?;
    if !ran.stdout.contains("Displaying restore stats") {
        bail!("restore --display-stats printed {:?}", ran.stdout);
    }
    check_restored(dir, pid, &before, procs)
}

fn config(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, _) = start_tree(cfg, dir, procs)?;
    let (images, pid_s) = (s(&dir.images), pid.to_string());
    let conf = dir.root.join("criu.conf");
    fs::write(
        &conf,
        "# as CRIU reads it\nleave-running\nlog-file from-config.log\n",
    )?;
    let conf_s = s(&conf);
    crest_ok(
        cfg,
        dir,
        "dump",
        &["dump", "--config", &conf_s, "-t", &pid_s, "-D", &images],
        procs,
    )?;
    case::check_left_running(pid).context("--config FILE with leave-running")?;
    must_exist(&dir.images, &["from-config.log", "pstree.img"])?;
    crest_ok(
        cfg,
        dir,
        "dump-nodefault",
        &[
            "dump",
            "--no-default-config",
            "-t",
            &pid_s,
            "-D",
            &images,
            "-R",
            "-o",
            "d2.log",
        ],
        procs,
    )?;
    case::check_left_running(pid)?;
    let missing = s(&dir.root.join("missing.conf"));
    let ran = crest_run(
        cfg,
        dir,
        "dump-missing",
        &[
            "dump", "--config", &missing, "-t", &pid_s, "-D", &images, "-R",
        ],
        procs,
    )?;
    if ran.success() || !ran.stderr.contains(&missing) {
        bail!(
            "dump --config {missing} (missing): {} with stderr {:?}, expected a failure naming it",
            ran.exit,
            ran.stderr.trim()
        );
    }
    case::check_left_running(pid)?;
    case::finish(dir, pid, StdioKind::DevNull, procs)
}

fn check(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    // (memory tracking as the kernel allows it)
    let dirty = if crest_sys::misc::uffd_wp_async_supported()
        && crest_sys::misc::pagemap_scan_supported()
    {
        0
    } else {
        1
    };
    for (tag, args, code) in [
        ("check", &["check"][..], 0),
        (
            "check-clone3",
            &["check", "--feature", "clone3_set_tid"][..],
            0,
        ),
        (
            "check-dirty",
            &["check", "--feature", "mem_dirty_track"][..],
            dirty,
        ),
        ("check-all", &["check", "--all"][..], 0),
    ] {
        let ran = crest_run(cfg, dir, tag, args, procs)?;
        if ran.exit != procs::Exit::Code(code) {
            bail!(
                "crest {}: {} (expected exit {code}): {}",
                args.join(" "),
                ran.exit,
                ran.stderr.trim()
            );
        }
        if tag == "check" && !ran.stdout.contains("Looks good") {
            bail!("crest check printed {:?}", ran.stdout);
        }
    }
    Ok(Outcome::Pass)
}

fn version(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let ran = crest_ok(cfg, dir, "version", &["--version"], procs)?;
    if !ran.stdout.lines().any(|l| l.trim() == "Version: 4.2") {
        bail!(
            "--version printed {:?}, expected a line \"Version: 4.2\"",
            ran.stdout
        );
    }
    Ok(Outcome::Pass)
}

fn name_criu(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let bin = dir.root.join("bin");
    fs::create_dir_all(&bin)?;
    let criu = bin.join("criu");
    std::os::unix::fs::symlink(fs::canonicalize(&cfg.crest)?, &criu)?;
    let run = |tag: &str, args: &[&str], procs: &mut Procs| -> Result<Ran> {
        let mut cmd = Command::new(&criu);
        cmd.args(args);
        crest::run(cmd, &dir.root, tag, CREST_TIMEOUT, procs)
    };
    let ran = run("version", &["--version"], procs)?;
    if !ran.success() || !ran.stdout.contains("Version: 4.2") {
        bail!("criu --version: {} {:?}", ran.exit, ran.stdout);
    }
    let (pid, before) = start_tree(cfg, dir, procs)?;
    let (images, pid_s) = (s(&dir.images), pid.to_string());
    let ran = run(
        "dump",
        &["dump", "-t", &pid_s, "-D", &images, "-o", "dump.log", "-v4"],
        procs,
    )?;
    if !ran.success() {
        bail!(ran.failure("criu dump (a symlink named criu)"));
    }
    reap_dumped(pid, &before, procs)?;
    procs.track(pid);
    let ran = run(
        "restore",
        &["restore", "-D", &images, "-d", "-o", "restore.log"],
        procs,
    )?;
    if !ran.success() {
        bail!(ran.failure("criu restore -d (a symlink named criu)"));
    }
    check_restored(dir, pid, &before, procs)
}

fn refusals(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let (pid, before) = start_tree(cfg, dir, procs)?;
    let (images, pid_s) = (s(&dir.images), pid.to_string());
    for (tag, args, name) in [
        (
            "lazy",
            vec!["dump", "-t", &pid_s, "-D", &images, "--lazy-pages"],
            "--lazy-pages",
        ),
        (
            "dedup",
            vec!["restore", "-D", &images, "--auto-dedup"],
            "--auto-dedup",
        ),
        (
            "unknown",
            vec!["dump", "-t", &pid_s, "-D", &images, "--frobnicate"],
            "--frobnicate",
        ),
    ] {
        let ran = crest_run(cfg, dir, tag, &args, procs)?;
        if ran.exit != procs::Exit::Code(1) {
            bail!(
                "crest {}: {} (expected CRIU's exit code 1)",
                args.join(" "),
                ran.exit
            );
        }
        if !ran.stderr.contains(name) {
            bail!(
                "crest {}: stderr {:?} does not name {name}",
                args.join(" "),
                ran.stderr.trim()
            );
        }
        let problems = procs::tree_problems(pid);
        if !problems.is_empty() {
            bail!("after crest {}: {}", args.join(" "), problems.join("; "));
        }
    }
    let after = procs::tree_snapshot(pid)?;
    let diff = procs::tree_diff(&before, &after, "after the refusals");
    if !diff.is_empty() {
        bail!("the tree changed: {}", diff.join("; "));
    }
    case::finish(dir, pid, StdioKind::DevNull, procs)
}

/// A dump that fails (a pid that does not exist): exit code 1 and a line
/// with `Error (` in the log file.
fn failure_exit(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let images = s(&dir.images);
    let ran = crest_run(
        cfg,
        dir,
        "dump",
        &[
            "dump",
            "-t",
            "999999999",
            "-D",
            &images,
            "-o",
            "dump.log",
            "-v4",
        ],
        procs,
    );
    // (a pid above pid_max: no task can have it)
    let ran = ran?;
    if ran.exit != procs::Exit::Code(1) {
        bail!(
            "a failed dump ended with {}, expected CRIU's exit code 1",
            ran.exit
        );
    }
    let log = fs::read_to_string(dir.images.join("dump.log")).unwrap_or_default();
    if !log.lines().any(|l| l.contains("Error (")) {
        bail!("dump.log of a failed dump has no line with \"Error (\": {log:?}");
    }
    Ok(Outcome::Pass)
}
