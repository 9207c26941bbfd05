//! inotify: each watch (wd, mask, and the watched inode as a file handle)
//! from fdinfo. Dump turns the handle into a path (`open_by_handle_at` on
//! a mount of the watched filesystem); restore adds a watch on that path
//! for each wd, in order, until the kernel hands out the dumped wd.
//! Events queued at dump time are not kept.

use super::error::need;
use super::fown::no_owner;
use crate::error::RoomError;
use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crate::procfs::FdInfo;
use crate::remote::Remote;
use crest_images::pb::{FdTypes, FhEntry, FileEntry, InotifyFileEntry, InotifyWdEntry};
use crest_inject::{nr, Tracee};

/// Largest wd crest restores (each wd below it costs two syscalls).
const MAX_WD: u32 = 1 << 16;
/// Largest file handle the kernel hands out (MAX_HANDLE_SZ).
const MAX_HANDLE: usize = 128;

/// A parsed "inotify wd:..." line and its raw handle bytes.
pub fn parse_wd(line: &str) -> Option<(InotifyWdEntry, Vec<u8>)> {
    let mut e = InotifyWdEntry {
        id: 0,
        i_ino: 0,
        mask: 0,
        ignored_mask: 0,
        s_dev: 0,
        wd: 0,
        f_handle: FhEntry::default(),
    };
    let mut handle = Vec::new();
    let mut seen = 0u32;
    for w in line.split_whitespace() {
        let (k, v) = w.split_once(':')?;
        let hex32 = || u32::from_str_radix(v, 16).ok();
        match k {
            "wd" => (e.wd, seen) = (hex32()?, seen | 1),
            "ino" => (e.i_ino, seen) = (u64::from_str_radix(v, 16).ok()?, seen | 2),
            "sdev" => (e.s_dev, seen) = (hex32()?, seen | 4),
            "mask" => (e.mask, seen) = (hex32()?, seen | 8),
            "ignored_mask" => e.ignored_mask = hex32()?,
            "fhandle-bytes" => e.f_handle.bytes = hex32()?,
            "fhandle-type" => e.f_handle.r#type = hex32()?,
            "f_handle" => {
                if v.len() % 2 != 0 || v.len() > 2 * MAX_HANDLE {
                    return None;
                }
                for i in (0..v.len()).step_by(2) {
                    handle.push(u8::from_str_radix(v.get(i..i + 2)?, 16).ok()?);
                }
            }
            _ => {}
        }
    }
    if seen != 15 || handle.len() != e.f_handle.bytes as usize {
        return None;
    }
    e.f_handle.handle = handle
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    Some((e, handle))
}

/// The mount point of a filesystem with device `sdev` (the kernel's
/// encoding: major << 20 | minor), from crest's mountinfo.
fn mount_of(sdev: u32) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{}:{}", sdev >> 20, sdev & 0xfffff);
    text.lines().find_map(|l| {
        let mut f = l.split(' ');
        let dev = f.nth(2)?;
        let point = f.nth(1)?;
        (dev == want).then(|| point.replace("\\040", " "))
    })
}

/// The path of the inode a watch names, checked against its inode number.
fn path_of(e: &InotifyWdEntry, handle: &[u8]) -> Option<String> {
    path_of_handle(e.s_dev, e.i_ino, e.f_handle.r#type, handle)
}

/// The path (crest's view) of inode `ino` of the filesystem with device
/// `sdev`, from its file handle; checked against the inode number.
pub(crate) fn path_of_handle(sdev: u32, ino: u64, fh_type: u32, handle: &[u8]) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mnt = std::fs::File::open(mount_of(sdev)?).ok()?;
    let file = crest_sys::misc::open_by_handle(&mnt, fh_type as i32, handle).ok()?;
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    let path = link.to_str()?.to_string();
    let meta = std::fs::metadata(&path).ok()?;
    (meta.ino() == ino).then_some(path)
}

