//! A mount namespace's mounts replayed at restore by a crest child inside
//! it: made, bound or remounted in order, propagation set, the root pivoted
//! where it was.

use super::*;
use crate::error::RoomError;
use crate::ns::error::NsError;

/// Replays the mounts of `ns` as task `t`, which is inside the namespace
/// (and the pid namespace of its proc mounts, and the other namespaces of
/// its tasks) with every capability.
pub fn replay(t: &mut Tracee, ns: &MntNs, how: &Replay<'_>) -> Result<(), RestoreError> {
    let pid = t.pid();
    crate::info!("pid {pid} replays {} mounts", ns.mounts.len());
    if ns.mounts.first().is_some_and(|m| m.kind == ROOT) {
        return replay_pivoted(t, ns, how);
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .rat(pid, "read the copy's mountinfo")?;
    let current = parse_mountinfo(&text).ok_or_else(|| {
        NsError::Unsupported {
            what: "a mountinfo crest cannot read".into(),
        }
        .in_restore(pid)
    })?;
    // What the copy has that the namespace had not: gone, deepest first.
    let used = kept_in_copy(pid, ns, &current)?;
    // Nothing done here may reach crest's namespace: every mount becomes a
    // slave first, then what the namespace had (private, shared).
    let root = t.put(b"/\0").rat(pid, "write a path")?;
    t.syscall(nr::MOUNT, &[0, root, 0, libc::MS_REC | libc::MS_SLAVE, 0])
        .rat(pid, "make the copied mounts slaves")?;
    // A kept mount under another one (hidden, as a copy keeps them)
    // cannot be reached by its path: it stays a slave with its flags.
    for m in ns.mounts.iter().filter(|m| m.kind == KEPT) {
        if !reachable(pid, &m.mountpoint) {
            continue;
        }
        set_propagation(t, m, true)?;
        let was = current
            .iter()
            .find(|c| c.mountpoint == m.mountpoint && c.root == m.root)
            .map(|c| mount_flags(&c.mnt_opts));
        let want = mount_flags(&m.mnt_opts);
        if was.is_some_and(|w| w != want) {
            remount(t, &m.mountpoint, want)?;
        }
    }
    let mut gone: Vec<&MountInfo> = current
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(c, _)| c)
        .collect();
    gone.sort_by_key(|c| std::cmp::Reverse(c.mountpoint.matches('/').count()));
    for c in gone.into_iter().filter(|c| reachable(pid, &c.mountpoint)) {
        crate::debug!("pid {pid} unmounts {}", c.mountpoint);
        let p = t.put(&cstr(&c.mountpoint)).rat(pid, "write a path")?;
        t.syscall(nr::UMOUNT2, &[p, libc::MNT_DETACH as u64]).rat(
            pid,
            format!("unmount {} (not in the namespace)", c.mountpoint),
        )?;
    }
    for m in ns.mounts.iter().filter(|m| m.kind != KEPT) {
        crate::debug!("pid {pid} mounts {} at {}", m.fstype, m.mountpoint);
        mount_one(t, m, "", how, ns.contents.contains_key(&m.mnt_id))?;
        if let Some(items) = ns.contents.get(&m.mnt_id) {
            tmpfs::fill_tree(pid, &m.mountpoint, items)?;
            seal(t, m, &m.mountpoint)?;
        }
    }
    for m in ns.mounts.iter().filter(|m| m.kind != KEPT) {
        set_propagation(t, m, false)?;
    }
    Ok(())
}

/// Which mounts of the copy (`current`) are the namespace's kept ones
/// (each found once); a kept mount missing from the copy is refused.
fn kept_in_copy(pid: i32, ns: &MntNs, current: &[MountInfo]) -> Result<Vec<bool>, RestoreError> {
    let mut used = vec![false; current.len()];
    for m in ns.mounts.iter().filter(|m| m.kind == KEPT) {
        let found = current.iter().enumerate().position(|(j, c)| {
            !used[j] && c.mountpoint == m.mountpoint && c.root == m.root && c.fstype == m.fstype
        });
        match found {
            Some(j) => used[j] = true,
            None => {
                return Err(NsError::Unsupported {
                    what: format!(
                        "the mount of {} ({}) at {} is not here to keep",
                        m.fstype, m.source, m.mountpoint
                    ),
                }
                .in_restore(pid))
            }
        }
    }
    Ok(used)
}

/// What a restore was told about mounts: CRIU's `--root` and
/// `--external mnt[KEY]:PATH`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Replay<'a> {
    pub root: Option<&'a str>,
    pub externals: &'a [(String, String)],
    /// How the tree's cgroups moved (`cgroup::moves`).
    pub cgroup_moves: &'a [(String, String, String)],
}

