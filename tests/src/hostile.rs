//! `hostile_images[host]`: crest must refuse truncated, corrupt and hostile
//! images cleanly.
//!
//! The case dumps `workloads/hostile_tree.c` (a root, a child with two
//! extra threads, a grandchild, a pipe with bytes in flight), reaps it,
//! restores the untouched images once (the baseline: the tree must pass its
//! own check), and then, for every `*.img` of the dump and every mutation
//! of [`mutations`], copies the images to a fresh directory, mutates the
//! file and runs `crest restore -D DIR -d`, `crest show DIR` and
//! `crest show --ns DIR`, each under a soft `RLIMIT_AS` of [`AS_LIMIT`] (an
//! unbounded allocation fails fast) and killed after [`RUN_TIMEOUT`].
//!
//! Every run must end in time, not by a signal (an abort on a failed
//! allocation is one) and not with exit code 101 (a Rust panic). A failing
//! command's stderr must name the mutated file. A failed restore must leave
//! no dumped pid (after 2 s) and no crest process behind. A restore that
//! succeeds is a failure if the mutation can never be harmless (a
//! truncation, a bad length or magic in a framed image); otherwise (flipped
//! bytes, appended garbage, anything done to page data) it is counted, and
//! the tree is told to check itself and then killed and reaped, whatever
//! its verdict. Every failure is listed in the report and in
//! `failures.txt` of the kept case directory.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, Mode, Program, Settle, Workload};
use crate::procs::{self, exists, wait_exit, wait_until, Exit, Procs, Waited};
use crate::suite::Report;
use crate::{Config, Flavor, Outcome, StdioKind};

/// How long one crest command on mutated images may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// The soft address-space limit crest runs under (`prlimit --as=N:`):
/// 1 GiB, far more than restoring this small tree needs, so that believing
/// a length field of 0x7fffffff or 0xffffffff and allocating for it fails
/// (an abort, i.e. a signal). Only the soft limit: crest restores the
/// tasks' own (unlimited) limits, which it could not raise past a hard one.
pub const AS_LIMIT: u64 = 1 << 30;
/// How long a failed restore may take to get rid of its tasks.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(2);
/// `IMG_COMMON_MAGIC` and `IMG_SERVICE_MAGIC`: a file that starts with one
/// of them has its own magic at offset 4 and its first entry's length at
/// offset 8; other files (`inventory.img`) have their magic at 0.
const HEAD_MAGICS: [u32; 2] = [0x5456_4319, 0x5510_5940];

/// The workload this case dumps.
fn workload() -> Workload {
    Workload {
        name: "hostile_tree",
        program: Program::C("hostile_tree"),
        args: Vec::new(),
        settle: Settle::Blocked,
    }
}

/// Runs the case if `selected` picks it.
pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    let n = case::case_name("hostile_images", Flavor::Host, None);
    if !selected(&n) {
        return;
    }
    let outcome = if !cfg.root {
        Outcome::Skip("needs root".into())
    } else if !cfg.checkpoint {
        // validate the workload without crest
        let dir = match CaseDir::create(cfg, &n) {
            Ok(d) => d,
            Err(e) => return report.record(&n, Outcome::fail(format!("{e:#}"))),
        };
        let (outcome, _) =
            case::run_in(cfg, &workload(), &dir, StdioKind::DevNull, Mode::SelfCheck);
        if outcome.is_pass() {
            dir.remove();
        }
        outcome
    } else {
        case::run_in_dir(cfg, &n, |dir, procs| steps(cfg, dir, procs))
    };
    report.record(&n, outcome);
}

/// What is done to one image file.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Truncate to this many bytes.
    Truncate(u64),
    /// XOR the byte at each offset with 0xff (offsets past the end are
    /// ignored).
    Flip(Vec<u64>),
    /// Write these 4 bytes (little endian) at the offset, growing the file
    /// if needed.
    Put(u64, u32),
    /// Write these bytes at the offset.
    PutBytes(u64, Vec<u8>),
    /// Append this many pseudo-random bytes.
    Append(usize),
}

