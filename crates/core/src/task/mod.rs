//! A task's (and each thread's) own state, one kind per file, each with
//! its dump and its restore: credentials (`creds`), signals, POSIX timers
//! (`timers`), registers (`regs`), seccomp, and the core image that
//! carries them (`coreimg`). Here: the odds and ends that have no file of
//! their own (resource limits, interval timers, personality, comm, rseq,
//! the robust futex list, the clear-child-tid address, the parent-death
//! signal, the OOM score adjustment). The room uses only `error`,
//! `procfs`, `remote` and `ns::user`.

pub mod coreimg;
pub mod creds;
pub mod error;
pub mod regs;
pub mod seccomp;
pub mod signals;
pub mod timers;

use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError, RestoreCtx, RestoreError};
use crate::remote::Remote;
use crate::task::error::TaskError;
use crest_images::pb::{ItimerEntry, RlimitEntry, RseqEntry, TaskRlimitsEntry, TaskTimersEntry};
use crest_inject::{nr, Tracee};
use crest_sys::{misc, ptrace};

/// `RLIM_NLIMITS` on Linux.
pub const RLIM_NLIMITS: u32 = 16;
const PR_SET_PDEATHSIG: u64 = 1;
const PR_GET_PDEATHSIG: u64 = 2;
const PR_SET_NAME: u64 = 15;
const PR_GET_TID_ADDRESS: u64 = 40;
const RSEQ_FLAG_UNREGISTER: u64 = 1;

/// The resource limits, from `/proc/PID/limits` (`prlimit` on a task of
/// another uid needs CAP_SYS_RESOURCE, which this machine's root lacks).
pub fn dump_rlimits(pid: i32) -> Result<TaskRlimitsEntry, DumpError> {
    let limits = crate::procfs::read_limits(pid).at(pid, "read limits")?;
    Ok(TaskRlimitsEntry {
        rlimits: limits
            .into_iter()
            .take(RLIM_NLIMITS as usize)
            .map(|(cur, max)| RlimitEntry { cur, max })
            .collect(),
    })
}

/// Sets the limits from outside with `prlimit64`.
pub fn restore_rlimits(pid: i32, r: Option<&TaskRlimitsEntry>) -> Result<(), RestoreError> {
    let Some(r) = r else { return Ok(()) };
    for (i, l) in r.rlimits.iter().enumerate().take(RLIM_NLIMITS as usize) {
        if let Err(e) = misc::prlimit(pid, i as u32, Some((l.cur, l.max))) {
            let now = misc::prlimit(pid, i as u32, None).map_or(0, |x| x.1);
            let step = if e.raw_os_error() == Some(libc::EPERM) && l.max > now {
                format!(
                    "resource limit {i}: the hard limit {} is above crest's own {now}, and raising it needs CAP_SYS_RESOURCE",
                    l.max
                )
            } else {
                format!("prlimit({i}, {}, {})", l.cur, l.max)
            };
            return Err(e).rat(pid, step);
        }
    }
    Ok(())
}

pub fn dump_itimers(t: &mut Tracee) -> Result<TaskTimersEntry, DumpError> {
    let pid = t.pid();
    let buf = t.scratch(32).at(pid, "scratch memory")?;
    let mut get = |which: u64| -> Result<ItimerEntry, DumpError> {
        t.syscall(nr::GETITIMER, &[which, buf])
            .at(pid, "getitimer")?;
        let mut raw = [0u8; 32];
        t.read_mem(buf, &mut raw).at(pid, "read itimer")?;
        let w = crate::task::signals::words::<4>(&raw);
        Ok(ItimerEntry {
            isec: w[0],
            iusec: w[1],
            vsec: w[2],
            vusec: w[3],
        })
    };
    Ok(TaskTimersEntry {
        real: get(0)?,
        virt: get(1)?,
        prof: get(2)?,
        posix: Vec::new(),
    })
}

pub fn restore_itimers(
    t: &mut Tracee,
    timers: Option<&TaskTimersEntry>,
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let Some(tm) = timers else { return Ok(()) };
    for (which, it) in [(0u64, &tm.real), (1, &tm.virt), (2, &tm.prof)] {
        if it.vsec == 0 && it.vusec == 0 {
            continue;
        }
        let mut raw = Vec::with_capacity(32);
        for w in [it.isec, it.iusec, it.vsec, it.vusec] {
            raw.extend_from_slice(&w.to_le_bytes());
        }
        let addr = t.put(&raw).rat(pid, "write itimer")?;
        t.syscall(nr::SETITIMER, &[which, addr, 0])
            .rat(pid, format!("setitimer({which})"))?;
    }
    Ok(())
}

