//! `core-<tid>.img`: everything the kernel keeps per task and per thread
//! (registers, signals, creds, timers, limits, ...), gathered from the
//! rooms that own each piece at dump, and a thread's own part put back at
//! restore ([`restore_thread`]). The leader's core also holds the
//! task-wide part (`tc`); every thread's core has its registers and
//! `thread_core`.

use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::ns::user::UsernsGraph;
use crate::remote::Remote;
use crate::task::error::TaskError;
use crate::task::{creds, regs, signals};
use crate::{procfs, task};
use crest_images::names;
use crest_images::pb::crest::CrestThreadExtra;
use crest_images::pb::{core_entry, CoreEntry, TaskCoreEntry, ThreadCoreEntry, ThreadInfoX86};
use crest_inject::{nr, Tracee};
use crest_sys::{misc, ptrace};

/// `sched_getscheduler`'s flag that children start with the default
/// policy.
const SCHED_RESET_ON_FORK: u32 = 0x4000_0000;
/// A policy `sched_setscheduler` cannot set (it needs `sched_setattr`).
const SCHED_DEADLINE: u32 = 6;

const PR_GET_TIMERSLACK: u64 = 30;

/// Node mask words read and written for a memory policy (1024 nodes).
pub const MEMPOLICY_WORDS: usize = 16;

/// The thread's TSC mode (`PR_GET_TSC`) when it is not the default
/// (`PR_TSC_ENABLE`).
fn dump_tsc(t: &mut Tracee) -> Result<Option<u32>, DumpError> {
    const PR_GET_TSC: u64 = 25;
    let pid = t.pid();
    let buf = t.scratch(4).at(pid, "scratch memory")?;
    t.prctl(&[PR_GET_TSC, buf], "prctl(PR_GET_TSC)")?;
    let mut raw = [0u8; 4];
    t.read_mem(buf, &mut raw).at(pid, "read the TSC mode")?;
    let mode = u32::from_le_bytes(raw);
    Ok((mode != 1).then_some(mode))
}

/// The thread's NUMA memory policy: mode (with its flags) and node mask.
fn dump_mempolicy(t: &mut Tracee) -> Result<(u32, Vec<u64>), DumpError> {
    get_mempolicy(t, None)
}

/// `get_mempolicy` in the task: the thread's policy, or with `addr` the
/// policy of the range holding it (mode 0 when it has none of its own).
pub fn get_mempolicy(t: &mut Tracee, addr: Option<u64>) -> Result<(u32, Vec<u64>), DumpError> {
    const MPOL_F_ADDR: u64 = 2;
    let pid = t.pid();
    let buf = t
        .scratch(8 + 8 * MEMPOLICY_WORDS)
        .at(pid, "scratch memory")?;
    let r = t
        .syscall_raw(
            crest_inject::nr::GET_MEMPOLICY,
            &[
                buf,
                buf + 8,
                (MEMPOLICY_WORDS * 64) as u64,
                addr.unwrap_or(0),
                if addr.is_some() { MPOL_F_ADDR } else { 0 },
            ],
        )
        .at(pid, "get_mempolicy")?;
    if r == -i64::from(libc::ENOSYS) {
        return Ok((0, Vec::new())); // a kernel without NUMA: no policy
    }
    if r < 0 {
        return Err(DumpError::Io {
            pid,
            step: "get_mempolicy",
            source: std::io::Error::from_raw_os_error(-r as i32),
        });
    }
    let mut raw = vec![0u8; 8 + 8 * MEMPOLICY_WORDS];
    t.read_mem(buf, &mut raw)
        .at(pid, "read the memory policy")?;
    let mode = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let nodes = raw[8..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    Ok((mode, nodes))
}

/// The CPUs online now, as an affinity mask.
fn online_cpus() -> Vec<u8> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut mask = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) else {
            continue;
        };
        for cpu in a..=b.min(8191) {
            if mask.len() <= cpu / 8 {
                mask.resize(cpu / 8 + 1, 0);
            }
            mask[cpu / 8] |= 1 << (cpu % 8);
        }
    }
    mask
}

/// Whether two masks name the same CPUs (whatever their lengths).
fn same_cpus(a: &[u8], b: &[u8]) -> bool {
    (0..a.len().max(b.len())).all(|i| a.get(i).unwrap_or(&0) == b.get(i).unwrap_or(&0))
}

