//! Cgroup namespaces of the tree's own, and the cgroups of their tasks.
//!
//! A cgroup namespace is rooted at the cgroup its creator was in when it
//! unshared. Dump finds that root as the task's cgroup v2 path seen by
//! crest minus the path seen from inside the namespace (a short-lived
//! reader that entered it reads `/proc/PID/cgroup`), and records the path
//! of every task in such a namespace. Restore moves the namespace's helper
//! into the root before it unshares (making the cgroup when it is gone),
//! and every task into its cgroup, so the paths seen inside are the same.
//! Only the cgroup v2 (unified) hierarchy is handled.

use crate::error::RoomError;
use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::ns::error::NsError;
use crate::remote::Remote;
use crest_images::pb::crest::CrestCgroupMember;
use crest_images::pb::CgroupEntry;
use crest_images::{magic, names};
use crest_inject::Tracee;
use std::path::{Path, PathBuf};

/// Most lines of a task's `/proc/PID/cgroup` crest reads back from the
/// images: one per hierarchy (v2's one, v1's controllers and named
/// hierarchies, which a machine may have many of).
const MAX_LINES: usize = 1024;

/// The unified-hierarchy path in a `/proc/PID/cgroup` text ("0::/path").
pub fn parse_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The namespace's root from a task's path seen by crest (`outer`) and
/// from inside its namespace (`inner`).
pub fn root_from(outer: &str, inner: &str) -> Option<String> {
    if inner.starts_with("/..") || !inner.starts_with('/') {
        return None;
    }
    if inner == "/" {
        return Some(outer.to_string());
    }
    let root = outer.strip_suffix(inner)?;
    Some(if root.is_empty() {
        "/".into()
    } else {
        root.to_string()
    })
}

/// `pid`'s cgroup v2 path as crest sees it.
pub fn path_of(pid: i32) -> Result<String, DumpError> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|source| DumpError::Io {
            pid,
            step: "read /proc/PID/cgroup",
            source,
        })?;
    parse_cgroup(&text).ok_or_else(|| {
        NsError::Unsupported {
            what: "a task outside the cgroup v2 hierarchy (cgroup v1 is not supported)".into(),
        }
        .in_dump(pid)
    })
}

/// The root of the cgroup namespace that reader `t` entered, for a task
/// `pid` in it.
pub fn dump_root(pid: i32, t: &mut Tracee) -> Result<String, DumpError> {
    let outer = path_of(pid)?;
    let text = t
        .read_file(&format!("/proc/{pid}/cgroup"))
        .map_err(|e| e.for_task(pid))?;
    let inner = parse_cgroup(&text).unwrap_or_default();
    root_from(&outer, &inner).ok_or_else(|| {
        NsError::Unsupported {
            what: format!("a task whose cgroup {outer} is outside its cgroup namespace ({inner})"),
        }
        .in_dump(pid)
    })
}

/// Where crest's cgroup v2 hierarchy is mounted.
fn mount_point() -> Result<PathBuf, RestoreError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").rat(0, "read crest's mountinfo")?;
    crate::procfs::parse_mountinfo(&text)
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| PathBuf::from(m.mountpoint))
        .ok_or_else(|| {
            NsError::Unsupported {
                what: "a cgroup namespace without a cgroup v2 hierarchy mounted here".into(),
            }
            .in_tree_restore()
        })
}

/// Moves process `pid` into the cgroup at `path` (made when missing).
pub fn move_to(pid: i32, path: &str) -> Result<(), RestoreError> {
    if path.split('/').any(|c| c == "..") {
        return Err(NsError::BadImage {
            file: names::CREST_CGROUPS.into(),
            what: format!("cgroup path {path:?}"),
        }
        .in_restore(pid));
    }
    let dir = mount_point()?.join(path.trim_start_matches('/'));
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).rat(pid, format!("make cgroup {}", dir.display()))?;
    }
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .rat(pid, format!("move into cgroup {path}"))
}

