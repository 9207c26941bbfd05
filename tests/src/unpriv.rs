//! Unprivileged mode (issue 15, CRIU's `--unprivileged`): a user dumps and
//! restores its own trees with a crest that holds only
//! CAP_CHECKPOINT_RESTORE (a copy given it with `setcap`), and crest never
//! lends the user more than the user holds.
//!
//! - `unprivileged_dump_restore`: workloads started as uid [`UID`] (threads,
//!   signal state, a tree of processes, sockets, and two rootless
//!   containers: `nsinit -R`, a user namespace of the user's own owning
//!   pid, mnt, uts, ipc and time namespaces) are dumped and restored by
//!   that uid with `--unprivileged`; the images are the user's, 0600; the
//!   kernel's outside view (ids and capabilities among it) is the same
//!   after, and each workload passes its own check;
//! - `unprivileged_forged_images_refused`: the images of such a dump edited
//!   (and their manifest rewritten, as an attacker would) to claim uid 0,
//!   every capability, or only the CAP_CHECKPOINT_RESTORE crest itself
//!   holds, and a container's whose user namespace is edited to map its
//!   root to uid 0: each restore is refused naming the file, no task is
//!   left, and the true images then restore;
//! - `unprivileged_dump_refuses_others`: crest raised by file capabilities
//!   that include CAP_SYS_PTRACE, and crest set-uid root, both run by the
//!   user: neither dumps a task of root's, which runs on untouched; the
//!   user's container with a net namespace (`nsinit -N`) is refused naming
//!   it and runs on.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crest_images::pb::CoreEntry;
use crest_images::{magic, manifest};
use nix::unistd::{Gid, Pid, Uid};

use crate::case::{self, CaseDir, Program, Settle, Workload};
use crate::crest::{self, CREST_TIMEOUT};
use crate::outside;
use crate::procs::{self, wait_exit, Procs, Waited};
use crate::suite::Report;
use crate::{Config, Outcome, StdioKind};

/// The user the cases act as (no passwd entry needed).
const UID: u32 = 4242;
const CAP_CHECKPOINT_RESTORE: u32 = 40;

pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    let cases: [(&str, case::DirCase); 3] = [
        ("unprivileged_dump_restore", dump_restore),
        ("unprivileged_forged_images_refused", forged),
        ("unprivileged_dump_refuses_others", refuses_others),
    ];
    for (name, f) in cases {
        let n = case::case_name(name, crate::Flavor::Host, None);
        if !selected(&n) {
            continue;
        }
        let outcome = if !cfg.root {
            Outcome::Skip("needs root (to make a capability-raised copy of crest)".into())
        } else if !cfg.checkpoint {
            Outcome::Skip("CREST_E2E_NOCHECKPOINT=1: no crest".into())
        } else if which("setcap").is_none() {
            Outcome::Skip("no setcap (Debian's libcap2-bin)".into())
        } else {
            case::run_in_dir(cfg, &n, |dir, procs| f(cfg, dir, procs))
        };
        report.record(&n, outcome);
    }
}

