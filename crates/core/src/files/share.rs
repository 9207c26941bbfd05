//! Open file descriptions shared by several fds, in one task or across
//! tasks. At dump, fds whose files have the same device and inode are
//! compared with `kcmp(KCMP_FILE)`, and one that matches an fd seen before
//! reuses its entry. At restore the first task that needs a description
//! makes it; another fd of the same task is a `dup` of it, and another
//! task gets the very same description from crest over a unix socket
//! (`give_fd`), so offsets, status flags and the object behind stay shared.

use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crest_images::pb::FdTypes;
use crest_inject::{nr, Tracee};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

/// Device and inode of the file behind an fd.
pub type Key = (u64, u64);

/// Descriptions seen at dump: by file, the (pid, fd) that showed each
/// and the entry it got.
#[derive(Default)]
pub struct Seen {
    by_key: HashMap<Key, Vec<(i32, i32, FdTypes, u32)>>,
}

/// The device and inode of fd `fd` of `pid`.
pub fn key(pid: i32, fd: i32) -> Result<Key, DumpError> {
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).at(pid, "stat an fd")?;
    Ok((meta.dev(), meta.ino()))
}

impl Seen {
    /// The entry of an fd seen before that is the same description as fd
    /// `fd` of `pid`.
    pub fn find(&self, pid: i32, fd: i32, key: Key) -> Result<Option<(FdTypes, u32)>, DumpError> {
        let Some(list) = self.by_key.get(&key) else {
            return Ok(None);
        };
        for &(p, f, ty, id) in list {
            let same = crest_sys::misc::kcmp_file(pid, p, fd, f).at(pid, "kcmp of two fds")?;
            if same == 0 {
                return Ok(Some((ty, id)));
            }
        }
        Ok(None)
    }

    pub fn add(&mut self, pid: i32, fd: i32, key: Key, (ty, id): (FdTypes, u32)) {
        self.by_key.entry(key).or_default().push((pid, fd, ty, id));
    }
}

/// Where a restored description lives: fd `fd` of task `pid`.
pub type Holders = HashMap<u32, (i32, u32)>;

/// A copy of fd `fd` of the (stopped, restored) task `pid`, in crest.
pub fn take_fd(pid: i32, fd: u32) -> Result<OwnedFd, RestoreError> {
    let pidfd = crest_sys::misc::pidfd_open(pid).rat(pid, "pidfd_open")?;
    crest_sys::misc::pidfd_getfd(&pidfd, fd as i32).rat(pid, format!("pidfd_getfd of fd {fd}"))
}

/// Layout of the `recvmsg` arguments in the task's scratch memory.
const MSGHDR: u64 = 0;
const IOV: u64 = 56;
const BYTE: u64 = 72;
const CONTROL: u64 = 80;
const CONTROL_LEN: u64 = 24;

/// Puts `file` (crest's) into the task as a new fd with the same open file
/// description: the task makes a datagram socketpair, crest sends the fd
/// into one end (`SCM_RIGHTS`) and the task receives it from the other.
/// Works whatever namespaces the task is in.
pub fn give_fd(t: &mut Tracee, file: &OwnedFd) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let buf = t
        .scratch((CONTROL + CONTROL_LEN) as usize)
        .rat(pid, "scratch")?;
    let kind = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64;
    t.syscall(nr::SOCKETPAIR, &[libc::AF_UNIX as u64, kind, 0, buf])
        .rat(pid, "socketpair to pass an fd")?;
    let mut raw = [0u8; 8];
    t.read_mem(buf, &mut raw).rat(pid, "read socketpair fds")?;
    let a = u64::from(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]));
    let b = u64::from(u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]));
    let res = pass(t, file, buf, a, b);
    t.syscall(nr::CLOSE, &[a]).rat(pid, "close socket")?;
    t.syscall(nr::CLOSE, &[b]).rat(pid, "close socket")?;
    res
}

fn pass(t: &mut Tracee, file: &OwnedFd, buf: u64, a: u64, b: u64) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let end = take_fd(pid, a as u32)?;
    crest_sys::misc::send_fd(&end, file).rat(pid, "send an fd to the task")?;
    drop(end);
    let mut msg = vec![0u8; (CONTROL + CONTROL_LEN) as usize];
    let mut put = |off: u64, v: u64| {
        msg[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes());
    };
    put(MSGHDR + 16, buf + IOV); // msg_iov
    put(MSGHDR + 24, 1); // msg_iovlen
    put(MSGHDR + 32, buf + CONTROL); // msg_control
    put(MSGHDR + 40, CONTROL_LEN); // msg_controllen
    put(IOV, buf + BYTE);
    put(IOV + 8, 1);
    t.write_mem(buf, &msg).rat(pid, "write msghdr")?;
    let flags = (libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) as u64;
    t.syscall(nr::RECVMSG, &[b, buf, flags])
        .rat(pid, "recvmsg of a passed fd")?;
    let mut ctl = [0u8; CONTROL_LEN as usize];
    t.read_mem(buf + CONTROL, &mut ctl)
        .rat(pid, "read the passed fd")?;
    let level = i32::from_le_bytes([ctl[8], ctl[9], ctl[10], ctl[11]]);
    let kind = i32::from_le_bytes([ctl[12], ctl[13], ctl[14], ctl[15]]);
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
        return Err(RestoreError::Unsupported {
            pid,
            what: "an fd passed over a socket that did not arrive".into(),
        });
    }
    Ok(u64::from(u32::from_le_bytes([
        ctl[16], ctl[17], ctl[18], ctl[19],
    ])))
}
