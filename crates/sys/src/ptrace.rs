//! ptrace requests. Every request for a tracee must come from the thread
//! that attached it; callers keep all of them on one thread.

use crate::cvt;
use std::io;

pub const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
pub const PTRACE_EVENT_STOP: i32 = 128;
const NT_PRSTATUS: libc::c_int = 1;
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Largest xsave area we accept from the kernel.
pub const XSTATE_MAX: usize = 16384;

/// `struct user_regs_struct` of x86-64 (NT_PRSTATUS, 27 words).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// `r`'s 27 words in `user_regs_struct`'s order.
pub fn regs_words(r: &UserRegs) -> [u64; 27] {
    [
        r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx,
        r.rsi, r.rdi, r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss, r.fs_base, r.gs_base, r.ds,
        r.es, r.fs, r.gs,
    ]
}

/// [`regs_words`] read back.
pub fn regs_from_words(w: &[u64; 27]) -> UserRegs {
    UserRegs {
        r15: w[0],
        r14: w[1],
        r13: w[2],
        r12: w[3],
        rbp: w[4],
        rbx: w[5],
        r11: w[6],
        r10: w[7],
        r9: w[8],
        r8: w[9],
        rax: w[10],
        rcx: w[11],
        rdx: w[12],
        rsi: w[13],
        rdi: w[14],
        orig_rax: w[15],
        rip: w[16],
        cs: w[17],
        eflags: w[18],
        rsp: w[19],
        ss: w[20],
        fs_base: w[21],
        gs_base: w[22],
        ds: w[23],
        es: w[24],
        fs: w[25],
        gs: w[26],
    }
}

/// rseq registration of a thread (`struct ptrace_rseq_configuration`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

