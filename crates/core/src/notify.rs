//! CRIU's notifications: named points of a dump or a restore where the
//! caller (an RPC client, or `--action-script` programs) is told and must
//! agree before crest goes on. The front-ends implement [`Notify`]; dump
//! and restore only call it.

use std::os::fd::BorrowedFd;

/// The hooks, by CRIU's names.
pub mod hook {
    pub const PRE_DUMP: &str = "pre-dump";
    pub const POST_DUMP: &str = "post-dump";
    pub const NETWORK_LOCK: &str = "network-lock";
    pub const NETWORK_UNLOCK: &str = "network-unlock";
    pub const PRE_RESTORE: &str = "pre-restore";
    pub const SETUP_NAMESPACES: &str = "setup-namespaces";
    pub const POST_SETUP_NAMESPACES: &str = "post-setup-namespaces";
    pub const POST_RESTORE: &str = "post-restore";
    pub const PRE_RESUME: &str = "pre-resume";
    pub const POST_RESUME: &str = "post-resume";
    pub const ORPHAN_PTS_MASTER: &str = "orphan-pts-master";
}

/// Why a notification stopped the action.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("the caller refused {0}")]
    Refused(String),
    #[error("the caller went away at {0}")]
    Gone(String),
    /// The RPC channel to the caller failed.
    #[error("{0}")]
    Channel(String),
    #[error("action script {script}: {source}")]
    Spawn {
        script: String,
        #[source]
        source: std::io::Error,
    },
    #[error("action script {script} for {hook} failed ({status})")]
    Script {
        script: String,
        hook: String,
        status: std::process::ExitStatus,
    },
}

/// Receives the notifications of one action.
pub trait Notify {
    /// Tells the caller that `hook` is reached, with the tree's root pid
    /// when there is one (the dumped root; the restored root once it is
    /// forked) and an fd for `orphan-pts-master`; an error aborts the
    /// action.
    fn notify(
        &mut self,
        hook: &str,
        pid: Option<i32>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), NotifyError>;
}

/// No one to tell.
pub struct Silent;

impl Notify for Silent {
    fn notify(
        &mut self,
        _: &str,
        _: Option<i32>,
        _: Option<BorrowedFd<'_>>,
    ) -> Result<(), NotifyError> {
        Ok(())
    }
}
