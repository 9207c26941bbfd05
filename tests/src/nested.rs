//! The `nested` flavor (issue 5): process trees spread over nested user
//! namespaces, built by `workloads/nested.c` from a small spec (see its
//! header), dumped and restored by crest.
//!
//! Every task checks its own view itself (ids, groups, capability sets,
//! its maps and setgroups, whether each child's user namespace is its own).
//! The harness adds, for every task of the dumped tree, before the dump and
//! after the restore:
//! - the process tree (pids, parents, groups, sessions, threads);
//! - crest's view: `/proc/PID/task/TID/status` Uid, Gid, Groups and the
//!   capability sets of every thread;
//! - the namespaces read from outside: `/proc/PID/uid_map`, `gid_map`,
//!   `setgroups`, and the chain of user namespaces up to the harness's own
//!   (`NS_GET_PARENT`, `NS_GET_OWNER_UID`, through `workloads/nschain.c`),
//!   with namespaces named canonically so that two snapshots compare;
//! - `crest show --ns --tree ROOT` before == after == `crest show --ns
//!   IMAGES`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, Program, Settle, Workload, VERDICT_TIMEOUT};
use crate::crest::{self, CREST_TIMEOUT};
use crate::procs::{self, exists, wait_exit, wait_until, Procs, Waited};
use crate::suite::Report;
use crate::{Config, Flavor, Outcome, StdioKind};

/// How deep user namespaces nest below the initial one: the kernel refuses
/// to create a user namespace whose parent is deeper than 32, so the deepest
/// is at level 33 (`nested_deep` checks that one more `unshare` fails).
pub const MAX_DEPTH: usize = 33;

/// The cases: name and spec for `workloads/nested.c`; with
/// `CREST_E2E_NESTED_SPEC=SPEC` also `nested_custom` (to reproduce a
/// failure in a smaller tree).
pub fn cases() -> Vec<(&'static str, String)> {
    let mut cases = vec![
        ("nested3", nested3()),
        ("nested_deep", deep()),
        ("nested_siblings", siblings()),
        ("nested_unmapped", unmapped()),
        ("nested_setgroups_deny", setgroups_deny()),
        ("nested_subtree", subtree()),
    ];
    if let Ok(spec) = std::env::var("CREST_E2E_NESTED_SPEC") {
        cases.push(("nested_custom", spec));
    }
    cases
}

fn nested3() -> String {
    [
        "r - same",
        // L1: not identity; c1 created it, j1 joined it from L0, n1 was
        // forked by c1 after it set its ids
        "c1 r new um=0:100000:65536 u=0 g=0",
        "j1 r join:c1 u=1000 g=1000",
        "n1 c1 same u=5 g=5 groups=5,6",
        // L2: identity relative to L1
        "c2 c1 new um=0:0:20000 u=0 g=0",
        "j2 c1 join:c2 u=7 g=7",
        "n2 c2 same thread",
        // L3: two extents, gid map different from the uid map
        "c3 c2 new um=0:500:1000,2000:3000:100 gm=0:600:1000,2000:4000:100 u=0 g=0 thread",
        "j3 c2 join:c3 u=2050 g=2050",
        "n3 c3 same u=1 g=1 groups=2000,2010",
    ]
    .join("; ")
}

fn deep() -> String {
    let mut tasks = vec!["r - same".to_string()];
    let mut count = 65536u32;
    for level in 1..=MAX_DEPTH {
        let parent = if level == 1 {
            "r".to_string()
        } else {
            format!("d{}", level - 1)
        };
        let um = match level {
            1 => "0:100000:65536".to_string(),
            l if l % 2 == 0 => format!("0:0:{count}"),
            _ => {
                count -= 1;
                format!("0:1:{count}")
            }
        };
        let gm = if level == 1 {
            " gm=0:200000:65536".to_string()
        } else {
            String::new()
        };
        let extra = if level == MAX_DEPTH { " maxdepth" } else { "" };
        tasks.push(format!("d{level} {parent} new um={um}{gm} u=0 g=0{extra}"));
        if level == 20 {
            tasks.push("j20 d19 join:d20 u=9 g=9".into());
        }
    }
    tasks.push("n8 d8 same u=3 g=3".into());
    tasks.push("n16 d16 same".into());
    tasks.push(format!("n{MAX_DEPTH} d{MAX_DEPTH} same u=2 g=2 thread"));
    tasks.join("; ")
}