/// A named mutation of one file.
#[derive(Debug, Clone)]
pub struct Mutant {
    /// Short description for the report, e.g. `truncate to 17`.
    pub name: String,
    /// What to do.
    pub what: Mutation,
    /// Whether no restore can legitimately succeed with it (a truncated
    /// file, a bad length or magic); else it may be harmless (flipped
    /// bytes, garbage after the last entry, anything done to page data).
    pub must_refuse: bool,
}

/// xorshift64*: a small deterministic PRNG.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (never 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A seed from a file name with its digits (pids) left out, so the same
/// kind of file gets the same offsets in every run.
fn seed_of(name: &str) -> u64 {
    name.bytes()
        .filter(|b| !b.is_ascii_digit())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Where a file's own magic sits and where its first length field is:
/// (magic offset, length offset), or None for a file of raw data without
/// magic (`pages-*.img`).
fn layout(name: &str, head: &[u8]) -> Option<(u64, u64)> {
    if name.starts_with("pages-") {
        return None;
    }
    match head.get(..4) {
        Some(b) if HEAD_MAGICS.contains(&u32::from_le_bytes([b[0], b[1], b[2], b[3]])) => {
            Some((4, 8))
        }
        _ => Some((0, 4)),
    }
}

/// The mutations of one file of `len` bytes named `name`, whose first
/// bytes are `head`; `other_magic` is the magic of a different kind of
/// image.
pub fn mutations(name: &str, len: u64, head: &[u8], other_magic: u32) -> Vec<Mutant> {
    let m = |name: String, what: Mutation, must_refuse: bool| Mutant {
        name,
        what,
        must_refuse,
    };
    let framed = layout(name, head);
    let mut rng = Rng::new(seed_of(name));
    let mut out = Vec::new();
    if len > 0 {
        out.push(m("truncate to 0".into(), Mutation::Truncate(0), true));
    }
    if len > 1 {
        out.push(m(
            format!("truncate to {}", len / 2),
            Mutation::Truncate(len / 2),
            true,
        ));
    }
    if len > 0 {
        out.push(m(
            format!("truncate to {} (1 byte short)", len - 1),
            Mutation::Truncate(len - 1),
            true,
        ));
        // one byte in the header and first entry, one anywhere, then eight
        let early = rng.below(len.min(32));
        let any = rng.below(len);
        let many: Vec<u64> = (0..8).map(|_| rng.below(len)).collect();
        out.push(m(
            format!("flip byte {early}"),
            Mutation::Flip(vec![early]),
            false,
        ));
        out.push(m(
            format!("flip byte {any}"),
            Mutation::Flip(vec![any]),
            false,
        ));
        out.push(m(
            format!("flip bytes {many:?}"),
            Mutation::Flip(many),
            false,
        ));
    }
    let (magic_at, len_at) = framed.unwrap_or((0, 8));
    for v in [0xffff_ffff, 0x7fff_ffff] {
        out.push(m(
            format!("{v:#x} at offset {len_at}"),
            Mutation::Put(len_at, v),
            framed.is_some(),
        ));
    }
    if framed.is_some() {
        out.push(m(
            format!("magic at offset {magic_at} swapped for {other_magic:#010x}"),
            Mutation::Put(magic_at, other_magic),
            true,
        ));
    } else {
        // no magic of its own: put another image's head on it
        let mut bytes = HEAD_MAGICS[0].to_le_bytes().to_vec();
        bytes.extend_from_slice(&other_magic.to_le_bytes());
        out.push(m(
            format!("an image head (magic {other_magic:#010x}) written at offset 0"),
            Mutation::PutBytes(0, bytes),
            false,
        ));
    }
    out.push(m(
        "1 MiB of garbage appended".into(),
        Mutation::Append(1 << 20),
        false,
    ));
    out
}

/// Applies `what` to `path`.
pub fn apply(path: &Path, what: &Mutation, seed: u64) -> Result<()> {
    let mut data = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    match what {
        Mutation::Truncate(n) => data.truncate(*n as usize),
        Mutation::Flip(offsets) => {
            for &o in offsets {
                if let Some(b) = data.get_mut(o as usize) {
                    *b ^= 0xff;
                }
            }
        }
        Mutation::Put(at, v) => put(&mut data, *at as usize, &v.to_le_bytes()),
        Mutation::PutBytes(at, bytes) => put(&mut data, *at as usize, bytes),
        Mutation::Append(n) => {
            let mut rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
            data.extend((0..*n).map(|_| (rng.next_u64() >> 56) as u8));
        }
    }
    fs::write(path, &data).with_context(|| format!("write {}", path.display()))
}

fn put(data: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if data.len() < at + bytes.len() {
        data.resize(at + bytes.len(), 0);
    }
    data[at..at + bytes.len()].copy_from_slice(bytes);
}

/// How a crest run ended.
#[derive(Debug)]
enum End {
    Exit(Exit),
    Hung,
}

/// A finished crest run.
#[derive(Debug)]
struct Run {
    end: End,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn status(&self) -> String {
        match &self.end {
            End::Exit(e) => e.to_string(),
            End::Hung => format!("still running after {RUN_TIMEOUT:?}, killed"),
        }
    }
}

/// Runs `prlimit --as=AS_LIMIT -- crest ARGS` in `cwd`, stderr to
/// `<cwd>/crest.stderr`, killed after [`RUN_TIMEOUT`].
fn run_crest(cfg: &Config, cwd: &Path, args: &[&str]) -> Result<Run> {
    let err_path = cwd.join("crest.stderr");
    let err = File::create(&err_path).with_context(|| format!("create {}", err_path.display()))?;
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={AS_LIMIT}:"))
        .arg("--")
        .arg(&cfg.crest)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    let start = Instant::now();
    let child = cmd.spawn().context("spawn prlimit crest")?;
    let pid = Pid::from_raw(child.id() as i32);
    let end = match wait_exit(pid, RUN_TIMEOUT)? {
        Waited::Exited(e) => End::Exit(e),
        Waited::TimedOut => {
            // crest and whatever it forked
            let tree = procs::tree_snapshot(pid).unwrap_or_default();
            for p in tree.keys().rev() {
                let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
            }
            let _ = kill(pid, Signal::SIGKILL);
            let _ = wait_exit(pid, Duration::from_secs(5));
            End::Hung
        }
        Waited::NotChild => bail!("lost track of crest (pid {pid})"),
    };
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default()).into_owned();
    Ok(Run {
        end,
        stderr,
        elapsed,
    })
}

