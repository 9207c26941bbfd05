//! The files of a tmpfs (or ramfs) a mount namespace of the tree mounted:
//! read at dump through `/proc/PID/root` without crossing into other
//! mounts, kept in `crest-tmpfs-<ns id>-<mnt id>.img` (a `crest_fs_entry`
//! per file carried in CRIU's `pipe_data_entry`, a regular file's bytes
//! after its entry, as `pipes-data.img` has them), and made again right
//! after the mount at restore, every path resolved beneath the mount's
//! root (`openat2` with `RESOLVE_BENEATH`), owners as crest sees them.

use super::refuse;
use crate::error::{DumpCtx, DumpError, RestoreError};
use crest_images::carry::{CarriedReader, Carrier};
use crest_images::pb::crest::CrestFsEntry;
use crest_images::pb::PipeDataEntry;
use crest_images::{magic, names, ImageWriter};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Largest tmpfs crest copies, and most files in one.
pub const MAX_TMPFS_BYTES: u64 = 1 << 30;
pub const MAX_TMPFS_FILES: usize = 1 << 20;

/// A file of a tmpfs, with its bytes (dump) or where they are (restore).
#[derive(Debug, Clone)]
pub struct FsItem {
    pub entry: CrestFsEntry,
    pub data: Vec<u8>,
}

/// The files of the filesystem mounted at `mountpoint` in `pid`'s
/// namespace (device `dev`, major and minor), parents first, not crossing
/// into other mounts. A filesystem another mount covers cannot be reached
/// by its path: refused.
pub fn read_tree(pid: i32, mountpoint: &str, dev: (u32, u32)) -> Result<Vec<FsItem>, DumpError> {
    let base = format!("/proc/{pid}/root{mountpoint}");
    let top = std::fs::symlink_metadata(&base).at(pid, "stat a tmpfs")?;
    if top.dev() != libc::makedev(dev.0, dev.1) {
        return Err(refuse(
            pid,
            format!("a tmpfs at {mountpoint} that another mount covers"),
        ));
    }
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            base.clone()
        } else {
            format!("{base}/{rel}")
        };
        let meta = std::fs::symlink_metadata(&path).at(pid, "stat a file on a tmpfs")?;
        let ft = meta.file_type();
        let mut e = CrestFsEntry {
            path: rel.clone(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: None,
            target: None,
            mtime_sec: Some(meta.mtime()),
            mtime_nsec: Some(meta.mtime_nsec() as u32),
            rdev: None,
        };
        let mut data = Vec::new();
        if ft.is_dir() {
            if meta.dev() == top.dev() {
                let mut names: Vec<String> = std::fs::read_dir(&path)
                    .at(pid, "list a tmpfs directory")?
                    .filter_map(|d| d.ok())
                    .map(|d| d.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort_unstable_by(|a, b| b.cmp(a));
                for n in names {
                    stack.push(if rel.is_empty() {
                        n
                    } else {
                        format!("{rel}/{n}")
                    });
                }
            }
        } else if ft.is_file() {
            total += meta.len();
            if total > MAX_TMPFS_BYTES {
                return Err(refuse(
                    pid,
                    format!("a tmpfs at {mountpoint} holding more than {MAX_TMPFS_BYTES} bytes"),
                ));
            }
            data = std::fs::read(&path).at(pid, "read a file on a tmpfs")?;
            e.size = Some(data.len() as u64);
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&path).at(pid, "read a symlink on a tmpfs")?;
            e.target = Some(t.to_string_lossy().into_owned());
        } else if ft.is_socket() {
            continue; // a socket restore binds again makes its own
        } else if ft.is_char_device() || ft.is_block_device() {
            // (a container's /dev: made again with mknod)
            e.rdev = Some(meta.rdev());
        } else if !ft.is_fifo() {
            return Err(refuse(
                pid,
                format!("a file of unknown type {mountpoint}/{rel} on a tmpfs"),
            ));
        }
        out.push(FsItem { entry: e, data });
        if out.len() > MAX_TMPFS_FILES {
            return Err(refuse(
                pid,
                format!("a tmpfs at {mountpoint} with over {MAX_TMPFS_FILES} files"),
            ));
        }
    }
    Ok(out)
}

/// Writes the files of mount `mnt` of mount namespace `id`.
pub fn write(dir: &Path, id: u32, mnt: u32, items: &[FsItem]) -> Result<(), DumpError> {
    let mut w = ImageWriter::create(dir, &names::crest_tmpfs(id, mnt), magic::PIPES_DATA)?;
    for it in items {
        w.write_entry(&PipeDataEntry::wrap(it.entry.clone()))?;
        w.write_payload(&it.data)?;
    }
    w.finish()?;
    Ok(())
}

/// A path component crest accepts from an image: no separators, no dots.
fn safe_component(c: &str) -> bool {
    !c.is_empty() && c != "." && c != ".." && !c.contains('\0')
}

pub fn read_contents(dir: &Path, id: u32, mnt: u32) -> Result<Vec<FsItem>, RestoreError> {
    let name = names::crest_tmpfs(id, mnt);
    let bad = |what: String| RestoreError::BadImage {
        pid: 0,
        file: name.clone(),
        what,
    };
    let mut r = CarriedReader::<PipeDataEntry>::open(dir, &name, magic::CREST_TMPFS)?;
    let mut items = Vec::new();
    let mut total = 0u64;
    while let Some(e) = r.next_entry()? {
        if items.len() >= MAX_TMPFS_FILES {
            return Err(bad("too many files".into()));
        }
        if !e.path.is_empty() && !e.path.split('/').all(safe_component) {
            return Err(bad(format!("a file named {:?}", e.path)));
        }
        let size = e.size.unwrap_or(0);
        total += size;
        if total > MAX_TMPFS_BYTES {
            return Err(bad(format!("more than {MAX_TMPFS_BYTES} bytes")));
        }
        let data = r.read_payload(size)?;
        items.push(FsItem { entry: e, data });
    }
    Ok(items)
}

