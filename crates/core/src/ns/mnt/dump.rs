//! A mount namespace at dump: its mounts from mountinfo, checked and
//! classified (kept from the namespace it was copied from, new, bound,
//! external, the root), with what a restore needs to make them again.

use super::*;

/// Reads the mounts of `pid`'s mount namespace against those of the
/// namespace it was copied from: `base`'s (a task in the tree's mount
/// namespace `base.1`), or crest's. Long because a mount's kind is one
/// ordered chain of rules (the first that fits decides), best read whole.
pub fn collect(pid: i32, base: Option<(i32, u32)>, o: &MntOpts) -> Result<MntNs, DumpError> {
    let (externals, describe) = (&o.externals, o.describe);
    let read = |path: String| -> Result<Vec<MountInfo>, DumpError> {
        let text = std::fs::read_to_string(&path).at(pid, "read mountinfo")?;
        parse_mountinfo(&text).ok_or_else(|| {
            NsError::Unsupported {
                what: format!("a {path} crest cannot read"),
            }
            .in_dump(pid)
        })
    };
    let theirs = read(format!("/proc/{pid}/mountinfo"))?;
    let mine = match base {
        Some((b, _)) => read(format!("/proc/{b}/mountinfo"))?,
        None => read("/proc/self/mountinfo".into())?,
    };
    refuse_chroot(pid)?;
    let mut used = vec![false; mine.len()];
    let mut out = MntNs {
        as_pid: pid,
        base: base.map(|b| b.1),
        ..MntNs::default()
    };
    for (i, m) in theirs.iter().enumerate() {
        if i > 0 && o.skipped(&m.mountpoint) {
            continue; // --skip-mnt
        }
        let kept = mine.iter().enumerate().position(|(j, c)| {
            !used[j]
                && c.dev == m.dev
                && c.root == m.root
                && c.mountpoint == m.mountpoint
                && c.fstype == m.fstype
        });
        let mut e = entry_of(m);
        let external = externals
            .iter()
            .find(|(mp, _)| *mp == m.mountpoint)
            .map(|(_, key)| key.clone());
        if let Some(j) = kept {
            used[j] = true;
        } else if i == 0 {
            // pivot_root'ed into a root of its own: restore takes it from
            // --root, as CRIU does
            e.kind = ROOT;
        } else if m.fstype == "cgroup" {
            // (a runtime declares these external too: crest binds them
            // from where the tree's cgroup is at restore either way)
            e.kind = CGROUP_V1;
        } else if let Some(key) = external {
            // declared external: bound from what the restore names, as
            // CRIU does (also runc's masked paths, which it binds to its
            // caller's /dev/null)
            e.kind = EXTERNAL;
            e.external_key = Some(key);
        } else if let Some(src) = bind_source(&theirs[..i], m) {
            e.kind = BIND;
            e.bind_source = Some(src);
        } else if describe && !o.fresh(&m.fstype) {
            // `crest show` describes what a dump would want declared
            e.kind = EXTERNAL;
            e.external_key = Some(m.mountpoint.clone());
        } else if let Some(path) = (o.auto && mine.iter().any(|c| c.dev == m.dev))
            .then(|| seen_by_crest(m))
            .flatten()
        {
            e.kind = EXTERNAL;
            e.external_key = Some(AUTO_KEY.into());
            e.bind_source = Some(path);
        } else if mine.iter().any(|c| c.dev == m.dev) {
            return Err(NsError::Unsupported { what: format!(
                    "a bind mount at {} of {} from outside the mount namespace (declare it with --external mnt[{}]:KEY)",
                    m.mountpoint, m.root, m.mountpoint
                ) }.in_dump(pid));
        } else if o.fresh(&m.fstype) {
            e.kind = NEW;
            e.has_contents = fresh_contents(pid, m, &mut out)?;
        } else {
            return Err(NsError::Unsupported { what: format!(
                    "a mount of {} ({}) at {} in a mount namespace of the tree's own (declare it with --external mnt[{}]:KEY)",
                    m.fstype, m.source, m.mountpoint, m.mountpoint
                ) }.in_dump(pid));
        }
        out.mounts.push(e);
    }
    Ok(out)
}

