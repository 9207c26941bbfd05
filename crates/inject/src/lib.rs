//! crest-inject: the small seam to a task's insides, after CRIU's compel
//! (prepare, infect, syscall, cure) but with no parasite: seize a thread,
//! run syscalls as the task by pointing it at an existing `syscall`
//! instruction, read and write its memory, and put it back exactly as it was.
//!
//! All ptrace requests for a tracee come from the thread that attached it,
//! so a [`Tracee`] must stay on the thread that made it.

use crest_sys::fault;
use crest_sys::ptrace::{self, UserRegs, WaitStatus};
use std::io;

pub mod leftover;
pub mod recovery;
mod syscalls;
pub use syscalls::nr;

use recovery::{Held, Layout, Undo};
use std::os::unix::fs::FileExt;

/// Errors of the injection layer; each names the thread and the step.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("thread {tid}: {op}: {source}")]
    Ptrace {
        tid: i32,
        op: &'static str,
        source: io::Error,
    },
    #[error("thread {tid} died during {op} ({status:?})")]
    Died {
        tid: i32,
        op: &'static str,
        status: WaitStatus,
    },
    #[error("thread {tid}: unexpected stop during {op}: signal {sig}, event {event}")]
    UnexpectedStop {
        tid: i32,
        op: &'static str,
        sig: i32,
        event: i32,
    },
    #[error("pid {pid}: no syscall instruction found in {place}")]
    NoSyscallInsn { pid: i32, place: String },
    #[error("pid {pid}: {op} of {len} bytes at {addr:#x}: {source}")]
    Mem {
        pid: i32,
        op: &'static str,
        addr: u64,
        len: usize,
        source: io::Error,
    },
    #[error(transparent)]
    Fault(#[from] crest_sys::fault::Injected),
    #[error(
        "thread {tid} did not stop within the timeout (state {state}: an uninterruptible \
         sleep or a vfork parent cannot be seized until it wakes; see --timeout)"
    )]
    NotStopped { tid: i32, state: char },
    #[error("pid {pid}: recovery area: {what}")]
    Recovery { pid: i32, what: String },
    #[error("pid {pid}: injected {name}: {source}")]
    Syscall {
        pid: i32,
        name: &'static str,
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, InjectError>;

fn pt(tid: i32, op: &'static str) -> impl FnOnce(io::Error) -> InjectError {
    move |source| InjectError::Ptrace { tid, op, source }
}

/// How the tracee was attached, which decides what happens if it is dropped
/// without being released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attach {
    /// Seized at dump: on drop, put back and detach; it keeps running.
    Seized,
    /// Our own restored child: on drop, kill it.
    Child,
    /// A thread of a restored child: on drop, kill its process.
    Thread,
}

/// A stopped thread under our control, with its registers saved.
#[derive(Debug)]
pub struct Tracee {
    pid: i32,
    tid: i32,
    attach: Attach,
    orig_regs: UserRegs,
    orig_sigmask: u64,
    syscall_ip: u64,
    scratch: Option<(u64, usize)>,
    done: bool,
    /// The task or thread the last injected clone created (crest's view).
    new_task: Option<i32>,
    /// An fd, in the task, of crest's root directory (see [`Tracee::crest_root`]).
    crest_root: Option<u64>,
    /// All signals are blocked (they are while syscalls are injected).
    blocked: bool,
    /// The thread's slot in the recovery area, once armed.
    armed: Option<Armed>,
    /// The recovery area, when this tracee mapped it (and unmaps it).
    area: Option<Recovery>,
}

/// The recovery area mapped in a seized task (see [`recovery`]), shared by
/// its threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    addr: u64,
    layout: Layout,
}

/// A thread's place in the recovery area: its slot and what crest has left
/// in the task for the moment, as the slot's list says.
#[derive(Debug)]
struct Armed {
    code: u64,
    slot: recovery::Slot,
    held: Vec<Held>,
    /// `/proc/PID/mem`, which writes the read-only area.
    mem: std::fs::File,
}

/// A free address range of `len` bytes in `pid`, a page clear of every
/// mapping on each side (so that nothing merges with it) and clear of the
/// room the main stack grows into.
fn free_range(pid: i32, len: u64) -> Option<u64> {
    const TOP: u64 = 0x7fff_ffff_f000;
    const STACK_ROOM: u64 = 256 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mut spans: Vec<(u64, u64, bool)> = maps
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            (a < TOP).then_some((a, b, l.ends_with("[stack]")))
        })
        .collect();
    spans.sort_unstable();
    // `upper`: the lowest address taken above the gap looked at
    let mut upper = TOP;
    for &(start, end, stack) in spans.iter().rev() {
        if upper > end && upper - end >= len + 2 * 4096 {
            return Some(upper - 4096 - len);
        }
        let floor = if stack {
            start.saturating_sub(STACK_ROOM)
        } else {
            start
        };
        upper = upper.min(floor);
    }
    None
}

