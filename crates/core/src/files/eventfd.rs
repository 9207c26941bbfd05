//! eventfd: the counter (`eventfd-count`, hex) and semaphore mode
//! (`eventfd-semaphore`) from fdinfo; restore makes the eventfd in the task
//! and writes the counter into it.

use super::error::need;
use super::fown::no_owner;
use crate::error::RoomError;
use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crate::procfs::FdInfo;
use crest_images::pb::{EventfdFileEntry, FdTypes, FileEntry};
use crest_inject::{nr, Tracee};

/// `EFD_SEMAPHORE`, kept in bit 0 of the entry's flags (an eventfd is
/// always open O_RDWR, so its own flags never use that bit).
pub const EFD_SEMAPHORE: u32 = 1;

/// The counter and whether the eventfd is in semaphore mode.
pub fn parse(info: &FdInfo) -> Option<(u64, bool)> {
    let count = u64::from_str_radix(info.get("eventfd-count")?.trim(), 16).ok()?;
    let sem = match info.get("eventfd-semaphore") {
        Some(v) => v.trim().parse::<u32>().ok()? != 0,
        None => false,
    };
    Some((count, sem))
}

pub fn dump(pid: i32, fd: i32, info: &FdInfo, flags: u32) -> Result<FileEntry, DumpError> {
    let (counter, sem) = need(pid, fd, "an eventfd", parse(info))?;
    if info.get("eventfd-semaphore").is_none() {
        // Without the line the mode cannot be known: refuse rather than
        // turn a semaphore into a counter.
        return Err(FileError::UnsupportedFd {
            fd,
            kind: "an eventfd whose semaphore mode this kernel does not show".into(),
        }
        .in_dump(pid));
    }
    let mut flags = flags & !(libc::O_ACCMODE as u32);
    if sem {
        flags |= EFD_SEMAPHORE;
    }
    Ok(FileEntry {
        r#type: FdTypes::Eventfd as i32,
        id: 0,
        efd: Some(EventfdFileEntry {
            id: 0,
            flags,
            fown: no_owner(),
            counter,
        }),
        ..FileEntry::default()
    })
}

pub fn create(t: &mut Tracee, e: &EventfdFileEntry) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let mut flags = libc::EFD_CLOEXEC as u64;
    if e.flags & EFD_SEMAPHORE != 0 {
        flags |= libc::EFD_SEMAPHORE as u64;
    }
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        flags |= libc::EFD_NONBLOCK as u64;
    }
    let fd = t.syscall(nr::EVENTFD2, &[0, flags]).rat(pid, "eventfd2")?;
    if e.counter > 0 {
        let addr = t.put(&e.counter.to_le_bytes()).rat(pid, "write counter")?;
        t.syscall(nr::WRITE, &[fd, addr, 8])
            .rat(pid, format!("write {} to an eventfd", e.counter))?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_fdinfo;

    #[test]
    fn counter_is_hex() {
        let text = include_str!("../procfs/fixtures/fdinfo_eventfd.txt");
        let info = parse_fdinfo("fdinfo", text).unwrap();
        assert_eq!(parse(&info), Some((5, false)));
        let big = "pos:\t0\nflags:\t02\neventfd-count:               1f\neventfd-id: 3\neventfd-semaphore: 1\n";
        let info = parse_fdinfo("fdinfo", big).unwrap();
        assert_eq!(parse(&info), Some((31, true)));
        let bad = "pos:\t0\nflags:\t02\neventfd-count: zz\n";
        assert_eq!(parse(&parse_fdinfo("fdinfo", bad).unwrap()), None);
    }
}
