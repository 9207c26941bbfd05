//! seccomp: strict mode and filters, per thread.
//!
//! Dump reads every thread's mode from `/proc/PID/task/TID/status` and,
//! in filter mode, its chain of classic BPF programs with
//! `PTRACE_SECCOMP_GET_FILTER` (newest first) and their flags with
//! `PTRACE_SECCOMP_GET_METADATA`. Chains are stored as a tree in CRIU's
//! `seccomp.img` (each filter names the one before it); a thread's core
//! names the last filter of its chain. Threads and tasks whose chains
//! begin alike share those filters in the image.
//!
//! A task with a mode is traced with `PTRACE_O_SUSPEND_SECCOMP` from the
//! moment it is seized, so that none of crest's injected syscalls meets
//! its filters (a filter that kills on `mmap` would otherwise kill the
//! task crest dumps). The option needs CAP_SYS_ADMIN and a crest without
//! seccomp of its own; a crest that lacks either refuses such a task, as
//! before, unless the task's filters are all crest's own (inherited: the
//! restored task inherits them again).
//!
//! Restore installs each thread's chain, oldest first, with injected
//! `seccomp(SECCOMP_SET_MODE_FILTER)` (or `prctl(PR_SET_SECCOMP,
//! SECCOMP_MODE_STRICT)`) after its threads exist (a thread inherits its
//! creator's filters) and before it drops its capabilities (installing a
//! filter without no_new_privs needs CAP_SYS_ADMIN), the thread traced
//! with `PTRACE_O_SUSPEND_SECCOMP` so the rest of the restore is not
//! filtered either. Each thread gets its own copy of a shared filter: the
//! kernel's sharing is not visible from outside, the filters' effect is.

use crate::error::RoomError;
use crate::error::{DumpError, RestoreCtx, RestoreError};
use crate::remote::Remote;
use crate::task::error::{ChainError, TaskError};
use crest_images::pb::{SeccompEntry, SeccompFilter};
use crest_images::{magic, names};
use crest_inject::{nr, Tracee};
use crest_sys::ptrace;
use std::collections::HashMap;
use std::path::Path;

pub const MODE_STRICT: u32 = 1;
pub const MODE_FILTER: u32 = 2;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const PR_SET_SECCOMP: u64 = 22;
/// Filter flags a thread can be given again (`SECCOMP_FILTER_FLAG_LOG`,
/// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`).
const RESTORABLE_FLAGS: u64 = 2 | 4;
/// The kernel's limit on the instructions of one thread's chain
/// (`MAX_INSNS_PER_PATH`, counting 4 more per filter).
const MAX_PATH_INSNS: usize = 32768;
/// Most filters in one image (a chain holds at most 8192 filters).
const MAX_FILTERS: usize = 65536;

/// A thread's seccomp state as seen at dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadSeccomp {
    pub mode: u32,
    /// Filter mode: (program, flags), oldest first.
    pub chain: Vec<(Vec<u8>, u64)>,
}

/// Seccomp mode and number of filters in a `/proc/.../status` text.
fn mode_of(status: &str) -> (u32, u32) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("Seccomp:"), field("Seccomp_filters:"))
}

/// The seccomp state of every thread of `pid` (seized and stopped), in
/// `tids`' order; sets `PTRACE_O_SUSPEND_SECCOMP` on those that have a
/// mode. Empty states when crest's own seccomp is the task's (inherited).
pub fn collect(pid: i32, tids: &[i32]) -> Result<Vec<ThreadSeccomp>, DumpError> {
    let mine = mode_of(&std::fs::read_to_string("/proc/self/status").unwrap_or_default());
    let mut out = Vec::with_capacity(tids.len());
    for &tid in tids {
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).map_err(|e| {
                DumpError::Io {
                    pid,
                    step: "read a thread's status",
                    source: e,
                }
            })?;
        let (mode, count) = mode_of(&text);
        if mode == 0 {
            out.push(ThreadSeccomp::default());
            continue;
        }
        if mine.0 != 0 {
            // crest is sandboxed itself: it can neither read filters nor
            // suspend them; a task with exactly crest's gets them again by
            // inheritance
            if mode != mine.0 || count > mine.1 {
                return Err(TaskError::Unsupported {
                    what: format!(
                        "a seccomp sandbox (mode {mode}, {count} filters) beyond crest's own \
                         (mode {}, {}: crest under seccomp cannot read or suspend filters)",
                        mine.0, mine.1
                    ),
                }
                .in_dump(pid));
            }
            out.push(ThreadSeccomp::default());
            continue;
        }
        ptrace::set_options(tid, ptrace::PTRACE_O_SUSPEND_SECCOMP).map_err(|e| {
            TaskError::Unsupported {
                what: format!(
                    "thread {tid}'s seccomp sandbox (mode {mode}): suspending it while crest \
                     works needs CAP_SYS_ADMIN ({e})"
                ),
            }
            .in_dump(pid)
        })?;
        let mut chain = Vec::new();
        if mode == MODE_FILTER {
            for index in 0..u64::from(count) {
                let prog = ptrace::seccomp_filter(tid, index).map_err(|e| DumpError::Io {
                    pid,
                    step: "PTRACE_SECCOMP_GET_FILTER",
                    source: e,
                })?;
                let flags = ptrace::seccomp_flags(tid, index).map_err(|e| DumpError::Io {
                    pid,
                    step: "PTRACE_SECCOMP_GET_METADATA",
                    source: e,
                })?;
                if notifies(&prog) {
                    return Err(TaskError::Unsupported {
                        what: format!(
                            "a seccomp filter on thread {tid} that hands syscalls to a \
                             supervisor (SECCOMP_RET_USER_NOTIF: its listener is not carried)"
                        ),
                    }
                    .in_dump(pid));
                }
                if flags & !RESTORABLE_FLAGS != 0 {
                    return Err(TaskError::Unsupported {
                        what: format!("a seccomp filter with flags {flags:#x} on thread {tid}"),
                    }
                    .in_dump(pid));
                }
                chain.push((prog, flags));
            }
            chain.reverse();
        }
        out.push(ThreadSeccomp { mode, chain });
    }
    Ok(out)
}

