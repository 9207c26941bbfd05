//! Who gets SIGIO for an open file description (`F_SETOWN_EX`) and with
//! which signal (`F_SETSIG`): CRIU's `fown_entry` of each file kind. Read
//! from crest's copy of the task's fd at dump; set from crest's copy of
//! the new description once every task and thread of the tree exists (an
//! owner may be a thread made late), with the owner's pid as crest sees
//! it. The owner must be in the tree: a process outside it may not exist
//! at restore, so such a file is refused.

use super::table::FileTable;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crest_images::pb::{FileEntry, FownEntry};
use crest_sys::misc;

/// `F_OWNER_PGRP`: the owner is a process group.
const F_OWNER_PGRP: i32 = 2;

/// The kind's `fown` of an entry (none for kinds CRIU gives none).
fn slot(e: &mut FileEntry) -> Option<&mut FownEntry> {
    // each kind's message is a different type: one arm each
    macro_rules! arm {
        ($($f:ident),*) => {
            $(if let Some(x) = e.$f.as_mut() { return Some(&mut x.fown); })*
        };
    }
    arm!(reg, pipe, isk, usk, efd, epfd, sgfd, tfd, ify, memfd, tty);
    None
}

/// The owner of an entry, if it has one.
pub fn of(e: &FileEntry) -> Option<FownEntry> {
    macro_rules! arm {
        ($($f:ident),*) => {
            None$(.or(e.$f.as_ref().map(|x| x.fown)))*
        };
    }
    let f: Option<FownEntry> = arm!(reg, pipe, isk, usk, efd, epfd, sgfd, tfd, ify, memfd, tty);
    f.filter(|f| f.pid != 0 || f.signum != 0)
}

/// The process group of `pid` (from its stat).
fn pgid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// The thread group of a thread id.
fn tgid_of(tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

impl FileTable {
    /// Records the SIGIO owner and signal of fd `fd` of `pid` in entry
    /// `id`, if it has any.
    pub(crate) fn dump_fown(&mut self, pid: i32, fd: i32, id: u32) -> Result<(), DumpError> {
        let pidfd = misc::pidfd_open(pid).at(pid, "pidfd_open")?;
        let copy =
            rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
                .at(pid, "pidfd_getfd")?;
        let (kind, owner) = misc::get_owner(&copy).at(pid, "F_GETOWN_EX")?;
        let sig = misc::get_sig(&copy).at(pid, "F_GETSIG")?;
        if owner == 0 && sig == 0 {
            return Ok(());
        }
        if owner != 0 {
            let inside = if kind == F_OWNER_PGRP {
                self.tree.iter().any(|&p| pgid_of(p) == Some(owner))
            } else {
                tgid_of(owner).is_some_and(|g| self.tree.contains(&g))
            };
            if !inside {
                return Err(FileError::UnsupportedFd {
                    fd,
                    kind: format!(
                        "a file whose SIGIO owner ({} {owner}) is outside the dumped tree",
                        if kind == F_OWNER_PGRP {
                            "process group"
                        } else {
                            "process"
                        }
                    ),
                }
                .in_dump(pid));
            }
        }
        let Some(e) = self.entries.iter_mut().find(|e| e.id == id) else {
            return Ok(());
        };
        let Some(f) = slot(e) else {
            return Err(FileError::UnsupportedFd {
                fd,
                kind: "a FIFO with a SIGIO owner or signal (F_SETOWN/F_SETSIG)".into(),
            }
            .in_dump(pid));
        };
        f.pid_type = kind as u32;
        f.pid = owner as u32;
        f.signum = sig as u32;
        Ok(())
    }
}

/// Sets the owner and signal of every description the restore made that
/// had one: `made` lists (entry, the task and fd holding it).
pub fn restore<'a>(
    made: impl Iterator<Item = (&'a FileEntry, i32, u32)>,
) -> Result<(), RestoreError> {
    for (e, pid, fd) in made {
        let Some(f) = of(e) else { continue };
        let copy = crate::remote::take_fd(pid, fd)?;
        if f.pid != 0 {
            misc::set_owner(&copy, f.pid_type as i32, f.pid as i32).rat(
                pid,
                format!("fd {fd}: F_SETOWN_EX to {} {}", f.pid_type, f.pid),
            )?;
        }
        if f.signum != 0 {
            misc::set_sig(&copy, f.signum as i32)
                .rat(pid, format!("fd {fd}: F_SETSIG {}", f.signum))?;
        }
    }
    Ok(())
}

/// The default `fown_entry` (no F_SETOWN owner).
pub(crate) fn no_owner() -> FownEntry {
    FownEntry::default()
}

/// CRIU's entry of a file left to a plugin (type EXT, no owner), for
/// crest's own kinds to ride beside (`crest_mq`, `crest_io_uring`).
pub(crate) fn ext_entry() -> FileEntry {
    FileEntry {
        r#type: crest_images::pb::FdTypes::Ext as i32,
        id: 0,
        ext: Some(crest_images::pb::ExtFileEntry {
            id: 0,
            fown: no_owner(),
        }),
        ..FileEntry::default()
    }
}
