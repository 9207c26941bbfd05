//! The restore's side of a lazy restore: the connection to the daemon, a
//! userfaultfd registered in each task and handed over, and the tree's
//! pids once it runs.

use super::*;
use crate::error::RoomError;
use crate::error::{RestoreCtx, RestoreError};
use crate::mm::error::MmError;
use crate::remote::Remote;
use crest_inject::{nr, Tracee};
use crest_sys::uffd;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The events a lazy userfaultfd reports: the daemon follows the address
/// space through them.
pub const FEATURES: u64 = uffd::FEATURE_EVENT_FORK
    | uffd::FEATURE_EVENT_REMAP
    | uffd::FEATURE_EVENT_REMOVE
    | uffd::FEATURE_EVENT_UNMAP;

/// A restore's connection to its lazy-pages daemon.
pub struct Link {
    sock: OwnedFd,
    path: String,
    /// Bytes of pages left to the daemon.
    pub bytes: u64,
}

/// `USERFAULTFD_IOC_NEW` (`_IO(0xAA, 0x00)`) on `/dev/userfaultfd`.
const USERFAULTFD_IOC_NEW: u64 = 0xaa00;

/// A userfaultfd for the task's memory that takes faults of the kernel
/// too: its fd in the task. The task makes it itself if it may (it holds
/// CAP_SYS_PTRACE, or `vm.unprivileged_userfaultfd` is 1); a task forked
/// inside a user namespace may not, and makes it from crest's
/// `/dev/userfaultfd` instead (whose access is its file mode).
fn made_in_task(t: &mut Tracee) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    match t.syscall(nr::USERFAULTFD, &[flags]) {
        Ok(fd) => return Ok(fd),
        Err(e) => crate::debug!("pid {pid}: userfaultfd: {e}; through /dev/userfaultfd"),
    }
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/userfaultfd")
        .rat(
            pid,
            "--lazy-pages: the task may not make a userfaultfd that takes the kernel's faults, \
             and open /dev/userfaultfd",
        )?;
    let dfd = t.give_fd(&dev.into())?;
    let made = t.call(
        nr::IOCTL,
        &[dfd, USERFAULTFD_IOC_NEW, flags],
        "USERFAULTFD_IOC_NEW",
    );
    t.close_quietly(dfd);
    Ok(made?)
}

impl Link {
    /// Connects to the daemon listening in `work_dir`.
    pub fn connect(work_dir: &Path) -> Result<Link, RestoreError> {
        if !crest_sys::uffd::lazy_supported() {
            return Err(MmError::Failed {
                what: "--lazy-pages: no userfaultfd with the fork, remap, remove and unmap events \
                       here (the fork event needs CAP_SYS_PTRACE, which crest does not hold)"
                    .into(),
            }
            .in_restore(0));
        }
        let path = work_dir.join(SOCKET).to_string_lossy().into_owned();
        let sock = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .rat(0, "make a socket for the lazy-pages daemon")?;
        let addr = rustix::net::SocketAddrUnix::new(path.as_str())
            .rat(0, format!("the lazy-pages socket {path}"))?;
        rustix::net::connect(&sock, &addr).map_err(|e| {
            MmError::Failed {
                what: format!(
                    "--lazy-pages without a lazy-pages daemon at {path} ({e}): start `crest \
                     lazy-pages -D DIR` with the same work directory first"
                ),
            }
            .in_restore(0)
        })?;
        Ok(Link {
            sock,
            path,
            bytes: 0,
        })
    }

    /// Registers `ranges` of the task for missing pages in a userfaultfd
    /// made in the task (its fd closed there) and hands it to the daemon
    /// with `runs`, the task's pages there. Returns the ranges registered
    /// (the others are filled at restore).
    pub fn hand(
        &mut self,
        t: &mut Tracee,
        img_pid: u32,
        ranges: &[(u64, u64)],
        runs: &[Run],
    ) -> Result<Vec<(u64, u64)>, RestoreError> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let pid = t.pid();
        let fd = made_in_task(t)?;
        let taken = crate::remote::take_fd(pid, fd as u32);
        t.close(fd)?;
        let ufd = taken?;
        let got = uffd::api(&ufd, FEATURES).rat(pid, "UFFDIO_API for the lazy pages")?;
        if got & FEATURES != FEATURES {
            return Err(MmError::Failed {
                what: "--lazy-pages: this kernel's userfaultfd lacks the fork, remap, remove or \
                       unmap event"
                    .into(),
            }
            .in_restore(pid));
        }
        let mut registered = Vec::new();
        for &(s, e) in ranges {
            match uffd::register_missing(&ufd, s, e - s) {
                Ok(()) => registered.push((s, e)),
                Err(err) => crate::info!(
                    "pid {pid}: mapping {s:#x}-{e:#x} filled now, not lazily (UFFDIO_REGISTER: \
                     {err})"
                ),
            }
        }
        if registered.is_empty() {
            return Ok(registered);
        }
        let (lazy, _) = split_by(runs, &registered);
        self.bytes += lazy.iter().map(|r| r.len).sum::<u64>();
        let mut m = Vec::with_capacity(12 + 16 * registered.len());
        m.push(TASK);
        m.extend_from_slice(&img_pid.to_le_bytes());
        m.extend_from_slice(&pid.to_le_bytes());
        for (s, e) in &registered {
            m.extend_from_slice(&s.to_le_bytes());
            m.extend_from_slice(&e.to_le_bytes());
        }
        crest_sys::misc::send_with_fd(&self.sock, &m, Some(ufd.as_raw_fd())).rat(
            pid,
            format!("hand the userfaultfd to the daemon at {}", self.path),
        )?;
        drop(ufd);
        self.answer(pid)?;
        Ok(registered)
    }

    /// The tree runs: the daemon takes hold of `pids` (each task's
    /// leader). Fails when the daemon cannot or is gone.
    pub fn resumed(self, pids: &[i32]) -> Result<(), RestoreError> {
        let mut m = vec![GO];
        for p in pids {
            m.extend_from_slice(&p.to_le_bytes());
        }
        rustix::net::send(&self.sock, &m, rustix::net::SendFlags::NOSIGNAL).rat(
            0,
            format!("tell the lazy-pages daemon at {} to go", self.path),
        )?;
        self.answer(0)
    }

    fn answer(&self, pid: i32) -> Result<(), RestoreError> {
        let mut buf = [0u8; 512];
        let n = rustix::net::recv(&self.sock, &mut buf, rustix::net::RecvFlags::empty())
            .rat(pid, "the lazy-pages daemon's answer")?
            .0;
        match buf.get(..n) {
            Some([OK]) => Ok(()),
            Some([FAILED, why @ ..]) => Err(MmError::Failed {
                what: format!(
                    "the lazy-pages daemon refused: {}",
                    String::from_utf8_lossy(why)
                ),
            }
            .in_restore(pid)),
            _ => Err(MmError::Failed {
                what: format!("the lazy-pages daemon at {} is gone", self.path),
            }
            .in_restore(pid)),
        }
    }
}
