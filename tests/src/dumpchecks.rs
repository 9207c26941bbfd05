//! Checks of `crest dump` alone (issue 2): a dump with -R leaves the task
//! running and intact; the images decode with CRIU's `crit`; the pages hold
//! the workload's bytes; `crest show`, `crest check` and `crest --version`
//! work; a dump of a missing pid fails naming it; images are mode 0600.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;
use serde_json::Value;

use crate::case::{self, run_in, CaseDir, Mode, Workload};
use crate::crest::{self, Ran, CREST_TIMEOUT};
use crate::crit::find_crit;
use crate::procs::{self, Exit, Procs};
use crate::suite::Report;
use crate::{Config, Flavor, Outcome, StdioKind};

/// The checks that read the images of the `-R` dump, by name.
const IMAGE_CHECKS: [(&str, ImageCheck); 4] = [
    ("dump_crit", crit_decodes),
    ("dump_pages_marker", pages_hold_marker),
    ("dump_show", show_names_task),
    ("dump_image_modes", images_are_0600),
];

/// The checks that need no images.
const PLAIN_CHECKS: [(&str, PlainCheck); 4] = [
    ("dump_bad_pid", dump_missing_pid_fails),
    ("dump_ghost_limit", dump_over_ghost_limit_fails),
    ("crest_check", check_prints),
    ("crest_version", version_prints),
];

type ImageCheck = fn(&Config, &CaseDir, Pid) -> Result<Outcome>;
type PlainCheck = fn(&Config, &CaseDir) -> Result<Outcome>;

fn name(check: &str) -> String {
    case::case_name(check, Flavor::Host, None)
}

/// Runs every check whose name passes `selected`.
pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    let lead = case::case_name("dump_leave_running", Flavor::Host, Some(StdioKind::DevNull));
    let image_names: Vec<String> = IMAGE_CHECKS.iter().map(|(n, _)| name(n)).collect();
    let want_images = image_names.iter().any(|n| selected(n));
    let mut names: Vec<String> = vec![lead.clone()];
    names.extend(image_names.iter().cloned());
    names.extend(PLAIN_CHECKS.iter().map(|(n, _)| name(n)));
    if !cfg.checkpoint {
        for n in names.iter().filter(|n| selected(n)) {
            report.record(
                n,
                Outcome::Skip("CREST_E2E_NOCHECKPOINT=1: no crest".into()),
            );
        }
        return;
    }
    if !cfg.root {
        for n in names.iter().filter(|n| selected(n)) {
            report.record(n, Outcome::Skip("needs root".into()));
        }
        return;
    }
    if selected(&lead) || want_images {
        leave_running_and_images(cfg, report, selected, &lead);
    }
    for (check, f) in PLAIN_CHECKS {
        let n = name(check);
        if selected(&n) {
            let outcome = one_check(cfg, &n, |dir| f(cfg, dir));
            report.record(&n, outcome);
        }
    }
}

/// (a) `mem_patterns 48` dumped with -R must pass its own check; then the
/// image checks run on that dump.
fn leave_running_and_images(
    cfg: &Config,
    report: &mut Report,
    selected: &dyn Fn(&str) -> bool,
    lead: &str,
) {
    let dir = match CaseDir::create(cfg, lead) {
        Ok(d) => d,
        Err(e) => {
            report.record(lead, Outcome::fail(format!("{e:#}")));
            return;
        }
    };
    let w = Workload {
        name: "mem_patterns",
        program: case::Program::C("mem_patterns"),
        args: vec!["48".into()],
        settle: case::Settle::Blocked,
    };
    let (outcome, pid) = run_in(cfg, &w, &dir, StdioKind::DevNull, Mode::DumpLeaveRunning);
    let mut all_passed = outcome.is_pass();
    report.record(lead, outcome);
    let have_images = dir.images.join("pstree.img").exists();
    for (check, f) in IMAGE_CHECKS {
        let n = name(check);
        if !selected(&n) {
            continue;
        }
        let outcome = match pid {
            Some(pid) if have_images => match f(cfg, &dir, pid) {
                Ok(o) => o,
                Err(e) => Outcome::fail(format!("{e:#}")),
            },
            _ => Outcome::fail(format!(
                "no images: {lead} left no pstree.img in {}",
                dir.images.display()
            )),
        };
        if let Outcome::Fail(reason) = &outcome {
            all_passed = false;
            let reason = format!("{reason}\n  (images kept in {})", dir.images.display());
            report.record(&n, Outcome::Fail(reason));
        } else {
            report.record(&n, outcome);
        }
    }
    if all_passed {
        dir.remove();
    }
}

