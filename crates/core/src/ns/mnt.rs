//! The mounts of a mount namespace of the tree's own.
//!
//! A tree made with `unshare -m` starts from a copy of its parent's mounts
//! and changes them. Dump compares the namespace's mountinfo with crest's:
//! a mount crest has too (same filesystem, root and place) is *kept*; one
//! whose filesystem crest or an earlier mount already shows is a *bind*
//! (its source is found as a path inside the namespace); any other is a
//! *new* filesystem (proc, sysfs, tmpfs, devpts, mqueue, cgroup2, ramfs),
//! and a tmpfs's files are saved. A namespace copied from another of the
//! tree's (a container in a container, both with `-m`) is compared with
//! that one instead of crest's. Restore starts from a copy again (the
//! namespace helper's `unshare`, made from inside the namespace it was
//! copied from when it is the tree's), and a crest child made in the pid
//! namespace of its proc mounts (so they show the right tasks), inside
//! the other namespaces of its tasks, replays it before any task is
//! transformed: makes every copied mount a slave, unmounts what the
//! namespace no longer has, mounts the new and bind mounts in their order
//! (refilling each tmpfs right after its mount), then sets per-mount flags
//! and propagation.
//!
//! Images: `mountpoints-<ns id>.img` (CRIU's `mnt_entry` per mount, each
//! carrying crest's `crest_mount_entry`, the first also the namespace's
//! `crest_mnt_ns_head`; an older crest's `crest-mnt-<ns id>.img` is still
//! read) and `crest-tmpfs-<ns id>-<mnt id>.img` (a `crest_fs_entry` per
//! file, a regular file's bytes after its entry, in CRIU's `pipes-data`
//! framing).

use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::opts::mnt_externals;
use crate::procfs::{parse_mountinfo, MountInfo};
pub mod devpts;
pub mod tmpfs;

use crest_images::carry::MountsReader;
use crest_images::pb::crest::{CrestMntNsHead, CrestMountEntry};
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::path::Path;
pub use tmpfs::FsItem;

/// mount(2) flags of per-mount options.
fn mount_flags(opts: &str) -> u64 {
    let mut fl = 0u64;
    for o in opts.split(',') {
        fl |= match o {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            "nosymfollow" => 256,
            _ => 0,
        };
    }
    // mountinfo shows no atime option for strictatime; mount(2) without
    // one gives relatime
    if fl & (libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME) == 0 {
        fl |= libc::MS_STRICTATIME;
    }
    fl
}

/// Filesystems crest mounts anew (they need no device).
const NEW_KINDS: [&str; 7] = [
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup2", "ramfs",
];

const KEPT: u32 = 0;
const NEW: u32 = 1;
const BIND: u32 = 2;
const ROOT: u32 = 3;
const EXTERNAL: u32 = 4;
/// A cgroup v1 mount (of a cgroup of its hierarchy, as a runtime mounts a
/// container's): bound at restore from crest's mount of the hierarchy,
/// where the tree's cgroup is now.
const CGROUP_V1: u32 = 5;

/// How a dump treats mounts, as the command line says.
#[derive(Debug, Clone, Default)]
pub struct MntOpts {
    /// `--external mnt[MP]:KEY`: (mountpoint, key).
    pub externals: Vec<(String, String)>,
    /// `crest show`: a mount from outside is described, not refused.
    pub describe: bool,
    /// `--ext-mount-map auto` (or `--external mnt[]`): a bind mount of
    /// files from outside the namespace is external by itself, bound at
    /// restore from where crest's namespace shows the same files (CRIU's
    /// autodetected external mounts).
    pub auto: bool,
    /// `--skip-mnt PATH`: the mount at PATH and those below it are left
    /// out.
    pub skip: Vec<String>,
    /// `--enable-fs FS[,FS]`: filesystems of these types (or "all") are
    /// mounted afresh, empty, at restore.
    pub enable_fs: Vec<String>,
}

