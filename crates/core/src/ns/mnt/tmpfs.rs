//! The files of a tmpfs (or ramfs) a mount namespace of the tree mounted:
//! read at dump through `/proc/PID/root` without crossing into other
//! mounts, kept in `crest-tmpfs-<ns id>-<mnt id>.img` (a `crest_fs_entry`
//! per file carried in CRIU's `pipe_data_entry`, a regular file's bytes
//! after its entry, as `pipes-data.img` has them), and made again right
//! after the mount at restore, every path resolved beneath the mount's
//! root (`openat2` with `RESOLVE_BENEATH`), owners as crest sees them.

use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreError};
use crate::ns::error::NsError;
use crest_images::carry::{CarriedReader, Carrier};
use crest_images::pb::crest::CrestFsEntry;
use crest_images::pb::PipeDataEntry;
use crest_images::{magic, names, ImageWriter};
use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
use std::os::fd::OwnedFd;
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

/// The entry of file `rel` of a tmpfs, from its metadata: mode, owner,
/// modification time (size, target, device filled by kind).
fn entry_of(rel: &str, meta: &std::fs::Metadata) -> CrestFsEntry {
    CrestFsEntry {
        path: rel.to_string(),
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        size: None,
        target: None,
        mtime_sec: Some(meta.mtime()),
        mtime_nsec: Some(meta.mtime_nsec() as u32),
        rdev: None,
    }
}

/// The paths (relative to the tmpfs) of directory `rel`'s entries (at
/// `path`), in reverse name order: popped from a stack, they come in
/// name order.
fn dir_entries(pid: i32, path: &str, rel: &str) -> Result<Vec<String>, DumpError> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .at(pid, "list a tmpfs directory")?
        .filter_map(|d| d.ok())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names
        .into_iter()
        .map(|n| {
            if rel.is_empty() {
                n
            } else {
                format!("{rel}/{n}")
            }
        })
        .collect())
}

