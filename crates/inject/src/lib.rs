//! crest-inject: the small seam to a task's insides, after CRIU's compel
//! (prepare, infect, syscall, cure) but with no parasite: seize a thread,
//! run syscalls as the task by pointing it at an existing `syscall`
//! instruction, read and write its memory, and put it back exactly as it was.
//!
//! All ptrace requests for a tracee come from the thread that attached it,
//! so a [`Tracee`] must stay on the thread that made it.

use crest_sys::ptrace::{self, UserRegs, WaitStatus};
use std::io;

mod syscalls;
pub use syscalls::nr;

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
    /// Injected syscalls stop at their entry and exit (`PTRACE_SYSCALL`)
    /// instead of a single step: the step's trap is a forced SIGTRAP that
    /// unblocks SIGTRAP and takes the place of one the task has pending.
    sysstops: bool,
}

/// Whether thread `tid` of `pid` has a SIGTRAP pending, its own or its
/// process's.
fn trap_pending(pid: i32, tid: i32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
        return false;
    };
    let bit = 1u64 << (libc::SIGTRAP - 1);
    s.lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .any(|m| m & bit != 0)
}

/// Seizes `tid` (a thread of `pid`) and waits until it is stopped.
/// Signals that arrive meanwhile are delivered as they would have been.
pub fn seize_thread(tid: i32) -> Result<()> {
    seize_with(tid, 0)
}

fn seize_with(tid: i32, options: u32) -> Result<()> {
    ptrace::seize(tid, options).map_err(pt(tid, "PTRACE_SEIZE"))?;
    if let Err(e) = ptrace::interrupt(tid) {
        let _ = ptrace::detach(tid, 0);
        return Err(pt(tid, "PTRACE_INTERRUPT")(e));
    }
    loop {
        let st = ptrace::wait(tid).map_err(pt(tid, "waitpid"))?;
        match st {
            WaitStatus::Stopped { event, .. } if event == ptrace::PTRACE_EVENT_STOP => {
                return Ok(())
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
        seize_with(pid, libc::PTRACE_O_EXITKILL as u32)?;
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
        ptrace::set_sigmask(tid, !0u64).map_err(pt(tid, "PTRACE_SETSIGMASK"))?;
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
            sysstops: trap_pending(pid, tid),
        })
    }

    /// From now on injected syscalls stop at their entry and exit instead
    /// of a single step (a SIGTRAP was queued to the task, which a step's
    /// trap would take).
    pub fn use_syscall_stops(&mut self) -> Result<()> {
        self.sysstops = true;
        // earlier steps' traps unblocked SIGTRAP: block it again, so the
        // one queued stays pending
        ptrace::set_sigmask(self.tid, !0u64).map_err(pt(self.tid, "PTRACE_SETSIGMASK"))
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
    pub fn syscall_raw(&mut self, nr: u64, args: &[u64]) -> Result<i64> {
        let tid = self.tid;
        if self.syscall_ip == 0 {
            return Err(InjectError::NoSyscallInsn {
                pid: self.pid,
                place: "(none chosen)".into(),
            });
        }
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
        regs.rip = self.syscall_ip;
        // Clear the trap flag and the resume flag so only our step traps.
        regs.eflags &= !(0x100 | 0x10000);
        ptrace::set_regs(tid, &regs).map_err(pt(tid, "PTRACE_SETREGSET"))?;
        let sysstops = self.sysstops;
        let step = |tid| {
            if sysstops {
                ptrace::syscall(tid, 0).map_err(pt(tid, "PTRACE_SYSCALL"))
            } else {
                ptrace::singlestep(tid, 0).map_err(pt(tid, "PTRACE_SINGLESTEP"))
            }
        };
        step(tid)?;
        // with syscall stops: the entry stop comes first, then the exit
        let mut entered = !sysstops;
        loop {
            match ptrace::wait(tid).map_err(pt(tid, "waitpid"))? {
                WaitStatus::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                } if !entered => {
                    entered = true;
                    step(tid)?;
                }
                WaitStatus::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                } => break,
                // An injected clone3/fork reports the new task first; the
                // step then finishes as usual.
                WaitStatus::Stopped {
                    sig: libc::SIGTRAP,
                    event:
                        libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_VFORK,
                } => {
                    // The new task's id, in crest's pid namespace; the next
                    // stop overwrites the message.
                    let msg = ptrace::event_msg(tid).map_err(pt(tid, "PTRACE_GETEVENTMSG"))?;
                    self.new_task = Some(msg as i32);
                    step(tid)?;
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
        Ok(after.rax as i64)
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

    /// Puts the registers and mask back but stays attached.
    pub fn put_back(&mut self) -> Result<()> {
        if let Some((addr, len)) = self.scratch.take() {
            self.syscall(nr::MUNMAP, &[addr, len as u64])?;
        }
        let tid = self.tid;
        ptrace::set_sigmask(tid, self.orig_sigmask).map_err(pt(tid, "PTRACE_SETSIGMASK"))?;
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
