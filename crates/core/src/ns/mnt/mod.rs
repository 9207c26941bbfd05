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

mod dump;
mod image;
mod replay;

pub use dump::collect;
pub use image::{read, write};
pub use replay::{replay, Replay};

use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::ns::error::NsError;
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

#[cfg(test)]
mod tests {
    use super::dump::*;
    use super::replay::*;
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
