//! What a killed crest leaves for someone else to take away: the recovery
//! area itself (see [`crate::recovery`]). The recovery code runs from the
//! area, so it cannot unmap it; another process that outlives crest (the
//! dump's guard) seizes the task once every thread has left the area and
//! unmaps it with a call injected on the area's own `syscall` instruction.
//! The thread stops at that call's exit, before it would fetch the next
//! instruction from the page just unmapped, and is put back as it was.

use crate::parking::Parked;
use crate::{nr, recovery, start_seize, wait_seized, InjectError, Tracee};
use crest_sys::ptrace;
use std::time::{Duration, Instant};

/// What became of a recovery area left in a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// It was there and is unmapped now.
    Unmapped,
    /// It is not there (crest unmapped it, or the task is gone).
    Absent,
    /// The task is another than the one the area was announced for (the
    /// first ended and its pid was reused): left alone.
    Replaced,
}

/// Unmaps the recovery area `[addr, addr + len)` a killed crest left in
/// `pid`, once none of its threads runs the area's code any more.
/// `exited` says whether the task the area was announced for has ended
/// (a pidfd's view): then the pid is another's and nothing is touched.
/// Gives up at `deadline` (a thread that stays on the area, or a task
/// someone else traces).
pub fn remove_area(
    pid: i32,
    addr: u64,
    len: u64,
    exited: &dyn Fn() -> bool,
    deadline: Instant,
) -> Result<Removed, InjectError> {
    loop {
        if exited() {
            return Ok(Removed::Replaced);
        }
        if !area_mapped(pid, addr, len) {
            return Ok(Removed::Absent);
        }
        let tried = try_remove(pid, addr, len, exited, deadline);
        match tried {
            Ok(Some(done)) => return Ok(done),
            // a thread is still on the area's code, or crest still holds
            // the task (its fds close before the kernel detaches its
            // tracees): again a little later
            Ok(None) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(None) => {
                return Err(InjectError::Recovery {
                    pid,
                    what: "a thread stayed on the recovery code".into(),
                })
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether `pid` has exactly the mapping an area leaves: `r-xp`,
/// anonymous, `[addr, addr + len)`.
fn area_mapped(pid: i32, addr: u64, len: u64) -> bool {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return false;
    };
    let range = format!("{:x}-{:x} ", addr, addr + len);
    maps.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        l.starts_with(&range) && f.get(1) == Some(&"r-xp") && f.get(4) == Some(&"0") && f.len() == 5
    })
}

/// One attempt: seizes every thread; `None` when one is still on the area.
fn try_remove(
    pid: i32,
    addr: u64,
    len: u64,
    exited: &dyn Fn() -> bool,
    deadline: Instant,
) -> Result<Option<Removed>, InjectError> {
    let gone = |tid: i32| !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists();
    // every thread asked to stop first, then waited for: they stop side
    // by side (one not stopped yet cannot be detached; the kernel lets it
    // go when the guard ends)
    let mut seized = Seized(Vec::new());
    for tid in threads(pid) {
        // the munmap must not meet the task's seccomp filters (a guard
        // that may not suspend them seizes it plainly)
        let seize = |opts| start_seize(tid, opts);
        match seize(crest_sys::ptrace::PTRACE_O_SUSPEND_SECCOMP).or_else(|_| seize(0)) {
            Ok(()) => seized.0.push(tid),
            Err(_) if gone(tid) => {}
            Err(e) => return Err(e),
        }
    }
    let by = deadline.min(Instant::now() + Duration::from_secs(1));
    for tid in seized.0.clone() {
        match wait_seized(tid, Some(by)) {
            Ok(_) => {}
            // a thread that ended meanwhile, or a leader that did while
            // its threads run on (it never stops)
            Err(InjectError::NotStopped {
                state: 'Z' | 'X', ..
            }) => seized.0.retain(|&x| x != tid),
            Err(_) if gone(tid) => seized.0.retain(|&x| x != tid),
            Err(e) => return Err(e),
        }
    }
    let Some(&first) = seized.0.first() else {
        return Ok(Some(Removed::Absent));
    };
    // The pid cannot be reused while its task lives, and it is held now.
    if exited() {
        return Ok(Some(Removed::Replaced));
    }
    for &tid in &seized.0 {
        let regs = ptrace::get_regs(tid).map_err(|source| InjectError::Ptrace {
            tid,
            op: "PTRACE_GETREGSET",
            source,
        })?;
        if (addr..addr + len).contains(&regs.rip) {
            return Ok(None);
        }
    }
    let mut t = Tracee::from_seized(pid, first)?;
    let mut code = vec![0u8; recovery::STUB.len()];
    t.read_mem(addr, &mut code)?;
    // (an area crest died before writing is still all zeros)
    let blank = code.iter().all(|&b| b == 0);
    if code != recovery::STUB && !blank {
        t.leak();
        return Ok(Some(Removed::Replaced));
    }
    if blank {
        t.use_vdso_syscall()?;
    } else {
        // `syscall` is the stub's first instruction; the thread stops at
        // the call's exit and is put back before it runs again.
        t.set_syscall_ip(addr);
    }
    let unmapped = t.syscall(nr::MUNMAP, &[addr, len]);
    seized.0.retain(|&x| x != first);
    t.release()?;
    unmapped.map(|_| Some(Removed::Unmapped))
}

/// Returns a thread a killed crest left in the vdso loop (see
/// [`crate::parking`]) to the state crest seized it in: its registers,
/// mask and the two words under its stack. A thread not in the loop
/// (crest died before parking it, or after) is left as it is. `exited`
/// says whether the task it was announced for has ended. Gives up at
/// `deadline` (a thread crest still holds).
pub fn return_parked(
    pid: i32,
    p: &Parked,
    exited: &dyn Fn() -> bool,
    deadline: Instant,
) -> Result<bool, InjectError> {
    let tid = p.tid;
    let gone = || !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists();
    loop {
        if exited() || gone() {
            return Ok(false);
        }
        // (crest's tracees are let go as its exit goes on)
        let seized = start_seize(tid, 0).and_then(|()| wait_seized(tid, Some(deadline)));
        match seized {
            Ok(_) => break,
            Err(_) if gone() => return Ok(false),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(e),
        }
    }
    let held = Seized(vec![tid]);
    let pt = |op: &'static str| move |source| InjectError::Ptrace { tid, op, source };
    let regs = ptrace::get_regs(tid).map_err(pt("PTRACE_GETREGSET"))?;
    // The pid cannot be reused while its task lives, and it is held now.
    if exited() || regs.rbp != p.sentinel || !(p.site..=p.ret).contains(&regs.rip) {
        return Ok(false);
    }
    let mut back = p.regs;
    back.orig_rax = u64::MAX;
    ptrace::set_regs(tid, &back).map_err(pt("PTRACE_SETREGSET"))?;
    ptrace::set_sigmask(tid, p.mask).map_err(pt("PTRACE_SETSIGMASK"))?;
    crest_sys::mem::write_remote(pid, &[(p.sentinel, p.saved.len())], &p.saved).map_err(
        |source| InjectError::Mem {
            pid,
            op: "put the two words back",
            addr: p.sentinel,
            len: p.saved.len(),
            source,
        },
    )?;
    drop(held);
    Ok(true)
}

/// The task's threads now, but the kernel's own io_uring threads
/// (`PF_IO_WORKER`: they never run the task's code).
fn threads(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&tid| tid == pid || !io_worker(pid, tid))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether thread `tid` of `pid` has `PF_IO_WORKER` (0x10) in its flags,
/// the ninth field of its `stat` (the seventh after the name's `)`).
fn io_worker(pid: i32, tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(6)?.parse::<u32>().ok()
        })
        .is_some_and(|flags| flags & 0x10 != 0)
}

/// Threads seized here and not changed: let go when dropped.
struct Seized(Vec<i32>);

impl Drop for Seized {
    fn drop(&mut self) {
        for &tid in &self.0 {
            let _ = ptrace::detach(tid, 0);
        }
    }
}
