//! Cgroup settings (`--manage-cgroups`, issue 12): `small_tree` runs in
//! cgroups of its own on every v1 hierarchy this machine has among pids,
//! memory, cpu and cpuset, and on the unified one, with settings changed
//! from their defaults, a directory below with settings of its own, and
//! an owner and mode changed; after a dump the harness compares what the
//! kernel shows of those cgroups before and after the restore.
//!
//! - `cgroup_settings_soft`: the cgroups are removed after the dump; a
//!   restore with `--manage-cgroups` (soft) makes them again with their
//!   settings, the directory below included, and the tasks are back in
//!   them;
//! - `cgroup_settings_full`: the cgroups stay but their settings change;
//!   `--manage-cgroups=full` sets them back;
//! - `cgroup_modes`: a dump whose `--cgroup-props` drops the pids
//!   controller's settings; `strict` refuses cgroups that exist, leaving no
//!   task; `soft` leaves settings of cgroups that exist as they are;
//!   `none` and `props` refuse cgroups that do not exist; `full` makes
//!   them, with the settings recorded (and `pids.max` at its default);
//! - `cgroup_tasks_apart`: the root in the case's cgroup, its child in the
//!   directory below, its grandchild in a cgroup beside the case's with
//!   settings of its own; all removed after the dump; the restore puts
//!   each task back in its own, made again with their settings;
//! - `cgroup_unmounted_hierarchy`: the tree in a named v1 hierarchy that
//!   nobody has mounted at dump (its cgroups keep it alive) and that is
//!   gone at restore: crest mounts it in a helper of its own both times
//!   (CRIU's yard), the cgroups come back with their settings, and no
//!   mount or helper is left.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, DirCase};
use crate::criu_cli::{check_restored, crest_run, dump_ok, restore_ok, s, start_tree};
use crate::procs::{self, alive, Procs};
use crate::suite::Report;
use crate::{Config, Outcome};

const CASES: [(&str, DirCase); 5] = [
    ("cgroup_settings_soft", soft),
    ("cgroup_settings_full", full),
    ("cgroup_modes", modes),
    ("cgroup_tasks_apart", tasks_apart),
    ("cgroup_unmounted_hierarchy", unmounted),
];

pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
}

/// One hierarchy the case uses: where it is mounted, and the settings
/// given to the case's cgroup and to the directory below it.
struct Hier {
    mount: PathBuf,
    top: Settings,
    sub: Settings,
}

/// Settings: (file, value).
type Settings = &'static [(&'static str, &'static str)];

/// v1 controllers: (name, the case's cgroup's settings, the one below's).
const V1: [(&str, Settings, Settings); 4] = [
    ("pids", &[("pids.max", "77")], &[("pids.max", "33")]),
    (
        "memory",
        &[
            ("memory.limit_in_bytes", "268435456"),
            ("memory.swappiness", "17"),
            ("notify_on_release", "1"),
        ],
        &[("memory.soft_limit_in_bytes", "134217728")],
    ),
    (
        "cpu",
        &[("cpu.shares", "333"), ("cpu.cfs_quota_us", "50000")],
        &[("cpu.shares", "200")],
    ),
    (
        "cpuset",
        &[("cpuset.cpus", "0"), ("cpuset.mems", "0")],
        &[("cpuset.cpus", "0"), ("cpuset.mems", "0")],
    ),
];
const V2_TOP: Settings = &[("cgroup.max.descendants", "5")];
const V2_SUB: Settings = &[("cgroup.max.depth", "2")];

/// The case's cgroups, removed (their tasks killed) when dropped.
struct Cgroups {
    name: String,
    hiers: Vec<Hier>,
}

impl Cgroups {
    /// Finds the hierarchies; `None` when there is no pids (v1) or
    /// unified hierarchy to test with.
    fn find(case: &str) -> Option<Cgroups> {
        let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mut hiers = Vec::new();
        for (ctrl, top, sub) in V1 {
            let m = info.lines().find(|l| {
                let (pre, post) = l.split_once(" - ").unwrap_or((l, ""));
                let _ = pre;
                post.starts_with("cgroup ")
                    && post.split(',').any(|o| o.trim() == ctrl)
                    && post.split_whitespace().nth(2).is_some_and(|o| {
                        o.split(',').filter(|c| *c != "rw" && *c != "ro").count() == 1
                    })
            });
            if let Some(mp) = m.and_then(|l| l.split_whitespace().nth(4)) {
                hiers.push(Hier {
                    mount: PathBuf::from(mp),
                    top,
                    sub,
                });
            }
        }
        let v2 = info.lines().find(|l| {
            l.split_once(" - ")
                .is_some_and(|(_, p)| p.starts_with("cgroup2 "))
        });
        if let Some(mp) = v2.and_then(|l| l.split_whitespace().nth(4)) {
            hiers.push(Hier {
                mount: PathBuf::from(mp),
                top: V2_TOP,
                sub: V2_SUB,
            });
        }
        (!hiers.is_empty()).then(|| Cgroups {
            name: format!("crest-e2e-{case}-{}", std::process::id()),
            hiers,
        })
    }

