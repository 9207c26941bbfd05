//! `crest-bench`: dump and restore cost of the real `crest` binary.
//!
//! Four modes:
//!
//! - `mem` (also the default with no subcommand): each run starts a holder
//!   process owning N MiB of present, patterned memory, measures how fast
//!   `process_vm_readv` can copy it out (the ceiling a dump could reach),
//!   times `crest dump` and `crest restore -d`, and checks the restored
//!   memory against the pattern.
//! - `tree`: a tree of N processes (the root plus chains of `--depth`
//!   descendants), each owning `--kib` KiB; checks pids, parents and memory
//!   after restore.
//! - `threads`: one process with N sleeping threads; checks the tids after
//!   restore.
//! - `migrate`: a process holding N MiB that keeps rewriting H MiB, moved
//!   by a plain dump and restore and by pre-dumps then the dump (optionally
//!   through page servers, the latter restored lazily with `--lazy`);
//!   prints each round and the downtime (see `migrate.rs`). It does not compare with CRIU (which has no dirty
//!   tracking here).
//!
//! ```text
//! cargo build --release
//! cargo run --release -p crest-bench -- [--mib N] [--dir DIR] [--runs R] [--keep] [--verify]
//! cargo run --release -p crest-bench -- tree --n 50,1000 [--depth 2] [--kib 64] [--runs R]
//! cargo run --release -p crest-bench -- threads --n 100,1000 [--runs R]
//! cargo run --release -p crest-bench -- migrate [--mib 1024] [--hot 64] [--rounds 2] [--page-server] [--lazy]
//! ```
//!
//! Every run reports crest's peak resident set (`wait4`'s `ru_maxrss`), and
//! the scale modes tasks (or threads) per second. With `CRIU_BIN` naming a
//! CRIU binary, each run times crest and then CRIU on the same workload
//! made again, and the summaries end with crest's medians over CRIU's.
//!
//! Prefer `--dir /dev/shm/crest-bench` (tmpfs): on a disk-backed directory
//! the numbers measure the page cache and the disk as much as crest.

mod holder;
mod migrate;
mod report;
mod scale;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::holder::MIB;
use crate::report::Run;

/// Size of one `process_vm_readv` call when measuring the ceiling.
const CHUNK: usize = 64 * MIB;
/// How long a killed task may take to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    name = "crest-bench",
    about = "Dump and restore cost of crest",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// With no subcommand: the options of `mem`
    #[command(flatten)]
    mem: Opts,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// One process holding N MiB (the default mode)
    Mem(Opts),
    /// A tree of N processes
    Tree(TreeOpts),
    /// One process with N threads
    Threads(ThreadsOpts),
    /// The downtime of migrating a process with a hot working set
    Migrate(MigrateOpts),
}

