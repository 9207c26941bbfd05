//! pidfd: refers to a task, which must be one of the dumped tree (so it
//! exists again after restore, with its pid); restore opens it with
//! `pidfd_open` of that pid as the holder sees it. A pidfd of a task that
//! exited and was reaped (its fdinfo says pid -1; CRIU's `nspid` -1) comes
//! back as a pidfd of a crest child that is killed and reaped at once: it
//! polls readable, and says pid -1, as the old one did.

use super::fown::no_owner;
use crate::error::RoomError;
use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::files::error::FileError;
use crate::procfs::FdInfo;
use crate::remote::Remote;
use crest_images::pb::{FdTypes, FileEntry, PidfdEntry};
use crest_inject::{nr, Tracee};
use std::collections::HashSet;

/// `PIDFD_THREAD` (a pidfd of a thread, not of a process).
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// The pid as crest sees it (-1 for a task that is gone), from "Pid:".
pub fn parse(info: &FdInfo) -> Option<i32> {
    info.get("Pid")?.trim().parse().ok()
}

fn pidns_ino(pid: i32) -> Option<u64> {
    crate::ns::user::ino_of(&format!("/proc/{pid}/ns/pid")).ok()
}

pub fn dump(
    pid: i32,
    fd: i32,
    info: &FdInfo,
    flags: u32,
    tree: &HashSet<i32>,
) -> Result<FileEntry, DumpError> {
    let refuse = |kind: String| FileError::UnsupportedFd { fd, kind }.in_dump(pid);
    let target = parse(info).ok_or_else(|| refuse("a pidfd whose fdinfo has no pid".into()))?;
    if target <= 0 {
        // (exited and reaped: nothing of it is left to name)
        return Ok(entry(info, flags, -1));
    }
    if !tree.contains(&target) {
        return Err(refuse(format!(
            "a pidfd of pid {target}, outside the dumped tree"
        )));
    }
    if flags & PIDFD_THREAD != 0 {
        return Err(refuse(format!("a pidfd of thread {target} (PIDFD_THREAD)")));
    }
    if pidns_ino(target).is_none() || pidns_ino(target) != pidns_ino(pid) {
        return Err(refuse(format!(
            "a pidfd of pid {target}, which is in another pid namespace"
        )));
    }
    let status = crate::procfs::read_status(target).map_err(|_| {
        refuse(format!(
            "a pidfd of pid {target}, whose status crest cannot read"
        ))
    })?;
    let nspid = status.ns_pid.last().copied().unwrap_or(target);
    Ok(entry(info, flags, nspid))
}

/// The file entry of a pidfd of `nspid` (-1: a task that is gone).
fn entry(info: &FdInfo, flags: u32, nspid: i32) -> FileEntry {
    FileEntry {
        r#type: FdTypes::Pidfd as i32,
        id: 0,
        pidfd: Some(PidfdEntry {
            id: 0,
            ino: info.ino as u32,
            flags,
            nspid,
            fown: no_owner(),
        }),
        ..FileEntry::default()
    }
}

pub fn create(t: &mut Tracee, e: &PidfdEntry) -> Result<u64, RestoreError> {
    let pid = t.pid();
    if e.nspid == -1 {
        return of_the_dead(t, e);
    }
    if e.nspid <= 0 {
        return Err(FileError::BadImage {
            file: crest_images::names::FILES.into(),
            what: format!("pidfd of pid {}", e.nspid),
        }
        .in_restore(pid));
    }
    let flags = u64::from(e.flags & libc::O_NONBLOCK as u32);
    let fd = t
        .syscall(nr::PIDFD_OPEN, &[e.nspid as u64, flags])
        .rat(pid, format!("pidfd_open({})", e.nspid))?;
    t.fcntl(
        fd,
        libc::F_SETFD,
        libc::FD_CLOEXEC as u64,
        "set close-on-exec",
    )?;
    Ok(fd)
}

/// A pidfd of a task that is gone: of a crest child, killed and reaped.
fn of_the_dead(t: &mut Tracee, e: &PidfdEntry) -> Result<u64, RestoreError> {
    use crest_sys::proc::{spawn_stopped, SessionSetup};
    let pid = t.pid();
    // (out of the way of pids the tree's threads are yet to take)
    crate::clone::steer_to_spare();
    let child = spawn_stopped(&[], SessionSetup::Inherit).rat(pid, "spawn a task to die")?;
    let pidfd = crest_sys::misc::pidfd_open(child);
    let _ = crest_sys::misc::kill(child, libc::SIGKILL);
    loop {
        match crest_sys::ptrace::wait(child) {
            Ok(
                crest_sys::ptrace::WaitStatus::Exited(_)
                | crest_sys::ptrace::WaitStatus::Signaled(_),
            ) => break,
            Ok(_) => continue,
            Err(e) => return Err(e).rat(pid, "reap the task that died"),
        }
    }
    let pidfd = pidfd.rat(pid, "pidfd_open of the task that died")?;
    let status = (e.flags & libc::O_NONBLOCK as u32) as i32;
    crest_sys::net::set_status_flags(&pidfd, status).rat(pid, "pidfd flags")?;
    let fd = t.give_fd(&pidfd)?;
    t.fcntl(
        fd,
        libc::F_SETFD,
        libc::FD_CLOEXEC as u64,
        "set close-on-exec",
    )?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_fdinfo;

    #[test]
    fn pid_line() {
        let text =
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1234\nPid:\t4321\nNSpid:\t4321\t1\n";
        assert_eq!(parse(&parse_fdinfo("fdinfo", text).unwrap()), Some(4321));
        let gone = "pos:\t0\nflags:\t02\nPid:\t-1\n";
        assert_eq!(parse(&parse_fdinfo("fdinfo", gone).unwrap()), Some(-1));
        assert_eq!(
            parse(&parse_fdinfo("fdinfo", "pos:\t0\nflags:\t02\n").unwrap()),
            None
        );
    }
}