fn siblings() -> String {
    [
        "r - same",
        "p r new um=0:100000:65536 u=0 g=0",
        "s1 p new um=0:1000:10,10:2000:10,20:3000:5 gm=0:4000:30 u=0 g=0",
        "t1 s1 same u=22 g=22 groups=1,2,29",
        "s2 p new um=0:5000:5,5:6000:20,100:7000:3 gm=0:8000:10,10:9000:10 u=15 g=12 groups=3,19",
        "s3 p new um=0:10000:1,1:11000:99,1000:12000:10 gm=0:13000:1,1:14000:99 u=1005 g=50 thread",
        "q r same",
    ]
    .join("; ")
}

fn unmapped() -> String {
    [
        "r - same",
        // kuid 0 is not mapped in a: it sees 65534 for both
        "a r new um=0:100000:65536 thread ovf",
        "b r new um=0:200000:1000 u=0 g=0",
        // b's uid 0 (kuid 200000) is mapped in b, not in c
        "c b new um=0:5:10 ovf",
        // uid mapped, gid not
        "e b new um=0:0:1000 gm=0:7:10 u=0 ovf",
        "f b same u=3 g=3",
    ]
    .join("; ")
}

fn setgroups_deny() -> String {
    [
        "r - same",
        "d r new um=0:300000:1000 deny u=0 g=0",
        // no capabilities at all in d
        "e d same u=7 g=7 nocaps",
        // inherits deny
        "f d new um=0:0:100 u=0 g=0",
        // uid 0 without capabilities in f
        "h f same nocaps thread",
    ]
    .join("; ")
}

fn subtree() -> String {
    [
        "r - same",
        "o1 r new um=0:100000:65536 u=0 g=0",
        "o2 o1 new um=0:1000:20000 u=0 g=0",
        // the dumped root lives in L2 (which it did not create)
        "w o2 same root",
        "x w new um=0:0:100 u=0 g=0",
        "y x same u=4 g=4 thread",
        "z w same u=6 g=6",
    ]
    .join("; ")
}

/// Runs every case whose name passes `selected`.
pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    for (name, spec) in cases() {
        let n = case::case_name(name, Flavor::Nested, None);
        if !selected(&n) {
            continue;
        }
        let outcome = if cfg.root {
            one_case(cfg, &n, &spec)
        } else {
            Outcome::Skip("needs root".into())
        };
        report.record(&n, outcome);
    }
}

fn one_case(cfg: &Config, n: &str, spec: &str) -> Outcome {
    let dir = match CaseDir::create(cfg, n) {
        Ok(d) => d,
        Err(e) => return Outcome::fail(format!("{e:#}")),
    };
    let mut procs = Procs::default();
    let result = steps(cfg, &dir, spec, &mut procs);
    let killed = procs.kill_all();
    // killed trees are reparented to the harness one level at a time
    let mut leftovers = Vec::new();
    for _ in 0..2 * MAX_DEPTH + 4 {
        let found = procs::sweep_children();
        if found.is_empty() && procs::harness_children().is_empty() {
            break;
        }
        leftovers.extend(found);
        std::thread::sleep(Duration::from_millis(20));
    }
    let outcome = case::conclude(result, &dir, &killed, &leftovers);
    if outcome.is_pass() {
        dir.remove();
    }
    outcome
}