/// The stderr of a run for the report: trimmed, at most 1500 characters.
fn quote(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        return "(no stderr)".into();
    }
    let mut cut: String = s.chars().take(1500).collect();
    if cut.len() < s.len() {
        cut.push_str(" [...]");
    }
    format!("{cut:?}")
}

/// The common checks of one run: no panic, no signal, no hang, and a
/// failure names `file`. Returns the problem, if any.
fn judge_run(run: &Run, file: &str) -> Option<String> {
    match run.end {
        End::Hung => Some("hangs".into()),
        End::Exit(Exit::Signal(_)) => Some("killed by a signal".into()),
        End::Exit(Exit::Code(101)) => Some("panicked".into()),
        End::Exit(Exit::Code(0)) => None,
        End::Exit(Exit::Code(_)) if !run.stderr.contains(file) => {
            Some(format!("failed, but its stderr does not name {file}"))
        }
        End::Exit(_) => None,
    }
}

/// Counts over all runs.
#[derive(Debug, Default)]
struct Tally {
    runs: usize,
    restored: usize,
    restored_pass: usize,
    restored_notes: Vec<String>,
    failures: Vec<String>,
    slowest: Duration,
}

/// The tasks of the dumped tree (pids), the root first.
struct Dumped {
    root: Pid,
    pids: Vec<Pid>,
}

impl Dumped {
    fn existing(&self) -> Vec<Pid> {
        self.pids.iter().copied().filter(|p| exists(*p)).collect()
    }

