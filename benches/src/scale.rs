//! Scale modes: a tree of N processes and one process with N threads.
//!
//! The holders here are re-executions of this binary (no `fork` without
//! `exec`: that would need code the workspace lints forbid here):
//!
//! - `hold-tree N DEPTH KIB READY BENCH` is the root of the tree. It starts
//!   chains of `hold-node` processes, each chain at most DEPTH long (a child
//!   of the root, its child, ...), until the tree has N tasks. Every task
//!   owns KIB KiB of present, patterned memory. Each node writes one line
//!   `PID PPID ADDR` into a pipe inherited from the root, then swaps the pipe
//!   for /dev/null; the root reads until end of file, so when it writes its
//!   ready file every task is up and no task holds the pipe any more.
//! - `hold-threads N READY BENCH` starts N threads, each sleeping in a loop,
//!   and writes its ready file once each thread has reported its tid.
//!
//! Every holder task sleeps until the bench is gone.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::holder;
use crate::report::ScaleRun;
use crate::{kill_all, wait_all_gone, Started};

/// Stack of each holder thread: they only sleep.
const THREAD_STACK: usize = 128 << 10;
/// How long every killed task of a run may take to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(60);

/// The value word `i` of the buffer of task `pid` holds.
fn task_word(pid: i32, i: usize) -> u64 {
    holder::word(i) ^ (u64::from(pid.unsigned_abs())).rotate_left(40)
}

/// A buffer of `kib` KiB, every word written (so every page is present).
fn touched(kib: usize, pid: i32) -> Vec<u64> {
    (0..kib * 1024 / 8).map(|i| task_word(pid, i)).collect()
}

/// Sleeps until the bench (pid `bench`) is gone.
fn sleep_while_bench(bench: u32) {
    let bench = PathBuf::from(format!("/proc/{bench}"));
    while bench.exists() {
        thread::sleep(Duration::from_secs(1));
    }
}

/// Writes `text` to `ready` atomically (via a rename).
fn write_ready(ready: &Path, text: &str) -> Result<()> {
    let tmp = ready.with_extension("tmp");
    fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, ready).with_context(|| format!("rename to {}", ready.display()))
}

// ---------------------------------------------------------------------------
// Holder side.

/// `hold-tree N DEPTH KIB READY BENCH`: the root of the tree.
pub fn hold_tree(n: usize, depth: usize, kib: usize, ready: &Path, bench: u32) -> Result<()> {
    rustix::process::setsid().context("setsid")?;
    crest_sys::proc::close_from(3).context("close_range")?;
    let me = std::process::id() as i32;
    let buf = touched(kib, me);
    let exe = std::env::current_exe().context("current_exe")?;

    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("pipe")?;
    let mut chains = Vec::new();
    let mut left = n.saturating_sub(1);
    while left > 0 {
        let len = depth.min(left);
        let out = wr.try_clone().context("dup pipe")?;
        let child = Command::new(&exe)
            .arg("hold-node")
            .arg(len.to_string())
            .arg(kib.to_string())
            .arg(bench.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn node {}", exe.display()))?;
        chains.push(child);
        left -= len;
    }
    drop(wr);

    let mut text = format!(
        "{me} {} {:#x}\n",
        std::os::unix::process::parent_id(),
        buf.as_ptr() as usize
    );
    let mut nodes = 0usize;
    for line in BufReader::new(File::from(rd)).lines() {
        let line = line.context("read node pipe")?;
        text.push_str(&line);
        text.push('\n');
        nodes += 1;
    }
    if nodes != n - 1 {
        bail!("{nodes} of {} nodes reported", n - 1);
    }
    write_ready(ready, &text)?;

    sleep_while_bench(bench);
    std::hint::black_box(&buf);
    drop(chains);
    Ok(())
}

/// `hold-node LEN KIB BENCH`: one task of a chain of LEN; its stdout is the
/// root's pipe.
pub fn hold_node(len: usize, kib: usize, bench: u32) -> Result<()> {
    let me = std::process::id() as i32;
    let buf = touched(kib, me);
    let mut next = None;
    if len > 1 {
        let exe = std::env::current_exe().context("current_exe")?;
        // Inherits stdin, stdout (the pipe) and stderr.
        let child = Command::new(&exe)
            .arg("hold-node")
            .arg((len - 1).to_string())
            .arg(kib.to_string())
            .arg(bench.to_string())
            .spawn()
            .with_context(|| format!("spawn node {}", exe.display()))?;
        next = Some(child);
    }
    let line = format!(
        "{me} {} {:#x}\n",
        std::os::unix::process::parent_id(),
        buf.as_ptr() as usize
    );
    {
        // One write(2) of less than PIPE_BUF bytes: atomic among the nodes.
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("dup stdout")?;
        File::from(fd)
            .write_all(line.as_bytes())
            .context("write to the root's pipe")?;
    }
    let null = File::options()
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?;
    nix::unistd::dup2_stdout(&null).context("dup2 /dev/null to stdout")?;
    drop(null);

    sleep_while_bench(bench);
    std::hint::black_box(&buf);
    drop(next);
    Ok(())
}

/// `hold-threads N READY BENCH`: a process with N sleeping threads.
pub fn hold_threads(n: usize, ready: &Path, bench: u32) -> Result<()> {
    rustix::process::setsid().context("setsid")?;
    crest_sys::proc::close_from(3).context("close_range")?;
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(n);
    for k in 0..n {
        let tx = tx.clone();
        let h = thread::Builder::new()
            .name(format!("sleeper-{k}"))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let _ = tx.send(nix::unistd::gettid().as_raw());
                drop(tx);
                loop {
                    thread::sleep(Duration::from_secs(10));
                }
            })
            .with_context(|| format!("spawn thread {k}"))?;
        handles.push(h);
    }
    drop(tx);
    let tids: Vec<i32> = rx.iter().take(n).collect();
    if tids.len() != n {
        bail!("{} of {n} threads reported", tids.len());
    }
    let mut text = std::process::id().to_string();
    for t in &tids {
        text.push_str(&format!(" {t}"));
    }
    text.push('\n');
    write_ready(ready, &text)?;
    sleep_while_bench(bench);
    drop(handles);
    Ok(())
}

