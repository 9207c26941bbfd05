//! Seizing a tree for a dump: every thread of every task stopped with
//! `PTRACE_SEIZE` + `PTRACE_INTERRUPT`, new threads and children caught
//! until the tree holds still, and every thread let go when the seized tree
//! is dropped.

use super::Task;
use crate::error::RoomError;
use crate::error::{DumpCtx, DumpError};
use crate::procfs;
use crate::pstree::TreeError;
use crest_sys::ptrace;

/// A seized tree. Dropping it detaches every thread: the tree runs on.
pub struct Seized {
    /// Tasks in tree order: every parent before its children.
    pub tasks: Vec<Task>,
    attached: Vec<i32>,
    /// By when every thread must have stopped (`--timeout`).
    deadline: std::time::Instant,
    /// Tasks found stopped (job control), with the signal that stopped
    /// them as their seizing reported it.
    stopped: std::collections::HashMap<i32, i32>,
}

/// Most tasks and threads crest seizes in one tree.
const MAX_THREADS: usize = 1 << 16;

impl Seized {
    /// Seizes `root`, its threads and all its descendants, repeating until
    /// a whole pass finds no new task or thread, so a tree that forks or
    /// spawns threads meanwhile is still caught whole. Every thread is
    /// stopped when this returns.
    pub fn seize(root: i32, timeout: std::time::Duration) -> Result<Seized, DumpError> {
        if !std::path::Path::new(&format!("/proc/{root}")).exists() {
            return Err(DumpError::NoSuchProcess { pid: root });
        }
        let mut s = Seized {
            tasks: Vec::new(),
            attached: Vec::new(),
            deadline: std::time::Instant::now() + timeout,
            stopped: std::collections::HashMap::new(),
        };
        let mut order: Vec<i32> = vec![root];
        let mut zombies: Vec<(i32, i32)> = Vec::new();
        loop {
            let mut changed = false;
            let mut i = 0;
            while i < order.len() {
                let pid = order[i];
                i += 1;
                if zombies.iter().any(|z| z.0 == pid) {
                    continue;
                }
                let stat = match procfs::read_stat(pid) {
                    Ok(st) => st,
                    Err(e) if e.is_not_found() && pid != root => continue,
                    Err(e) if e.is_not_found() => return Err(DumpError::NoSuchProcess { pid }),
                    Err(e) => {
                        return Err(DumpError::Proc {
                            pid,
                            step: "read stat",
                            source: e,
                        })
                    }
                };
                if stat.state == 'Z' && pid == root {
                    return Err(TreeError::Unsupported {
                        what: "dumping a zombie as the root of a tree".into(),
                    }
                    .in_dump(pid));
                }
                if stat.state == 'Z' && !s.attached.contains(&pid) {
                    zombies.push((pid, stat.exit_code));
                    changed = true;
                    continue;
                }
                if stat.state == 'T' {
                    s.stopped.entry(pid).or_insert(libc::SIGSTOP);
                }
                changed |= s.seize_threads(pid)?;
                for k in children_of(pid)? {
                    if !order.contains(&k) {
                        order.push(k);
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        for pid in order {
            if let Some(t) = s.task_of(pid, &zombies)? {
                s.tasks.push(t);
            }
        }
        Ok(s)
    }

    /// Task `pid` of the tree, seized (its threads, those seized), or a
    /// zombie (of `zombies`: pid and exit code); none if it is gone
    /// (reaped before its parent was stopped).
    fn task_of(&self, pid: i32, zombies: &[(i32, i32)]) -> Result<Option<Task>, DumpError> {
        let Ok(stat) = procfs::read_stat(pid) else {
            return Ok(None);
        };
        let zombie = zombies.iter().find(|z| z.0 == pid).map(|z| z.1);
        let threads = if zombie.is_some() {
            vec![pid]
        } else {
            let mut th: Vec<i32> = procfs::list_tids(pid)
                .at(pid, "list threads")?
                .into_iter()
                .filter(|t| self.attached.contains(t))
                .collect();
            th.sort_unstable_by_key(|t| (*t != pid, *t));
            th
        };
        Ok(Some(Task {
            pid,
            ppid: stat.ppid,
            pgid: stat.pgrp,
            sid: stat.session,
            threads,
            zombie,
            stopped: self.stopped.get(&pid).copied().filter(|_| zombie.is_none()),
        }))
    }

    /// Seizes every thread of `pid` not seized yet; true if any was new.
    fn seize_threads(&mut self, pid: i32) -> Result<bool, DumpError> {
        let mut any = false;
        loop {
            let tids = procfs::list_tids(pid).at(pid, "list threads")?;
            let new: Vec<i32> = tids
                .into_iter()
                .filter(|t| !self.attached.contains(t))
                .collect();
            if new.is_empty() {
                return Ok(any);
            }
            for tid in new {
                if self.attached.len() >= MAX_THREADS {
                    return Err(TreeError::Unsupported {
                        what: format!("a tree of more than {MAX_THREADS} threads"),
                    }
                    .in_dump(pid));
                }
                match crest_inject::seize_thread_reporting(tid, self.deadline) {
                    Ok(sig) => {
                        if crest_inject::is_stop_signal(sig) {
                            self.stopped.insert(pid, sig);
                        }
                        self.attached.push(tid);
                    }
                    // A thread that exited meanwhile is simply not there.
                    Err(_)
                        if !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() => {}
                    // Another tracer holds it (a debugger, or a task of
                    // the tree tracing another): said as such.
                    Err(crest_inject::InjectError::Ptrace {
                        op: "PTRACE_SEIZE", ..
                    }) if tracer_of(pid, tid)
                        .is_some_and(|t| t != 0 && t != std::process::id() as i32) =>
                    {
                        let tracer = tracer_of(pid, tid).unwrap_or(0);
                        let inside = if self.attached.contains(&tracer) || tracer == pid {
                            "a task of the tree"
                        } else {
                            "a process outside the tree"
                        };
                        return Err(TreeError::Unsupported {
                            what: format!(
                                "thread {tid} traced by pid {tracer} ({inside}): a traced task"
                            ),
                        }
                        .in_dump(pid));
                    }
                    Err(e) => {
                        return Err(DumpError::Inject {
                            pid,
                            step: "seize",
                            source: e,
                        })
                    }
                }
                any = true;
            }
        }
    }

    /// Lets every thread go; they run on as before.
    pub fn release(mut self) {
        for tid in std::mem::take(&mut self.attached) {
            let _ = ptrace::detach(tid, 0);
        }
    }

    /// Lets the tree go stopped (CRIU's `--leave-stopped`): every task
    /// gets a SIGSTOP before it is detached.
    pub fn release_stopped(self) {
        for t in self.tasks.iter().filter(|t| t.zombie.is_none()) {
            let _ = crest_sys::misc::kill(t.pid, libc::SIGSTOP);
        }
        self.release();
    }

    /// Kills the dumped tasks (the default after a successful dump). The
    /// threads are left to the kernel: a killed tracee goes away on its own
    /// once crest stops tracing it, and tearing down a large address space
    /// need not hold up the dump.
    pub fn kill(mut self) {
        for t in self.tasks.iter().filter(|t| t.zombie.is_none()) {
            let _ = crest_sys::misc::kill(t.pid, libc::SIGKILL);
        }
        // A runtime looks at the root as soon as the dump returns: it must
        // be dead by then (a zombie, or gone). A traced task's death is
        // reported to crest first, and the init of a pid namespace waits
        // for its tasks' deaths to be collected: crest collects them, which
        // hands each to its real parent.
        let mut left = std::mem::take(&mut self.attached);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dead(self.tasks[0].pid) && std::time::Instant::now() < deadline {
            left.retain(|&tid| {
                matches!(
                    ptrace::try_wait(tid),
                    Ok(None) | Ok(Some(ptrace::WaitStatus::Stopped { .. }))
                )
            });
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// The `TracerPid` of thread `tid` of `pid` (0: not traced).
fn tracer_of(pid: i32, tid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` has exited (a zombie or gone).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z') || r.starts_with('X')),
        Err(_) => true,
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        for tid in std::mem::take(&mut self.attached) {
            let _ = ptrace::detach(tid, 0);
        }
    }
}

/// The children of every thread of `pid` (those of a thread that is gone
/// meanwhile left out).
fn children_of(pid: i32) -> Result<Vec<i32>, DumpError> {
    let mut out = Vec::new();
    for tid in procfs::list_tids(pid).at(pid, "list threads")? {
        match procfs::read_children(pid, tid) {
            Ok(k) => out.extend(k),
            Err(e) if e.is_not_found() => continue,
            Err(e) => {
                return Err(DumpError::Proc {
                    pid,
                    step: "read children",
                    source: e,
                })
            }
        }
    }
    Ok(out)
}
