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

use crate::error::{DumpError, RestoreCtx, RestoreError};
use crest_images::pb::crest::CrestCgroupMember;
use crest_images::pb::CgroupEntry;
use crest_images::{magic, names};
use crest_inject::Tracee;
use std::path::{Path, PathBuf};

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
    parse_cgroup(&text).ok_or_else(|| DumpError::Unsupported {
        pid,
        what: "a task outside the cgroup v2 hierarchy (cgroup v1 is not supported)".into(),
    })
}

/// The root of the cgroup namespace that reader `t` entered, for a task
/// `pid` in it.
pub fn dump_root(pid: i32, t: &mut Tracee) -> Result<String, DumpError> {
    let outer = path_of(pid)?;
    let text = super::other::read_inside(t, pid, &format!("/proc/{pid}/cgroup"))?;
    let inner = parse_cgroup(&text).unwrap_or_default();
    root_from(&outer, &inner).ok_or_else(|| DumpError::Unsupported {
        pid,
        what: format!("a task whose cgroup {outer} is outside its cgroup namespace ({inner})"),
    })
}

/// Where crest's cgroup v2 hierarchy is mounted.
fn mount_point() -> Result<PathBuf, RestoreError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").rat(0, "read crest's mountinfo")?;
    super::mnt::parse_mountinfo(&text)
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| PathBuf::from(m.mountpoint))
        .ok_or_else(|| RestoreError::Unsupported {
            pid: 0,
            what: "a cgroup namespace without a cgroup v2 hierarchy mounted here".into(),
        })
}

/// Moves process `pid` into the cgroup at `path` (made when missing).
pub fn move_to(pid: i32, path: &str) -> Result<(), RestoreError> {
    if path.split('/').any(|c| c == "..") {
        return Err(RestoreError::BadImage {
            pid,
            file: names::CREST_CGROUPS.into(),
            what: format!("cgroup path {path:?}"),
        });
    }
    let dir = mount_point()?.join(path.trim_start_matches('/'));
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).rat(pid, format!("make cgroup {}", dir.display()))?;
    }
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .rat(pid, format!("move into cgroup {path}"))
}

/// Writes `crest-cgroups.img`.
pub fn write_members(dir: &Path, members: &[(i32, String)]) -> Result<(), DumpError> {
    let entries: Vec<CrestCgroupMember> = members
        .iter()
        .map(|(pid, path)| CrestCgroupMember {
            pid: *pid,
            path: path.clone(),
        })
        .collect();
    crest_images::carry::write::<CgroupEntry>(dir, names::CREST_CGROUPS, entries)?;
    Ok(())
}

/// Reads `crest-cgroups.img` (none when absent).
pub fn read_members(dir: &Path) -> Result<Vec<(i32, String)>, RestoreError> {
    if !dir.join(names::CREST_CGROUPS).exists() {
        return Ok(Vec::new());
    }
    let list =
        crest_images::carry::read::<CgroupEntry>(dir, names::CREST_CGROUPS, magic::CREST_CGROUPS)?;
    Ok(list.into_iter().map(|m| (m.pid, m.path)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
