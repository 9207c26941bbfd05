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

mod arm;
mod batch;
mod call;
pub mod leftover;
mod memory;
pub mod parking;
pub mod recovery;
mod release;
mod syscalls;
pub use arm::Announce;
pub use batch::Arg;
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
    /// crest's thread was moved to the CPU this thread last ran on (see
    /// [`Tracee::syscall_raw`]).
    followed: bool,
    /// Parked in the vdso loop while crest runs the calls the recovery
    /// code cannot catch (see [`parking`]).
    parked: Option<parking::Parked>,
    /// All signals are blocked (they are while syscalls are injected),
    /// but SIGTRAP where `trap_unblocked` (calls end on a trap).
    blocked: bool,
    trap_unblocked: bool,
    /// Where the thread has a `syscall; int3` gadget (0: none): an injected
    /// call run there ends on the trap, one stop instead of two (see
    /// [`Tracee::syscall_raw`]), while `trap_ok`.
    trap_at: u64,
    /// An int3's SIGTRAP would change nothing of the thread's: none is
    /// pending or to be queued, and its action is not to ignore it.
    trap_ok: bool,
    /// This tracee placed the gadget's page, and unmaps it when put back
    /// (its threads use it too, and are put back first).
    owns_gadget: bool,
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
            followed: false,
            parked: None,
            blocked,
            trap_unblocked: false,
            trap_at: 0,
            trap_ok: attach != Attach::Seized,
            owns_gadget: false,
            armed: None,
            area: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
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

    /// Injects through `syscall; int3` at `ip`, the start of a page of
    /// the task's that nothing else uses (the trap ends each call, see
    /// [`Tracee::syscall_raw`]); [`Tracee::put_back`] unmaps the page.
    /// The page's bytes after the gadget get the loop of batched calls
    /// ([`Tracee::batch`]).
    pub fn set_trap_gadget(&mut self, ip: u64) -> Result<()> {
        self.syscall_ip = ip;
        self.trap_at = ip;
        self.owns_gadget = true;
        self.write_loop()
    }

    /// No more calls end on a trap: the thread's SIGTRAP action ignores it
    /// or one is pending (an int3 would reset the action or take the
    /// pending one's place).
    pub fn forbid_traps(&mut self) {
        self.trap_ok = false;
    }

    /// Injects the way `other` does (the task it was forked from, or a
    /// thread of its own task): its syscall instruction or gadget, and
    /// whether traps may end calls (a fork keeps an ignored SIGTRAP, a
    /// thread shares its task's actions).
    pub fn inject_like(&mut self, other: &Tracee) {
        self.syscall_ip = other.syscall_ip;
        self.trap_at = other.trap_at;
        self.owns_gadget = false;
        self.trap_ok = self.trap_ok && other.trap_ok;
    }

    /// Uses the `syscall` instruction at `ip` for injection.
    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.syscall_ip = ip;
    }

    pub fn syscall_ip(&self) -> u64 {
        self.syscall_ip
    }
}