/// The files of the filesystem mounted at `mountpoint` in `pid`'s
/// namespace (device `dev`, major and minor), parents first, not crossing
/// into other mounts. A filesystem another mount covers cannot be reached
/// by its path: refused.
pub fn read_tree(pid: i32, mountpoint: &str, dev: (u32, u32)) -> Result<Vec<FsItem>, DumpError> {
    let base = format!("/proc/{pid}/root{mountpoint}");
    let top = std::fs::symlink_metadata(&base).at(pid, "stat a tmpfs")?;
    if top.dev() != libc::makedev(dev.0, dev.1) {
        return Err(NsError::Unsupported {
            what: format!("a tmpfs at {mountpoint} that another mount covers"),
        }
        .in_dump(pid));
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
        let mut e = entry_of(&rel, &meta);
        let mut data = Vec::new();
        if ft.is_dir() {
            if meta.dev() == top.dev() {
                stack.extend(dir_entries(pid, &path, &rel)?);
            }
        } else if ft.is_file() {
            total += meta.len();
            if total > MAX_TMPFS_BYTES {
                return Err(NsError::Unsupported {
                    what: format!(
                        "a tmpfs at {mountpoint} holding more than {MAX_TMPFS_BYTES} bytes"
                    ),
                }
                .in_dump(pid));
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
            return Err(NsError::Unsupported {
                what: format!("a file of unknown type {mountpoint}/{rel} on a tmpfs"),
            }
            .in_dump(pid));
        }
        out.push(FsItem { entry: e, data });
        if out.len() > MAX_TMPFS_FILES {
            return Err(NsError::Unsupported {
                what: format!("a tmpfs at {mountpoint} with over {MAX_TMPFS_FILES} files"),
            }
            .in_dump(pid));
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
    let bad = |what: String| {
        NsError::BadImage {
            file: name.clone(),
            what,
        }
        .in_tree_restore()
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
    let base = format!("/proc/{pid}/root{mountpoint}");
    let io = |what: String| {
        move |e: std::io::Error| {
            NsError::Unsupported {
                what: format!("{what}: {e}"),
            }
            .in_restore(pid)
        }
    };
    let root = rfs::open(
        &base,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(format!("open {base}"))(e.into()))?;
    // Directories' times last, after their files are in.
    let mut dir_times = Vec::new();
    for it in items {
        let e = &it.entry;
        let (parent_path, name) = match e.path.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", e.path.as_str()),
        };
        let parent = rfs::openat2(
            &root,
            if parent_path.is_empty() {
                "."
            } else {
                parent_path
            },
            OFlags::DIRECTORY | OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            BENEATH,
        )
        .map_err(|er| io(format!("open {mountpoint}/{parent_path}"))(er.into()))?;
        let here = format!("{mountpoint}/{}", e.path);
        // (the mount's root: only owner, mode and times)
        let (at, nm) = if e.path.is_empty() {
            (&root, ".")
        } else {
            match make_node(&parent, name, it) {
                Ok(true) => (&parent, name),
                Ok(false) => {
                    return Err(NsError::BadImage {
                        file: format!("crest-tmpfs image of {mountpoint}"),
                        what: format!("{:?} of mode {:o}", e.path, e.mode),
                    }
                    .in_restore(pid))
                }
                Err((verb, er)) => return Err(io(format!("{verb} {here}"))(er)),
            }
        };
        let times = set_attrs(at, nm, e).map_err(|(verb, er)| io(format!("{verb} {here}"))(er))?;
        if let Some(ts) = times {
            dir_times.push((e.path.clone(), ts));
        }
    }
    for (path, ts) in dir_times.into_iter().rev() {
        let p = if path.is_empty() { "." } else { &path };
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        if let Ok(d) = rfs::openat2(&root, p, flags, Mode::empty(), BENEATH) {
            let _ = rfs::utimensat(&d, ".", &ts, rfs::AtFlags::empty());
        }
    }
    Ok(())
}

/// How every path of a tmpfs image is resolved: beneath the mount's
/// root, through no link.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_SYMLINKS);

/// A failed step on a file of the tree: its verb and the error.
type StepError = (&'static str, std::io::Error);

/// Makes the node of `it` (a directory, a file with its data, a symlink,
/// a FIFO, a device) as `name` in `parent`, owned by crest and private
/// until [`set_attrs`]; false for a kind a tmpfs image cannot hold.
fn make_node(parent: &OwnedFd, name: &str, it: &FsItem) -> Result<bool, StepError> {
    let e = &it.entry;
    let private = Mode::from_raw_mode(0o600);
    let step = |verb: &'static str| move |er: rustix::io::Errno| (verb, std::io::Error::from(er));
    match e.mode & libc::S_IFMT {
        libc::S_IFDIR => match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Err(er) if er != rustix::io::Errno::EXIST => return Err(step("mkdir")(er)),
            _ => {}
        },
        libc::S_IFREG => {
            let flags =
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rfs::openat(parent, name, flags, private).map_err(step("create"))?;
            let mut f = std::fs::File::from(fd);
            std::io::Write::write_all(&mut f, &it.data).map_err(|er| ("write", er))?;
        }
        libc::S_IFLNK => {
            let target = e.target.as_deref().unwrap_or("");
            rfs::symlinkat(target, parent, name).map_err(step("symlink"))?;
        }
        libc::S_IFIFO => {
            rfs::mknodat(parent, name, rfs::FileType::Fifo, private, 0).map_err(step("mkfifo"))?;
        }
        fmt @ (libc::S_IFCHR | libc::S_IFBLK) => {
            let kind = if fmt == libc::S_IFCHR {
                rfs::FileType::CharacterDevice
            } else {
                rfs::FileType::BlockDevice
            };
            rfs::mknodat(parent, name, kind, private, e.rdev.unwrap_or(0))
                .map_err(step("mknod"))?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Gives node `nm` in `at` the owner, mode and times of `e`; a
/// directory's times are returned instead, to be set once its files are
/// in.
fn set_attrs(
    at: &OwnedFd,
    nm: &str,
    e: &CrestFsEntry,
) -> Result<Option<rfs::Timestamps>, StepError> {
    let step = |verb: &'static str| move |er: rustix::io::Errno| (verb, std::io::Error::from(er));
    let fmt = e.mode & libc::S_IFMT;
    let uid = Some(rustix::fs::Uid::from_raw(e.uid));
    let gid = Some(rustix::fs::Gid::from_raw(e.gid));
    rfs::chownat(at, nm, uid, gid, rfs::AtFlags::SYMLINK_NOFOLLOW).map_err(step("chown"))?;
    if fmt != libc::S_IFLNK {
        let perm = Mode::from_raw_mode(e.mode & 0o7777);
        rfs::chmodat(at, nm, perm, rfs::AtFlags::empty()).map_err(step("chmod"))?;
    }
    let (Some(s), Some(n)) = (e.mtime_sec, e.mtime_nsec) else {
        return Ok(None);
    };
    let when = rfs::Timespec {
        tv_sec: s,
        tv_nsec: n.into(),
    };
    let ts = rfs::Timestamps {
        last_access: when,
        last_modification: when,
    };
    if fmt == libc::S_IFDIR {
        return Ok(Some(ts));
    }
    let _ = rfs::utimensat(at, nm, &ts, rfs::AtFlags::SYMLINK_NOFOLLOW);
    Ok(None)
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
