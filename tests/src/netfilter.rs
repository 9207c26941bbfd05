//! `netfilter_refused`: a tree whose network namespace has firewall state
//! (an nftables table and a legacy iptables rule) must not be dumped
//! without it: crest refuses, naming the tables, and the tree runs on
//! untouched — the workload (`small_tree`, the child of `unshare -n`)
//! still passes its own check afterwards.

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

const CASES: [(&str, DirCase); 1] = [("netfilter_refused", netfilter_refused)];

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
    let script = format!(
        "nft add table inet crest_t && iptables-legacy -A INPUT -j ACCEPT && exec {} {}",
        cfg.workload("small_tree").display(),
        dir.state.display()
    );
    let mut cmd = Command::new(cfg.workload("launch"));
    cmd.args(["unshare", "-n", "-f", "sh", "-c", &script])
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
        bail!("crest dumped a tree whose network namespace has nftables and iptables tables");
    };
    let said = ran.stderr.trim();
    if !(said.contains("nftables crest_t") && said.contains("iptables filter")) {
        bail!(ran.failure("crest dump (expected a refusal naming both tables)"));
    }
    let stuck = procs::tree_problems(root);
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
