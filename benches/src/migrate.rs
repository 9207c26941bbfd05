//! `migrate`: the downtime of moving a process that holds N MiB and keeps
//! writing a hot working set of H MiB: the time from the final dump's
//! start (the task frozen) to the restored task running, for a plain
//! dump and restore, and for pre-dumps first (the final dump then saves
//! only what changed since the last one). With `--page-server` every round
//! sends its pages to a page server on this machine (the restore reads
//! them from the server's directory). Reports each round's seconds and
//! bytes, the final dump's frozen time (its `stats-dump`) and the
//! downtime; the restored process's cold memory is checked. With `--lazy`
//! the restore of the iterative migration is lazy (`crest lazy-pages`
//! then `restore --lazy-pages`): its time is the time to resume, and the
//! time until the daemon has every page in is reported beside it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::holder::{self, MIB};

/// The hot set is rewritten page by page at this pace (one pass over 64
/// MiB about every 0.3 s).
const PAGES_PER_MS: usize = 50;

/// `crest-bench hold-hot MIB HOT READY BENCH`: fill MIB, say ready, then
/// rewrite the first HOT MiB page by page until the bench is gone. A hot
/// page holds the pattern of `holder::word` xor its pass number.
pub fn hold_hot(mib: usize, hot: usize, ready: &Path, bench: u32) -> Result<()> {
    let mut buf = holder::fill_and_announce(mib, ready)?;
    let words = buf.len();
    let hot_pages = (hot * MIB / 4096).min(words / 512);
    let bench = PathBuf::from(format!("/proc/{bench}"));
    let mut pass = 0u64;
    let mut page = 0usize;
    let mut since_check = Instant::now();
    loop {
        for _ in 0..PAGES_PER_MS {
            let base = page * 512;
            for (k, w) in buf[base..base + 512].iter_mut().enumerate() {
                *w = holder::word(base + k) ^ pass;
            }
            page += 1;
            if page >= hot_pages {
                page = 0;
                pass += 1;
            }
        }
        thread::sleep(Duration::from_millis(1));
        if since_check.elapsed() > Duration::from_secs(1) {
            if !bench.exists() {
                break;
            }
            since_check = Instant::now();
        }
    }
    std::hint::black_box(&buf);
    Ok(())
}

/// What one migration took.
#[derive(Debug, Default, Clone)]
pub struct Migration {
    /// Seconds and bytes of pages of each pre-dump.
    pub pre: Vec<(f64, u64)>,
    pub dump_s: f64,
    pub dump_bytes: u64,
    /// The final dump's frozen time (stats-dump), seconds.
    pub frozen_s: f64,
    pub restore_s: f64,
    /// A lazy restore: from its start until every page was in, seconds.
    pub lazy_s: Option<f64>,
}

impl Migration {
    pub fn downtime(&self) -> f64 {
        self.dump_s + self.restore_s
    }
}

/// A page server in the background for `dir` (after `prev`).
fn page_server(crest: &Path, dir: &Path, prev: Option<&str>, port: u16) -> Result<()> {
    let mut cmd = Command::new(crest);
    cmd.arg("page-server").arg("-D").arg(dir).args([
        "--address",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "-d",
    ]);
    if let Some(p) = prev {
        cmd.args(["--prev-images-dir", p]);
    }
    let st = cmd.status().context("start crest page-server")?;
    if !st.success() {
        bail!("crest page-server -D {} failed: {st}", dir.display());
    }
    Ok(())
}

/// Bytes of the pages files of `dir`.
fn pages_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The frozen time of the dump whose stats-dump is in `dir`, seconds.
fn frozen(dir: &Path) -> f64 {
    crest_images::read_one::<crest_images::pb::StatsEntry>(
        dir,
        crest_images::names::STATS_DUMP,
        crest_images::magic::STATS,
    )
    .ok()
    .and_then(|s| s.dump)
    .map_or(0.0, |d| f64::from(d.frozen_time) / 1e6)
}