/// `task_core_entry.task_state` of a live task.
pub const TASK_ALIVE: u32 = 1;
/// `task_core_entry.task_state` of a zombie.
pub const TASK_DEAD: u32 = 2;
/// `task_core_entry.task_state` of a task stopped by job control
/// (`stop_signo` says by which signal).
pub const TASK_STOPPED: u32 = 3;

/// The per-thread part of a core image, and crest's raw xsave copy. `t`
/// is injected through the thread itself.
pub fn dump_thread(
    t: &mut Tracee,
    users: &UsernsGraph,
    ns: u32,
) -> Result<(CoreEntry, CrestThreadExtra), DumpError> {
    let (pid, tid) = (t.pid(), t.tid());
    let status = procfs::read_task_status(pid, tid).at(pid, "read thread status")?;
    let sas = signals::dump_altstack(t)?;
    let clear_tid = task::dump_tid_address(t)?;
    let pdeath_sig = task::dump_pdeathsig(t)?;
    let creds = creds::dump(t, &status, users, ns)?;
    let xsave = ptrace::get_xstate(tid).at(pid, "PTRACE_GETREGSET(NT_X86_XSTATE)")?;
    let regs = *t.orig_regs();
    let blocked = t.orig_sigmask();
    let signals_p = signals::dump_pending(pid, tid, false)?;
    let rseq = task::dump_rseq(pid, tid)?;
    let robust = misc::get_robust_list(tid).at(pid, "get_robust_list")?;
    let (policy, prio, nice) = misc::get_sched(tid).at(pid, "sched_getscheduler")?;
    if policy & !SCHED_RESET_ON_FORK == SCHED_DEADLINE {
        return Err(TaskError::Unsupported {
            what: format!("thread {tid}'s SCHED_DEADLINE scheduling"),
        }
        .in_dump(pid));
    }
    let comm = status.name.clone();
    let core = CoreEntry {
        mtype: core_entry::March::X8664 as i32,
        thread_info: Some(ThreadInfoX86 {
            clear_tid_addr: clear_tid,
            gpregs: regs::to_image(&regs),
            fpregs: regs::fpregs_from_xsave(&xsave),
            tls: Vec::new(),
        }),
        tc: None,
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
            sched_nice: Some(nice),
            sched_policy: Some(policy),
            sched_prio: Some(prio),
            ..ThreadCoreEntry::default()
        }),
        // set by the writer
        crest_thread: None,
    };
    let extra = CrestThreadExtra {
        xsave_size: Some(xsave.len() as u32),
        xsave: Some(xsave),
        outer_uids: status.uid.to_vec(),
        outer_gids: status.gid.to_vec(),
        outer_groups: status.groups.clone(),
        ns_tids: status.ns_pid.iter().map(|p| *p as u32).collect(),
        ns_pgids: status.ns_pgid.iter().map(|p| *p as u32).collect(),
        ns_sids: status.ns_sid.iter().map(|p| *p as u32).collect(),
        ..dump_thread_extra(t)?
    };
    Ok((core, extra))
}

/// A thread's state crest keeps beside CRIU's core: timer slack, TSC
/// mode, MCE policy, affinity (where it is not every online CPU), memory
/// policy.
fn dump_thread_extra(t: &mut Tracee) -> Result<CrestThreadExtra, DumpError> {
    let (pid, tid) = (t.pid(), t.tid());
    let slack = t.prctl(&[PR_GET_TIMERSLACK], "prctl(PR_GET_TIMERSLACK)")?;
    let affinity = misc::get_affinity(tid).at(pid, "sched_getaffinity")?;
    let affinity = (!same_cpus(&affinity, &online_cpus())).then_some(affinity);
    let (mpol_mode, mpol_nodes) = dump_mempolicy(t)?;
    let tsc = dump_tsc(t)?;
    // PR_MCE_KILL_GET: PR_MCE_KILL_DEFAULT (2) unless the thread chose
    let mce = t.prctl(&[34, 0, 0, 0, 0], "prctl(PR_MCE_KILL_GET)")?;
    let mce = (mce != 2).then_some(mce as u32);
    Ok(CrestThreadExtra {
        timer_slack_ns: Some(slack),
        tsc_mode: tsc,
        mce_kill: mce,
        cpu_affinity: affinity,
        mempolicy_mode: (mpol_mode != 0).then_some(mpol_mode),
        mempolicy_nodes: if mpol_mode != 0 {
            mpol_nodes
        } else {
            Vec::new()
        },
        ..CrestThreadExtra::default()
    })
}