pub fn dump(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<FileEntry, DumpError> {
    let mut wds = Vec::new();
    for line in info.all("inotify") {
        let (mut e, handle) = need(pid, fd, "an inotify instance", parse_wd(line))?;
        let path = path_of(&e, &handle).ok_or_else(|| {
            FileError::UnsupportedFd {
                fd,
                kind: format!(
                    "an inotify instance watching inode {:#x} (wd {}) whose path crest cannot find",
                    e.i_ino, e.wd
                ),
            }
            .in_dump(pid)
        })?;
        e.f_handle.path = Some(path);
        wds.push(e);
    }
    wds.sort_by_key(|w| w.wd);
    Ok(FileEntry {
        r#type: FdTypes::Inotify as i32,
        id: 0,
        ify: Some(InotifyFileEntry {
            id: 0,
            flags,
            fown: no_owner(),
            wd: wds,
        }),
        ..FileEntry::default()
    })
}

pub fn create(t: &mut Tracee, e: &InotifyFileEntry) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let nonblock = e.flags & libc::O_NONBLOCK as u32 != 0;
    let mut flags = libc::IN_CLOEXEC as u64 | libc::IN_NONBLOCK as u64;
    let fd = t
        .syscall(nr::INOTIFY_INIT1, &[flags])
        .rat(pid, "inotify_init1")?;
    let mut removed = false;
    for w in &e.wd {
        removed |= add_watch(t, fd, w)?;
    }
    if removed {
        // Removing a watch queued an IN_IGNORED event: read them away.
        let buf = t.scratch(4096).rat(pid, "scratch")?;
        for _ in 0..64 {
            if t.syscall(nr::READ, &[fd, buf, 4096]).is_err() {
                break;
            }
        }
    }
    if !nonblock {
        flags = 0;
        t.fcntl(fd, libc::F_SETFL, flags, "fcntl(F_SETFL) of inotify")?;
    }
    Ok(fd)
}

/// Adds the watch, retrying until the kernel gives the dumped wd; returns
/// whether watches were removed on the way.
fn add_watch(t: &mut Tracee, fd: u64, w: &InotifyWdEntry) -> Result<bool, RestoreError> {
    let pid = t.pid();
    let path = w.f_handle.path.as_deref().ok_or_else(|| {
        FileError::BadImage {
            file: crest_images::names::FILES.into(),
            what: format!("inotify wd {} has no path", w.wd),
        }
        .in_restore(pid)
    })?;
    if w.wd == 0 || w.wd > MAX_WD {
        return Err(FileError::BadImage {
            file: crest_images::names::FILES.into(),
            what: format!("inotify wd {}", w.wd),
        }
        .in_restore(pid));
    }
    let mask = w.mask & !(libc::IN_MASK_ADD | libc::IN_MASK_CREATE);
    let mut p = path.as_bytes().to_vec();
    p.push(0);
    let mut removed = false;
    loop {
        let addr = t.put(&p).rat(pid, "write watch path")?;
        let got = t
            .syscall(nr::INOTIFY_ADD_WATCH, &[fd, addr, u64::from(mask)])
            .rat(pid, format!("inotify_add_watch({path}, {mask:#x})"))?;
        if got == u64::from(w.wd) {
            return Ok(removed);
        }
        if got > u64::from(w.wd) {
            return Err(FileError::Unsupported {
                what: format!("inotify wd {} on {path} (the kernel gave {got})", w.wd),
            }
            .in_restore(pid));
        }
        t.syscall(nr::INOTIFY_RM_WATCH, &[fd, got])
            .rat(pid, "inotify_rm_watch")?;
        removed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_fdinfo;

    #[test]
    fn watch_line() {
        let text = include_str!("../procfs/fixtures/fdinfo_inotify.txt");
        let info = parse_fdinfo("fdinfo", text).unwrap();
        let line = info.all("inotify").next().unwrap();
        let (e, h) = parse_wd(line).unwrap();
        assert_eq!(
            (e.wd, e.i_ino, e.s_dev, e.mask),
            (1, 0x3c4a7, 0xfe00000, 0x100)
        );
        assert_eq!((e.f_handle.bytes, e.f_handle.r#type), (8, 1));
        assert_eq!(h, [0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0]);
        assert_eq!(e.f_handle.handle, vec![0x3c4a7]);
        let hex = parse_wd(
            "wd:1a ino:1 sdev:2 mask:fff ignored_mask:0 fhandle-bytes:1 fhandle-type:1 f_handle:ff",
        )
        .unwrap();
        assert_eq!((hex.0.wd, hex.0.mask), (26, 0xfff));
        // handle shorter than announced, odd digits, missing fields
        assert!(
            parse_wd("wd:1 ino:1 sdev:2 mask:1 fhandle-bytes:2 fhandle-type:1 f_handle:ff")
                .is_none()
        );
        assert!(
            parse_wd("wd:1 ino:1 sdev:2 mask:1 fhandle-bytes:1 fhandle-type:1 f_handle:f")
                .is_none()
        );
        assert!(parse_wd("wd:1 ino:1 mask:1 fhandle-bytes:0 fhandle-type:1 f_handle:").is_none());
    }
}