impl MntOpts {
    /// The options of a dump: `external` is its `--external` list.
    pub fn of_dump(external: &[String], auto: bool, skip: &[String], enable_fs: &[String]) -> Self {
        MntOpts {
            externals: mnt_externals(external),
            describe: false,
            auto: auto || external.iter().any(|e| e == "mnt[]"),
            skip: skip.to_vec(),
            enable_fs: enable_fs
                .iter()
                .flat_map(|f| f.split(','))
                .filter(|f| !f.is_empty())
                .map(String::from)
                .collect(),
        }
    }

    fn skipped(&self, mountpoint: &str) -> bool {
        self.skip.iter().any(|s| {
            let s = s.trim_end_matches('/');
            mountpoint == s || s.is_empty() || mountpoint.starts_with(&format!("{s}/"))
        })
    }

    fn fresh(&self, fstype: &str) -> bool {
        NEW_KINDS.contains(&fstype) || self.enable_fs.iter().any(|f| f == fstype || f == "all")
    }
}

/// Whether the kernel lists `fstype` as a filesystem that needs no device
/// (`nodev` in `/proc/filesystems`).
fn deviceless(fstype: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split_once('\t') == Some(("nodev", fstype)))
    })
}

/// The key of an external mount found by `--ext-mount-map auto` (CRIU's):
/// its source is crest's path, in `bind_source`.
pub const AUTO_KEY: &str = "CRIU:AUTODETECTED";

/// Where crest's own namespace shows what `m` binds: a mount of the same
/// filesystem whose root holds `m`'s root, and the rest of the path.
fn seen_by_crest(m: &MountInfo) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mine = parse_mountinfo(&text)?;
    mine.iter()
        .filter(|c| c.dev == m.dev)
        .filter_map(|c| {
            // (c's root "/usr" holds "/usr" and "/usr/share", not "/usrx")
            let root = c.root.trim_end_matches('/');
            let rest = m.root.strip_prefix(root)?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            Some((
                c.root.len(),
                format!("{}{rest}", c.mountpoint.trim_end_matches('/')),
            ))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| if p.is_empty() { "/".into() } else { p })
}

/// One mount namespace's mounts.
#[derive(Debug, Clone, Default)]
pub struct MntNs {
    /// A task of the namespace (its other namespaces are entered by the
    /// task that replays the mounts).
    pub as_pid: i32,
    pub mounts: Vec<CrestMountEntry>,
    /// mnt id → the files of a new tmpfs.
    pub contents: HashMap<u32, Vec<FsItem>>,
    /// The pid namespace (nsfs inode) of the new proc mounts (dump only).
    pub proc_pidns_ino: Option<u64>,
    /// The pid namespace of the new proc mounts (tree id; None: crest's).
    pub proc_pidns: Option<u32>,
    /// The mount namespace this one is a copy of (tree id; None: crest's).
    pub base: Option<u32>,
}

pub(super) fn refuse(pid: i32, what: String) -> DumpError {
    DumpError::Unsupported { pid, what }
}