/// The thread's `clear_child_tid` address.
pub fn dump_tid_address(t: &mut Tracee) -> Result<u64, DumpError> {
    let pid = t.pid();
    let buf = t.scratch(8).at(pid, "scratch memory")?;
    t.prctl(&[PR_GET_TID_ADDRESS, buf], "prctl(PR_GET_TID_ADDRESS)")?;
    let mut raw = [0u8; 8];
    t.read_mem(buf, &mut raw).at(pid, "read tid address")?;
    Ok(u64::from_le_bytes(raw))
}

pub fn dump_pdeathsig(t: &mut Tracee) -> Result<u32, DumpError> {
    let pid = t.pid();
    let buf = t.scratch(4).at(pid, "scratch memory")?;
    t.prctl(&[PR_GET_PDEATHSIG, buf], "prctl(PR_GET_PDEATHSIG)")?;
    let mut raw = [0u8; 4];
    t.read_mem(buf, &mut raw).at(pid, "read pdeath signal")?;
    Ok(u32::from_le_bytes(raw))
}

const PR_SET_CHILD_SUBREAPER: u64 = 36;
const PR_GET_CHILD_SUBREAPER: u64 = 37;

pub fn dump_child_subreaper(t: &mut Tracee) -> Result<bool, DumpError> {
    let pid = t.pid();
    let buf = t.scratch(4).at(pid, "scratch memory")?;
    t.prctl(
        &[PR_GET_CHILD_SUBREAPER, buf],
        "prctl(PR_GET_CHILD_SUBREAPER)",
    )?;
    let mut raw = [0u8; 4];
    t.read_mem(buf, &mut raw).at(pid, "read child subreaper")?;
    Ok(u32::from_le_bytes(raw) != 0)
}

/// `/proc/PID/oom_score_adj` (-1000..1000).
pub fn dump_oom_score_adj(pid: i32) -> Result<i32, DumpError> {
    let path = format!("/proc/{pid}/oom_score_adj");
    let text = std::fs::read_to_string(&path).at(pid, "read oom_score_adj")?;
    text.trim().parse().map_err(|_| {
        TaskError::Unsupported {
            what: format!("an oom_score_adj of {:?}", text.trim()),
        }
        .in_dump(pid)
    })
}

/// Writes the task's `oom_score_adj` from crest where it differs from
/// what the task inherited (lowering it below what crest's own may be
/// needs CAP_SYS_RESOURCE: the error says so).
pub fn restore_oom_score_adj(pid: i32, adj: Option<i32>) -> Result<(), RestoreError> {
    let Some(adj) = adj else { return Ok(()) };
    if !(-1000..=1000).contains(&adj) {
        return Err(TaskError::BadImage {
            file: format!("core-{pid}.img"),
            what: format!("oom_score_adj {adj} is outside -1000..1000"),
        }
        .in_restore(pid));
    }
    let path = format!("/proc/{pid}/oom_score_adj");
    let now = std::fs::read_to_string(&path).rat(pid, "read oom_score_adj")?;
    if now.trim().parse::<i32>().ok() == Some(adj) {
        return Ok(());
    }
    std::fs::write(&path, adj.to_string()).rat(pid, format!("set oom_score_adj to {adj}"))
}

pub fn restore_child_subreaper(t: &mut Tracee, on: bool) -> Result<(), RestoreError> {
    t.prctl(
        &[PR_SET_CHILD_SUBREAPER, u64::from(on)],
        "prctl(PR_SET_CHILD_SUBREAPER)",
    )?;
    Ok(())
}

pub fn dump_rseq(pid: i32, tid: i32) -> Result<Option<RseqEntry>, DumpError> {
    let cfg = ptrace::get_rseq_config(tid).at(pid, "PTRACE_GET_RSEQ_CONFIGURATION")?;
    if cfg.rseq_abi_pointer == 0 {
        return Ok(None);
    }
    Ok(Some(RseqEntry {
        rseq_abi_pointer: cfg.rseq_abi_pointer,
        rseq_abi_size: cfg.rseq_abi_size,
        signature: cfg.signature,
        rseq_cs_pointer: None,
    }))
}