/// The task-wide part of a core image, injected through the leader.
pub fn dump_task(t: &mut Tracee) -> Result<TaskCoreEntry, DumpError> {
    let pid = t.pid();
    let sigactions = signals::dump_actions(t)?;
    let mut timers = task::dump_itimers(t)?;
    let threads = procfs::list_tids(pid).map_or(1, |t| t.len());
    timers.posix = crate::task::timers::dump(t, threads)?;
    let subreaper = task::dump_child_subreaper(t)?;
    let signals_s = signals::dump_pending(pid, t.tid(), true)?;
    let rlimits = task::dump_rlimits(pid)?;
    let oom_score_adj = task::dump_oom_score_adj(pid)?;
    let personality = procfs::read_personality(pid).at(pid, "read personality")?;
    let comm = procfs::read_comm(pid).at(pid, "read comm")?;
    let stat = procfs::read_stat(pid).at(pid, "read stat")?;
    let loginuid = std::fs::read_to_string(format!("/proc/{pid}/loginuid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    // "/autogroup-N nice X" (no such file without autogroups)
    let autogroup_nice = std::fs::read_to_string(format!("/proc/{pid}/autogroup"))
        .ok()
        .and_then(|s| s.split_whitespace().last()?.parse::<i32>().ok())
        .filter(|n| *n != 0);
    Ok(TaskCoreEntry {
        crest_autogroup_nice: autogroup_nice,
        loginuid,
        task_state: TASK_ALIVE,
        exit_code: 0,
        personality,
        flags: stat.flags,
        blk_sigset: t.orig_sigmask(),
        comm,
        timers: Some(timers),
        rlimits: Some(rlimits),
        signals_s: Some(signals_s),
        sigactions,
        child_subreaper: Some(subreaper),
        oom_score_adj: Some(oom_score_adj),
        ..TaskCoreEntry::default()
    })
}

/// crest's extras of a zombie: its ids at every pid namespace level.
pub fn zombie_extra(pid: i32) -> CrestThreadExtra {
    let st = procfs::read_status(pid).ok();
    let ids = |f: fn(&procfs::Status) -> &Vec<i32>| -> Vec<u32> {
        st.as_ref()
            .map_or(Vec::new(), |s| f(s).iter().map(|p| *p as u32).collect())
    };
    CrestThreadExtra {
        ns_tids: ids(|s| &s.ns_pid),
        ns_pgids: ids(|s| &s.ns_pgid),
        ns_sids: ids(|s| &s.ns_sid),
        // its credentials, as crest sees them (kept by the kernel)
        outer_uids: st.as_ref().map_or(Vec::new(), |s| s.uid.to_vec()),
        outer_gids: st.as_ref().map_or(Vec::new(), |s| s.gid.to_vec()),
        outer_groups: st.as_ref().map_or(Vec::new(), |s| s.groups.clone()),
        ..CrestThreadExtra::default()
    }
}

/// The core image of a zombie: its state and exit status only.
pub fn zombie(pid: i32, exit_status: i32) -> CoreEntry {
    let comm = procfs::read_comm(pid).unwrap_or_default();
    CoreEntry {
        mtype: core_entry::March::X8664 as i32,
        tc: Some(TaskCoreEntry {
            task_state: TASK_DEAD,
            exit_code: exit_status as u32,
            comm,
            ..TaskCoreEntry::default()
        }),
        ..CoreEntry::default()
    }
}

/// What the restore of one thread reads from the images.
#[derive(Clone, Copy)]
pub struct ThreadImage<'a> {
    /// The task's pid in the images.
    pub pid: i32,
    /// The thread's id in the images (its core file's).
    pub image_tid: i32,
    pub core: &'a CoreEntry,
    pub extra: Option<&'a CrestThreadExtra>,
    /// (task, thread) ids in their own pid namespace.
    pub inner: (i32, i32),
}

const PR_SET_TIMERSLACK: u64 = 29;

/// A thread's state crest keeps beside CRIU's core (`extra`): timer
/// slack, memory policy, MCE policy, TSC mode, affinity.
fn restore_thread_extra(
    t: &mut Tracee,
    pid: i32,
    extra: &CrestThreadExtra,
) -> Result<(), RestoreError> {
    let tid = t.tid();
    if let Some(slack) = extra.timer_slack_ns {
        t.prctl(
            &[PR_SET_TIMERSLACK, slack],
            &format!("thread {tid}: prctl(PR_SET_TIMERSLACK, {slack})"),
        )?;
    }
    if let Some(mode) = extra.mempolicy_mode {
        let words = &extra.mempolicy_nodes[..];
        let words = &words[..words.len().min(MEMPOLICY_WORDS)];
        let raw: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let addr = if raw.is_empty() {
            0
        } else {
            t.put(&raw).rat(pid, "write a node mask")?
        };
        t.syscall(
            nr::SET_MEMPOLICY,
            &[u64::from(mode), addr, (words.len() * 64) as u64],
        )
        .rat(pid, format!("thread {tid}: set_mempolicy({mode:#x})"))?;
    }
    if let Some(policy) = extra.mce_kill {
        // PR_MCE_KILL, PR_MCE_KILL_SET
        t.prctl(
            &[33, 1, u64::from(policy), 0, 0],
            &format!("thread {tid}: prctl(PR_MCE_KILL, {policy})"),
        )?;
    }
    if let Some(mode) = extra.tsc_mode {
        const PR_SET_TSC: u64 = 26;
        t.prctl(
            &[PR_SET_TSC, u64::from(mode)],
            &format!("thread {tid}: prctl(PR_SET_TSC, {mode})"),
        )?;
    }
    if let Some(mask) = extra.cpu_affinity.as_ref() {
        misc::set_affinity(tid, mask).rat(pid, format!("thread {tid}: sched_setaffinity"))?;
    }
    Ok(())
}

/// Puts back a thread's own state from its core: altstack, comm, rseq,
/// robust list, clear_child_tid, private pending signals, timer slack,
/// memory policy, MCE policy, TSC mode, affinity, scheduling, FPU, and the
/// registers and signal mask it gets when it is let go.
pub fn restore_thread(
    t: &mut Tracee,
    img: &ThreadImage<'_>,
    personality: u32,
) -> Result<(), RestoreError> {
    let ThreadImage {
        pid,
        image_tid,
        core,
        extra,
        inner,
    } = *img;
    let tid = t.tid();
    let bad = |what: &str| {
        TaskError::BadImage {
            file: names::core(image_tid as u32),
            what: what.into(),
        }
        .in_restore(pid)
    };
    let th = core
        .thread_core
        .as_ref()
        .ok_or_else(|| bad("no thread core"))?;
    let info = core
        .thread_info
        .as_ref()
        .ok_or_else(|| bad("no thread info"))?;
    signals::restore_altstack(t, th.sas.as_ref())?;
    let comm = th
        .comm
        .as_deref()
        .or(core.tc.as_ref().map(|tc| tc.comm.as_str()))
        .unwrap_or("");
    task::restore_misc(
        t,
        &task::ThreadMisc {
            comm,
            personality,
            rseq: th.rseq_entry.as_ref(),
            robust_list: (th.futex_rla, u64::from(th.futex_rla_len)),
            clear_tid: info.clear_tid_addr,
        },
    )?;
    signals::restore_pending(t, inner, th.signals_p.as_ref(), false)?;
    if let Some(extra) = extra {
        restore_thread_extra(t, pid, extra)?;
    }
    if let Some(policy) = th.sched_policy {
        // from outside: crest may raise a priority the task (in its user
        // namespace) could not
        let (prio, nice) = (th.sched_prio.unwrap_or(0), th.sched_nice.unwrap_or(0));
        misc::set_sched(tid, policy, prio, nice).rat(
            pid,
            format!("thread {tid}: scheduling policy {policy}, priority {prio}, nice {nice}"),
        )?;
    }
    let xsave = match extra.and_then(|e| e.xsave.as_ref()) {
        Some(x) => x.clone(),
        None => {
            let size = ptrace::get_xstate(tid).map_or(2432, |x| x.len());
            regs::xsave_from_fpregs(&info.fpregs, size)
        }
    };
    ptrace::set_xstate(tid, &xsave).rat(
        pid,
        format!(
            "PTRACE_SETREGSET(NT_X86_XSTATE) of thread {tid}, the xsave area of core-{image_tid}.img"
        ),
    )?;
    let dumped = regs::from_image(&info.gpregs);
    let mask = th
        .blk_sigset
        .or(core.tc.as_ref().map(|tc| tc.blk_sigset))
        .unwrap_or(0);
    t.set_final_state(regs::resume_regs(&dumped), mask);
    Ok(())
}
