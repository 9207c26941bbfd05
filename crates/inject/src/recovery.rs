//! The recovery area: what lets a seized task find its own way back if
//! crest vanishes in the middle of a dump.
//!
//! A dumped task is mostly driven from outside, but injected syscalls
//! change its registers and block its signals, and some leave things in it
//! for a while (a scratch mapping, an fd). When crest dies, the kernel
//! detaches every tracee and lets it run from wherever it is. So, before the
//! first change, crest maps a small read-only executable area in the task:
//!
//! - page 0: [`STUB`], a `syscall` instruction followed by the recovery
//!   code. Every injected syscall runs on that `syscall` instruction, under
//!   `PTRACE_SYSCALL`, so the thread always stops at the syscall's exit,
//!   *before* the next instruction; while crest lives, the recovery code
//!   never runs. Between two injected calls the thread waits there, parked.
//! - one slot per thread: the list of what crest has left in the task for
//!   the moment (fds, mappings), and a signal frame (`struct rt_sigframe`)
//!   that holds the thread's context as it was seized: registers, the
//!   blocked mask and the whole xsave area.
//!
//! If crest dies, the thread resumes: it finishes the syscall in flight and
//! runs the recovery code, which undoes that syscall if it made something,
//! closes and unmaps what the slot's list names, and returns through
//! `rt_sigreturn` to its seized context. What stays is the area itself
//! (code cannot unmap the page it runs from): whoever [`crate::Tracee::arm`]
//! announced it to takes it away ([`crate::leftover`]); README.md explains.
//!
//! Registers the recovery code reads (set with every injected call; a
//! syscall keeps them): `r12` the address of the frame's `ucontext` (the
//! stack pointer `rt_sigreturn` wants), `r13` the slot's list, `r14` what
//! the call in flight does ([`Undo`]), `r15` the length of a mapping it
//! makes.

use crest_sys::ptrace::UserRegs;

/// x86-64 machine code of the stub; `recovery.s` beside this file is its
/// source (`as recovery.s && objcopy -O binary -j .text`).
pub const STUB: &[u8] = &[
    0x0f, 0x05, 0x48, 0xc7, 0xc3, 0xff, 0xff, 0xff, 0xff, 0x48, 0xc7, 0xc5, 0xff, 0xff, 0xff, 0xff,
    0x49, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff, 0x49, 0x83, 0xfe, 0x01, 0x75, 0x17, 0x48, 0x89, 0xc3,
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x68, 0x48, 0x89, 0xc7, 0xb8, 0x03, 0x00, 0x00, 0x00,
    0x0f, 0x05, 0xeb, 0x5c, 0x49, 0x83, 0xfe, 0x02, 0x75, 0x1a, 0x48, 0x89, 0xc5, 0x48, 0x3d, 0x01,
    0xf0, 0xff, 0xff, 0x73, 0x4b, 0x48, 0x89, 0xc7, 0x4c, 0x89, 0xfe, 0xb8, 0x0b, 0x00, 0x00, 0x00,
    0x0f, 0x05, 0xeb, 0x3c, 0x49, 0x83, 0xfe, 0x03, 0x75, 0x05, 0x48, 0x89, 0xfb, 0xeb, 0x31, 0x49,
    0x83, 0xfe, 0x04, 0x75, 0x05, 0x48, 0x89, 0xfd, 0xeb, 0x26, 0x49, 0x83, 0xfe, 0x05, 0x75, 0x20,
    0x48, 0x85, 0xc0, 0x75, 0x1b, 0x41, 0x8b, 0x1a, 0x45, 0x8b, 0x42, 0x04, 0x48, 0x89, 0xdf, 0xb8,
    0x03, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x4c, 0x89, 0xc7, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x0f, 0x05,
    0x4d, 0x8b, 0x4d, 0x00, 0x4d, 0x8d, 0x55, 0x08, 0x4d, 0x85, 0xc9, 0x74, 0x3c, 0x49, 0x8b, 0x7a,
    0x08, 0x49, 0x83, 0x3a, 0x01, 0x75, 0x13, 0x48, 0x39, 0xdf, 0x74, 0x24, 0x4c, 0x39, 0xc7, 0x74,
    0x1f, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0x16, 0x49, 0x83, 0x3a, 0x02, 0x75, 0x10,
    0x48, 0x39, 0xef, 0x74, 0x0b, 0x49, 0x8b, 0x72, 0x10, 0xb8, 0x0b, 0x00, 0x00, 0x00, 0x0f, 0x05,
    0x49, 0x83, 0xc2, 0x18, 0x49, 0xff, 0xc9, 0xeb, 0xbf, 0x4c, 0x89, 0xe4, 0xb8, 0x0f, 0x00, 0x00,
    0x00, 0x0f, 0x05, 0x0f, 0x0b,
];

