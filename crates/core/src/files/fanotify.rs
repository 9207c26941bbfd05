//! fanotify groups, in CRIU's `fanotify_file_entry` (`file_entry.ffy`):
//! the group's flags and event flags and every mark from fdinfo ("fanotify
//! flags:.. event-flags:..", then "fanotify ino:.. sdev:.. mflags:.. mask:..
//! ignored_mask:.. fhandle-..." for an inode mark and "fanotify mnt_id:..
//! mflags:.. mask:.. ignored_mask:.." for a mount mark).
//!
//! Dump turns an inode mark's file handle into a path (as inotify does)
//! and a mount mark's mount id into the mount's path in the task's
//! mountinfo. Restore makes the group with `fanotify_init` in the task and
//! marks each path again with `fanotify_mark`. Events queued at dump time
//! are not kept (as for inotify); a group of a permission class, whose
//! queued events would hold the events' senders, is refused, and so is a
//! filesystem mark (`FAN_MARK_FILESYSTEM`), which fdinfo shows as neither.

use super::error::need;
use super::fown::no_owner;
use crate::error::RoomError;
use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crate::procfs::FdInfo;
use crate::remote::Remote;
use crest_images::pb::{
    FanotifyFileEntry, FanotifyInodeMarkEntry, FanotifyMarkEntry, FanotifyMountMarkEntry, FdTypes,
    FhEntry, FileEntry, MarkType,
};
use crest_inject::{nr, Tracee};

/// `FAN_CLASS_CONTENT | FAN_CLASS_PRE_CONTENT`: groups that get permission
/// events.
const FAN_CLASS_PERM: u32 = 0x4 | 0x8;
const FAN_MARK_ADD: u64 = 0x1;
const FAN_MARK_MOUNT: u64 = 0x10;
const FAN_MARK_IGNORED_MASK: u64 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
/// Most marks crest takes from an image for one group.
const MAX_MARKS: usize = 1 << 16;

/// "key:hex" words of a line.
fn words(line: &str) -> impl Iterator<Item = (&str, &str)> {
    line.split_whitespace().filter_map(|w| w.split_once(':'))
}

fn hex(v: &str) -> Option<u32> {
    u32::from_str_radix(v, 16).ok()
}

/// A mark line: the entry (without a path yet) and an inode mark's raw
/// handle bytes; None for a line it does not understand.
fn parse_mark(line: &str) -> Option<(FanotifyMarkEntry, Vec<u8>)> {
    let mut m = FanotifyMarkEntry {
        id: 0,
        r#type: 0,
        mflags: 0,
        mask: 0,
        ignored_mask: 0,
        s_dev: 0,
        ie: None,
        me: None,
    };
    let (mut ino, mut mnt_id, mut fh) = (None, None, FhEntry::default());
    let mut handle = Vec::new();
    for (k, v) in words(line) {
        match k {
            "ino" => ino = Some(u64::from_str_radix(v, 16).ok()?),
            "mnt_id" => mnt_id = Some(hex(v)?),
            "sdev" => m.s_dev = hex(v)?,
            "mflags" => m.mflags = hex(v)?,
            "mask" => m.mask = hex(v)?,
            "ignored_mask" => m.ignored_mask = hex(v)?,
            "fhandle-bytes" => fh.bytes = hex(v)?,
            "fhandle-type" => fh.r#type = hex(v)?,
            "f_handle" => {
                if v.len() % 2 != 0 || v.len() > 256 {
                    return None;
                }
                for i in (0..v.len()).step_by(2) {
                    handle.push(u8::from_str_radix(v.get(i..i + 2)?, 16).ok()?);
                }
            }
            _ => {}
        }
    }
    match (ino, mnt_id) {
        (Some(i_ino), None) => {
            m.r#type = MarkType::Inode as i32;
            m.ie = Some(FanotifyInodeMarkEntry {
                i_ino,
                f_handle: fh,
            });
        }
        (None, Some(mnt_id)) => {
            m.r#type = MarkType::Mount as i32;
            m.me = Some(FanotifyMountMarkEntry {
                mnt_id,
                crest_path: None,
            });
        }
        _ => return None,
    }
    Some((m, handle))
}

/// The mount point of mount `id` in `pid`'s mountinfo.
fn mount_point(pid: i32, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(' ');
        let this: u32 = f.next()?.parse().ok()?;
        let point = f.nth(3)?;
        (this == id).then(|| point.replace("\\040", " "))
    })
}