// ---------------------------------------------------------------------------
// Bench side.

/// Tree-mode parameters.
pub struct TreeParams {
    pub n: usize,
    pub depth: usize,
    pub kib: usize,
}

/// What a tree run needs of the common options.
pub struct Env<'a> {
    pub tool: &'a crate::Tool,
    pub dir: &'a Path,
    pub verbosity: u32,
    pub keep: bool,
}

/// One task of the tree as the root reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Task {
    pid: i32,
    ppid: i32,
    addr: u64,
}

fn parse_tree(text: &str) -> Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(pid), Some(ppid), Some(addr), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            bail!("want \"PID PPID ADDR\", got {line:?}");
        };
        tasks.push(Task {
            pid: pid.parse().context("pid")?,
            ppid: ppid.parse().context("ppid")?,
            addr: u64::from_str_radix(addr.trim_start_matches("0x"), 16).context("address")?,
        });
    }
    if tasks.is_empty() {
        bail!("empty ready file");
    }
    Ok(tasks)
}

/// The parent pid field of /proc/PID/stat.
fn ppid_of(pid: i32) -> Result<i32> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no ')'"))?;
    let mut f = rest.split_whitespace();
    let (Some(_state), Some(ppid)) = (f.next(), f.next()) else {
        bail!("{path}: short line");
    };
    ppid.parse().with_context(|| format!("{path}: ppid"))
}

/// Pids of all descendants of `root` (single-threaded tasks), from
/// /proc/PID/task/PID/children.
fn descendants(root: i32) -> Result<BTreeSet<i32>> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        let path = format!("/proc/{pid}/task/{pid}/children");
        let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        for c in text.split_whitespace() {
            let c: i32 = c.parse().with_context(|| format!("{path}: {c:?}"))?;
            if seen.insert(c) {
                todo.push(c);
            }
        }
    }
    Ok(seen)
}

/// Checks that every task runs with its recorded parent, that the root has
/// exactly the other tasks as descendants, and (if `kib` > 0) every task's
/// memory.
fn check_tree(tasks: &[Task], kib: usize, what: &str) -> Result<()> {
    let root = tasks[0].pid;
    for t in tasks {
        let ppid = ppid_of(t.pid).with_context(|| format!("{what}: task {}", t.pid))?;
        if ppid != t.ppid {
            bail!("{what}: task {} has parent {ppid}, want {}", t.pid, t.ppid);
        }
    }
    let want: BTreeSet<i32> = tasks[1..].iter().map(|t| t.pid).collect();
    let got = descendants(root).with_context(|| format!("{what}: descendants"))?;
    if got != want {
        let missing: Vec<_> = want.difference(&got).take(5).collect();
        let extra: Vec<_> = got.difference(&want).take(5).collect();
        bail!(
            "{what}: root {root} has {} descendants, want {} (missing e.g. {missing:?}, extra e.g. {extra:?})",
            got.len(),
            want.len()
        );
    }
    let len = kib * 1024;
    let mut local = vec![0u8; len];
    for t in tasks.iter().filter(|_| len > 0) {
        let got = crest_sys::mem::read_remote(t.pid, &[(t.addr, len)], &mut local)
            .with_context(|| format!("{what}: process_vm_readv pid {}", t.pid))?;
        if got != len {
            bail!("{what}: pid {}: short read {got} of {len}", t.pid);
        }
        for (i, w) in local.chunks_exact(8).enumerate() {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(w);
            if u64::from_ne_bytes(raw) != task_word(t.pid, i) {
                bail!(
                    "{what}: pid {}: memory differs at offset {:#x}",
                    t.pid,
                    i * 8
                );
            }
        }
    }
    Ok(())
}

