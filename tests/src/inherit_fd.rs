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
//!
//! `external_namespaces`: a container that shares the pid and net
//! namespaces of another, as runc makes one whose config.json gives those
//! namespaces a path (runc then passes `external pid[INO]:extRootPidNS`
//! and `net[INO]:extRootNetNS`). The holder is `unshare -p -n -f` running
//! an init that reaps (SIGCHLD ignored); `small_tree` is started inside
//! with `nsenter -p -n`, so its root is pid 42-ish there, not pid 1. A dump
//! without `--external` is refused naming the option, the tree running
//! on; with `--external pid[INO]:extpid --external net[INO]:extnet` it is
//! dumped; a restore without the fds is refused naming the key, leaving no
//! task in the holder's namespace; with `--inherit-fd fd[3]:extpid
//! --inherit-fd fd[4]:extnet` the tree comes back inside the holder's
//! namespaces with every pid it had there, and runs its own check.
//!
//! `join_userns`: CRIU's `--join-ns user:PID` (runc's `join_ns` for a
//! container whose user namespace has a path). A container (`nsinit -U`,
//! its own user namespace mapping every id to itself, owning its other
//! namespaces) running `small_tree` is dumped; a restore joining a user
//! namespace with other maps (`nsinit -S`'s) is refused naming the maps,
//! leaving no task; one joining a namespace with the same maps (another
//! `nsinit -U`) brings the tree back inside that very namespace, its other
//! namespaces made below it, and the workload checks itself.
//!
//! `unix_stream_inherit`: CRIU's `--ext-unix-sk=INO` for a stream socket
//! connected outside the tree. `small_tree` runs with its stdin one end of
//! a socketpair the harness holds the other end of. A dump without the
//! option is refused naming `--ext-unix-sk=INO`, the tree running on; with
//! it the tree is dumped; a restore without a socket for it is refused
//! naming `socket:[INO]`, leaving no task; with `--inherit-fd
//! fd[3]:socket:[INO]` (crest's fd 3 a socket connected to the harness) every
//! task's fd 0 is that very socket, and the workload checks itself.

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

const CASES: [(&str, DirCase); 4] = [
    ("pipe_inherit_fd", pipe_inherit_fd),
    ("external_namespaces", external_namespaces),
    ("join_userns", join_userns),
    ("unix_stream_inherit", unix_stream_inherit),
];

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
    let restore = crest::command_with(
        &cfg.crest,
        &crest::writing_to(3, out.as_raw_fd()),
        &[
            "restore",
            "-D",
            &images,
            "-d",
            "--pidfile",
            &pidfile,
            "-o",
            "restore-inherit.log",
            "-v4",
            "--inherit-fd",
            &inherit,
        ],
    );
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

/// The holder's init: pid 1 of the shared namespaces, reaping every orphan
/// (SIGCHLD ignored) so the dumped tree's pids are freed there.
const HOLDER_INIT: &str =
    "import signal,time; signal.signal(signal.SIGCHLD, signal.SIG_IGN); time.sleep(100000)";

