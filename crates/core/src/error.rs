//! The errors of dump and restore: each names the task and the step.

use crate::procfs::ProcError;
use crest_images::ImageError;
use crest_inject::InjectError;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Fault(#[from] crest_sys::fault::Injected),
    #[error("pid {pid} does not exist")]
    NoSuchProcess { pid: i32 },
    #[error("dump pid {pid}: {step}: {source}")]
    Proc {
        pid: i32,
        step: &'static str,
        source: ProcError,
    },
    #[error("dump pid {pid}: {step}: {source}")]
    Inject {
        pid: i32,
        step: &'static str,
        source: InjectError,
    },
    #[error("dump pid {pid}: {step}: {source}")]
    Io {
        pid: i32,
        step: &'static str,
        source: io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("dump {0}")]
    Remote(#[from] crate::remote::RemoteError),
    /// A room's own error ([`RoomError`]), of the task `pid` or (`None`)
    /// of the whole tree.
    #[error("dump{}: {source}", of_task(*.pid))]
    Room {
        pid: Option<i32>,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("images directory {dir}: {source}")]
    Dir { dir: String, source: io::Error },
    #[error("dump: {}", .refused.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; "))]
    Refused { refused: Vec<Refused> },
    #[error("dump: the {hook} notification failed: {why}")]
    Notify {
        hook: String,
        #[source]
        why: crate::notify::NotifyError,
    },
    #[error(
        "dump pid {pid}: refused: {what}, and crest acts for uid {uid}, which may not trace it"
    )]
    Forbidden { pid: i32, uid: u32, what: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Fault(#[from] crest_sys::fault::Injected),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("restore {0}")]
    Remote(#[from] crate::remote::RemoteError),
    #[error("restore pid {pid}: {step}: {source}")]
    Inject {
        pid: i32,
        step: String,
        source: InjectError,
    },
    #[error("restore pid {pid}: {step}: {source}")]
    Io {
        pid: i32,
        step: String,
        source: io::Error,
    },
    #[error("restore pid {pid}: {step}: {source}")]
    Proc {
        pid: i32,
        step: &'static str,
        source: ProcError,
    },
    #[error("restore pid {pid}: pid is already in use by another process ({holder})")]
    PidTaken { pid: i32, holder: String },
    /// A room's own error ([`RoomError`]), of the task `pid` or (`None`)
    /// of the whole tree.
    #[error("restore{}: {source}", of_task(*.pid))]
    Room {
        pid: Option<i32>,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("restore: {}", .refused.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; "))]
    Refused { refused: Vec<Refused> },
    #[error("restore: the {hook} notification failed: {why}")]
    Notify {
        hook: String,
        #[source]
        why: crate::notify::NotifyError,
    },
    #[error(
        "restore pid {pid}: {file} claims {what}, which the caller (uid {uid}) does not hold: \
         refused"
    )]
    Forbidden {
        pid: i32,
        file: String,
        uid: u32,
        what: String,
    },
}

/// " pid N" for a task's error, nothing for one of the whole tree.
fn of_task(pid: Option<i32>) -> String {
    pid.map(|p| format!(" pid {p}")).unwrap_or_default()
}

/// The error type of one room (files, mm, ns, task, ...): what that room
/// refuses or finds wrong, in its own words. Dump and restore carry it as
/// the source of [`DumpError::Room`] / [`RestoreError::Room`], with the
/// task it concerns; `error` stays below the rooms because it holds them
/// boxed.
pub(crate) trait RoomError: std::error::Error + Send + Sync + Sized + 'static {
    /// This error, of the task `pid`, as dump reports it.
    fn in_dump(self, pid: i32) -> DumpError {
        DumpError::Room {
            pid: Some(pid),
            source: Box::new(self),
        }
    }

    /// This error, of the whole tree, as dump reports it.
    fn in_tree_dump(self) -> DumpError {
        DumpError::Room {
            pid: None,
            source: Box::new(self),
        }
    }

    /// This error, of the task `pid`, as restore reports it.
    fn in_restore(self, pid: i32) -> RestoreError {
        RestoreError::Room {
            pid: Some(pid),
            source: Box::new(self),
        }
    }

    /// This error, of the whole tree, as restore reports it.
    fn in_tree_restore(self) -> RestoreError {
        RestoreError::Room {
            pid: None,
            source: Box::new(self),
        }
    }
}

/// Shorthands that attach the pid and the step to a lower error.
pub(crate) trait DumpCtx<T> {
    fn at(self, pid: i32, step: &'static str) -> Result<T, DumpError>;
}

impl<T> DumpCtx<T> for Result<T, ProcError> {
    fn at(self, pid: i32, step: &'static str) -> Result<T, DumpError> {
        self.map_err(|source| DumpError::Proc { pid, step, source })
    }
}

impl<T> DumpCtx<T> for Result<T, InjectError> {
    fn at(self, pid: i32, step: &'static str) -> Result<T, DumpError> {
        self.map_err(|source| DumpError::Inject { pid, step, source })
    }
}

impl<T> DumpCtx<T> for Result<T, io::Error> {
    fn at(self, pid: i32, step: &'static str) -> Result<T, DumpError> {
        self.map_err(|source| DumpError::Io { pid, step, source })
    }
}

impl<T> DumpCtx<T> for Result<T, rustix::io::Errno> {
    fn at(self, pid: i32, step: &'static str) -> Result<T, DumpError> {
        self.map_err(io::Error::from).at(pid, step)
    }
}

pub(crate) trait RestoreCtx<T> {
    fn rat(self, pid: i32, step: impl Into<String>) -> Result<T, RestoreError>;
}

impl<T> RestoreCtx<T> for Result<T, InjectError> {
    fn rat(self, pid: i32, step: impl Into<String>) -> Result<T, RestoreError> {
        self.map_err(|source| RestoreError::Inject {
            pid,
            step: step.into(),
            source,
        })
    }
}

impl<T> RestoreCtx<T> for Result<T, rustix::io::Errno> {
    fn rat(self, pid: i32, step: impl Into<String>) -> Result<T, RestoreError> {
        self.map_err(io::Error::from).rat(pid, step)
    }
}

impl<T> RestoreCtx<T> for Result<T, io::Error> {
    fn rat(self, pid: i32, step: impl Into<String>) -> Result<T, RestoreError> {
        self.map_err(|source| RestoreError::Io {
            pid,
            step: step.into(),
            source,
        })
    }
}

/// An option crest refuses for an action, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option}: {why}")]
pub struct Refused {
    pub option: String,
    pub why: String,
}
