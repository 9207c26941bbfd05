//! Where things are: the crest binary, the workloads, the directory cases
//! run in; and the two axes every protocol workload runs on.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// The namespaces a case runs in (see DESIGN.md, "The end-to-end suite").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// crest's own namespaces.
    Host,
    /// Own pid/mnt/uts/ipc/net/time namespaces (see [`crate::ns`]).
    Ns,
    /// `Ns` plus one user namespace.
    Uns,
    /// `Uns` with the id maps of CRIU's own suite's uns flavor (root inside
    /// is uid 20000 outside: crest's root is unmapped in it), with stdio on
    /// /dev/null only.
    Suns,
    /// A chain of user namespaces with tasks at several levels.
    Nested,
}

impl Flavor {
    /// Every flavor, in the order the suite reports them.
    pub const ALL: [Flavor; 5] = [
        Flavor::Host,
        Flavor::Ns,
        Flavor::Uns,
        Flavor::Suns,
        Flavor::Nested,
    ];

    /// The name used in case names.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Host => "host",
            Flavor::Ns => "ns",
            Flavor::Uns => "uns",
            Flavor::Suns => "suns",
            Flavor::Nested => "nested",
        }
    }

    /// Why the harness cannot run this flavor yet, or None if it can
    /// (`ns` runs every protocol workload, see [`crate::ns`]; `nested` runs
    /// its own cases, see [`crate::nested`]).
    pub fn not_implemented(self) -> Option<&'static str> {
        match self {
            Flavor::Host => None,
            Flavor::Ns => None,
            Flavor::Uns => None,
            Flavor::Suns => None,
            Flavor::Nested => None,
        }
    }
}

/// Where a workload's stdin, stdout and stderr point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdioKind {
    /// All three on /dev/null.
    DevNull,
    /// stdin on /dev/null, stdout and stderr sharing one `O_APPEND` open
    /// file description of `<casedir>/out.log`.
    LogFile,
}

impl StdioKind {
    /// Both kinds.
    pub const ALL: [StdioKind; 2] = [StdioKind::DevNull, StdioKind::LogFile];

    /// The name used in case names.
    pub fn name(self) -> &'static str {
        match self {
            StdioKind::DevNull => "devnull",
            StdioKind::LogFile => "logfile",
        }
    }
}

/// The suite's configuration, read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory under which each case gets its own directory
    /// (`CREST_TEST_DIR`, else `/tmp/crest-e2e-<pid>`).
    pub base: PathBuf,
    /// The crest binary (`CREST_BIN`, else `<exe dir>/../crest`).
    pub crest: PathBuf,
    /// The compiled workloads, `launch` and the scripts.
    pub workloads: PathBuf,
    /// False with `CREST_E2E_NOCHECKPOINT=1`: run without dump/restore.
    pub checkpoint: bool,
    /// Whether the harness runs as root.
    pub root: bool,
}

impl Config {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Config> {
        let crest = match std::env::var_os("CREST_BIN") {
            Some(p) => PathBuf::from(p),
            None => {
                let exe = std::env::current_exe().context("current_exe")?;
                let deps = exe.parent().context("test executable has no directory")?;
                deps.parent().unwrap_or(deps).join("crest")
            }
        };
        let base = match std::env::var_os("CREST_TEST_DIR") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(format!("/tmp/crest-e2e-{}", std::process::id())),
        };
        let nocheckpoint = std::env::var("CREST_E2E_NOCHECKPOINT")
            .map(|v| !v.is_empty() && v != "0")
            .unwrap_or(false);
        Ok(Config {
            base,
            crest,
            workloads: PathBuf::from(env!("CREST_WORKLOADS_DIR")),
            checkpoint: !nocheckpoint,
            root: nix::unistd::geteuid().is_root(),
        })
    }

    /// Path of a compiled workload or script.
    pub fn workload(&self, name: &str) -> PathBuf {
        self.workloads.join(name)
    }
}