/// Runs a check that needs no images in a directory of its own.
fn one_check(cfg: &Config, n: &str, f: impl FnOnce(&CaseDir) -> Result<Outcome>) -> Outcome {
    let dir = match CaseDir::create(cfg, n) {
        Ok(d) => d,
        Err(e) => return Outcome::fail(format!("{e:#}")),
    };
    let result = f(&dir);
    let leftovers = procs::sweep_children();
    let outcome = case::conclude(result, &dir, &[], &leftovers);
    if outcome.is_pass() {
        dir.remove();
    }
    outcome
}

/// Runs `crest <args>` in `dir`, output in `<dir>/<tag>.std{out,err}`.
fn crest_run(cfg: &Config, dir: &Path, tag: &str, args: &[&str]) -> Result<Ran> {
    case::check_crest(cfg)?;
    let mut procs = Procs::default();
    crest::run(
        crest::command(&cfg.crest, args),
        dir,
        tag,
        CREST_TIMEOUT,
        &mut procs,
    )
}

use crate::crit::{file_name, images};

/// Runs `crit decode -i FILE`; returns its stdout.
fn crit_decode(crit: &Path, dir: &CaseDir, img: &Path) -> Result<String> {
    crate::crit::decode(crit, dir, "decode", img)
}

/// (b) `crit decode -i` and `crit show` read every image but the files CRIU
/// itself writes raw (pages), crest's own `crest-*.img` included, and the
/// pstree names the pid.
fn crit_decodes(_cfg: &Config, dir: &CaseDir, pid: Pid) -> Result<Outcome> {
    let Some(crit) = find_crit() else {
        return Ok(Outcome::Skip(
            "crit is not on PATH (Debian package criu)".into(),
        ));
    };
    let mut decoded = Vec::new();
    for img in images(&dir.images)? {
        let n = file_name(&img);
        if crate::crit::is_raw(&n) {
            continue;
        }
        crit_decode(&crit, dir, &img)?;
        crate::crit::decode(&crit, dir, "show", &img)?;
        decoded.push(n);
    }
    let pstree = crit_decode(&crit, dir, &dir.images.join("pstree.img"))?;
    let json: Value = serde_json::from_str(&pstree).context("crit's pstree output is not JSON")?;
    let pids: Vec<i64> = json["entries"]
        .as_array()
        .map(|es| es.iter().filter_map(|e| e["pid"].as_i64()).collect())
        .unwrap_or_default();
    if !pids.contains(&i64::from(pid.as_raw())) {
        bail!("crit's pstree.img holds pids {pids:?}, not {pid}");
    }
    if decoded.len() < 3 {
        bail!(
            "only {} images decoded; expected inventory, pstree, core, mm, ...",
            decoded.len()
        );
    }
    Ok(Outcome::Pass)
}