/// Writes `crest-cgroups.img`: the cgroups of the tree's root on every
/// hierarchy, the cgroup v2 path of every task of a cgroup namespace, and
/// the cgroups of every other task that is not where the root is
/// (`placed`: pid, its `/proc/PID/cgroup` lines).
pub fn write_members(
    dir: &Path,
    root: (i32, &[String]),
    members: &[(i32, String)],
    placed: &[(i32, Vec<String>)],
) -> Result<(), DumpError> {
    let mut entries = vec![CrestCgroupMember {
        pid: root.0,
        path: String::new(),
        tree_root: Some(true),
        lines: root.1.to_vec(),
    }];
    entries.extend(members.iter().map(|(pid, path)| CrestCgroupMember {
        pid: *pid,
        path: path.clone(),
        ..CrestCgroupMember::default()
    }));
    entries.extend(placed.iter().map(|(pid, lines)| CrestCgroupMember {
        pid: *pid,
        path: String::new(),
        tree_root: Some(false),
        lines: lines.clone(),
    }));
    crest_images::carry::write::<CgroupEntry>(dir, names::CREST_CGROUPS, entries)?;
    Ok(())
}

/// What `crest-cgroups.img` holds.
#[derive(Debug, Default)]
pub struct CgroupImages {
    /// The tree root's `/proc/PID/cgroup` lines (empty for images
    /// without them).
    pub root: Vec<String>,
    /// (pid, cgroup v2 path) of every task of a cgroup namespace.
    pub members: Vec<(i32, String)>,
    /// (pid, `/proc/PID/cgroup` lines) of every other task not in the
    /// root's cgroups.
    pub placed: Vec<(i32, Vec<String>)>,
}

/// Reads `crest-cgroups.img` (nothing when absent).
pub fn read_members(dir: &Path) -> Result<CgroupImages, RestoreError> {
    if !dir.join(names::CREST_CGROUPS).exists() {
        return Ok(CgroupImages::default());
    }
    let list =
        crest_images::carry::read::<CgroupEntry>(dir, names::CREST_CGROUPS, magic::CREST_CGROUPS)?;
    let mut out = CgroupImages::default();
    let bad = |what: String| {
        NsError::BadImage {
            file: names::CREST_CGROUPS.into(),
            what,
        }
        .in_tree_restore()
    };
    for m in list {
        if m.lines.len() > MAX_LINES || m.lines.iter().any(|l| l.len() > 4096) {
            return Err(bad(format!("{} cgroup lines", m.lines.len())));
        }
        match m.tree_root {
            Some(true) => out.root = m.lines,
            Some(false) => out.placed.push((m.pid, m.lines)),
            None => out.members.push((m.pid, m.path)),
        }
    }
    Ok(out)
}

/// A task's `/proc/PID/cgroup` lines at dump, its paths moved the way the
/// root's moved (`moves`): a path at or below the root's dumped cgroup
/// goes to the same place below where the root goes; others stay.
pub fn relocate(lines: &[String], moves: &[(String, String, String)]) -> Vec<String> {
    lines
        .iter()
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                return line.clone();
            };
            let Some((_, old, new)) = moves.iter().find(|(c, _, _)| c == ctrls) else {
                return line.clone();
            };
            let rest = if old == "/" {
                Some(path)
            } else {
                path.strip_prefix(old.as_str())
                    .filter(|r| r.is_empty() || r.starts_with('/'))
            };
            match rest {
                Some(rest) if old != new => {
                    let rest = rest.trim_start_matches('/');
                    let to = if rest.is_empty() {
                        new.clone()
                    } else {
                        format!("{}/{rest}", new.trim_end_matches('/'))
                    };
                    format!("{id}:{ctrls}:{to}")
                }
                _ => line.clone(),
            }
        })
        .collect()
}

/// Moves task `pid` into the cgroup of every place (whether crest is in
/// it or not: its parent may be elsewhere).
pub fn place_task(pid: i32, places: &[Place]) -> Result<(), RestoreError> {
    for p in places {
        if !p.dir.is_dir() {
            std::fs::create_dir_all(&p.dir).rat(pid, format!("make cgroup {}", p.dir.display()))?;
        }
        std::fs::write(p.dir.join("cgroup.procs"), pid.to_string())
            .rat(pid, format!("move into cgroup {}", p.dir.display()))?;
    }
    Ok(())
}

