//! Making processes: `clone3` with `set_tid`.

use crate::cvt;
use std::io;

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// How the child made by [`spawn_stopped`] sets up its session and group
/// before it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSetup {
    /// Keep the parent's session and process group.
    Inherit,
    /// `setsid()`: lead a new session (and group).
    NewSession,
    /// `setpgid(0, 0)`: lead a new group in the parent's session.
    NewGroup,
}

/// `clone3` with `set_tid` — creates a child with the given pid at each pid
/// namespace level (innermost first in `set_tid`, as the kernel wants it),
/// which attaches itself with `PTRACE_TRACEME`, sets up its session and
/// stops with `SIGSTOP`. The caller then owns a traced, stopped child and
/// transforms it from outside. Returns the child's pid.
pub fn spawn_stopped(set_tid: &[i32], session: SessionSetup) -> io::Result<i32> {
    spawn_stopped_with(set_tid, session, 0)
}

/// [`spawn_stopped`] with extra `clone3` flags (such as `CLONE_NEWPID`,
/// which makes the child the init of a new pid namespace).
pub fn spawn_stopped_with(set_tid: &[i32], session: SessionSetup, flags: u64) -> io::Result<i32> {
    let pid = fork_with(set_tid, flags, libc::SIGCHLD as u64)?;
    if pid == 0 {
        child_stop(session);
    }
    Ok(pid)
}

/// `clone3` without `CLONE_VM`: a fork with `set_tid` and `flags`;
/// returns 0 in the child, which must only make raw syscalls.
fn fork_with(set_tid: &[i32], flags: u64, exit_signal: u64) -> io::Result<i32> {
    let args = CloneArgs {
        flags,
        exit_signal,
        set_tid: if set_tid.is_empty() {
            0
        } else {
            set_tid.as_ptr() as u64
        },
        set_tid_size: set_tid.len() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size we pass; without
    // CLONE_VM the child runs on a copy of our memory, like fork(). Both
    // callers' children make raw syscalls only and never return, so no
    // Rust state (locks, allocator) is touched in them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    cvt(ret).map(|p| p as i32)
}

/// `clone3(CLONE_PARENT | flags)` with `set_tid` — creates a sibling of
/// the caller (a child of the caller's parent, as CRIU's
/// `--restore-sibling` wants the restored root), which sets up its session
/// and then waits in `pause()` to be seized: it cannot `PTRACE_TRACEME`,
/// its parent is not the caller. Returns its pid.
pub fn spawn_sibling(set_tid: &[i32], session: SessionSetup, flags: u64) -> io::Result<i32> {
    // (clone3 takes no exit signal with CLONE_PARENT)
    let pid = fork_with(set_tid, flags | libc::CLONE_PARENT as u64, 0)?;
    if pid == 0 {
        child_pause(session);
    }
    Ok(pid)
}

fn child_pause(session: SessionSetup) -> ! {
    // SAFETY: async-signal-safe raw syscalls only, in a freshly forked child.
    unsafe {
        let ok = match session {
            SessionSetup::Inherit => 0,
            SessionSetup::NewSession => libc::setsid(),
            SessionSetup::NewGroup => libc::setpgid(0, 0),
        };
        if ok < 0 {
            libc::_exit(121);
        }
        loop {
            libc::pause();
        }
    }
}

fn child_stop(session: SessionSetup) -> ! {
    // SAFETY: async-signal-safe raw syscalls only, in a freshly forked child.
    unsafe {
        if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) < 0 {
            libc::_exit(120);
        }
        let ok = match session {
            SessionSetup::Inherit => 0,
            SessionSetup::NewSession => libc::setsid(),
            SessionSetup::NewGroup => libc::setpgid(0, 0),
        };
        if ok < 0 {
            libc::_exit(121);
        }
        libc::kill(libc::getpid(), libc::SIGSTOP);
        loop {
            libc::pause();
        }
    }
}

/// `close_range(first, ~0, 0)` — closes every fd from `first` up.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments; the caller owns no fd above `first`
    // that it still uses.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    cvt(ret).map(drop)
}

/// `close_range(first, last, 0)` — closes the fds from `first` to `last`
/// (none when `last < first`).
pub fn close_between(first: u32, last: u32) -> io::Result<()> {
    if last < first {
        return Ok(());
    }
    // SAFETY: plain integer arguments; the caller uses no fd in the range.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    cvt(ret).map(drop)
}

/// Reaps every child of the caller that has exited, waiting up to
/// `timeout` for the rest to exit; returns how many were reaped.
pub fn reap_children(timeout: std::time::Duration) -> usize {
    let start = std::time::Instant::now();
    let mut n = 0;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let ret = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::WNOHANG) };
        if ret > 0 {
            n += 1;
            continue;
        }
        if ret < 0 || start.elapsed() >= timeout {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// `wait4(pid, &status, 0, &rusage)`: waits for child `pid` to end;
/// returns its wait status and its peak resident set (`ru_maxrss`, KiB:
/// the largest of it and the children it waited for).
pub fn wait_rusage(pid: i32) -> io::Result<(i32, u64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to locals that live for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r >= 0 {
            return Ok((status, usage.ru_maxrss.max(0) as u64));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
