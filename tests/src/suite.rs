//! The suite: the list of cases, the filter, the report.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::case::{self, Mode, Program, Settle, Workload};
use crate::{
    cgroups, containers, criu_cli, daemons, dumpchecks, hostile, inherit_fd, iterative, lazy,
    nested, procs, refusals, rpc, runtimes, servers, survive, trees, unpriv, Config, Flavor,
    Outcome, StdioKind,
};

/// Every protocol workload, in the order the suite runs them.
pub fn workloads() -> Vec<Workload> {
    let c = |name: &'static str, args: &[&str], settle: Settle| Workload {
        name,
        program: Program::C(name),
        args: args.iter().map(|a| a.to_string()).collect(),
        settle,
    };
    let script = |name: &'static str, interp: &'static str, script: &'static str| Workload {
        name,
        program: Program::Script { interp, script },
        args: Vec::new(),
        settle: Settle::Blocked,
    };
    vec![
        c("mem_patterns", &["64"], Settle::Blocked),
        c("mem_iter", &["32"], Settle::Spinning),
        c("lazy_fork", &["64"], Settle::Spinning),
        c("sleep_restart", &[], Settle::Blocked),
        Workload {
            name: "sleep_restart_iter",
            program: Program::C("sleep_restart"),
            args: vec!["iter".into()],
            settle: Settle::Blocked,
        },
        c("pipe_read_restart", &[], Settle::Blocked),
        c("futex_restart", &[], Settle::Blocked),
        c("signals", &[], Settle::Blocked),
        c("fpu_avx", &[], Settle::Spinning),
        c("misc_state", &[], Settle::Blocked),
        c("attrs", &[], Settle::Blocked),
        c("sock_attrs", &[], Settle::Blocked),
        c("files_edge", &[], Settle::Blocked),
        c("mem_shapes", &[], Settle::Blocked),
        c("cow", &[], Settle::Blocked),
        c("sysv_ipc", &[], Settle::Blocked),
        c("tree_sessions", &[], Settle::Blocked),
        c("threads_busy", &["8"], Settle::Spinning),
        c("zombie", &[], Settle::Blocked),
        c("gone_leaders", &[], Settle::Blocked),
        c("shared_anon", &["8"], Settle::Blocked),
        c("shared_anon_exited", &[], Settle::Blocked),
        c("deleted_maps", &[], Settle::Blocked),
        c("stopped", &[], Settle::Blocked),
        c("novdso", &[], Settle::Blocked),
        c("seccomp", &[], Settle::Blocked),
        c("netlink", &[], Settle::Blocked),
        c("packet", &[], Settle::Blocked),
        Workload {
            name: "packet_ring_moved",
            program: Program::C("packet"),
            args: vec!["ring_moved".into()],
            settle: Settle::Blocked,
        },
        c("fanotify", &[], Settle::Blocked),
        c("pty", &[], Settle::Blocked),
        c("chroot", &[], Settle::Blocked),
        c("aio", &[], Settle::Blocked),
        c("io_uring", &[], Settle::Blocked),
        Workload {
            name: "io_uring_single",
            program: Program::C("io_uring"),
            args: vec!["single".into()],
            settle: Settle::Blocked,
        },
        Workload {
            name: "io_uring_sqpoll",
            program: Program::C("io_uring"),
            args: vec!["sqpoll".into()],
            settle: Settle::Blocked,
        },
        Workload {
            name: "io_uring_nosqarray",
            program: Program::C("io_uring"),
            args: vec!["nosqarray".into()],
            settle: Settle::Blocked,
        },
        c("scm_rights", &[], Settle::Blocked),
        c("deleted_dirs", &[], Settle::Blocked),
        c("unix_relative", &[], Settle::Blocked),
        c("fork_storm", &[], Settle::Storm),
        c("fds_many", &[], Settle::Blocked),
        c("fds_fork", &[], Settle::Blocked),
        c("sock_fork", &[], Settle::Blocked),
        c("sockets", &[], Settle::Blocked),
        Workload {
            name: "sockets_tcp",
            program: Program::C("sockets"),
            args: vec!["tcp".into()],
            settle: Settle::Blocked,
        },
        c("file_locks", &[], Settle::Blocked),
        script("interp_py", "/usr/bin/python3", "interp.py"),
        script("interp_pl", "/usr/bin/perl", "interp.pl"),
        script("python_multiprocessing", "/usr/bin/python3", "multiproc.py"),
        script("sqlite_wal", "/usr/bin/python3", "sqlite_wal.py"),
        c("nsfiles", &[], Settle::Blocked),
    ]
}

/// The protocol workload called `name`.
pub fn workload(name: &str) -> Option<Workload> {
    workloads().into_iter().find(|w| w.name == name)
}

/// Makes the harness a child subreaper, so restored tasks (children of a
/// crest that exits) are reparented to it and can be reaped.
pub fn become_subreaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")
}

/// Prints one line per case as it finishes and counts them.
#[derive(Debug, Default)]
pub struct Report {
    passed: usize,
    failed: Vec<String>,
    skipped: usize,
}

