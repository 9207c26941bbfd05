//! nsfs ioctls on `/proc/PID/ns/*` files.

use crate::cvt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn ns_ioctl(fd: &impl AsRawFd, request: libc::Ioctl) -> io::Result<libc::c_long> {
    // SAFETY: the nsfs requests used here take no argument pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request) };
    cvt(ret as libc::c_long)
}

/// `ioctl(NS_GET_PARENT)` — the parent of a user or pid namespace.
/// `EPERM` means the parent is outside the caller's namespace.
pub fn get_parent(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    let raw = ns_ioctl(fd, libc::NS_GET_PARENT)?;
    // SAFETY: on success the ioctl returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// `ioctl(NS_GET_USERNS)` — the user namespace owning a namespace.
pub fn get_userns(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    let raw = ns_ioctl(fd, libc::NS_GET_USERNS)?;
    // SAFETY: on success the ioctl returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// `ioctl(NS_GET_NSTYPE)` — the `CLONE_NEW*` type of a namespace.
pub fn get_nstype(fd: &impl AsRawFd) -> io::Result<i32> {
    ns_ioctl(fd, libc::NS_GET_NSTYPE).map(|v| v as i32)
}

/// `ioctl(NS_GET_OWNER_UID)` — the uid (in the caller's namespace) that
/// created a user namespace.
pub fn get_owner_uid(fd: &impl AsRawFd) -> io::Result<u32> {
    let mut uid: libc::uid_t = 0;
    // SAFETY: NS_GET_OWNER_UID writes one uid_t to the pointer we pass.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_OWNER_UID, &mut uid) };
    cvt(ret as libc::c_long)?;
    Ok(uid)
}

/// `unshare(flags)` for the calling thread (a single-threaded process's
/// whole self).
pub fn unshare(flags: i32) -> io::Result<()> {
    // SAFETY: a plain integer argument.
    let ret = unsafe { libc::unshare(flags) };
    cvt(ret as libc::c_long).map(drop)
}

/// `mount(source, target, fstype, flags, data)`; `None` passes NULL.
pub fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: u64,
    data: Option<&str>,
) -> io::Result<()> {
    let c = |s: &str| {
        std::ffi::CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let source = source.map(c).transpose()?;
    let target = c(target)?;
    let fstype = fstype.map(c).transpose()?;
    let data = data.map(c).transpose()?;
    let ptr = |o: &Option<std::ffi::CString>| o.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that lives
    // across the call.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    cvt(ret as libc::c_long).map(drop)
}