/// A namespace that pivot_root'ed into a root of its own: `--root` is bound
/// onto itself and every mount made under it, then it becomes the
/// namespace's root (`pivot_root`) and the copy of crest's mounts goes.
pub(super) fn replay_pivoted(
    t: &mut Tracee,
    ns: &MntNs,
    how: &Replay<'_>,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let root = how.root.ok_or_else(|| {
        NsError::Unsupported {
            what: "a tree that pivot_root'ed into a root of its own without --root DIR".into(),
        }
        .in_restore(pid)
    })?;
    let root = root.trim_end_matches('/');
    let a = put_strs(t, &["/"])?;
    t.syscall(nr::MOUNT, &[0, a[0], 0, libc::MS_REC | libc::MS_SLAVE, 0])
        .rat(pid, "make the copied mounts slaves")?;
    let a = put_strs(t, &[root])?;
    t.syscall(nr::MOUNT, &[a[0], a[0], 0, libc::MS_BIND, 0])
        .rat(pid, format!("bind the root {root}"))?;
    let top = &ns.mounts[0];
    let flags = mount_flags(&top.mnt_opts);
    if flags != 0 {
        remount(t, root, flags)?;
    }
    for m in ns.mounts.iter().skip(1) {
        crate::debug!("pid {pid} mounts {} at {root}{}", m.fstype, m.mountpoint);
        mount_one(t, m, root, how, ns.contents.contains_key(&m.mnt_id))?;
        if let Some(items) = ns.contents.get(&m.mnt_id) {
            let target = format!("{root}{}", m.mountpoint);
            tmpfs::fill_tree(pid, &target, items)?;
            seal(t, m, &target)?;
        }
    }
    let a = put_strs(t, &[root, ".", "/"])?;
    t.syscall(nr::CHDIR, &[a[0]])
        .rat(pid, format!("chdir {root}"))?;
    t.syscall(nr::PIVOT_ROOT, &[a[1], a[1]])
        .rat(pid, format!("pivot_root into {root}"))?;
    t.syscall(nr::UMOUNT2, &[a[1], libc::MNT_DETACH as u64])
        .rat(pid, "detach crest's mounts")?;
    t.syscall(nr::CHDIR, &[a[2]]).rat(pid, "chdir /")?;
    set_propagation(t, top, false)?;
    for m in ns.mounts.iter().skip(1) {
        set_propagation(t, m, false)?;
    }
    Ok(())
}

/// Gives mount `m` its dumped propagation. A kept mount is a slave of
/// crest's already: it stays one if it was, else becomes private first.
pub(super) fn set_propagation(
    t: &mut Tracee,
    m: &CrestMountEntry,
    kept: bool,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let mut kinds = Vec::new();
    if m.master.is_none() && (kept || m.shared.is_some()) {
        kinds.push(libc::MS_PRIVATE);
    }
    if m.master.is_some() && !kept {
        kinds.push(libc::MS_SLAVE);
    }
    if m.shared.is_some() {
        kinds.push(libc::MS_SHARED);
    }
    if m.unbindable == Some(true) {
        kinds.push(libc::MS_UNBINDABLE);
    }
    for k in kinds {
        let p = t.put(&cstr(&m.mountpoint)).rat(pid, "write a path")?;
        t.syscall(nr::MOUNT, &[0, p, 0, k, 0])
            .rat(pid, format!("set the propagation of {}", m.mountpoint))?;
    }
    Ok(())
}

/// Whether `mountpoint` resolves in `pid`'s mount namespace (a mount
/// hidden under another one does not).
pub(super) fn reachable(pid: i32, mountpoint: &str) -> bool {
    Path::new(&format!("/proc/{pid}/root{mountpoint}")).exists()
}

pub(super) fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

pub(super) fn remount(t: &mut Tracee, mountpoint: &str, flags: u64) -> Result<(), RestoreError> {
    let pid = t.pid();
    let p = t.put(&cstr(mountpoint)).rat(pid, "write a path")?;
    t.syscall(
        nr::MOUNT,
        &[0, p, 0, libc::MS_REMOUNT | libc::MS_BIND | flags, 0],
    )
    .rat(pid, format!("remount {mountpoint} with its flags"))?;
    Ok(())
}