/// Refuses a task whose threads are not all in its cgroups (`lines`):
/// crest puts threads where their leader is.
pub fn check_threads(pid: i32, lines: &[String]) -> Result<(), DumpError> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Ok(());
    };
    for tid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup")) else {
            continue;
        };
        let theirs: Vec<String> = text.lines().map(str::to_string).collect();
        if theirs != lines {
            return Err(NsError::Unsupported {
                what: format!(
                    "thread {tid} in other cgroups than its process ({} vs {})",
                    theirs.join(" "),
                    lines.join(" ")
                ),
            }
            .in_dump(pid));
        }
    }
    Ok(())
}

/// `pid`'s `/proc/PID/cgroup` lines (every hierarchy).
pub fn lines_of(pid: i32) -> Result<Vec<String>, DumpError> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|source| DumpError::Io {
            pid,
            step: "read /proc/PID/cgroup",
            source,
        })?;
    Ok(text.lines().map(str::to_string).collect())
}

/// Where a restored tree goes in one cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The cgroup's directory (crest's view).
    pub dir: PathBuf,
    /// The hierarchy's controllers as `/proc/PID/cgroup` names them.
    pub ctrls: String,
    /// The root's cgroup at dump.
    pub dumped: String,
    /// false: crest is in that cgroup already, and so is the root it forks.
    pub moves: bool,
}

/// Where crest places a restored tree: for each hierarchy of the dumped
/// root's `lines` ("ID:CONTROLLERS:PATH"), the directory (crest's view)
/// of the cgroup to put the root in — its dumped path, or the
/// `--cgroup-root` given for the controller (or for all) — marking those
/// crest is in already. A hierarchy this machine lacks is an error.
pub fn placement(
    lines: &[String],
    roots: &[(Option<String>, String)],
) -> Result<Vec<Place>, RestoreError> {
    let mine = std::fs::read_to_string("/proc/self/cgroup").rat(0, "read crest's cgroups")?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").rat(0, "read crest's mountinfo")?;
    placement_in(lines, roots, &mine, &info, &super::cgyard::dir_of)
}

/// crest's mount of the hierarchy of `ctrls` ("" for cgroup v2).
fn hierarchy_mount<'a>(
    mounts: &'a [crate::procfs::MountInfo],
    ctrls: &str,
) -> Option<&'a crate::procfs::MountInfo> {
    let named: Vec<&str> = ctrls.split(',').filter(|c| !c.is_empty()).collect();
    // cgroup2 for "", else a cgroup mount whose options name every
    // controller
    mounts.iter().find(|m| {
        if named.is_empty() {
            m.fstype == "cgroup2"
        } else {
            m.fstype == "cgroup"
                && named
                    .iter()
                    .all(|c| m.super_opts.split(',').any(|o| o == *c))
        }
    })
}

/// [`placement`] with crest's `/proc/self/cgroup` and mountinfo given.
/// `yard` mounts a hierarchy crest has not mounted ([`super::cgyard`]).
fn placement_in(
    lines: &[String],
    roots: &[(Option<String>, String)],
    mine: &str,
    mountinfo: &str,
    yard: &dyn Fn(&str) -> std::io::Result<PathBuf>,
) -> Result<Vec<Place>, RestoreError> {
    let mounts = crate::procfs::parse_mountinfo(mountinfo).unwrap_or_default();
    let mut out = Vec::new();
    for (ctrls, dumped, want) in moves(lines, roots) {
        if want.split('/').any(|c| c == "..") {
            return Err(NsError::BadImage {
                file: names::CREST_CGROUPS.into(),
                what: format!("cgroup path {want:?}"),
            }
            .in_tree_restore());
        }
        let now = mine.lines().find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, c, path) = (p.next()?, p.next()?, p.next()?);
            (c == ctrls).then_some(path)
        });
        let moves = now != Some(want.as_str());
        let base = match hierarchy_mount(&mounts, &ctrls) {
            Some(m) => PathBuf::from(&m.mountpoint),
            None if !moves => continue,
            None => yard(&ctrls).map_err(|e| {
                NsError::Unsupported {
                    what: format!(
                        "the cgroup hierarchy {ctrls:?} of the dumped tree, not mounted here ({e})"
                    ),
                }
                .in_tree_restore()
            })?,
        };
        out.push(Place {
            dir: base.join(want.trim_start_matches('/')),
            ctrls,
            dumped,
            moves,
        });
    }
    Ok(out)
}