impl Report {
    /// Records and prints a case's outcome.
    pub fn record(&mut self, name: &str, outcome: Outcome) {
        let line = match outcome {
            Outcome::Pass => {
                self.passed += 1;
                format!("PASS {name}")
            }
            Outcome::PassWith(note) => {
                self.passed += 1;
                format!("PASS {name} ({note})")
            }
            Outcome::Skip(reason) => {
                self.skipped += 1;
                format!("SKIP {name}: {reason}")
            }
            Outcome::Fail(reason) => {
                self.failed.push(name.to_string());
                let mut lines = reason.lines();
                let mut text = format!("FAIL {name}: {}", lines.next().unwrap_or(""));
                for l in lines {
                    text.push_str("\n    ");
                    text.push_str(l);
                }
                text
            }
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Whether any case failed.
    pub fn any_failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// The closing line.
    pub fn summary(&self, cfg: &Config, start: Instant) -> String {
        let mode = if cfg.checkpoint {
            "dump/restore"
        } else {
            "self-check (no crest)"
        };
        let mut s = format!(
            "e2e ({mode}): {} passed, {} failed, {} skipped in {:.1}s",
            self.passed,
            self.failed.len(),
            self.skipped,
            start.elapsed().as_secs_f64()
        );
        if !self.failed.is_empty() {
            s.push_str(&format!("\nfailed: {}", self.failed.join(" ")));
        }
        s
    }
}

/// The case filter: substrings from the command line (arguments that start
/// with '-' are cargo's flags and are ignored); no filter selects all.
pub struct Filter(Vec<String>);

impl Filter {
    /// Builds the filter from the program's arguments (without argv[0]).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Filter {
        Filter(args.into_iter().filter(|a| !a.starts_with('-')).collect())
    }

    /// Whether the case called `name` runs.
    pub fn selects(&self, name: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| name.contains(f.as_str()))
    }
}

/// Runs the whole suite; returns whether every selected case passed or was
/// skipped.
pub fn run(cfg: &Config, filter: &Filter) -> bool {
    let start = Instant::now();
    let mut report = Report::default();
    if let Err(e) = become_subreaper() {
        report.record("harness", Outcome::fail(format!("{e:#}")));
        return false;
    }
    let mode = if cfg.checkpoint {
        Mode::DumpRestore
    } else {
        Mode::SelfCheck
    };
    for flavor in [Flavor::Host, Flavor::Ns, Flavor::Uns, Flavor::Suns] {
        for w in workloads() {
            for stdio in StdioKind::ALL {
                // (suns: one stdio kind is enough to show the maps' effect)
                if flavor == Flavor::Suns && stdio != StdioKind::DevNull {
                    continue;
                }
                let name = case::case_name(w.name, flavor, Some(stdio));
                if !filter.selects(&name) {
                    continue;
                }
                let outcome = if cfg.root {
                    case::run_protocol(cfg, &w, flavor, stdio, mode)
                } else {
                    Outcome::Skip("needs root".into())
                };
                report.record(&name, outcome);
            }
        }
    }
    let name = case::case_name("sleep_bin", Flavor::Host, None);
    if filter.selects(&name) {
        let outcome = if cfg.root {
            case::run_sleep_binary(cfg, mode)
        } else {
            Outcome::Skip("needs root".into())
        };
        report.record(&name, outcome);
    }
    let name = case::case_name("pipeline", Flavor::Host, None);
    if filter.selects(&name) {
        let outcome = if cfg.root {
            case::run_pipeline(cfg, mode)
        } else {
            Outcome::Skip("needs root".into())
        };
        report.record(&name, outcome);
    }
    dumpchecks::run(cfg, &mut report, &|n| filter.selects(n));
    trees::run(cfg, &mut report, &|n| filter.selects(n));
    inherit_fd::run(cfg, &mut report, &|n| filter.selects(n));
    refusals::run(cfg, &mut report, &|n| filter.selects(n));
    servers::run(cfg, &mut report, &|n| filter.selects(n));
    daemons::run(cfg, &mut report, &|n| filter.selects(n));
    nested::run(cfg, &mut report, &|n| filter.selects(n));
    containers::run(cfg, &mut report, &|n| filter.selects(n));
    hostile::run(cfg, &mut report, &|n| filter.selects(n));
    rpc::run(cfg, &mut report, &|n| filter.selects(n));
    iterative::run(cfg, &mut report, &|n| filter.selects(n));
    lazy::run(cfg, &mut report, &|n| filter.selects(n));
    criu_cli::run(cfg, &mut report, &|n| filter.selects(n));
    cgroups::run(cfg, &mut report, &|n| filter.selects(n));
    runtimes::run(cfg, &mut report, &|n| filter.selects(n));
    survive::run(cfg, &mut report, &|n| filter.selects(n));
    unpriv::run(cfg, &mut report, &|n| filter.selects(n));
    for flavor in Flavor::ALL {
        if let Some(reason) = flavor.not_implemented() {
            let name = format!("*[{}]", flavor.name());
            if filter.selects(&name) || filter.0.iter().any(|f| f == flavor.name()) {
                report.record(&name, Outcome::Skip(reason.into()));
            }
        }
    }
    for line in procs::sweep_children() {
        report.record("harness", Outcome::fail(line));
    }
    if !report.any_failed() {
        let _ = std::fs::remove_dir(&cfg.base);
    }
    println!("{}", report.summary(cfg, start));
    !report.any_failed()
}
