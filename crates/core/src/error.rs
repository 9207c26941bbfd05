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
    #[error("dump pid {pid}: fd {fd} is {kind}, which crest cannot dump yet")]
    UnsupportedFd { pid: i32, fd: i32, kind: String },
    #[error("dump pid {pid}: {what} is not supported yet")]
    Unsupported { pid: i32, what: String },
    /// Something of the whole tree (not of one task) crest cannot dump.
    #[error("dump: {what} is not supported yet")]
    UnsupportedTree { what: String },
    #[error("dump pid {pid}: fd {fd} {what}; dump with {option} to take it")]
    NeedsOption {
        pid: i32,
        fd: i32,
        what: String,
        option: &'static str,
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
    /// An image of the whole tree (not of one task) that crest refuses.
    #[error("restore: {file}: {what}")]
    BadTreeImage { file: String, what: String },
    #[error("restore pid {pid}: {file}: {what}")]
    BadImage {
        pid: i32,
        file: String,
        what: String,
    },
    #[error("restore pid {pid}: {what} is not supported yet")]
    Unsupported { pid: i32, what: String },
    /// Something of the whole tree (not of one task) crest cannot restore.
    #[error("restore: {what} is not supported yet")]
    UnsupportedTree { what: String },
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
