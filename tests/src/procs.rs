//! Processes the harness starts: tracking them by pid, reaping them with a
//! timeout, reading their state from /proc, and killing whatever is left.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How often the harness polls files and processes.
pub const POLL: Duration = Duration::from_millis(10);

/// Calls `f` every [`POLL`] until it returns true or `timeout` passes;
/// returns whether it returned true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        sleep(POLL);
    }
}

/// How a waited-for process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `exit(code)`.
    Code(i32),
    /// Killed by a signal.
    Signal(Signal),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by {s}"),
        }
    }
}

/// Result of [`wait_exit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The process ended and was reaped.
    Exited(Exit),
    /// Still running when the timeout passed.
    TimedOut,
    /// `waitpid` says it is not our child (ECHILD).
    NotChild,
}

/// `waitpid(pid, WNOHANG)` in a loop until the child ends or `timeout`
/// passes. Stops and continues are ignored.
pub fn wait_exit(pid: Pid, timeout: Duration) -> Result<Waited> {
    let start = Instant::now();
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Waited::Exited(Exit::Code(code))),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Waited::Exited(Exit::Signal(sig))),
            Ok(_) => {}
            Err(Errno::ECHILD) => return Ok(Waited::NotChild),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).with_context(|| format!("waitpid {pid}")),
        }
        if start.elapsed() >= timeout {
            return Ok(Waited::TimedOut);
        }
        sleep(POLL);
    }
}

/// The state letter of `/proc/PID/stat` (R, S, D, T, t, Z, ...), or None if
/// the process does not exist.
pub fn proc_state(pid: Pid) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// The parent pid from `/proc/PID/stat`.
pub fn proc_ppid(pid: Pid) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `/proc/PID/comm` without the newline.
pub fn proc_comm(pid: Pid) -> Option<String> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// A field of `/proc/PID/status`, e.g. "TracerPid".
pub fn proc_status_field(pid: Pid, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == field).then(|| v.trim().to_string())
    })
}