fn req(request: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: the callers in this module pass for `addr`/`data` either plain
    // integers or pointers to live buffers whose size matches the request.
    let ret = unsafe {
        libc::ptrace(
            request,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    cvt(ret)
}

/// `PTRACE_SEIZE` — attaches to a thread without stopping it.
pub fn seize(tid: i32, options: u32) -> io::Result<()> {
    req(libc::PTRACE_SEIZE, tid, 0, options as usize).map(drop)
}

/// `PTRACE_INTERRUPT` — asks a seized thread to stop.
pub fn interrupt(tid: i32) -> io::Result<()> {
    req(libc::PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

/// `PTRACE_LISTEN` — lets a tracee in a group stop stay stopped, and
/// report the next event (a `SIGCONT`, a signal) when it comes.
pub fn listen(tid: i32) -> io::Result<()> {
    req(libc::PTRACE_LISTEN, tid, 0, 0).map(drop)
}

/// `PTRACE_SETOPTIONS`.
pub fn set_options(tid: i32, options: u32) -> io::Result<()> {
    req(libc::PTRACE_SETOPTIONS, tid, 0, options as usize).map(drop)
}

/// `PTRACE_DETACH` — lets the thread go, delivering `sig` (0 for none).
pub fn detach(tid: i32, sig: i32) -> io::Result<()> {
    req(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_CONT`.
pub fn cont(tid: i32, sig: i32) -> io::Result<()> {
    req(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_SYSCALL`: run to the next syscall entry or exit.
pub fn syscall(tid: i32, sig: i32) -> io::Result<()> {
    req(libc::PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_SINGLESTEP`.
pub fn singlestep(tid: i32, sig: i32) -> io::Result<()> {
    req(libc::PTRACE_SINGLESTEP, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_GETEVENTMSG`.
pub fn event_msg(tid: i32) -> io::Result<u64> {
    let mut msg: u64 = 0;
    req(
        libc::PTRACE_GETEVENTMSG,
        tid,
        0,
        &mut msg as *mut u64 as usize,
    )?;
    Ok(msg)
}

fn getregset(tid: i32, nt: libc::c_int, buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    req(
        libc::PTRACE_GETREGSET,
        tid,
        nt as usize,
        &mut iov as *mut libc::iovec as usize,
    )?;
    Ok(iov.iov_len)
}

fn setregset(tid: i32, nt: libc::c_int, buf: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    req(
        libc::PTRACE_SETREGSET,
        tid,
        nt as usize,
        &mut iov as *mut libc::iovec as usize,
    )
    .map(drop)
}

/// `PTRACE_GETREGSET(NT_PRSTATUS)` — the general registers.
pub fn get_regs(tid: i32) -> io::Result<UserRegs> {
    let mut regs = UserRegs::default();
    let size = std::mem::size_of::<UserRegs>();
    let mut iov = libc::iovec {
        iov_base: (&mut regs as *mut UserRegs).cast(),
        iov_len: size,
    };
    req(
        libc::PTRACE_GETREGSET,
        tid,
        NT_PRSTATUS as usize,
        &mut iov as *mut libc::iovec as usize,
    )?;
    if iov.iov_len != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("NT_PRSTATUS has {} bytes, expected {size}", iov.iov_len),
        ));
    }
    Ok(regs)
}

/// `PTRACE_SETREGSET(NT_PRSTATUS)`.
pub fn set_regs(tid: i32, regs: &UserRegs) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: (regs as *const UserRegs as *mut UserRegs).cast(),
        iov_len: std::mem::size_of::<UserRegs>(),
    };
    req(
        libc::PTRACE_SETREGSET,
        tid,
        NT_PRSTATUS as usize,
        &mut iov as *mut libc::iovec as usize,
    )
    .map(drop)
}

/// `PTRACE_GETREGSET(NT_X86_XSTATE)` — the whole xsave area.
pub fn get_xstate(tid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let len = getregset(tid, NT_X86_XSTATE, &mut buf)?;
    buf.truncate(len);
    Ok(buf)
}

/// `PTRACE_SETREGSET(NT_X86_XSTATE)`.
pub fn set_xstate(tid: i32, area: &[u8]) -> io::Result<()> {
    setregset(tid, NT_X86_XSTATE, area)
}

/// `PTRACE_GETSIGMASK` — the blocked-signal mask.
pub fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut mask: u64 = 0;
    req(
        libc::PTRACE_GETSIGMASK,
        tid,
        8,
        &mut mask as *mut u64 as usize,
    )?;
    Ok(mask)
}

/// `PTRACE_SETSIGMASK` — sets the blocked-signal mask from outside.
pub fn set_sigmask(tid: i32, mask: u64) -> io::Result<()> {
    req(
        libc::PTRACE_SETSIGMASK,
        tid,
        8,
        &mask as *const u64 as usize,
    )
    .map(drop)
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Size of a `siginfo_t`.
pub const SIGINFO_SIZE: usize = 128;

/// `PTRACE_PEEKSIGINFO` — the pending signals of the private (per-thread)
/// or shared (per-process) queue, without dequeuing them.
pub fn peek_siginfo(tid: i32, shared: bool) -> io::Result<Vec<[u8; SIGINFO_SIZE]>> {
    const BATCH: usize = 32;
    let mut out = Vec::new();
    loop {
        let mut buf = [[0u8; SIGINFO_SIZE]; BATCH];
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: u32::from(shared),
            nr: BATCH as i32,
        };
        let n = req(
            libc::PTRACE_PEEKSIGINFO,
            tid,
            &args as *const PeekSiginfoArgs as usize,
            buf.as_mut_ptr() as usize,
        )? as usize;
        out.extend_from_slice(&buf[..n.min(BATCH)]);
        if n < BATCH {
            return Ok(out);
        }
        if out.len() > 1 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more than a million pending signals",
            ));
        }
    }
}

/// `PTRACE_GET_RSEQ_CONFIGURATION` — a thread's rseq registration.
pub fn get_rseq_config(tid: i32) -> io::Result<RseqConfig> {
    let mut cfg = RseqConfig::default();
    let n = req(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        std::mem::size_of::<RseqConfig>(),
        &mut cfg as *mut RseqConfig as usize,
    )?;
    if (n as usize) < 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short rseq configuration",
        ));
    }
    Ok(cfg)
}