/// Recreates the files of a tmpfs mounted at `mountpoint` in `pid`'s
/// namespace, every path resolved beneath the mount's root.
pub fn fill_tree(pid: i32, mountpoint: &str, items: &[FsItem]) -> Result<(), RestoreError> {
    use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
    let base = format!("/proc/{pid}/root{mountpoint}");
    let io = |what: String| {
        move |e: std::io::Error| RestoreError::Unsupported {
            pid,
            what: format!("{what}: {e}"),
        }
    };
    let root = rfs::open(
        &base,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(format!("open {base}"))(e.into()))?;
    let beneath = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS;
    // Directories' times last, after their files are in.
    let mut dir_times = Vec::new();
    for it in items {
        let e = &it.entry;
        let (parent_path, name) = match e.path.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", e.path.as_str()),
        };
        let parent = if parent_path.is_empty() {
            rfs::openat2(
                &root,
                ".",
                OFlags::DIRECTORY | OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                beneath,
            )
        } else {
            rfs::openat2(
                &root,
                parent_path,
                OFlags::DIRECTORY | OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                beneath,
            )
        }
        .map_err(|er| io(format!("open {mountpoint}/{parent_path}"))(er.into()))?;
        let perm = Mode::from_raw_mode(e.mode & 0o7777);
        let fmt = e.mode & libc::S_IFMT;
        let here = format!("{mountpoint}/{}", e.path);
        if e.path.is_empty() {
            // The mount's root: only owner, mode and times.
        } else if fmt == libc::S_IFDIR {
            rfs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                .or_else(|er| {
                    if er == rustix::io::Errno::EXIST {
                        Ok(())
                    } else {
                        Err(er)
                    }
                })
                .map_err(|er| io(format!("mkdir {here}"))(er.into()))?;
        } else if fmt == libc::S_IFREG {
            let fd = rfs::openat(
                &parent,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|er| io(format!("create {here}"))(er.into()))?;
            let mut f = std::fs::File::from(fd);
            use std::io::Write;
            f.write_all(&it.data).map_err(io(format!("write {here}")))?;
        } else if fmt == libc::S_IFLNK {
            let target = e.target.as_deref().unwrap_or("");
            rfs::symlinkat(target, &parent, name)
                .map_err(|er| io(format!("symlink {here}"))(er.into()))?;
        } else if fmt == libc::S_IFIFO {
            rfs::mknodat(
                &parent,
                name,
                rfs::FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            )
            .map_err(|er| io(format!("mkfifo {here}"))(er.into()))?;
        } else if fmt == libc::S_IFCHR || fmt == libc::S_IFBLK {
            let kind = if fmt == libc::S_IFCHR {
                rfs::FileType::CharacterDevice
            } else {
                rfs::FileType::BlockDevice
            };
            rfs::mknodat(
                &parent,
                name,
                kind,
                Mode::from_raw_mode(0o600),
                e.rdev.unwrap_or(0),
            )
            .map_err(|er| io(format!("mknod {here}"))(er.into()))?;
        } else {
            return Err(RestoreError::BadImage {
                pid,
                file: format!("crest-tmpfs image of {mountpoint}"),
                what: format!("{:?} of mode {:o}", e.path, e.mode),
            });
        }
        let (at, nm) = if e.path.is_empty() {
            (&root, ".")
        } else {
            (&parent, name)
        };
        rfs::chownat(
            at,
            nm,
            Some(rustix::fs::Uid::from_raw(e.uid)),
            Some(rustix::fs::Gid::from_raw(e.gid)),
            rfs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|er| io(format!("chown {here}"))(er.into()))?;
        if fmt != libc::S_IFLNK {
            rfs::chmodat(at, nm, perm, rfs::AtFlags::empty())
                .map_err(|er| io(format!("chmod {here}"))(er.into()))?;
        }
        if let (Some(s), Some(n)) = (e.mtime_sec, e.mtime_nsec) {
            let ts = rfs::Timestamps {
                last_access: rfs::Timespec {
                    tv_sec: s,
                    tv_nsec: n.into(),
                },
                last_modification: rfs::Timespec {
                    tv_sec: s,
                    tv_nsec: n.into(),
                },
            };
            if fmt == libc::S_IFDIR {
                dir_times.push((e.path.clone(), ts));
            } else {
                let _ = rfs::utimensat(at, nm, &ts, rfs::AtFlags::SYMLINK_NOFOLLOW);
            }
        }
    }
    for (path, ts) in dir_times.into_iter().rev() {
        let p = if path.is_empty() {
            ".".to_string()
        } else {
            path
        };
        if let Ok(d) = rfs::openat2(
            &root,
            &p,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            beneath,
        ) {
            let _ = rfs::utimensat(&d, ".", &ts, rfs::AtFlags::empty());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_components_are_refused() {
        for bad in ["", ".", "..", "a\0b"] {
            assert!(!safe_component(bad), "{bad:?}");
        }
        assert!(safe_component("file.txt"));
    }
}