/// Whether `/proc/PID` exists and is not a zombie.
pub fn alive(pid: Pid) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Whether `/proc/PID` exists at all (zombies included).
pub fn exists(pid: Pid) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` is a kernel thread now (`PF_KTHREAD` in its stat flags):
/// the kernel hands out pids to its workers at any time, a freed one too.
pub fn kernel_thread(pid: Pid) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1;
            rest.split_whitespace().nth(6)?.parse::<u64>().ok()
        })
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// The pids one case started and has not reaped yet. Dropping it kills and
/// reaps every one of them, by pid.
#[derive(Debug, Default)]
pub struct Procs {
    pids: Vec<Pid>,
}

impl Procs {
    /// Remembers `pid` for cleanup.
    pub fn track(&mut self, pid: Pid) {
        if !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
    }

    /// Forgets `pid` (it was reaped).
    pub fn untrack(&mut self, pid: Pid) {
        self.pids.retain(|p| *p != pid);
    }

    /// SIGKILLs and reaps every tracked pid; returns a line per process
    /// that had to be killed.
    pub fn kill_all(&mut self) -> Vec<String> {
        let mut killed = Vec::new();
        for pid in std::mem::take(&mut self.pids) {
            if !exists(pid) {
                continue;
            }
            let comm = proc_comm(pid).unwrap_or_default();
            if kill(pid, Signal::SIGKILL).is_ok() {
                killed.push(format!("killed pid {pid} ({comm})"));
            }
            reap_or_wait_gone(pid);
        }
        killed
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Reaps `pid` if it is our child, else waits (bounded) for it to vanish.
pub fn reap_or_wait_gone(pid: Pid) {
    if let Ok(Waited::NotChild) = wait_exit(pid, Duration::from_secs(5)) {
        wait_until(Duration::from_secs(5), || !exists(pid));
    }
}

/// Kills and reaps every live child of the harness (they are leftovers:
/// cases run one at a time and reap what they start; as child subreaper the
/// harness also inherits orphans of crest). Returns a line per process.
pub fn sweep_children() -> Vec<String> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let pid = Pid::from_raw(pid);
        if proc_ppid(pid) != Some(me) {
            continue;
        }
        let comm = proc_comm(pid).unwrap_or_default();
        let state = proc_state(pid).unwrap_or('?');
        if state != 'Z' {
            let _ = kill(pid, Signal::SIGKILL);
            found.push(format!(
                "left-over process {pid} ({comm}, state {state}) killed"
            ));
        }
        reap_or_wait_gone(pid);
    }
    found
}

/// Reads the pid written to `path` (a ready file or a pidfile).
pub fn read_pid_file(path: &Path) -> Result<Pid> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} holds {:?}, not a pid", path.display(), text.trim()))?;
    if pid <= 0 {
        bail!("{} holds pid {pid}", path.display());
    }
    Ok(Pid::from_raw(pid))
}

/// One process of a tree as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeTask {
    /// Parent pid.
    pub ppid: i32,
    /// Process group.
    pub pgid: i32,
    /// Session.
    pub sid: i32,
    /// Whether it is a zombie.
    pub zombie: bool,
    /// Its thread ids (sorted).
    pub tids: Vec<i32>,
    /// The `NSpid` of each thread (in the order of `tids`): its id in every
    /// pid namespace from crest's down to its own, e.g. "4711 1".
    pub nspids: Vec<String>,
    /// Its comm (for messages only; not compared).
    pub comm: String,
}

/// A process tree by pid.
pub type Tree = std::collections::BTreeMap<i32, TreeTask>;

/// State, ppid, pgrp and session from a `/proc/.../stat` file.
fn stat_fields(path: &str) -> Option<(char, i32, i32, i32)> {
    let stat = fs::read_to_string(path).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    let sid = f.next()?.parse().ok()?;
    Some((state, ppid, pgid, sid))
}

/// The thread ids of `pid` (sorted), from `/proc/PID/task`, but the
/// kernel's io_uring threads (`PF_IO_WORKER`), which come and go as the
/// kernel needs them.
fn tids_of(pid: i32) -> Result<Vec<i32>> {
    let dir = format!("/proc/{pid}/task");
    let mut tids: Vec<i32> = fs::read_dir(&dir)
        .with_context(|| format!("read {dir}"))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|&tid| tid == pid || !io_worker(pid, tid))
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// Whether thread `tid` of `pid` has `PF_IO_WORKER` (0x10) in its
/// `stat` flags (the seventh field after the name).
fn io_worker(pid: i32, tid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(6)?.parse::<u32>().ok()
        })
        .is_some_and(|flags| flags & 0x10 != 0)
}

/// `root` and all its descendants (found through every thread's
/// `/proc/PID/task/TID/children`) with their ids and threads.
pub fn tree_snapshot(root: Pid) -> Result<Tree> {
    let mut tree = Tree::new();
    let mut todo = vec![root.as_raw()];
    while let Some(pid) = todo.pop() {
        if tree.contains_key(&pid) {
            continue;
        }
        // a descendant may end (and be reaped) while the tree is walked; it
        // is then simply not part of the snapshot
        let Some((state, ppid, pgid, sid)) = stat_fields(&format!("/proc/{pid}/stat")) else {
            if pid != root.as_raw() {
                continue;
            }
            bail!("/proc/{pid}/stat is unreadable (the process is gone?)");
        };
        let tids = match tids_of(pid) {
            Ok(t) => t,
            Err(_) if pid != root.as_raw() => continue,
            Err(e) => return Err(e),
        };
        let mut nspids = Vec::with_capacity(tids.len());
        for tid in &tids {
            let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"));
            nspids.push(
                status
                    .ok()
                    .and_then(|s| {
                        s.lines().find_map(|l| {
                            l.strip_prefix("NSpid:")
                                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                        })
                    })
                    .unwrap_or_else(|| "?".into()),
            );
            let path = format!("/proc/{pid}/task/{tid}/children");
            // a thread may end between the listing and this read
            let children = fs::read_to_string(&path).unwrap_or_default();
            todo.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
        tree.insert(
            pid,
            TreeTask {
                ppid,
                pgid,
                sid,
                zombie: state == 'Z',
                tids,
                nspids,
                comm: proc_comm(Pid::from_raw(pid)).unwrap_or_default(),
            },
        );
    }
    Ok(tree)
}

/// Whether every thread of every process of the tree sleeps (state S) or
/// is a zombie.
pub fn tree_settled(root: Pid) -> bool {
    let Ok(tree) = tree_snapshot(root) else {
        return false;
    };
    tree.iter().all(|(pid, t)| {
        t.zombie
            || t.tids.iter().all(|tid| {
                // asleep, or stopped by job control
                matches!(
                    stat_fields(&format!("/proc/{pid}/task/{tid}/stat")),
                    Some(('S' | 'T', ..))
                )
            })
    })
}

/// What is wrong with a tree that crest should have left alone (after a
/// failed dump or `crest dump -R`): one line per process or thread (of the
/// tree of `root` as it is now) that is stopped (state `t` or `T`) or traced
/// (TracerPid not 0), and a line if `root` itself is not alive. Threads and
/// processes that vanish while they are read are ignored.
pub fn tree_problems(root: Pid) -> Vec<String> {
    let mut out = Vec::new();
    if !alive(root) {
        out.push(format!(
            "pid {root} is not running (state {:?})",
            proc_state(root)
        ));
        return out;
    }
    let tree = match tree_snapshot(root) {
        Ok(t) => t,
        Err(e) => {
            out.push(format!("tree of pid {root}: {e:#}"));
            return out;
        }
    };
    for (pid, t) in &tree {
        if t.zombie {
            continue;
        }
        for tid in &t.tids {
            let dir = format!("/proc/{pid}/task/{tid}");
            let Some((state, ..)) = stat_fields(&format!("{dir}/stat")) else {
                continue;
            };
            let tracer = fs::read_to_string(format!("{dir}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().to_string()))
                });
            let what = if tid == pid {
                format!("pid {pid} ({})", t.comm)
            } else {
                format!("thread {tid} of pid {pid} ({})", t.comm)
            };
            if matches!(state, 't' | 'T') {
                out.push(format!("{what} is stopped (state {state})"));
            }
            if let Some(tracer) = tracer.filter(|t| t != "0") {
                out.push(format!("{what} is traced by {tracer}"));
            }
        }
    }
    out
}

/// Children of the harness as (pid, comm, state).
pub fn harness_children() -> Vec<(Pid, String, char)> {
    let me = std::process::id() as i32;
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .map(Pid::from_raw)
        .filter(|p| proc_ppid(*p) == Some(me))
        .map(|p| {
            (
                p,
                proc_comm(p).unwrap_or_default(),
                proc_state(p).unwrap_or('?'),
            )
        })
        .collect()
}

/// Reaps every zombie child of the harness (after a dump without -R, the
/// dead tree's zombies are reparented to the harness and hold their pids).
pub fn reap_zombie_children() {
    for (pid, _, state) in harness_children() {
        if state == 'Z' {
            let _ = wait_exit(pid, Duration::ZERO);
        }
    }
}

/// The differences between two snapshots of a tree, one line each (empty
/// if they match). `what` names the second snapshot, e.g. "after restore".
pub fn tree_diff(before: &Tree, after: &Tree, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    let fmt = |t: &TreeTask| {
        format!(
            "ppid {} pgid {} sid {}{} tids {:?} NSpid {:?}",
            t.ppid,
            t.pgid,
            t.sid,
            if t.zombie { " zombie" } else { "" },
            t.tids,
            t.nspids
        )
    };
    for (pid, b) in before {
        match after.get(pid) {
            None => out.push(format!(
                "pid {pid} ({}: {}) is missing {what}",
                b.comm,
                fmt(b)
            )),
            Some(a) => {
                let mut d = Vec::new();
                if a.ppid != b.ppid {
                    d.push(format!("ppid {} -> {}", b.ppid, a.ppid));
                }
                if a.pgid != b.pgid {
                    d.push(format!("pgid {} -> {}", b.pgid, a.pgid));
                }
                if a.sid != b.sid {
                    d.push(format!("sid {} -> {}", b.sid, a.sid));
                }
                if a.zombie != b.zombie {
                    d.push(format!("zombie {} -> {}", b.zombie, a.zombie));
                }
                if a.tids != b.tids {
                    d.push(format!("tids {:?} -> {:?}", b.tids, a.tids));
                }
                if a.nspids != b.nspids {
                    d.push(format!("NSpid {:?} -> {:?}", b.nspids, a.nspids));
                }
                if !d.is_empty() {
                    out.push(format!("pid {pid} ({}): {}", b.comm, d.join(", ")));
                }
            }
        }
    }
    for (pid, a) in after {
        if !before.contains_key(pid) {
            out.push(format!("pid {pid} ({}: {}) is new {what}", a.comm, fmt(a)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(ppid: i32, pgid: i32, sid: i32, tids: &[i32]) -> TreeTask {
        TreeTask {
            ppid,
            pgid,
            sid,
            zombie: false,
            tids: tids.to_vec(),
            nspids: tids.iter().map(|t| t.to_string()).collect(),
            comm: "w".into(),
        }
    }

    #[test]
    fn tree_diff_names_every_difference() {
        let mut before = Tree::new();
        before.insert(10, task(1, 10, 10, &[10, 11]));
        before.insert(20, task(10, 20, 10, &[20]));
        before.insert(30, task(10, 10, 10, &[30]));
        assert!(tree_diff(&before, &before.clone(), "after").is_empty());
        let mut after = before.clone();
        after.insert(10, task(1, 10, 10, &[10, 12]));
        after.get_mut(&20).unwrap().sid = 20;
        after.remove(&30);
        after.insert(40, task(10, 10, 10, &[40]));
        let d = tree_diff(&before, &after, "after restore");
        assert_eq!(d.len(), 4, "{d:#?}");
        assert!(d[0].contains("tids [10, 11] -> [10, 12]"), "{}", d[0]);
        assert!(d[1].contains("sid 10 -> 20"), "{}", d[1]);
        assert!(d[2].contains("pid 30") && d[2].contains("missing after restore"));
        assert!(d[3].contains("pid 40") && d[3].contains("new after restore"));
    }

    #[test]
    fn snapshot_of_self_lists_own_threads() {
        let me = Pid::from_raw(std::process::id() as i32);
        let tree = tree_snapshot(me).unwrap();
        let t = &tree[&me.as_raw()];
        assert!(t.tids.contains(&me.as_raw()));
        assert!(!t.zombie);
    }
}
