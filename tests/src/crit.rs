//! CRIU's `crit` as the format oracle: every file crest writes in an images
//! directory must be one `crit decode` and `crit show` read.
//!
//! The only exceptions are the files CRIU itself writes raw, which crit
//! does not decode in CRIU's own dumps either (it takes their first word
//! for a magic it does not know): `pages-<id>.img` (page data) and the
//! `ip ... save` output in `ifaddr-`, `route-`, `route6-` and
//! `rule-<id>.img`.
//!
//! [`decode`] runs the `crit` binary once per file (`dump_crit`);
//! [`require`], run after every successful dump of the suite (by
//! `case::dump_attempt` and the cases that run `crest dump` themselves), runs crit's own decode function (`pycriu.cli.decode`,
//! what `crit decode -i FILE` and `crit show FILE` call) for every file in
//! one interpreter, which takes a fraction of a second per directory
//! instead of one interpreter start per file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::case::CaseDir;
use crate::crest::{self, CREST_TIMEOUT};
use crate::procs::Procs;

/// Prefixes of the files CRIU writes raw (see the module doc).
pub const RAW_PREFIXES: [&str; 5] = ["pages-", "ifaddr-", "route-", "route6-", "rule-"];

/// `crit` on PATH.
pub fn find_crit() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("crit"))
        .find(|p| p.is_file())
}

/// Every image of a directory, sorted: the `*.img` files and CRIU's
/// `stats-dump` / `stats-restore` (no `.img` in their names).
pub fn images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "img") || file_name(p).starts_with("stats-"))
        .collect();
    out.sort();
    Ok(out)
}

/// The file name of `p`.
pub fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether CRIU writes a file of this name raw.
pub fn is_raw(name: &str) -> bool {
    RAW_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Runs `crit ACTION [-i] FILE` (`decode` or `show`); returns its stdout.
pub fn decode(crit: &Path, dir: &CaseDir, action: &str, img: &Path) -> Result<String> {
    let mut cmd = Command::new(crit);
    cmd.arg(action);
    if action == "decode" {
        cmd.arg("-i");
    }
    cmd.arg(img);
    let tag = format!("crit-{action}-{}", file_name(img));
    let mut procs = Procs::default();
    let ran = crest::run(cmd, &dir.root, &tag, CREST_TIMEOUT, &mut procs)?;
    if !ran.success() {
        bail!(ran.failure(&format!("crit {action} {}", file_name(img))));
    }
    Ok(ran.stdout)
}

/// For each file: `crit decode` (compact) and `crit show` (pretty) through
/// `pycriu.cli.decode`, output thrown away; one line per file, `ok NAME`
/// or `fail NAME: WHY`.
const DRIVER: &str = r#"
import sys, io, contextlib
from pycriu import cli
for path in sys.argv[1:]:
    why = None
    for pretty in (False, True):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                cli.decode({'in': path, 'out': '/dev/null', 'pretty': pretty, 'nopl': False})
        except SystemExit as e:
            why = 'exit %s: %s' % (e.code, err.getvalue().strip().replace('\n', ' '))
        except Exception as e:
            why = '%s: %s' % (type(e).__name__, e)
        if why:
            break
    name = path.rsplit('/', 1)[-1]
    print('ok ' + name if why is None else 'fail %s: %s' % (name, why))
"#;

/// The interpreter of the `crit` script (its `#!` line), else `python3`.
fn interpreter(crit: &Path) -> String {
    fs::read_to_string(crit)
        .ok()
        .and_then(|s| {
            let first = s.lines().next()?.strip_prefix("#!")?.trim().to_string();
            (!first.is_empty() && !first.contains(' ')).then_some(first)
        })
        .unwrap_or_else(|| "python3".into())
}

/// crit decodes every file of the case's images directory but CRIU's raw
/// ones; an error listing those it does not (none without crit). Output
/// in `crit-all.std{out,err}` of the case directory.
pub fn require(dir: &CaseDir, procs: &mut Procs) -> Result<()> {
    let problems = check_dir_inner(dir, procs).context("crit on the images")?;
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

fn check_dir_inner(dir: &CaseDir, procs: &mut Procs) -> Result<Vec<String>> {
    let Some(crit) = find_crit() else {
        return Ok(Vec::new());
    };
    let files: Vec<PathBuf> = images(&dir.images)?
        .into_iter()
        .filter(|p| !is_raw(&file_name(p)))
        .collect();
    let mut cmd = Command::new(interpreter(&crit));
    cmd.arg("-c").arg(DRIVER).args(&files);
    let ran = crest::run(cmd, &dir.root, "crit-all", CREST_TIMEOUT, procs)?;
    if !ran.success() {
        bail!(ran.failure("the crit driver"));
    }
    let mut problems: Vec<String> = ran
        .stdout
        .lines()
        .filter(|l| l.starts_with("fail "))
        .map(|l| format!("crit does not decode {}", &l[5..]))
        .collect();
    let seen = ran.stdout.lines().filter(|l| l.starts_with("ok ")).count();
    if problems.is_empty() && seen != files.len() {
        problems.push(format!(
            "crit's driver answered for {seen} of the {} images",
            files.len()
        ));
    }
    Ok(problems)
}
