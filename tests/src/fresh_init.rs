//! `*_init_fresh_pid` (issue 6, item 1): the init of a container's pid
//! namespace dumped as the root of the tree — the child of util-linux's
//! `unshare -f`, as runtimes dump a container — is restored as pid 1 of a
//! new pid namespace with a fresh pid outside, which `--pidfile` reports.
//!
//! The harness starts a container shape (`containers::INIT_ROOT`: the
//! first shape, the one with a mount namespace, a container in a container
//! with mount namespaces), dumps the (outer) init, and
//! before the restore takes the init's old outer pid with a `sleep` of its
//! own (through `ns_last_pid`), so the old pid cannot come back. After
//! `crest restore -d --pidfile` the pid in the pidfile must be a new one
//! whose `NSpid` ends in 1, and the tree and the view from inside must be
//! what they were, keyed by the pids inside the container: hostname, lo,
//! the SysV and POSIX objects with their contents, the namespaces of every
//! task, the namespace graph (without its task lists, which name outer
//! pids). Then the workload checks its own state and gives the verdict.

use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::case::{self, CaseDir};
use crate::containers::{self, Shape};
use crate::procs::{self, exists, wait_exit, wait_until, Procs, Tree, Waited};
use crate::{nested, ns, Config, Outcome};

/// Task `pid` of `tree` as the dumped container sees it: its leader's
/// `NSpid` without the levels above the container's (`skip`), e.g. "1"
/// for the init, "2 1" for the init of a container inside.
fn inner_pid(tree: &Tree, pid: i32, skip: usize) -> Option<String> {
    let t = tree.get(&pid)?;
    let ids: Vec<&str> = t.nspids.first()?.split_whitespace().skip(skip).collect();
    (!ids.is_empty()).then(|| ids.join(" "))
}

/// How many levels of `NSpid` lie above the pid namespace whose init is
/// `root`.
fn levels_above(tree: &Tree, root: i32) -> usize {
    tree.get(&root)
        .and_then(|t| t.nspids.first())
        .map_or(1, |n| n.split_whitespace().count().saturating_sub(1))
}