/// Whether a classic BPF program can return `SECCOMP_RET_USER_NOTIF`
/// (a `BPF_RET | BPF_K` with that action): without its listener the
/// kernel would answer those syscalls `ENOSYS` instead.
fn notifies(prog: &[u8]) -> bool {
    const BPF_RET_K: u16 = 0x06;
    const RET_USER_NOTIF: u32 = 0x7fc0_0000;
    prog.chunks_exact(8).any(|insn| {
        let code = u16::from_le_bytes([insn[0], insn[1]]);
        let k = u32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        code == BPF_RET_K && k & 0xffff_0000 == RET_USER_NOTIF
    })
}

/// The filters of the whole tree, each chain sharing the filters it
/// begins with with the chains seen before.
#[derive(Debug, Default)]
pub struct Table {
    filters: Vec<SeccompFilter>,
    /// (prev, program, flags) → index
    seen: HashMap<(Option<u32>, Vec<u8>, u32), u32>,
}

impl Table {
    /// The index of the last filter of `chain` (None when empty).
    pub fn add(&mut self, chain: &[(Vec<u8>, u64)]) -> Option<u32> {
        let mut prev = None;
        for (prog, flags) in chain {
            let key = (prev, prog.clone(), *flags as u32);
            let id = match self.seen.get(&key) {
                Some(&id) => id,
                None => {
                    let id = self.filters.len() as u32;
                    self.filters.push(SeccompFilter {
                        filter: prog.clone(),
                        prev,
                        flags: (*flags != 0).then_some(*flags as u32),
                    });
                    self.seen.insert(key, id);
                    id
                }
            };
            prev = Some(id);
        }
        prev
    }

    /// Writes `seccomp.img` when any task had filters.
    pub fn write(&self, dir: &Path) -> Result<(), DumpError> {
        if self.filters.is_empty() {
            return Ok(());
        }
        let e = SeccompEntry {
            seccomp_filters: self.filters.clone(),
        };
        crest_images::write_image(dir, names::SECCOMP, magic::SECCOMP, &[e])?;
        Ok(())
    }
}

/// Fills a thread core's seccomp fields.
pub fn set_core(core: &mut crest_images::pb::CoreEntry, s: &ThreadSeccomp, table: &mut Table) {
    if s.mode == 0 {
        return;
    }
    if let Some(th) = core.thread_core.as_mut() {
        th.seccomp_mode = Some(s.mode as i32);
        th.seccomp_filter = table.add(&s.chain);
    }
}

// ---- restore side -------------------------------------------------------

/// The filters of `seccomp.img` (none without it), checked: each names
/// an earlier one, every program is whole BPF instructions.
pub fn read(dir: &Path) -> Result<Vec<SeccompFilter>, RestoreError> {
    if !dir.join(names::SECCOMP).exists() {
        return Ok(Vec::new());
    }
    let entries: Vec<SeccompEntry> = crest_images::read_image(dir, names::SECCOMP, magic::SECCOMP)?;
    let bad = |what: String| {
        TaskError::BadImage {
            file: names::SECCOMP.into(),
            what,
        }
        .in_tree_restore()
    };
    let filters: Vec<SeccompFilter> = entries
        .into_iter()
        .flat_map(|e| e.seccomp_filters)
        .collect();
    if filters.len() > MAX_FILTERS {
        return Err(bad(format!("{} filters", filters.len())));
    }
    for (i, f) in filters.iter().enumerate() {
        let n = f.filter.len();
        if n == 0 || n % 8 != 0 || n / 8 > ptrace::BPF_MAXINSNS {
            return Err(bad(format!("filter {i} of {n} bytes")));
        }
        if f.prev.is_some_and(|p| p as usize >= i) {
            return Err(bad(format!("filter {i} follows a later one")));
        }
        if u64::from(f.flags.unwrap_or(0)) & !RESTORABLE_FLAGS != 0 {
            return Err(bad(format!(
                "filter {i} with flags {:#x}",
                f.flags.unwrap_or(0)
            )));
        }
    }
    Ok(filters)
}

