//! Cgroup settings at restore, written to the cgroups the tree goes into,
//! as `--manage-cgroups` says.

use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

/// Makes the cgroup directory `dir` of a hierarchy (`ctrls`, dumped as
/// `dumped`) ready for the restored root, as `mode` says, with the
/// settings `saved` recorded: `moves` is false for a hierarchy crest is in
/// already (the root stays where crest is).
pub fn prepare(
    dir: &Path,
    ctrls: &str,
    dumped: &str,
    moves: bool,
    saved: Option<&CgroupEntry>,
    mode: CgMode,
) -> Result<(), RestoreError> {
    let existed = dir.is_dir();
    let shown = dir.display();
    let refuse = |kind: std::io::ErrorKind, what: String| RestoreError::Io {
        pid: 0,
        step: format!("--manage-cgroups={}", mode_name(mode)),
        source: std::io::Error::new(kind, what),
    };
    match mode {
        CgMode::Strict if existed && moves => {
            return Err(refuse(
                std::io::ErrorKind::AlreadyExists,
                format!("cgroup {shown} exists (strict makes every cgroup afresh)"),
            ))
        }
        CgMode::None | CgMode::Props if !existed => {
            return Err(refuse(
                std::io::ErrorKind::NotFound,
                format!("cgroup {shown} does not exist (this mode needs it made already)"),
            ))
        }
        _ => {}
    }
    if !existed {
        std::fs::create_dir_all(dir).rat(0, format!("make cgroup {shown}"))?;
    }
    let names = names_of(ctrls);
    let Some(entry) = saved.and_then(|s| {
        s.controllers
            .iter()
            .filter(|c| {
                let mut n = c.cnames.clone();
                n.sort();
                n == names
            })
            .flat_map(|c| c.dirs.iter())
            .find(|d| d.dir_name == dumped)
    }) else {
        return Ok(());
    };
    restore_dir(dir, entry, existed, mode)
}

pub(super) fn mode_name(mode: CgMode) -> &'static str {
    match mode {
        CgMode::Ignore => "ignore",
        CgMode::None => "none",
        CgMode::Props => "props",
        CgMode::Soft | CgMode::Default => "soft",
        CgMode::Full => "full",
        CgMode::Strict => "strict",
    }
}

/// Whether `mode` writes the settings of a directory that `existed`.
pub(super) fn applies(mode: CgMode, existed: bool) -> bool {
    match mode {
        CgMode::Full | CgMode::Strict | CgMode::Props => true,
        CgMode::Soft | CgMode::Default => !existed,
        CgMode::None | CgMode::Ignore => false,
    }
}

pub(super) fn restore_dir(
    dir: &Path,
    entry: &CgroupDirEntry,
    existed: bool,
    mode: CgMode,
) -> Result<(), RestoreError> {
    let apply = applies(mode, existed);
    if apply {
        if let Some(p) = &entry.dir_perms {
            set_perms(dir, p)?;
        }
        // the subtree's controllers once the directory's own are set
        let (subtree, own): (Vec<_>, Vec<_>) =
            entry.properties.iter().partition(|p| p.name == SUBTREE);
        for p in own.into_iter().chain(subtree) {
            write_prop(dir, p)?;
        }
    }
    if matches!(mode, CgMode::None | CgMode::Props) {
        // (they make nothing: the directories below are the caller's)
        for c in &entry.children {
            let sub = dir.join(&c.dir_name);
            if sub.is_dir() {
                restore_dir(&sub, c, true, mode)?;
            }
        }
        return Ok(());
    }
    for c in &entry.children {
        let sub = dir.join(&c.dir_name);
        let there = sub.is_dir();
        if !there {
            std::fs::create_dir(&sub).rat(0, format!("make cgroup {}", sub.display()))?;
        }
        restore_dir(&sub, c, there, mode)?;
    }
    Ok(())
}

pub(super) fn set_perms(path: &Path, p: &CgroupPerms) -> Result<(), RestoreError> {
    let meta = std::fs::metadata(path).rat(0, format!("read {}", path.display()))?;
    if meta.uid() != p.uid || meta.gid() != p.gid {
        std::os::unix::fs::chown(path, Some(p.uid), Some(p.gid))
            .rat(0, format!("give {} its owner", path.display()))?;
    }
    if meta.mode() & 0o7777 != p.mode & 0o7777 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(p.mode & 0o7777))
            .rat(0, format!("give {} its mode", path.display()))?;
    }
    Ok(())
}

/// Writes one setting back, unless it is in place already.
pub(super) fn write_prop(dir: &Path, p: &CgroupPropEntry) -> Result<(), RestoreError> {
    if p.name == "cgroup.procs" || p.name == "tasks" {
        return Ok(());
    }
    let path = dir.join(&p.name);
    if !path.exists() {
        return Err(NsError::Unsupported {
            what: format!(
                "the cgroup setting {} (no such file here; {} was {:?} at dump)",
                path.display(),
                p.name,
                p.value
            ),
        }
        .in_tree_restore());
    }
    if let Some(perms) = &p.perms {
        set_perms(&path, perms)?;
    }
    let now = std::fs::read_to_string(&path).rat(0, format!("read {}", path.display()))?;
    let now = now.trim_end_matches('\n');
    if now == p.value {
        return Ok(());
    }
    let put = |file: &Path, v: &str| {
        std::fs::write(file, v).rat(0, format!("write {v:?} to {}", file.display()))
    };
    match p.name.as_str() {
        "devices.list" => {
            put(&dir.join("devices.deny"), "a")?;
            for l in p.value.lines().filter(|l| !l.trim().is_empty()) {
                put(&dir.join("devices.allow"), l)?;
            }
        }
        "memory.oom_control" => {
            let want = p
                .value
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill_disable "))
                .unwrap_or("0");
            let have = now
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill_disable "))
                .unwrap_or("0");
            if want != have {
                put(&path, want)?;
            }
        }
        "net_prio.ifpriomap" => {
            for l in p.value.lines().filter(|l| !now.lines().any(|n| n == *l)) {
                let ifname = l.split_whitespace().next().unwrap_or("");
                if !now
                    .lines()
                    .any(|n| n.split_whitespace().next() == Some(ifname))
                {
                    crate::warn!(
                        "{}: interface {ifname} is not here: its priority is not set",
                        path.display()
                    );
                    continue;
                }
                put(&path, l)?;
            }
        }
        SUBTREE => {
            for c in p.value.split_whitespace() {
                if !now.split_whitespace().any(|n| n == c) {
                    put(&path, &format!("+{c}"))?;
                }
            }
        }
        _ => put(&path, &p.value)?,
    }
    Ok(())
}