/// The tree root's hierarchies at dump, from its `/proc/PID/cgroup`
/// `lines`, with their directories where crest has them mounted (those
/// where the root is in the hierarchy's root are left out: the machine's,
/// nothing of the tree's own).
pub fn hierarchies(
    pid: i32,
    lines: &[String],
) -> Result<Vec<super::cgprops::Hierarchy>, DumpError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| DumpError::Io {
        pid,
        step: "read crest's mountinfo",
        source,
    })?;
    let mounts = crate::procfs::parse_mountinfo(&info).unwrap_or_default();
    let mut out = Vec::new();
    for (ctrls, path, _) in moves(lines, &[]) {
        if path == "/" {
            continue;
        }
        let (mountpoint, root) = match hierarchy_mount(&mounts, &ctrls) {
            Some(m) => (PathBuf::from(&m.mountpoint), m.root.clone()),
            None => {
                let dir = super::cgyard::dir_of(&ctrls).map_err(|e| {
                    NsError::Unsupported {
                        what: format!(
                        "reading the settings of cgroup {path} of hierarchy {ctrls:?}, which is \
                         not mounted where crest runs ({e}; dump with --manage-cgroups=ignore to \
                         not carry cgroups)"
                    ),
                    }
                    .in_dump(pid)
                })?;
                (dir, "/".to_string())
            }
        };
        let rel = if root == "/" {
            Some(path.as_str())
        } else {
            path.strip_prefix(root.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))
        };
        let Some(rel) = rel.filter(|r| !r.split('/').any(|c| c == "..")) else {
            return Err(NsError::Unsupported {
                what: format!(
                    "cgroup {path} of hierarchy {ctrls:?}, outside crest's mount of it ({root})"
                ),
            }
            .in_dump(pid));
        };
        out.push(super::cgprops::Hierarchy {
            dir: mountpoint.join(rel.trim_start_matches('/')),
            ctrls,
            path,
        });
    }
    Ok(out)
}

/// How the tree's cgroups move from dump to restore: (controllers, path at
/// dump, path now) per hierarchy of the dumped root's `lines`, with
/// `--cgroup-root` applied as [`placement`] applies it.
pub fn moves(
    lines: &[String],
    roots: &[(Option<String>, String)],
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for line in lines {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let named: Vec<&str> = ctrls.split(',').filter(|c| !c.is_empty()).collect();
        // a root for this hierarchy (its controllers, or "" for cgroup
        // v2, as runtimes send them), else one for all
        let given = roots
            .iter()
            .find(|(c, _)| {
                c.as_deref().is_some_and(|c| {
                    c == ctrls || named.contains(&c) || (c.is_empty() && named.is_empty())
                })
            })
            .or_else(|| roots.iter().find(|(c, _)| c.is_none()));
        let now = given.map_or(path, |(_, p)| p.as_str());
        out.push((ctrls.to_string(), path.to_string(), now.to_string()));
    }
    out
}

