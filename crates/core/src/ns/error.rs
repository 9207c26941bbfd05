//! The namespace rooms' errors, and the pid namespace graph's.

use crate::error::RoomError;

/// What the namespace rooms refuse or find wrong.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    /// Something crest cannot carry yet, named.
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    /// An image that contradicts itself or the rest, naming the file.
    #[error("{file}: {what}")]
    BadImage { file: String, what: String },
    /// Pid namespaces in the images that crest cannot build, or pids a
    /// task cannot be given in them.
    #[error("{file}: {why}")]
    Pidns {
        file: &'static str,
        #[source]
        why: PidnsError,
    },
}

impl RoomError for NsError {}

/// Pid namespaces in the images crest cannot restore, or ids a task
/// cannot be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PidnsError {
    #[error("pid namespace {id} comes before its parent {parent}")]
    Order { id: u32, parent: u32 },
    #[error("pid namespace {id} nested {depth} deep")]
    TooDeep { id: u32, depth: u32 },
    #[error("task {pid} is in unknown pid namespace {id}")]
    Unknown { pid: i32, id: u32 },
    #[error("a task above the tree's pid namespace")]
    AboveTree,
    #[error("a pid namespace without its init")]
    NoInit,
    #[error("pids at more than one pid namespace level its user namespace does not own")]
    Unowned,
}
