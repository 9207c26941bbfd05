//! Cgroup settings at dump: every directory of the tree's cgroups and
//! below, with its owner, mode and the properties CRIU carries.

use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

/// One hierarchy of the tree's root, as crest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its controllers as `/proc/PID/cgroup` names them ("" for v2).
    pub ctrls: String,
    /// The root's cgroup in it.
    pub path: String,
    /// That cgroup's directory where crest has the hierarchy mounted.
    pub dir: PathBuf,
}

impl Hierarchy {
    fn names(&self) -> Vec<String> {
        names_of(&self.ctrls)
    }
}

/// Records the settings of the root's cgroups (below each hierarchy's
/// root; the root cgroup of a hierarchy is the machine's and is left
/// out). `only`: `--cgroup-dump-controller` (empty: every controller).
pub fn dump(
    pid: i32,
    hierarchies: &[Hierarchy],
    list: &PropList,
    only: &[String],
) -> Result<CgroupEntry, DumpError> {
    let mut out = CgroupEntry::default();
    let mut count = 0;
    for h in hierarchies {
        let names = h.names();
        if h.path == "/" {
            continue;
        }
        if !only.is_empty() && !names.iter().any(|n| only.contains(n)) {
            continue;
        }
        // one entry per hierarchy; a cgroup below one recorded is in it
        let k = match out.controllers.iter().position(|c| c.cnames == names) {
            Some(k) => k,
            None => {
                out.controllers.push(CgControllerEntry {
                    cnames: names.clone(),
                    dirs: Vec::new(),
                    is_threaded: None,
                });
                out.controllers.len() - 1
            }
        };
        let below =
            |top: &str| top == h.path || top == "/" || h.path.starts_with(&format!("{top}/"));
        if out.controllers[k].dirs.iter().any(|d| below(&d.dir_name)) {
            continue;
        }
        let mut dir = dump_dir(pid, &h.dir, &h.path, &names, list, 0, &mut count)?;
        dir.dir_name = h.path.clone();
        let within = |d: &CgroupDirEntry| d.dir_name.starts_with(&format!("{}/", h.path));
        out.controllers[k].dirs.retain(|d| !within(d));
        out.controllers[k].dirs.push(dir);
    }
    Ok(out)
}

pub(super) fn io_err(
    pid: i32,
    path: &Path,
    step: &'static str,
) -> impl FnOnce(std::io::Error) -> DumpError {
    let path = path.display().to_string();
    move |e| DumpError::Io {
        pid,
        step,
        source: std::io::Error::new(e.kind(), format!("{path}: {e}")),
    }
}

pub(super) fn perms_of(meta: &std::fs::Metadata) -> CgroupPerms {
    CgroupPerms {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    }
}

/// The properties a directory has for `names` (v1 controllers, or none
/// for v2, whose controllers the directory itself lists).
pub(super) fn props_for(dir: &Path, names: &[String], list: &PropList) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if names.is_empty() {
        out.extend(V2_GLOBAL.iter().map(|s| s.to_string()));
        let ctrls = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        for c in ctrls.split_whitespace() {
            if let Some((_, p)) = V2.iter().find(|(n, _)| *n == c) {
                out.extend(p.iter().map(|s| s.to_string()));
            }
        }
        out.push(SUBTREE.to_string());
    } else {
        for n in names {
            out.extend(list.of(n).iter().cloned());
        }
        out.extend(V1_GLOBAL.iter().map(|s| s.to_string()));
    }
    out
}

pub(super) fn dump_dir(
    pid: i32,
    dir: &Path,
    name: &str,
    names: &[String],
    list: &PropList,
    depth: usize,
    count: &mut usize,
) -> Result<CgroupDirEntry, DumpError> {
    *count += 1;
    if *count > MAX_DIRS || depth > MAX_DEPTH {
        return Err(NsError::Unsupported {
            what: format!(
                "a cgroup tree of more than {MAX_DIRS} directories or {MAX_DEPTH} levels \
                 ({}; dump with --manage-cgroups=ignore to not carry it)",
                dir.display()
            ),
        }
        .in_dump(pid));
    }
    let meta = std::fs::metadata(dir).map_err(io_err(pid, dir, "read cgroup"))?;
    let mut entry = CgroupDirEntry {
        dir_name: name.to_string(),
        dir_perms: Some(perms_of(&meta)),
        ..CgroupDirEntry::default()
    };
    for prop in props_for(dir, names, list) {
        let path = dir.join(&prop);
        let Ok(meta) = std::fs::metadata(&path) else {
            // (not every kernel has every file: memsw without swap
            // accounting, kmem limits since 6.x)
            continue;
        };
        let value = match std::fs::read_to_string(&path) {
            Ok(v) => v,
            Err(e) => {
                crate::info!("cgroup property {} not read: {e}", path.display());
                continue;
            }
        };
        if value.len() > MAX_VALUE {
            return Err(NsError::Unsupported {
                what: format!(
                    "a cgroup property of {} bytes ({})",
                    value.len(),
                    path.display()
                ),
            }
            .in_dump(pid));
        }
        entry.properties.push(CgroupPropEntry {
            name: prop,
            value: value.trim_end_matches('\n').to_string(),
            perms: Some(perms_of(&meta)),
        });
    }
    let mut subdirs: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(pid, dir, "list cgroup"))?
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type().ok()?.is_dir().then_some(())?;
            e.file_name().into_string().ok()
        })
        .collect();
    subdirs.sort();
    for sub in subdirs {
        let child = dump_dir(pid, &dir.join(&sub), &sub, names, list, depth + 1, count)?;
        entry.children.push(child);
    }
    Ok(entry)
}