/// Seizes `tid` (a thread of `pid`) and waits until it is stopped.
/// Signals that arrive meanwhile are delivered as they would have been.
pub fn seize_thread(tid: i32) -> Result<()> {
    seize_with(tid, 0, None).map(drop)
}

/// [`seize_thread`], waiting at most until `deadline`: a thread that does
/// not stop by then (in an uninterruptible sleep, a vfork parent waiting
/// for its child) fails with [`InjectError::NotStopped`]. It stays attached
/// until crest exits (the kernel detaches a tracee only once it stopped, or
/// when its tracer goes), and then runs on.
pub fn seize_thread_by(tid: i32, deadline: std::time::Instant) -> Result<()> {
    seize_with(tid, 0, Some(deadline)).map(drop)
}

/// [`seize_thread_by`], returning the signal of the stop the thread
/// reported first: a stop signal (`SIGSTOP`, `SIGTSTP`, `SIGTTIN`,
/// `SIGTTOU`) when it was in a group stop (job control), else `SIGTRAP`.
pub fn seize_thread_reporting(tid: i32, deadline: std::time::Instant) -> Result<i32> {
    seize_with(tid, 0, Some(deadline))
}

/// Whether `sig` stops a task (job control).
pub fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

fn seize_with(tid: i32, options: u32, deadline: Option<std::time::Instant>) -> Result<i32> {
    start_seize(tid, options)?;
    wait_seized(tid, deadline)
}

/// Seizes `tid` and asks it to stop, without waiting for it to.
fn start_seize(tid: i32, options: u32) -> Result<()> {
    ptrace::seize(tid, options).map_err(pt(tid, "PTRACE_SEIZE"))?;
    if let Err(e) = ptrace::interrupt(tid) {
        let _ = ptrace::detach(tid, 0);
        return Err(pt(tid, "PTRACE_INTERRUPT")(e));
    }
    Ok(())
}

/// Waits until `tid`, seized by [`start_seize`], is stopped; returns the
/// signal of that stop.
fn wait_seized(tid: i32, deadline: Option<std::time::Instant>) -> Result<i32> {
    let mut nap = std::time::Duration::from_micros(20);
    loop {
        let st = match deadline {
            None => ptrace::wait(tid).map_err(pt(tid, "waitpid"))?,
            Some(d) => match ptrace::try_wait(tid).map_err(pt(tid, "waitpid"))? {
                Some(st) => st,
                None if std::time::Instant::now() >= d => {
                    let state = std::fs::read_to_string(format!("/proc/{tid}/stat"))
                        .ok()
                        .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
                        .unwrap_or('?');
                    return Err(InjectError::NotStopped { tid, state });
                }
                None => {
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(std::time::Duration::from_millis(5));
                    continue;
                }
            },
        };
        match st {
            WaitStatus::Stopped { event, sig } if event == ptrace::PTRACE_EVENT_STOP => {
                return Ok(sig)
            }
            WaitStatus::Stopped { sig, event: 0 } => {
                // A signal-delivery stop came first: let it through, the
                // interrupt stays pending and stops the thread next.
                ptrace::cont(tid, sig).map_err(pt(tid, "PTRACE_CONT"))?;
            }
            WaitStatus::Stopped { .. } => {
                ptrace::cont(tid, 0).map_err(pt(tid, "PTRACE_CONT"))?;
            }
            other => {
                return Err(InjectError::Died {
                    tid,
                    op: "seize",
                    status: other,
                })
            }
        }
    }
}

impl Tracee {
    /// Takes charge of thread `tid` of `pid`, already seized and stopped by
    /// [`seize_thread`]: saves its registers and signal mask and blocks all
    /// signals so none is delivered while syscalls are injected.
    pub fn from_seized(pid: i32, tid: i32) -> Result<Tracee> {
        Self::take(pid, tid, Attach::Seized)
    }

    /// Takes charge of a task crest made but is not the parent of (a
    /// sibling made with `CLONE_PARENT`, waiting in `pause()`): seizes it
    /// (killed if crest dies, `PTRACE_O_EXITKILL`) and stops it; it is
    /// killed if dropped, as a child would be.
    pub fn seize_made(pid: i32) -> Result<Tracee> {
        seize_with(pid, libc::PTRACE_O_EXITKILL as u32, None)?;
        Self::take(pid, pid, Attach::Child)
    }