/// Where to bind a cgroup v1 mount from at restore (crest's view): the
/// mount had `super_opts` (naming its controllers) and `root` (a cgroup of
/// the hierarchy: a container's own, as runtimes mount it); the root moves
/// where the tree's cgroup moved (`moves`) and is found under crest's
/// mount of the same hierarchy (`mountinfo`, crest's).
pub fn v1_bind_source(
    super_opts: &str,
    root: &str,
    moves: &[(String, String, String)],
    mountinfo: &str,
) -> Option<String> {
    let ctrls: Vec<&str> = super_opts
        .split(',')
        .filter(|o| *o != "rw" && *o != "ro" && *o != "xattr" && !o.starts_with("release_agent"))
        .filter(|o| !o.is_empty() && !o.contains('=') || o.starts_with("name="))
        .collect();
    let same = |set: &str| {
        let mut a: Vec<&str> = set.split(',').filter(|c| !c.is_empty()).collect();
        let mut b = ctrls.clone();
        a.sort_unstable();
        b.sort_unstable();
        a == b
    };
    let mut want = root.to_string();
    if let Some((_, old, new)) = moves.iter().find(|(c, _, _)| same(c)) {
        if let Some(rest) = root.strip_prefix(old.as_str()) {
            if rest.is_empty() || rest.starts_with('/') || old == "/" {
                let rest = rest.trim_start_matches('/');
                want = if rest.is_empty() {
                    new.clone()
                } else {
                    format!("{}/{rest}", new.trim_end_matches('/'))
                };
            }
        }
    }
    let mounts = crate::procfs::parse_mountinfo(mountinfo)?;
    let m = mounts.iter().find(|m| {
        m.fstype == "cgroup"
            && ctrls
                .iter()
                .all(|c| m.super_opts.split(',').any(|o| o == *c))
    })?;
    let rel = if m.root == "/" {
        want.as_str()
    } else {
        want.strip_prefix(m.root.as_str())?
    };
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return Some(m.mountpoint.clone());
    }
    Some(format!("{}/{rel}", m.mountpoint.trim_end_matches('/')))
}

/// Puts process `pid` into the cgroup of each place that moves (made
/// ready by [`super::cgprops::prepare`]).
pub fn place(pid: i32, places: &[Place]) -> Result<(), RestoreError> {
    for p in places.iter().filter(|p| p.moves) {
        std::fs::write(p.dir.join("cgroup.procs"), pid.to_string())
            .rat(pid, format!("move into cgroup {}", p.dir.display()))?;
    }
    Ok(())
}

/// A frozen cgroup crest thawed to seize its tasks (CRIU's
/// `--freeze-cgroup`): frozen again when dropped, so a tree left running
/// is left as the caller had it.
pub struct Thawed {
    file: PathBuf,
    frozen: &'static str,
}

/// Thaws the freezer cgroup `path` (a v1 freezer directory with
/// `freezer.state`, or a v2 cgroup with `cgroup.freeze`) if it is frozen:
/// a task stopped by a v1 freezer does not reach a ptrace stop until it
/// is thawed. None when it was not frozen. `root`: the dumped root, for
/// messages.
pub fn thaw(root: i32, path: &Path) -> Result<Option<Thawed>, DumpError> {
    let io = |step: &'static str| {
        move |source| DumpError::Io {
            pid: root,
            step,
            source,
        }
    };
    let v1 = path.join("freezer.state");
    let v2 = path.join("cgroup.freeze");
    let (file, frozen, thawed) = if v1.exists() {
        (v1, "FROZEN", "THAWED")
    } else if v2.exists() {
        (v2, "1", "0")
    } else {
        return Err(NsError::Unsupported {
            what: format!("--freeze-cgroup {}: no freezer there", path.display()),
        }
        .in_tree_dump());
    };
    let now = std::fs::read_to_string(&file).map_err(io("read the freezer state"))?;
    if now.trim() != frozen && now.trim() != "FREEZING" {
        return Ok(None);
    }
    std::fs::write(&file, thawed).map_err(io("thaw the freezer cgroup"))?;
    Ok(Some(Thawed { file, frozen }))
}

impl Drop for Thawed {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.file, self.frozen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINE: &str = "9:name=systemd:/\n8:pids:/\n2:cpu,cpuacct:/a\n0::/\n";
    const MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
32 25 0:28 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
";

    fn no_yard(_: &str) -> std::io::Result<PathBuf> {
        Err(std::io::Error::other("no yard in unit tests"))
    }