pub fn dump(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<FileEntry, DumpError> {
    let refuse = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
    let mut lines = info.all("fanotify");
    let head = need(
        pid,
        fd,
        "a fanotify group",
        lines.next().map(str::to_string),
    )?;
    let (mut faflags, mut evflags) = (None, None);
    for (k, v) in words(&head) {
        match k {
            "flags" => faflags = hex(v),
            "event-flags" => evflags = hex(v),
            _ => {}
        }
    }
    let (faflags, evflags) = need(pid, fd, "a fanotify group", faflags.zip(evflags))?;
    if faflags & FAN_CLASS_PERM != 0 {
        return Err(refuse(format!(
            "a fanotify group of a permission class (flags {faflags:#x})"
        )));
    }
    let mut marks = Vec::new();
    for line in lines {
        let (mut m, handle) = parse_mark(line)
            .ok_or_else(|| refuse(format!("a fanotify mark crest does not know ({line})")))?;
        if let Some(ie) = m.ie.as_mut() {
            let path =
                super::inotify::path_of_handle(m.s_dev, ie.i_ino, ie.f_handle.r#type, &handle)
                    .ok_or_else(|| {
                        refuse(format!(
                            "a fanotify mark on inode {:#x} whose path crest cannot find",
                            ie.i_ino
                        ))
                    })?;
            ie.f_handle.path = Some(path);
        }
        if let Some(me) = m.me.as_mut() {
            let path = mount_point(pid, me.mnt_id).ok_or_else(|| {
                refuse(format!(
                    "a fanotify mark on mount {} crest cannot find",
                    me.mnt_id
                ))
            })?;
            me.crest_path = Some(path);
        }
        marks.push(m);
    }
    Ok(FileEntry {
        r#type: FdTypes::Fanotify as i32,
        id: 0,
        ffy: Some(FanotifyFileEntry {
            id: 0,
            flags,
            fown: no_owner(),
            faflags,
            evflags,
            mark: marks,
        }),
        ..FileEntry::default()
    })
}

pub fn create(t: &mut Tracee, e: &FanotifyFileEntry) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let bad = |what: String| {
        FileError::BadImage {
            file: crest_images::names::FILES.into(),
            what,
        }
        .in_restore(pid)
    };
    if e.faflags & FAN_CLASS_PERM != 0 || e.mark.len() > MAX_MARKS {
        return Err(bad(format!(
            "a fanotify group with flags {:#x} and {} marks",
            e.faflags,
            e.mark.len()
        )));
    }
    // (the group keeps its init flags: they are given as they were)
    let init = u64::from(e.faflags);
    let fd = t
        .syscall(nr::FANOTIFY_INIT, &[init, u64::from(e.evflags)])
        .rat(pid, format!("fanotify_init({init:#x}, {:#x})", e.evflags))?;
    // (fdinfo lists the newest mark first: the oldest is marked first)
    for m in e.mark.iter().rev() {
        let (path, kind) = match (&m.ie, &m.me) {
            (Some(ie), None) => (ie.f_handle.path.as_deref(), 0),
            (None, Some(me)) => (me.crest_path.as_deref(), FAN_MARK_MOUNT),
            _ => (None, 0),
        };
        let path = path.ok_or_else(|| bad("a fanotify mark without a path".into()))?;
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        let surv = if m.mflags & FAN_MARK_IGNORED_SURV_MODIFY != 0 {
            u64::from(FAN_MARK_IGNORED_SURV_MODIFY)
        } else {
            0
        };
        for (mask, extra) in [(m.mask, 0), (m.ignored_mask, FAN_MARK_IGNORED_MASK | surv)] {
            if mask == 0 {
                continue;
            }
            let addr = t.put(&p).rat(pid, "write a mark's path")?;
            t.syscall(
                nr::FANOTIFY_MARK,
                &[
                    fd,
                    FAN_MARK_ADD | kind | extra,
                    u64::from(mask),
                    libc::AT_FDCWD as u64,
                    addr,
                ],
            )
            .rat(pid, format!("fanotify_mark({path}, {mask:#x})"))?;
        }
    }
    // the fd's own status flags, changed since with F_SETFL maybe
    let status = u64::from(e.flags & (libc::O_NONBLOCK | libc::O_ASYNC) as u32);
    t.fcntl(fd, libc::F_SETFL, status, "fcntl(F_SETFL) of fanotify")?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_lines() {
        let (m, h) = parse_mark(
            "ino:98e003 sdev:fe00000 mflags:0 mask:28 ignored_mask:0 fhandle-bytes:8 \
             fhandle-type:1 f_handle:03e09800c5389f16",
        )
        .unwrap();
        assert_eq!(m.r#type, MarkType::Inode as i32);
        assert_eq!((m.mask, m.s_dev), (0x28, 0xfe00000));
        assert_eq!(h.len(), 8);
        let (m, _) = parse_mark("mnt_id:1b mflags:0 mask:20 ignored_mask:0").unwrap();
        assert_eq!(m.me.unwrap().mnt_id, 0x1b);
        assert!(parse_mark("mask:20").is_none());
    }
}