/// Drops the rseq registration the restored task inherited from crest,
/// which points into memory that is about to go away.
pub fn unregister_inherited_rseq(t: &mut Tracee) -> Result<(), RestoreError> {
    let pid = t.pid();
    let cfg = ptrace::get_rseq_config(t.tid()).rat(pid, "PTRACE_GET_RSEQ_CONFIGURATION")?;
    if cfg.rseq_abi_pointer != 0 {
        t.syscall(
            nr::RSEQ,
            &[
                cfg.rseq_abi_pointer,
                u64::from(cfg.rseq_abi_size),
                RSEQ_FLAG_UNREGISTER,
                u64::from(cfg.signature),
            ],
        )
        .rat(pid, "rseq unregister")?;
    }
    Ok(())
}

/// Restores the thread's misc state: comm, personality, rseq, robust list,
/// clear_child_tid and the parent-death signal.
pub struct ThreadMisc<'a> {
    pub comm: &'a str,
    pub personality: u32,
    pub rseq: Option<&'a RseqEntry>,
    pub robust_list: (u64, u64),
    pub clear_tid: u64,
}

pub fn restore_misc(t: &mut Tracee, m: &ThreadMisc<'_>) -> Result<(), RestoreError> {
    use crest_inject::Arg::Val;
    let mut name = m.comm.as_bytes().to_vec();
    name.truncate(15);
    name.push(0);
    // (in one batch)
    let mut calls = crate::remote::Calls::default();
    let comm = calls.data(&name);
    calls.push_args(
        nr::PRCTL,
        [Val(PR_SET_NAME), comm, Val(0), Val(0), Val(0), Val(0)],
        "prctl(PR_SET_NAME)".into(),
    );
    calls.push(
        nr::PERSONALITY,
        &[u64::from(m.personality)],
        "personality".into(),
    );
    if let Some(r) = m.rseq {
        calls.push(
            nr::RSEQ,
            &[
                r.rseq_abi_pointer,
                u64::from(r.rseq_abi_size),
                0,
                u64::from(r.signature),
            ],
            "rseq register".into(),
        );
    }
    if m.robust_list.0 != 0 {
        calls.push(
            nr::SET_ROBUST_LIST,
            &[m.robust_list.0, m.robust_list.1],
            "set_robust_list".into(),
        );
    }
    calls.push(
        nr::SET_TID_ADDRESS,
        &[m.clear_tid],
        "set_tid_address".into(),
    );
    Ok(calls.run(t)?)
}

/// Sets the audit login uid (the kernel lets a task write only its own,
/// with `CAP_AUDIT_CONTROL`): before the credentials and the threads, who
/// inherit it. Nothing is written when the new task has it already (it
/// inherited crest's).
pub fn restore_loginuid(t: &mut Tracee, uid: u32) -> Result<(), RestoreError> {
    let pid = t.pid();
    let now = std::fs::read_to_string(format!("/proc/{pid}/loginuid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if now == Some(uid) {
        return Ok(());
    }
    // crest opens the file (the kernel reads the value in the user
    // namespace of the file's opener: crest's, as crest read it) and the
    // task writes it (the kernel lets only the task itself)
    let fd = t.open_crest_side(&format!("/proc/{pid}/loginuid"), libc::O_WRONLY)?;
    let text = uid.to_string();
    let addr = t.put(text.as_bytes()).rat(pid, "write loginuid text")?;
    let res = t.syscall(nr::WRITE, &[fd, addr, text.len() as u64]);
    t.close(fd)?;
    res.rat(pid, format!("set the audit login uid to {uid}"))?;
    Ok(())
}

/// The id inside a user namespace of `outside` (an id of the reader's),
/// from a `uid_map`/`gid_map` text.
pub(crate) fn inside_id(map: &str, outside: u32) -> Option<u32> {
    map.lines().find_map(|l| {
        let mut f = l.split_whitespace().map(|w| w.parse::<u64>().ok());
        let (inside, out, len) = (f.next()??, f.next()??, f.next()??);
        let o = u64::from(outside);
        (out <= o && o < out + len).then(|| (o - out + inside) as u32)
    })
}

/// Sets the parent-death signal; after the credentials, since changing
/// them clears it.
pub fn restore_pdeathsig(t: &mut Tracee, sig: u32) -> Result<(), RestoreError> {
    t.prctl(
        &[PR_SET_PDEATHSIG, u64::from(sig)],
        "prctl(PR_SET_PDEATHSIG)",
    )?;
    Ok(())
}

#[cfg(test)]
mod map_tests {
    #[test]
    fn ids_through_maps() {
        let m = "         0      20000      20000\n    100000     200000      50000\n";
        assert_eq!(super::inside_id(m, 24242), Some(4242));
        assert_eq!(super::inside_id(m, 200001), Some(100001));
        assert_eq!(super::inside_id(m, 40000), None);
        assert_eq!(super::inside_id("0 0 4294967295\n", 7), Some(7));
    }
}