/// Offset in the stub of the code that runs after the injected `syscall`.
pub const RECOVER: u64 = 2;

/// What the syscall in flight makes or takes away, so that the recovery
/// code can undo it (`r14`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Undo {
    Nothing = 0,
    /// It returns a new fd: close it.
    NewFd = 1,
    /// It returns a new mapping of `r15` bytes: unmap it.
    NewMap = 2,
    /// It closes fd `rdi`: do not close it again from the list.
    ClosesFd = 3,
    /// It unmaps the mapping at `rdi`: do not unmap it again.
    UnmapsMap = 4,
    /// It writes two new fds at `r10` (socketpair): close them.
    NewFdPair = 5,
}

/// Something crest left in the task for the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Fd(u64),
    Map { addr: u64, len: u64 },
}

/// Entries a slot's list holds.
pub const LIST_CAP: usize = 32;
/// Bytes of a slot's list: a count and `LIST_CAP` entries of three words.
pub const LIST_BYTES: usize = 8 + 24 * LIST_CAP;
/// `struct rt_sigframe` of x86-64: `pretcode`, `ucontext` (304), `siginfo`.
const SIGFRAME: usize = 8 + 304 + 128;
const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const PAGE: u64 = 4096;

/// The list as the recovery code reads it.
pub fn list_bytes(held: &[Held]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LIST_BYTES);
    out.extend_from_slice(&(held.len() as u64).to_le_bytes());
    for h in held {
        let (kind, a, b) = match *h {
            Held::Fd(fd) => (1u64, fd, 0),
            Held::Map { addr, len } => (2, addr, len),
        };
        for w in [kind, a, b] {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}

/// Where things sit in one thread's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub list: u64,
    pub frame: u64,
    /// The stack pointer `rt_sigreturn` takes: the frame's `ucontext`.
    pub ucontext: u64,
    pub fpstate: u64,
}

/// The layout of an area for `threads` threads whose xsave area is
/// `xstate_len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub slot_size: u64,
    pub slots: usize,
    pub len: u64,
}

impl Layout {
    pub fn new(threads: usize, xstate_len: usize) -> Layout {
        let fp_off = (LIST_BYTES + SIGFRAME).div_ceil(64) * 64;
        let slot_size = ((fp_off + xstate_len + 4) as u64).div_ceil(64) * 64;
        let len = (PAGE + slot_size * threads as u64).div_ceil(PAGE) * PAGE;
        Layout {
            slot_size,
            slots: threads,
            len,
        }
    }

    /// Slot `k` of an area mapped at `area`.
    pub fn slot(&self, area: u64, k: usize) -> Slot {
        let list = area + PAGE + self.slot_size * k as u64;
        let frame = list + LIST_BYTES as u64;
        let fpstate = list + (LIST_BYTES + SIGFRAME).div_ceil(64) as u64 * 64;
        Slot {
            list,
            frame,
            ucontext: frame + 8,
            fpstate,
        }
    }

    /// Room for an xsave area of `len` bytes in a slot.
    pub fn fits_xstate(&self, len: usize) -> bool {
        let fp_off = (LIST_BYTES + SIGFRAME).div_ceil(64) * 64;
        fp_off + len + 4 <= self.slot_size as usize
    }
}

