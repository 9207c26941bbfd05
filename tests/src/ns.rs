//! The `ns` flavor (issue 6): every protocol workload also runs as pid 1 of
//! its own pid, mnt, uts, ipc, net and time namespaces.
//!
//! `launch nsinit HOSTNAME MONO BOOT WORKLOAD STATEDIR ARGS` (see
//! `workloads/nsinit.c`) unshares the namespaces (every mount private, as
//! `unshare -m --propagation private` makes them), sets the hostname, brings
//! lo up, sets time offsets and forks the workload, the init of the new pid
//! namespace. The root the harness dumps and restores is `nsinit` (a session
//! leader in crest's pid namespace); its only child is the workload, whose
//! ready file names its inner pid (1). SIGTERM goes to the workload by its
//! crest-level pid; `nsinit` ends the way the workload did.
//!
//! Besides the checks of the host flavor (the process tree, now also with
//! every thread's `NSpid`), the harness compares before the dump and after
//! the restore:
//! - `crest show --ns --tree ROOT` before == after == `crest show --ns
//!   IMAGES` (`graph.*` in a kept case directory);
//! - which namespaces each task is in (`/proc/PID/ns/*`, named `host` when
//!   they are the harness's, else in order of first appearance) and the time
//!   offsets read from outside (`/proc/PID/timens_offsets`);
//! - the view from inside (`workloads/nsview.c` entering the workload's
//!   namespaces): hostname, domainname, the interfaces with their flags and
//!   addresses, the number of SysV objects and the measured clock offsets;
//!   these must also be what `nsinit` set up (`view.*`).

use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::case::{CaseDir, Program, Workload, READY_TIMEOUT};
use crate::nested;
use crate::procs::{self, wait_exit, Procs, Waited};
use crate::{Config, StdioKind};

/// The hostname of every `ns` case.
pub const HOSTNAME: &str = "crest-ns-test";
/// The CLOCK_MONOTONIC offset of the case's time namespace, in seconds.
pub const MONOTONIC_OFFSET: i64 = 3600;
/// The CLOCK_BOOTTIME offset of the case's time namespace, in seconds.
pub const BOOTTIME_OFFSET: i64 = 7200;

/// The namespaces listed per task.
const NS_KINDS: [&str; 10] = [
    "user",
    "pid",
    "pid_for_children",
    "mnt",
    "uts",
    "ipc",
    "net",
    "time",
    "time_for_children",
    "cgroup",
];

/// Starts `launch nsinit HOSTNAME MONO BOOT <workload> <statedir> <args>`
/// with the chosen stdio; returns the pid of `nsinit`.
pub fn start(
    cfg: &Config,
    w: &Workload,
    dir: &CaseDir,
    stdio: StdioKind,
    user: Option<&str>,
    procs: &mut Procs,
) -> Result<Pid> {
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.arg(cfg.workload("nsinit"));
    // -U: a user namespace with every id mapped to itself; -S: CRIU's
    // suite's maps
    if let Some(flag) = user {
        cmd.arg(flag);
    }
    cmd.arg(HOSTNAME)
        .arg(MONOTONIC_OFFSET.to_string())
        .arg(BOOTTIME_OFFSET.to_string());
    match &w.program {
        Program::C(name) => cmd.arg(cfg.workload(name)),
        Program::Script { interp, script } => cmd.arg(interp).arg(cfg.workload(script)),
    };
    cmd.arg(&dir.state)
        .args(&w.args)
        .current_dir(&dir.root)
        .stdin(Stdio::null());
    crate::case::set_stdio(&mut cmd, dir, stdio)?;
    let child = cmd.spawn().with_context(|| format!("spawn {:?}", cmd))?;
    let pid = Pid::from_raw(child.id() as i32);
    procs.track(pid);
    Ok(pid)
}

/// The `NSpid` field of `/proc/PID/status` as numbers.
pub fn nspid(pid: Pid) -> Option<Vec<i32>> {
    let v = procs::proc_status_field(pid, "NSpid")?;
    v.split_whitespace().map(|s| s.parse().ok()).collect()
}

/// Waits for `<statedir>/ready`; returns the crest-level pid of the
/// workload: the only child of `root`, whose innermost pid is the one the
/// ready file names.
pub fn wait_ready(dir: &CaseDir, root: Pid, procs: &mut Procs) -> Result<Pid> {
    let ready = dir.state.join("ready");
    let start = Instant::now();
    while !ready.exists() {
        if let Waited::Exited(exit) = wait_exit(root, std::time::Duration::ZERO)? {
            procs.untrack(root);
            let verdict = fs::read_to_string(dir.state.join("verdict"))
                .map(|v| format!("; verdict: {}", v.trim()))
                .unwrap_or_default();
            bail!("nsinit (pid {root}) exited before the workload was ready ({exit}){verdict}");
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("workload not ready after {READY_TIMEOUT:?}");
        }
        sleep(procs::POLL);
    }
    let said = procs::read_pid_file(&ready)?;
    let children = fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
        .with_context(|| format!("read the children of nsinit (pid {root})"))?;
    let children: Vec<i32> = children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    let [main] = children[..] else {
        bail!("nsinit (pid {root}) has the children {children:?}, expected one (the workload)");
    };
    let main = Pid::from_raw(main);
    procs.track(main);
    let ids = nspid(main).with_context(|| format!("NSpid of pid {main}"))?;
    if ids.len() != 2 || ids[0] != main.as_raw() || ids[1] != 1 {
        bail!(
            "the workload (pid {main}) has NSpid {ids:?}, expected [{main}, 1] (pid 1 of its own \
             pid namespace)"
        );
    }
    if said.as_raw() != 1 {
        bail!("ready file names pid {said}, but the workload is pid 1 of its pid namespace");
    }
    Ok(main)
}