/// The marker `mem_patterns` wrote: 64 bytes and their address.
fn read_marker(dir: &CaseDir) -> Result<(Vec<u8>, u64)> {
    let path = dir.state.join("marker");
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut lines = text.lines();
    let hex = lines.next().context("marker file is empty")?;
    let bytes = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .context("marker is not hex")?;
    let addr = lines.next().context("marker file lacks the address")?;
    let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).context("marker address")?;
    if bytes.len() != 64 {
        bail!("marker has {} bytes, expected 64", bytes.len());
    }
    Ok((bytes, addr))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = 0;
    while let Some(i) = hay.get(at..)?.iter().position(|b| *b == first) {
        let pos = at + i;
        if hay.get(pos..pos + needle.len()) == Some(needle) {
            return Some(pos);
        }
        at = pos + 1;
    }
    None
}

/// (c) the 64-byte heap marker of `mem_patterns` is in a pages-*.img; with
/// crit, also exactly where pagemap-PID.img says its address is.
fn pages_hold_marker(_cfg: &Config, dir: &CaseDir, pid: Pid) -> Result<Outcome> {
    let (marker, addr) = read_marker(dir)?;
    let mut found = None;
    let mut total = 0usize;
    for img in images(&dir.images)? {
        if !file_name(&img).starts_with("pages-") {
            continue;
        }
        let data = fs::read(&img).with_context(|| format!("read {}", img.display()))?;
        total += data.len();
        if let Some(off) = find(&data, &marker) {
            found = Some((img, off));
            break;
        }
    }
    let Some((img, off)) = found else {
        bail!("the heap marker at {addr:#x} is in no pages-*.img ({total} bytes searched)");
    };
    if let Some(crit) = find_crit() {
        let pagemap = dir.images.join(format!("pagemap-{pid}.img"));
        let json = crit_decode(&crit, dir, &pagemap)?;
        let json: Value = serde_json::from_str(&json).context("crit's pagemap is not JSON")?;
        let want = pagemap_offset(&json, addr)?;
        if want != off as u64 {
            bail!(
                "marker found at offset {off:#x} of {}, but pagemap places {addr:#x} at {want:#x}",
                file_name(&img)
            );
        }
    }
    Ok(Outcome::Pass)
}

fn json_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

/// Offset in the pages file of `addr`, walking crit's pagemap entries (the
/// first is the header; entries only in a parent image hold no pages).
fn pagemap_offset(json: &Value, addr: u64) -> Result<u64> {
    let entries = json["entries"]
        .as_array()
        .context("pagemap JSON has no entries")?;
    let mut off = 0u64;
    for e in entries.iter().skip(1) {
        let vaddr = json_u64(&e["vaddr"]).context("pagemap entry without vaddr")?;
        let nr = json_u64(&e["nr_pages"]).context("pagemap entry without nr_pages")?;
        let flags = e["flags"].as_str().unwrap_or("PE_PRESENT");
        let in_file = !flags.contains("PARENT") && (flags.contains("PRESENT") || flags.is_empty());
        if (vaddr..vaddr + nr * 4096).contains(&addr) {
            if !in_file {
                bail!("pagemap entry of {addr:#x} has flags {flags}: not in the pages file");
            }
            return Ok(off + addr - vaddr);
        }
        if in_file {
            off += nr * 4096;
        }
    }
    bail!("no pagemap entry covers {addr:#x}")
}

/// (d) `crest show DIR` names the pid and comm; `--json` is JSON.
fn show_names_task(cfg: &Config, dir: &CaseDir, pid: Pid) -> Result<Outcome> {
    let images = dir.images.to_string_lossy();
    let ran = crest_run(cfg, &dir.root, "show", &["show", &images])?;
    if !ran.success() {
        bail!(ran.failure("crest show"));
    }
    for want in [pid.to_string(), "mem_patterns".to_string()] {
        if !ran.stdout.contains(&want) {
            bail!("crest show does not mention {want:?}:\n{}", ran.stdout);
        }
    }
    let ran = crest_run(cfg, &dir.root, "show-json", &["show", "--json", &images])?;
    if !ran.success() {
        bail!(ran.failure("crest show --json"));
    }
    serde_json::from_str::<Value>(&ran.stdout).context("crest show --json prints no JSON")?;
    Ok(Outcome::Pass)
}

