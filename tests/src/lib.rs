//! The end-to-end suite of crest, modelled on CRIU's zdtm.
//!
//! Each workload (`workloads/*.c` and two interpreter scripts) sets up some
//! state, writes `<statedir>/ready`, waits for SIGTERM, checks its state
//! itself and writes `<statedir>/verdict`. The harness starts it through the
//! `launch` helper, dumps it with `crest dump`, restores it with
//! `crest restore`, sends SIGTERM and reads the verdict. With
//! `CREST_E2E_NOCHECKPOINT=1` the same flow runs without dump and restore,
//! which validates the workloads themselves.
//!
//! The suite itself is `tests/e2e.rs` (`cargo test --release -p crest-tests
//! --test e2e -- [FILTER...]`).

pub mod case;
pub mod cgroups;
pub mod config;
pub mod containers;
pub mod crest;
pub mod crit;
pub mod criu_cli;
pub mod daemons;
pub mod dumpchecks;
pub mod fresh_init;
pub mod hostile;
pub mod inherit_fd;
pub mod iterative;
pub mod lazy;
pub mod nested;
pub mod ns;
pub mod outside;
pub mod procs;
pub mod refusals;
pub mod rpc;
pub mod runtimes;
pub mod servers;
pub mod suite;
pub mod survive;
pub mod trees;
pub mod unpriv;

pub use config::{Config, Flavor, StdioKind};

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The case passed.
    Pass,
    /// The case passed, with a note for the report line (e.g. `fork_storm`
    /// when crest refused the dump cleanly).
    PassWith(String),
    /// The case failed: the first line is the reason, further lines are
    /// diagnostics (log tails).
    Fail(String),
    /// The case could not run here, with the reason.
    Skip(String),
}

impl Outcome {
    /// A failure with the given reason.
    pub fn fail(reason: impl Into<String>) -> Outcome {
        Outcome::Fail(reason.into())
    }

    /// Whether the case passed (with or without a note).
    pub fn is_pass(&self) -> bool {
        matches!(self, Outcome::Pass | Outcome::PassWith(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{run_protocol, Mode};
    use crate::suite::workload;

    /// Self-check mode on one cheap workload: validates the harness and the
    /// workload protocol without crest.
    #[test]
    fn self_check_sleep_restart() {
        let mut cfg = Config::from_env().unwrap();
        cfg.checkpoint = false;
        cfg.base = std::env::temp_dir().join(format!("crest-selfcheck-{}", std::process::id()));
        suite::become_subreaper().unwrap();
        let w = workload("sleep_restart").unwrap();
        for stdio in [StdioKind::DevNull, StdioKind::LogFile] {
            let outcome = run_protocol(&cfg, &w, Flavor::Host, stdio, Mode::SelfCheck);
            assert_eq!(outcome, Outcome::Pass, "{stdio:?}");
        }
        assert!(procs::sweep_children().is_empty());
        let _ = std::fs::remove_dir_all(&cfg.base);
    }
}
