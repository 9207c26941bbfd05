//! crest-sys: the only crate with `unsafe`. Thin wrappers over the syscalls
//! that `libc` exposes only raw: ptrace requests and regsets, `clone3` with
//! `set_tid`, nsfs ioctls, `pidfd_getfd`, `process_vm_readv/writev`.
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

/// Page size on x86-64.
pub const PAGE_SIZE: u64 = 4096;

pub(crate) fn cvt(ret: libc::c_long) -> std::io::Result<libc::c_long> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