    fn place_of(lines: &[&str], roots: &[(Option<&str>, &str)]) -> Vec<String> {
        let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let roots: Vec<(Option<String>, String)> = roots
            .iter()
            .map(|(c, p)| (c.map(str::to_string), p.to_string()))
            .collect();
        placement_in(&lines, &roots, MINE, MOUNTS, &no_yard)
            .expect("placement")
            .iter()
            .filter(|p| p.moves)
            .map(|p| p.dir.display().to_string())
            .collect()
    }

    #[test]
    fn the_tree_goes_back_to_its_cgroups() {
        // where crest is already: nothing to do
        assert!(place_of(&["8:pids:/", "0::/"], &[]).is_empty());
        assert_eq!(
            place_of(
                &[
                    "8:pids:/c1",
                    "2:cpu,cpuacct:/c1",
                    "0::/c1",
                    "9:name=systemd:/c1"
                ],
                &[]
            ),
            [
                "/sys/fs/cgroup/pids/c1",
                "/sys/fs/cgroup/cpu,cpuacct/c1",
                "/sys/fs/cgroup/unified/c1",
                "/sys/fs/cgroup/systemd/c1"
            ]
        );
        // --cgroup-root per controller, "" for v2, none for the rest
        assert_eq!(
            place_of(
                &["8:pids:/c1", "2:cpu,cpuacct:/c1", "0::/c1"],
                &[(Some("cpu"), "/x"), (Some(""), "/v2"), (None, "/all")]
            ),
            [
                "/sys/fs/cgroup/pids/all",
                "/sys/fs/cgroup/cpu,cpuacct/x",
                "/sys/fs/cgroup/unified/v2"
            ]
        );
        let bad = vec!["8:pids:/../x".to_string()];
        assert!(placement_in(&bad, &[], MINE, MOUNTS, &no_yard).is_err());
        let missing = vec!["5:rdma:/c1".to_string()];
        assert!(placement_in(&missing, &[], MINE, MOUNTS, &no_yard).is_err());
    }

    #[test]
    fn cgroup_mounts_follow_the_tree() {
        let lines = vec!["8:pids:/c1".to_string(), "2:cpu,cpuacct:/c1".to_string()];
        let mv = moves(&lines, &[(Some("pids".into()), "/new".into())]);
        assert_eq!(
            v1_bind_source("rw,pids", "/c1", &mv, MOUNTS).as_deref(),
            Some("/sys/fs/cgroup/pids/new")
        );
        assert_eq!(
            v1_bind_source("rw,cpu,cpuacct", "/c1/sub", &mv, MOUNTS).as_deref(),
            Some("/sys/fs/cgroup/cpu,cpuacct/c1/sub")
        );
        assert_eq!(v1_bind_source("rw,rdma", "/c1", &mv, MOUNTS), None);
    }

    #[test]
    fn tasks_follow_the_root() {
        let lines = vec![
            "8:pids:/c1/sub".to_string(),
            "2:cpu,cpuacct:/other".to_string(),
            "0::/c1".to_string(),
        ];
        let root = vec![
            "8:pids:/c1".to_string(),
            "2:cpu,cpuacct:/c1".to_string(),
            "0::/c1".to_string(),
        ];
        let mv = moves(&root, &[(None, "/new".into())]);
        assert_eq!(
            relocate(&lines, &mv),
            ["8:pids:/new/sub", "2:cpu,cpuacct:/other", "0::/new"]
        );
        // no --cgroup-root: as dumped
        assert_eq!(relocate(&lines, &moves(&root, &[])), lines);
    }

    #[test]
    fn roots() {
        assert_eq!(parse_cgroup("0::/a/b\n"), Some("/a/b".into()));
        assert_eq!(parse_cgroup("1:name=x:/\n"), None);
        assert_eq!(root_from("/a/b/c", "/c"), Some("/a/b".into()));
        assert_eq!(root_from("/a/b", "/"), Some("/a/b".into()));
        assert_eq!(root_from("/c", "/c"), Some("/".into()));
        assert_eq!(root_from("/a/b", "/../x"), None);
        assert_eq!(root_from("/a/b", "/x"), None);
    }
}