    /// Takes charge of our own child, stopped by `SIGSTOP` after
    /// `PTRACE_TRACEME` (crest-sys `spawn_stopped`). If crest dies, the
    /// kernel kills it (`PTRACE_O_EXITKILL`).
    pub fn from_stopped_child(pid: i32) -> Result<Tracee> {
        loop {
            match ptrace::wait(pid).map_err(pt(pid, "waitpid"))? {
                WaitStatus::Stopped {
                    sig: libc::SIGSTOP, ..
                } => break,
                WaitStatus::Stopped { .. } => {
                    ptrace::cont(pid, 0).map_err(pt(pid, "PTRACE_CONT"))?;
                }
                other => {
                    return Err(InjectError::Died {
                        tid: pid,
                        op: "start of restored task",
                        status: other,
                    })
                }
            }
        }
        ptrace::set_options(pid, libc::PTRACE_O_EXITKILL as u32)
            .map_err(pt(pid, "PTRACE_SETOPTIONS"))?;
        Self::take(pid, pid, Attach::Child)
    }

    fn take(pid: i32, tid: i32, attach: Attach) -> Result<Tracee> {
        let orig_regs = ptrace::get_regs(tid).map_err(pt(tid, "PTRACE_GETREGSET"))?;
        let orig_sigmask = ptrace::get_sigmask(tid).map_err(pt(tid, "PTRACE_GETSIGMASK"))?;
        // A seized thread keeps its mask until the first injected call (a
        // thread whose tracer dies before then must find it unchanged).
        let blocked = attach != Attach::Seized;
        if blocked {
            ptrace::set_sigmask(tid, !0u64).map_err(pt(tid, "PTRACE_SETSIGMASK"))?;
        }
        Ok(Tracee {
            pid,
            tid,
            attach,
            orig_regs,
            orig_sigmask,
            syscall_ip: 0,
            scratch: None,
            done: false,
            new_task: None,
            crest_root: None,
            blocked,
            armed: None,
            area: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The fd, in the task, of crest's root directory, through which the
    /// task still reaches crest's files (`/proc`, the images) after it
    /// entered another mount namespace.
    pub fn crest_root(&self) -> Option<u64> {
        self.crest_root
    }

    /// Records (or forgets) the task's fd of crest's root directory.
    pub fn set_crest_root(&mut self, fd: Option<u64>) {
        self.crest_root = fd;
    }

    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The registers the thread had when it was stopped.
    pub fn orig_regs(&self) -> &UserRegs {
        &self.orig_regs
    }

    /// The blocked-signal mask the thread had when it was stopped.
    pub fn orig_sigmask(&self) -> u64 {
        self.orig_sigmask
    }

    /// Replaces what [`Tracee::release`] puts back: the final registers and
    /// signal mask of a restored thread.
    pub fn set_final_state(&mut self, regs: UserRegs, sigmask: u64) {
        self.orig_regs = regs;
        self.orig_sigmask = sigmask;
    }

    /// Makes tasks created by injected `clone3` calls start traced and
    /// stopped (`PTRACE_O_TRACEFORK`/`TRACECLONE`), killed if crest dies.
    pub fn trace_new_tasks(&self) -> Result<()> {
        let opts = libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACEFORK | libc::PTRACE_O_TRACECLONE;
        ptrace::set_options(self.tid, opts as u32).map_err(pt(self.tid, "PTRACE_SETOPTIONS"))
    }

    /// Keeps the thread's seccomp filters (and strict mode) from applying
    /// to what is injected from now on, while it stays traced
    /// (`PTRACE_O_SUSPEND_SECCOMP`, besides the options restored tasks
    /// have).
    pub fn suspend_seccomp(&self) -> Result<()> {
        let opts = libc::PTRACE_O_EXITKILL as u32
            | libc::PTRACE_O_TRACEFORK as u32
            | libc::PTRACE_O_TRACECLONE as u32
            | ptrace::PTRACE_O_SUSPEND_SECCOMP;
        ptrace::set_options(self.tid, opts).map_err(pt(self.tid, "PTRACE_SETOPTIONS"))
    }

    /// Takes charge of a task or thread that an injected `clone3` created
    /// (traced from birth, stopped with `SIGSTOP`, or in an event stop when
    /// its parent was seized): it is killed if dropped.
    pub fn from_new_task(pid: i32, tid: i32) -> Result<Tracee> {
        loop {
            match ptrace::wait(tid).map_err(pt(tid, "waitpid"))? {
                WaitStatus::Stopped {
                    sig: libc::SIGSTOP, ..
                } => break,
                // (the child of a seized task starts in an event stop)
                WaitStatus::Stopped { event, .. } if event == ptrace::PTRACE_EVENT_STOP => break,
                WaitStatus::Stopped { .. } => {
                    ptrace::cont(tid, 0).map_err(pt(tid, "PTRACE_CONT"))?;
                }
                other => {
                    return Err(InjectError::Died {
                        tid,
                        op: "start of a new task",
                        status: other,
                    })
                }
            }
        }
        let opts = libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACEFORK | libc::PTRACE_O_TRACECLONE;
        ptrace::set_options(tid, opts as u32).map_err(pt(tid, "PTRACE_SETOPTIONS"))?;
        let mut t = Self::take(pid, tid, Attach::Child)?;
        if pid != tid {
            t.attach = Attach::Thread;
        }
        Ok(t)
    }

    /// The id (in crest's pid namespace) of the task or thread that the
    /// last injected clone created.
    pub fn new_task(&self) -> Option<i32> {
        self.new_task
    }

    /// Uses the `syscall` instruction at `ip` for injection.
    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.syscall_ip = ip;
    }

    pub fn syscall_ip(&self) -> u64 {
        self.syscall_ip
    }

    /// Finds a `syscall` instruction (0f 05) in the task's `[vdso]` and uses
    /// it for injection.
    pub fn use_vdso_syscall(&mut self) -> Result<u64> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).map_err(|e| {
            InjectError::Mem {
                pid: self.pid,
                op: "read maps",
                addr: 0,
                len: 0,
                source: e,
            }
        })?;
        let vdso = maps
            .lines()
            .find(|l| l.ends_with("[vdso]"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| {
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
            .ok_or_else(|| InjectError::NoSyscallInsn {
                pid: self.pid,
                place: "[vdso] (not mapped)".into(),
            })?;
        let ip = self.find_syscall_insn(vdso.0, vdso.1)?;
        self.syscall_ip = ip;
        Ok(ip)
    }

    /// [`Tracee::use_vdso_syscall`], or, for a task that unmapped its
    /// vdso, a `syscall` instruction in any of its executable mappings.
    pub fn use_any_syscall(&mut self) -> Result<u64> {
        let vdso = self.use_vdso_syscall();
        if vdso.is_ok() {
            return vdso;
        }
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap_or_default();
        for l in maps.lines() {
            let mut f = l.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            if !perms.starts_with("r-x") && !perms.starts_with("rwx") {
                continue;
            }
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
                continue;
            };
            if let Ok(ip) = self.find_syscall_insn(a, b) {
                self.syscall_ip = ip;
                return Ok(ip);
            }
        }
        vdso
    }

    /// Searches `[start, end)` of the task's memory for `0f 05`.
    pub fn find_syscall_insn(&self, start: u64, end: u64) -> Result<u64> {
        let mut buf = vec![0u8; (end - start).min(1 << 20) as usize];
        self.read_mem(start, &mut buf)?;
        buf.windows(2)
            .position(|w| w == [0x0f, 0x05])
            .map(|off| start + off as u64)
            .ok_or_else(|| InjectError::NoSyscallInsn {
                pid: self.pid,
                place: format!("{start:#x}-{end:#x}"),
            })
    }

    /// Runs syscall `nr` with `args` as the task; returns the raw result
    /// (negative errno on failure). The registers are put back only by
    /// [`Tracee::release`].
    ///
    /// The call runs under `PTRACE_SYSCALL` and the thread stops at its
    /// exit: on the recovery stub's `syscall` once the thread is armed
    /// ([`Tracee::arm`]), else on the instruction chosen with
    /// [`Tracee::set_syscall_ip`]. (A single step would do with one stop,
    /// but its trap is a forced SIGTRAP, which unblocks SIGTRAP and resets
    /// a handler of it to the default.)
    pub fn syscall_raw(&mut self, nr: u64, args: &[u64]) -> Result<i64> {
        let tid = self.tid;
        let mut regs = self.orig_regs;
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        regs.rax = nr;
        regs.orig_rax = u64::MAX;
        regs.rdi = a(0);
        regs.rsi = a(1);
        regs.rdx = a(2);
        regs.r10 = a(3);
        regs.r8 = a(4);
        regs.r9 = a(5);
        // Clear the trap flag and the resume flag.
        regs.eflags &= !(0x100 | 0x10000);
        let (undo, maplen) = recovery::undo_of(nr, args);
        if let Some(armed) = &self.armed {
            if matches!(undo, Undo::NewFd | Undo::NewMap) && armed.held.len() >= recovery::LIST_CAP
            {
                return Err(InjectError::Recovery {
                    pid: self.pid,
                    what: format!(
                        "more than {} fds and mappings left in the task",
                        recovery::LIST_CAP
                    ),
                });
            }
            regs.rip = armed.code;
            regs.r12 = armed.slot.ucontext;
            regs.r13 = armed.slot.list;
            regs.r14 = undo as u64;
            regs.r15 = maplen;
        } else if self.syscall_ip == 0 {
            return Err(InjectError::NoSyscallInsn {
                pid: self.pid,
                place: "(none chosen)".into(),
            });
        } else {
            regs.rip = self.syscall_ip;
        }
        ptrace::set_regs(tid, &regs).map_err(pt(tid, "PTRACE_SETREGSET"))?;
        // (after the registers: a thread whose tracer dies between the two
        // runs the call and its recovery with its own mask)
        if !self.blocked {
            ptrace::set_sigmask(tid, !0u64).map_err(pt(tid, "PTRACE_SETSIGMASK"))?;
            self.blocked = true;
        }
        // A seized thread not armed yet has no way back of its own.
        let unguarded = self.armed.is_none() && self.attach == Attach::Seized;
        let at = |guarded: &'static str, not: &'static str| if unguarded { not } else { guarded };
        fault::point(at(
            "injected call: registers set",
            "unguarded call: registers set",
        ))?;
        // What the call takes away leaves the list before it runs (the
        // registers tell the recovery code not to take it twice).
        match undo {
            Undo::ClosesFd => self.forget_held(|h| h == Held::Fd(a(0)))?,
            Undo::UnmapsMap => {
                self.forget_held(|h| matches!(h, Held::Map { addr, .. } if addr == a(0)))?
            }
            _ => {}
        }
        ptrace::syscall(tid, 0).map_err(pt(tid, "PTRACE_SYSCALL"))?;
        // the entry stop comes first, then the exit
        let mut entered = false;
        let mut failed = None;
        loop {
            match ptrace::wait(tid).map_err(pt(tid, "waitpid"))? {
                WaitStatus::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                } if !entered => {
                    entered = true;
                    // a failure here still lets the call run to its exit
                    // (a thread left inside it would take the next call's
                    // entry for this one's exit) and what it made be known
                    failed = fault::point(at(
                        "injected call: at its entry",
                        "unguarded call: at its entry",
                    ))
                    .err();
                    ptrace::syscall(tid, 0).map_err(pt(tid, "PTRACE_SYSCALL"))?;
                }
                WaitStatus::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                } => break,
                // A task in a group stop (job control) reports it again
                // once resumed: it goes on, and is stopped again when it
                // is let go (its group still is).
                WaitStatus::Stopped { sig, event }
                    if event == ptrace::PTRACE_EVENT_STOP && is_stop_signal(sig) =>
                {
                    ptrace::syscall(tid, 0).map_err(pt(tid, "PTRACE_SYSCALL"))?;
                }
                // An injected clone3/fork reports the new task first; the
                // call then finishes as usual.
                WaitStatus::Stopped {
                    sig: libc::SIGTRAP,
                    event:
                        libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_VFORK,
                } => {
                    // The new task's id, in crest's pid namespace; the next
                    // stop overwrites the message.
                    let msg = ptrace::event_msg(tid).map_err(pt(tid, "PTRACE_GETEVENTMSG"))?;
                    self.new_task = Some(msg as i32);
                    ptrace::syscall(tid, 0).map_err(pt(tid, "PTRACE_SYSCALL"))?;
                }
                WaitStatus::Stopped { sig, event } => {
                    return Err(InjectError::UnexpectedStop {
                        tid,
                        op: syscalls::name(nr),
                        sig,
                        event,
                    })
                }
                other => {
                    return Err(InjectError::Died {
                        tid,
                        op: syscalls::name(nr),
                        status: other,
                    })
                }
            }
        }
        let after = ptrace::get_regs(tid).map_err(pt(tid, "PTRACE_GETREGSET"))?;
        let ret = after.rax as i64;
        if self.armed.is_some() && !(-4095..0).contains(&ret) {
            match undo {
                Undo::NewFd => self.add_held(Held::Fd(ret as u64))?,
                Undo::NewMap => self.add_held(Held::Map {
                    addr: ret as u64,
                    len: maplen,
                })?,
                _ => {}
            }
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        fault::point(at(
            "injected call: at its exit",
            "unguarded call: at its exit",
        ))?;
        Ok(ret)
    }

    /// Maps the recovery area (see [`recovery`]) in a seized task, with a
    /// slot for each of its `threads` threads, and arms this thread with
    /// slot 0: from now on, if crest vanishes, the thread finds its way
    /// back to the state it was seized in by itself. The area's one
    /// `mmap` is the only call injected without that net.
    ///
    /// `announce` is told where the area goes (address, length) before it
    /// is mapped: what the recovery code cannot take away, the area itself,
    /// is left to whoever `announce` tells ([`leftover::remove_area`]).
    pub fn arm(
        &mut self,
        threads: usize,
        announce: &mut dyn FnMut(u64, u64) -> io::Result<()>,
    ) -> Result<Recovery> {
        let pid = self.pid;
        let xstate = ptrace::get_xstate(self.tid)
            .map_err(pt(self.tid, "PTRACE_GETREGSET(NT_X86_XSTATE)"))?;
        let layout = Layout::new(threads.max(1), xstate.len());
        let want = free_range(pid, layout.len).ok_or_else(|| InjectError::Recovery {
            pid,
            what: format!("no free range of {} bytes", layout.len),
        })?;
        announce(want, layout.len).map_err(|e| InjectError::Recovery {
            pid,
            what: format!("announce it ({e})"),
        })?;
        const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
        let got = self.syscall(
            nr::MMAP,
            &[
                want,
                layout.len,
                (libc::PROT_READ | libc::PROT_EXEC) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | MAP_FIXED_NOREPLACE,
                u64::MAX,
                0,
            ],
        )?;
        let rec = Recovery { addr: got, layout };
        if got != want {
            let _ = self.syscall(nr::MUNMAP, &[got, layout.len]);
            return Err(InjectError::Recovery {
                pid,
                what: format!("asked {want:#x}, mapped at {got:#x}"),
            });
        }
        self.area = Some(rec);
        let mem = self.open_mem()?;
        fault::point("recovery area (unguarded): mapped")?;
        self.write_area(&mem, got, recovery::STUB)?;
        fault::point("recovery area (unguarded): code written")?;
        self.join_with(&rec, 0, xstate, mem)?;
        Ok(rec)
    }

    /// Arms this thread with slot `k` of the recovery area that another
    /// thread's tracee mapped with [`Tracee::arm`].
    pub fn join(&mut self, rec: &Recovery, k: usize) -> Result<()> {
        let xstate = ptrace::get_xstate(self.tid)
            .map_err(pt(self.tid, "PTRACE_GETREGSET(NT_X86_XSTATE)"))?;
        let mem = self.open_mem()?;
        self.join_with(rec, k, xstate, mem)
    }

    fn join_with(
        &mut self,
        rec: &Recovery,
        k: usize,
        xstate: Vec<u8>,
        mem: std::fs::File,
    ) -> Result<()> {
        if k >= rec.layout.slots || !rec.layout.fits_xstate(xstate.len()) {
            return Err(InjectError::Recovery {
                pid: self.pid,
                what: format!(
                    "no slot {k} for thread {} (xsave area of {} bytes)",
                    self.tid,
                    xstate.len()
                ),
            });
        }
        let slot = rec.layout.slot(rec.addr, k);
        self.write_area(&mem, slot.list, &recovery::list_bytes(&[]))?;
        let frame = recovery::frame(&self.orig_regs, self.orig_sigmask, &xstate, &slot);
        self.write_area(&mem, slot.frame, &frame)?;
        // (the thread that mapped the area is off its own code until it is
        // parked just below; the others are untouched yet)
        fault::point(if self.area.is_some() {
            "recovery area (unguarded): frame written"
        } else {
            "recovery area: frame written"
        })?;
        self.armed = Some(Armed {
            code: rec.addr,
            slot,
            held: Vec::new(),
            mem,
        });
        // Parked on the recovery code until the next call: registers
        // first, then the mask (see `syscall_raw`).
        let mut regs = self.orig_regs;
        regs.orig_rax = u64::MAX;
        regs.rip = rec.addr + recovery::RECOVER;
        regs.rax = 0;
        regs.r12 = slot.ucontext;
        regs.r13 = slot.list;
        regs.r14 = Undo::Nothing as u64;
        regs.eflags &= !(0x100 | 0x10000);
        ptrace::set_regs(self.tid, &regs).map_err(pt(self.tid, "PTRACE_SETREGSET"))?;
        fault::point("recovery area: thread parked")?;
        if !self.blocked {
            ptrace::set_sigmask(self.tid, !0u64).map_err(pt(self.tid, "PTRACE_SETSIGMASK"))?;
            self.blocked = true;
        }
        Ok(())
    }

    /// The address range of the recovery area this tracee mapped.
    pub fn recovery_range(&self) -> Option<(u64, u64)> {
        self.area.map(|r| (r.addr, r.addr + r.layout.len))
    }

    fn open_mem(&self) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/mem", self.pid))
            .map_err(|e| InjectError::Mem {
                pid: self.pid,
                op: "open /proc/PID/mem",
                addr: 0,
                len: 0,
                source: e,
            })
    }