/// Starts a holder (`args` after the binary) and waits for its ready file.
fn start(args: &[String], ready: &Path, started: &mut Started) -> Result<String> {
    let exe = std::env::current_exe().context("current_exe")?;
    let _ = fs::remove_file(ready);
    let child = Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn holder {}", exe.display()))?;
    let child = started.child.insert(child);
    let text = holder::wait_ready_text(child, ready)?;
    let _ = fs::remove_file(ready);
    Ok(text)
}

/// Fresh images directory `dir/name`.
fn fresh_dir(dir: &Path, name: &str) -> Result<PathBuf> {
    let images = dir.join(name);
    if images.exists() {
        fs::remove_dir_all(&images).with_context(|| format!("remove {}", images.display()))?;
    }
    fs::create_dir_all(&images).with_context(|| format!("create {}", images.display()))?;
    Ok(images)
}

/// Times `crest dump -t root` into `images`, then waits until the holder
/// child and every pid of `pids` is gone.
fn dump(
    env: &Env,
    images: &Path,
    root: i32,
    pids: &[i32],
    started: &mut Started,
) -> Result<crate::Timed> {
    let v = format!("-v{}", env.verbosity);
    let root_s = root.to_string();
    let name = images
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("run")
        .to_string();
    let dump_s = crate::time_crest(
        &env.tool.bin,
        env.dir,
        &format!("{name}.dump"),
        &[
            "dump",
            "-t",
            &root_s,
            "-D",
            crate::path_str(images)?,
            &v,
            "-o",
            "dump.log",
        ],
    )?;
    // crest dump kills the tree: reap our child, then every orphan that came
    // to us, until /proc agrees that the whole tree is gone.
    if let Some(child) = started.child.as_mut() {
        crate::wait_child(child, GONE_TIMEOUT).context("holder after dump")?;
    }
    started.child = None;
    wait_all_gone(pids).context("tree after dump")?;
    Ok(dump_s)
}

/// Times `crest restore -d` from `images`; returns the seconds and the
/// restored root pid.
fn restore(env: &Env, images: &Path) -> Result<(crate::Timed, i32)> {
    let v = format!("-v{}", env.verbosity);
    let pidfile = images.join("restore.pid");
    let name = images
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("run")
        .to_string();
    let secs = crate::time_crest(
        &env.tool.bin,
        env.dir,
        &format!("{name}.restore"),
        &[
            "restore",
            "-D",
            crate::path_str(images)?,
            "-d",
            &v,
            "-o",
            "restore.log",
            "--pidfile",
            crate::path_str(&pidfile)?,
        ],
    )?;
    let pid: i32 = fs::read_to_string(&pidfile)
        .with_context(|| format!("read {}", pidfile.display()))?
        .trim()
        .parse()
        .context("pid in the pidfile")?;
    Ok((secs, pid))
}

/// Kills every task of a finished run and removes its images.
fn finish(env: &Env, images: &Path, mut started: Started) -> Result<()> {
    let pids = std::mem::take(&mut started.pids);
    kill_all(&pids);
    wait_all_gone(&pids).context("tree after the final kill")?;
    drop(started);
    if !env.keep {
        fs::remove_dir_all(images).with_context(|| format!("remove {}", images.display()))?;
    }
    Ok(())
}