    fn describe(&self, pids: &[Pid]) -> String {
        pids.iter()
            .map(|p| {
                format!(
                    "pid {p} ({}, state {:?}, ppid {:?})",
                    procs::proc_comm(*p).unwrap_or_default(),
                    procs::proc_state(*p),
                    procs::proc_ppid(*p)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// SIGKILLs whatever of the tree exists (restored tasks are ours: the
    /// pids were free before the restore) and reaps it.
    fn kill_all(&self) {
        for p in self.existing() {
            let _ = kill(p, Signal::SIGKILL);
        }
        for p in &self.pids {
            procs::reap_or_wait_gone(*p);
        }
        procs::reap_zombie_children();
    }
}

fn steps(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    case::check_crest(cfg)?;
    if Command::new("prlimit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        return Ok(Outcome::Skip("prlimit (util-linux) not found".into()));
    }
    let w = workload();
    let root = case::start(cfg, &w, dir, StdioKind::DevNull, procs)?;
    case::wait_ready(dir, root, procs)?;
    wait_until(Duration::from_secs(5), || procs::tree_settled(root));
    let tree = procs::tree_snapshot(root).context("process tree before the dump")?;
    if tree.len() != 3 || tree.values().map(|t| t.tids.len()).sum::<usize>() != 5 {
        bail!("hostile_tree should be 3 tasks with 5 threads, /proc shows {tree:?}");
    }
    let mut pids: Vec<Pid> = tree.keys().map(|p| Pid::from_raw(*p)).collect();
    pids.sort_by_key(|p| *p != root);
    let dumped = Dumped { root, pids };
    case::dump(cfg, dir, root, false, procs)?;

    let mut images: Vec<(String, Vec<u8>)> = Vec::new();
    for e in fs::read_dir(&dir.images).context("read the images directory")? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".img") && e.file_type()?.is_file() {
            let data = fs::read(e.path())?;
            images.push((name, data));
        }
    }
    images.sort();
    for want in ["inventory.img", "pstree.img"] {
        if !images.iter().any(|(n, _)| n == want) {
            bail!("the dump has no {want}");
        }
    }
    if !images.iter().any(|(n, _)| n.starts_with("pages-")) {
        bail!("the dump has no pages-*.img");
    }
    let run_dir = dir.root.join("run");
    let start = Instant::now();
    let mut tally = Tally::default();

    // the baseline: untouched images restore and pass their check
    reset(&dir.images, &run_dir)?;
    let untouched = Mutant {
        name: "untouched".into(),
        what: Mutation::Append(0),
        must_refuse: false,
    };
    let base = one_run(
        cfg, dir, &run_dir, &dumped, "(none)", &untouched, &mut tally,
    )?;
    if tally.restored_pass != 1 || !tally.failures.is_empty() || base.is_some() {
        bail!(
            "restoring the untouched images under prlimit --as={AS_LIMIT} failed: {}{}",
            tally.failures.join("\n"),
            base.unwrap_or_default()
        );
    }
    tally = Tally::default();

    let magics: Vec<(String, u32)> = images
        .iter()
        .filter_map(|(n, d)| {
            let (at, _) = layout(n, d)?;
            let at = at as usize;
            let m = u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?);
            Some((kind(n), m))
        })
        .collect();
    for (name, data) in &images {
        // the magic of the next kind of image (in name order)
        let mine = kind(name);
        let mine_magic = own_magic(name, data);
        let differs = |(k, m): &&(String, u32)| *k != mine && Some(*m) != mine_magic;
        let other = magics
            .iter()
            .filter(|(k, _)| *k > mine)
            .find(differs)
            .or_else(|| magics.iter().find(differs))
            .map(|(_, m)| *m)
            .unwrap_or(0x5832_3120);
        for mutant in mutations(name, data.len() as u64, data, other) {
            reset(&dir.images, &run_dir)?;
            apply(&run_dir.join(name), &mutant.what, seed_of(name))?;
            one_run(cfg, dir, &run_dir, &dumped, name, &mutant, &mut tally)?;
        }
    }
    let elapsed = start.elapsed();
    let mut failures_txt = String::new();
    for f in &tally.failures {
        let _ = writeln!(failures_txt, "{f}\n");
    }
    let _ = fs::write(dir.root.join("failures.txt"), &failures_txt);
    let summary = format!(
        "{} files, {} runs of restore/show/show --ns in {:.1}s (slowest command {} ms); {} \
         restores succeeded ({} of them passed their own check)",
        images.len(),
        tally.runs,
        elapsed.as_secs_f64(),
        tally.slowest.as_millis(),
        tally.restored,
        tally.restored_pass
    );
    let restored = if tally.restored_notes.is_empty() {
        String::new()
    } else {
        format!("restored from: {}", tally.restored_notes.join(", "))
    };
    if !tally.failures.is_empty() {
        bail!(
            "{} problems with mutated images; {summary}:\n{}\n{restored}",
            tally.failures.len(),
            tally.failures.join("\n")
        );
    }
    let mut note = summary;
    if !restored.is_empty() {
        let _ = write!(note, "; {restored}");
    }
    Ok(Outcome::PassWith(note))
}

/// An image's kind: its name without digits (`core-.img`).
fn kind(name: &str) -> String {
    name.chars().filter(|c| !c.is_ascii_digit()).collect()
}

fn own_magic(name: &str, data: &[u8]) -> Option<u32> {
    let (at, _) = layout(name, data)?;
    let at = at as usize;
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// Makes `run` a fresh copy of the image files of `images`.
fn reset(images: &Path, run: &Path) -> Result<()> {
    if run.exists() {
        fs::remove_dir_all(run).with_context(|| format!("remove {}", run.display()))?;
    }
    fs::create_dir_all(run).with_context(|| format!("create {}", run.display()))?;
    for e in fs::read_dir(images)? {
        let e = e?;
        let name = e.file_name();
        if name.to_string_lossy().ends_with(".img") {
            fs::copy(e.path(), run.join(&name))
                .with_context(|| format!("copy {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// `crest restore`, `crest show` and `crest show --ns` on `run` (where
/// `file` was mutated by `mutation`); problems go to `tally.failures`.
/// Returns a note when the baseline's restored tree failed its check.
fn one_run(
    cfg: &Config,
    dir: &CaseDir,
    run: &Path,
    dumped: &Dumped,
    file: &str,
    mutant: &Mutant,
    tally: &mut Tally,
) -> Result<Option<String>> {
    tally.runs += 1;
    let mutation = &mutant.name;
    let mut fail = |what: &str, problem: String, r: &Run| {
        tally.failures.push(format!(
            "{file} [{mutation}] {what}: {problem} ({}): {}",
            r.status(),
            quote(&r.stderr)
        ));
    };
    let run_s = run.to_string_lossy();
    let pidfile = dir.root.join("restore.pid");
    let pidfile_s = pidfile.to_string_lossy();
    let _ = fs::remove_file(&pidfile);
    let _ = fs::remove_file(dir.state.join("verdict"));
    let r = run_crest(
        cfg,
        &dir.root,
        &["restore", "-D", &run_s, "-d", "--pidfile", &pidfile_s],
    )?;
    tally.slowest = tally.slowest.max(r.elapsed);
    let mut note = None;
    if let Some(p) = judge_run(&r, file) {
        fail("crest restore", p, &r);
    }
    if matches!(r.end, End::Exit(Exit::Code(0))) {
        tally.restored += 1;
        if mutant.must_refuse {
            fail(
                "crest restore",
                "succeeded, but no restore can be right with this file".into(),
                &r,
            );
        }
        match check_restored(dir, dumped) {
            Ok(()) => {
                tally.restored_pass += 1;
                tally.restored_notes.push(format!("{file} [{mutation}]"));
            }
            Err(e) => {
                let n = format!("{file} [{mutation}] (its check: {e:#})");
                tally.restored_notes.push(n.clone());
                note = Some(n);
            }
        }
        dumped.kill_all();
    } else if matches!(r.end, End::Hung) {
        // reported as a hang; its tasks were killed with it
        dumped.kill_all();
    } else {
        // a failed (or killed) restore must leave nothing behind
        if !wait_until(GONE_TIMEOUT, || dumped.existing().is_empty()) {
            let left = dumped.existing();
            fail(
                "crest restore",
                format!(
                    "failed, but dumped pids still exist {GONE_TIMEOUT:?} later: {}",
                    dumped.describe(&left)
                ),
                &r,
            );
            dumped.kill_all();
        }
    }
    let crests: Vec<String> = procs::harness_children()
        .into_iter()
        .filter(|(_, comm, _)| comm == "crest" || comm == "prlimit")
        .map(|(p, comm, state)| format!("pid {p} ({comm}, state {state})"))
        .collect();
    if !crests.is_empty() {
        fail(
            "crest restore",
            format!("left crest processes behind: {}", crests.join(", ")),
            &r,
        );
        for (p, ..) in procs::harness_children() {
            if dumped.pids.contains(&p) || procs::proc_comm(p).as_deref() == Some("crest") {
                let _ = kill(p, Signal::SIGKILL);
                procs::reap_or_wait_gone(p);
            }
        }
    }
    for (what, args) in [
        ("crest show", vec!["show", &*run_s]),
        ("crest show --ns", vec!["show", "--ns", &*run_s]),
    ] {
        let r = run_crest(cfg, &dir.root, &args)?;
        tally.slowest = tally.slowest.max(r.elapsed);
        if let Some(p) = judge_run(&r, file) {
            fail(what, p, &r);
        }
    }
    Ok(note)
}

/// After a successful restore: the root runs with its pid; SIGTERM it and
/// read its verdict (within 3 s).
fn check_restored(dir: &CaseDir, dumped: &Dumped) -> Result<()> {
    let root = dumped.root;
    let said = procs::read_pid_file(&dir.root.join("restore.pid"))?;
    if said != root {
        bail!("pidfile names {said}, the dumped root was {root}");
    }
    kill(root, Signal::SIGTERM).context("SIGTERM the restored root")?;
    let exit = match wait_exit(root, Duration::from_secs(3))? {
        Waited::Exited(e) => e,
        Waited::TimedOut => bail!("the restored root did not exit within 3 s of SIGTERM"),
        Waited::NotChild => bail!("the restored root is not a child of the harness"),
    };
    match case::judge(dir, exit)? {
        Outcome::Pass => Ok(()),
        o => bail!("verdict {o:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_finds_magics() {
        let core = [0x19, 0x43, 0x56, 0x54, 0x47, 0x38, 0x05, 0x55, 1, 0, 0, 0];
        assert_eq!(layout("core-1.img", &core), Some((4, 8)));
        let inv = [0x16, 0x31, 0x31, 0x58, 0x1a, 0, 0, 0];
        assert_eq!(layout("inventory.img", &inv), Some((0, 4)));
        assert_eq!(layout("pages-1.img", &core), None);
    }

    #[test]
    fn mutations_are_deterministic_and_cover_the_list() {
        let head = [0x19, 0x43, 0x56, 0x54, 0x47, 0x38, 0x05, 0x55, 1, 0, 0, 0];
        let a = mutations("core-123.img", 1000, &head, 7);
        let b = mutations("core-456.img", 1000, &head, 7);
        let names = |v: &[Mutant]| v.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b));
        assert_eq!(a.len(), 10);
        let tmp = std::env::temp_dir().join(format!("crest-hostile-{}", std::process::id()));
        fs::write(&tmp, [1u8, 2, 3]).unwrap();
        apply(&tmp, &Mutation::Put(8, 0xffff_ffff), 1).unwrap();
        assert_eq!(
            fs::read(&tmp).unwrap(),
            [1, 2, 3, 0, 0, 0, 0, 0, 255, 255, 255, 255]
        );
        apply(&tmp, &Mutation::Truncate(2), 1).unwrap();
        assert_eq!(fs::read(&tmp).unwrap(), [1, 2]);
        let _ = fs::remove_file(&tmp);
    }
}