    fn write_area(&self, mem: &std::fs::File, addr: u64, data: &[u8]) -> Result<()> {
        mem.write_all_at(data, addr).map_err(|e| InjectError::Mem {
            pid: self.pid,
            op: "write /proc/PID/mem",
            addr,
            len: data.len(),
            source: e,
        })
    }

    fn write_list(&self) -> Result<()> {
        if let Some(armed) = &self.armed {
            self.write_area(
                &armed.mem,
                armed.slot.list,
                &recovery::list_bytes(&armed.held),
            )?;
        }
        Ok(())
    }

    fn add_held(&mut self, h: Held) -> Result<()> {
        if let Some(armed) = &mut self.armed {
            armed.held.push(h);
        }
        self.write_list()
    }

    fn forget_held(&mut self, f: impl Fn(Held) -> bool) -> Result<()> {
        if let Some(armed) = &mut self.armed {
            armed.held.retain(|h| !f(*h));
        }
        self.write_list()
    }

    /// Runs a syscall as the task and turns a negative result into an error
    /// naming the call.
    pub fn syscall(&mut self, nr: u64, args: &[u64]) -> Result<u64> {
        let ret = self.syscall_raw(nr, args)?;
        if (-4095..0).contains(&ret) {
            return Err(InjectError::Syscall {
                pid: self.pid,
                name: syscalls::name(nr),
                source: io::Error::from_raw_os_error(-ret as i32),
            });
        }
        Ok(ret as u64)
    }

