//! userfaultfd from the side that serves the faults: `UFFDIO_API`,
//! `UFFDIO_REGISTER` (missing mode), `UFFDIO_COPY`, `UFFDIO_ZEROPAGE`,
//! `UFFDIO_WAKE` on a userfaultfd crest holds a copy of (the mm it serves
//! is the one it was made in), and its messages decoded.

use crate::cvt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// `UFFD_FEATURE_EVENT_FORK`: a fork's child gets a userfaultfd of its own
/// (given to the reader in the event); needs `CAP_SYS_PTRACE`.
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
/// `UFFD_FEATURE_EVENT_REMAP`: `mremap` of a registered range reported.
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// `UFFD_FEATURE_EVENT_REMOVE`: `madvise(MADV_DONTNEED/REMOVE)` reported.
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// `UFFD_FEATURE_EVENT_UNMAP`: `munmap` of a registered range reported.
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;

/// One message read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// A missing page at this address (the thread waits).
    Fault {
        addr: u64,
    },
    /// A fork: the child's userfaultfd, now an fd of this process.
    Fork {
        ufd: i32,
    },
    /// `mremap` moved `len` bytes from `from` to `to`.
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    /// Pages of `start..end` dropped (they read as zeros from now on).
    Remove {
        start: u64,
        end: u64,
    },
    /// `start..end` unmapped.
    Unmap {
        start: u64,
        end: u64,
    },
    Other(u8),
}

/// Size of `struct uffd_msg`.
pub const MSG_SIZE: usize = 32;

/// Decodes one `struct uffd_msg`.
pub fn parse(m: &[u8; MSG_SIZE]) -> Msg {
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&m[o..o + 8]);
        u64::from_le_bytes(b)
    };
    match m[0] {
        0x12 => Msg::Fault { addr: u64_at(16) },
        0x13 => Msg::Fork {
            ufd: u64_at(8) as u32 as i32,
        },
        0x14 => Msg::Remap {
            from: u64_at(8),
            to: u64_at(16),
            len: u64_at(24),
        },
        0x15 => Msg::Remove {
            start: u64_at(8),
            end: u64_at(16),
        },
        0x16 => Msg::Unmap {
            start: u64_at(8),
            end: u64_at(16),
        },
        e => Msg::Other(e),
    }
}

/// `ioctl(UFFDIO_API)` asking `features`: those the kernel gave.
pub fn api(fd: &impl AsRawFd, features: u64) -> io::Result<u64> {
    let mut a: [u64; 3] = [UFFD_API, features, 0];
    // SAFETY: UFFDIO_API reads and writes one struct uffdio_api (three
    // u64) at the pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, a.as_mut_ptr()) };
    cvt(ret as libc::c_long)?;
    Ok(a[1])
}

/// `ioctl(UFFDIO_REGISTER)` of `start..start+len` for missing pages.
pub fn register_missing(fd: &impl AsRawFd, start: u64, len: u64) -> io::Result<()> {
    let mut r: [u64; 4] = [start, len, UFFDIO_REGISTER_MODE_MISSING, 0];
    // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register
    // (four u64) at the pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_REGISTER as _, r.as_mut_ptr()) };
    cvt(ret as libc::c_long).map(drop)
}

/// `ioctl(UFFDIO_COPY)` of `src` to `dst` (waking the threads waiting
/// there): the bytes copied, or the error with the bytes copied before it.
pub fn copy(fd: &impl AsRawFd, dst: u64, src: &[u8]) -> Result<u64, (io::Error, u64)> {
    let mut c: [u64; 5] = [dst, src.as_ptr() as u64, src.len() as u64, 0, 0];
    // SAFETY: UFFDIO_COPY reads one struct uffdio_copy (five u64) and
    // writes its last field; the kernel reads `src.len()` bytes from the
    // live slice `src`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_COPY as _, c.as_mut_ptr()) };
    let done = if (c[4] as i64) > 0 { c[4] } else { 0 };
    match cvt(ret as libc::c_long) {
        Ok(_) => Ok(done),
        Err(e) => Err((e, done)),
    }
}

/// `ioctl(UFFDIO_ZEROPAGE)` of `start..start+len` (waking the waiters).
pub fn zeropage(fd: &impl AsRawFd, start: u64, len: u64) -> io::Result<()> {
    let mut z: [u64; 4] = [start, len, 0, 0];
    // SAFETY: UFFDIO_ZEROPAGE reads one struct uffdio_zeropage (four u64)
    // and writes its last field.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_ZEROPAGE as _, z.as_mut_ptr()) };
    cvt(ret as libc::c_long).map(drop)
}

/// `ioctl(UFFDIO_WAKE)` of the threads waiting in `start..start+len`.
pub fn wake(fd: &impl AsRawFd, start: u64, len: u64) -> io::Result<()> {
    let r: [u64; 2] = [start, len];
    // SAFETY: UFFDIO_WAKE reads one struct uffdio_range (two u64).
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_WAKE as _, r.as_ptr()) };
    cvt(ret as libc::c_long).map(drop)
}

/// Whether this process may make a userfaultfd that serves faults taken
/// in the kernel too, with the fork event: one is made, its API agreed
/// with fork, remap, remove and unmap events, closed.
pub fn lazy_supported() -> bool {
    // SAFETY: plain integer flags.
    let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC as libc::c_long) };
    let Ok(fd) = cvt(ret) else {
        return false;
    };
    // SAFETY: the kernel returned a new fd that we now own.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let want =
        FEATURE_EVENT_FORK | FEATURE_EVENT_REMAP | FEATURE_EVENT_REMOVE | FEATURE_EVENT_UNMAP;
    api(&fd, want).is_ok_and(|got| got & want == want)
}

/// `poll` of several fds: each one's `revents`, waiting at most `ms`
/// milliseconds (-1: no limit); EINTR is a return with nothing.
pub fn poll(fds: &[(i32, i16)], ms: i32) -> io::Result<Vec<i16>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfds.
    let ret = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    match cvt(ret as libc::c_long) {
        Ok(_) => Ok(p.iter().map(|x| x.revents).collect()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(vec![0; p.len()]),
        Err(e) => Err(e),
    }
}

/// SIGCHLD blocked in the calling thread and read through a new
/// non-blocking `signalfd` instead.
pub fn sigchld_fd() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
    }
    // SAFETY: `set` is initialised; the old mask is not asked for.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    // SAFETY: `set` is initialised; -1 asks for a new fd.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    cvt(fd as libc::c_long)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode() {
        let mut m = [0u8; MSG_SIZE];
        m[0] = 0x12;
        m[16..24].copy_from_slice(&0x7000_1234u64.to_le_bytes());
        assert_eq!(parse(&m), Msg::Fault { addr: 0x7000_1234 });
        m[0] = 0x14;
        m[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        m[16..24].copy_from_slice(&0x2000u64.to_le_bytes());
        m[24..32].copy_from_slice(&0x3000u64.to_le_bytes());
        assert_eq!(
            parse(&m),
            Msg::Remap {
                from: 0x1000,
                to: 0x2000,
                len: 0x3000
            }
        );
        m[0] = 0x13;
        m[8..16].copy_from_slice(&7u64.to_le_bytes());
        assert_eq!(parse(&m), Msg::Fork { ufd: 7 });
    }
}