/// (g) every image file is mode 0600.
fn images_are_0600(_cfg: &Config, dir: &CaseDir, _pid: Pid) -> Result<Outcome> {
    use std::os::unix::fs::PermissionsExt;
    let mut bad = Vec::new();
    for img in images(&dir.images)? {
        let mode = fs::metadata(&img)?.permissions().mode() & 0o7777;
        if mode != 0o600 {
            bad.push(format!("{} {mode:04o}", file_name(&img)));
        }
    }
    if !bad.is_empty() {
        bail!("images not mode 0600: {}", bad.join(", "));
    }
    Ok(Outcome::Pass)
}

/// (f) dumping a pid that does not exist fails and stderr names the pid.
fn dump_missing_pid_fails(cfg: &Config, dir: &CaseDir) -> Result<Outcome> {
    let max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let pid = (2..max)
        .rev()
        .find(|p| !procs::exists(Pid::from_raw(*p)))
        .context("no free pid")?;
    let pid_s = pid.to_string();
    let images = dir.images.to_string_lossy();
    let ran = crest_run(
        cfg,
        &dir.root,
        "dump",
        &["dump", "-t", &pid_s, "-D", &images],
    )?;
    match ran.exit {
        Exit::Code(0) => bail!("crest dump of missing pid {pid} succeeded"),
        Exit::Signal(s) => bail!("crest dump of missing pid {pid} was killed by {s}"),
        Exit::Code(_) => {}
    }
    if !ran.stderr.contains(&pid_s) {
        bail!(
            "crest dump of missing pid {pid} failed, but its stderr does not name the pid: {:?}",
            ran.stderr
        );
    }
    Ok(Outcome::Pass)
}

/// `fds_many big` holds a deleted file of 2 MiB: `crest dump` (default
/// ghost limit 1 MiB) must fail naming the limit and leave it running, and
/// the workload then passes its own checks.
fn dump_over_ghost_limit_fails(cfg: &Config, dir: &CaseDir) -> Result<Outcome> {
    let w = Workload {
        name: "fds_many",
        program: case::Program::C("fds_many"),
        args: vec!["big".into()],
        settle: case::Settle::Blocked,
    };
    let mut procs = Procs::default();
    let pid = case::start(cfg, &w, dir, StdioKind::DevNull, &mut procs)?;
    case::wait_ready(dir, pid, &mut procs)?;
    let ran = case::dump_attempt(cfg, dir, pid, false, &mut procs)?.context(
        "crest dump of a deleted file with 2 MiB of data succeeded with the default ghost limit",
    )?;
    if !ran.stderr.contains("ghost limit") || !ran.stderr.contains("fd ") {
        bail!(
            "crest dump failed, but its stderr does not name the fd and the ghost limit: {:?}",
            ran.stderr
        );
    }
    case::check_left_running(pid)?;
    case::finish(dir, pid, StdioKind::DevNull, &mut procs)
}

/// (e) `crest check` runs and prints at least one line.
fn check_prints(cfg: &Config, dir: &CaseDir) -> Result<Outcome> {
    let ran = crest_run(cfg, &dir.root, "check", &["check"])?;
    if let Exit::Signal(s) = ran.exit {
        bail!("crest check was killed by {s}");
    }
    if ran.stdout.lines().all(|l| l.trim().is_empty()) {
        bail!(
            "crest check printed nothing ({}); stderr: {:?}",
            ran.exit,
            ran.stderr
        );
    }
    Ok(Outcome::Pass)
}

/// `crest --version` exits 0 and prints something.
fn version_prints(cfg: &Config, dir: &CaseDir) -> Result<Outcome> {
    let ran = crest_run(cfg, &dir.root, "version", &["--version"])?;
    if !ran.success() || ran.stdout.trim().is_empty() {
        bail!("crest --version: {}, stdout {:?}", ran.exit, ran.stdout);
    }
    Ok(Outcome::Pass)
}
