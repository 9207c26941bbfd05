//! `core-<tid>.img`: everything the kernel keeps per task and per thread
//! (registers, signals, creds, timers, limits, ...), gathered from the
//! rooms that own each piece.

use crate::error::{DumpCtx, DumpError};
use crate::{creds, procfs, regs, signals, task};
use crest_images::pb::crest::CrestThreadExtra;
use crest_images::pb::{core_entry, CoreEntry, TaskCoreEntry, ThreadCoreEntry, ThreadInfoX86};
use crest_inject::Tracee;
use crest_sys::{misc, ptrace};

/// `task_core_entry.task_state` of a live task.
pub const TASK_ALIVE: u32 = 1;

/// The core image of a single-threaded task, and crest's raw xsave copy.
pub fn dump(
    t: &mut Tracee,
    status: &procfs::Status,
) -> Result<(CoreEntry, CrestThreadExtra), DumpError> {
    let (pid, tid) = (t.pid(), t.tid());
    let sigactions = signals::dump_actions(t)?;
    let sas = signals::dump_altstack(t)?;
    let timers = task::dump_itimers(t)?;
    let clear_tid = task::dump_tid_address(t)?;
    let pdeath_sig = task::dump_pdeathsig(t)?;
    let creds = creds::dump(t, status)?;
    let xsave = ptrace::get_xstate(tid).at(pid, "PTRACE_GETREGSET(NT_X86_XSTATE)")?;
    let regs = *t.orig_regs();
    let blocked = t.orig_sigmask();
    let signals_p = signals::dump_pending(pid, tid, false)?;
    let signals_s = signals::dump_pending(pid, tid, true)?;
    let rseq = task::dump_rseq(pid, tid)?;
    let robust = misc::get_robust_list(tid).at(pid, "get_robust_list")?;
    let rlimits = task::dump_rlimits(pid)?;
    let personality = procfs::read_personality(pid).at(pid, "read personality")?;
    let comm = procfs::read_comm(pid).at(pid, "read comm")?;
    let stat = procfs::read_stat(pid).at(pid, "read stat")?;

    let core = CoreEntry {
        mtype: core_entry::March::X8664 as i32,
        thread_info: Some(ThreadInfoX86 {
            clear_tid_addr: clear_tid,
            gpregs: regs::to_image(&regs),
            fpregs: regs::fpregs_from_xsave(&xsave),
            tls: Vec::new(),
        }),
        tc: Some(TaskCoreEntry {
            task_state: TASK_ALIVE,
            exit_code: 0,
            personality,
            flags: stat.flags,
            blk_sigset: blocked,
            comm: comm.clone(),
            timers: Some(timers),
            rlimits: Some(rlimits),
            signals_s: Some(signals_s),
            sigactions,
            ..TaskCoreEntry::default()
        }),
        ids: None,
        thread_core: Some(ThreadCoreEntry {
            futex_rla: robust.0,
            futex_rla_len: robust.1 as u32,
            blk_sigset: Some(blocked),
            sas: Some(sas),
            pdeath_sig: Some(pdeath_sig),
            signals_p: Some(signals_p),
            creds: Some(creds),
            comm: Some(comm),
            rseq_entry: rseq,
            ..ThreadCoreEntry::default()
        }),
    };
    let extra = CrestThreadExtra {
        xsave_size: Some(xsave.len() as u32),
        xsave: Some(xsave),
    };
    Ok((core, extra))
}
