//! Signals: the actions of all 64 signals, the blocked mask, the pending
//! queues (private and shared) and the alternate stack.
//!
//! Dump reads actions and the altstack by injecting `rt_sigaction` and
//! `sigaltstack`, pending signals with `PTRACE_PEEKSIGINFO`. Restore sets
//! actions and the altstack by injection, queues pending signals with
//! `rt_tgsigqueueinfo`/`rt_sigqueueinfo` while everything is blocked, and
//! sets the final mask from outside with `PTRACE_SETSIGMASK`.

use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::task::error::TaskError;
use crest_images::pb::{SaEntry, SiginfoEntry, SignalQueueEntry, ThreadSasEntry};
use crest_inject::{nr, Tracee};
use crest_sys::ptrace;

pub const NSIG: u64 = 64;
const KSIGACTION_SIZE: usize = 32;

fn settable(sig: u64) -> bool {
    sig != libc::SIGKILL as u64 && sig != libc::SIGSTOP as u64
}

/// The action of every signal but SIGKILL and SIGSTOP, in signal order.
pub fn dump_actions(t: &mut Tracee) -> Result<Vec<SaEntry>, DumpError> {
    let pid = t.pid();
    let sigs: Vec<u64> = (1..=NSIG).filter(|s| settable(*s)).collect();
    let buf = t
        .scratch(KSIGACTION_SIZE * sigs.len())
        .at(pid, "scratch memory")?;
    for (i, sig) in sigs.iter().enumerate() {
        let slot = buf + (i * KSIGACTION_SIZE) as u64;
        t.syscall(nr::RT_SIGACTION, &[*sig, 0, slot, 8])
            .at(pid, "rt_sigaction")?;
    }
    let mut raw = vec![0u8; KSIGACTION_SIZE * sigs.len()];
    t.read_mem(buf, &mut raw).at(pid, "read sigactions")?;
    Ok(raw
        .chunks_exact(KSIGACTION_SIZE)
        .map(|c| {
            let w = words::<4>(c);
            SaEntry {
                sigaction: w[0],
                flags: w[1],
                restorer: w[2],
                mask: w[3],
                compat_sigaction: None,
            }
        })
        .collect())
}

/// Sets every signal action from the image.
pub fn restore_actions(t: &mut Tracee, actions: &[SaEntry]) -> Result<(), RestoreError> {
    let pid = t.pid();
    let sigs: Vec<u64> = (1..=NSIG).filter(|s| settable(*s)).collect();
    if actions.len() > sigs.len() {
        return Err(TaskError::BadImage {
            file: crest_images::names::core(pid as u32),
            what: format!("{} signal actions, at most {}", actions.len(), sigs.len()),
        }
        .in_restore(pid));
    }
    // A fresh task has the default action, with no flags or mask, for every
    // signal that `status` lists neither as ignored nor as caught.
    let status = crate::procfs::read_status(pid).map_err(|source| RestoreError::Proc {
        pid,
        step: "read status of the new task",
        source,
    })?;
    let non_default = status.sig_ign | status.sig_cgt;
    // (all in one batch: their ksigactions one after another)
    let mut calls = crate::remote::Calls::default();
    for (sig, sa) in sigs.iter().zip(actions) {
        let pristine = sa.sigaction == 0 && sa.flags == 0 && sa.restorer == 0 && sa.mask == 0;
        if pristine && non_default & (1u64 << (sig - 1)) == 0 {
            continue;
        }
        if *sig == libc::SIGTRAP as u64 && sa.sigaction == libc::SIG_IGN as u64 {
            // (an int3's forced SIGTRAP would reset it to the default:
            // not even the batch's)
            t.forbid_traps();
        }
        let raw: Vec<u8> = [sa.sigaction, sa.flags, sa.restorer, sa.mask]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let act = calls.data(&raw);
        use crest_inject::Arg::Val;
        calls.push_args(
            nr::RT_SIGACTION,
            [Val(*sig), act, Val(0), Val(8), Val(0), Val(0)],
            format!("rt_sigaction({sig})"),
        );
    }
    Ok(calls.run(t)?)
}