/// One run of the tree mode.
pub fn run_tree(env: &Env, p: &TreeParams, k: usize) -> Result<ScaleRun> {
    let images = fresh_dir(env.dir, &format!("{}-tree-{}-run-{k}", env.tool.name, p.n))?;
    let ready = env.dir.join(format!("ready-tree-{}-{k}", p.n));
    let mut started = Started::default();

    let t0 = Instant::now();
    let args = [
        "hold-tree".to_string(),
        p.n.to_string(),
        p.depth.to_string(),
        p.kib.to_string(),
        crate::path_str(&ready)?.to_string(),
        std::process::id().to_string(),
    ];
    let text = start(&args, &ready, &mut started)?;
    let tasks = parse_tree(&text).context("tree ready file")?;
    started.pids = tasks.iter().map(|t| t.pid).collect();
    let up_s = t0.elapsed().as_secs_f64();
    if tasks.len() != p.n {
        bail!("tree has {} tasks, want {}", tasks.len(), p.n);
    }
    check_tree(&tasks, p.kib, "tree before dump")?;

    let root = tasks[0].pid;
    let pids = started.pids.clone();
    let dump_s = dump(env, &images, root, &pids, &mut started)?;
    let (restore_s, restored) = restore(env, &images)?;
    if restored != root {
        bail!("restored root pid {restored}, dumped {root}");
    }
    check_tree(&tasks, p.kib, "restored tree")?;
    finish(env, &images, started)?;
    Ok(ScaleRun {
        n: p.n,
        up_s,
        dump: dump_s,
        restore: restore_s,
    })
}

/// Tids of `pid` from /proc/PID/task.
fn tids_of(pid: i32) -> Result<BTreeSet<i32>> {
    let path = format!("/proc/{pid}/task");
    let mut tids = BTreeSet::new();
    for e in fs::read_dir(&path).with_context(|| format!("read {path}"))? {
        let e = e.with_context(|| format!("read {path}"))?;
        if let Some(t) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.insert(t);
        }
    }
    Ok(tids)
}

/// Checks that /proc/PID/task holds exactly `want`.
fn check_threads(pid: i32, want: &BTreeSet<i32>, what: &str) -> Result<()> {
    let got = tids_of(pid).with_context(|| what.to_string())?;
    if &got != want {
        let missing: Vec<_> = want.difference(&got).take(5).collect();
        let extra: Vec<_> = got.difference(want).take(5).collect();
        bail!(
            "{what}: pid {pid} has {} threads, want {} (missing e.g. {missing:?}, extra e.g. {extra:?})",
            got.len(),
            want.len()
        );
    }
    Ok(())
}

/// One run of the threads mode.
pub fn run_threads(env: &Env, n: usize, k: usize) -> Result<ScaleRun> {
    let images = fresh_dir(env.dir, &format!("{}-threads-{n}-run-{k}", env.tool.name))?;
    let ready = env.dir.join(format!("ready-threads-{n}-{k}"));
    let mut started = Started::default();

    let t0 = Instant::now();
    let args = [
        "hold-threads".to_string(),
        n.to_string(),
        crate::path_str(&ready)?.to_string(),
        std::process::id().to_string(),
    ];
    let text = start(&args, &ready, &mut started)?;
    let up_s = t0.elapsed().as_secs_f64();
    let ids: Vec<i32> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("threads ready file")?;
    let Some(&pid) = ids.first() else {
        bail!("empty threads ready file");
    };
    started.pids = vec![pid];
    let want: BTreeSet<i32> = ids.iter().copied().collect();
    if want.len() != n + 1 {
        bail!(
            "holder reported {} distinct tasks, want {}",
            want.len(),
            n + 1
        );
    }
    check_threads(pid, &want, "holder before dump")?;

    let dump_s = dump(env, &images, pid, &[pid], &mut started)?;
    let (restore_s, restored) = restore(env, &images)?;
    if restored != pid {
        bail!("restored pid {restored}, dumped {pid}");
    }
    check_threads(pid, &want, "restored holder")?;
    let ppid = ppid_of(pid)?;
    if ppid != std::process::id() as i32 {
        bail!("restored holder {pid} has parent {ppid}, want the bench");
    }
    finish(env, &images, started)?;
    Ok(ScaleRun {
        n,
        up_s,
        dump: dump_s,
        restore: restore_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_ready_file_parses() {
        let t = parse_tree("10 1 0x1000\n11 10 0x2000\n").unwrap();
        assert_eq!(
            t,
            vec![
                Task {
                    pid: 10,
                    ppid: 1,
                    addr: 0x1000
                },
                Task {
                    pid: 11,
                    ppid: 10,
                    addr: 0x2000
                }
            ]
        );
        assert!(parse_tree("").is_err());
        assert!(parse_tree("10 1\n").is_err());
    }

    #[test]
    fn own_ppid_is_read() {
        let me = std::process::id() as i32;
        assert_eq!(
            ppid_of(me).unwrap(),
            std::os::unix::process::parent_id() as i32
        );
    }

    #[test]
    fn task_words_differ_by_pid() {
        assert_ne!(task_word(100, 0), task_word(101, 0));
        assert_eq!(touched(1, 7).len(), 128);
    }
}