/// The tasks of the dumped subtree that `nested` wrote to
/// `<statedir>/pids` (pid -> name), and the dumped root.
fn read_pids(dir: &CaseDir) -> Result<(BTreeMap<i32, String>, Pid)> {
    let path = dir.state.join("pids");
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut names = BTreeMap::new();
    let mut root = None;
    for line in text.lines() {
        let bad = || format!("{}: bad line {line:?}", path.display());
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[..] {
            ["ROOT", pid] => root = Some(Pid::from_raw(pid.parse().with_context(bad)?)),
            [name, pid, below] => {
                if below == "1" {
                    names.insert(pid.parse().with_context(bad)?, name.to_string());
                }
            }
            _ => bail!(bad()),
        }
    }
    let root = root.with_context(|| format!("{} names no ROOT", path.display()))?;
    Ok((names, root))
}

/// What the harness sees of the tree's tasks, one line per item, keyed so
/// that two snapshots compare line by line.
type View = BTreeMap<String, String>;

const STATUS_FIELDS: [&str; 8] = [
    "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
];

fn squeeze(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// crest's view of every thread's credentials, and the namespaces of every
/// task as the harness reads them.
fn harness_view(cfg: &Config, tree: &procs::Tree, names: &BTreeMap<i32, String>) -> Result<View> {
    let mut v = View::new();
    let label = |pid: i32| match names.get(&pid) {
        Some(n) => format!("{n}({pid})"),
        None => format!("?({pid})"),
    };
    for (pid, t) in tree {
        for tid in &t.tids {
            let path = format!("/proc/{pid}/task/{tid}/status");
            let status = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
            for f in STATUS_FIELDS {
                let val = status
                    .lines()
                    .find_map(|l| l.strip_prefix(f).and_then(|r| r.strip_prefix(':')))
                    .map(|r| r.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_else(|| "(missing)".into());
                v.insert(format!("{} thread {tid} {f}", label(*pid)), val);
            }
        }
        for f in ["uid_map", "gid_map", "setgroups"] {
            let path = format!("/proc/{pid}/{f}");
            let val = fs::read_to_string(&path)
                .map(|s| squeeze(&s))
                .unwrap_or_else(|e| format!("error {e}"));
            v.insert(format!("{} {f}", label(*pid)), val);
        }
    }
    // the chains of user namespaces, inodes replaced by names in order of
    // first appearance (pids ascending, each chain from the top)
    let out = Command::new(cfg.workload("nschain"))
        .args(tree.keys().map(|p| p.to_string()))
        .output()
        .context("run nschain")?;
    if !out.status.success() {
        bail!(
            "nschain failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut inos: BTreeMap<String, usize> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        let pid: i32 = f.next().unwrap_or("").parse().context("nschain output")?;
        let mut chain: Vec<(&str, &str)> = f.filter_map(|e| e.split_once(':')).collect();
        chain.reverse();
        let mut text = Vec::new();
        for (ino, owner) in &chain {
            let next = inos.len();
            let n = *inos.entry(ino.to_string()).or_insert(next);
            text.push(format!("ns{n}(owner {owner})"));
        }
        v.insert(
            format!("{} userns chain (depth {})", label(pid), chain.len() - 1),
            text.join(" > "),
        );
    }
    Ok(v)
}

fn view_diff(before: &View, after: &View, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (k, b) in before {
        match after.get(k) {
            None => out.push(format!("{k}: {b:?} before, missing {what}")),
            Some(a) if a != b => out.push(format!("{k}: {b:?} before, {a:?} {what}")),
            _ => {}
        }
    }
    for (k, a) in after {
        if !before.contains_key(k) {
            out.push(format!("{k}: new {what}: {a:?}"));
        }
    }
    out
}

fn render(v: &View) -> String {
    v.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

/// Lines only in `a` (-) and only in `b` (+).
pub(crate) fn text_diff(a: &str, b: &str) -> String {
    let al: Vec<&str> = a.lines().collect();
    let bl: Vec<&str> = b.lines().collect();
    let mut out = Vec::new();
    for l in &al {
        if !bl.contains(l) {
            out.push(format!("  - {l}"));
        }
    }
    for l in &bl {
        if !al.contains(l) {
            out.push(format!("  + {l}"));
        }
    }
    if out.is_empty() {
        out.push("  (same lines, different order)".into());
    }
    out.join("\n")
}

/// `crest show --ns ARGS` (its stdout), saved as `<tag>` in the case dir.
pub(crate) fn show_ns(
    cfg: &Config,
    dir: &CaseDir,
    args: &[&str],
    tag: &str,
    procs: &mut Procs,
) -> Result<String> {
    let mut all = vec!["show", "--ns"];
    all.extend_from_slice(args);
    let ran = crest::run(
        crest::command(&cfg.crest, &all),
        &dir.root,
        tag,
        CREST_TIMEOUT,
        procs,
    )?;
    if !ran.success() {
        bail!(ran.failure(&format!("crest {}", all.join(" "))));
    }
    if ran.stdout.trim().is_empty() {
        bail!("crest {} printed nothing", all.join(" "));
    }
    Ok(ran.stdout)
}

pub(crate) fn graph_check(problems: &mut Vec<String>, what: &str, before: &str, now: &str) {
    if before != now {
        problems.push(format!(
            "namespace graph {what} differs from the live graph before the dump:\n{}\n  \
             before:\n    {}\n  {what}:\n    {}",
            text_diff(before, now),
            before.trim_end().replace('\n', "\n    "),
            now.trim_end().replace('\n', "\n    ")
        ));
    }
}

fn steps(cfg: &Config, dir: &CaseDir, spec: &str, procs: &mut Procs) -> Result<Outcome> {
    fs::set_permissions(&dir.state, fs::Permissions::from_mode(0o777))
        .context("chmod the state directory")?;
    let w = Workload {
        name: "nested",
        program: Program::C("nested"),
        args: vec![spec.to_string()],
        settle: Settle::Blocked,
    };
    let launcher = case::start(cfg, &w, dir, StdioKind::DevNull, procs)?;
    case::wait_ready(dir, launcher, procs)?;
    let (by_pid, root) = read_pids(dir)?;
    let subtree = root != launcher;
    if !wait_until(Duration::from_secs(10), || procs::tree_settled(launcher)) {
        bail!("the tree of pid {launcher} did not settle (every thread sleeping) within 10 s");
    }
    let before_tree = procs::tree_snapshot(root).context("process tree before the dump")?;
    if !before_tree.keys().eq(by_pid.keys()) {
        bail!(
            "the tree of pid {root} has the processes {:?}, the workload reported {by_pid:?}",
            before_tree.keys().collect::<Vec<_>>()
        );
    }
    let before_view = harness_view(cfg, &before_tree, &by_pid)?;
    let outside_before = crate::outside::snapshot(&before_tree);
    let _ = fs::write(dir.root.join("view.before"), render(&before_view));
    if !cfg.checkpoint {
        // validate the workload without crest
        return finish(dir, root, launcher, subtree, procs);
    }
    case::check_crest(cfg)?;
    let root_s = root.to_string();
    let graph_before = show_ns(cfg, dir, &["--tree", &root_s], "show-tree-before", procs)?;
    let _ = fs::write(dir.root.join("graph.before"), &graph_before);
    dump(cfg, dir, root, subtree, &before_tree, procs)?;
    let mut problems = Vec::new();
    let images = dir.images.to_string_lossy().to_string();
    match show_ns(cfg, dir, &[&images], "show-images", procs) {
        Ok(g) => {
            let _ = fs::write(dir.root.join("graph.images"), &g);
            graph_check(
                &mut problems,
                "of the images (crest show --ns DIR)",
                &graph_before,
                &g,
            );
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    if let Err(e) = case::restore_detached(cfg, dir, root, procs) {
        problems.insert(0, format!("{e:#}"));
        bail!("{}", problems.join("\n"));
    }
    match show_ns(cfg, dir, &["--tree", &root_s], "show-tree-after", procs) {
        Ok(g) => {
            let _ = fs::write(dir.root.join("graph.after"), &g);
            graph_check(&mut problems, "after restore", &graph_before, &g);
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    let mut after_tree = procs::tree_snapshot(root).context("process tree after restore")?;
    if subtree {
        // a dumped subtree comes back as a child of crest (then of the
        // harness), not of the task above it
        if let (Some(b), Some(a)) = (
            before_tree.get(&root.as_raw()),
            after_tree.get_mut(&root.as_raw()),
        ) {
            a.ppid = b.ppid;
        }
    }
    let _ = fs::write(dir.root.join("tree.before"), format!("{before_tree:#?}\n"));
    let _ = fs::write(dir.root.join("tree.after"), format!("{after_tree:#?}\n"));
    let d = procs::tree_diff(&before_tree, &after_tree, "after restore");
    if !d.is_empty() {
        problems.push(format!(
            "process tree differs after restore:\n  {}",
            d.join("\n  ")
        ));
    }
    procs::wait_until(std::time::Duration::from_secs(5), || {
        procs::tree_settled(root)
    });
    problems.extend(case::check_outside(
        dir,
        root,
        &outside_before,
        "after restore",
    ));
    match harness_view(cfg, &after_tree, &by_pid) {
        Ok(after_view) => {
            let _ = fs::write(dir.root.join("view.after"), render(&after_view));
            let d = view_diff(&before_view, &after_view, "after restore");
            if !d.is_empty() {
                problems.push(format!(
                    "the harness's view of the tasks differs after restore ({} items):\n  {}",
                    d.len(),
                    d.join("\n  ")
                ));
            }
        }
        Err(e) => problems.push(format!("reading the tasks after restore: {e:#}")),
    }
    let verdict = finish(dir, root, launcher, subtree, procs);
    case::with_problems(verdict, problems)
}

/// `crest dump -t ROOT`; the dumped tree must be gone afterwards.
fn dump(
    cfg: &Config,
    dir: &CaseDir,
    root: Pid,
    subtree: bool,
    tree: &procs::Tree,
    procs: &mut Procs,
) -> Result<()> {
    if !subtree {
        return case::dump(cfg, dir, root, false, procs);
    }
    // the root is not the harness's child: the task above it reaps it
    let ran = case::run_dump(cfg, dir, root, false, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest dump"));
    }
    for p in tree.keys().map(|p| Pid::from_raw(*p)) {
        // its descendants are reparented to the harness (a subreaper)
        if !wait_until(Duration::from_secs(10), || {
            procs::reap_zombie_children();
            !exists(p)
        }) {
            bail!(
                "pid {p} ({}, state {:?}) of the dumped subtree still exists 10 s after crest \
                 dump (without -R) succeeded",
                procs::proc_comm(p).unwrap_or_default(),
                procs::proc_state(p)
            );
        }
    }
    crate::crit::require(dir, procs)
}

/// SIGTERM the root, wait for it, read the verdict; then end the launcher
/// (above a dumped subtree).
fn finish(
    dir: &CaseDir,
    root: Pid,
    launcher: Pid,
    subtree: bool,
    procs: &mut Procs,
) -> Result<Outcome> {
    if !subtree {
        return case::finish(dir, root, StdioKind::DevNull, procs);
    }
    kill(root, Signal::SIGTERM).with_context(|| format!("SIGTERM pid {root}"))?;
    let exit = match wait_exit(root, VERDICT_TIMEOUT)? {
        Waited::Exited(e) => {
            procs.untrack(root);
            Some(e)
        }
        Waited::TimedOut => bail!("pid {root} did not exit within {VERDICT_TIMEOUT:?} of SIGTERM"),
        Waited::NotChild => {
            // not restored: still the child of the task above it
            if !wait_until(VERDICT_TIMEOUT, || !exists(root)) {
                bail!("pid {root} did not exit within {VERDICT_TIMEOUT:?} of SIGTERM");
            }
            None
        }
    };
    let outcome = match exit {
        Some(e) => case::judge(dir, e)?,
        None => case::judge(dir, procs::Exit::Code(0))?,
    };
    kill(launcher, Signal::SIGTERM).with_context(|| format!("SIGTERM pid {launcher}"))?;
    match wait_exit(launcher, VERDICT_TIMEOUT)? {
        Waited::Exited(procs::Exit::Code(0)) => procs.untrack(launcher),
        other => bail!("the launcher {launcher} above the dumped subtree ended with {other:?}"),
    }
    Ok(outcome)
}