/// The alternate signal stack of the thread.
pub fn dump_altstack(t: &mut Tracee) -> Result<ThreadSasEntry, DumpError> {
    let pid = t.pid();
    let buf = t.scratch(24).at(pid, "scratch memory")?;
    t.syscall(nr::SIGALTSTACK, &[0, buf])
        .at(pid, "sigaltstack")?;
    let mut raw = [0u8; 24];
    t.read_mem(buf, &mut raw).at(pid, "read sigaltstack")?;
    let w = words::<3>(&raw);
    Ok(ThreadSasEntry {
        ss_sp: w[0],
        ss_flags: w[1] as u32,
        ss_size: w[2],
    })
}

/// Sets the alternate signal stack (or disables it).
pub fn restore_altstack(t: &mut Tracee, sas: Option<&ThreadSasEntry>) -> Result<(), RestoreError> {
    let pid = t.pid();
    let (sp, flags, size) = match sas {
        Some(s) if s.ss_flags & libc::SS_DISABLE as u32 == 0 => {
            // SS_ONSTACK is a state, not a flag one can set.
            (s.ss_sp, s.ss_flags & !(libc::SS_ONSTACK as u32), s.ss_size)
        }
        _ => (0, libc::SS_DISABLE as u32, 0),
    };
    let mut raw = Vec::with_capacity(24);
    raw.extend_from_slice(&sp.to_le_bytes());
    raw.extend_from_slice(&u64::from(flags).to_le_bytes());
    raw.extend_from_slice(&size.to_le_bytes());
    let addr = t.put(&raw).rat(pid, "write sigaltstack")?;
    t.syscall(nr::SIGALTSTACK, &[addr, 0])
        .rat(pid, "sigaltstack")?;
    Ok(())
}

/// The pending signals of a thread's private queue or its process's
/// shared queue, as raw `siginfo_t`s.
pub fn dump_pending(pid: i32, tid: i32, shared: bool) -> Result<SignalQueueEntry, DumpError> {
    let infos = ptrace::peek_siginfo(tid, shared).at(pid, "PTRACE_PEEKSIGINFO")?;
    Ok(SignalQueueEntry {
        signals: infos
            .iter()
            .map(|i| SiginfoEntry {
                siginfo: i.to_vec(),
            })
            .collect(),
    })
}

/// Queues pending signals again. All signals must be blocked (they are
/// while a tracee is injected) so none is delivered before the task runs.
/// `inner` is the task's (tgid, tid) as it sees them in its own pid
/// namespace: the kernel lets a task queue any siginfo only to itself.
pub fn restore_pending(
    t: &mut Tracee,
    inner: (i32, i32),
    queue: Option<&SignalQueueEntry>,
    shared: bool,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let tid = t.tid();
    let Some(q) = queue else { return Ok(()) };
    for si in &q.signals {
        if si.siginfo.len() != ptrace::SIGINFO_SIZE {
            return Err(TaskError::BadImage {
                file: crest_images::names::core(tid as u32),
                what: format!("siginfo of {} bytes", si.siginfo.len()),
            }
            .in_restore(pid));
        }
        let signo =
            u32::from_le_bytes([si.siginfo[0], si.siginfo[1], si.siginfo[2], si.siginfo[3]]);
        if signo == 0 || u64::from(signo) > NSIG {
            return Err(TaskError::BadImage {
                file: crest_images::names::core(tid as u32),
                what: format!("pending signal {signo}"),
            }
            .in_restore(pid));
        }
        if signo == libc::SIGTRAP as u32 {
            // (an int3 ending an injected call would take its place)
            t.forbid_traps();
        }
        let addr = t.put(&si.siginfo).rat(pid, "write siginfo")?;
        if shared {
            t.syscall(
                nr::RT_SIGQUEUEINFO,
                &[inner.0 as u64, u64::from(signo), addr],
            )
            .rat(pid, format!("rt_sigqueueinfo({signo})"))?;
        } else {
            t.syscall(
                nr::RT_TGSIGQUEUEINFO,
                &[inner.0 as u64, inner.1 as u64, u64::from(signo), addr],
            )
            .rat(pid, format!("rt_tgsigqueueinfo({signo})"))?;
        }
    }
    Ok(())
}

pub(crate) fn words<const N: usize>(raw: &[u8]) -> [u64; N] {
    let mut out = [0u64; N];
    for (i, chunk) in raw.chunks_exact(8).take(N).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        out[i] = u64::from_le_bytes(b);
    }
    out
}
