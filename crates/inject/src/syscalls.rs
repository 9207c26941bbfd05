//! x86-64 syscall numbers used by injection, and their names for errors.

pub mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const OPEN: u64 = 2;
    pub const CLOSE: u64 = 3;
    pub const LSEEK: u64 = 8;
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
    pub const BRK: u64 = 12;
    pub const RT_SIGACTION: u64 = 13;
    pub const RT_SIGPROCMASK: u64 = 14;
    pub const PREAD64: u64 = 17;
    pub const PREADV: u64 = 295;
    pub const MADVISE: u64 = 28;
    pub const DUP2: u64 = 33;
    pub const GETPID: u64 = 39;
    pub const GETITIMER: u64 = 36;
    pub const SETITIMER: u64 = 38;
    pub const FCNTL: u64 = 72;
    pub const CHDIR: u64 = 80;
    pub const FCHDIR: u64 = 81;
    pub const UMASK: u64 = 95;
    pub const SETUID: u64 = 105;
    pub const SETGID: u64 = 106;
    pub const SETGROUPS: u64 = 116;
    pub const SETRESUID: u64 = 117;
    pub const SETRESGID: u64 = 119;
    pub const SETFSUID: u64 = 122;
    pub const SETFSGID: u64 = 123;
    pub const CAPSET: u64 = 126;
    pub const RT_SIGQUEUEINFO: u64 = 129;
    pub const SIGALTSTACK: u64 = 131;
    pub const PERSONALITY: u64 = 135;
    pub const PRCTL: u64 = 157;
    pub const ARCH_PRCTL: u64 = 158;
    pub const CHROOT: u64 = 161;
    pub const SET_TID_ADDRESS: u64 = 218;
    pub const RT_TGSIGQUEUEINFO: u64 = 297;
    pub const PIPE2: u64 = 293;
    pub const DUP3: u64 = 292;
    pub const SET_ROBUST_LIST: u64 = 273;
    pub const OPENAT: u64 = 257;
    pub const RSEQ: u64 = 334;
    pub const CLOSE_RANGE: u64 = 436;
    pub const MREMAP: u64 = 25;
    pub const CLONE3: u64 = 435;
    pub const SETSID: u64 = 112;
    pub const SETPGID: u64 = 109;
    pub const RT_SIGTIMEDWAIT: u64 = 128;
    pub const EXIT_GROUP: u64 = 231;
    pub const WAIT4: u64 = 61;
    pub const SETNS: u64 = 308;
    pub const UNSHARE: u64 = 272;
}

/// A syscall's name, for error messages.
pub fn name(nr: u64) -> &'static str {
    use nr::*;
    match nr {
        READ => "read",
        WRITE => "write",
        OPEN => "open",
        CLOSE => "close",
        LSEEK => "lseek",
        MMAP => "mmap",
        MPROTECT => "mprotect",
        MUNMAP => "munmap",
        BRK => "brk",
        RT_SIGACTION => "rt_sigaction",
        RT_SIGPROCMASK => "rt_sigprocmask",
        PREAD64 => "pread64",
        PREADV => "preadv",
        MADVISE => "madvise",
        DUP2 => "dup2",
        GETPID => "getpid",
        GETITIMER => "getitimer",
        SETITIMER => "setitimer",
        FCNTL => "fcntl",
        CHDIR => "chdir",
        FCHDIR => "fchdir",
        UMASK => "umask",
        SETUID => "setuid",
        SETGID => "setgid",
        SETGROUPS => "setgroups",
        SETRESUID => "setresuid",
        SETRESGID => "setresgid",
        SETFSUID => "setfsuid",
        SETFSGID => "setfsgid",
        CAPSET => "capset",
        RT_SIGQUEUEINFO => "rt_sigqueueinfo",
        SIGALTSTACK => "sigaltstack",
        PERSONALITY => "personality",
        PRCTL => "prctl",
        ARCH_PRCTL => "arch_prctl",
        CHROOT => "chroot",
        SET_TID_ADDRESS => "set_tid_address",
        RT_TGSIGQUEUEINFO => "rt_tgsigqueueinfo",
        PIPE2 => "pipe2",
        DUP3 => "dup3",
        SET_ROBUST_LIST => "set_robust_list",
        OPENAT => "openat",
        RSEQ => "rseq",
        CLOSE_RANGE => "close_range",
        MREMAP => "mremap",
        CLONE3 => "clone3",
        SETSID => "setsid",
        SETPGID => "setpgid",
        RT_SIGTIMEDWAIT => "rt_sigtimedwait",
        EXIT_GROUP => "exit_group",
        WAIT4 => "wait4",
        SETNS => "setns",
        UNSHARE => "unshare",
        _ => "syscall",
    }
}