fn run_crest(crest: &Path, args: &[&str]) -> Result<f64> {
    let t = Instant::now();
    let st = Command::new(crest)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("run crest {}", args.join(" ")))?;
    if !st.success() {
        bail!("crest {} failed: {st}", args.join(" "));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Round `k` of the migration of `pid` (`action`: pre-dump or dump), into
/// `<base>/r<k>` after `r<k-1>`, its pages there or to a page server for
/// `<base>/dst<k>` after `dst<k-1>`: its seconds and the two directories.
fn round(
    crest: &Path,
    base: &Path,
    (pid, k): (i32, usize),
    action: &str,
    server: Option<u16>,
) -> Result<(f64, PathBuf, PathBuf)> {
    let d = base.join(format!("r{k}"));
    let dst = base.join(format!("dst{k}"));
    let (ds, pid_s) = (d.to_string_lossy().into_owned(), pid.to_string());
    let prev = format!("../r{}", k - 1);
    let mut args = vec![action, "-t", &pid_s, "-D", &ds];
    if k > 1 {
        args.extend(["--prev-images-dir", prev.as_str()]);
    }
    let port = server.map(|p| p + k as u16);
    let port_s = port.map(|p| p.to_string()).unwrap_or_default();
    let dst_prev = format!("../dst{}", k - 1);
    if let Some(p) = port {
        page_server(crest, &dst, (k > 1).then_some(dst_prev.as_str()), p)?;
        args.extend(["--page-server", "--address", "127.0.0.1", "--port", &port_s]);
    }
    Ok((run_crest(crest, &args)?, d, dst))
}

/// One migration of a fresh holder: `rounds` pre-dumps (0: a plain dump
/// and restore), then the dump, then the restore (`lazy`: with a
/// lazy-pages daemon), all in `base`.
pub fn migrate(
    crest: &Path,
    base: &Path,
    (mib, hot): (usize, usize),
    (rounds, lazy): (usize, bool),
    server: Option<u16>,
) -> Result<Migration> {
    let _ = fs::remove_dir_all(base);
    fs::create_dir_all(base)?;
    let ready = base.join("ready");
    let mut child = start_hot(mib, hot, &ready)?;
    let (pid, addr, len) = holder::parse_ready_file(&ready)?;
    let mut m = Migration::default();
    // (the hot set written a while before the first round)
    thread::sleep(Duration::from_millis(300));
    for k in 1..=rounds {
        let (s, d, dst) = round(crest, base, (pid, k), "pre-dump", server)?;
        let bytes = pages_bytes(if server.is_some() { &dst } else { &d });
        m.pre.push((s, bytes));
        thread::sleep(Duration::from_millis(300));
    }
    let (s, d, dst) = round(crest, base, (pid, rounds + 1), "dump", server)?;
    m.dump_s = s;
    let _ = child.wait();
    m.frozen_s = frozen(&d);
    let restore_dir = if server.is_some() {
        // the rest of the images go over to the server's directory
        for e in fs::read_dir(&d)?.flatten() {
            if e.file_type()?.is_file() {
                fs::copy(e.path(), dst.join(e.file_name()))?;
            }
        }
        m.dump_bytes = pages_bytes(&dst);
        dst
    } else {
        m.dump_bytes = pages_bytes(&d);
        d
    };
    let rs = restore_dir.to_string_lossy().into_owned();
    if lazy {
        let pidfile = base.join("lazy.pid");
        let pf = pidfile.to_string_lossy().into_owned();
        run_crest(crest, &["lazy-pages", "-D", &rs, "-d", "--pidfile", &pf])?;
        let daemon: i32 = fs::read_to_string(&pidfile)?.trim().parse()?;
        let t = Instant::now();
        m.restore_s = run_crest(crest, &["restore", "-D", &rs, "-d", "--lazy-pages"])?;
        // (the daemon exits once every page is in; init reaps it)
        let stat = format!("/proc/{daemon}/stat");
        while fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
            if t.elapsed() > Duration::from_secs(120) {
                bail!("the lazy-pages daemon {daemon} still runs after 120 s");
            }
            thread::sleep(Duration::from_millis(2));
        }
        m.lazy_s = Some(t.elapsed().as_secs_f64());
    } else {
        m.restore_s = run_crest(crest, &["restore", "-D", &rs, "-d"])?;
    }
    // the cold part (past the hot set) is as it was, every word
    let cold = hot.min(mib) * MIB;
    let check = holder::verify_from(pid, addr, (cold, len), 16 * MIB);
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).context("pid")?,
        rustix::process::Signal::KILL,
    );
    check?;
    Ok(m)
}

fn start_hot(mib: usize, hot: usize, ready: &Path) -> Result<Child> {
    let exe = std::env::current_exe().context("current_exe")?;
    let _ = fs::remove_file(ready);
    let child = Command::new(&exe)
        .arg("hold-hot")
        .arg(mib.to_string())
        .arg(hot.to_string())
        .arg(ready)
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn the hot holder")?;
    let start = Instant::now();
    while !ready.exists() {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the hot holder is not ready after 120 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}