/// Filesystem options to pass again, without rw/ro. `uid=`/`gid=` values
/// are ids as crest saw them: the mounter reads them in its own user
/// namespace, so they go through `inside` (`(is_gid, id)` → the id there);
/// one it cannot name is left out (the files restore sets the owner).
pub(super) fn data_of(m: &CrestMountEntry, inside: &dyn Fn(bool, u32) -> Option<u32>) -> String {
    m.super_opts
        .split(',')
        .filter(|o| *o != "rw" && *o != "ro" && !o.is_empty())
        .filter_map(|o| {
            for (key, gid) in [("uid=", false), ("gid=", true)] {
                if let Some(v) = o.strip_prefix(key).and_then(|v| v.parse::<u32>().ok()) {
                    return inside(gid, v).map(|n| format!("{key}{n}"));
                }
            }
            Some(o.to_string())
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `pid`'s user namespace's view of crest's uid (or gid) `id`, from its
/// `uid_map`/`gid_map` as crest reads them.
pub(super) fn id_inside(pid: i32, gid: bool, id: u32) -> Option<u32> {
    let file = if gid { "gid_map" } else { "uid_map" };
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines().find_map(|l| {
        let v: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let [inside, outside, count] = v[..] else {
            return None;
        };
        let id = u64::from(id);
        (outside <= id && id < outside + count).then(|| (inside + id - outside) as u32)
    })
}

/// Writes NUL-terminated strings into the task's scratch memory at once
/// (each `put` reuses the same scratch) and returns their addresses.
pub(super) fn put_strs(t: &mut Tracee, strs: &[&str]) -> Result<Vec<u64>, RestoreError> {
    let pid = t.pid();
    let mut buf = Vec::new();
    let mut offs = Vec::with_capacity(strs.len());
    for s in strs {
        offs.push(buf.len() as u64);
        buf.extend_from_slice(&cstr(s));
    }
    let base = t.put(&buf).rat(pid, "write mount arguments")?;
    Ok(offs.into_iter().map(|o| base + o).collect())
}

/// A read-only filesystem crest filled (a runtime's masked directories are
/// read-only tmpfs mounts): made read-only once its files are in.
pub(super) fn seal(t: &mut Tracee, m: &CrestMountEntry, target: &str) -> Result<(), RestoreError> {
    let flags = mount_flags(&m.mnt_opts);
    if flags & libc::MS_RDONLY != 0 {
        remount(t, target, flags)?;
    }
    Ok(())
}

/// Where mount `m` (made at `prefix`) is bound from, if it is a bind:
/// another of the tree's mounts, crest's own mount at the same place, a
/// cgroup v1 hierarchy, an external mount (named by `--external`, or
/// found by `--ext-mount-map auto`).
fn bound_from(
    pid: i32,
    m: &CrestMountEntry,
    prefix: &str,
    how: &Replay<'_>,
) -> Result<Option<String>, RestoreError> {
    Ok(match m.kind {
        BIND => Some(format!(
            "{prefix}{}",
            m.bind_source.as_deref().unwrap_or("/")
        )),
        // under a root of its own, a mount crest has too at the same
        // place is bound from crest's
        KEPT => Some(m.mountpoint.clone()),
        CGROUP_V1 => {
            let info = std::fs::read_to_string("/proc/self/mountinfo")
                .rat(pid, "read crest's mountinfo")?;
            Some(
                crate::ns::cgroup::v1_bind_source(&m.super_opts, &m.root, how.cgroup_moves, &info)
                    .ok_or_else(|| {
                        NsError::Unsupported {
                            what: format!(
                            "the cgroup mount at {} ({}, cgroup {}) without that hierarchy here",
                            m.mountpoint, m.super_opts, m.root
                        ),
                        }
                        .in_restore(pid)
                    })?,
            )
        }
        EXTERNAL if m.external_key.as_deref() == Some(AUTO_KEY) => {
            // found by --ext-mount-map auto: where crest saw its files
            Some(m.bind_source.clone().ok_or_else(|| {
                NsError::Unsupported {
                    what: format!(
                        "the autodetected external mount {} without a path",
                        m.mountpoint
                    ),
                }
                .in_restore(pid)
            })?)
        }
        EXTERNAL => {
            let key = m.external_key.as_deref().unwrap_or("");
            let path = how
                .externals
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, p)| p.clone());
            Some(path.ok_or_else(|| {
                NsError::Unsupported {
                    what: format!(
                        "the external mount {} (key {key:?}) without --external mnt[{key}]:PATH",
                        m.mountpoint
                    ),
                }
                .in_restore(pid)
            })?)
        }
        _ => None,
    })
}

/// Makes mount `m` at `prefix` + its mountpoint; one crest fills next
/// (`to_fill`) stays writable until [`seal`].
pub(super) fn mount_one(
    t: &mut Tracee,
    m: &CrestMountEntry,
    prefix: &str,
    how: &Replay<'_>,
    to_fill: bool,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let flags = mount_flags(&m.mnt_opts);
    let target = format!("{prefix}{}", m.mountpoint);
    let bind_from = bound_from(pid, m, prefix, how)?;
    if let Some(src) = bind_from {
        if m.kind == BIND {
            // a console's slave bound elsewhere: the pty must exist first
            devpts::premake(pid, &src);
        }
        let a = put_strs(t, &[&src, &target])?;
        t.syscall(nr::MOUNT, &[a[0], a[1], 0, libc::MS_BIND, 0])
            .rat(pid, format!("bind {src} at {target}"))?;
        if flags != 0 {
            remount(t, &target, flags)?;
        }
        return Ok(());
    }
    let data = data_of(m, &|gid, id| id_inside(pid, gid, id));
    let flags = if to_fill {
        flags & !libc::MS_RDONLY
    } else {
        flags
    };
    let a = put_strs(t, &[&m.source, &target, &m.fstype, &data])?;
    t.syscall(nr::MOUNT, &[a[0], a[1], a[2], flags, a[3]])
        .rat(pid, format!("mount {} at {target} ({data})", m.fstype))?;
    Ok(())
}
