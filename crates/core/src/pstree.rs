//! The process tree: which tasks and threads are dumped, seized and
//! stopped, and `pstree.img` (CRIU's `pstree_entry`: pid, ppid, pgid, sid,
//! threads).

use crate::error::{DumpCtx, DumpError};
use crate::procfs;
use crest_images::pb::PstreeEntry;
use crest_sys::ptrace;

/// One task of the tree, seized.
#[derive(Debug, Clone)]
pub struct Task {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub threads: Vec<i32>,
}

impl Task {
    pub fn entry(&self) -> PstreeEntry {
        PstreeEntry {
            pid: self.pid as u32,
            ppid: self.ppid as u32,
            pgid: self.pgid as u32,
            sid: self.sid as u32,
            threads: self.threads.iter().map(|t| *t as u32).collect(),
        }
    }
}

/// A seized tree. Dropping it detaches every thread: the tree runs on.
pub struct Seized {
    pub tasks: Vec<Task>,
    attached: Vec<i32>,
}

impl Seized {
    /// Seizes `pid` and all its threads, repeating until no new thread
    /// appears. Every thread is stopped when this returns.
    pub fn seize(pid: i32) -> Result<Seized, DumpError> {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(DumpError::NoSuchProcess { pid });
        }
        let mut s = Seized {
            tasks: Vec::new(),
            attached: Vec::new(),
        };
        loop {
            let tids = procfs::list_tids(pid).map_err(|e| {
                if e.is_not_found() {
                    DumpError::NoSuchProcess { pid }
                } else {
                    DumpError::Proc {
                        pid,
                        step: "list threads",
                        source: e,
                    }
                }
            })?;
            let new: Vec<i32> = tids
                .iter()
                .copied()
                .filter(|t| !s.attached.contains(t))
                .collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                crest_inject::seize_thread(tid).at(pid, "seize")?;
                s.attached.push(tid);
            }
        }
        let stat = procfs::read_stat(pid).at(pid, "read stat")?;
        let mut threads = s.attached.clone();
        threads.sort_unstable();
        if let Some(pos) = threads.iter().position(|t| *t == pid) {
            threads.swap(0, pos);
        }
        s.tasks.push(Task {
            pid,
            ppid: stat.ppid,
            pgid: stat.pgrp,
            sid: stat.session,
            threads,
        });
        Ok(s)
    }

    /// Lets every thread go; they run on as before.
    pub fn release(mut self) {
        for tid in std::mem::take(&mut self.attached) {
            let _ = ptrace::detach(tid, 0);
        }
    }

    /// Kills the dumped tasks (the default after a successful dump). The
    /// threads are left to the kernel: a killed tracee goes away on its own
    /// once crest stops tracing it, and tearing down a large address space
    /// need not hold up the dump.
    pub fn kill(mut self) {
        for t in &self.tasks {
            let _ = crest_sys::misc::kill(t.pid, libc::SIGKILL);
        }
        self.attached.clear();
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        for tid in std::mem::take(&mut self.attached) {
            let _ = ptrace::detach(tid, 0);
        }
    }
}