/// What the harness sees of the namespaces of a tree, one item a line,
/// keyed so that two snapshots compare line by line.
pub type View = BTreeMap<String, String>;

/// The namespaces of every task of `tree` (canonically named), the time
/// offsets of `main` read from outside, and `nsview MAIN`.
pub fn view(cfg: &Config, tree: &procs::Tree, main: Pid) -> Result<View> {
    let mut v = View::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for kind in NS_KINDS {
        let host = fs::read_link(format!("/proc/self/ns/{kind}"))
            .with_context(|| format!("readlink /proc/self/ns/{kind}"))?;
        for pid in tree.keys() {
            let path = format!("/proc/{pid}/ns/{kind}");
            let label = match fs::read_link(&path) {
                Ok(l) if l == host => "host".to_string(),
                Ok(l) => {
                    let l = l.to_string_lossy().to_string();
                    let next = names.len();
                    let n = *names.entry(l).or_insert(next);
                    format!("own{n}")
                }
                Err(e) => format!("error {e}"),
            };
            v.insert(format!("pid {pid} ns {kind}"), label);
        }
    }
    let path = format!("/proc/{main}/timens_offsets");
    let offsets = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    v.insert("timens_offsets (outside)".into(), squeeze(&offsets));
    let out = Command::new(cfg.workload("nsview"))
        .arg(main.to_string())
        .output()
        .context("run nsview")?;
    if !out.status.success() {
        bail!(
            "nsview {main} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for (i, line) in String::from_utf8_lossy(&out.stdout).lines().enumerate() {
        // the measured clock offsets are compared with what nsinit set
        if line.starts_with("offset ") {
            v.insert("inside: clock offsets".into(), line.to_string());
        } else {
            v.insert(format!("inside: line {i:02}"), line.to_string());
        }
    }
    Ok(v)
}

fn squeeze(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// What must hold of every view: the setup of `nsinit`, seen from inside
/// and from outside; one line per problem.
pub fn expected_problems(v: &View, main: Pid) -> Vec<String> {
    let mut out = Vec::new();
    let inside: Vec<&str> = v
        .iter()
        .filter(|(k, _)| k.starts_with("inside: line"))
        .map(|(_, l)| l.as_str())
        .collect();
    let want_host = format!("hostname {HOSTNAME}");
    if !inside.contains(&want_host.as_str()) {
        out.push(format!("no {want_host:?} inside (nsview: {inside:?})"));
    }
    let ifs: Vec<&&str> = inside.iter().filter(|l| l.starts_with("if ")).collect();
    match ifs[..] {
        [lo] if lo.starts_with("if lo ") && lo.contains(" up loopback running ") => {}
        _ => out.push(format!(
            "expected only lo, up and running, inside; interfaces: {ifs:?}"
        )),
    }
    if !inside.contains(&"addr lo 127.0.0.1") {
        out.push(format!("lo has no 127.0.0.1 inside (nsview: {inside:?})"));
    }
    let want_offsets = format!("monotonic {MONOTONIC_OFFSET} 0 | boottime {BOOTTIME_OFFSET} 0");
    match v.get("timens_offsets (outside)") {
        Some(o) if *o == want_offsets => {}
        o => out.push(format!(
            "/proc/{main}/timens_offsets: {o:?}, expected {want_offsets:?}"
        )),
    }
    let want_clock = format!("offset monotonic {MONOTONIC_OFFSET} boottime {BOOTTIME_OFFSET}");
    match v.get("inside: clock offsets") {
        Some(o) if *o == want_clock => {}
        o => out.push(format!("clocks inside: {o:?}, expected {want_clock:?}")),
    }
    for kind in ["pid", "mnt", "uts", "ipc", "net", "time"] {
        let key = format!("pid {main} ns {kind}");
        if v.get(&key).map(String::as_str) == Some("host") {
            out.push(format!(
                "the workload (pid {main}) is in the harness's {kind} namespace"
            ));
        }
    }
    out
}

/// The differences between two views, one line each.
pub fn view_diff(before: &View, after: &View, what: &str) -> Vec<String> {
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

/// Writes a view to `<casedir>/<name>`.
pub fn save(dir: &CaseDir, name: &str, v: &View) {
    let text: String = v.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    let _ = fs::write(dir.root.join(name), text);
}

/// A graph without its task lists (` tasks [...]`), for a tree that
/// changes all the time (`fork_storm`).
pub fn without_tasks(graph: &str) -> String {
    graph
        .lines()
        .map(|l| {
            let mut out = String::new();
            let mut rest = l;
            while let Some(i) = rest.find(" tasks [") {
                out.push_str(&rest[..i]);
                rest = match rest[i..].find(']') {
                    Some(e) => &rest[i + e + 1..],
                    None => "",
                };
            }
            out.push_str(rest);
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The namespace state of a case before the dump: the live graph (None in
/// self-check mode, which runs without crest) and the harness's view.
pub struct Before {
    /// `crest show --ns --tree ROOT`.
    pub graph: Option<String>,
    /// See [`view`].
    pub view: View,
    /// What went wrong while it was taken (a failed `crest show`): reported
    /// with the case's other problems, after the dump and restore ran.
    pub problems: Vec<String>,
}

/// Takes the state before the dump and checks the setup.
pub fn before(
    cfg: &Config,
    dir: &CaseDir,
    root: Pid,
    main: Pid,
    storm: bool,
    procs: &mut Procs,
) -> Result<Before> {
    let tree = procs::tree_snapshot(root).context("process tree (namespaces before)")?;
    let view = view(cfg, &tree, main).context("namespaces before the dump")?;
    save(dir, "view.before", &view);
    let problems = expected_problems(&view, main);
    if !problems.is_empty() {
        bail!(
            "the namespaces are not what nsinit set up (before the dump):\n  {}",
            problems.join("\n  ")
        );
    }
    let mut problems = Vec::new();
    let graph = if cfg.checkpoint {
        let root_s = root.to_string();
        match nested::show_ns(cfg, dir, &["--tree", &root_s], "show-tree-before", procs) {
            Ok(g) => {
                let _ = fs::write(dir.root.join("graph.before"), &g);
                Some(if storm { without_tasks(&g) } else { g })
            }
            Err(e) => {
                problems.push(format!("before the dump: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    Ok(Before {
        graph,
        view,
        problems,
    })
}

/// After the dump: `crest show --ns IMAGES` must be the graph before.
pub fn check_images(
    cfg: &Config,
    dir: &CaseDir,
    before: &Before,
    storm: bool,
    procs: &mut Procs,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(graph) = &before.graph else {
        return problems;
    };
    let images = dir.images.to_string_lossy().to_string();
    match nested::show_ns(cfg, dir, &[&images], "show-images", procs) {
        Ok(g) => {
            let _ = fs::write(dir.root.join("graph.images"), &g);
            let g = if storm { without_tasks(&g) } else { g };
            nested::graph_check(
                &mut problems,
                "of the images (crest show --ns DIR)",
                graph,
                &g,
            );
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    problems
}

/// After the restore (or a refused dump): the live graph and the view must
/// be what they were before; `what` names the moment ("after restore").
pub fn check_after(
    cfg: &Config,
    dir: &CaseDir,
    (root, main): (Pid, Pid),
    before: &Before,
    storm: bool,
    what: &str,
    procs: &mut Procs,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(graph) = &before.graph {
        let root_s = root.to_string();
        match nested::show_ns(cfg, dir, &["--tree", &root_s], "show-tree-after", procs) {
            Ok(g) => {
                let _ = fs::write(dir.root.join("graph.after"), &g);
                let g = if storm { without_tasks(&g) } else { g };
                nested::graph_check(&mut problems, what, graph, &g);
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    let tree = match procs::tree_snapshot(root) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("process tree {what}: {e:#}"));
            return problems;
        }
    };
    match view(cfg, &tree, main) {
        Ok(v) => {
            save(dir, "view.after", &v);
            // a storm's tree changes: compare only the workload's own view
            let (b, a) = if storm {
                let keep = |v: &View| -> View {
                    v.iter()
                        .filter(|(k, _)| {
                            !k.starts_with("pid ") || k.starts_with(&format!("pid {main} "))
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                };
                (keep(&before.view), keep(&v))
            } else {
                (before.view.clone(), v.clone())
            };
            let d = view_diff(&b, &a, what);
            if !d.is_empty() {
                problems.push(format!(
                    "the namespaces differ {what} ({} items; view.before, view.after):\n  {}",
                    d.len(),
                    d.join("\n  ")
                ));
            }
            let e = expected_problems(&v, main);
            if !e.is_empty() {
                problems.push(format!(
                    "the namespaces are not what nsinit set up {what}:\n  {}",
                    e.join("\n  ")
                ));
            }
        }
        Err(e) => problems.push(format!("namespaces {what}: {e:#}")),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tasks_drops_every_task_list() {
        let g =
            "net ns owned by the userns of tasks [1, 2] (depth 0) lo up tasks [1, 2, 3]\nuserns";
        assert_eq!(
            without_tasks(g),
            "net ns owned by the userns of (depth 0) lo up\nuserns"
        );
    }
}
