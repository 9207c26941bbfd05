//! Arming a task against crest's death: the recovery area mapped, each
//! thread given its slot, and the list of what the recovery code undoes
//! kept up to date.

use super::*;

/// What [`Tracee::arm`] tells before it maps the area: its address and
/// length, and where the thread is parked meanwhile.
pub type Announce<'a> = dyn FnMut(u64, u64, Option<&parking::Parked>) -> io::Result<()> + 'a;

impl Tracee {
    /// Maps the recovery area (see [`recovery`]) in a seized task, with a
    /// slot for each of its `threads` threads, and arms this thread with
    /// slot 0: from now on, if crest vanishes, the thread finds its way
    /// back to the state it was seized in by itself. The area's one
    /// `mmap` runs without that net, parked (see [`parking`]) where the
    /// vdso allows.
    ///
    /// `announce` is told where the area goes (address, length) and where
    /// the thread is parked meanwhile, before the area is mapped: what the
    /// recovery code cannot take away, the area itself and a thread left
    /// in the vdso loop, is left to whoever `announce` tells
    /// ([`leftover::remove_area`], [`leftover::return_parked`]).
    pub fn arm(&mut self, threads: usize, announce: &mut Announce<'_>) -> Result<Recovery> {
        let pid = self.pid;
        let xstate = ptrace::get_xstate(self.tid)
            .map_err(pt(self.tid, "PTRACE_GETREGSET(NT_X86_XSTATE)"))?;
        let layout = Layout::new(threads.max(1), xstate.len());
        let want = free_range(pid, layout.len).ok_or_else(|| InjectError::Recovery {
            pid,
            what: format!("no free range of {} bytes", layout.len),
        })?;
        let parking = self.parking();
        announce(want, layout.len, parking.as_ref()).map_err(|e| InjectError::Recovery {
            pid,
            what: format!("announce it ({e})"),
        })?;
        if let Some(p) = &parking {
            self.park(p)?;
        }
        let armed = self.map_area(want, layout, xstate);
        // armed (or failed, the thread still stopped): the two words go back
        let back = self.unpark();
        let rec = armed?;
        back?;
        Ok(rec)
    }

    /// The rest of [`Tracee::arm`]: the area mapped at `want`, its code
    /// written, this thread joined with slot 0.
    fn map_area(&mut self, want: u64, layout: Layout, xstate: Vec<u8>) -> Result<Recovery> {
        let pid = self.pid;
        const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
        let mapped = self.syscall(
            nr::MMAP,
            &[
                want,
                layout.len,
                (libc::PROT_READ | libc::PROT_EXEC) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | MAP_FIXED_NOREPLACE,
                u64::MAX,
                0,
            ],
        );
        let got = match mapped {
            Ok(got) => got,
            Err(e) => {
                // The call may have run before the failure (one at its
                // entry or exit): the range was free, so unmapping it takes
                // away what the call made, or nothing.
                let _ = self.syscall_raw(nr::MUNMAP, &[want, layout.len]);
                return Err(e);
            }
        };
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
        fault::point(self.window(
            "recovery area (unguarded): mapped",
            "recovery area (parked): mapped",
        ))?;
        self.write_area(&mem, got, recovery::STUB)?;
        fault::point(self.window(
            "recovery area (unguarded): code written",
            "recovery area (parked): code written",
        ))?;
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

    pub(crate) fn join_with(
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
            self.window(
                "recovery area (unguarded): frame written",
                "recovery area (parked): frame written",
            )
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

    /// A fault point's name in a window the recovery code does not cover:
    /// `parked` when the thread is parked in the vdso loop, else `bare`.
    pub(crate) fn window(&self, bare: &'static str, parked: &'static str) -> &'static str {
        if self.parked.is_some() {
            parked
        } else {
            bare
        }
    }

    /// The address range of the recovery area this tracee mapped.
    pub fn recovery_range(&self) -> Option<(u64, u64)> {
        self.area.map(|r| (r.addr, r.addr + r.layout.len))
    }

    pub(crate) fn open_mem(&self) -> Result<std::fs::File> {
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

    pub(crate) fn write_area(&self, mem: &std::fs::File, addr: u64, data: &[u8]) -> Result<()> {
        mem.write_all_at(data, addr).map_err(|e| InjectError::Mem {
            pid: self.pid,
            op: "write /proc/PID/mem",
            addr,
            len: data.len(),
            source: e,
        })
    }

    pub(crate) fn write_list(&self) -> Result<()> {
        if let Some(armed) = &self.armed {
            self.write_area(
                &armed.mem,
                armed.slot.list,
                &recovery::list_bytes(&armed.held),
            )?;
        }
        Ok(())
    }

    pub(crate) fn add_held(&mut self, h: Held) -> Result<()> {
        if let Some(armed) = &mut self.armed {
            armed.held.push(h);
        }
        self.write_list()
    }

    pub(crate) fn forget_held(&mut self, f: impl Fn(Held) -> bool) -> Result<()> {
        if let Some(armed) = &mut self.armed {
            armed.held.retain(|h| !f(*h));
        }
        self.write_list()
    }
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