/// Reads the mounts of `pid`'s mount namespace against those of the
/// namespace it was copied from: `base`'s (a task in the tree's mount
/// namespace `base.1`), or crest's.
pub fn collect(pid: i32, base: Option<(i32, u32)>, o: &MntOpts) -> Result<MntNs, DumpError> {
    let (externals, describe) = (&o.externals, o.describe);
    let read = |path: String| -> Result<Vec<MountInfo>, DumpError> {
        let text = std::fs::read_to_string(&path).at(pid, "read mountinfo")?;
        parse_mountinfo(&text).ok_or_else(|| refuse(pid, format!("a {path} crest cannot read")))
    };
    let theirs = read(format!("/proc/{pid}/mountinfo"))?;
    let mine = match base {
        Some((b, _)) => read(format!("/proc/{b}/mountinfo"))?,
        None => read("/proc/self/mountinfo".into())?,
    };
    let root = procfs_link(pid, "root")?;
    if root != "/" {
        return Err(refuse(
            pid,
            format!(
                "a task whose root is {root} (chroot or pivot_root; --root is not supported yet)"
            ),
        ));
    }
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
        let mut e = CrestMountEntry {
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
        };
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
            return Err(refuse(
                pid,
                format!(
                    "a bind mount at {} of {} from outside the mount namespace (declare it with --external mnt[{}]:KEY)",
                    m.mountpoint, m.root, m.mountpoint
                ),
            ));
        } else if o.fresh(&m.fstype) {
            e.kind = NEW;
            if m.fstype == "tmpfs" || m.fstype == "ramfs" {
                let items = tmpfs::read_tree(pid, &m.mountpoint, m.dev)?;
                out.contents.insert(m.id, items);
                e.has_contents = Some(true);
            }
            if m.fstype == "proc" {
                let ns = proc_pidns(pid, &m.mountpoint)?;
                if out.proc_pidns_ino.is_some_and(|p| p != ns) {
                    return Err(refuse(
                        pid,
                        "proc mounts of two pid namespaces in one mount namespace".into(),
                    ));
                }
                out.proc_pidns_ino = Some(ns);
            }
        } else {
            return Err(refuse(
                pid,
                format!(
                    "a mount of {} ({}) at {} in a mount namespace of the tree's own (declare it with --external mnt[{}]:KEY)",
                    m.fstype, m.source, m.mountpoint, m.mountpoint
                ),
            ));
        }
        out.mounts.push(e);
    }
    Ok(out)
}

fn procfs_link(pid: i32, what: &str) -> Result<String, DumpError> {
    std::fs::read_link(format!("/proc/{pid}/{what}"))
        .map(|p| p.to_string_lossy().into_owned())
        .at(pid, "read a /proc link")
}

/// The pid namespace a proc mount shows: that of its pid 1.
fn proc_pidns(pid: i32, mountpoint: &str) -> Result<u64, DumpError> {
    let path = format!("/proc/{pid}/root{mountpoint}/1/ns/pid");
    super::user::ino_of(&path).map_err(|e| {
        refuse(
            pid,
            format!(
                "a proc mount at {mountpoint} whose pid namespace crest cannot tell ({path}: {e})"
            ),
        )
    })
}

