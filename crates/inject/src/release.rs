//! Letting a task go: put back as it was (or in its final state), detached,
//! made to outlive crest, or ended as a zombie; a dropped tracee is killed.

use super::*;

impl Tracee {
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
        // (the gadget's page with the scratch area right after it in one
        // call, or alone; the call stops at its exit, see `may_touch`)
        let gadget = if self.owns_gadget { self.trap_at } else { 0 };
        let mut gadget_left = gadget != 0;
        if let Some((addr, len)) = self.scratch.take() {
            if gadget_left && gadget + 4096 == addr {
                self.syscall(nr::MUNMAP, &[gadget, len as u64 + 4096])?;
                gadget_left = false;
            } else {
                self.syscall(nr::MUNMAP, &[addr, len as u64])?;
            }
        }
        if gadget_left {
            self.syscall(nr::MUNMAP, &[gadget, 4096])?;
        }
        self.owns_gadget = false;
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
        let mut unmapped = Ok(0);
        if let Some(rec) = self.area.take() {
            // Off the stub until its registers are put back just below:
            // parked in the vdso loop where it can be (see `parking`).
            if let Some(p) = self.parking() {
                self.park(&p)?;
            }
            unmapped = self.syscall(nr::MUNMAP, &[rec.addr, rec.layout.len]);
            if unmapped.is_err() {
                // (a failure before the call ran leaves the area: once
                // more; after it, this finds nothing to unmap)
                let _ = self.syscall_raw(nr::MUNMAP, &[rec.addr, rec.layout.len]);
            }
        }
        let tid = self.tid;
        ptrace::set_sigmask(tid, self.orig_sigmask).map_err(pt(tid, "PTRACE_SETSIGMASK"))?;
        self.blocked = false;
        self.trap_unblocked = false;
        fault::point(if owner {
            self.window(
                "put back (unguarded): mask restored",
                "put back (parked): mask restored",
            )
        } else {
            "put back: mask restored"
        })?;
        ptrace::set_regs(tid, &self.orig_regs).map_err(pt(tid, "PTRACE_SETREGSET"))?;
        // (back in its own context: the two words below its red zone are
        // no longer read)
        self.unpark()?;
        unmapped.map(drop)
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