    fn top(&self, h: &Hier) -> PathBuf {
        h.mount.join(&self.name)
    }

    /// Makes the cgroups with their settings, the directory below owned
    /// by uid 4242 and the top's first setting file mode 0600.
    fn make(&self) -> Result<()> {
        for h in &self.hiers {
            let top = self.top(h);
            fs::create_dir_all(top.join("sub"))
                .with_context(|| format!("make {}", top.display()))?;
            set_all(&top, h.top)?;
            set_all(&top.join("sub"), h.sub)?;
            std::os::unix::fs::chown(top.join("sub"), Some(4242), Some(4242))?;
            fs::set_permissions(top.join(h.top[0].0), fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    /// Moves `pids` into the case's cgroup of every hierarchy.
    fn enter(&self, pids: &[i32]) -> Result<()> {
        for h in &self.hiers {
            for p in pids {
                fs::write(self.top(h).join("cgroup.procs"), p.to_string())
                    .with_context(|| format!("move {p} into {}", self.top(h).display()))?;
            }
        }
        Ok(())
    }

    /// What the kernel shows of the cgroups: every setting given, the
    /// owner and mode of the directories and of the first setting file.
    fn view(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for h in &self.hiers {
            let top = self.top(h);
            for (dir, set) in [(top.clone(), h.top), (top.join("sub"), h.sub)] {
                let meta = fs::metadata(&dir);
                out.insert(
                    dir.display().to_string(),
                    meta.map_or("missing".into(), |m| {
                        format!("{:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid())
                    }),
                );
                for (k, _) in set {
                    let v = fs::read_to_string(dir.join(k)).unwrap_or_else(|e| format!("({e})"));
                    out.insert(dir.join(k).display().to_string(), v.trim().to_string());
                }
            }
            let first = top.join(h.top[0].0);
            if let Ok(m) = fs::metadata(&first) {
                out.insert(
                    format!("{} mode", first.display()),
                    format!("{:o}", m.mode() & 0o7777),
                );
            }
        }
        out
    }

    /// Removes the cgroups (they must be empty).
    fn remove(&self) -> Result<()> {
        for h in &self.hiers {
            let top = self.top(h);
            for d in [top.join("sub"), top.clone()] {
                if d.is_dir() {
                    let mut tries = 0;
                    while let Err(e) = fs::remove_dir(&d) {
                        tries += 1;
                        if tries > 50 {
                            bail!("remove {}: {e}", d.display());
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for h in &self.hiers {
            for d in [self.top(h).join("sub"), self.top(h)] {
                if let Ok(t) = fs::read_to_string(d.join("cgroup.procs")) {
                    for p in t.lines().filter_map(|l| l.parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(Pid::from_raw(p), nix::sys::signal::SIGKILL);
                    }
                }
            }
        }
        let _ = self.remove();
    }
}

/// A value other than the case's for setting `k` (None: left alone).
fn other_value(k: &str) -> Option<&'static str> {
    match k {
        "cpuset.cpus" => None,
        "memory.limit_in_bytes" => Some("536870912"),
        _ => Some("100"),
    }
}

fn set_all(dir: &Path, set: &[(&str, &str)]) -> Result<()> {
    for (k, v) in set {
        fs::write(dir.join(k), v).with_context(|| format!("{v} > {}", dir.join(k).display()))?;
    }
    Ok(())
}

/// `/proc/PID/cgroup` of every task of the tree.
fn cgroups_of(pids: &[i32]) -> BTreeMap<i32, String> {
    pids.iter()
        .map(|p| {
            (
                *p,
                fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default(),
            )
        })
        .collect()
}

fn differences(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v:?} before, {:?} after", b.get(k)))
        .collect()
}

/// A dumped tree: its root, its tasks, the cgroups' view and the tasks'
/// cgroups before the dump.
struct Dumped {
    pid: Pid,
    tree: procs::Tree,
    view: BTreeMap<String, String>,
    member: BTreeMap<i32, String>,
}

/// Starts the tree in the case's cgroups; dumps it with `dump_args`.
fn start_and_dump(
    cfg: &Config,
    dir: &CaseDir,
    cg: &Cgroups,
    dump_args: &[&str],
    procs: &mut Procs,
) -> Result<Dumped> {
    cg.make()?;
    let (pid, tree) = start_tree(cfg, dir, procs)?;
    let pids: Vec<i32> = tree.keys().copied().collect();
    cg.enter(&pids)?;
    let view = cg.view();
    let member = cgroups_of(&pids);
    dump_with(cfg, dir, (pid, &tree), dump_args, procs)?;
    Ok(Dumped {
        pid,
        tree,
        view,
        member,
    })
}

/// `crest dump` of the tree of `pid` with `extra` options; the tree dies.
fn dump_with(
    cfg: &Config,
    dir: &CaseDir,
    (pid, tree): (Pid, &procs::Tree),
    extra: &[&str],
    procs: &mut Procs,
) -> Result<()> {
    let (images, pid_s) = (s(&dir.images), pid.to_string());
    let mut args = vec!["dump", "-t", &pid_s, "-D", &images, "-o", "dump.log"];
    args.extend_from_slice(extra);
    dump_ok(cfg, dir, &args, pid, tree, procs).map(drop)
}

/// A restore with `mode` that must succeed; then the cgroups must show
/// `want`, the tasks be in them, and the tree pass its check.
#[allow(clippy::too_many_arguments)]
/// A restore of `d` with `mode` after which the cgroups read `want` and
/// every task is back in its cgroups.
fn restore_checked(
    cfg: &Config,
    dir: &CaseDir,
    (cg, mode): (&Cgroups, &str),
    d: &Dumped,
    want: &BTreeMap<String, String>,
    procs: &mut Procs,
) -> Result<()> {
    let (pid, tree, member) = (d.pid, &d.tree, &d.member);
    let images = s(&dir.images);
    let tag = format!("restore{mode}");
    let args = ["restore", "-D", &images, "-d", "-o", "restore.log", mode];
    restore_ok(cfg, dir, &tag, &args, pid, procs)?;
    let diff = differences(want, &cg.view());
    if !diff.is_empty() {
        bail!(
            "after restore {mode}, the cgroups differ:\n  {}",
            diff.join("\n  ")
        );
    }
    let pids: Vec<i32> = tree.keys().copied().collect();
    let now = cgroups_of(&pids);
    if &now != member {
        bail!("after restore {mode}, the tasks' cgroups are {now:?}, before {member:?}");
    }
    match check_restored(dir, pid, tree, procs)? {
        Outcome::Pass => Ok(()),
        other => bail!("after restore {mode}: {other:?}"),
    }
}

/// A restore with `mode` that must fail saying `why`, leaving no task.
fn restore_refused(
    cfg: &Config,
    dir: &CaseDir,
    mode: &str,
    why: &str,
    pid: Pid,
    procs: &mut Procs,
) -> Result<()> {
    let images = s(&dir.images);
    let tag = format!("refused{mode}");
    let args = ["restore", "-D", &images, "-d", "-o", "restore.log", mode];
    let ran = crest_run(cfg, dir, &tag, &args, procs)?;
    if ran.success() || !ran.stderr.contains(why) {
        bail!(
            "restore {mode} was to be refused with {why:?}: {}",
            ran.failure("restore")
        );
    }
    std::thread::sleep(Duration::from_millis(50));
    if alive(pid) {
        bail!("a refused restore {mode} left pid {pid}");
    }
    Ok(())
}

fn skip() -> Outcome {
    Outcome::Skip("no pids, memory, cpu, cpuset or unified cgroup hierarchy mounted".into())
}

fn soft(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let Some(cg) = Cgroups::find("soft") else {
        return Ok(skip());
    };
    let d = start_and_dump(cfg, dir, &cg, &["--manage-cgroups"], procs)?;
    cg.remove()?;
    restore_checked(cfg, dir, (&cg, "--manage-cgroups"), &d, &d.view, procs)?;
    Ok(Outcome::Pass)
}

fn full(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let Some(cg) = Cgroups::find("full") else {
        return Ok(skip());
    };
    let d = start_and_dump(cfg, dir, &cg, &["--manage-cgroups=full"], procs)?;
    // other settings meanwhile
    for h in &cg.hiers {
        let top = cg.top(h);
        let (k, _) = h.top[0];
        if let Some(v) = other_value(k) {
            fs::write(top.join(k), v).with_context(|| format!("{v} > {k}"))?;
        }
        fs::set_permissions(top.join(k), fs::Permissions::from_mode(0o644))?;
        std::os::unix::fs::chown(top.join("sub"), Some(0), Some(0))?;
    }
    if differences(&d.view, &cg.view()).is_empty() {
        bail!("the harness could not change the cgroups' settings");
    }
    restore_checked(cfg, dir, (&cg, "--manage-cgroups=full"), &d, &d.view, procs)?;
    Ok(Outcome::Pass)
}

fn modes(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let Some(cg) = Cgroups::find("modes") else {
        return Ok(skip());
    };
    let no_pids = "\"pids\":\n - \"strategy\": \"replace\"\n - \"properties\": []\n";
    let d = start_and_dump(
        cfg,
        dir,
        &cg,
        &["--manage-cgroups", "--cgroup-props", no_pids],
        procs,
    )?;
    restore_refused(cfg, dir, "--manage-cgroups=strict", "strict", d.pid, procs)?;
    // soft leaves the settings of cgroups that exist alone
    let mut changed = d.view.clone();
    for h in &cg.hiers {
        let (k, _) = h.top[0];
        let Some(v) = other_value(k) else {
            continue;
        };
        let f = cg.top(h).join(k);
        fs::write(&f, v).with_context(|| format!("{v} > {}", f.display()))?;
        changed.insert(f.display().to_string(), v.into());
    }
    restore_checked(
        cfg,
        dir,
        (&cg, "--manage-cgroups=soft"),
        &d,
        &changed,
        procs,
    )?;
    cg.remove()?;
    for mode in ["--manage-cgroups=none", "--manage-cgroups=props"] {
        restore_refused(cfg, dir, mode, "does not exist", d.pid, procs)?;
    }
    // full makes them with what was recorded: not pids.max
    let mut want = d.view.clone();
    for h in cg.hiers.iter().filter(|h| h.top[0].0 == "pids.max") {
        want.insert(
            cg.top(h).join("pids.max").display().to_string(),
            "max".into(),
        );
        want.insert(
            cg.top(h).join("sub/pids.max").display().to_string(),
            "max".into(),
        );
        want.insert(
            format!("{} mode", cg.top(h).join("pids.max").display()),
            "644".into(),
        );
    }
    restore_checked(cfg, dir, (&cg, "--manage-cgroups=full"), &d, &want, procs)?;
    Ok(Outcome::Pass)
}

fn tasks_apart(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let Some(cg) = Cgroups::find("apart") else {
        return Ok(skip());
    };
    // a cgroup beside the case's (a sibling), with a setting of its own
    let beside = Cgroups {
        name: format!("{}-beside", cg.name),
        hiers: cg
            .hiers
            .iter()
            .map(|h| Hier {
                mount: h.mount.clone(),
                top: h.sub,
                sub: h.sub,
            })
            .collect(),
    };
    cg.make()?;
    beside.make()?;
    let (pid, tree) = start_tree(cfg, dir, procs)?;
    let child = tree
        .iter()
        .find(|(_, t)| t.ppid == pid.as_raw())
        .map(|(p, _)| *p);
    let grand = child.and_then(|c| tree.iter().find(|(_, t)| t.ppid == c).map(|(p, _)| *p));
    let (Some(child), Some(grand)) = (child, grand) else {
        bail!("small_tree has no child and grandchild: {tree:?}");
    };
    cg.enter(&[pid.as_raw()])?;
    for h in &cg.hiers {
        fs::write(cg.top(h).join("sub/cgroup.procs"), child.to_string())?;
        fs::write(beside.top(h).join("cgroup.procs"), grand.to_string())?;
    }
    let pids: Vec<i32> = tree.keys().copied().collect();
    let (view, view_beside, member) = (cg.view(), beside.view(), cgroups_of(&pids));
    if member[&pid.as_raw()] == member[&child] || member[&child] == member[&grand] {
        bail!("the harness could not put the tasks apart: {member:?}");
    }
    dump_with(cfg, dir, (pid, &tree), &["--manage-cgroups"], procs)?;
    let d = Dumped {
        pid,
        tree,
        view,
        member,
    };
    cg.remove()?;
    beside.remove()?;
    restore_checked(cfg, dir, (&cg, "--manage-cgroups"), &d, &d.view, procs)?;
    let diff = differences(&view_beside, &beside.view());
    if !diff.is_empty() {
        bail!(
            "the cgroup beside differs after the restore:\n  {}",
            diff.join("\n  ")
        );
    }
    Ok(Outcome::Pass)
}

/// A named v1 hierarchy mounted at `at` while the value lives (unmounted,
/// its cgroups removed and their tasks killed, when dropped).
struct Named {
    name: String,
    at: PathBuf,
}

impl Named {
    fn mount(&self) -> Result<()> {
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "cgroup",
                "-o",
                &format!("none,name={}", self.name),
                "cgroup",
            ])
            .arg(&self.at)
            .status()
            .context("run mount")?;
        if !st.success() {
            bail!("mount the {} hierarchy: {st}", self.name);
        }
        Ok(())
    }

    fn umount(&self) -> Result<()> {
        let st = std::process::Command::new("umount")
            .arg(&self.at)
            .status()
            .context("run umount")?;
        if !st.success() {
            bail!("umount {}: {st}", self.at.display());
        }
        Ok(())
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let mounted = fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|m| m.contains(&format!("name={}", self.name)));
        if !mounted && self.mount().is_err() {
            return;
        }
        for d in ["x/sub", "x"] {
            let dir = self.at.join(d);
            if let Ok(t) = fs::read_to_string(dir.join("cgroup.procs")) {
                for p in t.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(p), nix::sys::signal::SIGKILL);
                    // (the harness reaps its own: not ours, this says so
                    // at once)
                    let _ = nix::sys::wait::waitpid(Pid::from_raw(p), None);
                }
            }
        }
        // a cgroup holding a task not reaped yet (pid 1 reaps orphans
        // late) cannot go, and the hierarchy, unmounted, would stay in the
        // kernel for good: wait for it
        let start = std::time::Instant::now();
        for d in ["x/sub", "x"] {
            let dir = self.at.join(d);
            while dir.exists()
                && fs::remove_dir(&dir).is_err()
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // the kernel lets go of an unmounted hierarchy only when it has no
        // cgroups left, and a removed one goes a little later: mounted and
        // unmounted again until the hierarchy is gone
        let known = |name: &str| {
            fs::read_to_string("/proc/self/cgroup")
                .is_ok_and(|c| c.contains(&format!("name={name}:")))
        };
        for _ in 0..50 {
            let _ = self.umount();
            std::thread::sleep(Duration::from_millis(100));
            if !known(&self.name) || self.mount().is_err() {
                break;
            }
        }
    }
}

fn unmounted(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    let h = Named {
        name: format!("crest-e2e-{}", std::process::id()),
        at: dir.root.join("hierarchy"),
    };
    fs::create_dir_all(&h.at)?;
    h.mount()?;
    let (x, sub) = (h.at.join("x"), h.at.join("x/sub"));
    fs::create_dir_all(&sub)?;
    fs::write(x.join("notify_on_release"), "1")?;
    fs::write(sub.join("cgroup.clone_children"), "1")?;
    let (pid, tree) = start_tree(cfg, dir, procs)?;
    let pids: Vec<i32> = tree.keys().copied().collect();
    for p in &pids {
        fs::write(x.join("cgroup.procs"), p.to_string())?;
    }
    let member = cgroups_of(&pids);
    if !member
        .values()
        .all(|l| l.contains(&format!("name={}:/x", h.name)))
    {
        bail!("the harness could not put the tree in its hierarchy: {member:?}");
    }
    h.umount()?;
    dump_with(cfg, dir, (pid, &tree), &["--manage-cgroups"], procs)?;
    // the hierarchy goes with its last cgroup
    h.mount()?;
    fs::remove_dir(&sub)?;
    fs::remove_dir(&x)?;
    h.umount()?;
    let images = s(&dir.images);
    let restore = [
        "restore",
        "-D",
        &images,
        "-d",
        "-o",
        "restore.log",
        "--manage-cgroups",
    ];
    restore_ok(cfg, dir, "restore", &restore, pid, procs)?;
    let now = cgroups_of(&pids);
    if now != member {
        bail!("after the restore the tasks' cgroups are {now:?}, before {member:?}");
    }
    let left: Vec<String> = fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter(|l| l.contains("crest-cgroup-yard") || l.contains(&h.name))
        .map(str::to_string)
        .collect();
    if !left.is_empty() {
        bail!("mounts left after the restore: {left:?}");
    }
    h.mount()?;
    for (f, want) in [
        (x.join("notify_on_release"), "1"),
        (sub.join("cgroup.clone_children"), "1"),
    ] {
        let got = fs::read_to_string(&f).unwrap_or_default();
        if got.trim() != want {
            bail!(
                "{} is {got:?} after the restore, {want} before",
                f.display()
            );
        }
    }
    h.umount()?;
    match check_restored(dir, pid, &tree, procs)? {
        Outcome::Pass => Ok(Outcome::Pass),
        other => Ok(other),
    }
}
