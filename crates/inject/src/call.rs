//! Running syscalls as the task: the `syscall` instruction used for it
//! (the vdso's, or any in its executable mappings), and one call run to its
//! exit under `PTRACE_SYSCALL`.

use super::*;

impl Tracee {
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
        if !self.followed && self.attach == Attach::Seized {
            // Each injected call is two stops, each a wake-up of the other
            // side: on one CPU about 11 µs, across CPUs 55-90. A thread
            // that may not run on crest's CPU (a container's cpuset, a
            // pinned task) draws crest's thread to its own (the caller
            // keeps crest's own mask and puts it back).
            self.followed = true;
            follow_cpu_of(self.pid, tid);
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
        // Clear the trap flag and the resume flag.
        regs.eflags &= !(0x100 | 0x10000);
        let (undo, maplen) = recovery::undo_of(nr, args);
        if let Some(armed) = &self.armed {
            let adds = match undo {
                Undo::NewFd | Undo::NewMap => 1,
                Undo::NewFdPair => 2,
                _ => 0,
            };
            if armed.held.len() + adds > recovery::LIST_CAP {
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
            if let Some(p) = &self.parked {
                // (see `parking`: the loop's frame pointer)
                regs.rbp = p.sentinel;
            }
        }
        // A restored thread (never armed, parked or seized) at its gadget
        // stops on the trap after the call: one stop, against two for the
        // entry and exit stops of PTRACE_SYSCALL.
        let trap = self.traps_now() && !may_touch(nr, args, self.trap_at & !0xfff);
        ptrace::set_regs(tid, &regs).map_err(pt(tid, "PTRACE_SETREGSET"))?;
        // (after the registers: a thread whose tracer dies between the two
        // runs the call and its recovery with its own mask)
        self.mask_for(trap)?;
        // A seized thread not armed has no way back of its own but the
        // vdso loop it is parked on, if it is.
        let bare = self.armed.is_none() && self.attach == Attach::Seized;
        let (unguarded, parked) = (bare && self.parked.is_none(), bare && self.parked.is_some());
        let at = |guarded: &'static str, not: &'static str, loop_: &'static str| {
            if unguarded {
                not
            } else if parked {
                loop_
            } else {
                guarded
            }
        };
        fault::point(at(
            "injected call: registers set",
            "unguarded call: registers set",
            "parked call: registers set",
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
        if trap {
            return self.trap_call(nr);
        }
        ptrace::syscall(tid, 0).map_err(pt(tid, "PTRACE_SYSCALL"))?;
        // the entry stop comes first, then the exit
        let mut entered = false;
        let mut failed = None;
        loop {
            if !self.next_trap(syscalls::name(nr), ptrace::syscall)? {
                continue;
            }
            if entered {
                break;
            }
            entered = true;
            // a failure here still lets the call run to its exit (a
            // thread left inside it would take the next call's entry for
            // this one's exit) and what it made be known
            failed = fault::point(at(
                "injected call: at its entry",
                "unguarded call: at its entry",
                "parked call: at its entry",
            ))
            .err();
            ptrace::syscall(tid, 0).map_err(pt(tid, "PTRACE_SYSCALL"))?;
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
                // (the two fds a socketpair writes into the task's memory)
                Undo::NewFdPair if ret == 0 => {
                    let mut fds = [0u8; 8];
                    self.read_mem(a(3), &mut fds)?;
                    for fd in fds.chunks_exact(4) {
                        let fd = u32::from_le_bytes([fd[0], fd[1], fd[2], fd[3]]);
                        self.add_held(Held::Fd(u64::from(fd)))?;
                    }
                }
                _ => {}
            }
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        fault::point(at(
            "injected call: at its exit",
            "unguarded call: at its exit",
            "parked call: at its exit",
        ))?;
        Ok(ret)
    }

    /// The rest of [`Tracee::syscall_raw`] for a call at the gadget: the
    /// thread runs on (`PTRACE_CONT`) through the call to the int3 after
    /// it, whose SIGTRAP stop is suppressed when the thread is next
    /// resumed.
    fn trap_call(&mut self, nr: u64) -> Result<i64> {
        let after = self.run_to_trap(syscalls::name(nr), self.trap_at + 3)?;
        fault::point("injected call: at its exit")?;
        Ok(after.rax as i64)
    }

    /// Lets the thread run (`PTRACE_CONT`, its registers set) until it
    /// stops on an int3 that leaves it at `rip`; returns its registers
    /// there. Clone events on the way are noted, group stops passed over;
    /// any other stop is an error.
    pub(crate) fn run_to_trap(&mut self, op: &'static str, rip: u64) -> Result<UserRegs> {
        let tid = self.tid;
        ptrace::cont(tid, 0).map_err(pt(tid, "PTRACE_CONT"))?;
        while !self.next_trap(op, ptrace::cont)? {}
        let after = ptrace::get_regs(tid).map_err(pt(tid, "PTRACE_GETREGSET"))?;
        if after.rip != rip {
            // (a SIGTRAP of another source: none may be pending here)
            return Err(InjectError::UnexpectedStop {
                tid,
                op,
                sig: libc::SIGTRAP,
                event: 0,
            });
        }
        Ok(after)
    }

    /// Waits for the thread's next stop in an injected call (`op`): true
    /// for a SIGTRAP stop (a syscall stop or the trap), false for one
    /// passed over, the thread resumed with `resume` (a group stop, which
    /// it reports again once resumed and goes on from, stopped again when
    /// let go since its group still is; a clone event, whose new task is
    /// noted). Any other stop, or its end, is an error.
    fn next_trap(
        &mut self,
        op: &'static str,
        resume: fn(i32, i32) -> io::Result<()>,
    ) -> Result<bool> {
        let tid = self.tid;
        match ptrace::wait(tid).map_err(pt(tid, "waitpid"))? {
            WaitStatus::Stopped {
                sig: libc::SIGTRAP,
                event: 0,
            } => Ok(true),
            WaitStatus::Stopped { sig, event }
                if event == ptrace::PTRACE_EVENT_STOP && is_stop_signal(sig) =>
            {
                resume(tid, 0).map_err(pt(tid, "resume"))?;
                Ok(false)
            }
            WaitStatus::Stopped {
                sig: libc::SIGTRAP,
                event: libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_VFORK,
            } => {
                // the new task's id, in crest's pid namespace (the next
                // stop overwrites the message)
                let msg = ptrace::event_msg(tid).map_err(pt(tid, "PTRACE_GETEVENTMSG"))?;
                self.new_task = Some(msg as i32);
                resume(tid, 0).map_err(pt(tid, "resume"))?;
                Ok(false)
            }
            WaitStatus::Stopped { sig, event } => Err(InjectError::UnexpectedStop {
                tid,
                op,
                sig,
                event,
            }),
            other => Err(InjectError::Died {
                tid,
                op,
                status: other,
            }),
        }
    }

    /// Sets the thread's mask for injected calls: every signal blocked,
    /// but SIGTRAP where calls end on a trap (a forced signal that is
    /// blocked resets its action to the default).
    pub(crate) fn mask_for(&mut self, trap: bool) -> Result<()> {
        if !self.blocked || self.trap_unblocked != trap {
            let tid = self.tid;
            let mask = if trap { !SIGTRAP_BIT } else { !0u64 };
            ptrace::set_sigmask(tid, mask).map_err(pt(tid, "PTRACE_SETSIGMASK"))?;
            self.blocked = true;
            self.trap_unblocked = trap;
        }
        Ok(())
    }

    /// Whether calls may end on the gadget's trap now (see
    /// [`Tracee::syscall_raw`]).
    pub(crate) fn traps_now(&self) -> bool {
        self.trap_ok
            && self.trap_at != 0
            && self.syscall_ip == self.trap_at
            && self.armed.is_none()
            && self.parked.is_none()
            && self.attach != Attach::Seized
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
}

/// Whether call `nr` with `args` may unmap, move, protect or overwrite
/// the page at `page` (a gadget's): such a call stops at its exit, before
/// the thread would run on into the page.
pub(crate) fn may_touch(nr: u64, args: &[u64], page: u64) -> bool {
    let a = |i: usize| args.get(i).copied().unwrap_or(0);
    let hits = |at: u64, len: u64| at < page + 4096 && page < at.saturating_add(len);
    match nr as i64 {
        libc::SYS_munmap | libc::SYS_mprotect | libc::SYS_madvise | libc::SYS_pkey_mprotect => {
            hits(a(0), a(1))
        }
        libc::SYS_mremap => hits(a(0), a(1)) || hits(a(4), a(2)),
        libc::SYS_mmap => {
            a(3) & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) as u64 != 0 && hits(a(0), a(1))
        }
        libc::SYS_shmat | libc::SYS_shmdt | libc::SYS_process_madvise | libc::SYS_brk => true,
        _ => false,
    }
}

/// SIGTRAP's bit in a signal mask.
const SIGTRAP_BIT: u64 = 1 << (libc::SIGTRAP - 1);

/// Pins the calling thread (crest's) to a CPU thread `tid` of `pid` may run
/// on, when that thread may not run on every CPU crest may: the one crest
/// is on if it is allowed, else the one the thread last ran on
/// (`/proc/PID/task/TID/stat`'s 39th field). A thread free to run where
/// crest does is woken where crest is by the scheduler anyway (crest,
/// pinned for an earlier thread, gets its own mask back); where the move
/// fails (the CPU is not crest's to use), crest stays.
fn follow_cpu_of(pid: i32, tid: i32) {
    let Ok(allowed) = crest_sys::misc::get_affinity(tid) else {
        return;
    };
    let may = |cpu: usize| {
        allowed
            .get(cpu / 8)
            .is_some_and(|b| b & (1 << (cpu % 8)) != 0)
    };
    // crest's own mask, before any move, and whether it is moved now
    static OWN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    static MOVED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let own = OWN.get_or_init(|| crest_sys::misc::get_affinity(0).unwrap_or_default());
    let mine = |cpu: usize| own.get(cpu / 8).is_some_and(|b| b & (1 << (cpu % 8)) != 0);
    if (0..own.len() * 8).filter(|&c| mine(c)).all(may) {
        // free wherever crest may run: woken where crest is anyway (crest,
        // moved for an earlier thread, gets its own mask back)
        if MOVED.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let _ = crest_sys::misc::set_affinity(0, own);
        }
        return;
    }
    let here = crest_sys::misc::current_cpu().filter(|&c| may(c));
    let last = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|stat| {
            // the fields after the command's closing parenthesis start at
            // the 3rd
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().nth(39 - 3)?.parse::<usize>().ok()
        });
    let Some(cpu) = here
        .or(last.filter(|&c| may(c)))
        .or_else(|| (0..allowed.len() * 8).find(|&c| may(c)))
    else {
        return;
    };
    let mut mask = vec![0u8; cpu / 8 + 1];
    mask[cpu / 8] |= 1 << (cpu % 8);
    if crest_sys::misc::set_affinity(0, &mask).is_ok() {
        MOVED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::may_touch;

    #[test]
    fn calls_on_the_gadget_page_stop_at_their_exit() {
        let page = 0x7000_0000;
        let n = |s: i64| s as u64;
        // the work area's last munmap covers the gadget's page
        assert!(may_touch(n(libc::SYS_munmap), &[page, 0x40000], page));
        assert!(may_touch(n(libc::SYS_mprotect), &[page - 4096, 8192], page));
        // mappings elsewhere, and mmap without a fixed address
        assert!(!may_touch(n(libc::SYS_munmap), &[page + 4096, 4096], page));
        assert!(!may_touch(n(libc::SYS_munmap), &[page - 4096, 4096], page));
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        assert!(!may_touch(n(libc::SYS_mmap), &[page, 4096, 3, anon], page));
        let fixed = anon | libc::MAP_FIXED as u64;
        assert!(may_touch(n(libc::SYS_mmap), &[page, 4096, 3, fixed], page));
        // mremap onto it; calls that touch no mapping
        assert!(may_touch(
            n(libc::SYS_mremap),
            &[0x1000, 4096, 4096, 3, page],
            page
        ));
        assert!(!may_touch(
            n(libc::SYS_rt_sigaction),
            &[page, page, 0, 8],
            page
        ));
    }
}