fn which(prog: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// A copy of crest in `dir`, given file capabilities `caps` (`setcap`
/// syntax, e.g. `cap_checkpoint_restore+ep`), or set-uid root if `caps`
/// is None.
fn raised_copy(cfg: &Config, dir: &Path, name: &str, caps: Option<&str>) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::copy(&cfg.crest, &path).with_context(|| format!("copy crest to {}", path.display()))?;
    let mode = if caps.is_some() { 0o755 } else { 0o4755 };
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    if let Some(caps) = caps {
        let setcap = which("setcap").context("no setcap")?;
        let out = Command::new(setcap).arg(caps).arg(&path).output()?;
        if !out.status.success() {
            bail!(
                "setcap {caps} {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(path)
}

/// A case directory of its own inside `dir`, the user's.
fn user_dir(dir: &CaseDir, name: &str) -> Result<CaseDir> {
    let sub = CaseDir::at(dir.root.join(name))?;
    for d in [&sub.root, &sub.state, &sub.images] {
        give_to_user(d)?;
    }
    Ok(sub)
}

fn give_to_user(p: &Path) -> Result<()> {
    nix::unistd::chown(p, Some(Uid::from_raw(UID)), Some(Gid::from_raw(UID)))
        .with_context(|| format!("chown {} to {UID}", p.display()))
}

/// `cmd` runs as the user, with no supplementary group.
fn as_user(cmd: &mut Command) -> &mut Command {
    cmd.uid(UID).gid(UID)
}

/// How a workload is started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// In crest's namespaces.
    Plain,
    /// Under `nsinit FLAG` (`-R`: a user namespace of the user's own, as
    /// `unshare -r` makes, owning pid, mount, uts, ipc and time
    /// namespaces; `-N`: a net namespace too).
    Container(&'static str),
}

/// A started workload: the root of its tree (dumped) and the workload
/// (told to check itself), the same task unless in a container.
struct Started {
    root: Pid,
    main: Pid,
    tree: procs::Tree,
    view: outside::View,
}

/// Starts `w` as the user (or as root), waits until it is ready and
/// settled.
fn start(
    cfg: &Config,
    dir: &CaseDir,
    w: &Workload,
    (user, shape): (bool, Shape),
    procs: &mut Procs,
) -> Result<Started> {
    let Program::C(prog) = w.program else {
        bail!("only compiled workloads here");
    };
    let mut cmd = Command::new(cfg.workload("launch"));
    if let Shape::Container(flag) = shape {
        cmd.arg(cfg.workload("nsinit"))
            .arg(flag)
            .arg(crate::ns::HOSTNAME)
            .arg(crate::ns::MONOTONIC_OFFSET.to_string())
            .arg(crate::ns::BOOTTIME_OFFSET.to_string());
    }
    cmd.arg(cfg.workload(prog))
        .arg(&dir.state)
        .args(&w.args)
        .current_dir(&dir.root)
        .stdin(Stdio::null());
    if user {
        as_user(&mut cmd);
    }
    case::set_stdio(&mut cmd, dir, StdioKind::LogFile)?;
    if user {
        // (the restore reopens it as the user)
        give_to_user(&dir.root.join("out.log"))?;
    }
    let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let root = Pid::from_raw(child.id() as i32);
    procs.track(root);
    let main = match shape {
        Shape::Plain => {
            case::wait_ready(dir, root, procs)?;
            root
        }
        Shape::Container(_) => crate::ns::wait_ready(dir, root, procs)?,
    };
    settle(w, root);
    let tree = procs::tree_snapshot(root).context("process tree before the dump")?;
    let view = outside::snapshot(&tree);
    Ok(Started {
        root,
        main,
        tree,
        view,
    })
}

/// Waits until the tree of `root` sleeps where it sleeps (which shows the
/// temporary masks of the syscalls it sleeps in).
fn settle(w: &Workload, root: Pid) {
    match w.settle {
        Settle::Blocked => {
            procs::wait_until(Duration::from_secs(5), || procs::tree_settled(root));
        }
        _ => std::thread::sleep(Duration::from_millis(200)),
    }
}

/// `crest dump --unprivileged` (with `-R` if `leave`) by `crest_bin` as
/// the user.
fn dump(
    crest_bin: &Path,
    dir: &CaseDir,
    pid: Pid,
    leave: bool,
    procs: &mut Procs,
) -> Result<crest::Ran> {
    let mut cmd = case::dump_command(crest_bin, dir, pid, leave);
    as_user(cmd.arg("--unprivileged"));
    crest::run(cmd, &dir.root, "dump", CREST_TIMEOUT, procs)
}

/// `crest restore --unprivileged -d` by `crest_bin` as the user.
fn restore(crest_bin: &Path, dir: &CaseDir, procs: &mut Procs) -> Result<crest::Ran> {
    let (mut cmd, _) = case::restore_command(crest_bin, dir);
    as_user(cmd.arg("--unprivileged"));
    crest::run(cmd, &dir.root, "restore", CREST_TIMEOUT, procs)
}

/// After a dump without `-R`: the tree's processes are gone and reaped.
fn wait_dumped(pid: Pid, tree: &procs::Tree, procs: &mut Procs) -> Result<()> {
    match wait_exit(pid, Duration::from_secs(10))? {
        Waited::Exited(_) => procs.untrack(pid),
        other => bail!("pid {pid} after the dump: {other:?}"),
    }
    for &p in tree.keys().filter(|&&p| p != pid.as_raw()) {
        procs::reap_or_wait_gone(Pid::from_raw(p));
    }
    procs::reap_zombie_children();
    Ok(())
}

/// Every image file is the user's and mode 0600.
fn check_images_private(images: &Path) -> Result<()> {
    for e in fs::read_dir(images)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if !(name.ends_with(".img") || name == manifest::MANIFEST) {
            continue;
        }
        let m = e.metadata()?;
        if m.uid() != UID || m.mode() & 0o777 != 0o600 {
            bail!(
                "image {name} is uid {} mode {:o}, expected the user's ({UID}) and 0600",
                m.uid(),
                m.mode() & 0o777
            );
        }
    }
    Ok(())
}

const WORKLOADS: [(&str, &str, &[&str], Settle, Shape); 6] = [
    (
        "threads_busy",
        "threads_busy",
        &[],
        Settle::Spinning,
        Shape::Plain,
    ),
    ("signals", "signals", &[], Settle::Blocked, Shape::Plain),
    (
        "small_tree",
        "small_tree",
        &[],
        Settle::Blocked,
        Shape::Plain,
    ),
    ("sockets", "sockets", &[], Settle::Blocked, Shape::Plain),
    // a rootless container: its own user namespace owning the others
    (
        "container_sock_fork",
        "sock_fork",
        &[],
        Settle::Blocked,
        Shape::Container("-R"),
    ),
    (
        "container_threads",
        "threads_busy",
        &[],
        Settle::Spinning,
        Shape::Container("-R"),
    ),
];

fn dump_restore(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let crest_bin = raised_copy(cfg, &dir.root, "crest", Some("cap_checkpoint_restore+ep"))?;
    for (name, prog, args, settle, shape) in WORKLOADS {
        let w = Workload {
            name,
            program: Program::C(prog),
            args: args.iter().map(|a| a.to_string()).collect(),
            settle,
        };
        one_round_trip(&crest_bin, cfg, dir, (&w, shape), procs).context(name)?;
    }
    Ok(Outcome::Pass)
}

fn one_round_trip(
    crest_bin: &Path,
    cfg: &Config,
    dir: &CaseDir,
    (w, shape): (&Workload, Shape),
    procs: &mut Procs,
) -> Result<()> {
    let sub = user_dir(dir, w.name)?;
    let s = start(cfg, &sub, w, (true, shape), procs)?;
    let pid = s.root;
    let ran = dump(crest_bin, &sub, pid, false, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest dump --unprivileged by the user"));
    }
    wait_dumped(pid, &s.tree, procs)?;
    check_images_private(&sub.images)?;
    procs.track(pid);
    let ran = restore(crest_bin, &sub, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest restore --unprivileged by the user"));
    }
    if !procs::alive(pid) {
        bail!("pid {pid} is not running after the restore");
    }
    settle(w, pid);
    let problems = case::check_outside(&sub, pid, &s.view, "after the unprivileged restore");
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    if s.main != pid {
        procs.track(s.main);
        let ids = crate::ns::nspid(s.main);
        if ids != Some(vec![s.main.as_raw(), 1]) {
            bail!(
                "the container's workload (pid {}) has NSpid {ids:?} after the restore",
                s.main
            );
        }
    }
    match case::finish_tree(&sub, s.main, pid, StdioKind::LogFile, procs)? {
        Outcome::Pass => Ok(()),
        other => bail!("the workload's own check after the restore: {other:?}"),
    }
}

/// Rewrites the leader's core image with `edit` applied to its creds, and
/// the manifest, as someone forging images would; every file the user's.
fn forge(
    images: &Path,
    core: &str,
    edit: &dyn Fn(&mut crest_images::pb::CredsEntry),
) -> Result<()> {
    let mut entries: Vec<CoreEntry> = crest_images::read_image(images, core, magic::CORE)?;
    let creds = entries
        .first_mut()
        .and_then(|e| e.thread_core.as_mut())
        .and_then(|t| t.creds.as_mut())
        .context("no creds in the core image")?;
    edit(creds);
    fs::remove_file(images.join(core))?;
    crest_images::write_image(images, core, magic::CORE, &entries)?;
    manifest::write(images)?;
    for e in fs::read_dir(images)? {
        give_to_user(&e?.path())?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to)?;
    give_to_user(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        fs::copy(e.path(), &dst)?;
        give_to_user(&dst)?;
    }
    Ok(())
}

fn forged(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let crest_bin = raised_copy(cfg, &dir.root, "crest", Some("cap_checkpoint_restore+ep"))?;
    let w = Workload {
        name: "forged",
        program: Program::C("threads_busy"),
        args: Vec::new(),
        settle: Settle::Spinning,
    };
    let sub = user_dir(dir, w.name)?;
    let s = start(cfg, &sub, &w, (true, Shape::Plain), procs)?;
    let pid = s.root;
    let ran = dump(&crest_bin, &sub, pid, false, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest dump --unprivileged by the user"));
    }
    wait_dumped(pid, &s.tree, procs)?;
    let pristine = sub.root.join("pristine");
    copy_dir(&sub.images, &pristine)?;
    let core = format!("core-{pid}.img");
    let all_caps = |c: &mut crest_images::pb::CredsEntry, set: u64| {
        let w = vec![set as u32, (set >> 32) as u32];
        c.cap_prm = w.clone();
        c.cap_eff = w;
    };
    type Edit = Box<dyn Fn(&mut crest_images::pb::CredsEntry)>;
    let forgeries: [(&str, Edit, &str); 3] = [
        (
            "uid 0",
            Box::new(|c| {
                for id in [
                    &mut c.uid,
                    &mut c.euid,
                    &mut c.suid,
                    &mut c.fsuid,
                    &mut c.gid,
                    &mut c.egid,
                    &mut c.sgid,
                    &mut c.fsgid,
                ] {
                    *id = 0;
                }
            }),
            "uids [0, 0, 0, 0]",
        ),
        (
            "every capability",
            Box::new(move |c| all_caps(c, (1u64 << 41) - 1)),
            "CAP_SYS_ADMIN",
        ),
        (
            "CAP_CHECKPOINT_RESTORE",
            Box::new(move |c| all_caps(c, 1u64 << CAP_CHECKPOINT_RESTORE)),
            "CAP_CHECKPOINT_RESTORE",
        ),
    ];
    for (what, edit, says) in &forgeries {
        copy_dir(&pristine, &sub.images)?;
        forge(&sub.images, &core, edit.as_ref()).with_context(|| format!("forge {what}"))?;
        let ran = restore(&crest_bin, &sub, procs)?;
        if ran.success()
            || !ran.stderr.contains(&core)
            || !ran.stderr.contains(says)
            || !ran.stderr.contains("does not hold")
        {
            bail!(ran.failure(&format!(
                "crest restore of images forged to claim {what} (expected a refusal naming \
                 {core} and {says})"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
        if procs::exists(pid) {
            bail!("pid {pid} exists after the refused restore of images claiming {what}");
        }
    }
    copy_dir(&pristine, &sub.images)?;
    procs.track(pid);
    let ran = restore(&crest_bin, &sub, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest restore of the true images"));
    }
    match case::finish(&sub, pid, StdioKind::LogFile, procs)? {
        Outcome::Pass => {}
        other => bail!("the workload's own check after the restore: {other:?}"),
    }
    forged_userns(&crest_bin, cfg, dir, procs)?;
    Ok(Outcome::Pass)
}

/// A rootless container's images whose user namespace is edited to map
/// its root to uid 0 outside: refused naming the namespace's image.
fn forged_userns(crest_bin: &Path, cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<()> {
    use crest_images::pb::UsernsEntry;
    let w = Workload {
        name: "forged_userns",
        program: Program::C("signals"),
        args: Vec::new(),
        settle: Settle::Blocked,
    };
    let sub = user_dir(dir, w.name)?;
    let s = start(cfg, &sub, &w, (true, Shape::Container("-R")), procs)?;
    let ran = dump(crest_bin, &sub, s.root, false, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest dump --unprivileged of a rootless container"));
    }
    wait_dumped(s.root, &s.tree, procs)?;
    let mut edited = Vec::new();
    for e in fs::read_dir(&sub.images)? {
        let name = e?.file_name().to_string_lossy().to_string();
        if !(name.starts_with("userns-") && name.ends_with(".img")) {
            continue;
        }
        let mut entries: Vec<UsernsEntry> =
            crest_images::read_image(&sub.images, &name, magic::USERNS)?;
        let Some(u) = entries.first_mut().filter(|u| !u.uid_map.is_empty()) else {
            continue;
        };
        for m in &mut u.uid_map {
            m.lower_first = 0;
        }
        fs::remove_file(sub.images.join(&name))?;
        crest_images::write_image(&sub.images, &name, magic::USERNS, &entries)?;
        edited.push(name);
    }
    let [name] = &edited[..] else {
        bail!("expected one user namespace with maps in the images, found {edited:?}");
    };
    manifest::write(&sub.images)?;
    for e in fs::read_dir(&sub.images)? {
        give_to_user(&e?.path())?;
    }
    let ran = restore(crest_bin, &sub, procs)?;
    if ran.success() || !ran.stderr.contains(name.as_str()) || !ran.stderr.contains("uids 0-0") {
        bail!(ran.failure(&format!(
            "crest restore of a container whose {name} maps root to uid 0 (expected a refusal \
             naming it)"
        )));
    }
    std::thread::sleep(Duration::from_millis(100));
    for p in s.tree.keys() {
        if procs::exists(Pid::from_raw(*p)) {
            bail!("pid {p} exists after the refused restore of a forged user namespace");
        }
    }
    Ok(())
}

fn refuses_others(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let w = Workload {
        name: "root_task",
        program: Program::C("signals"),
        args: Vec::new(),
        settle: Settle::Blocked,
    };
    // root's task, in a directory the user may write its images to
    let sub = user_dir(dir, w.name)?;
    let s = start(cfg, &sub, &w, (false, Shape::Plain), procs)?;
    let (pid, before) = (s.root, s.view);
    let copies = [
        (
            "file capabilities with CAP_SYS_PTRACE",
            raised_copy(
                cfg,
                &dir.root,
                "crest-ptrace",
                Some("cap_checkpoint_restore,cap_sys_ptrace+ep"),
            )?,
        ),
        (
            "set-uid root",
            raised_copy(cfg, &dir.root, "crest-suid", None)?,
        ),
    ];
    for (how, bin) in &copies {
        let ran = dump(bin, &sub, pid, true, procs)?;
        if ran.success() || !ran.stderr.contains("may not trace it") {
            bail!(ran.failure(&format!(
                "crest raised by {how}, run by uid {UID}, on pid {pid} of root's (expected a \
                 refusal saying the caller may not trace it)"
            )));
        }
        let problems = case::check_outside(&sub, pid, &before, &format!("after crest ({how})"));
        if !problems.is_empty() {
            bail!("{}", problems.join("\n"));
        }
        case::check_left_running(pid)?;
        if fs::read_dir(&sub.images)?
            .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("pages-")))
        {
            bail!("crest ({how}) refused, but wrote pages of root's task");
        }
    }
    match case::finish(&sub, pid, StdioKind::LogFile, procs)? {
        Outcome::Pass => {}
        other => bail!("root's task's own check: {other:?}"),
    }
    // the user's own container with a net namespace: crest cannot read
    // one unprivileged, and says so; the container runs on
    let w = Workload {
        name: "container_net",
        program: Program::C("signals"),
        args: Vec::new(),
        settle: Settle::Blocked,
    };
    let sub = user_dir(dir, w.name)?;
    let crest_bin = raised_copy(cfg, &dir.root, "crest", Some("cap_checkpoint_restore+ep"))?;
    let s = start(cfg, &sub, &w, (true, Shape::Container("-N")), procs)?;
    let ran = dump(&crest_bin, &sub, s.root, true, procs)?;
    if ran.success() || !ran.stderr.contains("net namespace") {
        bail!(ran.failure(
            "crest dump --unprivileged of a container with a net namespace (expected a refusal \
             naming it)"
        ));
    }
    case::check_left_running(s.root)?;
    let problems = case::check_outside(&sub, s.root, &s.view, "after the refused dump");
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    match case::finish_tree(&sub, s.main, s.root, StdioKind::LogFile, procs)? {
        Outcome::Pass => Ok(Outcome::Pass),
        other => bail!("the container's own check after the refused dump: {other:?}"),
    }
}