/// The chain ending at filter `last`, oldest first.
fn chain(filters: &[SeccompFilter], last: u32) -> Result<Vec<&SeccompFilter>, ChainError> {
    let mut out = Vec::new();
    let mut insns = 0;
    let mut cur = Some(last);
    while let Some(i) = cur {
        let f = filters.get(i as usize).ok_or(ChainError::Missing(i))?;
        insns += f.filter.len() / 8 + 4;
        if insns > MAX_PATH_INSNS {
            return Err(ChainError::TooLong {
                max: MAX_PATH_INSNS,
            });
        }
        out.push(f);
        cur = f.prev;
    }
    out.reverse();
    Ok(out)
}

/// Whether a restore of these cores installs seccomp (and so needs a
/// crest that can suspend it).
pub fn wanted(th: &crest_images::pb::ThreadCoreEntry) -> bool {
    th.seccomp_mode.unwrap_or(0) != 0
}

/// Gives thread `t` its seccomp state from its core: suspended for the
/// rest of the restore, then installed.
pub fn restore(
    t: &mut Tracee,
    th: &crest_images::pb::ThreadCoreEntry,
    filters: &[SeccompFilter],
) -> Result<(), RestoreError> {
    let pid = t.pid();
    let tid = t.tid();
    let mode = th.seccomp_mode.unwrap_or(0) as u32;
    if mode == 0 {
        return Ok(());
    }
    t.suspend_seccomp()
        .rat(pid, format!("thread {tid}: PTRACE_O_SUSPEND_SECCOMP"))?;
    match mode {
        MODE_STRICT => {
            t.prctl(
                &[PR_SET_SECCOMP, u64::from(MODE_STRICT)],
                &format!("thread {tid}: prctl(PR_SET_SECCOMP, strict)"),
            )?;
        }
        MODE_FILTER => {
            let last = th.seccomp_filter.ok_or_else(|| {
                TaskError::BadImage {
                    file: names::core(tid as u32),
                    what: "seccomp filter mode without a filter".into(),
                }
                .in_restore(pid)
            })?;
            let list = chain(filters, last).map_err(|why| {
                TaskError::SeccompChain {
                    file: names::core(tid as u32),
                    why,
                }
                .in_restore(pid)
            })?;
            for (k, f) in list.iter().enumerate() {
                // struct sock_fprog { unsigned short len; struct sock_filter
                // *filter; } followed by the program, in one scratch write
                let at = t
                    .scratch(16 + f.filter.len())
                    .rat(pid, "scratch for a seccomp filter")?;
                let mut buf = ((f.filter.len() / 8) as u64).to_le_bytes().to_vec();
                buf.extend_from_slice(&(at + 16).to_le_bytes());
                buf.extend_from_slice(&f.filter);
                t.write_mem(at, &buf).rat(pid, "write a seccomp filter")?;
                let flags = u64::from(f.flags.unwrap_or(0));
                t.syscall(nr::SECCOMP, &[SECCOMP_SET_MODE_FILTER, flags, at])
                    .rat(
                        pid,
                        format!("thread {tid}: seccomp(SET_MODE_FILTER) of filter {k}"),
                    )?;
            }
        }
        other => {
            return Err(TaskError::BadImage {
                file: names::core(tid as u32),
                what: format!("seccomp mode {other}"),
            }
            .in_restore(pid))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prog(b: u8) -> Vec<u8> {
        vec![b; 8]
    }

    #[test]
    fn chains_share_their_beginnings() {
        let mut t = Table::default();
        let a = t.add(&[(prog(1), 0)]);
        let ab = t.add(&[(prog(1), 0), (prog(2), 2)]);
        let ac = t.add(&[(prog(1), 0), (prog(3), 0)]);
        let a_again = t.add(&[(prog(1), 0)]);
        assert_eq!((a, ab, ac, a_again), (Some(0), Some(1), Some(2), Some(0)));
        assert_eq!(t.filters[1].prev, Some(0));
        assert_eq!(t.filters[1].flags, Some(2));
        assert_eq!(t.add(&[]), None);
        let c = chain(&t.filters, 1).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].filter, prog(1));
    }

    #[test]
    fn user_notification_is_seen() {
        let ret = |k: u32| {
            let mut v = 0x06u16.to_le_bytes().to_vec();
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&k.to_le_bytes());
            v
        };
        assert!(notifies(&[ret(0x7fff_0000), ret(0x7fc0_0000)].concat()));
        assert!(!notifies(&[ret(0x7fff_0000), ret(0x0005_0001)].concat()));
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tx\nSeccomp:\t2\nSeccomp_filters:\t3\n";
        assert_eq!(mode_of(s), (2, 3));
        assert_eq!(mode_of("Name:\tx\n"), (0, 0));
    }

    #[test]
    fn hostile_chains_are_refused() {
        let f = |prev| SeccompFilter {
            filter: prog(0),
            prev,
            flags: None,
        };
        assert!(chain(&[f(None)], 3).is_err());
        let long: Vec<SeccompFilter> = (0..9000u32).map(|i| f(i.checked_sub(1))).collect();
        assert!(chain(&long, 8999).is_err());
    }
}