/// The registers a thread resumes with when nothing intervenes: a syscall
/// the seizure interrupted restarts as the kernel would restart it had no
/// handler run (`rt_sigreturn` itself never restarts).
pub fn resumed_regs(r: &UserRegs) -> UserRegs {
    const ERESTARTSYS: i64 = -512;
    const ERESTARTNOINTR: i64 = -513;
    const ERESTARTNOHAND: i64 = -514;
    const ERESTART_RESTARTBLOCK: i64 = -516;
    const RESTART_SYSCALL: u64 = 219;
    let mut out = *r;
    if (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                out.rax = r.orig_rax;
                out.rip = r.rip.wrapping_sub(2);
            }
            ERESTART_RESTARTBLOCK => {
                out.rax = RESTART_SYSCALL;
                out.rip = r.rip.wrapping_sub(2);
            }
            _ => {}
        }
    }
    out
}

/// A signal frame (`struct rt_sigframe` and its xsave area) that returns
/// the thread to `regs` with `sigmask` blocked and its FPU state `xstate`
/// (as `PTRACE_GETREGSET(NT_X86_XSTATE)` gave it); `slot` says where it
/// lies. The bytes cover `slot.frame` up to the end of the xsave area.
pub fn frame(regs: &UserRegs, sigmask: u64, xstate: &[u8], slot: &Slot) -> Vec<u8> {
    let r = resumed_regs(regs);
    let len = (slot.fpstate - slot.frame) as usize + xstate.len() + 4;
    let mut f = vec![0u8; len];
    let mut put = |off: usize, v: u64| f[off..off + 8].copy_from_slice(&v.to_le_bytes());
    // ucontext at 8: uc_flags, uc_link, uc_stack {sp, flags, size}
    put(8, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
    // An invalid ss_flags: rt_sigreturn's sigaltstack() refuses it and the
    // alternate stack stays as it is.
    put(8 + 24, 3);
    let mc = 8 + 40;
    let words = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.eflags,
    ];
    for (i, w) in words.iter().enumerate() {
        put(mc + 8 * i, *w);
    }
    // cs, gs, fs, ss (16 bits each)
    let seg =
        (r.cs & 0xffff) | (r.gs & 0xffff) << 16 | (r.fs & 0xffff) << 32 | (r.ss & 0xffff) << 48;
    put(mc + 144, seg);
    put(mc + 184, slot.fpstate);
    put(8 + 296, sigmask);
    let fp = (slot.fpstate - slot.frame) as usize;
    f[fp..fp + xstate.len()].copy_from_slice(xstate);
    // ptrace keeps the enabled features (XCR0) at 464 of the FXSAVE
    // region; a signal frame has the software bytes there instead, which
    // the kernel checks, and a second magic just past the area.
    let xcr0 = xstate
        .get(464..472)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .unwrap_or(0);
    if xstate.len() >= 512 {
        let size = xstate.len() as u32;
        let sw = fp + 464;
        f[sw..sw + 48].fill(0);
        f[sw..sw + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        f[sw + 4..sw + 8].copy_from_slice(&(size + 4).to_le_bytes());
        f[sw + 8..sw + 16].copy_from_slice(&xcr0.to_le_bytes());
        f[sw + 16..sw + 20].copy_from_slice(&size.to_le_bytes());
    }
    let end = fp + xstate.len();
    f[end..end + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    f
}

/// Whether syscall `nr` makes or takes away something the recovery code
/// must know of (see [`Undo`]), and the mapping length for a new mapping.
pub fn undo_of(nr: u64, args: &[u64]) -> (Undo, u64) {
    use crate::nr as n;
    let a = |i: usize| args.get(i).copied().unwrap_or(0);
    match nr {
        n::OPEN
        | n::OPENAT
        | n::DUP
        | n::SOCKET
        | n::PIDFD_OPEN
        | n::PIDFD_GETFD
        | n::MEMFD_CREATE
        | n::EVENTFD2
        | n::EPOLL_CREATE1
        | n::INOTIFY_INIT1
        | n::OPEN_TREE
        | n::FSOPEN
        | n::FSMOUNT
        | n::FSPICK
        | n::TIMERFD_CREATE
        | n::SIGNALFD4
        | n::MQ_OPEN
        | n::OPEN_BY_HANDLE_AT
        | n::USERFAULTFD => (Undo::NewFd, 0),
        n::SOCKETPAIR => (Undo::NewFdPair, 0),
        n::FCNTL if a(1) == libc::F_DUPFD as u64 || a(1) == libc::F_DUPFD_CLOEXEC as u64 => {
            (Undo::NewFd, 0)
        }
        n::MMAP => (Undo::NewMap, a(1).div_ceil(PAGE) * PAGE),
        n::CLOSE => (Undo::ClosesFd, 0),
        n::MUNMAP => (Undo::UnmapsMap, 0),
        _ => (Undo::Nothing, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_starts_with_syscall_and_ends_in_sigreturn() {
        assert_eq!(&STUB[..2], &[0x0f, 0x05]);
        // mov $15, %eax; syscall; ud2
        assert_eq!(
            &STUB[STUB.len() - 9..],
            &[0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05, 0x0f, 0x0b]
        );
        assert!(STUB.len() < PAGE as usize);
    }

    #[test]
    fn layout_aligns_the_xsave_area() {
        let l = Layout::new(3, 2696);
        for k in 0..3 {
            let s = l.slot(0x7000_0000, k);
            assert_eq!(s.fpstate % 64, 0);
            assert_eq!(s.ucontext, s.frame + 8);
            assert!(s.fpstate + 2700 <= 0x7000_0000 + PAGE + l.slot_size * (k as u64 + 1));
        }
        assert_eq!(l.len % PAGE, 0);
        assert!(l.fits_xstate(2696));
        assert!(!l.fits_xstate(l.slot_size as usize));
    }

    #[test]
    fn interrupted_syscalls_restart() {
        let mut r = UserRegs {
            orig_rax: 35,
            rax: (-514i64) as u64,
            rip: 0x1002,
            ..Default::default()
        };
        let o = resumed_regs(&r);
        assert_eq!((o.rax, o.rip), (35, 0x1000));
        r.rax = (-516i64) as u64;
        assert_eq!(resumed_regs(&r).rax, 219);
        r.rax = (-4i64) as u64; // EINTR stays
        assert_eq!(resumed_regs(&r), r);
        r.orig_rax = u64::MAX; // not in a syscall
        r.rax = (-514i64) as u64;
        assert_eq!(resumed_regs(&r), r);
    }

    #[test]
    fn frame_holds_context_mask_and_magic() {
        let l = Layout::new(1, 1024);
        let s = l.slot(0x10000, 0);
        let mut xs = vec![0u8; 1024];
        xs[464..472].copy_from_slice(&7u64.to_le_bytes());
        let regs = UserRegs {
            rip: 0x4000,
            rsp: 0x8000,
            cs: 0x33,
            ss: 0x2b,
            orig_rax: u64::MAX,
            ..Default::default()
        };
        let f = frame(&regs, 0xdead, &xs, &s);
        let word = |o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap());
        assert_eq!(word(8 + 40 + 128), 0x4000);
        assert_eq!(word(8 + 40 + 120), 0x8000);
        assert_eq!(word(8 + 296), 0xdead);
        assert_eq!(word(8 + 40 + 184), s.fpstate);
        assert_eq!(word(8 + 40 + 144) >> 48, 0x2b);
        let fp = (s.fpstate - s.frame) as usize;
        let sw = |o: usize| u32::from_le_bytes(f[fp + o..fp + o + 4].try_into().unwrap());
        assert_eq!(sw(464), FP_XSTATE_MAGIC1);
        assert_eq!(sw(468), 1028);
        assert_eq!(sw(472), 7);
        assert_eq!(sw(480), 1024);
        assert_eq!(sw(1024), FP_XSTATE_MAGIC2);
    }

    #[test]
    fn list_encodes_entries() {
        let b = list_bytes(&[
            Held::Fd(7),
            Held::Map {
                addr: 0x1000,
                len: 0x2000,
            },
        ]);
        assert_eq!(b.len(), 8 + 48);
        assert_eq!(b[0], 2);
        assert_eq!(b[8], 1);
        assert_eq!(b[16], 7);
        assert_eq!(b[32], 2);
    }

    #[test]
    fn undo_kinds() {
        use crate::nr;
        assert_eq!(undo_of(nr::OPENAT, &[]).0, Undo::NewFd);
        assert_eq!(undo_of(nr::MMAP, &[0, 5000]), (Undo::NewMap, 8192));
        assert_eq!(undo_of(nr::CLOSE, &[3]).0, Undo::ClosesFd);
        assert_eq!(undo_of(nr::GETPID, &[]).0, Undo::Nothing);
    }
}