/// Every pid in /proc.
fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid`'s `SigIgn` holds SIGCHLD.
fn ignores_sigchld(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("SigIgn:"))?.trim();
            u64::from_str_radix(hex, 16).ok()
        })
        .is_some_and(|m| m & (1 << (libc::SIGCHLD - 1)) != 0)
}

/// The tasks other than `init` in `init`'s pid namespace, each with its
/// `/proc/PID/stat` head (comm, state, ppid), for a failure message.
fn left_in(init: Pid) -> String {
    let ns = |p: i32| fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let theirs = ns(init.as_raw());
    all_pids()
        .into_iter()
        .filter(|p| *p != init.as_raw() && ns(*p) == theirs)
        .map(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let head: Vec<&str> = stat.split_whitespace().take(4).collect();
            format!("[{}]", head.join(" "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn in_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// The inside ids (last `NSpid` field) of `root` and its descendants,
/// sorted, and the crest-level pids.
fn inner_pids(root: Pid) -> Result<(Vec<i32>, Vec<i32>)> {
    let tree = procs::tree_snapshot(root)?;
    let mut inner = Vec::new();
    for pid in tree.keys() {
        let ids =
            crate::ns::nspid(Pid::from_raw(*pid)).with_context(|| format!("NSpid of pid {pid}"))?;
        inner.push(*ids.last().context("an empty NSpid")?);
    }
    inner.sort_unstable();
    Ok((inner, tree.keys().copied().collect()))
}

fn external_namespaces(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    for bin in ["unshare", "nsenter", "python3"] {
        if !in_path(bin) {
            return Ok(Outcome::Skip(format!("{bin} is not installed")));
        }
    }
    let holder = Command::new("unshare")
        .args([
            "-p",
            "-n",
            "-f",
            "--kill-child",
            "python3",
            "-c",
            HOLDER_INIT,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn the holder (unshare -p -n -f)")?;
    let holder = Pid::from_raw(holder.id() as i32);
    procs.track(holder);
    let mut init = None;
    // (ready once python ignores SIGCHLD: the tree's orphans, reparented
    // to it, would stay zombies in its namespace before that)
    wait_until(Duration::from_secs(10), || {
        init = crate::containers::only_child(holder).ok().filter(|c| {
            crate::ns::nspid(*c).is_some_and(|v| v.last() == Some(&1)) && ignores_sigchld(*c)
        });
        init.is_some()
    });
    let init = init
        .context("the holder's init (pid 1 of its namespaces, ignoring SIGCHLD) did not appear")?;
    procs.track(init);
    let ns_link = |p: Pid, kind: &str| fs::read_link(format!("/proc/{p}/ns/{kind}"));
    let ino = |kind: &str| -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(fs::metadata(format!("/proc/{init}/ns/{kind}"))?.ino())
    };
    let (pid_ino, net_ino) = (ino("pid")?, ino("net")?);

    let entered = Command::new("nsenter")
        .args(["-t", &init.to_string(), "-p", "-n", "--"])
        .arg(cfg.workload("launch"))
        .arg(cfg.workload("small_tree"))
        .arg(&dir.state)
        .current_dir(&dir.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn nsenter -p -n small_tree")?;
    let entered = Pid::from_raw(entered.id() as i32);
    procs.track(entered);
    // (the ready file names the root's pid inside)
    if !wait_until(Duration::from_secs(10), || dir.state.join("ready").exists()) {
        bail!("small_tree inside the holder's namespaces was not ready after 10 s");
    }
    let root = crate::containers::only_child(entered)?;
    procs.track(root);
    let (inner_before, _) = inner_pids(root)?;
    if inner_before.first() == Some(&1) {
        bail!("the workload's root is pid 1 inside the holder's namespace");
    }

    // the root's pid namespace has its init outside the tree
    let ran = crest::run(
        case::dump_command(&cfg.crest, dir, root, false),
        &dir.root,
        "dump-refused",
        CREST_TIMEOUT,
        procs,
    )?;
    if ran.success() {
        bail!("crest dumped a tree whose pid namespace's init is outside it, without --external");
    }
    if !ran.stderr.contains("--external pid[") {
        bail!(ran.failure("crest dump (expected a refusal naming --external pid[INODE]:KEY)"));
    }
    if !alive(root) {
        bail!("the refused dump harmed the tree: pid {root} is gone");
    }

    let mut dump = case::dump_command(&cfg.crest, dir, root, false);
    dump.args([
        format!("--external=pid[{pid_ino}]:extpid"),
        format!("--external=net[{net_ino}]:extnet"),
    ]);
    let ran = crest::run(dump, &dir.root, "dump", CREST_TIMEOUT, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest dump --external pid[..] --external net[..]"));
    }
    // nsenter reaps the root; the init inside reaps the rest
    if !matches!(
        procs::wait_exit(entered, Duration::from_secs(10))?,
        procs::Waited::Exited(_)
    ) {
        bail!("nsenter (pid {entered}) did not end after the dump killed its child");
    }
    procs.untrack(entered);
    procs.untrack(root);
    let gone = || {
        all_pids()
            .into_iter()
            .filter(|p| *p != init.as_raw())
            .all(|p| ns_link(Pid::from_raw(p), "pid").ok() != ns_link(init, "pid").ok())
    };
    if !wait_until(Duration::from_secs(5), gone) {
        bail!(
            "tasks of the dumped tree are left in the holder's pid namespace: {}",
            left_in(init)
        );
    }
    crate::crit::require(dir, procs)?;

    let images = dir.images.to_string_lossy().to_string();
    let pidfile = dir.root.join("restore.pid");
    let restore = |tag: &str, fds: bool| {
        let mut cmd = Command::new("sh");
        let redirect = if fds {
            format!("3</proc/{init}/ns/pid 4</proc/{init}/ns/net")
        } else {
            String::new()
        };
        cmd.arg("-c")
            .arg(format!("exec \"$0\" \"$@\" {redirect}"))
            .arg(&cfg.crest)
            .args(["restore", "-D", &images, "-d", "--pidfile"])
            .arg(&pidfile)
            .args(["-o", &format!("{tag}.log"), "-v4"]);
        if fds {
            cmd.args([
                "--inherit-fd",
                "fd[3]:extpid",
                "--inherit-fd",
                "fd[4]:extnet",
            ]);
        }
        cmd
    };
    let ran = crest::run(
        restore("restore-refused", false),
        &dir.root,
        "restore-refused",
        CREST_TIMEOUT,
        procs,
    )?;
    if ran.success() {
        bail!("crest restored into an external pid namespace it was given no fd of");
    }
    if !(ran.stderr.contains("extpid") && ran.stderr.contains("--inherit-fd")) {
        bail!(ran.failure("crest restore (expected a refusal naming extpid and --inherit-fd)"));
    }
    if !wait_until(Duration::from_secs(5), gone) {
        bail!(
            "the refused restore left tasks in the holder's pid namespace: {}",
            left_in(init)
        );
    }

    let ran = crest::run(
        restore("restore", true),
        &dir.root,
        "restore",
        CREST_TIMEOUT,
        procs,
    )?;
    if !ran.success() {
        bail!(ran.failure("crest restore --inherit-fd fd[3]:extpid --inherit-fd fd[4]:extnet"));
    }
    let new: i32 = fs::read_to_string(&pidfile)
        .context("read the pidfile")?
        .trim()
        .parse()
        .context("parse the pidfile")?;
    let new = Pid::from_raw(new);
    procs.track(new);
    let (inner_after, outer) = inner_pids(new)?;
    for p in outer {
        for kind in ["pid", "net"] {
            let (theirs, holders) = (ns_link(Pid::from_raw(p), kind)?, ns_link(init, kind)?);
            if theirs != holders {
                bail!("restored pid {p} is in {theirs:?}, not the holder's {holders:?}");
            }
        }
    }
    if inner_after != inner_before {
        bail!("the pids inside the holder's namespace were {inner_before:?}, now {inner_after:?}");
    }
    let verdict = case::finish(dir, new, StdioKind::DevNull, procs)?;
    procs::reap_zombie_children();
    Ok(verdict)
}

/// `nsinit FLAG holder 0 0 /bin/sleep 100000`: a user namespace (with the
/// maps FLAG gives) held by a sleeping init; returns nsinit's pid (the
/// namespace's) after tracking it and its child.
fn userns_holder(cfg: &Config, flag: &str, procs: &mut Procs) -> Result<Pid> {
    let child = Command::new(cfg.workload("nsinit"))
        .args([flag, "holder", "0", "0", "/bin/sleep", "100000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn nsinit {flag} (a holder)"))?;
    let pid = Pid::from_raw(child.id() as i32);
    procs.track(pid);
    let mut init = None;
    wait_until(Duration::from_secs(5), || {
        // (not nsinit's short-lived map writer: the init of its pid
        // namespace)
        init = crate::containers::only_child(pid)
            .ok()
            .filter(|c| crate::ns::nspid(*c).is_some_and(|v| v.last() == Some(&1)));
        init.is_some()
    });
    procs.track(init.with_context(|| format!("the holder nsinit {flag} has no child"))?);
    Ok(pid)
}

fn join_userns(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let same = userns_holder(cfg, "-U", procs)?;
    let other = userns_holder(cfg, "-S", procs)?;
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.arg(cfg.workload("nsinit"))
        .args(["-U", crate::ns::HOSTNAME, "3600", "7200"])
        .arg(cfg.workload("small_tree"))
        .arg(&dir.state)
        .current_dir(&dir.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let root = Pid::from_raw(cmd.spawn().context("spawn nsinit -U small_tree")?.id() as i32);
    procs.track(root);
    let main = crate::ns::wait_ready(dir, root, procs)?;
    case::dump(cfg, dir, root, false, procs)?;

    let user_of = |p: Pid| fs::read_link(format!("/proc/{p}/ns/user"));
    fs::write(
        dir.state.join("restore-args"),
        format!("--join-ns user:{other}\n"),
    )?;
    let (ran, _) = case::run_restore_detached(cfg, dir, procs)?;
    if ran.success() {
        bail!("crest joined a user namespace that maps ids otherwise than the dumped one");
    }
    if !(ran.stderr.contains("--join-ns user:") && ran.stderr.contains("maps")) {
        bail!(ran.failure("crest restore (expected a refusal naming --join-ns user and the maps)"));
    }
    if !wait_until(Duration::from_secs(5), || !exists(root)) {
        bail!("pid {root} exists after the refused restore");
    }

    fs::write(
        dir.state.join("restore-args"),
        format!("--join-ns user:/proc/{same}/ns/user\n"),
    )?;
    let (ran, _) = case::run_restore_detached(cfg, dir, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest restore --join-ns user:FILE"));
    }
    procs.track(root);
    for p in [root, main] {
        let (theirs, want) = (user_of(p)?, user_of(same)?);
        if theirs != want {
            bail!("restored pid {p} is in {theirs:?}, not the joined {want:?}");
        }
    }
    let verdict = case::finish_tree(dir, main, root, StdioKind::DevNull, procs)?;
    procs::reap_zombie_children();
    Ok(verdict)
}

/// Connects a unix stream socket to `argv[1]`, makes it fd 3, writes its
/// inode to `argv[2]` and execs the rest: crest with a socket from its
/// caller.
const CONNECT_FD3: &str = "import os,socket,sys
s=socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
os.dup2(s.fileno(),3)
os.set_inheritable(3,True)
open(sys.argv[2],'w').write(str(os.fstat(3).st_ino))
os.execv(sys.argv[3],sys.argv[3:])";

fn unix_stream_inherit(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    use std::os::unix::net::{UnixListener, UnixStream};
    if !in_path("python3") {
        return Ok(Outcome::Skip("python3 is not installed".into()));
    }
    let (_ours, theirs) = UnixStream::pair().context("socketpair")?;
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.arg(cfg.workload("small_tree"))
        .arg(&dir.state)
        .current_dir(&dir.root)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = Pid::from_raw(cmd.spawn().context("spawn small_tree")?.id() as i32);
    drop(cmd);
    procs.track(pid);
    case::wait_ready(dir, pid, procs)?;
    let link =
        |p: Pid| fs::read_link(format!("/proc/{p}/fd/0")).map(|l| l.to_string_lossy().to_string());
    let key = link(pid)?;
    let ino = key
        .strip_prefix("socket:[")
        .and_then(|r| r.strip_suffix(']'))
        .with_context(|| format!("the workload's stdin is {key}, not a socket"))?
        .to_string();
    let holders: Vec<Pid> = procs::tree_snapshot(pid)?
        .keys()
        .map(|p| Pid::from_raw(*p))
        .filter(|p| link(*p).ok().as_deref() == Some(key.as_str()))
        .collect();

    let ran = case::run_dump(cfg, dir, pid, false, procs)?;
    if ran.success() {
        bail!("crest dumped a stream socket connected outside the tree without --ext-unix-sk");
    }
    if !ran.stderr.contains(&format!("--ext-unix-sk={ino}")) {
        bail!(ran.failure("crest dump (expected a refusal naming --ext-unix-sk=INO)"));
    }
    if !alive(pid) {
        bail!("the refused dump harmed the tree: pid {pid} is gone");
    }
    fs::write(
        dir.state.join("dump-args"),
        format!("--ext-unix-sk={ino}\n"),
    )?;
    case::dump(cfg, dir, pid, false, procs)?;

    let (ran, _) = case::run_restore_detached(cfg, dir, procs)?;
    if ran.success() {
        bail!("crest restored a socket connected outside the tree with no socket given for it");
    }
    if !(ran.stderr.contains(&key) && ran.stderr.contains("--inherit-fd")) {
        bail!(ran.failure(&format!(
            "crest restore (expected a refusal naming {key} and --inherit-fd)"
        )));
    }
    if !wait_until(Duration::from_secs(5), || !exists(pid)) {
        bail!("pid {pid} exists after the refused restore");
    }

    let path = dir.root.join("outside.sock");
    let listener = UnixListener::bind(&path).context("bind the harness's socket")?;
    let ino_file = dir.root.join("given.ino");
    let (restore, pidfile) = case::restore_command(&cfg.crest, dir);
    let mut cmd = Command::new("python3");
    cmd.args(["-c", CONNECT_FD3])
        .arg(&path)
        .arg(&ino_file)
        .arg(restore.get_program())
        .args(restore.get_args())
        .args(["--inherit-fd", &format!("fd[3]:{key}")]);
    let ran = crest::run(cmd, &dir.root, "restore-inherit", CREST_TIMEOUT, procs)?;
    if !ran.success() {
        bail!(ran.failure(&format!("crest restore --inherit-fd fd[3]:{key}")));
    }
    let (_accepted, _) = listener.accept().context("accept crest's connection")?;
    let given = fs::read_to_string(&ino_file).context("read the given socket's inode")?;
    let want = format!("socket:[{}]", given.trim());
    let new = procs::read_pid_file(&pidfile)?;
    if new != pid {
        bail!("the pidfile names {new}, not {pid}");
    }
    procs.track(pid);
    for p in &holders {
        let now = link(*p)?;
        if now != want {
            bail!("pid {p}'s fd 0 is {now} after the restore, not the given {want}");
        }
    }
    let verdict = case::finish(dir, pid, StdioKind::DevNull, procs)?;
    procs::reap_zombie_children();
    Ok(verdict)
}