/// The namespace graph without task lists; for a root that is the init
/// of a container inside another, also without the pid namespaces above
/// it (no task of the tree is in them; the restore leaves them out) and
/// without pid namespace depths.
fn comparable_graph(graph: &str, inner: bool) -> String {
    if !inner {
        return ns::without_tasks(graph);
    }
    let kept: Vec<&str> = graph
        .lines()
        .filter(|l| !(l.starts_with("pid ns depth ") && l.ends_with(" tasks []")))
        .collect();
    ns::without_tasks(&kept.join("\n"))
        .lines()
        .map(|l| match l.strip_prefix("pid ns depth ") {
            Some(rest) => format!("pid ns{}", &rest[rest.find(' ').unwrap_or(0)..]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The only child `levels` deep below `root` (the init of the innermost
/// container).
fn only_children(root: Pid, levels: usize) -> Result<Pid> {
    (0..levels).try_fold(root, |cur, _| containers::only_child(cur))
}

/// Each task's and thread's id inside the container (its `NSpid` below the
/// levels above `root`'s pid namespace), by its pid or tid outside.
fn inner_ids(tree: &Tree, root: i32) -> impl Fn(i32) -> Option<String> {
    let skip = levels_above(tree, root);
    let ids: std::collections::HashMap<i32, String> = tree
        .values()
        .flat_map(|t| t.tids.iter().copied().zip(t.nspids.iter().cloned()))
        .map(|(tid, nspid)| {
            let inner: Vec<&str> = nspid.split_whitespace().skip(skip).collect();
            (tid, inner.join(" "))
        })
        .collect();
    move |id| ids.get(&id).cloned()
}

/// The tree keyed by the pids inside the container, each task as one line
/// of what must not change (parents, groups and sessions inside too; the
/// root's parent is outside).
fn inner_tree(tree: &Tree, root: i32) -> BTreeMap<String, String> {
    let skip = levels_above(tree, root);
    let inner = |p: i32| inner_pid(tree, p, skip).unwrap_or_else(|| "outside".to_string());
    tree.iter()
        .map(|(pid, t)| {
            let ppid = if *pid == root {
                "outside".into()
            } else {
                inner(t.ppid)
            };
            let line = format!(
                "{} ppid {ppid} pgid {} sid {} zombie {} threads {}",
                t.comm,
                inner(t.pgid),
                inner(t.sid),
                t.zombie,
                t.tids.len()
            );
            (inner(*pid), line)
        })
        .collect()
}

/// The view with every `pid N ...` key naming the task's pid inside.
fn inner_view(v: &ns::View, tree: &Tree, root: i32) -> ns::View {
    let skip = levels_above(tree, root);
    v.iter()
        .map(|(k, val)| {
            let key = k
                .strip_prefix("pid ")
                .and_then(|rest| rest.split_once(' '))
                .and_then(|(p, tail)| {
                    let inner = inner_pid(tree, p.parse().ok()?, skip)?;
                    Some(format!("pid {inner} {tail}"))
                })
                .unwrap_or_else(|| k.clone());
            (key, val.clone())
        })
        .collect()
}

/// Takes pid `want` with a `sleep` of the harness's (pids are given in
/// order after `ns_last_pid`; another fork may come in between).
fn occupy(want: i32, procs: &mut Procs) -> Result<Option<Pid>> {
    for _ in 0..10 {
        fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", want - 1))
            .context("write ns_last_pid")?;
        let child = Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn sleep")?;
        let pid = Pid::from_raw(child.id() as i32);
        procs.track(pid);
        if pid.as_raw() == want {
            return Ok(Some(pid));
        }
        end(pid, procs);
    }
    Ok(None)
}

/// Kills and reaps a process of the harness's.
fn end(pid: Pid, procs: &mut Procs) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    procs::reap_or_wait_gone(pid);
    procs.untrack(pid);
}

/// The case: the outer container's init is dumped, or with `inner` the
/// innermost container's, leaving the containers around it out.
pub(crate) fn steps(
    cfg: &Config,
    shape: &Shape,
    dir: &CaseDir,
    procs: &mut Procs,
    inner: bool,
) -> Result<Outcome> {
    let root = containers::start(cfg, shape, dir, procs, true)?;
    let chain = containers::wait_ready(dir, shape, root, procs)?;
    let at = if inner { chain.len() - 1 } else { 0 };
    let init = *chain.get(at).context("empty chain")?;
    let main = *chain.last().context("empty chain")?;
    // how deep the workload is below the dumped init
    let below = chain.len() - 1 - at;
    if !wait_until(Duration::from_secs(5), || procs::tree_settled(init)) {
        bail!("the tree of pid {init} did not settle within 5 s");
    }
    let tree_before = procs::tree_snapshot(init).context("process tree before the dump")?;
    let outside_before = crate::outside::snapshot(&tree_before);
    let view_before = containers::snapshot(cfg, shape, init, main, "before the dump")?;
    ns::save(dir, "view.before", &view_before);
    if !cfg.checkpoint {
        return case::finish_tree(dir, main, root, containers::stdio_of(shape), procs);
    }
    case::check_crest(cfg)?;
    let init_s = init.to_string();
    let graph_before = nested::show_ns(cfg, dir, &["--tree", &init_s], "show-tree-before", procs)?;
    let _ = fs::write(dir.root.join("graph.before"), &graph_before);

    let images = dir.images.to_string_lossy().to_string();
    let ran = case::run_dump(cfg, dir, init, false, procs)?;
    if !ran.success() {
        bail!(ran.failure("crest dump of the container's init"));
    }
    // the init was unshare's child (or the innermost container's):
    // unshare ends with it
    match wait_exit(root, Duration::from_secs(10))? {
        Waited::Exited(_) => procs.untrack(root),
        w => bail!("unshare (pid {root}) did not end after its child was dumped: {w:?}"),
    }
    for p in &chain {
        if !wait_until(Duration::from_secs(5), || !exists(*p)) {
            bail!("pid {p} still exists after the dump");
        }
        procs.untrack(*p);
    }
    crate::crit::require(dir, procs)?;
    let mut problems = Vec::new();
    match nested::show_ns(cfg, dir, &[&images], "show-images", procs) {
        Ok(g) => nested::graph_check(
            &mut problems,
            "of the images (crest show --ns DIR)",
            &graph_before,
            &g,
        ),
        Err(e) => problems.push(format!("{e:#}")),
    }

    let Some(taken) = occupy(init.as_raw(), procs)? else {
        bail!("the harness could not take pid {init} (other forks kept coming in between)");
    };
    let (ran, pidfile) = case::run_restore_detached(cfg, dir, procs)?;
    if !ran.success() {
        problems.insert(0, ran.failure("crest restore"));
        bail!("{}", problems.join("\n"));
    }
    let new = procs::read_pid_file(&pidfile).context("crest restore --pidfile")?;
    procs.track(new);
    let ids = ns::nspid(new).with_context(|| format!("NSpid of pid {new} (the pidfile's)"))?;
    if ids != [new.as_raw(), 1] {
        problems.push(format!(
            "the pidfile names pid {new}, whose NSpid is {ids:?}, not [{new}, 1]"
        ));
    }
    if new == init {
        problems.push(format!(
            "the restored init has pid {new}, which the harness held"
        ));
    }
    let what = "after restore";
    match procs::tree_snapshot(new) {
        Ok(after) => {
            let _ = fs::write(dir.root.join("tree.after"), format!("{after:#?}\n"));
            let (b, a) = (
                inner_tree(&tree_before, init.as_raw()),
                inner_tree(&after, new.as_raw()),
            );
            if b != a {
                problems.push(format!(
                    "process tree differs {what} (keyed by the pids inside):\n  before {b:?}\n  after  {a:?}"
                ));
            }
            // what the kernel shows from outside, keyed by the ids inside
            let (ob, oa) = (
                crate::outside::rekeyed(&outside_before, &inner_ids(&tree_before, init.as_raw())),
                crate::outside::rekeyed(
                    &crate::outside::snapshot(&after),
                    &inner_ids(&after, new.as_raw()),
                ),
            );
            crate::outside::save(&ob, &dir.root.join("outside.before"));
            crate::outside::save(&oa, &dir.root.join("outside.after"));
            // (the log file on fds 1 and 2 is shared with the outer
            // unshare, outside the tree, which writes to it when its child
            // is dumped: its size and mtime move without the tree)
            let d: Vec<String> = crate::outside::diff(&ob, &oa)
                .into_iter()
                .filter(|l| !(l.contains(" fd 1 file ") || l.contains(" fd 2 file ")))
                .collect();
            if !d.is_empty() {
                problems.push(format!(
                    "what the kernel shows of the tree from outside differs {what} (outside.before, outside.after; {} lines):\n  {}",
                    d.len(),
                    d.join("\n  ")
                ));
            }
            let main = only_children(new, below)?;
            match containers::snapshot(cfg, shape, new, main, what) {
                Ok(v) => {
                    ns::save(dir, "view.after", &v);
                    let d = ns::view_diff(
                        &inner_view(&view_before, &tree_before, init.as_raw()),
                        &inner_view(&v, &after, new.as_raw()),
                        what,
                    );
                    if !d.is_empty() {
                        problems.push(format!(
                            "the namespaces differ {what} (view.before, view.after):\n  {}",
                            d.join("\n  ")
                        ));
                    }
                }
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        Err(e) => problems.push(format!("process tree {what}: {e:#}")),
    }
    let new_s = new.to_string();
    match nested::show_ns(cfg, dir, &["--tree", &new_s], "show-tree-after", procs) {
        Ok(g) => nested::graph_check(
            &mut problems,
            what,
            &comparable_graph(&graph_before, inner),
            &comparable_graph(&g, inner),
        ),
        Err(e) => problems.push(format!("{e:#}")),
    }
    let verdict = only_children(new, below)
        .and_then(|main| case::finish_tree(dir, main, new, containers::stdio_of(shape), procs));
    end(taken, procs);
    case::with_problems(verdict, problems)
}