/// The path, inside the namespace, of what `m` binds: an earlier mount of
/// the same filesystem whose root holds `m`'s root.
fn bind_source(earlier: &[MountInfo], m: &MountInfo) -> Option<String> {
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

/// Writes `mountpoints-<id>.img` (CRIU's `mnt_entry` per mount, carrying
/// crest's) and the tmpfs images.
pub fn write(dir: &Path, id: u32, ns: &MntNs) -> Result<(), DumpError> {
    let head = CrestMntNsHead {
        executor: ns.as_pid,
        count: ns.mounts.len() as u32,
        proc_pidns: ns.proc_pidns,
        base: ns.base,
    };
    crest_images::carry::write_mounts(dir, id, head, &ns.mounts)?;
    for (mnt, items) in &ns.contents {
        tmpfs::write(dir, id, *mnt, items)?;
    }
    Ok(())
}

/// Reads a mount namespace's images back (`mountpoints-<id>.img`, or an
/// older crest's `crest-mnt-<id>.img`), bounding every count and size.
pub fn read(dir: &Path, id: u32) -> Result<MntNs, RestoreError> {
    let bad = |file: &str, what: String| RestoreError::BadImage {
        pid: 0,
        file: file.to_string(),
        what,
    };
    let mut r = MountsReader::open(dir, id)?;
    let name = r.name().to_string();
    let head = r.head();
    if head.count > 65536 {
        return Err(bad(&name, format!("{} mounts", head.count)));
    }
    let mut ns = MntNs {
        as_pid: head.executor,
        proc_pidns: head.proc_pidns,
        base: head.base,
        ..MntNs::default()
    };
    while let Some(m) = r.next_mount()? {
        if ns.mounts.len() >= head.count as usize {
            return Err(bad(
                &name,
                format!("more mounts than the {} announced", head.count),
            ));
        }
        if !m.mountpoint.starts_with('/')
            || m.kind > CGROUP_V1
            || m.mountpoint.split('/').any(|c| c == "..")
        {
            return Err(bad(
                &name,
                format!(
                    "mount {} at {:?} of kind {}",
                    m.mnt_id, m.mountpoint, m.kind
                ),
            ));
        }
        if m.kind == EXTERNAL && m.external_key.as_deref().is_none_or(str::is_empty) {
            return Err(bad(
                &name,
                format!("external mount {} without a key", m.mnt_id),
            ));
        }
        if m.kind == BIND && !m.bind_source.as_deref().is_some_and(|s| s.starts_with('/')) {
            return Err(bad(
                &name,
                format!("bind mount {} without a source path", m.mnt_id),
            ));
        }
        // (a filesystem --enable-fs let the dump take is made afresh too,
        // but only one that needs no device: images never mount a disk)
        if m.kind == NEW && !NEW_KINDS.contains(&m.fstype.as_str()) && !deviceless(&m.fstype) {
            return Err(bad(&name, format!("new mount of {:?}", m.fstype)));
        }
        if m.has_contents == Some(true) {
            let items = tmpfs::read_contents(dir, id, m.mnt_id)?;
            ns.contents.insert(m.mnt_id, items);
        }
        ns.mounts.push(m);
    }
    if ns.mounts.len() != head.count as usize {
        return Err(bad(
            &name,
            format!("{} of {} mounts", ns.mounts.len(), head.count),
        ));
    }
    Ok(ns)
}

// ---- restore ------------------------------------------------------------

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
    let current = parse_mountinfo(&text).ok_or_else(|| RestoreError::Unsupported {
        pid,
        what: "a mountinfo crest cannot read".into(),
    })?;
    // What the copy has that the namespace had not: gone, deepest first.
    let mut used = vec![false; current.len()];
    for m in ns.mounts.iter().filter(|m| m.kind == KEPT) {
        let found = current.iter().enumerate().position(|(j, c)| {
            !used[j] && c.mountpoint == m.mountpoint && c.root == m.root && c.fstype == m.fstype
        });
        match found {
            Some(j) => used[j] = true,
            None => {
                return Err(RestoreError::Unsupported {
                    pid,
                    what: format!(
                        "the mount of {} ({}) at {} is not here to keep",
                        m.fstype, m.source, m.mountpoint
                    ),
                })
            }
        }
    }
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
fn replay_pivoted(t: &mut Tracee, ns: &MntNs, how: &Replay<'_>) -> Result<(), RestoreError> {
    let pid = t.pid();
    let root = how.root.ok_or_else(|| RestoreError::Unsupported {
        pid,
        what: "a tree that pivot_root'ed into a root of its own without --root DIR".into(),
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
fn set_propagation(t: &mut Tracee, m: &CrestMountEntry, kept: bool) -> Result<(), RestoreError> {
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
fn reachable(pid: i32, mountpoint: &str) -> bool {
    Path::new(&format!("/proc/{pid}/root{mountpoint}")).exists()
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn remount(t: &mut Tracee, mountpoint: &str, flags: u64) -> Result<(), RestoreError> {
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
fn data_of(m: &CrestMountEntry, inside: &dyn Fn(bool, u32) -> Option<u32>) -> String {
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
fn id_inside(pid: i32, gid: bool, id: u32) -> Option<u32> {
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
fn put_strs(t: &mut Tracee, strs: &[&str]) -> Result<Vec<u64>, RestoreError> {
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
fn seal(t: &mut Tracee, m: &CrestMountEntry, target: &str) -> Result<(), RestoreError> {
    let flags = mount_flags(&m.mnt_opts);
    if flags & libc::MS_RDONLY != 0 {
        remount(t, target, flags)?;
    }
    Ok(())
}

/// Makes mount `m` at `prefix` + its mountpoint; one crest fills next
/// (`to_fill`) stays writable until [`seal`].
fn mount_one(
    t: &mut Tracee,
    m: &CrestMountEntry,
    prefix: &str,
    how: &Replay<'_>,
    to_fill: bool,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let flags = mount_flags(&m.mnt_opts);
    let target = format!("{prefix}{}", m.mountpoint);
    let bind_from = match m.kind {
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
                super::cgroup::v1_bind_source(&m.super_opts, &m.root, how.cgroup_moves, &info)
                    .ok_or_else(|| RestoreError::Unsupported {
                        pid,
                        what: format!(
                            "the cgroup mount at {} ({}, cgroup {}) without that hierarchy here",
                            m.mountpoint, m.super_opts, m.root
                        ),
                    })?,
            )
        }
        EXTERNAL if m.external_key.as_deref() == Some(AUTO_KEY) => {
            // found by --ext-mount-map auto: where crest saw its files
            Some(
                m.bind_source
                    .clone()
                    .ok_or_else(|| RestoreError::Unsupported {
                        pid,
                        what: format!(
                            "the autodetected external mount {} without a path",
                            m.mountpoint
                        ),
                    })?,
            )
        }
        EXTERNAL => {
            let key = m.external_key.as_deref().unwrap_or("");
            let path = how
                .externals
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, p)| p.clone());
            Some(path.ok_or_else(|| RestoreError::Unsupported {
                pid,
                what: format!(
                    "the external mount {} (key {key:?}) without --external mnt[{key}]:PATH",
                    m.mountpoint
                ),
            })?)
        }
        _ => None,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
40 22 0:35 / /mnt\\040x rw,relatime master:3 - tmpfs none rw,size=1024k,uid=0
41 40 8:1 /srv/data /mnt\\040x/data ro,relatime unbindable - ext4 /dev/sda1 rw
";

    #[test]
    fn mountinfo_lines() {
        let m = parse_mountinfo(SAMPLE).expect("parses");
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].dev, (8, 1));
        assert_eq!(m[0].shared, Some(1));
        assert_eq!(m[2].mountpoint, "/mnt x");
        assert_eq!(m[2].master, Some(3));
        assert_eq!(m[2].super_opts, "rw,size=1024k,uid=0");
        assert!(m[3].unbindable);
        assert_eq!(
            mount_flags(&m[3].mnt_opts),
            libc::MS_RDONLY | libc::MS_RELATIME
        );
        assert_eq!(parse_mountinfo("1 2 8:1 / /\n"), None);
        assert_eq!(parse_mountinfo("x 2 8:1 / / rw - ext4 a rw\n"), None);
    }

    #[test]
    fn bind_sources_are_paths_in_the_namespace() {
        let m = parse_mountinfo(SAMPLE).expect("parses");
        assert_eq!(bind_source(&m[..3], &m[3]), Some("/srv/data".into()));
        let mut sub = m[3].clone();
        sub.root = "/srv/data/x".into();
        let mut src = m[3].clone();
        src.mountpoint = "/data".into();
        assert_eq!(bind_source(&[src.clone()], &sub), Some("/data/x".into()));
        sub.root = "/srv/database".into();
        assert_eq!(
            bind_source(&[src], &sub),
            None,
            "a prefix that is not a parent"
        );
    }

    #[test]
    fn mount_options_with_ids_seen_from_inside() {
        // a namespace mapping 0..65536 to 100000..
        let inside = |_: bool, id: u32| id.checked_sub(100000).filter(|v| *v < 65536);
        let e = CrestMountEntry {
            fstype: "tmpfs".into(),
            super_opts: "rw,size=1024k,nr_inodes=10,mode=755,uid=100000,gid=5,inode64".into(),
            ..CrestMountEntry::default()
        };
        assert_eq!(
            data_of(&e, &inside),
            "size=1024k,nr_inodes=10,mode=755,uid=0,inode64"
        );
        let p = CrestMountEntry {
            fstype: "devpts".into(),
            super_opts: "rw,gid=100005,mode=620".into(),
            ..CrestMountEntry::default()
        };
        assert_eq!(data_of(&p, &inside), "gid=5,mode=620");
        assert_eq!(data_of(&p, &|_, id| Some(id)), "gid=100005,mode=620");
    }
}