/// What `waitpid` reported for a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32),
    Signaled(i32),
    /// A ptrace stop: the signal and the event (`status >> 16`).
    Stopped {
        sig: i32,
        event: i32,
    },
    Other(i32),
}

/// `waitpid(tid, __WALL)` — blocks until the thread changes state.
pub fn wait(tid: i32) -> io::Result<WaitStatus> {
    wait_flags(tid, libc::__WALL).map(|w| w.unwrap_or(WaitStatus::Other(0)))
}

/// `waitpid(tid, __WALL | WNOHANG)` — `None` when nothing changed yet.
pub fn try_wait(tid: i32) -> io::Result<Option<WaitStatus>> {
    wait_flags(tid, libc::__WALL | libc::WNOHANG)
}

fn wait_flags(tid: i32, flags: libc::c_int) -> io::Result<Option<WaitStatus>> {
    wait_who(tid, flags).map(|w| w.map(|(_, s)| s))
}

/// `waitpid(-1, __WALL)` (with `WNOHANG` when `nohang`): the thread that
/// changed state and how; `None` when nothing did yet.
pub fn wait_any(nohang: bool) -> io::Result<Option<(i32, WaitStatus)>> {
    let flags = if nohang {
        libc::__WALL | libc::WNOHANG
    } else {
        libc::__WALL
    };
    wait_who(-1, flags)
}

fn wait_who(tid: i32, flags: libc::c_int) -> io::Result<Option<(i32, WaitStatus)>> {
    let mut status: libc::c_int = 0;
    let who = loop {
        // SAFETY: `status` is a valid out-pointer for the duration of the call.
        let ret = unsafe { libc::waitpid(tid, &mut status, flags) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if ret == 0 {
            return Ok(None);
        }
        break ret;
    };
    let ws = if libc::WIFEXITED(status) {
        WaitStatus::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        WaitStatus::Signaled(libc::WTERMSIG(status))
    } else if libc::WIFSTOPPED(status) {
        WaitStatus::Stopped {
            sig: libc::WSTOPSIG(status),
            event: (status >> 16) & 0xff,
        }
    } else {
        WaitStatus::Other(status)
    };
    Ok(Some((who, ws)))
}

/// `PTRACE_O_SUSPEND_SECCOMP`: the tracee's seccomp filters (and strict
/// mode) are not applied while it is traced with this option.
pub const PTRACE_O_SUSPEND_SECCOMP: u32 = 1 << 21;
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
/// Most BPF instructions in one classic filter (`BPF_MAXINSNS`).
pub const BPF_MAXINSNS: usize = 4096;

/// `PTRACE_SECCOMP_GET_FILTER`: the classic BPF program of the seccomp
/// filter `index` of a stopped tracee (0: the one installed last), as
/// raw `struct sock_filter` words, 8 bytes each. `ENOENT` past the
/// oldest.
pub fn seccomp_filter(tid: i32, index: u64) -> io::Result<Vec<u8>> {
    let n = req(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, 0)? as usize;
    if n == 0 || n > BPF_MAXINSNS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a seccomp filter of {n} instructions"),
        ));
    }
    let mut buf = vec![0u8; n * 8];
    // (the kernel copies exactly n instructions into the buffer)
    let got = req(
        PTRACE_SECCOMP_GET_FILTER,
        tid,
        index as usize,
        buf.as_mut_ptr() as usize,
    )? as usize;
    buf.truncate(got.min(n) * 8);
    Ok(buf)
}

/// `PTRACE_SECCOMP_GET_METADATA`: the flags (`SECCOMP_FILTER_FLAG_LOG`,
/// ...) filter `index` was installed with.
pub fn seccomp_flags(tid: i32, index: u64) -> io::Result<u64> {
    // struct seccomp_metadata { __u64 filter_off; __u64 flags; }
    let mut md = [index, 0u64];
    req(
        PTRACE_SECCOMP_GET_METADATA,
        tid,
        std::mem::size_of_val(&md),
        md.as_mut_ptr() as usize,
    )?;
    Ok(md[1])
}