    /// Reads the task's memory at `addr`.
    pub fn read_mem(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let n = crest_sys::mem::read_remote(self.pid, &[(addr, len)], buf).map_err(|e| {
            InjectError::Mem {
                pid: self.pid,
                op: "process_vm_readv",
                addr,
                len,
                source: e,
            }
        })?;
        if n != len {
            return Err(InjectError::Mem {
                pid: self.pid,
                op: "process_vm_readv (short)",
                addr,
                len,
                source: io::Error::from_raw_os_error(libc::EFAULT),
            });
        }
        Ok(())
    }

    /// Writes the task's memory at `addr` (the pages must be writable).
    pub fn write_mem(&self, addr: u64, buf: &[u8]) -> Result<()> {
        let len = buf.len();
        let n = crest_sys::mem::write_remote(self.pid, &[(addr, len)], buf).map_err(|e| {
            InjectError::Mem {
                pid: self.pid,
                op: "process_vm_writev",
                addr,
                len,
                source: e,
            }
        })?;
        if n != len {
            return Err(InjectError::Mem {
                pid: self.pid,
                op: "process_vm_writev (short)",
                addr,
                len,
                source: io::Error::from_raw_os_error(libc::EFAULT),
            });
        }
        Ok(())
    }

    /// A private read-write scratch area of at least `len` bytes in the
    /// task, mapped on first use; [`Tracee::release`] unmaps it.
    pub fn scratch(&mut self, len: usize) -> Result<u64> {
        if let Some((addr, have)) = self.scratch {
            if have >= len {
                return Ok(addr);
            }
            self.syscall(nr::MUNMAP, &[addr, have as u64])?;
            self.scratch = None;
        }
        let size = (len.max(1) as u64).div_ceil(4096) * 4096;
        let addr = self.syscall(
            nr::MMAP,
            &[
                0,
                size,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        self.scratch = Some((addr, size as usize));
        Ok(addr)
    }

    /// Adopts an area the caller mapped in the task as the scratch area.
    pub fn adopt_scratch(&mut self, addr: u64, len: usize) {
        self.scratch = Some((addr, len));
    }

    /// Forgets the scratch area without unmapping it.
    pub fn forget_scratch(&mut self) {
        self.scratch = None;
    }

    /// Writes `data` into the scratch area and returns its address.
    pub fn put(&mut self, data: &[u8]) -> Result<u64> {
        let addr = self.scratch(data.len())?;
        self.write_mem(addr, data)?;
        Ok(addr)
    }

    /// Puts the thread back as it was (or in the final state set with
    /// [`Tracee::set_final_state`]) and detaches it: it runs on.
    pub fn release(self) -> Result<()> {
        self.release_with(0)
    }

    /// [`Tracee::release`], delivering `sig` as it goes (`SIGSTOP`: the
    /// task is left stopped, never running in between).
    pub fn release_with(mut self, sig: i32) -> Result<()> {
        self.done = true;
        self.put_back()?;
        ptrace::detach(self.tid, sig).map_err(pt(self.tid, "PTRACE_DETACH"))
    }

    /// Puts the registers and mask back but stays attached: unmaps the
    /// scratch area, takes away what the recovery list still names and,
    /// from the tracee that mapped it, the recovery area (the threads that
    /// joined it must be put back first).
    pub fn put_back(&mut self) -> Result<()> {
        if let Some((addr, len)) = self.scratch.take() {
            self.syscall(nr::MUNMAP, &[addr, len as u64])?;
        }
        let held = self
            .armed
            .as_ref()
            .map(|a| a.held.clone())
            .unwrap_or_default();
        for h in held {
            match h {
                Held::Fd(fd) => self.syscall(nr::CLOSE, &[fd])?,
                Held::Map { addr, len } => self.syscall(nr::MUNMAP, &[addr, len])?,
            };
        }
        self.armed = None;
        let owner = self.area.is_some();
        if let Some(rec) = self.area.take() {
            // The one window without a net: the thread is off the stub
            // until its registers are put back just below.
            self.syscall(nr::MUNMAP, &[rec.addr, rec.layout.len])?;
        }
        let tid = self.tid;
        ptrace::set_sigmask(tid, self.orig_sigmask).map_err(pt(tid, "PTRACE_SETSIGMASK"))?;
        self.blocked = false;
        fault::point(if owner {
            "put back (unguarded): mask restored"
        } else {
            "put back: mask restored"
        })?;
        ptrace::set_regs(tid, &self.orig_regs).map_err(pt(tid, "PTRACE_SETREGSET"))
    }

    /// Ends a restored task the way a dumped zombie ended: `exit_group`
    /// with its code, or the signal that killed it (whose action must be
    /// the default by now). The task is left a zombie for its parent.
    pub fn exit_as(mut self, wait_status: i32) -> Result<()> {
        self.done = true;
        let tid = self.tid;
        if wait_status & 0x7f == 0 {
            let mut regs = self.orig_regs;
            regs.rax = nr::EXIT_GROUP;
            regs.orig_rax = u64::MAX;
            regs.rdi = ((wait_status >> 8) & 0xff) as u64;
            regs.rip = self.syscall_ip;
            ptrace::set_regs(tid, &regs).map_err(pt(tid, "PTRACE_SETREGSET"))?;
            ptrace::cont(tid, 0).map_err(pt(tid, "PTRACE_CONT"))?;
        } else {
            ptrace::cont(tid, wait_status & 0x7f).map_err(pt(tid, "PTRACE_CONT"))?;
        }
        loop {
            match ptrace::wait(tid).map_err(pt(tid, "waitpid"))? {
                WaitStatus::Exited(_) | WaitStatus::Signaled(_) => return Ok(()),
                WaitStatus::Stopped { .. } => {
                    ptrace::cont(tid, 0).map_err(pt(tid, "PTRACE_CONT"))?;
                }
                WaitStatus::Other(_) => {}
            }
        }
    }

    /// From now on the thread outlives crest: a tracer that dies lets it
    /// run instead of killing it (`PTRACE_O_EXITKILL` cleared). For the
    /// last step of a restore, once every thread is put back.
    pub fn outlive_tracer(&mut self) -> Result<()> {
        ptrace::set_options(self.tid, 0).map_err(pt(self.tid, "PTRACE_SETOPTIONS"))
    }

    /// Detaches a thread already put back ([`Tracee::put_back`]),
    /// delivering `sig` as it goes.
    pub fn detach_with(mut self, sig: i32) -> Result<()> {
        self.done = true;
        ptrace::detach(self.tid, sig).map_err(pt(self.tid, "PTRACE_DETACH"))
    }

    /// Stops tracking without touching the thread (it stays attached and
    /// stopped; the caller takes over).
    pub fn leak(mut self) {
        self.done = true;
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match self.attach {
            Attach::Seized => {
                let _ = self.put_back();
                let _ = ptrace::detach(self.tid, 0);
            }
            Attach::Child | Attach::Thread => {
                // Reaped if it goes at once; otherwise the caller's reaping
                // of every child takes it later. Never blocks: the init of
                // a pid namespace waits for its (still traced) tasks, which
                // may be dropped after it.
                let _ = crest_sys::misc::kill(self.pid, libc::SIGKILL);
                for _ in 0..20 {
                    match ptrace::try_wait(self.tid) {
                        Ok(Some(WaitStatus::Exited(_) | WaitStatus::Signaled(_))) | Err(_) => break,
                        _ => std::thread::sleep(std::time::Duration::from_millis(1)),
                    }
                }
            }
        }
    }
}
