//! Container state crest cannot dump yet must fail the dump with a
//! message naming it, and leave the tree running untouched: the workload
//! (`small_tree`, the child of `unshare`) still passes its own check.
//!
//! - `netfilter_refused`: a network namespace with firewall state (an
//!   nftables table and a legacy iptables rule);
//! - `tmpfs_covered_refused`: a tmpfs with a file that a bind mount on the
//!   same mountpoint covers (its files cannot be read by path);
//! - `ebpf_filter_refused`: a socket filter attached with `SO_ATTACH_BPF`;
//! - `traced_task_refused`: a child its parent traces (`traced`): the
//!   refusal says which task traces which.

use std::fs;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use crate::case::{self, CaseDir, DirCase, READY_TIMEOUT};
use crate::procs::{self, Procs};
use crate::suite::Report;
use crate::{Config, Outcome, StdioKind};

const CASES: [(&str, DirCase); 4] = [
    ("netfilter_refused", netfilter_refused),
    ("tmpfs_covered_refused", tmpfs_covered_refused),
    ("ebpf_filter_refused", ebpf_filter_refused),
    ("traced_task_refused", traced_task_refused),
];

pub fn run(cfg: &Config, report: &mut Report, selected: &dyn Fn(&str) -> bool) {
    case::run_root_cases(cfg, report, selected, &CASES);
}

fn found(bin: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(bin).is_file())
}

fn netfilter_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    if !found("nft") || !found("iptables-legacy") || !found("unshare") {
        return Ok(Outcome::Skip(
            "nft, iptables-legacy or unshare not found (Debian packages nftables, iptables, \
             util-linux)"
                .into(),
        ));
    }
    refused(
        cfg,
        dir,
        procs,
        &["-n"],
        "nft add table inet crest_t && iptables-legacy -A INPUT -j ACCEPT",
        &["nftables crest_t", "iptables filter"],
    )
}

/// A socket filter attached with `SO_ATTACH_BPF`: the kernel keeps no copy
/// crest could read back, so the dump is refused naming it.
fn ebpf_filter_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    refused_in(
        cfg,
        dir,
        procs,
        (&[], "true"),
        ("sock_attrs", "ebpf"),
        &["SO_ATTACH_BPF"],
    )
}

/// A task another task of the tree traces: crest cannot seize it.
fn traced_task_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    refused_in(
        cfg,
        dir,
        procs,
        (&[], "true"),
        ("traced", ""),
        &["traced by pid", "a task of the tree"],
    )
}

fn tmpfs_covered_refused(cfg: &Config, dir: &CaseDir, procs: &mut Procs) -> Result<Outcome> {
    refused(
        cfg,
        dir,
        procs,
        &["-m", "--propagation", "private"],
        "mount -t tmpfs none /mnt && echo x > /mnt/f && mount --bind /usr /mnt",
        &["tmpfs at /mnt", "covers"],
    )
}

/// Starts `unshare FLAGS -f sh -c 'SETUP && exec small_tree STATEDIR'`,
/// dumps it, and wants a refusal whose message holds every one of `want`.
fn refused(
    cfg: &Config,
    dir: &CaseDir,
    procs: &mut Procs,
    flags: &[&str],
    setup: &str,
    want: &[&str],
) -> Result<Outcome> {
    refused_in(cfg, dir, procs, (flags, setup), ("small_tree", ""), want)
}

/// [`refused`] with workload `program` and its arguments (after the state
/// directory).
fn refused_in(
    cfg: &Config,
    dir: &CaseDir,
    procs: &mut Procs,
    (flags, setup): (&[&str], &str),
    (program, args): (&str, &str),
    want: &[&str],
) -> Result<Outcome> {
    if !found("unshare") {
        return Ok(Outcome::Skip(
            "unshare not found (Debian package util-linux)".into(),
        ));
    }
    let script = format!(
        "{setup} && exec {} {} {args}",
        cfg.workload(program).display(),
        dir.state.display()
    );
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.arg("unshare")
        .args(flags)
        .args(["-f", "sh", "-c", &script])
        .current_dir(&dir.root)
        .stdin(Stdio::null());
    case::set_stdio(&mut cmd, dir, StdioKind::LogFile)?;
    let root = Pid::from_raw(cmd.spawn().context("spawn unshare")?.id() as i32);
    procs.track(root);
    let ready = dir.state.join("ready");
    let start = Instant::now();
    while !ready.exists() {
        if start.elapsed() > READY_TIMEOUT {
            let log = fs::read_to_string(dir.root.join("out.log")).unwrap_or_default();
            bail!(
                "workload not ready after {READY_TIMEOUT:?}; out.log: {:?}",
                log.trim()
            );
        }
        sleep(procs::POLL);
    }
    let main = procs::read_pid_file(&ready)?;
    procs.track(main);
    let Some(ran) = case::dump_attempt(cfg, dir, root, false, procs)? else {
        bail!("crest dumped a tree set up with {setup:?}");
    };
    let said = ran.stderr.trim();
    if !want.iter().all(|w| said.contains(w)) {
        bail!(ran.failure(&format!("crest dump (expected a refusal naming {want:?})")));
    }
    // (a task traced by another of the tree, as `traced` sets up, is how
    // the tree was)
    let tree = procs::tree_snapshot(root).unwrap_or_default();
    let stuck: Vec<String> = procs::tree_problems(root)
        .into_iter()
        .filter(|p| {
            !p.rsplit_once(" is traced by ")
                .and_then(|(_, t)| t.trim().parse::<i32>().ok())
                .is_some_and(|t| tree.contains_key(&t))
        })
        .collect();
    if !stuck.is_empty() {
        bail!(
            "the refused dump left the tree disturbed:\n  {}",
            stuck.join("\n  ")
        );
    }
    let o = case::finish_tree(dir, main, root, StdioKind::LogFile, procs)?;
    procs.untrack(main);
    Ok(o)
}
