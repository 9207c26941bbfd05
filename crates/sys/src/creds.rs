//! crest's own credentials: what it holds, and giving up what its caller
//! does not hold (an unprivileged dump or restore run through a set-uid
//! or file-capability binary).

use crate::cvt;
use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;

/// `capset(2)` on the calling thread: the effective, permitted and
/// inheritable sets (64 bits each).
pub fn capset_self(eff: u64, prm: u64, inh: u64) -> io::Result<()> {
    let header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: eff as u32,
            permitted: prm as u32,
            inheritable: inh as u32,
        },
        CapData {
            effective: (eff >> 32) as u32,
            permitted: (prm >> 32) as u32,
            inheritable: (inh >> 32) as u32,
        },
    ];
    // SAFETY: the header and the two data words are live, laid out as the
    // kernel's `__user_cap_header_struct` and `__user_cap_data_struct[2]`.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    cvt(ret).map(drop)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `prctl(PR_SET_KEEPCAPS)`: whether the permitted set survives a change
/// of every uid away from 0.
pub fn set_keep_caps(on: bool) -> io::Result<()> {
    // SAFETY: PR_SET_KEEPCAPS takes an integer and touches no memory.
    let ret = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(on), 0, 0, 0) };
    cvt(ret.into()).map(drop)
}

/// `prctl(PR_GET_SECUREBITS)` of the calling thread.
pub fn securebits() -> io::Result<u32> {
    // SAFETY: PR_GET_SECUREBITS takes no argument and touches no memory.
    let ret = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    cvt(ret.into()).map(|v| v as u32)
}

/// `setresgid(gid, gid, gid)` then `setresuid(uid, uid, uid)` for the
/// whole process (glibc applies both to every thread).
pub fn become_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::setresgid(gid, gid, gid) }.into())?;
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::setresuid(uid, uid, uid) }.into()).map(drop)
}

/// `getauxval(AT_SECURE)`: whether a set-uid or set-gid bit or file
/// capabilities raised this program at exec. (`/proc/self/auxv` is closed
/// to a raised program: it is not dumpable.)
pub fn at_secure() -> bool {
    // SAFETY: getauxval reads the process's own auxiliary vector.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// `prctl(PR_SET_DUMPABLE, 1)`: the process's /proc files its own uid's
/// again (an exec that raised it made them root's).
pub fn set_dumpable() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes an integer and touches no memory.
    let ret = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    cvt(ret.into()).map(drop)
}
