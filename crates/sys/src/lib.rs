//! crest-sys: the only crate with `unsafe`. Thin wrappers over the syscalls
//! that `libc` exposes only raw and `rustix` not at all or not in the form
//! crest needs: ptrace requests and regsets, `clone3` with `set_tid`, nsfs
//! ioctls, `process_vm_readv/writev`, sockets spoken in raw `sockaddr`
//! bytes and `SCM_RIGHTS`/credentials, kcmp, pty and termios ioctls on
//! `libc::termios`. Where rustix has the call in crest's shape, crest uses
//! rustix (pipes, `pidfd_getfd`, `setns`, `socketpair`, `listen`,
//! `shutdown`, the fs calls); the wrappers of calls rustix has too that stay
//! here (`kill`, `tgkill`, `pidfd_open`, `prlimit`) take crest's raw pids,
//! where rustix wants a nonzero `Pid` and typed signals and resources.
//!
//! Every wrapper's doc line names the call it makes. Errors are
//! `std::io::Error` from errno; callers attach the step and the object.
#![allow(unsafe_code)]

pub mod creds;
pub mod fault;
pub mod mem;
pub mod misc;
pub mod net;
pub mod ns;
pub mod proc;
pub mod ptrace;
pub mod uffd;

/// Page size on x86-64.
pub const PAGE_SIZE: u64 = 4096;

pub(crate) fn cvt(ret: libc::c_long) -> std::io::Result<libc::c_long> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