#[derive(Args, Debug)]
struct MigrateOpts {
    /// MiB the process holds
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// MiB of it the process keeps writing
    #[arg(long, default_value_t = 64)]
    hot: usize,
    /// Pre-dumps before the dump
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Send the pages to a page server on this machine (ports from 27100)
    #[arg(long)]
    page_server: bool,
    /// Restore the iterative migration lazily (`crest lazy-pages`)
    #[arg(long)]
    lazy: bool,
    /// Directory for the images
    #[arg(long, default_value = "/tmp/crest-bench")]
    dir: PathBuf,
    /// Number of runs
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[derive(Args, Debug)]
struct Opts {
    /// MiB of memory the holder process owns
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// Directory for the images; a tmpfs such as /dev/shm/crest-bench
    /// measures crest rather than the disk
    #[arg(long, default_value = "/tmp/crest-bench")]
    dir: PathBuf,
    /// Number of runs
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Keep each run's images directory
    #[arg(long)]
    keep: bool,
    /// After restore, check every word of the memory, not only a sample
    #[arg(long)]
    verify: bool,
}

/// Options shared by the scale modes.
#[derive(Args, Debug)]
struct ScaleOpts {
    /// Directory for the images; a tmpfs such as /dev/shm/crest-bench
    /// measures crest rather than the disk
    #[arg(long, default_value = "/tmp/crest-bench")]
    dir: PathBuf,
    /// Number of runs per N
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Keep each run's images directory
    #[arg(long)]
    keep: bool,
    /// crest's log level (-v) for dump.log and restore.log
    #[arg(long, default_value_t = 4)]
    verbosity: u32,
}

#[derive(Args, Debug)]
struct TreeOpts {
    /// Tasks in the tree, root included; several sizes comma-separated
    #[arg(long, value_delimiter = ',', default_value = "50")]
    n: Vec<usize>,
    /// Length of each chain under the root: 1 is a flat tree, 2 gives the
    /// root's children one child each
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// KiB of memory each task allocates and touches
    #[arg(long, default_value_t = 64)]
    kib: usize,
    #[command(flatten)]
    common: ScaleOpts,
}

#[derive(Args, Debug)]
struct ThreadsOpts {
    /// Threads besides the main one; several sizes comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    n: Vec<usize>,
    #[command(flatten)]
    common: ScaleOpts,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // Internal modes: the holders, re-executions of this binary.
    let result = match args.get(1).map(String::as_str) {
        Some("hold") => hold_main(&args[2..]),
        Some("hold-tree") => hold_tree_main(&args[2..]),
        Some("hold-node") => hold_node_main(&args[2..]),
        Some("hold-threads") => hold_threads_main(&args[2..]),
        Some("hold-hot") => hold_hot_main(&args[2..]),
        _ => {
            let cli = Cli::parse();
            match &cli.mode {
                None => bench(&cli.mem),
                Some(Mode::Mem(opts)) => bench(opts),
                Some(Mode::Tree(opts)) => bench_tree(opts),
                Some(Mode::Threads(opts)) => bench_threads(opts),
                Some(Mode::Migrate(opts)) => bench_migrate(opts),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crest-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn hold_tree_main(args: &[String]) -> Result<()> {
    let [n, depth, kib, ready, bench] = args else {
        bail!("usage: crest-bench hold-tree N DEPTH KIB READY BENCH_PID");
    };
    scale::hold_tree(
        n.parse().context("N")?,
        depth.parse().context("DEPTH")?,
        kib.parse().context("KIB")?,
        Path::new(ready),
        bench.parse().context("BENCH_PID")?,
    )
}

fn hold_node_main(args: &[String]) -> Result<()> {
    let [len, kib, bench] = args else {
        bail!("usage: crest-bench hold-node LEN KIB BENCH_PID");
    };
    scale::hold_node(
        len.parse().context("LEN")?,
        kib.parse().context("KIB")?,
        bench.parse().context("BENCH_PID")?,
    )
}

fn hold_hot_main(args: &[String]) -> Result<()> {
    let [mib, hot, ready, bench] = args else {
        bail!("usage: crest-bench hold-hot MIB HOT READY BENCH_PID");
    };
    migrate::hold_hot(
        mib.parse().context("MIB")?,
        hot.parse().context("HOT")?,
        Path::new(ready),
        bench.parse().context("BENCH_PID")?,
    )
}

/// `migrate`: plain dump and restore against pre-dumps then the dump,
/// alternating, the downtime of each.
fn bench_migrate(o: &MigrateOpts) -> Result<()> {
    let crest = crest_bin()?;
    let server = o.page_server.then_some(27100u16);
    println!(
        "crest {}; migrate: {} MiB, {} MiB hot; {} pre-dumps{}{}; images in {}; {} runs",
        crest.display(),
        o.mib,
        o.hot,
        o.rounds,
        if o.page_server {
            ", through page servers on 127.0.0.1"
        } else {
            ""
        },
        if o.lazy { ", restored lazily" } else { "" },
        o.dir.display(),
        o.runs
    );
    let (mut plain, mut iter) = (Vec::new(), Vec::new());
    for run in 1..=o.runs {
        let p = migrate::migrate(
            &crest,
            &o.dir.join("plain"),
            (o.mib, o.hot),
            (0, false),
            server,
        )?;
        let i = migrate::migrate(
            &crest,
            &o.dir.join("iter"),
            (o.mib, o.hot),
            (o.rounds, o.lazy),
            server,
        )?;
        let pre: Vec<String> = i
            .pre
            .iter()
            .map(|(s, b)| format!("{s:.3} s/{:.1} MiB", *b as f64 / MIB as f64))
            .collect();
        println!(
            "run {run}: plain: dump {:.3} s ({:.1} MiB, frozen {:.3} s) + restore {:.3} s = downtime {:.3} s | \
             iterative: pre-dumps [{}], dump {:.3} s ({:.1} MiB, frozen {:.3} s) + restore {:.3} s = downtime {:.3} s",
            p.dump_s,
            p.dump_bytes as f64 / MIB as f64,
            p.frozen_s,
            p.restore_s,
            p.downtime(),
            pre.join(", "),
            i.dump_s,
            i.dump_bytes as f64 / MIB as f64,
            i.frozen_s,
            i.restore_s,
            i.downtime()
        );
        if let Some(l) = i.lazy_s {
            println!(
                "  (iterative restore lazy: resumed after {:.3} s, every page in after {l:.3} s)",
                i.restore_s
            );
        }
        plain.push(p);
        iter.push(i);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (pd, id) = (
        median(plain.iter().map(migrate::Migration::downtime).collect()),
        median(iter.iter().map(migrate::Migration::downtime).collect()),
    );
    let (pf, ifr) = (
        median(plain.iter().map(|m| m.frozen_s).collect()),
        median(iter.iter().map(|m| m.frozen_s).collect()),
    );
    println!(
        "medians: downtime plain {pd:.3} s, iterative {id:.3} s ({:.1}x shorter); final dump frozen {pf:.3} s against {ifr:.3} s",
        pd / id.max(1e-9)
    );
    let _ = std::fs::remove_dir_all(&o.dir);
    Ok(())
}

fn hold_threads_main(args: &[String]) -> Result<()> {
    let [n, ready, bench] = args else {
        bail!("usage: crest-bench hold-threads N READY BENCH_PID");
    };
    scale::hold_threads(
        n.parse().context("N")?,
        Path::new(ready),
        bench.parse().context("BENCH_PID")?,
    )
}

/// Common setup of the scale modes: the crest binary, subreaper, the images
/// directory and a header line.
fn scale_setup(mode: &str, sizes: &[usize], c: &ScaleOpts) -> Result<(PathBuf, String)> {
    if c.runs == 0 || sizes.is_empty() || sizes.contains(&0) {
        bail!("--runs and every --n must be at least 1");
    }
    setup(&c.dir, |crest, fs_type| {
        format!(
            "crest {}; {mode}; images in {} ({fs_type}); N = {sizes:?}; {} runs each; crest -v {}",
            crest.display(),
            c.dir.display(),
            c.runs,
            c.verbosity
        )
    })
}

/// What every mode starts with: the crest binary found, the bench made a
/// child subreaper (restored tasks are children of `crest restore`, which
/// exits: the bench inherits and reaps them, and the orphans of a killed
/// tree), the images directory `dir` made; prints `header` (of crest's path
/// and the directory's file system) and a note when that is not tmpfs.
fn setup(dir: &Path, header: impl FnOnce(&Path, &str) -> String) -> Result<(PathBuf, String)> {
    let crest = crest_bin()?;
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let fs_type = report::fs_type(dir);
    println!("{}", header(&crest, &fs_type));
    if fs_type != "tmpfs" {
        println!("note: {fs_type} is not tmpfs; --dir /dev/shm/crest-bench measures crest alone");
    }
    Ok((crest, fs_type))
}

fn bench_tree(opts: &TreeOpts) -> Result<()> {
    if opts.depth == 0 {
        bail!("--depth must be at least 1");
    }
    let mode = format!(
        "tree: root + chains of {} under it, {} KiB per task",
        opts.depth, opts.kib
    );
    scale_mode(&opts.common, &opts.n, &mode, "task", |env, n, k| {
        let p = scale::TreeParams {
            n,
            depth: opts.depth,
            kib: opts.kib,
        };
        scale::run_tree(env, &p, k)
    })
}

fn bench_threads(opts: &ThreadsOpts) -> Result<()> {
    let mode = "threads: one process, N sleeping threads besides main";
    scale_mode(&opts.common, &opts.n, mode, "thread", |env, n, k| {
        scale::run_threads(env, n, k)
    })
}

/// A scale mode: for each N of `sizes`, `c.runs` runs of `run` (given the
/// environment, N and the run's number), each printed, then the summary
/// of each N; `unit` is what N counts ("task", "thread").
fn scale_mode(
    c: &ScaleOpts,
    sizes: &[usize],
    mode: &str,
    unit: &str,
    mut run: impl FnMut(&scale::Env<'_>, usize, usize) -> Result<report::ScaleRun>,
) -> Result<()> {
    let (crest, fs_type) = scale_setup(mode, sizes, c)?;
    let tools = tools(crest);
    // (per tool: per N, its runs)
    let mut all: Vec<Vec<(usize, Vec<report::ScaleRun>)>> =
        tools.iter().map(|_| Vec::new()).collect();
    for &n in sizes {
        for done in all.iter_mut() {
            done.push((n, Vec::with_capacity(c.runs)));
        }
        for k in 1..=c.runs {
            for (tool, done) in tools.iter().zip(all.iter_mut()) {
                let env = scale::Env {
                    tool,
                    dir: &c.dir,
                    verbosity: c.verbosity,
                    keep: c.keep,
                };
                let r = run(&env, n, k)
                    .with_context(|| format!("{} {unit}s n={n} run {k}", tool.name))?;
                report::print_scale_run(tool.name, k, unit, &r);
                if let Some(last) = done.last_mut() {
                    last.1.push(r);
                }
            }
        }
    }
    for (tool, done) in tools.iter().zip(&all) {
        let title = format!(
            "{}: {mode}; images on {fs_type}; seconds, ms and {unit}s per second, peak RSS",
            tool.name
        );
        report::print_scale_summary(&title, unit, done);
    }
    if let [crest, criu] = &all[..] {
        report::print_scale_ratio(unit, crest, criu);
    }
    Ok(())
}

fn hold_main(args: &[String]) -> Result<()> {
    let [mib, ready, bench] = args else {
        bail!("usage: crest-bench hold MIB READY BENCH_PID");
    };
    let mib: usize = mib.parse().context("MIB")?;
    let bench: u32 = bench.parse().context("BENCH_PID")?;
    holder::hold(mib, Path::new(ready), bench)
}

fn bench(opts: &Opts) -> Result<()> {
    if opts.mib == 0 || opts.runs == 0 {
        bail!("--mib and --runs must be at least 1");
    }
    let (crest, fs_type) = setup(&opts.dir, |crest, fs_type| {
        format!(
            "crest {}; images in {} ({fs_type}); {} MiB; {} runs",
            crest.display(),
            opts.dir.display(),
            opts.mib,
            opts.runs
        )
    })?;

    let tools = tools(crest);
    let mut runs: Vec<Vec<Run>> = tools.iter().map(|_| Vec::new()).collect();
    for k in 1..=opts.runs {
        for (tool, done) in tools.iter().zip(runs.iter_mut()) {
            let run = run_one(opts, tool, k).with_context(|| format!("{} run {k}", tool.name))?;
            report::print_run(tool.name, k, opts.mib * MIB, &run);
            done.push(run);
        }
    }
    for (tool, done) in tools.iter().zip(&runs) {
        report::print_summary(tool.name, (&fs_type, &opts.dir), opts.mib, done);
    }
    if let [crest, criu] = &runs[..] {
        report::print_ratio(crest, criu);
    }
    Ok(())
}

/// A binary the bench times: crest, and CRIU where `CRIU_BIN` names one.
pub struct Tool {
    pub name: &'static str,
    pub bin: PathBuf,
}

/// crest, then CRIU if `CRIU_BIN` names a binary: every run times each, in
/// turn (alternating rounds, on a machine in the same state).
fn tools(crest: PathBuf) -> Vec<Tool> {
    let mut v = vec![Tool {
        name: "crest",
        bin: crest,
    }];
    if let Some(criu) = std::env::var_os("CRIU_BIN").filter(|p| !p.is_empty()) {
        v.push(Tool {
            name: "criu",
            bin: PathBuf::from(criu),
        });
    }
    v
}

/// `$CREST_BIN`, else `crest` beside this executable.
fn crest_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("CREST_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().context("current_exe")?;
            exe.with_file_name("crest")
        }
    };
    if !path.is_file() {
        bail!(
            "no crest binary at {} (run `cargo build --release` or set CREST_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// Every task a run started; whatever is still here when it drops is
/// killed, reaped (the bench is the subreaper) and waited for.
#[derive(Default)]
pub(crate) struct Started {
    pub(crate) child: Option<Child>,
    pub(crate) pids: Vec<i32>,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let pids = std::mem::take(&mut self.pids);
        kill_all(&pids);
        let _ = wait_all_gone(&pids);
    }
}

pub(crate) fn kill_all(pids: &[i32]) {
    for &pid in pids {
        let _ = crest_sys::misc::kill(pid, libc::SIGKILL);
    }
}

/// Reaps whatever is ours until none of `pids` is in /proc any more.
pub(crate) fn wait_all_gone(pids: &[i32]) -> Result<()> {
    let mut left: Vec<i32> = pids.to_vec();
    let start = Instant::now();
    loop {
        reap_strays();
        left.retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() > GONE_TIMEOUT {
            bail!(
                "{} tasks still exist after {GONE_TIMEOUT:?}, e.g. pid {}",
                left.len(),
                left[0]
            );
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn run_one(opts: &Opts, tool: &Tool, k: usize) -> Result<Run> {
    let crest = tool.bin.as_path();
    let images = opts.dir.join(format!("{}-run-{k}", tool.name));
    if images.exists() {
        fs::remove_dir_all(&images).with_context(|| format!("remove {}", images.display()))?;
    }
    fs::create_dir_all(&images).with_context(|| format!("create {}", images.display()))?;
    let mut started = Started::default();

    let h = holder::start(opts.mib, opts.dir.join(format!("ready-{k}")))?;
    let (pid, addr, len) = (h.pid, h.addr, h.len);
    started.child = Some(h.child);
    holder::verify_sample(pid, addr, len).context("holder before dump")?;
    let ceiling_gbs = ceiling(pid, addr, len)?;

    let pid_s = pid.to_string();
    let dump = time_crest(
        crest,
        &opts.dir,
        &format!("{}-run-{k}.dump", tool.name),
        &[
            "dump",
            "-t",
            &pid_s,
            "-D",
            path_str(&images)?,
            "-o",
            "dump.log",
        ],
    )?;
    // crest dump kills the tree; reap our child and wait for /proc to agree.
    if let Some(child) = started.child.as_mut() {
        wait_child(child, GONE_TIMEOUT).context("holder after dump")?;
    }
    started.child = None;
    wait_all_gone(&[pid])?;

    let pidfile = images.join("restore.pid");
    let restore = time_crest(
        crest,
        &opts.dir,
        &format!("{}-run-{k}.restore", tool.name),
        &[
            "restore",
            "-D",
            path_str(&images)?,
            "-d",
            "-v4",
            "-o",
            "restore.log",
            "--pidfile",
            path_str(&pidfile)?,
        ],
    )?;
    let restored: i32 = fs::read_to_string(&pidfile)
        .with_context(|| format!("read {}", pidfile.display()))?
        .trim()
        .parse()
        .context("pid in the pidfile")?;
    started.pids = vec![restored];
    if restored != pid {
        bail!("restored pid {restored}, dumped pid {pid}");
    }
    check_alive(restored)?;
    holder::verify_sample(restored, addr, len).context("restored holder")?;
    if opts.verify {
        holder::verify_full(restored, addr, len, CHUNK).context("restored holder")?;
    }

    crest_sys::misc::kill(restored, libc::SIGKILL).context("kill restored holder")?;
    match waitpid(Pid::from_raw(restored), None) {
        Ok(_) => {}
        Err(Errno::ECHILD) => wait_all_gone(&[restored])?,
        Err(e) => return Err(e).context("waitpid restored holder"),
    }
    started.pids.clear();
    drop(started);

    if !opts.keep {
        fs::remove_dir_all(&images).with_context(|| format!("remove {}", images.display()))?;
    }
    Ok(Run {
        dump,
        restore,
        ceiling_gbs,
    })
}

/// Best of 3 reads of the holder's whole buffer with `process_vm_readv`, in
/// `CHUNK` pieces into one prefaulted local buffer; GB/s.
fn ceiling(pid: i32, addr: u64, len: usize) -> Result<f64> {
    // Filled with ones, not zeros, so every page is present before timing.
    let mut local = vec![1u8; CHUNK.min(len)];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        let mut off = 0usize;
        while off < len {
            let n = CHUNK.min(len - off);
            let got = crest_sys::mem::read_remote(pid, &[(addr + off as u64, n)], &mut local[..n])
                .with_context(|| format!("process_vm_readv pid {pid}"))?;
            if got != n {
                bail!("pid {pid}: short read at offset {off:#x}: {got} of {n} bytes");
            }
            off += n;
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(report::gbs(len, best))
}

/// What one run of crest (or CRIU) took: wall-clock seconds and its peak
/// resident set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timed {
    pub secs: f64,
    pub peak_kib: u64,
}

/// Runs `bin` (crest, or CRIU) with `args`, its stdout and stderr into
/// `<dir>/<name>.out`; returns the wall-clock seconds it took and its peak
/// resident set (`wait4`'s `ru_maxrss`). Fails unless it exits 0.
fn time_crest(bin: &Path, dir: &Path, name: &str, args: &[&str]) -> Result<Timed> {
    let out_path = dir.join(format!("{name}.out"));
    let out = File::create(&out_path).with_context(|| format!("create {}", out_path.display()))?;
    let err = out.try_clone().context("dup output file")?;
    let start = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("run {}", bin.display()))?;
    let (status, peak_kib) =
        crest_sys::proc::wait_rusage(child.id() as i32).context("wait4 for it")?;
    let secs = start.elapsed().as_secs_f64();
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!(
            "{} {} failed (wait status {status:#x}); its log stays in the images dir\n{}",
            bin.display(),
            args.join(" "),
            output.trim_end()
        );
    }
    Ok(Timed { secs, peak_kib })
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

/// Waits for `child` to exit, up to `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while child.try_wait().context("wait")?.is_none() {
        if start.elapsed() > timeout {
            bail!("pid {} still running after {timeout:?}", child.id());
        }
        thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Fails unless `pid` is a live child of ours (reparented to the bench).
fn check_alive(pid: i32) -> Result<()> {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => Ok(()),
        Ok(status) => bail!("restored holder {pid} is not running: {status:?}"),
        Err(Errno::ECHILD) => {
            // Not reparented to us (yet); still fine if it runs.
            if Path::new(&format!("/proc/{pid}")).exists() {
                Ok(())
            } else {
                bail!("restored holder {pid} is gone")
            }
        }
        Err(e) => Err(e).context("waitpid restored holder"),
    }
}

/// Reaps any exited orphan that was reparented to us, the subreaper.
fn reap_strays() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
