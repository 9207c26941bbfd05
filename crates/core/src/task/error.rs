//! The task room's errors: what it refuses or finds wrong in a task's own
//! state, and the seccomp chains it will not install.

use crate::error::RoomError;

/// What the task room refuses or finds wrong (the per-task state).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Something crest cannot carry yet, named.
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    /// An image that contradicts itself or the rest, naming the file.
    #[error("{file}: {what}")]
    BadImage { file: String, what: String },
    /// A chain of seccomp filters in the images crest will not install.
    #[error("{file}: {why}")]
    SeccompChain {
        file: String,
        #[source]
        why: ChainError,
    },
}

impl RoomError for TaskError {}

/// A chain of filters in the images crest will not install.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("seccomp filter {0} is not in {file}", file = crest_images::names::SECCOMP)]
    Missing(u32),
    #[error("a seccomp chain of more than {max} instructions")]
    TooLong { max: usize },
}