/// The mount entry of `m` as mountinfo shows it, of kind `KEPT` until
/// classified.
fn entry_of(m: &MountInfo) -> CrestMountEntry {
    CrestMountEntry {
        mnt_id: m.id,
        parent_id: m.parent,
        mountpoint: m.mountpoint.clone(),
        root: m.root.clone(),
        fstype: m.fstype.clone(),
        source: m.source.clone(),
        mnt_opts: m.mnt_opts.clone(),
        super_opts: m.super_opts.clone(),
        shared: m.shared,
        master: m.master,
        unbindable: Some(m.unbindable),
        kind: KEPT,
        bind_source: None,
        has_contents: None,
        external_key: None,
    }
}

/// What a new mount `m` of the tree holds beyond its options: a tmpfs's
/// (or ramfs's) files, read into `out` (true then), a proc mount's pid
/// namespace (one per mount namespace).
fn fresh_contents(pid: i32, m: &MountInfo, out: &mut MntNs) -> Result<Option<bool>, DumpError> {
    let mut has = None;
    if m.fstype == "tmpfs" || m.fstype == "ramfs" {
        let items = tmpfs::read_tree(pid, &m.mountpoint, m.dev)?;
        out.contents.insert(m.id, items);
        has = Some(true);
    }
    if m.fstype == "proc" {
        let ns = proc_pidns(pid, &m.mountpoint)?;
        if out.proc_pidns_ino.is_some_and(|p| p != ns) {
            return Err(NsError::Unsupported {
                what: "proc mounts of two pid namespaces in one mount namespace".into(),
            }
            .in_dump(pid));
        }
        out.proc_pidns_ino = Some(ns);
    }
    Ok(has)
}

/// Refuses a task whose root is not its mount namespace's root (a chroot,
/// or a pivot_root crest does not follow).
fn refuse_chroot(pid: i32) -> Result<(), DumpError> {
    let root = procfs_link(pid, "root")?;
    if root != "/" {
        return Err(NsError::Unsupported {
            what: format!(
                "a task whose root is {root} (chroot or pivot_root; --root is not supported yet)"
            ),
        }
        .in_dump(pid));
    }
    Ok(())
}

pub(super) fn procfs_link(pid: i32, what: &str) -> Result<String, DumpError> {
    std::fs::read_link(format!("/proc/{pid}/{what}"))
        .map(|p| p.to_string_lossy().into_owned())
        .at(pid, "read a /proc link")
}

/// The pid namespace a proc mount shows: that of its pid 1.
pub(super) fn proc_pidns(pid: i32, mountpoint: &str) -> Result<u64, DumpError> {
    let path = format!("/proc/{pid}/root{mountpoint}/1/ns/pid");
    crate::ns::user::ino_of(&path).map_err(|e| {
        NsError::Unsupported {
            what: format!(
                "a proc mount at {mountpoint} whose pid namespace crest cannot tell ({path}: {e})"
            ),
        }
        .in_dump(pid)
    })
}

/// The path, inside the namespace, of what `m` binds: an earlier mount of
/// the same filesystem whose root holds `m`'s root.
pub(super) fn bind_source(earlier: &[MountInfo], m: &MountInfo) -> Option<String> {
    earlier
        .iter()
        .rev()
        .filter(|s| s.dev == m.dev)
        .find_map(|s| {
            let rest = if s.root == "/" {
                m.root.as_str()
            } else {
                let r = m.root.strip_prefix(s.root.as_str())?;
                if !(r.is_empty() || r.starts_with('/')) {
                    return None;
                }
                r
            };
            let base = s.mountpoint.trim_end_matches('/');
            let path = format!("{base}{rest}");
            Some(if path.is_empty() { "/".into() } else { path })
        })
}
